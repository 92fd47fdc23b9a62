//! The agent's pipeline in process: segments from a MemorySource or a capture file through
//! framing, match, sampling and rewrite to a real local shadow, outcomes to a result sink.
use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue};
use mirror_agent::{
    pipeline::{MirrorSettings, Mirroring, ShadowTarget},
    replay::{replay, ReplayOptions, Speed},
    rewrite::HeaderEdits,
    select::MatchRule,
};
use mirror_capture::{pcap::PcapSink, Segment};
use mirror_shadow::{Answer, CopyInfo, DropReason, ResultSink};
use mirror_testkit::{Conversation, MemorySource, TestShadow, OK_EMPTY};
use tokio::net::TcpListener;

/// A copy's id, its status or why it was dropped, and when the sink heard of it.
type Outcome = (u64, Result<u16, DropReason>, Instant);

#[derive(Default)]
struct Outcomes(Mutex<Vec<Outcome>>);

impl ResultSink for Outcomes {
    fn answered(&self, _: &str, copy: &CopyInfo, answer: &Answer) {
        self.0.lock().unwrap().push((copy.id, Ok(answer.status), Instant::now()));
    }

    fn dropped(&self, _: &str, copy: &CopyInfo, reason: DropReason, _: &dyn fmt::Display) {
        self.0.lock().unwrap().push((copy.id, Err(reason), Instant::now()));
    }
}

fn settings(shadow: SocketAddr) -> MirrorSettings {
    MirrorSettings {
        shadows: vec![ShadowTarget {
            uri: format!("http://{shadow}").parse().unwrap(),
            name: "shadow".into(),
            percent: 100.0,
            tls: None,
        }],
        rules: vec![MatchRule { methods: vec!["GET".into()], ..MatchRule::default() }],
        edits: HeaderEdits {
            set: vec![(HeaderName::from_static("x-mirrored"), HeaderValue::from_static("1"))],
            ..HeaderEdits::default()
        },
        ..MirrorSettings::default()
    }
}

/// GET, GET, POST, GET on one keep-alive connection, `gap_ns` apart.
fn traffic(gap_ns: u64) -> Vec<Segment> {
    let mut c = Conversation::new(
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.2:8080".parse().unwrap(),
        1,
        1,
    );
    let mut segs = c.open();
    for (i, method) in ["GET", "GET", "POST", "GET"].iter().enumerate() {
        c.at(1_000_000_000 + i as u64 * gap_ns);
        let req = format!("{method} /r{i} HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: 0\r\n\r\n");
        segs.extend(c.request(req.as_bytes(), 1448));
        segs.extend(c.response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 1448));
    }
    segs.extend(c.close());
    segs
}

#[tokio::test]
async fn matched_requests_are_rewritten_and_replayed_with_their_numbers() {
    let mut shadow = TestShadow::start(Some(OK_EMPTY)).await;
    let outcomes = Arc::new(Outcomes::default());
    let mut mirroring = Mirroring::start(settings(shadow.addr), Some(outcomes.clone()));
    let mut source = MemorySource::new(traffic(1_000), 3);
    mirroring.run_to_end(&mut source).await.unwrap();
    let mut heads = Vec::new();
    for _ in 0..3 {
        heads.push(shadow.next_head().await.to_ascii_lowercase());
    }
    for (head, target) in heads.iter().zip(["/r0", "/r1", "/r3"]) {
        assert!(head.starts_with(&format!("get {target} http/1.1\r\n")), "{head}");
        assert!(head.contains("host: svc-shadow:8080\r\n"), "{head}");
        assert!(head.contains("x-mirrored: 1\r\n") && head.contains("x-forwarded-for: 10.0.0.1"));
    }
    mirroring.settle().await;
    let mut got: Vec<_> = outcomes.0.lock().unwrap().iter().map(|(id, r, _)| (*id, *r)).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, [(1, Ok(200)), (2, Ok(200)), (4, Ok(200))], "copies keyed by request number");
    let summary = mirroring.summary(None);
    assert_eq!((summary.captured_requests, summary.not_matched), (4, 1));
    assert_eq!(summary.shadows[0].offered, 3);
}

#[tokio::test]
async fn replay_paces_a_capture_file_as_recorded_over_the_speed() {
    // A closed port: every copy fails at once, so outcomes arrive when copies are offered.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("mirror-pacing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("paced.pcap");
    let mut sink = PcapSink::create(&path, 65535).unwrap();
    for seg in traffic(400_000_000) {
        sink.write(&seg).unwrap();
    }
    sink.finish().unwrap();
    let outcomes = Arc::new(Outcomes::default());
    let opts = ReplayOptions {
        path: path.clone(),
        ports: vec![8080],
        speed: Speed::Factor(2.0),
        repeat: false,
        results: Some(outcomes.clone()),
    };
    let (summary, file) =
        replay(settings(closed), &opts, |_| {}, std::future::pending::<()>()).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((summary.captured_requests, file.skipped), (4, 0));
    let mut seen = outcomes.0.lock().unwrap().clone();
    seen.sort_by_key(|(id, _, _)| *id);
    let ids: Vec<u64> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, [1, 2, 4]);
    // Recorded 400 ms apart, replayed at twice the pace: at least 200 ms apart (less a
    // little for the copy that failed faster than the one before it).
    let t = |i: usize| seen[i].2;
    assert!(t(1) - t(0) >= Duration::from_millis(180), "{:?}", t(1) - t(0));
    assert!(t(2) - t(1) >= Duration::from_millis(360), "{:?}", t(2) - t(1));
}
