//! Path-MTU search for one direction, sans-I/O.
//!
//! Every round probes several sizes at once (each `probes_per_size` times,
//! with Don't Fragment): a probe that arrives proves its size crosses; a
//! frag-needed / packet-too-big error proves it does not and usually names
//! the next hop's MTU, which the next round tries exactly; a size that is
//! silent for a whole round *probably* does not cross. Probing many sizes per
//! round makes the search take a handful of round trips even where ICMP is
//! filtered (a PMTU black hole), where only silence tells.
//!
//! Loss must not shrink the answer: a silent failure is only trusted when it
//! happened in two rounds (or when a smaller size failed by ICMP), and any
//! larger size that arrives overrules it. Before a silent limit is reported
//! it is probed once more together with the largest size that crossed
//! (repetition): if that size now goes missing too, the path loses datagrams
//! of sizes it carries, and the search says it could not tell where the
//! limit is ([`MtuEvidence::Inconclusive`]) instead of calling a black hole.
//! Sizes here are IP packet bytes
//! (the MTU); the driver converts to UDP payload with
//! `udpreach_wire::mtu::payload_size`.

//! Path-MTU search for one direction, sans-I/O: [`MtuSearch`] implements
//! [`Engine`] and owns the whole measurement: which sizes each round probes,
//! how long a round waits (from the measured round trip, RFC 6298's
//! estimator in [`crate::rto`]), which ICMP error is about which size, the
//! pacing that keeps our own bursts from overflowing a receive buffer, and
//! the fragment test that follows the search.
//!
//! Every round probes several sizes at once (each `probes_per_size` times,
//! with Don't Fragment): a probe that arrives proves its size crosses; a
//! frag-needed / packet-too-big error proves it does not and usually names
//! the next hop's MTU, which the next round tries exactly; a size that is
//! silent for a whole round *probably* does not cross. Probing many sizes per
//! round makes the search take a handful of round trips even where ICMP is
//! filtered (a PMTU black hole), where only silence tells.
//!
//! Loss must not shrink the answer: a silent failure is only trusted when it
//! happened in two rounds (or when a smaller size failed by ICMP), and any
//! larger size that arrives overrules it. Before a silent limit is reported
//! it is probed once more together with the largest size that crossed
//! (repetition): if that size now goes missing too, the path loses datagrams
//! of sizes it carries, and the search says it could not tell where the
//! limit is ([`MtuEvidence::Inconclusive`]) instead of calling a black hole.
//!
//! Sizes called MTU here are IP packet bytes; what goes on the wire
//! ([`MtuProbe::payload`], [`MtuRequest::payloads`]) is UDP payload bytes
//! (`udpreach_wire::mtu::payload_size`).
//!
//! Two ways to probe one direction ([`Probing`]):
//! - [`Probing::Datagrams`]: the driver sends each [`MtuProbe`] and feeds back
//!   what answers it ([`MtuInput::Arrived`]: an MTU port's acknowledgement or
//!   an echo), the ICMP errors it draws ([`MtuInput::TooBig`]) and local
//!   refusals ([`MtuInput::NotSent`]). Every probe has its own sequence
//!   number, so an answer names one send (RTT samples are unambiguous and a
//!   replay window at the far end loses nothing).
//! - [`Probing::FarEndSends`]: the far end sends the probes on request (the
//!   server's downstream `MtuSend`): the driver carries each [`MtuRequest`]
//!   over the control channel, feeds back the probes that arrive
//!   ([`MtuInput::Arrived`], `len` only) and the far end's answer
//!   ([`MtuInput::Answered`]). One request is outstanding at a time.
//!
//! A driver from another loop (e.g. a monitor check) needs nothing but the
//! [`Engine`] calls, [`MtuSearch::result`] and [`MtuSearch::fragments`]:
//!
//! ```text
//! let mut s = MtuSearch::new(MtuSearchConfig::datagrams(min, max, v6), now);
//! loop {
//!     while let Some(MtuTransmit::Probe(p)) = s.poll_transmit(now) { send(p) }
//!     if s.is_done() { break }
//!     select! { answer => s.handle_input(MtuInput::Arrived { .. }, now),
//!               sleep_until(s.poll_timeout()) => s.handle_timeout(now) }
//! }
//! let mtu = s.result().mtu;
//! ```

use crate::engine::Engine;
use crate::rto::RtoEstimator;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use udpreach_wire::control::MtuSendResult;
use udpreach_wire::icmp::IcmpReason;
use udpreach_wire::mtu::{
    packet_size, payload_size, MAX_BYTES_PER_SEND, MAX_COUNT_PER_SIZE, MAX_LINGER_MS,
    MAX_SIZES_PER_SEND,
};

/// MTUs that links commonly have, tried in the first round.
const COMMON_MTUS: [u32; 12] = [
    9000, 4470, 1500, 1492, 1480, 1460, 1420, 1400, 1380, 1280, 1024, 576,
];
/// A search needs about log_(k+1)(range) rounds; this bounds it whatever happens.
const MAX_ROUNDS: u32 = 40;
/// Shortest wait of a round for its probes' answers: a floor under the
/// measured retransmission timeout, so scheduling noise on a sub-millisecond
/// path is not read as silence.
pub const MIN_ROUND_WAIT: Duration = Duration::from_millis(50);
/// Longest wait of a round (unless the caller fixes the wait).
pub const MAX_ROUND_WAIT: Duration = Duration::from_secs(2);
/// A round's wait before any round trip was measured.
const INITIAL_ROUND_WAIT: Duration = Duration::from_secs(1);
/// After the far end answered a request, how long the datagrams it sent
/// before answering may still be on their way.
pub const REQUEST_GRACE: Duration = Duration::from_millis(20);
/// Most probe bytes on the way at once by default. A round's probes all sent
/// at once (megabytes near the 64 KiB limit) overflow the receive buffer at
/// the far end (Linux's default is 208 KiB, charged with overhead) or, for
/// echoes, ours: the largest datagrams vanish, which the search would read
/// as a black hole. Two of the largest datagrams fit; a probe counts as no
/// longer on the way when its answer arrives or after half a round's wait.
pub const WINDOW_BYTES: usize = 2 * 65536;
/// Shortest time a probe counts as on the way without an answer.
const MIN_STALL: Duration = Duration::from_millis(20);

/// How the probes of a direction get sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probing {
    /// The driver sends each [`MtuProbe`]; at most `window_bytes` are on the
    /// way without an answer (at least one probe always is).
    Datagrams {
        /// Most probe bytes on the way at once ([`WINDOW_BYTES`]).
        window_bytes: usize,
    },
    /// The far end sends the probes on request ([`MtuRequest`]); one request
    /// makes it send at most `request_bytes` (what our receive buffer holds
    /// in one burst: what overflows it would look like loss on the path).
    FarEndSends {
        /// Most bytes one request may make the far end send at once.
        request_bytes: u64,
    },
}

#[derive(Clone, Debug)]
/// How an [`MtuSearch`] probes.
pub struct MtuSearchConfig {
    /// Smallest size worth probing (it must hold the probe header).
    pub min_mtu: u32,
    /// Largest size that can be sent at all (the sending interface's MTU).
    pub max_mtu: u32,
    /// Probes per size and round: one that crosses is enough, all lost is silence.
    pub probes_per_size: u32,
    /// Sizes probed per round after the first.
    pub sizes_per_round: usize,
    /// IPv6 (the header overhead between MTU and payload).
    pub v6: bool,
    /// Who sends the probes.
    pub probing: Probing,
    /// A round trip measured before the search (e.g. the control
    /// handshake's): the first round's wait comes from it.
    pub rtt: Option<Duration>,
    /// The round-trip estimate of an earlier search on the same path (the
    /// other direction's, [`MtuSearch::rtt_estimate`]): its smoothed RTT and
    /// variation, rather than one sample, set the first waits. A search
    /// whose far end sends the probes measures no round trips of its own.
    pub rtt_estimate: Option<RtoEstimator>,
    /// A fixed wait per round instead of one from the measured round trip.
    pub round_wait: Option<Duration>,
    /// After the search, test whether datagrams larger than the path MTU
    /// cross as fragments.
    pub fragment_test: bool,
}

