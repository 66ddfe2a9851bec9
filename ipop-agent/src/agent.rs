//! The async shell around the switch: sets up the devices and the datapath, feeds the core
//! with ring buffer events, frames, RPCs, link changes and the time, carries out its
//! outputs, and tears everything down on SIGINT/SIGTERM or on any error.

use std::{io, net::Ipv4Addr, os::fd::AsRawFd, sync::Arc, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use ipop_common::maps::{self as m, ArpEntry, ArpEvent, ArpKey};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracing::{debug, info, warn};

use crate::{
    addr::Mac,
    chunk,
    config::AgentConfig,
    control::ControlSocket,
    datapath::Datapath,
    link::{DataSocket, LinkEvent, LinkShared},
    lock,
    netif::Netlink,
    peers::{LinkTemplate, Peers},
    preflight, rpc,
    session::{self, Identity},
    signaling::{self, SignalEvent},
    switch::{Orphan, Output, Owner, PeerId, Route, Switch},
    tables::monotonic_ns,
    tap::{self, Tap},
    underlay::{self, Underlay},
    wire::Inner,
};

/// How often the shell checks its devices and ages the core's tables.
const TICK: Duration = Duration::from_secs(2);
/// How long learned entries left by a crashed agent stay answered while their peers' links
/// come back (they take a few seconds; a link attempt times out after 20 s).
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// Refused RPCs are logged at most this often per peer (the rest are counted).
const REFUSAL_LOG_INTERVAL_NS: u64 = 10_000_000_000;
/// Frames read from the TAP per wake-up before other work gets a turn.
const TAP_BATCH: usize = 64;

/// Decodes one ring buffer record; `None` if it is not a whole event.
pub fn parse_event(bytes: &[u8]) -> Option<ArpEvent> {
    if bytes.len() < size_of::<ArpEvent>() {
        return None;
    }
    // SAFETY: the length is checked and ArpEvent is plain old data; the read is unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ArpEvent>()) })
}

/// Registers an fd-owning object with the tokio reactor for readability.
fn watch<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd (a map, a TAP) and keeps it open until the AsyncFd, which
    // owns `inner`, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

/// The parts the loop drives.
struct Shell {
    switch: Switch,
    arp_table: BpfHashMap<MapData, ArpKey, ArpEntry>,
    tap: Arc<AsyncFd<Tap>>,
    peers: Option<Peers>,
    tap_write_errors: u64,
    /// Link datagrams refused: failed authentication, replays, handshakes from other keys.
    datagrams_refused: u64,
    /// Frames from peers dropped: a chunk lost, or a malformed chunk or virtio header.
    frames_dropped: u64,
    /// RPC messages from peers refused (malformed, unknown method, bad params).
    rpc_refused: u64,
    /// Per peer: when a refusal was last logged, and how many since.
    rpc_refused_logged: std::collections::HashMap<PeerId, (u64, u64)>,
    next_frame_id: u32,
}

/// Runs the agent until SIGINT or SIGTERM. Everything it attached or created is removed
/// when this returns, whether it returns `Ok` or an error.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_bpffs(&cfg.pin_dir)?;
    let nl = Netlink::connect()?;
    let bridge = nl.bridge(&cfg.bridge).await?;
    let _lock = lock::acquire(&cfg.bridge, bridge.index, &cfg.pin_dir)?;
    if let Some(existing) = nl.link(&cfg.tap).await? {
        bail!(
            "interface {} already exists (a {} device): another agent may own it; choose another name with --tap",
            cfg.tap,
            existing.kind.as_deref().unwrap_or("physical")
        );
    }
    if !bridge.up {
        warn!(bridge = %cfg.bridge, "the bridge is down: nothing will flow until it is up");
    }

    let mut datapath = Datapath::load(&cfg.pin_dir)?;
    let tap = Tap::create(&cfg.tap)?;
    let tap_link = nl.link(tap.name()).await?.context("the TAP vanished right after it was created")?;
    nl.join_bridge(tap_link.index, bridge.index).await?;
    datapath.configure(m::Config {
        bridge_ifindex: bridge.index,
        tap_ifindex: tap_link.index,
        max_age_ns: cfg.arp_max_age.as_nanos() as u64,
        flags: m::CONFIG_ANSWER,
        _reserved: 0,
    })?;
    datapath.attach(&cfg.bridge, tap.name())?;

    let mut switch = Switch::new(cfg.arp_max_age.as_nanos() as u64).with_limits(cfg.limits);
    if let Some(mac) = bridge.mac {
        for ip in nl.ipv4_addresses(bridge.index).await? {
            switch.add_local_address(ip, Mac(mac));
        }
    }
    let mut events = watch(datapath.take_events()?)?;
    let mut logger = watch(datapath.take_logger()?)?;
    let mut arp_table = datapath.take_arp_table()?;
    let left = take_learned(&mut arp_table, cfg.overlay.is_some());
    if !left.is_empty() {
        info!(
            kept = left.len(),
            "learned ARP entries of the previous agent kept until their peers' links return (at most {ORPHAN_GRACE:?})"
        );
    }
    let removals = switch.restore(monotonic_ns(), ORPHAN_GRACE.as_nanos() as u64, left);

    let (link_tx, mut link_rx) = mpsc::channel::<LinkEvent>(8192);
    let (peers, mut signals) = match &cfg.overlay {
        None => (None, None),
        Some(o) => {
            let identity = Identity::generate();
            let (signaling, signals) = signaling::connect_rendezvous(
                o.rendezvous.clone(),
                signaling::Credentials {
                    overlay: o.overlay.clone(),
                    secret: o.secret.clone(),
                    node_id: o.node_id.clone(),
                    public_key: session::hex(&identity.public),
                },
            );
            let data = match cfg.data_port {
                None => None,
                Some(port) => {
                    let underlay = Arc::new(Underlay::bind(port)?);
                    let (registrations, registered) = mpsc::unbounded_channel();
                    tokio::spawn(underlay::read(underlay.clone(), registered, link_tx.clone()));
                    info!(port = underlay.port(), "data socket bound");
                    Some(DataSocket { underlay, registrations })
                }
            };
            let template = LinkTemplate {
                node_id: o.node_id.clone(),
                shared: LinkShared {
                    identity,
                    psk: session::overlay_psk(&o.overlay, &o.secret),
                    ice_urls: o.ice_urls.clone(),
                    exclude_ifaces: vec![cfg.bridge.clone(), cfg.tap.clone()],
                    signaling,
                    events: link_tx.clone(),
                    data,
                    aead: session::Aead::local(),
                },
            };
            info!(node_id = %o.node_id, overlay = %o.overlay, rendezvous = %o.rendezvous, "joining the overlay");
            (Some(Peers::new(template)), Some(signals))
        }
    };
    drop(link_tx);
    let tap = Arc::new(watch(tap)?);
    let mut shell = Shell {
        switch,
        arp_table,
        tap: tap.clone(),
        peers,
        tap_write_errors: 0,
        datagrams_refused: 0,
        frames_dropped: 0,
        rpc_refused: 0,
        rpc_refused_logged: Default::default(),
        next_frame_id: 0,
    };
    shell.apply(removals);

    let control = ControlSocket::bind(&cfg.pin_dir)?;
    let node_id = cfg.overlay.as_ref().map(|o| o.node_id.clone());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(TICK);
    let mut frame = vec![0u8; chunk::MAX_WHOLE];

    info!(bridge = %cfg.bridge, tap = %cfg.tap, pin_dir = %datapath.pin_dir().display(), "ipop-agent ready");
    let result: Result<()> = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            guard = events.readable_mut() => {
                let mut guard = guard?;
                while let Some(item) = guard.get_inner_mut().next() {
                    match parse_event(&item) {
                        Some(ev) => {
                            let out = shell.switch.handle_arp(monotonic_ns(), &ev);
                            shell.apply(out);
                        }
                        None => warn!(len = item.len(), "short record on arp_events"),
                    }
                }
                guard.clear_ready();
            }
            guard = logger.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            guard = tap.readable() => {
                let mut guard = guard?;
                for _ in 0..TAP_BATCH {
                    match guard.try_io(|t| t.get_ref().recv(&mut frame)) {
                        Ok(Ok(n)) => shell.frame_from_bridge(&frame[..n]),
                        Ok(Err(e)) => return finish(Err(e).context("reading the TAP (was it deleted?)"), datapath),
                        Err(_would_block) => break,
                    }
                }
            }
            ev = link_rx.recv(), if shell.peers.is_some() => {
                if let Some(ev) = ev {
                    shell.link_event(ev);
                }
            }
            ev = async { signals.as_mut().unwrap().recv().await }, if signals.is_some() => {
                match ev {
                    Some(SignalEvent::Refused(reason)) => break Err(anyhow::anyhow!("the rendezvous refused this agent: {reason}")),
                    Some(ev) => shell.signal_event(ev),
                    None => break Err(anyhow::anyhow!("signaling stopped")),
                }
            }
            served = control.serve_one(|| shell.status(node_id.as_deref())) => {
                if let Err(e) = served {
                    debug!("control socket: {e:#}");
                }
            }
            _ = tick.tick() => {
                let out = shell.switch.expire(monotonic_ns());
                shell.apply(out);
                // Devices deleted under the agent: say so and stop (the TAP's fd does not
                // always wake the loop when its device goes).
                match nl.link(&cfg.bridge).await? {
                    Some(link) if link.index == bridge.index => {}
                    _ => break Err(io::Error::other("the bridge was deleted"))
                        .with_context(|| format!("bridge {} is gone", cfg.bridge)),
                }
                match nl.link(&cfg.tap).await? {
                    Some(link) if link.index == tap_link.index && link.controller == Some(bridge.index) => {}
                    Some(_) => break Err(io::Error::other("the TAP left the bridge"))
                        .with_context(|| format!("TAP {} is no longer a port of {}", cfg.tap, cfg.bridge)),
                    None => break Err(io::Error::other("the TAP was deleted"))
                        .with_context(|| format!("TAP {} is gone", cfg.tap)),
                }
                debug!(counters = ?shell.switch.counters(), "tick");
            }
        }
    };
    drop((events, logger, shell, tap, control));
    finish(result, datapath)
}

