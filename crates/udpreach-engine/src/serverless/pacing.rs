//! Pacing to the target's ICMP rate limiter once it was seen: the
//! limiter's clock, the paced window and timeouts, and the rate limit the
//! report names.

use super::*;

/// The limiter's clock, kept once ICMP rate limiting was seen. One paced
/// probe (or confirming probe and canary) is out at a time: the limiter, not
/// the network, is the bottleneck, and each answer tells when the next
/// error will be allowed.
#[derive(Clone, Debug)]
pub(super) struct Pacing {
    /// Estimated time between two errors the limiter allows.
    pub(super) interval: Duration,
    /// When the latest answered paced probe was sent: the limiter's credit
    /// was spent then.
    pub(super) last_answer: Instant,
    /// A probe sent before the credit was due went unanswered since
    /// `last_answer`, so the next answer's spacing measures the limiter.
    pub(super) polled: bool,
    /// Paced probes (or confirming pairs) out now.
    pub(super) out: usize,
    /// How many may be out at once: one when the limiter's interval is
    /// longer than a round trip (each answer then times the next probe),
    /// more when it is shorter, so a fast limiter is not slowed to one
    /// probe per round trip.
    pub(super) max_out: usize,
    pub(super) last_send: Instant,
    pub(super) last_backoff: Instant,
    pub(super) detected_at: Instant,
    /// Smoothed spacing of answers that timed the limiter itself (polled
    /// for), for the report: the clock's own interval runs a little short
    /// on purpose.
    pub(super) measured: Option<Duration>,
    /// ICMP errors received since pacing started, and the latest one's
    /// arrival: what the limiter actually allowed, for the report.
    pub(super) answers: u64,
    pub(super) last_answer_seen: Instant,
    /// The last probe was answered on its first try, so the limiter may
    /// allow more than the clock assumes: the next probe goes at once, and
    /// if it is answered too the interval halves.
    pub(super) eager: bool,
    pub(super) eager_out: bool,
}

impl Pacing {
    /// When the next plain probe may go: a little before the credit is due
    /// (an early probe costs the target nothing and catches the credit as
    /// soon as it is there), or at once while polling for it.
    pub(super) fn plain_at(&self, now: Instant) -> Instant {
        if self.max_out > 1 {
            // Pipelined: a plain token clock.
            self.last_send + self.interval
        } else if self.polled || self.eager {
            now
        } else {
            self.last_answer + self.interval.mul_f64(0.95)
        }
    }

    pub(super) fn busy(&self) -> bool {
        self.out >= self.max_out
    }

    /// A confirming probe goes to a port that was silent twice on time, so
    /// it is expected to cost nothing: only its canary needs the credit.
    pub(super) fn pair_at(&self) -> Instant {
        self.last_answer + self.interval.mul_f64(1.1)
    }

    /// Late enough after the last answer that the limiter surely has an
    /// error to spare: a silence now says something about the port.
    pub(super) fn on_time(&self, now: Instant) -> bool {
        now >= self.last_answer + self.interval.mul_f64(1.3)
    }
}

pub(super) const MIN_INTERVAL: Duration = Duration::from_micros(200);

pub(super) const MAX_INTERVAL: Duration = Duration::from_secs(4);

/// An answer on the first paced try shortens the interval by this factor,
/// so the clock keeps testing whether the limiter allows more.
pub(super) const SPEEDUP: f64 = 0.97;

/// Evidence that the limiter had more credit than the clock assumed (an
/// eager probe answered, a canary answered beside its confirming probe)
/// shortens the interval by this factor.
pub(super) const EAGER_SPEEDUP: f64 = 0.75;

/// Evidence that the clock ran ahead of the limiter lengthens it this much.
pub(super) const BACKOFF: f64 = 1.1;

impl ServerlessSweep {
    /// The silence timeout of a paced probe: ICMP errors come back within a
    /// round trip, and the limiter's clock waits on every paced probe, so
    /// this is kept short (two round trips). A slower service reply still
    /// counts when it comes.
    pub(super) fn paced_timeout(&self) -> Duration {
        if let Some(t) = self.cfg.fixed_timeout {
            return t;
        }
        // Polling for the limiter's credit at a fiftieth of its interval
        // costs about 1% of the scan time and keeps the probe count modest.
        let floor = self
            .pacing
            .as_ref()
            .map_or(Duration::ZERO, |p| p.interval / 50)
            .max(Duration::from_millis(5));
        match self.rto.srtt() {
            Some(s) => (s * 2).max(floor).min(self.cfg.rto_max),
            None => self.rto.rto(),
        }
    }

    /// Paced probes allowed out at once: a round trip's worth of the
    /// limiter's intervals, at least one.
    pub(super) fn paced_window(&self) -> usize {
        match (&self.pacing, self.rto.srtt()) {
            (Some(p), Some(srtt)) => {
                let n = srtt.as_secs_f64() / p.interval.as_secs_f64();
                (n.floor() as usize).clamp(1, self.cfg.window)
            }
            _ => 1,
        }
    }

    pub(super) fn send_paced(
        &mut self,
        port: u16,
        confirming: bool,
        on_time: bool,
        now: Instant,
    ) -> ServerlessTransmit {
        if let Some(pc) = &mut self.pacing {
            pc.out += 1;
            pc.last_send = now;
            pc.eager_out = pc.eager && !pc.polled && !confirming;
            pc.eager = false;
        }
        let t = self.send_probe(port, confirming, now);
        if let Some(p) = self.port(port) {
            p.paced = true;
            p.on_time = on_time;
        }
        t
    }

