//! The one place for raw socket options, `recvmsg` control messages and
//! resource limits. Everything above this module sees plain values.
//!
//! socket2 covers the portable options; nix covers TTL/hop-limit, kernel
//! receive timestamps and the ICMP error queue ([`errqueue`]);
//! `IP_MTU_DISCOVER` and `IP_MTU` are used through libc because neither
//! crate exposes them (the only `unsafe` in the project).

pub(crate) mod batch;
pub(crate) mod errqueue;

use errqueue::{ErrQueueEntry, PmtuMode, QueuedError, TxTimestamp};
use nix::sys::socket::{self as nsock, sockopt, SockaddrLike, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Options applied to a UDP socket at creation.
#[derive(Clone, Debug, Default)]
pub(crate) struct UdpOptions {
    /// Outgoing TTL / hop limit.
    pub ttl: Option<u32>,
    /// DSCP code point (0..=63), written into the TOS / traffic-class byte.
    pub dscp: Option<u8>,
    /// ECN codepoint (0..=3) for the low two bits of that byte.
    pub ecn: Option<u8>,
    /// Set Don't Fragment (IPv4) / never fragment locally (IPv6).
    pub dont_fragment: bool,
    /// Receive ICMP errors (`IP_RECVERR`); read them with [`AsyncUdp::recv_any`].
    pub recv_errors: bool,
    /// Receive buffer in bytes: a sweep's replies arrive in bursts.
    pub recv_buffer: Option<usize>,
    /// SO_REUSEPORT: several sockets (one per echo worker) share one address.
    pub reuse_port: bool,
    /// Software transmit timestamps (`SO_TIMESTAMPING`); read them with
    /// [`AsyncUdp::recv_timed`]. Best effort: a kernel without them gives none.
    pub tx_timestamps: bool,
    /// Report each datagram's TOS / traffic class (`IP_RECVTOS`, `IPV6_RECVTCLASS`).
    pub recv_tos: bool,
    /// Report how many datagrams the socket dropped for a full receive
    /// buffer (`SO_RXQ_OVFL`, [`RecvMeta::drops`]): our own loss, which
    /// must not be taken for the network's.
    pub count_drops: bool,
}

/// What `recvmsg` told us beside the bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecvMeta {
    pub len: usize,
    pub from: SocketAddr,
    /// TTL or hop limit of the received datagram.
    pub ttl: Option<u8>,
    /// Kernel receive time (SO_TIMESTAMPNS), realtime clock.
    pub kernel_rx: Option<SystemTime>,
    /// The address the datagram was sent to, and the interface it came in
    /// on (`IP_PKTINFO` / `IPV6_RECVPKTINFO`; sockets bound to a wildcard
    /// address only): where an answer must come from.
    pub local: Option<(IpAddr, u32)>,
    /// The TOS byte / traffic class it arrived with (DSCP and ECN), on
    /// sockets opened with `UdpOptions::recv_tos`.
    pub tos: Option<u8>,
    /// Datagrams the socket had dropped so far because its receive buffer
    /// was full, counted when this one was queued (`SO_RXQ_OVFL`, on
    /// sockets opened with `UdpOptions::count_drops`; absent while the
    /// count is 0).
    pub drops: Option<u32>,
}

impl RecvMeta {
    /// The kernel's receive time in nanoseconds since the Unix epoch, or
    /// `fallback` (a clock read) when the kernel gave none.
    pub(crate) fn rx_unix_ns_or(&self, fallback: u64) -> u64 {
        self.kernel_rx
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(fallback, |d| d.as_nanos() as u64)
    }
}

/// A raw ICMP (IPv4) or ICMPv6 socket, read through the same `recvmsg`
/// path as the UDP sockets (`AsyncUdp::recv_any`): `udpreach trace` reads
/// from it the IP header that routers quote in their errors (the error
/// queue hands back only the quoted payload). Needs CAP_NET_RAW.
pub(crate) fn raw_icmp_socket(v6: bool) -> io::Result<AsyncUdp> {
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let sock = Socket::new(domain, Type::RAW.nonblocking().cloexec(), Some(proto))?;
    AsyncUdp::new(sock.into())
}

