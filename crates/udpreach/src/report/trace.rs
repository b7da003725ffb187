//! `udpreach trace` output: typed documents (JSON and JSON lines) and the
//! traceroute-like text, both read from the same values.

use super::{ms3, print_json, print_json_line, print_line, JsonLine, OutputFormat};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use udpreach_engine::trace::{analyse, Analysis, HopAnswer, PortTrace, VerdictKind};
use udpreach_wire::icmp::IcmpReason;

/// Against a udpreach server (both directions) or any host (upstream only).
#[derive(Clone, Copy, Debug, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TraceMode {
    Server,
    NoServer,
}

#[derive(Clone, Copy, Debug, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Direction {
    /// Client to server: our probes, ICMP errors to us.
    Upstream,
    /// Server to client: the server's probes from the traced port.
    Downstream,
}

#[derive(Clone, Copy, Debug, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TraceVerdict {
    Passes,
    DroppedAfter,
    RejectedBy,
    NoAnswerAtAll,
}

impl From<VerdictKind> for TraceVerdict {
    fn from(k: VerdictKind) -> Self {
        match k {
            VerdictKind::Passes => TraceVerdict::Passes,
            VerdictKind::DroppedAfter => TraceVerdict::DroppedAfter,
            VerdictKind::RejectedBy => TraceVerdict::RejectedBy,
            VerdictKind::NoAnswerAtAll => TraceVerdict::NoAnswerAtAll,
        }
    }
}

/// A hop by TTL and the address that answered for it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct HopRef {
    pub ttl: u8,
    pub address: Option<String>,
}

/// The ICMP error that rejected a port.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct Rejection {
    pub ttl: u8,
    pub address: Option<String>,
    /// `admin_prohibited`, `port_unreachable`, ... (see `udpreach ports`).
    pub reason: String,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// One TTL that drew an answer.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct HopReport {
    pub ttl: u8,
    /// Who answered (null when the far end confirmed arrival).
    pub address: Option<String>,
    /// `time_exceeded`, `arrived`, or the ICMP error's reason.
    pub answer: String,
    pub rtt_ms: Option<f64>,
    /// DSCP the probe had at this hop, from the header the hop quoted
    /// (a raw ICMP socket: root on our side upstream, on the server's
    /// downstream); null when not read.
    pub dscp: Option<u8>,
    /// ECN the probe had at this hop (same condition as `dscp`).
    pub ecn: Option<u8>,
    /// The next-hop MTU this hop reported (frag-needed / packet too big,
    /// for probes larger than it: `--size`).
    pub mtu: Option<u32>,
}

/// One port in one direction.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct DirectionReport {
    pub port: u16,
    /// True for the control port.
    pub control: bool,
    pub direction: Direction,
    pub verdict: TraceVerdict,
    /// Passes: the TTL at which the port arrived.
    pub hop_count: Option<u8>,
    /// The last hop that answered for this port.
    pub last_hop: Option<HopRef>,
    /// The first TTL that went silent (dropped_after, no_answer_at_all).
    pub first_silent_ttl: Option<u8>,
    pub rejected: Option<Rejection>,
    /// Why the evidence cannot place the drop exactly (null: it can).
    pub ambiguous: Option<String>,
    /// Probes sent for this port in this direction.
    pub sent: u32,
    pub hops: Vec<HopReport>,
    /// Where the DSCP changed on the way, from the headers hops quoted
    /// (with a raw ICMP socket: root on our side upstream, on the server's
    /// downstream).
    pub dscp_rewritten: Vec<DscpChange>,
}

/// The DSCP changed between two hops (hop 0: as we sent it).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct DscpChange {
    pub after_hop: u8,
    pub at_hop: u8,
    pub from: u8,
    pub to: u8,
}

