//! `udpreach ping`: the I/O driver around [`udpreach_engine::PingSession`].

pub(crate) mod payload;
mod stamp;

use crate::cli::PingArgs;
use crate::control_client::{ControlClient, ControlError};
use crate::platform::errqueue::QueuedError;
use crate::platform::{
    canonical, realtime_ns, AsyncUdp, PreciseTimer, Received, ReceivedOrSent, UdpOptions,
};
use crate::report::documents::{
    BehindSchedule, IgnoredReply, PingEvent as ReportedEvent, SendFailure, SkippedPort,
};
use crate::report::ping::{PingReport, ReplyKind};
use crate::target::{resolve_async, unspecified_for};
use anyhow::{bail, Context};
use payload::{PayloadBuilder, Reply};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use udpreach_engine::marks::{MarkTally, ReplyMarks};
use udpreach_engine::ping::{PingConfig, PingEvent, PingInput, PingSession};
use udpreach_engine::Engine;
use udpreach_wire::auth::{SharedKey, MIN_SEALED_LEN};
use udpreach_wire::icmp::IcmpOrigin;

/// What a socket's reader task hands to the ping loop.
struct Incoming {
    local: SocketAddr,
    /// When we read it (our monotonic clock, wake-up included).
    at: Instant,
    /// When the kernel received it (realtime ns), if it said.
    kernel_ns: Option<u64>,
    arrival: Arrival,
}

enum Arrival {
    Datagram {
        from: SocketAddr,
        ttl: Option<u8>,
        /// The TOS byte it arrived with (sockets with `recv_tos`).
        tos: Option<u8>,
        data: Vec<u8>,
    },
    Icmp(QueuedError),
    /// The kernel's transmit timestamp of our send number `id` on this socket.
    Sent {
        id: u32,
    },
}

fn realtime_of(t: Option<SystemTime>) -> Option<u64> {
    t?.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
}

/// Datagrams the run's sockets dropped because their receive buffer was
/// full: replies that reached this host, lost by us, not by the network.
/// Each socket's count comes from the kernel: carried by every datagram
/// queued after a drop (`SO_RXQ_OVFL`), and read from the socket table at
/// the end ([`AsyncUdp::drops`]), which also sees drops after the last
/// datagram.
#[derive(Default)]
pub(super) struct LocalDrops(std::sync::Mutex<HashMap<SocketAddr, u64>>);

impl LocalDrops {
    /// The socket bound to `local` has dropped `count` so far.
    pub(super) fn update(&self, local: SocketAddr, count: u64) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.entry(local).or_default();
        *c = (*c).max(count);
    }

    /// [`Self::update`] from the socket table, now.
    pub(super) fn read(&self, local: SocketAddr, sock: &AsyncUdp) {
        match sock.drops() {
            Ok(n) => self.update(local, n),
            Err(e) => tracing::debug!("socket drops of {local}: {e}"),
        }
    }

    /// The total so far over every socket.
    pub(super) fn total(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

fn spawn_reader(
    sock: Arc<AsyncUdp>,
    local: SocketAddr,
    tx: mpsc::UnboundedSender<Incoming>,
    drops: Arc<LocalDrops>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let msg = match sock.recv_timed(&mut buf).await {
                Ok(ReceivedOrSent::Received(Received::Datagram(meta))) => {
                    if let Some(n) = meta.drops {
                        drops.update(local, n.into());
                    }
                    Incoming {
                        local,
                        at: Instant::now(),
                        kernel_ns: realtime_of(meta.kernel_rx),
                        arrival: Arrival::Datagram {
                            from: meta.from,
                            ttl: meta.ttl,
                            tos: meta.tos,
                            data: buf[..meta.len].to_vec(),
                        },
                    }
                }
                Ok(ReceivedOrSent::Received(Received::Error(e))) => Incoming {
                    local,
                    at: Instant::now(),
                    kernel_ns: realtime_of(e.kernel_rx),
                    arrival: Arrival::Icmp(e),
                },
                Ok(ReceivedOrSent::Sent(t)) => Incoming {
                    local,
                    at: Instant::now(),
                    kernel_ns: realtime_of(Some(t.at)),
                    arrival: Arrival::Sent { id: t.id },
                },
                Err(e) => {
                    tracing::debug!("ping receive: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            if tx.send(msg).is_err() {
                return;
            }
        }
    })
}

