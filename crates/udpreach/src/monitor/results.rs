//! `--json-lines`: one JSON object per check result, for Telegraf, Vector
//! and friends. Typed like every other report (schema in
//! docs/schema/monitor-lines.json).

use super::checks::Prober;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use udpreach_engine::Verdict;

/// What became of one ping probe.
#[derive(Clone, Copy, Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Reply,
    Late,
    Duplicate,
    Timeout,
    IcmpError,
}

/// One line of the stream.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum MonitorResult {
    Ping(PingResult),
    /// A STAMP probe: the same fields as a ping probe.
    Stamp(PingResult),
    Ports(PortsResult),
    Mtu(PathMtuResult),
}

/// One mtu check: the path MTU each way (a udpreach server), or the round
/// trip (an echo server); `null` where it could not be measured.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct PathMtuResult {
    pub time: f64,
    pub target: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_trip: Option<u32>,
    pub duration_s: f64,
    /// Why the check failed (no server, lost control connection...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct PingResult {
    /// Unix time in seconds when the result was known.
    pub time: f64,
    pub target: String,
    pub group: String,
    pub seq: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct PortsResult {
    pub time: f64,
    pub target: String,
    pub group: String,
    /// Ports per verdict in this sweep.
    pub ports: BTreeMap<String, u64>,
    pub duration_s: f64,
    /// Why the sweep failed (no server, lost control connection...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl PingResult {
    pub(crate) fn new(
        target: &str,
        group: &str,
        seq: u64,
        outcome: Outcome,
        rtt: Option<Duration>,
    ) -> Self {
        PingResult {
            time: unix_now(),
            target: target.into(),
            group: group.into(),
            seq,
            outcome,
            rtt_ms: rtt.map(|d| d.as_secs_f64() * 1e3),
        }
    }
}

impl PortsResult {
    pub(crate) fn new(
        target: &str,
        group: &str,
        counts: &BTreeMap<Verdict, u64>,
        duration_s: f64,
        error: Option<String>,
    ) -> Self {
        PortsResult {
            time: unix_now(),
            target: target.into(),
            group: group.into(),
            ports: counts
                .iter()
                .map(|(v, n)| (v.as_str().to_string(), *n))
                .collect(),
            duration_s,
            error,
        }
    }
}

/// Where results go: nowhere, stdout or a file. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct ResultSink(Option<Arc<Mutex<Box<dyn Write + Send>>>>);

impl ResultSink {
    pub(crate) fn none() -> Self {
        ResultSink(None)
    }

    pub(crate) fn to(w: Box<dyn Write + Send>) -> Self {
        ResultSink(Some(Arc::new(Mutex::new(w))))
    }

    fn write(&self, r: &MonitorResult) {
        let Some(w) = &self.0 else { return };
        let mut line = serde_json::to_string(r).expect("results serialize");
        line.push('\n');
        let mut w = w.lock().expect("not poisoned");
        // A full disk or a closed pipe must not stop the probing.
        if let Err(e) = w.write_all(line.as_bytes()).and_then(|_| w.flush()) {
            tracing::debug!("monitor: results stream: {e}");
        }
    }

    /// Whether results go anywhere (else there is no need to build them).
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// One ping or STAMP probe's result.
    pub(crate) fn probe(&self, prober: Prober, r: PingResult) {
        self.write(&match prober {
            Prober::Ping => MonitorResult::Ping(r),
            Prober::Stamp => MonitorResult::Stamp(r),
        });
    }

    pub(crate) fn ports(&self, r: PortsResult) {
        self.write(&MonitorResult::Ports(r));
    }

    pub(crate) fn mtu(&self, r: PathMtuResult) {
        self.write(&MonitorResult::Mtu(r));
    }
}
