//! Helpers for the integration tests: network namespaces shaped like a Kubernetes node,
//! real HTTP servers and clients inside them, and assembling captured streams.
//!
//! Every test builds its own topology with unique names and addresses and tears it down on
//! drop (also when the test panics), so tests run in parallel.
pub mod bench;
pub mod browser;
pub mod client;
pub mod digest;
pub mod frames;
pub mod h2;
pub mod json_service;
pub mod netns;
pub mod server;
pub mod streams;
pub mod tls;
pub mod topology;

/// The `mirror` binary built by `cargo xtask test` (or `cargo build -p mirror-cli`).
pub fn mirror_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MIRROR_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/mirror
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("mirror");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p mirror-cli`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// HTTP messages (requests and responses) in a capture file of port 8000's traffic, as
/// `mirror dump -r FILE --http` reads them: how a test knows a capture is complete.
pub fn messages_in(file: &std::path::Path) -> usize {
    let out = std::process::Command::new(mirror_bin())
        .arg("dump")
        .arg("-r")
        .arg(file)
        .args(["--http", "--port", "8000"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// How many programs of ours (the tap's, by name) run on each TCX hook of `iface`:
/// [ingress, egress].
pub fn ours_on(iface: &str) -> [usize; 2] {
    use mirror_tap::{Hook, PROG_EGRESS, PROG_INGRESS};
    [Hook::Ingress, Hook::Egress].map(|hook| {
        let programs = mirror_tap::hook_programs(iface, hook).unwrap();
        programs.iter().filter(|(_, n)| n == PROG_INGRESS || n == PROG_EGRESS).count()
    })
}

/// A pin directory of a test's agent (`mirror run --pin`), removed when dropped: after a
/// failed test too, and after agents killed on purpose. Declare it before the agents, so it
/// drops after them.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    /// A directory under /sys/fs/bpf named for the test: unique per process and call.
    pub fn new(name: &str) -> PinDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PinDir(format!("/sys/fs/bpf/mirror-test-{name}-{}-{n}", std::process::id()).into())
    }

    /// `--pin=DIR`.
    pub fn arg(&self) -> String {
        format!("--pin={}", self.0.display())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts tcpdump writing the TCP packets of `port` on `iface` to `file` (pcap, each packet
/// flushed), once it says it captures. A 32 MiB kernel buffer: under a loaded test run the
/// default 2 MiB dropped packets of large bodies. SIGINT stops it.
pub fn tcpdump_writer(iface: &str, file: &str, port: u16) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("tcpdump")
        .args(["-i", iface, "--immediate-mode", "-B", "32768", "-U", "-n", "-w", file])
        .args(["tcp", "port", &port.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting tcpdump");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("listening on")), "tcpdump did not start");
    // The rest of what it says (its counts at exit) is read so it never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// `http://addr:port/path`, with IPv6 addresses in brackets.
pub fn http_url(addr: std::net::IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", std::net::SocketAddr::new(addr, port))
}

/// Integration tests need root (namespaces, BPF). Fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "integration tests must run as root");
}

pub mod live {
    //! The live tap feeding reassembly and framing, as the agent does.
    use mirror_flow::{FlowDriver, ReassemblyConfig, ReassemblyStats};
    use mirror_http::{extractor, HttpConfig, HttpEvent, HttpStats};
    use mirror_tap::RingSource;
    use tokio::sync::oneshot;

    /// What the extractor produced, with its counters.
    pub struct Extracted {
        pub events: Vec<HttpEvent>,
        pub reassembly: ReassemblyStats,
        pub http: HttpStats,
    }

    /// Consumes the ring in a task until [`LiveExtractor::finish`].
    pub struct LiveExtractor {
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Extracted>,
    }

    impl LiveExtractor {
        pub fn start(mut source: RingSource) -> LiveExtractor {
            let (stop, mut stopped) = oneshot::channel();
            let task = tokio::spawn(async move {
                let table = extractor(ReassemblyConfig::default(), HttpConfig::default());
                let mut driver = FlowDriver::new(table);
                let mut events = Vec::new();
                let stop = async {
                    let _ = (&mut stopped).await;
                };
                driver.run(&mut source, &mut events, stop, None).await.expect("ring");
                // Everything the clients caused is in the ring by now.
                let mut batch = Vec::new();
                while source.drain_now(&mut batch) > 0 {
                    driver.feed(&mut batch, &mut events);
                }
                let x = driver.table();
                Extracted { events, reassembly: *x.stats(), http: x.shared().stats }
            });
            LiveExtractor { stop, task }
        }

