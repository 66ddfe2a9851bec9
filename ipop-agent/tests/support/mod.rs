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
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
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
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "system tests need root: run them with `cargo xtask test`"
    );
}

/// A unique prefix for this process and call: "ipt<pid>x<n>".
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "ipt{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
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
            host.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &c,
            ]);
            host.ip(&["link", "set", &port, "master", "lxcbr0", "up"]);
            ok(&[
                "ip",
                "-n",
                &c,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
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
            assert!(
                Instant::now() < deadline,
                "agent not ready after 20 s:\n{text}"
            );
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
            assert!(
                Instant::now() < deadline,
                "agent did not exit after signal {signal}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a device called `name` exists in the host namespace.
    pub fn has_link(&self, name: &str) -> bool {
        cmd(&["ip", "-n", &self.ns, "link", "show", name])
            .status
            .success()
    }

    /// The MAC of eth0 in container `i`.
    pub fn container_mac(&self, i: usize) -> String {
        let out = ok(&[
            "ip",
            "-n",
            &self.containers[i],
            "-j",
            "link",
            "show",
            "eth0",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.agents {
            let _ = child.kill();
            let _ = child.wait();
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
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits up to 5 s for `cond` (the kernel releases a dead process's links asynchronously).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}
