use ipop_common::{
    arp::{Arp, ArpFrame, BROADCAST, ETHERTYPE_ARP, OP_REPLY, OP_REQUEST},
    maps::{ArpEvent, HOOK_BRIDGE_INGRESS, HOOK_TAP_EGRESS, VERDICT_ANSWERED, VERDICT_PASSED},
};

use std::net::Ipv4Addr;

use super::*;
use crate::core::rpc::{ArpReply, ArpRequest};

const A: [u8; 6] = [2, 0, 0, 0, 0, 5];
const B: [u8; 6] = [2, 0, 0, 0, 0, 6];
const R: [u8; 6] = [2, 0, 0, 0, 0, 0x68];
const A_IP: [u8; 4] = [10, 0, 3, 5];
const B_IP: [u8; 4] = [10, 0, 3, 6];
const R_IP: [u8; 4] = [10, 0, 3, 104];
const SEC: u64 = 1_000_000_000;
const P1: PeerId = 1;
const P2: PeerId = 2;

fn event(hook: u8, op: u16, sender: ([u8; 6], [u8; 4]), target: ([u8; 6], [u8; 4])) -> ArpEvent {
    ArpEvent {
        ifindex: 7,
        hook,
        verdict: VERDICT_PASSED,
        op,
        eth_src: sender.0,
        eth_dst: if op == OP_REQUEST { [0xff; 6] } else { target.0 },
        sender_mac: sender.0,
        sender_ip: sender.1,
        target_mac: target.0,
        target_ip: target.1,
    }
}

fn request(hook: u8, target_ip: [u8; 4]) -> ArpEvent {
    event(hook, OP_REQUEST, (A, A_IP), ([0; 6], target_ip))
}

fn with_peers(peers: &[PeerId]) -> Switch {
    let mut sw = Switch::new(60 * SEC);
    for p in peers {
        sw.peer_up(*p);
    }
    sw
}

fn remote_request() -> Method {
    Method::ArpRequest(ArpRequest { sender_mac: Mac(R), sender_ip: R_IP.into(), target_ip: A_IP.into() })
}

fn remote_reply_to_a() -> Method {
    Method::ArpReply(ArpReply {
        sender_mac: Mac(R),
        sender_ip: R_IP.into(),
        target_mac: Mac(A),
        target_ip: A_IP.into(),
    })
}

fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

#[test]
fn a_request_for_an_unknown_ip_is_broadcast_to_peers_once() {
    let mut sw = with_peers(&[P1, P2]);
    let at_bridge = sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
    assert_eq!(at_bridge, vec![Output::LocalLearned { ip: A_IP.into(), mac: Mac(A), previous: None }]);
    let at_tap = sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP));
    let expected =
        Method::ArpRequest(ArpRequest { sender_mac: Mac(A), sender_ip: A_IP.into(), target_ip: R_IP.into() });
    assert_eq!(at_tap, vec![Output::Broadcast(expected)], "one broadcast, from the TAP hook only");
    assert_eq!(sw.counters().rpc_sent, 1);
}

#[test]
fn without_peers_nothing_is_sent() {
    let mut sw = with_peers(&[]);
    assert!(!sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP)).iter().any(|o| matches!(o, Output::Broadcast(_))));
    assert_eq!(sw.counters().unresolved, 1);
    assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800)), Route::Drop);
}

#[test]
fn a_request_answered_in_the_kernel_needs_no_rpc() {
    let mut sw = with_peers(&[P1]);
    let mut ev = request(HOOK_TAP_EGRESS, R_IP);
    ev.verdict = VERDICT_ANSWERED;
    let out = sw.handle_arp(0, &ev);
    assert!(out.contains(&Output::AnsweredInKernel { ip: R_IP.into(), requester: A_IP.into() }));
    let sent: Vec<&Output> = out.iter().filter(|o| matches!(o, Output::Broadcast(_))).collect();
    assert_eq!(sent, vec![&Output::Broadcast(announcement(A, A_IP))], "only the new requester, announced");
    assert_eq!((sw.counters().answered_in_kernel, sw.counters().rpc_sent), (1, 0));
}

