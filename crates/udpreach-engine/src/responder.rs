//! Every UDP answer the server gives, decided without I/O: the echo port
//! ([`EchoResponder`]) and a session's test, MTU and NAT ports
//! ([`PortResponder`]).
//!
//! Both work in place on the received datagram and answer with
//! [`Answer::Reply`] carrying how many bytes of it to send. That length is
//! never more than what arrived (the module's property test checks it for
//! every kind of input), so the server cannot amplify. What it cannot
//! authenticate it does not answer, and what it answers is rate-limited per
//! source, so it is no use for reflecting floods at a third party.

use crate::rate::{SourceLimiter, TokenBucket};
use crate::replay::ReplayWindow;
use crate::reply_budget::ReplyBudget;
use crate::server::{classify_echo, stamp_reply, EchoAction};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use udpreach_wire::auth::{self, DerivedKey, SharedKey};
use udpreach_wire::probe::{self, ProbeHeader, ProbeKind, ServerStamp};

/// How far an authenticated echo request's send time may be from the
/// server's clock. Must stay well under [`FLOW_IDLE`]: a replay older than
/// the skew is refused by time, a newer one by the flow's replay window.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);
/// Echo flows (source address and token) silent this long are forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(300);
/// Most echo flows remembered at once.
pub const MAX_FLOWS: usize = 65_536;
/// Most sources with a rate-limit bucket at once.
pub const MAX_LIMITED_SOURCES: usize = 16_384;

/// Why a datagram got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than `--max-datagram`.
    TooLarge,
    /// Not a udpreach probe, and plain echo is off (`--no-plain-echo`).
    PlainDisabled,
    /// The server has a key and the datagram carries no tag.
    Unauthenticated,
    /// The tag does not verify.
    BadTag,
    /// Authenticated request whose send time is too far from the server's clock.
    Stale,
    /// Authenticated request seen before.
    Replay,
    /// Over the per-destination reply budget, the plain-echo rate, or the
    /// session's or flow's probe rate.
    RateLimited,
    /// From a source port that is never answered (see [`SourcePorts`]).
    ReflectorPort,
    /// The datagram we echoed to this address a moment ago, come back.
    Loop,
    /// Not from the address of the session that opened the port.
    WrongSource,
    /// Not a request for this socket (a reply, or another session's token).
    NotARequest,
}

/// What to do with one received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send the first `len` bytes of the (rewritten) datagram back to its source.
    Reply {
        /// Bytes of the datagram to send back.
        len: usize,
    },
    /// Do not answer, for this reason.
    Drop(DropReason),
}

/// What the server knows about a received datagram besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Where the datagram came from.
    pub from: SocketAddr,
    /// Its TTL or hop limit on arrival, when the kernel said.
    pub ttl: Option<u8>,
    /// Receive time, ns since the Unix epoch.
    pub rx_ns: u64,
    /// Its TOS byte / traffic class on arrival, when the kernel said: an
    /// echo reply reports it ([`probe::FLAG_TOS_SEEN`]).
    pub tos: Option<u8>,
}

/// Tallies of answers, for the server's periodic log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerCounts {
    /// Datagrams answered.
    pub replies: u64,
    /// Datagrams not answered, by reason.
    pub dropped: HashMap<DropReason, u64>,
}

impl AnswerCounts {
    /// Counts one answer.
    pub fn record(&mut self, a: Answer) {
        match a {
            Answer::Reply { .. } => self.replies += 1,
            Answer::Drop(r) => *self.dropped.entry(r).or_default() += 1,
        }
    }

    /// Datagrams not answered, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Returns the tallies so far and starts again from zero.
    pub fn take(&mut self) -> AnswerCounts {
        std::mem::take(self)
    }
}

/// The echo port's policy (`udpreach server` flags).
#[derive(Clone, Debug)]
pub struct EchoPolicy {
    /// With a key, only authenticated echo requests are answered.
    pub key: Option<SharedKey>,
    /// Answer datagrams that are not udpreach probes (ignored with a key).
    pub plain_echo: bool,
    /// Plain echo replies per second to one source address (within the
    /// per-destination reply budget).
    pub plain_echo_rate: u32,
    /// Probe replies per second per authenticated flow (token).
    pub max_probe_rate: u32,
    /// Larger datagrams are dropped.
    pub max_datagram: usize,
    /// Source ports never answered: see [`SourcePorts`].
    pub source_ports: SourcePorts,
}

/// Source ports the server never answers: an echo or chargen service (7,
/// 19) or another udpreach server would answer back and start a loop.
#[derive(Clone, Debug, Default)]
pub struct SourcePorts {
    /// The server's own ports (echo, control).
    pub own: Vec<u16>,
    /// Also answer sources on 1..=1023 (`--echo-low-ports`); 0, 7, 19 and
    /// the server's own ports stay refused.
    pub allow_low: bool,
}

impl SourcePorts {
    /// True when probes to `port` are not answered for this source.
    pub fn refused(&self, port: u16) -> bool {
        matches!(port, 0 | 7 | 19) || self.own.contains(&port) || (port < 1024 && !self.allow_low)
    }
}

/// Loop detection for plain echo: the same datagram echoed to the same
/// address more than [`LOOP_REPEATS`] times in a row, each within this long
/// of the previous, is taken for a loop (another echo server answering our
/// echo, which answers it back) and not echoed again until the address has
/// been quiet this long. A loop runs at its round-trip time, or at the
/// plain-echo rate; a client that repeats one datagram once a second, its
/// retransmissions and short bursts stay outside it.
pub const LOOP_WINDOW: Duration = Duration::from_millis(250);
/// See [`LOOP_WINDOW`].
pub const LOOP_REPEATS: u32 = 64;
/// Most destinations whose last echoed datagram is remembered for loop detection.
const MAX_LOOP_ENTRIES: usize = 16_384;

struct AuthState {
    key: DerivedKey,
    window: ReplayWindow,
    bucket: TokenBucket,
}

