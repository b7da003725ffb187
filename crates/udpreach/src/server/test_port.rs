//! One test port opened for a session: answers only that session's probes,
//! from that session's client address (so it is never an open reflector),
//! and counts how many arrived. The decisions (client address, token, tag,
//! replay window, session rate, reply budget) are the engine's
//! [`PortResponder`].
//!
//! Memory: a port is a socket, a small task and its responder (well under
//! 1 KiB); the receive buffer is the session's, shared by all its ports.

use super::lock_budget;
use crate::platform::{realtime_ns, AsyncUdp, UdpOptions};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;
use udpreach_engine::rate::TokenBucket;
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::{Answer, PortResponder, Received};
use udpreach_wire::auth::DerivedKey;

/// Probes are 64 or 80 bytes; anything longer is truncated, fails the
/// header or tag check, and is dropped.
const RECV_BUFFER: usize = 2048;

pub(super) struct TestPort {
    pub arrivals: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

/// Why a port could not be opened.
pub(super) enum OpenError {
    InUse,
    Denied,
    Failed(io::Error),
}

/// What every test port of one session shares.
#[derive(Clone)]
pub(super) struct SessionPorts {
    pub token: u64,
    pub key: Option<DerivedKey>,
    /// The session's probe-rate budget, shared by all its ports.
    pub rate: Arc<Mutex<TokenBucket>>,
    /// The address the control connection came from: the only one answered.
    pub client: IpAddr,
    /// The server's per-destination reply budget.
    pub budget: Arc<Mutex<ReplyBudget>>,
    /// One receive buffer for all the session's ports.
    pub buffer: Arc<Mutex<Vec<u8>>>,
}

impl SessionPorts {
    pub(super) fn new(
        token: u64,
        rate: TokenBucket,
        client: IpAddr,
        budget: Arc<Mutex<ReplyBudget>>,
    ) -> Self {
        SessionPorts {
            token,
            key: None,
            rate: Arc::new(Mutex::new(rate)),
            client,
            budget,
            buffer: Arc::new(Mutex::new(vec![0u8; RECV_BUFFER])),
        }
    }
}

impl TestPort {
    pub(super) fn open(addr: SocketAddr, session: &SessionPorts) -> Result<TestPort, OpenError> {
        let sock = AsyncUdp::bind(addr, &UdpOptions::default()).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => OpenError::InUse,
            io::ErrorKind::PermissionDenied => OpenError::Denied,
            _ => OpenError::Failed(e),
        })?;
        let arrivals = Arc::new(AtomicU32::new(0));
        let responder = PortResponder::new(session.token, session.key.clone(), session.client);
        let task = tokio::spawn(serve(sock, responder, session.clone(), arrivals.clone()));
        Ok(TestPort { arrivals, task })
    }

    /// Closes the ports; when this returns their sockets are closed. Every
    /// task is told first and awaited after, so a batch of closes costs one
    /// pass of the runtime rather than one wake-up per port in turn.
    pub(super) async fn close_all(ports: impl IntoIterator<Item = TestPort>) {
        let tasks: Vec<JoinHandle<()>> = ports.into_iter().map(|p| p.task).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    pub(super) fn count(&self) -> u32 {
        self.arrivals.load(Ordering::Relaxed)
    }
}

async fn serve(
    sock: AsyncUdp,
    mut responder: PortResponder,
    session: SessionPorts,
    arrivals: Arc<AtomicU32>,
) {
    loop {
        let handled = sock
            .recv_in(&session.buffer, |data, meta| {
                let rx = Received {
                    from: meta.from,
                    ttl: meta.ttl,
                    rx_ns: realtime_ns(),
                    tos: meta.tos,
                };
                let answer = {
                    // A poisoned lock only means another port's task panicked
                    // mid-update of a token count; the bucket is still usable.
                    let mut bucket = session.rate.lock().unwrap_or_else(|p| p.into_inner());
                    responder.respond(
                        data,
                        &rx,
                        realtime_ns(),
                        &mut bucket,
                        &mut lock_budget(&session.budget),
                        Instant::now(),
                    )
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
            })
            .await;
        if handled.is_err() {
            tokio::task::yield_now().await;
        }
    }
}
