//! `udpreach nat`: the I/O driver around [`udpreach_engine::nat::IdleSearch`]
//! and the RFC 4787 mapping and filtering tests.
//!
//! Order matters (a Linux conntrack trap): the mapping test runs first, on
//! its own socket; the filtering test uses fresh sockets (an unsolicited
//! datagram from port B leaves a conntrack entry that would change a later
//! mapping of the same socket); every idle-timeout flow is a fresh socket.
//! The two idle-timeout searches (one exchange, active flow) run at once.

use crate::cli::NatArgs;
use crate::control_client::ControlClient;
use crate::platform::{AsyncUdp, Received, UdpOptions};
use crate::report::nat::{
    conclusion, keepalive, IdleTimeouts, MappingObserved, NatDocument, NatEvent, NatReport,
    NatStart, NotMeasured, PortTimeouts,
};
use crate::target::{resolve_async, unspecified_for};
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use udpreach_engine::nat::{
    classify_filtering, classify_mapping, FlowKind, IdleEvent, IdleInput, IdleSearch,
    IdleSearchConfig, IdleTransmit,
};
use udpreach_engine::Engine;
use udpreach_wire::auth::{DerivedKey, MIN_SEALED_LEN};
use udpreach_wire::control::ControlMsg;
use udpreach_wire::nat::{self as wire_nat, NatDatagram};
use udpreach_wire::probe::{ProbeHeader, ProbeKind, HEADER_LEN};

/// Flow ids: mapping and filtering sockets, then each search's own range.
const MAPPING_FLOW: u32 = 1;
const FILTER_FLOW: u32 = 100;
const ONE_EXCHANGE_FLOWS: u32 = 1_000;
const ACTIVE_FLOWS: u32 = 1_000_000;
/// Flow ids of the searches towards each -p port are this far apart.
const PORT_FLOW_STRIDE: u32 = 10_000;
/// How long a filtering test waits for a datagram from another port.
const FILTER_WAIT: Duration = Duration::from_millis(1500);
/// Sockets tried per filtering test before "filtered" is concluded.
const FILTER_TRIES: u32 = 2;
/// Requests per mapping answer before giving up.
const REQUEST_TRIES: u32 = 4;
const REQUEST_WAIT: Duration = Duration::from_millis(500);
/// The server closes a silent control session (30 s by default).
const CONTROL_KEEPALIVE: Duration = Duration::from_secs(10);
const CONTROL_WAIT: Duration = Duration::from_secs(15);

/// A datagram that came back to one of our sockets, when it arrived.
struct Arrival {
    flow_socket: u32,
    datagram: NatDatagram,
    at: Instant,
}

/// Our side of the session: probes are made and checked here.
struct Probes {
    token: u64,
    key: Option<DerivedKey>,
}

impl Probes {
    fn datagram(&self, flow: u32) -> Vec<u8> {
        let mut d = vec![
            0u8;
            if self.key.is_some() {
                MIN_SEALED_LEN
            } else {
                HEADER_LEN
            }
        ];
        ProbeHeader::request(ProbeKind::NatProbe, self.token, u64::from(flow))
            .encode(&mut d)
            .expect("the buffer holds the header");
        if let Some(k) = &self.key {
            k.seal(&mut d).expect("the buffer holds a tag");
        }
        d
    }

    fn parse(&self, data: &[u8]) -> Option<NatDatagram> {
        if let Some(k) = &self.key {
            k.verify(data).ok()?;
        }
        wire_nat::parse(data, self.token)
    }
}

/// One socket per flow, each with a task that forwards what it receives.
struct Sockets {
    target: SocketAddr,
    probes: Arc<Probes>,
    socks: HashMap<u32, (Arc<AsyncUdp>, JoinHandle<()>)>,
    tx: mpsc::Sender<Arrival>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for (_, (_, t)) in self.socks.drain() {
            t.abort();
        }
    }
}

