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
//!
//! Our own limits must never look like the network's: probes go out paced
//! ([`WINDOW_BYTES`] on the way at once), downstream requests are split to
//! what our receive buffer holds, and the search never asks for more than a
//! UDP datagram of the family can carry.

use crate::cli::MtuArgs;
use crate::control_client::{ControlClient, Pending};
use crate::platform::errqueue::{self, PmtuMode, QueuedError};
use crate::platform::realtime_ns;
use crate::platform::{canonical, AsyncUdp, Received, UdpOptions};
use crate::report::documents::MtuMode;
use crate::report::mtu::{Direction, MtuReport};
use crate::target::{resolve_async, unspecified_for, Family};
use anyhow::{bail, Context};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_engine::mtu::{
    fragment_test_sizes, FragmentResult, FragmentSize, MtuSearch, MtuSearchConfig,
};
use udpreach_wire::auth::{self, DerivedKey, SharedKey, MIN_SEALED_LEN};
use udpreach_wire::control::{ControlMsg, MtuSendResult};
use udpreach_wire::icmp::{IcmpOrigin, IcmpReason};
use udpreach_wire::mtu::{
    max_mtu, min_mtu, packet_size, parse_ack, payload_size, MAX_BYTES_PER_SEND, MAX_COUNT_PER_SIZE,
    MAX_LINGER_MS, MAX_SIZES_PER_SEND,
};
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// Sizes per round after the first: each round narrows the range ninefold.
const SIZES_PER_ROUND: usize = 8;
/// Marks the sequence number of a fragmentation-test probe.
const FRAG_SEQ: u64 = 1 << 40;
/// Most probe bytes on the way at once. A round's probes all sent at once
/// (megabytes near the 64 KiB limit) overflow the receive buffer at the far
/// end (Linux's default is 208 KiB, charged with overhead) or, for echoes,
/// ours: the largest datagrams vanish, which the search would read as a
/// black hole. Two of the largest datagrams fit; a probe counts as no longer
/// on the way when its answer arrives or after [`Probing::stall`].
const WINDOW_BYTES: usize = 2 * 65536;
/// The receive buffer asked for: echoes of a window, and a whole `MtuSend`.
const RECV_BUFFER: usize = 4 << 20;

