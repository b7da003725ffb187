//! Ping output: ping(8)-style lines, one JSON document (`--json`), or one
//! JSON object per line and event (`--json-lines`), all from the typed
//! events and summary of [`super::documents`].

use super::documents::{
    IgnoredReply, PingDocument, PingEvent, PingIcmpError, PingLine, PingReply, PingStart,
    PingSummaryReport, PingTimeout, ServerView,
};
use super::{ms3, print_json_line, print_line, OutputFormat};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_engine::marks::{DirectionMarks, Marking, MarksSummary, ReplyMarks};
use udpreach_engine::ping::PingSummary;
use udpreach_engine::stamp::{ReflectorKind, StampReplyInfo, StampSummary};
use udpreach_wire::icmp::IcmpReport;
use udpreach_wire::probe::ecn_name;
use udpreach_wire::ServerStamp;

pub(crate) struct PingReport {
    format: OutputFormat,
    quiet: bool,
    target_name: String,
    target: SocketAddr,
    /// With `--json`: what the closing document carries.
    start: RefCell<Option<PingStart>>,
    events: RefCell<Vec<PingEvent>>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The kinds of reply a reply event can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Reply,
    Late,
    Duplicate,
}

impl PingEvent {
    /// Events that are remarks about the run rather than a probe's fate:
    /// in text mode they go to stderr, even with `-q`.
    fn is_notice(&self) -> bool {
        matches!(
            self,
            PingEvent::Skipped(_)
                | PingEvent::SendError(_)
                | PingEvent::Corrupt(_)
                | PingEvent::Unauthenticated(_)
                | PingEvent::BehindSchedule(_)
        )
    }

    /// The ping(8)-style line for this event.
    fn text(&self, target: SocketAddr) -> String {
        let reply = |r: &PingReply, note: &str| {
            let mut ttl = r.ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
            if let Some(st) = &r.stamp {
                ttl.push_str(&stamp_reply_text(st));
            }
            if let Some(m) = &r.marks {
                ttl.push_str(&reply_marks_text(m));
            }
            format!(
                "{} -> {} seq={} bytes={} time={} ms{ttl}{note}",
                r.local,
                r.remote,
                r.seq,
                r.bytes,
                ms3(r.rtt_ms)
            )
        };
        match self {
            PingEvent::Reply(r) => reply(r, ""),
            PingEvent::Late(r) => reply(r, " (late: after its timeout)"),
            PingEvent::Duplicate(r) => reply(r, " (DUP!)"),
            PingEvent::Timeout(t) => {
                let l = t.local.map(|l| format!("{l} -> ")).unwrap_or_default();
                format!(
                    "{l}{} seq={} no reply within {} ms",
                    t.remote, t.seq, t.timeout_ms
                )
            }
            PingEvent::IcmpError(e) => {
                let from = e
                    .icmp
                    .from
                    .map_or_else(|| "local host".to_string(), |ip| ip.to_string());
                format!(
                    "{} -> {} seq={} From {from}: {} (after {} ms)",
                    e.local,
                    e.remote,
                    e.seq,
                    e.icmp.reason,
                    ms3(e.after_ms)
                )
            }
            PingEvent::Skipped(s) => format!(
                "source port {} unavailable locally ({}), skipped",
                s.local_port, s.error
            ),
            PingEvent::SendError(f) => {
                format!("seq={} send to {target} failed: {}", f.seq, f.error)
            }
            PingEvent::Corrupt(IgnoredReply { seq }) => {
                format!("seq={seq} reply payload differs from what was sent; ignored")
            }
            PingEvent::Unauthenticated(IgnoredReply { seq }) => {
                format!("seq={seq} reply without a valid authentication tag; ignored")
            }
            PingEvent::BehindSchedule(b) => format!(
                "could not send every {:?}: the achieved rate was {:.0} probes/s (asked {:.0}/s)",
                Duration::from_micros(b.interval_us),
                b.send_rate_pps,
                1e6 / b.interval_us.max(1) as f64
            ),
        }
    }
}

