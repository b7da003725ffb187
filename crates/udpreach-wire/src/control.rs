//! The TCP control channel.
//!
//! A client opens with the 8-byte preamble `UDPREACH`; the seed's legacy
//! clients open with `{`, which is how the server tells them apart (see
//! [`crate::legacy`]). After the preamble every message is a frame: a 4-byte
//! big-endian length, then that many bytes of JSON (one [`ControlMsg`]).
//! JSON keeps the channel readable in a packet capture; the frame limit keeps
//! a hostile peer from making the server buffer without bound.

use crate::icmp::IcmpError;
use serde::{Deserialize, Serialize};

/// First bytes a udpreach client sends on the control connection.
pub const PREAMBLE: &[u8; 8] = b"UDPREACH";
/// Version of the control protocol this build speaks (in `Hello`/`Welcome`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body either side accepts.
pub const MAX_FRAME: usize = 256 * 1024;
/// Most ports one `Open`, `Arrivals` or `Close` request may name.
pub const MAX_PORTS_PER_REQUEST: usize = 8192;

/// Capabilities this build understands. Unknown ones from a peer are ignored,
/// which is what lets later versions interoperate.
/// "mtu": the `Mtu*` messages (a per-session UDP port for path-MTU probes).
/// "trace": the `Trace*` messages (`udpreach trace`: TTL-limited probes both ways).
/// "nat": the `Nat*` messages (NAT ports, scheduled sends: `udpreach nat`).
/// "trace-hops": trace probes padded to `--size` (and `TraceSend`'s `size`),
/// `TraceSend`'s `tos`, per-hop DSCP/ECN downstream, trace in keyed sessions.
pub const CAPABILITIES: &[&str] = &[
    "ports",
    "arrivals",
    "auth",
    "mtu",
    "nat",
    "trace",
    "trace-hops",
];
/// Largest frame accepted before the handshake is complete: a hello or an
/// auth message is a few hundred bytes, and an unauthenticated peer must not
/// make the server buffer [`MAX_FRAME`] bytes per connection.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// One control-channel message; the JSON `"type"` field names the variant.
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// Client -> server, first message.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// What the client understands (see [`CAPABILITIES`]).
        #[serde(default)]
        capabilities: Vec<String>,
        /// Client program and version, for logs only.
        #[serde(default)]
        software: String,
        /// Authenticated mode: the client's 32-byte random nonce, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    /// Server -> client answer to `Hello`.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        version: u32,
        /// What the server understands (see [`CAPABILITIES`]).
        #[serde(default)]
        capabilities: Vec<String>,
        /// Random per-session token that every probe of this session carries.
        token: u64,
        /// How many test ports this session may hold open at once.
        max_open_ports: u32,
        /// Server program and version, for logs only.
        #[serde(default)]
        software: String,
        /// Most probes per second the server answers for this session (0: no cap).
        /// A client keeps its sending rate under it.
        #[serde(default)]
        max_probe_rate: u32,
        /// Authenticated mode: the server's 32-byte random nonce, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
        /// Authenticated mode: HMAC(key, "udpreach server" 0 cn sn), hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<String>,
    },
    /// Client -> server after a `Welcome` with a proof: HMAC(key, "udpreach client" 0 cn sn), hex.
    Auth {
        /// The client's proof, hex.
        proof: String,
    },
    /// Server -> client: the client's proof is good; the session may start.
    AuthOk,
    /// Client asks the server to bind these UDP ports for the session.
    Open {
        /// Ports to bind, at most [`MAX_PORTS_PER_REQUEST`].
        ports: Vec<u16>,
    },
    /// Per-port answer to `Open`; every requested port is in exactly one list.
    Opened {
        /// Bound for this session.
        opened: Vec<u16>,
        /// Already bound on the server (by this or another session, or another program).
        in_use: Vec<u16>,
        /// Refused by the server's policy (allowed ports, session or source budget).
        denied: Vec<u16>,
        /// Binding failed for another reason.
        #[serde(default)]
        failed: Vec<u16>,
    },
    /// Client asks how many of its probes reached each port.
    Arrivals {
        /// Ports to report on, at most [`MAX_PORTS_PER_REQUEST`].
        ports: Vec<u16>,
    },
    /// Probe counts in the order asked.
    ArrivalCounts {
        /// The ports asked about.
        ports: Vec<u16>,
        /// Probes of this session that reached each port, same order.
        counts: Vec<u32>,
    },
    /// Client is done with these ports; the server closes them.
    Close {
        /// Ports to close, at most [`MAX_PORTS_PER_REQUEST`].
        ports: Vec<u16>,
    },
    /// Answer to `Close`.
    Closed {
        /// How many of the named ports were open and are now closed.
        count: u32,
    },
    /// Either side: an error that ends the request (and, for `fatal`, the session).
    Error {
        /// What kind of error, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The sender ends the session after this message.
        #[serde(default)]
        fatal: bool,
    },
    /// Either side: the session ends normally.
    Bye,
    /// Client asks for a UDP port for path-MTU tests (capability "mtu").
    /// The port acknowledges the client's `MtuProbe` datagrams with 64-byte
    /// `MtuAck`s and learns from them where the client receives.
    MtuOpen {
        /// A port to bind (checked like `Open`'s); by default an ephemeral one.
        #[serde(default)]
        port: Option<u16>,
    },
    /// Answer to `MtuOpen`.
    MtuOpened {
        /// The server's UDP port for MTU probes.
        port: u16,
        /// The server's interface MTU towards the client (0: unknown).
        #[serde(default)]
        mtu: u32,
        /// Largest UDP payload size an `MtuSend` may ask for.
        max_size: u32,
        /// Most datagrams per size an `MtuSend` may ask for.
        max_count: u32,
        /// Most sizes one `MtuSend` may name.
        max_sizes: u32,
    },
    /// Client asks the server to send `count` `MtuProbe` datagrams of each
    /// UDP payload size to the address its MTU probes came from.
    MtuSend {
        /// UDP payload sizes, at most `max_sizes`, each at most `max_size`.
        sizes: Vec<u32>,
        /// Datagrams per size, at most `max_count`.
        count: u32,
        /// Don't Fragment (IPv4 DF; IPv6: never fragment at the sender).
        df: bool,
        /// Without DF: fragment at this MTU instead of the interface's (IPv6).
        #[serde(default)]
        fragment_at: Option<u32>,
        /// How long to collect ICMP errors for these sends before answering.
        #[serde(default)]
        linger_ms: u32,
    },
    /// What happened to each size of an `MtuSend`, in the order asked.
    MtuSent {
        /// One result per size asked for.
        results: Vec<MtuSendResult>,
    },
    /// Client asks for the session's NAT ports (capability "nat"): two UDP
    /// ports on the control connection's address, and one on the server's
    /// alternate address if it has one. Each answers a `NatProbe` from the
    /// client's IP with the address it saw and remembers the flow.
    NatOpen {
        /// Also open NAT ports at these numbers (per-port timeouts; checked
        /// like `Open`'s, at most `nat::MAX_FIXED_PORTS`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fixed: Vec<u16>,
    },
    /// Answer to `NatOpen`.
    NatOpened {
        /// Ports on the address the client's control connection reached.
        ports: Vec<u16>,
        /// The `fixed` ports asked for, opened, in the order asked.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fixed: Vec<u16>,
        /// The server's alternate address and the NAT port on it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alt: Option<std::net::SocketAddr>,
        /// Most flows the server remembers for this session.
        max_flows: u32,
        /// Most scheduled sends waiting at once for this session.
        max_scheduled: u32,
        /// Longest gap a `NatSend` may ask for, in ms.
        max_gap_ms: u32,
    },
    /// Client asks the server to send `NatLate` to the address flow `flow`
    /// was last seen from, `gap_ms` after the server's last reply to it,
    /// from NAT port `from` (a port of `NatOpened`, or the alternate's).
    NatSend {
        /// The flow (the probe's sequence number) to send to.
        flow: u32,
        /// Idle gap after the server's last reply to the flow, in ms.
        gap_ms: u32,
        /// The NAT port to send from.
        from: std::net::SocketAddr,
    },
    /// Answer to `NatSend`: scheduled (the datagrams go out later).
    NatScheduled {
        /// The flow the send is scheduled for.
        flow: u32,
    },
    /// Client asks for trace ports (capability "trace"): each is bound, and
    /// acknowledges and counts the session's trace probes; 0 asks for any
    /// free port (a control port).
    TraceOpen {
        /// Ports to open (0: any free port).
        ports: Vec<u16>,
    },
    /// Answer to `TraceOpen`: the bound port for each one asked, in order,
    /// 0 where binding failed (`errors` says why).
    TraceOpened {
        /// The bound port for each asked, 0 where binding failed.
        ports: Vec<u16>,
        /// Why ports could not be bound.
        #[serde(default)]
        errors: Vec<String>,
    },
    /// Client asks which TTLs of its upstream probes reached these ports.
    TraceArrivals {
        /// The trace ports asked about.
        ports: Vec<u16>,
    },
    /// Answer to `TraceArrivals`, in the order asked.
    TraceArrived {
        /// One per port asked, in order.
        arrivals: Vec<TraceArrival>,
    },
    /// Client asks the server to trace downstream: TTL-limited probes from
    /// each trace port to the address the session's probes came from.
    TraceSend {
        /// Trace ports to send from.
        ports: Vec<u16>,
        /// Highest TTL / hop limit.
        max_hops: u8,
        /// Probes per TTL.
        attempts: u8,
        /// Fixed wait per attempt (0: adaptive, from the answers' RTT).
        wait_ms: u32,
        /// Probes per second asked for (0: the server's default); the
        /// server caps it at the session's probe rate.
        #[serde(default)]
        rate: u32,
        /// TOS byte (DSCP and ECN) for the probes, so the hops' quoted
        /// headers show where it is rewritten (none: the server's default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tos: Option<u8>,
        /// UDP payload bytes per probe, sent with Don't Fragment so a hop
        /// with a smaller next link answers with its MTU. The server caps it
        /// at the largest trace probe of the session that arrived on the
        /// port (never more than the client sent); none: the plain probe.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u16>,
    },
    /// What the server's probes drew, per port in the order asked.
    TraceSent {
        /// One per port asked, in order.
        results: Vec<TraceSendResult>,
    },
}

