//! Encryption at rest: the master key, per-stream data keys, and sealing of event bodies.
//!
//! Key hierarchy (see `docs/encryption.md`):
//! - the **master key** (32 bytes, supplied by the user, never stored), from which, together
//!   with the store's random **identity** (16 bytes in `meta`), BLAKE3's key derivation gives
//!   four store-level keys: the key-wrapping key, the check-value key, the `keys` table's MAC
//!   key and the MAC key of shredded events' headers. Another store under the same master
//!   key derives other keys: nothing sealed or authenticated in one store opens in another.
//! - The wrapping key wraps one random **data key** per stream (32 bytes from the OS RNG),
//!   stored in the `keys` table, which seals
//! - every event's metadata and payload with AES-256-GCM under a fresh random 96-bit nonce,
//!   with the event's position and header as associated data.
//!
//! `keys` table values (`stream u128 BE` → value):
//! ```text
//! wrapped:  1 u8 ‖ master epoch u32 LE ‖ nonce 12 ‖ AES-256-GCM(data key) 32 ‖ tag 16   (65 bytes)
//! shredded: 2 u8 ‖ master epoch u32 LE ‖ last version u32 LE ‖ nonce 12 ‖ tag 16      (37 bytes)
//! ```
//! Both are authenticated with the store id, stream id and epoch (and a marker with the
//! stream's last version when it was shredded) as associated data, so neither can be forged
//! without the master key or moved to another stream or store: a forged shredded marker must
//! not be able to hide a stream's events, and no event past the last version can pass for a
//! shredded one.
//!
//! `meta` key `encryption`: `3 u8 ‖ master epoch u32 LE ‖ BLAKE3-keyed(check key, domain ‖
//! store id ‖ epoch) 32`, a key-committing check value that tells a wrong master key from a
//! damaged record. `meta` key `keys_auth`: `generation u64 LE ‖ Σ 32 ‖ tag 32`, where Σ is the
//! XOR of a keyed hash of every `keys` entry and the tag a keyed hash of generation and Σ: an
//! entry written back, added or removed behind the store's back no longer matches.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;
use crate::id::StreamId;

/// Length of a master or data key in bytes.
pub const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext: nonce in front, tag behind.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of a BLAKE3 MAC.
pub(crate) const MAC_LEN: usize = 32;

const WRAPPED: u8 = 1;
const SHREDDED: u8 = 2;
const CHECK: u8 = 3;
pub(crate) const WRAPPED_LEN: usize = 1 + 4 + NONCE_LEN + KEY_LEN + TAG_LEN;
pub(crate) const CHECK_LEN: usize = 1 + 4 + MAC_LEN;
pub(crate) const SHREDDED_LEN: usize = 1 + 4 + 4 + NONCE_LEN + TAG_LEN;
pub(crate) const KEYS_AUTH_LEN: usize = 8 + MAC_LEN + MAC_LEN;

/// Domain separation: a wrapped key can never be taken for a check value or an event.
const WRAP_DOMAIN: &[u8] = b"varvedb/data-key/v2";
const CHECK_DOMAIN: &[u8] = b"varvedb/master-check/v2";
const SHRED_DOMAIN: &[u8] = b"varvedb/shredded/v2";
const KEYS_ENTRY_DOMAIN: &[u8] = b"varvedb/keys-entry/v1";
const KEYS_TABLE_DOMAIN: &[u8] = b"varvedb/keys-table/v1";
const HEADER_DOMAIN: &[u8] = b"varvedb/shredded-header/v1";

/// BLAKE3 key-derivation contexts of the store-level keys (unique, hard-coded, as BLAKE3
/// asks of its contexts).
const WRAP_CONTEXT: &str = "varvedb 2026-12-06 data key wrapping";
const CHECK_CONTEXT: &str = "varvedb 2026-12-06 master key check value";
const KEYS_CONTEXT: &str = "varvedb 2026-12-06 keys table MAC";
const HEADER_CONTEXT: &str = "varvedb 2026-12-06 shredded header MAC";

