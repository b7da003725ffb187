//! The seed tool's part-two server protocol, so its clients keep working:
//! test-bind the port, answer `"available": true` (or the object unchanged),
//! then echo the first datagram that arrives on the port within 3 s from
//! the address the TCP connection came from (nothing else is answered).
//!
//! Memory: a legacy port is a socket and a small task; every legacy port
//! of the server receives into one shared buffer.

use super::{lock_budget, ServerState};
use crate::platform::{AsyncUdp, UdpOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
use udpreach_engine::admission::MessageDeadline;
use udpreach_wire::legacy::{decode_request, encode_answer};

const LISTEN_FOR: Duration = Duration::from_secs(3);
/// Ports one legacy session may have listening at once. The seed's client
/// tests one port at a time (request, answer, probe, up to 3 retries at
/// 0.5 s), so it never needs more than a few; a pipelining client is told
/// `"available": false` beyond this, rather than the server holding a buffer
/// and a descriptor per port for thousands of ports.
pub(super) const LEGACY_PORTS_PER_SESSION: usize = 64;

/// The receive buffer of every legacy port (a datagram may be 64 KiB).
fn shared_buffer() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| Mutex::new(vec![0u8; 65536]))
}

/// Serves one legacy connection from `peer`. Bounded like a udpreach
/// session: its ports count against the session cap, the source's share and
/// the global cap (each port held until its 3 s listen ends, also after the
/// connection closed); every JSON object must arrive whole within the
/// message deadline, and answers must be taken within it.
pub(super) async fn serve(
    mut stream: TcpStream,
    state: &Arc<ServerState>,
    peer: IpAddr,
) -> anyhow::Result<()> {
    let ip = stream.local_addr()?.ip();
    let limits = &state.limits;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut clock =
        MessageDeadline::new(limits.idle_timeout, limits.message_timeout, Instant::now());
    // This session's ports still listening.
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        while let Some((req, used)) = decode_request(&buf)? {
            buf.drain(..used);
            clock.on_consumed(buf.len(), Instant::now());
            let Ok(req) = req else { continue }; // the seed server skipped bad objects too
            let mut available = false;
            if state.policy.check(req.port).is_ok()
                && live.load(Ordering::Acquire)
                    < limits.max_ports_per_session.min(LEGACY_PORTS_PER_SESSION)
                && state.reserve_port(peer)
            {
                match AsyncUdp::bind(SocketAddr::new(ip, req.port), &UdpOptions::default()) {
                    Ok(sock) => {
                        available = true;
                        live.fetch_add(1, Ordering::AcqRel);
                        let st = state.clone();
                        let live = live.clone();
                        tokio::spawn(async move {
                            echo_first(sock, peer, &st).await;
                            st.release_ports(peer, 1);
                            if live.fetch_sub(1, Ordering::AcqRel) == 1 {
                                // This session's last listening port: give its buffers back.
                                crate::platform::release_free_memory();
                            }
                        });
                    }
                    Err(_) => state.release_ports(peer, 1),
                }
            }
            timeout(
                limits.message_timeout,
                stream.write_all(&encode_answer(&req, available)),
            )
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "answer not taken within {} s",
                    limits.message_timeout.as_secs_f64()
                )
            })??;
        }
        let n = timeout_at(clock.deadline().into(), stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow::anyhow!("{}", clock.describe()))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        clock.on_received(buf.len(), Instant::now());
    }
}

/// One reply of the same size at most, per port opened over TCP, to the
/// connection's own address only and within the reply budget: the seed's
/// behaviour, bounded. (Legacy sessions are refused when the server has a key.)
async fn echo_first(sock: AsyncUdp, client: IpAddr, state: &ServerState) {
    let max_datagram = state.limits.max_datagram;
    let deadline = tokio::time::Instant::now() + LISTEN_FOR;
    loop {
        let received = tokio::time::timeout_at(
            deadline,
            sock.recv_in(shared_buffer(), |data, meta| {
                if meta.from.ip() != client
                    || state.source_ports.refused(meta.from.port())
                    || data.len() > max_datagram
                {
                    // Not the session's client: ignored, keep listening.
                    return false;
                }
                if lock_budget(&state.budget).allow(client, data.len(), Instant::now()) {
                    let _ = sock.try_send_to(data, meta.from);
                }
                true
            }),
        )
        .await;
        match received {
            Ok(Ok(false)) => continue,
            _ => return,
        }
    }
}
