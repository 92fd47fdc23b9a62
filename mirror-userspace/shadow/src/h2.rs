//! HTTP/2 copies: each captured stream becomes a stream to the shadow, on one multiplexed
//! connection per shadow and worker (hyper's HTTP/2 client: flow control, SETTINGS and HPACK
//! towards the shadow are its own), opened on first use and again after it fails.
//!
//! A copy starts with the request's headers and its DATA follows as it is captured: a
//! client-streaming or bidirectional call streams to the shadow while it goes on. What waits
//! for the shadow's flow control is bounded twice: by frames per stream
//! ([`STREAM_PIECES`]) and by the byte budget all copies share. A copy that would exceed
//! either is cancelled (RST_STREAM to the shadow) and counted; the capture never waits.
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    connect::{Connected, Endpoint, OwnGuard, ShadowStream},
    outcome::Outcomes,
    CopyInfo, DropReason,
};
use mirror_http::{ClientResponse, GrpcMessages};

/// Pieces (DATA payloads, trailers) of one stream waiting for the shadow to take them.
pub const STREAM_PIECES: usize = 64;

/// What goes down a copy's channel.
enum Piece {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// The request body of a copy: the pieces as they are captured. Ends when told to; a copy
/// dropped before its end makes the body fail, which resets the shadow's stream rather than
/// ending it cleanly with half a request.
pub(crate) struct CopyBody {
    rx: Option<mpsc::Receiver<Piece>>,
    queued_bytes: Arc<AtomicUsize>,
}

/// The copy's body failed: the captured stream was reset or the copy abandoned.
#[derive(Debug, thiserror::Error)]
#[error("the captured stream was cancelled")]
pub(crate) struct Cancelled;

impl Body for CopyBody {
    type Data = Bytes;
    type Error = Cancelled;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cancelled>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        let piece = std::task::ready!(rx.poll_recv(cx));
        Poll::Ready(match piece {
            Some(Piece::Data(bytes)) => {
                self.queued_bytes.fetch_sub(bytes.len(), Ordering::Relaxed);
                Some(Ok(Frame::data(bytes)))
            }
            Some(Piece::Trailers(trailers)) => {
                self.rx = None;
                Some(Ok(Frame::trailers(trailers)))
            }
            Some(Piece::End) => {
                self.rx = None;
                None
            }
            None => {
                self.rx = None;
                Some(Err(Cancelled))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for CopyBody {
    /// Pieces never taken give their bytes back to the budget.
    fn drop(&mut self) {
        if let Some(rx) = self.rx.as_mut() {
            rx.close();
            while let Ok(piece) = rx.try_recv() {
                if let Piece::Data(bytes) = piece {
                    self.queued_bytes.fetch_sub(bytes.len(), Ordering::Relaxed);
                }
            }
        }
    }
}

/// Why a copy was cancelled from the capture side (0: it was not), read by the copy's task
/// when its exchange fails: the one place its outcome is reported.
#[derive(Clone, Default)]
struct CancelReason(Arc<AtomicU8>);

impl CancelReason {
    fn set(&self, reason: DropReason) {
        let _ = self.0.compare_exchange(0, reason as u8 + 1, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn get(&self) -> Option<DropReason> {
        let n = self.0.load(Ordering::Relaxed);
        DropReason::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }
}

/// What the capture side tells a copy's task once: the request ended (its timeout runs from
/// here: a long client stream is not a slow shadow), or the copy was cancelled (the task
/// drops its exchange, which resets the shadow's stream, whatever hyper is waiting for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Done {
    Ended,
    Cancelled,
}

/// The capture side of a copy: the agent pushes the stream's pieces into it as they arrive.
/// Dropped without [`StreamCopy::end`] or [`StreamCopy::trailers`], the copy is cancelled.
pub struct StreamCopy {
    tx: Option<mpsc::Sender<Piece>>,
    done: Option<oneshot::Sender<Done>>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    cancel: CancelReason,
}

impl StreamCopy {
    /// The next DATA of the request. A copy the shadow does not keep up with is cancelled
    /// (`Err` says why; the outcome is reported once, by the copy): push nothing more.
    pub fn data(&mut self, bytes: Bytes) -> Result<(), DropReason> {
        let Some(tx) = &self.tx else {
            return Err(self.cancel.get().unwrap_or(DropReason::Cancelled));
        };
        let len = bytes.len();
        let reason =
            if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > self.max_queued_bytes {
                DropReason::ByteBudget
            } else {
                match tx.try_send(Piece::Data(bytes)) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => DropReason::StreamBuffer,
                    // The copy already ended (the shadow answered or failed).
                    Err(mpsc::error::TrySendError::Closed(_)) => DropReason::Error,
                }
            };
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        self.cancel(reason);
        Err(reason)
    }

    /// Cancels the copy (the captured stream was reset, or a limit was reached).
    pub fn cancel(&mut self, reason: DropReason) {
        if self.tx.take().is_some() {
            self.cancel.set(reason);
            self.tell(Done::Cancelled);
        }
    }

    fn tell(&mut self, done: Done) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(done);
        }
    }

    /// The request's trailers, which end it.
    pub fn trailers(mut self, trailers: HeaderMap) {
        self.close(Piece::Trailers(trailers));
    }

    /// The request ended (END_STREAM on its last DATA).
    pub fn end(mut self) {
        self.close(Piece::End);
    }

    fn close(&mut self, last: Piece) {
        if let Some(tx) = self.tx.take() {
            if tx.try_send(last).is_err() {
                self.cancel.set(DropReason::StreamBuffer);
                return self.tell(Done::Cancelled);
            }
            self.tell(Done::Ended);
        }
    }
}

impl Drop for StreamCopy {
    fn drop(&mut self) {
        self.cancel(DropReason::Cancelled);
    }
}

/// One shadow's HTTP/2 side, shared by its copies' tasks.
pub(crate) struct H2Shadow {
    endpoint: std::io::Result<Endpoint>,
    connection: tokio::sync::Mutex<Option<SendRequest<CopyBody>>>,
    in_flight: Arc<Semaphore>,
    /// Copies started and not finished: in flight, or waiting for a slot (at most
    /// `max_in_flight + queue_length`; beyond, copies are dropped as `queue_full`).
    copies: Arc<AtomicUsize>,
    max_copies: usize,
    /// The same, summed with other shadows' ([`crate::ShadowOptions::unfinished_streams`]).
    all_copies: Arc<AtomicUsize>,
    outcomes: Outcomes,
    max_queued_bytes: usize,
    /// Body bytes of an answer kept for the sink (when it keeps answers).
    keep_body: usize,
}

impl H2Shadow {
    pub(crate) fn new(
        endpoint: std::io::Result<Endpoint>,
        limits: &crate::Limits,
        outcomes: Outcomes,
        all_copies: Arc<AtomicUsize>,
        keep_body: usize,
    ) -> Self {
        Self {
            endpoint,
            connection: tokio::sync::Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            copies: Arc::default(),
            max_copies: limits.max_in_flight + limits.queue_length,
            all_copies,
            outcomes,
            max_queued_bytes: limits.max_queued_bytes,
            keep_body,
        }
    }

    /// Starts a copy of a stream whose request head is `head` (its body follows through the
    /// returned [`StreamCopy`]; `end_stream`: it has none).
    pub(crate) fn open(
        self: &Arc<Self>,
        copy: CopyInfo,
        head: http::request::Parts,
        end_stream: bool,
    ) -> Result<StreamCopy, (DropReason, CopyInfo)> {
        if self.copies.fetch_add(1, Ordering::Relaxed) >= self.max_copies {
            self.copies.fetch_sub(1, Ordering::Relaxed);
            return Err((DropReason::QueueFull, copy));
        }
        self.all_copies.fetch_add(1, Ordering::Relaxed);
        let unfinished = Unfinished([self.copies.clone(), self.all_copies.clone()]);
        let queued_bytes = self.outcomes.queued_bytes.clone();
        // A request without a body (most unary GETs) needs no channel: its HEADERS end it.
        let (tx, rx, done, done_rx) = if end_stream {
            (None, None, None, None)
        } else {
            let (tx, rx) = mpsc::channel(STREAM_PIECES);
            let (done, done_rx) = oneshot::channel();
            (Some(tx), Some(rx), Some(done), Some(done_rx))
        };
        let body = CopyBody { rx, queued_bytes: queued_bytes.clone() };
        let request = Request::from_parts(head, body);
        let cancel = CancelReason::default();
        // Boxed: the task then holds a pointer, not the large future moved in and out.
        let task = Box::pin(self.clone().send(copy, request, done_rx, cancel.clone(), unfinished));
        tokio::spawn(task);
        let max_queued_bytes = self.max_queued_bytes;
        Ok(StreamCopy { tx, done, queued_bytes, max_queued_bytes, cancel })
    }

    async fn send(
        self: Arc<Self>,
        copy: CopyInfo,
        request: Request<CopyBody>,
        done: Option<oneshot::Receiver<Done>>,
        cancel: CancelReason,
        _unfinished: Unfinished,
    ) {
        let timeout = self.outcomes.timeout;
        let capture = async {
            // No channel: the request ended with its headers. A copy dropped without a word
            // was cancelled.
            let ended = match done {
                None => true,
                Some(rx) => rx.await == Ok(Done::Ended),
            };
            if !ended {
                return cancel.get().unwrap_or(DropReason::Cancelled);
            }
            tokio::time::sleep(timeout).await;
            DropReason::Timeout
        };
        let work = async {
            // Waiting for a slot, the copy's DATA gathers in its channel (bounded).
            let _permit = self.in_flight.clone().acquire_owned().await.map_err(CopyError::http)?;
            let start = Instant::now();
            self.exchange(request).await.map(|answer| (answer, start))
        };
        tokio::select! {
            result = work => match result {
                Ok((answer, start)) => self.outcomes.answered_h2(&copy, start, answer),
                Err(e) => {
                    let reason = cancel.get().unwrap_or(e.reason);
                    self.outcomes.failed(0, &copy, reason, &e)
                }
            },
            reason = capture => self.outcomes.failed(0, &copy, reason, &reason.name()),
        }
    }

    /// Sends the request and reads the whole answer.
    async fn exchange(&self, request: Request<CopyBody>) -> Result<H2Answer, CopyError> {
        let mut sender = self.sender().await.map_err(CopyError::connect)?;
        sender.ready().await.map_err(CopyError::http)?;
        let response = sender.send_request(request).await.map_err(CopyError::http)?;
        let (parts, mut body) = response.into_parts();
        let status = parts.status.as_u16();
        let mut answer = H2Answer { status, ..Default::default() };
        let grpc = mirror_http::is_grpc(parts.headers.get("content-type").map(|v| v.as_bytes()));
        answer.grpc_status = grpc_status(&parts.headers);
        let mut messages = GrpcMessages::default();
        let mut kept = bytes::BytesMut::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(CopyError::http)?;
            match frame.into_data() {
                Ok(mut data) => {
                    answer.body_bytes += data.len() as u64;
                    if grpc {
                        messages.push(data.chunk());
                    }
                    let keep = self.keep_body.saturating_sub(kept.len()).min(data.len());
                    kept.extend_from_slice(&data.chunk()[..keep]);
                    data.advance(data.len());
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        answer.grpc_status = grpc_status(&t).or(answer.grpc_status);
                        trailers = t;
                    }
                }
            }
        }
        answer.grpc_messages = grpc.then(|| messages.complete());
        if self.outcomes.keep_responses {
            // The answer as the comparison reads answers: a head (its trailers after its
            // fields) and the body kept.
            let fields = parts.headers.iter().chain(trailers.iter());
            let head = mirror_http::h2::response_head(
                status,
                fields.map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            );
            answer.response = head.map(|head| ClientResponse {
                head,
                body: kept.freeze(),
                body_dropped: answer.body_bytes.saturating_sub(self.keep_body as u64),
            });
        }
        Ok(answer)
    }