/// A store's identity: 16 random bytes chosen when the store is created (or when encryption
/// is turned on in a store made by an older build), kept in its `meta` table.
///
/// In an encrypted store every key is derived from the master key *and* the identity, so
/// nothing one store holds (a wrapped key, a shredded marker, a check value) opens in another
/// store under the same master key. Pin the identity you expect with
/// [`Options::expect_store_id`](crate::Options::expect_store_id): a `data.mdb` of another
/// store put in its place then fails to open with [`Error::StoreMismatch`].
///
/// ```
/// use varvedb::{Options, StoreId};
/// # let dir = tempfile::tempdir()?;
/// let id = Options::new().open(dir.path())?.store_id().expect("a new store has one");
/// let text = id.to_string(); // 32 hex digits, to keep with the application's configuration
/// let pinned: StoreId = text.parse()?;
/// Options::new().expect_store_id(pinned).open(dir.path())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreId([u8; 16]);

impl StoreId {
    /// The identity with these bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        StoreId(bytes)
    }

    /// The identity's bytes, as stored.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn generate() -> Result<Self, Error> {
        let mut id = [0u8; 16];
        fill_random(&mut id)?;
        Ok(StoreId(id))
    }
}

impl std::fmt::Display for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for StoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreId({self})")
    }
}

impl std::str::FromStr for StoreId {
    type Err = Error;

    /// Parses the 32 hex digits [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidStoreId { text: s.chars().take(64).collect() };
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(StoreId(id))
    }
}

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

/// An AES-256-GCM cipher for `key`, expanded on the heap. Expanding a key on the stack and
/// moving it leaves copies of the round keys that no destructor zeroes: the expansion runs in
/// a frame of its own, which [`scrub_stack`] then overwrites.
#[inline(never)]
fn expand(key: &[u8; KEY_LEN]) -> Box<Aes256Gcm> {
    Box::new(Aes256Gcm::new(key.into()))
}

/// Overwrites the stack below the caller's frame, where a just-returned [`expand`] (or key
/// derivation) left key material. Best effort: the compiler decides frame sizes, so 16 KiB
/// covers them with a wide margin.
#[inline(never)]
fn scrub_stack() {
    // Written whole (a `memset`): `black_box` makes the compiler treat every byte as read.
    let area = [0u8; 16 * 1024];
    std::hint::black_box(&area);
}

/// `expand` and the scrub of the stack it used.
pub(crate) fn cipher(key: &[u8; KEY_LEN]) -> Box<Aes256Gcm> {
    let cipher = expand(key);
    scrub_stack();
    cipher
}

/// The master key in use, as the store-level keys derived from it and the store's identity,
/// with its epoch (1 at creation, +1 on each rotation). The epoch is bound into every
/// wrapped key, so a key wrapped under another master is reported as such instead of as
/// damage.
pub(crate) struct Master {
    pub(crate) epoch: u32,
    pub(crate) store: StoreId,
    /// Wraps the data keys and seals the shredded markers.
    wrap: Box<Aes256Gcm>,
    /// MACs the `keys` table's entries and its authenticator in `meta`.
    keys_mac: Zeroizing<[u8; KEY_LEN]>,
    /// MACs the clear headers of shredded events.
    header_mac: Zeroizing<[u8; KEY_LEN]>,
    /// Makes the check value; kept so that an empty replica can move to its leader's epoch
    /// ([`Master::at_epoch`]) without the master key itself.
    check_key: Zeroizing<[u8; KEY_LEN]>,
    /// The check value stored in `meta` for this master. The writer compares the stored bytes
    /// with it in every transaction: another process that rotated the key (or a build that
    /// lost it) cannot go unnoticed.
    check: [u8; CHECK_LEN],
    /// What this process knows for certain and the file cannot take back: the streams it has
    /// seen shredded, and the newest generation of the `keys` table's authenticator it has
    /// seen. A key written back over a marker, or an older authenticator written back, is
    /// refused for as long as the store stays open.
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default, Clone)]
pub(crate) struct Seen {
    shredded: std::collections::HashSet<u128>,
    keys_generation: u64,
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

/// The `keys` table's authenticator as stored in `meta`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct KeysAuth {
    pub(crate) generation: u64,
    pub(crate) sum: [u8; MAC_LEN],
}

