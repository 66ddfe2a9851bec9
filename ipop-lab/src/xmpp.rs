//! Real XMPP servers on the lab's underlay, for the agents' XMPP signaling, from the Debian
//! packages: prosody (it refuses to run as root, so it runs as its own user `prosody` with
//! `setpriv`) and a two-node ejabberd cluster (its `ejabberdctl` runs it as `ejabberd`), each
//! with a MUC service, TLS from a CA made for the run, accounts and a members-only room.
//!
//! The domain is [`DOMAIN`] (no DNS: agents name the server's address), the room [`ROOM`].

use std::path::{Path, PathBuf};

use crate::{
    command::{cmd, eventually_within, holds_within},
    underlay::Underlay,
};

/// The lab's XMPP domain, and its MUC service.
pub const DOMAIN: &str = "xmpp.test";
pub const MUC: &str = "conference.xmpp.test";
/// The overlay's room.
pub const ROOM: &str = "lab@conference.xmpp.test";
/// The server's admin account (it makes the room and its member list).
const ADMIN: &str = "admin";

/// A prosody started by [`Underlay::start_prosody`].
pub struct Prosody {
    /// Its index among the underlay's services.
    pub idx: usize,
    /// The CA that signed its certificate (PEM): the agents' `ca_file`.
    pub ca: PathBuf,
    /// `host:port` agents connect to.
    pub addr: String,
    config: PathBuf,
    ns: String,
}

/// How prosody's certificate is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cert {
    /// For the domain and its MUC service, valid for a day.
    #[default]
    Good,
    /// For another name.
    WrongName,
    /// Expired by the time anyone connects.
    Expired,
}

impl Underlay {
    /// Starts prosody on "<net>.254:5222" with TLS (`cert`), the MUC component, `accounts`
    /// (user, password; beside the admin), and the room [`ROOM`], members-only, whose members
    /// are `members` (users); waits until it answers.
    pub fn start_prosody(&mut self, accounts: &[(&str, &str)], members: &[&str], cert: Cert) -> Prosody {
        let dir = self.file("prosody");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let ca = dir.join("ca.pem");
        crate::tls::issue_for(
            &xmpp_names(cert),
            cert == Cert::Expired,
            &ca,
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
        );
        let config = dir.join("prosody.cfg.lua");
        std::fs::write(&config, prosody_config(&dir, &self.addr)).unwrap();
        own(&dir, "prosody");
        let mut p = Prosody { idx: 0, ca, addr: format!("{}:5222", self.addr), config, ns: self.ns.clone() };
        for (user, password) in accounts.iter().copied().chain([(ADMIN, "admin-password")]) {
            p.register(user, password);
        }
        p.idx = self.spawn_prosody(&p);
        self.wait_for_port(5222, "prosody listens on 5222");
        p.make_room(members);
        p
    }

    /// Starts prosody `p` again (after `stop_service(p.idx)`): same config, accounts, room.
    pub fn restart_prosody(&mut self, p: &mut Prosody) {
        p.idx = self.spawn_prosody(p);
        self.wait_for_port(5222, "prosody listens on 5222 again");
    }

    fn spawn_prosody(&mut self, p: &Prosody) -> usize {
        let command = p.command(&["-F"]);
        self.spawn(&command.iter().map(String::as_str).collect::<Vec<_>>(), "prosody.err")
    }

    fn wait_for_port(&self, port: u16, what: &str) {
        let filter = format!("sport = :{port}");
        eventually_within(30, what, || !self.exec(&["ss", "-Htln", &filter]).stdout.is_empty());
    }
}

