//! The typed output of every command: what `--json` and `--json-lines`
//! print, and what the text renderers read. The JSON Schemas published in
//! `docs/schema/` are generated from these types (see [`schemas`]); a test
//! regenerates them and fails when a committed file differs.

use super::mtu::Direction;
use super::JsonLine;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use udpreach_engine::marks::{MarksSummary, ReplyMarks};
use udpreach_engine::ping::PingSummary;
use udpreach_engine::serverless::{IcmpRateLimit, ServerlessResult};
use udpreach_engine::stamp::{StampReplyInfo, StampSummary};
use udpreach_engine::sweep::PortResult;
use udpreach_wire::icmp::IcmpReport;

// ---------------------------------------------------------------- ping

/// The first thing ping reports: what it sends where.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingStart {
    /// The target as given on the command line.
    pub target: String,
    /// The resolved address probes go to.
    pub remote: SocketAddr,
    /// The address probes are sent from; null with `--sport` (one per probe).
    pub local: Option<SocketAddr>,
    /// UDP payload bytes per probe.
    pub bytes: usize,
    /// Whether probes carry the udpreach header (64 bytes and up).
    pub udpreach_header: bool,
    /// With `--stamp`: STAMP test packets in this mode (`open`, `authenticated`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp_mode: Option<&'static str>,
}

/// What a udpreach server wrote into its reply.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServerView {
    /// The source address the server saw (after any NAT).
    pub server_saw: SocketAddr,
    /// TTL or hop limit of the probe on arrival at the server; 0 when unknown.
    pub server_seen_ttl: u8,
    /// How many of this run's probes the server had received.
    pub server_count: u32,
    /// Server processing time, receive to send, in microseconds.
    pub server_processing_us: f64,
}

/// A reply to a probe (also a late or duplicate one).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingReply {
    pub seq: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bytes: usize,
    pub rtt_ms: f64,
    /// TTL or hop limit of the reply; null when the kernel did not say.
    pub ttl: Option<u8>,
    /// Present against a udpreach server (on `reply` events).
    #[serde(flatten)]
    pub server: Option<ServerView>,
    /// With `--stamp`: what the reflector wrote into its reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<StampReplyInfo>,
    /// With `--dscp`/`--ecn`: DSCP/ECN this probe arrived with at the
    /// server and the reply arrived with here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<ReplyMarks>,
}

/// A probe with no reply within its timeout.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingTimeout {
    pub seq: u64,
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
    pub timeout_ms: f64,
}

/// An ICMP error that answered a probe.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingIcmpError {
    pub seq: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Time from the probe's send to the error.
    pub after_ms: f64,
    #[serde(flatten)]
    pub icmp: IcmpReport,
}

/// A `--sport` source port that was in use locally.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct SkippedPort {
    pub seq: u64,
    pub local_port: u16,
    pub error: String,
}

/// A probe the kernel refused to send.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct SendFailure {
    pub seq: u64,
    pub error: String,
}

/// A reply that was ignored (`corrupt`: payload differs from what was sent;
/// `unauthenticated`: no valid tag).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct IgnoredReply {
    pub seq: u64,
}

/// Something that happened during a ping run.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PingEvent {
    Reply(PingReply),
    /// A reply after its probe's timeout: counted apart, not lost.
    Late(PingReply),
    Duplicate(PingReply),
    Timeout(PingTimeout),
    IcmpError(PingIcmpError),
    Skipped(SkippedPort),
    SendError(SendFailure),
    Corrupt(IgnoredReply),
    Unauthenticated(IgnoredReply),
    /// The machine could not keep the asked interval.
    BehindSchedule(BehindSchedule),
}

/// The send rate the machine achieved when it fell behind the asked interval.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct BehindSchedule {
    pub send_rate_pps: f64,
    pub interval_us: u64,
}

/// Ping's closing statistics.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingSummaryReport {
    #[serde(flatten)]
    pub stats: PingSummary,
    pub target: String,
    pub remote: SocketAddr,
    /// The address probes were sent from; null with `--sport`.
    pub local: Option<SocketAddr>,
    /// The server saw another source address or port than we sent from.
    pub nat_detected: bool,
    /// `--sport` ports in use locally, not tested.
    pub skipped_source_ports: Vec<u16>,
    /// With `--stamp`: the reflector, DSCP/ECN each way, one-way delays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stamp: Option<StampSummary>,
    /// With `--dscp`/`--ecn` (udpreach probes): the DSCP/ECN each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marks: Option<MarksSummary>,
}

/// `ping --json`: one document when the run ends.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PingDocument {
    pub start: PingStart,
    /// Every event in order; absent with `-q`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<PingEvent>>,
    pub summary: PingSummaryReport,
}

/// One line of `ping --json-lines`.
pub(crate) type PingLine = JsonLine<PingStart, PingEvent, PingSummaryReport>;

// ---------------------------------------------------------------- ports

/// `ports` (with a server): what is tested.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PortsStart {
    pub target: String,
    /// The server's control address.
    pub server: SocketAddr,
    /// Ports requested.
    pub total: usize,
}

/// `ports` (with a server): the totals, without the per-port list.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PortsSummary {
    pub target: String,
    pub server: SocketAddr,
    pub total: usize,
    pub reachable: usize,
    pub not_reachable: usize,
    pub elapsed_ms: f64,
    pub probes_sent: u64,
    /// Ports per verdict (verdicts with no port are left out).
    pub counts: BTreeMap<&'static str, usize>,
    /// Compressed port ranges per verdict, e.g. `"5000,7000-8000"`.
    pub ranges: BTreeMap<&'static str, String>,
}

