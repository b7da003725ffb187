//! Ping output: ping(8)-style lines, or one JSON object per line.

use super::ms3;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use udpreach_engine::ping::PingSummary;
use udpreach_wire::icmp::IcmpReport;
use udpreach_wire::ServerStamp;

pub struct PingReport {
    pub json: bool,
    pub quiet: bool,
    pub target_name: String,
    pub target: SocketAddr,
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl PingReport {
    pub fn start(&self, size: usize, stamped: bool, local: Option<SocketAddr>) {
        if self.json {
            out(&json!({
                "type": "start",
                "target": self.target_name,
                "remote": self.target.to_string(),
                "local": local.map(|l| l.to_string()),
                "bytes": size,
                "udpreach_header": stamped,
            })
            .to_string());
        } else if !self.quiet {
            let kind = if stamped {
                "udpreach probes"
            } else {
                "plain payload"
            };
            out(&format!(
                "UDPREACH {} ({}): {size} bytes per probe, {kind}",
                self.target_name, self.target
            ));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn reply(
        &self,
        local: SocketAddr,
        seq: u64,
        bytes: usize,
        rtt: Duration,
        ttl: Option<u8>,
        stamp: Option<&ServerStamp>,
        kind: &str,
    ) {
        if self.json {
            let mut v = json!({
                "type": kind,
                "seq": seq,
                "local": local.to_string(),
                "remote": self.target.to_string(),
                "bytes": bytes,
                "rtt_ms": ms(rtt),
                "ttl": ttl,
            });
            if let Some(s) = stamp {
                v["server_saw"] = json!(s.seen_from.to_string());
                v["server_seen_ttl"] = json!(s.seen_ttl);
                v["server_count"] = json!(s.flow_count);
                v["server_processing_us"] = json!(s.tx_ns.saturating_sub(s.rx_ns) as f64 / 1e3);
            }
            out(&v.to_string());
        } else if !self.quiet {
            let ttl = ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
            let note = match kind {
                "late" => " (late: after its timeout)",
                "duplicate" => " (DUP!)",
                _ => "",
            };
            out(&format!(
                "{local} -> {} seq={seq} bytes={bytes} time={} ms{ttl}{note}",
                self.target,
                ms3(ms(rtt))
            ));
        }
    }

    pub fn timeout(&self, local: Option<SocketAddr>, seq: u64, after: Duration) {
        if self.json {
            out(
                &json!({"type": "timeout", "seq": seq, "local": local.map(|l| l.to_string()),
                        "remote": self.target.to_string(), "timeout_ms": ms(after)})
                .to_string(),
            );
        } else if !self.quiet {
            let l = local.map(|l| format!("{l} -> ")).unwrap_or_default();
            out(&format!(
                "{l}{} seq={seq} no reply within {} ms",
                self.target,
                ms(after)
            ));
        }
    }

    /// An ICMP error answered probe `seq`, as ping(8)'s "From X ... Unreachable".
    pub fn icmp_error(&self, local: SocketAddr, seq: u64, after: Duration, r: &IcmpReport) {
        if self.json {
            let mut v = serde_json::to_value(r).expect("report serializes");
            v["type"] = json!("icmp_error");
            v["seq"] = json!(seq);
            v["local"] = json!(local.to_string());
            v["remote"] = json!(self.target.to_string());
            v["after_ms"] = json!(ms(after));
            out(&v.to_string());
        } else if !self.quiet {
            let from = r
                .from
                .map_or_else(|| "local host".to_string(), |ip| ip.to_string());
            out(&format!(
                "{local} -> {} seq={seq} From {from}: {} (after {} ms)",
                self.target,
                r.reason,
                ms3(ms(after))
            ));
        }
    }

    pub fn notice(&self, what: &str, detail: serde_json::Value, text: &str) {
        if self.json {
            let mut v = json!({"type": what});
            if let serde_json::Value::Object(m) = detail {
                for (k, x) in m {
                    v[k] = x;
                }
            }
            out(&v.to_string());
        } else {
            eprintln!("udpreach: {text}");
        }
    }

    /// The closing block. `local` is the address we sent from (None with --sport).
    pub fn summary(&self, s: &PingSummary, local: Option<SocketAddr>, skipped_ports: &[u16]) {
        let nat = nat_line(s, local);
        if self.json {
            let mut v = serde_json::to_value(s).expect("summary serializes");
            v["type"] = json!("summary");
            v["target"] = json!(self.target_name);
            v["remote"] = json!(self.target.to_string());
            v["local"] = json!(local.map(|l| l.to_string()));
            v["nat_detected"] = json!(nat.is_some());
            v["skipped_source_ports"] = json!(skipped_ports);
            out(&v.to_string());
            return;
        }
        let mut lines = vec![format!("--- {} statistics ---", self.target_name)];
        // ping(8) style: the error count only when there were errors.
        let errors = if s.errors > 0 {
            format!(", +{} errors", s.errors)
        } else {
            String::new()
        };
        lines.push(format!(
            "{} packets transmitted, {} received{errors}, {} duplicates, {} late, {} reordered, {}% packet loss, time {:.0}ms",
            s.transmitted,
            s.received,
            s.duplicates,
            s.late,
            s.reordered,
            trim_pct(s.loss_percent),
            s.elapsed_ms
        ));
        if s.withheld > 0 {
            lines.push(format!(
                "{} replies withheld by the server's rate limit (not counted as loss)",
                s.withheld
            ));
        }
        if let Some(r) = &s.rtt {
            lines.push(format!(
                "rtt min/avg/max/mdev = {}/{}/{}/{} ms",
                ms3(r.min_ms),
                ms3(r.avg_ms),
                ms3(r.max_ms),
                ms3(r.mdev_ms)
            ));
            lines.push(format!(
                "rtt p50/p90/p99 = {}/{}/{} ms, jitter (ipdv) {} ms, rfc3550 {} ms",
                ms3(r.p50_ms),
                ms3(r.p90_ms),
                ms3(r.p99_ms),
                ms3(r.ipdv_ms),
                ms3(r.jitter_rfc3550_ms)
            ));
        }
        for t in &s.icmp_errors {
            lines.push(format!("icmp errors: {} x {}", t.count, t.report));
        }
        if let (Some(up), Some(down)) = (s.upstream_lost, s.downstream_lost) {
            lines.push(format!(
                "loss by direction: {up} upstream (to server), {down} downstream (to us), {} unknown",
                s.direction_unknown.unwrap_or(0)
            ));
        }
        if let Some(p) = &s.server_processing {
            let mut l = format!(
                "server: processing min/avg/max = {:.1}/{:.1}/{:.1} us",
                p.min_us, p.avg_us, p.max_us
            );
            if let Some(saw) = s.server_saw {
                l.push_str(&format!("; saw you as {saw}"));
            }
            if let Some(ttl) = s.server_seen_ttl {
                l.push_str(&format!(" with TTL {ttl}"));
            }
            lines.push(l);
        }
        if let Some(n) = nat {
            lines.push(n);
        }
        if s.send_errors > 0 {
            lines.push(format!("{} probes could not be sent", s.send_errors));
        }
        if !skipped_ports.is_empty() {
            lines.push(format!(
                "source ports in use locally, skipped: {}",
                udpreach_wire::PortSpec::from_ports(skipped_ports.iter().copied())
            ));
        }
        if !s.silent_source_ports.is_empty() {
            lines.push(format!(
                "source ports with no reply: {}",
                udpreach_wire::PortSpec::from_ports(s.silent_source_ports.iter().copied())
            ));
        }
        out(&lines.join("\n"));
    }
}

fn trim_pct(p: f64) -> String {
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The seed's transparent-proxy question: does the server see our real address?
fn nat_line(s: &PingSummary, local: Option<SocketAddr>) -> Option<String> {
    let saw = s.server_saw?;
    match local {
        Some(l) if l.ip().is_unspecified() => (l.port() != saw.port()).then(|| {
            format!(
                "NAT or proxy in the path: server sees you as {saw} (you sent from port {})",
                l.port()
            )
        }),
        Some(l) if l != saw => Some(format!(
            "NAT or proxy in the path: server sees you as {saw} (you sent from {l})"
        )),
        None if s.port_translated > 0 => Some(format!(
            "NAT or proxy in the path: {} replies show a translated source port",
            s.port_translated
        )),
        _ => None,
    }
}
