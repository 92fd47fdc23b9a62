//! HTTP/2 cases from hand-built frames, through reassembly and framing. Header blocks come
//! from loona-hpack's encoder, or from RFC 7541's appendix C where Huffman coding and the
//! dynamic table are the point.
use std::net::SocketAddr;

use super::frame::{flag, kind};
use super::*;
use crate::{extractor, HttpConfig, HttpEvent, HttpExtractor, HttpStats, RequestView};
use mirror_flow::{ReassemblyConfig, StreamConsumer};
use mirror_testkit::Conversation;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, v)| [&id.to_be_bytes()[..], &v.to_be_bytes()].concat())
        .collect();
    frame(kind::SETTINGS, 0, 0, &payload)
}

fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

fn block(enc: &mut loona_hpack::Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", "api:50051".into()),
        (":path", path.into()),
    ]
}

/// Both sides of one connection, with an encoder per direction.
struct H2Conv {
    conv: Conversation,
    client: loona_hpack::Encoder<'static>,
    server: loona_hpack::Encoder<'static>,
    x: HttpExtractor,
    events: Vec<HttpEvent>,
    mss: usize,
}

impl H2Conv {
    fn new(port: u16) -> Self {
        let client: SocketAddr = format!("10.0.0.1:{port}").parse().unwrap();
        let mut c = Self {
            conv: Conversation::new(client, "10.0.0.2:50051".parse().unwrap(), 100, 900),
            client: loona_hpack::Encoder::new(),
            server: loona_hpack::Encoder::new(),
            x: extractor(ReassemblyConfig::default(), HttpConfig::default()),
            events: Vec::new(),
            mss: 1448,
        };
        let open = c.conv.open();
        c.feed(open);
        c
    }

    fn feed(&mut self, segs: Vec<mirror_capture::Segment>) {
        for s in segs {
            self.x.push(&s, &mut self.events);
        }
    }

    fn client_sends(&mut self, bytes: &[u8]) {
        let segs = self.conv.request(bytes, self.mss);
        self.feed(segs);
    }

    fn server_sends(&mut self, bytes: &[u8]) {
        let segs = self.conv.response(bytes, self.mss);
        self.feed(segs);
    }

    /// Preface and SETTINGS both ways, acknowledged.
    fn handshake(&mut self) {
        self.client_sends(&[&PREFACE[..], &settings(&[(3, 100)])].concat());
        self.server_sends(&[settings(&[]), settings_ack()].concat());
        self.client_sends(&settings_ack());
    }

    /// After an h2c upgrade: the client's preface and SETTINGS, acknowledged both ways.
    fn handshake_after_upgrade(&mut self) {
        self.client_sends(&[&PREFACE[..], &settings(&[]), &settings_ack()].concat());
        self.server_sends(&settings_ack());
    }

    fn request_headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> Vec<u8> {
        let b = block(&mut self.client, fields);
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame(kind::HEADERS, flags, stream, &b)
    }

    fn response_headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> Vec<u8> {
        let b = block(&mut self.server, fields);
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame(kind::HEADERS, flags, stream, &b)
    }

    fn send_request(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let f = self.request_headers(stream, fields, end_stream);
        self.client_sends(&f);
    }

    fn send_response(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let f = self.response_headers(stream, fields, end_stream);
        self.server_sends(&f);
    }

