//! `udpreach ports`: the I/O driver around [`udpreach_engine::Sweep`].
//!
//! One TCP control connection asks the server to open windows of ports and
//! reports what arrived; one UDP socket probes every port. Requests on the
//! control channel are pipelined (a few in flight) so probing never waits
//! for the server to bind the next window.

mod serverless;
mod trace;

use crate::cli::PortsArgs;
use crate::control_client::{ControlClient, Pending};
use crate::platform::errqueue::QueuedError;
use crate::platform::{self, AsyncUdp, Received, UdpOptions};
use crate::report::ports::PortsReport;
use crate::target::{resolve_async, unspecified_for};
use anyhow::Context;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use udpreach_engine::sweep::{
    OpenStatus, Sweep, SweepConfig, SweepInput, SweepPlan, SweepTransmit,
};
use udpreach_engine::sweep_window::{self, PathBudget};
use udpreach_engine::Engine;
use udpreach_wire::auth::{DerivedKey, MIN_SEALED_LEN};
use udpreach_wire::control::ControlMsg;
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// The probe socket's receive buffer: replies in flight arrive in bursts,
/// and the probes in flight are capped by what it holds
/// (`sweep_window::max_in_flight`; 16,384 at long RTTs with this).
const PROBE_RECV_BUFFER: usize = 16 << 20;

/// How the sweep ended.
pub(crate) enum Ending {
    Complete,
    Interrupted,
    ControlLost(String),
}

pub(crate) async fn run(args: PortsArgs) -> anyhow::Result<u8> {
    if args.no_server {
        return serverless::run(args).await;
    }
    // One probe socket whatever the port count; raised anyway, as the brief asks of both sides.
    platform::raise_nofile_limit();
    let family = args.family.family();
    let mut server = resolve_async(&args.target, family).await?;
    if let Some(p) = args.control {
        server.set_port(p);
    }
    let key = crate::shared_key::load(&args.key)?;
    let mut ctl = ControlClient::connect(server).await?;
    let welcome = ctl.hello(key.as_ref()).await?;
    let opts = UdpOptions {
        recv_errors: true,
        recv_buffer: Some(PROBE_RECV_BUFFER),
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&server, 0), &opts)
        .context("cannot open the UDP probe socket")?;

    let spec = args.ports.clone();
    // Window, probes in flight and control pipeline from the handshake's
    // round trip and the server's announced budgets (sweep_window docs).
    let budget = PathBudget {
        rtt: ctl.handshake_rtt,
        // Stay under the server's per-session cap: probes over it would get
        // no reply and look like a blocked return path.
        rate: match (args.rate, welcome.max_probe_rate) {
            (r, 0) => r,
            (None, cap) => Some(cap),
            (Some(r), cap) => Some(r.min(cap)),
        },
        rcvbuf: udp.recv_buffer_size().unwrap_or(0),
        max_open: welcome.max_open_ports as usize,
    };
    let cfg = sweep_window::sized(
        SweepConfig {
            attempts: args.retries.unwrap_or(4),
            fixed_timeout: args.timeout,
            ..SweepConfig::default()
        },
        budget,
    );
    tracing::debug!(
        "sweep sized for RTT {:?}: {} ports open, {} probes in flight, {} control requests of {} ports",
        ctl.handshake_rtt,
        cfg.max_open,
        cfg.max_in_flight,
        cfg.control_pipeline,
        cfg.control_batch
    );
    let started = Instant::now();
    let mut sweep = Sweep::new(SweepPlan::new(&spec), cfg, started);
    sweep.seed_rtt(ctl.handshake_rtt);

    let report = PortsReport {
        format: args.output.format(),
        quiet: args.output.quiet,
        list: args.list,
        target_name: args.target.clone(),
        server,
    };
    report.start(spec.len());
    let bar = (!report.format.is_json() && !args.output.quiet && std::io::stderr().is_terminal())
        .then(|| report.progress_bar(spec.len() as u64));

    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let io = SweepIo::new(&udp, server, &welcome);
    let mut last_bar = Instant::now();
    let stop = async {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    };
    let mut last_state = Instant::now();
    let (ending, unauthenticated_replies) = drive(&mut sweep, &mut ctl, &io, stop, |sweep| {
        if last_state.elapsed() > Duration::from_millis(250) {
            last_state = Instant::now();
            let p = sweep.progress();
            tracing::debug!(
                "sweep at {:.2} s: {}/{} decided, {} probes; {:?}",
                started.elapsed().as_secs_f64(),
                p.decided,
                p.total,
                p.probes_sent,
                sweep.state()
            );
        }
        if let Some(b) = &bar {
            if last_bar.elapsed() > Duration::from_millis(100) {
                report.update_bar(b, sweep.progress());
                last_bar = Instant::now();
            }
        }
    })
    .await;
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
    let traced = match (&ending, args.trace) {
        (Ending::Complete, true) => Some(trace::trace_blocked(&args, &results).await),
        _ => None,
    };
    report.print(&results, elapsed, sweep.progress().probes_sent, traced);
    let all_ok = results
        .iter()
        .all(|r| r.verdict == udpreach_engine::Verdict::Reachable);
    Ok(code.unwrap_or(if all_ok { 0 } else { 1 }))
}

