//! The NAT rows of `cargo xtask bench`: ipop between two hosts on the lab's internet (the
//! rendezvous and coturn there), in turn public (no NAT), behind home routers with cone NATs
//! (a direct path), and behind symmetric NATs (through coturn's relay); beside coturn relaying
//! a plain UDP flow (`turnflood.py`: ChannelData as fast as one core sends it), which says what
//! the relay itself carries on this machine, so the relayed row can be judged.

use std::{thread, time::Duration};

use anyhow::{Context as _, Result};
use ipop_lab::{Host, Nat, Router, Underlay};
use serde_json::{Value, json};

use crate::{
    bench::{Options, Path2, SECRET, cpu_seconds, fmt, iperf_tcp, median, percentile, ping_us, ratio, start_agents},
    sh, wait_for,
};

const TURN_USER: &str = "ipop";
const TURN_PASSWORD: &str = "bench turn 0123";

/// One way of placing the two hosts.
struct Case {
    key: &'static str,
    /// The NAT in front of each host (none: both public), and whether it is a home router.
    nat: Option<(Nat, bool)>,
    /// The path the link must take for the row to mean what it says.
    path: &'static str,
}

const CASES: [Case; 4] = [
    Case { key: "no_nat", nat: None, path: "direct" },
    Case { key: "routed", nat: Some((Nat::Routed, false)), path: "direct" },
    Case { key: "cone", nat: Some((Nat::Cone, true)), path: "direct" },
    Case { key: "symmetric", nat: Some((Nat::Symmetric, false)), path: "relay" },
];

/// Every case, and coturn's own plain UDP flow; one JSON object by key.
pub fn run(agent: &str, opts: &Options) -> Result<Value> {
    let mut internet = Underlay::internet();
    internet.start_rendezvous(SECRET);
    let turn = internet.start_turn(TURN_USER, TURN_PASSWORD);
    let coturn = internet.service(turn).pid();
    let mut out = serde_json::Map::new();
    // Each case plugs in at its own addresses (the internet's ports of the last case may
    // outlive its namespaces for a moment: the kernel frees them in the background).
    for (i, case) in CASES.iter().enumerate() {
        eprintln!("bench: ipop, {}", case.key);
        out.insert(case.key.into(), one_case(&internet, case, 2 * i as u8 + 1, agent, opts, coturn)?);
    }
    eprintln!("bench: coturn relaying a plain UDP flow");
    out.insert("coturn_udp".into(), coturn_plain_udp(&internet, opts, coturn)?);
    Ok(Value::Object(out))
}

/// Two hosts placed as `case` says, at internet addresses `n` and `n + 1`, their agents
/// linked on the expected path; TCP (with the sending agent's and coturn's CPU, and what
/// coturn dropped) and ping, the median over runs.
fn one_case(internet: &Underlay, case: &Case, n: u8, agent: &str, opts: &Options, coturn: u32) -> Result<Value> {
    let routers: Vec<Router> = match case.nat {
        None => Vec::new(),
        Some((kind, true)) => [n, n + 1].map(|n| Router::home(internet, n, kind)).into(),
        Some((kind, false)) => [n, n + 1].map(|n| Router::new(internet, n, kind)).into(),
    };
    if let [a, b] = &routers[..]
        && a.kind == Nat::Routed
    {
        a.route_to(b);
        b.route_to(a);
    }
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        match routers.get(i) {
            Some(r) => h.behind(r),
            None => h.join_underlay(internet, n + i as u8),
        };
    }
    let (stun, turn) = internet.ice_urls(TURN_USER, TURN_PASSWORD);
    let (procs, pins) = start_agents(&mut hosts, agent, &internet.rendezvous(), &["--stun", &stun, "--turn", &turn])?;
    for pin in &pins {
        wait_for(&format!("path {} ({})", case.path, case.key), 30, || Ok(path(agent, pin)? == case.path))?;
    }
    let p = Path2::containers(&hosts, "10.0.3.20");
    let sender = hosts[0].service(procs[0]).pid();
    let mut m = [(); 5].map(|_| Vec::new()); // TCP, agent CPU, coturn CPU, coturn drops, RTTs
    for _ in 0..opts.runs {
        let (a0, c0, d0) = (cpu_seconds(sender)?, cpu_seconds(coturn)?, udp_rcvbuf_errors(&internet.ns)?);
        m[0].push(iperf_tcp(&p, 1, opts.seconds)? / 1e9);
        m[1].push(100.0 * (cpu_seconds(sender)? - a0) / f64::from(opts.seconds));
        m[2].push(100.0 * (cpu_seconds(coturn)? - c0) / f64::from(opts.seconds));
        m[3].push(udp_rcvbuf_errors(&internet.ns)? - d0);
        m[4].extend(ping_us(&p, 200)?);
    }
    let [tcp, agent_cpu, coturn_cpu, drops, rtt] = m;
    Ok(json!({
        "path": case.path,
        "tcp_1_gbps": median(tcp),
        "rtt_median_us": median(rtt.clone()),
        "rtt_p99_us": percentile(rtt, 99.0),
        "agent_cpu_pct": median(agent_cpu),
        "coturn_cpu_pct": median(coturn_cpu),
        "coturn_drops": median(drops),
    }))
}

