//! Path-MTU probes: sizes, the MTU port's acknowledgement, and the limits
//! that keep a server's `MtuSend` from being turned into a flood.
//!
//! Sizes on the wire (`MtuSend.sizes`, probe lengths) are UDP payload bytes;
//! MTUs are IP packet bytes. [`packet_size`] and [`payload_size`] convert.
//!
//! A client's `MtuProbe` carries a sequence number of its own, unique in the
//! session (repeats of a size are new probes); its size is its length, which
//! the [`MtuAck`] reports as received. So an ack names one send, and a
//! keyed MTU port answers each sequence number once (a replay window). The
//! server's own downstream probes carry their payload size as `seq`.

use crate::probe::{ProbeHeader, ProbeKind, ServerStamp, HEADER_LEN};

/// IPv4 header (no options) + UDP header.
pub const OVERHEAD_V4: u32 = 20 + 8;
/// IPv6 header (no extension headers) + UDP header.
pub const OVERHEAD_V6: u32 = 40 + 8;
/// Smallest MTU every IPv4 link must carry (RFC 791).
pub const MIN_MTU_V4: u32 = 68;
/// Smallest MTU every IPv6 link must carry (RFC 8200).
pub const MIN_MTU_V6: u32 = 1280;
/// Largest IP packet.
pub const MAX_PACKET: u32 = 65535;
/// Largest UDP payload over IPv4: the 16-bit total length covers the IP
/// and UDP headers.
pub const MAX_PAYLOAD_V4: u32 = MAX_PACKET - OVERHEAD_V4;
/// Largest UDP payload over IPv6 (no jumbograms): the 16-bit payload length
/// excludes the IPv6 header and covers the UDP header, so the packet can be
/// 65575 bytes.
pub const MAX_PAYLOAD_V6: u32 = MAX_PACKET - 8;

/// Most sizes in one `MtuSend`.
pub const MAX_SIZES_PER_SEND: u32 = 32;
/// Most datagrams per size in one `MtuSend`.
pub const MAX_COUNT_PER_SIZE: u32 = 4;
/// Most bytes one `MtuSend` may make the server send: 1 MiB, which holds
/// the largest datagram of either family four times over for
/// [`MAX_COUNT_PER_SIZE`] copies (4 x 4 x 65527 bytes). A client splits a
/// search round that needs more into several requests.
pub const MAX_BYTES_PER_SEND: u64 = 1 << 20;
/// Longest the server waits for ICMP errors before answering an `MtuSend`.
pub const MAX_LINGER_MS: u32 = 2000;

/// Bytes of IP and UDP header around a UDP payload ([`OVERHEAD_V4`] or [`OVERHEAD_V6`]).
pub fn overhead(v6: bool) -> u32 {
    if v6 {
        OVERHEAD_V6
    } else {
        OVERHEAD_V4
    }
}

/// Smallest MTU the family guarantees ([`MIN_MTU_V4`] or [`MIN_MTU_V6`]).
pub fn min_mtu(v6: bool) -> u32 {
    if v6 {
        MIN_MTU_V6
    } else {
        MIN_MTU_V4
    }
}

/// Largest UDP payload of the family.
pub fn max_payload(v6: bool) -> u32 {
    if v6 {
        MAX_PAYLOAD_V6
    } else {
        MAX_PAYLOAD_V4
    }
}

/// Largest IP packet a UDP datagram of the family can make (65535 for IPv4,
/// 65575 for IPv6): no MTU above it can be probed.
pub fn max_mtu(v6: bool) -> u32 {
    packet_size(max_payload(v6), v6)
}

/// IP packet size of a datagram with `payload` UDP payload bytes.
pub fn packet_size(payload: u32, v6: bool) -> u32 {
    payload + overhead(v6)
}

/// UDP payload that fills an IP packet of `mtu` bytes (0 if it cannot).
pub fn payload_size(mtu: u32, v6: bool) -> u32 {
    mtu.saturating_sub(overhead(v6))
}

/// Checks an `MtuSend` against the limits; the error says which one.
pub fn check_send_request(sizes: &[u32], count: u32, max_size: u32) -> Result<(), String> {
    if sizes.is_empty() {
        return Err("no sizes".into());
    }
    if sizes.len() as u32 > MAX_SIZES_PER_SEND {
        return Err(format!("at most {MAX_SIZES_PER_SEND} sizes per request"));
    }
    if count == 0 || count > MAX_COUNT_PER_SIZE {
        return Err(format!("count must be 1..={MAX_COUNT_PER_SIZE}"));
    }
    if let Some(&bad) = sizes
        .iter()
        .find(|&&s| (s as usize) < HEADER_LEN || s > max_size)
    {
        return Err(format!("size {bad} outside {HEADER_LEN}..={max_size}"));
    }
    let total: u64 = sizes.iter().map(|&s| u64::from(s) * u64::from(count)).sum();
    if total > MAX_BYTES_PER_SEND {
        return Err(format!(
            "{total} bytes requested; at most {MAX_BYTES_PER_SEND} per request"
        ));
    }
    Ok(())
}

