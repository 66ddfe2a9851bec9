//! `cargo xtask simulate`: what one agent pays in an overlay of N hosts, full mesh against the
//! structured ring that ARCHITECTURE.md (Scale) proposes, at sizes one machine cannot hold.
//!
//! The structure is simulated, not estimated: every node's links, every copy of a broadcast,
//! its hops, and what a broadcast still reaches when some nodes have failed and nobody has
//! repaired the ring yet. The costs per link and per copy are the slopes `cargo xtask bench
//! --scale` measured (target/bench/scale.json, else the run BENCHMARKS.md records).
//!
//! The ring: nodes in the order of their ids (every agent knows every member from the
//! rendezvous, so every agent can rank them), each linked to the nodes 1, 2, 4, ... 2^(k-1)
//! places after it (k = ceil(log2 N)), so also to those as many places before it. A broadcast
//! is partitioned along those chords (El-Ansary et al., "Efficient broadcast in structured
//! P2P networks", 2003): the origin gives each chord the stretch of ring up to the next chord,
//! and each receiver does the same within its stretch. Flooding (every node forwards to every
//! link once) is simulated beside it, as the simple alternative.

use std::collections::{BTreeSet, VecDeque};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// The sizes simulated when none are given; 64 is there to check the model against the run.
pub const SIZES: [usize; 4] = [64, 100, 1_000, 10_000];
/// Share of the nodes that fail in the failure rows.
const FAILED: [f64; 2] = [0.01, 0.10];
/// Random failure sets (and origins) per share: the reach reported is their mean and worst.
const TRIALS: u64 = 50;

/// ceil(log2 n): the chords each node keeps.
fn chords(n: usize) -> u32 {
    usize::BITS - (n.max(2) - 1).leading_zeros()
}

/// The nodes linked to rank `r` on a ring of `n`: `r ± 2^j` for each chord j.
pub fn links(n: usize, r: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for j in 0..chords(n) {
        let d = (1usize << j) % n;
        if d != 0 {
            out.insert((r + d) % n);
            out.insert((r + n - d) % n);
        }
    }
    out
}

/// One broadcast's course: per node, the copies it sent and the hop it first heard it at.
#[derive(Debug)]
pub struct Spread {
    pub sent: Vec<usize>,
    pub hops: Vec<Option<u32>>,
}

impl Spread {
    fn new(n: usize, origin: usize) -> Spread {
        let mut hops = vec![None; n];
        hops[origin] = Some(0);
        Spread { sent: vec![0; n], hops }
    }

    /// Nodes that heard it, the origin not counted.
    pub fn reached(&self) -> usize {
        self.hops.iter().filter(|h| h.is_some()).count().saturating_sub(1)
    }

    pub fn copies(&self) -> usize {
        self.sent.iter().sum()
    }

    pub fn max_hops(&self) -> u32 {
        self.hops.iter().flatten().copied().max().unwrap_or(0)
    }

    pub fn mean_hops(&self) -> f64 {
        let h: Vec<u32> = self.hops.iter().flatten().copied().filter(|&h| h > 0).collect();
        h.iter().map(|&h| f64::from(h)).sum::<f64>() / h.len().max(1) as f64
    }
}

/// Partitioned along the chords: a node given the stretch of `len` places after it sends the
/// chord at distance 2^j the stretch from there to the next chord (or to the end of its own).
/// Before the ring is `repaired`, a failed node's chord still gets its copy, lost with its
/// stretch. After, the chord points at the next live node within its stretch (Chord's rule:
/// the first live node at or after the place), which takes the rest of it; the count returned
/// is of the copies sent on such re-pointed chords.
pub fn partitioned(n: usize, origin: usize, failed: &[bool], repaired: bool) -> (Spread, usize) {
    let mut spread = Spread::new(n, origin);
    let mut detours = 0;
    let mut queue = VecDeque::from([(origin, n, 0u32)]);
    while let Some((x, len, hop)) = queue.pop_front() {
        for j in 0..chords(n) {
            let d = 1usize << j;
            if d >= len {
                break;
            }
            let end = (2 * d).min(len);
            let chord = if repaired { (d..end).find(|t| !failed[(x + t) % n]) } else { Some(d) };
            let Some(t) = chord else { continue };
            spread.sent[x] += 1;
            if failed[(x + t) % n] {
                continue;
            }
            detours += usize::from(t != d);
            spread.hops[(x + t) % n] = Some(hop + 1);
            queue.push_back(((x + t) % n, end - t, hop + 1));
        }
    }
    (spread, detours)
}

