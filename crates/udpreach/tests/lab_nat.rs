//! Issue 12 in the netns lab: `udpreach nat` through a router namespace
//! with `masquerade`, with `masquerade random`, and with a stateful
//! firewall and no NAT, each with short conntrack timers (5 s after one
//! exchange, 12 s for a stream) set in the router's namespace. The server
//! has a second address (198.18.2.3, `--alt-address`) for the mapping and
//! filtering tests.
//!
//! What Linux does (checked by these tests; see README "udpreach nat"):
//! plain `masquerade` keeps the source port and maps endpoint-independently
//! (nf_nat_setup_info keeps the tuple when it is unique); `masquerade
//! random` picks a new port per conntrack entry, i.e. per destination
//! (address-and-port-dependent); conntrack only lets in replies to the exact
//! 5-tuple, so filtering is address-and-port-dependent in all three.

mod lab;
mod schema;
mod util;

use lab::{require_root, Host, Lab, Proc};
use serde_json::Value;
use util::*;

const SERVER: &str = "198.18.2.2:4000";
const ALT: &str = "198.18.2.3";
const ONE_EXCHANGE_S: f64 = 5.0;
const STREAM_S: f64 = 12.0;

fn key_file(contents: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("udpreach-lab-nat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("key");
    std::fs::write(&p, contents).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The routed lab with `router` set up, short conntrack timers, and a
/// server with an alternate address.
fn lab_with(router: impl FnOnce(&Host), server_extra: &[&str]) -> (Lab, Proc) {
    let lab = Lab::routed();
    router(lab.router());
    lab.router()
        .conntrack_udp_timers(ONE_EXCHANGE_S as u32, STREAM_S as u32);
    lab.server().add_address("s-r", &format!("{ALT}/24"));
    let mut extra = vec!["--alt-address", ALT];
    extra.extend_from_slice(server_extra);
    let srv = start_server(lab.server(), &extra);
    (lab, srv)
}

fn nat_json(host: &Host, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["nat", SERVER, "--max-idle", "30s", "--json"];
    args.extend_from_slice(extra);
    let o = udpreach(host, &args);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from nat ({e}): {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        )
    });
    schema::assert_valid("nat.json", &doc);
    (code(&o), doc)
}

/// The measured bracket holds the configured timer (to 0.3 s, for the
/// round trips and timers of the lab) and is within the stated precision.
fn assert_timer(doc: &Value, kind: &str, configured: f64) {
    let r = &doc["idle_timeout"][kind];
    let s = r["survived_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{kind}: {r}"));
    let e = r["expired_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{kind}: {r}"));
    assert!(
        s <= configured + 0.3 && configured - 0.3 <= e,
        "{kind}: measured {s}..{e} s, configured {configured} s: {doc}"
    );
    assert!(
        e - s <= 1f64.max(s / 10.0) + 1e-6,
        "{kind}: {s}..{e} wider than max(1 s, 10%)"
    );
}

#[test]
fn masquerade_endpoint_independent_mapping_port_preserved_timers_measured() {
    if !require_root() {
        return;
    }
    let (lab, _srv) = lab_with(|r| r.snat_forward_masquerade("r-s"), &[]);
    let (code, doc) = nat_json(lab.client(), &[]);
    assert_eq!(doc["nat"], true, "{doc}");
    assert_eq!(doc["mapping"], "endpoint_independent", "{doc}");
    assert_eq!(doc["filtering"], "address_and_port_dependent", "{doc}");
    assert_eq!(doc["port_preservation"], true, "{doc}");
    assert_eq!(doc["port_parity"], true, "{doc}");
    // The server sees the router's address.
    let seen = doc["mapping_observed"]["seen_a"].as_str().unwrap();
    assert!(seen.starts_with("198.18.2.254:"), "{doc}");
    assert_timer(&doc, "one_exchange", ONE_EXCHANGE_S);
    assert_timer(&doc, "active_flow", STREAM_S);
    assert_eq!(code, 0, "{doc}");
    let conclusion = doc["conclusion"].as_str().unwrap();
    assert!(
        conclusion.starts_with("keepalive every 4 s keeps this flow open"),
        "{conclusion}"
    );
}

