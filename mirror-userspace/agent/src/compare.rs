//! The comparison in a run: a compared copy goes to the candidate and the secondary at the
//! same moment; their answers and the primary's, captured off the wire, meet here by the
//! copy's number and go through `mirror-compare` into results all workers share.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use mirror_compare::{
    compare, Answer, Caps, CompareRules, EndpointNamer, Results, Sample, SampleAnswer, Thresholds,
};
use mirror_flow::ConnId;
use mirror_http::{H2Event, H2Fields, Head, HttpRequest, HttpResponse, RequestView};
use mirror_shadow::{self as shadow, CopyInfo, DropReason, ResultSink, ShadowRequest, StreamCopy};

use crate::pipeline::ShadowTarget;

/// The methods compared unless side effects are allowed: those a server must not act on.
pub const SAFE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];

/// How requests are compared.
#[derive(Clone, Debug)]
pub struct CompareSettings {
    pub candidate: ShadowTarget,
    /// A second instance of the primary's version: its differences from the primary are
    /// noise.
    pub secondary: Option<ShadowTarget>,
    /// Share of the matched requests of the compared methods, 0..=100.
    pub percent: f64,
    /// Methods compared, upper case ([`SAFE_METHODS`] unless side effects are allowed).
    pub methods: Vec<String>,
    pub endpoints: EndpointNamer,
    pub rules: CompareRules,
    pub thresholds: Thresholds,
    pub caps: Caps,
    /// Compared requests waiting for their answers, per worker; beyond, a request is not
    /// compared (counted).
    pub max_pending: usize,
    /// Response bodies kept for the comparison, each (a longer one is compared by length).
    pub max_body: usize,
    /// Where the results are saved (every [`SAVE_EVERY`] and at the end) and loaded from
    /// at the start.
    pub store: Option<mirror_compare::Store>,
}

/// How often a live agent saves its results to the store.
pub const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

mirror_common::counter_set! {
    /// Requests that were to be compared and were not, by reason.
    pub struct CompareSkips {
        /// Too many comparisons waiting for answers.
        pending_full,
        /// The candidate or the secondary did not answer (dropped, timed out: the reasons
        /// are in [`Verdicts::replay_drops`]).
        replay_failed,
        /// The primary's answer was not captured in time.
        primary_missing,
        /// The copy could not be queued to the candidate or the secondary.
        not_queued,
        /// An HTTP/2 stream reset before its answers were complete.
        stream_reset,
    }
}

/// The request id of HTTP/2 stream `stream` in the comparison's keys: apart from HTTP/1
/// requests' numbers on the same connection.
pub(crate) fn stream_request_id(stream: u32) -> u64 {
    1 << 63 | u64::from(stream)
}

/// A stream's fields as lines, for a sample.
fn field_lines(fields: &H2Fields) -> String {
    let mut out = String::new();
    for (name, value) in fields.iter() {
        out.push_str(&String::from_utf8_lossy(name));
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(value));
        out.push_str("\r\n");
    }
    out
}

/// What every worker's comparisons add to.
#[derive(Debug, Default)]
pub struct Verdicts {
    pub results: Results,
    /// Ignore rules added at run time (the API), on top of the configured ones; saved with
    /// the results.
    pub added_ignore: mirror_compare::IgnoreSpec,
    pub skipped: CompareSkips,
    /// Copies the candidate or the secondary did not answer, by drop reason.
    pub replay_drops: std::collections::BTreeMap<&'static str, u64>,
}

pub type SharedVerdicts = Arc<Mutex<Verdicts>>;

/// The rules of every worker's comparisons, which the API may change at run time (read once
/// per comparison; written only when a rule is added).
pub type SharedRules = Arc<std::sync::RwLock<CompareRules>>;

/// An answer owned until the comparison.
struct Owned {
    head: Head,
    body: Bytes,
    latency_ns: Option<u64>,
}

impl Owned {
    fn answer(&self) -> Answer<'_> {
        Answer { head: &self.head, body: &self.body, latency_ns: self.latency_ns }
    }
}

