//! Fire-and-forget replay to one shadow service.
//!
//! [`ShadowClient::offer`] never waits: a copy goes into a bounded queue or is dropped and
//! counted (queue full, byte budget exhausted, rate limit). A dispatcher task takes copies
//! from the queue when one of `max_in_flight` slots is free and sends them with a hyper
//! client (a keep-alive pool per shadow), or, with `limits.pipeline` > 1, pipelined
//! connections write several copies at once ([`pipelined`]). Responses are read to the end,
//! so connections are reused, and discarded, counted by status class. Nothing the shadow does can reach the
//! capture path: the worst it can do is fill the queue, which only drops copies.
use std::{
    collections::HashSet,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
    sync::{mpsc, Semaphore},
};

use crate::{config::Limits, metrics::ShadowMetrics};

mod pipelined;

/// Why a copy was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    QueueFull,
    ByteBudget,
    RateLimited,
    Timeout,
    Error,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::ByteBudget,
        DropReason::RateLimited,
        DropReason::Timeout,
        DropReason::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ByteBudget => "byte_budget",
            DropReason::RateLimited => "rate_limited",
            DropReason::Timeout => "timeout",
            DropReason::Error => "error",
        }
    }
}

/// Local addresses of the agent's own connections to shadows, so the capture can ignore
/// them (loop prevention when a shadow sits behind a tapped interface).
#[derive(Clone, Default)]
pub struct OwnSockets(Arc<Mutex<HashSet<SocketAddr>>>);

impl OwnSockets {
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.0.lock().expect("not poisoned").contains(addr)
    }

    fn insert(&self, addr: SocketAddr) {
        self.0.lock().expect("not poisoned").insert(addr);
    }

    fn remove(&self, addr: &SocketAddr) {
        self.0.lock().expect("not poisoned").remove(addr);
    }
}

struct Job {
    request: Request<Full<Bytes>>,
    bytes: usize,
    /// "METHOD target Host: h" when requests are logged.
    label: Option<String>,
}

/// Where a line per answered copy goes (the demo and `--log-requests`).
#[derive(Clone, Copy, Debug)]
pub struct RequestLog;

impl RequestLog {
    pub fn stdout() -> RequestLog {
        RequestLog
    }

    fn line(self, shadow: &str, label: &str, outcome: &str) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mirrored {label} -> {shadow}: {outcome}");
        let _ = out.flush();
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

/// One shadow service.
pub struct ShadowClient {
    /// `host:port` the copies are sent to.
    authority: String,
    queue: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    rate: Option<Mutex<RateLimit>>,
    metrics: Arc<ShadowMetrics>,
    log: Option<RequestLog>,
}

impl ShadowClient {
    /// Starts the dispatcher. `queued_bytes` is shared by all shadows (one byte budget);
    /// `mark` is set as SO_MARK on every connection, which the kernel tap ignores.
    pub fn start(
        uri: &Uri,
        limits: &Limits,
        queued_bytes: Arc<AtomicUsize>,
        own: OwnSockets,
        mark: u32,
        metrics: Arc<ShadowMetrics>,
        log: Option<RequestLog>,
    ) -> Self {
        let authority = uri.authority().map_or_else(String::new, |a| {
            if a.port().is_some() {
                a.to_string()
            } else {
                format!("{}:80", a.host())
            }
        });
        let (tx, rx) = mpsc::channel(limits.queue_length);
        let outcomes = Outcomes {
            timeout: limits.timeout(),
            queued_bytes: queued_bytes.clone(),
            metrics: metrics.clone(),
            log: log.map(|l| (l, authority.clone())),
        };
        if limits.pipeline > 1 {
            // Connections enough for `max_in_flight` copies unanswered in all.
            let connections = limits.max_in_flight.div_ceil(limits.pipeline);
            let shared = pipelined::Pipelines {
                uri: uri.clone(),
                mark,
                own,
                depth: limits.pipeline.min(limits.max_in_flight),
                outcomes,
                queue: tokio::sync::Mutex::new(rx),
            };
            tokio::spawn(pipelined::run(Arc::new(shared), connections));
        } else {
            let connector = MarkingConnector { mark, own };
            let client = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(limits.max_in_flight)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
            let slots = Arc::new(Semaphore::new(limits.max_in_flight));
            tokio::spawn(Dispatcher { client, slots, outcomes: Arc::new(outcomes) }.run(rx));
        }
        let rate = limits.rate_limit.map(|rate| {
            Mutex::new(RateLimit { rate, tokens: rate.max(1.0), last: Instant::now() })
        });
        Self {
            authority,
            queue: tx,
            queued_bytes,
            max_queued_bytes: limits.max_queued_bytes,
            rate,
            metrics,
            log,
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Queues a copy, or drops it (counted) if a limit is reached. Never waits.
    pub fn offer(&self, request: Request<Full<Bytes>>, bytes: usize) -> Result<(), DropReason> {
        let result = self.try_offer(request, bytes);
        if let Err(reason) = result {
            self.metrics.dropped(reason);
        }
        result
    }

    fn try_offer(&self, request: Request<Full<Bytes>>, bytes: usize) -> Result<(), DropReason> {
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
        let label = self.log.map(|_| {
            let host = request.headers().get(http::header::HOST);
            let host = host.and_then(|h| h.to_str().ok()).unwrap_or("-");
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            format!("{} {target} Host: {host}", request.method())
        });
        match self.queue.try_send(Job { request, bytes, label }) {
            Ok(()) => {
                self.metrics.queue_depth.inc();
                Ok(())
            }
            Err(_) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                Err(DropReason::QueueFull)
            }
        }
    }
}

/// What happens once a copy is answered or abandoned: metrics, the byte budget, the log.
struct Outcomes {
    timeout: Duration,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<ShadowMetrics>,
    log: Option<(RequestLog, String)>,
}

impl Outcomes {
    fn answered(&self, bytes: usize, label: Option<String>, start: Instant, status: u16) {
        let elapsed = start.elapsed();
        self.metrics.answered(status, elapsed);
        self.done(bytes, label, || format!("{status} in {:.1} ms", elapsed.as_secs_f64() * 1e3));
    }

