//! `udpreach trace`: TTL-limited probes to several ports at once, and the
//! verdict per port ("passes", "dropped after hop N", "rejected by hop N",
//! "no answer at all"), judged against a control port that is traced
//! alongside.
//!
//! [`TraceProbing`] is the prober: every TTL of every port is queued at the
//! start (TTL-major, so a router's ICMP rate limit is spread over time), sent
//! at a paced rate, retried when nothing answers, and stops probing a port
//! above the TTL at which it was confirmed to arrive. The same engine runs on
//! the client (upstream) and on the server (downstream); what "arrived" means
//! is told by the driver (an ack or the server's count upstream, the
//! client's count downstream).
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
use std::collections::{BTreeMap, VecDeque};
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
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            max_hops: 30,
            attempts: 2,
            rate_pps: 1000,
            wait: None,
        }
    }
}

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

#[derive(Clone, Debug, Default)]
struct ProbeState {
    sent: u8,
    sent_at: [Option<Instant>; udpreach_wire::trace::MAX_ATTEMPTS as usize],
    /// When the latest attempt went out, while it waits for an answer: its
    /// deadline is this plus the current wait, which shrinks as soon as
    /// the first answers show how near the hops are.
    waiting_since: Option<Instant>,
    answered: bool,
}

/// The prober (see the module docs).
pub struct TraceProbing {
    cfg: TraceConfig,
    ports: Vec<u16>,
    /// [port index][ttl - 1]
    probes: Vec<Vec<ProbeState>>,
    results: Vec<PortTrace>,
    reached: Vec<Option<u8>>,
    queue: VecDeque<(usize, u8)>,
    bucket: TokenBucket,
    next_token: Option<Instant>,
    events: VecDeque<TraceEvent>,
    slowest: Option<Duration>,
}

impl TraceProbing {
    /// Probes `ports` (duplicates are traced once) from `now`.
    pub fn new(ports: &[u16], mut cfg: TraceConfig, now: Instant) -> Self {
        cfg.max_hops = cfg.max_hops.clamp(1, udpreach_wire::trace::MAX_HOPS);
        cfg.attempts = cfg.attempts.clamp(1, udpreach_wire::trace::MAX_ATTEMPTS);
        let mut unique = Vec::new();
        for &p in ports {
            if !unique.contains(&p) {
                unique.push(p);
            }
        }
        let hops = usize::from(cfg.max_hops);
        let mut queue = VecDeque::with_capacity(unique.len() * hops);
        for ttl in 1..=cfg.max_hops {
            for i in 0..unique.len() {
                queue.push_back((i, ttl));
            }
        }
        TraceProbing {
            probes: vec![vec![ProbeState::default(); hops]; unique.len()],
            results: unique
                .iter()
                .map(|&port| PortTrace {
                    port,
                    ..PortTrace::default()
                })
                .collect(),
            reached: vec![None; unique.len()],
            bucket: TokenBucket::new(cfg.rate_pps, now),
            ports: unique,
            cfg,
            queue,
            next_token: None,
            events: VecDeque::new(),
            slowest: None,
        }
    }

    /// The answers so far, one per port in the order given.
    pub fn results(&self) -> &[PortTrace] {
        &self.results
    }

    /// The answers, one per port in the order given.
    pub fn into_results(self) -> Vec<PortTrace> {
        self.results
    }

    fn wait(&self) -> Duration {
        self.cfg.wait.unwrap_or_else(|| match self.slowest {
            Some(s) => (s * 4).clamp(MIN_WAIT, MAX_WAIT),
            None => FIRST_WAIT,
        })
    }

    fn index(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|&p| p == port)
    }

    /// Beyond the TTL at which the port was seen to arrive: nothing to learn.
    fn beyond_reach(&self, i: usize, ttl: u8) -> bool {
        self.reached[i].is_some_and(|r| ttl > r)
    }

    fn record(
        &mut self,
        port: u16,
        ttl: u8,
        attempt: u8,
        now: Instant,
        arrived: Option<&IcmpError>,
        is_arrival: bool,
    ) {
        let Some(i) = self.index(port) else { return };
        if ttl == 0 || ttl > self.cfg.max_hops {
            return;
        }
        let p = &mut self.probes[i][usize::from(ttl - 1)];
        let rtt = p
            .sent_at
            .get(usize::from(attempt))
            .copied()
            .flatten()
            .map(|t| now.saturating_duration_since(t));
        p.answered = true;
        p.waiting_since = None;
        if let Some(r) = rtt {
            self.slowest = Some(self.slowest.map_or(r, |s| s.max(r)));
        }
        let answer = match arrived {
            Some(e) => HopAnswer::from_icmp(e, rtt),
            None if is_arrival => HopAnswer::Arrived { rtt },
            None => return,
        };
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
}

