//! Output of `udpreach nat`: mapping, filtering, port preservation and the
//! idle timeout of each kind of flow, and a conclusion line; or one JSON
//! document (`--json`) or one JSON object per event (`--json-lines`), all
//! from the typed [`NatDocument`].

use super::{print_json, print_json_line, JsonLine, OutputFormat};
use schemars::JsonSchema;
use serde::Serialize;
use std::net::SocketAddr;
use udpreach_engine::nat::{keepalive_s, Behaviour, IdleResult};

/// `--json-lines` first line.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct NatStart {
    pub target: String,
    pub server: SocketAddr,
    pub max_idle_s: f64,
    /// The server's alternate address, when it has one.
    pub alt_address: Option<SocketAddr>,
}

/// `--json-lines` events.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum NatEvent {
    /// A round of the idle-timeout search started.
    Round {
        kind: udpreach_engine::nat::FlowKind,
        round: u32,
        gaps_s: Vec<f64>,
    },
    /// Every flow of one gap is decided.
    Gap {
        kind: udpreach_engine::nat::FlowKind,
        gap_s: f64,
        survived: bool,
    },
}

/// What one local socket looked like from the server.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct MappingObserved {
    pub local: SocketAddr,
    /// Mapped address seen at port A, port B, and the alternate address.
    pub seen_a: SocketAddr,
    pub seen_b: SocketAddr,
    pub seen_alt: Option<SocketAddr>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct IdleTimeouts {
    /// After one request and its reply.
    pub one_exchange: Option<IdleResult>,
    /// After traffic both ways for a few seconds.
    pub active_flow: Option<IdleResult>,
}

/// The idle timeouts towards one server port (`-p`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct PortTimeouts {
    pub port: u16,
    #[serde(flatten)]
    pub timeouts: IdleTimeouts,
}

/// A part that was not measured, and why.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct NotMeasured {
    pub part: String,
    pub reason: String,
}

/// The whole result (`--json`; the `summary` line of `--json-lines`).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct NatDocument {
    pub target: String,
    pub server: SocketAddr,
    /// True when the server saw another address or port than the local one.
    pub nat: Option<bool>,
    /// RFC 4787 mapping behaviour; null without NAT or when not measured.
    pub mapping: Option<Behaviour>,
    pub mapping_observed: Option<MappingObserved>,
    /// RFC 4787 filtering behaviour (also for a stateful firewall without NAT).
    pub filtering: Option<Behaviour>,
    /// The mapped port equals the local port.
    pub port_preservation: Option<bool>,
    /// The mapped port has the local port's parity.
    pub port_parity: Option<bool>,
    /// Towards the server's first NAT port, or the first `-p` port.
    pub idle_timeout: IdleTimeouts,
    /// With `-p`: the idle timeouts towards each of those ports (empty without).
    pub per_port: Vec<PortTimeouts>,
    /// A keepalive interval that keeps both kinds of flow open (s).
    pub keepalive_s: Option<u64>,
    pub conclusion: String,
    pub not_measured: Vec<NotMeasured>,
    pub elapsed_s: f64,
}

pub(crate) type NatLine = JsonLine<NatStart, NatEvent, NatDocument>;

pub(crate) struct NatReport {
    pub format: OutputFormat,
    pub quiet: bool,
}

fn range_text(r: &IdleResult) -> String {
    match (r.survived_s, r.expired_s) {
        (Some(s), Some(e)) => format!("{s:.1}-{e:.1} s"),
        (None, Some(e)) => format!("under {e:.1} s"),
        (Some(s), None) => format!("over {s:.1} s (--max-idle)"),
        (None, None) => "could not tell".into(),
    }
}

