//! `mirror run`: the whole pipeline, live.
//!
//! tap -> segments -> reassembly + framing -> match -> sample (per shadow) -> rewrite ->
//! shadow queues. One task runs everything up to the queues, so a request costs no thread
//! hand-off until its copy is queued; each shadow's dispatcher sends copies on its own.
use std::{
    collections::HashSet,
    fmt,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};

use mirror_capture::{CaptureSource, Segment};
use mirror_flow::ReassemblyStats;
use mirror_http::{extractor, HttpEvent, HttpExtractor, HttpRequest, HttpStats};
use mirror_shadow::{OwnSockets, ResultSink, ShadowClient, ShadowOptions};
use mirror_tap::{Directions, KernelCounters, Tap, TapSettings};

use crate::{
    config::{parse_shadow_url, MirrorConfig},
    metrics::{self, Metrics, ShadowMetrics, ShadowResults, Stage},
    rewrite::Rewriter,
    select::{RequestMatcher, Sampler},
    watch::Publisher,
};

/// Marks the agent's own sockets; the kernel tap ignores packets carrying it ("mir").
pub const OWN_MARK: u32 = 0x006d_6972;

/// Options of a run that are not part of the mirroring configuration.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Also told every copy's outcome (the request log).
    pub results: Option<Arc<dyn ResultSink>>,
    pub ring_bytes: Option<u32>,
    /// Serve watchers (`mirror dump --watch`) on this unix socket.
    pub watch_socket: Option<std::path::PathBuf>,
}

struct Shadow {
    client: ShadowClient,
    percent: f64,
    metrics: Arc<ShadowMetrics>,
    offered: u64,
}

/// What a run did, printed when it ends.
pub struct Summary {
    /// Kernel counters (live runs only).
    pub kernel: Option<KernelCounters>,
    pub reassembly: ReassemblyStats,
    pub http: HttpStats,
    pub captured_requests: u64,
    pub not_matched: u64,
    pub uncopyable: u64,
    pub shadows: Vec<ShadowSummary>,
}

