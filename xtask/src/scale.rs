//! `cargo xtask bench --scale N,...`: N hosts on the lab's flat underlay, each with bridge
//! lxcbr0 and one container, one rendezvous, every agent started at once. Per N: the time
//! from the last agent's start to the full mesh (every agent logs `link up` for every
//! other), the CPU the agents and the rendezvous spent on it, link attempts that failed on
//! the way; then idle: agent CPU and RSS, and underlay bytes per link per second; then two
//! rounds of every container arpinging every other (the first through the overlay, the
//! second answered in the kernel), with the agents' counters; then the cost of broadcasts.

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
    rendezvous: Option<usize>,
    _prosody: Option<ipop_lab::Prosody>,
    // Dropped last: hosts and servers live on it.
    underlay: Underlay,
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
        let (rendezvous, prosody) = match via {
            Via::Rendezvous => (Some(underlay.start_rendezvous(SECRET)), None),
            Via::Prosody => {
                let accounts: Vec<(&str, &str)> = nodes.iter().map(|n| (n.as_str(), SECRET)).collect();
                let members: Vec<&str> = nodes.iter().map(String::as_str).collect();
                (None, Some(underlay.start_prosody(&accounts, &members, ipop_lab::Cert::Good)))
            }
        };
        let mut hosts: Vec<Host> = (0..n).map(|i| Host::new(&[&container_ip(i)])).collect();
        for (i, h) in hosts.iter().enumerate() {
            h.join_underlay(&underlay, i as u8 + 1);
            // Their router solicitations would cross as multicast, counted as idle bytes.
            h.ipv6_off();
        }
        let agent = agent.to_str().context("agent path")?;
        let agents = hosts.iter_mut().zip(&nodes).map(|(h, node)| start(h, agent, node, prosody.as_ref())).collect();
        let started = Instant::now();
        Ok(Mesh { hosts, agents, started, rendezvous, _prosody: prosody, underlay, _limits: limits })
    }

    fn pids(&mut self) -> Vec<u32> {
        self.hosts.iter_mut().zip(&self.agents).map(|(h, &a)| h.service(a).pid()).collect()
    }

    /// CPU seconds the rendezvous has used (0 without one).
    fn rendezvous_cpu(&mut self) -> Result<f64> {
        self.rendezvous.map_or(Ok(0.0), |i| bench::cpu_seconds(self.underlay.service(i).pid()))
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
    let pids = mesh.pids();
    let (mesh_cpu, rendezvous_cpu) = (cpu_seconds(&pids)?, mesh.rendezvous_cpu()?);
    let links = n * (n - 1) / 2;
    let failed: usize = mesh.logs().iter().map(|l| l.matches("link not up").count()).sum();
    thread::sleep(SETTLE);
    let mut row = json!({
        "hosts": n,
        "links": links,
        "mesh_s": mesh_s,
        "links_per_s": links as f64 / mesh_s,
        "mesh_cpu_s": mesh_cpu,
        "rendezvous_cpu_s": rendezvous_cpu,
        "failed_attempts": failed,
    });
    let idle = idle(&mesh, &pids)?;
    bench::merge(&mut row, idle.clone());
    for round in ["arp_first", "arp_second"] {
        bench::merge(&mut row, json!({ round: arp_round(&mut mesh)? }));
    }
    bench::merge(&mut row, broadcast(&mesh, &pids, &idle)?);
    eprintln!("bench: scale {n}: {row}");
    Ok(row)
}

/// `IDLE` with nothing crossing: agent CPU, underlay bytes per link, RSS.
fn idle(mesh: &Mesh, pids: &[u32]) -> Result<Value> {
    let n = pids.len();
    let (cpu0, bytes0) = (cpu_seconds(pids)?, underlay_bytes(&mesh.hosts)?);
    thread::sleep(IDLE);
    let (cpu1, bytes1) = (cpu_seconds(pids)?, underlay_bytes(&mesh.hosts)?);
    let links = (n * (n - 1) / 2) as f64;
    let rss: Vec<f64> = pids.iter().map(|&p| bench::memory_mib(p, "VmRSS")).collect::<Result<_>>()?;
    let anon: Vec<f64> = pids.iter().map(|&p| bench::memory_mib(p, "RssAnon")).collect::<Result<_>>()?;
    Ok(json!({
        "rss_anon_mib_per_agent": anon.iter().sum::<f64>() / n as f64,
        "idle_cpu_pct_per_agent": 100.0 * (cpu1 - cpu0) / IDLE.as_secs_f64() / n as f64,
        "idle_bytes_per_s_per_link": (bytes1 - bytes0) / IDLE.as_secs_f64() / links,
        "rss_mib_per_agent": rss.iter().sum::<f64>() / n as f64,
    }))
}

