//! Issue 5 in the netns lab: ICMP-aware verdicts (ping, ports), path MTU and
//! fragments (`udpreach mtu`), and serverless port checks (`ports --no-server`).
//!
//! The routed lab puts a router between client and server: 198.18.1.254 /
//! fd00:1::fe on the client side, 198.18.2.254 / fd00:2::fe on the server side.

mod lab;
mod schema;
mod util;

use lab::{require_root, Host, Lab, Proc};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use util::*;

const SERVER4: &str = "198.18.2.2";
const SERVER6: &str = "fd00:2::2";
const ROUTER_CLIENT_SIDE4: &str = "198.18.1.254";
const ROUTER_CLIENT_SIDE6: &str = "fd00:1::fe";
const ROUTER_SERVER_SIDE4: &str = "198.18.2.254";
const ROUTER_SERVER_SIDE6: &str = "fd00:2::fe";

fn json_doc(host: &Host, args: &[&str]) -> (CommandOutput, Value) {
    let o = udpreach(host, args);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from {args:?} ({e}): {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    // Every document these lab runs print matches its published schema.
    let name = match args.first() {
        Some(&"mtu") => "mtu.json",
        Some(&"ports") if args.contains(&"--no-server") => "ports-no-server.json",
        Some(&"ports") => "ports.json",
        other => panic!("no schema for {other:?}"),
    };
    schema::assert_valid(name, &doc);
    (o, doc)
}

/// port -> (verdict, icmp.from, icmp.reason)
fn port_map(doc: &Value) -> HashMap<u16, (String, Option<String>, Option<String>)> {
    doc["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("no ports array: {doc}"))
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().map(str::to_string);
            (
                p["port"].as_u64().unwrap() as u16,
                (
                    p["verdict"].as_str().unwrap().to_string(),
                    s(&p["icmp"]["from"]),
                    s(&p["icmp"]["reason"]),
                ),
            )
        })
        .collect()
}

#[test]
fn ping_prints_icmp_errors_with_their_sender() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    // Nothing listens on 9: the server's port unreachable. Port 7 rejected by the router.
    lab.router().reject_udp_dport_forward(7, true);
    for (server, router) in [
        (SERVER4, ROUTER_CLIENT_SIDE4),
        (SERVER6, ROUTER_CLIENT_SIDE6),
    ] {
        let t9 = if server.contains(':') {
            format!("[{server}]:9")
        } else {
            format!("{server}:9")
        };
        let o = udpreach(
            lab.client(),
            &["ping", "-c", "3", "-i", "0.1", "--json-lines", &t9],
        );
        // No reply: exit 1.
        o.assert_code(1);
        schema::assert_lines_valid("ping-lines.json", &stdout(&o));
        let lines = json_lines(&o);
        let errors: Vec<&Value> = lines.iter().filter(|l| l["type"] == "icmp_error").collect();
        assert_eq!(errors.len(), 3, "{}", stdout(&o));
        assert!(errors
            .iter()
            .all(|e| e["from"] == server && e["reason"] == "port_unreachable"));
        let s = summary(&o);
        assert_eq!(s["errors"], 3);
        assert_eq!(s["icmp_errors"][0]["from"], server);
        assert_eq!(s["icmp_errors"][0]["count"], 3);
        assert!(
            !lines.iter().any(|l| l["type"] == "timeout"),
            "an ICMP error is not a timeout"
        );

        let t7 = t9.replace(":9", ":7");
        let o = udpreach(lab.client(), &["ping", "-c", "2", "-i", "0.1", &t7]);
        let out = stdout(&o);
        assert!(
            out.contains(&format!("From {router}: Administratively Prohibited")),
            "{out}"
        );
        assert!(out.contains("+2 errors"), "{out}");
    }
}

#[test]
fn ports_rejected_by_the_router_names_it() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    lab.router().reject_udp_dport_forward(5001, true);
    for (server, router) in [
        (SERVER4.to_string(), ROUTER_CLIENT_SIDE4),
        (format!("[{SERVER6}]"), ROUTER_CLIENT_SIDE6),
    ] {
        let (o, doc) = json_doc(lab.client(), &["ports", "--json", &server, "5000-5002"]);
        o.assert_code(1);
        let v = port_map(&doc);
        assert_eq!(v[&5000].0, "reachable");
        assert_eq!(v[&5002].0, "reachable");
        assert_eq!(
            v[&5001],
            (
                "rejected".to_string(),
                Some(router.to_string()),
                Some("admin_prohibited".to_string())
            ),
            "{doc}"
        );
        assert_eq!(doc["counts"]["rejected"], 1);
        // Decided by the error: no second round of probes.
        let probes = doc["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == 5001)
            .unwrap()["probes"]
            .as_u64()
            .unwrap();
        assert!(probes <= 2, "{probes} probes");
    }
    let o = udpreach(lab.client(), &["ports", SERVER4, "5000-5002"]);
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "rejected               1  5001  (Administratively Prohibited from {ROUTER_CLIENT_SIDE4})"
        )),
        "{out}"
    );
}

