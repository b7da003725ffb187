//! STAMP session-sender (RFC 8762 / 8972) as an [`Engine`]: what to send
//! when, which reflected packet answers which test packet, and the ping
//! statistics of [`PingSession`] (which it reuses) plus what only STAMP
//! tells: the reflector's processing time and the TTL it saw, the
//! DSCP/ECN each way (Class of Service TLV), one-way delays when both
//! clocks say they are synchronised, and the loss split by direction when
//! the reflector is stateful.
//!
//! Stateful or stateless: a stateful reflector numbers its replies from 0
//! on its own; a stateless one copies the sender's number. The sender
//! numbers its packets from [`FIRST_SEQ`], not 0, so the first reply tells
//! the two apart: a stateless echo equals our number, a stateful counter
//! (from 0) never does. With a stateless reflector the direction of a loss
//! cannot be known and is reported as unknown, never guessed.

use crate::engine::Engine;
use crate::ping::{PingConfig, PingEvent, PingSession, PingSummary};
use crate::stats::{RttStats, RttSummary};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_wire::icmp::IcmpReport;
use udpreach_wire::stamp::{
    append_hmac_tlv, find_cos, tlv_type, verify_base_hmac, ClassOfService, ErrorEstimate, Mode,
    ReflectorPacket, SenderPacket, TimestampFormat, TLV_HEADER_LEN,
};
use udpreach_wire::ServerStamp;

/// The sender's first sequence number (see the module docs). RFC 8762
/// says senders start at 0; no reflector depends on it, and starting
/// elsewhere is what tells a stateful reflector from a stateless one.
pub const FIRST_SEQ: u32 = 1 << 20;

/// How a [`StampSender`] runs.
#[derive(Clone, Debug)]
pub struct StampSenderConfig {
    /// Count, interval, timeout and deadline, as for ping.
    pub ping: PingConfig,
    /// HMAC key: authenticated mode.
    pub key: Option<Vec<u8>>,
    /// Session-sender identifier (RFC 8972).
    pub ssid: u16,
    /// The timestamp format we write (NTP or PTP).
    pub format: TimestampFormat,
    /// Whether our clock is synchronised to UTC (the S bit we send).
    pub synchronized: bool,
    /// The TOS byte we send with: adds a Class of Service TLV asking the
    /// reflector to answer with the same DSCP and ECN.
    pub class_of_service: Option<u8>,
    /// UDP payload bytes per packet: the base packet, the TLVs, and an
    /// Extra Padding TLV for the rest (see [`padded_len`]).
    pub size: usize,
    /// Realtime clock (Unix ns) at the `Instant` given to [`StampSender::new`]:
    /// timestamps are written from it and the engine's `now`.
    pub wall_clock_ns: u64,
}

/// The base packet and TLVs a configuration needs, before padding.
pub fn min_len(key: bool, class_of_service: bool) -> usize {
    let base = if key { Mode::Authenticated } else { Mode::Open }.base_len();
    let cos = if class_of_service {
        TLV_HEADER_LEN + 4
    } else {
        0
    };
    let hmac = if key && class_of_service {
        TLV_HEADER_LEN + udpreach_wire::stamp::HMAC_LEN
    } else {
        0
    };
    base + cos + hmac
}

/// Whether `size` can be built: the minimum, or at least a padding TLV more.
pub fn padded_len(key: bool, class_of_service: bool, size: usize) -> Result<usize, usize> {
    let min = min_len(key, class_of_service);
    if size == min || size >= min + TLV_HEADER_LEN {
        Ok(size)
    } else {
        Err(min)
    }
}

/// What the driver hands the engine.
#[derive(Clone, Debug)]
pub enum StampInput {
    /// The send of `seq` failed locally.
    SendFailed {
        /// The packet's ping sequence number.
        seq: u64,
    },
    /// The realtime clock just before the send call of `seq`.
    SendCall {
        /// The packet's ping sequence number.
        seq: u64,
        /// The realtime clock (Unix ns).
        realtime_ns: u64,
    },
    /// The kernel's transmit timestamp of `seq` (realtime ns).
    TxTimestamp {
        /// The packet's ping sequence number.
        seq: u64,
        /// The kernel's timestamp (Unix ns).
        kernel_ns: u64,
    },
    /// A datagram from the reflector's address.
    Reply {
        /// The datagram's bytes.
        data: Vec<u8>,
        /// The kernel's receive timestamp (realtime ns).
        kernel_rx_ns: Option<u64>,
        /// TOS / traffic class the reply arrived with.
        tos: Option<u8>,
    },
    /// An ICMP error for `seq` (or for the latest packet in flight).
    Icmp {
        /// The packet's ping sequence number, when the driver could tell.
        seq: Option<u64>,
        /// The ICMP error.
        report: IcmpReport,
    },
    /// Datagrams our receiving socket dropped so far for a full buffer
    /// (see [`crate::ping::PingInput::LocalDrops`]).
    LocalDrops {
        /// The total so far.
        total: u64,
    },
    /// Stop (Ctrl+C): nothing more is sent or awaited.
    Stop,
}

