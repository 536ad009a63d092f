//! Idempotent retries: a request whose event ids are all stored already is answered with
//! the original positions, after checking it is the same request.

use std::sync::Arc;

use crate::batch::{Appended, WriteBatch};
use crate::crypto::{self, Master};
use crate::error::Error;
use crate::id::StreamId;
use crate::record::{self, Body, Content, Envelope, blob_hash};
use crate::storage::{WriteTxn, key};

use super::WriterState;

impl WriterState {
    /// Rebuilds the original positions of a retried request from the stored events, and
    /// refuses a "retry" that is not the same request.
    pub(super) fn deduplicate(
        &mut self,
        txn: &WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        stored: &[(u128, u64)],
    ) -> Result<Vec<Appended>, Error> {
        let mut stored = stored.iter();
        let mut out = Vec::with_capacity(batch.appends.len());
        for part in &batch.appends {
            let mut positions: Option<Appended> = None;
            for event in batch.events_of(part) {
                let &(id, seq) = stored.next().ok_or(Error::Internal("fewer stored ids than events"))?;
                let mismatch = || Error::IdempotencyMismatch { id, seq };
                let raw =
                    self.storage.get(txn, self.storage.tables.events, &key::seq(seq))?.ok_or_else(|| {
                        Error::CorruptIndex {
                            table: "event_ids",
                            reason: format!("id {id:#x} points at missing seq {seq}"),
                        }
                    })?;
                let envelope = Envelope::decode(seq, raw)?;
                let header = envelope.head;
                let same_content = match (envelope.content, master) {
                    (Content::Plain { metadata, body }, None) => {
                        let same_payload = match body {
                            Body::Inline(p) => p == event.payload.as_slice(),
                            Body::Blob { hash, len } => {
                                len as usize == event.payload.len() && *hash == blob_hash(&event.payload)
                            }
                        };
                        metadata == event.metadata.as_slice() && same_payload
                    }
                    (Content::Sealed { metadata_len, payload_len, aad_head, body }, Some(master)) => {
                        metadata_len as usize == event.metadata.len()
                            && payload_len as usize == event.payload.len()
                            && {
                                // In time independent of where the bytes differ: the answer
                                // (stored, or a mismatch) tells the sender whether its bytes
                                // equal the sealed ones, and nothing more.
                                let [metadata, payload] = self.open_stored(
                                    txn,
                                    master,
                                    seq,
                                    header.stream,
                                    (metadata_len, aad_head, body),
                                )?;
                                crypto::constant_time_eq(metadata, &event.metadata)
                                    & crypto::constant_time_eq(payload, &event.payload)
                            }
                    }
                    (_, None) => {
                        return Err(Error::Corrupt {
                            seq,
                            reason: "an encrypted record in an unencrypted store".into(),
                        });
                    }
                    (_, Some(_)) => {
                        return Err(Error::Corrupt {
                            seq,
                            reason: "an unencrypted record in an encrypted store".into(),
                        });
                    }
                };
                let same = header.stream == part.stream.as_u128()
                    && header.id == Some(id)
                    && header.type_tag == event.type_tag
                    && header.schema_version == event.schema.map_or(0, |s| s.version)
                    && same_content;
                if !same {
                    return Err(mismatch());
                }
                positions = Some(match positions {
                    None => Appended {
                        stream: part.stream,
                        first_version: header.version,
                        last_version: header.version,
                        first_seq: seq,
                        last_seq: seq,
                        deduplicated: true,
                    },
                    Some(p)
                        if p.last_seq.checked_add(1) == Some(seq)
                            && p.last_version.checked_add(1) == Some(header.version) =>
                    {
                        Appended { last_seq: seq, last_version: header.version, ..p }
                    }
                    Some(_) => return Err(mismatch()),
                });
            }
            out.extend(positions);
        }
        Ok(out)
    }

    /// Decrypts a stored sealed body of `stream` into the writer's scratch buffer, returning
    /// `(metadata, payload)`.
    fn open_stored(
        &mut self,
        txn: &WriteTxn<'_>,
        master: &Master,
        seq: u64,
        stream: u128,
        (metadata_len, aad_head, body): (u32, &[u8], Body<'_>),
    ) -> Result<[&[u8]; 2], Error> {
        let storage = Arc::clone(&self.storage);
        let crypto = self.crypto.as_mut().ok_or(Error::Internal("sealed record without encryption state"))?;
        let sealed = match body {
            Body::Inline(s) => s,
            Body::Blob { hash, len } => storage.blob(txn, seq, hash, len)?,
        };
        let mut plain = std::mem::take(&mut crypto.plain);
        plain.clear();
        plain.resize(sealed.len().saturating_sub(crypto::SEAL_OVERHEAD), 0);
        let key = crypto.data_key(&storage, txn, master, stream)?.ok_or(Error::CorruptKey {
            stream: StreamId::from(stream),
            reason: "the stream has encrypted events but no stored key",
        })?;
        let opened = record::open_sealed(key, seq, aad_head, sealed, &mut plain);
        crypto.plain = plain;
        opened?;
        Ok(crypto.plain.split_at((metadata_len as usize).min(crypto.plain.len())).into())
    }
}
