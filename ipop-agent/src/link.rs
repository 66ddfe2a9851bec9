//! One link to one peer: ICE (webrtc-ice) finds a path, a Noise session (`session`) secures
//! it, keepalives watch it, and it is set up again with backoff when it dies.
//!
//! The side with the smaller node id controls ICE and initiates the handshake, so both sides
//! agree without talking. Signals (through the rendezvous) carry a session number so that
//! candidates of an old attempt never mix with a new one:
//! `{"t":"offer"|"answer","s":N,"ufrag":..,"pwd":..}` and `{"t":"cand","s":N,"c":"candidate:..."}`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};
use webrtc_ice::{
    agent::{Agent, agent_config::AgentConfig},
    candidate::{Candidate, CandidateType, candidate_base::unmarshal_candidate},
    mdns::MulticastDnsMode,
    network_type::NetworkType,
    url::Url,
};
use webrtc_util::Conn;

use crate::{
    session::{self, Aead, Identity, Opener, Sealer, Session, SessionError},
    signaling::Signaling,
    switch::PeerId,
    underlay::{Receiver, Registration, Underlay},
    wire::{self, Datagram, Inner},
};

/// A link sends a keepalive when it has sent nothing for this long...
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// ...and declares the peer dead when it has received nothing for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const HANDSHAKE_RETRY: Duration = Duration::from_millis(500);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How often a link probes the data socket path until it answers...
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// ...for this long, then only every `PROBE_SLOW` (data meanwhile on the ICE path). Once up,
/// a probe crosses it every half second, and the data path is given up when none was answered for
/// `DIRECT_QUIET`: answers, not just arrivals, so a path blocked one way is noticed on both
/// sides.
const PROBE_FOR: Duration = Duration::from_secs(5);
const PROBE_SLOW: Duration = Duration::from_secs(5);
const DIRECT_QUIET: Duration = Duration::from_millis(2500);
/// A probe's payload: it makes the probe exactly `chunk::DIRECT_DATAGRAM` bytes.
const PROBE_PADDING: [u8; crate::chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN] =
    [0; crate::chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN];

/// What every link of an agent shares.
#[derive(Clone)]
pub struct LinkShared {
    pub identity: Identity,
    pub psk: [u8; 32],
    /// STUN/TURN urls for server-reflexive and relay candidates.
    pub ice_urls: Vec<String>,
    /// Interfaces never used for candidates (the bridge, the TAP: the overlay must not run
    /// over itself).
    pub exclude_ifaces: Vec<String>,
    pub signaling: Signaling,
    pub events: mpsc::Sender<LinkEvent>,
    /// The agent's data socket, if it has one: links probe it and move data there.
    pub data: Option<DataSocket>,
    /// The AEAD this machine seals fastest (`Aead::local`); a pair agrees on one.
    pub aead: Aead,
}

/// The data socket as links see it: for sending, and for telling its reader which receiver
/// index belongs to which session.
#[derive(Clone)]
pub struct DataSocket {
    pub underlay: Arc<Underlay>,
    pub registrations: mpsc::UnboundedSender<Registration>,
}

/// What a link needs to know.
#[derive(Clone)]
pub struct LinkParams {
    pub peer: PeerId,
    pub peer_node: String,
    pub remote_key: [u8; 32],
    pub controlling: bool,
    pub shared: LinkShared,
}

/// What the agent tells a link.
#[derive(Debug)]
pub enum LinkCmd {
    Signal(Value),
    /// Shared bytes: a broadcast hands the same buffer to every link without copying.
    Send(Inner, bytes::Bytes),
}

/// The agent's direct line to a peer once a link is up: it seals and sends itself, on the
/// data socket once the path there is proven, else on the ICE connection, without a hop
/// through the link task.
#[derive(Clone)]
pub struct DataTx {
    sealer: Sealer,
    conn: Arc<dyn Conn + Send + Sync>,
    direct: Option<Direct>,
}

/// A proven path on the data socket: where the peer's socket is, and its receiver index.
#[derive(Clone)]
struct Direct {
    underlay: Arc<Underlay>,
    to: SocketAddr,
    index: u32,
}

impl std::fmt::Debug for DataTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataTx({})", if self.direct.is_some() { "direct" } else { "ice" })
    }
}

