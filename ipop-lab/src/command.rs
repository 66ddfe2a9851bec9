//! Running commands and waiting for conditions, the way a test wants them: a command that
//! cannot run, or must succeed and does not, panics with its output.

use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

/// Runs a command; panics with its output if it cannot be started.
pub fn cmd(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = cmd(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require_root() {
    // SAFETY: no arguments, no side effects.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the lab needs root: run the tests with `cargo xtask test`");
}

/// Waits up to 5 s for `cond` (the kernel releases a dead process's links asynchronously).
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(5, what, cond);
}

/// Waits up to `secs` seconds for `cond`.
pub fn eventually_within(secs: u64, what: &str, cond: impl FnMut() -> bool) {
    assert!(holds_within(secs, cond), "not within {secs} s: {what}");
}

/// Whether `cond` comes to hold within `secs` seconds (checked every 100 ms).
pub fn holds_within(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
    true
}
