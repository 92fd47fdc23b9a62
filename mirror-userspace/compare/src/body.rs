//! Bodies as they are compared: transfer coding removed, content coding decoded (with a
//! cap on the decoded size: a gzip bomb stops at the cap), then typed by Content-Type.
use std::io::Read;

use bytes::Bytes;
use mirror_http::Head;

use crate::json::Json;

/// A body ready for comparison, borrowing from its [`Decoded`] bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Body<'a> {
    Empty,
    /// `application/json` or `*+json` that parses.
    Json(Json<'a>),
    /// `text/*`, HTML, XML, or JSON that does not parse (counted), valid UTF-8.
    Text(&'a str),
    /// Anything else: compared by length and hash.
    Binary {
        len: usize,
        hash: u64,
    },
}

/// Why a body could not be decoded; the comparison counts it and compares what it can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked framing")]
    Chunked,
    #[error("invalid {0} content coding")]
    Coding(&'static str),
    #[error("unknown content coding")]
    UnknownCoding,
    #[error("decoded body over the cap")]
    TooLarge,
}

/// A body without its transfer and content codings, and what went wrong on the way (the
/// raw body is then compared as bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub bytes: Bytes,
    kind: Kind,
    pub error: Option<BodyError>,
}

impl Decoded {
    /// The body typed: JSON parsed (borrowing the bytes), text, or described by length
    /// and hash; and whether it was JSON by its Content-Type that did not parse.
    pub fn body(&self) -> (Body<'_>, bool) {
        if self.bytes.is_empty() && self.error.is_none() {
            return (Body::Empty, false);
        }
        if self.error.is_some() {
            return (binary(&self.bytes), false);
        }
        if self.kind == Kind::Json {
            if let Ok(j) = Json::parse(&self.bytes) {
                return (Body::Json(j), false);
            }
        }
        let body = match (self.kind, std::str::from_utf8(&self.bytes)) {
            (Kind::Json | Kind::Text, Ok(t)) => Body::Text(t),
            _ => binary(&self.bytes),
        };
        (body, self.kind == Kind::Json)
    }
}

/// Decodes `raw`, the body as captured or received, of a response with head `head`.
pub fn decode(head: &Head, raw: &Bytes, max_decoded: usize) -> Decoded {
    let kind = content_kind(head.header("content-type").unwrap_or(b""));
    match unwrap(head, raw, max_decoded) {
        Ok(bytes) => Decoded { bytes, kind, error: None },
        Err(error) => Decoded { bytes: raw.clone(), kind, error: Some(error) },
    }
}

/// The body without transfer and content coding.
fn unwrap(head: &Head, raw: &Bytes, max: usize) -> Result<Bytes, BodyError> {
    let chunked = head.has_token("transfer-encoding", "chunked");
    let body = if chunked {
        mirror_http::decode_chunked(raw).ok_or(BodyError::Chunked)?
    } else {
        raw.clone()
    };
    let coding = head.header("content-encoding").map(|v| v.trim_ascii().to_ascii_lowercase());
    match coding.as_deref() {
        None | Some(b"identity") | Some(b"") => {
            if body.len() > max {
                return Err(BodyError::TooLarge);
            }
            Ok(body)
        }
        Some(b"gzip") | Some(b"x-gzip") => {
            read_capped(flate2::read::GzDecoder::new(&body[..]), max, "gzip")
        }
        // RFC 9110's deflate is zlib-wrapped; some servers send it raw.
        Some(b"deflate") => read_capped(flate2::read::ZlibDecoder::new(&body[..]), max, "deflate")
            .or_else(|_| read_capped(flate2::read::DeflateDecoder::new(&body[..]), max, "deflate")),
        Some(b"br") => {
            read_capped(brotli_decompressor::Decompressor::new(&body[..], 4096), max, "br")
        }
        Some(_) => Err(BodyError::UnknownCoding),
    }
}

/// Reads at most `max` decoded bytes; one more means the body is over the cap.
fn read_capped(reader: impl Read, max: usize, coding: &'static str) -> Result<Bytes, BodyError> {
    let mut out = Vec::new();
    reader.take(max as u64 + 1).read_to_end(&mut out).map_err(|_| BodyError::Coding(coding))?;
    if out.len() > max {
        return Err(BodyError::TooLarge);
    }
    Ok(out.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Json,
    Text,
    Other,
}

fn content_kind(content_type: &[u8]) -> Kind {
    let media = content_type.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    let media = media.to_ascii_lowercase();
    if media == b"application/json" || media.ends_with(b"+json") {
        Kind::Json
    } else if media.starts_with(b"text/")
        || media.ends_with(b"+xml")
        || media == b"application/xml"
        || media == b"application/javascript"
    {
        Kind::Text
    } else {
        Kind::Other
    }
}

fn binary(bytes: &[u8]) -> Body<'static> {
    Body::Binary { len: bytes.len(), hash: fnv1a(bytes) }
}

/// FNV-1a, 64 bits: a stable hash (the same in every agent and across restarts, unlike
/// std's randomly keyed one), enough to tell two bodies apart.
pub(crate) fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
pub(crate) fn head(text: &str) -> Head {
    let (len, parts) = Head::parse_response(text.as_bytes()).unwrap().unwrap();
    parts.with_bytes(Bytes::copy_from_slice(&text.as_bytes()[..len]))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CAP: usize = 1 << 20;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn chunked_gzip_json_decodes() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let z = gzip(br#"{"a":[1,2]}"#);
        let mut raw = format!("{:x}\r\n", z.len()).into_bytes();
        raw.extend_from_slice(&z);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let d = decode(&h, &raw.into(), CAP);
        assert_eq!(d.body().0, Body::Json(Json::parse(br#"{"a":[1,2]}"#).unwrap()));
        assert_eq!(d.error, None);
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_cap() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n");
        let bomb = gzip(&vec![0u8; 8 << 20]);
        assert!(bomb.len() < 64 << 10);
        let d = decode(&h, &bomb, CAP);
        assert_eq!(d.error, Some(BodyError::TooLarge));
        assert!(matches!(d.body().0, Body::Binary { len, .. } if len == bomb.len()));
    }

    #[test]
    fn invalid_json_non_utf8_and_bad_codings_are_said() {
        let json = head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n");
        let d = decode(&json, &Bytes::from_static(b"{not json"), CAP);
        assert_eq!(d.body(), (Body::Text("{not json"), true));
        let d = decode(&json, &Bytes::from_static(b"\xff\xfe{"), CAP);
        assert!(matches!(d.body(), (Body::Binary { len: 3, .. }, true)));
        let text = head("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n");
        assert_eq!(decode(&text, &Bytes::from_static(b"<p>"), CAP).body().0, Body::Text("<p>"));
        let bad = head("HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n");
        assert_eq!(
            decode(&bad, &Bytes::from_static(b"nope"), CAP).error,
            Some(BodyError::Coding("br"))
        );
        let odd = head("HTTP/1.1 200 OK\r\nContent-Encoding: zstd\r\n\r\n");
        assert_eq!(
            decode(&odd, &Bytes::from_static(b"x"), CAP).error,
            Some(BodyError::UnknownCoding)
        );
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            decode(&chunked, &Bytes::from_static(b"zz\r\n"), CAP).error,
            Some(BodyError::Chunked)
        );
        assert_eq!(decode(&text, &Bytes::new(), CAP).body().0, Body::Empty);
    }
}
