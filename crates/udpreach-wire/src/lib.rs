//! Wire formats for udpreach: the UDP probe header, the TCP control channel,
//! the seed tool's legacy JSON negotiation, and port-spec parsing.
//!
//! Everything here is pure: bytes in, values out, no sockets and no clock, so
//! that every parser can be property-tested and fuzzed.

pub mod auth;
pub mod control;
pub mod legacy;
pub mod portspec;
pub mod probe;

pub use portspec::{PortSpec, PortSpecError};
pub use probe::{ProbeError, ProbeHeader, ProbeKind, ServerStamp};
