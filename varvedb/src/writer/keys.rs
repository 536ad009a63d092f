//! The writer's encryption state: its cache of unwrapped data keys, nonces and scratch buffers.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;

use crate::crypto::{Encryption, MAC_LEN, Master, NoncePool, StreamKey, xor_into};
use crate::error::Error;
use crate::id::StreamId;
use crate::storage::{Storage, WriteTxn, key};

/// Most unwrapped data keys the writer keeps; past it, the cache starts over.
const KEY_CACHE: usize = 65_536;

/// The writer's encryption state.
pub(super) struct WriterCrypto {
    pub(super) encryption: Arc<Encryption>,
    /// Data keys unwrapped or created so far, with the stored bytes they came from: an entry
    /// is used only while the `keys` table still holds exactly those bytes, so a shred or a
    /// rotation (or a transaction that created a key and then aborted) is never missed.
    pub(super) keys: HashMap<u128, (Vec<u8>, Box<Aes256Gcm>)>,
    pub(super) nonces: NoncePool,
    /// Scratch for a sealed event too long to stay inline in its record: it goes to the
    /// `blobs` table.
    pub(super) sealed_blob: Vec<u8>,
    /// Decrypted stored events (idempotent retries); zeroed when the writer stops.
    pub(super) plain: zeroize::Zeroizing<Vec<u8>>,
    /// The XOR of the keyed hashes of the data keys this transaction stored, for the `keys`
    /// table's authenticator; `None` while it stored none.
    pub(super) keys_delta: Option<[u8; MAC_LEN]>,
}

impl WriterCrypto {
    /// Keeps `stream`'s key with the stored bytes it came from; past [`KEY_CACHE`] keys the
    /// cache starts over, so memory stays bounded however many streams are written.
    fn cache(&mut self, stream: u128, stored: Vec<u8>, cipher: Box<Aes256Gcm>) {
        if self.keys.len() >= KEY_CACHE {
            self.keys.clear();
        }
        self.keys.insert(stream, (stored, cipher));
    }

    /// The state of a writer that has unwrapped no key yet.
    pub(super) fn new(encryption: Arc<Encryption>) -> Self {
        WriterCrypto {
            encryption,
            keys: HashMap::new(),
            nonces: NoncePool::new(),
            sealed_blob: Vec::new(),
            plain: zeroize::Zeroizing::new(Vec::new()),
            keys_delta: None,
        }
    }

    /// Readies the state for a new transaction: no key stored yet, and no nonce drawn by
    /// another process (a fork's parent).
    pub(super) fn begin(&mut self) {
        self.keys_delta = None;
        self.nonces.check_process();
    }

    /// Brings the `keys` table's authenticator up to date with the keys this transaction
    /// stored, if any; returns its new generation.
    pub(super) fn finish(
        &mut self,
        storage: &Storage,
        txn: &mut WriteTxn<'_>,
        master: &Master,
    ) -> Result<Option<u64>, Error> {
        match self.keys_delta.take() {
            Some(delta) => crate::key_record::update_keys_auth(storage, txn, master, &delta).map(Some),
            None => Ok(None),
        }
    }

    /// The data key of `stream` as stored in `txn`; `None` if it has none yet.
    pub(super) fn data_key(
        &mut self,
        storage: &Storage,
        txn: &WriteTxn<'_>,
        master: &Master,
        stream: u128,
    ) -> Result<Option<&Aes256Gcm>, Error> {
        let Some(stored) = storage.get(txn, storage.tables.keys, &key::stream(stream))? else {
            return Ok(None);
        };
        // A key cached before the stream was shredded (by `shred`, which does not go through
        // the writer) must not be revived by its old bytes written back into the table.
        let cached = self.keys.get(&stream).is_some_and(|(bytes, _)| bytes.as_slice() == stored)
            && !master.known_shredded(stream);
        if !cached {
            let cipher = match master.unwrap(stream, stored)? {
                StreamKey::Key(cipher) => cipher,
                StreamKey::Shredded { .. } => {
                    // A shredded stream's key must not outlive the shred in memory either.
                    self.keys.remove(&stream);
                    return Err(Error::Shredded { stream: StreamId::from(stream) });
                }
            };
            self.cache(stream, stored.to_vec(), cipher);
        }
        Ok(self.keys.get(&stream).map(|(_, cipher)| &**cipher))
    }

    /// The data key of `stream`, created (and stored in `txn`) on the stream's first append.
    pub(super) fn data_key_for_append(
        &mut self,
        storage: &Storage,
        txn: &mut WriteTxn<'_>,
        master: &Master,
        stream: u128,
        first_version: u32,
    ) -> Result<&Aes256Gcm, Error> {
        if self.data_key(storage, txn, master, stream)?.is_none() {
            if first_version > 1 {
                return Err(Error::CorruptKey {
                    stream: StreamId::from(stream),
                    reason: "the stream has encrypted events but no stored key",
                });
            }
            let (cipher, wrapped) = master.new_data_key(stream)?;
            storage.put(txn, storage.tables.keys, &key::stream(stream), &wrapped)?;
            let delta = self.keys_delta.get_or_insert([0; MAC_LEN]);
            xor_into(delta, &master.keys_entry(stream, &wrapped));
            self.cache(stream, wrapped.to_vec(), cipher);
        }
        self.keys
            .get(&stream)
            .map(|(_, cipher)| &**cipher)
            .ok_or(Error::Internal("a data key just stored is not cached"))
    }
}
