//! `udpreach trace`: the TTL-limited probe datagram and the limits of what a
//! server sends on a client's request.
//!
//! A trace probe is [`PROBE_LEN`] bytes: magic `URTR`, the session token,
//! the traced port, the TTL it was sent with, the attempt, and its kind.
//! The kernel hands back the start of the offending datagram with every
//! ICMP error, so the quoted payload names the (port, TTL) an error is about.
//! Every probe of one port is sent from one socket to one address, so the
//! 5-tuple is the same for every TTL (Paris-traceroute style: ECMP keeps
//! one path per port).
//!
//! In a keyed session every trace datagram (probe, ack, downstream probe)
//! is [`KEYED_PROBE_LEN`] bytes: the probe and a tag over it with the
//! session key ([`TraceProbe::to_datagram`]), so neither side confirms a
//! probe it cannot authenticate; the session key is new each session, and
//! within one the server takes each (TTL, attempt) once ([`TraceProbe::replay_seq`]).

use crate::auth::{DerivedKey, TAG_LEN};

/// The first bytes of every trace probe and ack.
pub const MAGIC: &[u8; 4] = b"URTR";
/// Bytes of every trace probe and ack (acks are never larger than probes).
pub const PROBE_LEN: usize = 32;
/// Bytes of a trace datagram in a keyed session: the probe, then its tag.
pub const KEYED_PROBE_LEN: usize = PROBE_LEN + TAG_LEN;
/// Most TTLs a trace may probe (`--max-hops`).
pub const MAX_HOPS: u8 = 64;
/// Most attempts per TTL.
pub const MAX_ATTEMPTS: u8 = 3;
/// Most sends of one TTL of one port: the attempts, then the retries that
/// must confirm a silence (each followed by a canary, itself counted as a
/// send of the canary's TTL) or catch a rate-limited hop's next error.
pub const MAX_SENDS_PER_TTL: u8 = 16;
/// Most ports one `TraceOpen` or `TraceSend` may name.
pub const MAX_PORTS_PER_REQUEST: usize = 128;
/// Most `TraceSend` requests one session may make.
pub const MAX_SENDS_PER_SESSION: u32 = 64;
/// The TTL field of a locator: an upstream probe sent bare, with the
/// socket's usual TTL, only to tell the server where downstream probes
/// should go when the padded probes (`--size`) cannot reach it. Never
/// counted as an arrival nor acked (older servers ignore TTL 0 in their
/// arrivals too).
pub const LOCATOR_TTL: u8 = 0;
/// Largest trace datagram (`trace --size`; the largest UDP payload over IPv4).
pub const MAX_SIZE: usize = crate::probe::MAX_DATAGRAM;
/// Most bytes one `TraceSend` with a `size` may ask for, all its probes
/// together (as an MTU request: at most 1 MiB).
pub const MAX_PADDED_BYTES_PER_SEND: u64 = 1 << 20;
/// Longest a server waits for ICMP errors after its last downstream probe.
pub const MAX_WAIT_MS: u32 = 5_000;

/// What a trace datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// Client -> server (or any host): a TTL-limited probe to the traced port.
    Up,
    /// Server -> client: "this upstream probe arrived" (same size as the probe).
    Ack,
    /// Server -> client: a TTL-limited probe from the traced port.
    Down,
}

impl TraceKind {
    fn byte(self) -> u8 {
        match self {
            TraceKind::Up => 1,
            TraceKind::Ack => 2,
            TraceKind::Down => 3,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(TraceKind::Up),
            2 => Some(TraceKind::Ack),
            3 => Some(TraceKind::Down),
            _ => None,
        }
    }
}

/// One trace probe's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceProbe {
    /// The session's token.
    pub token: u64,
    /// The traced port: destination upstream, source downstream.
    pub port: u16,
    /// The TTL / hop limit it was sent with.
    pub ttl: u8,
    /// Which try at this TTL (0-based).
    pub attempt: u8,
    /// Probe or ack, and which way.
    pub kind: TraceKind,
}

