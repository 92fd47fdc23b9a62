//! HTTP/2 and gRPC mirrored off the wire: a real gRPC service and client (grpcio from PyPI),
//! nghttp2's h2load and nghttp against nghttpd, the agent tapping the primary's veth, and an
//! HTTP/2 shadow that records every stream it gets.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use mirror_tests::{
    agent::{run_args, AgentProcess},
    bench::wait_listening,
    client::{free_local_addr, get, metric},
    h2::{grpc_messages, H2Recorder, SeenStream},
    mirror_bin,
    netns::Netns,
    tcpdump_writer,
    topology::{Family, Topology},
};

const PORT: u16 = 50051;
const WAIT: Duration = Duration::from_secs(30);

/// `python3 echo.py ARGS` in `ns`, stdout piped: the gRPC service or its clients.
fn python(ns: &Netns, args: &[&str]) -> Child {
    let mut cmd = ns.command("python3");
    cmd.arg(format!("{}/grpc/echo.py", env!("CARGO_MANIFEST_DIR")));
    cmd.args(args).stdout(Stdio::piped()).stdin(Stdio::piped());
    cmd.spawn().expect("python3")
}

/// A server script started in `ns`, once it printed "ready".
fn ready(mut child: Child, what: &str) -> Running {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let running = Running(child);
    assert_eq!(line.trim(), "ready", "{what} did not start");
    running
}

/// A server process, killed when dropped (a failed test included).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gRPC echo service, once it said it is ready.
struct GrpcServer;

impl GrpcServer {
    fn start(ns: &Netns) -> Running {
        ready(python(ns, &["server", &PORT.to_string()]), "the gRPC server")
    }
}

