//! What the benchmarks under `tests/benches` share: nginx and load generators in namespaces,
//! CPU accounting, spreads over repeated runs, and the report fragment `cargo xtask bench`
//! splices into BENCHMARKS.md.
use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Writes `markdown` as this benchmark's section of BENCHMARKS.md (through
/// `$MIRROR_BENCH_OUT/NAME.md`, which `cargo xtask bench` reads) and prints it.
pub fn report(name: &str, markdown: &str) {
    println!("{markdown}");
    if let Some(dir) = std::env::var_os("MIRROR_BENCH_OUT") {
        let path = std::path::Path::new(&dir).join(format!("{name}.md"));
        std::fs::write(&path, markdown).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Median, minimum and maximum of repeated measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Spread { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
    }

    /// `median (min-max)` with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!("{:.d$} ({:.d$}-{:.d$})", self.median, self.min, self.max, d = decimals)
    }
}

/// An nginx master process with its own configuration directory; stopped on drop.
pub struct Nginx(Child, std::path::PathBuf);

impl Nginx {
    /// nginx in `ns` with `http_block` (upstreams and servers) as its whole `http {}` content.
    pub fn start(ns: &Netns, tag: &str, http_block: &str) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("mirror-bench-nginx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; daemon off; pid {d}/pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 16384; }}\n\
                 http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 {http_block} }}\n"
            ),
        )
        .unwrap();
        let child = ns
            .command("nginx")
            .args(["-c", &conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Nginx(child, dir)
    }

    /// nginx answering every request on `port` with a 17-byte body.
    pub fn hello(ns: &Netns, tag: &str, port: u16) -> Nginx {
        Self::start(
            ns,
            tag,
            &format!(
                "server {{ listen {port}; listen [::]:{port}; \
                 location / {{ return 200 \"hello from nginx\\n\"; }} }}"
            ),
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: the master stops its workers (a SIGKILL would orphan them).
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGQUIT) };
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Waits until something accepts connections at `addr` from inside `ns`.
pub fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let ok = ns.run(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens at {addr}");
}

/// CPU time consumed while a measurement runs: the whole machine's and one process's.
pub struct CpuMeter {
    busy: u64,
    total: u64,
    process: Option<(u32, u64)>,
    started: Instant,
}

/// What a `CpuMeter` saw, in percent of one CPU (the machine's figure is out of 100 % per CPU).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub machine_pct: f64,
    pub process_pct: f64,
    /// The process's user+system seconds.
    pub process_seconds: f64,
}

impl CpuMeter {
    pub fn start(process: Option<u32>) -> CpuMeter {
        let (busy, total) = machine_jiffies();
        CpuMeter {
            busy,
            total,
            process: process.map(|p| (p, process_jiffies(p))),
            started: Instant::now(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let (busy, total) = machine_jiffies();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine_pct =
            100.0 * cpus * (busy - self.busy) as f64 / (total - self.total).max(1) as f64;
        let process_seconds = self
            .process
            .map_or(0.0, |(pid, before)| (process_jiffies(pid) - before) as f64 / USER_HZ);
        let elapsed = self.started.elapsed().as_secs_f64();
        CpuUse { machine_pct, process_pct: 100.0 * process_seconds / elapsed, process_seconds }
    }
}

const USER_HZ: f64 = 100.0;

/// Busy and total jiffies of the whole machine.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let idle = v[3] + v[4];
    let total: u64 = v.iter().take(8).sum();
    (total - idle, total)
}

/// user+system jiffies of a process (0 once it is gone).
fn process_jiffies(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// One load run's outcome, as the load generator reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    /// Requests answered per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests that got an answer (any status).
    pub answered: u64,
    /// Requests that failed (connection errors, timeouts).
    pub errors: u64,
}

/// wrk, closed loop (as fast as the server answers), 32 connections, one thread.
pub fn wrk(ns: &Netns, url: &str, seconds: u64) -> Load {
    let out = ns
        .command("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let answered = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    Load {
        rps: field("Requests/sec:"),
        p50_ms: wrk_latency(&text, "50%"),
        p99_ms: wrk_latency(&text, "99%"),
        answered,
        errors: 0,
    }
}

/// wrk's latency percentiles ("50%  1.23ms").
fn wrk_latency(text: &str, pct: &str) -> f64 {
    let v = text.lines().find_map(|l| l.trim().strip_prefix(pct)).unwrap_or("0ms").trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        _ => n,
    }
}

/// oha at a fixed rate (`-q`) over `connections` keep-alive connections, with latency measured
/// from when each request was due (`--latency-correction`: no coordinated omission).
/// `extra` adds flags (method, body, `--rand-regex-url`).
pub fn oha(
    ns: &Netns,
    rate: u32,
    seconds: u64,
    connections: u32,
    extra: &[&str],
    url: &str,
) -> Load {
    let (rate, seconds, connections) =
        (rate.to_string(), format!("{seconds}s"), connections.to_string());
    let out = ns
        .command("oha")
        .args(["-q", &rate, "-z", &seconds, "-c", &connections])
        // -w: requests in flight at the deadline finish; cut ones would reach the primary's
        // kernel (and the tap) but not its application.
        .args(["-w", "--latency-correction", "--no-tui", "--output-format", "json"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    // Requests still in flight at the deadline are cut, not failed.
    let count = |m: &serde_json::Value| -> u64 {
        m.as_object().map_or(0, |o| {
            o.iter().filter(|(k, _)| !k.contains("deadline")).filter_map(|(_, n)| n.as_u64()).sum()
        })
    };
    let ms = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Load {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        answered: count(&v["statusCodeDistribution"]),
        errors: count(&v["errorDistribution"]),
    }
}

/// Run count and run time of the tap's programs (`kernel.bpf_stats_enabled`).
#[derive(Clone, Copy, Default)]
pub struct KernelRuns {
    pub ns: u64,
    pub count: u64,
}

impl KernelRuns {
    pub fn now() -> KernelRuns {
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
    pub fn since(&self, before: &KernelRuns) -> KernelRuns {
        KernelRuns {
            ns: self.ns.saturating_sub(before.ns),
            count: self.count.saturating_sub(before.count),
        }
    }

    pub fn ns_per_run(&self) -> f64 {
        self.ns as f64 / self.count.max(1) as f64
    }
}