impl Engine for TraceProbing {
    type Input = TraceInput;
    type Transmit = TraceTransmit;
    type Event = TraceEvent;

    fn handle_input(&mut self, input: TraceInput, now: Instant) {
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
        while let Some(&(i, ttl)) = self.queue.front() {
            let p = &self.probes[i][usize::from(ttl - 1)];
            if p.answered || self.beyond_reach(i, ttl) {
                self.queue.pop_front();
                continue;
            }
            if !self.bucket.try_take(now) {
                let gap = Duration::from_secs_f64(1.0 / f64::from(self.cfg.rate_pps.max(1)));
                self.next_token = Some(now + gap);
                return None;
            }
            self.next_token = None;
            self.queue.pop_front();
            let p = &mut self.probes[i][usize::from(ttl - 1)];
            let attempt = p.sent;
            p.sent_at[usize::from(attempt)] = Some(now);
            p.sent += 1;
            p.waiting_since = Some(now);
            self.results[i].sent += 1;
            return Some(TraceTransmit {
                port: self.ports[i],
                ttl,
                attempt,
            });
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let wait = self.wait();
        let deadlines = self
            .probes
            .iter()
            .flatten()
            .filter(|p| !p.answered)
            .filter_map(|p| p.waiting_since)
            .min()
            .map(|t| t + wait);
        let token = if self.queue.is_empty() {
            None
        } else {
            self.next_token
        };
        deadlines.into_iter().chain(token).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.next_token = None;
        let wait = self.wait();
        for i in 0..self.ports.len() {
            for ttl in 1..=self.cfg.max_hops {
                let beyond = self.beyond_reach(i, ttl);
                let attempts = self.cfg.attempts;
                let p = &mut self.probes[i][usize::from(ttl - 1)];
                let Some(since) = p.waiting_since else {
                    continue;
                };
                if since + wait > now {
                    continue;
                }
                p.waiting_since = None;
                if !p.answered && !beyond && p.sent < attempts {
                    self.queue.push_back((i, ttl));
                }
            }
        }
    }

    fn poll_event(&mut self) -> Option<TraceEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.queue.is_empty()
            && self.probes.iter().enumerate().all(|(i, ps)| {
                ps.iter().enumerate().all(|(t, p)| {
                    p.answered || p.waiting_since.is_none() || self.beyond_reach(i, t as u8 + 1)
                })
            })
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
    }

    fn router(last: u8) -> Router {
        Router {
            addr: IpAddr::from([198, 18, 0, last]),
            silent: false,
            drops: HashSet::new(),
            rejects: HashSet::new(),
            answer_chance: None,
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
        let mut sim = Sim::new(seed);
        let cfg = TraceConfig {
            max_hops: 8,
            attempts: 3,
            rate_pps: 2000,
            wait: None,
        };
        let mut eng = TraceProbing::new(ports, cfg, sim.now());
        let routers = routers.to_vec();
        let out = sim.run(&mut eng, Limits::default(), |sim, t: TraceTransmit| {
            for (i, r) in routers.iter().enumerate() {
                let hop = i as u8 + 1;
                if sim.rng.chance(link.loss) {
                    return;
                }
                let back = link.delay * 2 * u32::from(hop);
                if t.ttl == hop {
                    if r.silent || r.answer_chance.is_some_and(|c| !sim.rng.chance(c)) {
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
                    if !sim.rng.chance(link.loss) {
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
        // Every TTL went out at once; nothing that answered was sent again,
        // and the silent TTLs of the dropped port were tried 3 times each.
        assert_eq!(res[1].sent, 8);
        assert_eq!(res[0].sent, 2 + 6 * 3);
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
}
