//! The papercuts found running the seed scenario (issue 10), each as a user met it: agents
//! started together under one new pin parent, the agent under `ip netns exec`, the CLI's
//! options after the subcommand and `--config`, colour codes in log files, and a bridge whose
//! MAC followed the TAP's. Needs root.

mod support;

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use support::{Host, Proc, agent_binary, ok};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts `ipop-agent run ARGS` in the host namespace without waiting, with `env`.
fn spawn_agent(host: &Host, args: &[&str], env: &[(&str, &str)], log: &str) -> Proc {
    let agent = agent_binary();
    let mut full = vec![agent.to_str().unwrap(), "run"];
    full.extend_from_slice(args);
    Proc::spawn(&host.ns, &full, env, &host.file(log))
}

/// Waits until `proc` logs that it is ready; panics with its log if it exits first.
fn wait_ready(proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = proc.log_text();
        if log.contains("ipop-agent ready") {
            return;
        }
        if let Some(status) = proc.try_wait() {
            panic!("agent exited ({status}) before it was ready:\n{log}");
        }
        assert!(Instant::now() < deadline, "agent not ready after 30 s:\n{log}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn eight_agents_started_at_once_under_one_new_parent_all_come_up() {
    let host = Host::new(&[]);
    // Eight bridges in one namespace, one agent each, pins under a parent nobody made yet.
    let parent = host.pin_root.join("x");
    for round in 0..3 {
        for i in 0..8 {
            host.ip(&["link", "add", &format!("br{i}"), "type", "bridge"]);
        }
        let pins: Vec<String> = (0..8).map(|i| parent.join(format!("h{i}")).to_str().unwrap().to_owned()).collect();
        let mut agents: Vec<Proc> = (0..8)
            .map(|i| {
                let (br, tap) = (format!("br{i}"), format!("ipop{i}"));
                let args = ["--bridge", br.as_str(), "--tap", tap.as_str(), "--pin-dir", pins[i].as_str()];
                spawn_agent(&host, &args, &[], &format!("r{round}a{i}.log"))
            })
            .collect();
        for a in &mut agents {
            wait_ready(a);
        }
        for p in &pins {
            assert!(fs::metadata(format!("{p}/arp_table")).is_ok(), "{p}: maps pinned");
        }
        // Stopped, each removes its own pins, and no agent removes another's.
        for (i, mut a) in agents.into_iter().enumerate() {
            a.signal(libc::SIGTERM);
            assert_eq!(a.wait_exit(10).and_then(|s| s.code()), Some(0), "{}", a.log_text());
            assert!(!Path::new(&pins[i]).exists(), "{}: removed by its agent", pins[i]);
            for p in &pins[i + 1..] {
                assert!(fs::metadata(format!("{p}/arp_table")).is_ok(), "{p}: still pinned");
            }
        }
        for i in 0..8 {
            host.ip(&["link", "del", &format!("br{i}")]);
        }
    }
}

#[test]
fn under_ip_netns_exec_the_agent_says_to_use_nsenter() {
    let host = Host::new(&[]);
    let pins = host.pin_dir("lxcbr0");
    let agent = agent_binary();
    let out = ok(&["ip", "netns", "list"]);
    assert!(out.contains(&host.ns));
    let out = support::cmd(&[
        "ip",
        "netns",
        "exec",
        &host.ns,
        agent.to_str().unwrap(),
        "run",
        "--pin-dir",
        pins.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ip netns exec"), "says what happened: {err}");
    assert!(err.contains("nsenter --net=/run/netns/"), "says what to do: {err}");
    assert!(!host.has_link("ipop"), "nothing was created");
}

#[test]
fn the_cli_finds_an_agent_by_its_config_and_takes_options_after_the_subcommand() {
    let mut host = Host::new(&["10.0.3.5"]);
    let pins = host.pin_dir("lxcbr0");
    let config = host.file("agent.json");
    let text = serde_json::json!({"bridge": "lxcbr0", "pin_dir": pins}).to_string();
    fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let pins = pins.to_str().unwrap();
    host.start_agent(&["--config", config]);

    let run = |args: &[&str]| {
        let out = host.agent(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["arp", "add", "10.0.3.104", "02:aa:00:00:00:68", "--config", config]);
    let listed = run(&["arp", "list", "--json", "--pin-dir", pins]);
    assert!(listed.contains("10.0.3.104") && listed.contains("02:aa:00:00:00:68"), "{listed}");
    assert_eq!(run(&["arp", "--config", config, "list", "--json"]), listed);
    let stats: serde_json::Value = serde_json::from_str(&run(&["stats", "--json", "--config", config])).unwrap();
    assert!(stats["seen"].is_u64(), "{stats}");
    let status: serde_json::Value = serde_json::from_str(&run(&["status", "--json", "--config", config])).unwrap();
    assert!(status["switch"].is_object(), "{status}");
    run(&["arp", "del", "--config", config, "10.0.3.104"]);
    assert_eq!(run(&["arp", "list", "--pin-dir", pins, "--json"]).trim(), "[]");

    // A config file that is not there, or names another bridge: a clear error.
    let out = host.agent(&["status", "--config", "/nonexistent/ipop.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reading config /nonexistent/ipop.json"), "{}", stderr(&out));
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let host = Host::new(&[]);
    let pins = host.pin_dir("lxcbr0");
    // NO_COLOR empty counts as unset: only the terminal decides.
    let mut agent = spawn_agent(&host, &["--pin-dir", pins.to_str().unwrap()], &[("NO_COLOR", "")], "plain.log");
    wait_ready(&mut agent);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(10).and_then(|s| s.code()), Some(0));
    let log = agent.log_text();
    assert!(log.contains("ipop-agent ready") && log.contains("stopped"), "{log}");
    assert!(!log.contains('\u{1b}'), "no escape codes in a file:\n{log:?}");
}

#[test]
fn the_bridge_keeps_its_mac_when_the_tap_joins() {
    let mut host = Host::new(&["10.0.3.5"]);
    // A bridge without a fixed address takes the lowest of its ports' MACs; with the
    // container's port at the top of the range, the TAP's random MAC would be lower.
    host.ip(&["link", "set", "veth0", "address", "fe:ff:ff:ff:ff:fe"]);
    let mac = |host: &Host| {
        let v: serde_json::Value = serde_json::from_str(&host.ip(&["-j", "link", "show", "lxcbr0"])).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
    let before = mac(&host);
    let pins = host.pin_dir("lxcbr0");
    host.start_agent(&["--pin-dir", pins.to_str().unwrap()]);
    assert!(host.has_link("ipop"));
    assert_eq!(mac(&host), before, "the containers' gateway MAC did not change");
    assert!(host.arping(0, "10.0.3.1", 1).iter().all(|m| *m == before), "the gateway answers with it");
}
