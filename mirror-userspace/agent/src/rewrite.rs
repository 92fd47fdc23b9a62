//! Turning a captured request into the copy sent to a shadow: the captured bytes, with the
//! Host value rewritten (Envoy's rule by default), the configured header edits applied and
//! the client appended to X-Forwarded-For. Everything else is written as it was on the wire:
//! the request line, header names in their case, order and repetitions, whitespace, line
//! ends, and the body with its framing (chunk sizes, extensions, trailers). The one exception
//! is an absolute-form target (`GET http://h/p`), sent in origin form (`GET /p`): a server
//! takes the host of an absolute-form target over the Host field (RFC 9112 §3.2.2), which
//! would undo the rewrite.
use std::{fmt::Write as _, net::IpAddr};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

use mirror_http::{FieldLine, H2Fields, Head, RequestView};
use mirror_shadow::ShadowRequest;

/// Envoy's shadow host: `host:port` -> `host-shadow:port`, `host` -> `host-shadow`,
/// `[::1]:p` -> `[::1]-shadow:p`.
pub fn shadow_host(host: &str) -> String {
    let (name, port) = split_port(host.as_bytes());
    format!("{}-shadow{}", String::from_utf8_lossy(name), String::from_utf8_lossy(port))
}

/// `host` and `:port` (empty when there is none) of a Host value.
fn split_port(host: &[u8]) -> (&[u8], &[u8]) {
    let port_at = host.iter().rposition(|&b| b == b':').filter(|&i| {
        let port = &host[i + 1..];
        !port.is_empty()
            && port.iter().all(u8::is_ascii_digit)
            && (!host.starts_with(b"[") || host[..i].ends_with(b"]"))
    });
    host.split_at(port_at.unwrap_or(host.len()))
}

/// How the Host header of a copy is rewritten.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HostRewrite {
    /// Envoy's rule: `host:port` becomes `host-shadow:port`.
    #[default]
    ShadowSuffix,
    /// Keep the original Host.
    Keep,
    /// Use this Host (added if the request has none).
    Literal(HeaderValue),
}

/// Istio's `headers.request`: header edits applied to every copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Replace these headers' values, where the field first occurs (later occurrences are
    /// removed), or add them at the end.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers (for example Authorization, Cookie).
    pub remove: Vec<HeaderName>,
}

/// Heads of copies are written into one buffer, split off as they are done: one allocation
/// per this many bytes of heads, not one per copy.
const HEAD_BUFFER: usize = 64 << 10;

pub struct Rewriter {
    host: HostRewrite,
    edits: HeaderEdits,
    buf: BytesMut,
    /// Which `edits.set` fields the copy being written has had (reused between copies).
    set_done: Vec<bool>,
}

impl Rewriter {
    pub fn new(host: HostRewrite, edits: HeaderEdits) -> Self {
        Self { host, edits, buf: BytesMut::new(), set_done: Vec::new() }
    }

    /// The copy of a captured request (`head`, and its `body` as sent) from `client`. The
    /// same copy goes to every shadow: it does not depend on where it is sent.
    pub fn copy(&mut self, head: &Head, body: &Bytes, client: IpAddr) -> ShadowRequest {
        mirror_capture::arena::reserve(&mut self.buf, head.bytes().len() + 256, HEAD_BUFFER);
        self.request_line(head);
        self.set_done.clear();
        self.set_done.resize(self.edits.set.len(), false);
        let mut seen = Seen::default();
        for line in head.field_lines() {
            self.field(&line, client, &mut seen);
        }
        self.added_fields(client, &seen);
        let eol: &[u8] = if head.bytes().ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
        self.buf.put_slice(eol);
        let method = head.method().unwrap_or("");
        ShadowRequest {
            head: self.buf.split().freeze(),
            body: body.clone(),
            head_only: method == "HEAD",
            last_on_connection: last_on_connection(head),
            idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        }
    }

    /// The request line as sent, but an absolute-form target in origin form.
    fn request_line(&mut self, head: &Head) {
        let target = head.target().unwrap_or("");
        if target.starts_with('/') || target == "*" {
            self.buf.put_slice(head.start_line());
            return;
        }
        let line = head.start_line();
        let eol: &[u8] = if line.ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
        let version = if head.version() == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
        let path = origin_form(target);
        let _ = write!(self.buf, "{} {path} {version}", head.method().unwrap_or("GET"));
        self.buf.put_slice(eol);
    }

