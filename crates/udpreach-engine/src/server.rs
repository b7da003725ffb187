//! Server-side decisions that need no socket: what a datagram is, and which
//! ports a session may open. The answers themselves are in `responder`.

use crate::admission::Shares;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_wire::probe::{self, ProbeHeader, ProbeKind, ServerStamp};
use udpreach_wire::PortSpec;

/// What the echo port does with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoAction {
    /// A udpreach echo request: reply with a stamped copy.
    Probe(ProbeHeader),
    /// Anything else: echo it back byte for byte, as any echo server would.
    Plain,
    /// A udpreach short probe (16..=63 bytes): echoed with its magic
    /// changed to the reply magic, the rest byte for byte; limited as a
    /// probe, not as plain echo.
    ShortProbe,
    /// Never answered (our own replies, so two servers cannot ping-pong forever).
    Drop,
}

/// What the echo port does with `datagram`.
pub fn classify_echo(datagram: &[u8]) -> EchoAction {
    if probe::looks_like_short_probe(datagram) {
        return EchoAction::ShortProbe;
    }
    if probe::looks_like_short_reply(datagram) {
        return EchoAction::Drop;
    }
    if !probe::looks_like_probe(datagram) {
        return EchoAction::Plain;
    }
    match ProbeHeader::decode(datagram) {
        Ok(h) if h.kind == ProbeKind::EchoRequest => EchoAction::Probe(h),
        Ok(_) => EchoAction::Drop,
        // Starts with our magic but is not a valid probe: still just bytes to echo.
        Err(_) => EchoAction::Plain,
    }
}

/// Stamps a probe request in place so it becomes its reply.
pub fn stamp_reply(
    datagram: &mut [u8],
    from: SocketAddr,
    ttl: Option<u8>,
    rx_ns: u64,
    flow_count: u32,
    withheld: u8,
) -> bool {
    let stamp = ServerStamp {
        rx_ns,
        tx_ns: rx_ns,
        flow_count,
        seen_from: from,
        seen_ttl: ttl.unwrap_or(0),
        withheld,
    };
    probe::make_reply_in_place(datagram, &stamp).is_ok()
}

/// Why a port may not be opened for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDenial {
    /// The port is outside the server's allowed ports.
    NotAllowed,
}

/// Which ports clients may ask the server to open.
#[derive(Clone, Debug)]
pub struct PortPolicy {
    /// Ports clients may ask to open.
    pub allowed: PortSpec,
    /// Ports the server itself uses (control, echo): never handed out.
    pub reserved: Vec<u16>,
}

impl PortPolicy {
    /// Whether `port` may be opened.
    pub fn check(&self, port: u16) -> Result<(), PortDenial> {
        if self.reserved.contains(&port) || !self.allowed.contains(port) {
            return Err(PortDenial::NotAllowed);
        }
        Ok(())
    }
}

/// Default per-session probe rate: a full 65,535-port sweep across a lossy
/// link sends about 110,000 probes in 3 s, with bursts above that average, so
/// 100,000/s keeps it whole while bounding what one session can make the
/// server send (replies go only to the session's own client, never larger
/// than the probe).
pub const DEFAULT_MAX_PROBE_RATE: u32 = 100_000;
/// Default plain-echo rate per source address: plenty for interactive tools
/// (the seed's client sends one a second), little use for flooding a victim.
pub const DEFAULT_PLAIN_ECHO_RATE: u32 = 50;
/// Default largest answered datagram: any. A reply is never larger than its
/// request, so size is no amplification risk, and `ping -s 65507` and
/// fragmentation tests should work out of the box; operators may lower it.
pub const DEFAULT_MAX_DATAGRAM: usize = 65535;

/// The default cap on one session's open test ports (the open-files limit
/// and the per-source share may set a lower one): a full-range sweep at
/// 200 ms holds about 15,000 ports at once to finish in 10 s (a blocked
/// port is held for two rounds of retransmissions, about 16 RTTs); 8,192
/// took 10.2 s in the same simulation (`sweep::at_real_rtts`).
pub const MAX_DEFAULT_PORTS_PER_SESSION: usize = 16_384;

/// Server-wide caps, with defaults sized for the open-files limit.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Sessions at once.
    pub max_sessions: usize,
    /// Ports one session may hold open.
    pub max_ports_per_session: usize,
    /// Ports open at once over all sessions.
    pub max_total_ports: usize,
    /// A control connection silent this long is closed, with its ports.
    pub idle_timeout: Duration,
    /// Probe replies per second per session (test ports) or ping flow (echo port).
    pub max_probe_rate: u32,
    /// Plain (non-udpreach) echo replies per second to one source address.
    pub plain_echo_rate: u32,
    /// Datagrams larger than this get no answer.
    pub max_datagram: usize,
    /// Control connections still in their handshake at once; more are closed.
    pub max_handshakes: usize,
    /// Time a new control connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// Time one control message (udpreach frame or legacy JSON object) has
    /// from its first byte to its last: a trickle keeps no session.
    pub message_timeout: Duration,
    /// What one source (IPv4 address, IPv6 /64) may hold at once.
    pub shares: Shares,
}

