//! STAMP, the IETF's Simple Two-way Active Measurement Protocol (RFC 8762),
//! with the session-sender identifier and TLVs of RFC 8972: the packet
//! layouts of both modes (unauthenticated 44 bytes, authenticated 112 bytes
//! with HMAC-SHA-256 truncated to 16 bytes), NTP and PTP timestamps, the
//! error estimate, and the reflector's answer to one request as a pure
//! function (bytes in, bytes out, never longer than the request).
//!
//! Unauthenticated layouts (byte offsets):
//!
//! ```text
//! sender:    0 seq(4) | 4 timestamp(8) | 12 error estimate(2) | 14 SSID(2) | 16 MBZ(28) | 44 TLVs
//! reflector: 0 seq(4) | 4 timestamp(8) | 12 error estimate(2) | 14 SSID(2) | 16 receive timestamp(8)
//!            24 sender seq(4) | 28 sender timestamp(8) | 36 sender error estimate(2) | 38 MBZ(2)
//!            40 sender TTL(1) | 41 MBZ(3) | 44 TLVs
//! ```
//!
//! Authenticated layouts:
//!
//! ```text
//! sender:    0 seq(4) | 4 MBZ(12) | 16 timestamp(8) | 24 error estimate(2) | 26 SSID(2)
//!            28 MBZ(68) | 96 HMAC(16) | 112 TLVs
//! reflector: 0 seq(4) | 4 MBZ(12) | 16 timestamp(8) | 24 error estimate(2) | 26 SSID(2) | 28 MBZ(4)
//!            32 receive timestamp(8) | 40 MBZ(8) | 48 sender seq(4) | 52 MBZ(12)
//!            64 sender timestamp(8) | 72 sender error estimate(2) | 74 MBZ(6) | 80 sender TTL(1)
//!            81 MBZ(15) | 96 HMAC(16) | 112 TLVs
//! ```
//!
//! The base HMAC covers every byte before it (0..96). A TLV is
//! `flags(1) | type(1) | length(2) | value`; the HMAC TLV (type 8), last,
//! covers the packet's sequence number and the TLVs before it (RFC 8972 §4.8).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// The IANA port for STAMP.
pub const PORT: u16 = 862;
/// Base packet length, unauthenticated mode (sender and reflector).
pub const OPEN_LEN: usize = 44;
/// Base packet length, authenticated mode (sender and reflector).
pub const AUTH_LEN: usize = 112;
/// The truncated HMAC-SHA-256 in authenticated packets and the HMAC TLV.
pub const HMAC_LEN: usize = 16;
/// Where the base HMAC sits in an authenticated packet (it covers 0..96).
pub const AUTH_HMAC_AT: usize = 96;
/// A TLV's flags, type and length.
pub const TLV_HEADER_LEN: usize = 4;
/// Most TLVs one request may carry; the rest of the packet is echoed
/// unchanged, so a hostile request costs bounded work.
pub const MAX_TLVS: usize = 32;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// TLV types this implementation understands (IANA "STAMP TLV Types").
pub mod tlv_type {
    /// Extra Padding TLV (RFC 8972 §4.2).
    pub const EXTRA_PADDING: u8 = 1;
    /// Class of Service TLV (RFC 8972 §4.4).
    pub const CLASS_OF_SERVICE: u8 = 4;
    /// HMAC TLV (RFC 8972 §4.8), the last TLV in authenticated mode.
    pub const HMAC: u8 = 8;
}

/// TLV flags (RFC 8972 §4.1): Unrecognized, Malformed, Integrity failed.
pub mod tlv_flag {
    /// U flag: the reflector does not know this TLV's type.
    pub const UNRECOGNIZED: u8 = 0x80;
    /// M flag: the TLV's length or value is malformed.
    pub const MALFORMED: u8 = 0x40;
    /// I flag: the HMAC TLV did not verify.
    pub const INTEGRITY_FAILED: u8 = 0x20;
}

/// Length of the Class of Service TLV's value.
pub const COS_VALUE_LEN: usize = 4;

/// Unauthenticated ("open") or authenticated mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unauthenticated mode: 44-byte base packets, no HMAC.
    Open,
    /// Authenticated mode: 112-byte base packets sealed with a truncated HMAC-SHA-256.
    Authenticated,
}

impl Mode {
    /// Base packet length in this mode ([`OPEN_LEN`] or [`AUTH_LEN`]).
    pub fn base_len(self) -> usize {
        match self {
            Mode::Open => OPEN_LEN,
            Mode::Authenticated => AUTH_LEN,
        }
    }
}

