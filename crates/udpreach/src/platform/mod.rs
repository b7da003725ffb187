//! The one place for raw socket options, `recvmsg` control messages and
//! resource limits. Everything above this module sees plain values.
//!
//! socket2 covers the portable options; nix covers TTL/hop-limit, kernel
//! receive timestamps and the ICMP error queue ([`errqueue`]);
//! `IP_MTU_DISCOVER` and `IP_MTU` are used through libc because neither
//! crate exposes them (the only `unsafe` in the project).

pub mod errqueue;

use errqueue::{PmtuMode, QueuedError};
use nix::sys::socket::{self as nsock, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Options applied to a UDP socket at creation.
#[derive(Clone, Debug, Default)]
pub struct UdpOptions {
    /// Outgoing TTL / hop limit.
    pub ttl: Option<u32>,
    /// DSCP code point (0..=63), written into the TOS / traffic-class byte.
    pub dscp: Option<u8>,
    /// Set Don't Fragment (IPv4) / never fragment locally (IPv6).
    pub dont_fragment: bool,
    /// Receive ICMP errors (`IP_RECVERR`); read them with [`AsyncUdp::recv_any`].
    pub recv_errors: bool,
    /// Receive buffer in bytes: a sweep's replies arrive in bursts.
    pub recv_buffer: Option<usize>,
    /// SO_REUSEPORT: several sockets (one per echo worker) share one address.
    pub reuse_port: bool,
}

/// What `recvmsg` told us beside the bytes.
#[derive(Clone, Copy, Debug)]
pub struct RecvMeta {
    pub len: usize,
    pub from: SocketAddr,
    /// TTL or hop limit of the received datagram.
    pub ttl: Option<u8>,
    /// Kernel receive time (SO_TIMESTAMPNS), realtime clock.
    pub kernel_rx: Option<SystemTime>,
}

/// Realtime clock in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unmaps `::ffff:a.b.c.d` so addresses compare equal whatever the socket family.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Creates a non-blocking UDP socket bound to `bind`, with receive metadata enabled.
pub fn udp_socket(bind: SocketAddr, opts: &UdpOptions) -> io::Result<UdpSocket> {
    let domain = Domain::for_address(bind);
    let sock = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    let v6 = bind.is_ipv6();
    if v6 {
        // IPv4 is served by its own socket; keeps `[::]:P` and `0.0.0.0:P` independent.
        sock.set_only_v6(true)?;
    }
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&bind.into())?;
    // Receive metadata is best effort: a missing option only costs precision.
    if v6 {
        let _ = nsock::setsockopt(&sock, sockopt::Ipv6RecvHopLimit, &true);
    } else {
        let _ = nsock::setsockopt(&sock, sockopt::Ipv4RecvTtl, &true);
    }
    let _ = nsock::setsockopt(&sock, sockopt::ReceiveTimestampns, &true);
    if let Some(ttl) = opts.ttl {
        if v6 {
            sock.set_unicast_hops_v6(ttl)?;
        } else {
            sock.set_ttl_v4(ttl)?;
        }
    }
    if let Some(dscp) = opts.dscp {
        let tos = u32::from(dscp) << 2;
        if v6 {
            sock.set_tclass_v6(tos)?;
        } else {
            sock.set_tos_v4(tos)?;
        }
    }
    if opts.dont_fragment {
        errqueue::set_pmtu_mode(&sock, v6, PmtuMode::DontFragment)?;
    }
    if opts.recv_errors {
        errqueue::enable_recv_errors(&sock, v6)?;
    }
    if let Some(bytes) = opts.recv_buffer {
        // Beyond net.core.rmem_max only with CAP_NET_ADMIN (RCVBUFFORCE); else best effort.
        if nsock::setsockopt(&sock, sockopt::RcvBufForce, &bytes).is_err() {
            let _ = sock.set_recv_buffer_size(bytes);
        }
    }
    Ok(sock.into())
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// One non-blocking `recvmsg`, returning the bytes' metadata.
pub fn recv_meta(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    recvmsg_meta(sock, buf, MsgFlags::MSG_DONTWAIT)
}

/// One `recvmsg` that waits (on a socket set to blocking), for worker threads.
pub fn recv_meta_wait(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    recvmsg_meta(sock, buf, MsgFlags::empty())
}

fn recvmsg_meta(sock: &UdpSocket, buf: &mut [u8], flags: MsgFlags) -> io::Result<RecvMeta> {
    let mut cmsg = nix::cmsg_space!(libc::c_int, nix::sys::time::TimeSpec, [u8; 64]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nsock::recvmsg::<SockaddrStorage>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags,
    )
    .map_err(io::Error::from)?;
    let mut meta = RecvMeta {
        len: msg.bytes,
        from: msg
            .address
            .as_ref()
            .and_then(to_socket_addr)
            .map(canonical)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?,
        ttl: None,
        kernel_rx: None,
    };
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                    meta.ttl = u8::try_from(t).ok();
                }
                ControlMessageOwned::ScmTimestampns(ts) => {
                    let d = Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
                    meta.kernel_rx = Some(UNIX_EPOCH + d);
                }
                _ => {}
            }
        }
    }
    Ok(meta)
}

