//! The kernel tap against real traffic: namespaces shaped like a Kubernetes node, a hyper
//! server, raw-socket and curl clients. The tap sits on the node side of the server's veth.
use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use mirror_capture::{tcp_flags, Direction, Hook, Segment};
use mirror_tap::{AttachMode, Counter, Directions, Tap, TapSettings};

use mirror_tests::{
    client::{curl, keep_alive, RawRequest},
    http_url, mirror_bin,
    server::{expected_body, RecordingServer},
    streams::assemble,
    topology::{Family, Topology},
};

const SERVICE_PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;

fn tap_settings(topo: &Topology, mode: AttachMode) -> TapSettings {
    TapSettings {
        interfaces: vec![topo.server_host_if.clone()],
        ports: vec![SERVICE_PORT],
        attach_mode: mode,
        ..TapSettings::default()
    }
}

/// Bodies of many sizes: empty, small, around one MSS, and large enough for GSO.
fn mixed_requests(host: &str) -> Vec<RawRequest> {
    let mut reqs = Vec::new();
    for i in 0..40usize {
        let size = match i % 5 {
            0 => 0,
            1 => 17 * i,
            2 => 1448 * (i % 3 + 1) + 1,
            3 => 20_000 + 997 * i,
            _ => 100_000 + i,
        };
        let body: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
        let method = if size == 0 { "GET" } else { "POST" };
        reqs.push(RawRequest::new(method, &format!("/item/{i}?q={size}"), host, &body));
    }
    reqs
}

