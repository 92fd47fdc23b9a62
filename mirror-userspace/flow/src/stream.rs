//! One direction of a TCP connection: segments in, ordered bytes out.
//!
//! Sequence numbers are 32-bit and wrap; internally every byte gets a 64-bit stream offset
//! counted from the synchronisation point, and a segment's offset is found from the signed
//! distance between its sequence number and the next expected one. That distance is valid
//! while segments arrive within 2 GiB of the expected byte, far beyond any TCP window.
use std::collections::BTreeMap;

use bytes::Bytes;

use super::ReassemblyStats;

/// What a direction's byte stream delivers to the next stage, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// In-order bytes. `segment_start` is true when they begin a captured segment, the only
    /// places where a message boundary is looked for after a loss.
    Data { ts_ns: u64, bytes: Bytes, segment_start: bool },
    /// `len` bytes that were never captured and never will be.
    Gap { len: u64 },
    /// `len` bytes the source left out on purpose: the consumer said it would not read
    /// them ([`StreamConsumer::unneeded_ahead`](crate::StreamConsumer::unneeded_ahead)).
    Elided { ts_ns: u64, len: u64 },
    /// The direction ended: its FIN was reached, or the connection was reset.
    End,
}

/// A segment (or a chunk of one) as the reassembler needs it.
#[derive(Clone, Debug)]
pub(crate) struct SegmentIn<'a> {
    /// Sequence number of `payload[0]` (or of the SYN).
    pub seq: u32,
    pub payload: &'a Bytes,
    pub ts_ns: u64,
    pub syn: bool,
    /// FIN, counted only on the last chunk of its segment.
    pub fin: bool,
    pub rst: bool,
    /// This is the start of a segment (not a later chunk of a GSO segment).
    pub segment_start: bool,
    /// Bytes just before `seq` that the source left out on purpose.
    pub elided: u32,
}

/// Segments further ahead than this are not from this stream (or the sync point was wrong).
const MAX_AHEAD: u64 = 1 << 30;

#[derive(Clone, Debug)]
struct Pending {
    ts_ns: u64,
    bytes: Bytes,
    segment_start: bool,
}

/// Reassembles one direction.
#[derive(Debug, Default)]
pub(crate) struct StreamReassembler {
    /// Sequence number of stream offset 0; `None` until synchronised.
    base_seq: Option<u32>,
    /// Offset of the next byte to deliver.
    next_off: u64,
    /// Out-of-order data, keyed by offset; entries never overlap.
    pending: BTreeMap<u64, Pending>,
    pending_bytes: usize,
    /// Offset just past the last byte, once the FIN is known.
    fin_off: Option<u64>,
    ended: bool,
    /// End of the last range hinted as unneeded ([`StreamReassembler::skip_hint`]).
    hinted_until: u64,
}