/// A test packet to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StampTransmit {
    /// The packet's ping sequence number.
    pub seq: u64,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// What one reflected packet said beyond the RTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StampReplyInfo {
    /// The reflector's sequence number (its own counter when stateful).
    pub reflector_seq: u32,
    /// TTL / hop limit our packet had at the reflector (0: it did not say).
    pub reflector_seen_ttl: u8,
    /// Reflector processing time: its transmit minus receive timestamp.
    pub reflector_processing_ns: u64,
    /// One-way delays, when both clocks say they are synchronised.
    pub forward_ns: Option<u64>,
    /// Reflector-to-sender delay (same condition as `forward_ns`).
    pub backward_ns: Option<u64>,
    /// DSCP / ECN our packet arrived at the reflector with (CoS TLV).
    pub reflector_saw_dscp: Option<u8>,
    /// ECN our packet arrived at the reflector with (CoS TLV).
    pub reflector_saw_ecn: Option<u8>,
    /// DSCP / ECN the reply arrived here with.
    pub reply_dscp: Option<u8>,
    /// ECN the reply arrived here with.
    pub reply_ecn: Option<u8>,
}

/// What the sender reports.
#[derive(Clone, Debug, PartialEq)]
pub enum StampEvent {
    /// A reply, late reply or duplicate, with what the reflector wrote.
    Reply {
        /// The reply as ping reports it.
        event: PingEvent,
        /// What the reflector wrote.
        info: StampReplyInfo,
    },
    /// A timeout or an ICMP error (as ping reports them).
    Ping(PingEvent),
    /// A packet from the reflector's address that is no STAMP reply to us:
    /// too short, or (authenticated mode) a wrong HMAC.
    Ignored {
        /// The ping sequence number it claimed to answer, if it could be read.
        seq: Option<u64>,
        /// Whether it was dropped for a wrong HMAC.
        unauthenticated: bool,
    },
}

/// Whether the reflector keeps its own sequence per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReflectorKind {
    /// Its own counter: loss is split by direction.
    Stateful,
    /// Echoes our numbers: the direction of a loss is unknown.
    Stateless,
    /// No reply told.
    Unknown,
}

/// DSCP / ECN each way, as the latest reply with a Class of Service TLV told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ClassOfServiceSeen {
    /// What we sent and asked the reply to carry.
    pub sent_dscp: u8,
    /// The ECN we sent.
    pub sent_ecn: u8,
    /// What arrived at the reflector (null: no reply carried the TLV back).
    pub reflector_saw_dscp: Option<u8>,
    /// The ECN that arrived at the reflector.
    pub reflector_saw_ecn: Option<u8>,
    /// Whether the reflector said it used the DSCP we asked for (RP = 0).
    pub reflector_used_requested_dscp: Option<bool>,
    /// What the reply arrived here with.
    pub reply_dscp: Option<u8>,
    /// The ECN the reply arrived here with.
    pub reply_ecn: Option<u8>,
    /// Replies whose arrival DSCP at either end differed from what was sent.
    pub remarked_replies: u64,
}

/// One-way delays (only when both clocks are marked synchronised).
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct OneWayDelays {
    /// Sender to reflector.
    pub forward: Option<RttSummary>,
    /// Reflector to sender.
    pub backward: Option<RttSummary>,
}

/// What `ping --stamp` adds to ping's summary.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StampSummary {
    /// `open` or `authenticated`.
    pub mode: &'static str,
    /// Whether the reflector is stateful, as its replies told.
    pub reflector: ReflectorKind,
    /// Whether the reflector marked its clock synchronised (S bit).
    pub reflector_clock_synchronized: Option<bool>,
    /// Present when both clocks were marked synchronised.
    pub one_way: Option<OneWayDelays>,
    /// Present with `--dscp` (the Class of Service TLV).
    pub class_of_service: Option<ClassOfServiceSeen>,
    /// Packets from the reflector's address that were no reply to us
    /// (too short, or a wrong HMAC in authenticated mode).
    pub ignored: u64,
}

/// The STAMP session-sender (see the module docs).
pub struct StampSender {
    cfg: StampSenderConfig,
    start: Instant,
    session: PingSession,
    transmits: VecDeque<StampTransmit>,
    events: VecDeque<StampEvent>,
    done: bool,
    stateful: Option<bool>,
    reflector_sync: Option<bool>,
    /// One-way delay statistics; `None` without RTT statistics
    /// ([`StampSender::without_rtt_stats`]).
    forward: Option<RttStats>,
    backward: Option<RttStats>,
    cos: Option<ClassOfServiceSeen>,
    ignored: u64,
    /// Unix ns we wrote into each packet still remembered, by seq.
    sent_ns: VecDeque<(u64, u64)>,
    packet: Vec<u8>,
    /// The next ping seq to be sent.
    next_seq: u64,
}

/// Sent timestamps remembered for one-way delays.
const SENT_HISTORY: usize = 1 << 16;

impl StampSender {
    /// A session configured by `cfg`, starting at `now`.
    pub fn new(cfg: StampSenderConfig, now: Instant) -> Self {
        let mut s = Self::without_rtt_stats(cfg, now);
        s.session = PingSession::new(s.cfg.ping.clone(), now);
        s.forward = Some(RttStats::new());
        s.backward = Some(RttStats::new());
        s
    }

