//! The echo port: plain datagrams come back byte for byte; udpreach probes
//! come back stamped, the same size. What to answer is decided by the
//! engine's [`EchoResponder`] (policy, authentication, rate limits); this
//! loop only moves bytes. Nothing a client sends can stop it.

use crate::platform::{realtime_ns, AsyncUdp};
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};
use udpreach_engine::responder::{Answer, AnswerCounts, EchoPolicy, EchoResponder, Received};

/// How often the echo port logs what it answered and dropped (at info).
const STATS_EVERY: Duration = Duration::from_secs(60);

pub async fn serve(sock: AsyncUdp, local: SocketAddr, policy: EchoPolicy) {
    let mut buf = vec![0u8; 65536];
    let mut responder = EchoResponder::new(policy);
    let mut next_stats = Instant::now() + STATS_EVERY;
    loop {
        let meta = match sock.recv(&mut buf).await {
            Ok(m) => m,
            Err(e) => {
                // ICMP errors from earlier sends (ECONNREFUSED...) and the like: not fatal.
                tracing::debug!("echo recv: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let rx = Received {
            from: meta.from,
            ttl: meta.ttl,
            rx_ns: meta
                .kernel_rx
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or_else(realtime_ns, |d| d.as_nanos() as u64),
        };
        let now = Instant::now();
        let data = &mut buf[..meta.len];
        match responder.respond(data, &rx, realtime_ns(), now) {
            Answer::Reply { len } => {
                if let Err(e) = sock.try_send_to(&data[..len], meta.from) {
                    tracing::debug!("echo send to {}: {e}", meta.from);
                }
            }
            Answer::Drop(reason) => {
                tracing::trace!(from = %meta.from, len = meta.len, ?reason, "echo: dropped");
            }
        }
        if now >= next_stats {
            next_stats = now + STATS_EVERY;
            log_counts(local, &responder.counts.take(), responder.flow_count());
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
