//! End-to-end tests of `udpreach ports` against `udpreach server` in the netns lab.

mod lab;
mod schema;
mod util;

use lab::{require_root, udpreach_bin, Lab, SIGINT};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use udpreach_wire::control::ControlMsg;
use util::*;

fn verdicts(doc: &Value) -> HashMap<u16, String> {
    doc["ports"]
        .as_array()
        .expect("ports array")
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap() as u16,
                p["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ports_json(host: &lab::Host, args: &[&str]) -> (CommandOutput, Value) {
    let mut a = vec!["ports", "--json"];
    a.extend_from_slice(args);
    let o = udpreach(host, &a);
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\nstderr: {}", stdout(&o), stderr(&o)));
    schema::assert_valid("ports.json", &doc);
    (o, doc)
}

#[test]
fn all_reachable_v4_and_v6() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    for target in ["198.18.0.2", "[fd00::2]:4000"] {
        let (o, doc) = ports_json(lab.client(), &[target, "5000,6000,7000:8000"]);
        o.assert_code(0);
        let v = verdicts(&doc);
        assert_eq!(v.len(), 1003);
        assert!(v.values().all(|x| x == "reachable"), "{doc}");
        assert_eq!(doc["ranges"]["reachable"], "5000,6000,7000-8000");
    }
    let o = udpreach(
        lab.client(),
        &["ports", "198.18.0.2", "5000, 6000,7000-8000"],
    );
    o.assert_code(0);
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["reachable", "1003", "5000,6000,7000-8000"]),
        "{out}"
    );
    assert!(out.contains("1003 ports in "), "{out}");
}

/// A deterministic pick of ports for the blocked sets (the test kit's Rng).
fn pick(ports: &[u16], percent: u64, seed: u64) -> (Vec<u16>, Vec<u16>) {
    let mut rng = udpreach_engine::testkit::Rng::new(seed);
    let (mut inbound, mut ret) = (vec![], vec![]);
    for &p in ports {
        let x = rng.next_u64();
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
fn blocked_sets_under_five_percent_loss_get_exact_verdicts() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let ports: Vec<u16> = (20000..22000).collect();
    let (inbound, ret) = pick(&ports, 10, 0x5eed);
    // Inbound blocks drop probes arriving at the server; return blocks drop
    // replies arriving at the client. Then 5% random loss each way on top.
    lab.server().drop_udp_dport_in(&inbound);
    lab.client().drop_udp_sport_in(&ret);
    lab.server().drop_udp_in_percent(5);
    lab.client().drop_udp_in_percent(5);
    let (o, doc) = ports_json(lab.client(), &["198.18.0.2", "20000-21999"]);
    // Some ports blocked: exit 1.
    o.assert_code(1);
    let v = verdicts(&doc);
    let mut wrong = vec![];
    for p in ports {
        let want = if inbound.contains(&p) {
            "inbound_blocked"
        } else if ret.contains(&p) {
            "return_blocked"
        } else {
            "reachable"
        };
        if v[&p] != want {
            wrong.push((p, v[&p].clone(), want));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts: {wrong:?}");
    assert_eq!(doc["counts"]["inbound_blocked"], inbound.len());
    assert_eq!(doc["counts"]["return_blocked"], ret.len());
}

#[test]
fn in_use_denied_and_reserved_ports() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &["--allow-ports", "2000-9500"]);
    let _holder = lab
        .server()
        .spawn(["socat", "UDP4-RECVFROM:9000,bind=198.18.0.2", "-"]);
    assert!(lab.server().wait_udp_bound(9000, Duration::from_secs(5)));
    let (o, doc) = ports_json(lab.client(), &["198.18.0.2", "1500,4000,9000,9001,9600"]);
    o.assert_code(1);
    let v = verdicts(&doc);
    assert_eq!(v[&1500], "denied_by_server");
    assert_eq!(
        v[&4000], "denied_by_server",
        "the server's own port is never handed out"
    );
    assert_eq!(v[&9000], "in_use_on_server");
    assert_eq!(v[&9001], "reachable");
    assert_eq!(v[&9600], "denied_by_server");
}

#[test]
fn a_port_held_by_another_session_is_in_use_and_freed_on_disconnect() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let server: std::net::SocketAddr = "198.18.0.2:4000".parse().unwrap();
    let mut other = RawSession::connect(lab.client(), server);
    let r = other.request(&ControlMsg::Open {
        ports: vec![30000, 30001],
    });
    assert!(
        matches!(r, ControlMsg::Opened { ref opened, .. } if opened == &vec![30000, 30001]),
        "{r:?}"
    );
    let (_, doc) = ports_json(lab.client(), &["198.18.0.2", "30000-30002"]);
    let v = verdicts(&doc);
    assert_eq!(v[&30000], "in_use_on_server");
    assert_eq!(v[&30001], "in_use_on_server");
    assert_eq!(v[&30002], "reachable");
    // The other session goes away: all its ports close at once.
    drop(other);
    assert!(lab::wait_until(Duration::from_secs(5), || {
        let (o, _) = ports_json(lab.client(), &["198.18.0.2", "30000-30002"]);
        o.code() == 0
    }));
}

