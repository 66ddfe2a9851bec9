//! The kernel's neighbour tables as the running agent holds them: `arp_table` for IPv4 and
//! `nd_table` for IPv6, one entry type, addressed by `IpAddr`.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData, MapError};
use ipop_common::maps::{self as m, ArpEntry, ArpKey, NdKey};

pub struct Neighbours {
    arp: HashMap<MapData, ArpKey, ArpEntry>,
    nd: HashMap<MapData, NdKey, ArpEntry>,
}

impl Neighbours {
    pub fn new(arp: HashMap<MapData, ArpKey, ArpEntry>, nd: HashMap<MapData, NdKey, ArpEntry>) -> Self {
        Self { arp, nd }
    }

    pub fn get(&self, ip: IpAddr) -> Option<ArpEntry> {
        match ip {
            IpAddr::V4(v4) => self.arp.get(&ArpKey { ip: v4.octets() }, 0).ok(),
            IpAddr::V6(v6) => self.nd.get(&NdKey { ip: v6.octets() }, 0).ok(),
        }
    }

    pub fn insert(&mut self, ip: IpAddr, entry: ArpEntry) -> Result<(), MapError> {
        match ip {
            IpAddr::V4(v4) => self.arp.insert(ArpKey { ip: v4.octets() }, entry, 0),
            IpAddr::V6(v6) => self.nd.insert(NdKey { ip: v6.octets() }, entry, 0),
        }
    }

    pub fn remove(&mut self, ip: IpAddr) -> Result<(), MapError> {
        match ip {
            IpAddr::V4(v4) => self.arp.remove(&ArpKey { ip: v4.octets() }),
            IpAddr::V6(v6) => self.nd.remove(&NdKey { ip: v6.octets() }),
        }
    }

    /// Every learned (not static) entry of both tables.
    pub fn learned(&self) -> Vec<(IpAddr, ArpEntry)> {
        let v4 = self.arp.iter().filter_map(Result::ok).map(|(k, e)| (IpAddr::from(k.ip), e));
        let v6 = self.nd.iter().filter_map(Result::ok).map(|(k, e)| (IpAddr::from(k.ip), e));
        v4.chain(v6).filter(|(_, e)| e.flags & m::ENTRY_STATIC == 0).collect()
    }
}
