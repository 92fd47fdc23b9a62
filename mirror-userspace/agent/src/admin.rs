//! The comparison's web UI (`/`, [`UI`]) and JSON API on the agent's admin address (with
//! the metrics beside it):
//!
//! - `GET /api/overview`: compared requests, endpoints, endpoints with regressions, requests
//!   not compared by reason;
//! - `GET /api/report`: the verdict (`mirror_compare::Report`, the document of
//!   `mirror diff report --json`);
//! - `GET /api/results`: the raw counts (`mirror_compare::Results`), which `mirror diff
//!   report --agent` merges across agents;
//! - `GET /api/endpoints`: every endpoint with its counts, most regressed first;
//! - `GET /api/endpoint?name=GET%20/users/{id}`: one endpoint's report and field counts;
//! - `GET /api/samples?endpoint=...[&field=body/id]`: an endpoint's samples (the request and
//!   the three answers side by side), those showing a field if one is given;
//! - `GET /api/ignore`: the ignore rules in force (configured and added);
//! - `POST /api/ignore` with `{"fields": [...], "headers": [...], "values": [...]}`: adds
//!   rules to the running comparison (checked first; saved with the results), and forgets
//!   the counts of the fields they leave out;
//! - `POST /api/clear`: forgets the results.
use bytes::Bytes;
use mirror_compare::{Report, Thresholds};
use serde::Serialize;

use crate::compare::{SharedRules, SharedVerdicts};

/// The web UI, one page (served at `/` of the admin address): its script and styles are in
/// it, nothing is fetched from elsewhere.
pub const UI: &str = include_str!("ui.html");

/// Bytes of a request body the API reads at most.
pub const MAX_API_BODY: usize = 64 * 1024;

/// What the API reads: the verdicts every worker adds to, the rules they compare with, and
/// the thresholds of the report.
#[derive(Clone)]
pub struct Api {
    verdicts: SharedVerdicts,
    rules: SharedRules,
    thresholds: Thresholds,
}

/// An answer of the API: status and JSON body.
pub struct ApiResponse {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Serialize)]
struct Overview {
    compared: u64,
    endpoints: usize,
    regressed_endpoints: usize,
    untracked_requests: u64,
    not_compared: std::collections::BTreeMap<&'static str, u64>,
    /// Copies the candidate or the secondary did not answer, by reason.
    replay_drops: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct EndpointRow<'a> {
    endpoint: &'a str,
    requests: u64,
    compared: u64,
    differing: u64,
    regressions: usize,
    latency_regression: bool,
}

impl Api {
    pub fn new(verdicts: SharedVerdicts, rules: SharedRules, thresholds: Thresholds) -> Api {
        Api { verdicts, rules, thresholds }
    }

    /// The response to `method path?query` with request body `body`, or None for a path
    /// that is not the API's.
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Option<ApiResponse> {
        if !path.starts_with("/api/") {
            return None;
        }
        Some(match (method, path) {
            ("GET", "/api/overview") => json(&self.overview()),
            ("GET", "/api/report") => json(&self.report()),
            ("GET", "/api/results") => json(&self.verdicts.lock().expect("not poisoned").results),
            ("GET", "/api/endpoints") => self.endpoints(),
            ("GET", "/api/endpoint") => self.endpoint(query.and_then(|q| param(q, "name"))),
            ("GET", "/api/samples") => self.samples(
                query.and_then(|q| param(q, "endpoint")),
                query.and_then(|q| param(q, "field")),
            ),
            ("POST", "/api/clear") => {
                let mut v = self.verdicts.lock().expect("not poisoned");
                v.results.clear();
                v.skipped = Default::default();
                v.replay_drops.clear();
                json(&serde_json::json!({"cleared": true}))
            }
            (_, "/api/clear") => error(405, "use POST"),
            ("GET", "/api/ignore") => self.ignore_rules(),
            ("POST", "/api/ignore") => self.ignore(body),
            _ => error(404, "no such API path"),
        })
    }

    fn ignore_rules(&self) -> ApiResponse {
        let rules = self.rules.read().expect("not poisoned");
        let v = self.verdicts.lock().expect("not poisoned");
        json(&serde_json::json!({"in_force": rules.ignore.spec(), "added": v.added_ignore}))
    }

    /// Adds ignore rules: all of them or, if one is bad, none (400, naming it).
    fn ignore(&self, body: &[u8]) -> ApiResponse {
        let spec: mirror_compare::IgnoreSpec = match serde_json::from_slice(body) {
            Ok(s) => s,
            Err(e) => {
                return error(
                    400,
                    &format!(
                    "expected {{\"fields\": [...], \"headers\": [...], \"values\": [...]}}: {e}"
                ),
                )
            }
        };
        let mut rules = self.rules.write().expect("not poisoned");
        let ignore = match rules.ignore.with(&spec) {
            Ok(i) => i,
            Err(e) => return error(400, &e.to_string()),
        };
        let mut v = self.verdicts.lock().expect("not poisoned");
        v.added_ignore.add(&spec);
        v.results.forget_ignored(&ignore);
        rules.ignore = ignore;
        json(&serde_json::json!({"in_force": rules.ignore.spec()}))
    }

