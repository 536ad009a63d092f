//! The record layer: the event envelope stored in the `events` table.
//!
//! ```text
//! off  size  field (fixed integers little-endian; numbers LEB128, shortest form)
//!   0     4  crc32c(bytes[4..]) XOR mix(seq)
//!   4     1  flags: 0x01 encrypted, 0x02 body in blob table, 0x04 has event id,
//!              0x08 has metadata
//!   5     1  type tag length T (1..=255)
//!   6    16  stream id u128
//!  22     8  timestamp, microseconds since the Unix epoch
//!  30  1..5  stream version, number
//!   …  1..5  metadata length M (1 or more), number (only with flag 0x08; else M = 0)
//!   …  1..5  schema version of the event type (0: untyped bytes), number
//!   …  1..5  payload length P, number (only with flag 0x02)
//!   …    16  event id u128 (only with flag 0x04)
//!   …     T  type tag, UTF-8
//! then, in the clear:
//!   …     M  metadata
//!   …     P  payload, the rest of the record; or 32 bytes of blake3 hash of it (flag 0x02)
//! or, encrypted (flag 0x01):
//!   …  M+P+28  nonce 12 ‖ AES-256-GCM(metadata ‖ payload) ‖ tag 16, the rest of the record,
//!              or 32 bytes of blake3 hash of that sealed message (flag 0x02)
//! ```
//!
//! A payload stored inline is the rest of the record, so its length is not stored, and
//! most events have no metadata, so theirs is a flag. The
//! store's format version (in `meta`) says which envelope its records have; a flag this
//! build does not know is refused, so a later envelope can mark itself with one.
//!
//! Mixing the seq (the record's key, not stored in it) into the checksum makes a record copied
//! under another key fail its check, not only a record with flipped bits. `mix` is a bijection
//! of the seq folded to 32 bits, applied after one CRC pass over the record.
//!
//! An encrypted record's associated data is the seq followed by every header byte from offset
//! 4 to the end of the type tag: stream, version, type tag and the rest of the header are
//! authenticated, so a sealed body moved to another position, or a header edited around it,
//! fails to open even if the attacker also fixes the CRC (which is not a secret). The payload
//! length of an inline sealed body is not in it, but follows from the sealed message's length,
//! which the cipher authenticates.

use crate::crypto::{self, SEAL_OVERHEAD};
use crate::error::Error;

/// The fixed fields, before the first number.
pub(crate) const FIXED_LEN: usize = 30;
/// The shortest record: the fixed fields and two one-byte numbers (version, schema version).
pub(crate) const MIN_LEN: usize = FIXED_LEN + 2;
pub(crate) const HASH_LEN: usize = 32;
/// Longest number: a `u32` in LEB128.
const NUMBER_LEN: usize = 5;
/// Longest header before the type tag: fixed fields, four numbers and the event id.
const MAX_HEAD: usize = FIXED_LEN + 4 * NUMBER_LEN + 16;
/// Longest associated data: seq, header after the checksum, longest tag.
pub(crate) const MAX_AAD: usize = 8 + (MAX_HEAD - 4) + 255;

pub(crate) mod flag {
    pub(crate) const ENCRYPTED: u8 = 0x01;
    pub(crate) const BLOB: u8 = 0x02;
    pub(crate) const HAS_ID: u8 = 0x04;
    pub(crate) const HAS_METADATA: u8 = 0x08;
    pub(crate) const KNOWN: u8 = ENCRYPTED | BLOB | HAS_ID | HAS_METADATA;
    /// The flags of a record the reader's fast path takes: in the clear and inline.
    pub(crate) const PLAIN_INLINE: u8 = HAS_ID | HAS_METADATA;
}

/// Payloads larger than this are stored once in the content-addressed `blobs` table.
pub(crate) const BLOB_THRESHOLD: usize = 1024;

