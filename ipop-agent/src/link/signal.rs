//! The link's signals, relayed by the signaling service: an offer or answer (ICE credentials,
//! the data socket's port and receiver index, the AEAD the sender seals fastest) and ICE
//! candidates, each tagged with a session number so that candidates of an old attempt never
//! mix with a new one: `{"t":"offer"|"answer","s":N,"ufrag":..,"pwd":..,"dp":..,"ix":..,"aead":..}`
//! and `{"t":"cand","s":N,"c":"candidate:..."}`, each sealed to the peer on the way
//! (`envelope`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tracing::warn;

use crate::{
    link::{
        envelope,
        params::LinkParams,
        session::{Aead, Identity, KEY_LEN},
        timers::now_ns,
    },
    signaling::Signaling,
};

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

/// Where one link's signals go: to its peer, sealed (`envelope`) so the signaling service can
/// neither read nor rewrite them.
pub struct Outbox {
    signaling: Signaling,
    me: Identity,
    from: String,
    to: String,
    their_key: [u8; KEY_LEN],
}

impl Outbox {
    pub fn new(p: &LinkParams) -> Self {
        let s = &p.shared;
        Outbox {
            signaling: s.signaling.clone(),
            me: s.identity.clone(),
            from: s.node_id.clone(),
            to: p.peer_node.clone(),
            their_key: p.remote_key,
        }
    }

    /// Seals `v` and sends it (each time with a new stamp, so a resend is not a replay).
    fn send(&self, v: &Value) {
        match envelope::seal(&self.me, &self.their_key, &self.from, &self.to, stamp(), v) {
            Ok(sealed) => self.signaling.send(&self.to, sealed),
            Err(e) => warn!(to = %self.to, "signal not sent: {e}"),
        }
    }
}

/// The next signal's stamp: wall-clock nanoseconds, and always above the last one given, so
/// it grows across restarts (as the handshake's timestamp does) and between two signals.
fn stamp() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ns();
    let last = LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(now.max(l + 1))).unwrap_or(0);
    now.max(last + 1)
}

/// What this side signalled in one attempt (its offer or answer, then its candidates), kept
/// to send again: the signaling service may drop any of them, and a lost offer or answer
/// would otherwise cost the whole connect timeout. The controlling side resends until the
/// answer comes; the controlled side resends when the same offer comes again.
pub struct Sent {
    outbox: Outbox,
    signals: Vec<Value>,
}

impl Sent {
    pub fn new(outbox: Outbox) -> Self {
        Sent { outbox, signals: Vec::new() }
    }

    /// Sends `v` to the peer and keeps it.
    pub fn push(&mut self, v: Value) {
        self.outbox.send(&v);
        self.signals.push(v);
    }

    /// Sends everything again, in the same order.
    pub fn again(&self) {
        for v in &self.signals {
            self.outbox.send(v);
        }
    }
}
