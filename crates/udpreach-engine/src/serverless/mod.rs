//! Port checks against a host without udpreach (`udpreach ports --no-server`),
//! read the way nmap -sU reads them:
//!
//! * a UDP reply from the port: **open**;
//! * ICMP port unreachable from the target: **closed**;
//! * any other ICMP unreachable (or a port unreachable from another host):
//!   **filtered**, naming the reporting host;
//! * silence after every retry: **open|filtered**.
//!
//! The hard part is silence. Hosts rate-limit their ICMP errors (Linux: one
//! per second per peer after a burst of 6, and 1000/s overall), so once the
//! limit bites a closed port is as silent as a filtered one. Three
//! mechanisms keep verdicts right and the check as fast as the limit allows:
//!
//! * **Canaries.** A port's last silent probe is a *confirming* one: right
//!   after it (back to back, so the limiter cannot refill in between) goes a
//!   probe to a port known to answer with ICMP (a closed port). If the
//!   canary is answered, the target could send errors when the silent probe
//!   arrived, so the silence is real. If not, the silence proves nothing and
//!   the port is probed again.
//! * **A limiter test.** A sign of drops (an unanswered canary, a port that
//!   answers only a retry) may be plain loss. A burst of canaries tells:
//!   all answered, it was loss and the check goes on unpaced; fewer, the
//!   limiter's credit is spent.
//! * **Pacing to the limiter.** Then one probe that may draw an error is out
//!   at a time (more when the limiter is faster than a round trip), sent a
//!   little before the next credit is due and, if unanswered, repeated at
//!   short intervals until the credit arrives. The spacing of those answers
//!   measures the limiter's interval; an answer on the first try is followed
//!   by an immediate probe, whose answer shows the limiter allows more.
//!   Closed ports then cost one interval each, silent ones a canary's
//!   credit, and the report says the check was paced and at what rate.
//!
//! Sans-I/O like the rest of the engine: the driver sends what
//! [`ServerlessSweep::poll_transmit`] returns and reports replies, ICMP
//! errors and the time.

mod canary;
mod config;
mod pacing;
mod verdict;

use canary::{Canary, LimiterTest, CANARY_TAG, MAX_CONFIRM_BATCH, TEST_CANARIES, TEST_TAG};
pub use config::ServerlessConfig;
use pacing::Pacing;
pub use verdict::ServerlessVerdict;

use crate::engine::Engine;
use crate::rate::TokenBucket;
use crate::rto::RtoEstimator;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use udpreach_wire::icmp::{port_finding, IcmpReport, PortFinding};
use udpreach_wire::PortSpec;

/// One probe to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerlessTransmit {
    /// The port to probe.
    pub port: u16,
    /// 1 for the first probe to the port, 2 for the first retry, ...
    pub attempt: u32,
    /// A check of the ICMP limiter to a port known to be closed, not a test of the port.
    pub canary: bool,
}

/// What arrives for a [`ServerlessSweep`].
#[derive(Clone, Debug, PartialEq)]
pub enum ServerlessInput {
    /// A datagram of `bytes` from `port` of the target.
    Reply {
        /// The target port it came from.
        port: u16,
        /// Its size.
        bytes: usize,
    },
    /// An ICMP error drawn by a probe to `port`.
    Icmp {
        /// The port the probe went to.
        port: u16,
        /// What the error says.
        report: IcmpReport,
    },
}

/// What a [`ServerlessSweep`] reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerlessEvent {
    /// The target's ICMP errors are rate limited: from now on the check
    /// paces itself to the limiter (reported once).
    RateLimited(IcmpRateLimit),
}

/// Per-port result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ServerlessResult {
    /// The port.
    pub port: u16,
    /// What the check concludes.
    pub verdict: ServerlessVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Round trip of the first reply, for an open port.
    pub rtt_ms: Option<f64>,
    /// Probes sent to the port.
    pub probes: u32,
    /// The ICMP error that decided the port: `{from, reason}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpReport>,
    /// Size of the first reply from an open port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_bytes: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