impl Master {
    /// A master for `key` in the store `store` at `epoch`, with its check value to store in
    /// `meta`.
    pub(crate) fn create(key: &MasterKey, store: StoreId, epoch: u32) -> Master {
        let derive = |context: &str| {
            let mut material = Zeroizing::new([0u8; KEY_LEN + 16]);
            material[..KEY_LEN].copy_from_slice(key.as_bytes());
            material[KEY_LEN..].copy_from_slice(store.as_bytes());
            Zeroizing::new(blake3::derive_key(context, material.as_slice()))
        };
        let wrap_key = derive(WRAP_CONTEXT);
        let check_key = derive(CHECK_CONTEXT);
        let master = Master {
            epoch,
            store,
            check: check_value(&check_key, store, epoch),
            wrap: expand(&wrap_key),
            keys_mac: derive(KEYS_CONTEXT),
            header_mac: derive(HEADER_CONTEXT),
            check_key,
            seen: std::sync::Mutex::new(Seen::default()),
        };
        scrub_stack();
        master
    }

    /// This master at another epoch of the same key: for a replica that holds no key yet and
    /// meets its leader's keys, wrapped at the epoch the leader has reached by rotations.
    pub(crate) fn at_epoch(&self, epoch: u32) -> Master {
        let master = Master {
            epoch,
            store: self.store,
            check: check_value(&self.check_key, self.store, epoch),
            wrap: self.wrap.clone(),
            keys_mac: self.keys_mac.clone(),
            header_mac: self.header_mac.clone(),
            check_key: self.check_key.clone(),
            seen: std::sync::Mutex::new(self.seen().clone()),
        };
        scrub_stack();
        master
    }

    /// The check value to store in `meta` for this master key.
    pub(crate) fn check_value(&self) -> &[u8] {
        &self.check
    }

    /// Whether `value` is this master's stored check value. A rotation (by this process or
    /// another) replaces it, so a master that no longer matches must not write.
    pub(crate) fn is_current(&self, value: &[u8]) -> bool {
        constant_time_eq(value, &self.check)
    }

    /// Whether `other` was made from the same master key (in the same store).
    pub(crate) fn same_key(&self, other: &Master) -> bool {
        constant_time_eq(self.keys_mac.as_slice(), other.keys_mac.as_slice())
    }

    /// Reads the epoch from a stored check value and verifies `key` against it, in the store
    /// `store`.
    pub(crate) fn open_check(key: &MasterKey, store: StoreId, value: &[u8]) -> Result<Master, Error> {
        if value.len() != CHECK_LEN || value[0] != CHECK {
            return Err(Error::CorruptMeta { reason: "the encryption check value cannot be decoded" });
        }
        let epoch = u32::from_le_bytes(value[1..5].try_into().unwrap_or_default());
        let master = Master::create(key, store, epoch);
        if !master.is_current(value) {
            return Err(Error::WrongKey);
        }
        Ok(master)
    }

