//! Builds the kernel tap (`mirror-ebpf`) for `bpfel-unknown-none` and puts the object in
//! `OUT_DIR`, so the loader always embeds the program built from the current sources.
//!
//! The kernel crate is compiled by Debian's rustc (`/usr/bin/rustc`, from `rustc-web`, whose
//! sysroot carries a precompiled `core` for bpfel) and linked by `bpf-linker`; `cargo xtask
//! setup` installs both (see the README's Toolchain section).
//!
//! Without that toolchain the object is left empty, with a cargo warning, so everything that
//! does not touch the kernel still builds and tests with plain `cargo test`; such a build's
//! `Tap::attach` refuses to run. Switches (environment variables):
//! - `MIRROR_EBPF=skip`: never build the kernel program;
//! - `MIRROR_EBPF=require`: fail when the toolchain is missing (`cargo xtask` sets it, so
//!   what it builds, tests and benchmarks always carries the program);
//! - `MIRROR_EBPF_RUSTC`: Debian's rustc, if not at `/usr/bin/rustc`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const TARGET: &str = "bpfel-unknown-none";
const OBJECT: &str = "mirror-tap.o";

fn main() -> Result<()> {
    for var in ["MIRROR_EBPF", "MIRROR_EBPF_RUSTC", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mode = env::var("MIRROR_EBPF").unwrap_or_default();
    if !matches!(mode.as_str(), "" | "auto" | "skip" | "require") {
        bail!("MIRROR_EBPF={mode:?}: expected auto, skip or require");
    }
    if mode == "skip" {
        return skip(&out_dir, "MIRROR_EBPF=skip");
    }
    let rustc = PathBuf::from(env::var("MIRROR_EBPF_RUSTC").unwrap_or(DEBIAN_RUSTC.into()));
    let toolchain = match (rustc.is_file(), find_bpf_linker()) {
        (true, Some(linker)) => Ok(linker),
        (false, _) => Err(format!("{} (Debian rustc-web) is missing", rustc.display())),
        (true, None) => Err("bpf-linker is not on PATH".to_owned()),
    };
    match toolchain {
        Ok(linker) => build(&rustc, &linker, &out_dir),
        Err(why) if mode == "require" => bail!("{why}: run `cargo xtask setup` first"),
        Err(why) => skip(&out_dir, &why),
    }
}

/// Embeds an empty object: the crate builds, and attaching says why it cannot. The
/// directories the tools would be installed to are watched, so the first build after
/// `cargo xtask setup` builds the program.
fn skip(out_dir: &Path, why: &str) -> Result<()> {
    println!("cargo:warning=mirror-tap: no kernel program in this build ({why})");
    let rustc = env::var("MIRROR_EBPF_RUSTC").unwrap_or(DEBIAN_RUSTC.into());
    let tool_dirs = Path::new(&rustc).parent().into_iter().map(Path::to_path_buf);
    for dir in tool_dirs.chain(cargo_bin_dirs()).filter(|d| d.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    std::fs::write(out_dir.join(OBJECT), []).context("writing the empty object")?;
    Ok(())
}

fn build(rustc: &Path, linker: &Path, out_dir: &Path) -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../..");
    let ebpf_dir = root.join("mirror-ebpf");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        root.join("mirror-common/src"),
        root.join("mirror-common/Cargo.toml"),
        root.join("Cargo.lock"),
        // A new compiler or linker (a package upgrade, a reinstalled bpf-linker) rebuilds it.
        rustc.to_path_buf(),
        linker.to_path_buf(),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The outer build's variables would leak into the inner one (clippy and coverage set
    // RUSTC_WRAPPER and friends; CARGO_* describe the outer package).
    for (key, _) in env::vars() {
        let outer = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key.starts_with("RUSTDOC");
        if outer {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(&ebpf_dir)
        .env("RUSTC", rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--config")
        .arg(format!("target.{TARGET}.linker=\"{}\"", linker.display()))
        .args(["--config", "profile.release.panic=\"abort\""])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd.status().context("running cargo for mirror-ebpf")?;
    if !status.success() {
        bail!("building mirror-ebpf failed ({status})");
    }
    let object = target_dir.join(TARGET).join("release").join("mirror-tap");
    std::fs::copy(&object, out_dir.join(OBJECT))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

fn find_bpf_linker() -> Option<PathBuf> {
    let path: Vec<PathBuf> =
        env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    path.into_iter().chain(cargo_bin_dirs()).map(|d| d.join("bpf-linker")).find(|p| p.is_file())
}

/// Where `cargo install` puts bpf-linker.
fn cargo_bin_dirs() -> impl Iterator<Item = PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin"));
    let home = env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    cargo_home.into_iter().chain(home)
}
