//! Rate limits for what the server sends: a token bucket, and a bounded
//! table of buckets keyed by source (address, or address and token).
//!
//! The per-source table is what keeps the echo port from being aimed at a
//! third party with spoofed requests: the victim is one source address, so it
//! gets at most the per-source rate, however many requests name it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A burst of one second's worth keeps short bursts (a
    /// sweep opening a window of ports) from being cut while holding the
    /// average to `rate_pps`.
    pub fn new(rate_pps: u32, now: Instant) -> Self {
        let rate = f64::from(rate_pps.max(1));
        TokenBucket {
            rate,
            burst: rate,
            tokens: rate,
            last: now,
        }
    }

    /// A full bucket holding at most `burst` tokens (at least one): the
    /// pacing of a sender, whose burst is a few timer ticks' worth.
    pub fn with_burst(rate_pps: u32, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate: f64::from(rate_pps.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.has_token(now) {
            self.take();
            true
        } else {
            false
        }
    }

    /// Adds the tokens earned up to `now`; true when one can be taken.
    pub fn has_token(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens >= 1.0
    }

    /// True when a token was there at the last refill (no clock read).
    pub fn had_token(&self) -> bool {
        self.tokens >= 1.0
    }

    /// Spends one token (after [`Self::has_token`] said there is one).
    pub fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// The instant of the last refill.
    pub fn refilled_at(&self) -> Instant {
        self.last
    }

    /// When the next whole token is there, or `None` if one is there now.
    /// Rounded up to the next microsecond: at exactly the computed instant,
    /// float rounding can leave 0.999... tokens, and a driver woken then
    /// (a virtual clock never moves on by itself) would find none.
    pub fn next_token_at(&self) -> Option<Instant> {
        (self.tokens < 1.0).then(|| {
            let wait = (1.0 - self.tokens) / self.rate;
            self.last + Duration::from_micros((wait * 1e6).ceil() as u64 + 1)
        })
    }

    /// True when the bucket has been idle long enough to be full again, i.e.
    /// forgetting it changes nothing.
    fn is_full_at(&self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + dt * self.rate >= self.burst
    }
}

/// One token bucket per key, in a table of bounded size.
pub struct SourceLimiter<K> {
    buckets: HashMap<K, TokenBucket>,
    rate_pps: u32,
    capacity: usize,
    purge: PurgeThrottle,
}

/// How often a full table is swept for forgettable entries (bounds the work a
/// flood of new sources can cause).
pub const PURGE_EVERY: Duration = Duration::from_millis(100);

/// When a bounded per-source table may sweep itself for forgettable
/// entries: at most once every [`PURGE_EVERY`], so a flood of new sources
/// against a full table costs one sweep per interval, not one per datagram.
/// Shared by [`SourceLimiter`] and the reply budget's table.
#[derive(Clone, Copy, Debug, Default)]
pub struct PurgeThrottle {
    last: Option<Instant>,
}

impl PurgeThrottle {
    /// True (and the sweep counted as done now) when a sweep is due.
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= PURGE_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

impl<K: Hash + Eq + Clone> SourceLimiter<K> {
    /// `rate_pps` per key, at most `capacity` keys remembered (idle full buckets are forgotten first).
    pub fn new(rate_pps: u32, capacity: usize) -> Self {
        SourceLimiter {
            buckets: HashMap::new(),
            rate_pps,
            capacity: capacity.max(1),
            purge: PurgeThrottle::default(),
        }
    }

    /// May `key` be answered now? When the table is full of sources that are
    /// all still rate-limited, a new source is refused: failing closed is
    /// the safe side for a server that must not reflect floods.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if let Some(b) = self.buckets.get_mut(key) {
            return b.try_take(now);
        }
        if self.buckets.len() >= self.capacity {
            if !self.purge.due(now) {
                return false;
            }
            self.buckets.retain(|_, b| !b.is_full_at(now));
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        let mut b = TokenBucket::new(self.rate_pps, now);
        let ok = b.try_take(now);
        self.buckets.insert(key.clone(), b);
        ok
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_holds_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0);
        let burst = (0..1000).filter(|_| b.try_take(t0)).count();
        assert_eq!(burst, 100);
        // Over the next 10 s at 1 kHz offered, about 100/s get through.
        let mut n = 0;
        for i in 1..=10_000u64 {
            if b.try_take(t0 + Duration::from_millis(i)) {
                n += 1;
            }
        }
        assert!((990..=1010).contains(&n), "{n}");
    }

    #[test]
    fn limiter_is_per_source_and_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 100);
        assert_eq!((0..50).filter(|_| l.allow(&1u32, t0)).count(), 10);
        assert!(l.allow(&2u32, t0), "another source has its own bucket");
        // A flood of new sources never grows the table past its capacity,
        // and once full, new sources are refused until buckets refill.
        let mut allowed = 0;
        for k in 1000..100_000u32 {
            if l.allow(&k, t0) {
                allowed += 1;
            }
            assert!(l.len() <= 100);
        }
        assert_eq!(allowed, 98);
        // After a second every bucket is full again, so all are forgettable.
        assert!(l.allow(&5_000_000u32, t0 + Duration::from_secs(2)));
        assert!(l.len() <= 2);
    }
}
