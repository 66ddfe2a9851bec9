//! The running agent's pinned maps, as the CLI (`arp`, `stats`) reads and writes them.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use ipop_common::maps::{self as m, ArpEntry, ArpKey, Stats};

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

    /// Every entry, sorted by IP.
    pub fn arp_list(&self) -> Result<Vec<(Ipv4Addr, ArpEntry)>> {
        let table = self.arp_table()?;
        let mut out = Vec::new();
        for item in table.iter() {
            let (k, v) = item?;
            out.push((Ipv4Addr::from(k.ip), v));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Adds or replaces a static entry (answered in the kernel, never aged).
    pub fn arp_add(&self, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        let mut table = self.arp_table()?;
        let entry =
            ArpEntry { mac: mac.0, flags: m::ENTRY_STATIC, updated_ns: monotonic_ns(), peer_tag: 0, _reserved: 0 };
        table.insert(ArpKey { ip: ip.octets() }, entry, 0).with_context(|| format!("adding {ip} to the ARP table"))
    }

    /// Removes the entry for `ip`; an error if there is none.
    pub fn arp_del(&self, ip: Ipv4Addr) -> Result<()> {
        let mut table = self.arp_table()?;
        match table.remove(&ArpKey { ip: ip.octets() }) {
            Ok(()) => Ok(()),
            Err(MapError::KeyNotFound) => bail!("{ip} is not in the ARP table"),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                bail!("{ip} is not in the ARP table")
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
pub fn stats_rows(s: &Stats) -> [(&'static str, u64); 7] {
    [
        ("seen", s.seen),
        ("answered", s.answered),
        ("events", s.events),
        ("events_lost", s.events_lost),
        ("malformed", s.malformed),
        ("stale", s.stale),
        ("injected", s.injected),
    ]
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads, so entry ages compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
