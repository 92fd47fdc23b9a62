//! `https://` shadows: nginx from Debian with certificates of a test CA. Copies reach the
//! shadow whose certificate verifies, and the one that requires a client certificate (mTLS)
//! gets the agent's; an expired certificate, one for another name and one from an untrusted
//! CA are refused and counted by reason, and nothing reaches those shadows.
use std::{net::SocketAddr, time::Duration};

use mirror_tests::{
    agent::{run_args, AgentProcess},
    bench::{wait_listening, Nginx},
    client::{keep_alive, RawRequest},
    server::RecordingServer,
    tls::{ServerCert, TestPki},
    topology::{Family, Topology},
};

const PORT: u16 = 8000;
const COPIES: usize = 20;

/// Shadows: (port, certificate, mTLS required).
const SHADOWS: [(u16, ServerCert, bool); 5] = [
    (8443, ServerCert::Good, false),
    (8444, ServerCert::Expired, false),
    (8445, ServerCert::OtherName, false),
    (8446, ServerCert::Untrusted, false),
    (8447, ServerCert::Good, true),
];

/// The number after `word` in the summary line of the shadow at `authority`.
fn count(summary: &str, authority: &str, word: &str) -> u64 {
    let prefix = format!("shadow {authority}: ");
    let line = summary.lines().find(|l| l.starts_with(&prefix)).expect(summary);
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == word).unwrap_or_else(|| panic!("{word}: {line}"));
    words[i + 1].trim_end_matches([',', ';']).parse().unwrap()
}

#[test]
fn https_shadows_are_verified_and_failures_counted_by_reason() {
    let topo = Topology::new().unwrap();
    let _primary = RecordingServer::start(&topo.server, &[PORT]);
    let ip = topo.shadow_addr(Family::V4);
    let dir = std::env::temp_dir().join(format!("mirror-tls-{}", topo.id));
    let pki = TestPki::write(&dir, ip);
    let log = dir.join("access.log");
    // (The server blocks log: `access_log off` at the http level of `Nginx::start` turns off
    // every log declared at that level.)
    let mut block = "log_format copies \
        '$server_port|$request|$http_host|$http_x_forwarded_for|$http_x_test|$ssl_client_s_dn';\n"
        .to_owned();
    for (port, cert, mtls) in SHADOWS {
        let (cert, key) = pki.server(cert);
        let client_auth = if mtls {
            format!("ssl_verify_client on; ssl_client_certificate {};", pki.ca().display())
        } else {
            String::new()
        };
        block.push_str(&format!(
            "server {{ listen {ip}:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; {client_auth}\n\
             access_log {} copies; location / {{ return 200 \"ok\\n\"; }} }}\n",
            cert.display(),
            key.display(),
            log.display()
        ));
    }
    let _nginx = Nginx::start(&topo.shadow, &format!("tls-{}", topo.id), &block);
    for (port, ..) in SHADOWS {
        wait_listening(&topo.shadow, SocketAddr::new(ip, port));
    }
    let url = |port: u16| format!("https://{ip}:{port}");
    let (client_cert, client_key) = pki.client();
    let (ca, client_cert, client_key) = (
        pki.ca().display().to_string(),
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    let mut extra =
        vec!["--shadow-ca", &ca, "--shadow-cert", &client_cert, "--shadow-key", &client_key];
    let others: Vec<String> = SHADOWS[1..].iter().map(|(port, ..)| url(*port)).collect();
    for other in &others {
        extra.extend(["--shadow", other]);
    }
    let args = run_args(&topo.server_host_if, PORT, &url(SHADOWS[0].0), &extra);
    let agent = AgentProcess::start(&args, "mirror run: ready");
    let requests: Vec<RawRequest> = (0..COPIES)
        .map(|i| RawRequest::new("GET", &format!("/tls/{i}"), "svc:8000", b""))
        .collect();
    keep_alive(&topo.client, SocketAddr::new(topo.server_addr(Family::V4), PORT), requests)
        .unwrap();
    let summary = agent.stop();
    let n = COPIES as u64;
    let authority = |port: u16| format!("{ip}:{port}");
    assert_eq!(count(&summary, &authority(8443), "2xx"), n, "{summary}");
    assert_eq!(count(&summary, &authority(8447), "2xx"), n, "mTLS: {summary}");
    assert_eq!(count(&summary, &authority(8444), "tls_expired"), n, "{summary}");
    assert_eq!(count(&summary, &authority(8445), "tls_name_mismatch"), n, "{summary}");
    assert_eq!(count(&summary, &authority(8446), "tls_untrusted"), n, "{summary}");
    // nginx logs a request once it is answered: the agent has seen every answer by now, the
    // last log lines may still be on their way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= 2 * COPIES || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let client_ip = topo.client_addr(Family::V4);
    for (port, dn) in [(8443, "-"), (8447, "CN=mirror-agent")] {
        let mut got: Vec<&String> =
            lines.iter().filter(|l| l.starts_with(&format!("{port}|"))).collect();
        got.sort();
        let mut want: Vec<String> = (0..COPIES)
            .map(|i| format!("{port}|GET /tls/{i} HTTP/1.1|svc-shadow:8000|{client_ip}|raw|{dn}"))
            .collect();
        want.sort();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "shadow {port}");
    }
    assert_eq!(lines.len(), 2 * COPIES, "nothing reached the refused shadows: {lines:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