    fn h2(&self) -> Vec<&H2Event> {
        self.events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::H2(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn parts(&self, stream: u32, dir: mirror_capture::Direction) -> Vec<&H2Part> {
        self.h2()
            .into_iter()
            .filter(|e| e.stream == stream && e.dir == dir)
            .map(|e| &e.part)
            .collect()
    }

    fn request_data(&self, stream: u32) -> Vec<u8> {
        self.parts(stream, REQ)
            .into_iter()
            .filter_map(|p| match p {
                H2Part::Data { bytes, .. } => Some(bytes.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn stats(&self) -> HttpStats {
        self.x.shared().stats
    }
}

const REQ: mirror_capture::Direction = mirror_capture::Direction::Request;
const RESP: mirror_capture::Direction = mirror_capture::Direction::Response;

fn fields_of(part: &H2Part) -> &H2Fields {
    match part {
        H2Part::Headers { fields, .. } | H2Part::Trailers(fields) => fields,
        other => panic!("not headers: {other:?}"),
    }
}

fn pairs<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    fields.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[test]
fn a_get_and_its_response_on_prior_knowledge() {
    let mut c = H2Conv::new(40001);
    c.handshake();
    let req = c.request_headers(1, &pairs(&get("/hello")), true);
    c.client_sends(&req);
    let resp = c.response_headers(1, &[(":status", "200"), ("content-type", "text/plain")], false);
    c.server_sends(&[resp, frame(kind::DATA, flag::END_STREAM, 1, b"hi there")].concat());

    let request = c.parts(1, REQ);
    assert_eq!(request.len(), 1);
    let f = fields_of(request[0]);
    assert_eq!((f.method(), f.target(), f.version()), ("GET", "/hello", crate::Version::Http2));
    assert_eq!(f.header("host"), Some(&b"api:50051"[..]));
    assert!(matches!(request[0], H2Part::Headers { end_stream: true, .. }));
    let mut headers = Vec::new();
    f.for_each_header(&mut |n, v| headers.push((n.to_owned(), v.to_vec())));
    assert_eq!(headers, [("host".to_owned(), b"api:50051".to_vec())]);

    let response = c.parts(1, RESP);
    assert_eq!(fields_of(response[0]).status(), Some(200));
    assert_eq!(
        response[1],
        &H2Part::Data { bytes: Bytes::from_static(b"hi there"), end_stream: true }
    );
    let s = c.stats();
    assert_eq!((s.h2_connections, s.h2_streams, s.h2_responses, s.h2_out_of_sync), (1, 1, 1, 0));
    assert!(c.x.buffered() < 1024, "only the HPACK tables: {}", c.x.buffered());
}

#[test]
fn huffman_strings_and_the_dynamic_table_across_blocks_rfc7541_c4() {
    let mut c = H2Conv::new(40002);
    c.handshake();
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    };
    let blocks = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    for (i, b) in blocks.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        c.client_sends(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
            &hex(b),
        ));
    }
    let f: Vec<&H2Fields> = (0..3).map(|i| fields_of(c.parts(1 + 2 * i, REQ)[0])).collect();
    assert_eq!(f[0].authority(), Some(&b"www.example.com"[..]));
    assert_eq!(f[1].get("cache-control"), Some(&b"no-cache"[..]));
    assert_eq!(f[1].authority(), Some(&b"www.example.com"[..]));
    assert_eq!((f[2].target(), f[2].get(":scheme")), ("/index.html", Some(&b"https"[..])));
    assert_eq!(f[2].get("custom-key"), Some(&b"custom-value"[..]));
}

#[test]
fn table_size_updates_follow_settings_acknowledged_and_not_at_a_blocks_end() {
    // The client allows the server's encoder 8 KiB: valid once the server acknowledged.
    let mut c = H2Conv::new(40003);
    c.client_sends(&[&PREFACE[..], &settings(&[(1, 8192)])].concat());
    c.server_sends(&[settings(&[]), settings_ack()].concat());
    c.send_request(1, &pairs(&get("/")), true);
    c.server.set_max_table_size(8192);
    // A size update (0x3f e1 3f = 8192) at the start of the block.
    let mut b = vec![0x3f, 0xe1, 0x3f];
    b.extend(block(&mut c.server, &[(":status", "200")]));
    c.server_sends(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &b));
    assert_eq!(fields_of(c.parts(1, RESP)[0]).status(), Some(200));
    assert_eq!(c.stats().h2_out_of_sync, 0);

    // Without the client's SETTINGS, 8 KiB is beyond the default 4096: the state is lost.
    let mut c = H2Conv::new(40004);
    c.handshake();
    c.send_request(1, &pairs(&get("/")), false);
    let mut b = vec![0x3f, 0xe1, 0x3f];
    b.extend(block(&mut c.server, &[(":status", "200")]));
    c.server_sends(&frame(kind::HEADERS, flag::END_HEADERS, 1, &b));
    assert_eq!(c.parts(1, RESP), [&H2Part::Reset(ResetReason::OutOfSync)]);
    assert_eq!(c.stats().h2_out_of_sync, 1);

    // A size update ending a block is an error (RFC 7541 section 4.2).
    let mut c = H2Conv::new(40005);
    c.handshake();
    let mut b = block(&mut c.client, &pairs(&get("/")));
    b.extend([0x20]); // size update to 0, after the fields
    c.client_sends(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 1, &b));
    assert!(c.h2().is_empty());
    assert_eq!(c.stats().h2_out_of_sync, 1);
}

#[test]
fn continuation_split_across_segments_and_padding_and_priority() {
    let mut c = H2Conv::new(40006);
    c.handshake();
    let mut fields = get("/split");
    fields.push(("x-long", "v".repeat(3000)));
    let b = block(&mut c.client, &pairs(&fields));
    // HEADERS padded (10 bytes) with priority, then two CONTINUATIONs.
    let mut first = vec![10u8];
    first.extend([0, 0, 0, 0, 16]); // depends on stream 0, weight 16
    first.extend(&b[..1000]);
    first.extend([0u8; 10]);
    let flags = flag::PADDED | flag::PRIORITY;
    let mut wire = frame(kind::HEADERS, flags, 1, &first);
    wire.extend(frame(kind::CONTINUATION, 0, 1, &b[1000..2000]));
    wire.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 1, &b[2000..]));
    // Padded DATA with END_STREAM.
    let mut data = vec![3u8];
    data.extend(b"body");
    data.extend([0, 0, 0]);
    wire.extend(frame(kind::DATA, flag::PADDED | flag::END_STREAM, 1, &data));
    c.mss = 7; // every frame split over many segments
    c.client_sends(&wire);
    let parts = c.parts(1, REQ);
    assert_eq!(fields_of(parts[0]).get("x-long").map(<[u8]>::len), Some(3000));
    assert_eq!(c.request_data(1), b"body");
    assert!(matches!(parts.last(), Some(H2Part::Data { end_stream: true, .. })));
    assert_eq!(c.stats().h2_out_of_sync, 0);
}

