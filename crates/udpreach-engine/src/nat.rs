//! The idle-timeout search of `udpreach nat`, sans-I/O.
//!
//! A *flow* is one fresh client socket. It is opened with traffic to the
//! server (one request and its reply, or requests and replies for
//! [`IdleSearchConfig::active_for`] for an active flow), then goes silent;
//! the server is asked (over the control channel) to send one datagram to
//! the flow's mapped address `gap` after its last reply. If the datagram
//! arrives, the NAT binding (or firewall state) survived `gap` of silence.
//!
//! Many flows with different gaps run in parallel: a first round with gaps
//! doubling from [`IdleSearchConfig::min_gap`] up to
//! [`IdleSearchConfig::max_idle`], then rounds of evenly spaced gaps inside
//! the bracket (longest gap that survived, shortest that expired) until it is
//! at most max(1 s, 10 %) wide. A round ends as soon as its informative flows
//! are decided: once a gap has expired, flows waiting on longer gaps are
//! closed, so a 30 s timeout costs about 33 s + 33 s, not the 300 s of the
//! longest first-round gap.
//!
//! Loss must not read as expiry: every gap is tested by
//! [`IdleSearchConfig::flows_per_gap`] flows, one arrival proves survival, and
//! a gap counts as expired only when every one of its flows missed. A lost
//! opening exchange is retransmitted; a flow that cannot be opened is tested
//! again on a new socket. When the evidence contradicts itself (a longer gap
//! survives after a shorter one expired) the survival wins and the search
//! goes on above it.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::engine::Engine;

/// Most rounds a search runs, whatever happens.
pub const MAX_ROUNDS: u32 = 12;

/// Which traffic a flow carries before it goes silent; Linux conntrack (and
/// many NATs) use a short timer for the first and a long one for the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// One request, one reply.
    OneExchange,
    /// Requests and replies for a few seconds.
    ActiveFlow,
}

/// How an [`IdleSearch`] runs.
#[derive(Clone, Debug)]
pub struct IdleSearchConfig {
    /// Which traffic each flow carries before it goes silent.
    pub kind: FlowKind,
    /// Longest gap tested.
    pub max_idle: Duration,
    /// Shortest gap tested.
    pub min_gap: Duration,
    /// Gaps per bisection round.
    pub gaps_per_round: usize,
    /// Flows (sockets) per gap: all must miss for the gap to count as expired.
    pub flows_per_gap: u32,
    /// How long after `gap` the server's datagram may still arrive.
    pub grace: Duration,
    /// Retransmission interval of the opening exchange (and the pace of an
    /// active flow's requests).
    pub retransmit: Duration,
    /// Requests sent without any reply before a flow is given up.
    pub open_tries: u32,
    /// How long an active flow exchanges traffic before going silent.
    pub active_for: Duration,
    /// Most flows the whole search may open.
    pub max_flows: u32,
    /// Flow ids start here (two searches can share one server session).
    pub first_flow: u32,
    /// One gap at a time, doubling then bisecting: what a script would do
    /// (for comparison in benchmarks).
    pub serial: bool,
}

impl IdleSearchConfig {
    /// The defaults for `kind` up to `max_idle`: gaps from 1 s, 8 gaps per
    /// round, 3 flows per gap, 1 s grace, 500 ms retransmission, 4 opening
    /// tries, 3 s of activity, at most 400 flows, parallel rounds.
    pub fn new(kind: FlowKind, max_idle: Duration) -> Self {
        IdleSearchConfig {
            kind,
            max_idle,
            min_gap: Duration::from_secs(1),
            gaps_per_round: 8,
            flows_per_gap: 3,
            grace: Duration::from_secs(1),
            retransmit: Duration::from_millis(500),
            open_tries: 4,
            active_for: Duration::from_secs(3),
            max_flows: 400,
            first_flow: 0,
            serial: false,
        }
    }

    /// The widest bracket that ends the search: max(1 s, 10 % of the
    /// longest gap that survived).
    pub fn precision(survived: Duration) -> Duration {
        Duration::from_secs(1).max(survived / 10)
    }
}

/// What comes back to a flow's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleInput {
    /// The server's reply to one of the flow's requests.
    Reply {
        /// The flow whose socket received it.
        flow: u32,
    },
    /// The server's datagram sent after the idle gap.
    Arrived {
        /// The flow whose socket received it.
        flow: u32,
    },
}

