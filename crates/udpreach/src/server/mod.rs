//! `udpreach server`: the UDP echo service and the TCP control channel for
//! port tests, with the caps that keep it safe to leave running.

mod control;
mod echo;
mod header_port;
mod legacy;
mod mtu;
mod nat;
mod stamp;
mod test_port;
mod trace;

use crate::cli::{ServerArgs, DEFAULT_PORT};
use crate::platform;
use anyhow::Context;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;
use udpreach_engine::admission::Admission;
use udpreach_engine::reply_budget::{BudgetRates, ReplyBudget};
use udpreach_engine::responder::{EchoPolicy, SourcePorts};
use udpreach_engine::server::{default_allowed_ports, PortPolicy, ServerLimits};
use udpreach_wire::auth::SharedKey;

/// State shared by every session of one server.
pub(crate) struct ServerState {
    pub policy: PortPolicy,
    pub limits: ServerLimits,
    /// Pending handshakes, sessions and test ports, globally and per source.
    /// A pending handshake's entry holds the sender that evicts it.
    pub admission: Mutex<Admission<oneshot::Sender<()>>>,
    /// With a key: only authenticated sessions and probes are served.
    pub key: Option<SharedKey>,
    /// The per-destination budget every unauthenticated reply draws on.
    pub budget: Arc<Mutex<ReplyBudget>>,
    /// Source ports never answered (7, 19, the server's own, 1-1023 by default).
    pub source_ports: SourcePorts,
    /// A second address of this host for `udpreach nat`'s mapping and
    /// filtering tests (`--alt-address`).
    pub alt_address: Option<IpAddr>,
    /// The thread serving every session's test ports.
    pub test_ports: Arc<test_port::PortReactor>,
}

/// Locks the reply budget; a panic elsewhere leaves only counters behind,
/// still safe to use.
pub(crate) fn lock_budget(b: &Mutex<ReplyBudget>) -> MutexGuard<'_, ReplyBudget> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerState {
    pub(crate) fn admission(&self) -> MutexGuard<'_, Admission<oneshot::Sender<()>>> {
        // A panic elsewhere cannot leave the counts half-updated: every
        // method finishes its update before returning.
        self.admission.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves room for one more test port for `peer`, under the global
    /// cap and the source's share.
    pub(crate) fn reserve_port(&self, peer: IpAddr) -> bool {
        self.admission().reserve_port(peer)
    }

    pub(crate) fn release_ports(&self, peer: IpAddr, n: usize) {
        if n > 0 {
            self.admission().release_ports(peer, n);
        }
    }
}

/// The host's ephemeral port range (`lo`, `hi`), as the kernel has it for
/// this network namespace.
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