/// Every byte each client sent (and got back) appears in the capture, in sequence order,
/// exactly; every primary response is intact; the counters agree.
async fn capture_is_byte_exact(family: Family, mode: AttachMode) {
    let topo = Topology::new().unwrap();
    let server = RecordingServer::start(&topo.server, &[SERVICE_PORT, OTHER_PORT]);
    let started = wall_clock_ns();
    let mut tap = Tap::attach(&tap_settings(&topo, mode)).unwrap();
    if mode == AttachMode::Netlink {
        assert!(tap.attachments().all(|(_, _, _, m)| m == AttachMode::Netlink));
    }
    let mut source = tap.segments().unwrap();
    let service = SocketAddr::new(topo.server_addr(family), SERVICE_PORT);

    // A keep-alive connection with 40 requests of mixed sizes.
    let raw_client = keep_alive(&topo.client, service, mixed_requests("svc:8080")).unwrap();
    // curl: three requests on one connection, then a 1 MiB upload (GSO super-packets).
    let out = curl(
        &topo.client,
        &[
            &http_url(topo.server_addr(family), SERVICE_PORT, "/a"),
            &http_url(topo.server_addr(family), SERVICE_PORT, "/b?x=1"),
        ],
    )
    .unwrap();
    assert_eq!(
        out,
        format!("{}{}", expected_body("GET", "/a", b""), expected_body("GET", "/b?x=1", b""))
    );
    let upload: Vec<u8> =
        (0..1 << 20).map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let file = std::env::temp_dir().join(format!("mirror-upload-{}", topo.id));
    std::fs::write(&file, &upload).unwrap();
    let data = format!("@{}", file.display());
    let out = curl(
        &topo.client,
        &[
            "--data-binary",
            &data,
            "-H",
            "Expect:",
            &http_url(topo.server_addr(family), SERVICE_PORT, "/upload"),
        ],
    )
    .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out, expected_body("POST", "/upload", &upload));
    // Traffic on a port that is not selected.
    curl(&topo.client, &[&http_url(topo.server_addr(family), OTHER_PORT, "/ignored")]).unwrap();

    // Every payload byte passed the tap before the peer read it, so it is in the ring now.
    let mut segments: Vec<Segment> = Vec::new();
    while source.drain_now(&mut segments) > 0 {}
    let counters = tap.counters().unwrap();
    assert_record_fields(&segments, &topo, started, wall_clock_ns());

    let connections = server.connections();
    let service_conns: Vec<_> =
        connections.iter().filter(|(c, _)| segments.iter().any(|s| s.client() == **c)).collect();
    // The raw client and curl's two connections; the OTHER_PORT connection is not captured.
    assert_eq!(
        service_conns.len(),
        3,
        "captured connections: {:?}",
        service_conns.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    assert!(service_conns.iter().any(|(c, _)| **c == raw_client));
    for (client, record) in &service_conns {
        let requests = assemble(&segments, **client, Direction::Request).unwrap();
        assert!(
            requests == record.received,
            "request bytes of {client} differ ({} captured, {} sent)",
            requests.len(),
            record.received.len()
        );
        let responses = assemble(&segments, **client, Direction::Response).unwrap();
        assert!(responses == record.sent, "response bytes of {client} differ");
    }
    assert!(
        segments.iter().all(|s| s.server().port() == SERVICE_PORT),
        "only the service port is captured"
    );
    assert!(segments.iter().all(|s| s.server().ip() == topo.server_addr(family)));
    let control = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;
    assert!(
        segments.iter().filter(|s| s.segment_len == 0).all(|s| s.flags & control != 0),
        "segments without payload are emitted only for SYN, FIN and RST"
    );

    let copied: u64 = segments.iter().map(|s| s.payload.len() as u64).sum();
    assert!(counters.get(Counter::Selected) > 0, "{counters}");
    assert_eq!(counters.get(Counter::Bytes), copied, "{counters}");
    assert!(counters.get(Counter::Records) >= segments.len() as u64, "{counters}");
    assert!(
        counters.get(Counter::Selected)
            >= counters.get(Counter::Records)
                - segments.iter().filter(|s| s.chunk_offset > 0).count() as u64
    );
    assert_eq!(counters.get(Counter::Lost), 0, "{counters}");
    assert_eq!(counters.get(Counter::Truncated), 0, "{counters}");
    assert!(
        segments.iter().any(|s| s.chunk_offset > 0),
        "the 1 MiB upload crossed as GSO super-packets"
    );
    tap.detach();
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The metadata of every record: the interface and hook it crossed (requests leave the node
/// toward the pod on the host-side veth's egress, responses arrive on its ingress), a
/// wall-clock time within the test, and acknowledgement numbers inside the peer's stream.
fn assert_record_fields(segments: &[Segment], topo: &Topology, from_ns: u64, to_ns: u64) {
    let name = std::ffi::CString::new(topo.server_host_if.as_str()).unwrap();
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // The ring's clock offset is computed once at start-up: allow a little skew.
    let slack = 50_000_000;
    for s in segments {
        assert_eq!(s.ifindex, ifindex, "{s:?}");
        let hook = match s.direction {
            Direction::Request => Hook::Egress,
            Direction::Response => Hook::Ingress,
        };
        assert_eq!(s.hook, hook, "{s:?}");
        assert!(s.ts_ns + slack >= from_ns && s.ts_ns <= to_ns + slack, "{s:?}");
    }
    // Per connection, every ACK a request segment carries lies within what the server sent:
    // between its ISN + 1 and the end of its stream (+1 for its FIN).
    for syn_ack in segments.iter().filter(|s| s.flags & tcp_flags::SYN != 0) {
        if syn_ack.direction != Direction::Response {
            continue;
        }
        let client = syn_ack.client();
        let sent: u32 = segments
            .iter()
            .filter(|s| s.client() == client && s.direction == Direction::Response)
            .map(|s| s.payload.len() as u32)
            .sum();
        let first = syn_ack.seq.wrapping_add(1);
        let acks: Vec<u32> = segments
            .iter()
            .filter(|s| s.client() == client && s.direction == Direction::Request)
            .filter(|s| s.flags & tcp_flags::ACK != 0)
            .map(|s| s.ack.wrapping_sub(first))
            .collect();
        assert!(acks.iter().all(|&a| a <= sent + 1), "{client}: acks {acks:?} past {sent}");
        assert!(acks.iter().any(|&a| a > 0), "{client}: no response byte acknowledged");
    }
}

#[tokio::test]
async fn capture_is_byte_exact_ipv4() {
    capture_is_byte_exact(Family::V4, AttachMode::Auto).await;
}

#[tokio::test]
async fn capture_is_byte_exact_ipv6() {
    capture_is_byte_exact(Family::V6, AttachMode::Auto).await;
}

/// The clsact + netlink path (used where the kernel has no TCX) captures the same.
#[tokio::test]
async fn capture_is_byte_exact_through_clsact() {
    capture_is_byte_exact(Family::V4, AttachMode::Netlink).await;
}

#[tokio::test]
async fn unselected_port_produces_no_records() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[OTHER_PORT]);
    let mut tap = Tap::attach(&tap_settings(&topo, AttachMode::Auto)).unwrap();
    let mut source = tap.segments().unwrap();
    for family in [Family::V4, Family::V6] {
        let other = SocketAddr::new(topo.server_addr(family), OTHER_PORT);
        keep_alive(&topo.client, other, mixed_requests("other")).unwrap();
    }
    let mut segments = Vec::new();
    source.drain_now(&mut segments);
    let counters = tap.counters().unwrap();
    assert!(segments.is_empty(), "{} records for an unselected port", segments.len());
    assert!(counters.get(Counter::Seen) > 100, "{counters}");
    assert_eq!(
        (counters.get(Counter::Selected), counters.get(Counter::Records)),
        (0, 0),
        "{counters}"
    );
}

