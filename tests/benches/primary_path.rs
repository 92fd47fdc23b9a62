//! Primary-path overhead (BENCHMARKS.md, scenario 1), and the kernel program's run time per
//! packet under that load (scenario 3, in part). Run by `cargo xtask bench primary_path`;
//! needs root, nginx, wrk and oha.
//!
//! Topology: client namespace -> root namespace (the node) -> primary namespace, the tap on
//! the primary's node-side veth; shadows in their own namespace. The primary is nginx
//! returning a small body. Saturated throughput comes from wrk (closed loop); latency at fixed
//! offered rates from oha (`-q`, latency measured from when each request was due). Every
//! figure is the median of `RUNS` runs with the spread beside it, all measured in one run.
use std::{net::SocketAddr, time::Duration};

use mirror_tests::{
    agent::{self, AgentProcess},
    bench::{self, CpuMeter, CpuUse, Load, Nginx, Spread},
    http_url,
    server::{Behavior, RecordingServer},
    topology::{Family, Topology},
};

const RUNS: usize = 3;
/// Latency percentiles of a shared two-core machine vary more than throughput does.
const FIXED_RATE_RUNS: usize = 5;
const SATURATED_SECONDS: u64 = 8;
const FIXED_RATE_SECONDS: u64 = 6;
const PORT: u16 = 8000;
/// Where the nginx mirror proxy (the anchor) listens, in the primary's namespace.
const PROXY_PORT: u16 = 8080;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    /// (a) nothing attached.
    Bare,
    /// (b) tap and agent, nothing replayed.
    TapOnly,
    /// (c) every request mirrored to a live shadow.
    Mirror,
    /// (d) nginx's `mirror` directive as an inline proxy.
    NginxMirror,
    /// (e) every request mirrored to a shadow that answers after 100 ms.
    MirrorSlowShadow,
    /// (f) as (c), copies pipelined on the shadow connections.
    MirrorPipelined,
}

const CONFIGS: [Config; 6] = [
    Config::Bare,
    Config::TapOnly,
    Config::Mirror,
    Config::NginxMirror,
    Config::MirrorSlowShadow,
    Config::MirrorPipelined,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) nothing attached",
            Config::TapOnly => "(b) tap + agent, nothing replayed (`--percent 0`)",
            Config::Mirror => "(c) full mirroring to a live shadow",
            Config::NginxMirror => "(d) nginx `mirror`, inline proxy, live shadow",
            Config::MirrorSlowShadow => "(e) full mirroring to a 100 ms shadow",
            Config::MirrorPipelined => "(f) as (c), 16 copies pipelined per connection",
        }
    }

    fn short(self) -> &'static str {
        &self.label()[..3]
    }
}

struct Bench {
    topo: Topology,
    live_shadow: String,
    slow_shadow: String,
    _servers: (Nginx, Nginx, Nginx, RecordingServer),
}

/// One measurement: the load generator's figures and the CPU it cost.
struct Sample {
    load: Load,
    cpu: CpuUse,
    kernel: Option<KernelRuns>,
}

impl Bench {
    fn new() -> Bench {
        let topo = Topology::new().unwrap();
        let primary = Nginx::hello(&topo.server, "primary", PORT);
        let shadow = Nginx::hello(&topo.shadow, "shadow", PORT);
        // A slow shadow: answers after 100 ms (a second port in the shadow namespace).
        let slow = RecordingServer::start_with(
            &topo.shadow,
            &[PORT + 1],
            Behavior::Slow(Duration::from_millis(100)),
        );
        let shadow_addr = topo.shadow_addr(Family::V4);
        let proxy = mirror_proxy(&topo, &format!("{shadow_addr}:{PORT}"));
        for (ns, addr, port) in [
            (&topo.client, topo.server_addr(Family::V4), PORT),
            (&topo.client, shadow_addr, PORT),
            (&topo.client, topo.server_addr(Family::V4), PROXY_PORT),
        ] {
            bench::wait_listening(ns, SocketAddr::new(addr, port));
        }
        Bench {
            live_shadow: http_url(shadow_addr, PORT, ""),
            slow_shadow: http_url(shadow_addr, PORT + 1, ""),
            topo,
            _servers: (primary, shadow, proxy, slow),
        }
    }

