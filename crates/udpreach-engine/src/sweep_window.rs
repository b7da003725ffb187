//! How a sweep is sized for its path and its server, from the measured RTT
//! and the server's announced budgets rather than constants tuned on a
//! 0.1 ms link:
//!
//! - **Probes in flight**: the bandwidth-delay product of the probe rate and
//!   the RTT, never below the figure tuned on a 0.1 ms link and never above
//!   what the client's receive buffer can hold if every reply in flight
//!   arrived at once (the protection against the receive-buffer overflow
//!   that once made reachable ports look `return_blocked`). At 0.1 ms RTT
//!   the product is tiny and the floor (1,024) applies; at 50 ms and
//!   100,000 probes/s it is 5,000; at 200 ms 20,000, capped by a 16 MiB
//!   buffer (32 MiB as the kernel counts it) at 16,384.
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

/// Probes in flight for a path with round trip `rtt`, a probe rate `rate`
/// (`None`: [`ASSUMED_RATE`]) and a receive buffer the kernel reports as
/// `rcvbuf` bytes.
pub fn max_in_flight(rtt: Duration, rate: Option<u32>, rcvbuf: usize) -> usize {
    let rate = f64::from(rate.unwrap_or(ASSUMED_RATE).max(1));
    let bdp = (rate * rtt.as_secs_f64()).ceil() as usize;
    let buffer_cap = (rcvbuf / RCVBUF_BYTES_PER_REPLY).max(MIN_IN_FLIGHT);
    bdp.clamp(MIN_IN_FLIGHT, buffer_cap)
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
        max_in_flight: max_in_flight(budget.rtt, budget.rate, budget.rcvbuf),
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
    fn short_paths_keep_the_tuned_floor() {
        assert_eq!(
            max_in_flight(Duration::from_micros(100), None, RCVBUF),
            1024
        );
        assert_eq!(max_in_flight(MS(10), Some(1_000), RCVBUF), 1024);
    }

    #[test]
    fn long_paths_get_the_bandwidth_delay_product() {
        assert_eq!(max_in_flight(MS(30), Some(100_000), RCVBUF), 3000);
        assert_eq!(max_in_flight(MS(50), Some(50_000), RCVBUF), 2500);
    }

    #[test]
    fn the_receive_buffer_caps_it() {
        assert_eq!(
            max_in_flight(MS(200), None, RCVBUF),
            RCVBUF / RCVBUF_BYTES_PER_REPLY
        );
        // A buffer the kernel did not grow (rmem_max, no CAP_NET_ADMIN)
        // still gets the floor it was tuned with.
        assert_eq!(max_in_flight(MS(200), None, 425_984), MIN_IN_FLIGHT);
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
            "the BDP (20,000) within the buffer"
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
