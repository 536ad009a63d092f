//! Damage done to a closed store's file, shared by the tests that check how it is reported.

/// Flips one byte of every on-disk copy of `needle` in `data.mdb` (LMDB's copy-on-write may
/// leave stale copies in free pages; the live one is among them). Returns how many.
pub fn flip_in_file(dir: &std::path::Path, needle: &[u8], offset: usize) -> usize {
    let path = dir.join("data.mdb");
    let mut bytes = std::fs::read(&path).unwrap();
    let hits: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    for &i in &hits {
        bytes[i + offset] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();
    hits.len()
}