/// Which TTLs of the session's upstream probes reached one trace port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceArrival {
    /// The trace port.
    pub port: u16,
    /// TTLs (as sent) of the probes that arrived, ascending, deduplicated.
    pub ttls: Vec<u8>,
    /// TTL / hop limit the first arrival had at the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_left: Option<u8>,
}

/// The server's side of one port of a `TraceSend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSendResult {
    /// The trace port the probes came from.
    pub port: u16,
    /// Where the probes went (the client's address as the server sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Datagrams the server sent.
    pub sent: u32,
    /// The ICMP errors the probes drew, one per TTL that drew any.
    pub hops: Vec<TraceHopError>,
    /// Why the port sent nothing (not open, no client address, budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Silent TTLs whose silence no answer at that hop confirmed (the hop
    /// may have been out of ICMP errors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsure: Vec<u8>,
    /// TTLs whose hop was seen to limit its ICMP errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limited: Vec<u8>,
}

/// One ICMP error a downstream probe drew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHopError {
    /// The TTL the probe was sent with.
    pub ttl: u8,
    /// The error and who sent it.
    pub icmp: IcmpError,
    /// From the probe's send to the error's arrival, in microseconds.
    pub rtt_us: u64,
    /// DSCP the probe had at that hop (the header the hop quoted), when
    /// the server could read it (a raw ICMP socket: CAP_NET_RAW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp: Option<u8>,
    /// ECN the probe had at that hop (same condition as `dscp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecn: Option<u8>,
}

