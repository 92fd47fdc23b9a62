//! A server for load: keeps only a digest of every request it gets (method, target, headers,
//! body), counted per digest. Headers the mirror edits (Host, X-Forwarded-For) are left out
//! of the digest and checked against their expected value instead. Comparing the primary's and the shadow's
//! tables counts the copies that arrived byte-exact, at rates and sizes where keeping every
//! request (as `RecordingServer` does) would not fit in memory.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{netns::Netns, server::ServerThread};

/// What a `DigestServer` saw.
#[derive(Clone, Debug, Default)]
pub struct Digests {
    /// Requests per digest (edited headers excluded).
    pub counts: HashMap<u64, u64>,
    /// Requests whose edited headers were not as expected (not in `counts`).
    pub wrong_edits: u64,
}

impl Digests {
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Requests present in both tables (a multiset intersection).
    pub fn common(&self, other: &Digests) -> u64 {
        self.counts.iter().map(|(d, n)| (*n).min(*other.counts.get(d).unwrap_or(&0))).sum()
    }
}

/// Headers a mirror edits: left out of the digest; where a value is given, a request must
/// carry exactly that value (once) to count.
pub type Edited = Vec<(&'static str, Option<String>)>;

/// A running server; stops when dropped.
pub struct DigestServer {
    digests: Arc<Mutex<Digests>>,
    _thread: ServerThread,
}

impl DigestServer {
    /// Listens on `port` (IPv4 and IPv6) in `ns`; returns once listening.
    pub fn start(ns: &Netns, port: u16, edited: Edited) -> DigestServer {
        let digests = Arc::new(Mutex::new(Digests::default()));
        let table = digests.clone();
        let thread =
            ServerThread::start(ns, port, move |l| accept_loop(l, table, Arc::new(edited)));
        DigestServer { digests, _thread: thread }
    }

    /// A snapshot of the table so far.
    pub fn digests(&self) -> Digests {
        self.digests.lock().unwrap().clone()
    }

    /// Forgets everything seen so far (between runs).
    pub fn clear(&self) {
        *self.digests.lock().unwrap() = Digests::default();
    }
}

async fn accept_loop(listener: TcpListener, digests: Arc<Mutex<Digests>>, edited: Arc<Edited>) {
    loop {
        let (stream, _) = crate::server::next_connection(&listener).await;
        let (digests, edited) = (digests.clone(), edited.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| record(req, digests.clone(), edited.clone()));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn record(
    req: Request<Incoming>,
    digests: Arc<Mutex<Digests>>,
    edited: Arc<Edited>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.method().hash(&mut h);
    req.uri().to_string().hash(&mut h);
    for (name, value) in req.headers() {
        if !edited.iter().any(|(e, _)| name == e) {
            name.as_str().hash(&mut h);
            value.as_bytes().hash(&mut h);
        }
    }
    let edits_ok = edited.iter().all(|(name, want)| {
        let got: Vec<_> = req.headers().get_all(*name).iter().collect();
        want.as_ref().is_none_or(|w| got.len() == 1 && got[0].as_bytes() == w.as_bytes())
    });
    let body = req.into_body().collect().await?.to_bytes();
    body.hash(&mut h);
    {
        let mut d = digests.lock().unwrap();
        if edits_ok {
            *d.counts.entry(h.finish()).or_default() += 1;
        } else {
            d.wrong_edits += 1;
        }
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}
