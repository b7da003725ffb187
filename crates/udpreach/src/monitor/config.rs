//! The monitor's configuration: a TOML file (`--config`), or targets on the
//! command line. Every value is checked here, once, so a bad file is one line
//! naming the key and never a half-applied reload.

use super::checks::Prober;
use crate::cli::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use udpreach_wire::PortSpec;

/// Default HTTP address of `/metrics`, `/probe` and `/health`: loopback only,
/// so an agent is not an open prober for its whole network by default.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Most targets one agent probes (groups together).
pub(crate) const MAX_TARGETS: usize = 10_000;
/// Most custom labels on one group.
pub(crate) const MAX_LABELS: usize = 16;
/// Shortest ping interval the monitor accepts (one agent, many targets).
pub(crate) const MIN_PING_INTERVAL: Duration = Duration::from_millis(10);
/// Most probes one `/probe` ping module may send.
pub(crate) const MAX_PROBE_COUNT: u64 = 100;
/// How often `discover` names are resolved again.
pub(crate) const DISCOVER_EVERY: Duration = Duration::from_secs(30);
/// Label names the monitor sets itself; user labels may not take them.
pub(crate) const RESERVED_LABELS: [&str; 6] = [
    "target",
    "group",
    "direction",
    "verdict",
    "check",
    "address",
];

/// The whole configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    pub listen: SocketAddr,
    pub groups: Vec<Group>,
    pub modules: BTreeMap<String, Module>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Group {
    pub name: String,
    pub targets: Vec<String>,
    /// `HOST:PORT` whose DNS records are the targets (every address, this
    /// host's own left out), re-resolved every [`DISCOVER_EVERY`]: a
    /// Kubernetes headless Service makes a full mesh.
    pub discover: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub key_file: Option<PathBuf>,
    pub ping: Option<PingCheck>,
    /// A STAMP check: the same settings as ping, against a STAMP reflector
    /// (default port 862; authenticated mode with `key_file`).
    pub stamp: Option<PingCheck>,
    pub ports: Option<PortsCheck>,
    pub mtu: Option<MtuCheck>,
}

/// A path MTU measurement (as `udpreach mtu`, without the fragment test)
/// every `every`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MtuCheck {
    pub every: Duration,
    /// Datagrams per size and round.
    pub probes: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PingCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub size: Option<usize>,
    pub dscp: Option<u8>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PortsCheck {
    pub spec: PortSpec,
    /// Time between two sweeps.
    pub every: Duration,
    pub retries: u32,
}

/// A `/probe` module: one check run now, its metrics returned.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Module {
    /// A ping or STAMP module.
    Ping {
        prober: Prober,
        ping: PingCheck,
        count: u64,
        key_file: Option<PathBuf>,
    },
    Ports {
        ports: PortsCheck,
        key_file: Option<PathBuf>,
    },
    Mtu {
        mtu: MtuCheck,
        key_file: Option<PathBuf>,
    },
}

