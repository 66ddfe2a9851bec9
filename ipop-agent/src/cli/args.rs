//! The command line's arguments (clap).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

use crate::{
    config::{self, Settings},
    core::addr::{Mac, parse_host_addr, parse_host_mac},
    kernel::{datapath::default_pin_dir, maps::Pinned},
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// JSON config file; command-line options override its keys.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Bridge to join [default: lxcbr0].
    #[arg(long)]
    pub bridge: Option<String>,
    /// Name of the TAP device to create [default: ipop].
    #[arg(long)]
    pub tap: Option<String>,
    /// Directory on bpffs for the maps [default: /sys/fs/bpf/ipop/<bridge>].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Seconds after which learned ARP entries are no longer answered (0: never) [default: 300].
    #[arg(long)]
    pub arp_max_age_secs: Option<u64>,
    /// Switch mode (the seed's key; only 1 is supported).
    #[arg(long)]
    pub switchmode: Option<u8>,
    /// Inter-controller communication (the seed's key).
    #[arg(long)]
    pub icc: Option<bool>,
    /// Inter-controller communication port (the seed's key).
    #[arg(long)]
    pub icc_port: Option<u16>,
    /// This agent's name in the overlay [default: the host name].
    #[arg(long)]
    pub node_id: Option<String>,
    /// Overlay to join [default: ipop].
    #[arg(long)]
    pub overlay: Option<String>,
    /// The overlay's shared secret (prefer the config file or IPOP_SECRET: command lines are visible to all users).
    #[arg(long, env = "IPOP_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The rendezvous service, host:port; without it the agent runs alone.
    #[arg(long)]
    pub rendezvous: Option<String>,
    /// STUN server url, e.g. stun:192.0.2.1:3478 (repeatable).
    #[arg(long)]
    pub stun: Vec<String>,
    /// TURN server url (repeatable).
    #[arg(long)]
    pub turn: Vec<String>,
    /// TURN user name, for turn urls without credentials.
    #[arg(long)]
    pub turn_user: Option<String>,
    /// TURN password, for turn urls without credentials (prefer the config file or IPOP_TURN_PASSWORD).
    #[arg(long, env = "IPOP_TURN_PASSWORD", hide_env_values = true)]
    pub turn_password: Option<String>,
    /// A file holding the TURN password (instead of --turn-password).
    #[arg(long)]
    pub turn_password_file: Option<PathBuf>,
    /// PEM certificates that a turns: server's certificate may chain to, beside the system's.
    #[arg(long)]
    pub turn_ca_file: Option<PathBuf>,
    /// Where the node's key is kept [default: /var/lib/ipop/<overlay>].
    #[arg(long, env = "IPOP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The overlay CA's public key (hex, the CA's ca.pub): admission and peers by certificate.
    #[arg(long)]
    pub ca_public_key: Option<String>,
    /// This node's certificate file (with --ca-public-key).
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// The CA's revocation list file.
    #[arg(long)]
    pub revocation_list: Option<PathBuf>,
    /// Seconds between rekeys (tests only) [default: 120].
    #[arg(long, hide = true)]
    pub rekey_after_secs: Option<u64>,
    /// ARP RPCs a second one local source may cause (0: unlimited) [default: 10000].
    #[arg(long)]
    pub arp_rpc_rate: Option<u32>,
    /// Broadcast/multicast frames a second flooded to peers (0: unlimited) [default: 0].
    #[arg(long)]
    pub broadcast_rate: Option<u32>,
    /// The group whose members may ask this agent (`status`) without root [default: ipop].
    #[arg(long)]
    pub control_group: Option<String>,
    /// Serve Prometheus metrics on this address (GET /metrics), e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the live topology page on this address (GET /), e.g. 127.0.0.1:8080.
    #[arg(long)]
    pub web_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub xmpp: XmppArgs,
}

/// Signaling through an XMPP server (the config's `xmpp` object), instead of `--rendezvous`.
#[derive(Args, Debug)]
pub struct XmppArgs {
    /// This agent's XMPP account, user@domain.
    #[arg(long)]
    pub xmpp_jid: Option<String>,
    /// Its password (prefer the config file, IPOP_XMPP_PASSWORD or --xmpp-password-file).
    #[arg(long, env = "IPOP_XMPP_PASSWORD", hide_env_values = true)]
    pub xmpp_password: Option<String>,
    /// A file holding the XMPP password.
    #[arg(long)]
    pub xmpp_password_file: Option<PathBuf>,
    /// The overlay's members-only room, name@conference.domain.
    #[arg(long)]
    pub xmpp_room: Option<String>,
    /// The XMPP server, host:port [default: DNS SRV of the JID's domain].
    #[arg(long)]
    pub xmpp_server: Option<String>,
    /// PEM certificates the XMPP server's certificate may chain to, beside the system's.
    #[arg(long)]
    pub xmpp_ca_file: Option<PathBuf>,
    /// No TLS to the XMPP server: for labs only (logged as a warning).
    #[arg(long)]
    pub xmpp_plaintext: bool,
}

