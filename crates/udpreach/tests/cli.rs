//! The command-line surface: usage errors (one line, naming the value, exit
//! 2), --help and --version, completions and man page, and the options whose
//! defaults or checks depend on the mode (key, listen addresses, limits).
//! Loopback only; servers use ports 26710-26799.

mod lab;
mod loopback;
mod util;

use lab::CommandOutput;
use loopback::{bin, key_file, run, server, spawn};
use std::time::Duration;
use util::{stderr, stdout};

const T: Duration = Duration::from_secs(60);

/// Exit 2 and exactly one stderr line, `udpreach: ...`, containing `needle`.
fn assert_usage_error(args: &[&str], out: &CommandOutput, needle: &str) {
    let err = stderr(out);
    out.assert_code(2);
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err:?}");
    assert!(err.starts_with("udpreach: "), "{args:?}: {err:?}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: {}", stdout(out));
}

#[test]
fn zero_absurd_and_malformed_values_are_one_line_errors_with_exit_2() {
    // Every duration and count option of every command, at zero, negative
    // and beyond its upper bound; and clap's own error kinds.
    let cases: &[(&[&str], &str)] = &[
        (&["ping", "-W", "0", "127.0.0.1"], "'0'"),
        (&["ping", "-W", "2h", "127.0.0.1"], "'2h'"),
        (&["ping", "-c", "0", "127.0.0.1"], "'0'"),
        (&["ping", "-c", "-1", "127.0.0.1"], "'-1'"),
        (
            &["ping", "-c", "1000000000000", "127.0.0.1"],
            "'1000000000000'",
        ),
        (&["ping", "-i", "0", "127.0.0.1"], "'0'"),
        (&["ping", "-i", "-1", "127.0.0.1"], "'-1'"),
        (&["ping", "-i", "2h", "127.0.0.1"], "'2h'"),
        (&["ping", "-w", "0", "127.0.0.1"], "'0'"),
        (&["ping", "-w", "31d", "127.0.0.1"], "'31d'"),
        (&["ping", "-s", "-5", "127.0.0.1"], "'-5'"),
        (&["ping", "--ttl", "0", "127.0.0.1"], "'0'"),
        (&["ping", "--dscp", "64", "127.0.0.1"], "'64'"),
        (&["ping", "-c"], "--count"),
        (&["ping"], "<HOST[:PORT]>"),
        (&["ping", "--count=x", "127.0.0.1"], "'x'"),
        (&["ping", "--bogus", "127.0.0.1"], "'--bogus'"),
        (&["ping", "-4", "-6", "127.0.0.1"], "'-6'"),
        (&["pong", "127.0.0.1"], "'pong'"),
        (&["server", "--idle-timeout", "0"], "'0'"),
        (&["server", "--idle-timeout", "2h"], "'2h'"),
        (&["server", "--max-sessions", "0"], "'0'"),
        (&["server", "--max-ports-per-session", "0"], "'0'"),
        (&["server", "--max-total-ports", "-1"], "'-1'"),
        (&["server", "--max-probe-rate", "0"], "'0'"),
        (&["server", "--plain-echo-rate", "0"], "'0'"),
        (&["server", "--max-datagram", "0"], "'0'"),
        (&["ports", "127.0.0.1", "5000", "--timeout", "0"], "'0'"),
        (&["ports", "127.0.0.1", "5000", "--retries", "0"], "'0'"),
        (&["ports", "127.0.0.1", "5000", "--retries", "21"], "'21'"),
        (&["ports", "127.0.0.1", "5000", "--rate", "0"], "'0'"),
        (&["mtu", "127.0.0.1", "--probes", "0"], "'0'"),
        (&["mtu", "127.0.0.1", "--timeout", "0"], "'0'"),
        (&["mtu", "127.0.0.1", "--timeout", "1h"], "'1h'"),
        (&["completions", "tcsh"], "'tcsh'"),
    ];
    for (args, needle) in cases {
        let out = run(args, &[], T);
        assert_usage_error(args, &out, needle);
    }
}

#[test]
fn listen_given_twice_or_overlapping_is_named() {
    for (args, needle) in [
        (
            &["server", "-l", "127.0.0.1:26710", "-l", "127.0.0.1:26710"][..],
            "--listen '127.0.0.1:26710' is given twice",
        ),
        (
            &["server", "-l", "0.0.0.0:26710", "-l", "127.0.0.1:26710"][..],
            "overlaps",
        ),
    ] {
        let out = run(args, &[], T);
        assert_usage_error(args, &out, needle);
    }
}

