//! Settings of `mirror run`: a YAML file with Istio-like names (`mirrors`,
//! `mirrorPercentage`, `match`, `headers`), command-line flags, or both (flags extend lists
//! and override scalars). [`MirrorConfig::validate`] checks everything before anything is
//! attached, and every error names the offending field.
use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;

use mirror_flow::ReassemblyConfig;
use mirror_http::HttpConfig;
use mirror_shadow::MAX_PIPELINE;

/// The whole configuration, as in the YAML file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorConfig {
    /// Interfaces to tap (for a pod: the host side of its veth).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Service ports whose requests are mirrored.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Optional: only services in these networks.
    #[serde(default)]
    pub service_nets: Vec<IpNet>,
    /// Shadow services, each with its own sampling percentage.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// Default percentage for mirrors that do not set one (Istio: `mirrorPercentage`).
    #[serde(default)]
    pub mirror_percentage: Option<Percentage>,
    /// Which requests are mirrored: any rule matches (rules are OR'ed, fields AND'ed).
    #[serde(default, rename = "match")]
    pub match_rules: Vec<MatchRule>,
    /// Header edits applied to the copies.
    #[serde(default)]
    pub headers: HeaderEdits,
    /// How the Host header of a copy is rewritten.
    #[serde(default)]
    pub host_rewrite: HostRewrite,
    /// Sample consistently by the hash of this header's value (a user id, a session
    /// cookie): a given value is always mirrored or never.
    #[serde(default)]
    pub sample_by_header: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Caps on what reassembly and framing may hold.
    #[serde(default)]
    pub reassembly: CaptureLimits,
    /// Serve Prometheus metrics, /healthz and /readyz here.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// Seed of the sampling random numbers (for reproducible runs).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A shadow service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirror {
    /// `http://host[:port]`: where copies are sent.
    pub url: String,
    #[serde(default)]
    pub mirror_percentage: Option<Percentage>,
}

/// Istio's `{ value: 12.5 }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percentage {
    pub value: f64,
}

/// A string condition, as Istio's StringMatch: exactly one of the three.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// One match rule: every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRule {
    /// Request methods (any of them).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The request target (path and query).
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Header conditions, by header name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Istio's `headers: { request: { set, add, remove } }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderEdits {
    #[serde(default)]
    pub request: HeaderOps,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderOps {
    /// Replace (or add) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers (for example Authorization, Cookie).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// How the Host header of a copy is rewritten.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum HostRewrite {
    /// Envoy's rule: `host:port` becomes `host-shadow:port`.
    #[default]
    ShadowSuffix,
    /// Keep the original Host.
    Keep,
    /// Use this Host.
    Literal(String),
}

/// Caps of TCP reassembly and HTTP framing: when one is reached the oldest state is evicted
/// (or the message skipped) and counted, so memory stays bounded whatever the traffic.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CaptureLimits {
    /// Connections tracked at once.
    pub max_connections: usize,
    /// Out-of-order bytes held per direction of a connection.
    pub max_out_of_order_bytes: usize,
    /// Bytes buffered by one connection (out-of-order data and partial messages).
    pub max_connection_bytes: usize,
    /// Bytes buffered by all connections together.
    pub max_buffered_bytes: usize,
    /// A connection silent this long is forgotten.
    pub idle_timeout_ms: u64,
    /// A hole in a stream open this long is given up on.
    pub hole_timeout_ms: u64,
    /// Larger messages (head and body) are skipped.
    pub max_message_bytes: u64,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        let (r, h) = (ReassemblyConfig::default(), HttpConfig::default());
        Self {
            max_connections: r.max_connections,
            max_out_of_order_bytes: r.max_pending_per_direction,
            max_connection_bytes: r.max_buffered_per_connection,
            max_buffered_bytes: r.max_buffered_total,
            idle_timeout_ms: r.idle_timeout_ns / 1_000_000,
            hole_timeout_ms: r.hole_timeout_ns / 1_000_000,
            max_message_bytes: h.max_message_bytes,
        }
    }
}

impl CaptureLimits {
    pub fn reassembly(&self) -> ReassemblyConfig {
        ReassemblyConfig {
            max_connections: self.max_connections,
            max_pending_per_direction: self.max_out_of_order_bytes,
            max_buffered_per_connection: self.max_connection_bytes,
            max_buffered_total: self.max_buffered_bytes,
            idle_timeout_ns: self.idle_timeout_ms.saturating_mul(1_000_000),
            hole_timeout_ns: self.hole_timeout_ms.saturating_mul(1_000_000),
        }
    }

    pub fn http(&self) -> HttpConfig {
        HttpConfig { max_message_bytes: self.max_message_bytes }
    }

    fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("maxConnections", self.max_connections as u64),
            ("maxOutOfOrderBytes", self.max_out_of_order_bytes as u64),
            ("maxConnectionBytes", self.max_connection_bytes as u64),
            ("maxBufferedBytes", self.max_buffered_bytes as u64),
            ("idleTimeoutMs", self.idle_timeout_ms),
            ("holeTimeoutMs", self.hole_timeout_ms),
            ("maxMessageBytes", self.max_message_bytes),
        ] {
            if value == 0 {
                bail!("reassembly.{field}: must be at least 1");
            }
        }
        if self.max_connection_bytes > self.max_buffered_bytes {
            bail!(
                "reassembly.maxConnectionBytes: {} is more than maxBufferedBytes ({})",
                self.max_connection_bytes,
                self.max_buffered_bytes
            );
        }
        Ok(())
    }
}

/// Bounds on what each shadow may cost.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Requests in flight to one shadow at once.
    #[serde(default = "Limits::default_in_flight")]
    pub max_in_flight: usize,
    /// Copies waiting for a free slot; beyond it copies are dropped and counted.
    #[serde(default = "Limits::default_queue")]
    pub queue_length: usize,
    /// Bytes of copies waiting, across shadows; beyond it copies are dropped and counted.
    #[serde(default = "Limits::default_queued_bytes")]
    pub max_queued_bytes: usize,
    /// A copy not answered within this is abandoned and counted.
    #[serde(default = "Limits::default_timeout")]
    pub timeout_ms: u64,
    /// Optional rate limit per shadow, in requests per second.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Copies pipelined on one shadow connection (HTTP/1.1 pipelining): 1 sends one request
    /// at a time per connection (hyper's client); more writes several copies per syscall,
    /// which is most of what a copy costs the agent (BENCHMARKS.md). The shadow must accept
    /// pipelined requests, as HTTP/1.1 servers are required to.
    #[serde(default = "Limits::default_pipeline")]
    pub pipeline: usize,
}

impl Limits {
    fn default_in_flight() -> usize {
        64
    }
    fn default_queue() -> usize {
        1024
    }
    fn default_queued_bytes() -> usize {
        64 << 20
    }
    fn default_timeout() -> u64 {
        5000
    }
    fn default_pipeline() -> usize {
        1
    }

    /// The shadow client's limits (validated by [`MirrorConfig::validate_mirroring`]).
    pub fn shadow(&self) -> mirror_shadow::Limits {
        mirror_shadow::Limits {
            max_in_flight: self.max_in_flight,
            queue_length: self.queue_length,
            max_queued_bytes: self.max_queued_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
            rate_limit: self.rate_limit,
            pipeline: self.pipeline,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: Self::default_in_flight(),
            queue_length: Self::default_queue(),
            pipeline: Self::default_pipeline(),
            max_queued_bytes: Self::default_queued_bytes(),
            timeout_ms: Self::default_timeout(),
            rate_limit: None,
        }
    }
}

impl MirrorConfig {
    /// Reads a YAML file; unknown fields are errors.
    pub fn from_file(path: &Path) -> Result<MirrorConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<MirrorConfig> {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The percentage of mirror `i`: its own, else the default, else 100.
    pub fn percentage(&self, i: usize) -> f64 {
        self.mirrors[i].mirror_percentage.or(self.mirror_percentage).map_or(100.0, |p| p.value)
    }

    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_capture()?;
        self.validate_mirroring()
    }

    /// The live-capture part: interfaces and ports.
    pub fn validate_capture(&self) -> Result<()> {
        if self.interfaces.is_empty() {
            bail!("interfaces: at least one interface is required (-i)");
        }
        for name in &self.interfaces {
            if mirror_tap::interface_index(name).is_none() {
                bail!("interfaces: no such interface {name:?}");
            }
        }
        if self.ports.is_empty() || self.ports.contains(&0) {
            bail!("ports: at least one non-zero service port is required (--port)");
        }
        Ok(())
    }

    /// Everything about where and how requests are mirrored.
    pub fn validate_mirroring(&self) -> Result<()> {
        if self.mirrors.is_empty() {
            bail!("mirrors: at least one shadow is required (--shadow URL)");
        }
        if let Some(p) = self.mirror_percentage {
            check_percentage("mirrorPercentage", p.value)?;
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            parse_shadow_url(&m.url).with_context(|| format!("mirrors[{i}].url"))?;
            if let Some(p) = m.mirror_percentage {
                check_percentage(&format!("mirrors[{i}].mirrorPercentage"), p.value)?;
            }
        }
        for (i, rule) in self.match_rules.iter().enumerate() {
            for m in &rule.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    bail!("match[{i}].methods: {m:?} is not a method");
                }
            }
            if let Some(StringMatch::Regex(r)) = &rule.uri {
                regex::Regex::new(r).with_context(|| format!("match[{i}].uri.regex"))?;
            }
            for (name, cond) in &rule.headers {
                check_header_name(&format!("match[{i}].headers"), name)?;
                if let StringMatch::Regex(r) = cond {
                    regex::Regex::new(r).with_context(|| format!("match[{i}].headers.{name}"))?;
                }
            }
        }
        let ops = &self.headers.request;
        for (name, value) in ops.set.iter().chain(&ops.add) {
            check_header_name("headers.request", name)?;
            http::HeaderValue::from_str(value)
                .with_context(|| format!("headers.request: invalid value for {name}"))?;
        }
        for name in &ops.remove {
            check_header_name("headers.request.remove", name)?;
        }
        if let HostRewrite::Literal(h) = &self.host_rewrite {
            http::HeaderValue::from_str(h).context("hostRewrite.literal: invalid host")?;
        }
        if let Some(h) = &self.sample_by_header {
            check_header_name("sampleByHeader", h)?;
        }
        let l = &self.limits;
        if l.max_in_flight == 0 {
            bail!("limits.maxInFlight: must be at least 1");
        }
        if l.queue_length == 0 {
            bail!("limits.queueLength: must be at least 1");
        }
        if l.timeout_ms == 0 {
            bail!("limits.timeoutMs: must be at least 1");
        }
        if !(1..=MAX_PIPELINE).contains(&l.pipeline) {
            bail!("limits.pipeline: {} is not between 1 and {MAX_PIPELINE}", l.pipeline);
        }
        if let Some(r) = l.rate_limit {
            if !(r.is_finite() && r > 0.0) {
                bail!("limits.rateLimit: {r} is not a positive rate");
            }
        }
        self.reassembly.validate()
    }
}

