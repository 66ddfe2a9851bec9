//! A hostile member: a peer that holds the overlay secret (so the rendezvous lists it and the
//! handshake succeeds) and then sends garbage RPCs over its link, and a stranger throwing
//! datagrams at an agent's data socket. The rogue is ipop's own library (rendezvous client,
//! ICE link, Noise session) in its own network namespace, driven by this test. Needs root.

mod support;

use std::{
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use ipop_agent::{
    core::{digest::hex, wire::Inner},
    link::{
        event::LinkEvent,
        ice::IceConfig,
        params::{IceServers, LinkShared},
        peers::{LinkTemplate, Peers},
        session::{self, Identity},
    },
    signaling::{self, Credentials, SignalEvent},
};
use support::{Host, RENDEZVOUS, Underlay, eventually_within, status};
use tokio::sync::mpsc;

const SECRET: &str = "correct horse battery";
const OVERLAY: &str = "ipop";

fn in_netns<T: Send + 'static>(ns: &str, f: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold open.
        assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
    })
    .join()
    .unwrap()
}

/// Joins the overlay as member "rogue", links to `victim` only, sends it `payloads` as RPCs
/// (50 every 20 ms: a burst beyond the socket buffers would test UDP loss instead) and
/// returns the RPCs it got back within 3 s of the last.
async fn rogue(victim: &str, payloads: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let identity = Identity::generate();
    let secret = signaling::admission::Secret::stretch(OVERLAY, SECRET);
    let creds = Credentials {
        overlay: OVERLAY.into(),
        proof: signaling::admission::Proof::Secret(secret.clone()),
        node_id: "rogue".into(),
        public_key: hex(&identity.public),
    };
    let (signaling, mut signals) = signaling::connect_rendezvous(RENDEZVOUS.into(), creds);
    let (events_tx, mut events) = mpsc::channel(8192);
    let shared = LinkShared {
        node_id: "rogue".into(),
        identity,
        psk: session::secret_psk(OVERLAY, &secret),
        ice: IceServers::new(IceConfig::start(Vec::new(), None).unwrap()),
        exclude_ifaces: vec!["lxcbr0".into()],
        signaling,
        events: events_tx,
        data: None,
        aead: session::Aead::local(),
        rekey_after: ipop_agent::link::timers::REKEY_AFTER,
    };
    let mut peers = Peers::new(LinkTemplate { shared, certified: None });
    let give_up = Instant::now() + Duration::from_secs(40);
    let mut sent_at: Option<Instant> = None;
    let mut link = None;
    let mut queue: std::collections::VecDeque<Vec<u8>> = payloads.into();
    let mut answers = Vec::new();
    loop {
        assert!(Instant::now() < give_up, "the rogue's link never came up");
        if sent_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            return answers;
        }
        if let Some(id) = link {
            for p in queue.drain(..queue.len().min(50)) {
                peers.send(id, Inner::Rpc, p);
            }
            if queue.is_empty() && sent_at.is_none() {
                sent_at = Some(Instant::now());
            }
        }
        tokio::select! {
            Some(ev) = signals.recv() => match ev {
                SignalEvent::Members(ms) => {
                    for m in ms.iter().filter(|m| m.node_id == victim) {
                        peers.ensure(m);
                    }
                }
                SignalEvent::Joined(m) if m.node_id == victim => { peers.ensure(&m); }
                SignalEvent::Signal { from, data } => peers.signal(&from, data),
                _ => {}
            },
            Some(ev) = events.recv() => match ev {
                LinkEvent::Up(id, data) => {
                    peers.set_up(id, Some(data));
                    link = Some(id);
                }
                LinkEvent::Received(_, Inner::Rpc, bytes) => answers.push(bytes),
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Every kind of bad RPC, `n` of each.
fn garbage(n: usize) -> Vec<Vec<u8>> {
    let kinds: Vec<Vec<u8>> = vec![
        br#"{"jsonrpc":"2.0","method":"#.to_vec(),                        // malformed
        format!("{}{}", "[".repeat(2000), "]".repeat(2000)).into_bytes(), // nested
        format!(r#"{{"jsonrpc":"2.0","method":"arp_request","params":{{"x":"{}"}}}}"#, "a".repeat(6000)).into_bytes(), // oversized
        br#"{"jsonrpc":"2.0","method":"arp_request","params":{"sender_mac":"zz","sender_ip":5,"target_ip":[]}}"#
            .to_vec(), // wrong types
        br#"{"jsonrpc":"2.0","id":7,"method":"shutdown","params":{}}"#.to_vec(), // unknown method
        vec![0xff, 0xfe, 0x00, 0x80],                                            // not UTF-8
    ];
    (0..n).flat_map(|_| kinds.clone()).collect()
}

fn rss_kib(host: &Host, idx: usize) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.agent_pid(idx))).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Agents "a" and "b" with a container each, and host r (no agent) for the attacker, all on
/// one underlay with a rendezvous.
fn three_hosts() -> (Underlay, Host, Host, Host) {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut a = Host::new(&["10.0.3.10"]);
    a.join_underlay(&underlay, 1);
    let mut b = Host::new(&["10.0.3.20"]);
    b.join_underlay(&underlay, 2);
    let r = Host::new(&[]);
    r.join_underlay(&underlay, 3);
    // The tests count RPCs: links come up before the hosts' IPv6 has started.
    for h in [&a, &b] {
        h.ipv6_off();
    }
    a.start_member("a", SECRET, &[]);
    b.start_member("b", SECRET, &[]);
    (underlay, a, b, r)
}

#[test]
fn a_member_sending_garbage_rpcs_is_refused_counted_and_logged_once() {
    let (_underlay, a, _b, r) = three_hosts();
    let pins = a.pin_dir("lxcbr0");
    eventually_within(30, "a and b linked", || {
        status(&a, &pins)["peers"].as_array().unwrap().iter().any(|p| p["node_id"] == "b" && p["up"] == true)
    });
    let rss_before = rss_kib(&a, 0);
    let before = status(&a, &pins);

    let payloads = garbage(200);
    let sent = payloads.len() as u64;
    let answers = in_netns(&r.ns, async move || rogue("a", payloads).await);

    eventually_within(10, "every bad RPC counted", || {
        status(&a, &pins)["rpc_refused"].as_u64().unwrap() - before["rpc_refused"].as_u64().unwrap() == sent
    });
    let after = status(&a, &pins);
    assert_eq!(after["switch"]["rpc_received"], before["switch"]["rpc_received"], "none reached the switch");
    // A call (it has an id) gets a JSON-RPC error back; notifications get nothing.
    let method_not_found = answers
        .iter()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter(|v| v["id"] == 7 && v["error"]["code"] == -32601)
        .count();
    assert_eq!(method_not_found, 200, "each unknown-method call answered with an error");
    let log = a.agent_log(0);
    let logged = log.matches("refused RPC").count();
    assert!((1..=2).contains(&logged), "logged once per peer per 10 s, not per message: {logged} lines");
    let rss_after = rss_kib(&a, 0);
    eprintln!(
        "figure: {sent} bad RPCs from a member: {} refused, {} error answers, {logged} log line(s), RSS {} -> {} KiB",
        after["rpc_refused"],
        answers.len(),
        rss_before,
        rss_after
    );
    // The victim still does its job.
    assert!(a.in_container(0, &["ping", "-c", "1", "-W", "2", "10.0.3.20"]).status.success());
}

#[test]
fn a_stranger_throwing_datagrams_at_the_data_socket_reaches_nothing() {
    let (_underlay, a, _b, r) = three_hosts();
    let pins = a.pin_dir("lxcbr0");
    eventually_within(30, "a and b on their data sockets", || {
        status(&a, &pins)["peers"].as_array().unwrap().iter().any(|p| p["path"] == "direct")
    });
    let port = status(&a, &pins)["data_port"].as_u64().unwrap() as u16;
    let before = status(&a, &pins);
    // Random bytes, and well-formed INDEXED datagrams for made-up receivers (any index a
    // stranger guesses is almost surely unused; if it were used, authentication fails).
    let thrown = in_netns(&r.ns, async move || {
        let s = std::net::UdpSocket::bind("192.168.77.3:0").unwrap();
        let mut n = 0u64;
        for i in 0..500u32 {
            let mut d = vec![0xc4];
            d.extend_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            d.extend_from_slice(&[0x5a; 60]);
            s.send_to(&d, ("192.168.77.1", port)).unwrap();
            s.send_to(&[i as u8; 33], ("192.168.77.1", port)).unwrap();
            n += 2;
        }
        n
    });
    eventually_within(10, "every stranger's datagram counted", || {
        let s = status(&a, &pins);
        let d = |k: &str| s[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        d("datagrams_unknown") + d("datagrams_refused") == thrown
    });
    // Each was dropped and counted before anything read it: none reached the TAP or a map.
    assert!(a.in_container(0, &["ping", "-c", "1", "-W", "2", "10.0.3.20"]).status.success());
}
