//! One host: namespace `<prefix>h` with bridge lxcbr0 (10.0.3.1/24, as LXC sets it up),
//! containers on veth pairs (namespaces `<prefix>c<i>`, eth0 at the given addresses), real LXC
//! containers if asked, a pin root under /sys/fs/bpf, and the agents it runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use crate::{
    agent::{agent_binary, remove_pins, status},
    command::{cmd, ok, require_root},
    lab::{Scratch, remove_run_ipop, unique_prefix},
    lxc::Lxc,
    nat::Router,
    netns::Netns,
    process::Proc,
    underlay::{RENDEZVOUS, Underlay},
    xmpp::{DOMAIN, ROOM},
};

pub struct Host {
    pub prefix: String,
    pub ns: String,
    /// The veth containers' namespaces.
    pub containers: Vec<String>,
    pub pin_root: PathBuf,
    agents: Vec<Proc>,
    lxc: Vec<Lxc>,
    container_ns: Vec<Netns>,
    netns: Netns,
    scratch: Scratch,
    /// What agents are started under (`setpriv ...`), if not as root.
    wrapper: Vec<String>,
}

impl Host {
    /// A host with one veth container per address in `container_ips`.
    pub fn new(container_ips: &[&str]) -> Host {
        require_root();
        let prefix = unique_prefix();
        let scratch = Scratch::new(&prefix);
        let mut netns = Netns::add(&format!("{prefix}h"));
        // The node key of every agent run here lives with the host, never in the machine's
        // /var/lib/ipop: a restarted agent keeps it, and hosts never share one.
        netns.set_env("IPOP_STATE_DIR", scratch.file("state").to_str().unwrap());
        let mut host = Host {
            ns: netns.name.clone(),
            containers: Vec::new(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            prefix,
            agents: Vec::new(),
            lxc: Vec::new(),
            container_ns: Vec::new(),
            netns,
            scratch,
            wrapper: Vec::new(),
        };
        host.ip(&["link", "add", "lxcbr0", "type", "bridge"]);
        host.ip(&["addr", "add", "10.0.3.1/24", "dev", "lxcbr0"]);
        host.ip(&["link", "set", "lxcbr0", "up"]);
        for addr in container_ips {
            host.add_container(addr);
        }
        host
    }

    /// One more veth container, eth0 at `addr`/24 on lxcbr0; its index.
    pub fn add_container(&mut self, addr: &str) -> usize {
        self.add_container_on("lxcbr0", addr)
    }

    /// One more veth container on lxcbr0 with eth0's MAC set to `mac` (a container migrated
    /// from another host keeps its MAC); its index.
    pub fn add_container_with_mac(&mut self, addr: &str, mac: &str) -> usize {
        let i = self.add_container_on("lxcbr0", addr);
        let c = &self.container_ns[i];
        c.ip(&["link", "set", "eth0", "down"]);
        c.ip(&["link", "set", "eth0", "address", mac]);
        c.ip(&["link", "set", "eth0", "up"]);
        i
    }

    /// Takes container `i` off the bridge (its veth pair deleted), as a container leaves a
    /// host; its namespace stays, empty, until the host is dropped. Indices do not change.
    pub fn remove_container(&mut self, i: usize) {
        self.ip(&["link", "del", &format!("veth{i}")]);
    }

    /// Another bridge, without an address (a second overlay's, beside lxcbr0).
    pub fn add_bridge(&self, name: &str) {
        self.ip(&["link", "add", name, "type", "bridge"]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// One more veth container, eth0 at `addr`/24 on `bridge`; its index.
    pub fn add_container_on(&mut self, bridge: &str, addr: &str) -> usize {
        let i = self.containers.len();
        let c = Netns::add(&format!("{}c{i}", self.prefix));
        let port = format!("veth{i}");
        self.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &c.name]);
        self.ip(&["link", "set", &port, "master", bridge, "up"]);
        c.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        c.ip(&["link", "set", "eth0", "up"]);
        self.containers.push(c.name.clone());
        self.container_ns.push(c);
        i
    }

    /// `ip -n <host ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        self.netns.ip(args)
    }

    /// Moves the calling thread into the host namespace (`Netns::enter_this_thread`).
    pub fn enter_this_thread(&self) {
        self.netns.enter_this_thread()
    }

    /// A command inside the host namespace (network only: bpffs stays the machine's).
    pub fn in_ns(&self, args: &[&str]) -> Output {
        self.netns.nsenter(args)
    }

    /// A command inside veth container `i`.
    pub fn in_container(&self, i: usize, args: &[&str]) -> Output {
        self.container_ns[i].exec(args)
    }

