//! Frames: where one from the local bridge goes, and whether one from a peer goes in.

use ipop_common::{
    arp::{self, ETHERTYPE_ARP},
    nd::NdFrame,
};

use super::{PeerId, Route, Switch, is_host_mac};
use crate::core::{addr::Mac, limit::Bucket};

impl Switch {
    /// Where a frame the bridge sent to the TAP goes. ARP and IPv6 neighbour discovery never
    /// travel as frames (the kernel reported them already), and no frame goes anywhere
    /// without a peer.
    pub fn route_from_bridge(&mut self, now_ns: u64, frame: &[u8]) -> Route {
        if frame.len() < arp::ETH_HLEN || self.peers.is_empty() {
            return Route::Drop;
        }
        if is_neighbour_frame(frame) {
            return Route::Drop;
        }
        let dst: [u8; 6] = frame[..6].try_into().unwrap();
        if dst[0] & 1 != 0 {
            let rate = self.limits.broadcast;
            if !self.broadcast.get_or_insert_with(|| Bucket::full(rate, now_ns)).take(rate, now_ns) {
                self.counters.storm_dropped += 1;
                return Route::Drop;
            }
        }
        self.counters.frames_to_peers += 1;
        match self.macs.get(&Mac(dst)) {
            Some((peer, _)) if is_host_mac(&dst) => Route::Peer(*peer),
            _ => Route::AllPeers,
        }
    }

    /// Whether a frame from `peer` goes into the TAP; learns its source MAC behind `peer`.
    pub fn accept_from_peer(&mut self, now_ns: u64, peer: PeerId, frame: &[u8]) -> bool {
        if frame.len() < arp::ETH_HLEN || is_neighbour_frame(frame) {
            self.counters.frames_refused += 1;
            return false;
        }
        let src: [u8; 6] = frame[6..12].try_into().unwrap();
        if is_host_mac(&src) {
            if self.is_local_mac(Mac(src)) {
                // One of our own hosts' MACs coming back from the overlay: a loop or a spoof.
                self.counters.frames_refused += 1;
                return false;
            }
            self.macs.insert(Mac(src), (peer, now_ns));
        }
        self.counters.frames_from_peers += 1;
        true
    }
}

/// ARP, or IPv6 ND as the kernel program recognises it: these cross as RPCs only.
fn is_neighbour_frame(frame: &[u8]) -> bool {
    u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP || NdFrame::parse(frame).is_ok()
}