#[test]
fn masquerade_random_port_dependent_mapping_with_a_key() {
    if !require_root() {
        return;
    }
    let key = key_file(b"nat lab shared secret 0123456789\n");
    let key = key.to_str().unwrap();
    let (lab, _srv) = lab_with(
        |r| r.snat_forward_masquerade_random("r-s"),
        &["--key-file", key],
    );
    let (code, doc) = nat_json(lab.client(), &["--key-file", key]);
    assert_eq!(doc["nat"], true, "{doc}");
    assert_eq!(doc["mapping"], "address_and_port_dependent", "{doc}");
    assert_eq!(doc["filtering"], "address_and_port_dependent", "{doc}");
    assert_timer(&doc, "one_exchange", ONE_EXCHANGE_S);
    assert_timer(&doc, "active_flow", STREAM_S);
    assert_eq!(code, 0, "{doc}");
    // Without the key the server refuses the session: exit 2.
    let o = udpreach(lab.client(), &["nat", SERVER, "--max-idle", "2s"]);
    assert_eq!(code_of(&o), 2, "{}", stderr(&o));
}

fn code_of(o: &std::process::Output) -> i32 {
    code(o)
}

#[test]
fn stateful_firewall_without_nat() {
    if !require_root() {
        return;
    }
    let (lab, _srv) = lab_with(|r| r.stateful_firewall_forward("r-s"), &[]);
    // Per destination port (-p): the same timers towards 4500 and 5060.
    let (code, doc) = nat_json(lab.client(), &["-p", "4500,5060"]);
    assert_eq!(doc["nat"], false, "{doc}");
    assert_eq!(doc["mapping"], Value::Null, "{doc}");
    assert_eq!(doc["filtering"], "address_and_port_dependent", "{doc}");
    assert_timer(&doc, "one_exchange", ONE_EXCHANGE_S);
    assert_timer(&doc, "active_flow", STREAM_S);
    let per_port = doc["per_port"].as_array().unwrap();
    assert_eq!(per_port.len(), 2, "{doc}");
    for (p, port) in per_port.iter().zip([4500, 5060]) {
        assert_eq!(p["port"], port);
        let wrapped = serde_json::json!({ "idle_timeout": p });
        assert_timer(&wrapped, "one_exchange", ONE_EXCHANGE_S);
        assert_timer(&wrapped, "active_flow", STREAM_S);
    }
    assert_eq!(code, 0, "{doc}");
    let conclusion = doc["conclusion"].as_str().unwrap();
    assert!(
        conclusion.starts_with("no NAT; stateful filtering; keepalive every"),
        "{conclusion}"
    );
}

