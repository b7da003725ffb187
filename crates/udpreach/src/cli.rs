//! Command-line interface: argument definitions and value parsers.
//! Parsers return one-line errors that name the bad value; clap exits 2 on them.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use udpreach_wire::PortSpec;

pub(crate) const DEFAULT_PORT: u16 = 4000;

/// The version line: the crate version and, when built from a git checkout,
/// the commit (set by build.rs).
pub(crate) const VERSION: &str = match option_env!("UDPREACH_GIT_COMMIT") {
    Some(_) => concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("UDPREACH_GIT_COMMIT"),
        ")"
    ),
    None => env!("CARGO_PKG_VERSION"),
};

const EXIT_CODES: &str = "\
Exit codes (details: udpreach COMMAND --help):
  0 success: ping got a reply, every port reachable, an MTU found every way,
    a clean server shutdown
  1 a negative result about the network: no reply, some port not reachable,
    nothing crosses or fragments are dropped
  2 usage or local error (one line, `udpreach: ...`, naming the bad value),
    a connection or protocol error, a failed authentication";

const PING_EXIT_CODES: &str = "\
Exit codes:
  0 at least one reply (late ones count)
  1 no reply at all
  2 usage, resolution or socket error; with a key, failed authentication;
    without one, a server that requires a key";

const PORTS_EXIT_CODES: &str = "\
Exit codes:
  0 every requested port reachable (--no-server: open)
  1 some port not reachable (--no-server: not open)
  2 usage, resolution, connection or protocol error; with a key, failed authentication";

const MTU_EXIT_CODES: &str = "\
Exit codes:
  0 a path MTU found every way and fragments pass
  1 nothing crosses, or fragments are dropped
  2 usage, resolution, connection or socket error; with a key, failed authentication";

const NAT_EXIT_CODES: &str = "\
Exit codes:
  0 everything measured (without the server's --alt-address, endpoint-independent and
    address-dependent behaviour are reported together)
  1 a part could not be measured (the `not_measured` list says which and why), or no
    binding expired within --max-idle
  2 usage, resolution, connection or protocol error; with a key, failed authentication";

const TRACE_EXIT_CODES: &str = "\
Exit codes:
  0 every traced port passes, each way traced
  1 some traced port does not pass (dropped, rejected or no answer) some way
  2 usage, resolution, connection or protocol error";

const MONITOR_EXIT_CODES: &str = "\
Exit codes:
  0 clean shutdown (SIGINT/SIGTERM); unreachable targets are metrics, not errors
  2 usage or configuration error (one line naming the key), the HTTP address taken
SIGHUP re-reads --config: unchanged targets keep their counters; a bad file
keeps the old configuration running (udpreach_config_last_reload_successful 0).";

const SERVER_EXIT_CODES: &str = "\
Exit codes:
  0 clean shutdown (SIGINT/SIGTERM)
  2 usage or socket error (a taken port, a bad key file)";

/// Option groups in `--help`.
const PROBES: &str = "Probes";
const PATH: &str = "Path";
const OUTPUT: &str = "Output";
const AUTH: &str = "Authentication";
const LISTEN: &str = "Listening";
const LIMITS: &str = "Limits";
const STAMP: &str = "STAMP (RFC 8762)";

#[derive(Parser, Debug)]
#[command(
    name = "udpreach",
    version = VERSION,
    about = "Does UDP get through, on which ports, how fast, and where does it break?",
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// How long an idle UDP flow survives NATs and stateful firewalls on the path
    /// (after one exchange and after an active flow), and how the NAT maps and filters.
    Nat(NatArgs),
    /// Find the hop that drops or rejects UDP to a port, in each direction (TTL-limited
    /// probes both ways against a udpreach server, or upstream only with --no-server).
    Trace(TraceArgs),
    /// Probe many targets continuously and export metrics to Prometheus
    /// (/metrics, /probe?target=..&module=.., /health).
    Monitor(MonitorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(hide = true)]
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: udpreach(1), or with COMMAND udpreach-COMMAND(1).
    #[command(hide = true)]
    Man {
        #[arg(value_name = "COMMAND", value_parser = ["server", "ping", "ports", "mtu", "nat", "trace", "monitor"])]
        command: Option<String>,
    },
}

