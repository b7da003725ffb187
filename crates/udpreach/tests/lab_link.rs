//! The lab's link emulator (`Lab::emulated`, crate `udpreach-lab-link`):
//! its self-test (delay and loss within the stated accuracy) and ping
//! across it at 50 ms RTT with jitter and reordering.

mod lab;
mod util;

use lab::{require_root, Lab, Link};
use std::time::Duration;
use util::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The tests here measure timing and loss through a user-space relay on a
/// small machine: one at a time, so none is another's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stated accuracy of the emulator's delay (docs/PERFORMANCE.md "Link
/// emulator"): the median RTT through it is within this of the configured
/// RTT (the veths and the echo themselves add tens of microseconds).
const DELAY_TOLERANCE_MS: f64 = 1.0;

#[test]
fn emulator_delay_and_loss_are_within_the_stated_accuracy() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    // 25 ms each way, 10 % loss client to server only.
    let lab = Lab::emulated(
        Link::emulate(ms(25), ms(0), 0.10, 0),
        Link::emulate(ms(25), ms(0), 0.0, 0),
    );
    let _server = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "400",
            "-i",
            "2ms",
            "-q",
            "--json-lines",
            &target,
        ],
    );
    assert!(matches!(code(&o), 0 | 1), "{}", stderr(&o));
    let s = summary(&o);
    let p50 = s["rtt"]["p50_ms"].as_f64().unwrap();
    let min = s["rtt"]["min_ms"].as_f64().unwrap();
    assert!(min >= 50.0, "an RTT below the emulated 50 ms: {s}");
    assert!(
        (p50 - 50.0).abs() <= DELAY_TOLERANCE_MS,
        "median RTT {p50} ms, configured 50 ms: {s}"
    );
    // Loss: the UDP datagrams the emulator dropped are what ping saw lost,
    // all upstream, but for probes lost after the last reply, whose
    // direction no reply tells (`direction_unknown`). (The link also
    // carries, and drops, ARP and the control connection's TCP frames:
    // once 47 dropped, 46 of them probes.)
    let stats = lab.emulator_stats();
    let dropped = stats.a_to_b.dropped_udp;
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(n("lost"), dropped, "{s} {stats:?}");
    assert_eq!(n("upstream_lost") + n("direction_unknown"), dropped, "{s}");
    assert_eq!(n("downstream_lost"), 0, "{s}");
    // Unknown only at the end: 10 % loss, 8 in a row is 1e-8.
    assert!(n("direction_unknown") <= 8, "{s}");
    assert!(stats.a_to_b.dropped_random >= dropped, "{stats:?}");
    // 10 % of 400: binomial sd is 6, allow 5 sd.
    assert!((10..=70).contains(&dropped), "{dropped} of 400 dropped");
    assert_eq!(stats.b_to_a.dropped_random, 0);
    assert_eq!(stats.a_to_b.send_errors + stats.b_to_a.send_errors, 0);
}

#[test]
fn ping_at_50ms_with_jitter_counts_reordering_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    // +-5 ms jitter each way, reordering: probes 1 ms apart overtake each other.
    let l = Link::emulate(ms(25), ms(5), 0.0, 0);
    let lab = Lab::emulated(l, l);
    let _server = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "500",
            "-i",
            "1ms",
            "-q",
            "--json-lines",
            &target,
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let s = summary(&o);
    assert_eq!(s["received"], 500, "a late reply counted as lost: {s}");
    assert_eq!(s["lost"], 0, "{s}");
    let p50 = s["rtt"]["p50_ms"].as_f64().unwrap();
    let (min, max) = (
        s["rtt"]["min_ms"].as_f64().unwrap(),
        s["rtt"]["max_ms"].as_f64().unwrap(),
    );
    assert!(
        (p50 - 50.0).abs() <= 1.5,
        "median RTT {p50} ms, configured 50 ms +- 10 ms: {s}"
    );
    // Never faster than the shortest emulated path. No upper bound on the
    // worst case: on a loaded machine a late wake-up of any process on the
    // path shows up there (the emulator counts its own: `late`).
    assert!(min >= 40.0 && max > min, "{s}");
    let reordered = s["reordered"].as_u64().unwrap();
    let emulated = lab.emulator_stats();
    assert!(
        reordered > 0 && emulated.b_to_a.reordered > 0,
        "reordering not counted: {s} {emulated:?}"
    );
    // Probes that overtook each other on the way up are not loss in
    // either direction (once `downstream_lost: 2` with 500 of 500 received).
    assert_eq!(s["upstream_lost"], 0, "{s}");
    assert_eq!(s["downstream_lost"], 0, "{s}");
}