/// The fields of an envelope, borrowed from the map (or from a buffer when encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) head: RecordHeader<'a>,
    pub(crate) content: Content<'a>,
}

/// Everything stored in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader<'a> {
    pub(crate) stream: u128,
    pub(crate) version: u32,
    pub(crate) timestamp_micros: u64,
    pub(crate) schema_version: u32,
    pub(crate) id: Option<u128>,
    pub(crate) type_tag: &'a str,
}

/// Metadata and payload, in the clear or sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Content<'a> {
    Plain {
        metadata: &'a [u8],
        body: Body<'a>,
    },
    Sealed {
        metadata_len: u32,
        payload_len: u32,
        /// The header bytes after the checksum, through the type tag: with the seq, the
        /// associated data the body was sealed with.
        aad_head: &'a [u8],
        body: Body<'a>,
    },
}

/// Where the payload (or the sealed message) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// Inline in the envelope.
    Inline(&'a [u8]),
    /// In the `blobs` table under this hash; `len` is the blob's length.
    Blob { hash: &'a [u8; HASH_LEN], len: u32 },
}

pub(crate) fn blob_hash(payload: &[u8]) -> [u8; HASH_LEN] {
    *blake3::hash(payload).as_bytes()
}

#[inline]
fn checksum(seq: u64, rest: &[u8]) -> u32 {
    crate::crc::crc32c(rest) ^ mix(seq)
}

/// Folds a seq to 32 bits and scrambles it (multiplication by an odd constant is a bijection
/// on `u32`), so neighbouring seqs differ in many bits.
fn mix(seq: u64) -> u32 {
    let folded = (seq ^ (seq >> 32)) as u32;
    folded.wrapping_mul(0x9e37_79b1)
}

/// Writes the checksum of a record whose other bytes are in place.
fn seal_checksum(seq: u64, out: &mut [u8]) {
    let crc = checksum(seq, &out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(feature = "testing")]
pub(crate) fn forge_checksum(seq: u64, record: &mut [u8]) {
    if record.len() >= 4 {
        seal_checksum(seq, record);
    }
}

/// The associated data of an encrypted record: `seq ‖ aad_head`, built on the stack.
pub(crate) struct Aad {
    buf: [u8; MAX_AAD],
    len: usize,
}

impl Aad {
    pub(crate) fn new(seq: u64, aad_head: &[u8]) -> Self {
        let mut buf = [0u8; MAX_AAD];
        let len = (8 + aad_head.len()).min(MAX_AAD);
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..len].copy_from_slice(&aad_head[..len - 8]);
        Aad { buf, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Opens the sealed body of the record of `seq`, whose associated header bytes are
/// `aad_head`, into `out` (exactly the plaintext's length). Nothing of `out` is visible
/// unless it authenticates.
pub(crate) fn open_sealed(
    key: &aes_gcm::Aes256Gcm,
    seq: u64,
    aad_head: &[u8],
    sealed: &[u8],
    out: &mut [u8],
) -> Result<(), Error> {
    crypto::open_into(key, Aad::new(seq, aad_head).as_bytes(), sealed, out)
        .map_err(|()| Error::DecryptionFailed { seq })
}

impl RecordHeader<'_> {
    /// Writes the header and type tag into `out` (cleared first), checksum left at zero.
    /// `blob_len` is the payload's length when the body is in the blob table (flag 0x02).
    fn encode_into(&self, flags: u8, metadata_len: usize, blob_len: Option<usize>, out: &mut Vec<u8>) {
        let flags = flags
            | if self.id.is_some() { flag::HAS_ID } else { 0 }
            | if metadata_len > 0 { flag::HAS_METADATA } else { 0 }
            | if blob_len.is_some() { flag::BLOB } else { 0 };
        // Built on the stack and copied once: a push per field checked the capacity each time.
        let mut header = [0u8; MAX_HEAD];
        header[4] = flags;
        header[5] = len_u8(self.type_tag.len());
        header[6..22].copy_from_slice(&self.stream.to_le_bytes());
        header[22..30].copy_from_slice(&self.timestamp_micros.to_le_bytes());
        let mut at = put_number(&mut header, FIXED_LEN, self.version);
        if metadata_len > 0 {
            at = put_number(&mut header, at, len_u32(metadata_len));
        }
        at = put_number(&mut header, at, self.schema_version);
        if let Some(len) = blob_len {
            at = put_number(&mut header, at, len_u32(len));
        }
        if let Some(id) = self.id {
            header[at..at + 16].copy_from_slice(&id.to_le_bytes());
            at += 16;
        }
        out.clear();
        out.extend_from_slice(&header[..at]);
        out.extend_from_slice(self.type_tag.as_bytes());
    }

    /// Encodes an encrypted record into `out`: `metadata ‖ payload` sealed under `key` with
    /// `nonce`, bound to `seq` and this header. A sealed message longer than
    /// [`BLOB_THRESHOLD`] goes to `blob` (cleared first) and the record holds its hash,
    /// which is returned.
    #[expect(clippy::too_many_arguments, reason = "one call site, in the writer")]
    pub(crate) fn encode_sealed(
        &self,
        seq: u64,
        metadata: &[u8],
        payload: &[u8],
        key: &aes_gcm::Aes256Gcm,
        nonce: &[u8; crypto::NONCE_LEN],
        out: &mut Vec<u8>,
        blob: &mut Vec<u8>,
    ) -> Result<Option<[u8; HASH_LEN]>, Error> {
        let sealed_len = metadata.len() + payload.len() + SEAL_OVERHEAD;
        let in_blob = sealed_len > BLOB_THRESHOLD;
        self.encode_into(flag::ENCRYPTED, metadata.len(), in_blob.then_some(payload.len()), out);
        let aad = Aad::new(seq, &out[4..]);
        let target = if in_blob {
            blob.clear();
            &mut *blob
        } else {
            &mut *out
        };
        target.reserve(sealed_len);
        target.extend_from_slice(nonce);
        let start = target.len();
        target.extend_from_slice(metadata);
        target.extend_from_slice(payload);
        let tag = crypto::seal(key, nonce, aad.as_bytes(), &mut target[start..])?;
        target.extend_from_slice(&tag);
        let hash = in_blob.then(|| blob_hash(blob));
        if let Some(hash) = &hash {
            out.extend_from_slice(hash);
        }
        seal_checksum(seq, out);
        Ok(hash)
    }
}

impl<'a> Envelope<'a> {
    /// Encodes a record in the clear into `out` (cleared first). Lengths must have been
    /// validated by the caller: tag 1..=255 bytes, metadata and payload below 4 GiB.
    pub(crate) fn encode_into(&self, seq: u64, out: &mut Vec<u8>) {
        let (metadata, blob_len, body): (&[u8], Option<usize>, &[u8]) = match self.content {
            Content::Plain { metadata, body: Body::Inline(p) } => (metadata, None, p),
            Content::Plain { metadata, body: Body::Blob { hash, len } } => {
                (metadata, Some(len as usize), hash.as_slice())
            }
            Content::Sealed { metadata_len, payload_len, body, .. } => {
                // Re-encoding a decoded sealed record (tests, tools): the sealed bytes as they are.
                let (blob_len, body): (Option<usize>, &[u8]) = match body {
                    Body::Inline(s) => (None, s),
                    Body::Blob { hash, .. } => (Some(payload_len as usize), hash.as_slice()),
                };
                self.head.encode_into(flag::ENCRYPTED, metadata_len as usize, blob_len, out);
                out.extend_from_slice(body);
                seal_checksum(seq, out);
                return;
            }
        };
        out.reserve(MAX_HEAD + self.head.type_tag.len() + metadata.len() + body.len());
        self.head.encode_into(0, metadata.len(), blob_len, out);
        out.extend_from_slice(metadata);
        out.extend_from_slice(body);
        seal_checksum(seq, out);
    }

    /// Decodes and verifies the envelope stored under `seq`. Never panics on any input.
    #[expect(clippy::inline_always, reason = "on every scanned event; the general path stays out of line")]
    #[inline(always)]
    pub(crate) fn decode(seq: u64, bytes: &'a [u8]) -> Result<Self, Error> {
        let checked = verify(seq, bytes)?;
        match plain_inline(checked) {
            Some((head, metadata, payload)) => {
                Ok(Envelope { head, content: Content::Plain { metadata, body: Body::Inline(payload) } })
            }
            None => Self::decode_checked(checked),
        }
    }

    /// Decodes a record whose checksum [`verify`] accepted: every kind of record, naming
    /// what is wrong with a damaged one.
    #[inline(never)]
    pub(crate) fn decode_checked(checked: Verified<'a>) -> Result<Self, Error> {
        let Verified { seq, bytes, .. } = checked;
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        if bytes.len() < MIN_LEN {
            return Err(corrupt("record shorter than its header"));
        }
        let flags = bytes[4];
        if flags & !flag::KNOWN != 0 {
            return Err(corrupt("unknown flags"));
        }
        let tag_len = usize::from(bytes[5]);
        let stream = u128::from_le_bytes(arr(&bytes[6..22]));
        let timestamp_micros = u64::from_le_bytes(arr(&bytes[22..30]));

        let mut cur = Cursor { bytes, pos: FIXED_LEN, seq };
        let version = cur.number()?;
        let meta_len = if flags & flag::HAS_METADATA != 0 {
            match cur.number()? {
                0 => return Err(corrupt("metadata flag with a metadata length of 0")),
                len => len,
            }
        } else {
            0
        };
        let schema_version = cur.number()?;
        let blob_len = if flags & flag::BLOB != 0 { Some(cur.number()?) } else { None };
        let id = if flags & flag::HAS_ID != 0 { Some(u128::from_le_bytes(arr(cur.take(16)?))) } else { None };
        let type_tag =
            std::str::from_utf8(cur.take(tag_len)?).map_err(|_| corrupt("type tag is not UTF-8"))?;
        let head = RecordHeader { stream, version, timestamp_micros, schema_version, id, type_tag };
        let content = if flags & flag::ENCRYPTED != 0 {
            let aad_head = &bytes[4..cur.pos];
            let (payload_len, body) = match blob_len {
                Some(payload_len) => {
                    // Checked: two u32 lengths can overflow a 32-bit usize.
                    let sealed_len = (meta_len as usize)
                        .checked_add(payload_len as usize)
                        .and_then(|n| n.checked_add(SEAL_OVERHEAD))
                        .ok_or_else(|| corrupt("sealed length overflows"))?;
                    (payload_len, cur.blob(sealed_len)?)
                }
                None => {
                    let sealed = cur.rest();
                    let payload_len = sealed
                        .len()
                        .checked_sub(SEAL_OVERHEAD)
                        .and_then(|n| n.checked_sub(meta_len as usize))
                        .ok_or_else(|| corrupt("record shorter than its declared lengths"))?;
                    let payload_len =
                        u32::try_from(payload_len).map_err(|_| corrupt("payload of 4 GiB or more"))?;
                    (payload_len, Body::Inline(sealed))
                }
            };
            Content::Sealed { metadata_len: meta_len, payload_len, aad_head, body }
        } else {
            let metadata = cur.take(meta_len as usize)?;
            let body = match blob_len {
                Some(len) => cur.blob(len as usize)?,
                None => Body::Inline(cur.rest()),
            };
            Content::Plain { metadata, body }
        };
        if cur.pos != bytes.len() {
            return Err(corrupt("trailing bytes after the payload"));
        }
        Ok(Envelope { head, content })
    }
}

/// A record whose checksum [`verify`] accepted under `seq`: the only way into the decoders
/// that do not check it again, so none can be reached with unchecked bytes.
#[derive(Clone, Copy)]
pub(crate) struct Verified<'a> {
    seq: u64,
    header: &'a [u8; FIXED_LEN],
    bytes: &'a [u8],
}

impl Verified<'_> {
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }
}

