//! The server's legacy (seed JSON) session loop without its sockets: bytes
//! arrive in arbitrary chunks, objects are taken off the buffer as the
//! server does, ports are reserved under the session cap and the source's
//! share and released as their 3 s listen ends. Never panics, the buffer
//! stays bounded, the counts never exceed the caps and return to zero.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use udpreach_engine::admission::{Admission, MessageDeadline, Shares};
use udpreach_wire::legacy::{decode_request, encode_answer, MAX_LEGACY_BUFFER};

const PER_SESSION: usize = 16;

fuzz_target!(|data: &[u8]| {
    let shares = Shares {
        handshakes_per_source: 4,
        sessions_per_source: 2,
        ports_per_source: 8,
    };
    let mut admission: Admission<()> = Admission::new(8, 4, 12, shares);
    let peer: IpAddr = "198.18.0.66".parse().unwrap();
    let t0 = Instant::now();
    let mut clock = MessageDeadline::new(Duration::from_secs(30), Duration::from_secs(10), t0);
    let mut buf: Vec<u8> = Vec::new();
    let mut live = 0usize;
    let mut now = t0;
    // First byte of each chunk: its length and how much virtual time passes.
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let n = usize::from(ctl & 0x3f).min(tail.len());
        now += Duration::from_millis(u64::from(ctl >> 6) * 700);
        if now > clock.deadline() {
            break; // the server closes the session here
        }
        buf.extend_from_slice(&tail[..n]);
        rest = &tail[n..];
        clock.on_received(buf.len(), now);
        loop {
            match decode_request(&buf) {
                Ok(Some((req, used))) => {
                    assert!(used > 0 && used <= buf.len());
                    buf.drain(..used);
                    clock.on_consumed(buf.len(), now);
                    if let Ok(req) = req {
                        let ok = live < PER_SESSION && admission.reserve_port(peer);
                        if ok {
                            live += 1;
                        }
                        let _ = encode_answer(&req, ok);
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the server ends the session
            }
        }
        assert!(buf.len() <= MAX_LEGACY_BUFFER + 64);
        assert!(live <= shares.ports_per_source && admission.open_ports() <= 12);
        // Some listens end.
        if ctl & 0x80 != 0 && live > 0 {
            admission.release_ports(peer, 1);
            live -= 1;
        }
    }
    admission.release_ports(peer, live);
    assert_eq!((admission.open_ports(), admission.sources()), (0, 0));
});
