//! The udpreach probe: a fixed 64-byte header at the start of a UDP datagram.
//!
//! A plain echo server returns the datagram unchanged; a udpreach server turns
//! a request into a reply *in place*, filling the server fields, so a reply is
//! by construction exactly as long as its request (no amplification).
//!
//! ```text
//!  0..4   magic "UDPR"          4      version (1)
//!  5      kind                  6..8   flags (u16, big endian); with FLAG_MARK_REPLY or
//!                                      FLAG_TOS_SEEN byte 6 (the high byte) is a TOS byte
//!  8..16  session token (u64)   16..24 sequence number (u64)
//! 24..32  server receive time   32..40 server send time   (ns since the Unix epoch)
//!         (an authenticated echo *request* carries its send time in 24..32: see auth.rs)
//! 40..44  server's per-flow receive counter (u32)
//! 44..60  source address the server saw (IPv6 or IPv4-mapped)
//! 60..62  source port the server saw    62 TTL / hop limit the server saw (0 = unknown)
//! 63      replies the server withheld from this flow (budget, policy), a running count mod 256
//! 64..    payload, echoed byte for byte; with FLAG_AUTH the last 16 bytes are a tag
//!         (HMAC over everything before it, recomputed by the server for its reply)
//! ```
//!
//! Path-MTU probes (`MtuProbe`) are never echoed: the server's MTU port
//! answers each with a 64-byte `MtuAck` (header only, see [`crate::mtu`]),
//! so even there a reply is never larger than its request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// First four bytes of every probe header.
pub const MAGIC: [u8; 4] = *b"UDPR";
/// Header version this build writes and reads.
pub const VERSION: u8 = 1;
/// Length of the probe header; a datagram is at least this long.
pub const HEADER_LEN: usize = 64;
/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP).
pub const MAX_DATAGRAM: usize = crate::mtu::MAX_PAYLOAD_V4 as usize;
/// Largest UDP payload over IPv6 (65535 - 8 UDP; the IPv6 header is not counted).
pub const MAX_DATAGRAM_V6: usize = crate::mtu::MAX_PAYLOAD_V6 as usize;
/// Flag: the datagram ends with a 16-byte authentication tag.
pub const FLAG_AUTH: u16 = 0x0001;
/// Flag (reply): the server filled in the stamp fields.
pub const FLAG_SERVER_STAMPED: u16 = 0x0002;
/// Flag (echo request): send the reply with the TOS byte / traffic class
/// (DSCP and ECN) in header byte 6, the flags' high byte ([`tos_field`]).
/// Only the reply to this request is marked: same size, same destination.
pub const FLAG_MARK_REPLY: u16 = 0x0004;
/// Flag (echo reply): header byte 6 is the TOS byte / traffic class the
/// request arrived with, and the reply was sent with the TOS the request
/// asked for with [`FLAG_MARK_REPLY`]. Servers older than this flag echo the
/// request's flags, so a reply without it says "not reported".
pub const FLAG_TOS_SEEN: u16 = 0x0008;

/// ECN codepoints by name (RFC 3168), as options take and reports print them.
pub const ECN_NAMES: [(&str, u8); 4] = [("not-ect", 0), ("ect1", 1), ("ect0", 2), ("ce", 3)];

/// The name of ECN codepoint `ecn` (its low two bits).
pub fn ecn_name(ecn: u8) -> &'static str {
    ECN_NAMES[usize::from(ecn & 3)].0
}

/// The codepoint an ECN name stands for (`ect0`, `ect1`, `ce`, `not-ect`).
pub fn parse_ecn(name: &str) -> Option<u8> {
    ECN_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, v)| v)
}

/// The TOS byte carried in the flags' high byte (see [`FLAG_MARK_REPLY`],
/// [`FLAG_TOS_SEEN`]).
pub fn tos_field(flags: u16) -> u8 {
    (flags >> 8) as u8
}

/// The TOS an echo request asks its reply to carry ([`FLAG_MARK_REPLY`]);
/// `None` for anything else. Read before the request is rewritten.
pub fn reply_tos_asked(datagram: &[u8]) -> Option<u8> {
    // On the echo port's hot path: the three bytes that say, no full decode.
    let asks = looks_like_probe(datagram)
        && datagram[4] == VERSION
        && datagram[5] == ProbeKind::EchoRequest as u8
        && u16::from(datagram[7]) & FLAG_MARK_REPLY != 0;
    asks.then(|| datagram[6])
}

