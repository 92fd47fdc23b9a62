//! `mirror run`: mirror live requests of a service to shadow services.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;
use ipnet::IpNet;
use mirror_agent::{
    control::{Command, Control, Reload},
    live::{default_workers, LiveAgent, RunOptions},
    privileges,
    watch::WatchSocket,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{
    CompareConfig, HostRewrite, MatchRule, Mirror, MirrorConfig, Percentage, StringMatch,
};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// Interface to tap, on ingress and egress (repeatable).
    #[arg(short = 'i', long = "interface")]
    interfaces: Vec<String>,
    /// Follow interfaces by name, as pods come and go: globs separated by `|`, e.g.
    /// 'veth*|cali*|lxc*|eni*' (attached as they appear, detached as they go).
    #[arg(long, value_name = "GLOBS")]
    iface_pattern: Option<String>,
    /// Pin the TCX links and the maps on bpffs (default /sys/fs/bpf/mirror) and take over
    /// what an earlier agent pinned there: a restart swaps the program in place, without a
    /// moment uncaptured (`mirror cleanup` removes what is pinned).
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true,
          default_missing_value = mirror_tap::DEFAULT_PIN_DIR)]
    pin: Option<PathBuf>,
    /// With --pin: leave everything pinned and capturing at exit, for the next agent (an
    /// upgrade). Without it, SIGTERM detaches and unpins everything.
    #[arg(long)]
    keep_attached: bool,
    /// The container runtime's CRI socket, to name pods `namespace/name` (default: containerd's,
    /// /run/containerd/containerd.sock, when it exists; "none": pods are named by their network
    /// namespace's file under /run/netns).
    #[arg(long, value_name = "PATH")]
    cri_socket: Option<String>,
    /// Attach an XDP program instead of tc (services on the host network): in the driver
    /// where it has XDP, the generic path otherwise; it always passes the packet. XDP sees
    /// only what arrives on an interface, never what leaves it: the requests to a service
    /// there are mirrored, its responses are not seen (so no --compare).
    #[arg(long)]
    xdp: bool,
    /// Check the configuration (the file and the flags) and exit: 0 and "configuration ok",
    /// or 2 and the field at fault. Nothing is attached.
    #[arg(long)]
    check: bool,
    /// Service port (repeatable).
    #[arg(short = 'p', long = "port")]
    ports: Vec<u16>,
    /// Only services in this network (repeatable).
    #[arg(long = "service-net")]
    service_nets: Vec<IpNet>,
    /// Ring buffer size in bytes (power of two).
    #[arg(long)]
    ring_bytes: Option<u32>,
    /// Unix socket where `mirror dump --watch` sees the mirrored requests ("none": off).
    #[arg(long, default_value = mirror_agent::watch::DEFAULT_SOCKET)]
    watch_socket: String,
    /// The group allowed to watch (name or id): the socket is then 0660 with this group,
    /// else 0600 (it streams request heads, credentials included).
    #[arg(long, value_name = "GROUP")]
    watch_group: Option<String>,
    /// Worker threads, each with its own ring, flow table and shadow connections (the
    /// kernel puts each connection in one ring); default: one per CPU the agent may use, at
    /// most 8. A shadow's in-flight copies and rate limit are divided among them.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=mirror_tap::MAX_RINGS as i64))]
    pub threads: Option<u16>,
    #[command(flatten)]
    mirror: MirrorArgs,
}

