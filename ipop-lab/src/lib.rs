//! The lab: every topology ipop's system tests, `cargo xtask demo` and `cargo xtask bench`
//! run on, built from network namespaces on this machine. Needs root.
//!
//! - [`Host`]: a namespace `<prefix>h` with bridge `lxcbr0` (10.0.3.1/24, as LXC sets it up),
//!   containers on veth pairs (namespaces `<prefix>c<i>` with `eth0`), optionally real LXC
//!   busybox containers ([`Host::add_lxc`]), and the agents it runs ([`Host::start_agent`]).
//! - [`Underlay`]: a namespace with bridge `wanbr`. [`Underlay::new`] is the flat network the
//!   tests use (192.168.77.254/24, hosts 192.168.77.N, the rendezvous at [`RENDEZVOUS`]);
//!   [`Underlay::internet`] is a public-style one (203.0.113.254/24 and a default route),
//!   where servers run ([`Underlay::spawn`]: any command, with its log file).
//! - [`Router`]: a NAT router with a WAN leg on an underlay and a LAN bridge toward its hosts
//!   ([`Host::behind`]): nftables `masquerade` ([`Nat::Cone`]) or `masquerade
//!   random,fully-random` ([`Nat::Symmetric`]) or none ([`Nat::Routed`]), optionally a home
//!   router's input filter or a block on outbound UDP, its own conntrack UDP timeout and flush.
//! - [`SignalingProxy`]: a rendezvous that misbehaves, in front of the real one (speaking its
//!   encrypted channel through a [`Channel`] the tests give): every line cut into fragments,
//!   the first signal between every two nodes dropped, members' keys swapped, signals
//!   rewritten ([`Faults`]).
//! - [`NeighbourLimits`]: room in the kernel's neighbour table (one for all namespaces) for
//!   a lab of many hosts, raised for the run and restored after.
//!
//! Names: each value takes a prefix unique to the process and call ([`unique_prefix`]:
//! `il<pid>x<n>_`, at most 15 bytes) for its namespaces, its pins (`/sys/fs/bpf/<prefix>`),
//! its temporary directory (`$TMPDIR/<prefix>`, logs and files) and LXC containers.
//!
//! Cleanup: everything a value made is removed when it is dropped, also while a test panics:
//! processes get SIGTERM (so agents remove their own TAP, pins and sockets), then SIGKILL after
//! 5 s; whatever else still runs in its namespaces is killed; LXC containers are stopped and
//! destroyed; the namespaces, the pins, `/run/ipop` entries carrying the prefix and the
//! temporary directory go. A process killed with SIGKILL cannot drop anything: the next lab in
//! another process removes namespaces whose pid is gone ([`sweep_stale`], run once per process).
//!
//! The agent binary, in this order: the path given to [`set_agent`] (xtask: target/release for
//! the benchmark, target/debug for the demo); else `$IPOP_AGENT`; else `ipop-agent` beside the
//! running executable, or one directory up from `deps/` (where cargo puts integration tests:
//! `target/debug/deps/overlay-*` finds `target/debug/ipop-agent`, the file
//! `env!("CARGO_BIN_EXE_ipop-agent")` names).
//!
//! Agents and services run with `nsenter --net=/run/netns/NAME`, never `ip netns exec`, which
//! remounts /sys and so hides bpffs; commands inside containers may use `ip netns exec`.

mod agent;
mod command;
mod host;
mod lab;
mod lxc;
mod nat;
mod neigh;
mod netns;
mod process;
mod proxy;
mod tls;
mod underlay;
mod user;
mod xmpp;

pub use agent::{agent_binary, prog_name, remove_pins, set_agent, stats, status, tcx_links};
pub use command::{cmd, eventually, eventually_within, ok, require_root};
pub use host::Host;
pub use lab::{Scratch, sweep_stale, unique_prefix};
pub use lxc::{Lxc, lxc_available};
pub use nat::{Nat, Router};
pub use neigh::NeighbourLimits;
pub use netns::Netns;
pub use process::Proc;
pub use proxy::{Channel, Faults, Plain, SignalingProxy};
pub use tls::make_ca;
pub use underlay::{RENDEZVOUS, Underlay};
pub use user::SystemUser;
pub use xmpp::{Cert, DOMAIN as XMPP_DOMAIN, Ejabberd, Prosody, ROOM as XMPP_ROOM};
