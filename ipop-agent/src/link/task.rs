//! One link to one peer, as a task: the controlled side waits for an offer, both sides
//! exchange credentials and connect with ICE (`ice`), then `serve` runs the session until the
//! link dies, and the controlling side tries again with backoff.
//!
//! The side with the smaller node id controls ICE and initiates the handshake, so both sides
//! agree without talking.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info};
use webrtc_ice::{
    agent::Agent,
    candidate::{Candidate, CandidateType},
    state::ConnectionState,
};
use webrtc_util::Conn;

use crate::link::{
    echo::EchoClock,
    event::{LinkCmd, LinkEvent},
    ice::{self, IceCandidate, add_candidate, enlarge_udp_buffers, parse_candidate, read_datagrams},
    ice_server::IceServer,
    params::LinkParams,
    receive::Registration,
    send::IcePair,
    serve::{Ended, LinkIo, Plan, serve},
    session::Openers,
    signal::{Creds, Outbox, Sent, Signal, parse_signal},
    timers::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, RESEND_MAX, RESEND_MIN},
};

type IceConn = Arc<dyn Conn + Send + Sync>;

/// Starts the link task; dropping the sender closes the link.
pub fn spawn(params: LinkParams) -> (mpsc::Sender<LinkCmd>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let handle = tokio::spawn(run(params, rx));
    (tx, handle)
}

