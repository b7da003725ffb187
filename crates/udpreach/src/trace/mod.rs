//! `udpreach trace`: the I/O driver around [`udpreach_engine::trace`].
//!
//! Upstream: one UDP socket per traced port (and one for the control port),
//! so every TTL of a port has the same 5-tuple; TTL-limited probes go out
//! from the engine's schedule, ICMP errors come back on each socket's error
//! queue and are matched by the quoted probe; the server acknowledges the
//! probes that arrive and, at the end, says which TTLs arrived.
//! Downstream (server mode): the server traces from each port back to us
//! (`TraceSend`); we count which of its probes arrived, it reports the ICMP
//! errors they drew.

use crate::cli::TraceArgs;
use crate::control_client::{ControlClient, Pending};
use crate::platform::{AsyncUdp, Received, UdpOptions};
use crate::report::trace::{
    Direction, DirectionReport, TraceDocument, TraceMode, TraceReport, TraceStart,
};
use crate::target::{resolve_async, unspecified_for};
use anyhow::{bail, Context};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use udpreach_engine::trace::{HopAnswer, PortTrace, TraceConfig, TraceInput, TraceProbing};
use udpreach_engine::Engine;
use udpreach_wire::control::{ControlMsg, TraceSendResult};
use udpreach_wire::trace::{
    check_size, quoted_trace_probe, QuotedHeader, TraceKind, TraceProbe, LOCATOR_TTL,
    MAX_PORTS_PER_REQUEST,
};

/// Control port traced with --no-server when none is named (traceroute's first port).
pub(crate) const NO_SERVER_CONTROL_PORT: u16 = 33434;
/// Longest a whole upstream pass may take, whatever the engine asks.
const UPSTREAM_DEADLINE: Duration = Duration::from_secs(660);
/// How often a long upstream pass asks the server what arrived (which also
/// keeps the control session from going idle).
const ARRIVALS_POLL: Duration = Duration::from_secs(5);

/// What a probe socket received.
struct Incoming {
    /// Index of the socket (= of the port in `ports`).
    index: usize,
    got: Got,
    at: Instant,
}

enum Got {
    /// An ICMP error from the socket's error queue.
    Error(crate::platform::errqueue::QueuedError),
    /// A trace datagram from the target (an ack, or a downstream probe).
    Probe(TraceProbe),
    /// The IP header a hop quoted for one of our probes (raw ICMP socket).
    Quoted(TraceProbe, QuotedHeader),
}

pub(crate) async fn run(args: TraceArgs) -> anyhow::Result<u8> {
    let report = TraceReport {
        format: args.output.format(),
        quiet: args.output.quiet,
    };
    let doc = trace(&args, Some(&report)).await?;
    report.finish(&doc);
    Ok(if doc.passing == doc.start.ports.len() {
        0
    } else {
        1
    })
}