    /// Plugs this host into `underlay` with address <net>.`n`/24 on `wan0`; returns it.
    pub fn join_underlay(&self, underlay: &Underlay, n: u8) -> String {
        underlay.plug(&self.ns, "wan0", n)
    }

    /// Puts this host behind NAT `router`: `wan0` on the router's LAN, default route through
    /// it; returns the host's LAN address.
    pub fn behind(&self, router: &Router) -> String {
        router.plug_lan(&self.ns, "wan0")
    }

    /// `sysctl -w key=value` inside the host namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.netns.sysctl(key, value);
    }

    /// No IPv6 in the host namespace and its containers: their own IPv6 start (duplicate
    /// address detection, router solicitations, MLD reports, for a second or two after an
    /// interface comes up) crosses the overlay, and a test or benchmark that counts what the
    /// agents send would count it, whenever it happens to come.
    pub fn ipv6_off(&self) {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        for i in 0..self.containers.len() {
            let out = self.in_container(i, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            assert!(
                out.status.success(),
                "disabling IPv6 in {}: {}",
                self.containers[i],
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn pin_dir(&self, name: &str) -> PathBuf {
        self.pin_root.join(name)
    }

    /// A path in this host's temporary directory, removed with the host.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.file(name)
    }

    /// The agent binary run in the host namespace, to completion.
    pub fn agent(&self, args: &[&str]) -> Output {
        let agent = agent_binary();
        let mut full = vec![agent.to_str().unwrap()];
        full.extend_from_slice(args);
        self.in_ns(&full)
    }

    /// From now on, agents start as `user` (its uid, gid and no other group) holding only
    /// `caps` (e.g. `net_admin`), through `setpriv`: what ipop@.service gives them. The user
    /// gets what the unit makes for it: the state directory, a run directory (`IPOP_RUN_DIR`,
    /// the unit's /run/ipop) and this host's pin root on bpffs.
    pub fn run_agents_as(&mut self, user: &str, caps: &[&str]) {
        let run = self.scratch.file("run");
        for dir in [self.scratch.file("state"), run.clone(), self.pin_root.clone()] {
            fs::create_dir_all(&dir).unwrap();
            ok(&["chown", &format!("{user}:{user}"), dir.to_str().unwrap()]);
            ok(&["chmod", "0700", dir.to_str().unwrap()]);
        }
        self.netns.set_env("IPOP_RUN_DIR", run.to_str().unwrap());
        let caps = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
        self.wrapper = vec![
            "setpriv".into(),
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--clear-groups".into(),
            format!("--inh-caps=-all,{caps}"),
            format!("--ambient-caps=-all,{caps}"),
            format!("--bounding-set=-all,{caps}"),
            "--no-new-privs".into(),
        ];
    }

    /// Starts `ipop-agent run` with `args` in the host namespace and waits until it is ready.
    pub fn start_agent(&mut self, args: &[&str]) -> usize {
        let log = self.log_path(self.agents.len());
        let agent = agent_binary();
        let mut full: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        full.extend_from_slice(&[agent.to_str().unwrap(), "run"]);
        full.extend_from_slice(args);
        self.agents.push(self.netns.start(&full, &log));
        let idx = self.agents.len() - 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.agent_log(idx);
            if text.contains("ipop-agent ready") {
                return idx;
            }
            if let Some(status) = self.agents[idx].try_wait() {
                panic!("agent exited ({status}) before it was ready:\n{text}");
            }
            assert!(Instant::now() < deadline, "agent not ready after 20 s:\n{text}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts an overlay member on lxcbr0: this host's pins, `node` as its node id, the
    /// underlay's rendezvous (`RENDEZVOUS`) and `secret`, then `extra`; waits until it is ready.
    pub fn start_member(&mut self, node: &str, secret: &str, extra: &[&str]) -> usize {
        self.start_member_at(RENDEZVOUS, node, secret, extra)
    }

    /// `start_member` for the rendezvous at `rendezvous` (another underlay's, the internet's).
    pub fn start_member_at(&mut self, rendezvous: &str, node: &str, secret: &str, extra: &[&str]) -> usize {
        let pins = self.pin_dir("lxcbr0");
        let mut args = vec!["--pin-dir", pins.to_str().unwrap(), "--node-id", node];
        args.extend_from_slice(&["--rendezvous", rendezvous, "--secret", secret]);
        args.extend_from_slice(extra);
        self.start_agent(&args)
    }

    /// The `ipop-agent run` options of an overlay member on lxcbr0 that signals through the
    /// XMPP server `server` (`host:port`, certificate chained to `ca`) as `node`@[`DOMAIN`]
    /// with `password` (in a file of this host's, as an operator would keep it), in the lab's
    /// room, with `secret`.
    pub fn xmpp_member_args(&self, server: &str, ca: &Path, node: &str, password: &str, secret: &str) -> Vec<String> {
        let pins = self.pin_dir("lxcbr0");
        let password_file = self.file(&format!("{node}.xmpp-password"));
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let jid = format!("{node}@{DOMAIN}");
        let args = [
            ("--pin-dir", pins.to_str().unwrap()),
            ("--node-id", node),
            ("--secret", secret),
            ("--xmpp-jid", &jid),
            ("--xmpp-password-file", password_file.to_str().unwrap()),
            ("--xmpp-room", ROOM),
            ("--xmpp-server", server),
            ("--xmpp-ca-file", ca.to_str().unwrap()),
        ];
        args.iter().flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect()
    }

    /// Starts `xmpp_member_args`, then `extra`; waits until it is ready.
    pub fn start_xmpp_member(&mut self, server: &str, ca: &Path, node: &str, password: &str, secret: &str) -> usize {
        let args = self.xmpp_member_args(server, ca, node, password, secret);
        self.start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Whether the agent on lxcbr0 has a link up to any peer (its `status`).
    pub fn link_up(&self) -> bool {
        let s = status(self, &self.pin_dir("lxcbr0"));
        s["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["up"] == true))
    }

    pub fn log_path(&self, idx: usize) -> PathBuf {
        self.scratch.file(&format!("agent{idx}.log"))
    }

    pub fn agent_log(&self, idx: usize) -> String {
        fs::read_to_string(self.log_path(idx)).unwrap_or_default()
    }

    pub fn agent_pid(&self, idx: usize) -> u32 {
        self.agents[idx].pid()
    }

    /// Sets `key` in the environment of what starts here from now on (agents, commands).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.netns.set_env(key, value);
    }

    /// Sends `signal` to agent `idx` (e.g. SIGHUP), without waiting.
    pub fn signal_agent(&mut self, idx: usize, signal: i32) {
        self.agents[idx].signal(signal);
    }

    /// Sends `signal` to agent `idx` and waits (up to 10 s) for it to exit; its exit code.
    pub fn stop_agent(&mut self, idx: usize, signal: i32) -> Option<i32> {
        self.agents[idx].signal(signal);
        let status = self.agents[idx].wait_exit(10);
        status.unwrap_or_else(|| panic!("agent did not exit after signal {signal}")).code()
    }

    /// Waits (up to 10 s) for agent `idx` to exit by itself; its exit code.
    pub fn stop_agent_wait(&mut self, idx: usize) -> Option<i32> {
        let status = self.agents[idx].wait_exit(10);
        status.expect("agent did not exit by itself within 10 s").code()
    }

    /// Starts any command in the host namespace (a tinc daemon, a server), its stderr in
    /// `<log>` in the temporary directory; its index.
    pub fn spawn(&mut self, args: &[&str], log: &str) -> usize {
        let log = self.scratch.file(log);
        self.netns.spawn(args, &log)
    }

    pub fn service(&mut self, idx: usize) -> &mut Proc {
        self.netns.service(idx)
    }

    /// Stops service `idx` (SIGTERM, then SIGKILL).
    pub fn stop_service(&mut self, idx: usize) {
        self.netns.service(idx).stop();
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

    /// A real LXC busybox container on lxcbr0 with eth0 at `addr`/24 (see [`Lxc`]); its index.
    pub fn add_lxc(&mut self, addr: &str) -> usize {
        let name = format!("{}l{}", self.prefix, self.lxc.len());
        let lxcpath = self.scratch.file("lxc");
        self.lxc.push(Lxc::start(&self.ns, &lxcpath, &name, addr));
        self.lxc.len() - 1
    }

    /// A command inside LXC container `i` (`lxc-attach`).
    pub fn in_lxc(&self, i: usize, args: &[&str]) -> Output {
        self.lxc[i].attach(args)
    }

    pub fn lxc(&self, i: usize) -> &Lxc {
        &self.lxc[i]
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // SIGTERM to every agent at once, so they remove what they made (locks, socket, TAP,
        // pins) in parallel; dropping each then waits, and SIGKILLs a stuck one. Services
        // (agents started as plain services, daemons) stop before the pins go, too.
        for a in &mut self.agents {
            a.signal(libc::SIGTERM);
        }
        self.agents.clear();
        self.netns.stop_services();
        self.lxc.clear();
        self.container_ns.clear();
        // What a SIGKILLed agent of this host could not remove. The host namespace and the
        // temporary directory go with their fields, after this.
        remove_run_ipop(&self.prefix);
        remove_pins(&self.pin_root);
    }
}
