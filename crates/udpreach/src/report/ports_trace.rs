//! `udpreach ports --trace`: the trace section of the ports report, typed
//! once for the text and the JSON document.

use super::trace::{Direction, DirectionReport};
use schemars::JsonSchema;
use serde::Serialize;
use udpreach_engine::Verdict;

/// Where the blocked ports are dropped.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PortsTrace {
    /// One per sweep verdict with blocked ports.
    pub groups: Vec<TraceGroup>,
    /// Representatives in both directions; the other ports in the group's
    /// direction (upstream for inbound_blocked, downstream for
    /// return_blocked).
    pub results: Vec<DirectionReport>,
    pub elapsed_ms: f64,
    /// Why (part of) the trace could not run, e.g. the server refused.
    pub error: Option<String>,
}

/// Blocked ports with the same sweep verdict.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct TraceGroup {
    pub sweep_verdict: Verdict,
    pub ports: Vec<u16>,
    /// Traced in full.
    pub representatives: Vec<u16>,
    /// The direction the group is blocked in.
    pub direction: Direction,
    /// The representatives agreed on the dropping hop: the other ports were
    /// probed only from this TTL (that hop and the next). Null: they were
    /// traced in full.
    pub checked_from_ttl: Option<u8>,
}

impl PortsTrace {
    /// The text lines: one per group, then one verdict per port and direction.
    pub(crate) fn text_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for g in &self.groups {
            let how = match g.checked_from_ttl {
                _ if g.ports.len() == g.representatives.len() => "no other port".into(),
                Some(t) => format!(
                    "the other {} checked from hop {t}",
                    g.ports.len() - g.representatives.len()
                ),
                None => "the others traced in full".into(),
            };
            lines.push(format!(
                "trace of {} {} ports: representatives {:?}, {how}",
                g.ports.len(),
                g.sweep_verdict.as_str(),
                g.representatives
            ));
        }
        for r in &self.results {
            lines.push(r.headline());
        }
        if let Some(e) = &self.error {
            lines.push(format!("trace: {e}"));
        }
        lines.push(format!("traced in {:.2} s", self.elapsed_ms / 1e3));
        lines
    }
}
