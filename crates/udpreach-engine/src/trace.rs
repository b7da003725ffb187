//! `udpreach trace`: TTL-limited probes to several ports at once, and the
//! verdict per port ("passes", "dropped after hop N", "rejected by hop N",
//! "no answer at all"), judged against a control port that is traced
//! alongside.
//!
//! [`TraceProbing`] is the prober. TTLs are queued layer by layer for all
//! ports (TTL-major, so a router's ICMP errors are spread over time), a few
//! beyond the highest TTL that answered until the far end is found, then
//! only up to it; they are sent at a paced rate and retried while their
//! silence is not evidence. The same engine runs on the client (upstream)
//! and on the server (downstream); what "arrived" means is told by the
//! driver (an ack or the server's count upstream, the client's count
//! downstream).
//!
//! Routers limit their ICMP errors (Linux: a burst of six, then one a
//! second per destination), so a silence is evidence only when another
//! probe with the same TTL sent just after it drew an answer (the hop had
//! an error to spare); else the TTL is sent again followed at once by a
//! canary (the control port). A TTL a port has passed (an answer beyond it)
//! is not retried: path evidence is shared across ports, and the limited
//! errors go where a verdict needs them. A hop that answers some probes
//! and not others of ports that went past it is rate limited: its probes go
//! one at a time on its own clock (learned from the spacing of its
//! answers) for [`TraceConfig::patience`]; what is still unconfirmed is
//! [`PortTrace::unsure`], and [`analyse`] calls such a verdict ambiguous.
//!
//! [`analyse`] turns one port's answers into a verdict. The Linux fact it
//! relies on: a router sends "time exceeded" before its forward filter runs,
//! so a router that drops a port still answers TTL-expired probes for it; the
//! last hop that answers for the port is the one that drops (or the link
//! after it). The control port makes that a measured difference: the drop is
//! claimed only where the control port went on; where the evidence cannot
//! tell (a hop that never answers, a control port that stops too), the
//! verdict says so in `ambiguous`.

use crate::engine::Engine;
use crate::rate::TokenBucket;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use udpreach_wire::icmp::{IcmpError, IcmpReason};

/// How to probe.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// TTLs 1..=max_hops.
    pub max_hops: u8,
    /// Sends per TTL before it counts as silent.
    pub attempts: u8,
    /// Probes per second, all ports together.
    pub rate_pps: u32,
    /// Wait per attempt; `None`: four times the slowest answer seen,
    /// between [`MIN_WAIT`] and [`MAX_WAIT`] (one second until the first answer).
    pub wait: Option<Duration>,
    /// How long, from the start, hops that limit their ICMP errors are
    /// still probed on their own clock. What is missing after that is
    /// reported as unsure ([`PortTrace::unsure`]), never guessed.
    pub patience: Duration,
    /// A port known to pass (the control port): probed at every hop, and
    /// sent right after a probe whose silence must be confirmed.
    pub canary: Option<u16>,
    /// The lowest TTL probed (1 but to check ports at a hop already known
    /// from another port's trace).
    pub first_ttl: u8,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            max_hops: 30,
            attempts: 2,
            rate_pps: 1000,
            wait: None,
            patience: DEFAULT_PATIENCE,
            canary: None,
            first_ttl: 1,
        }
    }
}

/// [`TraceConfig::patience`] by default: a hop that allows one error a
/// second (Linux's default) answers sixty ports in that time.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(60);

/// Shortest automatic wait per attempt.
pub const MIN_WAIT: Duration = Duration::from_millis(150);
/// Longest automatic wait per attempt.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// One probe to send: the driver sets the TTL and sends from the port's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceTransmit {
    /// The destination port.
    pub port: u16,
    /// The TTL / hop limit to send with.
    pub ttl: u8,
    /// 0 for the first send of this TTL.
    pub attempt: u8,
}

/// What can come back for a probe, matched by the driver to (port, TTL,
/// attempt) from the quoted probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceInput {
    /// An ICMP error (time exceeded from a hop, unreachable from a hop or
    /// the destination).
    Icmp {
        /// The probe's destination port.
        port: u16,
        /// The probe's TTL.
        ttl: u8,
        /// The probe's attempt (0 for the first send).
        attempt: u8,
        /// The ICMP error.
        error: IcmpError,
    },
    /// The far end confirmed that the probe with this TTL arrived.
    Arrived {
        /// The probe's destination port.
        port: u16,
        /// The probe's TTL.
        ttl: u8,
        /// The probe's attempt (0 for the first send).
        attempt: u8,
    },
}

/// What one TTL of one port drew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HopAnswer {
    /// A hop said the TTL ran out.
    TimeExceeded {
        /// The hop's address, if known.
        from: Option<IpAddr>,
        /// Time from the send to the answer, if known.
        rtt: Option<Duration>,
    },
    /// An ICMP error other than time exceeded (unreachable, frag needed...).
    Error {
        /// The sender's address, if known.
        from: Option<IpAddr>,
        /// What the error means.
        reason: IcmpReason,
        /// The ICMP type.
        icmp_type: u8,
        /// The ICMP code.
        code: u8,
        /// Time from the send to the answer, if known.
        rtt: Option<Duration>,
    },
    /// The probe reached the far end.
    Arrived {
        /// Time from the send to the confirmation, if known.
        rtt: Option<Duration>,
    },
}

impl HopAnswer {
    /// Who sent the ICMP error (`None` for an arrival, or when unknown).
    pub fn from(&self) -> Option<IpAddr> {
        match self {
            HopAnswer::TimeExceeded { from, .. } | HopAnswer::Error { from, .. } => *from,
            HopAnswer::Arrived { .. } => None,
        }
    }

    /// The answer's round-trip time, if known.
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            HopAnswer::TimeExceeded { rtt, .. }
            | HopAnswer::Error { rtt, .. }
            | HopAnswer::Arrived { rtt } => *rtt,
        }
    }

    /// An answer from the ICMP error a probe drew.
    pub fn from_icmp(error: &IcmpError, rtt: Option<Duration>) -> HopAnswer {
        match error.reason() {
            IcmpReason::TimeExceeded => HopAnswer::TimeExceeded {
                from: error.from,
                rtt,
            },
            reason => HopAnswer::Error {
                from: error.from,
                reason,
                icmp_type: error.icmp_type,
                code: error.code,
                rtt,
            },
        }
    }
}

/// Reported as answers come in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// The probe's destination port.
    pub port: u16,
    /// The probe's TTL.
    pub ttl: u8,
    /// What it drew.
    pub answer: HopAnswer,
}

