//! Fault and load tests against a real server on loopback: hostile control
//! connections, clients and servers killed mid-sweep, datagram floods.
//! Every loop is bounded in count and time; every process is killed on drop.
//! The numbers they measure are printed (run with --nocapture to see them).

use crate::loopback;

use loopback::{fd_count, fill_random, rss_kib, server, spawn, wait_until, Rng};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use udpreach_wire::control::{ControlMsg, PREAMBLE, PROTOCOL_VERSION};

fn hello_frame() -> Vec<u8> {
    ControlMsg::Hello {
        version: PROTOCOL_VERSION,
        capabilities: vec![],
        software: "fault test".into(),
        nonce: None,
    }
    .to_frame()
}

#[test]
fn garbage_and_stalled_control_connections_do_not_stop_a_real_sweep() {
    let srv = server(24101, &["--allow-ports", "25000-25999"]);
    let ctl: SocketAddr = "127.0.0.1:24101".parse().unwrap();
    let mut noise = Rng::new(1);
    let mut conns = Vec::new();
    for i in 0..300 {
        let mut c = TcpStream::connect_timeout(&ctl, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let _ = match i % 6 {
            // Random bytes instead of a preamble.
            0 | 1 => {
                let mut junk = vec![0u8; 1 + (noise.next_u64() % 3000) as usize];
                fill_random(&mut noise, &mut junk);
                junk[0] = b'G'; // neither the preamble nor legacy JSON
                c.write_all(&junk)
            }
            // Half a preamble, then silence.
            2 => c.write_all(&PREAMBLE[..5]),
            // Preamble and a frame header announcing a hello that never comes whole.
            3 => {
                let f = hello_frame();
                c.write_all(PREAMBLE)
                    .and_then(|_| c.write_all(&f[..f.len() / 2]))
            }
            // A frame header claiming far more than a handshake may use.
            4 => c
                .write_all(PREAMBLE)
                .and_then(|_| c.write_all(&200_000u32.to_be_bytes()))
                .and_then(|_| c.write_all(&[b'{'; 1000])),
            // Nothing at all (a connect-and-stall), except every 24th
            // connection, which completes the handshake and then stalls mid-frame
            // (kept under --max-sessions, 64, so the real client finds a slot).
            _ => {
                if i % 24 == 5 {
                    c.write_all(PREAMBLE)
                        .and_then(|_| c.write_all(&hello_frame()))
                        .and_then(|_| c.write_all(&[0, 0, 0, 40, b'{']))
                } else {
                    Ok(())
                }
            }
        };
        conns.push(c);
    }
    let t0 = Instant::now();
    let out = loopback::run(
        &["ports", "127.0.0.1:24101", "25000-25999", "-q"],
        &[],
        Duration::from_secs(120),
    );
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "sweep of 1000 ports beside 300 hostile connections: {:.2} s, exit {:?}",
        took.as_secs_f64(),
        out.status.code()
    );
    out.assert_code(0);
    assert!(stdout.contains("1000 reachable"), "{stdout}");
    drop(conns);
    assert!(srv.is_running(), "the server survived");
}

#[test]
fn client_killed_mid_sweep_server_descriptors_return_to_baseline() {
    let srv = server(
        24102,
        &["--allow-ports", "26000-30999", "--idle-timeout", "5s"],
    );
    let pid = srv.pid();
    // Let the runtime settle before taking the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let baseline = fd_count(pid);
    let client = spawn(
        &[
            "ports",
            "127.0.0.1:24102",
            "26000-30999",
            "--rate",
            "200",
            "-q",
        ],
        &[],
    );
    let mut peak = 0;
    let grew = wait_until(Duration::from_secs(20), || {
        peak = peak.max(fd_count(pid));
        peak > baseline + 500
    });
    assert!(
        grew,
        "test ports never opened: baseline {baseline}, peak {peak}"
    );
    client.kill();
    let killed_at = Instant::now();
    let back = wait_until(Duration::from_secs(5 + 2), || fd_count(pid) <= baseline);
    let after = fd_count(pid);
    println!(
        "server fds: baseline {baseline}, peak {peak} mid-sweep, {after} after SIGKILL of the client (back in {:.2} s)",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        back,
        "fds did not return to {baseline} within the idle timeout: {after}"
    );
    assert!(srv.is_running());
}

