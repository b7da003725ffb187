//! udpreach's sans-I/O engine: state machines for ping, port sweeps and server
//! sessions. Nothing here opens a socket or reads a clock: callers pass `now`
//! and deliver events, so every behaviour can be tested in memory with
//! simulated loss and time (the approach of quinn-proto).

#![warn(missing_docs)]

pub mod admission;
pub mod client_handshake;
pub mod engine;
pub mod handshake;
pub mod marks;
pub mod mtu;
pub mod nat;
pub mod ping;
pub mod rate;
pub mod replay;
pub mod reply_budget;
pub mod responder;
pub mod rto;
pub mod server;
pub mod serverless;
pub mod stamp;
pub mod stats;
pub mod sweep;
pub mod sweep_window;
pub mod trace;
pub mod verdict;

/// Seeded RNG, lossy links and a virtual-time driver for engine tests.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use engine::Engine;
pub use mtu::{MtuResult, MtuSearch, MtuSearchConfig};
pub use ping::{PingConfig, PingEvent, PingSession, PingSummary};
pub use rto::RtoEstimator;
pub use serverless::{ServerlessConfig, ServerlessSweep, ServerlessVerdict};
pub use stats::RttStats;
pub use sweep::{Sweep, SweepConfig, SweepPlan};
pub use verdict::Verdict;