/// Every answer one port drew, by TTL (silent TTLs are absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortTrace {
    /// The destination port.
    pub port: u16,
    /// The answer each TTL drew.
    pub hops: BTreeMap<u8, HopAnswer>,
    /// Probes sent for this port.
    pub sent: u32,
    /// Silent TTLs whose silence is not evidence: no other probe answered
    /// at that hop right after (the hop may have been out of ICMP errors).
    pub unsure: BTreeSet<u8>,
    /// TTLs at which the hop was seen to limit its ICMP errors.
    pub rate_limited: BTreeSet<u8>,
}

impl PortTrace {
    /// The lowest TTL confirmed to arrive (an arrival, or port unreachable
    /// from the destination itself).
    pub fn reached(&self, target: Option<IpAddr>) -> Option<u8> {
        self.hops
            .iter()
            .find(|(_, a)| match a {
                HopAnswer::Arrived { .. } => true,
                HopAnswer::Error { from, reason, .. } => {
                    *reason == IcmpReason::PortUnreachable && target.is_some() && *from == target
                }
                HopAnswer::TimeExceeded { .. } => false,
            })
            .map(|(t, _)| *t)
    }

    fn highest_answer(&self) -> Option<u8> {
        self.hops.keys().next_back().copied()
    }
}

/// Bookkeeping of one TTL of one port.
#[derive(Clone, Debug, Default)]
struct ProbeState {
    /// When each attempt went out (index = the attempt number).
    sends: Vec<Instant>,
    /// When the latest attempt went out, while it waits for an answer: its
    /// deadline is this plus the current wait, which shrinks as soon as
    /// the first answers show how near the hops are.
    waiting_since: Option<Instant>,
    /// The latest attempt went out on its hop's paced clock (shorter wait).
    paced: bool,
    answered: bool,
    /// Send times of the attempts that drew nothing.
    silent: Vec<Instant>,
    /// In the main queue or a hop's queue.
    queued: bool,
}

/// What is known about the hop at one TTL (whoever answers there).
#[derive(Clone, Debug)]
struct HopState {
    /// Send times of the probes with this TTL that drew an answer (any port).
    answered_sends: Vec<Instant>,
    /// A probe with this TTL reached the far end, which confirmed it (not
    /// an ICMP error, so no ICMP rate limit is involved).
    arrived: bool,
    /// When the hop was seen to limit its ICMP errors: it answered some
    /// probes and not others of ports that went on past it.
    limited_since: Option<Instant>,
    /// Ports waiting for a probe that must go with a canary (and, on a
    /// limited hop, on the hop's own clock).
    waiting: VecDeque<usize>,
    /// A limited hop's paced probe out now: (port index, sent at).
    out: Option<(usize, Instant)>,
    /// A limited hop may take the next paced probe from then on.
    free_at: Instant,
    /// When the latest paced probe went out.
    last_out: Instant,
    /// Send time of the latest probe answered since the hop is limited.
    last_paced_answer: Option<Instant>,
    /// Paced probes since then that drew nothing, not even their canary.
    silent_polls: u32,
    /// The spacing of the hop's errors, once measured.
    interval: Option<Duration>,
}

impl HopState {
    fn new(now: Instant) -> Self {
        HopState {
            answered_sends: Vec::new(),
            arrived: false,
            limited_since: None,
            waiting: VecDeque::new(),
            out: None,
            free_at: now,
            last_out: now,
            last_paced_answer: None,
            silent_polls: 0,
            interval: None,
        }
    }

    fn answers(&self) -> bool {
        self.arrived || !self.answered_sends.is_empty()
    }

    /// Did the hop answer a probe sent in the moments after `sent`? Then it
    /// had an error to spare when a silent probe sent at `sent` passed.
    fn confirms(&self, sent: Instant) -> bool {
        self.arrived
            || self
                .answered_sends
                .iter()
                .any(|&a| a >= sent && a <= sent + CONFIRM_WINDOW)
    }

    /// When the next paced probe may go: the limiter's next error is due
    /// an interval after the last one (a little before, to catch it), or
    /// at once while its clock is unknown or being polled for.
    fn paced_due(&self) -> Instant {
        match (self.interval, self.last_paced_answer) {
            (Some(iv), Some(last)) if self.silent_polls == 0 => {
                self.free_at.max(last + iv.mul_f64(0.9))
            }
            // Polling for the error that is due: a twentieth of the
            // interval apart, so a poll costs the hop little.
            (Some(iv), _) => self.free_at.max(self.last_out + iv / 20),
            // Its clock unknown: poll ever more slowly (10 ms doubling up to
            // half a second), so a limiter of one error a second is found
            // within a few polls.
            _ => {
                let spacing = (FIRST_POLL * 2u32.pow(self.silent_polls.min(6))).min(MAX_POLL);
                self.free_at.max(self.last_out + spacing)
            }
        }
    }

    /// An answer to a probe sent at `sent` on a limited hop: learn the
    /// limiter's spacing.
    fn paced_answer(&mut self, sent: Instant) {
        if let Some(last) = self.last_paced_answer {
            if sent > last {
                let gap = sent - last;
                self.interval = Some(match self.interval {
                    // Polled for: the error came one interval after the last.
                    Some(iv) if self.silent_polls > 0 => (iv + gap) / 2,
                    None if self.silent_polls > 0 => gap,
                    // Answered at once: the limiter may allow more.
                    Some(iv) => iv.mul_f64(0.9).max(MIN_INTERVAL),
                    None => return self.note(sent),
                });
            }
        }
        self.note(sent);
    }

    fn note(&mut self, sent: Instant) {
        self.last_paced_answer = Some(self.last_paced_answer.map_or(sent, |l| l.max(sent)));
        self.silent_polls = 0;
    }
}

/// Another probe with the same TTL answered this soon after a silent one:
/// the hop had an error to spare when the silent one passed it.
pub const CONFIRM_WINDOW: Duration = Duration::from_millis(5);
/// TTLs probed beyond the highest one that drew an answer, until the far
/// end is found (paths with a few silent hops in a row still get through).
pub const LOOKAHEAD: u8 = 5;
/// Most sends of one TTL of one port, paced retries and canaries included.
pub const MAX_SENDS: usize = udpreach_wire::trace::MAX_SENDS_PER_TTL as usize;
/// Extra sends (each with a canary) for a silence no answer nearby confirmed.
const EXTRA_UNCONFIRMED: usize = 3;
/// First spacing of the polls of a limited hop whose clock is unknown.
const FIRST_POLL: Duration = Duration::from_millis(10);
/// Widest spacing of those polls.
const MAX_POLL: Duration = Duration::from_millis(500);
/// Shortest spacing of a limited hop's errors.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The prober (see the module docs).
pub struct TraceProbing {
    cfg: TraceConfig,
    start: Instant,
    ports: Vec<u16>,
    /// The configured canary's index.
    canary: Option<usize>,
    /// [port index][ttl - 1]
    probes: Vec<Vec<ProbeState>>,
    /// [ttl - 1]
    hops: Vec<HopState>,
    results: Vec<PortTrace>,
    reached: Vec<Option<u8>>,
    /// Highest TTL that drew an answer, per port (0: none).
    top: Vec<u8>,
    /// Highest TTL that drew an answer for any port.
    top_any: u8,
    /// Lowest TTL at which any port arrived.
    path_end: Option<u8>,
    /// TTL layers queued so far (1..=layers).
    layers: u8,
    queue: VecDeque<(usize, u8)>,
    /// A canary that must go right after the probe just sent.
    follow: Option<TraceTransmit>,
    bucket: TokenBucket,
    next_token: Option<Instant>,
    events: VecDeque<TraceEvent>,
    slowest: Option<Duration>,
    /// The latest instant the engine was told (for the non-mutating `is_done`).
    clock: Instant,
}

