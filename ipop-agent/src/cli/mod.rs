//! The command line: `ipop-agent run | rendezvous | status | arp | nd | stats`. `args` holds the
//! arguments, `show` prints the maps of a running agent; `main.rs` only calls `main` here.

pub mod args;
mod ca;
mod show;

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::kernel::maps::Family;

pub use self::args::{KeyCommand, KeyTarget, RendezvousArgs, RunArgs, TableCommand, Target, read_config};
use crate::{
    agent::{self, reload::SetLog},
    config::{AgentConfig, Settings},
    ops::{control, state},
    signaling::{
        admission::{Admission, Certified, Secret},
        rendezvous,
    },
};
use ipop_cert::RevocationList;

#[derive(Parser, Debug)]
#[command(name = "ipop-agent", version, about = "Joins Linux bridges on many hosts into one Ethernet segment")]
pub struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `ipop_agent=debug`; overrides
    /// the config's `log`. By default the ICE and TURN libraries say only their errors: their
    /// info lines (ICE state flips between consent checks, "no candidate pairs" before the
    /// first candidate) are noise beside the agent's own "link up" / "link not up: why".
    #[arg(long, global = true, env = "IPOP_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: create the TAP, join the bridge, attach the eBPF programs.
    Run(Box<RunArgs>),
    /// Show or change the ARP entries the kernel answers from.
    Arp {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: TableCommand,
    },
    /// Show or change the IPv6 neighbour entries the kernel answers solicitations from.
    Nd {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: TableCommand,
    },
    /// Show what the running agent knows: peers and link states, the switch's counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// Everything, as JSON (its schema: docs/status.md).
        #[arg(long)]
        json: bool,
    },
    /// Run the embedded rendezvous service that introduces the agents of one overlay.
    Rendezvous(RendezvousArgs),
    /// The overlay's certificate authority, kept offline: init, sign, revoke, show.
    Ca(ca::CaArgs),
    /// This node's long-term key.
    Key {
        #[command(flatten)]
        target: KeyTarget,
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Show the kernel programs' counters.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The `ipop-agent` binary: parses the command line, sets up logging, runs the command.
pub fn main() -> ExitCode {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(crate::config::DEFAULT_LOG))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid --log filter {:?}: {e}", cli.log.unwrap_or_default());
            return ExitCode::from(2);
        }
    };
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    tracing_subscriber::registry().with(filter).with(fmt).init();
    let set_log: SetLog = Box::new(move |text| {
        let filter = tracing_subscriber::EnvFilter::try_new(text)?;
        handle.reload(filter).context("replacing the log filter")
    });
    match dispatch(cli.command, cli.log, set_log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command, log: Option<String>, set_log: SetLog) -> Result<()> {
    match command {
        Command::Run(args) => run(*args, log, set_log),
        Command::Arp { target, command } => show::table(target.pinned()?, Family::V4, command),
        Command::Nd { target, command } => show::table(target.pinned()?, Family::V6, command),
        Command::Stats { target, json } => show::stats(target.pinned()?, json),
        Command::Rendezvous(args) => rendezvous(args),
        Command::Ca(args) => ca::run(args),
        Command::Key { target, command: KeyCommand::Show } => {
            println!("{}", state::node_key(&target.state_dir()?)?.public());
            Ok(())
        }
        Command::Status { target, json } => {
            // The pin directory names the agent's socket; its maps are not opened (members
            // of the group ipop may ask without root).
            let pin_dir = target.pin_dir()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let status = runtime.block_on(control::query(&pin_dir, "status"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", show::status_text(&status));
            }
            Ok(())
        }
    }
}

fn rendezvous(args: RendezvousArgs) -> Result<()> {
    let admission = match (args.secret, args.ca_public_key) {
        (Some(secret), None) if secret.len() < 8 => anyhow::bail!("the secret must be at least 8 characters"),
        (Some(secret), None) => Admission::Secret(Secret::stretch(&args.overlay, &secret)),
        (None, Some(ca)) => {
            let revoked = match &args.revocation_list {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let list = RevocationList::from_text(&text).with_context(|| path.display().to_string())?;
                    list.verify(&ca).with_context(|| format!("revocation list {}", path.display()))?;
                    Some(list)
                }
                None => None,
            };
            Admission::Ca(Certified { ca, revoked })
        }
        _ => anyhow::bail!("give the overlay's secret or --ca-public-key"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tokio::select! {
            r = rendezvous::serve_with(listener, args.overlay, admission, args.revocation_list) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?.recv().await; Ok::<_, std::io::Error>(()) } => Ok(()),
        }
    })
}

/// `run`: the config file, overridden by the command line, resolved and checked; read again
/// the same way on SIGHUP.
fn run(args: RunArgs, log: Option<String>, set_log: SetLog) -> Result<()> {
    let path = args.config.clone();
    let cli = run_settings(args, log);
    let load = move || -> Result<AgentConfig> {
        let file = match &path {
            Some(path) => read_config(path)?,
            None => Settings::default(),
        };
        let settings = file.overridden_by(cli.clone()).with_password_file(|f| std::fs::read_to_string(f));
        settings.and_then(Settings::resolve).map_err(anyhow::Error::msg)
    };
    let cfg = load()?;
    if let Some(filter) = &cfg.log {
        set_log(filter)?;
    }
    agent::coalesce_timers();
    agent::fix_mmap_threshold();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(agent::run(cfg, agent::Reload { load: Box::new(load), set_log }))
}

/// The settings the command line gives `run` (`None`: not given there).
fn run_settings(args: RunArgs, log: Option<String>) -> Settings {
    Settings {
        log,
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
        xmpp: args.xmpp.settings(),
        control_group: args.control_group,
        metrics_listen: args.metrics_listen,
        web_listen: args.web_listen,
        stun: (!args.stun.is_empty()).then_some(args.stun),
        turn: (!args.turn.is_empty()).then_some(args.turn),
        turn_user: args.turn_user,
        turn_password: args.turn_password,
        turn_password_file: args.turn_password_file,
        turn_ca_file: args.turn_ca_file,
        state_dir: args.state_dir,
        rekey_after_secs: args.rekey_after_secs,
        ca_public_key: args.ca_public_key,
        certificate: args.certificate,
        revocation_list: args.revocation_list,
        arp_rpc_rate: args.arp_rpc_rate,
        broadcast_rate: args.broadcast_rate,
    }
}

/// Colour in logs only on a terminal, and never with `NO_COLOR` set to anything
/// (https://no-color.org): files and journald get plain text.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests;
