//! The text form of a [`DirectionConfig`], as the command line takes it:
//! comma-separated `key=value` items, e.g.
//! `delay=25ms,jitter=5ms,loss=2%,burst=1%:25%:100%,rate=100mbit,limit=1mb,fifo`.
//!
//! * `delay=`, `jitter=`: `500us`, `25ms`, `1s`, `1.5ms`.
//! * `loss=`: `2%` or `0.02`.
//! * `burst=P:R:LOSS_BAD[:LOSS_GOOD]`: Gilbert-Elliott probabilities (good to
//!   bad, bad to good, loss in bad, loss in good), each `%` or fraction.
//! * `rate=`: bits per second with `kbit`, `mbit`, `gbit` or `bit`.
//! * `limit=`: rate-cap queue in bytes, with `kb`/`mb` (1024-based) or none.
//! * `reorder` (the default with jitter) or `fifo` (jitter keeps order).

use crate::model::{DirectionConfig, GilbertElliott, DEFAULT_LIMIT_BYTES};
use std::time::Duration;

/// Longest delay or jitter accepted (the queue holds frames that long).
pub const MAX_DELAY: Duration = Duration::from_secs(10);

pub fn parse_direction(spec: &str) -> Result<DirectionConfig, String> {
    let mut cfg = DirectionConfig {
        reorder: true,
        limit_bytes: DEFAULT_LIMIT_BYTES,
        ..DirectionConfig::default()
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key {
            "delay" => cfg.delay = parse_duration(value)?,
            "jitter" => cfg.jitter = parse_duration(value)?,
            "loss" => cfg.loss = parse_probability(value)?,
            "burst" => cfg.burst = Some(parse_burst(value)?),
            "rate" => cfg.rate_bps = parse_rate(value)?,
            "limit" => cfg.limit_bytes = parse_bytes(value)?,
            "reorder" if value.is_empty() => cfg.reorder = true,
            "fifo" if value.is_empty() => cfg.reorder = false,
            _ => return Err(format!("unknown link setting `{item}`")),
        }
    }
    Ok(cfg)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_unit(s);
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        _ => return Err(format!("bad duration `{s}` (use s, ms or us)")),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration `{s}`"))?;
    let d = Duration::try_from_secs_f64(v * scale).map_err(|_| format!("bad duration `{s}`"))?;
    if d > MAX_DELAY {
        return Err(format!("duration `{s}` above {MAX_DELAY:?}"));
    }
    Ok(d)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let v: f64 = match s.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|p| p / 100.0),
        None => s.parse(),
    }
    .map_err(|_| format!("bad probability `{s}`"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("probability `{s}` outside 0..100%"));
    }
    Ok(v)
}

fn parse_burst(s: &str) -> Result<GilbertElliott, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(format!("bad burst `{s}` (P:R:LOSS_BAD[:LOSS_GOOD])"));
    }
    Ok(GilbertElliott {
        p_good_to_bad: parse_probability(parts[0])?,
        p_bad_to_good: parse_probability(parts[1])?,
        loss_bad: parse_probability(parts[2])?,
        loss_good: parts.get(3).map_or(Ok(0.0), |p| parse_probability(p))?,
    })
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, unit) = split_unit(s);
    let scale = match unit {
        "bit" | "" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(format!("bad rate `{s}` (use bit, kbit, mbit or gbit)")),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad rate `{s}`"))?;
    let bps = v * scale;
    if !(0.0..=1e11).contains(&bps) {
        return Err(format!("rate `{s}` out of range"));
    }
    Ok(bps as u64)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, unit) = split_unit(s);
    let scale = match unit {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        _ => return Err(format!("bad size `{s}` (use b, kb or mb)")),
    };
    let v: u64 = num.parse().map_err(|_| format!("bad size `{s}`"))?;
    match v.checked_mul(scale) {
        Some(b) if (1..=1 << 30).contains(&b) => Ok(b),
        _ => Err(format!("size `{s}` outside 1 byte..1 GiB")),
    }
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], &s[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_spec() {
        let c = parse_direction(
            "delay=25ms,jitter=5ms,loss=2%,burst=1%:25%:1,rate=100mbit,limit=64kb,fifo",
        )
        .unwrap();
        assert_eq!(c.delay, Duration::from_millis(25));
        assert_eq!(c.jitter, Duration::from_millis(5));
        assert!((c.loss - 0.02).abs() < 1e-12);
        assert_eq!(c.rate_bps, 100_000_000);
        assert_eq!(c.limit_bytes, 65536);
        assert!(!c.reorder);
        assert_eq!(c.burst.unwrap().loss_bad, 1.0);
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        for bad in [
            "delay=5",
            "loss=120%",
            "rate=fast",
            "burst=1%",
            "colour=red",
            "delay=11s",
        ] {
            let e = parse_direction(bad).unwrap_err();
            let value = bad.split_once('=').map_or(bad, |(_, v)| v);
            assert!(e.contains(value), "{bad}: {e}");
        }
    }
}