/// What the driver must do for the search: send on a flow's socket, ask
/// the server (over the control channel), or close a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleTransmit {
    /// Send one request on the flow's socket (open the socket first time).
    Request {
        /// The flow to send on.
        flow: u32,
    },
    /// Ask the server to send to the flow `gap` after its last reply to it.
    Schedule {
        /// The flow the server is to send to.
        flow: u32,
        /// How long after its last reply to the flow the server sends.
        gap: Duration,
    },
    /// The flow is finished: close its socket.
    Close {
        /// The flow whose socket to close.
        flow: u32,
    },
}

/// Progress of the search, and its answer.
#[derive(Clone, Debug, PartialEq)]
pub enum IdleEvent {
    /// A round started with these gaps; `deadline` is when its longest gap
    /// ends (for a progress display).
    Round {
        /// The round's number, from 1.
        round: u32,
        /// The gaps tested in this round.
        gaps: Vec<Duration>,
        /// When the round's longest gap (and its grace) ends.
        deadline: Instant,
    },
    /// Every flow of a gap is decided.
    Gap {
        /// The gap.
        gap: Duration,
        /// Whether the server's datagram arrived on at least one of its flows.
        survived: bool,
    },
    /// The search is over, with its answer.
    Done(IdleResult),
}

/// The answer for one kind of flow.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct IdleResult {
    /// The kind of flow tested.
    pub kind: FlowKind,
    /// Longest gap after which the server's datagram arrived (s); null when
    /// none did.
    pub survived_s: Option<f64>,
    /// Shortest gap after which no datagram arrived on any of its flows (s);
    /// null when none expired (up to `max_idle_s`).
    pub expired_s: Option<f64>,
    /// Longest gap tested (s).
    pub max_idle_s: f64,
    /// Rounds run.
    pub rounds: u32,
    /// Flows (sockets) opened.
    pub flows: u32,
    /// Why the answer is incomplete, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Opening {
        sent: u32,
        next_send: Instant,
        first_reply: Option<Instant>,
        last_reply: Option<Instant>,
    },
    Waiting {
        deadline: Instant,
    },
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    gap: Duration,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, Default)]
struct GapStat {
    arrived: u32,
    missed: u32,
    live: u32,
}

/// The idle-timeout search for one kind of flow (see the module docs).
pub struct IdleSearch {
    cfg: IdleSearchConfig,
    flows: HashMap<u32, Flow>,
    gaps: BTreeMap<Duration, GapStat>,
    next_flow: u32,
    opened: u32,
    round: u32,
    transmits: VecDeque<IdleTransmit>,
    events: VecDeque<IdleEvent>,
    result: Option<IdleResult>,
    started: bool,
}

impl IdleSearch {
    /// A search configured by `cfg`; nothing is sent before it is polled.
    pub fn new(cfg: IdleSearchConfig) -> Self {
        IdleSearch {
            next_flow: cfg.first_flow,
            cfg,
            flows: HashMap::new(),
            gaps: BTreeMap::new(),
            opened: 0,
            round: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            result: None,
            started: false,
        }
    }

    /// The answer, once the search is done.
    pub fn result(&self) -> Option<&IdleResult> {
        self.result.as_ref()
    }

    /// The kind of flow this search tests.
    pub fn kind(&self) -> FlowKind {
        self.cfg.kind
    }

    /// True when `flow` belongs to this search (and is still live).
    pub fn owns(&self, flow: u32) -> bool {
        self.flows.contains_key(&flow)
    }

    /// Stops the search now with what is known, closing every flow.
    pub fn abort(&mut self, reason: &str) {
        let ids: Vec<u32> = self.flows.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
        if self.result.is_none() {
            self.finish(Some(reason.to_string()));
        }
    }

    /// The first round: gaps doubling from `min_gap`, and `max_idle`.
    fn first_gaps(&self) -> Vec<Duration> {
        if self.cfg.serial {
            return vec![self.cfg.min_gap.min(self.cfg.max_idle)];
        }
        let mut gaps = Vec::new();
        let mut g = self.cfg.min_gap.max(Duration::from_millis(100));
        while g < self.cfg.max_idle {
            gaps.push(g);
            g *= 2;
        }
        gaps.push(self.cfg.max_idle);
        gaps
    }

