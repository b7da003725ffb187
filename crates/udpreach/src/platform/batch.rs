//! Batched datagram I/O for the server's worker threads (echo port, STAMP
//! reflector): one `recvmmsg` takes every datagram already queued (after
//! waiting for the first), one `sendmmsg` sends a batch of replies, each with
//! its own destination, source address and TOS byte / traffic class.
//!
//! Through libc rather than nix's `recvmmsg` / `sendmmsg`: nix 0.30 does not
//! restore the in-out lengths of reused headers before a call (a datagram
//! that arrives without some control message shrinks its slot's control
//! space for every later call), and its `sendmmsg` puts the same control
//! messages on every message of a batch, while each reply here needs its own
//! source address and TOS.

use super::{canonical, pktinfo_v4, pktinfo_v6, read_cmsgs, to_socket_addr, CmsgBuf, RecvMeta};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;

/// Datagrams per `recvmmsg`, replies per `sendmmsg`, at most.
pub(crate) const BATCH: usize = 32;
/// Bytes per received datagram: the largest UDP payload fits (a worker's
/// slots are mapped lazily, so small datagrams touch only their first page).
const SLOT: usize = 65536;
/// Interrupted `sendmmsg` calls retried per batch, at most.
const MAX_INTERRUPTS: usize = 4;

/// A `msghdr` with every field zero (its padding fields are private on some libcs).
fn empty_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
    unsafe { std::mem::zeroed() }
}

/// [`BATCH`] empty I/O vectors, filled before each call.
fn empty_iovecs() -> Vec<libc::iovec> {
    let empty = libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    };
    vec![empty; BATCH]
}

/// [`BATCH`] empty message headers, filled before each call.
fn empty_mmsghdrs() -> Vec<libc::mmsghdr> {
    let empty = libc::mmsghdr {
        msg_hdr: empty_msghdr(),
        msg_len: 0,
    };
    vec![empty; BATCH]
}

/// Receive side: the buffers and headers of one worker, reused for every batch.
pub(crate) struct RecvBatch {
    data: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Slot and metadata of each datagram of the last batch.
    got: Vec<(usize, RecvMeta)>,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        RecvBatch {
            data: vec![0; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            cmsgs: vec![CmsgBuf::default(); BATCH],
            iovs: empty_iovecs(),
            hdrs: empty_mmsghdrs(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Waits for a datagram on `sock` (a blocking socket), then takes the
    /// others already queued, up to [`BATCH`]. Returns how many arrived with
    /// a source address (datagrams without one are skipped).
    pub(crate) fn recv_wait(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv(sock, libc::MSG_WAITFORONE)
    }

    /// [`Self::recv_wait`] that never waits (`WouldBlock` when nothing is queued).
    #[cfg(test)]
    pub(crate) fn recv_now(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.recv(sock, libc::MSG_DONTWAIT)
    }

    fn recv(&mut self, sock: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        self.got.clear();
        // Every in-out field is set again before each call: the kernel
        // overwrites the name and control lengths with what it wrote.
        let data = self.data.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let cmsgs = self.cmsgs.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            // SAFETY: i < BATCH, the length of each of these vectors (and
            // data holds BATCH slots of SLOT bytes); the pointers stay valid
            // while `self` is borrowed, that is for the whole call.
            unsafe {
                *iovs.add(i) = libc::iovec {
                    iov_base: data.add(i * SLOT).cast(),
                    iov_len: SLOT,
                };
                let mut m = empty_msghdr();
                m.msg_name = names.add(i).cast();
                m.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_iov = iovs.add(i);
                m.msg_iovlen = 1;
                m.msg_control = cmsgs.add(i).cast();
                m.msg_controllen = size_of::<CmsgBuf>() as _;
                *h = libc::mmsghdr {
                    msg_hdr: m,
                    msg_len: 0,
                };
            }
        }
        // SAFETY: hdrs holds BATCH headers whose buffers (above) live in
        // `self`, borrowed mutably for the call; no timeout.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for (i, h) in self.hdrs.iter().take(n as usize).enumerate() {
            // SAFETY: the kernel wrote msg_namelen bytes (at most the
            // storage's size) of a socket address into names[i].
            let from = unsafe {
                SockaddrStorage::from_raw(
                    names.add(i).cast::<libc::sockaddr>(),
                    Some(h.msg_hdr.msg_namelen),
                )
            };
            let Some(from) = from.as_ref().and_then(to_socket_addr) else {
                continue;
            };
            let mut meta = RecvMeta {
                len: h.msg_len as usize,
                from: canonical(from),
                ttl: None,
                kernel_rx: None,
                local: None,
                tos: None,
                drops: None,
            };
            read_cmsgs(&h.msg_hdr, &mut meta);
            self.got.push((i, meta));
        }
        Ok(self.got.len())
    }

    /// Datagram `i` of the last batch (`i` < what the receive returned).
    pub(crate) fn get_mut(&mut self, i: usize) -> (RecvMeta, &mut [u8]) {
        let (slot, meta) = self.got[i];
        (meta, &mut self.data[slot * SLOT..slot * SLOT + meta.len])
    }

    /// Datagram `i` of the last batch, read only.
    pub(crate) fn get(&self, i: usize) -> (RecvMeta, &[u8]) {
        let (slot, meta) = self.got[i];
        (meta, &self.data[slot * SLOT..slot * SLOT + meta.len])
    }
}

/// One reply of a batch: `data` to `to`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reply<'a> {
    pub data: &'a [u8],
    pub to: SocketAddr,
    /// Source address and interface index ([`RecvMeta::local`]): on a
    /// socket bound to a wildcard address, the reply then leaves from the
    /// address the request was sent to, not from the address the route
    /// would pick (hosts with several addresses, VIPs, `127.0.0.2`).
    pub local: Option<(IpAddr, u32)>,
    /// TOS byte / traffic class (DSCP and ECN) of this reply only, set by a
    /// control message whatever the socket's own setting.
    pub tos: Option<u8>,
}