pub struct ShadowSummary {
    pub authority: String,
    /// Copies queued for this shadow.
    pub offered: u64,
    pub not_sampled: u64,
    pub answered: [u64; 5],
    pub dropped: Vec<(&'static str, u64)>,
}

/// Everything between a capture source and the shadow queues, shared by `mirror run` (live)
/// and `mirror replay` (a capture file).
pub struct Mirroring {
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    timeout: Duration,
}

impl Mirroring {
    /// Validates the mirroring part of `config` and starts one dispatcher per shadow.
    pub fn start(config: &MirrorConfig, results: Option<Arc<dyn ResultSink>>) -> Result<Mirroring> {
        config.validate_mirroring()?;
        let matcher = RequestMatcher::new(&config.match_rules).context("match")?;
        let rewriter = Rewriter::new(config.host_rewrite.clone(), &config.headers.request)
            .map_err(|e| anyhow::anyhow!("headers: {e}"))?;
        let sampler = Sampler::new(config.sample_by_header.clone(), config.seed);
        let metrics = Arc::new(Metrics::default());
        let own = OwnSockets::default();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut shadows = Vec::new();
        for (i, m) in config.mirrors.iter().enumerate() {
            let uri = parse_shadow_url(&m.url).with_context(|| format!("mirrors[{i}].url"))?;
            let shadow_metrics = Arc::new(metrics.shadow(&m.url));
            let sink = ShadowResults { metrics: shadow_metrics.clone(), next: results.clone() };
            let options = ShadowOptions {
                queued_bytes: queued.clone(),
                own: own.clone(),
                mark: OWN_MARK,
                label_copies: results.is_some(),
                sink: Arc::new(sink),
            };
            let client = ShadowClient::start(&uri, &config.limits.shadow(), options);
            let percent = config.percentage(i);
            shadows.push(Shadow { client, percent, metrics: shadow_metrics, offered: 0 });
        }
        let shadow_ports = shadows
            .iter()
            .filter_map(|s| s.client.authority().rsplit(':').next()?.parse().ok())
            .collect();
        let pipeline = Pipeline {
            extractor: extractor(config.reassembly.reassembly(), config.reassembly.http()),
            own,
            shadow_ports,
            stages: Stages { matcher, sampler, rewriter, metrics: metrics.clone(), watch: None },
            shadows,
            events: Vec::new(),
            captured_requests: 0,
        };
        Ok(Mirroring { pipeline, metrics, queued, timeout: config.limits.shadow().timeout })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes every mirrored request to watchers.
    pub fn publish_to(&mut self, publisher: Publisher) {
        self.pipeline.stages.watch = Some(publisher);
    }

    /// Feeds captured segments (the batch is emptied).
    pub fn segments(&mut self, batch: &mut Vec<Segment>) {
        self.pipeline.segments(batch);
    }

    /// Periodic work: hole and idle timeouts (`now_ns`: the segments' clock), metrics.
    pub fn tick(&mut self, now_ns: u64) {
        self.pipeline.tick(now_ns);
        let x = &self.pipeline.extractor;
        self.metrics.sync(Stage::Reassembly, &x.stats().fields());
        self.metrics.sync(Stage::Http, &x.shared().stats.fields());
    }

    /// The end of the input: flushes what reassembly holds (a response delimited by the end
    /// of its stream, for instance).
    pub fn finish_input(&mut self) {
        self.pipeline.extractor.finish(&mut self.pipeline.events);
        self.pipeline.dispatch();
    }

    /// Requests framed so far.
    pub fn captured_requests(&self) -> u64 {
        self.pipeline.captured_requests
    }

    /// Copies queued to shadows so far (all shadows).
    pub fn mirrored(&self) -> u64 {
        self.pipeline.shadows.iter().map(|s| s.offered).sum()
    }

    /// Waits (up to one per-copy timeout) for the copies already queued to finish.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + self.timeout + Duration::from_millis(200);
        while self.queued.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn summary(&self, kernel: Option<KernelCounters>) -> Summary {
        let metrics = &self.metrics;
        let x = &self.pipeline.extractor;
        Summary {
            kernel,
            reassembly: *x.stats(),
            http: x.shared().stats,
            captured_requests: self.pipeline.captured_requests,
            not_matched: metrics.not_matched.get(),
            uncopyable: metrics.uncopyable.get(),
            shadows: self
                .pipeline
                .shadows
                .iter()
                .map(|s| ShadowSummary {
                    authority: s.client.authority().to_owned(),
                    offered: s.offered,
                    not_sampled: s.metrics.not_sampled.get(),
                    answered: s.metrics.answered_by_class(),
                    dropped: s.metrics.dropped_by_reason(),
                })
                .collect(),
        }
    }
}

/// Runs until `shutdown` completes; then detaches and returns the summary.
pub async fn run(
    config: MirrorConfig,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary> {
    config.validate()?;
    let listener = match config.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let mut mirroring = Mirroring::start(&config, opts.results.clone())?;
    // Watching is an aid, not the job: without its socket the agent still mirrors.
    let watch_socket = opts.watch_socket.as_ref().filter(|path| match Publisher::serve(path) {
        Ok(publisher) => {
            mirroring.publish_to(publisher);
            true
        }
        Err(e) => {
            tracing::warn!(
                "watch socket {}: {e}; `mirror dump --watch` will not work",
                path.display()
            );
            false
        }
    });
    let mut tap = Tap::attach(&TapSettings {
        interfaces: config.interfaces.clone(),
        ports: config.ports.clone(),
        service_nets: config.service_nets.clone(),
        directions: Directions::BOTH,
        ring_bytes: opts.ring_bytes.unwrap_or(mirror_common::DEFAULT_RING_BYTES),
        ignore_mark: OWN_MARK,
        ..TapSettings::default()
    })?;
    let ready = Arc::new(AtomicBool::new(true));
    if let Some(listener) = listener {
        tokio::spawn(metrics::serve(listener, mirroring.metrics().clone(), ready.clone()));
    }
    eprintln!("mirror run: ready");

    let mut source = tap.segments()?;
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                mirroring.segments(&mut batch);
            }
            _ = tick.tick() => {
                mirroring.tick(wall_clock_ns());
                mirroring.metrics().sync(Stage::Kernel, &kernel_fields(&tap.counters()?));
            }
        }
    }
    // Everything captured before the signal is mirrored: drain the ring to the end.
    while source.drain_now(&mut batch) > 0 {
        mirroring.segments(&mut batch);
    }
    ready.store(false, Ordering::Relaxed);
    let kernel = tap.counters()?;
    tap.detach()?;
    mirroring.settle().await;
    if let Some(path) = watch_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(mirroring.summary(Some(kernel)))
}