async fn run(p: LinkParams, mut cmds: mpsc::Receiver<LinkCmd>) {
    let mut backoff = BACKOFF_MIN;
    let mut offer: Option<Creds> = None;
    let mut last_handshake: Option<u64> = None;
    let mut last_reason = String::new();
    loop {
        let result = attempt(&p, &mut cmds, offer.take(), &mut last_handshake).await;
        let ended = match result {
            Ok((ended, was_up)) => {
                if was_up {
                    backoff = BACKOFF_MIN;
                    last_reason.clear();
                    let _ = p.shared.events.send(LinkEvent::Down(p.peer)).await;
                }
                ended
            }
            Err(e) => {
                // Said once per change: a link that keeps failing the same way is not news.
                let reason = format!("{e:#}");
                if reason != last_reason {
                    info!(peer = %p.peer_node, "link not up: {reason}");
                    last_reason.clone_from(&reason);
                }
                let _ = p.shared.events.send(LinkEvent::Failed(p.peer, reason)).await;
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
    // Held for the whole attempt: a reload may replace the servers meanwhile, and these
    // ones' stream relays (TURN over TCP/TLS) must live as long as the link uses them.
    let servers = p.shared.ice.current();
    let agent = ice::new_agent(&servers, &p.shared.exclude_ifaces, p.controlling).await?;
    let result = connect_and_serve(p, cmds, &agent, offer, last_handshake).await;
    let _ = agent.close().await;
    drop(servers);
    result
}

/// This side's credentials for an attempt: its session number, receiver index, and the offer
/// or answer that carries them to the peer.
fn credentials(p: &LinkParams, ufrag: String, pwd: String, offer: Option<&Creds>) -> Result<(u64, u32, Value)> {
    let session_id = match offer {
        Some(o) => o.session,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow!("getrandom: {e}"))?;
            u64::from_be_bytes(b) >> 11 // fits a JSON number exactly
        }
    };
    let kind = if p.controlling { "offer" } else { "answer" };
    let mut creds =
        json!({"t": kind, "s": session_id, "ufrag": ufrag, "pwd": pwd, "aead": p.shared.aead.name(), "b": 1});
    let my_index = random_u32()?;
    if let Some(d) = &p.shared.data {
        creds["dp"] = d.underlay.port().into();
        creds["ix"] = my_index.into();
    }
    Ok((session_id, my_index, creds))
}

async fn connect_and_serve(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    agent: &Arc<Agent>,
    offer: Option<Creds>,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    let (ufrag, pwd) = agent.get_local_user_credentials().await;
    let (session_id, my_index, creds) = credentials(p, ufrag, pwd, offer.as_ref())?;
    let mut sent = Sent::new(Outbox::new(p), offer.as_ref().is_some_and(|o| o.bundles));
    sent.push(creds);
    let (conn, remote, seen) = match connect(p, cmds, agent, offer, session_id, sent).await? {
        Connected::Yes(conn, remote, seen) => (conn, remote, seen),
        Connected::No(ended) => return Ok((ended, false)),
    };
    debug!(peer = %p.peer_node, "ICE connected; handshaking");
    enlarge_udp_buffers();
    // The peer's data socket is tried at the address ICE found for it, with its own port: a
    // NAT that keeps ports (as most do for a new mapping) lets it through, else the probe
    // fails and data stays on ICE.
    let pair = agent.get_selected_candidate_pair();
    let ice_pair = Arc::new(pair.as_ref().map_or_else(IcePair::default, |p| describe(&*p.local, &*p.remote, &seen)));
    let plan = match (&p.shared.data, remote.data, pair) {
        (Some(_), Some((port, peer_index)), Some(pair)) => {
            Some(Plan { my_index, peer_addr: SocketAddr::new(pair.remote.addr().ip(), port), peer_index })
        }
        _ => None,
    };

    // Datagrams from the connection, read by their own task: once a session is up it opens
    // them and hands them straight to the agent; handshakes go to the link task.
    let (dg_tx, dg_rx) = mpsc::channel::<Vec<u8>>(64);
    let (opener_tx, opener_rx) = mpsc::unbounded_channel::<Arc<Mutex<Openers>>>();
    let last_rx = Arc::new(AtomicU64::new(0));
    // The round trips: the data socket's, from its probes; the ICE path's, from keepalives.
    let rtt = Arc::new(AtomicU64::new(0));
    let echo = Arc::new(EchoClock::default());
    let events = p.shared.events.clone();
    let reader =
        tokio::spawn(read_datagrams(p.peer, conn.clone(), events, dg_tx, opener_rx, last_rx.clone(), echo.clone()));
    let aead = p.shared.aead.agree(remote.aead);
    let io = LinkIo { conn: conn.clone(), dg_rx, openers: opener_tx, last_rx, plan, aead, pair: ice_pair, rtt, echo };
    let result = serve(p, cmds, io, session_id, last_handshake).await;
    if let Some(d) = &p.shared.data {
        let _ = d.registrations.send(Registration::Remove(my_index));
    }
    reader.abort();
    let _ = conn.close().await;
    result
}

/// How connecting ended: a connection with the peer's credentials, or not (closed, or a new
/// offer to answer instead).
enum Connected {
    Yes(IceConn, Creds, Gathered),
    No(Ended),
}

/// Gathers and relays candidates, waits for the peer's credentials and dials (or accepts) once
/// they are here, until ICE connects, ICE gives up, or `CONNECT_TIMEOUT` passes. What this
/// side signalled goes again while the peer seems not to have it (`Sent`).
async fn connect(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    agent: &Arc<Agent>,
    offer: Option<Creds>,
    session_id: u64,
    mut sent: Sent,
) -> Result<Connected> {
    let (mut cand_rx, mut failed_rx) = (watch_candidates(agent), watch_failure(agent));
    let mut seen = Gathered::default();
    agent.gather_candidates().context("gathering candidates")?;

    let mut remote = offer;
    let mut early_candidates: Vec<IceCandidate> = Vec::new();
    let (cancel_tx, cancel_rx) = mpsc::channel::<()>(1);
    let mut cancel_rx = Some(cancel_rx);
    let mut dial: Option<JoinHandle<Result<IceConn>>> = None;
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    let mut resend_every = RESEND_MIN;
    let resend = tokio::time::sleep(resend_every);
    tokio::pin!(deadline, resend);
    let to = p.peer_node.as_str();
    loop {
        if dial.is_none()
            && let Some(r) = &remote
        {
            for c in early_candidates.drain(..) {
                add_candidate(agent, &c);
            }
            dial = Some(spawn_dial(agent.clone(), p.controlling, r.clone(), cancel_rx.take().unwrap()));
        }
        tokio::select! {
            _ = &mut deadline => {
                let _ = cancel_tx.try_send(());
                bail!("no ICE connection within {CONNECT_TIMEOUT:?}: {}", why(p, agent, &seen).await);
            }
            Some(()) = failed_rx.recv() => {
                let _ = cancel_tx.try_send(());
                bail!("ICE gave up: {}", why(p, agent, &seen).await);
            }
            _ = tokio::time::sleep_until(sent.due()), if sent.pending() => sent.flush(),
            _ = &mut resend, if p.controlling && remote.is_none() => {
                debug!(peer = %to, "no answer yet: offering again");
                sent.again();
                resend_every = (resend_every * 2).min(RESEND_MAX);
                resend.as_mut().reset(tokio::time::Instant::now() + resend_every);
            }
            Some(c) = cand_rx.recv() => {
                seen.local_candidate(&*c);
                sent.push(json!({"t": "cand", "s": session_id, "c": c.marshal()}));
            }
            cmd = cmds.recv() => match cmd {
                None => { let _ = cancel_tx.try_send(()); return Ok(Connected::No(Ended::Closed)) }
                Some(LinkCmd::Send(..)) => {}
                Some(LinkCmd::Signal(v)) => match heard(p.controlling, &v, session_id, remote.is_some()) {
                    Heard::Answer(a) => {
                        sent.set_bundles(a.bundles);
                        remote = Some(a);
                    }
                    Heard::NewOffer(o) => {
                        let _ = cancel_tx.try_send(());
                        return Ok(Connected::No(Ended::NewOffer(o)));
                    }
                    Heard::SameOffer => sent.again(),
                    Heard::Candidate(c) => if let Some(c) = parse_candidate(&c) {
                        seen.remote(&*c);
                        if dial.is_some() { add_candidate(agent, &c) } else { early_candidates.push(c) }
                    },
                    Heard::Nothing => {}
                },
            },
            res = async { dial.as_mut().unwrap().await }, if dial.is_some() => {
                let conn = res.map_err(|e| anyhow!("dial task: {e}"))??;
                return Ok(Connected::Yes(conn, remote.expect("dialled with the peer's credentials"), seen));
            }
        }
    }
}

/// What a signal means to an attempt in progress.
enum Heard {
    /// The answer the controlling side waits for.
    Answer(Creds),
    /// The peer started a new attempt: this one ends, and that one is answered.
    NewOffer(Creds),
    /// This attempt's offer again: our answer (or candidates) went missing.
    SameOffer,
    Candidate(String),
    Nothing,
}

fn heard(controlling: bool, v: &Value, session_id: u64, have_remote: bool) -> Heard {
    match parse_signal(v) {
        Some(Signal::Answer(a)) if controlling && a.session == session_id && !have_remote => Heard::Answer(a),
        Some(Signal::Offer(o)) if !controlling && o.session != session_id => Heard::NewOffer(o),
        Some(Signal::Offer(_)) if !controlling => Heard::SameOffer,
        Some(Signal::Candidate(s, c)) if s == session_id => Heard::Candidate(c),
        _ => Heard::Nothing,
    }
}

/// This attempt's local candidates as they are gathered.
fn watch_candidates(agent: &Agent) -> mpsc::UnboundedReceiver<IceCandidate> {
    let (tx, rx) = mpsc::unbounded_channel();
    agent.on_candidate(Box::new(move |c: Option<IceCandidate>| {
        if let Some(c) = c {
            let _ = tx.send(c);
        }
        Box::pin(async {})
    }));
    rx
}

/// Says when ICE gives up on every pair, so a new attempt starts at once rather than at the
/// connect deadline.
fn watch_failure(agent: &Agent) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    agent.on_connection_state_change(Box::new(move |state| {
        if state == ConnectionState::Failed {
            let _ = tx.try_send(());
        }
        Box::pin(async {})
    }));
    rx
}

