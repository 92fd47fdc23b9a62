//! `mirror dump` and `mirror replay`: tcpdump interop with real tcpdump and tshark, filter
//! expressions on live traffic, golden output formats, replaying a real capture.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use mirror_agent::replay::Speed;
use mirror_capture::{pcap::PcapSink, Direction, Segment};
use mirror_testkit::Conversation;
use mirror_tests::{
    agent::AgentProcess,
    client::{keep_alive, RawRequest},
    messages_in, mirror_bin,
    netns::run,
    server::RecordingServer,
    topology::{Family, Topology},
};

const PORT: u16 = 8000;

fn mixed(n: usize) -> Vec<RawRequest> {
    (0..n)
        .map(|i| {
            let body = vec![b'a' + (i % 26) as u8; if i % 5 == 4 { 100_000 } else { i * 10 }];
            let method = if body.is_empty() { "GET" } else { "POST" };
            RawRequest::new(method, &format!("/d/{i}"), "svc:8000", &body)
        })
        .collect()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tmp(topo: &Topology, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mirror-dump-{}-{name}", topo.id))
}

/// "N packets captured" from the closing counts.
fn captured(stderr: &str) -> usize {
    closing_count(stderr, "captured") as usize
}

/// N of tcpdump's closing line "N packets WHAT" ("captured", "received by filter",
/// "dropped by kernel").
fn closing_count(stderr: &str, what: &str) -> u64 {
    let suffix = format!(" packets {what}");
    let mut found = stderr.lines().filter_map(|l| l.strip_suffix(suffix.as_str()));
    let n = found.next().unwrap_or_else(|| panic!("no \"{suffix}\" line: {stderr}"));
    assert!(found.next().is_none(), "two \"{suffix}\" lines: {stderr}");
    n.parse().unwrap_or_else(|_| panic!("{n:?}: {stderr}"))
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

/// Reads the child's stdout to its end on a thread, so a full pipe never blocks it.
fn collect_stdout(p: &mut AgentProcess) -> std::thread::JoinHandle<String> {
    let mut stdout = p.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    })
}

/// The words of the summary line that starts with `prefix`, split at spaces and punctuation.
fn summary_words<'a>(summary: &'a str, prefix: &str) -> Vec<&'a str> {
    let line = summary.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| {
        panic!("no line starting with {prefix:?} in the summary:\n{summary}");
    });
    line.split(|c: char| c.is_whitespace() || ",;()".contains(c))
        .filter(|w| !w.is_empty())
        .collect()
}

/// The number just before `word` on the summary line starting with `prefix`
/// (`"requests:"`, `"captured"` for "requests: 5 captured, ...").
fn number_before(summary: &str, prefix: &str, word: &str) -> u64 {
    let words = summary_words(summary, prefix);
    let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("{word}: {summary}"));
    words[i - 1].parse().unwrap_or_else(|_| panic!("{word}: {summary}"))
}

/// The number just after `word` on that line (`"2xx"` for "answered ... 2xx 5 ...").
fn number_after(summary: &str, prefix: &str, word: &str) -> u64 {
    let words = summary_words(summary, prefix);
    let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("{word}: {summary}"));
    words[i + 1].parse().unwrap_or_else(|_| panic!("{word}: {summary}"))
}

/// The lengths tcpdump prints, one per packet.
fn lengths(tcpdump_text: &str) -> Vec<u64> {
    tcpdump_text
        .lines()
        .map(|l| l.rsplit("length ").next().unwrap().trim().parse().unwrap())
        .collect()
}

#[test]
fn pcap_written_by_dump_is_read_by_tcpdump_and_tshark() {
    let topo = Topology::new().unwrap();
    let server = RecordingServer::start(&topo.server, &[PORT]);
    let file = tmp(&topo, "ours.pcap");
    let f = file.display().to_string();
    let args: Vec<String> = ["dump", "-i", &topo.server_host_if, "-w", &f, "port", "8000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let dump = AgentProcess::start(&args, "listening on");
    let client =
        keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), mixed(20))
            .unwrap();
    let stderr = dump.stop();
    let n = captured(&stderr);

    let tcpdump = run(Command::new("tcpdump").args(["-r", &f, "-n"])).unwrap();
    let tcpdump_lengths = lengths(&text(&tcpdump));
    assert_eq!(tcpdump_lengths.len(), n, "{stderr}");
    let tshark =
        run(Command::new("tshark").args(["-r", &f, "-T", "fields", "-e", "tcp.len"])).unwrap();
    let tshark_lengths: Vec<u64> =
        text(&tshark).lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(tshark_lengths, tcpdump_lengths);
    // Every payload byte both ways is in the file.
    let record = server.connection(client).unwrap();
    let total: u64 = tcpdump_lengths.iter().sum();
    assert_eq!(total as usize, record.received.len() + record.sent.len());
    // tshark finds no malformed packet and no bad checksum.
    let expert = run(Command::new("tshark").args([
        "-r",
        &f,
        "-o",
        "tcp.check_checksum:TRUE",
        "-Y",
        "_ws.malformed || _ws.expert.severity >= error",
    ]))
    .unwrap();
    assert_eq!(text(&expert).trim(), "", "tshark complains");
    std::fs::remove_file(&file).unwrap();
}

