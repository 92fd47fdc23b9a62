//! An HPACK decoder (RFC 7541), written here rather than taken from a crate: h2's is private
//! to h2, and loona-hpack rebuilds its Huffman decoding table (a hash map of the 257 codes)
//! for every Huffman-coded string, which measured 42 % of the agent's CPU at 20 000 gRPC
//! calls per second (BENCHMARKS.md, `h2_calls`). This one decodes straight into the caller's
//! field buffer, walks a code tree built once, and keeps each dynamic table entry in one
//! allocation. Untrusted input: every length is checked, nothing panics (fuzzed with the
//! rest of the HTTP/2 path, `fuzz/fuzz_targets/h2.rs`).
use std::{collections::VecDeque, sync::OnceLock};

use super::hpack_tables::{HUFFMAN_CODES, STATIC_TABLE};

/// Why a header block could not be decoded; the connection's table is lost with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer beyond 2^32.
    Overflow,
    /// Index 0, or beyond the static and dynamic tables.
    BadIndex,
    /// Not a valid Huffman code: EOS, or padding that is not a prefix of EOS.
    BadHuffman,
    /// A size update above the limit SETTINGS allow, or after a field (RFC 7541 section
    /// 4.2: only at the start of a block), or ending the block.
    BadSizeUpdate,
}

/// The dynamic table: entries newest first, each name and value in one allocation.
#[derive(Debug)]
struct DynamicTable {
    entries: VecDeque<(Box<[u8]>, usize)>,
    /// RFC 7541's size: names, values and 32 bytes per entry.
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        let (bytes, name_len) = self.entries.get(i)?;
        Some(bytes.split_at(*name_len))
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        self.evict_to(self.max_size.saturating_sub(size));
        if size > self.max_size {
            // An entry larger than the table empties it and is not kept (section 4.4).
            return;
        }
        self.entries.push_front(([name, value].concat().into_boxed_slice(), name.len()));
        self.size += size;
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.entries.pop_back() {
                Some((bytes, _)) => self.size -= bytes.len() + 32,
                None => break,
            }
        }
    }

    fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }
}

/// One direction's HPACK decoding state.
#[derive(Debug)]
pub(crate) struct Hpack {
    table: DynamicTable,
    /// The largest size updates may ask for: SETTINGS_HEADER_TABLE_SIZE as acknowledged.
    max_allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Hpack {
    pub(crate) fn new(table_size: usize) -> Self {
        let table = DynamicTable { entries: VecDeque::new(), size: 0, max_size: table_size };
        Self { table, max_allowed: table_size, name: Vec::new(), value: Vec::new() }
    }

    pub(crate) fn set_max_allowed(&mut self, max: usize) {
        self.max_allowed = max;
    }

    /// Bytes held: the dynamic table (by RFC 7541's count) and the literal buffers.
    pub(crate) fn buffered(&self) -> usize {
        self.table.size + self.name.capacity() + self.value.capacity()
    }

    /// Gives back the literal buffers' room after an oversized block.
    pub(crate) fn shrink(&mut self) {
        self.name = Vec::new();
        self.value = Vec::new();
    }

    /// Decodes a complete header block, handing each field to `field`.
    pub(crate) fn decode(
        &mut self,
        mut block: &[u8],
        field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut fields_seen = false;
        let mut last_was_update = false;
        while let Some(&first) = block.first() {
            last_was_update = false;
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = entry(&self.table, index)?;
                field(name, value);
            } else if first & 0xe0 == 0x20 {
                if fields_seen {
                    return Err(HpackError::BadSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.max_allowed {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.table.resize(size);
                last_was_update = true;
                continue;
            } else {
                // Literal: with incremental indexing (01), or without / never indexed.
                let indexing = first & 0xc0 == 0x40;
                let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                self.literal(&mut block, index)?;
                field(&self.name, &self.value);
                if indexing {
                    self.table.insert(&self.name, &self.value);
                }
            }
            fields_seen = true;
        }
        if last_was_update {
            return Err(HpackError::BadSizeUpdate);
        }
        Ok(())
    }

    /// A literal's name (indexed, or a string) and value into `self.name`, `self.value`.
    fn literal(&mut self, block: &mut &[u8], name_index: usize) -> Result<(), HpackError> {
        self.name.clear();
        if name_index == 0 {
            string(block, &mut self.name)?;
        } else {
            let (name, _) = entry(&self.table, name_index)?;
            self.name.extend_from_slice(name);
        }
        self.value.clear();
        string(block, &mut self.value)
    }
}

/// Entry `index` of the static table (1..=61), then the dynamic one.
fn entry(table: &DynamicTable, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
    match index {
        0 => Err(HpackError::BadIndex),
        1..=61 => Ok(STATIC_TABLE[index - 1]),
        _ => table.get(index - 62).ok_or(HpackError::BadIndex),
    }
}

/// An integer with an `n`-bit prefix (section 5.1), consumed from `block`.
fn integer(block: &mut &[u8], n: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&b, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = tail;
            if shift > 28 {
                return Err(HpackError::Overflow);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if value > u32::MAX as usize {
            return Err(HpackError::Overflow);
        }
    }
    *block = rest;
    Ok(value)
}

/// A string literal (section 5.2), raw or Huffman-coded, appended to `out`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(bytes, out)
    } else {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

/// The Huffman code as a binary tree: node `i`'s children are `tree[i][bit]`; a child
/// with [`LEAF`] set is the symbol in its low bits. Built once, from Appendix B.
const LEAF: u16 = 0x8000;

fn tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut tree = vec![[0u16; 2]];
        for (symbol, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
            let mut node = 0;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    tree[node][bit] = LEAF | symbol as u16;
                } else {
                    if tree[node][bit] == 0 {
                        tree.push([0, 0]);
                        tree[node][bit] = (tree.len() - 1) as u16;
                    }
                    node = usize::from(tree[node][bit]);
                }
            }
        }
        tree
    })
}

