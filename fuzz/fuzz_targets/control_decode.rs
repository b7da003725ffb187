//! Control-channel framing: preamble check and frame decoding never panic,
//! never claim more bytes than given, and whatever decodes re-encodes to a
//! frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::control::{
    check_preamble, decode_frame, decode_frame_limited, MAX_HANDSHAKE_FRAME,
};

fuzz_target!(|data: &[u8]| {
    let _ = check_preamble(data);
    let _ = decode_frame_limited(data, MAX_HANDSHAKE_FRAME);
    let mut rest = data;
    while let Ok(Some((msg, used))) = decode_frame(rest) {
        assert!(used >= 4 && used <= rest.len());
        let frame = msg.to_frame();
        let (again, n) = decode_frame(&frame).unwrap().unwrap();
        assert_eq!(n, frame.len());
        assert_eq!(again, msg);
        rest = &rest[used..];
    }
});
