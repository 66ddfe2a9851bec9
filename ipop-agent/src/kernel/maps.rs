//! The running agent's pinned maps, as the CLI (`arp`, `nd`, `stats`) reads and writes them.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use ipop_common::maps::{self as m, ArpEntry, ArpKey, NdKey, Stats};

/// Which neighbour table: `arp_table` (IPv4) or `nd_table` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The table's name, and the command that reads it.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("the ARP table", "arp"),
            Family::V6 => ("the ND table", "nd"),
        }
    }
}

use crate::core::addr::Mac;

/// The pinned maps of the agent whose pin directory is `dir`.
pub struct Pinned {
    dir: PathBuf,
}

impl Pinned {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn open(&self, name: &str) -> Result<MapData> {
        let path = self.dir.join(name);
        if !path.exists() {
            bail!(
                "no ipop agent is running here: {} does not exist (start `ipop-agent run`, or name its pins with --pin-dir)",
                path.display()
            );
        }
        MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
    }

    fn arp_table(&self) -> Result<HashMap<MapData, ArpKey, ArpEntry>> {
        let map = Map::from_map_data(self.open(m::ARP_TABLE)?)?;
        Ok(HashMap::try_from(map)?)
    }

    fn nd_table(&self) -> Result<HashMap<MapData, NdKey, ArpEntry>> {
        let map = Map::from_map_data(self.open(m::ND_TABLE)?)?;
        Ok(HashMap::try_from(map)?)
    }

    /// Every entry of one table, sorted by IP.
    pub fn list(&self, family: Family) -> Result<Vec<(IpAddr, ArpEntry)>> {
        let mut out: Vec<(IpAddr, ArpEntry)> = match family {
            Family::V4 => {
                self.arp_table()?.iter().map(|i| i.map(|(k, v)| (k.ip.into(), v))).collect::<Result<_, _>>()?
            }
            Family::V6 => {
                self.nd_table()?.iter().map(|i| i.map(|(k, v)| (k.ip.into(), v))).collect::<Result<_, _>>()?
            }
        };
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Adds or replaces a static entry (answered in the kernel, never aged).
    pub fn add(&self, ip: IpAddr, mac: Mac) -> Result<()> {
        let entry =
            ArpEntry { mac: mac.0, flags: m::ENTRY_STATIC, updated_ns: monotonic_ns(), peer_tag: 0, _reserved: 0 };
        let done = match ip {
            IpAddr::V4(v4) => self.arp_table()?.insert(ArpKey { ip: v4.octets() }, entry, 0),
            IpAddr::V6(v6) => self.nd_table()?.insert(NdKey { ip: v6.octets() }, entry, 0),
        };
        done.with_context(|| format!("adding {ip} to {}", Family::of(ip).names().0))
    }

    /// Removes the entry for `ip`; an error if there is none.
    pub fn del(&self, ip: IpAddr) -> Result<()> {
        let done = match ip {
            IpAddr::V4(v4) => self.arp_table()?.remove(&ArpKey { ip: v4.octets() }),
            IpAddr::V6(v6) => self.nd_table()?.remove(&NdKey { ip: v6.octets() }),
        };
        let table = Family::of(ip).names().0;
        match done {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => bail!("{ip} is not in {table}"),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                bail!("{ip} is not in {table}")
            }
            Err(e) => Err(e).with_context(|| format!("removing {ip}")),
        }
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats> {
        let map = Map::from_map_data(self.open(m::STATS)?)?;
        let array: PerCpuArray<MapData, Stats> = PerCpuArray::try_from(map)?;
        let mut total = Stats::default();
        for cpu in array.get(&0, 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The programs' counters by name, as `stats` and `status` show them.
pub fn stats_rows(s: &Stats) -> [(&'static str, u64); 10] {
    [
        ("seen", s.seen),
        ("answered", s.answered),
        ("events", s.events),
        ("events_lost", s.events_lost),
        ("malformed", s.malformed),
        ("stale", s.stale),
        ("injected", s.injected),
        ("nd_seen", s.nd_seen),
        ("nd_answered", s.nd_answered),
        ("nd_stale", s.nd_stale),
    ]
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads, so entry ages compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
