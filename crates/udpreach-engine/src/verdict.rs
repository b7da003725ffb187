//! What a port test concludes about one port.

use serde::Serialize;
use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
/// What a sweep against a udpreach server concludes about one port.
pub enum Verdict {
    /// A probe went there and its reply came back.
    Reachable,
    /// The server never saw a probe: something drops traffic towards it.
    InboundBlocked,
    /// The server saw probes, but no reply reached us: the return path drops it.
    ReturnBlocked,
    /// An ICMP error came back instead (the result's `icmp` names who sent
    /// it and why) and the server never saw a probe.
    Rejected,
    /// Another process on the server holds the port.
    InUseOnServer,
    /// The server's policy does not let us test this port.
    DeniedByServer,
    /// The server could not bind the port for another reason.
    ServerError,
    /// The sweep ended (Ctrl+C, lost control channel) before this port was decided.
    NotTested,
}

impl Verdict {
    /// Every verdict, in report order.
    pub const ALL: [Verdict; 8] = [
        Verdict::Reachable,
        Verdict::InboundBlocked,
        Verdict::ReturnBlocked,
        Verdict::Rejected,
        Verdict::InUseOnServer,
        Verdict::DeniedByServer,
        Verdict::ServerError,
        Verdict::NotTested,
    ];

    /// The verdict as the report prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Reachable => "reachable",
            Verdict::InboundBlocked => "inbound_blocked",
            Verdict::ReturnBlocked => "return_blocked",
            Verdict::Rejected => "rejected",
            Verdict::InUseOnServer => "in_use_on_server",
            Verdict::DeniedByServer => "denied_by_server",
            Verdict::ServerError => "server_error",
            Verdict::NotTested => "not_tested",
        }
    }

    /// One line saying what the verdict means.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Reachable => "reachable",
            Verdict::InboundBlocked => "inbound blocked (server never got a probe)",
            Verdict::ReturnBlocked => "return blocked (server got probes, replies never arrived)",
            Verdict::Rejected => "rejected with an ICMP error (server never got a probe)",
            Verdict::InUseOnServer => "in use on server",
            Verdict::DeniedByServer => "denied by server policy",
            Verdict::ServerError => "server could not open",
            Verdict::NotTested => "not tested",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