impl StreamReassembler {
    /// Bytes held out of order.
    pub(crate) fn buffered(&self) -> usize {
        self.pending_bytes
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.base_seq.is_some()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// The sequence numbers of the next `ahead` bytes, which the consumer will not read, if
    /// they reach beyond what was hinted before: `(from, until)`. At most 1 GiB ahead, far
    /// inside the sequence space's half that makes wrapping distances unambiguous.
    pub(crate) fn skip_hint(&mut self, ahead: u64) -> Option<(u32, u32)> {
        let base = self.base_seq?;
        let until = self.next_off + ahead.min(MAX_AHEAD);
        if self.ended || until <= self.hinted_until {
            return None;
        }
        self.hinted_until = until;
        Some((base.wrapping_add(self.next_off as u32), base.wrapping_add(until as u32)))
    }

    /// Starts the stream at `seq` (the byte after a SYN, or a message start found mid-stream).
    pub(crate) fn sync(&mut self, seq: u32) {
        self.base_seq = Some(seq);
        self.next_off = 0;
    }

    /// Feeds one segment. `max_pending` caps the out-of-order bytes: past it, the oldest hole
    /// is declared lost and delivery skips over it.
    pub(crate) fn push(
        &mut self,
        seg: &SegmentIn<'_>,
        max_pending: usize,
        stats: &mut ReassemblyStats,
        out: &mut Vec<StreamEvent>,
    ) {
        if self.ended {
            stats.after_end_bytes += seg.payload.len() as u64;
            return;
        }
        if seg.rst {
            self.close(stats, out);
            return;
        }
        let mut seq = seg.seq;
        if seg.syn {
            if self.base_seq.is_none() {
                self.sync(seq.wrapping_add(1));
            }
            seq = seq.wrapping_add(1); // data on a SYN (TCP Fast Open) follows the SYN
        }
        let Some(base) = self.base_seq else {
            // Callers sync at a message start before feeding mid-stream data.
            stats.unsynced_bytes += seg.payload.len() as u64;
            return;
        };
        let next_seq = base.wrapping_add(self.next_off as u32);
        let distance = seq.wrapping_sub(next_seq) as i32 as i64;
        let Some(off) = self.next_off.checked_add_signed(distance) else {
            stats.duplicate_bytes += seg.payload.len() as u64; // before the stream start
            return;
        };
        if off > self.next_off + MAX_AHEAD {
            stats.out_of_window_segments += 1;
            return;
        }
        if seg.elided > 0 {
            self.elided(off, seg.elided as u64, seg.ts_ns, stats, out);
        }
        let end = off + seg.payload.len() as u64;
        if seg.fin && self.fin_off.is_none() {
            self.fin_off = Some(end);
        }
        if !seg.payload.is_empty() {
            self.accept(off, seg, stats, out);
            if self.pending_bytes > max_pending {
                stats.overflow_gaps += 1;
                self.skip_hole(stats, out);
            }
        }
        self.check_fin(out);
    }

    /// Declares every hole lost, delivers what is buffered and ends the stream.
    pub(crate) fn close(&mut self, stats: &mut ReassemblyStats, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        while !self.pending.is_empty() {
            self.skip_hole(stats, out);
        }
        if let Some(fin) = self.fin_off {
            if fin > self.next_off && self.base_seq.is_some() {
                stats.gap_bytes += fin - self.next_off;
                out.push(StreamEvent::Gap { len: fin - self.next_off });
                self.next_off = fin;
            }
        }
        self.ended = true;
        out.push(StreamEvent::End);
    }

    fn accept(
        &mut self,
        off: u64,
        seg: &SegmentIn<'_>,
        stats: &mut ReassemblyStats,
        out: &mut Vec<StreamEvent>,
    ) {
        let mut bytes = seg.payload.clone();
        let mut off = off;
        let mut segment_start = seg.segment_start;
        if off < self.next_off {
            // Retransmission of bytes already delivered: the first arrival won and went on to
            // framing. Delivered bytes are not kept (that would be a copy of every segment),
            // so a retransmission that differs from them is counted as duplicate bytes, not as
            // a conflict; conflicts are detected among bytes still held out of order.
            let old = (self.next_off - off).min(bytes.len() as u64) as usize;
            stats.duplicate_bytes += old as u64;
            if old == bytes.len() {
                return;
            }
            bytes = bytes.slice(old..);
            off = self.next_off;
            segment_start = false;
        }
        if off == self.next_off && self.pending.is_empty() {
            // The common case: in order, nothing buffered.
            self.next_off += bytes.len() as u64;
            out.push(StreamEvent::Data { ts_ns: seg.ts_ns, bytes, segment_start });
            return;
        }
        self.insert(off, Pending { ts_ns: seg.ts_ns, bytes, segment_start }, stats);
        self.drain(out);
    }

    /// The `len` bytes before offset `off` were left out on purpose. In order (the usual
    /// case: the kernel elides only what follows bytes already read), they are delivered as
    /// [`StreamEvent::Elided`] and held data they cover is dropped. Out of order they are
    /// not remembered: the hole is given up on later like any other, as a gap.
    fn elided(
        &mut self,
        off: u64,
        len: u64,
        ts_ns: u64,
        stats: &mut ReassemblyStats,
        out: &mut Vec<StreamEvent>,
    ) {
        let start = off.saturating_sub(len);
        if start > self.next_off || off <= self.next_off {
            return;
        }
        let n = off - self.next_off;
        stats.elided_bytes += n;
        out.push(StreamEvent::Elided { ts_ns, len: n });
        self.next_off = off;
        self.drain(out);
    }

    /// Inserts out-of-order data; where it overlaps data already held, the first arrival
    /// wins and differing overlapped bytes are counted as conflicts.
    fn insert(&mut self, mut off: u64, mut p: Pending, stats: &mut ReassemblyStats) {
        while !p.bytes.is_empty() {
            let end = off + p.bytes.len() as u64;
            // The held entry that covers `off`, if any.
            if let Some((&k, held)) = self.pending.range(..=off).next_back() {
                let held_end = k + held.bytes.len() as u64;
                if held_end > off {
                    let n = (held_end.min(end) - off) as usize;
                    let start = (off - k) as usize;
                    count_overlap(&held.bytes[start..start + n], &p.bytes[..n], stats);
                    p.bytes = p.bytes.slice(n..);
                    p.segment_start = false;
                    off += n as u64;
                    continue;
                }
            }
            // The next held entry after `off` bounds how much we can insert here.
            let limit = match self.pending.range(off + 1..end).next() {
                Some((&k, _)) => (k - off) as usize,
                None => p.bytes.len(),
            };
            // Copied: a slice would keep its whole capture buffer alive while it waits,
            // and held bytes must cost what they are counted as.
            let head = Bytes::copy_from_slice(&p.bytes.split_to(limit));
            self.pending_bytes += head.len();
            let piece = Pending { ts_ns: p.ts_ns, bytes: head, segment_start: p.segment_start };
            self.pending.insert(off, piece);
            p.segment_start = false;
            off += limit as u64;
        }
    }

    /// Delivers held data that has become contiguous.
    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        while let Some(entry) = self.pending.first_entry() {
            let k = *entry.key();
            if k > self.next_off {
                break;
            }
            let p = entry.remove();
            self.pending_bytes -= p.bytes.len();
            let end = k + p.bytes.len() as u64;
            if end <= self.next_off {
                continue;
            }
            let skip = (self.next_off - k) as usize;
            let bytes = p.bytes.slice(skip..);
            self.next_off = end;
            out.push(StreamEvent::Data {
                ts_ns: p.ts_ns,
                bytes,
                segment_start: p.segment_start && skip == 0,
            });
        }
    }

