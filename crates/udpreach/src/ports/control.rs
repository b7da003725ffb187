//! The client side of the control channel.

use anyhow::{anyhow, bail, Context};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use udpreach_wire::control::{decode_frame, ControlMsg, CAPABILITIES, PREAMBLE, PROTOCOL_VERSION};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a control answer may take before the server is considered gone.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Which answer a request in flight is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    Open,
    Arrivals,
    Close,
    /// An `MtuSend` (udpreach mtu).
    MtuSend,
}

pub struct Welcome {
    pub token: u64,
    pub max_open_ports: u32,
    pub capabilities: Vec<String>,
}

pub struct ControlClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub pending: VecDeque<Pending>,
    pub handshake_rtt: Duration,
    server: SocketAddr,
}

impl ControlClient {
    pub async fn connect(server: SocketAddr) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| anyhow!("cannot connect to the udpreach control port {server}: timed out after 5 s"))?
            .with_context(|| format!("cannot connect to the udpreach control port {server} (is `udpreach server` running there?)"))?;
        let _ = stream.set_nodelay(true);
        Ok(ControlClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            handshake_rtt: t0.elapsed(),
            server,
        })
    }

    pub async fn hello(&mut self) -> anyhow::Result<Welcome> {
        let hello = ControlMsg::Hello {
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            software: format!("udpreach {}", env!("CARGO_PKG_VERSION")),
        };
        let mut out = PREAMBLE.to_vec();
        out.extend(hello.to_frame());
        self.stream.write_all(&out).await?;
        let mut pre = [0u8; 8];
        timeout(ANSWER_TIMEOUT, self.stream.read_exact(&mut pre))
            .await
            .map_err(|_| anyhow!("{}: no answer to hello", self.server))?
            .with_context(|| {
                format!(
                    "{} closed the control connection (not a udpreach server?)",
                    self.server
                )
            })?;
        if &pre != PREAMBLE {
            bail!(
                "{} is not a udpreach server (unexpected control greeting)",
                self.server
            );
        }
        match self.recv().await? {
            ControlMsg::Welcome {
                token,
                max_open_ports,
                capabilities,
                ..
            } => Ok(Welcome {
                token,
                max_open_ports,
                capabilities,
            }),
            ControlMsg::Error { code, message, .. } => {
                bail!("server refused the session ({code:?}): {message}")
            }
            other => bail!("protocol error: expected welcome, got {other:?}"),
        }
    }

    pub async fn request(&mut self, msg: ControlMsg, kind: Pending) -> anyhow::Result<()> {
        self.stream.write_all(&msg.to_frame()).await?;
        self.pending.push_back(kind);
        Ok(())
    }

    /// Next message from the server. Cancel-safe: bytes read are kept in `buf`.
    pub async fn recv(&mut self) -> anyhow::Result<ControlMsg> {
        loop {
            if let Some((msg, used)) = decode_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(msg);
            }
            let mut chunk = [0u8; 65536];
            let n = if self.pending.is_empty() {
                self.stream.read(&mut chunk).await?
            } else {
                timeout(ANSWER_TIMEOUT, self.stream.read(&mut chunk))
                    .await
                    .map_err(|_| anyhow!("no answer from the server for 15 s"))??
            };
            if n == 0 {
                bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One request and its answer, for exchanges that are not pipelined.
    pub async fn call(&mut self, msg: &ControlMsg, wait: Duration) -> anyhow::Result<ControlMsg> {
        self.stream.write_all(&msg.to_frame()).await?;
        timeout(wait, self.recv())
            .await
            .map_err(|_| anyhow!("no answer from the server for {} s", wait.as_secs()))?
    }

    pub async fn bye(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&ControlMsg::Bye.to_frame()).await?;
        Ok(())
    }
}
