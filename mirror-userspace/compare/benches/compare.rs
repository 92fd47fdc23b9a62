//! One comparison (BENCHMARKS.md, scenario 3): the primary's, the secondary's and the
//! candidate's JSON answers of about 1 KiB and 64 KiB, decoded and diffed pairwise, with the
//! noise of real services (an id, a timestamp, a counter, keys in another order) and one
//! field whose type changed in the candidate.
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mirror_compare::{compare, Answer, CompareRules};
use mirror_http::Head;

fn head() -> Head {
    let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: bench\r\n\
                 Date: Fri, 04 Dec 2026 10:00:00 GMT\r\nX-Request-Id: 7\r\n\r\n";
    let (len, parts) = Head::parse_response(text).unwrap().unwrap();
    parts.with_bytes(Bytes::copy_from_slice(&text[..len]))
}

/// A JSON document of `items` records; `variant` changes the noise, `typed` the candidate's
/// changed field, `reorder` the order of the keys.
fn document(items: usize, variant: u32, typed: bool, reorder: bool) -> Bytes {
    let mut out = format!(
        "{{\"id\":\"{:08x}-aaaa\",\"generated\":\"2026-12-04T10:00:{:02}Z\",\"count\":{},\"items\":[",
        variant.wrapping_mul(2654435761),
        variant % 60,
        items
    );
    for i in 0..items {
        let price = if typed { format!("\"{}.5\"", i) } else { format!("{}.5", i) };
        let item = if reorder {
            format!(
                "{{\"price\":{price},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"],\"sku\":{i}}}"
            )
        } else {
            format!(
                "{{\"sku\":{i},\"name\":\"item {i}\",\"price\":{price},\"tags\":[\"a\",\"b\"]}}"
            )
        };
        out.push_str(&item);
        out.push(if i + 1 < items { ',' } else { ']' });
    }
    out.push('}');
    Bytes::from(out)
}

fn bench(c: &mut Criterion) {
    let h = head();
    let rules = CompareRules::default();
    let mut group = c.benchmark_group("compare");
    for (name, items) in [("1k", 12), ("64k", 800)] {
        let (p, s, cand) = (
            document(items, 1, false, false),
            document(items, 2, false, true),
            document(items, 3, true, false),
        );
        let answer = |body| Answer { head: &h, body, latency_ns: Some(1_000_000) };
        let found = compare(&answer(&p), Some(&answer(&s)), &answer(&cand), &rules);
        assert_eq!(found.candidate.len(), 1, "{name}: {:?}", found.candidate);
        group.bench_with_input(BenchmarkId::new("json", name), &items, |b, _| {
            b.iter(|| compare(&answer(&p), Some(&answer(&s)), &answer(&cand), &rules))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
