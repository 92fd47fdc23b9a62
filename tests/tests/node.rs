//! The node agent on a simulated node: pods (namespaces with a veth) created and deleted while
//! `mirror run --iface-pattern` follows them.
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use mirror_tap::{AttachMode, Hook};
use mirror_tests::{
    agent::{run_args, AgentProcess},
    client::{free_local_addr, get, keep_alive, metric, RawRequest},
    http_url,
    netns::run,
    server::RecordingServer,
    topology::{Family, Pod, Topology},
    PinDir,
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

fn pod_index(pod: &Pod) -> u32 {
    mirror_tap::interface_index(&pod.host_if).unwrap()
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
        let pod_label = format!("ifindex=\"{}\",pod=\"{}\"}} 1", pod_index(&pod), pod.ns.name());
        let text = get(metrics, "/metrics").1;
        assert!(text.contains(&pod_label), "pod {i} named by its namespace: {text}");
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
    // A connection being served, or a netlink socket of the moment, may be open at any one
    // look: the steady count is the least of a few.
    let steady = || {
        (0..5).map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            open_fds(agent.pid())
        })
    };
    let before = steady().min().unwrap();
    for n in 1..=20 {
        batch(n);
    }
    let text = get(metrics, "/metrics").1;
    assert_eq!(changes(&text, "failed"), 0, "{text}");
    let deadline = Instant::now() + WAIT;
    let mut after = steady().min().unwrap();
    while after.0 > before.0 && Instant::now() < deadline {
        after = steady().min().unwrap();
    }
    assert_eq!(after.1, 0, "links held after churn");
    assert!(after.0 <= before.0, "fds: {before:?} before, {after:?} after 200 cycles");
    assert_eq!((after.2, after.3), (before.2, before.3), "maps, programs");
    agent.stop();
}

/// The ids of the links pinned under `pin`.
fn pinned_link_ids(pin: &Path) -> Vec<u32> {
    let links = mirror_tap::pinned_links(pin);
    let info = |l: &mirror_tap::PinnedLinkEntry| {
        mirror_tap::open_pinned(&l.path).and_then(mirror_tap::tcx_link_info).unwrap().id
    };
    links.iter().map(info).collect()
}

/// Requests from the client, one connection each, numbered, until told to stop: the time
/// each was sent, and whether the primary answered it.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Instant>>>,
    thread: std::thread::JoinHandle<usize>,
}

impl Traffic {
    fn start(topo: &Arc<Topology>) -> Traffic {
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (topo, stop2, sent2) = (topo.clone(), stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
            let mut failed = 0;
            while !stop2.load(Ordering::Relaxed) {
                let n = sent2.lock().unwrap().len();
                let request = RawRequest::new("GET", &format!("/r{n}"), "svc:8000", b"");
                sent2.lock().unwrap().push(Instant::now());
                failed += usize::from(keep_alive(&topo.client, server, vec![request]).is_err());
                // Pacing (a few hundred requests a second), not synchronisation: the requests
                // of a restart window fit the new agent's queue.
                std::thread::sleep(Duration::from_millis(3));
            }
            failed
        });
        Traffic { stop, sent, thread }
    }

    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count() < n {
            assert!(Instant::now() < deadline, "traffic stalled at {}", self.count());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops; the send times, and how many requests failed.
    fn finish(self) -> (Vec<Instant>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.thread.join().unwrap();
        (self.sent.lock().unwrap().clone(), failed)
    }
}

