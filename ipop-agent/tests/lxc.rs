//! Real LXC containers: two hosts on the underlay, each with one busybox container made by
//! `lxc-create -t busybox` on its lxcbr0, agents with a secret meeting through a rendezvous,
//! or in a prosody's room; the containers ping each other across the overlay, as they would
//! on two machines. Needs root, lxc, busybox-static and prosody (`cargo xtask setup`).

mod support;

use support::{Cert, Host, Underlay, eventually_within};

const SECRET: &str = "correct horse battery";
const IPS: [&str; 2] = ["10.0.3.10", "10.0.3.20"];

/// How the agents meet.
enum Signaling {
    Rendezvous,
    /// A prosody on the underlay, the room's members h0 and h1.
    Xmpp,
}

fn two_lxc_hosts(signaling: Signaling) {
    let mut underlay = Underlay::new();
    let prosody = match signaling {
        Signaling::Rendezvous => {
            underlay.start_rendezvous(SECRET);
            None
        }
        Signaling::Xmpp => {
            let accounts = [("h0", "h0-password"), ("h1", "h1-password")];
            Some(underlay.start_prosody(&accounts, &["h0", "h1"], Cert::Good))
        }
    };
    let mut hosts = Vec::new();
    for (i, ip) in IPS.iter().enumerate() {
        let mut host = Host::new(&[]);
        host.join_underlay(&underlay, i as u8 + 1);
        host.add_lxc(ip);
        let node = format!("h{i}");
        match &prosody {
            None => host.start_member(&node, SECRET, &[]),
            Some(p) => host.start_xmpp_member(&p.addr, &p.ca, &node, &format!("{node}-password"), SECRET),
        };
        hosts.push(host);
    }
    for host in &hosts {
        eventually_within(30, "link up", || host.link_up());
    }
    for (i, host) in hosts.iter().enumerate() {
        let to = IPS[1 - i];
        let out = host.in_lxc(0, &["ping", "-c", "3", "-W", "2", to]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} -> {to} inside LXC: {text}{}", IPS[i], String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("3 packets received"), "{text}");
    }
    // The reply came from the other host's container: host 0's agent learned its MAC.
    let pins = hosts[0].pin_dir("lxcbr0");
    let list = hosts[0].agent(&["arp", "--pin-dir", pins.to_str().unwrap(), "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    let mac = hosts[1].lxc(0).mac();
    assert!(!mac.is_empty() && list.contains(IPS[1]) && list.contains(&mac), "{mac} for {} in:\n{list}", IPS[1]);
}

#[test]
fn lxc_containers_on_two_hosts_ping_each_other_across_the_overlay() {
    two_lxc_hosts(Signaling::Rendezvous);
}

#[test]
fn the_same_with_the_agents_meeting_in_an_xmpp_room() {
    two_lxc_hosts(Signaling::Xmpp);
}
