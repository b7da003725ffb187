//! The monitor's Prometheus metrics (`prometheus-client`), one family per
//! metric, every series labelled with `target` and the group's labels.
//! Cardinality is bounded: per target a fixed set of series (3 directions,
//! 8 verdicts, 2 checks, 1 seen address), never one per port or per probe.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use udpreach_engine::Verdict;

pub(crate) const OPENMETRICS_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A series' labels: `target`, `group`, the user's labels, then the
/// metric's own (`direction`, `verdict`, `check`, `address`).
pub(crate) type Labels = Vec<(String, String)>;

/// RTT histogram buckets, seconds: 50 µs to 10 s.
pub(crate) const RTT_BUCKETS: [f64; 17] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
];

/// Loss directions: from the server's counters when it reports them.
pub(crate) const DIRECTIONS: [&str; 3] = ["upstream", "downstream", "unknown"];
/// Path MTU directions: to the server, back from it, or the round trip
/// (through an echo port, when the target cannot measure each way).
pub(crate) const MTU_DIRECTIONS: [&str; 3] = ["upstream", "downstream", "round_trip"];
/// The checks a target can have.
pub(crate) const CHECKS: [&str; 4] = ["ping", "ports", "stamp", "mtu"];

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// Every metric family; cheap to clone (the families are shared).
#[derive(Clone)]
pub(crate) struct Metrics {
    pub rtt: Family<Labels, Histogram, fn() -> Histogram>,
    pub sent: Family<Labels, Counter>,
    pub replies: Family<Labels, Counter>,
    pub lost: Family<Labels, Counter>,
    pub duplicates: Family<Labels, Counter>,
    pub late: Family<Labels, Counter>,
    pub reordered: Family<Labels, Counter>,
    pub withheld: Family<Labels, Counter>,
    pub seen_address: Family<Labels, Gauge>,
    pub nat_changes: Family<Labels, Counter>,
    pub ports: Family<Labels, Gauge>,
    pub path_mtu: Family<Labels, Gauge>,
    pub check_duration: Family<Labels, F64Gauge>,
    pub check_success: Family<Labels, Gauge>,
    pub resolved: Family<Labels, Gauge>,
    pub reload_success: Gauge,
    pub registry: Arc<Registry>,
}

impl Metrics {
    /// The agent's metrics (with `udpreach_config_last_reload_successful`).
    pub(crate) fn new() -> Metrics {
        Self::build(true)
    }

    /// A `/probe` run's metrics: the check's series only.
    pub(crate) fn for_probe() -> Metrics {
        Self::build(false)
    }

    fn build(agent: bool) -> Metrics {
        let mut r = Registry::default();
        let rtt = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            rtt_histogram as fn() -> Histogram,
        );
        let m = Metrics {
            rtt,
            sent: Family::default(),
            replies: Family::default(),
            lost: Family::default(),
            duplicates: Family::default(),
            late: Family::default(),
            reordered: Family::default(),
            withheld: Family::default(),
            seen_address: Family::default(),
            nat_changes: Family::default(),
            ports: Family::default(),
            path_mtu: Family::default(),
            check_duration: Family::default(),
            check_success: Family::default(),
            resolved: Family::default(),
            reload_success: Gauge::default(),
            registry: Arc::new(Registry::default()),
        };
        r.register(
            "udpreach_rtt_seconds",
            "Round-trip time of ping replies",
            m.rtt.clone(),
        );
        r.register("udpreach_probes_sent", "Ping probes sent", m.sent.clone());
        r.register(
            "udpreach_replies",
            "Ping replies received in time",
            m.replies.clone(),
        );
        r.register(
            "udpreach_lost",
            "Ping probes lost, by direction (from the server's counters; unknown without them)",
            m.lost.clone(),
        );
        r.register(
            "udpreach_duplicates",
            "Duplicate ping replies",
            m.duplicates.clone(),
        );
        r.register(
            "udpreach_late",
            "Ping replies after the timeout",
            m.late.clone(),
        );
        r.register(
            "udpreach_reordered",
            "Ping replies out of order",
            m.reordered.clone(),
        );
        r.register(
            "udpreach_withheld",
            "Replies the server withheld (its rate limit): not network loss",
            m.withheld.clone(),
        );
        r.register(
            "udpreach_server_seen_address_info",
            "The source address and port the server saw (NAT mapping); value 1",
            m.seen_address.clone(),
        );
        r.register(
            "udpreach_nat_changes",
            "Changes of the address the server saw",
            m.nat_changes.clone(),
        );
        r.register(
            "udpreach_ports",
            "Ports per verdict in the last ports sweep",
            m.ports.clone(),
        );
        r.register(
            "udpreach_path_mtu_bytes",
            "Path MTU from the last mtu check: upstream (to the target), downstream, or round_trip (an echo server)",
            m.path_mtu.clone(),
        );
        r.register(
            "udpreach_check_duration_seconds",
            "Duration of the last check (ping, stamp: the last reply's RTT; ports, mtu: the whole check)",
            m.check_duration.clone(),
        );
        r.register(
            "udpreach_check_success",
            "1 when the last check succeeded (ping, stamp: the last probe answered; ports: every port reachable; mtu: both directions measured)",
            m.check_success.clone(),
        );
        r.register(
            "udpreach_target_resolved",
            "1 when the target's name resolved to an address",
            m.resolved.clone(),
        );
        if agent {
            r.register(
                "udpreach_config_last_reload_successful",
                "1 when the last configuration (re)load succeeded",
                m.reload_success.clone(),
            );
        }
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The exposition: OpenMetrics text when `openmetrics` (what Prometheus
    /// asks for), else the Prometheus text format 0.0.4 (curl, promtool).
    /// Returns the body and its content type.
    pub(crate) fn encode_as(&self, openmetrics: bool) -> (String, &'static str) {
        let mut out = String::new();
        if openmetrics {
            encode(&mut out, &self.registry).expect("writing to a String cannot fail");
            (out, OPENMETRICS_TYPE)
        } else {
            prometheus_text::encode(&mut out, &self.registry)
                .expect("writing to a String cannot fail");
            (out, prometheus_text::CONTENT_TYPE)
        }
    }

    /// The Prometheus text format 0.0.4.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        self.encode_as(false).0
    }