/// SIGKILL mid-traffic, then a new agent on the same pins: the pinned links stay attached
/// (one program of ours per hook throughout), the new agent swaps its program into the same
/// links, and reads on from the pinned rings, so requests sent while no agent ran are
/// mirrored too. Every primary request is answered. SIGTERM then leaves nothing, and so
/// does `mirror cleanup` after another SIGKILL.
#[test]
fn a_killed_agent_restarts_without_a_gap() {
    mirror_tests::require_root();
    let topo = Arc::new(Topology::new().unwrap());
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let pin_dir = PinDir::new("restart");
    let (pin, pin_arg) = (pin_dir.0.clone(), pin_dir.arg());
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args = run_args(&topo.server_host_if, PORT, &shadow_url, &[&pin_arg, "--threads", "1"]);
    let iface = topo.server_host_if.clone();

    let first = AgentProcess::start(&args, "mirror run: ready");
    let links = pinned_link_ids(&pin);
    assert_eq!(links.len(), 2, "one pinned link per hook");
    let traffic = Traffic::start(&topo);
    shadow.wait_for(20, WAIT);
    drop(first); // SIGKILL
    let killed = Instant::now();
    assert_eq!(mirror_tests::ours_on(&iface), [1, 1], "still attached, through the pins");
    let at_kill = traffic.count();
    traffic.wait_for(at_kill + 30); // requests while no agent runs
    let second = AgentProcess::start(&args, "mirror run: ready");
    assert_eq!(mirror_tests::ours_on(&iface), [1, 1], "one program per hook after the restart");
    assert_eq!(pinned_link_ids(&pin), links, "the same links, their program swapped");
    let at_ready = traffic.count();
    traffic.wait_for(at_ready + 30);
    let (sent, failed) = traffic.finish();
    assert_eq!(failed, 0, "every primary request answered");
    assert_eq!(primary.requests().len(), sent.len());
    // Stopped first: the agent reads its ring to the end and waits for its copies' answers,
    // so what the shadow has then is all it will get.
    let summary = second.stop();
    let mirrored: std::collections::HashSet<String> =
        shadow.requests().into_iter().map(|r| r.target).collect();
    let lost: Vec<usize> =
        (0..sent.len()).filter(|n| !mirrored.contains(&format!("/r{n}"))).collect();
    // Lost: what the killed agent had read and not sent on yet (sent just before the kill),
    // and what the new agent had to drop, counted, from the burst the window left in the
    // rings. Requests sent while no agent ran are mirrored from the pinned rings.
    let dropped: u64 = summary
        .lines()
        .find_map(|l| l.split_once(" dropped queue_full ")?.1.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    let before_kill = lost.iter().filter(|&&n| n < at_kill).count();
    let in_window = lost.iter().filter(|&&n| (at_kill..at_ready).contains(&n)).count();
    let context = format!("lost {lost:?}, killed at {at_kill}, ready at {at_ready}: {summary}");
    eprintln!(
        "restart: {} requests sent while no agent ran, {in_window} of them lost ({dropped} \
         dropped, counted), {before_kill} lost from before the kill, {} in all",
        at_ready - at_kill,
        sent.len()
    );
    assert!(lost.iter().all(|&n| n < at_ready), "lost after the restart: {context}");
    assert!(
        lost.iter().filter(|&&n| n < at_kill).all(|&n| sent[n] + Duration::from_secs(1) > killed),
        "lost long before the kill: {context}"
    );
    assert!(before_kill <= 10 && in_window as u64 <= dropped, "{context}");
    assert!(mirrored.contains(&format!("/r{at_kill}")), "the window is mirrored: {context}");
    assert_eq!(mirror_tests::ours_on(&iface), [0, 0], "SIGTERM detaches");
    assert!(!pin.exists(), "SIGTERM unpins");

    let third = AgentProcess::start(&args, "mirror run: ready");
    drop(third); // SIGKILL
    assert_eq!(mirror_tests::ours_on(&iface), [1, 1]);
    let cleanup =
        run(Command::new(mirror_tests::mirror_bin()).args(["cleanup", "--pin"]).arg(&pin)).unwrap();
    assert!(String::from_utf8_lossy(&cleanup.stdout).contains("2 pinned links"), "{cleanup:?}");
    assert_eq!(mirror_tests::ours_on(&iface), [0, 0], "mirror cleanup detaches");
    assert!(!pin.exists(), "mirror cleanup unpins");
}

/// Waits for the next `mirror run: reload` line naming `why`, after the `seen` first ones.
fn next_reload(agent: &AgentProcess, seen: &mut usize, why: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = agent.wait_for_stderr("ready", WAIT);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(": reload ")).collect();
        if let Some(i) = lines[*seen..].iter().position(|l| l.contains(why)) {
            *seen += i + 1;
            return lines[*seen - 1].to_owned();
        }
        assert!(Instant::now() < deadline, "no reload ({why}) after {seen}: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's configuration file for the reload test.
fn reload_config(shadow: &str, percent: &str, ports: &str) -> String {
    format!("mirrors:\n  - url: {shadow}\nmirrorPercentage:\n  value: {percent}\nports: {ports}\n")
}

/// Requests with a path prefix, in bursts on four connections at once (the load), then waits
/// until the agent has framed every request sent so far (`total`), so the next reload cannot
/// catch any of them.
fn burst(topo: &Topology, port: u16, prefix: &str, n: usize, total: &mut u64, metrics: SocketAddr) {
    let server = SocketAddr::new(topo.server_addr(Family::V4), port);
    std::thread::scope(|s| {
        for c in 0..4 {
            let requests: Vec<RawRequest> = (0..n / 4)
                .map(|i| RawRequest::new("GET", &format!("{prefix}{c}-{i}"), "svc:8000", b""))
                .collect();
            s.spawn(move || keep_alive(&topo.client, server, requests).unwrap());
        }
    });
    *total += (n / 4 * 4) as u64;
    let framed = "mirror_http_total{counter=\"requests\"}";
    wait_for_metrics(metrics, "requests framed", |t| metric(t, framed) >= *total);
}

/// Reloads under load, by a change of the file and by SIGHUP: the percentage 100 -> 10 -> 0
/// -> 100 with a new shadow URL and a new port, each in force for the requests after it; a
/// bad configuration is refused, naming the field, and the last good one keeps mirroring.
/// Nothing is detached: the same links and programs throughout.
#[test]
fn reloads_apply_without_detaching() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT, 9090]);
    let (shadow_a, shadow_b) = (
        RecordingServer::start(&topo.shadow, &[PORT]),
        RecordingServer::start(&topo.shadow, &[9091]),
    );
    let (url_a, url_b) = (
        http_url(topo.shadow_addr(Family::V4), PORT, ""),
        http_url(topo.shadow_addr(Family::V4), 9091, ""),
    );
    let tag = tag();
    let dir = std::env::temp_dir().join(format!("mirror-reload-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("mirror.yaml");
    std::fs::write(&config, reload_config(&url_a, "100", "[8000]")).unwrap();
    let pin_dir = PinDir::new("reload");
    let pin = pin_dir.0.clone();
    let metrics = free_local_addr();
    let args: Vec<String> = [
        "run",
        "-i",
        &topo.server_host_if,
        "--config",
        &config.display().to_string(),
        &pin_dir.arg(),
        "--metrics",
        &metrics.to_string(),
        "--threads",
        "1",
        "--watch-socket",
        "none",
    ]
    .map(str::to_owned)
    .to_vec();
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let links = pinned_link_ids(&pin);
    let programs = |iface: &str| {
        [Hook::Ingress, Hook::Egress].map(|h| mirror_tap::hook_programs(iface, h).unwrap())
    };
    let programs_before = programs(&topo.server_host_if);
    let mut total = 0;
    let mut seen = 0;
    let mut reload = |content: String, hangup: bool| {
        std::fs::write(&config, content).unwrap();
        if hangup {
            agent.signal(libc::SIGHUP);
        }
        // With SIGHUP, the poll may see the file first: then the SIGHUP's reload comes after.
        next_reload(&agent, &mut seen, if hangup { "(SIGHUP)" } else { "file changed" })
    };

    burst(&topo, PORT, "/full/", 200, &mut total, metrics);
    let line = reload(reload_config(&url_a, "10", "[8000]"), false);
    assert!(line.ends_with("applied"), "{line}");
    burst(&topo, PORT, "/tenth/", 400, &mut total, metrics);
    let line = reload(reload_config(&url_a, "0", "[8000]"), true);
    assert!(line.ends_with("applied"), "{line}");
    burst(&topo, PORT, "/none/", 200, &mut total, metrics);
    let line = reload(reload_config(&url_b, "100", "[8000, 9090]"), false);
    assert!(line.ends_with("applied"), "{line}");
    burst(&topo, PORT, "/shadow-b/", 200, &mut total, metrics);
    burst(&topo, 9090, "/new-port/", 20, &mut total, metrics);
    let line = reload(reload_config(&url_b, "150", "[8000, 9090]"), true);
    assert!(line.contains("rejected") && line.contains("mirrorPercentage"), "{line}");
    burst(&topo, PORT, "/after-bad/", 100, &mut total, metrics);

    assert_eq!(pinned_link_ids(&pin), links, "the same links");
    assert_eq!(programs(&topo.server_host_if), programs_before, "the same programs");
    // Stopped first: it waits for its copies' answers, so the shadows have all they get.
    agent.stop();
    let (a, b) = (shadow_a.requests(), shadow_b.requests());
    let count = |seen: &[mirror_tests::server::SeenRequest], p: &str| {
        seen.iter().filter(|r| r.target.starts_with(p)).count()
    };
    assert_eq!(count(&a, "/full/"), 200);
    let tenth = count(&a, "/tenth/");
    assert!((12..=80).contains(&tenth), "10 % of 400: {tenth}");
    assert_eq!(count(&a, "/none/") + count(&b, "/none/"), 0);
    assert_eq!(count(&b, "/shadow-b/"), 200);
    assert_eq!(count(&a, "/shadow-b/"), 0, "the old shadow gets nothing after the change");
    assert_eq!(count(&b, "/new-port/"), 20, "the new port is captured");
    assert_eq!(count(&b, "/after-bad/"), 100, "the last good configuration stays");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The capability sets of every thread of process `pid` (capabilities are per thread):
/// (effective, bounding) each.
fn capabilities(pid: u32) -> Vec<(u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let sets = tasks.map(|task| {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let set = |name: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(name)).unwrap();
            u64::from_str_radix(line.trim(), 16).unwrap()
        };
        (set("CapEff:"), set("CapBnd:"))
    });
    sets.collect()
}

