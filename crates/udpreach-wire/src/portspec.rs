//! Port lists as users type them: `5000,6000,7000-8000`, `7000:8000`.
//!
//! Unlike the seed script, an invalid token is an error naming the token, never
//! silently skipped.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

/// A set of UDP ports, stored as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PortSpec {
    ranges: Vec<RangeInclusive<u16>>,
}

/// Why a port list is not valid; each names the text as typed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// No ports at all.
    #[error("empty port list")]
    Empty,
    /// Not a number from 1 to 65535.
    #[error("invalid port '{0}': expected a number from 1 to 65535")]
    InvalidPort(String),
    /// A range whose start is above its end.
    #[error("invalid port range '{0}': start is greater than end")]
    ReversedRange(String),
    /// Neither `PORT` nor `START-END`.
    #[error("invalid port-list token '{0}': expected PORT or START-END")]
    InvalidToken(String),
}

/// Parses one port number; the error names the text as typed.
pub fn parse_port(text: &str) -> Result<u16, PortSpecError> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 5 {
        return Err(PortSpecError::InvalidPort(t.to_string()));
    }
    match t.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(PortSpecError::InvalidPort(t.to_string())),
    }
}

impl PortSpec {
    /// Builds a spec from any set of ports (duplicates and order do not matter).
    pub fn from_ports(ports: impl IntoIterator<Item = u16>) -> Self {
        let mut v: Vec<u16> = ports.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Self::from_ranges(v.into_iter().map(|p| p..=p).collect())
    }

    fn from_ranges(mut ranges: Vec<RangeInclusive<u16>>) -> Self {
        ranges.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Some(last) = merged.last_mut() {
                if u32::from(*r.start()) <= u32::from(*last.end()) + 1 {
                    if r.end() > last.end() {
                        *last = *last.start()..=*r.end();
                    }
                    continue;
                }
            }
            merged.push(r);
        }
        PortSpec { ranges: merged }
    }

    /// The ranges: sorted, disjoint and non-adjacent.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }

    /// Number of ports in the set.
    pub fn len(&self) -> usize {
        self.ranges
            .iter()
            .map(|r| usize::from(*r.end()) - usize::from(*r.start()) + 1)
            .sum()
    }

    /// True when the set holds no port.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// True when `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        // Few ranges in practice; binary search keeps policy checks cheap for long lists.
        self.ranges
            .binary_search_by(|r| {
                if *r.end() < port {
                    std::cmp::Ordering::Less
                } else if *r.start() > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// The ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.ranges.iter().flat_map(|r| r.clone())
    }
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ranges = Vec::new();
        for raw in s.split(',') {
            let token = raw.trim();
            if token.is_empty() {
                if s.trim().is_empty() {
                    return Err(PortSpecError::Empty);
                }
                continue; // tolerate "5000, ,6000" and trailing commas
            }
            let sep = token.find(['-', ':']);
            match sep {
                None => {
                    let p = parse_port(token)?;
                    ranges.push(p..=p);
                }
                Some(i) => {
                    let (a, b) = (&token[..i], &token[i + 1..]);
                    if a.trim().is_empty() || b.trim().is_empty() || b.contains(['-', ':']) {
                        return Err(PortSpecError::InvalidToken(token.to_string()));
                    }
                    let (a, b) = (parse_port(a)?, parse_port(b)?);
                    if a > b {
                        return Err(PortSpecError::ReversedRange(token.to_string()));
                    }
                    ranges.push(a..=b);
                }
            }
        }
        if ranges.is_empty() {
            return Err(PortSpecError::Empty);
        }
        Ok(Self::from_ranges(ranges))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_seed_examples() {
        let s: PortSpec = "5000,6000,7000-8000".parse().unwrap();
        assert_eq!(s.len(), 1003);
        assert_eq!(s.to_string(), "5000,6000,7000-8000");
        let s: PortSpec = " 7000:8000 , 7500-9000,1".parse().unwrap();
        assert_eq!(s.to_string(), "1,7000-9000");
        let s: PortSpec = "1-65535".parse().unwrap();
        assert_eq!(s.len(), 65535);
        assert!(s.contains(1) && s.contains(65535));
    }

    #[test]
    fn merges_adjacent() {
        let s: PortSpec = "5,6,7,9,8".parse().unwrap();
        assert_eq!(s.to_string(), "5-9");
    }

    #[test]
    fn errors_name_the_token() {
        let e = "5000,abc".parse::<PortSpec>().unwrap_err();
        assert_eq!(e, PortSpecError::InvalidPort("abc".into()));
        assert!(e.to_string().contains("'abc'"));
        assert_eq!(
            "0".parse::<PortSpec>().unwrap_err(),
            PortSpecError::InvalidPort("0".into())
        );
        assert_eq!(
            "65536".parse::<PortSpec>().unwrap_err(),
            PortSpecError::InvalidPort("65536".into())
        );
        assert_eq!(
            "9-3".parse::<PortSpec>().unwrap_err(),
            PortSpecError::ReversedRange("9-3".into())
        );
        assert_eq!(
            "1-2-3".parse::<PortSpec>().unwrap_err(),
            PortSpecError::InvalidToken("1-2-3".into())
        );
        assert_eq!("".parse::<PortSpec>().unwrap_err(), PortSpecError::Empty);
        assert_eq!(" , ".parse::<PortSpec>().unwrap_err(), PortSpecError::Empty);
        assert!("-5".parse::<PortSpec>().is_err());
        assert!("+5".parse::<PortSpec>().is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = s.parse::<PortSpec>();
        }

        #[test]
        fn display_round_trips(ports in proptest::collection::vec(1u16..=65535, 1..200)) {
            let spec = PortSpec::from_ports(ports.clone());
            let again: PortSpec = spec.to_string().parse().unwrap();
            prop_assert_eq!(&again, &spec);
            let mut want = ports;
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(spec.iter().collect::<Vec<_>>(), want);
        }
    }
}
