//! HTTP/1.1 pipelining to a shadow (`limits.pipeline` > 1): several copies per write.
//!
//! Why not hyper here: its client sends one request per connection at a time, so every copy
//! costs one `write` and one TCP segment through the whole stack (on a node, through the veth
//! into the shadow's socket as well), about a third of the agent's CPU per copy
//! (BENCHMARKS.md). A pipelined connection takes every copy waiting in the queue, up to its
//! depth, and writes them at once; responses come back in order and are matched to copies
//! by position.
//!
//! Each connection is one task: it takes copies while fewer than `depth` are unanswered,
//! writes, and reads responses (with mirror-http's [`ResponseReader`], the framing rules of the
//! capture side), all in one `select!` so a shadow that is slow to read never
//! stops us reading its responses. A copy that asks to close the connection (HTTP/1.0,
//! `Connection: close`) is the last one written on it. When the oldest unanswered copy times
//! out, or the connection fails, every unanswered copy on it is counted (timeout, error) and
//! the connection is replaced.
use std::{collections::VecDeque, sync::Arc, time::Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, Method, Uri, Version};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, Mutex},
};

use crate::{
    connect::{connect, OwnSockets, TrackedStream},
    CopyInfo, DropReason, Job, Outcomes,
};
use mirror_http::{ClientResponse, ReadError, ResponseReader};

/// What every connection of one shadow shares.
pub(crate) struct Pipelines {
    pub(crate) uri: Uri,
    pub(crate) mark: u32,
    pub(crate) own: OwnSockets,
    pub(crate) depth: usize,
    /// Body bytes kept per response for the result sink (0: heads only).
    pub(crate) keep_body: usize,
    pub(crate) outcomes: Outcomes,
    pub(crate) queue: Mutex<mpsc::Receiver<Job>>,
}

