//! Who gets the server's control-channel resources, without I/O: pending
//! handshakes, sessions and test ports, each under a global cap and a
//! per-source share, so one source cannot take what another needs.
//!
//! A "source" is an IPv4 address or an IPv6 /64 (one host usually holds a
//! whole /64, so counting single IPv6 addresses would make the share
//! meaningless). Pending handshakes are never refused for lack of global
//! room: the oldest one is evicted instead, so a flood of stalled
//! connections cannot keep an honest (quick) client from completing its
//! handshake. The driver owns sockets, timers and the eviction itself.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// What one source may hold at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    /// Handshakes in progress one source may hold.
    pub handshakes_per_source: usize,
    /// Established sessions one source may hold.
    pub sessions_per_source: usize,
    /// Ports open on the server one source may hold, over all its sessions.
    pub ports_per_source: usize,
}

impl Shares {
    /// Default shares: a quarter of each global cap (at least one session),
    /// a sixteenth of the handshake slots (at least 8).
    pub fn fair(max_handshakes: usize, max_sessions: usize, max_ports: usize) -> Self {
        Shares {
            handshakes_per_source: (max_handshakes / 16).max(8).min(max_handshakes.max(1)),
            sessions_per_source: (max_sessions / 4).max(1),
            ports_per_source: (max_ports / 4).max(1),
        }
    }
}

/// The unit a share is counted per: IPv4 address, or IPv6 /64.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Id of a pending handshake (increasing: a smaller id is older).
pub type HandshakeId = u64;

/// A handshake slot: its id and, when the source's share or the table was
/// full, the pending handshake that lost its slot (the driver closes that
/// connection, telling it "handshake slots full").
#[derive(Debug, PartialEq, Eq)]
pub struct HandshakeSlot<T> {
    /// The slot taken.
    pub id: HandshakeId,
    /// The oldest handshake of the same source, evicted to make room (its driver closes it).
    pub evicted: Option<T>,
}

/// Why a session is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Every session slot is taken.
    Full {
        /// The server's session cap.
        max: usize,
    },
    /// This source already holds its share.
    SourceShare {
        /// Sessions one source may hold.
        per_source: usize,
    },
}

impl std::fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefusal::Full { max } => write!(f, "server busy ({max} sessions)"),
            SessionRefusal::SourceShare { per_source } => write!(
                f,
                "server busy ({per_source} sessions from this source, its share)"
            ),
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Held {
    handshakes: usize,
    sessions: usize,
    ports: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.handshakes == 0 && self.sessions == 0 && self.ports == 0
    }
}

/// The counts, the caps and the pending-handshake table. `T` is what the
/// driver needs to evict a pending handshake (e.g. a cancel handle).
#[derive(Debug)]
pub struct Admission<T> {
    max_handshakes: usize,
    max_sessions: usize,
    max_ports: usize,
    shares: Shares,
    next_id: HandshakeId,
    pending: BTreeMap<HandshakeId, (IpAddr, T)>,
    sessions: usize,
    ports: usize,
    by_source: HashMap<IpAddr, Held>,
}

impl<T> Admission<T> {
    /// Admission control with these server-wide caps; the per-source shares are derived from them.
    pub fn new(
        max_handshakes: usize,
        max_sessions: usize,
        max_ports: usize,
        shares: Shares,
    ) -> Self {
        Admission {
            max_handshakes: max_handshakes.max(1),
            max_sessions,
            max_ports,
            shares,
            next_id: 0,
            pending: BTreeMap::new(),
            sessions: 0,
            ports: 0,
            by_source: HashMap::new(),
        }
    }

    /// What one source may hold at once.
    pub fn shares(&self) -> Shares {
        self.shares
    }

    fn held(&mut self, ip: IpAddr) -> &mut Held {
        self.by_source.entry(source_of(ip)).or_default()
    }

