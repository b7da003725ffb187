//! What the commands print: the JSON modes (`--json` one document,
//! `--json-lines` one object per line, `-q` the summary only), real output
//! checked against the published schemas in docs/schema, and the README's
//! loopback examples run as written.

mod lab;
mod loopback;
mod schema;
mod util;

use lab::{require_root, CommandOutput, Lab};
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};
use util::stdout;

const RUN: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> CommandOutput {
    loopback::run(args, &[], RUN)
}

fn document(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{}\nstderr: {}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The `type` of each line or event, in order. `behind_schedule` (the
/// machine could not keep the interval: a loaded test machine, not the
/// behaviour under test) is left out.
fn types(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["type"].as_str().unwrap_or("(none)").to_string())
        .filter(|t| t != "behind_schedule")
        .collect()
}

/// A port nothing listens on (ICMP port unreachable on loopback).
const CLOSED: &str = "26199";

#[test]
fn ping_json_modes_match_their_schemas() {
    let _srv = loopback::server(26101, &[]);
    let target = "127.0.0.1:26101";

    // --json: one document; its events are every probe's fate in order.
    let o = run(&["ping", "-c", "3", "-i", "20ms", "--json", target]);
    o.assert_code(0);
    let doc = document(&o);
    schema::assert_valid("ping.json", &doc);
    assert_eq!(doc["start"]["remote"], target);
    assert_eq!(types(doc["events"].as_array().unwrap()), ["reply"; 3]);
    assert_eq!(doc["summary"]["received"], 3);
    assert!(doc["events"][0]["server_saw"].is_string(), "{doc}");

    // -q --json: the same document without the events.
    let o = run(&["ping", "-c", "2", "-i", "20ms", "-q", "--json", target]);
    let doc = document(&o);
    schema::assert_valid("ping.json", &doc);
    assert!(doc.get("events").is_none(), "{doc}");
    assert_eq!(doc["summary"]["transmitted"], 2);

    // --json-lines: start, one line per event, summary.
    let o = run(&["ping", "-c", "3", "-i", "20ms", "--json-lines", target]);
    schema::assert_lines_valid("ping-lines.json", &stdout(&o));
    assert_eq!(
        types(&lines(&o)),
        ["start", "reply", "reply", "reply", "summary"]
    );

    // -q --json-lines: the summary line only.
    let o = run(&[
        "ping",
        "-c",
        "2",
        "-i",
        "20ms",
        "-q",
        "--json-lines",
        target,
    ]);
    schema::assert_lines_valid("ping-lines.json", &stdout(&o));
    assert_eq!(types(&lines(&o)), ["summary"]);

    // ICMP errors and timeouts are events too (port unreachable from loopback).
    let closed = format!("127.0.0.1:{CLOSED}");
    let o = run(&[
        "ping", "-c", "2", "-i", "20ms", "-W", "100ms", "--json", &closed,
    ]);
    o.assert_code(1);
    let doc = document(&o);
    schema::assert_valid("ping.json", &doc);
    assert_eq!(types(doc["events"].as_array().unwrap()), ["icmp_error"; 2]);
    assert_eq!(doc["events"][0]["reason"], "port_unreachable");
    assert_eq!(doc["summary"]["errors"], 2);

    // --json and --json-lines together is a usage error.
    let o = run(&["ping", "-c", "1", "--json", "--json-lines", target]);
    o.assert_code(2);
}

#[test]
fn ports_json_modes_match_their_schemas() {
    let _srv = loopback::server(26102, &["--allow-ports", "26200-26299"]);
    let target = "127.0.0.1:26102";
    let spec = "26200-26209";

    let o = run(&["ports", "--json", target, spec]);
    o.assert_code(0);
    let doc = document(&o);
    schema::assert_valid("ports.json", &doc);
    assert_eq!(doc["total"], 10);
    assert_eq!(doc["ports"].as_array().unwrap().len(), 10);
    assert_eq!(doc["counts"]["reachable"], 10);

    let o = run(&["ports", "--json-lines", target, spec]);
    o.assert_code(0);
    schema::assert_lines_valid("ports-lines.json", &stdout(&o));
    let l = lines(&o);
    let t = types(&l);
    assert_eq!(t.first().map(String::as_str), Some("start"));
    assert_eq!(t.last().map(String::as_str), Some("summary"));
    assert_eq!(t.iter().filter(|t| *t == "port").count(), 10, "{t:?}");
    assert!(
        l.last().unwrap().get("ports").is_none(),
        "summary has no list"
    );

    let o = run(&["ports", "-q", "--json-lines", target, spec]);
    schema::assert_lines_valid("ports-lines.json", &stdout(&o));
    assert_eq!(types(&lines(&o)), ["summary"]);
}

#[test]
fn serverless_json_modes_match_their_schemas() {
    // Port 26103 answers (the server's echo port); the others are closed.
    let _srv = loopback::server(26103, &[]);
    let spec = format!("26103,{CLOSED}");

    let o = run(&["ports", "--no-server", "--json", "127.0.0.1", &spec]);
    let doc = document(&o);
    schema::assert_valid("ports-no-server.json", &doc);
    assert_eq!(doc["mode"], "no_server");
    assert_eq!(doc["counts"]["open"], 1, "{doc}");
    assert_eq!(doc["counts"]["closed"], 1, "{doc}");

    let o = run(&["ports", "--no-server", "--json-lines", "127.0.0.1", &spec]);
    schema::assert_lines_valid("ports-no-server-lines.json", &stdout(&o));
    assert_eq!(types(&lines(&o)), ["start", "port", "port", "summary"]);

    let o = run(&[
        "ports",
        "--no-server",
        "-q",
        "--json-lines",
        "127.0.0.1",
        &spec,
    ]);
    assert_eq!(types(&lines(&o)), ["summary"]);
}

#[test]
fn mtu_json_modes_match_their_schemas() {
    let _srv = loopback::server(26104, &[]);
    let target = "127.0.0.1:26104";

    // Through the echo port: whatever the answer, it is a valid document.
    let o = run(&["mtu", "--echo", "--no-fragments", "--json", target]);
    let doc = document(&o);
    schema::assert_valid("mtu.json", &doc);
    assert_eq!(doc["mode"], "echo");
    assert_eq!(doc["family"], "ipv4");
    assert!(doc["round_trip"].is_object(), "{doc}");

    let o = run(&["mtu", "--echo", "--no-fragments", "--json-lines", target]);
    schema::assert_lines_valid("mtu-lines.json", &stdout(&o));
    assert_eq!(types(&lines(&o)), ["start", "summary"]);

    let o = run(&[
        "mtu",
        "--echo",
        "--no-fragments",
        "-q",
        "--json-lines",
        target,
    ]);
    assert_eq!(types(&lines(&o)), ["summary"]);
}

/// The validator rejects what the schema does not allow, so a pass above
/// means something.
#[test]
fn schema_validator_rejects_wrong_output() {
    let good = serde_json::json!({
        "type": "reply", "seq": 1, "local": "127.0.0.1:5", "remote": "127.0.0.1:4000",
        "bytes": 64, "rtt_ms": 0.1, "ttl": 64
    });
    let s = schema::load("ping-lines.json");
    assert!(
        schema::errors(&s, &good).is_empty(),
        "{:?}",
        schema::errors(&s, &good)
    );
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("rtt_ms");
    assert!(!schema::errors(&s, &missing).is_empty());
    let mut wrong_type = good.clone();
    wrong_type["seq"] = "1".into();
    assert!(!schema::errors(&s, &wrong_type).is_empty());
    let mut unknown_type = good;
    unknown_type["type"] = "rpely".into();
    assert!(!schema::errors(&s, &unknown_type).is_empty());
}

// ------------------------------------------------------------ README examples

/// A `$ udpreach ...` line of a fenced block in the README, and the lines
/// shown after it.
#[derive(Debug)]
struct Example {
    command: String,
    shown: Vec<String>,
}

impl Example {
    /// A usage-error example: one `udpreach: ...` line on stderr, exit 2,
    /// refused before anything is sent (so it runs anywhere).
    fn is_usage_error(&self) -> bool {
        self.shown.len() == 1 && self.shown[0].starts_with("udpreach: ")
    }
}

fn readme_examples() -> Vec<Example> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut current: Option<Example> = None;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            out.extend(current.take());
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.extend(current.take());
            current = Some(Example {
                command: cmd.trim().to_string(),
                shown: Vec::new(),
            });
        } else if let Some(ex) = current.as_mut() {
            ex.shown.push(line.to_string());
        }
    }
    for ex in &mut out {
        while ex.shown.last().is_some_and(|l| l.trim().is_empty()) {
            ex.shown.pop();
        }
    }
    out
}