#[derive(Args, Debug)]
#[command(after_help = SERVER_EXIT_CODES)]
pub(crate) struct ServerArgs {
    /// UDP echo address (repeatable). Default: 0.0.0.0:4000 and [::]:4000.
    #[arg(short = 'l', long = "listen", value_name = "ADDR:PORT", value_parser = parse_listen, help_heading = LISTEN)]
    pub listen: Vec<SocketAddr>,
    /// TCP control port for `udpreach ports` and `mtu`, on the same addresses as --listen
    /// [default: each --listen address's own port].
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, help_heading = LISTEN)]
    pub control: Option<u16>,
    /// Ports clients may ask the server to open for tests [default: 1024-65535 without the
    /// host's ephemeral range (net.ipv4.ip_local_port_range, e.g. 1024-32767,61000-65535)].
    #[arg(long, value_name = "SPEC", value_parser = parse_spec, help_heading = LISTEN)]
    pub allow_ports: Option<PortSpec>,
    /// Answer only udpreach probes on the echo port, not arbitrary datagrams.
    #[arg(long, help_heading = LISTEN)]
    pub no_plain_echo: bool,
    /// Most concurrent port-test sessions.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = number_in("session count", 1u32, 10_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_sessions: u32,
    /// Most test ports one session holds open at once [default: from the open-files limit, at most 16384].
    #[arg(long, value_name = "N", value_parser = number_in("port count", 1u32, 65_535), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_ports_per_session: Option<u32>,
    /// Most test ports open at once across all sessions [default: from the open-files limit;
    /// more than that limit allows is refused].
    #[arg(long, value_name = "N", value_parser = number_in("port count", 1u32, 1_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_total_ports: Option<u32>,
    /// Most sessions from one source (IPv4 address or IPv6 /64) [default: a quarter of --max-sessions].
    #[arg(long, value_name = "N", value_parser = number_in("session count", 1u32, 10_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_sessions_per_source: Option<u32>,
    /// Most test ports one source holds open at once, all its sessions together
    /// [default: a quarter of --max-total-ports].
    #[arg(long, value_name = "N", value_parser = number_in("port count", 1u32, 1_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_ports_per_source: Option<u32>,
    /// Close a control session (and its ports) after this much silence: 1s..=1h.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_in("idle timeout", "1s", "1h"), allow_negative_numbers = true, help_heading = LIMITS)]
    pub idle_timeout: Duration,
    /// Time one control message has from its first byte to its last (both protocols).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_in("message timeout", "1s", "1h"), allow_negative_numbers = true, help_heading = LIMITS)]
    pub message_timeout: Duration,
    /// Most probe replies per second per session (test ports) and per ping flow (per source address without a key); excess probes get no reply.
    #[arg(long, value_name = "PPS", default_value_t = udpreach_engine::server::DEFAULT_MAX_PROBE_RATE, value_parser = number_in("rate", 1u32, 10_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_probe_rate: u32,
    /// Largest datagram answered, in bytes; larger ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = udpreach_engine::server::DEFAULT_MAX_DATAGRAM, value_parser = parse_max_datagram, allow_negative_numbers = true, help_heading = LIMITS)]
    pub max_datagram: usize,
    /// Most plain-echo replies per second to one source address (so the server cannot flood a third party).
    #[arg(long, value_name = "PPS", default_value_t = udpreach_engine::server::DEFAULT_PLAIN_ECHO_RATE, value_parser = number_in("rate", 1u32, 1_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub plain_echo_rate: u32,
    /// Most unauthenticated replies per second to one address, of every kind (echo, probes, test ports, legacy, MTU); an address with an open control session gets --max-probe-rate instead.
    #[arg(long, value_name = "PPS", default_value_t = udpreach_engine::reply_budget::DEFAULT_BUDGET_PPS, value_parser = number_in("reply budget", 1u32, 10_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub reply_budget: u32,
    /// Most unauthenticated reply bytes per second to one address (UDP payload).
    #[arg(long, value_name = "BYTES", default_value_t = udpreach_engine::reply_budget::DEFAULT_BUDGET_BYTES, value_parser = number_in("reply byte budget", 65_536u64, 1_000_000_000_000), allow_negative_numbers = true, help_heading = LIMITS)]
    pub reply_budget_bytes: u64,
    /// Also answer echo requests from source ports 1-1023 (never 0, 7, 19 or the server's own ports).
    #[arg(long, help_heading = LISTEN)]
    pub echo_low_ports: bool,
    /// A second address of this host (same family as the client's) for `udpreach nat`:
    /// address-dependent mapping and filtering can only be told apart with it.
    #[arg(long, value_name = "IP", help_heading = LISTEN)]
    pub alt_address: Option<std::net::IpAddr>,
    /// Also be a STAMP reflector (RFC 8762/8972) for any STAMP sender, on ADDR:PORT
    /// [default: 0.0.0.0:862 and [::]:862; ports below 1024 need root or CAP_NET_BIND_SERVICE].
    /// With a key: authenticated mode only (the key is the HMAC key).
    #[arg(long, value_name = "ADDR:PORT", num_args = 0..=1, value_parser = parse_listen, help_heading = STAMP)]
    pub stamp: Option<Option<SocketAddr>>,
    /// STAMP: echo the sender's sequence numbers instead of numbering replies per session
    /// (a stateless reflector: senders cannot split loss by direction).
    #[arg(long, requires = "stamp", help_heading = STAMP)]
    pub stamp_stateless: bool,
    /// STAMP: write PTP timestamps instead of NTP ones.
    #[arg(long, requires = "stamp", help_heading = STAMP)]
    pub stamp_ptp: bool,
    /// STAMP: mark this host's clock as synchronised to UTC (the S bit), so that
    /// senders with a synchronised clock report one-way delays. Only if it is (NTP/PTP).
    #[arg(long, requires = "stamp", help_heading = STAMP)]
    pub stamp_clock_synchronized: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Where the shared secret for authenticated mode comes from. Deliberately
