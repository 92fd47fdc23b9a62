//! `cargo xtask setup`: the toolchain recipe of the README, idempotent.
use std::process::Command;

use anyhow::{bail, Result};

use crate::check;

/// Debian packages: the kernel-side compiler (rustc-web and its bpfel `core`), LLVM 22 for
/// bpf-linker, and the tools the integration tests and the demo drive (nginx: the TLS
/// shadow; Chromium and its WebDriver: the comparison's web UI; bpftool: what is attached;
/// buildah, podman and runc: the agent's image, built from scratch and run as the DaemonSet
/// runs it).
const PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "curl",
    "python3",
    "tcpdump",
    "bpftool",
    "tshark",
    "nginx-light",
    "chromium",
    "chromium-driver",
    "buildah",
    "podman",
    "runc",
    "nghttp2-client",
    "nghttp2-server",
];
/// Tools from PyPI the tests drive: (command, exact requirement). kubernetes-validate checks
/// deploy/'s manifests against the schemas it ships with (no cluster, no network).
const PYPI_TOOLS: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate==1.37.0")];
/// Python modules from PyPI the tests import: (module, exact requirement). grpcio is the
/// real gRPC service and client of the HTTP/2 tests; h2 serves HTTP/2 in the demo
/// (xtask/demo_server.py, which the tests' h2c upgrades use too).
const PYPI_MODULES: &[(&str, &str)] = &[("grpc", "grpcio==1.76.0"), ("h2", "h2==4.2.0")];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn is_debian() -> bool {
    std::path::Path::new("/etc/debian_version").exists()
}

fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

/// bpf-linker on PATH or in cargo's bin directory (where `cargo install` puts it, and where
/// mirror-tap's build script looks too).
fn bpf_linker_ok() -> bool {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")));
    let candidates =
        std::iter::once("bpf-linker".into()).chain(cargo_home.map(|h| h.join("bin/bpf-linker")));
    candidates.into_iter().any(|bin: std::path::PathBuf| {
        let out = Command::new(bin).arg("--version").output();
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
    })
}

fn bpf_linker_install_command() -> String {
    format!(
        "LLVM_PREFIX={LLVM_PREFIX} LLVM_SYS_220_PREFIX={LLVM_PREFIX} cargo install \
         bpf-linker@{BPF_LINKER_VERSION} --locked --no-default-features --features llvm-22"
    )
}

/// Runs setup only if something is missing (cheap when everything is there).
pub fn ensure() -> Result<()> {
    if missing_packages(PACKAGES).is_empty() && bpf_linker_ok() && missing_pypi().is_empty() {
        return Ok(());
    }
    run()
}

/// The PyPI requirements whose command is not there (or not at the version).
fn missing_pypi() -> Vec<&'static str> {
    let installed = |(cmd, req): &(&str, &str)| {
        let version = req.rsplit("==").next().unwrap_or_default();
        let out = Command::new(cmd).arg("--version").output();
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(version))
    };
    let imported = |(module, req): &(&str, &str)| {
        let version = req.rsplit("==").next().unwrap_or_default();
        let script = format!("import {module}; print({module}.__version__)");
        let out = Command::new("python3").args(["-c", &script]).output();
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == version)
    };
    let tools = PYPI_TOOLS.iter().filter(|t| !installed(t));
    let modules = PYPI_MODULES.iter().filter(|m| !imported(m));
    tools.chain(modules).map(|(_, req)| *req).collect()
}

fn install_pypi() -> Result<()> {
    let missing = missing_pypi();
    if !missing.is_empty() {
        println!("setup: installing {} from PyPI", missing.join(" "));
        check(Command::new("python3").args(["-m", "pip", "install", "-q"]).args(&missing))?;
    }
    Ok(())
}

/// What setup will do, decided from what is missing and where it runs.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Nothing,
    /// Not root, or not Debian: the exact commands for the user to run.
    Manual(Vec<String>),
    Install {
        packages: Vec<&'static str>,
        linker: bool,
    },
}

