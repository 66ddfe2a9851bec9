//! ipop-agent: joins Linux bridges on many hosts into one Ethernet segment.
//!
//! The rooms, in the order a frame from a container walks through them:
//!
//! - [`kernel`]: the eBPF programs and pinned maps, the TAP, the bridge (rtnetlink), preflight.
//! - [`agent`]: the thin async shell: one loop that feeds the core and carries out its outputs.
//! - [`core`]: the sans-IO switch and what it decides with (tables, RPC, wire views, limits).
//! - [`link`]: one encrypted link per peer: Noise sessions, ICE, the data socket, the link task.
//! - [`signaling`]: how agents meet to set links up: the interface and the rendezvous.
//! - [`ops`]: the control socket (`status`) and the locks.
//! - [`config`] and [`cli`]: the JSON config and the command line that start it all.
//!
//! Dependencies point one way, down the layers `core`, `kernel`, `signaling`, `link`, `ops`,
//! `config`, `agent`, `cli`: each room uses only itself and the rooms before it, so `core`
//! uses nothing of the agent's and nothing imports back up ([`fuzzing`] is test support).
//! `tests/module_graph.rs` checks it, and that no module cycle exists.

pub mod agent;
pub mod cli;
pub mod config;
pub mod core;
pub mod fuzzing;
pub mod kernel;
pub mod link;
pub mod ops;
pub mod signaling;
