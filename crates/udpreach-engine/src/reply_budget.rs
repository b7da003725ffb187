//! One budget per destination address for every reply the server sends
//! without authentication: plain echo, probe replies, short probes, test
//! ports, legacy ports, MTU acks and MTU probes all draw on it.
//!
//! A spoofed request names its victim as the source address, so the victim
//! is one destination: whatever the attacker sends, to whichever of the
//! server's ports, with whatever header, the victim gets at most this
//! budget (packets and bytes per second, each with one second's burst).
//!
//! An address with an open control session (it completed a TCP handshake
//! from that address, so it asked for the traffic) gets the session rate
//! instead, so a port sweep is not slowed. The table is bounded; when it is
//! full of addresses still being limited, new addresses get nothing (fails
//! closed). Entries with a session are never forgotten while it lasts.

use crate::rate::PurgeThrottle;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Default replies per second to one address without a session.
pub const DEFAULT_BUDGET_PPS: u32 = 1000;
/// Default reply bytes (UDP payload) per second to one address without a session.
pub const DEFAULT_BUDGET_BYTES: u64 = 2 << 20;
/// Reply bytes per second to an address with an open session: a full-speed
/// sweep (100,000 probes/s of 64 bytes) and MTU tests (at most 1 MiB per
/// request) fit; several sessions from one address share it.
pub const DEFAULT_SESSION_BYTES: u64 = 16 << 20;
/// Most addresses with a budget entry at once.
pub const MAX_DESTINATIONS: usize = 16_384;

/// Rates of the budget (`udpreach server --reply-budget`, `--reply-budget-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetRates {
    /// Packets per second to an address without a session.
    pub pps: u32,
    /// Bytes per second to an address without a session.
    pub bytes: u64,
    /// Packets per second to an address with an open session.
    pub session_pps: u32,
    /// Bytes per second to an address with an open session.
    pub session_bytes: u64,
}

impl Default for BudgetRates {
    fn default() -> Self {
        BudgetRates {
            pps: DEFAULT_BUDGET_PPS,
            bytes: DEFAULT_BUDGET_BYTES,
            session_pps: crate::server::DEFAULT_MAX_PROBE_RATE,
            session_bytes: DEFAULT_SESSION_BYTES,
        }
    }
}

