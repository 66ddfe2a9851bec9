use std::{ffi::OsStr, path::PathBuf};

use clap::Parser as _;

use super::*;

fn parse(args: &[&str]) -> Command {
    let mut full = vec!["ipop-agent"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{args:?}: {e}")).command
}

fn target(args: &[&str]) -> Target {
    match parse(args) {
        Command::Arp { target, .. } | Command::Status { target, .. } | Command::Stats { target, .. } => target,
        other => panic!("not an inspecting command: {other:?}"),
    }
}

#[test]
fn the_agent_options_work_before_and_after_the_subcommand() {
    let dir = Some(PathBuf::from("/sys/fs/bpf/x/h1"));
    for args in [
        &["arp", "list", "--pin-dir", "/sys/fs/bpf/x/h1"][..],
        &["arp", "--pin-dir", "/sys/fs/bpf/x/h1", "list"],
        &["arp", "add", "10.0.3.9", "02:00:00:00:00:09", "--pin-dir", "/sys/fs/bpf/x/h1"],
        &["arp", "del", "--pin-dir", "/sys/fs/bpf/x/h1", "10.0.3.9"],
        &["status", "--pin-dir", "/sys/fs/bpf/x/h1"],
        &["stats", "--pin-dir", "/sys/fs/bpf/x/h1", "--json"],
    ] {
        assert_eq!(target(args).pin_dir, dir, "{args:?}");
    }
    assert!(matches!(parse(&["arp", "list", "--json", "--bridge", "br9"]), Command::Arp {
        target: Target { bridge: Some(b), .. },
        command: TableCommand::List { json: true },
    } if b == "br9"));
    assert_eq!(
        target(&["--log", "debug", "status", "--config", "/etc/ipop.json"]).config,
        Some("/etc/ipop.json".into())
    );
}

#[test]
fn the_agent_is_found_from_its_config_file() {
    let dir = std::env::temp_dir().join(format!("ipop-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_pins = dir.join("pins.json");
    std::fs::write(&with_pins, r#"{"bridge": "br7", "pin_dir": "/sys/fs/bpf/lab/h7"}"#).unwrap();
    let with_bridge = dir.join("bridge.json");
    std::fs::write(&with_bridge, r#"{"bridge": "br7"}"#).unwrap();
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"bridge": "br7", "colour": 1}"#).unwrap();

    let pins = |t: Target| t.pin_dir().map_err(|e| format!("{e:#}"));
    let with = |path: &PathBuf| Target { config: Some(path.clone()), ..Default::default() };
    assert_eq!(pins(with(&with_pins)), Ok("/sys/fs/bpf/lab/h7".into()), "the config's pin_dir");
    assert_eq!(pins(with(&with_bridge)), Ok("/sys/fs/bpf/ipop/br7".into()), "the config's bridge");
    let bridge_wins = Target { bridge: Some("br8".into()), ..with(&with_pins) };
    assert_eq!(pins(bridge_wins), Ok("/sys/fs/bpf/ipop/br8".into()), "the command line over the file");
    assert_eq!(pins(Target::default()), Ok("/sys/fs/bpf/ipop/lxcbr0".into()));
    let err = pins(with(&broken)).unwrap_err();
    assert!(err.contains("broken.json") && err.contains("colour"), "{err}");
    let err = pins(with(&dir.join("missing.json"))).unwrap_err();
    assert!(err.contains("reading config"), "{err}");
    let both = Target { bridge: Some("br8".into()), pin_dir: Some("/sys/fs/bpf/y".into()), config: None };
    assert!(pins(both).unwrap_err().contains("give one"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    assert!(colour(true, None));
    assert!(!colour(false, None), "a file or journald gets no escape codes");
    assert!(!colour(true, Some(OsStr::new("1"))), "NO_COLOR set");
    assert!(colour(true, Some(OsStr::new(""))), "NO_COLOR empty counts as unset");
}
