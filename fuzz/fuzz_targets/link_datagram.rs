//! Link datagrams, before and after decryption: parsing never panics, nothing forged
//! The property lives in ipop_agent::fuzzing, so that tests/fuzz_regressions.rs replays the
//! inputs kept under fuzz/regressions/link_datagram/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::link_datagram(data));
