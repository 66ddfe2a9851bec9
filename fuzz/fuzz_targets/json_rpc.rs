//! The JSON-RPC decoder: never panics; accepted methods re-encode to the same method; every
//! refusal that owes an answer has a valid JSON-RPC error answer.
#![no_main]
use ipop_agent::rpc::{self, Incoming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match rpc::decode(data) {
        Ok(Incoming::Notification(m)) | Ok(Incoming::Call { method: m, .. }) => {
            assert_eq!(rpc::decode(&rpc::encode(&m)).unwrap(), Incoming::Notification(m));
        }
        Ok(Incoming::Response { .. }) => {}
        Err(rejection) => {
            if let Some(answer) = rejection.answer {
                let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                assert_eq!(v["error"]["code"], serde_json::json!(rejection.code));
            }
        }
    }
});
