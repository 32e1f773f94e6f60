//! A seeded byte-level mutator (the same seed gives the same mutations, so a failing run can
//! be repeated with `SDM_FUZZ_SEED`).

use rand::rngs::StdRng;
use rand::{Rng as _, RngCore, SeedableRng};

/// A deterministic generator: the same seed gives the same mutations, so a failing run can be
/// repeated with `SDM_FUZZ_SEED`.
pub struct Rng(StdRng);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(StdRng::seed_from_u64(seed))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

/// Mutates `input` once: flips, inserts a JSON token, deletes or duplicates a range, or splices
/// in part of `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "true",
        "-",
        "0",
        "1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "999",
        "1000",
        " ",
        "\n",
        "\"../..\"",
        "\"00000000-0000-0000-0000-000000000000\"",
        "\u{1}",
        "\u{2028}",
        "\u{ff}",
    ];
    let mut v = input.to_vec();
    let at = |rng: &mut Rng, v: &Vec<u8>| {
        if v.is_empty() {
            0
        } else {
            rng.below(v.len() + 1)
        }
    };
    match rng.below(6) {
        0 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = at(rng, &v);
            let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
            v.splice(i..i, t.iter().copied());
        }
        2 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = rng.below((v.len() - i).min(64) + 1);
            v.drain(i..i + n);
        }
        3 if !v.is_empty() => {
            let i = rng.below(v.len());
            let n = rng.below((v.len() - i).min(64) + 1);
            let part: Vec<u8> = v[i..i + n].to_vec();
            let j = at(rng, &v);
            v.splice(j..j, part);
        }
        4 if !other.is_empty() => {
            let i = rng.below(other.len());
            let n = rng.below((other.len() - i).min(256) + 1);
            let j = at(rng, &v);
            v.splice(j..j, other[i..i + n].iter().copied());
        }
        _ => {
            let i = at(rng, &v);
            let b = rng.next_u64() as u8;
            v.insert(i, b);
        }
    }
    v
}
