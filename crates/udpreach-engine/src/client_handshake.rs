//! The client side of a control session's handshake, without I/O: the
//! counterpart of [`crate::handshake::Handshake`].
//!
//! Without a key: `Hello` -> `Welcome`. With a key: `Hello{nonce}` ->
//! `Welcome{nonce, proof}`; the server's proof is checked (mutual
//! authentication), then `Auth{proof}` -> `AuthOk`, and both sides derive the
//! session key. The driver owns the connection (preamble, frames) and its
//! timeouts; the engine says what to send and how the handshake ended.

use crate::engine::Engine;
use std::collections::VecDeque;
use std::time::Instant;
use udpreach_wire::auth::{self, DerivedKey, SharedKey, NONCE_LEN, PROOF_LEN};
use udpreach_wire::control::{ControlMsg, ErrorCode, CAPABILITIES, PROTOCOL_VERSION};

/// What the server granted the session.
#[derive(Clone, Debug)]
pub struct Welcome {
    /// The session's probe token.
    pub token: u64,
    /// Ports the session may hold open at once.
    pub max_open_ports: u32,
    /// The server's probe-rate cap for this session (0: none announced).
    pub max_probe_rate: u32,
    /// With a key: tags this session's probes and replies.
    pub session_key: Option<DerivedKey>,
    /// What the server can do (e.g. "mtu").
    pub capabilities: Vec<String>,
}

/// Why the handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server refused the session for its key (the server's words,
    /// without the "authentication failed: " prefix).
    AuthRefused(String),
    /// The server refused our proof (its words, without the prefix).
    AuthRejected(String),
    /// The server sent no proof: it runs without a key.
    NoServerProof,
    /// The server's proof does not match our key.
    WrongServerKey,
    /// The server is at its session or handshake cap (its words).
    Busy(String),
    /// The server refused for another reason.
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's words.
        message: String,
    },
    /// A message the protocol does not allow at this point.
    Protocol(String),
}

/// How the handshake ended.
#[derive(Clone, Debug)]
pub enum HandshakeEvent {
    /// The session is established.
    Welcome(Welcome),
    /// The session is not established.
    Failed(HandshakeFailure),
}

#[derive(Debug)]
enum State {
    AwaitWelcome,
    AwaitAuthOk {
        welcome: Welcome,
        sn: [u8; NONCE_LEN],
    },
    Done,
}

/// The client's handshake, driven through [`Engine`]: `poll_transmit`
/// gives the `Hello` (then `Auth`, or a farewell `Error`), `handle_input`
/// takes the server's messages, `poll_event` says how it ended.
pub struct ClientHandshake {
    key: Option<SharedKey>,
    client_nonce: [u8; NONCE_LEN],
    state: State,
    outbox: VecDeque<ControlMsg>,
    events: VecDeque<HandshakeEvent>,
}

impl ClientHandshake {
    /// A handshake announcing `software`; `client_nonce` must be fresh
    /// randomness when there is a key (the caller's RNG keeps this module
    /// deterministic in tests).
    pub fn new(key: Option<SharedKey>, client_nonce: [u8; NONCE_LEN], software: String) -> Self {
        let hello = ControlMsg::Hello {
            version: PROTOCOL_VERSION,
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            software,
            nonce: key.as_ref().map(|_| auth::to_hex(&client_nonce)),
        };
        ClientHandshake {
            key,
            client_nonce,
            state: State::AwaitWelcome,
            outbox: VecDeque::from([hello]),
            events: VecDeque::new(),
        }
    }

    fn fail(&mut self, why: HandshakeFailure) {
        self.state = State::Done;
        self.events.push_back(HandshakeEvent::Failed(why));
    }

    fn admit(&mut self, welcome: Welcome) {
        self.state = State::Done;
        self.events.push_back(HandshakeEvent::Welcome(welcome));
    }