impl DirectionReport {
    pub(crate) fn new(
        trace: &PortTrace,
        control_trace: Option<&PortTrace>,
        target: IpAddr,
        direction: Direction,
        is_control: bool,
    ) -> Self {
        let a: Analysis = analyse(trace, control_trace, Some(target));
        let addr = |ip: Option<IpAddr>| ip.map(|i| i.to_string());
        DirectionReport {
            port: trace.port,
            control: is_control,
            direction,
            verdict: a.kind.into(),
            hop_count: a.reached_at,
            last_hop: a.last_hop.map(|(ttl, ip)| HopRef {
                ttl,
                address: addr(ip),
            }),
            first_silent_ttl: a.first_silent_ttl,
            rejected: a.rejected.as_ref().map(|(ttl, ans)| match ans {
                HopAnswer::Error {
                    from,
                    reason,
                    icmp_type,
                    code,
                    ..
                } => Rejection {
                    ttl: *ttl,
                    address: addr(*from),
                    reason: reason.as_str().into(),
                    icmp_type: *icmp_type,
                    icmp_code: *code,
                },
                other => Rejection {
                    ttl: *ttl,
                    address: addr(other.from()),
                    reason: "other".into(),
                    icmp_type: 0,
                    icmp_code: 0,
                },
            }),
            ambiguous: a.ambiguous.clone(),
            sent: trace.sent,
            hops: trace
                .hops
                .iter()
                .map(|(&ttl, ans)| HopReport {
                    ttl,
                    address: addr(ans.from()),
                    answer: match ans {
                        HopAnswer::TimeExceeded { .. } => "time_exceeded".into(),
                        HopAnswer::Arrived { .. } => "arrived".into(),
                        HopAnswer::Error { reason, .. } => reason.as_str().into(),
                    },
                    rtt_ms: ans.rtt().map(|d| d.as_micros() as f64 / 1e3),
                    dscp: None,
                    ecn: None,
                    mtu: match ans {
                        HopAnswer::Error {
                            reason: IcmpReason::FragNeeded { mtu },
                            ..
                        } => *mtu,
                        _ => None,
                    },
                })
                .collect(),
            dscp_rewritten: Vec::new(),
        }
    }

    /// Adds the DSCP / ECN each hop quoted (`ttl -> (dscp, ecn)`) and where
    /// the DSCP changed from `sent`.
    pub(crate) fn add_quoted(&mut self, quoted: &BTreeMap<u8, (u8, u8)>, sent: u8) {
        for h in &mut self.hops {
            if let Some(&(d, e)) = quoted.get(&h.ttl) {
                h.dscp = Some(d);
                h.ecn = Some(e);
            }
        }
        let (mut prev_hop, mut prev) = (0u8, sent);
        for (&ttl, &(d, _)) in quoted {
            if d != prev {
                self.dscp_rewritten.push(DscpChange {
                    after_hop: prev_hop,
                    at_hop: ttl,
                    from: prev,
                    to: d,
                });
            }
            (prev_hop, prev) = (ttl, d);
        }
    }

    pub(crate) fn passes(&self) -> bool {
        self.verdict == TraceVerdict::Passes
    }

    /// "port 5060 upstream: dropped after hop 2 (198.18.4.2) ..."
    pub(crate) fn headline(&self) -> String {
        let who = if self.control { "control port" } else { "port" };
        let dir = match self.direction {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        };
        let at = |h: &HopRef| match &h.address {
            Some(a) => format!("hop {} ({a})", h.ttl),
            None => format!("hop {}", h.ttl),
        };
        let what = match self.verdict {
            TraceVerdict::Passes => format!("passes ({} hops)", self.hop_count.unwrap_or(0)),
            TraceVerdict::DroppedAfter => {
                let last = self.last_hop.as_ref().map(at).unwrap_or_default();
                format!(
                    "dropped after {last}: hop {} and beyond silent",
                    self.first_silent_ttl.unwrap_or(0)
                )
            }
            TraceVerdict::RejectedBy => match &self.rejected {
                Some(r) => format!(
                    "rejected by {} ({}, ICMP type {} code {})",
                    at(&HopRef {
                        ttl: r.ttl,
                        address: r.address.clone(),
                    }),
                    r.reason,
                    r.icmp_type,
                    r.icmp_code
                ),
                None => "rejected".into(),
            },
            TraceVerdict::NoAnswerAtAll => "no answer at all".into(),
        };
        let mut line = format!("{who} {} {dir}: {what}", self.port);
        if let Some(why) = &self.ambiguous {
            line.push_str(&format!(" [ambiguous: {why}]"));
        }
        line
    }

