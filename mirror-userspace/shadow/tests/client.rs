//! The shadow client in process, against real local TCP servers: every outcome reaches the
//! result sink keyed by the copy's id (with the response when asked for), and each limit
//! (queue, byte budget, rate, timeout) drops what it must and says why.
use std::{
    fmt,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mirror_shadow::{
    Answer, CopyInfo, DropReason, Limits, OwnSockets, ResultSink, ShadowClient, ShadowOptions,
};
use mirror_testkit::TestShadow;
use tokio::sync::{mpsc, watch};

/// What the sink was told, in order.
#[derive(Debug, PartialEq)]
enum Told {
    Answered { id: u64, status: u16, body: Option<Bytes> },
    Dropped { id: u64, reason: DropReason },
}

/// Tells the test every outcome, and the queue's depth as it changes.
struct Recorder(mpsc::UnboundedSender<Told>, watch::Sender<i64>);

impl ResultSink for Recorder {
    fn answered(&self, _: &str, copy: &CopyInfo, answer: &Answer) {
        let body = answer.response.as_ref().map(|r| r.body.clone());
        let _ = self.0.send(Told::Answered { id: copy.id, status: answer.status, body });
    }

    fn dropped(&self, _: &str, copy: &CopyInfo, reason: DropReason, _: &dyn fmt::Display) {
        let _ = self.0.send(Told::Dropped { id: copy.id, reason });
    }

    fn queue_depth(&self, _: &str, delta: i64) {
        self.1.send_modify(|depth| *depth += delta);
    }
}

/// A loopback shadow answering `hello` to every request, or never (`silent`).
async fn server(silent: bool) -> SocketAddr {
    let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    TestShadow::start((!silent).then_some(reply)).await.addr
}

fn copy(addr: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}/x"))
        .header("host", "svc-shadow:80")
        .body(Full::default())
        .unwrap()
}

struct Started {
    client: ShadowClient,
    told: mpsc::UnboundedReceiver<Told>,
    depth: watch::Receiver<i64>,
}

fn start(addr: SocketAddr, limits: Limits, keep_body: Option<usize>) -> Started {
    let (tx, told) = mpsc::unbounded_channel();
    let (depth_tx, depth) = watch::channel(0);
    let options = ShadowOptions {
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        own: OwnSockets::default(),
        mark: 0,
        label_copies: false,
        keep_body,
        sink: Arc::new(Recorder(tx, depth_tx)),
    };
    let uri = format!("http://{addr}").parse().unwrap();
    Started { client: ShadowClient::start(&uri, &limits, options), told, depth }
}

async fn told(rx: &mut mpsc::UnboundedReceiver<Told>, n: usize) -> Vec<Told> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
    }
    out.sort_by_key(|t| match t {
        Told::Answered { id, .. } | Told::Dropped { id, .. } => *id,
    });
    out
}

#[tokio::test]
async fn outcomes_reach_the_sink_by_copy_id_one_at_a_time_and_pipelined() {
    let addr = server(false).await;
    for pipeline in [1, 4] {
        let limits = Limits { pipeline, max_in_flight: 8, ..Limits::default() };
        let Started { client, told: mut rx, .. } = start(addr, limits, Some(3));
        for id in 1..=20 {
            client.offer(id, copy(addr), 10).unwrap();
        }
        let got = told(&mut rx, 20).await;
        for (i, t) in got.iter().enumerate() {
            let body = Some(Bytes::from_static(b"hel")); // kept up to the cap
            assert_eq!(
                t,
                &Told::Answered { id: i as u64 + 1, status: 200, body },
                "pipeline {pipeline}"
            );
        }
    }
    // Without keep_body only status and timing travel.
    let Started { client, told: mut rx, .. } = start(addr, Limits::default(), None);
    client.offer(7, copy(addr), 10).unwrap();
    assert_eq!(told(&mut rx, 1).await, [Told::Answered { id: 7, status: 200, body: None }]);
}

#[tokio::test]
async fn a_full_queue_and_the_byte_budget_drop_and_say_why() {
    let addr = server(true).await;
    // One slot, taken by the first copy (never answered); two wait; the rest find the
    // queue full.
    let limits = Limits {
        max_in_flight: 1,
        queue_length: 2,
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let Started { client, told: mut rx, mut depth } = start(addr, limits, None);
    client.offer(1, copy(addr), 10).unwrap();
    // Copy 1 leaves the queue for the slot (depth back to 0) before the queue counts.
    depth.wait_for(|d| *d == 0).await.unwrap();
    let results: Vec<_> = (2..=6).map(|id| client.offer(id, copy(addr), 10)).collect();
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert_eq!(results[2..], [Err(DropReason::QueueFull); 3]);
    let got = told(&mut rx, 3).await;
    assert_eq!(got[0], Told::Dropped { id: 4, reason: DropReason::QueueFull });

    let limits =
        Limits { max_queued_bytes: 100, timeout: Duration::from_secs(30), ..Limits::default() };
    let Started { client, told: mut rx, .. } = start(addr, limits, None);
    assert_eq!(client.offer(1, copy(addr), 60), Ok(()));
    assert_eq!(client.offer(2, copy(addr), 60), Err(DropReason::ByteBudget));
    assert_eq!(told(&mut rx, 1).await, [Told::Dropped { id: 2, reason: DropReason::ByteBudget }]);
}

#[tokio::test]
async fn the_rate_limit_and_the_timeout_drop_and_say_why() {
    let addr = server(true).await;
    let limits =
        Limits { rate_limit: Some(1.0), timeout: Duration::from_millis(300), ..Limits::default() };
    let Started { client, told: mut rx, .. } = start(addr, limits, None);
    let results: Vec<_> = (1..=4).map(|id| client.offer(id, copy(addr), 10)).collect();
    assert_eq!(
        results,
        [
            Ok(()),
            Err(DropReason::RateLimited),
            Err(DropReason::RateLimited),
            Err(DropReason::RateLimited)
        ]
    );
    // The one copy that went out is never answered: it times out.
    let got = told(&mut rx, 4).await;
    assert_eq!(got[0], Told::Dropped { id: 1, reason: DropReason::Timeout });
    assert_eq!(got[3], Told::Dropped { id: 4, reason: DropReason::RateLimited });
}
