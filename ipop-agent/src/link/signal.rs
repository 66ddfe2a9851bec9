//! The link's signals, relayed by the signaling service: an offer or answer (ICE credentials,
//! the data socket's port and receiver index, the AEAD the sender seals fastest) and ICE
//! candidates, each tagged with a session number so that candidates of an old attempt never
//! mix with a new one: `{"t":"offer"|"answer","s":N,"ufrag":..,"pwd":..,"dp":..,"ix":..,"aead":..}`
//! and `{"t":"cand","s":N,"c":"candidate:..."}`, sealed to the peer on the way (`envelope`),
//! those sent together as one JSON array (`Sent`).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use serde_json::Value;
use tracing::warn;

use crate::{
    link::{
        envelope,
        params::LinkParams,
        session::{Aead, Identity, KEY_LEN},
        timers::{SIGNAL_BATCH, now_ns},
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
    /// Whether the sender takes bundles (`"b":1`): an older agent reads only single signals.
    pub bundles: bool,
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
    let bundles = v.get("b").and_then(Value::as_u64) == Some(1);
    let creds = || Some(Creds { session, ufrag: text("ufrag")?, pwd: text("pwd")?, data, aead, bundles });
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
///
/// Signals go out in bundles: what is pushed within `SIGNAL_BATCH` of the first unsent one
/// (an offer and the host candidates gathered right after it) is sealed as one envelope, a
/// JSON array, and a resend is one envelope too. Each envelope costs its sender three X25519
/// operations and its receiver two; with one envelope a signal, they were a quarter of the CPU
/// a 64-host mesh took to form (BENCHMARKS.md, Scale). Only to a peer whose offer or answer
/// said it takes them (`"b":1`): an older agent would drop a bundle unread, so until the
/// controlling side has the answer, its signals go one an envelope.
pub struct Sent {
    outbox: Outbox,
    signals: Vec<Value>,
    /// How many of `signals` went out already.
    flushed: usize,
    /// When the unsent ones go.
    due: Instant,
    /// Whether the peer takes bundles.
    bundles: bool,
}

impl Sent {
    pub fn new(outbox: Outbox, bundles: bool) -> Self {
        Sent { outbox, signals: Vec::new(), flushed: 0, due: Instant::now(), bundles }
    }

    /// The peer's answer said whether it takes bundles.
    pub fn set_bundles(&mut self, bundles: bool) {
        self.bundles = bundles;
    }

    /// Keeps `v`, to go with the bundle due `SIGNAL_BATCH` after the first unsent signal.
    pub fn push(&mut self, v: Value) {
        if !self.pending() {
            self.due = Instant::now() + SIGNAL_BATCH;
        }
        self.signals.push(v);
    }

    /// Whether some signals wait for `due`.
    pub fn pending(&self) -> bool {
        self.flushed < self.signals.len()
    }

    /// When the signals waiting go (`flush`).
    pub fn due(&self) -> Instant {
        self.due
    }

    /// Sends the signals not sent yet.
    pub fn flush(&mut self) {
        for e in envelopes(&self.signals[self.flushed..], self.bundles) {
            self.outbox.send(&e);
        }
        self.flushed = self.signals.len();
    }

    /// Sends everything again, in the same order.
    pub fn again(&mut self) {
        self.flushed = 0;
        self.flush();
    }
}

/// What `signals` go out as: bundles of at most `MAX_BUNDLE` to a peer that takes them, else
/// one envelope each.
fn envelopes(signals: &[Value], bundles: bool) -> Vec<Value> {
    if bundles { signals.chunks(MAX_BUNDLE).map(bundle).collect() } else { signals.to_vec() }
}

/// One signal as itself, more as an array.
fn bundle(signals: &[Value]) -> Value {
    match signals {
        [one] => one.clone(),
        many => Value::Array(many.to_vec()),
    }
}

/// The signals an opened envelope carries: itself, or a bundle's members (at most
/// `MAX_BUNDLE`; a longer bundle is not ours and is dropped whole).
pub fn unbundle(v: Value) -> Vec<Value> {
    match v {
        Value::Array(many) if many.len() <= MAX_BUNDLE => many,
        Value::Array(_) => Vec::new(),
        one => vec![one],
    }
}

/// The longest bundle sent and read (longer runs of signals go as several).
const MAX_BUNDLE: usize = 64;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn signals_sent_together_travel_as_one_array_and_come_apart_in_order() {
        let offer = json!({"t": "offer", "s": 7, "ufrag": "u", "pwd": "p"});
        let cand = json!({"t": "cand", "s": 7, "c": "candidate:1 1 udp 1 192.0.2.1 5000 typ host"});
        assert_eq!(bundle(std::slice::from_ref(&offer)), offer, "one signal goes as itself");
        let both = bundle(&[offer.clone(), cand.clone()]);
        assert!(both.is_array());
        assert_eq!(unbundle(both), vec![offer.clone(), cand]);
        assert_eq!(unbundle(offer.clone()), vec![offer], "an older peer's single signal");
    }

    #[test]
    fn bundles_go_only_to_a_peer_that_takes_them_and_never_longer_than_it_reads() {
        let cands: Vec<Value> = (0..MAX_BUNDLE + 6).map(|i| json!({"t": "cand", "s": 7, "c": i})).collect();
        assert_eq!(envelopes(&cands, false), cands, "an older peer: one envelope a signal");
        let sent = envelopes(&cands, true);
        assert_eq!(sent.len(), 2);
        let back: Vec<Value> = sent.into_iter().flat_map(unbundle).collect();
        assert_eq!(back, cands, "all of them, in order, none dropped as too long");
        let offer = json!({"t": "offer", "s": 7, "ufrag": "u", "pwd": "p", "b": 1});
        assert!(matches!(parse_signal(&offer), Some(Signal::Offer(c)) if c.bundles));
        let old = json!({"t": "offer", "s": 7, "ufrag": "u", "pwd": "p"});
        assert!(matches!(parse_signal(&old), Some(Signal::Offer(c)) if !c.bundles));
    }

    #[test]
    fn a_bundle_longer_than_any_attempt_makes_is_dropped_whole() {
        let many = Value::Array(vec![json!({"t": "cand"}); MAX_BUNDLE + 1]);
        assert!(unbundle(many).is_empty());
        let most = Value::Array(vec![json!({"t": "cand"}); MAX_BUNDLE]);
        assert_eq!(unbundle(most).len(), MAX_BUNDLE);
    }
}
