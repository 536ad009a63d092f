//! Encryption at rest: the master key, per-stream data keys, and sealing of event bodies.
//!
//! Key hierarchy (see `docs/encryption.md`):
//! - the **master key** (32 bytes, supplied by the user, never stored) wraps
//! - one random **data key** per stream (32 bytes from the OS RNG), stored wrapped in the
//!   `keys` table, which seals
//! - every event's metadata and payload with AES-256-GCM under a fresh random 96-bit nonce,
//!   with the event's position and header as associated data.
//!
//! `keys` table values (`stream u128 BE` → value):
//! ```text
//! wrapped:  1 u8 ‖ master epoch u32 LE ‖ nonce 12 ‖ AES-256-GCM(data key) 32 ‖ tag 16   (65 bytes)
//! shredded: 2 u8 ‖ master epoch u32 LE ‖ last version u32 LE ‖ nonce 12 ‖ tag 16      (37 bytes)
//! ```
//! Both are authenticated with the stream id and epoch (and a marker with the stream's last
//! version when it was shredded) as associated data, so neither can be forged without the
//! master key or moved to another stream: a forged shredded marker must not be able to hide
//! a stream's events, and no event past the last version can pass for a shredded one.
//! `meta` key `encryption`: `1 u8 ‖ master epoch u32 LE ‖ nonce 12 ‖ AES-256-GCM(32 zero bytes) 16 + 32`,
//! a check value that tells a wrong master key from a damaged record.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::id::StreamId;

/// Length of a master or data key in bytes.
pub const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext: nonce in front, tag behind.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

const WRAPPED: u8 = 1;
const SHREDDED: u8 = 2;
pub(crate) const WRAPPED_LEN: usize = 1 + 4 + NONCE_LEN + KEY_LEN + TAG_LEN;
pub(crate) const CHECK_LEN: usize = 1 + 4 + NONCE_LEN + KEY_LEN + TAG_LEN;
pub(crate) const SHREDDED_LEN: usize = 1 + 4 + 4 + NONCE_LEN + TAG_LEN;

/// Domain separation: a wrapped key can never be taken for a check value or an event.
const WRAP_DOMAIN: &[u8] = b"varvedb/data-key/v1";
const CHECK_DOMAIN: &[u8] = b"varvedb/master-check/v1";
const SHRED_DOMAIN: &[u8] = b"varvedb/shredded/v1";

/// A 32-byte master key. Its bytes are zeroed when it is dropped and never printed.
///
/// The store never writes the master key anywhere; keep it in a secret manager. Losing it
/// loses every encrypted event.
///
/// ```
/// use varvedb::{MasterKey, Options};
/// # let dir = tempfile::tempdir()?;
/// let key = MasterKey::generate()?;
/// let db = Options::new().encryption_key(key.clone()).open(dir.path())?;
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// A key from 32 bytes. The caller's copy is not zeroed; prefer
    /// [`from_slice`](Self::from_slice) on a buffer you zero yourself.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A key copied from `bytes`, which must be exactly 32 bytes long.
    ///
    /// # Errors
    /// [`Error::InvalidKeyLength`] for any other length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(Error::InvalidKeyLength { len: bytes.len() });
        }
        key.copy_from_slice(bytes);
        Ok(MasterKey(key))
    }

    /// A new random key from the operating system's generator.
    ///
    /// # Errors
    /// [`Error::Random`] if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        Ok(MasterKey(key))
    }

    /// The key's bytes, to hand to a secret manager.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

pub(crate) fn fill_random(out: &mut [u8]) -> Result<(), Error> {
    getrandom::fill(out).map_err(|e| Error::Random(e.to_string()))
}

/// The master key in use, as an expanded cipher, with its epoch (1 at creation, +1 on each
/// rotation). The epoch is bound into every wrapped key, so a key wrapped under another
/// master is reported as such instead of as damage.
pub(crate) struct Master {
    pub(crate) epoch: u32,
    cipher: Aes256Gcm,
    /// The check value stored in `meta` for this master. The writer compares the stored bytes
    /// with it in every transaction: another process that rotated the key (or a build that
    /// lost it) cannot go unnoticed.
    check: Vec<u8>,
}

