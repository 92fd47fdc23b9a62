//! Primary-path overhead (BENCHMARKS.md, scenario 1), and the kernel program's run time per
//! packet under that load (scenario 3, in part). Run by `cargo xtask bench primary_path`;
//! needs root, nginx, wrk and oha.
//!
//! Topology: client namespace -> root namespace (the node) -> primary namespace, the tap on
//! the primary's node-side veth; shadows in their own namespace. The primary is nginx
//! returning a small body. Saturated throughput comes from wrk (closed loop); latency at fixed
//! offered rates from oha (`-q`, latency measured from when each request was due). Every
//! figure is the median of `RUNS` runs with the spread beside it, all measured in one run.
//! With `MIRROR_BIN_BEFORE` (another build of `mirror`), configuration (g) runs (c) on that
//! build, for a before-and-after on one machine. The fixed-rate figures are also drawn, as
//! SVG next to BENCHMARKS.md (`benchmarks/primary_path-*.svg`).
use std::{net::SocketAddr, time::Duration};

use mirror_tests::{
    agent::{self, AgentProcess},
    bench::{self, CpuMeter, CpuUse, KernelRuns, Load, Nginx, Spread},
    http_url,
    server::{Behavior, RecordingServer},
    tls::{ServerCert, TestPki},
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
/// Where the TLS shadow (nginx, a test CA's certificate) listens.
const TLS_PORT: u16 = 8443;

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
    /// (f) as (c), the shadow behind TLS.
    MirrorTls,
    /// (g) as (c), with the build of `MIRROR_BIN_BEFORE`.
    MirrorBefore,
}

const CONFIGS: [Config; 7] = [
    Config::Bare,
    Config::TapOnly,
    Config::Mirror,
    Config::NginxMirror,
    Config::MirrorSlowShadow,
    Config::MirrorTls,
    Config::MirrorBefore,
];

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) nothing attached",
            Config::TapOnly => "(b) tap + agent, nothing replayed (`--percent 0`)",
            Config::Mirror => "(c) full mirroring to a live shadow",
            Config::NginxMirror => "(d) nginx `mirror`, inline proxy, live shadow",
            Config::MirrorSlowShadow => "(e) full mirroring to a 100 ms shadow",
            Config::MirrorTls => "(f) as (c), the shadow behind TLS (nginx, https)",
            Config::MirrorBefore => "(g) as (c), the agent before issue 13",
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
    tls_shadow: String,
    /// The test CA the TLS shadow's certificate is signed by.
    ca: String,
    /// `MIRROR_BIN_BEFORE`, for (g).
    before: Option<std::path::PathBuf>,
    _servers: (Nginx, Nginx, Nginx, RecordingServer, Nginx),
}

/// One measurement: the load generator's figures and the CPU it cost.
struct Sample {
    load: Load,
    cpu: CpuUse,
    kernel: Option<KernelRuns>,
    /// What became of the copies (the agent's summary), when the agent mirrored.
    copies: Option<Copies>,
}

/// The copies of one run, from the agent's summary.
#[derive(Clone, Copy, Default)]
struct Copies {
    /// Answered 2xx by the shadow.
    delivered: u64,
    /// Dropped and counted, any reason.
    dropped: u64,
}

