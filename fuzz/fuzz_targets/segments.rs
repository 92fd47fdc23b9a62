//! Arbitrary segment sequences (reordered, overlapping, wrapping, SYN/FIN/RST anywhere, any
//! payload) through TCP reassembly and HTTP framing; the invariants are checked inside.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mirror_testkit::fuzz_extract(data));