/// Runs `udpreach mtu --json` against the routed lab's server, both families.
fn mtu_both(lab: &Lab, extra: &[&str]) -> Vec<(CommandOutput, Value)> {
    [SERVER4.to_string(), format!("[{SERVER6}]")]
        .iter()
        .map(|t| {
            let mut args = vec!["mtu", "--json", t.as_str()];
            args.extend_from_slice(extra);
            json_doc(lab.client(), &args)
        })
        .collect()
}

fn is_v6(doc: &Value) -> bool {
    doc["family"] == "ipv6"
}

fn payload_for(mtu: u64, doc: &Value) -> u64 {
    mtu - if is_v6(doc) { 48 } else { 28 }
}

#[test]
fn mtu_hop_at_1400_with_the_routers_icmp() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    // Upstream: the router's link to the server is narrow, so the router
    // answers the client's big DF probes with frag-needed / packet-too-big.
    lab.set_link_mtu("r-s", 1400);
    for (o, doc) in mtu_both(&lab, &[]) {
        o.assert_code(0);
        let up = &doc["upstream"];
        assert_eq!(up["mtu"], 1400, "{doc}");
        assert_eq!(up["payload"], payload_for(1400, &doc));
        assert_eq!(up["evidence"]["kind"], "icmp", "{doc}");
        let router = if is_v6(&doc) {
            ROUTER_CLIENT_SIDE6
        } else {
            ROUTER_CLIENT_SIDE4
        };
        assert_eq!(up["evidence"]["from"], router);
        assert_eq!(up["evidence"]["mtu"], 1400);
        // Downstream the server's own interface is the narrow one.
        assert_eq!(doc["downstream"]["mtu"], 1400);
        assert_eq!(doc["downstream"]["evidence"]["kind"], "interface");
        assert_eq!(up["fragments"]["passes"], true, "{doc}");
        assert_eq!(doc["downstream"]["fragments"]["passes"], true, "{doc}");
    }
    // Downstream through the router: the narrow link is on the client side.
    lab.set_link_mtu("r-s", 1500);
    lab.set_link_mtu("r-c", 1400);
    for (o, doc) in mtu_both(&lab, &[]) {
        o.assert_code(0);
        let down = &doc["downstream"];
        assert_eq!(down["mtu"], 1400, "{doc}");
        assert_eq!(down["evidence"]["kind"], "icmp", "{doc}");
        let router = if is_v6(&doc) {
            ROUTER_SERVER_SIDE6
        } else {
            ROUTER_SERVER_SIDE4
        };
        assert_eq!(down["evidence"]["from"], router, "{doc}");
        assert_eq!(doc["upstream"]["evidence"]["kind"], "interface");
    }
}

#[test]
fn mtu_black_hole_found_by_search() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    lab.router().drop_icmp_forward_too_big();
    lab.set_link_mtu("r-s", 1400);
    for (o, doc) in mtu_both(&lab, &[]) {
        o.assert_code(0);
        let up = &doc["upstream"];
        assert_eq!(up["mtu"], 1400, "{doc}");
        assert_eq!(up["evidence"]["kind"], "silence", "{doc}");
        assert!(up["rounds"].as_u64().unwrap() <= 8, "{doc}");
        // Even so, fragments fit: the client fragments at the MTU it found.
        assert_eq!(up["fragments"]["passes"], true, "{doc}");
    }
    lab.set_link_mtu("r-s", 1500);
    lab.set_link_mtu("r-c", 1400);
    for (o, doc) in mtu_both(&lab, &[]) {
        o.assert_code(0);
        assert_eq!(doc["downstream"]["mtu"], 1400, "{doc}");
        assert_eq!(doc["downstream"]["evidence"]["kind"], "silence", "{doc}");
    }
}