/// Writes into an encoded reply the TOS byte its request arrived with
/// ([`FLAG_TOS_SEEN`], byte 6). Before the reply is sealed: the tag covers it.
pub fn set_seen_tos(reply: &mut [u8], tos: u8) {
    if reply.len() >= HEADER_LEN {
        reply[6] = tos;
        reply[7] |= FLAG_TOS_SEEN as u8;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// What a probe is for (header byte 5).
#[repr(u8)]
pub enum ProbeKind {
    /// A ping request: echoed as an `EchoReply`.
    EchoRequest = 1,
    /// The server's answer to an `EchoRequest`.
    EchoReply = 2,
    /// A port-sweep probe to one of the session's test ports.
    PortProbe = 3,
    /// The server's answer to a `PortProbe`.
    PortReply = 4,
    /// A path-MTU probe: client to the server's MTU port, or server to client.
    MtuProbe = 5,
    /// The MTU port's 64-byte answer; the stamp's counter field holds the
    /// probe's length as received.
    MtuAck = 6,
    /// `udpreach nat`: a client's request to a NAT port (opens a flow).
    NatProbe = 7,
    /// The NAT port's 64-byte answer, with the mapped address it saw.
    NatReply = 8,
    /// What a NAT port sends to a flow on request (after an idle gap, or
    /// from another port or address for the filtering test).
    NatLate = 9,
}

impl ProbeKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::EchoRequest,
            2 => Self::EchoReply,
            3 => Self::PortProbe,
            4 => Self::PortReply,
            5 => Self::MtuProbe,
            6 => Self::MtuAck,
            7 => Self::NatProbe,
            8 => Self::NatReply,
            9 => Self::NatLate,
            _ => return None,
        })
    }

    /// True for the kinds a client sends and a server answers.
    pub fn is_request(self) -> bool {
        matches!(
            self,
            Self::EchoRequest | Self::PortProbe | Self::MtuProbe | Self::NatProbe
        )
    }

    /// The kind of the server's answer to this kind.
    pub fn reply_kind(self) -> Self {
        match self {
            Self::EchoRequest | Self::EchoReply => Self::EchoReply,
            Self::PortProbe | Self::PortReply => Self::PortReply,
            Self::MtuProbe | Self::MtuAck => Self::MtuAck,
            Self::NatProbe | Self::NatReply => Self::NatReply,
            Self::NatLate => Self::NatLate,
        }
    }
}

/// Why bytes are not a probe header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Fewer than [`HEADER_LEN`] bytes (the length is given).
    #[error("datagram of {0} bytes is shorter than the 64-byte probe header")]
    TooShort(usize),
    /// Does not start with [`MAGIC`].
    #[error("not a udpreach probe (bad magic)")]
    BadMagic,
    /// A header version other than [`VERSION`].
    #[error("unsupported probe version {0}")]
    BadVersion(u8),
    /// A kind byte this build does not know.
    #[error("unknown probe kind {0}")]
    BadKind(u8),
}

/// What the server fills into a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerStamp {
    /// When the server received the request (ns since the Unix epoch).
    pub rx_ns: u64,
    /// When the server sent the reply (ns since the Unix epoch).
    pub tx_ns: u64,
    /// Requests the server has received on this flow (for an `MtuAck`: the
    /// probe's length as received).
    pub flow_count: u32,
    /// The request's source address and port as the server saw them.
    pub seen_from: SocketAddr,
    /// TTL or hop limit of the request as received; 0 when unknown.
    pub seen_ttl: u8,
    /// Replies the server withheld from this flow so far (rate budget,
    /// policy), modulo 256: the client tells them apart from network loss by
    /// the difference between two replies.
    pub withheld: u8,
}

/// Decoded header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeHeader {
    /// What the probe is for.
    pub kind: ProbeKind,
    /// [`FLAG_AUTH`], [`FLAG_SERVER_STAMPED`].
    pub flags: u16,
    /// The session token (from `Welcome`) or a ping run's random token.
    pub token: u64,
    /// Sequence number, chosen by the client.
    pub seq: u64,
    /// Present in replies from a udpreach server.
    pub stamp: Option<ServerStamp>,
}

