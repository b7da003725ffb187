//! Self-test of the network-namespace lab (`tests/lab/mod.rs`), using socat
//! as UDP server and client inside the namespaces.

mod lab;
mod util;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use lab::{CommandOutput, Host, Lab, Proc};
use util::{stderr, stdout};

const PORT: u16 = 7;

/// Dual-stack socat UDP server on `PORT` answering each datagram with the
/// output of `reply` (a socat address, e.g. `PIPE` for echo); `-v` logs
/// every received datagram to its stderr.
fn udp_server(host: &Host, reply: &str) -> Proc {
    let p = host.spawn([
        "socat",
        "-v",
        "-b",
        "65536",
        &format!("UDP6-RECVFROM:{PORT},fork"),
        reply,
    ]);
    assert!(
        host.wait_udp_bound(PORT, Duration::from_secs(5)),
        "socat did not bind: {}",
        p.stderr_so_far()
    );
    p
}

/// socat address of `ip` port `PORT`.
fn target(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("UDP4:{a}:{PORT}"),
        IpAddr::V6(a) => format!("UDP6:[{a}]:{PORT}"),
    }
}

/// Sends `payload` as one datagram from `host` to `ip` and collects what comes
/// back within `wait` seconds.
fn ask(host: &Host, ip: IpAddr, payload: &[u8], wait: &str) -> CommandOutput {
    host.run_input(
        [
            "timeout",
            "5",
            "socat",
            "-b",
            "65536",
            "-t",
            wait,
            "-",
            &target(ip),
        ],
        payload,
    )
}

/// Asks and expects the reply `want`.
fn expect_reply(host: &Host, ip: IpAddr, payload: &[u8], want: &str) {
    let o = ask(host, ip, payload, "1");
    o.assert_success();
    assert_eq!(stdout(&o), want, "reply from {ip}");
}

/// Asks and expects silence (no reply, no error).
fn expect_silence(host: &Host, ip: IpAddr, payload: &[u8]) {
    let o = ask(host, ip, payload, "0.7");
    o.assert_success();
    assert_eq!(stdout(&o), "", "unexpected reply from {ip}");
}

fn namespaces_now() -> String {
    let o = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Peer address as printed by socat's `$SOCAT_PEERADDR` on a dual-stack
/// socket, e.g. `[0000:...:ffff:c612:0101]`, unmapped.
fn parse_peer(s: &str) -> IpAddr {
    let a: Ipv6Addr = s
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|e| panic!("bad peer address {s:?}: {e}"));
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

#[test]
fn pair_echo_v4_v6_and_drop_on_input() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::pair();
    let (c, s) = (lab.client(), lab.server());
    assert_ne!(c.name(), s.name());
    assert_eq!(c.ip4().to_string(), "198.18.0.1");
    assert_eq!(s.ip6().to_string(), "fd00::2");
    assert_eq!(c.iface_toward(s).name, "c-s");

    let server = udp_server(s, "PIPE");
    expect_reply(c, s.ip4().into(), b"hi4\n", "hi4\n");
    expect_reply(c, s.ip6().into(), b"hi6\n", "hi6\n");

    // Return path blocked: the server still receives, the client hears nothing.
    c.drop_udp_sport_in(&[PORT]);
    expect_silence(c, s.ip4().into(), b"back\n");
    assert!(
        lab::wait_until(Duration::from_secs(2), || server
            .stderr_so_far()
            .contains("back")),
        "server did not log the datagram: {}",
        server.stderr_so_far()
    );

    // Everything dropped on the server's input.
    s.drop_udp_in_percent(100);
    expect_silence(c, s.ip4().into(), b"lost4\n");
    expect_silence(c, s.ip6().into(), b"lost6\n");
    assert!(!server.stderr_so_far().contains("lost"));
    assert!(s.nft_ruleset().contains("meta l4proto udp drop"));
}

#[test]
fn routed_forwarding_and_masquerade() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::routed();
    let (c, r, s) = (lab.client(), lab.router(), lab.server());
    assert_eq!(r.iface_toward(s).name, "r-s");
    assert_eq!(r.iface_toward(c).name, "r-c");
    // Read the datagram first: if the program exits before socat wrote it,
    // socat gets EPIPE and drops the reply.
    let _server = udp_server(s, "SYSTEM:cat >/dev/null; echo $SOCAT_PEERADDR");

    let peer = |ip: IpAddr| {
        let o = ask(c, ip, b"x", "1");
        o.assert_success();
        parse_peer(&stdout(&o))
    };
    assert_eq!(peer(s.ip4().into()), IpAddr::from(c.ip4()));
    assert_eq!(peer(s.ip6().into()), IpAddr::from(c.ip6()));

    r.snat_forward_masquerade(&r.iface_toward(s).name);
    assert_eq!(peer(s.ip4().into()), IpAddr::from(r.iface_toward(s).ip4));
    assert_eq!(peer(s.ip6().into()), IpAddr::from(r.iface_toward(s).ip6));

    r.drop_udp_forward_percent(100);
    expect_silence(c, s.ip4().into(), b"x");
}

