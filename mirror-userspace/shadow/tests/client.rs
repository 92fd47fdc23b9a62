//! The shadow client in process, against real local TCP servers: every outcome reaches the
//! result sink keyed by the copy's id (with the response when asked for), each limit (queue,
//! byte budget, rate, timeout) drops what it must and says why, and shadows that do not take
//! pipelining (closing after a response, answering out of order, resetting) turn it off
//! without losing more than the copies counted as lost.
use std::{
    fmt,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use bytes::Bytes;
use mirror_shadow::{
    Answer, CopyInfo, DropReason, Limits, OwnSockets, ResultSink, ShadowClient, ShadowOptions,
    ShadowRequest,
};
use mirror_testkit::TestShadow;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{mpsc, watch},
};

/// What the sink was told, in order.
#[derive(Debug, PartialEq)]
enum Told {
    Answered { id: u64, status: u16, body: Option<Bytes> },
    Dropped { id: u64, reason: DropReason },
}

/// Tells the test every outcome, the queue's depth as it changes, and fallbacks.
struct Recorder(mpsc::UnboundedSender<Told>, watch::Sender<i64>, watch::Sender<u32>);

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

    fn pipelining_off(&self, _: &str, _: &dyn fmt::Display) {
        self.2.send_modify(|n| *n += 1);
    }
}

/// A loopback shadow answering `hello` to every request, or never (`silent`).
async fn server(silent: bool) -> SocketAddr {
    let reply: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    TestShadow::start((!silent).then_some(reply)).await.addr
}

fn copy_of(method: &str, body: &'static [u8]) -> ShadowRequest {
    let head = format!(
        "{method} /x HTTP/1.1\r\nHost: svc-shadow:80\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    ShadowRequest {
        head: head.into(),
        body: Bytes::from_static(body),
        head_only: method == "HEAD",
        last_on_connection: false,
        idempotent: method != "POST",
    }
}

fn copy() -> ShadowRequest {
    copy_of("GET", b"")
}

struct Started {
    client: ShadowClient,
    told: mpsc::UnboundedReceiver<Told>,
    depth: watch::Receiver<i64>,
    fallbacks: watch::Receiver<u32>,
}

fn start(addr: SocketAddr, limits: Limits, keep_body: Option<usize>) -> Started {
    let (tx, told) = mpsc::unbounded_channel();
    let (depth_tx, depth) = watch::channel(0);
    let (fallback_tx, fallbacks) = watch::channel(0);
    let options = ShadowOptions {
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        unfinished_streams: Default::default(),
        own: OwnSockets::default(),
        mark: 0,
        tls: None,
        label_copies: false,
        keep_body,
        sink: Arc::new(Recorder(tx, depth_tx, fallback_tx)),
    };
    let uri = format!("http://{addr}").parse().unwrap();
    Started { client: ShadowClient::start(&uri, &limits, options), told, depth, fallbacks }
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
            client.offer(id, copy()).unwrap();
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
    client.offer(7, copy()).unwrap();
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
    let Started { client, told: mut rx, mut depth, .. } = start(addr, limits, None);
    client.offer(1, copy()).unwrap();
    // Copy 1 leaves the queue for the slot (depth back to 0) before the queue counts.
    depth.wait_for(|d| *d == 0).await.unwrap();
    let results: Vec<_> = (2..=6).map(|id| client.offer(id, copy())).collect();
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert_eq!(results[2..], [Err(DropReason::QueueFull); 3]);
    let got = told(&mut rx, 3).await;
    assert_eq!(got[0], Told::Dropped { id: 4, reason: DropReason::QueueFull });

    let post = copy_of("POST", &[b'x'; 40]);
    let max_queued_bytes = post.len() * 3 / 2;
    let limits = Limits { max_queued_bytes, timeout: Duration::from_secs(30), ..Limits::default() };
    let Started { client, told: mut rx, .. } = start(addr, limits, None);
    assert_eq!(client.offer(1, post.clone()), Ok(()));
    assert_eq!(client.offer(2, post), Err(DropReason::ByteBudget));
    assert_eq!(told(&mut rx, 1).await, [Told::Dropped { id: 2, reason: DropReason::ByteBudget }]);
}