/// A line's shape: every number masked and runs of spaces folded, so that
/// RTTs, counts and ephemeral ports may differ but words, order and
/// punctuation may not.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut prev_digit = false;
    let mut prev_space = false;
    for c in line.trim_end().chars() {
        if c.is_ascii_digit() {
            if !prev_digit {
                out.push('#');
            }
            prev_digit = true;
            prev_space = false;
            continue;
        }
        prev_digit = false;
        if c == ' ' {
            if !prev_space {
                out.push(' ');
            }
            prev_space = true;
            continue;
        }
        prev_space = false;
        out.push(c);
    }
    out
}

/// The run time of ping's statistics line (`..., time 801ms`): the one
/// number an example fixes by its options (count and interval), so it is
/// compared, not masked.
fn run_time_ms(line: &str) -> Option<f64> {
    line.rsplit_once(", time ")?
        .1
        .strip_suffix("ms")?
        .parse()
        .ok()
}

fn assert_same_shape(command: &str, shown: &[String], printed: &str) {
    let shapes = |lines: Vec<&str>| lines.into_iter().map(shape).collect::<Vec<_>>();
    assert_eq!(
        shapes(shown.iter().map(String::as_str).collect()),
        shapes(printed.lines().collect()),
        "the README's `{command}` example is not what the command prints (numbers masked)"
    );
    for (s, p) in shown.iter().zip(printed.lines()) {
        if let (Some(s), Some(p)) = (run_time_ms(s), run_time_ms(p)) {
            // The schedule cannot finish early; a loaded machine can make
            // it finish late (a stall while the last reply is handled).
            let slack = (s * 0.1).max(50.0);
            assert!(
                p >= s - slack && p <= s + slack.max(500.0),
                "the README's `{command}` example shows time {s}ms, the command took {p}ms"
            );
        }
    }
}

