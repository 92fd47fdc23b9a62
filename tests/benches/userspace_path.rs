//! The agent's userspace path alone, from captured segments to copies answered by a shadow:
//! heap allocations per request in steady state (a counting allocator), and copies per
//! second with one and two workers. Run by `cargo xtask bench userspace_path`; no root.
//!
//! Traffic is synthetic and held in memory (keep-alive connections of small GETs and POSTs
//! with their responses, as the tap would deliver them), so only the pipeline is measured:
//! reassembly, framing, match, sample, rewrite, the shadow client. The shadow is a sink on
//! loopback that answers every request with a canned response from its own thread.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::SocketAddr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use mirror_agent::pipeline::{MirrorSettings, Mirroring, ShadowTarget, Shared};
use mirror_capture::Segment;
use mirror_shadow::Limits;
use mirror_testkit::Conversation;
use mirror_tests::bench::{self, Spread};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counts the allocations of the threads that ask for it.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the thread-local
// counters are const-initialised `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by this thread while `f` runs.
async fn allocations<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|on| on.set(true));
    let out = f.await;
    COUNTING.with(|on| on.set(false));
    (out, ALLOCATIONS.with(Cell::get) - before)
}

const CONNECTIONS: usize = 32;
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// `rounds` requests on each of `CONNECTIONS` keep-alive connections (one in four a POST
/// with a small body), each answered by the primary, interleaved across connections as the
/// tap would see them. `first_port` keeps connections of different calls apart.
fn traffic(rounds: usize, first_port: u16) -> (Vec<Segment>, usize) {
    let server: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    let mut convs: Vec<Conversation> = (0..CONNECTIONS)
        .map(|i| {
            let client = SocketAddr::new("10.0.0.1".parse().unwrap(), first_port + i as u16);
            Conversation::new(client, server, 1000, 5000)
        })
        .collect();
    let mut segments: Vec<Segment> = convs.iter_mut().flat_map(Conversation::open).collect();
    let mut requests = 0;
    for round in 0..rounds {
        for (i, c) in convs.iter_mut().enumerate() {
            let request = if (round + i) % 4 == 0 {
                format!(
                    "POST /api/orders/{round} HTTP/1.1\r\nHost: shop:8080\r\nUser-Agent: bench\r\n\
                     Accept: application/json\r\nContent-Type: application/json\r\n\
                     Content-Length: 24\r\nX-Request-Id: {i}-{round}\r\n\r\n{{\"item\":12345,\"qty\":1}}\n\n"
                )
            } else {
                format!(
                    "GET /api/items/{round}?page={i} HTTP/1.1\r\nHost: shop:8080\r\n\
                     User-Agent: bench\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n\
                     X-Request-Id: {i}-{round}\r\nCookie: session=abcdef0123456789\r\n\r\n"
                )
            };
            segments.extend(c.request(request.as_bytes(), 1448));
            segments.extend(c.response(RESPONSE, 1448));
            requests += 1;
        }
    }
    (segments, requests)
}

/// A shadow on loopback, on its own thread: answers each request head it reads (the copies
/// here are GETs, and POSTs whose bodies end in an empty line of their own) with `RESPONSE`.
fn sink_shadow() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut out = Vec::new();
                    let mut tail = 0usize; // bytes of a possible "\r\n\r\n" across reads
                    while let Ok(n @ 1..) = conn.read(&mut buf[tail..]).await {
                        let end = tail + n;
                        let heads = buf[..end].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        tail = 3.min(end);
                        buf.copy_within(end - tail..end, 0);
                        // A POST's body ends with "\n\n", not "\r\n\r\n": one match each.
                        out.clear();
                        (0..heads).for_each(|_| out.extend_from_slice(RESPONSE));
                        if conn.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    rx.recv().unwrap()
}

fn settings(shadow: SocketAddr) -> MirrorSettings {
    MirrorSettings {
        shadows: vec![ShadowTarget {
            uri: format!("http://{shadow}").parse().unwrap(),
            name: "sink".into(),
            percent: 100.0,
            tls: None,
        }],
        limits: Limits { queue_length: 1 << 16, max_queued_bytes: 1 << 30, ..Limits::default() },
        ..MirrorSettings::default()
    }
}