/// The server's side of one size of an `MtuSend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuSendResult {
    /// The UDP payload size this result is for.
    pub size: u32,
    /// Datagrams the server's kernel accepted.
    pub sent: u32,
    /// Why sending failed locally (e.g. larger than the server's interface MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An ICMP error the server received for these datagrams (e.g. a router's
    /// frag-needed with the next-hop MTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpError>,
}

/// The kind of a control-channel [`ControlMsg::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer speaks another [`PROTOCOL_VERSION`].
    BadVersion,
    /// A request the server cannot honour as sent (malformed or out of bounds).
    BadRequest,
    /// The request names more ports than allowed.
    TooManyPorts,
    /// The server (or this source) already has as many sessions as it allows.
    TooManySessions,
    /// The peer's proof does not match the key, or a key is missing on one side.
    AuthFailed,
    /// A message that does not fit the state of the session.
    Unexpected,
    /// Every pending-handshake slot this connection could use is taken.
    HandshakeSlotsFull,
}

/// Why bytes from the control connection are not a valid message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The frame's length prefix (given) is over the limit.
    #[error("control frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    FrameTooLarge(usize),
    /// The frame body is not a [`ControlMsg`]; the parser's reason is given.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The connection did not open with [`PREAMBLE`].
    #[error("bad control preamble (not a udpreach peer)")]
    BadPreamble,
}

