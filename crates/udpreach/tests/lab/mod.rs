//! Network-namespace test lab for udpreach integration tests.
//!
//! Include it from an integration test file with `mod lab;` and build a
//! topology per test:
//!
//! ```ignore
//! mod lab;
//!
//! #[test]
//! fn something() {
//!     if !lab::require_root() {
//!         return;
//!     }
//!     let lab = lab::Lab::routed();
//!     let (client, server) = (lab.client(), lab.server());
//!     let bin = lab::udpreach_bin();
//!     let srv = server.spawn([bin.as_os_str(), "server".as_ref()]);
//!     assert!(server.wait_udp_bound(PORT, Duration::from_secs(5)));
//!     server.drop_udp_in_percent(10); // or any other impairment
//!     let out = client.run([bin.to_str().unwrap(), "ping", &server.ip4().to_string()]);
//!     out.assert_success(); // on failure: the command, status, stdout, stderr
//!     srv.signal(lab::SIGINT);
//!     let srv_out = srv.wait_output_timeout(Duration::from_secs(5)).unwrap();
//! } // the lab is torn down here, also when an assertion failed
//! ```
//!
//! Every run returns a [`CommandOutput`] (see `lab/command.rs`): assert
//! exit codes with its `assert_code`, `assert_success` and `assert_failure`,
//! which print the command, its stdout and its stderr when they fail. The
//! same [`Proc`] runs programs in the test's own namespace ([`Proc::start`],
//! [`run_local`]; the loopback helpers use them).
//!
//! Topologies (all addresses are in 198.18.0.0/15 and fd00::/8 only):
//!
//! * [`Lab::pair`]: `client` (`c-s`: 198.18.0.1/24, fd00::1/64) <-veth->
//!   `server` (`s-c`: 198.18.0.2/24, fd00::2/64).
//! * [`Lab::routed`]: `client` (`c-r`: 198.18.1.1/24, fd00:1::1/64) <-veth->
//!   (`r-c`: 198.18.1.254, fd00:1::fe) `router` (`r-s`: 198.18.2.254,
//!   fd00:2::fe) <-veth-> (`s-r`: 198.18.2.2/24, fd00:2::2/64) `server`.
//!   The router forwards IPv4 and IPv6; client and server route by default
//!   through it.
//! * [`Lab::emulated`]: like [`Lab::pair`] (same addresses, one subnet), but
//!   `client` (`c-m`) <-veth-> `middle` (`m-c`, `m-s`, no addresses) <-veth->
//!   `server` (`s-m`), with the link emulator (crate `udpreach-lab-link`)
//!   relaying frames in the middle: delay, jitter, loss, burst loss and a
//!   rate cap per direction (this kernel has no netem). Build the
//!   per-direction settings with [`Link::emulate`].
//!
//! Interface names are fixed (they live inside the namespaces, so parallel
//! labs never collide); namespace names are `ur<pid>x<counter>-<role>`.
//!
//! Every namespace gets IPv6 DAD disabled (addresses are usable at once) and
//! ICMP/ICMPv6 error rate limiting switched off (otherwise the kernel sends
//! only a short burst and then about one port-unreachable or admin-prohibited
//! per second and peer, which makes per-port verdicts flaky).
//! Construction waits until every interface is up with a usable IPv6
//! link-local address: before that the first IPv6 packets stall about a
//! second in neighbour discovery.
//!
//! Dropping the [`Lab`] (also while unwinding from a failed assertion) kills
//! every process spawned through it, then every other process still inside
//! its namespaces, then deletes the namespaces (which removes the veths).
//!
//! Loss and filtering are done with nftables. Never filter in an `output`
//! chain of the namespace whose program sends: the program's `sendto()`
//! then fails with EPERM instead of the datagram being lost. The helpers
//! filter on input (receiving side), forward (router), or, for ICMP that the
//! router kernel itself generates, on the router's output.

#![allow(dead_code)]

mod command;

pub(crate) use command::CommandOutput;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for [`Host::run`] and [`Host::nft`].
pub(crate) const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for the lab's own plumbing commands (`ip`, `sysctl`, `kill`, ...).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long construction waits for interfaces/link-local addresses.
const LINK_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a killed process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for stdout/stderr to reach EOF once a process exited
/// (a grandchild may keep the pipe open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Linux signal numbers for [`Proc::signal`].
pub(crate) const SIGINT: i32 = 2;
pub(crate) const SIGKILL: i32 = 9;
pub(crate) const SIGTERM: i32 = 15;

/// nft declaration of the lab filter table; loading it again is a no-op.
const BASE_TABLE: &str = "table inet lab {
  chain input { type filter hook input priority 0; policy accept; }
  chain forward { type filter hook forward priority 0; policy accept; }
}
";

// ---------------------------------------------------------------------------
// Free helpers
// ---------------------------------------------------------------------------

/// Returns true when the lab can run (effective uid 0).
///
/// When not root: panics if the `CI` environment variable is set (the lab
/// tests must run in CI), otherwise prints a skip note and returns false, so
/// a test starts with `if !lab::require_root() { return; }`.
pub(crate) fn require_root() -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "network-namespace tests need root (ip netns, veth, nftables), \
             and CI is set, so they must not be skipped: run `cargo test` as root"
        );
    }
    eprintln!("note: skipping network-namespace test: not running as root");
    false
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Path of the `udpreach` binary cargo built for this integration test.
pub(crate) fn udpreach_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_udpreach"))
}