    /// This master for the next epoch under `key`, carrying over what this process has seen.
    pub(crate) fn successor(&self, key: &MasterKey) -> Result<Master, Error> {
        let epoch = self.epoch.checked_add(1).ok_or(Error::Internal("the master key epoch is exhausted"))?;
        let next = Master::create(key, self.store, epoch);
        *next.seen() = self.seen().clone();
        Ok(next)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A plain set and counter: a panic elsewhere cannot leave them half-written.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let tag = self.seal_raw(&nonce, &shred_aad(self.store, stream, self.epoch, last_version), &mut [])?;
        let mut out = [0u8; SHREDDED_LEN];
        out[0] = SHREDDED;
        out[1..5].copy_from_slice(&self.epoch.to_le_bytes());
        out[5..9].copy_from_slice(&last_version.to_le_bytes());
        out[9..9 + NONCE_LEN].copy_from_slice(&nonce);
        out[9 + NONCE_LEN..].copy_from_slice(&tag);
        self.seen().shredded.insert(stream);
        Ok(out)
    }

    /// A new random data key for `stream`: the cipher, and its wrapped form for the `keys` table.
    pub(crate) fn new_data_key(&self, stream: u128) -> Result<(Box<Aes256Gcm>, [u8; WRAPPED_LEN]), Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        Ok((cipher(&key), self.wrap(stream, &key)?))
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
        let tag = self.seal_raw(&nonce, &wrap_aad(self.store, stream, self.epoch), body)?;
        out[5 + NONCE_LEN + KEY_LEN..].copy_from_slice(&tag);
        Ok(out)
    }

    /// Opens a `keys` table value for `stream`. A value for another stream, another store,
    /// another master epoch, or with any byte changed fails authentication; so does a data
    /// key of a stream this process has seen shredded (written back over its marker).
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
            self.wrap
                .decrypt_in_place_detached(
                    Nonce::from_slice(&value[9..9 + NONCE_LEN]),
                    &shred_aad(self.store, stream, epoch, last_version),
                    &mut empty,
                    Tag::from_slice(&value[9 + NONCE_LEN..]),
                )
                .map_err(|_| {
                    bad("the shredded marker fails authentication (forged, or another stream's or store's)")
                })?;
            self.seen().shredded.insert(stream);
            return Ok(StreamKey::Shredded { last_version });
        }
        if self.seen().shredded.contains(&stream) {
            return Err(bad("a data key was written back over the stream's shredded marker"));
        }
        let key = self.unwrap_bytes(stream, value).map_err(|()| {
            bad("the wrapped key fails authentication (altered, or another stream's or store's key)")
        })?;
        Ok(StreamKey::Key(cipher(&key)))
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
        self.wrap
            .decrypt_in_place_detached(
                Nonce::from_slice(&value[5..5 + NONCE_LEN]),
                &wrap_aad(self.store, stream, epoch),
                key.as_mut_slice(),
                Tag::from_slice(&value[5 + NONCE_LEN + KEY_LEN..]),
            )
            .map_err(|_| ())?;
        Ok(key)
    }

    fn seal_raw(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], body: &mut [u8]) -> Result<[u8; TAG_LEN], Error> {
        let tag = self
            .wrap
            .encrypt_in_place_detached(Nonce::from_slice(nonce), aad, body)
            .map_err(|_| Error::Internal("AES-GCM refused to seal a key"))?;
        Ok(tag.into())
    }

    /// The keyed hash of one `keys` entry; the table's Σ is the XOR of those of its entries.
    pub(crate) fn keys_entry(&self, stream: u128, value: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.keys_mac);
        h.update(KEYS_ENTRY_DOMAIN);
        h.update(&stream.to_be_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
        finish(h)
    }

    /// The `meta` value of the `keys` table's authenticator `auth`.
    pub(crate) fn keys_auth_value(&self, auth: KeysAuth) -> [u8; KEYS_AUTH_LEN] {
        let mut out = [0u8; KEYS_AUTH_LEN];
        out[..8].copy_from_slice(&auth.generation.to_le_bytes());
        out[8..8 + MAC_LEN].copy_from_slice(&auth.sum);
        out[8 + MAC_LEN..].copy_from_slice(&self.keys_auth_tag(auth));
        out
    }

    fn keys_auth_tag(&self, auth: KeysAuth) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.keys_mac);
        h.update(KEYS_TABLE_DOMAIN);
        h.update(&auth.generation.to_le_bytes());
        h.update(&auth.sum);
        finish(h)
    }

    /// Opens the stored authenticator of the `keys` table: one this master made, and, when
    /// read in a write transaction (`newest`: the store as it is now, not an older snapshot),
    /// not older than the newest this process has seen (an old one written back is refused).
    pub(crate) fn open_keys_auth(&self, value: Option<&[u8]>, newest: bool) -> Result<KeysAuth, Error> {
        let bad = |reason: &str| Error::CorruptIndex { table: "keys", reason: reason.to_owned() };
        let value = value.ok_or_else(|| bad("the authenticator of the keys table is missing from meta"))?;
        if value.len() != KEYS_AUTH_LEN {
            return Err(bad("the authenticator of the keys table cannot be decoded"));
        }
        let mut sum = [0u8; MAC_LEN];
        sum.copy_from_slice(&value[8..8 + MAC_LEN]);
        let auth =
            KeysAuth { generation: u64::from_le_bytes(value[..8].try_into().unwrap_or_default()), sum };
        if !constant_time_eq(&self.keys_auth_tag(auth), &value[8 + MAC_LEN..]) {
            return Err(bad("the authenticator of the keys table fails authentication"));
        }
        if !newest {
            return Ok(auth);
        }
        let mut seen = self.seen();
        if auth.generation < seen.keys_generation {
            return Err(bad(
                "the authenticator of the keys table is older than one already seen (written back)",
            ));
        }
        seen.keys_generation = auth.generation;
        Ok(auth)
    }

    /// Whether a `keys` value is (shaped as) a shredded marker; for values already
    /// authenticated with the table.
    pub(crate) fn is_marker(value: &[u8]) -> bool {
        value.len() == SHREDDED_LEN && value[0] == SHREDDED
    }

    /// Whether this process has seen `stream` shredded.
    pub(crate) fn known_shredded(&self, stream: u128) -> bool {
        self.seen().shredded.contains(&stream)
    }

    /// Notes streams found shredded in an authenticated `keys` table.
    pub(crate) fn saw_shredded(&self, streams: impl IntoIterator<Item = u128>) {
        self.seen().shredded.extend(streams);
    }

    /// Notes that this process wrote the authenticator of `generation`.
    pub(crate) fn saw_keys_generation(&self, generation: u64) {
        let mut seen = self.seen();
        seen.keys_generation = seen.keys_generation.max(generation);
    }

    /// The MAC that keeps a shredded event's clear header authenticated: over its seq and the
    /// same header bytes its sealed body was bound to.
    pub(crate) fn header_mac(&self, seq: u64, aad_head: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.header_mac);
        h.update(HEADER_DOMAIN);
        h.update(self.store.as_bytes());
        h.update(&seq.to_be_bytes());
        h.update(aad_head);
        finish(h)
    }
}

