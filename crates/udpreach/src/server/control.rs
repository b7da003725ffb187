//! Control sessions: the udpreach protocol (after the `UDPREACH` preamble),
//! or the seed's legacy JSON (first byte `{`). One task per connection; when
//! the connection ends or goes idle, every port it opened closes.

use super::mtu::MtuPort;
use super::nat::NatPorts;
use super::test_port::{OpenError, SessionPorts, TestPort};
use super::trace::TraceSession;
use super::{legacy, lock_budget, ServerState};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{timeout, timeout_at};
use udpreach_engine::admission::{HandshakeId, MessageDeadline, SessionRefusal};
use udpreach_engine::handshake::{Handshake, Step, WelcomeTerms};
use udpreach_engine::rate::TokenBucket;
use udpreach_wire::control::{
    check_preamble, decode_frame_limited, ControlError, ControlMsg, ErrorCode, MAX_FRAME,
    MAX_HANDSHAKE_FRAME, MAX_PORTS_PER_REQUEST, PREAMBLE,
};

pub(super) async fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream, peer, state.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("control accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A pending handshake's slot; freed when dropped (also when evicted).
struct HandshakeGuard {
    state: Arc<ServerState>,
    id: HandshakeId,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.state.admission().end_handshake(self.id);
    }
}

/// A session slot (counted for the peer's source); freed when dropped.
pub(super) struct SessionSlot {
    state: Arc<ServerState>,
    peer: IpAddr,
}

impl SessionSlot {
    /// Takes a slot for `peer`, or says why not ("server busy (N sessions)").
    pub(super) fn take(state: &Arc<ServerState>, peer: IpAddr) -> Result<Self, SessionRefusal> {
        state.admission().open_session(peer)?;
        Ok(SessionSlot {
            state: state.clone(),
            peer,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.state.admission().close_session(self.peer);
    }
}

/// What a refused handshake is told before the connection closes. Never
/// blocks: a peer that reads nothing gets nothing.
const SLOTS_FULL: &str = "server refused: handshake slots full";

fn refuse_handshake(stream: &TcpStream, with_preamble: bool, message: &str) {
    let mut out = if with_preamble {
        PREAMBLE.to_vec()
    } else {
        Vec::new()
    };
    out.extend(
        ControlMsg::Error {
            code: ErrorCode::HandshakeSlotsFull,
            message: message.to_string(),
            fatal: true,
        }
        .to_frame(),
    );
    let _ = stream.try_write(&out);
    // Read what the client already sent, so the close is a FIN, not a
    // reset that could discard our answer before the client reads it.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    // Connections still in their handshake are capped and timed separately
    // from sessions: garbage or stalled connections never hold a session
    // slot, and they cost a descriptor for at most `handshake_timeout`. A
    // source holds at most its share of the slots: over it, or when all are
    // taken, the oldest pending handshake (of the source, or of all) is
    // evicted, so stalled connections cannot lock anyone out.
    let ip = crate::platform::canonical(peer).ip();
    let (evict, mut evicted) = oneshot::channel();
    let slot = state.admission().begin_handshake(ip, evict);
    if let Some(old) = slot.evicted {
        let _ = old.send(());
    }
    let guard = HandshakeGuard {
        state: state.clone(),
        id: slot.id,
    };
    let hs_timeout = state.limits.handshake_timeout;
    let mut first = [0u8; 1];
    tokio::select! {
        r = timeout(hs_timeout, stream.peek(&mut first)) => match r {
            Ok(Ok(1)) => {}
            _ => return,
        },
        Ok(()) = &mut evicted => {
            tracing::debug!(%peer, "control: pending handshake evicted (slots full)");
            refuse_handshake(&stream, true, SLOTS_FULL);
            return;
        }
    }
    if first[0] == b'{' {
        // The seed's protocol has no authentication and opens ports that echo
        // to anyone for 3 s: with a key it is refused, with no opt-out.
        if state.key.is_some() {
            tracing::info!(%peer, "legacy JSON session refused: this server requires authentication");
            return;
        }
        let permit = match SessionSlot::take(&state, ip) {
            Ok(p) => p,
            Err(why) => {
                tracing::info!(%peer, "legacy JSON session refused: {why}");
                return;
            }
        };
        drop(guard);
        if let Err(e) = legacy::serve(stream, &state, ip).await {
            tracing::info!(%peer, "legacy session ended: {e}");
        }
        drop(permit);
        return;
    }
    let mut session = Session::new(stream, state.clone(), ip);
    let admitted = tokio::select! {
        r = timeout(hs_timeout, session.handshake()) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "handshake not completed within {} s",
                hs_timeout.as_secs_f64()
            )),
        },
        Ok(()) = &mut evicted => {
            refuse_handshake(&session.stream, !session.preamble_sent, SLOTS_FULL);
            Err(anyhow::anyhow!("pending handshake evicted (slots full)"))
        }
    };
    drop(guard);
    let result = match admitted {
        Ok(permit) => {
            tracing::info!(%peer, authenticated = session.ports_ctx.key.is_some(), "control session started");
            // The client asked over TCP: its address gets the session rate.
            let client = session.ports_ctx.client;
            lock_budget(&state.budget).session_opened(client, Instant::now());
            let r = session.serve().await;
            session.close_all().await;
            lock_budget(&state.budget).session_closed(client);
            drop(permit);
            r
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(%peer, ports_opened = session.opened_total, "control session ended")
        }
        Err(e) => {
            tracing::info!(%peer, ports_opened = session.opened_total, "control session ended: {e}")
        }
    }
}