/// no option that takes the key itself: command lines are visible to every
/// local user (`ps`, /proc/PID/cmdline) and end up in shell history.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = AUTH)]
pub(crate) struct KeyArgs {
    /// Shared secret for authenticated mode: a file holding the key (a trailing newline is ignored).
    /// Without it, the UDPREACH_KEY environment variable is used when set.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// Default probe size without a key; with one, [`udpreach_wire::auth::MIN_SEALED_LEN`].
/// `-4` / `-6`, the address family every command that resolves a target takes.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct FamilyArgs {
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6", help_heading = PATH)]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6', help_heading = PATH)]
    pub ipv6: bool,
}

impl FamilyArgs {
    pub(crate) fn family(&self) -> crate::target::Family {
        crate::target::Family::from_flags(self.ipv4, self.ipv6)
    }
}

/// The output flags every reporting command shares; each command words
/// their help for what it prints (`mut_arg` on the command).
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct OutputArgs {
    /// Print less.
    #[arg(short = 'q', long, help_heading = OUTPUT)]
    pub quiet: bool,
    /// One JSON document at the end.
    #[arg(long, conflicts_with = "json_lines", help_heading = OUTPUT)]
    pub json: bool,
    /// One JSON object per line as it happens.
    #[arg(long = "json-lines", help_heading = OUTPUT)]
    pub json_lines: bool,
}

impl OutputArgs {
    pub(crate) fn format(&self) -> crate::report::OutputFormat {
        crate::report::OutputFormat::from_flags(self.json, self.json_lines)
    }
}

pub(crate) const DEFAULT_PING_SIZE: usize = 64;