/// The plain conclusion line.
pub(crate) fn conclusion(doc: &NatDocument) -> String {
    let t = &doc.idle_timeout;
    let mut parts = Vec::new();
    if let Some(r) = &t.one_exchange {
        parts.push(format!("{} after one exchange", range_text(r)));
    }
    if let Some(r) = &t.active_flow {
        parts.push(format!("{} after an active flow", range_text(r)));
    }
    let timeouts = parts.join(", ");
    let path = match (doc.nat, doc.filtering) {
        (Some(false), Some(Behaviour::AddressAndPortDependent)) => "no NAT; stateful filtering; ",
        (Some(false), Some(_)) => "no NAT; no filtering seen; ",
        _ => "",
    };
    match doc.keepalive_s {
        Some(k) => {
            format!("{path}keepalive every {k} s keeps this flow open (idle timeout {timeouts})")
        }
        None if !timeouts.is_empty() => format!("{path}idle timeout {timeouts}"),
        None => format!("{path}idle timeout not measured"),
    }
}

/// The keepalive for the shortest measured timeout (a keepalive is
/// one-way traffic, which the short timer governs).
pub(crate) fn keepalive(t: &IdleTimeouts) -> Option<u64> {
    [&t.one_exchange, &t.active_flow]
        .into_iter()
        .flatten()
        .filter(|r| r.expired_s.is_some())
        .filter_map(|r| r.survived_s)
        .min_by(f64::total_cmp)
        .map(keepalive_s)
}

impl NatReport {
    fn is_lines(&self) -> bool {
        self.format == OutputFormat::JsonLines
    }

    pub(crate) fn start(&self, start: NatStart) {
        match self.format {
            OutputFormat::JsonLines if !self.quiet => print_json_line(&NatLine::Start(start)),
            OutputFormat::Text if !self.quiet => println!(
                "udpreach nat {} ({}): mapping, filtering, idle timeouts up to {} s",
                start.target, start.server, start.max_idle_s
            ),
            _ => {}
        }
    }

    pub(crate) fn event(&self, e: NatEvent) {
        if self.quiet {
            return;
        }
        match self.format {
            OutputFormat::JsonLines => print_json_line(&NatLine::Event(e)),
            OutputFormat::Text | OutputFormat::Json => {}
        }
    }

    pub(crate) fn finish(&self, doc: &NatDocument) {
        if self.is_lines() {
            return print_json_line(&NatLine::Summary(doc.clone()));
        }
        if self.format == OutputFormat::Json {
            return print_json(doc);
        }
        let b = |v: Option<Behaviour>| v.map_or("not measured", Behaviour::text);
        let yn = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not measured",
        };
        if !self.quiet {
            let nat = match doc.nat {
                Some(true) => "yes",
                Some(false) => "no (the server sees our own address and port)",
                None => "not measured",
            };
            println!("NAT:               {nat}");
            if let Some(m) = &doc.mapping_observed {
                let alt = m
                    .seen_alt
                    .map(|a| format!(", alternate address saw {a}"))
                    .unwrap_or_default();
                println!(
                    "mapping:           {} (local {}, port A saw {}, port B saw {}{alt})",
                    if doc.nat == Some(false) {
                        "none"
                    } else {
                        b(doc.mapping)
                    },
                    m.local,
                    m.seen_a,
                    m.seen_b
                );
            }
            println!("filtering:         {}", b(doc.filtering));
            if doc.nat == Some(true) {
                println!(
                    "port preservation: {}; port parity kept: {}",
                    yn(doc.port_preservation),
                    yn(doc.port_parity)
                );
            }
            let mut rows = vec![(String::new(), &doc.idle_timeout)];
            if !doc.per_port.is_empty() {
                rows = doc
                    .per_port
                    .iter()
                    .map(|p| (format!(" to port {}", p.port), &p.timeouts))
                    .collect();
            }
            for (port, t) in rows {
                for (label, r) in [
                    ("one exchange", &t.one_exchange),
                    ("active flow", &t.active_flow),
                ] {
                    let Some(r) = r else { continue };
                    let label = format!("{label}{port}");
                    println!(
                        "idle timeout, {label:<13} {} ({} rounds, {} flows){}",
                        range_text(r),
                        r.rounds,
                        r.flows,
                        r.reason
                            .as_ref()
                            .map(|w| format!(": {w}"))
                            .unwrap_or_default()
                    );
                }
            }
            for n in &doc.not_measured {
                println!("not measured:      {}: {}", n.part, n.reason);
            }
            println!("time:              {:.1} s", doc.elapsed_s);
        }
        println!("{}", doc.conclusion);
    }
}