#[tokio::test]
async fn service_networks_restrict_the_selection() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    // Only the server's IPv6 address is a service address.
    let mut settings = tap_settings(&topo, AttachMode::Auto);
    settings.service_nets = vec![ipnet::IpNet::new(topo.server_addr(Family::V6), 128).unwrap()];
    let mut tap = Tap::attach(&settings).unwrap();
    let mut source = tap.segments().unwrap();
    for family in [Family::V4, Family::V6] {
        let service = SocketAddr::new(topo.server_addr(family), SERVICE_PORT);
        keep_alive(&topo.client, service, mixed_requests("svc")).unwrap();
    }
    let mut segments = Vec::new();
    source.drain_now(&mut segments);
    assert!(!segments.is_empty());
    assert!(segments.iter().all(|s| s.server().ip() == topo.server_addr(Family::V6)));
}

/// Four rings: every connection's segments, both directions and both families, land in
/// one ring; 40 connections spread over all four; nothing is lost.
#[tokio::test]
async fn connections_spread_over_rings_each_whole_in_one() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let settings = TapSettings { rings: 4, ..tap_settings(&topo, AttachMode::Auto) };
    let mut tap = Tap::attach(&settings).unwrap();
    assert!(tap.segments().is_err(), "four rings are taken together");
    let mut sources: Vec<_> =
        tap.ring_buffers().unwrap().into_iter().map(|r| r.into_source().unwrap()).collect();
    let mut sent = 0;
    for i in 0..40 {
        let family = if i % 2 == 0 { Family::V4 } else { Family::V6 };
        let service = SocketAddr::new(topo.server_addr(family), SERVICE_PORT);
        let reqs = vec![RawRequest::new("POST", &format!("/ring/{i}"), "svc", &[b'r'; 3000])];
        sent += reqs[0].bytes.len();
        keep_alive(&topo.client, service, reqs).unwrap();
    }
    let mut ring_of = std::collections::HashMap::new();
    let mut requested = 0;
    for (ring, source) in sources.iter_mut().enumerate() {
        let mut segments = Vec::new();
        while source.drain_now(&mut segments) > 0 {}
        for s in &segments {
            let conn = (s.client(), s.server());
            assert_eq!(*ring_of.entry(conn).or_insert(ring), ring, "{conn:?} in two rings");
            if s.direction == Direction::Request {
                requested += s.payload.len();
            }
        }
    }
    let used: HashSet<usize> = ring_of.values().copied().collect();
    assert_eq!((ring_of.len(), used.len()), (40, 4), "40 connections over 4 rings");
    assert_eq!(requested, sent);
    assert_eq!(tap.counters().unwrap().get(Counter::Lost), 0);
}

/// Requests only, from an IPv4 service network: nothing of responses nor of IPv6.
#[tokio::test]
async fn requests_only_from_an_ipv4_network() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let mut settings = tap_settings(&topo, AttachMode::Auto);
    settings.service_nets = vec![ipnet::IpNet::new(topo.server_addr(Family::V4), 24).unwrap()];
    settings.directions = Directions::REQUESTS;
    let mut tap = Tap::attach(&settings).unwrap();
    let mut source = tap.segments().unwrap();
    let mut sent = 0;
    for family in [Family::V4, Family::V6] {
        let service = SocketAddr::new(topo.server_addr(family), SERVICE_PORT);
        let reqs = mixed_requests("svc");
        if family == Family::V4 {
            sent = reqs.iter().map(|r| r.bytes.len()).sum();
        }
        keep_alive(&topo.client, service, reqs).unwrap();
    }
    let mut segments = Vec::new();
    while source.drain_now(&mut segments) > 0 {}
    assert!(segments.iter().all(|s| s.direction == Direction::Request));
    assert!(segments.iter().all(|s| s.server().ip() == topo.server_addr(Family::V4)));
    assert_eq!(distinct_payload_bytes(&segments), sent);
}

