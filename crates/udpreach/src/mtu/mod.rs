//! `udpreach mtu`: the I/O driver around [`udpreach_engine::MtuSearch`].
//!
//! Against a udpreach server with the "mtu" capability each direction is
//! measured on its own: upstream with DF probes to the session's MTU port
//! (which acknowledges every probe that arrives with 64 bytes), downstream
//! with DF probes the server sends on request over the control channel.
//! Against a plain echo server (`--echo`, or a server without the
//! capability) the echo port gives one round-trip answer. Then datagrams
//! larger than the path MTU are sent without DF, to see whether fragments
//! pass.
//!
//! The engine decides everything (sizes, round waits from the measured
//! round trip, pacing, what each answer and ICMP error means, the fragment
//! test); [`drive`] is the one driver loop around it. Our own limits must
//! never look like the network's: probes go out paced
//! ([`udpreach_engine::mtu::WINDOW_BYTES`] on the way at once), downstream
//! requests are split to what our receive buffer holds, and the search never
//! asks for more than a UDP datagram of the family can carry.

use crate::cli::MtuArgs;
use crate::control_client::{ControlClient, Pending};
use crate::platform::errqueue::{self, PmtuMode, QueuedError};
use crate::platform::realtime_ns;
use crate::platform::{canonical, AsyncUdp, Received, UdpOptions};
use crate::report::documents::MtuMode;
use crate::report::mtu::{Direction, MtuReport};
use crate::target::{resolve_async, unspecified_for};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::mtu::{
    Fragmenting, MtuInput, MtuSearch, MtuSearchConfig, MtuTransmit, Probing, WINDOW_BYTES,
};
use udpreach_engine::Engine;
use udpreach_wire::auth::{self, DerivedKey, SharedKey, MIN_SEALED_LEN};
use udpreach_wire::control::ControlMsg;
use udpreach_wire::icmp::{IcmpOrigin, IcmpReason};
use udpreach_wire::mtu::{max_mtu, min_mtu, packet_size, parse_ack, payload_size};
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// Sizes per round after the first: each round narrows the range ninefold.
const SIZES_PER_ROUND: usize = 8;
/// The receive buffer asked for: echoes of a window, and a whole `MtuSend`.
const RECV_BUFFER: usize = 4 << 20;
/// How long the loop sleeps when the engine waits for an input only (a
/// control answer, whose own deadline is the control client's).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// The sequence number of the echo probe that measures the round trip
/// (the search's own probes start at 1).
const RTT_PROBE_SEQ: u64 = 0;

/// Where the probes go and how answers are recognised.
struct ProbeSocket {
    udp: AsyncUdp,
    token: u64,
    /// Authenticated mode: tags our probes, and must verify what comes back.
    key: Option<DerivedKey>,
    v6: bool,
    /// The MTU of the route the kernel takes to the target (shown; the
    /// search stops at what a datagram can fill).
    route_mtu: u32,
    probes: u32,
    buf: Vec<u8>,
    sent: u64,
}

enum Mode {
    Server {
        ctl: Box<ControlClient>,
        mtu_port: SocketAddr,
        server_mtu: u32,
    },
    Echo,
}

pub(crate) async fn run(args: MtuArgs) -> anyhow::Result<u8> {
    let family = args.family.family();
    let target = resolve_async(&args.target, family).await?;
    let report = MtuReport {
        format: args.output.format(),
        quiet: args.output.quiet,
        target_name: args.target.clone(),
        target,
    };
    let shared_key = crate::shared_key::load(&args.key)?;
    let m = measure(target, &args, shared_key.as_ref(), &report).await?;
    Ok(match &m.paths {
        Measured::Directions { up, down } => {
            report.print_directions(up, down, m.elapsed, m.probes_sent);
            exit_code(&[up, down])
        }
        Measured::RoundTrip(rt) => {
            report.print_round_trip(rt, m.elapsed, m.probes_sent);
            exit_code(&[rt])
        }
    })
}

