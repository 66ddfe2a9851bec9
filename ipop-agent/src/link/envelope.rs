//! Signals sealed end to end: what one agent signals to another (ICE credentials, candidates,
//! offers) travels through the signaling service as `{"sealed":"<hex>"}`, one Noise message
//! that only the receiver can open and only the sender (or the receiver) can make. A
//! signaling server can drop a signal, but not read or rewrite it.
//!
//! Pattern `Noise_K_25519_ChaChaPoly_BLAKE2s` (one-way, both static keys known: `e, es, ss`):
//! the `ss` term authenticates the sender's node key, the ephemeral one keeps each signal's
//! key fresh. The prologue binds who sends to whom, so a signal cannot be passed off as
//! another pair's. Inside: the sender's stamp (8 bytes, growing) and the signal's JSON; the
//! receiver takes only stamps newer than the last it took from that sender, so a recorded
//! signal replayed later is refused. Pure: the caller gives the stamp and keeps the last.

use serde_json::Value;
use snow::{Builder, HandshakeState};

use crate::{
    core::digest::{hex, unhex_vec},
    link::session::{Identity, KEY_LEN},
};

const PATTERN: &str = "Noise_K_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message: a signal longer than this cannot be sealed.
const MAX_MESSAGE: usize = 65_535;
/// Ephemeral key and tag around the payload.
const OVERHEAD: usize = KEY_LEN + 16 + 16;

/// Why a signal was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not `{"sealed":"<hex>"}`: a signal in clear, or garbage.
    NotSealed,
    /// The seal did not open: not from that node's key, not for this node, or altered.
    Forged,
    /// Opened, but the content is not a stamp and JSON.
    Malformed,
    /// Larger than one Noise message.
    TooLarge,
    /// Its stamp is not newer than the last one taken from that sender: a replay.
    Replayed,
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvelopeError::NotSealed => "not sealed (a signal in clear, or garbage)",
            EnvelopeError::Forged => "its seal does not open: not made by that node's key for this node, or altered",
            EnvelopeError::Malformed => "sealed, but its content is malformed",
            EnvelopeError::TooLarge => "too large to seal",
            EnvelopeError::Replayed => "replayed (its stamp is not newer than the last one taken)",
        })
    }
}

impl std::error::Error for EnvelopeError {}

/// The Noise state of one signal from `from` to `to`; the prologue binds who sends to whom.
fn noise(
    me: &Identity,
    their_key: &[u8; KEY_LEN],
    from: &str,
    to: &str,
    sender: bool,
) -> Result<HandshakeState, EnvelopeError> {
    let mut prologue = b"ipop signal v1".to_vec();
    for part in [from, to] {
        prologue.extend_from_slice(&(part.len() as u32).to_be_bytes());
        prologue.extend_from_slice(part.as_bytes());
    }
    let builder = Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
        .local_private_key(me.secret())
        .and_then(|b| b.remote_public_key(their_key))
        .and_then(|b| b.prologue(&prologue));
    let state = builder.and_then(|b| if sender { b.build_initiator() } else { b.build_responder() });
    state.map_err(|_| EnvelopeError::Forged)
}

/// Seals `data` from `me` (node `from`) to the node `to` whose static key is `their_key`.
pub fn seal(
    me: &Identity,
    their_key: &[u8; KEY_LEN],
    from: &str,
    to: &str,
    stamp: u64,
    data: &Value,
) -> Result<Value, EnvelopeError> {
    let mut payload = stamp.to_be_bytes().to_vec();
    serde_json::to_writer(&mut payload, data).map_err(|_| EnvelopeError::Malformed)?;
    if payload.len() + OVERHEAD > MAX_MESSAGE {
        return Err(EnvelopeError::TooLarge);
    }
    let mut state = noise(me, their_key, from, to, true)?;
    let mut out = vec![0u8; payload.len() + OVERHEAD];
    let n = state.write_message(&payload, &mut out).map_err(|_| EnvelopeError::Forged)?;
    Ok(serde_json::json!({ "sealed": hex(&out[..n]) }))
}

