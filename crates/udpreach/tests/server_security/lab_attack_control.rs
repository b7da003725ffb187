//! Attacks on the TCP control side of a live server (issue 8, findings 2, 3,
//! 4, 7, 8), each beside a legitimate client that must still get exact
//! results. Attackers are extra addresses (198.18.0.100 and up) on the
//! client namespace's interface, so they are other sources than the honest
//! client (198.18.0.1). Every loop is bounded in count and time; the lab
//! removes namespaces and processes even when a test fails.

use crate::lab;
use crate::util;

use lab::{fd_count, require_root, rss_kib, udpreach_bin, wait_until, Host, Lab, Proc};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use udpreach_wire::control::{decode_frame, ControlMsg, ErrorCode, PREAMBLE};
use util::*;

const SERVER: &str = "198.18.0.2:4000";

fn server_addr() -> SocketAddr {
    SERVER.parse().unwrap()
}

/// Adds `n` attacker addresses 198.18.0.(100+i) to the client namespace.
fn attacker_addrs(lab: &Lab, n: u8) -> Vec<Ipv4Addr> {
    let c = lab.client();
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::new(198, 18, 0, 100 + i);
            let o = c.run(["ip", "addr", "add", &format!("{a}/24"), "dev", c.iface()]);
            o.assert_success();
            a
        })
        .collect()
}

