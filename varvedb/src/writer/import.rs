//! The replica's write path: another store's log, written as that store keeps it.
//!
//! Unlike an append, nothing is planned or encoded here: each record is checked (it came
//! over a network) and stored unchanged, with the indexes an append would have written.
//! It runs on the caller's thread in a write transaction of its own, as checkpoints and
//! snapshots do: a replica's writer thread never writes events, so the two do not meet.

use std::collections::HashMap;

use crate::error::Error;
use crate::event::ReplicatedEvent;
use crate::record::blob_hash;
use crate::storage::{Storage, key, value};

/// Writes `events`, which must continue the store's log seq by seq, in one transaction.
/// Returns the store's last seq after it.
pub(crate) fn import(storage: &Storage, events: &[ReplicatedEvent]) -> Result<u64, Error> {
    let mut txn = storage.write_txn()?;
    if crate::tlog::kept(storage, &txn)? {
        return Err(Error::ReplicationUnsupported { what: "a replica that keeps a Merkle tree" });
    }
    let tables = storage.tables;
    let last = storage.last_seq(&txn)?;
    // The head each stream reaches, with the kind its stored head has.
    let mut heads: HashMap<u128, (u32, Option<String>)> = HashMap::new();
    let mut expected = last + 1;
    let mut index_buf = Vec::new();
    for event in events {
        if event.seq != expected {
            return Err(Error::ReplicaGap { expected, found: event.seq });
        }
        let mismatch = |reason: String| Error::ReplicaMismatch { seq: event.seq, reason };
        let stream = event.stream.as_u128();
        let head = match heads.get_mut(&stream) {
            Some(head) => head,
            None => {
                let stored = match storage.get(&txn, tables.stream_heads, &key::stream(stream))? {
                    None => (0, None),
                    Some(raw) => {
                        let h = value::StreamHead::decode(raw).ok_or_else(|| Error::CorruptIndex {
                            table: "stream_heads",
                            reason: format!("head of stream {} cannot be decoded", event.stream),
                        })?;
                        (h.version, h.kind.map(str::to_owned))
                    }
                };
                heads.entry(stream).or_insert(stored)
            }
        };
        // The leader sets a stream's kind with its first append and never changes it.
        match (&head.1, event.stream_kind()) {
            (None, Some(kind)) => head.1 = Some(kind.to_owned()),
            (Some(stored), Some(kind)) if stored != kind => {
                return Err(mismatch(format!(
                    "stream {} has kind {stored:?} on the replica and {kind:?} on the leader",
                    event.stream
                )));
            }
            _ => {}
        }
        if Some(event.version) != head.0.checked_add(1) {
            return Err(mismatch(format!(
                "stream {} is at version {}, and the event is version {}",
                event.stream, head.0, event.version
            )));
        }
        head.0 = event.version;
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
        storage.index_append(&mut txn, stream, event.version, &[event.seq], &mut index_buf)?;
        expected += 1;
    }
    let mut buf = Vec::new();
    for (stream, (version, kind)) in &heads {
        value::StreamHead { version: *version, kind: kind.as_deref() }.encode_into(&mut buf);
        storage.put(&mut txn, tables.stream_heads, &key::stream(*stream), &buf)?;
    }
    if events.is_empty() {
        return Ok(last);
    }
    storage.commit(txn)?;
    Ok(expected - 1)
}
