//! The one loop from a capture source through a [`FlowTable`] into a [`FlowSink`]: `mirror
//! run`, `mirror dump`, `mirror replay` and the tests all drive reassembly through it.
use std::{future::Future, io, time::Duration};

use mirror_capture::{CaptureSource, Segment, SkipHint};

use crate::{FlowTable, StreamConsumer, MIN_SKIP_HINT};

/// The seam after the flow table's consumers `C`: for HTTP, every request and response with
/// its connection, timestamps and request id, in order.
pub trait FlowSink<C: StreamConsumer> {
    /// A captured segment on its way into the table: the sink may drop it (`None`: filters,
    /// loop prevention), change it, or hold it back (chunk merging).
    fn admit(&mut self, segment: Segment) -> Option<Segment> {
        Some(segment)
    }

    /// What the consumers produced, in order.
    fn event(&mut self, event: C::Event);

    /// Periodic work of a live run, after the table expired what timed out.
    fn tick(&mut self, _table: &FlowTable<C>) {}

    /// A batch went through: a moment to flush output.
    fn flush(&mut self) {}

    /// True once the sink wants nothing more (a count reached): the driver stops.
    fn is_done(&self) -> bool {
        false
    }
}

/// Collecting sinks (tests, tools).
impl<C: StreamConsumer> FlowSink<C> for Vec<C::Event> {
    fn event(&mut self, event: C::Event) {
        self.push(event);
    }
}

/// Why [`FlowDriver::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended<T> {
    /// The source is exhausted (a file ended).
    Source,
    /// The stop future completed (a signal, a command) with this.
    Stopped(T),
    /// The sink is done.
    Sink,
}

/// A flow table and the scratch space to drive it.
pub struct FlowDriver<C: StreamConsumer> {
    table: FlowTable<C>,
    events: Vec<C::Event>,
    batch: Vec<Segment>,
    hints: Vec<SkipHint>,
}

impl<C: StreamConsumer> FlowDriver<C> {
    pub fn new(table: FlowTable<C>) -> Self {
        Self { table, events: Vec::new(), batch: Vec::new(), hints: Vec::new() }
    }

    pub fn table(&self) -> &FlowTable<C> {
        &self.table
    }

    pub fn table_mut(&mut self) -> &mut FlowTable<C> {
        &mut self.table
    }

    /// Takes a batch of segments (emptied) through the sink's admission and the table.
    pub fn feed(&mut self, batch: &mut Vec<Segment>, sink: &mut impl FlowSink<C>) {
        for segment in batch.drain(..) {
            if sink.is_done() {
                continue;
            }
            if let Some(segment) = sink.admit(segment) {
                self.table.push(&segment, &mut self.events);
                self.deliver(sink);
            }
        }
        sink.flush();
    }

    /// Hole and idle timeouts at `now_ns` (the segments' clock).
    pub fn expire(&mut self, now_ns: u64, sink: &mut impl FlowSink<C>) {
        self.table.expire(now_ns, &mut self.events);
        self.deliver(sink);
    }

    /// The end of the input: every connection is closed, what it held delivered.
    pub fn finish(&mut self, sink: &mut impl FlowSink<C>) {
        self.table.finish(&mut self.events);
        self.deliver(sink);
    }

    /// Reads `source` until it ends, `stop` completes or the sink is done. With `tick`, every
    /// period expires timeouts by the wall clock (live sources only: a file's segments carry
    /// the clock of their capture) and calls [`FlowSink::tick`]. A source that can leave
    /// bytes out is told, after each batch, what the consumers will not read.
    pub async fn run<T>(
        &mut self,
        source: &mut impl CaptureSource,
        sink: &mut impl FlowSink<C>,
        stop: impl Future<Output = T>,
        tick: Option<Duration>,
    ) -> io::Result<Ended<T>> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut timer = tokio::time::interval(tick.unwrap_or(Duration::from_secs(3600)));
        self.table.set_skip_hints(if source.can_leave_out() { MIN_SKIP_HINT } else { 0 });
        tokio::pin!(stop);
        let ended = loop {
            tokio::select! {
                value = &mut stop => break Ok(Ended::Stopped(value)),
                more = source.next_batch(&mut batch) => match more {
                    Ok(true) => {
                        self.feed(&mut batch, sink);
                        self.table.take_hints(&mut self.hints);
                        if !self.hints.is_empty() {
                            source.leave_out(&self.hints);
                            self.hints.clear();
                        }
                    }
                    Ok(false) => break Ok(Ended::Source),
                    Err(e) => break Err(e),
                },
                _ = timer.tick(), if tick.is_some() => {
                    self.expire(mirror_capture::wall_clock_ns(), sink);
                    sink.tick(&self.table);
                }
            }
            if sink.is_done() {
                break Ok(Ended::Sink);
            }
        };
        self.batch = batch;
        ended
    }

    fn deliver(&mut self, sink: &mut impl FlowSink<C>) {
        for event in self.events.drain(..) {
            sink.event(event);
        }
    }
}
