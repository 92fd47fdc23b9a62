//! Settings of `mirror run` and `mirror replay`: a YAML file with Istio-like names
//! (`mirrors`, `mirrorPercentage`, `match`, `headers`), command-line flags, or both (flags
//! extend lists and override scalars). This is the schema; the stages own their typed
//! settings, and [`MirrorConfig::mirror_settings`] and [`MirrorConfig::tap_settings`]
//! convert to them, checking every field once, before anything is attached; every error
//! names the offending field.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use mirror_agent::{
    compare::{CompareSettings, SAFE_METHODS},
    pipeline::{MirrorSettings, ShadowTarget},
    rewrite, select,
};
use mirror_compare::{Caps, CompareRules, EndpointNamer, Template, Thresholds};
use mirror_flow::ReassemblyConfig;
use mirror_http::HttpConfig;
use mirror_shadow::{ClientConfig, TlsOptions, MAX_PIPELINE};
use mirror_tap::{InterfacePatterns, TapSettings};
use serde::Deserialize;

/// The whole configuration, as in the YAML file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MirrorConfig {
    /// Interfaces to tap (for a pod: the host side of its veth).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Follow the interfaces whose names match (globs separated by `|`: `veth*|cali*`),
    /// attached as they appear and detached as they go.
    #[serde(default)]
    pub interface_pattern: Option<String>,
    /// Pin the links and maps in this bpffs directory and take over what is pinned there.
    #[serde(default)]
    pub pin: Option<PathBuf>,
    /// Leave everything pinned and capturing at exit (with `pin`).
    #[serde(default)]
    pub keep_attached: bool,
    /// Size of each ring buffer in bytes (a power of two).
    #[serde(default)]
    pub ring_bytes: Option<u32>,
    /// Attach the XDP program (ingress only: requests arriving on the interfaces).
    #[serde(default)]
    pub xdp: bool,
    /// The container runtime's CRI socket ("none": do not ask; default: containerd's when it
    /// exists).
    #[serde(default)]
    pub cri_socket: Option<PathBuf>,
    /// Service ports whose requests are mirrored.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Optional: only services in these networks.
    #[serde(default)]
    pub service_nets: Vec<IpNet>,
    /// Shadow services, each with its own sampling percentage.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
    /// TLS to `https://` shadows.
    #[serde(default)]
    pub shadow_tls: ShadowTls,
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
    /// Serve the metrics and the comparison's JSON API here.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Seed of the sampling random numbers (for reproducible runs).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Compare a candidate's answers with the primary's.
    #[serde(default)]
    pub compare: Option<CompareConfig>,
}

/// The comparison (Diffy's settings, by their names where Diffy has one).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CompareConfig {
    /// The new version: `http[s]://host:port`.
    pub candidate: String,
    /// A second instance of the primary's version, to tell noise from differences.
    #[serde(default)]
    pub secondary: Option<String>,
    /// Share of the eligible requests compared (default 100).
    #[serde(default)]
    pub percentage: Option<Percentage>,
    /// Methods compared (default GET, HEAD, OPTIONS).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Compare methods with side effects too (POST, PUT, DELETE...): the candidate and the
    /// secondary then act on them.
    #[serde(default)]
    pub allow_side_effects: bool,
    /// Endpoint templates, first match wins (`/users/{id}`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ignore: mirror_compare::IgnoreSpec,
    #[serde(default)]
    pub thresholds: CompareThresholds,
    #[serde(default)]
    pub caps: CompareCaps,
    /// Save the results here (a redb file), and start from what it holds.
    #[serde(default)]
    pub store: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(crate) struct CompareThresholds {
    pub relative_pct: f64,
    pub absolute_pct: f64,
    pub latency_ratio: f64,
    pub latency_min_ms: f64,
}