impl Copies {
    /// From the first shadow's summary line: "... answered 1xx A 2xx B ...; dropped r N ...".
    fn of(summary: &str) -> Option<Copies> {
        let line = summary.lines().find(|l| l.starts_with("shadow ") && l.contains("answered"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words.get(i + 1));
        let delivered = after("2xx")?.trim_end_matches(';').parse().ok()?;
        let dropped_at = words.iter().position(|w| *w == "dropped")?;
        let dropped = words[dropped_at..]
            .iter()
            .filter_map(|w| w.trim_end_matches(';').parse::<u64>().ok())
            .sum();
        Some(Copies { delivered, dropped })
    }
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
        let pki = TestPki::write(&std::env::temp_dir().join("mirror-bench-pki"), shadow_addr);
        let (cert, key) = pki.server(ServerCert::Good);
        let tls = Nginx::start(
            &topo.shadow,
            "tls-shadow",
            &format!(
                "server {{ listen {shadow_addr}:{TLS_PORT} ssl; ssl_certificate {}; \
                 ssl_certificate_key {}; location / {{ return 200 \"hello from nginx\\n\"; }} }}",
                cert.display(),
                key.display()
            ),
        );
        for (ns, addr, port) in [
            (&topo.client, topo.server_addr(Family::V4), PORT),
            (&topo.client, shadow_addr, PORT),
            (&topo.client, topo.server_addr(Family::V4), PROXY_PORT),
            (&topo.client, shadow_addr, TLS_PORT),
        ] {
            bench::wait_listening(ns, SocketAddr::new(addr, port));
        }
        Bench {
            live_shadow: http_url(shadow_addr, PORT, ""),
            slow_shadow: http_url(shadow_addr, PORT + 1, ""),
            tls_shadow: format!("https://{shadow_addr}:{TLS_PORT}"),
            ca: pki.ca().display().to_string(),
            before: std::env::var_os("MIRROR_BIN_BEFORE").map(Into::into),
            topo,
            _servers: (primary, shadow, proxy, slow, tls),
        }
    }

    fn agent(&self, config: Config) -> Option<AgentProcess> {
        let (shadow, extra): (&str, &[&str]) = match config {
            Config::Bare | Config::NginxMirror => return None,
            Config::TapOnly => (&self.live_shadow, &["--percent", "0"]),
            Config::Mirror | Config::MirrorBefore => (&self.live_shadow, &[]),
            Config::MirrorSlowShadow => (&self.slow_shadow, &[]),
            Config::MirrorTls => (&self.tls_shadow, &["--shadow-ca", &self.ca]),
        };
        let args = agent::run_args(&self.topo.server_host_if, PORT, shadow, extra);
        Some(match (config, &self.before) {
            (Config::MirrorBefore, Some(bin)) => {
                AgentProcess::start_bin(bin, &args, "mirror run: ready")
            }
            _ => AgentProcess::start(&args, "mirror run: ready"),
        })
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
        let summary = agent.map(AgentProcess::stop);
        let copies = summary.as_deref().filter(|_| config != Config::TapOnly).and_then(Copies::of);
        Sample { load, cpu, kernel, copies }
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

fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Spread {
    Spread::of(samples.iter().map(f))
}

/// Agent CPU per answered request, in microseconds.
fn agent_us_per_request(s: &Sample) -> f64 {
    1e6 * s.cpu.process_seconds / s.load.answered.max(1) as f64
}

/// Copies the shadow answered, and copies dropped (counted), in % of the requests the
/// primary answered; "-" without copies.
fn delivered(samples: &[Sample]) -> (String, String) {
    if samples.iter().all(|s| s.copies.is_none()) {
        return ("-".into(), "-".into());
    }
    let pct = |f: fn(&Copies) -> u64| {
        spread(samples, |s| {
            100.0 * s.copies.as_ref().map_or(0, f) as f64 / s.load.answered.max(1) as f64
        })
    };
    (pct(|c| c.delivered).show(2) + " %", pct(|c| c.dropped).show(2) + " %")
}

fn saturated_table(results: &[(Config, Vec<Sample>)]) -> String {
    let base = median_rps(results, Config::Bare).unwrap_or(f64::NAN);
    let mut t = format!(
        "| configuration | requests/s, median (min-max) of {RUNS} | vs (a) | p50 ms | p99 ms \
         | machine CPU (of 200 %) | agent CPU | agent CPU per request | kernel ns per packet \
         | reached the shadow | dropped, counted |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (config, samples) in results {
        let rps = spread(samples, |s| s.load.rps);
        let agent = |text: String| if config_has_agent(*config) { text } else { "-".into() };
        let (reached, dropped) = delivered(samples);
        t += &format!(
            "| {} | {} | {:.1} % | {:.2} | {:.2} | {:.0} % | {} | {} | {} | {reached} | {dropped} |\n",
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
         | p50 vs (a) | p99 vs (a) | errors | machine CPU | agent CPU | agent CPU per request \
         | reached the shadow |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
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
        let per_request = if config_has_agent(*config) {
            format!("{:.1} µs", spread(samples, agent_us_per_request).median)
        } else {
            "-".into()
        };
        t += &format!(
            "| {rate} | {} | {:.0} | {} | {} | {:.0} % | {:.0} % | {:.0} | {:.0} % | {:.0} % \
             | {per_request} | {} |\n",
            config.short(),
            spread(samples, |s| s.load.rps).median,
            p50.show(2),
            p99.show(2),
            100.0 * p50.median / base_p50,
            100.0 * p99.median / base_p99,
            spread(samples, |s| s.load.errors as f64).median,
            spread(samples, |s| s.cpu.machine_pct).median,
            spread(samples, |s| s.cpu.process_pct).median,
            delivered(samples).0,
        );
    }
    t
}

/// The configurations to run: all, or those whose letters `MIRROR_BENCH_CONFIGS` lists
/// (`MIRROR_BENCH_CONFIGS=ac` for a quick comparison while profiling); (g) only with
/// `MIRROR_BIN_BEFORE`.
fn selected_configs(before: bool) -> Vec<Config> {
    let only = std::env::var("MIRROR_BENCH_CONFIGS").unwrap_or_default();
    CONFIGS
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.short()[1..2]))
        .filter(|c| before || *c != Config::MirrorBefore)
        .collect()
}

fn median_rps(results: &[(Config, Vec<Sample>)], config: Config) -> Option<f64> {
    let (_, samples) = results.iter().find(|(c, _)| *c == config)?;
    Some(spread(samples, |s| s.load.rps).median)
}

fn main() {
    mirror_tests::require_root();
    let b = Bench::new();
    let configs = selected_configs(b.before.is_some());
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
        let mut rates = vec![round(base * 0.25), round(base * 0.5), round(anchor)];
        rates.sort_unstable();
        rates.dedup();
        rates
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
    let plots = plots::draw(&fixed);
    bench::report("primary_path", &(report + &plots));
}

/// The fixed-rate rows as curves against the offered rate, drawn as SVG.
mod plots {
    use plotters::prelude::*;