/// How far a serverless check got, for the progress bar and the report.
pub struct ServerlessProgress {
    /// Ports to check.
    pub total: usize,
    /// Ports with a verdict.
    pub decided: usize,
    /// Ports found open.
    pub open: usize,
    /// Ports found closed.
    pub closed: usize,
    /// Ports found filtered.
    pub filtered: usize,
    /// Ports silent after every retry.
    pub open_filtered: usize,
    /// Probes sent.
    pub probes_sent: u64,
    /// Canaries sent.
    pub canaries_sent: u64,
}

/// What the check found out about the target's ICMP rate limiting.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct IcmpRateLimit {
    /// When the limiting was first seen, from the start of the check.
    pub detected_after_ms: f64,
    /// The limiter's interval as the check met it: one ICMP error per this long.
    pub interval_ms: f64,
    /// Canaries that went unanswered or ports that answered only a retry.
    pub drops: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not probed yet.
    Queued,
    /// Waiting to be probed again.
    Ready,
    /// A probe is out.
    InFlight,
    /// Its confirming probe was silent; the canary that followed it decides.
    AwaitCanary,
    Decided,
}

#[derive(Clone, Copy, Debug)]
struct Port {
    state: State,
    sent: u32,
    /// Silences counted toward open|filtered: every silence before rate
    /// limiting was seen, canary-confirmed ones after.
    silent: u32,
    last_sent: Option<Instant>,
    /// The probe in flight is covered by the current canary.
    confirming: bool,
    /// The probe in flight was sent on the paced clock.
    paced: bool,
    /// ... at a time the limiter should have had an error to spare.
    on_time: bool,
    /// On-time paced probes that went unanswered: two make the next probe a
    /// confirming one.
    paced_silences: u32,
    verdict: Option<ServerlessVerdict>,
    rtt: Option<Duration>,
    icmp: Option<IcmpReport>,
    reply_bytes: Option<usize>,
}

/// The serverless port check (see the module docs); driven through [`Engine`].
pub struct ServerlessSweep {
    cfg: ServerlessConfig,
    target: IpAddr,
    plan: Vec<u16>,
    ports: Vec<Option<Port>>,
    next_new: usize,
    /// Ports to probe again with an ordinary probe.
    ready: VecDeque<u16>,
    /// Ports whose next probe confirms a silence (a canary follows it).
    confirm_ready: VecDeque<u16>,
    /// Confirming probes sent since the last canary.
    batch: Vec<u16>,
    batch_deadline: Option<Instant>,
    timers: BinaryHeap<Reverse<(Instant, u16, u32)>>,
    in_flight: usize,
    canary: Option<Canary>,
    /// A port that answers every probe with an ICMP error from the target.
    canary_port: Option<u16>,
    rto: RtoEstimator,
    pacing: Option<Pacing>,
    test: Option<LimiterTest>,
    last_test: Option<Instant>,
    drops: u32,
    /// Arrival times of the latest ICMP answers, for the first interval estimate.
    answers: VecDeque<Instant>,
    /// The probe rate cap, when there is one.
    pacer: Option<TokenBucket>,
    /// The rate limit was reported as an event.
    told_rate_limit: bool,
    start: Instant,
    progress: ServerlessProgress,
}

impl ServerlessSweep {
    /// A check of every port of `spec` on `target`, starting at `now`.
    pub fn new(spec: &PortSpec, target: IpAddr, cfg: ServerlessConfig, now: Instant) -> Self {
        let plan: Vec<u16> = spec.iter().collect();
        let mut ports = vec![None; 65536];
        for &p in &plan {
            ports[usize::from(p)] = Some(Port {
                state: State::Queued,
                sent: 0,
                silent: 0,
                last_sent: None,
                confirming: false,
                paced: false,
                on_time: false,
                paced_silences: 0,
                verdict: None,
                rtt: None,
                icmp: None,
                reply_bytes: None,
            });
        }
        let rto = RtoEstimator::new(cfg.rto_initial, cfg.rto_min, cfg.rto_max);
        ServerlessSweep {
            told_rate_limit: false,
            pacer: cfg
                .rate
                .map(|r| TokenBucket::with_burst(r, f64::from(r).min(64.0), now)),
            cfg: ServerlessConfig {
                attempts: cfg.attempts.max(1),
                confirmations: cfg.confirmations.max(1),
                window: cfg.window.max(1),
                ..cfg
            },
            target,
            progress: ServerlessProgress {
                total: plan.len(),
                ..ServerlessProgress::default()
            },
            plan,
            ports,
            next_new: 0,
            ready: VecDeque::new(),
            confirm_ready: VecDeque::new(),
            batch: Vec::new(),
            batch_deadline: None,
            timers: BinaryHeap::new(),
            in_flight: 0,
            canary: None,
            canary_port: None,
            rto,
            pacing: None,
            test: None,
            last_test: None,
            drops: 0,
            answers: VecDeque::new(),
            start: now,
        }
    }