    /// A session that keeps no RTT or one-way delay statistics of its own
    /// (see [`PingSession::without_rtt_stats`]): each reply's figures are in
    /// its [`StampEvent`]; the summaries' `rtt`, `rtt_user` and `one_way`
    /// are empty. For callers that record them themselves (the monitor).
    pub fn without_rtt_stats(cfg: StampSenderConfig, now: Instant) -> Self {
        let cos = cfg.class_of_service.map(|tos| ClassOfServiceSeen {
            sent_dscp: tos >> 2,
            sent_ecn: tos & 3,
            reflector_saw_dscp: None,
            reflector_saw_ecn: None,
            reflector_used_requested_dscp: None,
            reply_dscp: None,
            reply_ecn: None,
            remarked_replies: 0,
        });
        StampSender {
            session: PingSession::without_rtt_stats(cfg.ping.clone(), now),
            cfg,
            start: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            done: false,
            stateful: None,
            reflector_sync: None,
            forward: None,
            backward: None,
            cos,
            ignored: 0,
            sent_ns: VecDeque::new(),
            packet: Vec::new(),
            next_seq: 0,
        }
    }

    fn mode(&self) -> Mode {
        if self.cfg.key.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        }
    }

    fn wall_ns(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        self.cfg.wall_clock_ns + u64::try_from(since).unwrap_or(u64::MAX / 2)
    }

    /// The full 64-bit ping seq of a 32-bit STAMP sequence number: the
    /// nearest at or below the next one to send.
    fn ping_seq(&self, stamp_seq: u32) -> Option<u64> {
        let next = self.next_seq;
        let low = u64::from(stamp_seq.wrapping_sub(FIRST_SEQ));
        let mut seq = (next & !0xffff_ffff) | low;
        if seq >= next {
            seq = seq.checked_sub(1 << 32)?;
        }
        Some(seq)
    }

    fn build(&mut self, seq: u64, now: Instant) -> Vec<u8> {
        let header = SenderPacket {
            seq: FIRST_SEQ.wrapping_add(seq as u32),
            timestamp: self.cfg.format.encode(self.wall_ns(now)),
            error_estimate: ErrorEstimate::new(
                self.cfg.synchronized,
                self.cfg.format == TimestampFormat::Ptp,
                22,
                1,
            ),
            ssid: self.cfg.ssid,
        };
        let mut tlvs = Vec::new();
        if let Some(tos) = self.cfg.class_of_service {
            tlvs.extend_from_slice(&ClassOfService::request_tlv(tos >> 2, tos & 3));
        }
        let key = self.cfg.key.clone();
        let mut out = std::mem::take(&mut self.packet);
        header.encode(key.as_deref(), &tlvs, &mut out);
        let hmac_tlv = key.is_some() && !tlvs.is_empty();
        let target = self.cfg.size;
        let after_hmac = out.len()
            + if hmac_tlv {
                TLV_HEADER_LEN + udpreach_wire::stamp::HMAC_LEN
            } else {
                0
            };
        if target >= after_hmac + TLV_HEADER_LEN {
            let pad = target - after_hmac - TLV_HEADER_LEN;
            out.extend_from_slice(&[0, tlv_type::EXTRA_PADDING]);
            out.extend_from_slice(&(pad as u16).to_be_bytes());
            out.resize(out.len() + pad, 0);
        }
        if let (Some(k), true) = (&key, hmac_tlv) {
            append_hmac_tlv(&mut out, k);
        }
        let data = out.clone();
        self.packet = out;
        data
    }

    fn remember_sent(&mut self, seq: u64, ns: u64) {
        self.sent_ns.push_back((seq, ns));
        if self.sent_ns.len() > SENT_HISTORY {
            self.sent_ns.pop_front();
        }
    }

    fn sent_ns_of(&self, seq: u64) -> Option<u64> {
        let first = self.sent_ns.front()?.0;
        let (s, ns) = *self
            .sent_ns
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
        (s == seq).then_some(ns)
    }

    fn on_reply(&mut self, data: &[u8], kernel_rx_ns: Option<u64>, tos: Option<u8>, now: Instant) {
        let mode = self.mode();
        let Ok(r) = ReflectorPacket::decode(data, mode) else {
            self.ignored += 1;
            self.events.push_back(StampEvent::Ignored {
                seq: None,
                unauthenticated: false,
            });
            return;
        };
        let seq = self.ping_seq(r.sender_seq);
        if let Some(k) = &self.cfg.key {
            if verify_base_hmac(data, k).is_err() {
                self.ignored += 1;
                self.events.push_back(StampEvent::Ignored {
                    seq,
                    unauthenticated: true,
                });
                return;
            }
        }
        let Some(seq) = seq else { return };
        if r.seq != r.sender_seq {
            self.stateful = Some(true);
        } else if self.stateful.is_none() {
            self.stateful = Some(false);
        }
        let format = r.error_estimate.format();
        let rx_ns = format.decode(r.receive_timestamp);
        let tx_ns = format.decode(r.timestamp);
        self.reflector_sync = Some(r.error_estimate.synchronized());
        // A stateless reflector's number says nothing about what it received.
        let flow_count = if self.stateful == Some(true) {
            r.seq.wrapping_add(1)
        } else {
            0
        };
        let stamp = ServerStamp {
            rx_ns,
            tx_ns: tx_ns.max(rx_ns),
            flow_count,
            seen_from: SocketAddr::from(([0, 0, 0, 0], 0)),
            seen_ttl: r.sender_ttl,
            withheld: 0,
        };
        let Some(event) = self
            .session
            .on_reply_timed(seq, now, kernel_rx_ns, Some(stamp))
        else {
            return;
        };
        let both_sync = self.cfg.synchronized && r.error_estimate.synchronized();
        let mut info = StampReplyInfo {
            reflector_seq: r.seq,
            reflector_seen_ttl: r.sender_ttl,
            reflector_processing_ns: tx_ns.saturating_sub(rx_ns),
            forward_ns: None,
            backward_ns: None,
            reflector_saw_dscp: None,
            reflector_saw_ecn: None,
            reply_dscp: tos.map(|t| t >> 2),
            reply_ecn: tos.map(|t| t & 3),
        };
        if both_sync {
            let arrived = kernel_rx_ns.unwrap_or_else(|| self.wall_ns(now));
            info.forward_ns = self
                .sent_ns_of(seq)
                .and_then(|sent| rx_ns.checked_sub(sent));
            info.backward_ns = arrived.checked_sub(tx_ns);
        }
        let first_copy = matches!(event, PingEvent::Reply { .. });
        if first_copy {
            if let (Some(f), Some(s)) = (info.forward_ns, self.forward.as_mut()) {
                s.record(Duration::from_nanos(f));
            }
            if let (Some(b), Some(s)) = (info.backward_ns, self.backward.as_mut()) {
                s.record(Duration::from_nanos(b));
            }
        }
        if let (Some(seen), Some(cos)) = (self.cos.as_mut(), find_cos(&data[mode.base_len()..])) {
            info.reflector_saw_dscp = Some(cos.dscp2);
            info.reflector_saw_ecn = Some(cos.ecn2);
            seen.reflector_saw_dscp = Some(cos.dscp2);
            seen.reflector_saw_ecn = Some(cos.ecn2);
            seen.reflector_used_requested_dscp = Some(cos.rp == 0);
            seen.reply_dscp = info.reply_dscp;
            seen.reply_ecn = info.reply_ecn;
            let back_changed = cos.rp == 0 && info.reply_dscp.is_some_and(|d| d != cos.dscp1);
            if first_copy && (cos.dscp2 != seen.sent_dscp || back_changed) {
                seen.remarked_replies += 1;
            }
        }
        self.events.push_back(StampEvent::Reply { event, info });
    }

    fn refresh_done(&mut self, now: Instant) {
        self.session.check_done(now);
        self.done = self.session.is_done();
    }

    /// Ping's statistics, with the loss split left unknown when the
    /// reflector is not known to be stateful.
    pub fn summary(&self) -> PingSummary {
        let mut s = self.session.summary();
        s.server_saw = None;
        s.port_translated = 0;
        // A duplicated request moves a stateful counter on too: when the
        // split claims more loss than there was, it cannot be trusted.
        let split = s.upstream_lost.unwrap_or(0) + s.downstream_lost.unwrap_or(0);
        if self.stateful != Some(true) || split > s.lost {
            s.upstream_lost = None;
            s.downstream_lost = None;
            s.direction_unknown = (s.lost > 0).then_some(s.lost);
        }
        s
    }

    /// What STAMP adds to ping's summary.
    pub fn stamp_summary(&self) -> StampSummary {
        let both_sync = self.cfg.synchronized && self.reflector_sync == Some(true);
        StampSummary {
            mode: match self.mode() {
                Mode::Open => "open",
                Mode::Authenticated => "authenticated",
            },
            reflector: match self.stateful {
                Some(true) => ReflectorKind::Stateful,
                Some(false) => ReflectorKind::Stateless,
                None => ReflectorKind::Unknown,
            },
            reflector_clock_synchronized: self.reflector_sync,
            one_way: both_sync.then(|| OneWayDelays {
                forward: self.forward.as_ref().and_then(RttStats::summary),
                backward: self.backward.as_ref().and_then(RttStats::summary),
            }),
            class_of_service: self.cos.clone(),
            ignored: self.ignored,
        }
    }

    /// Bytes per test packet (replies are the same size).
    pub fn packet_len(&self) -> usize {
        self.cfg.size
    }

    /// The achieved send rate when it fell short of the interval's.
    pub fn fell_behind(&self) -> Option<f64> {
        self.session.fell_behind()
    }
}

