//! `cargo xtask demo`: two hosts in network namespaces, each with bridge lxcbr0 and two
//! containers, joined by an underlay; a rendezvous service and one agent per host, each on an
//! embedded default config. Shows a ping across hosts, ARP answered in the kernel the second
//! time, and the maps; then removes everything, also when a step fails.

use std::{fs, path::Path};

use anyhow::Result;

use ipop_lab::{Host, RENDEZVOUS, Underlay};

use crate::{sh, wait_links_up};

const SECRET: &str = "demo secret, change me";

/// The configuration each agent runs with: the seed's keys plus ours.
const DEFAULT_CONFIG: &str = r#"{
  "switchmode": 1,
  "icc": true,
  "icc_port": 30000,
  "bridge": "lxcbr0",
  "tap": "ipop",
  "pin_dir": "PIN_DIR",
  "arp_max_age_secs": 300,
  "node_id": "NODE",
  "overlay": "demo",
  "secret": "SECRET",
  "rendezvous": "RENDEZVOUS"
}"#;

/// Prints a command as a user would type it, runs it, prints its output.
fn show(title: &str, args: &[&str]) -> Result<String> {
    println!("\n== {title}\n$ {}", args.join(" "));
    let out = sh(args)?;
    print!("{out}");
    Ok(out)
}

pub fn run(agent: &Path) -> Result<()> {
    ipop_lab::set_agent(agent);
    // Declared first, dropped last: the hosts' agents talk through it.
    let mut underlay = Underlay::new();
    let mut hosts = Vec::new();
    for (i, ips) in [["10.0.3.10", "10.0.3.11"], ["10.0.3.20", "10.0.3.21"]].iter().enumerate() {
        let host = Host::new(ips);
        let addr = host.join_underlay(&underlay, i as u8 + 1);
        println!("host {i} ({}): underlay {addr}, lxcbr0 10.0.3.1/24, containers {} and {}", host.ns, ips[0], ips[1]);
        hosts.push(host);
    }
    let agent = agent.to_str().unwrap();
    underlay.start_rendezvous_for("demo", SECRET);
    let mut pins = Vec::new();
    for (i, host) in hosts.iter_mut().enumerate() {
        let pin = host.pin_dir("lxcbr0").to_str().unwrap().to_owned();
        let config = host.file("agent.json");
        let text = DEFAULT_CONFIG
            .replace("PIN_DIR", &pin)
            .replace("NODE", &format!("h{i}"))
            .replace("RENDEZVOUS", RENDEZVOUS)
            .replace("SECRET", SECRET);
        fs::write(&config, text)?;
        if i == 0 {
            println!("\n== agent config (host 0):\n{}", fs::read_to_string(&config)?);
        }
        host.start_agent(&["--config", config.to_str().unwrap()]);
        pins.push(pin);
    }
    wait_links_up(agent, &pins)?;
    show("host 0's agent: its peer and counters", &[agent, "status", "--pin-dir", &pins[0]])?;

    let c00 = hosts[0].containers[0].clone();
    show("a container on host 0 pings one on host 1", &["ip", "netns", "exec", &c00, "ping", "-c", "3", "10.0.3.20"])?;
    show(
        "a full-size ping across",
        &["ip", "netns", "exec", &c00, "ping", "-c", "2", "-s", "1472", "-M", "do", "10.0.3.20"],
    )?;
    show(
        "arping across: learned through arp_request/arp_reply RPCs",
        &["ip", "netns", "exec", &c00, "arping", "-c", "1", "-I", "eth0", "10.0.3.21"],
    )?;
    show(
        "again: now answered by the eBPF program on host 0's TAP (microseconds)",
        &["ip", "netns", "exec", &c00, "arping", "-c", "3", "-I", "eth0", "10.0.3.21"],
    )?;
    show("host 0's kernel counters", &[agent, "stats", "--pin-dir", &pins[0]])?;
    show(
        "host 0's arp_table, read by bpftool",
        &["bpftool", "map", "dump", "pinned", &format!("{}/arp_table", pins[0])],
    )?;
    println!("\ndemo done; stopping the agents and removing the namespaces");
    Ok(())
}
