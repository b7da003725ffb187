//! DSCP / ECN end to end (`ping --dscp/--ecn`): what the probes were sent
//! with, what the server says they arrived with (upstream), and what its
//! replies, marked as asked, arrived with here (downstream). A tally of
//! first replies, so the summary names every rewrite and how often.

use serde::Serialize;
use std::collections::BTreeMap;

/// One TOS byte as its two fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Marking {
    /// DSCP (the TOS byte's upper six bits).
    pub dscp: u8,
    /// ECN codepoint (the lower two bits): 0 not-ECT, 1 ECT(1), 2 ECT(0), 3 CE.
    pub ecn: u8,
}

impl Marking {
    /// The fields of TOS byte / traffic class `tos`.
    pub fn of(tos: u8) -> Self {
        Marking {
            dscp: tos >> 2,
            ecn: tos & 3,
        }
    }
}

/// One reply's markings each way (`ping --dscp/--ecn`, per reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ReplyMarks {
    /// What the probe arrived at the server with (null: not reported).
    pub at_server: Option<Marking>,
    /// What the reply arrived here with (null: the socket did not say).
    pub here: Option<Marking>,
}

impl ReplyMarks {
    /// From the two TOS bytes, as [`MarkTally::record`] takes them.
    pub fn of(at_server: Option<u8>, here: Option<u8>) -> Self {
        ReplyMarks {
            at_server: at_server.map(Marking::of),
            here: here.map(Marking::of),
        }
    }
}

/// What arrived in one direction, over the replies that told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DirectionMarks {
    /// The marking most replies saw (the first seen on a tie).
    pub arrived: Marking,
    /// Replies that told this direction's marking.
    pub replies: u64,
    /// Of those, replies whose DSCP differed from what was sent.
    pub dscp_changed: u64,
    /// Of those, replies whose ECN differed from what was sent.
    pub ecn_changed: u64,
    /// Every marking seen, with its count, most frequent first.
    pub seen: Vec<MarkingCount>,
}

/// How many replies saw one marking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MarkingCount {
    /// DSCP seen.
    pub dscp: u8,
    /// ECN seen.
    pub ecn: u8,
    /// Replies that saw it.
    pub replies: u64,
}

/// DSCP / ECN each way: the `marks` object of ping's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MarksSummary {
    /// What the probes were sent with, and the replies asked to carry.
    pub sent: Marking,
    /// Client to server, as the server saw it (null: no reply said, e.g.
    /// an older server or a plain echo server).
    pub upstream: Option<DirectionMarks>,
    /// Server to client, as our socket saw the replies (null: none read).
    pub downstream: Option<DirectionMarks>,
    /// Replies whose server did not report the upstream marking.
    pub replies_without_report: u64,
}

#[derive(Clone, Debug, Default)]
struct Direction {
    /// Count per TOS byte, and the order each was first seen in.
    counts: BTreeMap<u8, (u64, u64)>,
}

impl Direction {
    fn record(&mut self, tos: u8) {
        let next = self.counts.len() as u64;
        self.counts.entry(tos).or_insert((0, next)).0 += 1;
    }

    fn summary(&self, sent: Marking) -> Option<DirectionMarks> {
        let mut seen: Vec<(u8, u64, u64)> =
            self.counts.iter().map(|(&t, &(n, o))| (t, n, o)).collect();
        seen.sort_by_key(|&(_, n, order)| (std::cmp::Reverse(n), order));
        let &(top, _, _) = seen.first()?;
        let changed = |f: fn(Marking) -> u8| {
            seen.iter()
                .filter(|&&(t, _, _)| f(Marking::of(t)) != f(sent))
                .map(|&(_, n, _)| n)
                .sum()
        };
        Some(DirectionMarks {
            arrived: Marking::of(top),
            replies: seen.iter().map(|&(_, n, _)| n).sum(),
            dscp_changed: changed(|m| m.dscp),
            ecn_changed: changed(|m| m.ecn),
            seen: seen
                .iter()
                .map(|&(t, n, _)| MarkingCount {
                    dscp: t >> 2,
                    ecn: t & 3,
                    replies: n,
                })
                .collect(),
        })
    }
}

/// The tally of one run: fed each first reply (not duplicates or late ones).
#[derive(Clone, Debug)]
pub struct MarkTally {
    sent: u8,
    up: Direction,
    down: Direction,
    unreported: u64,
}

impl MarkTally {
    /// A tally for probes sent with TOS byte `sent`.
    pub fn new(sent: u8) -> Self {
        MarkTally {
            sent,
            up: Direction::default(),
            down: Direction::default(),
            unreported: 0,
        }
    }

    /// One reply: the TOS the server said its probe arrived with (`None`:
    /// not reported), and the TOS the reply arrived with here (`None`: the
    /// socket did not say).
    pub fn record(&mut self, at_server: Option<u8>, here: Option<u8>) {
        match at_server {
            Some(t) => self.up.record(t),
            None => self.unreported += 1,
        }
        if let Some(t) = here {
            self.down.record(t);
        }
    }

    /// Both directions so far.
    pub fn summary(&self) -> MarksSummary {
        let sent = Marking::of(self.sent);
        MarksSummary {
            sent,
            upstream: self.up.summary(sent),
            downstream: self.down.summary(sent),
            replies_without_report: self.unreported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_direction_names_its_rewrite() {
        let mut t = MarkTally::new(46 << 2 | 2);
        for _ in 0..9 {
            t.record(Some(46 << 2 | 2), Some(2));
        }
        t.record(Some(46 << 2 | 3), Some(46 << 2 | 2));
        let s = t.summary();
        assert_eq!(s.sent, Marking { dscp: 46, ecn: 2 });
        let up = s.upstream.unwrap();
        assert_eq!(up.arrived, Marking { dscp: 46, ecn: 2 });
        assert_eq!((up.replies, up.dscp_changed, up.ecn_changed), (10, 0, 1));
        let down = s.downstream.unwrap();
        assert_eq!(down.arrived, Marking { dscp: 0, ecn: 2 });
        assert_eq!(
            (down.replies, down.dscp_changed, down.ecn_changed),
            (10, 9, 0)
        );
        assert_eq!(down.seen.len(), 2);
        assert_eq!(down.seen[0].replies, 9);
        assert_eq!(s.replies_without_report, 0);
    }

    #[test]
    fn an_old_server_leaves_upstream_unknown() {
        let mut t = MarkTally::new(46 << 2);
        t.record(None, Some(46 << 2));
        let s = t.summary();
        assert_eq!(s.upstream, None);
        assert_eq!(s.replies_without_report, 1);
        assert_eq!(s.downstream.unwrap().dscp_changed, 0);
        assert_eq!(MarkTally::new(0).summary().downstream, None);
    }
}
