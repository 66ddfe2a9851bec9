//! One host in network namespaces: bridge lxcbr0 with two containers and the agent running.
//! Checks what a user would: arping answered from the pinned map, counters, bpftool, local ARP
//! untouched, clean exit, and clear refusals that leave nothing behind. Needs root.

mod support;

use std::{
    fs,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use support::{Host, ok, prog_name, stats, tcx_links};

const REMOTE_IP: &str = "10.0.3.104";
const REMOTE_MAC: &str = "02:aa:00:00:00:68";

/// The tests count machine-wide TCX links, so they run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pin_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn arp_for_a_static_entry_is_answered_in_the_kernel_and_local_arp_is_untouched() {
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5", "10.0.3.6"]);
    let pins = host.pin_dir("lxcbr0");
    let links_before = tcx_links();
    let agent = host.start_agent(&["--bridge", "lxcbr0", "--pin-dir", pin_str(&pins)]);

    // The TAP is a port of the bridge, and both programs are attached through TCX links.
    let tap = host.ip(&["-j", "link", "show", "ipop"]);
    assert!(tap.contains("\"master\":\"lxcbr0\""), "{tap}");
    let ours: Vec<(u64, u64)> = tcx_links().into_iter().filter(|l| !links_before.contains(l)).collect();
    let mut names: Vec<String> = ours.iter().filter_map(|(_, prog)| prog_name(*prog)).collect();
    names.sort();
    assert_eq!(names, ["bridge_ingress", "tap_egress"]);

    // Without an entry, nobody answers for the remote IP.
    assert!(host.arping(0, REMOTE_IP, 1).is_empty());

    let out = host.agent(&["arp", "--pin-dir", pin_str(&pins), "add", REMOTE_IP, REMOTE_MAC]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answered_before = stats(&host, &pins)["answered"].as_u64().unwrap();

    let replies = host.arping(0, REMOTE_IP, 3);
    assert_eq!(replies, vec![REMOTE_MAC; 3], "every request answered once, with the entry's MAC");
    let answered_after = stats(&host, &pins)["answered"].as_u64().unwrap();
    assert_eq!(answered_after - answered_before, 3, "the in-kernel counter rises by the number of replies");

    // bpftool reads the pinned map as typed JSON.
    let dump = ok(&["bpftool", "-j", "map", "dump", "pinned", pin_str(&pins.join("arp_table"))]);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump[0]["formatted"]["key"]["ip"], serde_json::json!([10, 0, 3, 104]), "{dump}");
    assert_eq!(dump[0]["formatted"]["value"]["mac"], serde_json::json!([2, 0xaa, 0, 0, 0, 0x68]), "{dump}");

    // The CLI lists it too.
    let list = host.agent(&["arp", "--pin-dir", pin_str(&pins), "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(REMOTE_IP) && list.contains(REMOTE_MAC) && list.contains("static"), "{list}");

    // Local ARP between the containers still works, answered by the container itself.
    let c1_mac = host.container_mac(1);
    assert_eq!(host.arping(0, "10.0.3.6", 2), vec![c1_mac; 2]);
    assert_eq!(stats(&host, &pins)["answered"].as_u64().unwrap(), answered_after, "the kernel left local ARP alone");
    assert!(host.in_container(0, &["ping", "-c", "2", "-W", "2", "10.0.3.6"]).status.success());

    // After `arp del` the kernel stops answering.
    let out = host.agent(&["arp", "--pin-dir", pin_str(&pins), "del", REMOTE_IP]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(host.arping(0, REMOTE_IP, 1).is_empty());
    let out = host.agent(&["arp", "--pin-dir", pin_str(&pins), "del", REMOTE_IP]);
    assert!(!out.status.success() && stderr(&out).contains("not in the ARP table"), "{}", stderr(&out));

    // SIGTERM: programs detached and unloaded, TAP and pins gone, exit code 0.
    assert_eq!(host.stop_agent(agent, libc::SIGTERM), Some(0), "{}", host.agent_log(agent));
    let links_after = tcx_links();
    for (link, prog) in &ours {
        assert!(!links_after.iter().any(|(l, _)| l == link), "link {link} still attached");
        assert_eq!(prog_name(*prog), None, "program {prog} still loaded");
    }
    assert!(!host.has_link("ipop"), "TAP left behind");
    assert!(!pins.exists(), "pins left behind: {:?}", fs::read_dir(&pins).map(|d| d.count()));
    assert!(!host.pin_root.exists(), "pin directories the agent made are removed");
}

#[test]
fn a_killed_agent_leaves_no_program_and_the_next_one_takes_over() {
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5"]);
    let pins = host.pin_dir("lxcbr0");
    let links_before = tcx_links();
    let first = host.start_agent(&["--pin-dir", pin_str(&pins)]);
    let out = host.agent(&["arp", "--pin-dir", pin_str(&pins), "add", REMOTE_IP, REMOTE_MAC]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = host.agent(&["nd", "--pin-dir", pin_str(&pins), "add", "fd00::68", REMOTE_MAC]);
    assert!(out.status.success(), "{}", stderr(&out));

    host.stop_agent(first, libc::SIGKILL);
    // The kernel detached the programs with the agent's links, and removed the TAP with its fd.
    support::eventually("no TCX link survives a killed agent", || tcx_links() == links_before);
    assert!(!host.has_link("ipop"));
    assert!(host.arping(0, REMOTE_IP, 1).is_empty(), "nothing answers while no agent runs");

    // The pins stay (the kernel cannot remove files); the next agent takes the table back.
    let second = host.start_agent(&["--pin-dir", pin_str(&pins)]);
    let log = host.agent_log(second);
    assert!(log.contains("taking back the neighbour table") && log.contains("nd_table"), "{log}");
    assert_eq!(host.arping(0, REMOTE_IP, 2), vec![REMOTE_MAC; 2], "static entries survive a crash");
    let nd = host.agent(&["nd", "--pin-dir", pin_str(&pins), "list"]);
    assert!(String::from_utf8_lossy(&nd.stdout).contains("fd00::68"), "IPv6 ones too");
    assert_eq!(host.stop_agent(second, libc::SIGINT), Some(0));
    assert!(!pins.exists());
}

/// Runs `ipop-agent run <args>` expecting a refusal naming `reason`, and checks that it
/// left nothing behind: no TAP, no pins, no new TCX link.
fn refused(host: &Host, args: &[&str], reason: &str) {
    let links_before = tcx_links();
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let out = host.agent(&full);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {err}");
    assert!(err.contains(reason), "{args:?}: expected {reason:?} in:\n{err}");
    assert!(!host.has_link("ipop0"), "{args:?} left a TAP");
    assert_eq!(tcx_links(), links_before, "{args:?} left a program attached");
}

#[test]
fn bad_setups_are_refused_clearly_and_leave_nothing_behind() {
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5"]);
    let pins = host.pin_dir("first");
    let other_pins = host.pin_dir("second");
    let other = pin_str(&other_pins);

    refused(&host, &["--bridge", "nosuchbr", "--tap", "ipop0", "--pin-dir", other], "bridge nosuchbr not found");
    refused(&host, &["--bridge", "veth0", "--tap", "ipop0", "--pin-dir", other], "veth0 is not a bridge");
    refused(&host, &["--tap", "veth0", "--pin-dir", other], "interface veth0 already exists");
    refused(&host, &["--tap", "ipop0", "--pin-dir", "/tmp/ipop-not-bpffs"], "not on a BPF filesystem");
    assert!(!Path::new("/tmp/ipop-not-bpffs").exists());
    refused(&host, &["--tap", "ipop0", "--switchmode", "2"], "only runs in switch mode");

    let config = std::env::temp_dir().join(format!("{}-bad.json", host.prefix));
    fs::write(&config, r#"{"bridge": "lxcbr0", "tapp": "ipop0"}"#).unwrap();
    refused(&host, &["--config", config.to_str().unwrap()], "unknown field `tapp`");
    fs::write(&config, r#"{"bridge": "lxcbr0", "#).unwrap();
    refused(&host, &["--config", config.to_str().unwrap()], "invalid config");
    fs::remove_file(&config).unwrap();

    // Without privileges: no capabilities at all.
    let out = host.in_ns(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        support::AGENT,
        "run",
        "--tap",
        "ipop0",
        "--pin-dir",
        other,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs CAP_NET_ADMIN and CAP_BPF"), "{}", stderr(&out));

    // A second agent on a bridge that has one.
    let first = host.start_agent(&["--pin-dir", pin_str(&pins)]);
    refused(&host, &["--tap", "ipop0", "--pin-dir", other], "already running on bridge lxcbr0");
    // A second agent on the same pin directory, from another namespace with its own lxcbr0.
    let neighbour = Host::new(&[]);
    let out = neighbour.agent(&["run", "--tap", "ipop0", "--pin-dir", pin_str(&pins)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already running on pin directory"), "{}", stderr(&out));
    // The first agent is unharmed.
    let out = host.agent(&["arp", "--pin-dir", pin_str(&pins), "add", REMOTE_IP, REMOTE_MAC]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(host.arping(0, REMOTE_IP, 1), vec![REMOTE_MAC]);
    assert_eq!(host.stop_agent(first, libc::SIGTERM), Some(0));
    assert!(!other_pins.exists());
}

#[test]
fn an_unmounted_bpffs_is_refused() {
    let _serial = serial();
    let host = Host::new(&[]);
    // A private mount namespace where /sys/fs/bpf is not mounted; the default pin dir is used.
    let script = format!(
        "while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf || exit 9; done; exec nsenter --net=/run/netns/{} {} run --tap ipop0",
        host.ns,
        support::AGENT
    );
    let out = support::cmd(&["unshare", "--mount", "--propagation", "private", "sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("mount -t bpf bpf /sys/fs/bpf"), "{}", stderr(&out));
    assert!(!host.has_link("ipop0"));
}

#[test]
fn the_cli_refuses_bad_addresses_and_missing_agents() {
    let _serial = serial();
    let host = Host::new(&[]);
    let pins = host.pin_dir("none");
    let p = pin_str(&pins);
    for (args, reason) in [
        (vec!["arp", "--pin-dir", p, "add", "10.0.3.300", REMOTE_MAC], "invalid IPv4 address"),
        (vec!["arp", "--pin-dir", p, "add", REMOTE_IP, "02:aa:00:00:68"], "invalid MAC address"),
        (vec!["arp", "--pin-dir", p, "add", REMOTE_IP, "ff:ff:ff:ff:ff:ff"], "not a host MAC"),
        (vec!["arp", "--pin-dir", p, "add", "0.0.0.0", REMOTE_MAC], "not a host address"),
        (vec!["arp", "--pin-dir", p, "del", "nonsense"], "invalid IPv4 address"),
    ] {
        let out = host.agent(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: usage errors exit 2");
        assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
    }
    for args in [vec!["arp", "--pin-dir", p, "list"], vec!["stats", "--pin-dir", p]] {
        let out = host.agent(&args);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("no ipop agent is running"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn a_deleted_bridge_or_tap_stops_the_agent_cleanly() {
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5"]);
    let pins = host.pin_dir("lxcbr0");
    let links_before = tcx_links();

    // The TAP deleted under the agent: a clear error, exit 1, nothing left behind.
    let agent = host.start_agent(&["--pin-dir", pin_str(&pins)]);
    host.ip(&["link", "del", "ipop"]);
    assert_eq!(host.stop_agent_wait(agent), Some(1), "{}", host.agent_log(agent));
    let log = host.agent_log(agent);
    assert!(log.contains("TAP"), "the log says what happened:\n{log}");
    assert!(!pins.exists(), "pins removed");
    support::eventually("no program left attached", || tcx_links() == links_before);

    // The bridge deleted under the agent: the same.
    let agent = host.start_agent(&["--pin-dir", pin_str(&pins)]);
    host.ip(&["link", "del", "lxcbr0"]);
    assert_eq!(host.stop_agent_wait(agent), Some(1), "{}", host.agent_log(agent));
    let log = host.agent_log(agent);
    assert!(log.contains("bridge lxcbr0 is gone"), "{log}");
    assert!(!host.has_link("ipop"));
    assert!(!pins.exists());
    support::eventually("no program left attached", || tcx_links() == links_before);
}

#[test]
fn an_unprivileged_user_cannot_ask_the_agent_or_touch_its_maps() {
    use std::os::unix::fs::PermissionsExt as _;
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5"]);
    let pins = host.pin_dir("lxcbr0");
    host.start_agent(&["--bridge", "lxcbr0", "--pin-dir", pin_str(&pins)]);
    let agent = support::agent_binary();
    let agent = agent.to_str().unwrap();
    // As root: it answers.
    assert!(host.agent(&["status", "--pin-dir", pin_str(&pins)]).status.success());

    let sockets: Vec<_> = fs::read_dir("/run/ipop").unwrap().flatten().map(|e| e.path()).collect();
    let key = pin_str(&pins).replace('/', "%");
    let is_socket =
        |p: &&std::path::PathBuf| p.to_string_lossy().contains(&key) && p.extension().is_some_and(|e| e == "sock");
    let socket = sockets.iter().find(is_socket).expect("the agent's control socket");
    assert_eq!(fs::metadata(socket).unwrap().permissions().mode() & 0o777, 0o660, "{}", socket.display());
    assert_eq!(fs::metadata(&pins).unwrap().permissions().mode() & 0o777, 0o700, "{}", pins.display());

    // As nobody: no status, no ARP entry, no map write through bpftool.
    let nobody = |args: &[&str]| {
        let mut full = vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
        full.extend_from_slice(args);
        host.in_ns(&full)
    };
    let status = nobody(&[agent, "status", "--pin-dir", pin_str(&pins)]);
    assert!(!status.status.success() && stderr(&status).contains("ermission denied"), "{}", stderr(&status));
    let add = nobody(&[agent, "arp", "--pin-dir", pin_str(&pins), "add", REMOTE_IP, REMOTE_MAC]);
    assert!(!add.status.success(), "nobody added an ARP entry");
    let table = pins.join("arp_table");
    let key_hex = ["key", "hex", "0a", "00", "03", "68"];
    let update = nobody(
        &[&["bpftool", "map", "update", "pinned", pin_str(&table)][..], &key_hex, &["value", "hex"], &["00"; 24]]
            .concat(),
    );
    assert!(!update.status.success(), "nobody wrote the map through bpftool");
    let list = host.agent(&["arp", "--pin-dir", pin_str(&pins), "list", "--json"]);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(REMOTE_IP), "the table is as it was");
}

/// A system group made for one test, removed on drop (also when the test fails).
struct TempGroup {
    name: String,
    gid: String,
}

impl TempGroup {
    fn new(host: &Host) -> TempGroup {
        let name = format!("{}g", host.prefix.trim_end_matches('_'));
        let out = support::cmd(&["groupadd", "--system", &name]);
        assert!(out.status.success(), "groupadd {name}: {}", stderr(&out));
        let entry = support::cmd(&["getent", "group", &name]);
        let gid = String::from_utf8_lossy(&entry.stdout).split(':').nth(2).unwrap().to_owned();
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = support::cmd(&["groupdel", &self.name]);
    }
}

#[test]
fn a_member_of_the_control_group_reads_status_without_root() {
    let _serial = serial();
    let mut host = Host::new(&["10.0.3.5"]);
    let group = TempGroup::new(&host);
    let pins = host.pin_dir("lxcbr0");
    host.start_agent(&["--bridge", "lxcbr0", "--pin-dir", pin_str(&pins), "--control-group", &group.name]);
    let agent = support::agent_binary();
    let agent = agent.to_str().unwrap();
    let as_user = |groups: &str, args: &[&str]| {
        let groups = format!("--groups={groups}");
        let mut full = vec!["setpriv", "--reuid=65534", "--regid=65534", &groups];
        full.extend_from_slice(args);
        host.in_ns(&full)
    };
    let member = as_user(&group.gid, &[agent, "status", "--pin-dir", pin_str(&pins)]);
    assert!(member.status.success(), "{}", stderr(&member));
    let text = String::from_utf8_lossy(&member.stdout);
    assert!(text.contains("bridge: lxcbr0 (tap ipop)"), "the table:\n{text}");
    let json = as_user(&group.gid, &[agent, "status", "--json", "--pin-dir", pin_str(&pins)]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(doc["bridge"], "lxcbr0", "{doc}");
    assert!(doc["local_hosts"].is_array() && doc["switch"]["events"].is_u64(), "{doc}");
    // Not a member: refused by the socket's permissions.
    let stranger = as_user("65534", &[agent, "status", "--pin-dir", pin_str(&pins)]);
    assert!(!stranger.status.success() && stderr(&stranger).contains("ermission denied"), "{}", stderr(&stranger));
}