/// The container of host `i` (at most 200 hosts: all on lxcbr0's 10.0.3.0/24).
fn container_ip(i: usize) -> String {
    format!("10.0.3.{}", 10 + i)
}

/// Every container arpings every other once, all containers at once: the seconds until the
/// last is done, requests unanswered, and what the agents did meanwhile (requests answered
/// in the kernel, ARP RPCs sent).
fn arp_round(mesh: &mut Mesh) -> Result<Value> {
    let before = arp_counters(mesh)?;
    let n = mesh.hosts.len();
    let started = Instant::now();
    let missed: usize = thread::scope(|s| {
        let rounds: Vec<_> = mesh
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let others: Vec<String> = (0..n).filter(|&j| j != i).map(container_ip).collect();
                // arping (Thomas Habets') exits 1 when no reply came; -C 1: done at the first reply.
                let script = format!(
                    "for ip in {}; do arping -q -c 1 -C 1 -w 2 -I eth0 $ip || echo missed; done",
                    others.join(" ")
                );
                s.spawn(move || {
                    let out = h.in_container(0, &["sh", "-c", &script]);
                    String::from_utf8_lossy(&out.stdout).matches("missed").count()
                })
            })
            .collect();
        rounds.into_iter().map(|r| r.join().unwrap_or(usize::MAX / 2 / n)).sum()
    });
    let seconds = started.elapsed().as_secs_f64();
    let after = arp_counters(mesh)?;
    Ok(json!({
        "requests": n * (n - 1),
        "seconds": seconds,
        "missed": missed,
        "answered_in_kernel": after.0 - before.0,
        "rpc_sent": after.1 - before.1,
    }))
}

/// Summed over the agents: ARP requests answered in the kernel, RPCs sent to peers.
fn arp_counters(mesh: &mut Mesh) -> Result<(u64, u64)> {
    let mut sum = (0, 0);
    for h in &mesh.hosts {
        let status = ipop_lab::status(h, &h.pin_dir("lxcbr0"));
        sum.0 += status["kernel"]["answered"].as_u64().context("status: kernel.answered")?;
        sum.1 += status["switch"]["rpc_sent"].as_u64().context("status: switch.rpc_sent")?;
    }
    Ok(sum)
}

/// Broadcasts sent from one container.
pub const BROADCASTS: u32 = 500;

