//! The overlay as one node sees it, for the topology page. Each agent knows its own links;
//! it shares a small summary of them (with the hosts on its bridge and the conflicts it saw)
//! with its peers when it changes, and every 30 s for the round trips (`link_summary`,
//! docs/protocol.md; `Sharing` decides when), and keeps the last summary heard from each.
//! `Topology::view` merges its own with those of the peers whose link is up (their last word
//! stands while the link does: a change would have been sent): every node, every link, the
//! hosts behind each node, conflicts. Pure: the shell gives the time.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::{
    addr::{Mac, parse_host_addr, parse_host_mac},
    node_id::check_node_id,
};

/// A summary that did not change is sent again after this long (its round trips).
pub const REFRESH_NS: u64 = 30_000_000_000;
/// At most this many of each list are taken from a peer (a summary fits one RPC anyway).
pub const MAX_LINKS: usize = 256;
pub const MAX_HOSTS: usize = 256;
pub const MAX_CONFLICTS: usize = 16;

/// One link of the reporting node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkReport {
    pub peer: String,
    pub up: bool,
    /// `direct`, `ice` or `relay`; none while down.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// A host on the reporting node's bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub ip: String,
    pub mac: String,
}

/// A claim the reporting node refused: `claimed_by` said `ip` was at `mac`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictReport {
    pub ip: String,
    pub mac: String,
    pub claimed_by: String,
}

/// What one node says of itself (`link_summary`'s params).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub links: Vec<LinkReport>,
    pub hosts: Vec<HostReport>,
    #[serde(default)]
    pub conflicts: Vec<ConflictReport>,
}

impl Summary {
    /// Checks what a peer sent: node ids, addresses, paths and round trips well formed, and no
    /// list longer than this page draws.
    pub fn from_params(params: Value) -> Result<Summary, String> {
        let s: Summary = serde_json::from_value(params).map_err(|e| e.to_string())?;
        if s.links.len() > MAX_LINKS || s.hosts.len() > MAX_HOSTS || s.conflicts.len() > MAX_CONFLICTS {
            return Err("too many links, hosts or conflicts".into());
        }
        for l in &s.links {
            check_node_id(&l.peer)?;
            if !matches!(l.path.as_deref(), None | Some("direct" | "ice" | "relay")) {
                return Err(format!("unknown path {:?}", l.path));
            }
            if l.rtt_ms.is_some_and(|r| !(0.0..1e7).contains(&r)) {
                return Err("rtt_ms out of range".into());
            }
        }
        for h in &s.hosts {
            check_host(&h.ip, &h.mac)?;
        }
        for c in &s.conflicts {
            check_host(&c.ip, &c.mac)?;
            check_node_id(&c.claimed_by)?;
        }
        Ok(s)
    }

    /// Cuts the lists to what a peer takes, then drops hosts (as many as need be, found by
    /// halving: a bridge may have thousands), then conflicts, then links from the end until
    /// `fits` says the summary does (one RPC is at most `rpc::MAX_MESSAGE` bytes).
    pub fn shrink_to(&mut self, fits: impl Fn(&Summary) -> bool) {
        self.links.truncate(MAX_LINKS);
        self.hosts.truncate(MAX_HOSTS);
        self.conflicts.truncate(MAX_CONFLICTS);
        if fits(self) {
            return;
        }
        let hosts = std::mem::take(&mut self.hosts);
        let (mut lo, mut hi) = (0, hosts.len()); // fits with lo hosts (or none do), not with hi
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            self.hosts = hosts[..mid].to_vec();
            if fits(self) { lo = mid } else { hi = mid }
        }
        self.hosts = hosts[..lo].to_vec();
        while !fits(self) && (self.conflicts.pop().is_some() || self.links.pop().is_some()) {}
    }
}

fn check_host(ip: &str, mac: &str) -> Result<(), String> {
    parse_host_addr(ip)?;
    parse_host_mac(mac).map(|_| ())
}

/// The conflicts this node refused itself, the latest kept.
#[derive(Debug, Default)]
pub struct Conflicts(Vec<ConflictReport>);

