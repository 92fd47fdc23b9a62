//! Counts per endpoint and field, bounded, mergeable across agents, and the verdict drawn
//! from them with Diffy's rule.
//!
//! Diffy (`JoinedDifferences`) reports a field only if its raw differences outnumber its
//! noise, by more than 20 % of both together (relative) and by more than 0.03 % of the
//! endpoint's requests (absolute). Raw here is the candidate's count after per-request
//! cancellation ([`crate::Comparison::candidate`]), noise the primary-against-secondary
//! count of the same field and kind.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    diff::{FieldDiff, Kind},
    exchange::{Comparison, Problems},
    latency::{Histogram, Latencies},
    sample::Sample,
};

/// Thresholds of the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// |raw - noise| / (raw + noise), in percent, must exceed this.
    pub relative_pct: f64,
    /// |raw - noise| / compared requests, in percent, must exceed this.
    pub absolute_pct: f64,
    /// The candidate's median latency over the baseline's must exceed this ratio...
    pub latency_ratio: f64,
    /// ...and the difference this many milliseconds.
    pub latency_min_ms: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { relative_pct: 20.0, absolute_pct: 0.03, latency_ratio: 1.5, latency_min_ms: 10.0 }
    }
}

/// How much is kept: endpoints, fields per endpoint, samples per endpoint and the bytes of
/// all samples. What does not fit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub max_endpoints: usize,
    pub max_fields: usize,
    pub samples: usize,
    pub sample_bytes: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self { max_endpoints: 10_000, max_fields: 256, samples: 3, sample_bytes: 16 << 20 }
    }
}

/// A field's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldCounts {
    /// Requests on which the candidate differed here (after per-request cancellation).
    pub candidate: u64,
    /// Requests on which the primary and the secondary differed here.
    pub noise: u64,
    /// Requests on which only the primary differed (the secondary and the candidate agree).
    pub drift: u64,
}

impl FieldCounts {
    fn add(&mut self, o: &FieldCounts) {
        self.candidate += o.candidate;
        self.noise += o.noise;
        self.drift += o.drift;
    }
}

/// Everything counted for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// Requests offered for comparison.
    pub requests: u64,
    /// Requests whose answers were all there to compare.
    pub compared: u64,
    /// Compared requests on which the candidate differed in some field.
    pub differing: u64,
    #[serde(with = "field_list")]
    pub fields: BTreeMap<FieldDiff, FieldCounts>,
    /// Differences in fields beyond the cap, not tracked one by one.
    pub untracked_fields: u64,
    pub latency: Latencies,
    pub problems: Problems,
    /// A few differing requests with their answers ([`crate::sample`]).
    #[serde(default)]
    pub samples: Vec<Sample>,
}

impl EndpointStats {
    fn count(&mut self, diffs: &[FieldDiff], max: usize, which: fn(&mut FieldCounts) -> &mut u64) {
        for d in diffs {
            if let Some(c) = self.fields.get_mut(d) {
                *which(c) += 1;
            } else if self.fields.len() < max {
                *which(self.fields.entry(d.clone()).or_default()) += 1;
            } else {
                self.untracked_fields += 1;
            }
        }
    }

    fn merge(&mut self, o: &EndpointStats) {
        self.requests += o.requests;
        self.compared += o.compared;
        self.differing += o.differing;
        for (k, c) in &o.fields {
            self.fields.entry(k.clone()).or_default().add(c);
        }
        self.untracked_fields += o.untracked_fields;
        self.latency.merge(&o.latency);
        self.problems.add(&o.problems);
    }
}

/// The results of comparing: per endpoint, bounded by [`Caps`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub endpoints: BTreeMap<String, EndpointStats>,
    /// Requests of endpoints beyond the cap.
    pub untracked_requests: u64,
    /// Samples not kept because all samples together reached their byte cap.
    #[serde(default)]
    pub samples_dropped: u64,
    #[serde(skip)]
    caps: Caps,
    /// Bytes of every endpoint's samples.
    #[serde(skip)]
    sample_bytes: usize,
}

impl Results {
    pub fn new(caps: Caps) -> Self {
        Self { caps, ..Self::default() }
    }

