//! The NAT ports of one control session (capability "nat"): the server's
//! half of `udpreach nat`.
//!
//! * Two UDP ports on the address the control connection reached, and one on
//!   the server's `--alt-address` when it has one. Each answers a `NatProbe`
//!   from the session's client IP with a 64-byte `NatReply` (80 with a key)
//!   naming the address and port it saw, and remembers the flow (the probe's
//!   sequence number) with that address and the time of the reply.
//! * On `NatSend` the server sends `NatLate` ([`nat::COPIES`] copies) from
//!   one of its NAT ports to the address the flow was last seen from, `gap`
//!   after its last reply to the flow.
//!
//! Bounds (each with a test in tests/nat.rs or the wire crate): scheduled
//! datagrams go only to addresses whose IP is the control connection's peer
//! (probes from any other IP are ignored, so no flow can name a third
//! party); at most [`nat::MAX_SCHEDULED`] wait at once and
//! [`nat::MAX_SENDS_PER_SESSION`] per session; a gap is at most
//! [`nat::MAX_GAP_MS`]; every datagram draws on the per-destination reply
//! budget; replies are never longer than their probe; with a key, probes
//! must carry a valid tag and everything the ports send carries one. The
//! flow table holds at most [`nat::MAX_FLOWS_PER_SESSION`] entries.

use super::header_port::{self, PortEvents};
use super::lock_budget;
use super::test_port::SessionPorts;
use crate::platform::{canonical, realtime_ns, AsyncUdp, UdpOptions};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::PortResponder;
use udpreach_wire::auth::{DerivedKey, MIN_SEALED_LEN};
use udpreach_wire::control::{ControlMsg, ErrorCode};
use udpreach_wire::nat;
use udpreach_wire::probe::{ServerStamp, HEADER_LEN};

/// NAT probes are 64 or 80 bytes; anything longer is cut, fails the
/// header or tag check, and is dropped.
const RECV_BUFFER: usize = 2048;

#[derive(Clone, Copy)]
struct Seen {
    addr: SocketAddr,
    last_reply: Instant,
}

/// Flows the ports have seen, oldest forgotten first.
#[derive(Default)]
struct Flows {
    map: HashMap<u32, Seen>,
    order: VecDeque<u32>,
}

