//! The replica's write path: another store's log, written as that store keeps it.
//!
//! Unlike an append, nothing is planned or encoded here: each record is checked (it came
//! over a network) and stored unchanged, with the indexes an append would have written.
//! It runs on the caller's thread in a write transaction of its own, as checkpoints and
//! snapshots do: a replica's writer thread never writes events, so the two do not meet.

use std::collections::HashMap;
use std::ops::Bound::Unbounded;
use std::sync::Arc;

use crate::crypto::{
    Encryption, KeysAuth, MAC_LEN, Master, StreamKey, constant_time_eq, key_epoch, xor_into,
};
use crate::error::Error;
use crate::event::ReplicatedEvent;
use crate::key_record::{ensure_current, shred_in, update_keys_auth};
use crate::record::{Body, Content, Envelope, blob_hash};
use crate::storage::{Storage, WriteTxn, key, meta_key, value};

/// Writes `events`, which must continue the store's log seq by seq, in one transaction.
/// Returns the store's last seq after it.
///
/// In an encrypted replica, the leader's `keys` entries that come with the events are
/// authenticated under the replica's master and stored as they are, a stream's marker
/// coming in for a stream whose key the replica holds shreds it here too, and shredded
/// events' header MACs are checked and stored. A replica that keeps a Merkle tree grows it
/// with the records.
pub(crate) fn import(
    storage: &Storage,
    encryption: Option<&Encryption>,
    events: &[ReplicatedEvent],
) -> Result<u64, Error> {
    let mut txn = storage.write_txn()?;
    let mut master = encryption.map(|e| Arc::clone(&e.read()));
    ensure_current(storage, &txn, master.as_deref())?;
    let tables = storage.tables;
    let last = storage.last_seq(&txn)?;
    // The head each stream reaches, with the kind its stored head has, and its tail of
    // index entries.
    let mut heads: HashMap<u128, ImportHead> = HashMap::new();
    let mut keys = KeyImport::default();
    let mut expected = last + 1;
    for event in events {
        if event.seq != expected {
            return Err(Error::ReplicaGap { expected, found: event.seq });
        }
        let mismatch = |reason: String| Error::ReplicaMismatch { seq: event.seq, reason };
        let stream = event.stream.as_u128();
        advance_head(storage, &txn, &mut heads, event)?;
        match (&mut master, event.sealed) {
            (Some(m), true) => keys.event(storage, &mut txn, m, event)?,
            (None, false) => {}
            (None, true) => {
                return Err(mismatch(
                    "the event is encrypted: open the replica with the leader's master key and \
                     identity (`Options::encryption_key` and `Options::replica_of`)"
                        .into(),
                ));
            }
            (Some(_), false) => return Err(mismatch("the replica is encrypted and the event is not".into())),
        }
        write_registry(storage, &mut txn, event)?;
        if let Some(id) = event.id {
            if storage.get(&txn, tables.event_ids, &key::id(id))?.is_some() {
                return Err(mismatch(format!("event id {id:#034x} is already stored")));
            }
            storage.put(&mut txn, tables.event_ids, &key::id(id), &value::seq(event.seq))?;
        }
        if let Some(blob) = &event.blob {
            // Blobs are shared by content: one already stored is this one.
            let hash = blob_hash(blob);
            if storage.get(&txn, tables.blobs, &hash)?.is_none() {
                storage.put(&mut txn, tables.blobs, &hash, blob)?;
            }
        }
        storage.append(&mut txn, tables.events, &key::seq(event.seq), &event.record)?;
        let tail =
            &mut heads.get_mut(&stream).ok_or(Error::Internal("an imported event's head is not held"))?.tail;
        storage.index_append(&mut txn, stream, event.version, &[event.seq], tail)?;
        expected += 1;
    }
    if events.is_empty() {
        return Ok(last);
    }
    let mut buf = Vec::new();
    for (stream, head) in &heads {
        value::StreamHead { version: head.version, kind: head.kind.as_deref(), tail: &head.tail }
            .encode_into(*stream, &mut buf);
        storage.put(&mut txn, tables.stream_heads, &key::stream(*stream), &buf)?;
    }
    let mut generation = None;
    if let Some(m) = &master {
        if let Some(delta) = keys.delta {
            generation = Some(update_keys_auth(storage, &mut txn, m, &delta)?);
        }
        // Streams the leader shredded after the replica took their events: shredded here
        // as on the leader, with the leader's marker, once their events are all written.
        for (stream, marker) in &keys.shreds {
            generation = shred_in(storage, &mut txn, m, *stream, Some(marker))?.or(generation);
        }
    }
    if crate::tlog::kept(storage, &txn)? {
        // The leaves are the records' and seqs' hashes: the leader's tree, leaf for leaf.
        crate::tlog::TreeWriter::default().load(storage, &mut txn, expected - 1, u64::MAX)?;
    }
    match (encryption, master, keys.adopted) {
        (Some(encryption), Some(m), true) => {
            // As a rotation: readers of this process move to the adopted epoch with the commit.
            let mut slot = encryption.write();
            storage.commit(txn)?;
            *slot = m;
        }
        _ => storage.commit(txn)?,
    }
    if let (Some(generation), Some(encryption)) = (generation, encryption) {
        encryption.read().saw_keys_generation(generation);
    }
    Ok(expected - 1)
}

