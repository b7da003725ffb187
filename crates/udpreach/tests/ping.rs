//! End-to-end tests of `udpreach ping` and the echo side of `udpreach server`,
//! run as real processes in network namespaces.

mod lab;
mod util;

use lab::{require_root, udpreach_bin, Lab, SIGINT};
use std::time::Duration;
use util::*;

#[test]
fn loopback_v4_and_v6_against_udpreach_server() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    for target in ["127.0.0.1", "[::1]:4000"] {
        let o = udpreach(
            lab.server(),
            &["ping", "-c", "5", "-i", "20ms", "--json-lines", target],
        );
        o.assert_code(0);
        let s = summary(&o);
        assert_eq!(s["transmitted"], 5);
        assert_eq!(s["received"], 5);
        assert_eq!(s["upstream_lost"], 0);
        assert_eq!(s["downstream_lost"], 0);
        assert_eq!(s["nat_detected"], false);
        assert!(s["server_processing"]["avg_us"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["server_seen_ttl"], 64);
    }
}

#[test]
fn text_output_looks_like_ping() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let o = udpreach(
        lab.client(),
        &["ping", "-c", "3", "-i", "10ms", "198.18.0.2"],
    );
    o.assert_code(0);
    let out = stdout(&o);
    assert!(out.contains("198.18.0.1:"), "{out}");
    assert!(
        out.contains("-> 198.18.0.2:4000 seq=0 bytes=64 time="),
        "{out}"
    );
    assert!(out.contains("ttl=64"), "{out}");
    assert!(out.contains("--- 198.18.0.2 statistics ---"), "{out}");
    assert!(out.contains("3 packets transmitted, 3 received"), "{out}");
    assert!(out.contains("rtt min/avg/max/mdev = "), "{out}");
    assert!(out.contains("rtt p50/p90/p99 = "), "{out}");
    assert!(out.contains("saw you as 198.18.0.1:"), "{out}");
    assert!(!out.contains("NAT"), "{out}");
}

#[test]
fn plain_echo_server_socat() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _socat = lab
        .server()
        .spawn(["socat", "UDP4-RECVFROM:7000,fork,reuseaddr", "PIPE"]);
    assert!(lab.server().wait_udp_bound(7000, Duration::from_secs(5)));
    for size in ["16", "64", "1000"] {
        let o = udpreach(
            lab.client(),
            &[
                "ping",
                "-c",
                "4",
                "-i",
                "50ms",
                "-s",
                size,
                "--json-lines",
                "198.18.0.2:7000",
            ],
        );
        o.assert_code(0);
        let s = summary(&o);
        assert_eq!(s["received"], 4, "size {size}");
        // A plain echo server has no counters: no direction split, no server view.
        assert!(s["upstream_lost"].is_null());
        assert!(s["server_saw"].is_null());
    }
}

#[test]
fn return_loss_is_reported_downstream() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    // 20% of UDP arriving at the client is dropped: only replies are affected.
    lab.client().drop_udp_in_percent(20);
    let n = 600;
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            &n.to_string(),
            "-i",
            "1ms",
            "-W",
            "300ms",
            "-q",
            "--json-lines",
            "198.18.0.2",
        ],
    );
    o.assert_code(0);
    let s = summary(&o);
    let down = s["downstream_lost"].as_u64().unwrap();
    let up = s["upstream_lost"].as_u64().unwrap();
    let unknown = s["direction_unknown"].as_u64().unwrap();
    let lost = s["lost"].as_u64().unwrap();
    // Binomial(600, 0.2): mean 120, sd ~9.8; allow over 5 sd either way.
    assert!((70..=170).contains(&down), "downstream {down}: {s}");
    assert_eq!(up, 0, "{s}");
    // Only losses after the last reply: 20 % loss, 9 in a row is 5e-7.
    assert!(unknown <= 8, "{s}");
    assert_eq!(lost, up + down + unknown);
}

#[test]
fn snat_through_router_is_reported() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let r = lab.router();
    r.snat_forward_masquerade(&r.iface_toward(lab.server()).name);
    let _server = start_server(lab.server(), &[]);
    let target = lab.server().ip4().to_string();
    let o = udpreach(lab.client(), &["ping", "-c", "3", "-i", "20ms", &target]);
    o.assert_code(0);
    let out = stdout(&o);
    assert!(
        out.contains("NAT or proxy in the path: server sees you as 198.18.2.254:"),
        "{out}"
    );
    assert!(out.contains("with TTL 63"), "{out}");
    let o = udpreach(
        lab.client(),
        &["ping", "-c", "2", "-i", "20ms", "--json-lines", &target],
    );
    let s = summary(&o);
    assert_eq!(s["nat_detected"], true);
    assert!(s["server_saw"]
        .as_str()
        .unwrap()
        .starts_with("198.18.2.254:"));
}

