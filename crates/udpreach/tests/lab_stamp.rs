//! STAMP interop in namespaces (issue 14): stamp-suite's sender against
//! `udpreach server --stamp`, `udpreach ping --stamp` against stamp-suite's
//! stateless and stateful reflectors, open and authenticated, with loss on
//! the return path; and the bytes on the wire at the RFC's offsets.
//!
//! stamp-suite comes from the crate registry (`.ci/run` installs it with
//! `cargo install` when missing); these tests fail, not skip, without it.

mod lab;
mod util;

use lab::{require_root, Host, Lab};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;
use udpreach_wire::stamp::{
    find_cos, ClassOfService, ErrorEstimate, Mode, ReflectorPacket, SenderPacket, OPEN_LEN,
};
use util::*;

/// 32 key bytes, as a udpreach key file holds them and as stamp-suite's
/// `--hmac-key` takes them (hex).
const KEY: &[u8] = b"stamp-interop-key-0123456789abcd";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A key file only this test process uses (removed when dropped).
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(name: &str) -> KeyFile {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("udpreach-stamp-{name}-{}", std::process::id()));
        std::fs::write(&p, KEY).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        KeyFile(p)
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits until nothing holds UDP `port` in `host` (a reflector that was stopped).
fn wait_port_free(host: &Host, port: u16) {
    let filter = format!("sport = :{port}");
    assert!(
        lab::wait_until(Duration::from_secs(5), || {
            host.run(["ss", "-Hlun", filter.as_str()]).stdout.is_empty()
        }),
        "UDP {port} still bound"
    );
}

/// stamp-suite's sender: its closing JSON statistics.
fn stamp_suite_sender(client: &Host, server: &Host, extra: &[&str]) -> Value {
    let mut argv = vec![
        stamp_suite().display().to_string(),
        "--remote-addr".into(),
        server.ip4().to_string(),
        "--remote-port".into(),
        "862".into(),
        "--local-port".into(),
        "8620".into(),
        "-c".into(),
        "50".into(),
        "-d".into(),
        "10".into(),
        "-L".into(),
        "1".into(),
        "--output-format".into(),
        "json".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let o = client
        .run_timeout(&argv, Duration::from_secs(60))
        .unwrap_or_else(|t| panic!("stamp-suite sender timed out: {:?}", t.output));
    let out = stdout(&o);
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON from stamp-suite: {out}\n{}", stderr(&o)))
}

fn assert_all_returned(stats: &Value) {
    assert_eq!(stats["packets_sent"], 50, "{stats}");
    assert_eq!(stats["packets_received"], 50, "{stats}");
    assert_eq!(stats["packets_lost"], 0, "{stats}");
    let avg = stats["avg_rtt_ms"].as_f64().unwrap();
    assert!(avg > 0.0 && avg < 100.0, "RTT {avg} ms: {stats}");
}

#[test]
fn stamp_suite_sender_against_udpreach_reflector_open_and_cos() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let _r = udpreach_reflector(server, &[]);
    assert_all_returned(&stamp_suite_sender(client, server, &[]));
    // With the Class of Service TLV the reply carries the DSCP asked for:
    // count what arrives at the client from port 862 with DSCP 46.
    client.nft(
        "table inet stampcos {\n  counter ef {}\n  chain input {\n    type filter hook input priority 0;\n    udp sport 862 ip dscp 46 counter name ef\n  }\n}\n",
    );
    assert_all_returned(&stamp_suite_sender(
        client,
        server,
        &["--cos", "--dscp", "46"],
    ));
    let rules = client.nft_ruleset();
    let counted = rules
        .split("counter ef")
        .nth(1)
        .and_then(|s| s.split("packets ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no counter in {rules}"));
    assert_eq!(counted, 50, "{rules}");
}

#[test]
fn stamp_suite_sender_against_udpreach_reflector_authenticated() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let kf = KeyFile::new("reflector");
    let key = kf.path();
    let _r = udpreach_reflector(server, &["--key-file", &key]);
    let k = hex(KEY);
    assert_all_returned(&stamp_suite_sender(
        client,
        server,
        &["-A", "A", "--hmac-key", &k],
    ));
    // Another key: nothing comes back (the reflector answers no forged packet).
    let other = hex(b"another-key-another-key-01234567");
    let stats = stamp_suite_sender(client, server, &["-A", "A", "--hmac-key", &other]);
    assert_eq!(stats["packets_received"], 0, "{stats}");
}

