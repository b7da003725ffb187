//! `udpreach monitor` end to end in namespaces: the agent in the client
//! namespace probes a udpreach server in the other; /metrics, /probe,
//! /health, SIGHUP reload; and a real Prometheus (Debian `prometheus`)
//! scraping the agent, queried through its HTTP API.

mod lab;
mod util;

use lab::{require_root, udpreach_bin, wait_until, Host, Lab, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;
use util::{stamp_suite_reflector, start_server, udpreach_reflector};

const SIGHUP: i32 = 1;

/// A scratch directory removed when the test ends, pass or fail.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("udpreach-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GET `path` from `addr` inside the host's namespace: (status, body).
fn http_get(host: &Host, addr: &'static str, path: String) -> Option<(u16, String)> {
    host.enter(move || {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split_whitespace().nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    })
}

/// The value of the sample whose line starts with `series` (name and labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const AGENT: &str = "127.0.0.1:9464";

fn metrics(host: &Host) -> String {
    http_get(host, AGENT, "/metrics".into()).map_or_else(String::new, |(_, b)| b)
}

fn config(server: &str, extra: &str) -> String {
    format!(
        r#"listen = "{AGENT}"
[[group]]
name = "lab"
targets = ["{server}"]
labels = {{ site = "ns" }}
[group.ping]
interval = "50ms"
timeout = "500ms"
[group.ports]
spec = "5000-5004"
every = "2s"
[module.ports]
check = "ports"
spec = "5000-5004"
[module.ping]
check = "ping"
count = 3
interval = "20ms"
{extra}"#
    )
}

fn start_agent(host: &Host, args: &[String]) -> Proc {
    let mut argv = vec![udpreach_bin().display().to_string(), "monitor".into()];
    argv.extend(args.iter().cloned());
    let p = host.spawn(&argv);
    assert!(
        wait_until(Duration::from_secs(10), || http_get(
            host,
            AGENT,
            "/health".into()
        )
        .is_some_and(|(s, _)| s == 200)),
        "agent did not start: {}",
        p.stderr_so_far()
    );
    p
}

#[test]
fn agent_metrics_probe_port_flip_and_reload() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let server = lab.server().ip4().to_string();
    let scratch = Scratch::new("monitor-reload");
    let cfg = scratch.file("monitor.toml", &config(&server, ""));
    let agent = start_agent(
        lab.client(),
        &["--config".into(), cfg.display().to_string()],
    );
    let base = format!("target=\"{server}\",group=\"lab\",site=\"ns\"");
    let replies = format!("udpreach_replies_total{{{base}}}");
    let reachable = format!("udpreach_ports{{{base},verdict=\"reachable\"}}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = metrics(lab.client());
            sample(&m, &replies).is_some_and(|v| v >= 10.0) && sample(&m, &reachable) == Some(5.0)
        }),
        "series missing:\n{}\n{}",
        metrics(lab.client()),
        agent.stderr_so_far()
    );
    let m = metrics(lab.client());
    for series in [
        format!("udpreach_probes_sent_total{{{base}}}"),
        format!("udpreach_lost_total{{{base},direction=\"upstream\"}}"),
        format!("udpreach_rtt_seconds_bucket{{{base},le=\"10\"}}"),
        format!("udpreach_check_success{{{base},check=\"ping\"}}"),
        format!("udpreach_check_success{{{base},check=\"ports\"}}"),
        format!("udpreach_nat_changes_total{{{base}}}"),
        "udpreach_config_last_reload_successful".to_string(),
    ] {
        assert!(sample(&m, &series).is_some(), "{series} missing in\n{m}");
    }
    assert!(m.contains(&format!(
        "udpreach_server_seen_address_info{{{base},address=\"{}:",
        lab.client().ip4()
    )));

    // /probe: one check now, its own metrics.
    let (status, body) = http_get(
        lab.client(),
        AGENT,
        format!("/probe?target={server}&module=ports"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sample(
            &body,
            &format!("udpreach_ports{{target=\"{server}\",verdict=\"reachable\"}}")
        ),
        Some(5.0),
        "{body}"
    );
    let (status, body) = http_get(
        lab.client(),
        AGENT,
        format!("/probe?target={server}&module=ping"),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &body,
            &format!("udpreach_replies_total{{target=\"{server}\"}}")
        ),
        Some(3.0),
        "{body}"
    );
    let (status, body) = http_get(
        lab.client(),
        AGENT,
        format!("/probe?target={server}&module=nope"),
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("unknown module 'nope'"), "{body}");

    // A port blocked towards the server flips its verdict.
    lab.server().drop_udp_dport_in(&[5001]);
    let blocked = format!("udpreach_ports{{{base},verdict=\"inbound_blocked\"}}");
    assert!(
        wait_until(Duration::from_secs(20), || sample(
            &metrics(lab.client()),
            &blocked
        ) == Some(1.0)),
        "no inbound_blocked port:\n{}",
        metrics(lab.client())
    );

    // A bad file: one line naming the key, old configuration keeps running.
    let before = sample(&metrics(lab.client()), &replies).unwrap();
    scratch.file(
        "monitor.toml",
        &config(&server, "[module.bad]\ncheck = \"trace\"\n"),
    );
    assert!(agent.signal(SIGHUP));
    assert!(wait_until(Duration::from_secs(5), || agent
        .stderr_so_far()
        .contains("module.bad.check")));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = metrics(lab.client());
            sample(&m, "udpreach_config_last_reload_successful") == Some(0.0)
                && sample(&m, &replies).is_some_and(|v| v > before)
        }),
        "not serving after a bad reload:\n{}",
        agent.stderr_so_far()
    );
    // A good file adding a group: the unchanged target keeps its counters.
    let before = sample(&metrics(lab.client()), &replies).unwrap();
    let added = format!("[[group]]\nname = \"more\"\ntargets = [\"{server}:4000\"]\n[group.ping]\ninterval = \"100ms\"\n");
    scratch.file("monitor.toml", &config(&server, &added));
    assert!(agent.signal(SIGHUP));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = metrics(lab.client());
            sample(&m, "udpreach_config_last_reload_successful") == Some(1.0)
                && m.contains("group=\"more\"")
        }),
        "reload not applied:\n{}",
        agent.stderr_so_far()
    );
    let after = sample(&metrics(lab.client()), &replies).unwrap();
    assert!(
        after >= before,
        "counter reset by reload: {before} -> {after}"
    );
    assert!(agent.is_running());
}

