//! `mirror run`: the pipeline fed by the live kernel tap until a shutdown signal.
//!
//! One worker per ring: the kernel puts each connection in one ring (by a hash of its
//! addresses and ports), and each worker is a thread with its own single-threaded runtime
//! that owns its ring, flow table, framers and shadow connections, so a segment or a
//! request never crosses threads and nothing on its way is locked (the metrics and the byte
//! budget are shared atomics). The main task owns the tap (attach, detach, kernel counters),
//! the metrics and watch endpoints and the control channel, and hands new settings to every
//! worker.
use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use mirror_shadow::ResultSink;
use mirror_tap::{
    Directions, InterfacePatterns, KernelCounters, LinkEvent, RingReader, Tap, TapSettings,
    MAX_RINGS,
};
use tokio::sync::{mpsc, oneshot, Barrier};

use crate::{
    admin::Api,
    control::{run_controlled, Command, Commands, Control, Reload, Taps},
    follow::Follower,
    metrics::{self, Stage},
    pipeline::{MirrorSettings, Mirroring, Shared, Summary, OWN_MARK},
    watch::{Publisher, WatchSocket},
};

/// What a live run needs besides the mirroring settings.
#[derive(Clone)]
pub struct RunOptions {
    /// Where and what to capture (valid: see [`TapSettings::validate`]). The agent captures
    /// both directions, in one ring per worker, and ignores its own marked sockets whatever
    /// this says.
    pub tap: TapSettings,
    /// Give up every capability but those attaching needs once attached (the CLI does; a
    /// test running agents in its own process does not).
    pub drop_privileges: bool,
    /// The container runtime's CRI socket, to name pods `namespace/name` (else by their
    /// network namespace's name).
    pub cri_socket: Option<PathBuf>,
    /// At shutdown, leave the links and maps pinned (with `tap.pin_dir`): the programs go
    /// on capturing into the rings until the next agent takes them over (an upgrade).
    pub keep_attached: bool,
    /// Serve Prometheus metrics, /healthz and /readyz here.
    pub metrics: Option<SocketAddr>,
    /// Serve the metrics and, when comparing, the comparison's JSON API (`admin`) here.
    pub admin: Option<SocketAddr>,
    /// Serve watchers (`mirror dump --watch`) on this unix socket.
    pub watch_socket: Option<WatchSocket>,
    /// Also told every copy's outcome (the request log).
    pub results: Option<Arc<dyn ResultSink>>,
    /// Workers, one ring each (1..=[`MAX_RINGS`]; see [`default_workers`]).
    pub workers: usize,
}

/// One worker per CPU the process may use, at most [`MAX_RINGS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from).min(MAX_RINGS)
}

/// An agent whose tap is attached: [`LiveAgent::run`] mirrors until shutdown.
pub struct LiveAgent {
    tap: Tap,
    workers: Vec<Worker>,
    /// Told the number of a worker whose thread ended (it should not before shutdown).
    ended: mpsc::UnboundedReceiver<usize>,
    shared: Shared,
    ready: Arc<AtomicBool>,
    watch_socket: Option<PathBuf>,
    control: Control,
    commands: Commands,
    /// Where the comparison's results are saved.
    store: Option<mirror_compare::Store>,
    /// Attaches to interfaces as they appear, if asked to.
    follower: Option<Follower>,
    /// The pods behind followed interfaces (for a follower started by a reload).
    pods: crate::pods::Pods,
    cri_socket: Option<PathBuf>,
    keep_attached: bool,
}

