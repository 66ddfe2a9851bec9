//! The kernel's neighbour table is one for every namespace (1,024 entries by default): a lab
//! of N hosts needs about N x N underlay neighbours, overflows it past ~30 hosts and fails
//! pairs at random. A large lab raises the limits for its run and puts them back after.

use std::fs;

const KEYS: [&str; 3] = ["gc_thresh1", "gc_thresh2", "gc_thresh3"];

fn path(key: &str) -> String {
    format!("/proc/sys/net/ipv4/neigh/default/{key}")
}

/// The limits as they were, restored on drop.
pub struct NeighbourLimits {
    saved: Vec<(String, String)>,
}

impl NeighbourLimits {
    /// Makes room for `entries` neighbours (thresholds entries/4, entries/2, entries), unless
    /// the limits are already that high; says so when it changes them.
    pub fn raise(entries: u64) -> NeighbourLimits {
        let wanted = [entries / 4, entries / 2, entries];
        let mut saved = Vec::new();
        for (key, want) in KEYS.iter().zip(wanted) {
            let now = fs::read_to_string(path(key)).expect("reading the neighbour table's limits");
            if now.trim().parse::<u64>().is_ok_and(|n| n >= want) {
                continue;
            }
            fs::write(path(key), want.to_string()).expect("raising the neighbour table's limits");
            saved.push((key.to_string(), now.trim().to_owned()));
        }
        if !saved.is_empty() {
            eprintln!(
                "lab: raised net.ipv4.neigh.default.gc_thresh1/2/3 to {}/{}/{} for this run (restored after)",
                wanted[0], wanted[1], wanted[2]
            );
        }
        NeighbourLimits { saved }
    }
}

impl Drop for NeighbourLimits {
    fn drop(&mut self) {
        for (key, value) in &self.saved {
            let _ = fs::write(path(key), value);
        }
    }
}
