//! One direction of HTTP/1.x: ordered bytes in, complete messages out.
//!
//! Bytes arrive as [`StreamEvent`]s. A head is parsed where the previous message ended; the
//! connection decides how its body is delimited (a response's framing depends on its
//! request); the body is collected until that delimiter; the message is emitted with the
//! exact bytes of its head and body. After a loss the framer skips to the end of the damaged
//! message when that end is known (a Content-Length body), and otherwise resynchronises at
//! the next segment that starts like a message.
use bytes::{Buf, Bytes, BytesMut};

use super::{
    chunked::ChunkedDecoder,
    head::{arena_copy, BodyKind, Head, HeadError, HeadParts},
    HttpShared, HttpStats,
};
use mirror_flow::StreamEvent;

/// A head larger than this is treated as malformed.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Request,
    Response,
}

/// A complete message with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub head: Head,
    /// The body as sent (chunked framing included); empty when the framer does not keep
    /// bodies.
    pub body: Bytes,
    /// Bytes of the body on the wire, kept or not.
    pub body_len: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    /// What the connection attached to the message when it decided about its head.
    pub tag: Option<u64>,
}

/// What the connection decides about a parsed head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// An ordinary message with this body; `tag` comes back with its [`Frame`].
    Message { body: BodyKind, tag: Option<u64> },
    /// An interim (1xx) response: skipped, the final response follows.
    Interim,
    /// The connection leaves HTTP/1 (Upgrade, CONNECT): stop extracting it.
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a segment that starts like a message.
    Resync,
    Head,
    Body {
        remaining: u64,
    },
    Chunked,
    UntilClose,
    /// Dropping the rest of a message whose end is known.
    Skip {
        remaining: u64,
    },
    SkipChunked,
    SkipUntilClose,
    /// No longer HTTP/1.
    Opaque,
    /// The stream ended.
    Closed,
}

/// What the framer may touch of the table's shared state while it handles data.
struct Ctx<'a> {
    stats: &'a mut HttpStats,
    arena: &'a mut BytesMut,
}

/// Frames one direction of a connection.
#[derive(Debug)]
pub(crate) struct HttpFramer {
    role: Role,
    state: State,
    /// A head being accumulated across segments.
    head_buf: BytesMut,
    /// The head of the message whose body is being collected, and its tag.
    head: Option<Head>,
    tag: Option<u64>,
    body: BytesMut,
    /// A body that arrived whole, copied to the shared arena.
    whole_body: Option<Bytes>,
    /// Copy bodies (else they are framed and measured only: `body_len`).
    keep_body: bool,
    body_len: u64,
    chunked: ChunkedDecoder,
    first_ts_ns: u64,
    last_ts_ns: u64,
    max_message: u64,
    /// Times this framer lost its place and had to resynchronise.
    resyncs: u64,
    /// The bytes that followed the head that stopped the framer (an upgrade's 101), in
    /// their segment: the other protocol's first bytes. Taken by the connection.
    after_stop: Option<Bytes>,
    /// The framer stopped in the data being handled.
    just_stopped: bool,
}

impl HttpFramer {
    /// A framer for a stream that starts at a message boundary. `keep_body` false: bodies
    /// are framed and measured, never copied (and, holding no memory, never too large).
    pub(crate) fn new(role: Role, max_message: u64, keep_body: bool) -> Self {
        Self {
            role,
            state: State::Head,
            head_buf: BytesMut::new(),
            head: None,
            tag: None,
            body: BytesMut::new(),
            whole_body: None,
            keep_body,
            body_len: 0,
            chunked: ChunkedDecoder::default(),
            first_ts_ns: 0,
            last_ts_ns: 0,
            max_message,
            resyncs: 0,
            after_stop: None,
            just_stopped: false,
        }
    }

    /// Bytes held for the current message, counted by allocation (capacity), not by use.
    pub(crate) fn buffered(&self) -> usize {
        let held = |b: &BytesMut| if b.is_empty() { 0 } else { b.capacity() };
        held(&self.head_buf) + held(&self.body)
    }

    pub(crate) fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Bytes after everything pushed so far that this framer will not read: the rest of a
    /// body it measures without keeping, or of a message it skips. A source may leave them
    /// out ([`StreamEvent::Elided`]).
    pub(crate) fn unneeded_ahead(&self) -> u64 {
        match self.state {
            State::Body { remaining } if !self.keep_body => remaining,
            State::Skip { remaining } => remaining,
            _ => 0,
        }
    }

    pub(crate) fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// What followed the head that made the framer stop, in the same segment.
    pub(crate) fn take_after_stop(&mut self) -> Option<Bytes> {
        self.after_stop.take()
    }

