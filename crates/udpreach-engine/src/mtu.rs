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

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// MTUs that links commonly have, tried in the first round.
const COMMON_MTUS: [u32; 12] = [
    9000, 4470, 1500, 1492, 1480, 1460, 1420, 1400, 1380, 1280, 1024, 576,
];
/// A search needs about log_(k+1)(range) rounds; this bounds it whatever happens.
const MAX_ROUNDS: u32 = 40;

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

/// The path MTU search for one direction: which sizes to probe each round and what their fate says.
pub struct MtuSearch {
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

impl MtuSearch {
    /// A search between `cfg.min_mtu` and `cfg.max_mtu`.
    pub fn new(cfg: MtuSearchConfig) -> Self {
        let cfg = MtuSearchConfig {
            max_mtu: cfg.max_mtu.max(cfg.min_mtu),
            probes_per_size: cfg.probes_per_size.max(1),
            sizes_per_round: cfg.sizes_per_round.max(1),
            ..cfg
        };
        MtuSearch {
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
    pub fn probes_per_size(&self) -> u32 {
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
    pub fn next_round(&mut self) -> Option<Vec<u32>> {
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
    pub fn on_pass(&mut self, mtu: u32) {
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
    pub fn on_too_big(&mut self, mtu: u32, hint: Option<u32>, from: Option<IpAddr>) {
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
    pub fn round_complete(&self) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.iter().all(|s| self.answered.contains(s)))
    }

    /// Whether `mtu` is in the current round and still waits for an answer
    /// (its remaining repeats are worth sending).
    pub fn awaits(&self, mtu: u32) -> bool {
        self.round.as_ref().is_some_and(|r| r.contains(&mtu)) && !self.answered.contains(&mtu)
    }

    /// Sizes of the current round still waiting for an answer.
    pub fn unanswered(&self) -> Vec<u32> {
        self.round.as_ref().map_or_else(Vec::new, |r| {
            r.iter()
                .copied()
                .filter(|s| !self.answered.contains(s))
                .collect()
        })
    }

    /// The round's time is up: sizes without an answer were silent.
    pub fn end_round(&mut self) {
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
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The answer so far (final once [`Self::is_done`]).
    pub fn result(&self) -> MtuResult {
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
        let mut s = MtuSearch::new(MtuSearchConfig {
            min_mtu: min,
            max_mtu: max,
            probes_per_size: 3,
            sizes_per_round: 8,
        });
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
        let mut s = MtuSearch::new(MtuSearchConfig {
            min_mtu: 1280,
            max_mtu: 1500,
            probes_per_size: 2,
            sizes_per_round: 4,
        });
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
        let mut s = MtuSearch::new(MtuSearchConfig {
            min_mtu: 1280,
            max_mtu: 1500,
            probes_per_size: 3,
            sizes_per_round: 4,
        });
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
    fn search_limits_of_the_families() {
        // What the driver gets as the largest size: never above what a UDP datagram can be.
        let v4 = fragment_test_sizes(65535, false);
        assert_eq!(v4, vec![65507]);
        assert_eq!(fragment_test_sizes(65575, true), vec![65527]);
    }
}