impl XmppArgs {
    /// The `xmpp` settings these give, if any.
    pub fn settings(self) -> Option<config::XmppSettings> {
        let s = config::XmppSettings {
            jid: self.xmpp_jid,
            password: self.xmpp_password,
            password_file: self.xmpp_password_file,
            room: self.xmpp_room,
            server: self.xmpp_server,
            ca_file: self.xmpp_ca_file,
            plaintext: self.xmpp_plaintext.then_some(true),
        };
        (!s.is_empty()).then_some(s)
    }
}

#[derive(Args, Debug)]
pub struct RendezvousArgs {
    /// Address to listen on, e.g. 0.0.0.0:7000.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// The overlay it serves.
    #[arg(long, default_value = config::DEFAULT_OVERLAY)]
    pub overlay: String,
    /// The overlay's shared secret: members must prove they hold it.
    #[arg(long, env = "IPOP_SECRET", hide_env_values = true, required_unless_present = "ca_public_key")]
    pub secret: Option<String>,
    /// Instead of a secret: admit by certificate of the CA with this public key (`ca.pub`).
    #[arg(long, conflicts_with = "secret")]
    pub ca_public_key: Option<ipop_cert::PublicKey>,
    /// The CA's revocation list (with --ca-public-key).
    #[arg(long, requires = "ca_public_key")]
    pub revocation_list: Option<PathBuf>,
}

/// Which running agent: by bridge (default pin directory), by pin directory, or by the config
/// file it was started with. Global: they may follow a subcommand (`arp list --pin-dir D`).
#[derive(Args, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Bridge of the agent [default: lxcbr0].
    #[arg(long, global = true)]
    pub bridge: Option<String>,
    /// Pin directory of the agent (as given to `run --pin-dir`).
    #[arg(long, global = true)]
    pub pin_dir: Option<PathBuf>,
    /// The agent's config file: its `pin_dir`, else its `bridge`, names the agent.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

impl Target {
    /// The pin directory of the agent meant: `--pin-dir`, else `--bridge`'s default one, else
    /// the config file's (`pin_dir`, else `bridge`), else lxcbr0's.
    pub fn pin_dir(&self) -> Result<PathBuf> {
        if self.bridge.is_some() && self.pin_dir.is_some() {
            bail!("--bridge and --pin-dir both name an agent: give one");
        }
        if let Some(dir) = &self.pin_dir {
            return Ok(dir.clone());
        }
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => Settings::default(),
        };
        if self.bridge.is_none()
            && let Some(dir) = file.pin_dir
        {
            return Ok(dir);
        }
        let bridge = self.bridge.clone().or(file.bridge).unwrap_or_else(|| config::DEFAULT_BRIDGE.to_owned());
        config::check_ifname("bridge", &bridge).map_err(anyhow::Error::msg)?;
        Ok(default_pin_dir(&bridge))
    }

    /// The running agent's pinned maps.
    pub fn pinned(&self) -> Result<Pinned> {
        Ok(Pinned::new(self.pin_dir()?))
    }
}

/// Whose node key: a state directory, or the one an agent's config or overlay implies.
#[derive(Args, Debug, Default, PartialEq, Eq)]
pub struct KeyTarget {
    /// The state directory [default: the config's `state_dir`, else /var/lib/ipop/<overlay>].
    #[arg(long, global = true, env = "IPOP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The overlay [default: the config's, else ipop].
    #[arg(long, global = true)]
    pub overlay: Option<String>,
    /// The agent's config file.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
}

impl KeyTarget {
    /// `--state-dir`, else the config's `state_dir`, else the overlay's default one.
    pub fn state_dir(&self) -> Result<PathBuf> {
        let file = match &self.config {
            Some(path) => read_config(path)?,
            None => Settings::default(),
        };
        let overlay = self.overlay.clone().or(file.overlay).unwrap_or_else(|| config::DEFAULT_OVERLAY.into());
        config::check_overlay(&overlay).map_err(anyhow::Error::msg)?;
        config::state_dir(self.state_dir.clone().or(file.state_dir), &overlay).map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum KeyCommand {
    /// Print this node's public key (made, and kept in the state directory, if there is none).
    Show,
}

/// Reads and parses a config file.
pub fn read_config(path: &Path) -> Result<Settings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    Settings::from_json(&text).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())
}

/// `arp` and `nd`: the same commands on `arp_table` (IPv4) and `nd_table` (IPv6).
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum TableCommand {
    /// List the entries.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a static entry: the kernel answers requests (solicitations) for IP with MAC.
    Add {
        #[arg(value_parser = parse_host_addr)]
        ip: std::net::IpAddr,
        #[arg(value_parser = parse_host_mac)]
        mac: Mac,
    },
    /// Remove the entry for IP.
    Del {
        #[arg(value_parser = parse_host_addr)]
        ip: std::net::IpAddr,
    },
}
