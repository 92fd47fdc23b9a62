//! Responses as a client reads them: the framing decision both the capture side (pairing in
//! [`crate::HttpConnection`]) and the shadow clients make, and [`ResponseReader`], which
//! cuts the responses a client receives on one connection out of the bytes it reads.
use bytes::{Buf, Bytes, BytesMut};

use crate::{
    chunked::{ChunkedDecoder, ChunkedError},
    framer::MAX_HEAD_BYTES,
    head::{declared_body, BodyKind, Head, HeadError},
};

/// What a response status means for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseKind {
    /// 1xx but 101: an interim response; the final one follows.
    Interim,
    /// 101: the connection leaves HTTP/1.
    SwitchingProtocols,
    /// The response that answers the request.
    Final,
}

impl ResponseKind {
    pub(crate) fn of(status: u16) -> ResponseKind {
        match status {
            101 => ResponseKind::SwitchingProtocols,
            100..=199 => ResponseKind::Interim,
            _ => ResponseKind::Final,
        }
    }
}

/// How the body of a final response is delimited (RFC 9112, section 6.3), given whether it
/// answers a HEAD request: the one rule the capture side (pairing) and the shadow clients
/// follow.
pub(crate) fn final_body(head: &Head, head_request: bool) -> Result<BodyKind, HeadError> {
    Ok(match head.status() {
        Some(204 | 304) => BodyKind::None,
        _ if head_request => BodyKind::None,
        _ => declared_body(head)?.unwrap_or(BodyKind::UntilClose),
    })
}

/// Why a connection's responses cannot be read any further.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("malformed response head ({0:?})")]
    Head(HeadError),
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLong,
    #[error("malformed chunked body ({})", .0 .0)]
    Chunked(ChunkedError),
    #[error("the shadow switched protocols")]
    SwitchedProtocols,
    #[error("a response to no request")]
    Unrequested,
}

/// A complete final response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub head: Head,
    /// The body as sent (chunked framing included), up to the reader's cap.
    pub body: Bytes,
    /// Body bytes beyond the cap, not kept.
    pub body_dropped: u64,
}

impl ClientResponse {
    pub fn status(&self) -> u16 {
        self.head.status().unwrap_or(0)
    }

    /// The server closes the connection after this response.
    pub fn closes_connection(&self) -> bool {
        self.head.has_token("connection", "close")
    }
}

/// The response being read: its head and what is left of its body.
struct Reading {
    head: Head,
    left: BodyLeft,
    body: BytesMut,
    body_dropped: u64,
}

enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// Reads the responses on one client connection, in order. Bodies are kept up to a cap
/// (0: only heads are kept), so a shadow can never make the reader hold more.
pub struct ResponseReader {
    max_body: usize,
    reading: Option<Reading>,
}

impl ResponseReader {
    pub fn new(max_body: usize) -> Self {
        Self { max_body, reading: None }
    }

    /// Consumes bytes of `input` and returns the next complete final response, if there is
    /// one (call again for the next). `head_request` is asked once per final head whether
    /// its request was a HEAD request (`None`: no request is waiting).
    pub fn next(
        &mut self,
        input: &mut BytesMut,
        mut head_request: impl FnMut() -> Option<bool>,
    ) -> Result<Option<ClientResponse>, ReadError> {
        loop {
            if self.reading.is_none() && !self.read_head(input, &mut head_request)? {
                return Ok(None);
            }
            if let Some(done) = self.read_body(input)? {
                return Ok(Some(done));
            }
            if input.is_empty() {
                return Ok(None);
            }
        }
    }

    /// The head of the response whose body is being read, if any.
    pub fn reading(&self) -> Option<&Head> {
        self.reading.as_ref().map(|r| &r.head)
    }

    /// The connection ended: a body delimited by the close is complete now.
    pub fn finish(&mut self) -> Option<ClientResponse> {
        match self.reading.take() {
            Some(r) if matches!(r.left, BodyLeft::UntilClose) => Some(r.into_response()),
            _ => None,
        }
    }

    /// Parses a head if one is complete; interim (1xx) heads are skipped.
    fn read_head(
        &mut self,
        input: &mut BytesMut,
        head_request: &mut impl FnMut() -> Option<bool>,
    ) -> Result<bool, ReadError> {
        loop {
            let (len, parts) = match Head::parse_response(input) {
                Ok(Some(parsed)) => parsed,
                Ok(None) if input.len() > MAX_HEAD_BYTES => return Err(ReadError::HeadTooLong),
                Ok(None) => return Ok(false),
                Err(e) => return Err(ReadError::Head(e)),
            };
            let head = parts.with_bytes(input.split_to(len).freeze());
            match ResponseKind::of(head.status().unwrap_or(0)) {
                ResponseKind::Interim => continue,
                ResponseKind::SwitchingProtocols => return Err(ReadError::SwitchedProtocols),
                ResponseKind::Final => {}
            }
            let is_head = head_request().ok_or(ReadError::Unrequested)?;
            let left = match final_body(&head, is_head).map_err(ReadError::Head)? {
                BodyKind::None => BodyLeft::Length(0),
                BodyKind::Length(n) => BodyLeft::Length(n),
                BodyKind::Chunked => BodyLeft::Chunked(ChunkedDecoder::default()),
                BodyKind::UntilClose => BodyLeft::UntilClose,
            };
            self.reading = Some(Reading { head, left, body: BytesMut::new(), body_dropped: 0 });
            return Ok(true);
        }
    }

