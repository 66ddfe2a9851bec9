//! The link once ICE is connected, one method per event: the handshake (the controlling side
//! initiates and resends; the controlled side answers, and answers a repeated first message
//! with the same answer), then keepalives and liveness, and the data socket path: probed until
//! a full-size probe is answered, used while the peer's keepalives say it hears us, given up
//! when they do not. Handshakes stay on ICE, and ICE stays up, so the link never depends on
//! the data socket. Data bypasses this task: the readers deliver, and the agent sends through
//! the `DataTx` it got with `Up`.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::{Result, bail};
use tokio::{sync::mpsc, time::Interval};
use tracing::{debug, info, warn};
use webrtc_util::Conn;

use crate::{
    core::wire::{Datagram, Inner},
    link::{
        echo::EchoClock,
        event::{LinkCmd, LinkEvent},
        params::LinkParams,
        receive::{PathMsg, Receiver, Registration, heard_age},
        send::{DataTx, Direct, IcePair},
        session::{self, Aead, Initiator, Openers, Sealer, Session},
        signal::{Creds, Signal, parse_signal},
        timers::{
            DEAD_AFTER, DIRECT_QUIET, DOUBT, HANDSHAKE_RETRY, HANDSHAKE_TIMEOUT, KEEPALIVE, PREVIOUS_KEYS, PROBE_EVERY,
            PROBE_FOR, PROBE_PADDING, PROBE_SLOW, REKEY_AFTER_DATAGRAMS, SIZE_CHECK, TICK, aligned_interval, clock_ms,
            clock_us, now_ns,
        },
    },
};

/// How this link will try the data socket: its own receiver index, and the peer's.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub my_index: u32,
    pub peer_addr: SocketAddr,
    pub peer_index: u32,
}

/// What `serve` works with once ICE is connected.
pub struct LinkIo {
    pub conn: Arc<dyn Conn + Send + Sync>,
    /// Handshake datagrams from the ICE reader.
    pub dg_rx: mpsc::Receiver<Vec<u8>>,
    /// Each new session's opener, for the ICE reader.
    pub openers: mpsc::UnboundedSender<Arc<Mutex<Openers>>>,
    /// When anything authentic last arrived on the ICE path (`clock_ms`).
    pub last_rx: Arc<AtomicU64>,
    pub plan: Option<Plan>,
    /// What the pair agreed on.
    pub aead: Aead,
    /// The pair ICE selected.
    pub pair: Arc<IcePair>,
    /// The data socket path's round trip from its full-size probes (microseconds, 0: none
    /// yet), and the ICE path's from its keepalives (`echo`), shared with the `DataTx`.
    pub rtt: Arc<AtomicU64>,
    pub echo: Arc<EchoClock>,
}

/// How a link attempt ended.
pub enum Ended {
    /// The agent dropped the link.
    Closed,
    /// The link went down (or never came up); try again.
    Retry,
    /// The peer offered a new session (it restarted its side): answer it at once.
    NewOffer(Creds),
}

/// What one event did: the link goes on (`None`) or ends.
type Step = Result<Option<Ended>>;

/// Handshake, then keepalives until death, closure or a new offer. Returns how it ended and
/// whether the link was up.
pub async fn serve(
    p: &LinkParams,
    cmds: &mut mpsc::Receiver<LinkCmd>,
    io: LinkIo,
    session_id: u64,
    last_handshake: &mut Option<u64>,
) -> Result<(Ended, bool)> {
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
    let mut s = Serve::new(p, io, session_id, last_handshake, probe_tx);
    s.start().await?;
    let mut probe_tick = aligned_interval(PROBE_EVERY);
    loop {
        let step = tokio::select! {
            dg = s.io.dg_rx.recv() => match dg {
                Some(dg) => s.on_datagram(&dg).await,
                None => Ok(Some(Ended::Retry)),
            },
            Some(msg) = probe_rx.recv() => s.on_path(msg).await,
            _ = probe_tick.tick(), if s.probe.since.is_some() => {
                s.on_probe_tick();
                Ok(None)
            }
            cmd = cmds.recv() => s.on_cmd(cmd).await,
            _ = s.tick.tick() => s.on_tick().await,
        };
        s.retune();
        if let Some(ended) = step? {
            return Ok((ended, s.sealer.is_some()));
        }
    }
}

