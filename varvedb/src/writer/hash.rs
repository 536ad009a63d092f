//! The hasher of the writer's maps keyed by stream id.

/// Hashing of stream ids for the writer's maps, which look up and insert several ids per
/// appended event. An id is a fixed 128-bit value, so the rounds of a general-purpose hash
/// such as std's `SipHash` would weigh on every append; this is two 64 × 64-bit multiplies,
/// folded, with a key drawn once per process from std's random source, so ids chosen to
/// collide cannot be computed without it. (Knowing the key, one could: an id half equal to a key word zeroes the first
/// product, and the product commutes. Even then the cost is a slow writer, never a wrong
/// answer, and the head cache holds at most `HEAD_CACHE` entries.) All maps share the key:
/// never fill one by iterating another, which is quadratic for hashbrown with shared keys.
#[derive(Clone, Copy)]
pub(super) struct StreamHashing([u64; 2]);

impl Default for StreamHashing {
    fn default() -> Self {
        static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
        StreamHashing(*KEY.get_or_init(|| {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            [random.hash_one(0u8), random.hash_one(1u8)]
        }))
    }
}

impl std::hash::BuildHasher for StreamHashing {
    type Hasher = StreamHasher;

    fn build_hasher(&self) -> StreamHasher {
        StreamHasher { key: self.0, state: 0 }
    }
}

/// One hash in progress, keyed by its [`StreamHashing`].
pub(super) struct StreamHasher {
    key: [u64; 2],
    state: u64,
}

impl StreamHasher {
    /// The high and low halves of the 128-bit product, xored: every input bit reaches both
    /// the bucket index (low bits) and hashbrown's tag (high bits).
    #[inline]
    fn mix(&mut self, a: u64, b: u64) {
        let product = u128::from(a ^ self.key[0]) * u128::from(b ^ self.key[1] ^ self.state);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for StreamHasher {
    #[inline]
    fn write_u128(&mut self, id: u128) {
        self.mix(id as u64, (id >> 64) as u64);
    }

    /// Any other input (not used by stream ids), eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word), chunk.len() as u64);
        }
    }

    /// A second round: with one of an id's halves constant (small counters, or counters
    /// in the high half), one multiply leaves the low bits less spread than uniform.
    fn finish(&self) -> u64 {
        let product = u128::from(self.state ^ self.key[1]) * u128::from(self.key[0] | 1);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::StreamId;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn stream_hashes_spread_sequential_and_structured_ids() {
        let hashing = StreamHashing::default();
        // Ids applications pick: counters, counters in the high half, random ones, and ids
        // that differ in one bit each.
        let shapes: [Box<dyn Fn(u128) -> u128>; 4] = [
            Box::new(|i| i),
            Box::new(|i| i << 64),
            Box::new(|i| {
                // splitmix64 of the counter, in both halves
                let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                u128::from(z ^ (z >> 31)) * 0x1_0000_0001
            }),
            Box::new(|i| 1u128 << (i % 128) | (i / 128) << 7),
        ];
        for (shape, id) in shapes.iter().enumerate() {
            let ids: HashSet<u128> = (0..100_000u128).map(id).collect();
            let hashes: HashSet<u64> = ids.iter().map(|&i| hashing.hash_one(StreamId::from(i))).collect();
            assert!(ids.len() > 90_000, "shape {shape}: the test's ids repeat");
            assert_eq!(hashes.len(), ids.len(), "shape {shape}: colliding hashes");
            // hashbrown picks buckets by the low bits and tags entries by the top 7.
            let low: HashSet<u64> = hashes.iter().map(|h| h & 0xffff).collect();
            let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            // Uniform hashes would leave about 51,000 of the 65,536 values taken.
            assert!(low.len() > 45_000, "shape {shape}: {} distinct low 16 bits", low.len());
            assert_eq!(top.len(), 128, "shape {shape}: top 7 bits not all used");
        }
    }
}
