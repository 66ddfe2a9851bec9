//! Names and scratch space: the prefix every lab value names its parts with, its temporary
//! directory, and the sweep of what killed runs left.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{agent::remove_pins, command::cmd, netns::kill_netns_pids};

/// A prefix unique to this process and call: `il<pid>x<n>_`. The closing `_` keeps one prefix
/// from being the start of another (`il7x1_` is not in `il7x10_h`), so cleanup by prefix
/// never touches a neighbour's parts; at most 15 bytes, an interface name's limit.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    static SWEEP: Once = Once::new();
    SWEEP.call_once(sweep_stale);
    format!("il{}x{}_", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// The pid a lab name was made by, if it is one (`il<pid>x<n>_...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("il")?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _) = rest.split_once('_')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// The prefix part of a lab name (`il7x1_h` -> `il7x1_`).
fn prefix_of(name: &str) -> &str {
    name.find('_').map_or(name, |i| &name[..=i])
}

/// Removes what labs of processes that no longer exist left (killed with SIGKILL, they could
/// not drop anything): their namespaces and what runs there, pins, temporary directories.
pub fn sweep_stale() {
    let out = cmd(&["ip", "netns", "list"]);
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for name in names {
        let Some(pid) = owner_pid(&name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_netns_pids(&name);
        let _ = cmd(&["ip", "netns", "del", &name]);
        let prefix = prefix_of(&name);
        remove_pins(&PathBuf::from(format!("/sys/fs/bpf/{prefix}")));
        remove_run_ipop(prefix);
        let _ = fs::remove_dir_all(std::env::temp_dir().join(prefix));
    }
}

/// Removes the entries in /run/ipop (locks, control sockets) named after `prefix`'s pins: what
/// a SIGKILLed agent could not remove.
pub fn remove_run_ipop(prefix: &str) {
    if let Ok(entries) = fs::read_dir("/run/ipop") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// A temporary directory named after a prefix (logs, configs, LXC containers), removed with
/// everything in it on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(prefix);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch { dir }
    }

    /// A path inside it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_short_and_never_the_start_of_another() {
        let (a, b) = (unique_prefix(), unique_prefix());
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_eq!(owner_pid(&format!("{a}h")), Some(std::process::id()));
        assert_eq!(prefix_of(&format!("{a}c1")), a);
        assert!(!"il7x10_h".contains("il7x1_"));
        assert_eq!(owner_pid("ipb5036h0"), None, "names not made by the lab are left alone");
        assert_eq!(owner_pid("il12x_h"), None);
    }
}