#[test]
fn ctrl_c_prints_statistics_and_exits_zero() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let bin = udpreach_bin().display().to_string();
    let p = lab
        .client()
        .spawn([bin.as_str(), "ping", "-i", "50ms", "198.18.0.2"]);
    assert!(lab::wait_until(Duration::from_secs(10), || p
        .stdout_so_far()
        .contains("seq=3 ")));
    assert!(p.signal(SIGINT));
    let o = p
        .wait_output_timeout(Duration::from_secs(5))
        .expect("exits after Ctrl+C");
    o.assert_code(0);
    assert!(stdout(&o).contains("--- 198.18.0.2 statistics ---"));
}

#[test]
fn ctrl_c_works_while_every_probe_times_out() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    // No server at all: a long timeout must not delay Ctrl+C (the seed's issue 1).
    let bin = udpreach_bin().display().to_string();
    let p = lab
        .client()
        .spawn([bin.as_str(), "ping", "-W", "30s", "-i", "10s", "198.18.0.2"]);
    // The header is printed once Ctrl+C is handled and the first probe is due.
    let started = std::time::Instant::now();
    while !p.stdout_so_far().contains('\n') && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(p.signal(SIGINT));
    let o = p
        .wait_output_timeout(Duration::from_secs(3))
        .expect("Ctrl+C stops at once");
    // No reply: exit 1.
    o.assert_code(1);
    assert!(stdout(&o).contains("1 packets transmitted, 0 received"));
}

#[test]
fn sport_sweep_reports_the_blocked_source_port() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    lab.server().drop_udp_sport_in(&[20005]);
    // A port already in use locally is reported and skipped.
    let _holder = lab
        .client()
        .spawn(["socat", "UDP4-RECVFROM:20007,bind=0.0.0.0", "-"]);
    assert!(lab.client().wait_udp_bound(20007, Duration::from_secs(5)));
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "--sport",
            "20000-20010",
            "-i",
            "5ms",
            "-W",
            "300ms",
            "--json-lines",
            "198.18.0.2",
        ],
    );
    o.assert_code(0);
    let s = summary(&o);
    assert_eq!(s["silent_source_ports"], serde_json::json!([20005]), "{s}");
    assert_eq!(s["skipped_source_ports"], serde_json::json!([20007]), "{s}");
    assert_eq!(s["received"], 9);
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "--sport",
            "20000-20010",
            "-i",
            "5ms",
            "-W",
            "300ms",
            "-q",
            "198.18.0.2",
        ],
    );
    let out = stdout(&o);
    assert!(out.contains("source ports with no reply: 20005"), "{out}");
    assert!(
        out.contains("source ports in use locally, skipped: 20007"),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let h = lab.client();
    let cases: &[(&[&str], &str)] = &[
        (&["ping", "198.18.0.2:0"], "'0'"),
        (&["ping", "198.18.0.2:65536"], "'65536'"),
        (&["ping", "198.18.0.2:abc"], "'abc'"),
        (&["ping", "-s", "70000", "198.18.0.2"], "'70000'"),
        (&["ping", "-s", "65508", "198.18.0.2"], "'65508'"),
        (&["ping", "-i", "0", "198.18.0.2"], "'0'"),
        (&["ping", "-c", "abc", "198.18.0.2"], "'abc'"),
        (&["ping", "no-such-host.invalid"], "no-such-host.invalid"),
        (&["ping", "--sport", "5-2", "198.18.0.2"], "'5-2'"),
        (&["ports", "198.18.0.2", "1,x"], "'x'"),
        (&["server", "--listen", "nonsense"], "'nonsense'"),
        (&["ping", "--ecn", "ect2", "198.18.0.2"], "'ect2'"),
        (&["ping", "--dscp", "46", "-s", "32", "198.18.0.2"], "'32'"),
        (&["trace", "198.18.0.2", "-p", "1", "--size", "20"], "'20'"),
        (
            &["trace", "198.18.0.2", "-p", "1-100", "--size", "9000"],
            "'9000'",
        ),
        (
            &[
                "trace",
                "198.18.0.2",
                "-p",
                "1",
                "--no-server",
                "--key-file",
                "/nonexistent",
            ],
            "--key-file",
        ),
    ];
    for (args, needle) in cases {
        let o = udpreach(h, args);
        o.assert_code(2);
        let err = stderr(&o);
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.contains(needle),
            "{args:?}: first line {first:?} lacks {needle}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn server_reports_a_taken_port_and_exits_2() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _first = start_server(lab.server(), &[]);
    let o = udpreach(lab.server(), &["server", "--listen", "127.0.0.1:4000"]);
    o.assert_code(2);
    assert!(stderr(&o).contains("127.0.0.1:4000"), "{}", stderr(&o));
}

#[test]
fn server_exits_cleanly_on_sigterm() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let server = start_server(lab.server(), &[]);
    assert!(server.signal(lab::SIGTERM));
    let o = server
        .wait_output_timeout(Duration::from_secs(5))
        .expect("server stops");
    o.assert_code(0);
}