/// A stream's head as an import moves it.
#[derive(Default)]
struct ImportHead {
    version: u32,
    kind: Option<String>,
    /// The index entries after the stream's last full chunk (see `value::StreamHead`).
    tail: Vec<u8>,
}

/// Moves `event`'s stream head in `heads` (read from the store on first use) to the event:
/// its version must be the next, and its stream's kind, once set, stays the same.
fn advance_head(
    storage: &Storage,
    txn: &WriteTxn<'_>,
    heads: &mut HashMap<u128, ImportHead>,
    event: &ReplicatedEvent,
) -> Result<(), Error> {
    let stream = event.stream.as_u128();
    let mismatch = |reason: String| Error::ReplicaMismatch { seq: event.seq, reason };
    let head = match heads.get_mut(&stream) {
        Some(head) => head,
        None => {
            let stored = match storage.stream_head(txn, event.stream)? {
                None => ImportHead::default(),
                Some(h) => {
                    ImportHead { version: h.version, kind: h.kind.map(str::to_owned), tail: h.tail.to_vec() }
                }
            };
            heads.entry(stream).or_insert(stored)
        }
    };
    // The leader sets a stream's kind with its first append and never changes it.
    match (&head.kind, event.stream_kind()) {
        (None, Some(kind)) => head.kind = Some(kind.to_owned()),
        (Some(stored), Some(kind)) if stored != kind => {
            return Err(mismatch(format!(
                "stream {} has kind {stored:?} on the replica and {kind:?} on the leader",
                event.stream
            )));
        }
        _ => {}
    }
    if Some(event.version) != head.version.checked_add(1) {
        return Err(mismatch(format!(
            "stream {} is at version {}, and the event is version {}",
            event.stream, head.version, event.version
        )));
    }
    head.version = event.version;
    Ok(())
}

/// Writes the registry entries that came with `event`. Fingerprints and layouts are written
/// once on the leader, so one the replica holds must be the same; a kind's event list is the
/// leader's newest.
fn write_registry(storage: &Storage, txn: &mut WriteTxn<'_>, event: &ReplicatedEvent) -> Result<(), Error> {
    let table = storage.tables.schema;
    for (k, v) in &event.schema {
        if !key::is_kind_events(k)
            && let Some(stored) = storage.get(txn, table, k)?
        {
            if stored != &v[..] {
                return Err(Error::ReplicaMismatch {
                    seq: event.seq,
                    reason: "a schema registry entry differs between the leader and the replica".into(),
                });
            }
            continue;
        }
        storage.put(txn, table, k, v)?;
    }
    Ok(())
}

