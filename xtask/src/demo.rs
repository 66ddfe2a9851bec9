//! `cargo xtask demo`: two hosts in network namespaces, each with bridge lxcbr0 and two
//! containers, joined by an underlay; a rendezvous service and one agent per host, each on an
//! embedded default config. Shows a ping across hosts, ARP answered in the kernel the second
//! time, and the maps; then removes everything, also when a step fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

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
  "rendezvous": "192.168.77.254:7000"
}"#;

/// Everything the demo made; removed on drop.
#[derive(Default)]
struct Topology {
    namespaces: Vec<String>,
    pin_root: PathBuf,
    files: Vec<PathBuf>,
    processes: Vec<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in &mut self.processes {
            // SAFETY: signalling our own child; SIGINT lets the agent clean up.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.processes {
            while matches!(p.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        remove_tree(&self.pin_root);
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
    }
}

fn remove_tree(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir(root);
}

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a command as a user would type it, runs it, prints its output.
fn show(title: &str, args: &[&str]) -> Result<String> {
    println!("\n== {title}\n$ {}", args.join(" "));
    let out = sh(args)?;
    print!("{out}");
    Ok(out)
}

fn spawn(topo: &mut Topology, ns: &str, args: &[&str], log: &Path) -> Result<()> {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {args:?}"))?;
    topo.processes.push(child);
    topo.files.push(log.to_owned());
    Ok(())
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond()? {
        if Instant::now() > deadline {
            bail!("{what}: not within {secs} s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run(agent: &Path) -> Result<()> {
    let prefix = format!("ipd{}", std::process::id());
    let tmp = std::env::temp_dir();
    let mut topo = Topology::default();
    topo.pin_root = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
    let wan = format!("{prefix}w");
    sh(&["ip", "netns", "add", &wan])?;
    topo.namespaces.push(wan.clone());
    sh(&["ip", "-n", &wan, "link", "add", "wanbr", "type", "bridge"])?;
    sh(&["ip", "-n", &wan, "addr", "add", "192.168.77.254/24", "dev", "wanbr"])?;
    sh(&["ip", "-n", &wan, "link", "set", "wanbr", "up"])?;

    let containers = [["10.0.3.10", "10.0.3.11"], ["10.0.3.20", "10.0.3.21"]];
    let mut hosts = Vec::new();
    for (i, ips) in containers.iter().enumerate() {
        let h = format!("{prefix}h{i}");
        sh(&["ip", "netns", "add", &h])?;
        topo.namespaces.push(h.clone());
        sh(&["ip", "-n", &wan, "link", "add", &format!("w{i}"), "type", "veth", "peer", "name", "wan0", "netns", &h])?;
        sh(&["ip", "-n", &wan, "link", "set", &format!("w{i}"), "master", "wanbr", "up"])?;
        sh(&["ip", "-n", &h, "addr", "add", &format!("192.168.77.{}/24", i + 1), "dev", "wan0"])?;
        sh(&["ip", "-n", &h, "link", "set", "wan0", "up"])?;
        sh(&["ip", "-n", &h, "link", "add", "lxcbr0", "type", "bridge"])?;
        sh(&["ip", "-n", &h, "addr", "add", "10.0.3.1/24", "dev", "lxcbr0"])?;
        sh(&["ip", "-n", &h, "link", "set", "lxcbr0", "up"])?;
        for (j, ip) in ips.iter().enumerate() {
            let c = format!("{h}c{j}");
            sh(&["ip", "netns", "add", &c])?;
            topo.namespaces.push(c.clone());
            sh(&[
                "ip",
                "-n",
                &h,
                "link",
                "add",
                &format!("veth{j}"),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &c,
            ])?;
            sh(&["ip", "-n", &h, "link", "set", &format!("veth{j}"), "master", "lxcbr0", "up"])?;
            sh(&["ip", "-n", &c, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &c, "link", "set", "eth0", "up"])?;
        }
        hosts.push(h);
        println!(
            "host {i} ({}): underlay 192.168.77.{}, lxcbr0 10.0.3.1/24, containers {} and {}",
            hosts[i],
            i + 1,
            ips[0],
            ips[1]
        );
    }

    let agent = agent.to_str().unwrap();
    spawn(
        &mut topo,
        &wan,
        &[
            agent,
            "rendezvous",
            "--listen",
            "192.168.77.254:7000",
            "--overlay",
            "demo",
            "--secret",
            "demo secret, change me",
        ],
        &tmp.join(format!("{prefix}-rendezvous.log")),
    )?;
    thread::sleep(Duration::from_millis(300));
    let mut pins = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let pin = topo.pin_root.join(format!("h{i}"));
        let config = tmp.join(format!("{prefix}-h{i}.json"));
        fs::write(&config, DEFAULT_CONFIG.replace("PIN_DIR", pin.to_str().unwrap()).replace("NODE", &format!("h{i}")))?;
        topo.files.push(config.clone());
        if i == 0 {
            println!("\n== agent config (host 0):\n{}", fs::read_to_string(&config)?);
        }
        spawn(
            &mut topo,
            h,
            &[agent, "run", "--config", config.to_str().unwrap()],
            &tmp.join(format!("{prefix}-h{i}.log")),
        )?;
        pins.push(pin.to_str().unwrap().to_owned());
    }
    for pin in &pins {
        wait_for("the link between the hosts", 30, || {
            let out = Command::new(agent).args(["status", "--pin-dir", pin]).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).contains("\"up\": true"))
        })?;
    }
    show("host 0's agent: its peer and counters", &[agent, "status", "--pin-dir", &pins[0]])?;

    let c00 = format!("{}c0", hosts[0]);
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
    drop(topo);
    Ok(())
}
