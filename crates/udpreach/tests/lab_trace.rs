//! `udpreach trace` through a chain of two routers (client - r1 - r2 -
//! server), where the dropping, rejecting or silent hop is known: each
//! verdict must name the right hop and direction, or say it cannot tell.

mod lab;
mod schema;
mod util;

use lab::{require_root, Host, Lab};
use serde_json::Value;
use util::*;

const PORT: u16 = 5060;
const OTHER: u16 = 5070;

fn trace_json(host: &Host, args: &[&str]) -> (i32, Value) {
    let mut argv = vec!["trace", "--json", "--max-hops", "6"];
    argv.extend_from_slice(args);
    let o = udpreach(host, &argv);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from {argv:?} ({e}): {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    schema::assert_valid("trace.json", &doc);
    (code(&o), doc)
}

/// The result for (port, direction), excluding the control port.
fn result<'a>(doc: &'a Value, port: u16, direction: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["port"] == port && r["direction"] == direction && r["control"] == false)
        .unwrap_or_else(|| panic!("no {direction} result for {port} in {doc:#}"))
}

fn control<'a>(doc: &'a Value, direction: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["direction"] == direction && r["control"] == true)
        .unwrap_or_else(|| panic!("no {direction} control result in {doc:#}"))
}

fn server_addr(lab: &Lab, v6: bool) -> String {
    if v6 {
        format!("[{}]:4000", lab.server().ip6())
    } else {
        lab.server().ip4().to_string()
    }
}

#[test]
fn clean_chain_passes_both_ways_in_three_hops_v4_and_v6() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060,5070"]);
        assert_eq!(rc, 0, "{doc:#}");
        for port in [PORT, OTHER] {
            for dir in ["upstream", "downstream"] {
                let r = result(&doc, port, dir);
                assert_eq!(r["verdict"], "passes", "{port} {dir}: {r:#}");
                assert_eq!(r["hop_count"], 3, "{port} {dir}: {r:#}");
            }
        }
        let up = result(&doc, PORT, "upstream");
        let (r1, r2) = if v6 {
            ("fd00:3::fe", "fd00:4::2")
        } else {
            ("198.18.3.254", "198.18.4.2")
        };
        assert_eq!(up["hops"][0]["address"], r1, "{up:#}");
        assert_eq!(up["hops"][1]["address"], r2, "{up:#}");
        assert!(up["hops"][0]["rtt_ms"].as_f64().is_some());
    }
}

#[test]
fn drop_in_r2_forward_is_dropped_after_r2_upstream() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r2().nft(&format!(
        "table inet t {{\n chain f {{ type filter hook forward priority 0; udp dport {PORT} drop; }}\n}}"
    ));
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060,5070"]);
        assert_eq!(rc, 1, "{doc:#}");
        let up = result(&doc, PORT, "upstream");
        assert_eq!(up["verdict"], "dropped_after", "{up:#}");
        let r2 = if v6 { "fd00:4::2" } else { "198.18.4.2" };
        assert_eq!(up["last_hop"]["ttl"], 2, "{up:#}");
        assert_eq!(up["last_hop"]["address"], r2, "{up:#}");
        assert_eq!(up["first_silent_ttl"], 3, "{up:#}");
        assert!(up["ambiguous"].is_null(), "{up:#}");
        assert_eq!(result(&doc, OTHER, "upstream")["verdict"], "passes");
        assert_eq!(control(&doc, "upstream")["verdict"], "passes");
        // The way back is not blocked for 5060.
        assert_eq!(result(&doc, PORT, "downstream")["verdict"], "passes");
    }
}

