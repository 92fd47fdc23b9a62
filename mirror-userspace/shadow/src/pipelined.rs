//! Copies to one shadow over a few persistent HTTP/1.1 connections, pipelined.
//!
//! Why not hyper: its client sends one request per connection at a time and rebuilds each
//! request from parsed parts, so every copy costs one `write` and one TCP segment through the
//! whole stack (on a node, through the veth into the shadow's socket as well), about a third
//! of the agent's CPU per copy (BENCHMARKS.md), and the copy is not the captured bytes. Here a
//! connection takes every copy waiting in the queue, up to its depth, and writes their bytes
//! at once; responses come back in order and are matched to copies by position, framed by
//! mirror-http's [`ResponseReader`] (the capture side's rules).
//!
//! Each connection is one task: it takes copies while fewer than `depth` are unanswered,
//! writes, and reads responses, all in one `select!` so a shadow that is slow to read never
//! stops us reading its responses. A copy that closes the connection (HTTP/1.0,
//! `Connection: close`, an upgrade) is the last one written on it. When the oldest unanswered
//! copy times out, or the connection fails, every unanswered copy on it is counted (timeout,
//! error) and the connection is replaced. Idempotent copies a connection closed on unanswered
//! are sent again, up to [`MAX_ATTEMPTS`] times in all (RFC 9112 §9.3.1), when the connection
//! was reused or pipelined (a shadow closing an idle connection as a copy goes out, or one
//! closing after its first response); a single copy on a fresh connection that fails is the
//! shadow failing that copy, and is counted.
//!
//! Fallback: HTTP/1.1 servers must accept pipelined requests, but some close after the first
//! response, answer out of order or choke. A connection that closes, resets or reads what is
//! no response while copies are pipelined on it (its oldest unanswered copy was written behind
//! another, or more than one is unanswered), or that stops answering after answering some,
//! turns pipelining off for the shadow: depth 1, and as many connections as `max_in_flight`. A response carries nothing that names its
//! request, so a shadow answering out of order is only seen when the framing breaks (a HEAD
//! answered where a GET was expected, or the reverse, leaves bytes that are no response).
use std::{
    collections::VecDeque,
    fmt, io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{mpsc, Mutex, Notify},
    task::JoinSet,
};

use crate::{
    connect::{Connected, Endpoint, ShadowStream},
    tls, DropReason, Job, Limits, Outcomes,
};
use mirror_http::{ClientResponse, ReadError, ResponseReader};

/// Times a copy is written at most, when connections close before answering it.
const MAX_ATTEMPTS: u8 = 3;

/// What every connection of one shadow shares.
pub(crate) struct Pipelines {
    /// Where connections go (an error when TLS could not be set up: every copy fails).
    endpoint: io::Result<Endpoint>,
    /// Copies unanswered per connection at most: `limits.pipeline`, 1 after a fallback.
    depth: AtomicUsize,
    max_in_flight: usize,
    /// Body bytes kept per response for the result sink (0: heads only).
    keep_body: usize,
    outcomes: Outcomes,
    queue: Mutex<mpsc::Receiver<Job>>,
    /// Told when pipelining is turned off: the same copies in flight need more connections.
    fell_back: Notify,
}

impl Pipelines {
    pub(crate) fn new(
        endpoint: io::Result<Endpoint>,
        limits: &Limits,
        keep_body: usize,
        outcomes: Outcomes,
        queue: mpsc::Receiver<Job>,
    ) -> Self {
        Pipelines {
            endpoint,
            depth: AtomicUsize::new(limits.pipeline.min(limits.max_in_flight)),
            max_in_flight: limits.max_in_flight,
            keep_body,
            outcomes,
            queue: Mutex::new(queue),
            fell_back: Notify::new(),
        }
    }

    fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Connections enough for `max_in_flight` copies unanswered in all.
    fn connections(&self) -> usize {
        self.max_in_flight.div_ceil(self.depth())
    }

    fn fall_back(&self, why: &dyn fmt::Display) {
        if self.depth.swap(1, Ordering::Relaxed) > 1 {
            self.outcomes.sink.pipelining_off(&self.outcomes.shadow, why);
            self.fell_back.notify_one();
        }
    }
}

