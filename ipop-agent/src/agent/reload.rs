//! SIGHUP: the config read again and what changed applied in place, links kept; a change that
//! needs a restart is refused with a line saying which keys, and the running config stays.

use anyhow::Result;
use tracing::{info, warn};

use crate::{
    agent::shell::Shell,
    config::{
        AgentConfig,
        reload::{Plan, plan},
    },
    link::ice::IceConfig,
    ops::notify,
};

/// Replaces the process's log filter.
pub type SetLog = Box<dyn Fn(&str) -> Result<()>>;

/// How to read the config again, and to change the log filter: from the command line.
pub struct Reload {
    pub load: Box<dyn Fn() -> Result<AgentConfig>>,
    pub set_log: SetLog,
}

/// Reads the config again and applies it to the running agent (`live` is what it runs with).
pub fn reload(shell: &mut Shell, live: &mut AgentConfig, source: &Reload) {
    notify::reloading();
    match (source.load)().and_then(|new| apply(shell, live, new, source)) {
        Ok(Plan::Same) => info!("config reloaded: nothing changed"),
        Ok(Plan::Apply(keys)) => info!(changed = ?keys, "config reloaded: applied, links kept"),
        Ok(Plan::Refuse(keys)) => warn!(
            changed = ?keys,
            "config reload refused: {} can only change with a restart (systemctl restart); still running with the previous config",
            keys.join(", ")
        ),
        Err(e) => warn!("config reload refused: {e:#}; still running with the previous config"),
    }
    notify::ready("running");
}

/// Applies `new` if every change can be; the plan either way.
fn apply(shell: &mut Shell, live: &mut AgentConfig, new: AgentConfig, source: &Reload) -> Result<Plan> {
    let plan = plan(live, &new);
    let Plan::Apply(keys) = &plan else { return Ok(plan) };
    // What can fail goes first, so a failure applies nothing.
    let ice = match &new.overlay {
        Some(o) if keys.contains(&"stun/turn") => {
            Some(IceConfig::start(o.ice_urls.clone(), o.turn_ca_file.as_deref())?)
        }
        _ => None,
    };
    if keys.contains(&"log") {
        (source.set_log)(new.log.as_deref().unwrap_or(crate::config::DEFAULT_LOG))?;
    }
    if let (Some(ice), Some(peers)) = (ice, shell.peers.as_mut()) {
        peers.set_ice(ice);
    }
    shell.switch.set_limits(new.limits);
    *live = new;
    Ok(plan)
}
