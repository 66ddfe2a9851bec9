//! Setting the agent up, step by step: the TAP on the bridge with the programs attached, the
//! switch with the bridge's own addresses, the entries a crashed predecessor left, and the
//! overlay (signaling, the data socket, the peers). And the check, every tick, that the
//! devices are still there.

use std::{io, net::IpAddr, sync::Arc};

use anyhow::{Context as _, Result, bail};
use ipop_cert::{NodeKey, RevocationList};
use ipop_common::maps::{self as m, ArpEntry};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{
    config::{AgentConfig, OverlayConfig, SignalingConfig, Trust},
    core::{
        addr::Mac,
        digest::hex,
        switch::{Orphan, Switch},
    },
    kernel::{
        datapath::Datapath,
        netif::{Link, Netlink},
        tables::Neighbours,
        tap::Tap,
    },
    link::{
        event::LinkEvent,
        ice::IceConfig,
        params::{DataSocket, IceServers, LinkShared},
        peers::{LinkTemplate, Peers},
        receive::Reader,
        session::{self, Identity},
        underlay::Underlay,
    },
    ops::{
        control::{ControlSocket, Query},
        http::{HttpServer, Routes},
        state,
    },
    signaling::{
        self, Backend, Member, SignalEvent,
        admission::{Certified, Proof, Secret, unix_now},
        xmpp::Xmpp,
    },
};

/// Refuses a TAP name that is taken: another agent may own it.
pub async fn check_tap_free(nl: &Netlink, cfg: &AgentConfig) -> Result<()> {
    if let Some(existing) = nl.link(&cfg.tap).await? {
        bail!(
            "interface {} already exists (a {} device): another agent may own it; choose another name with --tap",
            cfg.tap,
            existing.kind.as_deref().unwrap_or("physical")
        );
    }
    Ok(())
}

/// Creates the TAP, makes it a port of the bridge, configures and attaches the programs.
pub async fn tap(nl: &Netlink, cfg: &AgentConfig, bridge: &Link, datapath: &mut Datapath) -> Result<(Tap, Link)> {
    let tap = Tap::create(&cfg.tap)?;
    let tap_link = nl.link(tap.name()).await?.context("the TAP vanished right after it was created")?;
    // A bridge without a fixed address takes the lowest of its ports' (often the TAP's random
    // one), and the containers' gateway MAC would change under them: fix the current one
    // first, as lxc-net does.
    if let Some(mac) = bridge.mac {
        nl.set_mac(bridge.index, mac).await.with_context(|| format!("fixing the MAC of bridge {}", cfg.bridge))?;
        debug!(bridge = %cfg.bridge, mac = %Mac(mac), "bridge MAC fixed before adding the TAP");
    }
    nl.join_bridge(tap_link.index, bridge.index).await?;
    datapath.configure(m::Config {
        bridge_ifindex: bridge.index,
        tap_ifindex: tap_link.index,
        max_age_ns: cfg.arp_max_age.as_nanos() as u64,
        flags: m::CONFIG_ANSWER,
        _reserved: 0,
    })?;
    datapath.attach(&cfg.bridge, tap.name())?;
    Ok((tap, tap_link))
}

/// The switch, with the bridge's own addresses as permanent local hosts.
pub async fn switch(nl: &Netlink, cfg: &AgentConfig, bridge: &Link) -> Result<Switch> {
    let mut switch = Switch::new(cfg.arp_max_age.as_nanos() as u64).with_limits(cfg.limits);
    if let Some(mac) = bridge.mac {
        for ip in nl.addresses(bridge.index).await? {
            switch.add_local_address(ip, Mac(mac));
        }
    }
    Ok(switch)
}

/// The learned entries a previous agent left in the taken-back `arp_table`, to restore in
/// the switch. Without an overlay no peer can vouch for them again: they are dropped.
pub fn take_learned(tables: &mut Neighbours, overlay: bool) -> Vec<(IpAddr, Orphan)> {
    let learned = tables.learned();
    if overlay {
        let orphan = |e: &ArpEntry| Orphan { mac: Mac(e.mac), tag: e.peer_tag, updated_ns: e.updated_ns };
        return learned.iter().map(|(ip, e)| (*ip, orphan(e))).collect();
    }
    for (ip, _) in &learned {
        let _ = tables.remove(*ip);
    }
    if !learned.is_empty() {
        info!(
            dropped = learned.len(),
            "learned neighbour entries of the previous agent dropped (no overlay to vouch for them)"
        );
    }
    Vec::new()
}

