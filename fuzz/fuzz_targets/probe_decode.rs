//! Probe header decoding, and turning a request into its reply in place:
//! never panics, and a reply is exactly as long as its request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::probe::{make_reply_in_place, restamp_tx, ProbeHeader, ServerStamp};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = ProbeHeader::decode(data) else {
        return;
    };
    let mut buf = data.to_vec();
    let stamp = ServerStamp {
        rx_ns: 1,
        tx_ns: 2,
        flow_count: 3,
        seen_from: "[fd00::1]:5".parse().unwrap(),
        seen_ttl: 64,
        withheld: 5,
    };
    let r = make_reply_in_place(&mut buf, &stamp).expect("a decodable request has a reply");
    restamp_tx(&mut buf, 4);
    assert_eq!(buf.len(), data.len(), "no amplification");
    assert_eq!(buf[64..], data[64..], "payload untouched");
    let back = ProbeHeader::decode(&buf).expect("a reply decodes");
    assert_eq!(back.kind, h.kind.reply_kind());
    assert_eq!((back.token, back.seq), (r.token, r.seq));
});