    /// Longest gap that survived, and shortest above it that expired.
    fn bracket(&self) -> (Option<Duration>, Option<Duration>) {
        let survived = self
            .gaps
            .iter()
            .filter(|(_, s)| s.arrived > 0)
            .map(|(g, _)| *g)
            .next_back();
        let expired = self
            .gaps
            .iter()
            .filter(|(g, s)| {
                s.arrived == 0 && s.live == 0 && s.missed > 0 && survived.is_none_or(|v| **g > v)
            })
            .map(|(g, _)| *g)
            .next();
        (survived, expired)
    }

    fn start_round(&mut self, gaps: Vec<Duration>, now: Instant) {
        self.round += 1;
        let mut deadline = now;
        for &gap in &gaps {
            for _ in 0..self.cfg.flows_per_gap {
                if self.opened >= self.cfg.max_flows {
                    break;
                }
                self.open_flow(gap, now);
            }
            deadline = deadline.max(now + self.cfg.active_for + gap + self.cfg.grace);
        }
        self.events.push_back(IdleEvent::Round {
            round: self.round,
            gaps,
            deadline,
        });
    }

    fn open_flow(&mut self, gap: Duration, now: Instant) {
        let id = self.next_flow;
        self.next_flow = self.next_flow.wrapping_add(1);
        self.opened += 1;
        self.gaps.entry(gap).or_default().live += 1;
        self.flows.insert(
            id,
            Flow {
                gap,
                phase: Phase::Opening {
                    sent: 0,
                    next_send: now,
                    first_reply: None,
                    last_reply: None,
                },
            },
        );
    }

    fn close(&mut self, id: u32) {
        if let Some(f) = self.flows.remove(&id) {
            if let Some(s) = self.gaps.get_mut(&f.gap) {
                s.live = s.live.saturating_sub(1);
            }
            self.transmits.push_back(IdleTransmit::Close { flow: id });
        }
    }

    /// Records a decided flow and what follows from it.
    fn decide(&mut self, id: u32, arrived: Option<bool>) {
        let Some(gap) = self.flows.get(&id).map(|f| f.gap) else {
            return;
        };
        self.close(id);
        let stat = self.gaps.entry(gap).or_default();
        match arrived {
            Some(true) => stat.arrived += 1,
            Some(false) => stat.missed += 1,
            None => {}
        }
        let stat = *stat;
        if stat.live == 0 && stat.arrived + stat.missed > 0 {
            self.events.push_back(IdleEvent::Gap {
                gap,
                survived: stat.arrived > 0,
            });
        }
        // Flows waiting on gaps longer than one that expired tell nothing.
        if let (_, Some(expired)) = self.bracket() {
            let moot: Vec<u32> = self
                .flows
                .iter()
                .filter(|(_, f)| f.gap > expired)
                .map(|(id, _)| *id)
                .collect();
            for id in moot {
                self.close(id);
            }
        }
    }

    /// Between rounds: done, or the next round's gaps.
    fn next_round(&mut self, now: Instant) {
        let (survived, expired) = self.bracket();
        let lo = survived.unwrap_or(Duration::ZERO);
        let hi = match expired {
            Some(e) => e,
            None if survived.is_some_and(|s| s >= self.cfg.max_idle) => {
                return self.finish(None);
            }
            None => self.cfg.max_idle,
        };
        if survived.is_none() && expired.is_some_and(|e| e <= self.cfg.min_gap) {
            return self.finish(None);
        }
        if expired.is_some() && hi.saturating_sub(lo) <= IdleSearchConfig::precision(lo) {
            return self.finish(None);
        }
        if self.round >= MAX_ROUNDS {
            return self.finish(Some(format!("no answer after {MAX_ROUNDS} rounds")));
        }
        if self.opened >= self.cfg.max_flows {
            return self.finish(Some(format!(
                "no answer within {} flows (the path loses most datagrams?)",
                self.cfg.max_flows
            )));
        }
        if self.cfg.serial {
            let next = match expired {
                None => (lo * 2).min(self.cfg.max_idle),
                Some(_) => Duration::from_millis(((lo + hi) / 2).as_millis() as u64 / 100 * 100),
            };
            if next <= lo || next >= hi && expired.is_some() {
                return self.finish(None);
            }
            return self.start_round(vec![next], now);
        }
        let k = self.cfg.gaps_per_round.max(1) as u32;
        let mut gaps: Vec<Duration> = (1..=k)
            .map(|i| lo + (hi - lo) * i / (k + 1))
            .map(|g| Duration::from_millis(g.as_millis() as u64 / 100 * 100))
            .filter(|g| *g > lo && *g < hi && *g >= self.cfg.min_gap.min(hi))
            .collect();
        if expired.is_none() {
            // The longest gap has not been decided (its flows failed): again.
            gaps.push(hi);
        }
        gaps.dedup();
        if gaps.is_empty() {
            return self.finish(None);
        }
        self.start_round(gaps, now);
    }