    fn port(&mut self, port: u16) -> Option<&mut Port> {
        self.ports[usize::from(port)].as_mut()
    }

    /// The silence timeout for a probe that is the `attempt`-th to its port:
    /// doubling per retry, so a slow service still gets its chance.
    fn timeout(&self, attempt: u32) -> Duration {
        if let Some(t) = self.cfg.fixed_timeout {
            return t;
        }
        // Never less than two round trips: on a steady path the RTO
        // converges to the round trip itself, and an answer due exactly
        // when its timer fires must not count as silence.
        let base = self
            .rto
            .rto()
            .max(self.rto.srtt().map_or(Duration::ZERO, |s| s * 2));
        (base * 2u32.pow(attempt.saturating_sub(1).min(4))).min(self.cfg.rto_max)
    }

    fn take_token(&mut self) {
        if let Some(b) = &mut self.pacer {
            b.take();
        }
    }

    fn has_plain(&self) -> bool {
        !self.ready.is_empty() || self.next_new < self.plan.len()
    }

    /// The next probe to send now, if any. Call until it returns `None`.
    fn poll_probe(&mut self, now: Instant) -> Option<ServerlessTransmit> {
        if !self.pacer.as_mut().is_none_or(|b| b.has_token(now)) {
            return None;
        }
        let Some(pc) = self.pacing.clone() else {
            return self.poll_fast(now);
        };
        // Confirming probes leave back to back and their canary right after.
        // A slow limiter gets one at a time, each costing the canary's
        // credit; a fast one gets batches, like the unpaced mode.
        if !self.batch.is_empty() && self.canary.is_none() {
            let limit = MAX_CONFIRM_BATCH.min(pc.max_out);
            if self.batch.len() < limit {
                if let Some(port) = self.pop_confirm_ready() {
                    return Some(self.send_probe(port, true, now));
                }
            }
            return Some(self.send_canary(now));
        }
        if pc.busy() {
            return None;
        }
        let pipelined = pc.max_out > 1;
        if self.canary.is_none() && now >= pc.pair_at() && (pipelined || !self.has_plain()) {
            if let Some(port) = self.pop_confirm_ready() {
                return Some(self.send_paced(port, true, true, now));
            }
        }
        if now >= pc.plain_at(now) {
            if let Some(port) = self.pop_ready().or_else(|| self.pop_new()) {
                return Some(self.send_paced(port, false, pc.on_time(now), now));
            }
        }
        None
    }

    /// Before any rate limiting: a window of probes in flight, confirming
    /// probes in batches closed by one canary.
    fn poll_fast(&mut self, now: Instant) -> Option<ServerlessTransmit> {
        let test_timeout = self.timeout(1);
        if let Some(t) = &mut self.test {
            // Nothing else goes out meanwhile: other closed ports would take
            // the credit the test canaries measure.
            if t.to_send == 0 {
                return None;
            }
            t.to_send -= 1;
            t.sent += 1;
            let port = self.canary_port.expect("tests only run with a canary port");
            if t.to_send == 0 {
                let deadline = now + test_timeout;
                t.deadline = Some(deadline);
                self.timers.push(Reverse((deadline, port, TEST_TAG)));
            }
            self.take_token();
            self.progress.canaries_sent += 1;
            return Some(ServerlessTransmit {
                port,
                attempt: 0,
                canary: true,
            });
        }
        if self.canary.is_none() {
            if self.batch.len() < MAX_CONFIRM_BATCH {
                if let Some(port) = self.pop_confirm_ready() {
                    return Some(self.send_probe(port, true, now));
                }
            }
            if !self.batch.is_empty() {
                return Some(self.send_canary(now));
            }
        }
        if self.in_flight >= self.cfg.window {
            return None;
        }
        let port = self.pop_ready().or_else(|| self.pop_new())?;
        Some(self.send_probe(port, false, now))
    }

