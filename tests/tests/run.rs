//! `mirror run` end to end: a client, a primary and a shadow in their own namespaces, the
//! agent tapping the primary's node-side veth.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use mirror_tests::{
    agent::AgentProcess,
    client::{curl, keep_alive, pipelined, RawRequest},
    http_url,
    server::{expected_body, Behavior, RecordingServer, SeenRequest},
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const WAIT: Duration = Duration::from_secs(20);

fn agent(topo: &Topology, shadow: &str, extra: &[&str]) -> AgentProcess {
    let mut args: Vec<String> = ["run", "-i", &topo.server_host_if, "--port", &PORT.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--shadow".to_string(), shadow.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    AgentProcess::start(&args, "mirror run: ready")
}

fn by_target(requests: &[SeenRequest]) -> HashMap<String, SeenRequest> {
    requests.iter().map(|r| (r.target.clone(), r.clone())).collect()
}

/// The summary line of the first shadow: "shadow A: N mirrored, ...".
fn mirrored(summary: &str) -> u64 {
    mirrored_by(summary, "")
}

/// Copies mirrored to the shadow whose summary line contains `authority`.
fn mirrored_by(summary: &str, authority: &str) -> u64 {
    let line =
        summary.lines().find(|l| l.starts_with("shadow ") && l.contains(authority)).expect(summary);
    line.split(": ").nth(1).and_then(|s| s.split(' ').next()).unwrap().parse().unwrap()
}

fn dropped(summary: &str, reason: &str) -> u64 {
    let line = summary.lines().find(|l| l.starts_with("shadow ")).expect(summary);
    let rest = line.split("dropped").nth(1).unwrap();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let i = words.iter().position(|w| *w == reason).expect(summary);
    words[i + 1].parse().unwrap()
}

/// Istio's mirroring task: 1000 requests with `Host: httpbin:8000` on a keep-alive
/// connection; the shadow gets every one with `Host: httpbin-shadow:8000` and otherwise the
/// same method, target, headers and body; the client gets every primary response.
#[test]
fn istio_mirroring_task() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &shadow_url, &[]);
    let requests: Vec<RawRequest> = (0..1000)
        .map(|i| {
            let body: Vec<u8> =
                if i % 3 == 0 { format!("{{\"n\":{i}}}").into_bytes() } else { vec![] };
            let method = if body.is_empty() { "GET" } else { "POST" };
            RawRequest::new(method, &format!("/anything/{i}?q={}", i * 7), "httpbin:8000", &body)
        })
        .collect();
    let sent: Vec<(String, Vec<u8>)> = requests
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.bytes).into_owned();
            let target = text.split(' ').nth(1).unwrap().to_owned();
            let body = r.bytes[text.find("\r\n\r\n").unwrap() + 4..].to_vec();
            (target, body)
        })
        .collect();
    let primary = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    keep_alive(&topo.client, primary, requests).unwrap();
    let got = by_target(&shadow.wait_for(1000, WAIT));
    let summary = agent.stop();
    assert_eq!(got.len(), 1000, "{summary}");
    assert_eq!(shadow.requests().len(), 1000, "no copy twice");
    let client_ip = topo.client_addr(Family::V4).to_string();
    for (target, body) in sent {
        let r = &got[&target];
        assert_eq!(r.method, if body.is_empty() { "GET" } else { "POST" });
        assert_eq!(r.header("host"), Some(&b"httpbin-shadow:8000"[..]));
        assert_eq!(r.header("x-test"), Some(&b"raw"[..]));
        assert_eq!(r.header("x-forwarded-for"), Some(client_ip.as_bytes()));
        assert_eq!(r.body, body);
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        let expected: Vec<&str> = if body.is_empty() {
            vec!["host", "x-test", "x-forwarded-for"]
        } else {
            vec!["host", "x-test", "content-length", "x-forwarded-for"]
        };
        assert_eq!(names, expected, "header order kept");
    }
    assert_eq!(mirrored(&summary), 1000, "{summary}");
}