/// Where a sweep's probes go and what authenticates them.
pub(crate) struct SweepIo<'a> {
    pub udp: &'a AsyncUdp,
    /// The server's control address (probes go to its IP, each to its port).
    pub server: std::net::SocketAddr,
    pub token: u64,
    pub key: Option<&'a DerivedKey>,
}

impl<'a> SweepIo<'a> {
    /// The sweep's I/O for the session `welcome` opened with `server`.
    pub(crate) fn new(
        udp: &'a AsyncUdp,
        server: std::net::SocketAddr,
        welcome: &'a udpreach_engine::client_handshake::Welcome,
    ) -> Self {
        SweepIo {
            udp,
            server,
            token: welcome.token,
            key: welcome.session_key.as_ref(),
        }
    }
}

/// The sweep's driver loop, the one every caller (`ports`, `monitor`) runs:
/// the engine's transmits go out (probes on UDP, requests on the control
/// channel), replies and control answers go in, until the engine is done,
/// `stop` completes or the control connection is lost. `tick` runs once per
/// turn (progress display). Returns how it ended and how many replies failed
/// authentication.
pub(crate) async fn drive(
    sweep: &mut Sweep,
    ctl: &mut ControlClient,
    io: &SweepIo<'_>,
    stop: impl std::future::Future<Output = ()>,
    mut tick: impl FnMut(&Sweep),
) -> (Ending, u64) {
    let probe_len = if io.key.is_some() {
        MIN_SEALED_LEN
    } else {
        HEADER_LEN
    };
    let mut probe = vec![0u8; probe_len];
    let mut unauthenticated_replies = 0u64;
    let mut rbuf = vec![0u8; 2048];
    let accept = ReplyFilter {
        token: io.token,
        server: io.server,
        key: io.key,
    };
    tokio::pin!(stop);
    let ending = 'sweep: loop {
        let now = Instant::now();
        // Replies already queued must count before any timer is judged expired.
        unauthenticated_replies += drain_replies(io.udp, &mut rbuf, sweep, &accept);
        sweep.handle_timeout(now);
        while let Some(t) = sweep.poll_transmit(Instant::now()) {
            let (msg, pending) = match t {
                SweepTransmit::Probe(t) => {
                    ProbeHeader::request(ProbeKind::PortProbe, io.token, t.seq)
                        .encode(&mut probe)
                        .expect("header fits");
                    if let Some(k) = io.key {
                        k.seal(&mut probe).expect("probe is long enough for a tag");
                    }
                    let mut to = io.server;
                    to.set_port(t.port);
                    if let Err(e) = io.udp.send_to(&probe, to).await {
                        tracing::debug!("probe to {to}: {e}");
                    }
                    continue;
                }
                SweepTransmit::Open(ports) => (ControlMsg::Open { ports }, Pending::Open),
                SweepTransmit::QueryArrivals(ports) => {
                    (ControlMsg::Arrivals { ports }, Pending::Arrivals)
                }
                SweepTransmit::Close(ports) => (ControlMsg::Close { ports }, Pending::Close),
            };
            if let Err(e) = ctl.request(msg, pending).await {
                break 'sweep Ending::ControlLost(e.to_string());
            }
        }
        // Verdicts are read at the end, from `results()`.
        while sweep.poll_event().is_some() {}
        if sweep.is_done() {
            break Ending::Complete;
        }
        tick(sweep);
        let wake = sweep
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        tokio::select! {
            biased;
            _ = &mut stop => break Ending::Interrupted,
            msg = ctl.recv() => match msg {
                Ok(m) => match control_answer(ctl, m) {
                    Ok(input) => {
                        // The server answers for what it read, and sent the
                        // replies to it first: take those replies before
                        // the answer, so an arrivals count never finds its
                        // port's reply still queued here.
                        unauthenticated_replies += drain_replies(io.udp, &mut rbuf, sweep, &accept);
                        sweep.handle_input(input, Instant::now())
                    }
                    Err(e) => break Ending::ControlLost(e.to_string()),
                },
                Err(e) => break Ending::ControlLost(e.to_string()),
            },
            r = io.udp.recv_any(&mut rbuf) => {
                if let Ok(got) = r {
                    unauthenticated_replies += u64::from(!accept.received(sweep, &rbuf, got));
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    };
    (ending, unauthenticated_replies)
}

/// Reads what the socket holds now (bounded, so sends and timers get their
/// turn); returns how many replies failed authentication.
pub(crate) fn drain_replies(
    udp: &AsyncUdp,
    rbuf: &mut [u8],
    sweep: &mut Sweep,
    accept: &ReplyFilter,
) -> u64 {
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
            let icmp = SweepInput::Icmp {
                port: dest.port(),
                report: e.error.report(),
            };
            sweep.handle_input(icmp, Instant::now());
        }
    }
}