impl LiveAgent {
    /// Binds the metrics listener (first, so a bad address fails before anything is
    /// attached), serves the watch socket, attaches the tap and starts the workers.
    pub async fn start(settings: MirrorSettings, opts: RunOptions) -> Result<LiveAgent> {
        let listener = match opts.metrics {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let admin = match opts.admin {
            Some(addr) => Some(metrics::bind(addr).await.map_err(|e| anyhow!("admin: {e}"))?),
            None => None,
        };
        let workers = opts.workers.clamp(1, MAX_RINGS);
        let shared = Shared::new(opts.results.clone(), workers);
        let pods = crate::pods::Pods::default();
        let publisher = opts.watch_socket.as_ref().and_then(serve_watchers);
        let publisher = match opts.tap.follow.is_some() {
            true => publisher.map(|p| p.with_pods(pods.clone())),
            false => publisher,
        };
        let watch_socket = opts.watch_socket.filter(|_| publisher.is_some()).map(|w| w.path);
        // Link notifications first: interfaces created while the tap loads are not missed.
        let follower = match opts.tap.follow.clone() {
            Some(patterns) => {
                let follower = Follower::start(patterns, pods.clone(), cri(&opts.cri_socket));
                Some(follower.context("watching network interfaces")?)
            }
            None => None,
        };
        let statics = opts.tap.interfaces.clone();
        let mut tap = Tap::attach(&agent_tap(opts.tap, workers))?;
        if opts.drop_privileges {
            // Attached (and the bpffs mounted if it had to be), and before any other thread
            // exists: capabilities are per thread, and the workers inherit what is left.
            if let Err(e) = crate::privileges::drop_others() {
                tracing::warn!("giving up capabilities: {e:#}");
            }
        }
        let compare_thresholds = settings.compare.as_ref().map(|c| c.thresholds);
        let store = settings.compare.as_ref().and_then(|c| c.store.clone());
        if let Some(store) = &store {
            // What an earlier run saved, before anything is attached.
            if let Some(saved) = store.load().map_err(|e| anyhow!("compare.store: {e}"))? {
                let mut verdicts = shared.verdicts().lock().expect("not poisoned");
                verdicts.results = saved.results;
                verdicts.added_ignore = saved.ignore;
            }
        }
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let drained = Arc::new(Barrier::new(workers));
        let mut started = Vec::new();
        for (i, ring) in tap.ring_buffers()?.into_iter().enumerate() {
            let start = WorkerStart {
                index: i,
                ring,
                settings: settings.clone(),
                shared: shared.clone(),
                publisher: publisher.clone(),
                ended: ended_tx.clone(),
                drained: drained.clone(),
            };
            started.push(Worker::spawn(start).await?);
        }
        // Ready once attached to every interface there is (the follower's first listing).
        let ready = Arc::new(AtomicBool::new(false));
        if let Some(listener) = listener {
            tokio::spawn(metrics::serve(listener, shared.metrics().clone(), ready.clone(), None));
        }
        if let Some(listener) = admin {
            let api = settings_api(&shared, &compare_thresholds);
            tokio::spawn(metrics::serve(listener, shared.metrics().clone(), ready.clone(), api));
        }
        // Interfaces given by name, once each (a follower registers those it follows).
        let mut named: Vec<(String, u32)> = tap
            .attachments()
            .filter(|(name, ..)| statics.iter().any(|s| s == name))
            .map(|(name, ifindex, ..)| (name.to_owned(), ifindex))
            .collect();
        named.dedup();
        for (name, ifindex) in named {
            shared.metrics().interface(&name, ifindex, None, true);
        }
        let mut follower = follower;
        if let Some(follower) = &mut follower {
            follower.set_static(&statics);
            let listed = follower.next().await.context("listing network interfaces")?;
            follower.apply(listed, &mut tap, shared.metrics()).await;
        }
        // Started: from now on a stop unpins (unless kept attached); a failure before this
        // left what was pinned in place for the next agent.
        tap.started();
        ready.store(true, Ordering::Relaxed);
        let (control, commands) = Control::channel();
        Ok(LiveAgent {
            tap,
            workers: started,
            ended,
            shared,
            ready,
            watch_socket,
            control,
            commands,
            store,
            follower,
            pods,
            cri_socket: opts.cri_socket,
            keep_attached: opts.keep_attached,
        })
    }

    /// The control channel into this agent (valid while it runs).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Mirrors until `shutdown` completes, applying control commands as they come; then
    /// stops the workers (each drains its ring and waits for its copies), detaches and
    /// returns the summary.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<Summary> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut save = tokio::time::interval(crate::compare::SAVE_EVERY);
        let failed = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                Some((command, reply)) = self.commands.next() => {
                    let _ = reply.send(self.apply(command).await);
                }
                Some(i) = self.ended.recv() => break Some(i),
                event = next_link(&mut self.follower) => self.follow(event).await,
                _ = tick.tick() => self.sync_kernel_counters(),
                _ = save.tick(), if self.store.is_some() => self.save_results().await,
            }
        };
        self.ready.store(false, Ordering::Relaxed);
        // Every worker is told first: they drain their rings together, then wait for their
        // copies (see `work`).
        let threads: Vec<_> =
            std::mem::take(&mut self.workers).into_iter().map(Worker::stop).collect();
        let summaries = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| anyhow!("worker panicked"))?)
                .collect::<Vec<_>>()
        })
        .await?;
        self.save_results().await;
        let kernel = self.tap.counters()?;
        match self.keep_attached {
            true => self.tap.keep_attached(),
            false => self.tap.detach(),
        }
        if let Some(path) = self.watch_socket {
            let _ = std::fs::remove_file(path);
        }
        if let Some(i) = failed {
            let why = summaries.into_iter().nth(i).and_then(Result::err);
            return Err(why.unwrap_or_else(|| anyhow!("worker {i} stopped")));
        }
        let mut total: Option<Summary> = None;
        for summary in summaries {
            let summary = summary?;
            match &mut total {
                Some(total) => total.add_worker(&summary),
                None => total = Some(summary),
            }
        }
        let mut total = total.context("no worker")?;
        total.kernel = Some(kernel);
        Ok(total)
    }

    async fn apply(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Attach(iface) if self.tap.is_attached(&iface) => Ok(()),
            Command::Attach(iface) => self.tap.attach_interface(&iface),
            Command::Detach(iface) if self.tap.detach_interface(&iface) => Ok(()),
            Command::Detach(iface) => Err(anyhow!("{iface} is not attached")),
            Command::Replace(settings) => self.replace(settings).await,
            Command::Reload(reload) => {
                let Reload { tap, settings } = *reload;
                let tap = agent_tap(tap, self.workers.len());
                self.tap.reconfigure(&tap)?;
                if let Some(follower) = &mut self.follower {
                    // Named interfaces are the tap's: the follower lets go of them.
                    follower.set_static(&tap.interfaces);
                }
                self.follow_patterns(tap.follow)?;
                self.replace(Box::new(settings)).await
            }
        }
    }

    /// New mirroring settings to every worker.
    async fn replace(&self, settings: Box<MirrorSettings>) -> Result<()> {
        for worker in &self.workers {
            worker.control.send(Command::Replace(settings.clone())).await?;
        }
        Ok(())
    }

    /// Follows these patterns from now on: the links are listed again, so interfaces that
    /// match now are attached and those that no longer match detached.
    fn follow_patterns(&mut self, patterns: Option<InterfacePatterns>) -> Result<()> {
        match (&mut self.follower, patterns) {
            (Some(follower), patterns) => follower.set_patterns(patterns)?,
            (None, Some(patterns)) => {
                let follower = Follower::start(patterns, self.pods.clone(), cri(&self.cri_socket))
                    .context("watching network interfaces")?;
                self.follower = Some(follower);
            }
            (None, None) => {}
        }
        Ok(())
    }

    async fn follow(&mut self, event: std::io::Result<LinkEvent>) {
        let Some(follower) = &mut self.follower else { return };
        match event {
            Ok(event) => follower.apply(event, &mut self.tap, self.shared.metrics()).await,
            Err(e) => {
                // Interfaces attached stay; new ones are no longer followed.
                tracing::error!("link notifications: {e}; no longer following interfaces");
                self.follower = None;
            }
        }
    }

    /// Saves a copy of the comparison's results, off the main task (a failed save is said
    /// and the next one tried: the results in memory are whole).
    async fn save_results(&self) {
        let Some(store) = self.store.clone() else { return };
        let (results, ignore) = {
            let v = self.shared.verdicts().lock().expect("not poisoned");
            (v.results.clone(), v.added_ignore.clone())
        };
        let saved = tokio::task::spawn_blocking(move || store.save(&results, &ignore)).await;
        match saved {
            Ok(Err(e)) => tracing::warn!("saving the comparison's results: {e}"),
            Err(e) => tracing::warn!("saving the comparison's results: {e}"),
            Ok(Ok(())) => {}
        }
    }

    fn sync_kernel_counters(&self) {
        if let Some(k) = Taps::counters(&self.tap) {
            let fields: Vec<_> = k.fields().collect();
            self.shared.metrics().sync(0, Stage::Kernel, &fields);
        }
    }
}

