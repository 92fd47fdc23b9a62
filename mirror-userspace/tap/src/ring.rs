//! Reading the ring buffer: tokio `AsyncFd` wake-ups, each draining a batch of records into
//! typed [`Segment`]s.
use std::{io, ptr};

use std::net::SocketAddr;

use anyhow::Result;
use aya::maps::{HashMap, MapData, RingBuf};
use bytes::BytesMut;
use mirror_common::{SegmentHeader, SkipKey, SkipRange, HEADER_LEN};
use tokio::io::{unix::AsyncFd, Interest};

use mirror_capture::{CaptureSource, Segment, SkipHint};

/// Most records turned into segments per batch, so one busy wake-up cannot hold the
/// consumer for long (the rest is picked up on the next call).
const MAX_BATCH: usize = 4096;
/// Payload bytes are copied out of the ring into shared arenas of this size; a batch of
/// small segments costs one allocation instead of one per segment.
const ARENA_BYTES: usize = 256 * 1024;

/// One ring of the tap, not yet read: it may move to the thread that will read it.
pub struct RingReader {
    pub(crate) ring: RingBuf<MapData>,
    pub(crate) skips: Option<SkipMap>,
}

impl RingReader {
    /// The ring as a capture source; must be called within the reader's tokio runtime.
    pub fn into_source(self) -> Result<RingSource> {
        RingSource::new(self.ring, self.skips)
    }
}

/// The kernel's map of byte ranges to leave out (`MAP_SKIPS`), one handle per reader.
pub(crate) struct SkipMap {
    map: HashMap<MapData, SkipKey, SkipRange>,
    /// An update failed (said once; the bytes of such a range are copied after all).
    warned: bool,
}

impl SkipMap {
    pub(crate) fn new(map: HashMap<MapData, SkipKey, SkipRange>) -> Self {
        Self { map, warned: false }
    }

    fn insert(&mut self, hint: &SkipHint) {
        let key = SkipKey {
            saddr: address(hint.src),
            daddr: address(hint.dst),
            sport: hint.src.port(),
            dport: hint.dst.port(),
        };
        let range = SkipRange { from: hint.from_seq, until: hint.until_seq };
        if let Err(e) = self.map.insert(key, range, 0) {
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!(
                    "leaving unread bytes out of the capture failed ({e}): copying them"
                );
            }
        }
    }
}

/// An address as the kernel writes it into segment headers: network order, IPv4 in the
/// first four bytes.
fn address(addr: SocketAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        SocketAddr::V4(a) => out[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out = a.ip().octets(),
    }
    out
}

/// The live tap as a [`CaptureSource`].
pub struct RingSource {
    ring: AsyncFd<RingBuf<MapData>>,
    arena: BytesMut,
    malformed: u64,
    /// Polls in a row that found the ring empty: the poll interval doubles with each, up to
    /// [`RingSource::MAX_POLL_INTERVAL`].
    idle_polls: u32,
    /// Added to the kernel's CLOCK_MONOTONIC timestamps to give wall-clock time.
    clock_offset_ns: u64,
    skips: Option<SkipMap>,
}

impl RingSource {
    /// How often the ring is read when the kernel has not woken us, while records come.
    pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
    /// The longest poll interval, reached after polls that found nothing: an idle agent
    /// (one reader per worker) wakes 30 times a second per ring rather than 500. A burst
    /// wakes the reader at once (the kernel's wake-up); a trickle waits at most this long.
    pub const MAX_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(32);

    pub(super) fn new(ring: RingBuf<MapData>, skips: Option<SkipMap>) -> Result<Self> {
        // SAFETY: the fd belongs to the RingBuf, which the AsyncFd owns for its whole life;
        // it stays open and the same until the AsyncFd is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the ring with tokio: {e}"))?;
        let clock_offset_ns =
            clock_ns(libc::CLOCK_REALTIME).saturating_sub(clock_ns(libc::CLOCK_MONOTONIC));
        Ok(Self {
            ring,
            arena: BytesMut::new(),
            malformed: 0,
            idle_polls: 0,
            clock_offset_ns,
            skips,
        })
    }

    /// Records that could not be decoded (never expected: both sides share the layout).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Drains what is in the ring right now without waiting; returns the number added.
    pub fn drain_now(&mut self, out: &mut Vec<Segment>) -> usize {
        let Self { ring, arena, malformed, clock_offset_ns, .. } = self;
        drain(ring.get_mut(), arena, malformed, *clock_offset_ns, out)
    }
}

impl CaptureSource for RingSource {
    async fn next_batch(&mut self, out: &mut Vec<Segment>) -> io::Result<bool> {
        loop {
            // The kernel wakes us only once enough bytes wait (see TapConfig::wake_bytes);
            // a poll picks up a quiet trickle, less often the longer nothing comes.
            let interval =
                (Self::POLL_INTERVAL * (1 << self.idle_polls.min(4))).min(Self::MAX_POLL_INTERVAL);
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    // Clear before draining: a record submitted after the drain raises a
                    // new edge.
                    guard?.clear_ready();
                }
                _ = tokio::time::sleep(interval) => {}
            }
            let n = drain(
                self.ring.get_mut(),
                &mut self.arena,
                &mut self.malformed,
                self.clock_offset_ns,
                out,
            );
            if n > 0 {
                self.idle_polls = 0;
                return Ok(true);
            }
            self.idle_polls = self.idle_polls.saturating_add(1);
        }
    }

    fn can_leave_out(&self) -> bool {
        self.skips.is_some()
    }

    /// One map update per hint; hints come only for ranges of at least
    /// `mirror_flow::MIN_SKIP_HINT` bytes, so this is a syscall per large body, not per
    /// segment.
    fn leave_out(&mut self, hints: &[SkipHint]) {
        if let Some(skips) = &mut self.skips {
            for hint in hints {
                skips.insert(hint);
            }
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    arena: &mut BytesMut,
    malformed: &mut u64,
    clock_offset_ns: u64,
    out: &mut Vec<Segment>,
) -> usize {
    let mut n = 0;
    while n < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        match decode(&item, arena) {
            Some(mut segment) => {
                segment.ts_ns += clock_offset_ns;
                out.push(segment);
                n += 1;
            }
            None => *malformed += 1,
        }
    }
    n
}

fn decode(record: &[u8], arena: &mut BytesMut) -> Option<Segment> {
    if record.len() < HEADER_LEN {
        return None;
    }
    // SAFETY: the record holds at least HEADER_LEN bytes and SegmentHeader is plain data
    // valid for any bit pattern; read_unaligned imposes no alignment requirement.
    let header: SegmentHeader = unsafe { ptr::read_unaligned(record.as_ptr().cast()) };
    let payload = record.get(HEADER_LEN..HEADER_LEN + header.captured_len as usize)?;
    Segment::from_record(&header, mirror_capture::arena::copy(arena, payload, ARENA_BYTES))
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