    /// "dscp 46 -> 0 between hop 1 and hop 2" for each change.
    pub(crate) fn dscp_lines(&self) -> Vec<String> {
        self.dscp_rewritten
            .iter()
            .map(|c| {
                format!(
                    "  dscp {} -> {} between hop {} and hop {}",
                    c.from, c.to, c.after_hop, c.at_hop
                )
            })
            .collect()
    }

    /// traceroute-like lines: one per TTL up to where the trace ended.
    pub(crate) fn hop_lines(&self) -> Vec<String> {
        let end = self
            .hop_count
            .or(self.rejected.as_ref().map(|r| r.ttl))
            .or(self.first_silent_ttl)
            .or(self.hops.last().map(|h| h.ttl))
            .unwrap_or(0);
        (1..=end)
            .map(|ttl| match self.hops.iter().find(|h| h.ttl == ttl) {
                None => format!("  {ttl:>2}  *"),
                Some(h) => {
                    let rtt = h
                        .rtt_ms
                        .map(|v| format!("  {} ms", ms3(v)))
                        .unwrap_or_default();
                    let who = h.address.clone().unwrap_or_else(|| "(far end)".into());
                    let mut note = if h.answer == "time_exceeded" {
                        String::new()
                    } else {
                        format!("  {}", h.answer)
                    };
                    if let Some(mtu) = h.mtu {
                        note.push_str(&format!(" (mtu {mtu})"));
                    }
                    format!("  {ttl:>2}  {who}{rtt}{note}")
                }
            })
            .collect()
    }
}

/// `trace`: what is traced.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct TraceStart {
    /// The target as given.
    pub target: String,
    pub address: String,
    pub mode: TraceMode,
    pub ports: Vec<u16>,
    pub control_port: Option<u16>,
    pub max_hops: u8,
}

/// `trace --json`: every port in every direction traced.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct TraceDocument {
    #[serde(flatten)]
    pub start: TraceStart,
    pub results: Vec<DirectionReport>,
    /// Traced ports (not the control port) that pass every direction.
    pub passing: usize,
    pub elapsed_ms: f64,
}

/// One port and direction as a `--json-lines` event: `{"type": "port", ...}`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum TraceEvent {
    Port(DirectionReport),
}

/// One line of `trace --json-lines`.
pub(crate) type TraceLine = JsonLine<TraceStart, TraceEvent, TraceDocument>;

/// Prints a trace's results in the chosen format.
pub(crate) struct TraceReport {
    pub format: OutputFormat,
    pub quiet: bool,
}

impl TraceReport {
    pub(crate) fn start(&self, s: &TraceStart) {
        match self.format {
            OutputFormat::JsonLines => print_json_line(&TraceLine::Start(s.clone())),
            OutputFormat::Json => {}
            OutputFormat::Text => {
                let ports: Vec<String> = s.ports.iter().map(u16::to_string).collect();
                let control = s
                    .control_port
                    .map(|p| format!(", control port {p}"))
                    .unwrap_or_default();
                let mode = match s.mode {
                    TraceMode::Server => "udpreach server, both directions",
                    TraceMode::NoServer => "no server, upstream only",
                };
                print_line(&format!(
                    "trace {} ({}; {mode}): port {}{control}, max {} hops",
                    s.target,
                    s.address,
                    ports.join(","),
                    s.max_hops
                ));
            }
        }
    }

    pub(crate) fn finish(&self, doc: &TraceDocument) {
        match self.format {
            OutputFormat::Json => print_json(doc),
            OutputFormat::JsonLines => {
                for r in &doc.results {
                    print_json_line(&TraceLine::Event(TraceEvent::Port(r.clone())));
                }
                print_json_line(&TraceLine::Summary(doc.clone()));
            }
            OutputFormat::Text => {
                for r in &doc.results {
                    print_line(&r.headline());
                    for l in r.dscp_lines() {
                        print_line(&l);
                    }
                    if !self.quiet {
                        for l in r.hop_lines() {
                            print_line(&l);
                        }
                    }
                }
                let traced = doc.start.ports.len();
                print_line(&format!(
                    "{} of {traced} traced ports pass every direction ({} ms)",
                    doc.passing,
                    doc.elapsed_ms.round()
                ));
            }
        }
    }
}