#[test]
fn source_port_drop_in_r1_is_dropped_after_r1_downstream() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r1().nft(&format!(
        "table inet t {{\n chain f {{ type filter hook forward priority 0; udp sport {PORT} drop; }}\n}}"
    ));
    let _srv = start_server(lab.server(), &[]);
    let target = server_addr(&lab, false);
    let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060,5070"]);
    assert_eq!(rc, 1, "{doc:#}");
    assert_eq!(
        result(&doc, PORT, "upstream")["verdict"],
        "passes",
        "{doc:#}"
    );
    let down = result(&doc, PORT, "downstream");
    assert_eq!(down["verdict"], "dropped_after", "{down:#}");
    // Downstream hop 2 is r1, answering the server from its r2 side.
    assert_eq!(down["last_hop"]["ttl"], 2, "{down:#}");
    assert_eq!(down["last_hop"]["address"], "198.18.4.1", "{down:#}");
    assert!(down["ambiguous"].is_null(), "{down:#}");
    assert_eq!(result(&doc, OTHER, "downstream")["verdict"], "passes");
}

#[test]
fn admin_prohibited_reject_names_the_router() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r1().reject_udp_dport_forward(PORT, true);
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060"]);
        assert_eq!(rc, 1, "{doc:#}");
        let up = result(&doc, PORT, "upstream");
        assert_eq!(up["verdict"], "rejected_by", "{up:#}");
        let rej = &up["rejected"];
        assert_eq!(rej["reason"], "admin_prohibited", "{up:#}");
        let r1 = if v6 { "fd00:3::fe" } else { "198.18.3.254" };
        assert_eq!(rej["address"], r1, "{up:#}");
        assert_eq!(rej["ttl"], 2, "{up:#}");
        assert_eq!(rej["icmp_code"], if v6 { 1 } else { 13 }, "{up:#}");
    }
}

#[test]
fn router_without_time_exceeded_gives_an_ambiguous_verdict_not_a_wrong_hop() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    // r2 sends no time exceeded at all, and drops 5060.
    lab.r2().nft(&format!(
        "table inet t {{
  chain o {{ type filter hook output priority 0; icmp type time-exceeded drop; icmpv6 type time-exceeded drop; }}
  chain f {{ type filter hook forward priority 0; udp dport {PORT} drop; }}
}}"
    ));
    let _srv = start_server(lab.server(), &[]);
    let target = server_addr(&lab, false);
    let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060"]);
    assert_eq!(rc, 1, "{doc:#}");
    let up = result(&doc, PORT, "upstream");
    assert_eq!(up["verdict"], "dropped_after", "{up:#}");
    assert_eq!(up["last_hop"]["ttl"], 1, "{up:#}");
    let why = up["ambiguous"]
        .as_str()
        .unwrap_or_else(|| panic!("not ambiguous: {up:#}"));
    assert!(why.contains("between hop 1 and hop 3"), "{why}");
    // The control port passes, with hop 2 shown as silent.
    let c = control(&doc, "upstream");
    assert_eq!(c["verdict"], "passes", "{c:#}");
    assert!(
        c["hops"].as_array().unwrap().iter().all(|h| h["ttl"] != 2),
        "{c:#}"
    );
}

#[test]
fn no_server_traces_upstream_against_a_plain_host() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r2().nft(&format!(
        "table inet t {{\n chain f {{ type filter hook forward priority 0; udp dport {PORT} drop; }}\n}}"
    ));
    // No udpreach on the server: closed ports answer port unreachable.
    let target = lab.server().ip4().to_string();
    let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060,5070", "--no-server"]);
    assert_eq!(rc, 1, "{doc:#}");
    assert_eq!(doc["mode"], "no_server");
    let up = result(&doc, PORT, "upstream");
    assert_eq!(up["verdict"], "dropped_after", "{up:#}");
    assert_eq!(up["last_hop"]["address"], "198.18.4.2", "{up:#}");
    let other = result(&doc, OTHER, "upstream");
    assert_eq!(other["verdict"], "passes", "{other:#}");
    assert_eq!(other["hop_count"], 3, "{other:#}");
    assert!(doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["direction"] == "upstream"));
}

