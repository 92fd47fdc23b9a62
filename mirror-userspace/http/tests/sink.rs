//! The seam after framing, in process: segments from a MemorySource go through the one flow
//! driver into a sink that receives every request and response with its connection, its
//! timestamps and the request id that pairs them.
use std::collections::HashSet;

use mirror_capture::{Direction, Segment};
use mirror_flow::{Ended, FlowDriver, FlowSink, ReassemblyConfig};
use mirror_http::{extractor, HttpConfig, HttpConnection, HttpEvent};
use mirror_testkit::{Conversation, MemorySource};

fn conversation(port: u16, requests: usize) -> Vec<Segment> {
    let client = format!("10.0.0.1:{port}").parse().unwrap();
    let mut c = Conversation::new(client, "10.0.0.2:8080".parse().unwrap(), 7, 9);
    let mut segs = c.open();
    for i in 0..requests {
        c.at(1_000 + i as u64 * 100);
        segs.extend(c.request(format!("GET /{i} HTTP/1.1\r\nHost: svc\r\n\r\n").as_bytes(), 1448));
        c.at(1_050 + i as u64 * 100);
        segs.extend(c.response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1448));
    }
    segs.extend(c.close());
    segs
}

fn driver() -> FlowDriver<HttpConnection> {
    FlowDriver::new(extractor(ReassemblyConfig::default(), HttpConfig::default()))
}

#[tokio::test]
async fn requests_and_responses_arrive_paired_with_identity_and_time() {
    let mut segs = conversation(40001, 3);
    segs.extend(conversation(40002, 2));
    let mut source = MemorySource::new(segs, 5);
    let mut events: Vec<HttpEvent> = Vec::new();
    let ended = driver().run(&mut source, &mut events, std::future::pending::<()>(), None).await;
    assert_eq!(ended.unwrap(), Ended::Source);
    let mut conns = HashSet::new();
    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    for e in &events {
        match e {
            HttpEvent::Request(r) => requests.push(r),
            HttpEvent::Response(r) => responses.push(r),
            HttpEvent::H2(e) => panic!("no HTTP/2 here: {e:?}"),
        }
    }
    assert_eq!((requests.len(), responses.len()), (5, 5));
    for resp in &responses {
        conns.insert(resp.conn);
        let id = resp.request_id.expect("every response is paired");
        let req = requests.iter().find(|r| r.conn == resp.conn && r.id == id).unwrap();
        assert_eq!(req.head.target(), Some(format!("/{id}").as_str()));
        assert!(req.first_ts_ns <= req.last_ts_ns && req.last_ts_ns < resp.first_ts_ns);
        assert_eq!(resp.first_ts_ns - req.first_ts_ns, 50, "timestamps are the capture's");
        assert_eq!(resp.conn.server, "10.0.0.2:8080".parse().unwrap());
    }
    assert_eq!(conns.len(), 2);
}

/// Admits only requests of one client and stops after `limit` events.
struct OneClient {
    port: u16,
    limit: usize,
    seen: Vec<HttpEvent>,
}

impl FlowSink<HttpConnection> for OneClient {
    fn admit(&mut self, segment: Segment) -> Option<Segment> {
        let keep = segment.client().port() == self.port && segment.direction == Direction::Request;
        keep.then_some(segment)
    }

    fn event(&mut self, event: HttpEvent) {
        self.seen.push(event);
    }

    fn is_done(&self) -> bool {
        self.seen.len() >= self.limit
    }
}

#[tokio::test]
async fn the_sink_admits_segments_and_ends_the_run() {
    let mut segs = conversation(40001, 4);
    segs.extend(conversation(40002, 4));
    let mut sink = OneClient { port: 40002, limit: 3, seen: Vec::new() };
    let mut source = MemorySource::new(segs, 1);
    let ended = driver().run(&mut source, &mut sink, std::future::pending::<()>(), None).await;
    assert_eq!(ended.unwrap(), Ended::Sink);
    assert_eq!(sink.seen.len(), 3);
    for e in &sink.seen {
        let HttpEvent::Request(r) = e else { panic!("only requests were admitted: {e:?}") };
        assert_eq!(r.conn.client.port(), 40002);
    }
}