/// Why an attempt failed, in words: what was gathered and missing, what the TURN servers say
/// when no relay came, and the pairs ICE tried.
async fn why(p: &LinkParams, agent: &Agent, seen: &Gathered) -> String {
    let ice = p.shared.ice.current();
    let turn = ice.servers.iter().any(IceServer::is_turn);
    let problems = if turn && !seen.relay { ice.turn_problems().await } else { Vec::new() };
    let pairs = agent.get_candidate_pairs_stats().await;
    // Candidates are named from what this attempt saw (webrtc-ice forgets them when it gives
    // up); a remote one known only from its checks is peer-reflexive.
    let name = |id: &str| seen.names.get(id).map_or("prflx", String::as_str).to_owned();
    let pairs: Vec<String> = pairs
        .iter()
        .map(|s| format!("{} -> {} ({})", name(&s.local_candidate_id), name(&s.remote_candidate_id), s.state))
        .collect();
    seen.explain(&ice.servers, &problems, &pairs)
}

/// The selected pair in words, for `status`. A peer-reflexive remote (its check came before
/// its candidate's signal) at the address of a relay candidate the peer signalled is that relay.
fn describe(local: &(dyn Candidate + Send + Sync), remote: &(dyn Candidate + Send + Sync), seen: &Gathered) -> IcePair {
    let kind = |c: &(dyn Candidate + Send + Sync)| match c.candidate_type() {
        CandidateType::PeerReflexive if seen.remote_relays.contains(&(c.address(), c.port())) => CandidateType::Relay,
        other => other,
    };
    let (lk, rk) = (kind(local), kind(remote));
    let relayed = [lk, rk].contains(&CandidateType::Relay);
    let public = seen.reflexive_addr.clone();
    IcePair { local: ice::describe(lk, local), remote: ice::describe(rk, remote), relayed, public }
}

