//! gRPC unary calls over HTTP/2 mirrored per second, and the agent's CPU per call, beside
//! HTTP/1.1 requests of the same size (BENCHMARKS.md, scenario 3). Run by `cargo xtask bench
//! h2_calls`; needs root and h2load.
//!
//! The primary and the shadow are the tests' recording servers (hyper, one thread each):
//! the HTTP/2 one answers gRPC calls by echoing their messages with `grpc-status: 0`. h2load
//! drives both protocols for the same time: HTTP/2 on 4 connections with 16 streams each
//! (gRPC clients multiplex on few connections), HTTP/1.1 on 64 keep-alive connections (one
//! request in flight each); at a fixed rate of 20 000 calls per second, then as fast as the
//! primary answers. Every call is to be mirrored; the agent's user+system CPU is read from
//! /proc over the run and divided by the calls the primary answered.
use std::net::SocketAddr;

use mirror_tests::{
    agent::{run_args, AgentProcess},
    bench::{self, CpuMeter, Spread},
    h2::H2Recorder,
    server::RecordingServer,
    topology::{Family, Topology},
};

const RUNS: usize = 3;
const SECONDS: u64 = 8;
const PORT: u16 = 50051;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Calls per second of the fixed-rate runs, in all.
const FIXED_RATE: u32 = 20_000;

struct Run {
    calls_per_second: f64,
    mirrored_share: f64,
    cpu_us_per_call: f64,
}

/// The body of every call: one gRPC message of 64 bytes (for HTTP/1, the same bytes).
fn message() -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0, 64];
    m.extend(std::iter::repeat_n(b'x', 64));
    m
}

fn run(protocol: Protocol, body: &std::path::Path, fixed_rate: bool) -> Run {
    let topo = Topology::new().unwrap();
    let (_h1, _h2, shadow_h1, shadow_h2);
    match protocol {
        Protocol::Http1 => {
            _h1 = Some(RecordingServer::start(&topo.server, &[PORT]));
            shadow_h1 = Some(RecordingServer::start(&topo.shadow, &[PORT]));
            (_h2, shadow_h2) = (None, None);
        }
        Protocol::Http2 => {
            _h2 = Some(H2Recorder::start(&topo.server, PORT));
            shadow_h2 = Some(H2Recorder::start(&topo.shadow, PORT));
            (_h1, shadow_h1) = (None, None);
        }
    }
    let shadow = format!("http://{}", SocketAddr::new(topo.shadow_addr(Family::V4), PORT));
    let args = run_args(&topo.server_host_if, PORT, &shadow, &[]);
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let primary = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let mut load = topo.client.command("h2load");
    load.args(["-D", &SECONDS.to_string(), "-d"]).arg(body);
    let clients = match protocol {
        Protocol::Http1 => {
            load.args(["--h1", "-c", "64", "-m", "1"]);
            64
        }
        Protocol::Http2 => {
            load.args(["-c", "4", "-m", "16", "-H", "te: trailers"]);
            4
        }
    };
    if fixed_rate {
        load.args(["--rps", &FIXED_RATE.div_ceil(clients).to_string()]);
    }
    load.args(["-H", "content-type: application/grpc"]);
    load.arg(format!("http://{primary}/echo.Echo/Unary"));
    let meter = CpuMeter::start(Some(agent.pid()));
    let out = load.output().expect("h2load");
    let cpu = meter.stop();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = agent.stop();
    eprintln!("{summary}");
    let succeeded = number_before(&report, " succeeded");
    let answered = match (&shadow_h1, &shadow_h2) {
        (Some(s), _) => s.requests().len(),
        (_, Some(s)) => s.streams().len(),
        _ => 0,
    } as f64;
    assert!(succeeded > 0.0, "h2load: {report}");
    assert!(answered > 0.0, "nothing mirrored: {summary}");
    Run {
        calls_per_second: succeeded / SECONDS as f64,
        mirrored_share: 100.0 * answered / succeeded,
        cpu_us_per_call: cpu.process_seconds * 1e6 / succeeded,
    }
}

/// The number just before `word` in h2load's report ("N succeeded").
fn number_before(report: &str, word: &str) -> f64 {
    let at = report.find(word).unwrap_or_else(|| panic!("no {word:?} in {report}"));
    let before = report[..at].rsplit([' ', ',']).next().unwrap();
    before.parse().unwrap()
}

fn main() {
    mirror_tests::require_root();
    let body = std::env::temp_dir().join(format!("mirror-h2-calls-{}", std::process::id()));
    std::fs::write(&body, message()).unwrap();
    let mut table = String::new();
    for fixed_rate in [true, false] {
        let runs: Vec<Vec<Run>> = [Protocol::Http1, Protocol::Http2]
            .into_iter()
            .map(|p| (0..RUNS).map(|_| run(p, &body, fixed_rate)).collect())
            .collect();
        let load = if fixed_rate {
            format!("{} calls per second", FIXED_RATE)
        } else {
            "as fast as the primary answers".to_owned()
        };
        table.push_str(&format!(
            "\n{load}:\n\n| measurement | HTTP/1.1, 64 connections | HTTP/2 gRPC unary, 4 connections x 16 streams |\n|---|---|---|\n"
        ));
        let row = |name: &str, f: fn(&Run) -> f64, decimals: usize| {
            let cells: Vec<String> =
                runs.iter().map(|r| Spread::of(r.iter().map(f)).show(decimals)).collect();
            format!("| {name}, {RUNS} runs | {} | {} |\n", cells[0], cells[1])
        };
        table.push_str(&row(
            "calls answered by the primary per second (thousands)",
            |r| r.calls_per_second / 1e3,
            2,
        ));
        table.push_str(&row("calls mirrored (% of those answered)", |r| r.mirrored_share, 1));
        table.push_str(&row("agent CPU per call answered (µs)", |r| r.cpu_us_per_call, 1));
    }
    let _ = std::fs::remove_file(&body);
    bench::report("h2_calls", &table);
}
