//! A connection's two framers and the pairing of responses with requests.
//!
//! Requests are numbered in order; a request is queued as soon as its head is parsed (before
//! its body is complete), so a response always finds its request, and so HEAD and CONNECT
//! requests decide the framing of their responses. Responses are paired in order (HTTP/1
//! has no other way); after a loss on the request side the queue cannot be trusted, and
//! later responses are delivered unpaired.
use std::collections::VecDeque;

use super::{
    framer::{Decision, Frame, HttpFramer, Role},
    head::{declared_body, BodyKind, Head, HeadError},
    response::{final_body, ResponseKind},
    HttpConfig, HttpEvent, HttpRequest, HttpResponse, HttpShared,
};
use mirror_capture::Direction;
use mirror_flow::{ConnId, StreamEvent};

/// A request whose response has not been seen yet.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    id: u64,
    head_request: bool,
}

/// An h2c upgrade (RFC 7540 section 3.2) in progress: its request is held until the
/// response says whether it became HTTP/2's stream 1 (101) or stays an HTTP/1 request.
#[derive(Debug, Default)]
enum H2c {
    #[default]
    None,
    /// The request's head asked for h2c; it is being framed.
    Asked(u64),
    Held(Box<HttpRequest>),
}

/// The connection switched to HTTP/2: the upgrading request, and the server's first
/// HTTP/2 bytes that followed its 101 in the same segment.
#[derive(Debug)]
pub(crate) struct Upgraded {
    pub(crate) request: HttpRequest,
    pub(crate) after: Option<bytes::Bytes>,
}

/// HTTP/1 state of one connection.
#[derive(Debug)]
pub(crate) struct Http1Connection {
    requests: HttpFramer,
    responses: HttpFramer,
    outstanding: VecDeque<Outstanding>,
    next_id: u64,
    pairing_lost: bool,
    scratch: Vec<Frame>,
    h2c: H2c,
    upgraded: Option<Upgraded>,
}

impl Http1Connection {
    pub(crate) fn new(config: &HttpConfig) -> Self {
        Self {
            requests: HttpFramer::new(Role::Request, config.max_message_bytes, true),
            responses: HttpFramer::new(
                Role::Response,
                config.max_message_bytes,
                config.response_bodies,
            ),
            outstanding: VecDeque::new(),
            next_id: 0,
            pairing_lost: false,
            scratch: Vec::new(),
            h2c: H2c::None,
            upgraded: None,
        }
    }

    /// The connection became HTTP/2 by an h2c upgrade: what the HTTP/2 side starts from.
    pub(crate) fn take_upgrade(&mut self) -> Option<Upgraded> {
        self.upgraded.take()
    }

    fn on_request_event(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        let resyncs = self.requests.resyncs();
        let was_opaque = self.requests.is_opaque();
        let Self { requests, outstanding, next_id, scratch, h2c, .. } = self;
        let mut decide = |head: &Head| -> Result<Decision, HeadError> {
            let method = head.method().unwrap_or("");
            let upgrade =
                head.header("upgrade").is_some() && head.has_token("connection", "upgrade");
            let to_h2c = upgrade && head.has_token("upgrade", "h2c") && method != "CONNECT";
            if (method == "CONNECT" || upgrade) && !to_h2c {
                return Ok(Decision::Stop);
            }
            let body = declared_body(head)?.unwrap_or(BodyKind::None);
            let id = *next_id;
            *next_id += 1;
            outstanding.push_back(Outstanding { id, head_request: method == "HEAD" });
            if to_h2c {
                // Framed like any request (its body included), the server's answer decides
                // what it becomes.
                *h2c = H2c::Asked(id);
            }
            Ok(Decision::Message { body, tag: Some(id) })
        };
        requests.push(event, &mut decide, shared, scratch);
        for frame in self.scratch.drain(..) {
            let request = HttpRequest::new(*conn, frame);
            match self.h2c {
                // Counted once it is known to be an HTTP/1 request (else it is stream 1).
                H2c::Asked(id) if request.id == id => self.h2c = H2c::Held(Box::new(request)),
                _ => {
                    shared.stats.requests += 1;
                    out.push(HttpEvent::Request(request));
                }
            }
        }
        if self.requests.is_opaque() && !was_opaque {
            // CONNECT or Upgrade: the rest of the connection, both ways, is not HTTP/1.
            shared.stats.upgraded_connections += 1;
            self.responses.push(
                StreamEvent::End,
                &mut |_| Ok(Decision::Stop),
                shared,
                &mut Vec::new(),
            );
        }
        if self.requests.resyncs() != resyncs {
            // Requests were lost: which response answers which request is unknown now.
            self.outstanding.clear();
            self.pairing_lost = true;
        }
    }

    fn on_response_event(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        let Self { responses, outstanding, scratch, pairing_lost, .. } = self;
        let mut switched = false;
        let mut decide = |head: &Head| -> Result<Decision, HeadError> {
            match ResponseKind::of(head.status().unwrap_or(0)) {
                ResponseKind::Interim => return Ok(Decision::Interim),
                ResponseKind::SwitchingProtocols => {
                    switched = true;
                    return Ok(Decision::Stop);
                }
                ResponseKind::Final => {}
            }
            // A final response answers the oldest request, even if its own framing is
            // malformed: the next response answers the next request.
            let request = if *pairing_lost { None } else { outstanding.pop_front() };
            let body = final_body(head, request.is_some_and(|r| r.head_request))?;
            Ok(Decision::Message { body, tag: request.map(|r| r.id) })
        };
        responses.push(event, &mut decide, shared, scratch);
        let after = self.responses.take_after_stop();
        for frame in self.scratch.drain(..) {
            shared.stats.responses += 1;
            if frame.tag.is_none() {
                shared.stats.unpaired_responses += 1;
            }
            if matches!(&self.h2c, H2c::Held(r) if frame.tag == Some(r.id)) {
                if let H2c::Held(request) = std::mem::take(&mut self.h2c) {
                    // The server kept HTTP/1: the upgrade request is an ordinary one.
                    shared.stats.requests += 1;
                    out.push(HttpEvent::Request(*request));
                }
            }
            out.push(HttpEvent::Response(HttpResponse::new(*conn, frame)));
        }
        if switched {
            match std::mem::take(&mut self.h2c) {
                // h2c: the connection goes on as HTTP/2, still followed.
                H2c::Held(request) => self.upgraded = Some(Upgraded { request: *request, after }),
                _ => shared.stats.upgraded_connections += 1,
            }
        }
    }
}

impl Http1Connection {
    pub(crate) fn on_stream(
        &mut self,
        shared: &mut HttpShared,
        conn: &ConnId,
        dir: Direction,
        event: StreamEvent,
        out: &mut Vec<HttpEvent>,
    ) {
        match dir {
            Direction::Request => self.on_request_event(shared, conn, event, out),
            Direction::Response => self.on_response_event(shared, conn, event, out),
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        self.requests.buffered() + self.responses.buffered()
    }

    pub(crate) fn unneeded_ahead(&self, dir: Direction) -> u64 {
        match dir {
            Direction::Request => self.requests.unneeded_ahead(),
            Direction::Response => self.responses.unneeded_ahead(),
        }
    }
}
