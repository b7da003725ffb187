//! The trace ports of one control session (capability "trace"): the
//! server's half of `udpreach trace`.
//!
//! * Upstream: each trace port counts which TTLs of the session's trace
//!   probes arrived and acknowledges each with an ack of the same size
//!   (never larger than the probe), within the session's probe rate and
//!   the server's per-destination reply budget.
//! * Downstream: on `TraceSend` the server sends TTL-limited probes from each
//!   named trace port to the address the session's probes came from (the
//!   client's address as the server sees it, so NAT-aware), reads the ICMP
//!   errors they draw from the port's error queue, and reports them. The
//!   probing is the engine's [`TraceProbing`], the same as the client's.
//!
//! Safety: datagrams are taken only from the control connection's peer IP
//! and sent only to an address such a datagram came from; each request is
//! bounded (`udpreach_wire::trace::check_send`: ports, TTLs, attempts), a
//! session may make [`MAX_SENDS_PER_SESSION`] of them, every datagram draws
//! on the per-destination reply budget, and trace ports count against the
//! session's and the source's test-port shares. In an authenticated session
//! every trace datagram carries a tag with the session key
//! (`TraceProbe::to_datagram`): untagged or forged probes are neither
//! counted nor acked, and a port takes each (TTL, attempt) once, so a
//! replayed probe is not acked again.

use super::lock_budget;
use super::test_port::SessionPorts;
use crate::platform::errqueue::PmtuMode;
use crate::platform::{AsyncUdp, Received, UdpOptions};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use udpreach_engine::replay::ReplayWindow;
use udpreach_engine::trace::{TraceConfig, TraceInput, TraceProbing};
use udpreach_engine::Engine;
use udpreach_wire::control::{ControlMsg, ErrorCode, TraceArrival, TraceHopError, TraceSendResult};
use udpreach_wire::icmp::IcmpError;
use udpreach_wire::trace::{
    check_send, check_size, quoted_trace_probe, QuotedHeader, TraceKind, TraceProbe, LOCATOR_TTL,
    MAX_SENDS_PER_SESSION, MAX_WAIT_MS,
};

/// ICMP errors waiting for a `TraceSend` to read them (the rest are dropped).
const ERROR_QUEUE: usize = 4096;
/// Longest one `TraceSend` may run, whatever the engine asks: under the
/// 15 s a client gives a pending request before it calls the connection
/// lost.
const SEND_DEADLINE: Duration = Duration::from_secs(14);
/// How long one `TraceSend` keeps probing hops that limit their ICMP
/// errors (one a second each, after a burst): within [`SEND_DEADLINE`].
const SEND_PATIENCE: Duration = Duration::from_secs(10);
/// Probes per second of a downstream trace when the client names no rate.
const DEFAULT_RATE: u32 = 1000;

#[derive(Default)]
struct Seen {
    /// TTLs that arrived (bit `ttl`).
    ttls: u128,
    ttl_left: Option<u8>,
    /// Where the session's probes to this port came from.
    client: Option<SocketAddr>,
    /// (TTL, attempt) pairs taken: a probe seen before is not acked again.
    taken: ReplayWindow,
}