        pub async fn finish(self) -> Extracted {
            let _ = self.stop.send(());
            self.task.await.expect("extractor task")
        }
    }
}

pub mod agent {
    //! The `mirror` binary as a child process: started, waited for, stopped with SIGTERM.
    use std::{
        io::{BufRead, BufReader},
        process::{Child, Command, Stdio},
        sync::{Arc, Mutex},
        thread::JoinHandle,
    };

    pub struct AgentProcess {
        child: Child,
        stderr: Arc<Mutex<String>>,
        reader: Option<JoinHandle<()>>,
        pub stdout: Option<std::process::ChildStdout>,
    }

    /// Arguments of `mirror run` watching `port` on `interface` and mirroring to `shadow`,
    /// with no watch socket (so runs in parallel do not collide), then `extra`.
    pub fn run_args(interface: &str, port: u16, shadow: &str, extra: &[&str]) -> Vec<String> {
        let port = port.to_string();
        ["run", "-i", interface, "--port", &port, "--shadow", shadow, "--watch-socket", "none"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    }

    impl AgentProcess {
        /// Starts `mirror ARGS` and waits until it prints `ready_line` on stderr.
        pub fn start(args: &[String], ready_line: &str) -> AgentProcess {
            Self::spawn(Command::new(crate::mirror_bin()), args, ready_line)
        }

        /// The same with another build of the binary (a benchmark's "before").
        pub fn start_bin(bin: &std::path::Path, args: &[String], ready_line: &str) -> AgentProcess {
            Self::spawn(Command::new(bin), args, ready_line)
        }

        /// The same, inside network namespace `ns` (as inside a pod).
        pub fn start_in(
            ns: &crate::netns::Netns,
            args: &[String],
            ready_line: &str,
        ) -> AgentProcess {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns.name()]).arg(crate::mirror_bin());
            Self::spawn(cmd, args, ready_line)
        }

        fn spawn(mut cmd: Command, args: &[String], ready_line: &str) -> AgentProcess {
            let mut child = cmd
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning mirror");
            let stderr = child.stderr.take().unwrap();
            let mut lines = BufReader::new(stderr).lines();
            let text = Arc::new(Mutex::new(String::new()));
            for line in lines.by_ref() {
                let line = line.unwrap();
                text.lock().unwrap().push_str(&line);
                text.lock().unwrap().push('\n');
                if line.contains(ready_line) {
                    break;
                }
            }
            assert!(
                text.lock().unwrap().contains(ready_line),
                "agent failed: {}",
                text.lock().unwrap()
            );
            let sink = text.clone();
            let reader = std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut t = sink.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            let stdout = child.stdout.take();
            AgentProcess { child, stderr: text, reader: Some(reader), stdout }
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// Peak resident memory so far (VmHWM), in KiB.
        pub fn peak_rss_kib(&self) -> u64 {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }

        /// Waits until its stderr contains `needle` (panics with what it printed after
        /// `timeout`); returns everything printed so far.
        pub fn wait_for_stderr(&self, needle: &str, timeout: std::time::Duration) -> String {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let text = self.stderr.lock().unwrap().clone();
                if text.contains(needle) {
                    return text;
                }
                assert!(std::time::Instant::now() < deadline, "no {needle:?} in: {text}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }

        /// Sends `signal` and returns at once.
        pub fn signal(&self, signal: i32) {
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }

        /// SIGTERM, wait for a clean exit, return everything it printed on stderr.
        pub fn stop(self) -> String {
            self.stop_with(libc::SIGTERM)
        }

        /// `signal` (`libc::SIGINT`: Ctrl-C), wait for a clean exit, return everything it
        /// printed on stderr.
        pub fn stop_with(mut self, signal: i32) -> String {
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(self.child.id() as i32, signal) };
            let status = self.child.wait().unwrap();
            if let Some(r) = self.reader.take() {
                r.join().unwrap();
            }
            let text = self.stderr.lock().unwrap().clone();
            assert!(status.success(), "exited with {status} after signal {signal}: {text}");
            text
        }
    }

    impl Drop for AgentProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