/// Feeds `segments` in batches as the ring would, letting the shadow client run between
/// batches, and waits until `expected` copies were answered in all.
async fn feed(mirroring: &mut Mirroring, segments: Vec<Segment>, expected: u64) {
    let mut segments = segments.into_iter();
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.extend(segments.by_ref().take(256));
        if batch.is_empty() {
            break;
        }
        mirroring.segments(&mut batch);
        tokio::task::yield_now().await;
    }
    while answered(mirroring) < expected {
        tokio::task::yield_now().await;
    }
}

fn answered(mirroring: &Mirroring) -> u64 {
    COUNTING.with(|on| {
        let was = on.replace(false);
        let n = mirroring.summary(None).shadows[0].answered.iter().sum();
        on.set(was);
        n
    })
}

/// Allocations per request once warm: a first pass over fresh connections, then more
/// rounds on the same connections, counted.
fn allocations_per_request(shadow: SocketAddr) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut mirroring = Mirroring::start(settings(shadow), None);
        let (all, _) = traffic(400, 20_000);
        // The first quarter warms up (connections opened, buffers grown); the rest counts.
        let split = all.len() / 4;
        let (warm, counted) = (all[..split].to_vec(), all[split..].to_vec());
        let warm_requests = warm.iter().filter(|s| is_request_start(s)).count() as u64;
        let counted_requests = counted.iter().filter(|s| is_request_start(s)).count() as u64;
        feed(&mut mirroring, warm, warm_requests).await;
        let ((), n) =
            allocations(feed(&mut mirroring, counted, warm_requests + counted_requests)).await;
        n as f64 / counted_requests as f64
    })
}

fn is_request_start(s: &Segment) -> bool {
    s.direction == mirror_capture::Direction::Request
        && (s.payload.starts_with(b"GET ") || s.payload.starts_with(b"POST "))
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Through `workers` workers, each with its own traffic and shadow (and its own counters,
/// which tell it when its copies are all answered): copies per second, and the workers' CPU
/// per copy in microseconds (their threads' own time: what scales with cores).
fn copies_per_second(workers: usize, shadows: &[SocketAddr]) -> (f64, f64) {
    let start = Arc::new(Barrier::new(workers + 1));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (shared, start, shadow) = (Shared::new(None, 1), start.clone(), shadows[w]);
            std::thread::spawn(move || {
                let (segments, requests) = traffic(300, 20_000 + (w * 1000) as u16);
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let mut mirroring = Mirroring::worker(settings(shadow), &shared, w);
                    start.wait();
                    let cpu = thread_cpu();
                    feed(&mut mirroring, segments, requests as u64).await;
                    (requests, thread_cpu() - cpu)
                })
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let done: Vec<(usize, Duration)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = began.elapsed().as_secs_f64();
    let copies: usize = done.iter().map(|(n, _)| n).sum();
    let cpu: f64 = done.iter().map(|(_, t)| t.as_secs_f64()).sum();
    (copies as f64 / elapsed, 1e6 * cpu / copies as f64)
}

fn main() {
    let shadows = [sink_shadow(), sink_shadow()];
    let allocs = Spread::of((0..3).map(|_| allocations_per_request(shadows[0])));
    let one: Vec<(f64, f64)> = (0..5).map(|_| copies_per_second(1, &shadows)).collect();
    let two: Vec<(f64, f64)> = (0..5).map(|_| copies_per_second(2, &shadows)).collect();
    let rate = |runs: &[(f64, f64)]| Spread::of(runs.iter().map(|(r, _)| r / 1000.0));
    let cpu = |runs: &[(f64, f64)]| Spread::of(runs.iter().map(|(_, c)| *c));
    let (rate1, rate2) = (rate(&one), rate(&two));
    let table = format!(
        "| measurement | median (min-max) |\n|---|---|\n\
         | heap allocations per request, warm (capture to answered copy, one worker), 3 runs | {} |\n\
         | copies per second, 1 worker (thousands), 5 runs | {} |\n\
         | copies per second, 2 workers (thousands), 5 runs | {} |\n\
         | 2 workers / 1 worker, copies per second | {:.2} |\n\
         | worker CPU per copy, 1 worker (µs) | {} |\n\
         | worker CPU per copy, 2 workers (µs) | {} |\n",
        allocs.show(2),
        rate1.show(1),
        rate2.show(1),
        rate2.median / rate1.median,
        cpu(&one).show(2),
        cpu(&two).show(2),
    );
    bench::report("userspace_path", &table);
}
