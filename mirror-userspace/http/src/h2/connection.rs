//! One HTTP/2 connection followed from its preface: frames of both directions in, stream
//! events out.
use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::{
    fields::{Decoded, H2Fields, HeaderDecoder},
    frame::{Frame, FrameReader},
    H2Event, H2Part, ResetReason, PREFACE,
};
use crate::{HttpEvent, HttpShared, HttpStats};
use mirror_capture::Direction;
use mirror_flow::{ConnId, StreamEvent};

/// Streams followed at once per connection. Servers allow 100 to 250 concurrent streams
/// (SETTINGS_MAX_CONCURRENT_STREAMS); streams opened beyond this are counted, not followed.
const MAX_STREAMS: usize = 1024;

/// A header block split over HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
#[derive(Debug)]
struct PendingBlock {
    stream: u32,
    /// `Some(end_stream)` for HEADERS, `None` for PUSH_PROMISE.
    headers: Option<bool>,
    block: BytesMut,
}

/// One direction's decoding state.
#[derive(Debug, Default)]
struct Half {
    frames: FrameReader,
    hpack: HeaderDecoder,
    /// A header block waiting for its CONTINUATION frames: no other frame may come
    /// between them (RFC 9113 section 6.10).
    pending: Option<PendingBlock>,
}

/// Where a stream is, per direction.
#[derive(Clone, Copy, Debug, Default)]
struct StreamState {
    /// Headers seen, per direction (request, response).
    headers: [bool; 2],
    /// END_STREAM seen, per direction.
    ended: [bool; 2],
}

fn side(dir: Direction) -> usize {
    match dir {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Request => Direction::Response,
        Direction::Response => Direction::Request,
    }
}

/// The SETTINGS of an HTTP2-Settings field (base64url, RFC 7540 section 3.2.1).
fn client_settings(value: &[u8]) -> Option<Frame> {
    use base64::Engine as _;
    let trimmed = value.trim_ascii().strip_suffix(b"=").unwrap_or(value.trim_ascii());
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed).ok()?;
    let header = super::frame::FrameHeader {
        len: payload.len() as u32,
        kind: super::frame::kind::SETTINGS,
        flags: 0,
        stream: 0,
    };
    super::frame::parse_frame(header, Bytes::from(payload)).ok()
}

/// The HTTP/1 upgrading request's head as stream 1's fields: pseudo-fields from the
/// request line and Host, then its fields, names in lower case.
fn upgrade_fields(head: &crate::Head) -> H2Fields {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), head.method().unwrap_or("GET").as_bytes().to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":authority".to_vec(), head.header("host").unwrap_or_default().to_vec()),
        (b":path".to_vec(), head.target().unwrap_or("/").as_bytes().to_vec()),
    ];
    for (name, value) in head.headers() {
        let name = name.to_ascii_lowercase();
        let te_other = name == "te" && !value.eq_ignore_ascii_case(b"trailers");
        if !super::CONNECTION_SPECIFIC.contains(&name.as_str()) && !te_other && name != "host" {
            pairs.push((name.into_bytes(), value.to_vec()));
        }
    }
    H2Fields::from_pairs(pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
}

/// Why a connection was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lost {
    /// Frames that break the protocol (a frame between CONTINUATIONs, a malformed frame).
    Protocol,
    /// HPACK failed, a header block too large, or bytes never captured.
    State,
}

/// HTTP/2 state of one connection.
#[derive(Debug)]
pub(crate) struct H2Connection {
    halves: [Half; 2],
    /// Preface bytes still to be checked on the request side.
    preface_left: usize,
    streams: HashMap<u32, StreamState>,
    /// The highest stream id the client opened.
    last_opened: u32,
    /// The server's GOAWAY: streams above this are not processed.
    goaway: Option<u32>,
    out_of_sync: bool,
    /// Scratch for the frames cut from one stream event.
    frames: Vec<Frame>,
}

/// The connection's context while it handles one stream event.
struct Ctx<'a> {
    conn: &'a ConnId,
    dir: Direction,
    ts_ns: u64,
    stats: &'a mut HttpStats,
    out: &'a mut Vec<HttpEvent>,
}

