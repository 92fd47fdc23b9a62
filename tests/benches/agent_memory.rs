//! Agent memory with 10 000 concurrent keep-alive connections (scenario 3): each connection
//! sends one request to the primary (nginx) and stays open; the agent's resident set is read
//! from /proc.
//! Run by `cargo xtask bench`; needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use mirror_tests::{
    agent::{self, AgentProcess},
    bench::{self, Nginx, Spread},
    http_url,
    server::RecordingServer,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const CONNECTIONS: usize = 10_000;
const RUNS: usize = 3;

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One run: a fresh agent, `CONNECTIONS` connections opened through it and held open while
/// its memory is read. Returns (connections open, RSS idle, RSS with them, peak RSS) in KiB.
fn run(topo: &Topology, args: &[String]) -> (usize, u64, u64, u64) {
    let agent = AgentProcess::start(args, "mirror run: ready");
    let (idle_rss, _) = rss_kib(agent.pid());
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let conns = topo.client.run(move || {
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let mut s = match TcpStream::connect(server) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("connection {i}: {e}");
                    break;
                }
            };
            let req = format!("GET /keep/{i} HTTP/1.1\r\nHost: svc:8000\r\n\r\n");
            let mut buf = [0u8; 512];
            // A connection the server resets is not counted as open.
            if s.write_all(req.as_bytes()).is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                conns.push(s);
            }
        }
        conns
    });
    // Let the agent drain the ring and settle (a benchmark, not a test: nothing to wait on).
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (rss, hwm) = rss_kib(agent.pid());
    let open = conns.len();
    agent.stop();
    drop(conns);
    (open, idle_rss, rss, hwm)
}

fn main() {
    mirror_tests::require_root();
    // 10 000 client sockets live in this process, so the primary is another one (nginx):
    // containers often cap descriptors at 20 000 and forbid raising the hard limit.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    assert!(limit.rlim_cur as usize > CONNECTIONS + 1000, "descriptor limit {}", limit.rlim_cur);
    let topo = Topology::new().unwrap();
    let _primary = Nginx::hello(&topo.server, "memory-primary", PORT);
    bench::wait_listening(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT));
    let _shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args = agent::run_args(&topo.server_host_if, PORT, &shadow, &[]);
    let runs: Vec<_> = (0..RUNS).map(|_| run(&topo, &args)).collect();
    let mib = |f: fn(&(usize, u64, u64, u64)) -> f64| Spread::of(runs.iter().map(f)).show(1);
    bench::report(
        "agent_memory",
        &format!(
            "| connections open | agent RSS idle, MiB | agent RSS with them, MiB | agent peak RSS, MiB |\n\
             |---|---|---|---|\n| {} | {} | {} | {} |\n\n\
             Median (min-max) of {RUNS} runs, each with a fresh agent.\n",
            Spread::of(runs.iter().map(|r| r.0 as f64)).show(0),
            mib(|r| r.1 as f64 / 1024.0),
            mib(|r| r.2 as f64 / 1024.0),
            mib(|r| r.3 as f64 / 1024.0),
        ),
    );
}
