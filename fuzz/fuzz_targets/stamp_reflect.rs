//! STAMP: decoding either packet kind in either mode, and reflecting any
//! request: never panics, and an answer is exactly as long as its request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::stamp::{
    find_cos, reflect, ErrorEstimate, Mode, ReflectorPacket, Reflection, SenderPacket,
};

fuzz_target!(|data: &[u8]| {
    for mode in [Mode::Open, Mode::Authenticated] {
        let _ = SenderPacket::decode(data, mode);
        let _ = ReflectorPacket::decode(data, mode);
        if data.len() >= mode.base_len() {
            let _ = find_cos(&data[mode.base_len()..]);
        }
    }
    let r = Reflection {
        seq: 1,
        receive_unix_ns: 2,
        transmit_unix_ns: 3,
        error_estimate: ErrorEstimate::unsynchronized_ntp(),
        ttl: 64,
        tos: Some(0xb8),
        honours_dscp: false,
    };
    let mut out = Vec::new();
    for key in [None, Some(b"0123456789abcdef".as_slice())] {
        if reflect(data, key, &r, &mut out).is_ok() {
            assert_eq!(out.len(), data.len(), "no amplification");
        }
    }
});