#[test]
fn bad_config_is_one_line_naming_the_key() {
    let scratch = Scratch::new("monitor-badcfg");
    let cfg = scratch.file(
        "m.toml",
        "[[group]]\nname='a'\ntargets=['h']\n[group.ping]\ninterval='1ms'\n",
    );
    let o = std::process::Command::new(udpreach_bin())
        .args(["monitor", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("udpreach: ") && err.contains("group[0].ping.interval"),
        "{err}"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A one-value instant query against Prometheus's HTTP API.
fn prom_query(host: &Host, query: &str) -> Option<f64> {
    let (status, body) = http_get(
        host,
        PROMETHEUS,
        format!("/api/v1/query?query={}", urlencode(query)),
    )?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

const PROMETHEUS: &str = "127.0.0.1:9090";

#[test]
fn prometheus_scrapes_the_agent_and_sees_downstream_loss() {
    if !require_root() {
        return;
    }
    let Some(prometheus) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs prometheus (.ci/run installs it)"
        );
        eprintln!("note: skipping: prometheus is not installed");
        return;
    };
    let lab = Lab::pair();
    let _server = start_server(lab.server(), &[]);
    let server = lab.server().ip4().to_string();
    let scratch = Scratch::new("monitor-prom");
    let prom_cfg = scratch.file(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: udpreach\n    static_configs:\n      - targets: ['{AGENT}']\n"
        ),
    );
    // 20% of what comes back to the client is lost: the return path.
    lab.client().drop_udp_in_percent(20);
    let _agent = start_agent(
        lab.client(),
        &[
            server.clone(),
            "--interval".into(),
            "20ms".into(),
            "--timeout".into(),
            "300ms".into(),
        ],
    );
    let _prom = lab.client().spawn([
        prometheus.to_string(),
        format!("--config.file={}", prom_cfg.display()),
        format!("--storage.tsdb.path={}", scratch.0.join("data").display()),
        format!("--web.listen-address={PROMETHEUS}"),
        "--log.level=warn".to_string(),
    ]);
    let sent = format!("udpreach_probes_sent_total{{target=\"{server}\"}}");
    assert!(
        wait_until(Duration::from_secs(30), || prom_query(lab.client(), &sent)
            .is_some_and(|v| v >= 500.0)),
        "Prometheus has no {sent}"
    );
    let down = prom_query(
        lab.client(),
        &format!("udpreach_lost_total{{direction=\"downstream\",target=\"{server}\"}} / ignoring(direction) udpreach_probes_sent_total"),
    )
    .expect("downstream loss ratio");
    let up = prom_query(
        lab.client(),
        &format!("udpreach_lost_total{{direction=\"upstream\",target=\"{server}\"}} / ignoring(direction) udpreach_probes_sent_total"),
    )
    .expect("upstream loss ratio");
    // 500 probes at 20%, loss counted per finished window of 100 probes (the
    // last one still open): expected 0.16..0.20, standard deviation ~2 points.
    assert!(
        (0.10..=0.30).contains(&down),
        "downstream loss {down}:\n{}",
        metrics(lab.client())
    );
    assert!(up <= 0.03, "upstream loss {up}");
    let hist = prom_query(
        lab.client(),
        &format!("sum(udpreach_rtt_seconds_bucket{{target=\"{server}\",le=\"+Inf\"}})"),
    );
    assert!(
        hist.is_some_and(|v| v > 0.0),
        "no RTT histogram in Prometheus"
    );
    let up_series = prom_query(lab.client(), "up{job=\"udpreach\"}");
    assert_eq!(up_series, Some(1.0));
}

/// A tool CI installs (.ci/run); outside CI a missing one skips the check.
fn tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs {name} (.ci/run installs it)"
        );
        eprintln!("note: skipping: {name} is not installed");
    }
    found
}

