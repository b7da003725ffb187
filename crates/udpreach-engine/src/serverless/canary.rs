//! Canaries: a probe to a port known to answer with ICMP, sent right after
//! confirming probes, says whether their silence is real or the target's
//! ICMP limiter had no credit; and the limiter test, a burst of canaries
//! that tells rate limiting from loss.

use super::pacing::{EAGER_SPEEDUP, MIN_INTERVAL};
use super::*;

#[derive(Clone, Debug)]
pub(super) struct Canary {
    pub(super) port: u16,
    pub(super) sent_at: Instant,
    /// Resolved then: after every probe it covers has had its full timeout.
    pub(super) deadline: Instant,
    pub(super) covers: Vec<u16>,
    pub(super) answered: bool,
}

/// Most confirming probes one canary vouches for: they leave back to back,
/// so the limiter cannot refill between them and the canary.
pub(super) const MAX_CONFIRM_BATCH: usize = 32;

/// Timer tag of a canary (ports' timers carry their send count instead).
pub(super) const CANARY_TAG: u32 = u32::MAX;

/// Timer tag of a limiter test.
pub(super) const TEST_TAG: u32 = u32::MAX - 1;

/// Canaries sent back to back by a limiter test: more than a limiter whose
/// credit is spent answers at once, few enough to cost nothing.
pub(super) const TEST_CANARIES: u32 = 8;

/// Is the target rate limiting, or was that a lost packet? In the unpaced
/// mode, a sign of drops (a port answering only a retry, an unanswered
/// canary) triggers a burst of canaries to a known-closed port: all
/// answered, it was loss; fewer, the limiter's credit is spent.
#[derive(Clone, Debug)]
pub(super) struct LimiterTest {
    pub(super) to_send: u32,
    pub(super) sent: u32,
    pub(super) answered: u32,
    pub(super) deadline: Option<Instant>,
}

impl ServerlessSweep {
    /// A known-closed port exists, so a silence can be checked with a canary.
    pub(super) fn can_confirm(&self) -> bool {
        self.canary_port.is_some()
    }

    pub(super) fn send_canary(&mut self, now: Instant) -> ServerlessTransmit {
        let port = self
            .canary_port
            .expect("confirming probes are only sent with a canary port");
        self.take_token();
        let covers = std::mem::take(&mut self.batch);
        let timeout = if self.pacing.is_some() {
            self.paced_timeout()
        } else {
            self.timeout(1)
        };
        let deadline = self.batch_deadline.take().unwrap_or(now).max(now + timeout);
        self.canary = Some(Canary {
            port,
            sent_at: now,
            deadline,
            covers,
            answered: false,
        });
        self.timers.push(Reverse((deadline, port, CANARY_TAG)));
        self.progress.canaries_sent += 1;
        ServerlessTransmit {
            port,
            attempt: 0,
            canary: true,
        }
    }

    pub(super) fn pop_confirm_ready(&mut self) -> Option<u16> {
        while let Some(p) = self.confirm_ready.pop_front() {
            if self.ports[usize::from(p)].is_some_and(|e| e.state == State::Ready) {
                return Some(p);
            }
        }
        None
    }

    /// The canary's verdict on the silent probes it covered.
    pub(super) fn resolve_canary(&mut self, now: Instant) {
        let Some(c) = self.canary.take() else { return };
        for &port in &c.covers {
            if self.ports[usize::from(port)]
                .is_some_and(|p| p.state == State::InFlight && p.confirming)
            {
                // Its own timer is due at this same instant: silent too.
                self.on_silence(port);
            }
        }
        // A covered port that answered took the credit the canary wanted:
        // then its silence says nothing about the limiter.
        let credit_taken = c.covers.iter().any(|&p| {
            self.ports[usize::from(p)]
                .is_some_and(|e| e.state == State::Decided && e.icmp.is_some())
        });
        if !c.answered && !credit_taken {
            self.drops += 1;
            self.rate_limited(now, c.sent_at);
        }
        if let Some(pc) = &mut self.pacing {
            if c.answered && credit_taken {
                // The confirming probe and its canary both drew an error:
                // the limiter had two credits, so the clock runs slower
                // than the limiter and every pair would waste one on the
                // canary. Catch up, as after an eager answer.
                pc.interval = pc.interval.mul_f64(EAGER_SPEEDUP).max(MIN_INTERVAL);
            }
            pc.out = pc.out.saturating_sub(1);
            // Answered or not, the limiter had no credit left after the canary.
            pc.last_answer = pc.last_answer.max(c.sent_at);
            pc.polled = false;
        }
        let paced = self.pacing.is_some();
        let (attempts, needed) = (self.cfg.attempts, self.cfg.confirmations);
        for port in c.covers.into_iter().rev() {
            let Some(p) = self.port(port) else { continue };
            if p.state != State::AwaitCanary {
                continue; // answered after all
            }
            if c.answered {
                p.silent += 1;
                let enough = if paced {
                    p.silent >= needed
                } else {
                    p.silent >= attempts
                };
                if enough {
                    self.decide(port, ServerlessVerdict::OpenFiltered, None, None);
                    continue;
                }
            }
            // Not answered: the silence proves nothing. Probe again, first.
            self.requeue(port, !c.answered);
        }
    }

    pub(super) fn resolve_test(&mut self, now: Instant) {
        let Some(t) = self.test.take() else { return };
        self.last_test = Some(now);
        if t.answered >= t.sent {
            return; // every canary answered: it was a lost packet
        }
        // The limiter's credit is spent. Its interval is not known yet:
        // start slow, and poll for the next credit, which measures it.
        self.start_pacing(now, Duration::from_secs(1), true);
    }
}