#[tokio::test]
async fn the_rate_limit_and_the_timeout_drop_and_say_why() {
    let addr = server(true).await;
    let limits =
        Limits { rate_limit: Some(1.0), timeout: Duration::from_millis(300), ..Limits::default() };
    let Started { client, told: mut rx, .. } = start(addr, limits, None);
    let results: Vec<_> = (1..=4).map(|id| client.offer(id, copy())).collect();
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

/// How a test shadow treats pipelined requests.
#[derive(Clone, Copy)]
enum Pipelining {
    /// Answers the first request of a connection, then closes it (no `Connection: close`).
    ClosesAfterFirst,
    /// Answers the requests of each read in reverse order.
    Reverses,
    /// Resets a connection when one read holds more than one request.
    Resets,
}

/// A loopback shadow answering `hello` (no body to HEAD) as `how` says; every request it
/// reads is counted in the returned channel.
async fn misbehaving(how: Pipelining) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 8192]);
                while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut methods = Vec::new();
                    // The copies here have empty bodies, apart from Content-Length: 0.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        methods.push(head.split(' ').next().unwrap_or("").to_owned());
                        let _ = seen.send(head);
                    }
                    let reply = |m: &str| {
                        let body = if m == "HEAD" { "" } else { "hello" };
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{body}")
                    };
                    let out: String = match how {
                        Pipelining::ClosesAfterFirst => {
                            let _ = conn.write_all(reply(&methods[0]).as_bytes()).await;
                            return;
                        }
                        Pipelining::Reverses => methods.iter().rev().map(|m| reply(m)).collect(),
                        Pipelining::Resets if methods.len() > 1 => {
                            // Linger 0: the close sends a reset (it cannot block).
                            #[allow(deprecated)]
                            let _ = conn.set_linger(Some(Duration::ZERO));
                            return;
                        }
                        Pipelining::Resets => methods.iter().map(|m| reply(m)).collect(),
                    };
                    if conn.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Offers `copies` at once (all waiting when the first connection opens, so they go out in
/// one pipelined write), then `more` one by one; every copy's outcome is told once. Returns
/// the outcomes and what the shadow received.
async fn through(how: Pipelining, copies: &[&str], more: usize) -> (Vec<Told>, usize, u32) {
    let (addr, mut seen) = misbehaving(how).await;
    let limits = Limits { pipeline: 8, max_in_flight: 8, ..Limits::default() };
    let Started { client, told: mut rx, mut fallbacks, .. } = start(addr, limits, None);
    for (id, method) in copies.iter().enumerate() {
        client.offer(id as u64, copy_of(method, b"")).unwrap();
    }
    let mut got = told(&mut rx, copies.len()).await;
    let fell = fallbacks.wait_for(|n| *n > 0);
    tokio::time::timeout(Duration::from_secs(10), fell).await.expect("a fallback").unwrap();
    for id in 0..more {
        client.offer((copies.len() + id) as u64, copy()).unwrap();
        got.extend(told(&mut rx, 1).await);
    }
    assert!(rx.try_recv().is_err(), "one outcome per copy");
    let mut received = 0;
    while seen.try_recv().is_ok() {
        received += 1;
    }
    let fell = *fallbacks.borrow();
    (got, received, fell)
}

fn answered(told: &[Told]) -> usize {
    told.iter().filter(|t| matches!(t, Told::Answered { .. })).count()
}

/// A shadow that closes after its first response: pipelining turns off once, the idempotent
/// copies it never answered are sent again, and the one POST among them is counted as lost.
#[tokio::test]
async fn a_shadow_closing_after_the_first_response_gets_one_copy_at_a_time() {
    let copies = ["GET", "GET", "POST", "GET", "HEAD", "GET"];
    let (told, received, fell) = through(Pipelining::ClosesAfterFirst, &copies, 5).await;
    assert_eq!(fell, 1, "turned off once");
    let lost = Told::Dropped { id: 2, reason: DropReason::Error };
    assert_eq!(told.iter().filter(|t| **t != lost).count(), answered(&told), "{told:?}");
    assert_eq!(answered(&told), copies.len() - 1 + 5, "{told:?}");
    assert!(received >= answered(&told), "the shadow saw every answered copy");
}

/// A shadow answering a HEAD and a GET in reverse order: the GET's response is taken for the
/// HEAD's, and what follows is no response: pipelining turns off, the GET is counted.
#[tokio::test]
async fn a_shadow_answering_out_of_order_gets_one_copy_at_a_time() {
    let (told, received, fell) = through(Pipelining::Reverses, &["HEAD", "GET"], 5).await;
    assert_eq!(fell, 1);
    assert_eq!(told[1], Told::Dropped { id: 1, reason: DropReason::Error }, "{told:?}");
    assert_eq!(answered(&told), 1 + 5, "{told:?}");
    assert_eq!(received, 2 + 5);
}

/// A shadow resetting pipelined connections: pipelining turns off, the idempotent copies are
/// sent again one at a time, nothing is lost.
#[tokio::test]
async fn a_shadow_resetting_pipelined_connections_gets_one_copy_at_a_time() {
    let (told, _, fell) = through(Pipelining::Resets, &["GET"; 6], 3).await;
    assert_eq!(fell, 1);
    assert_eq!(answered(&told), 6 + 3, "{told:?}");
}