    /// The caps new endpoints and fields are held to (results loaded from a store are kept
    /// whole).
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
        self.sample_bytes =
            self.endpoints.values().flat_map(|e| &e.samples).map(Sample::size).sum();
    }

    /// Offers a sample of the differing request of `endpoint` just recorded; `random` is
    /// uniform in [0, 1). `make` is called only if the sample is kept (reservoir sampling
    /// over the endpoint's differing requests, within the byte cap).
    pub fn offer_sample(&mut self, endpoint: &str, random: f64, make: impl FnOnce() -> Sample) {
        let n = self.caps.samples;
        let Some(e) = self.endpoints.get_mut(endpoint) else { return };
        let slot = if e.samples.len() < n {
            e.samples.len()
        } else {
            match (random * e.differing as f64) as usize {
                j if j < n => j,
                _ => return,
            }
        };
        let sample = make();
        let (old, new) = (e.samples.get(slot).map_or(0, Sample::size), sample.size());
        if self.sample_bytes - old + new > self.caps.sample_bytes {
            self.samples_dropped += 1;
            return;
        }
        self.sample_bytes = self.sample_bytes - old + new;
        match e.samples.get_mut(slot) {
            Some(kept) => *kept = sample,
            None => e.samples.push(sample),
        }
    }

    fn endpoint(&mut self, name: &str) -> Option<&mut EndpointStats> {
        if !self.endpoints.contains_key(name) {
            if self.endpoints.len() >= self.caps.max_endpoints {
                self.untracked_requests += 1;
                return None;
            }
            self.endpoints.insert(name.to_string(), EndpointStats::default());
        }
        self.endpoints.get_mut(name)
    }

    /// A request of `endpoint` was offered for comparison.
    pub fn offered(&mut self, endpoint: &str) {
        if let Some(e) = self.endpoint(endpoint) {
            e.requests += 1;
        }
    }

    /// Counts one comparison of a request of `endpoint`.
    pub fn record(&mut self, endpoint: &str, c: &Comparison) {
        let max = self.caps.max_fields;
        let Some(e) = self.endpoint(endpoint) else { return };
        e.compared += 1;
        e.differing += u64::from(!c.candidate.is_empty());
        e.count(&c.candidate, max, |f| &mut f.candidate);
        e.count(&c.noise, max, |f| &mut f.noise);
        e.count(&c.drift, max, |f| &mut f.drift);
        e.problems.add(&c.problems);
        let [p, s, cand] = c.latency;
        for (h, ns) in [
            (&mut e.latency.primary, p),
            (&mut e.latency.secondary, s),
            (&mut e.latency.candidate, cand),
        ] {
            if let Some(ns) = ns {
                h.record(ns);
            }
        }
    }

    /// Adds another agent's results: every count adds, so merged results are those of one
    /// agent that saw all the traffic (caps are not applied to what is merged).
    pub fn merge(&mut self, other: &Results) {
        for (name, stats) in &other.endpoints {
            let mine = self.endpoints.entry(name.clone()).or_default();
            mine.merge(stats);
            // Samples are unioned up to the per-endpoint cap (at least the default's).
            let room = self.caps.samples.max(Caps::default().samples);
            for s in &stats.samples {
                if mine.samples.len() < room {
                    self.sample_bytes += s.size();
                    mine.samples.push(s.clone());
                }
            }
        }
        self.untracked_requests += other.untracked_requests;
        self.samples_dropped += other.samples_dropped;
    }

    /// Forgets the counts of fields `rules` now leave out (set at run time: the report
    /// stops showing them at once).
    pub fn forget_ignored(&mut self, rules: &crate::IgnoreRules) {
        for e in self.endpoints.values_mut() {
            e.fields.retain(|d, _| {
                let header =
                    d.field.strip_prefix("header/").is_some_and(|h| rules.ignores_header(h));
                !header && !rules.ignores_field(&d.field)
            });
        }
    }

    pub fn clear(&mut self) {
        self.endpoints.clear();
        self.untracked_requests = 0;
        self.samples_dropped = 0;
        self.sample_bytes = 0;
    }

    /// The verdict, endpoint by endpoint (in name order).
    pub fn report(&self, t: &Thresholds) -> Report {
        let endpoints =
            self.endpoints.iter().map(|(name, e)| endpoint_report(name, e, t)).collect();
        Report { endpoints, untracked_requests: self.untracked_requests }
    }
}