/// Realtime clock in nanoseconds since the Unix epoch.
pub(crate) fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Unmaps `::ffff:a.b.c.d` so addresses compare equal whatever the socket family.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Creates a non-blocking UDP socket bound to `bind`, with receive metadata enabled.
pub(crate) fn udp_socket(bind: SocketAddr, opts: &UdpOptions) -> io::Result<UdpSocket> {
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
    if bind.ip().is_unspecified() {
        // Which of the host's addresses a datagram was sent to, so that the
        // answer leaves from that address (see `batch::Reply::local`).
        if v6 {
            nsock::setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)?;
        } else {
            nsock::setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)?;
        }
    }
    if let Some(ttl) = opts.ttl {
        if v6 {
            sock.set_unicast_hops_v6(ttl)?;
        } else {
            sock.set_ttl_v4(ttl)?;
        }
    }
    if opts.dscp.is_some() || opts.ecn.is_some() {
        let tos = u32::from(opts.dscp.unwrap_or(0)) << 2 | u32::from(opts.ecn.unwrap_or(0) & 3);
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
    if opts.recv_tos {
        if v6 {
            nsock::setsockopt(&sock, sockopt::Ipv6RecvTClass, &true)?;
        } else {
            nsock::setsockopt(&sock, sockopt::IpRecvTos, &true)?;
        }
    }
    if opts.count_drops {
        nsock::setsockopt(&sock, sockopt::RxqOvfl, &1)?;
    }
    if opts.tx_timestamps {
        if let Err(e) = errqueue::enable_tx_timestamps(&sock) {
            tracing::debug!("no transmit timestamps: {e}");
        }
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
pub(crate) fn recv_meta(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = CmsgBuf::default();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_name = std::ptr::from_mut(&mut name).cast();
    m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = control.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of::<CmsgBuf>() as _;
    // SAFETY: every pointer in `m` is to a local (or `buf`) that outlives
    // the call, with its length beside it.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut m, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote msg_namelen bytes (at most the storage's
    // size) of a socket address into `name`.
    let from = unsafe {
        SockaddrStorage::from_raw(
            std::ptr::from_ref(&name).cast::<libc::sockaddr>(),
            Some(m.msg_namelen),
        )
    };
    let mut meta = RecvMeta {
        len: n as usize,
        from: from
            .as_ref()
            .and_then(to_socket_addr)
            .map(canonical)
            .ok_or_else(|| io::Error::other("datagram without a source address"))?,
        ttl: None,
        kernel_rx: None,
        local: None,
        tos: None,
        drops: None,
    };
    read_cmsgs(&m, &mut meta);
    Ok(meta)
}

/// Control-message space per datagram (8-byte aligned): received TTL, TOS,
/// timestamps, drop count and packet information (200 bytes with all of
/// them), or sent
/// packet information and TOS.
type CmsgBuf = [u64; 32];

/// Reads TTL / hop limit, TOS / traffic class, the kernel's receive time,
/// the socket's drop count and the packet information from the control messages of `m`, a header
/// of one received datagram ([`recv_meta`], [`batch::RecvBatch`]).
///
/// By hand rather than with nix's `ControlMessageOwned`, because the
/// batched receive cannot use nix (see [`batch`]) and one parser serves
/// both.
fn read_cmsgs(m: &libc::msghdr, meta: &mut RecvMeta) {
    use std::mem::size_of;
    use std::ptr;
    // SAFETY: m is a header the kernel filled: msg_control points at our
    // buffer and msg_controllen is what the kernel wrote into it. The CMSG
    // macros stay inside that length; each value is read unaligned and only
    // if its message is long enough to hold it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let len = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            let int = || (len >= size_of::<libc::c_int>()).then(|| read_int(data));
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_TTL) | (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    meta.ttl = int().and_then(|t| u8::try_from(t).ok());
                }
                (libc::IPPROTO_IP, libc::IP_TOS) if len >= 1 => meta.tos = Some(*data),
                (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) if len >= size_of::<u32>() => {
                    meta.drops = Some(ptr::read_unaligned(data.cast::<u32>()));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                    meta.tos = int().and_then(|t| u8::try_from(t).ok());
                }
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) if len >= size_of::<libc::timespec>() => {
                    let ts = ptr::read_unaligned(data.cast::<libc::timespec>());
                    let d = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                    meta.kernel_rx = Some(UNIX_EPOCH + d);
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if len >= size_of::<libc::in_pktinfo>() => {
                    let pi = ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    let ip = std::net::Ipv4Addr::from(pi.ipi_addr.s_addr.to_ne_bytes());
                    meta.local = Some((IpAddr::V4(ip), pi.ipi_ifindex as u32));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                    if len >= size_of::<libc::in6_pktinfo>() =>
                {
                    let pi = ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    let ip = std::net::Ipv6Addr::from(pi.ipi6_addr.s6_addr);
                    meta.local = Some((IpAddr::V6(ip), pi.ipi6_ifindex));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
}

/// # Safety
/// `p` points at (at least) an int's worth of readable bytes.
unsafe fn read_int(p: *const u8) -> libc::c_int {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::read_unaligned(p.cast::<libc::c_int>()) }
}

/// The `IP_PKTINFO` that makes a datagram leave from `ip`.
fn pktinfo_v4(ip: std::net::Ipv4Addr) -> libc::in_pktinfo {
    libc::in_pktinfo {
        // 0: route as usual, only the source address is fixed.
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    }
}

/// The `IPV6_PKTINFO` that makes a datagram leave from `ip` (on interface
/// `ifindex` if `ip` is link-local).
fn pktinfo_v6(ip: std::net::Ipv6Addr, ifindex: u32) -> libc::in6_pktinfo {
    libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        // Link-local sources need their interface; others route as usual.
        ipi6_ifindex: if ip.segments()[0] & 0xffc0 == 0xfe80 {
            ifindex
        } else {
            0
        },
    }
}

/// What a socket with `recv_errors` delivered: a datagram or a queued error.
#[derive(Debug)]
pub(crate) enum Received {
    Datagram(RecvMeta),
    Error(QueuedError),
}

/// What [`AsyncUdp::recv_timed`] delivers: as [`Received`], or the transmit
/// timestamp of a datagram we sent.
#[derive(Debug)]
pub(crate) enum ReceivedOrSent {
    Received(Received),
    Sent(TxTimestamp),
}

/// Reads the error queue first, then a datagram; `WouldBlock` when neither is there.
fn recv_timed_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<ReceivedOrSent> {
    // Bounded: each round either returns or consumed one deferred error.
    for _ in 0..8 {
        match errqueue::recv_error(sock, buf) {
            Ok(ErrQueueEntry::Error(e)) => return Ok(ReceivedOrSent::Received(Received::Error(e))),
            Ok(ErrQueueEntry::Sent(t)) => return Ok(ReceivedOrSent::Sent(t)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match recv_meta(sock, buf) {
            Ok(m) => return Ok(ReceivedOrSent::Received(Received::Datagram(m))),
            // The pending error of an ICMP message now in the queue: read it next.
            Err(e) if errqueue::is_deferred_icmp_errno(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// [`recv_timed_now`] for sockets that do not ask for transmit timestamps
/// (any that arrive anyway are skipped).
fn recv_any_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    for _ in 0..8 {
        match recv_timed_now(sock, buf)? {
            ReceivedOrSent::Received(r) => return Ok(r),
            ReceivedOrSent::Sent(_) => continue,
        }
    }
    Err(io::ErrorKind::WouldBlock.into())
}

/// Datagrams the kernel has dropped at `sock` so far (its receive buffer
/// was full, mostly), read now from the `drops` column of `/proc/net/udp`
/// or `udp6` for the socket's inode. `SO_RXQ_OVFL` tells the same only
/// with the next datagram that arrives, so drops after the last one would
/// go unseen. (One line of procfs: no crate for that.)
pub(crate) fn socket_drops(sock: &UdpSocket) -> io::Result<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", sock.as_raw_fd()))?;
    let inode = link
        .to_str()
        .and_then(|l| l.strip_prefix("socket:["))
        .and_then(|l| l.strip_suffix(']'))
        .ok_or_else(|| io::Error::other(format!("not a socket: {}", link.display())))?;
    let table = if sock.local_addr()?.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    };
    let text = std::fs::read_to_string(table)?;
    udp_table_drops(&text, inode)
        .ok_or_else(|| io::Error::other(format!("socket {inode} not in {table}")))
}

/// The `drops` of the socket with `inode` in a `/proc/net/udp` table:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops`.
fn udp_table_drops(table: &str, inode: &str) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(9) == Some(&inode))
            .then(|| fields.get(12)?.parse().ok())
            .flatten()
    })
}

