//! Frame chunks from a peer: reassembly never panics and never grows past the largest frame.
//! The property lives in ipop_agent::fuzzing, so that tests/fuzz_regressions.rs replays the
//! inputs kept under fuzz/regressions/chunks/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::chunks(data));
