//! What `arp`, `nd`, `stats` and `status` print: the pinned maps of a running agent, and what it says
//! on its control socket, as text for people or JSON.

use anyhow::{Result, bail};
use ipop_common::maps::{ENTRY_STALE, ENTRY_STATIC};
use serde_json::Value;

use crate::{
    cli::args::TableCommand,
    core::addr::Mac,
    kernel::maps::{Family, Pinned, monotonic_ns, stats_rows},
};

/// `arp list | add | del` and `nd list | add | del`: `family` is which table.
pub fn table(pinned: Pinned, family: Family, command: TableCommand) -> Result<()> {
    if let TableCommand::Add { ip, .. } | TableCommand::Del { ip } = command
        && Family::of(ip) != family
    {
        let (_, right) = Family::of(ip).names();
        bail!("{ip} belongs in {}: use `ipop-agent {right} ...`", Family::of(ip).names().0);
    }
    match command {
        TableCommand::List { json } => {
            let now = monotonic_ns();
            let entries = pinned.list(family)?;
            if json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(ip, e)| {
                        serde_json::json!({
                            "ip": ip.to_string(),
                            "mac": Mac(e.mac).to_string(),
                            "static": e.flags & ENTRY_STATIC != 0,
                            "stale": e.flags & ENTRY_STALE != 0,
                            "age_secs": now.saturating_sub(e.updated_ns) / 1_000_000_000,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let width = if family == Family::V4 { 15 } else { 39 };
                println!("{:<width$}  {:<17}  {:<6}  {:>8}", "IP", "MAC", "FLAGS", "AGE(s)");
                for (ip, e) in entries {
                    let flags = match (e.flags & ENTRY_STATIC != 0, e.flags & ENTRY_STALE != 0) {
                        (_, true) => "stale",
                        (true, false) => "static",
                        (false, false) => "",
                    };
                    let age = now.saturating_sub(e.updated_ns) / 1_000_000_000;
                    println!("{:<width$}  {:<17}  {:<6}  {:>8}", ip.to_string(), Mac(e.mac).to_string(), flags, age);
                }
            }
        }
        TableCommand::Add { ip, mac } => {
            pinned.add(ip, mac)?;
            println!("{ip} is-at {mac} (static)");
        }
        TableCommand::Del { ip } => {
            pinned.del(ip)?;
            println!("{ip} removed");
        }
    }
    Ok(())
}

/// `stats`: the programs' counters, summed over CPUs.
pub fn stats(pinned: Pinned, json: bool) -> Result<()> {
    let rows = stats_rows(&pinned.stats()?);
    if json {
        let obj: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        for (k, v) in rows {
            println!("{k:<12} {v}");
        }
    }
    Ok(())
}

/// `status` for people: the agent, then each peer in a block, as `wg show` does.
pub fn status_text(s: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "node: {}  overlay: {}  bridge: {} (tap {})\n",
        text(&s["node_id"]),
        text(&s["overlay"]),
        text(&s["bridge"]),
        text(&s["tap"])
    );
    let signaling = &s["signaling"];
    if !s["signaling_service"].is_null() {
        let state =
            if signaling["up"] == true { "up".to_owned() } else { format!("down: {}", text(&signaling["reason"])) };
        out += &format!("signaling: {} ({state})\n", text(&s["signaling_service"]));
    }
    let port = s["data_port"].as_u64().map_or("none".into(), |p| p.to_string());
    out += &format!("data port: {port}  public address: {}\n", text(&s["public_address"]));
    for p in s["peers"].as_array().into_iter().flatten() {
        out += &peer_text(p);
    }
    out
}

fn peer_text(p: &Value) -> String {
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let mut out = format!("\npeer: {}\n", text(&p["node_id"]));
    if p["up"] != true {
        out += "  state: down\n";
        out += &format!("  why: {}\n", text(&p["reason"]));
        return out;
    }
    out += &format!("  state: up, path: {}\n", text(&p["path"]));
    out += &format!("  endpoint: {}\n", text(&p["endpoint"]));
    out += &format!("  candidates: {} -> {}\n", text(&p["local_candidate"]), text(&p["remote_candidate"]));
    if let Some(rtt) = p["rtt_ms"].as_f64() {
        out += &format!("  round trip: {rtt:.2} ms\n");
    }
    let ago = |v: &Value| v.as_f64().map_or("never".into(), |s| format!("{s:.1} s ago"));
    let rekeys = p["rekeys"].as_u64().unwrap_or(0);
    out += &format!("  latest handshake: {} ({rekeys} rekeys)\n", ago(&p["handshake_age_s"]));
    out += &format!("  last heard: {}\n", ago(&p["heard_age_s"]));
    let amount = |bytes: &Value, frames: &Value| {
        format!("{} ({} frames)", human_bytes(bytes.as_u64().unwrap_or(0)), frames.as_u64().unwrap_or(0))
    };
    out += &format!(
        "  transfer: {} received, {} sent\n",
        amount(&p["rx_bytes"], &p["rx_frames"]),
        amount(&p["tx_bytes"], &p["tx_frames"])
    );
    let hosts: Vec<String> = p["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| format!("{} ({})", text(&h["ip"]), text(&h["mac"])))
        .collect();
    out += &format!("  hosts: {}\n", if hosts.is_empty() { "none learned yet".into() } else { hosts.join(", ") });
    out
}

/// Bytes as people read them: B, KiB, MiB, GiB.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < units.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.2} {}", units[unit]) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_status_text_says_what_each_peer_is_doing_and_why_one_is_down() {
        let s = json!({
            "node_id": "h0", "overlay": "lab", "bridge": "lxcbr0", "tap": "ipop",
            "signaling_service": "rendezvous 192.0.2.1:7000", "signaling": {"up": true},
            "data_port": 40000, "public_address": "203.0.113.2:41000",
            "peers": [
                {"node_id": "h1", "up": true, "path": "direct", "endpoint": "192.0.2.2:40000",
                 "local_candidate": "host 192.0.2.1:5000", "remote_candidate": "host 192.0.2.2:5000",
                 "rtt_ms": 0.42, "handshake_age_s": 63.0, "heard_age_s": 0.3, "rekeys": 2,
                 "rx_bytes": 1_258_291, "rx_frames": 120, "tx_bytes": 300, "tx_frames": 3,
                 "hosts": [{"ip": "10.0.3.20", "mac": "02:00:00:00:00:02"}]},
                {"node_id": "h2", "up": false, "reason": "ICE gave up: 1 pairs checked, none connected"}
            ]
        });
        let t = status_text(&s);
        for line in [
            "node: h0  overlay: lab  bridge: lxcbr0 (tap ipop)",
            "signaling: rendezvous 192.0.2.1:7000 (up)",
            "data port: 40000  public address: 203.0.113.2:41000",
            "peer: h1\n  state: up, path: direct\n  endpoint: 192.0.2.2:40000",
            "  candidates: host 192.0.2.1:5000 -> host 192.0.2.2:5000",
            "  round trip: 0.42 ms",
            "  latest handshake: 63.0 s ago (2 rekeys)",
            "  transfer: 1.20 MiB (120 frames) received, 300 B (3 frames) sent",
            "  hosts: 10.0.3.20 (02:00:00:00:00:02)",
            "peer: h2\n  state: down\n  why: ICE gave up: 1 pairs checked, none connected",
        ] {
            assert!(t.contains(line), "{line:?} not in:\n{t}");
        }
    }
}