#[test]
fn text_output_reads_like_a_traceroute_with_the_verdict_on_top() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r2().nft(&format!(
        "table inet t {{\n chain f {{ type filter hook forward priority 0; udp dport {PORT} drop; }}\n}}"
    ));
    let _srv = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(lab.client(), &["trace", &target, "-p", "5060", "-m", "6"]);
    let text = stdout(&o);
    assert_eq!(code(&o), 1, "{text}\n{}", stderr(&o));
    assert!(
        text.contains(
            "port 5060 upstream: dropped after hop 2 (198.18.4.2): hop 3 and beyond silent"
        ),
        "{text}"
    );
    assert!(text.contains("   1  198.18.3.254"), "{text}");
    assert!(text.contains("   3  *"), "{text}");
    assert!(
        text.contains("port 5060 downstream: passes (3 hops)"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    for (args, needle) in [
        (
            &["trace", "127.0.0.1", "-p", "5060", "--max-hops", "65"][..],
            "65",
        ),
        (
            &["trace", "127.0.0.1", "-p", "5060", "--attempts", "0"][..],
            "0",
        ),
        (&["trace", "127.0.0.1", "-p", "1-200"][..], "200 ports"),
        (&["trace", "127.0.0.1"][..], "--ports"),
    ] {
        let o = udpreach(lab.client(), args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

/// What the server sends on a trace request goes only to the session's
/// client (a probe from another address of the same host is neither counted
/// nor answered), acks are the probe's size, and requests are bounded: TTLs,
/// attempts, and trace sends per session.
#[test]
fn server_trace_sends_only_to_the_session_client_within_bounds() {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;
    use udpreach_wire::control::ControlMsg;
    use udpreach_wire::trace::{TraceKind, TraceProbe, MAX_SENDS_PER_SESSION, PROBE_LEN};
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let client = lab.client();
    let iface = client.iface().to_string();
    client.run(["ip", "addr", "add", "198.18.0.3/24", "dev", &iface]);
    let _srv = start_server(lab.server(), &[]);
    let server: SocketAddr = "198.18.0.2:4000".parse().unwrap();
    let mut s = RawSession::connect(client, server);
    let port = match s.request(&ControlMsg::TraceOpen { ports: vec![0] }) {
        ControlMsg::TraceOpened { ports, .. } => ports[0],
        other => panic!("{other:?}"),
    };
    assert_ne!(port, 0);
    let send = |max_hops: u8, attempts: u8| ControlMsg::TraceSend {
        ports: vec![port],
        max_hops,
        attempts,
        wait_ms: 1,
        rate: 0,
        tos: None,
        size: None,
    };
    // Nothing has arrived from the client yet: nowhere to send.
    match s.request(&send(2, 1)) {
        ControlMsg::TraceSent { results } => {
            assert_eq!(results[0].sent, 0);
            assert!(results[0]
                .error
                .as_deref()
                .unwrap()
                .contains("no trace probe"));
        }
        other => panic!("{other:?}"),
    }
    let token = s.token;
    let to = SocketAddr::new("198.18.0.2".parse().unwrap(), port);
    let probe = |ttl| {
        TraceProbe {
            token,
            port,
            ttl,
            attempt: 0,
            kind: TraceKind::Up,
        }
        .encode()
    };
    // A third address of the client host: ignored.
    let p64 = probe(64);
    let third_got = client.enter(move || {
        let u = UdpSocket::bind("198.18.0.3:0").unwrap();
        u.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        u.send_to(&p64, to).unwrap();
        let mut b = [0u8; 64];
        u.recv_from(&mut b).ok().map(|(n, _)| n)
    });
    assert_eq!(third_got, None, "a probe from another address was answered");
    match s.request(&ControlMsg::TraceArrivals { ports: vec![port] }) {
        ControlMsg::TraceArrived { arrivals } => assert!(arrivals[0].ttls.is_empty()),
        other => panic!("{other:?}"),
    }
    // The session's client: counted and acked with a datagram of the probe's size.
    let p63 = probe(63);
    let (ack_len, local) = client.enter(move || {
        let u = UdpSocket::bind("198.18.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(&p63, to).unwrap();
        let mut b = [0u8; 64];
        let (n, _) = u.recv_from(&mut b).expect("ack");
        (n, u.local_addr().unwrap())
    });
    assert_eq!(ack_len, PROBE_LEN);
    match s.request(&ControlMsg::TraceArrivals { ports: vec![port] }) {
        ControlMsg::TraceArrived { arrivals } => assert_eq!(arrivals[0].ttls, vec![63]),
        other => panic!("{other:?}"),
    }
    // Out-of-bounds requests are refused before anything is sent: padded
    // probes may add up to 1 MiB per request.
    let padded = ControlMsg::TraceSend {
        ports: vec![port],
        max_hops: 64,
        attempts: 3,
        wait_ms: 1,
        rate: 0,
        tos: None,
        size: Some(9000),
    };
    for bad in [send(65, 1), send(2, 4), send(0, 1), padded] {
        assert!(
            matches!(s.request(&bad), ControlMsg::Error { .. }),
            "{bad:?} accepted"
        );
    }
    // Downstream goes to the address the probe came from, bounded per request.
    match s.request(&send(2, 1)) {
        ControlMsg::TraceSent { results } => {
            assert_eq!(results[0].to.as_deref(), Some(local.to_string().as_str()));
            assert!(results[0].sent <= 2, "{results:?}");
        }
        other => panic!("{other:?}"),
    }
    // And a session has a bounded number of trace sends (two used above).
    for _ in 2..MAX_SENDS_PER_SESSION {
        assert!(matches!(
            s.request(&send(1, 1)),
            ControlMsg::TraceSent { .. }
        ));
    }
    match s.request(&send(1, 1)) {
        ControlMsg::Error { message, .. } => assert!(message.contains("spent"), "{message}"),
        other => panic!(
            "the {}th trace send was served: {other:?}",
            MAX_SENDS_PER_SESSION + 1
        ),
    }
}

/// r1 rewrites DSCP to 0 on what it forwards: the headers the hops quote
/// show DSCP 46 at hop 1 (r1 answers before its forward hook) and 0 at hop 2.
#[test]
fn dscp_rewritten_by_r1_is_reported_between_hop_1_and_hop_2() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; ip dscp set cs0; ip6 dscp set cs0; }\n}",
    );
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060", "--dscp", "46"]);
        assert_eq!(rc, 0, "{doc:#}");
        let up = result(&doc, PORT, "upstream");
        assert_eq!(up["hops"][0]["dscp"], 46, "{up:#}");
        assert_eq!(up["hops"][1]["dscp"], 0, "{up:#}");
        let changes = up["dscp_rewritten"].as_array().unwrap();
        assert_eq!(changes.len(), 1, "{up:#}");
        assert_eq!(changes[0]["after_hop"], 1);
        assert_eq!(changes[0]["at_hop"], 2);
        assert_eq!(changes[0]["from"], 46);
        assert_eq!(changes[0]["to"], 0);
    }
}

