//! Operating agents as people run them: Prometheus metrics scraped while traffic crosses
//! (checked by promtool, the Debian package prometheus's). Needs root.

mod support;

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
