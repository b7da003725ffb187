//! `udpreach ports`: the I/O driver around [`udpreach_engine::Sweep`].
//!
//! One TCP control connection asks the server to open windows of ports and
//! reports what arrived; one UDP socket probes every port. Requests on the
//! control channel are pipelined (a few in flight) so probing never waits
//! for the server to bind the next window.

pub mod control;
mod serverless;

use crate::cli::PortsArgs;
use crate::platform::errqueue::QueuedError;
use crate::platform::{self, AsyncUdp, Received, UdpOptions};
use crate::report::ports::PortsReport;
use crate::target::{resolve, unspecified_for, Family};
use anyhow::{anyhow, Context};
use control::{ControlClient, Pending};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use udpreach_engine::sweep::{OpenStatus, Sweep, SweepConfig, SweepPlan};
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
    let family = Family::from_flags(args.ipv4, args.ipv6);
    let input = args.target.clone();
    let mut server =
        tokio::task::spawn_blocking(move || resolve(&input, crate::cli::DEFAULT_PORT, family))
            .await?
            .map_err(|e| anyhow!(e))?;
    if let Some(p) = args.control {
        server.set_port(p);
    }
    let mut ctl = ControlClient::connect(server).await?;
    let welcome = ctl.hello().await?;
    let opts = UdpOptions {
        recv_errors: true,
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&server, 0), &opts)
        .context("cannot open the UDP probe socket")?;

    let spec = args.ports.clone();
    let cfg = SweepConfig {
        attempts: args.retries,
        fixed_timeout: args.timeout,
        max_open: (welcome.max_open_ports as usize).max(1),
        rate: args.rate,
        ..SweepConfig::default()
    };
    let started = Instant::now();
    let mut sweep = Sweep::new(SweepPlan::new(&spec), cfg, started);
    sweep.seed_rtt(ctl.handshake_rtt);

    let report = PortsReport {
        json: args.json,
        quiet: args.quiet,
        list: args.list,
        target_name: args.target.clone(),
        server,
    };
    let bar = (!args.json && !args.quiet && std::io::stderr().is_terminal())
        .then(|| report.progress_bar(spec.len() as u64));

    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut probe = vec![0u8; HEADER_LEN];
    let mut rbuf = vec![0u8; 2048];
    let mut last_bar = Instant::now();
    let token = welcome.token;

    let ending = loop {
        let now = Instant::now();
        // Control requests first, so the server binds the next window while we probe.
        if let Err(e) = issue_requests(&mut sweep, &mut ctl).await {
            break Ending::ControlLost(e.to_string());
        }
        sweep.poll_timers(now);
        while let Some(t) = sweep.poll_transmit(Instant::now()) {
            ProbeHeader::request(ProbeKind::PortProbe, token, t.seq)
                .encode(&mut probe)
                .expect("header fits");
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
                if let Ok(got) = r {
                    on_received(&mut sweep, token, server, &rbuf, got);
                }
                // Drain the socket before the next round of timers and sends.
                for _ in 0..4096 {
                    match udp.try_recv_any(&mut rbuf) {
                        Ok(got) => on_received(&mut sweep, token, server, &rbuf, got),
                        Err(_) => break,
                    }
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
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
    report.print(
        &results,
        elapsed,
        sweep.progress().probes_sent,
        platform::open_fd_count(),
    );
    let all_ok = results
        .iter()
        .all(|r| r.verdict == udpreach_engine::Verdict::Reachable);
    Ok(code.unwrap_or(if all_ok { 0 } else { 1 }))
}

fn on_received(
    sweep: &mut Sweep,
    token: u64,
    server: std::net::SocketAddr,
    buf: &[u8],
    got: Received,
) {
    match got {
        Received::Datagram(meta) => on_datagram(sweep, token, server, &buf[..meta.len], meta.from),
        Received::Error(e) => on_icmp(sweep, server, &e),
    }
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

fn on_datagram(
    sweep: &mut Sweep,
    token: u64,
    server: std::net::SocketAddr,
    data: &[u8],
    from: std::net::SocketAddr,
) {
    if from.ip() != server.ip() {
        return;
    }
    if let Ok(h) = ProbeHeader::decode(data) {
        if h.kind == ProbeKind::PortReply && h.token == token {
            sweep.on_reply(from.port(), h.seq, Instant::now());
        }
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