/// The link's state from the ICE connection on.
struct Serve<'a> {
    p: &'a LinkParams,
    io: LinkIo,
    session_id: u64,
    /// The newest handshake timestamp accepted (the responder's side): older ones are replays.
    last_handshake: &'a mut Option<u64>,
    /// The current session's sealer, once a handshake completed.
    sealer: Option<Sealer>,
    /// Every session's receiving keys, shared with the readers (rotated by each rekey).
    keys: Option<Arc<Mutex<Openers>>>,
    /// The responder's newest session, sealed with only once the initiator's datagrams show
    /// it has the keys too (until then it could not open them).
    pending: Option<Sealer>,
    rekey: Rekey,
    /// The initiator's handshake in flight, and its first message (resent until answered).
    initiator: Option<Initiator>,
    init_msg: Vec<u8>,
    /// The last first message answered, and the answer (the responder's side).
    answered: Option<(Vec<u8>, Vec<u8>)>,
    started: Instant,
    /// The last datagram on the ICE path, and the last keepalive on either path.
    last_tx: Instant,
    last_keepalive: Instant,
    /// Handshake retries until the first session, then keepalives and liveness checks.
    tick: Interval,
    out: Vec<u8>,
    probe: Probing,
}

/// Renewing the session's keys.
struct Rekey {
    /// When the current session began.
    session_at: Instant,
    /// The initiator's rekey in flight: when it started, and when its first message last went.
    sent: Option<Instant>,
    last_sent: Instant,
    /// When the previous session's keys stop opening datagrams.
    retire_at: Option<Instant>,
    /// Rekeys so far, shared with the `DataTx` for `status`.
    count: Arc<AtomicU64>,
    /// When the current session's keys were agreed (`clock_ms`), for `status`.
    handshake_ms: Arc<AtomicU64>,
}

/// The data socket path: probed from each new session until a full-size probe is answered
/// (then `direct`), quickly for `PROBE_FOR`, then slowly with small probes; once direct,
/// checked by the peer's keepalives and, on a link that carries data, a full-size probe a
/// minute.
struct Probing {
    /// Where the data socket's reader sends probes, answers and keepalives for this link.
    tx: mpsc::UnboundedSender<PathMsg>,
    /// When anything authentic last arrived on the data socket (`clock_ms`).
    direct_rx: Arc<AtomicU64>,
    /// When the peer last heard us there, as its keepalives say (`clock_ms`).
    confirmed: Arc<AtomicU64>,
    direct: Option<Direct>,
    /// Where the peer's authenticated datagrams last came from: its data socket as our side of
    /// the path sees it (through its NAT), probed instead of the address ICE gave.
    learned: Option<SocketAddr>,
    /// When the last full-size probe went out (its answer gives `LinkIo::rtt`).
    sent: Instant,
    /// Probing since (not direct).
    since: Option<Instant>,
    last_probe: Instant,
    said_slow: bool,
    /// The last full-size probe a small answer earned (probing slowly).
    earned: Option<Instant>,
    /// Direct: when the path's size was last proven, and since when a check waits for its
    /// answer.
    size_ok: Instant,
    size_check: Option<Instant>,
}

impl<'a> Serve<'a> {
    fn new(
        p: &'a LinkParams,
        io: LinkIo,
        session_id: u64,
        last_handshake: &'a mut Option<u64>,
        probes: mpsc::UnboundedSender<PathMsg>,
    ) -> Self {
        let now = Instant::now();
        Serve {
            p,
            io,
            session_id,
            last_handshake,
            sealer: None,
            keys: None,
            pending: None,
            rekey: Rekey {
                session_at: now,
                sent: None,
                last_sent: now,
                retire_at: None,
                count: Arc::default(),
                handshake_ms: Arc::default(),
            },
            initiator: None,
            init_msg: Vec::new(),
            answered: None,
            started: now,
            last_tx: now,
            last_keepalive: now,
            tick: aligned_interval(if p.controlling { HANDSHAKE_RETRY } else { TICK }),
            out: Vec::with_capacity(crate::core::wire::MAX_DATAGRAM),
            probe: Probing {
                tx: probes,
                direct_rx: Arc::new(AtomicU64::new(0)),
                confirmed: Arc::new(AtomicU64::new(0)),
                direct: None,
                learned: None,
                sent: now,
                since: None,
                last_probe: now,
                said_slow: false,
                earned: None,
                size_ok: now,
                size_check: None,
            },
        }
    }

