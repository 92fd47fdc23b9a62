//! `mirror status` and `mirror cleanup`: what the node agent left attached and pinned, read
//! from the pin directory (also when no agent runs), and its removal.
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;
use mirror_tap::{Hook, PinnedLinkEntry, DEFAULT_PIN_DIR, PROG_EGRESS, PROG_INGRESS};

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
        if let Some(iface) = mirror_tap::interface_name(link.ifindex) {
            match mirror_tap::hook_programs(&iface, link.hook) {
                Ok(programs) => println!("    {}", hook_order(&programs, link)),
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

/// The programs on the hook in the order they run, ours marked.
fn hook_order(programs: &[(u32, String)], link: &PinnedLinkEntry) -> String {
    let ours = match link.hook {
        Hook::Ingress => PROG_INGRESS,
        Hook::Egress => PROG_EGRESS,
    };
    let list: Vec<String> = programs
        .iter()
        .map(|(id, name)| match name.as_str() == ours {
            true => format!("[{name} {id}]"),
            false => format!("{name} {id}"),
        })
        .collect();
    let position = programs.iter().position(|(_, n)| n == ours);
    match position {
        Some(p) => format!("TCX {}: ours runs {} of {}", list.join(" -> "), p + 1, programs.len()),
        None => format!("TCX {}: ours is not among them", list.join(" -> ")),
    }
}

fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => "ingress",
        Hook::Egress => "egress",
    }
}

/// The running agent's interfaces, kernel counters and shadows, from its metrics.
fn print_agent(metrics: &str) {
    let families = [
        ("mirror_interface_attached{", "interfaces"),
        ("mirror_kernel_total{", "kernel"),
        ("mirror_shadow_requests_total{", "shadow answers"),
        ("mirror_shadow_dropped_total{", "shadow drops"),
    ];
    for (prefix, title) in families {
        let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(prefix)).collect();
        println!("{title}:");
        for line in lines {
            println!("  {}", &line[prefix.len() - 1..]);
        }
    }
}
