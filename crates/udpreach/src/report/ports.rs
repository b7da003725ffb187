//! Port-test output: verdicts grouped into compressed ranges, or a JSON document.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_engine::sweep::{PortResult, Progress};
use udpreach_engine::Verdict;
use udpreach_wire::icmp::IcmpReport;

pub struct PortsReport {
    pub json: bool,
    pub quiet: bool,
    pub list: bool,
    pub target_name: String,
    pub server: SocketAddr,
}

/// Rejected ports grouped by the ICMP error (reporting host and reason).
fn rejected_by(results: &[PortResult]) -> BTreeMap<IcmpReport, Vec<u16>> {
    super::group_by(
        results
            .iter()
            .filter(|r| r.verdict == Verdict::Rejected)
            .filter_map(|r| r.icmp.map(|i| (i, r.port))),
    )
}

impl PortsReport {
    pub fn progress_bar(&self, total: u64) -> ProgressBar {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} ports {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }

    pub fn update_bar(&self, bar: &ProgressBar, p: &Progress) {
        bar.set_position(p.decided as u64);
        bar.set_message(format!(
            "| {} reachable, {} blocked, {} other",
            p.reachable, p.blocked, p.other
        ));
    }

    pub fn print(&self, results: &[PortResult], elapsed: Duration, probes: u64) {
        let groups = super::group_by(results.iter().map(|r| (r.verdict, r.port)));
        let reachable = groups.get(&Verdict::Reachable).map_or(0, Vec::len);
        if self.json {
            let (counts, ranges) = super::counts_and_ranges(&groups, Verdict::as_str);
            let doc = json!({
                "target": self.target_name,
                "server": self.server.to_string(),
                "total": results.len(),
                "reachable": reachable,
                "not_reachable": results.len() - reachable,
                "elapsed_ms": elapsed.as_secs_f64() * 1e3,
                "probes_sent": probes,
                "counts": counts,
                "ranges": ranges,
                "ports": results,
            });
            super::print_json(&doc);
            return;
        }
        if !self.quiet {
            println!(
                "udpreach ports {} (control {}): {} ports",
                self.target_name,
                self.server,
                results.len()
            );
        }
        for (v, ports) in &groups {
            if *v == Verdict::Rejected {
                // One line per reporting host and reason: who rejected what.
                for (icmp, ports) in rejected_by(results) {
                    println!("{}", super::group_line(v.as_str(), &ports, Some(&icmp)));
                }
                continue;
            }
            println!("{}", super::group_line(v.as_str(), ports, None));
        }
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
            results.len(),
            elapsed.as_secs_f64(),
            reachable,
            results.len() - reachable,
            probes
        );
    }
}