#[test]
fn mtu_reports_dropped_fragments() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    lab.set_link_mtu("r-s", 1400);
    lab.router().drop_fragments_forward();
    for (o, doc) in mtu_both(&lab, &[]) {
        // Fragments dropped: exit 1.
        o.assert_code(1);
        assert_eq!(doc["upstream"]["mtu"], 1400, "{doc}");
        for dir in ["upstream", "downstream"] {
            let f = &doc[dir]["fragments"];
            assert_eq!(f["dropped"], true, "{dir}: {doc}");
            assert!(f["sizes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["arrived"] == 0 && s["sent"].as_u64().unwrap() > 0));
        }
    }
    let o = udpreach(lab.client(), &["mtu", SERVER4]);
    assert!(
        stdout(&o).contains("DROPPED: fragmented datagrams"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn mtu_round_trip_through_a_plain_echo_server() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _echo = socat_echo(lab.server(), 7);
    lab.set_link_mtu("r-s", 1400);
    let (o, doc) = json_doc(lab.client(), &["mtu", "--echo", "--json", "198.18.2.2:7"]);
    o.assert_code(0);
    assert_eq!(doc["mode"], "echo");
    assert_eq!(doc["round_trip"]["mtu"], 1400, "{doc}");
    assert_eq!(doc["round_trip"]["fragments"]["passes"], true, "{doc}");
    // Without --echo: no control channel there, so it says so and falls back.
    let o = udpreach(lab.client(), &["mtu", "[fd00:2::2]:7"]);
    o.assert_code(0);
    assert!(
        stderr(&o).contains("round trip through the echo port"),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("round trip  path MTU 1400"),
        "{}",
        stdout(&o)
    );
}

/// Real UDP services: socat answering DNS, NTP and SNMP requests (it echoes
/// them, which is an answer all the same), a firewall on the server that
/// rejects one port and drops another, and everything else closed.
fn serverless_services(server: &Host) -> Vec<Proc> {
    server.nft(
        "table inet svc {
  chain input { type filter hook input priority 0; policy accept; }
}
add rule inet svc input udp dport 7001 reject with icmpx admin-prohibited
add rule inet svc input udp dport 7002 drop
",
    );
    [53, 123, 161, 7000]
        .into_iter()
        .map(|p| socat_echo(server, p))
        .collect()
}

fn expected_serverless(port: u16) -> &'static str {
    match port {
        53 | 123 | 161 => "open",
        // socat ignores the empty datagram unknown ports get, as a
        // service that does not understand a request would.
        7000 => "open_filtered",
        7001 => "filtered",
        7002 => "open_filtered",
        _ => "closed",
    }
}

#[test]
fn serverless_verdicts_match_the_services() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _services = serverless_services(lab.server());
    for target in ["198.18.0.2", "fd00::2"] {
        let (o, doc) = json_doc(
            lab.client(),
            &["ports", "--no-server", "--json", target, "1-200,7000-7005"],
        );
        o.assert_code(1);
        assert_eq!(doc["mode"], "no_server");
        let v = port_map(&doc);
        assert_eq!(v.len(), 206);
        for (port, (verdict, from, reason)) in &v {
            assert_eq!(verdict, expected_serverless(*port), "port {port}: {doc}");
            if verdict == "closed" {
                assert_eq!(from.as_deref(), Some(target));
                assert_eq!(reason.as_deref(), Some("port_unreachable"));
            }
        }
        assert_eq!(v[&7001].2.as_deref(), Some("admin_prohibited"));
        assert!(
            doc["icmp_rate_limit"].is_null(),
            "the lab switches ICMP rate limiting off: {doc}"
        );
    }
}

#[test]
fn serverless_filtered_by_the_router() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    lab.router().reject_udp_dport_forward(5001, true);
    let (_, doc) = json_doc(
        lab.client(),
        &["ports", "--no-server", "--json", SERVER4, "5000-5002"],
    );
    let v = port_map(&doc);
    assert_eq!(v[&5000].0, "closed");
    assert_eq!(
        v[&5001],
        (
            "filtered".into(),
            Some(ROUTER_CLIENT_SIDE4.into()),
            Some("admin_prohibited".into())
        )
    );
    let o = udpreach(
        lab.client(),
        &["ports", "--no-server", SERVER4, "5000-5002"],
    );
    assert!(
        stdout(&o).contains(&format!(
            "filtered               1  5001  (Administratively Prohibited from {ROUTER_CLIENT_SIDE4})"
        )),
        "{}",
        stdout(&o)
    );
}

#[test]
fn serverless_paces_to_the_kernels_icmp_rate_limit() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    // Back to the kernel's defaults: one error per second per peer after a burst of 6.
    let s = lab.server();
    s.sysctl("net.ipv4.icmp_ratelimit", "1000");
    s.sysctl("net.ipv4.icmp_ratemask", "6168");
    s.sysctl("net.ipv4.icmp_msgs_per_sec", "1000");
    s.sysctl("net.ipv4.icmp_msgs_burst", "50");
    let _services = serverless_services(s);
    let t0 = std::time::Instant::now();
    let (_, doc) = json_doc(
        lab.client(),
        &[
            "ports",
            "--no-server",
            "--json",
            "198.18.0.2",
            "1-20,53,7001,7002",
        ],
    );
    let elapsed = t0.elapsed();
    let v = port_map(&doc);
    for (port, (verdict, _, _)) in &v {
        assert_eq!(verdict, expected_serverless(*port), "port {port}: {doc}");
    }
    let rl = &doc["icmp_rate_limit"];
    assert!(rl.is_object(), "rate limiting not reported: {doc}");
    let interval = rl["interval_ms"].as_f64().unwrap();
    assert!((500.0..2000.0).contains(&interval), "{rl}");
    // 21 errors at one per second after a burst of 6: at least 15 s, and the
    // pacing should not waste much more.
    assert!(elapsed < Duration::from_secs(40), "{elapsed:?}");
    // The limiter is still empty: the text report says so too.
    let o = udpreach(
        lab.client(),
        &["ports", "--no-server", "198.18.0.2", "30-37"],
    );
    assert!(
        stdout(&o).contains("ICMP rate limiting at 198.18.0.2: about 1 error per"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("closed                 8  30-37"),
        "{}",
        stdout(&o)
    );
}