#[test]
fn ttl_dscp_and_df_options_take_effect() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    // --ttl: the server reports the TTL our probes arrived with.
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "10ms",
            "--ttl",
            "7",
            "--json-lines",
            "198.18.0.2",
        ],
    );
    assert_eq!(summary(&o)["server_seen_ttl"], 7);
    // --dscp: the server drops unmarked probes, so only marked ones get replies.
    lab.server().nft(
        "table inet dscp {\n chain input {\n  type filter hook input priority 0;\n  udp dport 4000 ip dscp != ef drop\n }\n}\n",
    );
    let o = udpreach(
        lab.client(),
        &["ping", "-c", "2", "-i", "10ms", "-W", "200ms", "198.18.0.2"],
    );
    // Unmarked probes are dropped.
    o.assert_code(1);
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "10ms",
            "--dscp",
            "46",
            "198.18.0.2",
        ],
    );
    // EF-marked probes pass.
    o.assert_code(0);
    // --df: a datagram over the link MTU is refused locally instead of fragmented.
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "1",
            "-s",
            "2000",
            "--df",
            "--dscp",
            "46",
            "-W",
            "200ms",
            "--json-lines",
            "198.18.0.2",
        ],
    );
    let lines = json_lines(&o);
    assert!(
        lines.iter().any(|l| l["type"] == "send_error"),
        "{}",
        stdout(&o)
    );
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "1",
            "-s",
            "2000",
            "--dscp",
            "46",
            "-W",
            "500ms",
            "198.18.0.2",
        ],
    );
    // Without --df it is fragmented and passes.
    o.assert_code(0);
}

/// `--dscp 46 --ecn ect0` through client - r1 - r2 - server: r1 rewrites the
/// DSCP of what comes from the client (upstream) to 0; r2 rewrites what
/// comes from the server (downstream) to DSCP 10 and ECN CE. The server
/// reports what its probes arrived with and marks its replies as asked, so
/// each rewrite shows in its own direction only, for IPv4 and IPv6.
#[test]
fn dscp_and_ecn_rewrites_show_in_the_direction_they_happen() {
    if !require_root() {
        return;
    }
    let lab = Lab::chain();
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0;\n  iifname \"r1-c\" ip dscp set cs0\n  iifname \"r1-c\" ip6 dscp set cs0\n }\n}",
    );
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0;\n  iifname \"r2-s\" ip dscp set af11\n  iifname \"r2-s\" ip ecn set ce\n  iifname \"r2-s\" ip6 dscp set af11\n  iifname \"r2-s\" ip6 ecn set ce\n }\n}",
    );
    let _server = start_server(lab.server(), &[]);
    for target in [
        lab.server().ip4().to_string(),
        format!("[{}]:4000", lab.server().ip6()),
    ] {
        let o = udpreach(
            lab.client(),
            &[
                "ping",
                "-c",
                "3",
                "-i",
                "20ms",
                "--dscp",
                "46",
                "--ecn",
                "ect0",
                "--json-lines",
                &target,
            ],
        );
        o.assert_code(0);
        for r in json_lines(&o).iter().filter(|l| l["type"] == "reply") {
            assert_eq!(r["marks"]["at_server"]["dscp"], 0, "{r}");
            assert_eq!(r["marks"]["here"]["dscp"], 10, "{r}");
            assert_eq!(r["marks"]["here"]["ecn"], 3, "{r}");
        }
        let m = &summary(&o)["marks"];
        assert_eq!(m["sent"]["dscp"], 46, "{target}: {m:#}");
        assert_eq!(m["sent"]["ecn"], 2, "{target}: {m:#}");
        assert_eq!(m["upstream"]["arrived"]["dscp"], 0, "{target}: {m:#}");
        assert_eq!(m["upstream"]["arrived"]["ecn"], 2, "{target}: {m:#}");
        // Every reply that came back saw the rewrite (a loaded machine may lose one).
        let replies = m["upstream"]["replies"].as_u64().unwrap();
        assert!(replies >= 1, "{target}: {m:#}");
        assert_eq!(m["upstream"]["dscp_changed"], replies, "{target}: {m:#}");
        assert_eq!(m["downstream"]["arrived"]["dscp"], 10, "{target}: {m:#}");
        assert_eq!(m["downstream"]["arrived"]["ecn"], 3, "{target}: {m:#}");
        assert_eq!(m["downstream"]["ecn_changed"], replies, "{target}: {m:#}");
        assert_eq!(m["replies_without_report"], 0, "{target}: {m:#}");
        let text = udpreach(
            lab.client(),
            &[
                "ping", "-c", "2", "-i", "20ms", "-q", "--dscp", "46", "--ecn", "ect0", &target,
            ],
        );
        text.assert_code(0);
        let out = stdout(&text);
        assert!(
            out.contains("dscp 46 -> 0 arrived (upstream), 46 -> 10 (downstream)"),
            "{out}"
        );
        assert!(
            out.contains("ecn ect0 -> ect0 arrived (upstream), ect0 -> ce (downstream)"),
            "{out}"
        );
    }
}

