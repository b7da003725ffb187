//! udpreach-specific helpers on top of the lab: start a server, run the
//! client, read its JSON. Keeps each integration test a few lines long.
#![allow(dead_code)]

use crate::lab::{udpreach_bin, Host, Proc};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// Starts `udpreach server` on the host's addresses (IPv4 and IPv6, port 4000) plus loopback.
pub fn start_server(host: &Host, extra: &[&str]) -> Proc {
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
    assert!(
        host.wait_udp_bound(4000, Duration::from_secs(10)),
        "server did not start: {}",
        p.stderr_so_far()
    );
    p
}

/// Runs the udpreach binary in `host` with a bound on time.
pub fn udpreach(host: &Host, args: &[&str]) -> Output {
    let mut argv = vec![udpreach_bin().display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    host.run_timeout(&argv, Duration::from_secs(120))
        .unwrap_or_else(|t| panic!("udpreach {args:?} timed out: {:?}", t.output))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// JSON lines printed by `--json` ping, parsed.
pub fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The final `summary` object of a `--json` ping.
pub fn summary(o: &Output) -> Value {
    json_lines(o)
        .into_iter()
        .rev()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {}\nstderr: {}", stdout(o), stderr(o)))
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}
