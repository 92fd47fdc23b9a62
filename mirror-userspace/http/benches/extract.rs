//! Reassembly plus framing on one core: small keep-alive GETs (requests per second) and
//! 64 KiB POSTs cut into MSS-sized segments (body bytes per second). Segments are built
//! before timing; each iteration runs a fresh extractor over all of them.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mirror_capture::Segment;
use mirror_flow::ReassemblyConfig;
use mirror_http::{extractor, HttpConfig, HttpEvent};
use mirror_testkit::Conversation;

const MSS: usize = 1448;

/// `conns` keep-alive connections, each sending `per_conn` requests built by `request`,
/// interleaved across connections like real traffic.
fn workload(conns: u16, per_conn: usize, request: impl Fn(usize) -> Vec<u8>) -> Vec<Segment> {
    let server = "10.0.0.2:8080".parse().unwrap();
    let mut convs: Vec<Conversation> = (0..conns)
        .map(|i| {
            Conversation::new(
                format!("10.0.1.1:{}", 20000 + i).parse().unwrap(),
                server,
                i as u32 * 7,
                1,
            )
        })
        .collect();
    let mut segs: Vec<Segment> = convs.iter_mut().flat_map(|c| c.open()).collect();
    for r in 0..per_conn {
        for c in &mut convs {
            segs.extend(c.request(&request(r), MSS));
        }
    }
    segs
}

fn run(segs: &[Segment]) -> usize {
    let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
    let mut events = Vec::with_capacity(1024);
    let mut requests = 0;
    for s in segs {
        x.push(s, &mut events);
        requests += events.iter().filter(|e| matches!(e, HttpEvent::Request(_))).count();
        events.clear();
    }
    requests
}

fn small_gets(c: &mut Criterion) {
    let (conns, per_conn) = (100, 100);
    let segs = workload(conns, per_conn, |i| {
        format!("GET /api/v1/items/{i}?q=abc HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n").into_bytes()
    });
    let n = conns as usize * per_conn;
    assert_eq!(run(&segs), n);
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_with_input(BenchmarkId::new("small_get", n), &segs, |b, segs| b.iter(|| run(segs)));
    g.finish();
}

fn large_posts(c: &mut Criterion) {
    let (conns, per_conn, body) = (8, 16, 64 * 1024);
    let payload = vec![b'p'; body];
    let segs = workload(conns, per_conn, |i| {
        let head = format!(
            "POST /upload/{i} HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: {body}\r\n\r\n"
        );
        [head.as_bytes(), &payload].concat()
    });
    let n = conns as usize * per_conn;
    assert_eq!(run(&segs), n);
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Bytes((n * body) as u64));
    g.bench_with_input(BenchmarkId::new("post_64k", n), &segs, |b, segs| b.iter(|| run(segs)));
    g.finish();
}

criterion_group!(benches, small_gets, large_posts);
criterion_main!(benches);