/// The agent checks its capabilities before attaching (the missing one named, nothing
/// attached) and, once attached, keeps only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON; its watch
/// socket is the owner's alone, or a configured group's.
#[test]
fn capabilities_are_checked_then_dropped_and_the_watch_socket_is_private() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let iface = topo.server_host_if.clone();
    let dir = std::env::temp_dir().join(format!("mirror-caps-{}", tag()));
    let socket = dir.join("watch.sock").display().to_string();
    let mut args = run_args(&iface, PORT, "http://127.0.0.1:9", &[]);
    args.retain(|a| a != "--watch-socket" && a != "none");
    let without_perfmon = Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf,+net_admin", "--inh-caps=-all"])
        .arg(mirror_tests::mirror_bin())
        .args(&args)
        .args(["--watch-socket", &socket])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&without_perfmon.stderr);
    assert_eq!(without_perfmon.status.code(), Some(2), "{said}");
    assert!(said.contains("missing capability CAP_PERFMON"), "{said}");
    assert_eq!(mirror_tests::ours_on(&iface), [0, 0], "nothing attached without the capabilities");

    let watch = [args.clone(), vec!["--watch-socket".into(), socket.clone()]].concat();
    let agent = AgentProcess::start(&watch, "mirror run: ready");
    let kept = (1 << 39) | (1 << 38) | (1 << 12);
    let threads = capabilities(agent.pid());
    assert!(threads.len() > 1, "the workers are threads of their own: {threads:?}");
    assert!(
        threads.iter().all(|&t| t == (kept, kept)),
        "only BPF, PERFMON, NET_ADMIN: {threads:x?}"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    agent.stop();

    let group = [watch, vec!["--watch-group".into(), "12345".into()]].concat();
    let agent = AgentProcess::start(&group, "mirror run: ready");
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, 12345));
    agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Another TCX program on both hooks (a tap loaded and attached by this test before the
/// agent: it runs first) and a legacy clsact filter (a second one attached through netlink,
/// cls_bpf in direct action: it runs after the TCX programs): with the agent attached
/// between them, all three see every packet of the traffic, `mirror status` shows the order
/// with ours marked, and the agent's exit leaves the others, and their qdisc, in place.
#[test]
fn other_programs_on_the_hooks_still_see_every_packet() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let iface = topo.server_host_if.clone();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let other = |attach_mode| {
        mirror_tap::Tap::attach(&mirror_tap::TapSettings {
            interfaces: vec![iface.clone()],
            ports: vec![PORT],
            attach_mode,
            ..Default::default()
        })
        .unwrap()
    };
    let (tcx, legacy) = (other(AttachMode::Tcx), other(AttachMode::Netlink));
    let pin = PinDir::new("coexist");
    let metrics = free_local_addr();
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let extra = [pin.arg(), "--metrics".into(), metrics.to_string()];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&run_args(&iface, PORT, &shadow_url, &extra), "ready");
    let status =
        run(Command::new(mirror_tests::mirror_bin()).args(["status", "--pin"]).arg(&pin.0))
            .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.matches("ours runs 2 of 2").count(), 2, "{status}");

    let agent_seen =
        || metric(&get(metrics, "/metrics").1, "mirror_kernel_total{counter=\"seen\"}");
    let seen = |tap: &mirror_tap::Tap| tap.counters().unwrap().get(mirror_tap::Counter::Seen);
    // The agent's counters reach its metrics each second: wait for them to be steady.
    let steady = || {
        let mut last = (u64::MAX, u64::MAX, u64::MAX);
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the counters never settled: {last:?}");
            std::thread::sleep(Duration::from_millis(1100));
            let now = (agent_seen(), seen(&tcx), seen(&legacy));
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let before = steady();
    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    for c in 0..5 {
        let requests = (0..20).map(|i| RawRequest::new("GET", &format!("/co{c}-{i}"), "svc", b""));
        keep_alive(&topo.client, server, requests.collect()).unwrap();
    }
    shadow.wait_for(100, WAIT);
    let after = steady();
    let delta = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert!(delta.0 >= 5 * (20 * 2 + 6), "every request and response at least: {delta:?}");
    assert_eq!((delta.0, delta.0), (delta.1, delta.2), "(ours, the other TCX, the legacy filter)");
    let status = run(Command::new(mirror_tests::mirror_bin())
        .args(["status", "--metrics", &metrics.to_string(), "--pin"])
        .arg(&pin.0))
    .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("agent: 1 interfaces attached"), "{status}");
    assert!(
        status.contains(&format!("shadow {shadow_url}: healthy; answered: 2xx 100")),
        "{status}"
    );
    agent.stop();
    assert_eq!(mirror_tests::ours_on(&iface), [1, 1], "the other TCX program stays (and only it)");
    let qdiscs = run(Command::new("tc").args(["qdisc", "show", "dev", &iface])).unwrap();
    let filters =
        run(Command::new("tc").args(["filter", "show", "dev", &iface, "ingress"])).unwrap();
    assert!(String::from_utf8_lossy(&qdiscs.stdout).contains("clsact"), "the qdisc stays");
    assert!(String::from_utf8_lossy(&filters.stdout).contains("bpf"), "the legacy filter stays");
    drop((tcx, legacy));
}