#[derive(Args, Debug)]
#[command(
    mut_arg("quiet", |a| a.help("Print only the summary")),
    mut_arg("json", |a| a.help("One JSON document at the end: start, events and summary (-q: no events)")),
    mut_arg("json_lines", |a| a.help("One JSON object per line as it happens: start, each event, summary (-q: the summary only)"))
)]
#[command(after_help = PING_EXIT_CODES)]
pub(crate) struct PingArgs {
    /// Target: HOST, HOST:PORT, [IPv6]:PORT or an IPv6 literal (zone ids as fe80::1%eth0). Default port 4000.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Stop after sending this many probes [default: until Ctrl+C or --deadline].
    #[arg(short = 'c', long, value_name = "COUNT", value_parser = number_in("count", 1u64, MAX_COUNT), allow_negative_numbers = true, help_heading = PROBES)]
    pub count: Option<u64>,
    /// Time between probes (10ms, 1s, 0.2 = seconds): 100us..=1h.
    #[arg(short = 'i', long, value_name = "INTERVAL", default_value = "1s", value_parser = parse_interval, allow_negative_numbers = true, help_heading = PROBES)]
    pub interval: Duration,
    /// UDP payload size in bytes: 16..=65507 (IPv6: 65527); 64 and up carries the udpreach
    /// header [default: 64; with a key 80, the smallest authenticated probe].
    #[arg(short = 's', long = "size", value_name = "BYTES", value_parser = parse_size, allow_negative_numbers = true, help_heading = PROBES)]
    pub size: Option<usize>,
    /// Per-probe timeout, 1ms..=1h: a reply after it is counted late, not lost.
    #[arg(short = 'W', long = "timeout", value_name = "DURATION", default_value = "1s", value_parser = duration_in("timeout", "1ms", "1h"), allow_negative_numbers = true, help_heading = PROBES)]
    pub timeout: Duration,
    /// Stop after this long, whatever the count: 1ms..=30d.
    #[arg(short = 'w', long = "deadline", value_name = "DURATION", value_parser = duration_in("deadline", "1ms", "30d"), allow_negative_numbers = true, help_heading = PROBES)]
    pub deadline: Option<Duration>,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Send one probe from each local source port: PORT or START-END (the seed's SRC_PORT_RANGE).
    #[arg(long = "sport", value_name = "PORT|RANGE", value_parser = parse_spec, help_heading = PATH)]
    pub sport: Option<PortSpec>,
    /// DSCP code point 0..=63 for outgoing probes; a udpreach server marks its replies the same
    /// and reports what arrived, so the summary shows the DSCP each way.
    #[arg(long, value_name = "DSCP", value_parser = number_in("DSCP", 0u8, 63), allow_negative_numbers = true, help_heading = PATH)]
    pub dscp: Option<u8>,
    /// ECN codepoint for outgoing probes (ect0, ect1, ce, not-ect); like --dscp, the server
    /// marks its replies the same and the summary shows the ECN each way.
    #[arg(long, value_name = "ECN", value_parser = parse_ecn_arg, help_heading = PATH)]
    pub ecn: Option<u8>,
    /// TTL / hop limit for outgoing probes (1..=255).
    #[arg(long, value_name = "TTL", value_parser = number_in("TTL", 1u32, 255), allow_negative_numbers = true, help_heading = PATH)]
    pub ttl: Option<u32>,
    /// Set Don't Fragment: oversize probes fail instead of being fragmented.
    #[arg(long, help_heading = PATH)]
    pub df: bool,
    /// Receive buffer to ask the kernel for, 4096..=1073741824 bytes [default: 4 MiB]. What
    /// overflows it is counted apart (`local_drops`), never as loss; raise it for high rates.
    #[arg(long, value_name = "BYTES", value_parser = number_in("receive buffer", 4096usize, 1 << 30), allow_negative_numbers = true, help_heading = PROBES)]
    pub recv_buffer: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Be a STAMP session-sender (RFC 8762/8972) against any STAMP reflector (a router,
    /// stamp-suite, `udpreach server --stamp`); the default port becomes 862. --dscp / --ecn add
    /// the Class of Service TLV; with a key, authenticated mode (the key is the HMAC key).
    #[arg(long, conflicts_with = "sport", help_heading = STAMP)]
    pub stamp: bool,
    /// STAMP: the session-sender identifier (RFC 8972) [default: random].
    #[arg(long, value_name = "SSID", requires = "stamp", value_parser = number_in("SSID", 1u16, 65_535), allow_negative_numbers = true, help_heading = STAMP)]
    pub ssid: Option<u16>,
    /// STAMP: write PTP timestamps instead of NTP ones.
    #[arg(long, requires = "stamp", help_heading = STAMP)]
    pub stamp_ptp: bool,
    /// STAMP: mark this host's clock as synchronised to UTC (the S bit); with a reflector
    /// that says the same, one-way delays are reported. Only if it is (NTP/PTP).
    #[arg(long, requires = "stamp", help_heading = STAMP)]
    pub stamp_clock_synchronized: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

impl PingArgs {
    /// The probe size: as given, else the default of the mode (a keyed probe
    /// needs room for its authentication tag).
    pub(crate) fn size_for(&self, keyed: bool) -> usize {
        self.size.unwrap_or(if keyed {
            udpreach_wire::auth::MIN_SEALED_LEN
        } else {
            DEFAULT_PING_SIZE
        })
    }
}

/// Most probes one ping run may be asked for (`-c`): over three years at 1 s.
pub(crate) const MAX_COUNT: u64 = 100_000_000;

#[derive(Args, Debug)]
#[command(
    mut_arg("quiet", |a| a.help("No progress bar and only the result lines")),
    mut_arg("json", |a| a.help("One JSON document at the end with every port's verdict")),
    mut_arg("json_lines", |a| a.help("One JSON object per line: start, one per port, summary (-q: the summary only)"))
)]
#[command(after_help = PORTS_EXIT_CODES)]
pub(crate) struct PortsArgs {
    /// Server: HOST or HOST:CONTROL_PORT (default control port 4000).
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Ports to test: 5000,6000,7000-8000 (ranges with - or :).
    #[arg(value_name = "SPEC", value_parser = parse_spec)]
    pub ports: PortSpec,
    /// TCP control port [default: the port in HOST:PORT, else 4000].
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, conflicts_with = "no_server", help_heading = PATH)]
    pub control: Option<u16>,
    /// Check a host that runs no udpreach server: open (a UDP reply), closed (ICMP port
    /// unreachable), filtered (other ICMP errors, naming who sent them), open|filtered
    /// (silence after retries). Paces itself to the host's ICMP rate limit.
    #[arg(long = "no-server", help_heading = PATH)]
    pub no_server: bool,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Fixed per-probe timeout, 1ms..=1m, instead of the adaptive one (from measured RTT).
    #[arg(long, value_name = "DURATION", value_parser = duration_in("timeout", "1ms", "1m"), allow_negative_numbers = true, help_heading = PROBES)]
    pub timeout: Option<Duration>,
    /// Probes per round before a silent port is checked with the server (a second round
    /// confirms; default 4); with --no-server, probes before a silent port is
    /// open|filtered (default 3). 1..=20.
    #[arg(long, value_name = "N", value_parser = number_in("retry count", 1u32, 20), allow_negative_numbers = true, help_heading = PROBES)]
    pub retries: Option<u32>,
    /// Cap on probes per second, 1..=10000000 [default: the server's per-session cap;
    /// --no-server: the host's ICMP rate limit].
    #[arg(long, value_name = "PPS", value_parser = number_in("rate", 1u32, 10_000_000), allow_negative_numbers = true, help_heading = PROBES)]
    pub rate: Option<u32>,
    /// Print every port, not just grouped ranges.
    #[arg(short = 'l', long = "list", help_heading = OUTPUT)]
    pub list: bool,
    /// After the sweep, find the hop that drops each blocked port: a few representatives of
    /// each group traced in full, the other ports checked at the hop they agree on (see
    /// `udpreach trace`).
    #[arg(long, conflicts_with_all = ["no_server", "json_lines"], help_heading = PATH)]
    pub trace: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug)]
