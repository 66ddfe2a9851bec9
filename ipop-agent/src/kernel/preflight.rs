//! Checks made before touching the system, so that a missing privilege or filesystem is a
//! clear message instead of an EPERM halfway through.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// `/sys` itself: what `/sys/fs/bpf` is when the mount namespace has no bpffs there.
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// The capabilities the agent lacks, given the `CapEff` mask of /proc/self/status.
/// CAP_SYS_ADMIN stands in for CAP_BPF, as it does in the kernel.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    missing
}

fn effective_capabilities() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(line.trim(), 16).context("parsing CapEff")
}

/// Fails unless the process may load BPF programs and change network devices.
pub fn check_privileges() -> Result<()> {
    let missing = missing_capabilities(effective_capabilities()?);
    if !missing.is_empty() {
        bail!(
            "ipop-agent needs {} (run it as root, or as its own user with those capabilities, as \
             ipop@.service does): it loads eBPF programs and creates a TAP device",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// Fails unless the nearest existing ancestor of `pin_dir` is on a BPF filesystem.
pub fn check_bpffs(pin_dir: &Path) -> Result<()> {
    let existing = pin_dir.ancestors().find(|p| p.exists()).context("pin directory has no existing ancestor")?;
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-parameter.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", existing.display()));
    }
    if st.f_type as i64 == SYSFS_MAGIC && existing.starts_with("/sys/fs/bpf") {
        bail!(
            "{} is on sysfs, not on bpffs: this mount namespace has its own /sys without bpffs, as under \
             `ip netns exec`, which remounts /sys. Run the agent with only the network namespace entered \
             (`nsenter --net=/run/netns/NAME ipop-agent ...`), or mount bpffs here (`mount -t bpf bpf /sys/fs/bpf`); \
             the CLI finds a running agent's maps the same way",
            existing.display()
        );
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem, so the maps cannot be pinned there: \
             mount it with `mount -t bpf bpf /sys/fs/bpf` (or `cargo xtask setup`), or choose --pin-dir under a bpffs mount",
            existing.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_capabilities(0x000001ffffffffff).is_empty());
    }

    #[test]
    fn an_unprivileged_process_lacks_both() {
        assert_eq!(missing_capabilities(0), vec!["CAP_NET_ADMIN", "CAP_BPF"]);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf() {
        let caps = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN);
        assert!(missing_capabilities(caps).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_NET_ADMIN"]);
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let err = check_bpffs(Path::new("/tmp/ipop-not-bpffs/x")).unwrap_err();
        assert!(err.to_string().contains("not on a BPF filesystem"), "{err}");
    }
}
