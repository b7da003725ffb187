//! Wire formats for udpreach: the UDP probe header, the TCP control channel,
//! the seed tool's legacy JSON negotiation, port-spec parsing, ICMP error
//! classification, path-MTU probe sizes, and service payloads for checks of
//! hosts without udpreach.
//!
//! Everything here is pure: bytes in, values out, no sockets and no clock, so
//! that every parser can be property-tested and fuzzed.

#![warn(missing_docs)]

pub mod auth;
pub mod control;
pub mod icmp;
pub mod legacy;
pub mod mtu;
pub mod nat;
pub mod portspec;
pub mod probe;
pub mod services;
pub mod stamp;
pub mod trace;

pub use portspec::{PortSpec, PortSpecError};
pub use probe::{ProbeError, ProbeHeader, ProbeKind, ServerStamp};