/// The record stored under `seq`, once its checksum is verified.
#[expect(clippy::inline_always, reason = "on every read; measured with `plain_inline`")]
#[inline(always)]
pub(crate) fn verify(seq: u64, bytes: &[u8]) -> Result<Verified<'_>, Error> {
    let Some((header, _)) = bytes.split_first_chunk::<FIXED_LEN>() else {
        return Err(corrupt_record(seq, "record shorter than its header"));
    };
    let stored_crc = u32::from_le_bytes(arr(&header[0..4]));
    if stored_crc != checksum(seq, &bytes[4..]) {
        return Err(corrupt_record(seq, "checksum mismatch"));
    }
    Ok(Verified { seq, header, bytes })
}

/// The common record, in the clear and inline, with an ASCII type tag: its head, metadata
/// and payload, cut with one length check. `None` for anything else, or anything amiss:
/// [`Envelope::decode_checked`] then finds the same record the same and names what is wrong.
#[expect(
    clippy::inline_always,
    reason = "measured: the reader's fast path builds its event from these parts in place"
)]
#[inline(always)]
pub(crate) fn plain_inline(checked: Verified<'_>) -> Option<(RecordHeader<'_>, &[u8], &[u8])> {
    let Verified { header, bytes, .. } = checked;
    let flags = header[4];
    if flags & !flag::PLAIN_INLINE != 0 {
        return None;
    }
    let (version, at) = number(bytes, FIXED_LEN).ok()?;
    let (meta_len, at) = if flags & flag::HAS_METADATA != 0 {
        Some(number(bytes, at).ok()?).filter(|&(len, _)| len > 0)?
    } else {
        (0, at)
    };
    let (schema_version, at) = number(bytes, at).ok()?;
    let tag_start = at + if flags & flag::HAS_ID != 0 { 16 } else { 0 };
    let meta_start = tag_start + usize::from(header[5]);
    let payload_start = meta_start.checked_add(meta_len as usize)?;
    if payload_start > bytes.len() {
        return None;
    }
    let type_tag = ascii(&bytes[tag_start..meta_start])?;
    let id = (flags & flag::HAS_ID != 0).then(|| u128::from_le_bytes(arr(&bytes[at..tag_start])));
    let head = RecordHeader {
        stream: u128::from_le_bytes(arr(&header[6..22])),
        version,
        timestamp_micros: u64::from_le_bytes(arr(&header[22..30])),
        schema_version,
        id,
        type_tag,
    };
    Some((head, &bytes[meta_start..payload_start], &bytes[payload_start..]))
}