/// Flooded: a node hearing it the first time sends it on every link but the one it came by.
pub fn flooded(n: usize, origin: usize, failed: &[bool]) -> Spread {
    let mut spread = Spread::new(n, origin);
    let mut queue = VecDeque::from([(origin, None::<usize>, 0u32)]);
    while let Some((x, from, hop)) = queue.pop_front() {
        for to in links(n, x).into_iter().filter(|&t| Some(t) != from) {
            spread.sent[x] += 1;
            if !failed[to] && spread.hops[to].is_none() {
                spread.hops[to] = Some(hop + 1);
                queue.push_back((to, Some(x), hop + 1));
            }
        }
    }
    spread
}

/// splitmix64: a fixed, seeded sequence, so every run simulates the same failures.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An origin and `share` of the other nodes failed, drawn from `seed`.
fn failures(n: usize, share: f64, seed: u64) -> (usize, Vec<bool>) {
    let mut state = seed;
    let origin = (next(&mut state) % n as u64) as usize;
    let mut failed = vec![false; n];
    let want = ((n - 1) as f64 * share).round() as usize;
    let mut down = 0;
    while down < want {
        let r = (next(&mut state) % n as u64) as usize;
        if r != origin && !failed[r] {
            failed[r] = true;
            down += 1;
        }
    }
    (origin, failed)
}

/// With `share` of the nodes failed, over the trials (each failure set drawn once): the share
/// of the live nodes a broadcast reaches partitioned before and after repair and flooded
/// (mean and worst of each), and the copies sent on re-pointed chords after repair (mean).
fn failure_row(n: usize, share: f64) -> Value {
    let (mut before, mut after, mut flood, mut detours) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for t in 0..TRIALS {
        let (origin, failed) = failures(n, share, t + 1);
        let live = (failed.iter().filter(|f| !**f).count() - 1) as f64;
        before.push(partitioned(n, origin, &failed, false).0.reached() as f64 / live);
        let (repaired, d) = partitioned(n, origin, &failed, true);
        after.push(repaired.reached() as f64 / live);
        detours += d;
        flood.push(flooded(n, origin, &failed).reached() as f64 / live);
    }
    let mean_worst = |v: &[f64]| json!([v.iter().sum::<f64>() / v.len() as f64, v.iter().copied().fold(1.0, f64::min)]);
    json!({
        "failed": share,
        "partitioned": mean_worst(&before),
        "repaired": mean_worst(&after),
        "detours": detours as f64 / TRIALS as f64,
        "flooded": mean_worst(&flood),
    })
}

/// What a link and a copy cost, from the measured curve: a value at `peers` is
/// `base + per_peer * peers`.
#[derive(Debug, Clone, PartialEq)]
pub struct Costs {
    pub source: String,
    pub cpu_pct: (f64, f64),
    pub rss_mib: (f64, f64),
    pub bytes_per_s_per_link: f64,
    pub copy_us: f64,
}

/// The run BENCHMARKS.md records (2026-12-03, `--scale 8,16,32,64`): its first and last rows.
const RECORDED: &str = r#"{"date": "2026-12-03", "rows": [
  {"hosts": 8, "idle_cpu_pct_per_agent": 0.07, "rss_mib_per_agent": 14.2, "idle_bytes_per_s_per_link": 179, "broadcast_sender_us": 113},
  {"hosts": 64, "idle_cpu_pct_per_agent": 0.25, "rss_mib_per_agent": 17.0, "idle_bytes_per_s_per_link": 181, "broadcast_sender_us": 753}]}"#;