struct Flow {
    count: u32,
    /// Replies withheld (budget, rate), carried mod 256 in the next reply.
    withheld: u32,
    last: Instant,
    /// Present for authenticated flows: the derived key is cached so a known
    /// flow costs one HMAC per datagram, not two.
    auth: Option<Box<AuthState>>,
}

/// The flows of the echo port. Without a key a flow is (source address,
/// token); with one it is the token alone, so a captured probe replayed
/// from any other address meets the same replay window.
type FlowKey = (IpAddr, u64);

/// What was last echoed to one address: its hash, when, and how many times in a row.
#[derive(Clone, Copy, Debug)]
struct Echoed {
    hash: u64,
    last: Instant,
    repeats: u32,
}

/// Decides the echo port's answers: who is answered, how much, how often.
pub struct EchoResponder {
    policy: EchoPolicy,
    plain: SourceLimiter<IpAddr>,
    flows: HashMap<FlowKey, Flow>,
    /// The last datagram echoed to each address (loop detection).
    echoed: HashMap<SocketAddr, Echoed>,
    hasher: RandomState,
    /// What it answered and refused.
    pub counts: AnswerCounts,
}

impl EchoResponder {
    /// A responder with this policy.
    pub fn new(policy: EchoPolicy) -> Self {
        EchoResponder {
            plain: SourceLimiter::new(policy.plain_echo_rate, MAX_LIMITED_SOURCES),
            policy,
            flows: HashMap::new(),
            echoed: HashMap::new(),
            hasher: RandomState::new(),
            counts: AnswerCounts::default(),
        }
    }

    /// The policy it applies.
    pub fn policy(&self) -> &EchoPolicy {
        &self.policy
    }

    /// Flows remembered now (bounded by [`MAX_FLOWS`]).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Decides about one datagram, rewriting `datagram` into the reply when
    /// there is one. `tx_ns` is the send time to stamp (realtime, just
    /// before). Unauthenticated replies draw on `budget`, the server's
    /// per-destination reply budget.
    pub fn respond(
        &mut self,
        datagram: &mut [u8],
        rx: &Received,
        tx_ns: u64,
        budget: &mut ReplyBudget,
        now: Instant,
    ) -> Answer {
        let a = self.decide(datagram, rx, tx_ns, budget, now);
        self.counts.record(a);
        a
    }

    fn decide(
        &mut self,
        buf: &mut [u8],
        rx: &Received,
        tx_ns: u64,
        budget: &mut ReplyBudget,
        now: Instant,
    ) -> Answer {
        if buf.len() > self.policy.max_datagram {
            return Answer::Drop(DropReason::TooLarge);
        }
        if self.policy.source_ports.refused(rx.from.port()) {
            return Answer::Drop(DropReason::ReflectorPort);
        }
        let ip = rx.from.ip();
        let len = buf.len();
        if self.policy.key.is_some() {
            return self.decide_authenticated(buf, rx, tx_ns, now);
        }
        match classify_echo(buf) {
            EchoAction::Drop => Answer::Drop(DropReason::NotARequest),
            EchoAction::Plain | EchoAction::ShortProbe => {
                let short = probe::looks_like_short_probe(buf);
                if !short && !self.policy.plain_echo {
                    return Answer::Drop(DropReason::PlainDisabled);
                }
                // Hashed once, for loop detection (short probes cannot loop).
                let hash = (!short).then(|| self.hasher.hash_one(&*buf));
                if hash.is_some_and(|h| self.is_loop(h, rx.from, now)) {
                    return Answer::Drop(DropReason::Loop);
                }
                // Short probes are ping's: the budget alone limits them.
                if !short && !self.plain.allow(&ip, now) {
                    return Answer::Drop(DropReason::RateLimited);
                }
                if !budget.allow(ip, len, now) {
                    return Answer::Drop(DropReason::RateLimited);
                }
                match hash {
                    Some(h) => self.remember_echo(h, rx.from, now),
                    None => buf[..4].copy_from_slice(&probe::SHORT_REPLY_MAGIC),
                }
                Answer::Reply { len }
            }
            EchoAction::Probe(h) => {
                // Count the arrival first: the count answers "did it get
                // here", and a withheld reply is told to the client.
                let Some(f) = self.flow((ip, h.token), now, || None) else {
                    return Answer::Drop(DropReason::RateLimited);
                };
                f.count = f.count.saturating_add(1);
                if !budget.allow(ip, len, now) {
                    f.withheld = f.withheld.wrapping_add(1);
                    return Answer::Drop(DropReason::RateLimited);
                }
                let (count, withheld) = (f.count, f.withheld);
                stamp_reply(buf, rx.from, rx.ttl, rx.rx_ns, count, withheld as u8);
                if let Some(tos) = rx.tos {
                    probe::set_seen_tos(buf, tos);
                }
                probe::restamp_tx(buf, tx_ns);
                Answer::Reply { len }
            }
        }
    }

    /// True when the datagram hashed to `hash` is what we have echoed to `from` over and over: a
    /// loop with another echo server. A drop keeps the loop marked while
    /// the same datagram keeps coming.
    fn is_loop(&mut self, hash: u64, from: SocketAddr, now: Instant) -> bool {
        match self.echoed.get_mut(&from) {
            Some(e)
                if e.hash == hash
                    && e.repeats >= LOOP_REPEATS
                    && now.saturating_duration_since(e.last) < LOOP_WINDOW =>
            {
                e.last = now;
                true
            }
            _ => false,
        }
    }

    fn remember_echo(&mut self, hash: u64, to: SocketAddr, now: Instant) {
        if self.echoed.len() >= MAX_LOOP_ENTRIES && !self.echoed.contains_key(&to) {
            self.echoed
                .retain(|_, e| now.saturating_duration_since(e.last) < LOOP_WINDOW);
            if self.echoed.len() >= MAX_LOOP_ENTRIES {
                // Forget everything rather than grow: at worst a loop gets
                // another LOOP_REPEATS rounds, still within the budget.
                self.echoed.clear();
            }
        }
        let e = self.echoed.entry(to).or_insert(Echoed {
            hash,
            last: now,
            repeats: 0,
        });
        if e.hash == hash && now.saturating_duration_since(e.last) < LOOP_WINDOW {
            e.repeats += 1;
        } else {
            e.hash = hash;
            e.repeats = 1;
        }
        e.last = now;
    }

