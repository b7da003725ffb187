//! Retransmission timeout from measured RTTs (RFC 6298), with a floor and a ceiling.

use std::time::Duration;

#[derive(Clone, Debug)]
/// Retransmission timeout from RTT samples, as TCP computes it (RFC 6298).
pub struct RtoEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl RtoEstimator {
    /// An estimator starting at `initial`, kept within `min..=max`.
    pub fn new(initial: Duration, min: Duration, max: Duration) -> Self {
        RtoEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            initial,
            min,
            max: max.max(min),
        }
    }

    /// Feeds an unambiguous sample (Karn's rule is the caller's: probes carry
    /// their attempt number, so every reply names the send it answers).
    pub fn on_sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The smoothed RTT, once there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        let raw = match self.srtt {
            None => self.initial,
            Some(srtt) => srtt + (self.rttvar * 4),
        };
        raw.clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_and_clamps() {
        let ms = Duration::from_millis;
        let mut r = RtoEstimator::new(ms(1000), ms(50), ms(2000));
        assert_eq!(r.rto(), ms(1000));
        for _ in 0..50 {
            r.on_sample(Duration::from_micros(100));
        }
        assert_eq!(r.rto(), ms(50), "floor");
        for _ in 0..50 {
            r.on_sample(ms(900));
        }
        assert!(r.rto() >= ms(900) && r.rto() <= ms(2000));
        r.on_sample(ms(10_000));
        assert_eq!(r.rto(), ms(2000), "ceiling");
    }
}