impl Default for CompareThresholds {
    fn default() -> Self {
        let t = mirror_compare::Thresholds::default();
        Self {
            relative_pct: t.relative_pct,
            absolute_pct: t.absolute_pct,
            latency_ratio: t.latency_ratio,
            latency_min_ms: t.latency_min_ms,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(crate) struct CompareCaps {
    pub max_endpoints: usize,
    pub max_fields: usize,
    /// Samples kept per endpoint (0: none), and the bytes of all samples together.
    pub samples: usize,
    pub sample_bytes: usize,
    pub max_pending: usize,
    pub max_body_bytes: usize,
    pub max_decoded_bytes: usize,
}

impl Default for CompareCaps {
    fn default() -> Self {
        let c = mirror_compare::Caps::default();
        Self {
            max_endpoints: c.max_endpoints,
            max_fields: c.max_fields,
            samples: c.samples,
            sample_bytes: c.sample_bytes,
            max_pending: 10_000,
            max_body_bytes: 1 << 20,
            max_decoded_bytes: mirror_compare::CompareRules::default().max_decoded_body,
        }
    }
}

impl CompareConfig {
    /// The typed settings; `target` makes a shadow target of a URL (its TLS as for shadows).
    fn convert(
        &self,
        target: &mut dyn FnMut(&str, &str) -> Result<ShadowTarget>,
    ) -> Result<CompareSettings> {
        let candidate = target("compare.candidate", &self.candidate)?;
        let secondary = match &self.secondary {
            Some(url) => Some(target("compare.secondary", url)?),
            None => None,
        };
        let percent = self.percentage.map_or(100.0, |p| p.value);
        check_percentage("compare.percentage", percent)?;
        let methods = match (self.methods.is_empty(), self.allow_side_effects) {
            (true, _) => SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            (false, allow) => {
                let methods: Vec<String> =
                    self.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
                if let Some(m) =
                    methods.iter().find(|m| !allow && !SAFE_METHODS.contains(&m.as_str()))
                {
                    bail!("compare.methods: {m} has side effects: set compare.allowSideEffects (--allow-side-effects) to compare it");
                }
                methods
            }
        };
        let templates =
            self.endpoints.iter().map(|t| Template::parse(t)).collect::<Result<Vec<_>, _>>();
        let templates = templates.map_err(|e| anyhow::anyhow!("compare.endpoints: {e}"))?;
        let ignore = mirror_compare::IgnoreRules::new(self.ignore.clone())
            .map_err(|e| anyhow::anyhow!("compare.{e}"))?;
        let t = &self.thresholds;
        for (field, v) in [
            ("relativePct", t.relative_pct),
            ("absolutePct", t.absolute_pct),
            ("latencyMinMs", t.latency_min_ms),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("compare.thresholds.{field}: {v} is not a non-negative number");
            }
        }
        if !(t.latency_ratio >= 1.0 && t.latency_ratio.is_finite()) {
            bail!("compare.thresholds.latencyRatio: {} is not at least 1", t.latency_ratio);
        }
        let c = &self.caps;
        for (field, v) in [
            ("maxEndpoints", c.max_endpoints),
            ("maxFields", c.max_fields),
            ("maxPending", c.max_pending),
            ("maxBodyBytes", c.max_body_bytes),
            ("maxDecodedBytes", c.max_decoded_bytes),
        ] {
            if v == 0 {
                bail!("compare.caps.{field}: must be at least 1");
            }
        }
        Ok(CompareSettings {
            candidate,
            secondary,
            percent,
            methods,
            endpoints: EndpointNamer::new(templates),
            rules: CompareRules { ignore, max_decoded_body: c.max_decoded_bytes },
            thresholds: Thresholds {
                relative_pct: t.relative_pct,
                absolute_pct: t.absolute_pct,
                latency_ratio: t.latency_ratio,
                latency_min_ms: t.latency_min_ms,
            },
            caps: Caps {
                max_endpoints: c.max_endpoints,
                max_fields: c.max_fields,
                samples: c.samples,
                sample_bytes: c.sample_bytes,
            },
            max_pending: c.max_pending,
            max_body: c.max_body_bytes,
            store: self.store.clone().map(mirror_compare::Store::new),
        })
    }
}

/// A shadow service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Mirror {
    /// `http://host[:port]`: where copies are sent.
    pub url: String,
    #[serde(default)]
    pub mirror_percentage: Option<Percentage>,
}

/// TLS to `https://` shadows: certificates are verified against the system's roots unless
/// a CA file is given, or verification is explicitly turned off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ShadowTls {
    /// PEM file of the CA certificates to trust instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (a test shadow with a throwaway certificate).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM file of a client certificate chain, for shadows that require one (mTLS).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl ShadowTls {
    /// The rustls configuration, every file read now; errors name the field.
    fn convert(&self) -> Result<Arc<ClientConfig>> {
        if self.insecure_skip_verify && self.ca_file.is_some() {
            bail!("shadowTls.insecureSkipVerify: excludes shadowTls.caFile");
        }
        let client_cert = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            (Some(_), None) => bail!("shadowTls.clientKey: required with clientCert"),
            (None, Some(_)) => bail!("shadowTls.clientCert: required with clientKey"),
        };
        let options = TlsOptions {
            ca_file: self.ca_file.clone(),
            insecure: self.insecure_skip_verify,
            client_cert,
        };
        options.client_config().map_err(|e| anyhow::anyhow!("shadowTls.{e}"))
    }
}