impl DataTx {
    /// Whether data goes on the data socket (else on the ICE connection).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Seals and sends `payload` now if the socket takes it at once (it almost always does);
    /// false if it would have to wait, so the caller queues it to the link task instead.
    pub fn try_send(&self, inner: Inner, payload: &[u8], scratch: &mut Vec<u8>) -> bool {
        use futures_util::FutureExt as _;
        scratch.clear();
        if let Some(d) = &self.direct {
            if self.sealer.seal_indexed(d.index, inner, &[payload], scratch).is_err() {
                return true; // too long: nothing to queue either
            }
            return d.underlay.send(d.to, scratch, scratch.len()).is_ok();
        }
        if self.sealer.seal(inner, payload, scratch).is_err() {
            return true;
        }
        matches!(self.conn.send(scratch).now_or_never(), Some(Ok(_)))
    }

    /// Sends a whole frame (virtio header and frame) on the data socket, cut into chunks
    /// sealed end to end and handed to the kernel in one GSO send; `None` without a data
    /// path (the caller chunks it for the ICE path), else whether the socket took it.
    pub fn send_frame(&self, id: u32, whole: &[u8], scratch: &mut Vec<u8>) -> Option<bool> {
        let d = self.direct.as_ref()?;
        scratch.clear();
        let mut segment = 0;
        for (header, data) in crate::chunk::pieces(id, whole, crate::chunk::DIRECT_DATA) {
            if self.sealer.seal_indexed(d.index, Inner::Ethernet, &[&header, data], scratch).is_err() {
                return Some(true); // cannot happen for a whole the TAP gave: nothing to retry
            }
            if segment == 0 {
                segment = scratch.len();
            }
        }
        Some(d.underlay.send(d.to, scratch, segment).is_ok())
    }
}

/// What a link tells the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// The link is up (again, after a new handshake): send through `DataTx` from now on.
    Up(PeerId, DataTx),
    Down(PeerId),
    /// An RPC message, or a whole frame (virtio header and frame, put back together from
    /// its chunks by the reader).
    Received(PeerId, Inner, Vec<u8>),
    /// A frame lost on the way (a chunk missing or malformed).
    FrameLost(PeerId),
    /// A datagram failed authentication, was replayed, or a handshake was refused.
    Dropped(PeerId, SessionError),
}

/// Starts the link task; dropping the sender closes the link.
pub fn spawn(params: LinkParams) -> (mpsc::Sender<LinkCmd>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let handle = tokio::spawn(run(params, rx));
    (tx, handle)
}

/// An offer or answer from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Creds {
    session: u64,
    ufrag: String,
    pwd: String,
    /// The sender's data socket port and its receiver index for this session, if it has one.
    data: Option<(u16, u32)>,
    /// The AEAD the sender seals fastest (ChaChaPoly if it does not say).
    aead: Aead,
}

enum Signal {
    Offer(Creds),
    Answer(Creds),
    Candidate(u64, String),
}