    fn send_probe(&mut self, port: u16, confirming: bool, now: Instant) -> ServerlessTransmit {
        self.take_token();
        let paced = self.pacing.is_some();
        let attempt = {
            let p = self.port(port).expect("planned port");
            p.state = State::InFlight;
            p.sent += 1;
            p.last_sent = Some(now);
            p.confirming = confirming;
            p.paced = false;
            p.on_time = false;
            p.sent
        };
        self.in_flight += 1;
        self.progress.probes_sent += 1;
        let timeout = if paced {
            self.paced_timeout()
        } else {
            self.timeout(attempt)
        };
        let deadline = now + timeout;
        self.timers.push(Reverse((deadline, port, attempt)));
        if confirming {
            self.batch.push(port);
            self.batch_deadline = Some(self.batch_deadline.map_or(deadline, |d| d.max(deadline)));
        }
        ServerlessTransmit {
            port,
            attempt,
            canary: false,
        }
    }

    fn pop_ready(&mut self) -> Option<u16> {
        while let Some(p) = self.ready.pop_front() {
            if self.ports[usize::from(p)].is_some_and(|e| e.state == State::Ready) {
                return Some(p);
            }
        }
        None
    }

    fn pop_new(&mut self) -> Option<u16> {
        while self.next_new < self.plan.len() {
            let p = self.plan[self.next_new];
            self.next_new += 1;
            if self.ports[usize::from(p)].is_some_and(|e| e.state == State::Queued) {
                return Some(p);
            }
        }
        None
    }

    /// Queues `port` for its next probe: a confirming one when its silence
    /// needs a canary's word, an ordinary one otherwise.
    fn requeue(&mut self, port: u16, front: bool) {
        let paced = self.pacing.is_some();
        let (attempts, confirm) = (self.cfg.attempts, self.can_confirm());
        let Some(p) = self.port(port) else { return };
        p.state = State::Ready;
        // Without rate limiting only the last attempt needs a canary. With
        // it, a port gets a second on-time plain probe after one silence
        // (the clock may just have been early), then confirming ones.
        let confirming = confirm
            && if paced {
                p.paced_silences >= 2
            } else {
                p.silent + 1 >= attempts
            };
        let q = if confirming {
            &mut self.confirm_ready
        } else {
            &mut self.ready
        };
        if front {
            q.push_front(port);
        } else {
            q.push_back(port);
        }
    }