/// The tap settings as the agent uses them, whatever it was given: both directions, one
/// ring per worker, its own sockets ignored.
fn agent_tap(tap: TapSettings, workers: usize) -> TapSettings {
    TapSettings {
        directions: Directions::BOTH,
        ignore_mark: OWN_MARK,
        rings: workers,
        // Only what the framers say they will not read: bodies measured, not kept.
        leave_out: true,
        ..tap
    }
}

/// The CRI client for the follower, if a socket is given.
fn cri(socket: &Option<PathBuf>) -> Option<crate::cri::CriPods> {
    socket.clone().map(crate::cri::CriPods::new)
}

/// The next link notification, if interfaces are followed (else never).
async fn next_link(follower: &mut Option<Follower>) -> std::io::Result<LinkEvent> {
    match follower {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// What a worker thread starts from.
struct WorkerStart {
    index: usize,
    ring: RingReader,
    settings: MirrorSettings,
    shared: Shared,
    publisher: Option<Publisher>,
    ended: mpsc::UnboundedSender<usize>,
    /// Passed once every worker drained its ring after the stop.
    drained: Arc<Barrier>,
}

/// A running worker: its thread, the channel its new settings go through, its stop signal.
struct Worker {
    control: Control,
    stop: oneshot::Sender<()>,
    thread: JoinHandle<Result<Summary>>,
}

impl Worker {
    /// Starts the worker's thread; returns once its ring is read (or says why not).
    async fn spawn(start: WorkerStart) -> Result<Worker> {
        let (control, commands) = Control::channel();
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("mirror-worker-{}", start.index))
            .spawn(move || {
                let (index, ended) = (start.index, start.ended.clone());
                let summary = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(work(start, commands, stopped, ready_tx)));
                let _ = ended.send(index);
                summary
            })?;
        if ready.await.is_ok() {
            return Ok(Worker { control, stop, thread });
        }
        // The worker ended before its ring was read: its error says why.
        match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("a worker did not start")),
        }
    }

    /// Tells the worker to stop; its thread ends with its summary.
    fn stop(self) -> JoinHandle<Result<Summary>> {
        let _ = self.stop.send(());
        self.thread
    }
}