/// Where the probes go and how answers are recognised.
struct Probing {
    udp: AsyncUdp,
    token: u64,
    /// Authenticated mode: tags our probes, and must verify what comes back.
    key: Option<DerivedKey>,
    v6: bool,
    /// The MTU of the route the kernel takes to the target (shown; the
    /// search stops at what a datagram can fill).
    route_mtu: u32,
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
    let report = MtuReport {
        format: args.output.format(),
        quiet: args.output.quiet,
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
        route_mtu,
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
    report.start(MtuMode::Echo, p.route_mtu);
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
    report.start(MtuMode::Server, p.route_mtu);
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
        server_mtu.min(max_mtu(p.v6))
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
    udpreach_wire::probe::parse_quoted(&e.quoted)
        .filter(|q| !q.short && q.token == token)
        .map(|q| q.seq)
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

/// What a paced exchange of probes is for: a search round or a fragment test.
trait Exchange {
    /// Whether probe `seq` (of a size not answered yet) is still worth sending.
    fn wanted(&self, seq: u64) -> bool;
    /// A reply says probe `seq` arrived with `len` bytes.
    fn on_reply(&mut self, seq: u64, len: u32);
    /// Our kernel would not send probe `seq`.
    fn on_send_error(&mut self, seq: u64, e: &std::io::Error);
    /// An ICMP error (or a local one) for a probe to `to`.
    fn on_error(&mut self, p: &Probing, e: &QueuedError, to: SocketAddr) -> anyhow::Result<()>;
    /// Every probe has its answer: no need to wait longer.
    fn complete(&self) -> bool;
}

impl Probing {
    /// How long a probe counts as on the way without an answer, when more
    /// are waiting to be sent.
    fn stall(&self) -> Duration {
        (self.wait / 2).max(Duration::from_millis(20))
    }
}

/// Sends `queue` (seq, datagram) to `to`, at most [`WINDOW_BYTES`] on the
/// way at once, and feeds what comes back to `x` until every probe is
/// answered or `p.wait` after the last send. Our own pace, not the path,
/// decides how many bytes meet the far end's buffers at once.
async fn exchange(
    p: &mut Probing,
    to: SocketAddr,
    reply: ReplyReader,
    queue: &[(u64, Vec<u8>)],
    x: &mut impl Exchange,
) -> anyhow::Result<()> {
    let mut on_the_way: VecDeque<(Instant, u64, usize)> = VecDeque::new();
    let mut next = 0;
    let mut last_send = Instant::now();
    loop {
        while let Some((seq, d)) = queue.get(next) {
            if !x.wanted(*seq) {
                next += 1;
                continue;
            }
            let bytes: usize = on_the_way.iter().map(|w| w.2).sum();
            if !on_the_way.is_empty() && bytes + d.len() > WINDOW_BYTES {
                break;
            }
            next += 1;
            p.sent += 1;
            match p.udp.send_to(d, to).await {
                Ok(_) => {
                    last_send = Instant::now();
                    on_the_way.push_back((last_send, *seq, d.len()));
                }
                Err(e) => x.on_send_error(*seq, &e),
            }
        }
        if x.complete() {
            return Ok(());
        }
        let all_sent = next >= queue.len();
        let deadline = match on_the_way.front() {
            Some(w) if !all_sent => w.0 + p.stall(),
            _ => last_send + p.wait,
        };
        let Ok(got) = tokio::time::timeout_at(deadline.into(), p.udp.recv_any(&mut p.buf)).await
        else {
            if all_sent {
                return Ok(());
            }
            // The oldest probe had its time: lost (or too big), make room.
            on_the_way.pop_front();
            continue;
        };
        let answered = match got {
            Ok(Received::Datagram(meta)) => match reply(p, &p.buf[..meta.len], meta.from, to) {
                Some((seq, len)) => {
                    x.on_reply(seq, len);
                    Some(seq)
                }
                None => None,
            },
            Ok(Received::Error(e)) => {
                x.on_error(p, &e, to)?;
                quoted_seq(&e, p.token)
            }
            Err(e) => {
                tracing::debug!("mtu receive: {e}");
                None
            }
        };
        if let Some(i) = answered.and_then(|seq| on_the_way.iter().position(|w| w.1 == seq)) {
            on_the_way.remove(i);
        }
    }
}

/// A search round: every reply proves its size crossed.
struct SearchRound<'a> {
    s: &'a mut MtuSearch,
    v6: bool,
}

impl Exchange for SearchRound<'_> {
    fn wanted(&self, seq: u64) -> bool {
        u32::try_from(seq).is_ok_and(|m| self.s.awaits(m))
    }

    fn on_reply(&mut self, seq: u64, len: u32) {
        if seq & FRAG_SEQ != 0 {
            return;
        }
        // A whole probe arrived when the length that arrived fits the size its seq names.
        if let Ok(mtu) = u32::try_from(seq) {
            if payload_size(mtu, self.v6) == len {
                self.s.on_pass(mtu);
            }
        }
    }

    fn on_send_error(&mut self, seq: u64, e: &std::io::Error) {
        if e.raw_os_error() == Some(libc::EMSGSIZE) {
            // Our own kernel will not send it: the route's MTU is smaller.
            self.s.on_too_big(seq as u32, None, None);
        } else {
            tracing::debug!("mtu probe of {seq} bytes: {e}");
        }
    }

    fn on_error(&mut self, p: &Probing, e: &QueuedError, to: SocketAddr) -> anyhow::Result<()> {
        on_error(p, e, to, self.s)
    }

    fn complete(&self) -> bool {
        self.s.round_complete()
    }
}

