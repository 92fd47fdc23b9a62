//! HTTP/2 streams mirrored while they are captured: a stream's copies are opened at its
//! request headers (matched and sampled per stream, like an HTTP/1 request), its DATA
//! forwarded as it arrives, its trailers or END_STREAM end them, a reset cancels them. When
//! comparing, a compared stream's copies to the candidate and the secondary are fed the same
//! way, and the primary's answer is gathered here until it ends.
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use mirror_capture::Direction;
use mirror_flow::ConnId;
use mirror_http::{is_grpc, GrpcMessages, H2Event, H2Fields, H2Part, HttpResponse};
use mirror_shadow::{DropReason, StreamCopy};

use crate::{
    compare::{stream_request_id, Comparer},
    pipeline::{Shadow, Stages},
};

/// A stream whose request is still being captured.
struct OpenStream {
    copies: Vec<StreamCopy>,
    /// The request's gRPC messages, counted as they go by.
    grpc: Option<GrpcMessages>,
}

/// The primary's answer to a compared stream, gathered until it ends.
#[derive(Default)]
struct PrimaryAnswer {
    fields: Option<H2Fields>,
    trailers: Option<H2Fields>,
    body: BytesMut,
    body_len: u64,
    first_ts_ns: u64,
}

/// The copies of every stream whose request is still being captured, and the primary's
/// answers of the compared ones. Bounded by the flow table (its HTTP/2 connections end, or
/// reset, every stream they follow) and, for answers, by the comparison's pending cap.
#[derive(Default)]
pub(crate) struct StreamCopies {
    open: HashMap<(ConnId, u32), OpenStream>,
    answers: HashMap<(ConnId, u32), PrimaryAnswer>,
}

impl StreamCopies {
    /// Follows one stream event; `id` numbers captured requests (streams included).
    pub(crate) fn event(
        &mut self,
        e: H2Event,
        id: &mut u64,
        stages: &mut Stages,
        shadows: &mut [Shadow],
        comparer: Option<&mut Comparer>,
    ) {
        let key = (e.conn, e.stream);
        if let H2Part::Reset(_) = e.part {
            // Either side's reset (RST_STREAM, GOAWAY, the connection's end or loss) ends
            // the stream both ways: its copies are cancelled, its comparison skipped.
            if self.answers.remove(&key).is_some() {
                if let Some(c) = comparer {
                    c.stream_reset(e.conn, e.stream);
                }
            }
            if let Some(open) = self.open.remove(&key) {
                for mut copy in open.copies {
                    copy.cancel(DropReason::Cancelled);
                }
            }
            return;
        }
        if e.dir == Direction::Response {
            return self.answer(e, comparer, stages.max_compared_body());
        }
        match e.part {
            H2Part::Headers { ref fields, end_stream } => {
                *id += 1;
                let (copies, compared) =
                    stages.open_streams(*id, &e, fields, end_stream, shadows, comparer);
                if compared {
                    self.answers.insert(key, PrimaryAnswer::default());
                }
                if !end_stream && !copies.is_empty() {
                    let grpc = is_grpc(fields.get("content-type")).then(GrpcMessages::default);
                    self.open.insert(key, OpenStream { copies, grpc });
                }
            }
            H2Part::Data { bytes, end_stream } => {
                let Some(open) = self.open.get_mut(&key) else { return };
                if let Some(grpc) = &mut open.grpc {
                    grpc.push(&bytes);
                }
                if !bytes.is_empty() {
                    open.copies.retain_mut(|c| c.data(bytes.clone()).is_ok());
                }
                if end_stream {
                    let open = self.open.remove(&key).expect("just found");
                    stages.metrics.grpc_request_messages(open.grpc.map(|g| g.complete()));
                    open.copies.into_iter().for_each(StreamCopy::end);
                    self.request_ended(e.conn, e.stream, e.ts_ns, comparer);
                }
            }
            H2Part::Trailers(fields) => {
                let Some(open) = self.open.remove(&key) else { return };
                stages.metrics.grpc_request_messages(open.grpc.map(|g| g.complete()));
                let trailers = trailer_map(&fields);
                for copy in open.copies {
                    copy.trailers(trailers.clone());
                }
                self.request_ended(e.conn, e.stream, e.ts_ns, comparer);
            }
            H2Part::Reset(_) => {}
        }
    }

    /// A compared stream's request ended: its comparison waits from here.
    fn request_ended(
        &self,
        conn: ConnId,
        stream: u32,
        ts_ns: u64,
        comparer: Option<&mut Comparer>,
    ) {
        if let (true, Some(c)) = (self.answers.contains_key(&(conn, stream)), comparer) {
            c.stream_request_ended(conn, stream, ts_ns);
        }
    }

    /// A part of the primary's answer to a stream: kept for a compared stream, and handed
    /// to the comparison once it ends.
    fn answer(&mut self, e: H2Event, comparer: Option<&mut Comparer>, max_body: usize) {
        let key = (e.conn, e.stream);
        let Some(answer) = self.answers.get_mut(&key) else { return };
        let ended = match e.part {
            H2Part::Headers { fields, end_stream } => {
                answer.fields = Some(fields);
                answer.first_ts_ns = e.ts_ns;
                end_stream
            }
            H2Part::Data { bytes, end_stream } => {
                answer.body_len += bytes.len() as u64;
                let keep = max_body.saturating_sub(answer.body.len()).min(bytes.len());
                answer.body.extend_from_slice(&bytes[..keep]);
                end_stream
            }
            H2Part::Trailers(fields) => {
                answer.trailers = Some(fields);
                true
            }
            H2Part::Reset(_) => return, // (handled in `event`)
        };
        if !ended {
            return;
        }
        let answer = self.answers.remove(&key).expect("just found");
        let (Some(c), Some(fields)) = (comparer, &answer.fields) else { return };
        let all = fields.iter().chain(answer.trailers.iter().flat_map(H2Fields::iter));
        let Some(head) = mirror_http::h2::response_head(fields.status().unwrap_or(0), all) else {
            return;
        };
        c.primary(&HttpResponse {
            conn: e.conn,
            request_id: Some(stream_request_id(e.stream)),
            head,
            body: Bytes::from(answer.body),
            body_len: answer.body_len,
            first_ts_ns: answer.first_ts_ns,
            last_ts_ns: e.ts_ns,
        });
    }
}

fn trailer_map(fields: &H2Fields) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in fields.iter() {
        if let (Ok(n), Ok(v)) =
            (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
        {
            map.append(n, v);
        }
    }
    map
}