    /// One captured field as the copy carries it: removed, replaced in place, Host
    /// rewritten, the client appended to the first X-Forwarded-For, or as sent.
    fn field(&mut self, line: &FieldLine<'_>, client: IpAddr, seen: &mut Seen) {
        let name = line.name;
        if self.edits.remove.iter().any(|n| name.eq_ignore_ascii_case(n.as_str())) {
            return;
        }
        if let Some(i) =
            self.edits.set.iter().position(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
        {
            if !std::mem::replace(&mut self.set_done[i], true) {
                put_line(&mut self.buf, line, &[self.edits.set[i].1.as_bytes()]);
            }
            return;
        }
        let buf = &mut self.buf;
        if name.eq_ignore_ascii_case("host") {
            seen.host = true;
            match &self.host {
                HostRewrite::Keep => put_line(buf, line, &[line.value]),
                HostRewrite::Literal(v) => put_line(buf, line, &[v.as_bytes()]),
                HostRewrite::ShadowSuffix => {
                    let (host, port) = split_port(line.value);
                    put_line(buf, line, &[host, b"-shadow", port]);
                }
            }
        } else if name.eq_ignore_ascii_case("x-forwarded-for") && !seen.forwarded {
            seen.forwarded = true;
            buf.put_slice(line.before_value);
            buf.put_slice(line.value);
            let _ = write!(buf, ", {client}");
            buf.put_slice(line.after_value);
        } else {
            put_line(buf, line, &[line.value]);
        }
    }

    /// Fields the capture did not have: `set` fields it lacked, `add`, a literal Host, and
    /// X-Forwarded-For.
    fn added_fields(&mut self, client: IpAddr, seen: &Seen) {
        let buf = &mut self.buf;
        let unset = self.edits.set.iter().zip(&self.set_done).filter(|(_, done)| !**done);
        for ((name, value), _) in unset {
            put_field(buf, name.as_str(), value.as_bytes());
        }
        for (name, value) in &self.edits.add {
            put_field(buf, name.as_str(), value.as_bytes());
        }
        if let (HostRewrite::Literal(host), false) = (&self.host, seen.host) {
            put_field(buf, "Host", host.as_bytes());
        }
        if !seen.forwarded {
            let _ = write!(buf, "X-Forwarded-For: {client}\r\n");
        }
    }
}

impl Rewriter {
    /// The head of an HTTP/2 stream's copy: `:authority` rewritten by the Host rule, the
    /// edits applied, the client appended to X-Forwarded-For; the other fields as captured,
    /// in their order. None if the captured pseudo-fields make no request URI.
    pub fn h2_head(&self, fields: &H2Fields, client: IpAddr) -> Option<http::request::Parts> {
        let authority = fields.authority().unwrap_or_default();
        let authority = match &self.host {
            HostRewrite::Keep => authority.to_vec(),
            HostRewrite::Literal(v) => v.as_bytes().to_vec(),
            HostRewrite::ShadowSuffix => {
                let (host, port) = split_port(authority);
                [host, b"-shadow", port].concat()
            }
        };
        let scheme = fields.get(":scheme").unwrap_or(b"http");
        let uri = http::Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(fields.target())
            .build()
            .ok()?;
        let method = http::Method::from_bytes(fields.method().as_bytes()).ok()?;
        let (mut parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(http::Version::HTTP_2)
            .body(())
            .ok()?
            .into_parts();
        self.h2_fields(fields, client, &mut parts.headers);
        Some(parts)
    }

    fn h2_fields(&self, fields: &H2Fields, client: IpAddr, headers: &mut http::HeaderMap) {
        let edits = &self.edits;
        let mut forwarded = false;
        // Values are slices of the decoded list, not copies.
        for (name, value) in fields.iter_shared() {
            let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_maybe_shared(value))
            else {
                continue; // pseudo-fields, and what HTTP/2 could not carry anyway
            };
            if edits.remove.contains(&name)
                || edits.set.iter().any(|(n, _)| *n == name)
                || name == http::header::HOST
                || mirror_http::h2::CONNECTION_SPECIFIC.contains(&name.as_str())
                || (name == http::header::TE && value != "trailers")
            {
                continue;
            }
            if name == "x-forwarded-for" && !forwarded {
                forwarded = true;
                let v = [value.as_bytes(), format!(", {client}").as_bytes()].concat();
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    headers.append(name, v);
                }
                continue;
            }
            headers.append(name, value);
        }
        for (name, value) in edits.set.iter().chain(&edits.add) {
            headers.append(name.clone(), value.clone());
        }
        if !forwarded {
            if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
                headers.append("x-forwarded-for", v);
            }
        }
    }
}

