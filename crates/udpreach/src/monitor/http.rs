//! The agent's HTTP endpoint: `/metrics` (Prometheus), `/probe` (one check
//! now, blackbox-exporter style), `/health`. hyper 1 with hyper-util on the
//! binary's tokio runtime: the smallest well-kept HTTP/1.1 server that needs
//! no framework; three GET routes need no router.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once, headers within
//! [`HEADER_TIMEOUT`], at most [`MAX_PROBES`] `/probe` runs at once (more get
//! 429), each within its module's bound. `/probe` sends only what its
//! module says, to the target asked for: listen on loopback (the default)
//! or behind a firewall, as with blackbox_exporter.

use super::checks::{self, MtuTarget, PingTarget, PortsTarget};
use super::config::Module;
use super::metrics::Metrics;
use super::results::ResultSink;
use bytes_body::Full;
use http_body_util as bytes_body;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub(crate) const MAX_CONNECTIONS: usize = 256;
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_PROBES: usize = 16;
/// Longest target name accepted in `/probe`.
pub(crate) const MAX_TARGET_LEN: usize = 255;

/// What the endpoint serves; `modules` changes on reload.
pub(crate) struct Endpoint {
    pub metrics: Metrics,
    pub modules: Mutex<BTreeMap<String, Module>>,
    probes: Semaphore,
}

impl Endpoint {
    pub(crate) fn new(metrics: Metrics, modules: BTreeMap<String, Module>) -> Arc<Self> {
        Arc::new(Endpoint {
            metrics,
            modules: Mutex::new(modules),
            probes: Semaphore::new(MAX_PROBES),
        })
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut b = body.into();
    b.push('\n');
    text(status, "text/plain; charset=utf-8", b)
}

/// Serves until the listener fails.
pub(crate) async fn serve(listener: TcpListener, ep: Arc<Endpoint>) {
    let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match conns.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("monitor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ep = ep.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ep = ep.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &ep).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("monitor: http: {e}");
            }
            drop(permit);
        });
    }
}

async fn route(req: Request<Incoming>, ep: &Endpoint) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET");
    }
    match req.uri().path() {
        "/metrics" => exposition(&ep.metrics, &req),
        "/health" | "/-/healthy" => plain(StatusCode::OK, "ok"),
        "/probe" => {
            let om = wants_openmetrics(&req);
            probe(req.uri().query().unwrap_or(""), ep, om).await
        }
        "/" => plain(
            StatusCode::OK,
            "udpreach monitor: /metrics, /probe?target=HOST[:PORT]&module=NAME, /health",
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Prometheus asks for OpenMetrics in its Accept header; anything else
/// (curl, promtool) gets the Prometheus text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.contains("application/openmetrics-text"))
        })
}

fn exposition(m: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (body, ctype) = m.encode_as(wants_openmetrics(req));
    text(StatusCode::OK, ctype, body)
}

async fn probe(query: &str, ep: &Endpoint, openmetrics: bool) -> Response<Full<Bytes>> {
    let mut target = None;
    let mut module = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "target" => target = Some(v.into_owned()),
            "module" => module = Some(v.into_owned()),
            _ => {}
        }
    }
    let Some(target) = target else {
        return plain(StatusCode::BAD_REQUEST, "missing target=HOST[:PORT]");
    };
    if target.len() > MAX_TARGET_LEN {
        return plain(StatusCode::BAD_REQUEST, "target too long");
    }
    if let Err(e) = crate::target::split_host_port(&target, crate::cli::DEFAULT_PORT) {
        return plain(StatusCode::BAD_REQUEST, e);
    }
    let name = module.unwrap_or_else(|| "ping".into());
    let Some(m) = ep.modules.lock().expect("not poisoned").get(&name).cloned() else {
        return plain(StatusCode::BAD_REQUEST, format!("unknown module '{name}'"));
    };
    let Ok(_permit) = ep.probes.try_acquire() else {
        return plain(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_PROBES} probes already running"),
        );
    };
    let metrics = Metrics::for_probe();
    let tm = metrics.target(vec![("target".into(), target.clone())]);
    let key_file = match &m {
        Module::Ping { key_file, .. }
        | Module::Ports { key_file, .. }
        | Module::Mtu { key_file, .. } => key_file.clone(),
    };
    let key = match crate::shared_key::load(&crate::cli::KeyArgs { key_file }) {
        Ok(k) => k,
        Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    match m {
        Module::Ping {
            prober,
            ping,
            count,
            ..
        } => {
            let bound = ping.interval * count as u32 + ping.timeout + Duration::from_secs(5);
            let t = PingTarget {
                name: target,
                group: name,
                prober,
                check: ping,
                key,
                count: Some(count),
            };
            let _ = tokio::time::timeout(bound, checks::ping(t, tm, ResultSink::none())).await;
        }
        Module::Ports { ports, .. } => {
            let t = PortsTarget {
                name: target,
                group: name,
                check: ports,
                key,
            };
            checks::ports(t, tm, ResultSink::none(), false).await;
        }
        Module::Mtu { mtu, .. } => {
            let t = MtuTarget {
                name: target,
                group: name,
                check: mtu,
                key,
            };
            checks::mtu(t, tm, ResultSink::none(), false).await;
        }
    }
    let (body, ctype) = metrics.encode_as(openmetrics);
    text(StatusCode::OK, ctype, body)
}