/// The README's loopback examples (`$ udpreach server` and the commands
/// aimed at 127.0.0.1) run as written, each printed line compared with the
/// README's with numbers masked. In a network namespace of its own, so the
/// server listens on its default port 4000 as the README shows without
/// touching the host.
#[test]
fn readme_loopback_examples_print_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let server_ex = examples
        .iter()
        .find(|e| e.command == "udpreach server")
        .expect("the README shows `$ udpreach server`");
    let clients: Vec<&Example> = examples
        .iter()
        .filter(|e| e.command != "udpreach server" && is_loopback_example(e))
        .collect();
    assert!(clients.len() >= 3, "loopback examples found: {clients:?}");

    let lab = Lab::pair();
    let host = lab.server();
    let server = host.spawn([lab::udpreach_bin().display().to_string(), "server".into()]);
    let started = Instant::now();
    while !server.stdout_so_far().contains('\n') {
        assert!(
            started.elapsed() < Duration::from_secs(10) && server.is_running(),
            "server did not start: {}",
            server.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host.wait_udp_bound(4000, Duration::from_secs(10)));
    assert_same_shape(
        &server_ex.command,
        &server_ex.shown,
        server.stdout_so_far().lines().next().unwrap_or_default(),
    );

    for ex in clients {
        run_example(host, ex);
    }
}

/// Runs an example's command as written in `host` and compares its output.
fn run_example(host: &lab::Host, ex: &Example) {
    let mut argv = vec![lab::udpreach_bin().display().to_string()];
    argv.extend(ex.command.split_whitespace().skip(1).map(String::from));
    let o = host
        .run_timeout(&argv, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("`{}` did not finish: {e}", ex.command));
    if ex.is_usage_error() {
        o.assert_code(2);
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim_end(),
            ex.shown[0],
            "`{}` printed another error than the README shows",
            ex.command
        );
        return;
    }
    assert!(
        o.status.code().is_some_and(|c| c < 2),
        "`{}` failed: {}",
        ex.command,
        String::from_utf8_lossy(&o.stderr)
    );
    if std::env::var_os("UDPREACH_SHOW_EXAMPLES").is_some() {
        eprintln!("$ {}\n{}", ex.command, stdout(&o));
    }
    assert_same_shape(&ex.command, &ex.shown, &stdout(&o));
}

fn example<'a>(examples: &'a [Example], command: &str) -> &'a Example {
    examples
        .iter()
        .find(|e| e.command == command)
        .unwrap_or_else(|| panic!("the README no longer shows `$ {command}`: update this test"))
}

