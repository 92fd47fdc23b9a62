//! The control channel into a running agent: attach or detach an interface, replace the
//! settings, while segments keep flowing. Commands are applied between batches, on the
//! pipeline's own task, so nothing is locked on the way of a segment.
use std::{future::Future, time::Duration};

use anyhow::{anyhow, Result};
use mirror_capture::{CaptureSource, Segment};
use mirror_flow::{Ended, FlowSink, FlowTable};
use mirror_http::{HttpConnection, HttpEvent};
use mirror_tap::{KernelCounters, Tap};
use tokio::sync::{mpsc, oneshot};

use crate::{
    metrics::Stage,
    pipeline::{Dispatch, MirrorSettings, Mirroring},
};

/// A change to a running agent.
#[derive(Debug)]
pub enum Command {
    /// Start capturing on this interface too.
    Attach(String),
    /// Stop capturing on this interface.
    Detach(String),
    /// Put these settings in force (see [`Mirroring::replace`]).
    Replace(Box<MirrorSettings>),
    /// A new configuration for a live agent: where to capture (ports, networks, interfaces,
    /// patterns; see [`mirror_tap::Tap::reconfigure`]) and how to mirror. All of it or
    /// none: an error leaves the running configuration in force.
    Reload(Box<Reload>),
}

/// What [`Command::Reload`] puts in force.
#[derive(Debug)]
pub struct Reload {
    pub tap: mirror_tap::TapSettings,
    pub settings: MirrorSettings,
}

type Request = (Command, oneshot::Sender<Result<()>>);

/// The receiving side of the control channel, read by [`run_controlled`].
pub struct Commands(mpsc::Receiver<Request>);

impl Commands {
    /// The next command and where its result goes; None once every sender is gone.
    pub(crate) async fn next(&mut self) -> Option<(Command, oneshot::Sender<Result<()>>)> {
        self.0.recv().await
    }
}

/// The sending side of the control channel: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
}

impl Control {
    /// A channel; the receiving side goes to [`run_controlled`].
    pub fn channel() -> (Control, Commands) {
        let (tx, rx) = mpsc::channel(16);
        (Control { tx }, Commands(rx))
    }

    /// Sends `command` and waits until the agent applied it (or says why it could not). It
    /// applies between two batches: segments captured just before it but not yet read from
    /// the ring may already go through the new settings.
    pub async fn send(&self, command: Command) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((command, reply)).await.map_err(|_| anyhow!("the agent has stopped"))?;
        answer.await.map_err(|_| anyhow!("the agent has stopped"))?
    }
}

/// Where the agent's segments are captured: what [`Command::Attach`] and
/// [`Command::Detach`] act on, and the kernel's counters.
pub trait Taps {
    fn attach_interface(&mut self, iface: &str) -> Result<()>;
    /// False if `iface` was not attached.
    fn detach_interface(&mut self, iface: &str) -> bool;
    fn is_attached(&self, iface: &str) -> bool;
    fn counters(&self) -> Option<KernelCounters> {
        None
    }
}

impl Taps for Tap {
    fn attach_interface(&mut self, iface: &str) -> Result<()> {
        Tap::attach_interface(self, iface)
    }

    fn detach_interface(&mut self, iface: &str) -> bool {
        Tap::detach_interface(self, iface)
    }

    fn is_attached(&self, iface: &str) -> bool {
        Tap::is_attached(self, iface)
    }

    fn counters(&self) -> Option<KernelCounters> {
        Tap::counters(self).inspect_err(|e| tracing::debug!("kernel counters: {e:#}")).ok()
    }
}

/// The agent's loop: segments from `source` through the pipeline, a tick every second,
/// commands applied as they come, until `shutdown` completes or the source ends.
pub async fn run_controlled(
    mirroring: &mut Mirroring,
    source: &mut impl CaptureSource,
    taps: &mut impl Taps,
    commands: &mut Commands,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let Mirroring { driver, dispatch, .. } = mirroring;
        let mut sink = ControlledSink { dispatch, taps: &*taps };
        let stop = async {
            tokio::select! {
                _ = &mut shutdown => None,
                Some(request) = commands.0.recv() => Some(request),
            }
        };
        let every_second = Some(Duration::from_secs(1));
        match driver.run(source, &mut sink, stop, every_second).await? {
            Ended::Stopped(Some((command, reply))) => {
                let _ = reply.send(apply(command, mirroring, taps));
            }
            Ended::Stopped(None) | Ended::Source | Ended::Sink => return Ok(()),
        }
    }
}

fn apply(command: Command, mirroring: &mut Mirroring, taps: &mut impl Taps) -> Result<()> {
    match command {
        Command::Attach(iface) if taps.is_attached(&iface) => Ok(()),
        Command::Attach(iface) => taps.attach_interface(&iface),
        Command::Detach(iface) if taps.detach_interface(&iface) => Ok(()),
        Command::Detach(iface) => Err(anyhow!("{iface} is not attached")),
        Command::Replace(settings) => {
            mirroring.replace(*settings);
            Ok(())
        }
        Command::Reload(_) => Err(anyhow!("only a live agent reloads its configuration")),
    }
}

/// The pipeline's sink, with the kernel counters synced into the metrics every tick.
struct ControlledSink<'a, T> {
    dispatch: &'a mut Dispatch,
    taps: &'a T,
}

impl<T: Taps> FlowSink<HttpConnection> for ControlledSink<'_, T> {
    fn admit(&mut self, segment: Segment) -> Option<Segment> {
        self.dispatch.admit(segment)
    }

    fn event(&mut self, event: HttpEvent) {
        self.dispatch.event(event);
    }

    fn tick(&mut self, table: &FlowTable<HttpConnection>) {
        self.dispatch.tick(table);
        if let Some(k) = self.taps.counters() {
            let fields: Vec<_> = k.fields().collect();
            self.dispatch.stages.metrics.sync(0, Stage::Kernel, &fields);
        }
    }
}