/// What one measurement found.
pub(crate) struct Measurement {
    pub paths: Measured,
    pub probes_sent: u64,
    pub elapsed: Duration,
}

/// Each direction (a udpreach server with the "mtu" capability) or the
/// round trip (an echo server).
pub(crate) enum Measured {
    Directions { up: Direction, down: Direction },
    RoundTrip(Direction),
}

/// Measures the path MTU towards `target` as `args` says (its target,
/// output and key fields are not read: `shared_key` is the key), reporting
/// progress through `report`; `udpreach mtu` prints the result, the
/// monitor's mtu check exports it.
pub(crate) async fn measure(
    target: SocketAddr,
    args: &MtuArgs,
    shared_key: Option<&SharedKey>,
    report: &MtuReport,
) -> anyhow::Result<Measurement> {
    let v6 = target.is_ipv6();
    let route_mtu = errqueue::route_mtu(target)
        .with_context(|| format!("cannot find the route MTU towards {target}"))?;
    // Loopback's 65536 (IPv4) is more than a UDP datagram can fill.
    let local_mtu = route_mtu.min(max_mtu(v6));
    let opts = UdpOptions {
        recv_errors: true,
        recv_buffer: Some(RECV_BUFFER),
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
        .context("cannot open the UDP probe socket")?;
    udp.set_pmtu_mode(PmtuMode::Probe)
        .context("cannot set Don't Fragment on the probe socket")?;
    let started = Instant::now();
    let (mode, rtt, token, session_key) = if args.echo {
        (Mode::Echo, None, rand::random(), None)
    } else {
        let mut control = target;
        if let Some(p) = args.control {
            control.set_port(p);
        }
        match open_server(control, report, shared_key).await? {
            Some((mode, rtt, token, key)) => (mode, Some(rtt), token, key),
            None => (Mode::Echo, None, rand::random(), None),
        }
    };
    // Through the echo port a keyed server wants probes tagged as ping's are.
    let key = match &mode {
        Mode::Server { .. } => session_key,
        Mode::Echo => shared_key.map(|k| k.ping_key(token)),
    };
    let mut p = ProbeSocket {
        udp,
        token,
        key,
        v6,
        route_mtu,
        probes: args.probes,
        buf: vec![0u8; 65536],
        sent: 0,
    };
    let paths = match mode {
        Mode::Echo => Measured::RoundTrip(run_echo(&mut p, args, report, target, local_mtu).await?),
        Mode::Server {
            mut ctl,
            mtu_port,
            server_mtu,
        } => {
            let (up, down) = run_server(
                &mut p, args, &mut ctl, target, mtu_port, local_mtu, server_mtu, rtt, report,
            )
            .await?;
            let _ = ctl.bye().await;
            Measured::Directions { up, down }
        }
    };
    Ok(Measurement {
        paths,
        probes_sent: p.sent,
        elapsed: started.elapsed(),
    })
}

/// Round trip through an echo port (the port in HOST:PORT).
async fn run_echo(
    p: &mut ProbeSocket,
    args: &MtuArgs,
    report: &MtuReport,
    target: SocketAddr,
    local_mtu: u32,
) -> anyhow::Result<Direction> {
    let rtt = echo_rtt(p, target)
        .await
        .with_context(|| format!("no answer from the echo port {target}"))?;
    report.start(MtuMode::Echo, p.route_mtu);
    let datagrams = Probing::Datagrams {
        window_bytes: WINDOW_BYTES,
    };
    let cfg = search_config(p, args, local_mtu, datagrams, Some(rtt));
    let mut s = MtuSearch::new(cfg, Instant::now());
    let far = Far::Datagrams {
        to: target,
        kind: ProbeKind::EchoRequest,
        reply: echoed,
    };
    drive(p, &mut s, far).await?;
    Ok(direction(&s, p.v6))
}

/// Each direction on its own: upstream through the session's MTU port,
/// downstream by the server's sends (its waits from the round-trip
/// estimate upstream built).
#[allow(clippy::too_many_arguments)]
async fn run_server(
    p: &mut ProbeSocket,
    args: &MtuArgs,
    ctl: &mut ControlClient,
    target: SocketAddr,
    mtu_port: SocketAddr,
    local_mtu: u32,
    server_mtu: u32,
    rtt: Option<Duration>,
    report: &MtuReport,
) -> anyhow::Result<(Direction, Direction)> {
    report.start(MtuMode::Server, p.route_mtu);
    let datagrams = Probing::Datagrams {
        window_bytes: WINDOW_BYTES,
    };
    let mut up = MtuSearch::new(
        search_config(p, args, local_mtu, datagrams, rtt),
        Instant::now(),
    );
    let far = Far::Datagrams {
        to: mtu_port,
        kind: ProbeKind::MtuProbe,
        reply: mtu_port_ack,
    };
    drive(p, &mut up, far).await?;
    if up.result().mtu.is_none() {
        report.notice(&format!(
            "no probe reached the server's MTU port {mtu_port}: a firewall in front of the server? (--echo measures through the echo port)"
        ));
    }
    let down_max = if server_mtu > 0 {
        server_mtu.min(max_mtu(p.v6))
    } else {
        local_mtu
    };
    // Linux reports twice the buffer asked for; half of it holds the datagrams.
    let request_bytes = p.udp.recv_buffer_size().unwrap_or(212_992) as u64 / 2;
    let far_end = Probing::FarEndSends { request_bytes };
    let mut down_cfg = search_config(p, args, down_max, far_end, rtt);
    if up.srtt().is_some() {
        // Upstream measured the path: its estimate, not the one handshake sample.
        down_cfg.rtt = None;
        down_cfg.rtt_estimate = Some(up.rtt_estimate().clone());
    }
    let mut down = MtuSearch::new(down_cfg, Instant::now());
    drive(
        p,
        &mut down,
        Far::Server {
            ctl,
            server: target,
        },
    )
    .await?;
    Ok((direction(&up, p.v6), direction(&down, p.v6)))
}

fn exit_code(dirs: &[&Direction]) -> u8 {
    let ok = dirs
        .iter()
        .all(|d| d.result.mtu.is_some() && d.fragments.as_ref().is_none_or(|f| f.passes));
    if ok {
        0
    } else {
        1
    }
}

/// Connects the control channel and opens the MTU port. `None` (after a
/// notice) when there is no udpreach server or it lacks the "mtu" capability:
/// then the echo port is all there is.
async fn open_server(
    control: SocketAddr,
    report: &MtuReport,
    key: Option<&SharedKey>,
) -> anyhow::Result<Option<(Mode, Duration, u64, Option<DerivedKey>)>> {
    let mut ctl = match ControlClient::connect(control).await {
        Ok(c) => c,
        Err(e) => {
            report.notice(&format!(
                "{:#}; measuring the round trip through the echo port instead",
                anyhow::Error::from(e)
            ));
            return Ok(None);
        }
    };
    let welcome = ctl.hello(key).await?;
    if !welcome.capabilities.iter().any(|c| c == "mtu") {
        report.notice(&format!(
            "the server at {control} cannot send MTU probes (no \"mtu\" capability); measuring the round trip through its echo port"
        ));
        return Ok(None);
    }
    let rtt = ctl.handshake_rtt;
    let answer = ctl
        .call(&ControlMsg::MtuOpen { port: None }, Duration::from_secs(15))
        .await?;
    match answer {
        ControlMsg::MtuOpened { port, mtu, .. } => {
            let mut mtu_port = control;
            mtu_port.set_port(port);
            Ok(Some((
                Mode::Server {
                    ctl: Box::new(ctl),
                    mtu_port,
                    server_mtu: mtu,
                },
                rtt,
                welcome.token,
                welcome.session_key,
            )))
        }
        ControlMsg::Error { code, message, .. } => {
            bail!("the server refused an MTU port ({code:?}): {message}")
        }
        other => bail!("protocol error: expected mtu_opened, got {other:?}"),
    }
}

impl ProbeSocket {
    /// The smallest probe: a header, and a tag in authenticated mode.
    fn min_payload(&self) -> u32 {
        if self.key.is_some() {
            MIN_SEALED_LEN as u32
        } else {
            HEADER_LEN as u32
        }
    }

    fn datagram(&self, kind: ProbeKind, seq: u64, payload: u32) -> Vec<u8> {
        let mut d = vec![0u8; payload.max(self.min_payload()) as usize];
        ProbeHeader::request(kind, self.token, seq)
            .encode(&mut d)
            .expect("at least a header");
        if let Some(k) = &self.key {
            if kind == ProbeKind::EchoRequest {
                // A keyed echo port refuses requests far from its clock.
                auth::set_sent_ns(&mut d, realtime_ns());
            }
            k.seal(&mut d).expect("at least a header and a tag");
        }
        d
    }

    /// Whether an answer is acceptable: in authenticated mode, only with a valid tag.
    fn authentic(&self, data: &[u8]) -> bool {
        self.key.as_ref().is_none_or(|k| k.verify(data).is_ok())
    }
}

/// The sequence number an ICMP error quotes, if the quote holds our header.
fn quoted_seq(e: &QueuedError, token: u64) -> Option<u64> {
    udpreach_wire::probe::parse_quoted(&e.quoted)
        .filter(|q| !q.short && q.token == token)
        .map(|q| q.seq)
}

/// Where one direction's probes come from.
enum Far<'a> {
    /// We send them to `to`; `reply` reads the answers.
    Datagrams {
        to: SocketAddr,
        kind: ProbeKind,
        reply: ReplyReader,
    },
    /// The server sends them on request over the control channel.
    Server {
        ctl: &'a mut ControlClient,
        server: SocketAddr,
    },
}