/// At 2,000 probes/s through 5 ms each way with 2 % loss each way: every
/// probe ping calls lost is a frame the emulator dropped. Our own limits
/// never show up as network loss: the ping socket's receive buffer, which
/// the kernel's transmit timestamps share with the replies, is 4 MiB (the
/// default 208 KiB overflowed whenever the process stalled for a few tens
/// of milliseconds: `bench/ping_stall.sh`; the likely cause of 131 of
/// 20,000 lost in a loaded run that the emulator had not dropped). At
/// 10,000/s on this loaded machine a few dozen replies the emulator
/// delivered were still not counted in some runs (open: docs/PERFORMANCE.md
/// "Ping under the emulator").
#[test]
fn ping_at_2k_pps_loses_only_what_the_emulator_dropped() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    let l = Link::emulate(ms(5), ms(0), 0.02, 0);
    let lab = Lab::emulated(l, l);
    let _server = start_server(lab.server(), &["--reply-budget", "100000"]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "4000",
            "-i",
            "500us",
            "-q",
            "--json-lines",
            &target,
        ],
    );
    assert!(matches!(code(&o), 0 | 1), "{}", stderr(&o));
    let s = summary(&o);
    let stats = lab.emulator_stats();
    // The emulator also relays (and may drop) ARP and TCP frames: only its
    // dropped UDP datagrams are probes or replies.
    let (up, down) = (stats.a_to_b.dropped_udp, stats.b_to_a.dropped_udp);
    let lost = s["lost"].as_u64().unwrap();
    assert_eq!(s["withheld"], 0, "{s}");
    assert!(
        lost == up + down,
        "ping lost {lost}, the emulator dropped {up} up and {down} down: {s} {stats:?}"
    );
    let split =
        ["upstream_lost", "downstream_lost", "direction_unknown"].map(|k| s[k].as_u64().unwrap());
    assert_eq!(split.iter().sum::<u64>(), lost, "{s}");
    assert!(split[0] <= up && split[1] <= down, "{s} {stats:?}");
}

/// A deterministic pick of ports for the blocked sets (xorshift): `percent`
/// of `ports`, half blocked inbound, half on the return path.
fn pick(ports: &[u16], percent: u64, seed: u64) -> (Vec<u16>, Vec<u16>) {
    let mut x = seed;
    let (mut inbound, mut ret) = (vec![], vec![]);
    for &p in ports {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 100 < percent {
            if x.is_multiple_of(2) {
                inbound.push(p)
            } else {
                ret.push(p)
            }
        }
    }
    (inbound, ret)
}

#[test]
fn sweep_at_50ms_rtt_with_jitter_reordering_loss_and_blocked_ports_is_exact() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    // 50 ms RTT, +-5 ms jitter each way (reordering), 2 % loss each way.
    let l = Link::emulate(ms(25), ms(5), 0.02, 0);
    let lab = Lab::emulated(l, l);
    let _server = start_server(lab.server(), &[]);
    let ports: Vec<u16> = (20000..23000).collect();
    let (inbound, ret) = pick(&ports, 10, 0x5eed);
    lab.server().drop_udp_dport_in(&inbound);
    lab.client().drop_udp_sport_in(&ret);
    let o = udpreach(
        lab.client(),
        &["ports", "--json", "198.18.0.2", "20000-22999"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\nstderr: {}", stdout(&o), stderr(&o)));
    assert_eq!(code(&o), 1, "some ports blocked: exit 1: {}", stderr(&o));
    let mut wrong = vec![];
    for p in doc["ports"].as_array().unwrap() {
        let port = p["port"].as_u64().unwrap() as u16;
        let want = if inbound.contains(&port) {
            "inbound_blocked"
        } else if ret.contains(&port) {
            "return_blocked"
        } else {
            "reachable"
        };
        if p["verdict"] != want {
            wrong.push((port, p["verdict"].clone(), want));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:?}");
    assert_eq!(doc["counts"]["inbound_blocked"], inbound.len());
    assert_eq!(doc["counts"]["return_blocked"], ret.len());
    assert_eq!(doc["total"], ports.len());
    eprintln!(
        "3000 ports at 50 ms RTT: {} ms, emulator {:?}",
        doc["elapsed_ms"],
        lab.emulator_stats()
    );
}
