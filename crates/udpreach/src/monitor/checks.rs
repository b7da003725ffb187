//! The monitor's checks: thin adapters that drive the existing engines
//! ([`PingSession`] for ping, [`Sweep`] for ports) with the monitor's
//! sockets and feed what they conclude into metrics and the results stream.
//! STAMP (RFC 8762) checks plug in here later as one more adapter with its
//! own `check` label value and config table.

use super::config::{PingCheck, PortsCheck};
use super::metrics::TargetMetrics;
use super::results::{Outcome, PingResult, PortsResult, ResultSink};
use crate::ping::payload::{PayloadBuilder, Reply};
use crate::platform::{canonical, realtime_ns, AsyncUdp, Received, UdpOptions};
use crate::ports::control::ControlClient;
use crate::ports::{apply_control, drain_replies, issue_requests, ReplyFilter};
use crate::target::{resolve_async, unspecified_for, Family};
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::ping::{PingConfig, PingEvent, PingSession};
use udpreach_engine::sweep::{PortResult, Sweep, SweepConfig, SweepPlan};
use udpreach_engine::Verdict;
use udpreach_wire::auth::{SharedKey, MIN_SEALED_LEN};
use udpreach_wire::icmp::IcmpOrigin;
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// How often a running ping check copies its session's counters to metrics.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long a target that does not resolve waits before trying again.
pub const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// One target's ping check: continuous (`count: None`) or a fixed number of probes (`/probe`).
pub struct PingTarget {
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
                if !retry {
                    return None;
                }
                tokio::time::sleep(RESOLVE_RETRY).await;
            }
        }
    }
}

/// The session's counters as last copied to metrics (counters only go up).
#[derive(Default)]
struct Published {
    sent: u64,
    received: u64,
    duplicates: u64,
    late: u64,
    reordered: u64,
    withheld: u64,
    lost: [u64; 3],
}

fn bump(counter: &prometheus_client::metrics::counter::Counter, last: &mut u64, now: u64) {
    if now > *last {
        counter.inc_by(now - *last);
        *last = now;
    }
}

fn publish(session: &PingSession, m: &TargetMetrics, p: &mut Published) {
    let s = session.summary();
    let fam = m.metrics();
    let b = m.base();
    bump(&fam.sent.get_or_create(b), &mut p.sent, s.transmitted);
    bump(&fam.replies.get_or_create(b), &mut p.received, s.received);
    bump(
        &fam.duplicates.get_or_create(b),
        &mut p.duplicates,
        s.duplicates,
    );
    bump(&fam.late.get_or_create(b), &mut p.late, s.late);
    bump(
        &fam.reordered.get_or_create(b),
        &mut p.reordered,
        s.reordered,
    );
    bump(&fam.withheld.get_or_create(b), &mut p.withheld, s.withheld);
    let up = s.upstream_lost.unwrap_or(0);
    let down = s.downstream_lost.unwrap_or(0);
    let unknown = s
        .direction_unknown
        .unwrap_or_else(|| s.lost.saturating_sub(up + down));
    for (i, n) in [up, down, unknown].into_iter().enumerate() {
        let c = fam
            .lost
            .get_or_create(&m.with("direction", super::metrics::DIRECTIONS[i]));
        bump(&c, &mut p.lost[i], n);
    }
    if let Some(addr) = s.server_saw {
        m.set_seen_address(addr.to_string());
    }
}