    /// The controlling side sends the first handshake message.
    async fn start(&mut self) -> Result<()> {
        if self.p.controlling {
            let p = self.p;
            let (i, msg) = session::initiate(&p.shared.identity, &p.remote_key, &p.shared.psk, now_ns(), self.io.aead)?;
            self.initiator = Some(i);
            self.io.conn.send(&msg).await?;
            self.init_msg = msg;
        }
        Ok(())
    }

    /// A handshake datagram from the ICE reader.
    async fn on_datagram(&mut self, dg: &[u8]) -> Step {
        match Datagram::parse(dg) {
            Ok(Datagram::HandshakeInit(body)) if !self.p.controlling => self.answer(body).await?,
            Ok(Datagram::HandshakeResp(body)) if self.p.controlling && self.initiator.is_some() => {
                self.finish(body).await?
            }
            _ => {}
        }
        Ok(None)
    }

    /// The responder answers a first message. The same one again means our answer was lost
    /// (the initiator resends every 500 ms): it gets the same answer, since a new session
    /// would be refused as stale.
    async fn answer(&mut self, body: &[u8]) -> Result<()> {
        if let Some((first, reply)) = &self.answered
            && first == body
        {
            self.io.conn.send(reply).await?;
            return Ok(());
        }
        let p = self.p;
        let keys = (&p.shared.identity, &p.remote_key, &p.shared.psk);
        match session::respond(keys.0, keys.1, keys.2, body, *self.last_handshake, self.io.aead) {
            Ok((s, reply, ts)) => {
                *self.last_handshake = Some(ts);
                self.io.conn.send(&reply).await?;
                self.answered = Some((body.to_vec(), reply));
                if self.sealer.is_some() {
                    return self.renewed(s, false).await; // the initiator's rekey
                }
                info!(peer = %p.peer_node, aead = self.io.aead.name(), "link up");
                let data = self.established(s);
                p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
            }
            Err(e) => {
                let _ = p.shared.events.send(LinkEvent::Dropped(p.peer, e)).await;
            }
        }
        Ok(())
    }

    /// The initiator gets the answer: the session is up, or the handshake failed.
    async fn finish(&mut self, body: &[u8]) -> Result<()> {
        let p = self.p;
        let rekeying = self.sealer.is_some();
        self.rekey.sent = None;
        match self.initiator.take().expect("checked by the caller").finish(body) {
            Ok(s) if rekeying => self.renewed(s, true).await,
            Err(e) if rekeying => {
                // The session goes on with its keys; the next rekey is due in an interval.
                warn!(peer = %p.peer_node, "rekey refused: {e}");
                Ok(())
            }
            Ok(s) => {
                let data = self.established(s);
                self.tick = aligned_interval(TICK);
                info!(peer = %p.peer_node, aead = self.io.aead.name(), "link up");
                p.shared.events.send(LinkEvent::Up(p.peer, data)).await?;
                Ok(())
            }
            Err(e) => {
                let _ = p.shared.events.try_send(LinkEvent::Dropped(p.peer, e.clone()));
                bail!("handshake with {} failed: {e}", p.peer_node);
            }
        }
    }

    /// Hands the first session to the readers (and the data socket's, which starts probing);
    /// returns the `DataTx` for the agent.
    fn established(&mut self, s: Session) -> DataTx {
        let (tx, rx) = s.split();
        let keys = Arc::new(Mutex::new(Openers::new(rx)));
        let _ = self.io.openers.send(keys.clone());
        if let (Some(d), Some(plan)) = (&self.p.shared.data, &self.io.plan) {
            let probes = self.probe.tx.clone();
            let (last_rx, confirmed) = (self.probe.direct_rx.clone(), self.probe.confirmed.clone());
            let opener = keys.clone();
            let receiver = Receiver { peer: self.p.peer, opener, last_rx, confirmed, probes, keepalive_from: None };
            let _ = d.registrations.send(Registration::Add(plan.my_index, receiver));
            self.probe.since = Some(Instant::now());
        }
        self.keys = Some(keys);
        self.io.last_rx.store(clock_ms(), Ordering::Relaxed);
        self.sealer = Some(tx.clone());
        self.rekey.session_at = Instant::now();
        self.rekey.handshake_ms.store(clock_ms(), Ordering::Relaxed);
        self.data_tx(tx, self.probe.direct.clone())
    }