/// Which fields the copy being written has had.
#[derive(Default)]
struct Seen {
    host: bool,
    forwarded: bool,
}

/// A captured field line with its value replaced by `value` (in parts).
fn put_line(buf: &mut BytesMut, line: &FieldLine<'_>, value: &[&[u8]]) {
    buf.put_slice(line.before_value);
    value.iter().for_each(|part| buf.put_slice(part));
    buf.put_slice(line.after_value);
}

fn put_field(buf: &mut BytesMut, name: &str, value: &[u8]) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
}

/// Whether the shadow will close the connection after answering this request.
fn last_on_connection(head: &Head) -> bool {
    head.has_token("connection", "close")
        || (head.version() == 0 && !head.has_token("connection", "keep-alive"))
        || head.header("upgrade").is_some()
        || head.method() == Some("CONNECT")
}

/// The path and query of an absolute-form target (`http://host/path?q` -> `/path?q`).
fn origin_form(target: &str) -> &str {
    let after_scheme = target.find("://").map_or(target, |i| &target[i + 3..]);
    match after_scheme.find(['/', '?']) {
        Some(i) if after_scheme[i..].starts_with('/') => &after_scheme[i..],
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirror_flow::ReassemblyConfig;
    use mirror_http::{extractor, HttpConfig, HttpEvent, HttpRequest};
    use mirror_testkit::Conversation;

    fn captured(raw: &[u8]) -> HttpRequest {
        let mut c = Conversation::new(
            "10.0.0.1:999".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            1,
            1,
        );
        let mut x = extractor(ReassemblyConfig::default(), HttpConfig::default());
        let mut events = Vec::new();
        for s in c.open().into_iter().chain(c.request(raw, 1448)) {
            x.push(&s, &mut events);
        }
        match events.pop() {
            Some(HttpEvent::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn copied(r: &mut Rewriter, raw: &[u8]) -> (String, ShadowRequest) {
        let req = captured(raw);
        let copy = r.copy(&req.head, &req.body, "10.0.0.1".parse().unwrap());
        let text = String::from_utf8([&copy.head[..], &copy.body[..]].concat()).unwrap();
        (text, copy)
    }

    fn plain() -> Rewriter {
        Rewriter::new(HostRewrite::ShadowSuffix, HeaderEdits::default())
    }

    /// Byte for byte as captured but the Host value and X-Forwarded-For: names in their
    /// case, repeated and oddly ordered fields, whitespace, chunk extensions and trailers.
    #[test]
    fn a_copy_is_the_captured_bytes_but_host_and_forwarded_for() {
        let raw = "POST /up?x=1 HTTP/1.1\r\nx-LOWER: a\r\nHost:  api:80 \r\nA: 1\r\nB: 2\r\n\
                   A: 3\r\nX-Forwarded-For: 1.2.3.4\r\nTransfer-Encoding: chunked\r\n\
                   x-forwarded-for: 5.6.7.8\r\n\r\n\
                   3;ext=1\r\nabc\r\n0\r\nTrailer-A: t\r\n\r\n";
        let (text, copy) = copied(&mut plain(), raw.as_bytes());
        let expected = raw
            .replace("Host:  api:80 ", "Host:  api-shadow:80 ")
            .replace("X-Forwarded-For: 1.2.3.4", "X-Forwarded-For: 1.2.3.4, 10.0.0.1");
        assert_eq!(text, expected);
        assert!(!copy.head_only && !copy.idempotent && !copy.last_on_connection);
        // Without a Host or X-Forwarded-For: only X-Forwarded-For is added.
        let raw = "GET /h HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        let (text, copy) = copied(&mut plain(), raw.as_bytes());
        assert_eq!(text, raw.replace("\r\n\r\n", "\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"));
        assert!(copy.idempotent && !copy.last_on_connection);
    }

    #[test]
    fn edits_replace_in_place_remove_and_add() {
        let edits = HeaderEdits {
            set: vec![
                (HeaderName::from_static("x-set"), HeaderValue::from_static("new")),
                (HeaderName::from_static("x-missing"), HeaderValue::from_static("m")),
            ],
            add: vec![(HeaderName::from_static("x-add"), HeaderValue::from_static("a"))],
            remove: vec![HeaderName::from_static("authorization")],
        };
        let mut r = Rewriter::new(HostRewrite::ShadowSuffix, edits);
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Set: old\r\nAuthorization: x\r\nX-A: 1\r\nx-set: again\r\n\r\n";
        let (text, _) = copied(&mut r, raw);
        assert_eq!(
            text,
            "GET / HTTP/1.1\r\nHost: h-shadow\r\nX-Set: new\r\nX-A: 1\r\n\
             x-missing: m\r\nx-add: a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        );
        // The same rewriter, again: nothing carried over from the previous copy.
        let (again, _) = copied(&mut r, raw);
        assert_eq!(again, text);
    }

    #[test]
    fn keep_and_literal_hosts_and_the_flags_of_a_copy() {
        let raw = b"HEAD /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let mut keep = Rewriter::new(HostRewrite::Keep, HeaderEdits::default());
        let (text, copy) = copied(&mut keep, raw);
        assert!(text.starts_with("HEAD /c HTTP/1.1\r\nHost: h\r\n"), "{text}");
        assert!(copy.head_only && copy.idempotent && copy.last_on_connection);
        let canary = HostRewrite::Literal(HeaderValue::from_static("canary"));
        let mut literal = Rewriter::new(canary, HeaderEdits::default());
        let (text, _) = copied(&mut literal, raw);
        assert!(text.contains("\r\nHost: canary\r\n"), "{text}");
        let (text, _) = copied(&mut literal, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(text, "GET / HTTP/1.0\r\nHost: canary\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n");
        let (_, copy) = copied(&mut literal, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert!(copy.last_on_connection, "an upgrade leaves HTTP/1");
    }

    #[test]
    fn absolute_form_targets_go_out_in_origin_form() {
        let raw = b"GET http://api:80/p?q=1 HTTP/1.1\r\nHost: api:80\r\n\r\n";
        let (text, _) = copied(&mut plain(), raw);
        assert!(text.starts_with("GET /p?q=1 HTTP/1.1\r\nHost: api-shadow:80\r\n"), "{text}");
        assert_eq!(origin_form("http://h"), "/");
        assert_eq!(origin_form("http://h?q"), "/");
        assert_eq!(origin_form("https://h:1/a/b"), "/a/b");
    }

    #[test]
    fn envoy_host_rule() {
        assert_eq!(shadow_host("httpbin:8000"), "httpbin-shadow:8000");
        assert_eq!(shadow_host("httpbin"), "httpbin-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(shadow_host("[::1]"), "[::1]-shadow");
        assert_eq!(shadow_host("a.b.svc.cluster.local:9080"), "a.b.svc.cluster.local-shadow:9080");
    }

    /// An HTTP/2 stream's copy: `:authority` by the Host rule, the edits applied, the client
    /// appended to X-Forwarded-For, connection-specific fields and `te` other than
    /// `trailers` left out, everything else as captured and in order.
    #[test]
    fn an_http2_copy_rewrites_authority_and_applies_the_edits() {
        let fields = mirror_http::H2Fields::from_pairs([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":authority", b"api:50051"),
            (b":path", b"/pkg.Svc/Call?x=1"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"authorization", b"secret"),
            (b"x-forwarded-for", b"10.9.9.9"),
            (b"connection", b"keep-alive"),
            (b"x-call", b"1"),
            (b"x-call", b"2"),
        ]);
        let edits = HeaderEdits {
            set: vec![(HeaderName::from_static("x-mirrored"), HeaderValue::from_static("1"))],
            add: vec![(HeaderName::from_static("x-added"), HeaderValue::from_static("a"))],
            remove: vec![HeaderName::from_static("authorization")],
        };
        let rewriter = Rewriter::new(HostRewrite::ShadowSuffix, edits);
        let head = rewriter.h2_head(&fields, "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(head.method, http::Method::POST);
        assert_eq!(head.uri.to_string(), "http://api-shadow:50051/pkg.Svc/Call?x=1");
        assert_eq!(head.version, http::Version::HTTP_2);
        let headers: Vec<(&str, &str)> =
            head.headers.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            headers,
            [
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("x-forwarded-for", "10.9.9.9, 10.0.0.1"),
                ("x-call", "1"),
                ("x-call", "2"),
                ("x-mirrored", "1"),
                ("x-added", "a"),
            ]
        );
    }
}
