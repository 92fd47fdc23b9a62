//! Assembling captured segments back into the byte streams of a connection, for assertions.
//! (A deliberately simple reassembler: the test knows every segment was captured.)
use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::{bail, Result};
use mirror_capture::{tcp_flags, Direction, Segment};

/// The bytes of one direction of the connection whose client is `client`, in sequence
/// order, starting right after the SYN. Retransmitted and overlapping bytes count once.
pub fn assemble(segments: &[Segment], client: SocketAddr, dir: Direction) -> Result<Vec<u8>> {
    let ours: Vec<&Segment> =
        segments.iter().filter(|s| s.client() == client && s.direction == dir).collect();
    let Some(syn) = ours.iter().find(|s| s.has(tcp_flags::SYN)) else {
        bail!("no SYN captured for {client} {dir:?}");
    };
    let start = syn.seq.wrapping_add(1);
    let mut by_offset: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for s in ours.iter().filter(|s| !s.payload.is_empty()) {
        if s.is_truncated() {
            bail!("truncated segment at seq {}", s.payload_seq());
        }
        by_offset.entry(s.payload_seq().wrapping_sub(start)).or_insert(&s.payload);
    }
    let mut out = Vec::new();
    for (offset, bytes) in by_offset {
        let offset = offset as usize;
        if offset > out.len() {
            bail!(
                "gap in {dir:?} stream of {client}: {} bytes missing at {}",
                offset - out.len(),
                out.len()
            );
        }
        let skip = out.len() - offset;
        if skip < bytes.len() {
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    Ok(out)
}