    /// A rekey's new session: the readers open with it from now on (and with the old one for
    /// `PREVIOUS_KEYS`); the initiator seals with it at once, the responder once it is used.
    async fn renewed(&mut self, s: Session, initiator: bool) -> Result<()> {
        let (tx, rx) = s.split();
        if let Some(keys) = &self.keys {
            keys.lock().unwrap_or_else(|e| e.into_inner()).rotate(rx);
        }
        self.rekey.session_at = Instant::now();
        self.rekey.handshake_ms.store(clock_ms(), Ordering::Relaxed);
        if initiator {
            self.switch_sealer(tx).await
        } else {
            self.pending = Some(tx);
            Ok(())
        }
    }

    /// From now on the agent seals with `tx`; the previous keys retire after `PREVIOUS_KEYS`.
    async fn switch_sealer(&mut self, tx: Sealer) -> Result<()> {
        self.sealer = Some(tx.clone());
        self.rekey.retire_at = Some(Instant::now() + PREVIOUS_KEYS);
        self.rekey.count.fetch_add(1, Ordering::Relaxed);
        debug!(peer = %self.p.peer_node, "session keys renewed");
        self.publish(tx, self.probe.direct.clone()).await
    }

    fn data_tx(&self, sealer: Sealer, direct: Option<Direct>) -> DataTx {
        let (conn, pair, rtt, echo) =
            (self.io.conn.clone(), self.io.pair.clone(), self.io.rtt.clone(), self.io.echo.clone());
        let (rekeys, handshake_ms) = (self.rekey.count.clone(), self.rekey.handshake_ms.clone());
        let rx_ms = [self.io.last_rx.clone(), self.probe.direct_rx.clone()];
        DataTx { sealer, conn, direct, pair, rtt, echo, rekeys, handshake_ms, rx_ms }
    }

    /// Sends a probe, an answer or a keepalive on the data socket. Full-size ones are as large
    /// as the largest data datagram: a path that drops those (a smaller MTU, DF set) must fail
    /// the probe, not black-hole data.
    fn send_direct(&mut self, inner: Inner, to: SocketAddr, payload: &[u8]) {
        let (Some(s), Some(d), Some(plan)) = (&self.sealer, &self.p.shared.data, &self.io.plan) else { return };
        self.out.clear();
        if inner == Inner::Probe && payload.len() == PROBE_PADDING.len() {
            self.probe.sent = Instant::now();
        }
        if s.seal_indexed(plan.peer_index, inner, &[payload], &mut self.out).is_ok() {
            let _ = d.underlay.send(to, &self.out, self.out.len());
        }
    }

    fn send_probe(&mut self, to: SocketAddr, full: bool) {
        self.send_direct(Inner::Probe, to, if full { &PROBE_PADDING } else { &[] });
    }

    /// A probe, an answer or a keepalive from the data socket's reader.
    async fn on_path(&mut self, msg: PathMsg) -> Step {
        let Some(sealer) = self.sealer.clone() else { return Ok(None) };
        match msg.inner {
            // The peer reached our socket from `from`: answer there (through its NAT), as
            // large as it asked, and follow it there.
            Inner::Probe => {
                self.send_direct(Inner::ProbeAck, msg.from, if msg.full { &PROBE_PADDING } else { &[] });
                self.peer_seen_at(sealer, msg.from).await?;
            }
            Inner::Keepalive => self.peer_seen_at(sealer, msg.from).await?,
            Inner::ProbeAck if msg.full => self.on_full_ack(sealer, msg.from).await?,
            // Probing slowly, a small answer says the path is open again: prove its size.
            Inner::ProbeAck
                if self.probe.direct.is_none() && self.probe.earned.is_none_or(|t| t.elapsed() >= SIZE_CHECK) =>
            {
                self.probe.earned = Some(Instant::now());
                self.send_probe(msg.from, true);
            }
            _ => {}
        }
        Ok(None)
    }

