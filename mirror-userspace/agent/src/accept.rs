//! Accept loops that neither spin nor stop: an accept that fails for lack of resources (no
//! descriptors left, no memory) waits a little longer each time before trying again, while
//! errors that concern only the connection being accepted are skipped at once.
use std::{io, time::Duration};

const FIRST_WAIT: Duration = Duration::from_millis(10);
const LONGEST_WAIT: Duration = Duration::from_secs(1);

/// What an accept loop does between a failed accept and the next.
pub(crate) struct AcceptBackoff {
    what: &'static str,
    wait: Duration,
}

impl AcceptBackoff {
    /// `what` names the listener in the log.
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, wait: FIRST_WAIT }
    }

    pub(crate) fn accepted(&mut self) {
        self.wait = FIRST_WAIT;
    }

    /// Waits as long as `error` deserves before the next accept.
    pub(crate) async fn failed(&mut self, error: &io::Error) {
        if concerns_one_connection(error) {
            return;
        }
        tracing::warn!("{}: accept failed ({error}); retrying in {:?}", self.what, self.wait);
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(LONGEST_WAIT);
    }
}

/// Errors of the connection being accepted (the peer went away, a firewall said no), after
/// which the next accept can succeed at once.
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
        || matches!(error.raw_os_error(), Some(libc::EPROTO | libc::EPERM | libc::ENETDOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn resource_errors_wait_longer_each_time_and_reset_after_success() {
        let mut backoff = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            backoff.failed(&emfile).await;
        }
        // 10 + 20 + ... + 640 ms, then 1 s three times.
        assert_eq!(start.elapsed(), Duration::from_millis(1270 + 3000));
        backoff.accepted();
        let start = tokio::time::Instant::now();
        backoff.failed(&emfile).await;
        assert_eq!(start.elapsed(), FIRST_WAIT);
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        let start = tokio::time::Instant::now();
        backoff.failed(&aborted).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