    fn agent(&self, config: Config) -> Option<AgentProcess> {
        let (shadow, extra): (&str, &[&str]) = match config {
            Config::Bare | Config::NginxMirror => return None,
            Config::TapOnly => (&self.live_shadow, &["--percent", "0"]),
            Config::Mirror => (&self.live_shadow, &[]),
            Config::MirrorSlowShadow => (&self.slow_shadow, &[]),
            Config::MirrorPipelined => (&self.live_shadow, &["--pipeline", "16"]),
        };
        let args = agent::run_args(&self.topo.server_host_if, PORT, shadow, extra);
        Some(AgentProcess::start(&args, "mirror run: ready"))
    }

    fn url(&self, config: Config) -> String {
        let port = if config == Config::NginxMirror { PROXY_PORT } else { PORT };
        http_url(self.topo.server_addr(Family::V4), port, "/")
    }

    /// One run of `load` against `config`, with the agent (if any) started fresh.
    fn measure(&self, config: Config, load: impl FnOnce(&str) -> Load) -> Sample {
        let agent = self.agent(config);
        let kernel_before = KernelRuns::now();
        let meter = CpuMeter::start(agent.as_ref().map(AgentProcess::pid));
        let profile = agent.as_ref().and_then(|a| Profile::start(config, a.pid()));
        let load = load(&self.url(config));
        let cpu = meter.stop();
        drop(profile);
        let kernel = agent.as_ref().map(|_| KernelRuns::now().since(&kernel_before));
        if let Some(a) = agent {
            a.stop();
        }
        Sample { load, cpu, kernel }
    }

    /// `RUNS` rounds over `configs`, one run of each per round: interleaving spreads slow
    /// drifts of a shared machine over every configuration instead of biasing one.
    fn rounds(
        &self,
        runs: usize,
        configs: &[Config],
        load: impl Fn(&str) -> Load,
    ) -> Vec<(Config, Vec<Sample>)> {
        let mut results: Vec<(Config, Vec<Sample>)> =
            configs.iter().map(|&c| (c, Vec::new())).collect();
        for _ in 0..runs {
            for (config, samples) in &mut results {
                samples.push(self.measure(*config, &load));
            }
        }
        results
    }
}

/// The anchor, (d): nginx's `mirror` directive, inline in front of the same primary (in the
/// primary's namespace), mirroring to the shadow at `shadow`.
///
/// nginx runs mirror subrequests header-only: it never reads the shadow's response body, so
/// it cannot keep that upstream connection alive and opens one connection to the shadow per
/// mirrored request. At thousands of requests per second the proxy's ephemeral ports sit in
/// TIME_WAIT within seconds and throughput collapses to about 470 requests/s (28 000 ports /
/// 60 s); operators of such a proxy enable `tcp_tw_reuse`, so the anchor does too.
fn mirror_proxy(topo: &Topology, shadow: &str) -> Nginx {
    let out = topo
        .server
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"])
        .status()
        .unwrap();
    assert!(out.success(), "sysctl in the primary's namespace");
    let http = format!(
        "upstream primary {{ server 127.0.0.1:{PORT}; keepalive 64; }}\n\
         upstream shadow {{ server {shadow}; keepalive 64; }}\n\
         server {{ listen {PROXY_PORT};\n\
           location / {{ mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_pass http://primary; }}\n\
           location = /mirror {{ internal; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_set_header Host $host-shadow; proxy_pass http://shadow$request_uri; }} }}"
    );
    Nginx::start(&topo.server, "proxy", &http)
}

