//! The receive loop of a session port whose answers are header-sized
//! messages: the MTU port and the NAT ports. The decisions (client address,
//! token, tag, replay window, session rate, per-destination budget) are the
//! engine's [`PortResponder`]; this moves the bytes and tells the port
//! what was answered and which ICMP errors its own sends drew.

use super::lock_budget;
use super::test_port::SessionPorts;
use crate::platform::errqueue::QueuedError;
use crate::platform::{canonical, realtime_ns, AsyncUdp, Received};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use udpreach_engine::responder::{self, Answer, PortResponder};
use udpreach_wire::probe::ProbeHeader;

/// What a port learns from its traffic.
pub(super) trait PortEvents: Send + 'static {
    /// Probe `seq` from `from` was answered.
    fn answered(&mut self, seq: u64, from: SocketAddr);
    /// An error the port's own sends drew (ICMP, or the kernel's).
    fn error(&mut self, _e: QueuedError) {}
}

/// Answers the session's probes on `sock` with `responder` until the task
/// is aborted. `buf_len` bounds the datagram read (longer ones are cut and
/// then fail the checks).
pub(super) async fn serve(
    sock: Arc<AsyncUdp>,
    mut responder: PortResponder,
    session: SessionPorts,
    buf_len: usize,
    mut events: impl PortEvents,
) {
    let mut buf = vec![0u8; buf_len];
    loop {
        match sock.recv_any(&mut buf).await {
            Ok(Received::Datagram(meta)) => {
                let data = &mut buf[..meta.len.min(buf_len)];
                let rx = responder::Received {
                    from: canonical(meta.from),
                    ttl: meta.ttl,
                    rx_ns: realtime_ns(),
                    tos: meta.tos,
                };
                let answer = {
                    // A poisoned lock only means another port's task panicked
                    // mid-update of a token count; the bucket is still usable.
                    let mut rate = session.rate.lock().unwrap_or_else(|p| p.into_inner());
                    responder.respond(
                        data,
                        &rx,
                        realtime_ns(),
                        &mut rate,
                        &mut lock_budget(&session.budget),
                        Instant::now(),
                    )
                };
                match answer {
                    Answer::Reply { len } => {
                        if sock.try_send_to(&data[..len], meta.from).is_ok() {
                            if let Ok(h) = ProbeHeader::decode(&data[..len]) {
                                events.answered(h.seq, meta.from);
                            }
                        }
                    }
                    Answer::Drop(reason) => {
                        tracing::trace!(from = %meta.from, ?reason, "session port: dropped");
                    }
                }
            }
            Ok(Received::Error(e)) => events.error(e),
            Err(e) => {
                tracing::debug!("session port receive: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}