/// Drops learned entries from a table taken back from a dead agent: this agent does not know
/// which peer each came from, so it could not withdraw them if that peer never returns. They
/// are learned again, by RPC, the next time a container asks. Static entries stay.
/// The learned entries a previous agent left in the taken-back `arp_table`, to restore in
/// the switch. Without an overlay no peer can vouch for them again: they are dropped.
fn take_learned(table: &mut BpfHashMap<MapData, ArpKey, ArpEntry>, overlay: bool) -> Vec<(Ipv4Addr, Orphan)> {
    let learned: Vec<(ArpKey, ArpEntry)> =
        table.iter().filter_map(Result::ok).filter(|(_, e)| e.flags & m::ENTRY_STATIC == 0).collect();
    if overlay {
        let orphan = |e: &ArpEntry| Orphan { mac: Mac(e.mac), tag: e.peer_tag, updated_ns: e.updated_ns };
        return learned.iter().map(|(k, e)| (Ipv4Addr::from(k.ip), orphan(e))).collect();
    }
    for (key, _) in &learned {
        let _ = table.remove(key);
    }
    if !learned.is_empty() {
        info!(
            dropped = learned.len(),
            "learned ARP entries of the previous agent dropped (no overlay to vouch for them)"
        );
    }
    Vec::new()
}

