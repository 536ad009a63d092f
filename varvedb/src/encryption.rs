//! The store-level encryption operations: enabling on open, crypto-shredding, master-key
//! rotation. The cryptography itself is in `crypto`.

use std::ops::Bound::{Included, Unbounded};
use std::path::Path;
use std::sync::Arc;

use crate::crypto::{self, Encryption, Master, MasterKey};
use crate::error::Error;
use crate::record::{Body, Content, Envelope, HASH_LEN};
use crate::storage::{Storage, key, meta_key, value};
use crate::store::Varve;
use crate::types::StreamId;

/// Checks `key` against the store's record of its encryption, enabling encryption on a
/// store that has no events yet. Reads no event.
pub(crate) fn open(
    storage: &Storage,
    path: &Path,
    key: Option<&MasterKey>,
) -> Result<Option<Encryption>, Error> {
    let tables = storage.tables;
    // A write transaction, so that enabling cannot race another process's first append.
    let mut txn = storage.write_txn()?;
    let stored = storage.get(&txn, tables.meta, meta_key::ENCRYPTION)?;
    match (stored, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::KeyRequired { path: path.to_path_buf() }),
        (Some(check), Some(key)) => Ok(Some(Encryption::new(Master::open_check(key, check)?))),
        (None, Some(key)) => {
            if storage.last_seq(&txn)? != 0 {
                return Err(Error::NotEncrypted {
                    reason: "it already holds unencrypted events, which a master key cannot protect",
                });
            }
            let master = Master::new(key, 1);
            storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, &master.check_value()?)?;
            storage.commit(txn)?;
            Ok(Some(Encryption::new(master)))
        }
    }
}

impl Varve {
    /// Whether the store is encrypted (opened with [`Options::encryption_key`](crate::Options::encryption_key)).
    #[must_use]
    pub fn is_encrypted(&self) -> bool {
        self.encryption().is_some()
    }

    /// Crypto-shreds `stream`: deletes its data key, so its events can never be decrypted
    /// again, and deletes its payload blobs. Returns `false` if it was shredded already.
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
        if self.encryption().is_none() {
            return Err(Error::NotEncrypted { reason: "only an encrypted store can shred a stream" });
        }
        let stream = stream.into().as_u128();
        let storage = self.storage();
        let tables = storage.tables;
        let mut txn = storage.write_txn()?;
        let k = key::stream(stream);
        if storage.get(&txn, tables.keys, &k)?.is_some_and(crypto::is_shredded) {
            return Ok(false);
        }
        let mut blobs: Vec<[u8; HASH_LEN]> = Vec::new();
        let from = key::stream_version(stream, 0);
        let to = key::stream_version(stream, u32::MAX);
        for entry in storage.entries(&txn, tables.streams, (Included(&from[..]), Included(&to[..])), false)? {
            let (_, v) = entry?;
            let Some(seq) = value::decode_seq(v) else { continue };
            let Some(raw) = storage.get(&txn, tables.events, &key::seq(seq))? else { continue };
            // A damaged record cannot name a blob; shredding the key goes ahead regardless.
            if let Ok(Envelope { content: Content::Sealed { body: Body::Blob { hash, .. }, .. }, .. }) =
                Envelope::decode(seq, raw)
            {
                blobs.push(*hash);
            }
        }
        for hash in &blobs {
            storage.delete(&mut txn, tables.blobs, hash)?;
        }
        storage.put(&mut txn, tables.keys, &k, crypto::shredded_value())?;
        storage.commit(txn)?;
        Ok(true)
    }

    /// Replaces the master key: re-wraps every stream's data key under `new_key`, in one
    /// transaction. Events are not re-encrypted (their data keys do not change). Returns how
    /// many keys were re-wrapped (shredded markers included).
    ///
    /// Run it while this process is the only one with the store open: another process keeps
    /// the old key and can no longer read or write encrypted streams. After it, destroy the
    /// old key: backups made before the rotation then cannot be decrypted.
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
        // LMDB's writer lock first, then the master's: the writer thread takes them in
        // this order too, and readers never wait for LMDB's writer lock.
        let mut txn = storage.write_txn()?;
        let mut current = encryption.write();
        let check = storage
            .get(&txn, tables.meta, meta_key::ENCRYPTION)?
            .ok_or(Error::CorruptMeta { reason: "an encrypted store lost its encryption record" })?;
        if !current.verifies(check) {
            return Err(Error::WrongKey);
        }
        let epoch =
            current.epoch.checked_add(1).ok_or(Error::Internal("the master key epoch is exhausted"))?;
        let new = Master::new(new_key, epoch);
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
        storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, &new.check_value()?)?;
        storage.commit(txn)?;
        *current = Arc::new(new);
        Ok(wrapped.len() as u64)
    }
}