/// A UDP socket driven by tokio, with metadata-aware receive.
pub(crate) struct AsyncUdp {
    inner: AsyncFd<UdpSocket>,
}

impl AsyncUdp {
    pub(crate) fn new(sock: UdpSocket) -> io::Result<Self> {
        // SAFETY: the std socket owns its fd, which stays open and unchanged for
        // as long as the AsyncFd (its sole owner) lives.
        let inner = unsafe {
            AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(io::Error::from)?;
        Ok(AsyncUdp { inner })
    }

    pub(crate) fn bind(addr: SocketAddr, opts: &UdpOptions) -> io::Result<Self> {
        Self::new(udp_socket(addr, opts)?)
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get_ref().local_addr()
    }

    /// Datagrams the kernel has dropped at this socket ([`socket_drops`]).
    pub(crate) fn drops(&self) -> io::Result<u64> {
        socket_drops(self.inner.get_ref())
    }

    /// Waits for the next datagram and hands it to `f` in `buf`, a buffer
    /// shared with other sockets (held only while `f` runs, which must not
    /// block): many ports, one buffer.
    pub(crate) async fn recv_in<R>(
        &self,
        buf: &std::sync::Mutex<Vec<u8>>,
        mut f: impl FnMut(&mut [u8], RecvMeta) -> R,
    ) -> io::Result<R> {
        self.inner
            .async_io(Interest::READABLE, |s| {
                // A panic elsewhere leaves only bytes behind: still usable.
                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                let meta = recv_meta(s, &mut b)?;
                Ok(f(&mut b[..meta.len], meta))
            })
            .await
    }

    /// Next datagram or queued ICMP error (socket opened with `recv_errors`).
    /// A queued error makes the socket report an error condition, not
    /// readability, so both are awaited.
    pub(crate) async fn recv_any(&self, buf: &mut [u8]) -> io::Result<Received> {
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

    /// [`Self::recv_any`], plus the transmit timestamps of a socket opened
    /// with `tx_timestamps`.
    pub(crate) async fn recv_timed(&self, buf: &mut [u8]) -> io::Result<ReceivedOrSent> {
        loop {
            let mut guard = self
                .inner
                .ready(Interest::READABLE | Interest::ERROR)
                .await?;
            match recv_timed_now(self.inner.get_ref(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                r => return r,
            }
        }
    }

    /// Non-blocking [`Self::recv_any`].
    pub(crate) fn try_recv_any(&self, buf: &mut [u8]) -> io::Result<Received> {
        recv_any_now(self.inner.get_ref(), buf)
    }

    pub(crate) async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |s| send_now(s, buf, to))
            .await
    }

    pub(crate) fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        send_now(self.inner.get_ref(), buf, to)
    }

