//! Renderers: everything that turns results into text for people or JSON for scripts.

pub mod mtu;
pub mod ping;
pub mod ports;
pub mod serverless;

/// Formats milliseconds the way ping(8) does: three decimals.
pub fn ms3(v: f64) -> String {
    format!("{v:.3}")
}
