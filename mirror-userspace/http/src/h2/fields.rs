//! Header blocks decoded (HPACK, RFC 7541) into field lists.
//!
//! HPACK is stateful: every block of a direction must be decoded, in order, sampled or
//! not, or the dynamic table diverges from the peer's. One [`HeaderDecoder`] per direction
//! does that (`hpack`); its table limit follows SETTINGS_HEADER_TABLE_SIZE as the peers
//! agree on it.
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::{RequestView, Version};

/// The dynamic table limit before any SETTINGS (RFC 9113 section 6.5.2).
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Dynamic tables larger than this are refused (a size update beyond it fails the block,
/// and the connection is given up): an observer holds one table per direction of every
/// connection. Peers that advertise more rarely use it; 64 KiB is what nghttp2 caps at.
const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Decoded header lists larger than this (names, values and 32 bytes per field, as
/// SETTINGS_MAX_HEADER_LIST_SIZE counts) are not kept: a few bytes of indexed fields can
/// decode to megabytes. The block is still decoded to keep the table in step.
pub(crate) const MAX_HEADER_LIST: usize = 256 * 1024;

/// A decoded header list, in the order sent, names and values in one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2Fields {
    buf: Bytes,
    /// Per field: where its name starts, where its value starts, where it ends.
    spans: Vec<[u32; 3]>,
}

impl H2Fields {
    /// Every field (pseudo-fields first, as HTTP/2 requires), name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&[n, v, e]| {
            (&self.buf[n as usize..v as usize], &self.buf[v as usize..e as usize])
        })
    }

    /// Every field, its value as a slice of the list's buffer (shared, not copied).
    pub fn iter_shared(&self) -> impl Iterator<Item = (&[u8], Bytes)> {
        self.spans.iter().map(|&[n, v, e]| {
            (&self.buf[n as usize..v as usize], self.buf.slice(v as usize..e as usize))
        })
    }

    /// The first value of field `name` (field names are lower case in HTTP/2).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `:status`, for a response.
    pub fn status(&self) -> Option<u16> {
        self.get_str(":status")?.parse().ok()
    }

    /// `:authority`, else a `host` field.
    pub fn authority(&self) -> Option<&[u8]> {
        self.get(":authority").or_else(|| self.get("host"))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Builds a list from (name, value) pairs: for tests and for an h2c upgrade's request.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut builder = FieldsBuilder::default();
        let mut buf = BytesMut::new();
        for (n, v) in pairs {
            builder.push(&mut buf, n, v);
        }
        builder.finish(&mut buf)
    }
}

impl RequestView for H2Fields {
    fn method(&self) -> &str {
        self.get_str(":method").unwrap_or("")
    }

    fn target(&self) -> &str {
        self.get_str(":path").unwrap_or("")
    }

    fn version(&self) -> Version {
        Version::Http2
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        if name.eq_ignore_ascii_case("host") {
            return self.authority();
        }
        self.get(name)
    }

    /// `:authority` is given as `host`; the other pseudo-fields are not headers.
    fn for_each_header(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (name, value) in self.iter() {
            let name = match name {
                b":authority" => "host",
                [b':', ..] => continue,
                _ => match std::str::from_utf8(name) {
                    Ok(name) => name,
                    Err(_) => continue,
                },
            };
            f(name, value);
        }
    }
}

/// Collects fields into a shared buffer, up to [`MAX_HEADER_LIST`].
#[derive(Default)]
struct FieldsBuilder {
    spans: Vec<[u32; 3]>,
    size: usize,
    oversized: bool,
}

impl FieldsBuilder {
    fn push(&mut self, buf: &mut BytesMut, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.size > MAX_HEADER_LIST {
            self.oversized = true;
            return;
        }
        let n = buf.len() as u32;
        buf.extend_from_slice(name);
        let v = buf.len() as u32;
        buf.extend_from_slice(value);
        self.spans.push([n, v, buf.len() as u32]);
    }

    fn finish(self, buf: &mut BytesMut) -> H2Fields {
        H2Fields { buf: buf.split().freeze(), spans: self.spans }
    }
}

/// Why a header block was not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockError {
    /// HPACK failed: the table is no longer the peer's.
    Hpack,
}

/// What a decoded block gave.
pub(crate) enum Decoded {
    Fields(H2Fields),
    /// The list was larger than [`MAX_HEADER_LIST`]; the table was updated all the same.
    Oversized,
}

/// One direction's HPACK decoder.
#[derive(Debug)]
pub(crate) struct HeaderDecoder {
    hpack: super::hpack::Hpack,
    /// Table sizes the receiving peer advertised, waiting for the sender's SETTINGS ACK
    /// (`None`: a SETTINGS frame without the table size).
    advertised: VecDeque<Option<u32>>,
    buf: BytesMut,
}

/// SETTINGS frames waiting for their ACK beyond this are not tracked (peers send one or
/// two); their table sizes are merged into the last one tracked.
const MAX_UNACKED_SETTINGS: usize = 8;

impl Default for HeaderDecoder {
    fn default() -> Self {
        let hpack = super::hpack::Hpack::new(DEFAULT_TABLE_SIZE);
        Self { hpack, advertised: VecDeque::new(), buf: BytesMut::new() }
    }
}

impl HeaderDecoder {
    /// The receiving peer sent SETTINGS: its table size applies once the sender
    /// acknowledges it.
    pub(crate) fn advertised(&mut self, table_size: Option<u32>) {
        if self.advertised.len() < MAX_UNACKED_SETTINGS {
            self.advertised.push_back(table_size);
        } else if let (Some(last), Some(size)) = (self.advertised.back_mut(), table_size) {
            *last = Some(size);
        }
    }

    /// The sender acknowledged the oldest SETTINGS: from here on its encoder may use the
    /// advertised table size. The encoder says so with a size update in its next block;
    /// the decoder only learns the limit (capped at [`MAX_TABLE_SIZE`]).
    pub(crate) fn acknowledged(&mut self) {
        if let Some(Some(size)) = self.advertised.pop_front() {
            self.hpack.set_max_allowed((size as usize).min(MAX_TABLE_SIZE));
        }
    }

    /// Bytes held: the dynamic table and the decoding buffers.
    pub(crate) fn buffered(&self) -> usize {
        self.hpack.buffered() + self.buf.capacity()
    }

    /// Decodes one complete header block.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Decoded, BlockError> {
        let mut builder = FieldsBuilder::default();
        let buf = &mut self.buf;
        self.hpack
            .decode(block, &mut |name, value| builder.push(buf, name, value))
            .map_err(|_| BlockError::Hpack)?;
        if builder.oversized {
            // Not kept: neither is the room it took.
            self.buf = BytesMut::new();
            self.hpack.shrink();
            return Ok(Decoded::Oversized);
        }
        Ok(Decoded::Fields(builder.finish(&mut self.buf)))
    }
}
