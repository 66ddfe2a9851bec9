//! Token buckets for rate limits, pure: the caller passes the time.

/// A rate: `per_sec` tokens a second, at most `burst` saved up. `per_sec == 0`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate { per_sec: 0, burst: 0 };

    /// `per_sec` a second with a second's worth of burst.
    pub fn per_second(per_sec: u32) -> Rate {
        Rate { per_sec, burst: per_sec }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Tokens, in millionths (integer arithmetic, no drift).
    micro: u64,
    last_ns: u64,
}

impl Bucket {
    /// A full bucket at time `now_ns`.
    pub fn full(rate: Rate, now_ns: u64) -> Self {
        Self { micro: rate.burst as u64 * 1_000_000, last_ns: now_ns }
    }

    /// Whether nothing was taken for `idle_ns` before `now_ns`.
    pub fn idle_since(&self, now_ns: u64, idle_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_ns) > idle_ns
    }

    /// Takes a token if there is one at `now_ns`.
    pub fn take(&mut self, rate: Rate, now_ns: u64) -> bool {
        if rate.per_sec == 0 {
            return true;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        // per_sec tokens a second = per_sec micro-tokens per microsecond... per ns: /1000.
        let refill = elapsed.saturating_mul(rate.per_sec as u64) / 1_000;
        self.micro = (self.micro.saturating_add(refill)).min(rate.burst as u64 * 1_000_000);
        if self.micro >= 1_000_000 {
            self.micro -= 1_000_000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_full_bucket_gives_its_burst_then_the_rate() {
        let rate = Rate { per_sec: 10, burst: 5 };
        let mut b = Bucket::full(rate, 0);
        assert_eq!((0..20).filter(|_| b.take(rate, 0)).count(), 5, "the burst");
        assert!(!b.take(rate, SEC / 20), "half a token after 50 ms");
        assert!(b.take(rate, SEC / 10), "one token after 100 ms");
        let taken = (1..=100).filter(|i| b.take(rate, SEC / 10 + i * SEC / 100)).count();
        assert_eq!(taken, 10, "10 a second afterwards");
    }

    #[test]
    fn it_never_saves_more_than_the_burst() {
        let rate = Rate::per_second(3);
        let mut b = Bucket::full(rate, 0);
        assert_eq!((0..10).filter(|_| b.take(rate, 1000 * SEC)).count(), 3);
    }

    #[test]
    fn unlimited_always_gives_and_time_going_back_is_harmless() {
        let mut b = Bucket::full(Rate::UNLIMITED, 0);
        assert!((0..1000).all(|_| b.take(Rate::UNLIMITED, 0)));
        let rate = Rate::per_second(1);
        let mut b = Bucket::full(rate, 5 * SEC);
        assert!(b.take(rate, 5 * SEC));
        assert!(!b.take(rate, 4 * SEC), "a clock going back adds nothing");
    }
}
