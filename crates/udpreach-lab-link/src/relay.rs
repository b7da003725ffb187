//! The running emulator: one thread per direction reads frames from one
//! interface, asks the [`Direction`] model when each leaves, holds it until
//! then and writes it out of the other interface.

use crate::model::{Direction, DirectionConfig, Drop};
use crate::packet_socket::{self, PacketSocket, VNET_HEADER_LEN};
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Frames one direction holds at most (delayed or queued); more are dropped
/// and counted, so a runaway sender cannot exhaust memory.
pub const MAX_HELD_FRAMES: usize = 1 << 20;
/// Largest frame relayed (a 64 KiB datagram plus headers).
const MAX_FRAME: usize = VNET_HEADER_LEN + 65_536 + 64;
/// Frames read in one go before due frames are sent again.
const RECV_BATCH: usize = 64;
/// How often an idle thread checks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(20);
/// Pause before sending again when the far interface's backlog was full.
const CONGESTION_BACKOFF: Duration = Duration::from_micros(50);
/// A frame sent later than this after its scheduled departure counts as late.
pub const LATE_THRESHOLD: Duration = Duration::from_micros(200);

/// The two interfaces and what happens in each direction.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub a: String,
    pub b: String,
    pub a_to_b: DirectionConfig,
    pub b_to_a: DirectionConfig,
    pub seed: u64,
}

/// Counters of one direction.
#[derive(Default, Debug)]
struct Counters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    dropped_random: AtomicU64,
    dropped_burst: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_held: AtomicU64,
    dropped_oversize: AtomicU64,
    dropped_udp: AtomicU64,
    send_errors: AtomicU64,
    send_retries: AtomicU64,
    reordered: AtomicU64,
    late: AtomicU64,
    lateness_sum_ns: AtomicU64,
    lateness_max_ns: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub dropped_random: u64,
    pub dropped_burst: u64,
    pub dropped_queue: u64,
    /// Dropped because [`MAX_HELD_FRAMES`] were held.
    pub dropped_held: u64,
    pub dropped_oversize: u64,
    /// UDP datagrams among the dropped frames, whatever the cause: what a
    /// UDP tool can see lost (the ARP, neighbour discovery and TCP frames
    /// the link also carries, and may drop, are not).
    pub dropped_udp: u64,
    /// Frames that failed to send for good.
    pub send_errors: u64,
    /// Sends retried because the far interface's backlog was full.
    pub send_retries: u64,
    /// Frames sent before one that arrived earlier.
    pub reordered: u64,
    /// Frames sent more than [`LATE_THRESHOLD`] after their departure time.
    pub late: u64,
    /// Mean and worst lateness of a send against its scheduled departure.
    pub lateness_mean_us: u64,
    pub lateness_max_us: u64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let out = get(&self.frames_out);
        DirectionStats {
            frames_in: get(&self.frames_in),
            frames_out: out,
            dropped_random: get(&self.dropped_random),
            dropped_burst: get(&self.dropped_burst),
            dropped_queue: get(&self.dropped_queue),
            dropped_held: get(&self.dropped_held),
            dropped_oversize: get(&self.dropped_oversize),
            dropped_udp: get(&self.dropped_udp),
            send_errors: get(&self.send_errors),
            send_retries: get(&self.send_retries),
            reordered: get(&self.reordered),
            late: get(&self.late),
            lateness_mean_us: get(&self.lateness_sum_ns) / out.max(1) / 1000,
            lateness_max_us: get(&self.lateness_max_ns) / 1000,
        }
    }
}

/// Both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
}

/// A running emulator; dropping it stops the threads.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    counters: [Arc<Counters>; 2],
}