/// Everything between the capture and the shadow queues.
struct Pipeline {
    extractor: HttpExtractor,
    own: OwnSockets,
    shadow_ports: HashSet<u16>,
    stages: Stages,
    shadows: Vec<Shadow>,
    events: Vec<HttpEvent>,
    captured_requests: u64,
}

impl Pipeline {
    fn segments(&mut self, batch: &mut Vec<Segment>) {
        for seg in batch.drain(..) {
            // Loop prevention: our own connections to a shadow behind a tapped interface
            // (the kernel already skips their marked packets in one direction).
            if self.shadow_ports.contains(&seg.server().port()) && self.own.contains(&seg.client())
            {
                continue;
            }
            self.extractor.push(&seg, &mut self.events);
        }
        self.dispatch();
    }

    fn tick(&mut self, now_ns: u64) {
        self.extractor.expire(now_ns, &mut self.events);
        self.dispatch();
    }

    fn dispatch(&mut self) {
        for event in self.events.drain(..) {
            if let HttpEvent::Request(req) = event {
                self.captured_requests += 1;
                self.stages.mirror(self.captured_requests, &req, &mut self.shadows);
            }
        }
    }
}

/// The per-request stages after framing.
struct Stages {
    matcher: RequestMatcher,
    sampler: Sampler,
    rewriter: Rewriter,
    metrics: Arc<Metrics>,
    watch: Option<Publisher>,
}

impl Stages {
    /// Mirrors request number `id` (counted from 1) to the shadows that sample it.
    fn mirror(&mut self, id: u64, req: &HttpRequest, shadows: &mut [Shadow]) {
        if !self.matcher.matches(&req.head) {
            self.metrics.not_matched.inc();
            return;
        }
        let watched = self.watch.as_ref().is_some_and(Publisher::watched);
        let mut sent_to: Vec<&str> = Vec::new();
        for shadow in shadows.iter_mut() {
            if !self.sampler.sample(shadow.percent, &req.head) {
                shadow.metrics.not_sampled.inc();
                continue;
            }
            let copy =
                match self.rewriter.copy(req, shadow.client.authority(), req.conn.client.ip()) {
                    Ok(copy) => copy,
                    Err(_) => {
                        self.metrics.uncopyable.inc();
                        continue;
                    }
                };
            let bytes = req.head.bytes().len() + req.body.len();
            if shadow.client.offer(id, copy, bytes).is_ok() {
                shadow.offered += 1;
                if watched {
                    sent_to.push(shadow.client.authority());
                }
            }
        }
        if let (Some(watch), false) = (&self.watch, sent_to.is_empty()) {
            watch.mirrored(req, &sent_to);
        }
    }
}

fn kernel_fields(k: &KernelCounters) -> [(&'static str, u64); 6] {
    [
        ("seen", k.seen),
        ("selected", k.selected),
        ("records", k.records),
        ("bytes", k.bytes),
        ("lost", k.lost),
        ("truncated", k.truncated),
    ]
}

/// Nanoseconds since the Unix epoch: the clock of segment timestamps.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kernel) = &self.kernel {
            writeln!(f, "captured: kernel {kernel}")?;
        }
        writeln!(
            f,
            "requests: {} captured, {} not matched, {} not copyable",
            self.captured_requests, self.not_matched, self.uncopyable
        )?;
        for s in &self.shadows {
            let [c1, c2, c3, c4, c5] = s.answered;
            write!(
                f,
                "shadow {}: {} mirrored, {} not sampled; answered 1xx {c1} 2xx {c2} 3xx {c3} 4xx {c4} 5xx {c5}; dropped",
                s.authority, s.offered, s.not_sampled
            )?;
            for (reason, n) in &s.dropped {
                write!(f, " {reason} {n}")?;
            }
            writeln!(f)?;
        }
        let nonzero = |fields: &[(&'static str, u64)]| {
            fields
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "reassembly: {}", nonzero(&self.reassembly.fields()))?;
        write!(f, "http: {}", nonzero(&self.http.fields()))
    }
}
