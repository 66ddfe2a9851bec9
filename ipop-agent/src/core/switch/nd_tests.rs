//! The switch on IPv6 neighbour discovery: events from the TAP's egress and peers' RPCs.

use std::net::{IpAddr, Ipv6Addr};

use ipop_common::{
    maps::{HOOK_TAP_EGRESS, NdEvent, VERDICT_ANSWERED, VERDICT_PASSED},
    nd::{self, ALL_NODES, FLAG_OVERRIDE, FLAG_SOLICITED, NdFrame},
};

use super::*;
use crate::core::rpc::{HostAnnounce, NdAdvert, NdSolicit};

const A: [u8; 6] = [2, 0, 0, 0, 0, 5];
const R: [u8; 6] = [2, 0, 0, 0, 0, 0x68];
const X: [u8; 6] = [2, 0, 0, 0, 0, 0x77];
const P1: PeerId = 1;
const P2: PeerId = 2;
const SEC: u64 = 1_000_000_000;

fn ip6(last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last as u16)
}

fn a6() -> Ipv6Addr {
    ip6(5)
}

fn r6() -> Ipv6Addr {
    ip6(0x68)
}

fn with_peers(peers: &[PeerId]) -> Switch {
    let mut sw = Switch::new(60 * SEC);
    for p in peers {
        sw.peer_up(*p);
    }
    sw
}

/// The event the TAP's egress program reports for `frame`.
fn event_of(frame: &[u8], verdict: u8) -> NdEvent {
    let f = NdFrame::parse(frame).unwrap();
    let nd = f.nd();
    NdEvent {
        ifindex: 7,
        hook: HOOK_TAP_EGRESS,
        verdict,
        kind: nd.kind,
        flags: nd.flags,
        eth_src: f.eth_src(),
        eth_dst: f.eth_dst(),
        lladdr: nd.lladdr.unwrap_or([0; 6]),
        has_lladdr: nd.lladdr.is_some() as u8,
        _pad: 0,
        src: nd.src,
        dst: nd.dst,
        target: nd.target,
    }
}

/// A solicitation from `mac` at `src` (`::`: a probe) for `target`.
fn solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr, verdict: u8) -> NdEvent {
    let (f, len) = nd::build_solicit(mac, &src.octets(), &target.octets());
    event_of(&f[..len], verdict)
}

fn defence(ip: Ipv6Addr, mac: [u8; 6]) -> NdAdvert {
    NdAdvert {
        mac: Mac(mac),
        ip,
        dst_mac: Mac(nd::multicast_mac(&ALL_NODES)),
        dst_ip: ALL_NODES.into(),
        flags: FLAG_OVERRIDE,
    }
}

fn advert_frame(a: &NdAdvert) -> Vec<u8> {
    nd::build_advert(a.dst_mac.0, &a.ip.octets(), &a.dst_ip.octets(), a.mac.0, a.flags).to_vec()
}

#[test]
fn a_solicitation_for_an_unknown_address_is_learned_and_sent_to_the_peers() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_nd(0, &solicit(A, a6(), r6(), VERDICT_PASSED));
    let ask = NdSolicit { sender_mac: Mac(A), sender_ip: a6(), target_ip: r6() };
    assert_eq!(
        out,
        vec![
            Output::LocalLearned { ip: a6().into(), mac: Mac(A), previous: None },
            Output::Broadcast(Method::NdSolicit(ask)),
        ]
    );
    assert_eq!(sw.counters().rpc_sent, 1);
}

#[test]
fn a_peers_solicitation_is_installed_and_replayed_into_the_bridge() {
    let mut sw = with_peers(&[P1]);
    let ask = NdSolicit { sender_mac: Mac(R), sender_ip: r6(), target_ip: a6() };
    let out = sw.handle_rpc(0, P1, &Method::NdSolicit(ask));
    let (frame, len) = nd::build_solicit(R, &r6().octets(), &a6().octets());
    assert_eq!(
        out,
        vec![
            Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: None },
            Output::WriteTap(frame[..len].to_vec())
        ]
    );
}

