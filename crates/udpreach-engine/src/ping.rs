//! The ping state machine: when to send, which reply answers which probe,
//! what timed out, and the statistics at the end.

use crate::engine::Engine;
use crate::stats::{RttStats, RttSummary};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use udpreach_wire::icmp::IcmpReport;
use udpreach_wire::ServerStamp;

/// How many recent probes keep their state; older replies are ignored. Bounds
/// memory for a ping left running for days at a short interval.
const HISTORY: usize = 1 << 20;
/// How far behind its schedule sending may fall and still catch up by
/// sending what is due at once. A timer that wakes a little late (tokio's
/// has 1 ms granularity, so a 100 us interval is met in bursts of about ten)
/// is caught up; after a longer stall the schedule restarts from then, so
/// no burst is ever larger than this much of the schedule.
const MAX_CATCH_UP: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
/// How a [`PingSession`] sends and waits.
pub struct PingConfig {
    /// Probes to send; `None` runs until stopped.
    pub count: Option<u64>,
    /// Time between sends (from the schedule's start, no drift).
    pub interval: Duration,
    /// A probe without a reply after this long is reported lost (a later reply is "late").
    pub timeout: Duration,
    /// Stop everything this long after the start.
    pub deadline: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeState {
    Waiting,
    Replied,
    TimedOut,
    Late,
    SendFailed,
    /// An ICMP error came back instead of a reply.
    Errored,
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    sent_at: Instant,
    local_port: Option<u16>,
    state: ProbeState,
    /// Realtime clock just before the send call, and the kernel's transmit
    /// timestamp (same clock) when it came.
    send_call_ns: Option<u64>,
    kernel_tx_ns: Option<u64>,
}

/// Which clock readings an RTT came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RttClock {
    /// The kernel's transmit and receive timestamps: the same clock, taken
    /// at the same layer (the device), no process wake-up included.
    Kernel,
    /// Our process's monotonic clock before the send and after the read:
    /// what a user-space tool measures, wake-up included.
    User,
    /// Some replies had both kernel timestamps, some did not.
    Mixed,
}

/// What the driver tells a [`PingSession`] (the `now` passed with it is
/// when it happened: the send, or the read of the datagram).
#[derive(Clone, Debug, PartialEq)]
pub enum PingInput {
    /// Probe `seq` (from `poll_transmit`) left from `local_port`; the
    /// realtime clock (ns) read just before the send call is
    /// `send_call_ns`: a kernel transmit timestamp earlier than it belongs
    /// to another datagram.
    Sent {
        /// The probe.
        seq: u64,
        /// The local port, when each probe has its own (`--sport`).
        local_port: Option<u16>,
        /// Realtime clock before the send call.
        send_call_ns: Option<u64>,
    },
    /// The send of `seq` failed locally (for example, no route): counted,
    /// never awaited.
    SendFailed {
        /// The probe.
        seq: u64,
    },
    /// The kernel's software transmit timestamp of `seq` (realtime, ns).
    TxTimestamp {
        /// The probe.
        seq: u64,
        /// Kernel transmit time.
        kernel_tx_ns: u64,
    },
    /// A reply for `seq`, which the kernel timestamped at `kernel_rx_ns`
    /// (realtime) when it could.
    Reply {
        /// The probe the reply names.
        seq: u64,
        /// Kernel receive time.
        kernel_rx_ns: Option<u64>,
        /// The server's stamp, when the reply carries one.
        stamp: Option<ServerStamp>,
    },
    /// An ICMP error for `seq`, or, when too little was quoted to name the
    /// probe (`None`), for the latest probe still in flight.
    IcmpError {
        /// The probe named by the quoted datagram.
        seq: Option<u64>,
        /// What the error says.
        report: IcmpReport,
    },
    /// Datagrams our receiving socket(s) have dropped so far because their
    /// buffer was full (the kernel's count; it only grows): replies that
    /// reached this host and that we lost ourselves, not the network.
    LocalDrops {
        /// The total so far, over every socket of the run.
        total: u64,
    },
}

/// Something the user should see, as it happens.
#[derive(Clone, Debug, PartialEq)]
pub enum PingEvent {
    /// The first answer to a probe.
    Reply {
        /// The probe.
        seq: u64,
        /// Time from its send (kernel timestamps when both exist).
        rtt: Duration,
        /// Its local port, when each probe has its own (`--sport`).
        local_port: Option<u16>,
        /// The server's stamp, when the reply carries one.
        stamp: Option<ServerStamp>,
    },
    /// Another answer to a probe already answered.
    Duplicate {
        /// The probe.
        seq: u64,
        /// Time from its send.
        rtt: Duration,
    },
    /// An answer after the probe's timeout (or ICMP error).
    Late {
        /// The probe.
        seq: u64,
        /// Time from its send.
        rtt: Duration,
    },
    /// No answer within the timeout.
    Timeout {
        /// The probe.
        seq: u64,
        /// Its local port, when each probe has its own.
        local_port: Option<u16>,
    },
    /// An ICMP error answered the probe (port unreachable, prohibited...):
    /// no reply will come. ping(8) prints these as "From X ... Unreachable".
    IcmpError {
        /// The probe.
        seq: u64,
        /// Time from the send to the error.
        after: Duration,
        /// What the error says.
        report: IcmpReport,
        /// Its local port, when each probe has its own.
        local_port: Option<u16>,
    },
}

/// How many probes one kind of ICMP error from one host answered.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct IcmpTally {
    #[serde(flatten)]
    /// Who reported what.
    pub report: IcmpReport,
    /// Probes it answered.
    pub count: u64,
}

/// Server processing time (receive to send) over the replies that carried it.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ProcessingSummary {
    /// Smallest time the server held a probe, in microseconds.
    pub min_us: f64,
    /// Mean time the server held a probe, in microseconds.
    pub avg_us: f64,
    /// Largest time the server held a probe, in microseconds.
    pub max_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
