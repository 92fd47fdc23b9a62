//! HTTP framing: where ordered byte streams become requests and responses.
//!
//! [`HttpConnection`] is the [`mirror_flow::StreamConsumer`] of the flow table. It tells
//! the versions apart by the client's first bytes (`connection`). For HTTP/1 an
//! `HttpFramer` per direction cuts the stream into messages (httparse parses the heads),
//! and responses are paired with their requests in order (`exchange`). HTTP/2 connections
//! become stream events, headers, data and trailers as they arrive ([`h2`]).
mod chunked;
pub use chunked::{decode_chunked, ChunkedError};
mod connection;
mod exchange;
mod framer;
mod grpc;
pub mod h2;
mod head;
mod response;
mod view;

use bytes::Bytes;
pub use connection::HttpConnection;
use framer::{Frame, Role};
pub use grpc::{is_grpc, GrpcMessages};
pub use h2::{H2Event, H2Fields, H2Part, ResetReason};
pub use head::{FieldLine, Head, HeadError};
pub use response::{ClientResponse, ReadError, ResponseReader};
pub use view::{RequestView, Version};

#[cfg(test)]
mod tests;

use mirror_flow::{ConnId, FlowTable};

/// Limits of the HTTP stage.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Messages larger than this (head and body) are skipped and counted.
    pub max_message_bytes: u64,
    /// Copy the bodies of responses. When nothing consumes them (mirroring needs a
    /// response's head, for pairing and upgrades, and where its body ends) they are framed
    /// and measured only: `HttpResponse::body` is empty, `body_len` says how long it was.
    pub response_bodies: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { max_message_bytes: 16 << 20, response_bodies: true }
    }
}

/// Configuration and counters shared by all connections.
#[derive(Clone, Debug, Default)]
pub struct HttpShared {
    pub config: HttpConfig,
    pub stats: HttpStats,
    /// Where heads held across segments and bodies that arrive whole are copied to
    /// ([`head::arena_copy`]): no allocation per message.
    pub(crate) arena: bytes::BytesMut,
}

mirror_common::counter_set! {
    /// Counters of the HTTP stage; each names a reason a message was not delivered.
    pub struct HttpStats {
        requests,
        responses,
        /// Responses whose request is unknown (joined mid-stream, or requests were lost).
        unpaired_responses,
        /// 1xx responses skipped (100 Continue, 103 Early Hints).
        interim_responses,
        malformed_requests,
        malformed_responses,
        /// Bodies whose chunked framing was invalid.
        malformed_bodies,
        oversized_requests,
        oversized_responses,
        /// Connections that left HTTP/1 (Upgrade, CONNECT) and were no longer extracted.
        upgraded_connections,
        /// Messages damaged by bytes that were never captured.
        lost_messages,
        /// Bytes skipped while looking for the next message start after a loss.
        resync_skipped_bytes,
        /// Messages cut off by the end of their stream.
        incomplete_at_end,
        /// Connections that spoke HTTP/2 (its preface, or frames when joined mid-stream).
        h2_connections,
        /// HTTP/2 streams opened by a client's request headers.
        h2_streams,
        /// HTTP/2 streams' final response headers.
        h2_responses,
        /// HTTP/2 connections given up: joined mid-stream, bytes never captured, an HPACK
        /// or protocol error, a header block over the cap. Their streams are not guessed.
        h2_out_of_sync,
        /// HTTP/2 connections given up on a protocol error (also in `h2_out_of_sync`).
        h2_protocol_errors,
        /// HTTP/2 streams ended early: RST_STREAM, GOAWAY, the connection's end or loss.
        h2_reset_streams,
        /// HTTP/2 streams not followed: above a GOAWAY's last stream, beyond the streams
        /// followed per connection, or with header lists over the cap.
        h2_refused_streams,
    }
}

impl HttpStats {
    fn malformed(&mut self, role: Role, _error: HeadError) {
        match role {
            Role::Request => self.malformed_requests += 1,
            Role::Response => self.malformed_responses += 1,
        }
    }

    fn oversized(&mut self, role: Role) {
        match role {
            Role::Request => self.oversized_requests += 1,
            Role::Response => self.oversized_responses += 1,
        }
    }
}

/// A complete request as it was on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub conn: ConnId,
    /// Position of the request on its connection (0, 1, ...).
    pub id: u64,
    pub head: Head,
    /// The body bytes as sent (for chunked bodies, with their chunked framing).
    pub body: Bytes,
    /// Capture times of the first and last byte.
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

impl HttpRequest {
    fn new(conn: ConnId, frame: Frame) -> Self {
        Self {
            conn,
            id: frame.tag.unwrap_or(0),
            head: frame.head,
            body: frame.body,
            first_ts_ns: frame.first_ts_ns,
            last_ts_ns: frame.last_ts_ns,
        }
    }

    /// The request's exact bytes, head then body.
    pub fn to_bytes(&self) -> Vec<u8> {
        [&self.head.bytes()[..], &self.body[..]].concat()
    }
}

/// A complete response, with the id of the request it answers when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub conn: ConnId,
    pub request_id: Option<u64>,
    pub head: Head,
    /// The body as sent, if [`HttpConfig::response_bodies`] (else empty).
    pub body: Bytes,
    /// Bytes of the body on the wire.
    pub body_len: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

impl HttpResponse {
    fn new(conn: ConnId, frame: Frame) -> Self {
        Self {
            conn,
            request_id: frame.tag,
            head: frame.head,
            body: frame.body,
            body_len: frame.body_len,
            first_ts_ns: frame.first_ts_ns,
            last_ts_ns: frame.last_ts_ns,
        }
    }
}

/// What the HTTP stage produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    Request(HttpRequest),
    Response(HttpResponse),
    /// A part of an HTTP/2 stream.
    H2(H2Event),
}

/// The reassembly and framing stages together: segments in, HTTP events out.
pub type HttpExtractor = FlowTable<HttpConnection>;

/// A flow table with HTTP framing and the given limits.
pub fn extractor(reassembly: mirror_flow::ReassemblyConfig, http: HttpConfig) -> HttpExtractor {
    let shared =
        HttpShared { config: http, stats: HttpStats::default(), arena: Default::default() };
    FlowTable::new(reassembly, shared)
}
