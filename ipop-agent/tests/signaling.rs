//! Signaling that misbehaves: a rendezvous whose lines arrive in fragments, and one that drops
//! the first signal between every two nodes. Hosts on the flat underlay, each with bridge
//! lxcbr0 and one container; the agents reach the real rendezvous through a proxy
//! (`SignalingProxy`) that does the damage. Needs root.

mod support;

use std::time::Instant;

use support::{Faults, Host, SignalingProxy, Underlay, eventually_within, status};

const SECRET: &str = "correct horse battery";

struct Mesh {
    hosts: Vec<Host>,
    proxy: SignalingProxy,
    // Dropped last: the proxy and the agents talk through it.
    _underlay: Underlay,
}

fn container_ip(i: usize) -> String {
    format!("10.0.3.{}", 10 + i)
}

/// `n` hosts whose agents reach the rendezvous through a proxy with `faults`, all started;
/// returns when the last agent is ready, and that moment.
fn mesh(n: usize, faults: Faults) -> (Mesh, Instant) {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let proxy = support::signaling_proxy(&underlay, 7001, faults);
    let mut hosts = Vec::new();
    for i in 0..n {
        let mut host = Host::new(&[&container_ip(i)]);
        host.join_underlay(&underlay, i as u8 + 1);
        host.start_member_at(&proxy.addr, &format!("h{i:02}"), SECRET, &[]);
        hosts.push(host);
    }
    (Mesh { hosts, proxy, _underlay: underlay }, Instant::now())
}

fn peers_up(host: &Host) -> usize {
    let s = status(host, &host.pin_dir("lxcbr0"));
    s["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["up"] == true).count())
}

fn full_mesh(m: &Mesh) -> bool {
    m.hosts.iter().all(|h| peers_up(h) == m.hosts.len() - 1)
}

fn ping(m: &Mesh, from: usize, to: usize) -> bool {
    m.hosts[from].in_container(0, &["ping", "-c", "2", "-W", "2", "-i", "0.2", &container_ip(to)]).status.success()
}

/// Every offer and every answer the first time: dropped. Links resend what went missing, so
/// the mesh forms in seconds, not after the 20 s connect timeout.
#[test]
fn a_rendezvous_that_drops_the_first_signal_of_every_pair_still_meshes_8_hosts_within_5s() {
    const N: usize = 8;
    let (m, started) = mesh(N, Faults { drop_first_signal: true, ..Faults::default() });
    eventually_within(5, "a full mesh of 8 within 5 s of the last start", || full_mesh(&m));
    println!("figure: full mesh of {N} with first signals dropped: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(m.proxy.dropped(), (N * (N - 1)) as u64, "the first signal of every ordered pair was dropped");
    assert!(ping(&m, 0, N - 1), "containers reach each other across the mesh");
}

/// Lines cut at random places, both ways, while agents send offers and candidates: no line is
/// lost, no agent reconnects, every link comes up.
#[test]
fn a_rendezvous_whose_lines_arrive_in_fragments_loses_nothing() {
    const N: usize = 6;
    let (m, _) = mesh(N, Faults { fragment: true, ..Faults::default() });
    eventually_within(20, "a full mesh of 6 through a fragmenting rendezvous", || full_mesh(&m));
    assert!(ping(&m, 0, N - 1), "containers reach each other across the mesh");
    assert_eq!(m.proxy.connections(), N as u64, "one connection per agent: none reconnected");
    for (i, h) in m.hosts.iter().enumerate() {
        let log = h.agent_log(0);
        assert!(!log.contains("lost the rendezvous"), "host {i} lost the rendezvous:\n{log}");
    }
}

#[test]
fn status_says_when_signaling_is_unreachable_and_the_links_that_are_up_stay() {
    let mut underlay = Underlay::new();
    let rendezvous = underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        h.start_member(&format!("h{i}"), SECRET, &[]);
    }
    let signaling = |h: &Host| status(h, &h.pin_dir("lxcbr0"))["signaling"].clone();
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
        assert_eq!(signaling(h)["up"], true, "{}", signaling(h));
    }
    underlay.stop_service(rendezvous);
    eventually_within(10, "status says signaling is down", || signaling(&hosts[0])["up"] == false);
    let why = signaling(&hosts[0])["reason"].as_str().unwrap_or_default().to_owned();
    assert!(why.starts_with("rendezvous 192.168.77.254:7000: "), "{why}");
    assert!(hosts[0].link_up(), "the link that was up stays up");
    let log = hosts[0].agent_log(0);
    assert!(log.contains("WARN") && log.contains("signaling unreachable (rendezvous"), "logged:\n{log}");
}
