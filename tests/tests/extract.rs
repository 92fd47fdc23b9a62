//! The live tap feeds reassembly and framing: the requests real clients send (curl, a hyper
//! client, a raw socket pipelining) come out exactly as sent, for IPv4 and IPv6.
use std::{collections::HashMap, net::SocketAddr};

use mirror_http::HttpEvent;
use mirror_tap::{Tap, TapSettings};
use mirror_tests::{
    client::{curl, hyper_client, keep_alive, pipelined, RawRequest},
    http_url,
    live::LiveExtractor,
    server::{expected_body, RecordingServer},
    topology::{Family, Topology},
};

const PORT: u16 = 8080;

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed).collect()
}

async fn requests_come_out_exactly_as_sent(family: Family) {
    let topo = Topology::new().unwrap();
    let server = RecordingServer::start(&topo.server, &[PORT]);
    let mut tap = Tap::attach(&TapSettings {
        interfaces: vec![topo.server_host_if.clone()],
        ports: vec![PORT],
        ..TapSettings::default()
    })
    .unwrap();
    let live = LiveExtractor::start(tap.segments().unwrap());
    let addr = topo.server_addr(family);
    let service = SocketAddr::new(addr, PORT);
    let dir = std::env::temp_dir().join(format!("mirror-extract-{}", topo.id));
    std::fs::create_dir_all(&dir).unwrap();

    let client_ns = &topo.client;
    let (ka, pl, hy) = {
        let reqs: Vec<RawRequest> = (0..20)
            .map(|i| RawRequest::new("POST", &format!("/ka/{i}"), "svc", &payload(i * 150, 1)))
            .collect();
        let ka = keep_alive(client_ns, service, reqs).unwrap();
        let reqs: Vec<RawRequest> = (0..10)
            .map(|i| RawRequest::new("GET", &format!("/pipelined/{i}"), "svc", b""))
            .collect();
        let pl = pipelined(client_ns, service, reqs).unwrap();
        let hy = hyper_client(client_ns, service, 10).unwrap();
        (ka, pl, hy)
    };
    // curl: keep-alive with three URLs; a chunked upload; 100-continue; a 5 MiB body.
    let u = |p: &str| http_url(addr, PORT, p);
    let out = curl(client_ns, &[&u("/c/1"), &u("/c/2"), &u("/c/3")]).unwrap();
    assert!(out.ends_with(&expected_body("GET", "/c/3", b"")));
    let mut uploads = Vec::new();
    for (name, len, extra) in [
        ("chunked", 200_000, vec!["-H", "Transfer-Encoding: chunked"]),
        ("continue", 50_000, vec!["-H", "Expect: 100-continue"]),
        ("five-mib", 5 << 20, vec![]),
    ] {
        let body = payload(len, len as u8);
        let file = dir.join(name);
        std::fs::write(&file, &body).unwrap();
        let data = format!("@{}", file.display());
        let mut args = vec!["--data-binary", &data];
        args.extend(extra);
        let target = u(&format!("/upload/{name}"));
        args.push(&target);
        let out = curl(client_ns, &args).unwrap();
        assert_eq!(out, expected_body("POST", &format!("/upload/{name}"), &body), "{name}");
        uploads.push(name);
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let extracted = live.finish().await;
    let counters = tap.counters().unwrap();
    assert_eq!(counters.get(mirror_tap::Counter::Lost), 0, "{counters}");

    // Per connection, the extracted requests, concatenated, are what the server read.
    let mut by_conn: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
    let mut count: HashMap<SocketAddr, usize> = HashMap::new();
    let mut responses = 0;
    for e in &extracted.events {
        match e {
            HttpEvent::Request(r) => {
                by_conn.entry(r.conn.client).or_default().extend(r.to_bytes());
                *count.entry(r.conn.client).or_default() += 1;
            }
            HttpEvent::Response(r) => {
                assert!(r.request_id.is_some(), "every response is paired");
                responses += 1;
            }
            HttpEvent::H2(e) => panic!("no HTTP/2 here: {e:?}"),
        }
    }
    // Likewise the extracted responses are what the server wrote, but for the interim
    // 100 Continue responses, which are skipped by design.
    let mut responses_by_conn: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
    for e in &extracted.events {
        if let HttpEvent::Response(r) = e {
            let bytes = responses_by_conn.entry(r.conn.client).or_default();
            bytes.extend_from_slice(r.head.bytes());
            bytes.extend_from_slice(&r.body);
        }
    }
    let conns = server.connections();
    for (client, record) in &conns {
        let sent =
            String::from_utf8_lossy(&record.sent).replace("HTTP/1.1 100 Continue\r\n\r\n", "");
        let got = String::from_utf8_lossy(&responses_by_conn[client]).into_owned();
        assert!(got == sent, "responses of {client} differ");
    }
    assert_eq!(by_conn.len(), conns.len(), "one extracted stream per connection");
    for (client, record) in &conns {
        let got = by_conn.get(client).unwrap_or_else(|| panic!("no requests from {client}"));
        assert!(
            got == &record.received,
            "requests of {client} differ ({} vs {} bytes)",
            got.len(),
            record.received.len()
        );
    }
    assert_eq!((count[&ka], count[&pl], count[&hy]), (20, 10, 10));
    let total: usize = count.values().sum();
    assert_eq!(total, 20 + 10 + 10 + 3 + uploads.len());
    assert_eq!(responses, total);
    // curl sent Expect: 100-continue (explicitly, and by itself for the 5 MiB body); the
    // server's interim 100 responses were skipped and the bodies still came out whole.
    let expecting = extracted
        .events
        .iter()
        .filter(|e| matches!(e, HttpEvent::Request(r) if r.head.header("expect").is_some()))
        .count();
    assert!(expecting >= 1);
    assert_eq!(extracted.http.interim_responses as usize, expecting);
    let h = extracted.http;
    assert_eq!(
        h.lost_messages + h.malformed_requests + h.malformed_responses + h.incomplete_at_end,
        0,
        "{h:?}"
    );
    assert_eq!(extracted.reassembly.gap_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_come_out_exactly_as_sent_ipv4() {
    requests_come_out_exactly_as_sent(Family::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_come_out_exactly_as_sent_ipv6() {
    requests_come_out_exactly_as_sent(Family::V6).await;
}