#[test]
fn test_ports_answer_only_their_own_session() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let mut s = RawSession::connect(lab.client(), "198.18.0.2:4000".parse().unwrap());
    s.request(&ControlMsg::Open { ports: vec![31000] });
    let token = s.token;
    let answers = lab.client().enter(move || {
        let sock = std::net::UdpSocket::bind("198.18.0.1:0").unwrap();
        // Long enough that a slow reply is not read by the next round.
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut results = vec![];
        for t in [token, token ^ 1] {
            let mut probe = vec![0u8; 64];
            udpreach_wire::ProbeHeader::request(udpreach_wire::ProbeKind::PortProbe, t, 0)
                .encode(&mut probe)
                .unwrap();
            sock.send_to(&probe, "198.18.0.2:31000").unwrap();
            sock.send_to(b"plain bytes", "198.18.0.2:31000").unwrap();
            let mut buf = [0u8; 128];
            let mut got = 0;
            while let Ok(n) = sock.recv(&mut buf) {
                assert!(n <= 64, "a reply is never larger than its request");
                got += 1;
            }
            results.push(got);
        }
        results
    });
    assert_eq!(
        answers,
        vec![1, 0],
        "right token: one reply; wrong token and plain bytes: none"
    );
    match s.request(&ControlMsg::Arrivals { ports: vec![31000] }) {
        ControlMsg::ArrivalCounts { counts, .. } => assert_eq!(counts, vec![1]),
        other => panic!("{other:?}"),
    }
}