#[test]
fn a_request_for_a_local_host_or_the_bridge_stays_local() {
    let mut sw = with_peers(&[P1]);
    sw.add_local_address([10, 0, 3, 1].into(), Mac([2, 0, 0, 0, 0, 1]));
    sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, B_IP), ([0; 6], [10, 0, 3, 1])));
    for target in [B_IP, [10, 0, 3, 1]] {
        let out = sw.handle_arp(1, &request(HOOK_TAP_EGRESS, target));
        let asked = out.iter().any(|o| matches!(o, Output::Broadcast(Method::ArpRequest(_) | Method::ArpReply(_))));
        assert!(!asked, "{out:?}");
    }
    assert_eq!((sw.counters().resolved_locally, sw.counters().rpc_sent), (2, 0));
}

#[test]
fn local_replies_and_announcements_are_told_to_peers() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_arp(0, &event(HOOK_TAP_EGRESS, OP_REPLY, (B, B_IP), (R, R_IP)));
    let reply = Method::ArpReply(ArpReply {
        sender_mac: Mac(B),
        sender_ip: B_IP.into(),
        target_mac: Mac(R),
        target_ip: R_IP.into(),
    });
    assert!(out.contains(&Output::Broadcast(reply)), "{out:?}");
    let out = sw.handle_arp(1, &event(HOOK_TAP_EGRESS, OP_REQUEST, (B, B_IP), ([0; 6], B_IP)));
    assert!(
        matches!(out.as_slice(), [Output::Broadcast(Method::ArpReply(r))] if r.target_mac == Mac(BROADCAST)),
        "{out:?}"
    );
}

#[test]
fn a_peer_request_is_installed_then_replayed_into_the_bridge() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_rpc(0, P1, &remote_request());
    assert_eq!(
        out[0],
        Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P1, router: None },
        "install first, so the injected frame is not reported back"
    );
    let Output::WriteTap(bytes) = &out[1] else { panic!("{out:?}") };
    let f = ArpFrame::parse(bytes).unwrap();
    assert_eq!((f.eth_dst(), f.eth_src()), (BROADCAST, R));
    assert_eq!(f.arp(), Arp { op: OP_REQUEST, sender_mac: R, sender_ip: R_IP, target_mac: [0; 6], target_ip: A_IP });
    assert_eq!(sw.remote(R_IP.into()), Some(Remote { mac: Mac(R), peer: P1, updated_ns: 0 }));
}

#[test]
fn a_peer_reply_for_a_local_requester_is_delivered() {
    let mut sw = with_peers(&[P1]);
    sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
    let out = sw.handle_rpc(1, P1, &remote_reply_to_a());
    assert_eq!(out[0], Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P1, router: None });
    let Output::WriteTap(bytes) = &out[1] else { panic!("{out:?}") };
    let f = ArpFrame::parse(bytes).unwrap();
    assert_eq!((f.eth_dst(), f.eth_src(), f.arp().op), (A, R, OP_REPLY));
    // A reply for a host that is not ours is installed but not written into the bridge.
    let other = Method::ArpReply(ArpReply {
        sender_mac: Mac([2, 0, 0, 0, 0, 0x70]),
        sender_ip: [10, 0, 3, 112].into(),
        target_mac: Mac([2, 0, 0, 0, 0, 0x71]),
        target_ip: [10, 0, 3, 113].into(),
    });
    let out = sw.handle_rpc(2, P1, &other);
    assert_eq!(out.len(), 1, "{out:?}");
}

#[test]
fn conflicting_claims_are_reported_and_the_owner_stands() {
    let mut sw = with_peers(&[P1, P2]);
    sw.handle_rpc(0, P1, &remote_request());
    let rival = Method::ArpRequest(ArpRequest {
        sender_mac: Mac([2, 0, 0, 0, 0, 0x99]),
        sender_ip: R_IP.into(),
        target_ip: A_IP.into(),
    });
    let out = sw.handle_rpc(1, P2, &rival);
    assert_eq!(
        out,
        vec![Output::Conflict {
            ip: R_IP.into(),
            owner: Owner::Remote { mac: Mac(R), peer: P1 },
            claimed: Mac([2, 0, 0, 0, 0, 0x99]),
            by: P2
        }]
    );
    assert_eq!(sw.remote(R_IP.into()).unwrap().mac, Mac(R));
    // A peer claiming a local host's IP.
    sw.handle_arp(2, &request(HOOK_BRIDGE_INGRESS, R_IP));
    let spoof = Method::ArpReply(ArpReply {
        sender_mac: Mac(R),
        sender_ip: A_IP.into(),
        target_mac: Mac(B),
        target_ip: B_IP.into(),
    });
    let out = sw.handle_rpc(3, P2, &spoof);
    assert!(matches!(out.as_slice(), [Output::Conflict { owner: Owner::Local(m), .. }] if *m == Mac(A)), "{out:?}");
    assert_eq!(sw.counters().conflicts, 2);
}

