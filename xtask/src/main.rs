//! Developer tasks: `cargo xtask setup | build | test | demo | bench | run -- ARGS`.
//!
//! `setup` installs the toolchain the kernel side needs (see the README): Debian's rustc-web
//! with its precompiled `core` for bpfel, LLVM 22 and bpf-linker built against it, plus the
//! tools the integration tests drive. Everything is skipped when already present.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod layers;
mod setup;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install (idempotently) the eBPF toolchain and the test tools.
    Setup,
    /// Build the agent (which builds and embeds the kernel program).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run setup if needed, then formatting and lint checks and every test.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check that the workspace's dependencies point down the pipeline.
    Layers,
    /// Self-contained demo in network namespaces.
    Demo,
    /// Benchmarks (never part of `test`); writes their tables into BENCHMARKS.md.
    Bench {
        /// Which to run (default: all): extract, userspace_path, kernel_cost, agent_memory,
        /// primary_path, fidelity.
        names: Vec<String>,
    },
    /// Build the agent's OCI image from scratch (deploy/image.sh): the release binary and
    /// its libraries, no base image.
    Image {
        /// The image's name.
        #[arg(default_value = "localhost/mirror:latest")]
        name: String,
    },
    /// Build and run the agent on this host (as root, or through sudo).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release),
        Task::Test { args } => test(&args),
        Task::Layers => layers::run(),
        Task::Demo => demo(),
        Task::Bench { names } => bench::run(&names),
        Task::Run { args } => run_agent(&args),
        Task::Image { name } => image(&name),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // What xtask builds, tests and benchmarks always carries the kernel program: a missing
    // BPF toolchain is an error here, not a build without it (see mirror-tap's build.rs).
    cmd.current_dir(workspace_root()).env("MIRROR_EBPF", "require");
    cmd
}

pub(crate) fn check(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    setup::ensure()?;
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "-p", "mirror-cli"]);
    if release {
        cmd.arg("--release");
    }
    check(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    setup::ensure()?;
    check(cargo().args(["fmt", "--all", "--check"]))?;
    layers::run()?;
    // The kernel crate is linted on its own: in a workspace-wide build, feature unification
    // gives its mirror-common dependency the `user` feature (and so std).
    let clippy = ["clippy", "--locked", "--all-targets"];
    let deny = ["--", "-D", "warnings"];
    check(cargo().args(clippy).args(["--workspace", "--exclude", "mirror-ebpf"]).args(deny))?;
    check(
        cargo()
            .args(["clippy", "--locked", "-p", "mirror-ebpf"])
            .args(["--config", "profile.dev.panic=\"abort\""])
            .args(deny),
    )?;
    // The integration tests drive the `mirror` binary too; cargo builds a package's binaries
    // only for that package's own integration tests, so build it first.
    check(cargo().args(["build", "--locked", "-p", "mirror-cli", "--bin", "mirror"]))?;
    let bin = workspace_root().join("target/debug/mirror");
    check(cargo().args(["test", "--locked", "--workspace"]).env("MIRROR_BIN", bin).args(args))
}

fn demo() -> Result<()> {
    build(true)?;
    let script = workspace_root().join("xtask/demo.sh");
    check(as_root("bash").arg(script).arg(workspace_root().join("target/release/mirror")))
}

fn image(name: &str) -> Result<()> {
    build(true)?;
    let script = workspace_root().join("deploy/image.sh");
    let bin = workspace_root().join("target/release/mirror");
    check(as_root("bash").arg(script).arg(bin).arg(name))
}

fn run_agent(args: &[String]) -> Result<()> {
    build(true)?;
    check(as_root(workspace_root().join("target/release/mirror")).args(args))
}

/// `program` as root: directly when we are root, through sudo otherwise (namespaces and BPF
/// programs need root; the build does not).
fn as_root(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if setup::is_root() {
        Command::new(program)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(program);
        sudo
    }
}