impl TraceProbing {
    /// Probes `ports` (duplicates are traced once) from `now`.
    pub fn new(ports: &[u16], mut cfg: TraceConfig, now: Instant) -> Self {
        cfg.max_hops = cfg.max_hops.clamp(1, udpreach_wire::trace::MAX_HOPS);
        cfg.attempts = cfg.attempts.clamp(1, udpreach_wire::trace::MAX_ATTEMPTS);
        cfg.first_ttl = cfg.first_ttl.clamp(1, cfg.max_hops);
        let mut unique = Vec::new();
        for &p in ports {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        let hops = usize::from(cfg.max_hops);
        // A burst of a few milliseconds' worth: a second's worth at once
        // overflows queues on the way (our pace showing up as loss).
        let burst = (f64::from(cfg.rate_pps) / 200.0).max(1.0);
        let mut engine = TraceProbing {
            probes: vec![vec![ProbeState::default(); hops]; unique.len()],
            hops: vec![HopState::new(now); hops],
            results: unique
                .iter()
                .map(|&port| PortTrace {
                    port,
                    ..PortTrace::default()
                })
                .collect(),
            reached: vec![None; unique.len()],
            top: vec![0; unique.len()],
            top_any: cfg.first_ttl - 1,
            path_end: None,
            layers: cfg.first_ttl - 1,
            bucket: TokenBucket::with_burst(cfg.rate_pps, burst, now),
            canary: cfg.canary.and_then(|c| unique.iter().position(|&p| p == c)),
            ports: unique,
            cfg,
            start: now,
            queue: VecDeque::new(),
            follow: None,
            next_token: None,
            events: VecDeque::new(),
            slowest: None,
            clock: now,
        };
        engine.extend_layers();
        engine
    }

    /// The answers so far, one per port in the order given.
    pub fn results(&self) -> Vec<PortTrace> {
        (0..self.ports.len()).map(|i| self.result(i)).collect()
    }

    /// The answers, one per port in the order given.
    pub fn into_results(self) -> Vec<PortTrace> {
        self.results()
    }

    /// TTLs at which hops were seen to limit their ICMP errors.
    pub fn rate_limited_hops(&self) -> Vec<u8> {
        (1..=self.cfg.max_hops)
            .filter(|&t| self.hop(t).limited_since.is_some())
            .collect()
    }

    fn result(&self, i: usize) -> PortTrace {
        let mut r = self.results[i].clone();
        r.unsure = (self.cfg.first_ttl..=self.horizon(i))
            .filter(|t| !r.hops.contains_key(t) && self.confirmed_silences(i, *t) == 0)
            .collect();
        r.rate_limited = self.rate_limited_hops().into_iter().collect();
        r
    }

    fn wait(&self) -> Duration {
        self.cfg.wait.unwrap_or_else(|| match self.slowest {
            Some(s) => (s * 4).clamp(MIN_WAIT, MAX_WAIT),
            None => FIRST_WAIT,
        })
    }

    /// The wait of a paced probe: its answer, if any, comes within a round
    /// trip, and the hop's clock waits on it.
    fn paced_wait(&self) -> Duration {
        let rtt = self.slowest.unwrap_or(Duration::from_millis(50));
        (rtt * 2 + Duration::from_millis(2)).min(self.wait())
    }

    fn hop(&self, ttl: u8) -> &HopState {
        &self.hops[usize::from(ttl - 1)]
    }

    fn hop_mut(&mut self, ttl: u8) -> &mut HopState {
        &mut self.hops[usize::from(ttl - 1)]
    }

    fn probe(&self, i: usize, ttl: u8) -> &ProbeState {
        &self.probes[i][usize::from(ttl - 1)]
    }

    fn probe_mut(&mut self, i: usize, ttl: u8) -> &mut ProbeState {
        &mut self.probes[i][usize::from(ttl - 1)]
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|&p| p == port)
    }

    /// TTLs worth probing for every port: up to where the far end was
    /// found, or a few beyond the highest answer until then.
    fn frontier(&self) -> u8 {
        self.path_end
            .unwrap_or_else(|| self.top_any.saturating_add(LOOKAHEAD))
            .min(self.cfg.max_hops)
    }

    /// TTLs worth probing for port `i`: the frontier, one beyond its own
    /// highest answer (its path may be longer), never beyond its arrival.
    fn horizon(&self, i: usize) -> u8 {
        let h = self
            .frontier()
            .max(self.top[i].saturating_add(1))
            .min(self.cfg.max_hops);
        self.reached[i].map_or(h, |r| h.min(r))
    }

    fn past_patience(&self, now: Instant) -> bool {
        now >= self.start + self.cfg.patience
    }

    /// Silences of (port, TTL) that another answer at the hop right after
    /// confirms: evidence, where an unconfirmed silence may be the hop's
    /// ICMP rate limit.
    fn confirmed_silences(&self, i: usize, ttl: u8) -> usize {
        let hop = self.hop(ttl);
        self.probe(i, ttl)
            .silent
            .iter()
            .filter(|&&s| hop.confirms(s))
            .count()
    }

    /// Is another probe of (port, TTL) worth a send? Not when the port
    /// answered there or beyond (it passed the hop: the hop's silence says
    /// nothing about the port), not beyond its horizon, not in silent TTLs
    /// beyond every answer (the TTLs there are each other's retries).
    fn needed(&self, i: usize, ttl: u8) -> bool {
        let p = self.probe(i, ttl);
        if p.answered || ttl > self.horizon(i) || p.sends.len() >= MAX_SENDS {
            return false;
        }
        // The control port maps the path: every hop of it counts.
        if self.top[i] > ttl && Some(i) != self.canary {
            return false;
        }
        p.sends.is_empty() || ttl <= self.top_any.saturating_add(1)
    }

    fn extend_layers(&mut self) {
        let f = self.frontier();
        while self.layers < f {
            self.layers += 1;
            let ttl = self.layers;
            for i in 0..self.ports.len() {
                self.enqueue_first(i, ttl);
            }
        }
    }

