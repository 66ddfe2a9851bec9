//! IPv6 on the segment: containers with IPv6 addresses on two hosts, neighbour discovery
//! carried as RPCs and answered in the kernel from `nd_table`, and duplicate address detection
//! across the overlay. Needs root.

mod support;

use support::{Host, Underlay, eventually_within, stats, status};

const SECRET: &str = "correct horse battery";
/// Host i's container: IPv4 (for the lab's setup) and the IPv6 address it is given.
const IPS: [(&str, &str); 2] = [("10.0.3.10", "fd00::10"), ("10.0.3.20", "fd00::20")];

/// Two hosts with a container each, IPv6 addresses set without duplicate address detection
/// (the test's own probes come later), agents up and linked.
fn two_hosts() -> (Underlay, Vec<Host>) {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = Vec::new();
    for (i, (v4, v6)) in IPS.iter().enumerate() {
        let mut host = Host::new(&[v4]);
        host.join_underlay(&underlay, i as u8 + 1);
        ip6_in(&host, &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        host.start_member(&format!("h{i}"), SECRET, &[]);
        hosts.push(host);
    }
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    (underlay, hosts)
}

/// `ip -6 ...` in the host's container.
fn ip6_in(host: &Host, args: &[&str]) -> String {
    let mut all = vec!["ip", "-6"];
    all.extend_from_slice(args);
    let out = host.in_container(0, &all);
    assert!(out.status.success(), "ip -6 {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ping6(host: &Host, ip: &str) -> (bool, String) {
    let out = host.in_container(0, &["ping", "-6", "-c", "2", "-W", "2", "-i", "0.2", ip]);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn counter(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("{name} in {v}"))
}

fn nd_list(host: &Host) -> String {
    let pins = host.pin_dir("lxcbr0");
    let out = host.agent(&["nd", "--pin-dir", pins.to_str().unwrap(), "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn containers_ping6_across_hosts_and_the_second_solicitation_is_answered_in_the_kernel() {
    let (_underlay, hosts) = two_hosts();
    let pins = hosts[0].pin_dir("lxcbr0");
    let (ok, out) = ping6(&hosts[0], IPS[1].1);
    assert!(ok, "h0's container pings h1's over IPv6:\n{out}");
    let mac1 = hosts[1].container_mac(0);
    assert!(nd_list(&hosts[0]).contains(&mac1), "h1's container in h0's nd_table:\n{}", nd_list(&hosts[0]));
    assert!(nd_list(&hosts[0]).contains(IPS[1].1));

    // Forgotten by the container, asked again: this time h0's kernel answers.
    ip6_in(&hosts[0], &["neigh", "flush", "dev", "eth0"]);
    let before = stats(&hosts[0], &pins);
    let (ok, out) = ping6(&hosts[0], IPS[1].1);
    assert!(ok, "{out}");
    let after = stats(&hosts[0], &pins);
    assert!(
        counter(&after, "nd_answered") > counter(&before, "nd_answered"),
        "the second solicitation was answered in the kernel: {before} -> {after}"
    );
    let neigh = ip6_in(&hosts[0], &["neigh", "show", IPS[1].1, "dev", "eth0"]);
    assert!(neigh.contains(&mac1), "the container has h1's container's MAC: {neigh}");

    // The operator's view and hand: a static entry, listed and removed; IPv4 refused here.
    let pins = pins.to_str().unwrap();
    let add = hosts[0].agent(&["nd", "--pin-dir", pins, "add", "fd00::99", "02:00:00:00:00:99"]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    assert!(nd_list(&hosts[0]).lines().any(|l| l.contains("fd00::99") && l.contains("static")));
    let wrong = hosts[0].agent(&["nd", "--pin-dir", pins, "add", "10.0.3.99", "02:00:00:00:00:99"]);
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("ipop-agent arp"));
    assert!(hosts[0].agent(&["nd", "--pin-dir", pins, "del", "fd00::99"]).status.success());
    assert!(!nd_list(&hosts[0]).contains("fd00::99"));
}

#[test]
fn a_duplicate_address_across_hosts_is_detected_on_both_sides() {
    let (_underlay, hosts) = two_hosts();
    // h0's container speaks (so both agents know where fd00::10 lives).
    let (ok, out) = ping6(&hosts[0], IPS[1].1);
    assert!(ok, "{out}");
    let pins: Vec<_> = hosts.iter().map(|h| h.pin_dir("lxcbr0")).collect();
    let conflicts = |i: usize| status(&hosts[i], &pins[i])["switch"]["conflicts"].as_u64().unwrap();
    let before = [conflicts(0), conflicts(1)];

    // h1's container now wants fd00::10 too, with duplicate address detection.
    ip6_in(&hosts[1], &["addr", "add", &format!("{}/64", IPS[0].1), "dev", "eth0"]);
    eventually_within(10, "h1's container's DAD fails", || {
        ip6_in(&hosts[1], &["addr", "show", "dev", "eth0"]).contains("dadfailed")
    });
    for (i, h) in hosts.iter().enumerate() {
        eventually_within(5, "the conflict is counted", || conflicts(i) > before[i]);
        let log = h.agent_log(0);
        assert!(log.contains("duplicate address") && log.contains(IPS[0].1), "h{i} says so:\n{log}");
    }
    // fd00::10 still lives on h0: h1's kernel answers for it with h0's container's MAC.
    assert!(nd_list(&hosts[1]).contains(&hosts[0].container_mac(0)));
}

/// Agents, the rendezvous, STUN (coturn) and the links on an underlay with no IPv4 at all:
/// the overlay's own traffic (IPv4 here) crosses IPv6 datagrams.
#[test]
fn an_ipv6_only_underlay_carries_the_overlay() {
    let mut underlay = Underlay::ipv6_only();
    underlay.start_rendezvous(SECRET);
    underlay.start_turn("ipop", "lab password");
    let (stun, _) = underlay.ice_urls("ipop", "lab password");
    let rendezvous = underlay.rendezvous();
    assert!(rendezvous.starts_with("[fd77::"), "{rendezvous}");
    let mut hosts = Vec::new();
    for (i, (v4, _)) in IPS.iter().enumerate() {
        let mut host = Host::new(&[v4]);
        let addr = host.join_underlay(&underlay, i as u8 + 1);
        assert!(addr.contains(':'), "an IPv6 address: {addr}");
        let wan = host.ip(&["-4", "-o", "addr", "show", "dev", "wan0"]);
        assert!(wan.trim().is_empty(), "no IPv4 on the underlay: {wan}");
        host.start_member_at(&rendezvous, &format!("h{i}"), SECRET, &["--stun", &stun]);
        hosts.push(host);
    }
    for h in &hosts {
        eventually_within(30, "the link is up", || h.link_up());
    }
    let pins = hosts[0].pin_dir("lxcbr0");
    eventually_within(10, "data on the data socket, over IPv6", || {
        let s = status(&hosts[0], &pins);
        let peer = &s["peers"][0];
        peer["path"] == "direct" && peer["endpoint"].as_str().is_some_and(|e| e.starts_with("[fd77::2]:"))
    });
    let out = hosts[0].in_container(0, &["ping", "-c", "3", "-W", "2", "-i", "0.2", IPS[1].0]);
    assert!(out.status.success(), "containers reach each other:\n{}", String::from_utf8_lossy(&out.stdout));
    let s = status(&hosts[0], &pins);
    let local = s["peers"][0]["local_candidate"].as_str().unwrap_or_default().to_owned();
    assert!(local.contains("fd77::1"), "ICE chose an IPv6 candidate: {local} in {s}");
}