/// The MTU port's answer to an `MtuProbe`: the probe's header turned into an
/// `MtuAck`, 64 bytes whatever the probe's size, with the length as received
/// in the stamp's counter. `None` for anything that is not an `MtuProbe` of
/// session `token` (never answered).
pub fn ack_for(datagram: &[u8], token: u64, stamp: ServerStamp) -> Option<[u8; HEADER_LEN]> {
    let h = ProbeHeader::decode(datagram).ok()?;
    if h.kind != ProbeKind::MtuProbe || h.token != token {
        return None;
    }
    let mut out = [0u8; HEADER_LEN];
    let ack = ProbeHeader {
        kind: ProbeKind::MtuAck,
        flags: crate::probe::FLAG_SERVER_STAMPED,
        token,
        seq: h.seq,
        stamp: Some(ServerStamp {
            flow_count: u32::try_from(datagram.len()).unwrap_or(u32::MAX),
            ..stamp
        }),
    };
    ack.encode(&mut out).ok()?;
    Some(out)
}

/// An `MtuAck` decoded: which probe, and how long it was on arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuAck {
    /// Sequence number of the acknowledged probe.
    pub seq: u64,
    /// The probe's UDP payload length as the MTU port received it.
    pub received_len: u32,
}

/// Decodes an `MtuAck` of this session (`token`); `None` for anything else.
pub fn parse_ack(datagram: &[u8], token: u64) -> Option<MtuAck> {
    let h = ProbeHeader::decode(datagram).ok()?;
    if h.kind != ProbeKind::MtuAck || h.token != token {
        return None;
    }
    Some(MtuAck {
        seq: h.seq,
        received_len: h.stamp?.flow_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp() -> ServerStamp {
        ServerStamp {
            rx_ns: 1,
            tx_ns: 2,
            flow_count: 0,
            seen_from: "198.18.1.1:5000".parse().unwrap(),
            seen_ttl: 63,
            withheld: 0,
        }
    }

    #[test]
    fn sizes_convert() {
        assert_eq!(payload_size(1500, false), 1472);
        assert_eq!(payload_size(1400, true), 1352);
        assert_eq!(packet_size(1372, false), 1400);
        assert_eq!(payload_size(10, false), 0);
        assert_eq!(max_payload(false), 65507);
        assert_eq!(max_payload(true), 65527);
        assert_eq!(max_mtu(false), 65535);
        assert_eq!(max_mtu(true), 65575);
        // The per-request cap holds four sizes of the largest datagram at the most copies.
        assert!(
            4 * u64::from(MAX_COUNT_PER_SIZE) * u64::from(MAX_PAYLOAD_V6) <= MAX_BYTES_PER_SEND
        );
    }

    #[test]
    fn ack_is_header_sized_and_carries_the_length() {
        let mut probe = vec![0x55u8; 1400];
        ProbeHeader::request(ProbeKind::MtuProbe, 9, 1400)
            .encode(&mut probe)
            .unwrap();
        let ack = ack_for(&probe, 9, stamp()).unwrap();
        assert_eq!(ack.len(), HEADER_LEN);
        assert_eq!(
            parse_ack(&ack, 9),
            Some(MtuAck {
                seq: 1400,
                received_len: 1400
            })
        );
        assert_eq!(parse_ack(&ack, 8), None, "other session");
        assert_eq!(ack_for(&probe, 8, stamp()), None, "other session");
        let mut echo = probe.clone();
        ProbeHeader::request(ProbeKind::EchoRequest, 9, 1)
            .encode(&mut echo)
            .unwrap();
        assert_eq!(ack_for(&echo, 9, stamp()), None, "only MTU probes");
    }

    #[test]
    fn send_limits() {
        assert!(check_send_request(&[1472, 1372], 2, 65507).is_ok());
        assert!(check_send_request(&[], 2, 65507)
            .unwrap_err()
            .contains("no sizes"));
        assert!(check_send_request(&[100], 5, 65507)
            .unwrap_err()
            .contains("count"));
        assert!(check_send_request(&[10], 1, 65507)
            .unwrap_err()
            .contains("size 10"));
        assert!(check_send_request(&[9000], 1, 1472)
            .unwrap_err()
            .contains("size 9000"));
        assert!(check_send_request(&[65507; 20], 4, 65507)
            .unwrap_err()
            .contains("bytes"));
        assert!(check_send_request(&[100; 33], 1, 65507).is_err());
    }

    proptest! {
        #[test]
        fn ack_never_panics_and_never_grows(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(a) = ack_for(&bytes, 1, stamp()) {
                prop_assert!(a.len() <= bytes.len());
            }
            let _ = parse_ack(&bytes, 1);
        }
    }
}