struct Session {
    stream: TcpStream,
    state: Arc<ServerState>,
    /// The client's address (its source, for the shares).
    peer: IpAddr,
    buf: Vec<u8>,
    /// When the next byte is due: a whole message, or the idle timeout.
    clock: MessageDeadline,
    preamble_sent: bool,
    ports: HashMap<u16, TestPort>,
    ports_ctx: SessionPorts,
    opened_total: usize,
    /// The session's MTU port, once asked for (closed with the session).
    mtu: Option<MtuPort>,
    /// The session's NAT ports, once asked for (closed with the session).
    nat: Option<NatPorts>,
    /// The session's trace ports, once asked for (closed with the session).
    trace: Option<TraceSession>,
}

impl Session {
    fn new(stream: TcpStream, state: Arc<ServerState>, peer: IpAddr) -> Self {
        let now = Instant::now();
        let rate = TokenBucket::new(state.limits.max_probe_rate, now);
        let ports_ctx = SessionPorts::new(
            rand::random(),
            rate,
            peer,
            state.budget.clone(),
            state.test_ports.clone(),
        );
        let clock =
            MessageDeadline::new(state.limits.idle_timeout, state.limits.message_timeout, now);
        Session {
            stream,
            state,
            peer,
            buf: Vec::with_capacity(4096),
            clock,
            preamble_sent: false,
            ports: HashMap::new(),
            ports_ctx,
            opened_total: 0,
            mtu: None,
            nat: None,
            trace: None,
        }
    }

    async fn close_all(&mut self) {
        if let Some(t) = self.trace.take() {
            self.state.release_ports(self.peer, t.len());
        }
        let n = self.ports.len();
        TestPort::close_all(self.ports.drain().map(|(_, p)| p));
        self.state.release_ports(self.peer, n);
        if n > 0 {
            crate::platform::release_free_memory();
        }
    }

    /// Reads more of the current message, by its deadline (whole message,
    /// or idle between messages): a trickle of bytes keeps nothing open.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = timeout_at(self.clock.deadline().into(), self.stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow::anyhow!("{}", self.clock.describe()))??;
        if n == 0 {
            anyhow::bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        self.clock.on_received(self.buf.len(), Instant::now());
        Ok(())
    }