    /// Consumes body bytes; the response once its body is complete.
    fn read_body(&mut self, input: &mut BytesMut) -> Result<Option<ClientResponse>, ReadError> {
        let Some(r) = &mut self.reading else { return Ok(None) };
        let (used, done) = match &mut r.left {
            BodyLeft::Length(n) => {
                let take = (*n).min(input.len() as u64);
                *n -= take;
                (take as usize, *n == 0)
            }
            BodyLeft::Chunked(decoder) => {
                let used = decoder.advance(input).map_err(ReadError::Chunked)?;
                (used, decoder.is_done())
            }
            BodyLeft::UntilClose => (input.len(), false),
        };
        let room = self.max_body.saturating_sub(r.body.len()).min(used);
        r.body.extend_from_slice(&input[..room]);
        r.body_dropped += (used - room) as u64;
        input.advance(used);
        Ok(if done { self.reading.take().map(Reading::into_response) } else { None })
    }
}

impl Reading {
    fn into_response(self) -> ClientResponse {
        ClientResponse {
            head: self.head,
            body: self.body.freeze(),
            body_dropped: self.body_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(wire: &[u8], piece: usize, heads: &[bool], cap: usize) -> Vec<ClientResponse> {
        let mut reader = ResponseReader::new(cap);
        let (mut input, mut out, mut asked) = (BytesMut::new(), Vec::new(), 0);
        for chunk in wire.chunks(piece) {
            input.extend_from_slice(chunk);
            let mut ask = || {
                asked += 1;
                heads.get(asked - 1).copied()
            };
            while let Some(r) = reader.next(&mut input, &mut ask).unwrap() {
                out.push(r);
            }
        }
        out.extend(reader.finish());
        out
    }

    /// Every framing, arriving in pieces, in order; bodies kept up to the cap.
    #[test]
    fn reads_every_framing_in_pieces() {
        let wire: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
            HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\nuntil the end";
        for piece in [1, 7, wire.len()] {
            let got = read_all(wire, piece, &[false, false, true, false, false], 4);
            let statuses: Vec<u16> = got.iter().map(ClientResponse::status).collect();
            assert_eq!(statuses, [200, 201, 200, 204, 500], "pieces of {piece}");
            assert_eq!(&got[0].body[..], b"abc");
            assert_eq!((&got[1].body[..], got[1].body_dropped), (&b"2\r\nh"[..], 8));
            assert!(got[4].closes_connection());
            assert_eq!((&got[4].body[..], got[4].body_dropped), (&b"unti"[..], 9));
        }
    }

    /// The framing rules are the capture side's: the last transfer coding decides, and a
    /// Content-Length must be digits only.
    #[test]
    fn framing_is_the_capture_sides() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw until close";
        let got = read_all(wire, wire.len(), &[false], 64);
        assert_eq!(&got[0].body[..], b"raw until close", "chunked is not the last coding");
        let mut reader = ResponseReader::new(0);
        let mut input = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"[..]);
        let e = reader.next(&mut input, || Some(false)).unwrap_err();
        assert_eq!(e, ReadError::Head(HeadError::Framing("invalid content-length")));
    }

    /// What a broken server sends is an error, never a panic; the buffer stays bounded.
    #[test]
    fn broken_servers_are_errors() {
        let cases: [(&[u8], ReadError); 3] = [
            (b"SMTP ready\r\n\r\n", ReadError::Head(HeadError::Syntax("version"))),
            (b"HTTP/1.1 101 Switching\r\n\r\n", ReadError::SwitchedProtocols),
            (b"HTTP/1.1 200 OK\r\n\r\n", ReadError::Unrequested),
        ];
        for (wire, expected) in cases {
            let mut input = BytesMut::from(wire);
            let e = ResponseReader::new(0).next(&mut input, || None).unwrap_err();
            assert_eq!(e, expected, "{}", String::from_utf8_lossy(wire));
        }
        let mut input = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
        input.extend_from_slice(&b"X: y\r\n".repeat(MAX_HEAD_BYTES / 6 + 1));
        let e = ResponseReader::new(0).next(&mut input, || Some(false)).unwrap_err();
        assert!(matches!(e, ReadError::Head(_) | ReadError::HeadTooLong), "{e:?}");
        let mut input =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..]);
        let e = ResponseReader::new(0).next(&mut input, || Some(false)).unwrap_err();
        assert!(matches!(e, ReadError::Chunked(_)), "{e:?}");
    }
}