/// What [`SendBatch::send`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    pub sent: usize,
    /// Replies the kernel refused (logged at debug, not retried).
    pub dropped: usize,
}

/// Send side: the headers of one worker, reused for every batch.
pub(crate) struct SendBatch {
    names: Vec<SockaddrStorage>,
    cmsgs: Vec<CmsgBuf>,
    /// Bytes of control messages in each slot of `cmsgs`.
    control: Vec<usize>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Destination of each queued reply, for the log.
    dests: Vec<SocketAddr>,
}

impl SendBatch {
    pub(crate) fn new() -> Self {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        SendBatch {
            names: vec![SockaddrStorage::from(any); BATCH],
            cmsgs: vec![CmsgBuf::default(); BATCH],
            control: vec![0; BATCH],
            iovs: empty_iovecs(),
            hdrs: empty_mmsghdrs(),
            dests: Vec::with_capacity(BATCH),
        }
    }

    /// Sends `replies` with `sendmmsg` ([`BATCH`] per call): each to its
    /// own destination, from its own source address, with its own TOS.
    /// A reply the kernel refuses is dropped (logged at debug) and the rest
    /// are sent; a partial send continues where it stopped. Every call
    /// either sends or drops at least one reply, so this ends.
    pub(crate) fn send<'a>(
        &mut self,
        sock: &UdpSocket,
        replies: impl IntoIterator<Item = Reply<'a>>,
    ) -> Sent {
        let mut total = Sent::default();
        let mut replies = replies.into_iter().peekable();
        while replies.peek().is_some() {
            self.dests.clear();
            for (i, r) in replies.by_ref().take(BATCH).enumerate() {
                self.stage(i, &r);
            }
            let s = self.flush(sock);
            total.sent += s.sent;
            total.dropped += s.dropped;
        }
        total
    }

    /// Fills slot `i` for `r`. The data pointer is used only by the
    /// `flush` of the same `send` call, while `r.data` is borrowed.
    fn stage(&mut self, i: usize, r: &Reply<'_>) {
        self.names[i] = SockaddrStorage::from(r.to);
        self.iovs[i] = libc::iovec {
            iov_base: r.data.as_ptr().cast_mut().cast(),
            iov_len: r.data.len(),
        };
        self.control[i] = encode_cmsgs(&mut self.cmsgs[i], r);
        self.dests.push(r.to);
    }

    fn flush(&mut self, sock: &UdpSocket) -> Sent {
        let n = self.dests.len();
        let names = self.names.as_mut_ptr();
        let cmsgs = self.cmsgs.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().take(n).enumerate() {
            let mut m = empty_msghdr();
            // SAFETY: i < n <= BATCH, the length of each vector; slot i was
            // staged by this `send` call.
            unsafe {
                m.msg_name = names.add(i).cast();
                m.msg_namelen = (*names.add(i)).len();
                m.msg_iov = iovs.add(i);
                m.msg_iovlen = 1;
                if self.control[i] > 0 {
                    m.msg_control = cmsgs.add(i).cast();
                    m.msg_controllen = self.control[i] as _;
                }
            }
            *h = libc::mmsghdr {
                msg_hdr: m,
                msg_len: 0,
            };
        }
        let mut done = Sent::default();
        let mut start = 0;
        let mut interrupts = 0;
        while start < n {
            // SAFETY: headers start..n were staged by this `send` call: their
            // names, iovecs and control buffers live in `self`, their data in
            // replies still borrowed by the caller.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(start),
                    (n - start) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                start += r as usize;
                done.sent += r as usize;
                continue;
            }
            let e = if r == 0 {
                io::Error::other("sendmmsg sent nothing")
            } else {
                io::Error::last_os_error()
            };
            if e.kind() == io::ErrorKind::Interrupted && interrupts < MAX_INTERRUPTS {
                interrupts += 1;
                continue;
            }
            // The first unsent reply is the one the kernel refused.
            tracing::debug!("send to {}: {e}", self.dests[start]);
            done.dropped += 1;
            start += 1;
        }
        done
    }
}