impl Engine for StampSender {
    type Input = StampInput;
    type Transmit = StampTransmit;
    type Event = StampEvent;

    fn handle_input(&mut self, input: StampInput, now: Instant) {
        match input {
            StampInput::SendFailed { seq } => self.session.on_send_failed(seq),
            StampInput::SendCall { seq, realtime_ns } => {
                self.session.on_send_call(seq, realtime_ns)
            }
            StampInput::TxTimestamp { seq, kernel_ns } => {
                self.session.on_tx_timestamp(seq, kernel_ns)
            }
            StampInput::Reply {
                data,
                kernel_rx_ns,
                tos,
            } => self.on_reply(&data, kernel_rx_ns, tos, now),
            StampInput::Icmp { seq, report } => {
                if let Some(seq) = seq.or_else(|| self.session.latest_waiting()) {
                    if let Some(ev) = self.session.on_icmp_error(seq, report, now) {
                        self.events.push_back(StampEvent::Ping(ev));
                    }
                }
            }
            StampInput::LocalDrops { total } => self.session.on_local_drops(total),
            StampInput::Stop => self.session.stop(now),
        }
        self.refresh_done(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<StampTransmit> {
        if let Some(seq) = self.session.poll_send(now) {
            self.next_seq = seq + 1;
            self.session.on_sent(seq, now, None);
            let data = self.build(seq, now);
            let ns = self.wall_ns(now);
            self.remember_sent(seq, ns);
            self.transmits.push_back(StampTransmit { seq, data });
        }
        self.transmits.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        self.session.next_wakeup()
    }

    fn handle_timeout(&mut self, now: Instant) {
        for ev in self.session.poll_timeouts(now) {
            self.events.push_back(StampEvent::Ping(ev));
        }
        self.refresh_done(now);
    }

    fn poll_event(&mut self) -> Option<StampEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// A reflector's per-session sequence counters, for the stateful mode:
/// keyed by the sender's address and SSID, at most `capacity` sessions
/// (the least recently used is forgotten, so a flood of new senders costs
/// bounded memory), each forgotten after `idle` without a packet.
pub struct ReflectorSessions {
    capacity: usize,
    idle: Duration,
    sessions: std::collections::HashMap<(SocketAddr, u16), (u32, Instant)>,
}

impl ReflectorSessions {
    /// At most `capacity` sessions (at least 1), each forgotten after `idle`.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        ReflectorSessions {
            capacity: capacity.max(1),
            idle,
            sessions: std::collections::HashMap::new(),
        }
    }

    /// The reflector's next sequence number for this sender's session.
    pub fn next_seq(&mut self, from: SocketAddr, ssid: u16, now: Instant) -> u32 {
        let idle = self.idle;
        if let Some((seq, last)) = self.sessions.get_mut(&(from, ssid)) {
            if now.saturating_duration_since(*last) <= idle {
                let s = *seq;
                *seq = seq.wrapping_add(1);
                *last = now;
                return s;
            }
        }
        if self.sessions.len() >= self.capacity {
            self.sessions
                .retain(|_, (_, last)| now.saturating_duration_since(*last) <= idle);
        }
        if self.sessions.len() >= self.capacity {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.sessions.remove(&k);
            }
        }
        self.sessions.insert((from, ssid), (1, now));
        0
    }

