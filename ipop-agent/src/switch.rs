//! The switch: ipop's sans-IO core. It takes what the kernel programs saw (ARP events) and
//! the time, and says what to do; it owns no socket, clock, file or map. The async shell
//! (`agent`) carries the outputs out.
//!
//! What it knows: which IPs live on the local bridge (learned from the ARP they send).
//! What it decides for each ARP frame the bridge sends toward the overlay: answered in the
//! kernel already, ask the peers (`arp_request`), tell the peers (`arp_reply`), or nothing.

use std::{collections::HashMap, net::Ipv4Addr};

use ipop_common::{
    arp::{Arp, OP_REPLY, OP_REQUEST},
    maps::{ArpEvent, HOOK_BRIDGE_INGRESS, HOOK_TAP_EGRESS, VERDICT_ANSWERED},
};

use crate::addr::Mac;

/// What the shell must do (or report) after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A host on the local bridge was seen for the first time, or with a new MAC.
    LocalLearned {
        ip: Ipv4Addr,
        mac: Mac,
        previous: Option<Mac>,
    },
    /// The kernel answered `requester`'s request for `ip` from `arp_table`: no RPC is needed.
    AnsweredInKernel { ip: Ipv4Addr, requester: Ipv4Addr },
    /// A local host asks for an IP that is neither local nor known: `arp_request` to the peers.
    AskPeers { request: Arp, eth_src: Mac },
    /// A local host answers a remote requester or announces itself: `arp_reply` to the peers.
    TellPeers { arp: Arp, eth_dst: Mac },
}

/// A host on the local bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: Mac,
    pub seen_ns: u64,
}

/// Counts of the switch's decisions (the agent logs them; the kernel's are in `stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub answered_in_kernel: u64,
    pub asked_peers: u64,
    pub told_peers: u64,
    /// Requests for a local IP: the local host answers, the overlay is not involved.
    pub resolved_locally: u64,
    /// Probes (sender 0.0.0.0): duplicate address detection stays on the local bridge.
    pub probes: u64,
    /// Events the programs should never send (unknown hook or operation).
    pub unexpected: u64,
}

#[derive(Debug)]
pub struct Switch {
    local: HashMap<Ipv4Addr, Neighbour>,
    /// Local hosts not heard from for this long are forgotten.
    local_max_age_ns: u64,
    counters: Counters,
}

