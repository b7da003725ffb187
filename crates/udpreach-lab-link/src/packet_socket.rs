//! AF_PACKET sockets bound to one interface: every Ethernet frame the
//! interface receives, raw, and frames sent out of it unchanged. The only
//! unsafe code of this crate (libc calls the safe wrappers do not cover).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Socket buffers, so a burst of a whole sweep waits in the kernel rather
/// than being dropped before the emulator sees it.
const SOCKET_BUFFER_BYTES: libc::c_int = 32 << 20;

/// Length of the `struct virtio_net_hdr` before every frame.
pub const VNET_HEADER_LEN: usize = 10;

pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a non-blocking socket receiving every frame arriving on
    /// `iface` (not the ones sent out of it) and sending out of it.
    pub fn open(iface: &str) -> io::Result<PacketSocket> {
        let name = CString::new(iface).map_err(|_| io::Error::other("bad interface name"))?;
        // SAFETY: plain libc calls on a C string we own and on a fresh fd.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no interface `{iface}`"),
                ));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            );
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let one: libc::c_int = 1;
            set_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, one)?;
            // Frames come with a virtio-net header (GSO and checksum-offload
            // state) and go out with it: a TCP super-frame is segmented and
            // a checksum left to offload completed by the kernel on output.
            set_opt(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, one)?;
            set_opt(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                SOCKET_BUFFER_BYTES,
            )?;
            set_opt(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                SOCKET_BUFFER_BYTES,
            )?;
            let mut addr: libc::sockaddr_ll = zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            if libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(PacketSocket { fd })
        }
    }

    /// Receives one frame, preceded by its [`VNET_HEADER_LEN`]-byte
    /// virtio-net header, into `buf`; the length of both, or `None` when
    /// nothing is waiting. A length above `buf.len()` means truncated.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Sends one frame, preceded by its virtio-net header, out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the pointer and length describe `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn set_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets this thread's timed sleeps end within about a microsecond of their
/// deadline (the default slack is 50 us).
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer, nothing else.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}
