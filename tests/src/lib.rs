//! Helpers for the integration tests: network namespaces shaped like a Kubernetes node,
//! real HTTP servers and clients inside them, and assembling captured streams.
//!
//! Every test builds its own topology with unique names and addresses and tears it down on
//! drop (also when the test panics), so tests run in parallel.
pub mod client;
pub mod frames;
pub mod netns;
pub mod server;
pub mod streams;
pub mod topology;

/// The `mirror` binary built by `cargo xtask test` (or `cargo build -p mirror-userspace`).
pub fn mirror_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MIRROR_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/mirror
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("mirror");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p mirror-userspace`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Integration tests need root (namespaces, BPF). Fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests must run as root"
    );
}

pub mod live {
    //! The live tap feeding reassembly and framing, as the agent does.
    use mirror::{
        capture::CaptureSource,
        http::{extractor, HttpConfig, HttpEvent, HttpStats},
        reassembly::{ReassemblyConfig, ReassemblyStats},
        tap::RingSource,
    };
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
                let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
                let (mut batch, mut events) = (Vec::new(), Vec::new());
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        more = source.next_batch(&mut batch) => {
                            if !more.expect("ring") { break; }
                        }
                    }
                    for s in batch.drain(..) {
                        x.push(&s, &mut events);
                    }
                }
                // Everything the clients caused is in the ring by now.
                while source.drain_now(&mut batch) > 0 {
                    for s in batch.drain(..) {
                        x.push(&s, &mut events);
                    }
                }
                Extracted {
                    events,
                    reassembly: *x.stats(),
                    http: x.shared().stats,
                }
            });
            LiveExtractor { stop, task }
        }

        pub async fn finish(self) -> Extracted {
            let _ = self.stop.send(());
            self.task.await.expect("extractor task")
        }
    }
}
