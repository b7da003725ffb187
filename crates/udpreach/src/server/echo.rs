//! The echo port: plain datagrams come back byte for byte; udpreach probes
//! come back stamped, the same size. Nothing a client sends can stop the loop.

use crate::platform::{realtime_ns, AsyncUdp};
use std::time::{Instant, UNIX_EPOCH};
use udpreach_engine::server::{classify_echo, stamp_reply, EchoAction, FlowTable};
use udpreach_wire::probe::restamp_tx;

pub async fn serve(sock: AsyncUdp) {
    let mut buf = vec![0u8; 65536];
    let mut flows = FlowTable::new(65536, std::time::Duration::from_secs(300));
    loop {
        let meta = match sock.recv(&mut buf).await {
            Ok(m) => m,
            Err(e) => {
                // ICMP errors from earlier sends (ECONNREFUSED...) and the like: not fatal.
                tracing::debug!("echo recv: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let data = &mut buf[..meta.len];
        match classify_echo(data) {
            EchoAction::Plain => {}
            EchoAction::Drop => continue,
            EchoAction::Probe(h) => {
                let rx_ns = meta
                    .kernel_rx
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or_else(realtime_ns, |d| d.as_nanos() as u64);
                let count = flows.count(meta.from.ip(), h.token, Instant::now());
                stamp_reply(data, meta.from, meta.ttl, rx_ns, count);
                restamp_tx(data, realtime_ns());
            }
        }
        if let Err(e) = sock.try_send_to(data, meta.from) {
            tracing::debug!("echo send to {}: {e}", meta.from);
        }
    }
}
