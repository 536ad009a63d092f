//! A store's log as bytes, for read replicas: export on the leader, import on the replica.

use std::sync::atomic::Ordering;

use super::Varve;
use crate::error::Error;
use crate::event::ReplicatedEvent;
use crate::id::StreamId;
use crate::record::{Body, Content, Envelope};
use crate::storage::{key, value};

impl Varve {
    /// Up to `max` events of the log after seq `after`, as the store keeps them, for a
    /// replica to [`import`](Self::import_replicated). Empty when the log ends at `after`.
    ///
    /// # Errors
    /// [`Error::ReplicationUnsupported`] for an encrypted store; [`Error::Corrupt`] for a
    /// damaged record or blob (a replica must not copy damage); storage errors.
    pub fn export_replicated(&self, after: u64, max: usize) -> Result<Vec<ReplicatedEvent>, Error> {
        if self.encryption().is_some() {
            return Err(Error::ReplicationUnsupported { what: "encrypted stores" });
        }
        let storage = self.storage();
        let txn = storage.read_txn()?;
        let mut out = Vec::new();
        // Kinds looked up once per stream; a stream's kind never changes once set.
        let mut kinds: std::collections::HashMap<u128, Option<std::sync::Arc<str>>> =
            std::collections::HashMap::new();
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
            let blob = match env.content {
                Content::Plain { body: Body::Blob { hash, len }, .. } => {
                    Some(storage.blob(&txn, seq, hash, len)?.to_vec())
                }
                Content::Plain { body: Body::Inline(_), .. } => None,
                Content::Sealed { .. } => {
                    return Err(Error::ReplicationUnsupported { what: "encrypted stores" });
                }
            };
            let stream_kind = match kinds.get(&env.head.stream) {
                Some(kind) => kind.clone(),
                None => {
                    let raw =
                        storage.get(&txn, storage.tables.stream_heads, &key::stream(env.head.stream))?;
                    let kind = raw
                        .map(|raw| {
                            value::StreamHead::decode(raw).ok_or_else(|| Error::CorruptIndex {
                                table: "stream_heads",
                                reason: format!(
                                    "head of stream {} cannot be decoded",
                                    StreamId::from(env.head.stream)
                                ),
                            })
                        })
                        .transpose()?
                        .and_then(|h| h.kind.map(std::sync::Arc::from));
                    kinds.insert(env.head.stream, kind.clone());
                    kind
                }
            };
            out.push(ReplicatedEvent {
                seq,
                stream: env.head.stream.into(),
                version: env.head.version,
                id: env.head.id,
                record: raw.to_vec().into(),
                blob: blob.map(Into::into),
                stream_kind,
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
    /// event that does not fit the replica's streams or ids; [`Error::ReplicationUnsupported`]
    /// for an encrypted replica or one keeping a Merkle tree; [`Error::WouldDeadlock`] from
    /// inside a write transaction of this thread; storage errors. On every error nothing
    /// was written.
    pub fn import_replicated(&self, events: &[ReplicatedEvent]) -> Result<u64, Error> {
        if !self.options().replica {
            return Err(Error::NotAReplica);
        }
        if self.encryption().is_some() {
            return Err(Error::ReplicationUnsupported { what: "encrypted stores" });
        }
        if crate::storage::holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        let last = crate::writer::import(self.storage(), events)?;
        if !events.is_empty() {
            let counters = &self.inner.counters;
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.requests.fetch_add(1, Ordering::Relaxed);
            counters.events.fetch_add(events.len() as u64, Ordering::Relaxed);
            self.inner.import_watch.send_modify(|seen| *seen = (*seen).max(last));
        }
        Ok(last)
    }
}