/// `BROADCASTS` broadcast frames (as many as go in 5 s) from host 0's container (pings to the subnet's broadcast
/// address, which the containers ignore): the sending agent's CPU per frame (it seals one
/// copy per peer), every agent's, and underlay bytes per frame, each less what the idle mesh
/// (`idle`, as measured) costs over the same time.
fn broadcast(mesh: &Mesh, pids: &[u32], idle: &Value) -> Result<Value> {
    let n = pids.len() as f64;
    let idle_cpu = idle["idle_cpu_pct_per_agent"].as_f64().unwrap_or(0.0) / 100.0;
    let idle_bytes = idle["idle_bytes_per_s_per_link"].as_f64().unwrap_or(0.0) * n * (n - 1.0) / 2.0;
    let started = Instant::now();
    let (sender0, all0, bytes0) = (bench::cpu_seconds(pids[0])?, cpu_seconds(pids)?, underlay_bytes(&mesh.hosts)?);
    let count = BROADCASTS.to_string();
    // Nobody answers: without a deadline ping would wait 10 s for the last answer, 10 s of
    // idle mesh in the window.
    let ping = ["ping", "-q", "-b", "-c", &count, "-i", "0.002", "-w", "5", "10.0.3.255"];
    let out = mesh.hosts[0].in_container(0, &ping);
    let text = String::from_utf8_lossy(&out.stdout);
    let sent: f64 = text
        .split(" packets transmitted")
        .next()
        .and_then(|t| t.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .with_context(|| format!("broadcast pings: {text}{}", String::from_utf8_lossy(&out.stderr)))?;
    // What the frames still in flight cost lands in the window too.
    thread::sleep(Duration::from_secs(1));
    let (sender1, all1, bytes1) = (bench::cpu_seconds(pids[0])?, cpu_seconds(pids)?, underlay_bytes(&mesh.hosts)?);
    let window = started.elapsed().as_secs_f64();
    let per = |d: f64| d.max(0.0) / sent.max(1.0);
    Ok(json!({
        "broadcast_sender_us": per(sender1 - sender0 - idle_cpu * window) * 1e6,
        "broadcast_all_agents_us": per(all1 - all0 - idle_cpu * n * window) * 1e6,
        "broadcast_underlay_bytes": per(bytes1 - bytes0 - idle_bytes * window),
    }))
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

/// The scale rows as markdown tables: the mesh forming, idle, ARP converging, broadcasts;
/// then how idle cost grows per peer.
pub fn table(rows: &Value) -> String {
    let rows: Vec<&Value> = rows.as_array().into_iter().flatten().collect();
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let mut out = String::from(
        "| hosts | links | full mesh after the last start | links up per second | agents' CPU until then (all, per link) | rendezvous CPU | failed link attempts |\n|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out += &format!(
            "| {} | {} | {:.1} s | {:.0} | {:.1} s, {:.1} ms | {:.2} s | {} |\n",
            r["hosts"],
            r["links"],
            f(r, "mesh_s"),
            f(r, "links_per_s"),
            f(r, "mesh_cpu_s"),
            1e3 * f(r, "mesh_cpu_s") / f(r, "links").max(1.0),
            f(r, "rendezvous_cpu_s"),
            r["failed_attempts"],
        );
    }
    out += "\n| hosts | idle CPU per agent | idle bytes/s per link (both ways) | RSS per agent | of it anonymous (the rest: the binary and libraries, shared) |\n|---|---|---|---|---|\n";
    for r in &rows {
        out += &format!(
            "| {} | {:.2}% of a core | {:.0} | {:.1} MiB | {:.1} MiB |\n",
            r["hosts"],
            f(r, "idle_cpu_pct_per_agent"),
            f(r, "idle_bytes_per_s_per_link"),
            f(r, "rss_mib_per_agent"),
            f(r, "rss_anon_mib_per_agent"),
        );
    }
    out += "\n| hosts | arpings (every container to every other) | first round: all done after, unanswered, answered in the kernel, RPCs | second round: the same |\n|---|---|---|---|\n";
    for r in &rows {
        let round = |k: &str| {
            let v = &r[k];
            format!(
                "{:.1} s, {}, {}, {}",
                v["seconds"].as_f64().unwrap_or(0.0),
                v["missed"],
                v["answered_in_kernel"],
                v["rpc_sent"]
            )
        };
        out += &format!(
            "| {} | {} | {} | {} |\n",
            r["hosts"],
            r["arp_first"]["requests"],
            round("arp_first"),
            round("arp_second")
        );
    }
    out += "\n| hosts | one broadcast frame: the sending agent's CPU | all agents' CPU | underlay bytes |\n|---|---|---|---|\n";
    for r in &rows {
        out += &format!(
            "| {} | {:.0} us | {:.0} us | {:.0} |\n",
            r["hosts"],
            f(r, "broadcast_sender_us"),
            f(r, "broadcast_all_agents_us"),
            f(r, "broadcast_underlay_bytes"),
        );
    }
    if let (Some(a), Some(b)) = (rows.first(), rows.last())
        && f(b, "hosts") > f(a, "hosts")
    {
        let peers = f(b, "hosts") - f(a, "hosts");
        out += &format!(
            "\nPer peer, from {} to {} hosts: RSS {:+.3} MiB, idle CPU {:+.4}% of a core.\n",
            a["hosts"],
            b["hosts"],
            (f(b, "rss_mib_per_agent") - f(a, "rss_mib_per_agent")) / peers,
            (f(b, "idle_cpu_pct_per_agent") - f(a, "idle_cpu_pct_per_agent")) / peers,
        );
    }
    out
}
