//! The one interface every udpreach state machine follows, in the manner of
//! quinn-proto's `Connection`: the engine never performs I/O and never reads
//! a clock. A driver (in the binary, or [`crate::testkit`] in tests) moves
//! bytes and time in and out of it:
//!
//! ```text
//! loop {
//!     while let Some(t) = engine.poll_transmit(now) { send(t) }       // what to send now
//!     while let Some(e) = engine.poll_event() { render(e) }           // what happened
//!     if engine.is_done() { break }
//!     select! {
//!         input = recv()                       => engine.handle_input(input, now()),
//!         _ = sleep_until(engine.poll_timeout()) => engine.handle_timeout(now()),
//!     }
//! }
//! ```
//!
//! Rules every implementation keeps, so the one driver loop above is always
//! correct:
//! - `handle_input` and `handle_timeout` only change state; anything to send
//!   or report is queued and comes out of `poll_transmit` / `poll_event`.
//! - `poll_transmit(now)` may be called any number of times; it returns
//!   `None` when nothing is due (pacing and windows live in the engine).
//! - `poll_timeout` is the earliest instant at which `handle_timeout` has
//!   work to do, or `None` when only an input can make progress. It does not
//!   mutate. A driver may call `handle_timeout` early; it must be harmless.
//! - `is_done` does not mutate; once true, the engine's final report is
//!   complete (read it with the engine's own accessor, e.g. `summary()`).
//!
//! Engine-specific entry points (`abort`, `seed_rtt`, ...) are plain methods
//! beside the trait. Several kinds of input (replies, ICMP errors, control
//! answers) are one `Input` enum per engine, so generic drivers and the
//! test kit can feed any engine.

use std::time::Instant;

/// A sans-I/O state machine driven by the loop in the module docs.
pub trait Engine {
    /// What can arrive for the engine: a datagram, an ICMP error, a control
    /// answer. Engines with several kinds use an enum.
    type Input;
    /// What the engine asks the driver to send: a datagram, a control request.
    type Transmit;
    /// What happened that a caller may report (a reply, a verdict, progress).
    type Event;

    /// Feeds one input that arrived at `now`.
    fn handle_input(&mut self, input: Self::Input, now: Instant);
    /// The next thing to send at `now`, if any is due.
    fn poll_transmit(&mut self, now: Instant) -> Option<Self::Transmit>;
    /// When `handle_timeout` next has work to do.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Lets timers that are due at `now` fire.
    fn handle_timeout(&mut self, now: Instant);
    /// The next event to report, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// True once the engine has nothing left to do and its report is final.
    fn is_done(&self) -> bool;
}
