//! The HTTP and TCP cases, each built from explicit segments through the whole
//! reassembly + framing pipeline.
use std::net::SocketAddr;

use super::*;
use mirror_capture::{Direction, Segment};
use mirror_flow::ReassemblyConfig;
use mirror_testkit::Conversation;

const MSS: usize = 1448;

fn conv(port: u16) -> Conversation {
    let client: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
    Conversation::new(client, "10.0.0.2:8080".parse().unwrap(), 1000, 5000)
}

struct Run {
    x: HttpExtractor,
    events: Vec<HttpEvent>,
}

impl Run {
    fn new() -> Run {
        Run::with(ReassemblyConfig::default(), HttpConfig::default())
    }

    fn with(r: ReassemblyConfig, h: HttpConfig) -> Run {
        Run { x: extractor(r, h), events: Vec::new() }
    }

    fn feed(&mut self, segs: impl IntoIterator<Item = Segment>) -> &mut Self {
        for s in segs {
            self.x.push(&s, &mut self.events);
        }
        self
    }

    fn requests(&self) -> Vec<&HttpRequest> {
        self.events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn responses(&self) -> Vec<&HttpResponse> {
        self.events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Response(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn request_bytes(&self) -> Vec<Vec<u8>> {
        self.requests().iter().map(|r| r.to_bytes()).collect()
    }

    fn stats(&self) -> HttpStats {
        self.x.shared().stats
    }
}

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn content_length_and_bodyless_requests_with_their_responses() {
    let mut c = conv(1);
    let get = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
    let post = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(get, MSS)).feed(c.response(ok("x").as_bytes(), MSS));
    run.feed(c.request(post, 7)).feed(c.response(ok("yy").as_bytes(), 3)).feed(c.close());
    assert_eq!(run.request_bytes(), vec![get.to_vec(), post.to_vec()]);
    let reqs = run.requests();
    assert_eq!((reqs[1].head.method(), reqs[1].head.target()), (Some("POST"), Some("/b")));
    assert_eq!(&reqs[1].body[..], b"hello");
    let resps = run.responses();
    assert_eq!(resps.len(), 2);
    assert_eq!(resps.iter().map(|r| r.request_id).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
    assert_eq!(&resps[1].body[..], b"yy");
    assert_eq!(run.x.connections(), 0, "closed by both FINs");
}

#[test]
fn chunked_request_with_trailers() {
    let mut c = conv(2);
    let req = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nDigest: abc\r\n\r\n";
    let next = b"GET /next HTTP/1.1\r\n\r\n";
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(&[&req[..], &next[..]].concat(), 9));
    assert_eq!(run.request_bytes(), vec![req.to_vec(), next.to_vec()]);
}

#[test]
fn chunked_response_with_trailers_then_a_malformed_response() {
    let mut c = conv(3);
    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(b"GET /a HTTP/1.1\r\n\r\n", MSS));
    run.feed(c.response(chunked, 7));
    run.feed(c.request(b"GET /b HTTP/1.1\r\n\r\n", MSS));
    run.feed(c.response(b"HTTP/1.1 abc\x01 broken\r\n\r\n", MSS));
    run.feed(c.request(b"GET /c HTTP/1.1\r\n\r\n", MSS));
    run.feed(c.response(&ok("c").into_bytes(), MSS));
    let resps = run.responses();
    let bodies: Vec<Vec<u8>> =
        resps.iter().map(|r| [&r.head.bytes()[..], &r.body[..]].concat()).collect();
    assert_eq!(bodies, vec![chunked.to_vec(), ok("c").into_bytes()]);
    assert_eq!(resps[0].request_id, Some(0));
    assert_eq!(run.stats().malformed_responses, 1);
    assert_eq!(run.requests().len(), 3);
}

#[test]
fn pipelined_requests_in_one_segment_and_http_1_0() {
    let mut c = conv(3);
    let a = b"GET /1 HTTP/1.1\r\n\r\n";
    let b = b"POST /2 HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
    let d = b"HEAD /3 HTTP/1.1\r\n\r\n";
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(&[&a[..], &b[..], &d[..]].concat(), MSS));
    assert_eq!(run.request_bytes(), vec![a.to_vec(), b.to_vec(), d.to_vec()]);
    assert_eq!(run.requests()[1].head.version(), 0);
    // HEAD's response has no body even though it declares a length; the next is paired too.
    let resp = "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na".to_owned()
        + &ok("bb")
        + "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    run.feed(c.response(resp.as_bytes(), MSS));
    let resps = run.responses();
    assert_eq!(
        resps.iter().map(|r| r.request_id).collect::<Vec<_>>(),
        vec![Some(0), Some(1), Some(2)]
    );
    assert!(resps[2].body.is_empty());
}