fn ping_stamp(client: &Host, server: &Host, extra: &[&str]) -> (Value, Value) {
    let target = server.ip4().to_string();
    let mut args = vec![
        "ping", "--stamp", "-c", "300", "-i", "2ms", "-W", "500ms", "--json",
    ];
    args.extend_from_slice(extra);
    args.push(&target);
    let o = udpreach(client, &args);
    assert!(code(&o) <= 1, "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    (doc["summary"].clone(), doc["summary"]["stamp"].clone())
}

#[test]
fn udpreach_sender_against_stamp_suite_stateful_and_stateless() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    // 20% loss on the return path only.
    client.drop_udp_in_percent(20);

    let r = stamp_suite_reflector(server, 862, &["--stateful-reflector"]);
    let (s, st) = ping_stamp(client, server, &[]);
    drop(r);
    assert_eq!(st["reflector"], "stateful", "{st}");
    let lost = s["lost"].as_u64().unwrap();
    assert!((30..=100).contains(&lost), "{s}");
    let unknown = s["direction_unknown"].as_u64().unwrap();
    // Only losses after the last reply: 20 % loss, 9 in a row is 5e-7.
    assert!(unknown <= 8, "{s}");
    assert_eq!(s["upstream_lost"], 0, "{s}");
    assert_eq!(
        s["downstream_lost"].as_u64().unwrap() + unknown,
        lost,
        "{s}"
    );
    assert_eq!(s["server_seen_ttl"], 64, "{s}");
    assert!(s["rtt"]["p50_ms"].as_f64().unwrap() < 50.0, "{s}");

    // Wait until the stateful reflector has released the port.
    wait_port_free(server, 862);
    let _r = stamp_suite_reflector(server, 862, &[]);
    let (s, st) = ping_stamp(client, server, &[]);
    assert_eq!(st["reflector"], "stateless", "{st}");
    let lost = s["lost"].as_u64().unwrap();
    assert!((30..=100).contains(&lost), "{s}");
    assert_eq!(s["upstream_lost"], Value::Null, "{s}");
    assert_eq!(s["downstream_lost"], Value::Null, "{s}");
    assert_eq!(s["direction_unknown"].as_u64().unwrap(), lost, "{s}");
}

#[test]
fn udpreach_sender_against_stamp_suite_authenticated_with_cos() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let kf = KeyFile::new("sender");
    let key = kf.path();
    let k = hex(KEY);
    let _r = stamp_suite_reflector(server, 862, &["-A", "A", "--hmac-key", &k]);
    let (s, st) = ping_stamp(client, server, &["--key-file", &key, "--dscp", "46"]);
    assert_eq!(s["received"], 300, "{s}");
    assert_eq!(st["mode"], "authenticated", "{st}");
    assert_eq!(st["ignored"], 0, "{st}");
    let cos = &st["class_of_service"];
    assert_eq!(cos["sent_dscp"], 46, "{st}");
    assert_eq!(cos["reflector_saw_dscp"], 46, "{st}");
}

#[test]
fn udpreach_sender_against_udpreach_reflector_splits_loss() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let _r = udpreach_reflector(server, &[]);
    // 20% loss on the way to the reflector: upstream, not downstream.
    server.drop_udp_in_percent(20);
    let (s, st) = ping_stamp(client, server, &["--dscp", "10"]);
    assert_eq!(st["reflector"], "stateful", "{st}");
    let lost = s["lost"].as_u64().unwrap();
    assert!((30..=100).contains(&lost), "{s}");
    // Losses after the last reply have no counter behind them: unknown.
    let unknown = s["direction_unknown"].as_u64().unwrap();
    // Only losses after the last reply: 20 % loss, 9 in a row is 5e-7.
    assert!(unknown <= 8, "{s}");
    assert_eq!(s["upstream_lost"].as_u64().unwrap() + unknown, lost, "{s}");
    assert_eq!(s["downstream_lost"], 0, "{s}");
    let cos = &st["class_of_service"];
    assert_eq!(
        (&cos["reflector_saw_dscp"], &cos["reply_dscp"]),
        (&Value::from(10), &Value::from(10)),
        "{st}"
    );
}