struct Pending {
    endpoint: String,
    /// The request's head as captured, for a sample.
    request: Bytes,
    key: (ConnId, u64),
    started: Instant,
    /// The request's last byte on the wire, for the primary's latency.
    request_ts_ns: u64,
    answers: [Option<Owned>; 3],
}

const PRIMARY: usize = 0;
const SECONDARY: usize = 1;
const CANDIDATE: usize = 2;

/// One worker's comparisons in waiting.
struct Joiner {
    pending: HashMap<u64, Pending>,
    by_request: HashMap<(ConnId, u64), u64>,
    with_secondary: bool,
    rules: SharedRules,
    verdicts: SharedVerdicts,
}

impl Joiner {
    fn answer(&mut self, copy: u64, side: usize, owned: Owned) {
        let Some(p) = self.pending.get_mut(&copy) else { return };
        p.answers[side] = Some(owned);
        let [pr, se, ca] = &p.answers;
        if pr.is_some() && ca.is_some() && (se.is_some() || !self.with_secondary) {
            let p = self.remove(copy).expect("present");
            self.compare(p);
        }
    }

    fn compare(&self, p: Pending) {
        let [Some(primary), secondary, Some(candidate)] = &p.answers else { return };
        let (primary, candidate) = (primary.answer(), candidate.answer());
        let secondary = secondary.as_ref().map(Owned::answer);
        let rules = self.rules.read().expect("not poisoned");
        let found = compare(&primary, secondary.as_ref(), &candidate, &rules);
        let mut verdicts = self.verdicts.lock().expect("not poisoned");
        verdicts.results.record(&p.endpoint, &found);
        if !found.candidate.is_empty() {
            let max = rules.max_decoded_body;
            verdicts.results.offer_sample(&p.endpoint, fastrand::f64(), || Sample {
                request: String::from_utf8_lossy(&p.request).into_owned(),
                primary: SampleAnswer::of(&primary, max),
                secondary: secondary.as_ref().map(|s| SampleAnswer::of(s, max)),
                candidate: SampleAnswer::of(&candidate, max),
                fields: found.candidate.clone(),
            });
        }
    }

    fn remove(&mut self, copy: u64) -> Option<Pending> {
        let p = self.pending.remove(&copy)?;
        self.by_request.remove(&p.key);
        Some(p)
    }

    fn skip(&mut self, copy: u64, why: fn(&mut CompareSkips) -> &mut u64) {
        if self.remove(copy).is_some() {
            *why(&mut self.verdicts.lock().expect("not poisoned").skipped) += 1;
        }
    }
}

/// Tells the joiner what the candidate or the secondary answered.
struct JoinSink {
    joiner: Arc<Mutex<Joiner>>,
    side: usize,
}

impl ResultSink for JoinSink {
    fn answered(&self, _shadow: &str, copy: &CopyInfo, answer: &shadow::Answer) {
        let mut joiner = self.joiner.lock().expect("not poisoned");
        match &answer.response {
            Some(r) => {
                let latency_ns = Some(answer.elapsed.as_nanos() as u64);
                let owned = Owned { head: r.head.clone(), body: r.body.clone(), latency_ns };
                joiner.answer(copy.id, self.side, owned);
            }
            None => joiner.skip(copy.id, |s| &mut s.replay_failed),
        }
    }

    fn dropped(&self, _: &str, copy: &CopyInfo, reason: DropReason, _: &dyn std::fmt::Display) {
        let mut joiner = self.joiner.lock().expect("not poisoned");
        if joiner.pending.contains_key(&copy.id) {
            *joiner
                .verdicts
                .lock()
                .expect("not poisoned")
                .replay_drops
                .entry(reason.name())
                .or_default() += 1;
        }
        joiner.skip(copy.id, |s| &mut s.replay_failed);
    }
}