/// `--percent 10`, sampled per request on one keep-alive connection of 2000 requests.
#[test]
fn percent_samples_requests_not_connections() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &shadow_url, &["--percent", "10", "--seed", "7"]);
    let requests: Vec<RawRequest> =
        (0..2000).map(|i| RawRequest::new("GET", &format!("/s/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    let n = shadow.requests().len() as u64;
    // Binomial(2000, 0.1): mean 200, sd 13.4; five sd either side.
    assert!((133..=267).contains(&n), "{n} mirrored: {summary}");
    assert_eq!(mirrored(&summary), n, "{summary}");
}

/// Chunked upload, pipelining, Expect: 100-continue, a 5 MiB body, over IPv6: the shadow
/// gets the same bodies as the primary.
#[test]
fn bodies_and_framings_over_ipv6() {
    bodies_and_framings(&[]);
}

/// The same, with the copies pipelined to the shadow (`--pipeline`).
#[test]
fn bodies_and_framings_pipelined_to_the_shadow() {
    bodies_and_framings(&["--pipeline", "8"]);
}

fn bodies_and_framings(extra: &[&str]) {
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V6), PORT, "");
    let agent = agent(&topo, &shadow_url, extra);
    let addr = topo.server_addr(Family::V6);
    let reqs: Vec<RawRequest> = (0..10)
        .map(|i| RawRequest::new("POST", &format!("/pipe/{i}"), "svc", &[b'p'; 100]))
        .collect();
    pipelined(&topo.client, SocketAddr::new(addr, PORT), reqs).unwrap();
    let dir = std::env::temp_dir().join(format!("mirror-run-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = 10;
    for (name, len, extra) in [
        ("chunked", 300_000usize, vec!["-H", "Transfer-Encoding: chunked"]),
        ("continue", 40_000, vec!["-H", "Expect: 100-continue"]),
        ("big", 5 << 20, vec![]),
    ] {
        let body: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
        let file = dir.join(name);
        std::fs::write(&file, &body).unwrap();
        let data = format!("@{}", file.display());
        let url = http_url(addr, PORT, &format!("/upload/{name}"));
        let mut args = vec!["--data-binary", &data];
        args.extend(extra);
        args.push(&url);
        let out = curl(&topo.client, &args).unwrap();
        assert_eq!(out, expected_body("POST", &format!("/upload/{name}"), &body));
        expected += 1;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let got = by_target(&shadow.wait_for(expected, WAIT));
    let summary = agent.stop();
    let primary = by_target(&primary.requests());
    assert_eq!(got.len(), expected, "{summary}");
    for (target, p) in &primary {
        let s = &got[target];
        assert_eq!((&s.method, s.body.len()), (&p.method, p.body.len()), "{target}");
        assert!(s.body == p.body, "{target}: body differs");
        let strip = |r: &SeenRequest| -> Vec<(String, Vec<u8>)> {
            r.headers
                .iter()
                .filter(|(n, _)| n != "host" && n != "x-forwarded-for")
                .cloned()
                .collect()
        };
        assert_eq!(strip(s), strip(p), "{target}: headers");
    }
}

/// Returns the agent's summary.
fn shadow_trouble(behavior: Option<Behavior>, reason: &str, extra: &[&str]) -> String {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let _shadow = behavior.map(|b| RecordingServer::start_with(&topo.shadow, &[PORT], b));
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let metrics_addr = free_local_addr();
    let m = metrics_addr.to_string();
    let mut limits = vec![
        "--timeout-ms",
        "300",
        "--max-in-flight",
        "4",
        "--queue-length",
        "16",
        "--metrics",
        &m,
    ];
    limits.extend(extra);
    let agent = agent(&topo, &shadow_url, &limits);
    // Every primary request still succeeds, with its full response (checked inside).
    for c in 0..3 {
        let requests: Vec<RawRequest> = (0..200)
            .map(|i| RawRequest::new("POST", &format!("/t/{c}/{i}"), "svc", &[b'b'; 2000]))
            .collect();
        keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
            .unwrap();
    }
    let rss = agent.peak_rss_kib();
    let (_, text) = get(metrics_addr, "/metrics");
    let label =
        format!("mirror_shadow_dropped_total{{shadow=\"{shadow_url}\",reason=\"{reason}\"}}");
    assert!(metric(&text, &label) > 0, "{text}");
    let summary = agent.stop();
    assert!(dropped(&summary, reason) > 0, "{summary}");
    assert!(rss < 200 * 1024, "agent peak RSS {rss} KiB");
    summary
}

#[test]
fn shadow_down_changes_nothing_for_the_primary() {
    shadow_trouble(None, "error", &[]);
}

#[test]
fn slow_shadow_changes_nothing_for_the_primary() {
    shadow_trouble(Some(Behavior::Slow(Duration::from_secs(10))), "queue_full", &[]);
}

#[test]
fn resetting_shadow_changes_nothing_for_the_primary() {
    shadow_trouble(Some(Behavior::Reset), "error", &[]);
}

/// Pipelined connections: a copy unanswered past the timeout abandons its connection (and
/// every copy behind it), counted as timeouts (by the time the agent has settled at exit);
/// a resetting shadow counts errors.
#[test]
fn troubled_shadow_with_pipelining_changes_nothing_for_the_primary() {
    let pipeline = ["--pipeline", "4"];
    let slow = Some(Behavior::Slow(Duration::from_secs(10)));
    let summary = shadow_trouble(slow, "queue_full", &pipeline);
    assert!(dropped(&summary, "timeout") >= 4, "{summary}");
    shadow_trouble(Some(Behavior::Reset), "error", &pipeline);
}

/// The shadow is the primary itself, behind the tapped interface on the selected port: the
/// agent's own copies must not be captured and mirrored again.
#[test]
fn own_copies_are_never_mirrored_again() {
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow_url = http_url(topo.server_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &shadow_url, &[]);
    let requests: Vec<RawRequest> =
        (0..100).map(|i| RawRequest::new("GET", &format!("/loop/{i}"), "app:8000", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    primary.wait_for(200, WAIT);
    let summary = agent.stop();
    let hosts: Vec<Vec<u8>> =
        primary.requests().iter().map(|r| r.header("host").unwrap().to_vec()).collect();
    let count = |h: &[u8]| hosts.iter().filter(|x| x.as_slice() == h).count();
    assert_eq!(count(b"app:8000"), 100);
    assert_eq!(count(b"app-shadow:8000"), 100, "{summary}");
    assert_eq!(hosts.len(), 200, "no copy of a copy: {summary}");
    assert!(summary.contains("requests: 100 captured"), "{summary}");
}

/// A loopback address with a port nobody listens on (for the agent's metrics endpoint).
fn free_local_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}

fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Match rules and header edits take effect; the metrics endpoint agrees with the traffic.
#[test]
fn match_rules_header_edits_and_metrics() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let metrics_addr = free_local_addr();
    let m = metrics_addr.to_string();
    let agent = agent(
        &topo,
        &shadow_url,
        &[
            "--match-method",
            "POST",
            "--match-path-prefix",
            "/api/",
            "--match-header",
            "x-canary=yes",
            "--remove-header",
            "authorization",
            "--remove-header",
            "cookie",
            "--set-header",
            "x-mirrored:1",
            "--add-header",
            "x-extra:e",
            "--metrics",
            &m,
        ],
    );
    assert_eq!(get(metrics_addr, "/healthz").0, 200);
    assert_eq!(get(metrics_addr, "/readyz").0, 200);
    let mut requests = Vec::new();
    let mut matching = 0;
    for i in 0..40 {
        let (method, path, canary) = match i % 4 {
            0 => ("POST", "/api/orders", "yes"),
            1 => ("GET", "/api/orders", "yes"),
            2 => ("POST", "/other", "yes"),
            _ => ("POST", "/api/orders", "no"),
        };
        matching += usize::from(i % 4 == 0);
        let mut r = RawRequest::new(method, &format!("{path}?i={i}"), "svc", b"x");
        let extra =
            format!("X-Canary: {canary}\r\nAuthorization: Bearer secret\r\nCookie: s=1\r\n");
        let at = r.bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        r.bytes.splice(at..at, extra.bytes());
        requests.push(r);
    }
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let got = shadow.wait_for(matching, WAIT);
    assert_eq!(got.len(), matching);
    for r in &got {
        assert_eq!(r.method, "POST");
        assert!(r.target.starts_with("/api/"));
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("cookie"), None);
        assert_eq!(r.header("x-mirrored"), Some(&b"1"[..]));
        assert_eq!(r.header("x-extra"), Some(&b"e"[..]));
        assert_eq!(r.header("x-canary"), Some(&b"yes"[..]));
    }
    // The shadow's answers are counted once the agent has read them, and the requests that
    // did not match once the agent has read them from the ring (it polls every 2 ms).
    let label = format!("mirror_shadow_requests_total{{shadow=\"{shadow_url}\",class=\"2xx\"}}");
    let skipped = "mirror_requests_skipped_total{reason=\"not_matched\"}";
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let (status, text) = get(metrics_addr, "/metrics");
        assert_eq!(status, 200);
        let done = metric(&text, &label) == matching as u64
            && metric(&text, skipped) == (40 - matching) as u64;
        if done || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(metric(&text, &label), matching as u64, "{text}");
    assert_eq!(metric(&text, skipped), (40 - matching) as u64, "{text}");
    let summary = agent.stop();
    assert!(summary.contains(&format!("{} not matched", 40 - matching)), "{summary}");
}

/// Bad flags or configuration: a clear error naming the problem, exit 2, nothing attached.
#[test]
fn bad_flags_and_config_exit_2_before_attaching() {
    let topo = Topology::new().unwrap();
    let iface = topo.server_host_if.as_str();
    let dir = std::env::temp_dir().join(format!("mirror-cfg-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_yaml = dir.join("bad.yaml");
    std::fs::write(&bad_yaml, format!("interfaces: [{iface}]\nports: [8000]\nmirrors:\n  - url: http://s:8000\n    mirrorPercent: {{ value: 5 }}\n")).unwrap();
    let yaml = bad_yaml.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--config", &yaml], "mirrorPercent"),
        (
            vec![
                "run",
                "-i",
                iface,
                "--port",
                "8000",
                "--shadow",
                "http://s:8000",
                "--percent",
                "150",
            ],
            "150",
        ),
        (vec!["run", "-i", iface, "--port", "8000", "--shadow", "not a url"], "url"),
        (
            vec!["run", "-i", "nosuchif0", "--port", "8000", "--shadow", "http://s:8000"],
            "nosuchif0",
        ),
        (vec!["run", "-i", iface, "--port", "8000"], "mirrors"),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--bogus"],
            "--bogus",
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--threads", "0"],
            "--threads",
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--pipeline", "0"],
            "limits.pipeline",
        ),
    ];
    for (args, needle) in cases {
        let out =
            std::process::Command::new(mirror_tests::mirror_bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let (_, progs) =
        aya::programs::SchedClassifier::query_tcx(iface, aya::programs::TcAttachType::Ingress)
            .unwrap();
    assert!(progs.is_empty());
}

/// Two shadows, each with its own percentage (on a multi-threaded agent: `--threads 2`).
#[test]
fn several_shadows_with_their_own_percentages() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let all = RecordingServer::start(&topo.shadow, &[PORT]);
    let half = RecordingServer::start(&topo.shadow, &[PORT + 1]);
    let a = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let b = http_url(topo.shadow_addr(Family::V4), PORT + 1, "@50");
    let agent = agent(&topo, &a, &["--shadow", &b, "--seed", "3", "--threads", "2"]);
    let requests: Vec<RawRequest> =
        (0..400).map(|i| RawRequest::new("GET", &format!("/m/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    assert_eq!(all.requests().len(), 400, "{summary}");
    let n = half.requests().len();
    // Binomial(400, 0.5): mean 200, sd 10.
    assert!((150..=250).contains(&n), "{n}: {summary}");
    assert_eq!(mirrored_by(&summary, &format!(":{}", PORT + 1)) as usize, n);
}

/// A rate limit of 20 per second: a fast burst of 400 requests mostly goes unmirrored, and
/// every dropped copy is counted.
#[test]
fn rate_limit_drops_and_counts_the_excess() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &url, &["--rate-limit", "20"]);
    let requests: Vec<RawRequest> =
        (0..400).map(|i| RawRequest::new("GET", &format!("/r/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    let sent = shadow.requests().len() as u64;
    let limited = dropped(&summary, "rate_limited");
    assert_eq!(sent + limited, 400, "{summary}");
    assert!(sent < 200, "{sent} copies passed a limit of 20/s: {summary}");
}

/// Inside the pod: the agent runs in the primary's namespace on its eth0, where requests
/// arrive on ingress and responses leave on egress (the opposite of the node side).
#[test]
fn works_inside_the_pod_too() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args: Vec<String> = ["run", "-i", "eth0", "--port", "8000", "--shadow", &url]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let agent = AgentProcess::start_in(&topo.server, &args, "mirror run: ready");
    let requests: Vec<RawRequest> =
        (0..50).map(|i| RawRequest::new("GET", &format!("/pod/{i}"), "app:8000", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let got = shadow.wait_for(50, WAIT);
    let summary = agent.stop();
    assert_eq!(got.len(), 50, "{summary}");
    assert!(got.iter().all(|r| r.header("host") == Some(&b"app-shadow:8000"[..])));
    assert!(summary.contains("http: requests 50, responses 50"), "{summary}");
}

/// `mirror dump --watch` shows what a running agent mirrors, without attaching anything.
#[test]
fn watching_a_running_agent_shows_what_it_mirrors() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let _shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let socket = std::env::temp_dir().join(format!("mirror-watch-{}.sock", topo.id));
    let s = socket.display().to_string();
    let agent = agent(&topo, &url, &["--watch-socket", &s]);
    let args: Vec<String> =
        ["dump", "--watch", &s, "-c", "20", "-tt"].iter().map(|x| x.to_string()).collect();
    let mut watcher = AgentProcess::start(&args, "watching");
    let requests: Vec<RawRequest> =
        (0..20).map(|i| RawRequest::new("GET", &format!("/w/{i}"), "app:8000", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let mut lines = String::new();
    std::io::Read::read_to_string(watcher.stdout.as_mut().unwrap(), &mut lines).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 20, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.contains(&format!("GET app:8000 /w/{i} HTTP/1.1")), "{l}");
        assert!(l.ends_with(&format!("mirrored to {}", url.trim_start_matches("http://"))), "{l}");
    }
    agent.stop();
    assert!(!socket.exists(), "the agent removes its socket");
}
