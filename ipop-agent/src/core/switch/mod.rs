//! The switch: ipop's sans-IO core. It is told what the kernel programs saw (ARP events),
//! what peers sent (RPCs, frames), which peers are up, and the time; it decides what to do
//! and owns the tables. It holds no socket, clock, file or map: the shell (`agent`) carries
//! its outputs out, in order.
//!
//! One file per kind of input: `arp` (ARP events from the kernel, ARP RPCs from peers),
//! `nd` (the same for IPv6 neighbour discovery), `frames` (frames from the bridge and from peers), `peers` (links up and down, entries a
//! crashed agent left, ageing).
//!
//! Tables: local hosts (IP -> MAC, on this bridge), remote hosts (IP -> MAC and the peer
//! behind it, mirrored into the kernel's `arp_table` for IPv4 and `nd_table` for IPv6), and
//! MAC -> peer for unicast frames.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::core::{
    addr::Mac,
    limit::{Bucket, Rate},
    rpc::Method,
};

mod arp;
mod frames;
mod nd;
#[cfg(test)]
mod nd_tests;
mod peers;
#[cfg(test)]
mod tests;

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
    LocalLearned { ip: IpAddr, mac: Mac, previous: Option<Mac> },
    /// The kernel answered `requester`'s request for `ip` from `arp_table`: no RPC is needed.
    AnsweredInKernel { ip: IpAddr, requester: IpAddr },
    /// Send to every peer that is up (ARP travels only this way, never as frames).
    Broadcast(Method),
    /// Send to one peer (the local hosts, announced to a peer whose link just came up).
    SendTo(PeerId, Method),
    /// Write this frame into the TAP: the local bridge delivers it.
    WriteTap(Vec<u8>),
    /// Put (or refresh) `ip` -> `mac`, vouched for by `peer`, in the kernel's `arp_table`
    /// (IPv6: `nd_table`). `router`: whether the host is an IPv6 router, as its advertisement
    /// said (the kernel's answers say the same); `None`: unknown, the entry's flag stays.
    ArpInstall { ip: IpAddr, mac: Mac, peer: PeerId, router: Option<bool> },
    /// Take `ip` out of `arp_table`: it is no longer answered in the kernel.
    ArpRemove { ip: IpAddr },
    /// A peer claimed an IP that someone else owns; the existing mapping stands.
    Conflict { ip: IpAddr, owner: Owner, claimed: Mac, by: PeerId },
    /// A peer claimed an IP (or MAC) outside what its certificate allows: refused.
    ClaimRefused { ip: IpAddr, claimed: Mac, by: PeerId },
    /// A local host appeared with an IP a peer had claimed: the remote entry is withdrawn.
    LocalOverridesRemote { ip: IpAddr, local: Mac, remote: Mac, peer: PeerId },
    /// Duplicate address detection across the overlay: `prober` (on this bridge when `behind`
    /// is `None`, else behind that peer) probed for `ip`, which `owner` has; the address was
    /// defended in the owner's name, so the prober does not take it.
    DuplicateAddress { ip: IpAddr, owner: Owner, prober: Mac, behind: Option<PeerId> },
    /// `peer` says local host `ip` at `mac` is behind it now (`method`): the shell looks in
    /// the bridge's forwarding table whether `mac` is still on one of its own ports, and
    /// says so with `Switch::departure_checked`.
    CheckDeparture { ip: IpAddr, mac: Mac, peer: PeerId, method: Method },
    /// The same host (IP and MAC) now speaks from elsewhere: a migrated container. `to` is
    /// the peer it is behind now, or `None`: this bridge. (A host on this bridge never moves
    /// on a peer's word alone: only once the bridge's table says it left.)
    HostMoved { ip: IpAddr, mac: Mac, to: Option<PeerId> },
}