    /// Consumes one stream event. `decide` is asked about every parsed head.
    pub(crate) fn push(
        &mut self,
        event: StreamEvent,
        decide: &mut dyn FnMut(&Head) -> Result<Decision, HeadError>,
        shared: &mut HttpShared,
        out: &mut Vec<Frame>,
    ) {
        let HttpShared { stats, arena, .. } = shared;
        match event {
            StreamEvent::Data { ts_ns, bytes, segment_start } => {
                if self.state == State::Resync {
                    // Mid-stream, only a segment start can be trusted as a message start.
                    if !(segment_start && is_message_start(self.role, &bytes)) {
                        stats.resync_skipped_bytes += bytes.len() as u64;
                        return;
                    }
                    self.state = State::Head;
                }
                self.data(bytes, ts_ns, decide, Ctx { stats, arena }, out);
            }
            StreamEvent::Gap { len } => self.gap(len, stats),
            StreamEvent::Elided { ts_ns, len } => {
                self.last_ts_ns = ts_ns;
                self.elided(len, stats, out)
            }
            StreamEvent::End => self.end(stats, out),
        }
    }

    fn data(
        &mut self,
        mut data: Bytes,
        ts_ns: u64,
        decide: &mut dyn FnMut(&Head) -> Result<Decision, HeadError>,
        ctx: Ctx<'_>,
        out: &mut Vec<Frame>,
    ) {
        let Ctx { stats, arena } = ctx;
        self.last_ts_ns = ts_ns;
        while !data.is_empty() {
            match self.state {
                State::Opaque if std::mem::take(&mut self.just_stopped) => {
                    // Just stopped: what follows belongs to the next protocol (kept for a
                    // response: an h2c upgrade's 101 is followed by the server's frames).
                    if self.role == Role::Response {
                        self.after_stop = Some(std::mem::take(&mut data));
                    }
                    return;
                }
                State::Resync | State::Opaque | State::SkipUntilClose | State::Closed => return,
                State::Head => {
                    if self.head_buf.is_empty() {
                        self.first_ts_ns = ts_ns;
                    }
                    match self.head(&mut data) {
                        Ok(Some(head)) => self.start_body(head, decide, stats, arena, out),
                        Ok(None) => {}
                        Err(e) => {
                            stats.malformed(self.role, e);
                            self.resync();
                            return;
                        }
                    }
                }
                State::Body { remaining } => {
                    let n = remaining.min(data.len() as u64);
                    let whole = n == remaining;
                    self.take_body(&mut data, n as usize, whole, arena);
                    self.state = State::Body { remaining: remaining - n };
                    if whole {
                        self.emit(out);
                    }
                }
                State::Chunked => match self.chunked.advance(&data) {
                    Ok(n) => {
                        let whole = self.chunked.is_done();
                        self.take_body(&mut data, n, whole, arena);
                        if whole {
                            self.emit(out);
                        } else if self.too_large() {
                            stats.oversized(self.role);
                            self.drop_message(State::SkipChunked);
                        }
                    }
                    Err(_) => {
                        stats.malformed_bodies += 1;
                        self.resync();
                    }
                },
                State::UntilClose => {
                    let n = data.len();
                    self.take_body(&mut data, n, false, arena);
                    if self.too_large() {
                        stats.oversized(self.role);
                        self.drop_message(State::SkipUntilClose);
                    }
                }
                State::Skip { remaining } => {
                    let n = remaining.min(data.len() as u64);
                    data.advance(n as usize);
                    self.state = if n == remaining {
                        State::Head
                    } else {
                        State::Skip { remaining: remaining - n }
                    };
                }
                State::SkipChunked => match self.chunked.advance(&data) {
                    Ok(n) => {
                        data.advance(n);
                        if self.chunked.is_done() {
                            self.state = State::Head;
                        }
                    }
                    Err(_) => {
                        stats.malformed_bodies += 1;
                        self.resync();
                    }
                },
            }
        }
    }

    /// Parses a head from `data` (and bytes held from earlier segments). Returns the head
    /// once complete; `data` is left holding what follows it.
    fn head(&mut self, data: &mut Bytes) -> Result<Option<Head>, HeadError> {
        let parse = match self.role {
            Role::Request => Head::parse_request,
            Role::Response => Head::parse_response,
        };
        if self.head_buf.is_empty() {
            // Fast path: the whole head is in this segment; no copy.
            if let Some((len, parts)) = parse(data)? {
                return Ok(Some(parts.with_bytes(data.split_to(len))));
            }
        }
        self.head_buf.extend_from_slice(data);
        data.clear();
        match parse(&self.head_buf)? {
            Some((len, parts)) => {
                *data = self.head_buf.split_off(len).freeze();
                Ok(Some(HeadParts::with_bytes(parts, self.head_buf.split().freeze())))
            }
            None if self.head_buf.len() > MAX_HEAD_BYTES => {
                Err(HeadError::Syntax("head too large"))
            }
            None => Ok(None),
        }
    }

