//! One comparison: the primary's answer (captured), the secondary's and the candidate's
//! (replayed at the same moment), each decoded once and compared pairwise.
use bytes::Bytes;
use mirror_http::Head;
use serde::{Deserialize, Serialize};

use crate::{
    body::{self, Body, BodyError, Decoded},
    diff::{self, FieldDiff, Kind},
    ignore::IgnoreRules,
};

/// One answer to a compared request.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub head: &'a Head,
    /// The body as received (transfer coding included).
    pub body: &'a Bytes,
    /// From the request to the answer's first byte.
    pub latency_ns: Option<u64>,
}

/// Settings of a single comparison.
#[derive(Clone, Debug)]
pub struct CompareRules {
    pub ignore: IgnoreRules,
    /// Decoded bodies larger than this are compared by length and hash (and counted).
    pub max_decoded_body: usize,
}

impl Default for CompareRules {
    fn default() -> Self {
        Self { ignore: IgnoreRules::default(), max_decoded_body: 4 << 20 }
    }
}

/// Bodies that could not be compared as their type says, across the answers of one
/// comparison (each counted once per answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problems {
    pub invalid_json: u64,
    pub body_too_large: u64,
    pub bad_coding: u64,
}

impl Problems {
    pub fn add(&mut self, other: &Problems) {
        self.invalid_json += other.invalid_json;
        self.body_too_large += other.body_too_large;
        self.bad_coding += other.bad_coding;
    }

    fn count(&mut self, d: &Decoded, invalid_json: bool) {
        self.invalid_json += u64::from(invalid_json);
        match d.error {
            Some(BodyError::TooLarge) => self.body_too_large += 1,
            Some(_) => self.bad_coding += 1,
            None => {}
        }
    }
}

/// What one comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The candidate's differences: against the secondary (both answered now), less those
    /// the primary and the secondary showed in the same field and the same way on this very
    /// request; without a secondary, against the primary.
    pub candidate: Vec<FieldDiff>,
    /// Primary against secondary: two answers of the version in production.
    pub noise: Vec<FieldDiff>,
    /// Against the primary only (the secondary and the candidate agree): what changed since
    /// the capture, not in the candidate.
    pub drift: Vec<FieldDiff>,
    pub problems: Problems,
    pub latency: [Option<u64>; 3],
}

/// An answer ready to diff: its status, its headers (lower-case names, sorted, the ignored
/// ones left out), its body typed (borrowing the decoded bytes `'d`).
struct Prepared<'a, 'd> {
    status: u16,
    headers: Vec<(String, &'a [u8])>,
    body: Body<'d>,
}

impl<'a, 'd> Prepared<'a, 'd> {
    fn new(
        a: &Answer<'a>,
        decoded: &'d Decoded,
        rules: &CompareRules,
        problems: &mut Problems,
    ) -> Self {
        let (body, invalid_json) = decoded.body();
        problems.count(decoded, invalid_json);
        let mut headers: Vec<(String, &[u8])> = a
            .head
            .headers()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .filter(|(n, _)| !rules.ignore.ignores_header(n))
            .collect();
        headers.sort();
        Prepared { status: a.head.status().unwrap_or(0), headers, body }
    }

    /// The differences from `self` to `other`.
    fn diff(&self, other: &Prepared<'_, '_>, rules: &CompareRules) -> Vec<FieldDiff> {
        let mut out = Vec::new();
        if self.status != other.status && !rules.ignore.ignores_field("status") {
            out.push(FieldDiff { field: "status".into(), kind: Kind::Primitive });
        }
        headers(&self.headers, &other.headers, rules, &mut out);
        diff::bodies(&self.body, &other.body, &rules.ignore, &mut out);
        out
    }
}

/// Header fields by name; a repeated field is compared as its values in order. Both lists
/// are sorted by name, so one merge-like walk visits every name once.
fn headers(
    a: &[(String, &[u8])],
    b: &[(String, &[u8])],
    rules: &CompareRules,
    out: &mut Vec<FieldDiff>,
) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let name = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.as_str().min(y.0.as_str()),
            (Some(x), None) => x.0.as_str(),
            (None, Some(y)) => y.0.as_str(),
            (None, None) => break,
        };
        let x = run(a, &mut i, name);
        let y = run(b, &mut j, name);
        let kind = match (x.is_empty(), y.is_empty()) {
            (false, true) => Kind::Missing,
            (true, false) => Kind::Extra,
            _ if x.iter().map(|v| v.1.trim_ascii()).eq(y.iter().map(|v| v.1.trim_ascii())) => {
                continue
            }
            _ if x.len() == 1 && y.len() == 1 && ignored_value(rules, x[0].1, y[0].1) => continue,
            _ => Kind::Primitive,
        };
        let field = format!("header/{name}");
        if !rules.ignore.ignores_field(&field) {
            out.push(FieldDiff { field, kind });
        }
    }
}

/// The fields named `name` starting at `*i` (the list is sorted); advances `*i` past them.
fn run<'h, 'v>(h: &'h [(String, &'v [u8])], i: &mut usize, name: &str) -> &'h [(String, &'v [u8])] {
    let start = *i;
    while h.get(*i).is_some_and(|(n, _)| n == name) {
        *i += 1;
    }
    &h[start..*i]
}

