//! Fidelity against offered load (BENCHMARKS.md, scenario 2): at fixed request rates, what
//! fraction of the primary's requests reaches the shadow byte-exact, with every miss
//! attributed from the agent's own counters; beside it, tcpdump's kernel drop count on the
//! same interface at the same load. Run by `cargo xtask bench fidelity`; needs root and oha.
//!
//! Primary and shadow are `DigestServer`s: each keeps a digest per request (method, target,
//! headers but Host, body), so "byte-exact" is checked for every request, at any rate.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use mirror_agent::rewrite::shadow_host;
use mirror_tests::{
    agent::{self, AgentProcess},
    bench::{self, CpuMeter, Spread},
    digest::{DigestServer, Digests},
    http_url,
    topology::{Family, Topology},
};

const RUNS: usize = 3;
const SECONDS: u64 = 5;
const PORT: u16 = 8000;
const METRICS_PORT: u16 = 9464;
const POST_BODY: usize = 16 * 1024;
const XFF: &str = "x-forwarded-for";

struct Workload {
    name: &'static str,
    rates: &'static [u32],
    /// oha flags besides rate, duration and URL.
    flags: Vec<String>,
    /// `mirror run` flags besides the defaults.
    agent_flags: &'static [&'static str],
}

/// One run's accounting, in requests.
#[derive(Clone, Copy, Debug, Default)]
struct Outcome {
    achieved_rps: f64,
    /// Requests the primary answered.
    primary: u64,
    /// Copies the shadow got byte-exact.
    delivered: u64,
    /// Never framed: lost with ring records or in reassembly gaps.
    not_captured: u64,
    /// Framed but not offered to the shadow (match rules, sampling, not copyable).
    skipped: u64,
    /// Dropped before sending: queue full, byte budget, rate limit.
    queue_full: u64,
    /// Sent but failed (connection error, timeout, 5xx).
    shadow_error: u64,
    /// Arrived, but not identical to what the primary got.
    not_exact: u64,
    /// Kernel records lost because the ring was full, and reassembly gap bytes (the causes
    /// of `not_captured`).
    ring_lost_records: u64,
    gap_bytes: u64,
    agent_us_per_request: f64,
}

impl Outcome {
    fn unexplained(&self) -> i64 {
        self.primary as i64
            - (self.delivered
                + self.not_captured
                + self.skipped
                + self.queue_full
                + self.shadow_error
                + self.not_exact) as i64
    }
}

/// The agent's Prometheus metrics, `name{labels}` -> value (absent counters are zero).
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn scrape() -> Metrics {
        let text = std::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{METRICS_PORT}/metrics")])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect(),
        )
    }

    /// Sum over every series of `name` whose labels contain all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
            .map(|(_, v)| *v as u64)
            .sum()
    }
}

struct Bench {
    topo: Topology,
    primary: DigestServer,
    shadow: DigestServer,
    shadow_url: String,
}

impl Bench {
    fn new() -> Bench {
        let topo = Topology::new().unwrap();
        let authority = SocketAddr::new(topo.server_addr(Family::V4), PORT).to_string();
        // The copy differs from the original only where a mirror edits it (as Envoy does):
        // Host gets `-shadow`, X-Forwarded-For the client's address.
        let primary = DigestServer::start(&topo.server, PORT, vec![("host", None), (XFF, None)]);
        let client = topo.client_addr(Family::V4).to_string();
        let edited = vec![("host", Some(shadow_host(&authority))), (XFF, Some(client))];
        let shadow = DigestServer::start(&topo.shadow, PORT, edited);
        let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
        Bench { topo, primary, shadow, shadow_url }
    }

    /// A URL pattern for oha's `--rand-regex-url`: every request gets its own target.
    fn url_pattern(&self) -> String {
        // oha's generator does not honour `\.`; a one-character class does.
        let host = self.topo.server_addr(Family::V4).to_string().replace('.', "[.]");
        format!("http://{host}:{PORT}/items/[a-z0-9]{{16}}")
    }

