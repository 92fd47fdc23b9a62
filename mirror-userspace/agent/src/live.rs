//! `mirror run`: the pipeline fed by the live kernel tap until a shutdown signal.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Result;
use mirror_capture::Segment;
use mirror_flow::{FlowSink, FlowTable};
use mirror_http::{HttpConnection, HttpEvent};
use mirror_shadow::ResultSink;
use mirror_tap::{Directions, KernelCounters, RingSource, Tap, TapSettings};
use tokio::net::TcpListener;

use crate::{
    metrics::{self, Stage},
    pipeline::{Dispatch, MirrorSettings, Mirroring, Summary, OWN_MARK},
    watch::Publisher,
};

/// What a live run needs besides the mirroring settings.
#[derive(Clone)]
pub struct RunOptions {
    /// Where and what to capture (valid: see [`TapSettings::validate`]). The agent captures
    /// both directions and ignores its own marked sockets whatever this says.
    pub tap: TapSettings,
    /// Serve Prometheus metrics, /healthz and /readyz here.
    pub metrics: Option<SocketAddr>,
    /// Serve watchers (`mirror dump --watch`) on this unix socket.
    pub watch_socket: Option<PathBuf>,
    /// Also told every copy's outcome (the request log).
    pub results: Option<Arc<dyn ResultSink>>,
}

/// An agent whose tap is attached: [`LiveAgent::run`] mirrors until shutdown.
pub struct LiveAgent {
    mirroring: Mirroring,
    tap: Tap,
    source: RingSource,
    ready: Arc<AtomicBool>,
    watch_socket: Option<PathBuf>,
}

impl LiveAgent {
    /// Binds the metrics listener (first, so a bad address fails before anything is
    /// attached), starts the shadow clients and the watch socket, attaches the tap.
    pub async fn start(settings: MirrorSettings, opts: RunOptions) -> Result<LiveAgent> {
        let listener = match opts.metrics {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let mut mirroring = Mirroring::start(settings, opts.results.clone());
        let watch_socket = opts.watch_socket.filter(|path| serve_watchers(&mut mirroring, path));
        let mut tap = Tap::attach(&TapSettings {
            directions: Directions::BOTH,
            ignore_mark: OWN_MARK,
            ..opts.tap
        })?;
        let source = tap.segments()?;
        let ready = Arc::new(AtomicBool::new(true));
        if let Some(listener) = listener {
            serve_metrics(listener, &mirroring, &ready);
        }
        Ok(LiveAgent { mirroring, tap, source, ready, watch_socket })
    }

    /// Mirrors until `shutdown` completes; then drains the ring, detaches and returns the
    /// summary.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Summary> {
        let Mirroring { driver, dispatch, .. } = &mut self.mirroring;
        let mut sink = LiveSink { dispatch, tap: &self.tap };
        let every_second = Some(Duration::from_secs(1));
        driver.run(&mut self.source, &mut sink, shutdown, every_second).await?;
        // Everything captured before the signal is mirrored: drain the ring to the end.
        let mut batch = Vec::new();
        while self.source.drain_now(&mut batch) > 0 {
            driver.feed(&mut batch, &mut sink);
        }
        self.ready.store(false, Ordering::Relaxed);
        let kernel = self.tap.counters()?;
        self.tap.detach();
        self.mirroring.settle().await;
        if let Some(path) = self.watch_socket {
            let _ = std::fs::remove_file(path);
        }
        Ok(self.mirroring.summary(Some(kernel)))
    }
}

/// Watching is an aid, not the job: without its socket the agent still mirrors.
fn serve_watchers(mirroring: &mut Mirroring, path: &std::path::Path) -> bool {
    match Publisher::serve(path) {
        Ok(publisher) => {
            mirroring.publish_to(publisher);
            true
        }
        Err(e) => {
            tracing::warn!(
                "watch socket {}: {e}; `mirror dump --watch` will not work",
                path.display()
            );
            false
        }
    }
}

fn serve_metrics(listener: TcpListener, mirroring: &Mirroring, ready: &Arc<AtomicBool>) {
    tokio::spawn(metrics::serve(listener, mirroring.metrics().clone(), ready.clone()));
}

/// The pipeline's sink, with the kernel counters synced into the metrics every tick.
struct LiveSink<'a> {
    dispatch: &'a mut Dispatch,
    tap: &'a Tap,
}

impl FlowSink<HttpConnection> for LiveSink<'_> {
    fn admit(&mut self, segment: Segment) -> Option<Segment> {
        self.dispatch.admit(segment)
    }

    fn event(&mut self, event: HttpEvent) {
        self.dispatch.event(event);
    }

    fn tick(&mut self, table: &FlowTable<HttpConnection>) {
        self.dispatch.tick(table);
        match self.tap.counters() {
            Ok(k) => self.dispatch.stages.metrics.sync(Stage::Kernel, &kernel_fields(&k)),
            Err(e) => tracing::debug!("reading the kernel counters: {e:#}"),
        }
    }
}

fn kernel_fields(k: &KernelCounters) -> [(&'static str, u64); 6] {
    [
        ("seen", k.seen),
        ("selected", k.selected),
        ("records", k.records),
        ("bytes", k.bytes),
        ("lost", k.lost),
        ("truncated", k.truncated),
    ]
}
