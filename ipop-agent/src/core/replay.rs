//! Replay protection for datagrams with explicit counters: the sliding bitmap window of
//! RFC 6479, as WireGuard uses it. Datagrams may arrive out of order (UDP), so a strict
//! "greater than the last" check would drop good traffic; the window remembers which of the
//! last `WINDOW` counters were seen.

const WORD_BITS: u64 = 64;
const WORDS: usize = 32; // 2048 bits
/// How far behind the newest counter a datagram may still be accepted.
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (`None` before the first).
    top: Option<u64>,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self { top: None, bitmap: [0; WORDS] }
    }

    /// Whether `counter` may be accepted (not seen, not too old). Does not record it:
    /// call [`Self::accept`] only after the datagram authenticated, so forged counters cannot
    /// move the window.
    pub fn check(&self, counter: u64) -> bool {
        let Some(top) = self.top else { return true };
        if counter > top {
            return true;
        }
        if top - counter >= WINDOW {
            return false;
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] & (1 << bit) == 0
    }

    /// Records `counter` as seen; returns false if it was a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.top {
            None => {
                self.bitmap = [0; WORDS];
                self.top = Some(counter);
            }
            Some(top) if counter > top => {
                // The words the window slides over start empty.
                let (old_word, new_word) = (top / WORD_BITS, counter / WORD_BITS);
                for i in 1..=(new_word - old_word).min(WORDS as u64) {
                    self.bitmap[((old_word + i) % WORDS as u64) as usize] = 0;
                }
                self.top = Some(counter);
            }
            Some(_) => {}
        }
        let (word, bit) = Self::slot(counter);
        self.bitmap[word] |= 1 << bit;
        true
    }

    fn slot(counter: u64) -> (usize, u64) {
        (((counter / WORD_BITS) % WORDS as u64) as usize, counter % WORD_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_counters_pass_once() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            assert!(w.accept(c), "{c}");
            assert!(!w.accept(c), "replay of {c}");
        }
    }

    #[test]
    fn out_of_order_within_the_window_passes_once() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(100));
        assert!(w.accept(90));
        assert!(w.accept(99));
        assert!(!w.accept(90));
        assert!(w.accept(101));
        assert!(!w.accept(99));
    }

    #[test]
    fn too_old_counters_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(10_000));
        assert!(!w.check(10_000 - WINDOW));
        assert!(w.accept(10_000 - WINDOW + 1));
    }

    #[test]
    fn a_big_jump_forgets_the_old_bitmap() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(5));
        assert!(w.accept(5 + 64 * 40));
        // This counter's slot held counter 5's bit before the jump.
        let c = 5 + 64 * 32;
        assert!(w.accept(c), "stale bits were cleared");
        assert!(!w.accept(c));
    }

    #[test]
    fn check_does_not_record() {
        let mut w = ReplayWindow::new();
        assert!(w.check(7));
        assert!(w.check(7));
        assert!(w.accept(7));
        assert!(!w.check(7));
    }

    #[test]
    fn first_counter_may_be_zero_or_anything() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(0));
        let mut w = ReplayWindow::new();
        assert!(w.accept(u64::MAX - 1));
        assert!(w.accept(u64::MAX - 2));
    }
}
