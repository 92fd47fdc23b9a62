//! `cargo xtask layers`: the workspace's dependencies point one way, down the pipeline.
//!
//! Every crate has a layer; a crate may depend (normally or at build time) only on crates of
//! lower layers. The binary (`mirror-cli`) is the top, so no library depends on it, and it
//! alone may read the YAML schema (`serde-saphyr`). The test kit is only ever a
//! dev-dependency. `cargo xtask test` runs this check first.
use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cargo;

/// The pipeline's layers, bottom up. Crates on one layer must not depend on each other.
const LAYERS: &[&[&str]] = &[
    &["mirror-common"],
    &["mirror-ebpf", "mirror-capture"],
    &["mirror-tap", "mirror-flow"],
    &["mirror-http"],
    &["mirror-shadow", "mirror-testkit"],
    &["mirror-compare"],
    &["mirror-agent"],
    &["mirror-cli"],
    &["mirror-tests"],
];

/// Only dev-dependencies (and test-only crates) may name these.
const DEV_ONLY: &[&str] = &["mirror-testkit"];
/// Crates that are tests through and through (root-only integration tests and benches).
const TEST_ONLY: &[&str] = &["mirror-tests"];
/// External crates only the binary may use: the YAML schema's parser.
const BINARY_ONLY: &[(&str, &str)] = &[("serde-saphyr", "mirror-cli")];

/// One dependency edge as `cargo metadata` reports it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) dev: bool,
}

pub(crate) fn run() -> Result<()> {
    let out = cargo()
        .args(["metadata", "--locked", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata: Value = serde_json::from_slice(&out.stdout)?;
    let violations = check(&edges(&metadata));
    if !violations.is_empty() {
        bail!("dependencies against the pipeline's direction:\n  {}", violations.join("\n  "));
    }
    println!("xtask: layers: every dependency points down the pipeline");
    Ok(())
}

/// The workspace's edges (dependencies on other crates included, for the binary-only rule).
fn edges(metadata: &Value) -> Vec<Edge> {
    let mut edges = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let from = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            edges.push(Edge {
                from: from.to_owned(),
                to: dep["name"].as_str().unwrap_or_default().to_owned(),
                dev: dep["kind"].as_str() == Some("dev"),
            });
        }
    }
    edges
}

/// Every rule an edge breaks, as a sentence.
pub(crate) fn check(edges: &[Edge]) -> Vec<String> {
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, crates)| crates.iter().map(move |c| (*c, i)))
        .collect();
    let mut violations = Vec::new();
    for e in edges {
        if let Some((_, owner)) = BINARY_ONLY.iter().find(|(dep, _)| *dep == e.to) {
            if e.from != *owner && !e.dev {
                violations.push(format!("{} uses {} (only {owner} may)", e.from, e.to));
            }
        }
        let (Some(&from), Some(&to)) = (layer.get(e.from.as_str()), layer.get(e.to.as_str()))
        else {
            continue;
        };
        if e.dev || TEST_ONLY.contains(&e.from.as_str()) {
            continue; // tests may use anything
        }
        if DEV_ONLY.contains(&e.to.as_str()) {
            violations.push(format!("{} depends on {} (a dev-dependency only)", e.from, e.to));
        } else if to >= from {
            violations.push(format!("{} depends on {} (same or later layer)", e.from, e.to));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str, dev: bool) -> Edge {
        Edge { from: from.into(), to: to.into(), dev }
    }

    #[test]
    fn the_pipeline_direction_passes() {
        let edges = [
            edge("mirror-flow", "mirror-capture", false),
            edge("mirror-http", "mirror-flow", false),
            edge("mirror-http", "mirror-testkit", true),
            edge("mirror-cli", "serde-saphyr", false),
            edge("mirror-agent", "tokio", false),
            edge("mirror-tests", "mirror-testkit", false),
        ];
        assert!(check(&edges).is_empty());
    }

    #[test]
    fn later_stages_the_binary_the_schema_and_the_test_kit_fail() {
        let cases = [
            edge("mirror-flow", "mirror-http", false),
            edge("mirror-agent", "mirror-cli", false),
            edge("mirror-tap", "mirror-flow", false),
            edge("mirror-shadow", "serde-saphyr", false),
            edge("mirror-agent", "mirror-testkit", false),
        ];
        for case in cases {
            assert_eq!(check(std::slice::from_ref(&case)).len(), 1, "{case:?}");
        }
    }
}
