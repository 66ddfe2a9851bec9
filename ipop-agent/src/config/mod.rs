//! The agent's configuration: a JSON file (the seed's controller keys plus ours), every key
//! overridable on the command line. Pure: parsing and validation only.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

pub mod reload;
pub mod xmpp;

pub use xmpp::XmppSettings;

use crate::{
    core::{limit::Rate, node_id::check_node_id, switch::Limits},
    kernel::datapath::default_pin_dir,
    link::{
        ice_server::{IceServer, Transport},
        timers::REKEY_AFTER,
    },
    ops::state::default_state_dir,
    signaling::xmpp::XmppConfig,
};

/// Defaults, as documented in README.md.
pub const DEFAULT_BRIDGE: &str = "lxcbr0";
pub const DEFAULT_TAP: &str = "ipop";
pub const DEFAULT_ARP_MAX_AGE_SECS: u64 = 300;
pub const DEFAULT_OVERLAY: &str = "ipop";
pub const DEFAULT_CONTROL_GROUP: &str = "ipop";
/// The log filter without `--log` or `log`: the ICE and TURN libraries' state flips are noise.
pub const DEFAULT_LOG: &str = "info,webrtc_ice=error,turn=error,stun=error,webrtc_util=error";

/// Settings as given, in a file or on the command line; `None` means "not given here".
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The seed's key: ipop only does switch mode, so it must be 1 when present.
    pub switchmode: Option<u8>,
    /// The seed's inter-controller communication switch and port (the links' port).
    pub icc: Option<bool>,
    pub icc_port: Option<u16>,
    /// The bridge the TAP joins (the containers' bridge, `lxcbr0` in the seed).
    pub bridge: Option<String>,
    /// Name of the TAP device the agent creates.
    pub tap: Option<String>,
    /// Where the maps are pinned; default `/sys/fs/bpf/ipop/<bridge>`.
    pub pin_dir: Option<PathBuf>,
    /// Learned ARP entries older than this are no longer answered in the kernel (0: never).
    pub arp_max_age_secs: Option<u64>,
    /// This agent's name in the overlay (default: the host name).
    pub node_id: Option<String>,
    /// The overlay to join (default "ipop").
    pub overlay: Option<String>,
    /// The overlay's shared secret: admits to the rendezvous and keys the links.
    pub secret: Option<String>,
    /// `host:port` of the rendezvous service; without it (or `xmpp`) the agent runs alone.
    pub rendezvous: Option<String>,
    /// Signaling through an XMPP server's members-only room instead of the rendezvous.
    pub xmpp: Option<XmppSettings>,
    /// STUN servers (`stun:host:port`) for server-reflexive candidates.
    pub stun: Option<Vec<String>>,
    /// TURN servers (`turn:host:port?transport=udp`, credentials in the url as
    /// `turn:user:pass@host:port`, or in `turn_user` and `turn_password`) for relays.
    pub turn: Option<Vec<String>>,
    /// TURN credentials for the `turn` urls that carry none.
    pub turn_user: Option<String>,
    pub turn_password: Option<String>,
    /// A file holding `turn_password` (read at start, by the command line; one of the two).
    pub turn_password_file: Option<PathBuf>,
    /// PEM certificates a `turns:` server's certificate may chain to, beside the system's.
    pub turn_ca_file: Option<PathBuf>,
    /// Where the node's key is kept (default `/var/lib/ipop/<overlay>`).
    pub state_dir: Option<PathBuf>,
    /// The overlay CA's public key (hex, `ca.pub`): members are admitted, and peers accepted,
    /// by certificate instead of the shared secret.
    pub ca_public_key: Option<String>,
    /// This node's certificate file (with `ca_public_key`).
    pub certificate: Option<PathBuf>,
    /// The CA's revocation list file (with `ca_public_key`; optional).
    pub revocation_list: Option<PathBuf>,
    /// Seconds between rekeys: for tests only (the command line's hidden
    /// `--rekey-after-secs`), never read from a file.
    #[serde(skip)]
    pub rekey_after_secs: Option<u64>,
    /// ARP RPCs a second one local source may cause (0: unlimited).
    pub arp_rpc_rate: Option<u32>,
    /// Broadcast and multicast frames a second flooded to the peers (0: unlimited).
    pub broadcast_rate: Option<u32>,
    /// The group whose members may ask the agent (`status`) without root (default `ipop`,
    /// when it exists).
    pub control_group: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9464`; off if unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where to serve the topology page (`GET /`), e.g. `127.0.0.1:8080`; off if unset.
    pub web_listen: Option<std::net::SocketAddr>,
    /// The log filter (tracing's EnvFilter syntax); `--log` and `IPOP_LOG` override it.
    pub log: Option<String>,
}

impl Settings {
    /// Parses a JSON config file's text. Unknown keys and wrong types are errors.
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid config: {e}"))
    }

    /// `self` with every key that `over` gives replaced by `over`'s value.
    pub fn overridden_by(self, over: Settings) -> Settings {
        // The TURN password and its file are one setting: an override of either replaces both.
        let (turn_password, turn_password_file) = if over.turn_password.is_some() || over.turn_password_file.is_some() {
            (over.turn_password, over.turn_password_file)
        } else {
            (self.turn_password, self.turn_password_file)
        };
        Settings {
            switchmode: over.switchmode.or(self.switchmode),
            icc: over.icc.or(self.icc),
            icc_port: over.icc_port.or(self.icc_port),
            bridge: over.bridge.or(self.bridge),
            tap: over.tap.or(self.tap),
            pin_dir: over.pin_dir.or(self.pin_dir),
            arp_max_age_secs: over.arp_max_age_secs.or(self.arp_max_age_secs),
            node_id: over.node_id.or(self.node_id),
            overlay: over.overlay.or(self.overlay),
            secret: over.secret.or(self.secret),
            rendezvous: over.rendezvous.or(self.rendezvous),
            xmpp: match (self.xmpp, over.xmpp) {
                (Some(file), Some(over)) => Some(file.overridden_by(over)),
                (file, over) => over.or(file),
            },
            stun: over.stun.or(self.stun),
            turn: over.turn.or(self.turn),
            turn_user: over.turn_user.or(self.turn_user),
            turn_password,
            turn_password_file,
            turn_ca_file: over.turn_ca_file.or(self.turn_ca_file),
            state_dir: over.state_dir.or(self.state_dir),
            rekey_after_secs: over.rekey_after_secs.or(self.rekey_after_secs),
            ca_public_key: over.ca_public_key.or(self.ca_public_key),
            certificate: over.certificate.or(self.certificate),
            revocation_list: over.revocation_list.or(self.revocation_list),
            arp_rpc_rate: over.arp_rpc_rate.or(self.arp_rpc_rate),
            broadcast_rate: over.broadcast_rate.or(self.broadcast_rate),
            control_group: over.control_group.or(self.control_group),
            metrics_listen: over.metrics_listen.or(self.metrics_listen),
            web_listen: over.web_listen.or(self.web_listen),
            log: over.log.or(self.log),
        }
    }

    /// The password files read (by `read`, e.g. `std::fs::read_to_string`): `turn_password_file`
    /// into `turn_password`, the `xmpp` one into its password. Giving a password and its file
    /// is an error.
    pub fn with_password_file(
        mut self,
        read: impl Fn(&std::path::Path) -> std::io::Result<String>,
    ) -> Result<Settings, String> {
        if let Some(file) = self.turn_password_file.take() {
            if self.turn_password.is_some() {
                return Err("turn_password and turn_password_file are both given: keep one".into());
            }
            self.turn_password = Some(one_line(&read, &file, "turn_password_file")?);
        }
        if let Some(x) = self.xmpp.as_mut()
            && let Some(file) = x.password_file.take()
        {
            if x.password.is_some() {
                return Err("xmpp password and password_file are both given: keep one".into());
            }
            x.password = Some(one_line(&read, &file, "xmpp password_file")?);
        }
        Ok(self)
    }

    /// Checks the settings together and fills in defaults.
    pub fn resolve(mut self) -> Result<AgentConfig, String> {
        let overlay = self.take_overlay()?;
        if let Some(mode) = self.switchmode
            && mode != 1
        {
            return Err(format!("switchmode {mode} is not supported: ipop only runs in switch mode (1)"));
        }
        if self.icc == Some(false) && self.icc_port.is_some() {
            return Err("icc_port is set but icc is false: drop one of them".into());
        }
        if self.icc_port == Some(0) {
            return Err("icc_port must be 1..=65535".into());
        }
        let bridge = self.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        let tap = self.tap.unwrap_or_else(|| DEFAULT_TAP.into());
        check_ifname("bridge", &bridge)?;
        check_ifname("tap", &tap)?;
        if bridge == tap {
            return Err(format!("bridge and tap are both {bridge:?}: the TAP is a port of the bridge"));
        }
        let pin_dir = match self.pin_dir {
            Some(dir) if !dir.is_absolute() => {
                return Err(format!("pin_dir {} must be an absolute path", dir.display()));
            }
            Some(dir) => dir,
            None => default_pin_dir(&bridge),
        };
        let max_age = self.arp_max_age_secs.unwrap_or(DEFAULT_ARP_MAX_AGE_SECS);
        let rekey_after = match self.rekey_after_secs {
            Some(0) => return Err("rekey_after_secs must be at least 1".into()),
            Some(secs) => Duration::from_secs(secs),
            None => REKEY_AFTER,
        };
        let control_group = self.control_group.unwrap_or_else(|| DEFAULT_CONTROL_GROUP.into());
        if let Some(log) = &self.log {
            tracing_subscriber::EnvFilter::try_new(log).map_err(|e| format!("log {log:?} is not a log filter: {e}"))?;
        }
        Ok(AgentConfig {
            control_group,
            metrics_listen: self.metrics_listen,
            web_listen: self.web_listen,
            log: self.log,
            rekey_after,
            bridge,
            tap,
            pin_dir,
            arp_max_age: Duration::from_secs(max_age),
            data_port: if self.icc == Some(false) { None } else { Some(self.icc_port.unwrap_or(0)) },
            overlay,
            limits: Limits {
                arp_per_source: self.arp_rpc_rate.map_or(Limits::default().arp_per_source, Rate::per_second),
                broadcast: self.broadcast_rate.map_or(Rate::UNLIMITED, Rate::per_second),
            },
        })
    }

    /// The overlay part, checked: where and how to meet peers (`None`: the agent runs alone,
    /// and then nothing of an overlay may be given).
    fn take_overlay(&mut self) -> Result<Option<OverlayConfig>, String> {
        let signaling = match (self.rendezvous.take(), self.xmpp.take()) {
            (Some(_), Some(_)) => return Err("rendezvous and xmpp: give one signaling service".into()),
            (Some(addr), None) => Some(SignalingConfig::Rendezvous(check_rendezvous(addr)?)),
            (None, Some(x)) => Some(SignalingConfig::Xmpp(x.resolve()?)),
            (None, None) => None,
        };
        match signaling {
            None => {
                let ice = self.stun.is_some() || self.turn.is_some() || self.turn_user.is_some();
                let turn_files = self.turn_password_file.is_some() || self.turn_ca_file.is_some();
                let ca = self.ca_public_key.is_some() || self.certificate.is_some() || self.revocation_list.is_some();
                if self.secret.is_some()
                    || ice
                    || self.turn_password.is_some()
                    || turn_files
                    || self.overlay.is_some()
                    || ca
                {
                    return Err("overlay, secret, stun and turn need a rendezvous (or xmpp) to join".into());
                }
                Ok(None)
            }
            Some(signaling) => {
                if self.turn_password_file.is_some() {
                    return Err("turn_password_file must be read before the settings are resolved".into());
                }
                let ice_urls =
                    ice_servers(self.stun.take(), self.turn.take(), self.turn_user.take(), self.turn_password.take())?;
                let tls = ice_urls.iter().any(|s| s.transport == Transport::Tls);
                if let Some(file) = self.turn_ca_file.as_ref().filter(|_| !tls) {
                    return Err(format!("turn_ca_file {} is set but no turn url is turns: (TLS)", file.display()));
                }
                let trust = trust(
                    self.secret.take(),
                    self.ca_public_key.take(),
                    self.certificate.take(),
                    self.revocation_list.take(),
                )?;
                let mut o = overlay_config(signaling, trust, self.node_id.take(), self.overlay.take(), ice_urls)?;
                o.turn_ca_file = self.turn_ca_file.take();
                o.state_dir = state_dir(self.state_dir.take(), &o.overlay)?;
                Ok(Some(o))
            }
        }
    }
}

/// How members prove they belong: the shared secret, or certificates of the overlay's CA.
#[derive(Clone, PartialEq)]
pub enum Trust {
    Secret(String),
    Ca { ca: ipop_cert::PublicKey, certificate: PathBuf, revocation_list: Option<PathBuf> },
}

fn trust(
    secret: Option<String>,
    ca: Option<String>,
    certificate: Option<PathBuf>,
    revocation_list: Option<PathBuf>,
) -> Result<Trust, String> {
    match (secret, ca) {
        (Some(_), Some(_)) => Err("secret and ca_public_key: an overlay admits by one of them, give one".into()),
        (Some(secret), None) => {
            if certificate.is_some() || revocation_list.is_some() {
                return Err("certificate and revocation_list need ca_public_key".into());
            }
            if secret.len() < 8 {
                return Err("the secret must be at least 8 characters".into());
            }
            Ok(Trust::Secret(secret))
        }
        (None, Some(ca)) => {
            let ca = ca.parse().map_err(|e| format!("ca_public_key {ca:?}: {e}"))?;
            let certificate = certificate.ok_or("ca_public_key needs this node's certificate (certificate)")?;
            Ok(Trust::Ca { ca, certificate, revocation_list })
        }
        (None, None) => Err("an overlay needs its secret, or ca_public_key and a certificate".into()),
    }
}

/// A rendezvous address: `host:port`, an IPv6 address in brackets (`[fd00::1]:7000`).
fn check_rendezvous(addr: String) -> Result<String, String> {
    let Some((host, port)) = addr.rsplit_once(':').filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) else {
        return Err(format!("rendezvous {addr:?} must be host:port"));
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !(bracketed && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()) {
        return Err(format!("rendezvous {addr:?}: an IPv6 address goes in brackets, as in [fd00::1]:{port}"));
    }
    Ok(addr)
}

/// A password file's one line, its line break dropped; empty is an error.
fn one_line(
    read: impl FnOnce(&std::path::Path) -> std::io::Result<String>,
    file: &std::path::Path,
    key: &str,
) -> Result<String, String> {
    let text = read(file).map_err(|e| format!("{key} {}: {e}", file.display()))?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(format!("{key} {} is empty", file.display()));
    }
    Ok(line.to_owned())
}

/// The overlay part of the settings, checked: what joining needs.
fn overlay_config(
    signaling: SignalingConfig,
    trust: Trust,
    node_id: Option<String>,
    overlay: Option<String>,
    ice_urls: Vec<IceServer>,
) -> Result<OverlayConfig, String> {
    let node_id = match node_id {
        Some(id) => id,
        None => hostname().ok_or("no node_id given and the host name is unusable")?,
    };
    check_node_id(&node_id)?;
    let name = overlay.unwrap_or_else(|| DEFAULT_OVERLAY.into());
    check_overlay(&name)?;
    let state_dir = default_state_dir(&name);
    Ok(OverlayConfig { node_id, overlay: name, trust, signaling, ice_urls, turn_ca_file: None, state_dir })
}

/// Overlay names: as node ids (they name the state directory), and neither `.` nor `..`.
pub fn check_overlay(name: &str) -> Result<(), String> {
    let fine = check_node_id(name).is_ok() && name != "." && name != "..";
    if fine { Ok(()) } else { Err(format!("overlay {name:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")) }
}

/// The state directory: as given (absolute), else `/var/lib/ipop/<overlay>`.
pub fn state_dir(given: Option<PathBuf>, overlay: &str) -> Result<PathBuf, String> {
    match given {
        Some(dir) if !dir.is_absolute() => Err(format!("state_dir {} must be an absolute path", dir.display())),
        Some(dir) => Ok(dir),
        None => Ok(default_state_dir(overlay)),
    }
}

/// Every STUN and TURN url, parsed and checked now: a bad one names its key and url.
fn ice_servers(
    stun: Option<Vec<String>>,
    turn: Option<Vec<String>>,
    turn_user: Option<String>,
    turn_password: Option<String>,
) -> Result<Vec<IceServer>, String> {
    let fallback = match (turn_user.as_deref(), turn_password.as_deref()) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => return Err("turn_user and turn_password go together".into()),
    };
    let mut out = Vec::new();
    for url in stun.unwrap_or_default() {
        out.push(IceServer::parse("stun", &url, None)?);
    }
    for url in turn.unwrap_or_default() {
        out.push(IceServer::parse("turn", &url, fallback)?);
    }
    Ok(out)
}

/// A checked, complete configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub bridge: String,
    pub tap: String,
    pub pin_dir: PathBuf,
    pub arp_max_age: Duration,
    /// The data socket's UDP port (`icc_port`; 0: any free port), or `None` (`icc: false`):
    /// no data socket, data goes over the ICE connections.
    pub data_port: Option<u16>,
    /// Where and how to meet peers; `None`: this agent runs alone.
    pub overlay: Option<OverlayConfig>,
    pub limits: Limits,
    /// How often links renew their session keys.
    pub rekey_after: Duration,
    /// Whose members may use the control socket (besides root), if the group exists.
    pub control_group: String,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where the topology page is served, if anywhere (may be `metrics_listen`).
    pub web_listen: Option<std::net::SocketAddr>,
    /// The log filter the config asks for (checked); `None`: the default.
    pub log: Option<String>,
}

/// How the agent joins an overlay.
#[derive(Clone, PartialEq)]
pub struct OverlayConfig {
    pub node_id: String,
    pub overlay: String,
    pub trust: Trust,
    pub signaling: SignalingConfig,
    pub ice_urls: Vec<IceServer>,
    /// Roots for `turns:` servers beside the system's.
    pub turn_ca_file: Option<PathBuf>,
    /// Where the node's key lives.
    pub state_dir: PathBuf,
}

impl std::fmt::Debug for OverlayConfig {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayConfig")
            .field("node_id", &self.node_id)
            .field("overlay", &self.overlay)
            .field("signaling", &self.signaling)
            .field("ice_urls", &self.ice_urls)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Where agents meet: the rendezvous (`host:port`), or an XMPP server's room.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalingConfig {
    Rendezvous(String),
    Xmpp(XmppConfig),
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    check_node_id(&name).ok().map(|_| name)
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_config_is_accepted() {
        let s = Settings::from_json(r#"{"switchmode": 1, "icc": true, "icc_port": 30000}"#).unwrap();
        let cfg = s.resolve().unwrap();
        assert_eq!(cfg.bridge, "lxcbr0");
        assert_eq!(cfg.tap, "ipop");
        assert_eq!(cfg.pin_dir, PathBuf::from("/sys/fs/bpf/ipop/lxcbr0"));
        assert_eq!(cfg.data_port, Some(30000));
        assert_eq!(cfg.arp_max_age, Duration::from_secs(300));
    }

    #[test]
    fn icc_chooses_the_data_socket() {
        let resolve = |json: &str| Settings::from_json(json).unwrap().resolve().unwrap().data_port;
        assert_eq!(resolve("{}"), Some(0), "any free port by default");
        assert_eq!(resolve(r#"{"icc": false}"#), None, "no data socket: data over ICE");
    }

    #[test]
    fn rates_default_to_limited_arp_and_unlimited_broadcast() {
        let cfg = Settings::default().resolve().unwrap();
        assert_eq!(cfg.limits.arp_per_source, Rate::per_second(10_000));
        assert_eq!(cfg.limits.broadcast, Rate::UNLIMITED);
        let cfg = Settings::from_json(r#"{"arp_rpc_rate": 0, "broadcast_rate": 500}"#).unwrap().resolve().unwrap();
        assert_eq!(cfg.limits.arp_per_source, Rate::UNLIMITED);
        assert_eq!(cfg.limits.broadcast, Rate::per_second(500));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = Settings::from_json(r#"{"bridge": "br0", "tap": "ipop0", "arp_max_age_secs": 60}"#).unwrap();
        let cli = Settings { bridge: Some("lxcbr0".into()), ..Default::default() };
        let cfg = file.overridden_by(cli).resolve().unwrap();
        assert_eq!(cfg.bridge, "lxcbr0");
        assert_eq!(cfg.tap, "ipop0");
        assert_eq!(cfg.pin_dir, PathBuf::from("/sys/fs/bpf/ipop/lxcbr0"), "pin dir follows the bridge");
        assert_eq!(cfg.arp_max_age, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors() {
        let e = Settings::from_json(r#"{"bridge": "br0", "brige": "x"}"#).unwrap_err();
        assert!(e.contains("unknown field `brige`"), "{e}");
        let e = Settings::from_json(r#"{"icc_port": "30000"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        assert!(Settings::from_json(r#"{"icc_port": 70000}"#).is_err());
        assert!(Settings::from_json("{").is_err());
        assert!(Settings::from_json("[]").is_err());
    }

    #[test]
    fn an_overlay_needs_a_rendezvous_and_a_secret() {
        let s = Settings::from_json(
            r#"{"rendezvous": "192.0.2.1:7000", "secret": "long enough", "node_id": "a", "stun": ["stun:192.0.2.2:3478"]}"#,
        )
        .unwrap();
        let o = s.resolve().unwrap().overlay.unwrap();
        assert_eq!((o.node_id.as_str(), o.overlay.as_str()), ("a", "ipop"));
        assert_eq!(o.signaling, SignalingConfig::Rendezvous("192.0.2.1:7000".into()));
        assert_eq!(o.ice_urls.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(), ["stun:192.0.2.2:3478"]);
        assert!(!format!("{o:?}").contains("long enough"), "the secret is not logged");
        assert_eq!(Settings::default().resolve().unwrap().overlay, None, "alone without a rendezvous");
        let v6 = r#"{"rendezvous": "[fd00::1]:7000", "secret": "long enough", "node_id": "a", "stun": ["stun:[fd00::2]:3478"]}"#;
        let o = Settings::from_json(v6).unwrap().resolve().unwrap().overlay.unwrap();
        assert_eq!(o.signaling, SignalingConfig::Rendezvous("[fd00::1]:7000".into()), "an IPv6 underlay");
        assert_eq!(o.ice_urls[0].host, "fd00::2");
        for bad in [
            r#"{"secret": "long enough"}"#,
            r#"{"rendezvous": "192.0.2.1:7000", "node_id": "a"}"#,
            r#"{"rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "short"}"#,
            r#"{"rendezvous": "192.0.2.1", "node_id": "a", "secret": "long enough"}"#,
            r#"{"rendezvous": "fd00::1:7000", "node_id": "a", "secret": "long enough"}"#,
            r#"{"rendezvous": "[fd00::zz]:7000", "node_id": "a", "secret": "long enough"}"#,
            r#"{"rendezvous": "192.0.2.1:7000", "node_id": "a b", "secret": "long enough"}"#,
            r#"{"rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "long enough", "stun": ["turn:x:1"]}"#,
            r#"{"rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "long enough", "turn": ["stun:x:1"]}"#,
        ] {
            assert!(Settings::from_json(bad).unwrap().resolve().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn turn_urls_are_checked_when_read_and_take_credentials_apart_or_inline() {
        let base = r#""rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "long enough""#;
        let resolve = |extra: &str| Settings::from_json(&format!("{{{base}, {extra}}}")).unwrap().resolve();
        let o = resolve(r#""turn": ["turn:203.0.113.1:3478"], "turn_user": "u", "turn_password": "pw""#)
            .unwrap()
            .overlay
            .unwrap();
        assert_eq!((o.ice_urls[0].username.as_str(), o.ice_urls[0].password.as_str()), ("u", "pw"));
        assert!(!format!("{o:?}").contains("pw"), "the TURN password is not logged");
        let err = resolve(r#""turn": ["turn://u:p@203.0.113.1:3478"]"#).unwrap_err();
        assert!(err.contains("turn url") && err.contains("203.0.113.1"), "{err}");
        let err = resolve(r#""turn": ["turn:203.0.113.1"], "turn_user": "u""#).unwrap_err();
        assert!(err.contains("go together"), "{err}");
        let err = Settings::from_json(r#"{"turn_user": "u", "turn_password": "p"}"#).unwrap().resolve().unwrap_err();
        assert!(err.contains("need a rendezvous"), "{err}");
    }

    #[test]
    fn xmpp_replaces_the_rendezvous_and_reads_its_password_file() {
        let xmpp = r#""xmpp": {"jid": "a@xmpp.test", "room": "lab@conference.xmpp.test", "password_file": "/pw"}"#;
        let settings = Settings::from_json(&format!(r#"{{"node_id": "a", "secret": "long enough", {xmpp}}}"#)).unwrap();
        let read = settings.clone().with_password_file(|p| {
            assert_eq!(p, std::path::Path::new("/pw"));
            Ok("s3cret\n".into())
        });
        let o = read.unwrap().resolve().unwrap().overlay.unwrap();
        let SignalingConfig::Xmpp(x) = o.signaling else { panic!("xmpp: {:?}", o.signaling) };
        assert_eq!((x.jid.to_string(), x.password.as_str()), ("a@xmpp.test".into(), "s3cret"));
        let err = settings.clone().with_password_file(|_| Ok("\n".into())).unwrap_err();
        assert!(err.contains("xmpp password_file /pw is empty"), "{err}");
        let both = Settings { rendezvous: Some("192.0.2.1:7000".into()), ..settings.clone() };
        let err = both.with_password_file(|_| Ok("s".into())).unwrap().resolve().unwrap_err();
        assert!(err.contains("give one signaling service"), "{err}");
        // The command line's --xmpp-room overrides the file's, and keeps the file's other keys.
        let cli = Settings {
            xmpp: Some(XmppSettings { room: Some("other@conference.xmpp.test".into()), ..Default::default() }),
            ..Default::default()
        };
        let over = settings.overridden_by(cli).xmpp.unwrap();
        assert_eq!(
            (over.room.as_deref(), over.jid.as_deref()),
            (Some("other@conference.xmpp.test"), Some("a@xmpp.test"))
        );
    }

    #[test]
    fn a_turn_password_file_gives_the_password_and_only_one_of_the_two_may_be_given() {
        let base = r#""rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "long enough", "turn_user": "u""#;
        let settings = |extra: &str| Settings::from_json(&format!("{{{base}, {extra}}}")).unwrap();
        let with_file = settings(r#""turn": ["turn:203.0.113.1"], "turn_password_file": "/etc/ipop/turn""#);
        let read = with_file.clone().with_password_file(|p| {
            assert_eq!(p, std::path::Path::new("/etc/ipop/turn"));
            Ok("from the file\n".into())
        });
        let o = read.unwrap().resolve().unwrap().overlay.unwrap();
        assert_eq!(o.ice_urls[0].password, "from the file", "its line break dropped");
        let err = with_file.clone().with_password_file(|_| Err(std::io::ErrorKind::NotFound.into())).unwrap_err();
        assert!(err.starts_with("turn_password_file /etc/ipop/turn: "), "{err}");
        let err = with_file.clone().with_password_file(|_| Ok("\n".into())).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let both = settings(r#""turn_password": "p", "turn_password_file": "/etc/ipop/turn""#);
        assert!(both.with_password_file(|_| Ok("q".into())).unwrap_err().contains("keep one"));
        assert!(with_file.clone().resolve().is_err(), "an unread file is never taken for no password");
        // The command line's password (or IPOP_TURN_PASSWORD) overrides the config file's password file, and back.
        let cli = Settings { turn_password: Some("from the cli".into()), ..Default::default() };
        let over = with_file.clone().overridden_by(cli).with_password_file(|_| unreachable!("overridden"));
        assert_eq!(over.unwrap().turn_password.as_deref(), Some("from the cli"));
        let cli = Settings { turn_password_file: Some("/run/turn".into()), ..Default::default() };
        let over = settings(r#""turn_password": "p""#).overridden_by(cli).with_password_file(|_| Ok("q".into()));
        assert_eq!(over.unwrap().turn_password.as_deref(), Some("q"));
    }

    #[test]
    fn turns_urls_take_a_ca_file_and_a_ca_file_needs_one() {
        let base = r#""rendezvous": "192.0.2.1:7000", "node_id": "a", "secret": "long enough""#;
        let resolve = |extra: &str| Settings::from_json(&format!("{{{base}, {extra}}}")).unwrap().resolve();
        let o = resolve(r#""turn": ["turns:u:p@turn.example.org"], "turn_ca_file": "/etc/ipop/ca.pem""#);
        let o = o.unwrap().overlay.unwrap();
        assert_eq!(o.turn_ca_file.as_deref(), Some(std::path::Path::new("/etc/ipop/ca.pem")));
        assert_eq!((o.ice_urls[0].transport, o.ice_urls[0].port), (Transport::Tls, 5349));
        let err = resolve(r#""turn": ["turn:u:p@h?transport=tcp"], "turn_ca_file": "/ca.pem""#).unwrap_err();
        assert!(err.contains("turn_ca_file /ca.pem is set but no turn url is turns:"), "{err}");
    }

    #[test]
    fn an_overlay_admits_by_its_secret_or_by_its_ca_never_both() {
        let ca = ipop_cert::NodeKey::generate().public().to_string();
        let base = r#""rendezvous": "192.0.2.1:7000", "node_id": "a""#;
        let resolve = |extra: String| Settings::from_json(&format!("{{{base}, {extra}}}")).unwrap().resolve();
        let o = resolve(format!(r#""ca_public_key": "{ca}", "certificate": "/etc/ipop/a.cert""#)).unwrap();
        assert!(matches!(o.overlay.unwrap().trust, Trust::Ca { revocation_list: None, .. }));
        for (extra, why) in [
            (format!(r#""ca_public_key": "{ca}", "certificate": "/c", "secret": "long enough""#), "give one"),
            (format!(r#""ca_public_key": "{ca}""#), "needs this node's certificate"),
            (r#""ca_public_key": "00", "certificate": "/c""#.to_owned(), "ca_public_key \"00\""),
            (r#""secret": "long enough", "certificate": "/c""#.to_owned(), "need ca_public_key"),
            ("\"overlay\": \"lab\"".to_owned(), "secret, or ca_public_key"),
        ] {
            let err = resolve(extra.clone()).unwrap_err();
            assert!(err.contains(why), "{extra}: {err}");
        }
    }

    #[test]
    fn contradictions_are_errors() {
        let cases = [
            r#"{"switchmode": 0}"#,
            r#"{"icc": false, "icc_port": 30000}"#,
            r#"{"icc_port": 0}"#,
            r#"{"bridge": "br0", "tap": "br0"}"#,
            r#"{"bridge": "a/b"}"#,
            r#"{"tap": "averyveryverylongname"}"#,
            r#"{"tap": ""}"#,
            r#"{"pin_dir": "relative/dir"}"#,
        ];
        for case in cases {
            let s = Settings::from_json(case).unwrap();
            assert!(s.resolve().is_err(), "{case} accepted");
        }
    }
}
