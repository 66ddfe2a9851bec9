//! The link's signals, relayed by the signaling service: an offer or answer (ICE credentials,
//! the data socket's port and receiver index, the AEAD the sender seals fastest) and ICE
//! candidates, each tagged with a session number so that candidates of an old attempt never
//! mix with a new one: `{"t":"offer"|"answer","s":N,"ufrag":..,"pwd":..,"dp":..,"ix":..,"aead":..}`
//! and `{"t":"cand","s":N,"c":"candidate:..."}`.

use serde_json::Value;

use crate::{link::session::Aead, signaling::Signaling};

/// An offer or answer from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub session: u64,
    pub ufrag: String,
    pub pwd: String,
    /// The sender's data socket port and its receiver index for this session, if it has one.
    pub data: Option<(u16, u32)>,
    /// The AEAD the sender seals fastest (ChaChaPoly if it does not say).
    pub aead: Aead,
}

pub enum Signal {
    Offer(Creds),
    Answer(Creds),
    Candidate(u64, String),
}

pub fn parse_signal(v: &Value) -> Option<Signal> {
    let session = v.get("s")?.as_u64()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| s.len() <= 512).map(str::to_owned);
    let data = (|| {
        let port = u16::try_from(v.get("dp")?.as_u64()?).ok().filter(|&p| p != 0)?;
        Some((port, u32::try_from(v.get("ix")?.as_u64()?).ok()?))
    })();
    let aead = v.get("aead").and_then(Value::as_str).and_then(Aead::from_name).unwrap_or(Aead::ChaChaPoly);
    let creds = || Some(Creds { session, ufrag: text("ufrag")?, pwd: text("pwd")?, data, aead });
    match v.get("t")?.as_str()? {
        "offer" => Some(Signal::Offer(creds()?)),
        "answer" => Some(Signal::Answer(creds()?)),
        "cand" => Some(Signal::Candidate(session, text("c")?)),
        _ => None,
    }
}

/// What this side signalled in one attempt (its offer or answer, then its candidates), kept
/// to send again: the signaling service may drop any of them, and a lost offer or answer
/// would otherwise cost the whole connect timeout. The controlling side resends until the
/// answer comes; the controlled side resends when the same offer comes again.
#[derive(Debug, Default)]
pub struct Sent {
    signals: Vec<Value>,
}

impl Sent {
    /// Sends `v` to `to` and keeps it.
    pub fn push(&mut self, signaling: &Signaling, to: &str, v: Value) {
        signaling.send(to, v.clone());
        self.signals.push(v);
    }

    /// Sends everything again, in the same order.
    pub fn again(&self, signaling: &Signaling, to: &str) {
        for v in &self.signals {
            signaling.send(to, v.clone());
        }
    }
}