fn endpoint_report(name: &str, e: &EndpointStats, t: &Thresholds) -> EndpointReport {
    let field = |(d, c): (&FieldDiff, &FieldCounts), raw: u64| FieldReport {
        field: d.field.clone(),
        kind: d.kind,
        raw,
        noise: c.noise,
        relative_pct: relative(raw, c.noise),
        absolute_pct: absolute(raw, c.noise, e.compared),
    };
    let reported = |f: &FieldReport| {
        f.raw > f.noise && f.relative_pct > t.relative_pct && f.absolute_pct > t.absolute_pct
    };
    let mut regressions: Vec<FieldReport> =
        e.fields.iter().map(|fc| field(fc, fc.1.candidate)).filter(reported).collect();
    let mut drift: Vec<FieldReport> =
        e.fields.iter().map(|fc| field(fc, fc.1.drift)).filter(reported).collect();
    regressions.sort_by_key(|f| std::cmp::Reverse(f.raw));
    drift.sort_by_key(|f| std::cmp::Reverse(f.raw));
    let regression = e.latency.regression(t.latency_ratio, t.latency_min_ms).is_some();
    EndpointReport {
        endpoint: name.to_string(),
        requests: e.requests,
        compared: e.compared,
        differing: e.differing,
        regressions,
        drift,
        latency: LatencyReport {
            primary: Percentiles::of(&e.latency.primary),
            secondary: Percentiles::of(&e.latency.secondary),
            candidate: Percentiles::of(&e.latency.candidate),
            regression,
        },
        problems: e.problems,
        untracked_fields: e.untracked_fields,
    }
}

fn relative(raw: u64, noise: u64) -> f64 {
    100.0 * raw.abs_diff(noise) as f64 / (raw + noise).max(1) as f64
}

fn absolute(raw: u64, noise: u64, total: u64) -> f64 {
    100.0 * raw.abs_diff(noise) as f64 / total.max(1) as f64
}

/// The verdict: the document `mirror diff report --json` prints (its schema is documented in
/// the README; fields are only ever added).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub endpoints: Vec<EndpointReport>,
    pub untracked_requests: u64,
}

impl Report {
    /// Whether any endpoint has a reported field or a latency regression.
    pub fn has_regression(&self) -> bool {
        self.endpoints.iter().any(EndpointReport::regressed)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub endpoint: String,
    pub requests: u64,
    pub compared: u64,
    pub differing: u64,
    /// Fields where the candidate differs beyond the noise, most often first.
    pub regressions: Vec<FieldReport>,
    /// Fields where only the primary differs (changed since the capture), beyond the noise.
    pub drift: Vec<FieldReport>,
    pub latency: LatencyReport,
    pub problems: Problems,
    pub untracked_fields: u64,
}

impl EndpointReport {
    /// Whether the endpoint has a reported field or a latency regression.
    pub fn regressed(&self) -> bool {
        !self.regressions.is_empty() || self.latency.regression
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldReport {
    pub field: String,
    pub kind: Kind,
    pub raw: u64,
    pub noise: u64,
    pub relative_pct: f64,
    pub absolute_pct: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub primary: Percentiles,
    pub secondary: Percentiles,
    pub candidate: Percentiles,
    /// The candidate's median beyond the thresholds' ratio and margin.
    pub regression: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    fn of(h: &Histogram) -> Self {
        Self {
            count: h.count(),
            p50_ms: h.quantile_ms(0.5),
            p90_ms: h.quantile_ms(0.9),
            p99_ms: h.quantile_ms(0.99),
        }
    }
}

/// A map keyed by (field, kind) as a JSON list: JSON object keys are strings only.
mod field_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{FieldCounts, FieldDiff};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        #[serde(flatten)]
        diff: FieldDiff,
        #[serde(flatten)]
        counts: FieldCounts,
    }

