//! The seed tool's part-two negotiation, kept so its clients keep working.
//!
//! The client writes one JSON object per port with no delimiter between
//! objects: `{"proto":"udpping","server":IP,"port":N,"available":false}`.
//! The server test-binds port N and answers with the same object, with
//! `"available": true` when the bind worked, or unchanged when it did not.

use serde_json::{Map, Value};

/// Longest buffered legacy request we accept before calling the peer hostile.
pub const MAX_LEGACY_BUFFER: usize = 64 * 1024;

/// One legacy request: the port to test-bind, and the object to echo back.
#[derive(Clone, Debug, PartialEq)]
pub struct LegacyRequest {
    /// The port the client wants to know is free.
    pub port: u16,
    /// The object as received, so the answer can echo every field back.
    pub object: Map<String, Value>,
}

/// Why legacy bytes are not a request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
    /// Not JSON; the parser's reason is given.
    #[error("legacy request is not valid JSON: {0}")]
    Malformed(String),
    /// JSON, but without `"proto"` or a port from 1 to 65535.
    #[error("legacy request lacks \"proto\" or a valid \"port\"")]
    MissingFields,
    /// More than [`MAX_LEGACY_BUFFER`] bytes without a complete object.
    #[error("legacy request buffer exceeds {MAX_LEGACY_BUFFER} bytes")]
    TooLarge,
}

/// One decoded object (or why it is not a request) and the bytes it used.
pub type Decoded = (Result<LegacyRequest, LegacyError>, usize);

/// Takes the first complete JSON object off `buf`. `Ok(None)`: incomplete.
/// Returns the parsed request (or a per-object error) and the bytes used, so
/// a bad object is skipped (as the seed server did) instead of ending the stream.
pub fn decode_request(buf: &[u8]) -> Result<Option<Decoded>, LegacyError> {
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    if start == buf.len() {
        if buf.len() > MAX_LEGACY_BUFFER {
            return Err(LegacyError::TooLarge);
        }
        return Ok(None);
    }
    let mut it = serde_json::Deserializer::from_slice(&buf[start..]).into_iter::<Value>();
    match it.next() {
        None => Ok(None),
        Some(Ok(value)) => {
            let used = start + it.byte_offset();
            Ok(Some((request_from_value(value), used)))
        }
        Some(Err(e)) if e.is_eof() => {
            if buf.len() > MAX_LEGACY_BUFFER {
                Err(LegacyError::TooLarge)
            } else {
                Ok(None)
            }
        }
        // Unparseable: the stream has no delimiters to resynchronise on, so the
        // connection cannot continue meaningfully.
        Some(Err(e)) => Err(LegacyError::Malformed(e.to_string())),
    }
}

fn request_from_value(value: Value) -> Result<LegacyRequest, LegacyError> {
    let Value::Object(object) = value else {
        return Err(LegacyError::MissingFields);
    };
    if !object.contains_key("proto") {
        return Err(LegacyError::MissingFields);
    }
    let port = object
        .get("port")
        .and_then(Value::as_u64)
        .filter(|p| (1..=65535).contains(p))
        .ok_or(LegacyError::MissingFields)? as u16;
    Ok(LegacyRequest { port, object })
}

/// The answer: the request object with `available` set as the seed's server did.
pub fn encode_answer(req: &LegacyRequest, available: bool) -> Vec<u8> {
    let mut obj = req.object.clone();
    if available {
        obj.insert("available".into(), Value::Bool(true));
    }
    serde_json::to_vec(&Value::Object(obj)).expect("a JSON object always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_to_back_objects() {
        let s = br#"{"proto":"udpping","server":"198.18.0.2","port":5000,"available":false}{"proto":"udpping","server":"198.18.0.2","port":5001,"available":false}"#;
        let (r, used) = decode_request(s).unwrap().unwrap();
        let r = r.unwrap();
        assert_eq!(r.port, 5000);
        let (r2, used2) = decode_request(&s[used..]).unwrap().unwrap();
        assert_eq!(r2.unwrap().port, 5001);
        assert_eq!(used + used2, s.len());
        let ans: Value = serde_json::from_slice(&encode_answer(&r, true)).unwrap();
        assert_eq!(ans["available"], Value::Bool(true));
        assert_eq!(ans["port"], 5000);
    }

    #[test]
    fn incomplete_and_bad() {
        assert_eq!(decode_request(br#"{"proto":"udp"#).unwrap(), None);
        assert_eq!(decode_request(b"   ").unwrap(), None);
        let (r, _) = decode_request(br#"{"port":70000,"proto":"x"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r, Err(LegacyError::MissingFields));
        assert!(decode_request(b"}}").is_err());
    }

    proptest::proptest! {
        /// A request object, answered, decodes back to the same port and fields.
        #[test]
        fn answer_round_trips(port in 1u16..=65535, server in "[0-9.]{1,15}", extra in proptest::option::of(".{0,20}")) {
            let mut obj = serde_json::json!({"proto": "udpping", "server": server, "port": port, "available": false});
            if let Some(e) = extra {
                obj["extra"] = Value::String(e);
            }
            let bytes = serde_json::to_vec(&obj).unwrap();
            let (req, used) = decode_request(&bytes).unwrap().unwrap();
            let req = req.unwrap();
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(req.port, port);
            let answer = encode_answer(&req, true);
            let (back, _) = decode_request(&answer).unwrap().unwrap();
            let back = back.unwrap();
            proptest::prop_assert_eq!(back.port, port);
            proptest::prop_assert_eq!(&back.object["available"], &Value::Bool(true));
            proptest::prop_assert_eq!(&back.object["server"], &obj["server"]);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_request(&bytes);
        }
    }
}