    fn agent(&self, extra: &[&str]) -> AgentProcess {
        let metrics = format!("127.0.0.1:{METRICS_PORT}");
        let iface = &self.topo.server_host_if;
        let mut flags = vec!["--metrics", &metrics];
        flags.extend(extra);
        let args = agent::run_args(iface, PORT, &self.shadow_url, &flags);
        AgentProcess::start(&args, "mirror run: ready")
    }

    fn run(&self, w: &Workload, rate: u32) -> Outcome {
        self.primary.clear();
        self.shadow.clear();
        let agent = self.agent(w.agent_flags);
        let meter = CpuMeter::start(Some(agent.pid()));
        let flags: Vec<&str> = w.flags.iter().map(String::as_str).collect();
        let load = bench::oha(&self.topo.client, rate, SECONDS, 32, &flags, &self.url_pattern());
        let metrics = settle();
        let cpu = meter.stop();
        agent.stop();
        let (primary, shadow) = (self.primary.digests(), self.shadow.digests());
        account(&primary, &shadow, &metrics, load.rps, cpu.process_seconds)
    }
}

/// Waits until every copy was answered or dropped (the agent's queue is empty and its
/// counters stopped moving), then returns the final metrics. Polls more slowly than the
/// agent's once-a-second sync of its reassembly and HTTP counters, so two equal scrapes in a
/// row mean the pipeline is idle.
fn settle() -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, u64::MAX);
    loop {
        // A benchmark, not a test: the agent has no "idle" signal to wait on.
        std::thread::sleep(Duration::from_millis(1100));
        let m = Metrics::scrape();
        let done =
            m.sum("mirror_shadow_requests_total", &[]) + m.sum("mirror_shadow_dropped_total", &[]);
        let now = (done, m.sum("mirror_http_total", &["\"requests\""]));
        if (now == last && m.sum("mirror_shadow_queue_depth", &[]) == 0)
            || Instant::now() > deadline
        {
            return m;
        }
        last = now;
    }
}

fn account(p: &Digests, s: &Digests, m: &Metrics, rps: f64, cpu_s: f64) -> Outcome {
    let primary = p.total();
    let delivered = p.common(s);
    let captured = m.sum("mirror_http_total", &["\"requests\""]);
    let drop = |reason: &str| m.sum("mirror_shadow_dropped_total", &[&format!("\"{reason}\"")]);
    Outcome {
        achieved_rps: rps,
        primary,
        delivered,
        not_captured: primary.saturating_sub(captured),
        skipped: m.sum("mirror_requests_skipped_total", &[])
            + m.sum("mirror_shadow_not_sampled_total", &[]),
        queue_full: drop("queue_full") + drop("byte_budget") + drop("rate_limited"),
        shadow_error: drop("error")
            + drop("timeout")
            + m.sum("mirror_shadow_requests_total", &["\"5xx\""]),
        not_exact: s.total() + s.wrong_edits - delivered,
        ring_lost_records: m.sum("mirror_kernel_total", &["\"lost\""]),
        gap_bytes: m.sum("mirror_reassembly_total", &["\"gap_bytes\""]),
        agent_us_per_request: 1e6 * cpu_s / captured.max(1) as f64,
    }
}