/// `--xdp` on the pod side of a veth (the agent in the pod's namespace, as for a service on
/// a host's network): the program goes into the veth driver (native XDP), the requests that
/// arrive are mirrored, and the primary gets and answers every one of them, bytes unchanged.
#[test]
fn xdp_on_a_veth_mirrors_requests_and_leaves_the_primary_untouched() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let args = run_args("eth0", PORT, &shadow_url, &["--xdp", "--threads", "1"]);
    let agent = AgentProcess::start_in(&topo.server, &args, "mirror run: ready");
    let link = run(topo.server.command("ip").args(["-d", "link", "show", "dev", "eth0"])).unwrap();
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("prog/xdp") && !link.contains("xdpgeneric"), "native XDP: {link}");

    let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut requests: Vec<RawRequest> =
        (0..20).map(|i| RawRequest::new("GET", &format!("/x{i}"), "svc:8000", b"")).collect();
    requests.push(RawRequest::new("POST", "/upload", "svc:8000", &body));
    keep_alive(&topo.client, server, requests).unwrap();
    let got = primary.wait_for(21, WAIT);
    assert_eq!(got.len(), 21, "the primary got every request");
    assert_eq!(got.last().unwrap().body, body, "and the bytes as sent");
    let copies = shadow.wait_for(21, WAIT);
    assert_eq!(copies.len(), 21);
    let upload = copies.iter().find(|r| r.target == "/upload").unwrap();
    assert_eq!(upload.body, body);
    assert!(copies.iter().all(|r| r.header("host") == Some(&b"svc-shadow:8000"[..])));
    agent.stop();
    let link = run(topo.server.command("ip").args(["link", "show", "dev", "eth0"])).unwrap();
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"), "detached at exit");
}

