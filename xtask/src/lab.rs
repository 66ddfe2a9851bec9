//! A lab of hosts in network namespaces, for the demo and the benchmarks: an underlay
//! namespace with bridge `wanbr` (192.168.77.254/24), hosts plugged into it (192.168.77.<i+1>)
//! with bridge lxcbr0 (10.0.3.1/24) and containers on veth pairs. Everything it makes
//! (namespaces, processes, files, pins) is removed on drop, also when a step fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub const UNDERLAY_IP: &str = "192.168.77.254";

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits up to `secs` for `cond`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond()? {
        if Instant::now() > deadline {
            bail!("{what}: not within {secs} s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until every agent (by pin directory) reports a link up.
pub fn wait_links_up(agent: &str, pins: &[String]) -> Result<()> {
    for pin in pins {
        wait_for("the agents' links", 30, || {
            let out = Command::new(agent).args(["status", "--pin-dir", pin]).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).contains("\"up\": true"))
        })?;
    }
    Ok(())
}

pub struct Host {
    pub ns: String,
    pub underlay_ip: String,
    pub containers: Vec<String>,
}

pub struct Lab {
    pub prefix: String,
    pub underlay: String,
    pub pin_root: PathBuf,
    namespaces: Vec<String>,
    files: Vec<PathBuf>,
    processes: Vec<Child>,
}

impl Lab {
    /// An empty lab with its underlay.
    pub fn new(tag: &str) -> Result<Lab> {
        let prefix = format!("{tag}{}", std::process::id());
        let mut lab = Lab {
            underlay: format!("{prefix}w"),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            prefix,
            namespaces: Vec::new(),
            files: Vec::new(),
            processes: Vec::new(),
        };
        let w = lab.underlay.clone();
        sh(&["ip", "netns", "add", &w])?;
        lab.namespaces.push(w.clone());
        sh(&["ip", "-n", &w, "link", "add", "wanbr", "type", "bridge"])?;
        sh(&["ip", "-n", &w, "addr", "add", &format!("{UNDERLAY_IP}/24"), "dev", "wanbr"])?;
        sh(&["ip", "-n", &w, "link", "set", "wanbr", "up"])?;
        sh(&["ip", "-n", &w, "link", "set", "lo", "up"])?;
        Ok(lab)
    }

    /// Host `i` on the underlay, with bridge lxcbr0 and a container per address.
    pub fn add_host(&mut self, i: usize, container_ips: &[&str]) -> Result<Host> {
        let h = format!("{}h{i}", self.prefix);
        let w = self.underlay.clone();
        sh(&["ip", "netns", "add", &h])?;
        self.namespaces.push(h.clone());
        let port = format!("w{i}");
        sh(&["ip", "-n", &w, "link", "add", &port, "type", "veth", "peer", "name", "wan0", "netns", &h])?;
        sh(&["ip", "-n", &w, "link", "set", &port, "master", "wanbr", "up"])?;
        let underlay_ip = format!("192.168.77.{}", i + 1);
        sh(&["ip", "-n", &h, "addr", "add", &format!("{underlay_ip}/24"), "dev", "wan0"])?;
        sh(&["ip", "-n", &h, "link", "set", "wan0", "up"])?;
        sh(&["ip", "-n", &h, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &h, "link", "add", "lxcbr0", "type", "bridge"])?;
        sh(&["ip", "-n", &h, "addr", "add", "10.0.3.1/24", "dev", "lxcbr0"])?;
        sh(&["ip", "-n", &h, "link", "set", "lxcbr0", "up"])?;
        let mut containers = Vec::new();
        for (j, ip) in container_ips.iter().enumerate() {
            let c = format!("{h}c{j}");
            sh(&["ip", "netns", "add", &c])?;
            self.namespaces.push(c.clone());
            let veth = format!("veth{j}");
            sh(&["ip", "-n", &h, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &c])?;
            sh(&["ip", "-n", &h, "link", "set", &veth, "master", "lxcbr0", "up"])?;
            sh(&["ip", "-n", &c, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &c, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &c, "link", "set", "lo", "up"])?;
            containers.push(c);
        }
        Ok(Host { ns: h, underlay_ip, containers })
    }

    /// A file the lab removes at the end.
    pub fn file(&mut self, name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}-{name}", self.prefix));
        self.files.push(path.clone());
        path
    }

    /// Starts `args` in namespace `ns` (network only, so bpffs stays the machine's), its
    /// stderr in the lab file `log`; returns its index.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &str) -> Result<usize> {
        let log = self.file(log);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {args:?}"))?;
        self.processes.push(child);
        Ok(self.processes.len() - 1)
    }

    pub fn pid(&self, idx: usize) -> u32 {
        self.processes[idx].id()
    }

    /// SIGINT, then SIGKILL after 5 s.
    pub fn stop(&mut self, idx: usize) {
        stop(&mut self.processes[idx]);
    }
}

fn stop(p: &mut Child) {
    if let Ok(None) = p.try_wait() {
        // SAFETY: signalling our own child; SIGINT lets agents clean up.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(p.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = p.kill();
    let _ = p.wait();
}

fn remove_tree(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir(root);
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.processes {
            stop(p);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        remove_tree(&self.pin_root);
        for f in &self.files {
            if f.is_dir() {
                let _ = fs::remove_dir_all(f);
            } else {
                let _ = fs::remove_file(f);
            }
        }
    }
}