    fn finish(&mut self, reason: Option<String>) {
        let (survived, expired) = self.bracket();
        let reason = reason.or_else(|| match (survived, expired) {
            (Some(_), None) => Some(format!(
                "no binding expired within --max-idle {} s",
                self.cfg.max_idle.as_secs_f64()
            )),
            (None, None) => Some("no flow could be tested".into()),
            _ => None,
        });
        let result = IdleResult {
            kind: self.cfg.kind,
            survived_s: survived.map(|d| d.as_secs_f64()),
            expired_s: expired.map(|d| d.as_secs_f64()),
            max_idle_s: self.cfg.max_idle.as_secs_f64(),
            rounds: self.round,
            flows: self.opened,
            reason,
        };
        self.events.push_back(IdleEvent::Done(result.clone()));
        self.result = Some(result);
    }

    fn step_flow(&mut self, id: u32, now: Instant) {
        let Some(flow) = self.flows.get(&id).copied() else {
            return;
        };
        match flow.phase {
            Phase::Opening {
                sent,
                next_send,
                first_reply,
                last_reply,
            } => {
                if next_send > now {
                    return;
                }
                // Requests since the last reply (or the first request).
                let unanswered = match last_reply {
                    None => sent,
                    Some(t) => {
                        (now.saturating_duration_since(t).as_millis()
                            / self.cfg.retransmit.as_millis().max(1)) as u32
                    }
                };
                let active_done = first_reply
                    .is_some_and(|f| now.saturating_duration_since(f) >= self.cfg.active_for);
                if unanswered >= self.cfg.open_tries || (active_done && sent > 200) {
                    // Cannot be opened (or kept active): try the gap on a new socket.
                    let gap = flow.gap;
                    self.decide(id, None);
                    let (_, expired) = self.bracket();
                    if self.opened < self.cfg.max_flows && expired.is_none_or(|e| gap < e) {
                        self.open_flow(gap, now);
                    }
                    return;
                }
                self.transmits.push_back(IdleTransmit::Request { flow: id });
                if let Some(f) = self.flows.get_mut(&id) {
                    f.phase = Phase::Opening {
                        sent: sent + 1,
                        next_send: now + self.cfg.retransmit,
                        first_reply,
                        last_reply,
                    };
                }
            }
            Phase::Waiting { deadline } => {
                if deadline <= now {
                    self.decide(id, Some(false));
                }
            }
        }
    }
}

impl Engine for IdleSearch {
    type Input = IdleInput;
    type Transmit = IdleTransmit;
    type Event = IdleEvent;

    fn handle_input(&mut self, input: IdleInput, now: Instant) {
        match input {
            IdleInput::Reply { flow: id } => {
                let Some(flow) = self.flows.get_mut(&id) else {
                    return;
                };
                let Phase::Opening {
                    sent, first_reply, ..
                } = flow.phase
                else {
                    return;
                };
                let first = first_reply.unwrap_or(now);
                let silent = match self.cfg.kind {
                    FlowKind::OneExchange => true,
                    FlowKind::ActiveFlow => {
                        now.saturating_duration_since(first) >= self.cfg.active_for
                    }
                };
                if silent {
                    flow.phase = Phase::Waiting {
                        deadline: now + flow.gap + self.cfg.grace,
                    };
                    let gap = flow.gap;
                    self.transmits
                        .push_back(IdleTransmit::Schedule { flow: id, gap });
                } else {
                    // Active flow: keep the exchange going at the pace.
                    flow.phase = Phase::Opening {
                        sent,
                        next_send: now + self.cfg.retransmit,
                        first_reply: Some(first),
                        last_reply: Some(now),
                    };
                }
            }
            IdleInput::Arrived { flow: id } => {
                if matches!(
                    self.flows.get(&id).map(|f| f.phase),
                    Some(Phase::Waiting { .. })
                ) {
                    self.decide(id, Some(true));
                }
            }
        }
        self.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<IdleTransmit> {
        if !self.started {
            self.started = true;
            let gaps = self.first_gaps();
            self.start_round(gaps, now);
            self.handle_timeout(now);
        }
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.started {
            return None;
        }
        self.flows
            .values()
            .map(|f| match f.phase {
                Phase::Opening { next_send, .. } => next_send,
                Phase::Waiting { deadline } => deadline,
            })
            .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if !self.started || self.result.is_some() {
            return;
        }
        let mut ids: Vec<u32> = self.flows.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.step_flow(id, now);
        }
        if self.flows.is_empty() && self.result.is_none() {
            self.next_round(now);
            if self.result.is_none() {
                let mut ids: Vec<u32> = self.flows.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    self.step_flow(id, now);
                }
            }
        }
    }

    fn poll_event(&mut self) -> Option<IdleEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.result.is_some() && self.transmits.is_empty()
    }
}

