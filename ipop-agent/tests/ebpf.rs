//! The TC programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN): verdicts,
//! rewritten bytes, ring buffer events and counters. Needs root (CAP_BPF).

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use ipop_agent::{
    agent::{KernelEvent, parse_event},
    kernel::datapath::{self, PROG_BRIDGE_INGRESS, PROG_TAP_EGRESS},
};
use ipop_common::{
    arp::{self, Arp, BROADCAST, ETHERTYPE_IPV4, OP_REPLY, OP_REQUEST},
    maps::{self as m, ArpEntry, ArpEvent, ArpKey, Config, NdEvent, NdKey, Stats},
    nd::{self, NdFrame},
};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_REDIRECT: u32 = 7;
const TAP_IFINDEX: u32 = 42;

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const A_IP: [u8; 4] = [10, 0, 3, 5];
const REMOTE_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x68];
const REMOTE_IP: [u8; 4] = [10, 0, 3, 104];
const UNKNOWN_IP: [u8; 4] = [10, 0, 3, 99];
const A_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const REMOTE_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x68];
const UNKNOWN_IP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99];

struct Progs {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl Progs {
    /// Loads the programs with `arp_table` holding REMOTE_IP -> REMOTE_MAC and `nd_table`
    /// REMOTE_IP6 -> REMOTE_MAC (both with `flags`), and answering switched on.
    fn new(entry_flags: u16, max_age_ns: u64, updated_ns: u64) -> Self {
        let mut ebpf = datapath::load_unpinned().expect("load eBPF object (are you root?)");
        for name in [PROG_TAP_EGRESS, PROG_BRIDGE_INGRESS] {
            datapath::program(&mut ebpf, name).expect("verifier accepts the program");
        }
        let mut config: Array<_, Config> = Array::try_from(ebpf.map_mut(m::CONFIG).unwrap()).unwrap();
        config
            .set(
                0,
                Config {
                    bridge_ifindex: 41,
                    tap_ifindex: TAP_IFINDEX,
                    max_age_ns,
                    flags: m::CONFIG_ANSWER,
                    _reserved: 0,
                },
                0,
            )
            .unwrap();
        let mut table: HashMap<_, ArpKey, ArpEntry> = HashMap::try_from(ebpf.map_mut(m::ARP_TABLE).unwrap()).unwrap();
        table
            .insert(
                ArpKey { ip: REMOTE_IP },
                ArpEntry { mac: REMOTE_MAC, flags: entry_flags, updated_ns, peer_tag: 7, _reserved: 0 },
                0,
            )
            .unwrap();
        let entry = ArpEntry { mac: REMOTE_MAC, flags: entry_flags, updated_ns, peer_tag: 7, _reserved: 0 };
        let mut nd_table: HashMap<_, NdKey, ArpEntry> = HashMap::try_from(ebpf.map_mut(m::ND_TABLE).unwrap()).unwrap();
        nd_table.insert(NdKey { ip: REMOTE_IP6 }, entry, 0).unwrap();
        let events = RingBuf::try_from(ebpf.take_map(m::ARP_EVENTS).unwrap()).unwrap();
        Self { ebpf, events }
    }

    fn static_entry() -> Self {
        Self::new(m::ENTRY_STATIC, 0, 0)
    }

    /// Runs `prog` on `frame`; returns the verdict and the frame as the program left it.
    fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = datapath::program(&mut self.ebpf, prog).unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let result = prog
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn all_events(&mut self) -> Vec<KernelEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(parse_event(&item).expect("whole event"));
        }
        out
    }

    fn events(&mut self) -> Vec<ArpEvent> {
        self.all_events().into_iter().map(|e| if let KernelEvent::Arp(a) = e { a } else { panic!("{e:?}") }).collect()
    }

    fn nd_events(&mut self) -> Vec<NdEvent> {
        self.all_events().into_iter().map(|e| if let KernelEvent::Nd(n) = e { n } else { panic!("{e:?}") }).collect()
    }

    fn stats(&self) -> Stats {
        let array: PerCpuArray<_, Stats> = PerCpuArray::try_from(self.ebpf.map(m::STATS).unwrap()).unwrap();
        let mut total = Stats::default();
        for cpu in array.get(&0, 0).unwrap().iter() {
            total.add(cpu);
        }
        total
    }
}

fn request(sender_ip: [u8; 4], target_ip: [u8; 4]) -> [u8; arp::FRAME_LEN] {
    let req = Arp { op: OP_REQUEST, sender_mac: A_MAC, sender_ip, target_mac: [0; 6], target_ip };
    arp::build(BROADCAST, A_MAC, &req)
}

