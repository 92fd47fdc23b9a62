//! Primary-path overhead (BENCHMARKS.md, scenario 1) and the kernel program's cost per packet
//! (scenario 3, in part). Run by `cargo xtask bench`; needs root, nginx and wrk.
//!
//! Topology: client namespace -> root namespace (the node) -> primary namespace, the tap on
//! the primary's node-side veth; shadows in their own namespace. The primary is nginx
//! returning a small body; load is wrk (closed loop, saturated). Each configuration runs
//! `RUNS` times; the table gives the median and the spread (min-max).
use std::{
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::AgentProcess,
    netns::Netns,
    server::{Behavior, RecordingServer},
    topology::{Family, Topology},
};

const RUNS: usize = 3;
const SECONDS: u64 = 8;
const PORT: u16 = 8000;
/// Where the nginx mirror proxy (the anchor) listens, in the primary's namespace.
const PROXY_PORT: u16 = 8080;

/// A shadow URL and extra flags for `mirror run`.
type AgentArgs<'a> = (String, Vec<&'a str>);

struct Nginx(Child, std::path::PathBuf);

impl Nginx {
    /// nginx on `PORT` answering `return 200`.
    fn start(ns: &Netns, tag: &str) -> Nginx {
        let server = format!(
            "server {{ listen {PORT}; listen [::]:{PORT}; location / {{ return 200 \"hello from nginx\\n\"; }} }}"
        );
        Self::start_with(ns, tag, &server)
    }

    /// The anchor: nginx's `mirror` directive as an inline proxy on `PROXY_PORT`, in front of
    /// the primary (this namespace, `PORT`) and the shadow at `shadow`.
    fn start_mirror_proxy(ns: &Netns, shadow: &str) -> Nginx {
        let server = format!(
            "upstream primary {{ server 127.0.0.1:{PORT}; keepalive 64; }}\n\
             upstream shadow {{ server {shadow}; keepalive 64; }}\n\
             server {{ listen {PROXY_PORT};\n\
               location / {{ mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://primary; }}\n\
               location = /mirror {{ internal; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                 proxy_set_header Host $host-shadow; proxy_pass http://shadow$request_uri; }} }}"
        );
        Self::start_with(ns, "proxy", &server)
    }