/// The candidates of one attempt, to say why it failed.
#[derive(Debug, Default)]
struct Gathered {
    local: usize,
    public: bool,
    reflexive: bool,
    relay: bool,
    remote: usize,
    /// The peer's relay candidates, (address, port).
    remote_relays: Vec<(String, u16)>,
    /// This host's address as a STUN server saw it (a server-reflexive candidate).
    reflexive_addr: Option<String>,
    /// Every candidate of this attempt in words, by webrtc-ice's id.
    names: HashMap<String, String>,
}

impl Gathered {
    fn local(&mut self, kind: CandidateType, public: bool) {
        self.local += 1;
        self.public |= public;
        self.reflexive |= kind == CandidateType::ServerReflexive;
        self.relay |= kind == CandidateType::Relay;
    }

    fn local_candidate(&mut self, c: &(dyn Candidate + Send + Sync)) {
        self.local(c.candidate_type(), ice::is_public(&c.address()));
        if c.candidate_type() == CandidateType::ServerReflexive {
            self.reflexive_addr.get_or_insert_with(|| format!("{}:{}", c.address(), c.port()));
        }
        self.names.insert(c.id(), ice::describe(c.candidate_type(), c));
    }

    fn remote(&mut self, c: &(dyn Candidate + Send + Sync)) {
        self.remote += 1;
        if c.candidate_type() == CandidateType::Relay {
            self.remote_relays.push((c.address(), c.port()));
        }
        self.names.insert(c.id(), ice::describe(c.candidate_type(), c));
    }

    /// In words: how many candidates, what was missing, what the TURN servers said
    /// (`turn_problems`) and which `pairs` were tried.
    fn explain(&self, servers: &[IceServer], turn_problems: &[String], pairs: &[String]) -> String {
        let mut out = format!("{} local and {} remote candidates", self.local, self.remote);
        match pairs.len() {
            0 => out += ", no pair to check",
            n => {
                let shown = pairs.iter().take(MAX_PAIRS_SHOWN).cloned().collect::<Vec<_>>().join(", ");
                let more =
                    if n > MAX_PAIRS_SHOWN { format!(" and {} more", n - MAX_PAIRS_SHOWN) } else { String::new() };
                out += &format!(", {n} pairs checked, none connected: {shown}{more}");
            }
        }
        let stun = servers.iter().any(|s| !s.is_turn());
        let turn = servers.iter().any(IceServer::is_turn);
        if servers.is_empty() && !self.public {
            out += "; this host has only private addresses and no STUN server is configured \
                    (behind NAT, give stun and turn servers)";
        }
        if stun && !self.reflexive {
            out += "; no server-reflexive candidate: the STUN server did not answer";
        }
        if turn && !self.relay {
            out += "; no relay candidate";
            match turn_problems {
                [] => out += " (the TURN server allocates when asked now)",
                problems => out += &format!(": {}", problems.join("; ")),
            }
        }
        if self.remote == 0 {
            out += "; the peer sent no candidates";
        }
        out
    }
}