impl ControlMsg {
    /// Encodes as one frame: length prefix and JSON body.
    pub fn to_frame(&self) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("control messages always serialize");
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Decodes the first frame in `buf`. `Ok(None)` means more bytes are needed;
/// on success returns the message and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(ControlMsg, usize)>, ControlError> {
    decode_frame_limited(buf, MAX_FRAME)
}

/// [`decode_frame`] with a smaller frame limit (see [`MAX_HANDSHAKE_FRAME`]).
pub fn decode_frame_limited(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(ControlMsg, usize)>, ControlError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > max_frame.min(MAX_FRAME) {
        return Err(ControlError::FrameTooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[4..4 + len])
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    Ok(Some((msg, 4 + len)))
}

/// Checks the preamble once 8 bytes are in. `Ok(false)`: need more bytes.
pub fn check_preamble(buf: &[u8]) -> Result<bool, ControlError> {
    let n = buf.len().min(PREAMBLE.len());
    if buf[..n] != PREAMBLE[..n] {
        return Err(ControlError::BadPreamble);
    }
    Ok(buf.len() >= PREAMBLE.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trip() {
        let msgs = vec![
            ControlMsg::Hello {
                version: 1,
                capabilities: vec!["ports".into(), "from-the-future".into()],
                software: "t".into(),
                nonce: Some("00ff".into()),
            },
            ControlMsg::Welcome {
                version: 1,
                capabilities: vec![],
                token: 9,
                max_open_ports: 10,
                software: String::new(),
                max_probe_rate: 100,
                nonce: None,
                proof: Some("ab".into()),
            },
            ControlMsg::Auth { proof: "cd".into() },
            ControlMsg::AuthOk,
            ControlMsg::Open {
                ports: vec![1, 2, 65535],
            },
            ControlMsg::Opened {
                opened: vec![1],
                in_use: vec![2],
                denied: vec![65535],
                failed: vec![],
            },
            ControlMsg::Error {
                code: ErrorCode::TooManyPorts,
                message: "x".into(),
                fatal: false,
            },
            ControlMsg::Bye,
            ControlMsg::MtuOpen { port: None },
            ControlMsg::MtuOpen { port: Some(5000) },
            ControlMsg::NatOpen { fixed: vec![] },
            ControlMsg::NatOpen {
                fixed: vec![443, 4500],
            },
            ControlMsg::NatOpened {
                ports: vec![40000, 40001],
                fixed: vec![443],
                alt: Some("198.18.0.3:40002".parse().unwrap()),
                max_flows: 512,
                max_scheduled: 128,
                max_gap_ms: 1_800_000,
            },
            ControlMsg::NatSend {
                flow: 3,
                gap_ms: 5000,
                from: "198.18.0.2:40001".parse().unwrap(),
            },
            ControlMsg::NatScheduled { flow: 3 },
            ControlMsg::MtuSend {
                sizes: vec![1372, 1472],
                count: 2,
                df: true,
                fragment_at: None,
                linger_ms: 200,
            },
            ControlMsg::MtuSent {
                results: vec![MtuSendResult {
                    size: 1472,
                    sent: 2,
                    error: None,
                    icmp: Some(IcmpError {
                        origin: crate::icmp::IcmpOrigin::Icmp4,
                        icmp_type: 3,
                        code: 4,
                        info: 1400,
                        errno: 90,
                        from: Some("198.18.2.254".parse().unwrap()),
                    }),
                }],
            },
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(m.to_frame());
        }
        let mut at = 0;
        for m in &msgs {
            assert_eq!(decode_frame(&stream[at..at + 3]).unwrap(), None);
            let (got, used) = decode_frame(&stream[at..]).unwrap().unwrap();
            assert_eq!(&got, m);
            at += used;
        }
        assert_eq!(at, stream.len());
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let body = br#"{"type":"hello","version":2,"capabilities":["x"],"new_field":1}"#;
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        let (m, _) = decode_frame(&f).unwrap().unwrap();
        assert!(matches!(m, ControlMsg::Hello { version: 2, .. }));
    }

    #[test]
    fn mtu_open_without_fields() {
        let body = br#"{"type":"mtu_open"}"#;
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        let (m, _) = decode_frame(&f).unwrap().unwrap();
        assert_eq!(m, ControlMsg::MtuOpen { port: None });
    }

    #[test]
    fn version_one_messages_without_auth_fields_still_decode() {
        // What a build without authenticated mode sends and expects.
        let body = br#"{"type":"welcome","version":1,"capabilities":[],"token":5,"max_open_ports":9,"software":"old"}"#;
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        let (m, _) = decode_frame(&f).unwrap().unwrap();
        assert!(matches!(
            m,
            ControlMsg::Welcome {
                max_probe_rate: 0,
                nonce: None,
                proof: None,
                ..
            }
        ));
        let hello = ControlMsg::Hello {
            version: 1,
            capabilities: vec![],
            software: String::new(),
            nonce: None,
        };
        let json = String::from_utf8(hello.to_frame()[4..].to_vec()).unwrap();
        assert!(
            !json.contains("nonce"),
            "no new field unless it is used: {json}"
        );
    }

    #[test]
    fn handshake_limit() {
        let big = ControlMsg::Open {
            ports: vec![1; 3000],
        }
        .to_frame();
        assert!(matches!(
            decode_frame_limited(&big, MAX_HANDSHAKE_FRAME),
            Err(ControlError::FrameTooLarge(_))
        ));
        assert!(decode_frame(&big).unwrap().is_some());
    }

    #[test]
    fn limits_and_preamble() {
        let big = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            decode_frame(&big),
            Err(ControlError::FrameTooLarge(MAX_FRAME + 1))
        );
        assert_eq!(check_preamble(b"UDP"), Ok(false));
        assert_eq!(check_preamble(b"UDPREACH"), Ok(true));
        assert_eq!(check_preamble(b"{\"pro"), Err(ControlError::BadPreamble));
    }

    fn ports() -> impl Strategy<Value = Vec<u16>> {
        proptest::collection::vec(any::<u16>(), 0..50)
    }

    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn msg() -> impl Strategy<Value = ControlMsg> {
        let code = prop_oneof![
            Just(ErrorCode::BadVersion),
            Just(ErrorCode::BadRequest),
            Just(ErrorCode::TooManyPorts),
            Just(ErrorCode::TooManySessions),
            Just(ErrorCode::AuthFailed),
            Just(ErrorCode::Unexpected),
        ];
        prop_oneof![
            (
                any::<u32>(),
                proptest::collection::vec(text(), 0..4),
                text(),
                proptest::option::of(text())
            )
                .prop_map(|(version, capabilities, software, nonce)| {
                    ControlMsg::Hello {
                        version,
                        capabilities,
                        software,
                        nonce,
                    }
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                text(),
                any::<u32>(),
                proptest::option::of(text()),
                proptest::option::of(text())
            )
                .prop_map(
                    |(version, token, max_open_ports, software, max_probe_rate, nonce, proof)| {
                        ControlMsg::Welcome {
                            version,
                            capabilities: vec![],
                            token,
                            max_open_ports,
                            software,
                            max_probe_rate,
                            nonce,
                            proof,
                        }
                    }
                ),
            text().prop_map(|proof| ControlMsg::Auth { proof }),
            Just(ControlMsg::AuthOk),
            ports().prop_map(|ports| ControlMsg::Open { ports }),
            (ports(), ports(), ports(), ports()).prop_map(|(opened, in_use, denied, failed)| {
                ControlMsg::Opened {
                    opened,
                    in_use,
                    denied,
                    failed,
                }
            }),
            ports().prop_map(|ports| ControlMsg::Arrivals { ports }),
            (ports(), proptest::collection::vec(any::<u32>(), 0..50))
                .prop_map(|(ports, counts)| ControlMsg::ArrivalCounts { ports, counts }),
            ports().prop_map(|ports| ControlMsg::Close { ports }),
            any::<u32>().prop_map(|count| ControlMsg::Closed { count }),
            (code, text(), any::<bool>()).prop_map(|(code, message, fatal)| ControlMsg::Error {
                code,
                message,
                fatal
            }),
            Just(ControlMsg::Bye),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_frame(&bytes);
            let _ = check_preamble(&bytes);
        }

        /// Every message, as a stream of back-to-back frames, decodes to itself.
        #[test]
        fn every_message_round_trips(msgs in proptest::collection::vec(msg(), 1..8)) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend(m.to_frame());
            }
            let mut at = 0;
            for m in &msgs {
                let (got, used) = decode_frame(&stream[at..]).unwrap().unwrap();
                prop_assert_eq!(&got, m);
                at += used;
            }
            prop_assert_eq!(at, stream.len());
        }
    }
}