#[test]
fn expect_100_continue_skips_the_interim_response() {
    let mut c = conv(4);
    let head = b"PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(head, MSS));
    run.feed(c.response(b"HTTP/1.1 100 Continue\r\n\r\n", MSS));
    run.feed(c.request(b"body", MSS));
    run.feed(c.response(ok("done").as_bytes(), MSS));
    assert_eq!(run.request_bytes(), vec![[&head[..], b"body"].concat()]);
    let resps = run.responses();
    assert_eq!(resps.len(), 1);
    assert_eq!((resps[0].head.status(), resps[0].request_id), (Some(200), Some(0)));
    assert_eq!(run.stats().interim_responses, 1);
}

#[test]
fn bodyless_statuses_and_close_delimited_responses() {
    let mut c = conv(5);
    let mut run = Run::new();
    run.feed(c.open());
    for path in ["/a", "/b", "/c", "/d"] {
        run.feed(c.request(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(), MSS));
    }
    let resp = "HTTP/1.1 204 No Content\r\n\r\n\
                HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n\
                HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
                HTTP/1.1 200 OK\r\n\r\n";
    run.feed(c.response(resp.as_bytes(), MSS));
    run.feed(c.response(b"until the end", 4));
    assert_eq!(run.responses().len(), 2, "the close-delimited body is not complete yet");
    run.feed([c.fin(Direction::Response)]);
    let resps = run.responses();
    assert_eq!(resps.len(), 3);
    assert_eq!(&resps[2].body[..], b"until the end");
    assert_eq!(
        resps.iter().map(|r| r.request_id).collect::<Vec<_>>(),
        vec![Some(0), Some(1), Some(2)]
    );
}