impl Default for PingCheck {
    fn default() -> Self {
        PingCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            size: None,
            dscp: None,
        }
    }
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    module: BTreeMap<String, RawModule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    targets: Vec<String>,
    discover: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    key_file: Option<PathBuf>,
    ping: Option<RawPing>,
    stamp: Option<RawPing>,
    ports: Option<RawPorts>,
    mtu: Option<RawMtu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMtu {
    every: Option<String>,
    probes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPing {
    interval: Option<String>,
    timeout: Option<String>,
    size: Option<i64>,
    dscp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    spec: String,
    every: Option<String>,
    retries: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModule {
    check: String,
    count: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
    size: Option<i64>,
    dscp: Option<i64>,
    spec: Option<String>,
    retries: Option<i64>,
    probes: Option<i64>,
    key_file: Option<PathBuf>,
}

/// A configuration error: one line naming the key (and, for syntax errors, the line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(String);

fn err(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid '{key}': {msg}"))
}

fn duration(key: &str, s: &str, lo: Duration, hi: Duration) -> Result<Duration, ConfigError> {
    let d = parse_duration(s).map_err(|e| err(key, e))?;
    if d < lo || d > hi {
        return Err(err(key, format!("'{s}' must be {lo:?}..={hi:?}")));
    }
    Ok(d)
}

fn number<T: TryFrom<i64>>(key: &str, n: i64, lo: i64, hi: i64) -> Result<T, ConfigError> {
    if n < lo || n > hi {
        return Err(err(key, format!("{n} must be {lo}..={hi}")));
    }
    T::try_from(n).map_err(|_| err(key, format!("{n} is out of range")))
}

fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl PingCheck {
    fn from_raw(key: &str, raw: RawPing) -> Result<Self, ConfigError> {
        let d = PingCheck::default();
        let interval = match raw.interval {
            Some(s) => duration(
                &format!("{key}.interval"),
                &s,
                MIN_PING_INTERVAL,
                Duration::from_secs(3600),
            )?,
            None => d.interval,
        };
        let timeout = match raw.timeout {
            Some(s) => duration(
                &format!("{key}.timeout"),
                &s,
                Duration::from_millis(1),
                Duration::from_secs(60),
            )?,
            None => d.timeout,
        };
        let size = raw
            .size
            .map(|n| {
                number(
                    &format!("{key}.size"),
                    n,
                    16,
                    udpreach_wire::probe::MAX_DATAGRAM as i64,
                )
            })
            .transpose()?;
        let dscp = raw
            .dscp
            .map(|n| number(&format!("{key}.dscp"), n, 0, 63))
            .transpose()?;
        Ok(PingCheck {
            interval,
            timeout,
            size,
            dscp,
        })
    }
}

impl PingCheck {
    /// A STAMP check: ping's settings, and a size STAMP can build (the base
    /// packet and TLVs, or at least a padding TLV more; see
    /// [`udpreach_engine::stamp::padded_len`]).
    fn stamp_from_raw(key: &str, raw: RawPing, keyed: bool) -> Result<Self, ConfigError> {
        let check = PingCheck::from_raw(key, raw)?;
        if let Some(size) = check.size {
            let cos = check.dscp.is_some();
            udpreach_engine::stamp::padded_len(keyed, cos, size).map_err(|min| {
                err(
                    &format!("{key}.size"),
                    format!(
                        "{size}: STAMP packets here need {min} bytes, or at least {}",
                        min + udpreach_wire::stamp::TLV_HEADER_LEN
                    ),
                )
            })?;
        }
        Ok(check)
    }
}

impl MtuCheck {
    fn from_raw(
        key: &str,
        every: Option<String>,
        probes: Option<i64>,
    ) -> Result<Self, ConfigError> {
        let every = match every {
            Some(s) => duration(
                &format!("{key}.every"),
                &s,
                Duration::from_secs(10),
                Duration::from_secs(86_400),
            )?,
            None => Duration::from_secs(600),
        };
        let probes = probes
            .map(|n| number(&format!("{key}.probes"), n, 1, 4))
            .transpose()?
            .unwrap_or(2);
        Ok(MtuCheck { every, probes })
    }
}

impl PortsCheck {
    fn from_raw(
        key: &str,
        spec: &str,
        every: Option<String>,
        retries: Option<i64>,
    ) -> Result<Self, ConfigError> {
        let spec = spec
            .parse::<PortSpec>()
            .map_err(|e| err(&format!("{key}.spec"), e))?;
        let every = match every {
            Some(s) => duration(
                &format!("{key}.every"),
                &s,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            )?,
            None => Duration::from_secs(60),
        };
        let retries = retries
            .map(|n| number(&format!("{key}.retries"), n, 1, 20))
            .transpose()?
            .unwrap_or(4);
        Ok(PortsCheck {
            spec,
            every,
            retries,
        })
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config '{}': {e}", path.display())))?;
        Config::parse(&text)
            .map_err(|e| ConfigError(format!("config '{}': {}", path.display(), e.0)))
    }

    /// Parses and checks configuration text.
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| 1 + text[..s.start.min(text.len())].matches('\n').count());
            let msg = e.message().replace('\n', " ");
            match line {
                Some(l) => ConfigError(format!("line {l}: {msg}")),
                None => ConfigError(msg),
            }
        })?;
        let listen = match raw.listen {
            Some(s) => s
                .parse()
                .map_err(|_| err("listen", format!("'{s}' is not an ADDRESS:PORT")))?,
            None => DEFAULT_LISTEN.parse().expect("valid default"),
        };
        let mut groups = Vec::new();
        let mut total = 0usize;
        let mut names = std::collections::BTreeSet::new();
        for (i, g) in raw.group.into_iter().enumerate() {
            let key = format!("group[{i}]");
            if g.name.is_empty() || !names.insert(g.name.clone()) {
                return Err(err(
                    &format!("{key}.name"),
                    format!("'{}' is empty or used twice", g.name),
                ));
            }
            if g.targets.is_empty() && g.discover.is_none() {
                return Err(err(
                    &format!("{key}.targets"),
                    "no target (and no discover)",
                ));
            }
            if let Some(d) = &g.discover {
                crate::target::split_host_port(d, crate::cli::DEFAULT_PORT)
                    .map_err(|e| err(&format!("{key}.discover"), e))?;
            }
            for t in &g.targets {
                crate::target::split_host_port(t, crate::cli::DEFAULT_PORT)
                    .map_err(|e| err(&format!("{key}.targets"), e))?;
            }
            total += g.targets.len();
            if total > MAX_TARGETS {
                return Err(err(
                    &format!("{key}.targets"),
                    format!("more than {MAX_TARGETS} targets in all"),
                ));
            }
            if g.labels.len() > MAX_LABELS {
                return Err(err(
                    &format!("{key}.labels"),
                    format!("more than {MAX_LABELS} labels"),
                ));
            }
            for name in g.labels.keys() {
                if !label_name_ok(name) || RESERVED_LABELS.contains(&name.as_str()) {
                    return Err(err(
                        &format!("{key}.labels.{name}"),
                        "not a Prometheus label name of our own ([a-zA-Z_][a-zA-Z0-9_]*, not target, group, direction, verdict, check or address)",
                    ));
                }
            }
            let ping = g
                .ping
                .map(|p| PingCheck::from_raw(&format!("{key}.ping"), p))
                .transpose()?;
            let stamp = g
                .stamp
                .map(|p| {
                    PingCheck::stamp_from_raw(&format!("{key}.stamp"), p, g.key_file.is_some())
                })
                .transpose()?;
            let ports = g
                .ports
                .map(|p| PortsCheck::from_raw(&format!("{key}.ports"), &p.spec, p.every, p.retries))
                .transpose()?;
            let mtu = g
                .mtu
                .map(|m| MtuCheck::from_raw(&format!("{key}.mtu"), m.every, m.probes))
                .transpose()?;
            if ping.is_none() && stamp.is_none() && ports.is_none() && mtu.is_none() {
                return Err(err(
                    &key,
                    "no check: add [group.ping], [group.stamp], [group.ports] and/or [group.mtu]",
                ));
            }
            if ping.is_some() && stamp.is_some() {
                return Err(err(
                    &format!("{key}.stamp"),
                    "ping and stamp fill the same series: put them in two groups",
                ));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(t) = g.targets.iter().find(|t| !seen.insert(*t)) {
                return Err(err(
                    &format!("{key}.targets"),
                    format!("'{t}' is listed twice"),
                ));
            }
            groups.push(Group {
                name: g.name,
                targets: g.targets,
                discover: g.discover,
                labels: g.labels,
                key_file: g.key_file,
                ping,
                stamp,
                ports,
                mtu,
            });
        }
        let mut modules = BTreeMap::new();
        for (name, m) in raw.module {
            let key = format!("module.{name}");
            let module = match m.check.as_str() {
                check @ ("ping" | "stamp") => {
                    if m.spec.is_some() || m.retries.is_some() || m.probes.is_some() {
                        return Err(err(
                            &key,
                            "spec and retries are for ports modules, probes for mtu modules",
                        ));
                    }
                    let raw = RawPing {
                        interval: m.interval.or(Some("100ms".into())),
                        timeout: m.timeout,
                        size: m.size,
                        dscp: m.dscp,
                    };
                    let (prober, ping) = if check == "ping" {
                        (Prober::Ping, PingCheck::from_raw(&key, raw)?)
                    } else {
                        let keyed = m.key_file.is_some();
                        (Prober::Stamp, PingCheck::stamp_from_raw(&key, raw, keyed)?)
                    };
                    let count = m
                        .count
                        .map(|n| number(&format!("{key}.count"), n, 1, MAX_PROBE_COUNT as i64))
                        .transpose()?
                        .unwrap_or(5);
                    Module::Ping {
                        prober,
                        ping,
                        count,
                        key_file: m.key_file,
                    }
                }
                "ports" => {
                    let Some(spec) = m.spec else {
                        return Err(err(
                            &format!("{key}.spec"),
                            "missing (a ports module needs a port spec)",
                        ));
                    };
                    if m.count.is_some()
                        || m.interval.is_some()
                        || m.size.is_some()
                        || m.dscp.is_some()
                        || m.probes.is_some()
                    {
                        return Err(err(
                            &key,
                            "count, interval, size and dscp are for ping modules",
                        ));
                    }
                    let mut ports = PortsCheck::from_raw(&key, &spec, None, m.retries)?;
                    if let Some(t) = m.timeout {
                        // Reuse `every` as nothing for a module: keep the default.
                        let _ = duration(
                            &format!("{key}.timeout"),
                            &t,
                            Duration::from_millis(1),
                            Duration::from_secs(60),
                        )?;
                    }
                    ports.every = Duration::ZERO;
                    Module::Ports {
                        ports,
                        key_file: m.key_file,
                    }
                }
                "mtu" => {
                    if m.count.is_some()
                        || m.interval.is_some()
                        || m.timeout.is_some()
                        || m.size.is_some()
                        || m.dscp.is_some()
                        || m.spec.is_some()
                        || m.retries.is_some()
                    {
                        return Err(err(&key, "an mtu module takes probes and key_file only"));
                    }
                    Module::Mtu {
                        mtu: MtuCheck::from_raw(&key, None, m.probes)?,
                        key_file: m.key_file,
                    }
                }
                other => {
                    return Err(err(
                        &format!("{key}.check"),
                        format!("'{other}' is not ping, stamp, ports or mtu"),
                    ))
                }
            };
            modules.insert(name, module);
        }
        Ok(Config {
            listen,
            groups,
            modules,
        })
    }

    /// The quick start: targets from the command line, pinged, one group "cli".
    pub(crate) fn from_targets(
        listen: SocketAddr,
        targets: Vec<String>,
        ping: PingCheck,
    ) -> Config {
        let mut modules = BTreeMap::new();
        modules.insert(
            "ping".to_string(),
            Module::Ping {
                prober: Prober::Ping,
                ping: PingCheck {
                    interval: Duration::from_millis(100),
                    ..ping.clone()
                },
                count: 5,
                key_file: None,
            },
        );
        Config {
            listen,
            groups: vec![Group {
                name: "cli".into(),
                targets,
                discover: None,
                labels: BTreeMap::new(),
                key_file: None,
                ping: Some(ping),
                stamp: None,
                ports: None,
                mtu: None,
            }],
            modules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../contrib/monitor.toml");

    #[test]
    fn the_contrib_example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert!(!c.groups.is_empty());
        assert!(c.modules.contains_key("ping"));
        assert!(c.modules.contains_key("ports"));
        assert!(c.groups.iter().any(|g| g.stamp.is_some()));
        assert!(matches!(
            c.modules.get("stamp"),
            Some(Module::Ping {
                prober: Prober::Stamp,
                ..
            })
        ));
    }

    fn error_of(text: &str) -> String {
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn errors_name_the_key() {
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\nbogus=1\n[group.ping]\n");
        assert!(e.contains("bogus") && e.contains("line 4"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.ping]\ninterval='1ms'\n");
        assert!(e.contains("group[0].ping.interval"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.ping]\ndscp=64\n");
        assert!(e.contains("group[0].ping.dscp"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.ports]\nspec='0-x'\n");
        assert!(e.contains("group[0].ports.spec"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\nlabels={target='x'}\n[group.ping]\n");
        assert!(e.contains("group[0].labels.target"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n");
        assert!(e.contains("group[0]") && e.contains("no check"), "{e}");
        let e = error_of("listen='nowhere'\n");
        assert!(e.contains("'listen'"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.ping]\n[group.stamp]\n");
        assert!(
            e.contains("group[0].stamp") && e.contains("two groups"),
            "{e}"
        );
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.stamp]\nsize=46\n");
        assert!(e.contains("group[0].stamp.size") && e.contains("44"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=['h']\n[group.mtu]\nevery='1s'\n");
        assert!(e.contains("group[0].mtu.every"), "{e}");
        let e = error_of("[module.x]\ncheck='mtu'\nprobes=9\n");
        assert!(e.contains("module.x.probes"), "{e}");
        let e = error_of("[module.x]\ncheck='trace'\n");
        assert!(e.contains("module.x.check"), "{e}");
        let e = error_of("[module.x]\ncheck='ping'\ncount=1000\n");
        assert!(e.contains("module.x.count"), "{e}");
        let e = error_of("[[group]]\nname='a'\ntargets=[]\n[group.ping]\n");
        assert!(e.contains("group[0].targets"), "{e}");
    }

    /// The monitor.toml inside the Kubernetes ConfigMap is a valid config.
    #[test]
    fn the_kubernetes_config_parses() {
        let yaml = include_str!("../../../../contrib/kubernetes/udpreach.yaml");
        let start = yaml.find("monitor.toml: |").unwrap();
        let toml: String = yaml[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let c = Config::parse(&toml).unwrap();
        assert!(c.groups[0].discover.is_some());
    }

    #[test]
    fn groups_take_defaults() {
        let c =
            Config::parse("[[group]]\nname='a'\ntargets=['h', 'k:4100']\n[group.ping]\n").unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.groups[0].ping, Some(PingCheck::default()));
    }
}
