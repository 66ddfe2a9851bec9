//! `ipop-agent`: run the agent on a bridge, or inspect and change a running agent's maps.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use ipop_agent::{
    addr::{Mac, parse_host_ip, parse_host_mac},
    agent,
    config::{self, Settings},
    tables::{Pinned, monotonic_ns},
};
use ipop_common::maps::{ENTRY_STALE, ENTRY_STATIC};

#[derive(Parser)]
#[command(name = "ipop-agent", version, about = "Joins Linux bridges on many hosts into one Ethernet segment")]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `ipop_agent=debug`.
    #[arg(long, global = true, env = "IPOP_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: create the TAP, join the bridge, attach the eBPF programs.
    Run(RunArgs),
    /// Show or change the ARP entries the kernel answers from.
    Arp {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: ArpCommand,
    },
    /// Show what the running agent knows: peers and link states, the switch's counters.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Run the embedded rendezvous service that introduces the agents of one overlay.
    Rendezvous(RendezvousArgs),
    /// Show the kernel programs' counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// JSON config file; command-line options override its keys.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Bridge to join [default: lxcbr0].
    #[arg(long)]
    bridge: Option<String>,
    /// Name of the TAP device to create [default: ipop].
    #[arg(long)]
    tap: Option<String>,
    /// Directory on bpffs for the maps [default: /sys/fs/bpf/ipop/<bridge>].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Seconds after which learned ARP entries are no longer answered (0: never) [default: 300].
    #[arg(long)]
    arp_max_age_secs: Option<u64>,
    /// Switch mode (the seed's key; only 1 is supported).
    #[arg(long)]
    switchmode: Option<u8>,
    /// Inter-controller communication (the seed's key).
    #[arg(long)]
    icc: Option<bool>,
    /// Inter-controller communication port (the seed's key).
    #[arg(long)]
    icc_port: Option<u16>,
    /// This agent's name in the overlay [default: the host name].
    #[arg(long)]
    node_id: Option<String>,
    /// Overlay to join [default: ipop].
    #[arg(long)]
    overlay: Option<String>,
    /// The overlay's shared secret (prefer the config file or IPOP_SECRET: command lines are visible to all users).
    #[arg(long, env = "IPOP_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The rendezvous service, host:port; without it the agent runs alone.
    #[arg(long)]
    rendezvous: Option<String>,
    /// STUN server url, e.g. stun:192.0.2.1:3478 (repeatable).
    #[arg(long)]
    stun: Vec<String>,
    /// TURN server url (repeatable).
    #[arg(long)]
    turn: Vec<String>,
    /// ARP RPCs a second one local source may cause (0: unlimited) [default: 10000].
    #[arg(long)]
    arp_rpc_rate: Option<u32>,
    /// Broadcast/multicast frames a second flooded to peers (0: unlimited) [default: 0].
    #[arg(long)]
    broadcast_rate: Option<u32>,
}

#[derive(Args)]
struct RendezvousArgs {
    /// Address to listen on, e.g. 0.0.0.0:7000.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The overlay it serves.
    #[arg(long, default_value = config::DEFAULT_OVERLAY)]
    overlay: String,
    /// The overlay's shared secret: members must prove they hold it.
    #[arg(long, env = "IPOP_SECRET", hide_env_values = true)]
    secret: String,
}

/// Which running agent: by bridge (default pin directory) or by pin directory.
#[derive(Args)]
struct Target {
    /// Bridge of the agent [default: lxcbr0].
    #[arg(long, conflicts_with = "pin_dir")]
    bridge: Option<String>,
    /// Pin directory of the agent (as given to `run --pin-dir`).
    #[arg(long)]
    pin_dir: Option<PathBuf>,
}

impl Target {
    fn pinned(&self) -> Result<Pinned> {
        if let Some(dir) = &self.pin_dir {
            return Ok(Pinned::new(dir));
        }
        let bridge = self.bridge.as_deref().unwrap_or(config::DEFAULT_BRIDGE);
        config::check_ifname("bridge", bridge).map_err(anyhow::Error::msg)?;
        Ok(Pinned::new(config::default_pin_dir(bridge)))
    }
}

