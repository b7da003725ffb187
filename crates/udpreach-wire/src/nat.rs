//! `udpreach nat` datagrams and the limits of what a client can make a
//! server's NAT ports send.
//!
//! A client's socket sends `NatProbe` (64 bytes, 80 authenticated) to one of
//! the session's NAT ports; the port answers with a 64-byte `NatReply` (80
//! authenticated) carrying the address and port it saw (the mapping), and
//! remembers the flow (the probe's sequence number) with that address. On a
//! `NatSend` control request it later sends `NatLate` (64 or 80 bytes) to
//! that remembered address only: after an idle gap (binding lifetime) or
//! from another port or address (filtering).

use crate::probe::{ProbeHeader, ProbeKind, ServerStamp, FLAG_SERVER_STAMPED, HEADER_LEN};
use std::net::SocketAddr;

/// Flows one session's NAT ports remember (older ones are forgotten).
pub const MAX_FLOWS_PER_SESSION: usize = 512;
/// Scheduled sends one session may have waiting at once (a search's first
/// round is 30 flows per kind and port).
pub const MAX_SCHEDULED: usize = 512;
/// NAT ports at numbers the client names (`udpreach nat -p`), per session.
pub const MAX_FIXED_PORTS: usize = 8;
/// Scheduled sends one session may ask for in its lifetime.
pub const MAX_SENDS_PER_SESSION: u32 = 4096;
/// Longest idle gap a client may ask for (30 minutes).
pub const MAX_GAP_MS: u32 = 30 * 60 * 1000;
/// Copies of each scheduled datagram, so one loss does not read as an
/// expired binding.
pub const COPIES: u32 = 2;
/// Spacing between the copies.
pub const COPY_SPACING_MS: u64 = 20;

/// The NAT port's answer to a `NatProbe` of session `token`: 64 bytes,
/// never longer than the probe; `None` for anything else.
pub fn reply_for(datagram: &[u8], token: u64, stamp: ServerStamp) -> Option<[u8; HEADER_LEN]> {
    let h = ProbeHeader::decode(datagram).ok()?;
    if h.kind != ProbeKind::NatProbe || h.token != token {
        return None;
    }
    let mut out = [0u8; HEADER_LEN];
    ProbeHeader {
        kind: ProbeKind::NatReply,
        flags: FLAG_SERVER_STAMPED,
        token,
        seq: h.seq,
        stamp: Some(stamp),
    }
    .encode(&mut out)
    .ok()?;
    Some(out)
}

/// The flow id a `NatProbe` of session `token` opens.
pub fn probe_flow(datagram: &[u8], token: u64) -> Option<u32> {
    let h = ProbeHeader::decode(datagram).ok()?;
    (h.kind == ProbeKind::NatProbe && h.token == token)
        .then(|| u32::try_from(h.seq).ok())
        .flatten()
}

/// The datagram a scheduled send carries (64 bytes).
pub fn late(token: u64, flow: u32, stamp: ServerStamp) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    ProbeHeader {
        kind: ProbeKind::NatLate,
        flags: FLAG_SERVER_STAMPED,
        token,
        seq: u64::from(flow),
        stamp: Some(stamp),
    }
    .encode(&mut out)
    .expect("64 bytes hold the header");
    out
}

/// What came back to a client's NAT socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatDatagram {
    /// The answer to a probe, with the mapped address the server saw.
    Reply {
        /// The probe's flow.
        flow: u32,
        /// The client's address as the server saw it (after any NAT).
        seen_from: SocketAddr,
    },
    /// A scheduled send.
    Late {
        /// The flow it was scheduled for.
        flow: u32,
    },
}

/// Reads a datagram that came back to a NAT socket of the session `token`;
/// `None` for anything else.
pub fn parse(datagram: &[u8], token: u64) -> Option<NatDatagram> {
    let h = ProbeHeader::decode(datagram).ok()?;
    if h.token != token {
        return None;
    }
    let flow = u32::try_from(h.seq).ok()?;
    match h.kind {
        ProbeKind::NatReply => Some(NatDatagram::Reply {
            flow,
            seen_from: h.stamp?.seen_from,
        }),
        ProbeKind::NatLate => Some(NatDatagram::Late { flow }),
        _ => None,
    }
}

/// Checks a `NatSend` request's gap.
pub fn check_gap(gap_ms: u32) -> Result<(), String> {
    if gap_ms > MAX_GAP_MS {
        return Err(format!("gap {gap_ms} ms is over the {MAX_GAP_MS} ms limit"));
    }
    Ok(())
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
    fn reply_names_the_mapping_and_late_parses() {
        let mut probe = [0u8; 80];
        ProbeHeader::request(ProbeKind::NatProbe, 9, 17)
            .encode(&mut probe)
            .unwrap();
        assert_eq!(probe_flow(&probe, 9), Some(17));
        assert_eq!(probe_flow(&probe, 8), None);
        let r = reply_for(&probe, 9, stamp()).unwrap();
        assert_eq!(
            parse(&r, 9),
            Some(NatDatagram::Reply {
                flow: 17,
                seen_from: "198.18.1.1:5000".parse().unwrap()
            })
        );
        assert_eq!(parse(&r, 8), None, "other session");
        assert_eq!(reply_for(&r, 9, stamp()), None, "a reply is never answered");
        let l = late(9, 17, stamp());
        assert_eq!(parse(&l, 9), Some(NatDatagram::Late { flow: 17 }));
        assert_eq!(
            reply_for(&l, 9, stamp()),
            None,
            "a late datagram is never answered"
        );
        assert!(check_gap(MAX_GAP_MS).is_ok());
        assert!(check_gap(MAX_GAP_MS + 1).is_err());
    }

    proptest! {
        #[test]
        fn reply_never_panics_and_never_grows(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(r) = reply_for(&bytes, 1, stamp()) {
                prop_assert!(r.len() <= bytes.len());
            }
            let _ = parse(&bytes, 1);
            let _ = probe_flow(&bytes, 1);
        }
    }
}
