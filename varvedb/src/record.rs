//! The record layer: the event envelope stored in the `events` table.
//!
//! ```text
//! off  size  field (all integers little-endian)
//!   0     4  crc32c(bytes[4..]) XOR mix(seq)
//!   4     1  envelope format (1)
//!   5     1  flags: 0x01 encrypted (reserved), 0x02 payload in blob table, 0x04 has event id
//!   6     1  type tag length T (1..=255)
//!   7     1  reserved, 0
//!   8    16  stream id u128
//!  24     4  stream version u32
//!  28     8  timestamp, microseconds since the Unix epoch
//!  36     4  metadata length M
//!  40     4  payload length P (the logical payload, also when it lives in a blob)
//!  44     4  schema version of the event type (0: untyped bytes)
//!  48    16  event id u128 (only with flag 0x04)
//!   …     T  type tag, UTF-8
//!   …     M  metadata
//!   …     P  payload, or 32 bytes of blake3 hash (flag 0x02)
//! ```
//!
//! Mixing the seq (the record's key, not stored in it) into the checksum makes a record copied
//! under another key fail its check, not only a record with flipped bits. `mix` is a bijection
//! of the seq folded to 32 bits, applied after one CRC pass over the record.

use crate::error::Error;

pub(crate) const ENVELOPE_FORMAT: u8 = 1;
pub(crate) const HEADER_LEN: usize = 48;
pub(crate) const HASH_LEN: usize = 32;

pub(crate) mod flag {
    pub(crate) const ENCRYPTED: u8 = 0x01;
    pub(crate) const BLOB: u8 = 0x02;
    pub(crate) const HAS_ID: u8 = 0x04;
    pub(crate) const KNOWN: u8 = ENCRYPTED | BLOB | HAS_ID;
}

/// Payloads larger than this are stored once in the content-addressed `blobs` table.
pub(crate) const BLOB_THRESHOLD: usize = 1024;

/// The fields of an envelope, borrowed from the map (or from a buffer when encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) stream: u128,
    pub(crate) version: u32,
    pub(crate) timestamp_micros: u64,
    pub(crate) schema_version: u32,
    pub(crate) id: Option<u128>,
    pub(crate) type_tag: &'a str,
    pub(crate) metadata: &'a [u8],
    pub(crate) body: Body<'a>,
}

