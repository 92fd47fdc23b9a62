//! The chunked transfer coding (RFC 9112, section 7.1) as a byte-at-a-time state machine that
//! only finds where a chunked body ends: the body's bytes are kept as they were sent.
/// Longest chunk-size line (with extensions) accepted.
const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedError(pub &'static str);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    FinalLf,
    Done,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line_len: usize,
    trailer_len: usize,
}

impl ChunkedDecoder {
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of the body; returns how many belong to it (all of `data`, or fewer if
    /// the body ended inside it).
    pub(crate) fn advance(&mut self, data: &[u8]) -> Result<usize, ChunkedError> {
        self.advance_with(data, |_| {})
    }

    /// As [`advance`](Self::advance), handing each run of chunk data to `on_data`.
    pub(crate) fn advance_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < data.len() && self.state != State::Done {
            if let State::Data(n) = self.state {
                let take = n.min((data.len() - i) as u64);
                on_data(&data[i..i + take as usize]);
                i += take as usize;
                self.state = if take == n { State::DataCr } else { State::Data(n - take) };
                continue;
            }
            self.step(data[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if self.digits >= 16 {
                        return Err(ChunkedError("chunk size too large"));
                    }
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.digits += 1;
                    State::Size
                }
                b';' | b' ' | b'\t' if self.digits > 0 => State::Extension,
                b'\r' if self.digits > 0 => State::SizeLf,
                b'\n' if self.digits > 0 => self.size_line_done(),
                _ => return Err(ChunkedError("invalid chunk size")),
            },
            State::Extension => {
                self.line_len += 1;
                if self.line_len > MAX_LINE {
                    return Err(ChunkedError("chunk extension too long"));
                }
                match b {
                    b'\r' => State::SizeLf,
                    b'\n' => self.size_line_done(),
                    _ => State::Extension,
                }
            }
            State::SizeLf if b == b'\n' => self.size_line_done(),
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr | State::DataLf if b == b'\n' => State::Size,
            State::TrailerLineStart => match b {
                b'\r' => State::FinalLf,
                b'\n' => State::Done,
                _ => self.trailer_byte()?,
            },
            State::TrailerLine => match b {
                b'\n' => State::TrailerLineStart,
                _ => self.trailer_byte()?,
            },
            State::FinalLf if b == b'\n' => State::Done,
            _ => return Err(ChunkedError("invalid chunk framing")),
        };
        Ok(())
    }

    fn size_line_done(&mut self) -> State {
        let size = std::mem::take(&mut self.size);
        self.digits = 0;
        self.line_len = 0;
        if size == 0 {
            State::TrailerLineStart
        } else {
            State::Data(size)
        }
    }

    fn trailer_byte(&mut self) -> Result<State, ChunkedError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(ChunkedError("trailers too long"));
        }
        Ok(State::TrailerLine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_len(body: &[u8], split: usize) -> Result<Option<usize>, ChunkedError> {
        let mut d = ChunkedDecoder::default();
        let mut used = d.advance(&body[..split])?;
        if !d.is_done() {
            used += d.advance(&body[split..])?;
        }
        Ok(d.is_done().then_some(used))
    }

    #[test]
    fn finds_the_end_wherever_the_bytes_are_split() {
        let body =
            b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            assert_eq!(body_len(body, split), Ok(Some(end)), "split at {split}");
        }
    }

    #[test]
    fn incomplete_and_invalid() {
        assert_eq!(body_len(b"5\r\nabc", 2), Ok(None));
        assert!(body_len(b"x\r\n", 1).is_err());
        assert!(body_len(b"5\r\nabcdeXX", 1).is_err());
        assert!(body_len(b"11111111111111111\r\n", 1).is_err());
    }
}

/// The data of a complete chunked body (chunk framing, extensions and trailers removed).
/// `None` if the framing is invalid or the body incomplete.
pub fn decode_chunked(body: &[u8]) -> Option<bytes::Bytes> {
    let mut out = bytes::BytesMut::with_capacity(body.len());
    let mut decoder = ChunkedDecoder::default();
    decoder.advance_with(body, |run| out.extend_from_slice(run)).ok()?;
    decoder.is_done().then(|| out.freeze())
}

#[cfg(test)]
mod decode_tests {
    #[test]
    fn decodes_data_and_drops_framing() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(&super::decode_chunked(body).unwrap()[..], b"Wikipedia");
        assert!(super::decode_chunked(b"5\r\nab").is_none());
    }
}