/// An arrivals answer counts every probe that reached a port before the
/// query, even those the server's test-port thread has not read yet: it
/// reads what waits in the sockets before it counts. (A first version of
/// that thread answered from what it had read so far; with 16 clients at
/// once it fell behind and reachable ports were called blocked.) The
/// probes and the query share the veth, so every probe is in its socket
/// before the query reaches the server.
#[test]
fn arrivals_count_every_probe_that_reached_the_port_before_the_query() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let mut s = RawSession::connect(lab.client(), "198.18.0.2:4000".parse().unwrap());
    let ports: Vec<u16> = (31000..31500).collect();
    match s.request(&ControlMsg::Open {
        ports: ports.clone(),
    }) {
        ControlMsg::Opened { opened, .. } => assert_eq!(opened.len(), ports.len()),
        other => panic!("{other:?}"),
    }
    let token = s.token;
    let targets = ports.clone();
    lab.client().enter(move || {
        let sock = std::net::UdpSocket::bind("198.18.0.1:0").unwrap();
        let mut probe = vec![0u8; 64];
        for seq in 0..4 {
            for &port in &targets {
                udpreach_wire::ProbeHeader::request(
                    udpreach_wire::ProbeKind::PortProbe,
                    token,
                    seq,
                )
                .encode(&mut probe)
                .unwrap();
                sock.send_to(&probe, ("198.18.0.2", port)).unwrap();
            }
        }
    });
    match s.request(&ControlMsg::Arrivals {
        ports: ports.clone(),
    }) {
        ControlMsg::ArrivalCounts { counts, .. } => {
            let short: Vec<(u16, u32)> = ports
                .iter()
                .copied()
                .zip(counts)
                .filter(|&(_, c)| c != 4)
                .collect();
            assert!(short.is_empty(), "ports not counted 4 times: {short:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_seed_legacy_client_still_works() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    // A client written from the seed's description: one JSON object per port,
    // no delimiter; then a 64-byte payload to the port, echoed back.
    let echoed = lab.client().enter(|| {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect("198.18.0.2:4000").unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let udp = std::net::UdpSocket::bind("198.18.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut results = vec![];
        for port in [32000u16, 32001, 80] {
            let req = format!(
                "{{\"proto\": \"udpping\", \"server\": \"198.18.0.2\", \"port\": {port}, \"available\": false}}"
            );
            tcp.write_all(req.as_bytes()).unwrap();
            let mut buf = [0u8; 4096];
            let n = tcp.read(&mut buf).unwrap();
            let ans: Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(ans["port"], port);
            if ans["available"] != true {
                results.push((port, false));
                continue;
            }
            let payload = [b'a'; 64];
            udp.send_to(&payload, ("198.18.0.2", port)).unwrap();
            let mut back = [0u8; 128];
            let ok = matches!(udp.recv_from(&mut back), Ok((64, from)) if from.port() == port && back[..64] == payload);
            results.push((port, ok));
        }
        results
    });
    assert_eq!(
        echoed,
        vec![(32000, true), (32001, true), (80, false)],
        "port 80 is outside the default --allow-ports"
    );
}

#[test]
fn ctrl_c_prints_results_so_far() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    lab.server()
        .drop_udp_dport_in(&(30000..30100).collect::<Vec<_>>());
    let bin = udpreach_bin().display().to_string();
    let p = lab.client().spawn([
        bin.as_str(),
        "ports",
        "198.18.0.2",
        "29900-30099",
        "--timeout",
        "5s",
    ]);
    // The reachable ports answer within milliseconds; the blocked ones
    // wait out their 5 s timeout: Ctrl+C falls between.
    std::thread::sleep(Duration::from_millis(3000));
    assert!(p.signal(SIGINT));
    let o = p
        .wait_output_timeout(Duration::from_secs(5))
        .expect("stops on Ctrl+C");
    o.assert_code(1);
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec!["reachable", "100", "29900-29999"]),
        "{out}"
    );
    assert!(
        rows.contains(&vec!["not_tested", "100", "30000-30099"]),
        "{out}"
    );
    assert!(stderr(&o).contains("interrupted"));
}

#[test]
fn no_server_is_exit_2_with_a_clear_message() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let o = udpreach(lab.client(), &["ports", "198.18.0.2", "5000"]);
    o.assert_code(2);
    let err = stderr(&o);
    assert!(err.contains("198.18.0.2:4000"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn session_cap_and_idle_timeout() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(
        lab.server(),
        // Long enough that the second client below surely comes while the
        // first session is still alive on a loaded machine.
        &["--max-sessions", "1", "--idle-timeout", "3s"],
    );
    let server: std::net::SocketAddr = "198.18.0.2:4000".parse().unwrap();
    let mut idle = RawSession::connect(lab.client(), server);
    idle.request(&ControlMsg::Open { ports: vec![23000] });
    // The only session slot is taken: a second client is told so, exit 2.
    let o = udpreach(lab.client(), &["ports", "198.18.0.2", "23001"]);
    o.assert_code(2);
    assert!(stderr(&o).contains("busy"), "{}", stderr(&o));
    // The silent session times out; its port and slot are freed.
    assert!(lab::wait_until(Duration::from_secs(10), || {
        code(&udpreach(lab.client(), &["ports", "198.18.0.2", "23000"])) == 0
    }));
}

#[test]
fn list_shows_every_port() {
    // -l/--list, not -v (issue 9 item 14: -v is log verbosity only; the
    // split is checked in tests/cli.rs).
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let o = udpreach(lab.client(), &["ports", "-l", "198.18.0.2", "5000-5002"]);
    o.assert_code(0);
    let out = stdout(&o);
    for p in 5000..=5002 {
        assert!(out.contains(&format!("port {p} reachable rtt=")), "{out}");
    }
}