/// What a socket with `recv_errors` delivered: a datagram or a queued error.
#[derive(Debug)]
pub enum Received {
    Datagram(RecvMeta),
    Error(QueuedError),
}

/// Reads the error queue first, then a datagram; `WouldBlock` when neither is there.
fn recv_any_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    // Bounded: each round either returns or consumed one deferred error.
    for _ in 0..8 {
        match errqueue::recv_error(sock, buf) {
            Ok(e) => return Ok(Received::Error(e)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match recv_meta(sock, buf) {
            Ok(m) => return Ok(Received::Datagram(m)),
            // The pending error of an ICMP message now in the queue: read it next.
            Err(e) if errqueue::is_deferred_icmp_errno(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// A UDP socket driven by tokio, with metadata-aware receive.
pub struct AsyncUdp {
    inner: AsyncFd<UdpSocket>,
}

impl AsyncUdp {
    pub fn new(sock: UdpSocket) -> io::Result<Self> {
        // SAFETY: the std socket owns its fd, which stays open and unchanged for
        // as long as the AsyncFd (its sole owner) lives.
        let inner = unsafe {
            AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(AsyncUdp { inner })
    }

    pub fn bind(addr: SocketAddr, opts: &UdpOptions) -> io::Result<Self> {
        Self::new(udp_socket(addr, opts)?)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<RecvMeta> {
        self.inner
            .async_io(Interest::READABLE, |s| recv_meta(s, buf))
            .await
    }

    /// Next datagram or queued ICMP error (socket opened with `recv_errors`).
    /// A queued error makes the socket report an error condition, not
    /// readability, so both are awaited.
    pub async fn recv_any(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self
                .inner
                .ready(Interest::READABLE | Interest::ERROR)
                .await?;
            match recv_any_now(self.inner.get_ref(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                r => return r,
            }
        }
    }

    /// Non-blocking [`Self::recv_any`].
    pub fn try_recv_any(&self, buf: &mut [u8]) -> io::Result<Received> {
        recv_any_now(self.inner.get_ref(), buf)
    }

    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |s| send_now(s, buf, to))
            .await
    }

    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        send_now(self.inner.get_ref(), buf, to)
    }

    /// Changes how Don't Fragment is handled for later sends.
    pub fn set_pmtu_mode(&self, mode: PmtuMode) -> io::Result<()> {
        let v6 = self.local_addr()?.is_ipv6();
        errqueue::set_pmtu_mode(self.inner.get_ref(), v6, mode)
    }

    /// IPv6: fragment at `mtu` (see [`errqueue::set_fragment_mtu_v6`]); a no-op for IPv4.
    pub fn set_fragment_mtu(&self, mtu: u32) -> io::Result<()> {
        if self.local_addr()?.is_ipv6() {
            errqueue::set_fragment_mtu_v6(self.inner.get_ref(), mtu)
        } else {
            Ok(())
        }
    }
}

/// One `sendto`. With `IP_RECVERR` a send first reports, once, the pending
/// error of an earlier ICMP message (ECONNREFUSED for a closed port...) and
/// sends nothing; that error is in the queue already, so the send is retried.
fn send_now(sock: &UdpSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
    let mut last = None;
    for _ in 0..3 {
        match sock.send_to(buf, to) {
            Err(e) if errqueue::is_deferred_icmp_errno(&e) => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::WouldBlock.into()))
}

/// Hands memory the allocator holds but no longer uses back to the kernel
/// (glibc keeps freed buffers in its arenas otherwise, so a server's RSS
/// would stay at its peak after the sessions that needed it have closed).
/// Called when a session's ports have all closed; a no-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free
    // lists; it takes no pointers from us and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft open-files limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    }
}

/// A TCP listener; IPv6 listeners are v6-only so `[::]:P` and `0.0.0.0:P` coexist.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}