/// Byte offsets of one mode's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Sequence number (4 bytes).
    pub seq: usize,
    /// Transmit timestamp (8 bytes).
    pub timestamp: usize,
    /// Error estimate (2 bytes).
    pub error_estimate: usize,
    /// Session-sender identifier, SSID (2 bytes, RFC 8972 §3).
    pub ssid: usize,
    /// Reflector's receive timestamp (8 bytes; reflector packets only).
    pub receive_timestamp: usize,
    /// Sender's sequence number echoed (4 bytes; reflector packets only).
    pub sender_seq: usize,
    /// Sender's timestamp echoed (8 bytes; reflector packets only).
    pub sender_timestamp: usize,
    /// Sender's error estimate echoed (2 bytes; reflector packets only).
    pub sender_error_estimate: usize,
    /// Sender TTL / hop limit (1 byte; reflector packets only).
    pub sender_ttl: usize,
    /// Base HMAC (16 bytes), authenticated mode only.
    pub hmac: Option<usize>,
    /// Start of the TLV area (the base packet length).
    pub tlvs: usize,
}

impl Layout {
    /// The field offsets of `mode` (RFC 8762 §4.2-4.3, SSID per RFC 8972 §3).
    pub const fn of(mode: Mode) -> Layout {
        match mode {
            Mode::Open => Layout {
                seq: 0,
                timestamp: 4,
                error_estimate: 12,
                ssid: 14,
                receive_timestamp: 16,
                sender_seq: 24,
                sender_timestamp: 28,
                sender_error_estimate: 36,
                sender_ttl: 40,
                hmac: None,
                tlvs: OPEN_LEN,
            },
            Mode::Authenticated => Layout {
                seq: 0,
                timestamp: 16,
                error_estimate: 24,
                ssid: 26,
                receive_timestamp: 32,
                sender_seq: 48,
                sender_timestamp: 64,
                sender_error_estimate: 72,
                sender_ttl: 80,
                hmac: Some(AUTH_HMAC_AT),
                tlvs: AUTH_LEN,
            },
        }
    }
}

/// Why a STAMP packet could not be read or was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StampError {
    #[error("STAMP packet of {len} bytes is shorter than the {need}-byte base packet")]
    /// The packet is shorter than the mode's base packet.
    TooShort {
        /// The packet's length.
        len: usize,
        /// The base packet length the mode needs.
        need: usize,
    },
    #[error("STAMP packet's HMAC does not match")]
    /// The base HMAC does not verify (authenticated mode).
    BadHmac,
}

/// The 16-bit error estimate (RFC 4656 §4.1.2, used by RFC 8762 §4.2.1):
/// S (clock synchronised to UTC), Z (0 NTP, 1 PTP timestamps), a 6-bit
/// scale and an 8-bit multiplier: error = multiplier × 2^(scale − 32) s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorEstimate(pub u16);

impl ErrorEstimate {
    /// S bit: the clock is synchronised to UTC.
    pub const SYNCHRONIZED: u16 = 0x8000;
    /// Z bit: timestamps are PTP (set) or NTP (clear) format.
    pub const PTP: u16 = 0x4000;

    /// Builds an estimate from the S and Z bits, a 6-bit scale and a multiplier.
    pub fn new(synchronized: bool, ptp: bool, scale: u8, multiplier: u8) -> Self {
        let mut v = u16::from(scale & 0x3f) << 8 | u16::from(multiplier);
        if synchronized {
            v |= Self::SYNCHRONIZED;
        }
        if ptp {
            v |= Self::PTP;
        }
        ErrorEstimate(v)
    }

    /// An unsynchronised NTP clock with an estimate of about 1 ms (what a
    /// host that cannot tell its clock's error says).
    pub fn unsynchronized_ntp() -> Self {
        // 1 × 2^(22-32) s ≈ 0.98 ms.
        Self::new(false, false, 22, 1)
    }

    /// Whether the S bit (synchronised to UTC) is set.
    pub fn synchronized(self) -> bool {
        self.0 & Self::SYNCHRONIZED != 0
    }

    /// Whether the Z bit (PTP timestamps) is set.
    pub fn ptp(self) -> bool {
        self.0 & Self::PTP != 0
    }

    /// The timestamp format the Z bit selects.
    pub fn format(self) -> TimestampFormat {
        if self.ptp() {
            TimestampFormat::Ptp
        } else {
            TimestampFormat::Ntp
        }
    }

    /// The estimate in nanoseconds.
    pub fn nanos(self) -> f64 {
        let scale = i32::from((self.0 >> 8) as u8 & 0x3f);
        f64::from(self.0 as u8) * 2f64.powi(scale - 32) * 1e9
    }
}