/// A simulated NAT or stateful firewall for tests and projections: a
/// binding lives `one_exchange` after a flow's last packet, or
/// `active_flow` once the flow has carried traffic for more than 2 s after
/// its first packet (Linux conntrack's rule).
#[cfg(any(test, feature = "testkit"))]
pub mod simulated {
    use super::*;
    use crate::testkit::{Limits, LinkConfig, Outcome, Sim};

    /// The simulated NAT (see the module docs).
    #[derive(Clone, Copy, Debug)]
    pub struct SimNat {
        /// Binding lifetime after the last packet of a flow that is not yet active.
        pub one_exchange: Duration,
        /// Binding lifetime after the last packet once the flow is active (more
        /// than 2 s of traffic).
        pub active_flow: Duration,
        /// Each way, for every datagram.
        pub link: LinkConfig,
        /// Copies the server sends after the gap.
        pub copies: u32,
    }

    #[derive(Default)]
    struct Binding {
        first: Option<Instant>,
        last: Option<Instant>,
        stream: bool,
    }

    impl SimNat {
        fn alive(&self, b: &Binding, at: Instant) -> bool {
            let (Some(_), Some(last)) = (b.first, b.last) else {
                return false;
            };
            let timer = if b.stream {
                self.active_flow
            } else {
                self.one_exchange
            };
            at.saturating_duration_since(last) < timer
        }

        fn touch(b: &mut Binding, at: Instant) {
            let first = *b.first.get_or_insert(at);
            if at.saturating_duration_since(first) > Duration::from_secs(2) {
                b.stream = true;
            }
            b.last = Some(at);
        }

