//! The agent's peers: node ids as the rendezvous names them, the small ids the switch uses,
//! and the link task of each.

use std::collections::HashMap;

use bytes::Bytes;
use ipop_cert::RevocationList;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    core::{digest::unhex, switch::PeerId, wire::Inner},
    link::{
        envelope,
        event::LinkCmd,
        params::{LinkParams, LinkShared},
        send::{DataTx, Run, RunSent},
        signal::unbundle,
        task,
    },
    signaling::{
        Member,
        admission::{Certified, unix_now},
    },
};

/// What every link of this agent shares, who this agent is, and (with a CA) how a member's
/// certificate is checked before a link is set up with it.
#[derive(Clone)]
pub struct LinkTemplate {
    pub shared: LinkShared,
    pub certified: Option<Certified>,
}

struct Peer {
    id: PeerId,
    key: [u8; 32],
    cmd: mpsc::Sender<LinkCmd>,
    /// Present while the link is up: the direct way to send.
    data: Option<DataTx>,
    up: bool,
    /// Why the last attempt to set the link up failed (cleared when it is up).
    reason: Option<String>,
    /// The rendezvous said it left; the link stays while it is up (the rendezvous going
    /// away must not break links), and is closed when it goes down.
    left: bool,
    /// Its certificate, checked (in an overlay with a CA).
    certificate: Option<ipop_cert::CertBody>,
    /// The stamp of the last signal taken from it: older ones are replays.
    signal_stamp: u64,
    /// Why its last signal was refused, as logged (said once per change).
    signal_refused: Option<String>,
    /// Frames and their bytes to and from it, since this agent met it.
    traffic: Traffic,
}

/// Whole frames (and their bytes) one peer's link carried each way.
#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    tx_frames: u64,
    tx_bytes: u64,
    rx_frames: u64,
    rx_bytes: u64,
}

pub struct Peers {
    template: LinkTemplate,
    by_node: HashMap<String, Peer>,
    names: HashMap<PeerId, String>,
    next_id: PeerId,
    /// Datagrams not queued because a link's queue was full.
    pub queue_drops: u64,
    /// Signals refused: not sealed by the member's key for this node, or replayed.
    pub signals_refused: u64,
    /// Why signaling is unreachable, while it is (new links wait for it).
    signaling_down: Option<String>,
    /// What signaling passed on and was not taken (malformed stanzas, strangers): how many,
    /// and when that was last said (monotonic ns).
    signaling_ignored: (u64, u64),
    scratch: Vec<u8>,
    /// Frames for the data socket, waiting to leave in one send (`send::Run`).
    run: Run,
}

impl Peers {
    pub fn new(template: LinkTemplate) -> Self {
        Self {
            template,
            by_node: HashMap::new(),
            names: HashMap::new(),
            next_id: 1,
            queue_drops: 0,
            signals_refused: 0,
            signaling_down: Some("not joined yet".into()),
            signaling_ignored: (0, 0),
            scratch: Vec::with_capacity(crate::core::wire::MAX_DATAGRAM),
            run: Run::default(),
        }
    }

    /// Every peer's id and node id.
    pub fn ids(&self) -> impl Iterator<Item = (PeerId, &str)> {
        self.by_node.iter().map(|(n, p)| (p.id, n.as_str()))
    }

    pub fn name(&self, id: PeerId) -> &str {
        self.names.get(&id).map(String::as_str).unwrap_or("?")
    }

    /// Starts a link to `member` unless one runs with the same key. A member that comes back
    /// with another key (it restarted) gets a new link; the old one's id is returned, to be
    /// reported down.
    pub fn ensure(&mut self, member: &Member) -> Option<PeerId> {
        if member.node_id == self.template.shared.node_id {
            return None;
        }
        let Some(key) = unhex::<32>(&member.public_key) else {
            warn!(node = %member.node_id, "member with an unusable public key: ignored");
            return None;
        };
        // The rendezvous introduces; only the CA's certificate says who a key belongs to.
        let certificate = match &self.template.certified {
            None => None,
            Some(certified) => {
                let cert = member.certificate.as_deref();
                match certified.member(&member.node_id, &member.public_key, cert, unix_now()) {
                    Ok(body) => Some(body),
                    Err(why) => {
                        warn!(node = %member.node_id, "the rendezvous introduced a member whose certificate does not hold: {why}; no link");
                        return None;
                    }
                }
            }
        };
        if let Some(p) = self.by_node.get_mut(&member.node_id) {
            p.left = false;
            if p.key == key {
                return None;
            }
        }
        let old = self.by_node.remove(&member.node_id).map(|p| p.id);
        let id = self.next_id;
        self.next_id += 1;
        let t = &self.template;
        let (cmd, _task) = task::spawn(LinkParams {
            peer: id,
            peer_node: member.node_id.clone(),
            remote_key: key,
            controlling: t.shared.node_id < member.node_id,
            shared: t.shared.clone(),
        });
        info!(node = %member.node_id, peer = id, "peer known: setting up the link");
        self.names.insert(id, member.node_id.clone());
        self.by_node.insert(
            member.node_id.clone(),
            Peer {
                id,
                key,
                cmd,
                data: None,
                up: false,
                reason: None,
                left: false,
                certificate,
                signal_stamp: 0,
                signal_refused: None,
                traffic: Traffic::default(),
            },
        );
        old
    }