/// Runs the client to its end; its stdout lines.
fn client(ns: &Netns, args: &[&str]) -> Vec<String> {
    let child = python(ns, args);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client failed");
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn agent(topo: &Topology, shadow: &H2Target, extra: &[&str]) -> AgentProcess {
    let url = format!("http://{}", shadow.0);
    let args = run_args(&topo.server_host_if, PORT, &url, extra);
    AgentProcess::start(&args, "mirror run: ready")
}

struct H2Target(SocketAddr);

fn setup() -> (Topology, H2Recorder, H2Target) {
    let topo = Topology::new().unwrap();
    let shadow = H2Recorder::start(&topo.shadow, PORT);
    let target = H2Target(SocketAddr::new(topo.shadow_addr(Family::V4), PORT));
    (topo, shadow, target)
}

fn primary(topo: &Topology) -> String {
    SocketAddr::new(topo.server_addr(Family::V4), PORT).to_string()
}

/// The number after `word` in the agent's summary line starting with `prefix`.
fn summary_count(summary: &str, prefix: &str, word: &str) -> u64 {
    let line = summary.lines().find(|l| l.starts_with(prefix)).expect(summary);
    let words: Vec<&str> = line.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
    words.iter().position(|w| *w == word).map_or(0, |i| words[i + 1].parse().unwrap())
}

/// Unary, client-streaming, server-streaming and bidi calls, three rounds on one long-lived
/// connection: the shadow gets every call with the same messages and metadata, `:authority`
/// rewritten, the stream's `te: trailers` kept; the shadow's grpc-status is counted. A
/// capture of the calls (tcpdump) shows every stream in `mirror dump -r --http`, and
/// `mirror replay -r` mirrors them again.
#[test]
fn grpc_calls_of_every_kind_on_one_connection_are_mirrored() {
    let (topo, shadow, target) = setup();
    let _server = GrpcServer::start(&topo.server);
    let metrics = free_local_addr();
    let agent = agent(&topo, &target, &["--metrics", &metrics.to_string()]);
    let pcap = format!("/tmp/mirror-h2-{}.pcap", std::process::id());
    let mut tcpdump = tcpdump_writer(&topo.server_host_if, &pcap, PORT);
    let calls = client(&topo.client, &["client", &primary(&topo), "api:50051", "3"]);
    assert_eq!(calls.len(), 12);
    let seen = shadow.wait_for(12, WAIT);
    let text = grpc_metrics(metrics);
    let summary = agent.stop();
    // Every answer's grpc-status counted for the shadow; the messages: per round, 1 + 1 + 3
    // + 3 sent (unary, server-streaming, client-streaming, bidi), and the shadow's echo of
    // each call's messages back.
    assert_eq!(labelled(&text, "mirror_shadow_grpc_status_total", "code=\"0\""), 12, "{text}");
    assert_eq!(metric(&text, "mirror_grpc_request_messages_total"), 3 * 8, "{text}");
    assert_eq!(labelled(&text, "mirror_shadow_grpc_messages_total", ""), 3 * 8, "{text}");
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();
    assert_eq!(seen.len(), 12, "{summary}");
    captured_calls_are_shown_and_replayed(&topo, &pcap, &seen);
    let _ = std::fs::remove_file(&pcap);
    let by_call: HashMap<Vec<u8>, &SeenStream> =
        seen.iter().map(|s| (s.header("x-call").unwrap().to_vec(), s)).collect();
    for call in &calls {
        let call: serde_json::Value = serde_json::from_str(call).unwrap();
        let tag = call["metadata"]["x-call"].as_str().unwrap();
        let got = by_call.get(tag.as_bytes()).unwrap_or_else(|| panic!("{tag} not mirrored"));
        assert_eq!(got.path, call["method"].as_str().unwrap());
        assert_eq!((got.method.as_str(), got.authority.as_str()), ("POST", "api-shadow:50051"));
        assert_eq!(
            got.header("x-round"),
            Some(call["metadata"]["x-round"].as_str().unwrap().as_bytes())
        );
        assert_eq!(got.header("content-type"), Some(&b"application/grpc"[..]));
        assert_eq!(got.header("te"), Some(&b"trailers"[..]));
        let sent: Vec<Vec<u8>> =
            call["messages"].as_array().unwrap().iter().map(|m| hex(m.as_str().unwrap())).collect();
        assert_eq!(got.grpc_messages(), sent, "{tag}: the messages as sent");
    }
    assert_eq!(summary_count(&summary, "http:", "h2_streams"), 12, "{summary}");
    assert_eq!(summary_count(&summary, "http:", "h2_out_of_sync"), 0, "{summary}");
    assert_eq!(summary_count(&summary, "shadow ", "2xx"), 12, "{summary}");
}

/// `mirror dump -r --http` shows each stream's request and its answer with its
/// grpc-status; `mirror replay -r` sends every call again, as the live agent did.
fn captured_calls_are_shown_and_replayed(topo: &Topology, pcap: &str, live: &[SeenStream]) {
    let dump = std::process::Command::new(mirror_bin())
        .args(["dump", "-r", pcap, "--http", "-t", "port", &PORT.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dump.stdout);
    let requests = text.lines().filter(|l| l.contains(" > ") && l.contains(": h2 stream "));
    assert_eq!(requests.count(), 12, "{text}");
    let answers = text.lines().filter(|l| l.contains(" 200 grpc-status 0 (body "));
    assert_eq!(answers.count(), 12, "{text}");
    assert!(text.contains("POST api:50051 /echo.Echo/Bidi"), "{text}");

    let again = H2Recorder::start(&topo.shadow, PORT + 1);
    let url = format!("http://{}:{}", topo.shadow_addr(Family::V4), PORT + 1);
    let out = std::process::Command::new(mirror_bin())
        .args(["replay", "-r", pcap, "--port", &PORT.to_string(), "--shadow", &url])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    let replayed = again.wait_for(12, WAIT);
    assert_eq!(replayed.len(), 12, "{summary}");
    let key = |s: &SeenStream| (s.header("x-call").unwrap().to_vec(), s.body.clone());
    let mut a: Vec<_> = replayed.iter().map(key).collect();
    let mut b: Vec<_> = live.iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same calls, the same messages");
}

/// The value of the first sample of `name` whose labels contain `label`.
fn labelled(text: &str, name: &str, label: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(name) && l.contains(label));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The agent's metrics once its shadow's 12 answers are counted.
fn grpc_metrics(metrics: SocketAddr) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = get(metrics, "/metrics");
        let answered = labelled(&text, "mirror_shadow_requests_total", "class=\"2xx\"");
        if answered >= 12 || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// `--percent 10` over 2000 unary calls on one connection: the shadow gets a share a
/// binomial(2000, 0.1) gives with probability above 0.9999 (200 +- 4.5 standard deviations),
/// each copy intact.
#[test]
fn sampling_is_per_stream_on_one_connection() {
    let (topo, shadow, target) = setup();
    let _server = GrpcServer::start(&topo.server);
    let agent = agent(&topo, &target, &["--percent", "10"]);
    let out = client(&topo.client, &["unary", &primary(&topo), "api:50051", "2000"]);
    assert_eq!(out, ["done 2000"]);
    let summary = agent.stop();
    let seen = shadow.streams();
    assert!((140..=260).contains(&seen.len()), "{} of 2000 mirrored: {summary}", seen.len());
    for s in &seen {
        let n = s.header("x-n").unwrap();
        assert_eq!(grpc_messages(&s.body), [n.to_vec()]);
    }
    assert_eq!(summary_count(&summary, "http:", "h2_streams"), 2000, "{summary}");
}

/// nghttpd serving files, h2load's 500 requests on one connection (10 streams at a time),
/// then nghttp with padding and a 256-byte header table: every request mirrored once,
/// exactly.
#[test]
fn h2load_and_nghttp_with_padding_and_a_small_header_table() {
    let (topo, shadow, target) = setup();
    let root = std::env::temp_dir().join(format!("mirror-h2-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "hello").unwrap();
    let nghttpd = Running(
        topo.server
            .command("nghttpd")
            .args(["--no-tls", "-d"])
            .arg(&root)
            .arg(PORT.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(&topo.server, SocketAddr::new(topo.server_addr(Family::V4), PORT));
    let agent = agent(&topo, &target, &[]);
    let url = format!("http://{}/index.html", primary(&topo));
    let load = topo
        .client
        .command("h2load")
        .args(["-n", "500", "-c", "1", "-m", "10", &url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&load.stdout);
    assert!(report.contains("500 succeeded"), "{report}");
    let urls: Vec<String> =
        (0..5).map(|i| format!("http://{}/index.html?n={i}", primary(&topo))).collect();
    let nghttp = topo
        .client
        .command("nghttp")
        .args(["-n", "-b", "20", "-c", "256", "-H", "x-tool: nghttp"])
        .args(&urls)
        .output()
        .unwrap();
    assert!(nghttp.status.success(), "{}", String::from_utf8_lossy(&nghttp.stderr));
    let seen = shadow.wait_for(505, WAIT);
    let summary = agent.stop();
    drop(nghttpd);
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(seen.len(), 505, "{summary}");
    let from_nghttp: Vec<&SeenStream> =
        seen.iter().filter(|s| s.header("x-tool").is_some()).collect();
    let mut paths: Vec<&str> = from_nghttp.iter().map(|s| s.path.as_str()).collect();
    paths.sort_unstable();
    let expected: Vec<String> = (0..5).map(|i| format!("/index.html?n={i}")).collect();
    assert_eq!(paths, expected);
    let authority = format!("{}-shadow:{PORT}", topo.server_addr(Family::V4));
    assert!(seen.iter().all(|s| s.authority == authority && s.method == "GET"), "{:?}", seen[0]);
    assert_eq!(summary_count(&summary, "http:", "h2_out_of_sync"), 0, "{summary}");
}

/// A connection open before the agent started is HTTP/2 joined mid-stream: counted, nothing
/// of it mirrored; a new connection is mirrored.
#[test]
fn joining_mid_stream_is_counted_and_a_new_connection_is_mirrored() {
    let (topo, shadow, target) = setup();
    let _server = GrpcServer::start(&topo.server);
    let mut held = python(&topo.client, &["held", &primary(&topo), "api:50051", "20"]);
    let mut line = String::new();
    let mut held_out = BufReader::new(held.stdout.take().unwrap());
    held_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "first");
    let agent = agent(&topo, &target, &[]);
    held.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    held_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done 20");
    held.wait().unwrap();
    let out = client(&topo.client, &["unary", &primary(&topo), "api:50051", "5"]);
    assert_eq!(out, ["done 5"]);
    let seen = shadow.wait_for(5, WAIT);
    let summary = agent.stop();
    assert_eq!(seen.len(), 5, "only the new connection's calls: {summary}");
    assert!(summary_count(&summary, "http:", "h2_out_of_sync") >= 1, "{summary}");
}

/// nghttp's h2c upgrade (`-u`) to a server that takes it (the demo's, on the h2 library;
/// nghttpd does not): the upgrading GET becomes stream 1, the other URIs further streams of
/// the upgraded connection; all three are mirrored over HTTP/2.
#[test]
fn an_h2c_upgrade_is_mirrored_from_its_first_request() {
    let (topo, shadow, target) = setup();
    let root = std::env::temp_dir().join(format!("mirror-h2c-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a"), "a").unwrap();
    let server = format!("{}/../xtask/demo_server.py", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = topo.server.command("python3");
    cmd.arg(server).arg(&root).arg(PORT.to_string()).stdout(Stdio::piped());
    let _server = ready(cmd.spawn().unwrap(), "the h2c server");
    let agent = agent(&topo, &target, &[]);
    let urls: Vec<String> = ["a?one", "a?two", "a?three"]
        .iter()
        .map(|p| format!("http://{}/{p}", primary(&topo)))
        .collect();
    let out = topo.client.command("nghttp").args(["-u", "-n", "-v"]).args(&urls).output().unwrap();
    let verbose = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && verbose.contains("HTTP Upgrade success"), "{verbose}");
    let seen = shadow.wait_for(3, WAIT);
    let summary = agent.stop();
    let mut paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(paths, ["/a?one", "/a?three", "/a?two"], "{summary}");
    let authority = format!("{}-shadow:{PORT}", topo.server_addr(Family::V4));
    assert!(seen.iter().all(|s| s.authority == authority), "{seen:?}");
    assert!(seen.iter().all(|s| s.header("upgrade").is_none() && s.header("connection").is_none()));
    assert_eq!(summary_count(&summary, "http:", "h2_streams"), 3, "{summary}");
    let _ = std::fs::remove_dir_all(&root);
}

/// `--compare` on HTTP/2: h2load's GETs on one connection to a primary answering
/// `{"id": 7, "name": "a"}`, the secondary the same, the candidate `{"id": "7", ...}`: the
/// type change is the one regression reported, over every call compared.
#[test]
fn http2_answers_are_compared() {
    let (topo, shadow, target) = setup();
    let primary_json = Some(r#"{"id": 7, "name": "a"}"#);
    let _primary = H2Recorder::answering(&topo.server, PORT, primary_json);
    let _secondary = H2Recorder::answering(&topo.shadow, PORT + 1, primary_json);
    let _candidate =
        H2Recorder::answering(&topo.shadow, PORT + 2, Some(r#"{"id": "7", "name": "a"}"#));
    let at = |port: u16| format!("http://{}:{port}", topo.shadow_addr(Family::V4));
    let (candidate, secondary) = (at(PORT + 2), at(PORT + 1));
    let args = ["--compare", "--candidate", &candidate, "--secondary", &secondary];
    let agent = agent(&topo, &target, &args);
    let url = format!("http://{}/users/1", primary(&topo));
    let load = topo
        .client
        .command("h2load")
        .args(["-n", "100", "-c", "1", "-m", "4", &url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&load.stdout).contains("100 succeeded"));
    shadow.wait_for(100, WAIT);
    let summary = agent.stop();
    let verdict = summary.lines().find(|l| l.starts_with("compare: ")).expect(&summary);
    assert!(
        verdict.starts_with("compare: 100 compared over 1 endpoints, 1 with regressions"),
        "{summary}"
    );
    let regressions: Vec<&str> =
        summary.lines().filter(|l| l.starts_with("compare: GET")).collect();
    assert_eq!(regressions.len(), 1, "{summary}");
    assert!(regressions[0].contains("body/id"), "{summary}");
}