impl Conflicts {
    /// Records a claim; whether it is news (not the same as the last one from there).
    pub fn record(&mut self, ip: IpAddr, mac: Mac, claimed_by: &str) -> bool {
        let c = ConflictReport { ip: ip.to_string(), mac: mac.to_string(), claimed_by: claimed_by.to_owned() };
        let before = self.0.len();
        self.0.retain(|old| old != &c);
        let new = self.0.len() == before;
        self.0.retain(|old| old.ip != c.ip || old.claimed_by != c.claimed_by);
        if self.0.len() == MAX_CONFLICTS {
            self.0.remove(0);
        }
        self.0.push(c);
        new
    }

    pub fn list(&self) -> Vec<ConflictReport> {
        self.0.clone()
    }
}

/// When to send this node's summary: when what it says changed (round trips aside: they
/// move all the time), or `REFRESH_NS` after the last one. Idle links then carry one small
/// message every 30 s, not one a tick.
#[derive(Debug, Default)]
pub struct Sharing {
    last: Option<(Summary, u64)>,
}

impl Sharing {
    /// The next one goes whatever it says: a peer (re)connected and has none.
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Whether `summary` should go now; if so, it counts as sent.
    pub fn due(&mut self, now_ns: u64, summary: &Summary) -> bool {
        let plain = without_rtt(summary);
        let due = match &self.last {
            None => true,
            Some((sent, at)) => *sent != plain || now_ns.saturating_sub(*at) >= REFRESH_NS,
        };
        if due {
            self.last = Some((plain, now_ns));
        }
        due
    }
}

fn without_rtt(s: &Summary) -> Summary {
    let mut s = s.clone();
    for l in &mut s.links {
        l.rtt_ms = None;
    }
    s
}

/// The summaries heard from peers, by node id, with when.
#[derive(Debug, Default)]
pub struct Topology {
    heard: BTreeMap<String, (Summary, u64)>,
}

impl Topology {
    pub fn heard(&mut self, node: &str, summary: Summary, now_ns: u64) {
        self.heard.insert(node.to_owned(), (summary, now_ns));
    }

    /// The page's document (docs/status.md, "topology"): `me` is this node, `mine` its own
    /// summary, now.
    pub fn view(&self, now_ns: u64, overlay: &str, me: &str, mine: &Summary) -> Value {
        // A peer's last summary stands while our link to it is up.
        let linked = |n: &str| mine.links.iter().any(|l| l.up && l.peer == n);
        let mut alive: BTreeMap<&str, bool> = BTreeMap::from([(me, true)]);
        for l in &mine.links {
            *alive.entry(&l.peer).or_default() |= l.up;
        }
        for n in self.heard.keys() {
            alive.entry(n).or_default();
        }
        let heard = self.heard.iter().filter(|(n, _)| linked(n)).map(|(n, (s, _))| (n.as_str(), s));
        let reports: Vec<(&str, &Summary)> = std::iter::once((me, mine)).chain(heard).collect();
        // Nodes only others link to: alive if a standing report says its link to them is up.
        for (_, s) in &reports {
            for l in &s.links {
                *alive.entry(&l.peer).or_default() |= l.up;
            }
        }
        let links = merge_links(&reports, &alive);
        let nodes: Vec<Value> = alive.iter().map(|(n, up)| self.node(n, *up, now_ns, me, mine)).collect();
        json!({"v": 1, "overlay": overlay, "node": me, "nodes": nodes, "links": links})
    }

    fn node(&self, n: &str, alive: bool, now_ns: u64, me: &str, mine: &Summary) -> Value {
        let (summary, heard_s) = if n == me {
            (Some(mine), None)
        } else {
            let h = self.heard.get(n);
            (h.map(|(s, _)| s), h.map(|(_, at)| now_ns.saturating_sub(*at) as f64 / 1e9))
        };
        json!({
            "id": n, "alive": alive, "self": n == me, "heard_s": heard_s,
            "hosts": summary.map(|s| json!(s.hosts)).unwrap_or(json!([])),
            "conflicts": summary.map(|s| json!(s.conflicts)).unwrap_or(json!([])),
        })
    }
}

/// What the reports say of one pair: up, path, round trip.
type Merged<'a> = (bool, Option<&'a str>, Option<f64>);

