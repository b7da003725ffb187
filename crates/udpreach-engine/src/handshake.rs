//! The server side of a control session's handshake, without I/O: what to
//! answer to `Hello` and `Auth`, and when the session is admitted.
//!
//! Without a key: `Hello` -> `Welcome`, admitted. With a key (mutual
//! challenge-response, HMAC-SHA256): `Hello{nonce}` -> `Welcome{nonce, proof}`,
//! then `Auth{proof}` -> `AuthOk`, admitted with the derived session key.
//! The driver owns the socket, the session slots and the timeouts.

use udpreach_wire::auth::{self, DerivedKey, SharedKey, NONCE_LEN, PROOF_LEN};
use udpreach_wire::control::{ControlMsg, ErrorCode, CAPABILITIES, PROTOCOL_VERSION};

/// What the server announces in `Welcome`.
#[derive(Clone, Debug)]
pub struct WelcomeTerms {
    /// Ports a session may hold open at once.
    pub max_open_ports: u32,
    /// Probes per second the server answers per session.
    pub max_probe_rate: u32,
    /// Server software name and version.
    pub software: String,
}

/// The next thing the driver does.
#[derive(Debug)]
pub enum Step {
    /// Send this and wait for the client's next message.
    Reply(ControlMsg),
    /// Take a session slot, then send `reply`; the session is established.
    Admit {
        /// The `Welcome` to send.
        reply: ControlMsg,
        /// The key authenticating the session's probes, when the server has one.
        session_key: Option<DerivedKey>,
    },
    /// Send `reply` (when there is one) and close: the session is refused.
    Refuse {
        /// What to tell the client, when it may be told anything.
        reply: Option<ControlMsg>,
        /// Why, for the server's log.
        reason: String,
    },
}

enum State {
    AwaitHello,
    AwaitAuth {
        cn: [u8; NONCE_LEN],
        sn: [u8; NONCE_LEN],
    },
    Done,
}

/// The server side of the control handshake (hello, challenge, proof, welcome) for one connection.
pub struct Handshake {
    token: u64,
    key: Option<SharedKey>,
    server_nonce: [u8; NONCE_LEN],
    terms: WelcomeTerms,
    state: State,
}

fn refuse(code: ErrorCode, message: &str, reason: impl Into<String>) -> Step {
    Step::Refuse {
        reply: Some(ControlMsg::Error {
            code,
            message: message.to_string(),
            fatal: true,
        }),
        reason: reason.into(),
    }
}

impl Handshake {
    /// `token` is the session's probe token; `server_nonce` must be fresh
    /// randomness (the caller's RNG keeps this module deterministic in tests).
    pub fn new(
        token: u64,
        key: Option<SharedKey>,
        server_nonce: [u8; NONCE_LEN],
        terms: WelcomeTerms,
    ) -> Self {
        Handshake {
            token,
            key,
            server_nonce,
            terms,
            state: State::AwaitHello,
        }
    }

    fn welcome(&self, version: u32, nonce: Option<String>, proof: Option<String>) -> ControlMsg {
        ControlMsg::Welcome {
            version: version.min(PROTOCOL_VERSION),
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            token: self.token,
            max_open_ports: self.terms.max_open_ports,
            software: self.terms.software.clone(),
            max_probe_rate: self.terms.max_probe_rate,
            nonce,
            proof,
        }
    }

