//! One test port opened for a session: answers only that session's probes,
//! from that session's client address (so it is never an open reflector),
//! and counts how many arrived. The decisions (client address, token, tag,
//! replay window, session rate, reply budget) are the engine's
//! [`PortResponder`].
//!
//! Every test port of every session is served by one thread, the
//! [`PortReactor`]: one level-triggered epoll set, one datagram read per
//! readiness, the socket closed (which takes it out of the set) when the
//! port closes. A sweep opens and closes a socket per port, tens of
//! thousands a second, so what each port costs besides the kernel's
//! socket, bind and close is the server's limit: a tokio task per port cost
//! a task, a registration and a deregistration (`epoll_ctl` twice), and a
//! second `recvmsg` per datagram to see `EAGAIN` (edge-triggered), and ran
//! on the control channel's thread (server profile of a full-range sweep:
//! `epoll_ctl` 9 %, `recvmsg` 11 %).
//!
//! Memory: a port is a socket and its responder (well under 1 KiB).

use super::lock_budget;
use crate::platform::{self, realtime_ns, UdpOptions};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use udpreach_engine::rate::TokenBucket;
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::{Answer, PortResponder, Received};
use udpreach_wire::auth::DerivedKey;

/// Probes are 64 or 80 bytes; anything longer is truncated, fails the
/// header or tag check, and is dropped.
const RECV_BUFFER: usize = 2048;

pub(super) struct TestPort {
    pub arrivals: Arc<AtomicU32>,
    id: u64,
    reactor: Arc<PortReactor>,
    /// Handed back to the reactor for closing (by `close_all`).
    closed: bool,
}

/// Why a port could not be opened.
pub(super) enum OpenError {
    InUse,
    Denied,
    Failed(io::Error),
}

/// What every test port of one session shares.
#[derive(Clone)]
pub(super) struct SessionPorts {
    pub token: u64,
    pub key: Option<DerivedKey>,
    /// The session's probe-rate budget, shared by all its ports.
    pub rate: Arc<Mutex<TokenBucket>>,
    /// The address the control connection came from: the only one answered.
    pub client: IpAddr,
    /// The server's per-destination reply budget.
    pub budget: Arc<Mutex<ReplyBudget>>,
    /// The thread that serves the test ports.
    pub reactor: Arc<PortReactor>,
}

impl SessionPorts {
    pub(super) fn new(
        token: u64,
        rate: TokenBucket,
        client: IpAddr,
        budget: Arc<Mutex<ReplyBudget>>,
        reactor: Arc<PortReactor>,
    ) -> Self {
        SessionPorts {
            reactor,
            token,
            key: None,
            rate: Arc::new(Mutex::new(rate)),
            client,
            budget,
        }
    }
}