    fn enqueue_first(&mut self, i: usize, ttl: u8) {
        if ttl > self.horizon(i) {
            return;
        }
        let p = self.probe_mut(i, ttl);
        if p.sends.is_empty() && !p.queued && !p.answered {
            p.queued = true;
            self.queue.push_back((i, ttl));
        }
    }

    /// A port whose answers go beyond the frontier (a longer path) is
    /// probed one TTL further.
    fn extend_port(&mut self, i: usize, ttl: u8) {
        if ttl < self.cfg.max_hops && ttl >= self.layers {
            self.enqueue_first(i, ttl + 1);
        }
    }

    /// A port known to pass `ttl`, to send right after a probe whose
    /// silence must be confirmed: the control port if it qualifies.
    fn canary_for(&self, i: usize, ttl: u8) -> Option<usize> {
        let passes =
            |c: usize| c != i && self.top[c] >= ttl && self.probe(c, ttl).sends.len() < MAX_SENDS;
        self.canary
            .filter(|&c| passes(c))
            .or_else(|| (0..self.ports.len()).find(|&c| passes(c)))
    }

    fn transmit(
        &mut self,
        i: usize,
        ttl: u8,
        now: Instant,
        waits: bool,
        paced: bool,
    ) -> TraceTransmit {
        let p = self.probe_mut(i, ttl);
        let attempt = p.sends.len() as u8;
        p.sends.push(now);
        p.queued = false;
        if waits {
            p.waiting_since = Some(now);
            p.paced = paced;
        }
        self.results[i].sent += 1;
        TraceTransmit {
            port: self.ports[i],
            ttl,
            attempt,
        }
    }

    /// Sends (port, TTL) with a canary right after it, so that its silence
    /// can be told from the hop's rate limit.
    fn transmit_pair(&mut self, i: usize, ttl: u8, now: Instant, paced: bool) -> TraceTransmit {
        let t = self.transmit(i, ttl, now, true, paced);
        if let Some(c) = self.canary_for(i, ttl) {
            self.follow = Some(self.transmit(c, ttl, now, false, paced));
        }
        if paced {
            let hop = self.hop_mut(ttl);
            hop.out = Some((i, now));
            hop.last_out = now;
        }
        t
    }

    fn take_token(&mut self, now: Instant) -> bool {
        if self.bucket.try_take(now) {
            self.next_token = None;
            true
        } else {
            let gap = Duration::from_secs_f64(1.0 / f64::from(self.cfg.rate_pps.max(1)));
            self.next_token = Some(now + gap);
            false
        }
    }

    /// The next probe from a hop's queue that is due and still needed.
    fn hop_transmit(&mut self, now: Instant) -> Option<Option<TraceTransmit>> {
        let patience_over = self.past_patience(now);
        for ttl in 1..=self.cfg.max_hops {
            let limited = self.hop(ttl).limited_since.is_some();
            if limited && (patience_over || self.hop(ttl).out.is_some()) {
                continue;
            }
            if limited && self.hop(ttl).paced_due() > now {
                continue;
            }
            while let Some(&i) = self.hop(ttl).waiting.front() {
                if !self.needed(i, ttl) {
                    self.hop_mut(ttl).waiting.pop_front();
                    self.probe_mut(i, ttl).queued = false;
                    continue;
                }
                if !self.take_token(now) {
                    return Some(None);
                }
                self.hop_mut(ttl).waiting.pop_front();
                return Some(Some(self.transmit_pair(i, ttl, now, limited)));
            }
        }
        None
    }

    /// A probe of (port `i`, `ttl`) drew nothing: retry it, plainly, with a
    /// canary, or on the hop's clock, while its silence is not evidence yet.
    fn after_silence(&mut self, i: usize, ttl: u8, sent: Instant, now: Instant) {
        let confirmed = self.hop(ttl).confirms(sent);
        let hop_answers = self.hop(ttl).answers();
        let sends = self.probe(i, ttl).sends.len();
        let attempts = usize::from(self.cfg.attempts);
        // The port went on past the hop, which answers others: it dropped
        // this error. Or a retry with a canary drew nothing at all from a
        // hop that answers others: it had no error to spare.
        let limited = self.top[i] > ttl || (!confirmed && sends > attempts);
        if limited && hop_answers && self.hop(ttl).limited_since.is_none() {
            self.hop_mut(ttl).limited_since = Some(now);
        }
        if !self.needed(i, ttl) || self.confirmed_silences(i, ttl) >= usize::from(self.cfg.attempts)
        {
            return;
        }
        let to_hop = if self.hop(ttl).limited_since.is_some() {
            true
        } else if !confirmed && hop_answers {
            sends < attempts + EXTRA_UNCONFIRMED
        } else {
            if sends < attempts {
                self.probe_mut(i, ttl).queued = true;
                self.queue.push_back((i, ttl));
            }
            false
        };
        if to_hop && !self.probe(i, ttl).queued {
            self.probe_mut(i, ttl).queued = true;
            self.hop_mut(ttl).waiting.push_back(i);
        }
    }

    fn record(
        &mut self,
        port: u16,
        ttl: u8,
        attempt: u8,
        now: Instant,
        error: Option<&IcmpError>,
        is_arrival: bool,
    ) {
        let Some(i) = self.index(port) else { return };
        if ttl == 0 || ttl > self.cfg.max_hops {
            return;
        }
        let sent = self.probe(i, ttl).sends.get(usize::from(attempt)).copied();
        let rtt = sent.map(|t| now.saturating_duration_since(t));
        let answer = match error {
            Some(e) => HopAnswer::from_icmp(e, rtt),
            None if is_arrival => HopAnswer::Arrived { rtt },
            None => return,
        };
        if let Some(r) = rtt {
            self.slowest = Some(self.slowest.map_or(r, |s| s.max(r)));
        }
        {
            let limited = self.hop(ttl).limited_since.is_some();
            let hop = self.hop_mut(ttl);
            if let Some(s) = sent {
                hop.answered_sends.push(s);
                if limited {
                    hop.paced_answer(s);
                }
            }
            if is_arrival {
                hop.arrived = true;
            }
            if hop.out.is_some_and(|(o, _)| o == i) {
                hop.out = None;
                hop.free_at = now;
            }
        }
        let p = self.probe_mut(i, ttl);
        p.answered = true;
        p.waiting_since = None;
        self.top[i] = self.top[i].max(ttl);
        self.top_any = self.top_any.max(ttl);
        if is_arrival {
            self.path_end = Some(self.path_end.map_or(ttl, |e| e.min(ttl)));
        }
        self.extend_port(i, ttl);
        self.extend_layers();
        let hops = &mut self.results[i].hops;
        // The first answer per TTL stands, except that an arrival replaces an
        // ICMP answer (a duplicate or a late error says less).
        let replace = match hops.get(&ttl) {
            None => true,
            Some(HopAnswer::Arrived { .. }) => false,
            Some(_) => matches!(answer, HopAnswer::Arrived { .. }),
        };
        if !replace {
            return;
        }
        if matches!(answer, HopAnswer::Arrived { .. }) {
            self.reached[i] = Some(self.reached[i].map_or(ttl, |r| r.min(ttl)));
        }
        hops.insert(ttl, answer.clone());
        self.events.push_back(TraceEvent { port, ttl, answer });
    }

