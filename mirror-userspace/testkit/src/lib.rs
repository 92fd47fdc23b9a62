//! The test kit, used only as a dev-dependency: synthetic TCP conversations (the segments a
//! client and a server would put on the wire), a [`MemorySource`] replaying them as a
//! capture source, and the fuzz harness, for unit tests, property tests, fuzzing and
//! benchmarks of the stages after capture.
use std::{collections::VecDeque, io, net::SocketAddr};

mod shadow;
pub use shadow::{TestShadow, OK_EMPTY};

use bytes::Bytes;

use mirror_capture::{tcp_flags, CaptureSource, Direction, Hook, Segment};

/// One connection's two sequence spaces and a clock.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub client: SocketAddr,
    pub server: SocketAddr,
    client_seq: u32,
    server_seq: u32,
    ts_ns: u64,
}

impl Conversation {
    /// A conversation whose initial sequence numbers are `client_isn` and `server_isn`.
    pub fn new(client: SocketAddr, server: SocketAddr, client_isn: u32, server_isn: u32) -> Self {
        Self { client, server, client_seq: client_isn, server_seq: server_isn, ts_ns: 1 }
    }

    /// Sets the clock used for the next segments.
    pub fn at(&mut self, ts_ns: u64) -> &mut Self {
        self.ts_ns = ts_ns;
        self
    }

    /// SYN and SYN-ACK.
    pub fn open(&mut self) -> Vec<Segment> {
        let syn = self.segment(Direction::Request, tcp_flags::SYN, Bytes::new());
        self.client_seq = self.client_seq.wrapping_add(1);
        let syn_ack =
            self.segment(Direction::Response, tcp_flags::SYN | tcp_flags::ACK, Bytes::new());
        self.server_seq = self.server_seq.wrapping_add(1);
        vec![syn, syn_ack]
    }

    /// The client sends `data` in segments of at most `mss` bytes.
    pub fn request(&mut self, data: &[u8], mss: usize) -> Vec<Segment> {
        self.send(Direction::Request, data, mss)
    }

    /// The server sends `data` in segments of at most `mss` bytes.
    pub fn response(&mut self, data: &[u8], mss: usize) -> Vec<Segment> {
        self.send(Direction::Response, data, mss)
    }

    /// A FIN from `dir`'s sender.
    pub fn fin(&mut self, dir: Direction) -> Segment {
        let seg = self.segment(dir, tcp_flags::FIN | tcp_flags::ACK, Bytes::new());
        *self.seq_mut(dir) = self.seq_mut(dir).wrapping_add(1);
        seg
    }

    /// A RST from `dir`'s sender.
    pub fn rst(&mut self, dir: Direction) -> Segment {
        self.segment(dir, tcp_flags::RST, Bytes::new())
    }

    /// Both FINs.
    pub fn close(&mut self) -> Vec<Segment> {
        vec![self.fin(Direction::Request), self.fin(Direction::Response)]
    }

    fn send(&mut self, dir: Direction, data: &[u8], mss: usize) -> Vec<Segment> {
        let data = Bytes::copy_from_slice(data);
        let mut out = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let n = mss.max(1).min(data.len() - off);
            out.push(self.segment(dir, tcp_flags::ACK | tcp_flags::PSH, data.slice(off..off + n)));
            *self.seq_mut(dir) = self.seq_mut(dir).wrapping_add(n as u32);
            off += n;
        }
        out
    }

    fn seq_mut(&mut self, dir: Direction) -> &mut u32 {
        match dir {
            Direction::Request => &mut self.client_seq,
            Direction::Response => &mut self.server_seq,
        }
    }

    fn segment(&mut self, dir: Direction, flags: u8, payload: Bytes) -> Segment {
        let (src, dst, seq, ack, hook) = match dir {
            Direction::Request => {
                (self.client, self.server, self.client_seq, self.server_seq, Hook::Egress)
            }
            Direction::Response => {
                (self.server, self.client, self.server_seq, self.client_seq, Hook::Ingress)
            }
        };
        self.ts_ns += 1;
        Segment {
            ts_ns: self.ts_ns,
            ifindex: 1,
            hook,
            direction: dir,
            src,
            dst,
            seq,
            ack,
            flags,
            window: 502,
            segment_len: payload.len() as u32,
            chunk_offset: 0,
            elided: 0,
            payload,
        }
    }
}

