//! Authenticated mode: shared-key handshake proofs, key derivation, and the
//! truncated HMAC-SHA256 tag that ends every authenticated probe and reply.
//!
//! Pure functions over bytes, so they are unit-tested and fuzzed like the
//! other parsers. The scheme follows irtt and STAMP's authenticated mode:
//!
//! * Control channel: mutual challenge-response. Both sides contribute a
//!   32-byte random nonce (`cn` from the client, `sn` from the server); the
//!   server proves the key with `HMAC(key, "udpreach server" 0 cn sn)`, the
//!   client with `HMAC(key, "udpreach client" 0 cn sn)`. The labels differ, so
//!   neither side can reflect the other's proof back at it, and fresh nonces
//!   from both sides make every proof single-use.
//! * Session key: `HMAC(key, "udpreach session" 0 cn sn)`; the shared key
//!   itself never tags a datagram, and a captured probe is useless in any
//!   other session.
//! * Ping has no control channel: its probes are tagged with
//!   `HMAC(key, "udpreach ping" 0 token)`, the token being the random per-run
//!   value every probe carries. Replays inside a flow are caught by the
//!   server's replay window (engine), replays of old flows by the send time
//!   an authenticated echo request carries (see [`sent_ns`]).
//! * Datagram tag: the first [`TAG_LEN`] bytes of HMAC(derived key, every byte
//!   of the datagram before the tag), stored in the datagram's last
//!   [`TAG_LEN`] bytes, with [`FLAG_AUTH`] set in the header (so the flag is
//!   covered by the tag). 128 bits is the truncation RFC 4868 and irtt use.
//!
//! Tags and proofs are compared in constant time (`hmac`'s `verify_*`, which
//! uses `subtle`), so timing does not reveal how much of a forgery matched.

use crate::probe::{self, FLAG_AUTH, HEADER_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC kept in a datagram.
pub const TAG_LEN: usize = 16;
/// Bytes of each handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a handshake proof (a full HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Smallest authenticated datagram: the probe header and the tag.
pub const MIN_SEALED_LEN: usize = HEADER_LEN + TAG_LEN;

const LABEL_SERVER: &[u8] = b"udpreach server";
const LABEL_CLIENT: &[u8] = b"udpreach client";
const LABEL_SESSION: &[u8] = b"udpreach session";
const LABEL_PING: &[u8] = b"udpreach ping";

/// Why a key could not be made or a datagram could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A shared key must have at least one byte.
    #[error("the key is empty")]
    EmptyKey,
    /// The datagram (its length given) cannot hold a probe header and a tag.
    #[error("datagram of {0} bytes is too short to carry a probe header and a tag")]
    TooShort(usize),
    /// The probe header does not carry `FLAG_AUTH`.
    #[error("datagram is not an authenticated probe (no FLAG_AUTH)")]
    NotSealed,
    /// The tag is not the one the key gives: wrong key or altered bytes.
    #[error("authentication tag does not match")]
    BadTag,
}

fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC accepts keys of any length (long ones are hashed first).
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac
}

fn hmac32(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    hmac_parts(key, parts).finalize().into_bytes().into()
}

/// The secret both ends were given (`--key-file` or `UDPREACH_KEY`).
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedKey(Vec<u8>);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedKey({} bytes, redacted)", self.0.len())
    }
}

/// A per-session or per-ping-run key derived from the shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKey([u8; 32]);

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKey(redacted)")
    }
}

impl SharedKey {
    /// The key exactly as given; an empty key is refused.
    pub fn new(bytes: Vec<u8>) -> Result<Self, AuthError> {
        if bytes.is_empty() {
            return Err(AuthError::EmptyKey);
        }
        Ok(SharedKey(bytes))
    }

    /// Key material as read from a key file: a trailing newline (`\n` or
    /// `\r\n`) is not part of the key, so `echo secret > file` works.
    pub fn from_file_contents(mut bytes: Vec<u8>) -> Result<Self, AuthError> {
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        Self::new(bytes)
    }

    /// Length of the key in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a key made by [`SharedKey::new`].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key bytes as STAMP's authenticated mode uses them: the HMAC key
    /// itself (RFC 8762 §4.4), as other STAMP implementations take it.
    pub fn stamp_hmac_key(&self) -> &[u8] {
        &self.0
    }

