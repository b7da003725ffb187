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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use udpreach_engine::rate::TokenBucket;
use udpreach_engine::reply_budget::ReplyBudget;
use udpreach_engine::responder::{Answer, PortResponder, Received};
use udpreach_wire::auth::DerivedKey;

/// Probes are 64 or 80 bytes; anything longer is truncated, fails the
/// header or tag check, and is dropped.
const RECV_BUFFER: usize = 2048;

pub(super) struct TestPort {
    port: Arc<Mutex<ServedPort>>,
    id: u64,
    reactor: Arc<PortReactor>,
    /// Tell the reactor when dropped (`close_all` tells it once per batch).
    forget_on_drop: bool,
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
    /// opens (datagrams that arrive meanwhile wait in the socket, and an
    /// arrivals query reads them anyway).
    pub(super) fn open(addr: SocketAddr, session: &SessionPorts) -> Result<TestPort, OpenError> {
        let sock =
            platform::udp_socket(addr, &UdpOptions::default()).map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => OpenError::InUse,
                io::ErrorKind::PermissionDenied => OpenError::Denied,
                _ => OpenError::Failed(e),
            })?;
        let port = Arc::new(Mutex::new(ServedPort {
            sock: Some(sock),
            responder: PortResponder::new(session.token, session.key.clone(), session.client),
            session: session.clone(),
            arrivals: 0,
        }));
        let reactor = session.reactor.clone();
        let id = reactor.add(port.clone()).map_err(OpenError::Failed)?;
        Ok(TestPort {
            port,
            id,
            reactor,
            forget_on_drop: true,
        })
    }

    /// Closes the ports: when this returns their sockets are closed (which
    /// takes them out of the reactor's epoll set); the reactor forgets them
    /// at its next wake-up. Nothing here waits for the reactor, which
    /// serves every session and may be busy.
    pub(super) fn close_all(ports: impl IntoIterator<Item = TestPort>) {
        // One reactor serves the whole server: tell it once per batch.
        let mut reactor = None;
        let mut ids = Vec::new();
        for mut p in ports {
            p.close_socket();
            p.forget_on_drop = false;
            ids.push(p.id);
            reactor.get_or_insert_with(|| p.reactor.clone());
        }
        if let Some(r) = reactor {
            r.forget(ids);
        }
    }

    /// How many probes reached each port (0 for `None`: not open), counted
    /// after reading every datagram already waiting in their sockets, here
    /// on the control thread. The count must not lag the kernel: a reactor
    /// behind a burst would otherwise report probes that arrived as
    /// missing, and the client would call a reachable port blocked (seen
    /// with 16 clients sweeping one server at once: 35,474 wrong verdicts).
    pub(super) fn arrivals(ports: &[Option<&TestPort>]) -> Vec<u32> {
        let mut buf = vec![0u8; RECV_BUFFER];
        ports
            .iter()
            .map(|p| {
                p.map_or(0, |p| {
                    let mut port = lock_port(&p.port);
                    for _ in 0..DRAIN_PER_PORT {
                        if !port.receive_one(&mut buf) {
                            break;
                        }
                    }
                    port.arrivals
                })
            })
            .collect()
    }

    fn close_socket(&self) {
        lock_port(&self.port).sock = None;
    }
}

impl Drop for TestPort {
    /// A port dropped without `close_all` (a session torn down in a hurry)
    /// is closed all the same.
    fn drop(&mut self) {
        self.close_socket();
        if self.forget_on_drop {
            self.reactor.forget(vec![self.id]);
        }
    }
}

/// Datagrams one port's socket is read for at most by an arrivals query:
/// its probes (a few per round) and anything else that queued; the rest,
/// from a flood, waits for the reactor like any other datagram.
const DRAIN_PER_PORT: usize = 64;

/// A test port's state, shared by the reactor (which answers its
/// datagrams) and the control session (which counts and closes it).
struct ServedPort {
    /// `None` once closed.
    sock: Option<UdpSocket>,
    responder: PortResponder,
    session: SessionPorts,
    arrivals: u32,
}

/// Locks a port; a panic elsewhere leaves only counters behind.
fn lock_port(p: &Mutex<ServedPort>) -> MutexGuard<'_, ServedPort> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

enum Command {
    Add(u64, Arc<Mutex<ServedPort>>),
    /// These ports are closed: drop them from the table.
    Forget(Vec<u64>),
}

/// The thread serving every test port (module docs). Commands go through a
/// channel; an eventfd in the epoll set wakes the thread to read them.
pub(crate) struct PortReactor {
    commands: mpsc::Sender<Command>,
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
        let (reactor, commands) = Self::without_thread()?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        epoll
            .add(&reactor.wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
            .map_err(io::Error::from)?;
        let handle = reactor.clone();
        std::thread::Builder::new()
            .name("test-ports".into())
            .spawn(move || serve(&epoll, &handle, &commands))?;
        Ok(reactor)
    }

