//! How a serverless check probes: retries, timeouts, window, rate.

use std::time::Duration;

#[derive(Clone, Debug)]
/// How a [`super::ServerlessSweep`] probes.
pub struct ServerlessConfig {
    /// Probes to a silent port before it is open|filtered (while no rate
    /// limiting has been seen).
    pub attempts: u32,
    /// Canary-confirmed silences a port needs once rate limiting was seen
    /// (after two unanswered on-time probes).
    pub confirmations: u32,
    /// Retransmission timeout before the first RTT sample.
    pub rto_initial: Duration,
    /// Smallest retransmission timeout.
    pub rto_min: Duration,
    /// Largest retransmission timeout (and silence timeout).
    pub rto_max: Duration,
    /// Fixed per-probe timeout instead of the adaptive one.
    pub fixed_timeout: Option<Duration>,
    /// Probes per second cap; `None` for no cap.
    pub rate: Option<u32>,
    /// Probes in flight at once before any rate limiting is seen.
    pub window: usize,
}

impl Default for ServerlessConfig {
    fn default() -> Self {
        ServerlessConfig {
            attempts: 3,
            confirmations: 1,
            rto_initial: Duration::from_millis(1000),
            rto_min: Duration::from_millis(50),
            rto_max: Duration::from_secs(3),
            fixed_timeout: None,
            rate: None,
            window: 256,
        }
    }
}
