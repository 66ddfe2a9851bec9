//! The lab itself: what it builds works as a user would check it, and nothing it built
//! outlives it, even when a test fails halfway. Needs root.

use std::{
    collections::BTreeSet,
    fs,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    thread,
};

use ipop_lab::{Host, Nat, Router, Underlay, cmd, ok};

/// The namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    ok(&["ip", "netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Whether process `pid` still runs (a zombie does not count: it has exited).
fn runs(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// What one lab value made, to look for after it is gone.
struct Made {
    prefix: String,
    scratch: PathBuf,
}

#[test]
fn a_lab_dropped_while_a_test_panics_leaves_nothing_behind() {
    let mut made: Vec<Made> = Vec::new();
    let mut daemon = 0;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut internet = Underlay::internet();
        let router = Router::home(&internet, 1, Nat::Cone);
        let mut host = Host::new(&["10.0.3.10", "10.0.3.11"]);
        host.behind(&router);
        internet.spawn(&["sleep", "600"], "server.log");
        host.spawn(&["sleep", "600"], "service.log");
        // A daemon that is not the lab's child, as `iperf3 -D` would be.
        ok(&["ip", "netns", "exec", &host.containers[0], "sh", "-c", "sleep 600 >/dev/null 2>&1 &"]);
        daemon = ok(&["ip", "netns", "pids", &host.containers[0]]).trim().parse().unwrap();
        // What an agent killed with SIGKILL leaves: pins and a /run/ipop entry.
        fs::create_dir_all(host.pin_dir("lxcbr0")).unwrap();
        fs::create_dir_all("/run/ipop").unwrap();
        let sock = format!("/run/ipop/agent-%sys%fs%bpf%{}%lxcbr0.sock", host.prefix);
        fs::write(sock, "").unwrap();
        for (prefix, file) in
            [(&internet.prefix, internet.file("x")), (&router.prefix, PathBuf::new()), (&host.prefix, host.file("x"))]
        {
            assert!(!namespaces_with(prefix).is_empty(), "{prefix}: namespaces made");
            made.push(Made { prefix: prefix.clone(), scratch: file.parent().map(Path::to_owned).unwrap_or_default() });
        }
        assert_eq!(namespaces_with(&host.prefix).len(), 3, "the host and its two containers");
        panic!("a failed assertion in the middle of a test");
    }));
    assert!(result.is_err(), "the closure panicked");
    assert_eq!(made.len(), 3);
    for m in &made {
        assert_eq!(namespaces_with(&m.prefix), Vec::<String>::new(), "no namespace of {} is left", m.prefix);
        assert!(!Path::new(&format!("/sys/fs/bpf/{}", m.prefix)).exists(), "pins of {} removed", m.prefix);
        assert!(m.scratch.as_os_str().is_empty() || !m.scratch.exists(), "{} removed", m.scratch.display());
        let left = fs::read_dir("/run/ipop").into_iter().flatten().flatten();
        assert!(!left.into_iter().any(|e| e.file_name().to_string_lossy().contains(&m.prefix)), "/run/ipop cleaned");
    }
    assert!(daemon > 0 && !runs(daemon), "the container's daemon {daemon} was killed");
}

/// Sends one datagram from local port `port` to each of `to`, from inside namespace `ns`.
fn send_from(ns: &str, port: u16, to: &[String]) {
    let path = format!("/run/netns/{ns}");
    let to = to.to_vec();
    thread::spawn(move || {
        let netns = fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        for addr in to {
            socket.send_to(b"hello", (addr.as_str(), 9)).unwrap();
        }
    })
    .join()
    .unwrap();
}

/// The outside ports `router` gave inside port `port`.
fn outside_ports(router: &Router, port: u16) -> BTreeSet<u16> {
    router.udp_mappings().into_iter().filter(|(inside, _, _)| *inside == port).map(|(_, _, out)| out).collect()
}

#[test]
fn hosts_behind_cone_and_symmetric_nats_reach_the_internet() {
    let internet = Underlay::internet();
    let second = internet.add_address(253);
    let cone = Router::home(&internet, 1, Nat::Cone);
    let symmetric = Router::new(&internet, 2, Nat::Symmetric);
    let a = Host::new(&[]);
    let b = Host::new(&[]);
    assert_eq!(a.behind(&cone), "192.168.1.2");
    b.behind(&symmetric);
    for host in [&a, &b] {
        for to in [&internet.addr, &second] {
            let out = host.in_ns(&["ping", "-c", "1", "-W", "2", to]);
            assert!(out.status.success(), "{} -> {to}: {}", host.ns, String::from_utf8_lossy(&out.stdout));
        }
    }

    // One socket, two destinations: the cone NAT keeps one outside port, the symmetric one
    // gives each destination its own.
    let destinations = [internet.addr.clone(), second.clone()];
    send_from(&a.ns, 4000, &destinations);
    send_from(&b.ns, 4000, &destinations);
    assert_eq!(outside_ports(&cone, 4000).len(), 1, "{:?}", cone.udp_mappings());
    assert_eq!(outside_ports(&symmetric, 4000).len(), 2, "{:?}", symmetric.udp_mappings());

    // The world sees the routers' addresses; the home router ignores what it did not ask for.
    let wan_pings = |r: &Router| internet.exec(&["ping", "-c", "1", "-W", "1", &r.wan_ip]).status.success();
    assert!(!wan_pings(&cone), "the home router drops unsolicited packets");
    assert!(wan_pings(&symmetric), "the plain router answers");

    // A flushed router has forgotten its mappings; a timeout can be set per router.
    symmetric.set_udp_timeout(5);
    symmetric.flush();
    assert!(outside_ports(&symmetric, 4000).is_empty());
    let timeout = symmetric.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"]);
    assert_eq!(String::from_utf8_lossy(&timeout.stdout).trim(), "5");
    let global = cmd(&["cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout"]);
    assert_ne!(String::from_utf8_lossy(&global.stdout).trim(), "5", "the machine's own timeout is untouched");
}