    async fn next_msg(&mut self, max_frame: usize) -> anyhow::Result<ControlMsg> {
        loop {
            match decode_frame_limited(&self.buf, max_frame) {
                Ok(Some((msg, used))) => {
                    self.buf.drain(..used);
                    self.clock.on_consumed(self.buf.len(), Instant::now());
                    return Ok(msg);
                }
                Ok(None) => self.read_more().await?,
                Err(e) => {
                    self.send_error(ErrorCode::BadRequest, &e.to_string(), true)
                        .await;
                    return Err(e.into());
                }
            }
        }
    }

    async fn send(&mut self, msg: &ControlMsg) -> anyhow::Result<()> {
        timeout(
            self.state.limits.idle_timeout,
            self.stream.write_all(&msg.to_frame()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("write timeout"))??;
        Ok(())
    }

    async fn send_error(&mut self, code: ErrorCode, message: &str, fatal: bool) {
        let _ = self
            .send(&ControlMsg::Error {
                code,
                message: message.to_string(),
                fatal,
            })
            .await;
    }

    /// Preamble, then the engine's [`Handshake`] (hello, and with a key the
    /// mutual proof); ends with the session admitted (a slot taken) or an
    /// error sent to the client.
    async fn handshake(&mut self) -> anyhow::Result<SessionSlot> {
        while self.buf.len() < PREAMBLE.len() {
            self.read_more().await?;
            if check_preamble(&self.buf).is_err() {
                return Err(ControlError::BadPreamble.into());
            }
        }
        self.buf.drain(..PREAMBLE.len());
        let terms = WelcomeTerms {
            // A session of this source can hold no more than its share.
            max_open_ports: self
                .state
                .limits
                .max_ports_per_session
                .min(self.state.limits.shares.ports_per_source) as u32,
            max_probe_rate: self.state.limits.max_probe_rate,
            software: format!("udpreach {}", env!("CARGO_PKG_VERSION")),
        };
        let mut handshake = Handshake::new(
            self.ports_ctx.token,
            self.state.key.clone(),
            rand::random(),
            terms,
        );
        let mut first = true;
        loop {
            let msg = self.next_msg(MAX_HANDSHAKE_FRAME).await?;
            let step = handshake.on_message(msg);
            if std::mem::take(&mut first) {
                // Our preamble goes out with the first answer, whatever it is.
                self.preamble_sent = true;
                self.stream.write_all(PREAMBLE).await?;
            }
            match step {
                Step::Reply(reply) => self.send(&reply).await?,
                Step::Admit { reply, session_key } => {
                    self.ports_ctx.key = session_key;
                    let permit = self.admit().await?;
                    self.send(&reply).await?;
                    return Ok(permit);
                }
                Step::Refuse { reply, reason } => {
                    if let Some(r) = reply {
                        let _ = self.send(&r).await;
                    }
                    anyhow::bail!(reason);
                }
            }
        }
    }

    /// Takes a session slot, or tells the client the server is busy.
    async fn admit(&mut self) -> anyhow::Result<SessionSlot> {
        match SessionSlot::take(&self.state, self.peer) {
            Ok(p) => Ok(p),
            Err(why) => {
                let message = why.to_string();
                self.send_error(ErrorCode::TooManySessions, &message, true)
                    .await;
                anyhow::bail!("refused: {message}")
            }
        }
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let local_ip = self.stream.local_addr()?.ip();
        loop {
            let msg = self.next_msg(MAX_FRAME).await?;
            let reply = match msg {
                ControlMsg::Open { ports } if ports.len() > MAX_PORTS_PER_REQUEST => {
                    ControlMsg::Error {
                        code: ErrorCode::TooManyPorts,
                        message: format!("at most {MAX_PORTS_PER_REQUEST} ports per request"),
                        fatal: false,
                    }
                }
                ControlMsg::Open { ports } => self.open(local_ip, ports),
                ControlMsg::Arrivals { ports } => {
                    let asked: Vec<Option<&TestPort>> =
                        ports.iter().map(|p| self.ports.get(p)).collect();
                    let counts = TestPort::arrivals(&asked);
                    ControlMsg::ArrivalCounts { ports, counts }
                }
                ControlMsg::Close { ports } => {
                    let closing: Vec<TestPort> =
                        ports.iter().filter_map(|p| self.ports.remove(p)).collect();
                    let n = closing.len();
                    TestPort::close_all(closing);
                    self.state.release_ports(self.peer, n);
                    ControlMsg::Closed { count: n as u32 }
                }
                ControlMsg::MtuOpen { port } => self.mtu_open(local_ip, port),
                ControlMsg::MtuSend {
                    sizes,
                    count,
                    df,
                    fragment_at,
                    linger_ms,
                } => match self.mtu.as_mut() {
                    Some(m) => m.send(sizes, count, df, fragment_at, linger_ms).await,
                    None => ControlMsg::Error {
                        code: ErrorCode::Unexpected,
                        message: "mtu_send before mtu_open".into(),
                        fatal: false,
                    },
                },
                ControlMsg::NatOpen { fixed } => self.nat_open(local_ip, fixed),
                ControlMsg::NatSend { flow, gap_ms, from } => match self.nat.as_mut() {
                    Some(n) => n.schedule(flow, gap_ms, from),
                    None => ControlMsg::Error {
                        code: ErrorCode::Unexpected,
                        message: "nat_send before nat_open".into(),
                        fatal: false,
                    },
                },
                ControlMsg::TraceOpen { ports } => self.trace_open(local_ip, ports),
                ControlMsg::TraceArrivals { ports } => match &self.trace {
                    Some(t) => t.arrivals(&ports),
                    None => ControlMsg::Error {
                        code: ErrorCode::Unexpected,
                        message: "trace_arrivals before trace_open".into(),
                        fatal: false,
                    },
                },
                msg @ ControlMsg::TraceSend { .. } => match self.trace.as_mut() {
                    Some(t) => t.send(msg).await,
                    None => ControlMsg::Error {
                        code: ErrorCode::Unexpected,
                        message: "trace_send before trace_open".into(),
                        fatal: false,
                    },
                },
                ControlMsg::Bye => return Ok(()),
                other => ControlMsg::Error {
                    code: ErrorCode::Unexpected,
                    message: format!("unexpected message {:?}", std::mem::discriminant(&other)),
                    fatal: false,
                },
            };
            self.send(&reply).await?;
        }
    }

    /// Opens (or reopens) the session's MTU port on the control connection's
    /// local address; a port the client names is checked like a test port.
    fn mtu_open(&mut self, ip: std::net::IpAddr, port: Option<u16>) -> ControlMsg {
        let port = match port {
            Some(p) if self.state.policy.check(p).is_err() => {
                return ControlMsg::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("port {p} is not allowed for tests on this server"),
                    fatal: false,
                }
            }
            Some(p) => p,
            None => 0,
        };
        let peer = match self.stream.peer_addr() {
            Ok(a) => crate::platform::canonical(a).ip(),
            Err(e) => {
                return ControlMsg::Error {
                    code: ErrorCode::Unexpected,
                    message: e.to_string(),
                    fatal: false,
                }
            }
        };
        self.mtu = None;
        match MtuPort::open(SocketAddr::new(ip, port), peer, &self.ports_ctx) {
            Ok(m) => {
                let msg = m.opened(peer);
                self.mtu = Some(m);
                msg
            }
            Err(e) => ControlMsg::Error {
                code: ErrorCode::Unexpected,
                message: format!("cannot open an MTU port: {e}"),
                fatal: false,
            },
        }
    }