/// The watch stream names the pod a mirrored request went to: the interface the node routes
/// the server's address through, and the pod the follower found behind it.
#[test]
fn the_watch_stream_names_the_pod() {
    use std::io::BufRead;
    mirror_tests::require_root();
    let tag = tag();
    let shadow_pod = Pod::new(&format!("{tag}s")).unwrap();
    let shadow = RecordingServer::start(&shadow_pod.ns, &[PORT]);
    let pod = Pod::new(&format!("{tag}p000")).unwrap();
    let _server = RecordingServer::start(&pod.ns, &[PORT]);
    let dir = std::env::temp_dir().join(format!("mirror-watch-{tag}"));
    let socket = dir.join("watch.sock");
    let args: Vec<String> = [
        "run",
        "--iface-pattern",
        &format!("{tag}p*"),
        "--port",
        "8000",
        "--shadow",
        &http_url(shadow_pod.addr.into(), PORT, ""),
        "--watch-socket",
        &socket.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let watcher = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    watcher.set_read_timeout(Some(WAIT)).unwrap();
    let mut lines = std::io::BufReader::new(watcher).lines();
    assert_eq!(lines.next().unwrap().unwrap(), r#"{"type":"hello"}"#);
    let url = http_url(pod.addr.into(), PORT, "/watched");
    run(Command::new("curl").args(["-sS", "--fail", "-o", "/dev/null", &url])).unwrap();
    shadow.wait_for(1, WAIT);
    let line = lines.next().unwrap().unwrap();
    assert!(line.contains(r#""target":"/watched""#), "{line}");
    assert!(line.contains(&format!(r#""pod":"{}""#, pod.ns.name())), "{line}");
    agent.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An upgrade: the old agent leaves its links attached at SIGTERM (`--keep-attached`), the
/// new one, whose maps differ (another ring size, as another build's would), takes the same
/// links over with its own maps and unpins the old ones (what the old rings held then is
/// lost: say so), and mirrors from then on.
#[test]
fn an_upgraded_agent_takes_the_links_over_with_new_maps() {
    mirror_tests::require_root();
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let shadow = RecordingServer::start(&topo.shadow, &[PORT]);
    let pin = PinDir::new("upgrade");
    let shadow_url = http_url(topo.shadow_addr(Family::V4), PORT, "");
    let agent = |ring: &str| {
        let extra = [pin.arg(), "--keep-attached".into(), "--ring-bytes".into(), ring.into()];
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        AgentProcess::start(&run_args(&topo.server_host_if, PORT, &shadow_url, &extra), "ready")
    };
    let maps = || {
        let dir = pin.0.join("v1/maps");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let send = |path: &str| {
        let server = SocketAddr::new(topo.server_addr(Family::V4), PORT);
        keep_alive(&topo.client, server, vec![RawRequest::new("GET", path, "svc", b"")]).unwrap();
    };
    let old = agent("1048576");
    let links = pinned_link_ids(&pin.0);
    let old_maps = maps();
    assert_eq!(old_maps.len(), 1);
    send("/before");
    shadow.wait_for(1, WAIT);
    old.stop(); // SIGTERM, keeping everything attached
    assert_eq!(
        mirror_tests::ours_on(&topo.server_host_if),
        [1, 1],
        "kept attached for the next agent"
    );
    let new = agent("2097152");
    assert_eq!(pinned_link_ids(&pin.0), links, "the same links");
    let new_maps = maps();
    assert_eq!(new_maps.len(), 1, "the old maps unpinned: {new_maps:?}");
    assert_ne!(new_maps, old_maps);
    assert!(new_maps[0].ends_with("x2097152"), "{new_maps:?}");
    send("/after");
    let seen = shadow.wait_for(2, WAIT);
    assert!(seen.iter().any(|r| r.target == "/after"), "{seen:?}");
    assert_eq!(mirror_tests::ours_on(&topo.server_host_if), [1, 1]);
    drop(new); // SIGKILL: the pins stay, PinDir removes them
}

/// A fake container runtime: the two CRI calls the agent makes (ListPodSandbox and a verbose
/// PodSandboxStatus), over HTTP/2 on a unix socket, answering with one sandbox per entry of
/// `pods`: (network namespace name, namespace, pod name).
fn fake_cri(socket: &Path, pods: Vec<(String, String, String)>) -> std::thread::JoinHandle<()> {
    use http_body_util::{BodyExt, Full};
    use mirror_agent::cri::{grpc_frame, grpc_unframe, proto};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            let pods = std::sync::Arc::new(pods);
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let pods = pods.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let pods = pods.clone();
                    async move {
                        let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let answer = match method.as_str() {
                            "ListPodSandbox" => grpc_frame(&proto::ListPodSandboxResponse {
                                items: pods
                                    .iter()
                                    .map(|(netns, namespace, name)| proto::PodSandbox {
                                        id: format!("sandbox-{netns}"),
                                        metadata: Some(proto::PodSandboxMetadata {
                                            name: name.clone(),
                                            uid: "u".into(),
                                            namespace: namespace.clone(),
                                        }),
                                    })
                                    .collect(),
                            }),
                            _ => {
                                let asked: proto::PodSandboxStatusRequest = grpc_unframe(body).unwrap();
                                assert!(asked.verbose);
                                let netns = asked.pod_sandbox_id.trim_start_matches("sandbox-");
                                let info = serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [
                                    {"type": "pid"},
                                    {"type": "network", "path": format!("/var/run/netns/{netns}")},
                                ]}}});
                                let status = proto::PodSandboxStatusResponse {
                                    info: [("info".to_owned(), info.to_string())].into(),
                                };
                                grpc_frame(&status)
                            }
                        };
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(answer).with_trailers(async { Some(Ok(trailers)) });
                        let response = hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let builder =
                        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        })
    })
}

/// Where a containerd CRI socket exists (here a fake runtime's), pods are named
/// `namespace/name` as the runtime knows them, in the metrics and the watch stream.
#[test]
fn pods_are_named_by_the_container_runtime() {
    mirror_tests::require_root();
    let tag = tag();
    let dir = std::env::temp_dir().join(format!("mirror-cri-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("containerd.sock");
    let pod = Pod::new(&format!("{tag}p000")).unwrap();
    let _cri = fake_cri(&socket, vec![(pod.ns.name().into(), "shop".into(), "checkout-0".into())]);
    let metrics = free_local_addr();
    let args: Vec<String> = [
        "run",
        "--iface-pattern",
        &format!("{tag}p*"),
        "--port",
        "8000",
        "--shadow",
        "http://127.0.0.1:9",
        "--watch-socket",
        "none",
        "--metrics",
        &metrics.to_string(),
        "--cri-socket",
        &socket.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let text = get(metrics, "/metrics").1;
    let line = format!(
        "interface=\"{}\",ifindex=\"{}\",pod=\"shop/checkout-0\"}} 1",
        pod.host_if,
        pod_index(&pod)
    );
    assert!(text.contains(&line), "{text}");
    let stderr = agent.stop();
    assert!(stderr.contains("pod shop/checkout-0"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