impl MtuSearchConfig {
    /// A search between `min_mtu` and `max_mtu` where the driver sends the
    /// probes: 3 per size, 8 sizes per round, the fragment test on, waits
    /// from the measured round trip.
    pub fn datagrams(min_mtu: u32, max_mtu: u32, v6: bool) -> Self {
        MtuSearchConfig {
            min_mtu,
            max_mtu,
            probes_per_size: 3,
            sizes_per_round: 8,
            v6,
            probing: Probing::Datagrams {
                window_bytes: WINDOW_BYTES,
            },
            rtt: None,
            rtt_estimate: None,
            round_wait: None,
            fragment_test: true,
        }
    }

    fn normalised(self) -> Self {
        MtuSearchConfig {
            max_mtu: self.max_mtu.max(self.min_mtu),
            probes_per_size: self.probes_per_size.max(1),
            sizes_per_round: self.sizes_per_round.max(1),
            ..self
        }
    }
}

/// How the limit was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MtuEvidence {
    /// A frag-needed / packet-too-big error named the limit (and who sent it).
    Icmp {
        /// The host that sent the error, when known.
        from: Option<IpAddr>,
        /// The MTU the error named, when it named one.
        mtu: Option<u32>,
    },
    /// Larger probes vanished without any ICMP error: a PMTU black hole.
    Silence,
    /// Nothing on the path is smaller than the sending interface.
    Interface,
    /// Larger probes vanished without any ICMP error, but so did, on
    /// repetition, a size that had crossed: the path (or the far end) loses
    /// datagrams it can carry, so where the limit is could not be told. The
    /// MTU reported is only the largest size seen to cross.
    Inconclusive,
}

/// One direction's answer.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MtuResult {
    /// Largest IP packet that crossed with DF set; `None`: nothing crossed.
    pub mtu: Option<u32>,
    /// How the limit was found; `None` when nothing crossed.
    pub evidence: Option<MtuEvidence>,
    /// Rounds the search took.
    pub rounds: u32,
    /// Probes it sent.
    pub probes: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Failure {
    /// Rounds in which this size got neither an arrival nor an error.
    silent_rounds: u32,
    icmp: bool,
}

/// Which sizes to probe each round and what their fate says: the decisions
/// of [`MtuSearch`], without time (rounds begin and end when it says).
struct SizeSearch {
    cfg: MtuSearchConfig,
    /// Largest size seen to arrive.
    passed: Option<u32>,
    failed: BTreeMap<u32, Failure>,
    /// Everything above this is known too big (from ICMP or the interface).
    ceiling: u32,
    /// The latest too-big error: who sent it and the MTU it named.
    icmp: Option<(Option<IpAddr>, Option<u32>)>,
    /// A hop MTU named by an error, not probed yet.
    hint: Option<u32>,
    round: Option<Vec<u32>>,
    /// Sizes of the current round that got an answer (arrival or error).
    answered: Vec<u32>,
    rounds: u32,
    probes: u64,
    done: bool,
    /// The silent limit last re-checked, and the sizes of that check round.
    verified: Option<u32>,
    verifying: Option<(u32, u32)>,
    /// A size that had crossed went missing when re-checked.
    inconclusive: bool,
}

impl SizeSearch {
    /// A search between `cfg.min_mtu` and `cfg.max_mtu`.
    fn new(cfg: MtuSearchConfig) -> Self {
        let cfg = cfg.normalised();
        SizeSearch {
            ceiling: cfg.max_mtu,
            cfg,
            passed: None,
            failed: BTreeMap::new(),
            icmp: None,
            hint: None,
            round: None,
            answered: Vec::new(),
            rounds: 0,
            probes: 0,
            done: false,
            verified: None,
            verifying: None,
            inconclusive: false,
        }
    }

    /// Copies of each size sent per round.
    #[cfg(test)]
    fn probes_per_size(&self) -> u32 {
        self.cfg.probes_per_size
    }

    /// Smallest size that failed for sure, above the largest that passed.
    fn confirmed_limit(&self) -> u32 {
        let lo = self.passed.unwrap_or(0);
        let confirmed = self
            .failed
            .range(lo + 1..)
            .find(|(_, f)| f.icmp || f.silent_rounds >= 2)
            .map(|(&s, _)| s);
        confirmed.map_or(self.ceiling + 1, |s| s.min(self.ceiling + 1))
    }

    /// Smallest size that failed at all (maybe by loss), above the largest that passed.
    fn suspected_limit(&self) -> u32 {
        let lo = self.passed.unwrap_or(0);
        self.failed
            .range(lo + 1..)
            .next()
            .map_or(self.ceiling + 1, |(&s, _)| s)
            .min(self.confirmed_limit())
    }

    /// The sizes to probe next (each `probes_per_size` times); `None` when
    /// the search is over. Call once per round, after [`Self::end_round`].
    fn next_round(&mut self) -> Option<Vec<u32>> {
        if self.done || self.round.is_some() {
            return None;
        }
        if self.rounds >= MAX_ROUNDS {
            self.done = true;
            return None;
        }
        let sizes = self.plan();
        if sizes.is_empty() {
            self.done = true;
            return None;
        }
        self.rounds += 1;
        self.probes += sizes.len() as u64 * u64::from(self.cfg.probes_per_size);
        self.answered.clear();
        self.round = Some(sizes.clone());
        Some(sizes)
    }