#[test]
fn a_peers_advertisement_is_installed_and_delivered_to_the_local_solicitor_only() {
    let mut sw = with_peers(&[P1]);
    sw.handle_nd(0, &solicit(A, a6(), r6(), VERDICT_PASSED));
    let answer =
        NdAdvert { mac: Mac(R), ip: r6(), dst_mac: Mac(A), dst_ip: a6(), flags: FLAG_SOLICITED | FLAG_OVERRIDE };
    let out = sw.handle_rpc(SEC, P1, &Method::NdAdvert(answer));
    assert_eq!(
        out,
        vec![
            Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: Some(false) },
            Output::WriteTap(advert_frame(&answer))
        ]
    );
    let elsewhere = NdAdvert { dst_mac: Mac(X), dst_ip: ip6(0x77), ..answer };
    let out = sw.handle_rpc(SEC, P1, &Method::NdAdvert(elsewhere));
    assert_eq!(
        out,
        vec![Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: Some(false) }],
        "for nobody here"
    );
}

#[test]
fn a_solicitation_answered_in_the_kernel_or_locally_crosses_nothing_but_an_announcement() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_nd(0, &solicit(A, a6(), r6(), VERDICT_ANSWERED));
    assert_eq!(out[1], Output::AnsweredInKernel { ip: r6().into(), requester: a6().into() });
    assert_eq!(out[2], Output::Broadcast(Method::HostAnnounce(HostAnnounce { mac: Mac(A), ip: a6().into() })));
    assert_eq!(out.len(), 3);
    sw.handle_nd(0, &solicit(X, ip6(0x77), a6(), VERDICT_PASSED));
    assert_eq!(sw.counters().resolved_locally, 1, "a6 is local: its owner answers");
    assert_eq!(sw.counters().rpc_sent, 0);
}

#[test]
fn a_probe_for_an_address_behind_a_peer_is_defended_here_and_heard_there() {
    let mut sw = with_peers(&[P1]);
    sw.handle_rpc(0, P1, &Method::NdSolicit(NdSolicit { sender_mac: Mac(R), sender_ip: r6(), target_ip: a6() }));
    let out = sw.handle_nd(SEC, &solicit(X, Ipv6Addr::UNSPECIFIED, r6(), VERDICT_PASSED));
    let probe = NdSolicit { sender_mac: Mac(X), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: r6() };
    assert_eq!(
        out,
        vec![
            Output::WriteTap(advert_frame(&defence(r6(), R))),
            Output::DuplicateAddress {
                ip: r6().into(),
                owner: Owner::Remote { mac: Mac(R), peer: P1 },
                prober: Mac(X),
                behind: None
            },
            Output::Broadcast(Method::NdSolicit(probe)),
        ]
    );
    assert!(sw.local(r6().into()).is_none(), "a tentative address is not learned");
    assert_eq!(sw.counters().conflicts, 1);
}

#[test]
fn a_peers_probe_for_a_local_address_is_defended_across_the_overlay() {
    let mut sw = with_peers(&[P1]);
    sw.handle_nd(0, &solicit(A, a6(), r6(), VERDICT_PASSED));
    let probe = NdSolicit { sender_mac: Mac(X), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: a6() };
    let out = sw.handle_rpc(SEC, P1, &Method::NdSolicit(probe));
    assert_eq!(
        out,
        vec![
            Output::DuplicateAddress { ip: a6().into(), owner: Owner::Local(Mac(A)), prober: Mac(X), behind: Some(P1) },
            Output::SendTo(P1, Method::NdAdvert(defence(a6(), A))),
        ]
    );
    assert!(sw.remote(a6().into()).is_none(), "a probe claims nothing");
}

