//! Renderers: everything that turns results into text for people or JSON for scripts.

pub mod mtu;
use std::collections::BTreeMap;
use udpreach_wire::PortSpec;

pub mod ping;
pub mod ports;
pub mod serverless;

/// Formats milliseconds the way ping(8) does: three decimals.
pub fn ms3(v: f64) -> String {
    format!("{v:.3}")
}

/// One line of a grouped port report: label, count, compressed ranges, and
/// an optional note (who rejected them).
pub fn group_line(label: &str, ports: &[u16], note: Option<&dyn std::fmt::Display>) -> String {
    let spec = PortSpec::from_ports(ports.iter().copied());
    match note {
        Some(n) => format!("{label:<17} {:>6}  {spec}  ({n})", ports.len()),
        None => format!("{label:<17} {:>6}  {spec}", ports.len()),
    }
}

/// Ports grouped by a key (a verdict, an ICMP report), in a stable order.
pub fn group_by<K: Ord>(items: impl IntoIterator<Item = (K, u16)>) -> BTreeMap<K, Vec<u16>> {
    let mut by: BTreeMap<K, Vec<u16>> = BTreeMap::new();
    for (k, port) in items {
        by.entry(k).or_default().push(port);
    }
    by
}

/// The `counts` and `ranges` objects of a port report's JSON.
pub fn counts_and_ranges<V: Copy>(
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
pub fn print_json(doc: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).expect("JSON values serialize")
    );
}
