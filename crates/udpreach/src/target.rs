//! Turning `HOST[:PORT]` into a socket address.
//!
//! Replies are later compared with the *resolved* address, never with the
//! host name as typed (UDPping's bug that made every hostname time out).

use std::net::{IpAddr, SocketAddr, SocketAddrV6, ToSocketAddrs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    Any,
    V4,
    V6,
}

impl Family {
    pub(crate) fn from_flags(v4: bool, v6: bool) -> Self {
        match (v4, v6) {
            (true, _) => Family::V4,
            (_, true) => Family::V6,
            _ => Family::Any,
        }
    }

    fn accepts(self, a: &SocketAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        }
    }
}

/// Splits `HOST[:PORT]`: `[v6]:port`, `[v6]`, a bare IPv6 literal, `host:port`, `host`.
pub(crate) fn split_host_port(input: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = input.trim();
    let bad_port = |p: &str| format!("invalid port '{p}' in '{input}': expected 1..=65535");
    let port_of = |p: &str| -> Result<u16, String> {
        udpreach_wire::portspec::parse_port(p).map_err(|_| bad_port(p))
    };
    if s.is_empty() {
        return Err("empty host".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid address '{input}': missing ']'"))?;
        let port = match after {
            "" => default_port,
            p => port_of(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("invalid address '{input}'"))?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    match s.matches(':').count() {
        0 => Ok((s.to_string(), default_port)),
        1 => {
            let (h, p) = s.split_once(':').expect("one colon");
            if h.is_empty() {
                return Err(format!("invalid address '{input}': empty host"));
            }
            Ok((h.to_string(), port_of(p)?))
        }
        _ => Ok((s.to_string(), default_port)), // bare IPv6 literal
    }
}

/// Why a target did not resolve. Every kind exits 2 (a usage or local
/// error, see the exit codes in `--help`); the kinds say whether trying
/// again can help ([`Self::is_transient`]: what DNS or the interfaces may
/// change, not a malformed target or a literal of the wrong family).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// `HOST[:PORT]` is malformed (the message names the bad part).
    #[error("{0}")]
    Invalid(String),
    /// An IPv6 zone names no interface.
    #[error("unknown interface '{zone}' in '{input}'")]
    UnknownInterface { zone: String, input: String },
    /// The name lookup failed.
    #[error("cannot resolve host '{host}': {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The name has no address of the wanted family.
    #[error("{}", no_address(host, *family))]
    NoAddress { host: String, family: Family },
    /// An address literal of the other family than -4 / -6 asked for.
    #[error("address '{input}' does not match the requested IP family")]
    FamilyMismatch { input: String },
}

impl ResolveError {
    /// True when the same input may resolve later (a failed lookup, a name
    /// without an address yet, an interface not up yet), false when it
    /// never will (a malformed target, a literal of the wrong family).
    pub(crate) fn is_transient(&self) -> bool {
        !matches!(
            self,
            ResolveError::Invalid(_) | ResolveError::FamilyMismatch { .. }
        )
    }
}

fn no_address(host: &str, family: Family) -> String {
    match family {
        Family::Any => format!("cannot resolve host '{host}': no addresses"),
        Family::V4 => format!("host '{host}' has no IPv4 address"),
        Family::V6 => format!("host '{host}' has no IPv6 address"),
    }
}

/// Resolves a target to one address of the wanted family.
pub(crate) fn resolve(
    input: &str,
    default_port: u16,
    family: Family,
) -> Result<SocketAddr, ResolveError> {
    let (host, port) = split_host_port(input, default_port).map_err(ResolveError::Invalid)?;
    // IPv6 zone ids: `fe80::1%eth0` (name) or `%2` (index).
    if let Some((ip, zone)) = host.split_once('%') {
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| {
            ResolveError::Invalid(format!("invalid IPv6 address '{ip}' in '{input}'"))
        })?;
        let scope = match zone.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                nix::net::if_::if_nametoindex(zone).map_err(|_| ResolveError::UnknownInterface {
                    zone: zone.to_string(),
                    input: input.to_string(),
                })?
            }
        };
        let a = SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope));
        return check_family(a, family, input);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return check_family(SocketAddr::new(ip, port), family, input);
    }
    let addrs: Vec<SocketAddr> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(source) => return Err(ResolveError::Lookup { host, source }),
    };
    addrs
        .iter()
        .find(|a| family.accepts(a))
        .copied()
        .ok_or(ResolveError::NoAddress { host, family })
}