/// The server's bounds for `nat`: replies never longer than probes and only
/// to the session's client IP, scheduled sends only to flows the client's
/// own IP opened, gaps, ports and the number waiting all capped.
#[test]
fn nat_ports_answer_only_the_client_and_scheduled_sends_are_bounded() {
    use std::net::{SocketAddr, UdpSocket};
    use udpreach_wire::control::ControlMsg;
    use udpreach_wire::nat::{self, NatDatagram};
    use udpreach_wire::probe::{ProbeHeader, ProbeKind};
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    lab.client().add_address("c-s", "198.18.0.3/24");
    let _srv = start_server(lab.server(), &[]);
    let server: SocketAddr = "198.18.0.2:4000".parse().unwrap();
    let mut s = util::RawSession::connect(lab.client(), server);
    let (a, b) = match s.request(&ControlMsg::NatOpen { fixed: vec![] }) {
        ControlMsg::NatOpened { ports, alt, .. } => {
            assert_eq!(alt, None, "no --alt-address");
            (ports[0], ports[1])
        }
        other => panic!("expected nat_opened, got {other:?}"),
    };
    let port_a = SocketAddr::new(server.ip(), a);
    let port_b = SocketAddr::new(server.ip(), b);
    // Ports at chosen numbers: checked like test ports, and at most 8.
    for (fixed, why) in [
        (vec![22], "port 22 is not allowed"),
        ((20001..20010).collect(), "at most 8"),
    ] {
        match s.request(&ControlMsg::NatOpen { fixed }) {
            ControlMsg::Error { message, .. } => assert!(message.contains(why), "{message}"),
            other => panic!("expected a refusal ({why}), got {other:?}"),
        }
    }
    let token = s.token;
    let probe = move |flow: u32, len: usize| {
        let mut d = vec![7u8; len];
        ProbeHeader::request(ProbeKind::NatProbe, token, u64::from(flow))
            .encode(&mut d)
            .unwrap();
        d
    };
    let (client, other) = lab.client().enter(move || {
        let c = UdpSocket::bind("198.18.0.1:0").unwrap();
        let o = UdpSocket::bind("198.18.0.3:0").unwrap();
        // The client waits long enough for a reply slowed by a loaded
        // machine; the third party only for what must stay silent.
        c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        o.set_read_timeout(Some(std::time::Duration::from_millis(600)))
            .unwrap();
        (c, o)
    });
    // A 200-byte probe from the client: a 64-byte reply naming its address.
    let local = client.local_addr().unwrap();
    client.send_to(&probe(1, 200), port_a).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).expect("reply from port A");
    assert_eq!((n, from), (64, port_a));
    assert_eq!(
        nat::parse(&buf[..n], token),
        Some(NatDatagram::Reply {
            flow: 1,
            seen_from: local
        })
    );
    // Another IP of the same host (not the control connection's) gets nothing,
    // and its flow cannot be named in a scheduled send.
    other.send_to(&probe(2, 64), port_a).unwrap();
    assert!(other.recv_from(&mut buf).is_err(), "answered a third party");
    let refused = |m: ControlMsg, what: &str| match m {
        ControlMsg::Error { message, .. } => {
            assert!(message.contains(what), "{message}")
        }
        other => panic!("expected a refusal ({what}), got {other:?}"),
    };
    let send = |flow, gap_ms, from| ControlMsg::NatSend { flow, gap_ms, from };
    refused(s.request(&send(2, 0, port_a)), "has not been seen");
    refused(s.request(&send(1, nat::MAX_GAP_MS + 1, port_a)), "over the");
    refused(
        s.request(&send(1, 0, SocketAddr::new(server.ip(), 4000))),
        "not one of this session's NAT ports",
    );
    // From port B, now: both copies reach the client, nothing the other socket.
    assert!(matches!(
        s.request(&send(1, 0, port_b)),
        ControlMsg::NatScheduled { flow: 1 }
    ));
    let mut copies = 0;
    while let Ok((n, from)) = client.recv_from(&mut buf) {
        assert_eq!((n, from), (64, port_b));
        assert_eq!(
            nat::parse(&buf[..n], token),
            Some(NatDatagram::Late { flow: 1 })
        );
        copies += 1;
    }
    assert_eq!(copies, nat::COPIES);
    assert!(other.recv_from(&mut buf).is_err());
    // At most MAX_SCHEDULED wait at once.
    for _ in 0..nat::MAX_SCHEDULED {
        assert!(matches!(
            s.request(&send(1, 60_000, port_a)),
            ControlMsg::NatScheduled { .. }
        ));
    }
    refused(
        s.request(&send(1, 60_000, port_a)),
        "scheduled sends at once",
    );
}

/// No NAT and no firewall: nothing expires within --max-idle, which is
/// exit 1 with the reason; --json-lines follows its schema; bad values are
/// usage errors (exit 2, one line).
#[test]
fn open_path_json_lines_and_usage_errors() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _srv = start_server(lab.server(), &[]);
    let o = udpreach(
        lab.client(),
        &["nat", "198.18.0.2:4000", "--max-idle", "2s", "--json-lines"],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    schema::assert_lines_valid("nat-lines.json", &stdout(&o));
    let s = summary(&o);
    assert_eq!(s["nat"], false, "{s}");
    assert_eq!(s["idle_timeout"]["one_exchange"]["expired_s"], Value::Null);
    assert!(s["not_measured"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["part"] == "idle_timeout.one_exchange"));
    for (args, needle) in [
        (vec!["nat", "198.18.0.2", "--max-idle", "1s"], "max idle"),
        (vec!["nat", "198.18.0.2", "--max-idle", "31m"], "max idle"),
        (vec!["nat", "198.18.0.2:70000"], "70000"),
    ] {
        let o = udpreach(lab.client(), &args);
        assert_eq!(code(&o), 2, "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.starts_with("udpreach: ") && e.contains(needle), "{e}");
    }
}
