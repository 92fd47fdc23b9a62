//! One copy at a time per connection, through hyper's pooled client (`limits.pipeline` 1).
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{response::Parts, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection},
        Client,
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::sync::{mpsc, Semaphore};

use mirror_http::{ClientResponse, Head};

use crate::{
    connect::{connect, OwnSockets, TrackedStream},
    DropReason, Job, Outcomes,
};

pub(crate) struct Dispatcher {
    client: Client<MarkingConnector, Full<Bytes>>,
    slots: Arc<Semaphore>,
    keep_body: usize,
    outcomes: Arc<Outcomes>,
}

impl Dispatcher {
    pub(crate) fn new(
        max_in_flight: usize,
        connector: MarkingConnector,
        keep_body: usize,
        outcomes: Outcomes,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let slots = Arc::new(Semaphore::new(max_in_flight));
        Self { client, slots, keep_body, outcomes: Arc::new(outcomes) }
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
            let keep_body = outcomes.keep_responses.then_some(self.keep_body);
            tokio::spawn(async move {
                let start = Instant::now();
                let sent = send(&client, job.request, keep_body);
                let sent = tokio::time::timeout(outcomes.timeout, sent);
                let (bytes, copy) = (job.bytes, &job.info);
                match sent.await {
                    Ok(Ok((status, response))) => {
                        outcomes.answered(bytes, copy, start, status, response)
                    }
                    Ok(Err(e)) => outcomes.failed(bytes, copy, DropReason::Error, &e),
                    Err(_) => outcomes.failed(bytes, copy, DropReason::Timeout, &"timed out"),
                }
                drop(slot);
            });
        }
    }
}

/// Sends one copy and reads the response to the end (so the connection is reused). With
/// `keep_body`, the response's head and body (up to that many bytes) are kept.
async fn send(
    client: &Client<MarkingConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    keep_body: Option<usize>,
) -> Result<(u16, Option<ClientResponse>), Box<dyn std::error::Error + Send + Sync>> {
    let response = client.request(request).await?;
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let Some(cap) = keep_body else {
        while let Some(frame) = body.frame().await {
            frame?;
        }
        return Ok((status, None));
    };
    let chunked = parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    let (mut kept, mut dropped) = (BytesMut::new(), 0u64);
    let mut keep = |data: &[u8]| {
        let room = cap.saturating_sub(kept.len()).min(data.len());
        kept.extend_from_slice(&data[..room]);
        dropped += (data.len() - room) as u64;
    };
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        // hyper hands over decoded data; the reader's bodies are as sent, so re-chunk.
        if chunked {
            keep(format!("{:x}\r\n", data.len()).as_bytes());
            keep(&data);
            keep(b"\r\n");
        } else {
            keep(&data);
        }
    }
    if chunked {
        keep(b"0\r\n\r\n");
    }
    let head = head_of(&parts).unwrap_or_else(|| status_only(status));
    Ok((status, Some(ClientResponse { head, body: kept.freeze(), body_dropped: dropped })))
}

/// The head hyper parsed, written out again and read by the project's own parser.
fn head_of(parts: &Parts) -> Option<Head> {
    let mut out = BytesMut::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.put_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    let (len, parts) = Head::parse_response(&out).ok()??;
    Some(parts.with_bytes(out.freeze().slice(..len)))
}

/// The head of a response known by its status alone (hyper's headers did not parse again).
fn status_only(status: u16) -> Head {
    let line = format!("HTTP/1.1 {status} \r\n\r\n");
    let (len, parts) =
        Head::parse_response(line.as_bytes()).ok().flatten().expect("a status line parses");
    parts.with_bytes(Bytes::from(line).slice(..len))
}

/// Connects to shadows with SO_MARK set and records the local addresses in use.
#[derive(Clone)]
pub(crate) struct MarkingConnector {
    pub(crate) mark: u32,
    pub(crate) own: OwnSockets,
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
