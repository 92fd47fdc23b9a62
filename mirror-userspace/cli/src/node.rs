//! `mirror status` and `mirror cleanup`: what the node agent left attached and pinned, read
//! from the pin directory (also when no agent runs), and its removal.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use mirror_tap::{hook_name, PinnedLinkEntry, DEFAULT_PIN_DIR};

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// The pin directory of the agent (`mirror run --pin`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin: PathBuf,
    /// A running agent's metrics address: its interfaces, kernel counters and shadows.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Args, Debug)]
pub(crate) struct CleanupArgs {
    /// The pin directory to remove (`mirror run --pin`).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin: PathBuf,
}

pub(crate) fn cleanup(args: CleanupArgs) -> Result<ExitCode> {
    // Described while they are still there.
    let links: Vec<String> = mirror_tap::pinned_links(&args.pin).iter().map(describe).collect();
    match mirror_tap::cleanup_pins(&args.pin) {
        Ok(()) => {
            println!("removed {} ({} pinned links)", args.pin.display(), links.len());
            for link in links {
                println!("  {link}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("mirror cleanup: {e:#}");
            Ok(ExitCode::from(1))
        }
    }
}

pub(crate) async fn status(args: StatusArgs) -> Result<ExitCode> {
    let links = mirror_tap::pinned_links(&args.pin);
    println!("pinned in {}: {} links", args.pin.display(), links.len());
    for link in &links {
        println!("  {}", describe(link));
        let ours = mirror_tap::open_pinned(&link.path).and_then(mirror_tap::tcx_link_info);
        if let (Some(iface), Ok(ours)) = (mirror_tap::interface_name(link.ifindex), ours) {
            match mirror_tap::hook_programs(&iface, link.hook) {
                Ok(programs) => println!("    {}", hook_order(&programs, ours.program_id)),
                Err(e) => println!("    {e:#}"),
            }
        }
    }
    if let Some(addr) = args.metrics {
        match crate::diff::http_get(addr, "/metrics").await {
            Ok((200, text)) => print_agent(&String::from_utf8_lossy(&text)),
            Ok((status, _)) => {
                eprintln!("mirror status: the agent at {addr} answered {status}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => {
                eprintln!("mirror status: the agent at {addr}: {e:#}");
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One pinned link: its interface (by index, with its name now), hook, link and program.
fn describe(link: &PinnedLinkEntry) -> String {
    let name = mirror_tap::interface_name(link.ifindex).unwrap_or_else(|| "(gone)".into());
    let hook = hook_name(link.hook);
    let info = mirror_tap::open_pinned(&link.path).and_then(mirror_tap::tcx_link_info);
    match info {
        Ok(i) if i.ifindex == 0 => {
            format!("{name} {hook}: link {} detached (interface gone)", i.id)
        }
        Ok(i) => format!(
            "{name} (index {}) {hook}: link {} program {}",
            link.ifindex, i.id, i.program_id
        ),
        Err(e) => format!("{name} {hook}: {}: {e}", link.path.display()),
    }
}

/// The programs on the hook in the order they run, ours (program `ours`) marked.
fn hook_order(programs: &[(u32, String)], ours: u32) -> String {
    let list: Vec<String> = programs
        .iter()
        .map(|(id, name)| match *id == ours {
            true => format!("[{name} {id}]"),
            false => format!("{name} {id}"),
        })
        .collect();
    let position = programs.iter().position(|(id, _)| *id == ours);
    match position {
        Some(p) => format!("TCX {}: ours runs {} of {}", list.join(" -> "), p + 1, programs.len()),
        None => format!("TCX {}: ours is not among them", list.join(" -> ")),
    }
}

/// The running agent's interfaces, kernel counters and shadows, from its metrics.
fn print_agent(metrics: &str) {
    let interfaces = samples(metrics, "mirror_interface_attached");
    println!("agent: {} interfaces attached", interfaces.len());
    for (labels, _) in &interfaces {
        let pod = match label(labels, "pod") {
            "" => String::new(),
            pod => format!(", pod {pod}"),
        };
        println!("  {} (index {}{pod})", label(labels, "interface"), label(labels, "ifindex"));
    }
    let kernel: Vec<String> = samples(metrics, "mirror_kernel_total")
        .iter()
        .map(|(l, v)| format!("{} {v}", label(l, "counter")))
        .collect();
    println!("kernel: {}", kernel.join(", "));
    let answers = samples(metrics, "mirror_shadow_requests_total");
    let drops = samples(metrics, "mirror_shadow_dropped_total");
    let shadows: std::collections::BTreeSet<&str> =
        answers.iter().map(|(l, _)| label(l, "shadow")).collect();
    for shadow in shadows {
        let of = |set: &[(Vec<(String, String)>, u64)], key: &str| -> Vec<String> {
            set.iter()
                .filter(|(l, v)| label(l, "shadow") == shadow && *v > 0)
                .map(|(l, v)| format!("{} {v}", label(l, key)))
                .collect()
        };
        let (answered, dropped) = (of(&answers, "class"), of(&drops, "reason"));
        let health = match (answered.is_empty(), dropped.is_empty()) {
            (_, true) => "healthy",
            (false, false) => "dropping some copies",
            (true, false) => "failing",
        };
        println!(
            "shadow {shadow}: {health}; answered: {}; dropped: {}",
            list_or_none(&answered),
            list_or_none(&dropped)
        );
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The samples of one family in a Prometheus text: each one's labels and value.
fn samples(text: &str, family: &str) -> Vec<(Vec<(String, String)>, u64)> {
    let prefix = format!("{family}{{");
    let parse = |line: &str| {
        let rest = line.strip_prefix(&prefix)?;
        let (labels, value) = rest.rsplit_once("} ")?;
        let labels = labels
            .split("\",")
            .filter_map(|pair| {
                let (k, v) = pair.split_once("=\"")?;
                Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
            })
            .collect();
        Some((labels, value.parse::<f64>().ok()? as u64))
    };
    text.lines().filter_map(parse).collect()
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
}