impl ProbeHeader {
    /// A reply's report of the TOS byte its request arrived with
    /// ([`FLAG_TOS_SEEN`]); `None` from a server that did not say.
    pub fn seen_tos(&self) -> Option<u8> {
        (!self.kind.is_request() && self.flags & FLAG_TOS_SEEN != 0).then(|| tos_field(self.flags))
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Short probes (16..=63 bytes, too small for the header) start with this
/// magic, then the token (u64) and the low 32 bits of the sequence number
/// (u32), both big endian, then filler. A server echoes them byte for byte,
/// but knows them for udpreach probes: they draw on the probe budget, not
/// the plain-echo rate.
pub const SHORT_MAGIC: [u8; 4] = *b"UDPs";
/// A udpreach server's answer to a short probe: the probe with its magic
/// changed to this, the rest byte for byte. A server never answers it, so
/// two servers cannot bounce a short probe between them.
pub const SHORT_REPLY_MAGIC: [u8; 4] = *b"UDPt";
/// Smallest short probe: magic, token and sequence number.
pub const SHORT_MIN_LEN: usize = 16;

/// True when `buf` is shaped like a short probe (see [`SHORT_MAGIC`]).
pub fn looks_like_short_probe(buf: &[u8]) -> bool {
    (SHORT_MIN_LEN..HEADER_LEN).contains(&buf.len()) && buf[..4] == SHORT_MAGIC
}

/// True when `buf` is shaped like a server's answer to a short probe.
pub fn looks_like_short_reply(buf: &[u8]) -> bool {
    (SHORT_MIN_LEN..HEADER_LEN).contains(&buf.len()) && buf[..4] == SHORT_REPLY_MAGIC
}

/// The start of one of our probes as an ICMP error quotes it (a router may
/// quote as little as the first 8 bytes after the UDP header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotedProbe {
    /// A short probe (see [`SHORT_MAGIC`]): only the low 32 bits of its
    /// sequence number are there.
    pub short: bool,
    /// The session or run token.
    pub token: u64,
    /// The sequence number (an MTU probe carries its size here).
    pub seq: u64,
}

/// Quoted bytes that name a full-header probe's token and sequence number.
pub const QUOTED_HEADER_LEN: usize = 24;

/// The probe an ICMP error's quoted datagram (UDP payload) starts with;
/// `None` when too little was quoted or it is not a udpreach probe. The one
/// parser of quoted probes: ping, mtu and the server's MTU port use it.
pub fn parse_quoted(quoted: &[u8]) -> Option<QuotedProbe> {
    let u64_at = |at: usize| Some(u64::from_be_bytes(quoted.get(at..at + 8)?.try_into().ok()?));
    let magic = quoted.get(..4)?;
    if magic == MAGIC {
        quoted.get(..QUOTED_HEADER_LEN)?;
        Some(QuotedProbe {
            short: false,
            token: u64_at(8)?,
            seq: u64_at(16)?,
        })
    } else if magic == SHORT_MAGIC {
        let seq = quoted.get(12..SHORT_MIN_LEN)?;
        Some(QuotedProbe {
            short: true,
            token: u64_at(4)?,
            seq: u64::from(u32::from_be_bytes(seq.try_into().ok()?)),
        })
    } else {
        None
    }
}

/// True when `buf` starts like a udpreach probe (cheap pre-check for the server).
pub fn looks_like_probe(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && buf[..4] == MAGIC
}

impl ProbeHeader {
    /// A client's request header: no flags, no stamp.
    pub fn request(kind: ProbeKind, token: u64, seq: u64) -> Self {
        ProbeHeader {
            kind,
            flags: 0,
            token,
            seq,
            stamp: None,
        }
    }

    /// Writes the header into the first 64 bytes of `buf`; the rest is left as is.
    pub fn encode(&self, buf: &mut [u8]) -> Result<(), ProbeError> {
        if buf.len() < HEADER_LEN {
            return Err(ProbeError::TooShort(buf.len()));
        }
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4] = VERSION;
        buf[5] = self.kind as u8;
        buf[6..8].copy_from_slice(&self.flags.to_be_bytes());
        buf[8..16].copy_from_slice(&self.token.to_be_bytes());
        buf[16..24].copy_from_slice(&self.seq.to_be_bytes());
        match &self.stamp {
            Some(s) => write_stamp(buf, s),
            None => buf[24..64].fill(0),
        }
        Ok(())
    }

