//! Authentication tags: verifying arbitrary bytes never panics and never
//! accepts a datagram the key did not seal; sealing then verifying works;
//! nonce/proof hex parsing never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use udpreach_wire::auth::{self, SharedKey, MIN_SEALED_LEN};

fuzz_target!(|data: &[u8]| {
    let key = SharedKey::new(b"fuzz key".to_vec()).unwrap();
    let dk = key.ping_key(7);
    let verified = dk.verify(data).is_ok();
    let _ = auth::is_sealed(data);
    let _ = auth::sent_ns(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(p) = auth::from_hex::<32>(text) {
            assert!(
                !key.verify_client_proof(&[0; 32], &[1; 32], &p)
                    || p == key.client_proof(&[0; 32], &[1; 32])
            );
        }
    }
    let mut sealed = data.to_vec();
    if dk.seal(&mut sealed).is_ok() {
        assert!(sealed.len() >= MIN_SEALED_LEN);
        assert!(dk.verify(&sealed).is_ok());
        // If the input already verified, sealing it again changes nothing.
        if verified {
            assert_eq!(sealed, data);
        }
        let other = SharedKey::new(b"other key".to_vec()).unwrap().ping_key(7);
        assert!(other.verify(&sealed).is_err());
    }
});
