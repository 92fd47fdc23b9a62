//! The seam after replay: what happened to each copy, handed to a [`ResultSink`].
use mirror_http::ClientResponse;
use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

mirror_common::named_enum! {
    /// Why a copy was not delivered.
    pub enum DropReason {
        QueueFull = "queue_full",
        ByteBudget = "byte_budget",
        RateLimited = "rate_limited",
        Timeout = "timeout",
        Error = "error",
        /// TLS: the shadow's certificate is not signed by a trusted CA.
        TlsUntrusted = "tls_untrusted",
        /// TLS: the shadow's certificate is expired or not valid yet.
        TlsExpired = "tls_expired",
        /// TLS: the shadow's certificate does not name the shadow's host.
        TlsNameMismatch = "tls_name_mismatch",
        /// TLS: any other handshake failure or alert (a client certificate refused...).
        TlsError = "tls_error",
        /// HTTP/2: the captured stream was reset (or the copy abandoned) before it ended.
        Cancelled = "cancelled",
        /// HTTP/2: the shadow did not take a stream's DATA as fast as it was captured.
        StreamBuffer = "stream_buffer",
    }
}

/// Which copy an outcome is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyInfo {
    /// Chosen by whoever offered the copy (the agent numbers captured requests).
    pub id: u64,
    /// "METHOD target Host: h", when the client was asked to label copies.
    pub label: Option<Box<str>>,
}

/// A shadow's answer to a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// From sending the copy to the end of the response.
    pub elapsed: Duration,
    /// The response's head, and its body as sent up to [`crate::ShadowOptions::keep_body`]
    /// bytes; only when the client keeps responses.
    pub response: Option<ClientResponse>,
    /// An HTTP/2 copy's gRPC outcome, if the answer was gRPC.
    pub grpc: Option<GrpcAnswer>,
}

/// What a shadow answered to a gRPC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcAnswer {
    /// `grpc-status` of its trailers (or of a Trailers-Only response); None if missing.
    pub status: Option<u16>,
    /// Length-prefixed messages in the answer.
    pub messages: u64,
}

/// Receives the outcome of every copy offered to a shadow: answered, or dropped with a reason.
/// Called from the shadow client's tasks; must not block.
pub trait ResultSink: Send + Sync + 'static {
    fn answered(&self, shadow: &str, copy: &CopyInfo, answer: &Answer);

    /// `error` says more for [`DropReason::Error`] (formatted only if the sink wants it).
    fn dropped(&self, shadow: &str, copy: &CopyInfo, reason: DropReason, error: &dyn fmt::Display);

    /// Copies waiting in the shadow's queue changed by `delta`.
    fn queue_depth(&self, _shadow: &str, _delta: i64) {}

    /// The shadow did not take pipelined copies (`why`): one copy in flight per connection
    /// from now on.
    fn pipelining_off(&self, _shadow: &str, _why: &dyn fmt::Display) {}
}

/// What happens once a copy is answered or abandoned: the sink is told, the byte budget
/// released.
#[derive(Clone)]
pub(crate) struct Outcomes {
    pub(crate) shadow: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    /// Hand responses to the sink (else only status and timing).
    pub(crate) keep_responses: bool,
    pub(crate) sink: Arc<dyn ResultSink>,
}

impl Outcomes {
    /// `response` is dropped unless the client keeps responses.
    pub(crate) fn answered(
        &self,
        bytes: usize,
        copy: &CopyInfo,
        start: Instant,
        status: u16,
        response: Option<ClientResponse>,
    ) {
        let response = response.filter(|_| self.keep_responses);
        let answer = Answer { status, elapsed: start.elapsed(), response, grpc: None };
        self.sink.answered(&self.shadow, copy, &answer);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// An HTTP/2 copy's answer (its bytes were given back as the shadow took them).
    pub(crate) fn answered_h2(&self, copy: &CopyInfo, start: Instant, answer: crate::h2::H2Answer) {
        let grpc = answer
            .grpc_messages
            .map(|messages| GrpcAnswer { status: answer.grpc_status, messages });
        let response = answer.response.filter(|_| self.keep_responses);
        let answer = Answer { status: answer.status, elapsed: start.elapsed(), response, grpc };
        self.sink.answered(&self.shadow, copy, &answer);
    }

    pub(crate) fn failed(
        &self,
        bytes: usize,
        copy: &CopyInfo,
        reason: DropReason,
        error: &dyn fmt::Display,
    ) {
        self.sink.dropped(&self.shadow, copy, reason, error);
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn dequeued(&self, n: usize) {
        self.sink.queue_depth(&self.shadow, -(n as i64));
    }
}