        /// Runs `search` through this NAT to the end.
        pub fn run(&self, search: &mut IdleSearch, seed: u64) -> Outcome<IdleEvent> {
            let mut sim: Sim<IdleInput> = Sim::new(seed);
            let mut bindings: HashMap<u32, Binding> = HashMap::new();
            // The server's last reply to each flow, when it left the server.
            let mut last_reply: HashMap<u32, Instant> = HashMap::new();
            let nat = *self;
            let d = nat.link.delay;
            sim.run(search, Limits::default(), |sim, t| match t {
                IdleTransmit::Request { flow } => {
                    let now = sim.now();
                    let b = bindings.entry(flow).or_default();
                    // Outbound: lost before or after the NAT; the NAT
                    // (close to the client) sees it at once.
                    if b.last.is_some() && !nat.alive(b, now) {
                        *b = Binding::default();
                    }
                    SimNat::touch(b, now);
                    if sim.rng.chance(nat.link.loss) {
                        return;
                    }
                    let at_server = now + d;
                    last_reply.insert(flow, at_server);
                    if sim.rng.chance(nat.link.loss) {
                        return;
                    }
                    // The reply passes the NAT on its way back.
                    let back = at_server + d;
                    if nat.alive(b, back) {
                        SimNat::touch(b, back);
                        sim.deliver_at(back, IdleInput::Reply { flow });
                    }
                }
                IdleTransmit::Schedule { flow, gap } => {
                    let Some(&sent) = last_reply.get(&flow) else {
                        return;
                    };
                    let b = bindings.entry(flow).or_default();
                    for copy in 0..nat.copies {
                        let at_nat = sent + gap + d + Duration::from_millis(20) * copy;
                        if sim.rng.chance(nat.link.loss) {
                            continue;
                        }
                        if nat.alive(b, at_nat) {
                            SimNat::touch(b, at_nat);
                            sim.deliver_at(at_nat, IdleInput::Arrived { flow });
                        }
                    }
                }
                IdleTransmit::Close { flow } => {
                    bindings.remove(&flow);
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::simulated::SimNat;
    use super::*;
    use crate::testkit::LinkConfig;

    fn nat(one: u64, active: u64, loss: f64) -> SimNat {
        SimNat {
            one_exchange: Duration::from_secs(one),
            active_flow: Duration::from_secs(active),
            link: LinkConfig::lossy(Duration::from_millis(20), loss),
            copies: 2,
        }
    }

    fn check(r: &IdleResult, timer: f64) {
        let s = r.survived_s.expect("something survived");
        let e = r.expired_s.expect("something expired");
        assert!(s <= timer && timer <= e, "{timer} outside {s}..{e}");
        let width = e - s;
        assert!(width <= 1f64.max(s / 10.0) + 1e-9, "{s}..{e} too wide");
    }

    fn run(kind: FlowKind, n: SimNat, max_idle: u64, seed: u64) -> (IdleResult, Duration) {
        let mut search =
            IdleSearch::new(IdleSearchConfig::new(kind, Duration::from_secs(max_idle)));
        let out = n.run(&mut search, seed);
        assert!(out.done, "search did not finish");
        (search.result().unwrap().clone(), out.elapsed)
    }

    #[test]
    fn finds_both_timers_without_loss() {
        let n = nat(5, 12, 0.0);
        let (r, t) = run(FlowKind::OneExchange, n, 300, 1);
        check(&r, 5.0);
        assert!(t < Duration::from_secs(30), "{t:?}");
        let (r, t) = run(FlowKind::ActiveFlow, n, 300, 1);
        check(&r, 12.0);
        assert!(t < Duration::from_secs(60), "{t:?}");
    }

    #[test]
    fn thirty_seconds_in_about_a_minute() {
        let (r, t) = run(FlowKind::OneExchange, nat(30, 120, 0.0), 300, 2);
        check(&r, 30.0);
        assert!(t < Duration::from_secs(90), "{t:?}");
        let (r, _) = run(FlowKind::ActiveFlow, nat(30, 120, 0.0), 300, 2);
        check(&r, 120.0);
    }

    #[test]
    fn verdict_stays_right_at_five_percent_loss() {
        for seed in 0..40 {
            let (r, _) = run(FlowKind::OneExchange, nat(5, 12, 0.05), 60, seed);
            check(&r, 5.0);
            let (r, _) = run(FlowKind::ActiveFlow, nat(5, 12, 0.05), 60, seed);
            check(&r, 12.0);
            let (r, _) = run(FlowKind::OneExchange, nat(30, 120, 0.05), 300, seed);
            check(&r, 30.0);
        }
    }

    fn serial(kind: FlowKind, n: SimNat, max_idle: u64, seed: u64) -> (IdleResult, Duration) {
        let mut cfg = IdleSearchConfig::new(kind, Duration::from_secs(max_idle));
        cfg.serial = true;
        cfg.flows_per_gap = 1;
        let mut search = IdleSearch::new(cfg);
        let out = n.run(&mut search, seed);
        assert!(out.done);
        (search.result().unwrap().clone(), out.elapsed)
    }

    #[test]
    fn serial_search_agrees_and_is_slower() {
        let n = nat(30, 120, 0.0);
        let (r, serial_t) = serial(FlowKind::OneExchange, n, 300, 1);
        check(&r, 30.0);
        let (_, parallel_t) = run(FlowKind::OneExchange, n, 300, 1);
        assert!(serial_t > parallel_t * 2, "{serial_t:?} vs {parallel_t:?}");
    }

    #[test]
    fn longer_than_max_idle_says_so() {
        let (r, _) = run(FlowKind::OneExchange, nat(500, 500, 0.0), 20, 3);
        assert_eq!(r.survived_s, Some(20.0));
        assert_eq!(r.expired_s, None);
        assert!(r.reason.unwrap().contains("max-idle"));
    }

    #[test]
    fn a_dead_path_is_could_not_tell() {
        let (r, _) = run(FlowKind::OneExchange, nat(5, 12, 1.0), 20, 4);
        assert_eq!(r.survived_s, None);
        assert_eq!(r.expired_s, None);
        assert!(r.reason.is_some());
        assert!(r.flows <= 400);
    }

    #[test]
    fn shorter_than_the_shortest_gap() {
        let n = SimNat {
            one_exchange: Duration::from_millis(500),
            ..nat(1, 1, 0.0)
        };
        let (r, _) = run(FlowKind::OneExchange, n, 20, 5);
        assert_eq!(r.survived_s, None);
        assert_eq!(r.expired_s, Some(1.0));
    }
}

/// How a NAT maps, or filters, in RFC 4787 terms, as far as the tests
/// could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// The same for every remote address and port.
    EndpointIndependent,
    /// Depends on the remote address only.
    AddressDependent,
    /// Depends on the remote address and port.
    AddressAndPortDependent,
    /// Not port-dependent; without a second server address (`server
    /// --alt-address`) endpoint-independent cannot be told from
    /// address-dependent.
    EndpointIndependentOrAddressDependent,
}

impl Behaviour {
    /// The behaviour in words, for display.
    pub fn text(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::EndpointIndependentOrAddressDependent => {
                "endpoint-independent or address-dependent (no --alt-address on the server)"
            }
        }
    }
}

/// Mapping from what the server saw of one local socket: at port A, at
/// port B of the same address, and at its alternate address (if any).
/// `None` when there is no NAT (the server saw the local address itself).
pub fn classify_mapping(
    local: std::net::SocketAddr,
    seen_a: std::net::SocketAddr,
    seen_b: std::net::SocketAddr,
    seen_alt: Option<std::net::SocketAddr>,
) -> Option<Behaviour> {
    if seen_a == local && seen_b == local {
        return None;
    }
    Some(if seen_a != seen_b {
        Behaviour::AddressAndPortDependent
    } else {
        match seen_alt {
            Some(alt) if alt == seen_a => Behaviour::EndpointIndependent,
            Some(_) => Behaviour::AddressDependent,
            None => Behaviour::EndpointIndependentOrAddressDependent,
        }
    })
}

/// Filtering from whether datagrams sent (after the client spoke only to
/// port A) from port B, and from the alternate address, arrived.
pub fn classify_filtering(from_b: bool, from_alt: Option<bool>) -> Behaviour {
    match (from_b, from_alt) {
        (false, _) => Behaviour::AddressAndPortDependent,
        (true, Some(true)) => Behaviour::EndpointIndependent,
        (true, Some(false)) => Behaviour::AddressDependent,
        (true, None) => Behaviour::EndpointIndependentOrAddressDependent,
    }
}

/// A keepalive interval that keeps a flow with this idle timeout open:
/// five sixths of the longest gap that survived, whole seconds, at least 1.
pub fn keepalive_s(survived_s: f64) -> u64 {
    ((survived_s * 5.0 / 6.0).floor() as u64).max(1)
}

#[cfg(test)]
mod classify_tests {
    use super::*;

    #[test]
    fn mapping_and_filtering_classes() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        let local = a("198.18.1.2:40000");
        assert_eq!(classify_mapping(local, local, local, None), None);
        let m = a("198.18.2.1:40000");
        assert_eq!(
            classify_mapping(local, m, m, Some(m)),
            Some(Behaviour::EndpointIndependent)
        );
        assert_eq!(
            classify_mapping(local, m, m, Some(a("198.18.2.1:1"))),
            Some(Behaviour::AddressDependent)
        );
        assert_eq!(
            classify_mapping(local, m, a("198.18.2.1:2"), None),
            Some(Behaviour::AddressAndPortDependent)
        );
        assert_eq!(
            classify_mapping(local, m, m, None),
            Some(Behaviour::EndpointIndependentOrAddressDependent)
        );
        assert_eq!(
            classify_filtering(false, Some(true)),
            Behaviour::AddressAndPortDependent
        );
        assert_eq!(
            classify_filtering(true, Some(true)),
            Behaviour::EndpointIndependent
        );
        assert_eq!(
            classify_filtering(true, Some(false)),
            Behaviour::AddressDependent
        );
        assert_eq!(keepalive_s(30.0), 25);
        assert_eq!(keepalive_s(0.5), 1);
    }
}
