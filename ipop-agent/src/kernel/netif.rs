//! The bridge the agent joins, looked up and changed over rtnetlink (the TAP itself is in
//! `tap`).

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkUnspec,
    packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};

/// What the agent needs to know about a network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "tun", ...; `None` for physical devices.
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: Option<u32>,
    /// Index of the bridge (or other master) this device is a port of.
    pub controller: Option<u32>,
    /// The device's Ethernet address.
    pub mac: Option<[u8; 6]>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            mtu: None,
            controller: None,
            mac: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
                LinkAttribute::Controller(index) => link.controller = Some(*index),
                LinkAttribute::Address(a) => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(match kind {
                                InfoKind::Bridge => "bridge".to_owned(),
                                other => other.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A route-netlink connection in the agent's network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the connection; its reader runs as a task on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a route netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The device called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(anyhow!(e)).with_context(|| format!("looking up interface {name}")),
        }
    }

    /// The bridge called `name`, or a clear error if it is missing or not a bridge.
    pub async fn bridge(&self, name: &str) -> Result<Link> {
        let Some(link) = self.link(name).await? else {
            bail!(
                "bridge {name} not found: create it (`ip link add {name} type bridge`) or name another with --bridge"
            );
        };
        if link.kind.as_deref() != Some("bridge") {
            bail!(
                "{name} is not a bridge (it is a {} device): --bridge must name a Linux bridge",
                link.kind.as_deref().unwrap_or("physical")
            );
        }
        Ok(link)
    }

    /// The IPv4 addresses of the device with index `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<std::net::IpAddr>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await.map_err(|e| anyhow!(e)).context("listing addresses")? {
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    out.push(ip);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The MACs in bridge `bridge`'s forwarding table, on any of its ports (the TAP too: a
    /// local host's MAC is never written there, so finding it there is no departure).
    pub async fn bridge_macs(&self, bridge: u32) -> Result<std::collections::HashSet<[u8; 6]>> {
        use rtnetlink::packet_route::{AddressFamily, neighbour::NeighbourAttribute};
        let mut fdb = self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        let mut macs = std::collections::HashSet::new();
        while let Some(msg) =
            fdb.try_next().await.map_err(|e| anyhow!(e)).context("reading the bridge's forwarding table")?
        {
            let on_bridge =
                msg.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == bridge));
            for a in &msg.attributes {
                if let (true, NeighbourAttribute::LinkLayerAddress(m)) = (on_bridge, a)
                    && let Ok(mac) = <[u8; 6]>::try_from(&m[..])
                {
                    macs.insert(mac);
                }
            }
        }
        Ok(macs)
    }

    /// Makes `port` a port of `bridge` and brings it up.
    pub async fn join_bridge(&self, port: u32, bridge: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(port).controller(bridge).up().build();
        self.handle.link().set(msg).execute().await.map_err(|e| anyhow!(e)).context("adding the TAP to the bridge")
    }

    /// Sets the MAC of device `index`; on a bridge this also fixes it (no longer the lowest of
    /// its ports').
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).address(mac.to_vec()).build();
        self.handle.link().set(msg).execute().await.map_err(|e| anyhow!(e)).context("setting a MAC address")
    }
}