/// What joining the overlay takes that can fail before anything is made: the node's key from
/// the state directory, what proves this node belongs (with the CA: its own certificate,
/// checked now), and the STUN and TURN servers, with a stream relay for each TURN server over
/// TCP or TLS.
pub struct Joining {
    key: Arc<NodeKey>,
    /// The signaling service, with what proves this node belongs.
    backend: Backend,
    /// The links' pre-shared key (from the stretched secret, or the CA's key).
    psk: [u8; 32],
    /// With a CA: how members' certificates are checked.
    certified: Option<Certified>,
    ice: IceConfig,
}

pub fn joining(cfg: &AgentConfig) -> Result<Option<Joining>> {
    let Some(o) = &cfg.overlay else { return Ok(None) };
    let key = Arc::new(state::node_key(&o.state_dir).context("the node's key")?);
    let (proof, certified, psk) = trust(o, &key)?;
    let backend = backend(o, &key, proof)?;
    let ice = IceConfig::start(o.ice_urls.clone(), o.turn_ca_file.as_deref()).context("the turns: servers")?;
    Ok(Some(Joining { key, backend, psk, certified, ice }))
}

/// The signaling service of the config, announcing this node as `proof` proves it.
fn backend(o: &OverlayConfig, key: &NodeKey, proof: Proof) -> Result<Backend> {
    let public_key = hex(&key.public().x25519());
    Ok(match &o.signaling {
        SignalingConfig::Rendezvous(addr) => {
            let creds =
                signaling::Credentials { overlay: o.overlay.clone(), proof, node_id: o.node_id.clone(), public_key };
            Backend::Rendezvous { addr: addr.clone(), creds }
        }
        SignalingConfig::Xmpp(x) => {
            let certificate = match proof {
                Proof::Certificate { certificate, .. } => Some(certificate),
                Proof::Secret(_) => None,
            };
            let me = Member { node_id: o.node_id.clone(), public_key, certificate };
            Backend::Xmpp(Xmpp::new(x.clone(), me)?)
        }
    })
}