    /// The rendezvous says `node_id` left: closes its link unless the link is up.
    pub fn left(&mut self, node_id: &str) {
        if let Some(p) = self.by_node.get_mut(node_id) {
            if p.up {
                p.left = true;
            } else {
                self.by_node.remove(node_id);
            }
        }
    }

    /// Records a link state change (with the direct sender when up); closes links of
    /// departed peers when they go down.
    pub fn set_up(&mut self, id: PeerId, data: Option<DataTx>) {
        let Some(node) = self.names.get(&id) else { return };
        if let Some(p) = self.by_node.get_mut(node)
            && p.id == id
        {
            p.up = data.is_some();
            p.data = data;
            if p.up {
                p.reason = None;
            }
            if !p.up && p.left {
                self.by_node.remove(node);
            }
        }
    }

    /// Why the link to `id` is not up, as its last attempt said.
    pub fn set_reason(&mut self, id: PeerId, reason: String) {
        let Some(node) = self.names.get(&id) else { return };
        if let Some(p) = self.by_node.get_mut(node)
            && p.id == id
            && !p.up
        {
            p.reason = Some(reason);
        }
    }

    /// Records whether signaling is reachable (`None`) or why not; true if that changed.
    pub fn set_signaling(&mut self, down: Option<String>) -> bool {
        let changed = self.signaling_down != down;
        self.signaling_down = down;
        changed
    }

    /// The signaling service in `status`: whether it is reachable, why not, and how much of
    /// what it passed on was not taken.
    pub fn signaling_status(&self) -> serde_json::Value {
        serde_json::json!({
            "up": self.signaling_down.is_none(),
            "reason": self.signaling_down,
            "ignored": self.signaling_ignored.0,
        })
    }

    /// Counts one thing signaling passed on that was not taken; true if it is time to say so
    /// (at most every 10 s: a stranger must not flood the log).
    pub fn signaling_ignored(&mut self, now_ns: u64) -> bool {
        let (count, said) = &mut self.signaling_ignored;
        *count += 1;
        let due = *said == 0 || now_ns.saturating_sub(*said) >= 10_000_000_000;
        if due {
            *said = now_ns.max(1);
        }
        due
    }

    /// Takes a revocation list (the CA's, newer than the one in force) and closes the links of
    /// the members it revokes: their names. Older or equal lists change nothing.
    pub fn revoke(&mut self, text: &str) -> Result<Vec<String>, String> {
        let Some(certified) = self.template.certified.as_mut() else { return Err("this overlay has no CA".into()) };
        let list = RevocationList::from_text(text).map_err(|e| e.to_string())?;
        list.verify(&certified.ca).map_err(|e| e.to_string())?;
        if certified.revoked.as_ref().is_some_and(|r| r.body().number >= list.body().number) {
            return Ok(Vec::new());
        }
        let serials = list.body().revoked.clone();
        info!(number = list.body().number, revoked = serials.len(), "revocation list in force");
        certified.revoked = Some(list);
        Ok(self.close_where(|c| serials.contains(&c.serial)))
    }

    /// Closes the links of members whose certificate expired by `now` (unix seconds).
    pub fn expire_certificates(&mut self, now: u64) -> Vec<String> {
        self.close_where(|c| now >= c.not_after)
    }