/// tcpdump's line without the TCP options we do not capture.
fn without_options(line: &str) -> String {
    match (line.find(", options ["), line.find("], length")) {
        (Some(a), Some(b)) => format!("{}{}", &line[..a], &line[b + 1..]),
        _ => line.to_owned(),
    }
}

#[test]
fn pcap_written_by_tcpdump_is_read_by_dump_and_replayed() {
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let file = tmp(&topo, "theirs.pcap");
    let f = file.display().to_string();
    let mut tcpdump = mirror_tests::tcpdump_writer(&topo.server_host_if, &f, PORT);
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), mixed(30))
        .unwrap();
    // tcpdump writes asynchronously (-U flushes each packet): stop it once the file holds
    // all 30 requests and their responses, or after 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while messages_in(&file) < 60 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(tcpdump.id() as i32, libc::SIGINT) };
    tcpdump.wait().unwrap();

    let theirs = text(&run(Command::new("tcpdump").args(["-r", &f, "-n", "-tt"])).unwrap());
    let ours =
        text(&run(Command::new(mirror_bin()).args(["dump", "-r", &f, "-n", "-tt"])).unwrap());
    let theirs: Vec<String> = theirs.lines().map(without_options).collect();
    let ours: Vec<&str> = ours.lines().collect();
    assert!(ours.len() > 60);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "line {i} differs");
    }
    assert_eq!(ours.len(), theirs.len());
    // The same capture as pcapng (converted by tshark) reads the same.
    let ng = tmp(&topo, "theirs.pcapng");
    let g = ng.display().to_string();
    run(Command::new("tshark").args(["-r", &f, "-F", "pcapng", "-w", &g])).unwrap();
    let from_ng =
        text(&run(Command::new(mirror_bin()).args(["dump", "-r", &g, "-n", "-tt"])).unwrap());
    assert_eq!(from_ng.lines().collect::<Vec<_>>(), ours);
    std::fs::remove_file(&ng).unwrap();

    // Replayed to a shadow: exactly the requests the primary got.
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    let out =
        run(Command::new(mirror_bin())
            .args(["replay", "-r", &f, "--port", "8000", "--shadow", &url]))
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    let sent = primary.requests();
    let got = shadow.wait_for(sent.len(), std::time::Duration::from_secs(20));
    assert_eq!(got.len(), sent.len(), "{summary}");
    // Copies travel on several connections at once: match them by target.
    let got: std::collections::HashMap<_, _> = got.iter().map(|r| (r.target.clone(), r)).collect();
    for p in &sent {
        let s = got[&p.target];
        assert_eq!((&p.method, &p.body), (&s.method, &s.body), "{}", p.target);
        assert_eq!(s.header("host"), Some(&b"svc-shadow:8000"[..]));
    }
    // The agent has exited: nothing more arrives, and its summary counts what happened.
    assert_eq!(shadow.requests().len(), sent.len(), "extra copies: {summary}");
    let n = sent.len() as u64;
    assert_eq!(number_before(&summary, "mirror replay:", "packets"), theirs.len() as u64);
    assert_eq!(number_before(&summary, "mirror replay:", "not"), 0, "not selected: {summary}");
    assert_eq!(number_before(&summary, "requests:", "captured"), n, "{summary}");
    assert_eq!(number_before(&summary, "shadow ", "mirrored"), n, "{summary}");
    assert_eq!(number_after(&summary, "shadow ", "2xx"), n, "{summary}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn live_filters_select_exactly_the_intended_packets() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[PORT, 9090]);
    for (expr, want) in [("port 9090", "9090"), ("ip6 and port 8000", "8000")] {
        let mut args: Vec<String> = ["dump", "-i", &topo.server_host_if, "-n", "-tt"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(expr.split(' ').map(str::to_owned));
        let mut dump = AgentProcess::start(&args, "listening on");
        for family in [Family::V4, Family::V6] {
            for port in [PORT, 9090] {
                let reqs = vec![RawRequest::new("GET", "/f", "svc", b"")];
                keep_alive(&topo.client, SocketAddr::new(topo.server_addr(family), port), reqs)
                    .unwrap();
            }
        }
        let mut stdout = dump.stdout.take().unwrap();
        let stderr = dump.stop();
        let mut lines = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut lines).unwrap();
        let lines: Vec<&str> = lines.lines().collect();
        assert!(lines.len() >= 6, "{expr}: {lines:?} {stderr}");
        for l in &lines {
            assert!(l.contains(&format!(".{want}")), "{expr}: {l}");
            if expr.starts_with("ip6") {
                assert!(l.contains(" IP6 "), "{expr}: {l}");
            }
        }
        assert_eq!(captured(&stderr), lines.len());
    }
    let bad = Command::new(mirror_bin())
        .args(["dump", "-i", "lo", "port", "80", "and"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("syntax error in filter expression"));
}

/// A fixed conversation written with our pcap writer, for golden output.
fn golden_pcap(path: &Path) {
    let mut c = Conversation::new(
        "10.1.2.3:40000".parse().unwrap(),
        "10.1.2.4:8000".parse().unwrap(),
        1000,
        5000,
    );
    let mut segs: Vec<Segment> = c.at(1_700_000_000_000_000_000).open();
    segs.extend(c.request(
        b"POST /api/items?x=1 HTTP/1.1\r\nHost: shop:8000\r\nContent-Length: 5\r\n\r\nhello",
        1448,
    ));
    // The server answers 12.345678 ms later: the --http latency.
    c.at(1_700_000_000_012_345_678);
    segs.extend(c.response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok", 1448));
    segs.push(c.fin(Direction::Request));
    let mut sink = PcapSink::create(path, 65535).unwrap();
    for s in &segs {
        sink.write(s).unwrap();
    }
    sink.finish().unwrap();
}

#[test]
fn golden_output_formats() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let pcap = std::env::temp_dir().join(format!("mirror-golden-{}.pcap", std::process::id()));
    golden_pcap(&pcap);
    let p = pcap.display().to_string();
    for (name, flags) in [
        ("packets", vec!["-tt"]),
        ("ascii", vec!["-tt", "-A"]),
        ("hex_ascii", vec!["-tt", "-X"]),
        ("hex", vec!["-tt", "-x"]),
        ("quiet", vec!["-tt", "-q"]),
        ("no_time", vec!["-t"]),
        // tcpdump's default time of day, in local time: TZ=UTC keeps it stable.
        ("clock", vec![]),
        ("verbose", vec!["-tt", "-v"]),
        ("http", vec!["-tt", "--http", "--port", "8000"]),
        ("json", vec!["--json"]),
        ("http_json", vec!["--http", "--json", "--port", "8000"]),
    ] {
        let out =
            run(Command::new(mirror_bin()).env("TZ", "UTC").args(["dump", "-r", &p]).args(&flags))
                .unwrap();
        let got = text(&out);
        let file = dir.join(format!("{name}.txt"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &got).unwrap();
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(got, want, "{name} (regenerate with UPDATE_GOLDEN=1 and review)");
        // Packet formats are tcpdump's own: real tcpdump prints the same for this file.
        // Except -v: tcpdump's shows the IP header's TTL, id and checksum, which the tap does
        // not capture; ours shows the IP length, interface and hook instead (see `-v` help).
        if !flags.iter().any(|f| f.starts_with("--") || *f == "-v") {
            let theirs =
                run(Command::new("tcpdump").env("TZ", "UTC").args(["-r", &p, "-n"]).args(&flags))
                    .unwrap();
            assert_eq!(got, text(&theirs), "{name}: tcpdump prints differently");
        }
    }
    std::fs::remove_file(&pcap).unwrap();
}

/// Ctrl-C ends a live dump with tcpdump's three closing lines, counting what it printed.
#[test]
fn ctrl_c_prints_tcpdumps_closing_counts() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[PORT]);
    let args = strings(&["dump", "-i", &topo.server_host_if, "-n", "-tt", "port", "8000"]);
    let mut dump = AgentProcess::start(&args, "listening on");
    let stdout = collect_stdout(&mut dump);
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), mixed(10))
        .unwrap();
    let stderr = dump.stop_with(libc::SIGINT);
    let lines = stdout.join().unwrap();
    let printed = lines.lines().count() as u64;
    let captured = closing_count(&stderr, "captured");
    let received = closing_count(&stderr, "received by filter");
    let dropped = closing_count(&stderr, "dropped by kernel");
    // A handshake and ten requests with their responses: more than 20 packets.
    assert!(printed > 20, "{lines}");
    assert_eq!(captured, printed, "{stderr}");
    assert!(received >= captured, "{stderr}");
    assert_eq!(dropped, 0, "{stderr}");
}

