//! The switch's outputs carried out: RPC broadcasts, frames into the TAP, the kernel's ARP
//! table, and what is logged.

use std::net::IpAddr;

use ipop_common::maps::{self as m, ArpEntry};
use tracing::{debug, info, warn};

use crate::{
    agent::shell::Shell,
    core::{
        addr::Mac,
        rpc,
        switch::{Departure, Output, Owner, PeerId},
        wire::Inner,
    },
    kernel::maps::monotonic_ns,
};

/// Departure checks waiting for the loop, at most.
const MAX_DEPARTURES: usize = 64;

impl Shell {
    /// Carries out the switch's outputs, in order.
    pub fn apply(&mut self, outputs: Vec<Output>) {
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
                Output::SendTo(peer, method) => {
                    if let Some(p) = self.peers.as_mut() {
                        p.send(peer, Inner::Rpc, rpc::encode(&method));
                    }
                }
                Output::WriteTap(frame) => self.write_tap(&frame),
                Output::ArpInstall { ip, mac, peer, router } => self.install(ip, mac, peer, router),
                Output::ArpRemove { ip } => self.remove(ip),
                Output::LocalOverridesRemote { ip, local, remote, peer } => {
                    let peer = self.peers.as_ref().map(|p| p.name(peer).to_owned()).unwrap_or_default();
                    self.conflicts.record(ip, remote, &peer);
                    warn!(%ip, %local, %remote, %peer, "IP conflict: a local host has an IP a peer claimed; the local host wins");
                }
                Output::ClaimRefused { ip, claimed, by } => {
                    let peers = self.peers.as_ref();
                    let name = peers.map(|p| p.name(by).to_owned()).unwrap_or_default();
                    self.conflicts.record(ip, claimed, &name);
                    let cert = peers.and_then(|p| p.certificate(by));
                    let (serial, ips) = cert.map(|c| (c.serial.clone(), format!("{:?}", c.ips))).unwrap_or_default();
                    warn!(%ip, %claimed, peer = %name, certificate = %serial, allowed = %ips, "claim refused: outside the addresses its certificate allows");
                }
                Output::CheckDeparture { ip, mac, peer, method } => {
                    // Bounded: a flood of claims waits for the loop, never grows memory.
                    if self.departures.len() < MAX_DEPARTURES {
                        self.departures.push(Departure { ip, mac, peer, method });
                    }
                }
                Output::HostMoved { ip, mac, to } => {
                    let to = match (to, self.peers.as_ref()) {
                        (Some(peer), Some(p)) => format!("behind {}", p.name(peer)),
                        _ => "to this bridge".to_owned(),
                    };
                    info!(%ip, %mac, "host moved {to}");
                }
                Output::DuplicateAddress { ip, owner, prober, behind } => self.duplicate(ip, owner, prober, behind),
                Output::Conflict { ip, owner, claimed, by } => {
                    let by = self.peers.as_ref().map(|p| p.name(by).to_owned()).unwrap_or_default();
                    self.conflicts.record(ip, claimed, &by);
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

    /// Duplicate address detection found `ip` taken across the overlay: reported on both
    /// sides (the prober's and the owner's).
    fn duplicate(&mut self, ip: IpAddr, owner: Owner, prober: Mac, behind: Option<PeerId>) {
        let name = |peer: PeerId| self.peers.as_ref().map(|p| p.name(peer).to_owned()).unwrap_or_default();
        let by = behind.map(name).unwrap_or_else(|| "this bridge".to_owned());
        let owner = match owner {
            Owner::Local(mac) => format!("local host {mac}"),
            Owner::Remote { mac, peer } => format!("{mac} behind {}", name(peer)),
        };
        // Said once per address and prober's place (counted every time): a peer repeating a
        // probe must not flood the log.
        if self.conflicts.record(ip, prober, &by) {
            warn!(%ip, %prober, at = %by, %owner, "duplicate address: a host probed for an address that is taken; defended for its owner");
        }
    }

    /// A learned entry; an operator's static entry for the same IP stays. The router flag is
    /// set or cleared when an advertisement said, else kept (for the same MAC).
    fn install(&mut self, ip: IpAddr, mac: Mac, peer: PeerId, router: Option<bool>) {
        let old = self.tables.get(ip);
        if old.is_some_and(|e| e.flags & m::ENTRY_STATIC != 0) {
            return;
        }
        let was_router = old.is_some_and(|e| e.mac == mac.0 && e.flags & m::ENTRY_ROUTER != 0);
        let flags = if router.unwrap_or(was_router) { m::ENTRY_ROUTER } else { 0 };
        let peer_tag = self.peers.as_ref().map_or(0, |p| p.tag(peer));
        let entry = ArpEntry { mac: mac.0, flags, updated_ns: monotonic_ns(), peer_tag, _reserved: 0 };
        if let Err(e) = self.tables.insert(ip, entry) {
            warn!(%ip, "could not install in the kernel's neighbour table: {e}");
        }
    }

    fn remove(&mut self, ip: IpAddr) {
        if self.tables.get(ip).is_some_and(|e| e.flags & m::ENTRY_STATIC == 0) {
            let _ = self.tables.remove(ip);
        }
    }
}