/// Payload bytes captured, each sequence number once: a retransmission (which a loaded
/// machine causes now and then) is captured as it crosses, but is no new byte.
fn distinct_payload_bytes(segments: &[Segment]) -> usize {
    // Positions relative to each connection's first captured byte (sequence numbers wrap).
    let mut first = std::collections::HashMap::new();
    let mut ranges: Vec<(SocketAddr, u64, u64)> = segments
        .iter()
        .filter(|s| !s.payload.is_empty())
        .map(|s| {
            let base = *first.entry(s.client()).or_insert(s.payload_seq());
            let start = s.payload_seq().wrapping_sub(base) as u64;
            (s.client(), start, start + s.payload.len() as u64)
        })
        .collect();
    ranges.sort();
    let mut total = 0;
    let mut covered: Option<(SocketAddr, u64)> = None;
    for (conn, start, end) in ranges {
        let from = match covered {
            Some((c, until)) if c == conn => start.max(until),
            _ => start,
        };
        total += end.saturating_sub(from);
        let until = covered.filter(|(c, _)| *c == conn).map_or(end, |(_, u)| u.max(end));
        covered = Some((conn, until));
    }
    total as usize
}

/// A ring too small for the traffic loses records, counts them, and the primary still gets
/// every byte of its responses: the kernel program passes every packet whatever happens.
#[tokio::test]
async fn a_full_ring_counts_losses_and_passes_every_packet() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let mut settings = tap_settings(&topo, AttachMode::Auto);
    settings.ring_bytes = 4096;
    let tap = Tap::attach(&settings).unwrap();
    // Nobody reads the ring while 40 requests of up to 100 KB cross; keep_alive checks
    // every response body.
    let service = SocketAddr::new(topo.server_addr(Family::V4), SERVICE_PORT);
    keep_alive(&topo.client, service, mixed_requests("svc")).unwrap();
    let counters = tap.counters().unwrap();
    assert!(counters.get(Counter::Lost) > 0, "{counters}");
    assert!(counters.get(Counter::Records) > 0, "{counters}");
}

// ---- the `mirror tap` binary: attach, capture, and leave nothing behind ----

/// Starts `mirror tap` and waits for its readiness line.
fn start_agent(topo: &Topology, extra: &[&str]) -> Child {
    let mut child = Command::new(mirror_bin())
        .args(["tap", "-i", &topo.server_host_if, "--port", &SERVICE_PORT.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("agent exited before it was ready").unwrap();
        if line.contains("mirror tap: ready") {
            break;
        }
    }
    // Keep draining stderr so the agent never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn tcx_program_names(iface: &str) -> HashSet<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut names = HashSet::new();
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(iface, hook).unwrap();
        names.extend(progs.iter().filter_map(|p| p.name_as_str().map(str::to_owned)));
    }
    names
}

fn tc_state(iface: &str) -> (String, String) {
    let out = |args: &[&str]| {
        String::from_utf8(Command::new("tc").args(args).output().unwrap().stdout).unwrap()
    };
    let qdiscs = out(&["qdisc", "show", "dev", iface]);
    let filters = out(&["filter", "show", "dev", iface, "ingress"])
        + &out(&["filter", "show", "dev", iface, "egress"]);
    (qdiscs, filters)
}

fn sigterm_and_wait(child: Child) {
    signal_and_wait(child, libc::SIGTERM);
}

fn signal_and_wait(mut child: Child, signal: i32) {
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = child.wait().unwrap();
    assert!(status.success(), "agent exit status {status}");
}

fn send_one(topo: &Topology) {
    let service = SocketAddr::new(topo.server_addr(Family::V4), SERVICE_PORT);
    keep_alive(&topo.client, service, vec![RawRequest::new("GET", "/", "svc", b"")]).unwrap();
}

#[test]
fn agent_with_tcx_leaves_nothing_after_sigterm() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let mut agent = start_agent(&topo, &["--attach", "tcx"]);
    let names = tcx_program_names(&topo.server_host_if);
    assert!(names.contains("mirror_ingress") && names.contains("mirror_egress"), "{names:?}");
    send_one(&topo);
    // The agent prints the captured segments.
    let mut stdout = BufReader::new(agent.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    assert!(first.contains(&format!(":{SERVICE_PORT}")), "{first}");
    sigterm_and_wait(agent);
    assert!(tcx_program_names(&topo.server_host_if).is_empty());
    let (qdiscs, filters) = tc_state(&topo.server_host_if);
    assert!(!qdiscs.contains("clsact") && filters.is_empty(), "{qdiscs}{filters}");
}

#[test]
fn agent_with_netlink_leaves_nothing_after_sigterm() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let agent = start_agent(&topo, &["--attach", "netlink"]);
    let (qdiscs, filters) = tc_state(&topo.server_host_if);
    assert!(qdiscs.contains("clsact"), "{qdiscs}");
    assert!(filters.contains("mirror_ingress") && filters.contains("mirror_egress"), "{filters}");
    send_one(&topo);
    sigterm_and_wait(agent);
    let (qdiscs, filters) = tc_state(&topo.server_host_if);
    assert!(!qdiscs.contains("clsact") && filters.is_empty(), "{qdiscs}{filters}");
}

