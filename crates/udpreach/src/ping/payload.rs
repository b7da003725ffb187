//! Ping datagrams: what we send, and how a reply is checked against it.
//!
//! 64 bytes and more: a udpreach probe header, then filler. 16..63 bytes
//! (too small for the header): the short-probe magic `UDPs`, the token and
//! the low 32 bits of the sequence number, then filler (a udpreach server
//! knows these for probes, so they draw on its probe budget, not its
//! plain-echo rate). The filler is
//! alphanumeric (as the seed script sent) and derived from token and sequence,
//! so a reply can be verified without keeping a copy of every probe.
//! With a key, the header carries the send time and FLAG_AUTH, and the last
//! 16 bytes are the tag (see `udpreach_wire::auth`); replies must carry a
//! valid tag from the server, or they are not counted.

use udpreach_wire::auth::{self, DerivedKey, TAG_LEN};
use udpreach_wire::probe::{
    ProbeHeader, ProbeKind, ServerStamp, FLAG_MARK_REPLY, HEADER_LEN, SHORT_MAGIC,
    SHORT_REPLY_MAGIC,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// From a udpreach server: stamped; `seen_tos` is the TOS byte the
    /// server says the probe arrived with (servers that report it).
    Stamped {
        seq: u64,
        stamp: ServerStamp,
        seen_tos: Option<u8>,
    },
    /// From a plain echo server: our bytes back unchanged.
    Plain { seq: u64 },
    /// Right length and token, but bytes differ from what was sent.
    Corrupt { seq: u64 },
    /// Ours by token, but with a key and without a valid tag from the server.
    Unauthenticated { seq: u64 },
    /// Not ours.
    Foreign,
}

pub(crate) struct PayloadBuilder {
    pub token: u64,
    pub size: usize,
    /// Authenticated mode: the ping key for `token` (size is then at least 80).
    pub key: Option<DerivedKey>,
    /// The TOS byte the server is asked to send its replies with
    /// (`--dscp`/`--ecn`: header probes only).
    pub mark: Option<u8>,
}

fn filler(token: u64, seq: u64, out: &mut [u8]) {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // xorshift64*: fast and deterministic; this is filler, not cryptography.
    let mut x = (token ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    for b in out.iter_mut() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *b = ALNUM[(x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 58) as usize % ALNUM.len()];
    }
}

impl PayloadBuilder {
    pub(crate) fn has_header(&self) -> bool {
        self.size >= HEADER_LEN
    }

    /// Builds probe `seq`; `sent_ns` (realtime) matters only with a key.
    pub(crate) fn build(&self, seq: u64, sent_ns: u64, out: &mut Vec<u8>) {
        out.clear();
        out.resize(self.size, 0);
        if self.has_header() {
            let mut h = ProbeHeader::request(ProbeKind::EchoRequest, self.token, seq);
            if let Some(tos) = self.mark {
                h.flags |= FLAG_MARK_REPLY | u16::from(tos) << 8;
            }
            h.encode(out).expect("size checked");
            filler(self.token, seq, &mut out[HEADER_LEN..]);
            if let Some(k) = &self.key {
                auth::set_sent_ns(out, sent_ns);
                k.seal(out).expect("size checked against MIN_SEALED_LEN");
            }
        } else {
            let seq = u64::from(seq as u32);
            out[..4].copy_from_slice(&SHORT_MAGIC);
            out[4..12].copy_from_slice(&self.token.to_be_bytes());
            out[12..16].copy_from_slice(&(seq as u32).to_be_bytes());
            filler(self.token, seq, &mut out[16..]);
        }
    }

    /// The seq of one of our probes from the start of it that an ICMP error
    /// quoted; `None` when too little was quoted or it is not ours.
    pub(crate) fn seq_of_quote(&self, quoted: &[u8]) -> Option<u64> {
        udpreach_wire::probe::parse_quoted(quoted)
            .filter(|q| q.short != self.has_header() && q.token == self.token)
            .map(|q| q.seq)
    }