impl TestPort {
    /// Binds `addr` and hands the socket to the reactor. The reactor takes
    /// it at its next wake-up: call [`PortReactor::wake`] after a batch of
    /// opens (datagrams that arrive meanwhile wait in the socket).
    pub(super) fn open(addr: SocketAddr, session: &SessionPorts) -> Result<TestPort, OpenError> {
        let sock =
            platform::udp_socket(addr, &UdpOptions::default()).map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => OpenError::InUse,
                io::ErrorKind::PermissionDenied => OpenError::Denied,
                _ => OpenError::Failed(e),
            })?;
        let arrivals = Arc::new(AtomicU32::new(0));
        let port = ServedPort {
            sock,
            responder: PortResponder::new(session.token, session.key.clone(), session.client),
            session: session.clone(),
            arrivals: arrivals.clone(),
        };
        let reactor = session.reactor.clone();
        let id = reactor.add(port).map_err(OpenError::Failed)?;
        Ok(TestPort {
            arrivals,
            id,
            reactor,
            closed: false,
        })
    }

    /// Closes the ports; when this returns their sockets are closed. One
    /// request to the reactor for the whole batch.
    pub(super) async fn close_all(ports: impl IntoIterator<Item = TestPort>) {
        let mut by_reactor: Vec<(Arc<PortReactor>, Vec<u64>)> = Vec::new();
        for mut p in ports {
            p.closed = true;
            match by_reactor
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(r, &p.reactor))
            {
                Some((_, ids)) => ids.push(p.id),
                None => by_reactor.push((p.reactor.clone(), vec![p.id])),
            }
        }
        for (reactor, ids) in by_reactor {
            let (done, handed_back) = tokio::sync::oneshot::channel();
            if reactor.remove(ids, Some(done)) {
                // The reactor hands the sockets back out of its epoll set
                // and they close here: closing costs more than the rest of
                // a port's life in the reactor, which serves every session.
                // If its thread is gone, so are they.
                drop(handed_back.await);
            }
        }
    }

    /// How many probes reached each port (0 for `None`: not open), counted
    /// after the reactor has read every datagram already waiting in their
    /// sockets. The count must not lag the kernel: a reactor that fell
    /// behind a burst would otherwise report probes that arrived as
    /// missing, and the client would call a reachable port blocked (seen
    /// with 16 clients sweeping one server at once).
    pub(super) async fn arrivals(ports: &[Option<&TestPort>]) -> Vec<u32> {
        let ids: Vec<u64> = ports.iter().flatten().map(|p| p.id).collect();
        let Some(reactor) = ports.iter().flatten().next().map(|p| &p.reactor) else {
            return vec![0; ports.len()];
        };
        let (done, counted) = tokio::sync::oneshot::channel();
        // Without the reactor (its thread gone) the counts are as last read.
        if reactor.send(Command::Drain(ids, done)) {
            reactor.wake();
            let _ = counted.await;
        }
        ports
            .iter()
            .map(|p| p.map_or(0, |p| p.arrivals.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for TestPort {
    /// A port dropped without `close_all` (a session torn down in a hurry)
    /// is still closed, without waiting.
    fn drop(&mut self) {
        if !self.closed {
            self.reactor.remove(vec![self.id], None);
        }
    }
}

/// A test port as the reactor holds it.
struct ServedPort {
    sock: UdpSocket,
    responder: PortResponder,
    session: SessionPorts,
    arrivals: Arc<AtomicU32>,
}

enum Command {
    Add(u64, Box<ServedPort>),
    /// Take these ports out of the epoll set and hand their sockets back to
    /// be closed (or, with no one to hand them to, close them).
    Remove(
        Vec<u64>,
        Option<tokio::sync::oneshot::Sender<Vec<UdpSocket>>>,
    ),
    /// Read what is waiting in these ports' sockets, then answer.
    Drain(Vec<u64>, tokio::sync::oneshot::Sender<()>),
}

/// Datagrams one port's socket is read for at most by a [`Command::Drain`]:
/// its probes (a few per round) and anything else that queued; the rest,
/// from a flood, waits for the loop like any other datagram.
const DRAIN_PER_PORT: usize = 64;

/// The thread serving every test port (module docs). Commands go through a
/// channel; an eventfd in the epoll set wakes the thread to read them.
pub(crate) struct PortReactor {
    commands: Mutex<mpsc::Sender<Command>>,
    wake: EventFd,
    next_id: AtomicU64,
}

/// The epoll data of the wake-up eventfd; ports get ids from 1.
const WAKE: u64 = 0;
/// Readiness events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;

impl PortReactor {
    /// Starts the thread; it runs until the process exits.
    pub(crate) fn start() -> io::Result<Arc<PortReactor>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        epoll
            .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
            .map_err(io::Error::from)?;
        let (tx, rx) = mpsc::channel();
        let reactor = Arc::new(PortReactor {
            commands: Mutex::new(tx),
            wake,
            next_id: AtomicU64::new(WAKE + 1),
        });
        let handle = reactor.clone();
        std::thread::Builder::new()
            .name("test-ports".into())
            .spawn(move || serve(&epoll, &handle, &rx))?;
        Ok(reactor)
    }

    fn send(&self, c: Command) -> bool {
        let tx = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(c).is_ok()
    }

    fn add(&self, port: ServedPort) -> io::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.send(Command::Add(id, Box::new(port))) {
            Ok(id)
        } else {
            Err(io::Error::other("the test-port thread has stopped"))
        }
    }

    fn remove(
        &self,
        ids: Vec<u64>,
        done: Option<tokio::sync::oneshot::Sender<Vec<UdpSocket>>>,
    ) -> bool {
        let sent = self.send(Command::Remove(ids, done));
        self.wake();
        sent
    }

    /// Has the thread take the commands sent so far.
    pub(crate) fn wake(&self) {
        // Only fails when the counter would overflow, i.e. the thread is
        // already due to wake.
        let _ = self.wake.write(1);
    }
}

/// The reactor's loop: commands first, then one datagram per ready port.
fn serve(epoll: &Epoll, reactor: &PortReactor, commands: &mpsc::Receiver<Command>) {
    let mut ports: HashMap<u64, Box<ServedPort>> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Add(id, port) => {
                    let ev = EpollEvent::new(EpollFlags::EPOLLIN, id);
                    match epoll.add(&port.sock, ev) {
                        Ok(()) => {
                            ports.insert(id, port);
                        }
                        // Out of memory for the epoll set: the port stays
                        // silent, like a port whose probes were dropped,
                        // and its arrivals stay 0, so it is never called
                        // return-blocked.
                        Err(e) => tracing::warn!("test port not served: {e}"),
                    }
                }
                Command::Drain(ids, done) => {
                    for id in ids {
                        if let Some(port) = ports.get_mut(&id) {
                            for _ in 0..DRAIN_PER_PORT {
                                if !port.receive_one(&mut buf) {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = done.send(());
                }
                Command::Remove(ids, None) => {
                    for id in ids {
                        // Closing the socket takes it out of the epoll set.
                        ports.remove(&id);
                    }
                }
                Command::Remove(ids, Some(done)) => {
                    let mut socks = Vec::with_capacity(ids.len());
                    for id in ids {
                        if let Some(port) = ports.remove(&id) {
                            let _ = epoll.delete(&port.sock);
                            socks.push(port.sock);
                        }
                    }
                    // If the asker is gone the sockets close here.
                    let _ = done.send(socks);
                }
            }
        }
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("test ports: epoll_wait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        for ev in &events[..n] {
            let id = ev.data();
            if id == WAKE {
                let _ = reactor.wake.read();
                continue;
            }
            // An event for a port removed above in this turn finds nothing.
            if let Some(port) = ports.get_mut(&id) {
                port.receive_one(&mut buf);
            }
        }
    }
}

impl ServedPort {
    /// Reads and answers one datagram (level-triggered: the next one, if
    /// any, makes the socket ready again); false when none was waiting.
    fn receive_one(&mut self, buf: &mut [u8]) -> bool {
        let meta = match platform::recv_meta(&self.sock, buf) {
            Ok(m) => m,
            Err(e) => return e.kind() != io::ErrorKind::WouldBlock,
        };
        let data = &mut buf[..meta.len];
        let rx = Received {
            from: meta.from,
            ttl: meta.ttl,
            rx_ns: realtime_ns(),
            tos: meta.tos,
        };
        let session = &self.session;
        let answer = {
            // A poisoned lock only means another thread panicked mid-update
            // of a token count; the bucket is still usable.
            let mut bucket = session.rate.lock().unwrap_or_else(|p| p.into_inner());
            self.responder.respond(
                data,
                &rx,
                realtime_ns(),
                &mut bucket,
                &mut lock_budget(&session.budget),
                Instant::now(),
            )
        };
        self.arrivals
            .store(self.responder.arrivals(), Ordering::Relaxed);
        match answer {
            Answer::Reply { len } => {
                let _ = platform::send_now(&self.sock, &data[..len], meta.from);
            }
            Answer::Drop(reason) => {
                tracing::trace!(from = %meta.from, ?reason, "test port: dropped");
            }
        }
        true
    }
}
