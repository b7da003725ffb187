//! Time to a full idle-timeout result, parallel search against a serial
//! one-gap-at-a-time search, in virtual time against simulated NATs
//! (Linux's default conntrack timers and the lab's short ones).
//!
//! `cargo run -p udpreach-engine --features testkit --example nat_projection`

use std::time::Duration;
use udpreach_engine::nat::simulated::SimNat;
use udpreach_engine::nat::{FlowKind, IdleSearch, IdleSearchConfig};
use udpreach_engine::testkit::LinkConfig;

fn main() {
    println!("timers (one exchange / stream) | loss | kind | parallel: time, rounds, flows | serial: time, gaps");
    for (one, stream) in [(5, 12), (30, 120), (30, 180)] {
        for loss in [0.0, 0.05] {
            let nat = SimNat {
                one_exchange: Duration::from_secs(one),
                active_flow: Duration::from_secs(stream),
                link: LinkConfig::lossy(Duration::from_millis(20), loss),
                copies: 2,
            };
            for kind in [FlowKind::OneExchange, FlowKind::ActiveFlow] {
                let max_idle = Duration::from_secs(300);
                let mut p = IdleSearch::new(IdleSearchConfig::new(kind, max_idle));
                let pt = nat.run(&mut p, 1).elapsed;
                let pr = p.result().expect("done").clone();
                let mut cfg = IdleSearchConfig::new(kind, max_idle);
                cfg.serial = true;
                cfg.flows_per_gap = 1;
                let mut s = IdleSearch::new(cfg);
                let st = nat.run(&mut s, 1).elapsed;
                let sr = s.result().expect("done").clone();
                println!(
                    "{one:>3} s / {stream:>3} s | {:>2}% | {kind:?} | {:>6.1} s, {} rounds, {} flows, {:?}..{:?} | {:>6.1} s, {} gaps, {:?}..{:?}",
                    (loss * 100.0) as u32,
                    pt.as_secs_f64(),
                    pr.rounds,
                    pr.flows,
                    pr.survived_s,
                    pr.expired_s,
                    st.as_secs_f64(),
                    sr.rounds,
                    sr.survived_s,
                    sr.expired_s,
                );
            }
        }
    }
}
