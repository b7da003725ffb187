//! The monitor's checks: thin adapters that drive the existing engines
//! ([`PingSession`] for ping, [`Sweep`] for ports) with the monitor's
//! sockets and feed what they conclude into metrics and the results stream.
//! STAMP (RFC 8762) checks plug in here later as one more adapter with its
//! own `check` label value and config table.

use super::config::{PingCheck, PortsCheck};
use super::metrics::TargetMetrics;
use super::results::{Outcome, PingResult, PortsResult, ResultSink};
use crate::control_client::ControlClient;
use crate::ping::payload::{PayloadBuilder, Reply};
use crate::platform::{canonical, realtime_ns, AsyncUdp, Received, UdpOptions};
use crate::ports::{drive, Ending, SweepIo};
use crate::target::{resolve_async, unspecified_for, Family};
use anyhow::Context;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::ping::{PingConfig, PingEvent, PingInput, PingSession};
use udpreach_engine::sweep::{PortResult, Sweep, SweepConfig, SweepPlan};
use udpreach_engine::Engine;
use udpreach_engine::Verdict;
use udpreach_wire::auth::{SharedKey, MIN_SEALED_LEN};
use udpreach_wire::icmp::IcmpOrigin;

/// How often a running ping check copies its session's counters to metrics.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How long a target that does not resolve waits before trying again.
pub(crate) const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// One target's ping check: continuous (`count: None`) or a fixed number of probes (`/probe`).
pub(crate) struct PingTarget {
    pub name: String,
    pub group: String,
    pub check: PingCheck,
    pub key: Option<SharedKey>,
    pub count: Option<u64>,
}