/// One keep-alive connection from 10.9.0.1 to 10.9.0.2:8000 carrying `n` POSTs to
/// `/r/{i}`, the i-th `i * gap_ns` after the first, each answered at once; then both FINs.
/// Returns the time from the first packet to the last.
fn requests_pcap(path: &Path, n: usize, gap_ns: u64) -> std::time::Duration {
    let mut c = Conversation::new(
        "10.9.0.1:40000".parse().unwrap(),
        "10.9.0.2:8000".parse().unwrap(),
        7_000,
        9_000,
    );
    let t0 = 1_700_000_000_000_000_000u64;
    let mut segs: Vec<Segment> = c.at(t0).open();
    for i in 0..n {
        c.at(t0 + i as u64 * gap_ns + 1_000);
        let body = format!("body {i}");
        let req = RawRequest::new("POST", &format!("/r/{i}"), "svc:8000", body.as_bytes());
        segs.extend(c.request(&req.bytes, 1448));
        segs.extend(c.response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1448));
    }
    segs.extend(c.close());
    let mut sink = PcapSink::create(path, 65535).unwrap();
    for s in &segs {
        sink.write(s).unwrap();
    }
    sink.finish().unwrap();
    std::time::Duration::from_nanos(segs.last().unwrap().ts_ns - segs[0].ts_ns)
}

/// Copies per target among `requests`.
fn by_target(
    requests: &[mirror_tests::server::SeenRequest],
) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for r in requests {
        *m.entry(r.target.clone()).or_default() += 1;
    }
    m
}

/// Ctrl-C to a child; waits up to 20 s for it to exit (else kills it and fails); returns its
/// exit status and stderr.
fn interrupt(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("still running 20 s after SIGINT: {}", reader.join().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, reader.join().unwrap())
}