fn plan(missing: Vec<&'static str>, linker_ok: bool, debian: bool, root: bool) -> Plan {
    if missing.is_empty() && linker_ok {
        return Plan::Nothing;
    }
    if !debian || !root {
        let mut commands = Vec::new();
        if !missing.is_empty() {
            commands.push("apt-get update".to_owned());
            commands.push(format!("apt-get install -y {}", missing.join(" ")));
        }
        if !linker_ok {
            commands.push(bpf_linker_install_command());
        }
        return Plan::Manual(commands);
    }
    Plan::Install { packages: missing, linker: !linker_ok }
}

pub fn run() -> Result<()> {
    match plan(missing_packages(PACKAGES), bpf_linker_ok(), is_debian(), is_root()) {
        Plan::Nothing => {
            install_pypi()?;
            println!("setup: everything is installed");
        }
        Plan::Manual(commands) => {
            eprintln!("setup needs root on Debian; run these commands:");
            for c in commands {
                eprintln!("  {c}");
            }
            bail!("setup incomplete (not root, or not Debian)");
        }
        Plan::Install { packages, linker } => {
            if !packages.is_empty() {
                println!("setup: installing {}", packages.join(" "));
                check(Command::new("apt-get").arg("update").arg("-q"))?;
                apt_install(&packages)?;
            }
            if linker {
                install_bpf_linker()?;
            }
            install_pypi()?;
            println!("setup: done");
        }
    }
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
    check(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_220_PREFIX", LLVM_PREFIX)
            .args(["install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"]),
    )
}

fn apt_install(packages: &[&str]) -> Result<()> {
    check(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(packages),
    )
}

/// Tools only the benchmarks drive (never needed by the tests): wrk from Debian, and oha
/// (crates.io) for load at a fixed request rate over keep-alive connections (h2load's
/// `--rate` fixes the rate of new connections instead).
const BENCH_PACKAGES: &[&str] = &["wrk"];
const OHA_VERSION: &str = "1.16.0";

/// Installs the benchmark tools when missing (root on Debian).
pub fn ensure_bench_tools() -> Result<()> {
    let missing = missing_packages(BENCH_PACKAGES);
    if !missing.is_empty() {
        if !is_debian() || !is_root() {
            bail!("benchmarks need: apt-get install -y {}", missing.join(" "));
        }
        apt_install(&missing)?;
    }
    let oha = Command::new("oha").arg("--version").output();
    if !matches!(oha, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(OHA_VERSION)) {
        println!("setup: installing oha {OHA_VERSION}");
        check(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            &format!("oha@{OHA_VERSION}"),
            "--locked",
        ]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_do_when_everything_is_installed() {
        for (debian, root) in [(true, true), (false, false)] {
            assert_eq!(plan(vec![], true, debian, root), Plan::Nothing);
        }
    }

    #[test]
    fn installs_only_what_is_missing() {
        assert_eq!(
            plan(vec!["tshark"], true, true, true),
            Plan::Install { packages: vec!["tshark"], linker: false }
        );
        assert_eq!(
            plan(vec![], false, true, true),
            Plan::Install { packages: vec![], linker: true }
        );
    }

    #[test]
    fn without_root_or_debian_prints_the_exact_commands() {
        let linker = bpf_linker_install_command();
        for (debian, root) in [(true, false), (false, true)] {
            assert_eq!(
                plan(vec!["curl", "tshark"], false, debian, root),
                Plan::Manual(vec![
                    "apt-get update".into(),
                    "apt-get install -y curl tshark".into(),
                    linker.clone(),
                ])
            );
        }
        assert_eq!(plan(vec![], false, false, false), Plan::Manual(vec![linker]));
        assert!(bpf_linker_install_command().contains("bpf-linker@0.13.0 --locked"));
    }
}