struct TracePort {
    sock: Arc<AsyncUdp>,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Drop for TracePort {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An ICMP error one of our downstream probes drew.
struct DownError {
    port: u16,
    ttl: u8,
    attempt: u8,
    error: IcmpError,
    at: Instant,
}

pub(super) struct TraceSession {
    ports: HashMap<u16, TracePort>,
    errors_tx: mpsc::Sender<DownError>,
    errors_rx: mpsc::Receiver<DownError>,
    sends: u32,
    session: SessionPorts,
    /// The session's probe-rate cap (0: none).
    rate_cap: u32,
}

fn lock(m: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(code: ErrorCode, message: String) -> ControlMsg {
    ControlMsg::Error {
        code,
        message,
        fatal: false,
    }
}

impl TraceSession {
    pub(super) fn new(session: &SessionPorts, rate_cap: u32) -> Self {
        let (errors_tx, errors_rx) = mpsc::channel(ERROR_QUEUE);
        TraceSession {
            ports: HashMap::new(),
            errors_tx,
            errors_rx,
            sends: 0,
            session: session.clone(),
            rate_cap,
        }
    }

    /// Trace ports held (each counts as a test port).
    pub(super) fn len(&self) -> usize {
        self.ports.len()
    }

    pub(super) fn contains(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
    }

    /// Binds one trace port on `ip` (0: any free port); returns the port.
    pub(super) fn open(&mut self, ip: IpAddr, port: u16) -> std::io::Result<u16> {
        let opts = UdpOptions {
            recv_errors: true,
            ..UdpOptions::default()
        };
        let sock = Arc::new(AsyncUdp::bind(SocketAddr::new(ip, port), &opts)?);
        let bound = sock.local_addr()?.port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(serve(
            sock.clone(),
            bound,
            seen.clone(),
            self.session.clone(),
            self.errors_tx.clone(),
        ));
        self.ports.insert(bound, TracePort { sock, seen, task });
        Ok(bound)
    }

    pub(super) fn arrivals(&self, ports: &[u16]) -> ControlMsg {
        let arrivals = ports
            .iter()
            .map(|&port| {
                let (ttls, ttl_left) = self.ports.get(&port).map_or((0, None), |p| {
                    let s = lock(&p.seen);
                    (s.ttls, s.ttl_left)
                });
                TraceArrival {
                    port,
                    ttls: (1..=127u8).filter(|t| ttls & (1u128 << t) != 0).collect(),
                    ttl_left,
                }
            })
            .collect();
        ControlMsg::TraceArrived { arrivals }
    }

    /// Handles one `TraceSend`: traces downstream from each port, reports.
    pub(super) async fn send(&mut self, msg: ControlMsg) -> ControlMsg {
        let ControlMsg::TraceSend {
            ports,
            max_hops,
            attempts,
            wait_ms,
            rate,
            tos,
            size,
        } = msg
        else {
            return error(ErrorCode::BadRequest, "not a trace_send".into());
        };
        let padded = size.map_or(0, usize::from);
        if let Err(e) = check_send(ports.len(), max_hops, attempts)
            .and_then(|()| check_size(ports.len(), max_hops, attempts, padded))
        {
            return error(ErrorCode::BadRequest, format!("trace_send: {e}"));
        }
        if self.sends >= MAX_SENDS_PER_SESSION {
            return error(
                ErrorCode::BadRequest,
                format!("trace_send: the session's {MAX_SENDS_PER_SESSION} traces are spent"),
            );
        }
        self.sends += 1;
        // Where to send: the address this port's probes came from, else the
        // one any of the session's trace ports saw (same IP, checked on receipt).
        let any_client = self.ports.values().find_map(|p| lock(&p.seen).client);
        let mut dests: BTreeMap<u16, SocketAddr> = BTreeMap::new();
        let mut results: Vec<TraceSendResult> = Vec::with_capacity(ports.len());
        for &port in &ports {
            let mut r = TraceSendResult {
                port,
                to: None,
                sent: 0,
                hops: Vec::new(),
                error: None,
                unsure: Vec::new(),
                rate_limited: Vec::new(),
            };
            match self.ports.get(&port) {
                None => r.error = Some("not a trace port of this session".into()),
                Some(p) => match lock(&p.seen).client.or(any_client) {
                    Some(to) => {
                        r.to = Some(to.to_string());
                        dests.insert(port, to);
                    }
                    None => r.error = Some("no trace probe from you has arrived yet".into()),
                },
            }
            results.push(r);
        }
        while self.errors_rx.try_recv().is_ok() {}
        let asked = if rate == 0 { DEFAULT_RATE } else { rate };
        let rate = match self.rate_cap {
            0 => asked,
            cap => asked.min(cap),
        };
        let cfg = TraceConfig {
            max_hops,
            attempts,
            rate_pps: rate,
            wait: (wait_ms > 0).then(|| Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)))),
            // Hops that limit their errors are paced, within the deadline.
            patience: SEND_PATIENCE,
            canary: None,
            first_ttl: 1,
        };
        let traced: Vec<u16> = dests.keys().copied().collect();
        let started = Instant::now();
        let mut engine = TraceProbing::new(&traced, cfg, started);
        // Padded probes go with DF; and the TOS asked for.
        for &port in &traced {
            let Some(p) = self.ports.get(&port) else {
                continue;
            };
            if size.is_some() {
                let _ = p.sock.set_pmtu_mode(PmtuMode::Probe);
            }
            if let Some(tos) = tos {
                let _ = p.sock.set_tos(tos);
            }
        }
        // The headers the hops quote (DSCP/ECN per hop), when we may open a
        // raw ICMP socket; without one the hops are reported without them.
        let quoted = QuotedReader::start(&dests, self.session.token);
        let mut first_errors: BTreeMap<(u16, u8), IcmpError> = BTreeMap::new();
        let mut sent: HashMap<u16, u32> = HashMap::new();
        let mut withheld = 0u32;
        while !engine.is_done() && started.elapsed() < SEND_DEADLINE {
            while let Some(t) = engine.poll_transmit(Instant::now()) {
                let (Some(p), Some(&to)) = (self.ports.get(&t.port), dests.get(&t.port)) else {
                    continue;
                };
                let probe = TraceProbe {
                    token: self.session.token,
                    port: t.port,
                    ttl: t.ttl,
                    attempt: t.attempt,
                    kind: TraceKind::Down,
                }
                .to_datagram(self.session.key.as_ref(), padded);
                if !lock_budget(&self.session.budget).allow(to.ip(), probe.len(), Instant::now()) {
                    withheld += 1;
                    continue;
                }
                if p.sock.set_ttl(u32::from(t.ttl)).is_ok()
                    && p.sock.send_to(&probe, to).await.is_ok()
                {
                    *sent.entry(t.port).or_default() += 1;
                }
            }
            while engine.poll_event().is_some() {}
            if engine.is_done() {
                break;
            }
            let wake = engine
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(50))
                .min(started + SEND_DEADLINE);
            tokio::select! {
                e = self.errors_rx.recv() => if let Some(e) = e {
                    first_errors.entry((e.port, e.ttl)).or_insert(e.error);
                    engine.handle_input(TraceInput::Icmp { port: e.port, ttl: e.ttl, attempt: e.attempt, error: e.error }, e.at);
                },
                _ = tokio::time::sleep_until(wake.into()) => engine.handle_timeout(Instant::now()),
            }
        }
        for p in self.ports.values() {
            // Back to the defaults for acks.
            let _ = p.sock.set_ttl(64);
            if tos.is_some() {
                let _ = p.sock.set_tos(0);
            }
            if size.is_some() {
                let _ = p.sock.set_pmtu_mode(PmtuMode::KernelDefault);
            }
        }
        let quoted = quoted.finish().await;
        let traces = engine.into_results();
        for r in &mut results {
            r.sent = sent.get(&r.port).copied().unwrap_or(0);
            if let Some(t) = traces.iter().find(|t| t.port == r.port) {
                r.unsure = t.unsure.iter().copied().collect();
                r.rate_limited = t.rate_limited.iter().copied().collect();
                r.hops = t
                    .hops
                    .iter()
                    .filter_map(|(&ttl, a)| {
                        let icmp = *first_errors.get(&(r.port, ttl))?;
                        let q = quoted.get(&(r.port, ttl));
                        Some(TraceHopError {
                            ttl,
                            icmp,
                            rtt_us: a.rtt().map_or(0, |d| d.as_micros() as u64),
                            dscp: q.map(|q| q.dscp),
                            ecn: q.map(|q| q.ecn),
                        })
                    })
                    .collect();
            }
            if withheld > 0 && r.error.is_none() {
                r.error = Some(format!(
                    "{withheld} probes withheld: over the server's per-address reply budget"
                ));
            }
        }
        ControlMsg::TraceSent { results }
    }
}

