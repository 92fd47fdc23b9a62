//! Arbitrary bytes as both directions of an HTTP/2 connection: frames, HPACK blocks,
//! CONTINUATION, padding and stream states; the invariants are checked inside.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mirror_testkit::fuzz_h2(data));