/// A `CheckDeparture` as the shell hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    pub ip: IpAddr,
    pub mac: Mac,
    pub peer: PeerId,
    pub method: Method,
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
    /// When the peers were last told of it (announced, or carried by an ARP RPC): told again
    /// once half the entries' age has passed, so their entries stay fresh.
    pub announced_ns: Option<u64>,
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
    /// Local hosts announced to peers (`host_announce`), as learned or to a peer come up.
    pub announced: u64,
    /// Hosts that moved between bridges with their IP and MAC: from behind one peer to
    /// another, or from behind a peer to this bridge.
    pub moves: u64,
    /// Requests (and solicitations) for a local IP: the local host answers, the overlay is not
    /// involved.
    pub resolved_locally: u64,
    /// Requests nobody could be asked about (no peer up).
    pub unresolved: u64,
    /// Probes: ARP from 0.0.0.0 (duplicate address detection stays on the local bridge) and
    /// IPv6 solicitations from `::` (which cross: `nd`).
    pub probes: u64,
    /// IP conflicts: claims refused for an address someone else has, local hosts overriding
    /// a peer's claim, and duplicate addresses detected across the overlay.
    pub conflicts: u64,
    /// Claims outside the addresses the claiming peer's certificate allows.
    pub claims_refused: u64,
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
    local: HashMap<IpAddr, Neighbour>,
    remote: HashMap<IpAddr, Remote>,
    macs: HashMap<Mac, (PeerId, u64)>,
    peers: HashSet<PeerId>,
    max_age_ns: u64,
    counters: Counters,
    limits: Limits,
    sources: HashMap<Mac, Bucket>,
    /// The bucket shared by sources beyond `MAX_SOURCES`.
    overflow: Option<Bucket>,
    orphans: HashMap<IpAddr, Orphan>,
    /// Orphans whose peer's link is not up by then are withdrawn.
    orphans_until_ns: u64,
    broadcast: Option<Bucket>,
    /// What each peer with a certificate that lists addresses may claim.
    allowed: HashMap<PeerId, Allowed>,
    /// Local hosts' duplicate address detection awaiting a peer's answer: IP -> (prober, when).
    probes: HashMap<IpAddr, (Mac, u64)>,
    /// When a departure was last checked, per local address.
    departure_checks: HashMap<IpAddr, u64>,
}

/// The addresses a certificate allows its node's hosts: IP ranges, and MACs (empty: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    pub ips: Vec<ipnet::IpNet>,
    pub macs: Vec<Mac>,
}

impl Allowed {
    /// Whether a claim of `ip` at `mac` is inside (an empty list allows anything).
    pub fn allows(&self, ip: IpAddr, mac: Mac) -> bool {
        let ip_ok = self.ips.is_empty() || self.ips.iter().any(|n| n.contains(&ip));
        ip_ok && (self.macs.is_empty() || self.macs.contains(&mac))
    }
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
            allowed: HashMap::new(),
            probes: HashMap::new(),
            departure_checks: HashMap::new(),
        }
    }

    /// From now on `peer` may claim only what `allowed` lists (its certificate's addresses).
    pub fn set_allowed(&mut self, peer: PeerId, allowed: Allowed) {
        self.allowed.insert(peer, allowed);
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The MACs of the bridge's own addresses: a sender with one of them is the host itself.
    fn own_macs(&self) -> Vec<Mac> {
        self.local.values().filter(|n| n.permanent).map(|n| n.mac).collect()
    }

    /// Whether `mac` is a host's on this bridge (one of its addresses, or the bridge's own).
    fn is_local_mac(&self, mac: Mac) -> bool {
        self.local.values().any(|n| n.mac == mac)
    }

    /// New limits for a running switch (a reload): the buckets start again, full.
    pub fn set_limits(&mut self, limits: Limits) {
        if limits != self.limits {
            self.limits = limits;
            self.sources.clear();
            self.overflow = None;
            self.broadcast = None;
        }
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

    pub fn local(&self, ip: IpAddr) -> Option<Neighbour> {
        self.local.get(&ip).copied()
    }

    pub fn remote(&self, ip: IpAddr) -> Option<Remote> {
        self.remote.get(&ip).copied()
    }

    /// The hosts learned behind `peer`, by address.
    pub fn hosts_behind(&self, peer: PeerId) -> Vec<(IpAddr, Mac)> {
        let mut hosts: Vec<_> =
            self.remote.iter().filter(|(_, r)| r.peer == peer).map(|(ip, r)| (*ip, r.mac)).collect();
        hosts.sort();
        hosts
    }

    /// The local hosts (this bridge's), by address.
    pub fn local_hosts(&self) -> Vec<(IpAddr, Mac)> {
        let mut hosts: Vec<_> = self.local.iter().map(|(ip, n)| (*ip, n.mac)).collect();
        hosts.sort();
        hosts
    }

    /// An address of the host itself on the bridge: always local, never asked about.
    pub fn add_local_address(&mut self, ip: IpAddr, mac: Mac) {
        self.local.insert(ip, Neighbour { mac, seen_ns: 0, permanent: true, announced_ns: None });
    }
}
