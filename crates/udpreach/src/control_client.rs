//! The client side of the control channel, used by `ports`, `mtu` and
//! `ping`'s key check. Its errors are typed ([`ControlError`]) so callers
//! tell an authentication failure, a busy server and a lost connection apart
//! without reading strings.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
pub(crate) use udpreach_engine::client_handshake::Welcome;
use udpreach_engine::client_handshake::{ClientHandshake, HandshakeEvent, HandshakeFailure};
use udpreach_engine::Engine;
use udpreach_wire::auth::{SharedKey, NONCE_LEN};
use udpreach_wire::control::{decode_frame, ControlMsg, ErrorCode, PREAMBLE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may go without answering while a request is pending
/// (and how long one write may block) before it is considered gone: a
/// control connection that silently dies ends the run within this.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The kernel's own bound on unacknowledged data (TCP_USER_TIMEOUT) and its
/// keepalive probes: a connection whose packets vanish errors out even when
/// the application has nothing pending.
const TCP_GIVE_UP: Duration = Duration::from_secs(12);

/// Which answer a request in flight is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    Open,
    Arrivals,
    Close,
    /// An `MtuSend` (udpreach mtu).
    MtuSend,
}

/// Why the control channel failed. Each kind reads as one line (with its
/// cause, when it has one, in anyhow's chain).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// The TCP connection could not be made.
    #[error("cannot connect to the udpreach control port {server}: timed out after 5 s")]
    ConnectTimeout {
        /// The control address.
        server: SocketAddr,
    },
    /// The TCP connection was refused or failed.
    #[error("cannot connect to the udpreach control port {server} (is `udpreach server` running there?)")]
    Connect {
        /// The control address.
        server: SocketAddr,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The peer answered, but not as a udpreach server.
    #[error("{0} is not a udpreach server (unexpected control greeting)")]
    NotUdpreach(SocketAddr),
    /// The handshake failed because the keys differ or one side has none.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The server is at its session or handshake cap.
    #[error("{server}: {message}")]
    Busy {
        /// The control address.
        server: SocketAddr,
        /// The server's words.
        message: String,
    },
    /// The server refused the session for another reason.
    #[error("{server} refused the session ({code:?}): {message}")]
    Refused {
        /// The control address.
        server: SocketAddr,
        /// The server's error code.
        code: ErrorCode,
        /// The server's words.
        message: String,
    },
    /// The connection went silent, closed or failed.
    #[error("{what}")]
    Lost {
        /// What happened, in one line.
        what: String,
        /// The I/O error, when there was one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A frame that does not decode.
    #[error(transparent)]
    Frame(#[from] udpreach_wire::control::ControlError),
}

impl ControlError {
    fn lost(what: String) -> Self {
        ControlError::Lost { what, source: None }
    }

    fn lost_by(what: String, source: std::io::Error) -> Self {
        ControlError::Lost {
            what,
            source: Some(source),
        }
    }
}

type Result<T> = std::result::Result<T, ControlError>;

pub(crate) struct ControlClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub pending: VecDeque<Pending>,
    /// While requests are pending: when the server must have said something.
    /// Kept here, not in a per-call timer, so a caller that polls `recv` in a
    /// loop (and drops it for other events) cannot restart the clock.
    answer_due: Option<Instant>,
    pub handshake_rtt: Duration,
    server: SocketAddr,
}

impl ControlClient {
    pub(crate) async fn connect(server: SocketAddr) -> Result<Self> {
        let t0 = Instant::now();
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| ControlError::ConnectTimeout { server })?
            .map_err(|source| ControlError::Connect { server, source })?;
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock.set_tcp_user_timeout(Some(TCP_GIVE_UP));
        let _ = sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(5))
                .with_interval(Duration::from_secs(2))
                .with_retries(3),
        );
        Ok(ControlClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            answer_due: None,
            handshake_rtt: t0.elapsed(),
            server,
        })
    }

    /// Opens the session; with a key, proves it and checks the server's proof
    /// (mutual authentication), and derives the session key for the probes.
    /// The protocol is the engine's [`ClientHandshake`]; this moves its
    /// messages and keeps the answer timeout.
    pub(crate) async fn hello(&mut self, key: Option<&SharedKey>) -> Result<Welcome> {
        let server = self.server;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let software = format!("udpreach {}", env!("CARGO_PKG_VERSION"));
        let mut handshake = ClientHandshake::new(key.cloned(), nonce, software);
        let mut out = PREAMBLE.to_vec();
        while let Some(msg) = handshake.poll_transmit(Instant::now()) {
            out.extend(msg.to_frame());
        }
        self.write(&out).await?;
        let mut pre = [0u8; 8];
        timeout(ANSWER_TIMEOUT, self.stream.read_exact(&mut pre))
            .await
            .map_err(|_| no_answer(&format!("{server}: no answer to hello"), ""))?
            .map_err(|e| {
                ControlError::lost_by(
                    format!("{server} closed the control connection without a udpreach greeting"),
                    e,
                )
            })?;
        if &pre != PREAMBLE {
            return Err(ControlError::NotUdpreach(server));
        }
        loop {
            let msg = self.recv_answer().await?;
            handshake.handle_input(msg, Instant::now());
            while let Some(msg) = handshake.poll_transmit(Instant::now()) {
                // A farewell after a failed check may not get through; the
                // failure is what counts.
                let sent = self.write(&msg.to_frame()).await;
                if !matches!(msg, ControlMsg::Error { .. }) {
                    sent?;
                }
            }
            match handshake.poll_event() {
                Some(HandshakeEvent::Welcome(w)) => return Ok(w),
                Some(HandshakeEvent::Failed(why)) => return Err(failure(server, why)),
                None => {}
            }
        }
    }

    /// Next message during the handshake, with the answer timeout.
    async fn recv_answer(&mut self) -> Result<ControlMsg> {
        let server = self.server;
        timeout(ANSWER_TIMEOUT, self.recv()).await.map_err(|_| {
            ControlError::lost(format!("{server}: no answer during the handshake for 15 s"))
        })?
    }

    /// Writes, by the answer deadline: a peer that stops reading (or a
    /// path that silently drops everything) cannot block us forever.
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let server = self.server;
        timeout(ANSWER_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| no_answer(&format!("{server} took no data"), " (connection lost?)"))?
            .map_err(|e| ControlError::lost_by(format!("cannot send to {server}"), e))
    }

    pub(crate) async fn request(&mut self, msg: ControlMsg, kind: Pending) -> Result<()> {
        self.write(&msg.to_frame()).await?;
        if self.pending.is_empty() {
            self.answer_due = Some(Instant::now() + ANSWER_TIMEOUT);
        }
        self.pending.push_back(kind);
        Ok(())
    }

    /// Next message from the server. Cancel-safe: bytes read are kept in
    /// `buf`, and the answer deadline is kept across calls: with requests
    /// pending, the server must send something every [`ANSWER_TIMEOUT`].
    pub(crate) async fn recv(&mut self) -> Result<ControlMsg> {
        loop {
            if let Some((msg, used)) = decode_frame(&self.buf)? {
                self.buf.drain(..used);
                self.answer_due = Some(Instant::now() + ANSWER_TIMEOUT);
                return Ok(msg);
            }
            let mut chunk = [0u8; 65536];
            let n = match (self.pending.is_empty(), self.answer_due) {
                (false, Some(due)) => timeout_at(due.into(), self.stream.read(&mut chunk))
                    .await
                    .map_err(|_| no_answer("no answer from the server", " (connection lost?)"))?
                    .map_err(gone)?,
                _ => self.stream.read(&mut chunk).await.map_err(gone)?,
            };
            if n == 0 {
                return Err(ControlError::lost("server closed the connection".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One request and its answer, for exchanges that are not pipelined.
    pub(crate) async fn call(&mut self, msg: &ControlMsg, wait: Duration) -> Result<ControlMsg> {
        self.write(&msg.to_frame()).await?;
        timeout(wait.min(ANSWER_TIMEOUT), self.recv())
            .await
            .map_err(|_| {
                ControlError::lost(format!(
                    "no answer from the server for {} s",
                    wait.min(ANSWER_TIMEOUT).as_secs()
                ))
            })?
    }

    /// Our end of the control connection (our address as the server's host routes it).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub(crate) async fn bye(&mut self) -> Result<()> {
        self.write(&ControlMsg::Bye.to_frame()).await
    }
}

/// The answer timeout passed: "`what` for 15 s`hint`".
fn no_answer(what: &str, hint: &str) -> ControlError {
    ControlError::lost(format!("{what} for {} s{hint}", ANSWER_TIMEOUT.as_secs()))
}

/// A read error, said plainly when the kernel gave up on the connection.
fn gone(e: std::io::Error) -> ControlError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        ControlError::lost(format!(
            "the server acknowledged nothing for {} s (connection lost?)",
            TCP_GIVE_UP.as_secs()
        ))
    } else {
        ControlError::lost(e.to_string())
    }
}

/// A failed handshake as one line saying why, in the server's words where
/// they are the message ("server busy (64 sessions)", "server refused:
/// handshake slots full").
fn failure(server: SocketAddr, why: HandshakeFailure) -> ControlError {
    match why {
        HandshakeFailure::AuthRefused(why) => {
            ControlError::AuthFailed(format!("{server} refused the session: {why}"))
        }
        HandshakeFailure::AuthRejected(why) => ControlError::AuthFailed(format!("{server}: {why}")),
        HandshakeFailure::NoServerProof => ControlError::AuthFailed(format!(
            "{server} did not prove it holds the key (does it run without one?)"
        )),
        HandshakeFailure::WrongServerKey => {
            ControlError::AuthFailed(format!("{server} holds a different key"))
        }
        HandshakeFailure::Busy(message) => ControlError::Busy { server, message },
        HandshakeFailure::Refused { code, message } => ControlError::Refused {
            server,
            code,
            message,
        },
        HandshakeFailure::Protocol(what) => ControlError::Protocol(what),
    }
}
