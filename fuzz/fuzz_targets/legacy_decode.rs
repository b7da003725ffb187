//! The seed's delimiter-less JSON stream: decoding never panics, always makes
//! progress, and an answer is built for every request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::legacy::{decode_request, encode_answer};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((req, used))) = decode_request(rest) {
        assert!(used > 0 && used <= rest.len(), "progress");
        if let Ok(req) = req {
            assert!(req.port >= 1);
            let _ = encode_answer(&req, true);
        }
        rest = &rest[used..];
    }
});