impl BudgetRates {
    /// (packets, bytes) per second for an address with `sessions` open.
    fn limits(&self, sessions: u32) -> (f64, f64) {
        if sessions > 0 {
            (
                f64::from(self.session_pps.max(self.pps).max(1)),
                self.session_bytes.max(self.bytes).max(1) as f64,
            )
        } else {
            (f64::from(self.pps.max(1)), self.bytes.max(1) as f64)
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    packets: f64,
    bytes: f64,
    last: Instant,
    /// Control sessions open from this address.
    sessions: u32,
}

/// The per-destination budget table.
pub struct ReplyBudget {
    rates: BudgetRates,
    capacity: usize,
    entries: HashMap<IpAddr, Entry>,
    purge: PurgeThrottle,
}

impl ReplyBudget {
    /// A budget with the default capacity.
    pub fn new(rates: BudgetRates) -> Self {
        Self::with_capacity(rates, MAX_DESTINATIONS)
    }

    /// A budget remembering at most `capacity` destinations.
    pub fn with_capacity(rates: BudgetRates, capacity: usize) -> Self {
        ReplyBudget {
            rates,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            purge: PurgeThrottle::default(),
        }
    }

    /// The rates it enforces.
    pub fn rates(&self) -> BudgetRates {
        self.rates
    }

    /// Addresses with an entry now (bounded by the capacity, plus sessions).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no destination has an entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn limits(&self, sessions: u32) -> (f64, f64) {
        self.rates.limits(sessions)
    }

    /// May a reply of `len` bytes go to `dest` now? Takes it from the budget if so.
    pub fn allow(&mut self, dest: IpAddr, len: usize, now: Instant) -> bool {
        if !self.entries.contains_key(&dest) && !self.make_room(now) {
            return false;
        }
        let (pps, bps) = self.limits(0);
        let e = self.entries.entry(dest).or_insert(Entry {
            packets: pps,
            bytes: bps,
            last: now,
            sessions: 0,
        });
        let (pps, bps) = self.rates.limits(e.sessions);
        let dt = now.saturating_duration_since(e.last).as_secs_f64();
        e.last = now.max(e.last);
        e.packets = (e.packets + dt * pps).min(pps);
        e.bytes = (e.bytes + dt * bps).min(bps);
        let len = len as f64;
        if e.packets >= 1.0 && e.bytes >= len {
            e.packets -= 1.0;
            e.bytes -= len;
            true
        } else {
            false
        }
    }

    /// A control session from `dest` started: it gets the session rate
    /// while at least one is open. Always succeeds (sessions are capped elsewhere).
    pub fn session_opened(&mut self, dest: IpAddr, now: Instant) {
        let (pps, bps) = self.limits(1);
        let e = self.entries.entry(dest).or_insert(Entry {
            packets: pps,
            bytes: bps,
            last: now,
            sessions: 0,
        });
        e.sessions = e.sessions.saturating_add(1);
    }

    /// A control session from `dest` ended.
    pub fn session_closed(&mut self, dest: IpAddr) {
        let (pps, bps) = self.limits(0);
        if let Some(e) = self.entries.get_mut(&dest) {
            e.sessions = e.sessions.saturating_sub(1);
            if e.sessions == 0 {
                // Back to the plain budget, without the session's saved-up burst.
                e.packets = e.packets.min(pps);
                e.bytes = e.bytes.min(bps);
            }
        }
    }

    /// True when there is room for one more entry (after forgetting full,
    /// session-less ones, at most every [`crate::rate::PURGE_EVERY`]).
    fn make_room(&mut self, now: Instant) -> bool {
        if self.entries.len() < self.capacity {
            return true;
        }
        if !self.purge.due(now) {
            return false;
        }
        let (pps, bps) = self.limits(0);
        self.entries.retain(|_, e| {
            let dt = now.saturating_duration_since(e.last).as_secs_f64();
            let full = e.packets + dt * pps >= pps && e.bytes + dt * bps >= bps;
            e.sessions > 0 || !full
        });
        self.entries.len() < self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xC612_0000 + n))
    }

    fn rates(pps: u32, bytes: u64) -> BudgetRates {
        BudgetRates {
            pps,
            bytes,
            session_pps: 10_000,
            session_bytes: 1 << 20,
        }
    }

    #[test]
    fn packets_and_bytes_per_destination_over_virtual_time() {
        let t0 = Instant::now();
        let mut b = ReplyBudget::new(rates(100, 10_000));
        // A burst of one second's packets, of small replies.
        assert_eq!((0..1000).filter(|_| b.allow(ip(1), 10, t0)).count(), 100);
        // Another destination has its own budget.
        assert!(b.allow(ip(2), 10, t0));
        // Ten seconds offered at 1 kHz: about 100/s go through.
        let n = (1..=10_000u64)
            .filter(|i| b.allow(ip(1), 10, t0 + Duration::from_millis(*i)))
            .count();
        assert!((990..=1010).contains(&n), "{n}");
        // Large replies hit the byte budget first: 10,000 B/s at 1,000 B each.
        let t1 = t0 + Duration::from_secs(100);
        let mut bytes = 0;
        for i in 0..10_000u64 {
            if b.allow(ip(3), 1000, t1 + Duration::from_millis(i)) {
                bytes += 1000;
            }
        }
        // 10 s of budget plus the first second's burst.
        assert!((100_000..=111_000).contains(&bytes), "{bytes}");
        // A reply larger than a second's bytes never goes.
        assert!(!b.allow(ip(4), 10_001, t1));
    }

    #[test]
    fn sessions_raise_the_rate_while_open() {
        let t0 = Instant::now();
        let mut b = ReplyBudget::new(rates(10, 1 << 20));
        b.session_opened(ip(1), t0);
        assert_eq!(
            (0..20_000).filter(|_| b.allow(ip(1), 64, t0)).count(),
            10_000
        );
        b.session_closed(ip(1));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!((0..1000).filter(|_| b.allow(ip(1), 64, t1)).count(), 10);
    }

    #[test]
    fn table_is_bounded_and_fails_closed() {
        let t0 = Instant::now();
        let mut b = ReplyBudget::with_capacity(rates(10, 1 << 20), 100);
        b.session_opened(ip(0), t0);
        let mut allowed = 0;
        for k in 1..100_000u32 {
            if b.allow(ip(k), 64, t0) {
                allowed += 1;
            }
            assert!(b.len() <= 100);
        }
        // 99 new addresses got room; the rest got nothing (table full of
        // addresses still being limited).
        assert_eq!(allowed, 99);
        // The session's address still gets its replies.
        assert!(b.allow(ip(0), 64, t0));
        // Once budgets are full again, entries are forgotten and new addresses served.
        let later = t0 + Duration::from_secs(2);
        assert!(b.allow(ip(5_000_000), 64, later));
        assert!(b.len() <= 3);
        assert!(b.allow(ip(0), 64, later), "the session entry was kept");
    }
}
