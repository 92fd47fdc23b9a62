//! What the subcommands share: the shutdown signal and the request log.

use std::{fmt, io::Write, sync::Arc};

use mirror_shadow::{Answer, CopyInfo, DropReason, ResultSink};

/// Completes on SIGINT or SIGTERM.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// `--log-requests`: a line on stdout per copy its shadow answered, or that failed on the way.
struct RequestLog;

impl RequestLog {
    fn line(shadow: &str, copy: &CopyInfo, outcome: fmt::Arguments<'_>) {
        let label = copy.label.as_deref().unwrap_or("-");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "mirrored {label} -> {shadow}: {outcome}");
        let _ = out.flush();
    }
}

impl ResultSink for RequestLog {
    fn answered(&self, shadow: &str, copy: &CopyInfo, answer: &Answer) {
        let ms = answer.elapsed.as_secs_f64() * 1e3;
        match &answer.grpc {
            Some(g) => {
                let status = g.status.map_or("-".into(), |s| s.to_string());
                let (code, n) = (answer.status, g.messages);
                Self::line(
                    shadow,
                    copy,
                    format_args!("{code} grpc-status {status} ({n} messages) in {ms:.1} ms"),
                )
            }
            None => Self::line(shadow, copy, format_args!("{} in {ms:.1} ms", answer.status)),
        }
    }

    fn dropped(&self, shadow: &str, copy: &CopyInfo, reason: DropReason, error: &dyn fmt::Display) {
        // Copies refused at the queue never left; only those that were sent are logged.
        match reason {
            DropReason::Timeout => Self::line(shadow, copy, format_args!("timed out")),
            DropReason::Error
            | DropReason::TlsUntrusted
            | DropReason::TlsExpired
            | DropReason::TlsNameMismatch
            | DropReason::TlsError
            | DropReason::Cancelled
            | DropReason::StreamBuffer => {
                Self::line(shadow, copy, format_args!("{}: {error}", reason.name()))
            }
            DropReason::QueueFull | DropReason::ByteBudget | DropReason::RateLimited => {}
        }
    }
}

/// The request log, if asked for.
pub(crate) fn request_log(enabled: bool) -> Option<Arc<dyn ResultSink>> {
    enabled.then(|| Arc::new(RequestLog) as Arc<dyn ResultSink>)
}