/// Reads, during one `TraceSend`, the IP headers hops quote in the ICMP
/// errors our downstream probes draw (a raw ICMP socket gets the whole
/// error; the error queue only the quoted payload): the DSCP/ECN each probe
/// had at each hop. Only errors about this session's downstream probes to
/// the traced destinations are kept, at most one per (port, TTL).
struct QuotedReader {
    task: Option<JoinHandle<BTreeMap<(u16, u8), QuotedHeader>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl QuotedReader {
    fn start(dests: &BTreeMap<u16, SocketAddr>, token: u64) -> Self {
        let Some(v6) = dests.values().next().map(|d| d.is_ipv6()) else {
            return QuotedReader {
                task: None,
                stop: None,
            };
        };
        let raw = match crate::platform::raw_icmp_socket(v6) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("no raw ICMP socket (downstream DSCP per hop not reported): {e}");
                return QuotedReader {
                    task: None,
                    stop: None,
                };
            }
        };
        let ports: HashMap<u16, u16> = dests.iter().map(|(&p, d)| (p, d.port())).collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut found = BTreeMap::new();
            let mut buf = vec![0u8; 2048];
            let keep = |b: &[u8], found: &mut BTreeMap<(u16, u8), QuotedHeader>| {
                let Some((q, p)) = quoted_trace_probe(b, v6) else {
                    return;
                };
                let ours = p.token == token
                    && p.kind == TraceKind::Down
                    && ports.get(&p.port) == Some(&q.dport);
                if ours && found.len() < ERROR_QUEUE {
                    found.entry((p.port, p.ttl)).or_insert(q);
                }
            };
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    got = raw.recv_any(&mut buf) => {
                        if let Ok(Received::Datagram(m)) = got {
                            keep(&buf[..m.len], &mut found);
                        }
                    }
                }
            }
            // What arrived with the errors the engine already saw.
            for _ in 0..ERROR_QUEUE {
                match raw.try_recv_any(&mut buf) {
                    Ok(Received::Datagram(m)) => keep(&buf[..m.len], &mut found),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            found
        });
        QuotedReader {
            task: Some(task),
            stop: Some(stop),
        }
    }

    async fn finish(mut self) -> BTreeMap<(u16, u8), QuotedHeader> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => BTreeMap::new(),
        }
    }
}

