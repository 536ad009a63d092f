//! The store's record of its encryption: the format version, the store's identity, the
//! master key's check value and the `keys` table's authenticator in `meta`, checked against
//! the key a process opens the store with, and again inside every write transaction. The
//! cryptography itself is in `crypto`.

use std::ops::Bound::Unbounded;
use std::path::Path;

use crate::crypto::{Encryption, KeysAuth, MAC_LEN, Master, MasterKey, StoreId, StreamKey, xor_into};
use crate::error::Error;
use crate::record::{self, Body, Content, Envelope, HASH_LEN};
use crate::storage::{ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION, Storage, Txn, WriteTxn, key, meta_key};

/// What opening found: the store's identity, and its encryption if it has any.
pub(crate) struct Opened {
    pub(crate) store_id: Option<StoreId>,
    pub(crate) encryption: Option<Encryption>,
}

/// Checks `key` against the store's record of its encryption, enabling encryption on a
/// store that has no events yet, and the store's identity against `expected`. A store that
/// holds nothing yet takes the identity `adopt` (a replica's leader's). Reads no event.
pub(crate) fn open(
    storage: &Storage,
    path: &Path,
    key: Option<&MasterKey>,
    expected: Option<StoreId>,
    adopt: Option<StoreId>,
) -> Result<Opened, Error> {
    let tables = storage.tables;
    // A write transaction, so that enabling or adopting an identity cannot race another
    // process's first append. A read-only store checks in a read transaction, and can do
    // neither.
    let read;
    let mut write = None;
    let mut store_id;
    let mut adopted = false;
    let txn: &Txn<'_> = if storage.is_read_only() {
        read = storage.read_txn()?;
        store_id = stored_id(storage, &read)?;
        if let Some(leader) = adopt
            && store_id != Some(leader)
        {
            return Err(Error::NeedsWriteOpen {
                path: path.to_path_buf(),
                reason: "a replica that holds nothing yet takes its leader's identity only in an open for writing",
            });
        }
        &read
    } else {
        let txn = write.insert(storage.write_txn()?);
        store_id = stored_id(storage, txn)?;
        if let Some(leader) = adopt
            && store_id != Some(leader)
        {
            adopt_identity(storage, txn, path, key, leader, store_id)?;
            store_id = Some(leader);
            adopted = true;
        }
        txn
    };
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
            let Some(txn) = write else {
                return Err(Error::NeedsWriteOpen {
                    path: path.to_path_buf(),
                    reason: "a key was given for a store that is not encrypted yet, and only an open for writing enables encryption",
                });
            };
            return enable(storage, txn, key, store_id);
        }
    };
    if adopted && let Some(txn) = write {
        storage.commit(txn)?;
    }
    Ok(Opened { store_id, encryption })
}

/// Enables encryption on a store that holds no events yet, giving it an identity if a build
/// without identities made it, and commits.
fn enable(
    storage: &Storage,
    mut txn: WriteTxn<'_>,
    key: &MasterKey,
    store_id: Option<StoreId>,
) -> Result<Opened, Error> {
    let tables = storage.tables;
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
    storage.put(&mut txn, tables.meta, meta_key::FORMAT_VERSION, &ENCRYPTED_FORMAT_VERSION.to_le_bytes())?;
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
    Ok(Opened { store_id: Some(store), encryption: Some(Encryption::new(master)) })
}

