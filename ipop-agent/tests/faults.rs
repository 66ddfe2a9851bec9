//! Faults on the underlay between two hosts: a link taken down and up again, and a share of
//! the overlay's packets dropped by an nftables rule. The links recover, TCP completes, ARP
//! still resolves. Needs root.

mod support;

use std::{
    thread,
    time::{Duration, Instant},
};

use support::{Host, Underlay, eventually_within, ok, status};

const SECRET: &str = "correct horse battery";

fn pings(host: &Host, ip: &str) -> bool {
    host.in_container(0, &["ping", "-c", "1", "-W", "1", ip]).status.success()
}

fn tcp_completes(server: &Host, client: &Host, ip: &str) -> f64 {
    assert!(server.in_container(0, &["iperf3", "-s", "-D", "-1"]).status.success());
    thread::sleep(Duration::from_millis(300));
    let out = client.in_container(0, &["iperf3", "-c", ip, "-t", "3", "-J"]);
    assert!(out.status.success(), "iperf3 failed: {}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0)
}

fn two_hosts() -> (Underlay, Host, Host) {
    two_hosts_with(&[])
}

/// Two hosts with one container each; `a_args` go to host a's agent.
fn two_hosts_with(a_args: &[&str]) -> (Underlay, Host, Host) {
    let (underlay, mut a, mut b) = two_idle_hosts();
    start_both(&mut a, &mut b, a_args);
    assert!(pings(&a, "10.0.3.20"));
    (underlay, a, b)
}

/// Two hosts on an underlay with a rendezvous, agents not started yet (for a test to change
/// the underlay first).
fn two_idle_hosts() -> (Underlay, Host, Host) {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let a = Host::new(&["10.0.3.10"]);
    a.join_underlay(&underlay, 1);
    let b = Host::new(&["10.0.3.20"]);
    b.join_underlay(&underlay, 2);
    (underlay, a, b)
}

/// Starts agents "a" (with `a_args`) and "b", and waits for their link.
fn start_both(a: &mut Host, b: &mut Host, a_args: &[&str]) {
    a.start_member("a", SECRET, a_args);
    b.start_member("b", SECRET, &[]);
    for h in [&*a, &*b] {
        eventually_within(30, "link up", || h.link_up());
    }
}

#[test]
fn the_overlay_recovers_when_the_underlay_comes_back() {
    let (_underlay, a, b) = two_hosts();
    let t = Instant::now();
    b.ip(&["link", "set", "wan0", "down"]);
    // Longer than a link takes to declare its peer dead: both sides notice.
    eventually_within(15, "the link goes down", || !a.link_up());
    eprintln!("figure: link declared down {:.1} s after the underlay went down", t.elapsed().as_secs_f64());
    assert!(!pings(&a, "10.0.3.20"));
    let t = Instant::now();
    b.ip(&["link", "set", "wan0", "up"]);
    eventually_within(45, "the link comes back", || a.link_up() && b.link_up());
    eventually_within(15, "containers reach each other again", || pings(&a, "10.0.3.20"));
    eprintln!("figure: containers reach each other {:.1} s after the underlay came back", t.elapsed().as_secs_f64());
    assert!(tcp_completes(&b, &a, "10.0.3.20") > 0.0);
    // ARP resolves again (through RPCs: the dead link's entries were withdrawn).
    let mac = b.container_mac(0);
    eventually_within(10, "ARP resolves", || a.arping(0, "10.0.3.20", 1) == vec![mac.clone()]);
}

#[test]
fn the_overlay_works_through_underlay_loss() {
    let (_underlay, a, b) = two_hosts();
    // Drop one UDP datagram in ten arriving at host b (links and rendezvous alike see loss).
    let nft = |args: &str| ok(&["ip", "netns", "exec", &b.ns, "nft", args]);
    nft("add table inet ipoptest");
    nft("add chain inet ipoptest input { type filter hook input priority 0; }");
    nft("add rule inet ipoptest input meta l4proto udp numgen random mod 10 0 drop");
    assert!(tcp_completes(&b, &a, "10.0.3.20") > 0.0, "TCP completes through 10% loss");
    let mac = b.container_mac(0);
    // ARP through RPCs with loss: forget the learned entry first, retry like a host would.
    let pins = a.pin_dir("lxcbr0");
    let _ = a.agent(&["arp", "--pin-dir", pins.to_str().unwrap(), "del", "10.0.3.20"]);
    eventually_within(10, "ARP resolves through loss", || a.arping(0, "10.0.3.20", 1) == vec![mac.clone()]);
    thread::sleep(Duration::from_secs(6));
    assert!(a.link_up() && b.link_up(), "10% loss does not kill the link (keepalives every second, dead after 5 s)");
}

#[test]
fn a_container_flooding_arp_is_rate_limited_and_the_overlay_stays_responsive() {
    // A limit of 1,000 ARP RPCs a second per source, and a flood of 5,000 a second for 2 s.
    let (_underlay, a, b) = two_hosts_with(&["--arp-rpc-rate", "1000"]);
    let pins = a.pin_dir("lxcbr0");
    let before = status(&a, &pins)["switch"].clone();
    let flood = concat!(env!("CARGO_MANIFEST_DIR"), "/../xtask/arpflood.py");
    let out = a.in_container(0, &["python3", flood, "eth0", "5000", "2"]);
    assert!(out.status.success(), "arpflood: {}", String::from_utf8_lossy(&out.stderr));
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    thread::sleep(Duration::from_secs(1));
    let after = status(&a, &pins)["switch"].clone();
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert!(d("rpc_limited") > 0, "the flood was limited: {after}");
    // At most the burst (1,000) plus 1,000 a second of the flood's 2-3 s reached the peers.
    assert!(d("rpc_sent") <= 1_000 + 3 * 1_000 + 10, "rpc_sent grew by {} for {sent} requests", d("rpc_sent"));
    let k = support::stats(&a, &pins);
    eprintln!(
        "flood: {sent} requests, {} RPCs sent, {} limited, {} lost in the ring buffer",
        d("rpc_sent"),
        d("rpc_limited"),
        k["events_lost"]
    );
    // Still responsive: the link is up, and traffic and ARP across work.
    assert!(a.link_up() && b.link_up());
    assert!(pings(&a, "10.0.3.20"));
    let mac = b.container_mac(0);
    let _ = a.agent(&["arp", "--pin-dir", pins.to_str().unwrap(), "del", "10.0.3.20"]);
    eventually_within(10, "ARP across resolves after the flood", || a.arping(0, "10.0.3.20", 1) == vec![mac.clone()]);
}

#[test]
fn storm_control_caps_broadcasts_flooded_to_peers() {
    let (_underlay, a, b) = two_hosts_with(&["--broadcast-rate", "100"]);
    let pins = a.pin_dir("lxcbr0");
    let before = status(&a, &pins)["switch"].clone();
    // A broadcast flood: 3,000 frames to ff:ff:ff:ff:ff:ff (EtherType 0x88b5, local experimental)
    // as fast as a raw socket goes.
    let script = "import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0', 0))\n\
                  mac = open('/sys/class/net/eth0/address').read().strip().replace(':', '')\n\
                  frame = b'\\xff' * 6 + bytes.fromhex(mac) + b'\\x88\\xb5' + bytes(46)\n\
                  for _ in range(3000): s.send(frame)\n";
    let out = a.in_container(0, &["python3", "-c", script]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    thread::sleep(Duration::from_millis(500));
    let after = status(&a, &pins)["switch"].clone();
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    eprintln!(
        "figure: broadcast flood: {} flooded to peers, {} dropped by storm control",
        d("frames_to_peers"),
        d("storm_dropped")
    );
    // (Some of the burst never reaches the agent: the TAP's queue holds 1,000 frames.)
    assert!(d("storm_dropped") > 500, "storm control dropped the excess: {after}");
    assert!(d("frames_to_peers") < 300, "at most the burst (100) plus 100 a second went out: {after}");
    // Unicast is untouched.
    assert!(pings(&a, "10.0.3.20"));
    assert!(b.link_up());
}

fn paths(host: &Host) -> Vec<String> {
    let s = status(host, &host.pin_dir("lxcbr0"));
    s["peers"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap_or("down").to_owned()).collect()
}

#[test]
fn data_falls_back_to_ice_when_the_data_socket_is_blocked_and_returns() {
    let (_underlay, a, b) = two_hosts();
    for h in [&a, &b] {
        eventually_within(10, "data on the data socket", || paths(h) == ["direct"]);
    }
    // Block b's data socket: what a firewall or a port-changing NAT would do.
    let port = status(&b, &b.pin_dir("lxcbr0"))["data_port"].as_u64().expect("b reports its data port");
    let nft = |args: &str| ok(&["ip", "netns", "exec", &b.ns, "nft", args]);
    nft("add table inet ipopdata");
    nft("add chain inet ipopdata input { type filter hook input priority 0; }");
    nft(&format!("add rule inet ipopdata input udp dport {port} drop"));
    let t = Instant::now();
    for h in [&a, &b] {
        eventually_within(15, "data back on ICE", || paths(h) == ["ice"]);
    }
    eventually_within(10, "containers reach each other over ICE", || pings(&a, "10.0.3.20"));
    eprintln!("figure: data back on the ICE path {:.1} s after the data socket was blocked", t.elapsed().as_secs_f64());
    assert!(a.link_up() && b.link_up(), "the link itself never went down");
    assert!(tcp_completes(&b, &a, "10.0.3.20") > 0.0, "TCP over the ICE path");
    nft("delete table inet ipopdata");
    for h in [&a, &b] {
        eventually_within(15, "data on the data socket again", || paths(h) == ["direct"]);
    }
    assert!(pings(&a, "10.0.3.20"));
}

#[test]
fn without_a_data_socket_data_goes_over_ice() {
    let (_underlay, a, b) = two_hosts_with(&["--icc", "false"]);
    assert!(status(&a, &a.pin_dir("lxcbr0"))["data_port"].is_null(), "icc false: no data socket");
    // b has a data socket, but a offered none: nothing to probe, both stay on ICE.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(paths(&a), ["ice"]);
    assert_eq!(paths(&b), ["ice"]);
    assert!(tcp_completes(&b, &a, "10.0.3.20") > 0.0, "TCP over the ICE path");
}

#[test]
fn an_underlay_too_small_for_full_datagrams_keeps_data_on_ice() {
    // The underlay carries 1,400-byte packets: less than a data socket datagram (1,452 + 28
    // bytes of headers), which never fragments. Probes are full-size, so they fail and data
    // stays on ICE, whose datagrams fragment.
    let (_underlay, mut a, mut b) = two_idle_hosts();
    for h in [&a, &b] {
        h.ip(&["link", "set", "wan0", "mtu", "1400"]);
    }
    start_both(&mut a, &mut b, &[]);
    // Longer than the first round of probes (5 s).
    thread::sleep(Duration::from_secs(6));
    assert_eq!(paths(&a), ["ice"]);
    assert_eq!(paths(&b), ["ice"]);
    let big = a.in_container(0, &["ping", "-c", "2", "-s", "1472", "-M", "do", "10.0.3.20"]);
    assert!(big.status.success(), "full-size frames cross: {}", String::from_utf8_lossy(&big.stdout));
    assert!(tcp_completes(&b, &a, "10.0.3.20") > 0.0, "TCP over ICE with IP fragments");
}

#[test]
fn a_lost_handshake_answer_is_sent_again_not_refused() {
    // Host a ("a" < "b") initiates; its first handshake answer from b is dropped on the way
    // in (the UDP payload's first byte is HANDSHAKE_RESP, 0xc2; the limit lets one match).
    let (_underlay, mut a, mut b) = two_idle_hosts();
    let nft = |args: &str| ok(&["ip", "netns", "exec", &a.ns, "nft", args]);
    nft("add table inet ipophs");
    nft("add chain inet ipophs input { type filter hook input priority 0; }");
    nft("add rule inet ipophs input meta l4proto udp @th,64,8 0xc2 limit rate 1/hour burst 1 packets counter drop");
    start_both(&mut a, &mut b, &[]);
    let dropped = ok(&["ip", "netns", "exec", &a.ns, "nft", "list", "chain", "inet", "ipophs", "input"]);
    assert!(dropped.contains("packets 1 "), "the first answer was dropped: {dropped}");
    // b answered the retried first message again instead of refusing it as a replay.
    assert_eq!(status(&b, &b.pin_dir("lxcbr0"))["datagrams_refused"], 0);
    assert!(pings(&a, "10.0.3.20"));
}
