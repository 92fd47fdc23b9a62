//! Large responses (BENCHMARKS.md, scenario 4): what mirroring costs when the primary
//! answers with large bodies that the mirror only measures. Run by `cargo xtask bench
//! large_responses`; needs root, nginx and wrk.
//!
//! The primary is nginx serving static files (sendfile) of 64 KiB and 1 MiB; every request
//! is mirrored to nginx as the shadow. Since the response bodies are left in the kernel
//! (the agent hints the unread rest of a body once its head is framed), the figures that
//! matter are the payload bytes the kernel still copies into the ring per response and the
//! agent's CPU per response. With `MIRROR_BIN_BEFORE` (a build that copies bodies whole,
//! 60ee2e5), configuration (g) runs the same on that build.
use std::net::SocketAddr;

use mirror_tests::{
    agent::{self, AgentProcess},
    bench::{self, CpuMeter, KernelRuns, Load, Nginx, Spread},
    http_url,
    topology::{Family, Topology},
};

const RUNS: usize = 3;
const SECONDS: u64 = 6;
const PORT: u16 = 8000;
const SIZES: [(&str, usize); 2] = [("64k", 64 << 10), ("1m", 1 << 20)];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Bare,
    Mirror,
    MirrorBefore,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) nothing attached",
            Config::Mirror => "(c) full mirroring, bodies left in the kernel",
            Config::MirrorBefore => "(g) full mirroring, the agent copying bodies (60ee2e5)",
        }
    }
}

/// One run's figures.
struct Sample {
    load: Load,
    agent_seconds: f64,
    kernel: KernelRuns,
    /// From the agent's summary: payload bytes copied into the ring, and left out.
    copied: u64,
    elided: u64,
    /// Copies the shadow answered 2xx.
    delivered: u64,
}

/// The number after `name` on the summary line starting with `prefix` (0 if absent).
fn count(summary: &str, prefix: &str, name: &str) -> u64 {
    let Some(line) = summary.lines().find(|l| l.starts_with(prefix)) else { return 0 };
    let words: Vec<&str> = line.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
    words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)?.parse().ok()).unwrap_or(0)
}

struct Bench {
    topo: Topology,
    shadow: String,
    before: Option<std::path::PathBuf>,
    _servers: (Nginx, Nginx, std::path::PathBuf),
}

impl Bench {
    fn new() -> Bench {
        let topo = Topology::new().unwrap();
        let root = std::env::temp_dir().join(format!("mirror-bench-large-{}", topo.id));
        std::fs::create_dir_all(&root).unwrap();
        for (name, size) in SIZES {
            std::fs::write(root.join(name), vec![b'x'; size]).unwrap();
        }
        let primary = Nginx::start(
            &topo.server,
            "large-primary",
            &format!("sendfile on; server {{ listen {PORT}; root {}; }}", root.display()),
        );
        let shadow = Nginx::hello(&topo.shadow, "large-shadow", PORT);
        let shadow_addr = topo.shadow_addr(Family::V4);
        for addr in [topo.server_addr(Family::V4), shadow_addr] {
            bench::wait_listening(&topo.client, SocketAddr::new(addr, PORT));
        }
        Bench {
            shadow: http_url(shadow_addr, PORT, ""),
            before: std::env::var_os("MIRROR_BIN_BEFORE").map(Into::into),
            topo,
            _servers: (primary, shadow, root),
        }
    }

    fn configs(&self) -> Vec<Config> {
        let mut c = vec![Config::Bare, Config::Mirror];
        if self.before.is_some() {
            c.push(Config::MirrorBefore);
        }
        c
    }

    fn measure(&self, config: Config, file: &str) -> Sample {
        let args = agent::run_args(&self.topo.server_host_if, PORT, &self.shadow, &[]);
        let agent = match (config, &self.before) {
            (Config::Bare, _) => None,
            (Config::MirrorBefore, Some(bin)) => {
                Some(AgentProcess::start_bin(bin, &args, "mirror run: ready"))
            }
            _ => Some(AgentProcess::start(&args, "mirror run: ready")),
        };
        let kernel_before = KernelRuns::now();
        let meter = CpuMeter::start(agent.as_ref().map(AgentProcess::pid));
        let url = http_url(self.topo.server_addr(Family::V4), PORT, &format!("/{file}"));
        let load = bench::wrk(&self.topo.client, &url, SECONDS);
        let cpu = meter.stop();
        let kernel = KernelRuns::now().since(&kernel_before);
        let summary = agent.map(AgentProcess::stop).unwrap_or_default();
        Sample {
            load,
            agent_seconds: cpu.process_seconds,
            kernel,
            copied: count(&summary, "captured:", "bytes"),
            elided: count(&summary, "captured:", "elided"),
            delivered: count(&summary, "shadow ", "2xx"),
        }
    }
}

fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> Spread {
    Spread::of(samples.iter().map(f))
}

fn main() {
    mirror_tests::require_root();
    let b = Bench::new();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let mut rows = String::new();
    for (file, size) in SIZES {
        let configs = b.configs();
        let mut samples: Vec<Vec<Sample>> = configs.iter().map(|_| Vec::new()).collect();
        for _ in 0..RUNS {
            for (config, s) in configs.iter().zip(&mut samples) {
                s.push(b.measure(*config, file));
            }
        }
        let bare = spread(&samples[0], |s| s.load.rps).median;
        for (config, s) in configs.iter().zip(&samples) {
            let rps = spread(s, |s| s.load.rps);
            let per =
                |f: fn(&Sample) -> f64| spread(s, move |x| f(x) / x.load.answered.max(1) as f64);
            let row = if *config == Config::Bare {
                format!("| {} | {} | - | - | - | - | - | - |", config.label(), rps.show(0))
            } else {
                format!(
                    "| {} | {} | {:.1} % | {} | {} | {} | {} | {} |",
                    config.label(),
                    rps.show(0),
                    100.0 * rps.median / bare,
                    per(|x| x.copied as f64 / 1024.0).show(1),
                    per(|x| x.elided as f64 / 1024.0).show(1),
                    per(|x| x.agent_seconds * 1e6).show(1),
                    spread(s, |x| x.kernel.ns_per_run()).show(0),
                    per(|x| 100.0 * x.delivered as f64).show(2),
                )
            };
            rows.push_str(&format!("| {} KiB {row}\n", size >> 10));
        }
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    let report = format!(
        "Saturated (wrk -t1 -c32 -d{SECONDS}s), {RUNS} rounds; per-response figures are per \
         response the client received:\n\n\
         | body | configuration | responses/s, median (min-max) | vs (a) | KiB copied into the \
         ring per response | KiB left out per response | agent CPU per response, µs | kernel ns \
         per packet | copies answered by the shadow, % |\n\
         |---|---|---|---|---|---|---|---|---|\n{rows}"
    );
    bench::report("large_responses", &report);
}