    fn forget_if_empty(&mut self, ip: IpAddr) {
        let src = source_of(ip);
        if self.by_source.get(&src).is_some_and(Held::is_empty) {
            self.by_source.remove(&src);
        }
    }

    /// A new control connection from `ip` takes a handshake slot. It always
    /// gets one: when its source already holds its share, that source's
    /// oldest pending handshake is evicted; when the table is full, the
    /// oldest of all. So a source never holds more than its share, a flood
    /// never locks out a quick client (even one behind the attacker's NAT),
    /// and what is evicted is what has been stalling longest.
    pub fn begin_handshake(&mut self, ip: IpAddr, handle: T) -> HandshakeSlot<T> {
        let src = source_of(ip);
        let victim = if self.held(ip).handshakes >= self.shares.handshakes_per_source {
            self.pending
                .iter()
                .find(|(_, (other, _))| source_of(*other) == src)
                .map(|(id, _)| *id)
        } else if self.pending.len() >= self.max_handshakes {
            self.pending.keys().next().copied()
        } else {
            None
        };
        let evicted = victim.and_then(|id| {
            let (old_ip, old) = self.pending.remove(&id)?;
            self.held(old_ip).handshakes -= 1;
            self.forget_if_empty(old_ip);
            Some(old)
        });
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, (ip, handle));
        self.held(ip).handshakes += 1;
        HandshakeSlot { id, evicted }
    }

    /// The handshake ended (admitted, refused, timed out or closed). A no-op
    /// for a handshake already evicted.
    pub fn end_handshake(&mut self, id: HandshakeId) {
        if let Some((ip, _)) = self.pending.remove(&id) {
            self.held(ip).handshakes -= 1;
            self.forget_if_empty(ip);
        }
    }

    /// Handshakes in progress now.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.len()
    }

    /// Takes a session slot for `ip`.
    pub fn open_session(&mut self, ip: IpAddr) -> Result<(), SessionRefusal> {
        if self.sessions >= self.max_sessions {
            return Err(SessionRefusal::Full {
                max: self.max_sessions,
            });
        }
        let per_source = self.shares.sessions_per_source;
        if self.held(ip).sessions >= per_source {
            self.forget_if_empty(ip);
            return Err(SessionRefusal::SourceShare { per_source });
        }
        self.held(ip).sessions += 1;
        self.sessions += 1;
        Ok(())
    }

    /// Releases the session slot of `ip`.
    pub fn close_session(&mut self, ip: IpAddr) {
        let h = self.held(ip);
        if h.sessions > 0 {
            h.sessions -= 1;
            self.sessions -= 1;
        }
        self.forget_if_empty(ip);
    }

    /// Established sessions now.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Room for one more test port for `ip`, under the global cap and its share.
    pub fn reserve_port(&mut self, ip: IpAddr) -> bool {
        if self.ports >= self.max_ports || self.held(ip).ports >= self.shares.ports_per_source {
            self.forget_if_empty(ip);
            return false;
        }
        self.held(ip).ports += 1;
        self.ports += 1;
        true
    }

    /// Returns `n` ports of `ip` (closed or with their session).
    pub fn release_ports(&mut self, ip: IpAddr, n: usize) {
        let h = self.held(ip);
        let n = n.min(h.ports);
        h.ports -= n;
        self.ports -= n;
        self.forget_if_empty(ip);
    }

    /// Ports open now over all sessions.
    pub fn open_ports(&self) -> usize {
        self.ports
    }

    /// Sources with anything held: bounded by handshakes + sessions + ports.
    pub fn sources(&self) -> usize {
        self.by_source.len()
    }
}

/// When the next read on a control connection must have happened: a whole
/// message (started by its first byte) within `whole`, and between messages
/// at most `idle` of silence. A trickle of bytes keeps neither alive.
#[derive(Clone, Debug)]
pub struct MessageDeadline {
    idle: Duration,
    whole: Duration,
    /// When the message now in the buffer began, if one is partly there.
    started: Option<Instant>,
    idle_since: Instant,
}

