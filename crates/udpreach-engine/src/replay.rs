//! Replay protection for authenticated probes: a sliding window over sequence
//! numbers, as in IPsec (RFC 4303 §3.4.3) and WireGuard. A sequence number is
//! accepted once; numbers older than the window are refused, since the
//! window can no longer tell whether they were seen.
//!
//! Only feed it datagrams whose tag has been verified: otherwise a forger
//! could push the window forward and make real probes look old.

/// Sequence numbers the window remembers below the highest one seen.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Clone, Debug, Default)]
/// A sliding window of sequence numbers already accepted, so a captured probe replayed later is refused.
pub struct ReplayWindow {
    /// Highest sequence number accepted so far (valid when `started`).
    top: u64,
    started: bool,
    /// Bit `i` set: `top - i` was seen.
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// An empty window: the first sequence number starts it.
    pub fn new() -> Self {
        Self::default()
    }

    /// True (and remembered) the first time `seq` is offered; false for a
    /// repeat or for a number too far behind the highest seen.
    pub fn accept(&mut self, seq: u64) -> bool {
        if !self.started {
            self.started = true;
            self.top = seq;
            self.bits = [0; WORDS];
            self.bits[0] = 1;
            return true;
        }
        if seq > self.top {
            self.shift(seq - self.top);
            self.top = seq;
            self.bits[0] |= 1;
            return true;
        }
        let behind = self.top - seq;
        if behind >= WINDOW {
            return false;
        }
        let (word, bit) = ((behind / 64) as usize, behind % 64);
        if self.bits[word] & (1 << bit) != 0 {
            return false;
        }
        self.bits[word] |= 1 << bit;
        true
    }

    /// Moves every remembered bit `by` places further from the top.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let (words, bits) = ((by / 64) as usize, (by % 64) as u32);
        for i in (0..WORDS).rev() {
            let src = i.checked_sub(words);
            let hi = src.map_or(0, |s| self.bits[s]);
            let lo = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.bits[s]);
            self.bits[i] = if bits == 0 {
                hi
            } else {
                (hi << bits) | (lo >> (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn repeats_and_old_numbers_are_refused() {
        let mut w = ReplayWindow::new();
        assert!(w.accept(10));
        assert!(!w.accept(10));
        assert!(w.accept(5), "late but new");
        assert!(!w.accept(5));
        assert!(w.accept(10 + WINDOW));
        assert!(!w.accept(10), "fell out of the window");
        assert!(w.accept(11 + 1), "still inside");
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }

    proptest! {
        /// Against a model that remembers everything: never accepts a repeat,
        /// and accepts every new number within the window.
        #[test]
        fn matches_a_perfect_memory_inside_the_window(seqs in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut top = None::<u64>;
            for s in seqs {
                let fresh = !seen.contains(&s);
                let in_window = top.is_none_or(|t| s > t || t - s < WINDOW);
                let got = w.accept(s);
                prop_assert_eq!(got, fresh && in_window, "seq {}", s);
                if got {
                    seen.insert(s);
                    top = Some(top.map_or(s, |t| t.max(s)));
                }
            }
        }
    }
}
