//! What a link is given: its peer, and what every link of the agent shares.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{
    core::switch::PeerId,
    link::{
        event::LinkEvent,
        ice::IceConfig,
        receive::Registration,
        session::{Aead, Identity},
        underlay::Underlay,
    },
    signaling::Signaling,
};

/// The STUN/TURN servers every link's next attempt takes; replaced on reload (links that
/// are up keep their path).
#[derive(Clone)]
pub struct IceServers(Arc<std::sync::Mutex<Arc<IceConfig>>>);

impl IceServers {
    pub fn new(ice: IceConfig) -> Self {
        IceServers(Arc::new(std::sync::Mutex::new(Arc::new(ice))))
    }

    pub fn current(&self) -> Arc<IceConfig> {
        self.0.lock().expect("never poisoned: nothing panics holding it").clone()
    }

    pub fn replace(&self, ice: IceConfig) {
        *self.0.lock().expect("never poisoned: nothing panics holding it") = Arc::new(ice);
    }
}

/// What every link of an agent shares.
#[derive(Clone)]
pub struct LinkShared {
    /// This agent's node id.
    pub node_id: String,
    pub identity: Identity,
    pub psk: [u8; 32],
    /// STUN/TURN servers for server-reflexive and relay candidates.
    pub ice: IceServers,
    /// Interfaces never used for candidates (the bridge, the TAP: the overlay must not run
    /// over itself).
    pub exclude_ifaces: Vec<String>,
    pub signaling: Signaling,
    pub events: mpsc::Sender<LinkEvent>,
    /// The agent's data socket, if it has one: links probe it and move data there.
    pub data: Option<DataSocket>,
    /// The AEAD this machine seals fastest (`Aead::local`); a pair agrees on one.
    pub aead: Aead,
    /// How often links renew their session keys (`timers::REKEY_AFTER`, shorter in tests).
    pub rekey_after: std::time::Duration,
}

/// The data socket as links see it: for sending, and for telling its reader which receiver
/// index belongs to which session.
#[derive(Clone)]
pub struct DataSocket {
    pub underlay: Arc<Underlay>,
    pub registrations: mpsc::UnboundedSender<Registration>,
}

/// What a link needs to know.
#[derive(Clone)]
pub struct LinkParams {
    pub peer: PeerId,
    pub peer_node: String,
    pub remote_key: [u8; 32],
    pub controlling: bool,
    pub shared: LinkShared,
}
