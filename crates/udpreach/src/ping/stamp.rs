//! `udpreach ping --stamp`: the I/O driver around the STAMP session-sender
//! engine ([`udpreach_engine::stamp::StampSender`]), in the engine loop of
//! [`udpreach_engine::Engine`]. Same output and exit codes as ping.

use super::{spawn_reader, Arrival, Incoming, LocalDrops, MAX_TX_IDS};
use crate::cli::PingArgs;
use crate::platform::{canonical, realtime_ns, AsyncUdp, PreciseTimer};
use crate::report::documents::{
    BehindSchedule, IgnoredReply, PingEvent as ReportedEvent, SendFailure,
};
use crate::report::ping::{PingReport, ReplyKind};
use crate::target::{resolve, unspecified_for};
use anyhow::Context;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use udpreach_engine::ping::{PingConfig, PingEvent};
use udpreach_engine::stamp::{padded_len, StampEvent, StampInput, StampSender, StampSenderConfig};
use udpreach_engine::Engine;
use udpreach_wire::icmp::IcmpOrigin;
use udpreach_wire::stamp::{Mode, TimestampFormat};

pub(super) async fn run(args: PingArgs) -> anyhow::Result<u8> {
    let family = args.family.family();
    let input = args.target.clone();
    let target =
        tokio::task::spawn_blocking(move || resolve(&input, udpreach_wire::stamp::PORT, family))
            .await??;
    let key = crate::shared_key::load(&args.key)?;
    let tos = super::asked_tos(&args);
    let keyed = key.is_some();
    let size = match args.size {
        None => udpreach_engine::stamp::min_len(keyed, tos.is_some()),
        Some(s) => padded_len(keyed, tos.is_some(), s).map_err(|min| {
            anyhow::anyhow!(
                "invalid size '{s}': STAMP packets{} need {min} bytes, or at least {} (with a padding TLV)",
                match (keyed, tos.is_some()) {
                    (true, true) => " in authenticated mode with --dscp",
                    (true, false) => " in authenticated mode",
                    (false, true) => " with --dscp",
                    (false, false) => "",
                },
                min + udpreach_wire::stamp::TLV_HEADER_LEN
            )
        })?,
    };
    let opts = super::probe_socket_options(&args, target, size)?;
    let sock = AsyncUdp::bind(unspecified_for(&target, 0), &opts)
        .with_context(|| format!("cannot open a UDP socket towards {target}"))?;
    let src_ip = super::route_source(target).unwrap_or_else(|| unspecified_for(&target, 0).ip());
    let local = SocketAddr::new(src_ip, sock.local_addr()?.port());
    let sock = Arc::new(sock);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let drops = Arc::new(LocalDrops::default());
    let reader = spawn_reader(sock.clone(), local, tx, drops.clone());
    let _reader = ReaderGuard(reader);

    let report = PingReport::new(
        args.output.format(),
        args.output.quiet,
        args.target.clone(),
        target,
    );
    let start = Instant::now();
    let cfg = StampSenderConfig {
        ping: PingConfig {
            count: args.count,
            interval: args.interval,
            timeout: args.timeout,
            deadline: args.deadline,
        },
        key: key.as_ref().map(|k| k.stamp_hmac_key().to_vec()),
        ssid: args.ssid.unwrap_or_else(|| rand::random::<u16>().max(1)),
        format: if args.stamp_ptp {
            TimestampFormat::Ptp
        } else {
            TimestampFormat::Ntp
        },
        synchronized: args.stamp_clock_synchronized,
        class_of_service: tos,
        size,
        wall_clock_ns: realtime_ns(),
    };
    let mut engine = StampSender::new(cfg, start);
    let mode = if keyed {
        Mode::Authenticated
    } else {
        Mode::Open
    };
    report.start_stamp(
        size,
        if keyed { "authenticated" } else { "open" },
        Some(local),
    );

    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let timer = PreciseTimer::new().context("cannot create the send timer")?;
    let mut sends: u32 = 0;
    let mut tx_ids: HashMap<u32, u64> = HashMap::new();
    let mut tx_order: VecDeque<u32> = VecDeque::new();
    let mut last_ttl: HashMap<u64, Option<u8>> = HashMap::new();
    let timeout = args.timeout;

    loop {
        while let Some(t) = engine.poll_transmit(Instant::now()) {
            engine.handle_input(
                StampInput::SendCall {
                    seq: t.seq,
                    realtime_ns: realtime_ns(),
                },
                Instant::now(),
            );
            match sock.send_to(&t.data, target).await {
                Ok(_) => {
                    tx_ids.insert(sends, t.seq);
                    tx_order.push_back(sends);
                    if tx_order.len() > MAX_TX_IDS {
                        if let Some(old) = tx_order.pop_front() {
                            tx_ids.remove(&old);
                        }
                    }
                    sends = sends.wrapping_add(1);
                }
                Err(e) => {
                    engine.handle_input(StampInput::SendFailed { seq: t.seq }, Instant::now());
                    report.event(ReportedEvent::SendError(SendFailure {
                        seq: t.seq,
                        error: e.to_string(),
                    }));
                }
            }
        }
        drain(&mut engine, &report, local, timeout, &mut last_ttl);
        if engine.is_done() {
            break;
        }
        let wake = engine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + args.interval);
        tokio::select! {
            biased;
            _ = sigint.recv() => { engine.handle_input(StampInput::Stop, Instant::now()); break; }
            _ = sigterm.recv() => { engine.handle_input(StampInput::Stop, Instant::now()); break; }
            msg = rx.recv() => {
                let Some(msg) = msg else { continue };
                feed(&mut engine, mode, msg, target, &mut tx_ids, &mut last_ttl);
                while let Ok(m) = rx.try_recv() {
                    feed(&mut engine, mode, m, target, &mut tx_ids, &mut last_ttl);
                }
            }
            _ = timer.sleep_until(wake) => engine.handle_timeout(Instant::now()),
        }
    }
    drain(&mut engine, &report, local, timeout, &mut last_ttl);
    if let Some(rate) = engine.fell_behind() {
        report.event(ReportedEvent::BehindSchedule(BehindSchedule {
            send_rate_pps: rate,
            interval_us: args.interval.as_micros() as u64,
        }));
    }
    drops.read(local, &sock);
    let total = drops.total();
    engine.handle_input(StampInput::LocalDrops { total }, Instant::now());
    let summary = engine.summary();
    report.summary_stamp(&summary, Some(local), engine.stamp_summary());
    Ok(if summary.received + summary.late > 0 {
        0
    } else {
        1
    })
}

