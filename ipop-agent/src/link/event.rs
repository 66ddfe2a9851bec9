//! What the agent and a link tell each other.

use crate::{
    core::{switch::PeerId, wire::Inner},
    link::{send::DataTx, session::SessionError},
};
use serde_json::Value;

/// What the agent tells a link.
#[derive(Debug)]
pub enum LinkCmd {
    Signal(Value),
    /// Shared bytes: a broadcast hands the same buffer to every link without copying.
    Send(Inner, bytes::Bytes),
}

/// What a link tells the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// The link is up (again, after a new handshake): send through `DataTx` from now on.
    Up(PeerId, DataTx),
    Down(PeerId),
    /// An attempt to set the link up failed, and why, in words for `status`.
    Failed(PeerId, String),
    /// An RPC message, or a whole frame (virtio header and frame, put back together from
    /// its chunks by the reader).
    Received(PeerId, Inner, Vec<u8>),
    /// A frame lost on the way (a chunk missing or malformed).
    FrameLost(PeerId),
    /// A datagram failed authentication, was replayed, or a handshake was refused.
    Dropped(PeerId, SessionError),
}