    use super::{agent_us_per_request, config_has_agent, Config, Sample};

    /// What a chart shows of a sample (None: nothing, for this sample).
    type Figure = fn(&Sample) -> Option<f64>;

    /// One chart per figure; returns the Markdown that shows them.
    pub(super) fn draw(rows: &[(u32, Config, Vec<Sample>)]) -> String {
        let Some(dir) = std::env::var_os("MIRROR_BENCH_OUT") else { return String::new() };
        let dir = std::path::Path::new(&dir);
        let charts: [(&str, &str, Figure); 3] = [
            ("p99", "primary p99 latency, ms", |s| Some(s.load.p99_ms)),
            ("delivered", "copies answered by the shadow, % of requests", |s| {
                s.copies.map(|c| 100.0 * c.delivered as f64 / s.load.answered.max(1) as f64)
            }),
            ("agent-cpu", "agent CPU per request, µs", |s| Some(agent_us_per_request(s))),
        ];
        let mut md = String::from("\nThe fixed-rate figures as curves (medians):\n\n");
        for (name, title, value) in charts {
            let file = format!("primary_path-{name}.svg");
            if let Err(e) = chart(&dir.join(&file), title, rows, value) {
                md += &format!("(chart {name}: {e})\n");
                continue;
            }
            md += &format!("![{title}](benchmarks/{file})\n");
        }
        md
    }

    fn chart(
        path: &std::path::Path,
        title: &str,
        rows: &[(u32, Config, Vec<Sample>)],
        value: Figure,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut series: Vec<(Config, Vec<(f64, f64)>)> = Vec::new();
        for (rate, config, samples) in rows {
            let values: Vec<f64> = samples.iter().filter_map(value).collect();
            if values.is_empty() || (title.contains("agent") && !config_has_agent(*config)) {
                continue;
            }
            let median = super::Spread::of(values).median;
            match series.iter_mut().find(|(c, _)| c == config) {
                Some((_, points)) => points.push((*rate as f64, median)),
                None => series.push((*config, vec![(*rate as f64, median)])),
            }
        }
        let max_x = rows.iter().map(|(r, ..)| *r as f64).fold(1.0, f64::max) * 1.05;
        let max_y =
            series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(1e-9, f64::max) * 1.15;
        let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        chart.configure_mesh().x_desc("offered requests/s").draw()?;
        for (i, (config, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(config.label())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
