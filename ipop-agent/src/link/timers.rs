//! The link's timers: keepalive, liveness, handshake retries, backoff and data-socket probing,
//! and the clocks the link task and its readers share.

use std::{
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::core::{chunk, wire};

/// A link's clock ticks this often once up: keepalives, liveness and the data path's checks.
pub const TICK: Duration = Duration::from_millis(250);
/// A link sends one small keepalive this often, on the path data takes (the data socket when
/// direct, else ICE)...
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// ...and declares the peer dead when it has received nothing for this long.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// A quiet link ticks once a second (`KEEPALIVE`), and quickly again (`TICK`) after this long
/// without a datagram or without the peer hearing us on the data socket: two keepalives
/// missed, well before `DIRECT_QUIET` and `DEAD_AFTER`.
pub const DOUBT: Duration = Duration::from_millis(2500);
/// ICE's own consent checks on the selected pair (a STUN request each way): they hold the ICE
/// path's NAT mappings while data and keepalives take the data socket.
pub const ICE_CONSENT: Duration = Duration::from_secs(15);
/// ICE gives up on an attempt when no pair answered for this long.
pub const ICE_CHECKING: Duration = Duration::from_secs(8);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The controlling side sends its offer (and candidates) again after this long without an
/// answer, doubling up to `RESEND_MAX`: a signal the service dropped costs a second or two.
pub const RESEND_MIN: Duration = Duration::from_millis(500);
pub const RESEND_MAX: Duration = Duration::from_secs(4);
/// Signals pushed within this long of the first one unsent go as one sealed envelope, to a
/// peer that takes bundles (`signal::Sent`).
pub const SIGNAL_BATCH: Duration = Duration::from_millis(20);
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(500);
/// Each link renews its session keys this often (WireGuard: 2 minutes; `--rekey-after-secs`
/// shortens it for tests)...
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// ...or after sealing this many datagrams, whichever comes first...
pub const REKEY_AFTER_DATAGRAMS: u64 = 1 << 32;
/// ...and opens datagrams of the session before for this long after it switched.
pub const PREVIOUS_KEYS: Duration = Duration::from_secs(10);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// The data socket path is probed with full-size probes this often until one is answered...
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// ...for this long; then with small probes every `PROBE_SLOW` (data meanwhile on ICE), and
/// a small answer earns one full-size probe (at most one per `SIZE_CHECK` after the first).
pub const PROBE_FOR: Duration = Duration::from_secs(5);
pub const PROBE_SLOW: Duration = Duration::from_secs(5);
/// Once direct: data goes back to ICE when the peer's keepalives have not said it heard us
/// for this long (each side checks its own direction), or when a full-size probe, sent once
/// per `SIZE_CHECK` on a link that carried data, is not answered within it.
pub const DIRECT_QUIET: Duration = Duration::from_secs(4);
pub const SIZE_CHECK: Duration = Duration::from_secs(60);
/// A full-size probe's payload: it makes the probe exactly `chunk::DIRECT_DATAGRAM` bytes.
pub const PROBE_PADDING: [u8; chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN] =
    [0; chunk::DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN];

/// The process's first call to a clock: where `clock_ms` and `clock_us` start.
fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process's first call, from 1: a clock the readers and the link
/// share, whose 0 stands for "never" in the atomics that keep its readings.
pub fn clock_ms() -> u64 {
    start().elapsed().as_millis() as u64 + 1
}

/// Microseconds of the same clock, wrapping at 32 bits and never 0 (`link::echo`'s clock).
pub fn clock_us() -> u32 {
    (start().elapsed().as_micros() as u32).max(1)
}

/// An interval whose ticks fall on multiples of `period` of the wall clock, so that every
/// link's ticks land in the same timer slot: an idle agent with many links wakes once a
/// period, not once a period for each link. And since the peers' clocks agree (NTP, or one
/// machine), their keepalives leave together too and arrive as one burst, read in one wakeup,
/// not one wakeup for each peer. Missed ticks are skipped, not bunched.
pub fn aligned_interval(period: Duration) -> tokio::time::Interval {
    let into = now_ns() as u128 % period.as_nanos();
    let next = tokio::time::Instant::now() + (period - Duration::from_nanos(into as u64));
    let mut interval = tokio::time::interval_at(next, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    interval
}

/// Wall-clock nanoseconds: the handshake timestamp, which must grow across restarts.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