#[command(
    mut_arg("quiet", |a| a.help("Only the result lines")),
    mut_arg("json", |a| a.help("One JSON document at the end")),
    mut_arg("json_lines", |a| a.help("One JSON object per line: start, notices, summary (-q: the summary only)"))
)]
#[command(after_help = MTU_EXIT_CODES)]
pub(crate) struct MtuArgs {
    /// A udpreach server (HOST or HOST:PORT, default port 4000), or with --echo any UDP
    /// echo server.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// TCP control port [default: the port in HOST:PORT, else 4000].
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, conflicts_with = "echo", help_heading = PATH)]
    pub control: Option<u16>,
    /// The target is a plain UDP echo server: one round-trip result instead of one per
    /// direction (also used when the server lacks the "mtu" capability).
    #[arg(long, help_heading = PATH)]
    pub echo: bool,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Datagrams per size and round, 1..=4.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = number_in("probe count", 1u32, 4), allow_negative_numbers = true, help_heading = PROBES)]
    pub probes: u32,
    /// Wait per round for probes to arrive, 1ms..=1m [default: from the measured round trip].
    #[arg(long, value_name = "DURATION", value_parser = duration_in("timeout", "1ms", "1m"), allow_negative_numbers = true, help_heading = PROBES)]
    pub timeout: Option<Duration>,
    /// Skip the test of fragmented datagrams.
    #[arg(long, help_heading = PROBES)]
    pub no_fragments: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug)]
#[command(
    mut_arg("quiet", |a| a.help("Only the conclusion line")),
    mut_arg("json", |a| a.help("One JSON document at the end")),
    mut_arg("json_lines", |a| a.help("One JSON object per line: start, search rounds and gaps, summary"))
)]
#[command(after_help = NAT_EXIT_CODES)]
pub(crate) struct NatArgs {
    /// A udpreach server (HOST or HOST:PORT, default port 4000) with the "nat" capability.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// TCP control port [default: the port in HOST:PORT, else 4000].
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, help_heading = PATH)]
    pub control: Option<u16>,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// Longest idle gap tested, 2s..=30m: a binding that outlives it is reported as
    /// "over" it.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = duration_in("max idle", "2s", "30m"), allow_negative_numbers = true, help_heading = PROBES)]
    pub max_idle: Duration,
    /// Measure the idle timeouts towards these server ports instead of an ephemeral one (at most 8, e.g.
    /// 443,4500,5060; they must be allowed by the server's --allow-ports): devices
    /// may apply per-port timers.
    #[arg(short = 'p', long = "ports", value_name = "SPEC", value_parser = parse_nat_ports, help_heading = PROBES)]
    pub ports: Option<PortSpec>,
    /// Benchmarks only: search one gap at a time (doubling, then bisecting), as a script would.
    #[arg(long, hide = true)]
    pub serial: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Args, Debug)]