fn contrib(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(path)
}

fn check_ok(argv: &[&str], dir: &std::path::Path) {
    let o = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{argv:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The fleet files in contrib/ are valid: Prometheus config and rules by
/// promtool, every YAML file parsed by yamllint, the dashboard as JSON.
#[test]
fn contrib_files_check() {
    let dir = contrib("");
    if tool("promtool") {
        check_ok(&["promtool", "check", "config", "prometheus.yml"], &dir);
        check_ok(&["promtool", "check", "rules", "udpreach-alerts.yml"], &dir);
    }
    if tool("yamllint") {
        check_ok(
            &[
                "yamllint",
                "-d",
                "{extends: relaxed, rules: {line-length: disable}}",
                "prometheus.yml",
                "udpreach-alerts.yml",
                "kubernetes/udpreach.yaml",
            ],
            &dir,
        );
    }
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs = dash["panels"].to_string();
    for metric in [
        "udpreach_rtt_seconds_bucket",
        "udpreach_lost_total",
        "udpreach_ports",
    ] {
        assert!(exprs.contains(metric), "dashboard lacks {metric}");
    }
}

/// A NAT appearing on the path (masquerade added on the router) changes the
/// address the server sees: `udpreach_nat_changes_total` counts it and the
/// info series names the new address.
#[test]
fn nat_change_counts() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    let server = lab.server().ip4().to_string();
    let agent = start_agent(
        lab.client(),
        &[server.clone(), "--interval".into(), "50ms".into()],
    );
    let base = format!("target=\"{server}\",group=\"cli\"");
    let seen = format!(
        "udpreach_server_seen_address_info{{{base},address=\"{}:",
        lab.client().ip4()
    );
    assert!(
        wait_until(Duration::from_secs(10), || metrics(lab.client())
            .contains(&seen)),
        "no seen address:\n{}",
        metrics(lab.client())
    );
    let router = lab.router();
    router.snat_forward_masquerade(&router.iface_toward(lab.server()).name);
    let changes = format!("udpreach_nat_changes_total{{{base}}}");
    let natted = format!("udpreach_server_seen_address_info{{{base},address=\"198.18.2.254:");
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = metrics(lab.client());
            sample(&m, &changes).is_some_and(|v| v >= 1.0) && m.contains(&natted)
        }),
        "NAT change not counted:\n{}\n{}",
        metrics(lab.client()),
        agent.stderr_so_far()
    );
}

