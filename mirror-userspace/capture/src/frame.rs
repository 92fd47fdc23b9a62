//! Raw frames and segments, both ways: decoding captured frames (pcap files) into
//! [`Segment`]s with the same parsing rules as the kernel tap, and encoding segments back into
//! frames (pcap output, `-x`/`-X`/`-A` dumps). Encoded frames carry a synthesised Ethernet,
//! IP and TCP header (no TCP options) with correct checksums.
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use mirror_common::parse::{
    is_skipped_ipv6_ext, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, MAX_IPV6_EXT,
};

use crate::{Direction, Hook, Segment};

/// Link-layer framing of captured frames (pcap DLT/LINKTYPE values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// LINKTYPE_ETHERNET (1).
    Ethernet,
    /// LINKTYPE_RAW (101) and LINKTYPE_IPV4/IPV6 (228/229): the frame starts with IP.
    Raw,
    /// LINKTYPE_LINUX_SLL (113): tcpdump -i any.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276).
    LinuxSll2,
}

impl LinkType {
    pub fn from_linktype(value: u32) -> Option<LinkType> {
        match value {
            1 => Some(LinkType::Ethernet),
            101 | 228 | 229 => Some(LinkType::Raw),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            _ => None,
        }
    }
}

/// Decides a segment's direction from its ports: toward a service port is a request.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    ports: Vec<u16>,
}

impl Classifier {
    /// With no ports, the lower port is taken for the service (clients use ephemeral ports).
    pub fn new(ports: Vec<u16>) -> Self {
        Self { ports }
    }

    pub fn direction(&self, sport: u16, dport: u16) -> Option<Direction> {
        if self.ports.is_empty() {
            return Some(if dport <= sport { Direction::Request } else { Direction::Response });
        }
        if self.ports.contains(&dport) {
            Some(Direction::Request)
        } else if self.ports.contains(&sport) {
            Some(Direction::Response)
        } else {
            None
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one frame into a segment (`None` for anything but a parseable TCP segment the
/// classifier selects). `orig_len` is the frame's length on the wire (it may have been cut
/// by the snap length); a cut payload gives a segment that reports itself truncated.
pub fn decode(
    link: LinkType,
    frame: &[u8],
    ts_ns: u64,
    classifier: &Classifier,
) -> Option<Segment> {
    let (mut ether_type, mut l3) = match link {
        LinkType::Ethernet => (be16(frame, 12)?, 14),
        LinkType::LinuxSll => (be16(frame, 14)?, 16),
        LinkType::LinuxSll2 => (be16(frame, 0)?, 20),
        LinkType::Raw => match frame.first()? >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            _ => return None,
        },
    };
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = be16(frame, l3 + 2)?;
        l3 += 4;
    }
    let (src, dst, l4, l4_len) = match ether_type {
        ETH_P_IP => ipv4(frame, l3)?,
        ETH_P_IPV6 => ipv6(frame, l3)?,
        _ => return None,
    };
    let sport = be16(frame, l4)?;
    let dport = be16(frame, l4 + 2)?;
    let direction = classifier.direction(sport, dport)?;
    let doff = (*frame.get(l4 + 12)? >> 4) as usize * 4;
    if doff < 20 || doff > l4_len {
        return None;
    }
    let payload_len = l4_len - doff;
    let start = l4 + doff;
    let captured = frame.len().saturating_sub(start).min(payload_len);
    Some(Segment {
        ts_ns,
        ifindex: 0,
        hook: Hook::Ingress,
        direction,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        seq: be32(frame, l4 + 4)?,
        ack: be32(frame, l4 + 8)?,
        flags: *frame.get(l4 + 13)?,
        window: be16(frame, l4 + 14)?,
        segment_len: payload_len as u32,
        chunk_offset: 0,
        elided: 0,
        payload: Bytes::copy_from_slice(&frame[start..start + captured]),
    })
}

/// Source, destination, TCP offset and TCP length (header and payload) of an IPv4 packet.
fn ipv4(f: &[u8], l3: usize) -> Option<(IpAddr, IpAddr, usize, usize)> {
    let ihl = (*f.get(l3)? & 0x0f) as usize * 4;
    let total = be16(f, l3 + 2)? as usize;
    let frag = be16(f, l3 + 6)? & 0x1fff;
    if *f.get(l3 + 9)? != IPPROTO_TCP || frag != 0 || ihl < 20 || total < ihl {
        return None;
    }
    let src: [u8; 4] = f.get(l3 + 12..l3 + 16)?.try_into().ok()?;
    let dst: [u8; 4] = f.get(l3 + 16..l3 + 20)?.try_into().ok()?;
    Some((src.into(), dst.into(), l3 + ihl, total - ihl))
}

fn ipv6(f: &[u8], l3: usize) -> Option<(IpAddr, IpAddr, usize, usize)> {
    let mut payload = be16(f, l3 + 4)? as usize;
    let mut next = *f.get(l3 + 6)?;
    let src: [u8; 16] = f.get(l3 + 8..l3 + 24)?.try_into().ok()?;
    let dst: [u8; 16] = f.get(l3 + 24..l3 + 40)?.try_into().ok()?;
    let mut off = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        if !is_skipped_ipv6_ext(next) {
            break;
        }
        let len = (*f.get(off + 1)? as usize + 1) * 8;
        next = *f.get(off)?;
        off += len;
        payload = payload.checked_sub(len)?;
    }
    (next == IPPROTO_TCP).then_some((src.into(), dst.into(), off, payload))
}

/// Appends the frame of `seg` (Ethernet, IP, TCP, payload) to `out`. Mixed address
/// families cannot happen in a segment; the source decides the family.
pub fn encode(seg: &Segment, out: &mut Vec<u8>) {
    let ether_type: u16 = if seg.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    out.extend_from_slice(&ether_type.to_be_bytes());
    encode_ip(seg, out);
}

/// Appends the IP packet of `seg` (no link layer).
pub fn encode_ip(seg: &Segment, out: &mut Vec<u8>) {
    let tcp_len = 20 + seg.payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend_from_slice(&seg.src.port().to_be_bytes());
    tcp.extend_from_slice(&seg.dst.port().to_be_bytes());
    tcp.extend_from_slice(&seg.seq.to_be_bytes());
    tcp.extend_from_slice(&seg.ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, seg.flags]);
    tcp.extend_from_slice(&seg.window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(&seg.payload);
    let mut sum = Checksum::default();
    match (seg.src.ip(), seg.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let mut ip_sum = Checksum::default();
            ip_sum.add(&ip);
            ip[10..12].copy_from_slice(&ip_sum.finish().to_be_bytes());
            out.extend_from_slice(&ip);
            sum.add(&s.octets());
            sum.add(&d.octets());
            sum.add(&[0, 6]);
            sum.add(&(tcp_len as u16).to_be_bytes());
        }
        (s, d) => {
            let (s, d) = (to_v6(s), to_v6(d));
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(tcp_len as u16).to_be_bytes());
            out.extend_from_slice(&[6, 64]);
            out.extend_from_slice(&s);
            out.extend_from_slice(&d);
            sum.add(&s);
            sum.add(&d);
            sum.add(&(tcp_len as u32).to_be_bytes());
            sum.add(&[0, 0, 0, 6]);
        }
    }
    sum.add(&tcp);
    tcp[16..18].copy_from_slice(&sum.finish().to_be_bytes());
    out.extend_from_slice(&tcp);
}

fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// The Internet checksum (RFC 1071).
#[derive(Default)]
struct Checksum {
    sum: u64,
    odd: Option<u8>,
}

impl Checksum {
    fn add(&mut self, mut data: &[u8]) {
        if let Some(hi) = self.odd.take() {
            if let Some((&lo, rest)) = data.split_first() {
                self.sum += u16::from_be_bytes([hi, lo]) as u64;
                data = rest;
            } else {
                self.odd = Some(hi);
                return;
            }
        }
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            self.sum += u16::from_be_bytes([c[0], c[1]]) as u64;
        }
        self.odd = chunks.remainder().first().copied();
    }

    fn finish(mut self) -> u16 {
        if let Some(hi) = self.odd {
            self.sum += (hi as u64) << 8;
        }
        while self.sum >> 16 != 0 {
            self.sum = (self.sum & 0xffff) + (self.sum >> 16);
        }
        !(self.sum as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_flags;

    fn segment(src: &str, dst: &str, payload: &[u8]) -> Segment {
        Segment {
            ts_ns: 5,
            ifindex: 0,
            hook: Hook::Ingress,
            direction: Direction::Request,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq: 1000,
            ack: 77,
            flags: tcp_flags::PSH | tcp_flags::ACK,
            window: 502,
            segment_len: payload.len() as u32,
            chunk_offset: 0,
            elided: 0,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn encode_then_decode_round_trips() {
        for (src, dst) in
            [("10.0.0.1:40000", "10.0.0.2:8080"), ("[fd00::1]:40000", "[fd00::2]:8080")]
        {
            let seg = segment(src, dst, b"GET / HTTP/1.1\r\n\r\n!");
            let mut frame = Vec::new();
            encode(&seg, &mut frame);
            let back = decode(LinkType::Ethernet, &frame, 5, &Classifier::new(vec![8080])).unwrap();
            assert_eq!(back, seg);
            // A checksum over a segment including its checksum is 0 (sum of all ones).
            let l4 = if seg.src.is_ipv4() { 14 + 20 } else { 14 + 40 };
            let mut sum = Checksum::default();
            if seg.src.is_ipv4() {
                sum.add(&frame[14 + 12..14 + 20]);
                sum.add(&[0, 6]);
            } else {
                sum.add(&frame[14 + 8..14 + 40]);
                sum.add(&[0, 0, 0, 6]);
            }
            let tcp_len = (frame.len() - l4) as u32;
            if seg.src.is_ipv4() {
                sum.add(&(tcp_len as u16).to_be_bytes());
            } else {
                sum.add(&tcp_len.to_be_bytes());
            }
            sum.add(&frame[l4..]);
            assert_eq!(sum.finish(), 0);
        }
    }

    #[test]
    fn snap_length_cuts_show_as_truncated() {
        let seg = segment("10.0.0.1:40000", "10.0.0.2:8080", &[b'x'; 100]);
        let mut frame = Vec::new();
        encode(&seg, &mut frame);
        frame.truncate(frame.len() - 40);
        let back = decode(LinkType::Ethernet, &frame, 5, &Classifier::default()).unwrap();
        assert_eq!((back.segment_len, back.payload.len()), (100, 60));
        assert!(back.is_truncated());
    }

    #[test]
    fn classifier_picks_the_service_side() {
        let c = Classifier::new(vec![80]);
        assert_eq!(c.direction(5555, 80), Some(Direction::Request));
        assert_eq!(c.direction(80, 5555), Some(Direction::Response));
        assert_eq!(c.direction(1, 2), None);
        assert_eq!(Classifier::default().direction(50000, 443), Some(Direction::Request));
    }
}