    fn failed(
        &self,
        bytes: usize,
        label: Option<String>,
        reason: DropReason,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.dropped(reason);
        self.done(bytes, label, || match reason {
            DropReason::Timeout => "timed out".to_owned(),
            _ => format!("error: {error}"),
        });
    }

    fn done(&self, bytes: usize, label: Option<String>, text: impl FnOnce() -> String) {
        if let (Some((log, shadow)), Some(label)) = (&self.log, label) {
            log.line(shadow, &label, &text());
        }
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One request at a time per connection, through hyper's pooled client.
struct Dispatcher {
    client: Client<MarkingConnector, Full<Bytes>>,
    slots: Arc<Semaphore>,
    outcomes: Arc<Outcomes>,
}

impl Dispatcher {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        loop {
            // A slot first, then a copy: a copy taken from the queue before a slot is free
            // would wait outside it, one more than `queue_length`.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let Some(job) = rx.recv().await else {
                return;
            };
            self.outcomes.metrics.queue_depth.dec();
            let (client, outcomes) = (self.client.clone(), self.outcomes.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let sent = tokio::time::timeout(outcomes.timeout, send(&client, job.request));
                match sent.await {
                    Ok(Ok(status)) => outcomes.answered(job.bytes, job.label, start, status),
                    Ok(Err(e)) => outcomes.failed(job.bytes, job.label, DropReason::Error, &e),
                    Err(_) => outcomes.failed(job.bytes, job.label, DropReason::Timeout, &""),
                }
                drop(slot);
            });
        }
    }
}

/// Sends one copy and reads the response to the end (so the connection is reused).
async fn send(
    client: &Client<MarkingConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// Connects to shadows with SO_MARK set and records the local addresses in use.
#[derive(Clone)]
struct MarkingConnector {
    mark: u32,
    own: OwnSockets,
}

impl tower_service::Service<Uri> for MarkingConnector {
    type Response = TokioIo<TrackedStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mark, own) = (self.mark, self.own.clone());
        Box::pin(async move { connect(&uri, mark, own).await.map(TokioIo::new) })
    }
}

/// Opens a connection to the shadow of `uri` with SO_MARK `mark` (0: none) and registers its
/// local address in `own` while it lives.
async fn connect(uri: &Uri, mark: u32, own: OwnSockets) -> io::Result<TrackedStream> {
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "shadow host"))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if mark != 0 {
        set_mark(&socket, mark)?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    own.insert(local);
    Ok(TrackedStream { stream, guard: OwnGuard { local, own } })
}

fn set_mark(socket: &TcpSocket, mark: u32) -> io::Result<()> {
    // SAFETY: setsockopt on a valid socket with a u32 option value of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A shadow connection that unregisters its local address when closed.
struct TrackedStream {
    stream: TcpStream,
    guard: OwnGuard,
}

/// Keeps a local address registered in [`OwnSockets`] while it lives.
struct OwnGuard {
    local: SocketAddr,
    own: OwnSockets,
}

impl Drop for OwnGuard {
    fn drop(&mut self) {
        self.own.remove(&self.local);
    }
}

impl Connection for TrackedStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
