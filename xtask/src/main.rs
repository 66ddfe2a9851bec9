//! `cargo xtask setup | run | test | demo`: the project's one entry point on a fresh machine.

mod bench;
mod demo;
mod nat;
mod neigh;
mod scale;
mod setup;
mod simulate;
mod tail;

use std::{
    process::{Command, ExitCode},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, test and try ipop")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (idempotent): Debian packages, nightly rust-src,
    /// bpf-linker, bpffs mounted.
    Setup,
    /// Build and run the agent: `cargo xtask run -- --bridge lxcbr0` (needs root).
    Run {
        /// Arguments for `ipop-agent run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Format and lint checks, then every test: unit, eBPF (BPF_PROG_TEST_RUN), system (needs root).
    Test {
        /// Arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb): target/debian/ipop-agent_<version>_<arch>.deb.
    Deb,
    /// Build a host with a bridge and two containers in network namespaces, run the agent on
    /// an embedded default config, show an ARP request answered in the kernel, then clean up.
    Demo,
    /// The cost of an overlay too big for one machine, simulated: per agent, a full mesh
    /// against the ring with chords ARCHITECTURE.md (Scale) proposes, and what a broadcast
    /// costs and reaches along each, with the costs `bench --scale` measured.
    Simulate {
        /// Overlay sizes.
        #[arg(long, value_delimiter = ',', default_values_t = simulate::SIZES)]
        hosts: Vec<usize>,
    },
    /// Fuzz the decoders of hostile input (cargo fuzz, nightly): each target for `--seconds`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Targets to run [default: all].
        targets: Vec<String>,
    },
    /// Measure ipop beside tinc (switch mode), kernel VXLAN and the bare underlay (needs root).
    Bench {
        /// Runs per figure (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per throughput test.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Instead: N hosts meshed at once, for each N given (e.g. `--scale 8,16,32`): mesh
        /// time, failed attempts, idle CPU, RSS and bytes per link.
        #[arg(long, value_delimiter = ',')]
        scale: Vec<usize>,
        /// Instead: only ping's latency tail, ipop beside tinc and VXLAN, `--runs` rounds of
        /// 2,000 pings each: per round median, p99 and p99.9, and a histogram.
        #[arg(long, conflicts_with = "scale")]
        tail: bool,
    },
}

/// Builds the package: the release binary, then cargo-deb around it; the .deb's path.
fn deb() -> Result<std::path::PathBuf> {
    cargo(&["build", "--release", "--package", "ipop-agent"])?;
    let out = Command::new("cargo")
        .args(["deb", "--package", "ipop-agent", "--no-build"])
        .current_dir(root())
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = String::from_utf8(out.stdout)?.lines().last().context("cargo deb printed no path")?.trim().to_owned();
    Ok(path.into())
}

/// The package's test (`ipop-agent/tests/package.rs`, ignored by plain `cargo test`: it
/// needs the .deb built first): install, run, remove, nothing left.
fn package_test() -> Result<()> {
    let deb = deb()?;
    let status = Command::new("cargo")
        .args(["test", "--package", "ipop-agent", "--test", "package", "--", "--ignored"])
        .env("IPOP_DEB", &deb)
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("the package test failed ({status})");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Setup => setup::all(),
        Cmd::Run { args } => {
            setup::all()?;
            cargo(&["build", "--package", "ipop-agent"])?;
            let mut agent = Command::new(agent_binary());
            agent.arg("run").args(&args);
            // The agent handles SIGINT itself and exits cleanly; pass its status on.
            let status = agent.status().context("starting ipop-agent")?;
            if !status.success() {
                bail!("ipop-agent exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            setup::all()?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            // Default members: ipop-ebpf only builds for the BPF target (through build.rs).
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            let mut test = vec!["test"];
            test.extend(args.iter().map(String::as_str));
            cargo_test(&test)?;
            if args.is_empty() {
                package_test()?;
            }
            Ok(())
        }
        Cmd::Deb => {
            setup::all()?;
            println!("{}", deb()?.display());
            Ok(())
        }
        Cmd::Bench { runs, seconds, scale, tail } => {
            setup::all()?;
            setup::bench_packages()?;
            cargo(&["build", "--release", "--package", "ipop-agent"])?;
            let agent = root().join("target/release/ipop-agent");
            if !scale.is_empty() {
                return bench::run_scale(&agent, &scale);
            }
            if tail {
                return tail::run(&agent, runs.max(1));
            }
            bench::run(
                &root().join("target/release/ipop-agent"),
                bench::Options { runs: runs.max(1), seconds: seconds.max(1) },
            )
        }
        Cmd::Simulate { hosts } => simulate::run(&hosts),
        Cmd::Fuzz { seconds, targets } => {
            setup::all()?;
            setup::cargo_fuzz()?;
            let all = [
                "arp_frame",
                "link_datagram",
                "json_rpc",
                "config",
                "rendezvous",
                "chunks",
                "turn_stream",
                "rendezvous_channel",
                "signal_envelope",
            ];
            let targets: Vec<&str> =
                if targets.is_empty() { all.to_vec() } else { targets.iter().map(String::as_str).collect() };
            for t in targets {
                eprintln!("xtask fuzz: {t} for {seconds} s");
                let status = Command::new("cargo")
                    .args(["+nightly", "fuzz", "run", t, "--", &format!("-max_total_time={seconds}")])
                    .current_dir(root().join("fuzz"))
                    .status()?;
                if !status.success() {
                    let kept = keep_crashes(t)?;
                    bail!(
                        "fuzz target {t} failed ({status}): {kept} crashing input(s) copied to fuzz/regressions/{t}/, \
                         which `cargo test --test fuzz_regressions` replays; fix the bug, then commit them"
                    );
                }
            }
            Ok(())
        }
        Cmd::Demo => {
            setup::all()?;
            cargo(&["build", "--package", "ipop-agent"])?;
            demo::run(&agent_binary())
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn agent_binary() -> std::path::PathBuf {
    root().join("target/debug/ipop-agent")
}

/// Runs a command; its stdout, or an error with its stderr (the demo's and the benchmark's
/// commands; the topology itself comes from ipop-lab).
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits up to `secs` for `cond`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond()? {
        if Instant::now() > deadline {
            bail!("{what}: not within {secs} s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until every agent (by pin directory) reports a link up.
pub fn wait_links_up(agent: &str, pins: &[String]) -> Result<()> {
    for pin in pins {
        wait_for("the agents' links", 30, || {
            let out = Command::new(agent).args(["status", "--json", "--pin-dir", pin]).output()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok(status["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["up"] == true)))
        })?;
    }
    Ok(())
}

/// The cargo that runs xtask (so the same toolchain builds everything).
fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs cargo in the workspace root; fails with the command on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = cargo_command()
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and closes with one line totalling every test
/// binary's result (cargo's own last line is whichever binary ran last, often doc-tests).
fn cargo_test(args: &[&str]) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cargo_command()
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `test result: ok. 20 passed; 0 failed; ...` -> (20, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Copies the crashes cargo-fuzz left for `target` into the regression inputs; how many.
fn keep_crashes(target: &str) -> Result<usize> {
    let from = root().join("fuzz/artifacts").join(target);
    let to = root().join("fuzz/regressions").join(target);
    std::fs::create_dir_all(&to)?;
    let mut kept = 0;
    for entry in std::fs::read_dir(&from)?.flatten() {
        let name = entry.file_name();
        if ["crash-", "oom-", "timeout-"].iter().any(|p| name.to_string_lossy().starts_with(p)) {
            std::fs::copy(entry.path(), to.join(&name))?;
            kept += 1;
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn cargo_test_result_lines_are_totalled() {
        let ok = "test result: ok. 20 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(parse_test_result(ok), Some((20, 0)));
        let failed =
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.24s";
        assert_eq!(parse_test_result(failed), Some((3, 2)));
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
