//! Which protocol a connection speaks, decided from the client's first bytes: the HTTP/2
//! preface (prior knowledge) or anything else, HTTP/1.
use bytes::{Bytes, BytesMut};

use super::{
    exchange::Http1Connection,
    framer::{is_message_start, Role},
    h2::{is_frame_start, H2Connection, PREFACE},
    HttpEvent, HttpShared,
};
use mirror_capture::Direction;
use mirror_flow::{ConnId, StreamConsumer, StreamEvent};

/// Server bytes held while the client has not spoken (an HTTP/2 server sends its SETTINGS
/// at once). Beyond this the connection is taken for HTTP/1, which handles them as it can.
const MAX_HELD_EVENTS: usize = 16;

// HTTP/1 inline: most connections are HTTP/1, and the flow table holds them in place; a
// box would cost an allocation per connection to save the few bytes of the other modes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Mode {
    /// The client's first bytes have not said which protocol yet: a beginning of the
    /// preface is kept, and the server's events are held.
    Undecided {
        preface: BytesMut,
        held: Vec<StreamEvent>,
    },
    Http1(Http1Connection),
    Http2(Box<H2Connection>),
    /// HTTP/2 joined mid-stream: its HPACK state is unknown, nothing is extracted.
    OutOfSync,
}

/// The flow table's consumer: one connection's HTTP, whatever its version.
#[derive(Debug)]
pub struct HttpConnection {
    mode: Mode,
}

impl HttpConnection {
    fn decide(
        &mut self,
        mode: Mode,
        shared: &mut HttpShared,
        conn: &ConnId,
        out: &mut Vec<HttpEvent>,
    ) {
        let old = std::mem::replace(&mut self.mode, mode);
        let Mode::Undecided { preface, held } = old else {
            return;
        };
        if !preface.is_empty() {
            let event =
                StreamEvent::Data { ts_ns: 0, bytes: preface.freeze(), segment_start: true };
            self.forward(shared, conn, Direction::Request, event, out);
        }
        for event in held {
            self.forward(shared, conn, Direction::Response, event, out);
        }
    }

    fn forward(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        dir: Direction,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        match &mut self.mode {
            Mode::Http1(c) => c.on_stream(shared, conn, dir, event, out),
            Mode::Http2(c) => c.on_stream(shared, conn, dir, event, out),
            Mode::Undecided { .. } | Mode::OutOfSync => {}
        }
    }

    /// After a response: if it was the 101 of an h2c upgrade, the connection goes on as
    /// HTTP/2 from here, the upgrading request its stream 1.
    fn h2c_upgrade(&mut self, shared: &mut HttpShared, conn: &ConnId, out: &mut Vec<HttpEvent>) {
        let Mode::Http1(http1) = &mut self.mode else { return };
        let Some(upgraded) = http1.take_upgrade() else { return };
        let h2 = H2Connection::upgraded(&upgraded.request, shared, out);
        self.mode = Mode::Http2(Box::new(h2));
        if let Some(bytes) = upgraded.after {
            let ts_ns = upgraded.request.last_ts_ns;
            let event = StreamEvent::Data { ts_ns, bytes, segment_start: false };
            self.forward(shared, conn, Direction::Response, event, out);
        }
    }

    /// The client's first bytes (with any beginning of the preface held before them).
    fn first_request_bytes(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        let Mode::Undecided { preface, .. } = &mut self.mode else {
            return;
        };
        let StreamEvent::Data { bytes, ts_ns, segment_start } = event else {
            let http1 = Mode::Http1(Http1Connection::new(&shared.config));
            self.decide(http1, shared, conn, out);
            return self.forward(shared, conn, Direction::Request, event, out);
        };
        let seen: Bytes = if preface.is_empty() {
            bytes
        } else {
            preface.extend_from_slice(&bytes);
            preface.split().freeze()
        };
        let n = seen.len().min(PREFACE.len());
        let mode = if seen[..n] == PREFACE[..n] {
            if n < PREFACE.len() {
                // A preface cut short by its segment: wait for the rest.
                preface.extend_from_slice(&seen);
                return;
            }
            shared.stats.h2_connections += 1;
            Mode::Http2(Box::new(H2Connection::new()))
        } else if !is_message_start(Role::Request, &seen) && is_frame_start(&seen) {
            shared.stats.h2_connections += 1;
            shared.stats.h2_out_of_sync += 1;
            Mode::OutOfSync
        } else {
            Mode::Http1(Http1Connection::new(&shared.config))
        };
        self.decide(mode, shared, conn, out);
        let event = StreamEvent::Data { ts_ns, bytes: seen, segment_start };
        self.forward(shared, conn, Direction::Request, event, out);
    }
}

impl StreamConsumer for HttpConnection {
    type Shared = HttpShared;
    type Event = HttpEvent;

    fn new(_shared: &HttpShared) -> Self {
        Self { mode: Mode::Undecided { preface: BytesMut::new(), held: Vec::new() } }
    }

    /// HTTP/1 message starts, and (to recognise and count HTTP/2 joined mid-stream)
    /// plausible HTTP/2 frames.
    fn is_message_start(_shared: &HttpShared, dir: Direction, payload: &[u8]) -> bool {
        let role = match dir {
            Direction::Request => Role::Request,
            Direction::Response => Role::Response,
        };
        is_message_start(role, payload) || is_frame_start(payload)
    }

    fn on_stream(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        dir: Direction,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        match (&mut self.mode, dir) {
            (Mode::Undecided { .. }, Direction::Request) => {
                self.first_request_bytes(shared, conn, event, out)
            }
            (Mode::Undecided { held, .. }, Direction::Response) => {
                let end = matches!(event, StreamEvent::End);
                held.push(event);
                if held.len() >= MAX_HELD_EVENTS || end {
                    let http1 = Mode::Http1(Http1Connection::new(&shared.config));
                    self.decide(http1, shared, conn, out);
                }
            }
            (Mode::Http1(_), Direction::Response) => {
                self.forward(shared, conn, dir, event, out);
                self.h2c_upgrade(shared, conn, out);
            }
            _ => self.forward(shared, conn, dir, event, out),
        }
    }

    fn buffered(&self) -> usize {
        match &self.mode {
            Mode::Undecided { preface, held } => {
                preface.capacity()
                    + held
                        .iter()
                        .map(|e| match e {
                            StreamEvent::Data { bytes, .. } => bytes.len(),
                            _ => 0,
                        })
                        .sum::<usize>()
            }
            Mode::Http1(c) => c.buffered(),
            Mode::Http2(c) => c.buffered(),
            Mode::OutOfSync => 0,
        }
    }

    fn unneeded_ahead(&self, dir: Direction) -> u64 {
        match &self.mode {
            Mode::Http1(c) => c.unneeded_ahead(dir),
            _ => 0,
        }
    }
}
