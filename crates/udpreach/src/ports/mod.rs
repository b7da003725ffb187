//! `udpreach ports`: the I/O driver around [`udpreach_engine::Sweep`].
//!
//! One TCP control connection asks the server to open windows of ports and
//! reports what arrived; one UDP socket probes every port. Requests on the
//! control channel are pipelined (a few in flight) so probing never waits
//! for the server to bind the next window.

pub(crate) mod control;
mod serverless;

use crate::cli::PortsArgs;
use crate::platform::errqueue::QueuedError;
use crate::platform::{self, AsyncUdp, Received, UdpOptions};
use crate::report::ports::PortsReport;
use crate::report::OutputFormat;
use crate::target::{resolve_async, unspecified_for, Family};
use anyhow::Context;
use control::{ControlClient, Pending};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use udpreach_engine::sweep::{OpenStatus, Sweep, SweepConfig, SweepPlan};
use udpreach_wire::auth::{DerivedKey, MIN_SEALED_LEN};
use udpreach_wire::control::ControlMsg;
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// Ports per Open/Arrivals/Close request; small enough that the first probes start early.
const BATCH: usize = 1024;
/// Control requests in flight at once.
const PIPELINE: usize = 4;

/// How the sweep ended.
enum Ending {
    Complete,
    Interrupted,
    ControlLost(String),
}

