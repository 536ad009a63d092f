//! The write step of a planned request: records, blobs, event ids, `streams` index entries
//! and stream heads.

use std::sync::Arc;

use crate::batch::{Appended, WriteBatch};
use crate::crypto::Master;
use crate::error::Error;
use crate::record::{BLOB_THRESHOLD, Body, Content, Envelope, RecordHeader, blob_hash};
use crate::storage::{Storage, WriteTxn, key, value};

use super::WriterState;
use super::plan::PendingHead;

impl WriterState {
    /// Writes a planned request into `txn`: each event's record (and blob), its id, the
    /// `streams` index entries and the new stream heads.
    pub(super) fn write(
        &mut self,
        txn: &mut WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        appended: &[Appended],
        (heads, slots): (&[PendingHead], &[u32]),
        timestamp_micros: u64,
    ) -> Result<(), Error> {
        let storage = Arc::clone(&self.storage);
        let tables = storage.tables;
        self.index_order.prepare(batch, heads, slots);
        for ((part, pos), &slot) in batch.appends.iter().zip(appended).zip(slots) {
            let stream = part.stream.as_u128();
            if let (Some(master), Some(crypto)) = (master, self.crypto.as_mut()) {
                crypto.data_key_for_append(&storage, txn, master, stream, pos.first_version)?;
            }
            for (i, event) in batch.events_of(part).iter().enumerate() {
                let seq = pos.first_seq + i as u64; // within [first_seq, last_seq], checked in plan
                let version = pos.first_version
                    + u32::try_from(i).map_err(|_| Error::VersionOverflow { stream: part.stream })?;
                // `last_timestamp` is the floor: a given time below it is raised to it.
                let at = event.timestamp.unwrap_or(timestamp_micros).max(self.last_timestamp);
                self.last_timestamp = at;
                let header = RecordHeader {
                    stream,
                    version,
                    timestamp_micros: at,
                    schema_version: event.schema.map_or(0, |s| s.version),
                    id: event.id,
                    type_tag: &event.type_tag,
                };
                if let (Some(_), Some(crypto)) = (master, self.crypto.as_mut()) {
                    let nonce = crypto.nonces.take()?;
                    let cipher = crypto
                        .keys
                        .get(&stream)
                        .map(|(_, c)| &**c)
                        .ok_or(Error::Internal("no data key for a stream being appended to"))?;
                    let blob = header.encode_sealed(
                        seq,
                        &event.metadata,
                        &event.payload,
                        cipher,
                        &nonce,
                        &mut self.record_buf,
                        &mut crypto.sealed_blob,
                    )?;
                    if let Some(hash) = blob {
                        // Unique per event (a fresh nonce), so there is nothing to share.
                        storage.put(txn, tables.blobs, &hash, &crypto.sealed_blob)?;
                        self.bytes_written += crypto.sealed_blob.len() as u64;
                    }
                } else {
                    let hash;
                    let body = if event.payload.len() > BLOB_THRESHOLD {
                        hash = blob_hash(&event.payload);
                        if storage.get(txn, tables.blobs, &hash)?.is_none() {
                            storage.put(txn, tables.blobs, &hash, &event.payload)?;
                            self.bytes_written += event.payload.len() as u64;
                        }
                        Body::Blob {
                            hash: &hash,
                            len: u32::try_from(event.payload.len()).unwrap_or(u32::MAX),
                        }
                    } else {
                        Body::Inline(&event.payload)
                    };
                    Envelope { head: header, content: Content::Plain { metadata: &event.metadata, body } }
                        .encode_into(seq, &mut self.record_buf);
                }
                storage.append(txn, tables.events, &key::seq(seq), &self.record_buf)?;
                self.bytes_written += self.record_buf.len() as u64;
                if let Some(tree) = &mut self.tree {
                    tree.push(seq, &self.record_buf)?;
                }
                self.index_order.place(slot, (stream, version, seq));
                if let Some(id) = event.id {
                    storage.insert(txn, tables.event_ids, "event_ids", &key::id(id), &value::seq(seq))?;
                }
            }
        }
        self.write_index_and_heads(txn, &storage, heads)?;
        self.index_order.trim();
        Ok(())
    }

    /// Writes a request's `streams` index entries and new stream heads, whose entries
    /// `index_order` holds.
    fn write_index_and_heads(
        &mut self,
        txn: &mut WriteTxn<'_>,
        storage: &Storage,
        heads: &[PendingHead],
    ) -> Result<(), Error> {
        // A stream's entries are consecutive in `entries` (in version order), and the
        // streams come in the order of `heads_by_stream`. Each stream's new entries join the
        // tail its stored head holds: chunks they fill go to `streams`, the rest goes back
        // into the head.
        self.heads_out.clear();
        let mut rest = &self.index_order.entries[..];
        for &at in &self.index_order.heads_by_stream {
            let head = &heads[at as usize];
            let stream = head.stream.as_u128();
            self.tail_buf.clear();
            let run = rest.iter().take_while(|e| e.0 == stream).count();
            let first = rest.first().filter(|_| run > 0).map(|e| e.1);
            // A new stream (its first version is 1) has no head: the plan looked, in this
            // transaction, and a second look would only repeat that of its neighbours.
            let stored = match first {
                Some(1) => None,
                _ => storage.stream_head(txn, head.stream)?,
            };
            let stored_version = stored.as_ref().map_or(0, |h| h.version);
            if let Some(stored) = stored {
                self.tail_buf.extend_from_slice(stored.tail);
            }
            if let Some(first) = first {
                if first.wrapping_sub(1) != stored_version {
                    // The plan read another head than this transaction holds: writing on
                    // would misplace the entries.
                    return Err(Error::Internal(
                        "an append planned on a stream head that is not the stored one",
                    ));
                }
                self.index_seqs.clear();
                self.index_seqs.extend(rest[..run].iter().map(|e| e.2));
                storage.index_append(txn, stream, first, &self.index_seqs, &mut self.tail_buf)?;
                rest = &rest[run..];
            }
            let version = head.version.unwrap_or(0);
            value::StreamHead { version, kind: head.kind.as_deref(), tail: &self.tail_buf }
                .encode_into(stream, &mut self.head_buf);
            self.heads_out.push(&self.head_buf);
        }
        let mut stream_heads = storage.puts(txn, storage.tables.stream_heads)?;
        for (&at, encoded) in self.index_order.heads_by_stream.iter().zip(self.heads_out.iter()) {
            let head = &heads[at as usize];
            stream_heads.put(&key::stream(head.stream.as_u128()), encoded)?;
            self.head_cache.insert(head.stream, head.version.unwrap_or(0), head.kind.clone());
        }
        drop(stream_heads);
        self.heads_out.trim();
        Ok(())
    }
}