#[test]
fn a_frame_of_another_stream_between_continuations_is_a_protocol_error() {
    let mut c = H2Conv::new(40007);
    c.handshake();
    c.send_request(1, &pairs(&get("/open")), false);
    let b = block(&mut c.client, &pairs(&get("/two")));
    let mut wire = frame(kind::HEADERS, 0, 3, &b[..5]);
    wire.extend(frame(kind::DATA, 0, 1, b"x"));
    wire.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 3, &b[5..]));
    c.client_sends(&wire);
    let s = c.stats();
    assert_eq!((s.h2_protocol_errors, s.h2_out_of_sync, s.h2_streams), (1, 1, 1));
    // Stream 1 was open: it is reset, never continued with guesses.
    assert_eq!(c.parts(1, REQ).last(), Some(&&H2Part::Reset(ResetReason::OutOfSync)));
    assert!(c.parts(3, REQ).is_empty());
}

#[test]
fn rst_stream_mid_body_ends_the_stream_and_frees_it() {
    let mut c = H2Conv::new(40008);
    c.handshake();
    let mut fields = get("/upload");
    fields[0].1 = "POST".into();
    c.send_request(1, &pairs(&fields), false);
    c.client_sends(&frame(kind::DATA, 0, 1, &[7u8; 5000]));
    c.client_sends(&frame(kind::RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    c.client_sends(&frame(kind::DATA, 0, 1, b"late"));
    let parts = c.parts(1, REQ);
    assert_eq!(parts.last(), Some(&&H2Part::Reset(ResetReason::Stream(8))));
    assert_eq!(c.request_data(1).len(), 5000, "nothing after the reset");
    assert_eq!(c.stats().h2_reset_streams, 1);
    assert!(c.x.buffered() < 1024, "only the HPACK tables: {}", c.x.buffered());
    // The connection goes on.
    c.send_request(3, &pairs(&get("/next")), true);
    assert_eq!(fields_of(c.parts(3, REQ)[0]).target(), "/next");
}

#[test]
fn goaway_refuses_streams_above_its_last_stream() {
    let mut c = H2Conv::new(40009);
    c.handshake();
    for stream in [1, 3, 5] {
        c.send_request(stream, &pairs(&get("/s")), false);
    }
    let mut goaway = 3u32.to_be_bytes().to_vec();
    goaway.extend(0u32.to_be_bytes());
    goaway.extend(b"shutting down");
    c.server_sends(&frame(kind::GOAWAY, 0, 0, &goaway));
    assert_eq!(c.parts(5, RESP), [&H2Part::Reset(ResetReason::GoAway)]);
    assert!(c.parts(3, RESP).is_empty());
    c.send_request(7, &pairs(&get("/late")), false);
    assert!(c.parts(7, REQ).is_empty());
    // The refused stream's trailers are not a new stream, nor an error.
    c.send_request(7, &[("x-trailer", "t")], true);
    assert!(c.parts(7, REQ).is_empty());
    assert_eq!(c.stats().h2_out_of_sync, 0);
    let s = c.stats();
    assert_eq!((s.h2_streams, s.h2_refused_streams, s.h2_reset_streams), (3, 1, 1));
}

#[test]
fn push_promise_blocks_update_the_table_and_interim_responses_are_skipped() {
    let mut c = H2Conv::new(40010);
    c.handshake();
    c.send_request(1, &pairs(&get("/page")), true);
    // The promise's block adds entries to the server encoder's table...
    let mut promise = 2u32.to_be_bytes().to_vec();
    promise.extend(block(&mut c.server, &pairs(&get("/style.css"))));
    let mut wire = frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &promise);
    wire.extend(c.response_headers(1, &[(":status", "103"), ("link", "</style.css>")], false));
    // ...which this block refers to by index.
    wire.extend(c.response_headers(1, &[(":status", "200"), (":path", "/style.css")], false));
    wire.extend(c.response_headers(2, &[(":status", "200")], true));
    wire.extend(frame(kind::DATA, flag::END_STREAM, 1, b"<html>"));
    c.server_sends(&wire);
    let parts = c.parts(1, RESP);
    assert_eq!(fields_of(parts[0]).status(), Some(200));
    assert_eq!(fields_of(parts[0]).get(":path"), Some(&b"/style.css"[..]));
    assert_eq!(parts.len(), 2);
    assert!(c.parts(2, RESP).is_empty(), "pushed streams are not followed");
    let s = c.stats();
    assert_eq!((s.interim_responses, s.h2_out_of_sync), (1, 0));
}

#[test]
fn large_data_over_many_frames_and_segments() {
    let mut c = H2Conv::new(40011);
    c.handshake();
    let mut fields = get("/big");
    fields[0].1 = "PUT".into();
    c.send_request(1, &pairs(&fields), false);
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    let chunks: Vec<&[u8]> = body.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let end = if i + 1 == chunks.len() { flag::END_STREAM } else { 0 };
        wire.extend(frame(kind::DATA, end, 1, chunk));
        wire.extend(frame(kind::WINDOW_UPDATE, 0, 0, &65_535u32.to_be_bytes()));
    }
    c.client_sends(&wire);
    assert_eq!(c.request_data(1), body);
    assert!(matches!(c.parts(1, REQ).last(), Some(H2Part::Data { end_stream: true, .. })));
    assert!(c.x.buffered() < 1024, "only the HPACK tables: {}", c.x.buffered());
}