    /// Reads the header from the first 64 bytes of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, ProbeError> {
        if buf.len() < HEADER_LEN {
            return Err(ProbeError::TooShort(buf.len()));
        }
        if buf[0..4] != MAGIC {
            return Err(ProbeError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(ProbeError::BadVersion(buf[4]));
        }
        let kind = ProbeKind::from_u8(buf[5]).ok_or(ProbeError::BadKind(buf[5]))?;
        let flags = u16::from_be_bytes([buf[6], buf[7]]);
        let stamp = if kind.is_request() {
            None
        } else {
            let ip6 = Ipv6Addr::from(<[u8; 16]>::try_from(&buf[44..60]).expect("16 bytes"));
            let ip = match ip6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(ip6),
            };
            Some(ServerStamp {
                rx_ns: u64_at(buf, 24),
                tx_ns: u64_at(buf, 32),
                flow_count: u32::from_be_bytes(buf[40..44].try_into().expect("4 bytes")),
                seen_from: SocketAddr::new(ip, u16::from_be_bytes([buf[60], buf[61]])),
                seen_ttl: buf[62],
                withheld: buf[63],
            })
        };
        Ok(ProbeHeader {
            kind,
            flags,
            token: u64_at(buf, 8),
            seq: u64_at(buf, 16),
            stamp,
        })
    }
}

fn write_stamp(buf: &mut [u8], s: &ServerStamp) {
    buf[24..32].copy_from_slice(&s.rx_ns.to_be_bytes());
    buf[32..40].copy_from_slice(&s.tx_ns.to_be_bytes());
    buf[40..44].copy_from_slice(&s.flow_count.to_be_bytes());
    let ip6 = match s.seen_from.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    buf[44..60].copy_from_slice(&ip6.octets());
    buf[60..62].copy_from_slice(&s.seen_from.port().to_be_bytes());
    buf[62] = s.seen_ttl;
    buf[63] = s.withheld;
}

/// Turns a request, in place, into its reply: same length, same payload, the
/// kind switched to its reply kind and the server fields filled in.
/// The send time is written last by [`restamp_tx`] just before sending.
pub fn make_reply_in_place(buf: &mut [u8], stamp: &ServerStamp) -> Result<ProbeHeader, ProbeError> {
    let mut h = ProbeHeader::decode(buf)?;
    h.kind = h.kind.reply_kind();
    h.flags |= FLAG_SERVER_STAMPED;
    h.stamp = Some(*stamp);
    h.encode(buf)?;
    Ok(h)
}