/// `ports --json`: the totals and every port's verdict.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PortsDocument {
    #[serde(flatten)]
    pub summary: PortsSummary,
    pub ports: Vec<PortResult>,
    /// `--trace`: where the blocked ports are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<super::ports_trace::PortsTrace>,
}

/// One port's result as a `--json-lines` event: `{"type": "port", ...}`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PortEvent<R> {
    Port(R),
}

/// One line of `ports --json-lines`.
pub(crate) type PortsLine = JsonLine<PortsStart, PortEvent<PortResult>, PortsSummary>;

/// `mode` of the serverless reports: always `"no_server"`.
#[derive(Clone, Copy, Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NoServer {
    NoServer,
}

/// `ports --no-server`: what is tested.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServerlessStart {
    pub mode: NoServer,
    pub target: String,
    /// The resolved address of the target.
    pub address: IpAddr,
    pub total: usize,
}

/// `ports --no-server`: the totals, without the per-port list.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServerlessSummary {
    pub mode: NoServer,
    pub target: String,
    /// The resolved address of the target.
    pub address: IpAddr,
    pub total: usize,
    pub elapsed_ms: f64,
    /// Probes to the tested ports.
    pub probes_sent: u64,
    /// Extra probes to a port known to be closed, to measure the target's
    /// ICMP rate limit (not tests of a port).
    pub canaries_sent: u64,
    /// The target's ICMP rate limiting, when the check met it.
    pub icmp_rate_limit: Option<IcmpRateLimit>,
    pub counts: BTreeMap<&'static str, usize>,
    pub ranges: BTreeMap<&'static str, String>,
}

/// `ports --no-server --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct ServerlessDocument {
    #[serde(flatten)]
    pub summary: ServerlessSummary,
    pub ports: Vec<ServerlessResult>,
}

/// One line of `ports --no-server --json-lines`.
pub(crate) type ServerlessLine =
    JsonLine<ServerlessStart, PortEvent<ServerlessResult>, ServerlessSummary>;

// ---------------------------------------------------------------- mtu

/// Address family of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub(crate) fn of(a: &SocketAddr) -> Self {
        if a.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// What `mtu` measured with: a udpreach server (each direction) or an echo
/// server (the round trip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MtuMode {
    Server,
    Echo,
}

/// `mtu`: what is measured, and how.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct MtuStart {
    pub target: String,
    pub address: SocketAddr,
    pub family: Family,
    pub mode: MtuMode,
    /// MTU of the interface the route to the target leaves by.
    pub local_mtu: u32,
}

/// The results by mode: `upstream` and `downstream` with a udpreach server,
/// `round_trip` through an echo server.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub(crate) enum MtuPaths {
    Server {
        upstream: Direction,
        downstream: Direction,
    },
    Echo {
        round_trip: Direction,
    },
}

/// `mtu --json`: the result of the whole run.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct MtuDocument {
    pub target: String,
    pub address: SocketAddr,
    pub family: Family,
    #[serde(flatten)]
    pub paths: MtuPaths,
    pub elapsed_ms: f64,
    /// Probes sent by this client (the server's probes downstream not counted).
    pub probes_sent: u64,
}

/// Said during an `mtu` run (text: on stderr), e.g. why it falls back to
/// the echo port.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum MtuEvent {
    Notice { message: String },
}

/// One line of `mtu --json-lines`.
pub(crate) type MtuLine = JsonLine<MtuStart, MtuEvent, MtuDocument>;

// ---------------------------------------------------------------- schemas

/// Every published schema: file name under `docs/schema/` and its JSON text.
#[cfg(test)]
fn schemas() -> Vec<(&'static str, String)> {
    fn one<T: JsonSchema>(name: &'static str) -> (&'static str, String) {
        // Output schemas: a field is required unless it may be left out, so
        // an `Option` printed as null is required (and nullable).
        let generator = schemars::generate::SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator();
        let schema = generator.into_root_schema_for::<T>();
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        (name, text)
    }
    vec![
        one::<PingDocument>("ping.json"),
        one::<PingLine>("ping-lines.json"),
        one::<PortsDocument>("ports.json"),
        one::<PortsLine>("ports-lines.json"),
        one::<ServerlessDocument>("ports-no-server.json"),
        one::<ServerlessLine>("ports-no-server-lines.json"),
        one::<MtuDocument>("mtu.json"),
        one::<MtuLine>("mtu-lines.json"),
        one::<super::nat::NatDocument>("nat.json"),
        one::<super::nat::NatLine>("nat-lines.json"),
        one::<super::trace::TraceDocument>("trace.json"),
        one::<super::trace::TraceLine>("trace-lines.json"),
        one::<crate::monitor::results::MonitorResult>("monitor-lines.json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn schema_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schema")
    }

    /// The committed schemas are what the types generate. To update them
    /// after changing a report type: `UDPREACH_BLESS=1 cargo test -p udpreach
    /// --bin udpreach schemas`.
    #[test]
    fn committed_schemas_match_the_report_types() {
        let dir = schema_dir();
        let bless = std::env::var_os("UDPREACH_BLESS").is_some();
        let mut stale = Vec::new();
        for (name, text) in schemas() {
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).expect("create docs/schema");
                std::fs::write(&path, &text).expect("write schema");
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != text {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "docs/schema/{stale:?} differ from the report types; regenerate with \
             UDPREACH_BLESS=1 cargo test -p udpreach --bin udpreach schemas"
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("docs/schema")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = schemas().iter().map(|(n, _)| n.to_string()).collect();
        expected.sort();
        assert_eq!(
            on_disk, expected,
            "docs/schema holds exactly the published schemas"
        );
    }
}
