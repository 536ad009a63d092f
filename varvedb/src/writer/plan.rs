//! Validation of a request and the plan of its writes: positions, new stream heads, new
//! schemas. Planning only reads.

use std::collections::{HashMap, HashSet};

use crate::batch::{Appended, EventInfo, Kind, LayoutFn, NewEvent, SchemaId, StreamAppend, WriteBatch};
use crate::crypto::Master;
use crate::error::Error;
use crate::id::StreamId;
use crate::storage::{WriteTxn, key, value};

use super::WriterState;
use super::hash::StreamHashing;

/// The error when the last stored seq is `u64::MAX`, so no further event can be numbered.
pub(super) fn seq_exhausted() -> Error {
    Error::CorruptIndex { table: "events", reason: "the last seq is u64::MAX: no seq is left".into() }
}

/// What validating a request decided.
pub(super) enum Plan {
    /// Every event's id is already stored: answer with the original positions.
    Deduplicated(Vec<Appended>),
    /// Append, with these positions and these new stream heads.
    Write {
        appended: Vec<Appended>,
        heads: Vec<PendingHead>,
        /// For each stream append, the index of its stream's head in `heads`.
        slots: Vec<u32>,
        /// Schemas the store does not know yet, registered with the request's writes.
        new_schemas: Vec<(String, SchemaId)>,
        /// Other `schema` entries to record (key, value): event lists of stream kinds, and
        /// layout descriptions of typed metadata types met for the first time.
        new_kinds: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// The events a stream kind takes, as far as one request has looked them up.
struct KindRule {
    kind: String,
    /// `None`: the typed layer has not written the kind, so any event goes.
    events: Option<KindEvents>,
}

enum KindEvents {
    /// This build's aggregate, from a typed append.
    Typed(&'static [EventInfo]),
    /// The list recorded in the store.
    Stored(Vec<u8>),
}

/// A stream's head as a request leaves it: its version (`None` while the stream has no
/// event) and its kind.
#[derive(Clone)]
pub(super) struct PendingHead {
    pub(super) stream: StreamId,
    pub(super) version: Option<u32>,
    pub(super) kind: Option<Kind>,
}

/// The stream heads a request moves, in the order it first touches them, with an index by
/// stream once there are more than a few (a linear search per append is quadratic).
#[derive(Default)]
struct PendingHeads {
    list: Vec<PendingHead>,
    index: HashMap<StreamId, usize, StreamHashing>,
}

impl PendingHeads {
    /// Where `stream`'s head is in the list, if the request touched the stream already.
    fn position(&mut self, stream: StreamId) -> Option<usize> {
        if self.list.len() < 8 {
            return self.list.iter().position(|h| h.stream == stream);
        }
        if self.index.is_empty() {
            self.index.extend(self.list.iter().enumerate().map(|(i, h)| (h.stream, i)));
        }
        self.index.get(&stream).copied()
    }

    /// The head at `at`, left empty until [`set`](Self::set) puts the new one back.
    fn take(&mut self, at: usize) -> PendingHead {
        let stream = self.list[at].stream;
        std::mem::replace(&mut self.list[at], PendingHead { stream, version: None, kind: None })
    }

    /// Puts `head` at `at`, or adds it if its stream was not in the list.
    fn set(&mut self, at: Option<usize>, head: PendingHead) {
        match at {
            Some(i) => self.list[i] = head,
            None => {
                if !self.index.is_empty() {
                    self.index.insert(head.stream, self.list.len());
                }
                self.list.push(head);
            }
        }
    }
}

impl WriterState {
    /// Validates a request against the current state, reading only. Request-local errors
    /// mean nothing of the request is written.
    pub(super) fn plan(
        &mut self,
        txn: &WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        first_seq: u64,
    ) -> Result<Plan, Error> {
        if batch.appends.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let tables = self.storage.tables;
        if let (Some(master), Some(crypto)) = (master, self.crypto.as_mut()) {
            for part in &batch.appends {
                // Unwraps (and caches) the key, which also authenticates a shredded marker.
                crypto.data_key(&self.storage, txn, master, part.stream.as_u128())?;
            }
        }
        let mut seen_ids = HashSet::new();
        let mut stored_ids: Vec<(u128, u64)> = Vec::new();
        // Every (tag, version) checked in this request, and whether it is new to the store: a
        // batch of thousands of one event type looks the registry up once, not per event.
        let mut checked: Vec<(String, SchemaId, bool)> = Vec::new();
        // Likewise typed metadata: each fingerprint looked up once, new layouts kept here.
        let mut meta_checked: Vec<u64> = Vec::new();
        let mut new_meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        for part in &batch.appends {
            let events = batch.events_of(part);
            if events.is_empty() {
                return Err(Error::EmptyBatch);
            }
            if let Some(kind) = &part.kind {
                check_tag("stream kind", kind)?;
            }
            for event in events {
                check_tag("type tag", &event.type_tag)?;
                let size = event.payload.len() + event.metadata.len();
                if size > self.config.max_event_size {
                    return Err(Error::EventTooLarge { index: total, size, max: self.config.max_event_size });
                }
                if let Some(schema) = event.schema {
                    self.check_schema(txn, &event.type_tag, schema, &mut checked)?;
                }
                self.check_meta_layout(txn, event, &mut meta_checked, &mut new_meta)?;
                if let Some(id) = event.id {
                    if !seen_ids.insert(id) {
                        return Err(Error::DuplicateEventId { id });
                    }
                    if let Some(v) = self.storage.get(txn, tables.event_ids, &key::id(id))? {
                        let seq = value::decode_seq(v).ok_or_else(|| Error::CorruptIndex {
                            table: "event_ids",
                            reason: format!("value for id {id:#x} is not a seq"),
                        })?;
                        stored_ids.push((id, seq));
                    }
                }
                total += 1;
            }
        }
        if let Some(&(id, seq)) = stored_ids.first() {
            if stored_ids.len() != total {
                return Err(Error::IdempotencyMismatch { id, seq });
            }
            return self.deduplicate(txn, master, batch, &stored_ids).map(Plan::Deduplicated);
        }

        let mut heads = PendingHeads::default();
        let mut appended = Vec::with_capacity(batch.appends.len());
        let mut slots = Vec::with_capacity(batch.appends.len());
        let mut seq = first_seq;
        let mut rules: Vec<KindRule> = Vec::new();
        let mut new_kinds = new_meta;
        for part in &batch.appends {
            let at = heads.position(part.stream);
            slots.push(at.unwrap_or(heads.list.len()) as u32);
            let head = match at {
                Some(i) => heads.take(i),
                None => self.read_head(txn, part.stream, part.kind.as_ref())?,
            };
            check_kind(part, &head)?;
            if !part.expected.is_satisfied_by(head.version) {
                return Err(Error::ConcurrencyConflict {
                    stream: part.stream,
                    expected: part.expected,
                    actual: head.version,
                });
            }
            let n = u32::try_from(part.events.len())
                .map_err(|_| Error::VersionOverflow { stream: part.stream })?;
            let current = head.version.unwrap_or(0);
            let last_version =
                current.checked_add(n).ok_or(Error::VersionOverflow { stream: part.stream })?;
            let next = seq.checked_add(u64::from(n)).ok_or_else(seq_exhausted)?;
            appended.push(Appended {
                stream: part.stream,
                first_version: current + 1,
                last_version,
                first_seq: seq,
                last_seq: next - 1,
                deduplicated: false,
            });
            seq = next;
            let kind = head.kind.or_else(|| part.kind.clone());
            if let Some(kind) = &kind {
                self.check_events_of_kind(txn, batch, part, kind, &mut rules, &mut new_kinds)?;
            }
            heads.set(at, PendingHead { stream: part.stream, version: Some(last_version), kind });
        }
        let new_schemas =
            checked.into_iter().filter(|(_, _, new)| *new).map(|(tag, s, _)| (tag, s)).collect();
        Ok(Plan::Write { appended, heads: heads.list, slots, new_schemas, new_kinds })
    }

    /// Refuses an event the aggregate of the stream's `kind` does not apply, once the typed
    /// layer has recorded what it applies; a typed append records (or updates) that list.
    fn check_events_of_kind(
        &self,
        txn: &WriteTxn<'_>,
        batch: &WriteBatch,
        part: &StreamAppend,
        kind: &str,
        rules: &mut Vec<KindRule>,
        new_kinds: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Error> {
        let at = match rules.iter().position(|r| r.kind == kind) {
            Some(at) => at,
            None => {
                let k = key::kind_events(kind);
                let stored = self.storage.get(txn, self.storage.tables.schema, &k)?.map(<[u8]>::to_vec);
                rules.push(KindRule { kind: kind.to_owned(), events: stored.map(KindEvents::Stored) });
                rules.len() - 1
            }
        };
        let rule = &mut rules[at];
        // This build's list, from the append or from a typed handle of this process; looked
        // up once per kind and request.
        let typed = || {
            part.handles
                .filter(|_| part.kind.as_deref() == Some(kind))
                .or_else(|| self.config.kinds.get(kind))
        };
        if !matches!(rule.events, Some(KindEvents::Typed(_)))
            && let Some(handles) = typed()
        {
            let mut list = Vec::new();
            // Older versions an event upcasts from are the aggregate's too: a load reads them.
            value::encode_kind_events(
                handles.iter().flat_map(EventInfo::chain).map(|e| (e.name, e.version)),
                &mut list,
            );
            if !matches!(&rule.events, Some(KindEvents::Stored(stored)) if *stored == list) {
                new_kinds.push((key::kind_events(kind), list));
            }
            rule.events = Some(KindEvents::Typed(handles));
        }
        let Some(events) = &rule.events else { return Ok(()) };
        for event in batch.events_of(part) {
            let version = event.schema.map_or(0, |s| s.version);
            let known = match events {
                KindEvents::Typed(list) => list.iter().any(|e| e.accepts(&event.type_tag, version)),
                KindEvents::Stored(list) => value::kind_events_contain(list, &event.type_tag, version)
                    .ok_or_else(|| Error::CorruptIndex {
                        table: "schema",
                        reason: format!("the event list of stream kind {kind:?} cannot be decoded"),
                    })?,
            };
            if !known {
                return Err(Error::ForeignEvent {
                    stream: part.stream,
                    event: event.type_tag.to_string(),
                    version,
                    aggregate: kind.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Notes the layout of an event's typed metadata for the registry if the store does not
    /// hold it yet; each fingerprint is looked up once per request.
    fn check_meta_layout(
        &self,
        txn: &WriteTxn<'_>,
        event: &NewEvent,
        checked: &mut Vec<u64>,
        new: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Error> {
        if let Some((fingerprint, layout)) = event.meta_layout
            && !checked.contains(&fingerprint)
        {
            checked.push(fingerprint);
            check_given(layout, || format!("metadata {fingerprint:#018x}"))?;
            let k = key::meta_layout(fingerprint);
            if self.storage.get(txn, self.storage.tables.schema, &k)?.is_none() {
                new.push((k.to_vec(), layout.encode()));
            }
        }
        Ok(())
    }

    /// Checks a typed event's fingerprint against the registry, once per (tag, version) per
    /// request; a first use is marked new, to be registered with the request's writes.
    fn check_schema(
        &self,
        txn: &WriteTxn<'_>,
        tag: &str,
        schema: SchemaId,
        checked: &mut Vec<(String, SchemaId, bool)>,
    ) -> Result<(), Error> {
        let mismatch = |stored: u64| Error::SchemaMismatch {
            event: tag.to_owned(),
            version: schema.version,
            stored,
            found: schema.fingerprint,
        };
        if let Some((_, known, _)) = checked.iter().find(|(t, s, _)| t == tag && s.version == schema.version)
        {
            return if known.fingerprint == schema.fingerprint {
                Ok(())
            } else {
                Err(mismatch(known.fingerprint))
            };
        }
        match self.storage.get(txn, self.storage.tables.schema, &key::schema(tag, schema.version))? {
            Some(raw) => {
                let stored = value::decode_fingerprint(raw).ok_or_else(|| Error::CorruptIndex {
                    table: "schema",
                    reason: format!("fingerprint of {tag:?} version {} is not 8 bytes", schema.version),
                })?;
                if stored != schema.fingerprint {
                    return Err(mismatch(stored));
                }
                checked.push((tag.to_owned(), schema, false));
                Ok(())
            }
            None => {
                if let Some(layout) = schema.layout {
                    check_given(layout, || format!("{tag:?} version {}", schema.version))?;
                }
                checked.push((tag.to_owned(), schema, true));
                Ok(())
            }
        }
    }

    /// The stored head of `stream`; its kind shares `wanted`'s copy when they are the same.
    fn read_head(
        &self,
        txn: &WriteTxn<'_>,
        stream: StreamId,
        wanted: Option<&Kind>,
    ) -> Result<PendingHead, Error> {
        if let Some((version, kind)) = self.head_cache.map.get(&stream) {
            return Ok(PendingHead { stream, version: Some(*version), kind: kind.clone() });
        }
        Ok(match self.storage.stream_head(txn, stream)? {
            None => PendingHead { stream, version: None, kind: None },
            Some(h) => {
                let kind = h.kind.map(|stored| match wanted {
                    Some(wanted) if **wanted == *stored => wanted.clone(),
                    _ => Kind::Shared(stored.into()),
                });
                PendingHead { stream, version: Some(h.version), kind }
            }
        })
    }
}

/// Refuses an empty type tag or stream kind, or one longer than 255 bytes.
fn check_tag(what: &'static str, tag: &str) -> Result<(), Error> {
    if tag.is_empty() || tag.len() > 255 {
        return Err(Error::InvalidTag { what, value: tag.to_owned() });
    }
    Ok(())
}

/// Refuses an append whose stated kind is not its stream's; a stream with no event yet
/// takes the kind of its first append.
fn check_kind(part: &StreamAppend, head: &PendingHead) -> Result<(), Error> {
    let Some(wanted) = &part.kind else { return Ok(()) };
    if head.version.is_none() || head.kind.as_deref() == Some(&**wanted) {
        return Ok(());
    }
    Err(Error::StreamKindMismatch {
        stream: part.stream,
        expected: wanted.to_string(),
        actual: head.kind.as_deref().map(str::to_owned),
    })
}

/// Refuses a caller-given layout description that does not decode: the registry would keep
/// it, and every reader of the registry would meet it.
fn check_given(layout: LayoutFn, what: impl FnOnce() -> String) -> Result<(), Error> {
    match layout {
        LayoutFn::Typed(_) => Ok(()),
        LayoutFn::Given(bytes) => crate::layout::Layout::decode(bytes)
            .map(drop)
            .map_err(|source| Error::BadLayoutDescription { what: what(), source }),
    }
}
