//! TURN messages on a stream (the stream relay's framing): never panics, sizes consistent.
//! The property lives in ipop_agent::fuzzing, so that tests/fuzz_regressions.rs replays the
//! inputs kept under fuzz/regressions/turn_stream/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::turn_stream(data));
