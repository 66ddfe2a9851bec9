//! Who a node is, and who may say so: the node's own long-term key ([`key`]), the overlay
//! CA's certificates binding a node id to that key and the addresses it may claim
//! ([`cert`]), and the CA's revocation lists ([`revoke`]), both [`signed`] documents. Pure:
//! no files, no clock (callers pass the time); the agent keeps its key in its state
//! directory, the operator keeps the CA's key offline.
//!
//! nebula keeps its certificates in a package of their own (`cert/`); so does ipop, so that
//! the agent, the CLI's CA commands and the rendezvous share one reading of them.

pub mod cert;
pub mod key;
pub mod revoke;
pub mod signed;

pub use cert::{CertBody, CertError, Certificate};
pub use key::{KeyError, NodeKey, PublicKey};
pub use revoke::{RevocationBody, RevocationList};