fn parse_signal(v: &Value) -> Option<Signal> {
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

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

enum Ended {
    /// The agent dropped the link.
    Closed,
    /// The link went down (or never came up); try again.
    Retry,
    /// The peer offered a new session (it restarted its side): answer it at once.
    NewOffer(Creds),
}

async fn run(p: LinkParams, mut cmds: mpsc::Receiver<LinkCmd>) {
    let mut backoff = BACKOFF_MIN;
    let mut offer: Option<Creds> = None;
    let mut last_handshake: Option<u64> = None;
    loop {
        let result = attempt(&p, &mut cmds, offer.take(), &mut last_handshake).await;
        let ended = match result {
            Ok((ended, was_up)) => {
                if was_up {
                    backoff = BACKOFF_MIN;
                    let _ = p.shared.events.send(LinkEvent::Down(p.peer)).await;
                }
                ended
            }
            Err(e) => {
                debug!(peer = %p.peer_node, "link attempt failed: {e:#}");
                Ended::Retry
            }
        };
        match ended {
            Ended::Closed => return,
            Ended::NewOffer(c) => offer = Some(c),
            Ended::Retry if p.controlling => {
                // Wait out the backoff, but stay responsive to the agent closing us.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        cmd = cmds.recv() => if cmd.is_none() { return },
                    }
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Ended::Retry => {} // the controlled side waits for the next offer
        }
    }
}

async fn new_ice_agent(p: &LinkParams) -> Result<Arc<Agent>> {
    let urls = p
        .shared
        .ice_urls
        .iter()
        .map(|u| Url::parse_url(u).map_err(|e| anyhow!("ICE url {u}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut candidate_types = vec![CandidateType::Host];
    if !urls.is_empty() {
        candidate_types.extend([CandidateType::ServerReflexive, CandidateType::Relay]);
    }
    let exclude = p.shared.exclude_ifaces.clone();
    let config = AgentConfig {
        urls,
        network_types: vec![NetworkType::Udp4],
        candidate_types,
        multicast_dns_mode: MulticastDnsMode::Disabled,
        interface_filter: Arc::new(Some(Box::new(move |name: &str| {
            name != "lo" && !exclude.iter().any(|e| e == name)
        }))),
        disconnected_timeout: Some(DEAD_AFTER),
        failed_timeout: Some(DEAD_AFTER * 2),
        keepalive_interval: Some(KEEPALIVE),
        check_interval: Duration::from_millis(100),
        ..Default::default()
    };
    Ok(Arc::new(Agent::new(config).await.context("creating the ICE agent")?))
}

/// One attempt: exchange credentials, connect, handshake, carry datagrams until the link dies.
/// Returns how it ended and whether the link was up.
async fn attempt(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    offer: Option<Creds>,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    // The controlled side first waits for an offer.
    let offer = match (p.controlling, offer) {
        (true, _) => None,
        (false, Some(o)) => Some(o),
        (false, None) => loop {
            match cmds.recv().await {
                None => return Ok((Ended::Closed, false)),
                Some(LinkCmd::Signal(v)) => {
                    if let Some(Signal::Offer(o)) = parse_signal(&v) {
                        break Some(o);
                    }
                }
                Some(LinkCmd::Send(..)) => {} // no link yet: nowhere to send
            }
        },
    };
    let agent = new_ice_agent(p).await?;
    let result = connect_and_serve(p, cmds, &agent, offer, last_handshake).await;
    let _ = agent.close().await;
    result
}

async fn connect_and_serve(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    agent: &Arc<Agent>,
    offer: Option<Creds>,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    let (ufrag, pwd) = agent.get_local_user_credentials().await;
    let session_id = match &offer {
        Some(o) => o.session,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow!("getrandom: {e}"))?;
            u64::from_be_bytes(b) >> 11 // fits a JSON number exactly
        }
    };
    let kind = if p.controlling { "offer" } else { "answer" };
    let mut creds = json!({"t": kind, "s": session_id, "ufrag": ufrag, "pwd": pwd, "aead": p.shared.aead.name()});
    let my_index = random_u32()?;
    if let Some(d) = &p.shared.data {
        creds["dp"] = d.underlay.port().into();
        creds["ix"] = my_index.into();
    }
    p.shared.signaling.send(&p.peer_node, creds);

    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel::<String>();
    agent.on_candidate(Box::new(move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
        if let Some(c) = c {
            let _ = cand_tx.send(c.marshal());
        }
        Box::pin(async {})
    }));
    agent.gather_candidates().context("gathering candidates")?;

    let mut remote = offer;
    let mut early_candidates: Vec<String> = Vec::new();
    let (cancel_tx, cancel_rx) = mpsc::channel::<()>(1);
    let mut dial: Option<JoinHandle<Result<Arc<dyn Conn + Send + Sync>>>> = None;
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    let mut cancel_rx = Some(cancel_rx);
    let conn = loop {
        if dial.is_none()
            && let Some(r) = &remote
        {
            for c in early_candidates.drain(..) {
                add_candidate(agent, &c);
            }
            let (agent, r, cancel) = (agent.clone(), r.clone(), cancel_rx.take().unwrap());
            let controlling = p.controlling;
            dial = Some(tokio::spawn(async move {
                let conn: Arc<dyn Conn + Send + Sync> = if controlling {
                    agent.dial(cancel, r.ufrag, r.pwd).await?
                } else {
                    agent.accept(cancel, r.ufrag, r.pwd).await?
                };
                Ok(conn)
            }));
        }
        tokio::select! {
            _ = &mut deadline => {
                let _ = cancel_tx.try_send(());
                bail!("no ICE connection within {CONNECT_TIMEOUT:?}");
            }
            Some(c) = cand_rx.recv() => p.shared.signaling.send(&p.peer_node, json!({"t": "cand", "s": session_id, "c": c})),
            cmd = cmds.recv() => match cmd {
                None => { let _ = cancel_tx.try_send(()); return Ok((Ended::Closed, false)) }
                Some(LinkCmd::Send(..)) => {}
                Some(LinkCmd::Signal(v)) => match parse_signal(&v) {
                    Some(Signal::Answer(a)) if p.controlling && a.session == session_id && remote.is_none() => remote = Some(a),
                    Some(Signal::Offer(o)) if !p.controlling && o.session != session_id => {
                        let _ = cancel_tx.try_send(());
                        return Ok((Ended::NewOffer(o), false));
                    }
                    Some(Signal::Candidate(s, c)) if s == session_id => {
                        if remote.is_some() && dial.is_some() { add_candidate(agent, &c) } else { early_candidates.push(c) }
                    }
                    _ => {}
                },
            },
            res = async { dial.as_mut().unwrap().await }, if dial.is_some() => {
                break res.map_err(|e| anyhow!("dial task: {e}"))??;
            }
        }
    };
    debug!(peer = %p.peer_node, "ICE connected; handshaking");
    enlarge_udp_buffers();
    // The peer's data socket is tried at the address ICE found for it, with its own port: a
    // NAT that keeps ports (as most do for a new mapping) lets it through, else the probe
    // fails and data stays on ICE.
    let plan = match (&p.shared.data, remote.as_ref().and_then(|r| r.data), agent.get_selected_candidate_pair()) {
        (Some(_), Some((port, peer_index)), Some(pair)) => {
            Some(Plan { my_index, peer_addr: SocketAddr::new(pair.remote.addr().ip(), port), peer_index })
        }
        _ => None,
    };

    // Datagrams from the connection, read by their own task: once a session is up it opens
    // them and hands them straight to the agent; handshakes go to the link task.
    let (dg_tx, dg_rx) = mpsc::channel::<Vec<u8>>(64);
    let (opener_tx, opener_rx) = mpsc::unbounded_channel::<Arc<Mutex<Opener>>>();
    let last_rx = Arc::new(AtomicU64::new(0));
    let reader =
        tokio::spawn(read_datagrams(p.peer, conn.clone(), p.shared.events.clone(), dg_tx, opener_rx, last_rx.clone()));
    let aead = p.shared.aead.agree(remote.as_ref().map_or(Aead::ChaChaPoly, |r| r.aead));
    let io = LinkIo { conn: conn.clone(), dg_rx, openers: opener_tx, last_rx, plan, aead };
    let result = serve(p, cmds, io, session_id, last_handshake).await;
    if let Some(d) = &p.shared.data {
        let _ = d.registrations.send(Registration::Remove(my_index));
    }
    reader.abort();
    let _ = conn.close().await;
    result
}

/// How this link will try the data socket: its own receiver index, and the peer's.
#[derive(Debug, Clone, Copy)]
struct Plan {
    my_index: u32,
    peer_addr: SocketAddr,
    peer_index: u32,
}

/// What `serve` works with once ICE is connected.
struct LinkIo {
    conn: Arc<dyn Conn + Send + Sync>,
    /// Handshake datagrams from the ICE reader.
    dg_rx: mpsc::Receiver<Vec<u8>>,
    /// Each new session's opener, for the ICE reader.
    openers: mpsc::UnboundedSender<Arc<Mutex<Opener>>>,
    /// When anything authentic last arrived on the ICE path (`clock_ms`).
    last_rx: Arc<AtomicU64>,
    plan: Option<Plan>,
    /// What the pair agreed on.
    aead: Aead,
}

fn random_u32() -> Result<u32> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow!("getrandom: {e}"))?;
    Ok(u32::from_be_bytes(b))
}

