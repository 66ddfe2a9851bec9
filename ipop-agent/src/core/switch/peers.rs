//! Links up and down, entries a crashed agent left (orphans), and ageing.

use std::net::IpAddr;

use super::{Orphan, Output, PeerId, Remote, SOURCE_IDLE_NS, Switch};
use crate::core::rpc::{HostAnnounce, Method};

/// Local hosts announced to a link that comes up, at most: one notification each, and a link
/// queues 4096 (the rest are still found by ARP, with a round trip).
pub const MAX_ANNOUNCED_AT_LINK_UP: usize = 1024;

impl Switch {
    /// A link to `peer` is up: it receives broadcasts from now on. A link just come up gets
    /// every local host announced (the bridge's own addresses aside: every host has them), so
    /// its kernel answers the first ARP for any of them.
    pub fn peer_up(&mut self, peer: PeerId) -> Vec<Output> {
        if !self.peers.insert(peer) {
            return Vec::new();
        }
        // The most recently heard first, at most a link's queue's worth at once.
        let own = self.own_macs();
        let mut hosts: Vec<(&IpAddr, &super::Neighbour)> =
            self.local.iter().filter(|(_, n)| !n.permanent && !own.contains(&n.mac)).collect();
        hosts.sort_by_key(|(_, n)| std::cmp::Reverse(n.seen_ns));
        let announce = |(ip, n): (&IpAddr, &super::Neighbour)| {
            Output::SendTo(peer, Method::HostAnnounce(HostAnnounce { mac: n.mac, ip: *ip }))
        };
        let out: Vec<Output> = hosts.into_iter().take(MAX_ANNOUNCED_AT_LINK_UP).map(announce).collect();
        self.counters.announced += out.len() as u64;
        out
    }

    /// Takes over the learned entries a previous agent left in `arp_table` (the shell read
    /// them at start). They stay answered in the kernel until `now_ns + grace_ns`, by which
    /// time their peer's link must be up (`adopt`) or they are withdrawn (`expire`). An
    /// entry for a local IP is withdrawn at once: a local host always wins.
    pub fn restore(
        &mut self,
        now_ns: u64,
        grace_ns: u64,
        entries: impl IntoIterator<Item = (IpAddr, Orphan)>,
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
        let ips: Vec<IpAddr> = self.orphans.iter().filter(|(_, o)| o.tag == tag).map(|(ip, _)| *ip).collect();
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
        let mut ips: Vec<IpAddr> = self.remote.iter().filter(|(_, r)| gone(r)).map(|(ip, _)| *ip).collect();
        ips.sort();
        for ip in &ips {
            self.remote.remove(ip);
        }
        ips.into_iter().map(|ip| Output::ArpRemove { ip }).collect()
    }

    /// Forgets what was not refreshed within the maximum age; returns the kernel entries to
    /// remove. Local hosts go quietly; the bridge's own addresses stay.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Output> {
        let max_age = self.max_age_ns;
        let old = |t: u64| now_ns.saturating_sub(t) > max_age;
        self.local.retain(|_, n| n.permanent || !old(n.seen_ns));
        self.sources.retain(|_, b| !b.idle_since(now_ns, SOURCE_IDLE_NS));
        self.macs.retain(|_, (_, t)| !old(*t));
        self.probes.retain(|_, (_, t)| now_ns.saturating_sub(*t) < super::nd::PROBE_WINDOW_NS);
        self.departure_checks.clear();
        let mut out = self.forget_remote(|r| old(r.updated_ns));
        if now_ns >= self.orphans_until_ns && !self.orphans.is_empty() {
            let mut ips: Vec<IpAddr> = self.orphans.drain().map(|(ip, _)| ip).collect();
            ips.sort();
            out.extend(ips.into_iter().map(|ip| Output::ArpRemove { ip }));
        }
        out
    }
}