/// How a 64-bit timestamp is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampFormat {
    /// 32-bit seconds since 1900 and a 32-bit binary fraction.
    Ntp,
    /// PTPv2 truncated: 32-bit seconds since 1970 and 32-bit nanoseconds.
    Ptp,
}

impl TimestampFormat {
    /// Encodes Unix-epoch nanoseconds.
    pub fn encode(self, unix_ns: u64) -> u64 {
        let secs = unix_ns / 1_000_000_000;
        let nanos = unix_ns % 1_000_000_000;
        match self {
            TimestampFormat::Ntp => {
                let s = (secs + NTP_UNIX_OFFSET_SECS) & 0xffff_ffff;
                let frac = (((nanos << 32) + 500_000_000) / 1_000_000_000).min(0xffff_ffff);
                s << 32 | frac
            }
            TimestampFormat::Ptp => (secs & 0xffff_ffff) << 32 | nanos,
        }
    }

    /// Decodes to Unix-epoch nanoseconds (NTP era 0, the one in use until 2036).
    pub fn decode(self, raw: u64) -> u64 {
        let secs = raw >> 32;
        let low = raw & 0xffff_ffff;
        match self {
            TimestampFormat::Ntp => {
                let unix = secs.saturating_sub(NTP_UNIX_OFFSET_SECS);
                unix * 1_000_000_000 + ((low * 1_000_000_000 + (1 << 31)) >> 32)
            }
            TimestampFormat::Ptp => secs * 1_000_000_000 + low.min(999_999_999),
        }
    }
}

/// The fields of a session-sender's test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderPacket {
    /// Sender's sequence number.
    pub seq: u32,
    /// When the sender sent this packet (raw NTP or PTP timestamp).
    pub timestamp: u64,
    /// The sender clock's error estimate.
    pub error_estimate: ErrorEstimate,
    /// Session-sender identifier (RFC 8972 §3).
    pub ssid: u16,
}

/// The fields of a session-reflector's test packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReflectorPacket {
    /// The reflector's own sequence number (its counter when stateful, the
    /// sender's number echoed when stateless).
    pub seq: u32,
    /// When the reflector sent this packet.
    pub timestamp: u64,
    /// The reflector clock's error estimate.
    pub error_estimate: ErrorEstimate,
    /// Session-sender identifier, copied from the request.
    pub ssid: u16,
    /// When the reflector received the request.
    pub receive_timestamp: u64,
    /// The request's sequence number, echoed.
    pub sender_seq: u32,
    /// The request's timestamp, echoed.
    pub sender_timestamp: u64,
    /// The request's error estimate, echoed.
    pub sender_error_estimate: ErrorEstimate,
    /// TTL or hop limit of the request as it arrived (0: unknown).
    pub sender_ttl: u8,
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// HMAC-SHA-256 truncated to [`HMAC_LEN`] bytes.
pub fn hmac16(key: &[u8], parts: &[&[u8]]) -> [u8; HMAC_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; HMAC_LEN];
    out.copy_from_slice(&full[..HMAC_LEN]);
    out
}

/// Equal without an early exit (no timing hint about where they differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_len(buf: &[u8], mode: Mode) -> Result<(), StampError> {
    let need = mode.base_len();
    if buf.len() < need {
        return Err(StampError::TooShort {
            len: buf.len(),
            need,
        });
    }
    Ok(())
}

/// Checks an authenticated packet's base HMAC.
pub fn verify_base_hmac(buf: &[u8], key: &[u8]) -> Result<(), StampError> {
    check_len(buf, Mode::Authenticated)?;
    let want = hmac16(key, &[&buf[..AUTH_HMAC_AT]]);
    if same(&want, &buf[AUTH_HMAC_AT..AUTH_LEN]) {
        Ok(())
    } else {
        Err(StampError::BadHmac)
    }
}

fn seal_base(buf: &mut [u8], key: &[u8]) {
    let mac = hmac16(key, &[&buf[..AUTH_HMAC_AT]]);
    buf[AUTH_HMAC_AT..AUTH_LEN].copy_from_slice(&mac);
}

