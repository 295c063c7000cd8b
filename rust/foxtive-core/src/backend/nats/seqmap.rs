//! Maps keyed by stream sequence (`held`, `handed`): touched for every
//! delivery, twice, so they hash with one multiplication instead of SipHash.
//! The keys are sequence numbers of this backend's own stream, not text an
//! outsider picks, so a DoS-resistant hash buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from stream sequence to `V`.
pub(super) type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

/// Fibonacci hashing of a `u64`: consecutive sequences spread over the
/// whole word (the table takes its bucket from the low bits and its tag
/// from the high ones).
#[derive(Default)]
pub(super) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys reach this map; anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_kept_apart() {
        let mut m: SeqMap<u64> = SeqMap::default();
        for seq in 0..10_000u64 {
            m.insert(seq, seq * 2);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&4_321), Some(&8_642));
        assert_eq!(m.remove(&0), Some(0));
        assert!(!m.contains_key(&0));
    }
}
