//! What `arp` and `stats` print: the pinned maps of a running agent, as a table or JSON.

use anyhow::Result;
use ipop_common::maps::{ENTRY_STALE, ENTRY_STATIC};

use crate::{
    cli::args::ArpCommand,
    core::addr::Mac,
    kernel::maps::{Pinned, monotonic_ns},
};

/// `arp list | add | del`.
pub fn arp(pinned: Pinned, command: ArpCommand) -> Result<()> {
    match command {
        ArpCommand::List { json } => {
            let now = monotonic_ns();
            let entries = pinned.arp_list()?;
            if json {
                let list: Vec<_> = entries
                    .iter()
                    .map(|(ip, e)| {
                        serde_json::json!({
                            "ip": ip.to_string(),
                            "mac": Mac(e.mac).to_string(),
                            "static": e.flags & ENTRY_STATIC != 0,
                            "stale": e.flags & ENTRY_STALE != 0,
                            "age_secs": now.saturating_sub(e.updated_ns) / 1_000_000_000,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<15}  {:<17}  {:<6}  {:>8}", "IP", "MAC", "FLAGS", "AGE(s)");
                for (ip, e) in entries {
                    let flags = match (e.flags & ENTRY_STATIC != 0, e.flags & ENTRY_STALE != 0) {
                        (_, true) => "stale",
                        (true, false) => "static",
                        (false, false) => "",
                    };
                    let age = now.saturating_sub(e.updated_ns) / 1_000_000_000;
                    println!("{:<15}  {:<17}  {:<6}  {:>8}", ip.to_string(), Mac(e.mac).to_string(), flags, age);
                }
            }
        }
        ArpCommand::Add { ip, mac } => {
            pinned.arp_add(ip, mac)?;
            println!("{ip} is-at {mac} (static)");
        }
        ArpCommand::Del { ip } => {
            pinned.arp_del(ip)?;
            println!("{ip} removed");
        }
    }
    Ok(())
}

/// `stats`: the programs' counters, summed over CPUs.
pub fn stats(pinned: Pinned, json: bool) -> Result<()> {
    let s = pinned.stats()?;
    let rows = [
        ("seen", s.seen),
        ("answered", s.answered),
        ("events", s.events),
        ("events_lost", s.events_lost),
        ("malformed", s.malformed),
        ("stale", s.stale),
        ("injected", s.injected),
    ];
    if json {
        let obj: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        println!("{}", serde_json::Value::Object(obj));
    } else {
        for (k, v) in rows {
            println!("{k:<12} {v}");
        }
    }
    Ok(())
}