/// Decodes a Huffman-coded string (section 5.2): the padding must be the most significant
/// bits of EOS (all ones) and shorter than a byte; EOS itself is an error.
fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let tree = tree();
    let mut node = 0usize;
    // Bits read since the last symbol, and whether they were all ones.
    let (mut pending, mut all_ones) = (0u32, true);
    for &byte in bytes {
        for i in (0..8).rev() {
            let bit = usize::from((byte >> i) & 1);
            let next = tree[node][bit];
            pending += 1;
            all_ones &= bit == 1;
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == 256 {
                    return Err(HpackError::BadHuffman);
                }
                out.push(symbol as u8);
                (node, pending, all_ones) = (0, 0, true);
            } else {
                node = usize::from(next);
            }
        }
    }
    if pending >= 8 || !all_ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn decode(h: &mut Hpack, block: &str) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        h.decode(&hex(block), &mut |n, v| {
            fields.push((String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into()))
        })?;
        Ok(fields)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// RFC 7541 C.3 (requests without Huffman) and C.6 (responses with Huffman, a 256-byte
    /// table that evicts).
    #[test]
    fn rfc7541_examples() {
        let mut h = Hpack::new(4096);
        assert_eq!(
            decode(&mut h, "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d").unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            decode(&mut h, "8286 84be 5808 6e6f 2d63 6163 6865").unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(h.table.size, 110);

        let mut h = Hpack::new(256);
        let first =
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                     2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3";
        assert_eq!(
            decode(&mut h, first).unwrap(),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(h.table.size, 222);
        assert_eq!(
            decode(&mut h, "4883 640e ff c1 c0 bf").unwrap()[0],
            pairs(&[(":status", "307")])[0]
        );
        assert_eq!(h.table.size, 222, "the oldest entry evicted for the new one");
    }

    #[test]
    fn size_updates_only_at_a_blocks_start_and_within_settings() {
        let mut h = Hpack::new(4096);
        assert_eq!(decode(&mut h, "20 82").unwrap(), pairs(&[(":method", "GET")]));
        assert_eq!(h.table.max_size, 0);
        assert_eq!(decode(&mut h, "82 20"), Err(HpackError::BadSizeUpdate), "after a field");
        let mut h = Hpack::new(4096);
        assert_eq!(decode(&mut h, "20"), Err(HpackError::BadSizeUpdate), "ending the block");
        // 8192 (0x3f e1 3f) only once SETTINGS allow it.
        assert_eq!(decode(&mut h, "3fe13f 82"), Err(HpackError::BadSizeUpdate));
        h.set_max_allowed(8192);
        assert!(decode(&mut h, "3fe13f 82").is_ok());
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut h = Hpack::new(4096);
        assert_eq!(decode(&mut h, "80"), Err(HpackError::BadIndex), "index 0");
        assert_eq!(decode(&mut h, "be"), Err(HpackError::BadIndex), "empty dynamic table");
        assert_eq!(decode(&mut h, "ff ff ff ff ff ff 01"), Err(HpackError::Overflow));
        assert_eq!(decode(&mut h, "40 0a 61"), Err(HpackError::Truncated));
        assert_eq!(decode(&mut h, "7f"), Err(HpackError::Truncated));
        // A Huffman string ending in a whole byte of padding; EOS itself.
        assert_eq!(decode(&mut h, "40 81 ff 00"), Err(HpackError::BadHuffman));
        assert_eq!(decode(&mut h, "40 84 ff ff ff ff 00"), Err(HpackError::BadHuffman));
        // Padding of zeros (not EOS's ones).
        assert_eq!(decode(&mut h, "40 81 00 00"), Err(HpackError::BadHuffman));
    }
}
