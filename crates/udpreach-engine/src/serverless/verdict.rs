//! What a serverless check concludes about one port.

use serde::Serialize;
use std::fmt;

/// What a serverless check concludes about one port.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServerlessVerdict {
    /// Something answered from the port.
    Open,
    /// The target said nothing listens there (ICMP port unreachable).
    Closed,
    /// An ICMP error other than the target's port unreachable.
    Filtered,
    /// No answer at all: a service that ignores our probe, or a filter that drops.
    OpenFiltered,
    /// The check ended before this port was decided.
    NotTested,
}

impl ServerlessVerdict {
    /// Every verdict, in report order.
    pub const ALL: [ServerlessVerdict; 5] = [
        ServerlessVerdict::Open,
        ServerlessVerdict::Closed,
        ServerlessVerdict::Filtered,
        ServerlessVerdict::OpenFiltered,
        ServerlessVerdict::NotTested,
    ];

    /// The verdict as the report prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerlessVerdict::Open => "open",
            ServerlessVerdict::Closed => "closed",
            ServerlessVerdict::Filtered => "filtered",
            ServerlessVerdict::OpenFiltered => "open_filtered",
            ServerlessVerdict::NotTested => "not_tested",
        }
    }

    /// nmap's spelling, for people who compare.
    pub fn nmap_state(self) -> &'static str {
        match self {
            ServerlessVerdict::Open => "open",
            ServerlessVerdict::Closed => "closed",
            ServerlessVerdict::Filtered => "filtered",
            ServerlessVerdict::OpenFiltered => "open|filtered",
            ServerlessVerdict::NotTested => "not tested",
        }
    }
}

impl fmt::Display for ServerlessVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
