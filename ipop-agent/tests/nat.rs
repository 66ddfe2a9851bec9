//! Hosts behind NAT routers on the lab's "internet", with the rendezvous and a real coturn
//! there. Symmetric NAT on both sides leaves no direct pair: the link goes through TURN and
//! says so. Needs root and coturn (`cargo xtask setup`).

mod support;

use support::{Host, Nat, Router, Underlay, eventually_within, status};

const SECRET: &str = "correct horse battery";
const TURN_USER: &str = "ipop";
const TURN_PASSWORD: &str = "turn pass 1";

/// Starts an agent on `host` for the internet's rendezvous, with its STUN and TURN server.
fn member(host: &mut Host, internet: &Underlay, node: &str) {
    let (stun, turn) = internet.ice_urls(TURN_USER, TURN_PASSWORD);
    host.start_member_at(&internet.rendezvous(), node, SECRET, &["--stun", &stun, "--turn", &turn]);
}

fn path(host: &Host) -> serde_json::Value {
    peer(host)["path"].clone()
}

/// The first peer in `host`'s status.
fn peer(host: &Host) -> serde_json::Value {
    status(host, &host.pin_dir("lxcbr0"))["peers"][0].clone()
}

/// The selected pair's candidates in `host`'s status: (local, remote).
fn pair(host: &Host) -> (String, String) {
    let p = peer(host);
    let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    (text("local_candidate"), text("remote_candidate"))
}

/// Hosts behind two routers, with the agents started: the internet (rendezvous and coturn),
/// its routers, and hosts a (container 10.0.3.10) and b (10.0.3.20). Drop order: hosts first.
struct Sites {
    a: Host,
    b: Host,
    routers: [Router; 2],
    _internet: Underlay,
}

/// Two sites behind routers made by `router` (WAN 203.0.113.1 and .2), agents started.
fn two_sites(router: fn(&Underlay, u8, Nat) -> Router, kind: Nat) -> Sites {
    let mut s = sites_without_agents(router, kind);
    member(&mut s.a, &s._internet, "a");
    member(&mut s.b, &s._internet, "b");
    s
}