#[test]
fn upgrade_and_connect_stop_extraction() {
    // (An h2c upgrade goes on as HTTP/2: h2::tests.)
    for req in [
        &b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
        &b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut c = conv(6);
        let mut run = Run::new();
        run.feed(c.open()).feed(c.request(req, MSS));
        run.feed(c.response(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", MSS));
        run.feed(c.request(b"GET /not-http HTTP/1.1\r\n\r\n", MSS));
        assert!(run.events.is_empty());
        assert_eq!(run.stats().upgraded_connections, 1);
    }
}

#[test]
fn oversized_messages_are_skipped_and_the_next_one_survives() {
    let mut c = conv(7);
    let http = HttpConfig { max_message_bytes: 100, ..HttpConfig::default() };
    let mut run = Run::with(ReassemblyConfig::default(), http);
    let big = [&b"POST /big HTTP/1.1\r\nContent-Length: 500\r\n\r\n"[..], &[b'x'; 500]].concat();
    let chunked = [
        &b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"c8\r\n",
        &[b'y'; 200],
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    let small = b"GET /small HTTP/1.1\r\n\r\n";
    run.feed(c.open()).feed(c.request(&[&big[..], &chunked, small].concat(), 64));
    assert_eq!(run.request_bytes(), vec![small.to_vec()]);
    assert_eq!(run.stats().oversized_requests, 2);
    assert!(run.x.buffered() < 200, "skipped bodies are not buffered");
}

/// Without response bodies (mirroring): every framing is still followed, so pairing and the
/// lengths are right, but no body byte is copied and no size limit applies.
#[test]
fn response_bodies_are_framed_and_measured_without_a_copy() {
    let mut c = conv(12);
    let http = HttpConfig { max_message_bytes: 100, response_bodies: false };
    let mut run = Run::with(ReassemblyConfig::default(), http);
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let large = ok(&"z".repeat(5000));
    run.feed(c.open());
    for (i, response) in [ok("abc").as_str(), chunked, &large].into_iter().enumerate() {
        run.feed(c.request(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes(), MSS));
        run.feed(c.response(response.as_bytes(), 700));
    }
    run.feed(c.request(b"GET /last HTTP/1.1\r\n\r\n", MSS))
        .feed(c.response(ok("").as_bytes(), MSS));
    let got: Vec<(Option<u64>, u64, usize)> =
        run.responses().iter().map(|r| (r.request_id, r.body_len, r.body.len())).collect();
    assert_eq!(got, [(Some(0), 3, 0), (Some(1), 15, 0), (Some(2), 5000, 0), (Some(3), 0, 0)]);
    assert_eq!(run.stats().oversized_responses, 0);
    assert!(run.x.buffered() < 1000, "no body is buffered");
}

#[test]
fn malformed_heads_are_counted_and_the_stream_resynchronises() {
    let mut c = conv(8);
    let mut run = Run::new();
    run.feed(c.open());
    run.feed(c.request(b"GET /\x01bad HTTP/1.1\r\n\r\n", MSS));
    run.feed(c.request(b"garbage that is not http", MSS));
    run.feed(
        c.request(b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", MSS),
    );
    let good = b"GET /good HTTP/1.1\r\n\r\n";
    run.feed(c.request(good, MSS));
    assert_eq!(run.request_bytes(), vec![good.to_vec()]);
    assert_eq!(run.stats().malformed_requests, 2);
    assert!(run.stats().resync_skipped_bytes > 0);
}

#[test]
fn joining_mid_stream_starts_at_the_first_message() {
    let mut c = conv(9);
    c.open(); // not captured: the connection predates the agent
    let first = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
    let second = b"GET /y HTTP/1.1\r\n\r\n";
    let mut segs = c.request(first, 20);
    let tail = segs.split_off(1); // capture starts inside the first request
    let mut run = Run::new();
    run.feed(tail).feed(c.request(second, MSS));
    run.feed(c.response(ok("r").as_bytes(), MSS));
    assert_eq!(run.request_bytes(), vec![second.to_vec()]);
    assert_eq!(run.x.stats().unsynced_bytes, first.len() as u64 - 20);
    assert_eq!(run.responses().len(), 1);
    drop(segs);
}

#[test]
fn reordered_duplicated_overlapping_and_wrapping_segments() {
    let client: SocketAddr = "10.0.0.1:10".parse().unwrap();
    let mut c = Conversation::new(client, "10.0.0.2:8080".parse().unwrap(), u32::MAX - 50, 7);
    let req = [&b"POST /w HTTP/1.1\r\nContent-Length: 200\r\n\r\n"[..], &[b'z'; 200]].concat();
    let mut segs = c.open();
    let mut data = c.request(&req, 30);
    data.reverse();
    // A conflicting copy of a segment still held out of order: the first arrival wins.
    let mut conflicting = data[2].clone();
    conflicting.payload = bytes::Bytes::from(vec![b'Q'; conflicting.payload.len()]);
    data.insert(3, conflicting);
    data.insert(1, data[4].clone()); // an exact duplicate
    data.push(data[0].clone()); // a retransmission after delivery
    segs.extend(data);
    let mut run = Run::new();
    run.feed(segs);
    assert_eq!(run.request_bytes(), vec![req]);
    assert!(run.x.stats().duplicate_bytes >= 30);
    assert_eq!(run.x.stats().conflicting_overlaps, 1);
}

const GET_B: &[u8] = b"GET /b HTTP/1.1\r\n\r\n";

/// A 300-byte POST in 100-byte segments, the one at `lost` never captured, then GET_B.
fn post_with_lost_segment_then_get(c: &mut Conversation, lost: usize) -> Vec<Segment> {
    let a = [&b"POST /a HTTP/1.1\r\nContent-Length: 300\r\n\r\n"[..], &[b'a'; 300]].concat();
    let mut data = c.request(&a, 100);
    data.remove(lost);
    data.extend(c.request(GET_B, MSS));
    data
}

#[test]
fn a_lost_body_segment_invalidates_only_its_message() {
    let mut c = conv(11);
    let mut segs = c.open();
    segs.extend(post_with_lost_segment_then_get(&mut c, 2));
    segs.extend(c.close());
    let mut run = Run::new();
    run.feed(segs);
    assert_eq!(run.request_bytes(), vec![GET_B.to_vec()]);
    assert_eq!(run.stats().lost_messages, 1);
    assert_eq!(run.x.stats().gap_bytes, 100);
}

#[test]
fn a_lost_head_segment_resynchronises_at_the_next_request() {
    let mut c = conv(12);
    let a = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: h\r\n\r\n";
    let b = b"GET /b HTTP/1.1\r\n\r\n";
    let mut segs = c.open();
    let mut data = c.request(a, 16);
    data.remove(1);
    segs.extend(data);
    segs.extend(c.request(b, MSS));
    segs.extend(c.close());
    let mut run = Run::new();
    run.feed(segs);
    assert_eq!(run.request_bytes(), vec![b.to_vec()]);
    assert_eq!(run.stats().lost_messages, 1);
}

#[test]
fn rst_ends_the_connection() {
    let mut c = conv(13);
    let mut run = Run::new();
    run.feed(c.open()).feed(c.request(b"GET / HTTP/1.1\r\n\r\n", MSS));
    run.feed([c.rst(Direction::Response)]);
    assert_eq!(run.requests().len(), 1);
    assert_eq!(run.x.connections(), 0);
}

#[test]
fn idle_connections_are_evicted() {
    let mut run = Run::new();
    let mut c = conv(14);
    run.feed(c.at(1_000).open()).feed(c.request(b"GET /partial HTTP/1.1\r\n", MSS));
    let mut fresh = conv(15);
    run.feed(fresh.at(200_000_000_000).open());
    run.x.expire(301_000_000_000, &mut run.events);
    assert_eq!(run.x.connections(), 1);
    assert_eq!(run.x.stats().evicted_idle, 1);
    assert_eq!(run.x.buffered(), 0);
}

#[test]
fn connection_and_memory_caps_evict_the_oldest() {
    let config = ReassemblyConfig {
        max_connections: 10,
        max_buffered_total: 1000,
        ..ReassemblyConfig::default()
    };
    let mut run = Run::with(config, HttpConfig::default());
    for port in 0..50 {
        let mut c = conv(1000 + port);
        run.feed(c.open())
            .feed(c.request(b"POST /x HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", MSS));
        run.feed(c.request(&[b'p'; 150], MSS));
        assert!(run.x.connections() <= 10);
        assert!(run.x.buffered() <= 1000);
    }
    let stats = run.x.stats();
    assert!(stats.evicted_connection_cap + stats.evicted_total_memory >= 40, "{stats:?}");
    assert!(stats.evicted_total_memory > 0, "{stats:?}");
}

#[test]
fn the_connection_cap_evicts_the_oldest_connections() {
    let config = ReassemblyConfig { max_connections: 3, ..ReassemblyConfig::default() };
    let mut run = Run::with(config, HttpConfig::default());
    let mut convs: Vec<Conversation> = (0..5).map(|i| conv(2000 + i)).collect();
    for (i, c) in convs.iter_mut().enumerate() {
        run.feed(c.at(1_000 + i as u64).open());
        run.feed(c.request(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\n", MSS));
    }
    assert_eq!(run.x.connections(), 3);
    assert_eq!(run.x.stats().evicted_connection_cap, 2);
    // The three newest survive and complete their requests; the oldest two were forgotten
    // with their heads, so their bodies are mid-stream bytes that start no message.
    for c in convs.iter_mut().rev() {
        run.feed(c.request(b"abc", MSS));
    }
    assert_eq!(run.requests().len(), 3);
    assert!(run.x.stats().unsynced_bytes > 0);
}

#[test]
fn messages_are_capped_at_16_mib_by_default() {
    assert_eq!(HttpConfig::default().max_message_bytes, 16 << 20);
}

#[test]
fn without_acks_a_hole_is_given_up_after_the_hole_timeout() {
    // Only requests are captured, so no ACK tells that the hole will never be filled.
    let mut c = conv(16);
    let mut segs = vec![c.at(1_000_000).open().remove(0)];
    segs.extend(post_with_lost_segment_then_get(&mut c, 1));
    let mut run = Run::new();
    run.feed(segs);
    assert!(run.requests().is_empty(), "waiting for a retransmission");
    run.x.expire(1_500_000_000, &mut run.events);
    assert!(run.requests().is_empty(), "not yet timed out");
    run.x.expire(2_100_000_000, &mut run.events);
    assert_eq!(run.request_bytes(), vec![GET_B.to_vec()]);
    assert_eq!(run.stats().lost_messages, 1);
}

#[test]
fn a_connection_over_its_byte_cap_is_evicted() {
    let config =
        ReassemblyConfig { max_buffered_per_connection: 10_000, ..ReassemblyConfig::default() };
    let mut run = Run::with(config, HttpConfig::default());
    let mut c = conv(17);
    run.feed(c.open());
    run.feed(c.request(b"POST /x HTTP/1.1\r\nContent-Length: 50000\r\n\r\n", MSS));
    run.feed(c.request(&[b'x'; 20_000], MSS));
    assert_eq!(run.x.stats().evicted_connection_memory, 1);
    // Its later segments track it again as joined mid-stream, holding nothing until a
    // message starts.
    assert_eq!(run.x.buffered(), 0);
    assert!(run.x.stats().unsynced_bytes > 0);
}

/// What the kernel does with a skip hint: a segment wholly inside the range is left out, its
/// record says so.
fn elide(seg: Segment, range: &mirror_common::SkipRange) -> Segment {
    let n = range.elided(seg.payload_seq(), seg.payload.len() as u32);
    let mut seg = seg;
    if n > 0 && n == seg.payload.len() as u32 {
        seg.payload = seg.payload.slice(n as usize..);
        seg.chunk_offset += n;
        seg.elided = n;
    }
    seg
}

/// A large response body that nothing keeps is hinted to the source once its head is read;
/// the source leaves the rest out, and the response is still measured whole and paired, as
/// is the next one on the connection.
#[test]
fn unread_response_bodies_are_hinted_and_may_be_left_out() {
    let mut c = conv(9);
    let mut run = Run::with(
        ReassemblyConfig::default(),
        HttpConfig { response_bodies: false, ..Default::default() },
    );
    run.x.set_skip_hints(mirror_flow::MIN_SKIP_HINT);
    let body = "b".repeat(200_000);
    run.feed(c.open()).feed(c.request(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n", MSS));
    let mut segments = c.response(ok(&body).as_bytes(), 16384).into_iter();
    run.feed(segments.next());
    let mut hints = Vec::new();
    run.x.take_hints(&mut hints);
    assert_eq!(hints.len(), 1, "{hints:?}");
    let hint = hints[0];
    assert_eq!((hint.src, hint.dst), (c.server, c.client));
    let range = mirror_common::SkipRange { from: hint.from_seq, until: hint.until_seq };
    let head_len = ok(&body).len() - body.len();
    assert_eq!(range.until.wrapping_sub(range.from) as usize, 200_000 - (16384 - head_len));
    run.feed(segments.map(|s| elide(s, &range)));
    run.x.take_hints(&mut hints);
    assert_eq!(hints.len(), 1, "one hint per body");
    run.feed(c.request(b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n", MSS));
    run.feed(c.response(ok("tail").as_bytes(), MSS)).feed(c.close());
    let responses = run.responses();
    assert_eq!(responses.len(), 2);
    assert_eq!((responses[0].request_id, responses[0].body_len), (Some(0), 200_000));
    assert_eq!((responses[1].request_id, responses[1].body_len), (Some(1), 4));
    let flow = *run.x.stats();
    assert_eq!(flow.elided_bytes, 200_000 - (16384 - head_len) as u64);
    assert_eq!(flow.gap_bytes, 0);
    assert_eq!(run.stats().lost_messages, 0);
}