/// The `meta` check value of the master whose check key is `check_key`, in `store` at `epoch`.
fn check_value(check_key: &[u8; KEY_LEN], store: StoreId, epoch: u32) -> [u8; CHECK_LEN] {
    let mut check = [0u8; CHECK_LEN];
    check[0] = CHECK;
    check[1..5].copy_from_slice(&epoch.to_le_bytes());
    let mut input = [0u8; CHECK_DOMAIN.len() + 16 + 4];
    input[..CHECK_DOMAIN.len()].copy_from_slice(CHECK_DOMAIN);
    input[CHECK_DOMAIN.len()..CHECK_DOMAIN.len() + 16].copy_from_slice(store.as_bytes());
    input[CHECK_DOMAIN.len() + 16..].copy_from_slice(&epoch.to_le_bytes());
    let mut h = blake3::Hasher::new_keyed(check_key);
    h.update(&input);
    check[5..].copy_from_slice(&finish(h));
    check
}

/// The master epoch a `keys` value (wrapped key or shredded marker) was made at.
pub(crate) fn key_epoch(value: &[u8]) -> Option<u32> {
    match value.first() {
        Some(&SHREDDED) if value.len() == SHREDDED_LEN => {}
        Some(&WRAPPED) if value.len() == WRAPPED_LEN => {}
        _ => return None,
    }
    Some(u32::from_le_bytes(value[1..5].try_into().ok()?))
}