/// Decodes arbitrary bytes into segments of up to four connections, for fuzzing the stages
/// after capture. Each record is a control byte (connection, direction, flags), a signed
/// sequence offset from that direction's high-water mark (so segments overlap, repeat, go
/// back or jump ahead, and sequence numbers wrap), and a payload length; the payload follows.
pub fn segments_from_fuzz(data: &[u8]) -> Vec<Segment> {
    let server: SocketAddr = "10.0.0.2:8080".parse().expect("literal");
    // Per connection and direction: the sequence number of the highest byte sent.
    let mut marks = [[0u32; 2]; 4];
    for (i, m) in marks.iter_mut().enumerate() {
        *m = [(u32::MAX - 300).wrapping_add(i as u32 * 1000), 7 + i as u32 * 77_777];
    }
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts = 1u64;
    while rest.len() >= 4 {
        let (ctl, off, len) = (rest[0], i16::from_le_bytes([rest[1], rest[2]]), rest[3] as usize);
        rest = &rest[4..];
        let len = len.min(rest.len());
        let payload = Bytes::copy_from_slice(&rest[..len]);
        rest = &rest[len..];
        let conn = (ctl & 3) as usize;
        let dir = if ctl & 4 == 0 { Direction::Request } else { Direction::Response };
        let d = (ctl >> 2 & 1) as usize;
        const FLAGS: [u8; 8] = [
            tcp_flags::ACK,
            tcp_flags::ACK | tcp_flags::PSH,
            tcp_flags::SYN,
            tcp_flags::SYN | tcp_flags::ACK,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::RST,
            tcp_flags::ACK,
            0,
        ];
        let flags = FLAGS[(ctl >> 3 & 7) as usize];
        let seq = marks[conn][d].wrapping_add(off as i32 as u32);
        let end = seq.wrapping_add(len as u32);
        if (end.wrapping_sub(marks[conn][d]) as i32) > 0 {
            marks[conn][d] = end;
        }
        let client: SocketAddr = SocketAddr::new([10, 0, 0, 1].into(), 40000 + conn as u16);
        let (src, dst) = match dir {
            Direction::Request => (client, server),
            Direction::Response => (server, client),
        };
        ts += u64::from(ctl >> 6) * 700_000_000;
        out.push(Segment {
            ts_ns: ts,
            ifindex: 1,
            hook: Hook::Ingress,
            direction: dir,
            src,
            dst,
            seq,
            ack: marks[conn][1 - d],
            flags,
            window: 0,
            segment_len: len as u32,
            chunk_offset: 0,
            elided: 0,
            payload,
        });
    }
    out
}

