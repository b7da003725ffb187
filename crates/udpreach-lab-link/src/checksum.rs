//! Completing a UDP/TCP checksum the sender left to offload.
//!
//! A veth advertises checksum offload, so the kernel hands it UDP and TCP
//! frames whose checksum field holds only the folded pseudo-header sum
//! (CHECKSUM_PARTIAL). Inside one host that is fine, but a frame relayed
//! through an AF_PACKET socket arrives at the far end as an ordinary frame
//! and would be dropped as corrupt. Completing it is what the "hardware"
//! would have done: the one's-complement sum of the transport segment,
//! starting from the seeded field, complemented.

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_HEADER: usize = 40;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Completes the transport checksum of `frame` in place. Returns false
/// (frame untouched) when it is not plain Ethernet + IPv4/IPv6 + UDP/TCP.
pub fn complete(frame: &mut [u8]) -> bool {
    let Some(ethertype) = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
        return false;
    };
    let (proto, start, end) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(ip) = frame.get(ETH_HEADER..ETH_HEADER + 20) else {
                return false;
            };
            let header = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (ip[9], ETH_HEADER + header, ETH_HEADER + total)
        }
        ETHERTYPE_IPV6 => {
            let Some(ip) = frame.get(ETH_HEADER..ETH_HEADER + IPV6_HEADER) else {
                return false;
            };
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let start = ETH_HEADER + IPV6_HEADER;
            (ip[6], start, start + payload)
        }
        _ => return false,
    };
    let field = match proto {
        PROTO_UDP => 6,
        PROTO_TCP => 16,
        _ => return false,
    };
    if end > frame.len() || start + field + 2 > end {
        return false;
    }
    let segment = &frame[start..end];
    let mut sum: u32 = 0;
    for pair in segment.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        sum += hi | pair.get(1).map_or(0, |lo| u32::from(*lo));
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut checksum = !(sum as u16);
    if proto == PROTO_UDP && checksum == 0 {
        checksum = 0xffff;
    }
    frame[start + field..start + field + 2].copy_from_slice(&checksum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fold a 32-bit sum to 16 bits.
    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn sum16(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|p| (u32::from(p[0]) << 8) | p.get(1).map_or(0, |b| u32::from(*b)))
            .sum()
    }

    #[test]
    fn completes_a_partial_ipv4_udp_checksum() {
        let payload = b"hello, lab!";
        let udp_len = 8 + payload.len();
        let mut f = vec![0u8; ETH_HEADER + 20 + udp_len];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut f[ETH_HEADER..ETH_HEADER + 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip[9] = PROTO_UDP;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        let u = ETH_HEADER + 20;
        f[u..u + 2].copy_from_slice(&4000u16.to_be_bytes());
        f[u + 2..u + 4].copy_from_slice(&7u16.to_be_bytes());
        f[u + 4..u + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        f[u + 8..].copy_from_slice(payload);
        // What the kernel seeds: the folded pseudo-header sum.
        let pseudo = sum16(&[198, 18, 0, 1, 198, 18, 0, 2]) + u32::from(PROTO_UDP) + udp_len as u32;
        f[u + 6..u + 8].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert!(complete(&mut f));
        // A receiver's check: pseudo header + segment sums to 0xffff.
        assert_eq!(fold(pseudo + sum16(&f[u..])), 0xffff);
    }

    #[test]
    fn leaves_other_frames_alone() {
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let before = arp.clone();
        assert!(!complete(&mut arp));
        assert_eq!(arp, before);
        assert!(!complete(&mut [0u8; 5]));
    }
}
