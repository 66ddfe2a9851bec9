//! The state the agent's loop drives: the switch, the kernel's ARP table, the TAP and the
//! peers, with the counters `status` shows; frames in both directions. What to do with link
//! and signaling events is in `events`, with the switch's outputs in `outputs`.

use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData};
use ipop_common::maps::{ArpEntry, ArpKey};
use tokio::io::unix::AsyncFd;

use crate::{
    core::{
        switch::{PeerId, Route, Switch},
        vnet::{VNET_HDR_LEN, vnet_hdr_ok},
    },
    kernel::{maps::monotonic_ns, tap::Tap},
    link::peers::Peers,
};

/// The kernel's `arp_table`, as the agent holds it.
pub type ArpTable = BpfHashMap<MapData, ArpKey, ArpEntry>;

/// The parts the loop drives.
pub struct Shell {
    pub(super) switch: Switch,
    pub(super) arp_table: ArpTable,
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
}

impl Shell {
    pub fn new(switch: Switch, arp_table: ArpTable, tap: Arc<AsyncFd<Tap>>, peers: Option<Peers>) -> Self {
        Shell {
            switch,
            arp_table,
            tap,
            peers,
            tap_write_errors: 0,
            datagrams_refused: 0,
            frames_dropped: 0,
            rpc_refused: 0,
            rpc_refused_logged: Default::default(),
            next_frame_id: 0,
        }
    }

    /// What `ipop-agent status` shows.
    pub fn status(&self, node_id: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "node_id": node_id,
            "peers": self.peers.as_ref().map(Peers::status).unwrap_or_default(),
            "signaling": self.peers.as_ref().map(Peers::signaling_status),
            "data_port": self.peers.as_ref().and_then(Peers::data_port),
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
        if self.switch.accept_from_peer(now, id, frame) && self.tap.get_ref().send_with(hdr, frame).is_err() {
            self.tap_write_errors += 1;
        }
    }
}