impl PingReport {
    pub(crate) fn new(
        format: OutputFormat,
        quiet: bool,
        target_name: String,
        target: SocketAddr,
    ) -> Self {
        PingReport {
            format,
            quiet,
            target_name,
            target,
            start: RefCell::new(None),
            events: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn start(&self, size: usize, stamped: bool, local: Option<SocketAddr>) {
        self.start_as(size, stamped, None, local)
    }

    /// The start of a `ping --stamp` run: STAMP test packets in `mode`.
    pub(crate) fn start_stamp(&self, size: usize, mode: &'static str, local: Option<SocketAddr>) {
        self.start_as(size, false, Some(mode), local)
    }

    fn start_as(
        &self,
        size: usize,
        stamped: bool,
        stamp_mode: Option<&'static str>,
        local: Option<SocketAddr>,
    ) {
        let start = PingStart {
            target: self.target_name.clone(),
            remote: self.target,
            local,
            bytes: size,
            udpreach_header: stamped,
            stamp_mode,
        };
        match self.format {
            OutputFormat::Text if !self.quiet => {
                let stamp_kind = stamp_mode.map(|m| format!("STAMP test packets ({m} mode)"));
                let kind = if let Some(k) = &stamp_kind {
                    k.as_str()
                } else if stamped {
                    "udpreach probes"
                } else {
                    "plain payload"
                };
                print_line(&format!(
                    "UDPREACH {} ({}): {size} bytes per probe, {kind}",
                    start.target, start.remote
                ));
            }
            OutputFormat::JsonLines if !self.quiet => {
                print_json_line(&PingLine::Start(start.clone()))
            }
            _ => {}
        }
        *self.start.borrow_mut() = Some(start);
    }

    /// Reports one event: printed at once (text, `--json-lines`) or kept
    /// for the closing document (`--json`); `-q` keeps only notices (text).
    pub(crate) fn event(&self, ev: PingEvent) {
        match self.format {
            OutputFormat::Text if ev.is_notice() => eprintln!("udpreach: {}", ev.text(self.target)),
            _ if self.quiet => {}
            OutputFormat::Text => print_line(&ev.text(self.target)),
            OutputFormat::JsonLines => print_json_line(&PingLine::Event(ev)),
            OutputFormat::Json => self.events.borrow_mut().push(ev),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reply(
        &self,
        local: SocketAddr,
        seq: u64,
        bytes: usize,
        rtt: Duration,
        ttl: Option<u8>,
        stamp: Option<&ServerStamp>,
        kind: ReplyKind,
        marks: Option<ReplyMarks>,
    ) {
        let server = stamp.map(|s| ServerView {
            server_saw: s.seen_from,
            server_seen_ttl: s.seen_ttl,
            server_count: s.flow_count,
            server_processing_us: s.tx_ns.saturating_sub(s.rx_ns) as f64 / 1e3,
        });
        self.reply_event(
            kind,
            |r| PingReply { server, marks, ..r },
            (local, seq, bytes, rtt, ttl),
        );
    }

    /// A reply to a STAMP test packet, with what the reflector wrote.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stamp_reply(
        &self,
        local: SocketAddr,
        seq: u64,
        bytes: usize,
        rtt: Duration,
        ttl: Option<u8>,
        info: StampReplyInfo,
        kind: ReplyKind,
    ) {
        let stamp = Some(info);
        self.reply_event(
            kind,
            |r| PingReply { stamp, ..r },
            (local, seq, bytes, rtt, ttl),
        );
    }

    /// One reply event: what every reply has (`seen`: local address, seq,
    /// bytes, RTT, TTL), completed by `fill` with what its kind of peer said.
    fn reply_event(
        &self,
        kind: ReplyKind,
        fill: impl FnOnce(PingReply) -> PingReply,
        seen: (SocketAddr, u64, usize, Duration, Option<u8>),
    ) {
        let (local, seq, bytes, rtt, ttl) = seen;
        let r = fill(PingReply {
            seq,
            local,
            remote: self.target,
            bytes,
            rtt_ms: ms(rtt),
            ttl,
            server: None,
            stamp: None,
            marks: None,
        });
        self.event(match kind {
            ReplyKind::Reply => PingEvent::Reply(r),
            ReplyKind::Late => PingEvent::Late(r),
            ReplyKind::Duplicate => PingEvent::Duplicate(r),
        });
    }

    pub(crate) fn timeout(&self, local: Option<SocketAddr>, seq: u64, after: Duration) {
        self.event(PingEvent::Timeout(PingTimeout {
            seq,
            local,
            remote: self.target,
            timeout_ms: ms(after),
        }));
    }

    /// An ICMP error answered probe `seq`, as ping(8)'s "From X ... Unreachable".
    pub(crate) fn icmp_error(&self, local: SocketAddr, seq: u64, after: Duration, r: &IcmpReport) {
        self.event(PingEvent::IcmpError(PingIcmpError {
            seq,
            local,
            remote: self.target,
            after_ms: ms(after),
            icmp: *r,
        }));
    }

    /// The closing block. `local` is the address we sent from (None with --sport).
    /// `marks`: with `--dscp`/`--ecn`, the DSCP/ECN each way.
    pub(crate) fn summary(
        &self,
        s: &PingSummary,
        local: Option<SocketAddr>,
        skipped_ports: &[u16],
        marks: Option<MarksSummary>,
    ) {
        self.summary_as(s, local, skipped_ports, None, marks)
    }

    /// The closing block of a `ping --stamp` run.
    pub(crate) fn summary_stamp(
        &self,
        s: &PingSummary,
        local: Option<SocketAddr>,
        stamp: StampSummary,
    ) {
        self.summary_as(s, local, &[], Some(stamp), None)
    }

    fn summary_as(
        &self,
        s: &PingSummary,
        local: Option<SocketAddr>,
        skipped_ports: &[u16],
        stamp: Option<StampSummary>,
        marks: Option<MarksSummary>,
    ) {
        let stamp_mode = stamp.as_ref().map(|st| st.mode);
        let report = PingSummaryReport {
            stats: s.clone(),
            target: self.target_name.clone(),
            remote: self.target,
            local,
            nat_detected: nat_line(s, local).is_some(),
            skipped_source_ports: skipped_ports.to_vec(),
            stamp,
            marks,
        };
        match self.format {
            OutputFormat::Text => print_line(&summary_text(&report)),
            OutputFormat::JsonLines => print_json_line(&PingLine::Summary(report)),
            OutputFormat::Json => {
                let start = self.start.borrow_mut().take().unwrap_or(PingStart {
                    target: self.target_name.clone(),
                    remote: self.target,
                    local,
                    bytes: 0,
                    udpreach_header: false,
                    stamp_mode,
                });
                let events = (!self.quiet).then(|| self.events.take());
                super::print_json(&PingDocument {
                    start,
                    events,
                    summary: report,
                });
            }
        }
    }
}

/// The ping(8)-style closing block.
fn summary_text(report: &PingSummaryReport) -> String {
    let s = &report.stats;
    let skipped_ports = &report.skipped_source_ports;
    let nat = nat_line(s, report.local);
    let mut lines = vec![format!("--- {} statistics ---", report.target)];
    // ping(8) style: the error count only when there were errors.
    let errors = if s.errors > 0 {
        format!(", +{} errors", s.errors)
    } else {
        String::new()
    };
    lines.push(format!(
            "{} packets transmitted, {} received{errors}, {} duplicates, {} late, {} reordered, {}% packet loss, time {:.0}ms",
            s.transmitted,
            s.received,
            s.duplicates,
            s.late,
            s.reordered,
            trim_pct(s.loss_percent),
            s.elapsed_ms
        ));
    if s.withheld > 0 {
        lines.push(format!(
            "{} replies withheld by the server's rate limit (not counted as loss)",
            s.withheld
        ));
    }
    if s.local_drops > 0 {
        lines.push(format!(
            "{} replies dropped by this host (its receive buffer was full; not counted as loss): a larger --recv-buffer or a slower rate (-i) avoids it",
            s.local_drops
        ));
    }
    if let Some(r) = &s.rtt {
        lines.push(format!(
            "rtt min/avg/max/mdev = {}/{}/{}/{} ms",
            ms3(r.min_ms),
            ms3(r.avg_ms),
            ms3(r.max_ms),
            ms3(r.mdev_ms)
        ));
        lines.push(format!(
            "rtt p50/p90/p99 = {}/{}/{} ms, jitter (ipdv) {} ms, rfc3550 {} ms",
            ms3(r.p50_ms),
            ms3(r.p90_ms),
            ms3(r.p99_ms),
            ms3(r.ipdv_ms),
            ms3(r.jitter_rfc3550_ms)
        ));
    }
    for t in &s.icmp_errors {
        lines.push(format!("icmp errors: {} x {}", t.count, t.report));
    }
    if let (Some(up), Some(down)) = (s.upstream_lost, s.downstream_lost) {
        lines.push(format!(
            "loss by direction: {up} upstream (to server), {down} downstream (to us), {} unknown",
            s.direction_unknown.unwrap_or(0)
        ));
    }
    if let Some(st) = &report.stamp {
        stamp_summary_lines(st, s, &mut lines);
    } else if let Some(p) = &s.server_processing {
        let mut l = format!(
            "server: processing min/avg/max = {:.1}/{:.1}/{:.1} us",
            p.min_us, p.avg_us, p.max_us
        );
        if let Some(saw) = s.server_saw {
            l.push_str(&format!("; saw you as {saw}"));
        }
        if let Some(ttl) = s.server_seen_ttl {
            l.push_str(&format!(" with TTL {ttl}"));
        }
        lines.push(l);
    }
    if let Some(m) = &report.marks {
        lines.extend(marks_lines(m));
    }
    if let Some(n) = nat {
        lines.push(n);
    }
    if s.send_errors > 0 {
        lines.push(format!("{} probes could not be sent", s.send_errors));
    }
    if !skipped_ports.is_empty() {
        lines.push(format!(
            "source ports in use locally, skipped: {}",
            udpreach_wire::PortSpec::from_ports(skipped_ports.iter().copied())
        ));
    }
    if !s.silent_source_ports.is_empty() {
        lines.push(format!(
            "source ports with no reply: {}",
            udpreach_wire::PortSpec::from_ports(s.silent_source_ports.iter().copied())
        ));
    }
    lines.join("\n")
}

/// `dscp 46 -> 46 arrived (upstream), 46 -> 0 (downstream)` and the same
/// for ECN; every marking seen when they varied; "?" when nothing told.
fn marks_lines(m: &MarksSummary) -> Vec<String> {
    let side = |d: &Option<DirectionMarks>, field: fn(u8, u8) -> String| match d {
        None => "?".to_string(),
        Some(d) if d.seen.len() == 1 => field(d.arrived.dscp, d.arrived.ecn),
        Some(d) => d
            .seen
            .iter()
            .map(|c| format!("{} x{}", field(c.dscp, c.ecn), c.replies))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let dscp = |d: u8, _| d.to_string();
    let ecn = |_, e: u8| ecn_name(e).to_string();
    let mut lines = vec![
        format!(
            "dscp {} -> {} arrived (upstream), {} -> {} (downstream)",
            m.sent.dscp,
            side(&m.upstream, dscp),
            m.sent.dscp,
            side(&m.downstream, dscp)
        ),
        format!(
            "ecn {} -> {} arrived (upstream), {} -> {} (downstream)",
            ecn_name(m.sent.ecn),
            side(&m.upstream, ecn),
            ecn_name(m.sent.ecn),
            side(&m.downstream, ecn)
        ),
    ];
    if m.upstream.is_none() && m.replies_without_report > 0 {
        lines.push(
            "upstream dscp/ecn: could not tell (the server did not report it: an older udpreach server or a plain echo server)".to_string(),
        );
    }
    lines
}

fn trim_pct(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The seed's transparent-proxy question: does the server see our real address?
fn nat_line(s: &PingSummary, local: Option<SocketAddr>) -> Option<String> {
    let saw = s.server_saw?;
    match local {
        Some(l) if l.ip().is_unspecified() => (l.port() != saw.port()).then(|| {
            format!(
                "NAT or proxy in the path: server sees you as {saw} (you sent from port {})",
                l.port()
            )
        }),
        Some(l) if l != saw => Some(format!(
            "NAT or proxy in the path: server sees you as {saw} (you sent from {l})"
        )),
        None if s.port_translated > 0 => Some(format!(
            "NAT or proxy in the path: {} replies show a translated source port",
            s.port_translated
        )),
        _ => None,
    }
}

/// What a STAMP reply adds to its line: the reflector's view of our packet.
fn stamp_reply_text(st: &StampReplyInfo) -> String {
    let mut t = format!(
        " reflector_seq={} reflector_ttl={} reflector_time={:.1} us",
        st.reflector_seq,
        st.reflector_seen_ttl,
        st.reflector_processing_ns as f64 / 1e3
    );
    if let (Some(f), Some(b)) = (st.forward_ns, st.backward_ns) {
        t.push_str(&format!(
            " one-way={}/{} ms",
            ms3(f as f64 / 1e6),
            ms3(b as f64 / 1e6)
        ));
    }
    if let Some(d) = st.reflector_saw_dscp {
        let back = st
            .reply_dscp
            .map_or_else(|| "?".to_string(), |d| d.to_string());
        t.push_str(&format!(" dscp_there={d} dscp_back={back}"));
    }
    t
}

/// What `--dscp`/`--ecn` add to a reply's line: the marking at the server
/// ("there") and of the reply here ("back"); "?" when not told.
fn reply_marks_text(m: &ReplyMarks) -> String {
    let dscp = |x: Option<Marking>| x.map_or_else(|| "?".to_string(), |x| x.dscp.to_string());
    let ecn = |x: Option<Marking>| x.map_or("?", |x| ecn_name(x.ecn));
    format!(
        " dscp_there={} dscp_back={} ecn_there={} ecn_back={}",
        dscp(m.at_server),
        dscp(m.here),
        ecn(m.at_server),
        ecn(m.here)
    )
}

/// The closing lines only STAMP gives.
fn stamp_summary_lines(st: &StampSummary, s: &PingSummary, lines: &mut Vec<String>) {
    let kind = match st.reflector {
        ReflectorKind::Stateful => "stateful",
        ReflectorKind::Stateless => "stateless",
        ReflectorKind::Unknown => "unknown (no reply)",
    };
    let mut l = format!("reflector: {kind}, {} mode", st.mode);
    if let Some(p) = &s.server_processing {
        l.push_str(&format!(
            "; processing min/avg/max = {:.1}/{:.1}/{:.1} us",
            p.min_us, p.avg_us, p.max_us
        ));
    }
    if let Some(ttl) = s.server_seen_ttl {
        l.push_str(&format!("; saw your packets with TTL {ttl}"));
    }
    lines.push(l);
    if s.lost > 0 && s.upstream_lost.is_none() {
        lines.push(format!(
            "loss by direction: could not tell ({} lost; {})",
            s.lost,
            if st.reflector == ReflectorKind::Stateful {
                "the reflector's counter moved more than we sent, e.g. duplicates"
            } else {
                "a stateless reflector echoes our numbers"
            }
        ));
    }
    if let Some(ow) = &st.one_way {
        if let (Some(f), Some(b)) = (&ow.forward, &ow.backward) {
            lines.push(format!(
                "one-way delay p50 forward/backward = {}/{} ms (both clocks marked synchronised)",
                ms3(f.p50_ms),
                ms3(b.p50_ms)
            ));
        }
    }
    if let Some(c) = &st.class_of_service {
        let opt = |v: Option<u8>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        lines.push(format!(
            "dscp/ecn: sent {}/{}, arrived at reflector {}/{}, reply arrived {}/{}{}; {} replies remarked",
            c.sent_dscp,
            c.sent_ecn,
            opt(c.reflector_saw_dscp),
            opt(c.reflector_saw_ecn),
            opt(c.reply_dscp),
            opt(c.reply_ecn),
            match c.reflector_used_requested_dscp {
                Some(false) => " (reflector did not use the DSCP asked for)",
                _ => "",
            },
            c.remarked_replies
        ));
    }
    if st.ignored > 0 {
        lines.push(format!(
            "{} packets from the reflector ignored (not a STAMP reply, or a wrong HMAC)",
            st.ignored
        ));
    }
}