/// Runs decoded fuzz input through reassembly and framing with small caps, checking the
/// invariants after every segment. Panics on a violation (that is the fuzzer's signal).
pub fn fuzz_extract(data: &[u8]) {
    use mirror_flow::ReassemblyConfig;
    use mirror_http::{extractor, HttpConfig};
    let config = ReassemblyConfig {
        max_connections: 3,
        max_pending_per_direction: 4096,
        max_buffered_per_connection: 16384,
        max_buffered_total: 24576,
        idle_timeout_ns: 5_000_000_000,
        hole_timeout_ns: 1_000_000_000,
    };
    let mut x =
        extractor(config.clone(), HttpConfig { max_message_bytes: 8192, ..HttpConfig::default() });
    let mut events = Vec::new();
    for seg in segments_from_fuzz(data) {
        x.push(&seg, &mut events);
        x.expire(seg.ts_ns, &mut events);
        assert!(x.connections() <= config.max_connections);
        assert!(x.buffered() <= config.max_buffered_total);
    }
    x.finish(&mut events);
    assert_eq!((x.connections(), x.buffered()), (0, 0));
    for e in &events {
        if let mirror_http::HttpEvent::Request(r) = e {
            assert!(r.head.bytes().len() + r.body.len() <= 8192);
        }
    }
}
/// Runs arbitrary bytes as both directions of one HTTP/2 connection (the preface is
/// supplied): each record is a control byte, bit 0 the direction and the rest the payload
/// length, then the payload, as one segment. Checks after every segment that the
/// connection's memory stays under its caps, and that every stream's events come in the
/// order the protocol allows: headers first, nothing after its end or a reset.
pub fn fuzz_h2(data: &[u8]) {
    use mirror_flow::ReassemblyConfig;
    use mirror_http::{extractor, H2Part, HttpConfig, HttpEvent};
    use std::collections::HashMap;
    let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
    let client: SocketAddr = "10.0.0.1:40000".parse().expect("literal");
    let mut conv = Conversation::new(client, "10.0.0.2:50051".parse().expect("literal"), 1, 2);
    let mut segments = conv.open();
    segments.extend(conv.request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24));
    let mut rest = data;
    while let Some((&ctl, tail)) = rest.split_first() {
        let len = usize::from(ctl >> 1).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        if payload.is_empty() {
            continue;
        }
        let dir = if ctl & 1 == 0 { Direction::Request } else { Direction::Response };
        segments.extend(match dir {
            Direction::Request => conv.request(payload, len),
            Direction::Response => conv.response(payload, len),
        });
    }
    segments.extend(conv.close());
    let mut events = Vec::new();
    for seg in &segments {
        x.push(seg, &mut events);
        // Two directions, each a frame (256 KiB) and a header block (256 KiB) at most.
        assert!(x.buffered() <= 4 * 256 * 1024 + 4096, "{} bytes held", x.buffered());
    }
    x.finish(&mut events);
    assert_eq!((x.connections(), x.buffered()), (0, 0));
    // Per stream and direction: 0 nothing yet, 1 headers seen, 2 ended.
    let mut state: HashMap<(u32, bool), u8> = HashMap::new();
    for e in &events {
        let HttpEvent::H2(e) = e else { continue };
        let done = |state: &HashMap<(u32, bool), u8>, req| state.get(&(e.stream, req)) == Some(&2);
        if let H2Part::Reset(_) = e.part {
            assert!(!(done(&state, true) && done(&state, false)), "reset of an ended stream");
            state.insert((e.stream, true), 2);
            state.insert((e.stream, false), 2);
            continue;
        }
        let s = state.entry((e.stream, e.dir == Direction::Request)).or_default();
        assert!(*s < 2, "stream {} {:?} went on after its end: {:?}", e.stream, e.dir, e.part);
        match &e.part {
            H2Part::Headers { end_stream, .. } => {
                assert_eq!(*s, 0, "headers twice");
                *s = if *end_stream { 2 } else { 1 };
            }
            H2Part::Data { end_stream, .. } => {
                assert_eq!(*s, 1, "data before headers");
                *s = if *end_stream { 2 } else { 1 };
            }
            H2Part::Trailers(_) => {
                assert_eq!(*s, 1, "trailers before headers");
                *s = 2;
            }
            H2Part::Reset(_) => {}
        }
    }
}

/// A source replaying segments held in memory, in batches of a fixed size.
pub struct MemorySource {
    segments: VecDeque<Segment>,
    batch: usize,
}

impl MemorySource {
    pub fn new(segments: impl IntoIterator<Item = Segment>, batch: usize) -> Self {
        Self { segments: segments.into_iter().collect(), batch: batch.max(1) }
    }
}

impl CaptureSource for MemorySource {
    async fn next_batch(&mut self, out: &mut Vec<Segment>) -> io::Result<bool> {
        if self.segments.is_empty() {
            return Ok(false);
        }
        let n = self.batch.min(self.segments.len());
        out.extend(self.segments.drain(..n));
        Ok(true)
    }
}
