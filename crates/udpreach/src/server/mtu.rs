//! The MTU port of one control session (capability "mtu"): the server's half
//! of `udpreach mtu`.
//!
//! * Upstream: the client sends `MtuProbe` datagrams of many sizes with DF
//!   set; the port answers each with a 64-byte `MtuAck` naming the size that
//!   arrived. An answer is never larger than its probe, so the port
//!   amplifies nothing.
//! * Downstream: on `MtuSend` the server sends `MtuProbe`s of the requested
//!   sizes, with or without DF, and reports what its kernel said about them:
//!   local refusals and the ICMP errors (frag-needed from a router on the
//!   way back) that came back within the linger time.
//!
//! Safety: downstream datagrams go only to the address the session's own
//! probes came from, and only when that address's IP is the control
//! connection's peer, whose TCP handshake showed it receives at that IP: the
//! server never sends them to a third party. Each request is bounded (sizes,
//! count, bytes: `udpreach_wire::mtu::check_send_request`), requests are one
//! at a time per session, and a session has a total byte budget. Acks are
//! the engine's [`PortResponder::mtu_port`] decisions: they draw on the
//! session's probe rate and the per-destination reply budget; in an
//! authenticated session probes must carry a valid tag and a sequence number
//! not seen before (a replay window: every MTU probe has its own), and acks
//! and downstream probes carry a tag.

use super::header_port::{self, PortEvents};
use super::lock_budget;
use super::test_port::SessionPorts;
use crate::platform::errqueue::{self, PmtuMode, QueuedError};
use crate::platform::{AsyncUdp, UdpOptions};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::PortResponder;
use udpreach_wire::auth::{DerivedKey, MIN_SEALED_LEN};
use udpreach_wire::control::{ControlMsg, ErrorCode, MtuSendResult};
use udpreach_wire::icmp::{IcmpOrigin, IcmpReason};
use udpreach_wire::mtu::{self, MAX_COUNT_PER_SIZE, MAX_LINGER_MS, MAX_SIZES_PER_SEND};
use udpreach_wire::probe::{ProbeHeader, ProbeKind};

/// Probes up to the largest datagram are read whole: the ack names the
/// length that arrived.
const RECV_BUFFER: usize = 65536;
/// Bytes one session may have the server send in MTU tests, in total.
const SESSION_BUDGET: u64 = 64 << 20;
/// ICMP errors kept between two `MtuSend`s (the rest are dropped).
const MAX_KEPT_ERRORS: usize = 256;

/// What the receive task shares with the session.
#[derive(Default)]
struct Shared {
    /// Where the session's probes come from: the only destination for `MtuSend`.
    client: Option<SocketAddr>,
    errors: Vec<QueuedError>,
}

pub(super) struct MtuPort {
    sock: Arc<AsyncUdp>,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    token: u64,
    key: Option<DerivedKey>,
    v6: bool,
    sent_bytes: u64,
    /// The server's per-destination reply budget: MTU probes draw on it
    /// (with or without a key), so what one address can make the server
    /// send is bounded across all its sessions.
    budget: Arc<Mutex<ReplyBudget>>,
}

impl Drop for MtuPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic elsewhere must not take the session down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MtuPort {
    /// Binds the port on `local` and starts answering the session's probes
    /// from `peer`'s IP.
    pub(super) fn open(
        local: SocketAddr,
        peer: IpAddr,
        session: &SessionPorts,
    ) -> std::io::Result<MtuPort> {
        let opts = UdpOptions {
            recv_errors: true,
            ..UdpOptions::default()
        };
        let sock = Arc::new(AsyncUdp::bind(local, &opts)?);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let responder = PortResponder::mtu_port(session.token, session.key.clone(), peer);
        let task = tokio::spawn(header_port::serve(
            sock.clone(),
            responder,
            session.clone(),
            RECV_BUFFER,
            MtuPortEvents(shared.clone()),
        ));
        Ok(MtuPort {
            sock,
            shared,
            task,
            token: session.token,
            key: session.key.clone(),
            v6: local.is_ipv6(),
            sent_bytes: 0,
            budget: session.budget.clone(),
        })
    }

    pub(super) fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The `MtuOpened` answer.
    pub(super) fn opened(&self, peer: IpAddr) -> ControlMsg {
        let route = errqueue::route_mtu(SocketAddr::new(peer, 9)).unwrap_or(0);
        let max_size = mtu::max_payload(self.v6);
        ControlMsg::MtuOpened {
            port: self.port(),
            mtu: route,
            max_size,
            max_count: MAX_COUNT_PER_SIZE,
            max_sizes: MAX_SIZES_PER_SEND,
        }
    }