    pub(crate) fn target(&self, base: Labels) -> TargetMetrics {
        TargetMetrics {
            m: self.clone(),
            base,
            seen: Arc::new(Mutex::new(None)),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Handles on one target's ping (or STAMP) series: updating one is an
/// atomic add, with no label hashing (1,000 targets answer 1,000 times a
/// second).
#[derive(Clone)]
pub(crate) struct PingSeries {
    pub rtt: Histogram,
    pub sent: Counter,
    pub replies: Counter,
    pub duplicates: Counter,
    pub late: Counter,
    pub reordered: Counter,
    pub withheld: Counter,
    /// By [`DIRECTIONS`].
    pub lost: [Counter; 3],
}

/// Handles on one target's `udpreach_check_success` and
/// `udpreach_check_duration_seconds` for one check.
#[derive(Clone)]
pub(crate) struct CheckSeries {
    success: Gauge,
    duration: F64Gauge,
}

impl CheckSeries {
    pub(crate) fn set(&self, success: bool, duration_s: Option<f64>) {
        self.success.set(i64::from(success));
        if let Some(d) = duration_s {
            self.duration.set(d);
        }
    }
}

/// One target's series.
#[derive(Clone)]
pub(crate) struct TargetMetrics {
    m: Metrics,
    base: Labels,
    /// The address label of the current `udpreach_server_seen_address_info` series.
    seen: Arc<Mutex<Option<String>>>,
}

impl TargetMetrics {
    pub(crate) fn with(&self, key: &str, value: &str) -> Labels {
        let mut l = self.base.clone();
        l.push((key.to_string(), value.to_string()));
        l
    }

    /// Sets the seen address; returns true when it changed from an earlier one.
    pub(crate) fn set_seen_address(&self, address: String) -> bool {
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.as_deref() == Some(address.as_str()) {
            return false;
        }
        let changed = if let Some(old) = seen.take() {
            self.m.seen_address.remove(&self.with("address", &old));
            self.m.nat_changes.get_or_create(&self.base).inc();
            true
        } else {
            false
        };
        self.m
            .seen_address
            .get_or_create(&self.with("address", &address))
            .set(1);
        *seen = Some(address);
        changed
    }

    /// The target's counters that carry only its own labels.
    fn counters(&self) -> [&Family<Labels, Counter>; 7] {
        let m = &self.m;
        [
            &m.sent,
            &m.replies,
            &m.duplicates,
            &m.late,
            &m.reordered,
            &m.withheld,
            &m.nat_changes,
        ]
    }

    /// The target's ping (or STAMP) series, created at zero so rates work
    /// from the first scrape; the handles update them without a label lookup.
    pub(crate) fn ping_series(&self) -> PingSeries {
        let b = &self.base;
        // `udpreach_nat_changes_total` too (set_seen_address counts changes).
        let [sent, replies, duplicates, late, reordered, withheld, _nat_changes] =
            self.counters().map(|f| f.get_or_create_owned(b));
        PingSeries {
            rtt: self.m.rtt.get_or_create_owned(b),
            sent,
            replies,
            duplicates,
            late,
            reordered,
            withheld,
            lost: DIRECTIONS.map(|d| self.m.lost.get_or_create_owned(&self.with("direction", d))),
        }
    }

    /// The target's `check_success` and `check_duration_seconds` series of one check.
    pub(crate) fn check_series(&self, check: &str) -> CheckSeries {
        let l = self.with("check", check);
        CheckSeries {
            success: self.m.check_success.get_or_create_owned(&l),
            duration: self.m.check_duration.get_or_create_owned(&l),
        }
    }

    pub(crate) fn set_ports(&self, counts: &[(Verdict, u64)]) {
        for v in Verdict::ALL {
            let n = counts.iter().find(|(c, _)| *c == v).map_or(0, |(_, n)| *n);
            self.m
                .ports
                .get_or_create(&self.with("verdict", v.as_str()))
                .set(n as i64);
        }
    }

    pub(crate) fn check(&self, check: &str, success: bool, duration_s: Option<f64>) {
        self.check_series(check).set(success, duration_s);
    }

    /// Sets `udpreach_path_mtu_bytes{direction}`; `None` removes the series
    /// (that direction could not be measured).
    pub(crate) fn set_path_mtu(&self, direction: &str, mtu: Option<u32>) {
        let l = self.with("direction", direction);
        match mtu {
            Some(v) => {
                self.m.path_mtu.get_or_create(&l).set(i64::from(v));
            }
            None => {
                self.m.path_mtu.remove(&l);
            }
        }
    }

    pub(crate) fn set_resolved(&self, ok: bool) {
        self.m.resolved.get_or_create(&self.base).set(i64::from(ok));
    }

    /// Removes every series of this target (it left the configuration).
    pub(crate) fn forget(&self) {
        let b = &self.base;
        for f in self.counters() {
            f.remove(b);
        }
        self.m.rtt.remove(b);
        self.m.resolved.remove(b);
        for d in DIRECTIONS {
            self.m.lost.remove(&self.with("direction", d));
        }
        for v in Verdict::ALL {
            self.m.ports.remove(&self.with("verdict", v.as_str()));
        }
        for d in MTU_DIRECTIONS {
            self.m.path_mtu.remove(&self.with("direction", d));
        }
        for c in CHECKS {
            self.m.check_success.remove(&self.with("check", c));
            self.m.check_duration.remove(&self.with("check", c));
        }
        if let Some(a) = self.seen.lock().expect("not poisoned").take() {
            self.m.seen_address.remove(&self.with("address", &a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &str) -> Labels {
        vec![("target".into(), t.into()), ("group".into(), "g".into())]
    }

    #[test]
    fn names_buckets_and_labels() {
        let m = Metrics::new();
        let t = m.target(labels("a"));
        t.ping_series().rtt.observe(0.0002);
        t.set_ports(&[(Verdict::Reachable, 3)]);
        t.check("ping", true, Some(0.0002));
        let text = m.encode();
        for needle in [
            "udpreach_rtt_seconds_bucket{target=\"a\",group=\"g\",le=\"5e-05\"} 0",
            "udpreach_rtt_seconds_bucket{target=\"a\",group=\"g\",le=\"10\"} 1",
            "udpreach_probes_sent_total{target=\"a\",group=\"g\"} 0",
            "udpreach_lost_total{target=\"a\",group=\"g\",direction=\"downstream\"} 0",
            "udpreach_ports{target=\"a\",group=\"g\",verdict=\"reachable\"} 3",
            "udpreach_ports{target=\"a\",group=\"g\",verdict=\"inbound_blocked\"} 0",
            "udpreach_check_success{target=\"a\",group=\"g\",check=\"ping\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }

    #[test]
    fn a_seen_address_change_counts_and_forget_removes_everything() {
        let m = Metrics::new();
        let t = m.target(labels("a"));
        t.ping_series();
        assert!(!t.set_seen_address("198.18.0.1:5000".into()));
        assert!(!t.set_seen_address("198.18.0.1:5000".into()));
        assert!(t.set_seen_address("198.18.0.9:6000".into()));
        let text = m.encode();
        assert!(text.contains("udpreach_nat_changes_total{target=\"a\",group=\"g\"} 1"));
        assert!(!text.contains("198.18.0.1:5000"));
        assert!(text.contains("address=\"198.18.0.9:6000\"} 1"));
        t.set_ports(&[]);
        t.check("ports", false, Some(1.0));
        t.check_series("stamp").set(true, Some(0.001));
        t.set_path_mtu("upstream", Some(1400));
        assert!(m.encode().contains(
            "udpreach_path_mtu_bytes{target=\"a\",group=\"g\",direction=\"upstream\"} 1400"
        ));
        t.forget();
        let text = m.encode();
        assert!(!text.contains("target=\"a\""), "{text}");
    }
}