impl Sockets {
    fn open(&mut self, id: u32) -> anyhow::Result<Arc<AsyncUdp>> {
        if let Some((s, _)) = self.socks.get(&id) {
            return Ok(s.clone());
        }
        let sock = Arc::new(
            AsyncUdp::bind(unspecified_for(&self.target, 0), &UdpOptions::default())
                .context("cannot open a UDP socket")?,
        );
        let (s, tx, probes) = (sock.clone(), self.tx.clone(), self.probes.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match s.recv_any(&mut buf).await {
                    Ok(Received::Datagram(meta)) => {
                        let at = Instant::now();
                        let data = &buf[..meta.len.min(buf.len())];
                        if let Some(datagram) = probes.parse(data) {
                            let a = Arrival {
                                flow_socket: id,
                                datagram,
                                at,
                            };
                            if tx.send(a).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Received::Error(_)) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        self.socks.insert(id, (sock.clone(), task));
        Ok(sock)
    }

    fn close(&mut self, id: u32) {
        if let Some((_, t)) = self.socks.remove(&id) {
            t.abort();
        }
    }

    async fn request(&mut self, socket: u32, flow: u32, to: SocketAddr) -> anyhow::Result<()> {
        let sock = self.open(socket)?;
        let d = self.probes.datagram(flow);
        // A send error (e.g. a local firewall) is like a lost datagram.
        let _ = sock.send_to(&d, to).await;
        Ok(())
    }
}

pub(crate) async fn run(args: NatArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let family = args.family.family();
    let target = resolve_async(&args.target, family).await?;
    let mut control = target;
    if let Some(p) = args.control {
        control.set_port(p);
    }
    let report = NatReport {
        format: args.output.format(),
        quiet: args.output.quiet,
    };
    let shared_key = crate::shared_key::load(&args.key)?;
    let mut ctl = ControlClient::connect(control).await?;
    let welcome = ctl.hello(shared_key.as_ref()).await?;
    if !welcome.capabilities.iter().any(|c| c == "nat") {
        bail!("the server at {control} cannot run NAT tests (no \"nat\" capability; upgrade it)");
    }
    let local_ip = ctl.local_addr()?.ip();
    let wanted: Vec<u16> = args.ports.iter().flat_map(|p| p.iter()).collect();
    let open = ControlMsg::NatOpen {
        fixed: wanted.clone(),
    };
    let (ports, fixed, alt) = match ctl.call(&open, CONTROL_WAIT).await? {
        ControlMsg::NatOpened {
            ports, fixed, alt, ..
        } if ports.len() >= 2 && fixed == wanted => (ports, fixed, alt),
        ControlMsg::Error { code, message, .. } => {
            bail!("the server refused NAT ports ({code:?}): {message}")
        }
        other => bail!("protocol error: expected nat_opened, got {other:?}"),
    };
    let at = |port: u16| SocketAddr::new(target.ip(), port);
    let (port_a, port_b) = (at(ports[0]), at(ports[1]));
    // The alternate address is the server's; we reach it as it names it.
    let alt = alt.filter(|a| a.is_ipv4() == target.is_ipv4());
    report.start(NatStart {
        target: args.target.clone(),
        server: control,
        max_idle_s: args.max_idle.as_secs_f64(),
        alt_address: alt,
    });
    let (tx, mut rx) = mpsc::channel(1024);
    let mut socks = Sockets {
        target,
        probes: Arc::new(Probes {
            token: welcome.token,
            key: welcome.session_key.clone(),
        }),
        socks: HashMap::new(),
        tx,
    };
    let mut not_measured = Vec::new();

    // 1. Mapping: one socket to port A, port B and the alternate address.
    let mut destinations = vec![port_a, port_b];
    destinations.extend(alt);
    let mut seen = Vec::new();
    for (i, to) in destinations.iter().enumerate() {
        let flow = MAPPING_FLOW + i as u32;
        seen.push(exchange(&mut socks, &mut rx, MAPPING_FLOW, flow, *to).await?);
    }
    let local_port = socks.socks[&MAPPING_FLOW].0.local_addr()?.port();
    let local = SocketAddr::new(local_ip, local_port);
    let (nat, mapping, observed, preservation, parity) = match (seen[0], seen[1]) {
        (Some(a), Some(b)) => {
            let seen_alt = seen.get(2).copied().flatten();
            let mapping = classify_mapping(local, a, b, seen_alt);
            let nat = mapping.is_some();
            (
                Some(nat),
                mapping,
                Some(MappingObserved {
                    local,
                    seen_a: a,
                    seen_b: b,
                    seen_alt,
                }),
                nat.then_some(a.port() == local_port),
                nat.then_some(a.port() % 2 == local_port % 2),
            )
        }
        _ => {
            not_measured.push(NotMeasured {
                part: "mapping".into(),
                reason: format!(
                    "no answer from the server's NAT ports {port_a} and {port_b} after {REQUEST_TRIES} tries each (UDP to them blocked?)"
                ),
            });
            (None, None, None, None, None)
        }
    };
    socks.close(MAPPING_FLOW);

    // 2. Filtering: fresh sockets speak only to port A; B (and the
    //    alternate address) then send to them.
    let mut filtering = None;
    if nat.is_some() {
        let from_b =
            filter_test(&mut socks, &mut rx, &mut ctl, FILTER_FLOW, port_a, port_b).await?;
        let from_alt = match alt {
            Some(a) => {
                Some(filter_test(&mut socks, &mut rx, &mut ctl, FILTER_FLOW + 10, port_a, a).await?)
            }
            None => None,
        };
        match from_b {
            Some(b) => filtering = Some(classify_filtering(b, from_alt.flatten())),
            None => not_measured.push(NotMeasured {
                part: "filtering".into(),
                reason: "the server's port A did not answer the test sockets".into(),
            }),
        }
    } else {
        not_measured.push(NotMeasured {
            part: "filtering".into(),
            reason: "the mapping test got no answer".into(),
        });
    }

    // 3. Idle timeouts, both kinds at once.
    let grace = Duration::from_secs(1) + ctl.handshake_rtt * 4;
    // Port A, or each -p port: both kinds of flow towards it.
    let dests: Vec<SocketAddr> = if fixed.is_empty() {
        vec![port_a]
    } else {
        fixed.iter().map(|&p| at(p)).collect()
    };
    let plan: Vec<(FlowKind, u32, SocketAddr)> = dests
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            let base = i as u32 * PORT_FLOW_STRIDE;
            [
                (FlowKind::OneExchange, ONE_EXCHANGE_FLOWS + base, *d),
                (FlowKind::ActiveFlow, ACTIVE_FLOWS + base, *d),
            ]
        })
        .collect();
    let mut searches: Vec<IdleSearch> = plan
        .iter()
        .map(|&(kind, first, _)| {
            let mut cfg = IdleSearchConfig::new(kind, args.max_idle);
            cfg.first_flow = first;
            cfg.grace = grace;
            if args.serial {
                cfg.serial = true;
                cfg.flows_per_gap = 1;
            }
            IdleSearch::new(cfg)
        })
        .collect();
    let dest_of: Vec<SocketAddr> = plan.iter().map(|p| p.2).collect();
    let mut per_port = Vec::new();
    if nat.is_some() {
        drive(
            &mut searches,
            &dest_of,
            &mut socks,
            &mut rx,
            &mut ctl,
            &report,
        )
        .await?;
        for (i, pair) in searches.chunks(2).enumerate() {
            per_port.push(PortTimeouts {
                port: dests[i].port(),
                timeouts: IdleTimeouts {
                    one_exchange: pair[0].result().cloned(),
                    active_flow: pair[1].result().cloned(),
                },
            });
        }
    } else {
        not_measured.push(NotMeasured {
            part: "idle_timeout".into(),
            reason: "the server's NAT port did not answer".into(),
        });
    }
    for p in &per_port {
        for r in [&p.timeouts.one_exchange, &p.timeouts.active_flow]
            .into_iter()
            .flatten()
        {
            if let (Some(why), None) = (&r.reason, r.expired_s) {
                let kind = serde_json::to_value(r.kind)?;
                let kind = kind.as_str().unwrap_or("");
                let part = if fixed.is_empty() {
                    format!("idle_timeout.{kind}")
                } else {
                    format!("per_port.{}.{kind}", p.port)
                };
                not_measured.push(NotMeasured {
                    part,
                    reason: why.clone(),
                });
            }
        }
    }
    let (one, active) = per_port
        .first()
        .map(|p| {
            (
                p.timeouts.one_exchange.clone(),
                p.timeouts.active_flow.clone(),
            )
        })
        .unwrap_or((None, None));
    if fixed.is_empty() {
        per_port.clear();
    }
    if alt.is_none() && nat == Some(true) {
        not_measured.push(NotMeasured {
            part: "address_dependence".into(),
            reason: "the server has no --alt-address: endpoint-independent and address-dependent mapping and filtering cannot be told apart".into(),
        });
    }
    let _ = ctl.bye().await;
    let idle_timeout = IdleTimeouts {
        one_exchange: one,
        active_flow: active,
    };
    let keepalive_s = std::iter::once(&idle_timeout)
        .chain(per_port.iter().map(|p| &p.timeouts))
        .filter_map(keepalive)
        .min();
    let mut doc = NatDocument {
        target: args.target.clone(),
        server: control,
        nat,
        mapping,
        mapping_observed: observed,
        filtering,
        port_preservation: preservation,
        port_parity: parity,
        keepalive_s,
        idle_timeout,
        per_port,
        conclusion: String::new(),
        not_measured,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    doc.conclusion = conclusion(&doc);
    report.finish(&doc);
    let complete = doc
        .not_measured
        .iter()
        .all(|n| n.part == "address_dependence");
    Ok(if complete { 0 } else { 1 })
}

/// One request from socket `socket` (flow id `flow`) to `to`, retried; the
/// mapped address the server saw, or `None` after every try.
async fn exchange(
    socks: &mut Sockets,
    rx: &mut mpsc::Receiver<Arrival>,
    socket: u32,
    flow: u32,
    to: SocketAddr,
) -> anyhow::Result<Option<SocketAddr>> {
    for _ in 0..REQUEST_TRIES {
        socks.request(socket, flow, to).await?;
        let until = tokio::time::Instant::now() + REQUEST_WAIT;
        while let Ok(Some(a)) = tokio::time::timeout_at(until, rx.recv()).await {
            if let NatDatagram::Reply { flow: f, seen_from } = a.datagram {
                if f == flow && a.flow_socket == socket {
                    return Ok(Some(seen_from));
                }
            }
        }
    }
    Ok(None)
}

/// Does a datagram from `from` reach a socket that spoke only to `port_a`?
/// `None` when port A itself did not answer; `Some(false)` only when every
/// one of [`FILTER_TRIES`] fresh sockets missed every copy.
async fn filter_test(
    socks: &mut Sockets,
    rx: &mut mpsc::Receiver<Arrival>,
    ctl: &mut ControlClient,
    first: u32,
    port_a: SocketAddr,
    from: SocketAddr,
) -> anyhow::Result<Option<bool>> {
    let mut tested = false;
    for i in 0..FILTER_TRIES {
        let id = first + i;
        let answered = exchange(socks, rx, id, id, port_a).await?.is_some();
        if !answered {
            socks.close(id);
            continue;
        }
        tested = true;
        let msg = ControlMsg::NatSend {
            flow: id,
            gap_ms: 0,
            from,
        };
        expect_scheduled(ctl.call(&msg, CONTROL_WAIT).await?)?;
        let until = tokio::time::Instant::now() + FILTER_WAIT;
        while let Ok(Some(a)) = tokio::time::timeout_at(until, rx.recv()).await {
            if a.flow_socket == id && matches!(a.datagram, NatDatagram::Late { flow } if flow == id)
            {
                socks.close(id);
                return Ok(Some(true));
            }
        }
        socks.close(id);
    }
    Ok(tested.then_some(false))
}

fn expect_scheduled(answer: ControlMsg) -> anyhow::Result<()> {
    match answer {
        ControlMsg::NatScheduled { .. } => Ok(()),
        ControlMsg::Error { code, message, .. } => {
            bail!("the server refused a NAT send ({code:?}): {message}")
        }
        other => bail!("protocol error: expected nat_scheduled, got {other:?}"),
    }
}

/// Runs the searches to the end (the engine loop of `udpreach_engine::engine`).
async fn drive(
    searches: &mut [IdleSearch],
    dests: &[SocketAddr],
    socks: &mut Sockets,
    rx: &mut mpsc::Receiver<Arrival>,
    ctl: &mut ControlClient,
    report: &NatReport,
) -> anyhow::Result<()> {
    let mut last_control = Instant::now();
    let bar = progress_bar(report);
    let mut round_end: HashMap<FlowKind, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        for (s, &dest) in searches.iter_mut().zip(dests) {
            while let Some(t) = s.poll_transmit(now) {
                match t {
                    IdleTransmit::Request { flow } => socks.request(flow, flow, dest).await?,
                    IdleTransmit::Schedule { flow, gap } => {
                        let msg = ControlMsg::NatSend {
                            flow,
                            gap_ms: gap.as_millis() as u32,
                            from: dest,
                        };
                        expect_scheduled(ctl.call(&msg, CONTROL_WAIT).await?)?;
                        last_control = Instant::now();
                    }
                    IdleTransmit::Close { flow } => socks.close(flow),
                }
            }
            let kind = s.kind();
            while let Some(e) = s.poll_event() {
                match e {
                    IdleEvent::Round {
                        round,
                        gaps,
                        deadline,
                    } => {
                        round_end.insert(kind, deadline);
                        report.event(NatEvent::Round {
                            kind,
                            round,
                            gaps_s: gaps.iter().map(Duration::as_secs_f64).collect(),
                        });
                    }
                    IdleEvent::Gap { gap, survived } => report.event(NatEvent::Gap {
                        kind,
                        gap_s: gap.as_secs_f64(),
                        survived,
                    }),
                    IdleEvent::Done(_) => {
                        round_end.remove(&kind);
                    }
                }
            }
        }
        if let Some(bar) = &bar {
            let left = round_end
                .values()
                .max()
                .map_or(0, |d| d.saturating_duration_since(Instant::now()).as_secs());
            bar.set_message(format!(
                "idle-timeout search: this round ends in up to {left} s"
            ));
            bar.tick();
        }
        if searches.iter().all(|s| s.is_done()) {
            break;
        }
        if last_control.elapsed() >= CONTROL_KEEPALIVE {
            // An empty `Arrivals` keeps the control session from idling out.
            ctl.call(&ControlMsg::Arrivals { ports: vec![] }, CONTROL_WAIT)
                .await?;
            last_control = Instant::now();
        }
        let next = searches
            .iter()
            .filter_map(|s| s.poll_timeout())
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(last_control + CONTROL_KEEPALIVE)
            .min(now + Duration::from_millis(500));
        tokio::select! {
            a = rx.recv() => {
                let Some(a) = a else { bail!("the receive tasks stopped") };
                let input = match a.datagram {
                    NatDatagram::Reply { flow, .. } => IdleInput::Reply { flow },
                    NatDatagram::Late { flow } => IdleInput::Arrived { flow },
                };
                if let Some(s) = searches.iter_mut().find(|s| s.owns(a.flow_socket)) {
                    s.handle_input(input, a.at);
                }
            }
            _ = tokio::time::sleep_until(next.into()) => {
                let now = Instant::now();
                for s in searches.iter_mut() {
                    s.handle_timeout(now);
                }
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

/// A spinner with the time left, on a terminal and in text mode only.
fn progress_bar(report: &NatReport) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if report.format.is_json() || report.quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    Some(bar)
}