fn ignored_value(rules: &CompareRules, a: &[u8], b: &[u8]) -> bool {
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(a), Ok(b)) => rules.ignore.ignores_value(a, b),
        _ => false,
    }
}

/// Compares the answers to one request.
pub fn compare(
    primary: &Answer<'_>,
    secondary: Option<&Answer<'_>>,
    candidate: &Answer<'_>,
    rules: &CompareRules,
) -> Comparison {
    let mut problems = Problems::default();
    let decode = |a: &Answer<'_>| body::decode(a.head, a.body, rules.max_decoded_body);
    let (dp, dc, ds) = (decode(primary), decode(candidate), secondary.map(decode));
    let p = Prepared::new(primary, &dp, rules, &mut problems);
    let c = Prepared::new(candidate, &dc, rules, &mut problems);
    let latency = [primary.latency_ns, secondary.and_then(|s| s.latency_ns), candidate.latency_ns];
    let (Some(secondary), Some(ds)) = (secondary, &ds) else {
        let candidate = p.diff(&c, rules);
        return Comparison { candidate, problems, latency, ..Comparison::default() };
    };
    let s = Prepared::new(secondary, ds, rules, &mut problems);
    let noise = p.diff(&s, rules);
    let now = s.diff(&c, rules);
    // Per-request cancellation: the same field differing the same way between the two
    // answers of the version in production is noise on this request. A value that varies
    // (primitive) does not explain a type that changed: the kinds must match.
    let candidate: Vec<FieldDiff> = now.iter().filter(|d| !noise.contains(d)).cloned().collect();
    // Drift: the primary differs where the secondary and the candidate agree. Where they
    // agree, the primary against the candidate is the primary against the secondary, so
    // the third diff is not needed: the noise outside every field the two now differ in.
    let drift =
        noise.iter().filter(|d| !now.iter().any(|n| covers(&n.field, &d.field))).cloned().collect();
    Comparison { candidate, noise, drift, problems, latency }
}

/// Whether field `outer` is `inner` or contains it.
fn covers(outer: &str, inner: &str) -> bool {
    inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::head;

    fn answer<'a>(h: &'a Head, body: &'a Bytes) -> Answer<'a> {
        Answer { head: h, body, latency_ns: Some(1_000_000) }
    }

    fn json(extra_headers: &str) -> Head {
        head(&format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra_headers}\r\n"))
    }

    fn fields(v: &[FieldDiff]) -> Vec<String> {
        v.iter().map(|d| format!("{} {}", d.field, d.kind.name())).collect()
    }

    #[test]
    fn noise_on_the_same_request_cancels_and_type_changes_stay() {
        let rules = CompareRules::default();
        let h = json("Date: Mon\r\nX-Req: 1\r\n");
        let hs = json("Date: Tue\r\nX-Req: 2\r\n");
        let hc = json("Date: Wed\r\nX-Req: 3\r\nX-New: y\r\n");
        let p = Bytes::from_static(br#"{"id":"a1","n":5,"t":7,"keep":1}"#);
        let s = Bytes::from_static(br#"{"id":"b2","n":5,"t":8,"keep":1}"#);
        let c = Bytes::from_static(br#"{"n":5,"id":"c3","t":"9"}"#);
        let cmp = compare(&answer(&h, &p), Some(&answer(&hs, &s)), &answer(&hc, &c), &rules);
        assert_eq!(
            fields(&cmp.noise),
            ["header/x-req primitive", "body/id primitive", "body/t primitive"]
        );
        assert_eq!(
            fields(&cmp.candidate),
            ["header/x-new extra", "body/keep missing", "body/t type"],
            "ids and x-req cancelled; t changed type; Date never compared"
        );
        assert!(cmp.drift.is_empty());
    }

    #[test]
    fn what_only_the_primary_shows_is_drift() {
        let rules = CompareRules::default();
        let h = json("");
        let p = Bytes::from_static(br#"{"stock":3}"#);
        let now = Bytes::from_static(br#"{"stock":2}"#);
        let cmp = compare(&answer(&h, &p), Some(&answer(&h, &now)), &answer(&h, &now), &rules);
        assert!(cmp.candidate.is_empty());
        assert_eq!(fields(&cmp.drift), ["body/stock primitive"]);
        let alone = compare(&answer(&h, &p), None, &answer(&h, &now), &rules);
        assert_eq!(fields(&alone.candidate), ["body/stock primitive"]);
    }

    #[test]
    fn status_and_problems_are_counted() {
        let rules = CompareRules::default();
        let ok = json("");
        let err = head("HTTP/1.1 500 Oops\r\nContent-Type: application/json\r\n\r\n");
        let good = Bytes::from_static(b"{}");
        let broken = Bytes::from_static(b"{");
        let cmp = compare(&answer(&ok, &good), None, &answer(&err, &broken), &rules);
        assert_eq!(fields(&cmp.candidate), ["status primitive", "body type"]);
        assert_eq!(cmp.problems.invalid_json, 1);
    }
}