    /// The reactor without its thread: the commands wait in the returned
    /// receiver (for [`Self::start`], and for a test that must see exactly
    /// what the control thread reads of a port).
    fn without_thread() -> io::Result<(Arc<PortReactor>, mpsc::Receiver<Command>)> {
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        let (commands, rx) = mpsc::channel();
        let reactor = PortReactor {
            commands,
            wake,
            next_id: AtomicU64::new(WAKE + 1),
        };
        Ok((Arc::new(reactor), rx))
    }

    fn send(&self, c: Command) -> bool {
        self.commands.send(c).is_ok()
    }

    fn add(&self, port: Arc<Mutex<ServedPort>>) -> io::Result<u64> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.send(Command::Add(id, port)) {
            Ok(id)
        } else {
            Err(io::Error::other("the test-port thread has stopped"))
        }
    }

    fn forget(&self, ids: Vec<u64>) {
        // The sockets are closed already; a gone thread has nothing to forget.
        if self.send(Command::Forget(ids)) {
            self.wake();
        }
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
    let mut ports: HashMap<u64, Arc<Mutex<ServedPort>>> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Add(id, port) => {
                    let registered = {
                        let p = lock_port(&port);
                        // Closed before the reactor saw it: nothing to serve.
                        p.sock
                            .as_ref()
                            .map(|sock| epoll.add(sock, EpollEvent::new(EpollFlags::EPOLLIN, id)))
                    };
                    match registered {
                        Some(Ok(())) => {
                            ports.insert(id, port);
                        }
                        // Out of memory for the epoll set: the port is read
                        // only by arrivals queries, so its count stays true
                        // and its probes go unanswered, never miscounted.
                        Some(Err(e)) => tracing::warn!("test port not served: {e}"),
                        None => {}
                    }
                }
                Command::Forget(ids) => {
                    for id in ids {
                        ports.remove(&id);
                    }
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
            // A port closed since (its socket gone, or forgotten above)
            // has nothing to read.
            if let Some(port) = ports.get(&id) {
                lock_port(port).receive_one(&mut buf);
            }
        }
    }
}

impl ServedPort {
    /// Reads and answers one datagram (level-triggered: the next one, if
    /// any, makes the socket ready again); false when none was waiting or
    /// the port is closed.
    fn receive_one(&mut self, buf: &mut [u8]) -> bool {
        let Some(sock) = &self.sock else {
            return false;
        };
        let meta = match platform::recv_meta(sock, buf) {
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
        self.arrivals = self.responder.arrivals();
        match answer {
            Answer::Reply { len } => {
                let _ = platform::send_now(sock, &data[..len], meta.from);
            }
            Answer::Drop(reason) => {
                tracing::trace!(from = %meta.from, ?reason, "test port: dropped");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use udpreach_engine::reply_budget::BudgetRates;

    /// A flood waiting in one test port's socket: an arrivals query reads
    /// at most [`DRAIN_PER_PORT`] datagrams of it on the control thread
    /// and leaves the rest to the reactor, so a client cannot make the
    /// control thread read without end by flooding its own ports.
    #[test]
    fn an_arrivals_query_reads_at_most_its_share_of_a_flooded_port() {
        let (reactor, _commands) = PortReactor::without_thread().unwrap();
        let now = Instant::now();
        let budget = Arc::new(Mutex::new(ReplyBudget::new(BudgetRates::default())));
        let session = SessionPorts::new(
            7,
            TokenBucket::new(1_000, now),
            "127.0.0.1".parse().unwrap(),
            budget,
            reactor,
        );
        let port = match TestPort::open("127.0.0.1:0".parse().unwrap(), &session) {
            Ok(p) => p,
            Err(_) => panic!("cannot open a test port on loopback"),
        };
        let addr = lock_port(&port.port)
            .sock
            .as_ref()
            .unwrap()
            .local_addr()
            .unwrap();
        let flood = DRAIN_PER_PORT + 36;
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..flood {
            // Loopback delivers during send_to: all of them are queued.
            sender.send_to(&(i as u32).to_be_bytes(), addr).unwrap();
        }
        // Not probes of this session: nothing is counted, but each was read.
        assert_eq!(TestPort::arrivals(&[Some(&port)]), vec![0]);
        let mut left = 0;
        let mut buf = [0u8; 64];
        let guard = lock_port(&port.port);
        let sock = guard.sock.as_ref().unwrap();
        while platform::recv_meta(sock, &mut buf).is_ok() && left <= flood {
            left += 1;
        }
        assert_eq!(left, flood - DRAIN_PER_PORT, "what the query left waiting");
    }
}