#[test]
fn replay_loop_repeats_the_capture_until_interrupted() {
    const N: usize = 5;
    let topo = Topology::new().unwrap();
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let file = tmp(&topo, "loop.pcap");
    let f = file.display().to_string();
    requests_pcap(&file, N, 1_000_000);
    let packets_per_pass = (2 + 2 * N + 2) as u64;
    let url = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    for speed in ["max", "1"] {
        let before = shadow.requests().len();
        let mut child = Command::new(mirror_bin())
            .args(["replay", "-r", &f, "--port", "8000", "--shadow", &url, "--loop"])
            .args(["--speed", speed])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Twice the file's requests: the file was read at least twice.
        let got = shadow.wait_for(before + 2 * N, std::time::Duration::from_secs(20));
        let (status, summary) = interrupt(&mut child);
        assert!(got.len() >= before + 2 * N, "speed {speed}: {} copies: {summary}", got.len());
        assert!(status.success(), "speed {speed}: {status}: {summary}");
        // The replay has exited: what the shadow has is all it gets, and the summary
        // accounts for every copy.
        let copies = shadow.requests().split_off(before);
        let captured = number_before(&summary, "requests:", "captured");
        assert!(captured >= 2 * N as u64, "speed {speed}: {summary}");
        assert_eq!(number_before(&summary, "shadow ", "mirrored"), captured, "{summary}");
        assert_eq!(number_after(&summary, "shadow ", "2xx"), copies.len() as u64, "{summary}");
        assert_eq!(copies.len() as u64, captured, "speed {speed}: {summary}");
        assert!(number_before(&summary, "mirror replay:", "packets") >= 2 * packets_per_pass);
        // Every pass sends every request of the file (the last one maybe only in part).
        let per_target = by_target(&copies);
        assert_eq!(per_target.len(), N, "{per_target:?}");
        assert!(per_target.values().all(|&c| c >= 2), "{per_target:?}");
        let (lo, hi) = (per_target.values().min().unwrap(), per_target.values().max().unwrap());
        assert!(hi - lo <= 1, "passes are whole files: {per_target:?}");
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn replay_speed_takes_max_or_a_positive_factor() {
    assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
    assert_eq!("2".parse::<Speed>(), Ok(Speed::Factor(2.0)));
    assert_eq!("0.5".parse::<Speed>(), Ok(Speed::Factor(0.5)));
    for bad in ["0", "-1", "abc", "inf", "NaN", ""] {
        let e = bad.parse::<Speed>().expect_err(bad);
        assert!(e.contains("not a positive factor"), "{bad}: {e}");
    }
    // The command line rejects them too, before reading anything, as a usage error.
    for bad in ["0", "-1", "abc", "inf"] {
        let out = Command::new(mirror_bin())
            .args(["replay", "-r", "/nonexistent.pcap", "--shadow", "http://127.0.0.1:9"])
            .arg(format!("--speed={bad}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("not a positive factor"), "{bad}: {stderr}");
    }
}

/// At `--speed 1` replaying takes at least as long as the capture lasted; at 2, at least
/// half. (Only lower bounds: how much longer it may take is no test.)
#[test]
fn replay_is_paced_as_recorded() {
    const N: usize = 4;
    let topo = Topology::new().unwrap();
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let file = tmp(&topo, "paced.pcap");
    let f = file.display().to_string();
    let span = requests_pcap(&file, N, 400_000_000);
    let url = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    for (speed, factor) in [("1", 1.0), ("2", 2.0)] {
        let before = shadow.requests().len();
        let start = std::time::Instant::now();
        let out = run(Command::new(mirror_bin())
            .args(["replay", "-r", &f, "--port", "8000", "--shadow", &url, "--speed", speed]))
        .unwrap();
        let took = start.elapsed();
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(took >= span.div_f64(factor), "speed {speed}: {took:?} for {span:?}");
        assert_eq!(shadow.requests().len() - before, N, "speed {speed}: {summary}");
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn read_with_a_count_stops_after_that_many_packets() {
    let pcap = std::env::temp_dir().join(format!("mirror-count-{}.pcap", std::process::id()));
    golden_pcap(&pcap);
    let p = pcap.display().to_string();
    let all = run(Command::new(mirror_bin()).args(["dump", "-r", &p, "-tt"])).unwrap();
    let all: Vec<String> = text(&all).lines().map(str::to_owned).collect();
    assert_eq!(all.len(), 5);
    let three = run(Command::new(mirror_bin()).args(["dump", "-r", &p, "-tt", "-c", "3"])).unwrap();
    assert_eq!(text(&three).lines().collect::<Vec<_>>(), all[..3]);
    assert_eq!(captured(&String::from_utf8_lossy(&three.stderr)), 3);
    // With --http, -c counts messages.
    let one = run(Command::new(mirror_bin())
        .args(["dump", "-r", &p, "-tt", "--http", "--port", "8000", "-c", "1"]))
    .unwrap();
    let one = text(&one);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains(": POST shop:8000 /api/items?x=1 HTTP/1.1"), "{one}");
    std::fs::remove_file(&pcap).unwrap();
}

#[test]
fn snaplen_truncates_written_packets_but_keeps_their_length() {
    let topo = Topology::new().unwrap();
    let server = RecordingServer::start(&topo.server, &[PORT]);
    let file = tmp(&topo, "snap.pcap");
    let f = file.display().to_string();
    let args =
        strings(&["dump", "-i", &topo.server_host_if, "-w", &f, "-s", "100", "port", "8000"]);
    let dump = AgentProcess::start(&args, "listening on");
    // Bodies of up to 100 kB: packets far beyond 100 bytes.
    let client =
        keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), mixed(10))
            .unwrap();
    let stderr = dump.stop();
    let tshark = run(Command::new("tshark").args([
        "-r",
        &f,
        "-T",
        "fields",
        "-e",
        "frame.cap_len",
        "-e",
        "frame.len",
    ]))
    .unwrap();
    let frames: Vec<(u64, u64)> = text(&tshark)
        .lines()
        .map(|l| {
            let (cap, len) = l.split_once('\t').unwrap();
            (cap.trim().parse().unwrap(), len.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(frames.len(), captured(&stderr));
    for &(cap, len) in &frames {
        assert_eq!(cap, len.min(100), "cap_len {cap} of a {len}-byte frame");
    }
    assert!(frames.iter().any(|&(_, len)| len > 1500), "no big packet: {frames:?}");
    // The lengths are the true ones: Ethernet, IPv4 and TCP headers (54 bytes, no options)
    // plus the payload, so together they cover every payload byte both ways (a segment
    // retransmitted under load counts twice, hence at least).
    let record = server.connection(client).unwrap();
    let payload: u64 = frames.iter().map(|&(_, len)| len - 54).sum();
    assert!(payload as usize >= record.received.len() + record.sent.len(), "{payload}");
    let header = run(Command::new("tcpdump").args(["-r", &f, "-c", "1"])).unwrap();
    let header = String::from_utf8_lossy(&header.stderr);
    assert!(header.contains("snapshot length 100"), "{header}");
    std::fs::remove_file(&file).unwrap();
}

/// A child's stdout, collected on a thread into a buffer readable while it runs.
struct Tail {
    buf: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Tail {
    fn start(mut stdout: impl std::io::Read + Send + 'static) -> Tail {
        let buf = Arc::new(Mutex::new(String::new()));
        let sink = buf.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Tail { buf, reader }
    }

    /// The lines complete so far.
    fn lines(&self) -> Vec<String> {
        complete_lines(&self.buf.lock().unwrap())
    }

    /// Every line, once the child has exited (waits for the reader to reach the end).
    fn finish(self) -> Vec<String> {
        self.reader.join().unwrap();
        complete_lines(&self.buf.lock().unwrap())
    }
}

fn complete_lines(text: &str) -> Vec<String> {
    let end = text.rfind('\n').map_or(0, |i| i + 1);
    text[..end].lines().map(str::to_owned).collect()
}

/// Real tcpdump on `interface` with `args`, printing lines as they come; returns once it
/// listens.
fn start_tcpdump(interface: &str, args: &[&str]) -> (std::process::Child, Tail) {
    let (mut child, _) = spawn_capture(
        Command::new("tcpdump")
            .args(["-i", interface, "--immediate-mode", "-B", "32768", "-l"])
            .args(args)
            .stdout(std::process::Stdio::piped()),
        "listening on",
    );
    let out = Tail::start(child.stdout.take().unwrap());
    (child, out)
}

/// Waits until no TCP connection of the namespace is open or closing (listeners aside): the
/// last packet of every connection has crossed the wire.
fn wait_all_closed(ns: &mirror_tests::netns::Netns) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ss = run(ns.command("ss").arg("-Htn")).unwrap();
        if text(&ss).trim().is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "connections stay open: {}", text(&ss));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The network of `addr` with a prefix of `bits`, as `addr/bits`.
fn network(addr: IpAddr, bits: u8) -> String {
    let net = ipnet::IpNet::new(addr, bits).unwrap().trunc();
    net.to_string()
}

/// A tcpdump line of a segment without payload, SYN, FIN or RST.
fn is_pure_ack(line: &str) -> bool {
    let flags = line.split("Flags [").nth(1).and_then(|f| f.split(']').next()).unwrap_or("S");
    line.ends_with(", length 0") && !flags.contains(['S', 'F', 'R'])
}

/// The lines of a live tcpdump we print too: the tap does not copy pure ACKs (no payload,
/// no SYN, FIN or RST), and has no TCP options.
fn comparable(tcpdump_lines: Vec<String>) -> Vec<String> {
    tcpdump_lines
        .iter()
        .filter(|l| !l.is_empty() && !is_pure_ack(l))
        .map(|l| without_options(l))
        .collect()
}

/// Every expression (and -Q) prints exactly the lines real tcpdump prints with the same
/// expression on the same interface at the same time.
#[test]
fn live_filters_print_what_tcpdump_prints() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[PORT, 9090]);
    let (c4, c6) = (topo.client_addr(Family::V4), topo.client_addr(Family::V6));
    let (s4, s6) = (topo.server_addr(Family::V4), topo.server_addr(Family::V6));
    let cases: Vec<(&[&str], String)> = vec![
        (&[], "port 9090".into()),
        (&[], "ip6 and port 8000".into()),
        (&[], format!("host {c4}")),
        (&[], format!("src host {c4}")),
        (&[], format!("dst host {s6}")),
        (&[], format!("dst {c4} and src port 9090")),
        (&[], "dst port 8000".into()),
        (&[], format!("net {}", network(c4, 30))),
        (&[], format!("src net {}", network(s6, 64))),
        (&[], format!("tcp and not host {c4}")),
        (&[], "tcp and not (port 8000 and ip6)".into()),
        (&[], format!("(port 9090 or host {c6}) and not dst port 8000")),
        (&["-Q", "in"], "port 8000".into()),
        (&["-Q", "out"], "port 9090".into()),
    ];
    let iface = topo.server_host_if.clone();
    // Each case starts on its own thread: loading the program and starting tcpdump wait.
    let start = |(flags, expr): &(&[&str], String)| {
        // -S: tcpdump numbers a connection's sequence relative to the first packet with an
        // ACK it prints, a pure ACK when the SYN-ACK is filtered out; the tap has no pure
        // ACKs, so relative numbers differ for one-way expressions. Absolute ones do not.
        let mut args = strings(&["dump", "-i", &iface, "-n", "-t", "-S"]);
        args.extend(strings(flags));
        args.extend(expr.split(' ').map(str::to_owned));
        let mut ours = AgentProcess::start(&args, "listening on");
        let ours_out = Tail::start(ours.stdout.take().unwrap());
        // We only ever capture TCP; tcpdump also sees ICMPv6 and ARP.
        let theirs_expr = format!("tcp and ({expr})");
        let mut theirs_args: Vec<&str> = vec!["-n", "-t", "-S"];
        theirs_args.extend(flags.iter());
        theirs_args.push(&theirs_expr);
        let (theirs, theirs_out) = start_tcpdump(&iface, &theirs_args);
        (ours, ours_out, theirs, theirs_out)
    };
    let runs: Vec<_> = std::thread::scope(|s| {
        let started: Vec<_> = cases.iter().map(|c| s.spawn(move || start(c))).collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // Two requests on each of four connections from the client, IPv4 and IPv6, to both
    // ports; one from the node itself (source: the node's address on the server's veth).
    for family in [Family::V4, Family::V6] {
        for port in [PORT, 9090] {
            let reqs = (0..2).map(|i| RawRequest::new("GET", &format!("/f{i}"), "svc", b""));
            keep_alive(
                &topo.client,
                SocketAddr::new(topo.server_addr(family), port),
                reqs.collect(),
            )
            .unwrap();
        }
    }
    run(Command::new("curl").args(["-sS", "--fail", &format!("http://{s4}:{PORT}/node")])).unwrap();
    wait_all_closed(&topo.server);
    // Both have seen the last packet once their counts agree and stay put for half a second
    // (on a loaded machine, 30 processes print here, and a FIN may come late to one of them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut last, mut steady) = (Vec::new(), 0);
    loop {
        let now: Vec<(usize, usize)> = runs
            .iter()
            .map(|(_, ours, _, theirs)| (ours.lines().len(), comparable(theirs.lines()).len()))
            .collect();
        let agree = now == last && now.iter().all(|(a, b)| a == b);
        steady = if agree { steady + 1 } else { 0 };
        if steady == 5 || std::time::Instant::now() > deadline {
            break; // past the deadline, the comparison below shows what differs
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for ((flags, expr), (ours, ours_out, mut theirs, theirs_out)) in cases.iter().zip(runs) {
        let stderr = ours.stop_with(libc::SIGINT);
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(theirs.id() as i32, libc::SIGINT) };
        theirs.wait().unwrap();
        let mut ours_lines = ours_out.finish();
        let mut theirs_lines = comparable(theirs_out.finish());
        assert_eq!(captured(&stderr), ours_lines.len(), "{flags:?} {expr}: {stderr}");
        assert!(!theirs_lines.is_empty(), "{flags:?} {expr}: tcpdump saw nothing");
        // On the node's side of the server's veth, "in" is what the server sends, "out"
        // what it receives.
        let from_server = |l: &String| {
            l.starts_with(&format!("IP {s4}.")) || l.starts_with(&format!("IP6 {s6}."))
        };
        match *flags {
            ["-Q", "in"] => assert!(ours_lines.iter().all(from_server), "{ours_lines:#?}"),
            ["-Q", "out"] => assert!(!ours_lines.iter().any(from_server), "{ours_lines:#?}"),
            _ => {}
        }
        ours_lines.sort();
        theirs_lines.sort();
        assert_eq!(ours_lines, theirs_lines, "{flags:?} {expr}");
    }
}

/// Stops a capture tool (tcpdump, tshark) with Ctrl-C once `done` holds, or after 10 s;
/// returns what it printed on stderr after it started.
fn interrupt_when(
    (mut child, stderr): (std::process::Child, std::thread::JoinHandle<String>),
    done: impl Fn() -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
    stderr.join().unwrap()
}

/// Spawns a capture tool and waits for the stderr line that says it captures.
fn spawn_capture(
    cmd: &mut Command,
    ready: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::BufRead;
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains(ready)), "{cmd:?} did not start");
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, rest)
}

/// The packet part of a tcpdump line read from a `-i any` capture: after the time, tcpdump
/// prints the interface and direction ("mrs1234 In  IP ..." for SLL2, "In  IP ..." for SLL),
/// which a capture without them does not have.
fn without_link_prefix(line: &str) -> String {
    let (time, rest) = line.split_once(' ').unwrap();
    let at = [" IP ", " IP6 "].iter().filter_map(|p| rest.find(p)).min();
    match at {
        Some(i) if !rest.starts_with("IP") => format!("{time}{}", &rest[i..]),
        _ => line.to_owned(),
    }
}

/// Files written natively by tshark (pcapng) and by `tcpdump -i any` (Linux cooked
/// captures, SLL2 and SLL) read as tcpdump reads them.
#[test]
fn pcapng_and_cooked_captures_read_like_tcpdump() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[PORT]);
    let s4 = topo.server_addr(Family::V4);
    let ng = tmp(&topo, "native.pcapng");
    let sll2 = tmp(&topo, "any.pcap");
    let sll = tmp(&topo, "any-sll.pcap");
    let (g, a2, a1) =
        (ng.display().to_string(), sll2.display().to_string(), sll.display().to_string());
    let filter = format!("tcp port 8000 and host {s4}");
    let tshark = spawn_capture(
        Command::new("tshark").args(["-i", &topo.server_host_if, "-w", &g, "-f", &filter]),
        "Capturing on",
    );
    let any2 = spawn_capture(
        Command::new("tcpdump").args(["-i", "any", "--immediate-mode", "-U", "-w", &a2, &filter]),
        "listening on",
    );
    let any1 = spawn_capture(
        Command::new("tcpdump").args([
            "-i",
            "any",
            "-y",
            "LINUX_SLL",
            "--immediate-mode",
            "-U",
            "-w",
            &a1,
            &filter,
        ]),
        "listening on",
    );
    wait_capturing(&topo.client, SocketAddr::new(s4, PORT), &ng);
    // Small requests: 100 kB bursts overflow the buffers of `-i any` now and then (tcpdump
    // then counts packets dropped by kernel, and the files lack them).
    let small = (0..10)
        .map(|i| RawRequest::new("POST", &format!("/d/{i}"), "svc:8000", &vec![b'a'; i * 10]))
        .collect();
    keep_alive(&topo.client, SocketAddr::new(s4, PORT), small).unwrap();
    wait_all_closed(&topo.server);
    // Each request and response is in the files (twice in -i any: two veths), then stop.
    let stats = [
        interrupt_when(tshark, || messages_in(&ng) >= 20),
        interrupt_when(any2, || messages_in(&sll2) >= 20),
        interrupt_when(any1, || messages_in(&sll) >= 20),
    ];
    let files = [(&g, "EN10MB"), (&a2, "LINUX_SLL2"), (&a1, "LINUX_SLL")];
    for ((file, link), stats) in files.into_iter().zip(stats) {
        let theirs = run(Command::new("tcpdump").args(["-r", file, "-n", "-tt"])).unwrap();
        assert!(String::from_utf8_lossy(&theirs.stderr).contains(link), "{file}: not {link}");
        let theirs: Vec<String> =
            text(&theirs).lines().map(|l| without_options(&without_link_prefix(l))).collect();
        let ours =
            text(&run(Command::new(mirror_bin()).args(["dump", "-r", file, "-n", "-tt"])).unwrap());
        let ours: Vec<&str> = ours.lines().collect();
        assert!(!ours.is_empty(), "{file}: tcpdump read {} lines; capture: {stats}", theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "{file} ({link}): line {i} differs");
        }
        assert_eq!(ours.len(), theirs.len(), "{file} ({link})");
        // And the HTTP exchange in it: ten requests and ten responses in the native pcapng.
        // An `-i any` capture holds each packet twice (once per veth, the second a
        // retransmission to reassembly) and tcpdump writes it with losses now and then
        // (without always counting them), so there only some packets and messages are
        // required; every line it has must still read as tcpdump reads it.
        let http =
            run(Command::new(mirror_bin()).args(["dump", "-r", file, "--http", "--port", "8000"]))
                .unwrap();
        let messages = text(&http).lines().count();
        let stderr = String::from_utf8_lossy(&http.stderr);
        if link == "EN10MB" {
            assert!(ours.len() > 20, "{file}: {}", ours.len());
            assert_eq!(messages, 20, "{file}: {stats}\n{}{stderr}", text(&http));
        } else {
            assert!(messages > 0, "{file}: {stats}\n{stderr}");
        }
    }
    for f in [&ng, &sll2, &sll] {
        std::fs::remove_file(f).unwrap();
    }
}

/// tshark says "Capturing on" before its capture process has its filter in place, and a
/// loaded machine lets traffic pass in between: probe with empty connections (no HTTP, so
/// the messages counted later are the test's) until the file holds a packet.
fn wait_capturing(ns: &mirror_tests::netns::Netns, server: SocketAddr, file: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        ns.run(move || {
            let _ =
                std::net::TcpStream::connect_timeout(&server, std::time::Duration::from_secs(1));
        });
        let read = Command::new("tcpdump").arg("-r").arg(file).arg("-n").output().unwrap();
        if !read.stdout.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: the capture never started",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn ifindex(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `-i` twice: both interfaces in one dump. Every packet crosses the client's veth and the
/// server's, so each shows up on both.
#[test]
fn two_interfaces_in_one_dump() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[PORT]);
    let args = strings(&[
        "dump",
        "-i",
        &topo.server_host_if,
        "-i",
        &topo.client_host_if,
        "--json",
        "port",
        "8000",
    ]);
    let mut dump = AgentProcess::start(&args, "listening on");
    let stdout = collect_stdout(&mut dump);
    let reqs = (0..5).map(|i| RawRequest::new("GET", &format!("/two/{i}"), "svc", b"")).collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), reqs).unwrap();
    wait_all_closed(&topo.server);
    let stderr = dump.stop_with(libc::SIGINT);
    let lines = stdout.join().unwrap();
    let mut per_if: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = format!(
            "{} {} {} {} {} {}",
            v["src"], v["dst"], v["flags"], v["seq"], v["ack"], v["length"]
        );
        per_if.entry(v["ifindex"].as_u64().unwrap()).or_default().push(key);
    }
    let (s, c) = (ifindex(&topo.server_host_if), ifindex(&topo.client_host_if));
    let seen: std::collections::BTreeSet<u64> = per_if.keys().copied().collect();
    assert_eq!(seen, [s, c].into(), "{stderr}");
    // A handshake, five requests and responses, two FINs on each.
    assert!(per_if[&s].len() >= 14, "{:?}", per_if[&s]);
    let mut on_server = per_if[&s].clone();
    let mut on_client = per_if[&c].clone();
    on_server.sort();
    on_client.sort();
    assert_eq!(on_server, on_client, "the same packets cross both veths");
    assert_eq!(captured(&stderr), lines.lines().count());
}

