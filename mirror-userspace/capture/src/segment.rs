//! The typed TCP segment every capture source produces and reassembly consumes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use mirror_common::SegmentHeader;

use crate::{Direction, Hook};

/// One TCP segment, or one chunk of a large (GSO) segment, as captured.
///
/// Chunks of one segment share `seq`; `chunk_offset` places `payload` inside it, so
/// [`Segment::payload_seq`] is the sequence number of `payload[0]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Capture time: nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub ifindex: u32,
    pub hook: Hook,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Sequence number of the segment's first payload byte (or of the SYN/FIN).
    pub seq: u32,
    pub ack: u32,
    /// TCP flags, see [`crate::tcp_flags`].
    pub flags: u8,
    pub window: u16,
    /// Payload length of the whole segment on the wire.
    pub segment_len: u32,
    /// Where `payload` starts within the segment's payload.
    pub chunk_offset: u32,
    /// Bytes just before `payload` that the source left out on purpose, because the
    /// consumers said they would not read them ([`crate::SkipHint`]): known, not lost. Only
    /// on a segment's first chunk (the kernel then sets it to `chunk_offset`).
    pub elided: u32,
    /// The captured bytes: all of `[chunk_offset, chunk_offset + payload.len())`.
    pub payload: Bytes,
}

impl Segment {
    /// Builds a segment from a ring record's header and its captured payload.
    pub fn from_record(h: &SegmentHeader, payload: Bytes) -> Option<Segment> {
        let (src_ip, dst_ip) = match h.family {
            4 => (ipv4(&h.saddr), ipv4(&h.daddr)),
            6 => (IpAddr::V6(Ipv6Addr::from(h.saddr)), IpAddr::V6(Ipv6Addr::from(h.daddr))),
            _ => return None,
        };
        let direction = match h.direction {
            0 => Direction::Request,
            1 => Direction::Response,
            _ => return None,
        };
        let hook = if h.hook == Hook::Egress as u8 { Hook::Egress } else { Hook::Ingress };
        Some(Segment {
            ts_ns: h.ts_ns,
            ifindex: h.ifindex,
            hook,
            direction,
            src: SocketAddr::new(src_ip, h.sport),
            dst: SocketAddr::new(dst_ip, h.dport),
            seq: h.seq,
            ack: h.ack,
            flags: h.flags,
            window: h.window,
            segment_len: h.payload_len,
            chunk_offset: h.chunk_offset,
            elided: if h.elided != 0 { h.chunk_offset } else { 0 },
            payload,
        })
    }

    /// Sequence number of `payload[0]`.
    pub fn payload_seq(&self) -> u32 {
        self.seq.wrapping_add(self.chunk_offset)
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Bytes this chunk should hold: the kernel cuts payloads into chunks of at most
    /// `LARGE_CHUNK` bytes (smaller payloads travel whole).
    fn expected_len(&self) -> u32 {
        self.segment_len.saturating_sub(self.chunk_offset).min(mirror_common::LARGE_CHUNK as u32)
    }

    /// True if bytes of this chunk are missing (the kernel could not copy them all).
    pub fn is_truncated(&self) -> bool {
        (self.payload.len() as u32) < self.expected_len()
    }

    /// Whether this is the first record of its segment (its start, or what follows the
    /// bytes left out of it).
    pub fn is_first_chunk(&self) -> bool {
        self.chunk_offset == self.elided
    }

    /// True if this is the last (or only) chunk of its segment; FIN belongs after it. A
    /// truncated chunk is the last: the kernel stops copying a segment at the first failure.
    pub fn is_last_chunk(&self) -> bool {
        self.chunk_offset as u64 + self.payload.len() as u64 >= self.segment_len as u64
            || self.is_truncated()
    }

    /// The client side of the connection (the side that is not the service).
    pub fn client(&self) -> SocketAddr {
        match self.direction {
            Direction::Request => self.src,
            Direction::Response => self.dst,
        }
    }

    /// The service side of the connection.
    pub fn server(&self) -> SocketAddr {
        match self.direction {
            Direction::Request => self.dst,
            Direction::Response => self.src,
        }
    }
}

/// Joins the chunk records of large (GSO) segments back into whole segments, for views
/// that show packets (dump lines, pcap files). Chunks of one segment share addresses, ports
/// and sequence number; a segment whose chunks never all arrive (a full ring) is dropped once
/// more than `MAX_OPEN` segments are open.
#[derive(Debug, Default)]
pub struct ChunkMerger {
    open: Vec<(Segment, bytes::BytesMut)>,
}

impl ChunkMerger {
    const MAX_OPEN: usize = 64;

    /// Returns the segment once complete.
    pub fn push(&mut self, seg: Segment) -> Option<Segment> {
        if seg.is_first_chunk() && seg.is_last_chunk() {
            return Some(seg);
        }
        let at = self.open.iter().position(|(s, buf)| {
            s.src == seg.src
                && s.dst == seg.dst
                && s.seq == seg.seq
                && s.chunk_offset + buf.len() as u32 == seg.chunk_offset
        });
        let index = match at {
            Some(i) => i,
            None if seg.is_first_chunk() => {
                if self.open.len() >= Self::MAX_OPEN {
                    self.open.remove(0);
                }
                self.open.push((seg.clone(), bytes::BytesMut::new()));
                self.open.len() - 1
            }
            None => return None, // a later chunk whose start was lost
        };
        let last = seg.is_last_chunk();
        self.open[index].1.extend_from_slice(&seg.payload);
        if !last {
            return None;
        }
        let (mut whole, buf) = self.open.remove(index);
        whole.payload = buf.freeze();
        Some(whole)
    }
}

fn ipv4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_flags;

    fn header(family: u8) -> SegmentHeader {
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        SegmentHeader {
            ts_ns: 1,
            ifindex: 7,
            seq: u32::MAX - 1,
            ack: 5,
            payload_len: 40000,
            chunk_offset: 16384,
            captured_len: 16384,
            saddr,
            daddr,
            sport: 54321,
            dport: 8000,
            window: 502,
            family,
            flags: tcp_flags::ACK | tcp_flags::PSH,
            direction: Direction::Request as u8,
            hook: Hook::Egress as u8,
            elided: 0,
            _pad: [0; 5],
        }
    }

    #[test]
    fn record_becomes_segment() {
        let s = Segment::from_record(&header(4), Bytes::from(vec![0u8; 16384])).unwrap();
        assert_eq!(s.src, "10.0.0.1:54321".parse().unwrap());
        assert_eq!(s.server(), "10.0.0.2:8000".parse().unwrap());
        assert_eq!(s.client(), s.src);
        // Sequence arithmetic wraps.
        assert_eq!(s.payload_seq(), 16382);
        assert!(!s.is_last_chunk());
        assert!(!s.is_truncated());
    }

    #[test]
    fn elided_bytes_precede_the_first_record() {
        let mut h = header(4);
        h.elided = 1;
        let s = Segment::from_record(&h, Bytes::from(vec![0u8; 16384])).unwrap();
        assert_eq!(s.elided, 16384);
        assert!(s.is_first_chunk());
        h.elided = 0;
        assert!(!Segment::from_record(&h, Bytes::new()).unwrap().is_first_chunk());
    }

    #[test]
    fn bad_family_is_rejected() {
        assert!(Segment::from_record(&header(9), Bytes::new()).is_none());
    }
}
