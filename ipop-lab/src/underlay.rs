//! The network between hosts: a namespace with bridge `wanbr`, where servers run. Three kinds:
//! the flat underlay every existing test uses (192.168.77.254/24, no router), the
//! "internet" (203.0.113.254/24, public-style, with a default route, which coturn wants)
//! where NAT routers plug their WAN legs, and a flat IPv6-only one (fd77::fe/64, no IPv4).

use std::{path::PathBuf, process::Output};

use crate::{
    agent::agent_binary,
    command::eventually,
    lab::{Scratch, unique_prefix},
    netns::Netns,
    process::Proc,
};

/// The rendezvous service's address on the flat underlay.
pub const RENDEZVOUS: &str = "192.168.77.254:7000";

pub struct Underlay {
    pub prefix: String,
    pub ns: String,
    /// The network, e.g. "192.168.77" (a /24), or "fd77:" (a /64, IPv6-only).
    pub net: String,
    /// The bridge's address, where servers listen: "<net>.254" (IPv6: "fd77::fe").
    pub addr: String,
    /// Whether hosts get a default route through the bridge's address.
    pub routed: bool,
    netns: Netns,
    scratch: Scratch,
}

impl Underlay {
    /// The flat underlay: bridge wanbr 192.168.77.254/24, hosts 192.168.77.N, no routes.
    pub fn new() -> Underlay {
        Underlay::build("192.168.77", false)
    }

    /// The "internet": bridge wanbr 203.0.113.254/24 with a default route (servers such as
    /// coturn want one), public hosts and NAT routers 203.0.113.N routed through .254.
    pub fn internet() -> Underlay {
        let u = Underlay::build("203.0.113", true);
        u.ip(&["route", "add", "default", "dev", "wanbr"]);
        u
    }

    /// A flat IPv6-only underlay: bridge wanbr fd77::fe/64, hosts fd77::N, no IPv4 at all.
    pub fn ipv6_only() -> Underlay {
        Underlay::build("fd77:", false)
    }

    /// Whether this is the IPv6-only underlay.
    pub fn is_ipv6(&self) -> bool {
        self.net.ends_with(':')
    }

    /// `addr`'s prefix on this network, and the flags its addresses take: IPv6 ones skip
    /// duplicate address detection (nothing may bind a tentative address; the lab makes them
    /// unique).
    fn with_prefix(&self, addr: &str) -> Vec<String> {
        if self.is_ipv6() { vec![format!("{addr}/64"), "nodad".into()] } else { vec![format!("{addr}/24")] }
    }

    /// `host:port` for this network's `addr` (brackets around an IPv6 address).
    pub fn host_port(&self, addr: &str, port: u16) -> String {
        if self.is_ipv6() { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") }
    }

    fn build(net: &str, routed: bool) -> Underlay {
        crate::require_root();
        let prefix = unique_prefix();
        let scratch = Scratch::new(&prefix);
        let netns = Netns::add(&format!("{prefix}w"));
        let u = Underlay {
            ns: netns.name.clone(),
            net: net.to_owned(),
            addr: if net.ends_with(':') { format!("{net}:fe") } else { format!("{net}.254") },
            routed,
            prefix,
            netns,
            scratch,
        };
        u.ip(&["link", "add", "wanbr", "type", "bridge"]);
        let mut add = vec!["addr".to_owned(), "add".to_owned()];
        add.extend(u.with_prefix(&u.addr));
        add.extend(["dev".to_owned(), "wanbr".to_owned()]);
        u.ip(&add.iter().map(String::as_str).collect::<Vec<_>>());
        u.ip(&["link", "set", "wanbr", "up"]);
        u
    }

    /// `ip -n <underlay> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        self.netns.ip(args)
    }