fn default_listens() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT),
    ]
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<u8> {
    // First of all: a signal during start-up then stops the server as
    // cleanly as one later (not the default action, which kills it).
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let nofile = platform::raise_nofile_limit();
    args.validate(nofile).map_err(anyhow::Error::msg)?;
    let mut limits = ServerLimits::for_nofile(nofile);
    limits.max_sessions = args.max_sessions as usize;
    limits.idle_timeout = args.idle_timeout;
    if let Some(n) = args.max_ports_per_session {
        limits.max_ports_per_session = n as usize;
    }
    if let Some(n) = args.max_total_ports {
        limits.max_total_ports = n as usize;
    }
    limits.max_probe_rate = args.max_probe_rate;
    limits.plain_echo_rate = args.plain_echo_rate;
    limits.max_datagram = args.max_datagram;
    limits.message_timeout = args.message_timeout;
    limits.set_shares(
        args.max_sessions_per_source.map(|n| n as usize),
        args.max_ports_per_source.map(|n| n as usize),
    );
    let allowed = match &args.allow_ports {
        Some(spec) => spec.clone(),
        None => {
            let spec = default_allowed_ports(ephemeral_range());
            if spec.is_empty() {
                anyhow::bail!("the host's ephemeral port range covers 1024-65535: choose test ports with --allow-ports");
            }
            spec
        }
    };
    let key = crate::shared_key::load(&args.key)?;
    if key.is_some() && args.no_plain_echo {
        tracing::info!(
            "--no-plain-echo is implied by a key: only authenticated probes are answered"
        );
    }
    let defaulted = args.listen.is_empty();
    let listens = if defaulted {
        default_listens()
    } else {
        args.listen.clone()
    };
    let mut reserved: Vec<u16> = listens.iter().map(|a| a.port()).collect();

    let mut echo_socks = Vec::new();
    for addr in &listens {
        match echo::bind(*addr) {
            Ok(s) => echo_socks.push((*addr, s)),
            // No IPv6 on this host: serve IPv4 alone rather than refuse to start.
            Err(e) if defaulted && addr.is_ipv6() => {
                tracing::warn!("IPv6 echo not available on {addr}: {e}");
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot listen on UDP {addr} (is another server running? choose another with --listen)")
                })
            }
        }
    }
    let mut stamp_socks = Vec::new();
    if let Some(stamp_at) = args.stamp {
        let addrs = match stamp_at {
            Some(a) => vec![a],
            None => vec![
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    udpreach_wire::stamp::PORT,
                ),
                SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    udpreach_wire::stamp::PORT,
                ),
            ],
        };
        for addr in &addrs {
            match stamp::bind(*addr) {
                Ok(s) => stamp_socks.push((*addr, s)),
                Err(e) if stamp_at.is_none() && addr.is_ipv6() => {
                    tracing::warn!("IPv6 STAMP reflector not available on {addr}: {e}");
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow::bail!(
                    "cannot listen on UDP {addr} for STAMP: {e} (ports below 1024 need root or CAP_NET_BIND_SERVICE; or give --stamp ADDR:PORT with a port above 1023)"
                ),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot listen on UDP {addr} for STAMP"))
                }
            }
            reserved.push(addr.port());
        }
    }
    let mut control_listeners = Vec::new();
    for (addr, _) in &echo_socks {
        let caddr = SocketAddr::new(addr.ip(), args.control.unwrap_or(addr.port()));
        reserved.push(caddr.port());
        let l = platform::tcp_listener(caddr)
            .and_then(TcpListener::from_std)
            .with_context(|| {
                format!("cannot listen on TCP {caddr} for control (choose another with --control)")
            })?;
        control_listeners.push((caddr, l));
    }
    reserved.sort_unstable();
    reserved.dedup();
    let source_ports = SourcePorts {
        own: reserved.clone(),
        allow_low: args.echo_low_ports,
    };
    let budget = Arc::new(Mutex::new(ReplyBudget::new(BudgetRates {
        pps: args.reply_budget,
        bytes: args.reply_budget_bytes,
        session_pps: limits.max_probe_rate,
        ..BudgetRates::default()
    })));

    let state = Arc::new(ServerState {
        policy: PortPolicy { allowed, reserved },
        admission: Mutex::new(Admission::new(
            limits.max_handshakes,
            limits.max_sessions,
            limits.max_total_ports,
            limits.shares,
        )),
        key,
        limits,
        budget: budget.clone(),
        source_ports: source_ports.clone(),
        alt_address: args.alt_address,
        test_ports: test_port::PortReactor::start().context("cannot start the test-port thread")?,
    });
    let echo_desc: Vec<String> = echo_socks.iter().map(|(a, _)| a.to_string()).collect();
    let ctl_desc: Vec<String> = control_listeners
        .iter()
        .map(|(a, _)| a.to_string())
        .collect();
    let l = &state.limits;
    let echo_mode = match (&state.key, args.no_plain_echo) {
        (Some(_), _) => "authenticated probes only".to_string(),
        (None, true) => "udpreach probes only".to_string(),
        (None, false) => format!("plain echo up to {}/s per source", l.plain_echo_rate),
    };
    println!(
        "udpreach server: UDP echo on {}; control on TCP {}; test ports {}; up to {} sessions ({} per source), {} ports per session, {} per source, {} in total; {}; probes up to {}/s per session; unauthenticated replies up to {}/s and {} bytes/s per address; datagrams up to {} bytes; {}",
        echo_desc.join(", "),
        ctl_desc.join(", "),
        state.policy.allowed,
        l.max_sessions,
        l.shares.sessions_per_source,
        l.max_ports_per_session,
        l.shares.ports_per_source,
        l.max_total_ports,
        echo_mode,
        l.max_probe_rate,
        args.reply_budget,
        args.reply_budget_bytes,
        l.max_datagram,
        if state.key.is_some() { "authentication required" } else { "no authentication (anyone may use it)" },
    );
    let echo_policy = EchoPolicy {
        key: state.key.clone(),
        plain_echo: !args.no_plain_echo,
        plain_echo_rate: l.plain_echo_rate,
        max_probe_rate: l.max_probe_rate,
        max_datagram: l.max_datagram,
        source_ports,
    };

    if !stamp_socks.is_empty() {
        let policy = udpreach_engine::stamp::ReflectorPolicy {
            key: state.key.as_ref().map(|k| k.stamp_hmac_key().to_vec()),
            stateful: !args.stamp_stateless,
            error_estimate: udpreach_wire::stamp::ErrorEstimate::new(
                args.stamp_clock_synchronized,
                args.stamp_ptp,
                22,
                1,
            ),
            source_ports: echo_policy.source_ports.clone(),
            max_datagram: l.max_datagram,
            max_sessions: udpreach_engine::stamp::DEFAULT_REFLECTOR_SESSIONS,
            session_idle: udpreach_engine::stamp::DEFAULT_SESSION_IDLE,
        };
        let desc: Vec<String> = stamp_socks.iter().map(|(a, _)| a.to_string()).collect();
        println!(
            "udpreach server: STAMP reflector on UDP {} ({}, {} mode, {} timestamps{})",
            desc.join(", "),
            if policy.stateful {
                "stateful"
            } else {
                "stateless"
            },
            if policy.key.is_some() {
                "authenticated"
            } else {
                "open"
            },
            if args.stamp_ptp { "PTP" } else { "NTP" },
            if args.stamp_clock_synchronized {
                ", clock marked synchronised"
            } else {
                ""
            },
        );
        for (addr, socks) in stamp_socks {
            stamp::spawn(socks, addr, policy.clone(), budget.clone())
                .context("cannot start the STAMP workers")?;
        }
    }
    let mut tasks = Vec::new();
    for (addr, socks) in echo_socks {
        echo::spawn(socks, addr, echo_policy.clone(), budget.clone())
            .context("cannot start the echo workers")?;
    }
    for (_, l) in control_listeners {
        tasks.push(tokio::spawn(control::accept_loop(l, state.clone())));
    }
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    for t in tasks {
        t.abort();
    }
    eprintln!("udpreach server: shutting down");
    Ok(0)
}