#[command(
    mut_arg("quiet", |a| a.help("Only the verdict lines, no hop lists")),
    mut_arg("json", |a| a.help("One JSON document at the end")),
    mut_arg("json_lines", |a| a.help("One JSON object per line: start, one per port and direction, summary"))
)]
#[command(after_help = TRACE_EXIT_CODES)]
pub(crate) struct TraceArgs {
    /// A udpreach server (HOST or HOST:CONTROL_PORT, default 4000), or with --no-server any host.
    #[arg(value_name = "HOST[:PORT]")]
    pub target: String,
    /// Ports to trace: 5060,5061,27015 or ranges (at most 127 ports).
    #[arg(short = 'p', long = "ports", value_name = "SPEC", value_parser = parse_spec, required = true, help_heading = PATH)]
    pub ports: PortSpec,
    /// A port known to pass, traced alongside for comparison [default: a free port the
    /// server opens; --no-server: 33434].
    #[arg(long = "control-port", value_name = "PORT", value_parser = parse_port_arg, help_heading = PATH)]
    pub control_port: Option<u16>,
    /// TCP control port [default: the port in HOST:PORT, else 4000].
    #[arg(long, value_name = "PORT", value_parser = parse_port_arg, conflicts_with = "no_server", help_heading = PATH)]
    pub control: Option<u16>,
    /// Trace a host that runs no udpreach: upstream only; arrival is a reply or ICMP port
    /// unreachable from the host.
    #[arg(long = "no-server", help_heading = PATH)]
    pub no_server: bool,
    #[command(flatten)]
    pub family: FamilyArgs,
    /// DSCP code point 0..=63 for the probes; each hop's quoted header then shows where
    /// it was rewritten.
    #[arg(long, value_name = "DSCP", value_parser = number_in("DSCP", 0u8, 63), allow_negative_numbers = true, help_heading = PATH)]
    pub dscp: Option<u8>,
    /// UDP payload bytes per probe, 32..=65507, sent with Don't Fragment (both ways): a hop
    /// whose next link is smaller answers frag-needed / packet too big, shown as its MTU
    /// [default: 32, the bare probe; 48 with a key].
    #[arg(long, value_name = "BYTES", value_parser = number_in("size", 32u16, 65507), allow_negative_numbers = true, help_heading = PROBES)]
    pub size: Option<u16>,
    /// Highest TTL / hop limit probed, 1..=64.
    #[arg(short = 'm', long = "max-hops", value_name = "N", default_value_t = 30, value_parser = number_in("max hops", 1u8, udpreach_wire::trace::MAX_HOPS), allow_negative_numbers = true, help_heading = PROBES)]
    pub max_hops: u8,
    /// Probes per TTL before the TTL counts as silent, 1..=3.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = number_in("attempts", 1u8, udpreach_wire::trace::MAX_ATTEMPTS), allow_negative_numbers = true, help_heading = PROBES)]
    pub attempts: u8,
    /// Probes per second, all ports and TTLs together, 1..=100000.
    #[arg(long, value_name = "PPS", default_value_t = 1000, value_parser = number_in("rate", 1u32, 100_000), allow_negative_numbers = true, help_heading = PROBES)]
    pub rate: u32,
    /// Fixed wait per attempt, 1ms..=5s [default: 4x the slowest answer, 150ms..=2s].
    #[arg(long, value_name = "DURATION", value_parser = duration_in("timeout", "1ms", "5s"), allow_negative_numbers = true, help_heading = PROBES)]
    pub timeout: Option<Duration>,
    /// How long hops that rate-limit their ICMP errors are still probed, paced to their
    /// limit (Linux routers allow one a second by default), 0s..=10m; what is missing
    /// then makes a verdict ambiguous.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_in("patience", "0s", "10m"), allow_negative_numbers = true, help_heading = PROBES)]
    pub patience: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
    /// With a server that has a key: every trace datagram is tagged with the session key.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The lowest TTL probed (`ports --trace` checks ports at a hop it knows).
    #[arg(skip)]
    pub first_ttl: Option<u8>,
}

