//! The seam between capture and everything after it.
use std::{future::Future, io, net::SocketAddr};

use crate::Segment;

/// Bytes of one direction of a connection that nothing after capture will read (the rest of
/// a response body that is only measured): a source may leave them out, and then says so
/// in [`Segment::elided`] rather than dropping them silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkipHint {
    /// Sender and receiver of the segments concerned.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Sequence numbers `[from_seq, until_seq)`, wrapping.
    pub from_seq: u32,
    pub until_seq: u32,
}

/// A stream of captured segments, delivered in batches (one batch per wake-up of the
/// source, so per-segment overhead stays off the hot path).
pub trait CaptureSource {
    /// Appends the next batch to `out` and returns `Ok(true)`, or `Ok(false)` once the
    /// source is exhausted (a file ended, the tap was closed).
    fn next_batch(
        &mut self,
        out: &mut Vec<Segment>,
    ) -> impl Future<Output = io::Result<bool>> + Send;

    /// Whether this source acts on [`CaptureSource::leave_out`] (the consumers then work
    /// out what they will not read; a file or a plain tap ignores it).
    fn can_leave_out(&self) -> bool {
        false
    }

    /// Bytes the consumers will not read; the source may stop copying them.
    fn leave_out(&mut self, _hints: &[SkipHint]) {}
}