    /// A command in the underlay's namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.netns.exec(args)
    }

    /// Address `n` of this network: "<net>.<n>" (IPv6: "fd77::<n>").
    pub fn addr_of(&self, n: u8) -> String {
        if self.is_ipv6() { format!("{}:{n:x}", self.net) } else { format!("{}.{n}", self.net) }
    }

    /// One more address on the bridge (a second server, a second destination); returns it.
    pub fn add_address(&self, n: u8) -> String {
        let addr = self.addr_of(n);
        let mut args = vec!["addr".to_owned(), "add".to_owned()];
        args.extend(self.with_prefix(&addr));
        args.extend(["dev".to_owned(), "wanbr".to_owned()]);
        self.ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        addr
    }

    /// Plugs namespace `ns` in: a veth with `ifname` there, port `w<n>` on the bridge here,
    /// and address <net>.<n>/24 (plus a default route on the routed kind). Returns the address.
    pub fn plug(&self, ns: &str, ifname: &str, n: u8) -> String {
        let port = format!("w{n}");
        self.ip(&["link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns]);
        self.ip(&["link", "set", &port, "master", "wanbr", "up"]);
        let addr = self.addr_of(n);
        let there = |args: &[&str]| {
            let mut full = vec!["ip", "-n", ns];
            full.extend_from_slice(args);
            crate::ok(&full)
        };
        let mut add = vec!["addr".to_owned(), "add".to_owned()];
        add.extend(self.with_prefix(&addr));
        add.extend(["dev".to_owned(), ifname.to_owned()]);
        there(&add.iter().map(String::as_str).collect::<Vec<_>>());
        there(&["link", "set", ifname, "up"]);
        if self.routed {
            there(&["route", "add", "default", "via", &self.addr]);
        }
        addr
    }

    /// The MTU of the bridge and every port plugged in so far (their peers are the hosts').
    pub fn set_mtu(&self, mtu: u32) {
        let out = self.ip(&["-o", "link", "show", "master", "wanbr"]);
        let ports: Vec<&str> =
            out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n)).collect();
        for port in ports {
            self.ip(&["link", "set", port, "mtu", &mtu.to_string()]);
        }
    }

    /// A path in this underlay's temporary directory, removed with it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.file(name)
    }

    /// Starts a server (any command) in the underlay, its stderr in `<log>` in the temporary
    /// directory; its index.
    pub fn spawn(&mut self, args: &[&str], log: &str) -> usize {
        let log = self.scratch.file(log);
        self.netns.spawn(args, &log)
    }

    pub fn service(&mut self, idx: usize) -> &mut Proc {
        self.netns.service(idx)
    }

    pub fn service_log(&self, idx: usize) -> String {
        std::fs::read_to_string(self.netns.service_log(idx)).unwrap_or_default()
    }

    /// The rendezvous service's address here: "<net>.254:7000" (on the flat underlay,
    /// RENDEZVOUS; on the IPv6 one, "[fd77::fe]:7000").
    pub fn rendezvous(&self) -> String {
        self.host_port(&self.addr, 7000)
    }

    /// Starts `ipop-agent rendezvous` for overlay "ipop" and `secret`; its index.
    pub fn start_rendezvous(&mut self, secret: &str) -> usize {
        self.start_rendezvous_for("ipop", secret)
    }

    /// Starts `ipop-agent rendezvous` for `overlay` and `secret` and waits until it listens.
    pub fn start_rendezvous_for(&mut self, overlay: &str, secret: &str) -> usize {
        self.start_rendezvous_with(&["--overlay", overlay, "--secret", secret])
    }

    /// Starts `ipop-agent rendezvous` with `args` after its listening address (an overlay,
    /// and a secret or `--ca-public-key`) and waits until it listens; its index.
    pub fn start_rendezvous_with(&mut self, args: &[&str]) -> usize {
        self.start_rendezvous_on(7000, args)
    }

    /// `start_rendezvous_with` on another `port` (another overlay's rendezvous).
    pub fn start_rendezvous_on(&mut self, port: u16, args: &[&str]) -> usize {
        let agent = agent_binary();
        let listen = self.host_port(&self.addr, port);
        let mut full = vec![agent.to_str().unwrap(), "rendezvous", "--listen", &listen];
        full.extend_from_slice(args);
        let idx = self.spawn(&full, &format!("rendezvous{}.log", self.netns.services()));
        let probe = format!("exec 3<>/dev/tcp/{}/{port}", self.addr);
        eventually("the rendezvous listens", || self.exec(&["bash", "-c", &probe]).status.success());
        idx
    }

    /// Starts coturn (STUN and TURN on UDP and TCP 3478 at "<net>.254", long-term credentials
    /// `user`/`password`, realm "ipop") and waits until it answers; its index. The routed
    /// internet's default route matters: coturn closes allocations that relay toward unknown
    /// destinations.
    pub fn start_turn(&mut self, user: &str, password: &str) -> usize {
        self.turnserver(user, password, &["--no-tls", "--no-dtls"])
    }

    /// The same, also on TLS 5349 with a certificate for "<net>.254" from a CA made for the
    /// run; its index and the CA's certificate (PEM), for the agents' `turn_ca_file`.
    pub fn start_turn_tls(&mut self, user: &str, password: &str) -> (usize, PathBuf) {
        let (ca, cert, key) = (self.file("turn-ca.pem"), self.file("turn-cert.pem"), self.file("turn-key.pem"));
        crate::tls::issue(&self.addr, &ca, &cert, &key, &self.file("turn-ca-key.pem"));
        let tls = ["--cert", cert.to_str().unwrap(), "--pkey", key.to_str().unwrap(), "--tls-listening-port", "5349"];
        let idx = self.turnserver(user, password, &[&tls[..], &["--no-dtls"]].concat());
        eventually("coturn listens on TLS 5349", || !self.exec(&["ss", "-Htln", "sport = :5349"]).stdout.is_empty());
        (idx, ca)
    }

    fn turnserver(&mut self, user: &str, password: &str, extra: &[&str]) -> usize {
        let (pid, log) = (self.file("turnserver.pid"), self.file("turnserver.log"));
        let (credentials, addr) = (format!("{user}:{password}"), self.addr.clone());
        let mut args = vec![
            "turnserver",
            "--listening-ip",
            &addr,
            "--relay-ip",
            &addr,
            "--listening-port",
            "3478",
            "--lt-cred-mech",
            "--user",
            &credentials,
            "--realm",
            "ipop",
            "--no-cli",
            "--pidfile",
            pid.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "--simple-log",
        ];
        args.extend_from_slice(extra);
        let idx = self.spawn(&args, &format!("turnserver{}.err", self.netns.services()));
        let listening = || !self.exec(&["ss", "-Huln", "sport = :3478"]).stdout.is_empty();
        eventually("coturn listens on UDP 3478", listening);
        idx
    }

    /// Counts, from now on, the TURN messages that reach the server over UDP by kind: Send
    /// indications (type 0x0016) and ChannelData (first two bits 01), with nftables counters.
    pub fn count_turn_messages(&self) {
        let rules = "table inet ipopturn {\n  counter send_indications {}\n  counter channel_data {}\n  \
                     chain input {\n    type filter hook input priority filter; policy accept;\n    \
                     udp dport 3478 @th,64,16 0x0016 counter name send_indications\n    \
                     udp dport 3478 @th,64,2 1 counter name channel_data\n  }\n}\n";
        self.netns.nft(rules, &self.file("turn-counters.nft"));
    }

    /// (Send indications, ChannelData messages) counted since `count_turn_messages`.
    pub fn turn_messages(&self) -> (u64, u64) {
        let packets = |name: &str| {
            let out = self.exec(&["nft", "list", "counter", "inet", "ipopturn", name]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let n = text.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok());
            n.unwrap_or_else(|| panic!("no counter {name}: {text}"))
        };
        (packets("send_indications"), packets("channel_data"))
    }

    /// The STUN and TURN urls of the server `start_turn` runs.
    pub fn ice_urls(&self, user: &str, password: &str) -> (String, String) {
        let server = self.host_port(&self.addr, 3478);
        (format!("stun:{server}"), format!("turn:{user}:{password}@{server}?transport=udp"))
    }

    /// Its TURN urls over TCP and, with `start_turn_tls`, TLS.
    pub fn turn_stream_urls(&self, user: &str, password: &str) -> (String, String) {
        let (plain, tls) = (self.host_port(&self.addr, 3478), self.host_port(&self.addr, 5349));
        (format!("turn:{user}:{password}@{plain}?transport=tcp"), format!("turns:{user}:{password}@{tls}"))
    }

    /// Stops service `idx` (SIGTERM, then SIGKILL).
    pub fn stop_service(&mut self, idx: usize) {
        self.netns.service(idx).stop();
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay::new()
    }
}