impl SenderPacket {
    /// Writes the base packet (zeroed MBZ fields), then `tlvs` as they are;
    /// with `key`, authenticated mode and its HMAC.
    pub fn encode(&self, key: Option<&[u8]>, tlvs: &[u8], out: &mut Vec<u8>) {
        let mode = if key.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        };
        let l = Layout::of(mode);
        out.clear();
        out.resize(mode.base_len(), 0);
        put_u32(out, l.seq, self.seq);
        put_u64(out, l.timestamp, self.timestamp);
        put_u16(out, l.error_estimate, self.error_estimate.0);
        put_u16(out, l.ssid, self.ssid);
        if let Some(k) = key {
            seal_base(out, k);
        }
        out.extend_from_slice(tlvs);
    }

    /// Reads a sender packet (the HMAC is not checked here).
    pub fn decode(buf: &[u8], mode: Mode) -> Result<SenderPacket, StampError> {
        check_len(buf, mode)?;
        let l = Layout::of(mode);
        Ok(SenderPacket {
            seq: get_u32(buf, l.seq),
            timestamp: get_u64(buf, l.timestamp),
            error_estimate: ErrorEstimate(get_u16(buf, l.error_estimate)),
            ssid: get_u16(buf, l.ssid),
        })
    }
}

impl ReflectorPacket {
    /// Writes the base packet, then `tlvs`; with `key`, authenticated.
    pub fn encode(&self, key: Option<&[u8]>, tlvs: &[u8], out: &mut Vec<u8>) {
        let mode = if key.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        };
        out.clear();
        out.resize(mode.base_len(), 0);
        self.write_base(out, mode);
        if let Some(k) = key {
            seal_base(out, k);
        }
        out.extend_from_slice(tlvs);
    }

    fn write_base(&self, out: &mut [u8], mode: Mode) {
        let l = Layout::of(mode);
        put_u32(out, l.seq, self.seq);
        put_u64(out, l.timestamp, self.timestamp);
        put_u16(out, l.error_estimate, self.error_estimate.0);
        put_u16(out, l.ssid, self.ssid);
        put_u64(out, l.receive_timestamp, self.receive_timestamp);
        put_u32(out, l.sender_seq, self.sender_seq);
        put_u64(out, l.sender_timestamp, self.sender_timestamp);
        put_u16(out, l.sender_error_estimate, self.sender_error_estimate.0);
        out[l.sender_ttl] = self.sender_ttl;
    }

    /// Reads a reflector packet (the HMAC is not checked here).
    pub fn decode(buf: &[u8], mode: Mode) -> Result<ReflectorPacket, StampError> {
        check_len(buf, mode)?;
        let l = Layout::of(mode);
        Ok(ReflectorPacket {
            seq: get_u32(buf, l.seq),
            timestamp: get_u64(buf, l.timestamp),
            error_estimate: ErrorEstimate(get_u16(buf, l.error_estimate)),
            ssid: get_u16(buf, l.ssid),
            receive_timestamp: get_u64(buf, l.receive_timestamp),
            sender_seq: get_u32(buf, l.sender_seq),
            sender_timestamp: get_u64(buf, l.sender_timestamp),
            sender_error_estimate: ErrorEstimate(get_u16(buf, l.sender_error_estimate)),
            sender_ttl: buf[l.sender_ttl],
        })
    }
}

/// The Class of Service TLV's value (RFC 8972 §4.4 with verified erratum
/// 8199, and EC1 from draft-ietf-ippm-stamp-cos-ecn in bits RFC 8972
/// reserved):
///
/// ```text
/// |   DSCP1   |   DSCP2   |EC2|RPD|EC1|RPE|        Reserved       |
/// ```
///
/// DSCP1/EC1: what the sender asks the reply to carry; DSCP2/EC2: what
/// arrived at the reflector; RPD = 1: the reflector did not use DSCP1
/// (policy). RPE is left as the sender wrote it (0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassOfService {
    /// DSCP the sender asks the reply to carry (6 bits).
    pub dscp1: u8,
    /// ECN the sender asks the reply to carry (EC1, 2 bits).
    pub ecn1: u8,
    /// DSCP the request arrived with at the reflector (6 bits).
    pub dscp2: u8,
    /// ECN the request arrived with at the reflector (EC2, 2 bits).
    pub ecn2: u8,
    /// RPD, reverse path DSCP: 1 if the reflector did not use DSCP1 (2 bits).
    pub rp: u8,
}

impl ClassOfService {
    /// Reads the fields from the TLV's 4-byte value.
    pub fn decode(v: &[u8; COS_VALUE_LEN]) -> Self {
        ClassOfService {
            dscp1: v[0] >> 2,
            dscp2: (v[0] & 3) << 4 | v[1] >> 4,
            ecn2: (v[1] >> 2) & 3,
            rp: v[1] & 3,
            ecn1: v[2] >> 6,
        }
    }

