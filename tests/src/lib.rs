//! Helpers for the integration tests: network namespaces shaped like a Kubernetes node,
//! real HTTP servers and clients inside them, and assembling captured streams.
//!
//! Every test builds its own topology with unique names and addresses and tears it down on
//! drop (also when the test panics), so tests run in parallel.
pub mod client;
pub mod frames;
pub mod netns;
pub mod server;
pub mod streams;
pub mod topology;

/// The `mirror` binary built by `cargo xtask test` (or `cargo build -p mirror-userspace`).
pub fn mirror_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MIRROR_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/mirror
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("mirror");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p mirror-userspace`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Integration tests need root (namespaces, BPF). Fail loudly rather than skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests must run as root"
    );
}
