//! The one test kit for every [`Engine`]: a seeded random source, a lossy
//! link with delay, jitter (which reorders), duplication and loss, and a
//! driver that runs an engine to completion in virtual time against a
//! simulated network. Built for the engine's own unit tests and, with the
//! `testkit` feature, for other crates' tests.
//!
//! ```text
//! let mut sim = Sim::new(seed);
//! let up = LinkConfig::lossy(Duration::from_millis(25), 0.05);
//! let outcome = sim.run(&mut engine, Limits::default(), |sim, transmit| {
//!     // Decide what the network and the far end do with `transmit`, and
//!     // schedule the inputs that come back: sim.deliver_after(d, input).
//! });
//! ```

use crate::engine::Engine;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A small deterministic pseudo-random source (SplitMix64): the same seed
/// gives the same simulation, so a failing seed can be replayed. Hand-rolled
/// rather than `rand` so the engine crate has no runtime dependency for it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A uniform duration in `0..=max`.
    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

/// One direction of a simulated path.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkConfig {
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter`; reorders when larger than the
    /// spacing between sends.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a delivered datagram arrives twice.
    pub duplicate: f64,
}

impl LinkConfig {
    /// A link that delivers everything after `delay`.
    pub fn perfect(delay: Duration) -> Self {
        LinkConfig {
            delay,
            ..LinkConfig::default()
        }
    }

    /// A link that loses a share `loss` of datagrams, delivering the rest after `delay`.
    pub fn lossy(delay: Duration, loss: f64) -> Self {
        LinkConfig {
            delay,
            loss,
            ..LinkConfig::default()
        }
    }

    /// When each copy of a datagram sent at `now` arrives: none when lost,
    /// two when duplicated.
    pub fn arrivals(&self, now: Instant, rng: &mut Rng) -> Vec<Instant> {
        if rng.chance(self.loss) {
            return Vec::new();
        }
        let copies = if rng.chance(self.duplicate) { 2 } else { 1 };
        (0..copies)
            .map(|_| now + self.delay + rng.duration_up_to(self.jitter))
            .collect()
    }
}

/// Bounds on one simulated run, so a broken engine fails a test instead of
/// looping for ever.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Virtual time the run may take.
    pub virtual_time: Duration,
    /// Driver iterations (inputs, timeouts and transmits together).
    pub steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            virtual_time: Duration::from_secs(3600),
            steps: 10_000_000,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome<Ev> {
    /// Every event the engine reported, in order.
    pub events: Vec<Ev>,
    /// Virtual time from the start to the end of the run.
    pub elapsed: Duration,
    /// True when the engine said it was done; false when a limit stopped it,
    /// or nothing (no input, no timeout) could make progress.
    pub done: bool,
    /// Driver iterations taken.
    pub steps: u64,
}

/// The simulated world an engine runs in: a virtual clock, a random source
/// and inputs scheduled to arrive at given instants.
pub struct Sim<In> {
    /// The run's random source (use it in the network closure too).
    pub rng: Rng,
    start: Instant,
    now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: std::collections::HashMap<u64, In>,
    next_id: u64,
}

impl<In> Sim<In> {
    /// A world with the seed `seed`, its clock at an arbitrary start.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Sim {
            rng: Rng::new(seed),
            start,
            now: start,
            queue: BinaryHeap::new(),
            pending: std::collections::HashMap::new(),
            next_id: 0,
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the simulation started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Schedules `input` to arrive at `at` (never before now).
    pub fn deliver_at(&mut self, at: Instant, input: In) {
        let at = at.max(self.now);
        self.pending.insert(self.next_id, input);
        self.queue.push(Reverse((at, self.next_id)));
        self.next_id += 1;
    }

    /// Schedules `input` to arrive `after` from now.
    pub fn deliver_after(&mut self, after: Duration, input: In) {
        self.deliver_at(self.now + after, input);
    }

    /// Sends `input` over `link`: scheduled zero, one or two times.
    pub fn deliver_over(&mut self, link: &LinkConfig, input: In)
    where
        In: Clone,
    {
        for at in link.arrivals(self.now, &mut self.rng) {
            self.deliver_at(at, input.clone());
        }
    }

    /// Inputs still in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self) -> Option<In> {
        let Reverse((at, id)) = *self.queue.peek()?;
        if at > self.now {
            return None;
        }
        self.queue.pop();
        self.pending.remove(&id)
    }

    /// Runs `engine` until it is done or a limit is reached. `network` is
    /// called with every transmit and decides what comes back (through
    /// `deliver_*`). Time jumps straight to the next input or timeout.
    pub fn run<E>(
        &mut self,
        engine: &mut E,
        limits: Limits,
        mut network: impl FnMut(&mut Sim<In>, E::Transmit),
    ) -> Outcome<E::Event>
    where
        E: Engine<Input = In>,
    {
        let run_start = self.now;
        let mut events = Vec::new();
        let mut steps = 0u64;
        let done = loop {
            steps += 1;
            if steps > limits.steps {
                break false;
            }
            while let Some(t) = engine.poll_transmit(self.now) {
                network(self, t);
            }
            while let Some(e) = engine.poll_event() {
                events.push(e);
            }
            if engine.is_done() {
                break true;
            }
            if let Some(input) = self.pop_due() {
                engine.handle_input(input, self.now);
                continue;
            }
            let timeout = engine.poll_timeout();
            let next = match (timeout, self.next_arrival()) {
                (Some(t), Some(a)) => t.min(a),
                (Some(t), None) => t,
                (None, Some(a)) => a,
                (None, None) => break false,
            };
            let deadline = run_start + limits.virtual_time;
            if next > deadline {
                self.now = self.now.max(deadline);
                break false;
            }
            if next > self.now {
                self.now = next;
            }
            if timeout.is_some_and(|t| t <= self.now) {
                engine.handle_timeout(self.now);
            }
        };
        while let Some(e) = engine.poll_event() {
            events.push(e);
        }
        Outcome {
            events,
            elapsed: self.now - run_start,
            done,
            steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy engine: sends `n` numbered datagrams one `gap` apart, expects
    /// each back within `timeout`, reports each as answered or lost.
    struct Toy {
        n: u64,
        next: u64,
        gap: Duration,
        timeout: Duration,
        next_send: Instant,
        waiting: Vec<(u64, Instant)>,
        events: std::collections::VecDeque<(u64, bool)>,
        decided: u64,
    }

    impl Engine for Toy {
        type Input = u64;
        type Transmit = u64;
        type Event = (u64, bool);
        fn handle_input(&mut self, seq: u64, _now: Instant) {
            if let Some(i) = self.waiting.iter().position(|w| w.0 == seq) {
                self.waiting.remove(i);
                self.events.push_back((seq, true));
                self.decided += 1;
            }
        }
        fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
            if self.next < self.n && now >= self.next_send {
                let s = self.next;
                self.next += 1;
                self.next_send = now + self.gap;
                self.waiting.push((s, now + self.timeout));
                return Some(s);
            }
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            let send = (self.next < self.n).then_some(self.next_send);
            let expire = self.waiting.iter().map(|w| w.1).min();
            [send, expire].into_iter().flatten().min()
        }
        fn handle_timeout(&mut self, now: Instant) {
            let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.iter().partition(|w| w.1 <= now);
            self.waiting = kept;
            for (s, _) in gone {
                self.events.push_back((s, false));
                self.decided += 1;
            }
        }
        fn poll_event(&mut self) -> Option<(u64, bool)> {
            self.events.pop_front()
        }
        fn is_done(&self) -> bool {
            self.decided == self.n
        }
    }

    fn toy(start: Instant) -> Toy {
        Toy {
            n: 1000,
            next: 0,
            gap: Duration::from_millis(1),
            timeout: Duration::from_millis(100),
            next_send: start,
            waiting: Vec::new(),
            events: Default::default(),
            decided: 0,
        }
    }

    #[test]
    fn loss_and_time_are_simulated() {
        let mut sim = Sim::new(7);
        let mut engine = toy(sim.now());
        let path = LinkConfig::lossy(Duration::from_millis(10), 0.2);
        let out = sim.run(&mut engine, Limits::default(), |sim, seq| {
            sim.deliver_over(&path, seq)
        });
        assert!(out.done);
        let lost = out.events.iter().filter(|e| !e.1).count();
        // 20% of 1000: binomial sd is about 12.6; 5 sd either way.
        assert!((137..=263).contains(&lost), "lost {lost}");
        // 1000 sends 1 ms apart, then the last timeout at most.
        assert!(out.elapsed >= Duration::from_millis(999));
        assert!(
            out.elapsed <= Duration::from_millis(1100),
            "{:?}",
            out.elapsed
        );
    }

    #[test]
    fn same_seed_same_run_and_jitter_reorders() {
        let path = LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            duplicate: 0.1,
            ..LinkConfig::default()
        };
        let run = |seed| {
            let mut sim = Sim::new(seed);
            let mut engine = toy(sim.now());
            sim.run(&mut engine, Limits::default(), |sim, seq| {
                sim.deliver_over(&path, seq)
            })
            .events
        };
        let a = run(3);
        assert_eq!(a, run(3));
        let order: Vec<u64> = a.iter().map(|e| e.0).collect();
        assert!(order.windows(2).any(|w| w[0] > w[1]), "no reordering");
        assert!(a.iter().all(|e| e.1), "duplicates or jitter read as loss");
    }

    #[test]
    fn a_stuck_engine_stops_at_the_limit() {
        let mut sim: Sim<u64> = Sim::new(1);
        let mut engine = toy(sim.now());
        engine.timeout = Duration::from_secs(10_000);
        let limits = Limits {
            virtual_time: Duration::from_secs(60),
            steps: 100_000,
        };
        let out = sim.run(&mut engine, limits, |_, _| {});
        assert!(!out.done);
        assert!(out.elapsed <= Duration::from_secs(61));
    }
}