    /// Writes the fields into the TLV's 4-byte value (reserved bits zero).
    pub fn encode(&self) -> [u8; COS_VALUE_LEN] {
        let dscp2 = self.dscp2 & 0x3f;
        [
            (self.dscp1 & 0x3f) << 2 | dscp2 >> 4,
            (dscp2 & 0x0f) << 4 | (self.ecn2 & 3) << 2 | (self.rp & 3),
            (self.ecn1 & 3) << 6,
            0,
        ]
    }

    /// The whole TLV (header and value) as a sender writes it.
    pub fn request_tlv(dscp: u8, ecn: u8) -> [u8; TLV_HEADER_LEN + COS_VALUE_LEN] {
        let v = ClassOfService {
            dscp1: dscp,
            ecn1: ecn,
            ..Default::default()
        }
        .encode();
        [
            0,
            tlv_type::CLASS_OF_SERVICE,
            0,
            COS_VALUE_LEN as u8,
            v[0],
            v[1],
            v[2],
            v[3],
        ]
    }
}

/// One TLV as it sits in a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Offset of its header within the TLV area.
    pub at: usize,
    /// Flags byte (U, M, I; RFC 8972 §4.1).
    pub flags: u8,
    /// TLV type (see [`tlv_type`]).
    pub kind: u8,
    /// The value, `length` bytes after the header.
    pub value: &'a [u8],
}

/// The TLVs in `area` (the bytes after the base packet), at most
/// [`MAX_TLVS`]; stops at the first that does not fit (a malformed one).
/// The second value is the offset where parsing stopped.
pub fn parse_tlvs(area: &[u8]) -> (Vec<Tlv<'_>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while out.len() < MAX_TLVS && area.len() - at >= TLV_HEADER_LEN {
        let len = usize::from(get_u16(area, at + 2));
        let end = at + TLV_HEADER_LEN + len;
        if end > area.len() {
            break;
        }
        out.push(Tlv {
            at,
            flags: area[at],
            kind: area[at + 1],
            value: &area[at + TLV_HEADER_LEN..end],
        });
        at = end;
    }
    (out, at)
}

/// The Class of Service TLV in a packet's TLV area, if any.
pub fn find_cos(area: &[u8]) -> Option<ClassOfService> {
    let (tlvs, _) = parse_tlvs(area);
    tlvs.iter()
        .find(|t| t.kind == tlv_type::CLASS_OF_SERVICE && t.value.len() == COS_VALUE_LEN)
        .map(|t| ClassOfService::decode(t.value.try_into().expect("4 bytes")))
}

/// What the reflector knows about one request beyond its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reflection {
    /// The reflector's sequence number for this reply.
    pub seq: u32,
    /// When the request arrived and when the reply leaves (Unix ns).
    pub receive_unix_ns: u64,
    /// When the reply leaves the reflector (Unix ns).
    pub transmit_unix_ns: u64,
    /// The reflector clock's estimate; its Z bit picks NTP or PTP format.
    pub error_estimate: ErrorEstimate,
    /// TTL / hop limit of the request as received (0: unknown).
    pub ttl: u8,
    /// The TOS / traffic class byte the request arrived with, if known.
    pub tos: Option<u8>,
    /// Whether the reply will carry the DSCP the sender asked for in a
    /// Class of Service TLV (else the TLV says so with RP = 1).
    pub honours_dscp: bool,
}

/// What reflecting one request found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reflected {
    /// The request's sender fields.
    pub sender: SenderPacket,
    /// DSCP and ECN the sender asked the reply to carry (CoS TLV).
    pub requested_tos: Option<(u8, u8)>,
}

/// Builds the reflector's answer to `request` in `out`, exactly as long as
/// the request (RFC 8762 §4.3: the reflected packet is the same size; the
/// TLVs are echoed, the Class of Service TLV filled in, unknown TLVs
/// flagged U, a TLV running past the end flagged M). In authenticated mode
/// (`key`), a request with a wrong base HMAC gets no answer (the error);
/// a wrong HMAC TLV flags every TLV I and the answer goes out.
pub fn reflect(
    request: &[u8],
    key: Option<&[u8]>,
    r: &Reflection,
    out: &mut Vec<u8>,
) -> Result<Reflected, StampError> {
    let mode = if key.is_some() {
        Mode::Authenticated
    } else {
        Mode::Open
    };
    let sender = SenderPacket::decode(request, mode)?;
    if let Some(k) = key {
        verify_base_hmac(request, k)?;
    }
    let format = r.error_estimate.format();
    let reply = ReflectorPacket {
        seq: r.seq,
        timestamp: format.encode(r.transmit_unix_ns),
        error_estimate: r.error_estimate,
        ssid: sender.ssid,
        receive_timestamp: format.encode(r.receive_unix_ns),
        sender_seq: sender.seq,
        sender_timestamp: sender.timestamp,
        sender_error_estimate: sender.error_estimate,
        sender_ttl: r.ttl,
    };
    let base = mode.base_len();
    out.clear();
    out.resize(base, 0);
    reply.write_base(out, mode);
    if let Some(k) = key {
        seal_base(out, k);
    }
    out.extend_from_slice(&request[base..]);
    let requested_tos = reflect_tlvs(request, out, key, r);
    debug_assert_eq!(out.len(), request.len());
    Ok(Reflected {
        sender,
        requested_tos,
    })
}