/// Runs the shadow's connections until the queue closes.
pub(crate) async fn run(shared: Arc<Pipelines>) {
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < shared.connections() {
            tasks.spawn(connection_loop(shared.clone()));
        }
        tokio::select! {
            () = shared.fell_back.notified() => {}
            // A connection task ends only once the queue is closed: let the others finish.
            _ = tasks.join_next() => {
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

async fn connection_loop(shared: Arc<Pipelines>) {
    let mut pending = VecDeque::new();
    loop {
        // Connect only once there is something to send: no idle connections to a quiet
        // shadow. Copies left over from a closed connection go out on the next one.
        if pending.is_empty() && !next_jobs(&shared, shared.depth(), &mut pending).await {
            return;
        }
        let connected = match &shared.endpoint {
            Ok(endpoint) => endpoint.connect().await,
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        pending = match connected {
            Ok(Connected { stream, guard }) => {
                let connection = Connection::new(&shared, pending);
                let left = match stream {
                    ShadowStream::Plain(s) => {
                        let (rd, wr) = s.into_split();
                        connection.serve(rd, wr).await
                    }
                    ShadowStream::Tls(s) => {
                        let (rd, wr) = tokio::io::split(*s);
                        connection.serve(rd, wr).await
                    }
                };
                drop(guard);
                left
            }
            Err(e) => {
                let reason = tls::failure_reason(&e).unwrap_or(DropReason::Error);
                for job in pending.drain(..) {
                    shared.outcomes.failed(job.bytes(), &job.info, reason, &e);
                }
                pending
            }
        };
    }
}

/// Waits for a copy, then takes every copy already waiting too, up to `room` in all (one
/// write for all of them), into `jobs`. False once the queue is closed and empty.
async fn next_jobs(shared: &Pipelines, room: usize, jobs: &mut VecDeque<Job>) -> bool {
    let mut queue = shared.queue.lock().await;
    let Some(first) = queue.recv().await else { return false };
    jobs.push_back(first);
    let mut taken = 1;
    while taken < room {
        match queue.try_recv() {
            Ok(job) => jobs.push_back(job),
            Err(_) => break,
        }
        taken += 1;
    }
    shared.outcomes.dequeued(taken);
    true
}

/// One copy written and not yet answered.
struct Unanswered {
    job: Job,
    start: Instant,
    /// Written while another copy was unanswered on the connection.
    pipelined: bool,
}

/// How a connection ended before answering every copy written on it.
enum Failure {
    /// The shadow closed or reset the connection: copies may be sent again.
    Closed(String),
    /// A TLS alert or record error.
    Tls(DropReason, String),
    /// What the shadow sent is no response to the copy.
    Framing(ReadError),
    Timeout,
}

impl Failure {
    fn of(error: &io::Error) -> Failure {
        match tls::failure_reason(error) {
            Some(reason) => Failure::Tls(reason, error.to_string()),
            None => Failure::Closed(error.to_string()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Closed(e) | Failure::Tls(_, e) => f.write_str(e),
            Failure::Framing(e) => write!(f, "{e}"),
            Failure::Timeout => f.write_str("timed out"),
        }
    }
}

struct Connection<'a> {
    shared: &'a Pipelines,
    /// Copies taken from the queue, not written yet.
    pending: VecDeque<Job>,
    unanswered: VecDeque<Unanswered>,
    /// Responses read on this connection.
    answered: u64,
    out: BytesMut,
    input: BytesMut,
    reader: ResponseReader,
    /// A copy that closes the connection was written, or the queue closed: take no more.
    closing: bool,
    /// Written since the last flush.
    unflushed: bool,
}

impl<'a> Connection<'a> {
    fn new(shared: &'a Pipelines, pending: VecDeque<Job>) -> Self {
        Connection {
            shared,
            pending,
            unanswered: VecDeque::new(),
            answered: 0,
            out: BytesMut::new(),
            input: BytesMut::with_capacity(16 << 10),
            reader: ResponseReader::new(shared.keep_body),
            closing: false,
            unflushed: false,
        }
    }

    /// Writes copies and reads responses until the connection ends; returns the copies to
    /// send on the next one (taken and not written, or to be sent again).
    async fn serve(
        mut self,
        mut rd: impl AsyncRead + Unpin,
        mut wr: impl AsyncWrite + Unpin,
    ) -> VecDeque<Job> {
        let failure = loop {
            self.write_pending();
            if self.closing && self.unanswered.is_empty() && self.out.is_empty() {
                return self.pending;
            }
            let room = self.shared.depth().saturating_sub(self.unanswered.len());
            let take = !self.closing && self.pending.is_empty() && room > 0;
            let deadline = self.unanswered.front().map(|u| u.start + self.shared.outcomes.timeout);
            tokio::select! {
                more = next_jobs(self.shared, room, &mut self.pending), if take => {
                    self.closing |= !more;
                }
                // TLS keeps records it could not write yet until flushed (TCP: a no-op).
                written = write_or_flush(&mut wr, &self.out), if !self.out.is_empty() || self.unflushed => match written {
                    Ok(Some(n)) => {
                        self.out.advance(n);
                        self.unflushed = true;
                    }
                    Ok(None) => self.unflushed = false,
                    Err(e) => break Failure::of(&e),
                },
                read = rd.read_buf(&mut self.input) => match read {
                    Ok(0) => break self.at_end(),
                    Ok(_) => {
                        if let Err(e) = self.parse_responses() {
                            break Failure::Framing(e);
                        }
                    }
                    Err(e) => break Failure::of(&e),
                },
                () = sleep_until(deadline), if deadline.is_some() => break Failure::Timeout,
            }
        };
        self.fail(failure)
    }

    /// Moves pending copies to the output while the pipeline has room; a copy that closes
    /// the connection is the last.
    fn write_pending(&mut self) {
        while !self.closing && self.unanswered.len() < self.shared.depth() {
            let Some(job) = self.pending.pop_front() else { break };
            let request = &job.request;
            self.out.reserve(request.len());
            self.out.extend_from_slice(&request.head);
            self.out.extend_from_slice(&request.body);
            self.closing = request.last_on_connection;
            let pipelined = !self.unanswered.is_empty();
            self.unanswered.push_back(Unanswered { job, start: Instant::now(), pipelined });
        }
    }

    /// Consumes every complete response in `input`.
    fn parse_responses(&mut self) -> Result<(), ReadError> {
        loop {
            let Self { reader, input, unanswered, .. } = self;
            let head_only = || unanswered.front().map(|u| u.job.request.head_only);
            let Some(response) = reader.next(input, head_only)? else { break };
            self.closing |= response.closes_connection();
            self.answered(response);
        }
        // A response that closes the connection ends the pipeline as soon as its head is in.
        self.closing |= self.reader.reading().is_some_and(|h| h.has_token("connection", "close"));
        Ok(())
    }

    fn answered(&mut self, response: ClientResponse) {
        if let Some(u) = self.unanswered.pop_front() {
            self.answered += 1;
            let status = response.status();
            let (bytes, info) = (u.job.bytes(), &u.job.info);
            self.shared.outcomes.answered(bytes, info, u.start, status, Some(response));
        }
    }

    /// The shadow closed the connection: that ends a body delimited by the close.
    fn at_end(&mut self) -> Failure {
        if let Some(response) = self.reader.finish() {
            self.answered(response);
        }
        Failure::Closed("connection closed by the shadow".to_owned())
    }

    /// Counts every unanswered copy, or keeps it to be sent again; turns pipelining off when
    /// the shadow failed behind a pipelined copy.
    fn fail(mut self, failure: Failure) -> VecDeque<Job> {
        let pipelined =
            self.unanswered.len() > 1 || self.unanswered.front().is_some_and(|u| u.pipelined);
        let fell = match failure {
            // A shadow that answered, then stopped: it may ignore pipelined requests (a slow
            // shadow times out on the first copy of a connection, which was not pipelined).
            Failure::Timeout => {
                self.answered > 0 && self.unanswered.front().is_some_and(|u| u.pipelined)
            }
            Failure::Closed(_) | Failure::Framing(_) => pipelined,
            Failure::Tls(..) => false,
        };
        if fell {
            self.shared.fall_back(&failure);
        }
        let reason = match failure {
            Failure::Timeout => DropReason::Timeout,
            Failure::Tls(reason, _) => reason,
            Failure::Closed(_) | Failure::Framing(_) => DropReason::Error,
        };
        let again = matches!(failure, Failure::Closed(_)) && (self.answered > 0 || pipelined);
        let mut retry = VecDeque::new();
        for Unanswered { mut job, .. } in self.unanswered.drain(..) {
            job.attempts += 1;
            if again && job.request.idempotent && job.attempts < MAX_ATTEMPTS {
                retry.push_back(job);
            } else {
                self.shared.outcomes.failed(job.bytes(), &job.info, reason, &failure);
            }
        }
        retry.extend(self.pending);
        retry
    }
}

/// Writes from `out`, or flushes when it is empty: Some(bytes written), None once flushed.
async fn write_or_flush(
    wr: &mut (impl AsyncWrite + Unpin),
    out: &[u8],
) -> io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(out).await.map(Some)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, time::Duration};

    use bytes::Bytes;

    use super::*;
    use crate::{Answer, CopyInfo, ResultSink, ShadowRequest};

    /// Records the statuses of answered copies.
    #[derive(Default)]
    struct Statuses(std::sync::Mutex<Vec<u16>>);

    impl ResultSink for Statuses {
        fn answered(&self, _: &str, _: &CopyInfo, answer: &Answer) {
            self.0.lock().unwrap().push(answer.status);
        }

        fn dropped(&self, _: &str, _: &CopyInfo, _: DropReason, _: &dyn std::fmt::Display) {}
    }

    fn pipelines(sink: Arc<Statuses>) -> Pipelines {
        let (_, rx) = mpsc::channel(1);
        let outcomes = Outcomes {
            shadow: "shadow:8000".into(),
            timeout: Duration::from_secs(1),
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            keep_responses: false,
            sink,
        };
        let limits = Limits { pipeline: 8, ..Limits::default() };
        let uri = "http://shadow:8000".parse().unwrap();
        let endpoint = Endpoint::new(&uri, 0, Default::default(), None);
        Pipelines::new(endpoint, &limits, 0, outcomes, rx)
    }

    fn waiting(c: &mut Connection<'_>, head_only: &[bool]) {
        for &head_only in head_only {
            let request = ShadowRequest {
                head: Bytes::new(),
                body: Bytes::new(),
                head_only,
                last_on_connection: false,
                idempotent: true,
            };
            let job = Job { request, info: CopyInfo::default(), attempts: 0 };
            c.unanswered.push_back(Unanswered { job, start: Instant::now(), pipelined: false });
        }
    }

    /// Responses matched to copies in order, whatever their framing, arriving in pieces.
    #[test]
    fn reads_pipelined_responses_of_every_framing() {
        let sink = Arc::new(Statuses::default());
        let p = pipelines(sink.clone());
        let mut c = Connection::new(&p, VecDeque::new());
        waiting(&mut c, &[false, false, true, false, false]);
        let wire: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
            HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nuntil the end";
        // (The framings themselves are mirror-http's ResponseReader's, tested there.)
        for piece in wire.chunks(7) {
            c.input.extend_from_slice(piece);
            c.parse_responses().unwrap();
        }
        assert_eq!(c.unanswered.len(), 1, "the last body ends with the connection");
        assert!(c.closing);
        c.at_end();
        assert!(c.unanswered.is_empty());
        assert_eq!(*sink.0.lock().unwrap(), [200, 201, 200, 204, 500]);
    }

    /// What a broken shadow sends ends the connection with an error, never a panic, and the
    /// buffer stays bounded.
    #[test]
    fn rejects_malformed_and_endless_heads() {
        let p = pipelines(Arc::default());
        let mut c = Connection::new(&p, VecDeque::new());
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
        let framing = mirror_http::HeadError::Framing("invalid content-length");
        assert_eq!(c.parse_responses(), Err(ReadError::Head(framing)));
        let mut c = Connection::new(&p, VecDeque::new());
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"SMTP ready\r\n\r\n");
        assert!(c.parse_responses().is_err());
        let mut c = Connection::new(&p, VecDeque::new());
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        c.input.extend_from_slice(&b"X: y\r\n".repeat((64 << 10) / 6));
        assert!(c.parse_responses().is_err());
        let mut c = Connection::new(&p, VecDeque::new());
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(c.parse_responses(), Err(ReadError::Unrequested));
    }
}
