//! HTTP/1.x message heads: the exact original bytes plus positions of the parsed parts
//! (httparse does the parsing), so nothing is copied or re-serialised.
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// Most header fields in one head; more is treated as malformed.
pub(crate) const MAX_HEADERS: usize = 128;

/// Positions of a head's fields: the first 16 inline, so a typical head costs no allocation
/// (this is on the path of every request and response).
type FieldSpans = SmallVec<[(Span, Span); 16]>;

/// Why a head could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x syntax (httparse's reason).
    Syntax(&'static str),
    /// A framing header that cannot be trusted: conflicting Content-Length values, or an
    /// unsupported Transfer-Encoding.
    Framing(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `inner` lies in `outer`. httparse hands out subslices of its input, except for
    /// empty parts, which may point anywhere (a static ""): those become an empty span.
    fn of(outer: &[u8], inner: &[u8]) -> Span {
        let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
        if inner.is_empty() || start > outer.len() || start + inner.len() > outer.len() {
            return Span { start: 0, end: 0 };
        }
        Span { start: start as u32, end: (start + inner.len()) as u32 }
    }

    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StartLine {
    Request { method: Span, target: Span },
    Response { status: u16, reason: Span },
}

/// A parsed head. `bytes` is exactly what was on the wire, up to and including the empty
/// line that ends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    bytes: Bytes,
    start: StartLine,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    headers: FieldSpans,
    /// Every span [`Head::text`] reads was found to be UTF-8 when the bytes were attached.
    text_checked: bool,
}

impl Head {
    /// Parses a request head at the start of `buf`. `Ok(None)`: not complete yet.
    pub fn parse_request(buf: &[u8]) -> Result<Option<(usize, HeadParts)>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let start = StartLine::Request {
                    method: Span::of(buf, req.method.unwrap_or("").as_bytes()),
                    target: Span::of(buf, req.path.unwrap_or("").as_bytes()),
                };
                let headers = spans(buf, req.headers);
                Ok(Some((len, HeadParts { start, version: req.version.unwrap_or(1), headers })))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(HeadError::Syntax(error_name(e))),
        }
    }

    /// Parses a response head at the start of `buf`. `Ok(None)`: not complete yet.
    pub fn parse_response(buf: &[u8]) -> Result<Option<(usize, HeadParts)>, HeadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let start = StartLine::Response {
                    status: resp.code.unwrap_or(0),
                    reason: Span::of(buf, resp.reason.unwrap_or("").as_bytes()),
                };
                let headers = spans(buf, resp.headers);
                Ok(Some((len, HeadParts { start, version: resp.version.unwrap_or(1), headers })))
            }
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(HeadError::Syntax(error_name(e))),
        }
    }

    /// Moves the head's bytes into `arena` (see [`arena_copy`]), so that keeping it (while
    /// its body arrives, or while its copy waits) does not keep the larger capture buffer it
    /// was sliced from alive.
    pub fn unshare(&mut self, arena: &mut BytesMut) {
        self.bytes = arena_copy(arena, &self.bytes);
    }

    /// The exact head bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// A name, method, target or reason. Looked up many times per head (every `header`
    /// call walks the names), so the UTF-8 check is made once, when the bytes are attached.
    fn text(&self, span: Span) -> &str {
        let bytes = &self.bytes[span.range()];
        if self.text_checked {
            // SAFETY: `HeadParts::with_bytes` checked that every span `text` is called with
            // (the head's own names, method, target, reason) is UTF-8 in these bytes; the
            // bytes never change after (`unshare` copies them as they are).
            unsafe { std::str::from_utf8_unchecked(bytes) }
        } else {
            std::str::from_utf8(bytes).unwrap_or("")
        }
    }

    pub fn method(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { method, .. } => Some(self.text(method)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn target(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { target, .. } => Some(self.text(target)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.text(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Header fields in their original order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|&(n, v)| (self.text(n), &self.bytes[v.range()]))
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The start line as sent, with its line end.
    pub fn start_line(&self) -> &[u8] {
        let end = self.headers.first().map_or(self.fields_end(), |(n, _)| n.start as usize);
        &self.bytes[..end]
    }

    /// Where the empty line that ends the head begins.
    fn fields_end(&self) -> usize {
        let len = self.bytes.len();
        len - if self.bytes.ends_with(b"\r\n") { 2 } else { 1 }.min(len)
    }

    /// Header field lines as sent, in order: each line's bytes around its value, so a copy
    /// can replace a value and keep everything else (name case, whitespace, line end).
    pub fn field_lines(&self) -> impl Iterator<Item = FieldLine<'_>> {
        let next_starts = self.headers.iter().skip(1).map(|(n, _)| n.start as usize);
        let ends = next_starts.chain(std::iter::once(self.fields_end()));
        self.headers.iter().zip(ends).map(move |(&(name, value), end)| {
            let line = &self.bytes[name.start as usize..end];
            // An empty value has no position (see `Span::of`): it sits before the line's
            // trailing whitespace and line end.
            let (at, value_end) = if value.end > value.start {
                (
                    value.start as usize - name.start as usize,
                    value.end as usize - name.start as usize,
                )
            } else {
                let at = line.trim_ascii_end().len();
                (at, at)
            };
            FieldLine {
                name: self.text(name),
                value: &line[at..value_end],
                before_value: &line[..at],
                after_value: &line[value_end..],
            }
        })
    }

    /// Whether any value of `name` holds `token` in its comma-separated list.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers().filter(|(n, _)| n.eq_ignore_ascii_case(name)).any(|(_, v)| {
            v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// One header field line of a [`Head`]: `before_value`, `value` and `after_value` are the
/// line's exact bytes (`Name: ` / the value / trailing whitespace and the line end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLine<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
    pub before_value: &'a [u8],
    pub after_value: &'a [u8],
}

/// A parsed head before its bytes are split off the buffer.
#[derive(Debug)]
pub struct HeadParts {
    start: StartLine,
    version: u8,
    headers: FieldSpans,
}

impl HeadParts {
    /// Attaches the head bytes (exactly the `len` bytes that were parsed).
    pub fn with_bytes(self, bytes: Bytes) -> Head {
        let HeadParts { mut start, version, mut headers } = self;
        // Other bytes than those parsed (a caller's mistake) leave a head with no parts
        // rather than spans past its end.
        let fits = |span: Span| span.end as usize <= bytes.len();
        let start_fits = match start {
            StartLine::Request { method, target } => fits(method) && fits(target),
            StartLine::Response { reason, .. } => fits(reason),
        };
        if !start_fits || !headers.iter().all(|&(n, v)| fits(n) && fits(v)) {
            headers.clear();
            let empty = Span { start: 0, end: 0 };
            start = match start {
                StartLine::Request { .. } => StartLine::Request { method: empty, target: empty },
                StartLine::Response { status, .. } => StartLine::Response { status, reason: empty },
            };
        }
        let utf8 = |span: Span| std::str::from_utf8(&bytes[span.range()]).is_ok();
        let start_ok = match start {
            StartLine::Request { method, target } => utf8(method) && utf8(target),
            StartLine::Response { reason, .. } => utf8(reason),
        };
        let text_checked = start_ok && headers.iter().all(|&(name, _)| utf8(name));
        Head { bytes, start, version, headers, text_checked }
    }
}

/// Chunks of the framing arena: one allocation per this many bytes of heads and bodies.
const ARENA_CHUNK: usize = 64 << 10;

/// `data` copied into the framing arena (see `mirror_capture::arena`): the copies of many
/// messages share one allocation, freed once the last of them is dropped.
pub(crate) fn arena_copy(arena: &mut BytesMut, data: &[u8]) -> Bytes {
    mirror_capture::arena::copy(arena, data, ARENA_CHUNK)
}

fn spans(buf: &[u8], headers: &[httparse::Header<'_>]) -> FieldSpans {
    headers.iter().map(|h| (Span::of(buf, h.name.as_bytes()), Span::of(buf, h.value))).collect()
}

fn error_name(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "new line",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "version",
    }
}

/// How the body of a message is delimited (RFC 9112, section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// A response body that ends when the connection closes.
    UntilClose,
}

/// The framing a head's own headers declare: Transfer-Encoding wins over Content-Length.
/// `Ok(None)`: neither is present.
pub(crate) fn declared_body(head: &Head) -> Result<Option<BodyKind>, HeadError> {
    if head.header("transfer-encoding").is_some() {
        let last = head
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .last();
        return match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Ok(Some(BodyKind::Chunked)),
            // A request must end with chunked; a response without it is read until close.
            _ if head.status().is_some() => Ok(Some(BodyKind::UntilClose)),
            _ => Err(HeadError::Framing("transfer-encoding without chunked")),
        };
    }
    let mut length: Option<u64> = None;
    for (_, v) in head.headers().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        for part in v.split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii())
                .ok_or(HeadError::Framing("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Framing("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length.map(|n| if n == 0 { BodyKind::None } else { BodyKind::Length(n) }))
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Head {
        let (len, parts) = Head::parse_request(text.as_bytes()).unwrap().unwrap();
        parts.with_bytes(Bytes::copy_from_slice(&text.as_bytes()[..len]))
    }

    #[test]
    fn request_parts_point_into_the_original_bytes() {
        let h = request("POST /a?b=1 HTTP/1.0\r\nHost: x:80\r\nX-Y:  z \r\n\r\nbody");
        assert_eq!(h.method(), Some("POST"));
        assert_eq!(h.target(), Some("/a?b=1"));
        assert_eq!(h.version(), 0);
        assert_eq!(h.header("HOST"), Some(&b"x:80"[..]));
        assert_eq!(h.header("x-y"), Some(&b"z"[..]));
        assert_eq!(h.bytes().len(), "POST /a?b=1 HTTP/1.0\r\nHost: x:80\r\nX-Y:  z \r\n\r\n".len());
    }

    #[test]
    fn field_lines_cover_the_head_exactly() {
        let text = "GET /x HTTP/1.1\r\nHost:a:1\r\nX-Empty:\r\nX-Ws:  v w  \r\nlf: bare\n\r\n";
        let h = request(text);
        assert_eq!(h.start_line(), b"GET /x HTTP/1.1\r\n");
        let lines: Vec<FieldLine<'_>> = h.field_lines().collect();
        let field = |name, before_value, value, after_value| FieldLine {
            name,
            value,
            before_value,
            after_value,
        };
        assert_eq!(
            lines,
            [
                field("Host", &b"Host:"[..], &b"a:1"[..], &b"\r\n"[..]),
                field("X-Empty", b"X-Empty:", b"", b"\r\n"),
                field("X-Ws", b"X-Ws:  ", b"v w", b"  \r\n"),
                field("lf", b"lf: ", b"bare", b"\n"),
            ]
        );
        let mut rebuilt = h.start_line().to_vec();
        for l in &lines {
            rebuilt.extend_from_slice(l.before_value);
            rebuilt.extend_from_slice(l.value);
            rebuilt.extend_from_slice(l.after_value);
        }
        rebuilt.extend_from_slice(b"\r\n");
        assert_eq!(rebuilt, text.as_bytes());
        let bare = request("GET / HTTP/1.0\n\n");
        assert_eq!(bare.start_line(), b"GET / HTTP/1.0\n");
        assert_eq!(bare.field_lines().count(), 0);
    }

    /// Bytes attached that do not hold the parsed parts (a caller's mistake) give a head
    /// without parts: no panic, never invalid text.
    #[test]
    fn mismatched_bytes_give_empty_text_not_a_panic() {
        let text = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let (_, parts) = Head::parse_request(text.as_bytes()).unwrap().unwrap();
        let h = parts.with_bytes(Bytes::from_static(b"\xff\xfe"));
        assert_eq!(h.method(), Some(""));
        assert_eq!(h.headers().count(), 0);
        assert_eq!(h.field_lines().count(), 0);
    }

    #[test]
    fn body_framing() {
        let te = request(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(declared_body(&te), Ok(Some(BodyKind::Chunked)));
        let cl = request("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(declared_body(&cl), Ok(Some(BodyKind::Length(5))));
        let bad = request("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(declared_body(&bad).is_err());
        let bad = request("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert!(declared_body(&bad).is_err());
        let bad = request("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(declared_body(&bad).is_err());
        let none = request("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(declared_body(&none), Ok(None));
    }

    #[test]
    fn tokens_in_lists() {
        let h = request(
            "GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(h.has_token("connection", "upgrade"));
        assert!(!h.has_token("connection", "close"));
    }
}