/// The proof, the peer check and the links' pre-shared key of the overlay's mode: the
/// secret, stretched (once: it takes a deliberate 7 MiB and some tens of milliseconds), or
/// the CA, whose key keys the PSK and whose certificate of this node must name this node and
/// its key, and be valid now.
fn trust(o: &OverlayConfig, key: &Arc<NodeKey>) -> Result<(Proof, Option<Certified>, [u8; 32])> {
    let (ca, certificate, revocation_list) = match &o.trust {
        Trust::Secret(secret) => {
            let secret = Secret::stretch(&o.overlay, secret);
            let psk = session::secret_psk(&o.overlay, &secret);
            return Ok((Proof::Secret(secret), None, psk));
        }
        Trust::Ca { ca, certificate, revocation_list } => (ca, certificate, revocation_list),
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let revoked = match revocation_list {
        Some(path) => {
            let list = RevocationList::from_text(&read(path)?).with_context(|| path.display().to_string())?;
            list.verify(ca).with_context(|| format!("revocation list {}", path.display()))?;
            Some(list)
        }
        None => None,
    };
    let certified = Certified { ca: *ca, revoked };
    let text = read(certificate)?;
    let mine = hex(&key.public().x25519());
    certified
        .member(&o.node_id, &mine, Some(&text), unix_now())
        .map_err(|e| anyhow::anyhow!("this node's certificate {}: {e}", certificate.display()))?;
    let psk = session::overlay_psk(&o.overlay, ca.as_bytes());
    Ok((Proof::Certificate { certificate: text, key: key.clone() }, Some(certified), psk))
}

/// The CA's revocation list file of this agent's config, read again whenever it changes (the
/// first read was at start, in `trust`).
pub struct RevocationFile {
    path: Option<std::path::PathBuf>,
    seen: Option<std::time::SystemTime>,
}

impl RevocationFile {
    pub fn new(cfg: &AgentConfig) -> Self {
        let path = match cfg.overlay.as_ref().map(|o| &o.trust) {
            Some(Trust::Ca { revocation_list: Some(path), .. }) => Some(path.clone()),
            _ => None,
        };
        let seen = path.as_ref().and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        RevocationFile { path, seen }
    }

    /// The file's text, if it changed since it was last read.
    pub fn changed(&mut self) -> Option<String> {
        let path = self.path.as_ref()?;
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if modified == self.seen {
            return None;
        }
        self.seen = modified;
        std::fs::read_to_string(path).ok()
    }
}

/// What joining the overlay makes: the peers, signaling's events, the data socket's reader.
pub struct Overlay {
    pub peers: Peers,
    pub signals: mpsc::Receiver<SignalEvent>,
    pub reader: Option<Reader>,
}

/// Joins the overlay, if there is one: signaling, the data socket and its reader, the peers.
pub fn overlay(cfg: &AgentConfig, joining: Option<Joining>, links: mpsc::Sender<LinkEvent>) -> Result<Option<Overlay>> {
    let (Some(o), Some(Joining { key, backend, psk, certified, ice })) = (&cfg.overlay, joining) else {
        return Ok(None);
    };
    let identity = Identity::from_key(&key);
    let service = backend.name();
    let (signaling, signals) = backend.connect();
    let (data, reader) = match cfg.data_port {
        None => (None, None),
        Some(port) => {
            let underlay = Arc::new(Underlay::bind(port)?);
            let (registrations, registered) = mpsc::unbounded_channel();
            let reader = Reader::new(underlay.clone(), registered);
            info!(port = underlay.port(), "data socket bound");
            (Some(DataSocket { underlay, registrations }), Some(reader))
        }
    };
    let shared = LinkShared {
        node_id: o.node_id.clone(),
        identity,
        psk,
        ice: IceServers::new(ice),
        exclude_ifaces: vec![cfg.bridge.clone(), cfg.tap.clone()],
        signaling,
        events: links,
        data,
        aead: session::Aead::local(),
        rekey_after: cfg.rekey_after,
    };
    info!(node_id = %o.node_id, overlay = %o.overlay, signaling = %service, "joining the overlay");
    Ok(Some(Overlay { peers: Peers::new(LinkTemplate { shared, certified }), signals, reader }))
}

/// The ways to ask the agent: its control socket and, if configured, its metrics endpoint
/// and topology page (one server when both have one address); their questions come out of
/// the receiver, for the loop to answer.
pub async fn operations(cfg: &AgentConfig) -> Result<(ControlSocket, Vec<HttpServer>, mpsc::Receiver<Query>)> {
    let (ask, queries) = mpsc::channel(16);
    let control = ControlSocket::bind(&cfg.pin_dir, &cfg.control_group, ask.clone())?;
    let mut servers = Vec::new();
    for listen in [cfg.metrics_listen, cfg.web_listen].into_iter().flatten() {
        if servers.iter().any(|s: &HttpServer| s.listen == listen) {
            continue;
        }
        let routes = Routes { metrics: cfg.metrics_listen == Some(listen), web: cfg.web_listen == Some(listen) };
        servers.push(HttpServer::start(listen, routes, ask.clone()).await?);
    }
    Ok((control, servers, queries))
}

/// Who this agent is, as `status` says first.
pub fn about(cfg: &AgentConfig) -> serde_json::Value {
    let o = cfg.overlay.as_ref();
    let signaling = o.map(|o| match &o.signaling {
        SignalingConfig::Rendezvous(addr) => format!("rendezvous {addr}"),
        SignalingConfig::Xmpp(x) => format!("xmpp {} in {}", x.jid, x.room),
    });
    serde_json::json!({
        "node_id": o.map(|o| &o.node_id),
        "overlay": o.map(|o| &o.overlay),
        "bridge": cfg.bridge,
        "tap": cfg.tap,
        "signaling_service": signaling,
        "settings": {
            "arp_rpc_rate": cfg.limits.arp_per_source.per_sec,
            "broadcast_rate": cfg.limits.broadcast.per_sec,
            "ice_servers": o.map(|o| o.ice_urls.iter().map(|s| s.url.clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "log": cfg.log.as_deref().unwrap_or(crate::config::DEFAULT_LOG),
        },
    })
}

/// Devices deleted under the agent: an error that says which (the TAP's fd does not always
/// wake the loop when its device goes).
pub async fn check_devices(nl: &Netlink, cfg: &AgentConfig, bridge: &Link, tap: &Link) -> Result<()> {
    match nl.link(&cfg.bridge).await? {
        Some(link) if link.index == bridge.index => {}
        _ => {
            return Err(io::Error::other("the bridge was deleted"))
                .with_context(|| format!("bridge {} is gone", cfg.bridge));
        }
    }
    match nl.link(&cfg.tap).await? {
        Some(link) if link.index == tap.index && link.controller == Some(bridge.index) => Ok(()),
        Some(_) => Err(io::Error::other("the TAP left the bridge"))
            .with_context(|| format!("TAP {} is no longer a port of {}", cfg.tap, cfg.bridge)),
        None => Err(io::Error::other("the TAP was deleted")).with_context(|| format!("TAP {} is gone", cfg.tap)),
    }
}