/// Writes `r`'s packet information and TOS control messages into `buf`;
/// returns their length in bytes (0: none).
fn encode_cmsgs(buf: &mut CmsgBuf, r: &Reply<'_>) -> usize {
    let mut at = 0;
    let p = buf.as_mut_ptr().cast::<u8>();
    let tos = r.tos.map(libc::c_int::from);
    // SAFETY: each `put` writes CMSG_SPACE(size) bytes at an 8-aligned offset
    // of `buf`; two of them (at most 40 + 24 bytes) fit in its 256.
    unsafe {
        match (r.to, r.local) {
            (SocketAddr::V4(_), Some((IpAddr::V4(ip), _))) => {
                put(
                    p,
                    &mut at,
                    libc::IPPROTO_IP,
                    libc::IP_PKTINFO,
                    pktinfo_v4(ip),
                );
            }
            (SocketAddr::V6(_), Some((IpAddr::V6(ip), ifindex))) => put(
                p,
                &mut at,
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                pktinfo_v6(ip, ifindex),
            ),
            _ => {}
        }
        if let Some(t) = tos {
            if r.to.is_ipv4() {
                put(p, &mut at, libc::IPPROTO_IP, libc::IP_TOS, t);
            } else {
                put(p, &mut at, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, t);
            }
        }
    }
    at
}