/// The README's lab examples, in the order the routed test runs them.
const ROUTED_EXAMPLES: [&str; 5] = [
    "udpreach ports 198.18.2.2 5999-6001",
    "udpreach ping -c 2 198.18.2.2:6000",
    "udpreach ports --no-server 198.18.2.2 50-60,120-125,6000",
    "udpreach mtu 198.18.2.2",
    "udpreach ping -c 3 -i 100ms 198.18.2.2",
];

/// The README's `udpreach nat` example, run by
/// `readme_nat_example_prints_what_the_readme_shows`.
const NAT_EXAMPLE: &str = "udpreach nat 198.18.2.2:4000 --max-idle 60s";

/// README examples not run as written: fragments of the output (`...`), and
/// outputs whose numbers change shape from run to run (the withheld example:
/// its loss is 0% or 0.1% depending on whether the last reply was withheld;
/// `lab_attack_udp::withheld_replies_are_reported_not_loss_and_short_probes_are_probes`
/// checks what it shows).
const FRAGMENTS: [&str; 3] = [
    "udpreach mtu 198.18.2.2        # the router's ICMP now filtered: a black hole",
    "udpreach ping -c 1000 -i 1ms -q 198.18.0.2",
    // A stalled server: the behaviour is `ping::replies_our_full_buffer_dropped_are_not_loss`.
    "udpreach ping -c 2000 -i 500us --recv-buffer 4096 -q 198.18.0.2",
];

/// The README's `trace` examples, run in the router chain set up as the
/// README says (r2 drops UDP to 5060 and 5070-5079, r1 drops UDP from 5061).
const CHAIN_EXAMPLES: [&str; 3] = [
    "udpreach trace 198.18.5.2 -p 5060,5061",
    "udpreach trace 198.18.5.2 -p 5060,5061 --no-server",
    "udpreach ports 198.18.5.2 5058-5081 --trace",
];

/// The README's DSCP/ECN and MTU examples, run in the router chain set up
/// as the README says: r1 clears the DSCP of what comes from the client, r2
/// sets DSCP 10 and ECN CE on what comes from the server; then (rules gone)
/// the r1 - r2 link at MTU 1280.
const MARKING_EXAMPLES: [&str; 3] = [
    "udpreach ping -c 3 -i 100ms -q --dscp 46 --ecn ect0 198.18.5.2",
    "udpreach trace 198.18.5.2 -p 5060 --dscp 46",
    "udpreach trace 198.18.5.2 -p 5060 --size 1400",
];
/// The README's STAMP example: `udpreach ping --stamp` against
/// `udpreach server --stamp` in a namespace pair (see
/// [`readme_stamp_example_prints_what_the_readme_shows`]).
const STAMP_EXAMPLES: [&str; 1] = ["udpreach ping --stamp 198.18.0.2 -c 4 -i 0.2 --dscp 46"];

fn is_loopback_example(ex: &Example) -> bool {
    ex.command == "udpreach server" || ex.command.contains("127.0.0.1") || ex.is_usage_error()
}

/// No README example escapes the tests: each is run on loopback, run in the
/// routed lab, or listed as a fragment.
#[test]
fn every_readme_example_is_run() {
    for ex in readme_examples() {
        let c = ex.command.as_str();
        assert!(
            is_loopback_example(&ex)
                || ROUTED_EXAMPLES.contains(&c)
                || CHAIN_EXAMPLES.contains(&c)
                || MARKING_EXAMPLES.contains(&c)
                || FRAGMENTS.contains(&c)
                || STAMP_EXAMPLES.contains(&c)
                || c == NAT_EXAMPLE,
            "the README example `$ {c}` is run by no test: add it to ROUTED_EXAMPLES (with the lab set-up it needs)"
        );
    }
}

/// The README's examples through a router (the routed lab, set up as the
/// README's text says): a router that rejects UDP port 6000 with
/// admin-prohibited, DNS and NTP answering on the server, a 1400-byte link
/// between router and server, then a router that masquerades towards the
/// server.
#[test]
fn readme_routed_examples_print_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let lab = Lab::routed();
    let _server = util::start_server(lab.server(), &[]);
    let _services: Vec<lab::Proc> = [53, 123]
        .into_iter()
        .map(|p| util::socat_echo(lab.server(), p))
        .collect();
    let router = lab.router();
    router.reject_udp_dport_forward(6000, true);
    for command in &ROUTED_EXAMPLES[..3] {
        run_example(lab.client(), example(&examples, command));
    }
    lab.set_link_mtu("r-s", 1400);
    run_example(lab.client(), example(&examples, ROUTED_EXAMPLES[3]));
    lab.set_link_mtu("r-s", 1500);
    router.snat_forward_masquerade(&router.iface_toward(lab.server()).name);
    run_example(lab.client(), example(&examples, ROUTED_EXAMPLES[4]));
}