/// With a key, `trace --key-file` works end to end through the chain (both
/// ways, IPv4 and IPv6); without the key the server refuses the session.
#[test]
fn keyed_trace_passes_both_ways_and_needs_the_key() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    let key = lab::key_file("trace-key", b"trace lab shared secret 0123456789\n");
    let key = key.to_str().unwrap();
    let _srv = start_server(lab.server(), &["--key-file", key]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060", "--key-file", key]);
        assert_eq!(rc, 0, "{doc:#}");
        for dir in ["upstream", "downstream"] {
            let r = result(&doc, PORT, dir);
            assert_eq!(r["verdict"], "passes", "{dir}: {r:#}");
            assert_eq!(r["hop_count"], 3, "{dir}: {r:#}");
        }
    }
    let o = udpreach(
        lab.client(),
        &["trace", &server_addr(&lab, false), "-p", "5060", "-m", "4"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("key"), "{}", stderr(&o));
}

/// In a keyed session the server counts and acks only trace probes tagged
/// with the session key, each (TTL, attempt) once: an untagged probe, one
/// tagged with another key and a replay of a good one are not confirmed.
#[test]
fn keyed_trace_port_confirms_only_tagged_probes_once() {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;
    use udpreach_wire::auth::SharedKey;
    use udpreach_wire::control::ControlMsg;
    use udpreach_wire::trace::{TraceKind, TraceProbe, KEYED_PROBE_LEN};
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let secret = b"trace lab shared secret 0123456789";
    let key = lab::key_file("trace-key-raw", secret);
    let _srv = start_server(lab.server(), &["--key-file", key.to_str().unwrap()]);
    let server: SocketAddr = "198.18.0.2:4000".parse().unwrap();
    let shared = SharedKey::new(secret.to_vec()).unwrap();
    let (mut s, session_key) = RawSession::connect_keyed(lab.client(), server, &shared);
    let port = match s.request(&ControlMsg::TraceOpen { ports: vec![0] }) {
        ControlMsg::TraceOpened { ports, errors } => {
            assert!(errors.is_empty(), "{errors:?}");
            ports[0]
        }
        other => panic!("{other:?}"),
    };
    assert_ne!(port, 0);
    let probe = |ttl: u8| TraceProbe {
        token: s.token,
        port,
        ttl,
        attempt: 0,
        kind: TraceKind::Up,
    };
    let wrong_key = SharedKey::new(b"another key entirely".to_vec())
        .unwrap()
        .session_key(&[7; 32], &[8; 32]);
    let untagged = probe(60).to_datagram(None, 0);
    let forged = probe(61).to_datagram(Some(&wrong_key), 0);
    let good = probe(62).to_datagram(Some(&session_key), 0);
    let to = SocketAddr::new("198.18.0.2".parse().unwrap(), port);
    // Each datagram in turn from one socket: what came back for each.
    let answers: Vec<Option<Vec<u8>>> = lab.client().enter(move || {
        let u = UdpSocket::bind("198.18.0.1:0").unwrap();
        [untagged, forged, good.clone(), good]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // The one that must be acked may take its time on a loaded
                // machine (a late ack would be read as the replay's).
                let wait = if i == 2 { 2000 } else { 400 };
                u.set_read_timeout(Some(Duration::from_millis(wait)))
                    .unwrap();
                u.send_to(d, to).unwrap();
                let mut b = [0u8; 128];
                u.recv_from(&mut b).ok().map(|(n, _)| b[..n].to_vec())
            })
            .collect()
    });
    assert_eq!(answers[0], None, "an untagged probe was acked");
    assert_eq!(
        answers[1], None,
        "a probe tagged with another key was acked"
    );
    let ack = answers[2].as_ref().expect("the tagged probe was not acked");
    assert_eq!(ack.len(), KEYED_PROBE_LEN);
    let ack = TraceProbe::from_datagram(ack, Some(&session_key)).expect("ack tagged");
    assert_eq!((ack.kind, ack.ttl), (TraceKind::Ack, 62));
    assert_eq!(answers[3], None, "a replayed probe was acked again");
    match s.request(&ControlMsg::TraceArrivals { ports: vec![port] }) {
        ControlMsg::TraceArrived { arrivals } => assert_eq!(arrivals[0].ttls, vec![62]),
        other => panic!("{other:?}"),
    }
}