/// `--watch` with `--json` and with a filter expression against a running `mirror run`.
#[test]
fn watching_a_running_agent_as_json_and_filtered() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let _shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let url = format!("http://{}:{PORT}", topo.shadow_addr(Family::V4));
    let socket = std::env::temp_dir().join(format!("mirror-dump-watch-{}.sock", topo.id));
    let sock = socket.display().to_string();
    let port = PORT.to_string();
    let agent = AgentProcess::start(
        &strings(&[
            "run",
            "-i",
            &topo.server_host_if,
            "--port",
            &port,
            "--shadow",
            &url,
            "--watch-socket",
            &sock,
            // One worker: the watch stream is then in capture order (with two, the IPv4
            // and IPv6 connections' workers publish in whatever order they get to them).
            "--threads",
            "1",
        ]),
        "mirror run: ready",
    );
    let (c4, c6) = (topo.client_addr(Family::V4), topo.client_addr(Family::V6));
    let mut json =
        AgentProcess::start(&strings(&["dump", "--watch", &sock, "--json", "-c", "6"]), "watching");
    let expr = format!("src host {c6} and dst port 8000");
    let mut filtered = AgentProcess::start(
        &strings(&["dump", "--watch", &sock, "-c", "3", "-tt"])
            .into_iter()
            .chain(expr.split(' ').map(str::to_owned))
            .collect::<Vec<_>>(),
        "watching",
    );
    let json_out = collect_stdout(&mut json);
    let filtered_out = collect_stdout(&mut filtered);
    // Three over IPv4 first, then three over IPv6: an unfiltered watcher with -c 3 would show
    // the IPv4 ones.
    for (family, tag) in [(Family::V4, "v4"), (Family::V6, "v6")] {
        let reqs = (0..3)
            .map(|i| RawRequest::new("GET", &format!("/{tag}/{i}"), "app:8000", b""))
            .collect();
        keep_alive(&topo.client, SocketAddr::new(topo.server_addr(family), PORT), reqs).unwrap();
    }
    let json_lines = json_out.join().unwrap();
    let filtered_lines = filtered_out.join().unwrap();
    let authority = url.trim_start_matches("http://");
    let events: Vec<serde_json::Value> =
        json_lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 6, "{json_lines}");
    for (i, v) in events.iter().enumerate() {
        let (tag, client) = if i < 3 { ("v4", c4) } else { ("v6", c6) };
        assert_eq!(v["type"], "mirrored", "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        assert_eq!(v["host"], "app:8000", "{v}");
        assert_eq!(v["target"], format!("/{tag}/{}", i % 3), "{v}");
        assert_eq!(v["version"], "HTTP/1.1", "{v}");
        let c: SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
        let s: SocketAddr = v["server"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            (c.ip(), s.ip(), s.port()),
            (client, topo.server_addr(if i < 3 { Family::V4 } else { Family::V6 }), PORT),
            "{v}"
        );
        assert_eq!(v["shadows"], serde_json::json!([authority]), "{v}");
    }
    let filtered_lines: Vec<&str> = filtered_lines.lines().collect();
    assert_eq!(filtered_lines.len(), 3, "{filtered_lines:?}");
    for (i, l) in filtered_lines.iter().enumerate() {
        assert!(l.contains(&format!(" {c6}.")), "{l}");
        assert!(l.contains(&format!("GET app:8000 /v6/{i} HTTP/1.1")), "{l}");
        assert!(l.ends_with(&format!("mirrored to {authority}")), "{l}");
    }
    assert!(json.stop().contains("6 requests shown"));
    assert!(filtered.stop().contains("3 requests shown"));
    agent.stop();
}
