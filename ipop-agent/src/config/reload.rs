//! What a reload (SIGHUP, `systemctl reload`) may change while links stay up, and what needs
//! a restart. Pure: the running config against the one just read.

use crate::config::AgentConfig;

/// The outcome of comparing the running config with a new one.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing changed.
    Same,
    /// These keys changed, and all of them can be applied in place.
    Apply(Vec<&'static str>),
    /// These keys changed and need a restart: nothing is applied.
    Refuse(Vec<&'static str>),
}

/// The keys a running agent applies in place: rates (the switch's limits), STUN and TURN
/// servers (the next link attempts use them; links that are up keep their path), the log
/// filter.
pub fn plan(old: &AgentConfig, new: &AgentConfig) -> Plan {
    let restart = restart_keys(old, new);
    if !restart.is_empty() {
        return Plan::Refuse(restart);
    }
    let ice = |c: &AgentConfig| c.overlay.as_ref().map(|o| (o.ice_urls.clone(), o.turn_ca_file.clone()));
    let live = [
        ("arp_rpc_rate", old.limits.arp_per_source != new.limits.arp_per_source),
        ("broadcast_rate", old.limits.broadcast != new.limits.broadcast),
        ("stun/turn", ice(old) != ice(new)),
        ("log", old.log != new.log),
    ];
    let changed: Vec<&'static str> = live.iter().filter(|(_, c)| *c).map(|(k, _)| *k).collect();
    if changed.is_empty() { Plan::Same } else { Plan::Apply(changed) }
}

/// What the agent set up once at start from these keys: the devices and pins, who it is, how
/// it meets its peers, its sockets and servers.
fn restart_keys(old: &AgentConfig, new: &AgentConfig) -> Vec<&'static str> {
    let (o, n) = (old.overlay.as_ref(), new.overlay.as_ref());
    let differs = [
        ("bridge", old.bridge != new.bridge),
        ("tap", old.tap != new.tap),
        ("pin_dir", old.pin_dir != new.pin_dir),
        ("arp_max_age_secs", old.arp_max_age != new.arp_max_age),
        ("icc/icc_port", old.data_port != new.data_port),
        ("control_group", old.control_group != new.control_group),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
        ("web_listen", old.web_listen != new.web_listen),
        ("rekey_after_secs", old.rekey_after != new.rekey_after),
        ("node_id", o.map(|o| &o.node_id) != n.map(|n| &n.node_id)),
        ("overlay", o.map(|o| &o.overlay) != n.map(|n| &n.overlay)),
        ("secret/ca_public_key/certificate/revocation_list", o.map(|o| &o.trust) != n.map(|n| &n.trust)),
        ("rendezvous/xmpp", o.map(|o| &o.signaling) != n.map(|n| &n.signaling)),
        ("state_dir", o.map(|o| &o.state_dir) != n.map(|n| &n.state_dir)),
    ];
    differs.iter().filter(|(_, d)| *d).map(|(k, _)| *k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// A member's config with `extra` keys (node id h0 unless they say otherwise).
    fn cfg(extra: &str) -> AgentConfig {
        let base = r#"{"rendezvous": "192.0.2.1:7000", "secret": "correct horse battery""#;
        let node = if extra.contains("node_id") { "" } else { r#", "node_id": "h0""# };
        Settings::from_json(&format!("{base}{node}{extra}}}")).unwrap().resolve().unwrap()
    }

    #[test]
    fn rates_servers_and_the_log_filter_apply_in_place() {
        let old = cfg("");
        assert_eq!(plan(&old, &cfg("")), Plan::Same);
        let new = cfg(r#", "broadcast_rate": 100, "stun": ["stun:192.0.2.9:3478"], "log": "debug""#);
        assert_eq!(plan(&old, &new), Plan::Apply(vec!["broadcast_rate", "stun/turn", "log"]));
        assert_eq!(plan(&old, &cfg(r#", "arp_rpc_rate": 5"#)), Plan::Apply(vec!["arp_rpc_rate"]));
    }

    #[test]
    fn what_was_set_up_at_start_needs_a_restart_and_nothing_is_applied() {
        let old = cfg("");
        for (extra, key) in [
            // The default pin directory is named after the bridge, the state directory after
            // the overlay.
            (r#", "bridge": "br9""#, &["bridge", "pin_dir"][..]),
            (r#", "tap": "ipop9""#, &["tap"]),
            (r#", "pin_dir": "/sys/fs/bpf/x""#, &["pin_dir"]),
            (r#", "node_id": "h9""#, &["node_id"]),
            (r#", "overlay": "other""#, &["overlay", "state_dir"]),
            (r#", "web_listen": "127.0.0.1:8080""#, &["web_listen"]),
        ] {
            assert_eq!(plan(&old, &cfg(extra)), Plan::Refuse(key.to_vec()), "{extra}");
        }
        let both = cfg(r#", "tap": "ipop9", "broadcast_rate": 100"#);
        assert_eq!(plan(&old, &both), Plan::Refuse(vec!["tap"]), "a rate does not ride along a refusal");
    }
}
