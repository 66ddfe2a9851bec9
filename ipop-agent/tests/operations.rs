//! Operating agents as people run them: Prometheus metrics scraped while traffic crosses
//! (checked by promtool, the Debian package prometheus's). Needs root.

mod support;

use std::{thread, time::Duration};

use support::{Host, Underlay, eventually_within};

const SECRET: &str = "correct horse battery";
const METRICS: &str = "127.0.0.1:9464";

fn scrape(host: &Host) -> String {
    let out = host.in_ns(&["curl", "-sf", &format!("http://{METRICS}/metrics")]);
    assert!(out.status.success(), "scraping: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `name` (with its labels, as written) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn metrics_move_as_pings_cross_and_promtool_takes_them() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        h.start_member(&format!("h{i}"), SECRET, &["--metrics-listen", METRICS]);
    }
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    eventually_within(10, "data on the data socket", || {
        scrape(&hosts[0]).contains("ipop_peer_up{peer=\"h1\",path=\"direct\"} 1")
    });
    let before = scrape(&hosts[0]);
    let out = hosts[0].in_container(0, &["ping", "-c", "5", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let after = scrape(&hosts[0]);
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert!(moved("ipop_peer_tx_frames_total{peer=\"h1\"}") >= 5.0, "echo requests out:\n{after}");
    assert!(moved("ipop_peer_rx_frames_total{peer=\"h1\"}") >= 5.0, "echo replies in:\n{after}");
    assert!(moved("ipop_peer_rx_bytes_total{peer=\"h1\"}") >= 5.0 * 98.0, "{after}");
    assert!(sample(&after, "ipop_kernel_arp_seen_total") >= 1.0, "the container's ARP: {after}");
    assert_eq!(sample(&after, "ipop_signaling_up"), 1.0);
    assert!(sample(&after, "ipop_peer_rtt_seconds{peer=\"h1\"}") > 0.0);

    let file = hosts[0].file("metrics.txt");
    std::fs::write(&file, &after).unwrap();
    let check = support::cmd(&["sh", "-c", &format!("promtool check metrics < {}", file.display())]);
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Anything else is not found, and nothing but GET is served.
    let other = hosts[0].in_ns(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{METRICS}/")]);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "404");
}

/// One overlay's agent on `host`: `bridge`, its own TAP, pins, state directory and metrics
/// port, as two instances of ipop@.service would have them.
fn start_overlay_member(host: &mut Host, overlay: &str, bridge: &str, rendezvous: &str, node: &str, port: u16) {
    let pins = host.pin_dir(bridge);
    let state = host.file(&format!("state-{overlay}"));
    let metrics = format!("127.0.0.1:{port}");
    host.start_agent(&[
        "--bridge",
        bridge,
        "--tap",
        &format!("ipop-{overlay}"),
        "--pin-dir",
        pins.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--overlay",
        overlay,
        "--node-id",
        node,
        "--rendezvous",
        rendezvous,
        "--secret",
        SECRET,
        "--metrics-listen",
        &metrics,
    ]);
}

#[test]
fn two_overlays_on_one_host_run_side_by_side_and_stay_apart() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous_for("red", SECRET);
    underlay.start_rendezvous_on(7001, &["--overlay", "blue", "--secret", SECRET]);
    let blue_rendezvous = format!("{}:7001", underlay.addr);
    // The same container addresses in both overlays: only the overlay keeps them apart.
    let ips = ["10.0.3.10", "10.0.3.20"];
    let mut hosts = [Host::new(&[ips[0]]), Host::new(&[ips[1]])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.add_bridge("lxcbr1");
        h.add_container_on("lxcbr1", ips[i]);
        h.join_underlay(&underlay, i as u8 + 1);
        start_overlay_member(h, "red", "lxcbr0", support::RENDEZVOUS, &format!("h{i}"), 9464);
        start_overlay_member(h, "blue", "lxcbr1", &blue_rendezvous, &format!("h{i}"), 9465);
    }
    for h in &hosts {
        for (bridge, overlay) in [("lxcbr0", "red"), ("lxcbr1", "blue")] {
            eventually_within(20, "each overlay's link is up", || {
                let s = support::status(h, &h.pin_dir(bridge));
                s["overlay"] == overlay && s["peers"].as_array().is_some_and(|p| p.len() == 1 && p[0]["up"] == true)
            });
        }
    }
    // Container 0 is red, container 1 blue, on both hosts; each reaches its own overlay's twin.
    for (c, overlay) in [(0, "red"), (1, "blue")] {
        let out = hosts[0].in_container(c, &["ping", "-c", "3", "-i", "0.2", "-W", "2", ips[1]]);
        assert!(out.status.success(), "{overlay}: {}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(hosts[0].arping(c, ips[1], 1), vec![hosts[1].container_mac(c)], "{overlay} answers for its own");
    }
    for (port, overlay) in [(9464, "red"), (9465, "blue")] {
        let out = hosts[1].in_ns(&["curl", "-sf", &format!("http://127.0.0.1:{port}/metrics")]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("overlay=\"{overlay}\"")), "{overlay}'s metrics on {port}:\n{text}");
    }
}

/// systemd's end of sd_notify(3): a datagram socket the agent is told about in NOTIFY_SOCKET.
struct NotifySocket(std::os::unix::net::UnixDatagram);

impl NotifySocket {
    fn bind(path: &std::path::Path) -> NotifySocket {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        NotifySocket(sock)
    }

    /// The next message that is not a watchdog ping.
    fn next(&self) -> String {
        loop {
            let msg = self.message();
            if msg != "WATCHDOG=1" {
                return msg;
            }
        }
    }

    fn message(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("a notification within 10 s");
        // One state a line, each ending with a newline.
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    }
}

fn settings(host: &Host) -> serde_json::Value {
    support::status(host, &host.pin_dir("lxcbr0"))["settings"].clone()
}

/// The age of the link's session: it grows while the same link stays up.
fn handshake_age(host: &Host) -> f64 {
    let s = support::status(host, &host.pin_dir("lxcbr0"));
    assert_eq!(s["peers"][0]["up"], true, "{s}");
    s["peers"][0]["handshake_age_s"].as_f64().unwrap()
}

#[test]
fn under_systemd_the_agent_notifies_ready_pings_the_watchdog_and_reloads_on_sighup_keeping_its_links() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    let (notify_path, config) = (hosts[0].file("notify.sock"), hosts[0].file("lxcbr0.json"));
    let notify = NotifySocket::bind(&notify_path);
    hosts[0].set_env("NOTIFY_SOCKET", notify_path.to_str().unwrap());
    hosts[0].set_env("WATCHDOG_USEC", "1000000");
    let pins = hosts[0].pin_dir("lxcbr0");
    let write = |extra: &str| {
        let base = format!(r#""node_id": "h0", "rendezvous": "{}", "secret": "{SECRET}""#, support::RENDEZVOUS);
        std::fs::write(&config, format!(r#"{{{base}, "pin_dir": {:?}{extra}}}"#, pins.to_str().unwrap())).unwrap();
    };
    write("");
    hosts[0].join_underlay(&underlay, 1);
    let agent = hosts[0].start_agent(&["--config", config.to_str().unwrap()]);
    // READY=1 comes once the agent is attached: the TAP is already a port of the bridge.
    assert!(notify.next().starts_with("READY=1"), "the first notification is READY=1");
    let tap = hosts[0].ip(&["-j", "link", "show", "ipop"]);
    assert!(tap.contains(r#""master":"lxcbr0""#), "{tap}");
    let pings = (0..3).map(|_| notify.message()).filter(|m| m == "WATCHDOG=1").count();
    assert!(pings >= 2, "the watchdog is pinged every half period");
    hosts[1].join_underlay(&underlay, 2);
    hosts[1].start_member("h1", SECRET, &[]);
    eventually_within(20, "the link is up", || hosts[0].link_up());

    // Rates, servers and the log filter change in place; the link stays (its session ages on).
    let age = handshake_age(&hosts[0]);
    write(r#", "broadcast_rate": 50, "stun": ["stun:192.168.77.254:3478"], "log": "debug""#);
    hosts[0].signal_agent(agent, libc::SIGHUP);
    assert!(notify.next().starts_with("RELOADING=1"));
    assert!(notify.next().starts_with("READY=1"));
    let s = settings(&hosts[0]);
    assert_eq!((s["broadcast_rate"].as_u64(), s["log"].as_str()), (Some(50), Some("debug")), "{s}");
    assert_eq!(s["ice_servers"], serde_json::json!(["stun:192.168.77.254:3478"]));
    thread::sleep(Duration::from_secs(1));
    assert!(handshake_age(&hosts[0]) > age + 0.9, "the same session: no link was dropped");
    let log = hosts[0].agent_log(agent);
    let before = log.split_once("config reloaded: applied, links kept").expect(&log).0;
    assert!(!before.contains("DEBUG"), "no debug lines before the reload:\n{before}");
    eventually_within(5, "debug lines after the reload", || {
        hosts[0].agent_log(agent).split_once("config reloaded").is_some_and(|(_, after)| after.contains("DEBUG"))
    });
    let out = hosts[0].in_container(0, &["ping", "-c", "2", "-W", "2", "10.0.3.20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Another bridge needs a restart: refused, said, and the agent runs on as it was.
    write(r#", "bridge": "lxcbr9", "broadcast_rate": 7"#);
    hosts[0].signal_agent(agent, libc::SIGHUP);
    assert!(notify.next().starts_with("RELOADING=1") && notify.next().starts_with("READY=1"));
    let log = hosts[0].agent_log(agent);
    assert!(log.contains("config reload refused: bridge can only change with a restart"), "{log}");
    assert_eq!(settings(&hosts[0])["broadcast_rate"], 50, "nothing of a refused reload is applied");
    // A config that does not parse: refused too.
    std::fs::write(&config, "{ not json").unwrap();
    hosts[0].signal_agent(agent, libc::SIGHUP);
    assert!(notify.next().starts_with("RELOADING=1") && notify.next().starts_with("READY=1"));
    assert!(hosts[0].agent_log(agent).contains("invalid config"), "{}", hosts[0].agent_log(agent));
    assert!(hosts[0].link_up(), "still linked");

    assert_eq!(hosts[0].stop_agent(agent, libc::SIGTERM), Some(0));
    assert_eq!(notify.next(), "STOPPING=1");
}