/// Opens a signal that node `from` (static key `their_key`) sealed for `me` (node `to`), if its
/// stamp is newer than `last` (the newest taken from `from`), which it then becomes.
pub fn open(
    me: &Identity,
    their_key: &[u8; KEY_LEN],
    (from, to): (&str, &str),
    envelope: &Value,
    last: &mut u64,
) -> Result<Value, EnvelopeError> {
    let text = envelope.get("sealed").and_then(Value::as_str).ok_or(EnvelopeError::NotSealed)?;
    let sealed = unhex_vec(text).ok_or(EnvelopeError::NotSealed)?;
    if sealed.len() > MAX_MESSAGE {
        return Err(EnvelopeError::TooLarge);
    }
    let mut state = noise(me, their_key, from, to, false)?;
    let mut payload = vec![0u8; sealed.len()];
    let n = state.read_message(&sealed, &mut payload).map_err(|_| EnvelopeError::Forged)?;
    let (stamp, json) = payload[..n].split_at_checked(8).ok_or(EnvelopeError::Malformed)?;
    let data = serde_json::from_slice(json).map_err(|_| EnvelopeError::Malformed)?;
    let stamp = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
    if stamp <= *last {
        return Err(EnvelopeError::Replayed);
    }
    *last = stamp;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_receiver_opens_and_only_the_sender_makes_a_signal() {
        let (a, b, mallory) = (Identity::generate(), Identity::generate(), Identity::generate());
        let offer = json!({"t": "offer", "s": 7, "ufrag": "u", "pwd": "secret-pwd"});
        let sealed = seal(&a, &b.public, "a", "b", 42, &offer).unwrap();
        assert!(!sealed.to_string().contains("secret-pwd"), "nothing readable on the way");
        let mut last = 0;
        assert_eq!(open(&b, &a.public, ("a", "b"), &sealed, &mut last), Ok(offer.clone()));
        assert_eq!(last, 42);

        // Not for mallory; not openable as another sender's or another pair's.
        let mut other = 0;
        assert_eq!(open(&mallory, &a.public, ("a", "b"), &sealed, &mut other), Err(EnvelopeError::Forged));
        assert_eq!(open(&b, &mallory.public, ("a", "b"), &sealed, &mut other), Err(EnvelopeError::Forged));
        assert_eq!(open(&b, &a.public, ("c", "b"), &sealed, &mut other), Err(EnvelopeError::Forged));
        // Mallory, holding b's public key only, cannot speak for a.
        let forged = seal(&mallory, &b.public, "a", "b", 43, &offer).unwrap();
        assert_eq!(open(&b, &a.public, ("a", "b"), &forged, &mut other), Err(EnvelopeError::Forged));
        assert_eq!(other, 0, "nothing refused moves the stamp");
    }

    #[test]
    fn a_signal_replayed_or_older_than_the_last_taken_is_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (old, new) = (json!({"n": 1}), json!({"n": 2}));
        let sealed_old = seal(&a, &b.public, "a", "b", 10, &old).unwrap();
        let sealed_new = seal(&a, &b.public, "a", "b", 11, &new).unwrap();
        let mut last = 0;
        assert_eq!(open(&b, &a.public, ("a", "b"), &sealed_new, &mut last), Ok(new));
        assert_eq!(open(&b, &a.public, ("a", "b"), &sealed_new, &mut last), Err(EnvelopeError::Replayed));
        assert_eq!(open(&b, &a.public, ("a", "b"), &sealed_old, &mut last), Err(EnvelopeError::Replayed));
        assert_eq!(last, 11);
    }

    #[test]
    fn a_rewritten_or_unsealed_signal_is_refused() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let sealed = seal(&a, &b.public, "a", "b", 1, &json!({"t": "cand", "s": 1, "c": "x"})).unwrap();
        let mut text = sealed["sealed"].as_str().unwrap().to_owned().into_bytes();
        let last = text.len() - 1;
        text[last] = if text[last] == b'0' { b'1' } else { b'0' };
        let tampered = json!({"sealed": String::from_utf8(text).unwrap()});
        let open = |v: &Value| open(&b, &a.public, ("a", "b"), v, &mut 0);
        assert_eq!(open(&tampered), Err(EnvelopeError::Forged));
        assert_eq!(open(&json!({"t": "offer"})), Err(EnvelopeError::NotSealed));
        assert_eq!(open(&json!({"sealed": "zz"})), Err(EnvelopeError::NotSealed));
        assert_eq!(open(&json!({"sealed": "00"})), Err(EnvelopeError::Forged));
        let huge = json!({"c": "x".repeat(MAX_MESSAGE)});
        assert_eq!(seal(&a, &b.public, "a", "b", 1, &huge), Err(EnvelopeError::TooLarge));
    }
}