#[derive(Subcommand)]
enum ArpCommand {
    /// List the entries.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a static entry: the kernel answers requests for IP with MAC.
    Add {
        #[arg(value_parser = parse_host_ip)]
        ip: std::net::Ipv4Addr,
        #[arg(value_parser = parse_host_mac)]
        mac: Mac,
    },
    /// Remove the entry for IP.
    Del {
        #[arg(value_parser = parse_host_ip)]
        ip: std::net::Ipv4Addr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid --log filter {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => run(args),
        Command::Arp { target, command } => arp(target.pinned()?, command),
        Command::Stats { target, json } => stats(target.pinned()?, json),
        Command::Rendezvous(args) => rendezvous(args),
        Command::Status { target } => {
            let pinned = target.pinned()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let status = runtime.block_on(ipop_agent::control::query(pinned.dir()))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}

fn rendezvous(args: RendezvousArgs) -> Result<()> {
    if args.secret.len() < 8 {
        anyhow::bail!("the secret must be at least 8 characters");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tokio::select! {
            r = ipop_agent::rendezvous::serve(listener, args.overlay, args.secret) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?.recv().await; Ok::<_, std::io::Error>(()) } => Ok(()),
        }
    })
}

fn run(args: RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
            Settings::from_json(&text).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())?
        }
        None => Settings::default(),
    };
    let cli = Settings {
        switchmode: args.switchmode,
        icc: args.icc,
        icc_port: args.icc_port,
        bridge: args.bridge,
        tap: args.tap,
        pin_dir: args.pin_dir,
        arp_max_age_secs: args.arp_max_age_secs,
        node_id: args.node_id,
        overlay: args.overlay,
        secret: args.secret,
        rendezvous: args.rendezvous,
        stun: (!args.stun.is_empty()).then_some(args.stun),
        turn: (!args.turn.is_empty()).then_some(args.turn),
        arp_rpc_rate: args.arp_rpc_rate,
        broadcast_rate: args.broadcast_rate,
    };
    let cfg = file.overridden_by(cli).resolve().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(agent::run(cfg))
}

fn arp(pinned: Pinned, command: ArpCommand) -> Result<()> {
    match command {
        ArpCommand::List { json } => {
            let now = monotonic_ns();
            let entries = pinned.arp_list()?;
            if json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(ip, e)| {
                        serde_json::json!({
                            "ip": ip.to_string(),
                            "mac": Mac(e.mac).to_string(),
                            "static": e.flags & ENTRY_STATIC != 0,
                            "stale": e.flags & ENTRY_STALE != 0,
                            "age_secs": now.saturating_sub(e.updated_ns) / 1_000_000_000,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<15}  {:<17}  {:<6}  {:>8}", "IP", "MAC", "FLAGS", "AGE(s)");
                for (ip, e) in entries {
                    let flags = match (e.flags & ENTRY_STATIC != 0, e.flags & ENTRY_STALE != 0) {
                        (_, true) => "stale",
                        (true, false) => "static",
                        (false, false) => "",
                    };
                    let age = now.saturating_sub(e.updated_ns) / 1_000_000_000;
                    println!("{:<15}  {:<17}  {:<6}  {:>8}", ip.to_string(), Mac(e.mac).to_string(), flags, age);
                }
            }
        }
        ArpCommand::Add { ip, mac } => {
            pinned.arp_add(ip, mac)?;
            println!("{ip} is-at {mac} (static)");
        }
        ArpCommand::Del { ip } => {
            pinned.arp_del(ip)?;
            println!("{ip} removed");
        }
    }
    Ok(())
}

fn stats(pinned: Pinned, json: bool) -> Result<()> {
    let s = pinned.stats()?;
    let rows = [
        ("seen", s.seen),
        ("answered", s.answered),
        ("events", s.events),
        ("events_lost", s.events_lost),
        ("malformed", s.malformed),
        ("stale", s.stale),
        ("injected", s.injected),
    ];
    if json {
        let obj: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        for (k, v) in rows {
            println!("{k:<12} {v}");
        }
    }
    Ok(())
}
