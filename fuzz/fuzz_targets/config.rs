//! The config parser and validation: never panics, whatever the text.
//! The property lives in ipop_agent::fuzzing, so that tests/fuzz_regressions.rs replays the
//! inputs kept under fuzz/regressions/config/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::config(data));