/// The key material an import brings into an encrypted replica.
#[derive(Default)]
struct KeyImport {
    /// The XOR of the keyed hashes of the `keys` entries stored, for the authenticator.
    delta: Option<[u8; MAC_LEN]>,
    /// Streams whose marker came while the replica holds their data key.
    shreds: Vec<(u128, Vec<u8>)>,
    /// Whether the replica moved to the leader's master epoch.
    adopted: bool,
}

impl KeyImport {
    /// Checks and stores what `event`, a sealed one, carries: its stream's key entry, and a
    /// shredded event's header MAC; requires a key for its stream, and its blob unless the
    /// stream is shredded.
    fn event(
        &mut self,
        storage: &Storage,
        txn: &mut WriteTxn<'_>,
        master: &mut Arc<Master>,
        event: &ReplicatedEvent,
    ) -> Result<(), Error> {
        let tables = storage.tables;
        let mismatch = |reason: String| Error::ReplicaMismatch { seq: event.seq, reason };
        let stream = event.stream.as_u128();
        let k = key::stream(stream);
        let stored = storage.get(txn, tables.keys, &k)?.map(<[u8]>::to_vec);
        let mut shredded = stored.as_deref().is_some_and(Master::is_marker);
        if let Some(carried) = event.stream_key() {
            let epoch = key_epoch(carried).unwrap_or_default();
            if epoch != master.epoch {
                // A replica made after its leader rotated: it holds no key yet, and moves to the
                // leader's epoch (of the same master key, which the keys then authenticate).
                let empty =
                    storage.entries(txn, tables.keys, (Unbounded, Unbounded), false)?.next().is_none();
                if !empty {
                    return Err(Error::ReplicaKeyEpoch { leader: epoch, replica: master.epoch });
                }
                let adopted = master.at_epoch(epoch);
                storage.put(txn, tables.meta, meta_key::ENCRYPTION, adopted.check_value())?;
                let auth = KeysAuth { generation: 0, sum: [0; MAC_LEN] };
                storage.put(txn, tables.meta, meta_key::KEYS_AUTH, &adopted.keys_auth_value(auth))?;
                *master = Arc::new(adopted);
                self.adopted = true;
            }
            let is_marker = Master::is_marker(carried);
            match &stored {
                // Unwrapped only after the stream's events are shredded: a process that has
                // seen a stream's marker refuses its data key from then on.
                Some(old) if is_marker && !Master::is_marker(old) => {
                    if !self.shreds.iter().any(|(s, _)| *s == stream) {
                        self.shreds.push((stream, carried.to_vec()));
                    }
                    shredded = true;
                }
                Some(_) => {}
                None => {
                    let bad = |e: Error| {
                        mismatch(format!(
                            "the stream's key fails under the replica's master key ({e}): is the replica \
                             opened with the leader's key and identity (`Options::replica_of`)?"
                        ))
                    };
                    match master.unwrap(stream, carried).map_err(bad)? {
                        StreamKey::Key(_) => {}
                        StreamKey::Shredded { .. } => shredded = true,
                    }
                    storage.put(txn, tables.keys, &k, carried)?;
                    xor_into(self.delta.get_or_insert([0; MAC_LEN]), &master.keys_entry(stream, carried));
                }
            }
        } else if stored.is_none() {
            return Err(mismatch(format!("no key for stream {} came with its first event", event.stream)));
        }
        let env = Envelope::decode(event.seq, &event.record).map_err(|e| mismatch(e.to_string()))?;
        let Content::Sealed { aad_head, body, .. } = env.content else {
            return Err(mismatch("the record is not sealed".into()));
        };
        if event.blob.is_none() && matches!(body, Body::Blob { .. }) && !shredded {
            return Err(mismatch("the record names a blob that did not come with it".into()));
        }
        if let Some(mac) = event.header_mac() {
            if !constant_time_eq(&master.header_mac(event.seq, aad_head), mac) {
                return Err(mismatch("the shredded event's header MAC fails".into()));
            }
            storage.put(txn, tables.shredded_headers, &key::seq(event.seq), mac)?;
        }
        Ok(())
    }
}