    /// A full-size probe was answered: the round trip, and the path proven (up, or still).
    async fn on_full_ack(&mut self, sealer: Sealer, from: SocketAddr) -> Result<()> {
        // Full-size probes go out at most every 250 ms: an answer is to the last one sent.
        let rtt = self.probe.sent.elapsed().as_micros().max(1) as u64;
        self.io.rtt.store(rtt, Ordering::Relaxed);
        match self.probe.direct {
            Some(_) => {
                self.probe.size_ok = Instant::now();
                self.probe.size_check = None;
                Ok(())
            }
            None => self.direct_up(sealer, from).await,
        }
    }

    /// An authenticated datagram came from `from`. Not direct yet: probe it at once, since its
    /// NAT may have mapped its socket to another port than the one it announced (one side
    /// public, or both behind port-changing NATs). Direct to another address: the peer moved
    /// (a NAT rebinding, a new mapping after a flush), and data follows it, as WireGuard
    /// follows a roaming peer.
    async fn peer_seen_at(&mut self, sealer: Sealer, from: SocketAddr) -> Result<()> {
        match &mut self.probe.direct {
            Some(d) if d.to != from => {
                info!(peer = %self.p.peer_node, from = %d.to, to = %from, "the peer's data socket moved: following it");
                d.to = from;
                let direct = Some(d.clone());
                self.publish(sealer, direct).await?;
            }
            Some(_) => {}
            None if self.probe.learned != Some(from) => {
                self.probe.learned = Some(from);
                self.send_probe(from, true);
            }
            None => {}
        }
        Ok(())
    }

    /// Tells the agent how to send from now on: on the data socket (`direct`) or on ICE.
    async fn publish(&self, sealer: Sealer, direct: Option<Direct>) -> Result<()> {
        let data = self.data_tx(sealer, direct);
        self.p.shared.events.send(LinkEvent::Up(self.p.peer, data)).await?;
        Ok(())
    }

    /// The first answer to a full-size probe: data moves to the data socket, at the address
    /// the answer came from.
    async fn direct_up(&mut self, sealer: Sealer, from: SocketAddr) -> Result<()> {
        let (Some(d), Some(plan)) = (&self.p.shared.data, &self.io.plan) else { return Ok(()) };
        let carried = Arc::new(AtomicBool::new(false));
        let direct = Direct { underlay: d.underlay.clone(), to: from, index: plan.peer_index, carried };
        info!(peer = %self.p.peer_node, addr = %from, "data path up on the data socket");
        // The answer proves both directions and the size, as of now.
        self.probe.confirmed.fetch_max(clock_ms(), Ordering::Relaxed);
        self.probe.size_ok = Instant::now();
        self.probe.size_check = None;
        self.probe.direct = Some(direct.clone());
        self.probe.since = None;
        self.probe.said_slow = false;
        self.publish(sealer, Some(direct)).await
    }

    /// Probes the peer's data socket: full-size every `PROBE_EVERY` for `PROBE_FOR`, then
    /// small ones every `PROBE_SLOW` (data meanwhile on the ICE path).
    fn on_probe_tick(&mut self) {
        let (Some(_), Some(plan), Some(since)) = (&self.sealer, &self.io.plan, self.probe.since) else { return };
        let to = self.probe.learned.unwrap_or(plan.peer_addr);
        let slow = since.elapsed() > PROBE_FOR;
        if slow && !self.probe.said_slow {
            info!(peer = %self.p.peer_node, "the data socket path does not answer: data stays on ICE");
            self.probe.said_slow = true;
        }
        let every = if slow { PROBE_SLOW } else { PROBE_EVERY };
        if self.probe.last_probe.elapsed() + PROBE_EVERY / 2 >= every {
            self.send_probe(to, !slow);
            self.probe.last_probe = Instant::now();
        }
    }

    /// What the agent tells the link: close (the sender dropped), send, or a signal.
    async fn on_cmd(&mut self, cmd: Option<LinkCmd>) -> Step {
        match cmd {
            None => return Ok(Some(Ended::Closed)),
            Some(LinkCmd::Send(inner, payload)) => self.send_fallback(inner, &payload).await,
            Some(LinkCmd::Signal(v)) => {
                if let Some(Signal::Offer(o)) = parse_signal(&v)
                    && !self.p.controlling
                    && o.session != self.session_id
                {
                    info!(peer = %self.p.peer_node, "peer restarted the link");
                    return Ok(Some(Ended::NewOffer(o)));
                }
            }
        }
        Ok(None)
    }

