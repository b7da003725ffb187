//! ICMP errors as the kernel reports them for a UDP socket (`IP_RECVERR`,
//! `IPV6_RECVERR`), and what they mean for udpreach.
//!
//! Pure: the platform layer reads `sock_extended_err` from the error queue
//! and hands origin, type, code and info here; everything that decides what
//! an error *means* lives in this module, so it is unit-tested without a
//! network.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;

/// Where a queued error came from (`ee_origin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IcmpOrigin {
    /// An ICMPv4 message from the network.
    Icmp4,
    /// An ICMPv6 message from the network.
    Icmp6,
    /// Our own kernel refused the datagram (e.g. larger than the known path MTU).
    Local,
}

/// One error from the socket's error queue, before interpretation. It
/// travels as is in `MtuSendResult`, so the client interprets the server's
/// errors with the same code as its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpError {
    /// Who produced the error: ICMP, ICMPv6 or our own kernel.
    pub origin: IcmpOrigin,
    /// ICMP or ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code.
    pub code: u8,
    /// `ee_info`: the next-hop MTU for frag-needed / packet-too-big, and for
    /// local EMSGSIZE errors.
    pub info: u32,
    /// `ee_errno` as the kernel mapped it (ECONNREFUSED, EHOSTUNREACH, ...).
    pub errno: i32,
    /// The host that sent the ICMP message (`SO_EE_OFFENDER`); `None` for
    /// local errors.
    pub from: Option<IpAddr>,
}

/// Why a datagram did not get through, as far as an ICMP error tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IcmpReason {
    /// Nothing listens on the port (v4 3/3, v6 1/4).
    PortUnreachable,
    /// A filter rejected it (v4 3/9, 3/10, 3/13; v6 1/1, 1/5, 1/6).
    AdminProhibited,
    /// The host is not reachable (v4 3/1, 3/7, 3/12; v6 1/3).
    HostUnreachable,
    /// No route to the network (v4 3/0, 3/6, 3/11; v6 1/0).
    NetUnreachable,
    /// Too big for a hop and not allowed to be fragmented (v4 3/4, v6 2/0,
    /// or our own kernel refusing it); `mtu` is the next-hop MTU when known.
    FragNeeded {
        /// The next-hop MTU, when the error gives one.
        mtu: Option<u32>,
    },
    /// TTL / hop limit ran out on the way (v4 11, v6 3).
    TimeExceeded,
    /// Any other ICMP error (protocol unreachable, source route failed, ...).
    Other {
        /// ICMPv6 rather than ICMP.
        v6: bool,
        /// The message's type.
        icmp_type: u8,
        /// The message's code.
        code: u8,
    },
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP6_DEST_UNREACH: u8 = 1;
const ICMP6_PACKET_TOO_BIG: u8 = 2;
const ICMP6_TIME_EXCEEDED: u8 = 3;

impl IcmpError {
    /// What the error means. Local errors are always "too big": that is the
    /// only error the kernel queues for its own refusals of UDP sends.
    pub fn reason(&self) -> IcmpReason {
        let mtu = (self.info > 0).then_some(self.info);
        match self.origin {
            IcmpOrigin::Local => IcmpReason::FragNeeded { mtu },
            IcmpOrigin::Icmp4 => classify_v4(self.icmp_type, self.code, mtu),
            IcmpOrigin::Icmp6 => classify_v6(self.icmp_type, self.code, mtu),
        }
    }

    /// The error as reported to users: reason and reporting address.
    pub fn report(&self) -> IcmpReport {
        IcmpReport {
            from: self.from,
            reason: self.reason(),
        }
    }
}

fn classify_v4(t: u8, code: u8, mtu: Option<u32>) -> IcmpReason {
    match (t, code) {
        (ICMP_DEST_UNREACH, 3) => IcmpReason::PortUnreachable,
        (ICMP_DEST_UNREACH, 9 | 10 | 13) => IcmpReason::AdminProhibited,
        (ICMP_DEST_UNREACH, 1 | 7 | 12) => IcmpReason::HostUnreachable,
        (ICMP_DEST_UNREACH, 0 | 6 | 11) => IcmpReason::NetUnreachable,
        (ICMP_DEST_UNREACH, 4) => IcmpReason::FragNeeded { mtu },
        (ICMP_TIME_EXCEEDED, _) => IcmpReason::TimeExceeded,
        _ => IcmpReason::Other {
            v6: false,
            icmp_type: t,
            code,
        },
    }
}