    fn decide_authenticated(
        &mut self,
        buf: &mut [u8],
        rx: &Received,
        tx_ns: u64,
        now: Instant,
    ) -> Answer {
        // Plain datagrams and untagged probes alike: nothing to verify, no answer.
        if !auth::is_sealed(buf) {
            return Answer::Drop(DropReason::Unauthenticated);
        }
        let Ok(h) = ProbeHeader::decode(buf) else {
            return Answer::Drop(DropReason::Unauthenticated);
        };
        if h.kind != ProbeKind::EchoRequest {
            return Answer::Drop(DropReason::NotARequest);
        }
        // The flow is the token alone, whatever address it comes from.
        let key = (IpAddr::V6(Ipv6Addr::UNSPECIFIED), h.token);
        let derived = match self.flows.get(&key).and_then(|f| f.auth.as_ref()) {
            Some(a) => a.key.clone(),
            None => match &self.policy.key {
                Some(key) => key.ping_key(h.token),
                None => return Answer::Drop(DropReason::Unauthenticated),
            },
        };
        if derived.verify(buf).is_err() {
            return Answer::Drop(DropReason::BadTag);
        }
        let sent = auth::sent_ns(buf).unwrap_or(0);
        if sent.abs_diff(rx.rx_ns) > MAX_CLOCK_SKEW.as_nanos() as u64 {
            return Answer::Drop(DropReason::Stale);
        }
        let rate = self.policy.max_probe_rate;
        let Some(flow) = self.flow(key, now, || {
            Some(Box::new(AuthState {
                key: derived.clone(),
                window: ReplayWindow::new(),
                bucket: TokenBucket::new(rate, now),
            }))
        }) else {
            return Answer::Drop(DropReason::RateLimited);
        };
        let Some(state) = flow.auth.as_mut() else {
            return Answer::Drop(DropReason::Unauthenticated);
        };
        if !state.window.accept(h.seq) {
            return Answer::Drop(DropReason::Replay);
        }
        flow.count = flow.count.saturating_add(1);
        if !state.bucket.try_take(now) {
            flow.withheld = flow.withheld.wrapping_add(1);
            return Answer::Drop(DropReason::RateLimited);
        }
        let (count, withheld) = (flow.count, flow.withheld);
        stamp_reply(buf, rx.from, rx.ttl, rx.rx_ns, count, withheld as u8);
        if let Some(tos) = rx.tos {
            probe::set_seen_tos(buf, tos);
        }
        probe::restamp_tx(buf, tx_ns);
        if derived.seal(buf).is_err() {
            return Answer::Drop(DropReason::Unauthenticated);
        }
        Answer::Reply { len: buf.len() }
    }

    /// The flow for `key`, created when new. `None` only when the
    /// table is full of live flows even after eviction (cannot happen with
    /// eviction of the older half, but kept total rather than panicking).
    fn flow(
        &mut self,
        key: FlowKey,
        now: Instant,
        auth: impl FnOnce() -> Option<Box<AuthState>>,
    ) -> Option<&mut Flow> {
        if !self.flows.contains_key(&key) && self.flows.len() >= MAX_FLOWS {
            self.evict(now);
            if self.flows.len() >= MAX_FLOWS {
                return None;
            }
        }
        let f = self.flows.entry(key).or_insert_with(|| Flow {
            count: 0,
            withheld: 0,
            last: now,
            auth: auth(),
        });
        f.last = now;
        Some(f)
    }

    /// Forgets idle flows; if the table is still full, the older half.
    /// Only authenticated clients can create authenticated flows, so an
    /// outsider cannot evict a flow (and its replay window) by flooding.
    fn evict(&mut self, now: Instant) {
        self.flows
            .retain(|_, f| now.saturating_duration_since(f.last) < FLOW_IDLE);
        if self.flows.len() >= MAX_FLOWS {
            let mut seen: Vec<Instant> = self.flows.values().map(|f| f.last).collect();
            seen.sort_unstable();
            let cutoff = seen[seen.len() / 2];
            self.flows.retain(|_, f| f.last > cutoff);
        }
    }
}

/// Builds the 64-byte answer to one kind of session probe (`None`: not that
/// kind, or not of the session `token`): `udpreach_wire::mtu::ack_for`, a
/// NAT port's reply.
type HeaderReply = fn(&[u8], u64, ServerStamp) -> Option<[u8; probe::HEADER_LEN]>;

/// What a session port answers, and how.
#[derive(Clone, Copy)]
enum PortKind {
    /// A test port: `PortProbe`s, echoed in place with the server's stamp.
    Test,
    /// The MTU port or a NAT port: a header-sized message built by the
    /// function, whatever the probe's size.
    Header(HeaderReply),
}

/// One port of one control session: answers that session's probes only,
/// from the session's client only, and (with a session key) only with a
/// valid tag and each sequence number once (a replay window). One set of
/// decisions for the three kinds of session port:
/// - a test port ([`Self::new`]): `PortProbe`s echoed in place, counted;
/// - the MTU port ([`Self::mtu_port`]): every `MtuProbe` acknowledged with a
///   64-byte `MtuAck` naming the length that arrived (each MTU probe has its
///   own sequence number, so the replay window loses nothing);
/// - a NAT port ([`Self::nat_port`]): `NatProbe`s answered with the mapping
///   seen (no replay window: a flow's probes repeat its number).
///
/// Answers draw on the session's probe rate; test-port answers without a
/// key, and every MTU and NAT answer, also on the per-destination reply
/// budget. An answer is never longer than its probe.
pub struct PortResponder {
    token: u64,
    key: Option<DerivedKey>,
    /// The session's client: the address its control connection came from,
    /// the only one answered.
    client: IpAddr,
    kind: PortKind,
    /// With a key: refuses a sequence number seen before.
    window: Option<ReplayWindow>,
    arrivals: u32,
    withheld: u32,
    /// What it answered and refused.
    pub counts: AnswerCounts,
}