impl Drop for QuotedReader {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// One trace port: counts and acks the session's upstream probes, passes the
/// errors its downstream probes draw to the session.
async fn serve(
    sock: Arc<AsyncUdp>,
    port: u16,
    seen: Arc<Mutex<Seen>>,
    session: SessionPorts,
    errors: mpsc::Sender<DownError>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        match sock.recv_any(&mut buf).await {
            Ok(Received::Datagram(meta)) => {
                let data = &buf[..meta.len];
                if meta.from.ip() != session.client {
                    continue;
                }
                // Untagged or forged in a keyed session: not counted, not acked.
                let Some(p) = TraceProbe::from_datagram(data, session.key.as_ref()) else {
                    continue;
                };
                if p.token != session.token
                    || p.kind != TraceKind::Up
                    || p.port != port
                    || p.ttl > 127
                {
                    continue;
                }
                if p.ttl == LOCATOR_TTL {
                    // Where downstream probes go; nothing else.
                    lock(&seen).client = Some(meta.from);
                    continue;
                }
                {
                    let mut s = lock(&seen);
                    if !s.taken.accept(p.replay_seq()) {
                        continue;
                    }
                    if s.ttls == 0 {
                        s.ttl_left = meta.ttl;
                    }
                    s.ttls |= 1u128 << p.ttl;
                    s.client = Some(meta.from);
                }
                let now = Instant::now();
                let rate_ok = session
                    .rate
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .try_take(now);
                let ack = TraceProbe {
                    kind: TraceKind::Ack,
                    ..p
                }
                .to_datagram(session.key.as_ref(), 0);
                if rate_ok && lock_budget(&session.budget).allow(meta.from.ip(), ack.len(), now) {
                    let _ = sock.try_send_to(&ack, meta.from);
                }
            }
            Ok(Received::Error(e)) => {
                let Some(p) = TraceProbe::decode(&e.quoted) else {
                    continue;
                };
                if p.token != session.token || p.kind != TraceKind::Down || p.port != port {
                    continue;
                }
                let _ = errors.try_send(DownError {
                    port,
                    ttl: p.ttl,
                    attempt: p.attempt,
                    error: e.error,
                    at: Instant::now(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}
