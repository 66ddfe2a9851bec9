//! Signaling over XMPP, as IPOP did it: agents meet in a members-only room of a real prosody
//! (the Debian package, run by the lab as its own user, TLS from a CA made for the run) on
//! the underlay, and set up the same links as through the rendezvous. Needs root.

mod support;

use std::{
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use support::{Cert, Host, Prosody, Underlay, XMPP_DOMAIN, eventually_within, status};

const SECRET: &str = "correct horse battery";

fn password(node: &str) -> String {
    format!("{node}-password")
}

/// `n` hosts on the underlay, a prosody there with an account for each (`h0`, `h1`, ...) and
/// the room's members `members`.
fn lab(n: usize, members: &[&str], cert: Cert) -> (Underlay, Vec<Host>, Prosody) {
    let mut underlay = Underlay::new();
    let nodes: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
    let passwords: Vec<String> = nodes.iter().map(|n| password(n)).collect();
    let accounts: Vec<(&str, &str)> =
        nodes.iter().map(String::as_str).zip(passwords.iter().map(String::as_str)).collect();
    let prosody = underlay.start_prosody(&accounts, members, cert);
    let hosts: Vec<Host> = (0..n)
        .map(|i| {
            let h = Host::new(&[&format!("10.0.3.{}", 10 + i)]);
            h.join_underlay(&underlay, i as u8 + 1);
            h
        })
        .collect();
    (underlay, hosts, prosody)
}

fn start(host: &mut Host, prosody: &Prosody, node: &str) -> usize {
    host.start_xmpp_member(&prosody.addr, &prosody.ca, node, &password(node), SECRET)
}

fn peers_up(h: &Host) -> usize {
    let s = status(h, &h.pin_dir("lxcbr0"));
    s["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["up"] == true).count())
}

fn signaling(h: &Host) -> serde_json::Value {
    status(h, &h.pin_dir("lxcbr0"))["signaling"].clone()
}

fn ping(h: &Host, to: &str) -> bool {
    h.in_container(0, &["ping", "-c", "2", "-i", "0.2", "-W", "2", to]).status.success()
}

#[test]
fn three_hosts_mesh_through_prosody_and_ping_across() {
    let (_underlay, mut hosts, prosody) = lab(3, &["h0", "h1", "h2"], Cert::Good);
    for (i, h) in hosts.iter_mut().enumerate() {
        start(h, &prosody, &format!("h{i}"));
    }
    eventually_within(30, "a full mesh over XMPP", || hosts.iter().all(|h| peers_up(h) == 2));
    for (i, h) in hosts.iter().enumerate() {
        for j in (0..3).filter(|&j| j != i) {
            assert!(ping(h, &format!("10.0.3.{}", 10 + j)), "h{i} pings h{j}");
        }
        assert_eq!(signaling(h)["up"], true, "{}", signaling(h));
        let log = h.agent_log(0);
        assert!(log.contains("signed in to the XMPP server"), "{log}");
    }
}

#[test]
fn prosody_restarted_mid_run_loses_no_ping_and_agents_rejoin() {
    let (mut underlay, mut hosts, mut prosody) = lab(2, &["h0", "h1"], Cert::Good);
    for (i, h) in hosts.iter_mut().enumerate() {
        start(h, &prosody, &format!("h{i}"));
    }
    eventually_within(30, "the link is up", || hosts.iter().all(|h| peers_up(h) == 1));
    let pinger = {
        let h = &hosts[0];
        let log = h.file("restart-ping.log");
        let out = std::fs::File::create(&log).unwrap();
        let c = &h.containers[0];
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", c, "ping", "-i", "0.1", "-c", "120", "-W", "1", "10.0.3.11"])
            .stdout(out)
            .spawn()
            .unwrap();
        (child, log)
    };
    std::thread::sleep(Duration::from_secs(2));
    underlay.stop_service(prosody.idx);
    eventually_within(20, "both agents see the server gone", || hosts.iter().all(|h| signaling(h)["up"] == false));
    std::thread::sleep(Duration::from_secs(2));
    underlay.restart_prosody(&mut prosody);
    eventually_within(30, "both agents are back in the room", || hosts.iter().all(|h| signaling(h)["up"] == true));
    let (mut child, log) = pinger;
    assert!(child.wait().unwrap().success(), "pings all answered:\n{}", std::fs::read_to_string(&log).unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("120 received") && text.contains(" 0% packet loss"), "{text}");
    for h in &hosts {
        assert_eq!(peers_up(h), 1, "the link stayed");
    }
}

#[test]
fn a_wrong_password_stops_the_agent_with_the_servers_reason() {
    let (_underlay, hosts, prosody) = lab(1, &["h0"], Cert::Good);
    let mut args = hosts[0].xmpp_member_args(&prosody.addr, &prosody.ca, "h0", "not-the-password", SECRET);
    args.insert(0, "run".into());
    let out = hosts[0].agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused this agent") && err.contains("NotAuthorized"), "{err}");
    assert!(!err.contains("not-the-password"), "the password is not shown");
    assert!(!hosts[0].has_link("ipop"), "nothing left behind");
}

#[test]
fn an_unreachable_server_is_retried_and_status_says_so() {
    let (_underlay, mut hosts, prosody) = lab(1, &["h0"], Cert::Good);
    let nowhere = "192.168.77.254:5299";
    hosts[0].start_xmpp_member(nowhere, &prosody.ca, "h0", &password("h0"), SECRET);
    let s = signaling(&hosts[0]);
    assert_eq!(s["up"], false, "{s}");
    eventually_within(10, "status says why", || {
        signaling(&hosts[0])["reason"].as_str().is_some_and(|r| r.contains(nowhere) && r.contains("connect"))
    });
    let log = hosts[0].agent_log(0);
    assert_eq!(log.matches("signaling unreachable").count(), 1, "said once, retried quietly:\n{log}");
}

#[test]
fn a_jid_outside_the_rooms_member_list_is_refused_and_its_stanzas_change_nothing() {
    // h2 has an account but is not a member of the room.
    let (underlay, mut hosts, prosody) = lab(3, &["h0", "h1"], Cert::Good);
    start(&mut hosts[0], &prosody, "h0");
    start(&mut hosts[1], &prosody, "h1");
    eventually_within(30, "the members link", || peers_up(&hosts[0]) == 1);
    let mut args = hosts[2].xmpp_member_args(&prosody.addr, &prosody.ca, "h2", &password("h2"), SECRET);
    args.insert(0, "run".into());
    let out = hosts[2].agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a member of room lab@conference.xmpp.test"), "{err}");

    // Signed in all the same, h2 sends h0 a signal straight to its JID: ignored and counted.
    let before = signaling(&hosts[0])["ignored"].as_u64().unwrap();
    send_as_stranger(&underlay, &prosody, "h2", "h0@xmpp.test/h0");
    eventually_within(10, "h0 counts the stranger's stanza", || {
        signaling(&hosts[0])["ignored"].as_u64().unwrap() > before
    });
    let s = status(&hosts[0], &hosts[0].pin_dir("lxcbr0"));
    let peers: Vec<&str> = s["peers"].as_array().unwrap().iter().map(|p| p["node_id"].as_str().unwrap()).collect();
    assert_eq!(peers, ["h1"], "h2 is no peer: {s}");
    assert!(hosts[0].agent_log(0).contains("a signal from outside the room"));
}

/// Signs in to `prosody` as `user` with ipop's own client (from the underlay's namespace)
/// and sends `to` a chat message carrying a signal.
fn send_as_stranger(underlay: &Underlay, prosody: &Prosody, user: &str, to: &str) {
    use ipop_agent::signaling::{muc, tls, xmpp};
    use tokio_xmpp::{minidom::Element, parsers::message::Message};
    let netns = std::fs::File::open(format!("/run/netns/{}", underlay.ns)).unwrap();
    let (host, port) = prosody.addr.rsplit_once(':').unwrap();
    let cfg = xmpp::XmppConfig {
        jid: format!("{user}@{XMPP_DOMAIN}").parse().unwrap(),
        password: password(user),
        room: support::XMPP_ROOM.parse().unwrap(),
        server: Some((host.to_owned(), port.parse().unwrap())),
        ca_file: None,
        plaintext: false,
    };
    let tls = tls::client_config(Some(&prosody.ca)).unwrap();
    let to: tokio_xmpp::jid::Jid = to.parse().unwrap();
    std::thread::spawn(move || {
        // Sockets belong to the namespace of the thread that makes them.
        assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut stream = xmpp::sign_in(&cfg, Some(tls), "stranger").await.unwrap();
            let mut m = Message::chat(Some(to));
            m.payloads.push(Element::builder("signal", muc::NS).append(r#"{"sealed":"00"}"#).build());
            xmpp::send(&mut stream, m.into()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
    })
    .join()
    .unwrap();
}

#[test]
fn a_server_certificate_for_another_name_or_expired_is_refused_with_a_clear_error() {
    for (cert, said) in [(Cert::WrongName, "not valid for name"), (Cert::Expired, "expired")] {
        let (_underlay, mut hosts, prosody) = lab(1, &["h0"], cert);
        let started = Instant::now();
        start(&mut hosts[0], &prosody, "h0");
        eventually_within(10, "status says why", || {
            signaling(&hosts[0])["reason"].as_str().is_some_and(|r| r.to_lowercase().contains(said))
        });
        let reason = signaling(&hosts[0])["reason"].as_str().unwrap().to_owned();
        assert!(reason.contains("certificate") && reason.contains(XMPP_DOMAIN), "{cert:?}: {reason}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(signaling(&hosts[0])["up"], false);
    }
}

#[test]
fn agents_on_two_nodes_of_an_ejabberd_cluster_find_each_other_and_link() {
    let mut underlay = Underlay::new();
    let accounts = [("h0", password("h0")), ("h1", password("h1"))];
    let accounts: Vec<(&str, &str)> = accounts.iter().map(|(u, p)| (*u, p.as_str())).collect();
    let cluster = underlay.start_ejabberd_cluster(&accounts, &["h0", "h1"]);
    assert_eq!(cluster.cluster().len(), 2, "two nodes: {:?}", cluster.cluster());
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.11"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        // h0 signs in to the first node, h1 to the second.
        h.start_xmpp_member(&cluster.addrs[i], &cluster.ca, &format!("h{i}"), &password(&format!("h{i}")), SECRET);
    }
    eventually_within(30, "the link through the cluster", || hosts.iter().all(|h| peers_up(h) == 1));
    assert!(ping(&hosts[0], "10.0.3.11") && ping(&hosts[1], "10.0.3.10"));
}

#[test]
fn with_a_ca_the_certificates_travel_in_presence_and_are_checked() {
    let (_underlay, mut hosts, prosody) = lab(2, &["h0", "h1"], Cert::Good);
    let ca_dir = hosts[0].file("ca");
    let out = hosts[0].agent(&["ca", "--dir", ca_dir.to_str().unwrap(), "init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca_public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    for (i, h) in hosts.iter_mut().enumerate() {
        let node = format!("h{i}");
        let key = h.agent(&["key", "show"]);
        let key = String::from_utf8_lossy(&key.stdout).trim().to_owned();
        let cert = h.file(&format!("{node}.cert"));
        let sign = ["ca", "--dir", ca_dir.to_str().unwrap(), "sign", "--node-id", &node, "--public-key", &key];
        let out = h.agent(&[&sign[..], &["--out", cert.to_str().unwrap()]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The member options without the secret, and the CA's instead.
        let mut args = h.xmpp_member_args(&prosody.addr, &prosody.ca, &node, &password(&node), SECRET);
        let at = args.iter().position(|a| a == "--secret").unwrap();
        args.drain(at..at + 2);
        args.extend([
            "--ca-public-key".into(),
            ca_public.clone(),
            "--certificate".into(),
            cert.to_str().unwrap().into(),
        ]);
        h.start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    eventually_within(30, "the certified members link", || hosts.iter().all(|h| peers_up(h) == 1));
    assert!(ping(&hosts[0], "10.0.3.11"));
}
