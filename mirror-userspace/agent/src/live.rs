//! `mirror run`: the pipeline fed by the live kernel tap until a shutdown signal.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Result;
use mirror_shadow::ResultSink;
use mirror_tap::{Directions, RingSource, Tap, TapSettings};
use tokio::net::TcpListener;

use crate::{
    control::{run_controlled, Commands, Control},
    metrics,
    pipeline::{MirrorSettings, Mirroring, Summary, OWN_MARK},
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
    control: Control,
    commands: Commands,
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
        let (control, commands) = Control::channel();
        Ok(LiveAgent { mirroring, tap, source, ready, watch_socket, control, commands })
    }

    /// The control channel into this agent (valid while it runs).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Mirrors until `shutdown` completes, applying control commands as they come; then
    /// drains the ring, detaches and returns the summary.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Summary> {
        let (mirroring, source, tap) = (&mut self.mirroring, &mut self.source, &mut self.tap);
        run_controlled(mirroring, source, tap, &mut self.commands, shutdown).await?;
        // Everything captured before the signal is mirrored: drain the ring to the end.
        let mut batch = Vec::new();
        while self.source.drain_now(&mut batch) > 0 {
            self.mirroring.segments(&mut batch);
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
