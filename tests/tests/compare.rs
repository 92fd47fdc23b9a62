//! `mirror run --compare` end to end: the primary, the secondary and the candidate are real
//! JSON services in their namespaces, all emitting noise (request ids, times, counters, keys
//! in random order, Date, a random header); the agent taps the primary's node-side veth.
use std::{net::SocketAddr, process::Command, time::Duration};

use mirror_tests::{
    agent::AgentProcess,
    client::{curl, free_local_addr, get, post},
    http_url,
    json_service::{Build, JsonService},
    messages_in, mirror_bin,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const SECONDARY: u16 = 8001;
const CANDIDATE: u16 = 8002;

struct Services {
    topo: Topology,
    _primary: JsonService,
    secondary: JsonService,
    candidate: JsonService,
}

fn services(candidate: Build) -> Services {
    let topo = Topology::new().unwrap();
    let primary = JsonService::start(&topo.server, PORT, Build::Current);
    let secondary = JsonService::start(&topo.shadow, SECONDARY, Build::Current);
    let candidate = JsonService::start(&topo.shadow, CANDIDATE, candidate);
    Services { topo, _primary: primary, secondary, candidate }
}

/// Each test sends bursts of hundreds of requests at once: on a loaded machine (tests run
/// side by side) the candidate may fall behind for a while, so the queue has room for all;
/// and medians that a loaded machine moves by tens of milliseconds are not a regression
/// (the slow endpoint is 200 ms slower).
fn compare_agent(s: &Services, admin: SocketAddr) -> AgentProcess {
    compare_agent_with(s, admin, &[])
}

fn compare_agent_with(s: &Services, admin: SocketAddr, extra: &[&str]) -> AgentProcess {
    let shadow = s.topo.shadow_addr(Family::V4);
    let admin = admin.to_string();
    let args: Vec<String> = [
        "run",
        "--admin",
        &admin,
        "--queue-length",
        "4096",
        "--compare-latency-min-ms",
        "100",
        "-i",
        &s.topo.server_host_if,
        "--port",
        "8000",
        "--watch-socket",
        "none",
        "--compare",
        "--candidate",
        &http_url(shadow, CANDIDATE, ""),
        "--secondary",
        &http_url(shadow, SECONDARY, ""),
        "--compare-endpoint",
        "/users/{id}",
        "--compare-endpoint",
        "/orders/{id}",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    AgentProcess::start(&args, "mirror run: ready")
}

/// Waits until the agent at `admin` has compared `n` requests (its API says so).
fn wait_compared(admin: SocketAddr, n: u64) {
    let v = wait_accounted(admin, n);
    assert_eq!(v["compared"].as_u64(), Some(n), "{v}");
}

/// Waits until `n` requests are compared or counted as not compared; the API's overview.
fn wait_accounted(admin: SocketAddr, n: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = get(admin, "/api/overview");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let skipped: u64 = v["not_compared"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(serde_json::Value::as_u64).sum());
        if status == 200 && v["compared"].as_u64().unwrap_or(0) + skipped >= n {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{n} never accounted for: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mirror diff report ARGS --agent ADMIN`: exit code and stdout.
fn report(admin: SocketAddr, args: &[&str]) -> (i32, String) {
    diff_report(&[&["--agent", &admin.to_string()], args].concat())
}

/// `mirror diff report ARGS`: exit code and stdout.
fn diff_report(args: &[&str]) -> (i32, String) {
    let out = Command::new(mirror_bin()).args(["diff", "report"]).args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// GETs over keep-alive connections: `n` of each endpoint (curl's URL ranges).
fn traffic(s: &Services, n: usize, paths: &[&str]) {
    let addr = s.topo.server_addr(Family::V4);
    for path in paths {
        let url = http_url(addr, PORT, &format!("{path}[1-{n}]"));
        curl(&s.topo.client, &["-o", "/dev/null", &url]).unwrap();
    }
}

/// The "compare: ..." lines of the summary, regressions only.
fn regressions(summary: &str) -> Vec<String> {
    summary
        .lines()
        .filter(|l| l.starts_with("compare: ") && !l.contains(" compared over "))
        .map(|l| l.trim_start_matches("compare: ").to_string())
        .collect()
}

fn compared(summary: &str) -> u64 {
    let line = summary.lines().find(|l| l.contains(" compared over ")).expect(summary);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The candidate changed a type on one endpoint, dropped a field on a second and is 200 ms
/// slower on a third: exactly those are reported, none of the noise. A POST is neither
/// compared nor sent to the candidate or the secondary.
#[test]
fn regressions_are_reported_and_noise_is_not() {
    let s = services(Build::Candidate);
    let admin = free_local_addr();
    let agent = compare_agent(&s, admin);
    traffic(&s, 30, &["/users/", "/orders/", "/slow?", "/other/"]);
    let post = http_url(s.topo.server_addr(Family::V4), PORT, "/users/1");
    curl(&s.topo.client, &["-o", "/dev/null", "-d", "x=1", &post]).unwrap();
    wait_compared(admin, 120);
    // The verdict for CI, from the running agent: text, JSON, exit codes.
    let (code, text) = report(admin, &["--fail-on-regression"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("verdict: 3 of 4 endpoints with regressions"), "{text}");
    assert!(text.contains("  body/id type: candidate 30, noise 0"), "{text}");
    assert_eq!(report(admin, &[]).0, 0, "without --fail-on-regression");
    let (_, json) = report(admin, &["--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let users =
        doc["endpoints"].as_array().unwrap().iter().find(|e| e["endpoint"] == "GET /users/{id}");
    let users = users.expect(&json);
    assert_eq!((users["requests"].as_u64(), users["compared"].as_u64()), (Some(30), Some(30)));
    let field = &users["regressions"][0];
    assert_eq!(
        (&field["field"], &field["kind"], &field["raw"], &field["noise"]),
        (&"body/id".into(), &"type".into(), &30.into(), &0.into())
    );
    assert!(doc["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["latency"]["regression"] == true));
    // Samples show the field: the candidate's id is a string, the primary's a number.
    let (status, text) = get(admin, "/api/samples?endpoint=GET%20/users/%7Bid%7D&field=body/id");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let samples: serde_json::Value = serde_json::from_str(body).unwrap();
    let first = &samples[0];
    assert_eq!(status, 200, "{text}");
    assert!(first["request"].as_str().unwrap().starts_with("GET /users/"), "{first}");
    assert!(first["candidate"]["body"].as_str().unwrap().contains("\"id\": \""), "{first}");
    assert!(!first["primary"]["body"].as_str().unwrap().contains("\"id\": \""), "{first}");
    assert_eq!(first["fields"][0]["field"], "body/id", "{first}");
    // The same counts in Prometheus, for a cluster-wide verdict.
    let (_, metrics) = get(admin, "/metrics");
    for line in [
        "mirror_compare_field_differences_total{endpoint=\"GET /users/{id}\",field=\"body/id\",kind=\"type\",side=\"candidate\"} 30",
        "mirror_compare_field_differences_total{endpoint=\"GET /users/{id}\",field=\"body/id\",kind=\"type\",side=\"noise\"} 0",
        "mirror_compare_requests_total{endpoint=\"GET /orders/{id}\",count=\"compared\"} 30",
        "mirror_compare_skipped_total{reason=\"pending_full\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
    let summary = agent.stop();
    let mut found = regressions(&summary);
    found.sort();
    assert_eq!(found.len(), 3, "{summary}");
    assert!(
        found[0].starts_with("GET /orders/{id} body/total missing: candidate 30 noise 0"),
        "{summary}"
    );
    let slow: f64 = found[1]
        .strip_prefix("GET /slow latency: candidate p50 ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect(&summary);
    assert!((150.0..400.0).contains(&slow), "{summary}");
    assert!(
        found[2].starts_with("GET /users/{id} body/id type: candidate 30 noise 0"),
        "{summary}"
    );
    assert_eq!(compared(&summary), 120, "{summary}");
    assert_eq!((s.secondary.unsafe_requests(), s.candidate.unsafe_requests()), (0, 0));
}

/// A candidate that is the primary's build, noise aside: nothing over 2000 requests. (On a
/// loaded machine a copy may be dropped, say by a timeout: it is counted as not compared,
/// by reason, and the rest must still show no regression.)
#[test]
fn an_identical_candidate_has_no_regressions() {
    let s = services(Build::Same);
    let admin = free_local_addr();
    let agent = compare_agent(&s, admin);
    traffic(&s, 500, &["/users/", "/orders/", "/slow?", "/other/"]);
    let overview = wait_accounted(admin, 2000);
    let done = overview["compared"].as_u64().unwrap();
    assert!(done >= 1900, "{overview}");
    assert_eq!(overview["regressed_endpoints"].as_u64(), Some(0), "{overview}");
    let (code, text) = report(admin, &["--fail-on-regression"]);
    assert_eq!(code, 0, "{text}");
    let verdict = format!("verdict: 0 of 4 endpoints with regressions ({done} requests compared)");
    assert!(text.contains(&verdict), "{text}");
    let summary = agent.stop();
    assert!(regressions(&summary).is_empty(), "{summary}");
    assert_eq!(compared(&summary), done, "{summary}");
    assert!(summary.contains("0 with regressions"), "{summary}");
}

/// Results are saved: `mirror diff report --store` reads them offline, equal to what the
/// running agent reported, and a restarted agent goes on from them.
#[test]
fn results_survive_a_restart_and_are_read_offline() {
    let s = services(Build::Candidate);
    let dir = std::env::temp_dir().join(format!("mirror-compare-store-{}", s.topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("results.redb").display().to_string();
    let admin = free_local_addr();
    let agent = compare_agent_with(&s, admin, &["--compare-store", &store]);
    traffic(&s, 10, &["/users/"]);
    wait_compared(admin, 10);
    assert!(report(admin, &[]).1.contains("body/id type"));
    // An ignore rule set through the API: in force at once, saved with the results.
    let (status, text) = post(admin, "/api/ignore", r#"{"fields": ["body/id"]}"#);
    assert_eq!(status, 200, "{text}");
    let (_, live) = report(admin, &["--json"]);
    assert!(!live.contains("body/id"), "{live}");
    agent.stop();
    let (code, offline) = diff_report(&["--store", &store, "--json"]);
    assert_eq!(code, 0);
    assert_eq!(offline, live);
    let admin = free_local_addr();
    let agent = compare_agent_with(&s, admin, &["--compare-store", &store]);
    traffic(&s, 10, &["/users/"]);
    wait_compared(admin, 20);
    assert!(get(admin, "/api/ignore").1.contains("body/id"), "the rule survived the restart");
    agent.stop();
    let (_, text) = diff_report(&["--store", &store]);
    assert!(text.contains("GET /users/{id}: 20 compared of 20"), "{text}");
    assert!(!text.contains("body/id"), "{text}");
    let (code, _) = diff_report(&["--store", &dir.join("none").display().to_string()]);
    assert_eq!(code, 2, "a missing store is an error");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Offline: the primary's answers recorded by real tcpdump, the candidate's and the
/// secondary's replayed now (`mirror replay -r --compare`): the same verdict as live.
#[test]
fn a_tcpdump_capture_is_compared_offline() {
    let s = services(Build::Candidate);
    let dir = std::env::temp_dir().join(format!("mirror-compare-pcap-{}", s.topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("primary.pcap").display().to_string();
    let mut tcpdump = mirror_tests::tcpdump_writer(&s.topo.server_host_if, &pcap, 8000);
    traffic(&s, 10, &["/users/", "/orders/", "/slow?", "/other/"]);
    // tcpdump writes asynchronously: stop it once the file holds the 40 exchanges.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while messages_in(pcap.as_ref()) < 80 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child; SIGINT makes tcpdump flush and exit.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();
    let shadow = s.topo.shadow_addr(Family::V4);
    let out = Command::new(mirror_bin())
        .args(["replay", "-r", &pcap, "--compare"])
        .args(["--candidate", &http_url(shadow, CANDIDATE, "")])
        .args(["--secondary", &http_url(shadow, SECONDARY, "")])
        .args(["--compare-endpoint", "/users/{id}", "--compare-endpoint", "/orders/{id}"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{summary}");
    assert_eq!(compared(&summary), 40, "{summary}");
    let mut found = regressions(&summary);
    found.sort();
    assert_eq!(found.len(), 3, "{summary}");
    assert!(found[0].starts_with("GET /orders/{id} body/total missing: candidate 10 noise 0"));
    assert!(found[1].starts_with("GET /slow latency: candidate p50 "), "{summary}");
    assert!(found[2].starts_with("GET /users/{id} body/id type: candidate 10 noise 0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One agent per node: two agents, each on its own tapped interface, merged by `mirror diff
/// report` into the report of one agent that tapped both.
#[test]
fn two_agents_merge_into_the_report_of_one() {
    let a = services(Build::Candidate);
    let b = Topology::new().unwrap();
    let _b_primary = JsonService::start(&b.server, PORT, Build::Current);
    let shadow = a.topo.shadow_addr(Family::V4);
    let args = |ifaces: &[&str], admin: SocketAddr| -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "--admin".into(), admin.to_string()];
        for i in ifaces {
            v.extend(["-i".to_string(), i.to_string()]);
        }
        v.extend(
            [
                "--port",
                "8000",
                "--watch-socket",
                "none",
                "--compare",
                "--compare-endpoint",
                "/users/{id}",
            ]
            .map(String::from),
        );
        v.extend(["--candidate".into(), http_url(shadow, CANDIDATE, "")]);
        v.extend(["--secondary".into(), http_url(shadow, SECONDARY, "")]);
        v
    };
    let (one, two, both) = (free_local_addr(), free_local_addr(), free_local_addr());
    let agents = [
        AgentProcess::start(&args(&[&a.topo.server_host_if], one), "mirror run: ready"),
        AgentProcess::start(&args(&[&b.server_host_if], two), "mirror run: ready"),
        AgentProcess::start(
            &args(&[&a.topo.server_host_if, &b.server_host_if], both),
            "mirror run: ready",
        ),
    ];
    traffic(&a, 20, &["/users/", "/orders/"]);
    let url = http_url(b.server_addr(Family::V4), PORT, "/users/[1-15]");
    curl(&b.client, &["-o", "/dev/null", &url]).unwrap();
    wait_compared(one, 40);
    wait_compared(two, 15);
    wait_compared(both, 55);
    // Latencies differ from one agent to another (each replays on its own); the counts and
    // the verdict must not.
    let verdict = |args: &[&str]| {
        let (_, json) = diff_report(&[args, &["--json"]].concat());
        let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        for e in doc["endpoints"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("latency");
        }
        doc
    };
    let merged = verdict(&["--agent", &one.to_string(), "--agent", &two.to_string()]);
    assert_eq!(merged, verdict(&["--agent", &both.to_string()]));
    assert_eq!(merged["endpoints"][1]["endpoint"], "GET /users/{id}", "{merged}");
    assert_eq!(merged["endpoints"][1]["compared"], 35, "{merged}");
    drop(agents);
}

/// An agent mirroring to a shadow (port 8000 of the shadow namespace) and comparing with
/// `candidate`, no secondary.
fn troubled_candidate_agent(
    topo: &Topology,
    admin: SocketAddr,
    candidate: &str,
    extra: &[&str],
) -> AgentProcess {
    let shadow = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let admin = admin.to_string();
    let args: Vec<String> = [
        "run",
        "--admin",
        &admin,
        "-i",
        &topo.server_host_if,
        "--port",
        "8000",
        "--watch-socket",
        "none",
        "--shadow",
        &shadow,
        "--compare",
        "--candidate",
        candidate,
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    AgentProcess::start(&args, "mirror run: ready")
}

/// A candidate that is down changes nothing for the primary or for mirroring to a shadow:
/// its copies are counted as not compared, by reason.
#[test]
fn a_candidate_that_is_down_is_counted_and_harms_nothing() {
    let topo = Topology::new().unwrap();
    let _primary = JsonService::start(&topo.server, PORT, Build::Current);
    let shadow = mirror_tests::server::RecordingServer::start(&topo.shadow, &[PORT]);
    let admin = free_local_addr();
    let dead = http_url(topo.shadow_addr(Family::V4), 9, ""); // nothing listens on port 9
    let agent = troubled_candidate_agent(&topo, admin, &dead, &[]);
    let url = http_url(topo.server_addr(Family::V4), PORT, "/users/[1-20]");
    curl(&topo.client, &["-o", "/dev/null", &url]).unwrap();
    let overview = wait_accounted(admin, 20);
    assert_eq!(overview["compared"], 0, "{overview}");
    assert_eq!(overview["not_compared"]["replay_failed"], 20, "{overview}");
    assert_eq!(overview["replay_drops"]["error"], 20, "{overview}");
    assert_eq!(shadow.wait_for(20, Duration::from_secs(20)).len(), 20);
    let summary = agent.stop();
    assert!(summary.contains("not compared: replay_failed 20 (error 20)"), "{summary}");
}

/// The web UI in headless Chromium against a running agent with real results: the
/// endpoints render (the regressed ones marked), an endpoint's field view shows the changed
/// field reported and a sample with it highlighted, and its ignore button takes the field
/// out of the report. The screenshot is written next to the test's files and is not blank.
#[test]
fn the_web_ui_shows_the_verdict_and_ignores_a_field() {
    let s = services(Build::Candidate);
    let admin = free_local_addr();
    let agent = compare_agent(&s, admin);
    traffic(&s, 20, &["/users/", "/orders/", "/other/"]);
    wait_compared(admin, 60);
    let browser = mirror_tests::browser::Browser::start();
    browser.goto(&format!("http://{admin}/"));
    let row = browser.wait_for("tr.endpoint.regressed[data-endpoint='GET /users/{id}']");
    // (Whether /other is marked depends on latency too, which a loaded machine moves.)
    assert!(browser.find("tr.endpoint[data-endpoint^='GET /other/']").is_some());
    browser.click(&row);
    browser.wait_for("tr.reported[data-field='body/id']");
    browser.wait_for("#samples mark");
    let text = browser.text();
    assert!(text.contains("differs in: body/id (type)"), "{text}");
    assert!(text.contains("60 requests compared over 3 endpoints;"), "{text}");
    let png = browser.screenshot();
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare-ui.png");
    std::fs::write(&file, &png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}: {} bytes",
        file.display(),
        png.len()
    );
    let ignore = browser.wait_for("tr[data-field='body/id'] button.ignore");
    browser.click(&ignore);
    browser.wait_gone("tr[data-field='body/id']");
    assert!(!report(admin, &[]).1.contains("body/id"));
    drop(browser);
    agent.stop();
}

/// The UI with 10 000 endpoints (results a store holds, as after a long run): the page
/// draws a bounded number of rows and says how many there are, and the filter finds any
/// one of them.
#[test]
fn the_web_ui_handles_ten_thousand_endpoints() {
    use mirror_compare::{Caps, Comparison, FieldDiff, Kind, Results, Store};
    let s = services(Build::Same);
    let dir = std::env::temp_dir().join(format!("mirror-compare-10k-{}", s.topo.id));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("results.redb");
    let mut results = Results::new(Caps::default());
    let diff = FieldDiff { field: "body/x".into(), kind: Kind::Primitive };
    for i in 0..10_000 {
        let endpoint = format!("GET /e{i:05}");
        results.offered(&endpoint);
        let c = Comparison { candidate: vec![diff.clone()], ..Default::default() };
        results.record(&endpoint, &if i % 2 == 0 { c } else { Comparison::default() });
    }
    Store::new(&store).save(&results, &Default::default()).unwrap();
    let admin = free_local_addr();
    let agent = compare_agent_with(&s, admin, &["--compare-store", &store.display().to_string()]);
    let browser = mirror_tests::browser::Browser::start();
    browser.goto(&format!("http://{admin}/"));
    browser.wait_for("tr.endpoint");
    let text = browser.text();
    assert!(text.contains("10000 requests compared over 10000 endpoints"), "{text}");
    assert!(text.contains("300 of 10000 shown"), "{text}");
    let filter = browser.wait_for("#filter");
    browser.type_into(&filter, "e07778");
    browser.wait_for("tr.endpoint.regressed[data-endpoint='GET /e07778']");
    browser.wait_gone("tr.endpoint[data-endpoint='GET /e00000']");
    drop(browser);
    agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A candidate slower than the timeout: its copies are counted as not compared (timeout);
/// the primary and a shadow get every request.
#[test]
fn a_slow_candidate_is_counted_and_harms_nothing() {
    use mirror_tests::server::{Behavior, RecordingServer};
    let topo = Topology::new().unwrap();
    let _primary = JsonService::start(&topo.server, PORT, Build::Current);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let slow = RecordingServer::start_with(
        &topo.shadow,
        &[CANDIDATE],
        Behavior::Slow(Duration::from_secs(2)),
    );
    let admin = free_local_addr();
    let candidate = http_url(topo.shadow_addr(Family::V4), CANDIDATE, "");
    let agent = troubled_candidate_agent(&topo, admin, &candidate, &["--timeout-ms", "300"]);
    let url = http_url(topo.server_addr(Family::V4), PORT, "/users/[1-10]");
    curl(&topo.client, &["-o", "/dev/null", &url]).unwrap();
    let overview = wait_accounted(admin, 10);
    assert_eq!(overview["compared"], 0, "{overview}");
    assert_eq!(overview["replay_drops"]["timeout"], 10, "{overview}");
    assert_eq!(shadow.wait_for(10, Duration::from_secs(20)).len(), 10);
    agent.stop();
    drop(slow);
}