fn padded(frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v.resize(60, 0);
    v
}

#[test]
fn a_request_for_a_known_ip_is_answered_in_place_and_redirected() {
    let mut p = Progs::static_entry();
    let req = padded(&request(A_IP, REMOTE_IP));
    let (verdict, out) = p.run(PROG_TAP_EGRESS, &req);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let req_arp = arp::ArpFrame::parse(&req).unwrap().arp();
    let expected = arp::build_reply(A_MAC, &req_arp, REMOTE_MAC);
    assert_eq!(&out[..arp::FRAME_LEN], &expected[..], "the reply bytes");
    assert_eq!(&out[arp::FRAME_LEN..], &req[arp::FRAME_LEN..], "Ethernet padding untouched");
    let events = p.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].verdict, m::VERDICT_ANSWERED);
    assert_eq!(events[0].hook, m::HOOK_TAP_EGRESS);
    assert_eq!(events[0].arp(), req_arp, "the event carries the request as seen");
    let s = p.stats();
    assert_eq!((s.seen, s.answered, s.events), (1, 1, 1));
}

#[test]
fn a_request_for_an_unknown_ip_is_reported_and_passed() {
    let mut p = Progs::static_entry();
    let req = request(A_IP, UNKNOWN_IP);
    let (verdict, out) = p.run(PROG_TAP_EGRESS, &req);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, req, "the frame is not touched");
    let events = p.events();
    assert_eq!(events.len(), 1);
    let ev = events[0];
    assert_eq!(ev.verdict, m::VERDICT_PASSED);
    assert_eq!(ev.op, OP_REQUEST);
    assert_eq!((ev.sender_mac, ev.sender_ip), (A_MAC, A_IP));
    assert_eq!((ev.target_mac, ev.target_ip), ([0; 6], UNKNOWN_IP));
    assert_eq!((ev.eth_src, ev.eth_dst), (A_MAC, BROADCAST));
    assert_eq!(ev.hook, m::HOOK_TAP_EGRESS);
    assert_eq!(p.stats().answered, 0);
}

#[test]
fn probes_gratuitous_and_replies_are_reported_never_answered() {
    let mut p = Progs::static_entry();
    let probe = request([0; 4], REMOTE_IP);
    let garp = request(REMOTE_IP, REMOTE_IP);
    let reply = arp::build(
        A_MAC,
        REMOTE_MAC,
        &Arp { op: OP_REPLY, sender_mac: REMOTE_MAC, sender_ip: REMOTE_IP, target_mac: A_MAC, target_ip: A_IP },
    );
    for (what, frame) in [("probe", &probe[..]), ("gratuitous", &garp[..]), ("reply", &reply[..])] {
        let (verdict, out) = p.run(PROG_TAP_EGRESS, frame);
        assert_eq!(verdict, TC_ACT_UNSPEC, "{what}");
        assert_eq!(out, frame, "{what} untouched");
    }
    let events = p.events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.verdict == m::VERDICT_PASSED));
    assert_eq!(events[2].op, OP_REPLY);
    let s = p.stats();
    assert_eq!((s.seen, s.answered, s.events), (3, 0, 3));
}

