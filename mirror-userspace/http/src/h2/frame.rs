//! One direction of an HTTP/2 connection cut into frames (RFC 9113 section 4).
//!
//! DATA payloads are handed on as they arrive, as slices of the captured bytes: a 1 MiB
//! DATA frame is never held. Every other frame is held whole (its payload up to
//! [`MAX_CONTROL_PAYLOAD`]) and parsed once complete; padding and the PRIORITY fields of
//! HEADERS are stripped here, so the connection sees header block fragments only.
use bytes::{Buf, Bytes, BytesMut};

/// The frame header: 24-bit length, type, flags, reserved bit and 31-bit stream id.
pub(crate) const FRAME_HEADER_LEN: usize = 9;

/// Payloads of frames other than DATA larger than this are not followed: the HPACK state
/// cannot be kept without their header blocks, so the connection is given up. 256 KiB is
/// sixteen default-sized frames; gRPC and browsers send header blocks of a few KiB.
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 256 * 1024;

pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const PRIORITY: u8 = 0x2;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    /// On SETTINGS and PING.
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

/// SETTINGS_HEADER_TABLE_SIZE.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub(crate) fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A frame (or, for DATA, a piece of one) as the connection needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A piece of a DATA frame's payload, padding removed. `end_stream` only on the frame's
    /// last piece.
    Data {
        stream: u32,
        bytes: Bytes,
        end_stream: bool,
    },
    /// HEADERS, padding and priority removed.
    Headers {
        stream: u32,
        fragment: Bytes,
        end_headers: bool,
        end_stream: bool,
    },
    PushPromise {
        stream: u32,
        fragment: Bytes,
        end_headers: bool,
    },
    Continuation {
        stream: u32,
        fragment: Bytes,
        end_headers: bool,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    /// SETTINGS; only the header table size is of interest to an observer.
    Settings {
        ack: bool,
        header_table_size: Option<u32>,
    },
    GoAway {
        last_stream: u32,
        code: u32,
    },
    /// PING, WINDOW_UPDATE, PRIORITY and unknown types: nothing to do for an observer.
    Other {
        kind: u8,
    },
}

/// Why a direction's frames can no longer be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A frame whose fields contradict its length (padding longer than the payload, a
    /// SETTINGS length not a multiple of 6, a short RST_STREAM or GOAWAY).
    Malformed,
    /// A frame other than DATA beyond [`MAX_CONTROL_PAYLOAD`].
    TooLarge,
}

#[derive(Debug)]
enum State {
    /// Collecting the 9 header bytes.
    Header,
    /// A padded DATA frame whose pad length byte is still to come.
    DataPad { header: FrameHeader },
    /// Inside a DATA frame: `content` payload bytes, then `pad` bytes of padding.
    Data { header: FrameHeader, content: u32, pad: u32 },
    /// Padding to skip.
    Padding { remaining: u32 },
    /// Collecting the payload of any other frame.
    Payload { header: FrameHeader },
}

/// Cuts one direction into frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    state: State,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload: BytesMut,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            state: State::Header,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload: BytesMut::new(),
        }
    }
}

impl FrameReader {
    pub(crate) fn buffered(&self) -> usize {
        if self.payload.is_empty() {
            0
        } else {
            self.payload.capacity()
        }
    }

    /// Consumes `data`, handing every complete frame (and DATA piece) to `out`. After an
    /// error the reader must not be used again.
    pub(crate) fn push(
        &mut self,
        mut data: Bytes,
        out: &mut dyn FnMut(Frame),
    ) -> Result<(), FrameError> {
        while !data.is_empty() {
            match self.state {
                State::Header => self.header(&mut data, out)?,
                State::DataPad { header } => {
                    let pad = u32::from(data.get_u8());
                    let content = (header.len - 1).checked_sub(pad).ok_or(FrameError::Malformed)?;
                    self.enter_data(header, content, pad, out);
                }
                State::Data { header, content, pad } => {
                    let bytes = data.split_to((content as usize).min(data.len()));
                    let content = content - bytes.len() as u32;
                    let end_stream = content == 0 && header.has(flag::END_STREAM);
                    out(Frame::Data { stream: header.stream, bytes, end_stream });
                    self.state = if content > 0 {
                        State::Data { header, content, pad }
                    } else {
                        after_content(pad)
                    };
                }
                State::Padding { remaining } => {
                    let n = (remaining as usize).min(data.len());
                    data.advance(n);
                    self.state = after_content(remaining - n as u32);
                }
                State::Payload { header } => self.payload(&mut data, header, out)?,
            }
        }
        Ok(())
    }