    /// Gives up on the hole before the first held segment and delivers past it.
    fn skip_hole(&mut self, stats: &mut ReassemblyStats, out: &mut Vec<StreamEvent>) {
        let Some((&k, _)) = self.pending.first_key_value() else {
            return;
        };
        if k > self.next_off {
            let len = k - self.next_off;
            stats.gap_bytes += len;
            out.push(StreamEvent::Gap { len });
            self.next_off = k;
        }
        self.drain(out);
    }

    /// The peer acknowledged everything before `ack`: holes below it were received by the
    /// peer but missed by the capture, so they will never be filled. Skip them.
    pub(crate) fn acknowledged(
        &mut self,
        ack: u32,
        stats: &mut ReassemblyStats,
        out: &mut Vec<StreamEvent>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let Some(base) = self.base_seq else { return };
        let next_seq = base.wrapping_add(self.next_off as u32);
        let ahead = ack.wrapping_sub(next_seq) as i32;
        if ahead <= 0 || self.ended {
            return;
        }
        let acked_off = self.next_off + ahead as u64;
        while self.pending.first_key_value().is_some_and(|(&k, _)| k <= acked_off) {
            self.skip_hole(stats, out);
        }
        self.check_fin(out);
    }

    /// Capture time of the oldest held segment, if any: how long a hole has been open.
    pub(crate) fn oldest_pending_ts(&self) -> Option<u64> {
        self.pending.values().map(|p| p.ts_ns).min()
    }

    /// Skips every hole (a hole open too long will not be filled).
    pub(crate) fn skip_holes(&mut self, stats: &mut ReassemblyStats, out: &mut Vec<StreamEvent>) {
        while !self.pending.is_empty() {
            self.skip_hole(stats, out);
        }
        self.check_fin(out);
    }

    fn check_fin(&mut self, out: &mut Vec<StreamEvent>) {
        if self.fin_off.is_some_and(|fin| self.next_off >= fin) && !self.ended {
            self.ended = true;
            out.push(StreamEvent::End);
        }
    }
}