#[test]
fn a_peer_may_claim_only_what_its_certificate_allows() {
    let mut sw = with_peers(&[P1]);
    sw.set_allowed(P1, Allowed { ips: vec!["10.0.3.96/28".parse().unwrap()], macs: Vec::new() });
    // R_IP 10.0.3.104 is inside 10.0.3.96/28.
    assert!(matches!(sw.handle_rpc(0, P1, &remote_request()).as_slice(), [Output::ArpInstall { .. }, ..]));
    let outside = Method::ArpRequest(ArpRequest { sender_mac: Mac(R), sender_ip: B_IP.into(), target_ip: A_IP.into() });
    let out = sw.handle_rpc(1, P1, &outside);
    assert_eq!(out, vec![Output::ClaimRefused { ip: B_IP.into(), claimed: Mac(R), by: P1 }]);
    assert_eq!(sw.remote(B_IP.into()), None, "nothing learned, nothing in the kernel");
    // A MAC list limits the MACs too.
    sw.set_allowed(P1, Allowed { ips: Vec::new(), macs: vec![Mac(B)] });
    assert!(matches!(sw.handle_rpc(2, P1, &remote_request()).as_slice(), [Output::ClaimRefused { .. }]));
    assert_eq!((sw.counters().claims_refused, sw.counters().conflicts), (2, 0));
}

#[test]
fn a_local_host_withdraws_a_remote_claim_to_its_ip() {
    let mut sw = with_peers(&[P1]);
    sw.handle_rpc(0, P1, &remote_request());
    let out = sw.handle_arp(1, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, R_IP), ([0; 6], B_IP)));
    assert_eq!(out[0], Output::ArpRemove { ip: R_IP.into() }, "never answered in the kernel for a local IP");
    assert_eq!(out[1], Output::LocalOverridesRemote { ip: R_IP.into(), local: Mac(A), remote: Mac(R), peer: P1 });
    assert_eq!(sw.remote(R_IP.into()), None);
    assert_eq!(sw.counters().conflicts, 1);
}

#[test]
fn one_source_flooding_arp_is_limited_others_are_not() {
    let mut sw = with_peers(&[P1])
        .with_limits(Limits { arp_per_source: Rate { per_sec: 100, burst: 10 }, broadcast: Rate::UNLIMITED });
    let flood = |sw: &mut Switch, now: u64, n: u8| {
        let ev = event(HOOK_TAP_EGRESS, OP_REQUEST, (A, A_IP), ([0; 6], [10, 0, 4, n]));
        sw.handle_arp(now, &ev).iter().any(|o| matches!(o, Output::Broadcast(_)))
    };
    let sent = (0..50).filter(|n| flood(&mut sw, 0, *n)).count();
    assert_eq!(sent, 10, "the burst, then nothing");
    assert_eq!(sw.counters().rpc_limited, 40);
    assert!(flood(&mut sw, SEC / 100, 99), "one more after 10 ms at 100/s");
    let other = event(HOOK_TAP_EGRESS, OP_REQUEST, (B, B_IP), ([0; 6], R_IP));
    assert!(
        sw.handle_arp(0, &other).iter().any(|o| matches!(o, Output::Broadcast(_))),
        "another source is not affected"
    );
}

