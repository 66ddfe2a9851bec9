//! Idempotent installation of everything the build, the agent and the tests need.
//! Each step checks first and does nothing when its part is already there.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages: eBPF inspection, namespaces and veth, the tools the tests drive, conntrack
/// (the lab's NAT routers: list and flush mappings), lxc with busybox-static (the lab's
/// real LXC containers, from the busybox template), coturn (STUN and TURN), prosody (with
/// lua-unbound, its resolver) and ejabberd (the XMPP servers of the signaling tests), and
/// openssl (the lab's certificates for TURN over TLS and XMPP), prometheus (its promtool checks
/// the agent's metrics) and curl (scrapes them), chromium and chromium-driver (the topology
/// page's test drives a headless browser through WebDriver), with a font to draw text, and
/// binutils (cargo-deb strips the packaged binary), systemd (`systemd-analyze verify` checks
/// the packaged unit; nothing here runs systemd).
const PACKAGES: &[&str] = &[
    "bpftool",
    "iproute2",
    "iputils-ping",
    "arping",
    "iperf3",
    "tcpdump",
    "util-linux",
    "nftables",
    "conntrack",
    "lxc",
    "busybox-static",
    "coturn",
    "prosody",
    "lua-unbound",
    "ejabberd",
    "openssl",
    "prometheus",
    "curl",
    "systemd",
    "chromium",
    "chromium-driver",
    "fonts-dejavu-core",
    "binutils",
];
const CARGO_DEB_VERSION: &str = "3";
const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13";

pub fn all() -> Result<()> {
    packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    tun_mode()?;
    bpffs()
}

/// /dev/net/tun 0666, as udev's default rules make it (`KERNEL=="tun", MODE="0666"`): opening
/// it grants nothing without CAP_NET_ADMIN, and an agent run as its own user must open it.
/// Machines without udev (containers) often leave it 0600.
fn tun_mode() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tun = Path::new("/dev/net/tun");
    let mode = std::fs::metadata(tun).context("/dev/net/tun: this kernel has no TUN/TAP")?.permissions().mode();
    if mode & 0o777 == 0o666 {
        return Ok(());
    }
    eprintln!("xtask setup: /dev/net/tun to mode 0666, as udev sets it");
    std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666)).context("chmod /dev/net/tun")
}

/// cargo-deb: `cargo xtask deb` builds the package with it, and its test installs it.
fn cargo_deb() -> Result<()> {
    if quiet(Command::new("cargo").args(["deb", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-deb");
    run(Command::new("cargo")
        .args(["install", "cargo-deb", "--locked", "--version"])
        .arg(format!("^{CARGO_DEB_VERSION}")))
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// What only the benchmarks need: tinc 1.0 to compare with, python3 for the ARP flood.
pub fn bench_packages() -> Result<()> {
    install(&["tinc", "python3"])
}

/// cargo-fuzz, for `cargo xtask fuzz` only.
pub fn cargo_fuzz() -> Result<()> {
    if quiet(Command::new("cargo").args(["+nightly", "fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask setup: installing cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn packages() -> Result<()> {
    install(PACKAGES)
}

fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> =
        packages.iter().copied().filter(|p| !quiet(Command::new("dpkg").args(["-s", p]))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .context("running rustup (is the nightly toolchain installed?)")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to the {NIGHTLY} toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// bpf-linker links against the nightly toolchain's own LLVM, found through LLVM_PREFIX.
fn bpf_linker() -> Result<()> {
    let version = Command::new("rustup").args(["run", NIGHTLY, "bpf-linker", "--version"]).output();
    if let Ok(out) = version
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(&format!("bpf-linker {BPF_LINKER_VERSION}"))
    {
        return Ok(());
    }
    let sysroot = Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8(sysroot.stdout)?.trim());
    let llvm = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let major = llvm
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let prefix = crate::root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {major} ({})", llvm.display());
    run(Command::new("cargo")
        .args([&format!("+{NIGHTLY}"), "install", "bpf-linker", "--locked", "--version"])
        .arg(format!("~{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    }) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        bail!("/sys/fs/bpf does not exist: this kernel has no BPF filesystem support");
    }
    eprintln!("xtask setup: mounting bpffs on /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