/// The search's config for this client: sizes from what a probe must hold
/// up to `max_mtu`, waits from `rtt` (or `--timeout`).
fn search_config(
    p: &ProbeSocket,
    args: &MtuArgs,
    max_mtu: u32,
    probing: Probing,
    rtt: Option<Duration>,
) -> MtuSearchConfig {
    MtuSearchConfig {
        min_mtu: min_mtu(p.v6).max(packet_size(p.min_payload(), p.v6)),
        max_mtu,
        probes_per_size: p.probes,
        sizes_per_round: SIZES_PER_ROUND,
        v6: p.v6,
        probing,
        rtt,
        rtt_estimate: None,
        round_wait: args.timeout,
        fragment_test: !args.no_fragments,
    }
}

/// Runs one direction's [`MtuSearch`] to its end: the engine driver loop of
/// ARCHITECTURE.md. The engine decides what to send, when a round ends and
/// what every answer and ICMP error means; this moves bytes and time.
async fn drive(p: &mut ProbeSocket, s: &mut MtuSearch, mut far: Far<'_>) -> anyhow::Result<()> {
    let mut fragmenting = Fragmenting::DontFragment;
    let mut request_out = false;
    let result = loop {
        s.handle_timeout(Instant::now());
        while let Some(t) = s.poll_transmit(Instant::now()) {
            match (t, &mut far) {
                (MtuTransmit::Probe(probe), Far::Datagrams { to, kind, .. }) => {
                    if probe.fragmenting != fragmenting {
                        set_fragmenting(p, probe.fragmenting)?;
                        fragmenting = probe.fragmenting;
                    }
                    let d = p.datagram(*kind, probe.seq, probe.payload);
                    p.sent += 1;
                    if let Err(e) = p.udp.send_to(&d, *to).await {
                        tracing::debug!("mtu probe of {} bytes: {e}", probe.payload);
                        let too_big = e.raw_os_error() == Some(libc::EMSGSIZE);
                        let input = MtuInput::NotSent {
                            seq: probe.seq,
                            too_big,
                        };
                        s.handle_input(input, Instant::now());
                    }
                }
                (MtuTransmit::Request(r), Far::Server { ctl, .. }) => {
                    p.sent += r.payloads.len() as u64 * u64::from(r.count);
                    let msg = ControlMsg::MtuSend {
                        sizes: r.payloads,
                        count: r.count,
                        df: r.df,
                        fragment_at: r.fragment_at,
                        linger_ms: r.linger_ms,
                    };
                    ctl.request(msg, Pending::MtuSend).await?;
                    request_out = true;
                }
                (t, _) => bail!("internal error: {t:?} does not fit this direction"),
            }
        }
        if s.is_done() {
            break Ok(());
        }
        let wake = s
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
        let input = match &mut far {
            Far::Server { ctl, server } => tokio::select! {
                m = ctl.recv(), if request_out => {
                    ctl.pending.pop_front();
                    request_out = false;
                    match m? {
                        ControlMsg::MtuSent { results } => Some(MtuInput::Answered(results)),
                        ControlMsg::Error { code, message, .. } => {
                            break Err(anyhow::anyhow!(
                                "the server could not send MTU probes ({code:?}): {message}"
                            ))
                        }
                        other => {
                            break Err(anyhow::anyhow!(
                                "protocol error: expected mtu_sent, got {other:?}"
                            ))
                        }
                    }
                }
                r = p.udp.recv_any(&mut p.buf) => match r {
                    Ok(Received::Datagram(meta)) => server_probe_len(p, &meta, *server)
                        .map(|len| MtuInput::Arrived { seq: u64::from(len), len }),
                    _ => None,
                },
                _ = tokio::time::sleep_until(wake.into()) => None,
            },
            Far::Datagrams { to, reply, .. } => tokio::select! {
                r = p.udp.recv_any(&mut p.buf) => match r {
                    Ok(Received::Datagram(meta)) => reply(p, &p.buf[..meta.len], meta.from, *to)
                        .map(|(seq, len)| MtuInput::Arrived { seq, len }),
                    Ok(Received::Error(e)) => match too_big(p, &e, *to) {
                        Ok(input) => input,
                        // Unreachable altogether: only a search can tell.
                        Err(e) if s.in_search() => break Err(e),
                        Err(_) => None,
                    },
                    Err(e) => {
                        tracing::debug!("mtu receive: {e}");
                        None
                    }
                },
                _ = tokio::time::sleep_until(wake.into()) => None,
            },
        };
        if let Some(input) = input {
            s.handle_input(input, Instant::now());
        }
    };
    if fragmenting != Fragmenting::DontFragment {
        p.udp.set_pmtu_mode(PmtuMode::Probe)?;
    }
    result
}