/// A worker's comparison: the candidate's and the secondary's clients and the joiner.
pub(crate) struct Comparer {
    settings: CompareSettings,
    candidate: shadow::ShadowClient,
    secondary: Option<shadow::ShadowClient>,
    joiner: Arc<Mutex<Joiner>>,
    verdicts: SharedVerdicts,
}

impl Comparer {
    /// Starts the clients (within the worker's runtime); `start` makes one for a target.
    pub(crate) fn new(
        settings: CompareSettings,
        verdicts: SharedVerdicts,
        rules: SharedRules,
        start: impl Fn(&ShadowTarget, Arc<dyn ResultSink>, usize) -> shadow::ShadowClient,
    ) -> Comparer {
        {
            let mut v = verdicts.lock().expect("not poisoned");
            v.results.set_caps(settings.caps);
            // The configured rules and those added at run time (checked when added).
            let ignore = settings.rules.ignore.with(&v.added_ignore);
            let ignore = ignore.unwrap_or_else(|_| settings.rules.ignore.clone());
            *rules.write().expect("not poisoned") =
                CompareRules { ignore, ..settings.rules.clone() };
        }
        let joiner = Arc::new(Mutex::new(Joiner {
            pending: HashMap::new(),
            by_request: HashMap::new(),
            with_secondary: settings.secondary.is_some(),
            rules,
            verdicts: verdicts.clone(),
        }));
        let sink =
            |side| -> Arc<dyn ResultSink> { Arc::new(JoinSink { joiner: joiner.clone(), side }) };
        let candidate = start(&settings.candidate, sink(CANDIDATE), settings.max_body);
        let secondary =
            settings.secondary.as_ref().map(|t| start(t, sink(SECONDARY), settings.max_body));
        Comparer { settings, candidate, secondary, joiner, verdicts }
    }

    /// Whether a matched request of this method is compared.
    pub(crate) fn wants(&self, req: &HttpRequest) -> bool {
        let method = req.head.method().unwrap_or("");
        self.settings.methods.iter().any(|m| m == method)
    }

    pub(crate) fn thresholds(&self) -> &Thresholds {
        &self.settings.thresholds
    }

    pub(crate) fn percent(&self) -> f64 {
        self.settings.percent
    }

    /// Sends copy `id` of `req` to the candidate and the secondary, and waits for the
    /// three answers.
    pub(crate) fn offer(&mut self, id: u64, req: &HttpRequest, copy: &ShadowRequest) {
        let endpoint = self
            .settings
            .endpoints
            .name(req.head.method().unwrap_or(""), req.head.target().unwrap_or("/"));
        self.verdicts.lock().expect("not poisoned").results.offered(&endpoint);
        let mut joiner = self.joiner.lock().expect("not poisoned");
        if joiner.pending.len() >= self.settings.max_pending {
            drop(joiner);
            self.verdicts.lock().expect("not poisoned").skipped.pending_full += 1;
            return;
        }
        let key = (req.conn, req.id);
        let started = Instant::now();
        let pending = Pending {
            endpoint,
            request: req.head.bytes().clone(),
            key,
            started,
            request_ts_ns: req.last_ts_ns,
            answers: [None, None, None],
        };
        joiner.pending.insert(id, pending);
        joiner.by_request.insert(key, id);
        drop(joiner);
        let queued = self.candidate.offer(id, copy.clone()).is_ok()
            && self.secondary.as_ref().is_none_or(|s| s.offer(id, copy.clone()).is_ok());
        if !queued {
            self.joiner.lock().expect("not poisoned").skip(id, |s| &mut s.not_queued);
        }
    }

    /// Whether a matched HTTP/2 stream of this method is compared.
    pub(crate) fn wants_stream(&self, fields: &H2Fields) -> bool {
        self.settings.methods.iter().any(|m| m == fields.method())
    }

