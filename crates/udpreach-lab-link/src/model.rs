//! What one direction of the emulated link does to a frame, without I/O:
//! given the frame's arrival time and size, decide whether it is lost and
//! when it leaves. Order of effects (like a bottleneck router followed by a
//! long wire): loss (random, then Gilbert-Elliott burst loss), the rate cap
//! (serialisation at `rate` bits/s behind a tail-drop queue of `limit`
//! bytes), then the propagation delay plus jitter.

use std::time::{Duration, Instant};
use udpreach_engine::testkit::Rng;

/// Gilbert-Elliott two-state loss: in the good state a frame is lost with
/// `loss_good`, in the bad state with `loss_bad`; after each frame the state
/// flips good->bad with `p_good_to_bad` and bad->good with `p_bad_to_good`.
/// Mean burst length is `1 / p_bad_to_good` frames; the long-run share of
/// frames seen in the bad state is `p / (p + r)`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct GilbertElliott {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
    pub loss_bad: f64,
    pub loss_good: f64,
}

impl GilbertElliott {
    /// Long-run loss probability.
    pub fn mean_loss(&self) -> f64 {
        let (p, r) = (self.p_good_to_bad, self.p_bad_to_good);
        if p + r == 0.0 {
            return self.loss_good;
        }
        let bad = p / (p + r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Configuration of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct DirectionConfig {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each frame gets `delay` plus a uniform offset in `-jitter..=+jitter`
    /// (clamped at zero total delay).
    pub jitter: Duration,
    /// With jitter: true lets a later frame overtake an earlier one (each
    /// frame's delay is independent); false keeps the order (a frame never
    /// leaves before the one ahead of it, which skews delays slightly up).
    pub reorder: bool,
    /// Independent random loss probability (0.0..=1.0).
    pub loss: f64,
    /// Bursty loss on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Rate cap in bits per second (on the whole Ethernet frame); 0 = none.
    pub rate_bps: u64,
    /// Bytes the rate-cap queue holds before it drops (tail drop).
    pub limit_bytes: u64,
}

/// Default rate-cap queue when none is given: 1 MiB.
pub const DEFAULT_LIMIT_BYTES: u64 = 1 << 20;

impl DirectionConfig {
    /// Delay, jitter (reordering), random loss and a rate cap (0 = none):
    /// the common case in one call.
    pub fn emulate(delay: Duration, jitter: Duration, loss: f64, rate_bps: u64) -> Self {
        DirectionConfig {
            delay,
            jitter,
            reorder: true,
            loss,
            burst: None,
            rate_bps,
            limit_bytes: DEFAULT_LIMIT_BYTES,
        }
    }
}

/// Why a frame did not make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// Independent random loss.
    Random,
    /// Gilbert-Elliott loss.
    Burst,
    /// The rate-cap queue was full.
    Queue,
}

/// State of one direction.
#[derive(Clone, Debug)]
pub struct Direction {
    cfg: DirectionConfig,
    rng: Rng,
    burst_bad: bool,
    /// When the rate-capped "wire" is free again.
    wire_free_at: Option<Instant>,
    /// Departure of the latest frame (for order keeping).
    last_departure: Option<Instant>,
}

impl Direction {
    pub fn new(cfg: DirectionConfig, seed: u64) -> Self {
        Direction {
            cfg,
            rng: Rng::new(seed),
            burst_bad: false,
            wire_free_at: None,
            last_departure: None,
        }
    }

    pub fn config(&self) -> &DirectionConfig {
        &self.cfg
    }

    /// A frame of `len` bytes arrived at `now`: when it leaves, or why not.
    pub fn admit(&mut self, now: Instant, len: usize) -> Result<Instant, Drop> {
        if self.cfg.loss > 0.0 && self.rng.chance(self.cfg.loss) {
            return Err(Drop::Random);
        }
        if let Some(ge) = self.cfg.burst {
            let p_loss = if self.burst_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            let lost = self.rng.chance(p_loss);
            let flip = if self.burst_bad {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if self.rng.chance(flip) {
                self.burst_bad = !self.burst_bad;
            }
            if lost {
                return Err(Drop::Burst);
            }
        }
        let mut leave_queue = now;
        if self.cfg.rate_bps > 0 {
            let start = self.wire_free_at.map_or(now, |t| t.max(now));
            // Bytes still waiting ahead of this frame.
            let backlog = (start - now).as_secs_f64() * self.cfg.rate_bps as f64 / 8.0;
            if backlog + len as f64 > self.cfg.limit_bytes as f64 {
                return Err(Drop::Queue);
            }
            let serialise = Duration::from_secs_f64(len as f64 * 8.0 / self.cfg.rate_bps as f64);
            leave_queue = start + serialise;
            self.wire_free_at = Some(leave_queue);
        }
        let mut departure = leave_queue + self.cfg.delay;
        if !self.cfg.jitter.is_zero() {
            let offset = self.rng.duration_up_to(self.cfg.jitter * 2);
            departure = (departure + offset)
                .checked_sub(self.cfg.jitter)
                .unwrap_or(leave_queue)
                .max(leave_queue);
        }
        if !self.cfg.reorder {
            if let Some(last) = self.last_departure {
                departure = departure.max(last);
            }
        }
        self.last_departure = Some(self.last_departure.map_or(departure, |l| l.max(departure)));
        Ok(departure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fixed_delay_is_exact() {
        let mut d = Direction::new(DirectionConfig::emulate(ms(25), ms(0), 0.0, 0), 1);
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + Duration::from_micros(i * 100);
            assert_eq!(d.admit(now, 100).unwrap(), now + ms(25));
        }
    }

    #[test]
    fn jitter_stays_in_band_and_reorders_only_when_asked() {
        for reorder in [true, false] {
            let mut cfg = DirectionConfig::emulate(ms(25), ms(5), 0.0, 0);
            cfg.reorder = reorder;
            let mut d = Direction::new(cfg, 7);
            let t0 = Instant::now();
            let mut last = t0;
            let mut overtaken = 0;
            for i in 0..10_000u64 {
                let now = t0 + Duration::from_micros(i * 100);
                let dep = d.admit(now, 100).unwrap();
                let delay = dep - now;
                if reorder {
                    assert!(delay >= ms(20) && delay <= ms(30), "{delay:?}");
                } else {
                    assert!(delay >= ms(20) && delay <= ms(31), "{delay:?}");
                }
                if dep < last {
                    overtaken += 1;
                }
                last = last.max(dep);
            }
            if reorder {
                assert!(overtaken > 1000, "{overtaken}");
            } else {
                assert_eq!(overtaken, 0);
            }
        }
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let mut d = Direction::new(DirectionConfig::emulate(ms(1), ms(0), 0.02, 0), 3);
        let now = Instant::now();
        let lost = (0..100_000).filter(|_| d.admit(now, 100).is_err()).count();
        assert!((1_700..=2_300).contains(&lost), "{lost}");
    }

    #[test]
    fn burst_loss_is_bursty_with_the_stated_mean() {
        let ge = GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_bad: 1.0,
            loss_good: 0.0,
        };
        let mut cfg = DirectionConfig::emulate(ms(1), ms(0), 0.0, 0);
        cfg.burst = Some(ge);
        let mut d = Direction::new(cfg, 5);
        let now = Instant::now();
        let outcomes: Vec<bool> = (0..200_000).map(|_| d.admit(now, 100).is_err()).collect();
        let lost = outcomes.iter().filter(|l| **l).count() as f64 / outcomes.len() as f64;
        assert!(
            (lost - ge.mean_loss()).abs() < 0.01,
            "{lost} vs {}",
            ge.mean_loss()
        );
        // Runs of losses average 1/r = 4 frames.
        let runs = outcomes.windows(2).filter(|w| !w[0] && w[1]).count() as f64;
        let mean_run = outcomes.iter().filter(|l| **l).count() as f64 / runs;
        assert!((3.0..5.0).contains(&mean_run), "{mean_run}");
    }

    #[test]
    fn rate_cap_spaces_frames_and_tail_drops() {
        // 8 Mbit/s: a 1000-byte frame takes 1 ms. Queue of 10 frames.
        let mut cfg = DirectionConfig::emulate(ms(10), ms(0), 0.0, 8_000_000);
        cfg.limit_bytes = 10_000;
        let mut d = Direction::new(cfg, 1);
        let now = Instant::now();
        let deps: Vec<_> = (0..20).map(|_| d.admit(now, 1000)).collect();
        assert_eq!(deps.iter().filter(|r| r.is_ok()).count(), 10);
        assert_eq!(deps[10], Err(Drop::Queue));
        for (i, dep) in deps.iter().take(10).enumerate() {
            assert_eq!(
                *dep.as_ref().unwrap() - now,
                ms(10) + ms(1) * (i as u32 + 1)
            );
        }
    }
}
