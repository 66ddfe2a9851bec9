//! The rendezvous channel as its server reads it: the handshake never panics, and no frame made
//! without the channel's keys opens.
//! The property lives in ipop_agent::fuzzing::rendezvous_channel, so that tests/fuzz_regressions.rs replays
//! the inputs kept under fuzz/regressions/rendezvous_channel/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::rendezvous_channel(data));
