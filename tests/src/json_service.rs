//! A JSON service with the noise of real ones, for the comparison's tests: every answer
//! carries a random request id, the time, a per-process counter and its keys in a random
//! order (and hyper's Date header). The candidate build changes what its variant says.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{
    netns::Netns,
    server::{next_connection, ServerThread},
};

/// Which build answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// The version in production (primary and secondary).
    Current,
    /// The candidate: `/users/N` has `id` as a string, `/orders/N` lacks `total`, and
    /// `/slow` answers 200 ms later.
    Candidate,
    /// The candidate without any change but the noise.
    Same,
}

/// Endpoints: `/users/N`, `/orders/N`, `/slow`, anything else `{"ok":true}` plus noise.
pub struct JsonService {
    /// Requests with a method other than GET, HEAD and OPTIONS, so far.
    unsafe_methods: Arc<AtomicU64>,
    _thread: ServerThread,
}

impl JsonService {
    /// Listening (IPv4 and IPv6) when it returns.
    pub fn start(ns: &Netns, port: u16, build: Build) -> JsonService {
        let unsafe_methods = Arc::new(AtomicU64::new(0));
        let counted = unsafe_methods.clone();
        // Each instance counts from its own start, as real counters do.
        let counter = Arc::new(AtomicU64::new(noise() % 1_000_000));
        let thread = ServerThread::start(ns, port, move |l| serve(l, build, counter, counted));
        JsonService { unsafe_methods, _thread: thread }
    }

    /// Requests received with a method other than GET, HEAD and OPTIONS.
    pub fn unsafe_requests(&self) -> u64 {
        self.unsafe_methods.load(Ordering::Relaxed)
    }
}

async fn serve(
    listener: TcpListener,
    build: Build,
    counter: Arc<AtomicU64>,
    unsafe_methods: Arc<AtomicU64>,
) {
    loop {
        let (stream, _) = next_connection(&listener).await;
        let (counter, unsafe_methods) = (counter.clone(), unsafe_methods.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                if !matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS") {
                    unsafe_methods.fetch_add(1, Ordering::Relaxed);
                }
                answer(req, build, counter.clone())
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    build: Build,
    counter: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let n: u64 = path.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let candidate = build == Build::Candidate;
    let mut fields: Vec<(String, String)> = vec![
        ("requestId".into(), format!("\"{:016x}\"", noise())),
        ("ts".into(), format!("\"{:?}\"", std::time::SystemTime::now())),
        ("served".into(), counter.fetch_add(1, Ordering::Relaxed).to_string()),
    ];
    if path.starts_with("/users/") {
        let id = if candidate { format!("\"{n}\"") } else { n.to_string() };
        fields.push(("id".into(), id));
        fields.push(("name".into(), format!("\"user {n}\"")));
    } else if path.starts_with("/orders/") {
        fields.push(("order".into(), n.to_string()));
        if !candidate {
            fields.push(("total".into(), format!("{}.5", n * 3)));
        }
    } else {
        if path == "/slow" && candidate {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        fields.push(("ok".into(), "true".into()));
    }
    // Keys in another order every time: a JSON object's order is not part of its meaning.
    let turn = noise() as usize % fields.len();
    fields.rotate_left(turn);
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    let body = format!("{{{}}}", body.join(","));
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", format!("{:08x}", noise() as u32))
        .body(Full::new(Bytes::from(body)))
        .expect("valid response"))
}

/// Random enough for noise (splitmix64 over the clock and a counter): no dependency.
fn noise() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ nanos;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
