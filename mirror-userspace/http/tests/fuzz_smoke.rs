//! A short run of the fuzz targets inside the test suite: every input of a committed corpus
//! (fuzz/corpus/<target>, grown by `cargo fuzz run <target>`) and deterministic mutations of
//! it go through reassembly and framing with the fuzz target's invariant checks.
use std::path::Path;

use mirror_testkit::{fuzz_extract, fuzz_h2};

/// xorshift64: deterministic, no dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn corpus_and_mutations_keep_the_invariants() {
    replay("segments", fuzz_extract);
}

#[test]
fn h2_corpus_and_mutations_keep_the_invariants() {
    replay("h2", fuzz_h2);
}

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz corpus")
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(corpus.len() >= 4, "corpus at {}", dir.display());
    for input in &corpus {
        run(input);
    }
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let seeds = corpus.len();
    for _ in 0..3000 {
        let mut input = corpus[(next(&mut rng) as usize) % seeds].clone();
        // Splice in a piece of another input, then flip some bytes.
        let other = &corpus[(next(&mut rng) as usize) % seeds];
        let at = (next(&mut rng) as usize) % (input.len() + 1);
        let from = (next(&mut rng) as usize) % (other.len() + 1);
        input.splice(at..at, other[from..].iter().copied().take(64));
        for _ in 0..(next(&mut rng) % 6) {
            if !input.is_empty() {
                let i = (next(&mut rng) as usize) % input.len();
                input[i] ^= next(&mut rng) as u8;
            }
        }
        run(&input);
        corpus.push(input);
    }
}
