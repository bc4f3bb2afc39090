//! Hostile completions without a fuzzer: replays the fuzz target's seed corpus
//! (`fuzz/corpus/hostile_cqes`) and a batch of random CQE streams through
//! `bufring::model::hostile::run`, which panics if the pool accepts a CQE it must reject,
//! rejects one it must accept, forms a slice outside a buffer, lets chunks overlap, or loses a
//! buffer. BUFRING_HOSTILE_CASES sets the number of random streams (default 3000).

use std::path::PathBuf;

use bufring::model::hostile;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/hostile_cqes")
}

#[test]
fn seed_corpus_replays_clean() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).expect("the seed corpus is in the repository") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| hostile::run(&data));
        assert!(result.is_ok(), "corpus file {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "empty seed corpus");
}

/// xorshift64*: deterministic random streams, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_cqe_streams() {
    let cases: u64 = std::env::var("BUFRING_HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..cases {
        let len = (rng.next() % 600) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let result = std::panic::catch_unwind(|| hostile::run(&data));
        assert!(
            result.is_ok(),
            "random case {case} fails; input: {data:02x?}"
        );
    }
}

/// Found by the fuzz target: a result of i32::MIN without a buffer made the pool negate it.
#[test]
fn regression_result_i32_min_without_buffer() {
    let mut data = vec![0u8, 0, 0, 0];
    // op 0 (completion), mode 0b110 (any i32), flags 0, bid 0, res i32::MIN.
    data.extend_from_slice(&[0, 0b110, 0, 0, 0, 0, 0, 0]);
    data.extend_from_slice(&i32::MIN.to_le_bytes());
    hostile::run(&data);
}