/// Pairs named in a failure reason; the rest are counted.
const MAX_PAIRS_SHOWN: usize = 6;

/// Dials (controlling) or accepts (controlled) with the peer's credentials, in its own task.
fn spawn_dial(
    agent: Arc<Agent>,
    controlling: bool,
    r: Creds,
    cancel: mpsc::Receiver<()>,
) -> JoinHandle<Result<IceConn>> {
    tokio::spawn(async move {
        let conn: IceConn = if controlling {
            agent.dial(cancel, r.ufrag, r.pwd).await?
        } else {
            agent.accept(cancel, r.ufrag, r.pwd).await?
        };
        Ok(conn)
    })
}

fn random_u32() -> Result<u32> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow!("getrandom: {e}"))?;
    Ok(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> IceServer {
        let key = if text.starts_with("turn") { "turn" } else { "stun" };
        IceServer::parse(key, text, None).unwrap()
    }

    #[test]
    fn a_failed_attempt_says_what_was_missing() {
        let mut behind_nat = Gathered::default();
        behind_nat.local(CandidateType::Host, false);
        behind_nat.remote = 1;
        let pair = ["host 192.168.1.2:4000 -> host 192.168.1.2:5000 (failed)".to_owned()];
        let said = behind_nat.explain(&[], &[], &pair);
        assert!(
            said.starts_with("1 local and 1 remote candidates, 1 pairs checked, none connected: host 192.168.1.2:4000"),
            "{said}"
        );
        assert!(said.contains("only private addresses and no STUN server"), "{said}");

        let servers = [server("stun:203.0.113.1:3478"), server("turn:u:p@203.0.113.1:3478")];
        let refused = ["TURN server turn:203.0.113.1:3478 refused: error 401: Unauthorized".to_owned()];
        let said = behind_nat.explain(&servers, &refused, &[]);
        assert!(said.contains("no pair to check") && said.contains("STUN server did not answer"), "{said}");
        assert!(said.contains("no relay candidate: TURN server turn:203.0.113.1:3478 refused: error 401"), "{said}");
        assert!(!said.contains("no STUN server is configured"), "{said}");

        let mut public = Gathered::default();
        public.local(CandidateType::Host, true);
        public.local(CandidateType::Relay, true);
        let said = public.explain(&servers[1..], &[], &[]);
        assert!(!said.contains("relay candidate") && said.contains("the peer sent no candidates"), "{said}");
    }

    #[test]
    fn many_pairs_are_counted_not_all_named() {
        let pairs: Vec<String> = (0..10).map(|i| format!("host 10.0.0.{i}:1 -> host 10.0.1.{i}:1 (failed)")).collect();
        let said = Gathered::default().explain(&[], &[], &pairs);
        assert!(
            said.contains("10 pairs checked, none connected")
                && said.contains("10.0.0.5:1")
                && said.contains("and 4 more"),
            "{said}"
        );
        assert!(!said.contains("10.0.0.6:1"), "{said}");
    }

    #[test]
    fn private_shared_and_local_addresses_are_not_public() {
        for a in
            ["10.0.3.1", "192.168.1.2", "172.16.0.1", "100.64.0.1", "127.0.0.1", "169.254.1.1", "fd00::1", "fe80::1"]
        {
            assert!(!ice::is_public(a), "{a}");
        }
        for a in ["203.0.113.7", "100.128.0.1", "2001:db8::1", "8.8.8.8"] {
            assert!(ice::is_public(a), "{a}");
        }
        assert!(!ice::is_public("not an address"));
    }
}
