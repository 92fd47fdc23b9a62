//! gRPC over HTTP/2: which streams are gRPC calls, and their length-prefixed messages
//! counted as DATA arrives, a prefix split across frames or segments included.

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web`...
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|c| c.len() >= 16 && c[..16].eq_ignore_ascii_case(b"application/grpc"))
}

/// Counts the messages of one direction of a gRPC call: each is a compressed flag (1 byte),
/// a length (4 bytes, big-endian) and that many bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcMessages {
    /// Messages whose prefix was read.
    pub started: u64,
    /// Bytes of the prefix read so far (0..5).
    prefix_len: u8,
    prefix: [u8; 5],
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl GrpcMessages {
    /// Follows `data`, the next bytes of the direction's DATA.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len as usize).min(data.len());
            let at = self.prefix_len as usize;
            self.prefix[at..at + n].copy_from_slice(&data[..n]);
            self.prefix_len += n as u8;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                self.started += 1;
                let p = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
            }
        }
    }

    /// Messages complete so far.
    pub fn complete(&self) -> u64 {
        if self.remaining > 0 {
            self.started - 1
        } else {
            self.started
        }
    }

    /// Whether the direction ended between messages.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.prefix_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_any_split() {
        let mut wire = Vec::new();
        for len in [0u32, 3, 70_000, 1] {
            wire.push(0);
            wire.extend(len.to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for piece in [1, 2, 3, 5, 7, 4096, wire.len()] {
            let mut m = GrpcMessages::default();
            for chunk in wire.chunks(piece) {
                m.push(chunk);
            }
            assert_eq!((m.complete(), m.at_boundary()), (4, true), "pieces of {piece}");
        }
        // The 5-byte prefix split across two frames, the message unfinished.
        let mut m = GrpcMessages::default();
        m.push(&[0, 0, 0]);
        assert_eq!((m.started, m.at_boundary()), (0, false));
        m.push(&[0, 9, 1, 2]);
        assert_eq!((m.started, m.complete()), (1, 0));
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(Some(b"application/grpc")));
        assert!(is_grpc(Some(b"application/grpc+proto")));
        assert!(!is_grpc(Some(b"application/json")));
        assert!(!is_grpc(None));
    }
}
