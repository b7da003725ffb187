//! Server-side decisions that need no socket: what to do with a datagram,
//! per-flow receive counters, and which ports a session may open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use udpreach_wire::probe::{self, ProbeHeader, ProbeKind, ServerStamp};
use udpreach_wire::PortSpec;

/// What the echo port does with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoAction {
    /// A udpreach echo request: reply with a stamped copy.
    Probe(ProbeHeader),
    /// Anything else: echo it back byte for byte, as any echo server would.
    Plain,
    /// Never answered (our own replies, so two servers cannot ping-pong forever).
    Drop,
}

pub fn classify_echo(datagram: &[u8]) -> EchoAction {
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

/// Per-flow receive counters: how many probes of one ping session (client
/// address and token) arrived. Bounded: idle flows expire, and when the table
/// is full the least recently seen flows are evicted.
pub struct FlowTable {
    flows: HashMap<(IpAddr, u64), (u32, Instant)>,
    capacity: usize,
    idle: Duration,
}

impl FlowTable {
    pub fn new(capacity: usize, idle: Duration) -> Self {
        FlowTable {
            flows: HashMap::new(),
            capacity: capacity.max(1),
            idle,
        }
    }

    /// Counts one arrival and returns the flow's count including it.
    pub fn count(&mut self, from: IpAddr, token: u64, now: Instant) -> u32 {
        if self.flows.len() >= self.capacity && !self.flows.contains_key(&(from, token)) {
            self.evict(now);
        }
        let e = self.flows.entry((from, token)).or_insert((0, now));
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        e.0
    }

    fn evict(&mut self, now: Instant) {
        let idle = self.idle;
        self.flows
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < idle);
        if self.flows.len() >= self.capacity {
            // Still full of live flows: drop the older half.
            let mut seen: Vec<Instant> = self.flows.values().map(|v| v.1).collect();
            seen.sort_unstable();
            let cutoff = seen[seen.len() / 2];
            self.flows.retain(|_, (_, s)| *s > cutoff);
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// Stamps a probe request in place so it becomes its reply.
pub fn stamp_reply(
    datagram: &mut [u8],
    from: SocketAddr,
    ttl: Option<u8>,
    rx_ns: u64,
    flow_count: u32,
) -> bool {
    let stamp = ServerStamp {
        rx_ns,
        tx_ns: rx_ns,
        flow_count,
        seen_from: from,
        seen_ttl: ttl.unwrap_or(0),
    };
    probe::make_reply_in_place(datagram, &stamp).is_ok()
}

/// Why a port may not be opened for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDenial {
    NotAllowed,
}

/// Which ports clients may ask the server to open.
#[derive(Clone, Debug)]
pub struct PortPolicy {
    pub allowed: PortSpec,
    /// Ports the server itself uses (control, echo): never handed out.
    pub reserved: Vec<u16>,
}

impl PortPolicy {
    pub fn check(&self, port: u16) -> Result<(), PortDenial> {
        if self.reserved.contains(&port) || !self.allowed.contains(port) {
            return Err(PortDenial::NotAllowed);
        }
        Ok(())
    }
}

/// Server-wide caps, with defaults sized for the open-files limit.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub max_sessions: usize,
    pub max_ports_per_session: usize,
    pub max_total_ports: usize,
    /// A control connection silent this long is closed, with its ports.
    pub idle_timeout: Duration,
}

impl ServerLimits {
    /// Defaults derived from the open-files limit: keep a reserve for control
    /// connections and the process itself.
    pub fn for_nofile(nofile: u64) -> Self {
        let usable = nofile.saturating_sub(512).max(64) as usize;
        ServerLimits {
            max_sessions: 64,
            max_ports_per_session: usable.min(8192),
            max_total_ports: usable.min(60_000),
            idle_timeout: Duration::from_secs(30),
        }
    }
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
    fn flow_table_counts_and_stays_bounded() {
        let t0 = Instant::now();
        let mut f = FlowTable::new(100, Duration::from_secs(10));
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(f.count(a, 1, t0), 1);
        assert_eq!(f.count(a, 1, t0), 2);
        assert_eq!(f.count(a, 2, t0), 1);
        for i in 0..10_000u64 {
            f.count(a, 100 + i, t0 + Duration::from_millis(i));
            assert!(f.len() <= 100);
        }
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
                    prop_assert!(stamp_reply(&mut bytes, "198.18.0.1:1".parse().unwrap(), Some(64), 5, 1));
                    prop_assert_eq!(bytes.len(), len);
                }
                EchoAction::Plain | EchoAction::Drop => prop_assert_eq!(bytes.len(), len),
            }
        }
    }
}
