//! demo.sh, run as a user would (with the test build instead of a release
//! build) inside a network namespace, so its loopback server and full port
//! sweep touch nothing outside it: every exit code it shows says what it means.

mod lab;

use lab::{require_root, udpreach_bin, Lab};
use std::time::Duration;

#[test]
fn demo_says_what_each_exit_code_means() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo.sh");
    let bin = format!("UDPREACH_DEMO_BIN={}", udpreach_bin().display());
    let out = lab
        .client()
        .run_timeout(
            ["env", bin.as_str(), "bash", demo],
            Duration::from_secs(180),
        )
        .unwrap_or_else(|t| panic!("{t}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.assert_success();
    let codes: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("(exit code"))
        .collect();
    // ping v4, ping v6 (when the namespace has ::1), two port sweeps.
    assert!(codes.len() >= 3, "{stdout}");
    for line in &codes {
        let (_, why) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("no meaning: {line}"));
        assert!(why.len() > 10, "{line}");
    }
    assert!(
        codes[0].starts_with("(exit code 0: at least one reply"),
        "{stdout}"
    );
    let last = codes.last().expect("sweep");
    assert!(
        last.starts_with("(exit code 1: some requested port is not reachable")
            && last.contains("denied_by_server"),
        "{stdout}"
    );
}
