//! udpreach: does UDP get through, on which ports, how fast, and where does it break?
//!
//! The binary is a thin shell: parse arguments, run the chosen command's
//! driver, map the outcome to an exit code (0/1 by result, 2 for errors).

mod cli;
mod mtu;
mod ping;
mod platform;
mod ports;
mod report;
mod server;
mod shared_key;
mod target;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
            Command::Ports(a) => ports::run(a, cli.verbose).await,
            Command::Mtu(a) => mtu::run(a).await,
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
