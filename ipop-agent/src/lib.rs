//! ipop-agent: joins Linux bridges on many hosts into one Ethernet segment.
//!
//! The decisions live in [`switch`], a sans-IO core with no sockets, clocks or files. The
//! rest is the thin shell that drives it: [`datapath`] (eBPF programs and pinned maps),
//! [`netif`] (TAP and bridge), [`agent`] (the tokio loop), [`tables`] (what the CLI reads and
//! writes in the pinned maps of a running agent).

pub mod addr;
pub mod agent;
pub mod chunk;
pub mod config;
pub mod control;
pub mod datapath;
pub mod fuzzing;
pub mod limit;
pub mod link;
pub mod lock;
pub mod netif;
pub mod peers;
pub mod preflight;
pub mod rendezvous;
pub mod replay;
pub mod rpc;
pub mod session;
pub mod signaling;
pub mod switch;
pub mod tables;
pub mod tap;
pub mod underlay;
pub mod wire;