fn check_percentage(field: &str, value: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&value) {
        bail!("{field}: {value} is outside 0..=100");
    }
    Ok(())
}

fn check_header_name(field: &str, name: &str) -> Result<()> {
    http::HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("{field}: {name:?} is not a header name"))?;
    Ok(())
}

/// Parses a shadow URL: `http://host[:port]` with an optional path prefix that is ignored.
pub fn parse_shadow_url(url: &str) -> Result<http::Uri> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url:?}: only http:// shadows are supported");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{url:?}: no host");
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
interfaces: [lo]
ports: [8000]
mirrors:
  - url: http://httpbin-shadow:8000
    mirrorPercentage: { value: 12.5 }
  - url: http://second:9000
mirrorPercentage: { value: 50 }
match:
  - methods: [GET, POST]
    uri: { prefix: /api }
    headers:
      x-canary: { exact: "yes" }
headers:
  request:
    set: { x-mirrored: "1" }
    remove: [authorization, cookie]
hostRewrite: keep
sampleByHeader: x-user
limits: { maxInFlight: 8, timeoutMs: 250, rateLimit: 100, pipeline: 4 }
reassembly: { maxConnections: 5000, idleTimeoutMs: 60000, maxMessageBytes: 1048576 }
metrics: 127.0.0.1:9100
"#;

    #[test]
    fn istio_like_yaml() {
        let c = MirrorConfig::from_yaml(FULL).unwrap();
        c.validate().unwrap();
        assert_eq!(c.percentage(0), 12.5);
        assert_eq!(c.percentage(1), 50.0);
        assert_eq!(c.match_rules[0].uri, Some(StringMatch::Prefix("/api".into())));
        assert_eq!(c.host_rewrite, HostRewrite::Keep);
        assert_eq!(c.limits.max_in_flight, 8);
        assert_eq!(c.limits.pipeline, 4);
        assert_eq!(c.limits.queue_length, 1024);
        let (r, h) = (c.reassembly.reassembly(), c.reassembly.http());
        assert_eq!((r.max_connections, r.idle_timeout_ns), (5000, 60_000_000_000));
        assert_eq!(r.max_buffered_total, ReassemblyConfig::default().max_buffered_total);
        assert_eq!(h.max_message_bytes, 1 << 20);
        let defaults = MirrorConfig::from_yaml("ports: [1]\n").unwrap().reassembly;
        assert_eq!(defaults.reassembly(), ReassemblyConfig::default());
        assert_eq!(defaults.max_message_bytes, HttpConfig::default().max_message_bytes);
    }

    #[test]
    fn errors_name_the_field() {
        let unknown = MirrorConfig::from_yaml("interfaces: [a]\nprots: [1]\n").unwrap_err();
        assert!(format!("{unknown:#}").contains("prots"), "{unknown:#}");
        let mut c = MirrorConfig::from_yaml(FULL).unwrap();
        c.mirrors[1].mirror_percentage = Some(Percentage { value: 150.0 });
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("mirrors[1].mirrorPercentage") && e.contains("150"), "{e}");
        let mut c = MirrorConfig::from_yaml(FULL).unwrap();
        c.mirrors[0].url = "ftp://x".into();
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("mirrors[0].url"));
        let mut c = MirrorConfig::from_yaml(FULL).unwrap();
        c.match_rules[0].uri = Some(StringMatch::Regex("(".into()));
        assert!(format!("{:#}", c.validate().unwrap_err()).contains("match[0].uri.regex"));
        let mut c = MirrorConfig::from_yaml(FULL).unwrap();
        c.reassembly.max_connections = 0;
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("reassembly.maxConnections"), "{e}");
        let mut c = MirrorConfig::from_yaml(FULL).unwrap();
        c.reassembly.max_connection_bytes = c.reassembly.max_buffered_bytes + 1;
        let e = format!("{:#}", c.validate().unwrap_err());
        assert!(e.contains("reassembly.maxConnectionBytes"), "{e}");
    }
}
