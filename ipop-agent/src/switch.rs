//! The switch: ipop's sans-IO core. It is told what the kernel programs saw (ARP events),
//! what peers sent (RPCs, frames), which peers are up, and the time; it decides what to do
//! and owns the tables. It holds no socket, clock, file or map: the shell (`agent`) carries
//! its outputs out, in order.
//!
//! Tables: local hosts (IP -> MAC, on this bridge), remote hosts (IP -> MAC and the peer
//! behind it, mirrored into the kernel's `arp_table`), and MAC -> peer for unicast frames.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use ipop_common::{
    arp::{self, Arp, BROADCAST, ETHERTYPE_ARP, OP_REPLY, OP_REQUEST},
    maps::{ArpEvent, HOOK_BRIDGE_INGRESS, HOOK_TAP_EGRESS, VERDICT_ANSWERED},
};

use crate::{
    addr::Mac,
    limit::{Bucket, Rate},
    rpc::{ArpReply, ArpRequest, Method},
};

/// Rate limits the switch applies (configurable; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// ARP RPCs caused by one local source MAC.
    pub arp_per_source: Rate,
    /// Broadcast and multicast frames flooded to the peers (storm control).
    pub broadcast: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { arp_per_source: Rate::per_second(10_000), broadcast: Rate::UNLIMITED }
    }
}

/// Local hosts remembered at most (a flood of made-up senders must not grow memory).
pub const MAX_LOCAL: usize = 16_384;
/// A source's bucket is forgotten after this long without ARP (it would be full again anyway).
const SOURCE_IDLE_NS: u64 = 10_000_000_000;
/// Sources with a bucket of their own at most; the rest share one.
pub const MAX_SOURCES: usize = 4_096;

/// A peer, as the shell numbers them.
pub type PeerId = u32;

/// Who owns an IP, when a peer's claim conflicts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Local(Mac),
    Remote { mac: Mac, peer: PeerId },
}

/// What the shell must do (or report) after an input, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A host on the local bridge was seen for the first time, or with a new MAC.
    LocalLearned { ip: Ipv4Addr, mac: Mac, previous: Option<Mac> },
    /// The kernel answered `requester`'s request for `ip` from `arp_table`: no RPC is needed.
    AnsweredInKernel { ip: Ipv4Addr, requester: Ipv4Addr },
    /// Send to every peer that is up (ARP travels only this way, never as frames).
    Broadcast(Method),
    /// Write this frame into the TAP: the local bridge delivers it.
    WriteTap(Vec<u8>),
    /// Put (or refresh) `ip` -> `mac`, vouched for by `peer`, in the kernel's `arp_table`.
    ArpInstall { ip: Ipv4Addr, mac: Mac, peer: PeerId },
    /// Take `ip` out of `arp_table`: it is no longer answered in the kernel.
    ArpRemove { ip: Ipv4Addr },
    /// A peer claimed an IP that someone else owns; the existing mapping stands.
    Conflict { ip: Ipv4Addr, owner: Owner, claimed: Mac, by: PeerId },
    /// A local host appeared with an IP a peer had claimed: the remote entry is withdrawn.
    LocalOverridesRemote { ip: Ipv4Addr, local: Mac, remote: Mac, peer: PeerId },
}

/// Where a frame from the local bridge goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Drop,
    Peer(PeerId),
    AllPeers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Mac,
    pub seen_ns: u64,
    /// The bridge's own addresses never expire.
    pub permanent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    pub mac: Mac,
    pub peer: PeerId,
    pub updated_ns: u64,
}

/// A learned entry a previous agent (killed, then restarted) left in `arp_table`: kept and
/// answered in the kernel while its peer, named by a tag of its node id, may come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub mac: Mac,
    pub tag: u32,
    pub updated_ns: u64,
}

/// Counts of the switch's decisions (the kernel's own counters are in `stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub answered_in_kernel: u64,
    pub rpc_sent: u64,
    pub rpc_received: u64,
    /// Requests for a local IP: the local host answers, the overlay is not involved.
    pub resolved_locally: u64,
    /// Requests nobody could be asked about (no peer up).
    pub unresolved: u64,
    /// Probes (sender 0.0.0.0): duplicate address detection stays on the local bridge.
    pub probes: u64,
    pub conflicts: u64,
    pub frames_to_peers: u64,
    pub frames_from_peers: u64,
    /// Frames from peers refused: too short, ARP as data, or a local source MAC.
    pub frames_refused: u64,
    /// Events the programs should never send (unknown hook or operation).
    pub unexpected: u64,
    /// ARP RPCs not sent: their source exceeded its rate.
    pub rpc_limited: u64,
    /// Broadcast or multicast frames not flooded: storm control.
    pub storm_dropped: u64,
    /// Local hosts not learned: the table was full.
    pub local_full: u64,
}

