//! Fire-and-forget replay to one shadow service.
//!
//! [`ShadowClient::offer`] never waits: a copy goes into a bounded queue or is dropped and
//! counted (queue full, byte budget exhausted, rate limit). A dispatcher task takes copies
//! from the queue when one of `max_in_flight` slots is free and sends them with a hyper
//! client (a keep-alive pool per shadow, [`pooled`]), or, with `limits.pipeline` > 1,
//! pipelined connections write several copies at once ([`pipelined`]). Responses are read
//! to the end, so connections are reused, and every outcome goes to the [`ResultSink`].
//! Nothing the shadow does can reach the capture path: the worst it can do is fill the
//! queue, which only drops copies.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use tokio::sync::mpsc;

mod connect;
mod outcome;
mod pipelined;
mod pooled;

pub use connect::OwnSockets;
use outcome::Outcomes;
pub use outcome::{Answer, CopyInfo, DropReason, ResultSink};

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
    /// Copies pipelined on one shadow connection (HTTP/1.1 pipelining): 1 sends one request
    /// at a time per connection (hyper's client); more writes several copies per syscall,
    /// which is most of what a copy costs the agent (BENCHMARKS.md). The shadow must accept
    /// pipelined requests, as HTTP/1.1 servers are required to.
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
            pipeline: 1,
        }
    }
}

/// A copy waiting for a slot.
struct Job {
    request: Request<Full<Bytes>>,
    bytes: usize,
    info: CopyInfo,
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
    /// Where the client registers its connections' local addresses.
    pub own: OwnSockets,
    /// SO_MARK of every connection (0: none), which the kernel tap ignores.
    pub mark: u32,
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
        if limits.pipeline > 1 {
            // Connections enough for `max_in_flight` copies unanswered in all.
            let connections = limits.max_in_flight.div_ceil(limits.pipeline);
            let shared = pipelined::Pipelines {
                uri: uri.clone(),
                mark: options.mark,
                own: options.own.clone(),
                depth: limits.pipeline.min(limits.max_in_flight),
                keep_body: options.keep_body.unwrap_or(0),
                outcomes,
                queue: tokio::sync::Mutex::new(rx),
            };
            tokio::spawn(pipelined::run(Arc::new(shared), connections));
        } else {
            let keep_body = options.keep_body.unwrap_or(0);
            let connector = pooled::MarkingConnector { mark: options.mark, own: options.own };
            let dispatcher =
                pooled::Dispatcher::new(limits.max_in_flight, connector, keep_body, outcomes);
            tokio::spawn(dispatcher.run(rx));
        }
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
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Queues a copy, or drops it (told to the sink) if a limit is reached. Never waits.
    pub fn offer(
        &self,
        id: u64,
        request: Request<Full<Bytes>>,
        bytes: usize,
    ) -> Result<(), DropReason> {
        let label = self.label_copies.then(|| label(&request));
        let info = CopyInfo { id, label };
        let result = self.try_offer(request, bytes, &info);
        if let Err(reason) = result {
            self.sink.dropped(&self.authority, &info, reason, &reason.name());
        }
        result
    }

    fn try_offer(
        &self,
        request: Request<Full<Bytes>>,
        bytes: usize,
        info: &CopyInfo,
    ) -> Result<(), DropReason> {
        if let Some(rate) = &self.rate {
            if !rate.lock().expect("not poisoned").allow() {
                return Err(DropReason::RateLimited);
            }
        }
        let before = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(DropReason::ByteBudget);
        }
        match self.queue.try_send(Job { request, bytes, info: info.clone() }) {
            Ok(()) => {
                self.sink.queue_depth(&self.authority, 1);
                Ok(())
            }
            Err(_) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                Err(DropReason::QueueFull)
            }
        }
    }
}

/// "METHOD target Host: h" of a copy.
fn label(request: &Request<Full<Bytes>>) -> Box<str> {
    let host = request.headers().get(http::header::HOST);
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("-");
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("{} {target} Host: {host}", request.method()).into()
}
