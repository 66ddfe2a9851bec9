//! The state the agent's loop drives: the switch, the kernel's ARP table, the TAP and the
//! peers, with the counters `status` shows; frames in both directions. What to do with link
//! and signaling events is in `events`, with the switch's outputs in `outputs`.

use std::sync::Arc;

use tokio::io::unix::AsyncFd;

use crate::{
    core::{
        rpc,
        switch::{Departure, PeerId, Route, Switch},
        topology::{self, Conflicts, HostReport, LinkReport, Sharing, Summary, Topology},
        vnet::{VNET_HDR_LEN, vnet_hdr_ok},
        wire::Inner,
    },
    kernel::{maps::monotonic_ns, tables::Neighbours, tap::Tap},
    link::peers::Peers,
};

/// Hosts as `status` lists them.
fn hosts_json(hosts: Vec<(std::net::IpAddr, crate::core::addr::Mac)>) -> serde_json::Value {
    hosts.iter().map(|(ip, mac)| serde_json::json!({"ip": ip.to_string(), "mac": mac.to_string()})).collect()
}

/// The parts the loop drives.
pub struct Shell {
    pub(super) switch: Switch,
    /// The kernel's `arp_table` and `nd_table`.
    pub(super) tables: Neighbours,
    pub(super) tap: Arc<AsyncFd<Tap>>,
    pub(super) peers: Option<Peers>,
    pub(super) tap_write_errors: u64,
    /// Link datagrams refused: failed authentication, replays, handshakes from other keys.
    pub(super) datagrams_refused: u64,
    /// Frames from peers dropped: a chunk lost, or a malformed chunk or virtio header.
    pub(super) frames_dropped: u64,
    /// RPC messages from peers refused (malformed, unknown method, bad params).
    pub(super) rpc_refused: u64,
    /// Per peer: when a refusal was last logged, and how many since.
    pub(super) rpc_refused_logged: std::collections::HashMap<PeerId, (u64, u64)>,
    pub(super) next_frame_id: u32,
    /// What peers said of their links, for the topology page; and the claims refused here.
    pub(super) topology: Topology,
    pub(super) conflicts: Conflicts,
    pub(super) sharing: Sharing,
    /// Claims of local hosts with their own MAC, for the loop to check against the bridge's
    /// forwarding table (`Output::CheckDeparture`).
    pub(super) departures: Vec<Departure>,
}

impl Shell {
    pub fn new(switch: Switch, tables: Neighbours, tap: Arc<AsyncFd<Tap>>, peers: Option<Peers>) -> Self {
        Shell {
            switch,
            tables,
            tap,
            peers,
            tap_write_errors: 0,
            datagrams_refused: 0,
            frames_dropped: 0,
            rpc_refused: 0,
            rpc_refused_logged: Default::default(),
            next_frame_id: 0,
            topology: Topology::default(),
            conflicts: Conflicts::default(),
            sharing: Sharing::default(),
            departures: Vec::new(),
        }
    }

    /// The answer to a control socket request (`ops::control::REQUESTS`); `about` says who
    /// this agent is (node id, overlay, bridge).
    /// `kernel` is the programs' own counters.
    pub fn answer(&self, get: &str, about: &serde_json::Value, kernel: &serde_json::Value) -> serde_json::Value {
        match get {
            "peers" => self.peers_status(),
            "hosts" => self.hosts(),
            "counters" => self.counters(kernel),
            "topology" => {
                let name = |k: &str| about[k].as_str().unwrap_or_default().to_owned();
                self.topology.view(monotonic_ns(), &name("overlay"), &name("node_id"), &self.summary())
            }
            _ => self.status(about, kernel),
        }
    }

    /// What this node says of itself to its peers: its links, the hosts on its bridge, the
    /// claims it refused.
    fn summary(&self) -> Summary {
        let peers = self.peers_status();
        let links = peers.as_array().into_iter().flatten().map(|p| LinkReport {
            peer: p["node_id"].as_str().unwrap_or_default().to_owned(),
            up: p["up"] == true,
            path: p["path"].as_str().map(str::to_owned),
            rtt_ms: p["rtt_ms"].as_f64(),
        });
        let hosts = self.switch.local_hosts().into_iter().take(topology::MAX_HOSTS);
        let hosts = hosts.map(|(ip, mac)| HostReport { ip: ip.to_string(), mac: mac.to_string() });
        Summary { links: links.collect(), hosts: hosts.collect(), conflicts: self.conflicts.list() }
    }