    /// Something is still queued that may be sent.
    fn sendable(&self) -> bool {
        self.follow.is_some()
            || self.layers < self.frontier()
            || self.queue.iter().any(|&(i, t)| self.needed(i, t))
            || self.hops.iter().enumerate().any(|(h, hop)| {
                let ttl = h as u8 + 1;
                let paced_over = hop.limited_since.is_some() && self.past_patience(self.clock);
                !paced_over && hop.waiting.iter().any(|&i| self.needed(i, ttl))
            })
    }
}

impl Engine for TraceProbing {
    type Input = TraceInput;
    type Transmit = TraceTransmit;
    type Event = TraceEvent;

    fn handle_input(&mut self, input: TraceInput, now: Instant) {
        self.clock = self.clock.max(now);
        match input {
            TraceInput::Icmp {
                port,
                ttl,
                attempt,
                error,
            } => self.record(port, ttl, attempt, now, Some(&error), false),
            TraceInput::Arrived { port, ttl, attempt } => {
                self.record(port, ttl, attempt, now, None, true)
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<TraceTransmit> {
        self.clock = self.clock.max(now);
        if let Some(t) = self.follow.take() {
            // The canary goes right after its probe, token or not.
            let _ = self.bucket.try_take(now);
            return Some(t);
        }
        self.extend_layers();
        match self.hop_transmit(now) {
            Some(Some(t)) => return Some(t),
            Some(None) => return None,
            None => {}
        }
        while let Some(&(i, ttl)) = self.queue.front() {
            if !self.needed(i, ttl) {
                self.queue.pop_front();
                self.probe_mut(i, ttl).queued = false;
                continue;
            }
            if self.hop(ttl).limited_since.is_some() {
                // The hop's clock decides.
                self.queue.pop_front();
                self.hop_mut(ttl).waiting.push_back(i);
                continue;
            }
            if !self.take_token(now) {
                return None;
            }
            self.queue.pop_front();
            return Some(self.transmit(i, ttl, now, true, false));
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let (wait, paced_wait) = (self.wait(), self.paced_wait());
        let deadlines = self
            .probes
            .iter()
            .flatten()
            .filter(|p| !p.answered)
            .filter_map(|p| {
                p.waiting_since
                    .map(|t| t + if p.paced { paced_wait } else { wait })
            })
            .min();
        let paced = self
            .hops
            .iter()
            .filter(|h| h.limited_since.is_some() && h.out.is_none() && !h.waiting.is_empty())
            .map(|h| h.paced_due().min(self.start + self.cfg.patience))
            .min();
        let token = if self.sendable() {
            self.next_token
        } else {
            None
        };
        deadlines.into_iter().chain(paced).chain(token).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        self.next_token = None;
        let (wait, paced_wait) = (self.wait(), self.paced_wait());
        for i in 0..self.ports.len() {
            for ttl in 1..=self.cfg.max_hops {
                let p = self.probe_mut(i, ttl);
                let Some(since) = p.waiting_since else {
                    continue;
                };
                if since + if p.paced { paced_wait } else { wait } > now {
                    continue;
                }
                p.waiting_since = None;
                if p.answered {
                    continue;
                }
                p.silent.push(since);
                let paced = p.paced;
                let hop = self.hop_mut(ttl);
                if paced && hop.out.is_some_and(|(o, _)| o == i) {
                    hop.out = None;
                    hop.free_at = now;
                    if !hop.confirms(since) {
                        // Not even the canary drew an answer: no credit yet.
                        hop.silent_polls += 1;
                    }
                }
                self.after_silence(i, ttl, since, now);
            }
        }
        if self.past_patience(now) {
            for ttl in 1..=self.cfg.max_hops {
                if self.hop(ttl).limited_since.is_some() {
                    for i in std::mem::take(&mut self.hop_mut(ttl).waiting) {
                        self.probe_mut(i, ttl).queued = false;
                    }
                }
            }
        }
    }

    fn poll_event(&mut self) -> Option<TraceEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        !self.sendable()
            && self.hops.iter().all(|h| h.out.is_none())
            && self
                .probes
                .iter()
                .flatten()
                .all(|p| p.answered || p.waiting_since.is_none())
    }
}

/// The verdict on one port in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictKind {
    /// The port reached the far end.
    Passes,
    /// Hops answered up to `last_hop`, then silence while the control port went on.
    DroppedAfter,
    /// A hop or the destination answered with an ICMP error (not time exceeded).
    RejectedBy,
    /// Nothing answered for this port at all.
    NoAnswerAtAll,
}

impl VerdictKind {
    /// The verdict's name in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Passes => "passes",
            VerdictKind::DroppedAfter => "dropped_after",
            VerdictKind::RejectedBy => "rejected_by",
            VerdictKind::NoAnswerAtAll => "no_answer_at_all",
        }
    }
}

/// [`analyse`]'s result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// The verdict.
    pub kind: VerdictKind,
    /// Passes: the TTL at which the port arrived (hop count to the far end).
    pub reached_at: Option<u8>,
    /// The last hop that answered for this port (TTL, address).
    pub last_hop: Option<(u8, Option<IpAddr>)>,
    /// DroppedAfter / NoAnswerAtAll: the first TTL that went silent.
    pub first_silent_ttl: Option<u8>,
    /// RejectedBy: the TTL, sender and ICMP error.
    pub rejected: Option<(u8, HopAnswer)>,
    /// Why the evidence cannot settle where the drop is (`None`: it can).
    pub ambiguous: Option<String>,
}