/// Milliseconds since the process's first call: a clock the readers and the link share.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

async fn read_datagrams(
    peer: PeerId,
    conn: Arc<dyn Conn + Send + Sync>,
    events: mpsc::Sender<LinkEvent>,
    handshakes: mpsc::Sender<Vec<u8>>,
    mut openers: mpsc::UnboundedReceiver<Arc<Mutex<Opener>>>,
    last_rx: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 64];
    let mut rx = IceRx { peer, opener: None, plain: Vec::new(), frames: Default::default(), last_rx };
    // The responder may send as soon as its side is up, before this side has finished the
    // handshake: transport datagrams that arrive before the first session are held (a few).
    let mut early: Vec<Vec<u8>> = Vec::new();
    loop {
        let n = tokio::select! {
            o = openers.recv() => match o {
                Some(o) => {
                    rx.opener = Some(o);
                    for dg in std::mem::take(&mut early) {
                        if let Some(ev) = rx.open(&dg)
                            && events.send(ev).await.is_err()
                        {
                            return;
                        }
                    }
                    continue;
                }
                None => return,
            },
            n = conn.recv(&mut buf) => match n { Ok(n) => n, Err(_) => return },
        };
        let dg = &buf[..n];
        match Datagram::parse(dg) {
            Ok(Datagram::Transport { .. }) if rx.opener.is_none() => {
                if early.len() < EARLY_MAX {
                    early.push(dg.to_vec());
                }
            }
            Ok(Datagram::Transport { .. }) => {
                if let Some(ev) = rx.open(dg)
                    && events.send(ev).await.is_err()
                {
                    return;
                }
            }
            Ok(_) => {
                if handshakes.send(dg.to_vec()).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(peer, "bad datagram: {e}"),
        }
    }
}

