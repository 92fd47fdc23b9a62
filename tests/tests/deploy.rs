//! deploy/: the manifests validate against Kubernetes' schemas (kubernetes-validate
//! --strict), the example configuration is one the agent accepts, the dashboard asks only for
//! metrics the agent has, and the image built from scratch runs as the DaemonSet runs it.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use mirror_tests::{
    client::{free_local_addr, get, keep_alive, RawRequest},
    http_url, mirror_bin,
    netns::run,
    server::RecordingServer,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const WAIT: Duration = Duration::from_secs(30);

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn manifests_validate_strictly() {
    let resources = ["namespace.yaml", "configmap.yaml", "daemonset.yaml"];
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(resources.map(|r| deploy().join(r)))
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches(" passed for resource ").count(), 3, "{}", text(&out));
    // The kustomization names files that exist (kubernetes-validate has no schema for it).
    let kustomization = std::fs::read_to_string(deploy().join("kustomization.yaml")).unwrap();
    let named: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".json"))
        .collect();
    assert_eq!(named.len(), 4, "{kustomization}");
    for file in named {
        assert!(deploy().join(file).exists(), "kustomization.yaml names a missing {file}");
    }
}

/// The ConfigMap's `mirror.yaml`, as the agent reads it from its mount.
fn example_config() -> String {
    let configmap = std::fs::read_to_string(deploy().join("configmap.yaml")).unwrap();
    let body = configmap.split_once("  mirror.yaml: |\n").expect("a mirror.yaml key").1;
    let lines = body.lines().take_while(|l| l.is_empty() || l.starts_with("    "));
    lines.map(|l| l.get(4..).unwrap_or("").to_owned() + "\n").collect()
}

#[test]
fn the_example_configuration_is_accepted() {
    let file = std::env::temp_dir().join(format!("mirror-example-{}.yaml", std::process::id()));
    std::fs::write(&file, example_config()).unwrap();
    let check = |extra: &[&str]| {
        Command::new(mirror_bin())
            .args(["run", "--check", "--config"])
            .arg(&file)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    assert!(out.status.success() && text(&out).contains("configuration ok"), "{}", text(&out));
    // The check is a real one: a bad value is refused, naming the field.
    let out = check(&["--percent", "150"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("mirrorPercentage"), "{}", text(&out));
    std::fs::remove_file(&file).unwrap();
}

/// Every metric the dashboard queries, as named in its expressions.
fn dashboard_metrics() -> Vec<String> {
    let json = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("mirror_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Names for things this test process creates: unique among parallel tests and processes.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn wait_ready(metrics: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(metrics).is_err() || get(metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "the agent did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent with a shadow, some requests through it: every metric the dashboard queries is
/// in its /metrics (a renamed metric breaks the dashboard, and this test).
#[test]
fn the_dashboard_asks_for_metrics_the_agent_has() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let metrics = free_local_addr();
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args = mirror_tests::agent::run_args(
        &topo.server_host_if,
        PORT,
        &shadow_url,
        &["--metrics", &metrics.to_string()],
    );
    let agent = mirror_tests::agent::AgentProcess::start(&args, "mirror run: ready");
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let requests = (0..5).map(|i| RawRequest::new("GET", &format!("/d{i}"), "svc", b""));
    keep_alive(&topo.client, server, requests.collect()).unwrap();
    shadow.wait_for(5, WAIT);
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "{wanted:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = get(metrics, "/metrics");
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|m| !body.lines().any(|l| l.starts_with(&format!("{m}{{"))))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard asks for {missing:?}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.stop();
}

/// An image and a container of this test, removed even when it fails.
struct Podman {
    image: String,
    container: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.container]).output();
        let _ = Command::new("podman").args(["rmi", "-f", &self.image]).output();
    }
}

/// `--ulimit` values within this process's own limits: podman's defaults are above the hard
/// limits of some sandboxes (CI's among them), where the runtime cannot set them.
fn ulimits() -> Vec<String> {
    let limit = |resource, name: &str, at_most: u64| {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the struct.
        unsafe { libc::getrlimit(resource, &mut r) };
        let value = r.rlim_cur.min(at_most);
        format!("--ulimit={name}={value}:{value}")
    };
    vec![limit(libc::RLIMIT_NOFILE, "nofile", 65536), limit(libc::RLIMIT_NPROC, "nproc", 4096)]
}

/// deploy/image.sh builds the image from the binary and its libraries alone; podman runs it
/// the way the DaemonSet does (its capabilities only, host network, the bpffs and
/// /run/netns mounted):
/// a pod namespace's requests are mirrored, and stopping the container (SIGTERM) detaches.
#[test]
fn the_image_runs_as_the_daemonset_runs_it() {
    mirror_tests::require_root();
    let names = Podman { image: unique("localhost/mirror-test"), container: unique("mirror-test") };
    let built = run(Command::new("bash")
        .arg(deploy().join("image.sh"))
        .arg(mirror_bin())
        .arg(&names.image))
    .unwrap();
    assert!(!text(&built).trim().is_empty(), "no image id");
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let metrics = free_local_addr();
    let pin = mirror_tests::PinDir::new("image");
    // runc: Debian's crun refuses hybrid cgroup hierarchies (as on CI's machines).
    let started = run(Command::new("podman")
        .args(["--runtime", "runc", "run", "-d", "--name", &names.container])
        // The DaemonSet's securityContext: not privileged, its capabilities only.
        .args(["--cap-drop=ALL", "--cap-add=BPF,NET_ADMIN,PERFMON,SETPCAP"])
        .args(["--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges"])
        .args(["--network", "host"])
        .args(["-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", "/run/netns:/run/netns:ro"])
        .args(ulimits())
        .arg(&names.image)
        .args(["run", "-i", &topo.server_host_if, "--port", "8000"])
        .args(["--shadow", &http_url(topo.shadow_addr(Family::V4), PORT, "")])
        .args(["--watch-socket", "none", "--metrics", &metrics.to_string()])
        .arg(pin.arg()));
    assert!(started.is_ok(), "{started:?}");
    wait_ready(metrics);
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let requests = (0..10).map(|i| RawRequest::new("GET", &format!("/c{i}"), "svc:8000", b""));
    keep_alive(&topo.client, server, requests.collect()).unwrap();
    let seen = shadow.wait_for(10, WAIT);
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|r| r.header("host") == Some(&b"svc-shadow:8000"[..])));
    assert_eq!(primary.requests().len(), 10);
    assert_eq!(mirror_tests::ours_on(&topo.server_host_if), [1, 1]);
    let stopped = run(Command::new("podman").args(["stop", "-t", "20", &names.container]));
    assert!(stopped.is_ok(), "{stopped:?}");
    let logs = run(Command::new("podman").args(["logs", &names.container])).unwrap();
    assert!(text(&logs).contains("mirror run: stopped"), "{}", text(&logs));
    assert_eq!(mirror_tests::ours_on(&topo.server_host_if), [0, 0], "SIGTERM detached");
    assert!(!pin.0.exists(), "SIGTERM unpinned");
}