#[test]
fn storm_control_limits_flooded_broadcasts_only() {
    let mut sw = with_peers(&[P1, P2])
        .with_limits(Limits { arp_per_source: Rate::UNLIMITED, broadcast: Rate { per_sec: 10, burst: 2 } });
    let routes: Vec<Route> = (0..4).map(|_| sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800))).collect();
    assert_eq!(routes, [Route::AllPeers, Route::AllPeers, Route::Drop, Route::Drop]);
    assert_eq!(sw.counters().storm_dropped, 2);
    assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::AllPeers, "unknown unicast is not a storm");
    assert_eq!(sw.route_from_bridge(SEC, &frame(BROADCAST, A, 0x0800)), Route::AllPeers, "refilled");
}

#[test]
fn the_local_table_is_bounded() {
    let mut sw = with_peers(&[]);
    for i in 0..MAX_LOCAL as u32 + 10 {
        let ip = (0x0a00_0000 + i).to_be_bytes();
        sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, ip), ([0; 6], B_IP)));
    }
    assert_eq!(sw.counters().local_full, 10);
}

#[test]
fn frames_follow_learned_macs_and_flood_otherwise() {
    let mut sw = with_peers(&[P1, P2]);
    assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::AllPeers, "unknown unicast floods");
    assert!(sw.accept_from_peer(0, P2, &frame(A, R, 0x0800)));
    assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::Peer(P2));
    assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, 0x0800)), Route::AllPeers);
    assert_eq!(sw.route_from_bridge(0, &frame([0x01, 0, 0x5e, 0, 0, 1], A, 0x0800)), Route::AllPeers);
    assert_eq!(sw.route_from_bridge(0, &frame(BROADCAST, A, ETHERTYPE_ARP)), Route::Drop, "ARP only as RPC");
    assert_eq!(sw.route_from_bridge(0, &[0u8; 10]), Route::Drop);
}

#[test]
fn peer_frames_that_are_arp_short_or_from_local_macs_are_refused() {
    let mut sw = with_peers(&[P1]);
    sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
    assert!(!sw.accept_from_peer(0, P1, &frame(BROADCAST, R, ETHERTYPE_ARP)));
    assert!(!sw.accept_from_peer(0, P1, &[0u8; 13]));
    assert!(!sw.accept_from_peer(0, P1, &frame(BROADCAST, A, 0x0800)), "our own host's MAC from the overlay");
    assert_eq!(sw.counters().frames_refused, 3);
}

#[test]
fn a_peer_going_down_takes_its_entries_with_it() {
    let mut sw = with_peers(&[P1, P2]);
    sw.handle_rpc(0, P1, &remote_request());
    sw.accept_from_peer(0, P1, &frame(A, R, 0x0800));
    assert_eq!(sw.peer_down(P2), vec![]);
    assert_eq!(sw.peer_down(P1), vec![Output::ArpRemove { ip: R_IP.into() }]);
    assert_eq!(sw.remote(R_IP.into()), None);
    assert_eq!(sw.route_from_bridge(0, &frame(R, A, 0x0800)), Route::Drop, "no peer left");
}

#[test]
fn entries_age_out_unless_refreshed() {
    let mut sw = Switch::new(10 * SEC);
    sw.peer_up(P1);
    sw.add_local_address([10, 0, 3, 1].into(), Mac([2, 0, 0, 0, 0, 1]));
    sw.handle_rpc(0, P1, &remote_request());
    sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
    sw.handle_rpc(8 * SEC, P1, &remote_request());
    assert!(sw.expire(15 * SEC).is_empty(), "refreshed at 8 s");
    assert_eq!(sw.local(A_IP.into()), None, "the silent local host is forgotten");
    assert_eq!(sw.expire(19 * SEC), vec![Output::ArpRemove { ip: R_IP.into() }]);
    assert!(sw.local([10, 0, 3, 1].into()).is_some(), "the bridge's own address stays");
}

fn orphan(mac: [u8; 6], tag: u32) -> Orphan {
    Orphan { mac: Mac(mac), tag, updated_ns: 0 }
}