impl Costs {
    /// The slopes between the first and the last row of a scale run.
    pub fn from_rows(rows: &[Value], source: String) -> Result<Costs> {
        let (Some(a), Some(b)) = (rows.first(), rows.last()) else { bail!("no rows") };
        let f = |r: &Value, k: &str| r[k].as_f64().with_context(|| format!("{k} missing from a scale row"));
        let (pa, pb) = (f(a, "hosts")? - 1.0, f(b, "hosts")? - 1.0);
        if pb <= pa {
            bail!("a scale run of one size has no slope: run `cargo xtask bench --scale 8,16,32,64`");
        }
        let line = |k: &str| -> Result<(f64, f64)> {
            let slope = (f(b, k)? - f(a, k)?) / (pb - pa);
            Ok((f(a, k)? - slope * pa, slope))
        };
        Ok(Costs {
            source,
            cpu_pct: line("idle_cpu_pct_per_agent")?,
            rss_mib: line("rss_mib_per_agent")?,
            bytes_per_s_per_link: f(b, "idle_bytes_per_s_per_link")?,
            copy_us: f(b, "broadcast_sender_us")? / pb,
        })
    }

    /// The latest `--scale` run's, if it has more than one size; else the recorded run's.
    pub fn measured() -> Result<Costs> {
        let path = crate::root().join("target/bench/scale.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v: Value = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            let rows = v["rows"].as_array().cloned().unwrap_or_default();
            if rows.len() > 1 {
                return Costs::from_rows(&rows, format!("{} ({} sizes)", path.display(), rows.len()));
            }
        }
        let v: Value = serde_json::from_str(RECORDED).expect("valid recorded run");
        Costs::from_rows(v["rows"].as_array().expect("rows"), format!("BENCHMARKS.md, Scale, run of {}", v["date"]))
    }

    fn at(line: (f64, f64), peers: usize) -> f64 {
        line.0 + line.1 * peers as f64
    }
}

/// One size: the full mesh's and the ring's figures per agent.
pub fn one(n: usize, costs: &Costs) -> Value {
    let none = vec![false; n];
    let ring_links = links(n, 0).len();
    let (part, _) = partitioned(n, 0, &none, false);
    let flood = flooded(n, 0, &none);
    let per_agent = |peers: usize| {
        json!({
            "links": peers,
            "idle_cpu_pct": Costs::at(costs.cpu_pct, peers),
            "rss_mib": Costs::at(costs.rss_mib, peers),
            "idle_bytes_per_s": costs.bytes_per_s_per_link * peers as f64,
        })
    };
    let failures: Vec<Value> = FAILED.iter().map(|&share| failure_row(n, share)).collect();
    json!({
        "hosts": n,
        "mesh": per_agent(n - 1),
        "ring": per_agent(ring_links),
        "broadcast": {
            "mesh": {"origin_copies": n - 1, "origin_us": costs.copy_us * (n - 1) as f64, "copies": n - 1, "max_hops": 1},
            "partitioned": spread_json(&part, 0, costs),
            "flooded": spread_json(&flood, 0, costs),
        },
        "failures": failures,
    })
}

fn spread_json(s: &Spread, origin: usize, costs: &Costs) -> Value {
    json!({
        "origin_copies": s.sent[origin],
        "origin_us": costs.copy_us * s.sent[origin] as f64,
        "copies": s.copies(),
        "most_copies_one_node": s.sent.iter().max(),
        "reached": s.reached(),
        "max_hops": s.max_hops(),
        "mean_hops": s.mean_hops(),
    })
}

