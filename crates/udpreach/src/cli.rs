//! Command-line interface: argument definitions and value parsers.
//! Parsers return one-line errors that name the bad value; clap exits 2 on them.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use udpreach_wire::PortSpec;

pub const DEFAULT_PORT: u16 = 4000;

const EXIT_CODES: &str = "\
Exit codes:
  ping:   0 at least one reply, 1 no reply, 2 usage, resolution or socket error
  ports:  0 every requested port reachable (--no-server: open), 1 some port not,
          2 usage, connection or protocol error
  mtu:    0 a path MTU found every way and fragments pass, 1 nothing crosses
          or fragments are dropped, 2 usage, connection or socket error
  server: 0 clean shutdown (SIGINT/SIGTERM), 2 usage or socket error
  With a key (--key-file or UDPREACH_KEY), a failed authentication exits 2.";

#[derive(Parser, Debug)]
#[command(
    name = "udpreach",
    version,
    about = "Does UDP get through, on which ports, how fast, and where does it break?",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: UDP echo (works with any client) and the port-test control channel.
    Server(ServerArgs),
    /// Send UDP probes to an echo server and report RTT, loss and jitter.
    Ping(PingArgs),
    /// Test many UDP ports against a udpreach server, with per-direction verdicts
    /// (or, with --no-server, against any host, as nmap -sU does).
    Ports(PortsArgs),
    /// Find the path MTU each way (DF probes, ICMP or black-hole search) and whether
    /// fragmented datagrams pass.
    Mtu(MtuArgs),
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct ServerArgs {
    /// UDP echo address (repeatable). Default: 0.0.0.0:4000 and [::]:4000.
    #[arg(short = 'l', long = "listen", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,
    /// TCP control port for `udpreach ports`, on the same addresses as --listen.
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg)]
    pub control: Option<u16>,
    /// Ports clients may ask the server to open for tests. Default: 1024-65535 without the
    /// host's ephemeral range (net.ipv4.ip_local_port_range, e.g. 1024-32767,61000-65535).
    #[arg(long, value_name = "SPEC", value_parser = parse_spec)]
    pub allow_ports: Option<PortSpec>,
    /// Most concurrent port-test sessions.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_sessions: u32,
    /// Most test ports one session holds open at once (default: from the open-files limit, at most 8192).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_ports_per_session: Option<u32>,
    /// Most test ports open at once across all sessions (default: from the open-files limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_total_ports: Option<u32>,
    /// Most sessions from one source (IPv4 address or IPv6 /64). Default: a quarter of --max-sessions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_sessions_per_source: Option<u32>,
    /// Most test ports one source holds open at once, all its sessions together. Default: a quarter of --max-total-ports.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_ports_per_source: Option<u32>,
    /// Close a control session (and its ports) after this much silence.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time one control message has from its first byte to its last (both protocols).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub message_timeout: Duration,
    /// Most probe replies per second per session (test ports) and per ping flow (per source address without a key); excess probes get no reply.
    #[arg(long, value_name = "PPS", default_value_t = udpreach_engine::server::DEFAULT_MAX_PROBE_RATE, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_probe_rate: u32,
    /// Largest datagram answered, in bytes; larger ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = udpreach_engine::server::DEFAULT_MAX_DATAGRAM, value_parser = parse_max_datagram)]
    pub max_datagram: usize,
    /// Answer only udpreach probes on the echo port, not arbitrary datagrams.
    #[arg(long)]
    pub no_plain_echo: bool,
    /// Most plain-echo replies per second to one source address (so the server cannot flood a third party).
    #[arg(long, value_name = "PPS", default_value_t = udpreach_engine::server::DEFAULT_PLAIN_ECHO_RATE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub plain_echo_rate: u32,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Where the shared secret for authenticated mode comes from. Deliberately
