//! `mirror dump` and `mirror replay`: tcpdump interop with real tcpdump and tshark, filter
//! expressions on live traffic, golden output formats, replaying a real capture.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use mirror::{
    pcap::PcapSink,
    segment::{Direction, Segment},
    synth::Conversation,
};
use mirror_tests::{
    agent::AgentProcess,
    client::{keep_alive, RawRequest},
    mirror_bin,
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
    stderr.lines().find_map(|l| l.strip_suffix(" packets captured")).expect(stderr).parse().unwrap()
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
    let mut tcpdump = Command::new("tcpdump")
        .args(["-i", &topo.server_host_if, "--immediate-mode", "-U", "-n", "-w", &f])
        .args(["tcp", "port", "8000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let stderr = tcpdump.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        assert!(lines.any(|l| l.unwrap().contains("listening on")));
        std::thread::spawn(move || lines.for_each(drop));
    }
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
        ("quiet", vec!["-tt", "-q"]),
        ("http", vec!["-tt", "--http", "--port", "8000"]),
        ("json", vec!["--json"]),
        ("http_json", vec!["--http", "--json", "--port", "8000"]),
    ] {
        let out = run(Command::new(mirror_bin()).args(["dump", "-r", &p]).args(&flags)).unwrap();
        let got = text(&out);
        let file = dir.join(format!("{name}.txt"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &got).unwrap();
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(got, want, "{name} (regenerate with UPDATE_GOLDEN=1 and review)");
        // Packet formats are tcpdump's own: real tcpdump prints the same for this file.
        if !flags.iter().any(|f| f.starts_with("--")) {
            let theirs = run(Command::new("tcpdump").args(["-r", &p, "-n"]).args(&flags)).unwrap();
            assert_eq!(got, text(&theirs), "{name}: tcpdump prints differently");
        }
    }
    std::fs::remove_file(&pcap).unwrap();
}

/// HTTP messages `mirror dump --http` finds in a (possibly still growing) capture file.
fn messages_in(file: &Path) -> usize {
    let out = Command::new(mirror_bin())
        .args(["dump", "-r", &file.display().to_string(), "--http", "--port", "8000"])
        .output()
        .unwrap();
    text(&out).lines().count()
}
