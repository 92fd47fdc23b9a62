//! Synthetic TCP conversations: the segments a client and a server would put on the wire,
//! for unit tests, property tests, fuzzing and benchmarks of the stages after capture.
use std::net::SocketAddr;

use bytes::Bytes;

use crate::segment::{tcp_flags, Direction, Hook, Segment};

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
        Self {
            client,
            server,
            client_seq: client_isn,
            server_seq: server_isn,
            ts_ns: 1,
        }
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
        let syn_ack = self.segment(
            Direction::Response,
            tcp_flags::SYN | tcp_flags::ACK,
            Bytes::new(),
        );
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
            out.push(self.segment(
                dir,
                tcp_flags::ACK | tcp_flags::PSH,
                data.slice(off..off + n),
            ));
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
            Direction::Request => (
                self.client,
                self.server,
                self.client_seq,
                self.server_seq,
                Hook::Egress,
            ),
            Direction::Response => (
                self.server,
                self.client,
                self.server_seq,
                self.client_seq,
                Hook::Ingress,
            ),
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
            payload,
        }
    }
}