    /// Signs of rate limiting, from a probe sent at `evidence_at`: switch to
    /// the limiter's clock, or slow it down if the evidence is about the
    /// current pace (sent after the last slow-down) and one interval passed.
    pub(super) fn rate_limited(&mut self, now: Instant, evidence_at: Instant) {
        match &mut self.pacing {
            None if self.canary_port.is_some() => {
                // One test at a time, and not more than one a second: on a
                // lossy path every loss would otherwise pause the check.
                let recent = self
                    .last_test
                    .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
                if self.test.is_none() && !recent {
                    self.test = Some(LimiterTest {
                        to_send: TEST_CANARIES,
                        sent: 0,
                        answered: 0,
                        deadline: None,
                    });
                }
            }
            None => self.start_pacing(now, self.first_interval_estimate(), false),
            Some(p) => {
                if evidence_at > p.last_backoff
                    && now.saturating_duration_since(p.last_backoff) >= p.interval
                {
                    p.interval = p.interval.mul_f64(BACKOFF).min(MAX_INTERVAL);
                    p.last_backoff = now;
                }
            }
        }
    }

    pub(super) fn start_pacing(&mut self, now: Instant, interval: Duration, polled: bool) {
        self.pacing = Some(Pacing {
            interval,
            last_answer: now,
            polled,
            out: 0,
            max_out: 1,
            last_send: now,
            last_backoff: now,
            detected_at: now,
            measured: None,
            answers: 0,
            last_answer_seen: now,
            eager: false,
            eager_out: false,
        });
        // What was silent before is suspect: from now on a silence counts
        // only when a canary confirms it.
        self.ready.clear();
        self.confirm_ready.clear();
        for i in 0..self.plan.len() {
            let port = self.plan[i];
            if let Some(p) = self.ports[usize::from(port)].as_mut() {
                if p.state != State::Decided {
                    p.silent = 0;
                }
                if p.state == State::Ready {
                    self.ready.push_back(port);
                }
            }
        }
    }

    /// The widest gap between the latest ICMP answers: once the limiter's
    /// burst is spent, answers come one interval apart.
    /// Gaps no wider than a couple of round trips are the path's jitter,
    /// not the limiter's doing: then the limiter (if any) is fast.
    pub(super) fn first_interval_estimate(&self) -> Duration {
        let gaps = self
            .answers
            .iter()
            .zip(self.answers.iter().skip(1))
            .map(|(a, b)| b.saturating_duration_since(*a));
        let widest = gaps.max().unwrap_or(Duration::from_secs(1));
        let jitter = self.rto.srtt().map_or(Duration::ZERO, |s| s * 2);
        if widest <= jitter {
            MIN_INTERVAL
        } else {
            widest.clamp(MIN_INTERVAL, MAX_INTERVAL)
        }
    }

    /// A paced probe sent at `sent` was answered with an ICMP error: the
    /// limiter spent its credit then. Learn its interval from the spacing.
    pub(super) fn paced_answer(&mut self, sent: Instant, late: bool, now: Instant) {
        let timeout = self.paced_timeout();
        let max_out = self.paced_window();
        let round_trip = self.rto.srtt().unwrap_or(Duration::ZERO);
        let Some(pc) = &mut self.pacing else { return };
        pc.out = pc.out.saturating_sub(1);
        let gap = sent.saturating_duration_since(pc.last_answer);
        // One probe at a time cannot be spaced closer than a round trip, so
        // such a gap times the path, not the limiter.
        let measures_limiter = pc.polled && pc.max_out == 1 && gap > round_trip * 2;
        if std::mem::take(&mut pc.eager_out) {
            // Answered right after the previous answer: credit to spare, the
            // limiter is faster than the clock.
            pc.interval = pc.interval.mul_f64(EAGER_SPEEDUP).max(MIN_INTERVAL);
            pc.eager = true;
        } else if measures_limiter {
            // We were polling for the credit: it came between the last
            // silent poll and this probe.
            let sample = gap.saturating_sub(timeout / 2).max(MIN_INTERVAL);
            pc.interval = pc.interval.mul_f64(0.5) + sample.mul_f64(0.5);
            pc.measured = Some(
                pc.measured
                    .map_or(sample, |m| m.mul_f64(0.75) + sample.mul_f64(0.25)),
            );
        } else {
            // Answered on the first try: the limiter may allow more, which
            // the next probe, sent at once, checks.
            pc.interval = pc.interval.min(gap.max(MIN_INTERVAL)).mul_f64(SPEEDUP);
            pc.eager = true;
        }
        pc.interval = pc.interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        pc.last_answer = pc.last_answer.max(sent);
        pc.max_out = max_out;
        pc.polled = false;
        if late {
            // An on-time probe to this port went unanswered before.
            self.drops += 1;
            self.rate_limited(now, sent);
        }
    }

    /// Rate limiting seen at the target, if any.
    pub fn rate_limit(&self) -> Option<IcmpRateLimit> {
        self.pacing.as_ref().map(|p| IcmpRateLimit {
            detected_after_ms: p
                .detected_at
                .saturating_duration_since(self.start)
                .as_secs_f64()
                * 1e3,
            interval_ms: Self::achieved_interval(p).as_secs_f64() * 1e3,
            drops: self.drops,
        })
    }

    /// The limiter's interval as the check met it: the time from the start of
    /// pacing to the latest error over the errors in between, once there are
    /// enough of them; before that, the clock's estimate.
    pub(super) fn achieved_interval(p: &Pacing) -> Duration {
        if p.answers >= 5 {
            p.last_answer_seen.saturating_duration_since(p.detected_at) / (p.answers as u32)
        } else {
            p.measured.unwrap_or(p.interval)
        }
    }
}