    /// The shadow's connection, opened if there is none or it failed.
    async fn sender(&self) -> std::io::Result<SendRequest<CopyBody>> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let endpoint =
            self.endpoint.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
        let Connected { stream, guard } = endpoint.connect().await?;
        let sender = match stream {
            ShadowStream::Plain(s) => handshake(s, guard, self.outcomes.timeout).await?,
            ShadowStream::Tls(s) => handshake(*s, guard, self.outcomes.timeout).await?,
        };
        *connection = Some(sender.clone());
        Ok(sender)
    }
}

/// HTTP/2's handshake on a new connection, which then runs on its own task.
async fn handshake<T>(
    io: T,
    guard: OwnGuard,
    keep_alive: std::time::Duration,
) -> std::io::Result<SendRequest<CopyBody>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // PINGs every `timeout` of silence: a shadow gone without a FIN (a blackholed route)
    // fails its connection and the copies on it, rather than holding them.
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(keep_alive)
        .keep_alive_timeout(keep_alive)
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(guard); // the local address is ours until the connection ends
    });
    Ok(sender)
}

/// The TLS settings of an HTTP/2 shadow: the HTTP/1 client's, offering `h2` by ALPN.
pub(crate) fn h2_tls(tls: Option<Arc<rustls::ClientConfig>>) -> Option<Arc<rustls::ClientConfig>> {
    let config = match tls {
        Some(config) => config,
        None => crate::TlsOptions::default().client_config().ok()?,
    };
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(Arc::new(config))
}

