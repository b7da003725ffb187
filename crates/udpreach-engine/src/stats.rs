//! RTT statistics: ping(8)'s min/avg/max/mdev plus percentiles and jitter.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Accumulates RTT samples. Percentiles come from an HDR histogram at
/// nanosecond resolution (3 significant figures); the rest is exact.
#[derive(Clone, Debug)]
pub struct RttStats {
    hist: Histogram<u64>,
    count: u64,
    sum_ns: f64,
    sum_sq_ns: f64,
    min: Duration,
    max: Duration,
    last: Option<Duration>,
    ipdv_sum_ns: f64,
    ipdv_count: u64,
    /// RFC 3550 smoothed jitter, `J += (|D| - J) / 16`, as iperf3 reports.
    rfc3550_jitter_ns: f64,
}

/// A snapshot of [`RttStats`] for reports.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct RttSummary {
    /// Samples.
    pub count: u64,
    /// Smallest RTT.
    pub min_ms: f64,
    /// Mean RTT.
    pub avg_ms: f64,
    /// Largest RTT.
    pub max_ms: f64,
    /// Mean deviation, as ping(8) prints it.
    pub mdev_ms: f64,
    /// Median RTT.
    pub p50_ms: f64,
    /// 90th percentile RTT.
    pub p90_ms: f64,
    /// 99th percentile RTT.
    pub p99_ms: f64,
    /// Mean absolute difference of consecutive RTTs (IPDV, RFC 3393).
    pub ipdv_ms: f64,
    /// RFC 3550 smoothed jitter, as iperf3 reports it.
    pub jitter_rfc3550_ms: f64,
}

impl Default for RttStats {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

impl RttStats {
    /// No samples yet.
    pub fn new() -> Self {
        RttStats {
            // 1 ns .. 1 hour with 3 significant digits: ample for RTTs.
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds"),
            count: 0,
            sum_ns: 0.0,
            sum_sq_ns: 0.0,
            min: Duration::MAX,
            max: Duration::ZERO,
            last: None,
            ipdv_sum_ns: 0.0,
            ipdv_count: 0,
            rfc3550_jitter_ns: 0.0,
        }
    }

    /// Adds one sample.
    pub fn record(&mut self, rtt: Duration) {
        let ns = rtt.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.hist.saturating_record(ns.max(1));
        self.count += 1;
        self.sum_ns += ns as f64;
        self.sum_sq_ns += (ns as f64) * (ns as f64);
        self.min = self.min.min(rtt);
        self.max = self.max.max(rtt);
        if let Some(last) = self.last {
            let d = (ns as f64 - last.as_nanos() as f64).abs();
            self.ipdv_sum_ns += d;
            self.ipdv_count += 1;
            self.rfc3550_jitter_ns += (d - self.rfc3550_jitter_ns) / 16.0;
        }
        self.last = Some(rtt);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The statistics, once there is a sample.
    pub fn summary(&self) -> Option<RttSummary> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let avg = self.sum_ns / n;
        // ping(8)'s mdev: sqrt(E[x^2] - E[x]^2).
        let mdev = (self.sum_sq_ns / n - avg * avg).max(0.0).sqrt();
        let q = |p: f64| ms(self.hist.value_at_quantile(p) as f64);
        Some(RttSummary {
            count: self.count,
            min_ms: ms(self.min.as_nanos() as f64),
            avg_ms: ms(avg),
            max_ms: ms(self.max.as_nanos() as f64),
            mdev_ms: ms(mdev),
            p50_ms: q(0.50),
            p90_ms: q(0.90),
            p99_ms: q(0.99),
            ipdv_ms: if self.ipdv_count == 0 {
                0.0
            } else {
                ms(self.ipdv_sum_ns / self.ipdv_count as f64)
            },
            jitter_rfc3550_ms: ms(self.rfc3550_jitter_ns),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_summary() {
        let mut s = RttStats::new();
        assert!(s.summary().is_none());
        for ms in [1u64, 2, 3, 4] {
            s.record(Duration::from_millis(ms));
        }
        let r = s.summary().unwrap();
        assert_eq!(r.count, 4);
        assert!((r.min_ms - 1.0).abs() < 1e-9);
        assert!((r.max_ms - 4.0).abs() < 1e-9);
        assert!((r.avg_ms - 2.5).abs() < 1e-9);
        assert!((r.mdev_ms - 1.118).abs() < 1e-3);
        assert!((r.ipdv_ms - 1.0).abs() < 1e-9);
        assert!((r.p50_ms - 2.0).abs() < 0.01);
    }
}