/// r2 rewrites DSCP to 0 on what comes from the server (downstream only):
/// the server marks its probes with the DSCP asked and reads the headers the
/// hops quote, so downstream shows 46 at hop 1 (r2 answers before its
/// forward hook) and 0 at hop 2, while upstream keeps 46 all the way.
#[test]
fn dscp_rewritten_downstream_by_r2_is_placed_between_hop_1_and_hop_2() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0;\n  iifname \"r2-s\" ip dscp set cs0\n  iifname \"r2-s\" ip6 dscp set cs0\n }\n}",
    );
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060", "--dscp", "46"]);
        assert_eq!(rc, 0, "{doc:#}");
        let down = result(&doc, PORT, "downstream");
        assert_eq!(down["hops"][0]["dscp"], 46, "{down:#}");
        assert_eq!(down["hops"][1]["dscp"], 0, "{down:#}");
        let changes = down["dscp_rewritten"].as_array().unwrap();
        assert_eq!(changes.len(), 1, "{down:#}");
        assert_eq!(changes[0]["after_hop"], 1, "{down:#}");
        assert_eq!(changes[0]["at_hop"], 2, "{down:#}");
        assert_eq!(changes[0]["from"], 46, "{down:#}");
        assert_eq!(changes[0]["to"], 0, "{down:#}");
        let up = result(&doc, PORT, "upstream");
        assert!(
            up["dscp_rewritten"].as_array().unwrap().is_empty(),
            "{up:#}"
        );
        assert_eq!(up["hops"][1]["dscp"], 46, "{up:#}");
    }
}

