//! One copy at a time per connection, through hyper's pooled client (`limits.pipeline` 1).
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::sync::{mpsc, Semaphore};

use crate::{
    connect::{connect, OwnSockets, TrackedStream},
    DropReason, Job, Outcomes,
};

pub(crate) struct Dispatcher {
    client: Client<MarkingConnector, Full<Bytes>>,
    slots: Arc<Semaphore>,
    outcomes: Arc<Outcomes>,
}

impl Dispatcher {
    pub(crate) fn new(
        max_in_flight: usize,
        mark: u32,
        own: OwnSockets,
        outcomes: Outcomes,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(MarkingConnector { mark, own });
        let slots = Arc::new(Semaphore::new(max_in_flight));
        Self { client, slots, outcomes: Arc::new(outcomes) }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Job>) {
        loop {
            // A slot first, then a copy: a copy taken from the queue before a slot is free
            // would wait outside it, one more than `queue_length`.
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let Some(job) = rx.recv().await else {
                return;
            };
            self.outcomes.dequeued(1);
            let (client, outcomes) = (self.client.clone(), self.outcomes.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let sent = tokio::time::timeout(outcomes.timeout, send(&client, job.request));
                let (bytes, copy) = (job.bytes, &job.info);
                match sent.await {
                    Ok(Ok(status)) => outcomes.answered(bytes, copy, start, status),
                    Ok(Err(e)) => outcomes.failed(bytes, copy, DropReason::Error, &e),
                    Err(_) => outcomes.failed(bytes, copy, DropReason::Timeout, &"timed out"),
                }
                drop(slot);
            });
        }
    }
}

/// Sends one copy and reads the response to the end (so the connection is reused).
async fn send(
    client: &Client<MarkingConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(status)
}

/// Connects to shadows with SO_MARK set and records the local addresses in use.
#[derive(Clone)]
struct MarkingConnector {
    mark: u32,
    own: OwnSockets,
}

impl tower_service::Service<Uri> for MarkingConnector {
    type Response = TokioIo<TrackedStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mark, own) = (self.mark, self.own.clone());
        Box::pin(async move { connect(&uri, mark, own).await.map(TokioIo::new) })
    }
}

impl Connection for TrackedStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