fn classify_v6(t: u8, code: u8, mtu: Option<u32>) -> IcmpReason {
    match (t, code) {
        (ICMP6_DEST_UNREACH, 4) => IcmpReason::PortUnreachable,
        (ICMP6_DEST_UNREACH, 1 | 5 | 6) => IcmpReason::AdminProhibited,
        (ICMP6_DEST_UNREACH, 3) => IcmpReason::HostUnreachable,
        (ICMP6_DEST_UNREACH, 0) => IcmpReason::NetUnreachable,
        (ICMP6_PACKET_TOO_BIG, _) => IcmpReason::FragNeeded { mtu },
        (ICMP6_TIME_EXCEEDED, _) => IcmpReason::TimeExceeded,
        _ => IcmpReason::Other {
            v6: true,
            icmp_type: t,
            code,
        },
    }
}

impl IcmpReason {
    /// Stable snake_case name for JSON and grouping.
    pub fn as_str(&self) -> &'static str {
        match self {
            IcmpReason::PortUnreachable => "port_unreachable",
            IcmpReason::AdminProhibited => "admin_prohibited",
            IcmpReason::HostUnreachable => "host_unreachable",
            IcmpReason::NetUnreachable => "net_unreachable",
            IcmpReason::FragNeeded { .. } => "frag_needed",
            IcmpReason::TimeExceeded => "time_exceeded",
            IcmpReason::Other { .. } => "other",
        }
    }

    /// The next-hop MTU a frag-needed / packet-too-big error carried.
    pub fn mtu(&self) -> Option<u32> {
        match self {
            IcmpReason::FragNeeded { mtu } => *mtu,
            _ => None,
        }
    }
}

/// ping(8)-like wording: "Destination Port Unreachable".
impl fmt::Display for IcmpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcmpReason::PortUnreachable => f.write_str("Destination Port Unreachable"),
            IcmpReason::AdminProhibited => f.write_str("Administratively Prohibited"),
            IcmpReason::HostUnreachable => f.write_str("Destination Host Unreachable"),
            IcmpReason::NetUnreachable => f.write_str("Destination Net Unreachable"),
            IcmpReason::FragNeeded { mtu: Some(m) } => {
                write!(f, "Frag needed and DF set (mtu = {m})")
            }
            IcmpReason::FragNeeded { mtu: None } => f.write_str("Frag needed and DF set"),
            IcmpReason::TimeExceeded => f.write_str("Time to live exceeded"),
            IcmpReason::Other {
                v6,
                icmp_type,
                code,
            } => {
                let v = if *v6 { "ICMPv6" } else { "ICMP" };
                write!(f, "{v} error type {icmp_type} code {code}")
            }
        }
    }
}

/// An ICMP error as users see it: who reported what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IcmpReport {
    /// The reporting host; `None` when our own kernel refused the send.
    pub from: Option<IpAddr>,
    /// What the error says about the datagram.
    pub reason: IcmpReason,
}

impl fmt::Display for IcmpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(ip) => write!(f, "{} from {ip}", self.reason),
            None => write!(f, "{} (local)", self.reason),
        }
    }
}

/// JSON: `{"from": "198.18.1.254", "reason": "admin_prohibited"}`, with
/// `"mtu"` for frag-needed and `"icmp6"`/`"icmp_type"`/`"icmp_code"` for
/// unclassified errors (not `type`: ping's events carry the report beside
/// their own `type`).
impl Serialize for IcmpReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("from", &self.from.map(|ip| ip.to_string()))?;
        m.serialize_entry("reason", self.reason.as_str())?;
        if let IcmpReason::FragNeeded { mtu } = self.reason {
            m.serialize_entry("mtu", &mtu)?;
        }
        if let IcmpReason::Other {
            v6,
            icmp_type,
            code,
        } = self.reason
        {
            m.serialize_entry("icmp6", &v6)?;
            m.serialize_entry("icmp_type", &icmp_type)?;
            m.serialize_entry("icmp_code", &code)?;
        }
        m.end()
    }
}

/// The JSON Schema of the map [`IcmpReport`] serializes to (by hand, as the
/// serialization is): `from` and `reason` always, `mtu` with `frag_needed`,
/// `icmp6`/`type`/`code` with `other`.
impl schemars::JsonSchema for IcmpReport {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IcmpReport".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An ICMP error: who reported what.",
            "type": "object",
            "properties": {
                "from": {
                    "description": "The reporting host; null when our own kernel refused the send.",
                    "type": ["string", "null"],
                    "format": "ip"
                },
                "reason": {
                    "type": "string",
                    "enum": ["port_unreachable", "admin_prohibited", "host_unreachable",
                             "net_unreachable", "frag_needed", "time_exceeded", "other"]
                },
                "mtu": {
                    "description": "With frag_needed: the next-hop MTU, null when not given.",
                    "type": ["integer", "null"],
                    "minimum": 0
                },
                "icmp6": { "description": "With other: an ICMPv6 error.", "type": "boolean" },
                "icmp_type": { "description": "With other: the ICMP type.", "type": "integer", "minimum": 0, "maximum": 255 },
                "icmp_code": { "description": "With other: the ICMP code.", "type": "integer", "minimum": 0, "maximum": 255 }
            },
            "required": ["from", "reason"]
        })
    }
}