fn count_overlap(held: &[u8], new: &[u8], stats: &mut ReassemblyStats) {
    stats.duplicate_bytes += new.len() as u64;
    if held != new {
        stats.conflicting_overlaps += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        r: StreamReassembler,
        stats: ReassemblyStats,
        out: Vec<StreamEvent>,
        max_pending: usize,
    }

    impl Harness {
        fn new(isn: u32) -> Harness {
            let mut h = Harness {
                r: StreamReassembler::default(),
                stats: ReassemblyStats::default(),
                out: Vec::new(),
                max_pending: 1 << 20,
            };
            h.push_flags(isn, b"", true, false, false);
            h
        }

        fn push(&mut self, seq: u32, data: &[u8]) {
            self.push_flags(seq, data, false, false, false);
        }

        fn push_flags(&mut self, seq: u32, data: &[u8], syn: bool, fin: bool, rst: bool) {
            self.push_elided(seq, 0, data, syn, fin, rst);
        }

        /// A segment whose `elided` bytes before `seq` were left out on purpose.
        fn push_elided(
            &mut self,
            seq: u32,
            elided: u32,
            data: &[u8],
            syn: bool,
            fin: bool,
            rst: bool,
        ) {
            let payload = Bytes::copy_from_slice(data);
            let segment_start = elided == 0;
            let seg = SegmentIn {
                seq,
                payload: &payload,
                ts_ns: 0,
                syn,
                fin,
                rst,
                segment_start,
                elided,
            };
            self.r.push(&seg, self.max_pending, &mut self.stats, &mut self.out);
        }

        /// Delivered bytes so far, with gaps shown as '#'.
        fn text(&self) -> String {
            let mut s = String::new();
            for ev in &self.out {
                match ev {
                    StreamEvent::Data { bytes, .. } => {
                        s.push_str(std::str::from_utf8(bytes).unwrap())
                    }
                    StreamEvent::Gap { len } => s.push_str(&"#".repeat(*len as usize)),
                    StreamEvent::Elided { len, .. } => s.push_str(&"~".repeat(*len as usize)),
                    StreamEvent::End => s.push('$'),
                }
            }
            s
        }
    }

    /// Bytes the source left out are delivered in place as `Elided`, not as a gap; a
    /// segment left out whole carries its FIN; out of order, the range is a hole like any.
    #[test]
    fn elided_ranges_are_known_bytes() {
        let mut h = Harness::new(100);
        h.push(101, b"head");
        assert_eq!(h.r.skip_hint(6), Some((105, 111)));
        assert_eq!(h.r.skip_hint(6), None, "hinted once");
        h.push_elided(108, 3, b"xyz", false, false, false); // 105..108 left out
        h.push_elided(117, 6, b"", false, true, false); // 111..117 left out, FIN
        assert_eq!(h.text(), "head~~~xyz~~~~~~$");
        assert_eq!(h.stats.elided_bytes, 9);
        assert_eq!(h.stats.gap_bytes, 0);

        let mut h = Harness::new(0);
        h.push_elided(11, 5, b"late", false, false, false); // 1..6 missing, 6..11 elided
        h.r.skip_holes(&mut h.stats, &mut h.out);
        assert_eq!(h.text(), "##########late");
        assert_eq!(h.stats.gap_bytes, 10);
    }

    #[test]
    fn in_order_after_syn() {
        let mut h = Harness::new(100);
        h.push(101, b"hello ");
        h.push(107, b"world");
        assert_eq!(h.text(), "hello world");
    }

    #[test]
    fn out_of_order_is_buffered_then_delivered() {
        let mut h = Harness::new(0);
        h.push(7, b"world");
        h.push(4, b"lo ");
        assert_eq!(h.text(), "");
        assert_eq!(h.r.buffered(), 8);
        h.push(1, b"hel");
        assert_eq!(h.text(), "hello world");
        assert_eq!(h.r.buffered(), 0);
    }

    #[test]
    fn duplicates_and_retransmissions_count_once() {
        let mut h = Harness::new(0);
        h.push(1, b"abc");
        h.push(1, b"abc");
        h.push(2, b"bcd");
        assert_eq!(h.text(), "abcd");
        assert_eq!(h.stats.duplicate_bytes, 5);
    }

    #[test]
    fn overlap_first_arrival_wins_and_conflicts_are_counted() {
        let mut h = Harness::new(0);
        h.push(3, b"CDEF"); // held
        h.push(2, b"bXYZWg"); // overlaps CDEF with different bytes
        assert_eq!(h.stats.conflicting_overlaps, 1);
        h.push(1, b"a");
        assert_eq!(h.text(), "abCDEFg");
    }

    #[test]
    fn new_segment_spanning_several_held_ones_fills_between() {
        let mut h = Harness::new(0);
        h.push(3, b"c");
        h.push(6, b"f");
        h.push(2, b"BCDEFGH");
        h.push(1, b"a");
        assert_eq!(h.text(), "aBcDEfGH");
        assert_eq!(h.stats.conflicting_overlaps, 2);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let isn = u32::MAX - 3;
        let mut h = Harness::new(isn);
        h.push(isn.wrapping_add(1), b"abc");
        h.push(isn.wrapping_add(7), b"ghi"); // past the wrap, out of order
        h.push(isn.wrapping_add(4), b"def"); // crosses the wrap
        assert_eq!(h.text(), "abcdefghi");
    }

    #[test]
    fn fin_ends_after_the_last_byte_even_out_of_order() {
        let mut h = Harness::new(0);
        h.push_flags(4, b"def", false, true, false);
        assert_eq!(h.text(), "");
        h.push(1, b"abc");
        assert_eq!(h.text(), "abcdef$");
        h.push(7, b"late");
        assert_eq!(h.stats.after_end_bytes, 4);
    }

    #[test]
    fn rst_declares_holes_and_ends() {
        let mut h = Harness::new(0);
        h.push(1, b"ab");
        h.push(6, b"fg");
        h.push_flags(0, b"", false, false, true);
        assert_eq!(h.text(), "ab###fg$");
        assert_eq!(h.stats.gap_bytes, 3);
    }

    #[test]
    fn pending_cap_skips_the_hole() {
        let mut h = Harness::new(0);
        h.max_pending = 4;
        h.push(1, b"ab");
        h.push(5, b"ef");
        h.push(7, b"gh");
        assert_eq!(h.text(), "ab");
        h.push(9, b"i"); // 5 bytes held > 4: the hole at 3..5 is given up
        assert_eq!(h.text(), "ab##efghi");
        assert_eq!((h.stats.overflow_gaps, h.stats.gap_bytes), (1, 2));
        h.push(3, b"cd"); // the late retransmission is a duplicate now
        assert_eq!(h.text(), "ab##efghi");
    }

    #[test]
    fn acknowledged_holes_are_skipped() {
        let mut h = Harness::new(0);
        h.push(1, b"ab");
        h.push(6, b"fg");
        h.r.acknowledged(5, &mut h.stats, &mut h.out); // the hole is seq 3..=5: not all acked
        assert_eq!(h.text(), "ab");
        h.r.acknowledged(6, &mut h.stats, &mut h.out);
        assert_eq!(h.text(), "ab###fg");
    }

    #[test]
    fn unsynced_data_is_counted_not_delivered() {
        let mut r = StreamReassembler::default();
        let (mut stats, mut out) = (ReassemblyStats::default(), Vec::new());
        let payload = Bytes::from_static(b"xyz");
        let seg = SegmentIn {
            seq: 5,
            payload: &payload,
            ts_ns: 0,
            syn: false,
            fin: false,
            rst: false,
            segment_start: true,
            elided: 0,
        };
        r.push(&seg, 100, &mut stats, &mut out);
        assert!(out.is_empty());
        assert_eq!(stats.unsynced_bytes, 3);
        r.sync(5);
        r.push(&seg, 100, &mut stats, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn far_away_segments_are_out_of_window() {
        let mut h = Harness::new(0);
        h.push(1 << 31, b"x");
        assert_eq!(h.stats.out_of_window_segments, 1);
        assert_eq!(h.r.buffered(), 0);
    }
}