/// Logs how the agent stops and removes the datapath (programs, pins) last.
fn finish(result: Result<()>, datapath: Datapath) -> Result<()> {
    match &result {
        Ok(()) => info!("stopping: detaching programs, removing the TAP and the pins"),
        Err(e) => warn!("stopping on error: {e:#}"),
    }
    drop(datapath);
    info!("stopped");
    result
}

impl Shell {
    /// What `ipop-agent status` shows.
    fn status(&self, node_id: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "node_id": node_id,
            "peers": self.peers.as_ref().map(Peers::status).unwrap_or_default(),
            "data_port": self.peers.as_ref().and_then(Peers::data_port),
            "switch": self.switch.counters(),
            "queue_drops": self.peers.as_ref().map_or(0, |p| p.queue_drops),
            "tap_write_errors": self.tap_write_errors,
            "datagrams_refused": self.datagrams_refused,
            "datagrams_unknown": self.peers.as_ref().map_or(0, Peers::datagrams_unknown),
            "frames_dropped": self.frames_dropped,
            "orphans": self.switch.orphans(),
            "rpc_refused": self.rpc_refused,
        })
    }

    fn write_tap(&mut self, frame: &[u8]) {
        if self.tap.get_ref().send(frame).is_err() {
            self.tap_write_errors += 1;
        }
    }

    /// A frame the bridge sent toward the overlay, with its virtio header (`whole`).
    fn frame_from_bridge(&mut self, whole: &[u8]) {
        let Some(peers) = self.peers.as_mut() else { return };
        let Some(frame) = whole.get(tap::VNET_HDR_LEN..) else { return };
        let route = self.switch.route_from_bridge(monotonic_ns(), frame);
        if route == Route::Drop {
            return;
        }
        self.next_frame_id = self.next_frame_id.wrapping_add(1);
        match route {
            Route::Drop => {}
            Route::Peer(id) => peers.send_frame(id, self.next_frame_id, whole),
            Route::AllPeers => peers.broadcast_frame(self.next_frame_id, whole),
        }
    }

    /// A whole frame (virtio header and frame) from `id`: into the TAP if the switch accepts it.
    fn frame_from_peer(&mut self, now: u64, id: PeerId, whole: &[u8]) {
        let Some((hdr, frame)) = whole.split_first_chunk::<{ tap::VNET_HDR_LEN }>() else { return };
        if !tap::vnet_hdr_ok(hdr, frame.len()) {
            self.frames_dropped += 1;
            return;
        }
        if self.switch.accept_from_peer(now, id, frame) && self.tap.get_ref().send_with(hdr, frame).is_err() {
            self.tap_write_errors += 1;
        }
    }

    fn link_event(&mut self, ev: LinkEvent) {
        let now = monotonic_ns();
        match ev {
            LinkEvent::Up(id, data) => {
                if let Some(p) = self.peers.as_mut() {
                    p.set_up(id, Some(data));
                }
                self.switch.peer_up(id);
                if let Some(p) = self.peers.as_ref() {
                    self.switch.adopt(p.tag(id), id);
                }
            }
            LinkEvent::Down(id) => {
                if let Some(p) = self.peers.as_mut() {
                    info!(peer = %p.name(id), "link down: its entries are no longer answered");
                    p.set_up(id, None);
                }
                self.rpc_refused_logged.remove(&id);
                let out = self.switch.peer_down(id);
                self.apply(out);
            }
            LinkEvent::Received(id, Inner::Ethernet, whole) => self.frame_from_peer(now, id, &whole),
            LinkEvent::FrameLost(_) => self.frames_dropped += 1,
            LinkEvent::Received(id, Inner::Rpc, bytes) => self.rpc(now, id, &bytes),
            LinkEvent::Received(_, Inner::Keepalive | Inner::Probe | Inner::ProbeAck, _) => {}
            LinkEvent::Dropped(id, e) => {
                self.datagrams_refused += 1;
                let name = self.peers.as_ref().map(|p| p.name(id).to_owned()).unwrap_or_default();
                debug!(peer = %name, "datagram dropped: {e}");
            }
        }
    }

    fn rpc(&mut self, now: u64, id: PeerId, bytes: &[u8]) {
        match rpc::decode(bytes) {
            Ok(rpc::Incoming::Notification(method)) => {
                let out = self.switch.handle_rpc(now, id, &method);
                self.apply(out);
            }
            Ok(rpc::Incoming::Call { id: call, method }) => {
                let out = self.switch.handle_rpc(now, id, &method);
                self.apply(out);
                if let Some(p) = self.peers.as_mut() {
                    p.send(id, Inner::Rpc, rpc::encode_result(&call));
                }
            }
            Ok(rpc::Incoming::Response { error, .. }) => {
                if let Some((code, message)) = error {
                    debug!(peer = id, code, %message, "error response from a peer");
                }
            }
            Err(rejection) => {
                self.rpc_refused += 1;
                // Once per peer per interval: a hostile peer must not flood the log.
                let last = self.rpc_refused_logged.entry(id).or_insert((0, 0));
                last.1 += 1;
                if last.0 == 0 || now.saturating_sub(last.0) >= REFUSAL_LOG_INTERVAL_NS {
                    let name = self.peers.as_ref().map(|p| p.name(id).to_owned()).unwrap_or_default();
                    warn!(peer = %name, code = rejection.code, refused = last.1, "refused RPC: {}", rejection.message);
                    *last = (now.max(1), 0);
                }
                if let (Some(answer), Some(p)) = (rejection.answer, self.peers.as_mut()) {
                    p.send(id, Inner::Rpc, answer);
                }
            }
        }
    }

    fn signal_event(&mut self, ev: SignalEvent) {
        let Some(peers) = self.peers.as_mut() else {
            return;
        };
        let replaced = match ev {
            SignalEvent::Members(members) => members.iter().filter_map(|m| peers.ensure(m)).collect(),
            SignalEvent::Joined(m) => peers.ensure(&m).into_iter().collect(),
            SignalEvent::Left(node) => {
                peers.left(&node);
                Vec::new()
            }
            SignalEvent::Signal { from, data } => {
                peers.signal(&from, data);
                Vec::new()
            }
            SignalEvent::Lost => {
                warn!("lost the rendezvous: links that are up keep working; reconnecting");
                Vec::new()
            }
            SignalEvent::Refused(_) => Vec::new(),
        };
        for old in replaced {
            let out = self.switch.peer_down(old);
            self.apply(out);
        }
    }

    /// Carries out the switch's outputs, in order.
    fn apply(&mut self, outputs: Vec<Output>) {
        for out in outputs {
            match out {
                Output::LocalLearned { ip, mac, previous: None } => info!(%ip, %mac, "local host"),
                Output::LocalLearned { ip, mac, previous: Some(old) } => {
                    warn!(%ip, %mac, %old, "local host changed its MAC")
                }
                Output::AnsweredInKernel { ip, requester } => {
                    debug!(%ip, %requester, "answered in the kernel")
                }
                Output::Broadcast(method) => {
                    if let Some(p) = self.peers.as_mut() {
                        p.broadcast(Inner::Rpc, &rpc::encode(&method));
                    }
                }
                Output::WriteTap(frame) => self.write_tap(&frame),
                Output::ArpInstall { ip, mac, peer } => self.install(ip, mac, peer),
                Output::ArpRemove { ip } => self.remove(ip),
                Output::LocalOverridesRemote { ip, local, remote, peer } => {
                    let peer = self.peers.as_ref().map(|p| p.name(peer).to_owned()).unwrap_or_default();
                    warn!(%ip, %local, %remote, %peer, "IP conflict: a local host has an IP a peer claimed; the local host wins");
                }
                Output::Conflict { ip, owner, claimed, by } => {
                    let by = self.peers.as_ref().map(|p| p.name(by).to_owned()).unwrap_or_default();
                    let owner = match owner {
                        Owner::Local(mac) => format!("local host {mac}"),
                        Owner::Remote { mac, peer } => {
                            format!("{mac} behind {}", self.peers.as_ref().map(|p| p.name(peer)).unwrap_or("?"))
                        }
                    };
                    warn!(%ip, %claimed, peer = %by, %owner, "IP conflict: a peer claims an IP that is taken; the existing owner stands");
                }
            }
        }
    }

    /// A learned entry; an operator's static entry for the same IP stays.
    fn install(&mut self, ip: Ipv4Addr, mac: Mac, peer: PeerId) {
        let key = ArpKey { ip: ip.octets() };
        if self.arp_table.get(&key, 0).is_ok_and(|e| e.flags & m::ENTRY_STATIC != 0) {
            return;
        }
        let peer_tag = self.peers.as_ref().map_or(0, |p| p.tag(peer));
        let entry = ArpEntry { mac: mac.0, flags: 0, updated_ns: monotonic_ns(), peer_tag, _reserved: 0 };
        if let Err(e) = self.arp_table.insert(key, entry, 0) {
            warn!(%ip, "could not install in arp_table: {e}");
        }
    }

    fn remove(&mut self, ip: Ipv4Addr) {
        let key = ArpKey { ip: ip.octets() };
        if self.arp_table.get(&key, 0).is_ok_and(|e| e.flags & m::ENTRY_STATIC == 0) {
            let _ = self.arp_table.remove(&key);
        }
    }
}
