//! Crypto-shredding and master-key rotation: the key operations of an open encrypted store.

use std::ops::Bound::Unbounded;
use std::sync::Arc;

use crate::crypto::{KeysAuth, MAC_LEN, MasterKey, constant_time_eq, xor_into};
use crate::error::Error;
use crate::id::StreamId;
use crate::key_record::{count_key_change, ensure_current, shred_in, stream_of, verify_keys};
use crate::record::{Content, Envelope};
use crate::storage::{key, meta_key};
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
    /// The events' clear headers stay authenticated: each gets a MAC under a key derived from
    /// the master key, which reads and [`ReadView::check_integrity`](crate::ReadView::check_integrity)
    /// verify.
    ///
    /// The old wrapped key stays in pages LMDB has freed but not yet reused, and in earlier
    /// backups, until a [`rotate_master_key`](Self::rotate_master_key) (old backups then need
    /// the old master key, which you destroy) and [`compact_in_place`](crate::compact_in_place).
    /// Written back into the file, it is refused (the `keys` table is authenticated), except
    /// together with the whole table's old authenticator before a rotation. See
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
        let mut txn = storage.write_txn()?;
        let master = Arc::clone(&encryption.read());
        ensure_current(storage, &txn, Some(&master))?;
        let Some(generation) = shred_in(storage, &mut txn, &master, stream, None)? else {
            return Ok(false);
        };
        // The stream's wrapped key may be in a commit record, if one of the writer's last
        // two commits was its first append.
        storage.clear_records(&txn)?;
        storage.commit(txn)?;
        master.saw_keys_generation(generation);
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
    /// The retired key is not kept: reopening a copy made before the rotation needs it from
    /// wherever you keep it.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`]; [`Error::SameMasterKey`] if `new_key` is the key in use;
    /// [`Error::WrongKey`] if another process rotated the key since this one opened the
    /// store; [`Error::CorruptIndex`] if the `keys` table does not match its authenticator;
    /// [`Error::CorruptKey`] for a stored key the current master cannot open;
    /// [`Error::Corrupt`] for a shredded event whose header MAC does not verify; storage
    /// errors. Nothing changes on error.
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
        let new = current.successor(new_key)?;
        if new.same_key(&current) {
            return Err(Error::SameMasterKey);
        }
        // Nothing written back into the table is re-wrapped (and so blessed) under the new key.
        let auth = verify_keys(storage, &txn, &current, true)?;
        let wrapped: Vec<(Vec<u8>, Vec<u8>)> = storage
            .entries(&txn, tables.keys, (Unbounded, Unbounded), false)?
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        let mut sum = [0u8; MAC_LEN];
        for (k, v) in &wrapped {
            let stream = stream_of(k)?;
            let rewrapped = current.rewrap(&new, stream, v)?;
            xor_into(&mut sum, &new.keys_entry(stream, &rewrapped));
            storage.put(&mut txn, tables.keys, k, &rewrapped)?;
        }
        let generation = auth
            .generation
            .checked_add(1)
            .ok_or(Error::Internal("the keys table generation is exhausted"))?;
        let auth = KeysAuth { generation, sum };
        storage.put(&mut txn, tables.meta, meta_key::KEYS_AUTH, &new.keys_auth_value(auth))?;
        // The MACs of shredded events' headers move to the new key too; one that does not
        // verify under the old key is not re-made.
        let macs: Vec<(Vec<u8>, Vec<u8>)> = storage
            .entries(&txn, tables.shredded_headers, (Unbounded, Unbounded), false)?
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()?;
        for (k, mac) in &macs {
            let seq = key::decode_seq(k).ok_or_else(|| Error::CorruptIndex {
                table: "shredded_headers",
                reason: "a key is not an 8-byte seq".into(),
            })?;
            let corrupt = || Error::Corrupt {
                seq,
                reason: "the clear header of a shredded event fails authentication".into(),
            };
            let raw = storage.get(&txn, tables.events, k)?.ok_or_else(corrupt)?;
            let Content::Sealed { aad_head, .. } = Envelope::decode(seq, raw)?.content else {
                return Err(corrupt());
            };
            if !constant_time_eq(&current.header_mac(seq, aad_head), mac) {
                return Err(corrupt());
            }
            let remade = new.header_mac(seq, aad_head);
            storage.put(&mut txn, tables.shredded_headers, k, &remade)?;
        }
        storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, new.check_value())?;
        count_key_change(storage, &mut txn)?;
        // Keys wrapped under the retired master may be in commit records.
        storage.clear_records(&txn)?;
        // Readers take the read lock around starting their transaction: holding the write lock
        // across commit and swap (only, not the re-wrapping above) means none of them pairs
        // the new keys with the old master or the reverse.
        let mut slot = encryption.write();
        storage.commit(txn)?;
        new.saw_keys_generation(generation);
        *slot = Arc::new(new);
        Ok(wrapped.len() as u64)
    }
}