/// Runs `connections` pipelined connections until the queue closes.
pub(crate) async fn run(shared: Arc<Pipelines>, connections: usize) {
    let tasks: Vec<_> =
        (0..connections).map(|_| tokio::spawn(connection_loop(shared.clone()))).collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// One copy written and not yet answered.
struct Unanswered {
    job_bytes: usize,
    info: CopyInfo,
    start: Instant,
    /// The response has no body whatever its headers say (HEAD).
    head_only: bool,
}

async fn connection_loop(shared: Arc<Pipelines>) {
    // Connect only once there is something to send: no idle connections to a quiet shadow.
    while let Some(mut jobs) = next_jobs(&shared, shared.depth).await {
        // Copies queued behind one that closed the connection go out on the next one.
        while !jobs.is_empty() {
            jobs = match connect(&shared.uri, shared.mark, shared.own.clone()).await {
                Ok(stream) => Connection::new(&shared).serve(stream, jobs).await,
                Err(e) => {
                    for job in jobs.drain(..) {
                        shared.outcomes.failed(job.bytes, &job.info, DropReason::Error, &e);
                    }
                    jobs
                }
            };
        }
    }
}

/// Waits for a copy, then takes every copy already waiting too, up to `room` in all (one
/// write for all of them). None once the queue is closed and empty.
async fn next_jobs(shared: &Pipelines, room: usize) -> Option<Vec<Job>> {
    let mut queue = shared.queue.lock().await;
    let mut jobs = vec![queue.recv().await?];
    while jobs.len() < room {
        match queue.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    shared.outcomes.dequeued(jobs.len());
    Some(jobs)
}

struct Connection<'a> {
    shared: &'a Pipelines,
    unanswered: VecDeque<Unanswered>,
    out: BytesMut,
    input: BytesMut,
    reader: ResponseReader,
    /// A copy that closes the connection was written: take no more.
    closing: bool,
    /// Copies taken but not written because an earlier one closes the connection.
    leftover: Vec<Job>,
}

impl<'a> Connection<'a> {
    fn new(shared: &'a Pipelines) -> Self {
        Connection {
            shared,
            unanswered: VecDeque::new(),
            out: BytesMut::new(),
            input: BytesMut::with_capacity(16 << 10),
            reader: ResponseReader::new(shared.keep_body),
            closing: false,
            leftover: Vec::new(),
        }
    }

    /// Sends `first` and what follows until the connection ends; returns copies taken but
    /// not sent.
    async fn serve(mut self, stream: TrackedStream, first: Vec<Job>) -> Vec<Job> {
        let TrackedStream { stream, guard: _guard } = stream;
        let (mut rd, mut wr) = stream.into_split();
        self.take(first).await;
        let failure = loop {
            let room = if self.closing { 0 } else { self.shared.depth - self.unanswered.len() };
            let deadline = self.unanswered.front().map(|u| u.start + self.shared.outcomes.timeout);
            tokio::select! {
                jobs = next_jobs(self.shared, room), if room > 0 => match jobs {
                    Some(jobs) => self.take(jobs).await,
                    None if self.unanswered.is_empty() => return self.leftover,
                    None => self.closing = true,
                },
                written = wr.write(&self.out), if !self.out.is_empty() => match written {
                    Ok(n) => self.out.advance(n),
                    Err(e) => break (DropReason::Error, e.to_string()),
                },
                read = rd.read_buf(&mut self.input) => match read {
                    Ok(0) => break self.at_end(),
                    Ok(_) => {
                        if let Err(e) = self.parse_responses() {
                            break (DropReason::Error, e.to_string());
                        }
                        if self.closing && self.unanswered.is_empty() {
                            return self.leftover;
                        }
                    }
                    Err(e) => break (DropReason::Error, e.to_string()),
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    break (DropReason::Timeout, "timed out".to_owned());
                }
            }
        };
        for u in self.unanswered.drain(..) {
            self.shared.outcomes.failed(u.job_bytes, &u.info, failure.0, &failure.1);
        }
        self.leftover
    }

    /// Appends `jobs` to the output, in order; a copy that closes the connection is the last.
    async fn take(&mut self, jobs: Vec<Job>) {
        let mut jobs = jobs.into_iter();
        for job in jobs.by_ref() {
            let (parts, body) = job.request.into_parts();
            // A `Full` body is one ready frame.
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            encode(&parts, &body, &mut self.out);
            self.unanswered.push_back(Unanswered {
                job_bytes: job.bytes,
                info: job.info,
                start: Instant::now(),
                head_only: parts.method == Method::HEAD,
            });
            if closes_connection(&parts) {
                self.closing = true;
                break;
            }
        }
        self.leftover.extend(jobs);
    }

    /// Consumes every complete response in `input`.
    fn parse_responses(&mut self) -> Result<(), ReadError> {
        loop {
            let Self { reader, input, unanswered, .. } = self;
            let next = reader.next(input, || unanswered.front().map(|u| u.head_only))?;
            let Some(response) = next else { break };
            self.closing |= response.closes_connection();
            self.answered(response);
        }
        // A response that closes the connection ends the pipeline as soon as its head is in.
        self.closing |= self.reader.reading().is_some_and(|h| h.has_token("connection", "close"));
        Ok(())
    }

    fn answered(&mut self, response: ClientResponse) {
        if let Some(u) = self.unanswered.pop_front() {
            let status = response.status();
            self.shared.outcomes.answered(u.job_bytes, &u.info, u.start, status, Some(response));
        }
    }

    /// The shadow closed the connection: that ends a body delimited by the close.
    fn at_end(&mut self) -> (DropReason, String) {
        if let Some(response) = self.reader.finish() {
            self.answered(response);
        }
        (DropReason::Error, "connection closed by the shadow".to_owned())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    }
}

/// Whether the shadow will close the connection after answering this copy.
fn closes_connection(parts: &http::request::Parts) -> bool {
    let connection = parts.headers.get_all(header::CONNECTION);
    let says = |token: &str| {
        connection.iter().any(|v| {
            v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    says("close") || (parts.version == Version::HTTP_10 && !says("keep-alive"))
}

/// Writes the copy as HTTP/1.x: the request line, the headers in order (adding Host from the
/// URI if the copy has none, and Content-Length if a body has no framing), then the body,
/// re-chunked if the copy says chunked (the rewrite decoded it).
fn encode(parts: &http::request::Parts, body: &Bytes, out: &mut BytesMut) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let version = if parts.version == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
    out.reserve(256 + body.len());
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_u8(b' ');
    out.put_slice(version.as_bytes());
    out.put_slice(b"\r\n");
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            put_header(out, "host", authority.as_str().as_bytes());
        }
    }
    for (name, value) in &parts.headers {
        put_header(out, name.as_str(), value.as_bytes());
    }
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    if !chunked && !body.is_empty() && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        put_header(out, "content-length", body.len().to_string().as_bytes());
    }
    out.put_slice(b"\r\n");
    if chunked {
        if !body.is_empty() {
            out.put_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.put_slice(body);
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"0\r\n\r\n");
    } else {
        out.put_slice(body);
    }
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::AtomicUsize, time::Duration};

    use http::Request;

    use super::*;
    use crate::{Answer, ResultSink};

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
        Pipelines {
            uri: "http://shadow:8000".parse().unwrap(),
            mark: 0,
            own: OwnSockets::default(),
            depth: 8,
            keep_body: 0,
            outcomes: Outcomes {
                shadow: "shadow:8000".into(),
                timeout: Duration::from_secs(1),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                keep_responses: false,
                sink,
            },
            queue: Mutex::new(rx),
        }
    }

    fn waiting(c: &mut Connection<'_>, head_only: &[bool]) {
        for &head_only in head_only {
            let start = Instant::now();
            c.unanswered.push_back(Unanswered {
                job_bytes: 0,
                info: CopyInfo::default(),
                start,
                head_only,
            });
        }
    }

    /// Responses matched to copies in order, whatever their framing, arriving in pieces.
    #[test]
    fn reads_pipelined_responses_of_every_framing() {
        let sink = Arc::new(Statuses::default());
        let p = pipelines(sink.clone());
        let mut c = Connection::new(&p);
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
        let mut c = Connection::new(&p);
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
        let framing = mirror_http::HeadError::Framing("invalid content-length");
        assert_eq!(c.parse_responses(), Err(ReadError::Head(framing)));
        let mut c = Connection::new(&p);
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"SMTP ready\r\n\r\n");
        assert!(c.parse_responses().is_err());
        let mut c = Connection::new(&p);
        waiting(&mut c, &[false]);
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        c.input.extend_from_slice(&b"X: y\r\n".repeat((64 << 10) / 6));
        assert!(c.parse_responses().is_err());
        let mut c = Connection::new(&p);
        c.input.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(c.parse_responses(), Err(ReadError::Unrequested));
    }

    fn encoded(builder: http::request::Builder, body: &'static [u8]) -> Vec<u8> {
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let mut out = BytesMut::new();
        encode(&parts, &Bytes::from_static(body), &mut out);
        out.to_vec()
    }

    #[test]
    fn encodes_headers_in_order_and_rechunks() {
        let req = Request::builder()
            .method("POST")
            .uri("http://shadow:8000/up?x=1")
            .header("host", "svc-shadow:8000")
            .header("transfer-encoding", "chunked")
            .header("x-a", "1");
        assert_eq!(
            encoded(req, b"hello"),
            b"POST /up?x=1 HTTP/1.1\r\nhost: svc-shadow:8000\r\ntransfer-encoding: chunked\r\n\
              x-a: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec()
        );
    }

    #[test]
    fn adds_host_and_length_when_missing() {
        let req =
            Request::builder().method("PUT").uri("http://shadow:8000/p").version(Version::HTTP_10);
        let (parts, ()) =
            Request::builder().version(Version::HTTP_10).body(()).unwrap().into_parts();
        assert!(closes_connection(&parts));
        assert_eq!(
            encoded(req, b"abc"),
            b"PUT /p HTTP/1.0\r\nhost: shadow:8000\r\ncontent-length: 3\r\n\r\nabc".to_vec()
        );
    }
}