/// Transport datagrams held until the first session is known.
const EARLY_MAX: usize = 256;

/// The ICE reader's side of a session.
struct IceRx {
    peer: PeerId,
    opener: Option<Arc<Mutex<Opener>>>,
    plain: Vec<u8>,
    frames: crate::chunk::Reassembly,
    last_rx: Arc<AtomicU64>,
}

impl IceRx {
    /// Opens a transport datagram: what to tell the agent, if anything.
    fn open(&mut self, dg: &[u8]) -> Option<LinkEvent> {
        let (Ok(Datagram::Transport { counter, sealed }), Some(o)) = (Datagram::parse(dg), &self.opener) else {
            return None;
        };
        let opened = o.lock().unwrap_or_else(|e| e.into_inner()).open(counter, sealed, &mut self.plain);
        let inner = match opened {
            Ok(inner) => inner,
            Err(e) => return Some(LinkEvent::Dropped(self.peer, e)),
        };
        self.last_rx.store(clock_ms(), Ordering::Relaxed);
        match inner {
            // Probes belong on the data socket only.
            Inner::Keepalive | Inner::Probe | Inner::ProbeAck => None,
            Inner::Rpc => Some(LinkEvent::Received(self.peer, inner, std::mem::take(&mut self.plain))),
            Inner::Ethernet => match self.frames.push(&self.plain) {
                Ok(Some(whole)) => Some(LinkEvent::Received(self.peer, inner, whole)),
                Ok(None) => None,
                Err(_) => Some(LinkEvent::FrameLost(self.peer)),
            },
        }
    }
}

/// Gives every UDP socket of this process bigger buffers (`underlay::force_buffers`).
/// webrtc-ice opens its sockets itself and does not expose them, so they are found through
/// /proc/self/fd.
fn enlarge_udp_buffers() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<libc::c_int>().ok()) else { continue };
        let mut kind: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on an fd number with out-parameters we own; non-sockets fail.
        let is_udp = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut kind as *mut libc::c_int).cast(), &mut len)
        } == 0
            && kind == libc::SOCK_DGRAM
            && std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_udp {
            continue;
        }
        crate::underlay::force_buffers(fd);
    }
}

fn add_candidate(agent: &Arc<Agent>, c: &str) {
    match unmarshal_candidate(c) {
        Ok(c) => {
            let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
            if let Err(e) = agent.add_remote_candidate(&c) {
                debug!("remote candidate refused: {e}");
            }
        }
        Err(e) => debug!("unparsable remote candidate: {e}"),
    }
}

