//! A store's log as bytes, for read replicas: export on the leader, import on the replica.

use std::ops::Bound::{Included, Unbounded};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Varve;
use crate::crypto::Master;
use crate::error::Error;
use crate::event::ReplicatedEvent;
use crate::event::ReplicatedShred;
use crate::id::StreamId;
use crate::key_record::{ensure_current, key_changes, shred_in};
use crate::record::{Body, Content, Envelope};
use crate::storage::key;

impl Varve {
    /// Up to `max` events of the log after seq `after`, as the store keeps them, for a
    /// replica to [`import`](Self::import_replicated). Empty when the log ends at `after`.
    ///
    /// An encrypted store's events stay sealed; each carries what a replica opened with the
    /// same master key needs to read it ([`ReplicatedEvent::stream_key`],
    /// [`ReplicatedEvent::header_mac`]), and no key leaves the store unwrapped.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a damaged record or blob (a replica must not copy damage);
    /// storage errors.
    pub fn export_replicated(&self, after: u64, max: usize) -> Result<Vec<ReplicatedEvent>, Error> {
        let storage = self.storage();
        let txn = storage.read_txn()?;
        let mut out = Vec::new();
        // Kinds looked up once per stream; a stream's kind never changes once set.
        let mut kinds: std::collections::HashMap<u128, Option<std::sync::Arc<str>>> =
            std::collections::HashMap::new();
        // Registry entries already carried by an event of this export.
        let mut carried: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        // An encrypted store's `keys` entries, looked up once per stream.
        let mut keys: std::collections::HashMap<u128, Option<Bytes>> = std::collections::HashMap::new();
        for entry in storage.log_from(&txn, after.saturating_add(1))? {
            if out.len() >= max {
                break;
            }
            let (k, raw) = entry?;
            let seq = key::decode_seq(k).ok_or_else(|| Error::CorruptIndex {
                table: "events",
                reason: "a key is not a seq".into(),
            })?;
            let env = Envelope::decode(seq, raw)?;
            let mut stream_key = None;
            let mut header_mac = None;
            let blob = match env.content {
                Content::Plain { body: Body::Blob { hash, len }, .. } => {
                    Some(storage.blob(&txn, seq, hash, len)?.to_vec())
                }
                Content::Plain { body: Body::Inline(_), .. } => None,
                Content::Sealed { body, .. } => {
                    let entry = match keys.get(&env.head.stream) {
                        Some(entry) => entry.clone(),
                        None => {
                            let k = key::stream(env.head.stream);
                            let entry =
                                storage.get(&txn, storage.tables.keys, &k)?.map(Bytes::copy_from_slice);
                            keys.insert(env.head.stream, entry.clone());
                            entry
                        }
                    };
                    let sealed = sealed_parts(storage, &txn, seq, env.head.version, entry, body)?;
                    (stream_key, header_mac) = (sealed.0, sealed.1);
                    sealed.2
                }
            };
            let stream_kind = match kinds.get(&env.head.stream) {
                Some(kind) => kind.clone(),
                None => {
                    let head = storage.stream_head(&txn, StreamId::from(env.head.stream))?;
                    let kind = head.and_then(|h| h.kind.map(std::sync::Arc::from));
                    kinds.insert(env.head.stream, kind.clone());
                    kind
                }
            };
            let first = out.is_empty();
            let schema =
                registry_entries(storage, &txn, &env.head, stream_kind.as_deref(), first, &mut carried)?;
            out.push(ReplicatedEvent {
                seq,
                stream: env.head.stream.into(),
                version: env.head.version,
                id: env.head.id,
                record: raw.to_vec().into(),
                blob: blob.map(Into::into),
                stream_kind,
                stream_key,
                header_mac,
                sealed: matches!(env.content, Content::Sealed { .. }),
                schema,
            });
        }
        Ok(out)
    }