/// Sends one request from inside the client's namespace and returns the
/// reply's bytes.
fn exchange(client: &Host, to: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    client.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            s.send_to(&request, to).unwrap();
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
        }
        panic!("no reply from {to}");
    })
}

/// Checks captured reply bytes field by field at RFC 8762's offsets
/// (Figure 4, with RFC 8972's SSID) against the request.
fn check_open_reply(req: &[u8], reply: &[u8]) {
    assert_eq!(reply.len(), req.len(), "same size as the request");
    assert_eq!(&reply[24..28], &req[0..4], "sender seq at 24");
    assert_eq!(&reply[28..36], &req[4..12], "sender timestamp at 28");
    assert_eq!(&reply[36..38], &req[12..14], "sender error estimate at 36");
    assert_eq!(&reply[14..16], &req[14..16], "SSID at 14");
    assert_eq!(reply[40], 64, "sender TTL at 40 (one hop, sent with 64)");
    assert_eq!(&reply[38..40], &[0, 0], "MBZ at 38");
    assert_eq!(&reply[41..44], &[0, 0, 0], "MBZ at 41");
    let r = ReflectorPacket::decode(reply, Mode::Open).unwrap();
    let rx = r.error_estimate.format().decode(r.receive_timestamp);
    let tx = r.error_estimate.format().decode(r.timestamp);
    let now = udpreach_wire::stamp::TimestampFormat::Ntp.decode(
        udpreach_wire::stamp::TimestampFormat::Ntp.encode(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        ),
    );
    assert!(rx <= tx && tx - rx < 1_000_000_000, "rx {rx} tx {tx}");
    assert!(
        now.abs_diff(rx) < 10_000_000_000,
        "receive timestamp is now"
    );
    let cos = find_cos(&reply[OPEN_LEN..]).expect("CoS TLV echoed");
    assert_eq!((cos.dscp1, cos.dscp2), (46, 0), "sent with DSCP 0");
}

#[test]
fn reply_bytes_match_the_rfc_layout_from_both_reflectors() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let mut req = Vec::new();
    SenderPacket {
        seq: 0x0102_0304,
        timestamp: 0xe800_0000_1234_5678,
        error_estimate: ErrorEstimate(0x0001),
        ssid: 0xbeef,
    }
    .encode(None, &ClassOfService::request_tlv(46, 0), &mut req);
    let to = SocketAddr::new(server.ip4().into(), 862);
    let r = udpreach_reflector(server, &[]);
    let ours = exchange(client, to, req.clone());
    check_open_reply(&req, &ours);
    assert_eq!(
        &ours[0..4],
        &[0, 0, 0, 0],
        "stateful: our own counter from 0"
    );
    drop(r);
    wait_port_free(server, 862);
    let _r = stamp_suite_reflector(server, 862, &[]);
    let theirs = exchange(client, to, req.clone());
    check_open_reply(&req, &theirs);
    assert_eq!(&theirs[0..4], &req[0..4], "stateless: the sender's number");
}

/// Bad STAMP options: one line naming the value, exit 2, nothing sent.
#[test]
fn stamp_usage_errors_are_one_line_exit_2() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["ping", "--stamp", "-s", "46", "127.0.0.1"],
            "udpreach: invalid size '46': STAMP packets need 44 bytes, or at least 48 (with a padding TLV)",
        ),
        (
            &["ping", "--stamp", "--ssid", "0", "127.0.0.1"],
            "udpreach: invalid SSID '0': must be a whole number 1..=65535",
        ),
        (
            &["ping", "--stamp", "--sport", "5000", "127.0.0.1"],
            "udpreach: the argument '--stamp' cannot be used with '--sport <PORT|RANGE>'",
        ),
        (
            &["server", "--stamp", "127.0.0.1:0"],
            "udpreach: invalid listen address '127.0.0.1:0': port 0",
        ),
    ];
    for (args, want) in cases {
        let o = std::process::Command::new(lab::udpreach_bin())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{args:?}");
        assert_eq!(stderr(&o).trim_end(), want, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}