/// Send numbers remembered for matching transmit timestamps (the rest are
/// forgotten: a timestamp that late is not used).
const MAX_TX_IDS: usize = 1 << 16;

/// Ping has no control channel of its own, and a server with another key
/// drops probes silently, which would look like loss. So with a key, ping
/// first runs the control handshake against the server's TCP port (same
/// number) to check the key: a mismatch ends the run with "authentication
/// failed" (exit 2). If TCP does not get through, ping goes on and says so.
async fn check_key(target: SocketAddr, key: &SharedKey) -> anyhow::Result<()> {
    let attempt = async {
        let mut ctl = ControlClient::connect(target).await?;
        ctl.hello(Some(key)).await?;
        let _ = ctl.bye().await;
        Ok::<_, ControlError>(())
    };
    match tokio::time::timeout(KEY_CHECK_TIMEOUT, attempt).await {
        Ok(Ok(())) => {
            tracing::info!("key accepted by {target}");
            Ok(())
        }
        Ok(Err(e @ ControlError::AuthFailed(_))) => Err(e.into()),
        Ok(Err(e)) => {
            eprintln!("udpreach: could not check the key with {target} over TCP ({e}); a server with another key will not answer");
            Ok(())
        }
        Err(_) => {
            eprintln!("udpreach: could not check the key with {target} over TCP (no answer in {} s); a server with another key will not answer", KEY_CHECK_TIMEOUT.as_secs());
            Ok(())
        }
    }
}

const KEY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a run that got no reply waits at its end for [`key_required`].
const KEY_CHECK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Without a key, a server that requires one drops every probe, which looks
/// like 100% loss. The TCP handshake [`check_key`] uses tells the two apart:
/// the server refuses a keyless hello saying it requires a key. Returns that
/// as an error line; `None` for anything else (a plain echo server, no TCP).
async fn key_required(target: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut ctl = ControlClient::connect(target).await?;
        ctl.hello(None).await?;
        let _ = ctl.bye().await;
        Ok::<_, ControlError>(())
    };
    match tokio::time::timeout(KEY_CHECK_TIMEOUT, attempt).await {
        Ok(Err(e @ ControlError::AuthFailed(_))) => {
            tracing::debug!("keyless control check with {target}: {e}");
            Some(format!(
                "{target} requires a key (--key-file or UDPREACH_KEY): it answers no probe without one"
            ))
        }
        Ok(Err(e)) => {
            tracing::debug!("keyless control check with {target}: {e}");
            None
        }
        _ => None,
    }
}

/// The source address the kernel would pick towards `target` (for the NAT check).
fn route_source(target: SocketAddr) -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind(unspecified_for(&target, 0)).ok()?;
    s.connect(target).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// The set-up plain ping and `ping --stamp` share: the IPv4 size limit and
/// the probe socket's options (TTL, DSCP/ECN, DF, ICMP errors, transmit
/// timestamps, and the TOS each reply arrives with when it is reported).
fn probe_socket_options(
    args: &PingArgs,
    target: SocketAddr,
    size: usize,
) -> anyhow::Result<UdpOptions> {
    let max = udpreach_wire::probe::MAX_DATAGRAM;
    if target.is_ipv4() && size > max {
        bail!("invalid size '{size}': IPv4 allows at most {max} bytes");
    }
    Ok(UdpOptions {
        ttl: args.ttl,
        dscp: args.dscp,
        ecn: args.ecn,
        dont_fragment: args.df,
        recv_errors: true,
        tx_timestamps: true,
        // What each reply arrived with: STAMP's CoS, or --dscp/--ecn.
        recv_tos: args.stamp || asked_tos(args).is_some(),
        // Replies and the kernel's transmit timestamps (error queue) share
        // the receive buffer: at 10,000 probes/s, a 20 ms stall of this
        // process (or a burst from a late relay) queues about 400 of each,
        // more than the default 208 KiB holds (a reply costs about 830
        // bytes of it). Overflowing it dropped replies that then counted
        // as network loss (131 of 20,000 through the lab's emulator).
        recv_buffer: Some(args.recv_buffer.unwrap_or(PING_RECV_BUFFER)),
        // And if it overflows anyway, what it dropped is ours, not the network's.
        count_drops: true,
        ..UdpOptions::default()
    })
}

