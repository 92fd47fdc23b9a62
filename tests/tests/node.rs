//! The node agent on a simulated node: pods (namespaces with a veth) created and deleted while
//! `mirror run --iface-pattern` follows them.
use std::{
    net::SocketAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::AgentProcess,
    client::{free_local_addr, get, metric},
    http_url,
    netns::run,
    server::RecordingServer,
    topology::Pod,
};

const PORT: u16 = 8000;
const WAIT: Duration = Duration::from_secs(20);

/// A prefix of interface names no other test (or test process) uses: 7 characters, so
/// `{tag}p{n:03}` fits the kernel's 15.
fn tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("mf{:04x}{n:x}", std::process::id() % 0x10000)
}

/// Polls /metrics until `done` holds; panics with the last text after [`WAIT`].
fn wait_for_metrics(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, text) = get(addr, "/metrics");
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn changes(text: &str, change: &str) -> u64 {
    metric(text, &format!("mirror_interface_changes_total{{change=\"{change}\"}}"))
}

fn attached_line(name: &str) -> String {
    format!("mirror_interface_attached{{interface=\"{name}\"")
}

/// The agent following `{pattern}`, mirroring port 8000 to `shadow`, metrics on `metrics`.
fn follow(pattern: &str, shadow: &str, metrics: SocketAddr) -> AgentProcess {
    let metrics = metrics.to_string();
    let args = [
        "run",
        "--iface-pattern",
        pattern,
        "--port",
        "8000",
        "--shadow",
        shadow,
        "--watch-socket",
        "none",
        "--metrics",
        &metrics,
        "--threads",
        "1",
    ];
    AgentProcess::start(&args.map(str::to_owned), "mirror run: ready")
}

/// The agent's open file descriptors by kind: (all, BPF links, BPF maps, BPF programs).
fn open_fds(pid: u32) -> (usize, usize, usize, usize) {
    let mut counts = (0, 0, 0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        counts.0 += 1;
        counts.1 += usize::from(target.contains("bpf_link"));
        counts.2 += usize::from(target.contains("bpf-map"));
        counts.3 += usize::from(target.contains("bpf-prog"));
    }
    counts
}

/// Twenty pods, at most five alive at once: each one's requests are mirrored from one second
/// after its veth appeared (the agent attached by then), and each deleted pod is detached.
/// The shadow and the client are not followed: the shadow is a pod whose name does not
/// match, the client is the node itself.
#[test]
fn pods_are_followed_as_they_come_and_go() {
    mirror_tests::require_root();
    let tag = tag();
    let shadow_pod = Pod::new(&format!("{tag}s")).unwrap();
    let shadow = RecordingServer::start(&shadow_pod.ns, &[PORT]);
    let metrics = free_local_addr();
    let shadow_url = http_url(shadow_pod.addr.into(), PORT, "");
    let agent = follow(&format!("{tag}p*"), &shadow_url, metrics);
    let mut alive = std::collections::VecDeque::new();
    for i in 0..20 {
        let pod = Pod::new(&format!("{tag}p{i:03}")).unwrap();
        let _server = RecordingServer::start(&pod.ns, &[PORT]);
        // The goal is a second: wait it out, then every request must be mirrored.
        std::thread::sleep(
            (pod.appeared + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
        );
        let url = |p: &str| http_url(pod.addr.into(), PORT, &format!("/pod{i}/{p}"));
        run(Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null"])
            .args([url("a"), url("b")]))
        .unwrap();
        let seen = shadow.wait_for(2 * (i + 1), WAIT);
        let mine: Vec<_> =
            seen.iter().filter(|r| r.target.starts_with(&format!("/pod{i}/"))).collect();
        assert_eq!(
            mine.len(),
            2,
            "pod {i}: {:?}",
            seen.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        alive.push_back(pod);
        if alive.len() > 5 {
            let gone = alive.pop_front().unwrap();
            let name = gone.host_if.clone();
            drop(gone);
            wait_for_metrics(metrics, &format!("{name} detached"), |t| {
                !t.contains(&attached_line(&name))
            });
        }
    }
    drop(alive);
    let text = wait_for_metrics(metrics, "every pod detached", |t| changes(t, "detached") == 20);
    assert_eq!(changes(&text, "attached"), 20, "{text}");
    assert_eq!(changes(&text, "failed"), 0, "{text}");
    assert!(!text.contains("mirror_interface_attached{"), "{text}");
    assert_eq!(shadow.requests().len(), 40);
    let (_, links, _, _) = open_fds(agent.pid());
    assert_eq!(links, 0, "the agent still holds BPF links");
    agent.stop();
}

/// 200 veths created and deleted in batches while the agent follows them: afterwards it
/// holds as many file descriptors, maps and programs as before, and no link.
#[test]
fn churn_leaks_nothing() {
    mirror_tests::require_root();
    let tag = tag();
    let metrics = free_local_addr();
    let agent = follow(&format!("{tag}c*"), "http://127.0.0.1:9", metrics);
    let ip = |args: &[&str]| run(Command::new("ip").args(args)).unwrap();
    let mut cycles = 0u64;
    let mut batch = |n: usize| {
        let names: Vec<String> = (0..10).map(|i| format!("{tag}c{:03}", n * 10 + i)).collect();
        for (i, name) in names.iter().enumerate() {
            // The peer's name does not match the pattern: one followed interface per pair.
            ip(&["link", "add", name, "type", "veth", "peer", "name", &format!("{tag}q{i}")]);
        }
        cycles += 10;
        wait_for_metrics(metrics, "attached", |t| changes(t, "attached") == cycles);
        for name in &names {
            ip(&["link", "del", name]);
        }
        wait_for_metrics(metrics, "detached", |t| changes(t, "detached") == cycles);
    };
    // A first batch warms up what is made once (the metrics server's connections, buffers).
    batch(0);
    let before = open_fds(agent.pid());
    for n in 1..=20 {
        batch(n);
    }
    let text = get(metrics, "/metrics").1;
    assert_eq!(changes(&text, "failed"), 0, "{text}");
    // The metrics connection just served may take a moment to be closed on the agent's side.
    let deadline = Instant::now() + WAIT;
    let mut after = open_fds(agent.pid());
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = open_fds(agent.pid());
    }
    assert_eq!(after.1, 0, "links held after churn");
    assert_eq!(after, before, "(fds, links, maps, programs) before and after 200 cycles");
    agent.stop();
}
