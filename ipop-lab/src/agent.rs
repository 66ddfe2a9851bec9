//! The agent binary the lab runs, and what tests read from running agents: status, counters,
//! TCX links, pins.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::{
    command::{cmd, ok},
    host::Host,
};

static AGENT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Names the agent binary every lab in this process runs (xtask: the release build for the
/// benchmark, the debug build for the demo).
pub fn set_agent(path: impl Into<PathBuf>) {
    *AGENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.into());
}

/// The agent binary: the one given to [`set_agent`], else `$IPOP_AGENT`, else `ipop-agent`
/// beside the running executable or one directory up from cargo's `deps/`.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = AGENT.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return path;
    }
    if let Some(path) = std::env::var_os("IPOP_AGENT") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    beside(&exe).unwrap_or_else(|| {
        panic!(
            "no ipop-agent beside {}: build it (cargo build -p ipop-agent), set IPOP_AGENT, or call ipop_lab::set_agent",
            exe.display()
        )
    })
}

/// `ipop-agent` in the executable's directory, or in its parent when that is cargo's `deps/`.
fn beside(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let candidates = [Some(dir), dir.file_name().filter(|n| *n == "deps").and(dir.parent())];
    candidates.into_iter().flatten().map(|d| d.join("ipop-agent")).find(|p| p.is_file())
}

/// The agent's own status (peers, link states, switch counters) from its control socket.
pub fn status(host: &Host, pin_dir: &Path) -> serde_json::Value {
    let out = host.agent(&["status", "--json", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of the agent's in-kernel counters, read through the CLI.
pub fn stats(host: &Host, pin_dir: &Path) -> serde_json::Value {
    let out = host.agent(&["stats", "--json", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "stats failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Ids of the TCX links (bpftool's "type 11") and the programs they hold, as bpftool sees them.
pub fn tcx_links() -> Vec<(u64, u64)> {
    let out = ok(&["bpftool", "-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .map(|links| {
            links
                .iter()
                .filter(|l| l["type"] == 11 || l["type"] == "tcx")
                .map(|l| (l["id"].as_u64().unwrap(), l["prog_id"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The name of loaded program `id`, if it is still loaded.
pub fn prog_name(id: u64) -> Option<String> {
    let out = cmd(&["bpftool", "-j", "prog", "show", "id", &id.to_string()]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["name"].as_str().map(str::to_owned)
}

/// Removes a pin tree (files are pins, directories are directories; bpffs has no rm -r).
pub fn remove_pins(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                remove_pins(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
    let _ = fs::remove_dir(root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_found_beside_the_executable_or_above_deps() {
        let dir = std::env::temp_dir().join(format!("ipop-lab-beside-{}", std::process::id()));
        fs::create_dir_all(dir.join("debug/deps")).unwrap();
        fs::write(dir.join("debug/ipop-agent"), "").unwrap();
        assert_eq!(beside(&dir.join("debug/deps/overlay-0123")), Some(dir.join("debug/ipop-agent")));
        assert_eq!(beside(&dir.join("debug/xtask")), Some(dir.join("debug/ipop-agent")));
        fs::remove_file(dir.join("debug/ipop-agent")).unwrap();
        assert_eq!(beside(&dir.join("debug/deps/overlay-0123")), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
