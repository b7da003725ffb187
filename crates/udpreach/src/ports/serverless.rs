//! `udpreach ports --no-server`: the I/O driver around
//! [`udpreach_engine::ServerlessSweep`], for hosts that run no udpreach.
//!
//! One UDP socket with `IP_RECVERR` sends every probe (a payload the port's
//! usual service answers, see `udpreach_wire::services`) and receives both
//! the replies and, from its error queue, the ICMP errors; the destination
//! port of an error's quoted datagram says which port it is about.

use crate::cli::PortsArgs;
use crate::platform::errqueue::QueuedError;
use crate::platform::{AsyncUdp, Received, UdpOptions};
use crate::report::serverless::ServerlessReport;
use crate::target::{resolve_async, unspecified_for};
use anyhow::Context;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use udpreach_engine::serverless::{
    ServerlessConfig, ServerlessEvent, ServerlessInput, ServerlessSweep, ServerlessVerdict,
};
use udpreach_engine::Engine;
use udpreach_wire::icmp::IcmpOrigin;
use udpreach_wire::services;

pub(super) async fn run(args: PortsArgs) -> anyhow::Result<u8> {
    let family = args.family.family();
    // A port in HOST:PORT means nothing here; the SPEC says what to check.
    let target = resolve_async(&args.target, family).await?;
    let opts = UdpOptions {
        recv_errors: true,
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
        .context("cannot open the UDP probe socket")?;
    let cfg = ServerlessConfig {
        attempts: args.retries.unwrap_or(ServerlessConfig::default().attempts),
        fixed_timeout: args.timeout,
        rate: args.rate,
        ..ServerlessConfig::default()
    };
    let started = Instant::now();
    let mut sweep = ServerlessSweep::new(&args.ports, target.ip(), cfg, started);
    let report = ServerlessReport {
        format: args.output.format(),
        quiet: args.output.quiet,
        list: args.list,
        target_name: args.target.clone(),
        target: target.ip(),
    };
    report.start(args.ports.len());
    let bar = (!report.format.is_json() && !args.output.quiet && std::io::stderr().is_terminal())
        .then(|| report.progress_bar(args.ports.len() as u64));
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut rbuf = vec![0u8; 65536];
    let mut last_bar = Instant::now();

    let interrupted = loop {
        sweep.handle_timeout(Instant::now());
        while let Some(t) = sweep.poll_transmit(Instant::now()) {
            // Vary request ids per attempt so a late answer is not mistaken
            // for a fresh one by the service (DNS, SNMP).
            let payload = services::probe_payload(t.port, t.attempt as u16);
            let to = SocketAddr::new(target.ip(), t.port);
            if let Err(e) = udp.send_to(&payload, to).await {
                tracing::debug!("probe to {to}: {e}");
            }
        }
        if sweep.is_done() {
            break false;
        }
        while let Some(ServerlessEvent::RateLimited(rl)) = sweep.poll_event() {
            if let Some(b) = &bar {
                b.suspend(|| report.rate_limit_notice(&rl));
            } else {
                report.rate_limit_notice(&rl);
            }
        }
        if let Some(b) = &bar {
            if last_bar.elapsed() > Duration::from_millis(100) {
                report.update_bar(b, sweep.progress(), sweep.rate_limit().as_ref());
                last_bar = Instant::now();
            }
        }
        let wake = sweep
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            biased;
            _ = sigint.recv() => break true,
            _ = sigterm.recv() => break true,
            r = udp.recv_any(&mut rbuf) => {
                if let Ok(got) = r {
                    on_received(&mut sweep, target, got);
                }
                for _ in 0..4096 {
                    match udp.try_recv_any(&mut rbuf) {
                        Ok(got) => on_received(&mut sweep, target, got),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if interrupted {
        sweep.abort();
        eprintln!("udpreach: interrupted; results so far:");
    }
    let results = sweep.results();
    report.print(
        &results,
        started.elapsed(),
        sweep.progress(),
        sweep.rate_limit().as_ref(),
    );
    let all_open = results.iter().all(|r| r.verdict == ServerlessVerdict::Open);
    Ok(if all_open { 0 } else { 1 })
}

fn on_received(sweep: &mut ServerlessSweep, target: SocketAddr, got: Received) {
    let now = Instant::now();
    match got {
        // Any datagram from the port we probed: something there answers.
        Received::Datagram(meta) if meta.from.ip() == target.ip() => {
            let reply = ServerlessInput::Reply {
                port: meta.from.port(),
                bytes: meta.len,
            };
            sweep.handle_input(reply, now);
        }
        Received::Datagram(_) => {}
        Received::Error(e) => on_icmp(sweep, target, &e, now),
    }
}

fn on_icmp(sweep: &mut ServerlessSweep, target: SocketAddr, e: &QueuedError, now: Instant) {
    if e.error.origin == IcmpOrigin::Local {
        return;
    }
    if let Some(dest) = e.dest {
        if dest.ip() == target.ip() {
            let icmp = ServerlessInput::Icmp {
                port: dest.port(),
                report: e.error.report(),
            };
            sweep.handle_input(icmp, now);
        }
    }
}