#[test]
fn a_probe_answered_from_across_the_overlay_is_reported_here() {
    let mut sw = with_peers(&[P1]);
    let out = sw.handle_nd(0, &solicit(X, Ipv6Addr::UNSPECIFIED, r6(), VERDICT_PASSED));
    let probe = NdSolicit { sender_mac: Mac(X), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: r6() };
    assert_eq!(out, vec![Output::Broadcast(Method::NdSolicit(probe))], "nobody known owns it: ask");
    let out = sw.handle_rpc(SEC, P1, &Method::NdAdvert(defence(r6(), R)));
    assert_eq!(
        out,
        vec![
            Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: Some(false) },
            Output::DuplicateAddress {
                ip: r6().into(),
                owner: Owner::Remote { mac: Mac(R), peer: P1 },
                prober: Mac(X),
                behind: None
            },
            Output::WriteTap(advert_frame(&defence(r6(), R))),
        ]
    );
    let later = sw.handle_rpc(2 * SEC, P1, &Method::NdAdvert(defence(r6(), R)));
    assert_eq!(later.len(), 2, "reported once");
}

#[test]
fn a_peers_probe_for_an_unknown_address_is_asked_on_this_bridge() {
    let mut sw = with_peers(&[P1]);
    let probe = NdSolicit { sender_mac: Mac(X), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: r6() };
    let out = sw.handle_rpc(0, P1, &Method::NdSolicit(probe));
    let (frame, len) = nd::build_solicit(X, &[0; 16], &r6().octets());
    assert_eq!(out, vec![Output::WriteTap(frame[..len].to_vec())]);
}

#[test]
fn an_unsolicited_advertisement_moves_a_host_and_a_different_mac_is_a_conflict() {
    let mut sw = with_peers(&[P1, P2]);
    let moved = defence(r6(), R);
    sw.handle_rpc(0, P1, &Method::NdAdvert(moved));
    let out = sw.handle_rpc(SEC, P2, &Method::NdAdvert(moved));
    assert_eq!(out[0], Output::HostMoved { ip: r6().into(), mac: Mac(R), to: Some(P2) });
    assert_eq!(sw.remote(r6().into()).unwrap().peer, P2);
    let out = sw.handle_rpc(SEC, P1, &Method::NdAdvert(defence(r6(), X)));
    assert!(matches!(out[..], [Output::Conflict { claimed: Mac(X), by: P1, .. }]), "{out:?}");
}

#[test]
fn a_local_advertisement_leaving_through_the_tap_is_sent_on() {
    let mut sw = with_peers(&[P1]);
    let unsolicited = defence(a6(), A);
    let out = sw.handle_nd(0, &event_of(&advert_frame(&unsolicited), VERDICT_PASSED));
    assert_eq!(
        out,
        vec![
            Output::LocalLearned { ip: a6().into(), mac: Mac(A), previous: None },
            Output::Broadcast(Method::NdAdvert(unsolicited)),
        ]
    );
    let ip: IpAddr = a6().into();
    assert!(sw.local(ip).unwrap().announced_ns.is_some(), "the advertisement told the peers");
}

#[test]
fn neighbour_discovery_never_crosses_as_a_frame() {
    let mut sw = with_peers(&[P1]);
    let (ns, len) = nd::build_solicit(A, &a6().octets(), &r6().octets());
    assert_eq!(sw.route_from_bridge(0, &ns[..len]), Route::Drop);
    assert!(!sw.accept_from_peer(0, P1, &advert_frame(&defence(r6(), R))));
    let mut echo = ns[..len].to_vec();
    echo[nd::field::ICMP_TYPE] = 128;
    assert_eq!(sw.route_from_bridge(0, &echo), Route::AllPeers, "other ICMPv6 crosses as multicast");
}

#[test]
fn a_router_is_installed_as_one_and_other_words_leave_the_flag_alone() {
    let mut sw = with_peers(&[P1]);
    let from_router = NdAdvert { flags: nd::FLAG_ROUTER | FLAG_OVERRIDE, ..defence(r6(), R) };
    let out = sw.handle_rpc(0, P1, &Method::NdAdvert(from_router));
    assert_eq!(out[0], Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: Some(true) });
    let ask = NdSolicit { sender_mac: Mac(R), sender_ip: r6(), target_ip: a6() };
    let out = sw.handle_rpc(SEC, P1, &Method::NdSolicit(ask));
    assert_eq!(out[0], Output::ArpInstall { ip: r6().into(), mac: Mac(R), peer: P1, router: None });
}

