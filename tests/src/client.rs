//! Real clients inside the client namespace: a raw-socket HTTP/1.1 client (exact bytes,
//! keep-alive) and curl.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::netns::{run, Netns};

/// One request as bytes on the wire, with what the server must answer.
pub struct RawRequest {
    pub bytes: Vec<u8>,
    pub expected_body: String,
}

impl RawRequest {
    /// A request with a Content-Length body (or none if `body` is empty and `method` is GET).
    pub fn new(method: &str, target: &str, host: &str, body: &[u8]) -> RawRequest {
        let mut bytes = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nX-Test: raw\r\n");
        if !body.is_empty() || method != "GET" {
            bytes.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        bytes.push_str("\r\n");
        let mut bytes = bytes.into_bytes();
        bytes.extend_from_slice(body);
        RawRequest { bytes, expected_body: crate::server::expected_body(method, target, body) }
    }
}

/// Sends `requests` one after another on one keep-alive connection from inside `ns`, reads
/// and checks every response, and returns the client's local address.
pub fn keep_alive(ns: &Netns, server: SocketAddr, requests: Vec<RawRequest>) -> Result<SocketAddr> {
    ns.run(move || -> Result<SocketAddr> {
        let mut stream = TcpStream::connect(server).context("connect")?;
        let local = stream.local_addr()?;
        let mut pending = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            stream.write_all(&req.bytes)?;
            let body = read_response(&mut stream, &mut pending)
                .with_context(|| format!("response {i}"))?;
            if body != req.expected_body.as_bytes() {
                bail!(
                    "response {i}: got {:?}, want {:?}",
                    String::from_utf8_lossy(&body),
                    req.expected_body
                );
            }
        }
        Ok(SocketAddr::new(local.ip().to_canonical(), local.port()))
    })
}

/// Reads one response with a Content-Length body; `buf` carries bytes read past it.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = resp.parse(buf)? {
            if resp.code != Some(200) {
                bail!("status {:?}", resp.code);
            }
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .context("no content-length")
                .and_then(|h| Ok(std::str::from_utf8(h.value)?.parse()?))?;
            while buf.len() < head_len + len {
                fill(stream, buf)?;
            }
            let body = buf[head_len..head_len + len].to_vec();
            buf.drain(..head_len + len);
            return Ok(body);
        }
        fill(stream, buf)?;
    }
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 65536];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        bail!("connection closed early");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Runs curl inside `ns` (failing on HTTP errors) and returns its output.
pub fn curl(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut cmd: Command = ns.command("curl");
    cmd.args(["-sS", "--fail"]).args(args);
    Ok(String::from_utf8(run(&mut cmd)?.stdout)?)
}

/// Writes all `requests` at once on one connection (pipelining), then reads and checks the
/// responses in order. Returns the client's local address.
pub fn pipelined(ns: &Netns, server: SocketAddr, requests: Vec<RawRequest>) -> Result<SocketAddr> {
    ns.run(move || -> Result<SocketAddr> {
        let mut stream = TcpStream::connect(server).context("connect")?;
        let local = stream.local_addr()?;
        let all: Vec<u8> = requests.iter().flat_map(|r| r.bytes.iter().copied()).collect();
        stream.write_all(&all)?;
        let mut pending = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            let body = read_response(&mut stream, &mut pending)?;
            if body != req.expected_body.as_bytes() {
                bail!("pipelined response {i} differs");
            }
        }
        Ok(SocketAddr::new(local.ip().to_canonical(), local.port()))
    })
}

/// Sends `count` requests with a hyper client on one keep-alive connection from inside
/// `ns`; checks every response and returns the client's local address.
pub fn hyper_client(ns: &Netns, server: SocketAddr, count: usize) -> Result<SocketAddr> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    ns.run(move || -> Result<SocketAddr> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(server).await?;
            let local = stream.local_addr()?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            for i in 0..count {
                let body = vec![b'h'; i * 100];
                let target = format!("/hyper/{i}");
                let req = hyper::Request::post(&target)
                    .header("host", "svc:8080")
                    .body(Full::new(bytes::Bytes::from(body.clone())))?;
                let resp = sender.send_request(req).await?;
                let got = resp.into_body().collect().await?.to_bytes();
                if got != crate::server::expected_body("POST", &target, &body).as_bytes() {
                    bail!("hyper response {i} differs");
                }
            }
            Ok(SocketAddr::new(local.ip().to_canonical(), local.port()))
        })
    })
}

/// A loopback address with a port nothing listens on right now (for an agent's listener).
pub fn free_local_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `GET path` from this namespace, the connection closed after: the status and the whole
/// response as text.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"))
}

/// The value of the first line of a Prometheus text starting with `name_and_labels` (0 if
/// none).
pub fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `POST path` with a JSON `body`, as [`get`].
pub fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    request(addr, &(head + body))
}

fn request(addr: SocketAddr, text: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(text.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text)
}
