//! `cargo xtask demo`: one host in network namespaces (bridge lxcbr0, containers 10.0.3.5 and
//! 10.0.3.6), the agent on an embedded default config, a remote IP answered in the kernel.
//! Everything is removed at the end, also when a step fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The configuration the demo runs the agent with: the seed's keys plus ours.
const DEFAULT_CONFIG: &str = r#"{
  "switchmode": 1,
  "icc": true,
  "icc_port": 30000,
  "bridge": "lxcbr0",
  "tap": "ipop",
  "pin_dir": "PIN_DIR",
  "arp_max_age_secs": 300
}"#;

const REMOTE_IP: &str = "10.0.3.104";
const REMOTE_MAC: &str = "02:aa:00:00:00:68";

struct Topology {
    host: String,
    containers: Vec<String>,
    pin_root: PathBuf,
    config: PathBuf,
    agent: Option<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for ns in self.containers.iter().chain([&self.host]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for name in ["arp_table", "arp_events", "stats", "config"] {
            let _ = fs::remove_file(self.pin_root.join("lxcbr0").join(name));
        }
        let _ = fs::remove_dir(self.pin_root.join("lxcbr0"));
        let _ = fs::remove_dir(&self.pin_root);
        let _ = fs::remove_file(&self.config);
    }
}

fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
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

pub fn run(agent: &Path) -> Result<()> {
    let prefix = format!("ipd{}", std::process::id());
    let mut topo = Topology {
        host: format!("{prefix}h"),
        containers: Vec::new(),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
        config: std::env::temp_dir().join(format!("{prefix}-config.json")),
        agent: None,
    };
    let h = topo.host.clone();
    sh(&["ip", "netns", "add", &h])?;
    sh(&["ip", "-n", &h, "link", "add", "lxcbr0", "type", "bridge"])?;
    sh(&[
        "ip",
        "-n",
        &h,
        "addr",
        "add",
        "10.0.3.1/24",
        "dev",
        "lxcbr0",
    ])?;
    sh(&["ip", "-n", &h, "link", "set", "lxcbr0", "up"])?;
    for (i, addr) in ["10.0.3.5", "10.0.3.6"].iter().enumerate() {
        let c = format!("{prefix}c{i}");
        sh(&["ip", "netns", "add", &c])?;
        topo.containers.push(c.clone());
        let port = format!("veth{i}");
        sh(&[
            "ip", "-n", &h, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &c,
        ])?;
        sh(&[
            "ip", "-n", &h, "link", "set", &port, "master", "lxcbr0", "up",
        ])?;
        sh(&[
            "ip",
            "-n",
            &c,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &c, "link", "set", "eth0", "up"])?;
    }
    println!(
        "host namespace {h}: bridge lxcbr0 10.0.3.1/24; containers {} (10.0.3.5), {} (10.0.3.6)",
        topo.containers[0], topo.containers[1]
    );

    let pin_dir = topo.pin_root.join("lxcbr0");
    let pin = pin_dir.to_str().unwrap().to_owned();
    fs::write(&topo.config, DEFAULT_CONFIG.replace("PIN_DIR", &pin))?;
    println!(
        "\n== the agent, on the embedded default config:\n{}",
        fs::read_to_string(&topo.config)?
    );
    let log = std::env::temp_dir().join(format!("{prefix}-agent.log"));
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{h}"))
        .arg(agent)
        .args(["run", "--config"])
        .arg(&topo.config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("starting the agent")?;
    topo.agent = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fs::read_to_string(&log)?.contains("ipop-agent ready") {
        if let Some(status) = topo.agent.as_mut().unwrap().try_wait()? {
            bail!(
                "the agent exited ({status}):\n{}",
                fs::read_to_string(&log)?
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the agent was not ready in 20 s:\n{}",
                fs::read_to_string(&log)?
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    print!("{}", fs::read_to_string(&log)?);

    let agent = agent.to_str().unwrap();
    let c0 = topo.containers[0].clone();
    show(
        "local traffic on the bridge, untouched",
        &["ip", "netns", "exec", &c0, "ping", "-c", "2", "10.0.3.6"],
    )?;
    show(
        "a static entry for a remote host",
        &[
            agent,
            "arp",
            "--pin-dir",
            &pin,
            "add",
            REMOTE_IP,
            REMOTE_MAC,
        ],
    )?;
    let replies = show(
        "a container resolves it: the kernel answers at the TAP's egress",
        &[
            "ip", "netns", "exec", &c0, "arping", "-c", "3", "-I", "eth0", REMOTE_IP,
        ],
    )?;
    show("the counters", &[agent, "stats", "--pin-dir", &pin])?;
    show(
        "the pinned map, read by bpftool",
        &[
            "bpftool",
            "map",
            "dump",
            "pinned",
            &format!("{pin}/arp_table"),
        ],
    )?;
    if !replies.contains(REMOTE_MAC) {
        bail!("arping got no reply carrying {REMOTE_MAC}");
    }

    println!("\n== stopping the agent (SIGINT)");
    let mut child = topo.agent.take().unwrap();
    // SAFETY: signalling our own child (nsenter execs the agent, so its pid is the agent's).
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    print!(
        "{}",
        fs::read_to_string(&log)?
            .lines()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let _ = fs::remove_file(&log);
    if !status.success() {
        bail!("the agent exited with {status}");
    }
    println!(
        "pins left: {}; TAP left: {}",
        pin_dir.exists(),
        sh(&["ip", "-n", &h, "link", "show", "ipop"]).is_ok()
    );
    println!("\ndemo done; removing the namespaces");
    Ok(())
}