    /// Writes events of the leader's log, exactly as the leader keeps them, in one
    /// transaction: the replica's log grows by them or not at all. They must continue the
    /// replica's log: the first is one past its last event, and each follows the one
    /// before. Returns the replica's last seq after the import.
    ///
    /// Subscriptions of this process wake as after an append; projections and processors
    /// see the events as on the leader.
    ///
    /// # Errors
    /// [`Error::NotAReplica`] unless the store was opened with
    /// [`Options::replica`](crate::Options::replica); [`Error::ReplicaGap`] for an event out
    /// of order (one already imported, or one past a gap); [`Error::ReplicaMismatch`] for an
    /// event that does not fit the replica's streams, ids or keys (an encrypted leader's events
    /// in a replica without its key and identity, see
    /// [`Options::replica_of`](crate::Options::replica_of));
    /// [`Error::ReplicaKeyEpoch`] for a key of the leader's newer master key;
    /// [`Error::WouldDeadlock`] from
    /// inside a write transaction of this thread; storage errors. On every error nothing
    /// was written.
    pub fn import_replicated(&self, events: &[ReplicatedEvent]) -> Result<u64, Error> {
        if !self.options().replica {
            return Err(Error::NotAReplica);
        }
        if crate::storage::holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        let last = crate::writer::import(self.storage(), self.encryption(), events)?;
        if !events.is_empty() {
            let counters = &self.inner.counters;
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.events.fetch_add(events.len() as u64, Ordering::Relaxed);
            self.inner.import_watch.send_modify(|seen| *seen = (*seen).max(last));
        }
        Ok(last)
    }

    /// The shredded streams of an encrypted leader, for its replicas, unless nothing changed:
    /// returns the count of key changes (shreds and master key rotations) the store has
    /// seen, and, if it is not `known`, every stream's shredded marker. A publisher keeps the
    /// count it last saw, so it scans the `keys` table only after a shred or a rotation (a
    /// rotation re-seals every marker, under the new epoch).
    ///
    /// Each shred carries the leader's last seq as of this call: the replica applies it
    /// once it holds everything up to there.
    ///
    /// # Errors
    /// [`Error::NotEncrypted`] for a plain store; storage errors.
    pub fn export_shreds(&self, known: u64) -> Result<(u64, Vec<ReplicatedShred>), Error> {
        if self.encryption().is_none() {
            return Err(Error::NotEncrypted { reason: "only an encrypted store has shreds to replicate" });
        }
        let storage = self.storage();
        let txn = storage.read_txn()?;
        let changes = key_changes(storage, &txn)?;
        if changes == known {
            return Ok((changes, Vec::new()));
        }
        let after = storage.last_seq(&txn)?;
        let mut out = Vec::new();
        for entry in storage.entries(&txn, storage.tables.keys, (Unbounded, Unbounded), false)? {
            let (k, v) = entry?;
            if Master::is_marker(v) {
                let stream = crate::key_record::stream_of(k)?;
                out.push(ReplicatedShred { stream: stream.into(), after, marker: Bytes::copy_from_slice(v) });
            }
        }
        Ok((changes, out))
    }

