//! `cargo xtask bench --scale N,...`: N hosts on the lab's flat underlay, each with bridge
//! lxcbr0 and one container, one rendezvous, every agent started at once. Per N: the time
//! from the last agent's start to the full mesh (every agent logs `link up` for every
//! other), link attempts that failed on the way, then an idle minute's share: agent CPU and
//! RSS, and underlay bytes per link per second.

use std::{
    collections::HashSet,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use ipop_lab::{Host, NeighbourLimits, RENDEZVOUS, Underlay};
use serde_json::{Value, json};

use crate::bench;

const SECRET: &str = "scale secret 0123";
/// Idle time measured, after the links settle.
const IDLE: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(5);

pub fn run(agent: &Path, sizes: &[usize]) -> Result<Value> {
    ipop_lab::set_agent(agent);
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("bench: scale {n} hosts");
        rows.push(one(agent, n)?);
    }
    Ok(Value::Array(rows))
}

/// How a mesh's agents meet.
#[derive(Debug, Clone, Copy)]
pub enum Via {
    Rendezvous,
    /// A prosody on the underlay, every agent a member of its room.
    Prosody,
}

/// N hosts whose agents were all started at once, meeting `via` the one service.
struct Mesh {
    hosts: Vec<Host>,
    agents: Vec<usize>,
    started: Instant,
    _prosody: Option<ipop_lab::Prosody>,
    // Dropped last: hosts and servers live on it.
    _underlay: Underlay,
    _limits: NeighbourLimits,
}

impl Mesh {
    fn start(agent: &Path, n: usize, via: Via) -> Result<Mesh> {
        if !(2..=200).contains(&n) {
            bail!("--scale takes 2 to 200 hosts, not {n}");
        }
        let limits = NeighbourLimits::raise((4 * n * n).max(1024) as u64);
        let mut underlay = Underlay::new();
        let nodes: Vec<String> = (0..n).map(|i| format!("h{i:02}")).collect();
        let prosody = match via {
            Via::Rendezvous => {
                underlay.start_rendezvous(SECRET);
                None
            }
            Via::Prosody => {
                let accounts: Vec<(&str, &str)> = nodes.iter().map(|n| (n.as_str(), SECRET)).collect();
                let members: Vec<&str> = nodes.iter().map(String::as_str).collect();
                Some(underlay.start_prosody(&accounts, &members, ipop_lab::Cert::Good))
            }
        };
        let mut hosts: Vec<Host> = (0..n).map(|i| Host::new(&[&format!("10.0.{}.{}", 3, 10 + i)])).collect();
        for (i, h) in hosts.iter().enumerate() {
            h.join_underlay(&underlay, i as u8 + 1);
            quiet_ipv6(h);
        }
        let agent = agent.to_str().context("agent path")?;
        let agents = hosts.iter_mut().zip(&nodes).map(|(h, node)| start(h, agent, node, prosody.as_ref())).collect();
        let started = Instant::now();
        Ok(Mesh { hosts, agents, started, _prosody: prosody, _underlay: underlay, _limits: limits })
    }

    fn logs(&mut self) -> Vec<String> {
        self.hosts.iter_mut().zip(&self.agents).map(|(h, &a)| h.service(a).log_text()).collect()
    }

