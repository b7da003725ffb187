//! `udpreach monitor`: an agent that probes many targets continuously and
//! exports what it finds to Prometheus (`/metrics`), runs one check on
//! request (`/probe`, blackbox-exporter style) and can stream results as
//! JSON lines.
//!
//! One tokio task per target and check, all on the binary's single-threaded
//! runtime: each task has its own socket and timers, so a slow or silent
//! target never delays another. SIGHUP re-reads the file: targets whose
//! settings did not change keep their tasks and counters; a bad file keeps
//! the old configuration running.

pub(crate) mod checks;
pub(crate) mod config;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod results;

use crate::cli::{KeyArgs, MonitorArgs};
use anyhow::Context;
use config::{Config, Group, PingCheck};
use metrics::{Labels, Metrics};
use results::ResultSink;
use std::collections::HashMap;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

/// Everything that decides how one target is checked: when it is unchanged
/// across a reload, the target keeps its tasks and counters.
#[derive(Clone, PartialEq)]
struct TargetSpec {
    labels: Labels,
    key_file: Option<std::path::PathBuf>,
    ping: Option<PingCheck>,
    stamp: Option<PingCheck>,
    ports: Option<config::PortsCheck>,
    mtu: Option<config::MtuCheck>,
}

struct Running {
    spec: TargetSpec,
    metrics: metrics::TargetMetrics,
    tasks: Vec<JoinHandle<()>>,
}

/// The running targets, keyed by (group, target).
struct Agent {
    metrics: Metrics,
    sink: ResultSink,
    running: HashMap<(String, String), Running>,
}

