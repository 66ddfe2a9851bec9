//! Prometheus metrics, collected at scrape time: a scrape asks the agent's loop for its status
//! (the same counters `status` shows, not a second copy) and a `Collector` writes them in the
//! Prometheus text format with prometheus-client.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde_json::Value;

/// The agent's status at one scrape.
#[derive(Debug)]
struct Scrape(Value);

/// Counters of the whole agent: (metric, help, where in `status`).
const AGENT_COUNTERS: [(&str, &str, &[&str]); 18] = [
    ("ipop_arp_events", "ARP frames the programs reported to the agent", &["switch", "events"]),
    ("ipop_arp_rpc_sent", "ARP and ND RPCs sent to peers", &["switch", "rpc_sent"]),
    ("ipop_arp_rpc_received", "ARP and ND RPCs received from peers", &["switch", "rpc_received"]),
    ("ipop_arp_rpc_limited", "ARP RPCs not sent: their source exceeded its rate", &["switch", "rpc_limited"]),
    ("ipop_hosts_announced", "local hosts announced to peers", &["switch", "announced"]),
    ("ipop_hosts_moved", "hosts that moved between bridges with their IP and MAC", &["switch", "moves"]),
    (
        "ipop_arp_conflicts",
        "claims of an address another host has (IPv4 and IPv6, duplicate address detection included)",
        &["switch", "conflicts"],
    ),
    ("ipop_claims_refused", "claims outside what the peer's certificate allows", &["switch", "claims_refused"]),
    ("ipop_storm_dropped", "broadcast frames not flooded (storm control)", &["switch", "storm_dropped"]),
    ("ipop_queue_drops", "datagrams not queued: a link's queue was full", &["queue_drops"]),
    ("ipop_kernel_arp_seen", "ARP frames the programs saw", &["kernel", "seen"]),
    ("ipop_kernel_arp_answered", "ARP requests answered in the kernel", &["kernel", "answered"]),
    ("ipop_kernel_nd_seen", "IPv6 neighbour solicitations and advertisements the programs saw", &["kernel", "nd_seen"]),
    ("ipop_kernel_nd_answered", "IPv6 neighbour solicitations answered in the kernel", &["kernel", "nd_answered"]),
    ("ipop_kernel_events_lost", "events lost: the ring buffer was full", &["kernel", "events_lost"]),
    ("ipop_kernel_malformed", "malformed ARP frames", &["kernel", "malformed"]),
    ("ipop_frames_to_peers", "frames the switch sent to peers", &["switch", "frames_to_peers"]),
    ("ipop_frames_from_peers", "frames the switch took from peers", &["switch", "frames_from_peers"]),
];

/// What was refused, by reason: (label, where in `status`).
const REFUSED: [(&str, &str); 6] = [
    ("datagram", "datagrams_refused"),
    ("unknown_datagram", "datagrams_unknown"),
    ("signal", "signals_refused"),
    ("rpc", "rpc_refused"),
    ("frame", "frames_dropped"),
    ("frame_from_peer", "frames_refused"),
];

/// Per peer counters: (metric, help, key in a peer of `status`).
const PEER_COUNTERS: [(&str, &str, &str); 5] = [
    ("ipop_peer_rx_bytes", "bytes of whole frames received from the peer", "rx_bytes"),
    ("ipop_peer_tx_bytes", "bytes of whole frames sent to the peer", "tx_bytes"),
    ("ipop_peer_rx_frames", "whole frames received from the peer", "rx_frames"),
    ("ipop_peer_tx_frames", "whole frames sent to the peer", "tx_frames"),
    ("ipop_peer_rekeys", "handshakes that renewed the link's keys", "rekeys"),
];

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        self.info(&mut e)?;
        for (name, help, path) in AGENT_COUNTERS {
            counter(&mut e, name, help, at(s, path).as_u64().unwrap_or(0))?;
        }
        let mut m =
            e.encode_descriptor("ipop_refused", "what was refused, by what it was", None, MetricType::Counter)?;
        for (what, key) in REFUSED {
            let value = s[key].as_u64().or_else(|| s["switch"][key].as_u64()).unwrap_or(0);
            ConstCounter::new(value).encode(m.encode_family(&[("what", what)])?)?;
        }
        let up = u64::from(s["signaling"]["up"] == true);
        let g = ConstGauge::new(up as i64);
        g.encode(e.encode_descriptor("ipop_signaling_up", "1 while signaling is reachable", None, g.metric_type())?)?;
        self.peers(&mut e)
    }
}