/// The encryption state of an open store: the master key in use. Swapped only by a key
/// rotation, which holds the write lock of this `RwLock` across its commit, so a reader that
/// takes the read lock around starting its transaction always gets the master its snapshot's
/// wrapped keys were made with.
pub(crate) struct Encryption {
    master: std::sync::RwLock<std::sync::Arc<Master>>,
}

impl Encryption {
    pub(crate) fn new(master: Master) -> Self {
        Encryption { master: std::sync::RwLock::new(std::sync::Arc::new(master)) }
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, std::sync::Arc<Master>> {
        // The lock guards a plain `Arc` swap; a panic elsewhere cannot leave it half-written.
        self.master.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, std::sync::Arc<Master>> {
        self.master.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A stream's unwrapped data key, or the marker that it was shredded.
pub(crate) enum StreamKey {
    Key(Box<Aes256Gcm>),
    /// Shredded when its newest event had version `last_version` (0: it had none): only
    /// events up to it can be the stream's.
    Shredded {
        last_version: u32,
    },
}

impl Master {
    /// A master for `key` at `epoch`, with a fresh check value to store in `meta`.
    pub(crate) fn create(key: &MasterKey, epoch: u32) -> Result<Self, Error> {
        let mut master = Master { epoch, cipher: Aes256Gcm::new(key.as_bytes().into()), check: Vec::new() };
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut body = [0u8; KEY_LEN];
        let tag = master.seal_raw(&nonce, &check_aad(epoch), &mut body)?;
        let mut check = Vec::with_capacity(CHECK_LEN);
        check.push(WRAPPED);
        check.extend_from_slice(&epoch.to_le_bytes());
        check.extend_from_slice(&nonce);
        check.extend_from_slice(&body);
        check.extend_from_slice(&tag);
        master.check = check;
        Ok(master)
    }

    /// The check value to store in `meta` for this master key.
    pub(crate) fn check_value(&self) -> &[u8] {
        &self.check
    }

    /// Whether `value` is this master's stored check value. A rotation (by this process or
    /// another) replaces it, so a master that no longer matches must not write.
    pub(crate) fn is_current(&self, value: &[u8]) -> bool {
        value == self.check.as_slice()
    }

    /// Reads the epoch from a stored check value and verifies `key` against it.
    pub(crate) fn open_check(key: &MasterKey, value: &[u8]) -> Result<Master, Error> {
        if value.len() != CHECK_LEN || value[0] != WRAPPED {
            return Err(Error::CorruptMeta { reason: "the encryption check value cannot be decoded" });
        }
        let epoch = u32::from_le_bytes(value[1..5].try_into().unwrap_or_default());
        let master = Master { epoch, cipher: Aes256Gcm::new(key.as_bytes().into()), check: value.to_vec() };
        let nonce = &value[5..5 + NONCE_LEN];
        let mut body = [0u8; KEY_LEN];
        body.copy_from_slice(&value[5 + NONCE_LEN..5 + NONCE_LEN + KEY_LEN]);
        let tag = &value[5 + NONCE_LEN + KEY_LEN..];
        master
            .cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &check_aad(epoch),
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| Error::WrongKey)?;
        Ok(master)
    }

    /// The `keys` table value that marks `stream`, whose newest event has `last_version`,
    /// as shredded; authenticated under this master so that nobody without the key can
    /// write one.
    pub(crate) fn shredded_marker(
        &self,
        stream: u128,
        last_version: u32,
    ) -> Result<[u8; SHREDDED_LEN], Error> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let tag = self.seal_raw(&nonce, &shred_aad(stream, self.epoch, last_version), &mut [])?;
        let mut out = [0u8; SHREDDED_LEN];
        out[0] = SHREDDED;
        out[1..5].copy_from_slice(&self.epoch.to_le_bytes());
        out[5..9].copy_from_slice(&last_version.to_le_bytes());
        out[9..9 + NONCE_LEN].copy_from_slice(&nonce);
        out[9 + NONCE_LEN..].copy_from_slice(&tag);
        Ok(out)
    }

    /// A new random data key for `stream`: the cipher, and its wrapped form for the `keys` table.
    pub(crate) fn new_data_key(&self, stream: u128) -> Result<(Box<Aes256Gcm>, [u8; WRAPPED_LEN]), Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        let cipher = Box::new(Aes256Gcm::new(key.as_slice().into()));
        Ok((cipher, self.wrap(stream, &key)?))
    }

    /// The `keys` table value of `stream`'s data key `key`, wrapped under this master with a
    /// fresh nonce: `WRAPPED ‖ epoch ‖ nonce ‖ sealed key ‖ tag`.
    fn wrap(&self, stream: u128, key: &[u8; KEY_LEN]) -> Result<[u8; WRAPPED_LEN], Error> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut out = [0u8; WRAPPED_LEN];
        out[0] = WRAPPED;
        out[1..5].copy_from_slice(&self.epoch.to_le_bytes());
        out[5..5 + NONCE_LEN].copy_from_slice(&nonce);
        let body = &mut out[5 + NONCE_LEN..5 + NONCE_LEN + KEY_LEN];
        body.copy_from_slice(key);
        let tag = self.seal_raw(&nonce, &wrap_aad(stream, self.epoch), body)?;
        out[5 + NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens a `keys` table value for `stream`. A value for another stream, another master
    /// epoch, or with any byte changed fails authentication.
    pub(crate) fn unwrap(&self, stream: u128, value: &[u8]) -> Result<StreamKey, Error> {
        let bad = |reason: &'static str| Error::CorruptKey { stream: StreamId::from(stream), reason };
        let shredded = match value.first() {
            Some(&SHREDDED) if value.len() == SHREDDED_LEN => true,
            Some(&WRAPPED) if value.len() == WRAPPED_LEN => false,
            _ => return Err(bad("the stored key cannot be decoded")),
        };
        let epoch = u32::from_le_bytes(value[1..5].try_into().unwrap_or_default());
        if epoch != self.epoch {
            return Err(bad("the key is wrapped under another master key epoch"));
        }
        if shredded {
            let last_version = u32::from_le_bytes(value[5..9].try_into().unwrap_or_default());
            let mut empty = [0u8; 0];
            self.cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&value[9..9 + NONCE_LEN]),
                    &shred_aad(stream, epoch, last_version),
                    &mut empty,
                    Tag::from_slice(&value[9 + NONCE_LEN..]),
                )
                .map_err(|_| bad("the shredded marker fails authentication (forged, or another stream's)"))?;
            return Ok(StreamKey::Shredded { last_version });
        }
        let key = self
            .unwrap_bytes(stream, value)
            .map_err(|()| bad("the wrapped key fails authentication (altered, or another stream's key)"))?;
        Ok(StreamKey::Key(Box::new(Aes256Gcm::new(key.as_slice().into()))))
    }

