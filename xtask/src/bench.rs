//! `cargo xtask bench [NAME...]`: runs the benchmarks and writes their tables into
//! BENCHMARKS.md.
//!
//! Each benchmark writes a Markdown fragment (its tables) to `target/bench/NAME.md`; this task
//! stamps it with when, where and how it was measured and splices it into BENCHMARKS.md
//! between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. The prose around the markers
//! (method, findings) is written by hand and survives every run; the figures never are.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cargo, check, setup, workspace_root};

/// Every benchmark, in the order a full run takes them.
pub const NAMES: &[&str] = &[
    "extract",
    "compare",
    "userspace_path",
    "h2_calls",
    "kernel_cost",
    "agent_memory",
    "primary_path",
    "large_responses",
    "fidelity",
];

pub fn run(names: &[String]) -> Result<()> {
    let names: Vec<&str> = if names.is_empty() {
        NAMES.to_vec()
    } else {
        for n in names {
            if !NAMES.contains(&n.as_str()) {
                bail!("unknown benchmark `{n}` (one of: {})", NAMES.join(", "));
            }
        }
        names.iter().map(String::as_str).collect()
    };
    setup::ensure()?;
    setup::ensure_bench_tools()?;
    check(cargo().args(["build", "--locked", "--release", "-p", "mirror-cli"]))?;
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    for name in names {
        let fragment = out.join(format!("{name}.md"));
        let _ = std::fs::remove_file(&fragment);
        let command = run_one(name, &out)?;
        let table = std::fs::read_to_string(&fragment)
            .with_context(|| format!("benchmark {name} wrote no {}", fragment.display()))?;
        splice(&workspace_root().join("BENCHMARKS.md"), name, &stamp(&command, &table)?)?;
        copy_charts(&out, name)?;
        println!("xtask: BENCHMARKS.md, section {name}, updated");
    }
    Ok(())
}

/// Copies the charts a benchmark drew (`NAME-*.svg`) to `benchmarks/`, where BENCHMARKS.md
/// shows them.
fn copy_charts(out: &Path, name: &str) -> Result<()> {
    let dest = workspace_root().join("benchmarks");
    for (path, file) in charts(out, name)? {
        std::fs::create_dir_all(&dest)?;
        std::fs::copy(&path, dest.join(file))?;
    }
    Ok(())
}

/// The charts of benchmark `name` in `out` (`NAME-*.svg`): their paths and file names.
fn charts(out: &Path, name: &str) -> Result<Vec<(std::path::PathBuf, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("").to_owned();
        if file.starts_with(&format!("{name}-")) && file.ends_with(".svg") {
            found.push((path, file));
        }
    }
    Ok(found)
}

/// Runs one benchmark; returns the command a reader would type to repeat it.
fn run_one(name: &str, out: &Path) -> Result<String> {
    // criterion, one core; its estimates are read back from target/criterion.
    let criterion: Option<(&str, &[CriterionRow])> = match name {
        "extract" => Some((
            "mirror-http",
            &[
                ("small_get/10000", "small_get", 10_000.0, "M requests/s"),
                ("post_64k/128", "post_64k", 8_388_608.0, "GB/s"),
            ],
        )),
        "compare" => Some((
            "mirror-compare",
            &[
                ("json/1k", "three 1 KiB JSON answers", 1.0, "k comparisons/s"),
                ("json/64k", "three 64 KiB JSON answers", 1.0, "k comparisons/s"),
            ],
        )),
        _ => None,
    };
    if let Some((package, rows)) = criterion {
        check(cargo().args(["bench", "--locked", "-p", package, "--bench", name]))?;
        std::fs::write(out.join(format!("{name}.md")), criterion_table(name, rows)?)?;
        return Ok(format!("cargo bench -p {package} --bench {name}"));
    }
    let bin = workspace_root().join("target/release/mirror");
    // Old charts never pass for new ones.
    for (path, _) in charts(out, name)? {
        std::fs::remove_file(&path)?;
    }
    check(
        cargo()
            .args(["bench", "--locked", "-p", "mirror-tests", "--bench", name])
            .env("MIRROR_BIN", bin)
            .env("MIRROR_BENCH_OUT", out),
    )?;
    Ok(format!("MIRROR_BIN=target/release/mirror cargo bench -p mirror-tests --bench {name}"))
}

/// A criterion benchmark as reported: its id, its label, what one iteration processes, and
/// the unit of that throughput.
type CriterionRow = (&'static str, &'static str, f64, &'static str);

/// The criterion results of group `group`: mean and 95 % interval per benchmark.
fn criterion_table(group: &str, rows: &[CriterionRow]) -> Result<String> {
    let dir = workspace_root().join("target/criterion").join(group);
    let mut table = String::from(
        "| benchmark | time per iteration, mean (95 % CI) | throughput |\n|---|---|---|\n",
    );
    for &(id, label, per_iter, unit) in rows {
        let path = dir.join(id).join("new/estimates.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let mean = &v["mean"];
        let ns = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
        let (avg, lo, hi) = (
            ns(&mean["point_estimate"]),
            ns(&mean["confidence_interval"]["lower_bound"]),
            ns(&mean["confidence_interval"]["upper_bound"]),
        );
        // Items per ns are G items per second.
        let rate = per_iter / avg
            * match unit.chars().next() {
                Some('M') => 1e3,
                Some('k') => 1e6,
                _ => 1.0,
            };
        let time = if avg < 1e6 {
            format!("{:.1} µs ({:.1}-{:.1})", avg / 1e3, lo / 1e3, hi / 1e3)
        } else {
            format!("{:.3} ms ({:.3}-{:.3})", avg / 1e6, lo / 1e6, hi / 1e6)
        };
        table.push_str(&format!("| {label} | {time} | {rate:.2} {unit} |\n"));
    }
    Ok(table)
}

/// The fragment, preceded by when, where and how it was measured.
fn stamp(command: &str, table: &str) -> Result<String> {
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?;
    let kernel = output(Command::new("uname").arg("-r"))?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let rustc = output(Command::new("rustc").arg("--version"))?;
    Ok(format!(
        "_Recorded {date} on {cpus} x {cpu}, Linux {kernel}, {rustc}, by `cargo xtask bench` \
         running `{command}`._\n\n{}\n",
        table.trim_end()
    ))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Replaces what lies between the markers of `name` in `file` (or appends a section).
fn splice(file: &Path, name: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let new = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{open}\n{body}{}", &text[..a], &text[b..])
        }
        _ => format!("{}\n\n## {name}\n\n{open}\n{body}{close}\n", text.trim_end()),
    };
    std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_between_markers_and_keeps_the_prose() {
        let dir = std::env::temp_dir().join(format!("xtask-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("B.md");
        std::fs::write(&file, "intro\n<!-- bench:a -->\nold\n<!-- /bench:a -->\nprose\n").unwrap();
        splice(&file, "a", "new table\n").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text, "intro\n<!-- bench:a -->\nnew table\n<!-- /bench:a -->\nprose\n");
        splice(&file, "b", "other\n").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.ends_with("prose\n\n## b\n\n<!-- bench:b -->\nother\n<!-- /bench:b -->\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