/// The statistics at the end of a ping run (also the JSON summary).
pub struct PingSummary {
    /// Probes sent (less those whose send failed).
    pub transmitted: u64,
    /// Probes answered in time.
    pub received: u64,
    /// Extra copies of replies.
    pub duplicates: u64,
    /// Replies after their probe's timeout.
    pub late: u64,
    /// Replies that came after a reply to a later probe.
    pub reordered: u64,
    /// Sends that failed locally.
    pub send_errors: u64,
    /// Probes answered by an ICMP error (ping(8)'s "+N errors"); part of `lost`.
    pub errors: u64,
    /// The ICMP errors by reporting host and reason.
    pub icmp_errors: Vec<IcmpTally>,
    /// Probes whose reply the server withheld (its rate budget or policy),
    /// as the server's later replies told us: not network loss, and not
    /// part of `lost`. 0 against a plain echo server (it cannot tell).
    pub withheld: u64,
    /// Replies this host dropped itself: its receiving socket's buffer was
    /// full (the kernel's `SO_RXQ_OVFL` count, as of the last datagram
    /// read), at most the probes otherwise lost. Not network loss, and not
    /// part of `lost`; a larger buffer or a slower rate avoids it.
    pub local_drops: u64,
    /// Probes with neither a reply nor a late reply, less those withheld
    /// and those whose reply this host dropped.
    pub lost: u64,
    /// `lost` as a percentage of `transmitted`.
    pub loss_percent: f64,
    /// Round-trip statistics of the replies in time.
    pub rtt: Option<RttSummary>,
    /// Lost on the way to the server, from the server's receive counter.
    pub upstream_lost: Option<u64>,
    /// Reached the server, reply lost on the way back.
    pub downstream_lost: Option<u64>,
    /// Lost after the last reply that carried a counter: direction unknown.
    pub direction_unknown: Option<u64>,
    /// How long the server held probes (from its stamps).
    pub server_processing: Option<ProcessingSummary>,
    /// The source address the server saw in its latest reply.
    pub server_saw: Option<SocketAddr>,
    /// TTL or hop limit our probes had on arrival at the server.
    pub server_seen_ttl: Option<u8>,
    /// Replies whose seen source port differs from the port we sent from.
    pub port_translated: u64,
    /// Source ports (with `--sport`) whose probe got no reply.
    pub silent_source_ports: Vec<u16>,
    /// Time from the start to the end of the run.
    pub elapsed_ms: f64,
    /// Which clock `rtt` (and each reply's rtt) was read from.
    pub rtt_clock: Option<RttClock>,
    /// The same replies' RTTs in user space (our send call to our read,
    /// wake-up included): the figure to compare with user-space tools.
    pub rtt_user: Option<RttSummary>,
    /// Probes per second actually sent, first send to last (`None` below
    /// two probes); below 1/interval when the machine could not keep up.
    pub send_rate_pps: Option<f64>,
    /// Times sending fell more than 20 ms behind its schedule, which then
    /// restarted from that moment.
    pub schedule_restarts: u64,
}

/// The ping state machine (see the module docs); driven through [`Engine`].
pub struct PingSession {
    cfg: PingConfig,
    start: Instant,
    next_send: Option<Instant>,
    /// The schedule: probe `schedule.1 + n` is due at `schedule.0 + n * interval`.
    schedule: (Instant, u64),
    schedule_restarts: u64,
    /// When the first and the latest probe were due to go out (poll time).
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    next_seq: u64,
    /// Probe states for seqs `base..next_seq`.
    probes: VecDeque<Probe>,
    base: u64,
    /// Seqs awaiting a reply, in send order (timeouts expire in this order).
    waiting: VecDeque<u64>,
    stopped: bool,
    /// RTT statistics for the summary: `None` when the caller keeps its own
    /// record of the replies' RTTs ([`PingSession::without_rtt_stats`]).
    rtt: Option<RttStats>,
    rtt_user: Option<RttStats>,
    /// Replies whose RTT came from the kernel's timestamps, and from ours.
    kernel_rtts: u64,
    user_rtts: u64,
    received: u64,
    duplicates: u64,
    late: u64,
    reordered: u64,
    send_errors: u64,
    errors: u64,
    icmp_tally: Vec<IcmpTally>,
    highest_replied: Option<u64>,
    /// (server counter, seq) of the reply with the highest counter.
    best_counter: Option<(u32, u64)>,
    /// First answers (in time or late) that carried the server's counter:
    /// each is one distinct arrival the server counted.
    counted_replies: u64,
    /// The server's withheld count (mod 256) in the reply with the highest counter.
    last_withheld: Option<(u32, u8)>,
    withheld: u64,
    /// What our receive buffers dropped ([`PingInput::LocalDrops`]).
    local_drops: u64,
    proc_ns: (u64, u64, u64, u64), // count, sum, min, max
    server_saw: Option<SocketAddr>,
    server_seen_ttl: Option<u8>,
    port_translated: u64,
    finished_at: Option<Instant>,
    events: VecDeque<PingEvent>,
}

impl PingSession {
    /// A session starting at `now`.
    pub fn new(cfg: PingConfig, now: Instant) -> Self {
        let mut s = Self::without_rtt_stats(cfg, now);
        s.rtt = Some(RttStats::new());
        s.rtt_user = Some(RttStats::new());
        s
    }