/// Rewrites the TLV area of `out` (a copy of the request's) in place.
fn reflect_tlvs(
    request: &[u8],
    out: &mut [u8],
    key: Option<&[u8]>,
    r: &Reflection,
) -> Option<(u8, u8)> {
    let base = if key.is_some() { AUTH_LEN } else { OPEN_LEN };
    let req_area = &request[base..];
    let (tlvs, end) = parse_tlvs(req_area);
    let area = &mut out[base..];
    let mut requested = None;
    let mut hmac_at = None;
    for t in &tlvs {
        match t.kind {
            tlv_type::CLASS_OF_SERVICE if t.value.len() == COS_VALUE_LEN => {
                let mut cos = ClassOfService::decode(t.value.try_into().expect("4 bytes"));
                requested = Some((cos.dscp1, cos.ecn1));
                if let Some(tos) = r.tos {
                    cos.dscp2 = tos >> 2;
                    cos.ecn2 = tos & 3;
                }
                cos.rp = u8::from(!r.honours_dscp);
                let v = cos.encode();
                area[t.at + TLV_HEADER_LEN..t.at + TLV_HEADER_LEN + COS_VALUE_LEN]
                    .copy_from_slice(&v);
            }
            tlv_type::CLASS_OF_SERVICE => area[t.at] |= tlv_flag::MALFORMED,
            tlv_type::EXTRA_PADDING => {}
            tlv_type::HMAC if t.value.len() == HMAC_LEN && key.is_some() => hmac_at = Some(t.at),
            tlv_type::HMAC if key.is_some() => area[t.at] |= tlv_flag::MALFORMED,
            _ => area[t.at] |= tlv_flag::UNRECOGNIZED,
        }
    }
    // What follows the last whole TLV does not fit: flag it if it has a header.
    if req_area.len() - end >= TLV_HEADER_LEN && tlvs.len() < MAX_TLVS {
        area[end] |= tlv_flag::MALFORMED;
    }
    if let (Some(k), Some(at)) = (key, hmac_at) {
        let want = hmac16(k, &[&request[..4], &req_area[..at]]);
        if !same(
            &want,
            &req_area[at + TLV_HEADER_LEN..at + TLV_HEADER_LEN + HMAC_LEN],
        ) {
            for t in &tlvs {
                area[t.at] |= tlv_flag::INTEGRITY_FAILED;
            }
        }
        let (seq, before) = (out[..4].to_vec(), base + at);
        let mac = hmac16(k, &[&seq, &out[base..before]]);
        out[before + TLV_HEADER_LEN..before + TLV_HEADER_LEN + HMAC_LEN].copy_from_slice(&mac);
    }
    requested
}

