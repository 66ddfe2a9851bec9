//! Telling systemd how the agent is (`Type=notify`, sd_notify(3), through the sd-notify
//! crate): READY=1 once the programs are attached and the TAP is in the bridge, RELOADING=1
//! and READY=1 around a reload, STOPPING=1, a STATUS= line, and WATCHDOG=1 from the agent's
//! own loop (a stuck loop stops the pings, and systemd restarts the unit). Without
//! `NOTIFY_SOCKET` (not under systemd) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!("sd_notify: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half its timeout, or `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    period(var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref(), std::process::id())
}

/// As sd_watchdog_enabled(3) reads the environment: a timeout in `WATCHDOG_USEC`, for this
/// process unless `WATCHDOG_PID` names another. (The sd-notify crate's own check also
/// requires `WATCHDOG_PID`, which systemd need not set.)
fn period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    if pid.is_some_and(|p| p.parse() != Ok(me)) {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_unless_another_pid_is_named() {
        assert_eq!(period(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(period(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(15)));
        assert_eq!(period(Some("30000000"), Some("8"), 7), None);
        assert_eq!(period(Some("0"), None, 7), None);
        assert_eq!(period(Some("soon"), None, 7), None);
        assert_eq!(period(None, Some("7"), 7), None);
    }
}