    /// Sessions remembered now.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// How a server's STAMP reflector answers.
#[derive(Clone, Debug)]
pub struct ReflectorPolicy {
    /// With a key: authenticated mode only (HMAC-SHA-256 with these bytes).
    pub key: Option<Vec<u8>>,
    /// Number replies per session (sender address and SSID), so senders can
    /// split loss by direction; else echo the sender's numbers.
    pub stateful: bool,
    /// The error estimate we send; its Z bit picks NTP or PTP timestamps.
    pub error_estimate: ErrorEstimate,
    /// Source ports never answered (0, 7, 19, the server's own, 1-1023 by default).
    pub source_ports: crate::responder::SourcePorts,
    /// Largest request answered.
    pub max_datagram: usize,
    /// Stateful sessions remembered at most, and for how long without a packet.
    pub max_sessions: usize,
    /// How long a stateful session is remembered without a packet.
    pub session_idle: Duration,
}

/// Stateful sessions a reflector remembers by default.
pub const DEFAULT_REFLECTOR_SESSIONS: usize = 16_384;
/// How long a stateful session is kept without a packet (stamp-suite's default too).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(300);

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReflectorDrop {
    /// From a refused source port (reflection/loop protection).
    SourcePort,
    /// Larger than the server answers.
    TooLarge,
    /// Shorter than the base packet of the mode.
    TooShort,
    /// Authenticated mode: the base HMAC is wrong.
    BadHmac,
    /// The per-destination reply budget is spent.
    Budget,
}

/// What the reflector decided about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReflectorAnswer {
    /// Bytes of the answer in `out` (always the request's length).
    pub len: usize,
    /// The TOS byte the sender asked the answer to carry (CoS TLV).
    pub tos: Option<u8>,
}

/// The server side of STAMP: checks the server's policies, then builds the
/// answer with [`udpreach_wire::stamp::reflect`]. It sends nothing itself
/// and reads no clock; the server's worker moves the bytes.
pub struct StampReflector {
    policy: ReflectorPolicy,
    sessions: ReflectorSessions,
    /// Requests answered.
    pub replies: u64,
    /// Requests not answered, by reason.
    pub dropped: std::collections::HashMap<ReflectorDrop, u64>,
}

/// What arrived: from where, with which TTL and TOS, and when (Unix ns).
#[derive(Clone, Copy, Debug)]
pub struct ReflectorRequest {
    /// The sender's address.
    pub from: SocketAddr,
    /// The TTL / hop limit it arrived with, if known.
    pub ttl: Option<u8>,
    /// The TOS / traffic class it arrived with, if known.
    pub tos: Option<u8>,
    /// When it arrived (Unix ns).
    pub rx_ns: u64,
}

impl StampReflector {
    /// A reflector answering by `policy`.
    pub fn new(policy: ReflectorPolicy) -> Self {
        StampReflector {
            sessions: ReflectorSessions::new(policy.max_sessions, policy.session_idle),
            policy,
            replies: 0,
            dropped: std::collections::HashMap::new(),
        }
    }

    /// The policy it answers by.
    pub fn policy(&self) -> &ReflectorPolicy {
        &self.policy
    }