    fn plan(&mut self) -> Vec<u32> {
        let (min, max) = (self.cfg.min_mtu, self.cfg.max_mtu);
        if self.rounds == 0 {
            let mut v: Vec<u32> = COMMON_MTUS
                .iter()
                .copied()
                .filter(|&m| m > min && m < max)
                .collect();
            v.push(max);
            v.push(min);
            v.sort_unstable();
            v.dedup();
            return v;
        }
        let lo = match self.passed {
            Some(p) => p,
            // Not even the smallest size crossed: nothing more to learn
            // unless loss ate it; one more try, then give up.
            None if self
                .failed
                .get(&min)
                .is_some_and(|f| f.silent_rounds < 2 && !f.icmp) =>
            {
                return vec![min];
            }
            None => return Vec::new(),
        };
        let hi = self.suspected_limit();
        if hi <= lo + 1 {
            if hi > self.ceiling || self.failed.get(&hi).is_some_and(|f| f.icmp) {
                return Vec::new(); // converged on an error or the interface
            }
            if hi == self.confirmed_limit() {
                if self.verified == Some(hi) {
                    return Vec::new(); // converged, and the silence held on repetition
                }
                // Converged on silence alone: both sides of the limit once more.
                self.verified = Some(hi);
                self.verifying = Some((lo, hi));
                return vec![lo, hi];
            }
            return vec![hi]; // the boundary failed once: was it loss?
        }
        let mut v = Vec::new();
        if let Some(h) = self.hint.take() {
            if h > lo && h < hi {
                v.push(h);
            }
        }
        let k = self.cfg.sizes_per_round as u32;
        let span = hi - lo;
        for i in 1..=k {
            let s = lo + (u64::from(span) * u64::from(i) / u64::from(k + 1)) as u32;
            if s > lo && s < hi {
                v.push(s);
            }
        }
        // The boundary itself if it failed only once.
        if hi <= self.ceiling && hi != self.confirmed_limit() {
            v.push(hi);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A probe of `mtu` bytes arrived.
    fn on_pass(&mut self, mtu: u32) {
        if self.passed.is_none_or(|p| mtu > p) {
            self.passed = Some(mtu);
        }
        // Anything smaller that "failed" was lost, not too big.
        self.failed.retain(|&s, _| s > mtu);
        if mtu > self.ceiling {
            // The path carried more than an error claimed: trust the arrival.
            self.ceiling = self.cfg.max_mtu.max(mtu);
        }
        self.mark_answered(mtu);
    }

    /// A probe of `mtu` bytes drew a frag-needed / packet-too-big error,
    /// from `from`, naming the next hop's MTU `hint`.
    fn on_too_big(&mut self, mtu: u32, hint: Option<u32>, from: Option<IpAddr>) {
        if self.passed.is_some_and(|p| mtu <= p) {
            return; // stale: a larger size got through since
        }
        self.failed.entry(mtu).or_default().icmp = true;
        self.ceiling = self.ceiling.min(mtu.saturating_sub(1));
        if let Some(h) = hint.filter(|&h| h < mtu && h >= self.cfg.min_mtu) {
            self.ceiling = self.ceiling.min(h);
            if self.passed.is_none_or(|p| h > p) {
                self.hint = Some(h);
            }
        }
        self.icmp = Some((from, hint));
        self.mark_answered(mtu);
    }

    fn mark_answered(&mut self, mtu: u32) {
        if !self.answered.contains(&mtu) {
            self.answered.push(mtu);
        }
    }

    /// Every size of the current round has its answer: the driver may end
    /// the round without waiting for its timeout.
    fn round_complete(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.iter().all(|s| self.answered.contains(s)))
    }

    /// Whether `mtu` is in the current round and still waits for an answer
    /// (its remaining repeats are worth sending).
    fn awaits(&self, mtu: u32) -> bool {
        self.round.as_ref().is_some_and(|r| r.contains(&mtu)) && !self.answered.contains(&mtu)
    }

    /// Sizes of the current round still waiting for an answer.
    fn unanswered(&self) -> Vec<u32> {
        self.round.as_ref().map_or_else(Vec::new, |r| {
            r.iter()
                .copied()
                .filter(|s| !self.answered.contains(s))
                .collect()
        })
    }

    /// The round's time is up: sizes without an answer were silent.
    fn end_round(&mut self) {
        let Some(sizes) = self.round.take() else {
            return;
        };
        if let Some((lo, _)) = self.verifying.take() {
            if !self.answered.contains(&lo) {
                self.inconclusive = true;
            }
        }
        for s in sizes {
            if !self.answered.contains(&s) && self.passed.is_none_or(|p| s > p) {
                self.failed.entry(s).or_default().silent_rounds += 1;
            }
        }
    }

    /// True once the limit is found (or the rounds are spent).
    #[cfg(test)]
    fn is_done(&self) -> bool {
        self.done
    }

    /// The answer so far (final once [`Self::is_done`]).
    fn result(&self) -> MtuResult {
        let limit = self.confirmed_limit();
        let evidence = self.passed.map(|p| {
            if p >= self.cfg.max_mtu {
                MtuEvidence::Interface
            } else if self.failed.get(&limit).is_some_and(|f| f.icmp)
                || (limit > self.ceiling && self.icmp.is_some())
                || self.icmp.is_some_and(|(_, m)| m == Some(p))
            {
                let (from, mtu) = self.icmp.unwrap_or((None, None));
                MtuEvidence::Icmp { from, mtu }
            } else if self.inconclusive {
                MtuEvidence::Inconclusive
            } else {
                MtuEvidence::Silence
            }
        });
        MtuResult {
            mtu: self.passed,
            evidence,
            rounds: self.rounds,
            probes: self.probes,
        }
    }
}

/// A datagram to send: one probe of the search or the fragment test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuProbe {
    /// Its sequence number, unique in the search: answers and ICMP quotes
    /// name it.
    pub seq: u64,
    /// UDP payload bytes.
    pub payload: u32,
    /// Don't Fragment, or fragments allowed.
    pub fragmenting: Fragmenting,
}

/// Whether a datagram may be fragmented on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragmenting {
    /// Don't Fragment: a hop too small for it drops it (and may say so).
    DontFragment,
    /// Fragments allowed (the fragment test). IPv6 routers never fragment,
    /// so an IPv6 sender fragments at `path_mtu` itself.
    Allowed {
        /// The path MTU the search found.
        path_mtu: u32,
    },
}

/// A request for the far end to send probes ([`Probing::FarEndSends`]): the
/// fields of the control channel's `MtuSend`, within its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtuRequest {
    /// UDP payload sizes to send.
    pub payloads: Vec<u32>,
    /// Copies of each.
    pub count: u32,
    /// With Don't Fragment.
    pub df: bool,
    /// Over IPv6 without DF: the size to fragment at.
    pub fragment_at: Option<u32>,
    /// How long the far end waits for ICMP errors before it answers.
    pub linger_ms: u32,
}

/// What the engine asks the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MtuTransmit {
    /// Send this probe ([`Probing::Datagrams`]).
    Probe(MtuProbe),
    /// Carry this request to the far end ([`Probing::FarEndSends`]); feed its
    /// answer back as [`MtuInput::Answered`].
    Request(MtuRequest),
}

/// What can arrive for an [`MtuSearch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MtuInput {
    /// A probe arrived whole at the far end with `len` UDP payload bytes:
    /// the MTU port's acknowledgement of probe `seq`, the echo of probe
    /// `seq`, or (far end sends) one of the far end's probes arriving here
    /// (`seq` is then ignored).
    Arrived {
        /// The probe's sequence number.
        seq: u64,
        /// Its UDP payload length on arrival.
        len: u32,
    },
    /// A frag-needed / packet-too-big error about one of our probes.
    TooBig {
        /// The probe the error quotes; `None` when too little was quoted to
        /// tell (the error is then about every size above `mtu`).
        seq: Option<u64>,
        /// The next-hop MTU the error names.
        mtu: Option<u32>,
        /// Who sent the error (`None` for our own kernel).
        from: Option<IpAddr>,
    },
    /// Probe `seq` did not leave: `too_big` when our kernel refused its size
    /// (EMSGSIZE: the route's MTU is smaller).
    NotSent {
        /// The probe's sequence number.
        seq: u64,
        /// The kernel said it is too big.
        too_big: bool,
    },
    /// The far end's answer to the outstanding [`MtuRequest`].
    Answered(Vec<MtuSendResult>),
}

/// What happened in a search.
#[derive(Clone, Debug, PartialEq)]
pub enum MtuEvent {
    /// A round of the search began, probing these sizes (MTUs).
    Round {
        /// 1 for the first round.
        number: u32,
        /// The sizes probed.
        sizes: Vec<u32>,
    },
    /// The search is over: its answer (final).
    Searched(MtuResult),
    /// The fragment test is over.
    Fragments(FragmentResult),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Search,
    Fragments,
    Done,
}

/// What a sent probe was for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    Search { mtu: u32 },
    Fragment { payload: u32 },
}

#[derive(Clone, Copy, Debug)]
struct SentProbe {
    purpose: Purpose,
    at: Instant,
    /// An answer was already taken as an RTT sample (a duplicate is not one).
    sampled: bool,
}

/// A probe waiting for its turn in the window.
#[derive(Clone, Copy, Debug)]
struct Queued {
    payload: u32,
    purpose: Purpose,
}

/// The path-MTU search of one direction, with its fragment test: an
/// [`Engine`] that owns its clock (round waits from the measured round
/// trip), its pacing, and the attribution of answers and ICMP errors to
/// sizes. See the module docs for how to drive it.
pub struct MtuSearch {
    cfg: MtuSearchConfig,
    sizes: SizeSearch,
    rto: RtoEstimator,
    phase: Phase,
    started: Instant,
    searched: Option<Instant>,
    /// The current round (or fragment test) began at.
    step_started: Instant,
    /// Its last probe left at (datagrams).
    step_last_send: Option<Instant>,
    next_seq: u64,
    sent: HashMap<u64, SentProbe>,
    queue: VecDeque<Queued>,
    /// Probes on the way without an answer: (sent at, seq, bytes).
    in_flight: VecDeque<(Instant, u64, usize)>,
    requests: VecDeque<MtuRequest>,
    awaiting_answer: bool,
    last_answer: Option<Instant>,
    fragment_counts: Vec<FragmentSize>,
    fragments: Option<FragmentResult>,
    datagrams: u64,
    events: VecDeque<MtuEvent>,
}