    /// What the server sends to prove it holds the key.
    pub fn server_proof(&self, cn: &[u8; NONCE_LEN], sn: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        hmac32(&self.0, &[LABEL_SERVER, &[0], cn, sn])
    }

    /// What the client sends to prove it holds the key.
    pub fn client_proof(&self, cn: &[u8; NONCE_LEN], sn: &[u8; NONCE_LEN]) -> [u8; PROOF_LEN] {
        hmac32(&self.0, &[LABEL_CLIENT, &[0], cn, sn])
    }

    /// Constant-time check of the server's proof (client side).
    pub fn verify_server_proof(
        &self,
        cn: &[u8; NONCE_LEN],
        sn: &[u8; NONCE_LEN],
        proof: &[u8],
    ) -> bool {
        hmac_parts(&self.0, &[LABEL_SERVER, &[0], cn, sn])
            .verify_slice(proof)
            .is_ok()
    }

    /// Constant-time check of the client's proof (server side).
    pub fn verify_client_proof(
        &self,
        cn: &[u8; NONCE_LEN],
        sn: &[u8; NONCE_LEN],
        proof: &[u8],
    ) -> bool {
        hmac_parts(&self.0, &[LABEL_CLIENT, &[0], cn, sn])
            .verify_slice(proof)
            .is_ok()
    }

    /// The key that tags a control session's port probes and replies.
    pub fn session_key(&self, cn: &[u8; NONCE_LEN], sn: &[u8; NONCE_LEN]) -> DerivedKey {
        DerivedKey(hmac32(&self.0, &[LABEL_SESSION, &[0], cn, sn]))
    }

    /// The key that tags one ping run's probes and replies (`token` from the probes).
    pub fn ping_key(&self, token: u64) -> DerivedKey {
        DerivedKey(hmac32(&self.0, &[LABEL_PING, &[0], &token.to_be_bytes()]))
    }
}

impl DerivedKey {
    /// Sets [`FLAG_AUTH`] and writes the tag into the last [`TAG_LEN`] bytes.
    /// Everything else in `buf` must be final: the tag covers it.
    pub fn seal(&self, buf: &mut [u8]) -> Result<(), AuthError> {
        if buf.len() < MIN_SEALED_LEN || !probe::looks_like_probe(buf) {
            return Err(AuthError::TooShort(buf.len()));
        }
        let flags = u16::from_be_bytes([buf[6], buf[7]]) | FLAG_AUTH;
        buf[6..8].copy_from_slice(&flags.to_be_bytes());
        let body = buf.len() - TAG_LEN;
        let tag = hmac32(&self.0, &[&buf[..body]]);
        buf[body..].copy_from_slice(&tag[..TAG_LEN]);
        Ok(())
    }

    /// The tag of `body` with this key, for formats other than the probe
    /// header's (trace datagrams): the first [`TAG_LEN`] bytes of its HMAC.
    pub fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac32(&self.0, &[body]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Checks [`Self::tag`] of `body` against `tag`, in constant time.
    pub fn verify_tag(&self, body: &[u8], tag: &[u8]) -> bool {
        tag.len() == TAG_LEN
            && hmac_parts(&self.0, &[body])
                .verify_truncated_left(tag)
                .is_ok()
    }

    /// Checks a sealed datagram in constant time. The datagram is untouched.
    pub fn verify(&self, buf: &[u8]) -> Result<(), AuthError> {
        if buf.len() < MIN_SEALED_LEN {
            return Err(AuthError::TooShort(buf.len()));
        }
        if !is_sealed(buf) {
            return Err(AuthError::NotSealed);
        }
        let body = buf.len() - TAG_LEN;
        hmac_parts(&self.0, &[&buf[..body]])
            .verify_truncated_left(&buf[body..])
            .map_err(|_| AuthError::BadTag)
    }
}

/// True when the datagram looks like a probe with [`FLAG_AUTH`] set (tag not checked).
pub fn is_sealed(buf: &[u8]) -> bool {
    probe::looks_like_probe(buf) && u16::from_be_bytes([buf[6], buf[7]]) & FLAG_AUTH != 0
}

/// The client's send time in an authenticated echo request (bytes 24..32,
/// where a reply carries the server's receive time). The server refuses
/// requests far from its own clock, which bounds how long a captured probe
/// stays replayable to less than how long the server remembers its flow.
pub fn sent_ns(buf: &[u8]) -> Option<u64> {
    (buf.len() >= HEADER_LEN).then(|| u64::from_be_bytes(buf[24..32].try_into().expect("8 bytes")))
}

/// Writes the client's send time into a request (before sealing it).
pub fn set_sent_ns(buf: &mut [u8], ns: u64) {
    if buf.len() >= HEADER_LEN {
        buf[24..32].copy_from_slice(&ns.to_be_bytes());
    }
}

/// Lower-case hex, for nonces and proofs in the JSON control messages.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Parses exactly `N` bytes of hex (either case); `None` for anything else.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{ProbeHeader, ProbeKind};
    use proptest::prelude::*;

