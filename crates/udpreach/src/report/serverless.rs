//! Output of `udpreach ports --no-server`: verdicts grouped into port
//! ranges (filtered ones by who rejected them), the ICMP rate limiting met
//! on the way; or one JSON document (`--json`) or one JSON object per line
//! (`--json-lines`), all from the typed [`ServerlessDocument`].

use super::documents::{
    NoServer, PortEvent, ServerlessDocument, ServerlessLine, ServerlessStart, ServerlessSummary,
};
use super::{print_json_line, OutputFormat};
use indicatif::ProgressBar;
use std::net::IpAddr;
use std::time::Duration;
use udpreach_engine::serverless::{
    IcmpRateLimit, ServerlessProgress, ServerlessResult, ServerlessVerdict,
};

pub(crate) struct ServerlessReport {
    pub format: OutputFormat,
    pub quiet: bool,
    pub list: bool,
    pub target_name: String,
    pub target: IpAddr,
}

impl ServerlessReport {
    pub(crate) fn progress_bar(&self, total: u64) -> ProgressBar {
        super::port_progress_bar(total)
    }

    pub(crate) fn update_bar(
        &self,
        bar: &ProgressBar,
        p: &ServerlessProgress,
        rl: Option<&IcmpRateLimit>,
    ) {
        bar.set_position(p.decided as u64);
        let paced = rl
            .map(|r| format!(", paced to 1 ICMP error per {:.0} ms", r.interval_ms))
            .unwrap_or_default();
        bar.set_message(format!(
            "| {} open, {} closed, {} filtered, {} open|filtered{paced}",
            p.open, p.closed, p.filtered, p.open_filtered
        ));
    }

    /// Said as soon as the limiting shows, so a slow check is not a mystery.
    pub(crate) fn rate_limit_notice(&self, rl: &IcmpRateLimit) {
        if !self.format.is_json() && !self.quiet {
            eprintln!(
                "udpreach: {} rate-limits its ICMP errors (about 1 per {:.0} ms): pacing to it; closed ports now cost that much each",
                self.target, rl.interval_ms
            );
        }
    }

    /// With `--json-lines`: the first line, before the check.
    pub(crate) fn start(&self, total: usize) {
        if self.format == OutputFormat::JsonLines && !self.quiet {
            print_json_line::<_, PortEvent<ServerlessResult>, ServerlessSummary>(
                &ServerlessLine::Start(ServerlessStart {
                    mode: NoServer::NoServer,
                    target: self.target_name.clone(),
                    address: self.target,
                    total,
                }),
            );
        }
    }

    pub(crate) fn print(
        &self,
        results: &[ServerlessResult],
        elapsed: Duration,
        progress: &ServerlessProgress,
        rate_limit: Option<&IcmpRateLimit>,
    ) {
        let groups = super::group_by(results.iter().map(|r| (r.verdict, r.port)));
        let (counts, ranges) = super::counts_and_ranges(&groups, ServerlessVerdict::as_str);
        let doc = ServerlessDocument {
            summary: ServerlessSummary {
                mode: NoServer::NoServer,
                target: self.target_name.clone(),
                address: self.target,
                total: results.len(),
                elapsed_ms: elapsed.as_secs_f64() * 1e3,
                probes_sent: progress.probes_sent,
                canaries_sent: progress.canaries_sent,
                icmp_rate_limit: rate_limit.cloned(),
                counts,
                ranges,
            },
            ports: results.to_vec(),
        };
        match self.format {
            OutputFormat::Json => super::print_json(&doc),
            OutputFormat::JsonLines => {
                super::print_port_lines(&doc.ports, &doc.summary, self.quiet)
            }
            OutputFormat::Text => self.print_text(&doc),
        }
    }

    fn print_text(&self, doc: &ServerlessDocument) {
        let s = &doc.summary;
        let results = &doc.ports;
        if !self.quiet {
            println!(
                "udpreach ports --no-server {} ({}): {} ports",
                s.target, s.address, s.total
            );
        }
        super::print_port_groups(
            results.iter().map(|r| (r.verdict, r.port, r.icmp)),
            ServerlessVerdict::Filtered,
            ServerlessVerdict::nmap_state,
        );
        if self.list {
            for r in results {
                let service = udpreach_wire::services::service_name(r.port)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                let rtt = r
                    .rtt_ms
                    .map(|x| format!(" rtt={x:.3} ms"))
                    .unwrap_or_default();
                let icmp = r.icmp.map(|i| format!(" [{i}]")).unwrap_or_default();
                let bytes = r
                    .reply_bytes
                    .map(|b| format!(" reply={b} bytes"))
                    .unwrap_or_default();
                println!(
                    "port {}{service} {}{rtt}{bytes} probes={}{icmp}",
                    r.port,
                    r.verdict.nmap_state(),
                    r.probes
                );
            }
        }
        let count = |v: ServerlessVerdict| results.iter().filter(|r| r.verdict == v).count();
        println!(
            "{} ports in {:.2} s: {} open, {} closed, {} filtered, {} open|filtered ({} probes, {} canaries)",
            s.total,
            s.elapsed_ms / 1e3,
            count(ServerlessVerdict::Open),
            count(ServerlessVerdict::Closed),
            count(ServerlessVerdict::Filtered),
            count(ServerlessVerdict::OpenFiltered),
            s.probes_sent,
            s.canaries_sent
        );
        if let Some(rl) = &s.icmp_rate_limit {
            println!(
                "ICMP rate limiting at {}: about 1 error per {:.0} ms (seen after {:.1} s); the check was paced to it",
                s.address,
                rl.interval_ms,
                rl.detected_after_ms / 1e3
            );
        }
    }
}