    /// A session starting at `now` that keeps no RTT statistics of its own:
    /// each reply's RTT is in its [`PingEvent`], and the summary's `rtt` and
    /// `rtt_user` are `None`. For callers that record RTTs themselves (the
    /// monitor's Prometheus histogram): it saves the two HDR histograms
    /// (about 270 KB each) and the quantile work of every summary.
    pub fn without_rtt_stats(cfg: PingConfig, now: Instant) -> Self {
        PingSession {
            cfg,
            start: now,
            next_send: Some(now),
            schedule: (now, 0),
            schedule_restarts: 0,
            first_send: None,
            last_send: None,
            next_seq: 0,
            probes: VecDeque::new(),
            base: 0,
            waiting: VecDeque::new(),
            stopped: false,
            rtt: None,
            rtt_user: None,
            kernel_rtts: 0,
            user_rtts: 0,
            received: 0,
            duplicates: 0,
            late: 0,
            reordered: 0,
            send_errors: 0,
            errors: 0,
            icmp_tally: Vec::new(),
            highest_replied: None,
            best_counter: None,
            counted_replies: 0,
            last_withheld: None,
            withheld: 0,
            local_drops: 0,
            proc_ns: (0, 0, u64::MAX, 0),
            server_saw: None,
            server_seen_ttl: None,
            port_translated: 0,
            finished_at: None,
            events: VecDeque::new(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.cfg.deadline.map(|d| self.start + d)
    }

    fn probe_mut(&mut self, seq: u64) -> Option<&mut Probe> {
        let idx = seq.checked_sub(self.base)?;
        self.probes.get_mut(usize::try_from(idx).ok()?)
    }

    fn sending_allowed(&self, now: Instant) -> bool {
        !self.stopped
            && self.cfg.count.is_none_or(|c| self.next_seq < c)
            && self.deadline().is_none_or(|d| now < d)
    }

    /// The sequence number to send now, if one is due.
    pub(crate) fn poll_send(&mut self, now: Instant) -> Option<u64> {
        if !self.sending_allowed(now) {
            self.next_send = None;
            return None;
        }
        let due = self.next_send?;
        if now < due {
            return None;
        }
        let seq = self.next_seq;
        if now.saturating_duration_since(due) > MAX_CATCH_UP {
            // Stalled: start the schedule anew rather than burst to catch up.
            self.schedule = (now, seq);
            self.schedule_restarts += 1;
        }
        self.next_seq += 1;
        // Each send time from the schedule's start, never from the last
        // send: a late wake-up does not push every later probe back.
        let n = self.next_seq - self.schedule.1;
        let offset =
            u64::try_from(self.cfg.interval.as_nanos() * u128::from(n)).unwrap_or(u64::MAX);
        self.next_send = self.schedule.0.checked_add(Duration::from_nanos(offset));
        if let Some(at) = self.next_send.filter(|_| n >= 1 << 20) {
            // Rebased on an exact due time (no drift), so the product stays small.
            self.schedule = (at, self.next_seq);
        }
        self.first_send.get_or_insert(now);
        self.last_send = Some(now);
        self.probes.push_back(Probe {
            sent_at: now,
            local_port: None,
            state: ProbeState::Waiting,
            send_call_ns: None,
            kernel_tx_ns: None,
        });
        if self.probes.len() > HISTORY {
            self.probes.pop_front();
            self.base += 1;
        }
        Some(seq)
    }

    /// Records when the datagram actually left (the driver's timestamp) and from which port.
    pub(crate) fn on_sent(&mut self, seq: u64, sent_at: Instant, local_port: Option<u16>) {
        if let Some(p) = self.probe_mut(seq) {
            p.sent_at = sent_at;
            p.local_port = local_port;
            self.waiting.push_back(seq);
        }
    }

    /// The realtime clock (ns) read just before the send call: a kernel
    /// transmit timestamp earlier than this belongs to another datagram.
    pub(crate) fn on_send_call(&mut self, seq: u64, realtime_ns: u64) {
        if let Some(p) = self.probe_mut(seq) {
            p.send_call_ns = Some(realtime_ns);
        }
    }

    /// The kernel's software transmit timestamp of `seq` (realtime, ns).
    pub(crate) fn on_tx_timestamp(&mut self, seq: u64, kernel_tx_ns: u64) {
        if let Some(p) = self.probe_mut(seq) {
            p.kernel_tx_ns = Some(kernel_tx_ns);
        }
    }

    /// The send failed locally (for example, no route); counted, never awaited.
    pub(crate) fn on_send_failed(&mut self, seq: u64) {
        if let Some(p) = self.probe_mut(seq) {
            p.state = ProbeState::SendFailed;
            self.send_errors += 1;
        }
    }

    /// A reply for `seq` arrived at `now`. Returns what to tell the user, or
    /// `None` for a seq we never sent (or forgot).
    #[cfg(test)]
    pub(crate) fn on_reply(
        &mut self,
        seq: u64,
        now: Instant,
        stamp: Option<ServerStamp>,
    ) -> Option<PingEvent> {
        self.on_reply_timed(seq, now, None, stamp)
    }

    /// A reply read at `now` (our clock), which the kernel timestamped at
    /// `kernel_rx_ns` (realtime). Its RTT is kernel receive minus kernel
    /// transmit when both exist and agree with our own readings (the
    /// transmit after our send call, the pair no longer than ours: else two
    /// clocks disagree, say the realtime clock was stepped); otherwise our
    /// own send call to our read. So an RTT is never shorter than what the
    /// datagrams took between the two kernel timestamps.
    pub(crate) fn on_reply_timed(
        &mut self,
        seq: u64,
        now: Instant,
        kernel_rx_ns: Option<u64>,
        stamp: Option<ServerStamp>,
    ) -> Option<PingEvent> {
        let p = *self.probe_mut(seq)?;
        let user = now.saturating_duration_since(p.sent_at);
        let kernel = match (p.send_call_ns, p.kernel_tx_ns, kernel_rx_ns) {
            (Some(call), Some(tx), Some(rx)) if call <= tx && tx < rx => {
                Some(Duration::from_nanos(rx - tx)).filter(|&k| k <= user)
            }
            _ => None,
        };
        let rtt = kernel.unwrap_or(user);
        if let (Some(s), false) = (stamp, p.state == ProbeState::SendFailed) {
            self.count_withheld(s);
        }
        let event = match p.state {
            ProbeState::SendFailed => return None,
            ProbeState::Replied | ProbeState::Late => {
                self.duplicates += 1;
                return Some(PingEvent::Duplicate { seq, rtt });
            }
            ProbeState::TimedOut | ProbeState::Errored => {
                self.late += 1;
                self.probe_mut(seq)?.state = ProbeState::Late;
                PingEvent::Late { seq, rtt }
            }
            ProbeState::Waiting => {
                self.received += 1;
                if let Some(s) = self.rtt.as_mut() {
                    s.record(rtt);
                }
                if let Some(s) = self.rtt_user.as_mut() {
                    s.record(user);
                }
                if kernel.is_some() {
                    self.kernel_rtts += 1;
                } else {
                    self.user_rtts += 1;
                }
                self.probe_mut(seq)?.state = ProbeState::Replied;
                if let Some(pos) = self.waiting.iter().position(|&s| s == seq) {
                    self.waiting.remove(pos);
                }
                PingEvent::Reply {
                    seq,
                    rtt,
                    local_port: p.local_port,
                    stamp,
                }
            }
        };
        match self.highest_replied {
            Some(h) if seq < h => self.reordered += 1,
            _ => self.highest_replied = Some(seq),
        }
        if let Some(s) = stamp {
            self.counted_replies += 1;
            if self.best_counter.is_none_or(|(c, _)| s.flow_count > c) {
                self.best_counter = Some((s.flow_count, seq));
            }
            let proc = s.tx_ns.saturating_sub(s.rx_ns);
            let (n, sum, min, max) = self.proc_ns;
            self.proc_ns = (n + 1, sum + proc, min.min(proc), max.max(proc));
            self.server_saw = Some(s.seen_from);
            if s.seen_ttl != 0 {
                self.server_seen_ttl = Some(s.seen_ttl);
            }
            if p.local_port.is_some_and(|lp| lp != s.seen_from.port()) {
                self.port_translated += 1;
            }
        }
        Some(event)
    }

    /// The server's running withheld count (mod 256) grows between two of
    /// its replies by the replies it withheld in between.
    fn count_withheld(&mut self, s: ServerStamp) {
        match self.last_withheld {
            Some((count, _)) if s.flow_count <= count => {}
            Some((_, w)) => {
                self.withheld += u64::from(s.withheld.wrapping_sub(w));
                self.last_withheld = Some((s.flow_count, s.withheld));
            }
            None => {
                self.withheld += u64::from(s.withheld);
                self.last_withheld = Some((s.flow_count, s.withheld));
            }
        }
    }

    /// An ICMP error for `seq` arrived at `now`. Returns the event to show, or
    /// `None` when the probe was already answered (or never sent).
    pub(crate) fn on_icmp_error(
        &mut self,
        seq: u64,
        report: IcmpReport,
        now: Instant,
    ) -> Option<PingEvent> {
        let p = *self.probe_mut(seq)?;
        match p.state {
            ProbeState::Waiting | ProbeState::TimedOut => {}
            _ => return None,
        }
        self.probe_mut(seq)?.state = ProbeState::Errored;
        if let Some(pos) = self.waiting.iter().position(|&s| s == seq) {
            self.waiting.remove(pos);
        }
        self.errors += 1;
        match self.icmp_tally.iter_mut().find(|t| t.report == report) {
            Some(t) => t.count += 1,
            None => self.icmp_tally.push(IcmpTally { report, count: 1 }),
        }
        Some(PingEvent::IcmpError {
            seq,
            after: now.saturating_duration_since(p.sent_at),
            report,
            local_port: p.local_port,
        })
    }

    /// The most recently sent probe still awaiting an answer: where an ICMP
    /// error that quotes too little of the datagram to name its probe belongs.
    pub(crate) fn latest_waiting(&self) -> Option<u64> {
        self.waiting.back().copied()
    }

    /// Probes whose timeout has passed by `now`.
    pub(crate) fn poll_timeouts(&mut self, now: Instant) -> Vec<PingEvent> {
        let mut out = Vec::new();
        let timeout = self.cfg.timeout;
        while let Some(&seq) = self.waiting.front() {
            let Some(p) = self.probe_mut(seq) else {
                self.waiting.pop_front();
                continue;
            };
            if now < p.sent_at + timeout {
                break;
            }
            p.state = ProbeState::TimedOut;
            let local_port = p.local_port;
            self.waiting.pop_front();
            out.push(PingEvent::Timeout { seq, local_port });
        }
        out
    }

    /// When the driver must call back at the latest (next send, timeout or deadline).
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        let timeout = self
            .waiting
            .front()
            .and_then(|&s| self.probes.get((s - self.base) as usize))
            .map(|p| p.sent_at + self.cfg.timeout);
        [self.next_send, timeout, self.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Stop sending (Ctrl+C); outstanding probes are no longer awaited.
    pub fn stop(&mut self, now: Instant) {
        self.stopped = true;
        self.next_send = None;
        self.finished_at.get_or_insert(now);
    }

    /// True when nothing is left to send or await (and from then on).
    pub(crate) fn check_done(&mut self, now: Instant) -> bool {
        let done = self.stopped
            || self.deadline().is_some_and(|d| now >= d)
            || (!self.sending_allowed(now) && self.waiting.is_empty());
        if done {
            self.finished_at.get_or_insert(now);
        }
        done
    }

    /// What our receive buffers have dropped so far ([`PingInput::LocalDrops`]).
    pub fn on_local_drops(&mut self, total: u64) {
        self.local_drops = self.local_drops.max(total);
    }

    /// Probes per second sent so far, first to latest (`None` below two).
    pub fn send_rate_pps(&self) -> Option<f64> {
        let (first, last) = (self.first_send?, self.last_send?);
        let span = last.saturating_duration_since(first).as_secs_f64();
        (self.next_seq >= 2 && span > 0.0).then(|| (self.next_seq - 1) as f64 / span)
    }

    /// The achieved send rate when it fell more than 10% short of the
    /// interval's (the machine could not keep up), else `None`.
    pub fn fell_behind(&self) -> Option<f64> {
        let asked = 1.0 / self.cfg.interval.as_secs_f64();
        self.send_rate_pps().filter(|&r| r < asked * 0.9)
    }

    /// Probes sent, less those whose send failed.
    pub fn transmitted(&self) -> u64 {
        self.next_seq - self.send_errors
    }

    /// The statistics so far (final once the session is done).
    pub fn summary(&self) -> PingSummary {
        let transmitted = self.transmitted();
        let unanswered = transmitted.saturating_sub(self.received + self.late);
        let withheld = self.withheld.min(unanswered);
        // A dropped datagram may be a duplicate or a late reply, not a
        // reply some probe still lacks: never more than the unanswered.
        let local_drops = self.local_drops.min(unanswered - withheld);
        let lost = unanswered - withheld - local_drops;
        let loss_percent = if transmitted == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / transmitted as f64
        };
        let (mut up, mut down, mut unknown) = (None, None, None);
        if let Some((count, seq)) = self.best_counter {
            // The server counted `count` arrivals up to the reply with the
            // highest counter; every answer we got carries the count of its
            // own arrival, all at most `count`. So `count` less the answers
            // is the arrivals whose reply never came (withheld or lost on
            // the way back), whatever order the probes arrived in. Upstream:
            // the probes sent up to that one that got no answer, less those
            // that arrived. (Comparing `count` with the probes sent before
            // it, as before, took a probe that overtook another on the way
            // up for a reply lost on the way back.)
            let unanswered_through = self
                .probes
                .iter()
                .take((seq + 1).saturating_sub(self.base) as usize)
                .filter(|p| {
                    !matches!(
                        p.state,
                        ProbeState::SendFailed | ProbeState::Replied | ProbeState::Late
                    )
                })
                .count() as u64;
            let unanswered_arrivals = u64::from(count).saturating_sub(self.counted_replies);
            // Replies we dropped ourselves reached us: not the way back's loss.
            let d = unanswered_arrivals
                .saturating_sub(withheld + local_drops)
                .min(lost);
            let u = unanswered_through
                .saturating_sub(unanswered_arrivals)
                .min(lost - d);
            up = Some(u);
            down = Some(d);
            unknown = Some(lost - u - d);
        }
        let server_processing = (self.proc_ns.0 > 0).then(|| ProcessingSummary {
            min_us: self.proc_ns.2 as f64 / 1e3,
            avg_us: self.proc_ns.1 as f64 / self.proc_ns.0 as f64 / 1e3,
            max_us: self.proc_ns.3 as f64 / 1e3,
        });
        let mut silent: Vec<u16> = self
            .probes
            .iter()
            .filter(|p| matches!(p.state, ProbeState::TimedOut | ProbeState::Waiting))
            .filter_map(|p| p.local_port)
            .collect();
        silent.sort_unstable();
        silent.dedup();
        let end = self.finished_at.unwrap_or(self.start);
        PingSummary {
            transmitted,
            received: self.received,
            duplicates: self.duplicates,
            late: self.late,
            reordered: self.reordered,
            send_errors: self.send_errors,
            errors: self.errors,
            icmp_errors: self.icmp_tally.clone(),
            withheld,
            local_drops,
            lost,
            loss_percent,
            rtt: self.rtt.as_ref().and_then(RttStats::summary),
            upstream_lost: up,
            downstream_lost: down,
            direction_unknown: unknown,
            server_processing,
            server_saw: self.server_saw,
            server_seen_ttl: self.server_seen_ttl,
            port_translated: self.port_translated,
            silent_source_ports: silent,
            elapsed_ms: end.saturating_duration_since(self.start).as_secs_f64() * 1e3,
            rtt_clock: match (self.kernel_rtts, self.user_rtts) {
                (0, 0) => None,
                (_, 0) => Some(RttClock::Kernel),
                (0, _) => Some(RttClock::User),
                _ => Some(RttClock::Mixed),
            },
            rtt_user: self.rtt_user.as_ref().and_then(RttStats::summary),
            send_rate_pps: self.send_rate_pps(),
            schedule_restarts: self.schedule_restarts,
        }
    }
}

impl Engine for PingSession {
    type Input = PingInput;
    /// The sequence number of the probe to send.
    type Transmit = u64;
    type Event = PingEvent;

    fn handle_input(&mut self, input: PingInput, now: Instant) {
        let event = match input {
            PingInput::Sent {
                seq,
                local_port,
                send_call_ns,
            } => {
                self.on_sent(seq, now, local_port);
                if let Some(ns) = send_call_ns {
                    self.on_send_call(seq, ns);
                }
                None
            }
            PingInput::SendFailed { seq } => {
                self.on_send_failed(seq);
                None
            }
            PingInput::TxTimestamp { seq, kernel_tx_ns } => {
                self.on_tx_timestamp(seq, kernel_tx_ns);
                None
            }
            PingInput::Reply {
                seq,
                kernel_rx_ns,
                stamp,
            } => self.on_reply_timed(seq, now, kernel_rx_ns, stamp),
            PingInput::IcmpError { seq, report } => seq
                .or_else(|| self.latest_waiting())
                .and_then(|seq| self.on_icmp_error(seq, report, now)),
            PingInput::LocalDrops { total } => {
                self.on_local_drops(total);
                None
            }
        };
        self.events.extend(event);
        self.check_done(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        self.poll_send(now)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.finished_at.is_some() {
            return None;
        }
        self.next_wakeup()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let timeouts = self.poll_timeouts(now);
        self.events.extend(timeouts);
        self.check_done(now);
    }

    fn poll_event(&mut self) -> Option<PingEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.finished_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stamp(count: u32) -> ServerStamp {
        ServerStamp {
            rx_ns: 1000,
            tx_ns: 3000,
            flow_count: count,
            seen_from: "198.18.0.1:40000".parse().unwrap(),
            seen_ttl: 64,
            withheld: 0,
        }
    }

    #[test]
    fn withheld_replies_are_not_loss() {
        // The server withholds every fourth reply and says so in the next;
        // one more reply is lost on the way back.
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(400),
            interval: ms(1),
            timeout: ms(100),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let (mut count, mut withheld) = (0u32, 0u8);
        let mut now = t0;
        for _ in 0..10_000 {
            while let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, Some(40000));
                count += 1;
                if seq % 4 == 3 {
                    withheld = withheld.wrapping_add(1);
                } else if seq != 10 {
                    let st = ServerStamp {
                        withheld,
                        ..stamp(count)
                    };
                    s.on_reply(seq, now + ms(1), Some(st));
                }
            }
            s.poll_timeouts(now);
            if s.check_done(now) {
                break;
            }
            now += ms(1);
        }
        let r = s.summary();
        assert_eq!(r.transmitted, 400);
        assert_eq!(r.received, 299);
        // The last probe's withholding came after the last reply: unknown.
        assert_eq!(r.withheld, 99);
        assert_eq!(r.lost, 2);
        assert_eq!(r.downstream_lost, Some(1));
        assert_eq!(r.upstream_lost, Some(0));
        assert_eq!(r.direction_unknown, Some(1));
    }

    /// Runs a simulated ping: `fate(seq)` says whether the probe is lost up,
    /// lost down, or answered after the given delay.
    fn simulate(count: u64, fate: impl Fn(u64) -> Option<(bool, u64)>) -> PingSummary {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(count),
            interval: ms(10),
            timeout: ms(100),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let mut server_count = 0u32;
        let mut pending: Vec<(Instant, u64, u32)> = Vec::new();
        let mut now = t0;
        for _ in 0..100_000 {
            while let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, Some(40000));
                if let Some((arrives_up, delay)) = fate(seq) {
                    if arrives_up {
                        server_count += 1;
                    }
                    if delay > 0 {
                        pending.push((now + ms(delay), seq, server_count));
                    }
                }
            }
            pending.sort_by_key(|p| p.0);
            while pending.first().is_some_and(|p| p.0 <= now) {
                let (_, seq, c) = pending.remove(0);
                s.on_reply(seq, now, Some(stamp(c)));
            }
            s.poll_timeouts(now);
            if s.check_done(now) && pending.is_empty() {
                break;
            }
            now += ms(1);
        }
        s.summary()
    }

    #[test]
    fn all_answered() {
        let r = simulate(20, |_| Some((true, 5)));
        assert_eq!((r.transmitted, r.received, r.lost), (20, 20, 0));
        assert_eq!(r.upstream_lost, Some(0));
        assert_eq!(r.downstream_lost, Some(0));
        let rtt = r.rtt.unwrap();
        assert!((rtt.avg_ms - 5.0).abs() < 1e-6);
        assert_eq!(r.server_processing.unwrap().avg_us, 2.0);
    }

    #[test]
    fn loss_split_by_direction() {
        // seq % 5 == 1: lost on the way up; seq % 5 == 3: lost on the way back.
        let r = simulate(100, |seq| match seq % 5 {
            1 => None,
            3 => Some((true, 0)),
            _ => Some((true, 3)),
        });
        assert_eq!(r.transmitted, 100);
        assert_eq!(r.received, 60);
        assert_eq!(r.lost, 40);
        assert_eq!(r.upstream_lost, Some(20));
        assert_eq!(r.downstream_lost, Some(20));
        assert_eq!(r.direction_unknown, Some(0));
    }

    /// Of 100 probes, 20 lost on the way up, 20 replies lost on the way
    /// back, and 10 replies our own socket dropped (the kernel says so with
    /// a later datagram): those 10 are neither loss nor the way back's.
    #[test]
    fn replies_this_host_dropped_are_not_network_loss() {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(100),
            interval: ms(1),
            timeout: ms(50),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let (mut count, mut dropped_here) = (0u32, 0u64);
        let mut now = t0;
        for _ in 0..10_000 {
            while let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, None);
                match seq % 10 {
                    // Lost on the way up.
                    1 | 6 => {}
                    // Reached the server; the reply is lost on the way back.
                    3 | 8 => count += 1,
                    // Reached the server and us; our buffer was full.
                    5 => {
                        count += 1;
                        dropped_here += 1;
                    }
                    _ => {
                        count += 1;
                        let input = PingInput::Reply {
                            seq,
                            kernel_rx_ns: None,
                            stamp: Some(stamp(count)),
                        };
                        s.handle_input(input, now + ms(1));
                        // Each datagram read carries the drops so far.
                        let total = dropped_here;
                        s.handle_input(PingInput::LocalDrops { total }, now + ms(1));
                    }
                }
            }
            s.poll_timeouts(now);
            if s.check_done(now) {
                break;
            }
            now += ms(1);
        }
        let r = s.summary();
        assert_eq!((r.transmitted, r.received), (100, 50));
        assert_eq!((r.local_drops, r.lost), (10, 40), "{r:?}");
        assert_eq!(r.upstream_lost, Some(20));
        assert_eq!(r.downstream_lost, Some(20));
        assert_eq!(r.direction_unknown, Some(0));
        assert_eq!(r.loss_percent, 40.0);
    }

    /// Probes that overtake each other on the way up: the server's counter
    /// in the reply with the highest count belongs to a probe sent before
    /// the last one to arrive. Every probe answered: nothing lost in either
    /// direction (before, the overtaken probe's arrival was taken for a
    /// reply lost on the way back: `downstream_lost: 2` with all received).
    #[test]
    fn upstream_reordering_is_no_loss_in_either_direction() {
        // Six probes 1 ms apart; then the replies that come back, each
        // with the server's count at its probe's arrival; then the summary.
        let run = |replies: &[(u64, u32)]| {
            let t0 = Instant::now();
            let cfg = PingConfig {
                count: Some(6),
                interval: ms(1),
                timeout: ms(100),
                deadline: None,
            };
            let mut s = PingSession::new(cfg, t0);
            let mut now = t0;
            while let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, None);
                now += ms(1);
            }
            for &(seq, count) in replies {
                s.on_reply(seq, now, Some(stamp(count)));
            }
            s.poll_timeouts(now + ms(200));
            s.summary()
        };
        // Arrival order at the server: 0 1 2 5 3 4 (4 arrives last, count 6).
        let r = run(&[(0, 1), (1, 2), (2, 3), (5, 4), (3, 5), (4, 6)]);
        assert_eq!((r.received, r.lost, r.reordered), (6, 0, 2));
        assert_eq!(r.upstream_lost, Some(0));
        assert_eq!(r.downstream_lost, Some(0));
        assert_eq!(r.direction_unknown, Some(0));
        // The same with probe 2's reply lost on the way back and probe 1
        // lost on the way up: each counted once, in its own direction.
        let r = run(&[(0, 1), (5, 3), (3, 4), (4, 5)]);
        assert_eq!((r.received, r.lost), (4, 2));
        assert_eq!(r.upstream_lost, Some(1));
        assert_eq!(r.downstream_lost, Some(1));
        assert_eq!(r.direction_unknown, Some(0));
    }

    #[test]
    fn late_and_duplicates_and_reorder() {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(3),
            interval: ms(10),
            timeout: ms(50),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let mut now = t0;
        let mut sent = vec![];
        while sent.len() < 3 {
            if let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, None);
                sent.push(seq);
            }
            now += ms(1);
        }
        // seq 1 answered before seq 0: reordered.
        assert!(matches!(
            s.on_reply(1, now, None),
            Some(PingEvent::Reply { seq: 1, .. })
        ));
        assert!(matches!(
            s.on_reply(0, now, None),
            Some(PingEvent::Reply { seq: 0, .. })
        ));
        assert!(matches!(
            s.on_reply(0, now, None),
            Some(PingEvent::Duplicate { seq: 0, .. })
        ));
        assert_eq!(s.on_reply(99, now, None), None, "never sent");
        now += ms(100);
        let t = s.poll_timeouts(now);
        assert_eq!(
            t,
            vec![PingEvent::Timeout {
                seq: 2,
                local_port: None
            }]
        );
        assert!(matches!(
            s.on_reply(2, now, None),
            Some(PingEvent::Late { seq: 2, .. })
        ));
        assert!(s.check_done(now));
        let r = s.summary();
        assert_eq!(
            (r.received, r.late, r.duplicates, r.reordered, r.lost),
            (2, 1, 1, 1, 0)
        );
    }

    #[test]
    fn deadline_and_stop() {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: None,
            interval: ms(100),
            timeout: ms(1000),
            deadline: Some(ms(250)),
        };
        let mut s = PingSession::new(cfg, t0);
        let mut n = 0;
        let mut now = t0;
        while !s.check_done(now) {
            if let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, None);
                n += 1;
            }
            now = s.next_wakeup().unwrap().max(now + ms(1));
        }
        assert_eq!(n, 3, "sends at 0, 100, 200 ms, then the deadline");
        let mut s = PingSession::new(
            PingConfig {
                count: None,
                interval: ms(10),
                timeout: ms(10),
                deadline: None,
            },
            t0,
        );
        assert!(s.poll_send(t0).is_some());
        s.stop(t0);
        assert!(s.poll_send(t0 + ms(20)).is_none());
        assert!(s.check_done(t0));
    }

    #[test]
    fn icmp_errors_end_the_wait_and_are_counted() {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(3),
            interval: ms(10),
            timeout: ms(100),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let mut now = t0;
        let mut sent = 0;
        while sent < 3 {
            if let Some(seq) = s.poll_send(now) {
                s.on_sent(seq, now, None);
                sent += 1;
            }
            now += ms(1);
        }
        let report = IcmpReport {
            from: Some("198.18.2.2".parse().unwrap()),
            reason: udpreach_wire::icmp::IcmpReason::PortUnreachable,
        };
        assert_eq!(s.latest_waiting(), Some(2));
        for seq in 0..2 {
            let ev = s.on_icmp_error(seq, report, now).unwrap();
            assert!(matches!(ev, PingEvent::IcmpError { seq: q, .. } if q == seq));
        }
        assert_eq!(s.on_icmp_error(0, report, now), None, "counted once");
        assert!(s.on_reply(2, now, None).is_some());
        assert_eq!(s.on_icmp_error(2, report, now), None, "already answered");
        now += ms(200);
        assert!(
            s.poll_timeouts(now).is_empty(),
            "errored probes never time out"
        );
        assert!(s.check_done(now));
        let r = s.summary();
        assert_eq!((r.transmitted, r.received, r.errors, r.lost), (3, 1, 2, 2));
        assert_eq!(r.icmp_errors.len(), 1);
        assert_eq!(r.icmp_errors[0].count, 2);
        let j = serde_json::to_value(&r.icmp_errors[0]).unwrap();
        assert_eq!(j["reason"], "port_unreachable");
        assert_eq!(j["count"], 2);
    }

    #[test]
    fn no_burst_after_stall() {
        let t0 = Instant::now();
        let mut s = PingSession::new(
            PingConfig {
                count: None,
                interval: ms(10),
                timeout: ms(10),
                deadline: None,
            },
            t0,
        );
        assert_eq!(s.poll_send(t0), Some(0));
        let later = t0 + ms(1000);
        assert_eq!(s.poll_send(later), Some(1));
        assert_eq!(s.poll_send(later), None);
    }

    /// A driver whose timer wakes `late` after each wake-up it asks for
    /// (tokio's 1 ms granularity, say), answering nothing.
    fn drive(
        cfg: PingConfig,
        late: Duration,
        mut stall_at: Option<(u64, Duration)>,
    ) -> (PingSession, Vec<Instant>, Instant) {
        let t0 = Instant::now();
        let mut s = PingSession::new(cfg, t0);
        let mut now = t0;
        let mut sent = Vec::new();
        for _ in 0..1_000_000 {
            while let Some(seq) = s.poll_send(now) {
                sent.push(now);
                s.on_sent(seq, now, None);
                // Replies come at once: only the schedule matters here.
                s.on_reply(seq, now, None);
                if let Some((at, d)) = stall_at.filter(|&(at, _)| at == seq) {
                    let _ = at;
                    now += d;
                    stall_at = None;
                }
            }
            if s.check_done(now) {
                break;
            }
            let Some(wake) = s.next_wakeup() else { break };
            now = now.max(wake) + late;
        }
        (s, sent, t0)
    }

    #[test]
    fn the_schedule_does_not_drift_with_a_coarse_timer() {
        // 100 us interval, timer that wakes 1 ms late every time: 1000
        // probes still leave within 100 ms (+ one late wake-up).
        let cfg = PingConfig {
            count: Some(1000),
            interval: Duration::from_micros(100),
            timeout: ms(1000),
            deadline: None,
        };
        let (s, sent, t0) = drive(cfg, ms(1), None);
        assert_eq!(sent.len(), 1000);
        let last = *sent.last().unwrap() - t0;
        assert!(last <= ms(101), "last probe at {last:?}");
        // No probe goes out before its time: seq n at or after n x 100 us.
        for (n, at) in sent.iter().enumerate() {
            assert!(*at - t0 >= Duration::from_micros(100) * n as u32, "seq {n}");
        }
        let sum = s.summary();
        assert_eq!(sum.transmitted, 1000);
        assert_eq!(sum.schedule_restarts, 0);
        let rate = sum.send_rate_pps.unwrap();
        assert!(rate > 9000.0, "{rate}");
        assert_eq!(s.fell_behind(), None);
        // 1 ms interval, a timer 0.76 ms late (the 1.76 s per 1000 once seen).
        let cfg = PingConfig {
            count: Some(1000),
            interval: ms(1),
            timeout: ms(1000),
            deadline: None,
        };
        let (_, sent, t0) = drive(cfg, Duration::from_micros(760), None);
        assert!(
            *sent.last().unwrap() - t0 <= ms(1000),
            "{:?}",
            *sent.last().unwrap() - t0
        );
    }

    #[test]
    fn a_stall_restarts_the_schedule_without_a_burst_and_is_reported() {
        let cfg = PingConfig {
            count: Some(100),
            interval: ms(1),
            timeout: ms(1000),
            deadline: None,
        };
        // A 500 ms stall after seq 10: no burst of 500 probes to catch up.
        let (s, sent, _) = drive(cfg, Duration::ZERO, Some((10, ms(500))));
        assert_eq!(sent.len(), 100);
        let burst = sent.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(burst <= 1, "{burst} probes sent back to back");
        let sum = s.summary();
        assert_eq!(sum.schedule_restarts, 1);
        let rate = s.fell_behind().expect("fell behind");
        assert!(rate < 900.0 && rate > 100.0, "{rate}");
        assert_eq!(sum.send_rate_pps, Some(rate));
    }

    #[test]
    fn count_is_exact_and_each_send_is_due_from_the_start() {
        let cfg = PingConfig {
            count: Some(7),
            interval: ms(10),
            timeout: ms(100),
            deadline: None,
        };
        let (s, sent, t0) = drive(cfg, Duration::ZERO, None);
        let offsets: Vec<Duration> = sent.iter().map(|&t| t - t0).collect();
        assert_eq!(offsets, (0..7).map(|n| ms(10 * n)).collect::<Vec<_>>());
        assert_eq!(s.summary().transmitted, 7);
    }

    #[test]
    fn rtt_from_kernel_timestamps_only_when_they_agree_with_ours() {
        let t0 = Instant::now();
        let cfg = PingConfig {
            count: Some(4),
            interval: ms(1),
            timeout: ms(1000),
            deadline: None,
        };
        let mut s = PingSession::new(cfg, t0);
        let base = 1_000_000_000_000u64;
        let mut now = t0;
        let mut rtts = Vec::new();
        for seq in 0..4u64 {
            while s.poll_send(now).is_none() {
                now += ms(1);
            }
            s.on_sent(seq, now, None);
            let call = base + seq * 1_000_000;
            s.on_send_call(seq, call);
            match seq {
                // Kernel pair: 40 us on the wire, 300 us for us (wake-up).
                0 => s.on_tx_timestamp(seq, call + 5_000),
                // A transmit timestamp from before the send call: not ours.
                1 => s.on_tx_timestamp(seq, call - 5_000),
                // No transmit timestamp at all.
                2 => {}
                // The realtime clock stepped back: rx before tx.
                _ => s.on_tx_timestamp(seq, call + 5_000),
            }
            let rx = if seq == 3 { call } else { call + 45_000 };
            let ev = s.on_reply_timed(seq, now + Duration::from_micros(300), Some(rx), None);
            match ev {
                Some(PingEvent::Reply { rtt, .. }) => rtts.push(rtt),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rtts[0], Duration::from_micros(40));
        // The others fall back to our own clock, never below it.
        for r in &rtts[1..] {
            assert_eq!(*r, Duration::from_micros(300));
        }
        let sum = s.summary();
        assert_eq!(sum.rtt_clock, Some(RttClock::Mixed));
        assert_eq!(sum.rtt_user.unwrap().min_ms, 0.3);
        assert!((sum.rtt.unwrap().min_ms - 0.04).abs() < 1e-9);
    }

    type LossyRun = (
        PingSession,
        crate::testkit::Outcome<PingEvent>,
        std::collections::HashMap<u64, u64>,
    );

    /// 200 probes from a session made by `make` over the test kit's lossy,
    /// duplicating, reordering link in virtual time (seed 7): the session,
    /// the run and how many copies of each probe's reply were delivered.
    fn lossy_reordering_run(make: fn(PingConfig, Instant) -> PingSession) -> LossyRun {
        use crate::testkit::{Limits, LinkConfig, Sim};
        let link = LinkConfig {
            delay: ms(20),
            jitter: ms(30),
            loss: 0.1,
            duplicate: 0.05,
        };
        let mut sim = Sim::new(7);
        let cfg = PingConfig {
            count: Some(200),
            interval: ms(10),
            timeout: ms(500),
            deadline: None,
        };
        let mut s = make(cfg, sim.now());
        let mut copies: std::collections::HashMap<u64, u64> = Default::default();
        let out = sim.run(&mut s, Limits::default(), |sim, seq| {
            let now = sim.now();
            let sent = PingInput::Sent {
                seq,
                local_port: None,
                send_call_ns: None,
            };
            sim.deliver_at(now, sent);
            for up in link.arrivals(now, &mut sim.rng) {
                for down in link.arrivals(up, &mut sim.rng) {
                    *copies.entry(seq).or_default() += 1;
                    let reply = PingInput::Reply {
                        seq,
                        kernel_rx_ns: None,
                        stamp: None,
                    };
                    sim.deliver_at(down, reply);
                }
            }
        });
        (s, out, copies)
    }

    /// The session through the one engine interface, over the test kit's
    /// lossy, duplicating, reordering link in virtual time: every probe is
    /// counted exactly once as received or lost, and every extra copy as a
    /// duplicate.
    #[test]
    fn lossy_reordering_link_through_the_engine_interface() {
        let (s, out, copies) = lossy_reordering_run(PingSession::new);
        assert!(out.done);
        let r = s.summary();
        let answered = copies.len() as u64;
        let extra: u64 = copies.values().map(|c| c - 1).sum();
        assert_eq!(r.transmitted, 200);
        assert_eq!((r.received, r.lost), (answered, 200 - answered));
        assert_eq!(r.duplicates, extra);
        assert!(extra > 0 && answered < 200, "the link lost and duplicated");
        let timeouts = out
            .events
            .iter()
            .filter(|e| matches!(e, PingEvent::Timeout { .. }))
            .count() as u64;
        assert_eq!(timeouts, 200 - answered);
    }

    /// A session without RTT statistics (the monitor's) sees the same run
    /// the same way: the same events (each reply's RTT in it) and the same
    /// counters; only the summary's RTT statistics are left out.
    #[test]
    fn without_rtt_stats_counts_the_same_and_keeps_no_histograms() {
        let (full, full_out, _) = lossy_reordering_run(PingSession::new);
        let (lean, lean_out, _) = lossy_reordering_run(PingSession::without_rtt_stats);
        assert_eq!(full_out.events, lean_out.events);
        let (f, l) = (full.summary(), lean.summary());
        assert!(f.rtt.is_some() && f.rtt_user.is_some());
        assert!(l.rtt.is_none() && l.rtt_user.is_none());
        assert_eq!(
            PingSummary {
                rtt: None,
                rtt_user: None,
                ..f
            },
            l
        );
        assert!(lean.rtt.is_none() && lean.rtt_user.is_none());
    }
}