    fn start_with(ns: &Netns, tag: &str, server: &str) -> Nginx {
        let dir =
            std::env::temp_dir().join(format!("mirror-bench-nginx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1; daemon off; pid {d}/pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                 {server} }}\n"
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
fn wait_listening(ns: &Netns, addr: SocketAddr) {
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

/// Busy and total jiffies of the whole machine.
fn cpu_jiffies() -> (u64, u64) {
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

/// user+system jiffies of a process.
fn process_jiffies(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_pct: f64,
    agent_cpu_pct: f64,
}

/// wrk, closed loop, from the client namespace.
fn wrk(topo: &Topology, port: u16, agent: Option<u32>) -> Sample {
    let url = format!("http://{}:{port}/", topo.server_addr(Family::V4));
    let (busy0, total0) = cpu_jiffies();
    let a0 = agent.map_or(0, process_jiffies);
    let out = topo
        .client
        .command("wrk")
        .args(["-t1", "-c32", &format!("-d{SECONDS}s"), "--latency", &url])
        .output()
        .unwrap();
    let (busy1, total1) = cpu_jiffies();
    let a1 = agent.map_or(0, process_jiffies);
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = field(&text, "Requests/sec:");
    let p50_ms = latency(&text, "50%");
    let p99_ms = latency(&text, "99%");
    let hz = 100.0; // USER_HZ
    let cpu_pct = 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * 2.0;
    let agent_cpu_pct = 100.0 * (a1 - a0) as f64 / hz / SECONDS as f64;
    Sample { rps, p50_ms, p99_ms, cpu_pct, agent_cpu_pct }
}

fn field(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// wrk's latency percentiles ("50%  1.23ms").
fn latency(text: &str, pct: &str) -> f64 {
    let v = text.lines().find_map(|l| l.trim().strip_prefix(pct)).unwrap_or("0ms").trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        _ => n,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn agent(topo: &Topology, shadow: &str, extra: &[&str]) -> AgentProcess {
    let mut args: Vec<String> = [
        "run",
        "-i",
        &topo.server_host_if,
        "--port",
        &PORT.to_string(),
        "--shadow",
        shadow,
        "--watch-socket",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    AgentProcess::start(&args, "mirror run: ready")
}

/// Run time per packet of the tap programs (kernel.bpf_stats_enabled), in ns.
fn kernel_ns_per_packet() -> Option<(f64, u64)> {
    let (mut ns, mut cnt) = (0u64, 0u64);
    for p in aya::programs::loaded_programs().flatten() {
        if matches!(p.name_as_str(), Some("mirror_ingress" | "mirror_egress")) {
            ns += p.run_time().as_nanos() as u64;
            cnt += p.run_count();
        }
    }
    (cnt > 0).then(|| (ns as f64 / cnt as f64, cnt))
}

fn main() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let _primary = Nginx::start(&topo.server, "primary");
    let _shadow_nginx = Nginx::start(&topo.shadow, "shadow");
    wait_listening(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT));
    wait_listening(&topo.client, SocketAddr::new(topo.shadow_addr(Family::V4), PORT));
    let shadow = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    // A slow shadow: answers after 100 ms (a second port in the shadow namespace).
    let _slow = RecordingServer::start_with(
        &topo.shadow,
        &[PORT + 1],
        Behavior::Slow(Duration::from_millis(100)),
    );
    let slow = format!("http://{}:{}", topo.shadow_addr(Family::V4), PORT + 1);
    // The anchor, (d): nginx's mirror directive, inline in front of the same primary.
    let _proxy = Nginx::start_mirror_proxy(
        &topo.server,
        &format!("{}:{PORT}", topo.shadow_addr(Family::V4)),
    );
    wait_listening(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PROXY_PORT));

    let configs: Vec<(&str, Option<AgentArgs>)> = vec![
        ("(a) nothing attached", None),
        ("(b) tap + agent, nothing replayed", Some((shadow.clone(), vec!["--percent", "0"]))),
        ("(c) full mirroring to a live shadow", Some((shadow.clone(), vec![]))),
        ("(d) nginx `mirror`, inline proxy, live shadow", None),
        ("(e) full mirroring to a 100 ms shadow", Some((slow, vec![]))),
    ];
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").unwrap();
    let mut rows = Vec::new();
    let mut baseline = 0.0;
    let mut kernel = None;
    for (name, cfg) in configs {
        let mut samples = Vec::new();
        for _ in 0..RUNS {
            let agent = cfg.as_ref().map(|(s, extra)| agent(&topo, s, extra));
            let port = if name.starts_with("(d)") { PROXY_PORT } else { PORT };
            samples.push(wrk(&topo, port, agent.as_ref().map(|a| a.pid())));
            if name.starts_with("(b)") {
                kernel = kernel_ns_per_packet().or(kernel);
            }
            if let Some(a) = agent {
                a.stop();
            }
        }
        let (rps, lo, hi) = median(samples.iter().map(|s| s.rps).collect());
        if baseline == 0.0 {
            baseline = rps;
        }
        let (p50, ..) = median(samples.iter().map(|s| s.p50_ms).collect());
        let (p99, ..) = median(samples.iter().map(|s| s.p99_ms).collect());
        let (cpu, ..) = median(samples.iter().map(|s| s.cpu_pct).collect());
        let (acpu, ..) = median(samples.iter().map(|s| s.agent_cpu_pct).collect());
        rows.push(format!(
            "| {name} | {rps:.0} ({lo:.0}-{hi:.0}) | {:.1} % | {p50:.2} | {p99:.2} | {cpu:.0} % | {acpu:.0} % |",
            100.0 * rps / baseline
        ));
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0").unwrap();
    println!("| configuration | requests/s, median (min-max) of {RUNS} | vs (a) | p50 ms | p99 ms | machine CPU (of 200 %) | agent CPU |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    if let Some((ns, cnt)) = kernel {
        println!("\nkernel program run time (b): {ns:.0} ns per packet over {cnt} runs (kernel.bpf_stats_enabled)");
    }
}