struct ReaderGuard(tokio::task::JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns what the socket delivered into the engine's inputs.
fn feed(
    engine: &mut StampSender,
    mode: Mode,
    msg: Incoming,
    target: SocketAddr,
    tx_ids: &mut HashMap<u32, u64>,
    last_ttl: &mut HashMap<u64, Option<u8>>,
) {
    match msg.arrival {
        Arrival::Datagram {
            from,
            ttl,
            tos,
            data,
        } => {
            // Only the reflector's address and port count as a reply.
            if canonical(from) != canonical(target) {
                return;
            }
            // The reply's own TTL, for its line (keyed by the seq it names).
            if let Ok(r) = udpreach_wire::stamp::ReflectorPacket::decode(&data, mode) {
                let seq = u64::from(r.sender_seq.wrapping_sub(udpreach_engine::stamp::FIRST_SEQ));
                if last_ttl.len() < 1 << 16 {
                    last_ttl.insert(seq, ttl);
                }
            }
            engine.handle_input(
                StampInput::Reply {
                    data,
                    kernel_rx_ns: msg.kernel_ns,
                    tos,
                },
                msg.at,
            );
        }
        Arrival::Icmp(e) => {
            if e.error.origin == IcmpOrigin::Local
                || e.dest.is_some_and(|d| canonical(d) != canonical(target))
            {
                return;
            }
            engine.handle_input(
                StampInput::Icmp {
                    seq: None,
                    report: e.error.report(),
                },
                msg.at,
            );
        }
        Arrival::Sent { id } => {
            if let (Some(seq), Some(ns)) = (tx_ids.remove(&id), msg.kernel_ns) {
                engine.handle_input(StampInput::TxTimestamp { seq, kernel_ns: ns }, msg.at);
            }
        }
    }
}

/// Reports every event the engine has queued.
fn drain(
    engine: &mut StampSender,
    report: &PingReport,
    local: SocketAddr,
    timeout: std::time::Duration,
    last_ttl: &mut HashMap<u64, Option<u8>>,
) {
    while let Some(ev) = engine.poll_event() {
        match ev {
            StampEvent::Reply { event, info } => {
                let bytes = report_bytes(engine);
                let (seq, rtt, kind) = match event {
                    PingEvent::Reply { seq, rtt, .. } => (seq, rtt, ReplyKind::Reply),
                    PingEvent::Late { seq, rtt } => (seq, rtt, ReplyKind::Late),
                    PingEvent::Duplicate { seq, rtt } => (seq, rtt, ReplyKind::Duplicate),
                    _ => continue,
                };
                let ttl = last_ttl.remove(&(seq & 0xffff_ffff)).flatten();
                report.stamp_reply(local, seq, bytes, rtt, ttl, info, kind);
            }
            StampEvent::Ping(PingEvent::Timeout { seq, .. }) => {
                report.timeout(Some(local), seq, timeout)
            }
            StampEvent::Ping(PingEvent::IcmpError {
                seq,
                after,
                report: r,
                ..
            }) => report.icmp_error(local, seq, after, &r),
            StampEvent::Ping(_) => {}
            StampEvent::Ignored {
                seq,
                unauthenticated: true,
            } => report.event(ReportedEvent::Unauthenticated(IgnoredReply {
                seq: seq.unwrap_or(0),
            })),
            StampEvent::Ignored { seq, .. } => {
                tracing::debug!("ignored a datagram from the reflector (seq {seq:?})");
            }
        }
    }
}

fn report_bytes(engine: &StampSender) -> usize {
    engine.packet_len()
}
