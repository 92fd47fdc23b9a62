//! `mirror dump`: tcpdump for the flows the tap sees, live or from a capture file, as
//! packet lines, HTTP lines (`--http`) or JSON lines (`--json`); writes pcap with `-w`.
use std::{
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::Args;
use mirror_agent::watch::WatchEvent;
use mirror_capture::{
    frame::Classifier,
    pcap::{PcapSink, PcapSource},
    ChunkMerger, Hook, Segment,
};
use mirror_flow::{Ended, FlowDriver, FlowSink, ReassemblyConfig};
use mirror_http::{extractor, HttpConfig, HttpConnection, HttpEvent};
use mirror_tap::{KernelCounters, Tap, TapSettings};

use crate::format::{
    endpoint, packet_json, HttpPrinter, LineStyle, PacketPrinter, PayloadStyle, TimeStyle,
};

mod filter;
use filter::Filter;

#[derive(Args, Debug)]
pub(crate) struct DumpArgs {
    /// Interface to capture on (repeatable). Live capture shows every TCP segment but pure
    /// ACKs (no payload, no SYN, FIN or RST), which the tap does not copy.
    #[arg(short = 'i', long = "interface")]
    interfaces: Vec<String>,
    /// Do not resolve names (never done; accepted for tcpdump compatibility).
    #[arg(short = 'n')]
    numeric: bool,
    /// Exit after this many packets (or HTTP messages with --http).
    #[arg(short = 'c')]
    count: Option<u64>,
    /// Bytes of each packet kept in -w files.
    #[arg(short = 's', default_value_t = 262144)]
    snaplen: u32,
    /// Print each packet in ASCII.
    #[arg(short = 'A')]
    ascii: bool,
    /// Print each packet in hex.
    #[arg(short = 'x')]
    hex: bool,
    /// Print each packet in hex and ASCII.
    #[arg(short = 'X')]
    hex_ascii: bool,
    /// Quiet: less protocol information.
    #[arg(short = 'q')]
    quiet: bool,
    /// Verbose: adds the IP length, interface index and hook of each packet. Not tcpdump's
    /// -v: the tap does not capture the IP header's TTL, id or checksum.
    #[arg(short = 'v')]
    verbose: bool,
    /// Absolute TCP sequence numbers.
    #[arg(short = 'S')]
    absolute: bool,
    /// Write packets to a pcap file instead of printing them.
    #[arg(short = 'w')]
    write: Option<PathBuf>,
    /// Read packets from a pcap or pcapng file.
    #[arg(short = 'r')]
    read: Option<PathBuf>,
    /// Direction: in (ingress), out (egress) or inout.
    #[arg(short = 'Q', value_parser = ["in", "out", "inout"], default_value = "inout")]
    direction: String,
    /// -t: no timestamps; -tt: seconds since the epoch.
    #[arg(short = 't', action = clap::ArgAction::Count)]
    time: u8,
    /// One line per HTTP request and response instead of per packet.
    #[arg(long)]
    http: bool,
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Service ports, to tell requests from responses (default: from the expression, else
    /// the lower port of a connection).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Watch what a running `mirror run` mirrors, through its unix socket, instead of
    /// capturing (no second program is attached).
    #[arg(long, num_args = 0..=1, default_missing_value = mirror_agent::watch::DEFAULT_SOCKET)]
    watch: Option<PathBuf>,
    /// Filter expression (tcpdump syntax).
    expression: Vec<String>,
}

/// What a run printed and matched, for tcpdump's closing counts.
#[derive(Default)]
struct Counts {
    captured: u64,
    matched: u64,
}

pub(crate) async fn run(args: DumpArgs) -> Result<ExitCode> {
    let filter = match Filter::parse(&args.expression) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mirror dump: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(path) = &args.watch {
        return watch(path, &filter, &args).await;
    }
    if args.read.is_none() && args.interfaces.is_empty() {
        eprintln!("mirror dump: give an interface (-i) or a file (-r)");
        return Ok(ExitCode::from(1));
    }
    let pushed: Vec<u16> = filter.ports().map(|p| p.into_iter().collect()).unwrap_or_default();
    let ports = if args.ports.is_empty() { pushed.clone() } else { args.ports.clone() };
    let classifier = Classifier::new(ports);
    let mut out = Output::new(&args)?;
    let mut counts = Counts::default();
    let mut dumper = Dumper {
        args: &args,
        filter: &filter,
        classifier: &classifier,
        out: &mut out,
        counts: &mut counts,
        merger: ChunkMerger::default(),
        error: None,
    };
    // Lines show a response's length, never its body: bodies are framed, not copied.
    let http = HttpConfig { response_bodies: false, ..HttpConfig::default() };
    let mut driver = FlowDriver::new(extractor(ReassemblyConfig::default(), http));
    let kernel = match &args.read {
        Some(path) => {
            let mut source = PcapSource::open(path, classifier.clone())?;
            let stop = std::future::pending::<()>();
            driver.run(&mut source, &mut dumper, stop, None).await.context("reading packets")?;
            None
        }
        None => {
            let hooks = match args.direction.as_str() {
                "in" => vec![Hook::Ingress],
                "out" => vec![Hook::Egress],
                _ => vec![Hook::Ingress, Hook::Egress],
            };
            // What the kernel can select: the expression's ports, else every port.
            let ports = if pushed.is_empty() { (1..=u16::MAX).collect() } else { pushed };
            let settings = TapSettings {
                interfaces: args.interfaces.clone(),
                hooks,
                ports,
                ..TapSettings::default()
            };
            let valid = match settings.interfaces.is_empty() {
                true => Err(anyhow::anyhow!("at least one interface is required (-i)")),
                false => settings.validate(),
            };
            if let Err(e) = valid {
                eprintln!("mirror dump: {e:#}");
                return Ok(ExitCode::from(1));
            }
            // Signals are handled from before the first attachment: Ctrl-C at any moment
            // detaches instead of killing the process with programs left attached.
            let stop = crate::signals::shutdown_signal()?;
            let mut tap = Tap::attach(&settings)?;
            eprintln!("mirror dump: listening on {}", args.interfaces.join(", "));
            let mut source = tap.segments()?;
            let ended = driver.run(&mut source, &mut dumper, stop, None).await?;
            if ended == Ended::Stopped(()) {
                // Interrupted: what was captured before the signal is still shown.
                let mut batch = Vec::new();
                while !dumper.is_done() && source.drain_now(&mut batch) > 0 {
                    driver.feed(&mut batch, &mut dumper);
                }
            }
            let kernel = tap.counters()?;
            tap.detach();
            Some(kernel)
        }
    };
    if args.http {
        // Messages still held (a response that ends with its connection).
        driver.finish(&mut dumper);
    }
    if let Some(e) = dumper.error.take() {
        return Err(e);
    }
    out.finish()?;
    print_counts(&counts, kernel);
    Ok(ExitCode::SUCCESS)
}

fn print_counts(counts: &Counts, kernel: Option<KernelCounters>) {
    eprintln!("{} packets captured", counts.captured);
    eprintln!("{} packets received by filter", counts.matched);
    if let Some(k) = kernel {
        eprintln!("{} packets dropped by kernel", k.get(mirror_tap::Counter::Lost));
    }
}

/// Where lines or packets go.
enum Output {
    Text {
        out: BufWriter<std::io::Stdout>,
        packets: PacketPrinter,
        http: HttpPrinter,
        style: LineStyle,
    },
    Pcap(PcapSink),
}

impl Output {
    fn new(args: &DumpArgs) -> Result<Output> {
        if let Some(path) = &args.write {
            return Ok(Output::Pcap(PcapSink::create(path, args.snaplen)?));
        }
        let payload = if args.hex_ascii {
            PayloadStyle::HexAscii
        } else if args.hex {
            PayloadStyle::Hex
        } else if args.ascii {
            PayloadStyle::Ascii
        } else {
            PayloadStyle::None
        };
        let time = TimeStyle::from_t_flags(args.time);
        let style = LineStyle {
            time,
            payload,
            quiet: args.quiet,
            verbose: args.verbose,
            absolute: args.absolute,
        };
        Ok(Output::Text {
            out: BufWriter::new(std::io::stdout()),
            packets: PacketPrinter::default(),
            http: HttpPrinter::default(),
            style,
        })
    }

    fn packet(&mut self, seg: &Segment, json: bool) -> Result<()> {
        match self {
            Output::Pcap(sink) => sink.write(seg),
            Output::Text { out, .. } if json => Ok(packet_json(seg, out)?),
            Output::Text { out, packets, style, .. } => Ok(packets.write(seg, style, out)?),
        }
    }

    fn http(&mut self, event: &HttpEvent, json: bool) -> Result<()> {
        match self {
            Output::Pcap(_) => Ok(()),
            Output::Text { out, http, style, .. } => Ok(http.write(event, style.time, json, out)?),
        }
    }

    fn flush(&mut self) -> Result<()> {
        if let Output::Text { out, .. } = self {
            out.flush()?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Output::Pcap(sink) => sink.finish(),
            Output::Text { mut out, .. } => Ok(out.flush()?),
        }
    }
}

/// The stages of a dump after capture: chunk merging, the filter, direction, and packet or
/// HTTP output (HTTP lines come from the flow table the segments are admitted to).
struct Dumper<'a> {
    args: &'a DumpArgs,
    filter: &'a Filter,
    classifier: &'a Classifier,
    out: &'a mut Output,
    counts: &'a mut Counts,
    merger: ChunkMerger,
    /// The first output error (a closed pipe): the dump stops there.
    error: Option<anyhow::Error>,
}

impl Dumper<'_> {
    fn shown(&mut self, written: Result<()>) {
        match written {
            Ok(()) => self.counts.captured += 1,
            Err(e) => self.error = Some(e),
        }
    }
}

