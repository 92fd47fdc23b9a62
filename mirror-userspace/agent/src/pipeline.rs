//! Everything between a capture source and the shadow queues: segments -> reassembly +
//! framing -> match -> sample (per shadow) -> rewrite -> shadow queues. One task runs it all,
//! and the shadow clients' connections run on the same thread, so a request never changes
//! threads. `mirror run` ([`crate::live`]) runs one per worker, each on its own ring;
//! `mirror replay` ([`crate::replay`]) runs one.
use std::{
    collections::HashSet,
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::Uri;
use mirror_capture::{CaptureSource, Segment};
use mirror_flow::{FlowDriver, FlowSink, FlowTable, ReassemblyConfig, ReassemblyStats};
use mirror_http::{
    extractor, H2Event, H2Fields, HttpConfig, HttpConnection, HttpEvent, HttpRequest, HttpStats,
};
use mirror_shadow::{
    ClientConfig, Limits, OwnSockets, ResultSink, ShadowClient, ShadowOptions, StreamCopy,
};
use mirror_tap::KernelCounters;

use crate::{
    compare::{CompareSettings, Comparer, SharedRules, SharedVerdicts},
    metrics::{Metrics, ShadowMetrics, ShadowResults, Stage},
    rewrite::{HeaderEdits, HostRewrite, Rewriter},
    select::{MatchRule, RequestMatcher, Sampler},
    streams::StreamCopies,
    watch::Publisher,
};

/// Marks the agent's own sockets; the kernel tap ignores packets carrying it ("mir").
pub const OWN_MARK: u32 = 0x006d_6972;

/// A shadow service: where its copies go and which share of the requests it gets.
#[derive(Clone, Debug)]
pub struct ShadowTarget {
    /// `http[s]://host[:port]`.
    pub uri: Uri,
    /// As configured: the shadow's label in the metrics.
    pub name: String,
    /// 0..=100.
    pub percent: f64,
    /// TLS for an `https://` shadow (None: the system's roots).
    pub tls: Option<Arc<ClientConfig>>,
}

/// Where and how requests are mirrored: the settings of every stage after capture, typed and
/// valid (the binary's configuration layer converts and checks them once).
#[derive(Clone, Debug, Default)]
pub struct MirrorSettings {
    pub shadows: Vec<ShadowTarget>,
    /// Istio's `match`: any rule matches; none matches every request.
    pub rules: Vec<MatchRule>,
    pub host: HostRewrite,
    pub edits: HeaderEdits,
    /// Sample consistently by the hash of this header's value.
    pub sample_by_header: Option<String>,
    /// Seed of the sampling random numbers (reproducible runs).
    pub seed: Option<u64>,
    pub limits: Limits,
    pub reassembly: ReassemblyConfig,
    pub http: HttpConfig,
    /// Compare the candidate's answers with the primary's.
    pub compare: Option<CompareSettings>,
}

pub(crate) struct Shadow {
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
    pub shadows: Vec<ShadowSummary>,
    /// The comparison's verdict, when comparing.
    pub compare: Option<mirror_compare::Report>,
    pub compare_skipped: crate::compare::CompareSkips,
    /// Copies the candidate or the secondary did not answer, by drop reason.
    pub compare_drops: Vec<(&'static str, u64)>,
}

pub struct ShadowSummary {
    pub authority: String,
    /// Copies queued for this shadow.
    pub offered: u64,
    pub not_sampled: u64,
    pub answered: [u64; 5],
    pub dropped: Vec<(&'static str, u64)>,
    /// Why pipelining to the shadow was turned off, if it was.
    pub pipelining_off: Option<String>,
}

/// Everything between a capture source and the shadow queues, shared by `mirror run` (live)
/// and `mirror replay` (a capture file): the flow table's driver and what it feeds. A live
/// agent runs one per worker, each on its own ring, with its own flow table, framers and
/// shadow connections.
pub struct Mirroring {
    pub(crate) driver: FlowDriver<HttpConnection>,
    pub(crate) dispatch: Dispatch,
    shared: Shared,
    /// Which worker this is (0: the only one).
    worker: usize,
    timeout: Duration,
}

/// What the workers of one agent share, and what outlives a change of settings: metrics, the
/// byte budget across shadows, the agent's own sockets, the result sink. Touched per copy
/// only through atomics.
#[derive(Clone)]
pub struct Shared {
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    /// HTTP/2 copies not finished, every worker's.
    streams: Arc<AtomicUsize>,
    own: OwnSockets,
    results: Option<Arc<dyn ResultSink>>,
    /// Workers the per-shadow limits (in flight, queue, rate) are divided among.
    workers: usize,
    /// What every worker's comparisons add to.
    verdicts: SharedVerdicts,
    compare_rules: SharedRules,
}

impl Shared {
    /// `results`, if given, is told every copy's outcome after the metrics.
    pub fn new(results: Option<Arc<dyn ResultSink>>, workers: usize) -> Shared {
        let verdicts = SharedVerdicts::default();
        Shared {
            metrics: Arc::new(Metrics::with_compare(verdicts.clone())),
            queued: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
            own: OwnSockets::default(),
            results,
            workers: workers.max(1),
            verdicts,
            compare_rules: SharedRules::default(),
        }
    }

    pub fn verdicts(&self) -> &SharedVerdicts {
        &self.verdicts
    }

    pub fn compare_rules(&self) -> &SharedRules {
        &self.compare_rules
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// One worker's share of the per-shadow limits: what the shadow sees (copies in flight,
    /// rate) is divided among the workers (at least one copy in flight each); the queue is
    /// each worker's own, since one busy connection feeds one worker, and the byte budget
    /// bounds the memory of all queues together.
    fn worker_limits(&self, limits: &Limits) -> Limits {
        let n = self.workers;
        Limits {
            max_in_flight: limits.max_in_flight.div_ceil(n),
            rate_limit: limits.rate_limit.map(|r| r / n as f64),
            ..limits.clone()
        }
    }

    /// A client for `target` (started within a tokio runtime), its outcomes counted in its
    /// metrics and then told to `next`; responses kept up to `keep_body` bytes if given.
    fn client(
        &self,
        settings: &MirrorSettings,
        target: &ShadowTarget,
        next: Option<Arc<dyn ResultSink>>,
        keep_body: Option<usize>,
    ) -> (ShadowClient, Arc<ShadowMetrics>) {
        let mut limits = self.worker_limits(&settings.limits);
        if keep_body.is_some() {
            // Compared copies one per connection: behind a pipelined slow answer, a copy's
            // latency would be its wait, not the service's.
            limits.pipeline = 1;
        }
        let metrics = Arc::new(self.metrics.shadow(&target.name));
        metrics.pipeline_depth.set(limits.pipeline.min(settings.limits.max_in_flight) as i64);
        let options = ShadowOptions {
            queued_bytes: self.queued.clone(),
            unfinished_streams: self.streams.clone(),
            own: self.own.clone(),
            mark: OWN_MARK,
            tls: target.tls.clone(),
            label_copies: next.is_some() && keep_body.is_none(),
            keep_body,
            sink: Arc::new(ShadowResults { metrics: metrics.clone(), next }),
        };
        (ShadowClient::start(&target.uri, &limits, options), metrics)
    }

    /// A client per shadow of `settings` (started within a tokio runtime).
    fn shadows(&self, settings: &MirrorSettings) -> Vec<Shadow> {
        let start = |target: &ShadowTarget| {
            let (client, metrics) = self.client(settings, target, self.results.clone(), None);
            Shadow { client, percent: target.percent, metrics, offered: 0 }
        };
        settings.shadows.iter().map(start).collect()
    }

    /// The candidate's and the secondary's clients, if comparing.
    fn comparer(&self, settings: &MirrorSettings) -> Option<Comparer> {
        let compare = settings.compare.clone()?;
        let start = |target: &ShadowTarget, sink, keep| {
            self.client(settings, target, Some(sink), Some(keep)).0
        };
        Some(Comparer::new(compare, self.verdicts.clone(), self.compare_rules.clone(), start))
    }

    fn dispatch(
        &self,
        settings: MirrorSettings,
        watch: Option<Publisher>,
        worker: usize,
    ) -> Dispatch {
        let shadows = self.shadows(&settings);
        let comparer = self.comparer(&settings);
        let compare_targets = settings
            .compare
            .iter()
            .flat_map(|c| std::iter::once(&c.candidate).chain(c.secondary.as_ref()));
        let shadow_ports = settings
            .shadows
            .iter()
            .chain(compare_targets)
            .filter_map(|t| {
                t.uri.port_u16().or(Some(if t.uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                }))
            })
            .collect();
        let stages = Stages {
            max_compared_body: settings.compare.as_ref().map_or(0, |c| c.max_body),
            matcher: RequestMatcher::new(settings.rules),
            // Workers draw from streams of their own; by-header sampling is the same in all.
            sampler: Sampler::new(
                settings.sample_by_header,
                settings.seed.map(|seed| seed.wrapping_add(worker as u64)),
            ),
            rewriter: Rewriter::new(settings.host, settings.edits),
            metrics: self.metrics.clone(),
            watch,
        };
        Dispatch {
            own: self.own.clone(),
            shadow_ports,
            stages,
            shadows,
            comparer,
            streams: StreamCopies::default(),
            captured_requests: 0,
            worker,
        }
    }
}

impl Mirroring {
    /// The only worker: starts one client per shadow (within a tokio runtime). `results`,
    /// if given, is told every copy's outcome after the metrics.
    pub fn start(settings: MirrorSettings, results: Option<Arc<dyn ResultSink>>) -> Mirroring {
        Mirroring::worker(settings, &Shared::new(results, 1), 0)
    }

    /// Worker number `worker` of those sharing `shared`: its own flow table and shadow
    /// clients (started within the worker's tokio runtime).
    pub fn worker(settings: MirrorSettings, shared: &Shared, worker: usize) -> Mirroring {
        let table = extractor(settings.reassembly.clone(), http_config(&settings));
        let timeout = settings.limits.timeout;
        let dispatch = shared.dispatch(settings, None, worker);
        let shared = shared.clone();
        Mirroring { driver: FlowDriver::new(table), dispatch, shared, worker, timeout }
    }

    /// Puts new settings in force without stopping: new match rules, sampling, rewrite and
    /// shadows from the next request on (copies queued to the old shadows finish on their
    /// own), new reassembly caps now and framing caps for new connections.
    pub fn replace(&mut self, settings: MirrorSettings) {
        let table = self.driver.table_mut();
        table.set_config(settings.reassembly.clone());
        table.shared_mut().config = http_config(&settings);
        self.timeout = self.timeout.max(settings.limits.timeout);
        let watch = self.dispatch.stages.watch.take();
        let captured = self.dispatch.captured_requests;
        self.dispatch = self.shared.dispatch(settings, watch, self.worker);
        self.dispatch.captured_requests = captured;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Publishes every mirrored request to watchers.
    pub fn publish_to(&mut self, publisher: Publisher) {
        self.dispatch.stages.watch = Some(publisher);
    }

    /// Feeds captured segments (the batch is emptied).
    pub fn segments(&mut self, batch: &mut Vec<Segment>) {
        self.driver.feed(batch, &mut self.dispatch);
    }

    /// Periodic work: hole and idle timeouts (`now_ns`: the segments' clock), metrics.
    pub fn tick(&mut self, now_ns: u64) {
        self.driver.expire(now_ns, &mut self.dispatch);
        self.dispatch.tick(self.driver.table());
    }

    /// The end of the input: flushes what reassembly holds (a response delimited by the end
    /// of its stream, for instance).
    pub fn finish_input(&mut self) {
        self.driver.finish(&mut self.dispatch);
    }

    /// Takes every segment of `source` through the pipeline (no timers: a file's or a test's
    /// segments carry their own clock), then flushes what reassembly holds.
    pub async fn run_to_end(&mut self, source: &mut impl CaptureSource) -> std::io::Result<()> {
        let stop = std::future::pending::<()>();
        self.driver.run(source, &mut self.dispatch, stop, None).await?;
        self.finish_input();
        Ok(())
    }

    /// Requests framed so far.
    pub fn captured_requests(&self) -> u64 {
        self.dispatch.captured_requests
    }

    /// Copies queued to shadows so far (all shadows).
    pub fn mirrored(&self) -> u64 {
        self.dispatch.shadows.iter().map(|s| s.offered).sum()
    }

    /// Waits (up to one per-copy timeout) for the copies already queued to finish, HTTP/2
    /// streams' copies included.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + self.timeout + Duration::from_millis(200);
        let busy = |n: &AtomicUsize| n.load(Ordering::Relaxed) > 0;
        while (busy(&self.shared.queued) || busy(&self.shared.streams))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn summary(&self, kernel: Option<KernelCounters>) -> Summary {
        let metrics = &self.shared.metrics;
        let x = self.driver.table();
        let mut summary = Summary {
            kernel,
            reassembly: *x.stats(),
            http: x.shared().stats,
            captured_requests: self.dispatch.captured_requests,
            not_matched: metrics.not_matched.get(),
            shadows: self
                .dispatch
                .shadows
                .iter()
                .map(|s| ShadowSummary {
                    authority: s.client.authority().to_owned(),
                    offered: s.offered,
                    not_sampled: s.metrics.not_sampled.get(),
                    answered: s.metrics.answered_by_class(),
                    dropped: s.metrics.dropped_by_reason(),
                    pipelining_off: s.metrics.pipelining_off(),
                })
                .collect(),
            compare: None,
            compare_skipped: Default::default(),
            compare_drops: Vec::new(),
        };
        if let Some(c) = &self.dispatch.comparer {
            let verdicts = self.shared.verdicts.lock().expect("not poisoned");
            summary.compare = Some(verdicts.results.report(c.thresholds()));
            summary.compare_skipped = verdicts.skipped;
            summary.compare_drops = verdicts.replay_drops.iter().map(|(k, v)| (*k, *v)).collect();
        }
        summary
    }
}

/// The framing settings: responses are kept whole when they are compared.
fn http_config(settings: &MirrorSettings) -> HttpConfig {
    let keep = settings.http.response_bodies || settings.compare.is_some();
    HttpConfig { response_bodies: keep, ..settings.http.clone() }
}

/// What the flow table feeds: loop prevention on the way in, requests out to the stages
/// after framing.
pub(crate) struct Dispatch {
    own: OwnSockets,
    shadow_ports: HashSet<u16>,
    pub(crate) stages: Stages,
    shadows: Vec<Shadow>,
    comparer: Option<Comparer>,
    /// HTTP/2 streams whose copies are still being sent.
    streams: StreamCopies,
    captured_requests: u64,
    /// The worker's number, which its counters are synced into the metrics under.
    worker: usize,
}

impl FlowSink<HttpConnection> for Dispatch {
    fn admit(&mut self, seg: Segment) -> Option<Segment> {
        // Loop prevention: our own connections to a shadow behind a tapped interface (the
        // kernel already skips their marked packets in one direction).
        let own =
            self.shadow_ports.contains(&seg.server().port()) && self.own.contains(&seg.client());
        (!own).then_some(seg)
    }

    fn event(&mut self, event: HttpEvent) {
        match event {
            HttpEvent::Request(req) => {
                self.captured_requests += 1;
                let id = self.captured_requests;
                self.stages.mirror(id, &req, &mut self.shadows, self.comparer.as_mut());
            }
            HttpEvent::Response(resp) => {
                if let Some(c) = &mut self.comparer {
                    c.primary(&resp);
                }
            }
            HttpEvent::H2(e) => {
                let id = &mut self.captured_requests;
                let comparer = self.comparer.as_mut();
                self.streams.event(e, id, &mut self.stages, &mut self.shadows, comparer)
            }
        }
    }

    fn tick(&mut self, table: &FlowTable<HttpConnection>) {
        if let Some(c) = &mut self.comparer {
            c.expire(COMPARE_WAIT);
        }
        let metrics = &self.stages.metrics;
        metrics.sync(self.worker, Stage::Reassembly, &table.stats().fields());
        metrics.sync(self.worker, Stage::Http, &table.shared().stats.fields());
    }
}

/// How long a comparison waits for its answers (the shadows' own timeout is shorter).
const COMPARE_WAIT: Duration = Duration::from_secs(30);

/// The per-request stages after framing.
pub(crate) struct Stages {
    matcher: RequestMatcher,
    sampler: Sampler,
    rewriter: Rewriter,
    pub(crate) metrics: Arc<Metrics>,
    watch: Option<Publisher>,
    /// Body bytes of a primary's HTTP/2 answer kept for a comparison.
    max_compared_body: usize,
}

impl Stages {
    /// Mirrors request number `id` (counted from 1) to the shadows that sample it. The copy
    /// is written once, for the first shadow that samples it, and shared by the others.
    fn mirror(
        &mut self,
        id: u64,
        req: &HttpRequest,
        shadows: &mut [Shadow],
        comparer: Option<&mut Comparer>,
    ) {
        let (head, client) = (&req.head, req.conn.client.ip());
        if !self.matcher.matches(head) {
            self.metrics.not_matched.inc();
            return;
        }
        let watched = self.watch.as_ref().is_some_and(Publisher::watched);
        let mut sent_to: Vec<&str> = Vec::new();
        let mut copy = None;
        for shadow in shadows.iter_mut() {
            if !self.sampler.sample(shadow.percent, head) {
                shadow.metrics.not_sampled.inc();
                continue;
            }
            let copy = copy.get_or_insert_with(|| self.rewriter.copy(head, &req.body, client));
            if shadow.client.offer(id, copy.clone()).is_ok() {
                shadow.offered += 1;
                if watched {
                    sent_to.push(shadow.client.authority());
                }
            }
        }
        if let Some(c) = comparer.filter(|c| c.wants(req)) {
            if self.sampler.sample(c.percent(), head) {
                let copy = copy.get_or_insert_with(|| self.rewriter.copy(head, &req.body, client));
                c.offer(id, req, copy);
            }
        }
        if let (Some(watch), false) = (&self.watch, sent_to.is_empty()) {
            watch.mirrored(req, &sent_to);
        }
    }
}

impl Stages {
    /// Body bytes of a primary's answer kept for a comparison.
    pub(crate) fn max_compared_body(&self) -> usize {
        self.max_compared_body
    }

    /// Opens the copies of HTTP/2 stream number `id` (counted with the HTTP/1 requests): to
    /// the shadows that sample it, and to the candidate and the secondary when the
    /// comparison wants it and samples it. The copy's head is made once, for all of them.
    /// Returns the copies and whether the stream is compared.
    pub(crate) fn open_streams(
        &mut self,
        id: u64,
        e: &H2Event,
        fields: &H2Fields,
        end_stream: bool,
        shadows: &mut [Shadow],
        comparer: Option<&mut Comparer>,
    ) -> (Vec<StreamCopy>, bool) {
        if !self.matcher.matches(fields) {
            self.metrics.not_matched.inc();
            return (Vec::new(), false);
        }
        let client = e.conn.client.ip();
        let mut head = None;
        let mut copies = Vec::new();
        let mut sent_to: Vec<&str> = Vec::new();
        for shadow in shadows.iter_mut() {
            if !self.sampler.sample(shadow.percent, fields) {
                shadow.metrics.not_sampled.inc();
                continue;
            }
            let Some(head) = head.get_or_insert_with(|| self.rewriter.h2_head(fields, client))
            else {
                self.metrics.uncopyable.inc();
                return (Vec::new(), false);
            };
            if let Ok(copy) = shadow.client.open_stream(id, head.clone(), end_stream) {
                shadow.offered += 1;
                sent_to.push(shadow.client.authority());
                copies.push(copy);
            }
        }
        let mut compared = false;
        let comparer = comparer.filter(|c| c.wants_stream(fields));
        if let Some(c) = comparer.filter(|c| self.sampler.sample(c.percent(), fields)) {
            let head = head.get_or_insert_with(|| self.rewriter.h2_head(fields, client));
            if let Some(head) = head {
                let more = c.offer_stream(id, e, fields, head, end_stream);
                compared = !more.is_empty();
                copies.extend(more);
            }
        }
        if let (Some(watch), false) = (&self.watch, sent_to.is_empty()) {
            watch.mirrored_stream(e, fields, &sent_to);
        }
        (copies, compared)
    }
}

impl Summary {
    /// Adds another worker's summary. What the workers count apart (reassembly, framing,
    /// requests captured, copies offered) is summed; what comes from the shared metrics
    /// (not matched, not sampled, answers, drops) is the same in both.
    pub fn add_worker(&mut self, other: &Summary) {
        self.reassembly.add(&other.reassembly);
        self.http.add(&other.http);
        self.captured_requests += other.captured_requests;
        for (mine, theirs) in self.shadows.iter_mut().zip(&other.shadows) {
            mine.offered += theirs.offered;
            if mine.pipelining_off.is_none() {
                mine.pipelining_off.clone_from(&theirs.pipelining_off);
            }
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(kernel) = &self.kernel {
            writeln!(f, "captured: kernel {kernel}")?;
        }
        writeln!(
            f,
            "requests: {} captured, {} not matched",
            self.captured_requests, self.not_matched
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
            if let Some(why) = &s.pipelining_off {
                writeln!(f, "shadow {}: pipelining off ({why})", s.authority)?;
            }
        }
        let nonzero = |fields: &[(&'static str, u64)]| {
            fields
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(report) = &self.compare {
            let mut skipped = nonzero(&self.compare_skipped.fields());
            if !self.compare_drops.is_empty() {
                skipped.push_str(&format!(" ({})", nonzero(&self.compare_drops)));
            }
            write_verdict(f, report, &skipped)?;
        }
        writeln!(f, "reassembly: {}", nonzero(&self.reassembly.fields()))?;
        write!(f, "http: {}", nonzero(&self.http.fields()))
    }
}

/// The comparison's verdict: one line per endpoint, one per reported field or latency
/// regression under it.
fn write_verdict(
    f: &mut fmt::Formatter<'_>,
    report: &mirror_compare::Report,
    skipped: &str,
) -> fmt::Result {
    let compared: u64 = report.endpoints.iter().map(|e| e.compared).sum();
    let regressed = report.endpoints.iter().filter(|e| e.regressed());
    writeln!(
        f,
        "compare: {compared} compared over {} endpoints, {} with regressions; not compared: {}",
        report.endpoints.len(),
        regressed.clone().count(),
        if skipped.is_empty() { "none" } else { skipped }
    )?;
    for e in regressed {
        for r in &e.regressions {
            writeln!(
                f,
                "compare: {} {} {}: candidate {} noise {} of {}",
                e.endpoint,
                r.field,
                r.kind.name(),
                r.raw,
                r.noise,
                e.compared
            )?;
        }
        if e.latency.regression {
            let ms = |p: &mirror_compare::Percentiles| {
                p.p50_ms.map_or("-".into(), |v| format!("{v:.1}"))
            };
            let base = if e.latency.secondary.count > 0 {
                &e.latency.secondary
            } else {
                &e.latency.primary
            };
            writeln!(
                f,
                "compare: {} latency: candidate p50 {} ms, baseline {} ms",
                e.endpoint,
                ms(&e.latency.candidate),
                ms(base)
            )?;
        }
    }
    Ok(())
}

impl Summary {
    /// Whether the comparison reported a regression.
    pub fn has_regression(&self) -> bool {
        self.compare.as_ref().is_some_and(mirror_compare::Report::has_regression)
    }
}
