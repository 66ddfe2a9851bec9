//! IPv6 neighbour discovery: the solicitations and advertisements the TAP's egress program
//! reports, and the `nd_solicit`/`nd_advert` RPCs of peers. The tables are ARP's (an address
//! is an `IpAddr`; remote IPv6 hosts go to `nd_table`) and so are the rules: local hosts
//! learned and announced, remote ones installed, conflicts refused, moves followed.
//!
//! Duplicate address detection crosses the overlay: a probe (a solicitation from `::`) for
//! an address a remote host owns is defended here at once, in the owner's name, and goes on
//! to the peers, whose agent with the owner defends it too; both report the conflict.

use std::net::{IpAddr, Ipv6Addr};

use ipop_common::{
    maps::{HOOK_TAP_EGRESS, NdEvent, VERDICT_ANSWERED},
    nd::{self, ALL_NODES, FLAG_OVERRIDE, NEIGHBOR_ADVERT, NEIGHBOR_SOLICIT},
};

use super::{Output, Owner, PeerId, Switch, is_host_mac};
use crate::core::{
    addr::Mac,
    rpc::{Method, NdAdvert, NdSolicit},
};

/// Probes of local hosts remembered at most, while their answer may come.
pub const MAX_PROBES: usize = 1024;
/// How long a probe waits for an answer from the overlay (DAD waits 1 s per probe).
pub const PROBE_WINDOW_NS: u64 = 5_000_000_000;

fn is_host6(ip: &Ipv6Addr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback()
}

/// An advertisement to all nodes, from the owner of `target` at `mac`: how an address is
/// defended against duplicate address detection.
fn defence(target: Ipv6Addr, mac: Mac) -> NdAdvert {
    NdAdvert {
        mac,
        ip: target,
        dst_mac: Mac(nd::multicast_mac(&ALL_NODES)),
        dst_ip: ALL_NODES.into(),
        flags: FLAG_OVERRIDE,
    }
}

impl Switch {
    /// Decides what an ND event from the kernel means, at monotonic time `now_ns`.
    pub fn handle_nd(&mut self, now_ns: u64, ev: &NdEvent) -> Vec<Output> {
        self.counters.events += 1;
        let nd = ev.nd();
        let (src, target) = (Ipv6Addr::from(nd.src), Ipv6Addr::from(nd.target));
        let mac = Mac(nd.lladdr.unwrap_or(ev.eth_src));
        if nd.is_dad() && is_host6(&target) && is_host_mac(&ev.eth_src) {
            return self.local_probe(now_ns, Mac(ev.eth_src), target);
        }
        let owner = if nd.kind == NEIGHBOR_SOLICIT { src } else { target };
        if ev.hook != HOOK_TAP_EGRESS
            || (nd.kind != NEIGHBOR_SOLICIT && nd.kind != NEIGHBOR_ADVERT)
            || !is_host6(&owner)
            || !is_host6(&target)
            || !is_host_mac(&mac.0)
        {
            self.counters.unexpected += 1;
            return Vec::new();
        }
        let mut out = self.learn_local(now_ns, owner.into(), mac);
        let method = if nd.kind == NEIGHBOR_ADVERT {
            // It left the bridge through the TAP: for a remote solicitor, or all nodes.
            let (dst_mac, dst_ip) = (Mac(ev.eth_dst), Ipv6Addr::from(nd.dst));
            Method::NdAdvert(NdAdvert { mac, ip: target, dst_mac, dst_ip, flags: nd.flags })
        } else if ev.verdict == VERDICT_ANSWERED || self.local.contains_key(&target.into()) {
            if ev.verdict == VERDICT_ANSWERED {
                self.counters.answered_in_kernel += 1;
                out.push(Output::AnsweredInKernel { ip: target.into(), requester: src.into() });
            } else {
                self.counters.resolved_locally += 1;
            }
            out.extend(self.announce(now_ns, src.into(), mac));
            return out;
        } else {
            Method::NdSolicit(NdSolicit { sender_mac: mac, sender_ip: src, target_ip: target })
        };
        out.extend(self.send_rpc(now_ns, mac, Some(owner.into()), method));
        out
    }

    /// A local host probes for `target` (duplicate address detection). A duplicate on this
    /// bridge is the bridge's hosts' own business; one behind a peer is defended here at once;
    /// and the peers hear the probe, so an owner they know defends itself. The same MAC behind
    /// a peer is no duplicate: the host moved here and probes its address again (its old
    /// host hears the probe and looks whether it left).
    fn local_probe(&mut self, now_ns: u64, prober: Mac, target: Ipv6Addr) -> Vec<Output> {
        self.counters.probes += 1;
        let ip = IpAddr::V6(target);
        let mut out = Vec::new();
        if self.local.contains_key(&ip) || self.peers.is_empty() {
            return out;
        }
        // Within the prober's rate, like every RPC it causes: a flood of probes must not
        // become a flood of defences and log lines.
        if !self.allow_arp(now_ns, prober) {
            self.counters.rpc_limited += 1;
            return out;
        }
        match self.remote.get(&ip).copied() {
            Some(r) if r.mac != prober => {
                self.counters.conflicts += 1;
                let owner = Owner::Remote { mac: r.mac, peer: r.peer };
                out.push(Output::WriteTap(advert_frame(&defence(target, r.mac))));
                out.push(Output::DuplicateAddress { ip, owner, prober, behind: None });
            }
            Some(_) => {}
            None => self.remember_probe(now_ns, ip, prober),
        }
        self.counters.rpc_sent += 1;
        let method =
            Method::NdSolicit(NdSolicit { sender_mac: prober, sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: target });
        out.push(Output::Broadcast(method));
        out
    }