/// One search round: DF probes of `sizes` to `to`, `p.probes` of each
/// (repeats go out after one of every size, and only for sizes still
/// unanswered); every reply that `reply` reads as one of ours proves its
/// size crossed.
async fn search_round(
    p: &mut Probing,
    to: SocketAddr,
    kind: ProbeKind,
    reply: ReplyReader,
    sizes: &[u32],
    s: &mut MtuSearch,
) -> anyhow::Result<()> {
    let datagrams: Vec<(u64, Vec<u8>)> = sizes
        .iter()
        .map(|&mtu| {
            let seq = u64::from(mtu);
            (seq, p.datagram(kind, seq, payload_size(mtu, p.v6)))
        })
        .collect();
    let queue: Vec<(u64, Vec<u8>)> = (0..p.probes)
        .flat_map(|_| datagrams.iter().cloned())
        .collect();
    let mut x = SearchRound { s, v6: p.v6 };
    exchange(p, to, reply, &queue, &mut x).await
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

/// Splits sending `p.probes` datagrams of each of `payloads` into `MtuSend`
/// requests (sizes, count) within the server's limits and within what our
/// receive buffer holds: a request's datagrams arrive in one burst, and
/// what overflows our buffer would look like loss on the path.
fn plan_requests(payloads: &[u32], probes: u32, budget: u64) -> Vec<(Vec<u32>, u32)> {
    let count = probes.clamp(1, MAX_COUNT_PER_SIZE);
    let budget = budget.clamp(1, MAX_BYTES_PER_SEND);
    let mut requests = Vec::new();
    let mut current: (Vec<u32>, u64) = (Vec::new(), 0);
    for &size in payloads {
        let bytes = u64::from(size) * u64::from(count);
        if bytes > budget {
            // Alone, in fewer copies per request.
            let per = u32::try_from(budget / u64::from(size.max(1)))
                .unwrap_or(1)
                .clamp(1, count);
            let mut left = count;
            while left > 0 {
                let n = per.min(left);
                requests.push((vec![size], n));
                left -= n;
            }
            continue;
        }
        if current.1 + bytes > budget || current.0.len() >= MAX_SIZES_PER_SEND as usize {
            requests.push((std::mem::take(&mut current.0), count));
            current.1 = 0;
        }
        current.0.push(size);
        current.1 += bytes;
    }
    if !current.0.is_empty() {
        requests.push((current.0, count));
    }
    requests
}

/// Has the server send `p.probes` datagrams of each of `payloads`, in as
/// many requests as [`plan_requests`] says, and merges their results.
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
    // Linux reports twice the buffer asked for; half of it holds the datagrams.
    let budget = p.udp.recv_buffer_size().unwrap_or(212_992) as u64 / 2;
    let mut merged: Vec<MtuSendResult> = Vec::new();
    for (sizes, count) in plan_requests(payloads, p.probes, budget) {
        let results =
            server_send_one(p, ctl, server, &sizes, count, df, fragment_at, &mut arrived).await?;
        for r in results {
            match merged.iter_mut().find(|m| m.size == r.size) {
                Some(m) => {
                    m.sent += r.sent;
                    m.error = m.error.take().or(r.error);
                    m.icmp = m.icmp.take().or(r.icmp);
                }
                None => merged.push(r),
            }
        }
    }
    Ok(merged)
}

