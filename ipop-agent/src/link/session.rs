//! The cryptographic session of a link: a Noise handshake, then authenticated encryption of
//! every datagram with explicit counters and a replay window. Pure: no sockets, no clock
//! (the caller passes the handshake timestamp).
//!
//! Pattern `Noise_KKpsk0_25519_{AESGCM|ChaChaPoly}_BLAKE2s` (`Aead`): both agents know each other's static key
//! from the rendezvous, which only admits members holding the overlay secret; the secret
//! also keys the PSK, so a link needs both a member's key and the secret. A handshake from
//! any other key fails. The initiator's timestamp (inside the encrypted first message) must
//! grow, so a replayed first message cannot reset a live link (WireGuard's TAI64N idea).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::core::{
    digest::{hex, mac},
    replay::ReplayWindow,
    wire::{self, Inner},
};

pub const KEY_LEN: usize = 32;

/// The AEAD that seals a session's datagrams (both are ring's, through snow). AES-256-GCM
/// where both ends have AES and carry-less multiply instructions (measured here: TCP 8.4
/// against 5.6 Gbit/s), else ChaCha20-Poly1305, which is fast without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    ChaChaPoly,
    AesGcm,
}

impl Aead {
    fn params(self) -> &'static str {
        match self {
            Aead::ChaChaPoly => "Noise_KKpsk0_25519_ChaChaPoly_BLAKE2s",
            Aead::AesGcm => "Noise_KKpsk0_25519_AESGCM_BLAKE2s",
        }
    }

    /// Its name in link signals.
    pub fn name(self) -> &'static str {
        match self {
            Aead::ChaChaPoly => "chachapoly",
            Aead::AesGcm => "aesgcm",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Aead::ChaChaPoly, Aead::AesGcm].into_iter().find(|a| a.name() == name)
    }

    /// What this machine seals fastest.
    pub fn local() -> Self {
        #[cfg(target_arch = "x86_64")]
        let fast_aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let fast_aes = std::arch::is_aarch64_feature_detected!("aes");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let fast_aes = false;
        if fast_aes { Aead::AesGcm } else { Aead::ChaChaPoly }
    }

    /// What a pair uses: AES-GCM only if both ends seal it fast.
    pub fn agree(self, other: Self) -> Self {
        if self == Aead::AesGcm && other == Aead::AesGcm { Aead::AesGcm } else { Aead::ChaChaPoly }
    }
}

/// Why a handshake or datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// Noise refused it: wrong key, wrong PSK, tampered or malformed.
    Handshake(String),
    /// The initiator's timestamp is not newer than the last one accepted.
    StaleHandshake,
    /// The datagram did not authenticate.
    Auth,
    /// The counter was seen already or is too old.
    Replay,
    /// Authenticated, but the inner type is unknown or the payload too long.
    Malformed,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Handshake(e) => write!(f, "handshake failed: {e}"),
            SessionError::StaleHandshake => f.write_str("handshake replayed (timestamp not newer)"),
            SessionError::Auth => f.write_str("datagram failed authentication"),
            SessionError::Replay => f.write_str("datagram replayed or too old"),
            SessionError::Malformed => f.write_str("authenticated datagram with an unknown type"),
        }
    }
}

impl std::error::Error for SessionError {}

fn noise(e: snow::Error) -> SessionError {
    SessionError::Handshake(e.to_string())
}

/// An agent's static X25519 key pair for Noise: its node key (`ipop_cert::NodeKey`, kept in
/// the state directory) in X25519 form; the public half goes to the rendezvous.
#[derive(Clone)]
pub struct Identity {
    private: [u8; KEY_LEN],
    pub public: [u8; KEY_LEN],
}

impl Identity {
    pub fn from_key(key: &ipop_cert::NodeKey) -> Self {
        Self { private: key.x25519_secret(), public: key.public().x25519() }
    }

    /// The private half, for the other Noise patterns of this node (sealed signals).
    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// A key of its own, kept nowhere (tests, and members of the library's own making).
    pub fn generate() -> Self {
        Self::from_key(&ipop_cert::NodeKey::generate())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex(&self.public))
    }
}

/// The overlay's pre-shared key for the Noise handshake, from `key` (the stretched secret's
/// key for links, or the CA's public key).
pub fn overlay_psk(overlay: &str, key: &[u8]) -> [u8; 32] {
    mac(key, &[b"ipop psk v1", overlay.as_bytes()])
}