/// Don't Fragment on or off; over IPv6, where routers never fragment, the
/// sender fragments at the path MTU itself.
fn set_fragmenting(p: &ProbeSocket, f: Fragmenting) -> anyhow::Result<()> {
    match f {
        Fragmenting::DontFragment => p.udp.set_pmtu_mode(PmtuMode::Probe)?,
        Fragmenting::Allowed { path_mtu } => {
            p.udp.set_pmtu_mode(PmtuMode::AllowFragments)?;
            if p.v6 {
                p.udp.set_fragment_mtu(path_mtu)?;
            }
        }
    }
    Ok(())
}

/// What an error from the socket's queue says about a probe to `dest`: a
/// frag-needed / packet-too-big for the search (`Ok(None)`: nothing to do
/// with it); any other error means the port is unreachable altogether.
fn too_big(p: &ProbeSocket, e: &QueuedError, dest: SocketAddr) -> anyhow::Result<Option<MtuInput>> {
    if e.dest.is_some_and(|d| canonical(d) != canonical(dest)) {
        return Ok(None);
    }
    match e.error.reason() {
        IcmpReason::FragNeeded { mtu } => {
            let from = if e.error.origin == IcmpOrigin::Local {
                None
            } else {
                e.error.from
            };
            let seq = quoted_seq(e, p.token);
            Ok(Some(MtuInput::TooBig { seq, mtu, from }))
        }
        IcmpReason::TimeExceeded => Ok(None),
        other => {
            let who = e
                .error
                .from
                .map_or_else(|| "the local host".to_string(), |ip| ip.to_string());
            bail!("probes to {dest} are answered with \"{other}\" from {who}")
        }
    }
}