impl FlowSink<HttpConnection> for Dumper<'_> {
    fn admit(&mut self, seg: Segment) -> Option<Segment> {
        let mut seg = self.merger.push(seg)?;
        if !self.filter.matches(&seg) {
            return None;
        }
        self.counts.matched += 1;
        if let Some(d) = self.classifier.direction(seg.src.port(), seg.dst.port()) {
            seg.direction = d;
        }
        if self.args.http {
            return Some(seg);
        }
        let written = self.out.packet(&seg, self.args.json);
        self.shown(written);
        None
    }

    fn event(&mut self, event: HttpEvent) {
        if !self.is_done() {
            let written = self.out.http(&event, self.args.json);
            self.shown(written);
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.error.get_or_insert(e);
        }
    }

    fn is_done(&self) -> bool {
        self.error.is_some() || self.counts.captured >= self.args.count.unwrap_or(u64::MAX)
    }
}

/// Prints the requests a running agent mirrors, read from its watch socket.
async fn watch(path: &std::path::Path, filter: &Filter, args: &DumpArgs) -> Result<ExitCode> {
    use tokio::io::AsyncBufReadExt;
    let stream = match tokio::net::UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "mirror dump: cannot watch {}: {e} (is `mirror run` running?)",
                path.display()
            );
            return Ok(ExitCode::from(1));
        }
    };
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let hello = lines.next_line().await?;
    let hello = hello.and_then(|l| serde_json::from_str::<WatchEvent>(&l).ok());
    if hello != Some(WatchEvent::Hello) {
        eprintln!("mirror dump: {} is not a mirror watch socket", path.display());
        return Ok(ExitCode::from(1));
    }
    eprintln!("mirror dump: watching {}", path.display());
    let stop = crate::signals::shutdown_signal()?;
    tokio::pin!(stop);
    let mut out = std::io::stdout().lock();
    let (mut shown, mut lost) = (0u64, 0u64);
    while shown < args.count.unwrap_or(u64::MAX) {
        let line = tokio::select! {
            _ = &mut stop => break,
            line = lines.next_line() => match line? { Some(l) => l, None => break },
        };
        let request = match serde_json::from_str::<WatchEvent>(&line) {
            Ok(WatchEvent::Mirrored(request)) => request,
            Ok(WatchEvent::Lost { lines }) => {
                lost += lines;
                continue;
            }
            // Lines this version does not know (a newer agent's) are skipped.
            Ok(WatchEvent::Hello) | Err(_) => continue,
        };
        if !filter.matches_addrs(request.client, request.server) {
            continue;
        }
        if args.json {
            writeln!(out, "{line}")?;
        } else {
            let r = &request;
            writeln!(
                out,
                "{}{} > {}{}: {}{} {} {} {} (head {}, body {}) mirrored to {}",
                crate::format::time(TimeStyle::from_t_flags(args.time), r.ts_ns),
                endpoint(r.client),
                endpoint(r.server),
                r.pod.as_deref().map(|p| format!(" (pod {p})")).unwrap_or_default(),
                r.stream.map(|s| format!("h2 stream {s} ")).unwrap_or_default(),
                r.method,
                r.host.as_deref().unwrap_or(""),
                r.target,
                r.version,
                r.head_bytes,
                r.body_bytes,
                r.shadows.join(", ")
            )?;
        }
        out.flush()?;
        shown += 1;
    }
    eprintln!("{shown} requests shown");
    eprintln!("{lost} requests lost by this watcher (it fell behind)");
    Ok(ExitCode::SUCCESS)
}