impl Flows {
    fn record(&mut self, flow: u32, seen: Seen) {
        if self.map.insert(flow, seen).is_none() {
            self.order.push_back(flow);
            while self.map.len() > nat::MAX_FLOWS_PER_SESSION {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every NAT port of a session needs to answer and send.
#[derive(Clone)]
struct Sender {
    client: IpAddr,
    token: u64,
    key: Option<DerivedKey>,
    budget: Arc<Mutex<ReplyBudget>>,
}

impl Sender {
    /// Seals (with a key) and sends `header` within the budgets.
    fn send(&self, sock: &AsyncUdp, header: [u8; HEADER_LEN], to: SocketAddr) -> bool {
        if canonical(to).ip() != self.client {
            return false;
        }
        let mut sealed = [0u8; MIN_SEALED_LEN];
        let datagram: &[u8] = match &self.key {
            Some(k) => {
                sealed[..HEADER_LEN].copy_from_slice(&header);
                if k.seal(&mut sealed).is_err() {
                    return false;
                }
                &sealed
            }
            None => &header,
        };
        if !lock_budget(&self.budget).allow(to.ip(), datagram.len(), Instant::now()) {
            return false;
        }
        sock.try_send_to(datagram, to).is_ok()
    }
}

pub(super) struct NatPorts {
    socks: Vec<Arc<AsyncUdp>>,
    /// The ports' local addresses, as the client names them in `NatSend`.
    addrs: Vec<SocketAddr>,
    flows: Arc<Mutex<Flows>>,
    receivers: Vec<JoinHandle<()>>,
    scheduled: Vec<JoinHandle<()>>,
    sends: u32,
    sender: Sender,
    fixed: usize,
    has_alt: bool,
}

impl Drop for NatPorts {
    fn drop(&mut self) {
        for t in self.receivers.iter().chain(&self.scheduled) {
            t.abort();
        }
    }
}

impl NatPorts {
    /// Binds two ports on `local` (ephemeral), the `fixed` ones on `local`,
    /// and one on `alt`, and starts answering the session's client `peer`.
    pub(super) fn open(
        local: IpAddr,
        fixed: &[u16],
        alt: Option<IpAddr>,
        peer: IpAddr,
        session: &SessionPorts,
    ) -> std::io::Result<NatPorts> {
        let sender = Sender {
            client: peer,
            token: session.token,
            key: session.key.clone(),
            budget: session.budget.clone(),
        };
        let flows = Arc::new(Mutex::new(Flows::default()));
        let mut socks = Vec::new();
        let mut addrs = Vec::new();
        let mut binds = vec![SocketAddr::new(local, 0), SocketAddr::new(local, 0)];
        binds.extend(fixed.iter().map(|&p| SocketAddr::new(local, p)));
        binds.extend(alt.map(|ip| SocketAddr::new(ip, 0)));
        for addr in binds {
            let sock = Arc::new(AsyncUdp::bind(addr, &UdpOptions::default())?);
            addrs.push(sock.local_addr()?);
            socks.push(sock);
        }
        let receivers = socks
            .iter()
            .map(|s| {
                let responder = PortResponder::nat_port(session.token, session.key.clone(), peer);
                tokio::spawn(header_port::serve(
                    s.clone(),
                    responder,
                    session.clone(),
                    RECV_BUFFER,
                    NatPortEvents(flows.clone()),
                ))
            })
            .collect();
        Ok(NatPorts {
            socks,
            addrs,
            flows,
            receivers,
            scheduled: Vec::new(),
            sends: 0,
            sender,
            fixed: fixed.len(),
            has_alt: alt.is_some(),
        })
    }

    /// The `NatOpened` answer.
    pub(super) fn opened(&self) -> ControlMsg {
        ControlMsg::NatOpened {
            ports: self.addrs[..2].iter().map(|a| a.port()).collect(),
            fixed: self.addrs[2..2 + self.fixed]
                .iter()
                .map(|a| a.port())
                .collect(),
            alt: self.has_alt.then(|| self.addrs[2 + self.fixed]),
            max_flows: nat::MAX_FLOWS_PER_SESSION as u32,
            max_scheduled: nat::MAX_SCHEDULED as u32,
            max_gap_ms: nat::MAX_GAP_MS,
        }
    }

    /// Handles one `NatSend`: checks it and schedules the datagrams.
    pub(super) fn schedule(&mut self, flow: u32, gap_ms: u32, from: SocketAddr) -> ControlMsg {
        let refuse = |message: String| ControlMsg::Error {
            code: ErrorCode::BadRequest,
            message: format!("nat_send: {message}"),
            fatal: false,
        };
        if let Err(e) = nat::check_gap(gap_ms) {
            return refuse(e);
        }
        // The ports are distinct, so the port names the socket.
        let Some(index) = self.addrs.iter().position(|a| a.port() == from.port()) else {
            return refuse(format!("{from} is not one of this session's NAT ports"));
        };
        let Some(seen) = lock(&self.flows).map.get(&flow).copied() else {
            return refuse(format!("flow {flow} has not been seen"));
        };
        self.scheduled.retain(|t| !t.is_finished());
        if self.scheduled.len() >= nat::MAX_SCHEDULED {
            return refuse(format!(
                "at most {} scheduled sends at once",
                nat::MAX_SCHEDULED
            ));
        }
        if self.sends >= nat::MAX_SENDS_PER_SESSION {
            return refuse(format!(
                "the session's {} scheduled sends are spent",
                nat::MAX_SENDS_PER_SESSION
            ));
        }
        self.sends += 1;
        let sock = self.socks[index].clone();
        let sender = self.sender.clone();
        let at = seen.last_reply + Duration::from_millis(u64::from(gap_ms));
        self.scheduled.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            for copy in 0..nat::COPIES {
                if copy > 0 {
                    tokio::time::sleep(Duration::from_millis(nat::COPY_SPACING_MS)).await;
                }
                let now = realtime_ns();
                let stamp = ServerStamp {
                    rx_ns: now,
                    tx_ns: now,
                    flow_count: copy,
                    seen_from: seen.addr,
                    seen_ttl: 0,
                    withheld: 0,
                };
                sender.send(&sock, nat::late(sender.token, flow, stamp), seen.addr);
            }
        }));
        ControlMsg::NatScheduled { flow }
    }
}

/// What a NAT port's receive loop records: the flow each answered probe
/// names, with the address it came from.
struct NatPortEvents(Arc<Mutex<Flows>>);

impl PortEvents for NatPortEvents {
    fn answered(&mut self, seq: u64, from: SocketAddr) {
        if let Ok(flow) = u32::try_from(seq) {
            let seen = Seen {
                addr: from,
                last_reply: Instant::now(),
            };
            lock(&self.0).record(flow, seen);
        }
    }
}
