//! Closed-loop load generator for echo servers (used by bench/echo_rate.sh).
//!
//! Each sender thread keeps WINDOW datagrams in flight to the echo server and
//! sends a new one for every reply, so the measured rate is what the server
//! sustains, not what it drops. Hand-rolled because no packaged tool drives a
//! generic UDP echo server closed-loop with several senders.
//!
//! Usage: echo_load TARGET SENDERS WINDOW SECONDS SIZE

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: echo_load TARGET SENDERS WINDOW SECONDS SIZE");
        std::process::exit(2);
    }
    let parse = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("echo_load: invalid number '{}'", args[i]);
            std::process::exit(2)
        })
    };
    let target: SocketAddr = args[1].parse().unwrap_or_else(|_| {
        eprintln!("echo_load: invalid target '{}'", args[1]);
        std::process::exit(2)
    });
    let (senders, window, secs, size) = (parse(2), parse(3), parse(4), parse(5) as usize);
    let replies = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..senders {
        let (replies, stop) = (replies.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let bind: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .expect("literal");
            let s = UdpSocket::bind(bind).expect("bind");
            s.connect(target).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            // Each datagram different (a counter in front), as a real
            // client's would be: a udpreach server takes one datagram
            // repeated back to back for an echo loop.
            let mut payload = vec![b'x'; size];
            let mut count: u64 = 0;
            let mut next = |p: &mut Vec<u8>| {
                count += 1;
                let k = p.len().min(8);
                p[..k].copy_from_slice(&count.to_be_bytes()[..k]);
            };
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..window {
                    next(&mut payload);
                    let _ = s.send(&payload);
                }
                // Refill one for one; a timeout means losses, so refill the window.
                while let Ok(_n) = s.recv(&mut buf) {
                    replies.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    next(&mut payload);
                    let _ = s.send(&payload);
                }
            }
        }));
    }
    // Warm up, then measure.
    std::thread::sleep(Duration::from_millis(300));
    let start_count = replies.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let n = replies.load(Ordering::Relaxed) - start_count;
    let dt = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    println!(
        "{{\"replies\":{n},\"seconds\":{dt:.3},\"pps\":{:.0}}}",
        n as f64 / dt
    );
}