/// The verdict on `trace`, compared with the `control` port's trace along
/// the same path (see the module docs). `target` is the far end's address:
/// port unreachable from it means the probe arrived.
pub fn analyse(trace: &PortTrace, control: Option<&PortTrace>, target: Option<IpAddr>) -> Analysis {
    let reached = trace.reached(target);
    let rejected = trace
        .hops
        .iter()
        .find(|(t, a)| matches!(a, HopAnswer::Error { .. }) && Some(**t) != reached)
        .map(|(t, a)| (*t, a.clone()));
    let last_answer_below = |limit: Option<u8>| {
        trace
            .hops
            .iter()
            .rfind(|(t, a)| {
                matches!(a, HopAnswer::TimeExceeded { .. }) && limit.is_none_or(|l| **t < l)
            })
            .map(|(t, a)| (*t, a.from()))
    };
    let mut out = Analysis {
        kind: VerdictKind::NoAnswerAtAll,
        reached_at: None,
        last_hop: None,
        first_silent_ttl: None,
        rejected: None,
        ambiguous: None,
    };
    if let Some(r) = reached.filter(|r| rejected.as_ref().is_none_or(|(t, _)| r < t)) {
        out.kind = VerdictKind::Passes;
        out.reached_at = Some(r);
        out.last_hop = last_answer_below(Some(r));
        return out;
    }
    if let Some((t, a)) = rejected {
        out.kind = VerdictKind::RejectedBy;
        out.last_hop = last_answer_below(Some(t));
        out.rejected = Some((t, a));
        return out;
    }
    let control_reach = control.and_then(|c| c.reached(target));
    let control_top = control.and_then(|c| control_reach.or(c.highest_answer()));
    let Some((last, from)) = last_answer_below(None) else {
        out.first_silent_ttl = Some(1);
        out.ambiguous = match (control, control_top) {
            (None, _) => Some("no control port was traced to compare with".into()),
            (Some(_), None) => Some(
                "the control port got no answer either: the path, not the port, may be silent"
                    .into(),
            ),
            (Some(c), Some(_)) if c.hops.contains_key(&1) => Some(
                "hop 1 answered for the control port but never for this port: a filter on this host, or hop 1's ICMP rate limit, cannot be told apart".into(),
            ),
            (Some(_), Some(_)) if trace.unsure.contains(&1) && trace.rate_limited.contains(&1) => Some(
                "hop 1 limits its ICMP errors and never answered a probe of this port while it had one to spare: the drop may be anywhere".into(),
            ),
            (Some(_), Some(_)) => None,
        };
        return out;
    };
    out.kind = VerdictKind::DroppedAfter;
    out.last_hop = Some((last, from));
    let silent = last.saturating_add(1);
    out.first_silent_ttl = Some(silent);
    out.ambiguous = match (control, control_top) {
        (None, _) => Some("no control port was traced to compare with".into()),
        (Some(_), top) if top.is_none_or(|t| t <= last) => Some(format!(
            "the control port's answers stop at hop {} too: the path may end or stop answering there",
            top.unwrap_or(0)
        )),
        (Some(c), _) if !c.hops.contains_key(&silent) => {
            let next = c.hops.range(silent..).next().map(|(t, _)| *t).unwrap_or(silent);
            Some(format!(
                "hop {silent} answers for the control port neither: the drop is somewhere between hop {last} and hop {next}"
            ))
        }
        _ if trace.unsure.contains(&silent) => Some(format!(
            "hop {silent} never answered a probe of this port while it was seen to have an ICMP error to spare{}: the drop is after hop {last}, perhaps after hop {silent}",
            if trace.rate_limited.contains(&silent) { " (it limits its ICMP errors)" } else { "" }
        )),
        _ => None,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Limits, LinkConfig, Sim};
    use std::collections::HashSet;
    use udpreach_wire::icmp::IcmpOrigin;

    /// One simulated router.
    #[derive(Clone)]
    struct Router {
        addr: IpAddr,
        /// Never sends time exceeded (rate limit at zero).
        silent: bool,
        /// Drops these destination ports in its forward chain (after TTL handling).
        drops: HashSet<u16>,
        /// Rejects these ports with admin prohibited.
        rejects: HashSet<u16>,
        /// Sends time exceeded with this probability (ICMP rate limit).
        answer_chance: Option<f64>,
        /// Linux's per-peer ICMP limiter (`inet_peer_xrlim_allow`): one
        /// error per this interval, a burst of six saved up.
        limit: Option<Duration>,
    }

    fn router(last: u8) -> Router {
        Router {
            addr: IpAddr::from([198, 18, 0, last]),
            silent: false,
            drops: HashSet::new(),
            rejects: HashSet::new(),
            answer_chance: None,
            limit: None,
        }
    }

    const TARGET: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 9, 9));

    fn icmp(from: IpAddr, t: u8, code: u8) -> IcmpError {
        IcmpError {
            origin: IcmpOrigin::Icmp4,
            icmp_type: t,
            code,
            info: 0,
            errno: 0,
            from: Some(from),
        }
    }

    /// Runs a trace of `ports` over `routers` (then the server, which
    /// confirms arrival) with per-direction `link` loss and delay per hop.
    fn run(
        ports: &[u16],
        routers: &[Router],
        link: LinkConfig,
        seed: u64,
    ) -> (Vec<PortTrace>, Duration) {
        let cfg = TraceConfig {
            max_hops: 8,
            attempts: 3,
            rate_pps: 2000,
            wait: None,
            patience: DEFAULT_PATIENCE,
            canary: ports.last().copied(),
            first_ttl: 1,
        };
        run_cfg(ports, routers, link, seed, cfg)
    }

    /// [`run`] with a given configuration; the routers' ICMP limiters run
    /// on the simulated clock.
    fn run_cfg(
        ports: &[u16],
        routers: &[Router],
        link: LinkConfig,
        seed: u64,
        cfg: TraceConfig,
    ) -> (Vec<PortTrace>, Duration) {
        let mut sim = Sim::new(seed);
        let mut eng = TraceProbing::new(ports, cfg, sim.now());
        let routers = routers.to_vec();
        // Per router: saved-up time (as Linux counts its tokens) and when.
        let mut limiters: Vec<(Duration, Instant)> = routers
            .iter()
            .map(|r| (r.limit.unwrap_or_default() * 6, sim.now()))
            .collect();
        let out = sim.run(&mut eng, Limits::default(), |sim, t: TraceTransmit| {
            for (i, r) in routers.iter().enumerate() {
                let hop = i as u8 + 1;
                if sim.rng.chance(link.loss) {
                    return;
                }
                let back = link.delay * 2 * u32::from(hop) + sim.rng.duration_up_to(link.jitter);
                let mut allow = |now: Instant| match r.limit {
                    None => true,
                    Some(iv) => {
                        let (tokens, last) = &mut limiters[i];
                        *tokens = (*tokens + now.saturating_duration_since(*last)).min(iv * 6);
                        *last = now;
                        if *tokens >= iv {
                            *tokens -= iv;
                            true
                        } else {
                            false
                        }
                    }
                };
                let now = sim.now() + link.delay * u32::from(hop);
                if t.ttl == hop {
                    if r.silent
                        || r.answer_chance.is_some_and(|c| !sim.rng.chance(c))
                        || !allow(now)
                    {
                        return;
                    }
                    if !sim.rng.chance(link.loss) {
                        let e = icmp(r.addr, 11, 0);
                        sim.deliver_after(
                            back,
                            TraceInput::Icmp {
                                port: t.port,
                                ttl: t.ttl,
                                attempt: t.attempt,
                                error: e,
                            },
                        );
                    }
                    return;
                }
                if r.rejects.contains(&t.port) {
                    if allow(now) && !sim.rng.chance(link.loss) {
                        let e = icmp(r.addr, 3, 13);
                        sim.deliver_after(
                            back,
                            TraceInput::Icmp {
                                port: t.port,
                                ttl: t.ttl,
                                attempt: t.attempt,
                                error: e,
                            },
                        );
                    }
                    return;
                }
                if r.drops.contains(&t.port) {
                    return;
                }
            }
            let back = link.delay * 2 * (routers.len() as u32 + 1);
            if !sim.rng.chance(link.loss) && !sim.rng.chance(link.loss) {
                sim.deliver_after(
                    back,
                    TraceInput::Arrived {
                        port: t.port,
                        ttl: t.ttl,
                        attempt: t.attempt,
                    },
                );
            }
        });
        assert!(out.done, "trace did not finish");
        (eng.into_results(), out.elapsed)
    }

    fn chain() -> Vec<Router> {
        vec![router(1), router(2)]
    }

    #[test]
    fn drop_in_r2_forward_is_dropped_after_r2() {
        let mut rs = chain();
        rs[1].drops.insert(5060);
        let (res, _) = run(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(5)),
            1,
        );
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::DroppedAfter);
        assert_eq!(a.last_hop, Some((2, Some(rs[1].addr))));
        assert_eq!(a.first_silent_ttl, Some(3));
        assert_eq!(a.ambiguous, None);
        let c = analyse(&res[1], None, Some(TARGET));
        assert_eq!(c.kind, VerdictKind::Passes);
        assert_eq!(c.reached_at, Some(3));
        // TTLs went out a few beyond the highest answer until the far end
        // answered at 3 (1..=7 here, with 10 ms between hops); nothing that
        // answered was sent again, and only the dropped port's first silent
        // TTL (3, where the control port arrived) was tried 3 times: the
        // TTLs above the far end say nothing more.
        assert_eq!(res[1].sent, 7);
        assert_eq!(res[0].sent, 7 + 2);
        assert!(res[0].unsure.is_empty(), "{:?}", res[0].unsure);
    }

    #[test]
    fn reject_names_the_router_and_code() {
        let mut rs = chain();
        rs[0].rejects.insert(5060);
        let (res, _) = run(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(5)),
            2,
        );
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::RejectedBy);
        let (ttl, ans) = a.rejected.unwrap();
        assert_eq!(ttl, 2);
        assert_eq!(ans.from(), Some(rs[0].addr));
        assert!(matches!(
            ans,
            HopAnswer::Error {
                reason: IcmpReason::AdminProhibited,
                code: 13,
                ..
            }
        ));
        assert_eq!(a.last_hop, Some((1, Some(rs[0].addr))));
    }

    #[test]
    fn silent_router_gives_an_ambiguous_verdict_not_a_wrong_hop() {
        let mut rs = chain();
        rs[1].silent = true;
        rs[1].drops.insert(5060);
        let (res, _) = run(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(5)),
            3,
        );
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::DroppedAfter);
        assert_eq!(a.last_hop, Some((1, Some(rs[0].addr))));
        let why = a.ambiguous.expect("must say the evidence is ambiguous");
        assert!(why.contains("between hop 1 and hop 3"), "{why}");
        // The control port passes, with hop 2 shown as silent.
        assert!(!res[1].hops.contains_key(&2));
        assert_eq!(
            analyse(&res[1], None, Some(TARGET)).kind,
            VerdictKind::Passes
        );
    }

    #[test]
    fn no_control_or_stopping_control_is_ambiguous() {
        let mut rs = chain();
        rs[1].drops.insert(5060);
        rs[1].drops.insert(4000);
        let (res, _) = run(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(5)),
            4,
        );
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::DroppedAfter);
        assert!(a.ambiguous.unwrap().contains("stop at hop 2 too"));
        assert!(analyse(&res[0], None, Some(TARGET)).ambiguous.is_some());
    }

    #[test]
    fn nothing_answers() {
        let rs: Vec<Router> = chain()
            .into_iter()
            .map(|mut r| {
                r.silent = true;
                r.drops.insert(5060);
                r
            })
            .collect();
        let (res, _) = run(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(5)),
            5,
        );
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::NoAnswerAtAll);
        assert_eq!(a.ambiguous, None, "the control port passed");
    }

    #[test]
    fn verdicts_survive_loss_reordering_and_rate_limited_routers() {
        for seed in 0..20 {
            let mut rs = chain();
            rs[1].drops.insert(5060);
            rs[0].answer_chance = Some(0.7);
            let link = LinkConfig {
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(30),
                loss: 0.03,
                duplicate: 0.05,
            };
            let (res, elapsed) = run(&[5060, 4000], &rs, link, seed);
            let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
            assert_eq!(a.kind, VerdictKind::DroppedAfter, "seed {seed}: {a:?}");
            assert_eq!(a.last_hop, Some((2, Some(rs[1].addr))), "seed {seed}");
            assert!(
                elapsed < Duration::from_secs(10),
                "seed {seed}: {elapsed:?}"
            );
        }
    }

    #[test]
    fn many_ports_all_in_flight_finish_fast() {
        let mut rs = chain();
        let ports: Vec<u16> = (5000..5100).collect();
        for p in (5000..5100).step_by(2) {
            rs[1].drops.insert(p);
        }
        let (res, elapsed) = run(
            &ports,
            &rs,
            LinkConfig::perfect(Duration::from_millis(1)),
            6,
        );
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        let control = res.iter().find(|r| r.port == 5001).unwrap().clone();
        for r in &res {
            let a = analyse(r, Some(&control), Some(TARGET));
            let want = if r.port % 2 == 0 {
                VerdictKind::DroppedAfter
            } else {
                VerdictKind::Passes
            };
            assert_eq!(a.kind, want, "port {}", r.port);
        }
    }

    #[test]
    fn silence_where_hop_1_answers_the_control_port_is_ambiguous() {
        let hop1 = HopAnswer::TimeExceeded {
            from: Some(router(1).addr),
            rtt: None,
        };
        let mut control = PortTrace {
            port: 4000,
            ..PortTrace::default()
        };
        control.hops.insert(1, hop1);
        control.hops.insert(3, HopAnswer::Arrived { rtt: None });
        let silent = PortTrace {
            port: 5060,
            ..PortTrace::default()
        };
        let a = analyse(&silent, Some(&control), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::NoAnswerAtAll);
        assert!(a.ambiguous.unwrap().contains("rate limit"));
    }

    #[test]
    fn port_unreachable_from_the_target_is_arrival() {
        let mut t = PortTrace {
            port: 33434,
            ..PortTrace::default()
        };
        t.hops.insert(
            1,
            HopAnswer::TimeExceeded {
                from: Some(router(1).addr),
                rtt: None,
            },
        );
        t.hops
            .insert(2, HopAnswer::from_icmp(&icmp(TARGET, 3, 3), None));
        let a = analyse(&t, None, Some(TARGET));
        assert_eq!(a.kind, VerdictKind::Passes);
        assert_eq!(a.reached_at, Some(2));
    }

    /// The configuration of the rate-limit tests: control port 4000.
    fn limited_cfg(patience: Duration) -> TraceConfig {
        TraceConfig {
            max_hops: 8,
            attempts: 2,
            rate_pps: 1000,
            wait: None,
            patience,
            canary: Some(4000),
            first_ttl: 1,
        }
    }

    /// Routers that limit their ICMP errors as Linux does by default (one a
    /// second after a burst of six) and a drop at r2 for half of 20 ports:
    /// every drop is placed at r2, paced to the limiters, with no wrong
    /// hop, over a seed sweep with jitter and loss.
    #[test]
    fn rate_limited_routers_are_paced_and_every_drop_is_placed() {
        let ports: Vec<u16> = (5000..5020).chain([4000]).collect();
        for seed in 0..8 {
            let mut rs = chain();
            for r in &mut rs {
                r.limit = Some(Duration::from_secs(1));
            }
            for p in (5000..5020).step_by(2) {
                rs[1].drops.insert(p);
            }
            let link = LinkConfig {
                delay: Duration::from_millis(2),
                jitter: Duration::from_millis(1),
                loss: if seed % 2 == 0 { 0.0 } else { 0.01 },
                duplicate: 0.0,
            };
            let cfg = limited_cfg(DEFAULT_PATIENCE);
            let (res, elapsed) = run_cfg(&ports, &rs, link, seed, cfg);
            let control = res.last().unwrap();
            for r in &res {
                assert!(r.sent as usize <= 8 * MAX_SENDS, "seed {seed}: {r:?}");
            }
            let mut placed = 0;
            for r in &res[..20] {
                let a = analyse(r, Some(control), Some(TARGET));
                if r.port % 2 == 1 {
                    assert_eq!(a.kind, VerdictKind::Passes, "seed {seed} {}: {a:?}", r.port);
                    continue;
                }
                assert_eq!(
                    a.kind,
                    VerdictKind::DroppedAfter,
                    "seed {seed} {}: {a:?}",
                    r.port
                );
                if a.ambiguous.is_none() {
                    assert_eq!(
                        a.last_hop,
                        Some((2, Some(rs[1].addr))),
                        "seed {seed} {}: {r:?}",
                        r.port
                    );
                    placed += 1;
                }
            }
            // Ten errors from r2 at one a second, after its burst.
            assert_eq!(placed, 10, "seed {seed}: {res:?}");
            assert!(
                elapsed < Duration::from_secs(25),
                "seed {seed}: {elapsed:?}"
            );
            assert!(!res[0].rate_limited.is_empty(), "seed {seed}");
        }
    }

    /// Too little patience for the limiters: what is missing makes the
    /// verdict ambiguous, never a wrong hop (r1's answers alone would say
    /// "dropped after hop 1").
    #[test]
    fn rate_limited_routers_without_patience_give_ambiguous_not_wrong() {
        let ports: Vec<u16> = (5000..5020).chain([4000]).collect();
        for seed in 0..8 {
            let mut rs = chain();
            rs[0].limit = Some(Duration::from_millis(100));
            rs[1].limit = Some(Duration::from_secs(1));
            for p in 5000..5020 {
                rs[1].drops.insert(p);
            }
            let cfg = limited_cfg(Duration::from_secs(3));
            let link = LinkConfig::perfect(Duration::from_millis(2));
            let (res, elapsed) = run_cfg(&ports, &rs, link, seed, cfg);
            let control = res.last().unwrap();
            let mut ambiguous = 0;
            for r in &res[..20] {
                let a = analyse(r, Some(control), Some(TARGET));
                match a.ambiguous {
                    None => assert_eq!(
                        a.last_hop,
                        Some((2, Some(rs[1].addr))),
                        "seed {seed} {}: {a:?} {r:?}",
                        r.port
                    ),
                    Some(_) => ambiguous += 1,
                }
            }
            assert!(
                ambiguous > 0,
                "seed {seed}: 3 s cannot place 20 drops at one error a second"
            );
            assert!(elapsed < Duration::from_secs(6), "seed {seed}: {elapsed:?}");
        }
    }

    /// r1 drops the ports and r2 limits its errors: the silence at r2 is
    /// confirmed by the control port sent right after, so the drop is
    /// placed after r1, not guessed.
    #[test]
    fn silence_at_a_rate_limited_hop_is_confirmed_by_a_canary() {
        let ports: Vec<u16> = (5000..5010).chain([4000]).collect();
        for seed in 0..8 {
            let mut rs = chain();
            rs[1].limit = Some(Duration::from_millis(200));
            for p in 5000..5010 {
                rs[0].drops.insert(p);
            }
            let cfg = limited_cfg(DEFAULT_PATIENCE);
            let link = LinkConfig::perfect(Duration::from_millis(2));
            let (res, _) = run_cfg(&ports, &rs, link, seed, cfg);
            let control = res.last().unwrap();
            for r in &res[..10] {
                let a = analyse(r, Some(control), Some(TARGET));
                assert_eq!(a.kind, VerdictKind::DroppedAfter, "seed {seed}: {a:?}");
                assert_eq!(
                    a.last_hop,
                    Some((1, Some(rs[0].addr))),
                    "seed {seed}: {r:?}"
                );
                assert_eq!(a.ambiguous, None, "seed {seed}: {r:?}");
            }
        }
    }

    /// A check at a known hop (`ports --trace`): nothing below `first_ttl`
    /// is sent, and the drop is still placed after r2.
    #[test]
    fn first_ttl_checks_only_from_that_hop() {
        let mut rs = chain();
        rs[1].drops.insert(5060);
        let cfg = TraceConfig {
            max_hops: 3,
            first_ttl: 2,
            ..limited_cfg(DEFAULT_PATIENCE)
        };
        let (res, _) = run_cfg(
            &[5060, 4000],
            &rs,
            LinkConfig::perfect(Duration::from_millis(2)),
            1,
            cfg,
        );
        assert!(res.iter().all(|r| !r.hops.contains_key(&1)), "{res:?}");
        let a = analyse(&res[0], Some(&res[1]), Some(TARGET));
        assert_eq!(a.kind, VerdictKind::DroppedAfter);
        assert_eq!(a.last_hop, Some((2, Some(rs[1].addr))));
        assert_eq!(a.ambiguous, None);
        // TTL 2 once, the silent TTL 3 twice; the control port TTL 2 and 3.
        assert_eq!(res[0].sent, 3);
        assert_eq!(res[1].sent, 2);
    }
}