#[test]
fn entries_left_by_a_crashed_agent_return_to_their_peer_or_go_after_the_grace() {
    let mut sw = Switch::new(60 * SEC);
    sw.add_local_address(B_IP.into(), Mac(B));
    let kept = sw.restore(
        SEC,
        10 * SEC,
        [(R_IP.into(), orphan(R, 0xaa)), ([10, 0, 3, 105].into(), orphan(A, 0xbb)), (B_IP.into(), orphan(A, 0xaa))],
    );
    assert_eq!(kept, vec![Output::ArpRemove { ip: B_IP.into() }], "a local IP is never answered for a peer");
    assert_eq!(sw.orphans(), 2);
    // Peer 0xaa's link comes back as P1: its entry is its own again, and goes with it.
    sw.peer_up(P1);
    sw.adopt(0xaa, P1);
    assert_eq!(sw.remote(R_IP.into()), Some(Remote { mac: Mac(R), peer: P1, updated_ns: 0 }));
    assert!(sw.expire(5 * SEC).is_empty(), "within the grace, the other orphan stays");
    // Peer 0xbb never returns: its entry is withdrawn when the grace ends.
    assert_eq!(sw.expire(11 * SEC), vec![Output::ArpRemove { ip: [10, 0, 3, 105].into() }]);
    assert_eq!(sw.orphans(), 0);
    assert_eq!(sw.peer_down(P1), vec![Output::ArpRemove { ip: R_IP.into() }]);
}

#[test]
fn a_live_claim_or_a_local_host_supersedes_an_orphan() {
    let mut sw = with_peers(&[P2]);
    sw.restore(0, 10 * SEC, [(R_IP.into(), orphan(A, 0xaa)), (A_IP.into(), orphan(R, 0xaa))]);
    let out = sw.handle_rpc(SEC, P2, &remote_request());
    assert_eq!(
        out[0],
        Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P2, router: None },
        "no conflict with an orphan"
    );
    let out = sw.handle_arp(SEC, &request(HOOK_BRIDGE_INGRESS, R_IP));
    assert_eq!(out[0], Output::ArpRemove { ip: A_IP.into() }, "A lives here now");
    assert_eq!(sw.orphans(), 0);
    sw.adopt(0xaa, P1);
    assert_eq!(sw.remote(R_IP.into()).map(|r| r.peer), Some(P2), "adoption never overrides a live claim");
}

#[test]
fn probes_are_neither_learned_nor_sent() {
    let mut sw = with_peers(&[P1]);
    let probe = event(HOOK_TAP_EGRESS, OP_REQUEST, (A, [0; 4]), ([0; 6], A_IP));
    assert!(sw.handle_arp(0, &probe).is_empty());
    assert_eq!(sw.local(A_IP.into()), None);
    assert_eq!(sw.counters().probes, 1);
}

#[test]
fn a_moved_host_is_reported_with_its_old_mac() {
    let mut sw = with_peers(&[]);
    sw.handle_arp(0, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP)));
    assert!(sw.handle_arp(1, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP))).is_empty());
    let out = sw.handle_arp(2, &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, A_IP), ([0; 6], B_IP)));
    assert_eq!(out, vec![Output::LocalLearned { ip: A_IP.into(), mac: Mac(B), previous: Some(Mac(A)) }]);
}

#[test]
fn events_the_programs_never_send_are_counted_not_acted_on() {
    let mut sw = with_peers(&[P1]);
    let mut ev = request(HOOK_TAP_EGRESS, R_IP);
    ev.hook = 9;
    assert!(sw.handle_arp(0, &ev).is_empty());
    let mut ev = request(HOOK_TAP_EGRESS, R_IP);
    ev.op = 3;
    assert!(sw.handle_arp(0, &ev).is_empty());
    assert_eq!(sw.counters().unexpected, 2);
}

fn announcement(mac: [u8; 6], ip: [u8; 4]) -> Method {
    Method::HostAnnounce(crate::core::rpc::HostAnnounce { mac: Mac(mac), ip: ip.into() })
}