/// Asks the server for one `MtuSend` and collects what arrives meanwhile;
/// `arrived` gets each datagram's length.
#[allow(clippy::too_many_arguments)]
async fn server_send_one(
    p: &mut Probing,
    ctl: &mut ControlClient,
    server: SocketAddr,
    payloads: &[u32],
    count: u32,
    df: bool,
    fragment_at: Option<u32>,
    arrived: &mut impl FnMut(u32, bool),
) -> anyhow::Result<Vec<MtuSendResult>> {
    let linger = p.wait.as_millis().min(u128::from(MAX_LINGER_MS)) as u32;
    let msg = ControlMsg::MtuSend {
        sizes: payloads.to_vec(),
        count,
        df,
        fragment_at,
        linger_ms: linger,
    };
    p.sent += payloads.len() as u64 * u64::from(count);
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

/// A fragment test: how many datagrams of each size arrived whole.
struct FragmentCounts(Vec<FragmentSize>);

impl FragmentCounts {
    fn find(&mut self, seq: u64) -> Option<&mut FragmentSize> {
        self.0
            .iter_mut()
            .find(|c| seq == FRAG_SEQ | u64::from(c.size))
    }
}

impl Exchange for FragmentCounts {
    fn wanted(&self, _seq: u64) -> bool {
        true
    }

    fn on_reply(&mut self, seq: u64, len: u32) {
        if let Some(c) = self.find(seq).filter(|c| c.size == len) {
            c.arrived += 1;
        }
    }

    fn on_send_error(&mut self, seq: u64, e: &std::io::Error) {
        tracing::debug!("fragment test datagram {}: {e}", seq & !FRAG_SEQ);
        if let Some(c) = self.find(seq) {
            c.sent = c.sent.saturating_sub(1);
        }
    }

    fn on_error(&mut self, _: &Probing, _: &QueuedError, _: SocketAddr) -> anyhow::Result<()> {
        Ok(())
    }

    fn complete(&self) -> bool {
        self.0.iter().all(|c| c.arrived >= c.sent)
    }
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
            let datagrams: Vec<(u64, Vec<u8>)> = sizes
                .iter()
                .map(|&size| {
                    let seq = FRAG_SEQ | u64::from(size);
                    (seq, p.datagram(kind, seq, size))
                })
                .collect();
            let queue: Vec<(u64, Vec<u8>)> = (0..p.probes)
                .flat_map(|_| datagrams.iter().cloned())
                .collect();
            // Counted as sent up front; a datagram our kernel refuses is taken back.
            let mut counts = FragmentCounts(
                sizes
                    .iter()
                    .map(|&size| FragmentSize {
                        size,
                        sent: p.probes,
                        arrived: 0,
                    })
                    .collect(),
            );
            let wait = p.wait;
            p.wait = wait * 2;
            let r = exchange(p, to, reply, &queue, &mut counts).await;
            p.wait = wait;
            r?;
            Ok(FragmentResult::from_counts(counts.0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_the_servers_limits_and_our_buffer() {
        // A loopback round over IPv6: the largest datagram three times is
        // more than a default receive buffer's half.
        let sizes = [528, 1232, 1452, 8952, 65488];
        let reqs = plan_requests(&sizes, 3, 106_496);
        for (s, c) in &reqs {
            let bytes: u64 = s.iter().map(|&x| u64::from(x) * u64::from(*c)).sum();
            assert!(bytes <= 106_496 || s.len() == 1 && *c == 1, "{reqs:?}");
            assert!(bytes <= MAX_BYTES_PER_SEND);
        }
        for &size in &sizes {
            let copies: u32 = reqs
                .iter()
                .filter(|(s, _)| s.contains(&size))
                .map(|(_, c)| c)
                .sum();
            assert_eq!(copies, 3, "size {size}: {reqs:?}");
        }
        assert_eq!(reqs.iter().filter(|(s, _)| s == &[65488]).count(), 3);
        // A large buffer: one request unless the server's cap says otherwise.
        assert_eq!(plan_requests(&sizes, 3, 8 << 20).len(), 1);
        let big = [udpreach_wire::mtu::MAX_PAYLOAD_V6; 10];
        let reqs = plan_requests(&big, 4, 8 << 20);
        assert!(reqs.iter().all(|(s, c)| {
            s.iter().map(|&x| u64::from(x) * u64::from(*c)).sum::<u64>() <= MAX_BYTES_PER_SEND
        }));
        assert_eq!(reqs.iter().map(|(s, _)| s.len()).sum::<usize>(), 10);
        let many: Vec<u32> = (100..150).collect();
        assert!(plan_requests(&many, 1, 8 << 20)
            .iter()
            .all(|(s, _)| s.len() <= MAX_SIZES_PER_SEND as usize));
    }
}