#[derive(Args, Debug)]
#[command(after_help = MONITOR_EXIT_CODES)]
pub(crate) struct MonitorArgs {
    /// Targets to ping (quick start without a file): HOST or HOST:PORT, default port 4000.
    #[arg(
        value_name = "HOST[:PORT]",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub targets: Vec<String>,
    /// TOML configuration: groups of targets, checks, labels, /probe modules
    /// (see contrib/monitor.toml). SIGHUP re-reads it.
    #[arg(short = 'c', long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// HTTP address of /metrics, /probe and /health [default: 127.0.0.1:9464, or the file's `listen`].
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen, help_heading = LISTEN)]
    pub listen: Option<SocketAddr>,
    /// Time between ping probes to each target: 10ms..=1h.
    #[arg(short = 'i', long, value_name = "INTERVAL", default_value = "1s", value_parser = duration_in("interval", "10ms", "1h"), allow_negative_numbers = true, conflicts_with = "config", help_heading = PROBES)]
    pub interval: Duration,
    /// Per-probe timeout, 1ms..=1m: a reply after it is late, not lost.
    #[arg(short = 'W', long, value_name = "DURATION", default_value = "1s", value_parser = duration_in("timeout", "1ms", "1m"), allow_negative_numbers = true, conflicts_with = "config", help_heading = PROBES)]
    pub timeout: Duration,
    /// UDP payload size in bytes [default: 64; with a key 80].
    #[arg(short = 's', long = "size", value_name = "BYTES", value_parser = parse_size, allow_negative_numbers = true, conflicts_with = "config", help_heading = PROBES)]
    pub size: Option<usize>,
    /// DSCP code point 0..=63 for outgoing probes.
    #[arg(long, value_name = "DSCP", value_parser = number_in("DSCP", 0u8, 63), allow_negative_numbers = true, conflicts_with = "config", help_heading = PATH)]
    pub dscp: Option<u8>,
    /// Also write one JSON object per result to PATH (`-` or no value: stdout).
    #[arg(long = "json-lines", value_name = "PATH", num_args = 0..=1, default_missing_value = "-", help_heading = OUTPUT)]
    pub json_lines: Option<PathBuf>,
}