/// Handshake, then keepalives until death, closure or a new offer; probes the data socket
/// path and moves data there when it answers. Data bypasses this task: the readers deliver,
/// and the agent sends through the `DataTx` it got with `Up`.
async fn serve(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    mut io: LinkIo,
    session_id: u64,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    let conn = io.conn.clone();
    let mut sealer: Option<Sealer> = None;
    let mut initiator = None;
    let mut init_msg = Vec::new();
    if p.controlling {
        let (i, msg) = session::initiate(&p.shared.identity, &p.remote_key, &p.shared.psk, now_ns(), io.aead)?;
        initiator = Some(i);
        init_msg = msg;
        conn.send(&init_msg).await?;
    }
    let started = Instant::now();
    let mut last_tx = Instant::now();
    let mut tick = tokio::time::interval(if p.controlling { HANDSHAKE_RETRY } else { KEEPALIVE / 2 });
    let mut out = Vec::with_capacity(wire::MAX_DATAGRAM);
    // The data socket path: probed from each new session until it answers or PROBE_FOR
    // passes; `direct` once it answered.
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<(Inner, SocketAddr)>();
    let direct_rx = Arc::new(AtomicU64::new(0));
    let mut direct: Option<Direct> = None;
    let mut probing_since: Option<Instant> = None;
    let mut probe_tick = tokio::time::interval(PROBE_EVERY);
    let mut last_probe = Instant::now();
    let mut said_slow = false;
    let mut last_ack = Instant::now();
    // The last first message answered, and the answer (the responder's side).
    let mut answered: Option<(Vec<u8>, Vec<u8>)> = None;
    // Hands a new session to the readers; the DataTx for the agent.
    let established =
        |s: Session, sealer: &mut Option<Sealer>, direct: &Option<Direct>, probing: &mut Option<Instant>| {
            let (tx, rx) = s.split();
            let rx = Arc::new(Mutex::new(rx));
            let _ = io.openers.send(rx.clone());
            if let (Some(d), Some(plan)) = (&p.shared.data, &io.plan) {
                let receiver =
                    Receiver { peer: p.peer, opener: rx, last_rx: direct_rx.clone(), probes: probe_tx.clone() };
                let _ = d.registrations.send(Registration::Add(plan.my_index, receiver));
                *probing = Some(Instant::now());
            }
            io.last_rx.store(clock_ms(), Ordering::Relaxed);
            *sealer = Some(tx.clone());
            DataTx { sealer: tx, conn: conn.clone(), direct: direct.clone() }
        };
    // Probes and their answers are as large as the largest data datagram: a path that drops
    // full-size datagrams (a smaller MTU, DF set) must fail the probe, not black-hole data.
    let send_direct = |sealer: &Sealer, inner: Inner, to: SocketAddr, out: &mut Vec<u8>| {
        let (Some(d), Some(plan)) = (&p.shared.data, &io.plan) else { return };
        out.clear();
        if sealer.seal_indexed(plan.peer_index, inner, &[&PROBE_PADDING], out).is_ok() {
            let _ = d.underlay.send(to, out, out.len());
        }
    };
    loop {
        tokio::select! {
            dg = io.dg_rx.recv() => {
                let Some(dg) = dg else { return Ok((Ended::Retry, sealer.is_some())) };
                match Datagram::parse(&dg) {
                    // The same first message again: our answer was lost (the initiator retries
                    // every 500 ms). Answer it again; a new session would be refused as stale.
                    Ok(Datagram::HandshakeInit(body)) if !p.controlling && answered.as_ref().is_some_and(|(m, _)| m == body) => {
                        if let Some((_, reply)) = &answered {
                            conn.send(reply).await?;
                        }
                    }
                    Ok(Datagram::HandshakeInit(body)) if !p.controlling => {
                        match session::respond(&p.shared.identity, &p.remote_key, &p.shared.psk, body, *last_handshake, io.aead) {
                            Ok((s, reply, ts)) => {
                                *last_handshake = Some(ts);
                                if sealer.is_none() {
                                    info!(peer = %p.peer_node, aead = io.aead.name(), "link up");
                                }
                                let data = established(s, &mut sealer, &direct, &mut probing_since);
                                conn.send(&reply).await?;
                                answered = Some((body.to_vec(), reply));
                                p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                            }
                            Err(e) => { let _ = p.shared.events.send(LinkEvent::Dropped(p.peer, e)).await; }
                        }
                    }
                    Ok(Datagram::HandshakeResp(body)) if p.controlling && initiator.is_some() => {
                        match initiator.take().unwrap().finish(body) {
                            Ok(s) => {
                                let data = established(s, &mut sealer, &direct, &mut probing_since);
                                tick = tokio::time::interval(KEEPALIVE / 2);
                                info!(peer = %p.peer_node, aead = io.aead.name(), "link up");
                                p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                            }
                            Err(e) => {
                                let _ = p.shared.events.try_send(LinkEvent::Dropped(p.peer, e.clone()));
                                bail!("handshake with {} failed: {e}", p.peer_node);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some((inner, from)) = probe_rx.recv() => {
                let Some(s) = &sealer else { continue };
                match inner {
                    // The peer reached our socket from `from`: answer there (through its NAT).
                    Inner::Probe => send_direct(s, Inner::ProbeAck, from, &mut out),
                    Inner::ProbeAck if direct.is_some() => last_ack = Instant::now(),
                    Inner::ProbeAck => {
                        let (Some(d), Some(plan)) = (&p.shared.data, &io.plan) else { continue };
                        last_ack = Instant::now();
                        info!(peer = %p.peer_node, addr = %from, "data path up on the data socket");
                        direct = Some(Direct { underlay: d.underlay.clone(), to: from, index: plan.peer_index });
                        probing_since = None;
                        said_slow = false;
                        let data = DataTx { sealer: s.clone(), conn: conn.clone(), direct: direct.clone() };
                        p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                    }
                    _ => {}
                }
            }
            _ = probe_tick.tick(), if probing_since.is_some() => {
                let (Some(s), Some(plan), Some(since)) = (&sealer, &io.plan, probing_since) else { continue };
                let slow = since.elapsed() > PROBE_FOR;
                if slow && !said_slow {
                    info!(peer = %p.peer_node, "the data socket path does not answer: data stays on ICE");
                    said_slow = true;
                }
                let every = if slow { PROBE_SLOW } else { PROBE_EVERY };
                if last_probe.elapsed() + PROBE_EVERY / 2 >= every {
                    send_direct(s, Inner::Probe, plan.peer_addr, &mut out);
                    last_probe = Instant::now();
                }
            }
            cmd = cmds.recv() => match cmd {
                None => return Ok((Ended::Closed, sealer.is_some())),
                Some(LinkCmd::Send(inner, payload)) => {
                    if let Some(s) = &sealer {
                        out.clear();
                        if s.seal(inner, &payload, &mut out).is_ok() {
                            if let Err(e) = conn.send(&out).await {
                                debug!(peer = %p.peer_node, "send failed: {e}");
                            }
                            last_tx = Instant::now();
                        }
                    }
                }
                Some(LinkCmd::Signal(v)) => {
                    if let Some(Signal::Offer(o)) = parse_signal(&v)
                        && !p.controlling
                        && o.session != session_id
                    {
                        info!(peer = %p.peer_node, "peer restarted the link");
                        return Ok((Ended::NewOffer(o), sealer.is_some()));
                    }
                }
            },
            _ = tick.tick() => {
                let Some(s) = &sealer else {
                    if started.elapsed() > HANDSHAKE_TIMEOUT {
                        bail!("no handshake with {} within {HANDSHAKE_TIMEOUT:?}", p.peer_node);
                    }
                    if p.controlling {
                        conn.send(&init_msg).await?; // the first one may have been lost
                    }
                    continue;
                };
                let now = clock_ms();
                let heard = io.last_rx.load(Ordering::Relaxed).max(direct_rx.load(Ordering::Relaxed));
                if now.saturating_sub(heard) > DEAD_AFTER.as_millis() as u64 {
                    warn!(peer = %p.peer_node, "link down: nothing received for {DEAD_AFTER:?}");
                    return Ok((Ended::Retry, true));
                }
                if let Some(d) = &direct {
                    if last_ack.elapsed() > DIRECT_QUIET {
                        // The ICE path still lives (else the link would be down): data goes
                        // back there, and the data socket is probed again.
                        warn!(peer = %p.peer_node, "data socket path quiet: data back on ICE");
                        direct = None;
                        probing_since = Some(Instant::now());
                        let data = DataTx { sealer: s.clone(), conn: conn.clone(), direct: None };
                        p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                    } else {
                        // Keeps the path checked (and any NAT mapping alive).
                        send_direct(s, Inner::Probe, d.to, &mut out);
                    }
                }
                // Keepalives go out regardless of data sent by the agent directly: one a second
                // is nothing, and the link task cannot see those sends.
                if last_tx.elapsed() >= KEEPALIVE {
                    out.clear();
                    s.seal(Inner::Keepalive, &[], &mut out)?;
                    let _ = conn.send(&out).await;
                    last_tx = Instant::now();
                }
            }
        }
    }
}