    fn header(&mut self, data: &mut Bytes, out: &mut dyn FnMut(Frame)) -> Result<(), FrameError> {
        let n = (FRAME_HEADER_LEN - self.header_len).min(data.len());
        self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
        data.advance(n);
        self.header_len += n;
        if self.header_len < FRAME_HEADER_LEN {
            return Ok(());
        }
        self.header_len = 0;
        let header = FrameHeader::parse(&self.header);
        if header.kind == kind::DATA {
            match (header.has(flag::PADDED), header.len) {
                (true, 0) => return Err(FrameError::Malformed),
                (true, _) => self.state = State::DataPad { header },
                (false, len) => self.enter_data(header, len, 0, out),
            }
        } else if header.len as usize > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::TooLarge);
        } else if header.len == 0 {
            // A SETTINGS ACK, say: complete without another byte.
            out(parse_frame(header, Bytes::new())?);
        } else {
            self.state = State::Payload { header };
        }
        Ok(())
    }

    /// A DATA frame with no content (only padding, or nothing) ends its stream, when
    /// flagged, before another byte arrives.
    fn enter_data(
        &mut self,
        header: FrameHeader,
        content: u32,
        pad: u32,
        out: &mut dyn FnMut(Frame),
    ) {
        if content > 0 {
            self.state = State::Data { header, content, pad };
            return;
        }
        if header.has(flag::END_STREAM) {
            out(Frame::Data { stream: header.stream, bytes: Bytes::new(), end_stream: true });
        }
        self.state = after_content(pad);
    }

    fn payload(
        &mut self,
        data: &mut Bytes,
        header: FrameHeader,
        out: &mut dyn FnMut(Frame),
    ) -> Result<(), FrameError> {
        let len = header.len as usize;
        let payload = if self.payload.is_empty() && data.len() >= len {
            // The whole payload is in this chunk: no copy.
            data.split_to(len)
        } else {
            let n = (len - self.payload.len()).min(data.len());
            self.payload.extend_from_slice(&data[..n]);
            data.advance(n);
            if self.payload.len() < len {
                return Ok(());
            }
            self.payload.split().freeze()
        };
        self.state = State::Header;
        out(parse_frame(header, payload)?);
        Ok(())
    }
}

fn after_content(pad: u32) -> State {
    if pad > 0 {
        State::Padding { remaining: pad }
    } else {
        State::Header
    }
}

/// Parses a complete frame other than DATA.
pub(crate) fn parse_frame(header: FrameHeader, mut p: Bytes) -> Result<Frame, FrameError> {
    let stream = header.stream;
    let end_headers = header.has(flag::END_HEADERS);
    Ok(match header.kind {
        kind::HEADERS => {
            strip_padding(&mut p, header)?;
            if header.has(flag::PRIORITY) {
                // Stream dependency (4) and weight (1).
                skip(&mut p, 5)?;
            }
            let end_stream = header.has(flag::END_STREAM);
            Frame::Headers { stream, fragment: p, end_headers, end_stream }
        }
        kind::PUSH_PROMISE => {
            strip_padding(&mut p, header)?;
            skip(&mut p, 4)?; // promised stream id
            Frame::PushPromise { stream, fragment: p, end_headers }
        }
        kind::CONTINUATION => Frame::Continuation { stream, fragment: p, end_headers },
        kind::RST_STREAM => {
            let code = read_u32(&p)?;
            Frame::RstStream { stream, code }
        }
        kind::SETTINGS => settings(header, &p)?,
        kind::GOAWAY => {
            let last_stream = read_u32(&p)? & 0x7fff_ffff;
            let code = read_u32(p.get(4..).unwrap_or_default())?;
            Frame::GoAway { last_stream, code }
        }
        other => Frame::Other { kind: other },
    })
}

fn settings(header: FrameHeader, p: &[u8]) -> Result<Frame, FrameError> {
    if !p.len().is_multiple_of(6) {
        return Err(FrameError::Malformed);
    }
    let mut header_table_size = None;
    for setting in p.chunks_exact(6) {
        if u16::from_be_bytes([setting[0], setting[1]]) == SETTINGS_HEADER_TABLE_SIZE {
            header_table_size =
                Some(u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
        }
    }
    Ok(Frame::Settings { ack: header.has(flag::ACK), header_table_size })
}

fn strip_padding(p: &mut Bytes, header: FrameHeader) -> Result<(), FrameError> {
    if !header.has(flag::PADDED) {
        return Ok(());
    }
    let pad = usize::from(*p.first().ok_or(FrameError::Malformed)?);
    p.advance(1);
    if pad > p.len() {
        return Err(FrameError::Malformed);
    }
    p.truncate(p.len() - pad);
    Ok(())
}

fn skip(p: &mut Bytes, n: usize) -> Result<(), FrameError> {
    if p.len() < n {
        return Err(FrameError::Malformed);
    }
    p.advance(n);
    Ok(())
}

fn read_u32(p: &[u8]) -> Result<u32, FrameError> {
    let b: [u8; 4] = p.get(..4).and_then(|b| b.try_into().ok()).ok_or(FrameError::Malformed)?;
    Ok(u32::from_be_bytes(b))
}
