//! The monitor's checks: thin adapters that drive the existing engines
//! ([`PingSession`] for ping, [`StampSender`] for STAMP, [`Sweep`] for
//! ports, `udpreach mtu`'s driver of `MtuSearch` for mtu) with the monitor's sockets and feed what they conclude into
//! metrics and the results stream. Ping and STAMP share one window driver
//! ([`run_windows`]): the same series, the same loss accounting.

use super::config::{MtuCheck, PingCheck, PortsCheck};
use super::metrics::{CheckSeries, PingSeries, TargetMetrics, MTU_DIRECTIONS};
use super::results::{unix_now, Outcome, PathMtuResult, PingResult, PortsResult, ResultSink};
use crate::control_client::ControlClient;
use crate::mtu::Measured;
use crate::ping::payload::{PayloadBuilder, Reply};
use crate::platform::{canonical, realtime_ns, AsyncUdp, Received, UdpOptions};
use crate::ports::{drive, Ending, SweepIo};
use crate::report::mtu::MtuReport;
use crate::target::{resolve_async_port, unspecified_for, Family};
use anyhow::Context;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::ping::{PingConfig, PingEvent, PingInput, PingSession, PingSummary};
use udpreach_engine::stamp::{StampEvent, StampInput, StampSender, StampSenderConfig};
use udpreach_engine::sweep::{PortResult, Sweep, SweepConfig, SweepPlan};
use udpreach_engine::Engine;
use udpreach_engine::Verdict;
use udpreach_wire::auth::{SharedKey, MIN_SEALED_LEN};
use udpreach_wire::icmp::{IcmpOrigin, IcmpReport};
use udpreach_wire::stamp::{Mode, ReflectorPacket, SenderPacket, TimestampFormat};

/// How often a running ping check copies its session's counters to metrics.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How long a target that does not resolve waits before trying again.
pub(crate) const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// Which ping-like check a [`PingTarget`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prober {
    /// udpreach probes to a udpreach server (or any UDP echo server).
    Ping,
    /// STAMP test packets (RFC 8762/8972) to any STAMP reflector.
    Stamp,
}

impl Prober {
    /// The `check` label value.
    pub(crate) fn check(self) -> &'static str {
        match self {
            Prober::Ping => "ping",
            Prober::Stamp => "stamp",
        }
    }

    /// The port a target without one is probed on.
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Prober::Ping => crate::cli::DEFAULT_PORT,
            Prober::Stamp => udpreach_wire::stamp::PORT,
        }
    }
}

/// One target's ping or STAMP check: continuous (`count: None`) or a fixed
/// number of probes (`/probe`).
pub(crate) struct PingTarget {
    pub name: String,
    pub group: String,
    pub prober: Prober,
    pub check: PingCheck,
    pub key: Option<SharedKey>,
    pub count: Option<u64>,
}

