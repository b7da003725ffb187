//! `udpreach ports --trace`: after the sweep, where are the blocked ports
//! dropped? A few representatives of each group of blocked ports (same
//! sweep verdict) are traced in full; when they agree on the hop that drops
//! them, every other port of the group is only checked there (the TTL of
//! that hop and the next), else it is traced in full too.

use crate::cli::{PortsArgs, TraceArgs};
use crate::report::ports_trace::{PortsTrace, TraceGroup};
use crate::report::trace::{Direction, DirectionReport, TraceVerdict};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use udpreach_engine::sweep::PortResult;
use udpreach_engine::trace::DEFAULT_PATIENCE;
use udpreach_engine::Verdict;
use udpreach_wire::portspec::PortSpec;

/// Ports of a group traced in full before the rest are checked.
pub(super) const REPRESENTATIVES: usize = 3;
/// Ports per trace run (a trace takes at most 127 with its control port).
const CHUNK: usize = 120;

/// Traces the blocked ports among `results` (see the module docs).
pub(super) async fn trace_blocked(args: &PortsArgs, results: &[PortResult]) -> PortsTrace {
    let started = Instant::now();
    let mut groups: BTreeMap<Verdict, Vec<u16>> = BTreeMap::new();
    for r in results {
        if matches!(r.verdict, Verdict::InboundBlocked | Verdict::ReturnBlocked) {
            groups.entry(r.verdict).or_default().push(r.port);
        }
    }
    let mut out = PortsTrace {
        groups: Vec::new(),
        results: Vec::new(),
        elapsed_ms: 0.0,
        error: None,
    };
    let reps: Vec<Vec<u16>> = groups.values().map(|p| representatives(p)).collect();
    let all_reps: Vec<u16> = reps.iter().flatten().copied().collect();
    if all_reps.is_empty() {
        return out;
    }
    let first = match run_trace(args, &all_reps, None).await {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            out.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            return out;
        }
    };
    out.results
        .extend(first.iter().filter(|r| !r.control).cloned());
    for ((verdict, ports), reps) in groups.into_iter().zip(reps) {
        let direction = match verdict {
            Verdict::ReturnBlocked => Direction::Downstream,
            _ => Direction::Upstream,
        };
        let check_at = agreed_hop(&first, &reps, direction);
        let rest: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !reps.contains(p))
            .collect();
        for chunk in rest.chunks(CHUNK) {
            match run_trace(args, chunk, check_at).await {
                Ok(rs) => out.results.extend(
                    rs.into_iter()
                        .filter(|r| !r.control && r.direction == direction),
                ),
                Err(e) => {
                    out.error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        out.groups.push(TraceGroup {
            sweep_verdict: verdict,
            ports,
            representatives: reps,
            direction,
            checked_from_ttl: check_at.map(|(first, _)| first),
        });
    }
    out.results
        .sort_by_key(|r| (r.port, r.direction == Direction::Downstream));
    out.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    out
}

/// The first, the middle and the last port of a group.
fn representatives(ports: &[u16]) -> Vec<u16> {
    let mut r: Vec<u16> = [0, ports.len() / 2, ports.len().saturating_sub(1)]
        .iter()
        .filter_map(|&i| ports.get(i).copied())
        .collect();
    r.dedup();
    r.truncate(REPRESENTATIVES);
    r
}

/// The TTLs at which every representative, without ambiguity, was dropped
/// (the last hop that answered and the next) or rejected: where the rest
/// of the group is checked. `None` when they disagree or cannot tell.
fn agreed_hop(results: &[DirectionReport], reps: &[u16], dir: Direction) -> Option<(u8, u8)> {
    let mut agreed = None;
    for &p in reps {
        let r = results
            .iter()
            .find(|r| r.port == p && r.direction == dir && !r.control)?;
        if r.ambiguous.is_some() {
            return None;
        }
        let at = match r.verdict {
            TraceVerdict::DroppedAfter => {
                let last = r.last_hop.as_ref()?.ttl;
                (last, last.saturating_add(1))
            }
            TraceVerdict::RejectedBy => {
                let t = r.rejected.as_ref()?.ttl;
                (t.saturating_sub(1).max(1), t)
            }
            _ => return None,
        };
        if agreed.is_some_and(|a| a != at) {
            return None;
        }
        agreed = Some(at);
    }
    agreed
}

/// One `trace` run of `ports` against the sweep's server; with `at`, only
/// the TTLs `at.0..=at.1`.
async fn run_trace(
    args: &PortsArgs,
    ports: &[u16],
    at: Option<(u8, u8)>,
) -> anyhow::Result<Vec<DirectionReport>> {
    let spec = PortSpec::from_ports(ports.iter().copied());
    let targs = TraceArgs {
        target: args.target.clone(),
        ports: spec,
        control_port: None,
        control: args.control,
        no_server: false,
        family: args.family,
        dscp: None,
        max_hops: at.map_or(30, |(_, last)| last),
        attempts: 2,
        rate: 1000,
        timeout: None::<Duration>,
        patience: DEFAULT_PATIENCE,
        size: None,
        output: crate::cli::OutputArgs {
            quiet: true,
            json: false,
            json_lines: false,
        },
        // A keyed server traces only tagged probes: the sweep's key tags them.
        key: args.key.clone(),
        first_ttl: at.map(|(first, _)| first),
    };
    Ok(crate::trace::trace(&targs, None).await?.results)
}
