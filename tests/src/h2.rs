//! An HTTP/2 (h2c, prior knowledge) server that records every stream it gets: the shadow of
//! the HTTP/2 and gRPC tests. It answers gRPC calls by echoing the request's messages with
//! `grpc-status: 0` in the trailers, and anything else with `200 ok`.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Frame, server::conn::http2, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{
    netns::Netns,
    server::{next_connection, ServerThread},
};

/// A stream as the server got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenStream {
    pub method: String,
    pub authority: String,
    pub path: String,
    /// Regular header fields in order (names lower case).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    pub client: SocketAddr,
}

impl SeenStream {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The gRPC messages of the body, without their 5-byte prefixes.
    pub fn grpc_messages(&self) -> Vec<Vec<u8>> {
        grpc_messages(&self.body)
    }
}

/// Splits length-prefixed gRPC messages.
pub fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let end = (5 + len).min(body.len());
        out.push(body[5..end].to_vec());
        body = &body[end..];
    }
    out
}

type Seen = Arc<Mutex<Vec<SeenStream>>>;

pub struct H2Recorder {
    seen: Seen,
    _thread: ServerThread,
}

impl H2Recorder {
    pub fn start(ns: &Netns, port: u16) -> H2Recorder {
        Self::answering(ns, port, None)
    }

    /// A recorder answering requests other than gRPC calls with this JSON body.
    pub fn answering(ns: &Netns, port: u16, json: Option<&'static str>) -> H2Recorder {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let thread = ServerThread::start(ns, port, move |listener| async move {
            loop {
                let (stream, client) = next_connection(&listener).await;
                let client = SocketAddr::new(client.ip().to_canonical(), client.port());
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, client, s.clone(), json));
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        H2Recorder { seen, _thread: thread }
    }

    pub fn streams(&self) -> Vec<SeenStream> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `n` streams were recorded (or the timeout), then returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SeenStream> {
        let deadline = Instant::now() + timeout;
        while self.seen.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.streams()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    req: Request<hyper::body::Incoming>,
    client: SocketAddr,
    seen: Seen,
    json: Option<&'static str>,
) -> Result<Response<Body>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let pairs = |h: &hyper::http::HeaderMap| -> Vec<(String, Vec<u8>)> {
        h.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect()
    };
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    seen.lock().unwrap().push(SeenStream {
        method: parts.method.to_string(),
        authority: parts.uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: pairs(&parts.headers),
        body: body.to_vec(),
        trailers: pairs(&trailers),
        client,
    });
    if let (false, Some(json)) = (grpc, json) {
        let body = Full::new(Bytes::from_static(json.as_bytes())).boxed();
        let response = Response::builder().header("content-type", "application/json").body(body);
        return Ok(response.expect("static parts"));
    }
    if !grpc {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
    }
    let mut end = hyper::http::HeaderMap::new();
    end.insert("grpc-status", hyper::http::HeaderValue::from_static("0"));
    let body = Echo { data: Some(body), trailers: Some(end) }.boxed();
    let response = Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("static parts");
    Ok(response)
}

/// A gRPC answer: the messages, then the trailers.
struct Echo {
    data: Option<Bytes>,
    trailers: Option<hyper::http::HeaderMap>,
}

impl hyper::body::Body for Echo {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}