impl Relay {
    /// Opens both interfaces (in the calling thread's network namespace)
    /// and starts relaying.
    pub fn start(cfg: &RelayConfig) -> io::Result<Relay> {
        let a = Arc::new(PacketSocket::open(&cfg.a)?);
        let b = Arc::new(PacketSocket::open(&cfg.b)?);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = [Arc::default(), Arc::default()];
        let mut threads = Vec::new();
        let plan = [
            (&a, &b, cfg.a_to_b, cfg.seed),
            (&b, &a, cfg.b_to_a, cfg.seed ^ 0x5eed_5eed_5eed_5eed),
        ];
        for (i, (from, to, dir, seed)) in plan.into_iter().enumerate() {
            let (from, to) = (Arc::clone(from), Arc::clone(to));
            let stop = Arc::clone(&stop);
            let counters = Arc::clone(&counters[i]);
            let name = format!("lab-link-{}", if i == 0 { "ab" } else { "ba" });
            threads.push(std::thread::Builder::new().name(name).spawn(move || {
                packet_socket::tighten_timer_slack();
                forward(&from, &to, Direction::new(dir, seed), &stop, &counters)
            })?);
        }
        Ok(Relay {
            stop,
            threads,
            counters,
        })
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            a_to_b: self.counters[0].snapshot(),
            b_to_a: self.counters[1].snapshot(),
        }
    }

    /// Stops both threads; returns the final counters, or the first error a
    /// thread hit.
    pub fn stop(mut self) -> io::Result<RelayStats> {
        self.halt()?;
        Ok(self.stats())
    }

    fn halt(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl std::ops::Drop for Relay {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Whether an Ethernet frame carries a UDP datagram (or a fragment of
/// one) over IPv4 or IPv6 without extension headers, as the lab sends.
fn carries_udp(frame: &[u8]) -> bool {
    const UDP: u8 = 17;
    match frame.get(12..14) {
        Some([0x08, 0x00]) => frame.get(14 + 9) == Some(&UDP),
        Some([0x86, 0xdd]) => frame.get(14 + 6) == Some(&UDP),
        _ => false,
    }
}

/// A frame waiting for its departure (ordered by departure, then arrival).
type Held = Reverse<(Instant, u64, Vec<u8>)>;

fn forward(
    from: &PacketSocket,
    to: &PacketSocket,
    mut dir: Direction,
    stop: &AtomicBool,
    c: &Counters,
) -> io::Result<()> {
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut buf = vec![0u8; MAX_FRAME];
    let mut arrivals: u64 = 0;
    let mut highest_sent: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        // Everything due goes out first.
        let now = Instant::now();
        let mut congested = false;
        while held.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            let Reverse((due, seq, frame)) = held.pop().expect("peeked");
            match to.send(&frame) {
                Ok(()) => {
                    c.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                // The far veth's backlog is full (ENOBUFS) or the socket
                // buffer is: not the emulated network's loss, so keep the
                // frame and try again shortly (it shows up as lateness).
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN)) => {
                    c.send_retries.fetch_add(1, Ordering::Relaxed);
                    held.push(Reverse((due, seq, frame)));
                    congested = true;
                    break;
                }
                Err(_) => {
                    c.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let late = Instant::now().saturating_duration_since(due);
            let late_ns = late.as_nanos() as u64;
            c.lateness_sum_ns.fetch_add(late_ns, Ordering::Relaxed);
            c.lateness_max_ns.fetch_max(late_ns, Ordering::Relaxed);
            if late > LATE_THRESHOLD {
                c.late.fetch_add(1, Ordering::Relaxed);
            }
            match highest_sent {
                Some(h) if seq < h => {
                    c.reordered.fetch_add(1, Ordering::Relaxed);
                }
                _ => highest_sent = Some(seq),
            }
        }
        // Then whatever arrived.
        let mut got = 0;
        while got < RECV_BATCH {
            let Some(len) = from.recv(&mut buf)? else {
                break;
            };
            got += 1;
            let arrived = Instant::now();
            c.frames_in.fetch_add(1, Ordering::Relaxed);
            if len > buf.len() || len <= VNET_HEADER_LEN {
                c.dropped_oversize.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let admitted = dir.admit(arrived, len - VNET_HEADER_LEN);
            let dropped = admitted.is_err() || held.len() >= MAX_HELD_FRAMES;
            if dropped && carries_udp(&buf[VNET_HEADER_LEN..len]) {
                c.dropped_udp.fetch_add(1, Ordering::Relaxed);
            }
            match admitted {
                Err(Drop::Random) => c.dropped_random.fetch_add(1, Ordering::Relaxed),
                Err(Drop::Burst) => c.dropped_burst.fetch_add(1, Ordering::Relaxed),
                Err(Drop::Queue) => c.dropped_queue.fetch_add(1, Ordering::Relaxed),
                Ok(_) if held.len() >= MAX_HELD_FRAMES => {
                    c.dropped_held.fetch_add(1, Ordering::Relaxed)
                }
                Ok(departure) => {
                    let frame = buf[..len].to_vec();
                    held.push(Reverse((departure, arrivals, frame)));
                    arrivals += 1;
                    0
                }
            };
        }
        if got > 0 {
            continue;
        }
        if congested {
            std::thread::sleep(CONGESTION_BACKOFF);
            continue;
        }
        // Idle: sleep until the next departure or a frame arrives.
        let wait = held
            .peek()
            .map_or(STOP_CHECK, |Reverse((t, _, _))| {
                t.saturating_duration_since(Instant::now())
            })
            .min(STOP_CHECK);
        if wait.is_zero() {
            continue;
        }
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(from),
            PollFlags::POLLIN,
        )];
        match ppoll(&mut fds, Some(TimeSpec::from_duration(wait)), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::carries_udp;

    fn frame(ethertype: [u8; 2], proto_at: usize, proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&ethertype);
        f[proto_at] = proto;
        f
    }

    #[test]
    fn udp_frames_are_told_from_arp_tcp_and_icmp() {
        assert!(carries_udp(&frame([0x08, 0x00], 23, 17)));
        assert!(carries_udp(&frame([0x86, 0xdd], 20, 17)));
        assert!(!carries_udp(&frame([0x08, 0x00], 23, 6)));
        assert!(!carries_udp(&frame([0x86, 0xdd], 20, 58)));
        assert!(!carries_udp(&frame([0x08, 0x06], 23, 17)));
        assert!(!carries_udp(&[0x08, 0x00]));
        assert!(!carries_udp(&frame([0x08, 0x00], 23, 17)[..20]));
    }
}