/// Appends an HMAC TLV over `seq` and the TLVs already in `packet` after
/// the base (authenticated mode, RFC 8972 §4.8).
pub fn append_hmac_tlv(packet: &mut Vec<u8>, key: &[u8]) {
    let mac = hmac16(key, &[&packet[..4], &packet[AUTH_LEN..]]);
    packet.extend_from_slice(&[0, tlv_type::HMAC, 0, HMAC_LEN as u8]);
    packet.extend_from_slice(&mac);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn field_offsets_match_rfc_8762_figures() {
        // RFC 8762 Figures 2-5 with the SSID of RFC 8972 §3.
        let open = Layout::of(Mode::Open);
        assert_eq!(
            (open.seq, open.timestamp, open.error_estimate, open.ssid),
            (0, 4, 12, 14)
        );
        assert_eq!(
            (
                open.receive_timestamp,
                open.sender_seq,
                open.sender_timestamp,
                open.sender_error_estimate,
                open.sender_ttl,
                open.tlvs
            ),
            (16, 24, 28, 36, 40, 44)
        );
        let auth = Layout::of(Mode::Authenticated);
        assert_eq!(
            (auth.seq, auth.timestamp, auth.error_estimate, auth.ssid),
            (0, 16, 24, 26)
        );
        assert_eq!(
            (
                auth.receive_timestamp,
                auth.sender_seq,
                auth.sender_timestamp,
                auth.sender_error_estimate,
                auth.sender_ttl,
                auth.hmac,
                auth.tlvs
            ),
            (32, 48, 64, 72, 80, Some(96), 112)
        );
    }

    #[test]
    fn sender_bytes_are_the_rfc_layout() {
        let p = SenderPacket {
            seq: 0x0102_0304,
            timestamp: 0x1112_1314_1516_1718,
            error_estimate: ErrorEstimate(0x8001),
            ssid: 0xabcd,
        };
        let mut b = Vec::new();
        p.encode(None, &[], &mut b);
        let mut want = vec![0u8; 44];
        want[..16].copy_from_slice(&[
            1, 2, 3, 4, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x80, 0x01, 0xab, 0xcd,
        ]);
        assert_eq!(b, want);
        p.encode(Some(b"0123456789abcdef"), &[], &mut b);
        assert_eq!(b.len(), 112);
        assert_eq!(&b[..4], &[1, 2, 3, 4]);
        assert!(b[4..16].iter().all(|&x| x == 0));
        assert_eq!(&b[16..24], &0x1112_1314_1516_1718u64.to_be_bytes());
        assert_eq!(&b[24..28], &[0x80, 0x01, 0xab, 0xcd]);
        assert!(b[28..96].iter().all(|&x| x == 0));
        assert_eq!(verify_base_hmac(&b, b"0123456789abcdef"), Ok(()));
        assert_eq!(
            verify_base_hmac(&b, b"0123456789abcdeX"),
            Err(StampError::BadHmac)
        );
    }

    fn reflection() -> Reflection {
        Reflection {
            seq: 7,
            receive_unix_ns: 1_700_000_000_000_000_000,
            transmit_unix_ns: 1_700_000_000_000_050_000,
            error_estimate: ErrorEstimate::unsynchronized_ntp(),
            ttl: 63,
            tos: Some(46 << 2 | 1),
            honours_dscp: true,
        }
    }

    #[test]
    fn reflected_bytes_are_the_rfc_layout_and_the_same_size() {
        let p = SenderPacket {
            seq: 42,
            timestamp: 0x1112_1314_1516_1718,
            error_estimate: ErrorEstimate(0x0101),
            ssid: 9,
        };
        let mut req = Vec::new();
        p.encode(None, &ClassOfService::request_tlv(46, 0), &mut req);
        req.extend_from_slice(&[0, 200, 0, 2, 0xee, 0xee]); // unknown TLV type 200
        let mut out = Vec::new();
        let got = reflect(&req, None, &reflection(), &mut out).unwrap();
        assert_eq!(got.requested_tos, Some((46, 0)));
        assert_eq!(out.len(), req.len());
        assert_eq!(&out[0..4], &7u32.to_be_bytes());
        assert_eq!(&out[14..16], &9u16.to_be_bytes());
        assert_eq!(&out[24..28], &42u32.to_be_bytes());
        assert_eq!(&out[28..36], &0x1112_1314_1516_1718u64.to_be_bytes());
        assert_eq!(&out[36..38], &[1, 1]);
        assert_eq!(out[40], 63);
        assert!(out[38..40].iter().chain(&out[41..44]).all(|&x| x == 0));
        let r = ReflectorPacket::decode(&out, Mode::Open).unwrap();
        let f = TimestampFormat::Ntp;
        assert_eq!(f.decode(r.receive_timestamp) / 1000, 1_700_000_000_000_000);
        assert_eq!(f.decode(r.timestamp) / 1000, 1_700_000_000_000_050);
        // CoS: DSCP2/ECN2 as received.
        let cos = find_cos(&out[44..]).unwrap();
        assert_eq!((cos.dscp1, cos.dscp2, cos.ecn2, cos.rp), (46, 46, 1, 0));
        // ... at its bit positions: DSCP1 46, DSCP2 46, EC2 1, RPD 0.
        assert_eq!(&out[44..52], &[0, 4, 0, 4, 0xba, 0xe4, 0, 0]);
        // Unknown TLV flagged U, value echoed.
        assert_eq!(&out[52..], &[0x80, 200, 0, 2, 0xee, 0xee]);
    }

    #[test]
    fn short_requests_get_no_answer() {
        let mut out = Vec::new();
        assert!(reflect(&[0u8; 43], None, &reflection(), &mut out).is_err());
        assert!(reflect(&[0u8; 111], Some(b"k"), &reflection(), &mut out).is_err());
    }

    #[test]
    fn authenticated_reflection_checks_and_seals() {
        let key = b"0123456789abcdef";
        let p = SenderPacket {
            seq: 1,
            timestamp: 5,
            error_estimate: ErrorEstimate(1),
            ssid: 3,
        };
        let mut req = Vec::new();
        p.encode(Some(key), &ClassOfService::request_tlv(10, 0), &mut req);
        append_hmac_tlv(&mut req, key);
        let mut out = Vec::new();
        reflect(&req, Some(key), &reflection(), &mut out).unwrap();
        assert_eq!(out.len(), req.len());
        verify_base_hmac(&out, key).unwrap();
        let (tlvs, _) = parse_tlvs(&out[AUTH_LEN..]);
        assert!(tlvs.iter().all(|t| t.flags == 0), "{tlvs:?}");
        let mac = hmac16(key, &[&out[..4], &out[AUTH_LEN..AUTH_LEN + 8]]);
        assert_eq!(tlvs[1].value, &mac);
        // A wrong TLV HMAC flags every TLV I; a wrong base HMAC gets no answer.
        let mut bad = req.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        reflect(&bad, Some(key), &reflection(), &mut out).unwrap();
        let (tlvs, _) = parse_tlvs(&out[AUTH_LEN..]);
        assert!(tlvs
            .iter()
            .all(|t| t.flags & tlv_flag::INTEGRITY_FAILED != 0));
        bad[50] ^= 1;
        assert_eq!(
            reflect(&bad, Some(key), &reflection(), &mut out),
            Err(StampError::BadHmac)
        );
    }

    #[test]
    fn timestamps_round_trip_in_both_formats() {
        let ns = 1_764_000_000_123_456_789u64;
        assert_eq!(
            TimestampFormat::Ptp.decode(TimestampFormat::Ptp.encode(ns)),
            ns
        );
        let back = TimestampFormat::Ntp.decode(TimestampFormat::Ntp.encode(ns));
        assert!(ns - back < 2, "{ns} {back}");
        let e = ErrorEstimate::new(true, true, 22, 1);
        assert!(e.synchronized() && e.ptp());
        assert!((e.nanos() - 976_562.5).abs() < 1.0);
    }

    proptest! {
        #[test]
        fn sender_round_trip(seq: u32, ts: u64, ee: u16, ssid: u16, auth: bool,
                             tlvs in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = SenderPacket { seq, timestamp: ts, error_estimate: ErrorEstimate(ee), ssid };
            let key: Option<&[u8]> = auth.then_some(b"key".as_slice());
            let mut b = Vec::new();
            p.encode(key, &tlvs, &mut b);
            let mode = if auth { Mode::Authenticated } else { Mode::Open };
            prop_assert_eq!(b.len(), mode.base_len() + tlvs.len());
            prop_assert_eq!(SenderPacket::decode(&b, mode).unwrap(), p);
            prop_assert_eq!(&b[mode.base_len()..], &tlvs[..]);
        }

        #[test]
        fn reflector_round_trip(seq: u32, ts: u64, ee: u16, ssid: u16, rx: u64,
                                sseq: u32, sts: u64, see: u16, ttl: u8, auth: bool) {
            let p = ReflectorPacket { seq, timestamp: ts, error_estimate: ErrorEstimate(ee), ssid,
                receive_timestamp: rx, sender_seq: sseq, sender_timestamp: sts,
                sender_error_estimate: ErrorEstimate(see), sender_ttl: ttl };
            let key: Option<&[u8]> = auth.then_some(b"key".as_slice());
            let mut b = Vec::new();
            p.encode(key, &[], &mut b);
            let mode = if auth { Mode::Authenticated } else { Mode::Open };
            prop_assert_eq!(ReflectorPacket::decode(&b, mode).unwrap(), p);
        }

        #[test]
        fn class_of_service_round_trip(d1 in 0u8..64, e1 in 0u8..4, d2 in 0u8..64, e2 in 0u8..4, rp in 0u8..4) {
            let c = ClassOfService { dscp1: d1, ecn1: e1, dscp2: d2, ecn2: e2, rp };
            prop_assert_eq!(ClassOfService::decode(&c.encode()), c);
        }

        #[test]
        fn reflection_never_grows_and_never_panics(
            req in proptest::collection::vec(any::<u8>(), 0..400), auth: bool) {
            let key: Option<&[u8]> = auth.then_some(b"key".as_slice());
            let mut out = Vec::new();
            if reflect(&req, key, &reflection(), &mut out).is_ok() {
                prop_assert_eq!(out.len(), req.len());
            }
        }
    }
}
