//! Authenticated mode and server policy, end to end on loopback: keys that
//! match and keys that don't, unauthenticated and replayed datagrams,
//! plain-echo limits, and key-file errors.

use crate::loopback;
use crate::util::{stderr, stdout};

use loopback::{key_file, run, server};
use std::net::UdpSocket;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use udpreach_wire::auth::{self, SharedKey};
use udpreach_wire::probe::{ProbeHeader, ProbeKind};

const KEY: &[u8] = b"a shared secret for the tests\n";
const T: Duration = Duration::from_secs(60);

fn keyed_server(port: u16, ports: &str) -> loopback::Running {
    let k = key_file(&format!("server-{port}"), KEY);
    server(
        port,
        &["--allow-ports", ports, "--key-file", k.to_str().unwrap()],
    )
}

#[test]
fn ports_with_the_right_key_works_and_a_wrong_key_fails_with_exit_2() {
    let _srv = keyed_server(24201, "24300-24399");
    let good = key_file("good", KEY);
    let out = run(
        &[
            "ports",
            "127.0.0.1:24201",
            "24300-24399",
            "-q",
            "--key-file",
            good.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(0);
    assert!(stdout(&out).contains("100 reachable"));

    // The same key from the environment (no trailing newline there).
    let secret = std::str::from_utf8(KEY).unwrap().trim_end();
    let out = run(
        &["ports", "127.0.0.1:24201", "24300-24309", "-q"],
        &[("UDPREACH_KEY", secret)],
        T,
    );
    out.assert_code(0);

    let wrong = key_file("wrong", b"not the shared secret\n");
    let out = run(
        &[
            "ports",
            "127.0.0.1:24201",
            "24300-24309",
            "--key-file",
            wrong.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(2);
    let err = stderr(&out);
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // No key at all against a server that requires one.
    let out = run(&["ports", "127.0.0.1:24201", "24300-24309"], &[], T);
    out.assert_code(2);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn keyed_client_refuses_a_server_without_a_key() {
    let _srv = server(24202, &["--allow-ports", "24400-24409"]);
    let good = key_file("good-2", KEY);
    let out = run(
        &[
            "ports",
            "127.0.0.1:24202",
            "24400-24409",
            "--key-file",
            good.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(2);
    let err = stderr(&out);
    assert!(
        err.contains("authentication failed") && err.contains("did not prove"),
        "{err}"
    );
}

#[test]
fn keyed_server_refuses_legacy_json_sessions() {
    use std::io::{Read, Write};
    let _srv = keyed_server(24203, "24500-24509");
    let mut c = std::net::TcpStream::connect("127.0.0.1:24203").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(br#"{"proto":"udpping","server":"127.0.0.1","port":24500,"available":false}"#)
        .unwrap();
    let mut buf = Vec::new();
    let n = c.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(
        n,
        0,
        "closed without an answer: {}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn keyed_ping_is_answered_and_a_wrong_key_fails_with_exit_2() {
    let _srv = keyed_server(24204, "24600-24609");
    let good = key_file("good-3", KEY);
    let out = run(
        &[
            "ping",
            "127.0.0.1:24204",
            "-c",
            "3",
            "-i",
            "0.05",
            "-s",
            "120",
            "--key-file",
            good.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(0);
    assert!(stdout(&out).contains("3 received"), "{}", stdout(&out));

    let wrong = key_file("wrong-3", b"another secret\n");
    let out = run(
        &[
            "ping",
            "127.0.0.1:24204",
            "-c",
            "3",
            "-s",
            "120",
            "--key-file",
            wrong.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(2);
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &[
            "ping",
            "127.0.0.1:24204",
            "-c",
            "1",
            "-s",
            "64",
            "--key-file",
            good.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(2);
    assert!(
        stderr(&out).contains("invalid size '64'"),
        "{}",
        stderr(&out)
    );
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// [`exchange`] for a datagram that must be answered: waits up to 2 s, so
/// a reply slowed by a loaded machine is neither missed nor read by the
/// next exchange.
fn answered(sock: &UdpSocket, datagram: &[u8]) -> Option<Vec<u8>> {
    let short = sock.read_timeout().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let reply = exchange(sock, datagram);
    sock.set_read_timeout(short).unwrap();
    reply
}

/// Sends `datagram` and returns the reply, if one comes within the
/// socket's read timeout (300 ms: what must stay silent).
fn exchange(sock: &UdpSocket, datagram: &[u8]) -> Option<Vec<u8>> {
    sock.send(datagram).unwrap();
    let mut buf = vec![0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn keyed_echo_drops_plain_untagged_forged_and_replayed_datagrams() {
    let _srv = keyed_server(24205, "24700-24709");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect("127.0.0.1:24205").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let secret = SharedKey::from_file_contents(KEY.to_vec()).unwrap();
    let token = 0x1234_5678;
    let key = secret.ping_key(token);
    let probe = |seq: u64, sealed_with: Option<&auth::DerivedKey>| {
        let mut b = vec![b'p'; 100];
        ProbeHeader::request(ProbeKind::EchoRequest, token, seq)
            .encode(&mut b)
            .unwrap();
        if let Some(k) = sealed_with {
            auth::set_sent_ns(&mut b, now_ns());
            k.seal(&mut b).unwrap();
        }
        b
    };

    assert_eq!(
        exchange(&sock, b"plain datagram"),
        None,
        "no plain echo with a key"
    );
    assert_eq!(exchange(&sock, &probe(1, None)), None, "untagged probe");
    let forged = SharedKey::new(b"guess".to_vec()).unwrap().ping_key(token);
    assert_eq!(exchange(&sock, &probe(2, Some(&forged))), None, "wrong key");

    let good = probe(3, Some(&key));
    let reply = answered(&sock, &good).expect("an authenticated probe is answered");
    assert_eq!(reply.len(), good.len(), "same size");
    key.verify(&reply).expect("the reply carries a valid tag");
    assert_eq!(
        ProbeHeader::decode(&reply).unwrap().kind,
        ProbeKind::EchoReply
    );
    assert_eq!(
        exchange(&sock, &good),
        None,
        "a replayed probe gets no reply"
    );

    let mut tampered = probe(4, Some(&key));
    tampered[70] ^= 1;
    assert_eq!(exchange(&sock, &tampered), None, "tampered payload");
    assert!(
        answered(&sock, &probe(5, Some(&key))).is_some(),
        "still serving"
    );
}

#[test]
fn plain_echo_is_rate_limited_per_source_and_can_be_switched_off() {
    let _srv = server(
        24206,
        &["--plain-echo-rate", "20", "--allow-ports", "24800-24809"],
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect("127.0.0.1:24206").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..200 {
        sock.send(b"hello hello").unwrap();
    }
    let mut replies = 0;
    let mut buf = [0u8; 64];
    while let Ok(n) = sock.recv(&mut buf) {
        assert_eq!(&buf[..n], b"hello hello");
        replies += 1;
    }
    println!("plain echo: 200 sent in a burst, {replies} answered at --plain-echo-rate 20");
    // 20 at once, then 20/s: a stall of the burst's sender refills a few.
    assert!((20..=30).contains(&replies), "{replies} replies");

    let _quiet = server(24207, &["--no-plain-echo", "--allow-ports", "24810-24819"]);
    let s2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    s2.connect("127.0.0.1:24207").unwrap();
    s2.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(exchange(&s2, b"plain"), None);
    // udpreach probes are still answered.
    let out = run(
        &["ping", "127.0.0.1:24207", "-c", "2", "-i", "0.05", "-q"],
        &[],
        T,
    );
    out.assert_code(0);
}

#[test]
fn max_datagram_drops_larger_datagrams() {
    let _srv = server(
        24208,
        &["--max-datagram", "1000", "--allow-ports", "24820-24829"],
    );
    let ok = run(
        &["ping", "127.0.0.1:24208", "-c", "1", "-s", "1000", "-q"],
        &[],
        T,
    );
    ok.assert_code(0);
    let big = run(
        &[
            "ping",
            "127.0.0.1:24208",
            "-c",
            "1",
            "-s",
            "1001",
            "-W",
            "0.3",
            "-q",
        ],
        &[],
        T,
    );
    // No reply: exit 1.
    big.assert_code(1);
}

#[test]
fn key_errors_name_the_path_and_exit_2() {
    let empty = key_file("empty", b"\n");
    let out = run(
        &[
            "ping",
            "127.0.0.1:24209",
            "-c",
            "1",
            "--key-file",
            empty.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("key file '{}' is empty", empty.display())),
        "{err}"
    );

    let out = run(
        &[
            "server",
            "--listen",
            "127.0.0.1:24209",
            "--key-file",
            "/nonexistent/udpreach.key",
        ],
        &[],
        T,
    );
    out.assert_code(2);
    assert!(stderr(&out).contains("cannot read key file '/nonexistent/udpreach.key'"));

    let out = run(
        &["ports", "127.0.0.1:24209", "5000"],
        &[("UDPREACH_KEY", "")],
        T,
    );
    out.assert_code(2);
    assert!(stderr(&out).contains("UDPREACH_KEY is set but empty"));
}