impl Prosody {
    /// `prosody` (or `prosodyctl` with `ctl`) as the user prosody, on this config, with `args`.
    fn command_of(&self, program: &str, args: &[&str]) -> Vec<String> {
        let user = ["setpriv", "--reuid=prosody", "--regid=prosody", "--init-groups", "--"];
        let mut full: Vec<String> = user.iter().map(|s| s.to_string()).collect();
        full.extend([program.to_owned(), "--config".into(), self.config.to_str().unwrap().to_owned()]);
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    fn command(&self, args: &[&str]) -> Vec<String> {
        self.command_of("prosody", args)
    }

    /// Runs `prosodyctl` with `args` in the underlay's namespace; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut full = vec!["nsenter".to_owned(), format!("--net=/run/netns/{}", self.ns)];
        full.extend(self.command_of("prosodyctl", args));
        let out = cmd(&full.iter().map(String::as_str).collect::<Vec<_>>());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "prosodyctl {args:?}: {text}");
        text
    }

    /// Makes account `user`@[`DOMAIN`] with `password`.
    pub fn register(&self, user: &str, password: &str) {
        self.ctl(&["register", user, DOMAIN, password]);
    }

    /// Makes [`ROOM`] persistent and members-only, with `members` (users of [`DOMAIN`]) as
    /// its members and real JIDs shown to all (the server's shell, as its admin would).
    fn make_room(&self, members: &[&str]) {
        let jids: Vec<String> = members.iter().map(|m| format!("\"{m}@{DOMAIN}\"")).collect();
        let lua = format!(
            ">local m = prosody.hosts[{MUC:?}].modules.muc; \
             local r = m.get_room_from_jid({ROOM:?}) or m.create_room({ROOM:?}, \
               {{persistent = true; members_only = true; whois = \"anyone\"}}); \
             for _, j in ipairs({{{}}}) do r:set_affiliation(true, j, \"member\") end; \
             r:save(true); return \"room ready\"",
            jids.join(", ")
        );
        let out = self.ctl(&["shell", &lua]);
        assert!(out.contains("room ready"), "prosody made no room: {out}");
    }

    /// Adds `user` to the room's members.
    pub fn add_member(&self, user: &str) {
        self.make_room(&[user]);
    }
}

/// The names the certificate is for.
fn xmpp_names(cert: Cert) -> Vec<String> {
    match cert {
        Cert::Good | Cert::Expired => vec![format!("DNS:{DOMAIN}"), format!("DNS:{MUC}")],
        Cert::WrongName => vec!["DNS:wrong.example".to_owned()],
    }
}

fn prosody_config(dir: &Path, addr: &str) -> String {
    let d = dir.to_str().unwrap();
    format!(
        r#"-- The lab's prosody: one domain, TLS required, a MUC component, no federation.
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
log = {{ info = "{d}/prosody.log" }}
interfaces = {{ "{addr}" }}
c2s_ports = {{ 5222 }}
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
allow_registration = false
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; "admin_shell" }}
modules_disabled = {{ "s2s"; "offline" }}
ssl = {{ certificate = "{d}/cert.pem"; key = "{d}/key.pem" }}
admins = {{ "{ADMIN}@{DOMAIN}" }}

VirtualHost "{DOMAIN}"

Component "{MUC}" "muc"
  restrict_room_creation = true
  muc_room_default_members_only = true
  muc_room_default_public_jids = true
"#
    )
}

/// Gives `dir` and everything in it to `user` (a server that does not run as root).
fn own(dir: &Path, user: &str) {
    let out = cmd(&["chown", "-R", &format!("{user}:{user}"), dir.to_str().unwrap()]);
    assert!(out.status.success(), "chown {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    // Its parents are the lab's scratch directories: prosody must be able to walk through them.
    let mut parent = dir.parent();
    while let Some(p) = parent.filter(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir()) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(p).unwrap().permissions().mode();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o001)).unwrap();
        parent = p.parent();
    }
}

/// A two-node ejabberd cluster started by [`Underlay::start_ejabberd_cluster`]: each node in
/// a namespace of its own on the underlay ("<net>.201", ".202"), Erlang distribution on a
/// fixed port of each address (no epmd), one Mnesia database across both.
pub struct Ejabberd {
    /// `host:port` of each node's client port.
    pub addrs: Vec<String>,
    /// The CA that signed the certificate both nodes show (PEM).
    pub ca: PathBuf,
    nodes: Vec<crate::netns::Netns>,
    dir: PathBuf,
}