    fn start_body(
        &mut self,
        head: Head,
        decide: &mut dyn FnMut(&Head) -> Result<Decision, HeadError>,
        stats: &mut HttpStats,
        arena: &mut BytesMut,
        out: &mut Vec<Frame>,
    ) {
        let head_len = head.bytes().len() as u64;
        match decide(&head) {
            Err(e) => {
                stats.malformed(self.role, e);
                self.resync();
            }
            Ok(Decision::Interim) => stats.interim_responses += 1,
            Ok(Decision::Stop) => {
                self.state = State::Opaque;
                self.just_stopped = true;
            }
            Ok(Decision::Message { body, tag }) => {
                let mut head = head;
                if body != BodyKind::None {
                    head.unshare(arena); // held until the body is complete
                }
                self.head = Some(head);
                self.tag = tag;
                self.state = match body {
                    BodyKind::None => {
                        self.emit(out);
                        return;
                    }
                    BodyKind::Length(n) if self.keep_body && head_len + n > self.max_message => {
                        stats.oversized(self.role);
                        self.head = None;
                        State::Skip { remaining: n }
                    }
                    BodyKind::Length(n) => State::Body { remaining: n },
                    BodyKind::Chunked => {
                        self.chunked = ChunkedDecoder::default();
                        State::Chunked
                    }
                    BodyKind::UntilClose => State::UntilClose,
                };
            }
        }
    }

    /// Takes `n` bytes of body from `data`; `last` when they complete it. A body that
    /// arrives whole goes into the shared arena; one spread over segments is gathered in the
    /// framer's own buffer.
    fn take_body(&mut self, data: &mut Bytes, n: usize, last: bool, arena: &mut BytesMut) {
        if self.keep_body {
            if last && self.body.is_empty() {
                self.whole_body = Some(arena_copy(arena, &data[..n]));
            } else {
                self.body.extend_from_slice(&data[..n]);
            }
        }
        self.body_len += n as u64;
        data.advance(n);
    }

    fn too_large(&self) -> bool {
        let head = self.head.as_ref().map_or(0, |h| h.bytes().len());
        self.keep_body && (head + self.body.len()) as u64 > self.max_message
    }

    fn emit(&mut self, out: &mut Vec<Frame>) {
        let head = self.head.take().expect("a message in progress has a head");
        let body = self.whole_body.take().unwrap_or_else(|| self.body.split().freeze());
        out.push(Frame {
            head,
            body,
            body_len: std::mem::take(&mut self.body_len),
            first_ts_ns: self.first_ts_ns,
            last_ts_ns: self.last_ts_ns,
            tag: self.tag.take(),
        });
        self.state = State::Head;
    }

    fn drop_message(&mut self, next: State) {
        self.head = None;
        self.body.clear();
        self.whole_body = None;
        self.body_len = 0;
        self.state = next;
    }

    fn resync(&mut self) {
        self.head_buf.clear();
        self.drop_message(State::Resync);
        self.resyncs += 1;
    }

    fn gap(&mut self, len: u64, stats: &mut HttpStats) {
        match self.state {
            State::Resync | State::Opaque | State::SkipUntilClose | State::Closed => {}
            State::Skip { remaining } if len < remaining => {
                self.state = State::Skip { remaining: remaining - len };
            }
            State::Body { remaining } if len < remaining => {
                // The end of the damaged message is known: skip to it, keep our place.
                stats.lost_messages += 1;
                self.drop_message(State::Skip { remaining: remaining - len });
            }
            State::UntilClose => {
                stats.lost_messages += 1;
                self.drop_message(State::SkipUntilClose);
            }
            State::Head if self.head_buf.is_empty() => {
                // Whole messages may have been lost: count the place, not a message.
                self.resync();
            }
            _ => {
                stats.lost_messages += 1;
                self.resync();
            }
        }
    }

    /// Bytes left out because [`HttpFramer::unneeded_ahead`] said so: counted as body, or
    /// skipped. Anywhere else (a source that elided more than it was told) they are a gap.
    fn elided(&mut self, len: u64, stats: &mut HttpStats, out: &mut Vec<Frame>) {
        match self.state {
            State::Body { remaining } if !self.keep_body && len <= remaining => {
                self.body_len += len;
                self.state = State::Body { remaining: remaining - len };
                if len == remaining {
                    self.emit(out);
                }
            }
            State::Skip { remaining } if len <= remaining => {
                self.state = if len == remaining {
                    State::Head
                } else {
                    State::Skip { remaining: remaining - len }
                };
            }
            _ => self.gap(len, stats),
        }
    }

    fn end(&mut self, stats: &mut HttpStats, out: &mut Vec<Frame>) {
        match self.state {
            State::UntilClose => self.emit(out),
            State::Head if self.head_buf.is_empty() => {}
            State::Resync | State::Opaque | State::Closed => {}
            State::Skip { .. } | State::SkipChunked | State::SkipUntilClose => {}
            _ => stats.incomplete_at_end += 1,
        }
        self.head_buf.clear();
        self.drop_message(State::Closed);
    }
}

/// Methods recognised when looking for a request start in the middle of a stream.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Whether `data` starts like a message of this role: a request line with a known method,
/// or a status line.
pub(crate) fn is_message_start(role: Role, data: &[u8]) -> bool {
    match role {
        Role::Request => METHODS.iter().any(|m| data.starts_with(m)),
        Role::Response => data.starts_with(b"HTTP/1."),
    }
}