impl PortResponder {
    /// A test port for the session with `token` and `key`, answering only `client`.
    pub fn new(token: u64, key: Option<DerivedKey>, client: IpAddr) -> Self {
        Self::with_kind(token, key, client, PortKind::Test, true)
    }

    /// The MTU port of a session: acknowledges `MtuProbe`s.
    pub fn mtu_port(token: u64, key: Option<DerivedKey>, client: IpAddr) -> Self {
        let ack = PortKind::Header(udpreach_wire::mtu::ack_for);
        Self::with_kind(token, key, client, ack, true)
    }

    /// A NAT port of a session: answers `NatProbe`s with the mapping seen.
    pub fn nat_port(token: u64, key: Option<DerivedKey>, client: IpAddr) -> Self {
        Self::with_kind(token, key, client, PortKind::Header(nat_reply), false)
    }

    fn with_kind(
        token: u64,
        key: Option<DerivedKey>,
        client: IpAddr,
        kind: PortKind,
        replay_window: bool,
    ) -> Self {
        let window = (key.is_some() && replay_window).then(ReplayWindow::new);
        PortResponder {
            token,
            key,
            client,
            kind,
            window,
            arrivals: 0,
            withheld: 0,
            counts: AnswerCounts::default(),
        }
    }

    /// Probes of this session that arrived (authenticated ones only, with a key).
    pub fn arrivals(&self) -> u32 {
        self.arrivals
    }

    /// Decides the answer to `buf` (received as `rx`), rewriting it in
    /// place. `session_rate` is the session's bucket, shared by all its
    /// ports; `budget` is the server's per-destination reply budget.
    pub fn respond(
        &mut self,
        buf: &mut [u8],
        rx: &Received,
        tx_ns: u64,
        session_rate: &mut TokenBucket,
        budget: &mut ReplyBudget,
        now: Instant,
    ) -> Answer {
        let a = self.decide(buf, rx, tx_ns, session_rate, budget, now);
        self.counts.record(a);
        a
    }

    fn decide(
        &mut self,
        buf: &mut [u8],
        rx: &Received,
        tx_ns: u64,
        session_rate: &mut TokenBucket,
        budget: &mut ReplyBudget,
        now: Instant,
    ) -> Answer {
        if rx.from.ip() != self.client {
            return Answer::Drop(DropReason::WrongSource);
        }
        let Ok(h) = ProbeHeader::decode(buf) else {
            return Answer::Drop(DropReason::NotARequest);
        };
        let mut stamp = ServerStamp {
            rx_ns: rx.rx_ns,
            tx_ns,
            flow_count: 0,
            seen_from: rx.from,
            seen_ttl: rx.ttl.unwrap_or(0),
            withheld: 0,
        };
        let header_reply = match self.kind {
            PortKind::Test if h.kind == ProbeKind::PortProbe && h.token == self.token => None,
            PortKind::Header(reply) => match reply(buf, self.token, stamp) {
                Some(r) => Some(r),
                None => return Answer::Drop(DropReason::NotARequest),
            },
            PortKind::Test => return Answer::Drop(DropReason::NotARequest),
        };
        if let Some(key) = &self.key {
            match key.verify(buf) {
                Ok(()) => {}
                Err(auth::AuthError::BadTag) => return Answer::Drop(DropReason::BadTag),
                Err(_) => return Answer::Drop(DropReason::Unauthenticated),
            }
            if self.window.as_mut().is_some_and(|w| !w.accept(h.seq)) {
                return Answer::Drop(DropReason::Replay);
            }
        }
        // It arrived: count it even if the reply is then rate-limited, since
        // the count answers "did the probe get here".
        self.arrivals = self.arrivals.saturating_add(1);
        let len = match (header_reply, &self.key) {
            (None, _) => buf.len(),
            // A verified tag makes the probe at least this long.
            (Some(_), Some(_)) => auth::MIN_SEALED_LEN,
            // A decoded probe holds a header.
            (Some(_), None) => probe::HEADER_LEN,
        };
        let budgeted = self.key.is_none() || header_reply.is_some();
        if !session_rate.try_take(now) || (budgeted && !budget.allow(self.client, len, now)) {
            self.withheld = self.withheld.wrapping_add(1);
            return Answer::Drop(DropReason::RateLimited);
        }
        match header_reply {
            None => {
                stamp.flow_count = self.arrivals;
                stamp.withheld = self.withheld as u8;
                if probe::make_reply_in_place(buf, &stamp).is_err() {
                    return Answer::Drop(DropReason::NotARequest);
                }
            }
            Some(reply) => {
                let out = &mut buf[..len];
                out.fill(0);
                out[..probe::HEADER_LEN].copy_from_slice(&reply);
            }
        }
        if let Some(key) = &self.key {
            if key.seal(&mut buf[..len]).is_err() {
                return Answer::Drop(DropReason::Unauthenticated);
            }
        }
        Answer::Reply { len }
    }
}