    /// Opens (or reopens) the session's NAT ports: two on the control
    /// connection's local address, one on `--alt-address` of its family.
    fn nat_open(&mut self, ip: IpAddr, fixed: Vec<u16>) -> ControlMsg {
        let refuse = |message: String| ControlMsg::Error {
            code: ErrorCode::BadRequest,
            message,
            fatal: false,
        };
        if fixed.len() > udpreach_wire::nat::MAX_FIXED_PORTS {
            return refuse(format!(
                "at most {} NAT ports at chosen numbers",
                udpreach_wire::nat::MAX_FIXED_PORTS
            ));
        }
        if let Some(p) = fixed.iter().find(|&&p| self.state.policy.check(p).is_err()) {
            return refuse(format!("port {p} is not allowed for tests on this server"));
        }
        let alt = self
            .state
            .alt_address
            .filter(|a| a.is_ipv4() == ip.is_ipv4());
        self.nat = None;
        match NatPorts::open(ip, &fixed, alt, self.peer, &self.ports_ctx) {
            Ok(n) => {
                let msg = n.opened();
                self.nat = Some(n);
                msg
            }
            Err(e) => ControlMsg::Error {
                code: ErrorCode::Unexpected,
                message: format!("cannot open NAT ports {fixed:?}: {e}"),
                fatal: false,
            },
        }
    }