/// Counts a copy as unfinished while it lives.
struct Unfinished([Arc<AtomicUsize>; 2]);

impl Drop for Unfinished {
    fn drop(&mut self) {
        for count in &self.0 {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What the shadow answered to a stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct H2Answer {
    pub status: u16,
    /// The answer kept for a comparison, if the client keeps answers.
    pub response: Option<ClientResponse>,
    /// `grpc-status` of the trailers, or of the headers of a Trailers-Only response.
    pub grpc_status: Option<u16>,
    /// Length-prefixed messages of a gRPC answer.
    pub grpc_messages: Option<u64>,
    pub body_bytes: u64,
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
#[error("{error}")]
struct CopyError {
    reason: DropReason,
    error: String,
}

impl CopyError {
    fn connect(e: std::io::Error) -> Self {
        let reason = crate::tls::failure_reason(&e).unwrap_or(DropReason::Error);
        Self { reason, error: e.to_string() }
    }

    fn http(e: impl std::fmt::Display) -> Self {
        Self { reason: DropReason::Error, error: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use super::*;
    use crate::{Answer, Limits, ResultSink, ShadowClient, ShadowOptions};
    use http_body_util::{BodyExt, Full};
    use hyper::{server::conn::http2 as server, service::service_fn};

    #[derive(Default)]
    struct Outcomes(Mutex<Vec<Result<Answer, DropReason>>>);

    impl ResultSink for Outcomes {
        fn answered(&self, _: &str, _: &CopyInfo, answer: &Answer) {
            self.0.lock().unwrap().push(Ok(answer.clone()));
        }

        fn dropped(&self, _: &str, _: &CopyInfo, reason: DropReason, _: &dyn std::fmt::Display) {
            self.0.lock().unwrap().push(Err(reason));
        }
    }

    type Answering = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<hyper::Response<Full<Bytes>>, hyper::Error>>
                + Send,
        >,
    >;

    /// An HTTP/2 server answering every stream with `answer`.
    async fn serving(
        answer: fn(Request<hyper::body::Incoming>) -> Answering,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(
                    server::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(answer)),
                );
            }
        });
        addr
    }

    /// An HTTP/2 server answering every stream, once its body is complete, with its length.
    async fn server() -> std::net::SocketAddr {
        serving(|req| {
            Box::pin(async move {
                let body = req.into_body().collect().await?.to_bytes();
                let len = Bytes::from(body.len().to_string());
                Ok(hyper::Response::new(Full::new(len)))
            })
        })
        .await
    }

    fn options(sink: Arc<Outcomes>, queued_bytes: Arc<AtomicUsize>) -> ShadowOptions {
        ShadowOptions {
            queued_bytes,
            unfinished_streams: Arc::default(),
            own: Default::default(),
            mark: 0,
            tls: None,
            label_copies: false,
            keep_body: None,
            sink,
        }
    }

    fn client(addr: std::net::SocketAddr, sink: Arc<Outcomes>, limits: Limits) -> ShadowClient {
        let options = options(sink, Arc::default());
        ShadowClient::start(&format!("http://{addr}").parse().unwrap(), &limits, options)
    }

    fn head(path: &str) -> http::request::Parts {
        let uri = format!("http://api-shadow:80{path}");
        Request::post(uri).body(()).unwrap().into_parts().0
    }

    async fn outcomes(sink: &Outcomes, n: usize) -> Vec<Result<Answer, DropReason>> {
        for _ in 0..500 {
            if sink.0.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.0.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn streams_are_multiplexed_and_their_data_follows_as_it_comes() {
        let addr = server().await;
        let sink = Arc::new(Outcomes::default());
        let shadow = client(addr, sink.clone(), Limits { max_in_flight: 300, ..Limits::default() });
        let mut open = Vec::new();
        for i in 0..200 {
            let mut copy = shadow.open_stream(i, head("/s"), false).unwrap();
            copy.data(Bytes::from(vec![1u8; i as usize])).unwrap();
            open.push(copy);
        }
        for copy in open {
            copy.end();
        }
        let got = outcomes(&sink, 200).await;
        assert_eq!(got.len(), 200);
        assert!(got.iter().all(|o| matches!(o, Ok(a) if a.status == 200)), "{got:?}");
    }

    #[tokio::test]
    async fn bodiless_streams_end_with_their_headers() {
        let addr = server().await;
        let sink = Arc::new(Outcomes::default());
        let shadow = client(addr, sink.clone(), Limits::default());
        for i in 0..500 {
            while shadow.open_stream(i, head("/get"), true).is_err() {
                tokio::task::yield_now().await;
            }
        }
        let got = outcomes(&sink, 500).await;
        assert!(got.iter().filter(|o| o.is_ok()).count() == 500, "{got:?}");
    }

    /// A copy cancelled mid-body (the captured stream was reset): the shadow's stream is
    /// reset, not ended with half a body; the outcome is `cancelled`, and the bytes that
    /// waited for the shadow are given back to the budget.
    #[tokio::test]
    async fn a_cancelled_copy_resets_the_shadows_stream() {
        let addr = server().await;
        let sink = Arc::new(Outcomes::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let uri = format!("http://{addr}").parse().unwrap();
        let options = options(sink.clone(), queued_bytes.clone());
        let shadow = ShadowClient::start(&uri, &Limits::default(), options);
        let mut copy = shadow.open_stream(1, head("/upload"), false).unwrap();
        copy.data(Bytes::from(vec![7u8; 10_000])).unwrap();
        copy.cancel(DropReason::Cancelled);
        assert_eq!(copy.data(Bytes::from_static(b"late")), Err(DropReason::Cancelled));
        let got = outcomes(&sink, 1).await;
        assert_eq!(got, [Err(DropReason::Cancelled)]);
        assert_eq!(queued_bytes.load(Ordering::Relaxed), 0);
    }

    /// A shadow that does not read: HTTP/2 flow control stops the client after the initial
    /// window (and hyper's send buffer), the stream's pieces then wait up to
    /// [`STREAM_PIECES`], and the copy is cancelled and counted (`stream_buffer`); pushing
    /// never blocks.
    #[tokio::test]
    async fn a_shadow_that_does_not_keep_up_costs_a_bounded_buffer() {
        // Accepts connections, never reads: HTTP/2 flow control stops the client at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await.unwrap());
            }
        });
        let sink = Arc::new(Outcomes::default());
        let shadow = client(addr, sink.clone(), Limits::default());
        let mut copy = shadow.open_stream(1, head("/stream"), false).unwrap();
        let mut pushed = 0;
        let refused = loop {
            match copy.data(Bytes::from(vec![1u8; 1024])) {
                Ok(()) => pushed += 1,
                Err(reason) => break reason,
            }
            // The copy's task takes what the window and hyper's buffer allow.
            tokio::task::yield_now().await;
            assert!(pushed < 2048, "the buffer is bounded");
        };
        assert_eq!(refused, DropReason::StreamBuffer);
        drop(copy);
        // The copy's task is not stuck behind the shadow's window: it ends, told once.
        assert_eq!(outcomes(&sink, 1).await, [Err(DropReason::StreamBuffer)]);
    }

    /// A gRPC error as Trailers-Only (one HEADERS with END_STREAM carrying grpc-status):
    /// its status is the call's.
    #[tokio::test]
    async fn a_trailers_only_answer_gives_its_grpc_status() {
        let addr = serving(|_| {
            Box::pin(async {
                let response = hyper::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "5")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                Ok(response)
            })
        })
        .await;
        let sink = Arc::new(Outcomes::default());
        let shadow = client(addr, sink.clone(), Limits::default());
        let mut copy = shadow.open_stream(1, head("/pkg.Svc/Missing"), false).unwrap();
        copy.data(Bytes::from_static(&[0, 0, 0, 0, 1, 7])).unwrap();
        copy.end();
        let got = outcomes(&sink, 1).await;
        let grpc = got[0].as_ref().ok().and_then(|a| a.grpc);
        assert_eq!(grpc, Some(crate::GrpcAnswer { status: Some(5), messages: 0 }), "{got:?}");
    }
}