/// The serverless (nmap -sU) reading of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortFinding {
    /// Port unreachable from the target itself: nothing listens there.
    Closed,
    /// Any other ICMP error, or a port unreachable from another host: a
    /// filter (or a router) is in the way.
    Filtered,
}

/// Classifies an ICMP error for a probe sent to `target`, as nmap -sU does:
/// a port unreachable counts as closed only when the target itself sent it.
pub fn port_finding(report: &IcmpReport, target: IpAddr) -> PortFinding {
    match report.reason {
        IcmpReason::PortUnreachable if report.from == Some(target) => PortFinding::Closed,
        _ => PortFinding::Filtered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(origin: IcmpOrigin, t: u8, c: u8, info: u32) -> IcmpError {
        IcmpError {
            origin,
            icmp_type: t,
            code: c,
            info,
            errno: 0,
            from: Some("198.18.1.254".parse().unwrap()),
        }
    }

    #[test]
    fn icmpv4_codes() {
        use IcmpOrigin::Icmp4;
        use IcmpReason::*;
        let cases = [
            (3, 0, NetUnreachable),
            (3, 1, HostUnreachable),
            (3, 3, PortUnreachable),
            (3, 4, FragNeeded { mtu: Some(1400) }),
            (3, 6, NetUnreachable),
            (3, 7, HostUnreachable),
            (3, 9, AdminProhibited),
            (3, 10, AdminProhibited),
            (3, 13, AdminProhibited),
            (11, 0, TimeExceeded),
        ];
        for (t, c, want) in cases {
            let info = if c == 4 { 1400 } else { 0 };
            assert_eq!(err(Icmp4, t, c, info).reason(), want, "type {t} code {c}");
        }
        assert_eq!(
            err(Icmp4, 3, 2, 0).reason(),
            Other {
                v6: false,
                icmp_type: 3,
                code: 2
            }
        );
        assert_eq!(
            err(Icmp4, 3, 4, 0).reason(),
            FragNeeded { mtu: None },
            "old routers send frag-needed without the MTU"
        );
    }

    #[test]
    fn icmpv6_codes() {
        use IcmpOrigin::Icmp6;
        use IcmpReason::*;
        assert_eq!(err(Icmp6, 1, 4, 0).reason(), PortUnreachable);
        assert_eq!(err(Icmp6, 1, 1, 0).reason(), AdminProhibited);
        assert_eq!(err(Icmp6, 1, 6, 0).reason(), AdminProhibited);
        assert_eq!(err(Icmp6, 1, 3, 0).reason(), HostUnreachable);
        assert_eq!(err(Icmp6, 1, 0, 0).reason(), NetUnreachable);
        assert_eq!(
            err(Icmp6, 2, 0, 1400).reason(),
            FragNeeded { mtu: Some(1400) }
        );
        assert_eq!(err(Icmp6, 3, 0, 0).reason(), TimeExceeded);
        assert!(matches!(
            err(Icmp6, 4, 0, 0).reason(),
            Other { v6: true, .. }
        ));
    }

    #[test]
    fn local_emsgsize_is_too_big() {
        let mut e = err(IcmpOrigin::Local, 0, 0, 1500);
        e.from = None;
        assert_eq!(e.reason(), IcmpReason::FragNeeded { mtu: Some(1500) });
        assert_eq!(
            e.report().to_string(),
            "Frag needed and DF set (mtu = 1500) (local)"
        );
    }

    #[test]
    fn report_json_and_text() {
        let r = err(IcmpOrigin::Icmp4, 3, 13, 0).report();
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::json!({"from": "198.18.1.254", "reason": "admin_prohibited"})
        );
        assert_eq!(
            r.to_string(),
            "Administratively Prohibited from 198.18.1.254"
        );
        let f = err(IcmpOrigin::Icmp6, 2, 0, 1400).report();
        assert_eq!(serde_json::to_value(f).unwrap()["mtu"], 1400);
        let o = err(IcmpOrigin::Icmp4, 3, 2, 0).report();
        assert_eq!(serde_json::to_value(o).unwrap()["icmp_code"], 2);
    }

    #[test]
    fn nmap_style_findings() {
        let target: IpAddr = "198.18.2.2".parse().unwrap();
        let router: IpAddr = "198.18.1.254".parse().unwrap();
        let port_unreach = |from| IcmpReport {
            from: Some(from),
            reason: IcmpReason::PortUnreachable,
        };
        assert_eq!(
            port_finding(&port_unreach(target), target),
            PortFinding::Closed
        );
        assert_eq!(
            port_finding(&port_unreach(router), target),
            PortFinding::Filtered,
            "a router faking port unreachable is a filter"
        );
        let admin = IcmpReport {
            from: Some(target),
            reason: IcmpReason::AdminProhibited,
        };
        assert_eq!(port_finding(&admin, target), PortFinding::Filtered);
    }
}