/// The README's `nat` example, in the lab its text describes: a router
/// that masquerades, with conntrack UDP timers of 5 s / 12 s, and a server
/// with a second address given as `--alt-address`.
#[test]
fn readme_nat_example_prints_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let lab = Lab::routed();
    let router = lab.router();
    router.snat_forward_masquerade(&router.iface_toward(lab.server()).name);
    router.conntrack_udp_timers(5, 12);
    lab.server().add_address("s-r", "198.18.2.3/24");
    let _server = util::start_server(lab.server(), &["--alt-address", "198.18.2.3"]);
    run_example(lab.client(), example(&examples, NAT_EXAMPLE));
}

/// The README's `trace` examples through client - r1 - r2 - server.
#[test]
fn readme_chain_examples_print_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let lab = Lab::chain();
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp dport { 5060, 5070-5079 } drop; }\n}",
    );
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0; udp sport 5061 drop; }\n}",
    );
    let server = util::start_server(lab.server(), &[]);
    run_example(lab.client(), example(&examples, CHAIN_EXAMPLES[0]));
    run_example(lab.client(), example(&examples, CHAIN_EXAMPLES[2]));
    drop(server);
    run_example(lab.client(), example(&examples, CHAIN_EXAMPLES[1]));
}

/// The DSCP/ECN and MTU examples (see [`MARKING_EXAMPLES`]).
#[test]
fn readme_marking_and_mtu_examples_print_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let lab = Lab::chain();
    lab.r1().nft(
        "table inet t {\n chain f { type filter hook forward priority 0;\n  iifname \"r1-c\" ip dscp set cs0\n }\n}",
    );
    lab.r2().nft(
        "table inet t {\n chain f { type filter hook forward priority 0;\n  iifname \"r2-s\" ip dscp set af11\n  iifname \"r2-s\" ip ecn set ce\n }\n}",
    );
    let _server = util::start_server(lab.server(), &[]);
    for command in &MARKING_EXAMPLES[..2] {
        run_example(lab.client(), example(&examples, command));
    }
    for r in [lab.r1(), lab.r2()] {
        r.run(["nft", "flush", "ruleset"]).assert_success();
    }
    lab.r1().set_mtu("r1-r2", 1280);
    lab.r2().set_mtu("r2-r1", 1280);
    run_example(lab.client(), example(&examples, MARKING_EXAMPLES[2]));
}

/// The STAMP example: a udpreach server that is also a STAMP reflector on
/// port 862, measured from the client of a namespace pair.
#[test]
fn readme_stamp_example_prints_what_the_readme_shows() {
    if !require_root() {
        return;
    }
    let examples = readme_examples();
    let lab = Lab::pair();
    let _server = util::start_server(lab.server(), &["--stamp"]);
    assert!(lab.server().wait_udp_bound(862, Duration::from_secs(10)));
    run_example(lab.client(), example(&examples, STAMP_EXAMPLES[0]));
}

#[test]
fn a_run_time_the_options_cannot_give_is_caught() {
    let shown = ["2 packets transmitted, 0 received, +2 errors, 0 duplicates, 0 late, 0 reordered, 100% packet loss, time 202ms".to_string()];
    let printed = "2 packets transmitted, 0 received, +2 errors, 0 duplicates, 0 late, 0 reordered, 100% packet loss, time 1001ms";
    assert_eq!(run_time_ms(printed), Some(1001.0));
    let caught = std::panic::catch_unwind(|| assert_same_shape("ping", &shown, printed));
    assert!(caught.is_err());
    assert_same_shape("ping", &shown, &printed.replace("1001ms", "203ms"));
}

#[test]
fn shape_masks_numbers_and_spacing_only() {
    assert_eq!(
        shape("reachable           1003  5000,6000,7000-8000"),
        "reachable # #,#,#-#"
    );
    assert_eq!(shape("time=0.122 ms ttl=64"), "time=#.# ms ttl=#");
    assert_ne!(
        shape("UDPREACH 127.0.0.1:4000 (127.0.0.1:4000)"),
        shape("UDPREACH 127.0.0.1 (127.0.0.1:4000)")
    );
}
