//! Who a node is, and who may say so: the node's own long-term key ([`key`]). Pure: no files,
//! no clock; the agent keeps the key in its state directory.
//!
//! nebula keeps its certificates in a package of their own (`cert/`); so does ipop, so that
//! the agent, the CLI's CA commands and the rendezvous share one reading of them.

pub mod key;

pub use key::{KeyError, NodeKey, PublicKey};
