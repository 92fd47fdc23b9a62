//! `mirror replay -r FILE --shadow URL`: replay the HTTP requests of a capture file.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use mirror::replay::{replay, ReplayOptions, Speed};

use super::run::MirrorArgs;

#[derive(Args, Debug)]
pub struct ReplayArgs {
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

pub async fn run(args: ReplayArgs) -> Result<ExitCode> {
    let config = match args.mirror.config().and_then(|c| c.validate_mirroring().map(|()| c)) {
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
        results: super::request_log(args.mirror.log_requests),
    };
    let stop = super::shutdown_signal()?;
    let (summary, file) = replay(&config, &opts, stop).await?;
    eprintln!(
        "mirror replay: {} packets read ({} not selected)\n{summary}",
        file.packets, file.skipped
    );
    Ok(ExitCode::SUCCESS)
}
