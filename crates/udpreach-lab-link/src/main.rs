//! `udpreach-lab-link`: relays Ethernet frames between two interfaces of
//! the current network namespace with delay, jitter, loss, burst loss and a
//! rate cap per direction, until SIGINT or SIGTERM; then prints its
//! counters as one JSON object on stdout.
//!
//! ```text
//! ip netns exec MIDDLE udpreach-lab-link --a m-c --b m-s \
//!     --a-to-b delay=25ms,jitter=5ms,loss=2% --b-to-a delay=25ms,jitter=5ms,loss=2%
//! ```

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use std::process::ExitCode;
use udpreach_lab_link::{spec, Relay, RelayConfig};

#[derive(Parser)]
#[command(
    about = "Lab link emulator: delay, jitter, loss, burst loss and a rate cap between two interfaces",
    after_help = "SPEC: comma-separated delay=25ms, jitter=5ms, reorder|fifo, loss=2%, \
                  burst=P:R:LOSS_BAD[:LOSS_GOOD], rate=100mbit, limit=1mb.\n\
                  Exit codes: 0 stopped by SIGINT/SIGTERM, 1 relay error, 2 usage."
)]
struct Args {
    /// First interface.
    #[arg(long)]
    a: String,
    /// Second interface.
    #[arg(long)]
    b: String,
    /// What frames from A to B go through.
    #[arg(long, default_value = "", value_parser = spec::parse_direction)]
    a_to_b: udpreach_lab_link::DirectionConfig,
    /// What frames from B to A go through.
    #[arg(long, default_value = "", value_parser = spec::parse_direction)]
    b_to_a: udpreach_lab_link::DirectionConfig,
    /// Seed of the loss and jitter draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Block the stop signals before the relay threads start (they inherit
    // the mask), then wait for one here.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("udpreach-lab-link: cannot block signals: {e}");
        return ExitCode::from(1);
    }
    let cfg = RelayConfig {
        a: args.a,
        b: args.b,
        a_to_b: args.a_to_b,
        b_to_a: args.b_to_a,
        seed: args.seed,
    };
    let relay = match Relay::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("udpreach-lab-link: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("udpreach-lab-link: relaying {} <-> {}", cfg.a, cfg.b);
    let _ = signals.wait();
    match relay.stop() {
        Ok(stats) => {
            println!(
                "{}",
                serde_json::to_string(&stats).expect("stats serialise")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udpreach-lab-link: {e}");
            ExitCode::from(1)
        }
    }
}