    /// Stateful sessions remembered now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Answers `data` into `out`, or says why not. The answer is never
    /// larger than the request, goes only to the request's source, and
    /// draws on the per-destination `budget` like every other reply.
    pub fn respond(
        &mut self,
        data: &[u8],
        req: &ReflectorRequest,
        tx_ns: u64,
        budget: &mut crate::reply_budget::ReplyBudget,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<ReflectorAnswer, ReflectorDrop> {
        let r = self.decide(data, req, tx_ns, budget, now, out);
        match r {
            Ok(_) => self.replies += 1,
            Err(why) => *self.dropped.entry(why).or_default() += 1,
        }
        r
    }

    fn decide(
        &mut self,
        data: &[u8],
        req: &ReflectorRequest,
        tx_ns: u64,
        budget: &mut crate::reply_budget::ReplyBudget,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<ReflectorAnswer, ReflectorDrop> {
        use udpreach_wire::stamp::{reflect, Reflection, StampError};
        if self.policy.source_ports.refused(req.from.port()) {
            return Err(ReflectorDrop::SourcePort);
        }
        if data.len() > self.policy.max_datagram {
            return Err(ReflectorDrop::TooLarge);
        }
        let key = self.policy.key.as_deref();
        let mode = if key.is_some() {
            Mode::Authenticated
        } else {
            Mode::Open
        };
        let sender = SenderPacket::decode(data, mode).map_err(|_| ReflectorDrop::TooShort)?;
        if let Some(k) = key {
            verify_base_hmac(data, k).map_err(|_| ReflectorDrop::BadHmac)?;
        }
        // Every answer draws on the per-destination budget, authenticated
        // ones too: STAMP's HMAC does not stop a captured packet from being
        // replayed with another (a victim's) source address.
        if !budget.allow(req.from.ip(), data.len(), now) {
            return Err(ReflectorDrop::Budget);
        }
        let seq = if self.policy.stateful {
            self.sessions.next_seq(req.from, sender.ssid, now)
        } else {
            sender.seq
        };
        let reflection = Reflection {
            seq,
            receive_unix_ns: req.rx_ns,
            transmit_unix_ns: tx_ns.max(req.rx_ns),
            error_estimate: self.policy.error_estimate,
            ttl: req.ttl.unwrap_or(0),
            tos: req.tos,
            honours_dscp: true,
        };
        let reflected = reflect(data, key, &reflection, out).map_err(|e| match e {
            StampError::TooShort { .. } => ReflectorDrop::TooShort,
            StampError::BadHmac => ReflectorDrop::BadHmac,
        })?;
        Ok(ReflectorAnswer {
            len: out.len(),
            tos: reflected.requested_tos.map(|(d, e)| d << 2 | e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Limits, LinkConfig, Sim};
    use udpreach_wire::stamp::{reflect, Reflection};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config(count: u64, key: Option<&[u8]>, cos: Option<u8>, sync: bool) -> StampSenderConfig {
        StampSenderConfig {
            ping: PingConfig {
                count: Some(count),
                interval: ms(10),
                timeout: ms(500),
                deadline: None,
            },
            key: key.map(<[u8]>::to_vec),
            ssid: 7,
            format: TimestampFormat::Ntp,
            synchronized: sync,
            class_of_service: cos,
            size: min_len(key.is_some(), cos.is_some()),
            wall_clock_ns: 1_764_000_000_000_000_000,
        }
    }

    /// Runs a sender against a simulated reflector (stateful or not) over
    /// `up` and `down`; the reflector's clock equals the sender's.
    fn run(
        cfg: StampSenderConfig,
        up: LinkConfig,
        down: LinkConfig,
        stateful: bool,
        seed: u64,
    ) -> (StampSender, Vec<StampEvent>) {
        let wall0 = cfg.wall_clock_ns;
        let key = cfg.key.clone();
        let mut sim = Sim::new(seed);
        let t0 = sim.start();
        let mut s = StampSender::new(cfg, t0);
        let mut sessions = ReflectorSessions::new(16, Duration::from_secs(60));
        let from: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let mut rng = crate::testkit::Rng::new(seed ^ 0x5a);
        let outcome = sim.run(&mut s, Limits::default(), |sim, t| {
            // Upstream: does it arrive, and when?
            for at in up.arrivals(sim.now(), &mut rng) {
                let sender = SenderPacket::decode(
                    &t.data,
                    if key.is_some() {
                        Mode::Authenticated
                    } else {
                        Mode::Open
                    },
                )
                .unwrap();
                let wall = |i: Instant| wall0 + (i - t0).as_nanos() as u64;
                let seq = if stateful {
                    sessions.next_seq(from, sender.ssid, at)
                } else {
                    sender.seq
                };
                let r = Reflection {
                    seq,
                    receive_unix_ns: wall(at),
                    transmit_unix_ns: wall(at) + 20_000,
                    error_estimate: ErrorEstimate::new(true, false, 22, 1),
                    ttl: 61,
                    tos: Some(46 << 2),
                    honours_dscp: true,
                };
                let mut out = Vec::new();
                reflect(&t.data, key.as_deref(), &r, &mut out).unwrap();
                for back in down.arrivals(at, &mut rng) {
                    sim.deliver_at(
                        back,
                        StampInput::Reply {
                            data: out.clone(),
                            kernel_rx_ns: Some(wall(back)),
                            tos: Some(46 << 2),
                        },
                    );
                }
            }
        });
        assert!(outcome.done, "the sender finishes");
        (s, outcome.events)
    }

    #[test]
    fn stateful_reflector_splits_loss_by_direction() {
        let (s, _) = run(
            config(1000, None, None, false),
            LinkConfig::lossy(ms(5), 0.1),
            LinkConfig::lossy(ms(5), 0.2),
            true,
            1,
        );
        let sum = s.summary();
        assert_eq!(s.stamp_summary().reflector, ReflectorKind::Stateful);
        let (up, down) = (sum.upstream_lost.unwrap(), sum.downstream_lost.unwrap());
        // 10% of 1000 lost up; 20% of the ~900 that arrived lost down.
        assert!((60..=140).contains(&up), "up {up}");
        assert!((130..=230).contains(&down), "down {down}");
        assert_eq!(
            up + down + sum.direction_unknown.unwrap_or(0),
            sum.lost,
            "{sum:?}"
        );
        let rtt = sum.rtt.unwrap();
        assert!((rtt.p50_ms - 10.0).abs() < 0.5, "{rtt:?}");
        let proc = sum.server_processing.unwrap();
        assert!((proc.avg_us - 20.0).abs() < 0.01);
        assert_eq!(sum.server_seen_ttl, Some(61));
    }

    #[test]
    fn stateless_reflector_leaves_the_direction_unknown() {
        let (s, _) = run(
            config(500, None, None, false),
            LinkConfig::lossy(ms(5), 0.1),
            LinkConfig::lossy(ms(5), 0.2),
            false,
            2,
        );
        let sum = s.summary();
        assert_eq!(s.stamp_summary().reflector, ReflectorKind::Stateless);
        assert_eq!(sum.upstream_lost, None);
        assert_eq!(sum.downstream_lost, None);
        assert_eq!(sum.direction_unknown, Some(sum.lost));
        assert!(sum.lost > 50, "{sum:?}");
    }

    #[test]
    fn reordering_and_duplicates_are_counted_not_lost() {
        let link = LinkConfig {
            delay: ms(5),
            jitter: ms(30),
            loss: 0.0,
            duplicate: 0.1,
        };
        let (s, _) = run(
            config(300, None, None, false),
            link,
            LinkConfig::perfect(ms(5)),
            true,
            3,
        );
        let sum = s.summary();
        assert_eq!(sum.received, 300);
        assert_eq!(sum.lost, 0);
        assert!(sum.duplicates > 10 && sum.reordered > 10, "{sum:?}");
        // Duplicated requests move a stateful counter on: never read as loss.
        let split = sum.upstream_lost.unwrap_or(0) + sum.downstream_lost.unwrap_or(0);
        assert!(split <= sum.lost, "{sum:?}");
    }

    #[test]
    fn authenticated_class_of_service_and_one_way_delays() {
        let key = b"0123456789abcdef0123456789abcdef";
        let (s, events) = run(
            config(50, Some(key), Some(46 << 2), true),
            LinkConfig::perfect(ms(3)),
            LinkConfig::perfect(ms(7)),
            true,
            4,
        );
        let sum = s.summary();
        assert_eq!(sum.received, 50);
        let st = s.stamp_summary();
        assert_eq!(st.mode, "authenticated");
        let cos = st.class_of_service.unwrap();
        assert_eq!(
            (cos.sent_dscp, cos.reflector_saw_dscp, cos.reply_dscp),
            (46, Some(46), Some(46))
        );
        assert_eq!(cos.reflector_used_requested_dscp, Some(true));
        let ow = st.one_way.unwrap();
        let (f, b) = (ow.forward.unwrap(), ow.backward.unwrap());
        assert!((f.p50_ms - 3.0).abs() < 0.01, "{f:?}");
        assert!((b.p50_ms - (7.0 - 0.02)).abs() < 0.01, "{b:?}");
        assert!(events.iter().all(|e| matches!(e, StampEvent::Reply { .. })));
    }

    #[test]
    fn wrong_key_replies_are_ignored_not_counted() {
        let cfg = config(20, Some(b"right key right key"), None, false);
        let (mut s, _) = run(
            cfg,
            LinkConfig::perfect(ms(1)),
            LinkConfig::perfect(ms(1)),
            false,
            5,
        );
        let mut forged = Vec::new();
        ReflectorPacket {
            seq: FIRST_SEQ,
            timestamp: 0,
            error_estimate: ErrorEstimate(1),
            ssid: 7,
            receive_timestamp: 0,
            sender_seq: FIRST_SEQ,
            sender_timestamp: 0,
            sender_error_estimate: ErrorEstimate(1),
            sender_ttl: 1,
        }
        .encode(Some(b"wrong key"), &[], &mut forged);
        let before = s.summary();
        s.handle_input(
            StampInput::Reply {
                data: forged,
                kernel_rx_ns: None,
                tos: None,
            },
            Instant::now(),
        );
        assert_eq!(s.summary().duplicates, before.duplicates);
        assert_eq!(s.stamp_summary().ignored, 1);
    }

    #[test]
    fn sizes_pad_with_a_padding_tlv() {
        assert_eq!(padded_len(false, false, 44), Ok(44));
        assert_eq!(padded_len(false, false, 46), Err(44));
        assert_eq!(padded_len(true, true, 200), Ok(200));
        let mut cfg = config(1, None, Some(0), false);
        cfg.size = 100;
        let mut s = StampSender::new(cfg, Instant::now());
        let t = s.poll_transmit(Instant::now()).unwrap();
        assert_eq!(t.data.len(), 100);
        let (tlvs, end) = udpreach_wire::stamp::parse_tlvs(&t.data[44..]);
        assert_eq!(end, 56);
        assert_eq!(tlvs[1].kind, tlv_type::EXTRA_PADDING);
    }

    #[test]
    fn reflector_sessions_are_bounded() {
        let t0 = Instant::now();
        let mut r = ReflectorSessions::new(100, Duration::from_secs(60));
        for i in 0..10_000u32 {
            let from = SocketAddr::from(([198, 18, 0, 1], (i % 60_000) as u16));
            assert_eq!(r.next_seq(from, 0, t0 + ms(u64::from(i))), 0);
        }
        assert_eq!(r.len(), 100);
        let a: SocketAddr = "198.18.0.9:1".parse().unwrap();
        assert_eq!(r.next_seq(a, 1, t0), 0);
        assert_eq!(r.next_seq(a, 1, t0), 1);
        assert_eq!(r.next_seq(a, 2, t0), 0, "SSIDs are separate sessions");
        assert_eq!(r.next_seq(a, 1, t0 + Duration::from_secs(61)), 0);
    }

    fn policy(key: Option<&[u8]>, stateful: bool) -> ReflectorPolicy {
        ReflectorPolicy {
            key: key.map(<[u8]>::to_vec),
            stateful,
            error_estimate: ErrorEstimate::unsynchronized_ntp(),
            source_ports: crate::responder::SourcePorts {
                own: vec![862, 4000],
                allow_low: false,
            },
            max_datagram: 1500,
            max_sessions: 4,
            session_idle: Duration::from_secs(60),
        }
    }

    fn request(seq: u32, key: Option<&[u8]>) -> Vec<u8> {
        let mut b = Vec::new();
        SenderPacket {
            seq,
            timestamp: 1,
            error_estimate: ErrorEstimate(1),
            ssid: 1,
        }
        .encode(key, &ClassOfService::request_tlv(46, 0), &mut b);
        b
    }

    #[test]
    fn reflector_policies_bound_every_answer() {
        use crate::reply_budget::{BudgetRates, ReplyBudget};
        let now = Instant::now();
        let mut budget = ReplyBudget::new(BudgetRates {
            pps: 10,
            ..BudgetRates::default()
        });
        let mut r = StampReflector::new(policy(None, true));
        let mut out = Vec::new();
        let req = |port: u16| ReflectorRequest {
            from: SocketAddr::from(([198, 18, 0, 1], port)),
            ttl: Some(64),
            tos: Some(46 << 2),
            rx_ns: 1,
        };
        // Refused source ports: the server's own, echo, chargen, low ports.
        for port in [862, 4000, 7, 19, 53, 0] {
            assert_eq!(
                r.respond(&request(0, None), &req(port), 2, &mut budget, now, &mut out),
                Err(ReflectorDrop::SourcePort)
            );
        }
        assert_eq!(
            r.respond(&[0u8; 43], &req(5000), 2, &mut budget, now, &mut out),
            Err(ReflectorDrop::TooShort)
        );
        assert_eq!(
            r.respond(&vec![0u8; 1501], &req(5000), 2, &mut budget, now, &mut out),
            Err(ReflectorDrop::TooLarge)
        );
        // The per-destination budget holds for a flood: never more than it allows.
        let mut answered = 0;
        for i in 0..1000 {
            let q = request(i, None);
            if let Ok(a) = r.respond(&q, &req(5000), 2, &mut budget, now, &mut out) {
                assert_eq!(a.len, q.len(), "never larger than the request");
                assert_eq!(a.tos, Some(46 << 2));
                answered += 1;
            }
        }
        assert!(answered <= 20, "{answered}");
        assert!(r.dropped[&ReflectorDrop::Budget] >= 980);
        // Stateful: its own numbering, from 0, per sender.
        let got = ReflectorPacket::decode(&out, Mode::Open).unwrap();
        assert_eq!(u64::from(got.seq), answered as u64 - 1);
        // Sessions stay bounded whatever the number of senders.
        for port in 10_000..20_000 {
            let _ = r.respond(&request(0, None), &req(port), 2, &mut budget, now, &mut out);
        }
        assert!(r.sessions() <= 4);
    }

    #[test]
    fn keyed_reflector_answers_only_authenticated_requests() {
        use crate::reply_budget::{BudgetRates, ReplyBudget};
        let key = b"0123456789abcdef";
        let now = Instant::now();
        let mut budget = ReplyBudget::new(BudgetRates::default());
        let mut r = StampReflector::new(policy(Some(key), false));
        let from = ReflectorRequest {
            from: SocketAddr::from(([198, 18, 0, 1], 5000)),
            ttl: Some(64),
            tos: None,
            rx_ns: 1,
        };
        let mut out = Vec::new();
        // An open-mode request (44 bytes) is too short; a wrong key's HMAC is refused.
        assert_eq!(
            r.respond(&request(0, None), &from, 2, &mut budget, now, &mut out),
            Err(ReflectorDrop::TooShort)
        );
        assert_eq!(
            r.respond(
                &request(0, Some(b"other")),
                &from,
                2,
                &mut budget,
                now,
                &mut out
            ),
            Err(ReflectorDrop::BadHmac)
        );
        let q = request(5, Some(key));
        let a = r.respond(&q, &from, 2, &mut budget, now, &mut out).unwrap();
        assert_eq!(a.len, q.len());
        verify_base_hmac(&out, key).unwrap();
        let got = ReflectorPacket::decode(&out, Mode::Authenticated).unwrap();
        assert_eq!(
            (got.seq, got.sender_seq),
            (5, 5),
            "stateless echoes the number"
        );
        // A captured authenticated request replayed at a victim's address
        // is answered only within that address's budget.
        let mut small = ReplyBudget::new(BudgetRates {
            pps: 10,
            ..BudgetRates::default()
        });
        let replayed = (0..1000)
            .filter(|_| r.respond(&q, &from, 2, &mut small, now, &mut out).is_ok())
            .count();
        assert!(replayed <= 20, "{replayed}");
    }
}