/// Runs `f` on a new thread inside `host`'s namespace.
fn spawn_in<T: Send + 'static>(
    host: &Host,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", host.name());
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A TCP connection from `src` (call inside the namespace).
fn connect_from(src: Ipv4Addr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src.into(), 0).into())?;
    s.connect_timeout(&server_addr().into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn key_file() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = std::env::temp_dir().join(format!("udpreach-attack-key-{}", std::process::id()));
    std::fs::write(&p, b"attack lab secret 0123456789\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn wait_control(host: &Host) {
    assert!(
        host.wait_tcp_listening(4000, Duration::from_secs(10)),
        "control port not listening"
    );
}

fn start(lab: &Lab, extra: &[&str]) -> Proc {
    let p = start_server(lab.server(), extra);
    wait_control(lab.server());
    p
}

/// Opens a udpreach session from `src` (no key) and returns the stream with
/// what is left in its buffer.
fn raw_session(src: Ipv4Addr) -> (TcpStream, Vec<u8>) {
    let mut s = connect_from(src).expect("connect");
    let hello = ControlMsg::Hello {
        version: 1,
        capabilities: vec![],
        software: "attack".into(),
        nonce: None,
    };
    let mut out = PREAMBLE.to_vec();
    out.extend(hello.to_frame());
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let welcome = recv(&mut s, &mut buf).expect("welcome");
    assert!(matches!(welcome, ControlMsg::Welcome { .. }), "{welcome:?}");
    (s, buf)
}

fn recv(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<ControlMsg> {
    if buf.starts_with(PREAMBLE) {
        buf.drain(..PREAMBLE.len());
    }
    for _ in 0..1000 {
        if buf.len() >= PREAMBLE.len() && buf.starts_with(PREAMBLE) {
            buf.drain(..PREAMBLE.len());
        }
        if let Ok(Some((m, used))) = decode_frame(buf) {
            buf.drain(..used);
            return Some(m);
        }
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    None
}

/// Whether the server closed `s` within `within` (EOF or reset), while we
/// keep trickling one byte of `trickle` every `every`.
fn closed_despite_trickle(
    s: &mut TcpStream,
    trickle: u8,
    every: Duration,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(every)).unwrap();
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
        if s.write_all(&[trickle]).is_err() {
            return true;
        }
    }
    false
}

#[test]
fn handshake_flood_cannot_lock_out_keyed_clients() {
    if !require_root() {
        return;
    }
    raise_nofile();
    let lab = Lab::pair();
    let key = key_file();
    let key = key.to_str().unwrap().to_string();
    let srv = start(&lab, &["--key-file", &key, "--allow-ports", "20000-20999"]);
    let pid = srv.pid();
    let baseline_fds = fd_count(pid);
    // 1,100 idle connections from 20 addresses (more than the 1,024 slots,
    // each source within its share), each reopened before the 5 s deadline.
    let srcs = attacker_addrs(&lab, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, made) = (stop.clone(), made.clone());
        spawn_in(lab.client(), move || {
            let mut conns: Vec<(Instant, Option<TcpStream>)> = (0..1100)
                .map(|_| (Instant::now() - Duration::from_secs(60), None))
                .collect();
            let limit = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                for (i, (since, c)) in conns.iter_mut().enumerate() {
                    if since.elapsed() > Duration::from_secs(4) {
                        *c = None;
                        *c = connect_from(srcs[i % srcs.len()]).ok();
                        *since = Instant::now();
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(20), || made
        .load(Ordering::Relaxed)
        >= 1100));
    let t0 = Instant::now();
    let sweep = udpreach(
        lab.client(),
        &[
            "ports",
            "198.18.0.2",
            "20000-20999",
            "-q",
            "--key-file",
            &key,
        ],
    );
    let sweep_s = t0.elapsed().as_secs_f64();
    let ping = udpreach(
        lab.client(),
        &[
            "ping",
            "198.18.0.2",
            "-c",
            "5",
            "-i",
            "0.05",
            "-s",
            "80",
            "-q",
            "--key-file",
            &key,
        ],
    );
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    println!(
        "keyed sweep beside {} flood connections: {sweep_s:.2} s, exit {}",
        made.load(Ordering::Relaxed),
        code(&sweep)
    );
    sweep.assert_code(0);
    assert!(
        stdout(&sweep).contains("1000 reachable"),
        "{}",
        stdout(&sweep)
    );
    ping.assert_code(0);
    assert!(stdout(&ping).contains("5 received"), "{}", stdout(&ping));
    assert!(
        !stderr(&ping).contains("could not check the key"),
        "{}",
        stderr(&ping)
    );

    // A client stalled in its keyed handshake (hello with a nonce, never an
    // auth) is evicted by 64 newer connections from its own address (its
    // share) and told why; a real client from that address still gets in.
    let (evicted, hogs) = spawn_in(lab.client(), || {
        let me = Ipv4Addr::new(198, 18, 0, 1);
        let mut s = connect_from(me).unwrap();
        let hello = ControlMsg::Hello {
            version: 1,
            capabilities: vec![],
            software: "stalled".into(),
            nonce: Some(udpreach_wire::auth::to_hex(
                &[7u8; udpreach_wire::auth::NONCE_LEN],
            )),
        };
        let mut out = PREAMBLE.to_vec();
        out.extend(hello.to_frame());
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let welcome = recv(&mut s, &mut buf);
        assert!(
            matches!(welcome, Some(ControlMsg::Welcome { .. })),
            "{welcome:?}"
        );
        let hogs: Vec<TcpStream> = (0..64).map(|_| connect_from(me).unwrap()).collect();
        (recv(&mut s, &mut buf), hogs)
    })
    .join()
    .unwrap();
    match evicted {
        Some(ControlMsg::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::HandshakeSlotsFull);
            assert_eq!(message, "server refused: handshake slots full");
        }
        other => panic!("evicted handshake told {other:?}"),
    }
    let o = udpreach(
        lab.client(),
        &[
            "ports",
            "198.18.0.2",
            "20000-20009",
            "-q",
            "--key-file",
            &key,
        ],
    );
    drop(hogs);
    o.assert_code(0);

    // Every pending handshake ends within its 5 s deadline: descriptors return.
    assert!(
        wait_until(Duration::from_secs(8), || fd_count(pid) <= baseline_fds),
        "fds {} vs baseline {baseline_fds}",
        fd_count(pid)
    );
    assert!(srv.is_running());
}

#[test]
fn trickled_and_half_sent_messages_hold_no_session() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let srv = start(
        &lab,
        &[
            "--max-sessions",
            "8",
            "--message-timeout",
            "2s",
            "--allow-ports",
            "20000-20999",
        ],
    );
    let pid = srv.pid();
    let baseline_fds = fd_count(pid);
    let srcs = attacker_addrs(&lab, 4);
    // Four sources, each at its share (2 of the 8 sessions): one legacy
    // connection sending `{"proto": "udp` and one udpreach session with half
    // a frame; both then trickle a byte every 0.5 s (faster than finding 4's 20 s).
    let conns: Vec<TcpStream> = spawn_in(lab.client(), move || {
        let mut v = Vec::new();
        for s in srcs {
            let mut legacy = connect_from(s).unwrap();
            legacy.write_all(br#"{"proto": "udp"#).unwrap();
            v.push(legacy);
            let (mut session, _) = raw_session(s);
            session.write_all(&[0, 0, 0, 40, b'{']).unwrap();
            v.push(session);
        }
        v
    })
    .join()
    .unwrap();
    let t0 = Instant::now();
    // Every slot is held: the honest client is told how many.
    let busy = udpreach(lab.client(), &["ports", "198.18.0.2", "20000-20009"]);
    busy.assert_code(2);
    assert!(
        stderr(&busy).contains("server busy (8 sessions)"),
        "{}",
        stderr(&busy)
    );
    // The trickle keeps none of them past the 2 s message deadline.
    let closed: Vec<bool> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                closed_despite_trickle(
                    &mut c,
                    b' ',
                    Duration::from_millis(500),
                    Duration::from_secs(6),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let took = t0.elapsed().as_secs_f64();
    println!("8 trickling sessions closed after {took:.2} s");
    assert!(closed.iter().all(|c| *c), "{closed:?}");
    let ok = udpreach(lab.client(), &["ports", "198.18.0.2", "20000-20999", "-q"]);
    ok.assert_code(0);
    assert!(stdout(&ok).contains("1000 reachable"), "{}", stdout(&ok));

    // 64 trickling legacy connections from one source take only its share:
    // the honest client is served at once, with exact results.
    let src = Ipv4Addr::new(198, 18, 0, 100);
    let hogs: Vec<TcpStream> = spawn_in(lab.client(), move || {
        (0..64)
            .map(|_| {
                let mut c = connect_from(src).unwrap();
                c.write_all(br#"{"proto": "udp"#).unwrap();
                c
            })
            .collect()
    })
    .join()
    .unwrap();
    let ok = udpreach(lab.client(), &["ports", "198.18.0.2", "20000-20999", "-q"]);
    ok.assert_code(0);
    assert!(stdout(&ok).contains("1000 reachable"), "{}", stdout(&ok));
    drop(hogs);
    assert!(srv.is_running());
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(pid) <= baseline_fds),
        "fds {} vs {baseline_fds}",
        fd_count(pid)
    );
}

#[test]
fn one_source_cannot_squat_ports_and_legacy_requests_are_capped() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    // 3,000 ports in total: a source's share is 750.
    let srv = start(
        &lab,
        &["--allow-ports", "10000-29999", "--max-total-ports", "3000"],
    );
    let pid = srv.pid();
    let (base_fds, base_rss) = (fd_count(pid), rss_kib(pid));
    let srcs = attacker_addrs(&lab, 2);
    let (a, b) = (srcs[0], srcs[1]);
    // Source A: three sessions asking for 8,192 ports each.
    let (sessions, opened) = spawn_in(lab.client(), move || {
        let mut sessions = Vec::new();
        let mut opened = 0;
        for i in 0..3u16 {
            let (mut s, mut buf) = raw_session(a);
            let start = 10000 + i * 1000;
            let ports: Vec<u16> = (start..start + 8192).collect();
            s.write_all(&ControlMsg::Open { ports }.to_frame()).unwrap();
            match recv(&mut s, &mut buf) {
                Some(ControlMsg::Opened { opened: o, .. }) => opened += o.len(),
                other => panic!("{other:?}"),
            }
            sessions.push(s);
        }
        (sessions, opened)
    })
    .join()
    .unwrap();
    assert_eq!(opened, 750, "source A gets its share, no more");
    // Source B: one legacy connection asking for 19,000 ports.
    let legacy = spawn_in(lab.client(), move || {
        let mut c = connect_from(b).unwrap();
        let mut w = c.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut all = Vec::new();
            for p in 10000u32..29000 {
                all.extend_from_slice(
                    format!(r#"{{"proto":"udpping","server":"198.18.0.2","port":{p},"available":false}}"#)
                        .as_bytes(),
                );
            }
            let _ = w.write_all(&all);
        });
        let mut text = Vec::new();
        let mut chunk = [0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match c.read(&mut chunk) {
                Ok(n) if n > 0 => text.extend_from_slice(&chunk[..n]),
                _ => break,
            }
            if text.windows(7).filter(|w| w == b"udpping").count() >= 19000 {
                break;
            }
        }
        writer.join().unwrap();
        let s = String::from_utf8_lossy(&text).into_owned();
        (
            s.matches("udpping").count(),
            s.matches(r#""available":true"#).count(),
        )
    });
    let mut peak_rss = 0;
    let mut peak_fds = 0;
    while !legacy.is_finished() {
        peak_rss = peak_rss.max(rss_kib(pid));
        peak_fds = peak_fds.max(fd_count(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (answers, available) = legacy.join().unwrap();
    assert_eq!(answers, 19000, "every request answered");
    // One legacy session holds at most 64 ports at once (each listens 3 s):
    // the server's descriptors stay within A's 750 + 64 (+ a few of its own).
    assert!(
        peak_fds <= base_fds + 750 + 64 + 8,
        "peak fds {peak_fds}, baseline {base_fds}: a legacy session held more than 64 ports"
    );
    // Twelve legacy sessions from B, 100 ports each, within 3 s: together
    // they get at most B's share of 750.
    assert!(wait_until(Duration::from_secs(6), || fd_count(pid)
        <= base_fds + 750 + 8));
    let many = spawn_in(lab.client(), move || {
        let mut conns = Vec::new();
        let mut available = 0;
        for k in 0..12u32 {
            let mut c = connect_from(b).unwrap();
            let mut req = Vec::new();
            for p in 0..100 {
                let port = 20000 + k * 100 + p;
                req.extend_from_slice(
                    format!(r#"{{"proto":"udpping","server":"198.18.0.2","port":{port},"available":false}}"#)
                        .as_bytes(),
                );
            }
            c.write_all(&req).unwrap();
            let mut text = Vec::new();
            let mut chunk = [0u8; 65536];
            while text.windows(7).filter(|w| w == b"udpping").count() < 100 {
                match c.read(&mut chunk) {
                    Ok(n) if n > 0 => text.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            available += String::from_utf8_lossy(&text).matches(r#""available":true"#).count();
            conns.push(c);
        }
        available
    })
    .join()
    .unwrap();
    println!("12 legacy sessions from one source: {many} ports available");
    assert!((600..=750).contains(&many), "{many}");
    // The honest client still gets every port it sweeps.
    let ok = udpreach(lab.client(), &["ports", "198.18.0.2", "29000-29999", "-q"]);
    ok.assert_code(0);
    assert!(stdout(&ok).contains("1000 reachable"), "{}", stdout(&ok));
    drop(sessions);
    // Legacy ports listen 3 s; then everything is back.
    assert!(
        wait_until(Duration::from_secs(8), || fd_count(pid) <= base_fds),
        "fds {} vs {base_fds}",
        fd_count(pid)
    );
    let rss_back = wait_until(Duration::from_secs(3), || {
        rss_kib(pid) < base_rss + 16 * 1024
    });
    let after_rss = rss_kib(pid);
    println!(
        "squat: {opened} ports for A, {available} legacy for B; server fds {base_fds} -> peak {peak_fds} -> {}; RSS {base_rss} -> peak {peak_rss} -> {after_rss} KiB",
        fd_count(pid)
    );
    // 1,500 ports at most, whatever the per-port buffer: far below finding 2's 899 MB.
    assert!(peak_rss < base_rss + 128 * 1024, "peak RSS {peak_rss} KiB");
    // And the memory is given back once the ports have closed.
    assert!(
        rss_back,
        "RSS {after_rss} KiB after everything closed, baseline {base_rss} KiB"
    );
    assert!(srv.is_running());
}

#[test]
fn silent_death_of_the_control_connection_ends_ports_within_20_s() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _srv = start(&lab, &[]);
    let bin = udpreach_bin().display().to_string();
    let p = lab.client().spawn([
        bin.as_str(),
        "ports",
        "198.18.0.2",
        "2000-31999",
        "--rate",
        "2000",
    ]);
    std::thread::sleep(Duration::from_millis(2000));
    // Both directions of the control flow vanish: no RST, no FIN.
    for (host, rule) in [
        (lab.client(), "tcp sport 4000"),
        (lab.server(), "tcp dport 4000"),
    ] {
        host.nft(&format!(
            "table inet lab {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n}}\nadd rule inet lab input {rule} drop\n"
        ));
    }
    let t0 = Instant::now();
    let o = p
        .wait_output_timeout(Duration::from_secs(25))
        .expect("ports must end on its own");
    let took = t0.elapsed();
    println!(
        "ports ended {:.2} s after the control flow went silent",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    o.assert_code(2);
    let err = stderr(&o);
    println!("{}", err.trim());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("control connection to 198.18.0.2:4000 lost"),
        "{err}"
    );
    assert!(
        stdout(&o).contains("reachable"),
        "results so far: {}",
        stdout(&o)
    );
}

/// What `ports` says when a (fake, loopback) server refuses the session:
/// one line in the server's words, exit 2, never "not a udpreach server".
#[test]
fn refusals_are_reported_in_one_clear_line() {
    for (code_sent, message) in [
        (
            ErrorCode::HandshakeSlotsFull,
            "server refused: handshake slots full",
        ),
        (ErrorCode::TooManySessions, "server busy (64 sessions)"),
    ] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let fake = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 4096];
            let _ = c.read(&mut b);
            let mut out = PREAMBLE.to_vec();
            out.extend(
                ControlMsg::Error {
                    code: code_sent,
                    message: message.into(),
                    fatal: true,
                }
                .to_frame(),
            );
            c.write_all(&out).unwrap();
        });
        let target = format!("127.0.0.1:{port}");
        let mut cmd = std::process::Command::new(udpreach_bin());
        cmd.args(["ports", &target, "20000-20009"]);
        let o = lab::run_local(cmd, Duration::from_secs(60)).unwrap_or_else(|t| panic!("{t}"));
        fake.join().unwrap();
        let err = stderr(&o);
        o.assert_code(2);
        assert!(err.contains(message), "{err}");
        assert!(!err.contains("not a udpreach server"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// IPv6: sixteen attacker addresses in one /64 are one source. Their
/// trickling legacy connections get that source's share of sessions (2 of
/// 8) and lose them at the message deadline; an honest IPv6 sweep from
/// another /64 is exact meanwhile.
#[test]
fn an_ipv6_64_is_one_source_and_trickles_end_over_ipv6() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _srv = start(
        &lab,
        &[
            "--max-sessions",
            "8",
            "--message-timeout",
            "2s",
            "--allow-ports",
            "20000-20999",
        ],
    );
    let (c, s) = (lab.client(), lab.server());
    let attackers: Vec<std::net::Ipv6Addr> = (0..16u16)
        .map(|i| {
            let a = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0x100 + i);
            let o = c.run([
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                c.iface(),
                "nodad",
            ]);
            o.assert_success();
            a
        })
        .collect();
    let o = s.run([
        "ip",
        "-6",
        "route",
        "add",
        "fd00:0:0:1::/64",
        "dev",
        s.iface(),
    ]);
    o.assert_success();
    let server6: SocketAddr = "[fd00::2]:4000".parse().unwrap();
    let mut conns: Vec<TcpStream> = spawn_in(c, move || {
        attackers
            .iter()
            .filter_map(|a| {
                let sock = Socket::new(Domain::IPV6, Type::STREAM, None).ok()?;
                sock.bind(&SocketAddr::new((*a).into(), 0).into()).ok()?;
                sock.connect_timeout(&server6.into(), Duration::from_secs(2))
                    .ok()?;
                let mut t: TcpStream = sock.into();
                t.write_all(br#"{"proto": "udp"#).ok()?;
                Some(t)
            })
            .collect()
    })
    .join()
    .unwrap();
    assert_eq!(conns.len(), 16);
    let t0 = Instant::now();
    let ok = udpreach(c, &["ports", "fd00::2", "20000-20999", "-q"]);
    ok.assert_code(0);
    assert!(stdout(&ok).contains("1000 reachable"), "{}", stdout(&ok));
    // All 16 are closed: 14 at once (over the /64's share), 2 at the deadline.
    let closed = conns
        .iter_mut()
        .map(|c| {
            closed_despite_trickle(c, b' ', Duration::from_millis(500), Duration::from_secs(5))
        })
        .filter(|closed| *closed)
        .count();
    println!(
        "IPv6: 16 trickling legacy connections from one /64 closed within {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(closed, 16);
}