    /// The receive buffer the kernel granted (`SO_RCVBUF`, which counts
    /// bookkeeping overhead too: Linux reports twice what was asked).
    pub(crate) fn recv_buffer_size(&self) -> io::Result<usize> {
        socket2::SockRef::from(self.inner.get_ref()).recv_buffer_size()
    }

    /// TTL / hop limit of later sends (`udpreach trace`).
    pub(crate) fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        let sock = socket2::SockRef::from(self.inner.get_ref());
        if self.local_addr()?.is_ipv6() {
            sock.set_unicast_hops_v6(ttl)
        } else {
            sock.set_ttl_v4(ttl)
        }
    }

    /// TOS byte / traffic class (DSCP and ECN) of later sends.
    pub(crate) fn set_tos(&self, tos: u8) -> io::Result<()> {
        let sock = socket2::SockRef::from(self.inner.get_ref());
        if self.local_addr()?.is_ipv6() {
            sock.set_tclass_v6(u32::from(tos))
        } else {
            sock.set_tos_v4(u32::from(tos))
        }
    }

    /// Changes how Don't Fragment is handled for later sends.
    pub(crate) fn set_pmtu_mode(&self, mode: PmtuMode) -> io::Result<()> {
        let v6 = self.local_addr()?.is_ipv6();
        errqueue::set_pmtu_mode(self.inner.get_ref(), v6, mode)
    }

    /// IPv6: fragment at `mtu` (see [`errqueue::set_fragment_mtu_v6`]); a no-op for IPv4.
    pub(crate) fn set_fragment_mtu(&self, mtu: u32) -> io::Result<()> {
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
pub(crate) fn send_now(sock: &UdpSocket, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
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
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free
    // lists; it takes no pointers from us and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Restores the default action of SIGPIPE (Rust starts with it ignored), so
/// a client command whose output goes to a closed pipe (`udpreach ping ... |
/// head`) ends quietly like any Unix filter instead of panicking in
/// `println!`. Not for the server: its sockets must never end the process.
pub(crate) fn default_sigpipe() {
    // SAFETY: sets a signal disposition to SIG_DFL before any other thread
    // exists; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes glibc serve every allocation of 128 KiB or more with its own
/// mmap, always (no dynamic threshold): the monitor creates and drops many
/// large, mostly untouched buffers (RTT histograms), which as fresh
/// mappings cost only the pages written.
pub(crate) fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no pointers involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Raises the soft open-files limit to the hard limit; returns the soft limit now in force.
pub(crate) fn raise_nofile_limit() -> u64 {
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
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
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

/// A timer with the kernel's precision (`timerfd`, CLOCK_MONOTONIC) for
/// tokio: tokio's own timer wakes on whole milliseconds, which turns a
/// 100 us send interval into bursts.
pub(crate) struct PreciseTimer {
    inner: AsyncFd<TimerFdHandle>,
}

/// `TimerFd` with the `AsRawFd` tokio's `AsyncFd` asks for.
struct TimerFdHandle(nix::sys::timerfd::TimerFd);

impl AsRawFd for TimerFdHandle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    pub(crate) fn new() -> io::Result<Self> {
        use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // SAFETY: the TimerFd owns its fd, which stays open and unchanged for
        // as long as the AsyncFd (its sole owner) lives.
        let inner =
            unsafe { AsyncFd::register_with_interest(TimerFdHandle(fd), Interest::READABLE) }
                .map_err(io::Error::from)?;
        Ok(PreciseTimer { inner })
    }

    /// Waits until `at` (returns at once if it has passed).
    pub(crate) async fn sleep_until(&self, at: std::time::Instant) -> io::Result<()> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{Expiration, TimerSetTimeFlags};
        let left = at.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let timer = &self.inner.get_ref().0;
        timer.set(
            Expiration::OneShot(TimeSpec::from_duration(left)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut guard = self.inner.readable().await?;
            // Reads the expiry count; EAGAIN when not expired yet.
            match guard.try_io(|fd| fd.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(addr: &str) -> UdpSocket {
        let opts = UdpOptions {
            recv_tos: true,
            ..UdpOptions::default()
        };
        udp_socket(addr.parse().unwrap(), &opts).unwrap()
    }

    /// One datagram's metadata through the single-datagram receive (the
    /// parser it shares with the batched one): sender, length, TTL / hop
    /// limit, TOS / traffic class, the address written to, the kernel's
    /// receive time; then `WouldBlock` on an empty socket.
    #[test]
    fn recv_meta_reads_every_control_message() {
        for (any, to, tos) in [("0.0.0.0:0", "127.0.0.2", 0xb8u8), ("[::]:0", "::1", 0x2a)] {
            let receiver = socket(any);
            let to = SocketAddr::new(to.parse().unwrap(), receiver.local_addr().unwrap().port());
            let sender = socket(if to.is_ipv4() {
                "127.0.0.1:0"
            } else {
                "[::1]:0"
            });
            let s = socket2::SockRef::from(&sender);
            if to.is_ipv4() {
                s.set_tos_v4(tos.into()).unwrap();
                s.set_ttl_v4(7).unwrap();
            } else {
                s.set_tclass_v6(tos.into()).unwrap();
                s.set_unicast_hops_v6(7).unwrap();
            }
            sender.send_to(b"hello", to).unwrap();
            let before = SystemTime::now();
            let mut buf = [0u8; 64];
            // Loopback delivers during send_to.
            let m = recv_meta(&receiver, &mut buf).unwrap();
            assert_eq!(m.from, sender.local_addr().unwrap(), "{m:?}");
            assert_eq!((m.len, &buf[..m.len]), (5, &b"hello"[..]));
            assert_eq!((m.ttl, m.tos), (Some(7), Some(tos)), "{m:?}");
            assert_eq!(m.local.map(|l| l.0), Some(to.ip()), "{m:?}");
            let rx = m.kernel_rx.expect("a kernel receive time");
            assert!(rx <= before + Duration::from_secs(1), "{m:?}");
            let e = recv_meta(&receiver, &mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
    }

    /// A receive buffer that overflowed: the next datagram queued after
    /// the overflow carries the number dropped (our own loss, which ping
    /// keeps out of the network's); the ones queued before carry none.
    #[test]
    fn recv_meta_counts_what_a_full_buffer_dropped() {
        let opts = UdpOptions {
            count_drops: true,
            recv_buffer: Some(8192),
            ..UdpOptions::default()
        };
        let receiver = udp_socket("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Far more than 8 KiB of buffer holds; loopback delivers during send_to.
        for _ in 0..100 {
            sender.send_to(&[0u8; 1000], to).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut queued = 0u32;
        while let Ok(m) = recv_meta(&receiver, &mut buf) {
            assert_eq!(m.drops, None, "queued before the overflow: {m:?}");
            queued += 1;
            assert!(queued < 100, "nothing was dropped");
        }
        // The table says so at once; the next datagram says so too.
        assert_eq!(socket_drops(&receiver).unwrap(), u64::from(100 - queued));
        sender.send_to(b"after", to).unwrap();
        let m = recv_meta(&receiver, &mut buf).unwrap();
        assert_eq!(m.drops, Some(100 - queued), "{m:?}");
    }

    #[test]
    fn drops_are_read_from_the_socket_table_line_of_the_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  109: 00000000:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0
  110: 0100007F:A1B2 00000000:0000 07 00000000:00001200 00:00000000 00000000     0        0 31337 2 0000000000000000 17
";
        assert_eq!(udp_table_drops(table, "31337"), Some(17));
        assert_eq!(udp_table_drops(table, "4242"), Some(0));
        assert_eq!(udp_table_drops(table, "3133"), None);
        assert_eq!(udp_table_drops("", "1"), None);
    }
}