impl MessageDeadline {
    /// Starts counting at `now`: a message must start within `idle` and be whole within `whole` of its start.
    pub fn new(idle: Duration, whole: Duration, now: Instant) -> Self {
        MessageDeadline {
            idle,
            whole,
            started: None,
            idle_since: now,
        }
    }

    /// Call after bytes were appended; `buffered` counts what is held now.
    pub fn on_received(&mut self, buffered: usize, now: Instant) {
        if buffered > 0 && self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// Call after a whole message was taken off; `remaining` bytes are left
    /// (the start of the next message, whose clock starts now).
    pub fn on_consumed(&mut self, remaining: usize, now: Instant) {
        if remaining == 0 {
            self.started = None;
            self.idle_since = now;
        } else {
            self.started = Some(now);
        }
    }

    /// When the connection is closed unless a whole message arrives first.
    pub fn deadline(&self) -> Instant {
        match self.started {
            Some(t) => t + self.whole,
            None => self.idle_since + self.idle,
        }
    }

    /// What ran out, for the log and the error message.
    pub fn describe(&self) -> String {
        match self.started {
            Some(_) => format!(
                "message not completed within {} s",
                self.whole.as_secs_f64()
            ),
            None => format!("idle for {} s", self.idle.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn shares() -> Shares {
        Shares {
            handshakes_per_source: 3,
            sessions_per_source: 2,
            ports_per_source: 10,
        }
    }

    #[test]
    fn one_source_cannot_fill_the_handshake_table() {
        let mut a = Admission::new(8, 4, 40, shares());
        let attacker = ip("198.18.0.66");
        for i in 0..3 {
            assert_eq!(a.begin_handshake(attacker, i).evicted, None);
        }
        // 1,100 more from the same source: each evicts that source's oldest,
        // so it never holds more than its share of 3.
        for i in 0..1100 {
            let oldest = if i < 3 { i } else { 100 + i - 3 };
            assert_eq!(a.begin_handshake(attacker, 100 + i).evicted, Some(oldest));
        }
        assert_eq!(a.pending_handshakes(), 3);
        // Another source loses nothing to it.
        let other = a.begin_handshake(ip("198.18.0.1"), 9);
        assert_eq!(other.evicted, None);
        // Behind the attacker's address, a quick client still gets a slot.
        assert!(a.begin_handshake(attacker, 5000).evicted.is_some());
    }

    #[test]
    fn a_full_table_evicts_the_oldest_pending_handshake() {
        let mut a = Admission::new(4, 4, 40, shares());
        // Four attackers (other addresses) fill the table.
        let ids: Vec<_> = (0..4)
            .map(|i| a.begin_handshake(ip(&format!("198.18.1.{i}")), i).id)
            .collect();
        // An honest client still gets a slot: the oldest attacker loses its.
        let honest = a.begin_handshake(ip("198.18.0.1"), 99);
        assert_eq!(honest.evicted, Some(0));
        assert_eq!(a.pending_handshakes(), 4);
        // Ending an evicted handshake is harmless.
        a.end_handshake(ids[0]);
        assert_eq!(a.pending_handshakes(), 4);
        // The attackers reconnect: each evicts the next oldest, and the
        // honest client is evicted only after 4 newer handshakes arrived.
        for (n, expect) in [(10, 1), (11, 2), (12, 3)] {
            let s = a.begin_handshake(ip("198.18.1.9"), n);
            assert_eq!(s.evicted, Some(expect));
        }
        a.end_handshake(honest.id);
        assert!(a.open_session(ip("198.18.0.1")).is_ok());
        assert_eq!(a.pending_handshakes(), 3);
    }

    #[test]
    fn sessions_have_a_global_cap_and_a_per_source_share() {
        let mut a: Admission<()> = Admission::new(8, 3, 40, shares());
        let x = ip("198.18.0.66");
        assert!(a.open_session(x).is_ok());
        assert!(a.open_session(x).is_ok());
        let refused = a.open_session(x).unwrap_err();
        assert_eq!(refused, SessionRefusal::SourceShare { per_source: 2 });
        assert!(refused.to_string().contains("server busy"));
        assert!(a.open_session(ip("198.18.0.1")).is_ok());
        let full = a.open_session(ip("198.18.0.2")).unwrap_err();
        assert_eq!(full.to_string(), "server busy (3 sessions)");
        a.close_session(x);
        assert!(a.open_session(ip("198.18.0.2")).is_ok());
        for s in ["198.18.0.66", "198.18.0.1", "198.18.0.2"] {
            a.close_session(ip(s));
        }
        assert_eq!((a.sessions(), a.sources()), (0, 0));
    }

    #[test]
    fn ports_are_shared_fairly_and_return() {
        let mut a: Admission<()> = Admission::new(8, 4, 25, shares());
        let x = ip("198.18.0.66");
        let taken = (0..100).filter(|_| a.reserve_port(x)).count();
        assert_eq!(taken, 10, "one source gets its share only");
        let honest = (0..100)
            .filter(|_| a.reserve_port(ip("198.18.0.1")))
            .count();
        assert_eq!(honest, 10);
        let third = (0..100)
            .filter(|_| a.reserve_port(ip("198.18.0.2")))
            .count();
        assert_eq!(third, 5, "then the global cap");
        a.release_ports(x, 10);
        a.release_ports(x, 10); // over-release is clamped
        assert_eq!(a.open_ports(), 15);
        a.release_ports(ip("198.18.0.1"), 10);
        a.release_ports(ip("198.18.0.2"), 5);
        assert_eq!((a.open_ports(), a.sources()), (0, 0));
    }

    #[test]
    fn an_ipv6_64_is_one_source() {
        let mut a: Admission<()> = Admission::new(8, 8, 40, shares());
        assert!(a.open_session(ip("fd00::1:1")).is_ok());
        assert!(a.open_session(ip("fd00::2:2")).is_ok());
        assert!(a.open_session(ip("fd00::3:3")).is_err(), "same /64");
        assert!(a.open_session(ip("fd00:0:0:1::1")).is_ok(), "another /64");
        assert_eq!(source_of(ip("::ffff:198.18.0.1")), ip("198.18.0.1"));
    }

    #[test]
    fn whole_message_deadline_ignores_a_trickle() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = MessageDeadline::new(s(30), s(10), t0);
        assert_eq!(d.deadline(), t0 + s(30));
        // `{"proto": "udp` then one byte every 20 s (virtual time).
        d.on_received(14, t0 + s(1));
        assert_eq!(d.deadline(), t0 + s(11));
        for k in 1..5 {
            d.on_received(14 + k, t0 + s(1 + 20 * k as u64));
            assert_eq!(d.deadline(), t0 + s(11), "a byte does not extend it");
        }
        assert!(d.describe().contains("message not completed"));
        // A whole message resets to the idle clock; a leftover starts a new one.
        d.on_consumed(0, t0 + s(5));
        assert_eq!(d.deadline(), t0 + s(35));
        d.on_received(3, t0 + s(6));
        d.on_consumed(1, t0 + s(7));
        assert_eq!(d.deadline(), t0 + s(17));
    }

    #[test]
    fn fair_defaults() {
        let s = Shares::fair(1024, 64, 60_000);
        assert_eq!(
            s,
            Shares {
                handshakes_per_source: 64,
                sessions_per_source: 16,
                ports_per_source: 15_000
            }
        );
        assert_eq!(Shares::fair(4, 1, 1).sessions_per_source, 1);
        assert_eq!(Shares::fair(4, 1, 1).handshakes_per_source, 4);
    }
}
