//! Renderers: everything that turns results into text for people or JSON for scripts.
//!
//! Each command's output is a typed document (in [`documents`]); the text
//! renderers and both JSON modes read the same values, and the JSON Schemas
//! in `docs/schema/` are generated from those types.

use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use udpreach_wire::icmp::IcmpReport;
use udpreach_wire::PortSpec;

pub(crate) mod documents;
pub(crate) mod mtu;
pub(crate) mod nat;
pub(crate) mod ping;
pub(crate) mod ports;
pub(crate) mod ports_trace;
pub(crate) mod serverless;
pub(crate) mod trace;

/// How a command prints its results (the same for ping, ports and mtu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    /// Lines for people.
    Text,
    /// `--json`: one JSON document when the command ends.
    Json,
    /// `--json-lines`: one JSON object per line and event, as it happens,
    /// each with a `type`: `start` first, `summary` last.
    JsonLines,
}

impl OutputFormat {
    pub(crate) fn from_flags(json: bool, json_lines: bool) -> Self {
        match (json, json_lines) {
            (_, true) => OutputFormat::JsonLines,
            (true, false) => OutputFormat::Json,
            (false, false) => OutputFormat::Text,
        }
    }

    pub(crate) fn is_json(self) -> bool {
        self != OutputFormat::Text
    }
}

/// One line of `--json-lines`: `{"type": "start", ...}`, then events (each
/// carrying its own `type`), then `{"type": "summary", ...}`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum JsonLine<S, E, U> {
    Start(S),
    Summary(U),
    #[serde(untagged)]
    Event(E),
}

/// Writes one line and flushes it, so a reader of a pipe sees each event
/// when it happens.
pub(crate) fn print_line(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// One `--json-lines` object on its own line.
pub(crate) fn print_json_line<S: Serialize, E: Serialize, U: Serialize>(line: &JsonLine<S, E, U>) {
    print_line(&serde_json::to_string(line).expect("report types serialize"));
}

/// Formats milliseconds the way ping(8) does: three decimals.
pub(crate) fn ms3(v: f64) -> String {
    format!("{v:.3}")
}

/// One line of a grouped port report: label, count, compressed ranges, and
/// an optional note (who rejected them).
pub(crate) fn group_line(
    label: &str,
    ports: &[u16],
    note: Option<&dyn std::fmt::Display>,
) -> String {
    let spec = PortSpec::from_ports(ports.iter().copied());
    match note {
        Some(n) => format!("{label:<17} {:>6}  {spec}  ({n})", ports.len()),
        None => format!("{label:<17} {:>6}  {spec}", ports.len()),
    }
}

/// Ports grouped by a key (a verdict, an ICMP report), in a stable order.
pub(crate) fn group_by<K: Ord>(items: impl IntoIterator<Item = (K, u16)>) -> BTreeMap<K, Vec<u16>> {
    let mut by: BTreeMap<K, Vec<u16>> = BTreeMap::new();
    for (k, port) in items {
        by.entry(k).or_default().push(port);
    }
    by
}

/// A port sweep's progress bar (`ports`, with or without a server).
pub(crate) fn port_progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} ports {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `--json-lines` after a sweep: one line per port (unless quiet), then
/// the summary. The start line went out before the sweep.
pub(crate) fn print_port_lines<R: Serialize, U: Serialize>(ports: &[R], summary: &U, quiet: bool) {
    if !quiet {
        for r in ports {
            print_json_line(&JsonLine::<(), _, ()>::Event(documents::PortEvent::Port(r)));
        }
    }
    print_json_line(&JsonLine::<(), documents::PortEvent<R>, _>::Summary(
        summary,
    ));
}

/// The text lines of a sweep: one per verdict with its port ranges, and
/// for the verdict an ICMP error explains (rejected, filtered), one per
/// reporting host and reason, so the reader sees who did it.
pub(crate) fn print_port_groups<V: Ord + Copy>(
    rows: impl Iterator<Item = (V, u16, Option<IcmpReport>)> + Clone,
    explained_by_icmp: V,
    label: impl Fn(V) -> &'static str,
) {
    let groups = group_by(rows.clone().map(|(v, port, _)| (v, port)));
    for (v, ports) in &groups {
        if *v == explained_by_icmp {
            let by_icmp = group_by(
                rows.clone()
                    .filter(|(rv, _, _)| *rv == explained_by_icmp)
                    .filter_map(|(_, port, icmp)| icmp.map(|i| (i, port))),
            );
            for (icmp, ports) in by_icmp {
                println!("{}", group_line(label(*v), &ports, Some(&icmp)));
            }
            continue;
        }
        println!("{}", group_line(label(*v), ports, None));
    }
}

/// The `counts` and `ranges` objects of a port report's JSON.
pub(crate) fn counts_and_ranges<V: Copy>(
    groups: &BTreeMap<V, Vec<u16>>,
    name: fn(V) -> &'static str,
) -> (
    BTreeMap<&'static str, usize>,
    BTreeMap<&'static str, String>,
) {
    let counts = groups.iter().map(|(v, p)| (name(*v), p.len())).collect();
    let ranges = groups
        .iter()
        .map(|(v, p)| {
            (
                name(*v),
                PortSpec::from_ports(p.iter().copied()).to_string(),
            )
        })
        .collect();
    (counts, ranges)
}

/// A whole-run JSON document, pretty-printed on stdout.
pub(crate) fn print_json<T: Serialize>(doc: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).expect("report types serialize")
    );
}