    /// Drops every member whose certificate `gone` says: its link task ends (and reports the
    /// link down, which withdraws its entries). Their names.
    fn close_where(&mut self, gone: impl Fn(&ipop_cert::CertBody) -> bool) -> Vec<String> {
        let names: Vec<String> = self
            .by_node
            .iter()
            .filter(|(_, p)| p.certificate.as_ref().is_some_and(&gone))
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.by_node.remove(n);
        }
        names
    }

    /// `id`'s certificate, as checked when the rendezvous introduced it.
    pub fn certificate(&self, id: PeerId) -> Option<&ipop_cert::CertBody> {
        self.names.get(&id).and_then(|n| self.by_node.get(n)).filter(|p| p.id == id)?.certificate.as_ref()
    }

    /// The tag of `id`'s node id kept with the kernel entries it vouches for (0: unknown).
    pub fn tag(&self, id: PeerId) -> u32 {
        self.names.get(&id).map_or(0, |n| peer_tag(n))
    }

    /// The data socket's UDP port, if there is one.
    pub fn data_port(&self) -> Option<u16> {
        self.template.shared.data.as_ref().map(|d| d.underlay.port())
    }

    /// Datagrams the data socket dropped unread (not for any session).
    pub fn datagrams_unknown(&self) -> u64 {
        self.template.shared.data.as_ref().map_or(0, |d| d.underlay.unknown())
    }

    /// Every peer with its link state, sorted by node id; `hosts` names the hosts the switch
    /// learned behind a peer.
    pub fn status(&self, hosts: impl Fn(PeerId) -> serde_json::Value) -> Vec<serde_json::Value> {
        let down = self.signaling_down.as_deref();
        let mut list: Vec<_> = self
            .by_node
            .iter()
            .map(|(n, p)| {
                let mut s = peer_status(n, p, down);
                s["hosts"] = hosts(p.id);
                s
            })
            .collect();
        list.sort_by(|a, b| a["node_id"].as_str().cmp(&b["node_id"].as_str()));
        list
    }

    /// Opens a signal from `from` and hands it to its link; a signal that member's key did not
    /// seal for this node, or one replayed, is refused, counted and logged (once per change).
    pub fn signal(&mut self, from: &str, data: serde_json::Value) {
        let Some(p) = self.by_node.get_mut(from) else { return };
        let shared = &self.template.shared;
        let pair = (from, shared.node_id.as_str());
        let refusal = match envelope::open(&shared.identity, &p.key, pair, &data, &mut p.signal_stamp) {
            Ok(signal) => {
                p.signal_refused = None;
                for one in unbundle(signal) {
                    let _ = p.cmd.try_send(LinkCmd::Signal(one));
                }
                return;
            }
            Err(e) => e.to_string(),
        };
        self.signals_refused += 1;
        if p.signal_refused.as_ref() != Some(&refusal) {
            warn!(node = %from, "signal refused: {refusal}");
            p.signal_refused = Some(refusal);
        }
    }

    /// New STUN/TURN servers for every link's next attempt (a reload).
    pub fn set_ice(&mut self, ice: crate::link::ice::IceConfig) {
        self.template.shared.ice.replace(ice);
    }

    /// Sends to one peer (if its link is up).
    pub fn send(&mut self, id: PeerId, inner: Inner, payload: impl Into<Bytes>) {
        self.flush_frames();
        let Some(p) = self.names.get(&id).and_then(|node| self.by_node.get(node)) else { return };
        if p.id == id && p.up && !deliver(p, inner, payload.into(), &mut self.scratch) {
            self.queue_drops += 1;
        }
    }

    /// Sends a whole frame (virtio header and frame) to one peer, as chunks: on the data
    /// socket path onto the run (`flush_frames` sends it), else at once.
    pub fn send_frame(&mut self, id: PeerId, frame_id: u32, whole: &[u8]) {
        let Some(p) = self.names.get(&id).and_then(|node| self.by_node.get_mut(node)) else { return };
        if p.id != id || !p.up {
            return;
        }
        let sent = match p.data.as_ref().and_then(|tx| Some((&tx.sealer, tx.direct.as_ref()?))) {
            Some((sealer, direct)) => self.run.push(sealer, direct, id, frame_id, whole),
            None if deliver_chunks(p, frame_id, whole, &mut self.scratch) => {
                Some(RunSent { peer: id, frames: 1, bytes: whole.len() as u64, ok: true })
            }
            None => Some(RunSent { peer: id, frames: 1, bytes: 0, ok: false }),
        };
        if let Some(sent) = sent {
            self.count(sent);
        }
    }

    /// Sends a whole frame to every peer whose link is up.
    pub fn broadcast_frame(&mut self, frame_id: u32, whole: &[u8]) {
        let ids: Vec<PeerId> = self.by_node.values().filter(|p| p.up).map(|p| p.id).collect();
        for id in ids {
            self.send_frame(id, frame_id, whole);
        }
    }

    /// Sends the frames waiting on the run (the TAP has no more for now).
    pub fn flush_frames(&mut self) {
        if let Some(sent) = self.run.send() {
            self.count(sent);
        }
    }

    /// Counts frames sent to a peer, or lost to a full socket or queue.
    fn count(&mut self, sent: RunSent) {
        if !sent.ok {
            self.queue_drops += sent.frames;
        } else if let Some(p) = self.names.get(&sent.peer).and_then(|node| self.by_node.get_mut(node))
            && p.id == sent.peer
        {
            p.traffic.tx_frames += sent.frames;
            p.traffic.tx_bytes += sent.bytes;
        }
    }

    /// Counts a whole frame (its `len` bytes, virtio header included) that came from `id`.
    pub fn received_frame(&mut self, id: PeerId, len: usize) {
        if let Some(p) = self.names.get(&id).and_then(|node| self.by_node.get_mut(node))
            && p.id == id
        {
            p.traffic.rx_frames += 1;
            p.traffic.rx_bytes += len as u64;
        }
    }

    /// Sends to every peer whose link is up.
    pub fn broadcast(&mut self, inner: Inner, payload: &[u8]) {
        self.flush_frames();
        let payload = Bytes::copy_from_slice(payload);
        let mut drops = 0;
        for p in self.by_node.values().filter(|p| p.up) {
            if !deliver(p, inner, payload.clone(), &mut self.scratch) {
                drops += 1;
            }
        }
        self.queue_drops += drops;
    }
}

