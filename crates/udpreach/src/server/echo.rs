//! The echo port: plain datagrams come back byte for byte; udpreach probes
//! come back stamped, the same size. What to answer is decided by the
//! engine's [`EchoResponder`] (policy, authentication, rate limits); the
//! workers only move bytes. Nothing a client sends can stop them.
//!
//! Echo is the server's hot path, so it runs on plain threads with blocking
//! sockets (no readiness round trip per datagram), one per core, each on its
//! own SO_REUSEPORT socket; the kernel keeps a flow on one socket. Each
//! system call moves a batch: one `recvmmsg` takes what is queued, one
//! `sendmmsg` sends the replies. They share
//! one responder so per-flow counters and rate limits stay whole.

use super::lock_budget;
use crate::platform::batch::{RecvBatch, Reply, SendBatch, BATCH};
use crate::platform::{self, realtime_ns, UdpOptions};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::{Answer, AnswerCounts, EchoPolicy, EchoResponder, Received};

/// How often the echo port logs what it answered and dropped (at info).
const STATS_EVERY: Duration = Duration::from_secs(60);
/// Workers per echo address at most (more than the cores only adds contention).
const MAX_WORKERS: usize = 4;
/// Receive buffer of each worker's socket. With the default (208 KiB, about
/// 270 small datagrams) a worker the scheduler kept off the CPU for 30 ms
/// on a busy machine overflowed it at 10,000 probes/s, and the client
/// counted the server's own drops as upstream loss (lab: 111
/// `UdpRcvbufErrors` at the server, reported as 309 lost upstream for the
/// 200 the link emulator dropped). 4 MiB holds about half a second of that;
/// beyond `net.core.rmem_max` only with CAP_NET_ADMIN, else best effort.
const WORKER_RECV_BUFFER: usize = 4 << 20;

/// Binds `addr` for echo: one socket per worker. Fails, like a plain bind,
/// when anything already holds the address, even another SO_REUSEPORT user.
pub(super) fn bind(addr: SocketAddr) -> io::Result<Vec<UdpSocket>> {
    // The TOS each probe arrived with goes back in its reply (FLAG_TOS_SEEN).
    bind_workers(
        addr,
        UdpOptions {
            recv_tos: true,
            ..UdpOptions::default()
        },
    )
}

/// [`bind`] with more socket options (the STAMP reflector's, for one).
pub(super) fn bind_workers(addr: SocketAddr, extra: UdpOptions) -> io::Result<Vec<UdpSocket>> {
    // Preflight without SO_REUSEPORT: it is refused if the port is taken in
    // any way, so two servers never silently share a port.
    drop(platform::udp_socket(addr, &UdpOptions::default())?);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS);
    let opts = UdpOptions {
        reuse_port: true,
        recv_buffer: extra.recv_buffer.or(Some(WORKER_RECV_BUFFER)),
        ..extra
    };
    (0..workers)
        .map(|_| {
            let s = platform::udp_socket(addr, &opts)?;
            s.set_nonblocking(false)?;
            Ok(s)
        })
        .collect()
}

/// Starts one worker thread per socket; they run until the process exits.
pub(super) fn spawn(
    socks: Vec<UdpSocket>,
    local: SocketAddr,
    policy: EchoPolicy,
    budget: Arc<Mutex<ReplyBudget>>,
) -> io::Result<()> {
    let responder = Arc::new(Mutex::new(EchoResponder::new(policy)));
    for (i, sock) in socks.into_iter().enumerate() {
        let responder = responder.clone();
        let budget = budget.clone();
        std::thread::Builder::new()
            .name(format!("echo-{i}"))
            .spawn(move || serve(sock, local, &responder, &budget))?;
    }
    Ok(())
}

fn serve(
    sock: UdpSocket,
    local: SocketAddr,
    responder: &Mutex<EchoResponder>,
    budget: &Mutex<ReplyBudget>,
) {
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    // Per answered datagram of a batch: its index, reply length and TOS mark.
    let mut answers: Vec<(usize, usize, Option<u8>)> = Vec::with_capacity(BATCH);
    let mut next_stats = Instant::now() + STATS_EVERY;
    loop {
        let n = match rx.recv_wait(&sock) {
            Ok(n) => n,
            Err(e) => {
                // ICMP errors from earlier sends (ECONNREFUSED...) and the like: not fatal.
                tracing::debug!("echo recv: {e}");
                continue;
            }
        };
        // Clocks once per batch (each datagram keeps its kernel receive time).
        let now = Instant::now();
        let tx_ns = realtime_ns();
        answers.clear();
        // A poisoned lock means a panic elsewhere; the responder's state is
        // counters and limiters, still safe to use.
        // Lock order: responder, then budget (the budget is always innermost);
        // both once per batch.
        let mut r = responder.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = lock_budget(budget);
        for i in 0..n {
            let (meta, data) = rx.get_mut(i);
            let rx_meta = Received {
                from: meta.from,
                ttl: meta.ttl,
                rx_ns: meta.rx_unix_ns_or(tx_ns),
                tos: meta.tos,
            };
            // Read before the request becomes its reply: the TOS it asks the
            // reply to carry. Only this reply, to the asking address, is marked.
            let mark = udpreach_wire::probe::reply_tos_asked(data);
            match r.respond(data, &rx_meta, tx_ns, &mut b, now) {
                Answer::Reply { len } => answers.push((i, len, mark)),
                Answer::Drop(reason) => {
                    tracing::trace!(from = %meta.from, len = meta.len, ?reason, "echo: dropped");
                }
            }
        }
        drop(b);
        let stats = (now >= next_stats).then(|| (r.counts.take(), r.flow_count()));
        drop(r);
        // From the address each request was sent to (IP_PKTINFO).
        tx.send(
            &sock,
            answers.iter().map(|&(i, len, mark)| {
                let (meta, data) = rx.get(i);
                Reply {
                    data: &data[..len],
                    to: meta.from,
                    local: meta.local,
                    tos: mark,
                }
            }),
        );
        if let Some((counts, flows)) = stats {
            next_stats = now + STATS_EVERY;
            log_counts(local, &counts, flows);
        }
    }
}

fn log_counts(local: SocketAddr, c: &AnswerCounts, flows: usize) {
    if c.replies == 0 && c.dropped_total() == 0 {
        return;
    }
    let mut dropped: Vec<String> = c
        .dropped
        .iter()
        .map(|(r, n)| format!("{r:?}={n}"))
        .collect();
    dropped.sort();
    tracing::info!(
        echo = %local,
        replies = c.replies,
        dropped = c.dropped_total(),
        flows,
        "echo port, last {} s: dropped {}",
        STATS_EVERY.as_secs(),
        if dropped.is_empty() { "none".to_string() } else { dropped.join(" ") }
    );
}