impl Scrape {
    /// Which agent this is, as labels (two overlays on one host are two agents).
    fn info(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let label = |k: &str| self.0[k].as_str().unwrap_or("").to_owned();
        let labels = [("overlay", label("overlay")), ("node_id", label("node_id")), ("bridge", label("bridge"))];
        let mut m = e.encode_descriptor("ipop_agent", "which agent this is (always 1)", None, MetricType::Gauge)?;
        ConstGauge::new(1).encode(m.encode_family(&labels)?)
    }

    fn peers(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let peers: Vec<&Value> = self.0["peers"].as_array().into_iter().flatten().collect();
        let name = |p: &Value| p["node_id"].as_str().unwrap_or("?").to_owned();
        for (metric, help, key) in PEER_COUNTERS {
            let mut m = e.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for p in &peers {
                ConstCounter::new(p[key].as_u64().unwrap_or(0)).encode(m.encode_family(&[("peer", name(p))])?)?;
            }
        }
        let mut up = e.encode_descriptor("ipop_peer_up", "1 while the link is up, by path", None, MetricType::Gauge)?;
        for p in &peers {
            let path = p["path"].as_str().unwrap_or("none").to_owned();
            let labels = [("peer", name(p)), ("path", path)];
            ConstGauge::new(i64::from(p["up"] == true)).encode(up.encode_family(&labels)?)?;
        }
        let mut rtt = e.encode_descriptor("ipop_peer_rtt_seconds", "the path's round trip", None, MetricType::Gauge)?;
        for p in peers.iter().filter(|p| p["rtt_ms"].is_f64()) {
            let seconds = p["rtt_ms"].as_f64().unwrap_or(0.0) / 1000.0;
            ConstGauge::new(seconds).encode(rtt.encode_family(&[("peer", name(p))])?)?;
        }
        Ok(())
    }
}

/// The agent's status (`status` of the control socket) in the Prometheus text format.
pub fn render(status: Value) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(status)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a string");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_becomes_counters_and_gauges_by_peer() {
        let text = render(json!({
            "switch": {"events": 7, "rpc_sent": 3, "frames_refused": 1},
            "kernel": {"answered": 5, "events_lost": 0},
            "datagrams_refused": 2, "signals_refused": 0,
            "signaling": {"up": true},
            "peers": [
                {"node_id": "h1", "up": true, "path": "direct", "rtt_ms": 0.5, "rx_bytes": 100, "tx_frames": 4, "rekeys": 1},
                {"node_id": "h2", "up": false, "path": null}
            ]
        }));
        for line in [
            "# TYPE ipop_arp_events_total counter",
            "ipop_arp_events_total 7",
            "ipop_arp_rpc_sent_total 3",
            "ipop_kernel_arp_answered_total 5",
            "ipop_refused_total{what=\"datagram\"} 2",
            "ipop_refused_total{what=\"frame_from_peer\"} 1",
            "ipop_signaling_up 1",
            "ipop_peer_rx_bytes_total{peer=\"h1\"} 100",
            "ipop_peer_tx_frames_total{peer=\"h1\"} 4",
            "ipop_peer_up{peer=\"h1\",path=\"direct\"} 1",
            "ipop_peer_up{peer=\"h2\",path=\"none\"} 0",
            "ipop_peer_rtt_seconds{peer=\"h1\"} 0.0005",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert!(!text.contains("ipop_peer_rtt_seconds{peer=\"h2\"}"), "no round trip for a link that is down");
    }
}