    pub(crate) fn check(&self, data: &[u8]) -> Reply {
        if data.len() != self.size {
            return Reply::Foreign;
        }
        let mut want = Vec::with_capacity(self.size);
        if self.has_header() {
            let Ok(h) = ProbeHeader::decode(data) else {
                return Reply::Foreign;
            };
            if h.token != self.token {
                return Reply::Foreign;
            }
            if let Some(k) = &self.key {
                // Our own request reflected by a plain echo server carries our
                // valid tag too, so the kind must say "reply" as well.
                if k.verify(data).is_err() || h.kind != ProbeKind::EchoReply {
                    return Reply::Unauthenticated { seq: h.seq };
                }
            }
            self.build(h.seq, 0, &mut want);
            let end = self.size - if self.key.is_some() { TAG_LEN } else { 0 };
            if data[HEADER_LEN..end] != want[HEADER_LEN..end] {
                return Reply::Corrupt { seq: h.seq };
            }
            match (h.kind, h.stamp) {
                (ProbeKind::EchoReply, Some(stamp)) => Reply::Stamped {
                    seq: h.seq,
                    stamp,
                    seen_tos: h.seen_tos(),
                },
                (ProbeKind::EchoRequest, _) if data == want.as_slice() => {
                    Reply::Plain { seq: h.seq }
                }
                _ => Reply::Corrupt { seq: h.seq },
            }
        } else {
            // A plain echo server sends the probe back as it is; a udpreach
            // server with the reply magic.
            let magic_ok = data[..4] == SHORT_MAGIC || data[..4] == SHORT_REPLY_MAGIC;
            if !magic_ok || data[4..12] != self.token.to_be_bytes() {
                return Reply::Foreign;
            }
            let seq = u64::from(u32::from_be_bytes(
                data[12..16].try_into().expect("4 bytes"),
            ));
            self.build(seq, 0, &mut want);
            if data[4..] == want[4..] {
                Reply::Plain { seq }
            } else {
                Reply::Corrupt { seq }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a udpreach server writes into its replies, for these tests.
    fn server_stamp() -> ServerStamp {
        ServerStamp {
            rx_ns: 1,
            tx_ns: 2,
            flow_count: 1,
            seen_from: "198.18.0.1:1".parse().unwrap(),
            seen_ttl: 64,
            withheld: 0,
        }
    }

    #[test]
    fn plain_echo_is_recognised() {
        // 17, not 16: a 16-byte probe is all token and sequence, so flipping
        // its last byte makes another valid probe rather than a corrupt one.
        for size in [17, 40, 64, 1000] {
            let b = PayloadBuilder {
                token: 99,
                size,
                key: None,
                mark: None,
            };
            let mut p = Vec::new();
            b.build(7, 0, &mut p);
            assert_eq!(p.len(), size);
            assert_eq!(b.check(&p), Reply::Plain { seq: 7 });
            if size < 64 {
                let mut from_server = p.clone();
                from_server[..4].copy_from_slice(b"UDPt");
                assert_eq!(b.check(&from_server), Reply::Plain { seq: 7 });
            }
            if size > 16 {
                // (At 16 bytes there is no filler: a changed byte is another seq.)
                let mut bad = p.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert_eq!(b.check(&bad), Reply::Corrupt { seq: 7 });
            }
            assert_eq!(b.check(&p[..size - 1]), Reply::Foreign);
            let other = PayloadBuilder {
                token: 98,
                size,
                key: None,
                mark: None,
            };
            assert_eq!(other.check(&p), Reply::Foreign);
        }
    }

    #[test]
    fn seq_from_an_icmp_quote() {
        for size in [16, 64, 1000] {
            let b = PayloadBuilder {
                token: 42,
                size,
                key: None,
                mark: None,
            };
            let mut p = Vec::new();
            b.build(9, 0, &mut p);
            assert_eq!(b.seq_of_quote(&p), Some(9));
            assert_eq!(b.seq_of_quote(&p[..24.min(size)]), Some(9));
            assert_eq!(b.seq_of_quote(&p[..8]), None, "too short");
            if size < 64 {
                assert_eq!(&p[..4], b"UDPs", "short probes are recognisable");
            }
            assert_eq!(b.seq_of_quote(&[]), None);
            let other = PayloadBuilder {
                token: 41,
                size,
                key: None,
                mark: None,
            };
            assert_eq!(other.seq_of_quote(&p), None, "not ours");
        }
    }

    #[test]
    fn stamped_reply() {
        let b = PayloadBuilder {
            token: 5,
            size: 100,
            key: None,
            mark: None,
        };
        let mut p = Vec::new();
        b.build(3, 0, &mut p);
        let stamp = server_stamp();
        udpreach_wire::probe::make_reply_in_place(&mut p, &stamp).unwrap();
        assert_eq!(
            b.check(&p),
            Reply::Stamped {
                seq: 3,
                stamp,
                seen_tos: None
            }
        );
        // Asking for marked replies: a plain echo server's copy still
        // checks, and a reporting server's TOS comes out.
        let marked = PayloadBuilder {
            mark: Some(46 << 2 | 2),
            ..b
        };
        marked.build(4, 0, &mut p);
        assert_eq!(marked.check(&p), Reply::Plain { seq: 4 });
        udpreach_wire::probe::make_reply_in_place(&mut p, &stamp).unwrap();
        udpreach_wire::probe::set_seen_tos(&mut p, 10 << 2);
        assert!(matches!(
            marked.check(&p),
            Reply::Stamped {
                seq: 4,
                seen_tos: Some(40),
                ..
            }
        ));
    }

    #[test]
    fn authenticated_replies_must_be_sealed_by_the_server() {
        let key = udpreach_wire::auth::SharedKey::new(b"k".to_vec()).unwrap();
        let b = PayloadBuilder {
            token: 5,
            size: 100,
            key: Some(key.ping_key(5)),
            mark: None,
        };
        let mut p = Vec::new();
        b.build(3, 1, &mut p);
        assert_eq!(
            b.check(&p),
            Reply::Unauthenticated { seq: 3 },
            "reflected request"
        );
        let stamp = server_stamp();
        udpreach_wire::probe::make_reply_in_place(&mut p, &stamp).unwrap();
        assert_eq!(
            b.check(&p),
            Reply::Unauthenticated { seq: 3 },
            "stamped, not resealed"
        );
        key.ping_key(5).seal(&mut p).unwrap();
        assert_eq!(
            b.check(&p),
            Reply::Stamped {
                seq: 3,
                stamp,
                seen_tos: None
            }
        );
    }
}