#[test]
fn a_host_that_only_speaks_locally_is_announced_once() {
    let mut sw = with_peers(&[P1]);
    sw.add_local_address(Ipv4Addr::new(10, 0, 3, 1).into(), Mac(B));
    // A asks for the bridge's address: resolved locally, nothing would cross: announced.
    sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, [10, 0, 3, 1]));
    let out = sw.handle_arp(0, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1]));
    assert_eq!(out, vec![Output::Broadcast(announcement(A, A_IP))], "{out:?}");
    assert!(sw.handle_arp(SEC, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1])).is_empty(), "once");
    assert_eq!(sw.counters().announced, 1);
    // Told again once half the entries' age (60 s here) has passed: their entries stay fresh.
    let out = sw.handle_arp(31 * SEC, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1]));
    assert_eq!(out, vec![Output::Broadcast(announcement(A, A_IP))]);
}

#[test]
fn a_reply_to_the_bridge_itself_is_announced_from_the_bridge_hook() {
    let mut sw = with_peers(&[P1]);
    let reply = event(HOOK_BRIDGE_INGRESS, OP_REPLY, (A, A_IP), (B, [10, 0, 3, 1]));
    let out = sw.handle_arp(0, &reply);
    assert!(out.contains(&Output::Broadcast(announcement(A, A_IP))), "{out:?}");
}

#[test]
fn a_host_whose_own_request_crosses_needs_no_announcement() {
    let mut sw = with_peers(&[P1]);
    sw.add_local_address(Ipv4Addr::new(10, 0, 3, 1).into(), Mac(B));
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP));
    sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, R_IP));
    sw.handle_arp(SEC, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1]));
    assert_eq!((sw.counters().rpc_sent, sw.counters().announced), (1, 0));
}

#[test]
fn a_link_come_up_hears_of_every_local_host_but_the_bridges_own_addresses() {
    let mut sw = with_peers(&[]);
    sw.add_local_address(Ipv4Addr::new(10, 0, 3, 1).into(), Mac(B));
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1]));
    assert_eq!(sw.peer_up(P1), vec![Output::SendTo(P1, announcement(A, A_IP))]);
    assert!(sw.peer_up(P1).is_empty(), "only when it comes up");
}

#[test]
fn an_announced_remote_host_is_installed_and_nothing_is_written_to_the_bridge() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_rpc(0, P1, &announcement(R, R_IP));
    assert_eq!(out, vec![Output::ArpInstall { ip: R_IP.into(), mac: Mac(R), peer: P1, router: None }]);
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, [10, 0, 3, 1])); // A is local now
    let claim = sw.handle_rpc(SEC, P1, &announcement(R, A_IP));
    assert!(matches!(claim.as_slice(), [Output::Conflict { .. }]), "a claim on a local IP: {claim:?}");
}

fn gratuitous_from(mac: [u8; 6], ip: [u8; 4]) -> Method {
    Method::ArpReply(ArpReply {
        sender_mac: Mac(mac),
        sender_ip: ip.into(),
        target_mac: Mac(BROADCAST),
        target_ip: ip.into(),
    })
}

#[test]
fn a_local_host_stands_against_a_peer_claiming_its_own_ip_and_mac_while_the_bridge_has_it() {
    let mut sw = with_peers(&[P1]);
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP)); // A is local
    let claim = gratuitous_from(A, A_IP);
    let out = sw.handle_rpc(SEC, P1, &claim);
    let check = Departure { ip: A_IP.into(), mac: Mac(A), peer: P1, method: claim };
    assert_eq!(out, vec![Output::CheckDeparture { ip: A_IP.into(), mac: Mac(A), peer: P1, method: claim }]);
    let out = sw.departure_checked(SEC, check, true);
    assert!(matches!(out.as_slice(), [Output::Conflict { .. }]), "{out:?}");
    assert!(sw.local_hosts().iter().any(|(ip, _)| *ip == Ipv4Addr::from(A_IP)), "still local");
    let spoof = frame(B, A, 0x0800);
    assert!(!sw.accept_from_peer(2 * SEC, P1, &spoof), "frames from a peer with its MAC are refused");
    let again = sw.handle_rpc(SEC + SEC / 2, P1, &claim);
    assert!(matches!(again.as_slice(), [Output::Conflict { .. }]), "one look a second: {again:?}");
    assert_eq!(sw.counters().conflicts, 2);
}