#[test]
fn routed_reject_gives_icmp_errors() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::routed();
    let (c, r, s) = (lab.client(), lab.router(), lab.server());
    let _server = udp_server(s, "PIPE");
    expect_reply(c, s.ip4().into(), b"ok\n", "ok\n");

    r.reject_udp_dport_forward(PORT, true);
    // A connected UDP socket reports the ICMP error: v4 admin-prohibited is
    // EHOSTUNREACH, v6 admin-prohibited is EACCES.
    for (ip, err) in [
        (IpAddr::from(s.ip4()), "No route to host"),
        (IpAddr::from(s.ip6()), "Permission denied"),
    ] {
        let o = ask(c, ip, b"no\n", "1");
        // Expected: an ICMP error from the address.
        o.assert_failure();
        assert!(stderr(&o).contains(err), "{ip}: {}", stderr(&o));
    }
}

#[test]
fn routed_fragments_dropped_even_with_conntrack() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::routed();
    let (c, r, s) = (lab.client(), lab.router(), lab.server());
    let _server = udp_server(s, "SYSTEM:wc -c");
    let big = vec![b'x'; 3000]; // > 1500: the client fragments it
    expect_reply(c, s.ip4().into(), &big, "3000\n");
    expect_reply(c, s.ip6().into(), &big, "3000\n");

    // Masquerade loads conntrack, which reassembles before the forward hook.
    r.snat_forward_masquerade("r-s");
    r.drop_fragments_forward();
    expect_silence(c, s.ip4().into(), &big);
    expect_silence(c, s.ip6().into(), &big);
    expect_reply(c, s.ip4().into(), b"small", "5\n");
    expect_reply(c, s.ip6().into(), b"small", "5\n");
}

#[test]
fn routed_narrow_link_and_pmtu_black_hole() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::routed();
    let (c, r, s) = (lab.client(), lab.router(), lab.server());
    let _server = udp_server(s, "SYSTEM:wc -c");
    lab.set_link_mtu("r-s", 1280);
    let big = vec![b'x'; 1400]; // fits the client's 1500, not the 1280 link

    // The router answers DF packets with frag-needed / packet-too-big, which
    // the connected client socket reports as EMSGSIZE.
    for ip in [IpAddr::from(s.ip4()), IpAddr::from(s.ip6())] {
        let o = ask(c, ip, &big, "1");
        // Expected: EMSGSIZE.
        o.assert_failure();
        assert!(stderr(&o).contains("Message too long"), "{}", stderr(&o));
    }

    // Forget the learned path MTU, then make the router a black hole.
    c.run(["ip", "route", "flush", "cache"]);
    c.run(["ip", "-6", "route", "flush", "cache"]);
    r.drop_icmp_forward_too_big();
    for ip in [IpAddr::from(s.ip4()), IpAddr::from(s.ip6())] {
        expect_silence(c, ip, &big);
        expect_reply(c, ip, b"small", "5\n");
    }
}

#[test]
fn drop_kills_processes_and_removes_namespaces() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::routed();
    let names: Vec<String> = lab.namespaces().to_vec();
    assert_eq!(names.len(), 3);
    let listed = namespaces_now();
    for n in &names {
        assert!(listed.contains(n.as_str()), "{n} missing in {listed}");
    }
    // A detached process, and a grandchild outside any Proc's control.
    let sleeper = lab.server().spawn(["sleep", "60"]).kill_on_drop(false);
    let pid = sleeper.pid();
    drop(sleeper);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let c = lab.client();
    c.run(["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 &"]);
    let o = std::process::Command::new("ip")
        .args(["netns", "pids", c.name()])
        .output()
        .expect("ip netns pids");
    let stray: Vec<String> = stdout(&o).split_whitespace().map(String::from).collect();
    assert_eq!(stray.len(), 1, "expected the stray sleep in {}", c.name());
    drop(lab);
    let listed = namespaces_now();
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} still present: {listed}");
    }
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // The stray was re-parented, so someone else reaps it: gone or a zombie.
    let dead = |pid: &String| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    assert!(lab::wait_until(Duration::from_secs(5), || stray
        .iter()
        .all(dead)));

    // Also when the test panics while holding the lab.
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let lab = Lab::pair();
        let _p = lab.server().spawn(["sleep", "60"]);
        tx.send(lab.namespaces().to_vec()).unwrap();
        panic!("deliberate panic inside a lab test");
    })
    .join();
    assert!(joined.is_err());
    let names = rx.recv().unwrap();
    let listed = namespaces_now();
    for n in &names {
        assert!(
            !listed.contains(n.as_str()),
            "{n} survived a panic: {listed}"
        );
    }
}

#[test]
fn proc_timeout_and_signal() {
    if !lab::require_root() {
        return;
    }
    let lab = Lab::pair();
    let s = lab.server();

    let p = s.spawn(["sh", "-c", "echo started; exec sleep 60"]);
    assert!(lab::wait_until(Duration::from_secs(5), || p
        .stdout_so_far()
        .contains("started")));
    let err = p
        .wait_output_timeout(Duration::from_millis(300))
        .expect_err("must time out");
    assert_eq!(String::from_utf8_lossy(&err.output.stdout), "started\n");

    let p = s.spawn(["sleep", "60"]);
    assert!(p.signal(lab::SIGINT));
    let out = p.wait_output_timeout(Duration::from_secs(5)).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(lab::SIGINT));

    let out = s
        .run_timeout(["sleep", "60"], Duration::from_millis(200))
        .expect_err("must time out");
    assert!(!out.output.status.success());
}