fn labels_of(group: &Group, target: &str) -> Labels {
    let mut l: Labels = vec![
        ("target".into(), target.into()),
        ("group".into(), group.name.clone()),
    ];
    l.extend(group.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l
}

impl Agent {
    /// Loads every key file the configuration names (a missing one is an error
    /// of the whole configuration, before anything changes).
    fn keys(
        cfg: &Config,
    ) -> anyhow::Result<HashMap<Option<std::path::PathBuf>, Option<udpreach_wire::auth::SharedKey>>>
    {
        let mut keys = HashMap::new();
        for g in &cfg.groups {
            if !keys.contains_key(&g.key_file) {
                let k = crate::shared_key::load(&KeyArgs {
                    key_file: g.key_file.clone(),
                })?;
                keys.insert(g.key_file.clone(), k);
            }
        }
        Ok(keys)
    }

    /// Makes the running targets what `cfg` says; returns (kept, started, stopped).
    fn apply(&mut self, cfg: &Config) -> anyhow::Result<(usize, usize, usize)> {
        let keys = Self::keys(cfg)?;
        let mut wanted: HashMap<(String, String), (TargetSpec, &Group)> = HashMap::new();
        for g in &cfg.groups {
            for t in &g.targets {
                let spec = TargetSpec {
                    labels: labels_of(g, t),
                    key_file: g.key_file.clone(),
                    ping: g.ping.clone(),
                    stamp: g.stamp.clone(),
                    ports: g.ports.clone(),
                    mtu: g.mtu.clone(),
                };
                wanted.insert((g.name.clone(), t.clone()), (spec, g));
            }
        }
        let mut stopped = 0;
        self.running.retain(|id, r| {
            let keep = wanted.get(id).is_some_and(|(spec, _)| *spec == r.spec);
            if !keep {
                for t in &r.tasks {
                    t.abort();
                }
                r.metrics.forget();
                stopped += 1;
            }
            keep
        });
        let (mut kept, mut started) = (0, 0);
        for (id, (spec, group)) in wanted {
            if self.running.contains_key(&id) {
                kept += 1;
                continue;
            }
            let key = keys.get(&spec.key_file).cloned().flatten();
            let tm = self.metrics.target(spec.labels.clone());
            let mut tasks = Vec::new();
            let probers = [
                (checks::Prober::Ping, &spec.ping),
                (checks::Prober::Stamp, &spec.stamp),
            ];
            for (prober, check) in probers {
                let Some(p) = check else { continue };
                let t = checks::PingTarget {
                    name: id.1.clone(),
                    group: group.name.clone(),
                    prober,
                    check: p.clone(),
                    key: key.clone(),
                    count: None,
                };
                tasks.push(tokio::spawn(checks::ping(t, tm.clone(), self.sink.clone())));
            }
            if let Some(p) = &spec.ports {
                let t = checks::PortsTarget {
                    name: id.1.clone(),
                    group: group.name.clone(),
                    check: p.clone(),
                    key: key.clone(),
                };
                tasks.push(tokio::spawn(checks::ports(
                    t,
                    tm.clone(),
                    self.sink.clone(),
                    true,
                )));
            }
            if let Some(c) = &spec.mtu {
                let t = checks::MtuTarget {
                    name: id.1.clone(),
                    group: group.name.clone(),
                    check: c.clone(),
                    key: key.clone(),
                };
                tasks.push(tokio::spawn(checks::mtu(
                    t,
                    tm.clone(),
                    self.sink.clone(),
                    true,
                )));
            }
            self.running.insert(
                id,
                Running {
                    spec,
                    metrics: tm,
                    tasks,
                },
            );
            started += 1;
        }
        Ok((kept, started, stopped))
    }
}

/// This host's own address? (Binding to it works only then.)
fn is_local(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The configuration with each `discover` group's DNS answer added to its
/// targets (this host's own addresses left out, sorted, so an unchanged
/// answer changes nothing). A name that does not resolve adds nothing.
async fn discovered(cfg: &Config) -> Config {
    let mut out = cfg.clone();
    for g in &mut out.groups {
        let Some(name) = &g.discover else { continue };
        let Ok((host, port)) = crate::target::split_host_port(name, crate::cli::DEFAULT_PORT)
        else {
            continue;
        };
        let query = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let answer = tokio::net::lookup_host(query).await;
        match answer {
            Ok(addrs) => {
                let mut found: Vec<String> = addrs
                    .filter(|a| !is_local(a.ip()))
                    .map(|a| a.to_string())
                    .filter(|a| !g.targets.contains(a))
                    .collect();
                found.sort();
                found.dedup();
                found.truncate(config::MAX_TARGETS);
                g.targets.extend(found);
            }
            Err(e) => tracing::warn!("monitor: discover {name}: {e}"),
        };
    }
    out
}

fn load(args: &MonitorArgs) -> anyhow::Result<Config> {
    match &args.config {
        Some(path) => Ok(Config::load(path)?),
        None => {
            let ping = PingCheck {
                interval: args.interval,
                timeout: args.timeout,
                size: args.size,
                dscp: args.dscp,
            };
            let listen = args
                .listen
                .unwrap_or_else(|| config::DEFAULT_LISTEN.parse().expect("valid"));
            Ok(Config::from_targets(listen, args.targets.clone(), ping))
        }
    }
}

pub(crate) async fn run(args: MonitorArgs) -> anyhow::Result<u8> {
    // One socket per target and check.
    crate::platform::raise_nofile_limit();
    crate::platform::fixed_mmap_threshold();
    let mut cfg = load(&args)?;
    if let (Some(l), Some(_)) = (args.listen, &args.config) {
        cfg.listen = l;
    }
    let sink = match args.json_lines.as_deref() {
        None => ResultSink::none(),
        Some(p) if p == std::path::Path::new("-") => ResultSink::to(Box::new(std::io::stdout())),
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open --json-lines file '{}'", p.display()))?;
            ResultSink::to(Box::new(f))
        }
    };
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let mut agent = Agent {
        metrics: metrics.clone(),
        sink,
        running: HashMap::new(),
    };
    agent.apply(&discovered(&cfg).await)?;
    metrics.reload_success.set(1);
    let mut rediscover = tokio::time::interval(config::DISCOVER_EVERY);
    rediscover.tick().await;
    let mut discovering = cfg.groups.iter().any(|g| g.discover.is_some());
    let endpoint = http::Endpoint::new(metrics.clone(), cfg.modules.clone());
    eprintln!(
        "udpreach: monitor: {} targets, metrics on http://{}/metrics",
        agent.running.len(),
        listener.local_addr().unwrap_or(cfg.listen)
    );
    let server = tokio::spawn(http::serve(listener, endpoint.clone()));
    let mut sighup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = rediscover.tick(), if discovering => {
                if let Err(e) = agent.apply(&discovered(&cfg).await) {
                    tracing::warn!("monitor: discover: {e:#}");
                }
            }
            _ = sighup.recv() => {
                let Some(path) = &args.config else {
                    eprintln!("udpreach: monitor: SIGHUP: no --config file to reload");
                    continue;
                };
                let applied = Config::load(path)
                    .map_err(anyhow::Error::from)
                    .and_then(|new| Agent::keys(&new).map(|_| new));
                match applied {
                    Ok(mut new) => {
                        if let Some(l) = args.listen {
                            new.listen = l;
                        }
                        if new.listen != cfg.listen {
                            eprintln!("udpreach: monitor: reload: 'listen' changes need a restart; still on {}", cfg.listen);
                        }
                        match agent.apply(&discovered(&new).await) {
                            Ok((kept, started, stopped)) => {
                                metrics.reload_success.set(1);
                                *endpoint.modules.lock().expect("not poisoned") = new.modules.clone();
                                eprintln!("udpreach: monitor: reloaded '{}': {kept} targets kept, {started} started, {stopped} stopped", path.display());
                                discovering = new.groups.iter().any(|g| g.discover.is_some());
                                cfg = new;
                            }
                            Err(e) => {
                                metrics.reload_success.set(0);
                                eprintln!("udpreach: monitor: reload failed, keeping the old configuration: {e:#}");
                            }
                        }
                    }
                    Err(e) => {
                        metrics.reload_success.set(0);
                        eprintln!("udpreach: monitor: reload failed, keeping the old configuration: {e:#}");
                    }
                }
            }
        }
    }
    server.abort();
    Ok(0)
}
