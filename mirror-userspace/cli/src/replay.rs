//! `mirror replay -r FILE --shadow URL`: replay the HTTP requests of a capture file.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mirror_agent::replay::{replay, Progress, ReplayOptions, Speed};

use crate::run::MirrorArgs;

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// The pcap or pcapng file.
    #[arg(short = 'r')]
    read: PathBuf,
    /// Service ports of the capture (default: the lower port of each connection).
    #[arg(short = 'p', long = "port")]
    ports: Vec<u16>,
    /// Pace: a factor of the recorded pace (1 = as recorded, 2 = twice as fast) or `max`.
    #[arg(long, default_value = "max")]
    speed: Speed,
    /// Replay the file again and again until interrupted.
    #[arg(long = "loop")]
    repeat: bool,
    #[command(flatten)]
    mirror: MirrorArgs,
}

pub(crate) async fn run(args: ReplayArgs) -> Result<ExitCode> {
    let settings = match args.mirror.config().and_then(|c| c.mirror_settings()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mirror replay: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Err(e) = std::fs::metadata(&args.read) {
        eprintln!("mirror replay: -r {}: {e}", args.read.display());
        return Ok(ExitCode::from(2));
    }
    let opts = ReplayOptions {
        path: args.read,
        ports: args.ports,
        speed: args.speed,
        repeat: args.repeat,
        results: crate::signals::request_log(args.mirror.log_requests),
    };
    let stop = crate::signals::shutdown_signal()?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}")?);
    spinner.enable_steady_tick(Duration::from_millis(200));
    let progress = |p: Progress| {
        let text = format!("{} packets, {} requests, {} copies", p.packets, p.requests, p.copies);
        spinner.set_message(text);
    };
    let (summary, file) = replay(settings, &opts, progress, stop).await?;
    spinner.finish_and_clear();
    eprintln!(
        "mirror replay: {} packets read ({} not selected)\n{summary}",
        file.packets, file.skipped
    );
    Ok(ExitCode::SUCCESS)
}
