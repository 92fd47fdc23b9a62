//! Prometheus metrics of the agent, and the HTTP endpoint serving them with /healthz and
//! /readyz.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::accept::AcceptBackoff;

use mirror_shadow::{Answer, CopyInfo, DropReason, GrpcAnswer, ResultSink};

pub type Labels = Vec<(&'static str, String)>;

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_owned())]
}

/// Every metric of the agent.
pub struct Metrics {
    registry: Registry,
    kernel: Family<Labels, Counter>,
    reassembly: Family<Labels, Counter>,
    http: Family<Labels, Counter>,
    /// Requests that matched no rule, and requests that could not be copied: handles kept
    /// so the per-request path does not build label sets.
    pub not_matched: Counter,
    /// HTTP/2 streams whose pseudo-fields make no request to copy.
    pub uncopyable: Counter,
    /// Length-prefixed messages of mirrored gRPC requests.
    grpc_request_messages: Counter,
    /// Shadows' gRPC answers by `grpc-status`, and their messages.
    shadow_grpc_status: Family<Labels, Counter>,
    shadow_grpc_messages: Family<Labels, Counter>,
    shadow_not_sampled: Family<Labels, Counter>,
    shadow_requests: Family<Labels, Counter>,
    shadow_dropped: Family<Labels, Counter>,
    shadow_latency: Family<Labels, Histogram, fn() -> Histogram>,
    shadow_queue: Family<Labels, Gauge>,
    shadow_pipeline: Family<Labels, Gauge>,
    /// 1 per attached interface (labelled by name and index), gone once detached.
    interface_attached: Family<Labels, Gauge>,
    /// Interfaces attached, detached, or that failed to attach.
    interface_changes: Family<Labels, Counter>,
    /// Last values of the counters copied from elsewhere (kernel, each worker's reassembly
    /// and framing), by source, family and counter.
    last: Mutex<HashMap<(usize, &'static str, &'static str), u64>>,
}

impl Metrics {
    /// The metrics, with the comparison's counts read from `verdicts` at each scrape.
    pub fn with_compare(verdicts: crate::compare::SharedVerdicts) -> Metrics {
        let mut metrics = Metrics::default();
        let collector = crate::compare_metrics::CompareCollector(verdicts);
        metrics.registry.register_collector(Box::new(collector));
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirror");
        let kernel = Family::default();
        registry.register("kernel", "Kernel tap counters (per-CPU sums)", kernel.clone());
        let reassembly = Family::default();
        registry.register("reassembly", "TCP reassembly counters", reassembly.clone());
        let http = Family::default();
        registry.register("http", "HTTP framing counters", http.clone());
        let skipped: Family<Labels, Counter> = Family::default();
        registry.register("requests_skipped", "Requests not mirrored, by reason", skipped.clone());
        let not_matched = skipped.get_or_create(&label("reason", "not_matched")).clone();
        let uncopyable = skipped.get_or_create(&label("reason", "uncopyable")).clone();
        let grpc_request_messages = Counter::default();
        registry.register(
            "grpc_request_messages",
            "Length-prefixed messages of the gRPC requests mirrored",
            grpc_request_messages.clone(),
        );
        let shadow_grpc_status = Family::default();
        registry.register(
            "shadow_grpc_status",
            "gRPC calls answered by a shadow, by grpc-status (missing: none in the answer)",
            shadow_grpc_status.clone(),
        );
        let shadow_grpc_messages = Family::default();
        registry.register(
            "shadow_grpc_messages",
            "Length-prefixed messages in a shadow's gRPC answers",
            shadow_grpc_messages.clone(),
        );
        let shadow_not_sampled = Family::default();
        registry.register(
            "shadow_not_sampled",
            "Requests a shadow's sampling left out",
            shadow_not_sampled.clone(),
        );
        let shadow_requests = Family::default();
        registry.register(
            "shadow_requests",
            "Copies answered by a shadow, by status class",
            shadow_requests.clone(),
        );
        let shadow_dropped = Family::default();
        registry.register(
            "shadow_dropped",
            "Copies not delivered to a shadow, by reason",
            shadow_dropped.clone(),
        );
        let shadow_latency: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "shadow_latency_seconds",
            "Time from sending a copy to the end of the shadow's response",
            shadow_latency.clone(),
        );
        let shadow_queue = Family::default();
        registry.register("shadow_queue_depth", "Copies waiting for a slot", shadow_queue.clone());
        let shadow_pipeline = Family::default();
        registry.register(
            "shadow_pipeline_depth",
            "Copies pipelined per shadow connection at most (1 once the shadow failed behind a pipelined copy)",
            shadow_pipeline.clone(),
        );
        let interface_attached = Family::default();
        registry.register(
            "interface_attached",
            "1 for each interface the tap is attached to",
            interface_attached.clone(),
        );
        let interface_changes = Family::default();
        registry.register(
            "interface_changes",
            "Interfaces attached, detached, or that failed to attach",
            interface_changes.clone(),
        );
        Self {
            registry,
            interface_attached,
            interface_changes,
            kernel,
            reassembly,
            http,
            not_matched,
            uncopyable,
            grpc_request_messages,
            shadow_grpc_status,
            shadow_grpc_messages,
            shadow_not_sampled,
            shadow_requests,
            shadow_dropped,
            shadow_latency,
            shadow_queue,
            shadow_pipeline,
            last: Mutex::default(),
        }
    }
}

