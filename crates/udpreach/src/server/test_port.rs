//! One test port opened for a session: answers only that session's probes
//! (so it is never an open reflector) and counts how many arrived. The
//! decisions (token, tag, replay window, session rate) are the engine's
//! [`PortResponder`].

use crate::platform::{realtime_ns, AsyncUdp, UdpOptions};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;
use udpreach_engine::rate::TokenBucket;
use udpreach_engine::responder::{Answer, PortResponder, Received};
use udpreach_wire::auth::DerivedKey;

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

/// What every test port of one session shares.
#[derive(Clone)]
pub struct SessionPorts {
    pub token: u64,
    pub key: Option<DerivedKey>,
    /// The session's probe-rate budget, shared by all its ports.
    pub rate: Arc<Mutex<TokenBucket>>,
}

impl TestPort {
    pub fn open(addr: SocketAddr, session: &SessionPorts) -> Result<TestPort, OpenError> {
        let sock = AsyncUdp::bind(addr, &UdpOptions::default()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => OpenError::InUse,
            io::ErrorKind::PermissionDenied => OpenError::Denied,
            _ => OpenError::Failed(e),
        })?;
        let arrivals = Arc::new(AtomicU32::new(0));
        let responder = PortResponder::new(session.token, session.key.clone());
        let task = tokio::spawn(serve(
            sock,
            responder,
            session.rate.clone(),
            arrivals.clone(),
        ));
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

async fn serve(
    sock: AsyncUdp,
    mut responder: PortResponder,
    rate: Arc<Mutex<TokenBucket>>,
    arrivals: Arc<AtomicU32>,
) {
    // Probes are 64 or 80 bytes; anything longer is truncated, fails the
    // header or tag check, and is dropped.
    let mut buf = vec![0u8; 2048];
    loop {
        let meta = match sock.recv(&mut buf).await {
            Ok(m) => m,
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        let rx = Received {
            from: meta.from,
            ttl: meta.ttl,
            rx_ns: realtime_ns(),
        };
        let data = &mut buf[..meta.len];
        let answer = {
            // A poisoned lock only means another port's task panicked mid-update
            // of a token count; the bucket is still usable.
            let mut bucket = rate.lock().unwrap_or_else(|p| p.into_inner());
            responder.respond(data, &rx, realtime_ns(), &mut bucket, Instant::now())
        };
        arrivals.store(responder.arrivals(), Ordering::Relaxed);
        match answer {
            Answer::Reply { len } => {
                let _ = sock.try_send_to(&data[..len], meta.from);
            }
            Answer::Drop(reason) => {
                tracing::trace!(from = %meta.from, ?reason, "test port: dropped");
            }
        }
    }
}