impl Ctx<'_> {
    fn emit(&mut self, stream: u32, dir: Direction, part: H2Part) {
        self.out.push(HttpEvent::H2(H2Event {
            conn: *self.conn,
            stream,
            dir,
            ts_ns: self.ts_ns,
            part,
        }));
    }
}

impl H2Connection {
    /// A connection whose request side starts with the preface (prior knowledge), or after
    /// an h2c upgrade (the preface follows the 101 on the request side).
    pub(crate) fn new() -> Self {
        Self {
            halves: Default::default(),
            preface_left: PREFACE.len(),
            streams: HashMap::new(),
            last_opened: 0,
            goaway: None,
            out_of_sync: false,
            frames: Vec::new(),
        }
    }

    /// A connection upgraded from HTTP/1 (h2c, RFC 7540 section 3.2): the upgrading
    /// request is stream 1, half closed by the client; the client's preface follows on the
    /// request side, the server's frames after its 101.
    pub(crate) fn upgraded(
        request: &crate::HttpRequest,
        shared: &mut HttpShared,
        out: &mut Vec<HttpEvent>,
    ) -> Self {
        let mut c = Self::new();
        // HTTP2-Settings carries the client's SETTINGS, acknowledged by the 101.
        let settings = request.head.header("http2-settings").and_then(client_settings);
        if let Some(Frame::Settings { header_table_size, .. }) = settings {
            let decoder = &mut c.halves[side(Direction::Response)].hpack;
            decoder.advertised(header_table_size);
            decoder.acknowledged();
        }
        let head = &request.head;
        let body = if head.has_token("transfer-encoding", "chunked") {
            crate::decode_chunked(&request.body).unwrap_or_default()
        } else {
            request.body.clone()
        };
        shared.stats.h2_connections += 1;
        shared.stats.h2_streams += 1;
        c.last_opened = 1;
        let end_stream = body.is_empty();
        c.streams.insert(1, StreamState { headers: [true, false], ended: [true, false] });
        let mut ctx = Ctx {
            conn: &request.conn,
            dir: Direction::Request,
            ts_ns: request.first_ts_ns,
            stats: &mut shared.stats,
            out,
        };
        ctx.emit(
            1,
            Direction::Request,
            H2Part::Headers { fields: upgrade_fields(head), end_stream },
        );
        if !end_stream {
            ctx.emit(1, Direction::Request, H2Part::Data { bytes: body, end_stream: true });
        }
        c
    }

    /// Bytes held: partial frames, header blocks waiting for CONTINUATION, the HPACK
    /// tables and buffers, and the streams followed.
    pub(crate) fn buffered(&self) -> usize {
        let halves: usize = self
            .halves
            .iter()
            .map(|h| {
                h.frames.buffered()
                    + h.pending.as_ref().map_or(0, |p| p.block.capacity())
                    + h.hpack.buffered()
            })
            .sum();
        halves + self.streams.capacity() * std::mem::size_of::<(u32, StreamState)>()
    }

    pub(crate) fn on_stream(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        dir: Direction,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        if self.out_of_sync {
            return;
        }
        let ts_ns = match &event {
            StreamEvent::Data { ts_ns, .. } | StreamEvent::Elided { ts_ns, .. } => *ts_ns,
            _ => 0,
        };
        let mut ctx = Ctx { conn, dir, ts_ns, stats: &mut shared.stats, out };
        match event {
            StreamEvent::Data { bytes, .. } => self.data(bytes, &mut ctx),
            StreamEvent::Gap { .. } | StreamEvent::Elided { .. } => {
                self.lose(Lost::State, &mut ctx)
            }
            StreamEvent::End => self.end(&mut ctx),
        }
    }

    fn data(&mut self, mut bytes: Bytes, ctx: &mut Ctx<'_>) {
        if ctx.dir == Direction::Request && self.preface_left > 0 {
            let checked = PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(bytes.len());
            if bytes[..n] != PREFACE[checked..checked + n] {
                return self.lose(Lost::Protocol, ctx);
            }
            self.preface_left -= n;
            let _ = bytes.split_to(n);
        }
        // The frames of this data, gathered in a buffer kept between calls.
        let mut frames = std::mem::take(&mut self.frames);
        let result = self.halves[side(ctx.dir)].frames.push(bytes, &mut |f| frames.push(f));
        for frame in frames.drain(..) {
            self.frame(frame, ctx);
            if self.out_of_sync {
                return;
            }
        }
        self.frames = frames;
        if result.is_err() {
            self.lose(Lost::Protocol, ctx);
        }
    }