#[test]
fn non_arp_truncated_and_foreign_arp_pass_untouched() {
    let mut p = Progs::static_entry();
    let mut ipv4 = padded(&request(A_IP, REMOTE_IP));
    ipv4[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let truncated = request(A_IP, REMOTE_IP)[..30].to_vec();
    let mut ipv6_arp = request(A_IP, REMOTE_IP).to_vec();
    ipv6_arp[arp::field::PLEN] = 16;
    let mut bad_op = request(A_IP, REMOTE_IP).to_vec();
    bad_op[arp::field::OP + 1] = 9;
    let eth_only = request(A_IP, REMOTE_IP)[..14].to_vec();
    for prog in [PROG_TAP_EGRESS, PROG_BRIDGE_INGRESS] {
        for (what, frame) in [
            ("ipv4", &ipv4),
            ("truncated", &truncated),
            ("ipv6 arp", &ipv6_arp),
            ("bad op", &bad_op),
            ("header only", &eth_only),
        ] {
            let (verdict, out) = p.run(prog, frame);
            assert_eq!(verdict, TC_ACT_UNSPEC, "{prog} {what}");
            assert_eq!(&out, frame, "{prog} {what} untouched");
        }
    }
    assert!(p.events().is_empty());
    let s = p.stats();
    assert_eq!(s.seen, 8, "ARP EtherType frames counted, IPv4 not");
    assert_eq!(s.malformed, 8);
    assert_eq!(s.answered, 0);
}

#[test]
fn stale_and_aged_entries_are_not_answered() {
    let mut stale = Progs::new(m::ENTRY_STATIC | m::ENTRY_STALE, 0, 0);
    let req = request(A_IP, REMOTE_IP);
    assert_eq!(stale.run(PROG_TAP_EGRESS, &req).0, TC_ACT_UNSPEC);
    assert_eq!(stale.stats().stale, 1);

    // A learned entry last refreshed at boot (0 ns) with a 1 ns maximum age is long expired.
    let mut aged = Progs::new(0, 1, 0);
    let (verdict, out) = aged.run(PROG_TAP_EGRESS, &req);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert_eq!(out, req);
    assert_eq!(aged.stats().stale, 1);
    assert_eq!(aged.events()[0].verdict, m::VERDICT_PASSED);

    // The same learned entry with no maximum age is answered.
    let mut fresh = Progs::new(0, 0, 0);
    assert_eq!(fresh.run(PROG_TAP_EGRESS, &req).0, TC_ACT_REDIRECT);
}

#[test]
fn the_bridge_ingress_reports_local_arp_but_never_answers() {
    let mut p = Progs::static_entry();
    let req = request(A_IP, REMOTE_IP);
    let (verdict, out) = p.run(PROG_BRIDGE_INGRESS, &req);
    assert_eq!(verdict, TC_ACT_UNSPEC, "the TAP hook answers; answering here too would duplicate");
    assert_eq!(out, req);
    let events = p.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].hook, m::HOOK_BRIDGE_INGRESS);
}

#[test]
fn frames_the_agent_injected_are_not_reported_back() {
    let mut p = Progs::static_entry();
    // A request the agent wrote into the TAP on behalf of the remote host REMOTE_IP.
    let injected = arp::build(
        BROADCAST,
        REMOTE_MAC,
        &Arp { op: OP_REQUEST, sender_mac: REMOTE_MAC, sender_ip: REMOTE_IP, target_mac: [0; 6], target_ip: A_IP },
    );
    let (verdict, _) = p.run(PROG_BRIDGE_INGRESS, &injected);
    assert_eq!(verdict, TC_ACT_UNSPEC);
    assert!(p.events().is_empty(), "an injected frame must not loop back to the agent");
    assert_eq!(p.stats().injected, 1);
}

#[test]
fn answering_waits_for_the_agent_configuration() {
    let mut ebpf = datapath::load_unpinned().unwrap();
    let mut table: HashMap<_, ArpKey, ArpEntry> = HashMap::try_from(ebpf.map_mut(m::ARP_TABLE).unwrap()).unwrap();
    table
        .insert(
            ArpKey { ip: REMOTE_IP },
            ArpEntry { mac: REMOTE_MAC, flags: m::ENTRY_STATIC, updated_ns: 0, peer_tag: 0, _reserved: 0 },
            0,
        )
        .unwrap();
    let prog = datapath::program(&mut ebpf, PROG_TAP_EGRESS).unwrap();
    let req = request(A_IP, REMOTE_IP);
    let mut out = vec![0u8; 128];
    let r =
        prog.test_run(TestRunOptions { data_in: Some(&req), data_out: Some(&mut out), ..Default::default() }).unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC, "no config entry yet: no TAP to redirect to");
}

/// A solicitation from A (fd00::5) for `target`, with A's link-layer address.
fn solicit(src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let (f, len) = nd::build_solicit(A_MAC, &src, &target);
    f[..len].to_vec()
}

/// RFC 1071 over the IPv6 pseudo-header and the ICMPv6 message, summed here independently of
/// ipop-common: a packet with a correct checksum sums to 0xffff.
fn icmpv6_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let mut words = ip[8..40].to_vec();
    words.extend_from_slice(&(len as u32).to_be_bytes());
    words.extend_from_slice(&[0, 0, 0, 58]);
    words.extend_from_slice(&ip[40..40 + len]);
    let mut sum: u64 = words.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u64).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn a_solicitation_for_a_remote_host_is_answered_with_the_owners_advertisement() {
    let mut p = Progs::static_entry();
    let ns = solicit(A_IP6, REMOTE_IP6);
    let (verdict, out) = p.run(PROG_TAP_EGRESS, &ns);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let request = NdFrame::parse(&ns).unwrap().nd();
    assert_eq!(out, nd::build_answer(A_MAC, &request, REMOTE_MAC, false).to_vec(), "the advertisement bytes");
    assert!(icmpv6_checksum_ok(&out), "checksum");
    let na = NdFrame::parse(&out).unwrap();
    assert_eq!((na.eth_dst(), na.eth_src()), (A_MAC, REMOTE_MAC));
    let na = na.nd();
    assert_eq!((na.kind, na.src, na.dst, na.target), (nd::NEIGHBOR_ADVERT, REMOTE_IP6, A_IP6, REMOTE_IP6));
    assert_eq!(na.flags, nd::FLAG_SOLICITED | nd::FLAG_OVERRIDE, "solicited, override, not a router");
    assert_eq!(na.lladdr, Some(REMOTE_MAC), "target link-layer option");
    let events = p.nd_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].verdict, m::VERDICT_ANSWERED);
    assert_eq!(events[0].nd(), request, "the event carries the solicitation as it came");
    let s = p.stats();
    assert_eq!((s.nd_seen, s.nd_answered, s.answered), (1, 1, 0));
}