pub async fn run(args: PortsArgs) -> anyhow::Result<u8> {
    if args.no_server {
        return serverless::run(args).await;
    }
    // One probe socket whatever the port count; raised anyway, as the brief asks of both sides.
    platform::raise_nofile_limit();
    let family = Family::from_flags(args.ipv4, args.ipv6);
    let mut server = resolve_async(&args.target, family).await?;
    if let Some(p) = args.control {
        server.set_port(p);
    }
    let key = crate::shared_key::load(&args.key)?;
    let mut ctl = ControlClient::connect(server).await?;
    let welcome = ctl.hello(key.as_ref()).await?;
    let opts = UdpOptions {
        recv_errors: true,
        recv_buffer: Some(8 << 20),
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&server, 0), &opts)
        .context("cannot open the UDP probe socket")?;

    let spec = args.ports.clone();
    let cfg = SweepConfig {
        attempts: args.retries.unwrap_or(4),
        fixed_timeout: args.timeout,
        max_open: (welcome.max_open_ports as usize).max(1),
        // Stay under the server's per-session cap: probes over it would get
        // no reply and look like a blocked return path.
        rate: match (args.rate, welcome.max_probe_rate) {
            (r, 0) => r,
            (None, cap) => Some(cap),
            (Some(r), cap) => Some(r.min(cap)),
        },
        ..SweepConfig::default()
    };
    // Probes in flight: the path's bandwidth-delay product (the handshake's
    // round trip times the probe rate), within what the receive buffer holds.
    let cfg = SweepConfig {
        max_in_flight: udpreach_engine::sweep_window::max_in_flight(
            ctl.handshake_rtt,
            cfg.rate,
            udp.recv_buffer_size().unwrap_or(0),
        ),
        ..cfg
    };
    tracing::debug!(
        "sweep window: {} probes in flight (handshake RTT {:?})",
        cfg.max_in_flight,
        ctl.handshake_rtt
    );
    let started = Instant::now();
    let mut sweep = Sweep::new(SweepPlan::new(&spec), cfg, started);
    sweep.seed_rtt(ctl.handshake_rtt);

    let report = PortsReport {
        format: OutputFormat::from_flags(args.json, args.json_lines),
        quiet: args.quiet,
        list: args.list,
        target_name: args.target.clone(),
        server,
    };
    report.start(spec.len());
    let bar = (!report.format.is_json() && !args.quiet && std::io::stderr().is_terminal())
        .then(|| report.progress_bar(spec.len() as u64));

    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let session_key = welcome.session_key.clone();
    let probe_len = if session_key.is_some() {
        MIN_SEALED_LEN
    } else {
        HEADER_LEN
    };
    let mut probe = vec![0u8; probe_len];
    let mut unauthenticated_replies = 0u64;
    let mut rbuf = vec![0u8; 2048];
    let mut last_bar = Instant::now();
    let token = welcome.token;

    let ending = loop {
        let now = Instant::now();
        // Control requests first, so the server binds the next window while we probe.
        if let Err(e) = issue_requests(&mut sweep, &mut ctl).await {
            break Ending::ControlLost(e.to_string());
        }
        // Replies already queued must count before any timer is judged expired.
        let accept = ReplyFilter {
            token,
            server,
            key: session_key.as_ref(),
        };
        unauthenticated_replies += drain_replies(&udp, &mut rbuf, &mut sweep, &accept);
        sweep.poll_timers(now);
        while let Some(t) = sweep.poll_transmit(Instant::now()) {
            ProbeHeader::request(ProbeKind::PortProbe, token, t.seq)
                .encode(&mut probe)
                .expect("header fits");
            if let Some(k) = &session_key {
                k.seal(&mut probe).expect("probe is long enough for a tag");
            }
            let mut to = server;
            to.set_port(t.port);
            if let Err(e) = udp.send_to(&probe, to).await {
                tracing::debug!("probe to {to}: {e}");
            }
        }
        if sweep.is_done() && ctl.pending.is_empty() {
            // Everything decided; close what is still open before leaving.
            let rest = sweep.poll_close(usize::MAX);
            if rest.is_empty() {
                break Ending::Complete;
            }
            let _ = ctl
                .request(ControlMsg::Close { ports: rest }, Pending::Close)
                .await;
            continue;
        }
        if let Some(b) = &bar {
            if last_bar.elapsed() > Duration::from_millis(100) {
                report.update_bar(b, sweep.progress());
                last_bar = Instant::now();
            }
        }
        let wake = sweep
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            biased;
            _ = sigint.recv() => break Ending::Interrupted,
            _ = sigterm.recv() => break Ending::Interrupted,
            msg = ctl.recv() => match msg {
                Ok(m) => if let Err(e) = apply_control(&mut sweep, &mut ctl, m) {
                    break Ending::ControlLost(e.to_string());
                },
                Err(e) => break Ending::ControlLost(e.to_string()),
            },
            r = udp.recv_any(&mut rbuf) => {
                let accept = ReplyFilter { token, server, key: session_key.as_ref() };
                if let Ok(got) = r {
                    unauthenticated_replies += u64::from(!accept.received(&mut sweep, &rbuf, got));
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if unauthenticated_replies > 0 {
        eprintln!(
            "udpreach: ignored {unauthenticated_replies} replies without a valid authentication tag"
        );
    }
    let elapsed = started.elapsed();
    let code = match &ending {
        Ending::Complete => {
            let _ = ctl.bye().await;
            None
        }
        Ending::Interrupted => {
            sweep.abort();
            eprintln!("udpreach: interrupted; results so far:");
            None
        }
        Ending::ControlLost(e) => {
            sweep.abort();
            eprintln!("udpreach: control connection to {server} lost ({e}); results so far:");
            Some(2)
        }
    };
    let results = sweep.results();
    report.print(&results, elapsed, sweep.progress().probes_sent);
    let all_ok = results
        .iter()
        .all(|r| r.verdict == udpreach_engine::Verdict::Reachable);
    Ok(code.unwrap_or(if all_ok { 0 } else { 1 }))
}

/// Reads what the socket holds now (bounded, so sends and timers get their
/// turn); returns how many replies failed authentication.
fn drain_replies(udp: &AsyncUdp, rbuf: &mut [u8], sweep: &mut Sweep, accept: &ReplyFilter) -> u64 {
    let mut rejected = 0;
    for _ in 0..8192 {
        match udp.try_recv_any(rbuf) {
            Ok(got) => rejected += u64::from(!accept.received(sweep, rbuf, got)),
            Err(_) => break,
        }
    }
    rejected
}

/// An ICMP error for a probe: the port it was going to is in the error's
/// destination address.
fn on_icmp(sweep: &mut Sweep, server: std::net::SocketAddr, e: &QueuedError) {
    if e.error.origin == udpreach_wire::icmp::IcmpOrigin::Local {
        return;
    }
    if let Some(dest) = e.dest {
        if dest.ip() == server.ip() {
            sweep.on_icmp(dest.port(), e.error.report());
        }
    }
}

/// Which datagrams on the probe socket count as replies.
struct ReplyFilter<'a> {
    token: u64,
    server: std::net::SocketAddr,
    key: Option<&'a DerivedKey>,
}

impl ReplyFilter<'_> {
    /// Feeds a datagram or an ICMP error to the sweep; false as for [`Self::apply`].
    fn received(&self, sweep: &mut Sweep, buf: &[u8], got: Received) -> bool {
        match got {
            Received::Datagram(meta) => self.apply(sweep, &buf[..meta.len], meta.from),
            Received::Error(e) => {
                on_icmp(sweep, self.server, &e);
                true
            }
        }
    }

    /// Feeds a reply to the sweep. False only for a reply of this session
    /// whose tag does not verify (counted and reported; never trusted).
    fn apply(&self, sweep: &mut Sweep, data: &[u8], from: std::net::SocketAddr) -> bool {
        if from.ip() != self.server.ip() {
            return true;
        }
        let Ok(h) = ProbeHeader::decode(data) else {
            return true;
        };
        if h.kind != ProbeKind::PortReply || h.token != self.token {
            return true;
        }
        if let Some(k) = self.key {
            if k.verify(data).is_err() {
                return false;
            }
        }
        sweep.on_reply(from.port(), h.seq, Instant::now());
        true
    }
}

