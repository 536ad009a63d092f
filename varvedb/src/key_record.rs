//! The store's record of its encryption: the format version and the master key's check value
//! in `meta`, checked against the key a process opens the store with, and again inside every
//! write transaction. The cryptography itself is in `crypto`.

use std::ops::Bound::Unbounded;
use std::path::Path;

use crate::crypto::{Encryption, Master, MasterKey};
use crate::error::Error;
use crate::record::{Content, Envelope};
use crate::storage::{ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION, Storage, Txn, key, meta_key};

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
    let format = storage
        .get(&txn, tables.meta, meta_key::FORMAT_VERSION)?
        .and_then(|b| b.try_into().ok().map(u32::from_le_bytes));
    let stored = storage.get(&txn, tables.meta, meta_key::ENCRYPTION)?;
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
    match (stored, key) {
        (None, None) => {
            // Stripping both records would otherwise let a keyless process append plaintext
            // beside sealed events: data keys or a sealed newest event give the store away.
            let has_keys =
                storage.entries(&txn, tables.keys, (Unbounded, Unbounded), false)?.next().is_some();
            let last = storage.last_seq(&txn)?;
            let newest_sealed = match storage.get(&txn, tables.events, &key::seq(last))? {
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
            Ok(None)
        }
        (Some(_), None) => Err(Error::KeyRequired { path: path.to_path_buf() }),
        (Some(check), Some(key)) => Ok(Some(Encryption::new(Master::open_check(key, check)?))),
        (None, Some(key)) => {
            if storage.last_seq(&txn)? != 0 {
                return Err(Error::NotEncrypted {
                    reason: "it already holds unencrypted events, which a master key cannot protect",
                });
            }
            let master = Master::create(key, 1)?;
            storage.put(&mut txn, tables.meta, meta_key::ENCRYPTION, master.check_value())?;
            storage.put(
                &mut txn,
                tables.meta,
                meta_key::FORMAT_VERSION,
                &ENCRYPTED_FORMAT_VERSION.to_le_bytes(),
            )?;
            storage.commit(txn)?;
            Ok(Some(Encryption::new(master)))
        }
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
