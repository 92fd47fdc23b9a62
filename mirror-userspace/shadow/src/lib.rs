//! Fire-and-forget replay to one shadow service.
//!
//! [`ShadowClient::offer`] never waits: a copy goes into a bounded queue or is dropped and
//! counted (queue full, byte budget exhausted, rate limit). A copy is a [`ShadowRequest`]: the
//! HTTP/1.x bytes to write, made by the agent's rewrite from the captured bytes. A few
//! persistent connections per shadow take copies from the queue and write every copy waiting,
//! pipelined, in one write ([`pipelined`]); responses are read with mirror-http's framing and
//! every outcome goes to the [`ResultSink`]. A shadow that does not take pipelining falls back
//! to one copy in flight per connection. Nothing the shadow does can reach the capture path:
//! the worst it can do is fill the queue, which only drops copies.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::Uri;
use tokio::sync::mpsc;

mod connect;
mod h2;
mod outcome;
mod pipelined;
mod tls;

pub use connect::OwnSockets;
pub use h2::{StreamCopy, STREAM_PIECES};
use outcome::Outcomes;
pub use outcome::{Answer, CopyInfo, DropReason, GrpcAnswer, ResultSink};
pub use rustls::ClientConfig;
pub use tls::{TlsOptions, TlsSetupError};

/// Deepest HTTP/1.1 pipeline per shadow connection.
pub const MAX_PIPELINE: usize = 64;

/// Bounds on what each shadow may cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Requests in flight to one shadow at once.
    pub max_in_flight: usize,
    /// Copies waiting for a free slot; beyond it copies are dropped and counted.
    pub queue_length: usize,
    /// Bytes of copies waiting, across shadows; beyond it copies are dropped and counted.
    pub max_queued_bytes: usize,
    /// A copy not answered within this is abandoned and counted.
    pub timeout: Duration,
    /// Optional rate limit per shadow, in requests per second.
    pub rate_limit: Option<f64>,
    /// Copies pipelined on one shadow connection (HTTP/1.1 pipelining), at most: several
    /// copies per write, where the syscall is most of what a copy costs the agent
    /// (BENCHMARKS.md). A shadow that closes, errs or times out behind a pipelined copy gets
    /// one copy in flight per connection from then on; 1 starts there.
    pub pipeline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            queue_length: 1024,
            max_queued_bytes: 64 << 20,
            timeout: Duration::from_millis(5000),
            rate_limit: None,
            pipeline: 16,
        }
    }
}

/// A copy as it is written to a shadow: HTTP/1.x bytes, head then body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowRequest {
    pub head: Bytes,
    /// The body as captured (a chunked body with its framing).
    pub body: Bytes,
    /// A HEAD request: the response has no body whatever its headers say.
    pub head_only: bool,
    /// The shadow ends the connection after answering (`Connection: close`, HTTP/1.0
    /// without keep-alive, an upgrade): nothing is pipelined behind it.
    pub last_on_connection: bool,
    /// May be sent again when a reused connection closes before answering it (RFC 9110
    /// §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
}

