//! The store's record of its encryption: the format version, the store's identity, the
//! master key's check value and the `keys` table's authenticator in `meta`, checked against
//! the key a process opens the store with, and again inside every write transaction. The
//! cryptography itself is in `crypto`.

use std::ops::Bound::Unbounded;
use std::path::Path;

use crate::crypto::{Encryption, KeysAuth, MAC_LEN, Master, MasterKey, StoreId, xor_into};
use crate::error::Error;
use crate::record::{Content, Envelope};
use crate::storage::{ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION, Storage, Txn, WriteTxn, key, meta_key};

/// What opening found: the store's identity, and its encryption if it has any.
pub(crate) struct Opened {
    pub(crate) store_id: Option<StoreId>,
    pub(crate) encryption: Option<Encryption>,
}

/// Checks `key` against the store's record of its encryption, enabling encryption on a
/// store that has no events yet, and the store's identity against `expected`. Reads no event.
pub(crate) fn open(
    storage: &Storage,
    path: &Path,
    key: Option<&MasterKey>,
    expected: Option<StoreId>,
) -> Result<Opened, Error> {
    let tables = storage.tables;
    // A write transaction, so that enabling cannot race another process's first append. A
    // read-only store checks in a read transaction, and cannot enable.
    let read;
    let mut write = None;
    let txn: &Txn<'_> = if storage.is_read_only() {
        read = storage.read_txn()?;
        &read
    } else {
        write.insert(storage.write_txn()?)
    };
    let store_id = stored_id(storage, txn)?;
    if let Some(expected) = expected
        && store_id != Some(expected)
    {
        return Err(Error::StoreMismatch { path: path.to_path_buf(), expected, found: store_id });
    }
    let format = storage
        .get(txn, tables.meta, meta_key::FORMAT_VERSION)?
        .and_then(|b| b.try_into().ok().map(u32::from_le_bytes));
    let stored = storage.get(txn, tables.meta, meta_key::ENCRYPTION)?;
    // The format version and the check value must agree: either one alone means the record
    // of the store's encryption was damaged or stripped, and guessing could write plaintext.
    match (stored.is_some(), format) {
        (true, Some(ENCRYPTED_FORMAT_VERSION)) | (false, Some(FORMAT_VERSION)) => {}
        (true, _) => {
            return Err(Error::CorruptMeta { reason: "an encryption record in a store of the plain format" });
        }
        (false, _) => {
            return Err(Error::CorruptMeta {
                reason: "a store of the encrypted format lost its encryption record",
            });
        }
    }
    let encryption = match (stored, key) {
        (None, None) => {
            // Stripping both records would otherwise let a keyless process append plaintext
            // beside sealed events: data keys or a sealed newest event give the store away.
            let has_keys = storage.entries(txn, tables.keys, (Unbounded, Unbounded), false)?.next().is_some();
            let last = storage.last_seq(txn)?;
            let newest_sealed = match storage.get(txn, tables.events, &key::seq(last))? {
                Some(raw) => matches!(
                    Envelope::decode(last, raw),
                    Ok(Envelope { content: Content::Sealed { .. }, .. })
                ),
                None => false,
            };
            if has_keys || newest_sealed {
                return Err(Error::CorruptMeta {
                    reason: "the store holds encrypted data but lost the record that it is encrypted",
                });
            }
            None
        }
        (Some(_), None) => return Err(Error::KeyRequired { path: path.to_path_buf() }),
        (Some(check), Some(key)) => {
            let store =
                store_id.ok_or(Error::CorruptMeta { reason: "an encrypted store lost its identity" })?;
            let master = Master::open_check(key, store, check)?;
            verify_keys(storage, txn, &master, true)?;
            Some(Encryption::new(master))
        }
        (None, Some(key)) => {
            let Some(mut txn) = write else {
                return Err(Error::NeedsWriteOpen {
                    path: path.to_path_buf(),
                    reason: "a key was given for a store that is not encrypted yet, and only an open for writing enables encryption",
                });
            };
            if storage.last_seq(&txn)? != 0 {
                return Err(Error::NotEncrypted {
                    reason: "it already holds unencrypted events, which a master key cannot protect",
                });
            }
            // A store created by a build without identities gets one now.
            let store = match store_id {
                Some(id) => id,
                None => {
                    let id = StoreId::generate()?;
                    storage.put(&mut txn, tables.meta, meta_key::STORE_ID, id.as_bytes())?;
                    id
                }
            };
            let master = Master::create(key, store, 1);
            storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, master.check_value())?;
            storage.put(
                &mut txn,
                tables.meta,
                meta_key::FORMAT_VERSION,
                &ENCRYPTED_FORMAT_VERSION.to_le_bytes(),
            )?;
            // Data keys in a store without the record that it is encrypted: stripped, not ours
            // to vouch for.
            if storage.entries(&txn, tables.keys, (Unbounded, Unbounded), false)?.next().is_some() {
                return Err(Error::CorruptMeta {
                    reason: "the store holds data keys but lost the record that it is encrypted",
                });
            }
            let auth = KeysAuth { generation: 0, sum: [0; MAC_LEN] };
            storage.put(&mut txn, tables.meta, meta_key::KEYS_AUTH, &master.keys_auth_value(auth))?;
            storage.commit(txn)?;
            return Ok(Opened { store_id: Some(store), encryption: Some(Encryption::new(master)) });
        }
    };
    Ok(Opened { store_id, encryption })
}

