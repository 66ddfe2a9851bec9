//! Test hosts in network namespaces: a "host" namespace with a bridge `lxcbr0` and
//! "container" namespaces on veth pairs, agents started inside, all removed on drop (even when
//! the test panics). Every name carries a prefix unique to the test run.

#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub const AGENT: &str = env!("CARGO_BIN_EXE_ipop-agent");

/// Runs a command; panics with its output if it cannot be started.
pub fn cmd(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = cmd(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require_root() {
    // SAFETY: no arguments, no side effects.
    assert_eq!(unsafe { libc::geteuid() }, 0, "system tests need root: run them with `cargo xtask test`");
}

/// A unique prefix for this process and call: "ipt<pid>x<n>".
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("ipt{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// One host: namespace `<prefix>h` with bridge lxcbr0 (10.0.3.1/24), containers
/// `<prefix>c<i>` with eth0 at the given addresses, and a pin root under /sys/fs/bpf.
pub struct Host {
    pub prefix: String,
    pub ns: String,
    pub containers: Vec<String>,
    pub pin_root: PathBuf,
    agents: Vec<Child>,
}

impl Host {
    pub fn new(container_ips: &[&str]) -> Host {
        require_root();
        let prefix = unique_prefix();
        let mut host = Host {
            ns: format!("{prefix}h"),
            containers: Vec::new(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            prefix,
            agents: Vec::new(),
        };
        ok(&["ip", "netns", "add", &host.ns]);
        host.ip(&["link", "add", "lxcbr0", "type", "bridge"]);
        host.ip(&["addr", "add", "10.0.3.1/24", "dev", "lxcbr0"]);
        host.ip(&["link", "set", "lxcbr0", "up"]);
        for (i, addr) in container_ips.iter().enumerate() {
            let c = format!("{}c{i}", host.prefix);
            ok(&["ip", "netns", "add", &c]);
            host.containers.push(c.clone());
            let port = format!("veth{i}");
            host.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &c]);
            host.ip(&["link", "set", &port, "master", "lxcbr0", "up"]);
            ok(&["ip", "-n", &c, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ok(&["ip", "-n", &c, "link", "set", "eth0", "up"]);
            ok(&["ip", "-n", &c, "link", "set", "lo", "up"]);
        }
        host
    }

    /// `ip -n <host ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.ns];
        full.extend_from_slice(args);
        ok(&full)
    }

    /// A command inside the host namespace (network only: bpffs stays the machine's).
    pub fn in_ns(&self, args: &[&str]) -> Output {
        let net = format!("--net=/run/netns/{}", self.ns);
        let mut full = vec!["nsenter", &net];
        full.extend_from_slice(args);
        cmd(&full)
    }

    /// A command inside container `i`.
    pub fn in_container(&self, i: usize, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.containers[i]];
        full.extend_from_slice(args);
        cmd(&full)
    }

    /// Plugs this host into `underlay` with address 192.168.77.`n`/24 on `wan0`.
    pub fn join_underlay(&self, underlay: &Underlay, n: u8) -> String {
        let port = format!("w{}", underlay.ports.fetch_add(1, Ordering::SeqCst));
        ok(&[
            "ip",
            "-n",
            &underlay.ns,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "wan0",
            "netns",
            &self.ns,
        ]);
        ok(&["ip", "-n", &underlay.ns, "link", "set", &port, "master", "wanbr", "up"]);
        let addr = format!("192.168.77.{n}");
        self.ip(&["addr", "add", &format!("{addr}/24"), "dev", "wan0"]);
        self.ip(&["link", "set", "wan0", "up"]);
        self.ip(&["link", "set", "lo", "up"]);
        addr
    }

    /// `sysctl -w key=value` inside the host namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = cmd(&["ip", "netns", "exec", &self.ns, "sh", "-c", &format!("echo {value} > {path}")]);
        assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn pin_dir(&self, name: &str) -> PathBuf {
        self.pin_root.join(name)
    }

    /// The agent binary run in the host namespace, to completion.
    pub fn agent(&self, args: &[&str]) -> Output {
        let mut full = vec![AGENT];
        full.extend_from_slice(args);
        self.in_ns(&full)
    }

    /// Starts `ipop-agent run` with `args` in the host namespace and waits until it is ready.
    pub fn start_agent(&mut self, args: &[&str]) -> usize {
        let log = self.log_path(self.agents.len());
        let net = format!("--net=/run/netns/{}", self.ns);
        let child = Command::new("nsenter")
            .arg(&net)
            .arg(AGENT)
            .arg("run")
            .args(args)
            .env("IPOP_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn agent");
        self.agents.push(child);
        let idx = self.agents.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ipop-agent ready") {
                return idx;
            }
            if let Some(status) = self.agents[idx].try_wait().unwrap() {
                panic!("agent exited ({status}) before it was ready:\n{text}");
            }
            assert!(Instant::now() < deadline, "agent not ready after 20 s:\n{text}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_path(&self, idx: usize) -> PathBuf {
        std::env::temp_dir().join(format!("{}-agent{idx}.log", self.prefix))
    }

    pub fn agent_log(&self, idx: usize) -> String {
        fs::read_to_string(self.log_path(idx)).unwrap_or_default()
    }

    pub fn agent_pid(&self, idx: usize) -> u32 {
        self.agents[idx].id()
    }

    /// Sends `signal` to agent `idx` and waits for it to exit; returns its exit code.
    pub fn stop_agent(&mut self, idx: usize, signal: i32) -> Option<i32> {
        let child = &mut self.agents[idx];
        // nsenter execs the agent, so the child's pid is the agent's.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "agent did not exit after signal {signal}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 10 s) for agent `idx` to exit by itself; returns its exit code.
    pub fn stop_agent_wait(&mut self, idx: usize) -> Option<i32> {
        let child = &mut self.agents[idx];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "agent did not exit by itself within 10 s");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a device called `name` exists in the host namespace.
    pub fn has_link(&self, name: &str) -> bool {
        cmd(&["ip", "-n", &self.ns, "link", "show", name]).status.success()
    }

    /// The MACs in the replies `arping -c count` from container `i` gets for `ip`.
    pub fn arping(&self, i: usize, ip: &str, count: u32) -> Vec<String> {
        let out = self.in_container(i, &["arping", "-c", &count.to_string(), "-w", "3", "-I", "eth0", ip]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_owned())
            .collect()
    }

    /// The MAC of eth0 in container `i`.
    pub fn container_mac(&self, i: usize) -> String {
        let out = ok(&["ip", "-n", &self.containers[i], "-j", "link", "show", "eth0"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    }
}

/// The "internet" between hosts: a namespace with bridge `wanbr` (192.168.77.254/24),
/// where the rendezvous service runs.
pub struct Underlay {
    pub ns: String,
    ports: AtomicU32,
    services: Vec<Child>,
}

pub const RENDEZVOUS: &str = "192.168.77.254:7000";

impl Underlay {
    pub fn new() -> Underlay {
        require_root();
        let ns = format!("{}w", unique_prefix());
        ok(&["ip", "netns", "add", &ns]);
        let u = Underlay { ns, ports: AtomicU32::new(0), services: Vec::new() };
        ok(&["ip", "-n", &u.ns, "link", "add", "wanbr", "type", "bridge"]);
        ok(&["ip", "-n", &u.ns, "addr", "add", "192.168.77.254/24", "dev", "wanbr"]);
        ok(&["ip", "-n", &u.ns, "link", "set", "wanbr", "up"]);
        ok(&["ip", "-n", &u.ns, "link", "set", "lo", "up"]);
        u
    }

    /// Starts `ipop-agent rendezvous` on RENDEZVOUS for `secret`; returns its index.
    pub fn start_rendezvous(&mut self, secret: &str) -> usize {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args([AGENT, "rendezvous", "--listen", RENDEZVOUS, "--secret", secret])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rendezvous");
        self.services.push(child);
        // Ready when it accepts connections.
        eventually("the rendezvous listens", || {
            cmd(&["ip", "netns", "exec", &self.ns, "bash", "-c", "exec 3<>/dev/tcp/192.168.77.254/7000"])
                .status
                .success()
        });
        self.services.len() - 1
    }

    pub fn stop_service(&mut self, idx: usize) {
        let _ = self.services[idx].kill();
        let _ = self.services[idx].wait();
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for child in &mut self.services {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = cmd(&["ip", "netns", "del", &self.ns]);
    }
}

/// The agent's own status (peers, link states, switch counters) from its control socket.
pub fn status(host: &Host, pin_dir: &Path) -> serde_json::Value {
    let out = host.agent(&["status", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM first, so the agents remove what they made (locks, socket, TAP, pins).
        for child in &mut self.agents {
            if let Ok(None) = child.try_wait() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.agents {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // What a SIGKILLed agent of this host could not remove.
        if let Ok(entries) = fs::read_dir("/run/ipop") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(&self.prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        for c in &self.containers {
            let _ = cmd(&["ip", "netns", "del", c]);
        }
        let _ = cmd(&["ip", "netns", "del", &self.ns]);
        remove_pins(&self.pin_root);
        for i in 0..self.agents.len() {
            let _ = fs::remove_file(self.log_path(i));
        }
    }
}

/// Removes a pin tree (files are pins, directories are directories).
pub fn remove_pins(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_pins(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(root);
}

/// Ids of the TCX links (bpftool's "type 11") and the programs they hold, as bpftool sees them.
pub fn tcx_links() -> Vec<(u64, u64)> {
    let out = ok(&["bpftool", "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["type"] == 11 || l["type"] == "tcx")
                .map(|l| (l["id"].as_u64().unwrap(), l["prog_id"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The name of loaded program `id`, if it is still loaded.
pub fn prog_name(id: u64) -> Option<String> {
    let out = cmd(&["bpftool", "-j", "prog", "show", "id", &id.to_string()]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["name"].as_str().map(str::to_owned)
}

/// The sum of the agent's in-kernel counters, read through the CLI.
pub fn stats(host: &Host, pin_dir: &Path) -> serde_json::Value {
    let out = host.agent(&["stats", "--json", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "stats failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits up to 5 s for `cond` (the kernel releases a dead process's links asynchronously).
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(5, what, cond);
}

/// Waits up to `secs` seconds for `cond`.
pub fn eventually_within(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}