    /// Sends this node's summary to every peer that is up, when it is due (every tick asks).
    pub fn share_summary(&mut self) {
        let summary = self.summary();
        if self.peers.is_none() || !self.sharing.due(monotonic_ns(), &summary) {
            return;
        }
        let message = rpc::encode_summary(summary);
        if let Some(p) = self.peers.as_mut() {
            p.broadcast(Inner::Rpc, &message);
        }
    }

    /// What `ipop-agent status` shows: everything (its schema: docs/status.md).
    pub fn status(&self, about: &serde_json::Value, kernel: &serde_json::Value) -> serde_json::Value {
        let peers = self.peers_status();
        let public = peers.as_array().into_iter().flatten().find_map(|p| p["public_address"].as_str());
        let mut doc = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "public_address": public,
            "signaling": self.peers.as_ref().map(Peers::signaling_status),
            "data_port": self.peers.as_ref().and_then(Peers::data_port),
            "peers": peers,
            "local_hosts": self.hosts()["local"].clone(),
        });
        for part in [about, &self.counters(kernel)] {
            if let (Some(doc), Some(part)) = (doc.as_object_mut(), part.as_object()) {
                doc.extend(part.clone());
            }
        }
        doc
    }

    /// Every peer, with the hosts learned behind it.
    fn peers_status(&self) -> serde_json::Value {
        let hosts = |id| hosts_json(self.switch.hosts_behind(id));
        serde_json::json!(self.peers.as_ref().map(|p| p.status(hosts)).unwrap_or_default())
    }

    /// The hosts this bridge has, and those behind each peer.
    fn hosts(&self) -> serde_json::Value {
        let remote: serde_json::Map<_, _> = self
            .peers
            .as_ref()
            .map(|p| p.ids().map(|(id, node)| (node.to_owned(), hosts_json(self.switch.hosts_behind(id)))).collect())
            .unwrap_or_default();
        serde_json::json!({"local": hosts_json(self.switch.local_hosts()), "remote": remote})
    }

    /// The agent's counters: the programs' (`kernel`), the switch's decisions, and what was
    /// refused or dropped where.
    fn counters(&self, kernel: &serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "kernel": kernel,
            "switch": self.switch.counters(),
            "queue_drops": self.peers.as_ref().map_or(0, |p| p.queue_drops),
            "signals_refused": self.peers.as_ref().map_or(0, |p| p.signals_refused),
            "tap_write_errors": self.tap_write_errors,
            "datagrams_refused": self.datagrams_refused,
            "datagrams_unknown": self.peers.as_ref().map_or(0, Peers::datagrams_unknown),
            "frames_dropped": self.frames_dropped,
            "orphans": self.switch.orphans(),
            "rpc_refused": self.rpc_refused,
        })
    }

    pub(super) fn write_tap(&mut self, frame: &[u8]) {
        if self.tap.get_ref().send(frame).is_err() {
            self.tap_write_errors += 1;
        }
    }

    /// A frame the bridge sent toward the overlay, with its virtio header (`whole`).
    pub fn frame_from_bridge(&mut self, whole: &[u8]) {
        let Some(peers) = self.peers.as_mut() else { return };
        let Some(frame) = whole.get(VNET_HDR_LEN..) else { return };
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
    pub(super) fn frame_from_peer(&mut self, now: u64, id: PeerId, whole: &[u8]) {
        let Some((hdr, frame)) = whole.split_first_chunk::<{ VNET_HDR_LEN }>() else { return };
        if !vnet_hdr_ok(hdr, frame.len()) {
            self.frames_dropped += 1;
            return;
        }
        if let Some(p) = self.peers.as_mut() {
            p.received_frame(id, whole.len());
        }
        if self.switch.accept_from_peer(now, id, frame) && self.tap.get_ref().send_with(hdr, frame).is_err() {
            self.tap_write_errors += 1;
        }
    }
}