/// The rows as markdown tables.
pub fn table(rows: &[Value], costs: &Costs) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut out = format!("Costs per link and per copy from {}.\n\n", costs.source);
    out += "| hosts | links an agent keeps: mesh, ring | idle CPU an agent: mesh, ring | idle bytes/s an agent: mesh, ring | RSS an agent: mesh, ring |\n|---|---|---|---|---|\n";
    for r in rows {
        let (m, g) = (&r["mesh"], &r["ring"]);
        out += &format!(
            "| {} | {}, {} | {:.2}%, {:.2}% | {:.0}, {:.0} | {:.1}, {:.1} MiB |\n",
            r["hosts"],
            m["links"],
            g["links"],
            f(&m["idle_cpu_pct"]),
            f(&g["idle_cpu_pct"]),
            f(&m["idle_bytes_per_s"]),
            f(&g["idle_bytes_per_s"]),
            f(&m["rss_mib"]),
            f(&g["rss_mib"]),
        );
    }
    out += "\n| hosts | one broadcast, mesh: copies (all from the origin), origin CPU | ring, partitioned: copies in all, the origin's, most any node sends, origin CPU, hops max/mean | ring, flooded: copies in all, hops max/mean |\n|---|---|---|---|\n";
    for r in rows {
        let (m, p, fl) = (&r["broadcast"]["mesh"], &r["broadcast"]["partitioned"], &r["broadcast"]["flooded"]);
        out += &format!(
            "| {} | {}, {:.2} ms | {}, {}, {}, {:.3} ms, {}/{:.1} | {}, {}/{:.1} |\n",
            r["hosts"],
            m["copies"],
            f(&m["origin_us"]) / 1e3,
            p["copies"],
            p["origin_copies"],
            p["most_copies_one_node"],
            f(&p["origin_us"]) / 1e3,
            p["max_hops"],
            f(&p["mean_hops"]),
            fl["copies"],
            fl["max_hops"],
            f(&fl["mean_hops"]),
        );
    }
    out += &format!(
        "\n| hosts | nodes failed | live nodes a broadcast reaches, partitioned, before the ring is repaired: mean, worst of {TRIALS} | after: mean, worst; copies on re-pointed chords | flooded: mean, worst |\n|---|---|---|---|---|\n"
    );
    for r in rows {
        for x in r["failures"].as_array().into_iter().flatten() {
            let pct = |k: &str, i: usize| 100.0 * f(&x[k][i]);
            out += &format!(
                "| {} | {:.0}% | {:.1}%, {:.1}% | {:.1}%, {:.1}%; {:.1} | {:.1}%, {:.1}% |\n",
                r["hosts"],
                100.0 * f(&x["failed"]),
                pct("partitioned", 0),
                pct("partitioned", 1),
                pct("repaired", 0),
                pct("repaired", 1),
                f(&x["detours"]),
                pct("flooded", 0),
                pct("flooded", 1),
            );
        }
    }
    out
}

