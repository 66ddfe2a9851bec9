//! `cargo xtask demo`: two hosts in network namespaces, each with bridge lxcbr0 and two
//! containers, joined by an underlay; a rendezvous service and one agent per host, each on an
//! embedded default config. Shows a ping across hosts, ARP answered in the kernel the second
//! time, and the maps; then removes everything, also when a step fails.

use std::{fs, path::Path};

use anyhow::Result;

use crate::lab::{Lab, UNDERLAY_IP, sh, wait_links_up};

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
  "secret": "demo secret, change me",
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
    let mut lab = Lab::new("ipd")?;
    let mut hosts = Vec::new();
    for (i, ips) in [["10.0.3.10", "10.0.3.11"], ["10.0.3.20", "10.0.3.21"]].iter().enumerate() {
        let host = lab.add_host(i, ips)?;
        println!(
            "host {i} ({}): underlay {}, lxcbr0 10.0.3.1/24, containers {} and {}",
            host.ns, host.underlay_ip, ips[0], ips[1]
        );
        hosts.push(host);
    }
    let agent = agent.to_str().unwrap();
    let rendezvous = format!("{UNDERLAY_IP}:7000");
    let underlay = lab.underlay.clone();
    lab.spawn(
        &underlay,
        &[agent, "rendezvous", "--listen", &rendezvous, "--overlay", "demo", "--secret", "demo secret, change me"],
        "rendezvous.log",
    )?;
    let mut pins = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let pin = lab.pin_root.join(format!("h{i}")).to_str().unwrap().to_owned();
        let config = lab.file(&format!("h{i}.json"));
        let text = DEFAULT_CONFIG
            .replace("PIN_DIR", &pin)
            .replace("NODE", &format!("h{i}"))
            .replace("RENDEZVOUS", &rendezvous);
        fs::write(&config, text)?;
        if i == 0 {
            println!("\n== agent config (host 0):\n{}", fs::read_to_string(&config)?);
        }
        lab.spawn(&host.ns, &[agent, "run", "--config", config.to_str().unwrap()], &format!("h{i}.log"))?;
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