/// A worker's life: its ring through its own pipeline until stopped; then the rest of the
/// ring, and the copies already queued get up to one timeout to finish. The workers wait for
/// each other between the two, so the queued copies are all of them, and the shared counters
/// in every worker's summary are final.
async fn work(
    start: WorkerStart,
    mut commands: Commands,
    stopped: oneshot::Receiver<()>,
    ready: oneshot::Sender<()>,
) -> Result<Summary> {
    let mut source = start.ring.into_source()?;
    let mut mirroring = Mirroring::worker(start.settings, &start.shared, start.index);
    if let Some(publisher) = start.publisher {
        mirroring.publish_to(publisher);
    }
    let _ = ready.send(());
    let stop = async {
        let _ = stopped.await;
    };
    let ran = run_controlled(&mut mirroring, &mut source, &mut NoTaps, &mut commands, stop).await;
    let mut batch = Vec::new();
    while source.drain_now(&mut batch) > 0 {
        mirroring.segments(&mut batch);
    }
    // Even a worker whose ring failed comes here: the others wait for it.
    start.drained.wait().await;
    ran?;
    mirroring.settle().await;
    Ok(mirroring.summary(None))
}

/// A worker attaches nothing: the main task owns the tap.
struct NoTaps;

impl Taps for NoTaps {
    fn attach_interface(&mut self, iface: &str) -> Result<()> {
        Err(anyhow!("{iface}: workers do not attach interfaces"))
    }

    fn detach_interface(&mut self, _iface: &str) -> bool {
        false
    }

    fn is_attached(&self, _iface: &str) -> bool {
        false
    }

    fn counters(&self) -> Option<KernelCounters> {
        None
    }
}

/// The comparison's API, when comparing.
fn settings_api(shared: &Shared, thresholds: &Option<mirror_compare::Thresholds>) -> Option<Api> {
    thresholds.map(|t| Api::new(shared.verdicts().clone(), shared.compare_rules().clone(), t))
}

/// Watching is an aid, not the job: without its socket the agent still mirrors.
fn serve_watchers(socket: &WatchSocket) -> Option<Publisher> {
    let path = &socket.path;
    Publisher::serve(socket)
        .inspect_err(|e| {
            tracing::warn!(
                "watch socket {}: {e}; `mirror dump --watch` will not work",
                path.display()
            )
        })
        .ok()
}
