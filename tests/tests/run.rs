//! `mirror run` end to end: a client, a primary and a shadow in their own namespaces, the
//! agent tapping the primary's node-side veth.
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use mirror_tests::{
    agent::AgentProcess,
    client::{curl, free_local_addr, get, keep_alive, metric, pipelined, RawRequest},
    http_url,
    server::{expected_body, Behavior, RecordingServer, SeenRequest},
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const WAIT: Duration = Duration::from_secs(20);

/// `mirror run` on the server's host-side veth, without a watch socket (tests run agents side
/// by side; only the watch test serves one).
fn agent(topo: &Topology, shadow: &str, extra: &[&str]) -> AgentProcess {
    AgentProcess::start(&agent_args(topo, shadow, extra), "mirror run: ready")
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
    // Persistent pipelined connections: 64 copies in flight (the default maxInFlight), 16
    // per connection (the default pipeline), so four connections at most.
    let connections = shadow.connections().len();
    assert!(connections <= 64 / 16, "{connections} shadow connections for 1000 copies");
    assert!(!summary.contains("pipelining off"), "{summary}");
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

/// A copy is the captured request byte for byte but for the Host value and X-Forwarded-For:
/// mixed-case and repeated names in an unusual order, odd whitespace, chunk extensions and
/// trailers reach the shadow as the client wrote them.
#[test]
fn copies_are_the_captured_bytes() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &shadow_url, &[]);
    let raw = |text: &str, method: &str, target: &str, body: &[u8]| RawRequest {
        bytes: text.as_bytes().to_vec(),
        expected_body: expected_body(method, target, body),
    };
    let requests = vec![
        raw("GET /a HTTP/1.1\r\nX-Rep: 1\r\nhOsT: svc:8000\r\nAccept: */*\r\nx-rep: 2\r\n\
             X-Forwarded-For: 9.9.9.9\r\nX-REP: 3\r\n\r\n", "GET", "/a", b""),
        raw("POST /b HTTP/1.1\r\nHost: svc:8000\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n\
             4;ext=\"q\"\r\nabcd\r\n3\r\nefg\r\n0\r\nX-T: done\r\n\r\n", "POST", "/b", b"abcdefg"),
        raw("PUT /c?x=1 HTTP/1.1\r\nHost:svc:8000\r\nContent-Length: 5\r\nX-Odd:   spaced  \r\n\r\nhello",
            "PUT", "/c?x=1", b"hello"),
        raw("DELETE /d HTTP/1.1\r\nHOST: svc:8000\r\nCONTENT-length: 0\r\n\r\n", "DELETE", "/d", b""),
    ];
    let client = topo.client_addr(Family::V4).to_string();
    let expected: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.bytes.clone()).unwrap();
            let text = text.replacen("svc:8000", "svc-shadow:8000", 1);
            let text = if text.contains("X-Forwarded-For") {
                text.replace("9.9.9.9", &format!("9.9.9.9, {client}"))
            } else {
                let end = text.find("\r\n\r\n").unwrap();
                format!("{}\r\nX-Forwarded-For: {client}{}", &text[..end], &text[end..])
            };
            text.into_bytes()
        })
        .collect();
    let primary = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    keep_alive(&topo.client, primary, requests).unwrap();
    shadow.wait_for(expected.len(), WAIT);
    let summary = agent.stop();
    let received: Vec<Vec<u8>> = shadow.connections().into_values().map(|c| c.received).collect();
    for copy in &expected {
        let found = received.iter().any(|r| r.windows(copy.len()).any(|w| w == &copy[..]));
        assert!(found, "{:?} not in {:?}\n{summary}", String::from_utf8_lossy(copy), received);
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
/// a resetting shadow counts errors. (One worker: its share of maxInFlight is all 4.)
#[test]
fn troubled_shadow_with_pipelining_changes_nothing_for_the_primary() {
    let pipeline = ["--pipeline", "4", "--threads", "1"];
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

/// Polls /metrics until `done` holds (or [`WAIT`] passes); returns the last text.
fn wait_for_metrics(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = get(addr, "/metrics");
        assert_eq!(status, 200);
        if done(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Neither TCX programs nor a clsact qdisc or tc filters on either hook of `iface`.
fn assert_nothing_attached(iface: &str, context: &str) {
    use aya::programs::{SchedClassifier, TcAttachType};
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, hook).unwrap();
        assert!(progs.is_empty(), "{context}: TCX programs left on {iface} {hook:?}");
    }
    let tc = |args: &[&str]| {
        let out = std::process::Command::new("tc").args(args).output().unwrap();
        assert!(out.status.success(), "tc {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let qdiscs = tc(&["qdisc", "show", "dev", iface]);
    assert!(!qdiscs.contains("clsact"), "{context}: clsact left on {iface}: {qdiscs}");
    for hook in ["ingress", "egress"] {
        let filters = tc(&["filter", "show", "dev", iface, hook]);
        assert!(filters.trim().is_empty(), "{context}: {hook} filters left on {iface}: {filters}");
    }
}

/// Match rules (POST to /api/ with `X-Canary: yes`) and header edits (credentials removed,
/// two headers added), as flags.
const MATCH_AND_EDITS: &[&str] = &[
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
];

/// `n` requests, one in four of which matches [`MATCH_AND_EDITS`]; all carry credentials.
fn canary_requests(n: usize) -> Vec<RawRequest> {
    (0..n)
        .map(|i| {
            let (method, path, canary) = match i % 4 {
                0 => ("POST", "/api/orders", "yes"),
                1 => ("GET", "/api/orders", "yes"),
                2 => ("POST", "/other", "yes"),
                _ => ("POST", "/api/orders", "no"),
            };
            let r = RawRequest::new(method, &format!("{path}?i={i}"), "svc:8000", b"x");
            with_headers(
                r,
                &format!("X-Canary: {canary}\r\nAuthorization: Bearer s\r\nCookie: c=1\r\n"),
            )
        })
        .collect()
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
    let agent = agent(&topo, &shadow_url, &[MATCH_AND_EDITS, &["--metrics", &m]].concat());
    assert_eq!(get(metrics_addr, "/healthz").0, 200);
    assert_eq!(get(metrics_addr, "/readyz").0, 200);
    let requests = canary_requests(40);
    let matching = 10; // one in four: POST, /api/, X-Canary: yes
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
    let http_requests = "mirror_http_total{counter=\"requests\"}";
    let latency_count = format!("mirror_shadow_latency_seconds_count{{shadow=\"{shadow_url}\"}}");
    let depth = format!("mirror_shadow_queue_depth{{shadow=\"{shadow_url}\"}}");
    let selected = "mirror_kernel_total{counter=\"selected\"}";
    // Framing and kernel counters are copied into the metrics once a second.
    let text = wait_for_metrics(metrics_addr, |text| {
        metric(text, &label) == matching as u64
            && metric(text, skipped) == (40 - matching) as u64
            && metric(text, http_requests) == 40
            && metric(text, &latency_count) == matching as u64
            && metric(text, selected) > 0
    });
    assert_eq!(metric(&text, &label), matching as u64, "{text}");
    assert_eq!(metric(&text, skipped), (40 - matching) as u64, "{text}");
    assert_eq!(metric(&text, http_requests), 40, "requests framed: {text}");
    assert_eq!(metric(&text, &latency_count), matching as u64, "one latency per answer: {text}");
    assert!(text.lines().any(|l| l.starts_with(&depth)), "{text}");
    assert_eq!(metric(&text, &depth), 0, "nothing left waiting: {text}");
    assert!(metric(&text, selected) > 0, "{text}");
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
    let write = |name: &str, tail: &str| {
        let path = dir.join(name);
        let head =
            format!("interfaces: [{iface}]\nports: [8000]\nmirrors:\n  - url: http://s:8000\n");
        std::fs::write(&path, head + tail).unwrap();
        path.display().to_string()
    };
    let yaml = write("unknown.yaml", "    mirrorPercent: { value: 5 }\n");
    let yaml_150 = write("150.yaml", "mirrorPercentage: { value: 150 }\n");
    let yaml_150_bare = write("150-bare.yaml", "mirrorPercentage: 150\n");
    let yaml_150_mirror = write("150-mirror.yaml", "    mirrorPercentage: { value: 150 }\n");
    // Every needle must be in the error (case-insensitively).
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["run", "--config", &yaml], &["unknown field", "mirrorPercent"]),
        (vec!["run", "--config", &yaml_150], &["mirrorPercentage", "150"]),
        (vec!["run", "--config", &yaml_150_bare], &["mirrorPercentage", "line 5"]),
        (vec!["run", "--config", &yaml_150_mirror], &["mirrors[0].mirrorPercentage", "150"]),
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
            // The field, not just the value echoed back.
            &["percent", "150", "outside"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "not a url"],
            &["mirrors[0].url", "not a url"],
        ),
        (
            vec!["run", "-i", "nosuchif0", "--port", "8000", "--shadow", "http://s:8000"],
            &["interfaces", "nosuchif0"],
        ),
        (vec!["run", "-i", iface, "--port", "8000"], &["mirrors", "--shadow"]),
        (
            vec!["run", "-i", iface, "--port", "8000", "--candidate", "http://c:1"],
            &["--candidate", "need --compare"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--compare"],
            &["--compare", "--candidate URL"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--compare", "--candidate", "http://c:1"]
                .into_iter()
                .chain(["--compare-method", "DELETE"])
                .collect(),
            &["compare.methods", "DELETE", "side effects"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--bogus"],
            &["--bogus"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--threads", "0"],
            &["--threads"],
        ),
        (
            vec!["run", "-i", iface, "--port", "8000", "--shadow", "http://s:1", "--pipeline", "0"],
            &["limits.pipeline"],
        ),
    ];
    for (args, needles) in cases {
        let out =
            std::process::Command::new(mirror_tests::mirror_bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.to_lowercase().contains(&needle.to_lowercase()),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
        assert_nothing_attached(iface, &format!("{args:?}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
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
    let mut args = agent_args(&topo, &url, &[]);
    let none = args.iter().position(|a| a == "none").unwrap();
    args[none] = s.clone();
    let agent = AgentProcess::start(&args, "mirror run: ready");
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

/// `mirror run` arguments for `topo` without a watch socket (tests run in parallel).
fn agent_args(topo: &Topology, shadow: &str, extra: &[&str]) -> Vec<String> {
    mirror_tests::agent::run_args(&topo.server_host_if, PORT, shadow, extra)
}

/// `r` with `extra` ("Name: value\r\n" lines) inserted after its request line.
fn with_headers(mut r: RawRequest, extra: &str) -> RawRequest {
    let at = r.bytes.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    r.bytes.splice(at..at, extra.bytes());
    r
}

/// A field of `/proc/PID/status` in KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A shadow sleeping 10 s per request, flooded far past the agent's queue and byte budget
/// (4 rounds of 2000 requests, half of them with 64 KiB bodies: 256 MiB against a 2 MiB
/// budget): every primary request succeeds, the agent's memory does not grow from round to
/// round, the queues never hold more than their length (one queue per worker, two workers),
/// copies are dropped by reason (byte budget, full queue, timeout) and never more than
/// maxInFlight are in flight.
#[test]
fn slow_shadow_flooded_keeps_memory_queue_and_in_flight_bounded() {
    const IN_FLIGHT: usize = 4;
    const WORKERS: u64 = 2;
    const QUEUE: u64 = 64;
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow =
        RecordingServer::start_with(&topo.shadow, &[PORT], Behavior::Slow(Duration::from_secs(10)));
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let metrics_addr = free_local_addr();
    let dir = std::env::temp_dir().join(format!("mirror-flood-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    // The byte budget has no flag: 2 MiB, room for 32 of the big copies.
    let yaml = dir.join("limits.yaml");
    std::fs::write(&yaml, "limits: { maxQueuedBytes: 2097152 }\n").unwrap();
    let (y, m) = (yaml.display().to_string(), metrics_addr.to_string());
    let (n, q, t) = (IN_FLIGHT.to_string(), QUEUE.to_string(), TIMEOUT.as_millis().to_string());
    let limits = ["--config", &y, "--max-in-flight", &n, "--queue-length", &q, "--timeout-ms", &t];
    let workers = WORKERS.to_string();
    let mut args =
        agent_args(&topo, &shadow_url, &[&limits[..], &["--threads", &workers]].concat());
    args.extend(["--metrics".to_string(), m]);
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let depth = format!("mirror_shadow_queue_depth{{shadow=\"{shadow_url}\"}}");
    let drops = |reason: &str| {
        format!("mirror_shadow_dropped_total{{shadow=\"{shadow_url}\",reason=\"{reason}\"}}")
    };
    let big = vec![b'z'; 64 << 10];
    let mut peaks = Vec::new();
    for round in 0..4 {
        let requests: Vec<RawRequest> = (0..2000)
            .map(|i| {
                let body: &[u8] = if i % 2 == 0 { &big } else { b"small" };
                RawRequest::new("POST", &format!("/flood/{round}/{i}"), "svc", body)
            })
            .collect();
        // Checks every primary response.
        keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
            .unwrap();
        let (_, text) = get(metrics_addr, "/metrics");
        assert!(text.lines().any(|l| l.starts_with(&depth)), "{text}");
        assert!(metric(&text, &depth) <= WORKERS * QUEUE, "round {round}: {text}");
        peaks.push(proc_status_kib(agent.pid(), "VmHWM:"));
    }
    let text = wait_for_metrics(metrics_addr, |text| metric(text, &drops("timeout")) > 0);
    for reason in ["byte_budget", "queue_full", "timeout"] {
        assert!(metric(&text, &drops(reason)) > 0, "no {reason} drops: {text}");
    }
    assert!(metric(&text, &depth) <= WORKERS * QUEUE, "{text}");
    let summary = agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    for reason in ["byte_budget", "queue_full", "timeout"] {
        assert!(dropped(&summary, reason) > 0, "{reason}: {summary}");
    }
    // Peak RSS after the first round (queue and budget already full) and after the last.
    let growth = peaks[3].saturating_sub(peaks[0]);
    assert!(growth < 20 << 10, "agent peak RSS grew {growth} KiB: {peaks:?} KiB");
    assert!(peaks[3] < 200 << 10, "agent peak RSS {peaks:?} KiB");
    // In flight: a slot is freed only by the timeout (the shadow never answers in time), so
    // in any stretch of half a timeout at most IN_FLIGHT copies can arrive.
    let times = shadow.arrival_times();
    assert!(times.len() >= IN_FLIGHT, "{} copies reached the shadow: {summary}", times.len());
    for (i, first) in times.iter().enumerate() {
        let within = times[i..].iter().take_while(|t| t.duration_since(*first) < TIMEOUT / 2);
        let count = within.count();
        assert!(count <= IN_FLIGHT, "{count} copies within {:?}: {summary}", TIMEOUT / 2);
    }
}

/// Writes `request` on a new connection to `server` from inside `ns` and reads the head of
/// the answer; then, if `then` is given, writes it on the same connection and reads again.
/// Returns the status lines.
fn raw_exchange(
    ns: &mirror_tests::netns::Netns,
    server: SocketAddr,
    request: &'static [u8],
    then: Option<&'static [u8]>,
) -> Vec<String> {
    ns.run(move || {
        let mut stream = TcpStream::connect(server).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut status = Vec::new();
        for bytes in std::iter::once(request).chain(then) {
            stream.write_all(bytes).unwrap();
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while !got.ends_with(b"\r\n\r\n") {
                assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed: {got:?}");
                got.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&got).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            stream.read_exact(&mut body).unwrap();
            status.push(head.lines().next().unwrap().to_owned());
        }
        status
    })
}

/// Upgrade (WebSocket) and CONNECT requests are not mirrored, nor anything after them on
/// their connections; requests on other connections are.
#[test]
fn upgrade_and_connect_are_not_mirrored() {
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = AgentProcess::start(&agent_args(&topo, &url, &[]), "mirror run: ready");
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let before = keep_alive(
        &topo.client,
        server,
        (0..5).map(|i| RawRequest::new("GET", &format!("/normal/a{i}"), "svc", b"")).collect(),
    );
    before.unwrap();
    let ws = b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // The primary does not switch protocols, so a request after it is answered too: the
    // agent must not mirror it either (the connection is no longer HTTP/1 to the agent).
    let after = b"GET /after-upgrade HTTP/1.1\r\nHost: svc\r\n\r\n";
    let status = raw_exchange(&topo.client, server, ws, Some(after));
    assert_eq!(status.len(), 2, "{status:?}");
    let connect = b"CONNECT svc.example:443 HTTP/1.1\r\nHost: svc.example:443\r\n\r\n";
    let status = raw_exchange(&topo.client, server, connect, None);
    assert!(status[0].starts_with("HTTP/1.1 "), "{status:?}");
    keep_alive(
        &topo.client,
        server,
        (0..5).map(|i| RawRequest::new("GET", &format!("/normal/b{i}"), "svc", b"")).collect(),
    )
    .unwrap();
    shadow.wait_for(10, WAIT);
    let summary = agent.stop();
    let primary_targets: Vec<String> =
        primary.requests().iter().map(|r| r.target.clone()).collect();
    for t in ["/ws", "/after-upgrade", "svc.example:443"] {
        assert!(primary_targets.iter().any(|p| p == t), "the primary got {t}: {primary_targets:?}");
    }
    let mut got: Vec<String> = shadow.requests().iter().map(|r| r.target.clone()).collect();
    got.sort();
    let mut want: Vec<String> =
        ["a", "b"].iter().flat_map(|c| (0..5).map(move |i| format!("/normal/{c}{i}"))).collect();
    want.sort();
    assert_eq!(got, want, "{summary}");
    assert_eq!(mirrored(&summary), 10, "{summary}");
    assert!(summary.contains("upgraded_connections 2"), "{summary}");
}

/// Consistent sampling by a header at 30 %: 20 users, 10 requests each, interleaved on one
/// keep-alive connection: each user is mirrored entirely or not at all, and both happen.
#[test]
fn consistent_sampling_by_header_mirrors_whole_users() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args = agent_args(&topo, &url, &["--percent", "30", "--sample-by-header", "x-user"]);
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let requests: Vec<RawRequest> = (0..10)
        .flat_map(|n| (0..20).map(move |u| (u, n)))
        .map(|(u, n)| {
            let r = RawRequest::new("GET", &format!("/u/{u}/{n}"), "svc", b"");
            with_headers(r, &format!("X-User: user-{u}\r\n"))
        })
        .collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for r in shadow.requests() {
        let user = String::from_utf8(r.header("x-user").unwrap().to_vec()).unwrap();
        assert!(r.target.starts_with(&format!("/u/{}/", &user[5..])), "{user}: {}", r.target);
        *per_user.entry(user).or_default() += 1;
    }
    assert!(per_user.values().all(|&n| n == 10), "all or none per user: {per_user:?}");
    let users = per_user.len();
    assert!((1..20).contains(&users), "{users} of 20 users mirrored at 30 %: {summary}");
    assert_eq!(mirrored(&summary), 10 * users as u64, "{summary}");
}

/// A shadow answering 500: copies are counted under 5xx, in the summary and the metrics.
#[test]
fn shadow_errors_are_counted_as_5xx() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start_with(&topo.shadow, &[PORT], Behavior::Status(500));
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let metrics_addr = free_local_addr();
    let m = metrics_addr.to_string();
    let agent =
        AgentProcess::start(&agent_args(&topo, &url, &["--metrics", &m]), "mirror run: ready");
    let requests: Vec<RawRequest> =
        (0..60).map(|i| RawRequest::new("GET", &format!("/e/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let class = |c: &str| format!("mirror_shadow_requests_total{{shadow=\"{url}\",class=\"{c}\"}}");
    let text = wait_for_metrics(metrics_addr, |text| metric(text, &class("5xx")) == 60);
    assert_eq!(metric(&text, &class("5xx")), 60, "{text}");
    assert_eq!(metric(&text, &class("2xx")), 0, "{text}");
    let summary = agent.stop();
    assert_eq!(shadow.requests().len(), 60);
    assert_eq!(mirrored(&summary), 60, "{summary}");
    assert!(summary.contains("2xx 0 3xx 0 4xx 0 5xx 60;"), "{summary}");
}

/// Method, target, headers and body of a copy.
type SeenCopy = (String, String, Vec<(String, Vec<u8>)>, Vec<u8>);

/// What one run of [`mirror_with`] produced, comparable across runs.
#[derive(Debug, PartialEq)]
struct MirrorOutcome {
    /// What the first shadow got (sorted by target), without X-Forwarded-For.
    all: Vec<SeenCopy>,
    /// Targets the second (50 %) shadow got, sorted.
    half: Vec<String>,
    /// "requests: ..." of the summary, and each shadow's counts after its authority.
    summary: Vec<String>,
}

/// Match rules, header edits, a literal host and two shadows (100 % and 50 %, seeded),
/// configured by `configure` (flags or a YAML file); 80 requests of which 20 match.
fn mirror_with(
    configure: impl FnOnce(&Topology, &str, &str, &std::path::Path) -> Vec<String>,
) -> MirrorOutcome {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let all = RecordingServer::start(&topo.shadow, &[PORT]);
    let half = RecordingServer::start(&topo.shadow, &[PORT + 1]);
    let a = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let b = http_url(topo.shadow_addr(Family::V4), PORT + 1, "");
    let dir = std::env::temp_dir().join(format!("mirror-same-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let agent = AgentProcess::start(&configure(&topo, &a, &b, &dir), "mirror run: ready");
    let requests = canary_requests(80);
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    let client = topo.client_addr(Family::V4).to_string();
    let mut got_all: Vec<_> = all
        .requests()
        .into_iter()
        .map(|r| {
            assert_eq!(r.header("x-forwarded-for"), Some(client.as_bytes()));
            let headers = r.headers.into_iter().filter(|(n, _)| n != "x-forwarded-for").collect();
            (r.method, r.target, headers, r.body)
        })
        .collect();
    got_all.sort();
    let mut got_half: Vec<String> = half.requests().into_iter().map(|r| r.target).collect();
    got_half.sort();
    let summary = summary
        .lines()
        .filter_map(|l| {
            if l.starts_with("requests:") {
                Some(l.to_owned())
            } else {
                l.strip_prefix("shadow ").map(|l| l.split_once(": ").unwrap().1.to_owned())
            }
        })
        .collect();
    MirrorOutcome { all: got_all, half: got_half, summary }
}

/// A YAML `--config` with the Istio-like names does what the same settings as flags do.
/// (One worker each: a seed makes the sample reproducible within a worker, and which worker
/// a connection goes to depends on its client port.)
#[test]
fn yaml_config_mirrors_like_the_flags() {
    let flags = mirror_with(|topo, a, b, _| {
        let b = format!("{b}@50");
        let extra = [
            &["--shadow", &b, "--seed", "9", "--threads", "1"],
            MATCH_AND_EDITS,
            &["--host-rewrite", "canary.local:8000"],
        ]
        .concat();
        agent_args(topo, a, &extra)
    });
    let yaml = mirror_with(|topo, a, b, dir| {
        let text = format!(
            r#"interfaces: [{iface}]
ports: [{PORT}]
mirrors:
  - url: {a}
  - url: {b}
    mirrorPercentage: {{ value: 50 }}
match:
  - methods: [POST]
    uri: {{ prefix: /api/ }}
    headers:
      x-canary: {{ exact: "yes" }}
headers:
  request:
    set: {{ x-mirrored: "1" }}
    add: {{ x-extra: e }}
    remove: [authorization, cookie]
hostRewrite: {{ literal: "canary.local:8000" }}
seed: 9
"#,
            iface = topo.server_host_if
        );
        let path = dir.join("mirror.yaml");
        std::fs::write(&path, text).unwrap();
        ["run", "--config", &path.display().to_string(), "--watch-socket", "none", "--threads", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    // The flag run on its own: the settings took effect.
    assert_eq!(flags.all.len(), 20, "{flags:?}");
    for (method, target, headers, body) in &flags.all {
        assert_eq!((method.as_str(), body.as_slice()), ("POST", &b"x"[..]));
        assert!(target.starts_with("/api/orders?i="), "{target}");
        let names: Vec<String> =
            headers.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect();
        // In the order sent (Authorization and Cookie removed), then the edits.
        assert_eq!(
            names,
            [
                "x-canary: yes",
                "host: canary.local:8000",
                "x-test: raw",
                "content-length: 1",
                "x-mirrored: 1",
                "x-extra: e",
            ]
        );
    }
    assert!((1..20).contains(&flags.half.len()), "{flags:?}");
    assert_eq!(flags.summary[0], "requests: 80 captured, 60 not matched");
    // The YAML run: the same copies, the same sample, the same counts.
    assert_eq!(yaml, flags);
}

/// SIGINT stops the agent like SIGTERM: exit 0, the summary, nothing left attached.
#[test]
fn sigint_stops_cleanly_with_a_summary() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &url, &[]);
    let iface = topo.server_host_if.as_str();
    let tcx = |hook| aya::programs::SchedClassifier::query_tcx(iface, hook).unwrap().1.len();
    let mut tc = std::process::Command::new("tc");
    tc.args(["filter", "show", "dev", iface, "ingress"]);
    let netlink = String::from_utf8(tc.output().unwrap().stdout).unwrap();
    let attached = tcx(aya::programs::TcAttachType::Ingress) > 0 || netlink.contains("mirror");
    assert!(attached, "the tap is attached while the agent runs");
    let requests: Vec<RawRequest> =
        (0..30).map(|i| RawRequest::new("GET", &format!("/int/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    shadow.wait_for(30, WAIT);
    // Exit status 0 is asserted by stop_with.
    let text = agent.stop_with(libc::SIGINT);
    assert!(text.contains("mirror run: stopped"), "{text}");
    assert!(text.contains("requests: 30 captured"), "{text}");
    assert_eq!(mirrored(&text), 30, "{text}");
    assert_nothing_attached(iface, "after SIGINT");
}

/// The reassembly caps are configurable: with `reassembly.maxMessageBytes: 1000` a request
/// larger than that is skipped and counted, and the ones around it are still mirrored.
#[test]
fn reassembly_caps_come_from_the_config() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let path = std::env::temp_dir().join(format!("mirror-caps-{}.yaml", topo.id));
    let yaml = format!(
        "interfaces: [{}]\nports: [{PORT}]\nmirrors: [{{ url: \"{url}\" }}]\n\
         reassembly: {{ maxMessageBytes: 1000, maxConnections: 10 }}\n",
        topo.server_host_if
    );
    std::fs::write(&path, yaml).unwrap();
    let args: Vec<String> = ["run", "--config", &path.display().to_string()]
        .iter()
        .chain(&["--watch-socket", "none"])
        .map(|s| s.to_string())
        .collect();
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let requests = vec![
        RawRequest::new("POST", "/small/1", "svc", &[b'a'; 100]),
        RawRequest::new("POST", "/big", "svc", &[b'b'; 2000]),
        RawRequest::new("POST", "/small/2", "svc", &[b'c'; 100]),
    ];
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    shadow.wait_for(2, WAIT);
    let summary = agent.stop();
    std::fs::remove_file(&path).unwrap();
    // The agent waits for copies in flight before it exits: nothing more can arrive.
    let got = shadow.requests();
    let mut targets: Vec<&str> = got.iter().map(|r| r.target.as_str()).collect();
    targets.sort();
    assert_eq!(targets, ["/small/1", "/small/2"], "{summary}");
    assert!(summary.contains("oversized_requests 1"), "{summary}");
    assert_eq!(mirrored(&summary), 2, "{summary}");
}

/// The number after `name` in the summary line starting with `prefix`, 0 if absent (the
/// reassembly and http lines leave zero counters out).
fn summary_count(summary: &str, prefix: &str, name: &str) -> u64 {
    let line = summary.lines().find(|l| l.starts_with(prefix)).expect(summary);
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    words.iter().position(|w| *w == name).map_or(0, |i| words[i + 1].parse().unwrap())
}

/// Large response bodies are only measured by `mirror run`: once a response's head is read,
/// the agent tells the kernel to leave the rest of its body out of the ring. Four 512 KiB
/// responses (nginx, rate-limited so the body outlasts the agent's reaction) and a small
/// one, on one keep-alive connection: most body bytes never reach the ring, yet every
/// response is framed and paired and every request mirrored, the last one included.
#[test]
fn unread_response_bodies_stay_in_the_kernel() {
    const BODY: usize = 512 * 1024;
    let topo = Topology::new().unwrap();
    let dir = std::env::temp_dir().join(format!("mirror-elide-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("big"), vec![b'z'; BODY]).unwrap();
    let _primary = mirror_tests::bench::Nginx::start(
        &topo.server,
        &format!("elide-{}", topo.id),
        &format!(
            "server {{ listen {PORT}; root {}; limit_rate 4m; \
             location = /small {{ return 200 \"small\\n\"; }} }}",
            dir.display()
        ),
    );
    let addr = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    mirror_tests::bench::wait_listening(&topo.client, addr);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = agent(&topo, &shadow_url, &[]);
    let (big, small) = (http_url(addr.ip(), PORT, "/big"), http_url(addr.ip(), PORT, "/small"));
    let mut args = vec!["-w", "%{size_download} %{num_connects}\\n"];
    for url in [&big, &big, &big, &big, &small] {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = curl(&topo.client, &args).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[..4].iter().all(|l| l.starts_with(&format!("{BODY} "))), "{out}");
    assert_eq!(lines.iter().filter(|l| l.ends_with(" 1")).count(), 1, "one connection: {out}");
    let got = shadow.wait_for(5, WAIT);
    let summary = agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(got.len(), 5, "{summary}");
    assert_eq!(got[4].target, "/small", "{summary}");
    let bodies = 4 * BODY as u64;
    let elided = summary_count(&summary, "captured:", "elided");
    let copied = summary_count(&summary, "captured:", "bytes");
    assert!(elided > bodies / 2, "most body bytes left out: {summary}");
    assert!(copied < bodies / 2, "{summary}");
    assert_eq!(summary_count(&summary, "reassembly:", "elided_bytes"), elided, "{summary}");
    assert_eq!(summary_count(&summary, "reassembly:", "gap_bytes"), 0, "{summary}");
    assert_eq!(summary_count(&summary, "http:", "responses"), 5, "{summary}");
    for lost in ["lost_messages", "unpaired_responses", "malformed_responses"] {
        assert_eq!(summary_count(&summary, "http:", lost), 0, "{lost}: {summary}");
    }
}
