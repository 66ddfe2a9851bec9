//! A NAT router between a LAN of hosts and an underlay (normally [`Underlay::internet`]):
//! namespace `<prefix>r` with `wan0` on the underlay's bridge and bridge `lanbr`
//! (192.168.1.1/24) toward the hosts, forwarding, and nftables source NAT out of `wan0`. Linux conntrack then gives:
//! - [`Nat::Cone`], `masquerade`: the source port is kept while free, so one inside socket
//!   has one outside address for every destination (endpoint-independent mapping); replies
//!   come back only from where it sent to (conntrack filters by address and port).
//! - [`Nat::Symmetric`], `masquerade random,fully-random`: each destination gets its own
//!   random outside port, which defeats server-reflexive candidates between two such NATs.
//!
//! - [`Nat::Routed`]: no translation; the LAN is public-style (198.18.N.0/24), routed from
//!   the internet's namespace and, with [`Router::route_to`], from another router: the same
//!   forwarding without NAT, for comparing.
//!
//! [`Router::home`] adds a home router's filter: on `wan0`, established and related traffic
//! is accepted and the rest dropped (input and forward), so unsolicited packets meet silence
//! instead of an ICMP error.

use std::{
    process::Output,
    sync::atomic::{AtomicU8, Ordering},
};

use crate::{
    command::ok,
    lab::{Scratch, unique_prefix},
    netns::Netns,
    underlay::Underlay,
};

/// The NAT's mapping behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    Cone,
    Symmetric,
    /// No translation: the LAN has public-style addresses (198.18.N.0/24, routed), so the
    /// same forwarding path can be measured without NAT.
    Routed,
}

pub struct Router {
    pub prefix: String,
    pub ns: String,
    pub kind: Nat,
    /// Its address on the underlay, what the world sees as the source.
    pub wan_ip: String,
    /// Its address on the LAN, the host's gateway.
    pub lan_ip: String,
    /// The LAN's /24, e.g. "192.168.1".
    pub lan_net: String,
    /// Hosts plugged into the LAN so far.
    lan_hosts: AtomicU8,
    netns: Netns,
    scratch: Scratch,
}

/// The LAN every NAT router gives its hosts (each in its own namespaces, like homes).
const LAN_NET: &str = "192.168.1";

impl Router {
    /// A router with WAN address <net>.`n` on `internet`, no filter.
    pub fn new(internet: &Underlay, n: u8, kind: Nat) -> Router {
        Router::build(internet, n, kind, false)
    }

    /// A home router: the same, with the input filter on `wan0`.
    pub fn home(internet: &Underlay, n: u8, kind: Nat) -> Router {
        Router::build(internet, n, kind, true)
    }

    fn build(internet: &Underlay, n: u8, kind: Nat, filter: bool) -> Router {
        crate::require_root();
        assert!(!(filter && kind == Nat::Routed), "a home router's filter is for NAT routers");
        let prefix = unique_prefix();
        let scratch = Scratch::new(&prefix);
        let netns = Netns::add(&format!("{prefix}r"));
        let wan_ip = internet.plug(&netns.name, "wan0", n);
        let lan_net = if kind == Nat::Routed { format!("198.18.{n}") } else { LAN_NET.to_owned() };
        if kind == Nat::Routed {
            internet.ip(&["route", "add", &format!("{lan_net}.0/24"), "via", &wan_ip]);
        }
        let r = Router {
            ns: netns.name.clone(),
            prefix,
            kind,
            wan_ip,
            lan_ip: format!("{lan_net}.1"),
            lan_net,
            lan_hosts: AtomicU8::new(0),
            netns,
            scratch,
        };
        r.netns.sysctl("net.ipv4.ip_forward", "1");
        let rules = ruleset(kind, filter);
        if !rules.is_empty() {
            r.nft(&rules);
        }
        r
    }

    fn nft(&self, rules: &str) {
        self.netns.nft(rules, &self.scratch.file("rules.nft"));
    }