/// The TOS byte `--dscp` / `--ecn` ask for (the replies too), if either is given.
fn asked_tos(args: &PingArgs) -> Option<u8> {
    (args.dscp.is_some() || args.ecn.is_some())
        .then(|| args.dscp.unwrap_or(0) << 2 | args.ecn.unwrap_or(0))
}

struct Sender {
    sock: Arc<AsyncUdp>,
    local: SocketAddr,
    reader: JoinHandle<()>,
    /// Sends so far: the id the kernel gives the next transmit timestamp.
    sends: u32,
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The ping socket's receive buffer (see where it is set).
const PING_RECV_BUFFER: usize = 4 << 20;

pub(crate) async fn run(args: PingArgs) -> anyhow::Result<u8> {
    if args.stamp {
        return stamp::run(args).await;
    }
    // --sport keeps one socket per source port open until its timeout passes.
    crate::platform::raise_nofile_limit();
    let family = args.family.family();
    let target = resolve_async(&args.target, family).await?;
    let key = crate::shared_key::load(&args.key)?;
    let size = args.size_for(key.is_some());
    let opts = probe_socket_options(&args, target, size)?;
    if key.is_some() && size < MIN_SEALED_LEN {
        bail!(
            "invalid size '{}': authenticated probes (with a key) need at least {MIN_SEALED_LEN} bytes",
            size
        );
    }
    if let Some(key) = &key {
        check_key(target, key).await?;
    }
    if size < udpreach_wire::probe::HEADER_LEN {
        let budget = udpreach_engine::reply_budget::DEFAULT_BUDGET_PPS;
        if args.interval < std::time::Duration::from_secs(1) / budget {
            // Short probes carry no header, so no withheld count comes back.
            eprintln!(
                "udpreach: warning: {} probes per second exceed the {budget}/s a udpreach server answers one address by default; probes under 64 bytes cannot tell withheld replies from loss (use -s 64 or more)",
                (1.0 / args.interval.as_secs_f64()).round()
            );
        }
    }
    // Without a key, when the first probe times out with no reply yet: find
    // out alongside the probes whether the server needs a key.
    let mut key_needed: Option<JoinHandle<Option<String>>> = None;
    let mut key_check_due = key.is_none();
    let token: u64 = rand::random();
    let mark = asked_tos(&args);
    if mark.is_some() && size < udpreach_wire::probe::HEADER_LEN {
        bail!(
            "invalid size '{size}': --dscp/--ecn need the udpreach header (-s {} or more) for the server to report what arrived",
            udpreach_wire::probe::HEADER_LEN
        );
    }
    let builder = PayloadBuilder {
        token,
        size,
        key: key.as_ref().map(|k| k.ping_key(token)),
        mark,
    };
    let mut marks = mark.map(MarkTally::new);
    let report = PingReport::new(
        args.output.format(),
        args.output.quiet,
        args.target.clone(),
        target,
    );
    let src_ip = route_source(target).unwrap_or_else(|| unspecified_for(&target, 0).ip());
    let (tx, mut rx) = mpsc::unbounded_channel();

    // Fixed mode: one socket for the whole run. --sport: one per probe.
    let sport_list: Option<Vec<u16>> = args.sport.as_ref().map(|s| s.iter().collect());
    if sport_list
        .as_ref()
        .is_some_and(|l| l.iter().any(|&p| p < 1024))
    {
        // Not a network verdict: the server's reflector-port policy.
        eprintln!(
            "udpreach: warning: a udpreach server does not answer source ports 1-1023 unless started with --echo-low-ports (and never 7, 19 or its own ports); no reply from those source ports says nothing about the network"
        );
    }
    let drops = Arc::new(LocalDrops::default());
    let mut fixed: Option<Sender> = None;
    if sport_list.is_none() {
        let sock = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
            .with_context(|| format!("cannot open a UDP socket towards {target}"))?;
        let local = SocketAddr::new(src_ip, sock.local_addr()?.port());
        let sock = Arc::new(sock);
        let reader = spawn_reader(sock.clone(), local, tx.clone(), drops.clone());
        fixed = Some(Sender {
            sock,
            local,
            reader,
            sends: 0,
        });
    }
    let count = match &sport_list {
        Some(l) => Some(args.count.map_or(l.len() as u64, |c| c.min(l.len() as u64))),
        None => args.count,
    };
    let cfg = PingConfig {
        count,
        interval: args.interval,
        timeout: args.timeout,
        deadline: args.deadline,
    };
    // Before the header: once it is printed, Ctrl+C gives the summary.
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    report.start(size, builder.has_header(), fixed.as_ref().map(|f| f.local));

    // Sub-millisecond intervals need a timer finer than tokio's.
    let timer = PreciseTimer::new().context("cannot create the send timer")?;
    let mut session = PingSession::new(cfg, Instant::now());
    let mut packet = Vec::with_capacity(size);
    // --sport bookkeeping: sockets kept open until their probe's timeout has passed.
    let mut sport_socks: HashMap<u64, Sender> = HashMap::new();
    let mut sport_expiry: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut skipped: Vec<u16> = Vec::new();
    let mut locals: HashMap<u64, SocketAddr> = HashMap::new();
    // Transmit timestamps name (socket, send number): which seq that was.
    let mut tx_ids: HashMap<(SocketAddr, u32), u64> = HashMap::new();
    let mut tx_id_order: VecDeque<(SocketAddr, u32)> = VecDeque::new();

    loop {
        let now = Instant::now();
        while let Some(seq) = session.poll_transmit(now) {
            builder.build(seq, realtime_ns(), &mut packet);
            let sender = match &sport_list {
                None => fixed.as_mut().expect("fixed socket"),
                Some(list) => {
                    let port = list[seq as usize];
                    match AsyncUdp::bind(unspecified_for(&target, port), &opts) {
                        Ok(sock) => {
                            let sock = Arc::new(sock);
                            let local = SocketAddr::new(src_ip, port);
                            let reader =
                                spawn_reader(sock.clone(), local, tx.clone(), drops.clone());
                            sport_socks.insert(
                                seq,
                                Sender {
                                    sock,
                                    local,
                                    reader,
                                    sends: 0,
                                },
                            );
                            sport_expiry.push_back((now + args.timeout * 2, seq));
                            sport_socks.get_mut(&seq).expect("just inserted")
                        }
                        Err(e) => {
                            session.handle_input(PingInput::SendFailed { seq }, now);
                            skipped.push(port);
                            report.event(ReportedEvent::Skipped(SkippedPort {
                                seq,
                                local_port: port,
                                error: e.to_string(),
                            }));
                            continue;
                        }
                    }
                }
            };
            let sent_at = Instant::now();
            let send_call_ns = realtime_ns();
            match sender.sock.send_to(&packet, target).await {
                Ok(_) => {
                    locals.insert(seq, sender.local);
                    let lp = sport_list.as_ref().map(|_| sender.local.port());
                    let sent = PingInput::Sent {
                        seq,
                        local_port: lp,
                        send_call_ns: Some(send_call_ns),
                    };
                    session.handle_input(sent, sent_at);
                    tx_ids.insert((sender.local, sender.sends), seq);
                    tx_id_order.push_back((sender.local, sender.sends));
                    if tx_id_order.len() > MAX_TX_IDS {
                        if let Some(old) = tx_id_order.pop_front() {
                            tx_ids.remove(&old);
                        }
                    }
                    sender.sends = sender.sends.wrapping_add(1);
                }
                Err(e) => {
                    session.handle_input(PingInput::SendFailed { seq }, sent_at);
                    report.event(ReportedEvent::SendError(SendFailure {
                        seq,
                        error: e.to_string(),
                    }));
                }
            }
        }
        // Replies already read must count before any timeout is judged
        // (after a stall of this task they are queued, not late).
        while let Ok(m) = rx.try_recv() {
            handle_incoming(
                &m,
                target,
                &builder,
                &mut session,
                &report,
                &mut tx_ids,
                &mut marks,
            );
        }
        session.handle_timeout(Instant::now());
        while let Some(ev) = session.poll_event() {
            if let PingEvent::Timeout { seq, .. } = ev {
                report.timeout(locals.get(&seq).copied(), seq, args.timeout);
                locals.remove(&seq);
                if key_check_due && session.summary().received == 0 {
                    key_check_due = false;
                    key_needed = Some(tokio::spawn(key_required(target)));
                }
            }
        }
        while let Some(&(at, seq)) = sport_expiry.front() {
            if at > Instant::now() {
                break;
            }
            sport_expiry.pop_front();
            sport_socks.remove(&seq);
        }
        if session.is_done() {
            break;
        }
        let wake = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + args.interval);
        let wake = sport_expiry.front().map_or(wake, |&(at, _)| wake.min(at));
        tokio::select! {
            biased;
            _ = sigint.recv() => { session.stop(Instant::now()); break; }
            _ = sigterm.recv() => { session.stop(Instant::now()); break; }
            msg = rx.recv() => {
                let Some(msg) = msg else { continue };
                handle_incoming(&msg, target, &builder, &mut session, &report, &mut tx_ids, &mut marks);
                // Drain what else is queued before going back to timers.
                while let Ok(m) = rx.try_recv() {
                    handle_incoming(&m, target, &builder, &mut session, &report, &mut tx_ids, &mut marks);
                }
            }
            _ = timer.sleep_until(wake) => {}
            res = async { key_needed.as_mut().expect("checked").await }, if key_needed.is_some() => {
                key_needed = None;
                if let Ok(Some(why)) = res {
                    session.handle_input(PingInput::LocalDrops { total: drops.total() }, Instant::now());
                    let so_far = session.summary();
                    if so_far.received + so_far.late == 0 {
                        bail!("{why}");
                    }
                }
            }
        }
    }
    // Drops after the last datagram read are in the socket table only.
    // (A --sport socket takes one reply: its count comes with the datagrams.)
    if let Some(f) = &fixed {
        drops.read(f.local, &f.sock);
    }
    session.handle_input(
        PingInput::LocalDrops {
            total: drops.total(),
        },
        Instant::now(),
    );
    let summary = session.summary();
    if let Some(rate) = session.fell_behind() {
        report.event(ReportedEvent::BehindSchedule(BehindSchedule {
            send_rate_pps: rate,
            interval_us: args.interval.as_micros() as u64,
        }));
    }
    if summary.received + summary.late == 0 {
        // The check may still be under way (a short run): give it a moment.
        if let Some(check) = key_needed.take() {
            if let Ok(Ok(Some(why))) = tokio::time::timeout(KEY_CHECK_GRACE, check).await {
                bail!("{why}");
            }
        }
    }
    report.summary(
        &summary,
        fixed.as_ref().map(|f| f.local),
        &skipped,
        marks.as_ref().map(MarkTally::summary),
    );
    Ok(if summary.received + summary.late > 0 {
        0
    } else {
        1
    })
}