#[test]
fn a_local_host_gone_from_the_bridge_and_claimed_by_a_peer_moved_there() {
    let mut sw = with_peers(&[P1]);
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP));
    let claim = gratuitous_from(A, A_IP);
    sw.handle_rpc(SEC, P1, &claim);
    let out = sw.departure_checked(SEC, Departure { ip: A_IP.into(), mac: Mac(A), peer: P1, method: claim }, false);
    assert_eq!(out[0], Output::HostMoved { ip: A_IP.into(), mac: Mac(A), to: Some(P1) });
    assert_eq!(out[1], Output::ArpInstall { ip: A_IP.into(), mac: Mac(A), peer: P1, router: None });
    assert!(matches!(out[2], Output::WriteTap(_)), "the gratuitous ARP goes into the bridge: {out:?}");
    assert!(sw.local(A_IP.into()).is_none());
    assert_eq!(sw.remote(A_IP.into()).map(|r| r.peer), Some(P1));
    assert_eq!(sw.route_from_bridge(2 * SEC, &frame(A, B, 0x0800)), Route::Peer(P1), "frames follow it");
    assert!(sw.accept_from_peer(2 * SEC, P1, &frame(B, A, 0x0800)), "its frames come from there now");
    assert_eq!((sw.counters().moves, sw.counters().conflicts), (1, 0));
}

#[test]
fn a_remote_host_that_speaks_here_with_its_ip_and_mac_moved_here() {
    let mut sw = with_peers(&[P1]);
    sw.handle_rpc(0, P1, &remote_request());
    let out = sw.handle_arp(SEC, &event(HOOK_TAP_EGRESS, OP_REPLY, (R, R_IP), ([0xff; 6], R_IP)));
    assert!(out.contains(&Output::ArpRemove { ip: R_IP.into() }), "{out:?}");
    assert!(out.contains(&Output::HostMoved { ip: R_IP.into(), mac: Mac(R), to: None }), "{out:?}");
    assert_eq!((sw.counters().moves, sw.counters().conflicts), (1, 0));
    assert_ne!(sw.route_from_bridge(2 * SEC, &frame(R, B, 0x0800)), Route::Peer(P1), "frames no longer go there");
}

#[test]
fn a_remote_host_heard_behind_another_peer_moved_there_and_another_mac_is_a_conflict() {
    let mut sw = with_peers(&[P1, P2]);
    sw.handle_rpc(0, P1, &remote_request());
    let out = sw.handle_rpc(SEC, P2, &gratuitous_from(R, R_IP));
    assert!(out.contains(&Output::HostMoved { ip: R_IP.into(), mac: Mac(R), to: Some(P2) }), "{out:?}");
    let out = sw.handle_rpc(2 * SEC, P1, &gratuitous_from(B, R_IP));
    assert!(matches!(out.as_slice(), [Output::Conflict { .. }]), "{out:?}");
}

#[test]
fn the_hosts_own_other_addresses_are_not_announced() {
    let mut sw = with_peers(&[P1]);
    sw.add_local_address(Ipv4Addr::new(10, 0, 3, 1).into(), Mac(B));
    // The host answers from another address of its own (its bridge MAC): not a container.
    let reply = event(HOOK_BRIDGE_INGRESS, OP_REPLY, (B, [172, 17, 0, 1]), (A, A_IP));
    assert!(!sw.handle_arp(0, &reply).iter().any(|o| matches!(o, Output::Broadcast(_))));
    assert!(sw.peer_up(P2).is_empty(), "nor told to a link come up");
}

#[test]
fn a_peer_never_gets_a_local_hosts_mac_for_another_address_while_the_host_is_here() {
    let mut sw = with_peers(&[P1]);
    sw.handle_arp(0, &request(HOOK_TAP_EGRESS, R_IP)); // A is local at A_IP
    let claim = gratuitous_from(A, [10, 0, 3, 77]);
    let out = sw.handle_rpc(SEC, P1, &claim);
    assert!(matches!(out[..], [Output::CheckDeparture { mac: Mac(A), .. }]), "no frame written: {out:?}");
    let again = sw.handle_rpc(SEC, P1, &claim);
    assert!(matches!(again[..], [Output::Conflict { claimed: Mac(A), .. }]), "{again:?}");
    assert!(sw.remote(Ipv4Addr::new(10, 0, 3, 77).into()).is_none());
}
