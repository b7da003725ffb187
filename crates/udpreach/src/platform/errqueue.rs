//! ICMP errors for UDP sockets: `IP_RECVERR` / `IPV6_RECVERR`, the error
//! queue (`recvmsg(MSG_ERRQUEUE)`), path-MTU discovery modes and MTU queries.
//!
//! Without `IP_RECVERR` an unconnected UDP socket never hears of port
//! unreachable, admin prohibited or frag needed. With it the kernel queues
//! each error with the ICMP type, code, next-hop MTU, the reporting host and
//! the start of the offending datagram, which is how an error is matched to
//! the probe that caused it. What an error *means* is decided in
//! `udpreach_wire::icmp`; this module only reads it.

use super::{canonical, to_socket_addr};
use nix::sys::socket::{self as nsock, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use udpreach_wire::icmp::{IcmpError, IcmpOrigin};

/// One entry of a socket's error queue.
#[derive(Clone, Debug)]
pub(crate) struct QueuedError {
    pub error: IcmpError,
    /// Where the offending datagram was going (the error message's `msg_name`).
    pub dest: Option<SocketAddr>,
    /// The start of the offending datagram's UDP payload, as the ICMP message
    /// quoted it (often the whole probe; at worst nothing).
    pub quoted: Vec<u8>,
    /// Kernel receive time of the ICMP message, when known.
    pub kernel_rx: Option<SystemTime>,
}

/// The kernel's software transmit timestamp of one datagram
/// (`SO_TIMESTAMPING`), read from the error queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxTimestamp {
    /// The socket's count of timestamped sends when this one went out
    /// (`SOF_TIMESTAMPING_OPT_ID`): 0 for its first send, 1 for the next...
    pub id: u32,
    /// When the datagram was handed to the device, realtime clock: the same
    /// clock and layer as the receive timestamps (`SO_TIMESTAMPNS`).
    pub at: SystemTime,
}

/// One entry of the error queue: an ICMP (or local) error, or a transmit timestamp.
pub(super) enum ErrQueueEntry {
    Error(QueuedError),
    Sent(TxTimestamp),
}

/// Asks for a software transmit timestamp of every datagram sent, queued on
/// the error queue with an id and no copy of the datagram.
pub(crate) fn enable_tx_timestamps(sock: &impl AsFd) -> io::Result<()> {
    use nsock::TimestampingFlag as F;
    let flags = F::SOF_TIMESTAMPING_SOFTWARE
        | F::SOF_TIMESTAMPING_TX_SOFTWARE
        | F::SOF_TIMESTAMPING_OPT_ID
        | F::SOF_TIMESTAMPING_OPT_TSONLY;
    nsock::setsockopt(sock, sockopt::Timestamping, &flags)?;
    Ok(())
}

/// Turns on `IP_RECVERR` (or `IPV6_RECVERR`). From then on the socket must be
/// read with [`recv_error`] too: queued errors count against the receive
/// buffer, so an undrained queue would starve normal datagrams.
pub(crate) fn enable_recv_errors(sock: &impl AsFd, v6: bool) -> io::Result<()> {
    if v6 {
        nsock::setsockopt(sock, sockopt::Ipv6RecvErr, &true)?;
    } else {
        nsock::setsockopt(sock, sockopt::Ipv4RecvErr, &true)?;
    }
    Ok(())
}

/// errnos a send or receive returns once for an earlier ICMP error (the
/// socket's pending `sk_err`); the error itself is in the queue, and the
/// operation can simply be retried.
pub(crate) fn is_deferred_icmp_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EPROTO
                | libc::EACCES
                | libc::EMSGSIZE
                | libc::ETIMEDOUT
        )
    )
}

/// Reads one queued entry without blocking (`WouldBlock` when the queue is empty).
pub(super) fn recv_error(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<ErrQueueEntry> {
    recv_error_fd(sock.as_fd().as_raw_fd(), buf)
}

fn recv_error_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<ErrQueueEntry> {
    // The extended error with the offender's address, plus the TTL and
    // timestamp messages the socket also asked for.
    let mut cmsg = nix::cmsg_space!(
        libc::sock_extended_err,
        libc::sockaddr_in6,
        libc::c_int,
        nix::sys::time::TimeSpec,
        nsock::Timestamps,
        [u8; 64]
    );
    let mut iov = [IoSliceMut::new(buf)];
    let msg = nsock::recvmsg::<SockaddrStorage>(
        fd,
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let dest = msg.address.as_ref().and_then(to_socket_addr).map(canonical);
    let mut error = None;
    let mut kernel_rx = None;
    let mut sent: Option<u32> = None;
    let mut tx_at = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4RecvErr(ee, _)
                | ControlMessageOwned::Ipv6RecvErr(ee, _)
                    if ee.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING =>
                {
                    sent = Some(ee.ee_data);
                }
                ControlMessageOwned::ScmTimestampsns(ts) => {
                    let d = Duration::new(ts.system.tv_sec() as u64, ts.system.tv_nsec() as u32);
                    tx_at = Some(UNIX_EPOCH + d);
                }
                ControlMessageOwned::Ipv4RecvErr(ee, offender) => {
                    let from = offender.map(|sa| {
                        IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
                    });
                    error = Some(convert(&ee, from));
                }
                ControlMessageOwned::Ipv6RecvErr(ee, offender) => {
                    let from = offender.map(|sa| {
                        let ip = std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr);
                        match ip.to_ipv4_mapped() {
                            Some(v4) => IpAddr::V4(v4),
                            None => IpAddr::V6(ip),
                        }
                    });
                    error = Some(convert(&ee, from));
                }
                ControlMessageOwned::ScmTimestampns(ts) => {
                    let d = Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
                    kernel_rx = Some(UNIX_EPOCH + d);
                }
                _ => {}
            }
        }
    }
    if let Some(id) = sent {
        let at = tx_at.ok_or_else(|| io::Error::other("transmit timestamp without a time"))?;
        return Ok(ErrQueueEntry::Sent(TxTimestamp { id, at }));
    }
    let error =
        error.ok_or_else(|| io::Error::other("error-queue message without an extended error"))?;
    Ok(ErrQueueEntry::Error(QueuedError {
        error,
        dest,
        quoted: iov[0][..len.min(iov[0].len())].to_vec(),
        kernel_rx,
    }))
}