/// The report of one driven direction.
fn direction(s: &MtuSearch, v6: bool) -> Direction {
    let result = s.result();
    Direction {
        payload: result.mtu.map(|m| payload_size(m, v6)),
        result,
        fragments: s.fragments().cloned(),
        elapsed_ms: s.search_time().unwrap_or_default().as_secs_f64() * 1e3,
    }
}

/// One small echo first: the path works at all, and how long answers take.
async fn echo_rtt(p: &mut ProbeSocket, echo: SocketAddr) -> anyhow::Result<Duration> {
    let len = p.min_payload();
    let d = p.datagram(ProbeKind::EchoRequest, RTT_PROBE_SEQ, len);
    for _ in 0..3 {
        let t0 = Instant::now();
        p.sent += 1;
        p.udp.send_to(&d, echo).await?;
        let deadline = t0 + Duration::from_secs(1);
        while let Ok(got) =
            tokio::time::timeout_at(deadline.into(), p.udp.recv_any(&mut p.buf)).await
        {
            match got {
                Ok(Received::Datagram(meta))
                    if echoed(p, &p.buf[..meta.len], meta.from, echo)
                        == Some((RTT_PROBE_SEQ, len)) =>
                {
                    return Ok(t0.elapsed());
                }
                Ok(Received::Error(e)) if e.error.origin != IcmpOrigin::Local => {
                    bail!("{}", e.error.report())
                }
                _ => {}
            }
        }
    }
    bail!("3 probes, no reply")
}