    fn frame(&mut self, frame: Frame, ctx: &mut Ctx<'_>) {
        let half = side(ctx.dir);
        if let Some(pending) = &self.halves[half].pending {
            let continues =
                matches!(frame, Frame::Continuation { stream, .. } if stream == pending.stream);
            if !continues {
                return self.lose(Lost::Protocol, ctx);
            }
        }
        match frame {
            Frame::Data { stream, bytes, end_stream } => {
                self.stream_data(stream, bytes, end_stream, ctx)
            }
            Frame::Headers { stream, fragment, end_headers, end_stream } => {
                self.fragment(stream, Some(end_stream), fragment, end_headers, ctx)
            }
            Frame::PushPromise { stream, fragment, end_headers } => {
                self.fragment(stream, None, fragment, end_headers, ctx)
            }
            Frame::Continuation { stream, fragment, end_headers } => {
                match self.halves[half].pending.as_ref().map(|p| p.headers) {
                    Some(headers) => self.fragment(stream, headers, fragment, end_headers, ctx),
                    None => self.lose(Lost::Protocol, ctx),
                }
            }
            Frame::RstStream { stream, code } => {
                self.reset(stream, ctx.dir, ResetReason::Stream(code), ctx)
            }
            Frame::Settings { ack: false, header_table_size } => {
                // The sender's decoder limits the other direction's encoder.
                self.halves[side(other(ctx.dir))].hpack.advertised(header_table_size)
            }
            Frame::Settings { ack: true, .. } => self.halves[half].hpack.acknowledged(),
            Frame::GoAway { last_stream, .. } if ctx.dir == Direction::Response => {
                self.goaway(last_stream, ctx)
            }
            Frame::GoAway { .. } | Frame::Other { .. } => {}
        }
    }

    /// A HEADERS, PUSH_PROMISE or CONTINUATION fragment; `headers` as in [`PendingBlock`].
    /// Fragments arriving whole in one frame (the common case) are decoded without a copy.
    fn fragment(
        &mut self,
        stream: u32,
        headers: Option<bool>,
        fragment: Bytes,
        end_headers: bool,
        ctx: &mut Ctx<'_>,
    ) {
        let half = &mut self.halves[side(ctx.dir)];
        let pending = half.pending.take();
        if !end_headers {
            let mut block = pending.map(|p| p.block).unwrap_or_default();
            if block.len() + fragment.len() > super::frame::MAX_CONTROL_PAYLOAD {
                return self.lose(Lost::State, ctx);
            }
            block.extend_from_slice(&fragment);
            half.pending = Some(PendingBlock { stream, headers, block });
            return;
        }
        let decoded = match pending {
            Some(mut p) => {
                p.block.extend_from_slice(&fragment);
                half.hpack.decode(&p.block)
            }
            None => half.hpack.decode(&fragment),
        };
        match (decoded, headers) {
            (Err(_), _) => self.lose(Lost::State, ctx),
            // A promised response's header block only updates the table.
            (Ok(_), None) => {}
            (Ok(Decoded::Oversized), Some(_)) => {
                ctx.stats.h2_refused_streams += 1;
                if ctx.dir == Direction::Request {
                    // Opened all the same: its later blocks are trailers, not a new stream.
                    self.last_opened = self.last_opened.max(stream);
                }
                self.reset(stream, ctx.dir, ResetReason::Stream(0), ctx);
            }
            (Ok(Decoded::Fields(fields)), Some(end_stream)) => {
                self.headers(stream, fields, end_stream, ctx)
            }
        }
    }

    fn headers(&mut self, stream: u32, fields: H2Fields, end_stream: bool, ctx: &mut Ctx<'_>) {
        let dir = ctx.dir;
        if dir == Direction::Request && !self.streams.contains_key(&stream) {
            if stream > self.last_opened {
                return self.open(stream, fields, end_stream, ctx);
            }
            return; // trailers of a stream not followed (refused, or reset by the server)
        }
        let Some(state) = self.streams.get_mut(&stream) else {
            return; // a pushed stream, or one not followed
        };
        let s = side(dir);
        let part = if !state.headers[s] {
            if dir == Direction::Response && fields.status().is_some_and(|s| s < 200) {
                ctx.stats.interim_responses += 1;
                return;
            }
            state.headers[s] = true;
            if dir == Direction::Response {
                ctx.stats.h2_responses += 1;
            }
            H2Part::Headers { fields, end_stream }
        } else if end_stream && !state.ended[s] {
            H2Part::Trailers(fields)
        } else {
            return self.lose(Lost::Protocol, ctx);
        };
        ctx.emit(stream, dir, part);
        if end_stream {
            self.ended(stream, dir);
        }
    }

