//! A real LXC container (busybox template) on a host's lxcbr0: created under the host's own
//! lxcpath (in its temporary directory), started inside the host namespace so its veth lands
//! there, with a static address (`lxc.net.0.ipv4.address`), stopped and destroyed on drop.
//!
//! Every lxc-* command runs in the host namespace (`nsenter --net`): the container's monitor
//! listens on an abstract unix socket, and those belong to the network namespace the monitor
//! was started in.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::command::cmd;

pub struct Lxc {
    pub name: String,
    pub lxcpath: PathBuf,
    /// The host namespace it runs in.
    pub ns: String,
    pub addr: String,
}

/// Whether LXC (and a busybox to build its containers from) is installed.
pub fn lxc_available() -> bool {
    let found = |c: &str| Command::new("sh").args(["-c", &format!("command -v {c}")]).stdout(Stdio::null()).status();
    ["lxc-create", "busybox"].iter().all(|c| found(c).is_ok_and(|s| s.success()))
}

impl Lxc {
    /// Creates and starts container `name` in `lxcpath`, eth0 at `addr`/24 on lxcbr0 of host
    /// namespace `ns`; returns once it runs.
    pub fn start(ns: &str, lxcpath: &Path, name: &str, addr: &str) -> Lxc {
        assert!(lxc_available(), "LXC containers need lxc and busybox-static: run `cargo xtask setup`");
        fs::create_dir_all(lxcpath).unwrap();
        let lxc = Lxc { name: name.to_owned(), lxcpath: lxcpath.to_owned(), ns: ns.to_owned(), addr: addr.to_owned() };
        let conf = lxcpath.join(format!("{name}.conf"));
        fs::write(&conf, network_config(addr)).unwrap();
        lxc.run_ok("lxc-create", &["-t", "busybox", "-f", conf.to_str().unwrap()]);
        // The template's rcS runs udhcpc, whose "deconfig" flushes the address LXC set.
        fs::write(lxcpath.join(name).join("rootfs/etc/init.d/rcS"), "#!/bin/sh\n/bin/mount -a\n").unwrap();
        lxc.start_in_host();
        lxc.run_ok("lxc-wait", &["-s", "RUNNING", "-t", "30"]);
        lxc
    }

    /// `lxc-start -d` in the host namespace. LXC looks the bridge up in /sys/class/net, which
    /// under `nsenter --net` still shows the machine's devices; so it runs in a private mount
    /// namespace where the host namespace's own sysfs is bound over the net directories (all
    /// of /sys cannot be replaced, as `ip netns exec` does: LXC needs /sys/fs/cgroup).
    fn start_in_host(&self) {
        let log = self.lxcpath.join(format!("{}.log", self.name));
        let script = format!(
            "d=$(mktemp -d) && mount -t sysfs sysfs $d && mount --bind $d/class/net /sys/class/net && \
             mount --bind $d/devices/virtual/net /sys/devices/virtual/net && umount -l $d && rmdir $d && \
             exec lxc-start -P {} -n {} -d -o {}",
            self.lxcpath.display(),
            self.name,
            log.display()
        );
        let net = format!("--net=/run/netns/{}", self.ns);
        let out = cmd(&["nsenter", &net, "unshare", "--mount", "--propagation", "private", "sh", "-c", &script]);
        let text = fs::read_to_string(&log).unwrap_or_default();
        assert!(out.status.success(), "lxc-start {}: {}\n{text}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// `tool -P <lxcpath> -n <name> args...` in the host namespace.
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let net = format!("--net=/run/netns/{}", self.ns);
        let path = self.lxcpath.to_str().unwrap();
        let mut full = vec!["nsenter", &net, tool, "-P", path, "-n", &self.name];
        full.extend_from_slice(args);
        cmd(&full)
    }

    fn run_ok(&self, tool: &str, args: &[&str]) {
        let out = self.run(tool, args);
        let log = fs::read_to_string(self.lxcpath.join(format!("{}.log", self.name))).unwrap_or_default();
        assert!(
            out.status.success(),
            "{tool} {args:?} for {}: {}{}\n{log}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command inside the container (`lxc-attach`).
    pub fn attach(&self, args: &[&str]) -> Output {
        let mut full = vec!["--clear-env", "--"];
        full.extend_from_slice(args);
        self.run("lxc-attach", &full)
    }

    /// The MAC of the container's eth0, read inside it.
    pub fn mac(&self) -> String {
        let out = self.attach(&["cat", "/sys/class/net/eth0/address"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The container's network: a veth on lxcbr0, named eth0 inside, with a static address.
fn network_config(addr: &str) -> String {
    format!(
        "lxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.net.0.flags = up\nlxc.net.0.name = eth0\n\
         lxc.net.0.ipv4.address = {addr}/24\n"
    )
}

impl Drop for Lxc {
    fn drop(&mut self) {
        // -f stops a running container first (its init gets SIGKILL: busybox has nothing to save).
        let _ = self.run("lxc-destroy", &["-f"]);
    }
}