/// The lost share of what `group` sent so far, by direction (upstream,
/// downstream, unknown), and what it sent.
fn loss_by_direction(m: &str, target: &str, group: &str) -> ([f64; 3], f64) {
    let base = format!("target=\"{target}\",group=\"{group}\"");
    let sent = sample(m, &format!("udpreach_probes_sent_total{{{base}}}")).unwrap_or(0.0);
    let lost = ["upstream", "downstream", "unknown"].map(|d| {
        sample(
            m,
            &format!("udpreach_lost_total{{{base},direction=\"{d}\"}}"),
        )
        .unwrap_or(0.0)
            / sent.max(1.0)
    });
    (lost, sent)
}

/// STAMP checks (issue 14, requirement 4): the agent measures a udpreach
/// reflector and stamp-suite's stateful and stateless reflectors with 20%
/// loss on the return path. The same series as ping: the loss is
/// downstream against both stateful reflectors, of unknown direction
/// against the stateless one (never invented); RTTs in the histogram; a
/// `/probe` stamp module.
#[test]
fn stamp_check_splits_loss_against_stateful_reflectors_only() {
    if !require_root() {
        return;
    }
    let lab = Lab::pair();
    let (client, server) = (lab.client(), lab.server());
    let _udpreach = udpreach_reflector(server, &[]);
    let _stateful = stamp_suite_reflector(server, 8621, &["--stateful-reflector"]);
    let _stateless = stamp_suite_reflector(server, 8622, &[]);
    let s = server.ip4().to_string();
    let group = |name: &str, target: String| {
        format!("[[group]]\nname = \"{name}\"\ntargets = [\"{target}\"]\n[group.stamp]\ninterval = \"10ms\"\ntimeout = \"300ms\"\n")
    };
    let scratch = Scratch::new("monitor-stamp");
    let cfg = scratch.file(
        "monitor.toml",
        &format!(
            "listen = \"{AGENT}\"\n{}{}{}[module.stamp]\ncheck = \"stamp\"\ncount = 5\ninterval = \"20ms\"\n",
            group("udpreach", s.clone()),
            group("stateful", format!("{s}:8621")),
            group("stateless", format!("{s}:8622")),
        ),
    );
    // Return-path loss: every UDP datagram into the client, 20%.
    client.drop_udp_in_percent(20);
    let agent = start_agent(client, &["--config".into(), cfg.display().to_string()]);
    let targets = [
        (s.clone(), "udpreach"),
        (format!("{s}:8621"), "stateful"),
        (format!("{s}:8622"), "stateless"),
    ];
    assert!(
        wait_until(Duration::from_secs(30), || {
            let m = metrics(client);
            targets
                .iter()
                .all(|(t, g)| loss_by_direction(&m, t, g).1 >= 600.0)
        }),
        "too few probes sent:\n{}\n{}",
        metrics(client),
        agent.stderr_so_far()
    );
    let m = metrics(client);
    for (t, g) in &targets {
        let ([up, down, unknown], sent) = loss_by_direction(&m, t, g);
        let all = up + down + unknown;
        eprintln!("{g}: sent {sent}, lost up {up:.3} down {down:.3} unknown {unknown:.3}");
        // At least 3 of the 6+ windows (100 probes each) settled.
        assert!(
            (0.08..=0.30).contains(&all),
            "{g}: loss {all} of {sent}\n{m}"
        );
        if *g == "stateless" {
            assert_eq!((up, down), (0.0, 0.0), "{g}: a split was invented\n{m}");
        } else {
            assert!(
                up <= 0.02 && unknown <= 0.03 && down >= 0.07,
                "{g}: up {up} unknown {unknown}\n{m}"
            );
        }
        let base = format!("target=\"{t}\",group=\"{g}\"");
        let rtts = sample(&m, &format!("udpreach_rtt_seconds_count{{{base}}}")).unwrap_or(0.0);
        assert!(rtts >= 300.0, "{g}: {rtts} RTTs\n{m}");
        assert!(
            sample(
                &m,
                &format!("udpreach_check_success{{{base},check=\"stamp\"}}")
            )
            .is_some(),
            "{g}: no check_success\n{m}"
        );
    }
    let (status, body) = http_get(
        client,
        AGENT,
        format!("/probe?target={s}:8622&module=stamp"),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let t = format!("target=\"{s}:8622\"");
    assert_eq!(
        sample(&body, &format!("udpreach_probes_sent_total{{{t}}}")),
        Some(5.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("udpreach_check_success{{{t},check=\"stamp\"}}")
        ),
        Some(1.0),
        "{body}"
    );
}

/// The mtu check (issue 13): behind a router whose link to the server has
/// an MTU of 1400, `udpreach_path_mtu_bytes` shows 1400 each way (upstream
/// from the router's frag-needed, downstream the server's own interface),
/// in the agent's series and in a `/probe` mtu module.
#[test]
fn mtu_check_shows_the_path_mtu_each_way() {
    if !require_root() {
        return;
    }
    let lab = Lab::routed();
    let _server = start_server(lab.server(), &[]);
    lab.set_link_mtu("r-s", 1400);
    let s = lab.server().ip4().to_string();
    let scratch = Scratch::new("monitor-mtu");
    let cfg = scratch.file(
        "monitor.toml",
        &format!(
            "listen = \"{AGENT}\"\n[[group]]\nname = \"lab\"\ntargets = [\"{s}\"]\n[group.mtu]\nevery = \"10s\"\n[module.mtu]\ncheck = \"mtu\"\n"
        ),
    );
    let agent = start_agent(
        lab.client(),
        &["--config".into(), cfg.display().to_string()],
    );
    let base = format!("target=\"{s}\",group=\"lab\"");
    let series = |d: &str| format!("udpreach_path_mtu_bytes{{{base},direction=\"{d}\"}}");
    assert!(
        wait_until(Duration::from_secs(30), || sample(
            &metrics(lab.client()),
            &format!("udpreach_check_success{{{base},check=\"mtu\"}}")
        )
        .is_some()),
        "no mtu check:\n{}\n{}",
        metrics(lab.client()),
        agent.stderr_so_far()
    );
    let m = metrics(lab.client());
    assert_eq!(sample(&m, &series("upstream")), Some(1400.0), "{m}");
    assert_eq!(sample(&m, &series("downstream")), Some(1400.0), "{m}");
    assert_eq!(sample(&m, &series("round_trip")), None, "{m}");
    assert_eq!(
        sample(
            &m,
            &format!("udpreach_check_success{{{base},check=\"mtu\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    let (status, body) =
        http_get(lab.client(), AGENT, format!("/probe?target={s}&module=mtu")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sample(
            &body,
            &format!("udpreach_path_mtu_bytes{{target=\"{s}\",direction=\"upstream\"}}")
        ),
        Some(1400.0),
        "{body}"
    );
}
