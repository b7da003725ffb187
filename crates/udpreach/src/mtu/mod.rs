//! `udpreach mtu`: the I/O driver around [`udpreach_engine::MtuSearch`].
//!
//! Against a udpreach server with the "mtu" capability each direction is
//! measured on its own: upstream with DF probes to the session's MTU port
//! (which acknowledges every size that arrives with 64 bytes), downstream
//! with DF probes the server sends on request over the control channel.
//! Against a plain echo server (`--echo`, or a server without the
//! capability) the echo port gives one round-trip answer. Then datagrams
//! larger than the path MTU are sent without DF, to see whether fragments
//! pass.

use crate::cli::MtuArgs;
use crate::platform::errqueue::{self, PmtuMode, QueuedError};
use crate::platform::realtime_ns;
use crate::platform::{canonical, AsyncUdp, Received, UdpOptions};
use crate::ports::control::{ControlClient, Pending};
use crate::report::documents::MtuMode;
use crate::report::mtu::{Direction, MtuReport};
use crate::report::OutputFormat;
use crate::target::{resolve_async, unspecified_for, Family};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::mtu::{
    fragment_test_sizes, FragmentResult, FragmentSize, MtuSearch, MtuSearchConfig,
};
use udpreach_wire::auth::{self, DerivedKey, SharedKey, MIN_SEALED_LEN};
use udpreach_wire::control::{ControlMsg, MtuSendResult};
use udpreach_wire::icmp::{IcmpOrigin, IcmpReason};
use udpreach_wire::mtu::{min_mtu, packet_size, parse_ack, payload_size, MAX_LINGER_MS};
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN, MAGIC};

/// Sizes per round after the first: each round narrows the range ninefold.
const SIZES_PER_ROUND: usize = 8;
/// Marks the sequence number of a fragmentation-test probe.
const FRAG_SEQ: u64 = 1 << 40;

