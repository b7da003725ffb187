//! A link emulator for the udpreach lab (test infrastructure, not part of
//! the `udpreach` binary). This kernel has no `netem`, so the lab puts this
//! program in a middle namespace between two veths: it reads every Ethernet
//! frame arriving on one interface with an AF_PACKET socket and writes it
//! out of the other, after applying per direction a fixed delay, jitter
//! (reordering or order-keeping), random loss, Gilbert-Elliott burst loss
//! and a rate cap behind a tail-drop queue.
//!
//! * [`model`]: the sans-I/O decision (lost? when does it leave?), tested
//!   in memory with the engine test kit's seeded [`Rng`](udpreach_engine::testkit::Rng).
//! * [`relay`]: the threads that move frames ([`Relay::start`]).
//! * [`spec`]: the `delay=25ms,jitter=5ms,loss=2%` text form.
//! * The `udpreach-lab-link` binary runs a relay from the command line.
//!
//! Frames keep their virtio-net header (`PACKET_VNET_HDR`), so GSO
//! super-frames and checksums left to offload are finished by the kernel on
//! output. Accuracy: the relay counts how late each frame left against its
//! schedule (`lateness_*`, `late`); see docs/PERFORMANCE.md "Link emulator".

pub mod model;
pub mod packet_socket;
pub mod relay;
pub mod spec;

pub use model::{DirectionConfig, GilbertElliott};
pub use relay::{Relay, RelayConfig, RelayStats};