/// The same, the agents left to the test.
fn sites_without_agents(router: fn(&Underlay, u8, Nat) -> Router, kind: Nat) -> Sites {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    internet.start_turn(TURN_USER, TURN_PASSWORD);
    let routers = [router(&internet, 1, kind), router(&internet, 2, kind)];
    let (a, b) = (Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"]));
    a.behind(&routers[0]);
    b.behind(&routers[1]);
    Sites { a, b, routers, _internet: internet }
}

#[test]
fn symmetric_nat_on_both_sides_links_through_the_turn_relay() {
    let Sites { a, b, _internet: internet, .. } = &two_sites(Router::new, Nat::Symmetric);

    for h in [&a, &b] {
        eventually_within(40, "the link is up through the relay", || h.link_up());
        assert_eq!(path(h), "relay", "status says the link is relayed");
        let (local, remote) = pair(h);
        assert!(
            local.starts_with("relay 203.0.113.254:") || remote.starts_with("relay 203.0.113.254:"),
            "{local} / {remote}"
        );
        // Measured from the keepalives on the relayed path.
        eventually_within(5, "a round trip through the relay", || {
            peer(h)["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0)
        });
    }
    internet.count_turn_messages();
    let out = a.in_container(0, &["ping", "-c", "10", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 packets transmitted, 10 received"), "10/10 pings through TURN:\n{text}");
    // Data crosses the relay in channel bindings (4-byte headers), not Send indications.
    let (indications, channel_data) = internet.turn_messages();
    assert!(channel_data >= 10 && indications == 0, "{indications} Send indications, {channel_data} ChannelData");
}

#[test]
fn a_malformed_ice_url_is_refused_at_start_naming_key_and_url() {
    let host = Host::new(&[]);
    // Under `timeout`: an agent that took the url would run on, and the test must still end.
    let agent = support::agent_binary();
    let out = host.in_ns(&[
        "timeout",
        "10",
        agent.to_str().unwrap(),
        "run",
        "--rendezvous",
        "203.0.113.254:7000",
        "--secret",
        SECRET,
        "--node-id",
        "a",
        "--turn",
        "turn://u:p@h:3478",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("turn url") && err.contains("turn://u:***@h:3478") && !err.contains(":p@"), "{err}");
    assert!(!host.has_link("ipop"), "nothing was created");
}

/// Received count from ping's summary line.
fn received(out: &std::process::Output) -> u32 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default();
    line.split(", ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn one_side_public_is_direct_both_ways_and_a_conntrack_flush_under_tcp_costs_at_most_2_s() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    internet.start_turn(TURN_USER, TURN_PASSWORD);
    // Symmetric: the NATed data socket's outside port is random, never the one it announced.
    let router = Router::new(&internet, 2, Nat::Symmetric);
    let mut public = Host::new(&["10.0.3.10"]);
    let mut natted = Host::new(&["10.0.3.20"]);
    public.join_underlay(&internet, 1);
    natted.behind(&router);
    member(&mut public, &internet, "a");
    member(&mut natted, &internet, "b");
    for h in [&public, &natted] {
        eventually_within(40, "the link is up", || h.link_up());
        // The public side learns the NATed socket's address from its authenticated probes.
        eventually_within(10, "data on the data socket, both ways", || path(h) == "direct");
    }

    // Under a TCP stream, the router forgets every mapping: the next datagrams get new random
    // ports, and data follows them.
    let server = natted.in_container(0, &["iperf3", "-s", "-D", "-1"]);
    assert!(server.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    // -R: the natted side sends, and the client's intervals count what arrived.
    let args = ["iperf3", "-c", "10.0.3.20", "-R", "-t", "8", "-i", "0.5", "-J"];
    let report = std::thread::scope(|s| {
        let run = s.spawn(|| public.in_container(0, &args));
        std::thread::sleep(std::time::Duration::from_secs(3));
        router.flush();
        run.join().unwrap()
    });
    assert!(report.status.success(), "the TCP connection survived: {}", String::from_utf8_lossy(&report.stdout));
    let stalled = stalled_seconds(&serde_json::from_slice(&report.stdout).unwrap());
    assert!(stalled <= 2.0, "at most 2 s without data after the flush: {stalled} s");
    let log = public.agent_log(0);
    assert!(log.contains("the peer's data socket moved: following it"), "the public side followed:\n{log}");
    for h in [&public, &natted] {
        assert!(h.link_up(), "the link stayed up");
        eventually_within(10, "still direct", || path(h) == "direct");
        let log = h.agent_log(0);
        assert_eq!(log.matches("link up").count(), 1, "no new handshake:\n{log}");
    }
}

/// Seconds of an iperf3 report's intervals in which (almost) nothing arrived.
fn stalled_seconds(report: &serde_json::Value) -> f64 {
    let intervals = report["intervals"].as_array().expect("iperf3 intervals");
    let sum = |i: &serde_json::Value, k: &str| i["sum"][k].as_f64().unwrap_or(0.0);
    intervals.iter().filter(|i| sum(i, "bits_per_second") < 1e6).map(|i| sum(i, "seconds")).sum()
}

#[test]
fn behind_nat_without_stun_status_says_why_the_link_is_down() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    let routers = [Router::home(&internet, 1, Nat::Cone), Router::home(&internet, 2, Nat::Cone)];
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    let rendezvous = internet.rendezvous();
    for (i, (h, r)) in hosts.iter_mut().zip(&routers).enumerate() {
        h.behind(r);
        h.start_member_at(&rendezvous, &format!("h{i}"), SECRET, &[]);
    }
    let reason = |h: &Host| status(h, &h.pin_dir("lxcbr0"))["peers"][0]["reason"].as_str().map(str::to_owned);
    eventually_within(45, "a reason for the down link", || reason(&hosts[0]).is_some());
    let said = reason(&hosts[0]).unwrap();
    assert!(said.contains("only private addresses and no STUN server is configured"), "{said}");
    assert!(!hosts[0].link_up());
    let log = hosts[0].agent_log(0);
    let said_at_info = log.lines().any(|l| l.contains("INFO") && l.contains("link not up: ") && l.contains("no STUN"));
    assert!(said_at_info, "said at info level:\n{log}");
}

#[test]
fn cone_nat_on_both_sides_is_direct_both_ways() {
    let Sites { a, b, .. } = &two_sites(Router::home, Nat::Cone);
    for h in [&a, &b] {
        eventually_within(40, "the link is up", || h.link_up());
        eventually_within(10, "data on the data socket, both ways", || path(h) == "direct");
        let rtt = peer(h)["rtt_ms"].as_f64();
        assert!(rtt.is_some_and(|ms| ms > 0.0 && ms < 1000.0), "the path's round trip: {rtt:?}");
    }
    let out = a.in_container(0, &["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert_eq!(received(&out), 5, "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn two_hosts_behind_one_nat_link_over_their_private_addresses() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    let router = Router::home(&internet, 1, Nat::Symmetric);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    let rendezvous = internet.rendezvous();
    for (i, h) in hosts.iter_mut().enumerate() {
        let lan = h.behind(&router);
        assert_eq!(lan, format!("192.168.1.{}", i + 2));
        h.start_member_at(&rendezvous, &format!("h{i}"), SECRET, &[]);
    }
    for h in &hosts {
        eventually_within(40, "the link is up, without STUN", || h.link_up());
        eventually_within(10, "direct on the LAN", || path(h) == "direct");
        let (local, remote) = pair(h);
        // Host or peer-reflexive (a check that came before the candidate's signal): on the LAN.
        assert!(local.contains(" 192.168.1.") && remote.contains(" 192.168.1."), "{local} / {remote}");
    }
    // No UDP crossed the NAT: every UDP flow the router saw stayed on its LAN.
    let flows = router.udp_mappings();
    assert!(flows.iter().all(|(_, dst, _)| dst.starts_with("192.168.1.")), "{flows:?}");
    let out = hosts[0].in_container(0, &["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert_eq!(received(&out), 5, "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn an_idle_minute_behind_nats_that_forget_udp_after_30_s_loses_nothing() {
    let Sites { a, b, routers, .. } = &two_sites(Router::home, Nat::Cone);
    for r in routers {
        r.set_udp_timeout(30);
    }
    for h in [&a, &b] {
        eventually_within(40, "the link is up", || h.link_up());
        eventually_within(10, "direct", || path(h) == "direct");
    }
    // Nothing from the containers for a minute: only the agents' keepalives and probes cross.
    let lines_before = a.agent_log(0).lines().count();
    std::thread::sleep(std::time::Duration::from_secs(65));
    for h in [&a, &b] {
        assert!(h.link_up() && path(h) == "direct", "the link and its path held: {}", peer(h));
    }
    // And the log stays quiet: nothing changed, so nothing is said (the ICE library's state
    // flips between its consent checks included).
    let log = a.agent_log(0);
    assert_eq!(log.lines().count(), lines_before, "an idle minute logs nothing:\n{log}");
    let out = b.in_container(0, &["ping", "-c", "5", "-i", "0.2", "-W", "1", "10.0.3.10"]);
    assert_eq!(
        received(&out),
        5,
        "the first pings after the idle minute cross:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A public host (its agent started, node "a") and a host behind a router that lets no UDP
/// out (its agent left to the test). Drop order: hosts, then the router.
fn public_and_blocked(internet: &Underlay) -> (Router, Host, Host) {
    let router = Router::home(internet, 2, Nat::Cone);
    router.block_outbound_udp();
    let (mut public, blocked) = (Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"]));
    public.join_underlay(internet, 1);
    blocked.behind(&router);
    member(&mut public, internet, "a");
    (router, public, blocked)
}

/// A host behind a network that blocks outbound UDP (only TCP leaves) and a public host:
/// `turn` is the blocked host's TURN url (over TCP or TLS), `extra` more of its options.
/// The link comes up through the relay, reached over the stream, and 10 of 10 pings cross.
fn links_over_a_turn_stream(internet: Underlay, turn: &str, extra: &[&str]) {
    let (router, public, mut blocked) = public_and_blocked(&internet);
    let (stun, udp_turn) = internet.ice_urls(TURN_USER, TURN_PASSWORD);
    let mut args = vec!["--stun", &stun, "--turn", &udp_turn, "--turn", turn];
    args.extend_from_slice(extra);
    blocked.start_member_at(&internet.rendezvous(), "b", SECRET, &args);

    for h in [&public, &blocked] {
        eventually_within(40, "the link is up through the relay", || h.link_up());
        assert_eq!(path(h), "relay", "{}", peer(h));
    }
    let (local, _) = pair(&blocked);
    assert!(local.starts_with("relay 203.0.113.254:"), "the blocked host's side is its relay: {local}");
    let out = public.in_container(0, &["ping", "-c", "10", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert_eq!(received(&out), 10, "{}", String::from_utf8_lossy(&out.stdout));
    // Nothing but TCP left the blocked network: the router dropped every UDP datagram.
    assert!(
        router.udp_mappings().iter().all(|(_, dst, _)| dst.starts_with("192.168.1.")),
        "{:?}",
        router.udp_mappings()
    );
}

#[test]
fn outbound_udp_blocked_links_over_turn_tcp() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    internet.start_turn(TURN_USER, TURN_PASSWORD);
    let (tcp, _) = internet.turn_stream_urls(TURN_USER, TURN_PASSWORD);
    links_over_a_turn_stream(internet, &tcp, &[]);
}

#[test]
fn outbound_udp_blocked_links_over_turn_tls() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    let (_, ca) = internet.start_turn_tls(TURN_USER, TURN_PASSWORD);
    let (_, tls) = internet.turn_stream_urls(TURN_USER, TURN_PASSWORD);
    links_over_a_turn_stream(internet, &tls, &["--turn-ca-file", ca.to_str().unwrap()]);
}

#[test]
fn a_turns_server_whose_certificate_is_not_trusted_is_not_used_and_status_says_why() {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    internet.start_turn_tls(TURN_USER, TURN_PASSWORD);
    let (_, tls) = internet.turn_stream_urls(TURN_USER, TURN_PASSWORD);
    let (_router, _public, mut blocked) = public_and_blocked(&internet);
    // A CA of its own, which signed nothing the server shows: the server is not who it claims.
    let (stranger, key) = (blocked.file("stranger-ca.pem"), blocked.file("stranger-ca.key"));
    support::make_ca(&stranger, &key);
    let args = ["--turn", &tls, "--turn-ca-file", stranger.to_str().unwrap()];
    blocked.start_member_at(&internet.rendezvous(), "b", SECRET, &args);
    let reason = |h: &Host| peer(h)["reason"].as_str().map(str::to_owned);
    eventually_within(45, "a reason for the down link", || reason(&blocked).is_some());
    let said = reason(&blocked).unwrap();
    assert!(said.contains("TURN server turns:203.0.113.254:5349 could not be reached: "), "{said}");
    assert!(said.contains("TLS") && said.contains("certificate"), "the TLS failure named: {said}");
    assert!(!blocked.link_up(), "no link through a server it cannot trust");
}

#[test]
fn a_wrong_turn_password_shows_the_servers_401_in_status() {
    // Symmetric on both sides: without a relay nothing links, so the reason must name TURN.
    let mut s = sites_without_agents(Router::new, Nat::Symmetric);
    let Sites { a, b, _internet: internet, .. } = &mut s;
    let (stun, turn) = internet.ice_urls(TURN_USER, "not the password");
    for (h, node) in [(&mut *a, "a"), (&mut *b, "b")] {
        h.start_member_at(&internet.rendezvous(), node, SECRET, &["--stun", &stun, "--turn", &turn]);
    }
    let reason = |h: &Host| peer(h)["reason"].as_str().map(str::to_owned);
    eventually_within(45, "a reason for the down link", || reason(a).is_some());
    let said = reason(a).unwrap();
    assert!(said.contains("no relay candidate: TURN server turn:203.0.113.254:3478"), "{said}");
    assert!(said.contains("refused") && said.contains("401"), "the server's own answer: {said}");
    assert!(said.contains("pairs checked, none connected: "), "the pairs tried: {said}");
    assert!(!said.contains("not the password"), "never the password: {said}");
    assert!(!a.link_up());
}

#[test]
fn a_turn_password_file_is_read_and_a_missing_one_refused_at_start() {
    let mut s = sites_without_agents(Router::new, Nat::Symmetric);
    let Sites { a, b, _internet: internet, .. } = &mut s;
    let turn = format!("turn:{}:3478?transport=udp", internet.addr);
    let with_file = |file: &std::path::Path| {
        let args = ["--turn", &turn, "--turn-user", TURN_USER, "--turn-password-file", file.to_str().unwrap()];
        args.map(str::to_owned)
    };
    let missing = with_file(&a.file("no-such-password"));
    let agent = support::agent_binary();
    let rendezvous = internet.rendezvous();
    let mut run = vec![agent.to_str().unwrap(), "run", "--rendezvous", &rendezvous, "--secret", SECRET];
    run.extend(missing.iter().map(String::as_str));
    let out = a.in_ns(&run);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("turn_password_file") && err.contains("no-such-password"), "{err}");
    assert!(!a.has_link("ipop"), "nothing was created");

    for (h, node) in [(&mut *a, "a"), (&mut *b, "b")] {
        let file = h.file("turn-password");
        std::fs::write(&file, format!("{TURN_PASSWORD}\n")).unwrap();
        let args = with_file(&file);
        h.start_member_at(&rendezvous, node, SECRET, &args.each_ref().map(String::as_str));
    }
    for h in [&*a, &*b] {
        eventually_within(40, "the link is up through the relay", || h.link_up());
        assert_eq!(path(h), "relay");
    }
}

#[test]
fn plain_masquerade_on_both_sides_links_and_pings_cross() {
    // No input filter: the peer's first unsolicited check makes a conntrack entry on the
    // router that takes the port the mapping needs, so server-reflexive pairs fail; the relay
    // saves the link (README, "Behind NAT").
    let Sites { a, b, .. } = &two_sites(Router::new, Nat::Cone);
    for h in [&a, &b] {
        eventually_within(40, "the link is up", || h.link_up());
        assert!(["relay", "direct"].contains(&path(h).as_str().unwrap_or_default()), "{}", peer(h));
    }
    let out = a.in_container(0, &["ping", "-c", "10", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert_eq!(received(&out), 10, "{}", String::from_utf8_lossy(&out.stdout));
}