fn handle_incoming(
    msg: &Incoming,
    target: SocketAddr,
    builder: &PayloadBuilder,
    session: &mut PingSession,
    report: &PingReport,
    tx_ids: &mut HashMap<(SocketAddr, u32), u64>,
    marks: &mut Option<MarkTally>,
) {
    let (from, ttl, tos, data) = match &msg.arrival {
        Arrival::Datagram {
            from,
            ttl,
            tos,
            data,
        } => (*from, *ttl, *tos, data),
        Arrival::Icmp(e) => return handle_icmp(msg, e, target, builder, session, report),
        Arrival::Sent { id } => {
            if let (Some(seq), Some(ns)) = (tx_ids.remove(&(msg.local, *id)), msg.kernel_ns) {
                let stamp = PingInput::TxTimestamp {
                    seq,
                    kernel_tx_ns: ns,
                };
                session.handle_input(stamp, msg.at);
            }
            return;
        }
    };
    // Only the target's address and port count as a reply.
    if canonical(from) != canonical(target) {
        return;
    }
    let (seq, stamp, seen_tos) = match builder.check(data) {
        Reply::Stamped {
            seq,
            stamp,
            seen_tos,
        } => (seq, Some(stamp), seen_tos),
        Reply::Plain { seq } => (seq, None, None),
        Reply::Corrupt { seq } => {
            report.event(ReportedEvent::Corrupt(IgnoredReply { seq }));
            return;
        }
        Reply::Unauthenticated { seq } => {
            report.event(ReportedEvent::Unauthenticated(IgnoredReply { seq }));
            return;
        }
        Reply::Foreign => return,
    };
    let reply = PingInput::Reply {
        seq,
        kernel_rx_ns: msg.kernel_ns,
        stamp,
    };
    session.handle_input(reply, msg.at);
    let bytes = data.len();
    // A reply's event comes out at once (none for a probe never sent).
    let reply_marks = marks.is_some().then(|| ReplyMarks::of(seen_tos, tos));
    while let Some(ev) = session.poll_event() {
        if let (PingEvent::Reply { .. }, Some(m)) = (&ev, marks.as_mut()) {
            m.record(seen_tos, tos);
        }
        report_reply(report, msg.local, ev, bytes, ttl, reply_marks);
    }
}