    fn report(&self) -> Report {
        self.verdicts.lock().expect("not poisoned").results.report(&self.thresholds)
    }

    fn overview(&self) -> Overview {
        let v = self.verdicts.lock().expect("not poisoned");
        let report = v.results.report(&self.thresholds);
        Overview {
            compared: report.endpoints.iter().map(|e| e.compared).sum(),
            endpoints: report.endpoints.len(),
            regressed_endpoints: report.endpoints.iter().filter(|e| e.regressed()).count(),
            untracked_requests: report.untracked_requests,
            not_compared: v.skipped.fields().into_iter().collect(),
            replay_drops: v.replay_drops.clone(),
        }
    }

    fn endpoints(&self) -> ApiResponse {
        let report = self.report();
        let mut rows: Vec<EndpointRow> = report
            .endpoints
            .iter()
            .map(|e| EndpointRow {
                endpoint: &e.endpoint,
                requests: e.requests,
                compared: e.compared,
                differing: e.differing,
                regressions: e.regressions.len(),
                latency_regression: e.latency.regression,
            })
            .collect();
        let rate = |r: &EndpointRow| r.differing as f64 / r.compared.max(1) as f64;
        rows.sort_by(|a, b| rate(b).total_cmp(&rate(a)).then(a.endpoint.cmp(b.endpoint)));
        json(&rows)
    }

    fn samples(&self, endpoint: Option<String>, field: Option<String>) -> ApiResponse {
        let Some(endpoint) = endpoint else { return error(400, "endpoint= is required") };
        let v = self.verdicts.lock().expect("not poisoned");
        let Some(stats) = v.results.endpoints.get(&endpoint) else {
            return error(404, "no such endpoint");
        };
        let shows = |s: &&mirror_compare::Sample| {
            field.as_ref().is_none_or(|f| s.fields.iter().any(|d| &d.field == f))
        };
        let samples: Vec<_> = stats.samples.iter().filter(shows).collect();
        json(&samples)
    }

    fn endpoint(&self, name: Option<String>) -> ApiResponse {
        let Some(name) = name else { return error(400, "name= is required") };
        let v = self.verdicts.lock().expect("not poisoned");
        let Some(stats) = v.results.endpoints.get(&name) else {
            return error(404, "no such endpoint");
        };
        let report = v.results.report(&self.thresholds);
        let verdict = report.endpoints.into_iter().find(|e| e.endpoint == name);
        json(&serde_json::json!({"report": verdict, "stats": stats}))
    }
}

fn json(value: &impl Serialize) -> ApiResponse {
    match serde_json::to_vec(value) {
        Ok(body) => ApiResponse { status: 200, body: body.into() },
        Err(_) => error(500, "could not encode"),
    }
}

fn error(status: u16, message: &str) -> ApiResponse {
    let body = serde_json::json!({ "error": message }).to_string();
    ApiResponse { status, body: body.into() }
}

/// A query parameter, percent-decoded (`+` is a space).
fn param(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use mirror_compare::{Comparison, FieldDiff, Kind};

    use super::*;

    #[test]
    fn routes_answer_json_and_errors_say_why() {
        let verdicts = SharedVerdicts::default();
        {
            let mut v = verdicts.lock().unwrap();
            v.results.offered("GET /a");
            let diff = FieldDiff { field: "status".into(), kind: Kind::Primitive };
            v.results.record("GET /a", &Comparison { candidate: vec![diff], ..Default::default() });
        }
        let api = Api::new(verdicts, SharedRules::default(), Thresholds::default());
        let get = |path: &str, query: Option<&str>| {
            let r = api.handle("GET", path, query, b"").unwrap();
            (r.status, serde_json::from_slice::<serde_json::Value>(&r.body).unwrap())
        };
        let (status, overview) = get("/api/overview", None);
        assert_eq!(
            (status, overview["compared"].as_u64(), overview["regressed_endpoints"].as_u64()),
            (200, Some(1), Some(1))
        );
        let (_, one) = get("/api/endpoint", Some("name=GET%20/a"));
        assert_eq!(one["report"]["regressions"][0]["field"], "status");
        assert_eq!(get("/api/endpoint", Some("name=GET+/b")).0, 404);
        assert_eq!(get("/api/endpoint", None).0, 400);
        assert_eq!(get("/api/nope", None).0, 404);
        assert!(api.handle("GET", "/metrics", None, b"").is_none());
        let post =
            |path: &str, body: &str| api.handle("POST", path, None, body.as_bytes()).unwrap();
        assert_eq!(post("/api/ignore", r#"{"values": ["("]}"#).status, 400, "a bad regex");
        assert_eq!(post("/api/ignore", "nope").status, 400);
        assert_eq!(post("/api/ignore", r#"{"fields": ["status"]}"#).status, 200);
        assert_eq!(
            get("/api/overview", None).1["regressed_endpoints"].as_u64(),
            Some(0),
            "forgotten"
        );
        assert_eq!(get("/api/ignore", None).1["added"]["fields"][0], "status");
        assert_eq!(api.handle("GET", "/api/clear", None, b"").unwrap().status, 405);
        assert_eq!(post("/api/clear", "").status, 200);
        assert_eq!(get("/api/report", None).1["endpoints"].as_array().unwrap().len(), 0);
    }
}
