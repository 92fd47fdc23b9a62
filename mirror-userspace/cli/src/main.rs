//! `mirror`: the command-line front end of the agent.
// The binary is where printing belongs: every line the user sees is written here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod config;
mod diff;
mod dump;
mod format;
mod node;
mod replay;
mod run;
mod signals;
mod tap;

#[derive(Parser)]
#[command(name = "mirror", version, about = "Transparent eBPF traffic mirror")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mirror live requests of a service to shadow services until SIGINT/SIGTERM.
    Run(Box<run::RunArgs>),
    /// Replay the HTTP requests of a capture file to shadow services.
    Replay(Box<replay::ReplayArgs>),
    /// tcpdump for the mirrored flows: packet, HTTP or JSON lines, pcap in and out.
    Dump(Box<dump::DumpArgs>),
    /// Attach the tap and print the captured segments (one line each) until interrupted.
    Tap(tap::TapArgs),
    /// The comparison's verdict (`mirror diff report`), from running agents.
    Diff(diff::DiffArgs),
    /// What is attached and pinned (`mirror run --pin`), and a running agent's state.
    Status(node::StatusArgs),
    /// Detach and remove everything `mirror run --pin` pinned (refused while it runs).
    Cleanup(node::CleanupArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap uses 2 for usage errors, 0 for --help/--version.
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mirror: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The main task is light (control, metrics, watchers, and every command but `run`);
    // `mirror run` mirrors on worker threads of its own (`--threads`).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(run::run(*args)),
        Command::Tap(args) => rt.block_on(tap::run(args)),
        Command::Dump(args) => rt.block_on(dump::run(*args)),
        Command::Replay(args) => rt.block_on(replay::run(*args)),
        Command::Diff(args) => rt.block_on(diff::run(args)),
        Command::Status(args) => rt.block_on(node::status(args)),
        Command::Cleanup(args) => node::cleanup(args),
    }
}