#[test]
fn allow_ports_naming_only_the_servers_own_ports_is_refused() {
    let args = [
        "server",
        "-l",
        "127.0.0.1:26711",
        "--control",
        "26712",
        "--allow-ports",
        "26711-26712",
    ];
    let out = run(&args, &[], T);
    assert_usage_error(&args, &out, "--allow-ports '26711-26712'");
}

#[test]
fn max_total_ports_beyond_the_open_files_limit_is_refused() {
    // A hard limit of 1024 descriptors leaves room for 512 test ports.
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args([
            "server",
            "-l",
            "127.0.0.1:26713",
            "--max-total-ports",
            "5000",
        ])
        .env_remove("UDPREACH_KEY");
    let out = lab::run_local(sh, T).unwrap_or_else(|t| panic!("{t}"));
    assert_usage_error(&["server", "--max-total-ports", "5000"], &out, "'5000'");
    assert!(stderr(&out).contains("open-files limit"));
}

#[test]
fn help_shows_each_commands_own_exit_codes_defaults_and_groups() {
    let help = |args: &[&str]| {
        let out = run(args, &[], T);
        out.assert_code(0);
        assert!(out.stderr.is_empty(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let ping = help(&["ping", "--help"]);
    assert!(ping.contains("1 no reply at all"), "{ping}");
    assert!(!ping.contains("clean shutdown") && !ping.contains("fragments"));
    assert!(ping.contains("[default: until Ctrl+C"), "{ping}");
    for heading in ["Probes:", "Path:", "Output:", "Authentication:"] {
        assert!(ping.contains(heading), "{heading}: {ping}");
    }
    let server = help(&["server", "--help"]);
    assert!(server.contains("0 clean shutdown"), "{server}");
    assert!(!server.contains("no reply at all"), "{server}");
    assert!(server.contains("[default: each --listen address's own port]"));
    let ports = help(&["ports", "--help"]);
    assert!(ports.contains("-l, --list"), "{ports}");
    assert!(!ports.contains("also -v"), "{ports}");
    assert!(!ports.contains("no reply at all"));
    let mtu = help(&["mtu", "--help"]);
    assert!(mtu.contains("fragments are dropped"), "{mtu}");
    assert!(!mtu.contains("clean shutdown"));
    assert!(help(&["--help"]).contains("udpreach COMMAND --help"));
}

#[test]
fn version_names_the_git_commit_when_built_from_git() {
    let out = run(&["--version"], &[], T);
    out.assert_code(0);
    let v = stdout(&out);
    assert!(
        v.starts_with(&format!("udpreach {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| stdout(&o).trim().to_string());
    if let Some(commit) = in_git {
        // The binary may be a commit behind when tests run on uncommitted work.
        assert!(v.contains("(git "), "{v} (HEAD is {commit})");
    }
}

#[test]
fn completions_and_man_pages_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell], &[], T);
        out.assert_code(0);
        let s = stdout(&out);
        assert!(s.contains("udpreach") && s.contains("key-file"), "{shell}");
    }
    let out = run(&["man"], &[], T);
    out.assert_code(0);
    let page = stdout(&out);
    assert!(page.contains(".TH udpreach 1"), "{page}");
    let out = run(&["man", "ping"], &[], T);
    let page = stdout(&out);
    assert!(page.contains(".TH udpreach-ping 1") && page.contains("deadline"));
}

const KEY: &[u8] = b"a shared secret for the cli tests\n";

#[test]
fn keyed_ping_defaults_to_the_smallest_authenticated_size() {
    let k = key_file("cli-server", KEY);
    let _srv = server(
        26720,
        &[
            "--allow-ports",
            "26790-26799",
            "--key-file",
            k.to_str().unwrap(),
        ],
    );
    let out = run(
        &[
            "ping",
            "127.0.0.1:26720",
            "-c",
            "2",
            "-i",
            "0.05",
            "--json-lines",
            "--key-file",
            k.to_str().unwrap(),
        ],
        &[],
        T,
    );
    out.assert_code(0);
    let first = stdout(&out);
    let start: serde_json::Value =
        serde_json::from_str(first.lines().next().expect("start line")).expect("JSON");
    assert_eq!(start["bytes"], 80, "{start}");
    // Without a key the default stays 64.
    let out = run(&["ping", "127.0.0.1:26720", "-c", "1", "-W", "0.2"], &[], T);
    assert!(stdout(&out).contains("64 bytes per probe"));
}

#[test]
fn keyless_ping_to_a_keyed_server_says_a_key_is_required() {
    let k = key_file("cli-server-2", KEY);
    let _srv = server(
        26721,
        &[
            "--allow-ports",
            "26780-26789",
            "--key-file",
            k.to_str().unwrap(),
        ],
    );
    // Without -c: the check must end the run, not 100% loss forever.
    let out = run(&["ping", "127.0.0.1:26721", "-i", "0.1"], &[], T);
    let err = stderr(&out);
    out.assert_code(2);
    assert!(err.contains("127.0.0.1:26721 requires a key"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A short run ends before the check could: it waits for it at the end.
    let out = run(&["ping", "127.0.0.1:26721", "-c", "1", "-W", "1ms"], &[], T);
    out.assert_code(2);
    assert!(stderr(&out).contains("requires a key"));
}

#[test]
fn keyless_ping_to_a_plain_echo_server_is_not_affected_by_the_key_check() {
    // Plain UDP echo without any TCP listener: the check finds nothing.
    let echo = std::net::UdpSocket::bind("127.0.0.1:26722").expect("bind");
    echo.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let out = run(
        &["ping", "127.0.0.1:26722", "-c", "2", "-i", "0.05"],
        &[],
        T,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    out.assert_code(0);
    // Nothing but, on a loaded test machine, the notice that the interval
    // could not be kept.
    let unexpected: Vec<String> = stderr(&out)
        .lines()
        .filter(|l| !l.contains("could not send every"))
        .map(String::from)
        .collect();
    assert!(unexpected.is_empty(), "{}", stderr(&out));
}

#[test]
fn keyless_ping_to_nothing_is_no_reply_not_a_key_error() {
    // Nothing listens on 26725 (UDP or TCP): the key check, run after the
    // first timeout, finds nothing and ping reports plain loss, exit 1.
    let out = run(
        &[
            "ping",
            "127.0.0.1:26725",
            "-c",
            "2",
            "-i",
            "0.05",
            "-W",
            "0.1",
        ],
        &[],
        T,
    );
    out.assert_code(1);
    assert!(!stderr(&out).contains("key"), "{}", stderr(&out));
}

#[test]
fn log_output_has_no_colour_when_not_a_terminal() {
    // -vv: the server logs (sessions at info) to a pipe.
    let srv = spawn(
        &[
            "-vv",
            "server",
            "-l",
            "127.0.0.1:26723",
            "--allow-ports",
            "26760-26769",
        ],
        &[],
    );
    let up = loopback::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect("127.0.0.1:26723").is_ok()
    });
    assert!(up, "server did not start");
    // A port-test session: logged at info when it starts and ends.
    let _ = run(&["ports", "127.0.0.1:26723", "26760"], &[], T);
    srv.kill();
    let err = match srv.wait_output_timeout(Duration::from_secs(5)) {
        Ok(out) => stderr(&out),
        Err(t) => stderr(&t.output),
    };
    assert!(
        err.contains("INFO") || err.contains("DEBUG"),
        "no log: {err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in piped log: {err:?}"
    );
}

#[test]
fn ports_verbose_does_not_list_every_port_but_list_does() {
    let _srv = server(26724, &["--allow-ports", "26770-26779"]);
    let lists = |flag: &str| {
        let out = run(&["ports", "127.0.0.1:26724", "26770-26773", flag], &[], T);
        out.assert_code(0);
        stdout(&out).lines().any(|l| l.starts_with("port 26771 "))
    };
    assert!(lists("-l"));
    assert!(lists("--list"));
    assert!(!lists("-v"));
}

/// Output into a pipe that closes early (`| head`) ends the client quietly,
/// as any Unix filter does (SIGPIPE), never with a panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let _srv = server(26730, &["--allow-ports", "26731-26739"]);
    let script = format!(
        "{} ping 127.0.0.1:26730 -c 200 -i 2ms --json-lines | head -1; echo \"rc=${{PIPESTATUS[0]}}\"",
        bin().display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(&script);
    let out = lab::run_local(cmd, T).expect("bash finishes");
    let stdout = out.stdout_text();
    let stderr = out.stderr_text();
    assert!(stdout.contains("\"type\":\"start\""), "{stdout}");
    // 141 = killed by SIGPIPE (128 + 13), as coreutils filters end.
    assert!(stdout.contains("rc=141"), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