/// Datagrams the kernel dropped in namespace `ns` because a socket's receive buffer was full
/// (`RcvbufErrors` in /proc/net/snmp): in the internet's namespace, coturn falling behind.
fn udp_rcvbuf_errors(ns: &str) -> Result<f64> {
    let snmp = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().context("no Udp line")?, udp.next().context("no Udp values")?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors").context("no RcvbufErrors")?;
    Ok(values.split_whitespace().nth(i).context("short Udp line")?.parse()?)
}

/// The `path` of the first peer in the agent's status.
fn path(agent: &str, pin: &str) -> Result<String> {
    let status: Value = serde_json::from_str(&sh(&[agent, "status", "--json", "--pin-dir", pin])?)?;
    Ok(status["peers"][0]["path"].as_str().unwrap_or_default().to_owned())
}

/// Datagrams of this size (the overlay's data datagrams are at most 1,452 bytes).
const UDP_LEN: &str = "1400";

/// coturn relaying plain UDP: `turnflood.py send` in one public host allocates, binds a
/// channel to `turnflood.py sink` in another, and sends ChannelData as fast as it can; what
/// the sink gets is what the relay carried. With coturn's CPU meanwhile.
fn coturn_plain_udp(internet: &Underlay, opts: &Options, coturn: u32) -> Result<Value> {
    let hosts = [Host::new(&[]), Host::new(&[])];
    let n = 2 * CASES.len() as u8 + 1;
    let addrs: Vec<String> = hosts.iter().enumerate().map(|(i, h)| h.join_underlay(internet, n + i as u8)).collect();
    let script = crate::root().join("xtask/turnflood.py");
    let (script, secs) = (script.to_str().unwrap(), opts.seconds.to_string());
    let (mut rates, mut cpu, mut drops) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        let (c0, d0) = (cpu_seconds(coturn)?, udp_rcvbuf_errors(&internet.ns)?);
        let bytes = thread::scope(|s| -> Result<f64> {
            let sink = s.spawn(|| sh(&["ip", "netns", "exec", &hosts[1].ns, "python3", script, "sink", "5000", &secs]));
            thread::sleep(Duration::from_millis(300));
            let (turn, peer) = (internet.addr.as_str(), addrs[1].as_str());
            sh(&[
                "ip",
                "netns",
                "exec",
                &hosts[0].ns,
                "python3",
                script,
                "send",
                turn,
                TURN_USER,
                TURN_PASSWORD,
                peer,
                "5000",
                &secs,
                UDP_LEN,
            ])?;
            let got = sink.join().map_err(|_| anyhow::anyhow!("the sink panicked"))??;
            got.trim().parse::<f64>().context("turnflood sink output")
        })?;
        cpu.push(100.0 * (cpu_seconds(coturn)? - c0) / f64::from(opts.seconds));
        drops.push(udp_rcvbuf_errors(&internet.ns)? - d0);
        rates.push(bytes * 8.0 / f64::from(opts.seconds) / 1e9);
    }
    Ok(json!({"udp_gbps": median(rates), "coturn_cpu_pct": median(cpu), "coturn_drops": median(drops)}))
}