/// `MIRROR_BENCH_PERF=c` (a configuration's letter): records the agent's on-CPU stacks with
/// perf during that configuration's runs, into `perf-c.data` next to the report.
struct Profile(std::process::Child);

impl Profile {
    fn start(config: Config, pid: u32) -> Option<Profile> {
        let want = std::env::var("MIRROR_BENCH_PERF").ok()?;
        if config.short() != format!("({want})") {
            return None;
        }
        let out = std::env::var("MIRROR_BENCH_OUT").unwrap_or_else(|_| ".".into());
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-F",
                "499",
                "--call-graph",
                "dwarf,8192",
                "-p",
                &pid.to_string(),
            ])
            .arg("-o")
            .arg(format!("{out}/perf-{want}.data"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Profile(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child; SIGINT makes perf write its data and exit.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Run count and run time of the tap's programs (`kernel.bpf_stats_enabled`).
#[derive(Clone, Copy, Default)]
struct KernelRuns {
    ns: u64,
    count: u64,
}

impl KernelRuns {
    fn now() -> KernelRuns {
        let mut k = KernelRuns::default();
        for p in aya::programs::loaded_programs().flatten() {
            if matches!(p.name_as_str(), Some("mirror_ingress" | "mirror_egress")) {
                k.ns += p.run_time().as_nanos() as u64;
                k.count += p.run_count();
            }
        }
        k
    }

    /// Runs since `before`, which is taken once the fresh agent is ready: only the runs of
    /// the measured load count, not whatever crossed the interface while it started.
    fn since(&self, before: &KernelRuns) -> KernelRuns {
        KernelRuns {
            ns: self.ns.saturating_sub(before.ns),
            count: self.count.saturating_sub(before.count),
        }
    }

    fn ns_per_run(&self) -> f64 {
        self.ns as f64 / self.count.max(1) as f64
    }
}

fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Spread {
    Spread::of(samples.iter().map(f))
}

/// Agent CPU per answered request, in microseconds.
fn agent_us_per_request(s: &Sample) -> f64 {
    1e6 * s.cpu.process_seconds / s.load.answered.max(1) as f64
}

fn saturated_table(results: &[(Config, Vec<Sample>)]) -> String {
    let base = median_rps(results, Config::Bare).unwrap_or(f64::NAN);
    let mut t = format!(
        "| configuration | requests/s, median (min-max) of {RUNS} | vs (a) | p50 ms | p99 ms \
         | machine CPU (of 200 %) | agent CPU | agent CPU per request | kernel ns per packet |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for (config, samples) in results {
        let rps = spread(samples, |s| s.load.rps);
        let agent = |text: String| if config_has_agent(*config) { text } else { "-".into() };
        t += &format!(
            "| {} | {} | {:.1} % | {:.2} | {:.2} | {:.0} % | {} | {} | {} |\n",
            config.label(),
            rps.show(0),
            100.0 * rps.median / base,
            spread(samples, |s| s.load.p50_ms).median,
            spread(samples, |s| s.load.p99_ms).median,
            spread(samples, |s| s.cpu.machine_pct).median,
            agent(format!("{:.0} %", spread(samples, |s| s.cpu.process_pct).median)),
            agent(format!("{:.1} µs", spread(samples, agent_us_per_request).median)),
            agent(format!(
                "{:.0}",
                spread(samples, |s| s.kernel.map_or(0.0, |k| k.ns_per_run())).median
            )),
        );
    }
    t
}

fn config_has_agent(c: Config) -> bool {
    !matches!(c, Config::Bare | Config::NginxMirror)
}

fn fixed_rate_table(rows: &[(u32, Config, Vec<Sample>)]) -> String {
    let mut t = String::from(
        "| offered requests/s | configuration | achieved requests/s | p50 ms | p99 ms \
         | p50 vs (a) | p99 vs (a) | errors | machine CPU | agent CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (rate, config, samples) in rows {
        let (base_p50, base_p99) = rows
            .iter()
            .find(|(r, c, _)| r == rate && *c == Config::Bare)
            .map(|(.., s)| {
                (spread(s, |s| s.load.p50_ms).median, spread(s, |s| s.load.p99_ms).median)
            })
            .unwrap_or((f64::NAN, f64::NAN));
        let p50 = spread(samples, |s| s.load.p50_ms);
        let p99 = spread(samples, |s| s.load.p99_ms);
        t += &format!(
            "| {rate} | {} | {:.0} | {} | {} | {:.0} % | {:.0} % | {:.0} | {:.0} % | {:.0} % |\n",
            config.short(),
            spread(samples, |s| s.load.rps).median,
            p50.show(2),
            p99.show(2),
            100.0 * p50.median / base_p50,
            100.0 * p99.median / base_p99,
            spread(samples, |s| s.load.errors as f64).median,
            spread(samples, |s| s.cpu.machine_pct).median,
            spread(samples, |s| s.cpu.process_pct).median,
        );
    }
    t
}

/// The configurations to run: all, or those whose letters `MIRROR_BENCH_CONFIGS` lists
/// (`MIRROR_BENCH_CONFIGS=ac` for a quick comparison while profiling).
fn selected_configs() -> Vec<Config> {
    let only = std::env::var("MIRROR_BENCH_CONFIGS").unwrap_or_default();
    CONFIGS.into_iter().filter(|c| only.is_empty() || only.contains(&c.short()[1..2])).collect()
}

fn median_rps(results: &[(Config, Vec<Sample>)], config: Config) -> Option<f64> {
    let (_, samples) = results.iter().find(|(c, _)| *c == config)?;
    Some(spread(samples, |s| s.load.rps).median)
}

fn main() {
    mirror_tests::require_root();
    let b = Bench::new();
    let configs = selected_configs();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let saturated =
        b.rounds(RUNS, &configs, |url| bench::wrk(&b.topo.client, url, SATURATED_SECONDS));
    let rps = |c| median_rps(&saturated, c).unwrap_or(f64::NAN);
    let (base, anchor) = (rps(Config::Bare), rps(Config::NginxMirror));
    // Fixed rates: a quarter and half of (a)'s capacity, and (d)'s capacity, rounded down to
    // the next 1000; (d) only where it can keep up. Needs (a) and (d) to have run.
    let round = |r: f64| ((r / 1000.0).floor() as u32).max(1) * 1000;
    let rates = if base.is_nan() || anchor.is_nan() {
        vec![]
    } else {
        vec![round(base * 0.25), round(base * 0.5), round(anchor)]
    };
    let mut fixed = Vec::new();
    for rate in rates {
        let at_rate: Vec<Config> = configs
            .iter()
            .copied()
            .filter(|&c| c != Config::NginxMirror || rate <= round(anchor))
            .collect();
        let oha = |url: &str| bench::oha(&b.topo.client, rate, FIXED_RATE_SECONDS, 32, &[], url);
        for (config, samples) in b.rounds(FIXED_RATE_RUNS, &at_rate, oha) {
            fixed.push((rate, config, samples));
        }
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    let report = format!(
        "Saturated (wrk -t1 -c32 -d{SATURATED_SECONDS}s, closed loop), {RUNS} rounds over the \
         configurations:\n\n{}\n\
         Fixed offered rates (oha -c32 -z{FIXED_RATE_SECONDS}s -q RATE \
         --latency-correction), {FIXED_RATE_RUNS} rounds, p50 and p99 as median (min-max):\n\n{}\n\
         Against the goals: (b) keeps {:.1} % of (a)'s saturated throughput (goal 95 %); \
         (c) sustains {:.1} times (d)'s saturated throughput (goal 5).\n",
        saturated_table(&saturated),
        fixed_rate_table(&fixed),
        100.0 * rps(Config::TapOnly) / base,
        rps(Config::Mirror) / anchor,
    );
    bench::report("primary_path", &report);
}
