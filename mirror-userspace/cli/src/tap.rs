//! `mirror tap`: attach the kernel tap and print what it captures. The low-level view used to
//! check the capture on a host; `mirror dump` (tcpdump-style) and `mirror run` build on it.
use std::{io::Write, process::ExitCode};

use crate::format::flags;
use anyhow::{bail, Result};
use clap::Args;
use ipnet::IpNet;
use mirror_capture::{CaptureSource, Segment};
use mirror_tap::{AttachMode, Directions, Tap, TapSettings};

#[derive(Args, Debug)]
pub(crate) struct TapArgs {
    /// Interface to attach to (repeatable).
    #[arg(short = 'i', long = "interface", required = true)]
    interfaces: Vec<String>,
    /// Service port (repeatable).
    #[arg(short = 'p', long = "port", required = true)]
    ports: Vec<u16>,
    /// Restrict the service side to this network, e.g. 10.0.0.0/8 or fd00::/64 (repeatable).
    #[arg(long = "service-net")]
    service_nets: Vec<IpNet>,
    /// Which direction to capture.
    #[arg(long, value_enum, default_value = "both")]
    capture: CaptureArg,
    /// Ring buffer size in bytes (power of two).
    #[arg(long, default_value_t = mirror_common::DEFAULT_RING_BYTES)]
    ring_bytes: u32,
    /// Attach with TCX, netlink (clsact), or whatever the kernel supports.
    #[arg(long, value_enum, default_value = "auto")]
    attach: AttachArg,
    /// Exit after this many segments.
    #[arg(short = 'c', long)]
    count: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum CaptureArg {
    Requests,
    Responses,
    Both,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum AttachArg {
    Auto,
    Tcx,
    Netlink,
}

pub(crate) async fn run(args: TapArgs) -> Result<ExitCode> {
    let settings = TapSettings {
        interfaces: args.interfaces,
        ports: args.ports,
        service_nets: args.service_nets,
        directions: match args.capture {
            CaptureArg::Requests => Directions::REQUESTS,
            CaptureArg::Responses => Directions { requests: false, responses: true },
            CaptureArg::Both => Directions::BOTH,
        },
        ring_bytes: args.ring_bytes,
        attach_mode: match args.attach {
            AttachArg::Auto => AttachMode::Auto,
            AttachArg::Tcx => AttachMode::Tcx,
            AttachArg::Netlink => AttachMode::Netlink,
        },
        ..TapSettings::default()
    };
    if let Err(e) = settings.validate() {
        eprintln!("mirror tap: {e:#}");
        return Ok(ExitCode::from(2));
    }
    // Signals are handled from before the first attachment, so a SIGTERM at any point
    // after it still detaches instead of killing the process with filters left behind.
    let stop = crate::signals::shutdown_signal()?;
    let mut tap = Tap::attach(&settings)?;
    for (iface, _, hook, mode) in tap.attachments() {
        tracing::info!("attached to {iface} {hook:?} via {mode:?}");
    }
    // Readiness signal for scripts and tests: printed once everything is attached.
    eprintln!("mirror tap: ready");
    let mut source = tap.segments()?;
    tokio::pin!(stop);
    let mut batch = Vec::new();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    'outer: loop {
        tokio::select! {
            _ = &mut stop => break,
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                let mut out = stdout.lock();
                for seg in batch.drain(..) {
                    writeln!(out, "{}", SegmentLine(&seg))?;
                    printed += 1;
                    if args.count.is_some_and(|c| printed >= c) {
                        break 'outer;
                    }
                }
                out.flush()?;
            }
        }
    }
    let counters = tap.counters()?;
    tap.detach();
    eprintln!("mirror tap: {printed} segments printed; kernel: {counters}");
    if source.malformed() > 0 {
        bail!("{} malformed ring records", source.malformed());
    }
    Ok(ExitCode::SUCCESS)
}

/// `ts iface hook dir src > dst flags seq ack win len [chunk]`.
struct SegmentLine<'a>(&'a Segment);

impl std::fmt::Display for SegmentLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        write!(
            f,
            "{}.{:09} if{} {:?} {:?} {} > {} [{}] seq {} ack {} win {} length {}",
            s.ts_ns / 1_000_000_000,
            s.ts_ns % 1_000_000_000,
            s.ifindex,
            s.hook,
            s.direction,
            s.src,
            s.dst,
            flags(s.flags),
            s.seq,
            s.ack,
            s.window,
            s.segment_len
        )?;
        if s.payload.len() as u32 != s.segment_len {
            write!(f, " chunk {}+{}", s.chunk_offset, s.payload.len())?;
        }
        Ok(())
    }
}