impl TraceProbe {
    /// The probe's bytes.
    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut b = [0u8; PROBE_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.token.to_be_bytes());
        b[12..14].copy_from_slice(&self.port.to_be_bytes());
        b[14] = self.ttl;
        b[15] = self.attempt;
        b[16] = self.kind.byte();
        b
    }

    /// The datagram to send: the probe, tagged with `key` in a keyed
    /// session, then zeros up to `size` bytes (`trace --size`: probes
    /// large enough to meet a hop's smaller MTU).
    pub fn to_datagram(&self, key: Option<&DerivedKey>, size: usize) -> Vec<u8> {
        let mut b = self.encode().to_vec();
        if let Some(k) = key {
            let tag = k.tag(&b);
            b.extend_from_slice(&tag);
        }
        if size > b.len() {
            b.resize(size, 0);
        }
        b
    }

    /// A received trace datagram: at least [`PROBE_LEN`] bytes without a
    /// key; with one, at least [`KEYED_PROBE_LEN`] bytes whose tag verifies
    /// (any padding after it is not covered). `None` for anything else (an
    /// untagged probe in a keyed session, a forged tag).
    pub fn from_datagram(b: &[u8], key: Option<&DerivedKey>) -> Option<TraceProbe> {
        match key {
            None if b.len() >= PROBE_LEN => Self::decode(b),
            Some(k) if b.len() >= KEYED_PROBE_LEN => {
                let (body, rest) = b.split_at(PROBE_LEN);
                k.verify_tag(body, &rest[..TAG_LEN])
                    .then(|| Self::decode(body))
                    .flatten()
            }
            _ => None,
        }
    }

    /// A number unique to this probe within its port's trace (TTL and
    /// attempt), for a replay window: the same probe twice is one arrival.
    /// `attempt` counts every send of a TTL (retries and canaries too), so
    /// it runs up to [`MAX_SENDS_PER_TTL`], not [`MAX_ATTEMPTS`]; TTLs
    /// 1..=[`MAX_HOPS`] then span 1,024 numbers, one replay window.
    pub fn replay_seq(&self) -> u64 {
        u64::from(self.ttl) * u64::from(MAX_SENDS_PER_TTL) + u64::from(self.attempt)
    }

    /// Parses a probe, or the start of one quoted in an ICMP error (at least
    /// the first 17 bytes). `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<TraceProbe> {
        if b.len() < 17 || &b[..4] != MAGIC {
            return None;
        }
        Some(TraceProbe {
            token: u64::from_be_bytes(b[4..12].try_into().ok()?),
            port: u16::from_be_bytes([b[12], b[13]]),
            ttl: b[14],
            attempt: b[15],
            kind: TraceKind::from_byte(b[16])?,
        })
    }
}

/// Why a `TraceSend` is refused before anything is sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceRequestError {
    /// `max_hops` out of range.
    #[error("max_hops {0} is outside 1..={MAX_HOPS}")]
    Hops(u8),
    /// `attempts` out of range.
    #[error("attempts {0} is outside 1..={MAX_ATTEMPTS}")]
    Attempts(u8),
    /// Too many ports in one request.
    #[error("{0} ports (at most {MAX_PORTS_PER_REQUEST} per request)")]
    Ports(usize),
    /// Padded probes over [`MAX_SIZE`] bytes.
    #[error("size {0} is over {MAX_SIZE} bytes")]
    Size(usize),
    /// Padded probes adding up to more than [`MAX_PADDED_BYTES_PER_SEND`].
    #[error("{0} bytes of probes (ports x max_hops x attempts x size; at most {MAX_PADDED_BYTES_PER_SEND})")]
    Bytes(u64),
}

/// Checks the bytes a `TraceSend` of probes padded to `size` would send.
pub fn check_size(
    ports: usize,
    max_hops: u8,
    attempts: u8,
    size: usize,
) -> Result<(), TraceRequestError> {
    if size > MAX_SIZE {
        return Err(TraceRequestError::Size(size));
    }
    let bytes = ports as u64 * u64::from(max_hops) * u64::from(attempts) * size as u64;
    if size > KEYED_PROBE_LEN && bytes > MAX_PADDED_BYTES_PER_SEND {
        return Err(TraceRequestError::Bytes(bytes));
    }
    Ok(())
}

/// Checks a `TraceSend`'s numbers against the limits above.
pub fn check_send(ports: usize, max_hops: u8, attempts: u8) -> Result<(), TraceRequestError> {
    if max_hops == 0 || max_hops > MAX_HOPS {
        return Err(TraceRequestError::Hops(max_hops));
    }
    if attempts == 0 || attempts > MAX_ATTEMPTS {
        return Err(TraceRequestError::Attempts(attempts));
    }
    if ports == 0 || ports > MAX_PORTS_PER_REQUEST {
        return Err(TraceRequestError::Ports(ports));
    }
    Ok(())
}