#[test]
fn server_killed_mid_sweep_client_exits_2_and_prints_what_it_had() {
    let srv = server(24103, &["--allow-ports", "31000-32499"]);
    let client = spawn(
        &[
            "ports",
            "127.0.0.1:24103",
            "31000-32499",
            "--rate",
            "400",
            "--list",
        ],
        &[],
    );
    // About 2 s into a ~5 s sweep (1500 ports at 300/s).
    std::thread::sleep(Duration::from_secs(2));
    srv.kill();
    let t0 = Instant::now();
    let out = client
        .wait_output_timeout(Duration::from_secs(30))
        .unwrap_or_else(|t| panic!("{t}"));
    let (stdout, stderr) = (out.stdout_text(), out.stderr_text());
    println!(
        "client after server SIGKILL: exit {} in {:.2} s; stderr: {}",
        out.code(),
        t0.elapsed().as_secs_f64(),
        stderr.trim()
    );
    out.assert_code(2);
    assert!(
        stderr.contains("control connection") && stderr.contains("lost"),
        "clear message expected: {stderr}"
    );
    assert!(stderr.contains("results so far"), "{stderr}");
    assert!(
        stdout.contains("reachable"),
        "partial results printed: {stdout}"
    );
}

#[test]
fn datagram_flood_server_stays_responsive_with_bounded_memory() {
    let _heavy = crate::one_heavy_at_a_time();
    let srv = server(24104, &["--allow-ports", "23000-23999"]);
    let pid = srv.pid();
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib(pid);
    let echo: SocketAddr = "127.0.0.1:24104".parse().unwrap();
    // Sources across 127.0.0.0/8 so the per-source tables see many addresses.
    let flood = std::thread::spawn(move || {
        let socks: Vec<UdpSocket> = (2..=201u8)
            .filter_map(|i| UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, i), 0)).ok())
            .collect();
        let mut noise = Rng::new(4);
        let mut buf = vec![0u8; 1500];
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(8);
        while sent < 400_000 && Instant::now() < deadline {
            let s = &socks[(sent as usize) % socks.len()];
            let len = (noise.next_u64() % 1500) as usize;
            fill_random(&mut noise, &mut buf[..len]);
            if sent.is_multiple_of(7) && len >= 64 {
                // Some that look like probes: magic and version right, rest random.
                buf[..5].copy_from_slice(b"UDPR\x01");
            }
            // Half at the echo port, half at the test-port range.
            let to = if sent.is_multiple_of(2) {
                echo
            } else {
                SocketAddr::new(echo.ip(), 23000 + (noise.next_u64() % 1000) as u16)
            };
            let _ = s.send_to(&buf[..len], to);
            sent += 1;
            if sent.is_multiple_of(256) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(300));
    // While the flood runs: a sweep over the flooded range and a ping.
    let sweep = spawn(&["ports", "127.0.0.1:24104", "23000-23999", "-q"], &[]);
    let ping = loopback::run(
        &[
            "ping",
            "127.0.0.1:24104",
            "-c",
            "20",
            "-i",
            "0.1",
            "-W",
            "1",
            "-q",
        ],
        &[],
        Duration::from_secs(30),
    );
    let sweep = sweep
        .wait_output_timeout(Duration::from_secs(120))
        .unwrap_or_else(|t| panic!("{t}"));
    let sweep_out = sweep.stdout_text();
    let sent = flood.join().unwrap();
    let rss_after = rss_kib(pid);
    let ping_out = String::from_utf8_lossy(&ping.stdout);
    println!(
        "flood: {sent} random datagrams; server RSS {rss_before} KiB before, {rss_after} KiB after; ping during flood: {}",
        ping_out.lines().find(|l| l.contains("transmitted")).unwrap_or("?")
    );
    // Ping got replies during the flood.
    ping.assert_code(0);
    sweep.assert_code(0);
    assert!(sweep_out.contains("1000 reachable"), "{sweep_out}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    // And after the flood, ping is answered in full.
    let after = loopback::run(
        &["ping", "127.0.0.1:24104", "-c", "5", "-i", "0.05", "-q"],
        &[],
        Duration::from_secs(20),
    );
    assert!(
        String::from_utf8_lossy(&after.stdout).contains("5 received"),
        "{}",
        String::from_utf8_lossy(&after.stdout)
    );
    drop(srv);
}