impl ShadowRequest {
    /// Bytes on the wire, what the byte budget counts.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A copy waiting to be written.
struct Job {
    request: ShadowRequest,
    info: CopyInfo,
    /// Times written on a connection that closed before answering it.
    attempts: u8,
}

impl Job {
    fn bytes(&self) -> usize {
        self.request.len()
    }
}

/// A token bucket holding at most one second of requests.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How a shadow client connects and reports.
#[derive(Clone)]
pub struct ShadowOptions {
    /// Shared by all shadows: one byte budget (`limits.max_queued_bytes`) across them.
    pub queued_bytes: Arc<AtomicUsize>,
    /// HTTP/2 copies started and not finished, added to by every shadow given it (so that
    /// one can wait for all of them).
    pub unfinished_streams: Arc<AtomicUsize>,
    /// Where the client registers its connections' local addresses.
    pub own: OwnSockets,
    /// SO_MARK of every connection (0: none), which the kernel tap ignores.
    pub mark: u32,
    /// TLS for an `https://` shadow ([`TlsOptions::client_config`]; None: the system's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Label each copy ("METHOD target Host: h") for the sink.
    pub label_copies: bool,
    /// Hand each response to the sink, its body kept up to this many bytes (None: only
    /// status and timing, the cheapest).
    pub keep_body: Option<usize>,
    pub sink: Arc<dyn ResultSink>,
}

/// One shadow service.
pub struct ShadowClient {
    /// `host:port` the copies are sent to.
    authority: Arc<str>,
    queue: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    rate: Option<Mutex<RateLimit>>,
    label_copies: bool,
    sink: Arc<dyn ResultSink>,
    /// HTTP/2 streams' copies, on a connection of their own.
    h2: Arc<h2::H2Shadow>,
}

impl ShadowClient {
    /// Starts the dispatcher (within a tokio runtime). Counts below 1 are taken as 1 and
    /// `pipeline` at most [`MAX_PIPELINE`] (the binary's configuration refuses such values
    /// with the field named; a library caller gets a working client, never a panic).
    pub fn start(uri: &Uri, limits: &Limits, options: ShadowOptions) -> Self {
        let limits = &Limits {
            max_in_flight: limits.max_in_flight.max(1),
            queue_length: limits.queue_length.max(1),
            pipeline: limits.pipeline.clamp(1, MAX_PIPELINE),
            ..limits.clone()
        };
        let authority: Arc<str> = uri
            .authority()
            .map_or_else(String::new, |a| {
                if a.port().is_some() {
                    a.to_string()
                } else if uri.scheme_str() == Some("https") {
                    format!("{}:443", a.host())
                } else {
                    format!("{}:80", a.host())
                }
            })
            .into();
        let (tx, rx) = mpsc::channel(limits.queue_length);
        let outcomes = Outcomes {
            shadow: authority.clone(),
            timeout: limits.timeout,
            queued_bytes: options.queued_bytes.clone(),
            keep_responses: options.keep_body.is_some(),
            sink: options.sink.clone(),
        };
        let h2_tls = h2::h2_tls(options.tls.clone());
        let h2_endpoint = connect::Endpoint::new(uri, options.mark, options.own.clone(), h2_tls);
        let unfinished = options.unfinished_streams.clone();
        let keep = options.keep_body.unwrap_or(0);
        let h2 = h2::H2Shadow::new(h2_endpoint, limits, outcomes.clone(), unfinished, keep);
        let endpoint = connect::Endpoint::new(uri, options.mark, options.own.clone(), options.tls);
        let keep_body = options.keep_body.unwrap_or(0);
        let connections = pipelined::Pipelines::new(endpoint, limits, keep_body, outcomes, rx);
        tokio::spawn(pipelined::run(Arc::new(connections)));
        let rate = limits.rate_limit.map(|rate| {
            Mutex::new(RateLimit { rate, tokens: rate.max(1.0), last: Instant::now() })
        });
        Self {
            authority,
            queue: tx,
            queued_bytes: options.queued_bytes,
            max_queued_bytes: limits.max_queued_bytes,
            rate,
            label_copies: options.label_copies,
            sink: options.sink,
            h2: Arc::new(h2),
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Queues a copy, or drops it (told to the sink) if a limit is reached. Never waits.
    pub fn offer(&self, id: u64, request: ShadowRequest) -> Result<(), DropReason> {
        let label = self.label_copies.then(|| label(&request));
        let job = Job { request, info: CopyInfo { id, label }, attempts: 0 };
        self.try_offer(job).map_err(|(reason, info)| {
            self.sink.dropped(&self.authority, &info, reason, &reason.name());
            reason
        })
    }

    /// Starts the copy of an HTTP/2 stream: `head` as it goes to the shadow (`:authority`
    /// from its URI), its body pushed into the returned [`StreamCopy`] as it is captured
    /// (`end_stream`: there is none). Or drops it (told to the sink) if a limit is reached.
    /// Never waits.
    pub fn open_stream(
        &self,
        id: u64,
        head: http::request::Parts,
        end_stream: bool,
    ) -> Result<StreamCopy, DropReason> {
        let label = self.label_copies.then(|| {
            let host = head.uri.authority().map_or("-", |a| a.as_str());
            let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
            format!("{} {path} :authority: {host}", head.method).into()
        });
        let info = CopyInfo { id, label };
        if let Some(rate) = &self.rate {
            if !rate.lock().expect("not poisoned").allow() {
                self.sink.dropped(&self.authority, &info, DropReason::RateLimited, &"rate_limited");
                return Err(DropReason::RateLimited);
            }
        }
        self.h2.open(info, head, end_stream).map_err(|(reason, info)| {
            self.sink.dropped(&self.authority, &info, reason, &reason.name());
            reason
        })
    }

    fn try_offer(&self, job: Job) -> Result<(), (DropReason, CopyInfo)> {
        if let Some(rate) = &self.rate {
            if !rate.lock().expect("not poisoned").allow() {
                return Err((DropReason::RateLimited, job.info));
            }
        }
        let bytes = job.bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err((DropReason::ByteBudget, job.info));
        }
        match self.queue.try_send(job) {
            Ok(()) => {
                self.sink.queue_depth(&self.authority, 1);
                Ok(())
            }
            Err(e) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                Err((DropReason::QueueFull, e.into_inner().info))
            }
        }
    }
}

/// "METHOD target Host: h" of a copy.
fn label(request: &ShadowRequest) -> Box<str> {
    let Ok(Some((_, parts))) = mirror_http::Head::parse_request(&request.head) else {
        return "-".into();
    };
    let head = parts.with_bytes(request.head.clone());
    let host = head.header("host").map_or("-".into(), String::from_utf8_lossy);
    let (method, target) = (head.method().unwrap_or("-"), head.target().unwrap_or("-"));
    format!("{method} {target} Host: {host}").into()
}
