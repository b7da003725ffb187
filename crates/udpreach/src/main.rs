//! udpreach: does UDP get through, on which ports, how fast, and where does it break?
//!
//! The binary is a thin shell: parse arguments, run the chosen command's
//! driver, map the outcome to an exit code (0/1 by result, 2 for errors).

mod cli;
mod control_client;
mod monitor;
mod mtu;
mod nat;
mod ping;
// The only module allowed unsafe code (the workspace denies it): the
// Linux socket options and syscalls that no safe crate exposes.
#[allow(unsafe_code)]
mod platform;
mod ports;
mod report;
mod server;
mod shared_key;
mod target;
mod trace;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Colour in log output only on a terminal, and never with NO_COLOR set
/// (to anything but the empty string, as no-color.org says).
fn log_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && !matches!(no_color, Some(v) if !v.is_empty())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and the bare command (help on stderr, exit 2):
        // as clap prints them.
        Err(e)
            if e.exit_code() == 0
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("udpreach: {}", cli::usage_error(&e));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Server(_)) {
        platform::default_sigpipe();
    }
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "udpreach",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man { command } => {
            return match cli::man_page(command.as_deref(), &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("udpreach: cannot write the man page: {e}");
                    ExitCode::from(2)
                }
            };
        }
        _ => {}
    }
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(log_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UDPREACH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("udpreach: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(a) => server::run(a).await,
            Command::Ping(a) => ping::run(a).await,
            Command::Ports(a) => ports::run(a).await,
            Command::Mtu(a) => mtu::run(a).await,
            Command::Nat(a) => nat::run(a).await,
            Command::Trace(a) => trace::run(a).await,
            Command::Monitor(a) => monitor::run(a).await,
            Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the outermost context, then the causes.
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("udpreach: {}", msg.join(": "));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_colour;
    use std::ffi::OsString;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(log_colour(true, None));
        assert!(log_colour(true, Some(OsString::new())));
        assert!(!log_colour(true, Some(OsString::from("1"))));
        assert!(!log_colour(false, None));
    }
}