    /// Opens trace ports (0: any free port), each checked and counted like a
    /// test port.
    fn trace_open(&mut self, ip: std::net::IpAddr, ports: Vec<u16>) -> ControlMsg {
        if ports.len() > udpreach_wire::trace::MAX_PORTS_PER_REQUEST {
            return ControlMsg::Error {
                code: ErrorCode::TooManyPorts,
                message: format!(
                    "at most {} trace ports per request",
                    udpreach_wire::trace::MAX_PORTS_PER_REQUEST
                ),
                fatal: false,
            };
        }
        let rate_cap = self.state.limits.max_probe_rate;
        let trace = self
            .trace
            .get_or_insert_with(|| TraceSession::new(&self.ports_ctx, rate_cap));
        let (mut bound, mut errors) = (Vec::new(), Vec::new());
        for port in ports {
            if port != 0 && trace.contains(port) {
                bound.push(port);
                continue;
            }
            if port != 0 && self.state.policy.check(port).is_err() {
                bound.push(0);
                errors.push(format!(
                    "port {port} is not allowed for tests on this server"
                ));
                continue;
            }
            if self.ports.len() + trace.len() >= self.state.limits.max_ports_per_session
                || !self.state.reserve_port(self.peer)
            {
                bound.push(0);
                errors.push(format!("port {port}: the session's port share is used up"));
                continue;
            }
            match trace.open(ip, port) {
                Ok(p) => bound.push(p),
                Err(e) => {
                    self.state.release_ports(self.peer, 1);
                    bound.push(0);
                    errors.push(format!("port {port}: {e}"));
                }
            }
        }
        ControlMsg::TraceOpened {
            ports: bound,
            errors,
        }
    }

    fn open(&mut self, ip: std::net::IpAddr, ports: Vec<u16>) -> ControlMsg {
        let (mut opened, mut in_use, mut denied, mut failed) = (vec![], vec![], vec![], vec![]);
        for port in ports {
            if self.ports.contains_key(&port) {
                opened.push(port);
                continue;
            }
            if self.state.policy.check(port).is_err() {
                denied.push(port);
                continue;
            }
            if self.ports.len() >= self.state.limits.max_ports_per_session
                || !self.state.reserve_port(self.peer)
            {
                failed.push(port);
                continue;
            }
            match TestPort::open(SocketAddr::new(ip, port), &self.ports_ctx) {
                Ok(tp) => {
                    self.ports.insert(port, tp);
                    self.opened_total += 1;
                    opened.push(port);
                    continue;
                }
                Err(OpenError::InUse) => in_use.push(port),
                Err(OpenError::Denied) => denied.push(port),
                Err(OpenError::Failed(e)) => {
                    tracing::warn!("cannot open test port {port}: {e}");
                    failed.push(port);
                }
            }
            self.state.release_ports(self.peer, 1);
        }
        self.ports_ctx.reactor.wake();
        ControlMsg::Opened {
            opened,
            in_use,
            denied,
            failed,
        }
    }
}