#[test]
fn trailers_end_the_request_and_the_response() {
    let mut c = H2Conv::new(40012);
    c.handshake();
    let mut fields = get("/pkg.Svc/Call");
    fields[0].1 = "POST".into();
    fields.push(("content-type", "application/grpc".into()));
    c.send_request(1, &pairs(&fields), false);
    c.client_sends(&frame(kind::DATA, 0, 1, &[0, 0, 0, 0, 2, 8, 1]));
    c.send_request(1, &[("x-trailer", "t")], true);
    let resp =
        c.response_headers(1, &[(":status", "200"), ("content-type", "application/grpc")], false);
    c.server_sends(&resp);
    c.send_response(1, &[("grpc-status", "0")], true);
    assert_eq!(fields_of(c.parts(1, REQ)[2]).get("x-trailer"), Some(&b"t"[..]));
    assert!(matches!(c.parts(1, REQ)[2], H2Part::Trailers(_)));
    assert_eq!(fields_of(c.parts(1, RESP)[1]).get("grpc-status"), Some(&b"0"[..]));
    assert!(c.x.buffered() < 1024, "only the HPACK tables: {}", c.x.buffered());
}

#[test]
fn joined_mid_stream_is_counted_and_nothing_is_guessed_then_a_new_connection_works() {
    let mut mid = H2Conv::new(40013);
    // No preface: the connection was open before the capture (the SYN is in `new`, so
    // bypass it with a fresh conversation whose first segments are frames).
    let client: SocketAddr = "10.0.0.1:40014".parse().unwrap();
    let mut conv = Conversation::new(client, "10.0.0.2:50051".parse().unwrap(), 7000, 9000);
    let b = block(&mut mid.client, &pairs(&get("/mid")));
    let segs =
        conv.request(&frame(kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 9, &b), 1448);
    mid.feed(segs);
    let segs = conv.response(&frame(kind::DATA, flag::END_STREAM, 9, b"x"), 1448);
    mid.feed(segs);
    assert!(mid.h2().is_empty());
    assert_eq!((mid.stats().h2_out_of_sync, mid.stats().h2_connections), (1, 1));
    assert!(crate::HttpConnection::is_message_start(
        mid.x.shared(),
        REQ,
        &frame(kind::PING, 0, 0, &[0; 8])
    ));

    mid.handshake();
    mid.send_request(1, &pairs(&get("/fresh")), true);
    assert_eq!(fields_of(mid.parts(1, REQ)[0]).target(), "/fresh");
}