#[test]
fn a_remote_routers_answer_says_it_routes() {
    let mut p = Progs::new(m::ENTRY_STATIC | m::ENTRY_ROUTER, 0, 0);
    let ns = solicit(A_IP6, REMOTE_IP6);
    let (verdict, out) = p.run(PROG_TAP_EGRESS, &ns);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let request = NdFrame::parse(&ns).unwrap().nd();
    assert_eq!(out, nd::build_answer(A_MAC, &request, REMOTE_MAC, true).to_vec());
    assert!(icmpv6_checksum_ok(&out));
    assert_eq!(NdFrame::parse(&out).unwrap().nd().flags, nd::FLAG_ROUTER | nd::FLAG_SOLICITED | nd::FLAG_OVERRIDE);
}

#[test]
fn unknown_targets_probes_and_advertisements_are_reported_and_passed() {
    let mut p = Progs::static_entry();
    let unknown = solicit(A_IP6, UNKNOWN_IP6);
    let dad = solicit([0; 16], REMOTE_IP6);
    let advert = nd::build_advert([0x33, 0x33, 0, 0, 0, 1], &A_IP6, &nd::ALL_NODES, A_MAC, nd::FLAG_OVERRIDE);
    for frame in [&unknown[..], &dad[..], &advert[..]] {
        let (verdict, out) = p.run(PROG_TAP_EGRESS, frame);
        assert_eq!(verdict, TC_ACT_UNSPEC, "passed on");
        assert_eq!(out, frame, "untouched");
    }
    let events = p.nd_events();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.verdict == m::VERDICT_PASSED && e.hook == m::HOOK_TAP_EGRESS));
    assert!(events[1].nd().is_dad(), "a probe is the agent's to answer: it reports the conflict");
    assert_eq!(events[1].nd().lladdr, None);
    let na = events[2].nd();
    assert_eq!((na.kind, na.flags, na.lladdr, na.target), (nd::NEIGHBOR_ADVERT, nd::FLAG_OVERRIDE, Some(A_MAC), A_IP6));
    assert_eq!(p.stats().nd_answered, 0);
}

#[test]
fn what_is_not_neighbour_discovery_crosses_untouched_and_unreported() {
    let mut p = Progs::static_entry();
    let good = solicit(A_IP6, REMOTE_IP6);
    let mut routed = good.clone();
    routed[nd::field::HOP_LIMIT] = 64; // hosts drop ND that crossed a router
    let mut echo = good.clone();
    echo[nd::field::ICMP_TYPE] = 128;
    let mut udp = good.clone();
    udp[nd::field::NEXT_HEADER] = 17;
    let truncated = good[..70].to_vec();
    for frame in [routed, echo, udp, truncated] {
        assert!(NdFrame::parse(&frame).is_err(), "the agent's parser agrees");
        let (verdict, out) = p.run(PROG_TAP_EGRESS, &frame);
        assert_eq!((verdict, out), (TC_ACT_UNSPEC, frame));
    }
    assert!(p.all_events().is_empty());
    assert_eq!(p.stats().nd_seen, 0);
}

#[test]
fn stale_nd_entries_are_not_answered_and_the_bridge_ingress_leaves_nd_alone() {
    let mut stale = Progs::new(m::ENTRY_STATIC | m::ENTRY_STALE, 0, 0);
    let ns = solicit(A_IP6, REMOTE_IP6);
    assert_eq!(stale.run(PROG_TAP_EGRESS, &ns), (TC_ACT_UNSPEC, ns.clone()));
    assert_eq!((stale.stats().nd_stale, stale.stats().nd_answered), (1, 0));

    let mut p = Progs::static_entry();
    assert_eq!(p.run(PROG_BRIDGE_INGRESS, &ns), (TC_ACT_UNSPEC, ns.clone()));
    assert!(p.all_events().is_empty(), "ND is seen at the TAP's egress only");
}