    /// Feeds the client's next message.
    pub fn on_message(&mut self, msg: ControlMsg) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, msg) {
            (State::AwaitHello, ControlMsg::Hello { version, .. }) if version < 1 => refuse(
                ErrorCode::BadVersion,
                "protocol version 1 or later required",
                format!("bad version {version}"),
            ),
            (State::AwaitHello, ControlMsg::Hello { version, nonce, .. }) => {
                let Some(key) = &self.key else {
                    return Step::Admit {
                        reply: self.welcome(version, None, None),
                        session_key: None,
                    };
                };
                let Some(cn) = nonce.as_deref().and_then(auth::from_hex::<NONCE_LEN>) else {
                    return refuse(
                        ErrorCode::AuthFailed,
                        "authentication failed: this server requires a key (--key-file or UDPREACH_KEY)",
                        "authentication failed: the client offered no key",
                    );
                };
                let sn = self.server_nonce;
                let proof = auth::to_hex(&key.server_proof(&cn, &sn));
                let reply = self.welcome(version, Some(auth::to_hex(&sn)), Some(proof));
                self.state = State::AwaitAuth { cn, sn };
                Step::Reply(reply)
            }
            (State::AwaitHello, _) => refuse(ErrorCode::BadRequest, "expected hello", "no hello"),
            (State::AwaitAuth { cn, sn }, ControlMsg::Auth { proof }) => {
                let key = self.key.as_ref().expect("AwaitAuth only with a key");
                let good = auth::from_hex::<PROOF_LEN>(&proof)
                    .is_some_and(|p| key.verify_client_proof(&cn, &sn, &p));
                if good {
                    Step::Admit {
                        reply: ControlMsg::AuthOk,
                        session_key: Some(key.session_key(&cn, &sn)),
                    }
                } else {
                    refuse(
                        ErrorCode::AuthFailed,
                        "authentication failed: the client's key does not match the server's",
                        "authentication failed: wrong key",
                    )
                }
            }
            // The client found our proof wrong (a different key) and says so.
            (State::AwaitAuth { .. }, ControlMsg::Error { message, .. }) => Step::Refuse {
                reply: None,
                reason: format!("authentication failed: the client refused ours ({message})"),
            },
            (State::AwaitAuth { .. }, _) => refuse(
                ErrorCode::AuthFailed,
                "authentication failed: expected auth",
                "authentication failed: no auth message",
            ),
            (State::Done, _) => Step::Refuse {
                reply: None,
                reason: "message after the handshake ended".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> WelcomeTerms {
        WelcomeTerms {
            max_open_ports: 100,
            max_probe_rate: 1000,
            software: "test".into(),
        }
    }

    fn hello(nonce: Option<[u8; NONCE_LEN]>, version: u32) -> ControlMsg {
        ControlMsg::Hello {
            version,
            capabilities: vec![],
            software: String::new(),
            nonce: nonce.map(|n| auth::to_hex(&n)),
        }
    }

    fn key(b: &[u8]) -> SharedKey {
        SharedKey::new(b.to_vec()).unwrap()
    }

    #[test]
    fn without_a_key_hello_admits() {
        let mut h = Handshake::new(7, None, [1; NONCE_LEN], terms());
        match h.on_message(hello(None, 3)) {
            Step::Admit {
                reply:
                    ControlMsg::Welcome {
                        token,
                        version,
                        max_open_ports,
                        ..
                    },
                session_key: None,
            } => assert_eq!((token, version, max_open_ports), (7, PROTOCOL_VERSION, 100)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_version_and_wrong_first_message_are_refused() {
        let mut h = Handshake::new(7, None, [1; NONCE_LEN], terms());
        assert!(matches!(
            h.on_message(hello(None, 0)),
            Step::Refuse { reply: Some(_), .. }
        ));
        let mut h = Handshake::new(7, None, [1; NONCE_LEN], terms());
        assert!(matches!(
            h.on_message(ControlMsg::Bye),
            Step::Refuse { reply: Some(_), .. }
        ));
        assert!(
            matches!(
                h.on_message(hello(None, 1)),
                Step::Refuse { reply: None, .. }
            ),
            "nothing after a refusal"
        );
    }

    /// Plays the client side with `client_key` against a server holding `server_key`.
    fn run(server_key: &[u8], client_key: Option<&[u8]>) -> Step {
        let cn = [3u8; NONCE_LEN];
        let mut h = Handshake::new(7, Some(key(server_key)), [9; NONCE_LEN], terms());
        let Some(ck) = client_key else {
            return h.on_message(hello(None, 1));
        };
        let Step::Reply(ControlMsg::Welcome {
            nonce: Some(sn),
            proof: Some(sp),
            ..
        }) = h.on_message(hello(Some(cn), 1))
        else {
            panic!("expected a challenge");
        };
        let sn = auth::from_hex::<NONCE_LEN>(&sn).unwrap();
        let sp = auth::from_hex::<PROOF_LEN>(&sp).unwrap();
        let ck = key(ck);
        // A client with another key sees the server's proof fail first.
        if !ck.verify_server_proof(&cn, &sn, &sp) {
            return h.on_message(ControlMsg::Error {
                code: ErrorCode::AuthFailed,
                message: "server proof".into(),
                fatal: true,
            });
        }
        h.on_message(ControlMsg::Auth {
            proof: auth::to_hex(&ck.client_proof(&cn, &sn)),
        })
    }

    #[test]
    fn mutual_authentication() {
        match run(b"secret key 123456", Some(b"secret key 123456")) {
            Step::Admit {
                reply: ControlMsg::AuthOk,
                session_key: Some(k),
            } => {
                let expect =
                    key(b"secret key 123456").session_key(&[3; NONCE_LEN], &[9; NONCE_LEN]);
                let mut a = vec![0u8; 100];
                udpreach_wire::ProbeHeader::request(udpreach_wire::ProbeKind::PortProbe, 7, 1)
                    .encode(&mut a)
                    .unwrap();
                let mut b = a.clone();
                k.seal(&mut a).unwrap();
                expect.seal(&mut b).unwrap();
                assert_eq!(a, b, "session key derived from both nonces");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(b"secret key 123456", Some(b"another key 12345")),
            Step::Refuse { reply: None, .. }
        ));
        assert!(matches!(
            run(b"secret key 123456", None),
            Step::Refuse {
                reply: Some(ControlMsg::Error {
                    code: ErrorCode::AuthFailed,
                    ..
                }),
                ..
            }
        ));
    }

    #[test]
    fn a_forged_client_proof_is_refused() {
        let mut h = Handshake::new(7, Some(key(b"secret key 123456")), [9; NONCE_LEN], terms());
        assert!(matches!(
            h.on_message(hello(Some([3; NONCE_LEN]), 1)),
            Step::Reply(_)
        ));
        let step = h.on_message(ControlMsg::Auth {
            proof: auth::to_hex(&[0u8; PROOF_LEN]),
        });
        assert!(matches!(
            step,
            Step::Refuse {
                reply: Some(ControlMsg::Error {
                    code: ErrorCode::AuthFailed,
                    ..
                }),
                ..
            }
        ));
    }
}
