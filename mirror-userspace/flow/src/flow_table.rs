//! The table of tracked connections, in least-recently-active order.
use hashlink::LinkedHashMap;

use super::{
    ConnId, ReassemblyConfig, ReassemblyStats, SegmentIn, StreamConsumer, StreamEvent,
    StreamReassembler,
};
use mirror_capture::{tcp_flags, Direction, Segment, SkipHint};

struct Connection<C> {
    streams: [StreamReassembler; 2],
    consumer: C,
    last_ts_ns: u64,
    /// Bytes this connection holds, as last accounted in the table's total.
    buffered: usize,
}

/// Connections keyed by [`ConnId`], least recently active first, so evicting the oldest and
/// expiring idle ones are O(1) per connection.
pub struct FlowTable<C: StreamConsumer> {
    config: ReassemblyConfig,
    conns: LinkedHashMap<ConnId, Connection<C>>,
    shared: C::Shared,
    stats: ReassemblyStats,
    buffered_total: usize,
    scratch: Vec<StreamEvent>,
    /// Unneeded ranges at least this long become [`SkipHint`]s (0: none are worked out).
    skip_hint_min: u64,
    hints: Vec<SkipHint>,
}

fn index(dir: Direction) -> usize {
    match dir {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

impl<C: StreamConsumer> FlowTable<C> {
    pub fn new(config: ReassemblyConfig, shared: C::Shared) -> Self {
        Self {
            config,
            conns: LinkedHashMap::new(),
            shared,
            stats: ReassemblyStats::default(),
            buffered_total: 0,
            scratch: Vec::new(),
            skip_hint_min: 0,
            hints: Vec::new(),
        }
    }

    /// Works out [`SkipHint`]s for unneeded ranges of at least `min_bytes` (0: stop), to be
    /// collected with [`FlowTable::take_hints`].
    pub fn set_skip_hints(&mut self, min_bytes: u64) {
        self.skip_hint_min = min_bytes;
    }

    /// The hints worked out since the last call, appended to `out`.
    pub fn take_hints(&mut self, out: &mut Vec<SkipHint>) {
        out.append(&mut self.hints);
    }

    /// New caps, in force from the next segment (connections over them are evicted then).
    pub fn set_config(&mut self, config: ReassemblyConfig) {
        self.config = config;
    }

    pub fn shared_mut(&mut self) -> &mut C::Shared {
        &mut self.shared
    }

    pub fn stats(&self) -> &ReassemblyStats {
        &self.stats
    }

    pub fn shared(&self) -> &C::Shared {
        &self.shared
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes buffered by all connections.
    pub fn buffered(&self) -> usize {
        self.buffered_total
    }

    /// Feeds one captured segment; what the consumers produce is appended to `out`.
    pub fn push(&mut self, seg: &Segment, out: &mut Vec<C::Event>) {
        self.stats.segments += 1;
        let id = ConnId { client: seg.client(), server: seg.server() };
        let dir = seg.direction;
        if !self.conns.contains_key(&id) {
            if seg.payload.is_empty() && !seg.has(tcp_flags::SYN) {
                return; // a FIN or RST of a connection we do not track
            }
            self.open(id, out);
        }
        let conn = self.conns.to_back(&id).expect("present");
        conn.last_ts_ns = conn.last_ts_ns.max(seg.ts_ns);
        let stream = &mut conn.streams[index(dir)];
        if !stream.is_synced()
            && !seg.has(tcp_flags::SYN)
            && !seg.payload.is_empty()
            && seg.chunk_offset == 0
            && C::is_message_start(&self.shared, dir, &seg.payload)
        {
            stream.sync(seg.payload_seq());
        }
        let input = SegmentIn {
            seq: seg.payload_seq(),
            payload: &seg.payload,
            ts_ns: seg.ts_ns,
            syn: seg.has(tcp_flags::SYN),
            fin: seg.has(tcp_flags::FIN) && seg.is_last_chunk(),
            rst: seg.has(tcp_flags::RST),
            segment_start: seg.chunk_offset == 0,
            elided: seg.elided,
        };
        let rst = input.rst;
        let mut events = std::mem::take(&mut self.scratch);
        let max_pending = self.config.max_pending_per_direction;
        stream.push(&input, max_pending, &mut self.stats, &mut events);
        let other = &mut conn.streams[1 - index(dir)];
        let mut other_events = Vec::new();
        if rst {
            // A reset ends both directions.
            other.close(&mut self.stats, &mut other_events);
        } else if seg.has(tcp_flags::ACK) {
            // Holes the sender acknowledges were received by it: the capture missed them
            // and they will never be filled.
            other.acknowledged(seg.ack, &mut self.stats, &mut other_events);
        }
        // The other direction first: a request freed by this ACK precedes its response.
        deliver(conn, &mut self.shared, &id, dir.opposite(), &mut other_events, out);
        deliver(conn, &mut self.shared, &id, dir, &mut events, out);
        self.scratch = events;
        if self.skip_hint_min > 0 {
            let ahead = conn.consumer.unneeded_ahead(dir);
            if ahead >= self.skip_hint_min {
                if let Some((from_seq, until_seq)) = conn.streams[index(dir)].skip_hint(ahead) {
                    let hint = SkipHint { src: seg.src, dst: seg.dst, from_seq, until_seq };
                    self.hints.push(hint);
                }
            }
        }
        self.account(&id, out);
    }

    /// Gives up on holes open since before `now_ns - hole_timeout` and evicts connections
    /// idle since before `now_ns - idle_timeout`. Call it periodically (about once a second).
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<C::Event>) {
        let hole_deadline = now_ns.saturating_sub(self.config.hole_timeout_ns);
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.streams.iter().any(|s| s.oldest_pending_ts().is_some_and(|t| t < hole_deadline))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            // Accounting for an earlier one may have evicted this one.
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            for dir in [Direction::Request, Direction::Response] {
                let mut events = Vec::new();
                conn.streams[index(dir)].skip_holes(&mut self.stats, &mut events);
                deliver(conn, &mut self.shared, &id, dir, &mut events, out);
            }
            self.account(&id, out);
        }
        let deadline = now_ns.saturating_sub(self.config.idle_timeout_ns);
        while let Some((id, conn)) = self.conns.front() {
            if conn.last_ts_ns >= deadline {
                break;
            }
            let id = *id;
            self.stats.evicted_idle += 1;
            self.evict(&id, out);
        }
    }

    /// Ends every connection (end of a capture file, shutdown), flushing what can be.
    pub fn finish(&mut self, out: &mut Vec<C::Event>) {
        while let Some((&id, _)) = self.conns.front() {
            self.evict(&id, out);
        }
    }

    fn open(&mut self, id: ConnId, out: &mut Vec<C::Event>) {
        while self.conns.len() >= self.config.max_connections.max(1) {
            let Some((&oldest, _)) = self.conns.front() else {
                break;
            };
            self.stats.evicted_connection_cap += 1;
            self.evict(&oldest, out);
        }
        self.stats.connections_opened += 1;
        let conn = Connection {
            streams: Default::default(),
            consumer: C::new(&self.shared),
            last_ts_ns: 0,
            buffered: 0,
        };
        self.conns.insert(id, conn);
    }

    /// Closes both directions (delivering what is held) and forgets the connection.
    fn evict(&mut self, id: &ConnId, out: &mut Vec<C::Event>) {
        let Some(mut conn) = self.conns.remove(id) else {
            return;
        };
        self.buffered_total -= conn.buffered;
        for dir in [Direction::Request, Direction::Response] {
            let mut events = Vec::new();
            conn.streams[index(dir)].close(&mut self.stats, &mut events);
            deliver(&mut conn, &mut self.shared, id, dir, &mut events, out);
        }
    }

    /// Updates the memory accounting after `id` changed, and enforces the caps.
    fn account(&mut self, id: &ConnId, out: &mut Vec<C::Event>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let now =
            conn.streams[0].buffered() + conn.streams[1].buffered() + conn.consumer.buffered();
        self.buffered_total = self.buffered_total - conn.buffered + now;
        conn.buffered = now;
        let done = conn.streams.iter().all(StreamReassembler::is_ended);
        if done {
            self.stats.connections_closed += 1;
            self.evict(id, out);
        } else if now > self.config.max_buffered_per_connection {
            self.stats.evicted_connection_memory += 1;
            self.evict(id, out);
        }
        while self.buffered_total > self.config.max_buffered_total {
            let Some((&oldest, _)) = self.conns.front() else {
                break;
            };
            self.stats.evicted_total_memory += 1;
            self.evict(&oldest, out);
        }
    }
}

fn deliver<C: StreamConsumer>(
    conn: &mut Connection<C>,
    shared: &mut C::Shared,
    id: &ConnId,
    dir: Direction,
    events: &mut Vec<StreamEvent>,
    out: &mut Vec<C::Event>,
) {
    for event in events.drain(..) {
        conn.consumer.on_stream(shared, id, dir, event, out);
    }
}
