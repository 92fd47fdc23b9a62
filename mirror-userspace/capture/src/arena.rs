//! Many short byte strings in few allocations: each is written at the end of a shared
//! buffer and split off it as a `Bytes`; a new chunk is taken only when the current one is
//! full, and a chunk nothing refers to any more is reused in place. Captured payloads (the
//! ring reader), message heads and bodies (framing) and the heads of copies (the rewrite)
//! are made this way, so none of them costs an allocation of its own.
use bytes::{Bytes, BytesMut};

/// Makes room for `n` more bytes at the end of `arena`, in chunks of at least `chunk` bytes.
pub fn reserve(arena: &mut BytesMut, n: usize, chunk: usize) {
    if arena.capacity() - arena.len() < n {
        arena.reserve(n.max(chunk));
    }
}

/// `data` copied into `arena` (chunks of at least `chunk` bytes) and split off it.
pub fn copy(arena: &mut BytesMut, data: &[u8], chunk: usize) -> Bytes {
    reserve(arena, data.len(), chunk);
    arena.extend_from_slice(data);
    arena.split().freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_a_chunk_until_it_is_full() {
        let mut arena = BytesMut::new();
        let a = copy(&mut arena, b"first", 64);
        let b = copy(&mut arena, b"second", 64);
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // The second copy sits right after the first, in the same allocation.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
        let big = copy(&mut arena, &[7; 100], 64);
        assert_eq!(big.len(), 100);
    }
}