/// Where the payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// Inline in the envelope.
    Inline(&'a [u8]),
    /// In the `blobs` table under this hash; `len` is the payload length.
    Blob { hash: &'a [u8; HASH_LEN], len: u32 },
}

pub(crate) fn blob_hash(payload: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(payload).as_bytes()
}

fn checksum(seq: u64, rest: &[u8]) -> u32 {
    crc32c::crc32c(rest) ^ mix(seq)
}

/// Folds a seq to 32 bits and scrambles it (multiplication by an odd constant is a bijection
/// on `u32`), so neighbouring seqs differ in many bits.
fn mix(seq: u64) -> u32 {
    let folded = (seq ^ (seq >> 32)) as u32;
    folded.wrapping_mul(0x9e37_79b1)
}

impl<'a> Envelope<'a> {
    /// Encodes into `out` (cleared first). Lengths must have been validated by the caller:
    /// tag 1..=255 bytes, metadata and payload below 4 GiB.
    pub(crate) fn encode_into(&self, seq: u64, out: &mut Vec<u8>) {
        let (flags_body, payload_len, body): (u8, usize, &[u8]) = match self.body {
            Body::Inline(p) => (0, p.len(), p),
            Body::Blob { hash, len } => (flag::BLOB, len as usize, hash.as_slice()),
        };
        let flags = flags_body | if self.id.is_some() { flag::HAS_ID } else { 0 };
        out.clear();
        out.reserve(HEADER_LEN + 16 + self.type_tag.len() + self.metadata.len() + body.len());
        out.extend_from_slice(&[0; 4]);
        out.push(ENVELOPE_FORMAT);
        out.push(flags);
        out.push(len_u8(self.type_tag.len()));
        out.push(0);
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.timestamp_micros.to_le_bytes());
        out.extend_from_slice(&len_u32(self.metadata.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(payload_len).to_le_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        if let Some(id) = self.id {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend_from_slice(self.type_tag.as_bytes());
        out.extend_from_slice(self.metadata);
        out.extend_from_slice(body);
        let crc = checksum(seq, &out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and verifies the envelope stored under `seq`. Never panics on any input.
    pub(crate) fn decode(seq: u64, bytes: &'a [u8]) -> Result<Self, Error> {
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        if bytes.len() < HEADER_LEN {
            return Err(corrupt("record shorter than its header"));
        }
        let stored_crc = u32::from_le_bytes(arr(&bytes[0..4]));
        if stored_crc != checksum(seq, &bytes[4..]) {
            return Err(corrupt("checksum mismatch"));
        }
        if bytes[4] != ENVELOPE_FORMAT {
            return Err(corrupt("unknown envelope format"));
        }
        let flags = bytes[5];
        if flags & !flag::KNOWN != 0 {
            return Err(corrupt("unknown flags"));
        }
        if flags & flag::ENCRYPTED != 0 {
            return Err(corrupt("encrypted records need the encryption feature"));
        }
        let tag_len = usize::from(bytes[6]);
        let stream = u128::from_le_bytes(arr(&bytes[8..24]));
        let version = u32::from_le_bytes(arr(&bytes[24..28]));
        let timestamp_micros = u64::from_le_bytes(arr(&bytes[28..36]));
        let meta_len = u32::from_le_bytes(arr(&bytes[36..40])) as usize;
        let payload_len = u32::from_le_bytes(arr(&bytes[40..44]));
        let schema_version = u32::from_le_bytes(arr(&bytes[44..48]));

        let mut rest = &bytes[HEADER_LEN..];
        let mut take = |n: usize| -> Result<&'a [u8], Error> {
            if rest.len() < n {
                return Err(corrupt("record shorter than its declared lengths"));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let id = if flags & flag::HAS_ID != 0 { Some(u128::from_le_bytes(arr(take(16)?))) } else { None };
        let type_tag = std::str::from_utf8(take(tag_len)?).map_err(|_| corrupt("type tag is not UTF-8"))?;
        let metadata = take(meta_len)?;
        let body = if flags & flag::BLOB != 0 {
            let hash: &[u8; HASH_LEN] = take(HASH_LEN)?.try_into().map_err(|_| corrupt("bad blob hash"))?;
            Body::Blob { hash, len: payload_len }
        } else {
            Body::Inline(take(payload_len as usize)?)
        };
        if !rest.is_empty() {
            return Err(corrupt("trailing bytes after the payload"));
        }
        Ok(Envelope { stream, version, timestamp_micros, schema_version, id, type_tag, metadata, body })
    }
}

/// Copies a slice of known length into an array; only called on slices cut to that length.
fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

fn len_u8(n: usize) -> u8 {
    u8::try_from(n).expect("type tag length validated before encoding")
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("event size validated before encoding")
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Body<'_>) -> Envelope<'_> {
        Envelope {
            stream: 0xdead_beef,
            version: 7,
            timestamp_micros: 1_700_000_000_000_000,
            schema_version: 3,
            id: Some(99),
            type_tag: "order.placed",
            metadata: b"meta",
            body,
        }
    }

    #[test]
    fn round_trips_inline_and_blob() {
        let hash = [7u8; HASH_LEN];
        for env in [sample(Body::Inline(b"payload")), sample(Body::Blob { hash: &hash, len: 5000 })] {
            let mut buf = Vec::new();
            env.encode_into(42, &mut buf);
            assert_eq!(Envelope::decode(42, &buf).unwrap(), env);
        }
        let no_id = Envelope { id: None, ..sample(Body::Inline(b"")) };
        let mut buf = Vec::new();
        no_id.encode_into(1, &mut buf);
        assert_eq!(Envelope::decode(1, &buf).unwrap(), no_id);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        sample(Body::Inline(b"payload")).encode_into(42, &mut buf);
        for i in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(matches!(Envelope::decode(42, &bad), Err(Error::Corrupt { seq: 42, .. })), "bit {i}");
        }
    }

    #[test]
    fn record_under_another_seq_is_detected() {
        let mut buf = Vec::new();
        sample(Body::Inline(b"payload")).encode_into(42, &mut buf);
        for other in [0, 1, 41, 43, 42 + (1 << 32), u64::MAX] {
            assert!(matches!(Envelope::decode(other, &buf), Err(Error::Corrupt { .. })), "seq {other}");
        }
    }

    #[test]
    fn nearby_seqs_never_share_a_mix() {
        let mixes: std::collections::HashSet<u32> = (0..100_000u64).map(mix).collect();
        assert_eq!(mixes.len(), 100_000);
    }

    #[test]
    fn truncations_never_panic() {
        let mut buf = Vec::new();
        sample(Body::Inline(b"payload")).encode_into(42, &mut buf);
        for n in 0..buf.len() {
            assert!(Envelope::decode(42, &buf[..n]).is_err());
        }
    }

    proptest::proptest! {
        // The decoder's fuzz test: arbitrary bytes under an arbitrary seq never panic, and
        // whatever decodes re-encodes to exactly the same bytes.
        #[test]
        fn arbitrary_bytes_never_panic(seq: u64, bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200)) {
            if let Ok(env) = Envelope::decode(seq, &bytes) {
                let mut again = Vec::new();
                env.encode_into(seq, &mut again);
                proptest::prop_assert_eq!(again, bytes);
            }
        }

        // Valid records with a forged checksum (the hardest case: lengths that lie) never panic.
        #[test]
        fn forged_records_never_panic(
            seq: u64,
            cut in 0usize..120,
            patch in proptest::collection::vec((0usize..120, proptest::arbitrary::any::<u8>()), 0..6),
        ) {
            let mut buf = Vec::new();
            sample(Body::Inline(b"a payload of some length")).encode_into(seq, &mut buf);
            for (at, byte) in patch {
                if let Some(b) = buf.get_mut(at) {
                    *b = byte;
                }
            }
            buf.truncate(cut.max(4));
            let crc = checksum(seq, &buf[4..]);
            buf[..4].copy_from_slice(&crc.to_le_bytes());
            let _ = Envelope::decode(seq, &buf);
        }
    }

    #[test]
    fn lying_lengths_with_valid_checksum_are_errors() {
        // A record whose checksum is right but whose lengths overrun (a bug or a forged
        // record) must still be an error, not a panic.
        let mut buf = Vec::new();
        sample(Body::Inline(b"payload")).encode_into(42, &mut buf);
        for field in [6usize, 36, 40] {
            // tag length, metadata length, payload length
            let mut bad = buf.clone();
            bad[field] = 0xff;
            let crc = checksum(42, &bad[4..]);
            bad[..4].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(Envelope::decode(42, &bad), Err(Error::Corrupt { .. })), "field {field}");
        }
    }
}