    /// Opens copy `id` of HTTP/2 stream `e` (its request `fields`, rewritten as `head`) to
    /// the candidate and the secondary: the copies the stream's DATA feeds. Their answers
    /// and the primary's (given to [`Comparer::primary`] with request id
    /// [`stream_request_id`]) are compared.
    pub(crate) fn offer_stream(
        &mut self,
        id: u64,
        e: &H2Event,
        fields: &H2Fields,
        head: &http::request::Parts,
        end_stream: bool,
    ) -> Vec<StreamCopy> {
        let endpoint = self.settings.endpoints.name(fields.method(), fields.target());
        self.verdicts.lock().expect("not poisoned").results.offered(&endpoint);
        let mut joiner = self.joiner.lock().expect("not poisoned");
        if joiner.pending.len() >= self.settings.max_pending {
            drop(joiner);
            self.verdicts.lock().expect("not poisoned").skipped.pending_full += 1;
            return Vec::new();
        }
        let key = (e.conn, stream_request_id(e.stream));
        let request =
            format!("{} {} HTTP/2\r\n{}", fields.method(), fields.target(), field_lines(fields));
        let pending = Pending {
            endpoint,
            request: Bytes::from(request),
            key,
            started: Instant::now(),
            request_ts_ns: e.ts_ns,
            answers: [None, None, None],
        };
        joiner.pending.insert(id, pending);
        joiner.by_request.insert(key, id);
        drop(joiner);
        let clients = std::iter::once(&self.candidate).chain(self.secondary.as_ref());
        let copies: Vec<StreamCopy> =
            clients.filter_map(|c| c.open_stream(id, head.clone(), end_stream).ok()).collect();
        if copies.len() < 1 + usize::from(self.secondary.is_some()) {
            self.joiner.lock().expect("not poisoned").skip(id, |s| &mut s.not_queued);
        }
        copies
    }

    /// The captured request of compared stream `stream` ended at `ts_ns`: the waiting for
    /// its answers (and the primary's latency) count from here, as for an HTTP/1 request.
    pub(crate) fn stream_request_ended(&mut self, conn: ConnId, stream: u32, ts_ns: u64) {
        let mut joiner = self.joiner.lock().expect("not poisoned");
        let Some(&copy) = joiner.by_request.get(&(conn, stream_request_id(stream))) else {
            return;
        };
        if let Some(p) = joiner.pending.get_mut(&copy) {
            p.started = Instant::now();
            p.request_ts_ns = ts_ns;
        }
    }

    /// Compared stream `stream` was reset: its answers will not all come.
    pub(crate) fn stream_reset(&mut self, conn: ConnId, stream: u32) {
        let mut joiner = self.joiner.lock().expect("not poisoned");
        if let Some(&copy) = joiner.by_request.get(&(conn, stream_request_id(stream))) {
            joiner.skip(copy, |s| &mut s.stream_reset);
        }
    }

    /// The primary's answer, captured.
    pub(crate) fn primary(&mut self, resp: &HttpResponse) {
        let Some(request_id) = resp.request_id else { return };
        let mut joiner = self.joiner.lock().expect("not poisoned");
        let Some(&copy) = joiner.by_request.get(&(resp.conn, request_id)) else { return };
        let request_ts = joiner.pending.get(&copy).map_or(0, |p| p.request_ts_ns);
        let latency_ns = resp.last_ts_ns.checked_sub(request_ts);
        let owned = Owned { head: resp.head.clone(), body: resp.body.clone(), latency_ns };
        joiner.answer(copy, PRIMARY, owned);
    }

    /// Gives up on comparisons waiting longer than `timeout`: the answers that are missing
    /// will not come.
    pub(crate) fn expire(&mut self, timeout: Duration) {
        let mut joiner = self.joiner.lock().expect("not poisoned");
        let stale: Vec<(u64, bool)> = joiner
            .pending
            .iter()
            .filter(|(_, p)| p.started.elapsed() > timeout)
            .map(|(id, p)| (*id, p.answers[PRIMARY].is_none()))
            .collect();
        for (id, no_primary) in stale {
            if no_primary {
                joiner.skip(id, |s| &mut s.primary_missing);
            } else {
                joiner.skip(id, |s| &mut s.replay_failed);
            }
        }
    }
}
