//! Round trips on the ICE path (a relay, or ICE without the data socket), from the keepalives
//! that already cross it once a second: each carries its sender's clock and an echo of the
//! last clock it heard, with how long it held that (as TCP timestamps do), so each side
//! measures its round trip with no extra message.
//!
//! ```text
//! keepalive payload on ICE:  sent_us (4) | echo_us (4; 0: nothing heard yet) | held_us (4)
//! ```
//! Big endian, microseconds of a clock that wraps (about every 71 minutes); an empty payload
//! (an older peer) is fine both ways.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const ECHO_LEN: usize = 12;

/// Longer than this is no round trip but a stale echo (a clock from a previous session).
const MAX_RTT_US: u32 = 30_000_000;

/// One link's echo state, shared by the ICE reader (which hears) and the link task (which
/// sends), and the round trip it measured, shared with the `DataTx` for `status`.
#[derive(Default)]
pub struct EchoClock {
    heard: AtomicU32,
    heard_at: AtomicU32,
    rtt_us: AtomicU64,
}

impl EchoClock {
    /// The last round trip measured, microseconds (0: none yet).
    pub fn rtt_us(&self) -> u64 {
        self.rtt_us.load(Ordering::Relaxed)
    }

    /// The payload of a keepalive sent at `now_us`.
    pub fn payload(&self, now_us: u32) -> [u8; ECHO_LEN] {
        let heard = self.heard.load(Ordering::Relaxed);
        let held = if heard == 0 { 0 } else { now_us.wrapping_sub(self.heard_at.load(Ordering::Relaxed)) };
        let mut out = [0u8; ECHO_LEN];
        out[..4].copy_from_slice(&now_us.to_be_bytes());
        out[4..8].copy_from_slice(&heard.to_be_bytes());
        out[8..].copy_from_slice(&held.to_be_bytes());
        out
    }

    /// A keepalive's `payload` arrived at `now_us`: its clock is kept for our next echo, and
    /// an echo of ours gives the round trip.
    pub fn heard(&self, payload: &[u8], now_us: u32) {
        let Some(words) = payload.first_chunk::<ECHO_LEN>() else { return };
        let word = |i: usize| u32::from_be_bytes(words[i..i + 4].try_into().unwrap());
        let (sent, echo, held) = (word(0), word(4), word(8));
        if sent != 0 {
            self.heard.store(sent, Ordering::Relaxed);
            self.heard_at.store(now_us, Ordering::Relaxed);
        }
        if let Some(rtt) = round_trip(now_us, echo, held) {
            self.rtt_us.store(u64::from(rtt), Ordering::Relaxed);
        }
    }
}

/// Now, less when our echoed clock left, less how long the peer held it.
fn round_trip(now_us: u32, echo_us: u32, held_us: u32) -> Option<u32> {
    if echo_us == 0 {
        return None;
    }
    let rtt = now_us.wrapping_sub(echo_us).wrapping_sub(held_us);
    (rtt < MAX_RTT_US).then_some(rtt.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sides_measure_the_round_trip_from_each_others_keepalives() {
        let (a, b) = (EchoClock::default(), EchoClock::default());
        // One-way delay 150 us; b's clock runs 5 s ahead of a's (only differences count).
        let skew = 5_000_000u32;
        let ka = a.payload(1_000);
        b.heard(&ka, 1_150 + skew);
        assert_eq!(b.rtt_us(), 0, "nothing of b's echoed yet");
        // b answers 400 ms later with its own keepalive, echoing a's clock.
        let kb = b.payload(401_150 + skew);
        a.heard(&kb, 401_300);
        assert_eq!(a.rtt_us(), 300, "150 us each way, the 400 ms held left out");
        let ka = a.payload(900_000);
        b.heard(&ka, 900_150 + skew);
        assert_eq!(b.rtt_us(), 300);
    }

    #[test]
    fn clocks_that_wrap_still_measure() {
        assert_eq!(round_trip(100, u32::MAX - 199, 0), Some(300));
        assert_eq!(round_trip(100, 0, 0), None, "no echo yet");
        assert_eq!(round_trip(100, 200, 0), None, "an echo from the future is stale");
    }

    #[test]
    fn short_or_empty_payloads_change_nothing() {
        let c = EchoClock::default();
        c.heard(&[], 10);
        c.heard(&[1, 2, 3], 10);
        assert_eq!(c.rtt_us(), 0);
        assert_eq!(&c.payload(5)[4..], &[0; 8], "nothing heard: no echo");
    }
}
