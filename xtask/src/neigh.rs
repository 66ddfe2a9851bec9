//! The neighbour rows of `cargo xtask bench`: the first ARP request and IPv6 solicitation for
//! a host that has spoken once (each run gives the server container a new address that says
//! one thing to its own gateway, then the client asks for it), and IPv6's local and learned
//! figures (`ndping.py`, arping's counterpart for solicitations).

use std::{path::Path, process::Command, thread, time::Duration};

use anyhow::Result;
use ipop_lab::Host;

use crate::bench::{exec, median};

/// Host 0's containers and host 1's first, and every bridge's own address.
const CLIENT6: &str = "fd00::10";
const LOCAL6: &str = "fd00::11";
const LOCAL4: &str = "10.0.3.11";
pub(crate) const SERVER6: &str = "fd00::20";
const BRIDGE6: &str = "fd00::1";

/// IPv6 addresses for every mode's containers and bridges (no duplicate address detection:
/// the lab made them unique).
pub(crate) fn add_ipv6(hosts: &[Host]) {
    for (i, h) in hosts.iter().enumerate() {
        h.ip(&["addr", "add", &format!("{BRIDGE6}/64"), "dev", "lxcbr0", "nodad"]);
        for c in 0..2 {
            let ip = format!("fd00::{}{}/64", i + 1, c);
            let out = h.in_container(c, &["ip", "addr", "add", &ip, "dev", "eth0", "nodad"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Solicitation round trips in microseconds from the client container (`count` of them).
pub(crate) fn ndping_us(ns: &str, target: &str, count: u32) -> Result<Vec<f64>> {
    ndping_from(ns, CLIENT6, target, count)
}

/// The same from `source`, an address of the namespace's eth0.
fn ndping_from(ns: &str, source: &str, target: &str, count: u32) -> Result<Vec<f64>> {
    let script = crate::root().join("xtask/ndping.py");
    let out = exec(ns, &["python3", script.to_str().unwrap(), "eth0", source, target, &count.to_string()])?;
    // An unanswered solicitation counts as infinitely slow: it shows, as "–", rather than
    // vanishing from the median.
    Ok(out.lines().map(|l| l.trim().parse().unwrap_or(f64::INFINITY)).collect())
}

/// One run's neighbour figures (microseconds).
pub(crate) struct Figures {
    /// The first request of a fresh arping (ndping) to a local neighbour: what a first
    /// request costs anywhere, the baseline of the "spoke once" rows (every tool's first
    /// request costs more than its next ones, in-kernel paths included).
    pub arp_local_first: Option<f64>,
    pub nd_local_first: Option<f64>,
    pub arp_spoke: Option<f64>,
    pub nd_local: f64,
    pub nd_spoke: Option<f64>,
    pub nd_learned: f64,
}

/// Where the client's agent is, when it is ipop's: what its kernel tables hold is waited for.
pub(crate) struct Agent<'a> {
    pub binary: &'a Path,
    pub pins: &'a str,
}

pub(crate) fn measure(client: &str, server: &str, run: usize, agent: Option<Agent>) -> Result<Figures> {
    let v4 = format!("10.0.3.{}", 200 + run % 50);
    let v6 = format!("fd00::2:{}", 200 + run % 50);
    exec(server, &["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
    exec(server, &["ip", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
    // Each says one thing to its own gateway; nothing of it needs to cross the overlay.
    exec(server, &["arping", "-c", "1", "-w", "1", "-I", "eth0", "-S", &v4, "10.0.3.1"])?;
    // A solicitation of its own, as arping's request: a ping would go without one once the
    // container knows its gateway.
    ndping_from(server, &v6, BRIDGE6, 1)?;
    heard(&agent, "arp", &v4)?;
    heard(&agent, "nd", &v6)?;
    let figures = Figures {
        arp_local_first: crate::bench::arping_us(client, "eth0", LOCAL4, 1)?.first().copied(),
        nd_local_first: ndping_us(client, LOCAL6, 1)?.first().copied(),
        arp_spoke: crate::bench::arping_us(client, "eth0", &v4, 1)?.first().copied(),
        nd_spoke: ndping_us(client, &v6, 1)?.first().copied(),
        nd_local: median(ndping_us(client, LOCAL6, 5)?),
        nd_learned: median(ndping_us(client, SERVER6, 6)?.into_iter().skip(1).collect()),
    };
    exec(server, &["ip", "addr", "del", &format!("{v4}/24"), "dev", "eth0"])?;
    exec(server, &["ip", "addr", "del", &format!("{v6}/64"), "dev", "eth0"])?;
    Ok(figures)
}

/// Waits until ipop's client-side agent has `ip` in its `table` (the announcement arrived);
/// for the other modes, a pause as long.
fn heard(agent: &Option<Agent>, table: &str, ip: &str) -> Result<()> {
    let Some(a) = agent else {
        thread::sleep(Duration::from_millis(300));
        return Ok(());
    };
    for _ in 0..50 {
        let out = Command::new(a.binary).args([table, "--pin-dir", a.pins, "list"]).output()?;
        if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(ip)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{ip} never reached the client's {table} table: was it announced?")
}
