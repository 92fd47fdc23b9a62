//! Capture: where segments come from, and the typed [`Segment`] every later stage reads.
//!
//! Everything after capture consumes a [`CaptureSource`], so the live kernel tap
//! (`mirror-tap`), a pcap file ([`pcap::PcapSource`]) or a test's hand-built segments feed
//! the same reassembly. [`frame`] turns raw frames into segments and back (the same parsing
//! rules as the kernel program); [`pcap`] reads and writes capture files.
pub mod arena;
pub mod frame;
pub mod pcap;
mod segment;
mod source;

pub use mirror_common::{tcp_flags, Direction, Hook};
pub use segment::{ChunkMerger, Segment};
pub use source::{CaptureSource, SkipHint};

/// Nanoseconds since the Unix epoch: the clock of segment timestamps (the tap converts the
/// kernel's monotonic clock to it).
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