    /// The fallback path: what the agent could not send at once goes out on ICE from here.
    async fn send_fallback(&mut self, inner: Inner, payload: &[u8]) {
        let Some(s) = &self.sealer else { return };
        self.out.clear();
        if s.seal(inner, payload, &mut self.out).is_ok() {
            if let Err(e) = self.io.conn.send(&self.out).await {
                debug!(peer = %self.p.peer_node, "send failed: {e}");
            }
            self.last_tx = Instant::now();
        }
    }

    /// The tick once a session is up: `TICK` while keys are changing (a rekey due or in
    /// flight, new keys waiting to be used) or the path is in doubt (nothing heard, or the peer not hearing
    /// us on the data socket, for `DOUBT`), else `KEEPALIVE`: an idle, healthy link wakes its
    /// task once a second. In doubt, the quick tick moves data back to ICE (`DIRECT_QUIET`)
    /// well before either side declares the link dead (`DEAD_AFTER`). Ticks stay aligned to
    /// the wall clock, so every idle link of the agent wakes at once.
    fn retune(&mut self) {
        if self.sealer.is_none() {
            return; // the handshake's own tick, set at the start
        }
        let age = |at: &AtomicU64| clock_ms().saturating_sub(at.load(Ordering::Relaxed));
        let heard = age(&self.io.last_rx).min(age(&self.probe.direct_rx));
        let unheard = self.probe.direct.is_some() && age(&self.probe.confirmed) > DOUBT.as_millis() as u64;
        // A rekey due within the next quiet tick starts on time, not up to a second late.
        let rekey_due = self.p.controlling && self.rekey.session_at.elapsed() + KEEPALIVE >= self.p.shared.rekey_after;
        let busy = rekey_due || self.rekey.sent.is_some() || self.pending.is_some();
        let period = if busy || unheard || heard > DOUBT.as_millis() as u64 { TICK } else { KEEPALIVE };
        if self.tick.period() != period {
            self.tick = aligned_interval(period);
        }
    }

    /// Liveness, the data socket path while direct, and keepalives; before the first session,
    /// handshake retries.
    async fn on_tick(&mut self) -> Step {
        let Some(sealer) = self.sealer.clone() else {
            self.handshake_tick().await?;
            return Ok(None);
        };
        let heard = self.io.last_rx.load(Ordering::Relaxed).max(self.probe.direct_rx.load(Ordering::Relaxed));
        if clock_ms().saturating_sub(heard) > DEAD_AFTER.as_millis() as u64 {
            warn!(peer = %self.p.peer_node, "link down: nothing received for {DEAD_AFTER:?}");
            return Ok(Some(Ended::Retry));
        }
        self.check_direct(&sealer).await?;
        self.keepalive(&sealer).await?;
        self.rekey_tick(&sealer).await?;
        Ok(None)
    }

    /// Rekeying, WireGuard's way: the initiator starts a new handshake every `rekey_after`
    /// (or after `REKEY_AFTER_DATAGRAMS` sealed) and resends it until answered; the responder
    /// seals with the new session once the initiator's datagrams open with it; the previous
    /// session's keys retire `PREVIOUS_KEYS` after the switch.
    async fn rekey_tick(&mut self, sealer: &Sealer) -> Result<()> {
        let now = Instant::now();
        if self.rekey.retire_at.is_some_and(|t| now >= t)
            && let Some(keys) = &self.keys
        {
            keys.lock().unwrap_or_else(|e| e.into_inner()).retire_previous();
            self.rekey.retire_at = None;
        }
        let used = self.keys.as_ref().is_some_and(|k| k.lock().unwrap_or_else(|e| e.into_inner()).current_used());
        if used && let Some(tx) = self.pending.take() {
            self.switch_sealer(tx).await?;
        }
        if !self.p.controlling {
            return Ok(());
        }
        match self.rekey.sent {
            Some(at) if at.elapsed() > HANDSHAKE_TIMEOUT => {
                warn!(peer = %self.p.peer_node, "rekey not answered within {HANDSHAKE_TIMEOUT:?}: the session goes on");
                (self.initiator, self.rekey.sent, self.rekey.session_at) = (None, None, now);
            }
            Some(_) if self.rekey.last_sent.elapsed() >= HANDSHAKE_RETRY => {
                self.io.conn.send(&self.init_msg).await?;
                self.rekey.last_sent = now;
            }
            None if self.rekey.session_at.elapsed() >= self.p.shared.rekey_after
                || sealer.sealed() >= REKEY_AFTER_DATAGRAMS =>
            {
                let p = self.p;
                let (i, msg) =
                    session::initiate(&p.shared.identity, &p.remote_key, &p.shared.psk, now_ns(), self.io.aead)?;
                self.io.conn.send(&msg).await?;
                (self.initiator, self.init_msg, self.rekey.sent, self.rekey.last_sent) = (Some(i), msg, Some(now), now);
            }
            _ => {}
        }
        Ok(())
    }