#[test]
fn agent_leaves_nothing_after_sigint() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    for mode in ["tcx", "netlink"] {
        let agent = start_agent(&topo, &["--attach", mode]);
        send_one(&topo);
        signal_and_wait(agent, libc::SIGINT);
        assert!(tcx_program_names(&topo.server_host_if).is_empty(), "{mode}");
        let (qdiscs, filters) = tc_state(&topo.server_host_if);
        assert!(!qdiscs.contains("clsact") && filters.is_empty(), "{mode}: {qdiscs}{filters}");
    }
}

/// An attachment failing half-way (the same program twice on one TCX hook) detaches what
/// was already attached.
#[test]
fn a_failed_attach_leaves_nothing() {
    let topo = Topology::new().unwrap();
    let iface = topo.server_host_if.clone();
    let mut settings = tap_settings(&topo, AttachMode::Tcx);
    settings.interfaces = vec![iface.clone(), iface.clone()];
    let err = Tap::attach(&settings).err().expect("attaching twice to one hook fails");
    assert!(format!("{err:#}").contains(&iface), "{err:#}");
    assert!(tcx_program_names(&iface).is_empty());
}

/// Auto mode falls back to clsact + netlink when TCX refuses an attachment (here: the same
/// program a second time on one hook, which TCX rejects on any kernel), and both copies
/// capture; detaching removes the links and the clsact qdisc it created.
#[tokio::test]
async fn auto_mode_falls_back_to_clsact_when_tcx_fails() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    let iface = topo.server_host_if.clone();
    let mut settings = tap_settings(&topo, AttachMode::Auto);
    settings.interfaces = vec![iface.clone(), iface.clone()];
    let mut tap = Tap::attach(&settings).unwrap();
    let modes: Vec<AttachMode> = tap.attachments().map(|(_, _, _, m)| m).collect();
    use AttachMode::{Netlink, Tcx};
    assert_eq!(modes, [Tcx, Tcx, Netlink, Netlink]);
    let (qdiscs, filters) = tc_state(&iface);
    assert!(qdiscs.contains("clsact") && filters.contains("mirror_ingress"), "{qdiscs}");
    let mut source = tap.segments().unwrap();
    send_one(&topo);
    let mut segments = Vec::new();
    while source.drain_now(&mut segments) > 0 {}
    // Every segment twice: once per attachment of its hook.
    let mut keys: Vec<_> =
        segments.iter().map(|s| (s.direction == Direction::Request, s.seq, s.flags)).collect();
    keys.sort();
    assert!(!keys.is_empty());
    assert!(keys.chunks(2).all(|pair| pair.len() == 2 && pair[0] == pair[1]), "{keys:?}");
    tap.detach();
    assert!(tcx_program_names(&iface).is_empty());
    let (qdiscs, filters) = tc_state(&iface);
    assert!(!qdiscs.contains("clsact") && filters.is_empty(), "{qdiscs}{filters}");
}

#[test]
fn agent_exiting_normally_leaves_nothing_and_keeps_a_foreign_qdisc() {
    let topo = Topology::new().unwrap();
    let _server = RecordingServer::start(&topo.server, &[SERVICE_PORT]);
    // A clsact qdisc someone else created must survive us.
    let iface = &topo.server_host_if;
    mirror_tests::netns::run(Command::new("tc").args(["qdisc", "add", "dev", iface, "clsact"]))
        .unwrap();
    let agent = start_agent(&topo, &["--attach", "netlink", "--count", "1"]);
    send_one(&topo);
    let out = agent.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let (qdiscs, filters) = tc_state(iface);
    assert!(qdiscs.contains("clsact"), "foreign clsact removed: {qdiscs}");
    assert!(filters.is_empty(), "{filters}");
}

#[test]
fn bad_arguments_exit_2_and_attach_nothing() {
    let topo = Topology::new().unwrap();
    for args in [
        vec!["tap", "-i", "no-such-if0", "--port", "80"],
        vec!["tap", "-i", &topo.server_host_if, "--port", "0"],
        vec!["tap", "-i", &topo.server_host_if, "--port", "80", "--ring-bytes", "1000"],
        vec!["tap", "-i", &topo.server_host_if],
    ] {
        let out = Command::new(mirror_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("interface") || stderr.contains("port") || stderr.contains("ring"),
            "{stderr}"
        );
    }
    assert!(tcx_program_names(&topo.server_host_if).is_empty());
    let (qdiscs, _) = tc_state(&topo.server_host_if);
    assert!(!qdiscs.contains("clsact"));
}