    pub(super) fn serialize<S: Serializer>(
        map: &BTreeMap<FieldDiff, FieldCounts>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Entry> =
            map.iter().map(|(d, c)| Entry { diff: d.clone(), counts: *c }).collect();
        list.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<FieldDiff, FieldCounts>, D::Error> {
        let list = Vec::<Entry>::deserialize(d)?;
        Ok(list.into_iter().map(|e| (e.diff, e.counts)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(field: &str, kind: Kind) -> FieldDiff {
        FieldDiff { field: field.into(), kind }
    }

    fn comparison(candidate: &[FieldDiff], noise: &[FieldDiff]) -> Comparison {
        Comparison {
            candidate: candidate.to_vec(),
            noise: noise.to_vec(),
            latency: [Some(1_000_000), Some(1_000_000), Some(1_000_000)],
            ..Comparison::default()
        }
    }

    #[test]
    fn diffys_rule_reports_only_what_noise_does_not_explain() {
        let mut r = Results::new(Caps::default());
        let changed = d("body/t", Kind::Type);
        let flaky = d("body/x", Kind::Primitive);
        for i in 0..1000 {
            r.offered("GET /a");
            let cand: Vec<FieldDiff> =
                [changed.clone()].into_iter().chain((i % 2 == 0).then(|| flaky.clone())).collect();
            let noise: Vec<FieldDiff> = (i % 3 != 0).then(|| flaky.clone()).into_iter().collect();
            r.record("GET /a", &comparison(&cand, &noise));
        }
        let report = r.report(&Thresholds::default());
        let e = &report.endpoints[0];
        assert_eq!((e.requests, e.compared, e.differing), (1000, 1000, 1000));
        assert_eq!(e.regressions.len(), 1, "{:?}", e.regressions);
        assert_eq!((e.regressions[0].field.as_str(), e.regressions[0].raw), ("body/t", 1000));
        assert!(report.has_regression());
        assert!(!Results::new(Caps::default()).report(&Thresholds::default()).has_regression());
    }

    #[test]
    fn merged_results_equal_one_agents() {
        let one_diff = [d("status", Kind::Primitive)];
        let mut whole = Results::new(Caps::default());
        let (mut a, mut b) = (Results::new(Caps::default()), Results::new(Caps::default()));
        for i in 0..50 {
            let ep = format!("GET /e{}", i % 7);
            let c = comparison(if i % 4 == 0 { &one_diff } else { &[] }, &[]);
            for r in [&mut whole, if i % 2 == 0 { &mut a } else { &mut b }] {
                r.offered(&ep);
                r.record(&ep, &c);
            }
        }
        a.merge(&b);
        assert_eq!(a.report(&Thresholds::default()), whole.report(&Thresholds::default()));
        let json = serde_json::to_string(&a).unwrap();
        let back: Results = serde_json::from_str(&json).unwrap();
        assert_eq!(back.endpoints, a.endpoints);
    }

    fn sample(body: &str) -> Sample {
        let answer = crate::sample::SampleAnswer {
            status: 200,
            headers: vec![],
            body: body.into(),
            truncated: false,
            latency_ms: None,
        };
        Sample {
            request: "GET / HTTP/1.1\r\n\r\n".into(),
            primary: answer.clone(),
            secondary: None,
            candidate: answer,
            fields: vec![d("status", Kind::Primitive)],
        }
    }

    #[test]
    fn samples_are_a_bounded_reservoir() {
        let caps = Caps { samples: 2, sample_bytes: 200, ..Caps::default() };
        let mut r = Results::new(caps);
        let diff = [d("status", Kind::Primitive)];
        let mut made = 0;
        for i in 0..100 {
            r.offered("GET /a");
            r.record("GET /a", &comparison(&diff, &[]));
            r.offer_sample("GET /a", (i % 10) as f64 / 10.0, || {
                made += 1;
                sample(&format!("{i}"))
            });
        }
        let kept = &r.endpoints["GET /a"].samples;
        assert_eq!(kept.len(), 2);
        assert!(made < 20, "replacements get rarer: {made}");
        assert_eq!(r.samples_dropped, 0);
        r.offered("GET /b");
        r.record("GET /b", &comparison(&diff, &[]));
        r.offer_sample("GET /b", 0.0, || sample(&"x".repeat(150)));
        assert!(r.endpoints["GET /b"].samples.is_empty(), "over the byte cap");
        assert_eq!(r.samples_dropped, 1);
    }

    /// 20 000 distinct endpoints, each with a field and a sample: what is kept stays within
    /// the caps (10 000 endpoints, the sample bytes), what is not is counted.
    #[test]
    fn memory_is_bounded_with_many_endpoints() {
        let caps = Caps { sample_bytes: 1 << 20, ..Caps::default() };
        let mut r = Results::new(caps);
        let diff = [d("body/x", Kind::Primitive)];
        for i in 0..20_000 {
            let ep = format!("GET /e{i}");
            r.offered(&ep);
            r.record(&ep, &comparison(&diff, &diff));
            r.offer_sample(&ep, 0.0, || sample(&"b".repeat(200)));
        }
        assert_eq!(r.endpoints.len(), 10_000);
        assert_eq!(r.untracked_requests, 20_000, "offered and recorded beyond the cap");
        let kept: usize = r.endpoints.values().flat_map(|e| &e.samples).map(Sample::size).sum();
        assert!(kept <= 1 << 20, "{kept}");
        assert!(r.samples_dropped > 0);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(json.len() < 8 << 20, "{} bytes", json.len());
    }

    #[test]
    fn endpoints_and_fields_are_capped_and_the_rest_counted() {
        let mut r = Results::new(Caps { max_endpoints: 2, max_fields: 1, ..Caps::default() });
        let two = [d("a", Kind::Missing), d("b", Kind::Extra)];
        for ep in ["GET /1", "GET /2", "GET /3"] {
            r.offered(ep);
            r.record(ep, &comparison(&two, &[]));
        }
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.untracked_requests, 2, "offered and recorded");
        assert_eq!(r.endpoints["GET /1"].fields.len(), 1);
        assert_eq!(r.endpoints["GET /1"].untracked_fields, 1);
    }
}
