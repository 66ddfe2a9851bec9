//! One link to one peer: ICE (webrtc-ice) finds a path, a Noise session (`session`) secures
//! it, keepalives watch it, and it is set up again with backoff when it dies.
//!
//! The side with the smaller node id controls ICE and initiates the handshake, so both sides
//! agree without talking. Signals (through the rendezvous) carry a session number so that
//! candidates of an old attempt never mix with a new one:
//! `{"t":"offer"|"answer","s":N,"ufrag":..,"pwd":..}` and `{"t":"cand","s":N,"c":"candidate:..."}`.

use std::{
    sync::{
        Arc,
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
    session::{self, Identity, Opener, Sealer, Session, SessionError},
    signaling::Signaling,
    switch::PeerId,
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

/// The agent's direct line to a peer once a link is up: it seals and sends on the ICE
/// connection itself, without a hop through the link task.
#[derive(Clone)]
pub struct DataTx {
    sealer: Sealer,
    conn: Arc<dyn Conn + Send + Sync>,
}

impl std::fmt::Debug for DataTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataTx")
    }
}

impl DataTx {
    /// Seals and sends `payload` now if the socket takes it at once (it almost always does);
    /// false if it would have to wait, so the caller queues it to the link task instead.
    pub fn try_send(&self, inner: Inner, payload: &[u8], scratch: &mut Vec<u8>) -> bool {
        use futures_util::FutureExt as _;
        scratch.clear();
        if self.sealer.seal(inner, payload, scratch).is_err() {
            return true; // too long: nothing to queue either
        }
        matches!(self.conn.send(scratch).now_or_never(), Some(Ok(_)))
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
}

enum Signal {
    Offer(Creds),
    Answer(Creds),
    Candidate(u64, String),
}

fn parse_signal(v: &Value) -> Option<Signal> {
    let session = v.get("s")?.as_u64()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| s.len() <= 512).map(str::to_owned);
    match v.get("t")?.as_str()? {
        "offer" => Some(Signal::Offer(Creds { session, ufrag: text("ufrag")?, pwd: text("pwd")? })),
        "answer" => Some(Signal::Answer(Creds { session, ufrag: text("ufrag")?, pwd: text("pwd")? })),
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
    p.shared.signaling.send(&p.peer_node, json!({"t": kind, "s": session_id, "ufrag": ufrag, "pwd": pwd}));

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

    // Datagrams from the connection, read by their own task: once a session is up it opens
    // them and hands them straight to the agent; handshakes go to the link task.
    let (dg_tx, mut dg_rx) = mpsc::channel::<Vec<u8>>(64);
    let (opener_tx, opener_rx) = mpsc::unbounded_channel::<Opener>();
    let last_rx = Arc::new(AtomicU64::new(0));
    let reader =
        tokio::spawn(read_datagrams(p.peer, conn.clone(), p.shared.events.clone(), dg_tx, opener_rx, last_rx.clone()));
    let result = serve(p, cmds, &conn, &mut dg_rx, opener_tx, &last_rx, session_id, last_handshake).await;
    reader.abort();
    let _ = conn.close().await;
    result
}

/// Milliseconds since the process's first call: a clock the reader and the link share.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

async fn read_datagrams(
    peer: PeerId,
    conn: Arc<dyn Conn + Send + Sync>,
    events: mpsc::Sender<LinkEvent>,
    handshakes: mpsc::Sender<Vec<u8>>,
    mut openers: mpsc::UnboundedReceiver<Opener>,
    last_rx: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 64];
    let mut opener: Option<Opener> = None;
    let mut plain = Vec::with_capacity(wire::MAX_DATAGRAM);
    let mut frames = crate::chunk::Reassembly::default();
    loop {
        let n = tokio::select! {
            o = openers.recv() => match o {
                Some(o) => { opener = Some(o); continue }
                None => return,
            },
            n = conn.recv(&mut buf) => match n { Ok(n) => n, Err(_) => return },
        };
        match Datagram::parse(&buf[..n]) {
            Ok(Datagram::Transport { counter, sealed }) => {
                let Some(o) = opener.as_mut() else { continue };
                match o.open(counter, sealed, &mut plain) {
                    Ok(inner) => {
                        last_rx.store(clock_ms(), Ordering::Relaxed);
                        let event = match inner {
                            Inner::Keepalive => continue,
                            Inner::Rpc => LinkEvent::Received(peer, inner, std::mem::take(&mut plain)),
                            Inner::Ethernet => match frames.push(&plain) {
                                Ok(Some(whole)) => LinkEvent::Received(peer, inner, whole),
                                Ok(None) => continue,
                                Err(_) => LinkEvent::FrameLost(peer),
                            },
                        };
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events.try_send(LinkEvent::Dropped(peer, e));
                    }
                }
            }
            Ok(_) => {
                if handshakes.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(peer, "bad datagram: {e}"),
        }
    }
}

/// Socket buffer size for the links' UDP sockets: room for bursts of 64 KiB super-frames.
const UDP_BUFFER: libc::c_int = 4 << 20;

/// Gives every UDP socket of this process `UDP_BUFFER` bytes of send and receive buffer.
/// webrtc-ice opens its sockets itself and does not expose them, and the kernel's default
/// (about 200 KiB) overflows under a burst of super-frames, so the sockets are found through
/// /proc/self/fd. `SO_*BUFFORCE` (CAP_NET_ADMIN, which the agent has) ignores rmem_max.
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
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: setsockopt with a pointer to an int that outlives the call.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&UDP_BUFFER as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
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

/// Handshake, then keepalives until death, closure or a new offer. Data bypasses this task:
/// the reader delivers, and the agent sends through the `DataTx` it got with `Up`.
#[allow(clippy::too_many_arguments)]
async fn serve(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    conn: &Arc<dyn Conn + Send + Sync>,
    dg_rx: &mut mpsc::Receiver<Vec<u8>>,
    openers: mpsc::UnboundedSender<Opener>,
    last_rx: &AtomicU64,
    session_id: u64,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    let mut sealer: Option<Sealer> = None;
    let mut initiator = None;
    let mut init_msg = Vec::new();
    if p.controlling {
        let (i, msg) = session::initiate(&p.shared.identity, &p.remote_key, &p.shared.psk, now_ns())?;
        initiator = Some(i);
        init_msg = msg;
        conn.send(&init_msg).await?;
    }
    let started = Instant::now();
    let mut last_tx = Instant::now();
    let mut tick = tokio::time::interval(if p.controlling { HANDSHAKE_RETRY } else { KEEPALIVE / 2 });
    let mut out = Vec::with_capacity(wire::MAX_DATAGRAM);
    // Hands a new session to the reader and the agent.
    let established = |s: Session, sealer: &mut Option<Sealer>| {
        let (tx, rx) = s.split();
        let _ = openers.send(rx);
        last_rx.store(clock_ms(), Ordering::Relaxed);
        *sealer = Some(tx.clone());
        DataTx { sealer: tx, conn: conn.clone() }
    };
    loop {
        tokio::select! {
            dg = dg_rx.recv() => {
                let Some(dg) = dg else { return Ok((Ended::Retry, sealer.is_some())) };
                match Datagram::parse(&dg) {
                    Ok(Datagram::HandshakeInit(body)) if !p.controlling => {
                        match session::respond(&p.shared.identity, &p.remote_key, &p.shared.psk, body, *last_handshake) {
                            Ok((s, reply, ts)) => {
                                *last_handshake = Some(ts);
                                if sealer.is_none() {
                                    info!(peer = %p.peer_node, "link up");
                                }
                                let data = established(s, &mut sealer);
                                conn.send(&reply).await?;
                                p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                            }
                            Err(e) => { let _ = p.shared.events.send(LinkEvent::Dropped(p.peer, e)).await; }
                        }
                    }
                    Ok(Datagram::HandshakeResp(body)) if p.controlling && initiator.is_some() => {
                        match initiator.take().unwrap().finish(body) {
                            Ok(s) => {
                                let data = established(s, &mut sealer);
                                tick = tokio::time::interval(KEEPALIVE / 2);
                                info!(peer = %p.peer_node, "link up");
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
                if clock_ms().saturating_sub(last_rx.load(Ordering::Relaxed)) > DEAD_AFTER.as_millis() as u64 {
                    warn!(peer = %p.peer_node, "link down: nothing received for {DEAD_AFTER:?}");
                    return Ok((Ended::Retry, true));
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