/// The length of a server-sent MTU probe of this session, if that is what arrived.
fn server_probe_len(
    p: &ProbeSocket,
    meta: &crate::platform::RecvMeta,
    server: SocketAddr,
) -> Option<u32> {
    if meta.from.ip() != server.ip() || !p.authentic(&p.buf[..meta.len]) {
        return None;
    }
    let h = ProbeHeader::decode(&p.buf[..meta.len]).ok()?;
    (h.kind == ProbeKind::MtuProbe && h.token == p.token && h.seq == meta.len as u64)
        .then_some(meta.len as u32)
}

/// What a reply to one of our probes says arrived: the probe's seq and the
/// size that reached the far end. `to` is where the probes went. The same
/// readers serve the search rounds and the fragment tests.
type ReplyReader = fn(&ProbeSocket, &[u8], SocketAddr, SocketAddr) -> Option<(u64, u32)>;

/// Upstream fragments: the MTU port acknowledges each datagram it received.
fn mtu_port_ack(
    p: &ProbeSocket,
    data: &[u8],
    from: SocketAddr,
    to: SocketAddr,
) -> Option<(u64, u32)> {
    if from != to || !p.authentic(data) {
        return None;
    }
    parse_ack(data, p.token).map(|ack| (ack.seq, ack.received_len))
}

/// Round trip through an echo port: the datagram itself comes back.
fn echoed(p: &ProbeSocket, data: &[u8], from: SocketAddr, to: SocketAddr) -> Option<(u64, u32)> {
    if canonical(from) != canonical(to) || !p.authentic(data) {
        return None;
    }
    let h = ProbeHeader::decode(data).ok()?;
    (h.token == p.token).then_some((h.seq, data.len() as u32))
}