/// The PSK of an overlay with a shared secret: from the stretched secret, under a label of its
/// own (the join proof uses the same secret under another).
pub fn secret_psk(overlay: &str, secret: &crate::signaling::admission::Secret) -> [u8; 32] {
    overlay_psk(overlay, &secret.derive("ipop link psk"))
}

/// An initiator waiting for the responder's message.
pub struct Initiator {
    state: HandshakeState,
}

/// Starts a handshake with the peer whose static key is `remote`; returns the datagram to
/// send (kind HANDSHAKE_INIT). `timestamp` must grow between handshakes to the same peer.
pub fn initiate(
    id: &Identity,
    remote: &[u8; KEY_LEN],
    psk: &[u8; 32],
    timestamp: u64,
    aead: Aead,
) -> Result<(Initiator, Vec<u8>), SessionError> {
    let mut state = Builder::new(aead.params().parse().unwrap())
        .local_private_key(&id.private)
        .and_then(|b| b.remote_public_key(remote))
        .and_then(|b| b.psk(0, psk))
        .and_then(|b| b.build_initiator())
        .map_err(noise)?;
    let mut out = vec![0u8; 256];
    out[0] = wire::HANDSHAKE_INIT;
    let n = state.write_message(&timestamp.to_be_bytes(), &mut out[1..]).map_err(noise)?;
    out.truncate(1 + n);
    Ok((Initiator { state }, out))
}

impl Initiator {
    /// Completes the handshake with the responder's message body.
    pub fn finish(mut self, body: &[u8]) -> Result<Session, SessionError> {
        let mut payload = [0u8; 64];
        self.state.read_message(body, &mut payload).map_err(noise)?;
        Session::new(self.state)
    }
}

/// Answers a first message from the peer whose static key is `remote`. `last_timestamp` is
/// the newest timestamp accepted from that peer so far. Returns the session, the datagram to
/// send back (kind HANDSHAKE_RESP) and the new timestamp to remember.
pub fn respond(
    id: &Identity,
    remote: &[u8; KEY_LEN],
    psk: &[u8; 32],
    body: &[u8],
    last_timestamp: Option<u64>,
    aead: Aead,
) -> Result<(Session, Vec<u8>, u64), SessionError> {
    let mut state = Builder::new(aead.params().parse().unwrap())
        .local_private_key(&id.private)
        .and_then(|b| b.remote_public_key(remote))
        .and_then(|b| b.psk(0, psk))
        .and_then(|b| b.build_responder())
        .map_err(noise)?;
    let mut payload = [0u8; 64];
    let n = state.read_message(body, &mut payload).map_err(noise)?;
    let timestamp =
        u64::from_be_bytes(payload[..n].try_into().map_err(|_| SessionError::Handshake("bad timestamp".into()))?);
    if last_timestamp.is_some_and(|last| timestamp <= last) {
        return Err(SessionError::StaleHandshake);
    }
    let mut out = vec![0u8; 256];
    out[0] = wire::HANDSHAKE_RESP;
    let n = state.write_message(&[], &mut out[1..]).map_err(noise)?;
    out.truncate(1 + n);
    Ok((Session::new(state)?, out, timestamp))
}

/// An established session: seals outgoing and opens incoming transport datagrams. It splits
/// into a [`Sealer`] (shared by whoever sends: the counter is atomic) and an [`Opener`] (owned
/// by the one reader: it keeps the replay window), so sending and receiving need no lock.
pub struct Session {
    sealer: Sealer,
    opener: Opener,
}

/// The sending half of a session. Clones share the counter, so no nonce is ever reused.
#[derive(Clone)]
pub struct Sealer {
    transport: Arc<StatelessTransportState>,
    next_counter: Arc<AtomicU64>,
}

/// The receiving half of a session.
pub struct Opener {
    transport: Arc<StatelessTransportState>,
    replay: ReplayWindow,
}

impl Session {
    fn new(state: HandshakeState) -> Result<Self, SessionError> {
        let transport = Arc::new(state.into_stateless_transport_mode().map_err(noise)?);
        Ok(Self {
            sealer: Sealer { transport: transport.clone(), next_counter: Arc::new(AtomicU64::new(0)) },
            opener: Opener { transport, replay: ReplayWindow::new() },
        })
    }

    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }

    pub fn seal(&mut self, inner: Inner, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.sealer.seal(inner, payload, out)
    }

    pub fn open(&mut self, counter: u64, sealed: &[u8], out: &mut Vec<u8>) -> Result<Inner, SessionError> {
        self.opener.open(counter, sealed, out)
    }
}