fn convert(ee: &libc::sock_extended_err, from: Option<IpAddr>) -> IcmpError {
    let origin = match ee.ee_origin {
        libc::SO_EE_ORIGIN_ICMP => IcmpOrigin::Icmp4,
        libc::SO_EE_ORIGIN_ICMP6 => IcmpOrigin::Icmp6,
        _ => IcmpOrigin::Local,
    };
    IcmpError {
        origin,
        icmp_type: ee.ee_type,
        code: ee.ee_code,
        info: ee.ee_info,
        errno: ee.ee_errno as i32,
        // A local error has no offender; an unspecified one says the same.
        from: from.filter(|ip| !ip.is_unspecified() && origin != IcmpOrigin::Local),
    }
}

/// How the kernel treats Don't Fragment for a socket (`IP_MTU_DISCOVER`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PmtuMode {
    /// DF set, sends above the known path MTU fail locally (EMSGSIZE).
    DontFragment,
    /// DF set, the cached path MTU ignored: for deliberate oversize probes.
    Probe,
    /// DF clear: the kernel fragments at the interface (or cached path) MTU,
    /// and IPv4 routers may fragment further.
    AllowFragments,
    /// The kernel's default for a new socket (path MTU discovery, DF set).
    KernelDefault,
}

pub(crate) fn set_pmtu_mode(sock: &impl AsRawFd, v6: bool, mode: PmtuMode) -> io::Result<()> {
    let value = match (mode, v6) {
        (PmtuMode::DontFragment, false) => libc::IP_PMTUDISC_DO,
        (PmtuMode::Probe, false) => libc::IP_PMTUDISC_PROBE,
        (PmtuMode::AllowFragments, false) => libc::IP_PMTUDISC_DONT,
        (PmtuMode::DontFragment, true) => libc::IPV6_PMTUDISC_DO,
        (PmtuMode::Probe, true) => libc::IPV6_PMTUDISC_PROBE,
        (PmtuMode::AllowFragments, true) => libc::IPV6_PMTUDISC_DONT,
        (PmtuMode::KernelDefault, false) => libc::IP_PMTUDISC_WANT,
        (PmtuMode::KernelDefault, true) => libc::IPV6_PMTUDISC_WANT,
    };
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
    };
    set_int(sock.as_raw_fd(), level, name, value)
}

/// IPv6 only: fragment at `mtu` instead of the interface / path MTU
/// (`IPV6_MTU`), so fragments fit a path whose MTU we measured.
pub(crate) fn set_fragment_mtu_v6(sock: &impl AsRawFd, mtu: u32) -> io::Result<()> {
    let v = libc::c_int::try_from(mtu).map_err(|_| io::Error::other("MTU out of range"))?;
    set_int(sock.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_MTU, v)
}

pub(super) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd, and a pointer to a c_int that outlives the call with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd; value and len are live locals of the sizes the kernel is told.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The MTU of the route towards `target`, as the kernel takes it.
///
/// Two readings: `IP_MTU`/`IPV6_MTU` of a socket connected to `target` is
/// the MTU of the route the kernel looked up (loopback's 65536 for the
/// host's own addresses, which the kernel sends over `lo` whatever
/// interface holds them), but it is lowered by a cached path MTU that may
/// be stale; the MTU of the interface holding the source address the kernel
/// picks is immune to that cache but can be the wrong interface. The larger
/// of the two is the search's upper bound: a size above what the route
/// really carries is refused by our own kernel (EMSGSIZE), which the search
/// reads as "too big", while a bound set too low would hide larger sizes.
pub(crate) fn route_mtu(target: SocketAddr) -> io::Result<u32> {
    let bind: SocketAddr = if target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    let local = s.local_addr()?.ip();
    let (level, name) = if target.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let routed = get_int(s.as_raw_fd(), level, name)
        .ok()
        .and_then(|v| u32::try_from(v).ok());
    match (routed, interface_mtu_of(local)) {
        (Some(r), Some(i)) => Ok(r.max(i)),
        (Some(m), None) | (None, Some(m)) => Ok(m),
        (None, None) => Err(io::Error::other("neither IP_MTU nor the interface's MTU")),
    }
}

fn interface_mtu_of(ip: IpAddr) -> Option<u32> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let name = addrs
        .filter(|a| {
            a.address
                .as_ref()
                .and_then(to_socket_addr)
                .is_some_and(|sa| canonical(sa).ip() == ip)
        })
        .map(|a| a.interface_name)
        .next()?;
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
