//! The seam between capture and everything after it.
use std::{future::Future, io};

use crate::Segment;

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
