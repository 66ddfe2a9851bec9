//! The rendezvous protocol's messages, as the server and the client read them: never panics;
//! whatever parses serialises back to the same message.
#![no_main]
use ipop_agent::rendezvous::{ClientMsg, ServerMsg, check_node_id, join_proof};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = serde_json::from_slice::<ClientMsg>(data) {
        let again: ClientMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(again, msg);
        if let ClientMsg::Join { overlay, node_id, public_key, .. } = &msg {
            let _ = (check_node_id(node_id), join_proof("secret", "nonce", overlay, node_id, public_key));
        }
    }
    if let Ok(msg) = serde_json::from_slice::<ServerMsg>(data) {
        let again: ServerMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(again, msg);
    }
});