/// Resolves a target, keeping `udpreach_target_resolved` up to date; a
/// continuous check retries, a one-shot gives up.
async fn resolve(name: &str, m: &TargetMetrics, retry: bool, check: &str) -> Option<SocketAddr> {
    loop {
        match resolve_async(name, Family::Any).await {
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
/// [`PingSession`] per window, so memory and the cost of a summary stay
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
}

fn bump(counter: &prometheus_client::metrics::counter::Counter, last: &mut u64, now: u64) {
    if now > *last {
        counter.inc_by(now - *last);
        *last = now;
    }
}

/// Copies `now` to the target's counters (which only go up) past `published`.
fn publish(now: &Totals, m: &TargetMetrics, published: &mut Totals) {
    let fam = m.metrics();
    let b = m.base();
    bump(&fam.sent.get_or_create(b), &mut published.sent, now.sent);
    bump(
        &fam.replies.get_or_create(b),
        &mut published.received,
        now.received,
    );
    bump(
        &fam.duplicates.get_or_create(b),
        &mut published.duplicates,
        now.duplicates,
    );
    bump(&fam.late.get_or_create(b), &mut published.late, now.late);
    bump(
        &fam.reordered.get_or_create(b),
        &mut published.reordered,
        now.reordered,
    );
    bump(
        &fam.withheld.get_or_create(b),
        &mut published.withheld,
        now.withheld,
    );
    for (i, d) in super::metrics::DIRECTIONS.iter().enumerate() {
        let c = fam.lost.get_or_create(&m.with("direction", d));
        bump(&c, &mut published.lost[i], now.lost[i]);
    }
}

/// Runs a ping check until its count is done (or forever, for the agent).
pub(crate) async fn ping(t: PingTarget, m: TargetMetrics, sink: ResultSink) {
    m.init_ping();
    let Some(target) = resolve(&t.name, &m, t.count.is_none(), "ping").await else {
        return;
    };
    if let Err(e) = ping_resolved(&t, target, &m, &sink).await {
        tracing::warn!("monitor: ping {}: {e:#}", t.name);
        m.check("ping", false, None);
    }
}

/// One window: a session and its own token (so replies find their window).
struct Window {
    session: PingSession,
    builder: PayloadBuilder,
    /// Probes this window sends.
    count: u64,
    /// Seq numbers continue across windows in what the results stream shows.
    first_seq: u64,
}

/// Reports what a window's session says happened: each answer, timeout and
/// ICMP error is a result line, and an RTT sample for answers.
fn report_events(w: &mut Window, t: &PingTarget, m: &TargetMetrics, sink: &ResultSink) {
    while let Some(ev) = w.session.poll_event() {
        let (seq, outcome, rtt) = match ev {
            PingEvent::Reply { seq, rtt, .. } => {
                m.metrics()
                    .rtt
                    .get_or_create(m.base())
                    .observe(rtt.as_secs_f64());
                m.check("ping", true, Some(rtt.as_secs_f64()));
                (seq, Outcome::Reply, Some(rtt))
            }
            PingEvent::Late { seq, rtt, .. } => (seq, Outcome::Late, Some(rtt)),
            PingEvent::Duplicate { seq, rtt, .. } => (seq, Outcome::Duplicate, Some(rtt)),
            PingEvent::Timeout { seq, .. } => {
                m.check("ping", false, None);
                (seq, Outcome::Timeout, None)
            }
            PingEvent::IcmpError { seq, .. } => {
                m.check("ping", false, None);
                (seq, Outcome::IcmpError, None)
            }
        };
        sink.ping(PingResult::new(
            &t.name,
            &t.group,
            w.first_seq + seq,
            outcome,
            rtt,
        ));
    }
}

fn probes_per_window(interval: Duration) -> u64 {
    let n = (WINDOW.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    n.clamp(WINDOW_PROBES.0, WINDOW_PROBES.1)
}

async fn ping_resolved(
    t: &PingTarget,
    target: SocketAddr,
    m: &TargetMetrics,
    sink: &ResultSink,
) -> anyhow::Result<()> {
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
    let opts = UdpOptions {
        dscp: t.check.dscp,
        recv_errors: true,
        ..UdpOptions::default()
    };
    let sock = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
        .with_context(|| format!("cannot open a UDP socket towards {target}"))?;
    let per_window = t
        .count
        .unwrap_or_else(|| probes_per_window(t.check.interval));
    let new_window = |first_seq: u64, now: Instant| {
        let token: u64 = rand::random();
        let cfg = PingConfig {
            count: Some(per_window),
            interval: t.check.interval,
            timeout: t.check.timeout,
            deadline: None,
        };
        Window {
            session: PingSession::new(cfg, now),
            builder: PayloadBuilder {
                token,
                size,
                key: t.key.as_ref().map(|k| k.ping_key(token)),
            },
            count: per_window,
            first_seq,
        }
    };
    let started = Instant::now();
    // Oldest first; the last one is sending, the others wait for their last replies.
    let mut windows: VecDeque<Window> = VecDeque::from([new_window(0, started)]);
    // The next window starts one interval after the current one's last probe.
    let mut next_window_at: Option<Instant> = None;
    let mut sent_in_window = 0u64;
    let mut finished = Totals::default();
    let mut published = Totals::default();
    let mut packet = Vec::with_capacity(size);
    let mut buf = vec![0u8; size.max(2048) + 1];
    let mut next_publish = started + PUBLISH_EVERY;
    loop {
        let now = Instant::now();
        if t.count.is_none() && next_window_at.is_some_and(|at| now >= at) {
            let first = windows.back().map_or(0, |w| w.first_seq + w.count);
            windows.push_back(new_window(first, now));
            sent_in_window = 0;
            next_window_at = None;
        }
        if let Some(w) = windows.back_mut() {
            while let Some(seq) = w.session.poll_transmit(now) {
                sent_in_window += 1;
                if sent_in_window == w.count {
                    next_window_at = Some(now + t.check.interval);
                }
                w.builder.build(seq, realtime_ns(), &mut packet);
                let sent_at = Instant::now();
                match sock.send_to(&packet, target).await {
                    Ok(_) => w.session.handle_input(
                        PingInput::Sent {
                            seq,
                            local_port: None,
                            send_call_ns: None,
                        },
                        sent_at,
                    ),
                    Err(e) => {
                        tracing::debug!("monitor: ping {}: send: {e}", t.name);
                        w.session
                            .handle_input(PingInput::SendFailed { seq }, Instant::now());
                    }
                }
            }
        }
        for w in windows.iter_mut() {
            w.session.handle_timeout(Instant::now());
            report_events(w, t, m, sink);
        }
        // Windows done (every probe answered or timed out) fold into the totals.
        while windows.len() > 1 || t.count.is_some() {
            let Some(w) = windows.front_mut() else { break };
            if !w.session.is_done() {
                break;
            }
            let s = w.session.summary();
            tracing::debug!(
                "monitor: ping {}: window from seq {} done: {} sent, {} replies, {} lost",
                t.name,
                w.first_seq,
                s.transmitted,
                s.received,
                s.lost
            );
            finished.add(&s, true);
            windows.pop_front();
        }
        if windows.is_empty() {
            // A one-shot check (`/probe`): it succeeds when any probe was answered.
            publish(&finished, m, &mut published);
            m.check(
                "ping",
                finished.received > 0,
                Some(started.elapsed().as_secs_f64()),
            );
            return Ok(());
        }
        if Instant::now() >= next_publish {
            let mut now_totals = finished;
            let mut seen = None;
            for w in &windows {
                let s = w.session.summary();
                // The newest window that got a stamped reply knows best.
                seen = s.server_saw.or(seen);
                now_totals.add(&s, false);
            }
            if let Some(addr) = seen {
                m.set_seen_address(addr.to_string());
            }
            publish(&now_totals, m, &mut published);
            next_publish = Instant::now() + PUBLISH_EVERY;
        }
        let mut wake = next_publish;
        if let (None, Some(at)) = (t.count, next_window_at) {
            wake = wake.min(at);
        }
        for w in &windows {
            if let Some(at) = w.session.poll_timeout() {
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
                    let Some((w, seq, stamp)) = windows.iter_mut().find_map(|w| match w.builder.check(data) {
                        Reply::Stamped { seq, stamp } => Some((w, seq, Some(stamp))),
                        Reply::Plain { seq } => Some((w, seq, None)),
                        _ => None,
                    }) else { continue };
                    w.session.handle_input(PingInput::Reply { seq, kernel_rx_ns: None, stamp }, Instant::now());
                    report_events(w, t, m, sink);
                }
                Ok(Received::Error(e)) => {
                    if e.error.origin == IcmpOrigin::Local
                        || e.dest.is_some_and(|d| canonical(d) != canonical(target))
                    {
                        continue;
                    }
                    let found = windows
                        .iter()
                        .position(|w| w.builder.seq_of_quote(&e.quoted).is_some())
                        .unwrap_or(windows.len() - 1);
                    let w = &mut windows[found];
                    let seq = w.builder.seq_of_quote(&e.quoted);
                    w.session.handle_input(PingInput::IcmpError { seq, report: e.error.report() }, Instant::now());
                    report_events(w, t, m, sink);
                }
                Err(e) => tracing::debug!("monitor: ping {}: receive: {e}", t.name),
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

/// Runs one ports sweep and records it; `repeat` runs it every `check.every`.
pub(crate) async fn ports(t: PortsTarget, m: TargetMetrics, sink: ResultSink, repeat: bool) {
    loop {
        let started = Instant::now();
        if let Some(server) = resolve(&t.name, &m, repeat, "ports").await {
            let limit = if repeat {
                t.check.every.min(MAX_SWEEP)
            } else {
                MAX_SWEEP
            };
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
        }
        if !repeat {
            return;
        }
        tokio::time::sleep_until((started + t.check.every).into()).await;
    }
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
    let cfg = SweepConfig {
        attempts: check.retries,
        max_open: (welcome.max_open_ports as usize).max(1),
        rate: (welcome.max_probe_rate > 0).then_some(welcome.max_probe_rate),
        ..SweepConfig::default()
    };
    let mut sweep = Sweep::new(SweepPlan::new(&check.spec), cfg, Instant::now());
    sweep.seed_rtt(ctl.handshake_rtt);
    let session_key = welcome.session_key.clone();
    let io = SweepIo {
        udp: &udp,
        server,
        token: welcome.token,
        key: session_key.as_ref(),
    };
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
