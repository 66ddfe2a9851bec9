//! Node identity: each agent's long-term key, kept in its state directory (the lab gives every
//! host its own, `IPOP_STATE_DIR`), reused on restart, refused when others could read it.
//! Needs root.

mod support;

use std::os::unix::fs::PermissionsExt as _;

use support::{Host, SignalingProxy, Underlay, eventually_within};

const SECRET: &str = "correct horse battery";

/// `ipop-agent key show` on `host`: its public key.
fn key_show(host: &Host) -> String {
    let out = host.agent(&["key", "show"]);
    assert!(out.status.success(), "key show: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_node_key_survives_a_restart_and_the_peer_keeps_its_link() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
    }
    // The key exists before the first run (an operator reads it to sign a certificate).
    let key = key_show(&hosts[1]);
    assert!(key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    let a = hosts[0].start_member("h0", SECRET, &[]);
    let b = hosts[1].start_member("h1", SECRET, &[]);
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    hosts[1].stop_agent(b, libc::SIGTERM);
    hosts[1].start_member("h1", SECRET, &[]);
    eventually_within(20, "the link is up again", || hosts[0].link_up() && hosts[1].link_up());
    assert_eq!(key_show(&hosts[1]), key, "the same key after the restart");
    let log = hosts[0].agent_log(a);
    assert_eq!(
        log.matches("peer known: setting up the link node=h1").count(),
        1,
        "h0 kept its link to h1 (same key: no new peer):\n{log}"
    );
}

#[test]
fn a_node_key_others_can_read_stops_the_start_and_nothing_is_made() {
    let host = Host::new(&[]);
    key_show(&host);
    let state = host.file("state");
    let key = state.join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = host.agent(&["run", "--rendezvous", "192.0.2.1:7000", "--secret", SECRET, "--node-id", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.key can be read by others (mode 644)") && err.contains("chmod 600"), "{err}");
    assert!(!host.has_link("ipop"), "no TAP was made");
}

#[test]
fn the_ca_issues_certificates_that_verify_and_revokes_them() {
    let host = Host::new(&[]);
    let ca_dir = host.file("ca");
    let ca = |args: &[&str]| {
        let mut full = vec!["ca", "--dir", ca_dir.to_str().unwrap()];
        full.extend_from_slice(args);
        host.agent(&full)
    };
    let out = ca(&["init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca_public: ipop_cert::PublicKey = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let key_mode = std::fs::metadata(ca_dir.join("ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the CA key is private");
    assert_eq!(ca(&["init"]).status.code(), Some(1), "a second init would orphan every certificate");

    let node = key_show(&host);
    let cert_file = host.file("host-a.cert");
    let args = ["sign", "--node-id", "host-a", "--public-key", &node, "--ips", "10.0.3.0/28,fd00::/64"];
    let out = ca(&[&args[..], &["--expires", "30d", "--out", cert_file.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cert = ipop_cert::Certificate::from_text(&std::fs::read_to_string(&cert_file).unwrap()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let body = cert.verify(&ca_public, now).expect("the CA's certificate verifies");
    assert_eq!((body.node_id.as_str(), body.public_key.to_string()), ("host-a", node.clone()));
    assert_eq!(body.ips.len(), 2);
    assert!(body.not_after - body.not_before == 30 * 86_400);
    let shown = ca(&["show", cert_file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&shown.stderr).contains("valid: signed by the CA"));

    let out = ca(&["revoke", "--cert", cert_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = std::fs::read_to_string(ca_dir.join("revoked.json")).unwrap();
    let list = ipop_cert::RevocationList::from_text(&list).unwrap();
    let list = list.verify(&ca_public).expect("the CA's list verifies");
    assert!(list.number == 1 && list.revoked.contains(&body.serial), "{list:?}");
    let shown = ca(&["show", cert_file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&shown.stderr).contains("revoked"), "{}", String::from_utf8_lossy(&shown.stderr));

    let bad = ca(&["sign", "--node-id", "host b", "--public-key", &node]);
    assert_eq!(bad.status.code(), Some(1), "a bad node id is refused");
    let bad = ca(&["sign", "--node-id", "b", "--public-key", "not-a-key"]);
    assert_eq!(bad.status.code(), Some(2), "a bad key is a usage error");
}

#[test]
fn a_tcp_stream_across_ten_rekeys_loses_nothing() {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        // The test-only setting: a rekey every second instead of every two minutes.
        h.start_member(&format!("h{i}"), SECRET, &["--rekey-after-secs", "1"]);
    }
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    let server = hosts[1].in_container(0, &["iperf3", "-s", "-D", "-1"]);
    assert!(server.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = hosts[0].in_container(0, &["iperf3", "-c", "10.0.3.20", "-t", "16", "-J"]);
    assert!(
        out.status.success(),
        "the TCP connection lived through the rekeys: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["end"]["sum_received"]["bytes"].as_f64().unwrap() > 0.0);
    let status = |h: &Host| support::status(h, &h.pin_dir("lxcbr0"));
    // h0 (the smaller id) initiates; both count what they renewed.
    for h in &hosts {
        let s = status(h);
        let rekeys = s["peers"][0]["rekeys"].as_u64().unwrap_or(0);
        assert!(rekeys >= 10, "{rekeys} rekeys on {}: {s}", h.ns);
        assert!(s["datagrams_refused"].as_u64().unwrap() < 10, "datagrams across the switch opened: {s}");
        assert!(h.link_up(), "still up");
    }
}

/// An overlay with a CA: its directory (on `hosts[0]`), its public key, and the rendezvous
/// started with it (no secret).
struct CaOverlay {
    ca_dir: std::path::PathBuf,
    ca_public: String,
}

/// `rendezvous_args` go to the rendezvous; `REVOKED` among them stands for the CA's
/// revocation list file.
fn ca_overlay(underlay: &mut Underlay, hosts: &[Host], rendezvous_args: &[&str]) -> CaOverlay {
    let ca_dir = hosts[0].file("ca");
    let out = hosts[0].agent(&["ca", "--dir", ca_dir.to_str().unwrap(), "init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca_public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let revoked = ca_dir.join("revoked.json");
    let mut args = vec!["--overlay", "ipop", "--ca-public-key", &ca_public];
    args.extend(rendezvous_args.iter().map(|a| if *a == "REVOKED" { revoked.to_str().unwrap() } else { a }));
    underlay.start_rendezvous_with(&args);
    CaOverlay { ca_dir, ca_public }
}

impl CaOverlay {
    /// A certificate for `host`'s key as `node_id` (with `extra` sign options), in its scratch.
    fn certify(&self, signer: &Host, host: &Host, node_id: &str, extra: &[&str]) -> std::path::PathBuf {
        let file = host.file(&format!("{node_id}.cert"));
        let key = key_show(host);
        let mut args = vec!["ca", "--dir", self.ca_dir.to_str().unwrap(), "sign", "--node-id", node_id];
        args.extend_from_slice(&["--public-key", &key, "--out", file.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = signer.agent(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        file
    }

    /// `ipop-agent run` options of a member of this overlay with `cert` as `node_id`.
    fn member_args(&self, host: &Host, node_id: &str, cert: &std::path::Path) -> Vec<String> {
        let pins = host.pin_dir("lxcbr0");
        ["--pin-dir", pins.to_str().unwrap(), "--node-id", node_id, "--rendezvous", support::RENDEZVOUS]
            .into_iter()
            .chain(["--ca-public-key", &self.ca_public, "--certificate", cert.to_str().unwrap()])
            .map(str::to_owned)
            .collect()
    }
}

fn two_hosts(underlay: &Underlay) -> [Host; 2] {
    let hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter().enumerate() {
        h.join_underlay(underlay, i as u8 + 1);
    }
    hosts
}

fn start(host: &mut Host, args: &[String]) -> usize {
    host.start_agent(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn certified_members_link_with_a_rendezvous_that_holds_no_secret() {
    let mut underlay = Underlay::new();
    let mut hosts = two_hosts(&underlay);
    let ca = ca_overlay(&mut underlay, &hosts, &[]);
    for (i, node) in ["h0", "h1"].iter().enumerate() {
        let cert = ca.certify(&hosts[0], &hosts[i], node, &[]);
        let args = ca.member_args(&hosts[i], node, &cert);
        start(&mut hosts[i], &args);
    }
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    let out = hosts[0].in_container(0, &["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.3.20"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 received"), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_certificate_for_another_node_id_or_expired_stops_the_start() {
    let mut underlay = Underlay::new();
    let hosts = two_hosts(&underlay);
    let ca = ca_overlay(&mut underlay, &hosts, &[]);
    let cert = ca.certify(&hosts[0], &hosts[1], "h1", &[]);
    let run = |args: Vec<String>| {
        let mut full = vec!["run".to_owned()];
        full.extend(args);
        hosts[1].agent(&full.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = run(ca.member_args(&hosts[1], "h0", &cert));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("h0 shows the certificate of h1"), "{err}");
    let brief = ca.certify(&hosts[0], &hosts[1], "h1", &["--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = run(ca.member_args(&hosts[1], "h1", &brief));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired"), "{err}");
    assert!(!hosts[1].has_link("ipop"), "nothing was made");
}

#[test]
fn a_rendezvous_that_swaps_two_members_keys_gets_no_link_and_both_say_why() {
    let mut underlay = Underlay::new();
    let mut hosts = two_hosts(&underlay);
    let ca = ca_overlay(&mut underlay, &hosts, &[]);
    let proxy = support::signaling_proxy(&underlay, 7001, support::Faults { swap_keys: true, ..Default::default() });
    let mut agents = Vec::new();
    for (i, node) in ["h0", "h1"].iter().enumerate() {
        let cert = ca.certify(&hosts[0], &hosts[i], node, &[]);
        let mut args = ca.member_args(&hosts[i], node, &cert);
        let at = args.iter().position(|a| a == "--rendezvous").unwrap() + 1;
        args[at] = proxy.addr.clone();
        agents.push(start(&mut hosts[i], &args));
    }
    let said = |h: &Host, a: usize| h.agent_log(a).contains("certificate does not hold");
    eventually_within(20, "both agents refuse the swapped keys", || {
        said(&hosts[0], agents[0]) && said(&hosts[1], agents[1])
    });
    for (h, (a, other)) in hosts.iter().zip([(agents[0], "h1"), (agents[1], "h0")]) {
        let log = h.agent_log(a);
        assert!(
            log.contains(&format!("node={other}")) && log.contains("the key given for"),
            "who claimed what:\n{log}"
        );
        assert!(!h.link_up(), "no link with a key the certificate does not name");
    }
}

#[test]
fn an_arp_claim_outside_the_certificates_addresses_is_refused() {
    let mut underlay = Underlay::new();
    let mut hosts = two_hosts(&underlay);
    let ca = ca_overlay(&mut underlay, &hosts, &[]);
    // h1 may claim 10.0.3.16/28 (its container 10.0.3.20); its second container is outside.
    hosts[1].add_container("10.0.3.40");
    let certs = [
        ca.certify(&hosts[0], &hosts[0], "h0", &[]),
        ca.certify(&hosts[0], &hosts[1], "h1", &["--ips", "10.0.3.16/28"]),
    ];
    for (i, node) in ["h0", "h1"].iter().enumerate() {
        let args = ca.member_args(&hosts[i], node, &certs[i]);
        start(&mut hosts[i], &args);
    }
    for h in &hosts {
        eventually_within(20, "the link is up", || h.link_up());
    }
    let ping = |ip: &str| {
        let out = hosts[0].in_container(0, &["ping", "-c", "2", "-i", "0.2", "-W", "1", ip]);
        String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
    };
    assert!(ping("10.0.3.20"), "inside the certificate's addresses");
    assert!(!ping("10.0.3.40"), "outside them: never learned");
    let s = support::status(&hosts[0], &hosts[0].pin_dir("lxcbr0"));
    assert!(s["switch"]["claims_refused"].as_u64().unwrap() >= 1, "{s}");
    let log = hosts[0].agent_log(0);
    assert!(
        log.contains("claim refused: outside the addresses its certificate allows") && log.contains("10.0.3.40"),
        "{log}"
    );
    let table = hosts[0].agent(&["arp", "--pin-dir", hosts[0].pin_dir("lxcbr0").to_str().unwrap(), "list", "--json"]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains("10.0.3.40"), "not in the kernel's table");
}

#[test]
fn a_revoked_member_loses_its_links_within_5_s_and_cannot_rejoin() {
    let mut underlay = Underlay::new();
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"]), Host::new(&["10.0.3.30"])];
    for (i, h) in hosts.iter().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
    }
    let ca = ca_overlay(&mut underlay, &hosts, &["--revocation-list", "REVOKED"]);
    let mut agents = Vec::new();
    let mut certs = Vec::new();
    for (i, node) in ["h0", "h1", "h2"].iter().enumerate() {
        let cert = ca.certify(&hosts[0], &hosts[i], node, &[]);
        let args = ca.member_args(&hosts[i], node, &cert);
        agents.push(start(&mut hosts[i], &args));
        certs.push(cert);
    }
    let up_with = |h: &Host, node: &str| {
        let s = support::status(h, &h.pin_dir("lxcbr0"));
        s["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["node_id"] == node && p["up"] == true))
    };
    for (h, other) in [(&hosts[0], "h2"), (&hosts[1], "h2"), (&hosts[0], "h1")] {
        eventually_within(20, "the mesh is up", || up_with(h, other));
    }
    let out = hosts[0].in_container(0, &["ping", "-c", "1", "-W", "2", "10.0.3.30"]);
    assert!(out.status.success(), "h2's container reached before the revocation");
    let pins = hosts[0].pin_dir("lxcbr0");
    let table = |h: &Host| {
        String::from_utf8_lossy(&h.agent(&["arp", "--pin-dir", pins.to_str().unwrap(), "list"]).stdout).into_owned()
    };
    assert!(table(&hosts[0]).contains("10.0.3.30"));

    let out =
        hosts[0].agent(&["ca", "--dir", ca.ca_dir.to_str().unwrap(), "revoke", "--cert", certs[2].to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = std::time::Instant::now();
    eventually_within(5, "h0 and h1 close their links to h2", || {
        !up_with(&hosts[0], "h2") && !up_with(&hosts[1], "h2")
    });
    eventually_within(5, "h2's host leaves h0's kernel table", || !table(&hosts[0]).contains("10.0.3.30"));
    assert!(revoked_at.elapsed() <= std::time::Duration::from_secs(5), "{:?}", revoked_at.elapsed());
    assert!(up_with(&hosts[0], "h1"), "the others keep their link");
    assert!(hosts[0].agent_log(agents[0]).contains("revoked by the CA: its link is closed"));

    // h2 cannot come back: the rendezvous refuses its certificate.
    let code = hosts[2].stop_agent_wait(agents[2]);
    assert_eq!(code, Some(1), "h2's agent was refused and stopped:\n{}", hosts[2].agent_log(agents[2]));
    let log = hosts[2].agent_log(agents[2]);
    assert!(log.contains("refused this agent") && log.contains("revoked"), "{log}");
}

#[test]
fn a_member_whose_certificate_expires_loses_its_links() {
    let mut underlay = Underlay::new();
    let mut hosts = two_hosts(&underlay);
    let ca = ca_overlay(&mut underlay, &hosts, &[]);
    let certs =
        [ca.certify(&hosts[0], &hosts[0], "h0", &[]), ca.certify(&hosts[0], &hosts[1], "h1", &["--expires", "6s"])];
    let issued = std::time::Instant::now();
    let mut agents = Vec::new();
    for (i, node) in ["h0", "h1"].iter().enumerate() {
        let args = ca.member_args(&hosts[i], node, &certs[i]);
        agents.push(start(&mut hosts[i], &args));
    }
    eventually_within(6, "the link is up while the certificate holds", || hosts[0].link_up());
    std::thread::sleep(std::time::Duration::from_secs(6).saturating_sub(issued.elapsed()));
    eventually_within(5, "h0 closes its link once h1's certificate expired", || !hosts[0].link_up());
    let log = hosts[0].agent_log(agents[0]);
    assert!(log.contains("its certificate expired: its link is closed"), "{log}");
}

/// Two members on their own underlay, through a proxy in front of its rendezvous with
/// `faults`, started.
fn through_proxy(faults: support::Faults) -> ([Host; 2], SignalingProxy, Underlay) {
    let mut underlay = Underlay::new();
    underlay.start_rendezvous(SECRET);
    let proxy = support::signaling_proxy(&underlay, 7001, faults);
    let mut hosts = [Host::new(&["10.0.3.10"]), Host::new(&["10.0.3.20"])];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.join_underlay(&underlay, i as u8 + 1);
        h.start_member_at(&proxy.addr, &format!("h{i}"), SECRET, &[]);
    }
    (hosts, proxy, underlay)
}

#[test]
fn signals_are_sealed_so_a_rendezvous_can_neither_read_nor_rewrite_them() {
    // An honest rendezvous: the link comes up, and all it relayed is sealed.
    let (honest, proxy, _underlay) = through_proxy(support::Faults::default());
    for h in &honest {
        eventually_within(20, "the link is up", || h.link_up());
    }
    let seen = proxy.signals();
    assert!(!seen.is_empty(), "signals went through the rendezvous");
    for s in &seen {
        let v: serde_json::Value = serde_json::from_str(s).unwrap();
        let fields: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["sealed"], "only the seal: {s}");
        for secret in ["ufrag", "pwd", "candidate", "192.168.77.", "offer"] {
            assert!(!s.contains(secret), "the rendezvous read {secret:?} in {s}");
        }
    }
    // A rendezvous that changes one character of every signal: h1 (the controlled side, which
    // waits for an offer) refuses every offer, so neither side gets a link.
    let (hosts, proxy, _underlay) = through_proxy(support::Faults { tamper_signals: true, ..Default::default() });
    let refused = |h: &Host| support::status(h, &h.pin_dir("lxcbr0"))["signals_refused"].as_u64().unwrap_or(0);
    eventually_within(20, "h1 refuses the rewritten offers", || refused(&hosts[1]) >= 2);
    assert!(!proxy.signals().is_empty());
    let log = hosts[1].agent_log(0);
    assert!(log.contains("signal refused") && log.contains("node=h0"), "{log}");
    assert!(log.contains("its seal does not open"), "{log}");
    assert_eq!(log.matches("signal refused").count(), 1, "said once, counted every time:\n{log}");
    for h in &hosts {
        assert!(!h.link_up(), "no link from rewritten signals");
    }
}
