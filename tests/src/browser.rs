//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`): a
//! few commands of the protocol (plain HTTP and JSON), enough to load a page, find and click
//! elements, run a script and take a screenshot. The session and the driver end on drop.
use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use std::io::{BufRead, BufReader, Read, Write};

use crate::client::free_local_addr;

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: std::path::PathBuf,
}

/// Chromium's flags for a closed network (no background connections to fail) as root.
const ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

impl Browser {
    pub fn start() -> Browser {
        let addr = free_local_addr();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = std::env::temp_dir().join(format!("mirror-chromium-{}", addr.port()));
        let mut args: Vec<String> = ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": args}}}});
        let mut b = Browser { driver, addr, session: String::new(), profile };
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).into();
        b
    }

    /// One WebDriver command; its `value`. The response is read by its Content-Length
    /// (chromedriver keeps connections open), and Host names the address (it refuses others).
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut text = vec![0; length];
        reader.read_exact(&mut text).unwrap();
        let v: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&text)));
        v.get("value").cloned().unwrap_or(v)
    }

    fn session(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session("/url"), json!({ "url": url }));
    }

    /// The element matching `css`, if there is one now.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self.call(
            "POST",
            &self.session("/elements"),
            json!({"using": "css selector", "value": css}),
        );
        let first = v.as_array()?.first()?.as_object()?.values().next()?.as_str()?.to_string();
        Some(first)
    }

    /// Waits (up to 20 s) until an element matches `css`; its id.
    pub fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(id) = self.find(css) {
                return id;
            }
            assert!(Instant::now() < deadline, "{css} never appeared in:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (up to 20 s) until no element matches `css`.
    pub fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.find(css).is_some() {
            assert!(Instant::now() < deadline, "{css} is still there");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into an input element.
    pub fn type_into(&self, element: &str, text: &str) {
        self.call(
            "POST",
            &self.session(&format!("/element/{element}/value")),
            json!({ "text": text }),
        );
    }

    pub fn click(&self, element: &str) {
        self.call("POST", &self.session(&format!("/element/{element}/click")), json!({}));
    }

    /// The page's visible text.
    pub fn text(&self) -> String {
        let v = self.call(
            "POST",
            &self.session("/execute/sync"),
            json!({
            "script": "return document.body.innerText", "args": []}),
        );
        v.as_str().unwrap_or_default().to_string()
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", &self.session("/screenshot"), Value::Null);
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            self.call("DELETE", &self.session(""), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