/// gRPC's status codes, 0 (OK) to 16 (UNAUTHENTICATED).
const GRPC_CODES: usize = 17;

/// Latency buckets from 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Which family counters copied from another stage go to.
#[derive(Clone, Copy)]
pub enum Stage {
    Kernel,
    Reassembly,
    Http,
}

impl Metrics {
    /// Brings a stage's counters up to `values`, monotonic totals kept by `source` (a
    /// worker's number; several sources add up).
    pub fn sync(&self, source: usize, stage: Stage, values: &[(&'static str, u64)]) {
        let (family, key) = match stage {
            Stage::Kernel => (&self.kernel, "kernel"),
            Stage::Reassembly => (&self.reassembly, "reassembly"),
            Stage::Http => (&self.http, "http"),
        };
        let mut last = self.last.lock().expect("not poisoned");
        for &(name, value) in values {
            let prev = last.entry((source, key, name)).or_insert(0);
            if value > *prev {
                family.get_or_create(&label("counter", name)).inc_by(value - *prev);
                *prev = value;
            }
        }
    }

    /// A mirrored gRPC request ended with this many messages (None: not gRPC).
    pub fn grpc_request_messages(&self, messages: Option<u64>) {
        if let Some(n) = messages {
            self.grpc_request_messages.inc_by(n);
        }
    }

    /// Handles for one shadow's metrics.
    pub fn shadow(&self, shadow: &str) -> ShadowMetrics {
        let with =
            |k: &'static str, v: &str| vec![("shadow", shadow.to_owned()), (k, v.to_owned())];
        ShadowMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| self.shadow_requests.get_or_create(&with("class", c)).clone()),
            dropped: DropReason::ALL
                .map(|r| self.shadow_dropped.get_or_create(&with("reason", r.name())).clone()),
            not_sampled: self.shadow_not_sampled.get_or_create(&label("shadow", shadow)).clone(),
            latency: self.shadow_latency.get_or_create(&label("shadow", shadow)).clone(),
            queue_depth: self.shadow_queue.get_or_create(&label("shadow", shadow)).clone(),
            pipeline_depth: self.shadow_pipeline.get_or_create(&label("shadow", shadow)).clone(),
            grpc_status: std::array::from_fn(|code| {
                let code = if code < GRPC_CODES { code.to_string() } else { "missing".into() };
                self.shadow_grpc_status.get_or_create(&with("code", &code)).clone()
            }),
            grpc_messages: self
                .shadow_grpc_messages
                .get_or_create(&label("shadow", shadow))
                .clone(),
            pipelining_off: Mutex::default(),
        }
    }

    /// An interface was attached (`true`) or detached; `pod`: the name of its peer's network
    /// namespace, if known (one label value per interface: bounded by the node's pods).
    pub fn interface(&self, name: &str, ifindex: u32, pod: Option<&str>, attached: bool) {
        let labels = vec![
            ("interface", name.to_owned()),
            ("ifindex", ifindex.to_string()),
            ("pod", pod.unwrap_or_default().to_owned()),
        ];
        if attached {
            self.interface_attached.get_or_create(&labels).set(1);
        } else {
            self.interface_attached.remove(&labels);
        }
        let change = if attached { "attached" } else { "detached" };
        self.interface_changes.get_or_create(&label("change", change)).inc();
    }