    /// Re-wraps a data key (or re-seals a shredded marker) under `new`: the rotation step.
    pub(crate) fn rewrap(&self, new: &Master, stream: u128, value: &[u8]) -> Result<Vec<u8>, Error> {
        match self.unwrap(stream, value)? {
            StreamKey::Shredded { last_version } => Ok(new.shredded_marker(stream, last_version)?.to_vec()),
            StreamKey::Key(_) => {
                let key = self.unwrap_bytes(stream, value).map_err(|()| Error::CorruptKey {
                    stream: StreamId::from(stream),
                    reason: "the wrapped key fails authentication",
                })?;
                Ok(new.wrap(stream, &key)?.to_vec())
            }
        }
    }

    fn unwrap_bytes(&self, stream: u128, value: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, ()> {
        let epoch = u32::from_le_bytes(value[1..5].try_into().map_err(|_| ())?);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&value[5 + NONCE_LEN..5 + NONCE_LEN + KEY_LEN]);
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&value[5..5 + NONCE_LEN]),
                &wrap_aad(stream, epoch),
                key.as_mut_slice(),
                Tag::from_slice(&value[5 + NONCE_LEN + KEY_LEN..]),
            )
            .map_err(|_| ())?;
        Ok(key)
    }

    fn seal_raw(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, body)
            .map_err(|_| Error::Internal("AES-GCM refused to seal a key"))?;
        Ok(tag.into())
    }
}

fn wrap_aad(stream: u128, epoch: u32) -> [u8; WRAP_DOMAIN.len() + 20] {
    let mut aad = [0u8; WRAP_DOMAIN.len() + 20];
    aad[..WRAP_DOMAIN.len()].copy_from_slice(WRAP_DOMAIN);
    aad[WRAP_DOMAIN.len()..WRAP_DOMAIN.len() + 16].copy_from_slice(&stream.to_le_bytes());
    aad[WRAP_DOMAIN.len() + 16..].copy_from_slice(&epoch.to_le_bytes());
    aad
}

