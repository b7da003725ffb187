//! Output of `udpreach mtu`: each direction's path MTU, how it was found,
//! the largest UDP payload, and whether fragments pass; or one JSON document
//! (`--json`) or one JSON object per line (`--json-lines`), all from the
//! typed [`MtuDocument`].

use super::documents::{Family, MtuDocument, MtuEvent, MtuLine, MtuMode, MtuPaths, MtuStart};
use super::{print_json_line, OutputFormat};
use schemars::JsonSchema;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_engine::mtu::{FragmentResult, MtuEvidence, MtuResult};

/// What one direction (or the round trip) showed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub(crate) struct Direction {
    #[serde(flatten)]
    pub result: MtuResult,
    /// Largest UDP payload that crosses with DF set.
    pub payload: Option<u32>,
    /// Datagrams above the path MTU, without DF.
    pub fragments: Option<FragmentResult>,
    /// Time this direction's search took.
    pub elapsed_ms: f64,
}

pub(crate) struct MtuReport {
    pub format: OutputFormat,
    pub quiet: bool,
    pub target_name: String,
    pub target: SocketAddr,
}

fn evidence_text(e: &Option<MtuEvidence>) -> String {
    match e {
        Some(MtuEvidence::Icmp { from, mtu }) => {
            let from = from.map_or_else(|| "the local host".into(), |ip| ip.to_string());
            match mtu {
                Some(m) => format!("frag-needed / packet-too-big from {from} (next-hop MTU {m})"),
                None => format!("frag-needed / packet-too-big from {from}"),
            }
        }
        Some(MtuEvidence::Silence) => {
            "larger datagrams vanish without any ICMP error: a PMTU black hole, found by search"
                .into()
        }
        Some(MtuEvidence::Inconclusive) => {
            "could not tell where the limit is: larger datagrams vanished without any ICMP error, but so did, when probed again, a size that had crossed (loss on the path or at the far end); this is only the largest size seen to cross"
                .into()
        }
        Some(MtuEvidence::Interface) => {
            "the sending interface's MTU; nothing smaller on the path".into()
        }
        None => String::new(),
    }
}

fn direction_line(label: &str, d: &Direction) -> String {
    match (d.result.mtu, d.payload) {
        (Some(m), Some(p)) => format!(
            "{label:<11} path MTU {m} bytes, largest UDP payload {p}: {} [{} rounds, {:.0} ms]",
            evidence_text(&d.result.evidence),
            d.result.rounds,
            d.elapsed_ms
        ),
        _ => format!(
            "{label:<11} nothing crossed with Don't Fragment set, not even the smallest probe"
        ),
    }
}

fn fragments_text(f: &Option<FragmentResult>, d: &Direction) -> String {
    let Some(f) = f else {
        return "not tested".into();
    };
    let sizes: Vec<String> = f.sizes.iter().map(|s| s.size.to_string()).collect();
    let sizes = sizes.join(", ");
    if f.passes {
        format!("pass ({sizes} bytes)")
    } else if f.dropped {
        format!(
            "DROPPED: fragmented datagrams ({sizes} bytes) never arrived, while unfragmented ones up to {} bytes do: something on the path drops IP fragments",
            d.payload.unwrap_or(0)
        )
    } else {
        let got: Vec<String> = f
            .sizes
            .iter()
            .map(|s| format!("{} bytes {}/{}", s.size, s.arrived, s.sent))
            .collect();
        format!("PARTLY: {}", got.join(", "))
    }
}

impl MtuReport {
    /// A report for a measurement whose result the caller exports itself
    /// (the monitor's mtu check): quiet JSON lines, so neither notices nor
    /// the start line are printed (the caller never calls `print_*`).
    pub(crate) fn silent(target_name: String, target: SocketAddr) -> Self {
        MtuReport {
            format: OutputFormat::JsonLines,
            quiet: true,
            target_name,
            target,
        }
    }

    pub(crate) fn notice(&self, text: &str) {
        match self.format {
            OutputFormat::Text => eprintln!("udpreach: {text}"),
            OutputFormat::JsonLines if !self.quiet => {
                print_json_line(&MtuLine::Event(MtuEvent::Notice {
                    message: text.to_string(),
                }))
            }
            _ => {}
        }
    }

    pub(crate) fn start(&self, mode: MtuMode, local_mtu: u32) {
        let start = MtuStart {
            target: self.target_name.clone(),
            address: self.target,
            family: Family::of(&self.target),
            mode,
            local_mtu,
        };
        match self.format {
            OutputFormat::Text if !self.quiet => {
                let with = match mode {
                    MtuMode::Server => "udpreach server, each direction",
                    MtuMode::Echo => "echo server, round trip",
                };
                println!(
                    "udpreach mtu {} ({}, {}): {with}; local interface MTU {local_mtu}",
                    start.target,
                    start.address,
                    start.family.name()
                );
            }
            OutputFormat::JsonLines if !self.quiet => print_json_line(&MtuLine::Start(start)),
            _ => {}
        }
    }

    pub(crate) fn print_directions(
        &self,
        up: &Direction,
        down: &Direction,
        elapsed: Duration,
        probes: u64,
    ) {
        self.print(
            MtuPaths::Server {
                upstream: up.clone(),
                downstream: down.clone(),
            },
            elapsed,
            probes,
        );
    }

    pub(crate) fn print_round_trip(&self, rt: &Direction, elapsed: Duration, probes: u64) {
        self.print(
            MtuPaths::Echo {
                round_trip: rt.clone(),
            },
            elapsed,
            probes,
        );
    }

    fn print(&self, paths: MtuPaths, elapsed: Duration, probes: u64) {
        let doc = MtuDocument {
            target: self.target_name.clone(),
            address: self.target,
            family: Family::of(&self.target),
            paths,
            elapsed_ms: elapsed.as_secs_f64() * 1e3,
            probes_sent: probes,
        };
        match self.format {
            OutputFormat::Json => super::print_json(&doc),
            OutputFormat::JsonLines => print_json_line(&MtuLine::Summary(doc)),
            OutputFormat::Text => self.print_text(&doc),
        }
    }

    fn print_text(&self, doc: &MtuDocument) {
        match &doc.paths {
            MtuPaths::Server {
                upstream: up,
                downstream: down,
            } => {
                println!("{}", direction_line("upstream", up));
                println!("{}", direction_line("downstream", down));
                println!(
                    "fragments   upstream: {}\n            downstream: {}",
                    fragments_text(&up.fragments, up),
                    fragments_text(&down.fragments, down)
                );
            }
            MtuPaths::Echo { round_trip: rt } => {
                println!("{}", direction_line("round trip", rt));
                println!(
                    "fragments   round trip: {}",
                    fragments_text(&rt.fragments, rt)
                );
            }
        }
        if !self.quiet {
            println!("{:.2} s, {} probes", doc.elapsed_ms / 1e3, doc.probes_sent);
        }
    }
}