    /// The server's `Error` at any stage, as a failure.
    fn refused(code: ErrorCode, message: String) -> HandshakeFailure {
        match code {
            ErrorCode::AuthFailed => HandshakeFailure::AuthRefused(without_prefix(&message)),
            ErrorCode::TooManySessions | ErrorCode::HandshakeSlotsFull => {
                HandshakeFailure::Busy(message)
            }
            _ => HandshakeFailure::Refused { code, message },
        }
    }

    fn on_welcome(&mut self, welcome: Welcome, nonce: Option<String>, proof: Option<String>) {
        let Some(key) = &self.key else {
            return self.admit(welcome);
        };
        let sn = nonce.as_deref().and_then(auth::from_hex::<NONCE_LEN>);
        let proof = proof.as_deref().and_then(auth::from_hex::<PROOF_LEN>);
        let (Some(sn), Some(proof)) = (sn, proof) else {
            return self.fail(HandshakeFailure::NoServerProof);
        };
        let cn = self.client_nonce;
        if !key.verify_server_proof(&cn, &sn, &proof) {
            // Say why we leave, so the server's log shows it too.
            self.outbox.push_back(ControlMsg::Error {
                code: ErrorCode::AuthFailed,
                message: "the server's proof does not match the client's key".into(),
                fatal: true,
            });
            return self.fail(HandshakeFailure::WrongServerKey);
        }
        self.outbox.push_back(ControlMsg::Auth {
            proof: auth::to_hex(&key.client_proof(&cn, &sn)),
        });
        self.state = State::AwaitAuthOk { welcome, sn };
    }
}

fn without_prefix(message: &str) -> String {
    message
        .trim_start_matches("authentication failed: ")
        .to_string()
}

impl Engine for ClientHandshake {
    type Input = ControlMsg;
    type Transmit = ControlMsg;
    type Event = HandshakeEvent;

    fn handle_input(&mut self, msg: ControlMsg, _now: Instant) {
        match (std::mem::replace(&mut self.state, State::Done), msg) {
            (
                State::AwaitWelcome,
                ControlMsg::Welcome {
                    token,
                    max_open_ports,
                    max_probe_rate,
                    nonce,
                    proof,
                    capabilities,
                    ..
                },
            ) => {
                let welcome = Welcome {
                    token,
                    max_open_ports,
                    max_probe_rate,
                    session_key: None,
                    capabilities,
                };
                self.on_welcome(welcome, nonce, proof);
            }
            (State::AwaitWelcome, ControlMsg::Error { code, message, .. }) => {
                self.fail(Self::refused(code, message))
            }
            (State::AwaitWelcome, other) => self.fail(HandshakeFailure::Protocol(format!(
                "expected welcome, got {other:?}"
            ))),
            (State::AwaitAuthOk { mut welcome, sn }, ControlMsg::AuthOk) => {
                let key = self.key.as_ref().expect("AwaitAuthOk only with a key");
                welcome.session_key = Some(key.session_key(&self.client_nonce, &sn));
                self.admit(welcome);
            }
            (
                State::AwaitAuthOk { .. },
                ControlMsg::Error {
                    code: ErrorCode::AuthFailed,
                    message,
                    ..
                },
            ) => self.fail(HandshakeFailure::AuthRejected(without_prefix(&message))),
            (State::AwaitAuthOk { .. }, ControlMsg::Error { code, message, .. }) => {
                self.fail(Self::refused(code, message))
            }
            (State::AwaitAuthOk { .. }, other) => self.fail(HandshakeFailure::Protocol(format!(
                "expected auth_ok, got {other:?}"
            ))),
            // Anything after the end is the session's, not the handshake's.
            (State::Done, _) => {}
        }
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<ControlMsg> {
        self.outbox.pop_front()
    }

    /// The driver keeps the answer timeout (it owns the connection).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_event(&mut self) -> Option<HandshakeEvent> {
        self.events.pop_front()
    }

    fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.outbox.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Handshake, Step, WelcomeTerms};

    fn key(b: &[u8]) -> SharedKey {
        SharedKey::new(b.to_vec()).unwrap()
    }

    /// Runs both sides of the handshake against each other in memory.
    fn run(client_key: Option<SharedKey>, server_key: Option<SharedKey>) -> HandshakeEvent {
        let now = Instant::now();
        let terms = WelcomeTerms {
            max_open_ports: 100,
            max_probe_rate: 1000,
            software: "server".into(),
        };
        let mut server = Handshake::new(7, server_key, [2; NONCE_LEN], terms);
        let mut client = ClientHandshake::new(client_key, [1; NONCE_LEN], "client".into());
        let mut server_session_key = None;
        for _ in 0..10 {
            while let Some(msg) = client.poll_transmit(now) {
                let reply = match server.on_message(msg) {
                    Step::Reply(r) => Some(r),
                    Step::Admit { reply, session_key } => {
                        server_session_key = session_key;
                        Some(reply)
                    }
                    Step::Refuse { reply, .. } => reply,
                };
                if let Some(r) = reply {
                    client.handle_input(r, now);
                }
            }
            if let Some(ev) = client.poll_event() {
                if let HandshakeEvent::Welcome(w) = &ev {
                    // Both sides derived the same session key.
                    let mut sealed = [0u8; auth::MIN_SEALED_LEN];
                    use udpreach_wire::probe::{ProbeHeader, ProbeKind};
                    ProbeHeader::request(ProbeKind::PortProbe, w.token, 1)
                        .encode(&mut sealed)
                        .unwrap();
                    if let (Some(c), Some(s)) = (&w.session_key, &server_session_key) {
                        c.seal(&mut sealed).unwrap();
                        s.verify(&sealed).unwrap();
                    }
                }
                assert!(client.is_done());
                return ev;
            }
        }
        panic!("the handshake did not end");
    }

    #[test]
    fn both_sides_agree_with_and_without_a_key() {
        match run(None, None) {
            HandshakeEvent::Welcome(w) => {
                assert_eq!(
                    (w.token, w.max_open_ports, w.max_probe_rate),
                    (7, 100, 1000)
                );
                assert!(w.session_key.is_none());
            }
            other => panic!("{other:?}"),
        }
        match run(
            Some(key(b"0123456789abcdef")),
            Some(key(b"0123456789abcdef")),
        ) {
            HandshakeEvent::Welcome(w) => assert!(w.session_key.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_mismatches_fail_by_kind() {
        let a = || Some(key(b"0123456789abcdef"));
        let b = || Some(key(b"fedcba9876543210"));
        assert!(matches!(
            run(a(), b()),
            HandshakeEvent::Failed(HandshakeFailure::WrongServerKey)
        ));
        assert!(matches!(
            run(a(), None),
            HandshakeEvent::Failed(HandshakeFailure::NoServerProof)
        ));
        match run(None, a()) {
            HandshakeEvent::Failed(HandshakeFailure::AuthRefused(why)) => {
                assert!(why.contains("requires a key"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_busy_server_and_nonsense_are_told_apart() {
        let mut c = ClientHandshake::new(None, [1; NONCE_LEN], "client".into());
        let now = Instant::now();
        assert!(matches!(
            c.poll_transmit(now),
            Some(ControlMsg::Hello { .. })
        ));
        let busy = ControlMsg::Error {
            code: ErrorCode::TooManySessions,
            message: "server busy".into(),
            fatal: true,
        };
        c.handle_input(busy, now);
        assert!(matches!(
            c.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeFailure::Busy(_)))
        ));
        let mut c = ClientHandshake::new(None, [1; NONCE_LEN], "client".into());
        c.handle_input(ControlMsg::AuthOk, now);
        assert!(matches!(
            c.poll_event(),
            Some(HandshakeEvent::Failed(HandshakeFailure::Protocol(_)))
        ));
    }
}