/// Overwrites the server send timestamp of an encoded reply.
pub fn restamp_tx(buf: &mut [u8], tx_ns: u64) {
    if buf.len() >= HEADER_LEN {
        buf[32..40].copy_from_slice(&tx_ns.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_probes_are_parsed_once_here() {
        let mut full = [0u8; HEADER_LEN];
        ProbeHeader::request(ProbeKind::MtuProbe, 7, 1400)
            .encode(&mut full)
            .unwrap();
        let q = parse_quoted(&full[..QUOTED_HEADER_LEN]).unwrap();
        assert_eq!((q.short, q.token, q.seq), (false, 7, 1400));
        assert_eq!(parse_quoted(&full[..QUOTED_HEADER_LEN - 1]), None);
        let mut short = [0u8; SHORT_MIN_LEN];
        short[..4].copy_from_slice(&SHORT_MAGIC);
        short[4..12].copy_from_slice(&9u64.to_be_bytes());
        short[12..16].copy_from_slice(&5u32.to_be_bytes());
        let q = parse_quoted(&short).unwrap();
        assert_eq!((q.short, q.token, q.seq), (true, 9, 5));
        assert_eq!(parse_quoted(&short[..8]), None);
        assert_eq!(parse_quoted(b"nope, not ours at all"), None);
    }
    use proptest::prelude::*;

    #[test]
    fn round_trip_request_and_reply() {
        let mut buf = vec![0xAAu8; 100];
        let h = ProbeHeader::request(ProbeKind::EchoRequest, 7, 42);
        h.encode(&mut buf).unwrap();
        assert_eq!(ProbeHeader::decode(&buf).unwrap(), h);
        let stamp = ServerStamp {
            rx_ns: 1,
            tx_ns: 2,
            flow_count: 3,
            seen_from: "198.18.0.1:5555".parse().unwrap(),
            seen_ttl: 63,
            withheld: 3,
        };
        let r = make_reply_in_place(&mut buf, &stamp).unwrap();
        assert_eq!(buf.len(), 100);
        assert!(buf[64..].iter().all(|&b| b == 0xAA), "payload kept");
        let d = ProbeHeader::decode(&buf).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.kind, ProbeKind::EchoReply);
        assert_eq!(d.stamp.unwrap().seen_from, stamp.seen_from);
        let stamp6 = ServerStamp {
            seen_from: "[fd00::1]:9".parse().unwrap(),
            ..stamp
        };
        make_reply_in_place(&mut buf, &stamp6).unwrap();
        assert_eq!(
            ProbeHeader::decode(&buf).unwrap().stamp.unwrap().seen_from,
            stamp6.seen_from
        );
    }

    impl ServerStamp {
        fn default_for_tests() -> Self {
            ServerStamp {
                rx_ns: 1,
                tx_ns: 2,
                flow_count: 3,
                seen_from: "198.18.0.1:5555".parse().unwrap(),
                seen_ttl: 63,
                withheld: 0,
            }
        }
    }

    #[test]
    fn ecn_names() {
        for v in 0..4 {
            assert_eq!(parse_ecn(ecn_name(v)), Some(v));
        }
        assert_eq!(parse_ecn("CE"), Some(3));
        assert_eq!(parse_ecn("ect2"), None);
    }

    #[test]
    fn marking_asked_and_seen_tos_round_trip() {
        let mut buf = vec![0u8; 80];
        let mut h = ProbeHeader::request(ProbeKind::EchoRequest, 7, 1);
        h.flags = FLAG_MARK_REPLY | (u16::from(46u8 << 2 | 2) << 8);
        h.encode(&mut buf).unwrap();
        assert_eq!(reply_tos_asked(&buf), Some(46 << 2 | 2));
        assert_eq!(ProbeHeader::decode(&buf).unwrap().seen_tos(), None);
        let stamp = ServerStamp {
            seen_ttl: 1,
            ..ServerStamp::default_for_tests()
        };
        // An older server: the request's flags come back, no TOS_SEEN.
        make_reply_in_place(&mut buf, &stamp).unwrap();
        assert_eq!(ProbeHeader::decode(&buf).unwrap().seen_tos(), None);
        assert_eq!(reply_tos_asked(&buf), None, "a reply asks for nothing");
        set_seen_tos(&mut buf, 10 << 2);
        let d = ProbeHeader::decode(&buf).unwrap();
        assert_eq!(d.seen_tos(), Some(10 << 2));
        assert_eq!(
            d.flags & 0xff,
            FLAG_SERVER_STAMPED | FLAG_MARK_REPLY | FLAG_TOS_SEEN
        );
        let mut plain = vec![0u8; 64];
        ProbeHeader::request(ProbeKind::EchoRequest, 7, 1)
            .encode(&mut plain)
            .unwrap();
        assert_eq!(reply_tos_asked(&plain), None);
        assert_eq!(reply_tos_asked(&plain[..10]), None);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(ProbeHeader::decode(&[0; 10]), Err(ProbeError::TooShort(10)));
        assert_eq!(ProbeHeader::decode(&[0; 64]), Err(ProbeError::BadMagic));
        let mut b = [0u8; 64];
        b[..4].copy_from_slice(&MAGIC);
        b[4] = 9;
        assert_eq!(ProbeHeader::decode(&b), Err(ProbeError::BadVersion(9)));
        b[4] = VERSION;
        b[5] = 77;
        assert_eq!(ProbeHeader::decode(&b), Err(ProbeError::BadKind(77)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ProbeHeader::decode(&bytes);
        }

        #[test]
        fn valid_header_then_garbage(kind in 1u8..=6, tail in proptest::collection::vec(any::<u8>(), 0..100),
                                     token in any::<u64>(), seq in any::<u64>()) {
            let mut buf = vec![0u8; HEADER_LEN];
            ProbeHeader::request(ProbeKind::from_u8(kind).unwrap(), token, seq).encode(&mut buf).unwrap();
            buf.extend_from_slice(&tail);
            let h = ProbeHeader::decode(&buf).unwrap();
            prop_assert_eq!(h.token, token);
            prop_assert_eq!(h.seq, seq);
            let len = buf.len();
            let stamp = ServerStamp { rx_ns: 0, tx_ns: 0, flow_count: 0, seen_from: "198.18.0.1:1".parse().unwrap(), seen_ttl: 0, withheld: 0 };
            make_reply_in_place(&mut buf, &stamp).unwrap();
            prop_assert_eq!(buf.len(), len);
        }
    }
}
