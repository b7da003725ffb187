//! Payloads that make common UDP services answer, for port checks against
//! hosts without udpreach (`udpreach ports --no-server`).
//!
//! A UDP service only proves it is there by answering, and most answer only
//! a request they understand. Ports without a known service get an empty
//! datagram, as nmap -sU sends: a closed port answers it with ICMP all the
//! same, and it carries nothing a service could act on.

/// A well-formed request for `port`'s usual service; empty when none is known.
/// `id` varies request identifiers (DNS id, SNMP request-id) between attempts.
pub fn probe_payload(port: u16, id: u16) -> Vec<u8> {
    match port {
        53 | 5353 => dns_query(id),
        123 => ntp_client(),
        161 => snmp_v1_get(id),
        _ => Vec::new(),
    }
}

/// Name of the service whose payload [`probe_payload`] sends to `port`.
pub fn service_name(port: u16) -> Option<&'static str> {
    match port {
        53 => Some("dns"),
        5353 => Some("mdns"),
        123 => Some("ntp"),
        161 => Some("snmp"),
        _ => None,
    }
}

/// DNS query: root zone, type NS, class IN, recursion desired. Every DNS
/// server answers it, if only with REFUSED.
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(17);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // flags: standard query, RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question, no records
    q.push(0); // QNAME: the root
    q.extend_from_slice(&[0, 2, 0, 1]); // QTYPE NS, QCLASS IN
    q
}

/// NTP client request (RFC 5905): 48 bytes, LI 3 (unsynchronised), version 4,
/// mode 3 (client), everything else zero.
pub fn ntp_client() -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0b11_100_011;
    p
}

/// SNMPv1 GetRequest for sysDescr.0 (1.3.6.1.2.1.1.1.0), community "public".
pub fn snmp_v1_get(id: u16) -> Vec<u8> {
    let oid = [0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00];
    let mut varbind = vec![0x06, oid.len() as u8];
    varbind.extend_from_slice(&oid);
    varbind.extend_from_slice(&[0x05, 0x00]); // value: NULL
    let varbind = tlv(0x30, &varbind);
    let varbinds = tlv(0x30, &varbind);
    let mut pdu = vec![0x02, 0x04, 0, 0];
    pdu.extend_from_slice(&id.to_be_bytes()); // request-id
    pdu.extend_from_slice(&[0x02, 0x01, 0x00, 0x02, 0x01, 0x00]); // error status, index
    pdu.extend_from_slice(&varbinds);
    let pdu = tlv(0xa0, &pdu); // GetRequest-PDU
    let mut msg = vec![0x02, 0x01, 0x00]; // version: 0 = SNMPv1
    msg.extend_from_slice(&tlv(0x04, b"public"));
    msg.extend_from_slice(&pdu);
    tlv(0x30, &msg)
}

/// BER tag-length-value with a short-form length (every part here is < 128 bytes).
fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    debug_assert!(body.len() < 128);
    let mut v = Vec::with_capacity(body.len() + 2);
    v.push(tag);
    v.push(body.len() as u8);
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_is_a_valid_header_and_question() {
        let q = dns_query(0x1234);
        assert_eq!(q.len(), 17);
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([q[4], q[5]]), 1, "one question");
        assert_eq!(&q[12..], &[0, 0, 2, 0, 1]);
    }

    #[test]
    fn ntp_is_a_v4_client_packet() {
        let p = ntp_client();
        assert_eq!(p.len(), 48);
        assert_eq!(p[0] & 0x07, 3, "mode client");
        assert_eq!((p[0] >> 3) & 0x07, 4, "version 4");
    }

    #[test]
    fn snmp_get_matches_a_known_encoding() {
        // The same request as `snmpget -v1 -c public HOST sysDescr.0` with request-id 0x0102.
        let want: Vec<u8> = vec![
            0x30, 0x29, 0x02, 0x01, 0x00, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0,
            0x1c, 0x02, 0x04, 0x00, 0x00, 0x01, 0x02, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30,
            0x0e, 0x30, 0x0c, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05,
            0x00,
        ];
        assert_eq!(snmp_v1_get(0x0102), want);
    }

    #[test]
    fn ports_without_a_service_get_an_empty_datagram() {
        assert!(probe_payload(40000, 1).is_empty());
        assert_eq!(probe_payload(53, 1).len(), 17);
        assert_eq!(service_name(161), Some("snmp"));
        assert_eq!(service_name(7), None);
    }
}