/// Gives a store that holds nothing yet the identity `leader` (a replica's leader's); a
/// store with events or keys is [`Error::StoreMismatch`].
fn adopt_identity(
    storage: &Storage,
    txn: &mut WriteTxn<'_>,
    path: &Path,
    key: Option<&MasterKey>,
    leader: StoreId,
    found: Option<StoreId>,
) -> Result<(), Error> {
    let tables = storage.tables;
    let empty = storage.last_seq(txn)? == 0
        && storage.entries(txn, tables.keys, (Unbounded, Unbounded), false)?.next().is_none();
    if !empty {
        return Err(Error::StoreMismatch { path: path.to_path_buf(), expected: leader, found });
    }
    storage.put(txn, tables.meta, meta_key::STORE_ID, leader.as_bytes())?;
    // An encrypted store's check value and authenticator are bound to its identity: an
    // empty one gets them anew, under the leader's.
    if storage.get(txn, tables.meta, meta_key::ENCRYPTION)?.is_some() {
        let key = key.ok_or_else(|| Error::KeyRequired { path: path.to_path_buf() })?;
        let master = Master::create(key, leader, 1);
        storage.put(txn, tables.meta, meta_key::ENCRYPTION, master.check_value())?;
        let auth = KeysAuth { generation: 0, sum: [0; MAC_LEN] };
        storage.put(txn, tables.meta, meta_key::KEYS_AUTH, &master.keys_auth_value(auth))?;
    }
    Ok(())
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

/// Shreds `stream` inside `txn`: gives each of its events whose sealed body still opens a
/// MAC of its clear header (one already there is kept), deletes its sealed blobs, puts
/// `marker` (the leader's, on a replica) or a new one in place of its key, counts the key
/// change, and brings the `keys` authenticator up to date. Returns the authenticator's new
/// generation, or `None` if the stream was shredded already.
pub(crate) fn shred_in(
    storage: &Storage,
    txn: &mut WriteTxn<'_>,
    master: &Master,
    stream: u128,
    marker: Option<&[u8]>,
) -> Result<Option<u64>, Error> {
    let tables = storage.tables;
    let k = key::stream(stream);
    let old = storage.get(txn, tables.keys, &k)?.map(<[u8]>::to_vec);
    // A value that is not a valid marker (damaged, forged) is overwritten by a real one.
    let data_key = match old.as_deref().map(|v| master.unwrap(stream, v)) {
        Some(Ok(StreamKey::Shredded { .. })) => return Ok(None),
        Some(Ok(StreamKey::Key(cipher))) => Some(cipher),
        Some(Err(_)) | None => None,
    };
    let mut blobs: Vec<[u8; HASH_LEN]> = Vec::new();
    let mut headers: Vec<(u64, [u8; MAC_LEN])> = Vec::new();
    let mut plain = zeroize::Zeroizing::new(Vec::new());
    let mut last_version = 0u32;
    for entry in storage.stream_index(txn, stream, 1, false)? {
        // A damaged chunk of the index names no event to shred.
        let (version, seq) = match entry {
            Ok(entry) => entry,
            Err(Error::CorruptIndex { .. }) => continue,
            Err(e) => return Err(e),
        };
        last_version = last_version.max(version);
        let Some(raw) = storage.get(txn, tables.events, &key::seq(seq))? else { continue };
        // A damaged record cannot name a blob, and one that is not this stream's (a
        // tampered index) must not lose its blob; shredding the key goes ahead regardless.
        let Ok(Envelope { head, content: Content::Sealed { metadata_len, payload_len, aad_head, body } }) =
            Envelope::decode(seq, raw)
        else {
            continue;
        };
        if head.stream != stream {
            continue;
        }
        // The clear header stays authenticated once the key is gone: under a MAC, given
        // only to a header its sealed body vouches for now. A record that fails to open
        // gets none, and reads as damaged afterwards. (A replica may hold the leader's MAC
        // already, for an event whose blob the leader's shred deleted.)
        let sealed = match body {
            Body::Blob { hash, len } => {
                blobs.push(*hash);
                storage.blob(txn, seq, hash, len).ok()
            }
            Body::Inline(sealed) => Some(sealed),
        };
        if storage.get(txn, tables.shredded_headers, &key::seq(seq))?.is_some() {
            continue;
        }
        if let (Some(cipher), Some(sealed)) = (&data_key, sealed) {
            plain.clear();
            plain.resize(metadata_len as usize + payload_len as usize, 0);
            if record::open_sealed(cipher, seq, aad_head, sealed, &mut plain).is_ok() {
                headers.push((seq, master.header_mac(seq, aad_head)));
            }
        }
    }
    drop(plain);
    // The leader's marker, authenticated only now: a process that has seen a stream's marker
    // refuses its data key, which the loop above needed.
    if let Some(marker) = marker
        && let StreamKey::Key(_) = master.unwrap(stream, marker)?
    {
        return Err(Error::CorruptKey {
            stream: stream.into(),
            reason: "a shred came with a data key, not a marker",
        });
    }
    for hash in &blobs {
        storage.delete(txn, tables.blobs, hash)?;
    }
    for (seq, mac) in &headers {
        storage.put(txn, tables.shredded_headers, &key::seq(*seq), mac)?;
    }
    let marker = match marker {
        Some(marker) => marker.to_vec(),
        None => master.shredded_marker(stream, last_version)?.to_vec(),
    };
    let mut delta = master.keys_entry(stream, &marker);
    if let Some(old) = &old {
        xor_into(&mut delta, &master.keys_entry(stream, old));
    }
    storage.put(txn, tables.keys, &k, &marker)?;
    count_key_change(storage, txn)?;
    update_keys_auth(storage, txn, master, &delta).map(Some)
}

/// Shreds and rotations so far: key changes that no event carries, which a replication
/// publisher looks for when this count moves. Absent (0) in stores older than it.
pub(crate) fn key_changes(storage: &Storage, txn: &Txn<'_>) -> Result<u64, Error> {
    match storage.get(txn, storage.tables.meta, meta_key::KEY_CHANGES)? {
        None => Ok(0),
        Some(bytes) => bytes
            .try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| Error::CorruptMeta { reason: "the count of key changes is not 8 bytes" }),
    }
}

/// Adds one to the count of key changes.
pub(crate) fn count_key_change(storage: &Storage, txn: &mut WriteTxn<'_>) -> Result<(), Error> {
    let next = key_changes(storage, txn)?.wrapping_add(1);
    storage.put(txn, storage.tables.meta, meta_key::KEY_CHANGES, &next.to_le_bytes())
}