/// The "Behind NAT" table and its targets, from `nat` (this module's JSON).
pub fn report(nat: &Value) -> String {
    let row = |key: &str, label: &str| {
        let r = &nat[key];
        let vs = |base: &str| ratio(&r["tcp_1_gbps"], &nat[base]["tcp_1_gbps"]);
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["path"].as_str().unwrap_or("–"),
            fmt(&r["tcp_1_gbps"], 2),
            vs("no_nat"),
            vs("routed"),
            fmt(&r["rtt_median_us"], 0),
            fmt(&r["rtt_p99_us"], 0),
            fmt(&r["agent_cpu_pct"], 0),
            fmt(&r["coturn_cpu_pct"], 0),
            fmt(&r["coturn_drops"], 0),
        )
    };
    let mut t = String::from(
        "| hosts | path | TCP 1 stream (Gbit/s) | vs public | vs routed | ping median (us) | ping p99 (us) | sending agent CPU % | coturn CPU % | coturn drops |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    t += &row("no_nat", "both public, on the internet's bridge");
    t += &row("routed", "both public, each behind a router (no NAT)");
    t += &row("cone", "cone NAT both sides (home routers)");
    t += &row("symmetric", "symmetric NAT both sides");
    let u = &nat["coturn_udp"];
    t += &format!(
        "| coturn alone: a plain UDP flow of 1,400-byte ChannelData | relay | {} | – | – | – | – | – | {} | {} |\n",
        fmt(&u["udp_gbps"], 2),
        fmt(&u["coturn_cpu_pct"], 0),
        fmt(&u["coturn_drops"], 0),
    );
    t + &targets(nat)
}

/// The targets for NAT, judged on the run's own figures.
fn targets(nat: &Value) -> String {
    let get = |case: &str, k: &str| nat[case][k].as_f64();
    let div = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b != 0.0).map(|(a, b)| a / b);
    // The same routers without NAT: what NAT costs, not what the lab's forwarding costs.
    let cone = div(get("cone", "tcp_1_gbps"), get("routed", "tcp_1_gbps"));
    let relay = div(get("symmetric", "tcp_1_gbps"), get("coturn_udp", "udp_gbps"));
    let drops = get("symmetric", "coturn_drops");
    let checks = [
        (
            "TCP through cone NATs at least 0.9x the same routers without NAT",
            cone.map_or("–".into(), |x| format!("{x:.2}x")),
            cone.is_some_and(|x| x >= 0.9),
        ),
        (
            "relayed: the relay, not ipop, is the bottleneck (coturn drops datagrams it cannot take)",
            format!(
                "{} of coturn's plain UDP flow, coturn dropped {}",
                relay.map_or("–".into(), |x| format!("{x:.2}x")),
                fmt(&json!(drops), 0)
            ),
            drops.is_some_and(|d| d > 0.0),
        ),
    ];
    let mut t = String::from("\n| target | this run | met |\n|---|---|---|\n");
    for (name, shown, met) in checks {
        t += &format!("| {name} | {shown} | {} |\n", if met { "yes" } else { "no" });
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_targets_are_judged_on_the_run_s_own_figures() {
        let nat = json!({
            "no_nat": {"tcp_1_gbps": 8.0}, "routed": {"tcp_1_gbps": 7.0}, "cone": {"tcp_1_gbps": 6.65},
            "symmetric": {"tcp_1_gbps": 1.2, "coturn_drops": 1500.0}, "coturn_udp": {"udp_gbps": 1.6},
        });
        let t = targets(&nat);
        assert!(
            t.contains("| TCP through cone NATs at least 0.9x the same routers without NAT | 0.95x | yes |"),
            "{t}"
        );
        assert!(t.contains("| 0.75x of coturn's plain UDP flow, coturn dropped 1500 | yes |"), "{t}");
        let none = targets(&json!({}));
        assert_eq!(none.matches("| no |").count(), 2, "missing figures never count as met: {none}");
    }
}
