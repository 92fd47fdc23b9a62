//! `mirror replay`: the requests of a capture file through the same reassembly, framing,
//! selection, rewrite and replay as `mirror run` (GoReplay's file input, with real TCP
//! reassembly), paced as recorded, faster, or as fast as possible.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use mirror_capture::{
    frame::Classifier,
    pcap::{FileStats, PcapSource},
    CaptureSource,
};

use crate::pipeline::{MirrorSettings, Mirroring, Summary};

/// How fast the capture is replayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// Recorded pace divided by this factor (2.0 = twice as fast).
    Factor(f64),
    /// No pacing.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;

    fn from_str(s: &str) -> Result<Speed, String> {
        if s == "max" {
            return Ok(Speed::Max);
        }
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(Speed::Factor(x)),
            _ => Err(format!("{s:?} is not a positive factor or \"max\"")),
        }
    }
}

/// When a recorded segment is due: its offset from the first segment of the pass, divided by
/// the speed factor, after the wall-clock time that first segment was handed over.
struct Pacer {
    factor: f64,
    start: Option<(u64, tokio::time::Instant)>,
}

impl Pacer {
    fn due(&mut self, ts_ns: u64) -> tokio::time::Instant {
        let (file_start, wall_start) =
            *self.start.get_or_insert((ts_ns, tokio::time::Instant::now()));
        wall_start + Duration::from_nanos(ts_ns.saturating_sub(file_start)).div_f64(self.factor)
    }
}

/// How far a replay got, reported after every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub packets: u64,
    pub requests: u64,
    pub copies: u64,
}

pub struct ReplayOptions {
    pub path: PathBuf,
    /// Service ports (requests go to them); none: the lower port of each connection.
    pub ports: Vec<u16>,
    pub speed: Speed,
    /// Start over at the end of the file, until stopped.
    pub repeat: bool,
    /// Also told every copy's outcome (the request log).
    pub results: Option<std::sync::Arc<dyn mirror_shadow::ResultSink>>,
}

/// Replays until the file ends (or, with `repeat`, until `stop`); returns the summary.
/// `progress` is called after every batch.
pub async fn replay(
    settings: MirrorSettings,
    opts: &ReplayOptions,
    mut progress: impl FnMut(Progress),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(Summary, FileStats)> {
    let mut mirroring = Mirroring::start(settings, opts.results.clone());
    let mut totals = FileStats::default();
    let mut due = Vec::new();
    tokio::pin!(stop);
    'passes: loop {
        let mut source = PcapSource::open(&opts.path, Classifier::new(opts.ports.clone()))?;
        let mut batch = Vec::new();
        let mut pacer = match opts.speed {
            Speed::Factor(factor) => Some(Pacer { factor, start: None }),
            Speed::Max => None,
        };
        loop {
            let more = tokio::select! {
                _ = &mut stop => break 'passes,
                more = source.next_batch(&mut batch) => more?,
            };
            if !more {
                break;
            }
            let last_ts = batch.last().map_or(0, |s| s.ts_ns);
            // Paced: hand segments over as they fall due (a batch can span the whole file).
            while let Some(pacer) = pacer.as_mut() {
                let now = tokio::time::Instant::now();
                let n = batch.iter().take_while(|s| pacer.due(s.ts_ns) <= now).count();
                let Some(next) = batch.get(n).map(|s| pacer.due(s.ts_ns)) else {
                    break;
                };
                if n > 0 {
                    due.extend(batch.drain(..n));
                    let ts = due.last().map_or(0, |s| s.ts_ns);
                    mirroring.segments(&mut due);
                    mirroring.tick(ts);
                }
                tokio::select! {
                    _ = &mut stop => break 'passes,
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
            mirroring.segments(&mut batch);
            mirroring.tick(last_ts);
            // Reading a file never waits: let the shadow clients, the signal handler and
            // the progress display run between batches (one thread runs them all).
            tokio::task::yield_now().await;
            progress(Progress {
                packets: totals.packets + source.stats().packets,
                requests: mirroring.captured_requests(),
                copies: mirroring.mirrored(),
            });
        }
        mirroring.finish_input();
        let s = source.stats();
        totals.packets += s.packets;
        totals.skipped += s.skipped;
        if !opts.repeat {
            break;
        }
    }
    mirroring.settle().await;
    Ok((mirroring.summary(None), totals))
}