/// tcpdump on the same interface at the same load: its kernel drop count (and what it saw).
fn tcpdump_drops(b: &Bench, w: &Workload, rate: u32) -> (u64, u64) {
    let mut child = std::process::Command::new("tcpdump")
        .args(["-i", &b.topo.server_host_if, "-s", "0", "-w", "/dev/null"])
        .arg(format!("tcp port {PORT}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    // tcpdump says "listening on IFACE" once the capture is attached.
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {}
    let flags: Vec<&str> = w.flags.iter().map(String::as_str).collect();
    bench::oha(&b.topo.client, rate, SECONDS, 32, &flags, &b.url_pattern());
    // SAFETY: kill(2) on our child; SIGINT makes tcpdump print its statistics.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    child.wait().unwrap();
    let count = |what: &str| -> u64 {
        rest.lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (count("dropped by kernel"), count("received by filter"))
}

fn table(b: &Bench, w: &Workload) -> String {
    let mut t = format!(
        "{}: oha -c32 -z{SECONDS}s -q RATE, a distinct target per request; median (min-max) \
         of {RUNS} runs, each with a fresh agent. Misses are counted by the agent: not captured \
         (ring full or reassembly gap; the kernel's lost records and the gap bytes beside), \
         queue (full queue, byte budget, rate limit), shadow (error, timeout, 5xx), not exact \
         (arrived but differs); unexplained = primary - delivered - all of those.\n\n\
         | offered/s | achieved/s | primary requests | delivered byte-exact | not captured \
         (ring lost records, gap bytes) | skipped | queue | shadow | not exact | unexplained \
         | agent CPU per request | tcpdump: dropped by kernel / received |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        w.name
    );
    for &rate in w.rates {
        let runs: Vec<Outcome> = (0..RUNS).map(|_| b.run(w, rate)).collect();
        let tcpdump: Vec<(u64, u64)> = (0..RUNS).map(|_| tcpdump_drops(b, w, rate)).collect();
        let s = |f: fn(&Outcome) -> f64| Spread::of(runs.iter().map(f));
        let pct = Spread::of(runs.iter().map(|o| 100.0 * o.delivered as f64 / o.primary as f64));
        let median_run = &runs[runs.len() / 2];
        t += &format!(
            "| {rate} | {:.0} | {} | {} % | {} ({}, {}) | {} | {} | {} | {} | {} | {:.1} µs | {} / {} |\n",
            s(|o| o.achieved_rps).median,
            s(|o| o.primary as f64).show(0),
            pct.show(2),
            s(|o| o.not_captured as f64).show(0),
            s(|o| o.ring_lost_records as f64).median,
            s(|o| o.gap_bytes as f64).median,
            s(|o| o.skipped as f64).median,
            s(|o| o.queue_full as f64).show(0),
            s(|o| o.shadow_error as f64).show(0),
            s(|o| o.not_exact as f64).show(0),
            runs.iter().map(|o| o.unexplained().to_string()).collect::<Vec<_>>().join(", "),
            median_run.agent_us_per_request,
            Spread::of(tcpdump.iter().map(|d| d.0 as f64)).show(0),
            Spread::of(tcpdump.iter().map(|d| d.1 as f64)).median,
        );
    }
    t
}

fn main() {
    mirror_tests::require_root();
    let b = Bench::new();
    let body = std::env::temp_dir().join(format!("mirror-bench-body-{}", std::process::id()));
    let pattern: Vec<u8> = (0..POST_BODY).map(|i| b"0123456789abcdef"[(i * 7) % 16]).collect();
    std::fs::write(&body, pattern).unwrap();
    let get = || vec!["--rand-regex-url".to_string()];
    let post: Vec<String> = ["--rand-regex-url", "-m", "POST", "-D", &body.display().to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let workloads = [
        Workload {
            name: "Small GETs",
            rates: &[1000, 5000, 10000, 20000, 40000],
            flags: get(),
            agent_flags: &[],
        },
        Workload {
            name: "16 KiB POSTs",
            rates: &[1000, 5000, 10000, 20000],
            flags: post.clone(),
            agent_flags: &[],
        },
        Workload {
            name: "Small GETs, one worker (`--threads 1`)",
            rates: &[20000, 40000],
            flags: get(),
            agent_flags: &["--threads", "1"],
        },
        Workload {
            name: "16 KiB POSTs, one worker (`--threads 1`)",
            rates: &[20000],
            flags: post,
            agent_flags: &["--threads", "1"],
        },
    ];
    let report: Vec<String> = workloads.iter().map(|w| table(&b, w)).collect();
    let _ = std::fs::remove_file(&body);
    bench::report("fidelity", &report.join("\n"));
}
