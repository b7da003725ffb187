//! The seed tool's part-two server protocol, so its clients keep working:
//! test-bind the port, answer `"available": true` (or the object unchanged),
//! then echo the first datagram that arrives on the port within 3 s from
//! the address the TCP connection came from (nothing else is answered).
//!
//! Memory: a legacy port is a socket and a small task; every legacy port
//! of the server receives into one shared buffer.

use super::{lock_budget, ServerState};
use crate::platform::{canonical, AsyncUdp, UdpOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use udpreach_wire::legacy::{decode_request, encode_answer};

const LISTEN_FOR: Duration = Duration::from_secs(3);

/// The receive buffer of every legacy port (a datagram may be 64 KiB).
fn shared_buffer() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| Mutex::new(vec![0u8; 65536]))
}

pub async fn serve(mut stream: TcpStream, state: &Arc<ServerState>) -> anyhow::Result<()> {
    let ip = stream.local_addr()?.ip();
    let client = canonical(stream.peer_addr()?).ip();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((req, used)) = decode_request(&buf)? {
            buf.drain(..used);
            let Ok(req) = req else { continue }; // the seed server skipped bad objects too
            let mut available = false;
            if state.policy.check(req.port).is_ok() && state.reserve_port() {
                match AsyncUdp::bind(SocketAddr::new(ip, req.port), &UdpOptions::default()) {
                    Ok(sock) => {
                        available = true;
                        let st = state.clone();
                        tokio::spawn(async move {
                            echo_first(sock, client, &st).await;
                            st.release_ports(1);
                        });
                    }
                    Err(_) => state.release_ports(1),
                }
            }
            stream.write_all(&encode_answer(&req, available)).await?;
        }
        let n = timeout(state.limits.idle_timeout, stream.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
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