/// Runs a ping check until its count is done (or forever, for the agent).
pub async fn ping(t: PingTarget, m: TargetMetrics, sink: ResultSink) {
    m.init_ping();
    let Some(target) = resolve(&t.name, &m, t.count.is_none(), "ping").await else {
        return;
    };
    if let Err(e) = ping_resolved(&t, target, &m, &sink).await {
        tracing::warn!("monitor: ping {}: {e:#}", t.name);
        m.check("ping", false, None);
    }
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
    let token: u64 = rand::random();
    let builder = PayloadBuilder {
        token,
        size,
        key: t.key.as_ref().map(|k| k.ping_key(token)),
    };
    let cfg = PingConfig {
        count: t.count,
        interval: t.check.interval,
        timeout: t.check.timeout,
        deadline: None,
    };
    let started = Instant::now();
    let mut session = PingSession::new(cfg, started);
    let mut published = Published::default();
    let mut packet = Vec::with_capacity(size);
    let mut buf = vec![0u8; size.max(2048) + 1];
    let mut next_publish = Instant::now() + PUBLISH_EVERY;
    loop {
        let now = Instant::now();
        while let Some(seq) = session.poll_send(now) {
            builder.build(seq, realtime_ns(), &mut packet);
            let sent_at = Instant::now();
            match sock.send_to(&packet, target).await {
                Ok(_) => session.on_sent(seq, sent_at, None),
                Err(e) => {
                    tracing::debug!("monitor: ping {}: send: {e}", t.name);
                    session.on_send_failed(seq);
                }
            }
        }
        for ev in session.poll_timeouts(Instant::now()) {
            if let PingEvent::Timeout { seq, .. } = ev {
                m.check("ping", false, None);
                sink.ping(PingResult::new(
                    &t.name,
                    &t.group,
                    seq,
                    Outcome::Timeout,
                    None,
                ));
            }
        }
        if session.is_done(Instant::now()) {
            publish(&session, m, &mut published);
            if t.count.is_some() {
                // A one-shot check (`/probe`) succeeds when any probe was answered.
                let s = session.summary();
                m.check(
                    "ping",
                    s.received > 0,
                    Some(started.elapsed().as_secs_f64()),
                );
            }
            return Ok(());
        }
        if Instant::now() >= next_publish {
            publish(&session, m, &mut published);
            next_publish = Instant::now() + PUBLISH_EVERY;
        }
        let wake = session
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + t.check.interval)
            .min(next_publish);
        tokio::select! {
            r = sock.recv_any(&mut buf) => match r {
                Ok(Received::Datagram(meta)) => {
                    if canonical(meta.from) != canonical(target) {
                        continue;
                    }
                    let (seq, stamp) = match builder.check(&buf[..meta.len]) {
                        Reply::Stamped { seq, stamp } => (seq, Some(stamp)),
                        Reply::Plain { seq } => (seq, None),
                        _ => continue,
                    };
                    let at = Instant::now();
                    let Some(ev) = session.on_reply_timed(seq, at, None, stamp) else { continue };
                    let (outcome, rtt) = match ev {
                        PingEvent::Reply { rtt, .. } => {
                            m.metrics().rtt.get_or_create(m.base()).observe(rtt.as_secs_f64());
                            m.check("ping", true, Some(rtt.as_secs_f64()));
                            (Outcome::Reply, rtt)
                        }
                        PingEvent::Late { rtt, .. } => (Outcome::Late, rtt),
                        PingEvent::Duplicate { rtt, .. } => (Outcome::Duplicate, rtt),
                        _ => continue,
                    };
                    sink.ping(PingResult::new(&t.name, &t.group, seq, outcome, Some(rtt)));
                }
                Ok(Received::Error(e)) => {
                    if e.error.origin == IcmpOrigin::Local
                        || e.dest.is_some_and(|d| canonical(d) != canonical(target))
                    {
                        continue;
                    }
                    let Some(seq) = builder.seq_of_quote(&e.quoted).or_else(|| session.latest_waiting()) else { continue };
                    if session.on_icmp_error(seq, e.error.report(), Instant::now()).is_some() {
                        m.check("ping", false, None);
                        sink.ping(PingResult::new(&t.name, &t.group, seq, Outcome::IcmpError, None));
                    }
                }
                Err(e) => tracing::debug!("monitor: ping {}: receive: {e}", t.name),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// One target's ports check.
pub struct PortsTarget {
    pub name: String,
    pub group: String,
    pub check: PortsCheck,
    pub key: Option<SharedKey>,
}

/// Longest one sweep may take before it counts as failed.
pub const MAX_SWEEP: Duration = Duration::from_secs(120);

/// Runs one ports sweep and records it; `repeat` runs it every `check.every`.
pub async fn ports(t: PortsTarget, m: TargetMetrics, sink: ResultSink, repeat: bool) {
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
pub async fn sweep_once(
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
    let mut probe = vec![
        0u8;
        if session_key.is_some() {
            MIN_SEALED_LEN
        } else {
            HEADER_LEN
        }
    ];
    let mut rbuf = vec![0u8; 2048];
    let token = welcome.token;
    loop {
        issue_requests(&mut sweep, &mut ctl).await?;
        let accept = ReplyFilter {
            token,
            server,
            key: session_key.as_ref(),
        };
        drain_replies(&udp, &mut rbuf, &mut sweep, &accept);
        sweep.poll_timers(Instant::now());
        while let Some(tx) = sweep.poll_transmit(Instant::now()) {
            ProbeHeader::request(ProbeKind::PortProbe, token, tx.seq)
                .encode(&mut probe)
                .expect("header fits");
            if let Some(k) = &session_key {
                k.seal(&mut probe).expect("probe is long enough for a tag");
            }
            let mut to = server;
            to.set_port(tx.port);
            if let Err(e) = udp.send_to(&probe, to).await {
                tracing::debug!("monitor: probe to {to}: {e}");
            }
        }
        if sweep.is_done() && ctl.pending.is_empty() {
            let rest = sweep.poll_close(usize::MAX);
            if rest.is_empty() {
                let _ = ctl.bye().await;
                return Ok(sweep.results());
            }
            ctl.request(
                udpreach_wire::control::ControlMsg::Close { ports: rest },
                crate::ports::control::Pending::Close,
            )
            .await?;
            continue;
        }
        let wake = sweep
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            biased;
            msg = ctl.recv() => apply_control(&mut sweep, &mut ctl, msg?)?,
            r = udp.recv_any(&mut rbuf) => {
                if let Ok(got) = r {
                    accept.received(&mut sweep, &rbuf, got);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}