/// A 32-bit tag of a node id, stored with each learned kernel entry so that an agent
/// restarted after a crash knows which peer vouched for it. Never 0 (static entries).
pub fn peer_tag(node_id: &str) -> u32 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(node_id.as_bytes());
    u32::from_be_bytes([d[0], d[1], d[2], d[3]]).max(1)
}

/// Which way data to `p` goes: "direct" (the data socket), "ice", or null while down.
/// One peer in `status`: whether its link is up, on which path and ICE pair, or why not
/// (first of all, while `signaling_down` says why, that signaling is unreachable).
fn peer_status(node: &str, p: &Peer, signaling_down: Option<&str>) -> serde_json::Value {
    let pair = p.data.as_ref().map(DataTx::ice_pair);
    let reason = match (p.up, signaling_down) {
        (true, _) => None,
        (false, Some(why)) => {
            let last = p.reason.as_deref().map(|r| format!("; last attempt: {r}")).unwrap_or_default();
            Some(format!("signaling unreachable: {why}{last}"))
        }
        (false, None) => p.reason.clone(),
    };
    let now = crate::link::timers::clock_ms();
    let times = p.data.as_ref().map(DataTx::handshake_and_heard_ms);
    let age = |ms: u64| (ms > 0).then(|| now.saturating_sub(ms) as f64 / 1000.0);
    let t = p.traffic;
    serde_json::json!({
        "node_id": node,
        "up": p.up,
        "path": p.data.as_ref().map(DataTx::path),
        "endpoint": p.data.as_ref().map(DataTx::endpoint),
        "local_candidate": pair.map(|c| &c.local),
        "remote_candidate": pair.map(|c| &c.remote),
        "public_address": pair.and_then(|c| c.public.as_ref()),
        "rtt_ms": p.data.as_ref().and_then(DataTx::rtt).map(|d| d.as_secs_f64() * 1000.0),
        "handshake_age_s": times.and_then(|(hs, _)| age(hs)),
        "heard_age_s": times.and_then(|(_, heard)| age(heard)),
        "rekeys": p.data.as_ref().map(DataTx::rekeys),
        "tx_frames": t.tx_frames,
        "tx_bytes": t.tx_bytes,
        "rx_frames": t.rx_frames,
        "rx_bytes": t.rx_bytes,
        "reason": reason,
    })
}

/// Sends a frame chunk by chunk (`deliver`: the ICE path); false if any of it could not go.
fn deliver_chunks(p: &Peer, frame_id: u32, whole: &[u8], scratch: &mut Vec<u8>) -> bool {
    // A chunk that cannot go loses its frame: the rest need not follow.
    crate::core::chunk::split(frame_id, whole).all(|c| deliver(p, Inner::Ethernet, c, scratch))
}

/// Sends directly if the socket takes it now, else queues it to the link task; false if
/// even the queue is full.
fn deliver(p: &Peer, inner: Inner, payload: Bytes, scratch: &mut Vec<u8>) -> bool {
    if let Some(data) = &p.data
        && data.try_send(inner, &payload, scratch)
    {
        return true;
    }
    p.cmd.try_send(LinkCmd::Send(inner, payload)).is_ok()
}
