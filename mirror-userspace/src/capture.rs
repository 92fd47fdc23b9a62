//! Capture sources: where segments come from.
//!
//! Everything after capture consumes a [`CaptureSource`], so the live kernel tap
//! ([`crate::tap::RingSource`]), a pcap file or a test's hand-built segments feed the same
//! reassembly.
use std::{collections::VecDeque, future::Future, io};

use crate::segment::Segment;

/// A stream of captured segments, delivered in batches (one batch per wake-up of the
/// source, so per-segment overhead stays off the hot path).
pub trait CaptureSource {
    /// Appends the next batch to `out` and returns `Ok(true)`, or `Ok(false)` once the
    /// source is exhausted (a file ended, the tap was closed).
    fn next_batch(
        &mut self,
        out: &mut Vec<Segment>,
    ) -> impl Future<Output = io::Result<bool>> + Send;
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