#[derive(Debug)]
pub struct Switch {
    local: HashMap<Ipv4Addr, Neighbour>,
    remote: HashMap<Ipv4Addr, Remote>,
    macs: HashMap<Mac, (PeerId, u64)>,
    peers: HashSet<PeerId>,
    max_age_ns: u64,
    counters: Counters,
    limits: Limits,
    sources: HashMap<Mac, Bucket>,
    /// The bucket shared by sources beyond `MAX_SOURCES`.
    overflow: Option<Bucket>,
    orphans: HashMap<Ipv4Addr, Orphan>,
    /// Orphans whose peer's link is not up by then are withdrawn.
    orphans_until_ns: u64,
    broadcast: Option<Bucket>,
}

fn is_host_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

impl Switch {
    /// `max_age_ns`: how long learned entries (local and remote) live without a refresh.
    pub fn new(max_age_ns: u64) -> Self {
        Self {
            local: HashMap::new(),
            remote: HashMap::new(),
            macs: HashMap::new(),
            peers: HashSet::new(),
            max_age_ns,
            counters: Counters::default(),
            limits: Limits::default(),
            sources: HashMap::new(),
            overflow: None,
            broadcast: None,
            orphans: HashMap::new(),
            orphans_until_ns: 0,
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether `source` may cause one more ARP RPC at `now_ns`.
    fn allow_arp(&mut self, now_ns: u64, source: Mac) -> bool {
        let rate = self.limits.arp_per_source;
        if rate.per_sec == 0 {
            return true;
        }
        let full = self.sources.len() >= MAX_SOURCES;
        let bucket = match self.sources.get_mut(&source) {
            Some(b) => b,
            None if full => self.overflow.get_or_insert_with(|| Bucket::full(rate, now_ns)),
            None => self.sources.entry(source).or_insert_with(|| Bucket::full(rate, now_ns)),
        };
        bucket.take(rate, now_ns)
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn local(&self, ip: Ipv4Addr) -> Option<Neighbour> {
        self.local.get(&ip).copied()
    }

    pub fn remote(&self, ip: Ipv4Addr) -> Option<Remote> {
        self.remote.get(&ip).copied()
    }

    /// An address of the host itself on the bridge: always local, never asked about.
    pub fn add_local_address(&mut self, ip: Ipv4Addr, mac: Mac) {
        self.local.insert(ip, Neighbour { mac, seen_ns: 0, permanent: true });
    }

    /// A link to `peer` is up: it receives broadcasts from now on.
    pub fn peer_up(&mut self, peer: PeerId) {
        self.peers.insert(peer);
    }

    /// Takes over the learned entries a previous agent left in `arp_table` (the shell read
    /// them at start). They stay answered in the kernel until `now_ns + grace_ns`, by which
    /// time their peer's link must be up (`adopt`) or they are withdrawn (`expire`). An
    /// entry for a local IP is withdrawn at once: a local host always wins.
    pub fn restore(
        &mut self,
        now_ns: u64,
        grace_ns: u64,
        entries: impl IntoIterator<Item = (Ipv4Addr, Orphan)>,
    ) -> Vec<Output> {
        self.orphans_until_ns = now_ns.saturating_add(grace_ns);
        let mut out = Vec::new();
        for (ip, orphan) in entries {
            if self.local.contains_key(&ip) {
                out.push(Output::ArpRemove { ip });
            } else {
                self.orphans.insert(ip, orphan);
            }
        }
        out
    }

    /// `peer`, whose node id has tag `tag`, is up: the orphans it vouched for are its
    /// entries again (aged from their last refresh, withdrawn if it goes down).
    pub fn adopt(&mut self, tag: u32, peer: PeerId) {
        let ips: Vec<Ipv4Addr> = self.orphans.iter().filter(|(_, o)| o.tag == tag).map(|(ip, _)| *ip).collect();
        for ip in ips {
            let o = self.orphans.remove(&ip).unwrap();
            self.remote.entry(ip).or_insert(Remote { mac: o.mac, peer, updated_ns: o.updated_ns });
        }
    }

    /// Entries restored from a previous agent and not yet adopted.
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// The link to `peer` is down: what it told us is no longer answered.
    pub fn peer_down(&mut self, peer: PeerId) -> Vec<Output> {
        self.peers.remove(&peer);
        self.macs.retain(|_, (p, _)| *p != peer);
        self.forget_remote(|r| r.peer == peer)
    }

    /// Drops the remote entries that match; returns their removals from `arp_table`, by IP.
    fn forget_remote(&mut self, gone: impl Fn(&Remote) -> bool) -> Vec<Output> {
        let mut ips: Vec<Ipv4Addr> = self.remote.iter().filter(|(_, r)| gone(r)).map(|(ip, _)| *ip).collect();
        ips.sort();
        for ip in &ips {
            self.remote.remove(ip);
        }
        ips.into_iter().map(|ip| Output::ArpRemove { ip }).collect()
    }

    /// Decides what an ARP event from the kernel means, at monotonic time `now_ns`.
    pub fn handle_arp(&mut self, now_ns: u64, ev: &ArpEvent) -> Vec<Output> {
        self.counters.events += 1;
        let arp = ev.arp();
        let mut out = Vec::new();
        if arp.is_probe() {
            self.counters.probes += 1;
            return out;
        }
        if (ev.hook != HOOK_BRIDGE_INGRESS && ev.hook != HOOK_TAP_EGRESS)
            || (arp.op != OP_REQUEST && arp.op != OP_REPLY)
        {
            self.counters.unexpected += 1;
            return out;
        }
        // Both hooks only report frames from the local side (the bridge ingress program
        // skips the agent's own injected frames), so the sender is a local host.
        out.extend(self.learn_local(now_ns, Ipv4Addr::from(arp.sender_ip), Mac(arp.sender_mac)));
        if ev.hook == HOOK_BRIDGE_INGRESS {
            // The same broadcast also reaches the TAP's egress, which decides for the overlay.
            return out;
        }
        let target = Ipv4Addr::from(arp.target_ip);
        let method = if ev.verdict == VERDICT_ANSWERED {
            self.counters.answered_in_kernel += 1;
            out.push(Output::AnsweredInKernel { ip: target, requester: Ipv4Addr::from(arp.sender_ip) });
            return out;
        } else if arp.op == OP_REPLY || arp.is_gratuitous() {
            Method::ArpReply(ArpReply {
                sender_mac: Mac(arp.sender_mac),
                sender_ip: arp.sender_ip.into(),
                target_mac: Mac(if arp.is_gratuitous() { BROADCAST } else { arp.target_mac }),
                target_ip: target,
            })
        } else if self.local.contains_key(&target) {
            self.counters.resolved_locally += 1;
            return out;
        } else {
            Method::ArpRequest(ArpRequest {
                sender_mac: Mac(arp.sender_mac),
                sender_ip: arp.sender_ip.into(),
                target_ip: target,
            })
        };
        if self.peers.is_empty() {
            self.counters.unresolved += 1;
        } else if !self.allow_arp(now_ns, Mac(arp.sender_mac)) {
            self.counters.rpc_limited += 1;
        } else {
            self.counters.rpc_sent += 1;
            out.push(Output::Broadcast(method));
        }
        out
    }

    /// Decides what an RPC from `peer` means: seed steps 3 (a request replayed into the local
    /// bridge) and 6 (a reply installed and delivered).
    pub fn handle_rpc(&mut self, now_ns: u64, peer: PeerId, method: &Method) -> Vec<Output> {
        self.counters.rpc_received += 1;
        let (sender_mac, sender_ip) = match method {
            Method::ArpRequest(r) => (r.sender_mac, r.sender_ip),
            Method::ArpReply(r) => (r.sender_mac, r.sender_ip),
        };
        let mut out = Vec::new();
        if let Err(conflict) = self.learn_remote(now_ns, sender_ip, sender_mac, peer) {
            self.counters.conflicts += 1;
            out.push(conflict);
            return out;
        }
        // Installed before the frame is injected: the bridge ingress program recognises the
        // injected frame by this entry and does not report it back (no loop).
        out.push(Output::ArpInstall { ip: sender_ip, mac: sender_mac, peer });
        match method {
            Method::ArpRequest(r) => {
                let frame = Arp {
                    op: OP_REQUEST,
                    sender_mac: r.sender_mac.0,
                    sender_ip: r.sender_ip.octets(),
                    target_mac: [0; 6],
                    target_ip: r.target_ip.octets(),
                };
                out.push(Output::WriteTap(arp::build(BROADCAST, r.sender_mac.0, &frame).to_vec()));
            }
            Method::ArpReply(r) => {
                let gratuitous = r.sender_ip == r.target_ip;
                let for_us = self.local.get(&r.target_ip).is_some_and(|n| n.mac == r.target_mac);
                if gratuitous || for_us {
                    let dst = if gratuitous { BROADCAST } else { r.target_mac.0 };
                    let frame = Arp {
                        op: OP_REPLY,
                        sender_mac: r.sender_mac.0,
                        sender_ip: r.sender_ip.octets(),
                        target_mac: r.target_mac.0,
                        target_ip: r.target_ip.octets(),
                    };
                    out.push(Output::WriteTap(arp::build(dst, r.sender_mac.0, &frame).to_vec()));
                }
            }
        }
        out
    }

    /// Where a frame the bridge sent to the TAP goes. ARP never travels as a frame (the
    /// kernel reported it already), and no frame goes anywhere without a peer.
    pub fn route_from_bridge(&mut self, now_ns: u64, frame: &[u8]) -> Route {
        if frame.len() < arp::ETH_HLEN || self.peers.is_empty() {
            return Route::Drop;
        }
        if u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP {
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
        if frame.len() < arp::ETH_HLEN || u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP {
            self.counters.frames_refused += 1;
            return false;
        }
        let src: [u8; 6] = frame[6..12].try_into().unwrap();
        if is_host_mac(&src) {
            if self.local.values().any(|n| n.mac.0 == src) {
                // One of our own hosts' MACs coming back from the overlay: a loop or a spoof.
                self.counters.frames_refused += 1;
                return false;
            }
            self.macs.insert(Mac(src), (peer, now_ns));
        }
        self.counters.frames_from_peers += 1;
        true
    }

    /// Records a local host. A local host always wins over a remote claim to its IP: the
    /// kernel must never answer for an IP that lives on this bridge.
    fn learn_local(&mut self, now_ns: u64, ip: Ipv4Addr, mac: Mac) -> Vec<Output> {
        if let Some(n) = self.local.get_mut(&ip)
            && n.mac == mac
        {
            n.seen_ns = now_ns;
            return Vec::new();
        }
        let mut out = Vec::new();
        if self.local.len() >= MAX_LOCAL && !self.local.contains_key(&ip) {
            self.counters.local_full += 1;
            return out;
        }
        if self.orphans.remove(&ip).is_some() {
            out.push(Output::ArpRemove { ip });
        }
        if let Some(r) = self.remote.remove(&ip) {
            self.counters.conflicts += 1;
            out.push(Output::ArpRemove { ip });
            out.push(Output::LocalOverridesRemote { ip, local: mac, remote: r.mac, peer: r.peer });
        }
        let previous = self.local.insert(ip, Neighbour { mac, seen_ns: now_ns, permanent: false });
        out.push(Output::LocalLearned { ip, mac, previous: previous.map(|p| p.mac) });
        out
    }

    /// Records that `peer` says `ip` is at `mac`, unless someone else owns `ip`.
    fn learn_remote(&mut self, now_ns: u64, ip: Ipv4Addr, mac: Mac, peer: PeerId) -> Result<(), Output> {
        // A live peer's word supersedes what a previous agent left (the install overwrites it).
        self.orphans.remove(&ip);
        if let Some(n) = self.local.get(&ip) {
            return Err(Output::Conflict { ip, owner: Owner::Local(n.mac), claimed: mac, by: peer });
        }
        if let Some(r) = self.remote.get(&ip)
            && r.mac != mac
            && r.peer != peer
        {
            return Err(Output::Conflict {
                ip,
                owner: Owner::Remote { mac: r.mac, peer: r.peer },
                claimed: mac,
                by: peer,
            });
        }
        self.remote.insert(ip, Remote { mac, peer, updated_ns: now_ns });
        self.macs.insert(mac, (peer, now_ns));
        Ok(())
    }

    /// Forgets what was not refreshed within the maximum age; returns the kernel entries to
    /// remove. Local hosts go quietly; the bridge's own addresses stay.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Output> {
        let max_age = self.max_age_ns;
        let old = |t: u64| now_ns.saturating_sub(t) > max_age;
        self.local.retain(|_, n| n.permanent || !old(n.seen_ns));
        self.sources.retain(|_, b| !b.idle_since(now_ns, SOURCE_IDLE_NS));
        self.macs.retain(|_, (_, t)| !old(*t));
        let mut out = self.forget_remote(|r| old(r.updated_ns));
        if now_ns >= self.orphans_until_ns && !self.orphans.is_empty() {
            let mut ips: Vec<Ipv4Addr> = self.orphans.drain().map(|(ip, _)| ip).collect();
            ips.sort();
            out.extend(ips.into_iter().map(|ip| Output::ArpRemove { ip }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use ipop_common::{arp::ArpFrame, maps::VERDICT_PASSED};

    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 5];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 6];
    const R: [u8; 6] = [2, 0, 0, 0, 0, 0x68];
    const A_IP: [u8; 4] = [10, 0, 3, 5];
    const B_IP: [u8; 4] = [10, 0, 3, 6];
    const R_IP: [u8; 4] = [10, 0, 3, 104];
    const SEC: u64 = 1_000_000_000;
    const P1: PeerId = 1;
    const P2: PeerId = 2;

    fn event(hook: u8, op: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> ArpEvent {
        ArpEvent {
            ifindex: 7,
            hook,
            verdict: VERDICT_PASSED,
            op,
            eth_src: sender.0,
            eth_dst: if op == OP_REQUEST { [0xff; 6] } else { target.0 },
            sender_mac: sender.0,
            sender_ip: sender.1,
            target_mac: target.0,
            target_ip: target.1,
        }
    }

    fn request(hook: u8, target_ip: [u8; 4]) -> ArpEvent {
        event(hook, OP_REQUEST, (A, A_IP), ([0; 6], target_ip))
    }

    fn with_peers(peers: &[PeerId]) -> Switch {
        let mut sw = Switch::new(60 * SEC);
        for p in peers {
            sw.peer_up(*p);
        }
        sw
    }

    fn remote_request() -> Method {
        Method::ArpRequest(ArpRequest { sender_mac: Mac(R), sender_ip: R_IP.into(), target_ip: A_IP.into() })
    }

    fn remote_reply_to_a() -> Method {
        Method::ArpReply(ArpReply {
            sender_mac: Mac(R),
            sender_ip: R_IP.into(),
            target_mac: Mac(A),
            target_ip: A_IP.into(),
        })
    }

    fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[test]
    fn a_request_for_an_unknown_ip_is_broadcast_to_peers_once() {
        let mut sw = with_peers(&[P1, P2]);
        let at_bridge = sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
        assert_eq!(at_bridge, vec![Output::LocalLearned { ip: A_IP.into(), mac: Mac(A), previous: None }]);
        let at_tap = sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP));
        let expected =
            Method::ArpRequest(ArpRequest { sender_mac: Mac(A), sender_ip: A_IP.into(), target_ip: R_IP.into() });
        assert_eq!(at_tap, vec![Output::Broadcast(expected)], "one broadcast, from the TAP hook only");
        assert_eq!(sw.counters().rpc_sent, 1);
    }

    #[test]
    fn without_peers_nothing_is_sent() {
        let mut sw = with_peers(&[]);
        assert!(!sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP)).iter().any(|o| matches!(o, Output::Broadcast(_))));
        assert_eq!(sw.counters().unresolved, 1);
        assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800)), Route::Drop);
    }

    #[test]
    fn a_request_answered_in_the_kernel_needs_no_rpc() {
        let mut sw = with_peers(&[P1]);
        let mut ev = request(HOOK_TAP_EGRESS, R_IP);
        ev.verdict = VERDICT_ANSWERED;
        let out = sw.handle_arp(0, &ev);
        assert!(out.contains(&Output::AnsweredInKernel { ip: R_IP.into(), requester: A_IP.into() }));
        assert!(!out.iter().any(|o| matches!(o, Output::Broadcast(_))));
        assert_eq!((sw.counters().answered_in_kernel, sw.counters().rpc_sent), (1, 0));
    }

    #[test]
    fn a_request_for_a_local_host_or_the_bridge_stays_local() {
        let mut sw = with_peers(&[P1]);
        sw.add_local_address([10, 0, 3, 1].into(), Mac([2, 0, 0, 0, 0, 1]));
        sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, B_IP), ([0; 6], [10, 0, 3, 1])));
        for target in [B_IP, [10, 0, 3, 1]] {
            let out = sw.handle_arp(1, &request(HOOK_TAP_EGRESS, target));
            assert!(!out.iter().any(|o| matches!(o, Output::Broadcast(_))), "{out:?}");
        }
        assert_eq!(sw.counters().resolved_locally, 2);
    }

    #[test]
    fn local_replies_and_announcements_are_told_to_peers() {
        let mut sw = with_peers(&[P1]);
        let out = sw.handle_arp(0, &event(HOOK_TAP_EGRESS, OP_REPLY, (B, B_IP), (R, R_IP)));
        let reply = Method::ArpReply(ArpReply {
            sender_mac: Mac(B),
            sender_ip: B_IP.into(),
            target_mac: Mac(R),
            target_ip: R_IP.into(),
        });
        assert!(out.contains(&Output::Broadcast(reply)), "{out:?}");
        let out = sw.handle_arp(1, &event(HOOK_TAP_EGRESS, OP_REQUEST, (B, B_IP), ([0; 6], B_IP)));
        assert!(
            matches!(out.as_slice(), [Output::Broadcast(Method::ArpReply(r))] if r.target_mac == Mac(BROADCAST)),
            "{out:?}"
        );
    }

    #[test]
    fn a_peer_request_is_installed_then_replayed_into_the_bridge() {
        let mut sw = with_peers(&[P1]);
        let out = sw.handle_rpc(0, P1, &remote_request());
        assert_eq!(
            out[0],
            Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P1 },
            "install first, so the injected frame is not reported back"
        );
        let Output::WriteTap(bytes) = &out[1] else { panic!("{out:?}") };
        let f = ArpFrame::parse(bytes).unwrap();
        assert_eq!((f.eth_dst(), f.eth_src()), (BROADCAST, R));
        assert_eq!(
            f.arp(),
            Arp { op: OP_REQUEST, sender_mac: R, sender_ip: R_IP, target_mac: [0; 6], target_ip: A_IP }
        );
        assert_eq!(sw.remote(R_IP.into()), Some(Remote { mac: Mac(R), peer: P1, updated_ns: 0 }));
    }

    #[test]
    fn a_peer_reply_for_a_local_requester_is_delivered() {
        let mut sw = with_peers(&[P1]);
        sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
        let out = sw.handle_rpc(1, P1, &remote_reply_to_a());
        assert_eq!(out[0], Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P1 });
        let Output::WriteTap(bytes) = &out[1] else { panic!("{out:?}") };
        let f = ArpFrame::parse(bytes).unwrap();
        assert_eq!((f.eth_dst(), f.eth_src(), f.arp().op), (A, R, OP_REPLY));
        // A reply for a host that is not ours is installed but not written into the bridge.
        let other = Method::ArpReply(ArpReply {
            sender_mac: Mac([2, 0, 0, 0, 0, 0x70]),
            sender_ip: [10, 0, 3, 112].into(),
            target_mac: Mac([2, 0, 0, 0, 0, 0x71]),
            target_ip: [10, 0, 3, 113].into(),
        });
        let out = sw.handle_rpc(2, P1, &other);
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn conflicting_claims_are_reported_and_the_owner_stands() {
        let mut sw = with_peers(&[P1, P2]);
        sw.handle_rpc(0, P1, &remote_request());
        let rival = Method::ArpRequest(ArpRequest {
            sender_mac: Mac([2, 0, 0, 0, 0, 0x99]),
            sender_ip: R_IP.into(),
            target_ip: A_IP.into(),
        });
        let out = sw.handle_rpc(1, P2, &rival);
        assert_eq!(
            out,
            vec![Output::Conflict {
                ip: R_IP.into(),
                owner: Owner::Remote { mac: Mac(R), peer: P1 },
                claimed: Mac([2, 0, 0, 0, 0, 0x99]),
                by: P2
            }]
        );
        assert_eq!(sw.remote(R_IP.into()).unwrap().mac, Mac(R));
        // A peer claiming a local host's IP.
        sw.handle_arp(2, &request(HOOK_BRIDGE_INGRESS, R_IP));
        let spoof = Method::ArpReply(ArpReply {
            sender_mac: Mac(R),
            sender_ip: A_IP.into(),
            target_mac: Mac(B),
            target_ip: B_IP.into(),
        });
        let out = sw.handle_rpc(3, P2, &spoof);
        assert!(matches!(out.as_slice(), [Output::Conflict { owner: Owner::Local(m), .. }] if *m == Mac(A)), "{out:?}");
        assert_eq!(sw.counters().conflicts, 2);
    }

    #[test]
    fn a_local_host_withdraws_a_remote_claim_to_its_ip() {
        let mut sw = with_peers(&[P1]);
        sw.handle_rpc(0, P1, &remote_request());
        let out = sw.handle_arp(1, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, R_IP), ([0; 6], B_IP)));
        assert_eq!(out[0], Output::ArpRemove { ip: R_IP.into() }, "never answered in the kernel for a local IP");
        assert_eq!(out[1], Output::LocalOverridesRemote { ip: R_IP.into(), local: Mac(A), remote: Mac(R), peer: P1 });
        assert_eq!(sw.remote(R_IP.into()), None);
        assert_eq!(sw.counters().conflicts, 1);
    }

    #[test]
    fn one_source_flooding_arp_is_limited_others_are_not() {
        let mut sw = with_peers(&[P1])
            .with_limits(Limits { arp_per_source: Rate { per_sec: 100, burst: 10 }, broadcast: Rate::UNLIMITED });
        let flood = |sw: &mut Switch, now: u64, n: u8| {
            let ev = event(HOOK_TAP_EGRESS, OP_REQUEST, (A, A_IP), ([0; 6], [10, 0, 4, n]));
            sw.handle_arp(now, &ev).iter().any(|o| matches!(o, Output::Broadcast(_)))
        };
        let sent = (0..50).filter(|n| flood(&mut sw, 0, *n)).count();
        assert_eq!(sent, 10, "the burst, then nothing");
        assert_eq!(sw.counters().rpc_limited, 40);
        assert!(flood(&mut sw, SEC / 100, 99), "one more after 10 ms at 100/s");
        let other = event(HOOK_TAP_EGRESS, OP_REQUEST, (B, B_IP), ([0; 6], R_IP));
        assert!(
            sw.handle_arp(0, &other).iter().any(|o| matches!(o, Output::Broadcast(_))),
            "another source is not affected"
        );
    }

    #[test]
    fn storm_control_limits_flooded_broadcasts_only() {
        let mut sw = with_peers(&[P1, P2])
            .with_limits(Limits { arp_per_source: Rate::UNLIMITED, broadcast: Rate { per_sec: 10, burst: 2 } });
        let routes: Vec<Route> = (0..4).map(|_| sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800))).collect();
        assert_eq!(routes, [Route::AllPeers, Route::AllPeers, Route::Drop, Route::Drop]);
        assert_eq!(sw.counters().storm_dropped, 2);
        assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::AllPeers, "unknown unicast is not a storm");
        assert_eq!(sw.route_from_bridge(SEC, &frame(BROADCAST, A, 0x0800)), Route::AllPeers, "refilled");
    }

    #[test]
    fn the_local_table_is_bounded() {
        let mut sw = with_peers(&[]);
        for i in 0..MAX_LOCAL as u32 + 10 {
            let ip = (0x0a00_0000 + i).to_be_bytes();
            sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, ip), ([0; 6], B_IP)));
        }
        assert_eq!(sw.counters().local_full, 10);
    }

    #[test]
    fn frames_follow_learned_macs_and_flood_otherwise() {
        let mut sw = with_peers(&[P1, P2]);
        assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::AllPeers, "unknown unicast floods");
        assert!(sw.accept_from_peer(0, P2, &frame(A, R, 0x0800)));
        assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::Peer(P2));
        assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800)), Route::AllPeers);
        assert_eq!(sw.route_from_bridge(0, &frame([0x01, 0, 0x5e, 0, 0, 1], A, 0x0800)), Route::AllPeers);
        assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, ETHERTYPE_ARP)), Route::Drop, "ARP only as RPC");
        assert_eq!(sw.route_from_bridge(0, &[0u8; 10]), Route::Drop);
    }

    #[test]
    fn peer_frames_that_are_arp_short_or_from_local_macs_are_refused() {
        let mut sw = with_peers(&[P1]);
        sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
        assert!(!sw.accept_from_peer(0, P1, &frame(BROADCAST, R, ETHERTYPE_ARP)));
        assert!(!sw.accept_from_peer(0, P1, &[0u8; 13]));
        assert!(!sw.accept_from_peer(0, P1, &frame(BROADCAST, A, 0x0800)), "our own host's MAC from the overlay");
        assert_eq!(sw.counters().frames_refused, 3);
    }

    #[test]
    fn a_peer_going_down_takes_its_entries_with_it() {
        let mut sw = with_peers(&[P1, P2]);
        sw.handle_rpc(0, P1, &remote_request());
        sw.accept_from_peer(0, P1, &frame(A, R, 0x0800));
        assert_eq!(sw.peer_down(P2), vec![]);
        assert_eq!(sw.peer_down(P1), vec![Output::ArpRemove { ip: R_IP.into() }]);
        assert_eq!(sw.remote(R_IP.into()), None);
        assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::Drop, "no peer left");
    }

    #[test]
    fn entries_age_out_unless_refreshed() {
        let mut sw = Switch::new(10 * SEC);
        sw.peer_up(P1);
        sw.add_local_address([10, 0, 3, 1].into(), Mac([2, 0, 0, 0, 0, 1]));
        sw.handle_rpc(0, P1, &remote_request());
        sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
        sw.handle_rpc(8 * SEC, P1, &remote_request());
        assert!(sw.expire(15 * SEC).is_empty(), "refreshed at 8 s");
        assert_eq!(sw.local(A_IP.into()), None, "the silent local host is forgotten");
        assert_eq!(sw.expire(19 * SEC), vec![Output::ArpRemove { ip: R_IP.into() }]);
        assert!(sw.local([10, 0, 3, 1].into()).is_some(), "the bridge's own address stays");
    }

    fn orphan(mac: [u8; 6], tag: u32) -> Orphan {
        Orphan { mac: Mac(mac), tag, updated_ns: 0 }
    }

    #[test]
    fn entries_left_by_a_crashed_agent_return_to_their_peer_or_go_after_the_grace() {
        let mut sw = Switch::new(60 * SEC);
        sw.add_local_address(B_IP.into(), Mac(B));
        let kept = sw.restore(
            SEC,
            10 * SEC,
            [(R_IP.into(), orphan(R, 0xaa)), ([10, 0, 3, 105].into(), orphan(A, 0xbb)), (B_IP.into(), orphan(A, 0xaa))],
        );
        assert_eq!(kept, vec![Output::ArpRemove { ip: B_IP.into() }], "a local IP is never answered for a peer");
        assert_eq!(sw.orphans(), 2);
        // Peer 0xaa's link comes back as P1: its entry is its own again, and goes with it.
        sw.peer_up(P1);
        sw.adopt(0xaa, P1);
        assert_eq!(sw.remote(R_IP.into()), Some(Remote { mac: Mac(R), peer: P1, updated_ns: 0 }));
        assert!(sw.expire(5 * SEC).is_empty(), "within the grace, the other orphan stays");
        // Peer 0xbb never returns: its entry is withdrawn when the grace ends.
        assert_eq!(sw.expire(11 * SEC), vec![Output::ArpRemove { ip: [10, 0, 3, 105].into() }]);
        assert_eq!(sw.orphans(), 0);
        assert_eq!(sw.peer_down(P1), vec![Output::ArpRemove { ip: R_IP.into() }]);
    }

    #[test]
    fn a_live_claim_or_a_local_host_supersedes_an_orphan() {
        let mut sw = with_peers(&[P2]);
        sw.restore(0, 10 * SEC, [(R_IP.into(), orphan(A, 0xaa)), (A_IP.into(), orphan(R, 0xaa))]);
        let out = sw.handle_rpc(SEC, P2, &remote_request());
        assert_eq!(out[0], Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P2 }, "no conflict with an orphan");
        let out = sw.handle_arp(SEC, &request(HOOK_BRIDGE_INGRESS, R_IP));
        assert_eq!(out[0], Output::ArpRemove { ip: A_IP.into() }, "A lives here now");
        assert_eq!(sw.orphans(), 0);
        sw.adopt(0xaa, P1);
        assert_eq!(sw.remote(R_IP.into()).map(|r| r.peer), Some(P2), "adoption never overrides a live claim");
    }

    #[test]
    fn probes_are_neither_learned_nor_sent() {
        let mut sw = with_peers(&[P1]);
        let probe = event(HOOK_TAP_EGRESS, OP_REQUEST, (A, [0; 4]), ([0; 6], A_IP));
        assert!(sw.handle_arp(0, &probe).is_empty());
        assert_eq!(sw.local(A_IP.into()), None);
        assert_eq!(sw.counters().probes, 1);
    }

    #[test]
    fn a_moved_host_is_reported_with_its_old_mac() {
        let mut sw = with_peers(&[]);
        sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP)));
        assert!(sw.handle_arp(1, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP))).is_empty());
        let out = sw.handle_arp(2, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, A_IP), ([0; 6], B_IP)));
        assert_eq!(out, vec![Output::LocalLearned { ip: A_IP.into(), mac: Mac(B), previous: Some(Mac(A)) }]);
    }

    #[test]
    fn events_the_programs_never_send_are_counted_not_acted_on() {
        let mut sw = with_peers(&[P1]);
        let mut ev = request(HOOK_TAP_EGRESS, R_IP);
        ev.hook = 9;
        assert!(sw.handle_arp(0, &ev).is_empty());
        let mut ev = request(HOOK_TAP_EGRESS, R_IP);
        ev.op = 3;
        assert!(sw.handle_arp(0, &ev).is_empty());
        assert_eq!(sw.counters().unexpected, 2);
    }
}
