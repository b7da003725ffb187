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
