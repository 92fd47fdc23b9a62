//! A real HTTP/1.1 server (hyper) inside a namespace that records, per connection, the exact
//! bytes it read and wrote. Those are what the client sent and received, so a capture can be
//! compared against them byte for byte.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use crate::netns::Netns;

/// A request as the server's HTTP stack parsed it (header names lowercased by hyper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }
}

/// How the server treats connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Answer every request.
    Answer,
    /// Answer after this long.
    Slow(std::time::Duration),
    /// Reset every connection as soon as it is accepted.
    Reset,
    /// Answer every request with this status (and the usual body).
    Status(u16),
}

/// Bytes seen on one accepted connection.
#[derive(Clone, Debug, Default)]
pub struct ConnRecord {
    pub received: Vec<u8>,
    pub sent: Vec<u8>,
}

type Records = Arc<Mutex<HashMap<SocketAddr, ConnRecord>>>;

/// Requests in arrival order, with a condition variable to wait for a count.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<SeenRequest>>,
    arrived: std::sync::Condvar,
    /// When each request (same order as `requests`) was read in full.
    times: Mutex<Vec<std::time::Instant>>,
}

/// The body the server answers with, so clients can check every response.
pub fn expected_body(method: &str, target: &str, body: &[u8]) -> String {
    format!("{method} {target} {} {:016x}\n", body.len(), fnv1a(body))
}

pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// A running server; stops when dropped.
pub struct RecordingServer {
    records: Records,
    seen: Arc<Seen>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingServer {
    /// Listens on every address of the namespace (IPv4 and IPv6) on each of `ports`. Returns
    /// once the sockets are bound and listening: clients may connect right away.
    pub fn start(ns: &Netns, ports: &[u16]) -> RecordingServer {
        Self::start_with(ns, ports, Behavior::Answer)
    }

    pub fn start_with(ns: &Netns, ports: &[u16], behavior: Behavior) -> RecordingServer {
        let records = Records::default();
        let seen = Arc::new(Seen::default());
        let seen_in = seen.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let ports = ports.to_vec();
        let recs = records.clone();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for port in ports {
                    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
                    listeners.push(TcpListener::bind(addr).await.expect("bind"));
                }
                ready_tx.send(()).unwrap();
                for listener in listeners {
                    tokio::spawn(accept_loop(listener, recs.clone(), seen_in.clone(), behavior));
                }
                let _ = shutdown_rx.await;
            });
        });
        ready_rx.recv().expect("server thread failed to start");
        RecordingServer { records, seen, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    /// What the connection from `client` read and wrote so far.
    pub fn connection(&self, client: SocketAddr) -> Option<ConnRecord> {
        self.records.lock().unwrap().get(&client).cloned()
    }

    /// Requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (or `timeout` passed); returns them.
    pub fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<SeenRequest> {
        let guard = self.seen.requests.lock().unwrap();
        let (guard, _) =
            self.seen.arrived.wait_timeout_while(guard, timeout, |r| r.len() < n).unwrap();
        guard.clone()
    }

    pub fn connections(&self) -> HashMap<SocketAddr, ConnRecord> {
        self.records.lock().unwrap().clone()
    }

    /// When each request so far was read in full, in arrival order.
    pub fn arrival_times(&self) -> Vec<std::time::Instant> {
        self.seen.times.lock().unwrap().clone()
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A server's thread in a namespace: its own runtime, a listener on every address (IPv4 and
/// IPv6) of `port`, and a stop signal; stopped and joined when dropped.
pub struct ServerThread {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Returns once the listener is bound: clients may connect right away.
    pub fn start<F, Fut>(ns: &Netns, port: u16, serve: F) -> ServerThread
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = oneshot::channel();
        let thread = ns.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
                let listener = TcpListener::bind(addr).await.expect("bind");
                ready_tx.send(()).unwrap();
                tokio::select! {
                    _ = stop => {}
                    _ = serve(listener) => {}
                }
            });
        });
        ready_rx.recv().expect("server thread failed to start");
        ServerThread { shutdown: Some(shutdown), thread: Some(thread) }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next connection. Accept errors (out of descriptors, a connection aborted in the
/// backlog) are waited out: returning would close the listener and refuse every later client.
pub(crate) async fn next_connection(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn accept_loop(listener: TcpListener, records: Records, seen: Arc<Seen>, behavior: Behavior) {
    loop {
        let (stream, peer) = next_connection(&listener).await;
        if behavior == Behavior::Reset {
            reset(stream);
            continue;
        }
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let io = TokioIo::new(Recording { inner: stream, peer, records: records.clone() });
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, seen.clone(), behavior));
            let _ = http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    behavior: Behavior,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let headers =
        req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
    let body = req.into_body().collect().await?.to_bytes();
    {
        let mut requests = seen.requests.lock().unwrap();
        seen.times.lock().unwrap().push(std::time::Instant::now());
        requests.push(SeenRequest {
            method: method.clone(),
            target: target.clone(),
            headers,
            body: body.to_vec(),
        });
        seen.arrived.notify_all();
    }
    if let Behavior::Slow(delay) = behavior {
        tokio::time::sleep(delay).await;
    }
    let mut response =
        Response::new(Full::new(Bytes::from(expected_body(&method, &target, &body))));
    if let Behavior::Status(status) = behavior {
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
    }
    Ok(response)
}

/// A TcpStream that appends everything read and written to its connection's record.
struct Recording {
    inner: TcpStream,
    peer: SocketAddr,
    records: Records,
}

impl Recording {
    fn record(&self, f: impl FnOnce(&mut ConnRecord)) {
        f(self.records.lock().unwrap().entry(self.peer).or_default());
    }
}

impl AsyncRead for Recording {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        if !new.is_empty() {
            this.record(|r| r.received.extend_from_slice(&new));
        }
        res
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.record(|r| r.sent.extend_from_slice(&buf[..n]));
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Closes with a RST: SO_LINGER with a zero timeout (close does not block then).
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on the stream's valid fd with a linger struct of the size we pass.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}