    fn key(s: &str) -> SharedKey {
        SharedKey::new(s.as_bytes().to_vec()).unwrap()
    }

    fn probe(len: usize) -> Vec<u8> {
        let mut b = vec![0x5Au8; len];
        ProbeHeader::request(ProbeKind::EchoRequest, 7, 9)
            .encode(&mut b)
            .unwrap();
        b
    }

    #[test]
    fn key_file_contents() {
        assert_eq!(
            SharedKey::from_file_contents(b"abc\n".to_vec()).unwrap(),
            key("abc")
        );
        assert_eq!(
            SharedKey::from_file_contents(b"abc\r\n".to_vec()).unwrap(),
            key("abc")
        );
        assert_eq!(
            SharedKey::from_file_contents(b"\n".to_vec()),
            Err(AuthError::EmptyKey)
        );
        assert!(!format!("{:?}", key("hunter2")).contains("hunter2"));
    }

    #[test]
    fn handshake_proofs() {
        let k = key("secret");
        let (cn, sn) = ([1u8; 32], [2u8; 32]);
        let sp = k.server_proof(&cn, &sn);
        let cp = k.client_proof(&cn, &sn);
        assert_ne!(sp, cp, "labels separate the two directions");
        assert!(k.verify_server_proof(&cn, &sn, &sp));
        assert!(k.verify_client_proof(&cn, &sn, &cp));
        assert!(!k.verify_client_proof(&cn, &sn, &sp), "no reflection");
        assert!(!k.verify_server_proof(&sn, &cn, &sp), "nonces are ordered");
        assert!(!key("other").verify_server_proof(&cn, &sn, &sp));
        assert!(!k.verify_server_proof(&cn, &sn, &sp[..31]));
        assert_ne!(k.session_key(&cn, &sn), k.session_key(&cn, &[3; 32]));
        assert_ne!(k.ping_key(1), k.ping_key(2));
    }

    #[test]
    fn seal_and_verify() {
        let k = key("secret").ping_key(7);
        let mut b = probe(100);
        k.seal(&mut b).unwrap();
        assert!(is_sealed(&b));
        k.verify(&b).unwrap();
        assert_eq!(key("other").ping_key(7).verify(&b), Err(AuthError::BadTag));
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 0x01;
            assert!(k.verify(&t).is_err(), "flip at byte {i} must be detected");
        }
        assert_eq!(k.verify(&b[..79]), Err(AuthError::TooShort(79)));
        assert_eq!(k.verify(&probe(100)), Err(AuthError::NotSealed));
        assert_eq!(k.seal(&mut probe(79)), Err(AuthError::TooShort(79)));
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0, 0xAB, 0x10]), "00ab10");
        assert_eq!(from_hex::<3>("00AB10"), Some([0, 0xAB, 0x10]));
        assert_eq!(from_hex::<3>("00ab1"), None);
        assert_eq!(from_hex::<2>("zz00"), None);
    }

    proptest! {
        #[test]
        fn sealed_round_trip(len in MIN_SEALED_LEN..600, k in proptest::collection::vec(any::<u8>(), 1..80),
                             flip in any::<usize>()) {
            let dk = SharedKey::new(k).unwrap().ping_key(7);
            let mut b = probe(len);
            dk.seal(&mut b).unwrap();
            prop_assert!(dk.verify(&b).is_ok());
            let i = flip % len;
            b[i] = b[i].wrapping_add(1);
            prop_assert!(dk.verify(&b).is_err());
        }

        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dk = key("k").ping_key(1);
            let _ = dk.verify(&bytes);
            let _ = is_sealed(&bytes);
            let _ = sent_ns(&bytes);
        }

        #[test]
        fn hex_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(from_hex::<32>(&to_hex(&bytes)), Some(bytes));
        }
    }
}
