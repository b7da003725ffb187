//! udpreach-specific helpers on top of the lab: start a server, run the
//! client, read its JSON. Keeps each integration test a few lines long.
#![allow(dead_code)]

pub(crate) use crate::lab::CommandOutput;
use crate::lab::{udpreach_bin, Host, Proc};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// Starts `udpreach server` on the host's addresses (IPv4 and IPv6, port 4000) plus loopback.
pub(crate) fn start_server(host: &Host, extra: &[&str]) -> Proc {
    let v4 = format!("{}:4000", host.ip4());
    let v6 = format!("[{}]:4000", host.ip6());
    let mut argv: Vec<String> = vec![
        udpreach_bin().display().to_string(),
        "server".into(),
        "--listen".into(),
        v4,
        "--listen".into(),
        v6,
        "--listen".into(),
        "127.0.0.1:4000".into(),
        "--listen".into(),
        "[::1]:4000".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let p = host.spawn(&argv);
    // The echo port is bound before the control listeners: wait for both.
    assert!(
        host.wait_udp_bound(4000, Duration::from_secs(10))
            && host.wait_tcp_listening(4000, Duration::from_secs(10)),
        "server did not start: {}",
        p.stderr_so_far()
    );
    p
}

/// A socat UDP echo on `port` (IPv4 and IPv6).
pub(crate) fn socat_echo(host: &Host, port: u16) -> Proc {
    let p = host.spawn([
        "socat",
        "-b",
        "65536",
        &format!("UDP6-RECVFROM:{port},fork"),
        "PIPE",
    ]);
    assert!(
        host.wait_udp_bound(port, Duration::from_secs(5)),
        "socat did not bind {port}: {}",
        p.stderr_so_far()
    );
    p
}

/// Runs the udpreach binary in `host` with a bound on time (the test
/// fails with what it printed when it runs longer).
pub(crate) fn udpreach(host: &Host, args: &[&str]) -> CommandOutput {
    let mut argv = vec![udpreach_bin().display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    host.run_timeout(&argv, Duration::from_secs(120))
        .unwrap_or_else(|t| panic!("{t}"))
}

/// Stdout as text (lossy UTF-8).
pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text (lossy UTF-8).
pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// JSON lines printed by `--json-lines`, parsed.
pub(crate) fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The summary of a ping: the `summary` of a `--json` document, or the
/// final `summary` line of `--json-lines`.
pub(crate) fn summary(o: &Output) -> Value {
    if let Ok(doc) = serde_json::from_str::<Value>(&stdout(o)) {
        if doc.get("summary").is_some_and(Value::is_object) {
            return doc["summary"].clone();
        }
    }
    json_lines(o)
        .into_iter()
        .rev()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {}\nstderr: {}", stdout(o), stderr(o)))
}

/// Exit code; -1 when a signal ended the program. To check it, prefer
/// [`CommandOutput::assert_code`], which prints the command and its output.
pub(crate) fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A hand-driven control session (opened from inside `host`), for tests that
/// need to hold ports or speak the protocol badly on purpose.
pub(crate) struct RawSession {
    pub stream: std::net::TcpStream,
    pub token: u64,
    buf: Vec<u8>,
}

impl RawSession {
    /// Connects from `host`, sends the preamble and `frames`, reads the
    /// server's preamble: a session whose handshake is under way.
    fn begin(host: &Host, server: std::net::SocketAddr, frames: &[u8]) -> RawSession {
        use std::io::{Read, Write};
        use udpreach_wire::control::PREAMBLE;
        // `start_server` waits for the UDP port; the TCP listener may come
        // a moment later on a loaded machine: retry a refused connect (5 s at most).
        let mut stream = host.enter(move || {
            for _ in 0..50 {
                match std::net::TcpStream::connect(server) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    r => return r.expect("connect"),
                }
            }
            panic!("{server} refused every connection for 5 s")
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = PREAMBLE.to_vec();
        out.extend_from_slice(frames);
        stream.write_all(&out).expect("hello");
        let mut pre = [0u8; 8];
        stream.read_exact(&mut pre).expect("preamble");
        assert_eq!(&pre, PREAMBLE);
        RawSession {
            stream,
            token: 0,
            buf: Vec::new(),
        }
    }

    pub(crate) fn connect(host: &Host, server: std::net::SocketAddr) -> RawSession {
        use udpreach_wire::control::ControlMsg;
        let hello = ControlMsg::Hello {
            version: 1,
            capabilities: vec![],
            software: "test".into(),
            nonce: None,
        };
        let mut s = RawSession::begin(host, server, &hello.to_frame());
        match s.recv() {
            ControlMsg::Welcome { token, .. } => s.token = token,
            other => panic!("expected welcome, got {other:?}"),
        }
        s
    }

    /// An authenticated session (the client's half of the handshake is the
    /// engine's `ClientHandshake`); returns it with the session key.
    pub(crate) fn connect_keyed(
        host: &Host,
        server: std::net::SocketAddr,
        key: &udpreach_wire::auth::SharedKey,
    ) -> (RawSession, udpreach_wire::auth::DerivedKey) {
        use std::time::Instant;
        use udpreach_engine::client_handshake::{ClientHandshake, HandshakeEvent};
        use udpreach_engine::Engine;
        let mut hs = ClientHandshake::new(Some(key.clone()), [7; 32], "test".into());
        let mut frames = Vec::new();
        while let Some(m) = hs.poll_transmit(Instant::now()) {
            frames.extend(m.to_frame());
        }
        let mut s = RawSession::begin(host, server, &frames);
        for _ in 0..8 {
            let m = s.recv();
            hs.handle_input(m, Instant::now());
            while let Some(m) = hs.poll_transmit(Instant::now()) {
                s.send(&m);
            }
            match hs.poll_event() {
                Some(HandshakeEvent::Welcome(w)) => {
                    s.token = w.token;
                    return (s, w.session_key.expect("a keyed session has a key"));
                }
                Some(HandshakeEvent::Failed(why)) => panic!("handshake failed: {why:?}"),
                None => {}
            }
        }
        panic!("no welcome after 8 messages");
    }

    pub(crate) fn send(&mut self, msg: &udpreach_wire::control::ControlMsg) {
        use std::io::Write;
        self.stream.write_all(&msg.to_frame()).expect("send");
    }

    pub(crate) fn recv(&mut self) -> udpreach_wire::control::ControlMsg {
        use std::io::Read;
        for _ in 0..1000 {
            if let Some((m, used)) = udpreach_wire::control::decode_frame(&self.buf).expect("frame")
            {
                self.buf.drain(..used);
                return m;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "server closed the session");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        panic!("no complete frame");
    }

    pub(crate) fn request(
        &mut self,
        msg: &udpreach_wire::control::ControlMsg,
    ) -> udpreach_wire::control::ControlMsg {
        self.send(msg);
        self.recv()
    }
}

/// The stamp-suite binary: `STAMP_SUITE`, else on PATH, else cargo's bin dir.
pub(crate) fn stamp_suite() -> PathBuf {
    if let Some(p) = std::env::var_os("STAMP_SUITE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("stamp-suite"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("HOME or CARGO_HOME");
    let p = home.join("bin/stamp-suite");
    assert!(
        p.is_file(),
        "stamp-suite is not installed (cargo install --locked stamp-suite; .ci/run does it)"
    );
    p
}

/// `udpreach server --stamp` on the server's address, port 862.
pub(crate) fn udpreach_reflector(host: &Host, extra: &[&str]) -> Proc {
    let mut args = vec!["--stamp", "0.0.0.0:862"];
    args.extend_from_slice(extra);
    let p = start_server(host, &args);
    assert!(host.wait_udp_bound(862, Duration::from_secs(10)));
    p
}

/// stamp-suite's reflector on the host's address, UDP `port`.
pub(crate) fn stamp_suite_reflector(host: &Host, port: u16, extra: &[&str]) -> Proc {
    let mut argv = vec![
        stamp_suite().display().to_string(),
        "-i".into(),
        "--local-addr".into(),
        host.ip4().to_string(),
        "--local-port".into(),
        port.to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let p = host.spawn(&argv);
    assert!(
        host.wait_udp_bound(port, Duration::from_secs(10)),
        "stamp-suite reflector did not start: {}",
        p.stderr_so_far()
    );
    p
}