impl Switch {
    pub fn new(local_max_age_ns: u64) -> Self {
        Self {
            local: HashMap::new(),
            local_max_age_ns,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn local(&self, ip: Ipv4Addr) -> Option<Neighbour> {
        self.local.get(&ip).copied()
    }

    /// Decides what an ARP event from the kernel means, at monotonic time `now_ns`.
    pub fn handle_arp(&mut self, now_ns: u64, ev: &ArpEvent) -> Vec<Output> {
        self.counters.events += 1;
        let arp = ev.arp();
        let mut out = Vec::new();
        if arp.is_probe() {
            self.counters.probes += 1;
            return out;
        }
        if (ev.hook != HOOK_BRIDGE_INGRESS && ev.hook != HOOK_TAP_EGRESS)
            || (arp.op != OP_REQUEST && arp.op != OP_REPLY)
        {
            self.counters.unexpected += 1;
            return out;
        }
        // Both hooks only report frames from the local side (the bridge ingress program
        // drops the agent's own injected frames), so the sender is a local host.
        out.extend(self.learn(now_ns, Ipv4Addr::from(arp.sender_ip), Mac(arp.sender_mac)));
        if ev.hook == HOOK_BRIDGE_INGRESS {
            // The same broadcast also reaches the TAP's egress, which decides for the overlay.
            return out;
        }
        let target = Ipv4Addr::from(arp.target_ip);
        if ev.verdict == VERDICT_ANSWERED {
            self.counters.answered_in_kernel += 1;
            out.push(Output::AnsweredInKernel {
                ip: target,
                requester: Ipv4Addr::from(arp.sender_ip),
            });
        } else if arp.op == OP_REPLY || arp.is_gratuitous() {
            self.counters.told_peers += 1;
            out.push(Output::TellPeers {
                arp,
                eth_dst: Mac(ev.eth_dst),
            });
        } else if self.local.contains_key(&target) {
            self.counters.resolved_locally += 1;
        } else {
            self.counters.asked_peers += 1;
            out.push(Output::AskPeers {
                request: arp,
                eth_src: Mac(ev.eth_src),
            });
        }
        out
    }

    fn learn(&mut self, now_ns: u64, ip: Ipv4Addr, mac: Mac) -> Option<Output> {
        let previous = self.local.insert(
            ip,
            Neighbour {
                mac,
                seen_ns: now_ns,
            },
        );
        match previous {
            Some(p) if p.mac == mac => None,
            _ => Some(Output::LocalLearned {
                ip,
                mac,
                previous: previous.map(|p| p.mac),
            }),
        }
    }

    /// Forgets local hosts not heard from within the maximum age; returns them.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Ipv4Addr> {
        let max_age = self.local_max_age_ns;
        let mut gone: Vec<Ipv4Addr> = self
            .local
            .iter()
            .filter(|(_, n)| now_ns.saturating_sub(n.seen_ns) > max_age)
            .map(|(ip, _)| *ip)
            .collect();
        gone.sort();
        for ip in &gone {
            self.local.remove(ip);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use ipop_common::maps::VERDICT_PASSED;

    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 5];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 6];
    const A_IP: [u8; 4] = [10, 0, 3, 5];
    const B_IP: [u8; 4] = [10, 0, 3, 6];
    const REMOTE_IP: [u8; 4] = [10, 0, 3, 104];
    const SEC: u64 = 1_000_000_000;

    fn event(
        hook: u8,
        op: u16,
        sender: ([u8; 6], [u8; 4]),
        target: ([u8; 6], [u8; 4]),
    ) -> ArpEvent {
        ArpEvent {
            ifindex: 7,
            hook,
            verdict: VERDICT_PASSED,
            op,
            eth_src: sender.0,
            eth_dst: if op == OP_REQUEST {
                [0xff; 6]
            } else {
                target.0
            },
            sender_mac: sender.0,
            sender_ip: sender.1,
            target_mac: target.0,
            target_ip: target.1,
        }
    }

    fn request(hook: u8, target_ip: [u8; 4]) -> ArpEvent {
        event(hook, OP_REQUEST, (A, A_IP), ([0; 6], target_ip))
    }

    #[test]
    fn a_request_for_an_unknown_ip_asks_the_peers_once() {
        let mut sw = Switch::new(60 * SEC);
        let at_bridge = sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, REMOTE_IP));
        assert_eq!(
            at_bridge,
            vec![Output::LocalLearned {
                ip: A_IP.into(),
                mac: Mac(A),
                previous: None
            }]
        );
        let at_tap = sw.handle_arp(0, &request(HOOK_TAP_EGRESS, REMOTE_IP));
        assert_eq!(
            at_tap.len(),
            1,
            "the requester was learned already: {at_tap:?}"
        );
        match &at_tap[0] {
            Output::AskPeers { request, eth_src } => {
                assert_eq!(request.target_ip, REMOTE_IP);
                assert_eq!(*eth_src, Mac(A));
            }
            other => panic!("expected AskPeers, got {other:?}"),
        }
        assert_eq!(sw.counters().asked_peers, 1);
    }

    #[test]
    fn a_request_answered_in_the_kernel_needs_no_rpc() {
        let mut sw = Switch::new(60 * SEC);
        let mut ev = request(HOOK_TAP_EGRESS, REMOTE_IP);
        ev.verdict = VERDICT_ANSWERED;
        let out = sw.handle_arp(0, &ev);
        assert!(out.contains(&Output::AnsweredInKernel {
            ip: REMOTE_IP.into(),
            requester: A_IP.into()
        }));
        assert!(!out.iter().any(|o| matches!(o, Output::AskPeers { .. })));
        assert_eq!(sw.counters().answered_in_kernel, 1);
        assert_eq!(sw.counters().asked_peers, 0);
    }

    #[test]
    fn a_request_for_a_local_host_stays_local() {
        let mut sw = Switch::new(60 * SEC);
        sw.handle_arp(
            0,
            &event(
                HOOK_BRIDGE_INGRESS,
                OP_REQUEST,
                (B, B_IP),
                ([0; 6], [10, 0, 3, 1]),
            ),
        );
        let out = sw.handle_arp(1, &request(HOOK_TAP_EGRESS, B_IP));
        assert!(
            !out.iter().any(|o| matches!(o, Output::AskPeers { .. })),
            "{out:?}"
        );
        assert_eq!(sw.counters().resolved_locally, 1);
    }

    #[test]
    fn replies_and_announcements_are_told_to_the_peers() {
        let mut sw = Switch::new(60 * SEC);
        let reply = event(HOOK_TAP_EGRESS, OP_REPLY, (B, B_IP), (A, A_IP));
        let out = sw.handle_arp(0, &reply);
        assert!(
            out.contains(&Output::TellPeers {
                arp: reply.arp(),
                eth_dst: Mac(A)
            }),
            "{out:?}"
        );
        let garp = event(HOOK_TAP_EGRESS, OP_REQUEST, (B, B_IP), ([0; 6], B_IP));
        let out = sw.handle_arp(1, &garp);
        assert!(
            matches!(out.as_slice(), [Output::TellPeers { .. }]),
            "{out:?}"
        );
        assert_eq!(sw.counters().told_peers, 2);
    }

    #[test]
    fn probes_are_neither_learned_nor_sent() {
        let mut sw = Switch::new(60 * SEC);
        let probe = event(HOOK_TAP_EGRESS, OP_REQUEST, (A, [0; 4]), ([0; 6], A_IP));
        assert!(sw.handle_arp(0, &probe).is_empty());
        assert_eq!(sw.local(A_IP.into()), None);
        assert_eq!(sw.counters().probes, 1);
    }

    #[test]
    fn a_moved_host_is_reported_with_its_old_mac() {
        let mut sw = Switch::new(60 * SEC);
        sw.handle_arp(
            0,
            &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP)),
        );
        assert!(
            sw.handle_arp(
                1,
                &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (A, A_IP), ([0; 6], B_IP))
            )
            .is_empty()
        );
        let out = sw.handle_arp(
            2,
            &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, A_IP), ([0; 6], B_IP)),
        );
        assert_eq!(
            out,
            vec![Output::LocalLearned {
                ip: A_IP.into(),
                mac: Mac(B),
                previous: Some(Mac(A))
            }]
        );
    }

    #[test]
    fn silent_local_hosts_expire() {
        let mut sw = Switch::new(10 * SEC);
        sw.handle_arp(0, &request(HOOK_BRIDGE_INGRESS, REMOTE_IP));
        sw.handle_arp(
            5 * SEC,
            &event(HOOK_BRIDGE_INGRESS, OP_REQUEST, (B, B_IP), ([0; 6], A_IP)),
        );
        assert!(sw.expire(10 * SEC).is_empty());
        assert_eq!(sw.expire(11 * SEC), vec![Ipv4Addr::from(A_IP)]);
        assert_eq!(sw.local(B_IP.into()).map(|n| n.mac), Some(Mac(B)));
        assert_eq!(sw.expire(16 * SEC), vec![Ipv4Addr::from(B_IP)]);
    }

    #[test]
    fn events_the_programs_never_send_are_counted_not_acted_on() {
        let mut sw = Switch::new(SEC);
        let mut ev = request(HOOK_TAP_EGRESS, REMOTE_IP);
        ev.hook = 9;
        assert!(sw.handle_arp(0, &ev).is_empty());
        let mut ev = request(HOOK_TAP_EGRESS, REMOTE_IP);
        ev.op = 3;
        assert!(sw.handle_arp(0, &ev).is_empty());
        assert_eq!(sw.counters().unexpected, 2);
        assert_eq!(sw.local(A_IP.into()), None);
    }
}