/// The number (LEB128, at most 32 bits, in its shortest form) at `at` of `bytes`, and where
/// the next field starts; the reason it is refused otherwise.
#[inline]
fn number(bytes: &[u8], at: usize) -> Result<(u32, usize), &'static str> {
    let mut value = 0u32;
    for i in 0..NUMBER_LEN {
        let Some(&b) = bytes.get(at + i) else {
            return Err("record shorter than its header");
        };
        if i == NUMBER_LEN - 1 && b > 0x0f {
            return Err("a number of the header exceeds 32 bits");
        }
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err("a number of the header is not in its shortest form");
            }
            return Ok((value, at + i + 1));
        }
    }
    Err("a number of the header exceeds 32 bits")
}

/// Writes `value` as LEB128 at `at` of `out` (room for [`NUMBER_LEN`] bytes); returns the
/// end.
fn put_number(out: &mut [u8], mut at: usize, mut value: u32) -> usize {
    while value >= 0x80 {
        out[at] = (value & 0x7f) as u8 | 0x80;
        value >>= 7;
        at += 1;
    }
    out[at] = value as u8;
    at + 1
}

#[cold]
#[inline(never)]
fn corrupt_record(seq: u64, reason: &str) -> Error {
    Error::Corrupt { seq, reason: reason.to_owned() }
}

