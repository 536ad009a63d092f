//! Crypto-shredding and master-key rotation: the key operations of an open encrypted store.

use std::ops::Bound::{Included, Unbounded};
use std::sync::Arc;

use crate::crypto::{Master, MasterKey, StreamKey};
use crate::error::Error;
use crate::id::StreamId;
use crate::key_record::ensure_current;
use crate::record::{Body, Content, Envelope, HASH_LEN};
use crate::storage::{key, meta_key, value};
use crate::store::Varve;

impl Varve {
    /// Whether the store is encrypted (opened with [`Options::encryption_key`](crate::Options::encryption_key)).
    #[must_use]
    pub fn is_encrypted(&self) -> bool {
        self.encryption().is_some()
    }

    /// Crypto-shreds `stream`: deletes its data key, so its events can never be decrypted
    /// again, and deletes its payload blobs. Returns `false` if it was shredded already.
    /// A stream with no events yet is shredded too: its id is retired, so no event can
    /// ever be appended to it.
    ///
    /// Afterwards the stream's events still occupy their positions (seq, version, type tag,
    /// timestamp stay readable) but read as shredded ([`RecordedEvent::is_shredded`](crate::RecordedEvent::is_shredded));
    /// typed access to them is [`Error::Shredded`], and so is any new append to the stream.
    /// Other streams are unaffected.
    ///
    /// The old wrapped key stays in pages LMDB has freed but not yet reused, and in earlier
    /// backups, until a [`rotate_master_key`](Self::rotate_master_key) (old backups then need
    /// the old master key, which you destroy) and a compacting [`backup`](Self::backup). See
    /// `docs/encryption.md`.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`] on a store without encryption; [`Error::WouldDeadlock`] inside
    /// a projection handler; storage errors (nothing is changed then).
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().encryption_key(MasterKey::generate()?).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("email-set", b"ana@example.com".to_vec())])?;
    /// db.append(2u128, ExpectedVersion::Auto, [NewEvent::new("email-set", b"bo@example.com".to_vec())])?;
    /// assert!(db.shred(1u128)?);
    /// let view = db.begin_read()?;
    /// assert!(view.event(1)?.unwrap().is_shredded());
    /// assert_eq!(view.event(2)?.unwrap().payload(), b"bo@example.com");
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn shred(&self, stream: impl Into<StreamId>) -> Result<bool, Error> {
        let encryption = self
            .encryption()
            .ok_or(Error::NotEncrypted { reason: "only an encrypted store can shred a stream" })?;
        let stream = stream.into().as_u128();
        let storage = self.storage();
        let tables = storage.tables;
        let mut txn = storage.write_txn()?;
        let master = Arc::clone(&encryption.read());
        ensure_current(storage, &txn, Some(&master))?;
        let k = key::stream(stream);
        // A value that is not a valid marker (damaged, forged) is overwritten by a real one.
        if let Some(stored) = storage.get(&txn, tables.keys, &k)?
            && matches!(master.unwrap(stream, stored), Ok(StreamKey::Shredded { .. }))
        {
            return Ok(false);
        }
        let mut blobs: Vec<[u8; HASH_LEN]> = Vec::new();
        let mut last_version = 0u32;
        let from = key::stream_version(stream, 0);
        let to = key::stream_version(stream, u32::MAX);
        for entry in storage.entries(&txn, tables.streams, (Included(&from[..]), Included(&to[..])), false)? {
            let (k, v) = entry?;
            if let Some(version) = k.get(16..20).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes) {
                last_version = last_version.max(version);
            }
            let Some(seq) = value::decode_seq(v) else { continue };
            let Some(raw) = storage.get(&txn, tables.events, &key::seq(seq))? else { continue };
            // A damaged record cannot name a blob, and one that is not this stream's (a
            // tampered index) must not lose its blob; shredding the key goes ahead regardless.
            if let Ok(Envelope { head, content: Content::Sealed { body: Body::Blob { hash, .. }, .. } }) =
                Envelope::decode(seq, raw)
                && head.stream == stream
            {
                blobs.push(*hash);
            }
        }
        for hash in &blobs {
            storage.delete(&mut txn, tables.blobs, hash)?;
        }
        storage.put(&mut txn, tables.keys, &k, &master.shredded_marker(stream, last_version)?)?;
        storage.commit(txn)?;
        Ok(true)
    }

    /// Replaces the master key: re-wraps every stream's data key under `new_key`, in one
    /// transaction. Events are not re-encrypted (their data keys do not change). Returns how
    /// many keys were re-wrapped (shredded markers included).
    ///
    /// Store `new_key` durably before calling this: once it commits, only `new_key` opens
    /// the store. Run it while this process is the only one with the store open: another
    /// process keeps the old key, and its reads then fail with [`Error::CorruptKey`] and its
    /// writes with [`Error::WrongKey`]. After it, destroy the old key: backups made before
    /// the rotation then cannot be decrypted.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`]; [`Error::WrongKey`] if another process rotated the key since
    /// this one opened the store; [`Error::CorruptKey`] for a stored key the current master
    /// cannot open; storage errors. Nothing changes on error.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().encryption_key(MasterKey::from_bytes([1; 32])).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// assert_eq!(db.rotate_master_key(&MasterKey::from_bytes([2; 32]))?, 1);
    /// drop(db);
    /// let db = Options::new().encryption_key(MasterKey::from_bytes([2; 32])).open(dir.path())?;
    /// assert_eq!(db.begin_read()?.event(1)?.unwrap().payload(), b"x");
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn rotate_master_key(&self, new_key: &MasterKey) -> Result<u64, Error> {
        let encryption = self
            .encryption()
            .ok_or(Error::NotEncrypted { reason: "only an encrypted store has a master key to rotate" })?;
        let storage = self.storage();
        let tables = storage.tables;
        // LMDB's writer lock keeps every other writer of this process and of others out until
        // the commit, so the master cannot change under the re-wrapping.
        let mut txn = storage.write_txn()?;
        let current = Arc::clone(&encryption.read());
        ensure_current(storage, &txn, Some(&current))?;
        let epoch =
            current.epoch.checked_add(1).ok_or(Error::Internal("the master key epoch is exhausted"))?;
        let new = Master::create(new_key, epoch)?;
        let wrapped: Vec<(Vec<u8>, Vec<u8>)> = storage
            .entries(&txn, tables.keys, (Unbounded, Unbounded), false)?
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        for (k, v) in &wrapped {
            let stream = k.as_slice().try_into().map(u128::from_be_bytes).map_err(|_| {
                Error::CorruptIndex { table: "keys", reason: "a key is not a 16-byte stream id".into() }
            })?;
            let rewrapped = current.rewrap(&new, stream, v)?;
            storage.put(&mut txn, tables.keys, k, &rewrapped)?;
        }
        storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, new.check_value())?;
        // Readers take the read lock around starting their transaction: holding the write lock
        // across commit and swap (only, not the re-wrapping above) means none of them pairs
        // the new keys with the old master or the reverse.
        let mut slot = encryption.write();
        storage.commit(txn)?;
        *slot = Arc::new(new);
        Ok(wrapped.len() as u64)
    }
}
