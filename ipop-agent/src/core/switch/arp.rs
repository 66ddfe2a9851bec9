//! ARP: events the kernel programs report, and the `arp_request`/`arp_reply` RPCs of peers.

use std::net::IpAddr;

use ipop_common::{
    arp::{self, Arp, BROADCAST, OP_REPLY, OP_REQUEST},
    maps::{ArpEvent, HOOK_BRIDGE_INGRESS, HOOK_TAP_EGRESS, VERDICT_ANSWERED},
};

use super::{Departure, MAX_LOCAL, Neighbour, Output, Owner, PeerId, Remote, Switch};
use crate::core::{
    addr::Mac,
    rpc::{ArpReply, ArpRequest, HostAnnounce, Method},
};

impl Switch {
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
        let (sender_ip, sender_mac) = (IpAddr::from(arp.sender_ip), Mac(arp.sender_mac));
        out.extend(self.learn_local(now_ns, sender_ip, sender_mac));
        let target = IpAddr::from(arp.target_ip);
        // The frame itself tells the peers of its sender when the TAP's egress sends it on: a
        // reply or announcement, or a request for an IP that is not local.
        let carried = ev.hook == HOOK_TAP_EGRESS
            && ev.verdict != VERDICT_ANSWERED
            && (arp.op == OP_REPLY || arp.is_gratuitous() || !self.local.contains_key(&target));
        // A broadcast is decided at the TAP's egress (which sees it too); a frame only for this
        // host (a reply to the bridge's address) at the bridge's ingress, the only hook that
        // sees it.
        if !carried && (ev.hook == HOOK_TAP_EGRESS || ev.eth_dst != BROADCAST) {
            out.extend(self.announce(now_ns, sender_ip, sender_mac));
        }
        if ev.hook == HOOK_BRIDGE_INGRESS {
            // The same broadcast also reaches the TAP's egress, which decides for the overlay.
            return out;
        }
        let method = if ev.verdict == VERDICT_ANSWERED {
            self.counters.answered_in_kernel += 1;
            out.push(Output::AnsweredInKernel { ip: target, requester: IpAddr::from(arp.sender_ip) });
            return out;
        } else if arp.op == OP_REPLY || arp.is_gratuitous() {
            Method::ArpReply(ArpReply {
                sender_mac: Mac(arp.sender_mac),
                sender_ip: arp.sender_ip.into(),
                target_mac: Mac(if arp.is_gratuitous() { BROADCAST } else { arp.target_mac }),
                target_ip: arp.target_ip.into(),
            })
        } else if self.local.contains_key(&target) {
            self.counters.resolved_locally += 1;
            return out;
        } else {
            Method::ArpRequest(ArpRequest {
                sender_mac: Mac(arp.sender_mac),
                sender_ip: arp.sender_ip.into(),
                target_ip: arp.target_ip.into(),
            })
        };
        out.extend(self.send_rpc(now_ns, sender_mac, Some(sender_ip), method));
        out
    }

    /// Sends `method`, caused by local `source`, to the peers if any is up and the source is
    /// within its rate; the peers were told of local host `sender` by it.
    pub(super) fn send_rpc(
        &mut self,
        now_ns: u64,
        source: Mac,
        sender: Option<IpAddr>,
        method: Method,
    ) -> Option<Output> {
        if self.peers.is_empty() {
            self.counters.unresolved += 1;
            None
        } else if !self.allow_arp(now_ns, source) {
            self.counters.rpc_limited += 1;
            None
        } else {
            self.counters.rpc_sent += 1;
            if let Some(ip) = sender {
                self.told(now_ns, ip);
            }
            Some(Output::Broadcast(method))
        }
    }

    /// Tells the peers of local host `ip` at `mac`, whose frame did not tell them itself,
    /// unless they heard of it lately (`Neighbour::announced_ns`), so their kernels answer the
    /// first ARP or solicitation for it. The host itself (a sender with a MAC of the bridge's
    /// own addresses) is never announced: every host has its own.
    pub(super) fn announce(&mut self, now_ns: u64, ip: IpAddr, mac: Mac) -> Option<Output> {
        let refresh = self.max_age_ns / 2;
        let stale = |n: &Neighbour| n.announced_ns.is_none_or(|t| refresh > 0 && now_ns.saturating_sub(t) >= refresh);
        if !self.local.get(&ip).is_some_and(|n| n.mac == mac && !n.permanent && stale(n))
            || self.own_macs().contains(&mac)
            || self.peers.is_empty()
            || !self.allow_arp(now_ns, mac)
        {
            return None;
        }
        self.told(now_ns, ip);
        self.counters.announced += 1;
        Some(Output::Broadcast(Method::HostAnnounce(HostAnnounce { mac, ip })))
    }

    /// The peers were told of local host `ip` now.
    fn told(&mut self, now_ns: u64, ip: IpAddr) {
        if let Some(n) = self.local.get_mut(&ip) {
            n.announced_ns = Some(now_ns);
        }
    }

    /// Decides what an RPC from `peer` means: seed steps 3 (a request replayed into the local
    /// bridge) and 6 (a reply installed and delivered).
    pub fn handle_rpc(&mut self, now_ns: u64, peer: PeerId, method: &Method) -> Vec<Output> {
        self.counters.rpc_received += 1;
        self.dispatch_rpc(now_ns, peer, method)
    }

    fn dispatch_rpc(&mut self, now_ns: u64, peer: PeerId, method: &Method) -> Vec<Output> {
        let (sender_mac, sender_ip) = match method {
            Method::ArpRequest(r) => (r.sender_mac, r.sender_ip.into()),
            Method::ArpReply(r) => (r.sender_mac, r.sender_ip.into()),
            Method::HostAnnounce(h) => (h.mac, h.ip),
            Method::NdSolicit(_) | Method::NdAdvert(_) => return self.handle_nd_rpc(now_ns, peer, method),
        };
        let mut out = Vec::new();
        if !self.accept_claim(now_ns, sender_ip, sender_mac, peer, method, &mut out) {
            return out;
        }
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
                let for_us = self.local.get(&r.target_ip.into()).is_some_and(|n| n.mac == r.target_mac);
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
            // Only the entry: the host has not asked anything of this bridge.
            Method::HostAnnounce(_) | Method::NdSolicit(_) | Method::NdAdvert(_) => {}
        }
        out
    }

    /// Takes `peer`'s word (in `method`) that `ip` is at `mac` if it may say so: the entry is
    /// installed (before any frame is injected: the bridge ingress program recognises an
    /// injected frame by it and does not report it back, no loop). Otherwise the refusal goes
    /// to `out` and nothing else is done for the message. A local host claimed with its own
    /// MAC may have moved there: the shell is asked to look (`CheckDeparture`), at most once a
    /// second per address.
    pub(super) fn accept_claim(
        &mut self,
        now_ns: u64,
        ip: IpAddr,
        mac: Mac,
        peer: PeerId,
        method: &Method,
        out: &mut Vec<Output>,
    ) -> bool {
        match self.learn_remote(now_ns, ip, mac, peer) {
            Err(Output::Conflict { owner: Owner::Local(local), .. })
                if local == mac && !self.own_macs().contains(&mac) && self.may_check(now_ns, ip) =>
            {
                out.push(Output::CheckDeparture { ip, mac, peer, method: *method });
                return false;
            }
            Err(refusal) => {
                match refusal {
                    Output::ClaimRefused { .. } => self.counters.claims_refused += 1,
                    _ => self.counters.conflicts += 1,
                }
                out.push(refusal);
                return false;
            }
            Ok(true) => out.push(Output::HostMoved { ip, mac, to: Some(peer) }),
            Ok(false) => {}
        }
        // An advertisement says whether its sender routes; nothing else does.
        let router = match method {
            Method::NdAdvert(a) => Some(a.flags & ipop_common::nd::FLAG_ROUTER != 0),
            _ => None,
        };
        out.push(Output::ArpInstall { ip, mac, peer, router });
        true
    }

    /// Whether a departure check for `ip` may run now (one a second per address: a peer
    /// repeating the claim must not make the shell read the bridge's table for every message).
    pub(super) fn may_check(&mut self, now_ns: u64, ip: IpAddr) -> bool {
        const EVERY_NS: u64 = 1_000_000_000;
        if self.departure_checks.get(&ip).is_some_and(|t| now_ns.saturating_sub(*t) < EVERY_NS) {
            return false;
        }
        self.departure_checks.insert(ip, now_ns);
        true
    }

    /// What the shell found for a `CheckDeparture`: whether `mac` is still on one of the
    /// bridge's ports. Gone, the host moved behind `peer`: every local entry with its MAC goes
    /// (its IPv4 and IPv6 addresses alike) and `method` is taken as any other; still there,
    /// the claim is the conflict it looked like.
    pub fn departure_checked(&mut self, now_ns: u64, check: Departure, still_here: bool) -> Vec<Output> {
        let Departure { ip, mac, peer, method } = check;
        if still_here || !self.local.values().any(|n| n.mac == mac && !n.permanent) {
            self.counters.conflicts += 1;
            let owner = self.local.get(&ip).map_or(Owner::Local(mac), |n| Owner::Local(n.mac));
            return vec![Output::Conflict { ip, owner, claimed: mac, by: peer }];
        }
        self.local.retain(|_, n| n.mac != mac || n.permanent);
        self.counters.moves += 1;
        let mut out = vec![Output::HostMoved { ip, mac, to: Some(peer) }];
        out.extend(self.dispatch_rpc(now_ns, peer, &method));
        out
    }

    /// Records a local host. A local host always wins over a remote claim to its IP: the
    /// kernel must never answer for an IP that lives on this bridge.
    pub(super) fn learn_local(&mut self, now_ns: u64, ip: IpAddr, mac: Mac) -> Vec<Output> {
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
            out.push(Output::ArpRemove { ip });
            if r.mac == mac {
                // The host that was behind a peer is here now: it moved, no conflict, and
                // frames for it no longer go to that peer.
                self.counters.moves += 1;
                self.macs.remove(&mac);
                out.push(Output::HostMoved { ip, mac, to: None });
            } else {
                self.counters.conflicts += 1;
                out.push(Output::LocalOverridesRemote { ip, local: mac, remote: r.mac, peer: r.peer });
            }
        }
        let previous = self.local.insert(ip, Neighbour { mac, seen_ns: now_ns, permanent: false, announced_ns: None });
        out.push(Output::LocalLearned { ip, mac, previous: previous.map(|p| p.mac) });
        out
    }

    /// Records that `peer` says `ip` is at `mac`, unless its certificate does not allow it or
    /// someone else owns `ip`.
    /// Whether the host moved (`Ok(true)`): it was behind another peer with the same IP and
    /// MAC.
    fn learn_remote(&mut self, now_ns: u64, ip: IpAddr, mac: Mac, peer: PeerId) -> Result<bool, Output> {
        if self.allowed.get(&peer).is_some_and(|a| !a.allows(ip, mac)) {
            return Err(Output::ClaimRefused { ip, claimed: mac, by: peer });
        }
        // A live peer's word supersedes what a previous agent left (the install overwrites it).
        self.orphans.remove(&ip);
        // A host on this bridge stands, even against its own IP and MAC from a peer: a peer's
        // word that it left would let that peer take its frames (a move away from here is
        // taken once the bridge's own table says the host left: `departure_checked`).
        if let Some(n) = self.local.get(&ip) {
            return Err(Output::Conflict { ip, owner: Owner::Local(n.mac), claimed: mac, by: peer });
        }
        // Nor does a peer get a local host's MAC for another address: the frame written for
        // the claim would teach the bridge that MAC on the TAP, and take the host's frames.
        if self.is_local_mac(mac) {
            return Err(Output::Conflict { ip, owner: Owner::Local(mac), claimed: mac, by: peer });
        }
        let mut moved = false;
        if let Some(r) = self.remote.get(&ip)
            && r.peer != peer
        {
            if r.mac != mac {
                let owner = Owner::Remote { mac: r.mac, peer: r.peer };
                return Err(Output::Conflict { ip, owner, claimed: mac, by: peer });
            }
            // The same host behind another peer: it moved from that bridge to this one's.
            self.counters.moves += 1;
            moved = true;
        }
        self.remote.insert(ip, Remote { mac, peer, updated_ns: now_ns });
        self.macs.insert(mac, (peer, now_ns));
        Ok(moved)
    }
}
