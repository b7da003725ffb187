//! How many sweep probes may be in flight, from the path rather than a
//! constant: the bandwidth-delay product of the probe rate and the measured
//! RTT, never below the figure tuned on a 0.1 ms link and never above what
//! the client's receive buffer can hold if every reply in flight arrived at
//! once (the protection against the receive-buffer overflow that once made
//! reachable ports look `return_blocked`).
//!
//! At 0.1 ms RTT the product is tiny and the floor (1,024) applies, as
//! before; at 50 ms and 100,000 probes/s it is 5,000 probes; at 200 ms,
//! 20,000, capped by an 8 MiB buffer at 4,096.

use std::time::Duration;

/// The floor: what a 0.1 ms veth link was tuned with.
pub const MIN_IN_FLIGHT: usize = 1024;
/// Receive-buffer bytes one small reply may cost in the kernel's
/// accounting (`skb->truesize` of a ~100-byte datagram is 768 to 1,280
/// bytes; twice that for headroom, against the value `SO_RCVBUF` reports).
pub const RCVBUF_BYTES_PER_REPLY: usize = 4096;
/// Probe rate assumed when the server announces no cap and the user set none.
pub const ASSUMED_RATE: u32 = 100_000;

/// Probes in flight for a path with round trip `rtt`, a probe rate `rate`
/// (`None`: [`ASSUMED_RATE`]) and a receive buffer the kernel reports as
/// `rcvbuf` bytes.
pub fn max_in_flight(rtt: Duration, rate: Option<u32>, rcvbuf: usize) -> usize {
    let rate = f64::from(rate.unwrap_or(ASSUMED_RATE).max(1));
    let bdp = (rate * rtt.as_secs_f64()).ceil() as usize;
    let buffer_cap = (rcvbuf / RCVBUF_BYTES_PER_REPLY).max(MIN_IN_FLIGHT);
    bdp.clamp(MIN_IN_FLIGHT, buffer_cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    /// What an 8 MiB SO_RCVBUF request reports (the kernel doubles it).
    const RCVBUF: usize = 16 << 20;

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
}
