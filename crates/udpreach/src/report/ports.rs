//! Port-test output: verdicts grouped into compressed ranges, one JSON
//! document (`--json`) or one JSON object per line (`--json-lines`), all
//! from the typed [`PortsDocument`].

use super::documents::{PortEvent, PortsDocument, PortsLine, PortsStart, PortsSummary};
use super::ports_trace::PortsTrace;
use super::{print_json_line, OutputFormat};
use indicatif::ProgressBar;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_engine::sweep::{PortResult, Progress};
use udpreach_engine::Verdict;

pub(crate) struct PortsReport {
    pub format: OutputFormat,
    pub quiet: bool,
    pub list: bool,
    pub target_name: String,
    pub server: SocketAddr,
}

impl PortsReport {
    pub(crate) fn progress_bar(&self, total: u64) -> ProgressBar {
        super::port_progress_bar(total)
    }

    pub(crate) fn update_bar(&self, bar: &ProgressBar, p: &Progress) {
        bar.set_position(p.decided as u64);
        bar.set_message(format!(
            "| {} reachable, {} blocked, {} other",
            p.reachable, p.blocked, p.other
        ));
    }

    /// With `--json-lines`: the first line, before the sweep.
    pub(crate) fn start(&self, total: usize) {
        if self.format == OutputFormat::JsonLines && !self.quiet {
            print_json_line::<_, PortEvent<PortResult>, PortsSummary>(&PortsLine::Start(
                PortsStart {
                    target: self.target_name.clone(),
                    server: self.server,
                    total,
                },
            ));
        }
    }

    /// The report at the end, with the `--trace` section if there is one.
    pub(crate) fn print(
        &self,
        results: &[PortResult],
        elapsed: Duration,
        probes: u64,
        trace: Option<PortsTrace>,
    ) {
        let groups = super::group_by(results.iter().map(|r| (r.verdict, r.port)));
        let reachable = groups.get(&Verdict::Reachable).map_or(0, Vec::len);
        let (counts, ranges) = super::counts_and_ranges(&groups, Verdict::as_str);
        let doc = PortsDocument {
            summary: PortsSummary {
                target: self.target_name.clone(),
                server: self.server,
                total: results.len(),
                reachable,
                not_reachable: results.len() - reachable,
                elapsed_ms: elapsed.as_secs_f64() * 1e3,
                probes_sent: probes,
                counts,
                ranges,
            },
            ports: results.to_vec(),
            trace,
        };
        match self.format {
            OutputFormat::Json => super::print_json(&doc),
            OutputFormat::JsonLines => {
                super::print_port_lines(&doc.ports, &doc.summary, self.quiet)
            }
            OutputFormat::Text => self.print_text(&doc),
        }
    }

    fn print_text(&self, doc: &PortsDocument) {
        let s = &doc.summary;
        let results = &doc.ports;
        if !self.quiet {
            println!(
                "udpreach ports {} (control {}): {} ports",
                s.target, s.server, s.total
            );
        }
        super::print_port_groups(
            results.iter().map(|r| (r.verdict, r.port, r.icmp)),
            Verdict::Rejected,
            Verdict::as_str,
        );
        if self.list {
            for r in results {
                let rtt = r
                    .rtt_ms
                    .map(|x| format!(" rtt={x:.3} ms"))
                    .unwrap_or_default();
                let icmp = r.icmp.map(|i| format!(" ({i})")).unwrap_or_default();
                println!(
                    "port {} {}{rtt} probes={}{icmp}",
                    r.port,
                    r.verdict.describe(),
                    r.probes
                );
            }
        }
        println!(
            "{} ports in {:.2} s: {} reachable, {} not reachable ({} probes)",
            s.total,
            s.elapsed_ms / 1e3,
            s.reachable,
            s.not_reachable,
            s.probes_sent
        );
        if let Some(t) = &doc.trace {
            for line in t.text_lines() {
                println!("{line}");
            }
        }
    }
}