    /// One small keepalive a second, on the path data takes: on the data socket it says when
    /// we last heard the peer there; on ICE it carries clocks for the round trip (`echo`). The
    /// agent's own sends do not count, since the link task cannot see those.
    async fn keepalive(&mut self, sealer: &Sealer) -> Result<()> {
        // Ticks come on the second, give or take the timer's slack: half a tick early is on time.
        if self.last_keepalive.elapsed() + TICK / 2 < KEEPALIVE {
            return Ok(());
        }
        self.last_keepalive = Instant::now();
        if let Some(to) = self.probe.direct.as_ref().map(|d| d.to) {
            let age = heard_age(self.probe.direct_rx.load(Ordering::Relaxed));
            self.send_direct(Inner::Keepalive, to, &age);
        } else if self.last_tx.elapsed() + TICK / 2 >= KEEPALIVE {
            self.out.clear();
            sealer.seal(Inner::Keepalive, &self.io.echo.payload(clock_us()), &mut self.out)?;
            let _ = self.io.conn.send(&self.out).await;
            self.last_tx = Instant::now();
        }
        Ok(())
    }

    /// Before the first session: the initiator resends its first message (it may have been
    /// lost); both sides give up after `HANDSHAKE_TIMEOUT`.
    async fn handshake_tick(&mut self) -> Result<()> {
        if self.started.elapsed() > HANDSHAKE_TIMEOUT {
            bail!("no handshake with {} within {HANDSHAKE_TIMEOUT:?}", self.p.peer_node);
        }
        if self.p.controlling {
            self.io.conn.send(&self.init_msg).await?;
        }
        Ok(())
    }

    /// While direct: the peer's keepalives must keep saying it hears us, and on a link that
    /// carried data a full-size probe a minute must be answered; else data goes back to ICE
    /// (which still lives, or the link would be down) and the data socket is probed again.
    async fn check_direct(&mut self, sealer: &Sealer) -> Result<()> {
        let Some(d) = &self.probe.direct else { return Ok(()) };
        let to = d.to;
        let quiet =
            clock_ms().saturating_sub(self.probe.confirmed.load(Ordering::Relaxed)) > DIRECT_QUIET.as_millis() as u64;
        let too_small = self.probe.size_check.is_some_and(|t| t.elapsed() > DIRECT_QUIET);
        if !quiet && !too_small {
            if self.probe.size_check.is_some() {
                self.send_probe(to, true); // answers may be lost: a few tries
            } else if self.probe.size_ok.elapsed() >= SIZE_CHECK {
                self.probe.size_ok = Instant::now();
                if d.carried.swap(false, Ordering::Relaxed) {
                    self.probe.size_check = Some(Instant::now());
                    self.send_probe(to, true);
                }
            }
            return Ok(());
        }
        let why = if quiet { "the peer no longer hears us there" } else { "full-size datagrams no longer pass" };
        warn!(peer = %self.p.peer_node, "data socket path lost ({why}): data back on ICE");
        self.probe.direct = None;
        self.probe.size_check = None;
        self.probe.since = Some(Instant::now());
        // A keepalive on ICE at once: the peer's liveness has been fed by the data socket,
        // and it must hear us before `DEAD_AFTER`.
        self.last_keepalive = Instant::now().checked_sub(KEEPALIVE).unwrap_or_else(Instant::now);
        self.last_tx = self.last_keepalive;
        self.publish(sealer.clone(), None).await
    }
}
