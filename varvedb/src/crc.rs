//! CRC32C (Castagnoli) for records, with a path for short inputs.
//!
//! The `crc32c` crate is built for long buffers: it steps byte by byte up to an 8-byte
//! boundary of the address and after the last one, then runs three interleaved streams only
//! past 768 bytes. Records are LMDB values, aligned to 2 bytes, and mostly around a hundred
//! bytes long, so up to 14 of their bytes went through the one-byte instruction. Below that
//! length this steps 8 bytes at a time from the start, with unaligned loads, and ends with
//! one 4-, 2- and 1-byte step at most. The result is the same CRC32C.

/// Inputs shorter than this take the short path; the crate's interleaved streams pay off
/// from three of its 256-byte blocks on.
const SHORT: usize = 3 * 256;

/// The CRC32C of `data` (initial value and final xor `!0`, as the `crc32c` crate).
#[expect(clippy::inline_always, reason = "measured: left to itself, the compiler calls it in stream folds")]
#[inline(always)]
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() < SHORT && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: `short` only requires SSE 4.2, which the CPU was found to support on the
            // line above.
            return unsafe { x86::short(data) };
        }
    }
    crc32c::crc32c(data)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64};

    /// CRC32C with the SSE 4.2 instruction, 8 bytes per step (reads are unaligned, by
    /// value: no alignment requirement on `data`). Four steps per loop turn, then at most one
    /// step each of 16, 8, 4, 2 and 1 bytes: fewer branches than a loop of single steps and
    /// a tail of its own.
    #[target_feature(enable = "sse4.2")]
    pub(super) fn short(data: &[u8]) -> u32 {
        let mut crc = u64::from(!0u32);
        let mut rest = data;
        while let Some((block, tail)) = rest.split_first_chunk::<32>() {
            for word in block.as_chunks::<8>().0 {
                crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
            }
            rest = tail;
        }
        if let Some((two, tail)) = rest.split_first_chunk::<16>() {
            for word in two.as_chunks::<8>().0 {
                crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
            }
            rest = tail;
        }
        if let Some((word, tail)) = rest.split_first_chunk::<8>() {
            crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
            rest = tail;
        }
        // The instruction leaves the upper half zero.
        let mut crc = crc as u32;
        if let Some((four, tail)) = rest.split_first_chunk::<4>() {
            crc = _mm_crc32_u32(crc, u32::from_le_bytes(*four));
            rest = tail;
        }
        if let Some((two, tail)) = rest.split_first_chunk::<2>() {
            crc = _mm_crc32_u16(crc, u16::from_le_bytes(*two));
            rest = tail;
        }
        if let Some(&one) = rest.first() {
            crc = _mm_crc32_u8(crc, one);
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_crc32c_crate_at_every_length_and_offset() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for len in (0..1100).chain([1500, 1991 - start]) {
                let s = &data[start..start + len];
                assert_eq!(super::crc32c(s), crc32c::crc32c(s), "start {start} len {len}");
            }
        }
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
    }
}