fn shred_aad(stream: u128, epoch: u32, last_version: u32) -> [u8; SHRED_DOMAIN.len() + 24] {
    let d = SHRED_DOMAIN.len();
    let mut aad = [0u8; SHRED_DOMAIN.len() + 24];
    aad[..d].copy_from_slice(SHRED_DOMAIN);
    aad[d..d + 16].copy_from_slice(&stream.to_le_bytes());
    aad[d + 16..d + 20].copy_from_slice(&epoch.to_le_bytes());
    aad[d + 20..].copy_from_slice(&last_version.to_le_bytes());
    aad
}

fn check_aad(epoch: u32) -> [u8; CHECK_DOMAIN.len() + 4] {
    let mut aad = [0u8; CHECK_DOMAIN.len() + 4];
    aad[..CHECK_DOMAIN.len()].copy_from_slice(CHECK_DOMAIN);
    aad[CHECK_DOMAIN.len()..].copy_from_slice(&epoch.to_le_bytes());
    aad
}

/// Seals `buf` in place under `key`; returns the tag.
pub(crate) fn seal(
    key: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN], Error> {
    let tag = key
        .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf)
        .map_err(|_| Error::Internal("AES-GCM refused to seal an event (over 64 GiB?)"))?;
    Ok(tag.into())
}