impl MtuSearch {
    /// A search as `cfg` says, starting at `now`; the first round is ready
    /// to send.
    pub fn new(cfg: MtuSearchConfig, now: Instant) -> Self {
        let cfg = cfg.normalised();
        let mut rto = cfg.rtt_estimate.clone().unwrap_or_else(|| {
            RtoEstimator::new(INITIAL_ROUND_WAIT, MIN_ROUND_WAIT, MAX_ROUND_WAIT)
        });
        if let Some(rtt) = cfg.rtt {
            rto.on_sample(rtt);
        }
        let mut s = MtuSearch {
            sizes: SizeSearch::new(cfg.clone()),
            cfg,
            rto,
            phase: Phase::Search,
            started: now,
            searched: None,
            step_started: now,
            step_last_send: None,
            next_seq: 1,
            sent: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            requests: VecDeque::new(),
            awaiting_answer: false,
            last_answer: None,
            fragment_counts: Vec::new(),
            fragments: None,
            datagrams: 0,
            events: VecDeque::new(),
        };
        s.next_step(now);
        s
    }

    /// The search's answer so far (final once [`MtuEvent::Searched`] came out).
    pub fn result(&self) -> MtuResult {
        self.sizes.result()
    }

    /// The fragment test's result, once it is over (`None` when it was off
    /// or nothing crossed).
    pub fn fragments(&self) -> Option<&FragmentResult> {
        self.fragments.as_ref()
    }

    /// True while the search runs (before the fragment test): an error that
    /// makes the probed port unreachable ends a measurement then.
    pub fn in_search(&self) -> bool {
        self.phase == Phase::Search
    }

    /// How long the search (without the fragment test) took, once it is over.
    pub fn search_time(&self) -> Option<Duration> {
        self.searched.map(|t| t - self.started)
    }

    /// Datagrams sent, or asked of the far end, so far (search and fragment test).
    pub fn datagrams(&self) -> u64 {
        self.datagrams
    }

    /// The smoothed round trip measured so far.
    pub fn srtt(&self) -> Option<Duration> {
        self.rto.srtt()
    }

    /// The round-trip estimate so far, to seed another search on the same
    /// path ([`MtuSearchConfig::rtt_estimate`]).
    pub fn rtt_estimate(&self) -> &RtoEstimator {
        &self.rto
    }

    /// How long a round waits for answers now: the fixed wait if one was
    /// configured, else the retransmission timeout from the measured round
    /// trip, within [`MIN_ROUND_WAIT`]..=[`MAX_ROUND_WAIT`].
    pub fn round_wait(&self) -> Duration {
        self.cfg.round_wait.unwrap_or_else(|| self.rto.rto())
    }

    fn step_wait(&self) -> Duration {
        match self.phase {
            // Fragments take reassembly at the far end: twice the time.
            Phase::Fragments => self.round_wait() * 2,
            _ => self.round_wait(),
        }
    }

    fn stall(&self) -> Duration {
        (self.round_wait() / 2).max(MIN_STALL)
    }

    fn far_end_sends(&self) -> Option<u64> {
        match self.cfg.probing {
            Probing::FarEndSends { request_bytes } => Some(request_bytes),
            Probing::Datagrams { .. } => None,
        }
    }

    /// Starts the next round, the fragment test, or ends, as the state says.
    fn next_step(&mut self, now: Instant) {
        if self.phase == Phase::Search {
            if let Some(sizes) = self.sizes.next_round() {
                self.events.push_back(MtuEvent::Round {
                    number: self.sizes.rounds,
                    sizes: sizes.clone(),
                });
                let v6 = self.cfg.v6;
                let items: Vec<(u32, Purpose)> = sizes
                    .iter()
                    .map(|&mtu| (payload_size(mtu, v6), Purpose::Search { mtu }))
                    .collect();
                self.start_step(&items, true, None, now);
                return;
            }
            self.searched = Some(now);
            let result = self.sizes.result();
            self.events.push_back(MtuEvent::Searched(result.clone()));
            if let Some(mtu) = result.mtu.filter(|_| self.cfg.fragment_test) {
                self.phase = Phase::Fragments;
                let far_end = self.far_end_sends().is_some();
                self.fragment_counts = fragment_test_sizes(mtu, self.cfg.v6)
                    .into_iter()
                    .map(|size| FragmentSize {
                        size,
                        // Counted up front when we send; the far end says what it sent.
                        sent: if far_end { 0 } else { self.cfg.probes_per_size },
                        arrived: 0,
                    })
                    .collect();
                let items: Vec<(u32, Purpose)> = self
                    .fragment_counts
                    .iter()
                    .map(|c| (c.size, Purpose::Fragment { payload: c.size }))
                    .collect();
                self.start_step(&items, false, Some(mtu), now);
                return;
            }
            self.phase = Phase::Done;
            return;
        }
        if self.phase == Phase::Fragments {
            // A duplicated datagram is one that arrived, not two.
            let counts = self
                .fragment_counts
                .iter()
                .map(|c| FragmentSize {
                    arrived: c.arrived.min(c.sent),
                    ..*c
                })
                .collect();
            let result = FragmentResult::from_counts(counts);
            self.events.push_back(MtuEvent::Fragments(result.clone()));
            self.fragments = Some(result);
            self.phase = Phase::Done;
        }
    }

    /// Queues a round's (or the fragment test's) probes: every size once,
    /// then the repeats.
    fn start_step(&mut self, items: &[(u32, Purpose)], df: bool, mtu: Option<u32>, now: Instant) {
        self.step_started = now;
        self.step_last_send = None;
        self.in_flight.clear();
        self.queue.clear();
        self.last_answer = None;
        match self.far_end_sends() {
            None => {
                for _ in 0..self.cfg.probes_per_size {
                    self.queue.extend(
                        items
                            .iter()
                            .map(|&(payload, purpose)| Queued { payload, purpose }),
                    );
                }
            }
            Some(budget) => {
                let payloads: Vec<u32> = items.iter().map(|i| i.0).collect();
                let linger_ms = self.round_wait().as_millis().min(u128::from(MAX_LINGER_MS)) as u32;
                let fragment_at = if df {
                    None
                } else {
                    mtu.filter(|_| self.cfg.v6)
                };
                self.requests = plan_requests(&payloads, self.cfg.probes_per_size, budget)
                    .into_iter()
                    .map(|(payloads, count)| MtuRequest {
                        payloads,
                        count,
                        df,
                        fragment_at,
                        linger_ms,
                    })
                    .collect();
            }
        }
    }

    /// Whether every probe of the current step has its answer.
    fn step_complete(&self) -> bool {
        match self.phase {
            Phase::Search => self.sizes.round_complete(),
            Phase::Fragments => self.fragment_counts.iter().all(|c| c.arrived >= c.sent),
            Phase::Done => true,
        }
    }

    /// When the current step ends if not every answer comes first.
    fn step_deadline(&self) -> Option<Instant> {
        if self.far_end_sends().is_some() {
            if self.awaiting_answer || !self.requests.is_empty() {
                return None;
            }
            return Some(self.last_answer.unwrap_or(self.step_started) + REQUEST_GRACE);
        }
        if !self.queue.is_empty() {
            return None;
        }
        Some(self.step_last_send.unwrap_or(self.step_started) + self.step_wait())
    }

    /// Ends the current step if it is over, and starts what comes next, as
    /// often as that happens at `now`.
    fn advance(&mut self, now: Instant) {
        for _ in 0..=MAX_ROUNDS + 1 {
            if self.phase == Phase::Done {
                return;
            }
            let requests_out = self.far_end_sends().is_some()
                && (self.awaiting_answer || !self.requests.is_empty());
            let over = !requests_out
                && (self.step_complete() || self.step_deadline().is_some_and(|d| now >= d));
            if !over {
                return;
            }
            if self.phase == Phase::Search {
                self.sizes.end_round();
            }
            self.next_step(now);
        }
    }

    /// Probes that had their time leave the window (lost, or too big).
    fn expire_in_flight(&mut self, now: Instant) {
        let stall = self.stall();
        while self.in_flight.front().is_some_and(|w| w.0 + stall <= now) {
            self.in_flight.pop_front();
        }
    }

    fn answered(&mut self, seq: u64) {
        if let Some(i) = self.in_flight.iter().position(|w| w.1 == seq) {
            self.in_flight.remove(i);
        }
    }

    fn wanted(&self, q: &Queued) -> bool {
        match q.purpose {
            Purpose::Search { mtu } => self.sizes.awaits(mtu),
            Purpose::Fragment { .. } => true,
        }
    }

    fn fragment_count(&mut self, payload: u32) -> Option<&mut FragmentSize> {
        self.fragment_counts.iter_mut().find(|c| c.size == payload)
    }