    /// Connects a host to the LAN: `ifname` in namespace `ns` gets 192.168.1.(k+2)/24 (the k-th
    /// host behind this router) and a default route through it. The LAN is a bridge `lanbr`
    /// (192.168.1.1/24), so several hosts can sit behind one NAT, as in one office.
    pub fn plug_lan(&self, ns: &str, ifname: &str) -> String {
        let k = self.lan_hosts.fetch_add(1, Ordering::SeqCst);
        if k == 0 {
            self.ip(&["link", "add", "lanbr", "type", "bridge"]);
            self.ip(&["addr", "add", &format!("{}/24", self.lan_ip), "dev", "lanbr"]);
            self.ip(&["link", "set", "lanbr", "up"]);
        }
        let port = format!("lan{k}");
        self.ip(&["link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns]);
        self.ip(&["link", "set", &port, "master", "lanbr", "up"]);
        let addr = format!("{}.{}", self.lan_net, k + 2);
        ok(&["ip", "-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ifname]);
        ok(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        ok(&["ip", "-n", ns, "route", "add", "default", "via", &self.lan_ip]);
        addr
    }

    /// A route from this router straight to `other`'s LAN (routed LANs), as two routers on
    /// one link would have, rather than through the internet's namespace.
    pub fn route_to(&self, other: &Router) {
        self.ip(&["route", "add", &format!("{}.0/24", other.lan_net), "via", &other.wan_ip]);
    }

    /// `ip -n <router> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        self.netns.ip(args)
    }

    /// A command in the router's namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        self.netns.exec(args)
    }

    /// How long this router keeps an idle UDP mapping, unanswered and answered alike (the
    /// conntrack sysctls are per namespace).
    pub fn set_udp_timeout(&self, secs: u32) {
        self.netns.sysctl("net.netfilter.nf_conntrack_udp_timeout", &secs.to_string());
        self.netns.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", &secs.to_string());
    }

    /// Drops every UDP datagram from the LAN toward the WAN, as networks that allow only TCP
    /// (web proxies, some corporate and guest networks) do.
    pub fn block_outbound_udp(&self) {
        self.nft(BLOCK_UDP);
    }

    /// Forgets every mapping, as a rebooted router would (`conntrack -F`).
    pub fn flush(&self) {
        let out = self.exec(&["conntrack", "-F"]);
        assert!(out.status.success(), "conntrack -F: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The UDP mappings as (inside source port, destination address, outside port), from
    /// `conntrack -L`.
    pub fn udp_mappings(&self) -> Vec<(u16, String, u16)> {
        let out = self.exec(&["conntrack", "-L", "-p", "udp"]);
        assert!(out.status.success(), "conntrack -L: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter_map(parse_mapping).collect()
    }
}

/// `udp 17 29 src=192.168.1.2 dst=203.0.113.254 sport=4000 dport=9 [UNREPLIED] src=203.0.113.254
/// dst=203.0.113.1 sport=9 dport=61234 ...` -> (4000, "203.0.113.254", 61234): the original
/// direction's first src/dst/sport, the reply direction's dport.
fn parse_mapping(line: &str) -> Option<(u16, String, u16)> {
    let field = |key: &'static str| line.split_whitespace().filter_map(move |w| w.strip_prefix(key));
    let sport = field("sport=").next()?.parse().ok()?;
    let dst = field("dst=").next()?.to_owned();
    let outside = field("dport=").nth(1)?.parse().ok()?;
    Some((sport, dst, outside))
}

const BLOCK_UDP: &str = "table inet ipopblock {\n  chain forward {\n    \
    type filter hook forward priority filter; policy accept;\n    \
    oifname \"wan0\" meta l4proto udp drop\n  }\n}\n";

fn ruleset(kind: Nat, filter: bool) -> String {
    let flags = match kind {
        Nat::Cone => "",
        Nat::Symmetric => " random,fully-random",
        Nat::Routed => return String::new(),
    };
    let mut rules = format!(
        "table ip ipopnat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname \"wan0\" masquerade{flags}\n  }}\n}}\n"
    );
    if filter {
        rules.push_str("table inet ipophome {\n");
        for hook in ["input", "forward"] {
            rules.push_str(&format!(
                "  chain {hook} {{\n    type filter hook {hook} priority filter; policy accept;\n    \
                 iifname \"wan0\" ct state established,related accept\n    iifname \"wan0\" drop\n  }}\n"
            ));
        }
        rules.push_str("}\n");
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_lines_give_the_outside_port() {
        let line = "udp      17 29 src=192.168.1.2 dst=203.0.113.254 sport=4000 dport=9 [UNREPLIED] \
                    src=203.0.113.254 dst=203.0.113.1 sport=9 dport=61234 mark=0 use=1";
        assert_eq!(parse_mapping(line), Some((4000, "203.0.113.254".into(), 61234)));
        assert_eq!(parse_mapping("conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown."), None);
    }

    #[test]
    fn rulesets_name_the_mapping_and_the_filter() {
        assert!(ruleset(Nat::Cone, false).contains("masquerade\n"));
        assert!(ruleset(Nat::Symmetric, false).contains("masquerade random,fully-random"));
        assert!(!ruleset(Nat::Cone, false).contains("ipophome"));
        assert_eq!(ruleset(Nat::Routed, false), "", "routed: no translation, no filter");
        assert_eq!(ruleset(Nat::Cone, true).matches("ct state established,related accept").count(), 2);
    }
}