/// Istio's `{ value: 12.5 }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Percentage {
    pub value: f64,
}

/// A string condition, as Istio's StringMatch: exactly one of the three.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// One match rule: every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct MatchRule {
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
pub(crate) struct HeaderEdits {
    #[serde(default)]
    pub request: HeaderOps,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HeaderOps {
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
pub(crate) enum HostRewrite {
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
pub(crate) struct CaptureLimits {
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
    fn reassembly(&self) -> ReassemblyConfig {
        ReassemblyConfig {
            max_connections: self.max_connections,
            max_pending_per_direction: self.max_out_of_order_bytes,
            max_buffered_per_connection: self.max_connection_bytes,
            max_buffered_total: self.max_buffered_bytes,
            idle_timeout_ns: self.idle_timeout_ms.saturating_mul(1_000_000),
            hole_timeout_ns: self.hole_timeout_ms.saturating_mul(1_000_000),
        }
    }

    fn http(&self) -> HttpConfig {
        // Mirroring reads a response's head (pairing, upgrades) and skips its body.
        HttpConfig { max_message_bytes: self.max_message_bytes, response_bodies: false }
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
pub(crate) struct Limits {
    /// Requests in flight to one shadow at once.
    #[serde(default = "Limits::default_in_flight")]
    pub max_in_flight: usize,
    /// Copies waiting for a free slot, per shadow and worker; beyond it copies are dropped
    /// and counted.
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
    /// Copies pipelined on one shadow connection at most (HTTP/1.1 pipelining; 1: none). A
    /// shadow that fails behind a pipelined copy gets one at a time from then on.
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
        16
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
    pub(crate) fn from_file(path: &Path) -> Result<MirrorConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_yaml(&text).with_context(|| format!("in {}", path.display()))
    }

    pub(crate) fn from_yaml(text: &str) -> Result<MirrorConfig> {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The percentage of mirror `i`: its own, else the default, else 100.
    fn percentage(&self, i: usize) -> f64 {
        self.mirrors[i].mirror_percentage.or(self.mirror_percentage).map_or(100.0, |p| p.value)
    }

    /// Where and what a live run captures: interfaces (which must exist), ports, networks.
    /// What a live run needs: where to capture, how to mirror, and this configuration.
    pub(crate) fn live(self) -> Result<(TapSettings, MirrorSettings, MirrorConfig)> {
        Ok((self.tap_settings()?, self.mirror_settings()?, self))
    }

    /// The CRI socket to ask pods' names of, if any.
    pub(crate) fn cri_socket(&self) -> Option<PathBuf> {
        match &self.cri_socket {
            Some(path) if path.as_os_str() == "none" => None,
            Some(path) => Some(path.clone()),
            None => {
                let default = Path::new(mirror_agent::cri::DEFAULT_SOCKET);
                default.exists().then(|| default.to_owned())
            }
        }
    }

    /// Checks that a new configuration changes nothing that only a restart can and that
    /// the tap does not check itself (`Tap::reconfigure`: ring size, hooks, pinning, XDP):
    /// the metrics and admin addresses, keeping attached at exit.
    pub(crate) fn unchanged_for_reload(&self, running: &MirrorConfig) -> Result<()> {
        let fixed = [
            ("metrics", self.metrics != running.metrics),
            ("admin", self.admin != running.admin),
            ("keepAttached", self.keep_attached != running.keep_attached),
        ];
        if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
            bail!("{field}: cannot change while the agent runs (restart it)");
        }
        Ok(())
    }

    pub(crate) fn tap_settings(&self) -> Result<TapSettings> {
        if self.interfaces.is_empty() && self.interface_pattern.is_none() {
            bail!("interfaces: at least one interface (-i) or an interfacePattern (--iface-pattern) is required");
        }
        if self.ports.is_empty() || self.ports.contains(&0) {
            bail!("ports: at least one non-zero service port is required (--port)");
        }
        let defaults = TapSettings::default();
        let follow = match &self.interface_pattern {
            Some(text) => Some(
                InterfacePatterns::parse(text)
                    .map_err(|e| anyhow::anyhow!("interfacePattern: {e}"))?,
            ),
            None => None,
        };
        if self.xdp && self.compare.is_some() {
            bail!("xdp: the comparison needs the primary's responses, which XDP never sees");
        }
        if self.xdp && self.pin.is_some() {
            bail!("xdp: pinning (pin) is for TCX links; XDP attaches unpinned");
        }
        if self.keep_attached && self.pin.is_none() {
            bail!("keepAttached: needs pin (--pin): only pinned links outlive the agent");
        }
        let tap = TapSettings {
            interfaces: self.interfaces.clone(),
            follow,
            pin_dir: self.pin.clone(),
            xdp: self.xdp,
            ports: self.ports.clone(),
            service_nets: self.service_nets.clone(),
            ring_bytes: self.ring_bytes.unwrap_or(defaults.ring_bytes),
            ..defaults
        };
        tap.validate()?;
        Ok(tap)
    }

    /// Everything about where and how requests are mirrored, converted to the stages'
    /// settings; errors name the field.
    pub(crate) fn mirror_settings(&self) -> Result<MirrorSettings> {
        if self.mirrors.is_empty() && self.compare.is_none() {
            bail!("mirrors: at least one shadow is required (--shadow URL), or a comparison (--compare --candidate URL)");
        }
        if let Some(p) = self.mirror_percentage {
            check_percentage("mirrorPercentage", p.value)?;
        }
        let mut shadows = Vec::new();
        // Built once, and only for https shadows (the system's roots are read then).
        let mut tls = None;
        for (i, m) in self.mirrors.iter().enumerate() {
            let uri = parse_shadow_url(&m.url).with_context(|| format!("mirrors[{i}].url"))?;
            if let Some(p) = m.mirror_percentage {
                check_percentage(&format!("mirrors[{i}].mirrorPercentage"), p.value)?;
            }
            let tls = match uri.scheme_str() {
                Some("https") => Some(match &tls {
                    Some(config) => Arc::clone(config),
                    None => tls.insert(self.shadow_tls.convert()?).clone(),
                }),
                _ => None,
            };
            let percent = self.percentage(i);
            shadows.push(ShadowTarget { uri, name: m.url.clone(), percent, tls });
        }
        let mut target = |field: &str, url: &str| -> Result<ShadowTarget> {
            let uri = parse_shadow_url(url).with_context(|| field.to_string())?;
            let tls = match uri.scheme_str() {
                Some("https") => Some(match &tls {
                    Some(config) => Arc::clone(config),
                    None => tls.insert(self.shadow_tls.convert()?).clone(),
                }),
                _ => None,
            };
            Ok(ShadowTarget { uri, name: url.to_string(), percent: 100.0, tls })
        };
        let compare = match &self.compare {
            Some(c) => Some(c.convert(&mut target)?),
            None => None,
        };
        let rules = self.match_rules.iter().enumerate().map(|(i, r)| r.convert(i));
        let rules = rules.collect::<Result<_>>()?;
        let host = match &self.host_rewrite {
            HostRewrite::ShadowSuffix => rewrite::HostRewrite::ShadowSuffix,
            HostRewrite::Keep => rewrite::HostRewrite::Keep,
            HostRewrite::Literal(h) => rewrite::HostRewrite::Literal(
                HeaderValue::from_str(h).context("hostRewrite.literal: invalid host")?,
            ),
        };
        if let Some(h) = &self.sample_by_header {
            header_name("sampleByHeader", h)?;
        }
        self.reassembly.validate()?;
        Ok(MirrorSettings {
            shadows,
            rules,
            host,
            edits: self.headers.request.convert()?,
            sample_by_header: self.sample_by_header.clone(),
            seed: self.seed,
            limits: self.limits.convert()?,
            reassembly: self.reassembly.reassembly(),
            http: self.reassembly.http(),
            compare,
        })
    }
}

impl MatchRule {
    /// Rule `i` (of `match`), with its regexes compiled.
    fn convert(&self, i: usize) -> Result<select::MatchRule> {
        let mut methods = Vec::new();
        for m in &self.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                bail!("match[{i}].methods: {m:?} is not a method");
            }
            methods.push(m.to_ascii_uppercase());
        }
        let uri = self.uri.as_ref().map(|c| c.convert(&format!("match[{i}].uri.regex")));
        let mut headers = Vec::new();
        for (name, cond) in &self.headers {
            header_name(&format!("match[{i}].headers"), name)?;
            headers.push((name.clone(), cond.convert(&format!("match[{i}].headers.{name}"))?));
        }
        Ok(select::MatchRule { methods, uri: uri.transpose()?, headers })
    }
}

impl StringMatch {
    /// `field` names a regex that does not compile.
    fn convert(&self, field: &str) -> Result<select::StringMatch> {
        Ok(match self {
            StringMatch::Exact(s) => select::StringMatch::Exact(s.clone()),
            StringMatch::Prefix(s) => select::StringMatch::Prefix(s.clone()),
            StringMatch::Regex(r) => select::StringMatch::regex(r).context(field.to_owned())?,
        })
    }
}

impl HeaderOps {
    fn convert(&self) -> Result<rewrite::HeaderEdits> {
        let pair = |(name, value): (&String, &String)| -> Result<(HeaderName, HeaderValue)> {
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("headers.request: invalid value for {name}"))?;
            Ok((header_name("headers.request", name)?, value))
        };
        Ok(rewrite::HeaderEdits {
            set: self.set.iter().map(pair).collect::<Result<_>>()?,
            add: self.add.iter().map(pair).collect::<Result<_>>()?,
            remove: self
                .remove
                .iter()
                .map(|n| header_name("headers.request.remove", n))
                .collect::<Result<_>>()?,
        })
    }
}

impl Limits {
    fn convert(&self) -> Result<mirror_shadow::Limits> {
        if self.max_in_flight == 0 {
            bail!("limits.maxInFlight: must be at least 1");
        }
        if self.queue_length == 0 {
            bail!("limits.queueLength: must be at least 1");
        }
        if self.timeout_ms == 0 {
            bail!("limits.timeoutMs: must be at least 1");
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            bail!("limits.pipeline: {} is not between 1 and {MAX_PIPELINE}", self.pipeline);
        }
        if let Some(r) = self.rate_limit {
            if !(r.is_finite() && r > 0.0) {
                bail!("limits.rateLimit: {r} is not a positive rate");
            }
        }
        Ok(mirror_shadow::Limits {
            max_in_flight: self.max_in_flight,
            queue_length: self.queue_length,
            max_queued_bytes: self.max_queued_bytes,
            timeout: Duration::from_millis(self.timeout_ms),
            rate_limit: self.rate_limit,
            pipeline: self.pipeline,
        })
    }
}

fn check_percentage(field: &str, value: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&value) {
        bail!("{field}: {value} is outside 0..=100");
    }
    Ok(())
}

