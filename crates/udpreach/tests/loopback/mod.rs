//! A udpreach server on loopback for fault, load and security tests that
//! need no network path: the real binary, killed when its handle drops (also
//! on panic), plus /proc readers for descriptor and memory checks.
//! Each test uses its own ports so tests can run in parallel, all below
//! Linux's ephemeral range (32768-60999 by default), where a client socket
//! of another test could otherwise take a port first.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_udpreach"))
}

/// A spawned udpreach process; SIGKILLed and reaped on drop.
pub struct Running {
    pub child: Child,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for exit; kills it after that. Output is
    /// drained while waiting, so a chatty process never blocks on a full pipe.
    pub fn wait_output(mut self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        }
        let out = drain(self.child.stdout.take());
        let err = drain(self.child.stderr.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break Some(s),
                _ if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    break None;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let _ = self.child.wait();
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("UDPREACH_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running {
        child: cmd.spawn().expect("spawn udpreach"),
    }
}

/// Runs udpreach to completion within `timeout` (killed after it).
pub fn run(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let r = spawn(args, env);
    let (status, stdout, stderr) = r.wait_output(timeout);
    let status = status.unwrap_or_else(|| {
        panic!("udpreach {args:?} did not finish within {timeout:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    });
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

/// `udpreach server --listen 127.0.0.1:PORT EXTRA...`, ready to serve
/// (its control port accepts) when this returns.
pub fn server(port: u16, extra: &[&str]) -> Running {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let mut s = spawn(&args, &[]);
    let addr: SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return s;
        }
        if !s.is_running() {
            let (_, out, err) = s.wait_output(Duration::from_secs(1));
            panic!("server on {listen} exited at start:\n{out}\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "server on {listen} not ready in 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Open descriptors of a process (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `cond` every 20 ms for at most `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A key file in the test's temporary directory.
pub fn key_file(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("udpreach-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Deterministic pseudo-random bytes (xorshift64*) for floods and garbage.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = self.next_u64() as u8;
        }
    }
}
