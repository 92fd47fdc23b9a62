//! The control channel of a live agent with the real tap: an interface attached while the
//! agent runs is mirrored from then on, one detached is not, and settings replaced in flight
//! take effect without a detach.
use std::{net::SocketAddr, time::Duration};

use mirror_agent::{
    control::Command,
    live::{LiveAgent, RunOptions},
    pipeline::{MirrorSettings, ShadowTarget},
};
use mirror_tap::TapSettings;
use mirror_tests::{
    client::{keep_alive, RawRequest},
    http_url,
    server::RecordingServer,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;

fn settings(shadow: &str, percent: f64) -> MirrorSettings {
    let target =
        ShadowTarget { uri: shadow.parse().unwrap(), name: shadow.into(), percent, tls: None };
    MirrorSettings { shadows: vec![target], ..MirrorSettings::default() }
}

/// One request per path, on one keep-alive connection from the topology's client (a
/// blocking client: the runtime's other worker runs the agent meanwhile).
fn send(topo: &Topology, paths: &[&str]) {
    let requests: Vec<RawRequest> =
        paths.iter().map(|p| RawRequest::new("GET", p, "svc:8000", b"")).collect();
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    tokio::task::block_in_place(|| keep_alive(&topo.client, server, requests).unwrap());
}

/// Polls the agent's metrics until `name` (any labels) reaches `at_least`.
fn wait_for_metric(addr: SocketAddr, name: &str, at_least: u64) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut text = String::new();
        if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
            let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            let _ = conn.read_to_string(&mut text);
        }
        let value: u64 = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if value >= at_least {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{name} stayed below {at_least}: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interfaces_and_settings_change_while_the_agent_runs() {
    mirror_tests::require_root();
    let (a, b) = (Topology::new().unwrap(), Topology::new().unwrap());
    let _primaries =
        [RecordingServer::start(&a.server, &[PORT]), RecordingServer::start(&b.server, &[PORT])];
    let shadow = RecordingServer::start(&a.shadow, &[PORT]);
    let shadow_url = http_url(a.shadow_addr(Family::V4), PORT, "");
    let tap = TapSettings {
        interfaces: vec![a.server_host_if.clone()],
        ports: vec![PORT],
        ..TapSettings::default()
    };
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Two workers: new settings reach both.
    let opts = RunOptions {
        tap,
        keep_attached: false,
        cri_socket: None,
        drop_privileges: false,
        metrics: Some(metrics),
        admin: None,
        watch_socket: None,
        results: None,
        workers: 2,
    };
    let agent = LiveAgent::start(settings(&shadow_url, 100.0), opts).await.unwrap();
    let control = agent.control();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    send(&a, &["/a-attached"]);
    send(&b, &["/b-not-yet"]);
    shadow.wait_for(1, Duration::from_secs(10));
    control.send(Command::Attach(b.server_host_if.clone())).await.unwrap();
    send(&b, &["/b-attached"]);
    shadow.wait_for(2, Duration::from_secs(10));
    control.send(Command::Detach(a.server_host_if.clone())).await.unwrap();
    send(&a, &["/a-detached"]);
    control.send(Command::Replace(Box::new(settings(&shadow_url, 0.0)))).await.unwrap();
    send(&b, &["/b-at-zero-percent"]);
    // The request reached the pipeline (and was not sampled) before the next change.
    wait_for_metric(metrics, "mirror_shadow_not_sampled_total", 1);
    control.send(Command::Replace(Box::new(settings(&shadow_url, 100.0)))).await.unwrap();
    send(&b, &["/b-at-full"]);
    shadow.wait_for(3, Duration::from_secs(10));
    let _ = stop.send(());
    let summary = run.await.unwrap().unwrap();

    let mut seen: Vec<String> = shadow.requests().iter().map(|r| r.target.clone()).collect();
    seen.sort();
    assert_eq!(seen, ["/a-attached", "/b-at-full", "/b-attached"], "{summary}");
    // Requests the tap saw: a's first, b's after the attach (three), not a's after the
    // detach.
    assert_eq!(summary.captured_requests, 4, "{summary}");
}