/// Where the probes go and how answers are recognised.
struct Probing {
    udp: AsyncUdp,
    token: u64,
    /// Authenticated mode: tags our probes, and must verify what comes back.
    key: Option<DerivedKey>,
    v6: bool,
    /// How long a round waits for its probes' answers.
    wait: Duration,
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

pub async fn run(args: MtuArgs) -> anyhow::Result<u8> {
    let family = Family::from_flags(args.ipv4, args.ipv6);
    let target = resolve_async(&args.target, family).await?;
    let v6 = target.is_ipv6();
    let local_mtu = errqueue::route_mtu(target)
        .with_context(|| format!("cannot find the route MTU towards {target}"))?;
    let opts = UdpOptions {
        recv_errors: true,
        ..UdpOptions::default()
    };
    let udp = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
        .context("cannot open the UDP probe socket")?;
    udp.set_pmtu_mode(PmtuMode::Probe)
        .context("cannot set Don't Fragment on the probe socket")?;
    let report = MtuReport {
        format: OutputFormat::from_flags(args.json, args.json_lines),
        quiet: args.quiet,
        target_name: args.target.clone(),
        target,
    };
    let started = Instant::now();
    let shared_key = crate::shared_key::load(&args.key)?;
    let (mode, rtt, token, session_key) = if args.echo {
        (Mode::Echo, None, rand::random(), None)
    } else {
        let mut control = target;
        if let Some(p) = args.control {
            control.set_port(p);
        }
        match open_server(control, &report, shared_key.as_ref()).await? {
            Some((mode, rtt, token, key)) => (mode, Some(rtt), token, key),
            None => (Mode::Echo, None, rand::random(), None),
        }
    };
    // Through the echo port a keyed server wants probes tagged as ping's are.
    let key = match &mode {
        Mode::Server { .. } => session_key,
        Mode::Echo => shared_key.as_ref().map(|k| k.ping_key(token)),
    };
    let mut p = Probing {
        udp,
        token,
        key,
        v6,
        wait: Duration::from_millis(500),
        probes: args.probes,
        buf: vec![0u8; 65536],
        sent: 0,
    };
    let code = match mode {
        Mode::Echo => run_echo(&mut p, &args, &report, target, local_mtu).await?,
        Mode::Server {
            mut ctl,
            mtu_port,
            server_mtu,
        } => {
            p.wait = args
                .timeout
                .unwrap_or_else(|| round_wait(rtt.unwrap_or(Duration::from_millis(100))));
            let (up, down) = run_server(
                &mut p, &args, &mut ctl, target, mtu_port, local_mtu, server_mtu, &report,
            )
            .await?;
            let _ = ctl.bye().await;
            report.print_directions(&up, &down, started.elapsed(), p.sent);
            exit_code(&[&up, &down])
        }
    };
    Ok(code)
}

/// Round trip through an echo port (the port in HOST:PORT).
async fn run_echo(
    p: &mut Probing,
    args: &MtuArgs,
    report: &MtuReport,
    target: SocketAddr,
    local_mtu: u32,
) -> anyhow::Result<u8> {
    let started = Instant::now();
    let rtt = echo_rtt(p, target)
        .await
        .with_context(|| format!("no answer from the echo port {target}"))?;
    p.wait = args.timeout.unwrap_or_else(|| round_wait(rtt));
    report.start(MtuMode::Echo, local_mtu);
    let rt = search(p, local_mtu, |p, sizes, s| {
        Box::pin(search_round(
            p,
            target,
            ProbeKind::EchoRequest,
            echoed,
            sizes,
            s,
        ))
    })
    .await?;
    let fragments = match (args.no_fragments, rt.result.mtu) {
        (false, Some(m)) => {
            Some(fragment_test(p, target, ProbeKind::EchoRequest, m, echoed).await?)
        }
        _ => None,
    };
    let rt = Direction { fragments, ..rt };
    report.print_round_trip(&rt, started.elapsed(), p.sent);
    Ok(exit_code(&[&rt]))
}

/// Each direction on its own, through the session's MTU port.
#[allow(clippy::too_many_arguments)]
async fn run_server(
    p: &mut Probing,
    args: &MtuArgs,
    ctl: &mut ControlClient,
    target: SocketAddr,
    mtu_port: SocketAddr,
    local_mtu: u32,
    server_mtu: u32,
    report: &MtuReport,
) -> anyhow::Result<(Direction, Direction)> {
    report.start(MtuMode::Server, local_mtu);
    let mut up = search(p, local_mtu, |p, sizes, s| {
        Box::pin(search_round(
            p,
            mtu_port,
            ProbeKind::MtuProbe,
            mtu_port_ack,
            sizes,
            s,
        ))
    })
    .await?;
    if up.result.mtu.is_none() {
        report.notice(&format!(
            "no probe reached the server's MTU port {mtu_port}: a firewall in front of the server? (--echo measures through the echo port)"
        ));
    }
    let down_max = if server_mtu > 0 {
        server_mtu
    } else {
        local_mtu
    };
    let mut down = search_down(p, ctl, target, down_max).await?;
    if !args.no_fragments {
        if let Some(m) = up.result.mtu {
            up.fragments =
                Some(fragment_test(p, mtu_port, ProbeKind::MtuProbe, m, mtu_port_ack).await?);
        }
        if let Some(m) = down.result.mtu {
            down.fragments = Some(down_fragments(p, ctl, target, m).await?);
        }
    }
    Ok((up, down))
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

/// A round waits a few round trips for its probes: long enough for the
/// answers, short enough that a black hole costs little.
fn round_wait(rtt: Duration) -> Duration {
    (rtt * 4 + Duration::from_millis(50)).clamp(Duration::from_millis(100), Duration::from_secs(2))
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
                "{e:#}; measuring the round trip through the echo port instead"
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

impl Probing {
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
    let q = &e.quoted;
    if q.len() < 24 || q[..4] != MAGIC || q[8..16] != token.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(q[16..24].try_into().ok()?))
}

/// Feeds a frag-needed / packet-too-big error for a probe to `dest` into the
/// search. Other errors mean the port is unreachable altogether.
fn on_error(
    p: &Probing,
    e: &QueuedError,
    dest: SocketAddr,
    s: &mut MtuSearch,
) -> anyhow::Result<()> {
    if e.dest.is_some_and(|d| canonical(d) != canonical(dest)) {
        return Ok(());
    }
    match e.error.reason() {
        IcmpReason::FragNeeded { mtu: hint } => {
            let from = if e.error.origin == IcmpOrigin::Local {
                None
            } else {
                e.error.from
            };
            match quoted_seq(e, p.token).filter(|s| s & FRAG_SEQ == 0) {
                Some(size) => s.on_too_big(size as u32, hint, from),
                None => {
                    // Too little quoted to name the probe: the error is about
                    // every size its MTU is too small for.
                    if let Some(h) = hint {
                        for size in s.unanswered().into_iter().filter(|&m| m > h) {
                            s.on_too_big(size, hint, from);
                        }
                    }
                }
            }
            Ok(())
        }
        IcmpReason::TimeExceeded => Ok(()),
        other => {
            let who = e
                .error
                .from
                .map_or_else(|| "the local host".to_string(), |ip| ip.to_string());
            bail!("probes to {dest} are answered with \"{other}\" from {who}")
        }
    }
}

type RoundFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>>;

/// Runs the search with `round` carrying out each round.
async fn search<F>(p: &mut Probing, max_mtu: u32, round: F) -> anyhow::Result<Direction>
where
    F: for<'a> Fn(&'a mut Probing, &'a [u32], &'a mut MtuSearch) -> RoundFuture<'a>,
{
    let t0 = Instant::now();
    let mut s = MtuSearch::new(MtuSearchConfig {
        min_mtu: min_mtu(p.v6).max(packet_size(p.min_payload(), p.v6)),
        max_mtu,
        probes_per_size: p.probes,
        sizes_per_round: SIZES_PER_ROUND,
    });
    while let Some(sizes) = s.next_round() {
        round(p, &sizes, &mut s).await?;
        s.end_round();
    }
    Ok(direction(s, p.v6, t0))
}

fn direction(s: MtuSearch, v6: bool, t0: Instant) -> Direction {
    let result = s.result();
    Direction {
        payload: result.mtu.map(|m| payload_size(m, v6)),
        result,
        fragments: None,
        elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
    }
}

/// Sends every size of a round `p.probes` times to `dest`.
async fn send_sizes(
    p: &mut Probing,
    dest: SocketAddr,
    kind: ProbeKind,
    sizes: &[u32],
    s: &mut MtuSearch,
) {
    for &mtu in sizes {
        let d = p.datagram(kind, u64::from(mtu), payload_size(mtu, p.v6));
        for _ in 0..p.probes {
            p.sent += 1;
            if let Err(e) = p.udp.send_to(&d, dest).await {
                if e.raw_os_error() == Some(libc::EMSGSIZE) {
                    // Our own kernel will not send it: the route's MTU is smaller.
                    s.on_too_big(mtu, None, None);
                    break;
                }
                tracing::debug!("mtu probe of {mtu} bytes to {dest}: {e}");
            }
        }
    }
}

/// One search round: DF probes of `sizes` to `to`, then every reply that
/// `reply` reads as one of ours proves its size crossed.
async fn search_round(
    p: &mut Probing,
    to: SocketAddr,
    kind: ProbeKind,
    reply: ReplyReader,
    sizes: &[u32],
    s: &mut MtuSearch,
) -> anyhow::Result<()> {
    send_sizes(p, to, kind, sizes, s).await;
    let deadline = Instant::now() + p.wait;
    while !s.round_complete() {
        let Ok(got) = tokio::time::timeout_at(deadline.into(), p.udp.recv_any(&mut p.buf)).await
        else {
            break;
        };
        match got {
            Ok(Received::Datagram(meta)) => {
                if let Some(mtu) = passed(p, reply, &p.buf[..meta.len], meta.from, to) {
                    s.on_pass(mtu);
                }
            }
            Ok(Received::Error(e)) => on_error(p, &e, to, s)?,
            _ => {}
        }
    }
    Ok(())
}

/// The MTU a search reply proves: probes carry their packet size as seq, so
/// a whole one of ours arrived when the size that arrived fits that seq.
fn passed(
    p: &Probing,
    reply: ReplyReader,
    data: &[u8],
    from: SocketAddr,
    to: SocketAddr,
) -> Option<u32> {
    let (seq, len) = reply(p, data, from, to)?;
    if seq & FRAG_SEQ != 0 {
        return None;
    }
    let mtu = u32::try_from(seq).ok()?;
    (payload_size(mtu, p.v6) == len).then_some(mtu)
}

/// One small echo first: the path works at all, and how long answers take.
async fn echo_rtt(p: &mut Probing, echo: SocketAddr) -> anyhow::Result<Duration> {
    let mtu = packet_size(p.min_payload(), p.v6);
    let d = p.datagram(ProbeKind::EchoRequest, u64::from(mtu), p.min_payload());
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
                    if passed(p, echoed, &p.buf[..meta.len], meta.from, echo) == Some(mtu) =>
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

/// Downstream search: each round is an `MtuSend` with DF; the probes that
/// arrive pass, the server's frag-needed errors bound the rest.
async fn search_down(
    p: &mut Probing,
    ctl: &mut ControlClient,
    server: SocketAddr,
    max_mtu: u32,
) -> anyhow::Result<Direction> {
    let t0 = Instant::now();
    let mut s = MtuSearch::new(MtuSearchConfig {
        min_mtu: min_mtu(p.v6).max(packet_size(p.min_payload(), p.v6)),
        max_mtu,
        probes_per_size: p.probes,
        sizes_per_round: SIZES_PER_ROUND,
    });
    while let Some(sizes) = s.next_round() {
        let payloads: Vec<u32> = sizes.iter().map(|&m| payload_size(m, p.v6)).collect();
        let results = server_send(p, ctl, server, &payloads, true, None, |len, v6| {
            s.on_pass(packet_size(len, v6));
        })
        .await?;
        for r in results {
            let mtu = packet_size(r.size, p.v6);
            if let Some(icmp) = r.icmp {
                if let IcmpReason::FragNeeded { mtu: hint } = icmp.reason() {
                    s.on_too_big(mtu, hint, icmp.from);
                }
            } else if r.sent == 0 && r.error.is_some() {
                // The server's own kernel will not send it.
                s.on_too_big(mtu, None, None);
            }
        }
        s.end_round();
    }
    Ok(direction(s, p.v6, t0))
}

/// Asks the server for an `MtuSend` and collects what arrives meanwhile;
/// `arrived` gets each datagram's length.
#[allow(clippy::too_many_arguments)]
async fn server_send(
    p: &mut Probing,
    ctl: &mut ControlClient,
    server: SocketAddr,
    payloads: &[u32],
    df: bool,
    fragment_at: Option<u32>,
    mut arrived: impl FnMut(u32, bool),
) -> anyhow::Result<Vec<MtuSendResult>> {
    let linger = p.wait.as_millis().min(u128::from(MAX_LINGER_MS)) as u32;
    let msg = ControlMsg::MtuSend {
        sizes: payloads.to_vec(),
        count: p.probes,
        df,
        fragment_at,
        linger_ms: linger,
    };
    p.sent += payloads.len() as u64 * u64::from(p.probes);
    ctl.request(msg, Pending::MtuSend).await?;
    let results = loop {
        tokio::select! {
            m = ctl.recv() => {
                ctl.pending.pop_front();
                match m? {
                    ControlMsg::MtuSent { results } => break results,
                    ControlMsg::Error { code, message, .. } => {
                        bail!("the server could not send MTU probes ({code:?}): {message}")
                    }
                    other => bail!("protocol error: expected mtu_sent, got {other:?}"),
                }
            }
            r = p.udp.recv_any(&mut p.buf) => {
                if let Ok(Received::Datagram(meta)) = r {
                    if let Some(len) = server_probe_len(p, &meta, server) {
                        arrived(len, p.v6);
                    }
                }
            }
        }
    };
    // Whatever was sent before the answer is here by now, give or take reordering.
    let grace = Instant::now() + Duration::from_millis(20);
    while let Ok(r) = tokio::time::timeout_at(grace.into(), p.udp.recv_any(&mut p.buf)).await {
        if let Ok(Received::Datagram(meta)) = r {
            if let Some(len) = server_probe_len(p, &meta, server) {
                arrived(len, p.v6);
            }
        }
    }
    Ok(results)
}

/// The length of a server-sent MTU probe of this session, if that is what arrived.
fn server_probe_len(
    p: &Probing,
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
type ReplyReader = fn(&Probing, &[u8], SocketAddr, SocketAddr) -> Option<(u64, u32)>;

/// Upstream fragments: the MTU port acknowledges each datagram it received.
fn mtu_port_ack(p: &Probing, data: &[u8], from: SocketAddr, to: SocketAddr) -> Option<(u64, u32)> {
    if from != to || !p.authentic(data) {
        return None;
    }
    parse_ack(data, p.token).map(|ack| (ack.seq, ack.received_len))
}

/// Round trip through an echo port: the datagram itself comes back.
fn echoed(p: &Probing, data: &[u8], from: SocketAddr, to: SocketAddr) -> Option<(u64, u32)> {
    if canonical(from) != canonical(to) || !p.authentic(data) {
        return None;
    }
    let h = ProbeHeader::decode(data).ok()?;
    (h.token == p.token).then_some((h.seq, data.len() as u32))
}

/// Sends datagrams above the path MTU with DF off to `to` and counts, per
/// size, how many `reply` says arrived whole.
async fn fragment_test(
    p: &mut Probing,
    to: SocketAddr,
    kind: ProbeKind,
    mtu: u32,
    reply: ReplyReader,
) -> anyhow::Result<FragmentResult> {
    let sizes = fragment_test_sizes(mtu, p.v6);
    with_fragments(p, mtu, |p| {
        Box::pin(async move {
            let mut counts: Vec<FragmentSize> = sizes
                .iter()
                .map(|&size| FragmentSize {
                    size,
                    sent: 0,
                    arrived: 0,
                })
                .collect();
            for c in counts.iter_mut() {
                let d = p.datagram(kind, FRAG_SEQ | u64::from(c.size), c.size);
                for _ in 0..p.probes {
                    p.sent += 1;
                    if p.udp.send_to(&d, to).await.is_ok() {
                        c.sent += 1;
                    }
                }
            }
            let deadline = Instant::now() + p.wait * 2;
            while let Ok(r) =
                tokio::time::timeout_at(deadline.into(), p.udp.recv_any(&mut p.buf)).await
            {
                if let Ok(Received::Datagram(meta)) = r {
                    if let Some((seq, size)) = reply(p, &p.buf[..meta.len], meta.from, to) {
                        if let Some(c) = counts
                            .iter_mut()
                            .find(|c| seq == FRAG_SEQ | u64::from(c.size) && size == c.size)
                        {
                            c.arrived += 1;
                        }
                    }
                }
                if counts.iter().all(|c| c.arrived >= c.sent) {
                    break;
                }
            }
            Ok(FragmentResult::from_counts(counts))
        })
    })
    .await
}

/// Runs `test` with DF off (fragmenting at the measured `mtu` over IPv6,
/// where routers never fragment), then puts DF back.
async fn with_fragments<F>(p: &mut Probing, mtu: u32, test: F) -> anyhow::Result<FragmentResult>
where
    F: for<'a> FnOnce(
        &'a mut Probing,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<FragmentResult>> + 'a>,
    >,
{
    p.udp.set_pmtu_mode(PmtuMode::AllowFragments)?;
    if p.v6 {
        p.udp.set_fragment_mtu(mtu)?;
    }
    let r = test(p).await;
    p.udp.set_pmtu_mode(PmtuMode::Probe)?;
    r
}

/// Downstream fragments: the server sends datagrams above the path MTU without DF.
async fn down_fragments(
    p: &mut Probing,
    ctl: &mut ControlClient,
    server: SocketAddr,
    mtu: u32,
) -> anyhow::Result<FragmentResult> {
    let sizes = fragment_test_sizes(mtu, p.v6);
    let mut counts: Vec<FragmentSize> = sizes
        .iter()
        .map(|&size| FragmentSize {
            size,
            sent: 0,
            arrived: 0,
        })
        .collect();
    let fragment_at = p.v6.then_some(mtu);
    let mut arrivals: Vec<u32> = Vec::new();
    let results = server_send(p, ctl, server, &sizes, false, fragment_at, |len, _| {
        arrivals.push(len);
    })
    .await?;
    for c in counts.iter_mut() {
        c.sent = results
            .iter()
            .find(|r| r.size == c.size)
            .map_or(0, |r| r.sent);
        c.arrived = arrivals.iter().filter(|&&l| l == c.size).count() as u32;
    }
    Ok(FragmentResult::from_counts(counts))
}