/// A plain echo server reflects the request as it is: the downstream
/// marking is still measured, the upstream one is "could not tell".
#[test]
fn dscp_against_a_plain_echo_server_says_upstream_is_unknown() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _echo = socat_echo(lab.server(), 7007);
    let o = udpreach(
        lab.client(),
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "20ms",
            "-q",
            "--dscp",
            "46",
            "198.18.0.2:7007",
        ],
    );
    o.assert_code(0);
    let out = stdout(&o);
    assert!(out.contains("dscp 46 -> ? arrived (upstream)"), "{out}");
    assert!(out.contains("upstream dscp/ecn: could not tell"), "{out}");
}

/// Runs `udpreach ping ARGS -q --json-lines 198.18.0.2` against a server
/// that is stopped for 150 ms, 400 ms into the run (as a busy machine's
/// scheduler may keep its echo worker off the CPU); returns the summary.
fn ping_through_a_stalled_server(args: &[&str]) -> serde_json::Value {
    let lab = Lab::pair();
    let server = start_server(lab.server(), &["--reply-budget", "100000"]);
    let pid = server.pid().to_string();
    let stall = std::thread::spawn(move || {
        let signal = |s: &str| {
            let _ = std::process::Command::new("kill")
                .args([s, pid.as_str()])
                .status();
        };
        std::thread::sleep(Duration::from_millis(400));
        signal("-STOP");
        std::thread::sleep(Duration::from_millis(150));
        signal("-CONT");
    });
    let mut argv = vec!["ping"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-q", "--json-lines", "198.18.0.2"]);
    let o = udpreach(lab.client(), &argv);
    stall.join().unwrap();
    o.assert_code(0);
    summary(&o)
}

/// The server's own receive buffer is not network loss: with the server
/// stopped for 150 ms, 5,000 probes/s queue up, about 750 of them, and
/// all are answered when it runs again. With the kernel's default buffer
/// (about 270 such datagrams) the rest were dropped at the server and
/// reported as upstream loss.
#[test]
fn a_stalled_server_loses_no_probe() {
    if !require_root() {
        return;
    }
    let s = ping_through_a_stalled_server(&["-c", "5000", "-i", "200us"]);
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["received"], 5000, "{s}");
}

/// Our own receive buffer is not network loss either: with the server
/// stopped for 150 ms under 2,000 probes/s, about 300 replies come back in
/// one burst, far more than the smallest receive buffer holds. The kernel
/// counts what it dropped (with later datagrams, `SO_RXQ_OVFL`, and in its
/// socket table); ping reports those as `local_drops`, and nothing is lost
/// on a veth that loses nothing (before, each of them was counted lost).
#[test]
fn replies_our_full_buffer_dropped_are_not_loss() {
    if !require_root() {
        return;
    }
    let s = ping_through_a_stalled_server(&["-c", "2000", "-i", "500us", "--recv-buffer", "4096"]);
    let n = |k: &str| s[k].as_u64().unwrap();
    assert!(n("local_drops") > 0, "the burst did not overflow: {s}");
    assert_eq!(n("lost"), 0, "{s}");
    assert_eq!(n("downstream_lost"), 0, "{s}");
    assert_eq!(
        n("received") + n("late") + n("local_drops"),
        n("transmitted"),
        "{s}"
    );
}
