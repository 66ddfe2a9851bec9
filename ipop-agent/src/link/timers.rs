//! The link's timers: keepalive, liveness, handshake retries, backoff and data-socket probing,
//! and the clocks the link task and its readers share.

use std::{
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::core::{chunk, wire};

/// A link sends a keepalive when it has sent nothing for this long...
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// ...and declares the peer dead when it has received nothing for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(500);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How often a link probes the data socket path until it answers...
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// ...for this long, then only every `PROBE_SLOW` (data meanwhile on the ICE path). Once up,
/// a probe crosses it every half second, and the data path is given up when none was answered for
/// `DIRECT_QUIET`: answers, not just arrivals, so a path blocked one way is noticed on both
/// sides.
pub const PROBE_FOR: Duration = Duration::from_secs(5);
pub const PROBE_SLOW: Duration = Duration::from_secs(5);
pub const DIRECT_QUIET: Duration = Duration::from_millis(2500);
/// A probe's payload: it makes the probe exactly `chunk::DIRECT_DATAGRAM` bytes.
pub const PROBE_PADDING: [u8; chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN] =
    [0; chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN];

/// Milliseconds since the process's first call: a clock the readers and the link share.
pub fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Wall-clock nanoseconds: the handshake timestamp, which must grow across restarts.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
