//! `mirror replay`: the requests of a capture file through the same reassembly, framing,
//! selection, rewrite and replay as `mirror run` (GoReplay's file input, with real TCP
//! reassembly), paced as recorded, faster, or as fast as possible.
use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    agent::{Mirroring, Summary},
    capture::CaptureSource,
    config::MirrorConfig,
    packet::Classifier,
    pcap::{FileStats, PcapSource},
};

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

pub struct ReplayOptions {
    pub path: PathBuf,
    /// Service ports (requests go to them); none: the lower port of each connection.
    pub ports: Vec<u16>,
    pub speed: Speed,
    /// Start over at the end of the file, until stopped.
    pub repeat: bool,
    pub log_requests: bool,
}

/// Replays until the file ends (or, with `repeat`, until `stop`); returns the summary.
pub async fn replay(
    config: &MirrorConfig,
    opts: &ReplayOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(Summary, FileStats)> {
    let mut mirroring = Mirroring::start(config, opts.log_requests)?;
    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}")?);
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut totals = FileStats::default();
    tokio::pin!(stop);
    'passes: loop {
        let mut source = PcapSource::open(&opts.path, Classifier::new(opts.ports.clone()))?;
        let mut batch = Vec::new();
        let mut clock: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let more = tokio::select! {
                _ = &mut stop => break 'passes,
                more = source.next_batch(&mut batch) => more?,
            };
            if !more {
                break;
            }
            let last_ts = batch.last().map_or(0, |s| s.ts_ns);
            if let Speed::Factor(x) = opts.speed {
                // Each segment is due at its recorded offset from the first, divided by the
                // factor: hand over what is due, wait for the next one (a batch can span the
                // whole file).
                let mut i = 0;
                while i < batch.len() {
                    let ts = batch[i].ts_ns;
                    let (file_start, wall_start) =
                        *clock.get_or_insert((ts, tokio::time::Instant::now()));
                    let due =
                        wall_start + Duration::from_nanos(ts.saturating_sub(file_start)).div_f64(x);
                    if due > tokio::time::Instant::now() {
                        let mut ready: Vec<_> = batch.drain(..i).collect();
                        if let Some(s) = ready.last() {
                            let now_ts = s.ts_ns;
                            mirroring.segments(&mut ready);
                            mirroring.tick(now_ts);
                        }
                        i = 0;
                        tokio::select! {
                            _ = &mut stop => break 'passes,
                            _ = tokio::time::sleep_until(due) => {}
                        }
                    }
                    i += 1;
                }
            }
            mirroring.segments(&mut batch);
            mirroring.tick(last_ts);
            // Reading a file never waits: let the shadow clients, the signal handler and
            // the progress bar run between batches (one thread runs them all).
            tokio::task::yield_now().await;
            let s = source.stats();
            progress.set_message(format!(
                "{} packets, {} requests, {} copies",
                totals.packets + s.packets,
                mirroring.captured_requests(),
                mirroring.mirrored()
            ));
        }
        mirroring.finish_input();
        let s = source.stats();
        totals.packets += s.packets;
        totals.skipped += s.skipped;
        if !opts.repeat {
            break;
        }
    }
    progress.finish_and_clear();
    mirroring.settle().await;
    Ok((mirroring.summary(None), totals))
}
