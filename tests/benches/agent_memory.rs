//! Agent memory with 10 000 concurrent keep-alive connections (scenario 3): each connection
//! sends one request and stays open; the agent's resident set is read from /proc.
//! Run by `cargo xtask bench`; needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
};

use mirror_tests::{
    agent::AgentProcess,
    server::RecordingServer,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const CONNECTIONS: usize = 10_000;

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

fn main() {
    mirror_tests::require_root();
    // 10 000 sockets here, 10 000 in the server: raise the descriptor limit.
    let limit = libc::rlimit { rlim_cur: 65536, rlim_max: 65536 };
    // SAFETY: setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let _shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    let args: Vec<String> = [
        "run",
        "-i",
        &topo.server_host_if,
        "--port",
        "8000",
        "--shadow",
        &shadow,
        "--watch-socket",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let (idle_rss, _) = rss_kib(agent.pid());
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let open = topo.client.run(move || {
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let Ok(mut s) = TcpStream::connect(server) else { break };
            let req = format!("GET /keep/{i} HTTP/1.1\r\nHost: svc:8000\r\n\r\n");
            let mut buf = [0u8; 512];
            // A connection the server resets is not counted as open.
            if s.write_all(req.as_bytes()).is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                conns.push(s);
            }
        }
        let n = conns.len();
        // Keep them open while the agent is measured.
        std::mem::forget(conns);
        n
    });
    std::thread::sleep(std::time::Duration::from_secs(2)); // let the agent drain the ring
    let (rss, hwm) = rss_kib(agent.pid());
    let summary = agent.stop();
    println!("| connections open | agent RSS idle | agent RSS with them | agent peak RSS |");
    println!("|---|---|---|---|");
    println!("| {open} | {} MiB | {} MiB | {} MiB |", idle_rss / 1024, rss / 1024, hwm / 1024);
    eprintln!("{summary}");
}
