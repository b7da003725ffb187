//! Control sessions: the udpreach protocol (after the `UDPREACH` preamble),
//! or the seed's legacy JSON (first byte `{`). One task per connection; when
//! the connection ends or goes idle, every port it opened closes.

use super::mtu::MtuPort;
use super::test_port::{OpenError, TestPort};
use super::{legacy, ServerState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use udpreach_wire::control::{
    check_preamble, decode_frame, ControlError, ControlMsg, ErrorCode, CAPABILITIES,
    MAX_PORTS_PER_REQUEST, PREAMBLE, PROTOCOL_VERSION,
};

pub async fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
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

async fn handle(mut stream: TcpStream, peer: SocketAddr, state: Arc<ServerState>) {
    let idle = state.limits.idle_timeout;
    let mut first = [0u8; 1];
    match timeout(idle, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    let Ok(permit) = state.sessions.try_acquire() else {
        let _ = stream.write_all(PREAMBLE).await;
        let msg = ControlMsg::Error {
            code: ErrorCode::TooManySessions,
            message: format!(
                "server busy: {} sessions already",
                state.limits.max_sessions
            ),
            fatal: true,
        };
        let _ = stream.write_all(&msg.to_frame()).await;
        return;
    };
    let result = if first[0] == b'{' {
        legacy::serve(stream, &state).await
    } else {
        Session::new(stream, state.clone()).run().await
    };
    drop(permit);
    if let Err(e) = result {
        tracing::info!("control session from {peer} ended: {e}");
    }
}

struct Session {
    stream: TcpStream,
    state: Arc<ServerState>,
    buf: Vec<u8>,
    ports: HashMap<u16, TestPort>,
    token: u64,
    /// The session's MTU port, once asked for (closed with the session).
    mtu: Option<MtuPort>,
}

impl Session {
    fn new(stream: TcpStream, state: Arc<ServerState>) -> Self {
        Session {
            stream,
            state,
            buf: Vec::with_capacity(4096),
            ports: HashMap::new(),
            token: rand::random(),
            mtu: None,
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let r = self.serve().await;
        self.close_all().await;
        r
    }

    async fn close_all(&mut self) {
        let n = self.ports.len();
        for (_, p) in self.ports.drain() {
            p.close().await;
        }
        self.state.release_ports(n);
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = timeout(self.state.limits.idle_timeout, self.stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow::anyhow!("idle timeout"))??;
        if n == 0 {
            anyhow::bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn next_msg(&mut self) -> anyhow::Result<ControlMsg> {
        loop {
            match decode_frame(&self.buf) {
                Ok(Some((msg, used))) => {
                    self.buf.drain(..used);
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

    async fn serve(&mut self) -> anyhow::Result<()> {
        while self.buf.len() < PREAMBLE.len() {
            self.read_more().await?;
            if check_preamble(&self.buf).is_err() {
                return Err(ControlError::BadPreamble.into());
            }
        }
        self.buf.drain(..PREAMBLE.len());
        let ControlMsg::Hello { version, .. } = self.next_msg().await? else {
            self.send_error(ErrorCode::BadRequest, "expected hello", true)
                .await;
            anyhow::bail!("no hello");
        };
        if version < 1 {
            self.send_error(
                ErrorCode::BadVersion,
                "protocol version 1 or later required",
                true,
            )
            .await;
            anyhow::bail!("bad version {version}");
        }
        self.stream.write_all(PREAMBLE).await?;
        let welcome = ControlMsg::Welcome {
            version: version.min(PROTOCOL_VERSION),
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            token: self.token,
            max_open_ports: self.state.limits.max_ports_per_session as u32,
            software: format!("udpreach {}", env!("CARGO_PKG_VERSION")),
        };
        self.send(&welcome).await?;
        let local_ip = self.stream.local_addr()?.ip();
        loop {
            let msg = self.next_msg().await?;
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
                    let counts = ports
                        .iter()
                        .map(|p| self.ports.get(p).map_or(0, TestPort::count))
                        .collect();
                    ControlMsg::ArrivalCounts { ports, counts }
                }
                ControlMsg::Close { ports } => {
                    let mut n = 0;
                    for p in ports {
                        if let Some(tp) = self.ports.remove(&p) {
                            tp.close().await;
                            n += 1;
                        }
                    }
                    self.state.release_ports(n);
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
        match MtuPort::open(SocketAddr::new(ip, port), peer, self.token) {
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
                || !self.state.reserve_port()
            {
                failed.push(port);
                continue;
            }
            match TestPort::open(SocketAddr::new(ip, port), self.token) {
                Ok(tp) => {
                    self.ports.insert(port, tp);
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
            self.state.release_ports(1);
        }
        ControlMsg::Opened {
            opened,
            in_use,
            denied,
            failed,
        }
    }
}