impl ServerLimits {
    /// Defaults derived from the open-files limit: keep a reserve for control
    /// connections and the process itself.
    pub fn for_nofile(nofile: u64) -> Self {
        let usable = port_budget(nofile);
        ServerLimits {
            max_sessions: 64,
            max_ports_per_session: usable.min(MAX_DEFAULT_PORTS_PER_SESSION),
            max_total_ports: usable.min(60_000),
            idle_timeout: Duration::from_secs(30),
            max_probe_rate: DEFAULT_MAX_PROBE_RATE,
            plain_echo_rate: DEFAULT_PLAIN_ECHO_RATE,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            // Each costs a descriptor and a small buffer for at most
            // `handshake_timeout`: enough to ride out a burst of stalled or
            // garbage connections without turning real clients away.
            max_handshakes: usable.clamp(64, 1024),
            handshake_timeout: Duration::from_secs(5),
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            shares: Shares::fair(usable.clamp(64, 1024), 64, usable.min(60_000)),
        }
    }

    /// Recomputes the default shares after the caps changed; explicit
    /// per-source caps (when given) win.
    pub fn set_shares(
        &mut self,
        sessions_per_source: Option<usize>,
        ports_per_source: Option<usize>,
    ) {
        let fair = Shares::fair(self.max_handshakes, self.max_sessions, self.max_total_ports);
        self.shares = Shares {
            handshakes_per_source: fair.handshakes_per_source,
            sessions_per_source: sessions_per_source.unwrap_or(fair.sessions_per_source),
            ports_per_source: ports_per_source.unwrap_or(fair.ports_per_source),
        };
    }
}

/// Default whole-message deadline on the control channel.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default `--allow-ports`: 1024-65535 without the host's ephemeral
/// range (`lo..=hi` from net.ipv4.ip_local_port_range), so test ports never
/// take the ports the host's own outgoing connections need.
pub fn default_allowed_ports(ephemeral: Option<(u16, u16)>) -> PortSpec {
    let Some((lo, hi)) = ephemeral.filter(|(lo, hi)| lo <= hi) else {
        return PortSpec::from_ports(1024..=65535);
    };
    PortSpec::from_ports((1024..=65535u16).filter(|p| *p < lo || *p > hi))
}

/// How many test ports an open-files limit of `nofile` descriptors can hold:
/// all but 512 kept for sessions, listeners and the rest (at least 64).
pub fn port_budget(nofile: u64) -> usize {
    nofile.saturating_sub(512).max(64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify() {
        assert_eq!(classify_echo(b"hello"), EchoAction::Plain);
        let mut buf = vec![0u8; 80];
        ProbeHeader::request(ProbeKind::EchoRequest, 1, 2)
            .encode(&mut buf)
            .unwrap();
        assert!(matches!(classify_echo(&buf), EchoAction::Probe(_)));
        ProbeHeader::request(ProbeKind::EchoReply, 1, 2)
            .encode(&mut buf)
            .unwrap();
        assert_eq!(classify_echo(&buf), EchoAction::Drop);
    }

    #[test]
    fn default_ports_skip_the_ephemeral_range() {
        let p = default_allowed_ports(Some((32768, 60999)));
        assert_eq!(p.to_string(), "1024-32767,61000-65535");
        assert_eq!(default_allowed_ports(None).to_string(), "1024-65535");
        assert_eq!(
            default_allowed_ports(Some((1024, 65535))).len(),
            0,
            "an operator who gives every port away must choose with --allow-ports"
        );
    }

    #[test]
    fn policy() {
        let p = PortPolicy {
            allowed: "1024-65535".parse().unwrap(),
            reserved: vec![4000],
        };
        assert!(p.check(5000).is_ok());
        assert!(p.check(80).is_err());
        assert!(p.check(4000).is_err());
    }

    proptest! {
        /// No amplification: whatever arrives, the reply is never larger.
        #[test]
        fn reply_never_larger(mut bytes in proptest::collection::vec(any::<u8>(), 0..300), magic in any::<bool>()) {
            if magic && bytes.len() >= 6 {
                bytes[..4].copy_from_slice(&probe::MAGIC);
                bytes[4] = probe::VERSION;
                bytes[5] = 1;
            }
            let len = bytes.len();
            match classify_echo(&bytes) {
                EchoAction::Probe(_) => {
                    prop_assert!(stamp_reply(&mut bytes, "198.18.0.1:1".parse().unwrap(), Some(64), 5, 1, 0));
                    prop_assert_eq!(bytes.len(), len);
                }
                EchoAction::Plain | EchoAction::ShortProbe | EchoAction::Drop => prop_assert_eq!(bytes.len(), len),
            }
        }
    }
}