/// Opens a sealed message `nonce ‖ ciphertext ‖ tag` into `out` (which must be exactly the
/// ciphertext's length). `Err(())` if it fails authentication; `out` is then zeroed, so no
/// unauthenticated plaintext is ever visible.
pub(crate) fn open_into(key: &Aes256Gcm, aad: &[u8], sealed: &[u8], out: &mut [u8]) -> Result<(), ()> {
    if sealed.len() != out.len() + SEAL_OVERHEAD {
        return Err(());
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    out.copy_from_slice(ciphertext);
    key.decrypt_in_place_detached(Nonce::from_slice(nonce), aad, out, Tag::from_slice(tag)).map_err(|_| {
        out.fill(0);
    })
}

/// Nonces for the writer: fresh OS randomness, fetched many at a time so a batch of 10,000
/// events costs one system call rather than 10,000.
pub(crate) struct NoncePool {
    bytes: Vec<u8>,
    used: usize,
}

const POOL_NONCES: usize = 1024;

impl NoncePool {
    pub(crate) fn new() -> Self {
        NoncePool { bytes: vec![0; POOL_NONCES * NONCE_LEN], used: POOL_NONCES * NONCE_LEN }
    }

    /// A nonce no other call returns (random: the pool is refilled, never reused).
    pub(crate) fn take(&mut self) -> Result<[u8; NONCE_LEN], Error> {
        if self.used == self.bytes.len() {
            fill_random(&mut self.bytes)?;
            self.used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&self.bytes[self.used..self.used + NONCE_LEN]);
        // Zero what was handed out, so the same bytes cannot be handed out twice by a bug.
        self.bytes[self.used..self.used + NONCE_LEN].fill(0);
        self.used += NONCE_LEN;
        Ok(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8, epoch: u32) -> Master {
        Master::create(&MasterKey::from_bytes([byte; KEY_LEN]), epoch).unwrap()
    }

    #[test]
    fn check_value_tells_the_right_key_from_a_wrong_one() {
        let m = master(1, 3);
        let check = m.check_value().to_vec();
        assert_eq!(check.len(), CHECK_LEN);
        assert!(m.is_current(&check));
        assert!(!master(1, 3).is_current(&check), "a fresh check value for the same key differs");
        assert_eq!(Master::open_check(&MasterKey::from_bytes([1; KEY_LEN]), &check).unwrap().epoch, 3);
        assert!(matches!(
            Master::open_check(&MasterKey::from_bytes([2; KEY_LEN]), &check),
            Err(Error::WrongKey)
        ));
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_stream_and_epoch() {
        let m = master(7, 1);
        let (_, wrapped) = m.new_data_key(10).unwrap();
        assert!(matches!(m.unwrap(10, &wrapped), Ok(StreamKey::Key(_))));
        assert!(matches!(m.unwrap(11, &wrapped), Err(Error::CorruptKey { .. })), "another stream");
        assert!(matches!(master(8, 1).unwrap(10, &wrapped), Err(Error::CorruptKey { .. })), "another key");
        assert!(matches!(master(7, 2).unwrap(10, &wrapped), Err(Error::CorruptKey { .. })), "another epoch");
        for i in 0..wrapped.len() {
            let mut bad = wrapped;
            bad[i] ^= 0x20;
            assert!(m.unwrap(10, &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn shredded_markers_cannot_be_forged_or_moved() {
        let m = master(7, 1);
        let marker = m.shredded_marker(10, 4).unwrap();
        assert!(matches!(m.unwrap(10, &marker), Ok(StreamKey::Shredded { last_version: 4 })));
        assert!(matches!(m.unwrap(11, &marker), Err(Error::CorruptKey { .. })), "another stream");
        assert!(matches!(master(8, 1).unwrap(10, &marker), Err(Error::CorruptKey { .. })), "another key");
        assert!(matches!(m.unwrap(10, &[SHREDDED]), Err(Error::CorruptKey { .. })), "the bare tag byte");
        for i in 0..marker.len() {
            let mut bad = marker;
            bad[i] ^= 0x01;
            assert!(m.unwrap(10, &bad).is_err(), "byte {i}");
        }
        // A wrapped key cut to a marker's length cannot pass for one: the domains differ.
        let (_, wrapped) = m.new_data_key(10).unwrap();
        let mut relabelled = wrapped[..SHREDDED_LEN].to_vec();
        relabelled[0] = SHREDDED;
        assert!(m.unwrap(10, &relabelled).is_err());
    }

    #[test]
    fn rewrapping_keeps_the_data_key_and_moves_it_to_the_new_epoch() {
        let (old, new) = (master(1, 1), master(2, 2));
        let (cipher, wrapped) = old.new_data_key(5).unwrap();
        let rewrapped = old.rewrap(&new, 5, &wrapped).unwrap();
        assert!(old.unwrap(5, &rewrapped).is_err());
        let StreamKey::Key(again) = new.unwrap(5, &rewrapped).unwrap() else { panic!("shredded") };
        let nonce = [9u8; NONCE_LEN];
        let mut a = *b"same plaintext";
        let mut b = a;
        let tag_a = seal(&cipher, &nonce, b"aad", &mut a).unwrap();
        let tag_b = seal(&again, &nonce, b"aad", &mut b).unwrap();
        assert_eq!((a, tag_a), (b, tag_b));
        let marker = old.shredded_marker(5, 9).unwrap();
        let resealed = old.rewrap(&new, 5, &marker).unwrap();
        assert!(matches!(new.unwrap(5, &resealed), Ok(StreamKey::Shredded { last_version: 9 })));
        assert!(old.unwrap(5, &resealed).is_err(), "the old master can no longer open it");
    }

    #[test]
    fn open_rejects_any_change_and_leaves_no_plaintext_behind() {
        let key = Aes256Gcm::new(&[3u8; KEY_LEN].into());
        let nonce = [1u8; NONCE_LEN];
        let mut body = *b"secret payload";
        let tag = seal(&key, &nonce, b"aad", &mut body).unwrap();
        let sealed: Vec<u8> = nonce.iter().chain(&body).chain(&tag).copied().collect();
        let mut out = [0u8; 14];
        open_into(&key, b"aad", &sealed, &mut out).unwrap();
        assert_eq!(&out, b"secret payload");
        assert!(open_into(&key, b"aaD", &sealed, &mut out).is_err());
        assert_eq!(out, [0; 14]);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open_into(&key, b"aad", &bad, &mut out).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_million_pooled_nonces_are_all_distinct() {
        let mut pool = NoncePool::new();
        let mut seen = std::collections::HashSet::with_capacity(1_000_000);
        for _ in 0..1_000_000 {
            assert!(seen.insert(pool.take().unwrap()));
        }
    }

    #[test]
    fn master_keys_check_their_length_and_never_print() {
        assert!(matches!(MasterKey::from_slice(&[0; 31]), Err(Error::InvalidKeyLength { len: 31 })));
        let key = MasterKey::from_slice(&[0xab; 32]).unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
        assert_ne!(MasterKey::generate().unwrap().as_bytes(), MasterKey::generate().unwrap().as_bytes());
    }
}