/// no option that takes the key itself: command lines are visible to every
/// local user (`ps`, /proc/PID/cmdline) and end up in shell history.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Shared secret for authenticated mode: a file holding the key (a trailing newline is ignored).
    /// Without it, the UDPREACH_KEY environment variable is used when set.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct PingArgs {
    /// Target: HOST, HOST:PORT, [IPv6]:PORT or an IPv6 literal (zone ids as fe80::1%eth0). Default port 4000.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Stop after sending this many probes.
    #[arg(short = 'c', long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Time between probes (10ms, 1s, 0.2 = seconds). Minimum 100us.
    #[arg(short = 'i', long, value_name = "INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,
    /// UDP payload size in bytes: 16..=65507 (IPv6: 65527); 64 and up carries the udpreach header.
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Per-probe timeout: a reply after it is counted late, not lost.
    #[arg(short = 'W', long = "timeout", value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Stop after this long, whatever the count.
    #[arg(short = 'w', long = "deadline", value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Print only the summary.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Send one probe from each local source port: PORT or START-END (the seed's SRC_PORT_RANGE).
    #[arg(long = "sport", value_name = "PORT|RANGE", value_parser = parse_spec)]
    pub sport: Option<PortSpec>,
    /// DSCP code point 0..=63 for outgoing probes.
    #[arg(long, value_name = "DSCP", value_parser = clap::value_parser!(u8).range(0..=63))]
    pub dscp: Option<u8>,
    /// TTL / hop limit for outgoing probes (1..=255).
    #[arg(long, value_name = "TTL", value_parser = clap::value_parser!(u32).range(1..=255))]
    pub ttl: Option<u32>,
    /// Set Don't Fragment: oversize probes fail instead of being fragmented.
    #[arg(long)]
    pub df: bool,
    /// One JSON object per line per event, then a summary object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct PortsArgs {
    /// Server: HOST or HOST:CONTROL_PORT (default control port 4000).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Ports to test: 5000,6000,7000-8000 (ranges with - or :).
    #[arg(value_name = "SPEC", value_parser = parse_spec)]
    pub ports: PortSpec,
    /// TCP control port (overrides the port in HOST:PORT).
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, conflicts_with = "no_server")]
    pub control: Option<u16>,
    /// Check a host that runs no udpreach server: open (a UDP reply), closed (ICMP port
    /// unreachable), filtered (other ICMP errors, naming who sent them), open|filtered
    /// (silence after retries). Paces itself to the host's ICMP rate limit.
    #[arg(long = "no-server")]
    pub no_server: bool,
    /// Fixed per-probe timeout instead of the adaptive one (from measured RTT).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Probes per round before a silent port is checked with the server (a second round
    /// confirms; default 4); with --no-server, probes before a silent port is
    /// open|filtered (default 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20))]
    pub retries: Option<u32>,
    /// Cap on probes per second.
    #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// Print every port, not just grouped ranges (also -v).
    #[arg(long = "list")]
    pub list: bool,
    /// No progress bar and only the result lines.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// A JSON document with every port's verdict.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct MtuArgs {
    /// A udpreach server (HOST or HOST:PORT, default port 4000), or with --echo any UDP
    /// echo server.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// TCP control port (default: the port in HOST:PORT).
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, conflicts_with = "echo")]
    pub control: Option<u16>,
    /// The target is a plain UDP echo server: one round-trip result instead of one per
    /// direction (also used when the server lacks the "mtu" capability).
    #[arg(long)]
    pub echo: bool,
    /// Datagrams per size and round.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub probes: u32,
    /// Wait per round for probes to arrive (default: from the measured round trip).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Skip the test of fragmented datagrams.
    #[arg(long)]
    pub no_fragments: bool,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
    /// Only the result lines.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

fn parse_port_arg(s: &str) -> Result<u16, String> {
    udpreach_wire::portspec::parse_port(s).map_err(|e| e.to_string())
}

fn parse_max_datagram(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid max datagram '{s}': expected a number of bytes"))?;
    if !(MIN_SIZE..=65535).contains(&n) {
        return Err(format!(
            "invalid max datagram '{s}': must be {MIN_SIZE}..=65535 bytes"
        ));
    }
    Ok(n)
}

fn parse_spec(s: &str) -> Result<PortSpec, String> {
    s.parse::<PortSpec>().map_err(|e| e.to_string())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("invalid listen address '{s}': expected ADDR:PORT or [IPv6]:PORT"))?;
    if addr.port() == 0 {
        return Err(format!("invalid listen address '{s}': port 0"));
    }
    Ok(addr)
}

/// Durations: `10ms`, `1.5s`, `250us`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("invalid duration '{s}': expected a number with an optional unit (us, ms, s, m)")
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_micros(100) {
        return Err(format!("invalid interval '{s}': the minimum is 100us"));
    }
    Ok(d)
}

pub const MIN_SIZE: usize = 16;
pub const MAX_SIZE_V6: usize = 65527;

fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid size '{s}': expected a number of bytes"))?;
    if !(MIN_SIZE..=MAX_SIZE_V6).contains(&n) {
        return Err(format!(
            "invalid size '{s}': must be {MIN_SIZE}..=65507 bytes (65527 over IPv6)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("0.2").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("abc").unwrap_err().contains("'abc'"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_interval("0").unwrap_err().contains("'0'"));
        assert!(parse_size("65508").is_ok());
        assert!(parse_size("70000").unwrap_err().contains("'70000'"));
        assert!(parse_size("8").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
