//! Ping's latency tail: ipop beside tinc (and VXLAN, the kernel's own path, for reference) on
//! the main benchmark's two hosts. `cargo xtask bench --tail` runs only this: `--runs` rounds,
//! each overlay in turn within a round (so all see the same machine), `PINGS` pings each; per
//! round each overlay's median, p99 and p99.9, and a histogram of all rounds. The main
//! benchmark uses the same histogram for its own pings.

use std::{fs, path::Path};

use anyhow::Result;
use serde_json::{Value, json};

use crate::bench::{self, Path2, percentile};

/// Pings per overlay per round, one every 5 ms (10 s): enough that p99.9 is not one sample.
const PINGS: u32 = 2000;
/// Upper edges of the histogram's buckets, in microseconds (the last bucket has none).
const EDGES: [f64; 10] = [50.0, 100.0, 150.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0];

/// Rounds of pings through each overlay in turn; the figures, printed and in
/// target/bench/tail.json.
pub fn run(agent: &Path, runs: usize) -> Result<()> {
    ipop_lab::set_agent(agent);
    let mut lab = bench::Lab::new();
    let path = Path2::containers(&lab.hosts, "10.0.3.20");
    let tinc = lab.tinc_config()?;
    let mut rounds: Vec<Value> = Vec::new();
    let mut all: [(&str, Vec<f64>); 3] = [("ipop", vec![]), ("tinc", vec![]), ("vxlan", vec![])];
    for round in 1..=runs {
        eprintln!("bench: tail round {round}/{runs}");
        let pin = lab.hosts[0].pin_dir("lxcbr0");
        let ((ipop, ipop_path), ipop_cpu) = lab.with_ipop(agent, || {
            let rtt = bench::ping_us(&path, PINGS)?;
            Ok((rtt, data_path(agent, &pin)?))
        })?;
        let (tinc, tinc_cpu) = lab.with_tinc(&tinc, || bench::ping_us(&path, PINGS))?;
        let vxlan = lab.with_vxlan(|| bench::ping_us(&path, PINGS))?;
        let (mut i, mut t) = (summary(&ipop), summary(&tinc));
        // Both daemons' CPU per round trip (each ping crosses each of them twice).
        i["cpu_us_per_ping"] = json!(ipop_cpu * 1e6 / PINGS as f64);
        i["path"] = json!(ipop_path);
        t["cpu_us_per_ping"] = json!(tinc_cpu * 1e6 / PINGS as f64);
        rounds.push(json!({"ipop": i, "tinc": t, "vxlan": summary(&vxlan)}));
        for ((_, into), v) in all.iter_mut().zip([ipop, tinc, vxlan]) {
            into.extend(v);
        }
    }
    let text = format!("{}\n{}", rounds_table(&rounds), histogram(&all));
    println!("{text}");
    let out = crate::root().join("target/bench");
    fs::create_dir_all(&out)?;
    fs::write(out.join("tail.json"), serde_json::to_string_pretty(&json!({"pings": PINGS, "rounds": rounds}))?)?;
    eprintln!("bench: wrote target/bench/tail.json");
    Ok(())
}

/// The path host 0's link takes, as its agent's status says (`direct`: the data socket).
fn data_path(agent: &Path, pin: &Path) -> Result<String> {
    let out = std::process::Command::new(agent).args(["status", "--json", "--pin-dir"]).arg(pin).output()?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    Ok(status["peers"][0]["path"].as_str().unwrap_or("none").to_owned())
}

/// Median, p99, p99.9 and the largest of round trips (µs).
pub fn summary(rtt: &[f64]) -> Value {
    let p = |q| percentile(rtt.to_vec(), q);
    json!({"n": rtt.len(), "median_us": p(50.0), "p99_us": p(99.0), "p999_us": p(99.9), "max_us": p(100.0)})
}

/// One row per round: each overlay's median / p99 / p99.9, and whether ipop's p99 is at or
/// below tinc's.
pub fn rounds_table(rounds: &[Value]) -> String {
    let mut t = String::from(
        "| round | ipop median / p99 / p99.9 (us) | tinc | VXLAN | ipop p99 at or below tinc's | ipop's path | daemons' CPU per ping, ipop / tinc (us) |\n|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        let cell = |m: &str| {
            let f = |k: &str| bench::fmt(&r[m][k], 0);
            format!("{} / {} / {}", f("median_us"), f("p99_us"), f("p999_us"))
        };
        let met = r["ipop"]["p99_us"].as_f64().zip(r["tinc"]["p99_us"].as_f64()).is_some_and(|(a, b)| a <= b);
        t += &format!(
            "| {} | {} | {} | {} | {} | {} | {} / {} |\n",
            i + 1,
            cell("ipop"),
            cell("tinc"),
            cell("vxlan"),
            if met { "yes" } else { "no" },
            r["ipop"]["path"].as_str().unwrap_or("–"),
            bench::fmt(&r["ipop"]["cpu_us_per_ping"], 0),
            bench::fmt(&r["tinc"]["cpu_us_per_ping"], 0),
        );
    }
    t
}

/// Each overlay's round trips as a share of its pings per bucket.
pub fn histogram(modes: &[(&str, Vec<f64>)]) -> String {
    let mut t = String::from("| round trip |");
    for (name, _) in modes {
        t += &format!(" {name} |");
    }
    t += &format!("\n|---|{}\n", "---|".repeat(modes.len()));
    let mut low = 0.0;
    for upper in EDGES.iter().copied().map(Some).chain([None]) {
        let label = match upper {
            Some(u) => format!("{low:.0}-{u:.0} us"),
            None => format!("{low:.0} us and more"),
        };
        t += &format!("| {label} |");
        for (_, v) in modes {
            let n = v.iter().filter(|&&x| x >= low && upper.is_none_or(|u| x < u)).count();
            t += &format!(" {:.2}% |", 100.0 * n as f64 / v.len().max(1) as f64);
        }
        t += "\n";
        low = upper.unwrap_or(low);
    }
    t
}
