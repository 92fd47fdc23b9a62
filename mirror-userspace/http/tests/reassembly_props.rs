//! Property: random valid requests (methods, headers, Content-Length and chunked bodies,
//! pipelined), cut into random segments, reordered and duplicated within a window, come out
//! of reassembly and framing as exactly the original requests, byte for byte.
use mirror_capture::{Direction, Segment};
use mirror_flow::ReassemblyConfig;
use mirror_http::{extractor, HttpConfig, HttpEvent};
use mirror_testkit::Conversation;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Body {
    None,
    Length(Vec<u8>),
    /// Chunk sizes and whether to add a trailer.
    Chunked(Vec<Vec<u8>>, bool),
}

fn body() -> impl Strategy<Value = Body> {
    let bytes = prop::collection::vec(any::<u8>(), 0..3000);
    prop_oneof![
        Just(Body::None),
        bytes.prop_map(Body::Length),
        (prop::collection::vec(prop::collection::vec(any::<u8>(), 1..700), 0..5), any::<bool>())
            .prop_map(|(chunks, trailer)| Body::Chunked(chunks, trailer)),
    ]
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method =
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]);
    let path = "/[a-z0-9/._-]{0,40}(\\?[a-z0-9=&]{0,20})?";
    let header = ("X-[A-Za-z0-9-]{1,16}", "[ -~]{0,60}");
    let headers = prop::collection::vec(header, 0..6);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]);
    (method, path, headers, body(), version).prop_map(|(method, path, headers, body, version)| {
        let mut head = format!("{method} {path} {version}\r\nHost: svc:8080\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {}\r\n", value.trim()));
        }
        let mut out = Vec::new();
        match body {
            Body::None => {
                head.push_str("\r\n");
                out.extend_from_slice(head.as_bytes());
            }
            Body::Length(b) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(&b);
            }
            Body::Chunked(chunks, trailer) => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(head.as_bytes());
                for c in chunks {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(&c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if trailer {
                    out.extend_from_slice(b"X-Checksum: 42\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    })
}

/// Segments in a perturbed order: each moved up to `window` places, some sent twice.
fn perturb(
    mut segs: Vec<Segment>,
    swaps: &[(usize, usize)],
    dups: &[usize],
    window: usize,
) -> Vec<Segment> {
    for &(i, k) in swaps {
        if segs.is_empty() {
            break;
        }
        let i = i % segs.len();
        let j = (i + k % window.max(1)).min(segs.len() - 1);
        segs.swap(i, j);
    }
    for &d in dups {
        if segs.is_empty() {
            break;
        }
        let i = d % segs.len();
        let copy = segs[i].clone();
        let at = (i + d % window.max(1)).min(segs.len());
        segs.insert(at, copy);
    }
    segs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_survive_segmentation_reordering_and_duplication(
        requests in prop::collection::vec(request(), 1..12),
        mss in 1usize..2000,
        isn in any::<u32>(),
        swaps in prop::collection::vec((any::<usize>(), any::<usize>()), 0..40),
        dups in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let stream: Vec<u8> = requests.concat();
        let mut conv = Conversation::new(
            "10.1.1.1:40000".parse().unwrap(),
            "10.1.1.2:8080".parse().unwrap(),
            isn,
            1,
        );
        let mut segs = vec![conv.open().remove(0)];
        segs.extend(perturb(conv.request(&stream, mss), &swaps, &dups, 8));
        segs.push(conv.fin(Direction::Request));

        let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
        let mut events = Vec::new();
        for s in &segs {
            x.push(s, &mut events);
        }
        let got: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Request(r) => Some(r.to_bytes()),
                _ => None,
            })
            .collect();
        prop_assert_eq!(got, requests);
        let stats = x.shared().stats;
        prop_assert_eq!(stats.lost_messages + stats.malformed_requests + stats.incomplete_at_end, 0);
        prop_assert_eq!(x.stats().gap_bytes, 0);
    }
}
