//! The control handshake and its admission: arbitrary frames from many
//! sources, interleaved with new connections, evictions and closes. The
//! handshake state machine never panics and admits only after a proof made
//! with the key; the admission table never exceeds its caps or a source's
//! share, and every count returns to zero when everything has ended.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use udpreach_engine::admission::{Admission, Shares};
use udpreach_engine::handshake::{Handshake, Step, WelcomeTerms};
use udpreach_wire::auth::{SharedKey, NONCE_LEN};
use udpreach_wire::control::decode_frame;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let key = (mode & 1 == 1).then(|| SharedKey::new(b"fuzz shared secret 0123".to_vec()).unwrap());
    let shares = Shares {
        handshakes_per_source: 3,
        sessions_per_source: 2,
        ports_per_source: 5,
    };
    let mut admission: Admission<u64> = Admission::new(6, 4, 10, shares);
    let terms = WelcomeTerms {
        max_open_ports: 10,
        max_probe_rate: 100,
        software: "fuzz".into(),
    };
    // Live connections: handshake id -> (source, state machine).
    let mut pending: HashMap<u64, (IpAddr, Handshake)> = HashMap::new();
    let mut sessions: Vec<IpAddr> = Vec::new();
    let mut next = 0u64;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, op & 7));
        match op >> 6 {
            // A new connection.
            0 => {
                let slot = admission.begin_handshake(ip, next);
                if let Some(gone) = slot.evicted {
                    assert!(
                        pending.remove(&gone).is_some(),
                        "evicts a pending handshake"
                    );
                }
                assert_eq!(slot.id, next);
                pending.insert(
                    next,
                    (
                        ip,
                        Handshake::new(next, key.clone(), [9; NONCE_LEN], terms.clone()),
                    ),
                );
                next += 1;
            }
            // A frame for the oldest pending connection of that source.
            1 | 2 => {
                let Some(id) = pending
                    .iter()
                    .filter(|(_, (src, _))| *src == ip)
                    .map(|(id, _)| *id)
                    .min()
                else {
                    continue;
                };
                let Ok(Some((msg, used))) = decode_frame(rest) else {
                    continue;
                };
                rest = &rest[used..];
                let (src, hs) = pending.get_mut(&id).unwrap();
                let src = *src;
                match hs.on_message(msg) {
                    Step::Reply(_) => {}
                    Step::Admit { session_key, .. } => {
                        // With a key, admission needs a proof the fuzzer cannot forge.
                        assert!(key.is_none() && session_key.is_none());
                        pending.remove(&id);
                        admission.end_handshake(id);
                        if admission.open_session(src).is_ok() {
                            sessions.push(src);
                        }
                    }
                    Step::Refuse { .. } => {
                        pending.remove(&id);
                        admission.end_handshake(id);
                    }
                }
            }
            // A session ends.
            _ => {
                if let Some(src) = sessions.pop() {
                    admission.close_session(src);
                }
            }
        }
        assert!(admission.pending_handshakes() <= 6);
        assert_eq!(admission.pending_handshakes(), pending.len());
        assert!(admission.sessions() <= 4);
        for s in 0..8 {
            let ip = IpAddr::V4(Ipv4Addr::new(198, 18, 0, s));
            assert!(pending.values().filter(|(src, _)| *src == ip).count() <= 3);
            assert!(sessions.iter().filter(|src| **src == ip).count() <= 2);
        }
    }
    for id in pending.keys() {
        admission.end_handshake(*id);
    }
    for src in sessions {
        admission.close_session(src);
    }
    assert_eq!(
        (
            admission.pending_handshakes(),
            admission.sessions(),
            admission.sources()
        ),
        (0, 0, 0)
    );
});
