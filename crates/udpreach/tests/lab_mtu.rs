//! `udpreach mtu` where the answer is known: over loopback (the largest
//! datagram of each family, every run, in both modes), to the host's own
//! address (which the kernel sends over loopback too), and against an echo
//! server that drops datagrams above a size (the same answer every run:
//! our own pace must never turn into "loss" at the far end).

mod lab;
mod util;

use lab::{require_root, Host, Lab};
use serde_json::Value;
use util::*;

/// The emulated-link test times its rounds, and the loopback searches send
/// 64 KiB datagrams as fast as they are answered: one at a time, so none is
/// another's load on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn mtu_json(host: &Host, args: &[&str]) -> (CommandOutput, Value) {
    let mut argv = vec!["mtu", "--json"];
    argv.extend_from_slice(args);
    let o = udpreach(host, &argv);
    let doc = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from {argv:?} ({e}): {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    (o, doc)
}

/// Each direction's (or the round trip's) MTU, evidence and fragment verdict.
fn answers(doc: &Value) -> Vec<(u64, String, bool)> {
    ["upstream", "downstream", "round_trip"]
        .iter()
        .filter(|k| !doc[**k].is_null())
        .map(|k| {
            let d = &doc[*k];
            (
                d["mtu"].as_u64().unwrap_or(0),
                d["evidence"]["kind"].as_str().unwrap_or("").to_string(),
                d["fragments"]["passes"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn mtu_over_loopback_is_the_largest_datagram_every_run() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::pair();
    let host = lab.server();
    let _server = start_server(host, &[]);
    // IPv4: 65535 (the 16-bit total length, below lo's 65536); IPv6: lo's 65536.
    for (target, mtu) in [("127.0.0.1:4000", 65535), ("[::1]:4000", 65536)] {
        for mode in [&[][..], &["--echo"][..]] {
            for run in 0..5 {
                let mut args = mode.to_vec();
                args.push(target);
                let (o, doc) = mtu_json(host, &args);
                o.assert_code(0);
                for (m, evidence, fragments) in answers(&doc) {
                    assert_eq!(m, mtu, "run {run} {args:?}: {doc}");
                    assert_eq!(evidence, "interface", "run {run} {args:?}: {doc}");
                    assert!(fragments, "run {run} {args:?}: {doc}");
                }
            }
        }
    }
}

#[test]
fn mtu_to_the_hosts_own_address_follows_the_route_over_loopback() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::pair();
    let host = lab.server();
    let _server = start_server(host, &[]);
    // The lab link's MTU is 1500; traffic to our own addresses takes lo.
    for (target, mtu) in [
        (format!("{}:4000", host.ip4()), 65535),
        (format!("[{}]:4000", host.ip6()), 65536),
    ] {
        let (o, doc) = mtu_json(host, &["--echo", &target]);
        o.assert_code(0);
        assert_eq!(doc["round_trip"]["mtu"], mtu, "{doc}");
        // IP_MTU of a route over lo reads 65535 (IPv4's most) or 65536.
        let o = udpreach(host, &["mtu", "--echo", "--no-fragments", &target]);
        assert!(
            stdout(&o).contains("local interface MTU 6553"),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn mtu_search_gives_the_same_answer_every_run() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    let lab = Lab::pair();
    let host = lab.server();
    // Datagrams above 40000 bytes vanish at the far end: the search has to
    // work through the largest sizes, several of them per round.
    let _server = start_server(host, &["--max-datagram", "40000"]);
    for (target, mtu) in [("127.0.0.1:4000", 40028), ("[::1]:4000", 40048)] {
        for run in 0..3 {
            let (_, doc) = mtu_json(host, &["--echo", "--no-fragments", target]);
            let rt = &doc["round_trip"];
            assert_eq!(rt["mtu"], mtu, "run {run}: {doc}");
            assert_eq!(rt["evidence"]["kind"], "silence", "run {run}: {doc}");
        }
    }
}

/// Through the lab's link emulator at 50 ms RTT with +-5 ms jitter (which
/// reorders): a PMTU black hole at 1400 each way (unfragmented IPv4
/// packets above 1400 bytes vanish before either host sees them, no ICMP;
/// fragments pass). The answer is exact, and a round costs a small multiple
/// of the round trip: waits come from the measured RTT, not from the fixed
/// 4 x RTT + 50 ms per round this replaced.
#[test]
fn mtu_at_50ms_rtt_with_jitter_is_exact_and_rounds_scale_with_rtt() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    let l = lab::Link::emulate(
        std::time::Duration::from_millis(25),
        std::time::Duration::from_millis(5),
        0.0,
        0,
    );
    let lab = Lab::emulated(l, l);
    for host in [lab.client(), lab.server()] {
        // Before defragmentation (priority -400): whole packets only.
        host.nft(
            "table ip mtu_black_hole {\n\
             \tchain prerouting {\n\
             \t\ttype filter hook prerouting priority -500; policy accept;\n\
             \t\tip length > 1400 ip frag-off & 0x3fff == 0 meta l4proto udp drop\n\
             \t}\n\
             }\n",
        );
    }
    let _server = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let (o, doc) = mtu_json(lab.client(), &[&target]);
    o.assert_code(0);
    let up = &doc["upstream"];
    assert_eq!(up["mtu"], 1400, "{doc}");
    assert_eq!(up["evidence"]["kind"], "silence", "{doc}");
    assert_eq!(doc["downstream"]["mtu"], 1400, "{doc}");
    assert_eq!(doc["downstream"]["evidence"]["kind"], "silence", "{doc}");
    // A round upstream is its sends and one retransmission timeout (about
    // 1.5 round trips here); downstream also a control round trip and the
    // server's wait for ICMP errors (one timeout). The fixed waits this
    // replaced cost 250 ms (5 round trips) after the last send of every
    // silent round upstream, and 6.4 round trips per round downstream.
    for (dir, round_trips) in [("upstream", 3.0), ("downstream", 5.0)] {
        let d = &doc[dir];
        let rounds = d["rounds"].as_f64().unwrap();
        let per_round = d["elapsed_ms"].as_f64().unwrap() / rounds;
        assert!(
            per_round <= round_trips * 50.0,
            "{dir}: {per_round:.0} ms per round over {rounds} rounds: {doc}"
        );
        assert_eq!(d["fragments"]["passes"], true, "{dir}: {doc}");
    }
}
