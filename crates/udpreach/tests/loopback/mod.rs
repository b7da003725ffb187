//! A udpreach server on loopback for fault, load and security tests that
//! need no network path: the real binary, killed when its handle drops (also
//! on panic), plus /proc readers for descriptor and memory checks.
//! Each test uses its own ports so tests can run in parallel, all below
//! Linux's ephemeral range (32768-60999 by default), where a client socket
//! of another test could otherwise take a port first.

//!
//! Processes are the lab's [`Proc`] (include `mod lab;` beside `mod
//! loopback;`), and results the lab's [`CommandOutput`] with its asserts.

#![allow(dead_code)]

use crate::lab::{self, CommandOutput, Proc};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub(crate) use crate::lab::{fd_count, key_file, rss_kib, wait_until};

/// Path of the `udpreach` binary (the lab's [`lab::udpreach_bin`]).
pub(crate) fn bin() -> PathBuf {
    lab::udpreach_bin()
}

/// The old name of a spawned udpreach process; it is the lab's [`Proc`].
pub(crate) type Running = Proc;

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("UDPREACH_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts udpreach with `args` and `env` (`UDPREACH_KEY` removed unless
/// given), stdin null, output captured; killed when the handle drops.
pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = command(args, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::start(cmd)
}

/// Runs udpreach to completion within `timeout` (killed after it, and the
/// test fails with what it printed).
pub(crate) fn run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CommandOutput {
    lab::run_local(command(args, env), timeout).unwrap_or_else(|t| panic!("{t}"))
}

/// `udpreach server --listen 127.0.0.1:PORT EXTRA...`, ready to serve
/// (its control port accepts) when this returns.
pub(crate) fn server(port: u16, extra: &[&str]) -> Running {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let s = spawn(&args, &[]);
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return s;
        }
        if !s.is_running() {
            match s.wait_output_timeout(Duration::from_secs(1)) {
                Ok(out) => panic!("server on {listen} exited at start\n{out}"),
                Err(t) => panic!("server on {listen} exited at start\n{t}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "server on {listen} not ready in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The engine test kit's seeded random source, for floods and garbage.
pub(crate) use udpreach_engine::testkit::Rng;

/// Fills `buf` with bytes from `rng`.
pub(crate) fn fill_random(rng: &mut Rng, buf: &mut [u8]) {
    for b in buf.iter_mut() {
        *b = rng.next_u64() as u8;
    }
}