impl Sealer {
    /// How many datagrams this session has sealed (its volume, for rekeying).
    pub fn sealed(&self) -> u64 {
        self.next_counter.load(Ordering::Relaxed)
    }

    /// Appends to `out` the transport datagram carrying `payload` of type `inner`.
    pub fn seal(&self, inner: Inner, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SessionError> {
        out.push(wire::TRANSPORT);
        self.seal_body(inner, &[payload], out)
    }

    /// Appends to `out` a datagram for the peer's data socket, addressed to its receiver
    /// `index`, carrying the concatenation of `parts` (a chunk header and its data, say).
    pub fn seal_indexed(
        &self,
        index: u32,
        inner: Inner,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), SessionError> {
        out.push(wire::INDEXED);
        out.extend_from_slice(&index.to_be_bytes());
        self.seal_body(inner, parts, out)
    }

    fn seal_body(&self, inner: Inner, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), SessionError> {
        thread_local! {
            // snow seals from one buffer into another: one plaintext scratch per thread
            // spares an allocation per datagram.
            static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > wire::MAX_PAYLOAD {
            return Err(SessionError::Malformed);
        }
        let counter = self.next_counter.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(&counter.to_be_bytes());
        let body = out.len();
        out.resize(body + 1 + len + wire::TAG_LEN, 0);
        PLAIN.with_borrow_mut(|plain| {
            plain.clear();
            plain.push(inner.to_byte());
            parts.iter().for_each(|p| plain.extend_from_slice(p));
            let n = self.transport.write_message(counter, plain, &mut out[body..]).map_err(|_| SessionError::Auth)?;
            out.truncate(body + n);
            Ok(())
        })
    }
}

/// What a link's readers open with, across rekeys: the current session's opener and, for a
/// while after a new session, the one before it (datagrams the peer sealed before it switched
/// are still on their way, on either path). Shared by the link's two readers.
pub struct Openers {
    current: Opener,
    previous: Option<Opener>,
    /// Whether anything opened with `current` yet: the responder of a rekey seals with the
    /// new session only once the initiator's datagrams show it has the new keys too.
    current_used: bool,
}

impl Openers {
    pub fn new(first: Opener) -> Self {
        Openers { current: first, previous: None, current_used: false }
    }

    /// A new session's opener becomes current; the current one stays as the previous.
    pub fn rotate(&mut self, next: Opener) {
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.current_used = false;
    }

    /// The previous session's datagrams have had their time: refused from now on.
    pub fn retire_previous(&mut self) {
        self.previous = None;
    }

    pub fn current_used(&self) -> bool {
        self.current_used
    }

    /// Opens with the current session, else with the previous one (counters restart with each
    /// session, so a "replay" for the current one may be new for the previous).
    pub fn open(&mut self, counter: u64, sealed: &[u8], out: &mut Vec<u8>) -> Result<Inner, SessionError> {
        let err = match self.current.open(counter, sealed, out) {
            Ok(inner) => {
                self.current_used = true;
                return Ok(inner);
            }
            Err(e) => e,
        };
        match &mut self.previous {
            Some(previous) => previous.open(counter, sealed, out).map_err(|_| err),
            None => Err(err),
        }
    }
}

impl Opener {
    /// Authenticates and decrypts a transport datagram's body into `out`; returns its type.
    /// Replays and forgeries are refused without changing the window.
    pub fn open(&mut self, counter: u64, sealed: &[u8], out: &mut Vec<u8>) -> Result<Inner, SessionError> {
        if !self.replay.check(counter) {
            return Err(SessionError::Replay);
        }
        out.clear();
        out.resize(sealed.len(), 0);
        let n = self.transport.read_message(counter, sealed, out).map_err(|_| SessionError::Auth)?;
        out.truncate(n);
        self.replay.accept(counter);
        let Some((&kind, _)) = out.split_first() else { return Err(SessionError::Malformed) };
        let inner = Inner::from_byte(kind).ok_or(SessionError::Malformed)?;
        out.remove(0);
        Ok(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::Datagram;

    fn pair() -> (Identity, Identity, [u8; 32]) {
        (Identity::generate(), Identity::generate(), overlay_psk("lab", b"s3cret"))
    }

    fn handshake(a: &Identity, b: &Identity, psk: &[u8; 32]) -> (Session, Session) {
        let (init, msg1) = initiate(a, &b.public, psk, 1, Aead::ChaChaPoly).unwrap();
        let Datagram::HandshakeInit(body) = Datagram::parse(&msg1).unwrap() else { panic!() };
        let (sb, msg2, ts) = respond(b, &a.public, psk, body, None, Aead::ChaChaPoly).unwrap();
        assert_eq!(ts, 1);
        let Datagram::HandshakeResp(body) = Datagram::parse(&msg2).unwrap() else { panic!() };
        (init.finish(body).unwrap(), sb)
    }

    fn open(s: &mut Session, datagram: &[u8]) -> Result<(Inner, Vec<u8>), SessionError> {
        let Datagram::Transport { counter, sealed } = Datagram::parse(datagram).unwrap() else { panic!() };
        let mut out = Vec::new();
        s.open(counter, sealed, &mut out).map(|i| (i, out))
    }

    #[test]
    fn members_with_the_secret_talk_both_ways() {
        let (a, b, psk) = pair();
        let (mut sa, mut sb) = handshake(&a, &b, &psk);
        let mut d = Vec::new();
        sa.seal(Inner::Ethernet, b"frame", &mut d).unwrap();
        assert_eq!(d.len(), 5 + wire::OVERHEAD);
        assert_eq!(open(&mut sb, &d).unwrap(), (Inner::Ethernet, b"frame".to_vec()));
        let mut d = Vec::new();
        sb.seal(Inner::Rpc, br#"{"jsonrpc":"2.0"}"#, &mut d).unwrap();
        assert_eq!(open(&mut sa, &d).unwrap().0, Inner::Rpc);
    }

    #[test]
    fn aes_gcm_sessions_talk_and_a_pair_must_agree_on_the_aead() {
        let (a, b, psk) = pair();
        let (init, msg1) = initiate(&a, &b.public, &psk, 1, Aead::AesGcm).unwrap();
        let (mut sb, msg2, _) = respond(&b, &a.public, &psk, &msg1[1..], None, Aead::AesGcm).unwrap();
        let mut sa = init.finish(&msg2[1..]).unwrap();
        let mut d = Vec::new();
        sa.seal(Inner::Ethernet, b"frame", &mut d).unwrap();
        assert_eq!(open(&mut sb, &d).unwrap(), (Inner::Ethernet, b"frame".to_vec()));
        // A responder that took the other AEAD cannot read the first message.
        let (_, msg1) = initiate(&a, &b.public, &psk, 2, Aead::AesGcm).unwrap();
        assert!(matches!(
            respond(&b, &a.public, &psk, &msg1[1..], None, Aead::ChaChaPoly),
            Err(SessionError::Handshake(_))
        ));
    }

    #[test]
    fn after_a_rekey_datagrams_of_both_sessions_open_until_the_old_one_retires() {
        let (a, b, psk) = pair();
        let (old_a, old_b) = handshake(&a, &b, &psk);
        let (old_tx, _) = old_a.split();
        let (_, old_rx) = old_b.split();
        let mut openers = Openers::new(old_rx);
        let seal = |tx: &Sealer, payload: &[u8]| {
            let mut d = Vec::new();
            tx.seal(Inner::Ethernet, payload, &mut d).unwrap();
            d
        };
        let open = |o: &mut Openers, d: &[u8]| {
            let Datagram::Transport { counter, sealed } = Datagram::parse(d).unwrap() else { panic!() };
            o.open(counter, sealed, &mut Vec::new())
        };
        let before = seal(&old_tx, b"sealed before the rekey");
        let (new_a, new_b) = handshake(&a, &b, &psk);
        openers.rotate(new_b.split().1);
        assert!(!openers.current_used(), "nothing of the new session yet");
        let (new_tx, _) = new_a.split();
        // Counter 0 in both sessions: the new one's is no replay of the old one's.
        assert_eq!(open(&mut openers, &seal(&new_tx, b"new")), Ok(Inner::Ethernet));
        assert!(openers.current_used());
        assert_eq!(open(&mut openers, &before), Ok(Inner::Ethernet), "in flight across the rekey");
        assert_eq!(open(&mut openers, &before), Err(SessionError::Replay), "but only once");
        openers.retire_previous();
        assert!(open(&mut openers, &seal(&old_tx, b"late")).is_err(), "the old session is gone");
    }

    #[test]
    fn aes_gcm_only_when_both_ends_do_it_fast() {
        use Aead::*;
        assert_eq!(AesGcm.agree(AesGcm), AesGcm);
        assert_eq!(AesGcm.agree(ChaChaPoly), ChaChaPoly);
        assert_eq!(ChaChaPoly.agree(AesGcm), ChaChaPoly);
        for a in [AesGcm, ChaChaPoly] {
            assert_eq!(Aead::from_name(a.name()), Some(a));
        }
        assert_eq!(Aead::from_name("rot13"), None);
    }

    #[test]
    fn indexed_datagrams_carry_their_parts_and_share_the_replay_window() {
        let (a, b, psk) = pair();
        let (sa, mut sb) = handshake(&a, &b, &psk);
        let mut d = Vec::new();
        sa.sealer.seal_indexed(0xdead_beef, Inner::Ethernet, &[b"chunk ", b"data"], &mut d).unwrap();
        assert_eq!(d.len(), 10 + wire::OVERHEAD + wire::INDEX_LEN);
        let Datagram::Indexed { index, counter, sealed } = Datagram::parse(&d).unwrap() else { panic!() };
        assert_eq!(index, 0xdead_beef);
        let mut out = Vec::new();
        assert_eq!(sb.open(counter, sealed, &mut out), Ok(Inner::Ethernet));
        assert_eq!(out, b"chunk data");
        assert_eq!(sb.open(counter, sealed, &mut out), Err(SessionError::Replay), "one window for both paths");
        let mut sealed = sealed.to_vec();
        sealed[0] ^= 1;
        assert_eq!(sb.open(counter + 1, &sealed, &mut out), Err(SessionError::Auth));
    }

    #[test]
    fn split_halves_talk_and_clones_never_reuse_a_counter() {
        let (a, b, psk) = pair();
        let (sa, sb) = handshake(&a, &b, &psk);
        let (sealer, _) = sa.split();
        let (_, mut opener) = sb.split();
        let other = sealer.clone();
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        sealer.seal(Inner::Ethernet, b"one", &mut d1).unwrap();
        other.seal(Inner::Ethernet, b"two", &mut d2).unwrap();
        for (d, want) in [(&d1, b"one"), (&d2, b"two")] {
            let Datagram::Transport { counter, sealed } = Datagram::parse(d).unwrap() else { panic!() };
            let mut out = Vec::new();
            assert_eq!(opener.open(counter, sealed, &mut out), Ok(Inner::Ethernet));
            assert_eq!(&out, want);
        }
    }

    #[test]
    fn replays_and_forgeries_are_dropped() {
        let (a, b, psk) = pair();
        let (mut sa, mut sb) = handshake(&a, &b, &psk);
        let mut d = Vec::new();
        sa.seal(Inner::Keepalive, &[], &mut d).unwrap();
        assert!(open(&mut sb, &d).is_ok());
        assert_eq!(open(&mut sb, &d), Err(SessionError::Replay));
        let mut d2 = Vec::new();
        sa.seal(Inner::Ethernet, b"x", &mut d2).unwrap();
        let mut forged = d2.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(open(&mut sb, &forged), Err(SessionError::Auth));
        assert!(open(&mut sb, &d2).is_ok(), "a forgery does not burn the real datagram's counter");
    }

    #[test]
    fn a_wrong_secret_or_an_unknown_key_fails_the_handshake() {
        let (a, b, psk) = pair();
        let (_, msg1) = initiate(&a, &b.public, &overlay_psk("lab", b"wrong"), 1, Aead::ChaChaPoly).unwrap();
        assert!(matches!(
            respond(&b, &a.public, &psk, &msg1[1..], None, Aead::ChaChaPoly),
            Err(SessionError::Handshake(_))
        ));
        let stranger = Identity::generate();
        let (_, msg1) = initiate(&stranger, &b.public, &psk, 1, Aead::ChaChaPoly).unwrap();
        assert!(matches!(
            respond(&b, &a.public, &psk, &msg1[1..], None, Aead::ChaChaPoly),
            Err(SessionError::Handshake(_))
        ));
    }

    #[test]
    fn a_replayed_first_message_is_refused() {
        let (a, b, psk) = pair();
        let (_, msg1) = initiate(&a, &b.public, &psk, 10, Aead::ChaChaPoly).unwrap();
        let (_, _, ts) = respond(&b, &a.public, &psk, &msg1[1..], None, Aead::ChaChaPoly).unwrap();
        assert_eq!(
            respond(&b, &a.public, &psk, &msg1[1..], Some(ts), Aead::ChaChaPoly).err(),
            Some(SessionError::StaleHandshake)
        );
    }

    #[test]
    fn psks_separate_overlays() {
        assert_ne!(overlay_psk("lab", b"x"), overlay_psk("lab2", b"x"));
    }
}