    /// The client's HEADERS on a new stream.
    fn open(&mut self, stream: u32, fields: H2Fields, end_stream: bool, ctx: &mut Ctx<'_>) {
        if stream.is_multiple_of(2) || stream <= self.last_opened {
            // Stream ids of the client are odd and increase (RFC 9113 section 5.1.1).
            return self.lose(Lost::Protocol, ctx);
        }
        self.last_opened = stream;
        if self.goaway.is_some_and(|last| stream > last) || self.streams.len() >= MAX_STREAMS {
            ctx.stats.h2_refused_streams += 1;
            return;
        }
        ctx.stats.h2_streams += 1;
        let state = StreamState { headers: [true, false], ended: [end_stream, false] };
        self.streams.insert(stream, state);
        ctx.emit(stream, Direction::Request, H2Part::Headers { fields, end_stream });
    }

    fn stream_data(&mut self, stream: u32, bytes: Bytes, end_stream: bool, ctx: &mut Ctx<'_>) {
        let s = side(ctx.dir);
        let Some(state) = self.streams.get(&stream) else {
            return;
        };
        if !state.headers[s] || state.ended[s] {
            return self.lose(Lost::Protocol, ctx);
        }
        // Slices of the captured bytes, never copied here: handed on whether or not a
        // consumer keeps them (a dump counts them, the comparison keeps its streams').
        if !bytes.is_empty() || end_stream {
            ctx.emit(stream, ctx.dir, H2Part::Data { bytes, end_stream });
        }
        if end_stream {
            self.ended(stream, ctx.dir);
        }
    }

    /// Direction `dir` of `stream` ended; a stream ended both ways is forgotten.
    fn ended(&mut self, stream: u32, dir: Direction) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state.ended[side(dir)] = true;
            if state.ended == [true, true] {
                self.streams.remove(&stream);
            }
        }
    }

    fn reset(&mut self, stream: u32, dir: Direction, reason: ResetReason, ctx: &mut Ctx<'_>) {
        if self.streams.remove(&stream).is_some() {
            ctx.stats.h2_reset_streams += 1;
            ctx.emit(stream, dir, H2Part::Reset(reason));
        }
    }

    /// The server's GOAWAY: streams above `last` were not and will not be processed.
    fn goaway(&mut self, last: u32, ctx: &mut Ctx<'_>) {
        self.goaway = Some(self.goaway.map_or(last, |l| l.min(last)));
        let refused: Vec<u32> = self.streams.keys().copied().filter(|&s| s > last).collect();
        for stream in refused {
            self.reset(stream, Direction::Response, ResetReason::GoAway, ctx);
        }
    }

    /// A direction ended: streams still waiting for it end with it.
    fn end(&mut self, ctx: &mut Ctx<'_>) {
        let s = side(ctx.dir);
        let mut open: Vec<u32> =
            self.streams.iter().filter(|(_, st)| !st.ended[s]).map(|(&id, _)| id).collect();
        open.sort_unstable();
        for stream in open {
            self.reset(stream, ctx.dir, ResetReason::Closed, ctx);
        }
    }

    /// Gives the connection up: its open streams are reset, nothing more is decoded.
    fn lose(&mut self, why: Lost, ctx: &mut Ctx<'_>) {
        match why {
            Lost::Protocol => ctx.stats.h2_protocol_errors += 1,
            Lost::State => {}
        }
        ctx.stats.h2_out_of_sync += 1;
        let mut open: Vec<u32> = self.streams.keys().copied().collect();
        open.sort_unstable();
        for stream in open {
            self.reset(stream, ctx.dir, ResetReason::OutOfSync, ctx);
        }
        self.out_of_sync = true;
        self.halves = Default::default();
    }
}