/// Writes one control message carrying `value` at byte `*at` of `buf`.
///
/// # Safety
/// `buf` is 8-aligned with CMSG_SPACE(size_of::<T>()) bytes free at `*at`.
unsafe fn put<T>(buf: *mut u8, at: &mut usize, level: libc::c_int, kind: libc::c_int, value: T) {
    let size = size_of::<T>() as libc::c_uint;
    // SAFETY: as the caller promises; CMSG_DATA is pointer arithmetic within
    // the CMSG_SPACE bytes.
    unsafe {
        let c = buf.add(*at).cast::<libc::cmsghdr>();
        c.write(libc::cmsghdr {
            cmsg_len: libc::CMSG_LEN(size) as _,
            cmsg_level: level,
            cmsg_type: kind,
        });
        ptr::write_unaligned(libc::CMSG_DATA(c).cast::<T>(), value);
        *at += libc::CMSG_SPACE(size) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::{udp_socket, UdpOptions};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    fn socket(addr: &str, recv_tos: bool) -> UdpSocket {
        let opts = UdpOptions {
            recv_tos,
            ..UdpOptions::default()
        };
        udp_socket(addr.parse().unwrap(), &opts).unwrap()
    }

    /// Reads what arrived on `sock` within a second (bounded), non-blocking.
    fn drain(sock: &UdpSocket, want: usize) -> Vec<(RecvMeta, Vec<u8>)> {
        let mut batch = RecvBatch::new();
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(1);
        while out.len() < want && Instant::now() < until {
            match batch.recv_now(sock) {
                Ok(n) => (0..n).for_each(|i| {
                    let (m, d) = batch.get(i);
                    out.push((m, d.to_vec()));
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    /// Datagrams from two senders, with different TOS bytes, to two of the
    /// host's loopback addresses, arrive in one batch with their own
    /// metadata; the batch of replies goes back to each sender, from the
    /// address it wrote to, with the TOS asked for each.
    #[test]
    fn batch_keeps_each_datagrams_addresses_and_tos() {
        let server = socket("0.0.0.0:0", true);
        let port = server.local_addr().unwrap().port();
        let a = socket("127.0.0.1:0", true);
        let b = socket("127.0.0.1:0", true);
        let tos_a = 0x20; // DSCP 8 (CS1)
        let tos_b = 0xb8; // DSCP 46 (EF)
        socket2::SockRef::from(&a).set_tos_v4(tos_a).unwrap();
        socket2::SockRef::from(&b).set_tos_v4(tos_b).unwrap();
        let to_a = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), port));
        let to_b = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port));
        for i in 0..3u8 {
            a.send_to(&[b'a', i], to_a).unwrap();
            b.send_to(&[b'b', i, i], to_b).unwrap();
        }
        // Loopback delivers during send_to: all six are queued, one call takes them.
        let mut batch = RecvBatch::new();
        let n = batch.recv_now(&server).unwrap();
        assert_eq!(n, 6, "one batch");
        let got: Vec<_> = (0..n)
            .map(|i| {
                let (m, d) = batch.get(i);
                (m, d.to_vec())
            })
            .collect();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        for (m, d) in &got {
            let (from, tos, local) = if d[0] == b'a' {
                (a_addr, tos_a, to_a.ip())
            } else {
                (b_addr, tos_b, to_b.ip())
            };
            assert_eq!(m.from, from);
            assert_eq!(m.tos, Some(tos as u8));
            assert_eq!(m.local.map(|l| l.0), Some(local));
            assert!(m.ttl.is_some() && m.kernel_rx.is_some(), "{m:?}");
            assert_eq!(m.len, d.len());
        }
        // Replies: each marked with a TOS of its own (ECN bits included).
        let replies: Vec<Reply<'_>> = got
            .iter()
            .enumerate()
            .map(|(i, (m, d))| Reply {
                data: d,
                to: m.from,
                local: m.local,
                tos: Some(4 * i as u8 + 1),
            })
            .collect();
        let sent = SendBatch::new().send(&server, replies.iter().copied());
        assert_eq!(
            sent,
            Sent {
                sent: 6,
                dropped: 0
            }
        );
        let back: Vec<_> = drain(&a, 3).into_iter().chain(drain(&b, 3)).collect();
        assert_eq!(back.len(), 6, "{back:?}");
        for (m, d) in &back {
            let r = replies.iter().find(|r| r.data == &d[..]).expect("a reply");
            assert_eq!(Some(m.from), r.local.map(|l| SocketAddr::new(l.0, port)));
            assert_eq!(m.tos, r.tos);
        }
    }

    /// IPv6: two senders with different traffic classes in one batch; each
    /// reply goes back to its sender from `::1` with the class asked for it.
    #[test]
    fn batch_keeps_each_datagrams_traffic_class_v6() {
        let server = socket("[::]:0", true);
        let to = SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            server.local_addr().unwrap().port(),
        ));
        let senders = [socket("[::1]:0", true), socket("[::1]:0", true)];
        for (k, s) in senders.iter().enumerate() {
            socket2::SockRef::from(s).set_tclass_v6(0x20 << k).unwrap();
            s.send_to(&[k as u8], to).unwrap();
        }
        let mut batch = RecvBatch::new();
        assert_eq!(batch.recv_now(&server).unwrap(), 2, "one batch");
        let got: Vec<_> = (0..2).map(|i| batch.get(i)).collect();
        for (m, d) in &got {
            let k = usize::from(d[0]);
            assert_eq!(m.from, senders[k].local_addr().unwrap());
            assert_eq!(m.tos, Some(0x20 << k));
            assert_eq!(m.local.map(|l| l.0), Some(to.ip()));
        }
        let replies = got.iter().map(|(m, d)| Reply {
            data: d,
            to: m.from,
            local: m.local,
            tos: Some(0xb8 + d[0]),
        });
        assert_eq!(
            SendBatch::new().send(&server, replies),
            Sent {
                sent: 2,
                dropped: 0
            }
        );
        for (k, s) in senders.iter().enumerate() {
            let back = drain(s, 1);
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].0.from, to);
            assert_eq!(back[0].0.tos, Some(0xb8 + k as u8));
        }
    }

    /// More replies than one `sendmmsg` takes, and one the kernel refuses
    /// (to port 0): the others are sent, that one is counted as dropped.
    #[test]
    fn batch_sends_past_a_refused_reply_and_beyond_one_call() {
        let server = socket("127.0.0.1:0", false);
        let peer = socket("127.0.0.1:0", false);
        let to = peer.local_addr().unwrap();
        let bad = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let n = BATCH + 5;
        let bodies: Vec<[u8; 2]> = (0..n).map(|i| [i as u8, 0]).collect();
        let replies = bodies.iter().enumerate().map(|(i, d)| Reply {
            data: d,
            to: if i == 3 { bad } else { to },
            local: None,
            tos: None,
        });
        let sent = SendBatch::new().send(&server, replies);
        assert_eq!(
            sent,
            Sent {
                sent: n - 1,
                dropped: 1
            }
        );
        assert_eq!(drain(&peer, n - 1).len(), n - 1);
    }
}