    /// An interface could not be attached.
    pub fn interface_failed(&self) {
        self.interface_changes.get_or_create(&label("change", "failed")).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One shadow's metrics (clones share the underlying values).
pub struct ShadowMetrics {
    by_class: [Counter; 5],
    pub not_sampled: Counter,
    dropped: [Counter; DropReason::COUNT as usize],
    latency: Histogram,
    pub queue_depth: Gauge,
    pub pipeline_depth: Gauge,
    /// gRPC answers by `grpc-status` 0..=16, then those without one (or another value).
    grpc_status: [Counter; GRPC_CODES + 1],
    grpc_messages: Counter,
    /// Why pipelining was turned off, if it was.
    pipelining_off: Mutex<Option<String>>,
}

impl ShadowMetrics {
    pub fn answered(&self, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// A gRPC answer: its `grpc-status` and messages.
    pub fn grpc(&self, grpc: &GrpcAnswer) {
        let code = grpc.status.map_or(GRPC_CODES, |c| usize::from(c).min(GRPC_CODES));
        self.grpc_status[code].inc();
        self.grpc_messages.inc_by(grpc.messages);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// Copies answered, by class 1xx..5xx.
    pub fn answered_by_class(&self) -> [u64; 5] {
        self.by_class.each_ref().map(Counter::get)
    }

    pub fn pipelining_off(&self) -> Option<String> {
        self.pipelining_off.lock().expect("not poisoned").clone()
    }

    pub fn dropped_by_reason(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL.iter().zip(&self.dropped).map(|(r, c)| (r.name(), c.get())).collect()
    }
}

/// A shadow's outcomes: counted in its metrics, then handed on (the request log).
pub struct ShadowResults {
    pub metrics: Arc<ShadowMetrics>,
    pub next: Option<Arc<dyn ResultSink>>,
}

impl ResultSink for ShadowResults {
    fn answered(&self, shadow: &str, copy: &CopyInfo, answer: &Answer) {
        self.metrics.answered(answer.status, answer.elapsed);
        if let Some(grpc) = &answer.grpc {
            self.metrics.grpc(grpc);
        }
        if let Some(next) = &self.next {
            next.answered(shadow, copy, answer);
        }
    }

    fn dropped(
        &self,
        shadow: &str,
        copy: &CopyInfo,
        reason: DropReason,
        error: &dyn std::fmt::Display,
    ) {
        self.metrics.dropped(reason);
        if let Some(next) = &self.next {
            next.dropped(shadow, copy, reason, error);
        }
    }

    fn queue_depth(&self, _shadow: &str, delta: i64) {
        self.metrics.queue_depth.inc_by(delta);
    }

    fn pipelining_off(&self, shadow: &str, why: &dyn std::fmt::Display) {
        self.metrics.pipeline_depth.set(1);
        *self.metrics.pipelining_off.lock().expect("not poisoned") = Some(why.to_string());
        if let Some(next) = &self.next {
            next.pipelining_off(shadow, why);
        }
    }
}

/// Serves /metrics, /healthz and /readyz (ready once the tap is attached), and with `api` the
/// comparison's JSON API under /api/.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    api: Option<crate::admin::Api>,
) {
    let mut backoff = AcceptBackoff::new("metrics");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        backoff.accepted();
        let (metrics, ready, api) = (metrics.clone(), ready.clone(), api.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (metrics, ready, api) = (metrics.clone(), ready.clone(), api.clone());
                async move { respond(req, &metrics, &ready, api.as_ref()).await }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The API's answer if it has one, else the metrics, health and readiness endpoints. A
/// request body (the API's POSTs) is read up to [`crate::admin::MAX_API_BODY`] bytes.
async fn respond(
    req: Request<hyper::body::Incoming>,
    metrics: &Metrics,
    ready: &AtomicBool,
    api: Option<&crate::admin::Api>,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    let (parts, body) = req.into_parts();
    if let (Some(_), "/" | "/ui") = (api, parts.uri.path()) {
        return Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(crate::admin::UI.as_bytes())));
    }
    let Some(api) = api.filter(|_| parts.uri.path().starts_with("/api/")) else {
        return plain(parts.uri.path(), metrics, ready);
    };
    let limited = http_body_util::Limited::new(body, crate::admin::MAX_API_BODY);
    let body = match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Response::builder()
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .body(Full::new(Bytes::from_static(b"{\"error\": \"body too large\"}")))
        }
    };
    let (path, query) = (parts.uri.path(), parts.uri.query());
    match api.handle(parts.method.as_str(), path, query, &body) {
        Some(r) => Response::builder()
            .status(r.status)
            .header("content-type", "application/json")
            .body(Full::new(r.body)),
        None => plain(path, metrics, ready),
    }
}

/// The metrics, health and readiness endpoints.
fn plain(
    path: &str,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    match path {
        "/metrics" => Response::builder()
            .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(Full::new(Bytes::from(metrics.encode()))),
        "/healthz" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
        "/readyz" if ready.load(Ordering::Relaxed) => {
            Response::builder().body(Full::new(Bytes::from_static(b"ready\n")))
        }
        "/readyz" => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Full::new(Bytes::from_static(b"not ready\n"))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    }
}

/// Binds the metrics listener (before anything is attached, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {addr}: {e}"))
}