/// Resolves a target, keeping `udpreach_target_resolved` up to date; a
/// continuous check retries, a one-shot gives up.
async fn resolve(
    name: &str,
    default_port: u16,
    m: &TargetMetrics,
    retry: bool,
    check: &str,
) -> Option<SocketAddr> {
    loop {
        match resolve_async_port(name, default_port, Family::Any).await {
            Ok(a) => {
                m.set_resolved(true);
                return Some(a);
            }
            Err(e) => {
                m.set_resolved(false);
                m.check(check, false, None);
                tracing::warn!("monitor: {name}: {e:#}");
                // A target that can never resolve is not retried.
                if !retry || !e.is_transient() {
                    return None;
                }
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    }
}

/// A continuous check runs its probes in windows of about this long: one
/// engine session per window, so memory and the cost of a summary stay
/// flat however long the agent runs. Windows overlap (the next starts on
/// schedule while the last one's final probes wait for their timeout).
pub(crate) const WINDOW: Duration = Duration::from_secs(30);
/// Probes per window, whatever the interval.
pub(crate) const WINDOW_PROBES: (u64, u64) = (10, 100);

/// Counters summed over a target's windows.
#[derive(Clone, Copy, Default)]
struct Totals {
    sent: u64,
    received: u64,
    duplicates: u64,
    late: u64,
    reordered: u64,
    withheld: u64,
    /// upstream, downstream, unknown.
    lost: [u64; 3],
}

impl Totals {
    /// Adds a window's counters; its loss only once the window is over
    /// (`finished`): a probe in flight is not lost, and which way a loss
    /// went is known only after later replies carry the server's counter.
    fn add(&mut self, s: &udpreach_engine::PingSummary, finished: bool) {
        self.sent += s.transmitted;
        self.received += s.received;
        self.duplicates += s.duplicates;
        self.late += s.late;
        self.reordered += s.reordered;
        if finished {
            self.withheld += s.withheld;
            let up = s.upstream_lost.unwrap_or(0);
            let down = s.downstream_lost.unwrap_or(0);
            let unknown = s
                .direction_unknown
                .unwrap_or_else(|| s.lost.saturating_sub(up + down));
            self.lost[0] += up;
            self.lost[1] += down;
            self.lost[2] += unknown;
        }
    }

    /// The counters in the order of `counters` below.
    fn values(&self) -> [u64; 9] {
        let [up, down, unknown] = self.lost;
        [
            self.sent,
            self.received,
            self.duplicates,
            self.late,
            self.reordered,
            self.withheld,
            up,
            down,
            unknown,
        ]
    }
}

/// Copies `now` to the target's counters (which only go up) past `published`.
fn publish(now: &Totals, series: &PingSeries, published: &mut Totals) {
    let [up, down, unknown] = &series.lost;
    let counters = [
        &series.sent,
        &series.replies,
        &series.duplicates,
        &series.late,
        &series.reordered,
        &series.withheld,
        up,
        down,
        unknown,
    ];
    for ((counter, now), last) in counters
        .into_iter()
        .zip(now.values())
        .zip(published.values())
    {
        if now > last {
            counter.inc_by(now - last);
        }
    }
    *published = *now;
}

/// Runs a ping or STAMP check until its count is done (or forever, for the agent).
pub(crate) async fn ping(t: PingTarget, m: TargetMetrics, sink: ResultSink) {
    let series = m.ping_series();
    let check = t.prober.check();
    let Some(target) = resolve(
        &t.name,
        t.prober.default_port(),
        &m,
        t.count.is_none(),
        check,
    )
    .await
    else {
        return;
    };
    let run = Run {
        t: &t,
        target,
        m: &m,
        series: &series,
        check: m.check_series(check),
        sink: &sink,
    };
    let res = match t.prober {
        Prober::Ping => run_ping(&run).await,
        Prober::Stamp => run_stamp(&run).await,
    };
    if let Err(e) = res {
        tracing::warn!("monitor: {check} {}: {e:#}", t.name);
        run.check.set(false, None);
    }
}

/// What one running check reports to.
struct Run<'a> {
    t: &'a PingTarget,
    target: SocketAddr,
    m: &'a TargetMetrics,
    series: &'a PingSeries,
    check: CheckSeries,
    sink: &'a ResultSink,
}

/// One window's engine as the window driver ([`run_windows`]) sees it:
/// ping's [`PingSession`] with our payload, or the STAMP [`StampSender`].
trait ProbeWindow {
    type Engine: Engine;
    fn engine(&self) -> &Self::Engine;
    fn engine_mut(&mut self) -> &mut Self::Engine;
    /// The next probe due at `now`: its seq and bytes.
    fn poll_probe(&mut self, now: Instant) -> Option<(u64, &[u8])>;
    /// The probe left at `at`.
    fn sent(&mut self, seq: u64, at: Instant);
    fn send_failed(&mut self, seq: u64, at: Instant);
    /// A datagram from the target read at `at`: true when it answers this window.
    fn reply(&mut self, data: &[u8], at: Instant) -> bool;
    /// Whether the datagram an ICMP error quotes is one of this window's
    /// probes, and which (`Some(None)`: ours, seq unknown).
    fn quoted(&self, quoted: &[u8]) -> Option<Option<u64>>;
    fn icmp(&mut self, seq: Option<u64>, report: IcmpReport, at: Instant);
    fn poll_event(&mut self) -> Option<PingEvent>;
    fn summary(&self) -> PingSummary;
}

struct PingWindow {
    session: PingSession,
    builder: PayloadBuilder,
    packet: Vec<u8>,
}

impl ProbeWindow for PingWindow {
    type Engine = PingSession;
    fn engine(&self) -> &PingSession {
        &self.session
    }
    fn engine_mut(&mut self) -> &mut PingSession {
        &mut self.session
    }
    fn poll_probe(&mut self, now: Instant) -> Option<(u64, &[u8])> {
        let seq = self.session.poll_transmit(now)?;
        self.builder.build(seq, realtime_ns(), &mut self.packet);
        Some((seq, &self.packet))
    }
    fn sent(&mut self, seq: u64, at: Instant) {
        let sent = PingInput::Sent {
            seq,
            local_port: None,
            send_call_ns: None,
        };
        self.session.handle_input(sent, at);
    }
    fn send_failed(&mut self, seq: u64, at: Instant) {
        self.session.handle_input(PingInput::SendFailed { seq }, at);
    }
    fn reply(&mut self, data: &[u8], at: Instant) -> bool {
        let (seq, stamp) = match self.builder.check(data) {
            Reply::Stamped { seq, stamp, .. } => (seq, Some(stamp)),
            Reply::Plain { seq } => (seq, None),
            _ => return false,
        };
        let reply = PingInput::Reply {
            seq,
            kernel_rx_ns: None,
            stamp,
        };
        self.session.handle_input(reply, at);
        true
    }
    fn quoted(&self, quoted: &[u8]) -> Option<Option<u64>> {
        self.builder.seq_of_quote(quoted).map(Some)
    }
    fn icmp(&mut self, seq: Option<u64>, report: IcmpReport, at: Instant) {
        self.session
            .handle_input(PingInput::IcmpError { seq, report }, at);
    }
    fn poll_event(&mut self) -> Option<PingEvent> {
        self.session.poll_event()
    }
    fn summary(&self) -> PingSummary {
        self.session.summary()
    }
}

/// A STAMP window: its own session-sender identifier, so a stateful
/// reflector counts each window as a session of its own (its counter starts
/// again, and the loss split stays per window) and replies find their window.
struct StampWindow {
    sender: StampSender,
    ssid: u16,
    mode: Mode,
    packet: Vec<u8>,
}

impl ProbeWindow for StampWindow {
    type Engine = StampSender;
    fn engine(&self) -> &StampSender {
        &self.sender
    }
    fn engine_mut(&mut self) -> &mut StampSender {
        &mut self.sender
    }
    fn poll_probe(&mut self, now: Instant) -> Option<(u64, &[u8])> {
        let t = self.sender.poll_transmit(now)?;
        self.packet = t.data;
        Some((t.seq, &self.packet))
    }
    fn sent(&mut self, _seq: u64, _at: Instant) {
        // The sender counts a probe as sent when it hands it out.
    }
    fn send_failed(&mut self, seq: u64, at: Instant) {
        self.sender.handle_input(StampInput::SendFailed { seq }, at);
    }
    fn reply(&mut self, data: &[u8], at: Instant) -> bool {
        match ReflectorPacket::decode(data, self.mode) {
            Ok(r) if r.ssid == self.ssid => {}
            _ => return false,
        }
        let reply = StampInput::Reply {
            data: data.to_vec(),
            kernel_rx_ns: None,
            tos: None,
        };
        self.sender.handle_input(reply, at);
        true
    }
    fn quoted(&self, quoted: &[u8]) -> Option<Option<u64>> {
        let p = SenderPacket::decode(quoted, self.mode).ok()?;
        (p.ssid == self.ssid).then_some(None)
    }
    fn icmp(&mut self, seq: Option<u64>, report: IcmpReport, at: Instant) {
        self.sender
            .handle_input(StampInput::Icmp { seq, report }, at);
    }
    fn poll_event(&mut self) -> Option<PingEvent> {
        loop {
            match self.sender.poll_event()? {
                StampEvent::Reply { event, .. } | StampEvent::Ping(event) => return Some(event),
                StampEvent::Ignored { .. } => {}
            }
        }
    }
    fn summary(&self) -> PingSummary {
        self.sender.summary()
    }
}

/// One window: its engine, how many probes it sends, and where its seq
/// numbers continue in what the results stream shows.
struct Window<W> {
    probe: W,
    count: u64,
    first_seq: u64,
}

/// Reports what a window's engine says happened: each answer, timeout and
/// ICMP error is a result line, and an RTT sample for answers.
fn report_events<W: ProbeWindow>(w: &mut Window<W>, run: &Run) {
    while let Some(ev) = w.probe.poll_event() {
        let (seq, outcome, rtt) = match ev {
            PingEvent::Reply { seq, rtt, .. } => {
                run.series.rtt.observe(rtt.as_secs_f64());
                run.check.set(true, Some(rtt.as_secs_f64()));
                (seq, Outcome::Reply, Some(rtt))
            }
            PingEvent::Late { seq, rtt, .. } => (seq, Outcome::Late, Some(rtt)),
            PingEvent::Duplicate { seq, rtt, .. } => (seq, Outcome::Duplicate, Some(rtt)),
            PingEvent::Timeout { seq, .. } => {
                run.check.set(false, None);
                (seq, Outcome::Timeout, None)
            }
            PingEvent::IcmpError { seq, .. } => {
                run.check.set(false, None);
                (seq, Outcome::IcmpError, None)
            }
        };
        if run.sink.is_on() {
            let r = PingResult::new(&run.t.name, &run.t.group, w.first_seq + seq, outcome, rtt);
            run.sink.probe(run.t.prober, r);
        }
    }
}

fn probes_per_window(interval: Duration) -> u64 {
    let n = (WINDOW.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    n.clamp(WINDOW_PROBES.0, WINDOW_PROBES.1)
}

/// The socket a ping or STAMP check sends from and reads replies on.
fn probe_socket(run: &Run) -> anyhow::Result<AsyncUdp> {
    let opts = UdpOptions {
        dscp: run.t.check.dscp,
        recv_errors: true,
        ..UdpOptions::default()
    };
    AsyncUdp::bind(unspecified_for(&run.target, 0), &opts)
        .with_context(|| format!("cannot open a UDP socket towards {}", run.target))
}

async fn run_ping(run: &Run<'_>) -> anyhow::Result<()> {
    let t = run.t;
    let keyed = t.key.is_some();
    let size = t.check.size.unwrap_or(if keyed {
        MIN_SEALED_LEN
    } else {
        crate::cli::DEFAULT_PING_SIZE
    });
    let size = if keyed {
        size.max(MIN_SEALED_LEN)
    } else {
        size
    };
    let sock = probe_socket(run)?;
    let new_window = |count: u64, now: Instant| {
        let token: u64 = rand::random();
        PingWindow {
            session: PingSession::without_rtt_stats(ping_config(t, count), now),
            builder: PayloadBuilder {
                token,
                size,
                key: t.key.as_ref().map(|k| k.ping_key(token)),
                mark: None,
            },
            packet: Vec::with_capacity(size),
        }
    };
    run_windows(run, &sock, size, new_window).await
}

async fn run_stamp(run: &Run<'_>) -> anyhow::Result<()> {
    let t = run.t;
    let tos = t.check.dscp.map(|d| d << 2);
    let size = t
        .check
        .size
        .unwrap_or_else(|| udpreach_engine::stamp::min_len(t.key.is_some(), tos.is_some()));
    let mode = if t.key.is_some() {
        Mode::Authenticated
    } else {
        Mode::Open
    };
    let sock = probe_socket(run)?;
    let first_ssid: u16 = rand::random();
    let mut windows = 0u16;
    let new_window = |count: u64, now: Instant| {
        // Never 0: a reflector that does not know RFC 8972 writes 0 there.
        let ssid = first_ssid.wrapping_add(windows).max(1);
        windows = windows.wrapping_add(1);
        let cfg = StampSenderConfig {
            ping: ping_config(t, count),
            key: t.key.as_ref().map(|k| k.stamp_hmac_key().to_vec()),
            ssid,
            format: TimestampFormat::Ntp,
            synchronized: false,
            class_of_service: tos,
            size,
            wall_clock_ns: realtime_ns(),
        };
        StampWindow {
            sender: StampSender::without_rtt_stats(cfg, now),
            ssid,
            mode,
            packet: Vec::new(),
        }
    };
    run_windows(run, &sock, size, new_window).await
}

fn ping_config(t: &PingTarget, count: u64) -> PingConfig {
    PingConfig {
        count: Some(count),
        interval: t.check.interval,
        timeout: t.check.timeout,
        deadline: None,
    }
}

/// Drives a check's windows on `sock` until its count is done (or for
/// ever): sends what is due, hands each reply and ICMP error to its window,
/// folds finished windows into the totals and publishes them.
async fn run_windows<W: ProbeWindow>(
    run: &Run<'_>,
    sock: &AsyncUdp,
    size: usize,
    mut new_window: impl FnMut(u64, Instant) -> W,
) -> anyhow::Result<()> {
    let (t, target) = (run.t, run.target);
    let per_window = t
        .count
        .unwrap_or_else(|| probes_per_window(t.check.interval));
    let window = |probe: W, first_seq: u64| Window {
        probe,
        count: per_window,
        first_seq,
    };
    let started = Instant::now();
    // Oldest first; the last one is sending, the others wait for their last replies.
    let mut windows: VecDeque<Window<W>> =
        VecDeque::from([window(new_window(per_window, started), 0)]);
    // The next window starts one interval after the current one's last probe.
    let mut next_window_at: Option<Instant> = None;
    let mut sent_in_window = 0u64;
    let mut finished = Totals::default();
    let mut published = Totals::default();
    let mut buf = vec![0u8; size.max(2048) + 1];
    let mut next_publish = started + PUBLISH_EVERY;
    loop {
        let now = Instant::now();
        if t.count.is_none() && next_window_at.is_some_and(|at| now >= at) {
            let first = windows.back().map_or(0, |w| w.first_seq + w.count);
            windows.push_back(window(new_window(per_window, now), first));
            sent_in_window = 0;
            next_window_at = None;
        }
        if let Some(w) = windows.back_mut() {
            while let Some((seq, packet)) = w.probe.poll_probe(now) {
                let res = sock.send_to(packet, target).await;
                sent_in_window += 1;
                if sent_in_window == w.count {
                    next_window_at = Some(now + t.check.interval);
                }
                match res {
                    Ok(_) => w.probe.sent(seq, Instant::now()),
                    Err(e) => {
                        tracing::debug!("monitor: {} {}: send: {e}", t.prober.check(), t.name);
                        w.probe.send_failed(seq, Instant::now());
                    }
                }
            }
        }
        let now = Instant::now();
        for w in windows.iter_mut() {
            if w.probe.engine().poll_timeout().is_some_and(|at| at <= now) {
                w.probe.engine_mut().handle_timeout(now);
            }
            report_events(w, run);
        }
        // Windows done (every probe answered or timed out) fold into the totals.
        while windows.len() > 1 || t.count.is_some() {
            let Some(w) = windows.front_mut() else { break };
            if !w.probe.engine().is_done() {
                break;
            }
            let s = w.probe.summary();
            finished.add(&s, true);
            windows.pop_front();
        }
        if windows.is_empty() {
            // A one-shot check (`/probe`): it succeeds when any probe was answered.
            publish(&finished, run.series, &mut published);
            run.check
                .set(finished.received > 0, Some(started.elapsed().as_secs_f64()));
            return Ok(());
        }
        if now >= next_publish {
            let mut now_totals = finished;
            let mut seen = None;
            for w in &windows {
                let s = w.probe.summary();
                // The newest window that got a stamped reply knows best.
                seen = s.server_saw.or(seen);
                now_totals.add(&s, false);
            }
            if let Some(addr) = seen {
                run.m.set_seen_address(addr.to_string());
            }
            publish(&now_totals, run.series, &mut published);
            next_publish = now + PUBLISH_EVERY;
        }
        let mut wake = next_publish;
        if let (None, Some(at)) = (t.count, next_window_at) {
            wake = wake.min(at);
        }
        for w in &windows {
            if let Some(at) = w.probe.engine().poll_timeout() {
                wake = wake.min(at);
            }
        }
        tokio::select! {
            r = sock.recv_any(&mut buf) => match r {
                Ok(Received::Datagram(meta)) => {
                    if canonical(meta.from) != canonical(target) {
                        continue;
                    }
                    let data = &buf[..meta.len];
                    let at = Instant::now();
                    for w in windows.iter_mut() {
                        if w.probe.reply(data, at) {
                            report_events(w, run);
                            break;
                        }
                    }
                }
                Ok(Received::Error(e)) => {
                    if e.error.origin == IcmpOrigin::Local
                        || e.dest.is_some_and(|d| canonical(d) != canonical(target))
                    {
                        continue;
                    }
                    // Too little quoted to tell: the newest window's latest probe.
                    let (found, seq) = windows
                        .iter()
                        .enumerate()
                        .find_map(|(i, w)| w.probe.quoted(&e.quoted).map(|s| (i, s)))
                        .unwrap_or((windows.len() - 1, None));
                    let w = &mut windows[found];
                    w.probe.icmp(seq, e.error.report(), Instant::now());
                    report_events(w, run);
                }
                Err(e) => tracing::debug!("monitor: {} {}: receive: {e}", t.prober.check(), t.name),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// One target's ports check.
pub(crate) struct PortsTarget {
    pub name: String,
    pub group: String,
    pub check: PortsCheck,
    pub key: Option<SharedKey>,
}

/// Longest one sweep may take before it counts as failed.
pub(crate) const MAX_SWEEP: Duration = Duration::from_secs(120);

/// Runs `once` against the target now and, with `repeat`, every `every`
/// (a target that does not resolve is retried as ping's are).
async fn periodic<F, Fut>(
    name: &str,
    m: &TargetMetrics,
    check: &str,
    repeat: bool,
    every: Duration,
    mut once: F,
) where
    F: FnMut(SocketAddr, Instant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let started = Instant::now();
        let server = resolve(name, crate::cli::DEFAULT_PORT, m, repeat, check).await;
        if let Some(server) = server {
            once(server, started).await;
        }
        if !repeat {
            return;
        }
        tokio::time::sleep_until((started + every).into()).await;
    }
}

/// Runs one ports sweep and records it; `repeat` runs it every `check.every`.
pub(crate) async fn ports(t: PortsTarget, m: TargetMetrics, sink: ResultSink, repeat: bool) {
    let limit = if repeat {
        t.check.every.min(MAX_SWEEP)
    } else {
        MAX_SWEEP
    };
    let (t, m, sink) = (&t, &m, &sink);
    periodic(
        &t.name,
        m,
        "ports",
        repeat,
        t.check.every,
        |server, started| async move {
            let res = tokio::time::timeout(limit, sweep_once(server, &t.check, t.key.as_ref()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("sweep took longer than {limit:?}")));
            let took = started.elapsed().as_secs_f64();
            let mut counts: BTreeMap<Verdict, u64> = BTreeMap::new();
            let error = match res {
                Ok(results) => {
                    for r in &results {
                        *counts.entry(r.verdict).or_default() += 1;
                    }
                    None
                }
                Err(e) => {
                    tracing::warn!("monitor: ports {}: {e:#}", t.name);
                    Some(format!("{e:#}"))
                }
            };
            let all_ok = error.is_none()
                && counts.keys().all(|v| *v == Verdict::Reachable)
                && !counts.is_empty();
            if error.is_none() {
                m.set_ports(&counts.iter().map(|(v, n)| (*v, *n)).collect::<Vec<_>>());
            }
            m.check("ports", all_ok, Some(took));
            sink.ports(PortsResult::new(&t.name, &t.group, &counts, took, error));
        },
    )
    .await;
}

/// One target's mtu check.
pub(crate) struct MtuTarget {
    pub name: String,
    pub group: String,
    pub check: MtuCheck,
    pub key: Option<SharedKey>,
}

/// Longest one mtu check may take before it counts as failed.
pub(crate) const MAX_MTU_CHECK: Duration = Duration::from_secs(60);

/// Measures the path MTU as `udpreach mtu` does (each direction against a
/// udpreach server, else the round trip through the echo port; no fragment
/// test) and records it; `repeat` runs it every `check.every`.
pub(crate) async fn mtu(t: MtuTarget, m: TargetMetrics, sink: ResultSink, repeat: bool) {
    let (t, m, sink) = (&t, &m, &sink);
    periodic(
        &t.name,
        m,
        "mtu",
        repeat,
        t.check.every,
        |target, started| async move {
            let args = crate::cli::MtuArgs {
                target: t.name.clone(),
                control: None,
                echo: false,
                family: crate::cli::FamilyArgs {
                    ipv4: false,
                    ipv6: false,
                },
                probes: t.check.probes,
                timeout: None,
                no_fragments: true,
                output: crate::cli::OutputArgs {
                    quiet: true,
                    json: false,
                    json_lines: false,
                },
                key: crate::cli::KeyArgs { key_file: None },
            };
            let report = MtuReport::silent(t.name.clone(), target);
            let measured = crate::mtu::measure(target, &args, t.key.as_ref(), &report);
            let res = tokio::time::timeout(MAX_MTU_CHECK, measured)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("took longer than {MAX_MTU_CHECK:?}")));
            let took = started.elapsed().as_secs_f64();
            // upstream, downstream, round trip (the order of MTU_DIRECTIONS).
            let (found, error) = match res {
                Ok(found) => match found.paths {
                    Measured::Directions { up, down } => {
                        ([up.result.mtu, down.result.mtu, None], None)
                    }
                    Measured::RoundTrip(rt) => ([None, None, rt.result.mtu], None),
                },
                Err(e) => {
                    tracing::warn!("monitor: mtu {}: {e:#}", t.name);
                    ([None; 3], Some(format!("{e:#}")))
                }
            };
            for (direction, mtu) in MTU_DIRECTIONS.iter().zip(found) {
                m.set_path_mtu(direction, mtu);
            }
            let [up, down, round_trip] = found;
            let ok = error.is_none() && (round_trip.is_some() || (up.is_some() && down.is_some()));
            m.check("mtu", ok, Some(took));
            sink.mtu(PathMtuResult {
                time: unix_now(),
                target: t.name.clone(),
                group: t.group.clone(),
                upstream: up,
                downstream: down,
                round_trip,
                duration_s: took,
                error,
            });
        },
    )
    .await;
}

/// One sweep of `check.spec` against the udpreach server at `server`, as
/// `udpreach ports` runs it (same control requests, same reply filter).
pub(crate) async fn sweep_once(
    server: SocketAddr,
    check: &PortsCheck,
    key: Option<&SharedKey>,
) -> anyhow::Result<Vec<PortResult>> {
    let mut ctl = ControlClient::connect(server).await?;
    let welcome = ctl.hello(key).await?;
    let opts = UdpOptions {
        recv_errors: true,
        recv_buffer: Some(1 << 20),
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&server, 0), &opts)
        .context("cannot open the UDP probe socket")?;
    let budget = udpreach_engine::sweep_window::PathBudget {
        rtt: ctl.handshake_rtt,
        rate: (welcome.max_probe_rate > 0).then_some(welcome.max_probe_rate),
        rcvbuf: udp.recv_buffer_size().unwrap_or(0),
        max_open: welcome.max_open_ports as usize,
    };
    let cfg = udpreach_engine::sweep_window::sized(
        SweepConfig {
            attempts: check.retries,
            ..SweepConfig::default()
        },
        budget,
    );
    let mut sweep = Sweep::new(SweepPlan::new(&check.spec), cfg, Instant::now());
    sweep.seed_rtt(ctl.handshake_rtt);
    let io = SweepIo::new(&udp, server, &welcome);
    let (ending, _unauthenticated) =
        drive(&mut sweep, &mut ctl, &io, std::future::pending(), |_| {}).await;
    match ending {
        Ending::Complete => {
            let _ = ctl.bye().await;
            Ok(sweep.results())
        }
        Ending::Interrupted => anyhow::bail!("sweep interrupted"),
        Ending::ControlLost(e) => anyhow::bail!("control connection to {server} lost ({e})"),
    }
}