/// Polls `cond` every 10 ms until it returns true or `timeout` elapsed.
/// `cond` is always evaluated at least once and once more at the deadline.
/// Returns whether it became true. All waiting in the lab goes through here.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks must not make cleanup panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Incrementally captured output of one pipe.
#[derive(Default)]
struct Capture {
    buf: Mutex<Vec<u8>>,
    done: AtomicBool,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Arc<Capture> {
        let cap = Arc::new(Capture::default());
        match pipe {
            None => cap.done.store(true, Ordering::SeqCst),
            Some(mut pipe) => {
                let c = Arc::clone(&cap);
                thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    loop {
                        match pipe.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => lock(&c.buf).extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    c.done.store(true, Ordering::SeqCst);
                });
            }
        }
        cap
    }

    fn bytes(&self) -> Vec<u8> {
        lock(&self.buf).clone()
    }
}

struct ProcInner {
    what: String,
    pid: u32,
    child: Mutex<Child>,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
}

impl ProcInner {
    fn start(mut cmd: Command, input: Option<Vec<u8>>) -> std::io::Result<Arc<ProcInner>> {
        let what = describe(&cmd);
        // Own process group, so that a timeout or drop can kill the whole
        // tree (e.g. `sh -c 'a | b'`).
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot spawn `{what}`: {e}")))?;
        let stdout: Option<ChildStdout> = child.stdout.take();
        let stderr: Option<ChildStderr> = child.stderr.take();
        if let Some(data) = input {
            if let Some(mut stdin) = child.stdin.take() {
                // In a thread: a child that never reads must not block us.
                thread::spawn(move || {
                    let _ = stdin.write_all(&data);
                });
            }
        }
        Ok(Arc::new(ProcInner {
            what,
            pid: child.id(),
            stdout: Capture::start(stdout),
            stderr: Capture::start(stderr),
            child: Mutex::new(child),
        }))
    }