/// Reads a record's variable-length parts in order, never past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    seq: u64,
}

impl<'a> Cursor<'a> {
    fn number(&mut self) -> Result<u32, Error> {
        let (value, next) =
            number(self.bytes, self.pos).map_err(|reason| corrupt_record(self.seq, reason))?;
        self.pos = next;
        Ok(value)
    }

    /// The rest of the record.
    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        self.pos = self.bytes.len();
        rest
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            Error::Corrupt { seq: self.seq, reason: "record shorter than its declared lengths".into() }
        })?;
        let part = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(part)
    }

    /// A blob reference: the hash, and the blob's expected length.
    fn blob(&mut self, len: usize) -> Result<Body<'a>, Error> {
        let seq = self.seq;
        let bad = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        let hash: &[u8; HASH_LEN] = self.take(HASH_LEN)?.try_into().map_err(|_| bad("bad blob hash"))?;
        let len = u32::try_from(len).map_err(|_| bad("sealed body over 4 GiB"))?;
        Ok(Body::Blob { hash, len })
    }
}

/// `bytes` as a `str` if they are all ASCII (most type tags); `None` otherwise, including
/// for valid UTF-8 that is not ASCII.
#[expect(clippy::inline_always, reason = "measured: left to itself, the compiler calls it on every read")]
#[inline(always)]
fn ascii(bytes: &[u8]) -> Option<&str> {
    // The OR of the bytes' top bits, read in words that may overlap (a byte read twice is
    // harmless): two 8-byte words cover up to 16 bytes, two 4-byte up to 8, and so on.
    let n = bytes.len();
    let high = if let Some((first, _)) = bytes.split_first_chunk::<8>() {
        let (words, _) = bytes.as_chunks::<8>();
        let last = bytes.last_chunk::<8>().unwrap_or(first);
        let all = words.iter().fold(u64::from_ne_bytes(*last), |acc, w| acc | u64::from_ne_bytes(*w));
        all & 0x8080_8080_8080_8080
    } else if n >= 4 {
        let (first, last) = (arr::<4>(&bytes[..4]), arr::<4>(&bytes[n - 4..]));
        u64::from((u32::from_ne_bytes(first) | u32::from_ne_bytes(last)) & 0x8080_8080)
    } else if n >= 2 {
        let (first, last) = (arr::<2>(&bytes[..2]), arr::<2>(&bytes[n - 2..]));
        u64::from((u16::from_ne_bytes(first) | u16::from_ne_bytes(last)) & 0x8080)
    } else {
        u64::from(bytes.first().copied().unwrap_or(0) & 0x80)
    };
    if high != 0 {
        return None;
    }
    // SAFETY: every byte is below 0x80 (checked above), and a sequence of ASCII bytes is valid
    // UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
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

    fn head() -> RecordHeader<'static> {
        RecordHeader {
            stream: 0xdead_beef,
            version: 7,
            timestamp_micros: 1_700_000_000_000_000,
            schema_version: 3,
            id: Some(99),
            type_tag: "order.placed",
        }
    }

    fn sample(body: Body<'_>) -> Envelope<'_> {
        Envelope { head: head(), content: Content::Plain { metadata: b"meta", body } }
    }

    #[test]
    fn round_trips_inline_and_blob() {
        let hash = [7u8; HASH_LEN];
        for env in [sample(Body::Inline(b"payload")), sample(Body::Blob { hash: &hash, len: 5000 })] {
            let mut buf = Vec::new();
            env.encode_into(42, &mut buf);
            assert_eq!(Envelope::decode(42, &buf).unwrap(), env);
        }
        let no_id = Envelope { head: RecordHeader { id: None, ..head() }, ..sample(Body::Inline(b"")) };
        let mut buf = Vec::new();
        no_id.encode_into(1, &mut buf);
        assert_eq!(Envelope::decode(1, &buf).unwrap(), no_id);
        // Numbers of every length, up to the largest.
        for n in [0, 127, 128, 16_383, 16_384, 1 << 21, 1 << 28, u32::MAX] {
            let head = RecordHeader { version: n, schema_version: n, ..head() };
            let env = Envelope { head, content: Content::Plain { metadata: b"m", body: Body::Inline(b"p") } };
            let mut buf = Vec::new();
            env.encode_into(5, &mut buf);
            assert_eq!(Envelope::decode(5, &buf).unwrap(), env, "{n}");
        }
        // The common event: a short tag, a small version, no metadata, no id.
        let env = Envelope {
            head: RecordHeader { id: None, version: 1000, schema_version: 1, type_tag: "Payment", ..head() },
            content: Content::Plain { metadata: b"", body: Body::Inline(&[0; 52]) },
        };
        let mut buf = Vec::new();
        env.encode_into(5, &mut buf);
        assert_eq!(buf.len(), FIXED_LEN + 2 + 1 + 7 + 52);
    }

    /// Opens a decoded sealed record the way a reader does; `None` if authentication fails.
    fn open(seq: u64, env: &Envelope<'_>, key: &aes_gcm::Aes256Gcm, blob: &[u8]) -> Option<Vec<u8>> {
        let Content::Sealed { metadata_len, payload_len, aad_head, body } = env.content else {
            panic!("not sealed")
        };
        let sealed = match body {
            Body::Inline(s) => s,
            Body::Blob { .. } => blob,
        };
        let mut out = vec![0; (metadata_len + payload_len) as usize];
        crypto::open_into(key, Aad::new(seq, aad_head).as_bytes(), sealed, &mut out).ok()?;
        Some(out)
    }

    #[test]
    fn sealed_records_round_trip_and_bind_every_header_byte() {
        use aes_gcm::KeyInit;
        let key = aes_gcm::Aes256Gcm::new(&[5u8; 32].into());
        let (mut out, mut blob) = (Vec::new(), Vec::new());
        for payload in [&b"short payload"[..], &[7u8; 3000][..]] {
            let hash =
                head().encode_sealed(42, b"meta", payload, &key, &[1; 12], &mut out, &mut blob).unwrap();
            assert_eq!(hash.is_some(), payload.len() > BLOB_THRESHOLD);
            let env = Envelope::decode(42, &out).unwrap();
            assert_eq!(env.head, head());
            let plain = open(42, &env, &key, &blob).expect("opens");
            assert_eq!(plain, [&b"meta"[..], payload].concat());
            if hash.is_none() {
                assert!(!out.windows(payload.len()).any(|w| w == payload), "no plaintext in the record");
            }
            // Any header change, with the checksum fixed as an attacker would, fails to open.
            let head_end = match env.content {
                Content::Sealed { aad_head, .. } => 4 + aad_head.len(),
                Content::Plain { .. } => unreachable!(),
            };
            // Not the flags: a record without the encryption flag is not opened at all.
            for at in 5..head_end {
                let mut bad = out.clone();
                bad[at] ^= 0x10;
                seal_checksum(42, &mut bad);
                if let Ok(env) = Envelope::decode(42, &bad) {
                    assert!(open(42, &env, &key, &blob).is_none(), "header byte {at}");
                }
            }
            // The same record under another seq, checksum fixed: fails to open.
            let mut moved = out.clone();
            seal_checksum(43, &mut moved);
            assert!(open(43, &Envelope::decode(43, &moved).unwrap(), &key, &blob).is_none());
        }
    }

    #[test]
    fn tags_round_trip_whether_ascii_or_not() {
        for tag in ["a", "payment", "order.placed.v2", "commande.passée", "é", "ascii then ünïcode"] {
            for id in [None, Some(5)] {
                let env = Envelope {
                    head: RecordHeader { type_tag: tag, id, ..head() },
                    content: Content::Plain { metadata: b"", body: Body::Inline(b"p") },
                };
                let mut buf = Vec::new();
                env.encode_into(9, &mut buf);
                assert_eq!(Envelope::decode(9, &buf).unwrap(), env, "{tag}");
            }
        }
        let bytes: Vec<u8> = (0..=255u8).collect();
        for start in 0..bytes.len() {
            for len in 0..20.min(bytes.len() - start) {
                let s = &bytes[start..start + len];
                assert_eq!(ascii(s), std::str::from_utf8(s).ok().filter(|t| t.is_ascii()));
            }
        }
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

        // Headers with any flags and tag length, over bodies of any bytes (the numbers among
        // them, one-byte ones likely): whatever the fast path accepts, the general decoder
        // reads the same; what it declines, the general decoder reads only with a non-ASCII
        // tag or other flags.
        #[test]
        fn the_fast_path_agrees_with_the_general_decoder(
            seq: u64,
            flags in proptest::prop_oneof![proptest::strategy::Just(0u8), proptest::strategy::Just(flag::HAS_ID), proptest::strategy::Just(flag::PLAIN_INLINE), proptest::arbitrary::any::<u8>()],
            tag_len: u8,
            numbers in proptest::collection::vec(proptest::prop_oneof![0u8..0x80, proptest::arbitrary::any::<u8>()], 3..8),
            body in proptest::collection::vec(proptest::prop_oneof![0u8..0x7f, proptest::arbitrary::any::<u8>()], 0..400),
        ) {
            let mut buf = vec![0u8; FIXED_LEN];
            buf[4] = flags;
            buf[5] = tag_len;
            buf.extend_from_slice(&numbers);
            buf.extend_from_slice(&body);
            seal_checksum(seq, &mut buf);
            let checked = verify(seq, &buf).expect("the checksum was just sealed");
            let general = Envelope::decode_checked(checked);
            match plain_inline(checked) {
                Some((head, metadata, payload)) => {
                    let fast = Envelope { head, content: Content::Plain { metadata, body: Body::Inline(payload) } };
                    proptest::prop_assert_eq!(general.as_ref().ok(), Some(&fast));
                    proptest::prop_assert_eq!(Envelope::decode(seq, &buf).ok(), Some(fast));
                }
                None => {
                    if let Ok(env) = &general {
                        proptest::prop_assert!(!env.head.type_tag.is_ascii() || flags & !flag::PLAIN_INLINE != 0);
                    }
                    proptest::prop_assert_eq!(Envelope::decode(seq, &buf).is_ok(), general.is_ok());
                }
            }
        }
    }

    #[test]
    fn lying_lengths_with_valid_checksum_are_errors() {
        // A record whose checksum is right but whose lengths overrun (a bug or a forged
        // record) must still be an error, not a panic.
        let mut buf = Vec::new();
        sample(Body::Inline(b"payload")).encode_into(42, &mut buf);
        // The tag length; the metadata length (after the one-byte version); and the payload
        // length of a blob record, whose number follows the schema version.
        let hash = [7u8; HASH_LEN];
        let mut blob = Vec::new();
        sample(Body::Blob { hash: &hash, len: 5000 }).encode_into(42, &mut blob);
        for (record, field) in [(&buf, 5usize), (&buf, FIXED_LEN + 1), (&blob, FIXED_LEN + 3)] {
            let mut bad = record.clone();
            bad[field] = 0x7f;
            let crc = checksum(42, &bad[4..]);
            bad[..4].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(Envelope::decode(42, &bad), Err(Error::Corrupt { .. })), "field {field}");
        }
    }
}