    fn on_arrived(&mut self, seq: u64, len: u32, now: Instant) {
        if self.far_end_sends().is_some() {
            match self.phase {
                Phase::Search => self.sizes.on_pass(packet_size(len, self.cfg.v6)),
                Phase::Fragments => {
                    if let Some(c) = self.fragment_count(len) {
                        c.arrived += 1;
                    }
                }
                Phase::Done => {}
            }
            return;
        }
        let Some(probe) = self.sent.get_mut(&seq) else {
            return;
        };
        if !probe.sampled {
            probe.sampled = true;
            let rtt = now.saturating_duration_since(probe.at);
            self.rto.on_sample(rtt);
        }
        let purpose = probe.purpose;
        self.answered(seq);
        match (purpose, self.phase) {
            // A whole probe arrived when the length that arrived fits its size.
            (Purpose::Search { mtu }, Phase::Search) if payload_size(mtu, self.cfg.v6) == len => {
                self.sizes.on_pass(mtu);
            }
            (Purpose::Fragment { payload }, Phase::Fragments) if payload == len => {
                if let Some(c) = self.fragment_count(payload) {
                    c.arrived = (c.arrived + 1).min(c.sent);
                }
            }
            _ => {}
        }
    }

    fn on_too_big(&mut self, seq: Option<u64>, hint: Option<u32>, from: Option<IpAddr>) {
        if self.phase != Phase::Search {
            return;
        }
        match seq {
            Some(seq) => {
                let Some(probe) = self.sent.get(&seq) else {
                    return;
                };
                let purpose = probe.purpose;
                self.answered(seq);
                if let Purpose::Search { mtu } = purpose {
                    self.sizes.on_too_big(mtu, hint, from);
                }
            }
            None => {
                // Too little quoted to name the probe: the error is about
                // every size its MTU is too small for.
                if let Some(h) = hint {
                    for mtu in self.sizes.unanswered().into_iter().filter(|&m| m > h) {
                        self.sizes.on_too_big(mtu, hint, from);
                    }
                }
            }
        }
    }

    fn on_not_sent(&mut self, seq: u64, too_big: bool) {
        let Some(probe) = self.sent.get(&seq) else {
            return;
        };
        let purpose = probe.purpose;
        self.answered(seq);
        match (purpose, self.phase) {
            // Our own kernel will not send it: the route's MTU is smaller.
            (Purpose::Search { mtu }, Phase::Search) if too_big => {
                self.sizes.on_too_big(mtu, None, None)
            }
            (Purpose::Fragment { payload }, Phase::Fragments) => {
                if let Some(c) = self.fragment_count(payload) {
                    c.sent = c.sent.saturating_sub(1);
                }
            }
            _ => {}
        }
    }

    fn on_answered(&mut self, results: Vec<MtuSendResult>, now: Instant) {
        if !self.awaiting_answer {
            return;
        }
        self.awaiting_answer = false;
        self.last_answer = Some(now);
        let v6 = self.cfg.v6;
        for r in results {
            match self.phase {
                Phase::Search => {
                    let mtu = packet_size(r.size, v6);
                    if let Some(icmp) = r.icmp {
                        if let IcmpReason::FragNeeded { mtu: hint } = icmp.reason() {
                            self.sizes.on_too_big(mtu, hint, icmp.from);
                        }
                    } else if r.sent == 0 && r.error.is_some() {
                        // The far end's own kernel will not send it.
                        self.sizes.on_too_big(mtu, None, None);
                    }
                }
                Phase::Fragments => {
                    if let Some(c) = self.fragment_count(r.size) {
                        c.sent += r.sent;
                    }
                }
                Phase::Done => {}
            }
        }
    }
}

impl Engine for MtuSearch {
    type Input = MtuInput;
    type Transmit = MtuTransmit;
    type Event = MtuEvent;

