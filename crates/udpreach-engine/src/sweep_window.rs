//! How a sweep is sized for its path and its server, from the measured RTT
//! and the server's announced budgets rather than constants tuned on a
//! 0.1 ms link:
//!
//! - **Probes in flight**: the probe rate times how long a probe holds its
//!   slot, never below the figure tuned on a 0.1 ms link and never above
//!   what the client's receive buffer can hold if every reply in flight
//!   arrived at once (the protection against the receive-buffer overflow
//!   that once made reachable ports look `return_blocked`). A probe that
//!   draws no reply (a blocked port, a loss) holds its slot until its
//!   retransmission timer, not for one RTT, so the product is taken over
//!   the first timeout (RFC 6298 from the measured RTT: 3 x RTT, at least
//!   the sweep's floor of 30 ms). With the RTT instead, at 0.1 ms the
//!   product was tiny, the floor of 1,024 applied, and with 10 % of the
//!   ports blocked the silent probes held most of the slots while thousands
//!   of ready probes waited (lossy veth, full range: 1,024 of 1,024 taken
//!   for the whole sweep). At 100,000 probes/s: 3,000 at 0.1 ms, 15,000 at
//!   50 ms; at 200 ms the 16 MiB buffer (32 MiB as the kernel counts it)
//!   caps it at 16,384.
//! - **Ports held open on the server**: all the server announces. A port is
//!   held from its open request to its verdict: about two RTTs when it
//!   answers, two rounds of retransmissions (about 16 RTTs) when it is
//!   blocked, so at long RTTs the window, not the probe rate, sets the pace.
//! - **Open requests in flight**: enough to keep the whole window asked
//!   for within one control round trip (before, four batches of 1,024:
//!   at 200 ms about 10,000 ports/s, whatever the window), plus room for
//!   the close and arrival requests that share the channel.

use crate::sweep::SweepConfig;
use std::time::Duration;

/// The floor: what a 0.1 ms veth link was tuned with.
pub const MIN_IN_FLIGHT: usize = 1024;
/// Receive-buffer bytes one small reply may cost in the kernel's
/// accounting: a 64-byte reply measured 832 bytes of `skb->truesize`
/// (veth, and through the lab's link emulator: 5,000 replies queued, 4.16
/// MB in `/proc/net/udp`'s rx_queue); about 2.5 times that for headroom,
/// against the value `SO_RCVBUF` reports.
pub const RCVBUF_BYTES_PER_REPLY: usize = 2048;
/// Probe rate assumed when the server announces no cap and the user set none.
pub const ASSUMED_RATE: u32 = 100_000;
/// Most ports in one open request (arrival and close requests carry up to
/// four times as many): small enough that the first probes start early.
pub const MAX_CONTROL_BATCH: usize = 1024;
/// Fewest ports in one open request: below it, a window that small needs
/// no pipelining.
pub const MIN_CONTROL_BATCH: usize = 64;
/// Control requests in flight beyond the opens, for closes and arrival
/// queries, so they never wait for the window's opens (nor these for them).
pub const CONTROL_SLACK: usize = 4;
/// The window is asked for in at least this many open requests, so the
/// server binds the first ones while later ones are still on the way.
const OPENS_PER_WINDOW: usize = 8;

/// Probes in flight for a probe that holds its slot `hold` when no reply
/// comes (its first retransmission timeout), a probe rate `rate` (`None`:
/// [`ASSUMED_RATE`]) and a receive buffer the kernel reports as `rcvbuf`
/// bytes.
pub fn max_in_flight(hold: Duration, rate: Option<u32>, rcvbuf: usize) -> usize {
    let rate = f64::from(rate.unwrap_or(ASSUMED_RATE).max(1));
    let product = (rate * hold.as_secs_f64()).ceil() as usize;
    let buffer_cap = (rcvbuf / RCVBUF_BYTES_PER_REPLY).max(MIN_IN_FLIGHT);
    product.clamp(MIN_IN_FLIGHT, buffer_cap)
}

/// The first retransmission timeout of a sweep configured as `cfg` on a
/// path with round trip `rtt`: what a silent probe holds its slot for.
pub fn first_timeout(cfg: &SweepConfig, rtt: Duration) -> Duration {
    if let Some(fixed) = cfg.fixed_timeout {
        return fixed;
    }
    let mut rto = cfg.rto_estimator();
    rto.on_sample(rtt);
    rto.rto()
}