/// Where and how requests are mirrored: shared by `mirror run` and `mirror replay`.
#[derive(Args, Debug)]
pub(crate) struct MirrorArgs {
    /// Shadow service, optionally with its own percentage: http[s]://host:port[@PERCENT]
    /// (repeatable).
    #[arg(long = "shadow")]
    shadows: Vec<String>,
    /// https shadows: trust the CA certificates of this PEM file instead of the system's.
    #[arg(long, value_name = "PEM")]
    shadow_ca: Option<PathBuf>,
    /// https shadows: accept any certificate, unverified (a throwaway test certificate).
    #[arg(long)]
    shadow_insecure: bool,
    /// https shadows: present this client certificate chain (mTLS; with --shadow-key).
    #[arg(long, value_name = "PEM")]
    shadow_cert: Option<PathBuf>,
    /// https shadows: the client certificate's private key.
    #[arg(long, value_name = "PEM")]
    shadow_key: Option<PathBuf>,
    /// Percentage of requests mirrored (0-100, fractions allowed) where a shadow sets none.
    #[arg(long)]
    percent: Option<f64>,
    /// Sample consistently by this header's value (a user id, a session cookie).
    #[arg(long)]
    sample_by_header: Option<String>,
    /// Host of the copies: `suffix` (Envoy: host:port -> host-shadow:port), `keep`, or a
    /// literal host.
    #[arg(long)]
    host_rewrite: Option<String>,
    /// Mirror only these methods (repeatable).
    #[arg(long = "match-method")]
    match_methods: Vec<String>,
    /// Mirror only targets starting with this.
    #[arg(long)]
    match_path_prefix: Option<String>,
    /// Mirror only targets matching this regex (whole target).
    #[arg(long)]
    match_path_regex: Option<String>,
    /// Header condition: NAME=VALUE (exact), NAME^=PREFIX or NAME~=REGEX (repeatable).
    #[arg(long = "match-header")]
    match_headers: Vec<String>,
    /// Set a header on the copies: NAME:VALUE (repeatable).
    #[arg(long = "set-header")]
    set_headers: Vec<String>,
    /// Append a header to the copies: NAME:VALUE (repeatable).
    #[arg(long = "add-header")]
    add_headers: Vec<String>,
    /// Remove a header from the copies, e.g. Authorization (repeatable).
    #[arg(long = "remove-header")]
    remove_headers: Vec<String>,
    /// Requests in flight per shadow.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Copies waiting per shadow (and worker) before new ones are dropped.
    #[arg(long)]
    queue_length: Option<usize>,
    /// Per-copy timeout in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Requests per second per shadow.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Copies pipelined per shadow connection at most (HTTP/1.1 pipelining; default 16;
    /// 1: none). A shadow that fails behind a pipelined copy gets one at a time.
    #[arg(long)]
    pipeline: Option<usize>,
    /// Serve Prometheus metrics, /healthz and /readyz on this address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Serve the metrics and the comparison's JSON API (/api/...) on this address, e.g.
    /// 127.0.0.1:9180 (results of anything but loopback can be read by whoever reaches it).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// YAML configuration (Istio-like names); flags extend and override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seed of the sampling random numbers (a run is reproducible with one worker,
    /// `--threads 1`: which worker a connection goes to depends on its client port).
    #[arg(long)]
    seed: Option<u64>,
    /// Print a line per copy when its shadow answers.
    #[arg(long)]
    pub log_requests: bool,
    /// Compare the candidate's answers with the primary's (with --candidate).
    #[arg(long)]
    compare: bool,
    /// The new version the primary is compared with: http[s]://host:port.
    #[arg(long, value_name = "URL")]
    candidate: Option<String>,
    /// A second instance of the primary's version: what differs between it and the primary
    /// is noise.
    #[arg(long, value_name = "URL")]
    secondary: Option<String>,
    /// Percentage of the eligible requests compared (default 100).
    #[arg(long)]
    compare_percent: Option<f64>,
    /// Compare this method (repeatable; default GET, HEAD, OPTIONS).
    #[arg(long = "compare-method")]
    compare_methods: Vec<String>,
    /// Compare methods with side effects too: the candidate and the secondary act on them.
    #[arg(long)]
    allow_side_effects: bool,
    /// Endpoint template, e.g. /users/{id} (repeatable; first match wins).
    #[arg(long = "compare-endpoint")]
    compare_endpoints: Vec<String>,
    /// Leave a field out of the comparison: body/user/id, user.*.id, header/x-req (repeatable).
    #[arg(long = "compare-ignore")]
    compare_ignore: Vec<String>,
    /// A latency regression needs the candidate's median slower than the baseline's by at
    /// least this many milliseconds (default 10; and 1.5 times).
    #[arg(long, value_name = "MS")]
    compare_latency_min_ms: Option<f64>,
    /// Save the comparison's results in this file (and start from what it holds); `mirror
    /// diff report --store FILE` reads it.
    #[arg(long, value_name = "FILE")]
    compare_store: Option<PathBuf>,
}