#[test]
fn a_preface_cut_by_its_segment_and_http1_beside_it() {
    let mut c = H2Conv::new(40015);
    c.mss = 5;
    c.handshake();
    c.mss = 1448;
    c.send_request(1, &pairs(&get("/cut")), true);
    assert_eq!(fields_of(c.parts(1, REQ)[0]).target(), "/cut");

    let mut h1 = H2Conv::new(40016);
    h1.mss = 3;
    h1.client_sends(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        matches!(h1.events.as_slice(), [HttpEvent::Request(r)] if r.head.target() == Some("/one"))
    );
    assert_eq!(h1.stats().h2_connections, 0);
}

#[test]
fn a_connection_end_resets_open_streams() {
    let mut c = H2Conv::new(40017);
    c.handshake();
    c.send_request(1, &pairs(&get("/done")), true);
    c.send_request(3, &pairs(&get("/waiting")), true);
    c.send_response(1, &[(":status", "204")], true);
    let fin = c.conv.fin(RESP);
    c.feed(vec![fin]);
    assert_eq!(c.parts(3, RESP), [&H2Part::Reset(ResetReason::Closed)]);
    assert_eq!(c.parts(1, RESP).len(), 1);
}

const UPGRADE: &str =
    "GET /up HTTP/1.1\r\nHost: api:8080\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                       Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nAccept: */*\r\n\r\n";

#[test]
fn an_h2c_upgrade_makes_the_request_stream_1() {
    let mut c = H2Conv::new(40018);
    c.client_sends(UPGRADE.as_bytes());
    assert!(c.events.is_empty(), "held until the server answers");
    // The 101, the server's SETTINGS and stream 1's answer in one segment.
    let mut wire =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    wire.extend(settings(&[]));
    wire.extend(c.response_headers(1, &[(":status", "200")], false));
    wire.extend(frame(kind::DATA, flag::END_STREAM, 1, b"upgraded"));
    c.server_sends(&wire);
    c.handshake_after_upgrade();
    c.send_request(3, &pairs(&get("/after")), true);

    let up = fields_of(c.parts(1, REQ)[0]);
    assert_eq!((up.method(), up.target(), up.authority()), ("GET", "/up", Some(&b"api:8080"[..])));
    let names: Vec<&[u8]> = up.iter().map(|(n, _)| n).collect();
    assert_eq!(names, [&b":method"[..], b":scheme", b":authority", b":path", b"accept"]);
    assert!(matches!(c.parts(1, REQ)[0], H2Part::Headers { end_stream: true, .. }));
    let response = c.parts(1, RESP);
    assert_eq!(fields_of(response[0]).status(), Some(200));
    assert_eq!(
        response[1],
        &H2Part::Data { bytes: Bytes::from_static(b"upgraded"), end_stream: true }
    );
    assert_eq!(fields_of(c.parts(3, REQ)[0]).target(), "/after");
    let s = c.stats();
    assert_eq!((s.h2_connections, s.h2_streams, s.h2_out_of_sync, s.requests), (1, 2, 0, 0));
    assert_eq!(s.upgraded_connections, 0, "still followed");
}

#[test]
fn an_h2c_upgrade_the_server_refuses_stays_http1() {
    let mut c = H2Conv::new(40019);
    c.client_sends(UPGRADE.as_bytes());
    c.server_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    c.client_sends(b"GET /next HTTP/1.1\r\nHost: api\r\n\r\n");
    let kinds: Vec<String> = c
        .events
        .iter()
        .map(|e| match e {
            HttpEvent::Request(r) => format!("request {}", r.head.target().unwrap()),
            HttpEvent::Response(r) => format!("response {:?}", r.request_id),
            HttpEvent::H2(e) => format!("h2 {e:?}"),
        })
        .collect();
    assert_eq!(kinds, ["request /up", "response Some(0)", "request /next"]);
    assert_eq!(c.stats().h2_connections, 0);
}

#[test]
fn an_answer_reads_as_an_http1_head() {
    let fields = H2Fields::from_pairs([
        (&b":status"[..], &b"200"[..]),
        (b"content-type", b"application/json"),
        (b"grpc-status", b"0"),
    ]);
    let head = response_head(200, fields.iter()).unwrap();
    assert_eq!(head.status(), Some(200));
    assert_eq!(head.header("content-type"), Some(&b"application/json"[..]));
    assert_eq!(head.header("grpc-status"), Some(&b"0"[..]));
    assert!(response_head(200, [(&b"x"[..], &b"a\r\nb"[..])]).is_none());
}