    /// Handles expired timers: silent probes and canaries due for a verdict.
    fn poll_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, port, tag))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if tag == CANARY_TAG {
                if self.canary.as_ref().is_some_and(|c| c.deadline == at) {
                    self.resolve_canary(now);
                }
                continue;
            }
            if tag == TEST_TAG {
                if self.test.as_ref().is_some_and(|t| t.deadline == Some(at)) {
                    self.resolve_test(now);
                }
                continue;
            }
            let Some(p) = self.port(port) else { continue };
            if p.state == State::InFlight && p.sent == tag {
                self.on_silence(port);
            }
        }
    }

    fn on_silence(&mut self, port: u16) {
        self.in_flight -= 1;
        let (attempts, confirm) = (self.cfg.attempts, self.can_confirm());
        let paced_mode = self.pacing.is_some();
        let eager = self.pacing.as_ref().is_some_and(|pc| pc.eager_out);
        let p = *self.port(port).expect("planned port");
        let e = self.port(port).expect("planned port");
        e.confirming = false;
        e.paced = false;
        if p.confirming {
            e.state = State::AwaitCanary;
            return;
        }
        if p.paced {
            if p.on_time && !eager {
                e.paced_silences += 1;
            }
            if let Some(pc) = &mut self.pacing {
                pc.out = pc.out.saturating_sub(1);
                if std::mem::take(&mut pc.eager_out) {
                    // No credit right after the last one: the clock is not
                    // slow. Back to waiting for the next credit.
                } else {
                    pc.polled |= !p.on_time;
                }
            }
            // An early probe polls again at once, to the same port.
            self.requeue(port, !p.on_time);
            return;
        }
        if !paced_mode {
            e.silent += 1;
            if e.silent >= attempts && !confirm {
                // Nothing here ever answered with an ICMP error: silence is
                // all this target says, so it is taken at its word.
                self.decide(port, ServerlessVerdict::OpenFiltered, None, None);
                return;
            }
        }
        self.requeue(port, false);
    }

    /// An ICMP error came back for a probe to `port`.
    fn on_icmp(&mut self, port: u16, report: IcmpReport, now: Instant) {
        if let Some(t) = &mut self.test {
            if Some(port) == self.canary_port && t.sent > 0 {
                t.answered += 1;
                return;
            }
        }
        if let Some(c) = &mut self.canary {
            if c.port == port && now >= c.sent_at && !c.answered {
                c.answered = true;
                self.note_answer(now);
                return;
            }
        }
        let Some(p) = self.answered(port) else {
            return;
        };
        self.note_answer(now);
        if p.state == State::InFlight && p.paced && !p.confirming {
            self.paced_answer(p.last_sent.unwrap_or(now), p.paced_silences > 0, now);
        } else if self.pacing.is_none() && (p.state != State::InFlight || p.sent > 1) {
            // Answered only after a silence: an earlier probe drew nothing,
            // though the port answers. Lost, or the limiter was empty.
            self.drops += 1;
            self.rate_limited(now, p.last_sent.unwrap_or(now));
        }
        let rtt = self.first_try_rtt(&p, now);
        let verdict = match port_finding(&report, self.target) {
            PortFinding::Closed => ServerlessVerdict::Closed,
            PortFinding::Filtered => ServerlessVerdict::Filtered,
        };
        // The canary must test the limiter of the host whose ports we check:
        // the target's own port unreachable.
        if verdict == ServerlessVerdict::Closed && self.canary_port.is_none() {
            self.canary_port = Some(port);
        }
        self.decide(port, verdict, rtt, Some(report));
    }

    fn note_answer(&mut self, now: Instant) {
        if let Some(pc) = &mut self.pacing {
            pc.answers += 1;
            pc.last_answer_seen = now;
        }
        self.answers.push_back(now);
        if self.answers.len() > 8 {
            self.answers.pop_front();
        }
    }

    /// Feeds an unambiguous round-trip sample. The first answers usually cut
    /// the timeout from its cautious initial value to a few round trips:
    /// then the probes already out get timers on the new value, rather than
    /// the whole first wave waiting out the initial one.
    fn rtt_sample(&mut self, rtt: Duration) {
        let before = self.timeout(1);
        self.rto.on_sample(rtt);
        if self.pacing.is_some() || self.timeout(1) * 2 > before {
            return;
        }
        for i in 0..self.plan.len() {
            let port = self.plan[i];
            let Some(p) = self.ports[usize::from(port)] else {
                continue;
            };
            if let (State::InFlight, Some(sent)) = (p.state, p.last_sent) {
                let deadline = sent + self.timeout(p.sent);
                self.timers.push(Reverse((deadline, port, p.sent)));
            }
        }
    }

    /// The state of `port` as an answer found it (the probe in flight no
    /// longer is); `None` when it is not planned or already decided.
    fn answered(&mut self, port: u16) -> Option<Port> {
        let p = self.port(port).copied()?;
        if p.state == State::Decided {
            return None;
        }
        if p.state == State::InFlight {
            self.in_flight -= 1;
        }
        Some(p)
    }

    /// The round trip of an answer to the port's first probe (a sample for
    /// the RTO); `None` after a retry, whose answer is ambiguous.
    fn first_try_rtt(&mut self, p: &Port, now: Instant) -> Option<Duration> {
        let rtt = p
            .last_sent
            .filter(|_| p.sent == 1)
            .map(|s| now.saturating_duration_since(s));
        if let Some(r) = rtt {
            self.rtt_sample(r);
        }
        rtt
    }

    /// A UDP datagram came back from `port`.
    fn on_reply(&mut self, port: u16, bytes: usize, now: Instant) {
        let Some(p) = self.answered(port) else {
            return;
        };
        if p.state == State::InFlight && p.paced && !p.confirming {
            // A reply cost the limiter nothing: the next probe may go now.
            if let Some(pc) = &mut self.pacing {
                pc.out = pc.out.saturating_sub(1);
            }
        }
        let rtt = self.first_try_rtt(&p, now);
        if let Some(e) = self.port(port) {
            e.reply_bytes = Some(bytes);
        }
        self.decide(port, ServerlessVerdict::Open, rtt, None);
    }

    fn decide(
        &mut self,
        port: u16,
        verdict: ServerlessVerdict,
        rtt: Option<Duration>,
        icmp: Option<IcmpReport>,
    ) {
        let Some(p) = self.port(port) else { return };
        if p.state == State::Decided {
            return;
        }
        p.state = State::Decided;
        p.confirming = false;
        p.paced = false;
        p.verdict = Some(verdict);
        p.rtt = rtt;
        p.icmp = icmp;
        self.progress.decided += 1;
        match verdict {
            ServerlessVerdict::Open => self.progress.open += 1,
            ServerlessVerdict::Closed => self.progress.closed += 1,
            ServerlessVerdict::Filtered => self.progress.filtered += 1,
            ServerlessVerdict::OpenFiltered => self.progress.open_filtered += 1,
            ServerlessVerdict::NotTested => {}
        }
    }

    /// When the driver must call back at the latest.
    fn next_wakeup(&self) -> Option<Instant> {
        let mut wake = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        let wants_plain = self.has_plain();
        let wants_confirm = self.canary.is_none() && !self.confirm_ready.is_empty();
        let rate_ok = self.pacer.as_ref().is_none_or(TokenBucket::had_token);
        if self.pacing.is_none() && rate_ok {
            // Work that may go out at once: call back now.
            let batch_due = self.canary.is_none() && !self.batch.is_empty();
            if batch_due || wants_confirm || (wants_plain && self.in_flight < self.cfg.window) {
                at(self
                    .pacer
                    .as_ref()
                    .map_or(self.start, TokenBucket::refilled_at)
                    .max(self.start));
            }
        }
        if let Some(pc) = &self.pacing {
            if !pc.busy() {
                if wants_plain {
                    at(pc.plain_at(pc.last_answer));
                } else if wants_confirm {
                    at(pc.pair_at());
                }
            }
        }
        if let Some(refill) = self.pacer.as_ref().and_then(TokenBucket::next_token_at) {
            if wants_plain || wants_confirm {
                at(refill);
            }
        }
        wake
    }

    /// How far the check got.
    pub fn progress(&self) -> &ServerlessProgress {
        &self.progress
    }

    /// Marks every undecided port as not tested (Ctrl+C).
    pub fn abort(&mut self) {
        let undecided: Vec<u16> = self
            .plan
            .iter()
            .copied()
            .filter(|&p| self.ports[usize::from(p)].is_some_and(|e| e.state != State::Decided))
            .collect();
        for p in undecided {
            self.decide(p, ServerlessVerdict::NotTested, None, None);
        }
    }

    /// Every port's result, in plan order.
    pub fn results(&self) -> Vec<ServerlessResult> {
        self.plan
            .iter()
            .filter_map(|&port| {
                let e = self.ports[usize::from(port)]?;
                Some(ServerlessResult {
                    port,
                    verdict: e.verdict.unwrap_or(ServerlessVerdict::NotTested),
                    rtt_ms: e.rtt.map(|d| d.as_secs_f64() * 1e3),
                    probes: e.sent,
                    icmp: e.icmp,
                    reply_bytes: e.reply_bytes,
                })
            })
            .collect()
    }
}

impl Engine for ServerlessSweep {
    type Input = ServerlessInput;
    type Transmit = ServerlessTransmit;
    type Event = ServerlessEvent;

    fn handle_input(&mut self, input: ServerlessInput, now: Instant) {
        match input {
            ServerlessInput::Reply { port, bytes } => self.on_reply(port, bytes, now),
            ServerlessInput::Icmp { port, report } => self.on_icmp(port, report, now),
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<ServerlessTransmit> {
        self.poll_probe(now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_wakeup()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.poll_timers(now);
    }

    fn poll_event(&mut self) -> Option<ServerlessEvent> {
        if self.told_rate_limit {
            return None;
        }
        let limit = self.rate_limit()?;
        self.told_rate_limit = true;
        Some(ServerlessEvent::RateLimited(limit))
    }

    fn is_done(&self) -> bool {
        self.progress.decided == self.progress.total
    }
}

#[cfg(test)]
mod tests;