/// The identity recorded in `meta`: `None` in a store made by a build without identities.
fn stored_id(storage: &Storage, txn: &Txn<'_>) -> Result<Option<StoreId>, Error> {
    match storage.get(txn, storage.tables.meta, meta_key::STORE_ID)? {
        None => Ok(None),
        Some(bytes) => bytes
            .try_into()
            .map(|b| Some(StoreId::from_bytes(b)))
            .map_err(|_| Error::CorruptMeta { reason: "the store identity is not 16 bytes" }),
    }
}

/// Checks, inside a write transaction, that the store's encryption is still what this
/// process opened it with. Another process may have enabled encryption on the (then empty)
/// store after this one opened it without a key, or rotated the master key: writing on
/// regardless would store plaintext in an encrypted store, or data keys wrapped under a
/// retired master. One small `meta` lookup per transaction.
pub(crate) fn ensure_current(storage: &Storage, txn: &Txn<'_>, master: Option<&Master>) -> Result<(), Error> {
    let stored = storage.get(txn, storage.tables.meta, meta_key::ENCRYPTION)?;
    match (stored, master) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(Error::KeyRequired { path: storage.path().to_path_buf() }),
        (Some(check), Some(master)) if master.is_current(check) => Ok(()),
        (Some(_), Some(_)) => Err(Error::WrongKey),
        (None, Some(_)) => {
            Err(Error::CorruptMeta { reason: "an encrypted store lost its encryption record" })
        }
    }
}

/// Verifies the whole `keys` table against its authenticator in `meta`: every entry is one
/// this store's master wrote, none was written back, added or removed behind its back.
/// Notes every shredded stream as seen, so that a key written back over its marker later is
/// refused too. One keyed hash per stream.
/// `newest`: `txn` is a write transaction (see [`Master::open_keys_auth`]).
pub(crate) fn verify_keys(
    storage: &Storage,
    txn: &Txn<'_>,
    master: &Master,
    newest: bool,
) -> Result<KeysAuth, Error> {
    let auth = master.open_keys_auth(storage.get(txn, storage.tables.meta, meta_key::KEYS_AUTH)?, newest)?;
    let mut sum = [0u8; MAC_LEN];
    let mut shredded = Vec::new();
    for entry in storage.entries(txn, storage.tables.keys, (Unbounded, Unbounded), false)? {
        let (k, v) = entry?;
        let stream = stream_of(k)?;
        xor_into(&mut sum, &master.keys_entry(stream, v));
        if Master::is_marker(v) {
            shredded.push(stream);
        }
    }
    if !crate::crypto::constant_time_eq(&sum, &auth.sum) {
        return Err(Error::CorruptIndex {
            table: "keys",
            reason:
                "the keys table does not match its authenticator: an entry was written back, added or removed"
                    .to_owned(),
        });
    }
    master.saw_shredded(shredded);
    Ok(auth)
}

/// Records in `meta` that the `keys` entries whose keyed hashes XOR to `delta` changed.
/// Returns the new generation, for the caller to note once the transaction commits.
pub(crate) fn update_keys_auth(
    storage: &Storage,
    txn: &mut WriteTxn<'_>,
    master: &Master,
    delta: &[u8; MAC_LEN],
) -> Result<u64, Error> {
    let mut auth =
        master.open_keys_auth(storage.get(txn, storage.tables.meta, meta_key::KEYS_AUTH)?, true)?;
    xor_into(&mut auth.sum, delta);
    auth.generation =
        auth.generation.checked_add(1).ok_or(Error::Internal("the keys table generation is exhausted"))?;
    storage.put(txn, storage.tables.meta, meta_key::KEYS_AUTH, &master.keys_auth_value(auth))?;
    Ok(auth.generation)
}

/// The stream a `keys` table key names.
pub(crate) fn stream_of(k: &[u8]) -> Result<u128, Error> {
    k.try_into()
        .map(u128::from_be_bytes)
        .map_err(|_| Error::CorruptIndex { table: "keys", reason: "a key is not a 16-byte stream id".into() })
}