/// One entry per pair of nodes: up if any standing report says so and both ends are alive; the
/// path and round trip of the first report (this node's own comes first).
fn merge_links(reports: &[(&str, &Summary)], alive: &BTreeMap<&str, bool>) -> Vec<Value> {
    let mut links: BTreeMap<(&str, &str), Merged> = BTreeMap::new();
    for (from, s) in reports {
        for l in &s.links {
            let pair = if *from < l.peer.as_str() { (*from, l.peer.as_str()) } else { (l.peer.as_str(), *from) };
            let entry = links.entry(pair).or_insert((false, None, None));
            if l.up && !entry.0 {
                *entry = (true, l.path.as_deref(), l.rtt_ms);
            }
        }
    }
    let is_alive = |n: &str| alive.get(n).copied().unwrap_or(false);
    links
        .into_iter()
        .map(|((a, b), (up, path, rtt))| {
            let up = up && is_alive(a) && is_alive(b);
            json!({"a": a, "b": b, "up": up, "path": if up { path } else { None }, "rtt_ms": if up { rtt } else { None }})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn link(peer: &str, up: bool) -> LinkReport {
        LinkReport { peer: peer.into(), up, path: up.then(|| "direct".into()), rtt_ms: up.then_some(0.4) }
    }

    fn summary(links: &[(&str, bool)]) -> Summary {
        Summary { links: links.iter().map(|(p, up)| link(p, *up)).collect(), ..Default::default() }
    }

    fn node<'a>(v: &'a Value, id: &str) -> &'a Value {
        v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap_or_else(|| panic!("no {id} in {v}"))
    }

    fn up_links(v: &Value) -> Vec<(String, String)> {
        let links = v["links"].as_array().unwrap().iter().filter(|l| l["up"] == true);
        links.map(|l| (l["a"].as_str().unwrap().into(), l["b"].as_str().unwrap().into())).collect()
    }

    #[test]
    fn three_nodes_in_a_mesh_are_three_live_nodes_and_three_links() {
        let mut t = Topology::default();
        t.heard("h1", summary(&[("h0", true), ("h2", true)]), 10 * S);
        t.heard("h2", summary(&[("h0", true), ("h1", true)]), 10 * S);
        let v = t.view(11 * S, "lab", "h0", &summary(&[("h1", true), ("h2", true)]));
        assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
        assert!(["h0", "h1", "h2"].iter().all(|n| node(&v, n)["alive"] == true), "{v}");
        assert_eq!(up_links(&v).len(), 3, "{v}");
        assert_eq!(node(&v, "h0")["self"], true);
        assert_eq!(node(&v, "h1")["heard_s"], 1.0);
    }

    #[test]
    fn a_dead_node_and_its_links_turn_dead_once_our_link_and_our_peers_say_so() {
        let mut t = Topology::default();
        t.heard("h1", summary(&[("h0", true), ("h2", true)]), 10 * S);
        t.heard("h2", summary(&[("h0", true), ("h1", true)]), 10 * S);
        // h2 killed: our link to it is down first; h1 has not said so yet.
        let mine = summary(&[("h1", true), ("h2", false)]);
        let v = t.view(16 * S, "lab", "h0", &mine);
        assert_eq!(node(&v, "h2")["alive"], true, "h1's word stands while our link to h1 is up: {v}");
        // h1's link to h2 dies too, and its next summary says so.
        t.heard("h1", summary(&[("h0", true), ("h2", false)]), 17 * S);
        let v = t.view(17 * S, "lab", "h0", &mine);
        assert_eq!(node(&v, "h2")["alive"], false, "{v}");
        assert_eq!(up_links(&v), vec![("h0".into(), "h1".into())], "no live link touches a dead node: {v}");
        // A peer whose link is down speaks no more: its old word does not keep h2 alive.
        let v = t.view(18 * S, "lab", "h0", &summary(&[("h1", false), ("h2", false)]));
        assert!(up_links(&v).is_empty() && node(&v, "h1")["alive"] == false, "{v}");
    }

    #[test]
    fn a_summary_goes_when_it_changes_and_every_30_s_not_every_tick() {
        let mut sharing = Sharing::default();
        let mut s = summary(&[("h1", true)]);
        assert!(sharing.due(0, &s), "the first one goes");
        assert!(!sharing.due(2 * S, &s), "nothing new");
        s.links[0].rtt_ms = Some(9.0);
        assert!(!sharing.due(4 * S, &s), "a round trip alone waits for the refresh");
        assert!(sharing.due(REFRESH_NS, &s), "the refresh");
        s.links[0].up = false;
        assert!(sharing.due(REFRESH_NS + 2 * S, &s), "a link down goes at once");
        sharing.reset();
        assert!(sharing.due(REFRESH_NS + 4 * S, &s), "after a peer came up, whatever it says");
    }

    #[test]
    fn a_node_we_cannot_reach_is_drawn_from_a_peers_report() {
        let mut t = Topology::default();
        t.heard("h1", summary(&[("h0", true), ("h9", true)]), 10 * S);
        let v = t.view(10 * S, "lab", "h0", &summary(&[("h1", true)]));
        assert_eq!(node(&v, "h9")["alive"], true);
        assert_eq!(node(&v, "h9")["heard_s"], Value::Null);
        assert!(up_links(&v).contains(&("h1".into(), "h9".into())));
    }

    #[test]
    fn a_peers_summary_is_checked_before_it_is_kept() {
        let ok = json!({"links": [{"peer": "h1", "up": true, "path": "relay", "rtt_ms": 3.5}],
                        "hosts": [{"ip": "10.0.3.5", "mac": "02:00:00:00:00:05"}]});
        assert_eq!(Summary::from_params(ok).unwrap().links[0].path.as_deref(), Some("relay"));
        for bad in [
            json!({"links": [{"peer": "h 1", "up": true}], "hosts": []}),
            json!({"links": [{"peer": "h1", "up": true, "path": "teleport"}], "hosts": []}),
            json!({"links": [{"peer": "h1", "up": true, "rtt_ms": -1.0}], "hosts": []}),
            json!({"links": [], "hosts": [{"ip": "0.0.0.0", "mac": "02:00:00:00:00:05"}]}),
            json!({"links": [], "hosts": [{"ip": "10.0.3.5", "mac": "ff:ff:ff:ff:ff:ff"}]}),
            json!({"links": [], "hosts": [], "extra": 1}),
            json!({"links": [], "hosts": [], "conflicts": [{"ip": "10.0.3.5", "mac": "02:00:00:00:00:05", "claimed_by": ""}]}),
        ] {
            assert!(Summary::from_params(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_summary_too_big_for_one_message_loses_hosts_first() {
        let host = |i| HostReport { ip: format!("10.0.{i}.1"), mac: "02:00:00:00:00:05".into() };
        let mut s = Summary { links: vec![link("h1", true)], hosts: (0..100).map(host).collect(), conflicts: vec![] };
        s.shrink_to(|s| serde_json::to_vec(s).unwrap().len() <= 1024);
        assert!(serde_json::to_vec(&s).unwrap().len() <= 1024);
        assert_eq!(s.links.len(), 1);
        assert!(!s.hosts.is_empty() && s.hosts.len() < 100);
    }

    #[test]
    fn a_bridge_of_thousands_of_hosts_shrinks_in_a_few_tries() {
        let host = |i: u32| HostReport { ip: format!("10.{}.{}.1", i / 256, i % 256), mac: "02:00:00:00:00:05".into() };
        let mut s = Summary { links: vec![link("h1", true)], hosts: (0..16384).map(host).collect(), conflicts: vec![] };
        let tries = std::cell::Cell::new(0);
        s.shrink_to(|s| {
            tries.set(tries.get() + 1);
            serde_json::to_vec(s).unwrap().len() <= 4096
        });
        assert!(tries.get() <= 12, "{} tries", tries.get());
        let fits = serde_json::to_vec(&s).unwrap().len();
        assert!(fits <= 4096 && fits > 4096 - 60, "as many hosts as fit: {fits} bytes");
    }

    #[test]
    fn conflicts_keep_the_latest_once_each() {
        let mut c = Conflicts::default();
        let mac = Mac([2, 0, 0, 0, 0, 5]);
        for i in 0..20u8 {
            c.record(std::net::Ipv4Addr::new(10, 0, 3, i).into(), mac, "h1");
        }
        c.record(std::net::Ipv4Addr::new(10, 0, 3, 19).into(), mac, "h1");
        let list = c.list();
        assert_eq!(list.len(), MAX_CONFLICTS);
        assert_eq!(list.last().unwrap().ip, "10.0.3.19");
    }
}
