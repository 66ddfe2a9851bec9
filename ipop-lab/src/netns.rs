//! One network namespace and the services started in it; on drop the services are stopped,
//! anything else still running there is killed, and the namespace is deleted.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::{
    command::{cmd, ok},
    process::Proc,
};

pub struct Netns {
    pub name: String,
    services: Vec<Proc>,
    /// Environment for every command started here with `nsenter` or `spawn`.
    env: Vec<(String, String)>,
}

impl Netns {
    /// Creates namespace `name` with loopback up. Panics if it cannot; then nothing was made.
    pub fn add(name: &str) -> Netns {
        ok(&["ip", "netns", "add", name]);
        let ns = Netns { name: name.to_owned(), services: Vec::new(), env: Vec::new() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        ok(&full)
    }

    /// Sets `key` in the environment of what `nsenter` and `spawn` start here.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// Moves the calling thread (only it) into this namespace: the sockets it opens from now
    /// on live here. For a test's client of a server in the namespace (a WebDriver session).
    pub fn enter_this_thread(&self) {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on an fd we own; it changes only this thread's network namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
    }

    /// A command in the namespace, network only (bpffs stays the machine's).
    pub fn nsenter(&self, args: &[&str]) -> Output {
        let net = format!("--net=/run/netns/{}", self.name);
        Command::new("nsenter")
            .arg(net)
            .args(args)
            .envs(self.env())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.name))
    }

    /// A command under `ip netns exec` (its own /sys, so sysfs shows the namespace's devices).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        cmd(&full)
    }

    /// Loads an nftables ruleset in the namespace, through `file` (nft reads multi-line
    /// rulesets there).
    pub fn nft(&self, rules: &str, file: &Path) {
        std::fs::write(file, rules).unwrap();
        let out = self.exec(&["nft", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "nft in {}: {}\n{rules}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// `sysctl -w key=value` in the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = self.exec(&["sh", "-c", &format!("echo {value} > {path}")]);
        assert!(out.status.success(), "sysctl {key} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Starts `args` as a child of the caller (not a service of this namespace), with this
    /// namespace's environment.
    pub fn start(&self, args: &[&str], log: &Path) -> Proc {
        Proc::spawn(&self.name, args, &self.env(), log)
    }

    /// Starts a service (`args`, stderr into `log`); its index.
    pub fn spawn(&mut self, args: &[&str], log: &Path) -> usize {
        self.services.push(Proc::spawn(&self.name, args, &self.env(), log));
        self.services.len() - 1
    }

    pub fn service(&mut self, idx: usize) -> &mut Proc {
        &mut self.services[idx]
    }

    /// How many services were started here.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    pub fn service_log(&self, idx: usize) -> PathBuf {
        self.services[idx].log.clone()
    }

    /// Stops every service: SIGTERM to all at once (they clean up in parallel), then each is
    /// waited for, and SIGKILLed after 5 s.
    pub fn stop_services(&mut self) {
        for s in &mut self.services {
            s.signal(libc::SIGTERM);
        }
        for s in &mut self.services {
            s.stop();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_services();
        self.services.clear();
        kill_netns_pids(&self.name);
        let _ = cmd(&["ip", "netns", "del", &self.name]);
    }
}

/// SIGTERM, then SIGKILL after 2 s, to every process in namespace `ns` that is not the lab's
/// child (daemons such as `iperf3 -D`, LXC's monitor).
pub fn kill_netns_pids(ns: &str) {
    let pids = || -> Vec<i32> {
        let out = cmd(&["ip", "netns", "pids", ns]);
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    let first = pids();
    if first.is_empty() {
        return;
    }
    for &pid in &first {
        // SAFETY: kill(2) with a pid and a signal; at worst the process is gone (ESRCH).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for pid in pids() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}