/// Most datagrams one `TraceSend` can make the server send.
pub fn max_datagrams_per_send() -> usize {
    MAX_PORTS_PER_REQUEST * usize::from(MAX_HOPS) * usize::from(MAX_SENDS_PER_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_quotes() {
        let p = TraceProbe {
            token: 0x1122_3344_5566_7788,
            port: 5060,
            ttl: 7,
            attempt: 2,
            kind: TraceKind::Down,
        };
        let b = p.encode();
        assert_eq!(TraceProbe::decode(&b), Some(p));
        assert_eq!(TraceProbe::decode(&b[..17]), Some(p));
        assert_eq!(TraceProbe::decode(&b[..16]), None);
        let mut bad = b;
        bad[16] = 9;
        assert_eq!(TraceProbe::decode(&bad), None);
        bad[0] = b'X';
        assert_eq!(TraceProbe::decode(&bad), None);
    }

    #[test]
    fn keyed_datagrams_need_their_tag() {
        let key = crate::auth::SharedKey::new(b"k".to_vec())
            .unwrap()
            .session_key(&[1; 32], &[2; 32]);
        let other = crate::auth::SharedKey::new(b"x".to_vec())
            .unwrap()
            .session_key(&[1; 32], &[2; 32]);
        let p = TraceProbe {
            token: 9,
            port: 5060,
            ttl: 3,
            attempt: 1,
            kind: TraceKind::Up,
        };
        let plain = p.to_datagram(None, 0);
        assert_eq!(plain.len(), PROBE_LEN);
        assert_eq!(TraceProbe::from_datagram(&plain, None), Some(p));
        assert_eq!(
            TraceProbe::from_datagram(&plain, Some(&key)),
            None,
            "untagged"
        );
        let keyed = p.to_datagram(Some(&key), 0);
        assert_eq!(keyed.len(), KEYED_PROBE_LEN);
        assert_eq!(TraceProbe::from_datagram(&keyed, Some(&key)), Some(p));
        assert_eq!(TraceProbe::from_datagram(&keyed, Some(&other)), None);
        // Without a key the tag is only padding.
        assert_eq!(TraceProbe::from_datagram(&keyed, None), Some(p));
        assert_eq!(
            TraceProbe::from_datagram(&keyed[..PROBE_LEN - 1], None),
            None
        );
        let mut forged = keyed.clone();
        forged[14] = 2;
        assert_eq!(TraceProbe::from_datagram(&forged, Some(&key)), None);
        let padded = p.to_datagram(Some(&key), 1400);
        assert_eq!(padded.len(), 1400);
        assert_eq!(TraceProbe::from_datagram(&padded, Some(&key)), Some(p));
        assert_eq!(p.to_datagram(None, 10).len(), PROBE_LEN, "never shorter");
        // Quotes are parsed from the probe's start, tag or not.
        assert_eq!(TraceProbe::decode(&keyed[..17]), Some(p));
        // Every send the engine may make (retries and canaries included).
        let seqs: std::collections::BTreeSet<u64> = (1..=MAX_HOPS)
            .flat_map(|ttl| {
                (0..MAX_SENDS_PER_TTL).map(move |attempt| TraceProbe { ttl, attempt, ..p })
            })
            .map(|q| q.replay_seq())
            .collect();
        assert_eq!(
            seqs.len(),
            usize::from(MAX_HOPS) * usize::from(MAX_SENDS_PER_TTL),
            "one number per probe"
        );
        let spread = seqs.last().unwrap() - seqs.first().unwrap();
        assert!(spread < 1024, "within one replay window (1,024)");
    }

    #[test]
    fn limits() {
        assert!(check_send(1, 30, 2).is_ok());
        assert_eq!(check_send(1, 0, 2), Err(TraceRequestError::Hops(0)));
        assert_eq!(check_send(1, 65, 2), Err(TraceRequestError::Hops(65)));
        assert_eq!(check_send(1, 30, 4), Err(TraceRequestError::Attempts(4)));
        assert_eq!(check_send(129, 30, 2), Err(TraceRequestError::Ports(129)));
        assert_eq!(max_datagrams_per_send(), 128 * 64 * 16);
        assert!(check_size(10, 30, 2, 1400).is_ok());
        assert!(
            check_size(128, 64, 3, KEYED_PROBE_LEN).is_ok(),
            "bare probes"
        );
        assert_eq!(
            check_size(128, 64, 3, 1400),
            Err(TraceRequestError::Bytes(128 * 64 * 3 * 1400))
        );
        assert_eq!(
            check_size(1, 1, 1, 70_000),
            Err(TraceRequestError::Size(70_000))
        );
    }
}

/// The IP header a router quoted in an ICMP error, as our probe had it when
/// it reached that router: the DSCP / ECN bits and the TTL left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedHeader {
    /// DSCP as the packet had it at the router.
    pub dscp: u8,
    /// ECN bits as the packet had them at the router.
    pub ecn: u8,
    /// TTL / hop limit left at the router.
    pub ttl: u8,
    /// The quoted UDP destination port.
    pub dport: u16,
}

const ICMP4_TIME_EXCEEDED: u8 = 11;
const ICMP4_DEST_UNREACH: u8 = 3;
const ICMP6_TIME_EXCEEDED: u8 = 3;
const ICMP6_DEST_UNREACH: u8 = 1;
const UDP: u8 = 17;