/// [`resolve`] off the async runtime's thread (name lookups block), with
/// udpreach's default port.
pub(crate) async fn resolve_async(input: &str, family: Family) -> Result<SocketAddr, ResolveError> {
    resolve_async_port(input, crate::cli::DEFAULT_PORT, family).await
}

/// [`resolve_async`] with another default port (STAMP's 862).
pub(crate) async fn resolve_async_port(
    input: &str,
    default_port: u16,
    family: Family,
) -> Result<SocketAddr, ResolveError> {
    let owned = input.to_string();
    tokio::task::spawn_blocking(move || resolve(&owned, default_port, family))
        .await
        .unwrap_or_else(|e| {
            Err(ResolveError::Lookup {
                host: input.to_string(),
                source: std::io::Error::other(e),
            })
        })
}

fn check_family(a: SocketAddr, family: Family, input: &str) -> Result<SocketAddr, ResolveError> {
    if family.accepts(&a) {
        Ok(a)
    } else {
        Err(ResolveError::FamilyMismatch {
            input: input.to_string(),
        })
    }
}

/// The wildcard address of the same family, for binding the client socket.
pub(crate) fn unspecified_for(target: &SocketAddr, port: u16) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port),
        SocketAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        assert_eq!(split_host_port("h", 4000).unwrap(), ("h".into(), 4000));
        assert_eq!(split_host_port("h:5", 4000).unwrap(), ("h".into(), 5));
        assert_eq!(split_host_port("[::1]:7", 4000).unwrap(), ("::1".into(), 7));
        assert_eq!(
            split_host_port("[::1]", 4000).unwrap(),
            ("::1".into(), 4000)
        );
        assert_eq!(
            split_host_port("fd00::2", 4000).unwrap(),
            ("fd00::2".into(), 4000)
        );
        assert!(split_host_port("h:0", 4000).unwrap_err().contains("'0'"));
        assert!(split_host_port("h:65536", 4000)
            .unwrap_err()
            .contains("'65536'"));
        assert!(split_host_port("h:abc", 4000)
            .unwrap_err()
            .contains("'abc'"));
    }

    #[test]
    fn resolving() {
        assert_eq!(
            resolve("127.0.0.1:9", 4000, Family::Any).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(resolve("127.0.0.1", 4000, Family::V6).is_err());
        assert_eq!(
            resolve("localhost:9", 4000, Family::V4).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(resolve("fe80::1%1", 4000, Family::Any).is_ok());
        let e = resolve("no-such-host.invalid", 4000, Family::Any).unwrap_err();
        assert!(e.to_string().contains("no-such-host.invalid"), "{e}");
        assert!(e.is_transient(), "a lookup may work later: {e:?}");
        let e = resolve("127.0.0.1", 4000, Family::V6).unwrap_err();
        assert!(matches!(e, ResolveError::FamilyMismatch { .. }), "{e:?}");
        assert!(!e.is_transient());
        assert_eq!(
            e.to_string(),
            "address '127.0.0.1' does not match the requested IP family"
        );
        let e = resolve("h:0", 4000, Family::Any).unwrap_err();
        assert!(matches!(e, ResolveError::Invalid(_)) && !e.is_transient());
        assert!(e.to_string().contains("'0'"), "{e}");
        let e = resolve("fe80::1%no-such-if", 4000, Family::Any).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown interface 'no-such-if' in 'fe80::1%no-such-if'"
        );
        let e = resolve("localhost", 4000, Family::V6).map(|_| ());
        if let Err(e) = e {
            // Where localhost has no IPv6 address: said so, by name.
            assert!(matches!(
                e,
                ResolveError::NoAddress { .. } | ResolveError::Lookup { .. }
            ));
        }
    }
}