fn report_reply(
    report: &PingReport,
    local: SocketAddr,
    ev: PingEvent,
    bytes: usize,
    ttl: Option<u8>,
    marks: Option<ReplyMarks>,
) {
    match ev {
        PingEvent::Reply {
            seq, rtt, stamp, ..
        } => report.reply(
            local,
            seq,
            bytes,
            rtt,
            ttl,
            stamp.as_ref(),
            ReplyKind::Reply,
            marks,
        ),
        PingEvent::Late { seq, rtt } => {
            report.reply(local, seq, bytes, rtt, ttl, None, ReplyKind::Late, marks)
        }
        PingEvent::Duplicate { seq, rtt } => report.reply(
            local,
            seq,
            bytes,
            rtt,
            ttl,
            None,
            ReplyKind::Duplicate,
            marks,
        ),
        PingEvent::Timeout { .. } | PingEvent::IcmpError { .. } => {}
    }
}

/// An ICMP error for one of our probes: matched by the seq in the quoted
/// datagram, or, when too little was quoted, to the latest probe in flight.
fn handle_icmp(
    msg: &Incoming,
    e: &QueuedError,
    target: SocketAddr,
    builder: &PayloadBuilder,
    session: &mut PingSession,
    report: &PingReport,
) {
    // Our own kernel's refusals were already reported by the failed send.
    if e.error.origin == IcmpOrigin::Local {
        return;
    }
    if e.dest.is_some_and(|d| canonical(d) != canonical(target)) {
        return;
    }
    let error = PingInput::IcmpError {
        seq: builder.seq_of_quote(&e.quoted),
        report: e.error.report(),
    };
    session.handle_input(error, msg.at);
    while let Some(ev) = session.poll_event() {
        if let PingEvent::IcmpError {
            seq,
            after,
            report: r,
            ..
        } = ev
        {
            report.icmp_error(msg.local, seq, after, &r);
        }
    }
}