async fn issue_requests(sweep: &mut Sweep, ctl: &mut ControlClient) -> anyhow::Result<()> {
    if ctl.pending.len() < PIPELINE {
        let closes = sweep.poll_close(BATCH * 4);
        if !closes.is_empty() {
            ctl.request(ControlMsg::Close { ports: closes }, Pending::Close)
                .await?;
        }
    }
    if ctl.pending.len() < PIPELINE {
        let queries = sweep.poll_arrival_queries(BATCH * 4);
        if !queries.is_empty() {
            ctl.request(ControlMsg::Arrivals { ports: queries }, Pending::Arrivals)
                .await?;
        }
    }
    while ctl.pending.len() < PIPELINE {
        let opens = sweep.poll_open(BATCH);
        if opens.is_empty() {
            break;
        }
        ctl.request(ControlMsg::Open { ports: opens }, Pending::Open)
            .await?;
    }
    Ok(())
}

fn apply_control(
    sweep: &mut Sweep,
    ctl: &mut ControlClient,
    msg: ControlMsg,
) -> anyhow::Result<()> {
    let expected = ctl.pending.pop_front();
    match (expected, msg) {
        (
            Some(Pending::Open),
            ControlMsg::Opened {
                opened,
                in_use,
                denied,
                failed,
            },
        ) => {
            for (list, status) in [
                (opened, OpenStatus::Opened),
                (in_use, OpenStatus::InUse),
                (denied, OpenStatus::Denied),
                (failed, OpenStatus::Failed),
            ] {
                for p in list {
                    sweep.on_opened(p, status);
                }
            }
        }
        (Some(Pending::Arrivals), ControlMsg::ArrivalCounts { ports, counts }) => {
            for (p, c) in ports.into_iter().zip(counts) {
                sweep.on_arrivals(p, c);
            }
        }
        (Some(Pending::Close), ControlMsg::Closed { .. }) => {}
        (_, ControlMsg::Error { code, message, .. }) => {
            anyhow::bail!("server error ({code:?}): {message}")
        }
        (exp, other) => anyhow::bail!("protocol error: got {other:?} while waiting for {exp:?}"),
    }
    Ok(())
}
