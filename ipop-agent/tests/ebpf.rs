//! The TC programs run by the kernel on crafted frames (BPF_PROG_TEST_RUN): verdicts,
//! rewritten bytes, ring buffer events and counters. Needs root (CAP_BPF).

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use ipop_agent::{
    agent::parse_event,
    kernel::datapath::{self, PROG_BRIDGE_INGRESS, PROG_TAP_EGRESS},
};
use ipop_common::{
    arp::{self, Arp, BROADCAST, ETHERTYPE_IPV4, OP_REPLY, OP_REQUEST},
    maps::{self as m, ArpEntry, ArpEvent, ArpKey, Config, Stats},
};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_REDIRECT: u32 = 7;
const TAP_IFINDEX: u32 = 42;

const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
const A_IP: [u8; 4] = [10, 0, 3, 5];
const REMOTE_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x68];
const REMOTE_IP: [u8; 4] = [10, 0, 3, 104];
const UNKNOWN_IP: [u8; 4] = [10, 0, 3, 99];

struct Progs {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl Progs {
    /// Loads the programs with `arp_table` holding REMOTE_IP -> REMOTE_MAC (with `flags`)
    /// and answering switched on.
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

    fn events(&mut self) -> Vec<ArpEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(parse_event(&item).expect("whole event"));
        }
        out
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
