//! The seed tool's part-two server protocol, so its clients keep working:
//! test-bind the port, answer `"available": true` (or the object unchanged),
//! then echo the first datagram that arrives on the port within 3 s.

use super::ServerState;
use crate::platform::{AsyncUdp, UdpOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use udpreach_wire::legacy::{decode_request, encode_answer};

const LISTEN_FOR: Duration = Duration::from_secs(3);

pub async fn serve(mut stream: TcpStream, state: &Arc<ServerState>) -> anyhow::Result<()> {
    let ip = stream.local_addr()?.ip();
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
                        let max_datagram = state.limits.max_datagram;
                        tokio::spawn(async move {
                            echo_first(sock, max_datagram).await;
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

/// One reply of the same size at most, per port opened over TCP: the seed's
/// behaviour, bounded. (Legacy sessions are refused when the server has a key.)
async fn echo_first(sock: AsyncUdp, max_datagram: usize) {
    let mut buf = vec![0u8; 65536];
    if let Ok(Ok(meta)) = timeout(LISTEN_FOR, sock.recv(&mut buf)).await {
        if meta.len <= max_datagram {
            let _ = sock.send_to(&buf[..meta.len], meta.from).await;
        }
    }
}
