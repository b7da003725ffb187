//! One test port opened for a session: answers only that session's probes
//! (so it is never an open reflector) and counts how many arrived.

use crate::platform::{realtime_ns, AsyncUdp, UdpOptions};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;
use udpreach_wire::probe::{make_reply_in_place, restamp_tx, ProbeHeader, ProbeKind, ServerStamp};

pub struct TestPort {
    pub arrivals: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

/// Why a port could not be opened.
pub enum OpenError {
    InUse,
    Denied,
    Failed(io::Error),
}

impl TestPort {
    pub fn open(addr: SocketAddr, token: u64) -> Result<TestPort, OpenError> {
        let sock = AsyncUdp::bind(addr, &UdpOptions::default()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => OpenError::InUse,
            io::ErrorKind::PermissionDenied => OpenError::Denied,
            _ => OpenError::Failed(e),
        })?;
        let arrivals = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(serve(sock, token, arrivals.clone()));
        Ok(TestPort { arrivals, task })
    }

    /// Closes the port; when this returns the socket is closed.
    pub async fn close(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    pub fn count(&self) -> u32 {
        self.arrivals.load(Ordering::Relaxed)
    }
}

async fn serve(sock: AsyncUdp, token: u64, arrivals: Arc<AtomicU32>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let meta = match sock.recv(&mut buf).await {
            Ok(m) => m,
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        let data = &mut buf[..meta.len];
        let Ok(h) = ProbeHeader::decode(data) else {
            continue;
        };
        if h.kind != ProbeKind::PortProbe || h.token != token {
            continue;
        }
        let n = arrivals.fetch_add(1, Ordering::Relaxed) + 1;
        let rx = realtime_ns();
        let stamp = ServerStamp {
            rx_ns: rx,
            tx_ns: rx,
            flow_count: n,
            seen_from: meta.from,
            seen_ttl: meta.ttl.unwrap_or(0),
        };
        if make_reply_in_place(data, &stamp).is_ok() {
            restamp_tx(data, realtime_ns());
            let _ = sock.try_send_to(data, meta.from);
        }
    }
}