    fn handle_input(&mut self, input: MtuInput, now: Instant) {
        match input {
            MtuInput::Arrived { seq, len } => self.on_arrived(seq, len, now),
            MtuInput::TooBig { seq, mtu, from } => self.on_too_big(seq, mtu, from),
            MtuInput::NotSent { seq, too_big } => self.on_not_sent(seq, too_big),
            MtuInput::Answered(results) => self.on_answered(results, now),
        }
        self.advance(now);
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<MtuTransmit> {
        if self.phase == Phase::Done {
            return None;
        }
        if self.far_end_sends().is_some() {
            if self.awaiting_answer {
                return None;
            }
            let r = self.requests.pop_front()?;
            self.awaiting_answer = true;
            self.datagrams += r.payloads.len() as u64 * u64::from(r.count);
            return Some(MtuTransmit::Request(r));
        }
        let Probing::Datagrams { window_bytes } = self.cfg.probing else {
            return None;
        };
        self.expire_in_flight(now);
        while let Some(q) = self.queue.front().copied() {
            if !self.wanted(&q) {
                self.queue.pop_front();
                continue;
            }
            let bytes: usize = self.in_flight.iter().map(|w| w.2).sum();
            if !self.in_flight.is_empty() && bytes + q.payload as usize > window_bytes {
                return None;
            }
            self.queue.pop_front();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.sent.insert(
                seq,
                SentProbe {
                    purpose: q.purpose,
                    at: now,
                    sampled: false,
                },
            );
            self.in_flight.push_back((now, seq, q.payload as usize));
            self.step_last_send = Some(now);
            self.datagrams += 1;
            let fragmenting = match (q.purpose, self.sizes.passed) {
                (Purpose::Fragment { .. }, Some(path_mtu)) => Fragmenting::Allowed { path_mtu },
                _ => Fragmenting::DontFragment,
            };
            return Some(MtuTransmit::Probe(MtuProbe {
                seq,
                payload: q.payload,
                fragmenting,
            }));
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        if self.far_end_sends().is_none() && !self.queue.is_empty() {
            // The window is full: the oldest probe's time frees room.
            return self.in_flight.front().map(|w| w.0 + self.stall());
        }
        self.step_deadline()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.expire_in_flight(now);
        self.advance(now);
    }

    fn poll_event(&mut self) -> Option<MtuEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}

/// Splits sending `probes` datagrams of each of `payloads` into requests
/// (sizes, count) within the far end's limits and within `budget` bytes
/// each: a request's datagrams arrive in one burst, and what overflows our
/// receive buffer would look like loss on the path.
fn plan_requests(payloads: &[u32], probes: u32, budget: u64) -> Vec<(Vec<u32>, u32)> {
    let count = probes.clamp(1, MAX_COUNT_PER_SIZE);
    let budget = budget.clamp(1, MAX_BYTES_PER_SEND);
    let mut requests = Vec::new();
    let mut current: (Vec<u32>, u64) = (Vec::new(), 0);
    for &size in payloads {
        let bytes = u64::from(size) * u64::from(count);
        if bytes > budget {
            // Alone, in fewer copies per request.
            let per = u32::try_from(budget / u64::from(size.max(1)))
                .unwrap_or(1)
                .clamp(1, count);
            let mut left = count;
            while left > 0 {
                let n = per.min(left);
                requests.push((vec![size], n));
                left -= n;
            }
            continue;
        }
        if current.1 + bytes > budget || current.0.len() >= MAX_SIZES_PER_SEND as usize {
            requests.push((std::mem::take(&mut current.0), count));
            current.1 = 0;
        }
        current.0.push(size);
        current.1 += bytes;
    }
    if !current.0.is_empty() {
        requests.push((current.0, count));
    }
    requests
}

/// UDP payload sizes for the fragmentation test, given a direction's path
/// MTU: one just over it (two fragments) and one about three times it
/// (three or four), capped at the largest datagram.
pub fn fragment_test_sizes(mtu: u32, v6: bool) -> Vec<u32> {
    let max = udpreach_wire::mtu::max_payload(v6);
    let payload = udpreach_wire::mtu::payload_size(mtu, v6);
    let mut v = vec![(payload + 200).min(max), (payload * 3).min(max)];
    v.dedup();
    v
}

/// Whether fragmented datagrams crossed, from how many of each size arrived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FragmentResult {
    /// True when every size arrived at least once.
    pub passes: bool,
    /// True when none arrived: fragments are dropped on the way.
    pub dropped: bool,
    /// Each size sent, with how many copies arrived.
    pub sizes: Vec<FragmentSize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
/// One size of the fragmentation test and its fate.
pub struct FragmentSize {
    /// UDP payload bytes.
    pub size: u32,
    /// Copies sent.
    pub sent: u32,
    /// Copies that arrived at the far end.
    pub arrived: u32,
}

impl FragmentResult {
    /// The result from each size's counts.
    pub fn from_counts(sizes: Vec<FragmentSize>) -> Self {
        let arrived = sizes.iter().filter(|s| s.arrived > 0).count();
        FragmentResult {
            passes: !sizes.is_empty() && arrived == sizes.len(),
            dropped: arrived == 0,
            sizes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Rng;

    fn config(min_mtu: u32, max_mtu: u32, probes_per_size: u32, sizes: usize) -> MtuSearchConfig {
        MtuSearchConfig {
            probes_per_size,
            sizes_per_round: sizes,
            ..MtuSearchConfig::datagrams(min_mtu, max_mtu, false)
        }
    }

    #[test]
    fn fragment_sizes_and_verdicts() {
        assert_eq!(fragment_test_sizes(1400, false), vec![1572, 4116]);
        assert_eq!(fragment_test_sizes(65535, false), vec![65507]);
        let r = FragmentResult::from_counts(vec![
            FragmentSize {
                size: 1572,
                sent: 3,
                arrived: 0,
            },
            FragmentSize {
                size: 4116,
                sent: 3,
                arrived: 0,
            },
        ]);
        assert!(r.dropped && !r.passes);
        let r = FragmentResult::from_counts(vec![
            FragmentSize {
                size: 1572,
                sent: 3,
                arrived: 2,
            },
            FragmentSize {
                size: 4116,
                sent: 3,
                arrived: 0,
            },
        ]);
        assert!(!r.dropped && !r.passes, "partial");
    }

    struct Path {
        hop_mtu: u32,
        /// The hop's frag-needed errors are filtered.
        black_hole: bool,
        loss: u64,
    }

    const ROUTER: &str = "198.18.1.254";

    fn search(min: u32, max: u32, path: &Path, seed: u64) -> MtuResult {
        let mut s = SizeSearch::new(config(min, max, 3, 8));
        let mut rng = Rng::new(seed | 1);
        while let Some(sizes) = s.next_round() {
            for &size in &sizes {
                for _ in 0..s.probes_per_size() {
                    if rng.chance(path.loss as f64 / 100.0) {
                        continue;
                    }
                    if size <= path.hop_mtu {
                        if !rng.chance(path.loss as f64 / 100.0) {
                            s.on_pass(size);
                        }
                    } else if !path.black_hole && !rng.chance(path.loss as f64 / 100.0) {
                        s.on_too_big(size, Some(path.hop_mtu), Some(ROUTER.parse().unwrap()));
                    }
                }
            }
            s.end_round();
        }
        assert!(s.is_done());
        s.result()
    }

    #[test]
    fn icmp_names_the_mtu_in_one_or_two_rounds() {
        let r = search(
            92,
            1500,
            &Path {
                hop_mtu: 1400,
                black_hole: false,
                loss: 0,
            },
            1,
        );
        assert_eq!(r.mtu, Some(1400));
        assert_eq!(
            r.evidence,
            Some(MtuEvidence::Icmp {
                from: Some(ROUTER.parse().unwrap()),
                mtu: Some(1400)
            })
        );
        assert!(r.rounds <= 2, "{} rounds", r.rounds);
        // An MTU that is no common value: the hint is tried exactly.
        let r = search(
            92,
            1500,
            &Path {
                hop_mtu: 1337,
                black_hole: false,
                loss: 0,
            },
            1,
        );
        assert_eq!(r.mtu, Some(1337));
        assert!(r.rounds <= 3, "{} rounds", r.rounds);
    }

    #[test]
    fn black_hole_found_by_search() {
        for hop in [1400, 1337, 576, 1499, 93] {
            let r = search(
                92,
                1500,
                &Path {
                    hop_mtu: hop,
                    black_hole: true,
                    loss: 0,
                },
                2,
            );
            assert_eq!(r.mtu, Some(hop), "hop {hop}");
            assert_eq!(r.evidence, Some(MtuEvidence::Silence));
            assert!(r.rounds <= 7, "hop {hop}: {} rounds", r.rounds);
        }
    }

    #[test]
    fn nothing_smaller_than_the_interface() {
        let r = search(
            1280,
            1500,
            &Path {
                hop_mtu: 9000,
                black_hole: false,
                loss: 0,
            },
            3,
        );
        assert_eq!(r.mtu, Some(1500));
        assert_eq!(r.evidence, Some(MtuEvidence::Interface));
        assert_eq!(r.rounds, 1);
    }

    #[test]
    fn loss_does_not_shrink_the_answer() {
        for seed in 1..40 {
            for black_hole in [false, true] {
                let path = Path {
                    hop_mtu: 1400,
                    black_hole,
                    loss: 10,
                };
                let r = search(92, 1500, &path, seed);
                assert_eq!(r.mtu, Some(1400), "seed {seed} black hole {black_hole}");
            }
        }
    }

    #[test]
    fn nothing_crosses() {
        let r = search(
            1280,
            1500,
            &Path {
                hop_mtu: 100,
                black_hole: true,
                loss: 0,
            },
            4,
        );
        assert_eq!(r.mtu, None);
        assert_eq!(r.evidence, None);
        assert!(r.rounds <= 3);
    }

    #[test]
    fn jumbo_range() {
        let r = search(
            92,
            65535,
            &Path {
                hop_mtu: 8950,
                black_hole: true,
                loss: 0,
            },
            5,
        );
        assert_eq!(r.mtu, Some(8950));
        assert!(r.rounds <= 9, "{} rounds", r.rounds);
    }

    #[test]
    fn early_end_of_round() {
        let mut s = SizeSearch::new(config(1280, 1500, 2, 4));
        let sizes = s.next_round().unwrap();
        assert!(!s.round_complete());
        for &m in &sizes {
            if m <= 1400 {
                s.on_pass(m);
            } else {
                s.on_too_big(m, Some(1400), None);
            }
        }
        assert!(s.round_complete());
        assert!(s.unanswered().is_empty());
        s.end_round();
        assert_eq!(
            s.next_round(),
            None,
            "converged: 1400 passed, 1401+ too big"
        );
        assert_eq!(s.result().mtu, Some(1400));
    }

    /// Runs a search where `crosses(size, round)` says whether a size's
    /// probes arrive in a round (no ICMP ever: silence is all there is).
    fn scripted(crosses: impl Fn(u32, u32) -> bool) -> (MtuResult, Vec<Vec<u32>>) {
        let mut s = SizeSearch::new(config(1280, 1500, 3, 4));
        let mut rounds = Vec::new();
        while let Some(sizes) = s.next_round() {
            let round = rounds.len() as u32 + 1;
            for &m in &sizes {
                if crosses(m, round) {
                    s.on_pass(m);
                }
            }
            rounds.push(sizes);
            s.end_round();
        }
        (s.result(), rounds)
    }

    #[test]
    fn a_silent_limit_is_probed_again_before_it_is_reported() {
        let (r, rounds) = scripted(|m, _| m <= 1400);
        assert_eq!(r.mtu, Some(1400));
        assert_eq!(r.evidence, Some(MtuEvidence::Silence));
        assert_eq!(rounds.last().unwrap(), &vec![1400, 1401], "{rounds:?}");
    }

    #[test]
    fn a_size_that_crossed_and_then_vanished_means_could_not_tell() {
        // Sizes above 1300 cross in the first rounds, then nothing large does
        // (a far end whose buffers fill up, say): no black hole claimed.
        let (r, rounds) = scripted(|m, round| m <= 1300 || (m <= 1400 && round <= 3));
        assert_eq!(r.evidence, Some(MtuEvidence::Inconclusive), "{rounds:?}");
        assert!(r.mtu.is_some_and(|m| m >= 1300));
    }

    #[test]
    fn a_limit_that_crosses_when_repeated_reopens_the_search() {
        // 1401 and above vanish until the re-check, then cross: lost, not too big.
        let verify_round = scripted(|m, _| m <= 1400).1.len() as u32;
        let (r, _) = scripted(|m, round| m <= 1400 || round >= verify_round);
        assert_eq!(r.mtu, Some(1500));
        assert_eq!(r.evidence, Some(MtuEvidence::Interface));
    }

    #[test]
    fn requests_stay_within_the_servers_limits_and_our_buffer() {
        // A loopback round over IPv6: the largest datagram three times is
        // more than a default receive buffer's half.
        let sizes = [528, 1232, 1452, 8952, 65488];
        let reqs = plan_requests(&sizes, 3, 106_496);
        for (s, c) in &reqs {
            let bytes: u64 = s.iter().map(|&x| u64::from(x) * u64::from(*c)).sum();
            assert!(bytes <= 106_496 || s.len() == 1 && *c == 1, "{reqs:?}");
            assert!(bytes <= MAX_BYTES_PER_SEND);
        }
        for &size in &sizes {
            let copies: u32 = reqs
                .iter()
                .filter(|(s, _)| s.contains(&size))
                .map(|(_, c)| c)
                .sum();
            assert_eq!(copies, 3, "size {size}: {reqs:?}");
        }
        assert_eq!(reqs.iter().filter(|(s, _)| s == &[65488]).count(), 3);
        // A large buffer: one request unless the server's cap says otherwise.
        assert_eq!(plan_requests(&sizes, 3, 8 << 20).len(), 1);
        let big = [udpreach_wire::mtu::MAX_PAYLOAD_V6; 10];
        let reqs = plan_requests(&big, 4, 8 << 20);
        assert!(reqs.iter().all(|(s, c)| {
            s.iter().map(|&x| u64::from(x) * u64::from(*c)).sum::<u64>() <= MAX_BYTES_PER_SEND
        }));
        assert_eq!(reqs.iter().map(|(s, _)| s.len()).sum::<usize>(), 10);
        let many: Vec<u32> = (100..150).collect();
        assert!(plan_requests(&many, 1, 8 << 20)
            .iter()
            .all(|(s, _)| s.len() <= MAX_SIZES_PER_SEND as usize));
    }

    #[test]
    fn search_limits_of_the_families() {
        // What the driver gets as the largest size: never above what a UDP datagram can be.
        let v4 = fragment_test_sizes(65535, false);
        assert_eq!(v4, vec![65507]);
        assert_eq!(fragment_test_sizes(65575, true), vec![65527]);
    }
}

/// The [`Engine`] in virtual time: both directions over a simulated path
/// with a narrow hop, loss, jitter (which reorders) and round trips of
/// 0.1, 50 and 200 ms.
#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::testkit::{Limits, LinkConfig, Sim};
    use udpreach_wire::icmp::{IcmpError, IcmpOrigin};

    const ROUTER: &str = "198.18.1.254";
    const RTTS_MS: [f64; 3] = [0.1, 50.0, 200.0];

    #[derive(Clone, Copy)]
    struct Path {
        rtt: Duration,
        jitter: Duration,
        loss: f64,
        hop_mtu: u32,
        /// The hop sends frag-needed (else: a black hole).
        icmp: bool,
        /// Its errors quote the whole probe header (else only 8 bytes).
        quotes_header: bool,
        /// Fragments cross.
        fragments: bool,
        /// Share of datagrams delivered twice.
        duplicate: f64,
    }

    impl Path {
        fn new(rtt_ms: f64, hop_mtu: u32) -> Self {
            Path {
                rtt: Duration::from_secs_f64(rtt_ms / 1e3),
                jitter: Duration::ZERO,
                loss: 0.0,
                hop_mtu,
                icmp: true,
                quotes_header: true,
                fragments: true,
                duplicate: 0.0,
            }
        }

        fn link(&self) -> LinkConfig {
            LinkConfig {
                delay: self.rtt / 2,
                jitter: self.jitter,
                loss: self.loss,
                duplicate: self.duplicate,
            }
        }

        fn too_big(&self) -> IcmpError {
            IcmpError {
                origin: IcmpOrigin::Icmp4,
                icmp_type: 3,
                code: 4,
                info: self.hop_mtu,
                errno: 90,
                from: Some(ROUTER.parse().unwrap()),
            }
        }

        /// Whether a datagram of `payload` bytes gets past the hop.
        fn crosses(&self, payload: u32, df: bool) -> bool {
            packet_size(payload, false) <= self.hop_mtu || (!df && self.fragments)
        }
    }

    struct Run {
        result: MtuResult,
        fragments: Option<FragmentResult>,
        search_time: Duration,
        round_wait: Duration,
        events: Vec<MtuEvent>,
    }

    fn config(probing: Probing, rtt: Duration) -> MtuSearchConfig {
        MtuSearchConfig {
            probing,
            rtt: Some(rtt),
            ..MtuSearchConfig::datagrams(92, 1500, false)
        }
    }

    fn limits() -> Limits {
        Limits {
            virtual_time: Duration::from_secs(300),
            steps: 1_000_000,
        }
    }

    fn finish(s: &MtuSearch, out: crate::testkit::Outcome<MtuEvent>) -> Run {
        assert!(out.done, "the search did not end: {:?}", out.events);
        Run {
            result: s.result(),
            fragments: s.fragments().cloned(),
            search_time: s.search_time().unwrap(),
            round_wait: s.round_wait(),
            events: out.events,
        }
    }

    /// Upstream: we send the probes, the far end acknowledges what arrives.
    fn upstream(path: Path, seed: u64) -> Run {
        let mut sim = Sim::new(seed);
        let window_bytes = WINDOW_BYTES;
        let mut s = MtuSearch::new(
            config(Probing::Datagrams { window_bytes }, path.rtt),
            sim.now(),
        );
        let link = path.link();
        let out = sim.run(&mut s, limits(), |sim, t| {
            let MtuTransmit::Probe(p) = t else {
                panic!("a request from a datagram search: {t:?}")
            };
            let df = p.fragmenting == Fragmenting::DontFragment;
            if !path.crosses(p.payload, df) {
                if path.icmp {
                    let seq = path.quotes_header.then_some(p.seq);
                    let input = MtuInput::TooBig {
                        seq,
                        mtu: Some(path.hop_mtu),
                        from: ROUTER.parse().ok(),
                    };
                    sim.deliver_over(&link, input);
                }
                return;
            }
            for at in link.arrivals(sim.now(), &mut sim.rng) {
                for back in link.arrivals(at, &mut sim.rng) {
                    let ack = MtuInput::Arrived {
                        seq: p.seq,
                        len: p.payload,
                    };
                    sim.deliver_at(back, ack);
                }
            }
        });
        finish(&s, out)
    }

    /// Downstream: the far end sends on request and answers with what its
    /// kernel saw.
    fn downstream(path: Path, seed: u64) -> Run {
        let mut sim = Sim::new(seed);
        let mut s = MtuSearch::new(
            config(
                Probing::FarEndSends {
                    request_bytes: 106_496,
                },
                path.rtt,
            ),
            sim.now(),
        );
        let link = path.link();
        let out = sim.run(&mut s, limits(), |sim, t| {
            let MtuTransmit::Request(r) = t else {
                panic!("a probe from a far-end search: {t:?}")
            };
            assert!(udpreach_wire::mtu::check_send_request(&r.payloads, r.count, 65507).is_ok());
            let at_far_end = sim.now() + path.rtt / 2;
            let mut results = Vec::new();
            for &size in &r.payloads {
                let crosses = path.crosses(size, r.df);
                for _ in 0..r.count {
                    if crosses {
                        for at in link.arrivals(at_far_end, &mut sim.rng) {
                            let input = MtuInput::Arrived { seq: 0, len: size };
                            sim.deliver_at(at, input);
                        }
                    }
                }
                let icmp =
                    (!crosses && path.icmp && !sim.rng.chance(path.loss)).then(|| path.too_big());
                results.push(MtuSendResult {
                    size,
                    sent: r.count,
                    error: None,
                    icmp,
                });
            }
            let linger = Duration::from_millis(u64::from(r.linger_ms));
            sim.deliver_at(
                at_far_end + linger + path.rtt / 2,
                MtuInput::Answered(results),
            );
        });
        finish(&s, out)
    }

    fn both(path: Path, seed: u64) -> [(&'static str, Run); 2] {
        [
            ("upstream", upstream(path, seed)),
            ("downstream", downstream(path, seed)),
        ]
    }

    fn rounds(r: &Run) -> u32 {
        r.events
            .iter()
            .filter(|e| matches!(e, MtuEvent::Round { .. }))
            .count() as u32
    }

    /// What a round may cost: a few round trips, never less than the floor.
    fn per_round_bound(rtt: Duration) -> Duration {
        rtt * 4 + MIN_ROUND_WAIT + REQUEST_GRACE
    }

    #[test]
    fn frag_needed_at_a_hop_at_every_rtt_both_directions() {
        for rtt_ms in RTTS_MS {
            let path = Path::new(rtt_ms, 1400);
            for (dir, r) in both(path, 1) {
                assert_eq!(r.result.mtu, Some(1400), "{dir} at {rtt_ms} ms");
                assert_eq!(
                    r.result.evidence,
                    Some(MtuEvidence::Icmp {
                        from: ROUTER.parse().ok(),
                        mtu: Some(1400)
                    }),
                    "{dir} at {rtt_ms} ms"
                );
                assert!(rounds(&r) <= 2, "{dir} at {rtt_ms} ms: {:?}", r.events);
                // Every size answers (ICMP or arrival): no round waits out
                // its timer; downstream, the far end lingers for errors.
                let per_round = match dir {
                    "upstream" => path.rtt * 3,
                    _ => per_round_bound(path.rtt),
                };
                assert!(
                    r.search_time <= per_round * rounds(&r),
                    "{dir} at {rtt_ms} ms: {:?}",
                    r.search_time
                );
                let frag = r.fragments.expect("fragment test");
                assert!(frag.passes, "{dir}: {frag:?}");
            }
        }
    }

    #[test]
    fn black_hole_at_every_rtt_both_directions_time_scales_with_rtt() {
        let mut times = Vec::new();
        for rtt_ms in RTTS_MS {
            let path = Path {
                icmp: false,
                ..Path::new(rtt_ms, 1337)
            };
            for (dir, r) in both(path, 2) {
                assert_eq!(r.result.mtu, Some(1337), "{dir} at {rtt_ms} ms");
                assert_eq!(r.result.evidence, Some(MtuEvidence::Silence), "{dir}");
                let n = rounds(&r);
                assert!(n <= 8, "{dir} at {rtt_ms} ms: {n} rounds");
                assert!(
                    r.search_time <= per_round_bound(path.rtt) * n,
                    "{dir} at {rtt_ms} ms: {:?} for {n} rounds",
                    r.search_time
                );
                // The fixed wait this replaces: 4 x RTT + 50 ms per round.
                if rtt_ms >= 50.0 && dir == "upstream" {
                    assert!(
                        r.round_wait < path.rtt * 2,
                        "{dir} at {rtt_ms} ms: waits {:?}",
                        r.round_wait
                    );
                }
                times.push((rtt_ms, dir, r.search_time));
            }
        }
        // 200 ms takes longer than 50 ms, which takes longer than 0.1 ms.
        for dir in ["upstream", "downstream"] {
            let t: Vec<Duration> = times.iter().filter(|x| x.1 == dir).map(|x| x.2).collect();
            assert!(t[0] < t[1] && t[1] < t[2], "{dir}: {times:?}");
        }
    }

    #[test]
    fn loss_jitter_duplication_and_reordering_never_shrink_the_answer() {
        for rtt_ms in RTTS_MS {
            for seed in 1..25 {
                for icmp in [true, false] {
                    let path = Path {
                        // Jitter far above the gap between sends: reordered.
                        jitter: Duration::from_secs_f64(rtt_ms / 1e3 * 0.2 + 0.002),
                        loss: 0.05,
                        duplicate: 0.05,
                        icmp,
                        ..Path::new(rtt_ms, 1400)
                    };
                    for (dir, r) in both(path, seed) {
                        assert_eq!(
                            r.result.mtu,
                            Some(1400),
                            "{dir} seed {seed} icmp {icmp} at {rtt_ms} ms: {:?}",
                            r.events
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_error_quoting_too_little_is_about_every_larger_size() {
        let path = Path {
            quotes_header: false,
            ..Path::new(50.0, 1400)
        };
        let r = upstream(path, 3);
        assert_eq!(r.result.mtu, Some(1400));
        assert!(matches!(r.result.evidence, Some(MtuEvidence::Icmp { .. })));
    }

    #[test]
    fn fragments_dropped_are_reported_both_directions() {
        for rtt_ms in RTTS_MS {
            let path = Path {
                fragments: false,
                ..Path::new(rtt_ms, 1400)
            };
            for (dir, r) in both(path, 4) {
                let f = r.fragments.expect("fragment test");
                assert!(f.dropped && !f.passes, "{dir} at {rtt_ms}: {f:?}");
                assert_eq!(f.sizes.len(), 2);
                assert!(f.sizes.iter().all(|s| s.sent == 3 && s.arrived == 0));
            }
        }
    }

    #[test]
    fn a_local_refusal_bounds_the_search() {
        let mut sim: Sim<MtuInput> = Sim::new(5);
        let cfg = MtuSearchConfig {
            fragment_test: false,
            ..config(
                Probing::Datagrams {
                    window_bytes: WINDOW_BYTES,
                },
                Duration::from_millis(1),
            )
        };
        let mut s = MtuSearch::new(cfg, sim.now());
        let out = sim.run(&mut s, limits(), |sim, t| {
            let MtuTransmit::Probe(p) = t else { panic!() };
            // Our own kernel knows a route MTU of 1280.
            let input = if packet_size(p.payload, false) > 1280 {
                MtuInput::NotSent {
                    seq: p.seq,
                    too_big: true,
                }
            } else {
                MtuInput::Arrived {
                    seq: p.seq,
                    len: p.payload,
                }
            };
            sim.deliver_after(Duration::from_micros(50), input);
        });
        assert!(out.done);
        let r = s.result();
        assert_eq!(r.mtu, Some(1280));
        assert_eq!(
            r.evidence,
            Some(MtuEvidence::Icmp {
                from: None,
                mtu: None
            })
        );
        assert!(s.fragments().is_none(), "fragment test off");
    }

    #[test]
    fn probes_on_the_way_stay_within_the_window_and_seqs_are_unique() {
        let now = Instant::now();
        let cfg = MtuSearchConfig {
            probes_per_size: 4,
            ..MtuSearchConfig::datagrams(1280, 65535, false)
        };
        let mut s = MtuSearch::new(cfg, now);
        let mut first = Vec::new();
        while let Some(MtuTransmit::Probe(p)) = s.poll_transmit(now) {
            first.push(p);
        }
        let bytes: usize = first.iter().map(|p| p.payload as usize).sum();
        let largest = first.iter().map(|p| p.payload as usize).max().unwrap();
        assert!(bytes <= WINDOW_BYTES + largest, "{bytes} bytes at once");
        // Nothing answers: after half a round's wait the window moves on.
        let wake = s.poll_timeout().expect("a timer");
        assert!(wake > now && wake <= now + s.round_wait());
        s.handle_timeout(wake);
        let mut seqs: Vec<u64> = first.iter().map(|p| p.seq).collect();
        while let Some(MtuTransmit::Probe(p)) = s.poll_transmit(wake) {
            seqs.push(p.seq);
        }
        assert!(seqs.len() > first.len(), "the window never moved");
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "a sequence number used twice");
    }

    #[test]
    fn a_fixed_wait_overrides_the_measured_one() {
        let now = Instant::now();
        let cfg = MtuSearchConfig {
            round_wait: Some(Duration::from_millis(7)),
            ..MtuSearchConfig::datagrams(1280, 1500, false)
        };
        let s = MtuSearch::new(cfg, now);
        assert_eq!(s.round_wait(), Duration::from_millis(7));
        let s = MtuSearch::new(MtuSearchConfig::datagrams(1280, 1500, false), now);
        assert_eq!(s.round_wait(), INITIAL_ROUND_WAIT);
    }
}