    /// Remembers that local `prober` probed for `ip`, so an answer from a peer is reported.
    fn remember_probe(&mut self, now_ns: u64, ip: IpAddr, prober: Mac) {
        if self.probes.len() >= MAX_PROBES {
            self.probes.retain(|_, (_, t)| now_ns.saturating_sub(*t) < PROBE_WINDOW_NS);
        }
        if self.probes.len() < MAX_PROBES {
            self.probes.insert(ip, (prober, now_ns));
        }
    }

    /// An `nd_solicit` or `nd_advert` from `peer` (`handle_rpc` counted it).
    pub(super) fn handle_nd_rpc(&mut self, now_ns: u64, peer: PeerId, method: &Method) -> Vec<Output> {
        let mut out = Vec::new();
        match *method {
            Method::NdSolicit(s) if s.sender_ip.is_unspecified() => return self.remote_probe(now_ns, peer, s),
            Method::NdSolicit(s)
                if self.accept_claim(now_ns, s.sender_ip.into(), s.sender_mac, peer, method, &mut out) =>
            {
                let (frame, len) = nd::build_solicit(s.sender_mac.0, &s.sender_ip.octets(), &s.target_ip.octets());
                out.push(Output::WriteTap(frame[..len].to_vec()));
            }
            Method::NdAdvert(a) => {
                let ip = IpAddr::V6(a.ip);
                if !self.accept_claim(now_ns, ip, a.mac, peer, method, &mut out) {
                    return out;
                }
                if let Some((prober, t)) = self.probes.remove(&ip)
                    && now_ns.saturating_sub(t) < PROBE_WINDOW_NS
                {
                    self.counters.conflicts += 1;
                    out.push(Output::DuplicateAddress {
                        ip,
                        owner: Owner::Remote { mac: a.mac, peer },
                        prober,
                        behind: None,
                    });
                }
                let for_us = self.local.get(&a.dst_ip.into()).is_some_and(|n| n.mac == a.dst_mac);
                if a.dst_ip.is_multicast() || for_us {
                    out.push(Output::WriteTap(advert_frame(&a)));
                }
            }
            _ => {}
        }
        out
    }

    /// A host behind `peer` probes for an address. A local owner defends it across the
    /// overlay; an address nobody is known to own is asked about on this bridge, where an
    /// owner not heard of yet answers for itself (and its answer crosses back). A prober with
    /// the MAC of a host here is that host, moved (if the bridge no longer has it: the shell
    /// looks, `CheckDeparture`), or a peer posing as it: its probe is never written here.
    fn remote_probe(&mut self, now_ns: u64, peer: PeerId, s: NdSolicit) -> Vec<Output> {
        self.counters.probes += 1;
        let ip = IpAddr::V6(s.target_ip);
        if self.allowed.get(&peer).is_some_and(|a| !a.macs.is_empty() && !a.macs.contains(&s.sender_mac)) {
            self.counters.claims_refused += 1;
            return vec![Output::ClaimRefused { ip, claimed: s.sender_mac, by: peer }];
        }
        if self.is_local_mac(s.sender_mac) {
            let method = Method::NdSolicit(s);
            if !self.own_macs().contains(&s.sender_mac) && self.may_check(now_ns, ip) {
                return vec![Output::CheckDeparture { ip, mac: s.sender_mac, peer, method }];
            }
            self.counters.conflicts += 1;
            return vec![Output::Conflict { ip, owner: Owner::Local(s.sender_mac), claimed: s.sender_mac, by: peer }];
        }
        if let Some(n) = self.local.get(&ip).copied() {
            self.counters.conflicts += 1;
            return vec![
                Output::DuplicateAddress { ip, owner: Owner::Local(n.mac), prober: s.sender_mac, behind: Some(peer) },
                Output::SendTo(peer, Method::NdAdvert(defence(s.target_ip, n.mac))),
            ];
        }
        if self.remote.contains_key(&ip) {
            // Its owner is behind another peer, which heard the probe too.
            return Vec::new();
        }
        let (frame, len) = nd::build_solicit(s.sender_mac.0, &[0; 16], &s.target_ip.octets());
        vec![Output::WriteTap(frame[..len].to_vec())]
    }
}

/// The frame of advertisement `a`.
fn advert_frame(a: &NdAdvert) -> Vec<u8> {
    nd::build_advert(a.dst_mac.0, &a.ip.octets(), &a.dst_ip.octets(), a.mac.0, a.flags).to_vec()
}
