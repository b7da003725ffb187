//! Renderers: everything that turns results into text for people or JSON for scripts.

pub mod mtu;
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
    let spec = udpreach_wire::PortSpec::from_ports(ports.iter().copied());
    match note {
        Some(n) => format!("{label:<17} {:>6}  {spec}  ({n})", ports.len()),
        None => format!("{label:<17} {:>6}  {spec}", ports.len()),
    }
}
