//! Links: one encrypted link per peer. ICE (webrtc-ice) finds a path, a Noise session secures
//! it, keepalives watch it, and it is set up again with backoff when it dies; data moves to
//! the agent's own UDP socket once a probe proves the path there.
//!
//! In the order a frame leaves: `send` (the agent seals and sends), `underlay` (the data
//! socket, GSO/GRO) or the ICE connection; in the order one arrives: `receive` (the data
//! socket's reader) or `ice` (the ICE connection's reader), then `event` to the agent. The
//! link task (`task`: connecting; `serve`: the session, state by state) sets each path up;
//! `session` holds the keys, `signal` the offer/answer format, `envelope` seals signals end to end, `echo` the ICE path's round
//! trip from keepalives, `timers` every interval,
//! `params` what a link is given, `peers` the agent's table of them.

pub mod echo;
pub mod envelope;
pub mod event;
pub mod ice;
pub mod ice_server;
pub mod params;
pub mod peers;
pub mod receive;
pub mod send;
pub mod serve;
pub mod session;
pub mod signal;
pub mod task;
pub mod timers;
pub mod turn_check;
pub mod turn_stream;
pub mod underlay;