    /// Handles one `MtuSend`: sends, lingers for errors, reports.
    pub(super) async fn send(
        &mut self,
        sizes: Vec<u32>,
        count: u32,
        df: bool,
        fragment_at: Option<u32>,
        linger_ms: u32,
    ) -> ControlMsg {
        let error = |code, message: String| ControlMsg::Error {
            code,
            message,
            fatal: false,
        };
        let max_size = mtu::max_payload(self.v6);
        if let Err(e) = mtu::check_send_request(&sizes, count, max_size) {
            return error(ErrorCode::BadRequest, format!("mtu_send: {e}"));
        }
        if self.key.is_some() && sizes.iter().any(|&s| (s as usize) < MIN_SEALED_LEN) {
            return error(
                ErrorCode::BadRequest,
                format!("mtu_send: authenticated probes need at least {MIN_SEALED_LEN} bytes"),
            );
        }
        let bytes: u64 = sizes.iter().map(|&s| u64::from(s) * u64::from(count)).sum();
        if self.sent_bytes + bytes > SESSION_BUDGET {
            return error(
                ErrorCode::BadRequest,
                format!("mtu_send: the session's {SESSION_BUDGET}-byte budget is spent"),
            );
        }
        let Some(client) = lock(&self.shared).client else {
            return error(
                ErrorCode::BadRequest,
                "mtu_send: no MTU probe from you has reached the MTU port yet".into(),
            );
        };
        let mode = if df {
            PmtuMode::Probe
        } else {
            PmtuMode::AllowFragments
        };
        if let Err(e) = self.sock.set_pmtu_mode(mode) {
            return error(ErrorCode::Unexpected, format!("mtu_send: {e}"));
        }
        if let Some(m) = fragment_at.filter(|_| !df) {
            let _ = self.sock.set_fragment_mtu(m.max(mtu::MIN_MTU_V6));
        }
        lock(&self.shared).errors.clear();
        self.sent_bytes += bytes;
        let mut results = Vec::with_capacity(sizes.len());
        let mut buf = vec![0u8; max_size as usize];
        for &size in &sizes {
            let datagram = &mut buf[..size as usize];
            ProbeHeader::request(ProbeKind::MtuProbe, self.token, u64::from(size))
                .encode(datagram)
                .expect("sizes are checked to hold the header");
            if let Some(k) = &self.key {
                k.seal(datagram).expect("sizes are checked to hold a tag");
            }
            let mut r = MtuSendResult {
                size,
                sent: 0,
                error: None,
                icmp: None,
            };
            for _ in 0..count {
                if !lock_budget(&self.budget).allow(client.ip(), datagram.len(), Instant::now()) {
                    r.error = Some("withheld: over the server's per-address reply budget".into());
                    continue;
                }
                match self.sock.send_to(datagram, client).await {
                    Ok(_) => r.sent += 1,
                    Err(e) => r.error = Some(e.to_string()),
                }
            }
            results.push(r);
        }
        tokio::time::sleep(Duration::from_millis(u64::from(
            linger_ms.min(MAX_LINGER_MS),
        )))
        .await;
        let errors = std::mem::take(&mut lock(&self.shared).errors);
        attribute_errors(&mut results, &errors, self.v6);
        // Back to DF for the next request and for the acks.
        let _ = self.sock.set_pmtu_mode(PmtuMode::Probe);
        ControlMsg::MtuSent { results }
    }
}

/// Gives each size the error its datagrams drew: by the size the quoted
/// header names, or, when too little was quoted, to every size the error's
/// MTU is too small for.
fn attribute_errors(results: &mut [MtuSendResult], errors: &[QueuedError], v6: bool) {
    for e in errors {
        let quoted_size = udpreach_wire::probe::parse_quoted(&e.quoted)
            .filter(|q| !q.short)
            .and_then(|q| u32::try_from(q.seq).ok());
        let hint = e.error.reason().mtu();
        for r in results.iter_mut().filter(|r| r.icmp.is_none()) {
            let matches = match (quoted_size, hint) {
                (Some(s), _) => s == r.size,
                (None, Some(h)) => mtu::packet_size(r.size, v6) > h,
                (None, None) => false,
            };
            let relevant = e.error.origin != IcmpOrigin::Local
                || matches!(e.error.reason(), IcmpReason::FragNeeded { .. });
            if matches && relevant {
                r.icmp = Some(e.error);
            }
        }
    }
}

/// What the MTU port's receive loop tells the session.
struct MtuPortEvents(Arc<Mutex<Shared>>);

impl PortEvents for MtuPortEvents {
    fn answered(&mut self, _seq: u64, from: SocketAddr) {
        lock(&self.0).client = Some(from);
    }

    fn error(&mut self, e: QueuedError) {
        let mut s = lock(&self.0);
        if s.errors.len() < MAX_KEPT_ERRORS {
            s.errors.push(e);
        }
    }
}