/// An ICMPv4 error as a raw ICMP socket reads it (outer IPv4 header first):
/// the quoted header and the start of the quoted UDP payload. `None` for
/// other ICMP messages, other protocols, or too short a quote.
pub fn parse_raw_icmp4(b: &[u8]) -> Option<(QuotedHeader, &[u8])> {
    let outer = usize::from(b.first()? & 0x0f) * 4;
    let icmp = b.get(outer..)?;
    if !matches!(*icmp.first()?, ICMP4_TIME_EXCEEDED | ICMP4_DEST_UNREACH) {
        return None;
    }
    let inner = icmp.get(8..)?;
    let ihl = usize::from(inner.first()? & 0x0f) * 4;
    if ihl < 20 || *inner.get(9)? != UDP {
        return None;
    }
    let tos = *inner.get(1)?;
    let udp = inner.get(ihl..)?;
    Some((
        QuotedHeader {
            dscp: tos >> 2,
            ecn: tos & 3,
            ttl: *inner.get(8)?,
            dport: u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
        },
        udp.get(8..)?,
    ))
}

/// An ICMPv6 error as a raw ICMPv6 socket reads it (no outer header): the
/// quoted header (UDP directly after the fixed IPv6 header only) and the
/// start of the quoted UDP payload.
pub fn parse_raw_icmp6(b: &[u8]) -> Option<(QuotedHeader, &[u8])> {
    if !matches!(*b.first()?, ICMP6_TIME_EXCEEDED | ICMP6_DEST_UNREACH) {
        return None;
    }
    let inner = b.get(8..)?;
    if *inner.get(6)? != UDP {
        return None;
    }
    let tclass = ((inner.first()? & 0x0f) << 4) | (inner.get(1)? >> 4);
    let udp = inner.get(40..)?;
    Some((
        QuotedHeader {
            dscp: tclass >> 2,
            ecn: tclass & 3,
            ttl: *inner.get(7)?,
            dport: u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]),
        },
        udp.get(8..)?,
    ))
}

/// The trace probe an ICMP error read from a raw ICMP socket (`v6`: an
/// ICMPv6 one) is about, with the IP header the hop quoted: the one parser
/// of those for the client (upstream) and the server (downstream). `None`
/// for anything else.
pub fn quoted_trace_probe(raw: &[u8], v6: bool) -> Option<(QuotedHeader, TraceProbe)> {
    let (q, payload) = if v6 {
        parse_raw_icmp6(raw)
    } else {
        parse_raw_icmp4(raw)
    }?;
    Some((q, TraceProbe::decode(payload)?))
}

#[cfg(test)]
mod quoted_tests {
    use super::*;

    #[test]
    fn v4_time_exceeded_quote() {
        let probe = TraceProbe {
            token: 7,
            port: 5060,
            ttl: 2,
            attempt: 0,
            kind: TraceKind::Up,
        }
        .encode();
        let mut b = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 198, 18, 4, 2, 198, 18, 3, 1,
        ];
        b.extend([11, 0, 0, 0, 0, 0, 0, 0]);
        // Quoted IPv4 header: TOS 46<<2 | ECT(0), TTL 1, UDP.
        b.extend([0x45, (46 << 2) | 2, 0, 0, 0, 0, 0, 0, 1, 17, 0, 0]);
        b.extend([198, 18, 3, 1, 198, 18, 5, 2]);
        b.extend([0x9c, 0x40, 0x13, 0xc4, 0, 40, 0, 0]);
        b.extend(probe);
        let (q, payload) = parse_raw_icmp4(&b).unwrap();
        assert_eq!(
            q,
            QuotedHeader {
                dscp: 46,
                ecn: 2,
                ttl: 1,
                dport: 5060
            }
        );
        assert_eq!(TraceProbe::decode(payload).unwrap().ttl, 2);
        assert_eq!(quoted_trace_probe(&b, false).unwrap().1.ttl, 2);
        assert!(quoted_trace_probe(&b, true).is_none());
        assert!(parse_raw_icmp4(&b[..30]).is_none());
        let mut echo = b.clone();
        echo[20] = 0;
        assert!(parse_raw_icmp4(&echo).is_none());
    }

    #[test]
    fn v6_time_exceeded_quote() {
        let mut b = vec![3, 0, 0, 0, 0, 0, 0, 0];
        // Traffic class 0xb8 (DSCP 46, ECN 0), next header UDP, hop limit 1.
        b.extend([0x6b, 0x80, 0, 0, 0, 40, 17, 1]);
        b.extend([0u8; 32]);
        b.extend([0x9c, 0x40, 0x13, 0xc4, 0, 40, 0, 0]);
        b.extend(*MAGIC);
        let (q, payload) = parse_raw_icmp6(&b).unwrap();
        assert_eq!((q.dscp, q.ecn, q.ttl, q.dport), (46, 0, 1, 5060));
        assert_eq!(payload, MAGIC);
        assert!(parse_raw_icmp6(&b[..40]).is_none());
    }
}
