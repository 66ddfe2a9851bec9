//! The Debian package, as an operator meets it: installed with dpkg on this machine, the
//! agent answers from /usr/bin, the unit is one systemd accepts, the user exists; removed and
//! purged, no file of it is left. Needs root and the .deb (`cargo xtask test` builds it with
//! `cargo xtask deb` and runs this with IPOP_DEB set; plain `cargo test` skips it).

mod support;

use std::path::Path;

use support::{cmd, ok as run};

fn installed() -> bool {
    cmd(&["dpkg-query", "-W", "-f=${Status}", "ipop-agent"]).stdout.starts_with(b"install ok installed")
}

/// Purges the package even when the test fails halfway, and removes the user and group it
/// made if this machine had none (the package keeps them, as Debian keeps system users).
struct Purge {
    had_user: bool,
}

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = cmd(&["dpkg", "--purge", "ipop-agent"]);
        if !self.had_user {
            let _ = cmd(&["userdel", "ipop"]);
            let _ = cmd(&["groupdel", "ipop"]);
        }
    }
}

#[test]
#[ignore = "needs the .deb: cargo xtask test builds it and sets IPOP_DEB"]
fn the_package_installs_makes_its_user_and_leaves_no_file_when_purged() {
    let deb = std::env::var("IPOP_DEB").expect("IPOP_DEB: the .deb to test (cargo xtask deb)");
    assert!(!installed(), "ipop-agent is already installed on this machine: the test would remove it");
    let had_user = cmd(&["getent", "passwd", "ipop"]).status.success();
    let _purge = Purge { had_user };
    run(&["dpkg", "--install", &deb]);
    let files: Vec<String> = run(&["dpkg-query", "-L", "ipop-agent"]).lines().map(str::to_owned).collect();
    for f in
        ["/usr/bin/ipop-agent", "/lib/systemd/system/ipop@.service", "/usr/share/doc/ipop-agent/examples/lxcbr0.json"]
    {
        assert!(files.iter().any(|l| l == f), "{f} in the package:\n{files:?}");
    }
    let version = run(&["/usr/bin/ipop-agent", "--version"]);
    assert_eq!(version.trim(), format!("ipop-agent {}", env!("CARGO_PKG_VERSION")));
    assert!(cmd(&["getent", "passwd", "ipop"]).status.success(), "the package made the user ipop");
    // systemd's own checks of the installed unit, as an instance for bridge lxcbr0.
    let verify = cmd(&["systemd-analyze", "verify", "/lib/systemd/system/ipop@lxcbr0.service"]);
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));

    run(&["dpkg", "--remove", "ipop-agent"]);
    assert!(!Path::new("/usr/bin/ipop-agent").exists());
    run(&["dpkg", "--purge", "ipop-agent"]);
    assert!(!installed());
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).is_file()).collect();
    assert!(left.is_empty(), "files of the package left after purge: {left:?}");
}
