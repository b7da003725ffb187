//! The STAMP reflector (`server --stamp`): answers RFC 8762 / 8972 test
//! packets from any STAMP sender. What to answer is decided by the engine's
//! [`StampReflector`] (source ports, size, the per-destination reply budget,
//! authentication with the server's key, stateful numbering); the workers
//! only move bytes, on blocking sockets like the echo port, a batch of
//! datagrams per system call (`recvmmsg`, `sendmmsg`).

use super::{echo, lock_budget};
use crate::platform::batch::{RecvBatch, Reply, SendBatch, BATCH};
use crate::platform::{realtime_ns, UdpOptions};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::stamp::{ReflectorAnswer, ReflectorPolicy, ReflectorRequest, StampReflector};

/// How often the reflector logs what it answered and dropped (at info).
const STATS_EVERY: Duration = Duration::from_secs(60);

/// Binds the reflector's address: one socket per worker, each reporting
/// the TTL and TOS its datagrams arrived with.
pub(super) fn bind(addr: SocketAddr) -> io::Result<Vec<UdpSocket>> {
    echo::bind_workers(
        addr,
        UdpOptions {
            recv_tos: true,
            ..UdpOptions::default()
        },
    )
}

/// Starts the worker threads; they run until the process exits.
pub(super) fn spawn(
    socks: Vec<UdpSocket>,
    local: SocketAddr,
    policy: ReflectorPolicy,
    budget: Arc<Mutex<ReplyBudget>>,
) -> io::Result<()> {
    let reflector = Arc::new(Mutex::new(StampReflector::new(policy)));
    for (i, sock) in socks.into_iter().enumerate() {
        let reflector = reflector.clone();
        let budget = budget.clone();
        std::thread::Builder::new()
            .name(format!("stamp-{i}"))
            .spawn(move || serve(sock, local, &reflector, &budget))?;
    }
    Ok(())
}

fn serve(
    sock: UdpSocket,
    local: SocketAddr,
    reflector: &Mutex<StampReflector>,
    budget: &Mutex<ReplyBudget>,
) {
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    // One reply buffer per datagram of a batch, kept from batch to batch.
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
    let mut answers: Vec<(usize, ReflectorAnswer)> = Vec::with_capacity(BATCH);
    let mut next_stats = Instant::now() + STATS_EVERY;
    loop {
        let n = match rx.recv_wait(&sock) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("stamp recv: {e}");
                continue;
            }
        };
        // The clocks are read once per batch: every reply of a batch leaves
        // in the one `sendmmsg` below, so one transmit time serves them all
        // (each datagram keeps its own kernel receive time).
        let now = Instant::now();
        let tx_ns = realtime_ns();
        answers.clear();
        // Lock order: reflector, then budget (as for echo); both once per batch.
        let mut r = reflector.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = lock_budget(budget);
        for (i, out) in outs.iter_mut().enumerate().take(n) {
            let (meta, data) = rx.get(i);
            let req = ReflectorRequest {
                from: meta.from,
                ttl: meta.ttl,
                tos: meta.tos,
                rx_ns: meta.rx_unix_ns_or(tx_ns),
            };
            match r.respond(data, &req, tx_ns, &mut b, now, out) {
                Ok(a) => answers.push((i, a)),
                Err(why) => {
                    tracing::trace!(from = %meta.from, len = meta.len, ?why, "stamp: dropped");
                }
            }
        }
        drop(b);
        let stats = (now >= next_stats).then(|| {
            let dropped = std::mem::take(&mut r.dropped);
            (std::mem::take(&mut r.replies), dropped, r.sessions())
        });
        drop(r);
        tx.send(
            &sock,
            answers.iter().map(|&(i, a)| {
                let (meta, _) = rx.get(i);
                Reply {
                    data: &outs[i][..a.len],
                    to: meta.from,
                    local: meta.local,
                    tos: a.tos,
                }
            }),
        );
        if let Some((replies, dropped, sessions)) = stats {
            next_stats = now + STATS_EVERY;
            if replies > 0 || !dropped.is_empty() {
                let mut d: Vec<String> =
                    dropped.iter().map(|(k, n)| format!("{k:?}={n}")).collect();
                d.sort();
                tracing::info!(
                    stamp = %local,
                    replies,
                    sessions,
                    "stamp reflector, last {} s: dropped {}",
                    STATS_EVERY.as_secs(),
                    if d.is_empty() { "none".to_string() } else { d.join(" ") }
                );
            }
        }
    }
}