impl Underlay {
    /// Starts ejabberd on two nodes, joins the second to the first, and makes `accounts` and
    /// the room [`ROOM`] (members-only, persistent, real JIDs shown, private messages allowed)
    /// with `members` as its members. Domain [`DOMAIN`], TLS required, a certificate from a
    /// CA made for the run.
    pub fn start_ejabberd_cluster(&mut self, accounts: &[(&str, &str)], members: &[&str]) -> Ejabberd {
        let dir = self.file("ejabberd");
        let ca = dir.join("ca.pem");
        std::fs::create_dir_all(&dir).unwrap();
        crate::tls::issue_for(&xmpp_names(Cert::Good), false, &ca, &dir.join("cert.pem"), &dir.join("key.pem"));
        std::fs::write(dir.join("ejabberd.yml"), ejabberd_config(&dir)).unwrap();
        let mut e = Ejabberd { addrs: Vec::new(), ca, nodes: Vec::new(), dir };
        for n in [201u8, 202] {
            let ns = crate::netns::Netns::add(&format!("{}e{n}", self.prefix));
            let addr = self.plug(&ns.name, "eth0", n);
            std::fs::create_dir_all(e.node_dir(e.nodes.len()).join("db")).unwrap();
            std::fs::write(e.node_dir(e.nodes.len()).join("ctl.cfg"), ctl_config(&addr)).unwrap();
            e.addrs.push(format!("{addr}:5222"));
            e.nodes.push(ns);
        }
        own(&e.dir, "ejabberd");
        for i in 0..2 {
            let log = e.node_dir(i).join("foreground.log");
            let args = e.ctl_args(i, &["foreground"]);
            e.nodes[i].spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), &log);
            let node = &e.nodes[i];
            // An Erlang VM starting beside other tests on two cores takes its time.
            let listening = || !node.nsenter(&["ss", "-Htln", "sport = :5222"]).stdout.is_empty();
            if !holds_within(30, listening) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("ejabberd node {i} does not listen on 5222 after 30 s:\n{text}");
            }
        }
        let first = format!("ejabberd@{}", e.addrs[0].split(':').next().unwrap());
        e.ctl(1, &["join_cluster", &first]);
        for (user, password) in accounts {
            e.ctl(0, &["register", user, DOMAIN, password]);
        }
        e.make_room(members);
        e
    }
}

impl Ejabberd {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    /// `ejabberdctl` of node `i` with `args` (as root it runs the command as `ejabberd`).
    fn ctl_args(&self, i: usize, args: &[&str]) -> Vec<String> {
        let d = self.node_dir(i);
        let p = |path: PathBuf| path.to_str().unwrap().to_owned();
        let mut full = vec!["ejabberdctl".to_owned(), "--ctl-config".into(), p(d.join("ctl.cfg"))];
        full.extend(["--config".into(), p(self.dir.join("ejabberd.yml")), "--spool".into(), p(d.join("db"))]);
        full.extend(["--logs".into(), p(d.clone())]);
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    /// Runs an `ejabberdctl` command on node `i`; its output.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let full = self.ctl_args(i, args);
        let out = self.nodes[i].nsenter(&full.iter().map(String::as_str).collect::<Vec<_>>());
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "ejabberdctl {args:?} on node {i}: {text}");
        text
    }

    /// The nodes the cluster has, as node 0 sees it.
    pub fn cluster(&self) -> Vec<String> {
        self.ctl(0, &["list_cluster"]).lines().map(|l| l.trim_matches('\'').to_owned()).collect()
    }

    fn make_room(&self, members: &[&str]) {
        let opts = ["persistent", "members_only", "allow_private_messages"]
            .iter()
            .map(|o| format!(r#"{{"name":"{o}","value":"true"}}"#))
            .chain([r#"{"name":"anonymous","value":"false"}"#.to_owned()])
            .collect::<Vec<_>>()
            .join(",");
        let (room, service) = ROOM.split_once('@').unwrap();
        self.ctl(0, &["create_room_with_opts", room, service, DOMAIN, &format!("[{opts}]")]);
        for m in members {
            self.ctl(0, &["set_room_affiliation", room, service, &format!("{m}@{DOMAIN}"), "member"]);
        }
    }
}

/// The cluster's config, the same on both nodes: one domain, TLS required, MUC where only the
/// admin makes rooms, and no stream resumption (a dropped agent leaves its rooms at once).
fn ejabberd_config(dir: &Path) -> String {
    let d = dir.to_str().unwrap();
    format!(
        r#"hosts: ["{DOMAIN}"]
loglevel: info
certfiles: ["{d}/cert.pem", "{d}/key.pem", "{d}/ca.pem"]
auth_method: internal
listen:
  - port: 5222
    module: ejabberd_c2s
    starttls_required: true
acl:
  admin: {{ user: "{ADMIN}@{DOMAIN}" }}
access_rules:
  muc_create: {{ allow: admin }}
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_muc:
    access_create: muc_create
  mod_muc_admin: {{}}
"#
    )
}

/// One node's `ejabberdctl` settings: its Erlang name on its address, distribution on a fixed
/// port there (so no epmd), the cluster's cookie.
fn ctl_config(addr: &str) -> String {
    format!(
        "ERLANG_NODE=ejabberd@{addr}\nINET_DIST_INTERFACE={addr}\nERL_DIST_PORT=5210\n\
         ERL_OPTIONS=\"-setcookie ipoplab\"\nEJABBERD_BYPASS_WARNINGS=true\n"
    )
}