/// The r1 - r2 link has an MTU of 1280: with `--size 1400` (Don't Fragment)
/// the hop in front of it answers frag-needed / packet too big with 1280,
/// shown as that hop's `mtu`, each way (r1 upstream, r2 downstream).
#[test]
fn a_smaller_next_link_shows_as_the_hop_mtu_both_ways() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r1().set_mtu("r1-r2", 1280);
    lab.r2().set_mtu("r2-r1", 1280);
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060", "--size", "1400"]);
        assert_eq!(rc, 1, "{doc:#}");
        let (r1, r2) = if v6 {
            ("fd00:3::fe", "fd00:5::fe")
        } else {
            ("198.18.3.254", "198.18.5.254")
        };
        for (dir, hop) in [("upstream", r1), ("downstream", r2)] {
            let r = result(&doc, PORT, dir);
            assert_eq!(r["verdict"], "rejected_by", "{dir}: {r:#}");
            assert_eq!(r["rejected"]["ttl"], 2, "{dir}: {r:#}");
            assert_eq!(r["rejected"]["address"], hop, "{dir}: {r:#}");
            assert_eq!(r["rejected"]["reason"], "frag_needed", "{dir}: {r:#}");
            assert_eq!(r["hops"][1]["mtu"], 1280, "{dir}: {r:#}");
            assert!(r["hops"][0]["mtu"].is_null(), "{dir}: {r:#}");
        }
        // Small probes pass the same path.
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060"]);
        assert_eq!(rc, 0, "{doc:#}");
    }
}

/// Both routers of the chain back to the kernel's ICMP rate limits (the
/// lab turns them off): one error a second per peer after a burst of six
/// (IPv6: a quarter second for a /64), 1000 a second in all.
fn kernel_default_icmp_limits(lab: &Lab) {
    for r in [lab.r1(), lab.r2()] {
        r.sysctl("net.ipv4.icmp_ratelimit", "1000");
        r.sysctl("net.ipv4.icmp_ratemask", "6168");
        r.sysctl("net.ipv4.icmp_msgs_per_sec", "1000");
        r.sysctl("net.ipv4.icmp_msgs_burst", "50");
        r.sysctl("net.ipv6.icmp.ratelimit", "1000");
    }
}

/// Both routers back to the kernel's ICMP defaults (one error a second per
/// peer after a burst of six, IPv6 a quarter second for a /64): r2 drops
/// 8 of 12 ports. Every drop is placed at r2 (paced to the limiters, path
/// evidence shared across ports), and a verdict without enough evidence
/// says so; none names a wrong hop.
#[test]
fn default_icmp_rate_limits_on_the_routers_place_every_drop() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    kernel_default_icmp_limits(&lab);
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp dport 5060-5067 drop; }\n}",
    );
    let _srv = start_server(lab.server(), &[]);
    for v6 in [false, true] {
        let target = server_addr(&lab, v6);
        let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060-5071"]);
        assert_eq!(rc, 1, "{doc:#}");
        let r2 = if v6 { "fd00:4::2" } else { "198.18.4.2" };
        for port in 5060..5072u16 {
            let up = result(&doc, port, "upstream");
            if port >= 5068 {
                assert_eq!(up["verdict"], "passes", "{port}: {up:#}");
                continue;
            }
            assert_eq!(up["verdict"], "dropped_after", "{port}: {up:#}");
            assert_eq!(up["last_hop"]["address"], r2, "{port}: {up:#}");
            assert!(up["ambiguous"].is_null(), "{port}: {up:#}");
        }
        for port in 5060..5072u16 {
            let down = result(&doc, port, "downstream");
            assert_eq!(down["verdict"], "passes", "{port}: {down:#}");
        }
    }
}