/// A NAT port's answer, only to a probe whose sequence number names a flow.
fn nat_reply(data: &[u8], token: u64, stamp: ServerStamp) -> Option<[u8; probe::HEADER_LEN]> {
    udpreach_wire::nat::probe_flow(data, token)?;
    udpreach_wire::nat::reply_for(data, token, stamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::reply_budget::BudgetRates;

    const NOW_NS: u64 = 1_800_000_000_000_000_000;
    const CLIENT: &str = "198.18.0.1";

    fn policy(key: Option<&str>) -> EchoPolicy {
        EchoPolicy {
            key: key.map(|k| SharedKey::new(k.as_bytes().to_vec()).unwrap()),
            plain_echo: true,
            plain_echo_rate: 10,
            max_probe_rate: 1000,
            max_datagram: 1500,
            source_ports: SourcePorts {
                own: vec![4000],
                allow_low: false,
            },
        }
    }

    fn budget() -> ReplyBudget {
        ReplyBudget::new(BudgetRates::default())
    }

    fn rx(port: u16) -> Received {
        Received {
            from: SocketAddr::new("198.18.0.1".parse().unwrap(), 40_000 + port),
            ttl: Some(64),
            rx_ns: NOW_NS,
            tos: None,
        }
    }

    fn echo_request(
        token: u64,
        seq: u64,
        len: usize,
        key: Option<&DerivedKey>,
        sent: u64,
    ) -> Vec<u8> {
        let mut b = vec![b'x'; len];
        ProbeHeader::request(ProbeKind::EchoRequest, token, seq)
            .encode(&mut b)
            .unwrap();
        if let Some(k) = key {
            auth::set_sent_ns(&mut b, sent);
            k.seal(&mut b).unwrap();
        }
        b
    }

    #[test]
    fn echo_replies_report_the_tos_their_request_arrived_with() {
        let t0 = Instant::now();
        let mut budget = budget();
        let key = SharedKey::new(b"marks".to_vec()).unwrap();
        for keyed in [false, true] {
            let mut r = EchoResponder::new(policy(keyed.then_some("marks")));
            let mut d = vec![0u8; 96];
            let mut h = ProbeHeader::request(ProbeKind::EchoRequest, 3, 1);
            h.flags = probe::FLAG_MARK_REPLY | (u16::from(46u8 << 2) << 8);
            h.encode(&mut d).unwrap();
            let pk = key.ping_key(3);
            if keyed {
                auth::set_sent_ns(&mut d, NOW_NS);
                pk.seal(&mut d).unwrap();
            }
            assert_eq!(probe::reply_tos_asked(&d), Some(46 << 2));
            let arrived = Received {
                tos: Some(10 << 2 | 1),
                ..rx(1)
            };
            let a = r.respond(&mut d, &arrived, NOW_NS, &mut budget, t0);
            assert_eq!(a, Answer::Reply { len: d.len() }, "keyed={keyed}");
            let reply = ProbeHeader::decode(&d).unwrap();
            assert_eq!(reply.kind, ProbeKind::EchoReply);
            assert_eq!(reply.seen_tos(), Some(10 << 2 | 1), "keyed={keyed}");
            if keyed {
                pk.verify(&d).expect("the tag covers the reported TOS");
            }
        }
    }

    #[test]
    fn plain_echo_is_rate_limited_per_source() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut r = EchoResponder::new(policy(None));
        let mut ok = 0;
        for _ in 0..100 {
            let mut d = b"hello".to_vec();
            if let Answer::Reply { len } = r.respond(&mut d, &rx(1), NOW_NS, &mut budget, t0) {
                assert_eq!(&d[..len], b"hello");
                ok += 1;
            }
        }
        assert_eq!(ok, 10, "one second's burst at 10/s");
        let other = Received {
            from: "198.18.0.9:40001".parse().unwrap(),
            ..rx(1)
        };
        assert!(matches!(
            r.respond(&mut b"hi".to_vec(), &other, NOW_NS, &mut budget, t0),
            Answer::Reply { .. }
        ));
        assert_eq!(r.counts.replies, 11);
        assert_eq!(r.counts.dropped[&DropReason::RateLimited], 90);
    }

    #[test]
    fn no_plain_echo_and_max_datagram() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut r = EchoResponder::new(EchoPolicy {
            plain_echo: false,
            ..policy(None)
        });
        assert_eq!(
            r.respond(&mut b"hello".to_vec(), &rx(1), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::PlainDisabled)
        );
        let mut p = echo_request(1, 1, 100, None, 0);
        assert_eq!(
            r.respond(&mut p, &rx(1), NOW_NS, &mut budget, t0),
            Answer::Reply { len: 100 }
        );
        let mut big = echo_request(1, 2, 1501, None, 0);
        assert_eq!(
            r.respond(&mut big, &rx(1), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::TooLarge)
        );
    }

    #[test]
    fn keyed_echo_answers_only_fresh_authenticated_requests_once() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut r = EchoResponder::new(policy(Some("secret")));
        let k = SharedKey::new(b"secret".to_vec()).unwrap().ping_key(42);
        let mut p = echo_request(42, 1, 100, Some(&k), NOW_NS - 1000);
        let original = p.clone();
        assert_eq!(
            r.respond(&mut p, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Reply { len: 100 }
        );
        k.verify(&p).expect("the reply is sealed with the same key");
        let h = ProbeHeader::decode(&p).unwrap();
        assert_eq!(h.kind, ProbeKind::EchoReply);
        assert_eq!(h.stamp.unwrap().flow_count, 1);
        assert_eq!(p[64..84], original[64..84], "payload echoed");

        // The same datagram again: a replay.
        let mut again = original.clone();
        assert_eq!(
            r.respond(&mut again, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::Replay)
        );
        // Untagged probe, plain datagram, wrong key, stale send time.
        let mut untagged = echo_request(42, 2, 100, None, 0);
        assert_eq!(
            r.respond(&mut untagged, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::Unauthenticated)
        );
        assert_eq!(
            r.respond(&mut b"hello".to_vec(), &rx(5), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::Unauthenticated)
        );
        let wrong = SharedKey::new(b"wrong".to_vec()).unwrap().ping_key(42);
        let mut forged = echo_request(42, 3, 100, Some(&wrong), NOW_NS);
        assert_eq!(
            r.respond(&mut forged, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::BadTag)
        );
        let mut old = echo_request(
            43,
            1,
            100,
            Some(&SharedKey::new(b"secret".to_vec()).unwrap().ping_key(43)),
            NOW_NS - 200_000_000_000,
        );
        assert_eq!(
            r.respond(&mut old, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::Stale)
        );
        let mut next = echo_request(42, 2, 100, Some(&k), NOW_NS);
        assert_eq!(
            r.respond(&mut next, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Reply { len: 100 }
        );
        assert_eq!(
            ProbeHeader::decode(&next)
                .unwrap()
                .stamp
                .unwrap()
                .flow_count,
            2
        );
    }

    #[test]
    fn port_responder_checks_token_tag_replay_and_rate() {
        let t0 = Instant::now();
        let mut budget = budget();
        let key = SharedKey::new(b"k".to_vec())
            .unwrap()
            .session_key(&[1; 32], &[2; 32]);
        let mut pr = PortResponder::new(9, Some(key.clone()), CLIENT.parse().unwrap());
        let mut bucket = TokenBucket::new(2, t0);
        let probe = |token: u64, seq: u64, k: Option<&DerivedKey>| {
            let mut b = vec![0u8; 80];
            ProbeHeader::request(ProbeKind::PortProbe, token, seq)
                .encode(&mut b)
                .unwrap();
            if let Some(k) = k {
                k.seal(&mut b).unwrap();
            }
            b
        };
        let mut p = probe(9, 1, Some(&key));
        assert_eq!(
            pr.respond(&mut p, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Reply { len: 80 }
        );
        key.verify(&p).unwrap();
        assert_eq!(ProbeHeader::decode(&p).unwrap().kind, ProbeKind::PortReply);
        let mut replay = probe(9, 1, Some(&key));
        assert_eq!(
            pr.respond(&mut replay, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Drop(DropReason::Replay)
        );
        let mut other_token = probe(8, 2, Some(&key));
        assert_eq!(
            pr.respond(
                &mut other_token,
                &rx(1),
                NOW_NS,
                &mut bucket,
                &mut budget,
                t0
            ),
            Answer::Drop(DropReason::NotARequest)
        );
        let mut untagged = probe(9, 2, None);
        assert_eq!(
            pr.respond(&mut untagged, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Drop(DropReason::Unauthenticated)
        );
        assert_eq!(pr.arrivals(), 1);
        let mut p2 = probe(9, 2, Some(&key));
        assert!(matches!(
            pr.respond(&mut p2, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Reply { .. }
        ));
        let mut p3 = probe(9, 3, Some(&key));
        assert_eq!(
            pr.respond(&mut p3, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Drop(DropReason::RateLimited)
        );
        assert_eq!(pr.arrivals(), 3, "rate-limited probes still arrived");
    }

    #[test]
    fn keyed_probe_replayed_from_any_address_is_refused() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut r = EchoResponder::new(policy(Some("secret")));
        let k = SharedKey::new(b"secret".to_vec()).unwrap().ping_key(42);
        let captured = echo_request(42, 1, 100, Some(&k), NOW_NS);
        let mut p = captured.clone();
        assert!(matches!(
            r.respond(&mut p, &rx(5), NOW_NS, &mut budget, t0),
            Answer::Reply { .. }
        ));
        // The same bytes from 200 other addresses and ports, now and later.
        for i in 0..200u32 {
            let from = SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::from(0xC612_0100 + i)),
                40_000 + i as u16,
            );
            let mut again = captured.clone();
            let at = t0 + Duration::from_millis(u64::from(i) * 500);
            assert_eq!(
                r.respond(
                    &mut again,
                    &Received { from, ..rx(5) },
                    NOW_NS,
                    &mut budget,
                    at
                ),
                Answer::Drop(DropReason::Replay)
            );
        }
        assert_eq!(r.counts.replies, 1);
    }

    fn mtu_probe(token: u64, seq: u64, len: usize, key: Option<&DerivedKey>) -> Vec<u8> {
        let mut b = vec![b'm'; len];
        ProbeHeader::request(ProbeKind::MtuProbe, token, seq)
            .encode(&mut b)
            .unwrap();
        if let Some(k) = key {
            k.seal(&mut b).unwrap();
        }
        b
    }

    fn session_key() -> DerivedKey {
        SharedKey::new(b"secret".to_vec())
            .unwrap()
            .session_key(&[1; auth::NONCE_LEN], &[2; auth::NONCE_LEN])
    }

    #[test]
    fn a_replayed_mtu_probe_gets_no_second_answer() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut rate = TokenBucket::new(1000, t0);
        let key = session_key();
        let client: IpAddr = CLIENT.parse().unwrap();
        let mut r = PortResponder::mtu_port(7, Some(key.clone()), client);
        let captured = mtu_probe(7, 1, 1400, Some(&key));
        let mut p = captured.clone();
        let Answer::Reply { len } = r.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0)
        else {
            panic!("the first copy is answered")
        };
        assert_eq!(len, auth::MIN_SEALED_LEN, "an ack, not the probe");
        key.verify(&p[..len]).expect("the ack is sealed");
        let ack = udpreach_wire::mtu::parse_ack(&p[..len], 7).unwrap();
        assert_eq!((ack.seq, ack.received_len), (1, 1400));
        // The same bytes again, now and later, from the client's other ports:
        // never a second answer.
        for i in 0..50u16 {
            let mut again = captured.clone();
            let at = t0 + Duration::from_millis(u64::from(i) * 100);
            assert_eq!(
                r.respond(&mut again, &rx(i), NOW_NS, &mut rate, &mut budget, at),
                Answer::Drop(DropReason::Replay)
            );
        }
        // Every probe of a search has its own seq: all answered.
        for seq in 2..40 {
            let mut p = mtu_probe(7, seq, 1280, Some(&key));
            assert!(matches!(
                r.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0),
                Answer::Reply { .. }
            ));
        }
        assert_eq!(r.counts.replies, 39);
    }

    #[test]
    fn mtu_and_nat_ports_answer_only_their_client_never_longer_within_budgets() {
        let t0 = Instant::now();
        let client: IpAddr = CLIENT.parse().unwrap();
        let mut budget = budget();
        let mut rate = TokenBucket::new(1000, t0);
        let mut r = PortResponder::mtu_port(7, None, client);
        let stranger = Received {
            from: "198.18.9.9:5000".parse().unwrap(),
            ..rx(1)
        };
        let mut p = mtu_probe(7, 1, 1400, None);
        assert_eq!(
            r.respond(&mut p, &stranger, NOW_NS, &mut rate, &mut budget, t0),
            Answer::Drop(DropReason::WrongSource)
        );
        let mut other_session = mtu_probe(8, 1, 1400, None);
        assert_eq!(
            r.respond(
                &mut other_session,
                &rx(1),
                NOW_NS,
                &mut rate,
                &mut budget,
                t0
            ),
            Answer::Drop(DropReason::NotARequest)
        );
        // Without a key a repeated seq is answered (nothing to authenticate).
        for _ in 0..2 {
            let mut p = mtu_probe(7, 1, 1400, None);
            assert_eq!(
                r.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0),
                Answer::Reply {
                    len: probe::HEADER_LEN
                }
            );
        }
        // With a key, an untagged probe is refused.
        let mut keyed = PortResponder::mtu_port(7, Some(session_key()), client);
        let mut p = mtu_probe(7, 1, 1400, None);
        assert_eq!(
            keyed.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0),
            Answer::Drop(DropReason::Unauthenticated)
        );
        // The session's rate bounds the answers.
        let mut slow = TokenBucket::with_burst(1, 5.0, t0);
        let answered = (0..100)
            .filter(|&seq| {
                let mut p = mtu_probe(7, seq, 100, None);
                matches!(
                    r.respond(&mut p, &rx(1), NOW_NS, &mut slow, &mut budget, t0),
                    Answer::Reply { .. }
                )
            })
            .count();
        assert_eq!(answered, 5);
        // A NAT port answers NAT probes only, a flow's repeats included.
        let mut nat = PortResponder::nat_port(7, None, client);
        let mut p = mtu_probe(7, 1, 100, None);
        assert_eq!(
            nat.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0),
            Answer::Drop(DropReason::NotARequest)
        );
        for _ in 0..2 {
            let mut p = vec![0u8; 64];
            ProbeHeader::request(ProbeKind::NatProbe, 7, 3)
                .encode(&mut p)
                .unwrap();
            assert!(matches!(
                nat.respond(&mut p, &rx(1), NOW_NS, &mut rate, &mut budget, t0),
                Answer::Reply { len: 64 }
            ));
        }
    }

    #[test]
    fn reflector_source_ports_are_never_answered() {
        let t0 = Instant::now();
        let mut budget = budget();
        let mut r = EchoResponder::new(policy(None));
        let from = |port: u16| Received {
            from: SocketAddr::new("198.18.0.1".parse().unwrap(), port),
            ..rx(0)
        };
        for port in [0, 7, 19, 53, 123, 1023, 4000] {
            assert_eq!(
                r.respond(&mut b"x".to_vec(), &from(port), NOW_NS, &mut budget, t0),
                Answer::Drop(DropReason::ReflectorPort),
                "port {port}"
            );
            let mut p = echo_request(1, u64::from(port), 64, None, 0);
            assert_eq!(
                r.respond(&mut p, &from(port), NOW_NS, &mut budget, t0),
                Answer::Drop(DropReason::ReflectorPort)
            );
        }
        assert!(matches!(
            r.respond(&mut b"x".to_vec(), &from(1024), NOW_NS, &mut budget, t0),
            Answer::Reply { .. }
        ));
        let mut low = EchoResponder::new(EchoPolicy {
            source_ports: SourcePorts {
                own: vec![4000],
                allow_low: true,
            },
            ..policy(None)
        });
        assert!(matches!(
            low.respond(&mut b"x".to_vec(), &from(53), NOW_NS, &mut budget, t0),
            Answer::Reply { .. }
        ));
        for port in [7, 19, 4000] {
            assert_eq!(
                low.respond(&mut b"x".to_vec(), &from(port), NOW_NS, &mut budget, t0),
                Answer::Drop(DropReason::ReflectorPort)
            );
        }
    }

    #[test]
    fn two_echo_servers_do_not_bounce_a_datagram() {
        // Server A and server B, on ports other than 7, 19 and each other's:
        // one datagram injected into A as if from B.
        let t0 = Instant::now();
        let mut budget = budget();
        let a_addr: SocketAddr = "198.18.0.2:5000".parse().unwrap();
        let b_addr: SocketAddr = "198.18.0.3:6000".parse().unwrap();
        let fast = EchoPolicy {
            plain_echo_rate: 1000,
            ..policy(None)
        };
        let mut a = EchoResponder::new(fast.clone());
        let mut b = EchoResponder::new(fast);
        let mut d = b"bounce me".to_vec();
        let mut hops = 0;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(5 * i);
            let (server, from) = if i % 2 == 0 {
                (&mut a, b_addr)
            } else {
                (&mut b, a_addr)
            };
            match server.respond(
                &mut d,
                &Received { from, ..rx(0) },
                NOW_NS,
                &mut budget,
                now,
            ) {
                Answer::Reply { .. } => hops += 1,
                Answer::Drop(reason) => {
                    assert_eq!(reason, DropReason::Loop);
                    break;
                }
            }
        }
        assert_eq!(
            hops,
            2 * LOOP_REPEATS,
            "each server echoes it LOOP_REPEATS times, then the loop stops"
        );
        // A short probe: A answers with the reply magic, which B never answers.
        let mut short = vec![b'z'; 20];
        short[..4].copy_from_slice(&probe::SHORT_MAGIC);
        let from_b = Received {
            from: b_addr,
            ..rx(0)
        };
        let from_a = Received {
            from: a_addr,
            ..rx(0)
        };
        assert!(matches!(
            a.respond(&mut short, &from_b, NOW_NS, &mut budget, t0),
            Answer::Reply { .. }
        ));
        assert_eq!(&short[..4], &probe::SHORT_REPLY_MAGIC);
        assert_eq!(
            b.respond(&mut short, &from_a, NOW_NS, &mut budget, t0),
            Answer::Drop(DropReason::NotARequest)
        );
        // A later, separate datagram with the same bytes is answered again.
        let later = t0 + Duration::from_secs(100);
        assert!(matches!(
            a.respond(
                &mut d,
                &Received {
                    from: b_addr,
                    ..rx(0)
                },
                NOW_NS,
                &mut budget,
                later
            ),
            Answer::Reply { .. }
        ));
    }

    #[test]
    fn one_budget_per_destination_whatever_the_header_and_withheld_is_told() {
        let t0 = Instant::now();
        let mut budget = ReplyBudget::new(BudgetRates {
            pps: 100,
            bytes: 1 << 20,
            session_pps: 100_000,
            session_bytes: 1 << 24,
        });
        let mut r = EchoResponder::new(EchoPolicy {
            plain_echo_rate: 1000,
            ..policy(None)
        });
        let victim = Received {
            from: "198.18.0.77:40000".parse().unwrap(),
            ..rx(0)
        };
        // Plain, short and header probes of many tokens, all naming one victim.
        let mut replies = 0;
        for i in 0..3000u64 {
            let mut d = match i % 3 {
                0 => format!("plain {i}").into_bytes(),
                1 => {
                    let mut b = vec![b'y'; 20];
                    b[..4].copy_from_slice(&probe::SHORT_MAGIC);
                    b[4..12].copy_from_slice(&i.to_be_bytes());
                    b
                }
                _ => echo_request(i, i, 64, None, 0),
            };
            if let Answer::Reply { .. } = r.respond(&mut d, &victim, NOW_NS, &mut budget, t0) {
                replies += 1;
            }
        }
        assert_eq!(replies, 100, "one second's budget, whatever the kind");
        // A test port of a session from elsewhere cannot be aimed at the
        // victim either: it answers only its session's client.
        let mut port = PortResponder::new(9, None, CLIENT.parse().unwrap());
        let mut bucket = TokenBucket::new(100_000, t0);
        let mut pp = vec![0u8; 64];
        ProbeHeader::request(ProbeKind::PortProbe, 9, 1)
            .encode(&mut pp)
            .unwrap();
        assert_eq!(
            port.respond(
                &mut pp.clone(),
                &victim,
                NOW_NS,
                &mut bucket,
                &mut budget,
                t0
            ),
            Answer::Drop(DropReason::WrongSource)
        );
        assert!(matches!(
            port.respond(&mut pp, &rx(1), NOW_NS, &mut bucket, &mut budget, t0),
            Answer::Reply { .. }
        ));

        // A ping flow over the budget: the next reply says how many were withheld.
        let me = rx(2);
        let mut got = Vec::new();
        for seq in 0..150u64 {
            let mut d = echo_request(5, seq, 64, None, 0);
            if let Answer::Reply { .. } = r.respond(&mut d, &me, NOW_NS, &mut budget, t0) {
                got.push(ProbeHeader::decode(&d).unwrap().stamp.unwrap());
            }
        }
        assert_eq!(got.len(), 99, "one reply went to the test port above");
        let later = t0 + Duration::from_secs(1);
        let mut d = echo_request(5, 150, 64, None, 0);
        assert!(matches!(
            r.respond(&mut d, &me, NOW_NS, &mut budget, later),
            Answer::Reply { .. }
        ));
        let s = ProbeHeader::decode(&d).unwrap().stamp.unwrap();
        assert_eq!(s.flow_count, 151, "withheld probes arrived and are counted");
        assert_eq!(s.withheld, 51);
    }

    /// Inputs of every kind: random bytes, and headers of every kind byte,
    /// with and without FLAG_AUTH, sealed with the right key, a wrong key, or not.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        let random = proptest::collection::vec(any::<u8>(), 0..200);
        let shaped = (
            any::<u8>(),
            any::<u16>(),
            prop_oneof![Just(7u64), any::<u64>()],
            any::<u64>(),
            0usize..3,
            64usize..200,
            any::<u8>(),
        )
            .prop_map(|(kind, flags, token, seq, seal, len, fill)| {
                let mut b = vec![fill; len];
                b[..4].copy_from_slice(&probe::MAGIC);
                b[4] = probe::VERSION;
                b[5] = kind;
                b[6..8].copy_from_slice(&flags.to_be_bytes());
                b[8..16].copy_from_slice(&token.to_be_bytes());
                b[16..24].copy_from_slice(&seq.to_be_bytes());
                auth::set_sent_ns(&mut b, NOW_NS);
                let secret = SharedKey::new(b"secret".to_vec()).unwrap();
                let key = match seal {
                    0 => Some(secret.ping_key(token)),
                    1 => Some(secret.session_key(&[1; 32], &[2; 32])),
                    _ => None,
                };
                if let Some(k) = key {
                    let _ = k.seal(&mut b);
                }
                b
            });
        prop_oneof![random, shaped]
    }

    proptest! {
        /// No amplification: for every datagram, under every policy, an answer
        /// is at most as long as the request, and is the request's own buffer.
        #[test]
        fn no_answer_is_larger_than_its_request(
            inputs in proptest::collection::vec(datagram(), 1..20),
            keyed in any::<bool>(), plain in any::<bool>(), max_dg in 0usize..300,
        ) {
            let t0 = Instant::now();
            let mut budget = budget();
            let mut echo = EchoResponder::new(EchoPolicy {
                key: keyed.then(|| SharedKey::new(b"secret".to_vec()).unwrap()),
                plain_echo: plain,
                plain_echo_rate: 5,
                max_probe_rate: 5,
                max_datagram: max_dg,
                source_ports: SourcePorts::default(),
            });
            let session = SharedKey::new(b"secret".to_vec()).unwrap().session_key(&[1; 32], &[2; 32]);
            let mut port = PortResponder::new(7, keyed.then_some(session), CLIENT.parse().unwrap());
            let mut bucket = TokenBucket::new(5, t0);
            for (i, input) in inputs.iter().enumerate() {
                let now = t0 + Duration::from_millis(i as u64);
                for which in 0..2 {
                    let mut buf = input.clone();
                    let a = if which == 0 {
                        echo.respond(&mut buf, &rx(1), NOW_NS, &mut budget, now)
                    } else {
                        port.respond(&mut buf, &rx(1), NOW_NS, &mut bucket, &mut budget, now)
                    };
                    if let Answer::Reply { len } = a {
                        prop_assert!(len <= input.len(), "{} > {}", len, input.len());
                        prop_assert_eq!(buf.len(), input.len());
                        if keyed {
                            // Whatever is answered with a key is itself authenticated.
                            prop_assert!(auth::is_sealed(&buf[..len]));
                        }
                    }
                }
            }
        }
    }
}
