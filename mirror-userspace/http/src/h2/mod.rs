//! HTTP/2 (RFC 9113), cleartext: where a connection's two byte streams become stream events.
//!
//! [`H2Connection`] follows a connection from its preface: both directions are cut into
//! frames ([`frame`]), header blocks are decoded with one HPACK decoder per direction
//! ([`fields`]), and every stream's headers, data and trailers are handed on as they arrive
//! ([`H2Event`]), so a streaming call can be replayed while it is still going on. A
//! connection whose HPACK state is lost (joined mid-stream, bytes never captured, a decoding
//! or protocol error) is given up: its streams are never guessed.
mod connection;
mod fields;
mod frame;
mod hpack;
mod hpack_tables;
#[cfg(test)]
mod tests;

pub(crate) use connection::H2Connection;
pub use fields::H2Fields;

use bytes::Bytes;
use mirror_capture::Direction;
use mirror_flow::ConnId;

/// The client's connection preface (RFC 9113 section 3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header fields HTTP/2 forbids (RFC 9113 section 8.2.2; `te` is allowed as `trailers`):
/// left out of an h2c upgrade's stream and of every HTTP/2 copy.
pub const CONNECTION_SPECIFIC: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Something that happened on one HTTP/2 stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Event {
    pub conn: ConnId,
    pub stream: u32,
    /// Request: from the client; response: from the server.
    pub dir: Direction,
    /// Capture time of the frame's bytes.
    pub ts_ns: u64,
    pub part: H2Part,
}

/// The parts of a stream, in order per direction: `Headers`, `Data`*, `Trailers`?; or a
/// `Reset` at any point, after which nothing more comes for the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Part {
    /// The request's headers (they open the stream), or the response's final headers
    /// (1xx interim responses are skipped).
    Headers { fields: H2Fields, end_stream: bool },
    /// Payload of DATA frames as it arrived, padding removed: slices of the captured
    /// bytes, never copied (a consumer that keeps them keeps their segment's buffer).
    Data { bytes: Bytes, end_stream: bool },
    /// Trailers; they end the direction.
    Trailers(H2Fields),
    /// The stream ended before completing both ways.
    Reset(ResetReason),
}

/// Why a stream ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// RST_STREAM with this error code, sent in the event's direction.
    Stream(u32),
    /// The server's GOAWAY named a lower last stream: this one was never processed.
    GoAway,
    /// The connection ended first.
    Closed,
    /// The connection's HPACK state was lost; nothing more of it is followed.
    OutOfSync,
}

/// An HTTP/2 answer as an HTTP/1 response head (`HTTP/1.1 STATUS`, then its fields and its
/// trailers, pseudo-fields left out), so that what reads heads (the comparison) reads it
/// unchanged. None if a field cannot be written in HTTP/1 or there are too many.
pub fn response_head<'a>(
    status: u16,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Option<crate::Head> {
    let mut text = format!("HTTP/1.1 {status} \r\n").into_bytes();
    for (name, value) in fields {
        if name.starts_with(b":") {
            continue;
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n') {
            return None;
        }
        text.extend_from_slice(name);
        text.extend_from_slice(b": ");
        text.extend_from_slice(value);
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"\r\n");
    let (_, parts) = crate::Head::parse_response(&text).ok()??;
    Some(parts.with_bytes(bytes::Bytes::from(text)))
}

/// Whether `payload` starts with something an HTTP/2 peer could send: the preface, or a
/// frame header whose type, flags, length and stream are plausible together. Used to place
/// a direction that was joined mid-stream, only to recognise (and count) it as HTTP/2.
pub(crate) fn is_frame_start(payload: &[u8]) -> bool {
    if payload.len() >= 4 && PREFACE.starts_with(&payload[..4]) {
        return true;
    }
    let Some(header) = payload.get(..frame::FRAME_HEADER_LEN) else {
        return false;
    };
    let header = frame::FrameHeader::parse(header.try_into().unwrap_or(&[0xff; 9]));
    // Plausible frames: a default frame size, the reserved bit clear, the connection's
    // own frames on stream 0 and the streams' frames off it.
    use frame::kind::*;
    let (allowed_flags, on_stream_zero) = match header.kind {
        DATA => (0x09, false),
        HEADERS => (0x2d, false),
        RST_STREAM | WINDOW_UPDATE | PRIORITY => (0x00, false),
        SETTINGS | PING => (0x01, true),
        GOAWAY => (0x00, true),
        CONTINUATION => (0x04, false),
        _ => return false,
    };
    let window_update_of_connection = header.kind == WINDOW_UPDATE && header.stream == 0;
    header.len <= 16_384
        && payload[5] & 0x80 == 0
        && header.flags & !allowed_flags == 0
        && ((header.stream == 0) == on_stream_zero || window_update_of_connection)
}