/// `ports --trace`: r2 drops 5060-5069 towards the server, r1 drops what
/// 5075-5077 send back. After the sweep, three representatives of each
/// group are traced in full, the other ports only at the hop they agree
/// on; every blocked port gets the right hop in the right direction.
#[test]
fn ports_trace_places_each_blocked_group() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp dport 5060-5069 drop; }\n}",
    );
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp sport 5075-5077 drop; }\n}",
    );
    let _srv = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(
        lab.client(),
        &["ports", &target, "5050-5079", "--trace", "--json"],
    );
    assert_eq!(code(&o), 1, "{}\n{}", stdout(&o), stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    schema::assert_valid("ports.json", &doc);
    let t = &doc["trace"];
    assert!(t["error"].is_null(), "{t:#}");
    let groups = t["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{t:#}");
    let inbound = groups
        .iter()
        .find(|g| g["sweep_verdict"] == "inbound_blocked")
        .unwrap();
    assert_eq!(
        inbound["representatives"],
        serde_json::json!([5060, 5065, 5069])
    );
    assert_eq!(inbound["checked_from_ttl"], 2, "{t:#}");
    let ret = groups
        .iter()
        .find(|g| g["sweep_verdict"] == "return_blocked")
        .unwrap();
    assert_eq!(ret["direction"], "downstream", "{t:#}");
    let find = |port: u16, dir: &str| {
        t["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["port"] == port && r["direction"] == dir)
            .unwrap_or_else(|| panic!("no {dir} result for {port}: {t:#}"))
            .clone()
    };
    for port in 5060..5070u16 {
        let up = find(port, "upstream");
        assert_eq!(up["verdict"], "dropped_after", "{up:#}");
        assert_eq!(up["last_hop"]["address"], "198.18.4.2", "{up:#}");
        assert!(up["ambiguous"].is_null(), "{up:#}");
    }
    for port in 5075..5078u16 {
        let down = find(port, "downstream");
        assert_eq!(down["verdict"], "dropped_after", "{down:#}");
        assert_eq!(down["last_hop"]["address"], "198.18.4.1", "{down:#}");
    }
    // The same in text: a line per group, then a verdict per port.
    let o = udpreach(lab.client(), &["ports", &target, "5050-5079", "--trace"]);
    let text = stdout(&o);
    eprintln!("TEXT\n{text}");
    assert_eq!(code(&o), 1, "{text}\n{}", stderr(&o));
    assert!(
        text.contains("trace of 10 inbound_blocked ports: representatives [5060, 5065, 5069], the other 7 checked from hop 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "port 5062 upstream: dropped after hop 2 (198.18.4.2): hop 3 and beyond silent"
        ),
        "{text}"
    );
}

/// The way back through routers with the kernel's default ICMP limits: r1
/// drops what 5060-5067 send back. The server paces its probes to the
/// limiters and says which silences it could not confirm; every
/// downstream drop is placed at r1 or called ambiguous, never a wrong hop.
#[test]
fn default_icmp_rate_limits_on_the_way_back_never_give_a_wrong_hop() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    kernel_default_icmp_limits(&lab);
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp sport 5060-5067 drop; }\n}",
    );
    let _srv = start_server(lab.server(), &[]);
    let target = server_addr(&lab, false);
    let (rc, doc) = trace_json(lab.client(), &[&target, "-p", "5060-5069"]);
    assert_eq!(rc, 1, "{doc:#}");
    let mut placed = 0;
    for port in 5060..5070u16 {
        let down = result(&doc, port, "downstream");
        if port >= 5068 {
            assert_eq!(down["verdict"], "passes", "{port}: {down:#}");
            continue;
        }
        assert_eq!(down["verdict"], "dropped_after", "{port}: {down:#}");
        if down["ambiguous"].is_null() {
            // Downstream hop 2 is r1, answering from its r2 side.
            assert_eq!(
                down["last_hop"]["address"], "198.18.4.1",
                "{port}: {down:#}"
            );
            placed += 1;
        }
        assert_eq!(result(&doc, port, "upstream")["verdict"], "passes");
    }
    assert!(placed >= 6, "{placed} of 8 placed: {doc:#}");
}