/// What one sweep learnt about its path and its server before it starts.
#[derive(Clone, Copy, Debug)]
pub struct PathBudget {
    /// The measured round trip (the control handshake's).
    pub rtt: Duration,
    /// The probe rate: the user's, capped by the server's announced one.
    pub rate: Option<u32>,
    /// The probe socket's receive buffer as the kernel reports it.
    pub rcvbuf: usize,
    /// Ports the server lets this session hold open at once.
    pub max_open: usize,
}

/// `cfg` with its window, probes in flight and control pipeline sized for
/// `budget` (see the module docs); the rest of `cfg` as given.
pub fn sized(cfg: SweepConfig, budget: PathBudget) -> SweepConfig {
    let max_open = budget.max_open.max(1);
    let control_batch = (max_open / OPENS_PER_WINDOW).clamp(MIN_CONTROL_BATCH, MAX_CONTROL_BATCH);
    SweepConfig {
        max_open,
        rate: budget.rate,
        max_in_flight: max_in_flight(first_timeout(&cfg, budget.rtt), budget.rate, budget.rcvbuf),
        control_batch,
        control_pipeline: max_open.div_ceil(control_batch) + CONTROL_SLACK,
        ..cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    /// What a 16 MiB SO_RCVBUF request reports (the kernel doubles it).
    const RCVBUF: usize = 32 << 20;

    #[test]
    fn slow_probe_rates_keep_the_tuned_floor() {
        assert_eq!(max_in_flight(MS(30), Some(1_000), RCVBUF), 1024);
        assert_eq!(max_in_flight(MS(150), Some(5_000), RCVBUF), 1024);
    }

    #[test]
    fn a_silent_probe_holds_its_slot_for_its_first_timeout() {
        let cfg = SweepConfig::default();
        // 0.1 ms: the timeout's floor (30 ms), not the RTT, sets the product.
        assert_eq!(first_timeout(&cfg, Duration::from_micros(100)), MS(30));
        assert_eq!(max_in_flight(MS(30), Some(100_000), RCVBUF), 3000);
        // 50 ms: RFC 6298's first timeout, 3 x RTT.
        assert_eq!(first_timeout(&cfg, MS(50)), MS(150));
        assert_eq!(max_in_flight(MS(150), Some(50_000), RCVBUF), 7500);
        let fixed = SweepConfig {
            fixed_timeout: Some(MS(400)),
            ..cfg
        };
        assert_eq!(first_timeout(&fixed, MS(50)), MS(400));
    }

    #[test]
    fn the_receive_buffer_caps_it() {
        assert_eq!(
            max_in_flight(MS(600), None, RCVBUF),
            RCVBUF / RCVBUF_BYTES_PER_REPLY
        );
        // A buffer the kernel did not grow (rmem_max, no CAP_NET_ADMIN)
        // still gets the floor it was tuned with.
        assert_eq!(max_in_flight(MS(600), None, 425_984), MIN_IN_FLIGHT);
    }

    #[test]
    fn the_pipeline_asks_for_the_whole_window_in_one_round_trip() {
        let budget = |max_open| PathBudget {
            rtt: MS(200),
            rate: Some(100_000),
            rcvbuf: 32 << 20,
            max_open,
        };
        let c = sized(SweepConfig::default(), budget(16_384));
        assert_eq!((c.control_batch, c.control_pipeline), (1024, 16 + 4));
        assert_eq!(
            c.max_in_flight, 16_384,
            "60,000 (600 ms of timeout at 100,000/s) within the buffer"
        );
        assert_eq!(c.max_open, 16_384);
        let c = sized(SweepConfig::default(), budget(4872));
        assert_eq!((c.control_batch, c.control_pipeline), (609, 8 + 4));
        let c = sized(SweepConfig::default(), budget(100));
        assert_eq!((c.control_batch, c.control_pipeline), (64, 2 + 4));
        // Whatever the window, a request stays within the server's limit.
        let c = sized(SweepConfig::default(), budget(65_535));
        assert!(c.control_batch * 4 <= udpreach_wire::control::MAX_PORTS_PER_REQUEST);
    }
}