impl RunArgs {
    /// The configuration: the file, extended and overridden by the flags.
    fn config(&self) -> Result<MirrorConfig> {
        let mut c = self.mirror.config()?;
        if let Some(bytes) = self.ring_bytes {
            c.ring_bytes = Some(bytes);
        }
        c.interfaces.extend(self.interfaces.iter().cloned());
        if let Some(p) = &self.iface_pattern {
            c.interface_pattern = Some(p.clone());
        }
        c.pin = self.pin.clone().or(c.pin.take());
        c.xdp |= self.xdp;
        if let Some(socket) = &self.cri_socket {
            c.cri_socket = Some(socket.into());
        }
        c.keep_attached |= self.keep_attached;
        c.ports.extend(&self.ports);
        c.service_nets.extend(&self.service_nets);
        Ok(c)
    }
}

impl MirrorArgs {
    /// The configuration file, if one is given.
    pub(crate) fn config_path(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The configuration file (if any), extended and overridden by these flags.
    pub(crate) fn config(&self) -> Result<MirrorConfig> {
        let mut c = match &self.config {
            Some(path) => MirrorConfig::from_file(path)?,
            None => MirrorConfig::default(),
        };
        for s in &self.shadows {
            c.mirrors.push(parse_shadow_flag(s)?);
        }
        let tls = &mut c.shadow_tls;
        tls.ca_file = self.shadow_ca.clone().or(tls.ca_file.take());
        tls.insecure_skip_verify |= self.shadow_insecure;
        tls.client_cert = self.shadow_cert.clone().or(tls.client_cert.take());
        tls.client_key = self.shadow_key.clone().or(tls.client_key.take());
        if let Some(p) = self.percent {
            c.mirror_percentage = Some(Percentage { value: p });
        }
        if let Some(h) = &self.sample_by_header {
            c.sample_by_header = Some(h.clone());
        }
        if let Some(h) = &self.host_rewrite {
            c.host_rewrite = match h.as_str() {
                "suffix" => HostRewrite::ShadowSuffix,
                "keep" => HostRewrite::Keep,
                literal => HostRewrite::Literal(literal.to_owned()),
            };
        }
        if let Some(rule) = self.match_rule()? {
            c.match_rules.push(rule);
        }
        let ops = &mut c.headers.request;
        for h in &self.set_headers {
            let (n, v) = split_header("--set-header", h)?;
            ops.set.insert(n, v);
        }
        for h in &self.add_headers {
            let (n, v) = split_header("--add-header", h)?;
            ops.add.insert(n, v);
        }
        ops.remove.extend(self.remove_headers.iter().cloned());
        let l = &mut c.limits;
        l.max_in_flight = self.max_in_flight.unwrap_or(l.max_in_flight);
        l.queue_length = self.queue_length.unwrap_or(l.queue_length);
        l.timeout_ms = self.timeout_ms.unwrap_or(l.timeout_ms);
        l.rate_limit = self.rate_limit.or(l.rate_limit);
        l.pipeline = self.pipeline.unwrap_or(l.pipeline);
        c.metrics = self.metrics.or(c.metrics);
        c.admin = self.admin.or(c.admin);
        c.seed = self.seed.or(c.seed);
        self.compare_config(&mut c)?;
        Ok(c)
    }

    /// `--compare` and its flags, over the file's `compare:` section.
    fn compare_config(&self, c: &mut MirrorConfig) -> Result<()> {
        let flags = self.candidate.is_some()
            || self.secondary.is_some()
            || self.compare_percent.is_some()
            || !self.compare_methods.is_empty()
            || self.allow_side_effects
            || !self.compare_endpoints.is_empty()
            || !self.compare_ignore.is_empty()
            || self.compare_store.is_some()
            || self.compare_latency_min_ms.is_some();
        if flags && !self.compare && c.compare.is_none() {
            bail!("--candidate, --secondary and the --compare-* flags need --compare");
        }
        if !self.compare && c.compare.is_none() {
            return Ok(());
        }
        let cmp = c.compare.get_or_insert_with(CompareConfig::default);
        if let Some(url) = &self.candidate {
            cmp.candidate = url.clone();
        }
        if cmp.candidate.is_empty() {
            bail!("--compare: a candidate is required (--candidate URL)");
        }
        cmp.secondary = self.secondary.clone().or(cmp.secondary.take());
        if let Some(p) = self.compare_percent {
            cmp.percentage = Some(Percentage { value: p });
        }
        cmp.methods.extend(self.compare_methods.iter().cloned());
        cmp.allow_side_effects |= self.allow_side_effects;
        cmp.endpoints.extend(self.compare_endpoints.iter().cloned());
        cmp.ignore.fields.extend(self.compare_ignore.iter().cloned());
        cmp.store = self.compare_store.clone().or(cmp.store.take());
        if let Some(ms) = self.compare_latency_min_ms {
            cmp.thresholds.latency_min_ms = ms;
        }
        Ok(())
    }

    fn match_rule(&self) -> Result<Option<MatchRule>> {
        let mut rule = MatchRule { methods: self.match_methods.clone(), ..MatchRule::default() };
        rule.uri = match (&self.match_path_prefix, &self.match_path_regex) {
            (Some(_), Some(_)) => {
                bail!("--match-path-prefix and --match-path-regex exclude each other")
            }
            (Some(p), None) => Some(StringMatch::Prefix(p.clone())),
            (None, Some(r)) => Some(StringMatch::Regex(r.clone())),
            (None, None) => None,
        };
        for h in &self.match_headers {
            let (name, cond) = if let Some((n, v)) = h.split_once("^=") {
                (n, StringMatch::Prefix(v.to_owned()))
            } else if let Some((n, v)) = h.split_once("~=") {
                (n, StringMatch::Regex(v.to_owned()))
            } else if let Some((n, v)) = h.split_once('=') {
                (n, StringMatch::Exact(v.to_owned()))
            } else {
                bail!("--match-header {h:?}: expected NAME=VALUE, NAME^=PREFIX or NAME~=REGEX");
            };
            rule.headers.insert(name.to_ascii_lowercase(), cond);
        }
        let empty = rule.methods.is_empty() && rule.uri.is_none() && rule.headers.is_empty();
        Ok((!empty).then_some(rule))
    }
}

fn parse_shadow_flag(s: &str) -> Result<Mirror> {
    let (url, percent) = match s.rsplit_once('@') {
        Some((url, p)) => {
            let value: f64 =
                p.parse().with_context(|| format!("--shadow {s:?}: bad percentage"))?;
            (url, Some(Percentage { value }))
        }
        None => (s, None),
    };
    Ok(Mirror { url: url.to_owned(), mirror_percentage: percent })
}

fn split_header(flag: &str, h: &str) -> Result<(String, String)> {
    let (n, v) = h.split_once(':').with_context(|| format!("{flag} {h:?}: expected NAME:VALUE"))?;
    Ok((n.trim().to_owned(), v.trim().to_owned()))
}

pub(crate) async fn run(args: RunArgs) -> Result<ExitCode> {
    // What the file held before it was read: a change while the agent starts is reloaded.
    let read_at_start = args.mirror.config_path().and_then(|p| std::fs::read(p).ok());
    let (tap, settings, config) = match args.config().and_then(|c| c.live()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mirror run: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if args.check {
        eprintln!("mirror run: configuration ok");
        return Ok(ExitCode::SUCCESS);
    }
    let group = match args.watch_group.as_deref().map(group_id).transpose() {
        Ok(group) => group,
        Err(e) => {
            eprintln!("mirror run: --watch-group: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let watch_socket = (args.watch_socket != "none")
        .then(|| WatchSocket { path: PathBuf::from(&args.watch_socket), group });
    let opts = RunOptions {
        tap,
        drop_privileges: true,
        cri_socket: config.cri_socket(),
        keep_attached: config.keep_attached,
        metrics: config.metrics,
        admin: config.admin,
        watch_socket,
        results: crate::signals::request_log(args.mirror.log_requests),
        workers: args.threads.map_or_else(default_workers, usize::from),
    };
    // Signals are handled from before the first attachment: a signal at any moment detaches,
    // and SIGHUP (whose default is to end the process) reloads.
    if let Err(e) = privileges::check() {
        eprintln!("mirror run: {e:#}");
        return Ok(ExitCode::from(2));
    }
    let shutdown = crate::signals::shutdown_signal()?;
    let hangup = signal(SignalKind::hangup())?;
    let agent = LiveAgent::start(settings, opts).await?;
    let control = agent.control();
    let reloads = tokio::spawn(reload_on_change(args, config, read_at_start, hangup, control));
    eprintln!("mirror run: ready");
    let summary = agent.run(shutdown).await?;
    reloads.abort();
    eprintln!("mirror run: stopped\n{summary}");
    Ok(ExitCode::SUCCESS)
}

/// A group's id, from its name or number.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(id) = group.parse() {
        return Ok(id);
    }
    let name = std::ffi::CString::new(group).context("a group name")?;
    // SAFETY: getgrnam with a NUL-terminated name; the entry is read at once, before any
    // other call could reuse its static storage (the agent is single-threaded here).
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("no group {group:?}");
    }
    // SAFETY: a non-null entry from getgrnam.
    Ok(unsafe { (*entry).gr_gid })
}

/// Reloads on SIGHUP, and when the configuration file's content changes: polled every
/// second, since a mounted ConfigMap changes by a symlink swap in its directory (`..data`),
/// which a poll of the content sees whatever the mechanism, for one small read a second.
/// The whole configuration is built again (the file, then the flags over it) and checked
/// before the agent gets it; a bad one is refused, naming the field, and the running one
/// stays in force.
async fn reload_on_change(
    args: RunArgs,
    started: MirrorConfig,
    mut last: Option<Vec<u8>>,
    mut hangup: tokio::signal::unix::Signal,
    control: Control,
) {
    let path = args.mirror.config_path().map(PathBuf::from);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    for n in 1.. {
        let why = loop {
            tokio::select! {
                _ = hangup.recv() => {
                    // What is read now is what the poll would reload next: not again.
                    last = path.as_deref().and_then(|p| std::fs::read(p).ok()).or(last);
                    break "SIGHUP";
                }
                _ = poll.tick(), if path.is_some() => {
                    // Unreadable for a moment (mid-swap): the next poll reads it.
                    let now = path.as_deref().and_then(|p| std::fs::read(p).ok());
                    if now.is_some() && now != last {
                        last = now;
                        break "the configuration file changed";
                    }
                }
            }
        };
        let reload = args.config().and_then(|c| {
            c.unchanged_for_reload(&started)?;
            let (tap, settings, _) = c.live()?;
            Ok(Reload { tap, settings })
        });
        let applied = match reload {
            Ok(reload) => control.send(Command::Reload(Box::new(reload))).await,
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => eprintln!("mirror run: reload {n} ({why}) applied"),
            Err(e) => eprintln!(
                "mirror run: reload {n} ({why}) rejected, the running configuration stays: {e:#}"
            ),
        }
    }
}