/// Traces `args.ports` (both directions against a server) and returns the
/// verdicts; `report` (if any) prints the start line.
pub(crate) async fn trace(
    args: &TraceArgs,
    report: Option<&TraceReport>,
) -> anyhow::Result<TraceDocument> {
    let started = Instant::now();
    let family = args.family.family();
    let mut target = resolve_async(&args.target, family).await?;
    if let Some(p) = args.control {
        target.set_port(p);
    }
    let traced: Vec<u16> = args.ports.iter().collect();
    if traced.len() >= MAX_PORTS_PER_REQUEST {
        bail!(
            "--ports '{}' names {} ports; trace takes at most {}",
            args.ports,
            traced.len(),
            MAX_PORTS_PER_REQUEST - 1
        );
    }
    if let Some(size) = args.size {
        // The server sends as many probes back, of the same size.
        let (hops, tries) = (args.max_hops, args.attempts);
        if let Err(e) = check_size(traced.len() + 1, hops, tries, usize::from(size)) {
            bail!("invalid size '{size}': {e}");
        }
    }
    let mut cfg = TraceConfig {
        max_hops: args.max_hops,
        attempts: args.attempts,
        rate_pps: args.rate,
        wait: args.timeout,
        patience: args.patience,
        canary: None,
        first_ttl: args.first_ttl.unwrap_or(1),
    };
    let ip = target.ip();

    if args.no_server && args.key.key_file.is_some() {
        bail!("--key-file needs a udpreach server: --no-server probes carry no tag");
    }
    let key = if args.no_server {
        None
    } else {
        crate::shared_key::load(&args.key)?
    };
    // The server opens the traced ports and the control port.
    let (mut ctl, token, control_port, session_key) = if args.no_server {
        let control = args.control_port.unwrap_or(NO_SERVER_CONTROL_PORT);
        (None, rand::random::<u64>(), control, None)
    } else {
        let mut ctl = ControlClient::connect(target).await?;
        let welcome = ctl.hello(key.as_ref()).await?;
        if !welcome.capabilities.iter().any(|c| c == "trace") {
            bail!("the server at {target} cannot trace (no \"trace\" capability); use --no-server");
        }
        // An older server takes only bare probes: padded ones would look dropped.
        if args.size.is_some() && !welcome.capabilities.iter().any(|c| c == "trace-hops") {
            bail!("the server at {target} cannot trace with --size (an older udpreach server)");
        }
        let mut ask = traced.clone();
        ask.push(args.control_port.unwrap_or(0));
        let answer = ctl
            .call(
                &ControlMsg::TraceOpen { ports: ask },
                Duration::from_secs(15),
            )
            .await?;
        let bound = match answer {
            ControlMsg::TraceOpened { ports, errors } => {
                if ports.contains(&0) {
                    bail!(
                        "the server could not open every trace port: {}",
                        errors.join("; ")
                    );
                }
                ports
            }
            ControlMsg::Error { message, .. } => bail!("the server refused to trace: {message}"),
            other => bail!("unexpected answer to trace_open: {other:?}"),
        };
        let control = *bound.last().expect("asked for the control port");
        (Some(ctl), welcome.token, control, welcome.session_key)
    };
    let mut ports = traced.clone();
    if !ports.contains(&control_port) {
        ports.push(control_port);
    }
    cfg.canary = Some(control_port);
    let start = TraceStart {
        target: args.target.clone(),
        address: ip.to_string(),
        mode: if args.no_server {
            TraceMode::NoServer
        } else {
            TraceMode::Server
        },
        ports: traced.clone(),
        control_port: Some(control_port),
        max_hops: args.max_hops,
    };
    if let Some(r) = report {
        r.start(&start);
    }

    // One socket per port: a constant 5-tuple for every TTL.
    let opts = UdpOptions {
        recv_errors: true,
        dscp: args.dscp,
        ..UdpOptions::default()
    };
    let (tx, mut rx) = mpsc::channel::<Incoming>(8192);
    let mut socks = Vec::with_capacity(ports.len());
    let mut readers = Vec::with_capacity(ports.len() + 1);
    // The quoted IP headers, when we may open a raw ICMP socket (root).
    let v6 = ip.is_ipv6();
    match crate::platform::raw_icmp_socket(v6) {
        Ok(raw) => {
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let Ok(Received::Datagram(m)) = raw.recv_any(&mut buf).await else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let Some((q, p)) = quoted_trace_probe(&buf[..m.len], v6) else {
                        continue;
                    };
                    if p.token != token || p.kind != TraceKind::Up || p.port != q.dport {
                        continue;
                    }
                    let inc = Incoming {
                        index: usize::MAX,
                        got: Got::Quoted(p, q),
                        at: Instant::now(),
                    };
                    if tx.send(inc).await.is_err() {
                        break;
                    }
                }
            }));
        }
        Err(e) => tracing::info!("no raw ICMP socket (DSCP per hop not shown): {e}"),
    }
    for index in 0..ports.len() {
        let s = Arc::new(
            AsyncUdp::bind(unspecified_for(&target, 0), &opts)
                .context("cannot open a UDP probe socket")?,
        );
        if args.size.is_some() {
            // Don't Fragment on every probe, whatever the path MTU cache says.
            s.set_pmtu_mode(crate::platform::errqueue::PmtuMode::Probe)
                .context("cannot set Don't Fragment on a probe socket")?;
        }
        let (s2, tx, key) = (s.clone(), tx.clone(), session_key.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let got = match s2.recv_any(&mut buf).await {
                    Ok(Received::Error(e)) => Got::Error(e),
                    Ok(Received::Datagram(m)) if m.from.ip() == ip => {
                        // Keyed session: only datagrams with the session's tag.
                        match TraceProbe::from_datagram(&buf[..m.len], key.as_ref()) {
                            Some(p) if m.from.port() == p.port => Got::Probe(p),
                            _ => continue,
                        }
                    }
                    Ok(Received::Datagram(_)) => continue,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                };
                let inc = Incoming {
                    index,
                    got,
                    at: Instant::now(),
                };
                if tx.send(inc).await.is_err() {
                    break;
                }
            }
        }));
        socks.push(s);
    }
    drop(tx);
    let mut state = Collected::new(token);

    // Padded probes may not get through at all: a bare locator from each
    // port tells the server where to send its downstream probes.
    if args.size.is_some() && ctl.is_some() {
        for (sock, &port) in socks.iter().zip(&ports) {
            let locator = TraceProbe {
                token,
                port,
                ttl: LOCATOR_TTL,
                attempt: 0,
                kind: TraceKind::Up,
            }
            .to_datagram(session_key.as_ref(), 0);
            if let Err(e) = sock.send_to(&locator, SocketAddr::new(ip, port)).await {
                tracing::debug!("trace locator to {port}: {e}");
            }
        }
    }
    // Upstream.
    let mut engine = TraceProbing::new(&ports, cfg.clone(), Instant::now());
    let up_started = Instant::now();
    let mut next_poll = up_started + ARRIVALS_POLL;
    while !engine.is_done() && up_started.elapsed() < UPSTREAM_DEADLINE {
        if let Some(c) = ctl.as_mut().filter(|_| Instant::now() >= next_poll) {
            // A long (paced) trace: what arrived so far settles lost acks,
            // and the session does not go idle.
            arrivals(c, &ports, &mut engine).await?;
            next_poll = Instant::now() + ARRIVALS_POLL;
        }
        while let Some(t) = engine.poll_transmit(Instant::now()) {
            let Some(i) = ports.iter().position(|&p| p == t.port) else {
                continue;
            };
            let probe = TraceProbe {
                token,
                port: t.port,
                ttl: t.ttl,
                attempt: t.attempt,
                kind: TraceKind::Up,
            }
            .to_datagram(session_key.as_ref(), args.size.map_or(0, usize::from));
            socks[i]
                .set_ttl(u32::from(t.ttl))
                .context("cannot set the probe TTL")?;
            if let Err(e) = socks[i].send_to(&probe, SocketAddr::new(ip, t.port)).await {
                tracing::debug!("trace probe to {}: {e}", t.port);
            }
        }
        while engine.poll_event().is_some() {}
        if engine.is_done() {
            break;
        }
        let wake = engine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
        let wake = if ctl.is_some() {
            wake.min(next_poll)
        } else {
            wake
        };
        tokio::select! {
            got = rx.recv() => match got {
                Some(inc) => {
                    if let Some(input) = state.upstream_input(&ports, inc) {
                        engine.handle_input(input.0, input.1);
                    }
                }
                None => bail!("probe sockets closed"),
            },
            _ = tokio::time::sleep_until(wake.into()) => engine.handle_timeout(Instant::now()),
        }
    }
    // The server's count of what arrived settles acks that were lost.
    if let Some(c) = ctl.as_mut() {
        arrivals(c, &ports, &mut engine).await?;
    }
    let upstream = engine.into_results();

    // Downstream.
    let mut downstream: Vec<PortTrace> = Vec::new();
    if let Some(c) = ctl.as_mut() {
        let msg = ControlMsg::TraceSend {
            ports: ports.clone(),
            max_hops: args.max_hops,
            attempts: args.attempts,
            wait_ms: args.timeout.map_or(0, |d| d.as_millis() as u32),
            rate: args.rate,
            tos: args.dscp.map(|d| d << 2),
            size: args.size,
        };
        c.request(msg, Pending::Arrivals).await?;
        let results: Vec<TraceSendResult> = loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(inc) => state.downstream_arrival(inc),
                    None => bail!("probe sockets closed"),
                },
                m = c.recv() => match m? {
                    ControlMsg::TraceSent { results } => { c.pending.pop_front(); break results },
                    ControlMsg::Error { message, .. } => bail!("the server could not trace downstream: {message}"),
                    other => bail!("unexpected answer to trace_send: {other:?}"),
                },
            }
        };
        // Datagrams already queued on our sockets.
        let settle = Instant::now() + Duration::from_millis(20);
        while let Ok(Some(inc)) = tokio::time::timeout_at(settle.into(), rx.recv()).await {
            state.downstream_arrival(inc);
        }
        for r in &results {
            if let Some(e) = &r.error {
                tracing::info!("downstream trace of port {}: {e}", r.port);
            }
        }
        downstream = state.downstream_traces(&ports, &results);
        let _ = c.bye().await;
    }
    for r in readers {
        r.abort();
    }

    // Verdicts.
    let find = |traces: &[PortTrace], port: u16| traces.iter().find(|t| t.port == port).cloned();
    let up_control = find(&upstream, control_port);
    let down_control = find(&downstream, control_port);
    let mut results = Vec::new();
    for &port in &ports {
        let is_control = port == control_port && !traced.contains(&port);
        if let Some(t) = find(&upstream, port) {
            let c = (!is_control).then_some(up_control.as_ref()).flatten();
            let mut r = DirectionReport::new(&t, c, ip, Direction::Upstream, is_control);
            let quoted: BTreeMap<u8, (u8, u8)> = state
                .quoted
                .range((port, 0)..=(port, u8::MAX))
                .map(|(&(_, ttl), q)| (ttl, (q.dscp, q.ecn)))
                .collect();
            r.add_quoted(&quoted, args.dscp.unwrap_or(0));
            results.push(r);
        }
        if let Some(t) = find(&downstream, port) {
            let c = (!is_control).then_some(down_control.as_ref()).flatten();
            let mut r = DirectionReport::new(&t, c, ip, Direction::Downstream, is_control);
            r.add_quoted(&state.down_quoted(port), args.dscp.unwrap_or(0));
            results.push(r);
        }
    }
    let passing = traced
        .iter()
        .filter(|&&p| {
            results
                .iter()
                .filter(|r| r.port == p && !r.control)
                .all(|r| r.passes())
        })
        .count();
    Ok(TraceDocument {
        start,
        results,
        passing,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Asks the server which TTLs of `ports` arrived and tells the engine.
async fn arrivals(
    c: &mut ControlClient,
    ports: &[u16],
    engine: &mut TraceProbing,
) -> anyhow::Result<()> {
    match c
        .call(
            &ControlMsg::TraceArrivals {
                ports: ports.to_vec(),
            },
            Duration::from_secs(15),
        )
        .await?
    {
        ControlMsg::TraceArrived { arrivals } => {
            for a in arrivals {
                for ttl in a.ttls {
                    engine.handle_input(
                        TraceInput::Arrived {
                            port: a.port,
                            ttl,
                            attempt: u8::MAX,
                        },
                        Instant::now(),
                    );
                }
            }
            Ok(())
        }
        other => bail!("unexpected answer to trace_arrivals: {other:?}"),
    }
}

/// What the receivers learned beyond the engine's inputs.
struct Collected {
    token: u64,
    /// Downstream: TTLs of the server's probes that arrived, per port.
    down_arrived: BTreeMap<u16, BTreeSet<u8>>,
    /// Upstream: the header each hop quoted, by (port, TTL).
    quoted: BTreeMap<(u16, u8), QuotedHeader>,
    /// Downstream: DSCP/ECN each hop quoted, as the server read them.
    down_marks: BTreeMap<u16, BTreeMap<u8, (u8, u8)>>,
}

impl Collected {
    fn new(token: u64) -> Self {
        Collected {
            token,
            down_arrived: BTreeMap::new(),
            quoted: BTreeMap::new(),
            down_marks: BTreeMap::new(),
        }
    }

    fn upstream_input(&mut self, ports: &[u16], inc: Incoming) -> Option<(TraceInput, Instant)> {
        if let Got::Quoted(p, q) = inc.got {
            self.quoted.entry((p.port, p.ttl)).or_insert(q);
            return None;
        }
        let port = *ports.get(inc.index)?;
        match inc.got {
            Got::Error(e) => {
                let p = TraceProbe::decode(&e.quoted)?;
                (p.token == self.token && p.kind == TraceKind::Up && p.port == port).then_some((
                    TraceInput::Icmp {
                        port,
                        ttl: p.ttl,
                        attempt: p.attempt,
                        error: e.error,
                    },
                    inc.at,
                ))
            }
            Got::Probe(p)
                if p.token == self.token && p.kind == TraceKind::Ack && p.port == port =>
            {
                Some((
                    TraceInput::Arrived {
                        port,
                        ttl: p.ttl,
                        attempt: p.attempt,
                    },
                    inc.at,
                ))
            }
            Got::Probe(_) | Got::Quoted(..) => None,
        }
    }

    /// A downstream probe of the server's that reached us.
    fn downstream_arrival(&mut self, inc: Incoming) {
        if let Got::Probe(p) = inc.got {
            if p.token == self.token && p.kind == TraceKind::Down {
                self.down_arrived.entry(p.port).or_default().insert(p.ttl);
            }
        }
    }

    /// Downstream: the DSCP/ECN each hop quoted for `port`'s probes, as
    /// the server read them (`ttl -> (dscp, ecn)`).
    fn down_quoted(&self, port: u16) -> BTreeMap<u8, (u8, u8)> {
        self.down_marks.get(&port).cloned().unwrap_or_default()
    }

    fn downstream_traces(&mut self, ports: &[u16], results: &[TraceSendResult]) -> Vec<PortTrace> {
        // A TTL at which some port arrived: a silence there is evidence (an
        // arrival is counted by us, not limited like an ICMP error).
        let arrived_at: BTreeSet<u8> = self.down_arrived.values().flatten().copied().collect();
        ports
            .iter()
            .map(|&port| {
                let mut t = PortTrace {
                    port,
                    ..PortTrace::default()
                };
                if let Some(r) = results.iter().find(|r| r.port == port) {
                    t.sent = r.sent;
                    t.unsure = r
                        .unsure
                        .iter()
                        .copied()
                        .filter(|ttl| !arrived_at.contains(ttl))
                        .collect();
                    t.rate_limited = r.rate_limited.iter().copied().collect();
                    for h in &r.hops {
                        let rtt = Some(Duration::from_micros(h.rtt_us));
                        t.hops.insert(h.ttl, HopAnswer::from_icmp(&h.icmp, rtt));
                        if let (Some(d), Some(e)) = (h.dscp, h.ecn) {
                            self.down_marks
                                .entry(port)
                                .or_default()
                                .insert(h.ttl, (d, e));
                        }
                    }
                }
                for &ttl in self.down_arrived.get(&port).into_iter().flatten() {
                    t.hops.insert(ttl, HopAnswer::Arrived { rtt: None });
                }
                t
            })
            .collect()
    }
}
