//! One agent per bridge and per pin directory, enforced with `flock` on files in the run
//! directory (`/run/ipop`, systemd's `RuntimeDirectory=ipop`; `IPOP_RUN_DIR` elsewhere).
//!
//! A lock dies with its process (even on `kill -9`), so a crashed agent never blocks the next
//! one; the pid written in the file names the holder in the error message.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Where the locks and control sockets live, unless `IPOP_RUN_DIR` says otherwise.
pub const RUN_DIR: &str = "/run/ipop";

/// The run directory: `IPOP_RUN_DIR` if set (an agent run by an unprivileged user outside
/// systemd, which makes /run/ipop for the unit, needs one it owns), else `RUN_DIR`. The CLI
/// reads the same variable to find an agent's socket.
pub fn run_dir() -> PathBuf {
    std::env::var_os("IPOP_RUN_DIR").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| RUN_DIR.into())
}

/// Held locks; released (and their files removed) on drop.
#[derive(Debug)]
pub struct InstanceLock {
    held: Vec<(File, PathBuf)>,
}

/// A pin directory as one file name component (its path with '/' escaped): the agent's
/// lock and control socket are named after it.
pub fn pin_dir_key(pin_dir: &Path) -> String {
    pin_dir.to_string_lossy().chars().map(|c| if c == '/' { '%' } else { c }).collect()
}

/// The lock file that stands for a pin directory.
pub fn pin_lock_name(pin_dir: &Path) -> String {
    format!("pins-{}.lock", pin_dir_key(pin_dir))
}

/// Locks the bridge (by network namespace and ifindex, so that agents in different
/// namespaces do not collide) and the pin directory (bpffs is shared by all namespaces).
pub fn acquire(bridge: &str, bridge_ifindex: u32, pin_dir: &Path) -> Result<InstanceLock> {
    let netns = fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    let dir = run_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating the run directory {}", dir.display()))?;
    let mut lock = InstanceLock { held: Vec::new() };
    let bridge_file = dir.join(format!("bridge-{netns}-{bridge_ifindex}.lock"));
    lock.take(&bridge_file, &format!("bridge {bridge}"))?;
    lock.take(&dir.join(pin_lock_name(pin_dir)), &format!("pin directory {}", pin_dir.display()))?;
    Ok(lock)
}

impl InstanceLock {
    fn take(&mut self, path: &Path, what: &str) -> Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!("another ipop-agent (pid {}) is already running on {what}", pid.trim());
            }
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        self.held.push((file, path.to_owned()));
        Ok(())
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody locks a file that is going away.
        for (_, path) in &self.held {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dirs_map_to_distinct_flat_names() {
        assert_eq!(pin_lock_name(Path::new("/sys/fs/bpf/ipop/lxcbr0")), "pins-%sys%fs%bpf%ipop%lxcbr0.lock");
        assert_ne!(pin_lock_name(Path::new("/a/b")), pin_lock_name(Path::new("/a_b")));
    }
}