impl ServerArgs {
    /// The echo addresses: --listen, else the defaults.
    pub(crate) fn listens(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() {
            use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT),
            ]
        } else {
            self.listen.clone()
        }
    }

    /// Checks that need all options together, or the open-files limit
    /// (`nofile`, after raising it): a repeated or overlapping --listen,
    /// --allow-ports leaving nothing to test, port caps the descriptor limit
    /// cannot hold. Errors are one line naming the value.
    pub(crate) fn validate(&self, nofile: u64) -> Result<(), String> {
        for (i, a) in self.listen.iter().enumerate() {
            for b in &self.listen[..i] {
                if a == b {
                    return Err(format!("--listen '{a}' is given twice"));
                }
                if a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip().is_unspecified() || b.ip().is_unspecified())
                {
                    return Err(format!(
                        "--listen '{a}' overlaps --listen '{b}': the wildcard address already covers the other"
                    ));
                }
            }
        }
        let mut own: Vec<u16> = self
            .listens()
            .iter()
            .flat_map(|a| [a.port(), self.control.unwrap_or(a.port())])
            .collect();
        own.sort_unstable();
        own.dedup();
        if let Some(allowed) = &self.allow_ports {
            if allowed.iter().all(|p| own.binary_search(&p).is_ok()) {
                return Err(format!(
                    "--allow-ports '{allowed}' names only the server's own ports; no port would be left to test"
                ));
            }
        }
        let budget = udpreach_engine::server::port_budget(nofile);
        for (name, value) in [
            ("--max-total-ports", self.max_total_ports),
            ("--max-ports-per-session", self.max_ports_per_session),
        ] {
            if let Some(n) = value {
                if n as usize > budget {
                    return Err(format!(
                        "{name} '{n}' is more than the open-files limit allows ({nofile} descriptors: at most {budget} ports); raise it (ulimit -n, LimitNOFILE=) or give a smaller value"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// clap's error as one line in the `udpreach: ...` style (without the
/// prefix), naming the bad value; clap's tips become a short suggestion.
pub(crate) fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |k: ContextKind| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        Some(ContextValue::StyledStr(s)) => Some(s.to_string()),
        _ => None,
    };
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .trim_end_matches(':')
        .to_string();
    match e.kind() {
        ErrorKind::ValueValidation => {
            let value = text(ContextKind::InvalidValue).unwrap_or_default();
            let arg = text(ContextKind::InvalidArg).unwrap_or_default();
            match std::error::Error::source(e).map(|s| s.to_string()) {
                Some(src) if src.contains(&format!("'{value}'")) => src,
                Some(src) => format!("invalid value '{value}' for '{arg}': {src}"),
                None => first,
            }
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = text(ContextKind::InvalidArg).unwrap_or_default();
            let usage = text(ContextKind::Usage).unwrap_or_default();
            let usage = usage.split_whitespace().collect::<Vec<_>>().join(" ");
            let usage = usage.trim_start_matches("Usage: ");
            format!("missing {missing} (usage: {usage})")
        }
        _ => {
            let hint = text(ContextKind::SuggestedArg)
                .or_else(|| text(ContextKind::SuggestedSubcommand))
                .or_else(|| text(ContextKind::SuggestedValue));
            match (hint, text(ContextKind::ValidValue)) {
                (Some(h), _) => format!("{first} (did you mean '{h}'?)"),
                (None, Some(valid)) => format!("{first} (one of: {valid})"),
                (None, None) => first,
            }
        }
    }
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

fn parse_nat_ports(s: &str) -> Result<PortSpec, String> {
    let spec = parse_spec(s)?;
    let max = udpreach_wire::nat::MAX_FIXED_PORTS;
    if spec.len() > max {
        return Err(format!(
            "invalid port list '{s}': {} ports, at most {max} for nat",
            spec.len()
        ));
    }
    Ok(spec)
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
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
        "d" => value * 86400.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ecn_arg(s: &str) -> Result<u8, String> {
    udpreach_wire::probe::parse_ecn(s)
        .ok_or_else(|| format!("invalid ECN '{s}': use ect0, ect1, ce or not-ect"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_micros(100) {
        return Err(format!("invalid interval '{s}': the minimum is 100us"));
    }
    if d > Duration::from_secs(3600) {
        return Err(format!("invalid interval '{s}': the maximum is 1h"));
    }
    Ok(d)
}

/// A value parser for a duration within `lo..=hi` (both written as durations,
/// e.g. "1ms", "1h"): zero and absurd values get a one-line error naming the value.
fn duration_in(
    what: &'static str,
    lo: &'static str,
    hi: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = parse_duration(s).map_err(|_| {
            format!(
                "invalid {what} '{s}': expected a duration {lo}..={hi} (units us, ms, s, m, h, d)"
            )
        })?;
        let (min, max) = (
            parse_duration(lo).expect("bound"),
            parse_duration(hi).expect("bound"),
        );
        if d < min || d > max {
            return Err(format!("invalid {what} '{s}': must be {lo}..={hi}"));
        }
        Ok(d)
    }
}

/// A value parser for a whole number within `lo..=hi`; `-1` and `0` get the
/// same one-line error as any other value out of range.
fn number_in<T>(
    what: &'static str,
    lo: T,
    hi: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s: &str| match s.trim().parse::<T>() {
        Ok(n) if lo <= n && n <= hi => Ok(n),
        _ => Err(format!(
            "invalid {what} '{s}': must be a whole number {lo}..={hi}"
        )),
    }
}

pub(crate) const MIN_SIZE: usize = 16;
pub(crate) const MAX_SIZE_V6: usize = udpreach_wire::probe::MAX_DATAGRAM_V6;

fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid size '{s}': expected a number of bytes"))?;
    if !(MIN_SIZE..=MAX_SIZE_V6).contains(&n) {
        return Err(format!(
            "invalid size '{s}': must be {MIN_SIZE}..={} bytes ({MAX_SIZE_V6} over IPv6)",
            udpreach_wire::probe::MAX_DATAGRAM
        ));
    }
    Ok(n)
}

/// The man page of udpreach, or of one of its commands (`udpreach-ping`).
pub(crate) fn man_page(command: Option<&str>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cli = Cli::command();
    const PAGES: [(&str, &str); 7] = [
        ("monitor", "udpreach-monitor"),
        ("server", "udpreach-server"),
        ("ping", "udpreach-ping"),
        ("ports", "udpreach-ports"),
        ("mtu", "udpreach-mtu"),
        ("nat", "udpreach-nat"),
        ("trace", "udpreach-trace"),
    ];
    let page = PAGES
        .iter()
        .find(|(sub, _)| Some(*sub) == command)
        .and_then(|(sub, page)| {
            let cmd = cli.find_subcommand(sub)?.clone();
            Some(cmd.name(*page).version(VERSION))
        })
        .unwrap_or(cli);
    clap_mangen::Man::new(page).render(out)
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
