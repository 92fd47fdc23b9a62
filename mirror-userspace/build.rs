//! Builds the kernel tap (`mirror-ebpf`) for `bpfel-unknown-none` and puts the object in
//! `OUT_DIR`, so the `mirror` binary always embeds the program built from the current sources.
//!
//! The kernel crate is compiled by Debian's rustc (`/usr/bin/rustc`, from `rustc-web`, whose
//! sysroot carries a precompiled `core` for bpfel) and linked by `bpf-linker`; `cargo xtask
//! setup` installs both. See ../shared toolchain notes in the README.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const TARGET: &str = "bpfel-unknown-none";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("workspace root")?;
    let ebpf_dir = root.join("mirror-ebpf");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        root.join("mirror-common/src"),
        root.join("mirror-common/Cargo.toml"),
        root.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let linker = find_bpf_linker()?;
    if !Path::new(DEBIAN_RUSTC).exists() {
        bail!("{DEBIAN_RUSTC} (Debian rustc-web) is missing: run `cargo xtask setup` first");
    }
    // A new compiler or linker (a package upgrade, a reinstalled bpf-linker) rebuilds it too.
    for tool in [Path::new(DEBIAN_RUSTC), linker.as_path()] {
        println!("cargo:rerun-if-changed={}", tool.display());
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
        .env("RUSTC", DEBIAN_RUSTC)
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
    std::fs::copy(&object, out_dir.join("mirror-tap.o"))
        .with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}

fn find_bpf_linker() -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
        .context("bpf-linker not found: run `cargo xtask setup` first")
}
