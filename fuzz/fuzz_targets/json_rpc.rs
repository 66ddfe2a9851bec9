//! The JSON-RPC decoder: never panics; accepted methods re-encode to the same method; every
//! The property lives in ipop_agent::fuzzing, so that tests/fuzz_regressions.rs replays the
//! inputs kept under fuzz/regressions/json_rpc/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::json_rpc(data));