    /// Seconds from the last agent's start until every agent has a link up with every other.
    fn full(&mut self) -> Result<f64> {
        let n = self.hosts.len();
        let deadline = self.started + Duration::from_secs(120);
        while !self.logs().iter().all(|l| peers_up(l) >= n - 1) {
            if Instant::now() > deadline {
                bail!("{n} hosts: no full mesh within 120 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(self.started.elapsed().as_secs_f64())
    }
}

/// The time to a full mesh of `n` agents through the rendezvous and through prosody, `runs`
/// times each, alternating (so both see the same machine).
pub fn signaling(agent: &Path, n: usize, runs: usize) -> Result<Value> {
    ipop_lab::set_agent(agent);
    let (mut rendezvous, mut prosody) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        for (via, into) in [(Via::Rendezvous, &mut rendezvous), (Via::Prosody, &mut prosody)] {
            eprintln!("bench: {n} agents meshing through {via:?}, run {run}/{runs}");
            into.push(Mesh::start(agent, n, via)?.full()?);
        }
    }
    Ok(json!({"hosts": n, "rendezvous_s": rendezvous, "prosody_s": prosody}))
}

/// The signaling rows as a markdown table.
pub fn signaling_table(v: &Value) -> String {
    let mut out =
        String::from("| agents meet through | full mesh after the last start (median) | each run |\n|---|---|---|\n");
    for (name, key) in [("the rendezvous", "rendezvous_s"), ("prosody (XMPP, a members-only room)", "prosody_s")] {
        let runs: Vec<f64> = v[key].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        let each: Vec<String> = runs.iter().map(|s| format!("{s:.1} s")).collect();
        out += &format!("| {name} | {:.1} s | {} |\n", bench::median(runs.clone()), each.join(", "));
    }
    out
}

fn one(agent: &Path, n: usize) -> Result<Value> {
    let mut mesh = Mesh::start(agent, n, Via::Rendezvous)?;
    let mesh_s = mesh.full()?;
    thread::sleep(SETTLE);
    let pids: Vec<u32> = mesh.hosts.iter_mut().zip(&mesh.agents).map(|(h, &a)| h.service(a).pid()).collect();
    let (cpu0, bytes0) = (cpu_seconds(&pids)?, underlay_bytes(&mesh.hosts)?);
    thread::sleep(IDLE);
    let (cpu1, bytes1) = (cpu_seconds(&pids)?, underlay_bytes(&mesh.hosts)?);
    let links = (n * (n - 1) / 2) as f64;
    let failed: usize = mesh.logs().iter().map(|l| l.matches("link not up").count()).sum();
    let rss: Vec<f64> = pids.iter().map(|&p| bench::memory_mib(p, "VmRSS")).collect::<Result<_>>()?;
    let row = json!({
        "hosts": n,
        "links": n * (n - 1) / 2,
        "mesh_s": mesh_s,
        "failed_attempts": failed,
        "idle_cpu_pct_per_agent": 100.0 * (cpu1 - cpu0) / IDLE.as_secs_f64() / n as f64,
        "idle_bytes_per_s_per_link": (bytes1 - bytes0) / IDLE.as_secs_f64() / links,
        "rss_mib_per_agent": rss.iter().sum::<f64>() / n as f64,
    });
    eprintln!("bench: scale {n}: {row}");
    Ok(row)
}

/// No IPv6 in a host and its container: their router solicitations and MLD reports (sent for
/// a few seconds after an interface comes up) would cross the overlay as multicast to every
/// peer and be counted as the idle links' own bytes.
fn quiet_ipv6(h: &Host) {
    h.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    for i in 0..h.containers.len() {
        let out = h.in_container(i, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        assert!(
            out.status.success(),
            "disabling IPv6 in {}: {}",
            h.containers[i],
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts `node`'s agent on `h`: through `prosody` (its account's password is the secret),
/// or the rendezvous.
fn start(h: &mut Host, agent: &str, node: &str, prosody: Option<&ipop_lab::Prosody>) -> usize {
    let mut args = vec![agent.to_owned(), "run".into()];
    match prosody {
        None => {
            let pin = h.pin_dir("lxcbr0").to_str().unwrap().to_owned();
            let rest = ["--pin-dir", &pin, "--node-id", node, "--rendezvous", RENDEZVOUS, "--secret", SECRET];
            args.extend(rest.map(str::to_owned));
        }
        Some(p) => args.extend(h.xmpp_member_args(&p.addr, &p.ca, node, SECRET, SECRET)),
    }
    h.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), "agent.log")
}

/// Distinct peers an agent's log says a link came up with.
fn peers_up(log: &str) -> usize {
    let peers: HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("link up"))
        .filter_map(|l| l.split("peer=").nth(1)?.split_whitespace().next())
        .collect();
    peers.len()
}

/// CPU seconds of these processes together.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&p| bench::cpu_seconds(p)).sum()
}

/// Bytes every host sent on its underlay leg: each link's traffic, both ways, once.
fn underlay_bytes(hosts: &[Host]) -> Result<f64> {
    hosts.iter().map(|h| bench::wan0_counter(&h.ns, "tx_bytes")).sum()
}

/// The scale rows as a markdown table.
pub fn table(rows: &Value) -> String {
    let mut out = String::from(
        "| hosts | links | full mesh after the last start | failed link attempts | idle CPU per agent | idle bytes/s per link (both ways) | RSS per agent |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows.as_array().into_iter().flatten() {
        out += &format!(
            "| {} | {} | {:.1} s | {} | {:.2}% of a core | {:.0} | {:.1} MiB |\n",
            r["hosts"],
            r["links"],
            r["mesh_s"].as_f64().unwrap_or(0.0),
            r["failed_attempts"],
            r["idle_cpu_pct_per_agent"].as_f64().unwrap_or(0.0),
            r["idle_bytes_per_s_per_link"].as_f64().unwrap_or(0.0),
            r["rss_mib_per_agent"].as_f64().unwrap_or(0.0),
        );
    }
    out
}