#[test]
fn a_moved_host_probing_its_own_address_is_not_defended_against() {
    let mut sw = with_peers(&[P1]);
    sw.handle_rpc(0, P1, &Method::NdAdvert(defence(r6(), R)));
    // R came over from P1's bridge and probes its address here.
    let out = sw.handle_nd(SEC, &solicit(R, Ipv6Addr::UNSPECIFIED, r6(), VERDICT_PASSED));
    let probe = NdSolicit { sender_mac: Mac(R), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: r6() };
    assert_eq!(out, vec![Output::Broadcast(Method::NdSolicit(probe))], "heard by its old host, not defended");
    assert_eq!(sw.counters().conflicts, 0);
}

#[test]
fn a_peers_probe_with_a_local_hosts_mac_is_never_written_here_unless_the_host_left() {
    let mut sw = with_peers(&[P1]);
    sw.handle_nd(0, &solicit(A, a6(), r6(), VERDICT_PASSED));
    sw.handle_arp(0, &arp_from(A, [10, 0, 3, 5]));
    let probe = NdSolicit { sender_mac: Mac(A), sender_ip: Ipv6Addr::UNSPECIFIED, target_ip: ip6(0x99) };
    let out = sw.handle_rpc(SEC, P1, &Method::NdSolicit(probe));
    let check = Departure { ip: ip6(0x99).into(), mac: Mac(A), peer: P1, method: Method::NdSolicit(probe) };
    assert_eq!(
        out,
        vec![Output::CheckDeparture { ip: check.ip, mac: Mac(A), peer: P1, method: check.method }],
        "no frame with A's MAC goes into the bridge on a peer's word"
    );
    let out = sw.departure_checked(SEC, check, true);
    assert!(matches!(out[..], [Output::Conflict { .. }]), "{out:?}");
    let out = sw.departure_checked(SEC, check, false);
    assert_eq!(out[0], Output::HostMoved { ip: ip6(0x99).into(), mac: Mac(A), to: Some(P1) });
    assert!(matches!(out[1], Output::WriteTap(_)), "{out:?}");
    assert!(sw.local_hosts().is_empty(), "every address with A's MAC left, IPv4 and IPv6: {:?}", sw.local_hosts());
}

#[test]
fn a_flood_of_probes_gets_defences_within_the_probers_rate() {
    let limits = Limits { arp_per_source: crate::core::limit::Rate { per_sec: 1, burst: 1 }, ..Limits::default() };
    let mut sw = Switch::new(60 * SEC).with_limits(limits);
    sw.peer_up(P1);
    sw.handle_rpc(0, P1, &Method::NdAdvert(defence(r6(), R)));
    let first = sw.handle_nd(SEC, &solicit(X, Ipv6Addr::UNSPECIFIED, r6(), VERDICT_PASSED));
    assert_eq!(first.len(), 3, "defended, reported, told: {first:?}");
    let second = sw.handle_nd(SEC, &solicit(X, Ipv6Addr::UNSPECIFIED, r6(), VERDICT_PASSED));
    assert!(second.is_empty(), "{second:?}");
    assert_eq!(sw.counters().rpc_limited, 1);
}

/// A gratuitous ARP from local host `mac` at `ip`, as the TAP's egress reports it.
fn arp_from(mac: [u8; 6], ip: [u8; 4]) -> ipop_common::maps::ArpEvent {
    ipop_common::maps::ArpEvent {
        ifindex: 7,
        hook: HOOK_TAP_EGRESS,
        verdict: VERDICT_PASSED,
        op: ipop_common::arp::OP_REPLY,
        eth_src: mac,
        eth_dst: [0xff; 6],
        sender_mac: mac,
        sender_ip: ip,
        target_mac: [0xff; 6],
        target_ip: ip,
    }
}