/// The hash of a keyed hasher, whose state (the key among it) is then zeroed.
fn finish(mut h: blake3::Hasher) -> [u8; MAC_LEN] {
    let out = *h.finalize().as_bytes();
    h.zeroize();
    out
}

/// Compares secrets (or values derived from them) in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// XORs `other` into `sum`.
pub(crate) fn xor_into(sum: &mut [u8; MAC_LEN], other: &[u8; MAC_LEN]) {
    sum.iter_mut().zip(other).for_each(|(s, o)| *s ^= o);
}

fn wrap_aad(store: StoreId, stream: u128, epoch: u32) -> [u8; WRAP_DOMAIN.len() + 36] {
    let d = WRAP_DOMAIN.len();
    let mut aad = [0u8; WRAP_DOMAIN.len() + 36];
    aad[..d].copy_from_slice(WRAP_DOMAIN);
    aad[d..d + 16].copy_from_slice(store.as_bytes());
    aad[d + 16..d + 32].copy_from_slice(&stream.to_le_bytes());
    aad[d + 32..].copy_from_slice(&epoch.to_le_bytes());
    aad
}

fn shred_aad(store: StoreId, stream: u128, epoch: u32, last_version: u32) -> [u8; SHRED_DOMAIN.len() + 40] {
    let d = SHRED_DOMAIN.len();
    let mut aad = [0u8; SHRED_DOMAIN.len() + 40];
    aad[..d].copy_from_slice(SHRED_DOMAIN);
    aad[d..d + 16].copy_from_slice(store.as_bytes());
    aad[d + 16..d + 32].copy_from_slice(&stream.to_le_bytes());
    aad[d + 32..d + 36].copy_from_slice(&epoch.to_le_bytes());
    aad[d + 36..].copy_from_slice(&last_version.to_le_bytes());
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
///
/// A `fork` copies the pool into the child, where the same bytes would be handed out again
/// under the same data keys. The pool remembers the process that filled it, and
/// [`check_process`](Self::check_process), called by the writer at the start of every
/// transaction, discards it in any other. (Within a transaction no fork can interleave: the
/// writer refuses every request in a forked child, and nothing else draws from the pool.)
pub(crate) struct NoncePool {
    bytes: Zeroizing<Vec<u8>>,
    used: usize,
    pid: u32,
}

const POOL_NONCES: usize = 1024;

impl NoncePool {
    pub(crate) fn new() -> Self {
        NoncePool {
            bytes: Zeroizing::new(vec![0; POOL_NONCES * NONCE_LEN]),
            used: POOL_NONCES * NONCE_LEN,
            pid: std::process::id(),
        }
    }

    /// Discards the pool if it was filled by another process (this one's parent, before a
    /// fork).
    pub(crate) fn check_process(&mut self) {
        let pid = std::process::id();
        if pid != self.pid {
            self.bytes.fill(0);
            self.used = self.bytes.len();
            self.pid = pid;
        }
    }

    /// A nonce no other call returns (random: the pool is refilled, never reused).
    pub(crate) fn take(&mut self) -> Result<[u8; NONCE_LEN], Error> {
        if self.used == self.bytes.len() {
            fill_random(&mut self.bytes)?;
            self.used = 0;
            self.pid = std::process::id();
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

    const STORE: StoreId = StoreId([9; 16]);

    fn master(byte: u8, epoch: u32) -> Master {
        Master::create(&MasterKey::from_bytes([byte; KEY_LEN]), STORE, epoch)
    }

    #[test]
    fn check_value_tells_the_right_key_from_a_wrong_one() {
        let m = master(1, 3);
        let check = m.check_value().to_vec();
        assert_eq!(check.len(), CHECK_LEN);
        assert!(m.is_current(&check));
        assert!(!master(1, 4).is_current(&check), "another epoch");
        assert_eq!(Master::open_check(&MasterKey::from_bytes([1; KEY_LEN]), STORE, &check).unwrap().epoch, 3);
        assert!(matches!(
            Master::open_check(&MasterKey::from_bytes([2; KEY_LEN]), STORE, &check),
            Err(Error::WrongKey)
        ));
        let elsewhere = StoreId([8; 16]);
        assert!(matches!(
            Master::open_check(&MasterKey::from_bytes([1; KEY_LEN]), elsewhere, &check),
            Err(Error::WrongKey)
        ));
    }

    #[test]
    fn nothing_of_one_store_opens_in_another_under_the_same_master_key() {
        let (x, y) =
            (master(7, 1), Master::create(&MasterKey::from_bytes([7; KEY_LEN]), StoreId([1; 16]), 1));
        let (_, wrapped) = x.new_data_key(10).unwrap();
        assert!(matches!(y.unwrap(10, &wrapped), Err(Error::CorruptKey { .. })), "a wrapped key");
        let marker = x.shredded_marker(10, 3).unwrap();
        assert!(matches!(y.unwrap(10, &marker), Err(Error::CorruptKey { .. })), "a marker");
        assert_ne!(x.header_mac(1, b"head"), y.header_mac(1, b"head"));
        assert_ne!(x.keys_entry(10, &wrapped), y.keys_entry(10, &wrapped));
        let auth = KeysAuth { generation: 4, sum: [5; MAC_LEN] };
        assert!(y.open_keys_auth(Some(&x.keys_auth_value(auth)), true).is_err(), "a keys authenticator");
        assert_eq!(x.open_keys_auth(Some(&x.keys_auth_value(auth)), true).unwrap(), auth);
    }

    #[test]
    fn a_key_written_back_over_a_marker_or_an_older_authenticator_is_refused() {
        let m = master(7, 1);
        let (_, wrapped) = m.new_data_key(10).unwrap();
        let _ = m.shredded_marker(10, 3).unwrap();
        assert!(matches!(m.unwrap(10, &wrapped), Err(Error::CorruptKey { .. })));
        let old = m.keys_auth_value(KeysAuth { generation: 1, sum: [0; MAC_LEN] });
        let new = m.keys_auth_value(KeysAuth { generation: 2, sum: [1; MAC_LEN] });
        m.open_keys_auth(Some(&new), true).unwrap();
        assert!(m.open_keys_auth(Some(&old), true).is_err());
        assert!(m.open_keys_auth(Some(&old), false).is_ok(), "an older snapshot may hold it");
        let mut forged = new;
        forged[0] = 9;
        assert!(m.open_keys_auth(Some(&forged), true).is_err());
    }

    #[test]
    fn a_pool_filled_by_another_process_is_discarded() {
        let mut pool = NoncePool::new();
        let first = pool.take().unwrap();
        let next_in_pool: [u8; NONCE_LEN] = pool.bytes[NONCE_LEN..2 * NONCE_LEN].try_into().unwrap();
        pool.pid = pool.pid.wrapping_add(1); // as a forked child sees it
        pool.check_process();
        let after = pool.take().unwrap();
        assert_ne!(after, next_in_pool, "the parent's remaining nonces are not handed out");
        assert_ne!(after, first);
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
        let old = master(1, 1);
        let new = old.successor(&MasterKey::from_bytes([2; KEY_LEN])).unwrap();
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
        let key = cipher(&[3u8; KEY_LEN]);
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