fn header_name(field: &str, name: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("{field}: {name:?} is not a header name"))
}

/// Parses a shadow URL: `http[s]://host[:port]` with an optional path prefix that is ignored.
fn parse_shadow_url(url: &str) -> Result<http::Uri> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        bail!("{url:?}: only http:// and https:// shadows are supported");
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{url:?}: no host");
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl MirrorConfig {
        /// Both conversions a live run makes.
        fn validate(&self) -> Result<()> {
            self.tap_settings()?;
            self.mirror_settings().map(drop)
        }
    }

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
        let s = c.mirror_settings().unwrap();
        assert_eq!(s.shadows.iter().map(|t| t.percent).collect::<Vec<_>>(), [12.5, 50.0]);
        assert_eq!(s.shadows[1].uri.port_u16(), Some(9000));
        assert_eq!((s.limits.pipeline, s.limits.timeout), (4, Duration::from_millis(250)));
        assert_eq!(s.rules[0].methods, ["GET", "POST"]);
        assert_eq!(s.host, rewrite::HostRewrite::Keep);
        assert_eq!(s.edits.remove, ["authorization", "cookie"]);
        let (r, h) = (c.reassembly.reassembly(), c.reassembly.http());
        assert_eq!((r.max_connections, r.idle_timeout_ns), (5000, 60_000_000_000));
        assert_eq!(r.max_buffered_total, ReassemblyConfig::default().max_buffered_total);
        assert_eq!(h.max_message_bytes, 1 << 20);
        let defaults = MirrorConfig::from_yaml("ports: [1]\n").unwrap().reassembly;
        assert_eq!(defaults.reassembly(), ReassemblyConfig::default());
        assert_eq!(defaults.max_message_bytes, HttpConfig::default().max_message_bytes);
    }

    #[test]
    fn tls_options_are_checked_before_anything_runs() {
        let https = "mirrors: [{ url: \"https://shadow:8443\" }]\n";
        let error = |tls: &str| {
            let c = MirrorConfig::from_yaml(&format!("{https}shadowTls: {tls}\n")).unwrap();
            format!("{:#}", c.mirror_settings().unwrap_err())
        };
        let e = error("{ caFile: /nonexistent/ca.pem }");
        assert!(e.contains("shadowTls.caFile") && e.contains("/nonexistent/ca.pem"), "{e}");
        let e = error("{ clientCert: /x.pem }");
        assert!(e.contains("shadowTls.clientKey"), "{e}");
        let e = error("{ caFile: /x.pem, insecureSkipVerify: true }");
        assert!(e.contains("shadowTls.insecureSkipVerify"), "{e}");
        let empty = std::env::temp_dir().join(format!("mirror-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = error(&format!("{{ caFile: {} }}", empty.display()));
        std::fs::remove_file(&empty).unwrap();
        assert!(e.contains("shadowTls.caFile") && e.contains("no certificate"), "{e}");
        // Plain shadows never read TLS settings; an unverified https shadow needs no file.
        let plain = "mirrors: [{ url: \"http://s:1\" }]\nshadowTls: { caFile: /nonexistent }\n";
        MirrorConfig::from_yaml(plain).unwrap().mirror_settings().unwrap();
        let insecure = format!("{https}shadowTls: {{ insecureSkipVerify: true }}\n");
        let s = MirrorConfig::from_yaml(&insecure).unwrap().mirror_settings().unwrap();
        assert!(s.shadows[0].tls.is_some());
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

    const COMPARE: &str =
        "interfaces: [lo]\nports: [8000]\ncompare:\n  candidate: http://cand:8000\n\
        \x20 secondary: http://sec:8000\n  percentage: {value: 25}\n  endpoints: ['/users/{id}']\n\
        \x20 ignore: {fields: [meta.requestId], headers: [x-trace], values: ['^\\d+$']}\n\
        \x20 thresholds: {latencyRatio: 2}\n  caps: {maxEndpoints: 50}\n";

    /// A comparison alone needs no shadow; its section converts with Diffy's defaults where
    /// it sets nothing, and safe methods only.
    #[test]
    fn compare_section() {
        let s = MirrorConfig::from_yaml(COMPARE).unwrap().mirror_settings().unwrap();
        assert!(s.shadows.is_empty());
        let c = s.compare.unwrap();
        assert_eq!(c.candidate.uri.host(), Some("cand"));
        assert_eq!(c.secondary.unwrap().uri.host(), Some("sec"));
        assert_eq!((c.percent, c.methods.join(",")), (25.0, "GET,HEAD,OPTIONS".into()));
        assert_eq!(c.endpoints.name("GET", "/users/7?x"), "GET /users/{id}");
        assert!(c.rules.ignore.ignores_field("body/meta/requestId"));
        assert!(c.rules.ignore.ignores_header("x-trace"));
        assert_eq!((c.thresholds.latency_ratio, c.thresholds.relative_pct), (2.0, 20.0));
        assert_eq!(c.caps.max_endpoints, 50);
    }

    #[test]
    fn compare_errors_name_the_field() {
        let e = |edit: &dyn Fn(&mut CompareConfig)| {
            let mut c = MirrorConfig::from_yaml(COMPARE).unwrap();
            edit(c.compare.as_mut().unwrap());
            format!("{:#}", c.mirror_settings().unwrap_err())
        };
        assert!(e(&|c| c.candidate = "ftp://x".into()).contains("compare.candidate"));
        assert!(e(&|c| c.secondary = Some("nohost".into())).contains("compare.secondary"));
        assert!(e(&|c| c.methods = vec!["post".into()])
            .contains("compare.methods: POST has side effects"));
        assert!(e(&|c| c.endpoints = vec!["users".into()]).contains("compare.endpoints"));
        assert!(e(&|c| c.ignore.values = vec!["(".into()]).contains("compare.ignore.values"));
        assert!(
            e(&|c| c.thresholds.latency_ratio = 0.5).contains("compare.thresholds.latencyRatio")
        );
        assert!(e(&|c| c.caps.max_pending = 0).contains("compare.caps.maxPending"));
        assert!(
            e(&|c| c.percentage = Some(Percentage { value: -1.0 })).contains("compare.percentage")
        );
        let mut allowed = MirrorConfig::from_yaml(COMPARE).unwrap();
        let cmp = allowed.compare.as_mut().unwrap();
        (cmp.methods, cmp.allow_side_effects) = (vec!["POST".into()], true);
        assert_eq!(allowed.mirror_settings().unwrap().compare.unwrap().methods, ["POST"]);
    }
}
