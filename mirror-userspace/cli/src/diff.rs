//! `mirror diff report`: the comparison's verdict for CI, from running agents (`--agent`,
//! their admin addresses) and saved results (`--store`). Several sources are merged exactly
//! (counts add), so a cluster's verdict comes from all its nodes' agents at once.
use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mirror_compare::{EndpointReport, Percentiles, Report, Results, Thresholds};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args, Debug)]
pub(crate) struct DiffArgs {
    #[command(subcommand)]
    command: DiffCommand,
}

#[derive(Subcommand, Debug)]
enum DiffCommand {
    /// Print the verdict: per endpoint, the fields where the candidate differs beyond the
    /// noise, and latency regressions.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// An agent's admin address (`mirror run --admin ADDR`), repeatable: results merged.
    #[arg(long = "agent", value_name = "ADDR", required_unless_present = "stores")]
    agents: Vec<String>,
    /// Results saved by an agent (`--compare-store FILE`), repeatable: merged with the rest.
    #[arg(long = "store", value_name = "FILE")]
    stores: Vec<PathBuf>,
    /// Print the report as JSON (schema in the README).
    #[arg(long)]
    json: bool,
    /// Exit 1 when any endpoint has a reported field or a latency regression.
    #[arg(long)]
    fail_on_regression: bool,
    /// Diffy's relative threshold, percent (default 20).
    #[arg(long)]
    relative_pct: Option<f64>,
    /// Diffy's absolute threshold, percent of the requests (default 0.03).
    #[arg(long)]
    absolute_pct: Option<f64>,
    /// Latency regression: the candidate's median over the baseline's beyond this ratio
    /// (default 1.5)...
    #[arg(long)]
    latency_ratio: Option<f64>,
    /// ...and by more than this many milliseconds (default 10).
    #[arg(long)]
    latency_min_ms: Option<f64>,
}

pub(crate) async fn run(args: DiffArgs) -> Result<ExitCode> {
    let DiffCommand::Report(args) = args.command;
    let d = Thresholds::default();
    let thresholds = Thresholds {
        relative_pct: args.relative_pct.unwrap_or(d.relative_pct),
        absolute_pct: args.absolute_pct.unwrap_or(d.absolute_pct),
        latency_ratio: args.latency_ratio.unwrap_or(d.latency_ratio),
        latency_min_ms: args.latency_min_ms.unwrap_or(d.latency_min_ms),
    };
    let mut merged = Results::default();
    for agent in &args.agents {
        match fetch_results(agent).await {
            Ok(results) => merged.merge(&results),
            Err(e) => {
                eprintln!("mirror diff report: --agent {agent}: {e:#}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    for path in &args.stores {
        match mirror_compare::Store::new(path).load() {
            Ok(Some(saved)) => merged.merge(&saved.results),
            Ok(None) => {
                eprintln!("mirror diff report: --store {}: no such file", path.display());
                return Ok(ExitCode::from(2));
            }
            Err(e) => {
                eprintln!("mirror diff report: --store {e}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let report = merged.report(&thresholds);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if args.fail_on_regression && report.has_regression() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// GET /api/results from an agent's admin address.
async fn fetch_results(addr: &str) -> Result<Results> {
    let (status, body) = http_get(addr, "/api/results").await?;
    if status != 200 {
        bail!("answered {status}: is it comparing (--compare) and is this its --admin address?");
    }
    serde_json::from_slice(&body).context("reading the results")
}

/// `GET path` from an agent's HTTP endpoint (metrics or admin): the status and the body.
pub(crate) async fn http_get(
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display,
    path: &str,
) -> Result<(u16, Vec<u8>)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.context("connecting")?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let (len, parts) = mirror_http::Head::parse_response(&response)
        .ok()
        .flatten()
        .context("not an HTTP response")?;
    let head = parts.with_bytes(bytes::Bytes::copy_from_slice(&response[..len]));
    Ok((head.status().unwrap_or(0), response.split_off(len)))
}

/// The report as text: one block per endpoint with something to say, then the verdict.
fn text(report: &Report) -> String {
    let mut out = String::new();
    let mut regressed = 0;
    for e in &report.endpoints {
        let bad = e.regressed();
        regressed += usize::from(bad);
        let _ = writeln!(
            out,
            "{}: {} compared of {}, {} differing{}",
            e.endpoint,
            e.compared,
            e.requests,
            e.differing,
            if bad { "  REGRESSION" } else { "" }
        );
        endpoint_lines(&mut out, e);
    }
    let compared: u64 = report.endpoints.iter().map(|e| e.compared).sum();
    let _ = writeln!(
        out,
        "verdict: {regressed} of {} endpoints with regressions ({compared} requests compared{})",
        report.endpoints.len(),
        if report.untracked_requests > 0 {
            format!(", {} of untracked endpoints", report.untracked_requests)
        } else {
            String::new()
        }
    );
    out
}

fn endpoint_lines(out: &mut String, e: &EndpointReport) {
    for r in &e.regressions {
        let _ = writeln!(
            out,
            "  {} {}: candidate {}, noise {} ({:.1} % relative, {:.2} % of requests)",
            r.field,
            r.kind.name(),
            r.raw,
            r.noise,
            r.relative_pct,
            r.absolute_pct
        );
    }
    for r in &e.drift {
        let _ = writeln!(
            out,
            "  {} {}: only the primary differs (drift) {}",
            r.field,
            r.kind.name(),
            r.raw
        );
    }
    let ms = |p: &Percentiles| p.p50_ms.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let _ = writeln!(
        out,
        "  latency p50: candidate {}, secondary {}, primary {}{}",
        ms(&e.latency.candidate),
        ms(&e.latency.secondary),
        ms(&e.latency.primary),
        if e.latency.regression { "  (slower)" } else { "" }
    );
}