/// Which datagrams on the probe socket count as replies.
pub(crate) struct ReplyFilter<'a> {
    pub(crate) token: u64,
    pub(crate) server: std::net::SocketAddr,
    pub(crate) key: Option<&'a DerivedKey>,
}

impl ReplyFilter<'_> {
    /// Feeds a datagram or an ICMP error to the sweep; false as for [`Self::apply`].
    pub(crate) fn received(&self, sweep: &mut Sweep, buf: &[u8], got: Received) -> bool {
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
        let reply = SweepInput::Reply {
            port: from.port(),
            seq: h.seq,
        };
        sweep.handle_input(reply, Instant::now());
        true
    }
}

/// The sweep's input for a control answer, checked against the request it answers.
fn control_answer(ctl: &mut ControlClient, msg: ControlMsg) -> anyhow::Result<SweepInput> {
    let expected = ctl.pending.pop_front();
    Ok(match (expected, msg) {
        (
            Some(Pending::Open),
            ControlMsg::Opened {
                opened,
                in_use,
                denied,
                failed,
            },
        ) => SweepInput::Opened(
            [
                (opened, OpenStatus::Opened),
                (in_use, OpenStatus::InUse),
                (denied, OpenStatus::Denied),
                (failed, OpenStatus::Failed),
            ]
            .into_iter()
            .flat_map(|(list, status)| list.into_iter().map(move |p| (p, status)))
            .collect(),
        ),
        (Some(Pending::Arrivals), ControlMsg::ArrivalCounts { ports, counts }) => {
            SweepInput::Arrivals(ports.into_iter().zip(counts).collect())
        }
        (Some(Pending::Close), ControlMsg::Closed { .. }) => SweepInput::Closed,
        (_, ControlMsg::Error { code, message, .. }) => {
            anyhow::bail!("server error ({code:?}): {message}")
        }
        (exp, other) => anyhow::bail!("protocol error: got {other:?} while waiting for {exp:?}"),
    })
}
