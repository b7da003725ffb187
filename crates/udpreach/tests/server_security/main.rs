//! What a server does when clients, keys and the network misbehave: one test
//! binary for the server's security and fault tolerance (run one part with
//! `cargo test -p udpreach --test server_security lab_attack_udp::`).
//!
//! - `security`: authenticated mode and server policy on loopback.
//! - `fault_tolerance`: hostile control connections, kills and floods on loopback.
//! - `lab_security`: authenticated mode and a killed client across the lab.
//! - `lab_attack_control`: attacks on the TCP control side, in the lab.
//! - `lab_attack_udp`: attacks on every UDP answer, in the lab.
//!
//! Loopback tests here use ports 23000-32499 (server control ports
//! 24101-24209), apart from every other test of this binary.

#[path = "../lab/mod.rs"]
mod lab;
#[path = "../loopback/mod.rs"]
mod loopback;
#[path = "../util/mod.rs"]
mod util;

/// Tests that flood a server, or count its replies or memory against a
/// bound, take this in turn: on a small machine a flood in one thread would
/// be the load that pushes another's count over its bound.
static ONE_HEAVY_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_heavy_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_HEAVY_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

mod fault_tolerance;
mod lab_attack_control;
mod lab_attack_udp;
mod lab_security;
mod security;
