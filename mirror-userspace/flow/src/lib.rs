//! TCP reassembly: where captured segments become ordered byte streams, per connection and
//! direction, with bounded memory.
//!
//! [`FlowTable`] keys connections by their client and server addresses, feeds each
//! direction's [`StreamReassembler`], and hands the resulting [`StreamEvent`]s to a
//! per-connection [`StreamConsumer`] (the HTTP stage). It enforces the caps: number of
//! connections, out-of-order bytes per direction, buffered bytes per connection and in total,
//! and idle time. Every eviction and every lost byte is counted in [`ReassemblyStats`].
mod driver;
mod flow_table;
mod stream;

use std::net::SocketAddr;

pub use driver::{Ended, FlowDriver, FlowSink};
pub use flow_table::FlowTable;
pub use stream::StreamEvent;
use stream::{SegmentIn, StreamReassembler};

use mirror_capture::Direction;

/// Identity of a connection: the client and the service side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// The stage after reassembly, one value per connection.
pub trait StreamConsumer {
    /// State shared by all connections (configuration, counters).
    type Shared;
    /// What the consumer produces.
    type Event;

    fn new(shared: &Self::Shared) -> Self;

    /// Whether a direction that has not been synchronised (the connection was already open
    /// when capture started) may start at a segment beginning with `payload`.
    fn is_message_start(shared: &Self::Shared, dir: Direction, payload: &[u8]) -> bool;

    /// Consumes the next event of direction `dir`.
    fn on_stream(
        &mut self,
        shared: &mut Self::Shared,
        conn: &ConnId,
        dir: Direction,
        event: StreamEvent,
        out: &mut Vec<Self::Event>,
    );

    /// Bytes this consumer buffers (counted against the memory caps).
    fn buffered(&self) -> usize;

    /// How many of direction `dir`'s next bytes, after all delivered so far, this consumer
    /// will not read (the rest of a body it only measures). A source that can leave bytes
    /// out is told about large ranges ([`mirror_capture::SkipHint`]) and delivers them as
    /// [`StreamEvent::Elided`].
    fn unneeded_ahead(&self, _dir: Direction) -> u64 {
        0
    }
}

/// Unneeded ranges shorter than this are not worth a hint: leaving bytes out costs the
/// source a map update (a syscall), copying 32 KiB costs about as much.
pub const MIN_SKIP_HINT: u64 = 32 * 1024;

/// Limits of the flow table. Every one is a hard cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Connections tracked at once; the least recently active one is evicted beyond it.
    pub max_connections: usize,
    /// Out-of-order bytes held per direction; beyond it the oldest hole is declared lost.
    pub max_pending_per_direction: usize,
    /// Bytes buffered by one connection (out-of-order data and partial messages).
    pub max_buffered_per_connection: usize,
    /// Bytes buffered by all connections; least recently active connections are evicted.
    pub max_buffered_total: usize,
    /// A connection without segments for this long is evicted.
    pub idle_timeout_ns: u64,
    /// A hole open this long is given up on (when the peer's ACK has not already shown the
    /// bytes were received, which gives up on it at once).
    pub hole_timeout_ns: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_pending_per_direction: 4 << 20,
            max_buffered_per_connection: 40 << 20,
            max_buffered_total: 512 << 20,
            idle_timeout_ns: 300_000_000_000,
            hole_timeout_ns: 2_000_000_000,
        }
    }
}

mirror_common::counter_set! {
    /// Counters of the reassembly stage; each names a reason bytes or state were dropped.
    pub struct ReassemblyStats {
        segments,
        connections_opened,
        connections_closed,
        /// Bytes seen again (retransmissions, overlaps).
        duplicate_bytes,
        /// Overlapping segments whose bytes differed from what was held (first arrival kept).
        conflicting_overlaps,
        /// Segments too far from the expected sequence number to belong to the stream.
        out_of_window_segments,
        /// Bytes of connections joined mid-stream, skipped until a message start.
        unsynced_bytes,
        /// Bytes never captured (holes given up on).
        gap_bytes,
        /// Bytes the source left out on purpose (known, unread: not a loss).
        elided_bytes,
        /// Holes given up on because the out-of-order buffer was full.
        overflow_gaps,
        /// Bytes after a direction ended.
        after_end_bytes,
        evicted_idle,
        evicted_connection_cap,
        evicted_connection_memory,
        evicted_total_memory,
    }
}
