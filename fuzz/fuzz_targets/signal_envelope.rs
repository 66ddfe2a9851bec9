//! A sealed signal as an agent opens it: never panics, and nothing made without the sender's
//! key opens.
//! The property lives in ipop_agent::fuzzing::signal_envelope, so that tests/fuzz_regressions.rs replays
//! the inputs kept under fuzz/regressions/signal_envelope/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::signal_envelope(data));
