//! An XMPP stanza as an agent's room reads it: never panics, and no message is taken as a
//! signal from someone who is not an occupant.
//! The property lives in ipop_agent::fuzzing::xmpp_stanza, so that tests/fuzz_regressions.rs replays
//! the inputs kept under fuzz/regressions/xmpp_stanza/.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipop_agent::fuzzing::xmpp_stanza(data));
