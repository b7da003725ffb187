//! The command runner's result: what ran and what it printed, with asserts
//! on the exit code that print the command, its stdout and its stderr when
//! they fail (in the manner of ripgrep's `tests/util.rs`).
//!
//! Every way the tests run a program returns one: [`Host::run`](super::Host::run)
//! and [`run_timeout`](super::Host::run_timeout) in a namespace,
//! [`Proc::wait_output_timeout`](super::Proc::wait_output_timeout) for a spawned
//! one, `util::udpreach` and `loopback::run` for the udpreach binary. It
//! dereferences to [`std::process::Output`], so `out.status` and
//! `out.stdout` work as before; prefer the asserts to reading the status:
//!
//! ```ignore
//! let out = udpreach(lab.client(), &["ping", "198.18.0.2", "-c", "3"]);
//! out.assert_code(0);
//! assert!(out.stdout_text().contains("3 received"), "{out}");
//! ```

use std::fmt;
use std::ops::Deref;
use std::process::Output;

/// A finished command: its command line and everything it printed.
pub(crate) struct CommandOutput {
    /// The command line as run (for namespace hosts with `ip netns exec`).
    pub command: String,
    /// Exit status, stdout and stderr.
    pub output: Output,
}

impl CommandOutput {
    /// Wraps the output of `command`.
    pub(crate) fn new(command: impl Into<String>, output: Output) -> Self {
        CommandOutput {
            command: command.into(),
            output,
        }
    }

    /// Exit code; -1 when a signal ended the program.
    pub(crate) fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    /// Stdout as text (lossy UTF-8).
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Stderr as text (lossy UTF-8).
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts the program exited with `code`; on failure the panic shows
    /// the command, the status, stdout and stderr.
    #[track_caller]
    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        if self.output.status.code() != Some(code) {
            panic!("expected exit code {code}\n{self}");
        }
        self
    }

    /// Asserts the program exited with code 0 (see [`assert_code`](Self::assert_code)).
    #[track_caller]
    pub(crate) fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Asserts the program did not succeed (an exit code other than 0, or a signal).
    #[track_caller]
    pub(crate) fn assert_failure(&self) -> &Self {
        if self.output.status.success() {
            panic!("expected the command to fail\n{self}");
        }
        self
    }

    /// The plain [`Output`].
    pub(crate) fn into_output(self) -> Output {
        self.output
    }
}

impl Deref for CommandOutput {
    type Target = Output;

    fn deref(&self) -> &Output {
        &self.output
    }
}

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.output.status,
            self.stdout_text().trim_end(),
            self.stderr_text().trim_end()
        )
    }
}

impl fmt::Debug for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
