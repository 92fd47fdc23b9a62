//! HTTP/2 streams mirrored while they are captured: a stream's copies are opened at its
//! request headers (matched and sampled per stream, like an HTTP/1 request), its DATA
//! forwarded as it arrives, its trailers or END_STREAM end them, a reset cancels them.
use std::collections::HashMap;

use mirror_capture::Direction;
use mirror_flow::ConnId;
use mirror_http::{is_grpc, GrpcMessages, H2Event, H2Fields, H2Part};
use mirror_shadow::{DropReason, StreamCopy};

use crate::pipeline::{Shadow, Stages};

/// A stream whose request is still being captured.
struct OpenStream {
    copies: Vec<StreamCopy>,
    /// The request's gRPC messages, counted as they go by.
    grpc: Option<GrpcMessages>,
}

/// The copies of every stream whose request is still being captured. Bounded by the flow
/// table: its HTTP/2 connections end (reset) every stream they follow when they end.
#[derive(Default)]
pub(crate) struct StreamCopies {
    open: HashMap<(ConnId, u32), OpenStream>,
}

impl StreamCopies {
    /// Follows one stream event; `id` numbers captured requests (streams included).
    pub(crate) fn event(
        &mut self,
        e: H2Event,
        id: &mut u64,
        stages: &mut Stages,
        shadows: &mut [Shadow],
    ) {
        if e.dir != Direction::Request {
            return; // the primary's answers (compared later, when comparing HTTP/2)
        }
        let key = (e.conn, e.stream);
        match e.part {
            H2Part::Headers { ref fields, end_stream } => {
                *id += 1;
                let copies = stages.open_streams(*id, &e, fields, end_stream, shadows);
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
                open.copies.retain_mut(|c| c.data(bytes.clone()).is_ok());
                if end_stream {
                    let open = self.open.remove(&key).expect("just found");
                    stages.metrics.grpc_request_messages(open.grpc.map(|g| g.complete()));
                    open.copies.into_iter().for_each(StreamCopy::end);
                }
            }
            H2Part::Trailers(fields) => {
                let Some(open) = self.open.remove(&key) else { return };
                stages.metrics.grpc_request_messages(open.grpc.map(|g| g.complete()));
                let trailers = trailer_map(&fields);
                for copy in open.copies {
                    copy.trailers(trailers.clone());
                }
            }
            H2Part::Reset(_) => {
                if let Some(open) = self.open.remove(&key) {
                    for mut copy in open.copies {
                        copy.cancel(DropReason::Cancelled);
                    }
                }
            }
        }
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
