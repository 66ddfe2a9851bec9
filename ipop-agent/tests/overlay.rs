//! Three hosts in network namespaces, each with bridge lxcbr0 (10.0.3.1/24, as LXC sets it
//! up on every host) and two containers, joined by an underlay, a rendezvous service and
//! three agents: one Ethernet segment. Needs root.

mod support;

use std::{thread, time::Duration};

use support::{Host, RENDEZVOUS, SystemUser, Underlay, eventually_within, ok, stats, status};

const SECRET: &str = "correct horse battery";
/// Container addresses per host: host i has 10.0.3.<10i+10> and 10.0.3.<10i+11>.
const IPS: [[&str; 2]; 3] = [["10.0.3.10", "10.0.3.11"], ["10.0.3.20", "10.0.3.21"], ["10.0.3.30", "10.0.3.31"]];

struct Overlay {
    hosts: Vec<Host>,
    agents: Vec<usize>,
    rendezvous: usize,
    // Dropped last: the hosts' agents talk through it.
    underlay: Underlay,
}

fn run_args(host: &Host, node: &str, secret: &str) -> Vec<String> {
    [
        "--pin-dir",
        host.pin_dir("lxcbr0").to_str().unwrap(),
        "--node-id",
        node,
        "--rendezvous",
        RENDEZVOUS,
        "--secret",
        secret,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn peers_up(host: &Host) -> usize {
    let s = status(host, &host.pin_dir("lxcbr0"));
    s["peers"].as_array().unwrap().iter().filter(|p| p["up"] == true).count()
}

fn overlay() -> Overlay {
    overlay_as(None)
}

/// The overlay, its agents run as `user` with only `CAPABILITIES` if given.
fn overlay_as(user: Option<&SystemUser>) -> Overlay {
    let mut underlay = Underlay::new();
    let rendezvous = underlay.start_rendezvous(SECRET);
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for (i, ips) in IPS.iter().enumerate() {
        let mut host = Host::new(ips);
        if let Some(user) = user {
            host.run_agents_as(&user.name, &CAPABILITIES);
        }
        host.join_underlay(&underlay, i as u8 + 1);
        // Like an LXC host: forwarding on, so a misrouted frame would show as an ICMP redirect.
        host.sysctl("net.ipv4.ip_forward", "1");
        // The control socket's group: one the user is in (the unit's is `ipop`).
        let group: Vec<&str> = user.iter().flat_map(|u| ["--control-group", u.name.as_str()]).collect();
        agents.push(host.start_member(&format!("h{i}"), SECRET, &group));
        hosts.push(host);
    }
    for host in &hosts {
        eventually_within(30, "every link up", || peers_up(host) == 2);
        // On this underlay every data socket is reachable: data leaves ICE for it.
        eventually_within(10, "data on the data sockets", || {
            let s = status(host, &host.pin_dir("lxcbr0"));
            s["peers"].as_array().unwrap().iter().all(|p| p["path"] == "direct")
        });
    }
    Overlay { hosts, agents, rendezvous, underlay }
}

fn arp_list(host: &Host, pins: &std::path::Path) -> String {
    String::from_utf8_lossy(&host.agent(&["arp", "--pin-dir", pins.to_str().unwrap(), "list"]).stdout).into_owned()
}

fn ping(host: &Host, c: usize, ip: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["ping", "-c", "2", "-W", "2", "-i", "0.2"];
    args.extend_from_slice(extra);
    args.push(ip);
    let out = host.in_container(c, &args);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Longer than a link takes to declare its peer dead.
fn support_link_dead_time() -> Duration {
    Duration::from_secs(6)
}

fn icmp_out_redirects(host: &Host) -> u64 {
    let snmp = ok(&["ip", "netns", "exec", &host.ns, "cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "OutRedirects").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn three_hosts_are_one_ethernet_segment() {
    one_ethernet_segment(overlay());
}

/// What ipop@.service gives the agent, and all it needs: the TAP, netlink, TCX links, socket
/// buffers beyond rmem_max (CAP_NET_ADMIN); programs, maps, BTF (CAP_BPF).
const CAPABILITIES: [&str; 2] = ["net_admin", "bpf"];

#[test]
fn three_hosts_are_one_ethernet_segment_with_agents_run_as_a_user_with_two_capabilities() {
    let user = SystemUser::new(&support::unique_prefix());
    let o = overlay_as(Some(&user));
    let uid = support::ok(&["id", "-u", &user.name]);
    for (host, &agent) in o.hosts.iter().zip(&o.agents) {
        let proc_status = std::fs::read_to_string(format!("/proc/{}/status", host.agent_pid(agent))).unwrap();
        let euid = proc_status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
        assert_eq!(euid, Some(uid.trim()), "the agent runs as {}:\n{proc_status}", user.name);
    }
    for (host, &agent) in o.hosts.iter().zip(&o.agents) {
        let log = host.agent_log(agent);
        assert!(!log.contains("WARN") && !log.contains("ermission"), "nothing refused to the user:\n{log}");
    }
    one_ethernet_segment(o);
    drop(user);
}

fn one_ethernet_segment(mut o: Overlay) {
    // Every container pings every other, across hosts too, without a duplicate reply.
    for (h, host) in o.hosts.iter().enumerate() {
        for (c, from) in IPS[h].iter().enumerate() {
            for ip in IPS.iter().flatten().filter(|ip| *ip != from) {
                let (ok, out) = ping(host, c, ip, &[]);
                assert!(ok, "{from} -> {ip} failed:\n{out}");
                assert!(!out.contains("DUP!"), "{from} -> {ip}: duplicate replies (the seed's known issue)\n{out}");
            }
        }
    }

    // Full-size frames: 1500-byte IP packets, not fragmented by the containers.
    let (ok_big, out) = ping(&o.hosts[0], 0, IPS[2][1], &["-s", "1472", "-M", "do"]);
    assert!(ok_big, "large ping across failed:\n{out}");

    // arping across: the first resolution may travel as RPC; the second is answered in the
    // kernel on host 0, and no RPC leaves host 0.
    let h2_mac = o.hosts[2].container_mac(1);
    assert_eq!(o.hosts[0].arping(1, IPS[2][1], 1), vec![h2_mac.clone()]);
    let pins0 = o.hosts[0].pin_dir("lxcbr0");
    let answered = stats(&o.hosts[0], &pins0)["answered"].as_u64().unwrap();
    let sent = status(&o.hosts[0], &pins0)["switch"]["rpc_sent"].as_u64().unwrap();
    assert_eq!(o.hosts[0].arping(1, IPS[2][1], 2), vec![h2_mac.clone(); 2]);
    assert_eq!(stats(&o.hosts[0], &pins0)["answered"].as_u64().unwrap(), answered + 2, "answered in the kernel");
    assert_eq!(status(&o.hosts[0], &pins0)["switch"]["rpc_sent"].as_u64().unwrap(), sent, "no RPC sent");

    // The host's own bridge address stays local (each host has 10.0.3.1): no conflict storm,
    // and no host routed overlay traffic.
    for host in &o.hosts {
        assert_eq!(icmp_out_redirects(host), 0, "ICMP redirects from {} (the seed's known issue)", host.ns);
    }

    // TCP across with iperf3.
    let server = o.hosts[1].in_container(0, &["iperf3", "-s", "-D", "-1"]);
    assert!(server.status.success());
    thread::sleep(Duration::from_millis(300));
    let client = o.hosts[0].in_container(0, &["iperf3", "-c", IPS[1][0], "-t", "2", "-J"]);
    assert!(client.status.success(), "iperf3: {}", String::from_utf8_lossy(&client.stdout));
    let report: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    assert!(bps > 0.0, "no TCP data crossed");

    // Losing the rendezvous breaks no link; it is needed again only to set links up.
    o.underlay.stop_service(o.rendezvous);
    thread::sleep(support_link_dead_time());
    assert!(ping(&o.hosts[1], 1, IPS[2][0], &[]).0, "links stay up without the rendezvous");
    assert_eq!(peers_up(&o.hosts[1]), 2);
    o.rendezvous = o.underlay.start_rendezvous(SECRET);

    // Kill host 2's agent: its entries stop being answered on host 0 within seconds.
    let pins2 = o.hosts[2].pin_dir("lxcbr0");
    let t = std::time::Instant::now();
    o.hosts[2].stop_agent(o.agents[2], libc::SIGKILL);
    eventually_within(15, "host 2's entries leave host 0's arp_table", || {
        let list =
            String::from_utf8_lossy(&o.hosts[0].agent(&["arp", "--pin-dir", pins0.to_str().unwrap(), "list"]).stdout)
                .into_owned();
        !list.contains(IPS[2][0]) && !list.contains(IPS[2][1])
    });
    eprintln!("figure: a killed peer's entries withdrawn {:.1} s after the kill", t.elapsed().as_secs_f64());
    assert!(o.hosts[0].arping(1, IPS[2][1], 1).is_empty(), "nothing answers for a host behind a dead link");
    // Restarting it brings the segment back, and it keeps what it had learned: its kernel
    // answers for host 0's containers again, without asking anyone.
    let had = arp_list(&o.hosts[2], &pins2);
    assert!(had.contains(IPS[0][1]), "host 2 had learned host 0's container:\n{had}");
    let t = std::time::Instant::now();
    o.agents[2] = o.hosts[2].start_member("h2", SECRET, &[]);
    let log = o.hosts[2].agent_log(o.agents[2]);
    assert!(log.contains("learned neighbour entries of the previous agent kept"), "{log}");
    assert!(arp_list(&o.hosts[2], &pins2).contains(IPS[0][1]), "kept while the links come back");
    eventually_within(30, "host 2 reachable again", || ping(&o.hosts[0], 0, IPS[2][0], &[]).0);
    eprintln!("figure: host 2 reachable {:.1} s after its agent was started again", t.elapsed().as_secs_f64());
    eventually_within(10, "host 2's kept entries are its peers' again", || {
        status(&o.hosts[2], &pins2)["orphans"].as_u64() == Some(0) && peers_up(&o.hosts[2]) == 2
    });
    let answered = stats(&o.hosts[2], &pins2)["answered"].as_u64().unwrap();
    let sent = status(&o.hosts[2], &pins2)["switch"]["rpc_sent"].as_u64().unwrap();
    assert_eq!(o.hosts[2].arping(1, IPS[0][1], 1), vec![o.hosts[0].container_mac(1)]);
    assert_eq!(stats(&o.hosts[2], &pins2)["answered"].as_u64().unwrap(), answered + 1, "answered in the kernel");
    assert_eq!(status(&o.hosts[2], &pins2)["switch"]["rpc_sent"].as_u64().unwrap(), sent, "no RPC needed");
    drop(o.underlay);
}

#[test]
fn a_host_with_the_wrong_secret_is_refused_and_reaches_nothing() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut good = Host::new(&["10.0.3.10"]);
    good.join_underlay(&underlay, 1);
    good.start_member("good", SECRET, &[]);
    let bad = Host::new(&["10.0.3.40"]);
    bad.join_underlay(&underlay, 2);
    let args = run_args(&bad, "mallory", "wrong secret!");
    let mut full = vec!["run"];
    full.extend(args.iter().map(String::as_str));
    let out = bad.agent(&full);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("wrong overlay or secret"), "{err}");
    assert!(!bad.has_link("ipop"), "a refused agent leaves nothing behind");
    assert!(!ping(&bad, 0, "10.0.3.10", &[]).0);
    assert_eq!(status(&good, &good.pin_dir("lxcbr0"))["peers"], serde_json::json!([]), "the member never heard of it");
}

#[test]
fn two_hosts_claiming_one_ip_are_a_conflict_and_the_first_owner_stands() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts: Vec<Host> = Vec::new();
    // Host 0 asks; hosts 1 and 2 both have a container with 10.0.3.50.
    for (i, ips) in [["10.0.3.10"], ["10.0.3.50"], ["10.0.3.50"]].iter().enumerate() {
        let mut host = Host::new(ips);
        host.join_underlay(&underlay, i as u8 + 1);
        host.start_member(&format!("h{i}"), SECRET, &[]);
        hosts.push(host);
    }
    for host in &hosts {
        eventually_within(30, "every link up", || peers_up(host) == 2);
    }
    let macs = [hosts[1].container_mac(0), hosts[2].container_mac(0)];
    let pins0 = hosts[0].pin_dir("lxcbr0");
    let table = |h: &Host| {
        String::from_utf8_lossy(&h.agent(&["arp", "--pin-dir", pins0.to_str().unwrap(), "list"]).stdout).into_owned()
    };
    hosts[0].arping(0, "10.0.3.50", 1);
    eventually_within(5, "a conflict is counted", || {
        status(&hosts[0], &pins0)["switch"]["conflicts"].as_u64().unwrap() >= 1
    });
    let first = table(&hosts[0]);
    let owner = macs.iter().find(|m| first.contains(m.as_str())).expect("one owner installed").clone();
    assert!(!macs.iter().all(|m| first.contains(m.as_str())));
    // Both claimants announce themselves again (gratuitous ARP, which peers are told about):
    // the owner's claim refreshes its entry, the other is one more conflict; the owner stands.
    let before = status(&hosts[0], &pins0)["switch"]["conflicts"].as_u64().unwrap();
    for claimant in &hosts[1..] {
        claimant.in_container(0, &["arping", "-U", "-c", "1", "-w", "1", "-I", "eth0", "-S", "10.0.3.50", "10.0.3.50"]);
    }
    eventually_within(5, "the second claim is one more conflict", || {
        status(&hosts[0], &pins0)["switch"]["conflicts"].as_u64().unwrap() > before
    });
    assert!(table(&hosts[0]).contains(owner.as_str()), "the existing owner stands");
    let log = hosts[0].agent_log(0);
    assert!(log.contains("IP conflict"), "the conflict is logged:\n{log}");
}

#[test]
fn status_says_for_each_peer_where_its_data_goes_how_much_crossed_and_who_is_behind_it() {
    let o = overlay();
    let (h0, pins) = (&o.hosts[0], o.hosts[0].pin_dir("lxcbr0"));
    assert!(ping(h0, 0, IPS[1][0], &[]).0, "h0's container pings h1's");
    let s = status(h0, &pins);
    assert_eq!(
        (s["node_id"].as_str(), s["overlay"].as_str(), s["bridge"].as_str()),
        (Some("h0"), Some("ipop"), Some("lxcbr0"))
    );
    let h1 = s["peers"].as_array().unwrap().iter().find(|p| p["node_id"] == "h1").expect("h1").clone();
    assert_eq!(h1["path"], "direct", "{h1}");
    assert!(h1["endpoint"].as_str().unwrap().starts_with("192.168.77.2:"), "{h1}");
    assert!(h1["rx_frames"].as_u64() >= Some(2) && h1["tx_frames"].as_u64() >= Some(2), "the pings crossed: {h1}");
    assert!(h1["rx_bytes"].as_u64() > h1["rx_frames"].as_u64(), "{h1}");
    assert!(h1["handshake_age_s"].as_f64().is_some_and(|a| a < 120.0), "{h1}");
    assert!(h1["heard_age_s"].as_f64().is_some_and(|a| a < 5.0), "{h1}");
    let behind: Vec<&str> = h1["hosts"].as_array().unwrap().iter().map(|h| h["ip"].as_str().unwrap()).collect();
    assert!(behind.contains(&IPS[1][0]), "h1's container is learned behind h1: {h1}");
    assert!(s["local_hosts"].as_array().unwrap().iter().any(|h| h["ip"] == IPS[0][0]), "{s}");

    let text = h0.agent(&["status", "--pin-dir", pins.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    for line in ["node: h0  overlay: ipop  bridge: lxcbr0", "peer: h1\n  state: up, path: direct", IPS[1][0]] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
}

#[test]
fn a_host_that_spoke_once_is_answered_in_the_kernel_on_the_first_arp_from_another_host() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&[IPS[0][0]]), Host::new(&[IPS[1][0]])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        // The counts below are ARP's: links come up before IPv6 has started.
        h.ipv6_off();
    }
    // h1's container speaks before h0 is there, and only to its own gateway: no ARP of it
    // crosses the overlay.
    hosts[1].start_member("h1", SECRET, &[]);
    let out = hosts[1].in_container(0, &["arping", "-c", "1", "-w", "2", "-I", "eth0", "10.0.3.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    hosts[0].start_member("h0", SECRET, &[]);
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    let pins = [hosts[0].pin_dir("lxcbr0"), hosts[1].pin_dir("lxcbr0")];
    // Announced to h0 when its link came up: h0's kernel answers the very first ARP for it.
    eventually_within(5, "h1's container in h0's arp_table", || arp_list(&hosts[0], &pins[0]).contains(IPS[1][0]));
    let answered = stats(&hosts[0], &pins[0])["answered"].as_u64().unwrap();
    let sent = status(&hosts[0], &pins[0])["switch"]["rpc_sent"].as_u64().unwrap();
    assert_eq!(hosts[0].arping(0, IPS[1][0], 1), vec![hosts[1].container_mac(0)]);
    assert_eq!(stats(&hosts[0], &pins[0])["answered"].as_u64().unwrap(), answered + 1, "the first ARP, in the kernel");
    assert_eq!(status(&hosts[0], &pins[0])["switch"]["rpc_sent"].as_u64().unwrap(), sent, "no ARP RPC");
    // h0's container, learned just now while the link is up, is announced at once: h1's
    // kernel answers for it too.
    eventually_within(5, "h0's container in h1's arp_table", || arp_list(&hosts[1], &pins[1]).contains(IPS[0][0]));
    let answered = stats(&hosts[1], &pins[1])["answered"].as_u64().unwrap();
    let (ok, out) = ping(&hosts[1], 0, IPS[0][0], &[]);
    assert!(ok, "{out}");
    assert_eq!(stats(&hosts[1], &pins[1])["answered"].as_u64().unwrap(), answered + 1, "h1's first ARP, in the kernel");
    assert!(status(&hosts[0], &pins[0])["switch"]["announced"].as_u64().unwrap() >= 1);
}

/// The times of the replies in `ping -D` output (`[epoch] 64 bytes ...` lines).
fn reply_times(ping_output: &str) -> Vec<f64> {
    let replies = ping_output.lines().filter(|l| l.contains("bytes from"));
    replies.filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok()).collect()
}

#[test]
fn a_container_that_moves_to_another_host_is_reached_there_within_a_second() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mover = "10.0.3.20";
    let mut hosts = [Host::new(&[IPS[0][0]]), Host::new(&[mover, IPS[1][1]]), Host::new(&[IPS[2][0]])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        h.start_member(&format!("h{i}"), SECRET, &[]);
    }
    for h in &hosts {
        eventually_within(30, "every link up", || peers_up(h) == 2);
    }
    let mac = hosts[1].container_mac(0);
    assert!(ping(&hosts[1], 1, mover, &[]).0, "h1's neighbour reaches the mover while it is there");
    // h0 pings the mover every 100 ms, across the move.
    let pinger = std::process::Command::new("ip")
        .args(["netns", "exec", &hosts[0].containers[0], "ping", "-D", "-i", "0.1", "-w", "8", mover])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    // The move: off h1's bridge, onto h2's with its IP and MAC, and it says so (as a migrated
    // container does, with a gratuitous ARP).
    hosts[1].remove_container(0);
    let moved = hosts[2].add_container_with_mac(mover, &mac);
    let garp = ["arping", "-U", "-c", "1", "-w", "1", "-I", "eth0", "-S", mover, mover];
    let said = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    hosts[2].in_container(moved, &garp);
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = reply_times(&text).into_iter().find(|t| *t >= said);
    let resumed = after.map(|t| t - said).unwrap_or(f64::INFINITY);
    eprintln!("figure: pings to a moved container resumed {resumed:.2} s after its gratuitous ARP");
    assert!(resumed <= 1.0, "pings resume within a second of the move ({resumed:.2} s):\n{text}");
    // No stale entry at the first host: its kernel answers with the same MAC, its entry now
    // behind h2 only.
    assert_eq!(hosts[0].arping(0, mover, 1), vec![mac.clone()]);
    let behind = |h: &Host, node: &str| {
        let s = status(h, &h.pin_dir("lxcbr0"));
        let peer = s["peers"].as_array().unwrap().iter().find(|p| p["node_id"] == node).cloned().unwrap();
        peer["hosts"].as_array().unwrap().iter().any(|x| x["ip"] == mover)
    };
    assert!(behind(&hosts[0], "h2") && !behind(&hosts[0], "h1"), "h0 has it behind h2 only");
    assert!(status(&hosts[0], &hosts[0].pin_dir("lxcbr0"))["switch"]["moves"].as_u64().unwrap() >= 1);
    assert!(hosts[2].agent_log(0).contains("host moved to this bridge"), "{}", hosts[2].agent_log(0));
    // The old host saw it leave its bridge: the container left behind reaches it at its new
    // place (its replies come through h1's TAP now, which a local entry would refuse).
    let (reached, out) = ping(&hosts[1], 1, mover, &[]);
    assert!(reached, "h1's other container reaches the moved one:\n{out}");
    assert!(behind(&hosts[1], "h2"), "h1 has it behind h2");
    assert!(hosts[1].agent_log(0).contains("host moved behind h2"), "{}", hosts[1].agent_log(0));
}