    /// Applies a shred of the leader's to this replica, as [`shred`](Self::shred) does on
    /// the leader but with the leader's marker: the stream's header MACs are made, its blobs
    /// deleted and its data key replaced by the marker, in one transaction. Returns `false`
    /// if the stream is shredded here already, or if the marker is of an older master key
    /// epoch than the replica's (the leader re-sealed its markers when it rotated, and the
    /// re-sealed one follows).
    ///
    /// # Errors
    /// [`Error::NotAReplica`]; [`Error::NotEncrypted`] for a plain replica;
    /// [`Error::ShredAhead`] until the replica's log reaches [`ReplicatedShred::after`];
    /// [`Error::ReplicaKeyEpoch`] for a marker of the leader's newer master key;
    /// [`Error::CorruptKey`] for a marker that fails authentication;
    /// [`Error::WouldDeadlock`]; storage errors. Nothing is changed on error.
    pub fn import_shred(&self, shred: &ReplicatedShred) -> Result<bool, Error> {
        if !self.options().replica {
            return Err(Error::NotAReplica);
        }
        let encryption = self
            .encryption()
            .ok_or(Error::NotEncrypted { reason: "only an encrypted replica takes shreds" })?;
        if crate::storage::holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        let storage = self.storage();
        let mut txn = storage.write_txn()?;
        let master = Arc::clone(&encryption.read());
        ensure_current(storage, &txn, Some(&master))?;
        let last = storage.last_seq(&txn)?;
        if last < shred.after {
            return Err(Error::ShredAhead { after: shred.after, last });
        }
        let epoch = shred.key_epoch();
        if epoch < master.epoch {
            return Ok(false);
        }
        if epoch > master.epoch {
            return Err(Error::ReplicaKeyEpoch { leader: epoch, replica: master.epoch });
        }
        let stream = shred.stream.as_u128();
        let Some(generation) = shred_in(storage, &mut txn, &master, stream, Some(&shred.marker))? else {
            return Ok(false);
        };
        storage.clear_records(&txn)?;
        storage.commit(txn)?;
        master.saw_keys_generation(generation);
        Ok(true)
    }
}

/// What a sealed event carries besides its record: its stream's `keys` entry (`entry`) with
/// the stream's first event, or with every event of a shredded stream, then also its header
/// MAC; and its blob, unless a shred deleted it.
#[allow(clippy::type_complexity, reason = "three parts of one event, named at the one caller")]
fn sealed_parts(
    storage: &crate::storage::Storage,
    txn: &crate::storage::Txn<'_>,
    seq: u64,
    version: u32,
    entry: Option<Bytes>,
    body: Body<'_>,
) -> Result<(Option<Bytes>, Option<[u8; 32]>, Option<Vec<u8>>), Error> {
    let shredded = entry.as_deref().is_some_and(Master::is_marker);
    // A replica needs a stream's key with its first event, and its marker with every event
    // it may not have yet when the leader shredded the stream.
    let stream_key = if version == 1 || shredded { entry } else { None };
    let mut header_mac = None;
    if shredded {
        let mac = storage.get(txn, storage.tables.shredded_headers, &key::seq(seq))?;
        header_mac = mac.and_then(|m| <[u8; 32]>::try_from(m).ok());
    }
    let blob = match body {
        // A shred deletes the stream's blobs.
        Body::Blob { .. } if shredded => None,
        Body::Blob { hash, len } => Some(storage.blob(txn, seq, hash, len)?.to_vec()),
        Body::Inline(_) => None,
    };
    Ok((stream_key, header_mac, blob))
}

/// The registry entries an event needs that no event of this export carried yet: its type's
/// fingerprint and layout and its stream kind's event list; with the export's `first` event,
/// every typed metadata layout too (keyed by fingerprints inside the metadata, which an
/// encrypted store seals).
fn registry_entries(
    storage: &crate::storage::Storage,
    txn: &crate::storage::Txn<'_>,
    head: &crate::record::RecordHeader<'_>,
    stream_kind: Option<&str>,
    first: bool,
    carried: &mut std::collections::HashSet<Vec<u8>>,
) -> Result<Vec<(Bytes, Bytes)>, Error> {
    let table = storage.tables.schema;
    let mut out = Vec::new();
    if first {
        let (from, to) = (key::meta_layout(0), key::meta_layout(u64::MAX));
        for entry in storage.entries(txn, table, (Included(&from[..]), Included(&to[..])), false)? {
            let (k, v) = entry?;
            if key::is_meta_layout(k) {
                out.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
            }
        }
    }
    let needed = [
        key::schema(head.type_tag, head.schema_version).to_vec(),
        key::schema_layout(head.type_tag, head.schema_version),
    ];
    for k in needed.into_iter().chain(stream_kind.map(key::kind_events)) {
        if carried.contains(&k) {
            continue;
        }
        if let Some(v) = storage.get(txn, table, &k)? {
            out.push((Bytes::copy_from_slice(&k), Bytes::copy_from_slice(v)));
        }
        carried.insert(k);
    }
    Ok(out)
}