    fn try_wait(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Sends `sig` to the process (or its group) if it was not reaped yet.
    /// Holding the child lock guarantees the pid was not recycled.
    fn send(&self, sig: i32, group: bool) -> bool {
        let mut child = lock(&self.child);
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let target = if group {
            format!("-{}", self.pid)
        } else {
            self.pid.to_string()
        };
        let mut kill = Command::new("kill");
        kill.args(["-s", &sig.to_string(), "--", &target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let sent = matches!(kill.status(), Ok(s) if s.success());
        if !sent && sig == SIGKILL {
            let _ = child.kill();
        }
        sent
    }

    /// SIGKILLs the process group and reaps the process (bounded).
    fn kill(&self) {
        self.send(SIGKILL, true);
        wait_until(REAP_TIMEOUT, || self.try_wait().is_some());
    }

    fn output(&self, status: ExitStatus) -> Output {
        wait_until(DRAIN_TIMEOUT, || {
            self.stdout.done.load(Ordering::SeqCst) && self.stderr.done.load(Ordering::SeqCst)
        });
        Output {
            status,
            stdout: self.stdout.bytes(),
            stderr: self.stderr.bytes(),
        }
    }

    fn wait_output(&self, timeout: Duration) -> Result<Output, TimedOut> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        match status {
            Some(status) => Ok(self.output(status)),
            None => {
                self.kill();
                let status = self.try_wait().unwrap_or_else(|| {
                    // Unkillable within REAP_TIMEOUT: report a fake "killed" status.
                    std::os::unix::process::ExitStatusExt::from_raw(SIGKILL)
                });
                Err(TimedOut {
                    what: self.what.clone(),
                    after: timeout,
                    output: self.output(status),
                })
            }
        }
    }
}

/// A process waited for longer than its bound; it has been killed.
pub(crate) struct TimedOut {
    /// The command line.
    pub what: String,
    /// The bound that was exceeded.
    pub after: Duration,
    /// Everything it printed before it was killed.
    pub output: Output,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` did not finish within {:?} and was killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.after,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

impl fmt::Debug for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TimedOut {}

/// A process started with [`Host::spawn`] or [`Host::spawn_cmd`].
///
/// Its stdout and stderr (when piped) are captured continuously, so a chatty
/// process never blocks on a full pipe and the output so far can be polled.
/// Dropping a `Proc` kills its process group unless
/// [`kill_on_drop(false)`](Proc::kill_on_drop) was set; in any case the lab
/// kills it when the [`Lab`] is dropped.
pub(crate) struct Proc {
    inner: Arc<ProcInner>,
    kill_on_drop: bool,
}

impl Proc {
    /// Process id (that of the program itself: `ip netns exec` execs it).
    pub(crate) fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Whether dropping this handle kills the process (default: true).
    /// With false, the process lives until it exits or the lab is dropped.
    pub(crate) fn kill_on_drop(mut self, kill: bool) -> Self {
        self.kill_on_drop = kill;
        self
    }

    /// Sends signal `sig` (e.g. [`SIGINT`]) to the process with `kill -s`.
    /// Returns false if it already exited (or `kill` failed).
    pub(crate) fn signal(&self, sig: i32) -> bool {
        self.inner.send(sig, false)
    }

    /// SIGKILLs the process group and reaps the process.
    pub(crate) fn kill(&self) {
        self.inner.kill();
    }

    /// Exit status, if it has exited.
    pub(crate) fn try_wait(&self) -> Option<ExitStatus> {
        self.inner.try_wait()
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Stdout captured so far (lossy UTF-8).
    pub(crate) fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.inner.stdout.bytes()).into_owned()
    }

    /// Stderr captured so far (lossy UTF-8).
    pub(crate) fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.inner.stderr.bytes()).into_owned()
    }

    /// Waits at most `timeout` for the process to exit and returns all of its
    /// output. On timeout the process group is killed and the error carries
    /// the output printed so far.
    pub(crate) fn wait_output_timeout(self, timeout: Duration) -> Result<CommandOutput, TimedOut> {
        let out = self.inner.wait_output(timeout)?;
        Ok(CommandOutput::new(self.inner.what.clone(), out))
    }

    /// Starts a prepared command in the test's own namespace (loopback
    /// tests), in its own process group, its piped stdout/stderr captured.
    /// Not registered with any lab: dropping the handle kills it.
    pub(crate) fn start(cmd: Command) -> Proc {
        Proc {
            inner: ProcInner::start(cmd, None).unwrap_or_else(|e| panic!("{e}")),
            kill_on_drop: true,
        }
    }
}

/// Runs a prepared command in the test's own namespace to completion within
/// `timeout` (its process group is killed after it); stdin is null, stdout
/// and stderr captured.
pub(crate) fn run_local(mut cmd: Command, timeout: Duration) -> Result<CommandOutput, TimedOut> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::start(cmd).wait_output_timeout(timeout)
}

/// A key file (mode 0600) in this test process's temporary directory.
pub(crate) fn key_file(name: &str, contents: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("udpreach-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Open descriptors of a process (entries of /proc/PID/fd).
pub(crate) fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of a process in KiB (VmRSS). Panics when the process
/// is gone: a memory bound checked on a dead process proves nothing.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}:\n{status}"))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.kill_on_drop {
            self.inner.kill();
        }
    }
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.inner.pid)
            .field("what", &self.inner.what)
            .finish()
    }
}

type Registry = Arc<Mutex<Vec<Arc<ProcInner>>>>;

/// Runs a lab plumbing command (host namespace), bounded; Err has details.
fn plumb(argv: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]);
    run_cmd(cmd, None, SETUP_TIMEOUT)
}

fn run_cmd(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let what = describe(&cmd);
    let p = ProcInner::start(cmd, input.map(<[u8]>::to_vec)).map_err(|e| e.to_string())?;
    let out = p.wait_output(timeout).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn plumb_ok(argv: &[&str]) {
    if let Err(e) = plumb(argv) {
        panic!("lab setup: {e}");
    }
}

// ---------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------

/// One interface of a lab host and what is on the other end of its veth.
#[derive(Clone, Debug)]
pub(crate) struct Iface {
    /// Interface name inside the host's namespace, e.g. `r-s`.
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// Namespace at the other end of the veth.
    pub peer_ns: String,
    /// Interface name at the other end of the veth.
    pub peer_iface: String,
}

/// A namespace of the lab (`client`, `server` or `router`).
#[derive(Clone)]
pub(crate) struct Host {
    ns: String,
    role: &'static str,
    ifaces: Vec<Iface>,
    procs: Registry,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("ns", &self.ns)
            .field("role", &self.role)
            .field("ifaces", &self.ifaces)
            .finish()
    }
}

impl Host {
    /// Runs `f` on a thread that has joined this host's network namespace, so
    /// the test itself can open sockets there (a namespace switch is per thread;
    /// sockets keep their namespace when handed back to other threads).
    pub(crate) fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }

    /// The namespace name (usable with `ip netns exec` / `ip -n`).
    pub(crate) fn name(&self) -> &str {
        &self.ns
    }

    /// "client", "server" or "router".
    pub(crate) fn role(&self) -> &str {
        self.role
    }

    /// IPv4 address of the first interface (the router: its client side).
    pub(crate) fn ip4(&self) -> Ipv4Addr {
        self.ifaces[0].ip4
    }

    /// IPv6 address of the first interface (the router: its client side).
    pub(crate) fn ip6(&self) -> Ipv6Addr {
        self.ifaces[0].ip6
    }

    /// Name of the first interface (the router: its client side, `r-c`).
    pub(crate) fn iface(&self) -> &str {
        &self.ifaces[0].name
    }

    /// All interfaces (router: `[r-c, r-s]`).
    pub(crate) fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The interface whose veth leads to `other`'s namespace, e.g.
    /// `router.iface_toward(lab.server()).name == "r-s"`.
    /// Panics if the two are not directly linked.
    pub(crate) fn iface_toward(&self, other: &Host) -> &Iface {
        self.ifaces
            .iter()
            .find(|i| i.peer_ns == other.ns)
            .unwrap_or_else(|| panic!("{} has no link to {}", self.ns, other.ns))
    }

    /// `ip netns exec <ns> <program>`; add arguments and stdio as needed.
    /// Prefer [`spawn_cmd`](Host::spawn_cmd) or [`run`](Host::run) over
    /// `.spawn()`/`.output()` on it: those are neither bounded nor killed.
    pub(crate) fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&self.ns).arg(program);
        cmd
    }

    fn cmd_argv<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        assert!(!argv.is_empty(), "empty argv");
        let mut cmd = self.cmd(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    /// Starts `argv` (program first) in the namespace with stdin null and
    /// stdout/stderr captured. Killed when the returned [`Proc`] or the lab
    /// is dropped.
    pub(crate) fn spawn<I, S>(&self, argv: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd_argv(argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn_cmd(cmd)
    }

    /// Starts a prepared command (normally from [`cmd`](Host::cmd)) with the
    /// stdio it was given, in its own process group, registered with the lab
    /// for kill-on-drop. Only stdout/stderr set to `Stdio::piped()` are
    /// captured by the [`Proc`]; inherited ones bypass libtest's capture.
    pub(crate) fn spawn_cmd(&self, cmd: Command) -> Proc {
        let inner = ProcInner::start(cmd, None).unwrap_or_else(|e| panic!("{e}"));
        lock(&self.procs).push(Arc::clone(&inner));
        Proc {
            inner,
            kill_on_drop: true,
        }
    }

    /// Runs `argv` to completion within [`DEFAULT_RUN_TIMEOUT`]; panics on
    /// timeout (with the output so far). A failing exit status is returned,
    /// not a panic.
    pub(crate) fn run<I, S>(&self, argv: I) -> CommandOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_timeout(argv, DEFAULT_RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`run`](Host::run) with an explicit bound; the process group is
    /// killed on timeout.
    pub(crate) fn run_timeout<I, S>(
        &self,
        argv: I,
        timeout: Duration,
    ) -> Result<CommandOutput, TimedOut>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_input_timeout(argv, &[], timeout)
    }

    /// Like [`run`](Host::run), feeding `input` to the program's stdin
    /// (then closing it).
    pub(crate) fn run_input<I, S>(&self, argv: I, input: &[u8]) -> CommandOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_input_timeout(argv, input, DEFAULT_RUN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn run_input_timeout<I, S>(
        &self,
        argv: I,
        input: &[u8],
        timeout: Duration,
    ) -> Result<CommandOutput, TimedOut>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd_argv(argv);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Not registered with the lab: it is waited for (or killed) here.
        let inner = ProcInner::start(cmd, Some(input.to_vec())).unwrap_or_else(|e| panic!("{e}"));
        let out = inner.wait_output(timeout)?;
        Ok(CommandOutput::new(inner.what.clone(), out))
    }

    fn run_ok(&self, argv: &[&str]) -> CommandOutput {
        let out = self.run(argv);
        out.assert_success();
        out
    }

    /// Sets sysctl `key` (e.g. `net.ipv4.ip_forward`) in this namespace.
    pub(crate) fn sysctl(&self, key: &str, value: &str) {
        self.run_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Loads an nft script (`nft -f -`) in this namespace; panics with nft's
    /// error message and the script if it is rejected.
    pub(crate) fn nft(&self, ruleset: &str) {
        let out = self.run_input(["nft", "-f", "-"], ruleset.as_bytes());
        assert!(
            out.status.success(),
            "[{}] nft rejected the ruleset ({}):\n{}\n--- ruleset ---\n{}",
            self.ns,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            ruleset
        );
    }

    /// `nft list ruleset` in this namespace (for diagnostics).
    pub(crate) fn nft_ruleset(&self) -> String {
        String::from_utf8_lossy(&self.run_ok(&["nft", "list", "ruleset"]).stdout).into_owned()
    }

    fn nft_lab_rules(&self, rules: &[String]) {
        let mut script = String::from(BASE_TABLE);
        for r in rules {
            script.push_str(r);
            script.push('\n');
        }
        self.nft(&script);
    }

    /// Randomly drops `pct` percent of incoming UDP datagrams (per packet:
    /// per fragment for fragmented datagrams). 100 drops all incoming UDP.
    /// Input only sees traffic addressed to this host: on the router use
    /// [`drop_udp_forward_percent`](Host::drop_udp_forward_percent).
    pub(crate) fn drop_udp_in_percent(&self, pct: u8) {
        self.drop_udp_percent("input", pct);
    }

    /// Router: randomly drops `pct` percent of forwarded UDP packets (both
    /// directions).
    pub(crate) fn drop_udp_forward_percent(&self, pct: u8) {
        self.drop_udp_percent("forward", pct);
    }

    fn drop_udp_percent(&self, chain: &str, pct: u8) {
        // nft range-checks the comparison against the modulus, so `< 100`
        // is rejected: 100 % is a plain drop.
        let rule = match pct {
            0 => return,
            1..=99 => format!("meta l4proto udp numgen random mod 100 < {pct}"),
            100 => "meta l4proto udp".to_string(),
            _ => panic!("pct must be 0..=100, got {pct}"),
        };
        self.nft_lab_rules(&[format!("add rule inet lab {chain} {rule} drop")]);
    }

    /// Drops incoming UDP whose destination port is one of `ports`.
    pub(crate) fn drop_udp_dport_in(&self, ports: &[u16]) {
        self.nft_lab_rules(&[format!(
            "add rule inet lab input udp dport {} drop",
            port_set(ports)
        )]);
    }

    /// Drops incoming UDP whose source port is one of `ports`; on the client
    /// this emulates "the return path is blocked".
    pub(crate) fn drop_udp_sport_in(&self, ports: &[u16]) {
        self.nft_lab_rules(&[format!(
            "add rule inet lab input udp sport {} drop",
            port_set(ports)
        )]);
    }

    /// Router: rejects forwarded UDP to `port` with an ICMP error, either
    /// administratively prohibited (v4 type 3 code 13, v6 type 1 code 1) or
    /// port unreachable (v4 type 3 code 3, v6 type 1 code 4).
    pub(crate) fn reject_udp_dport_forward(&self, port: u16, admin_prohibited: bool) {
        let with = if admin_prohibited {
            "admin-prohibited"
        } else {
            "port-unreachable"
        };
        self.nft_lab_rules(&[format!(
            "add rule inet lab forward udp dport {port} reject with icmpx {with}"
        )]);
    }

    /// Router: source-NATs (masquerades) everything forwarded out of
    /// `out_iface` (e.g. `r-s`), IPv4 and IPv6, so the server sees the
    /// router's address. Note: this loads conntrack in the namespace, which
    /// reassembles fragments before the forward hook.
    pub(crate) fn snat_forward_masquerade(&self, out_iface: &str) {
        self.nft(&format!(
            "table inet labnat {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
add rule inet labnat postrouting oifname \"{out_iface}\" masquerade
"
        ));
    }

    /// Router: like [`snat_forward_masquerade`](Host::snat_forward_masquerade)
    /// with `masquerade random`: each new flow gets a random port (the
    /// mapping depends on the destination address and port).
    pub(crate) fn snat_forward_masquerade_random(&self, out_iface: &str) {
        self.nft(&format!(
            "table inet labnat {{
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
add rule inet labnat postrouting oifname \"{out_iface}\" masquerade random
"
        ));
    }

    /// Router: a stateful firewall without NAT. Forwarded packets that
    /// arrive on `outside_iface` pass only when they belong to a flow the
    /// inside started (`ct state established,related accept; drop`).
    pub(crate) fn stateful_firewall_forward(&self, outside_iface: &str) {
        self.nft(&format!(
            "table inet labfw {{
  chain forward {{ type filter hook forward priority filter; policy accept;
    iifname \"{outside_iface}\" ct state established,related accept
    iifname \"{outside_iface}\" drop
  }}
}}
"
        ));
    }

    /// Adds a second address (`cidr`, e.g. `198.18.2.3/24`) to `iface`.
    pub(crate) fn add_address(&self, iface: &str, cidr: &str) {
        self.run_ok(&["ip", "addr", "add", cidr, "dev", iface]);
    }

    /// Sets this namespace's conntrack UDP timers (seconds): after one
    /// exchange (`nf_conntrack_udp_timeout`) and for a stream
    /// (`nf_conntrack_udp_timeout_stream`). Conntrack must be in use in the
    /// namespace already (a NAT or `ct` rule loaded).
    pub(crate) fn conntrack_udp_timers(&self, one_exchange: u32, stream: u32) {
        self.sysctl(
            "net.netfilter.nf_conntrack_udp_timeout",
            &one_exchange.to_string(),
        );
        self.sysctl(
            "net.netfilter.nf_conntrack_udp_timeout_stream",
            &stream.to_string(),
        );
    }

    /// Router: drops every IPv4/IPv6 fragment (non-first fragments and first
    /// fragments with more-fragments set) that is not addressed to the router
    /// itself. Implemented in a prerouting chain at priority -500 rather than
    /// the forward chain: once conntrack is active in the namespace (e.g.
    /// masquerade), the kernel reassembles at priority -400 and a forward
    /// chain would never see a fragment.
    pub(crate) fn drop_fragments_forward(&self) {
        self.nft(&format!(
            "{BASE_TABLE}table inet lab {{
  chain prefrag {{ type filter hook prerouting priority -500; policy accept; }}
}}
add rule inet lab prefrag fib daddr type != local ip frag-off & 0x1fff != 0 drop
add rule inet lab prefrag fib daddr type != local ip frag-off & 0x2000 != 0 drop
add rule inet lab prefrag fib daddr type != local exthdr frag exists drop
"
        ));
    }

    /// Router: PMTU black hole. Drops ICMP "fragmentation needed" and ICMPv6
    /// "packet too big", both those the router generates itself (output
    /// chain; an output drop of kernel-generated ICMP is silent) and those it
    /// would forward. Combine with [`Lab::set_link_mtu`].
    pub(crate) fn drop_icmp_forward_too_big(&self) {
        self.nft(&format!(
            "{BASE_TABLE}table inet lab {{
  chain output {{ type filter hook output priority 0; policy accept; }}
}}
add rule inet lab output icmp type destination-unreachable icmp code frag-needed drop
add rule inet lab output icmpv6 type packet-too-big drop
add rule inet lab forward icmp type destination-unreachable icmp code frag-needed drop
add rule inet lab forward icmpv6 type packet-too-big drop
"
        ));
    }

    /// Sets the MTU of one interface of this host. Careful: a veth drops
    /// received frames larger than its own MTU, so lowering only one end
    /// silently kills bigger packets coming from the other end; use
    /// [`Lab::set_link_mtu`] to narrow a link.
    pub(crate) fn set_mtu(&self, iface: &str, mtu: u32) {
        self.run_ok(&["ip", "link", "set", "dev", iface, "mtu", &mtu.to_string()]);
    }

    /// Waits until something in this namespace is bound to UDP `port`
    /// (checked with `ss`). Returns whether that happened within `timeout`.
    pub(crate) fn wait_udp_bound(&self, port: u16, timeout: Duration) -> bool {
        let filter = format!("sport = :{port}");
        wait_until(timeout, || {
            self.run_timeout(["ss", "-H", "-n", "-u", "-a", &filter], SETUP_TIMEOUT)
                .map(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
                .unwrap_or(false)
        })
    }

    /// Waits until a TCP socket listens on `port` in this namespace (a
    /// udpreach server binds its UDP ports first, its control port last).
    pub(crate) fn wait_tcp_listening(&self, port: u16, timeout: Duration) -> bool {
        let filter = format!("sport = :{port}");
        wait_until(timeout, || {
            self.run_timeout(["ss", "-H", "-n", "-t", "-l", &filter], SETUP_TIMEOUT)
                .map(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
                .unwrap_or(false)
        })
    }
}

fn port_set(ports: &[u16]) -> String {
    assert!(!ports.is_empty(), "empty port list");
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

// ---------------------------------------------------------------------------
// Lab
// ---------------------------------------------------------------------------

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of network namespaces joined by veths; see the module docs.
pub(crate) struct Lab {
    id: String,
    /// Namespaces created so far (deleted on drop).
    namespaces: Vec<String>,
    client: Option<Host>,
    server: Option<Host>,
    router: Option<Host>,
    /// Lab::chain(): r1 (client side) and r2 (server side).
    chain: Vec<Host>,
    /// The middle namespace of [`Lab::emulated`] and its link emulator.
    middle: Option<Host>,
    emulator: Option<udpreach_lab_link::Relay>,
    procs: Registry,
}

/// What one direction of an emulated link does (see [`Lab::emulated`]).
pub(crate) use udpreach_lab_link::DirectionConfig as Link;
// Not every test file that includes the lab uses these.
#[allow(unused_imports)]
pub(crate) use udpreach_lab_link::{GilbertElliott, RelayStats};

impl Lab {
    /// Two namespaces, `client` (198.18.0.1, fd00::1, iface `c-s`) and
    /// `server` (198.18.0.2, fd00::2, iface `s-c`), on one veth.
    pub(crate) fn pair() -> Lab {
        let mut lab = Lab::empty();
        let c = lab.add_ns("client", false);
        let s = lab.add_ns("server", false);
        let (ci, si) = lab.link(
            (&c, "c-s", "198.18.0.1/24", "fd00::1/64"),
            (&s, "s-c", "198.18.0.2/24", "fd00::2/64"),
        );
        lab.client = Some(lab.host(c, "client", vec![ci]));
        lab.server = Some(lab.host(s, "server", vec![si]));
        lab.wait_ready();
        lab
    }

    /// Three namespaces: `client` (198.18.1.1, fd00:1::1, `c-r`) - `router`
    /// (`r-c` 198.18.1.254 fd00:1::fe, `r-s` 198.18.2.254 fd00:2::fe) -
    /// `server` (198.18.2.2, fd00:2::2, `s-r`). The router forwards v4 and
    /// v6; client and server have default routes via the router.
    pub(crate) fn routed() -> Lab {
        let mut lab = Lab::empty();
        let c = lab.add_ns("client", false);
        let r = lab.add_ns("router", true);
        let s = lab.add_ns("server", false);
        let (ci, rci) = lab.link(
            (&c, "c-r", "198.18.1.1/24", "fd00:1::1/64"),
            (&r, "r-c", "198.18.1.254/24", "fd00:1::fe/64"),
        );
        let (rsi, si) = lab.link(
            (&r, "r-s", "198.18.2.254/24", "fd00:2::fe/64"),
            (&s, "s-r", "198.18.2.2/24", "fd00:2::2/64"),
        );
        plumb_ok(&[
            "ip",
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            "198.18.1.254",
        ]);
        plumb_ok(&[
            "ip",
            "-n",
            &c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:1::fe",
        ]);
        plumb_ok(&[
            "ip",
            "-n",
            &s,
            "route",
            "add",
            "default",
            "via",
            "198.18.2.254",
        ]);
        plumb_ok(&[
            "ip",
            "-n",
            &s,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:2::fe",
        ]);
        lab.client = Some(lab.host(c, "client", vec![ci]));
        lab.router = Some(lab.host(r, "router", vec![rci, rsi]));
        lab.server = Some(lab.host(s, "server", vec![si]));
        lab.wait_ready();
        lab
    }

    /// Four namespaces in a line, each router forwarding v4 and v6:
    /// `client` (198.18.3.1, fd00:3::1, `c-r1`) - `r1` (`r1-c` 198.18.3.254
    /// fd00:3::fe, `r1-r2` 198.18.4.1 fd00:4::1) - `r2` (`r2-r1` 198.18.4.2
    /// fd00:4::2, `r2-s` 198.18.5.254 fd00:5::fe) - `server` (198.18.5.2,
    /// fd00:5::2, `s-r2`). A router's ICMP errors come from the address of
    /// the interface they leave by: r1 answers the client from 198.18.3.254
    /// and the server from 198.18.4.1; r2 answers the client from 198.18.4.2
    /// and the server from 198.18.5.254.
    pub(crate) fn chain() -> Lab {
        let mut lab = Lab::empty();
        let c = lab.add_ns("client", false);
        let r1 = lab.add_ns("r1", true);
        let r2 = lab.add_ns("r2", true);
        let s = lab.add_ns("server", false);
        let (ci, r1c) = lab.link(
            (&c, "c-r1", "198.18.3.1/24", "fd00:3::1/64"),
            (&r1, "r1-c", "198.18.3.254/24", "fd00:3::fe/64"),
        );
        let (r1r2, r2r1) = lab.link(
            (&r1, "r1-r2", "198.18.4.1/24", "fd00:4::1/64"),
            (&r2, "r2-r1", "198.18.4.2/24", "fd00:4::2/64"),
        );
        let (r2s, si) = lab.link(
            (&r2, "r2-s", "198.18.5.254/24", "fd00:5::fe/64"),
            (&s, "s-r2", "198.18.5.2/24", "fd00:5::2/64"),
        );
        for (ns, v6, dest, via) in [
            (&c, false, "default", "198.18.3.254"),
            (&c, true, "default", "fd00:3::fe"),
            (&s, false, "default", "198.18.5.254"),
            (&s, true, "default", "fd00:5::fe"),
            (&r1, false, "198.18.5.0/24", "198.18.4.2"),
            (&r1, true, "fd00:5::/64", "fd00:4::2"),
            (&r2, false, "198.18.3.0/24", "198.18.4.1"),
            (&r2, true, "fd00:3::/64", "fd00:4::1"),
        ] {
            let family = if v6 { "-6" } else { "-4" };
            plumb_ok(&["ip", "-n", ns, family, "route", "add", dest, "via", via]);
        }
        lab.client = Some(lab.host(c, "client", vec![ci]));
        lab.chain = vec![
            lab.host(r1, "r1", vec![r1c, r1r2]),
            lab.host(r2, "r2", vec![r2r1, r2s]),
        ];
        lab.server = Some(lab.host(s, "server", vec![si]));
        lab.wait_ready();
        lab
    }

    /// Like [`Lab::pair`] (client 198.18.0.1 / fd00::1, server 198.18.0.2 /
    /// fd00::2, one subnet) with a `middle` namespace on the link where the
    /// link emulator relays every frame: `up` is what client-to-server
    /// frames go through, `down` the other way. E.g. 50 ms RTT with +-5 ms
    /// jitter and 2 % loss each way:
    /// `let l = Link::emulate(ms(25), ms(5), 0.02, 0); Lab::emulated(l, l)`.
    pub(crate) fn emulated(up: Link, down: Link) -> Lab {
        Lab::emulated_seeded(up, down, 1)
    }

    /// [`Lab::emulated`] with the emulator's loss/jitter draws seeded.
    pub(crate) fn emulated_seeded(up: Link, down: Link, seed: u64) -> Lab {
        let mut lab = Lab::empty();
        let c = lab.add_ns("client", false);
        let m = lab.add_ns("middle", false);
        let s = lab.add_ns("server", false);
        // The middle only relays frames: no addresses, no IPv6 of its own.
        plumb_ok(&[
            "ip",
            "netns",
            "exec",
            &m,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        let mut ifaces = Vec::new();
        for (ns, end, mid, v4, v6) in [
            (&c, "c-m", "m-c", "198.18.0.1", "fd00::1"),
            (&s, "s-m", "m-s", "198.18.0.2", "fd00::2"),
        ] {
            plumb_ok(&[
                "ip", "link", "add", end, "netns", ns, "type", "veth", "peer", "name", mid,
                "netns", &m,
            ]);
            plumb_ok(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                end,
            ]);
            plumb_ok(&[
                "ip",
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                end,
                "nodad",
            ]);
            plumb_ok(&["ip", "-n", ns, "link", "set", "dev", end, "up"]);
            plumb_ok(&["ip", "-n", &m, "link", "set", "dev", mid, "up"]);
            ifaces.push(Iface {
                name: end.into(),
                ip4: v4.parse().unwrap(),
                ip6: v6.parse().unwrap(),
                peer_ns: m.clone(),
                peer_iface: mid.into(),
            });
        }
        let middle = lab.host(m, "middle", Vec::new());
        let cfg = udpreach_lab_link::RelayConfig {
            a: "m-c".into(),
            b: "m-s".into(),
            a_to_b: up,
            b_to_a: down,
            seed,
        };
        let relay = middle
            .enter(move || udpreach_lab_link::Relay::start(&cfg))
            .unwrap_or_else(|e| panic!("lab setup: link emulator: {e}"));
        lab.emulator = Some(relay);
        lab.middle = Some(middle);
        let server_iface = ifaces.pop().unwrap();
        let client_iface = ifaces.pop().unwrap();
        lab.client = Some(lab.host(c, "client", vec![client_iface]));
        lab.server = Some(lab.host(s, "server", vec![server_iface]));
        lab.wait_ready();
        lab
    }

    /// Lab::chain()'s router next to the client.
    pub(crate) fn r1(&self) -> &Host {
        self.chain
            .first()
            .expect("this lab has no r1: use Lab::chain()")
    }

    /// Lab::chain()'s router next to the server.
    pub(crate) fn r2(&self) -> &Host {
        self.chain
            .get(1)
            .expect("this lab has no r2: use Lab::chain()")
    }

    /// The middle namespace of [`Lab::emulated`].
    pub(crate) fn middle(&self) -> &Host {
        self.middle
            .as_ref()
            .expect("this lab has no middle: use Lab::emulated()")
    }

    /// Counters of the link emulator of [`Lab::emulated`] so far
    /// (`a_to_b` is client to server).
    pub(crate) fn emulator_stats(&self) -> RelayStats {
        self.emulator
            .as_ref()
            .expect("this lab has no link emulator: use Lab::emulated()")
            .stats()
    }

    /// The client namespace.
    pub(crate) fn client(&self) -> &Host {
        self.client.as_ref().expect("lab has no client")
    }

    /// The server namespace.
    pub(crate) fn server(&self) -> &Host {
        self.server.as_ref().expect("lab has no server")
    }

    /// The router namespace; panics for [`Lab::pair`].
    pub(crate) fn router(&self) -> &Host {
        self.router
            .as_ref()
            .expect("this lab has no router: use Lab::routed()")
    }

    /// Names of all namespaces of this lab.
    pub(crate) fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Sets the MTU on both ends of the veth that has interface `iface`
    /// (any of `c-s`, `s-c`, `c-r`, `r-c`, `r-s`, `s-r`), i.e. narrows that
    /// link. A router then answers bigger DF packets with ICMP
    /// frag-needed / packet-too-big (unless
    /// [`Host::drop_icmp_forward_too_big`] is loaded).
    pub(crate) fn set_link_mtu(&self, iface: &str, mtu: u32) {
        let hosts = [&self.client, &self.router, &self.server];
        let (host, i) = hosts
            .iter()
            .filter_map(|h| h.as_ref())
            .find_map(|h| h.ifaces.iter().find(|i| i.name == iface).map(|i| (h, i)))
            .unwrap_or_else(|| panic!("no interface {iface} in this lab"));
        host.set_mtu(&i.name, mtu);
        let mtu = mtu.to_string();
        plumb_ok(&[
            "ip",
            "-n",
            &i.peer_ns,
            "link",
            "set",
            "dev",
            &i.peer_iface,
            "mtu",
            &mtu,
        ]);
    }

    fn empty() -> Lab {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        Lab {
            id: format!("ur{}x{}", std::process::id(), n),
            namespaces: Vec::new(),
            client: None,
            server: None,
            router: None,
            chain: Vec::new(),
            middle: None,
            emulator: None,
            procs: Arc::default(),
        }
    }

    fn host(&self, ns: String, role: &'static str, ifaces: Vec<Iface>) -> Host {
        Host {
            ns,
            role,
            ifaces,
            procs: Arc::clone(&self.procs),
        }
    }

    fn add_ns(&mut self, role: &str, forwarding: bool) -> String {
        let ns = format!("{}-{}", self.id, role);
        plumb_ok(&["ip", "netns", "add", &ns]);
        // Recorded before anything else can fail, so Drop removes it.
        self.namespaces.push(ns.clone());
        let mut sysctls = vec![
            // Interfaces created later inherit "default".
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            // No ICMP error rate limiting (per-peer token bucket and global).
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv4.icmp_ratemask=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv4.icmp_msgs_per_sec=1000000",
            "net.ipv4.icmp_msgs_burst=1000000",
        ];
        if forwarding {
            sysctls.push("net.ipv4.ip_forward=1");
            sysctls.push("net.ipv6.conf.all.forwarding=1");
        }
        let mut argv = vec!["ip", "netns", "exec", &ns, "sysctl", "-q", "-w"];
        argv.extend(sysctls);
        plumb_ok(&argv);
        plumb_ok(&["ip", "-n", &ns, "link", "set", "dev", "lo", "up"]);
        ns
    }

    /// Creates a veth between two namespaces, addresses it and brings it up.
    fn link(&self, a: (&str, &str, &str, &str), b: (&str, &str, &str, &str)) -> (Iface, Iface) {
        let (a_ns, a_if, a4, a6) = a;
        let (b_ns, b_if, b4, b6) = b;
        plumb_ok(&[
            "ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if,
            "netns", b_ns,
        ]);
        for (ns, ifn, v4, v6) in [a, b] {
            plumb_ok(&["ip", "-n", ns, "addr", "add", v4, "dev", ifn]);
            plumb_ok(&["ip", "-n", ns, "-6", "addr", "add", v6, "dev", ifn, "nodad"]);
            plumb_ok(&["ip", "-n", ns, "link", "set", "dev", ifn, "up"]);
        }
        let addr4 = |s: &str| -> Ipv4Addr { s.split('/').next().unwrap().parse().unwrap() };
        let addr6 = |s: &str| -> Ipv6Addr { s.split('/').next().unwrap().parse().unwrap() };
        (
            Iface {
                name: a_if.into(),
                ip4: addr4(a4),
                ip6: addr6(a6),
                peer_ns: b_ns.into(),
                peer_iface: b_if.into(),
            },
            Iface {
                name: b_if.into(),
                ip4: addr4(b4),
                ip6: addr6(b6),
                peer_ns: a_ns.into(),
                peer_iface: a_if.into(),
            },
        )
    }

    /// Waits until every interface is up and has a non-tentative IPv6
    /// link-local address (needed for neighbour discovery to work at once).
    fn wait_ready(&self) {
        let hosts = [&self.client, &self.router, &self.server];
        for host in hosts.iter().filter_map(|h| h.as_ref()).chain(&self.chain) {
            for i in &host.ifaces {
                let ready = wait_until(LINK_READY_TIMEOUT, || {
                    let link = plumb(&["ip", "-n", &host.ns, "link", "show", "dev", &i.name]);
                    let ll = plumb(&[
                        "ip", "-n", &host.ns, "-6", "addr", "show", "dev", &i.name, "scope", "link",
                    ]);
                    match (link, ll) {
                        (Ok(link), Ok(ll)) => {
                            let link = String::from_utf8_lossy(&link.stdout);
                            let ll = String::from_utf8_lossy(&ll.stdout);
                            link.contains("LOWER_UP")
                                && ll.contains("fe80::")
                                && !ll.contains("tentative")
                        }
                        _ => false,
                    }
                });
                assert!(
                    ready,
                    "lab setup: {}/{} not ready within {:?}",
                    host.ns, i.name, LINK_READY_TIMEOUT
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // 0. The link emulator's threads (in this process).
        drop(self.emulator.take());
        // 1. Our own processes, whole process groups.
        let procs: Vec<Arc<ProcInner>> = lock(&self.procs).drain(..).collect();
        for p in &procs {
            p.kill();
        }
        // 2. Anything else still running inside the namespaces (a live
        //    process keeps a deleted namespace and its veths alive).
        for ns in &self.namespaces {
            if let Ok(out) = plumb(&["ip", "netns", "pids", ns]) {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = plumb(&["kill", "-s", "KILL", "--", pid]);
                }
            }
        }
        // 3. The namespaces themselves (veths go with them).
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = plumb(&["ip", "netns", "del", ns]) {
                eprintln!("lab cleanup: {e}");
            }
        }
    }
}