/// `cargo xtask simulate [--hosts ...]`: prints the tables.
pub fn run(sizes: &[usize]) -> Result<()> {
    if let Some(bad) = sizes.iter().find(|&&n| !(2..=100_000).contains(&n)) {
        bail!("--hosts takes 2 to 100000 hosts, not {bad}");
    }
    let costs = Costs::measured()?;
    let rows: Vec<Value> = sizes.iter().map(|&n| one(n, &costs)).collect();
    println!("{}", table(&rows, &costs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_broadcast_reaches_every_node_once_in_log_hops() {
        for n in [2, 3, 7, 16, 100, 1000, 1025] {
            let (s, _) = partitioned(n, 3 % n, &vec![false; n], false);
            assert_eq!(s.reached(), n - 1, "{n} nodes: all reached");
            assert_eq!(s.copies(), n - 1, "{n} nodes: one copy each, none twice");
            // A node hears it after one hop per 1 bit of its distance from the origin.
            let most = (1..n).map(|d| d.count_ones()).max().unwrap();
            assert_eq!(s.max_hops(), most, "{n} nodes");
            assert!(most <= chords(n));
            assert!(s.sent.iter().all(|&c| c <= chords(n) as usize));
            assert_eq!(s.sent[3 % n], chords(n) as usize, "the origin sends one copy a chord");
        }
    }

    #[test]
    fn a_ring_node_keeps_twice_its_chords_less_those_that_meet() {
        assert_eq!(links(1000, 0).len(), 20);
        assert_eq!(links(1000, 0), links(1000, 500).iter().map(|r| (r + 500) % 1000).collect());
        // 16 places: +8 and -8 are one node, and +1.. +4 / -1.. -4 are the rest.
        assert_eq!(links(16, 0).len(), 7);
        assert_eq!(links(2, 0), BTreeSet::from([1]));
    }

    #[test]
    fn flooding_reaches_all_but_sends_a_copy_down_nearly_every_link() {
        let n = 1000;
        let s = flooded(n, 0, &vec![false; n]);
        assert_eq!(s.reached(), n - 1);
        // Every node forwards on all links but one: 20 a node, 19 after the origin.
        assert_eq!(s.copies(), 20 + 19 * (n - 1));
        assert!(s.max_hops() <= chords(n));
    }

    #[test]
    fn a_failed_node_takes_its_stretch_with_it_when_partitioned_but_not_when_flooded() {
        let n = 16;
        let mut failed = vec![false; n];
        failed[8] = true; // the origin's last chord: it had places 8 to 15
        assert_eq!(partitioned(n, 0, &failed, false).0.reached(), 7, "places 1 to 7 only");
        assert_eq!(flooded(n, 0, &failed).reached(), 14, "every live node");
    }

    #[test]
    fn once_repaired_the_ring_reaches_every_live_node_once() {
        let n = 1000;
        for seed in 1..20 {
            let (origin, failed) = failures(n, 0.1, seed);
            let (s, detours) = partitioned(n, origin, &failed, true);
            assert_eq!(s.reached(), n - 1 - 100, "seed {seed}: every live node");
            assert_eq!(s.copies(), s.reached(), "seed {seed}: none twice, none to the failed");
            assert!(detours > 0 && detours < s.copies());
            assert!(s.hops.iter().zip(&failed).all(|(h, f)| !(h.is_some() && *f)));
        }
        assert_eq!(partitioned(16, 0, &[false; 16], true).1, 0, "nothing failed: no detours");
    }

    #[test]
    fn failures_are_the_share_asked_for_and_never_the_origin() {
        let (origin, failed) = failures(1000, 0.1, 7);
        assert_eq!(failed.iter().filter(|f| **f).count(), 100);
        assert!(!failed[origin]);
        assert_eq!(failures(1000, 0.1, 7), (origin, failed), "seeded: the same every run");
    }

    #[test]
    fn the_costs_are_the_line_through_the_first_and_last_sizes() {
        let v: Value = serde_json::from_str(RECORDED).unwrap();
        let c = Costs::from_rows(v["rows"].as_array().unwrap(), "test".into()).unwrap();
        assert!((Costs::at(c.cpu_pct, 7) - 0.07).abs() < 1e-9);
        assert!((Costs::at(c.cpu_pct, 63) - 0.25).abs() < 1e-9);
        assert!((Costs::at(c.rss_mib, 63) - 17.0).abs() < 1e-9);
        assert!((c.copy_us - 753.0 / 63.0).abs() < 1e-9);
        let one = [v["rows"][0].clone()];
        assert!(Costs::from_rows(&one, "test".into()).is_err(), "one size has no slope");
    }

    #[test]
    fn the_full_mesh_row_at_64_gives_back_what_the_run_measured() {
        let v: Value = serde_json::from_str(RECORDED).unwrap();
        let c = Costs::from_rows(v["rows"].as_array().unwrap(), "test".into()).unwrap();
        let row = one(64, &c);
        assert_eq!(row["mesh"]["links"], 63);
        assert!((row["mesh"]["idle_cpu_pct"].as_f64().unwrap() - 0.25).abs() < 1e-9);
        assert!((row["broadcast"]["mesh"]["origin_us"].as_f64().unwrap() - 753.0).abs() < 1e-6);
        assert_eq!(row["ring"]["links"], 11, "+-1, 2, 4, 8, 16 and 32 once");
    }
}
