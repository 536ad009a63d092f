//! Read views: consistent snapshots over one LMDB read transaction.

use std::collections::HashMap;

use rkyv::Portable;
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;

use crate::error::Error;
use crate::record::{Body, Envelope, blob_hash};
use std::ops::Bound::{Included, Unbounded};

use crate::storage::{Entries, ReadTxn, Storage, key, value};
use crate::types::StreamId;

/// A consistent snapshot of the store, over one read transaction.
///
/// Everything read through a view reflects the same instant, whatever commits meanwhile.
/// Events borrow from the view: their payloads point into the store's memory map, with no
/// copy. Keep views short-lived: an open view pins the pages it sees, so the file grows while
/// it lives. A view is `Send`, but must not be held across an `.await` in a busy task.
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// db.append(7u128, ExpectedVersion::NoStream, [NewEvent::new("opened", b"hi".to_vec())])?;
/// let view = db.begin_read()?;
/// for event in view.read_stream(7u128, 1)? {
///     let event = event?;
///     assert_eq!((event.version(), event.type_tag(), event.payload()), (1, "opened", &b"hi"[..]));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReadView<'db> {
    storage: &'db Storage,
    txn: ReadTxn<'db>,
}

/// One stored event, borrowed from a [`ReadView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedEvent<'v> {
    seq: u64,
    stream: StreamId,
    version: u32,
    timestamp_micros: u64,
    schema_version: u32,
    id: Option<u128>,
    type_tag: &'v str,
    metadata: &'v [u8],
    payload: &'v [u8],
}

impl<'v> RecordedEvent<'v> {
    /// A view of an owned event, for handlers that run after the read transaction ended.
    pub(crate) fn from_owned(e: &'v crate::subscribe::OwnedEvent) -> Self {
        RecordedEvent {
            seq: e.seq,
            stream: e.stream,
            version: e.version,
            timestamp_micros: e.timestamp_micros,
            schema_version: e.schema_version,
            id: e.id,
            type_tag: &e.type_tag,
            metadata: &e.metadata,
            payload: &e.payload,
        }
    }

    /// Global sequence number: 1 for the first event of the store, no gaps.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The stream the event belongs to.
    #[must_use]
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Position inside its stream, from 1.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Commit time, in microseconds since the Unix epoch (the writer's wall clock).
    #[must_use]
    pub fn timestamp_micros(&self) -> u64 {
        self.timestamp_micros
    }

    /// The id the event was appended with, if any.
    #[must_use]
    pub fn id(&self) -> Option<u128> {
        self.id
    }

    /// The event's type tag.
    #[must_use]
    pub fn type_tag(&self) -> &'v str {
        self.type_tag
    }

    /// The schema version of a typed event (`#[event(version = ..)]`); 0 for untyped bytes.
    #[must_use]
    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    /// The user metadata bytes.
    #[must_use]
    pub fn metadata(&self) -> &'v [u8] {
        self.metadata
    }

    /// The payload bytes, in place in the memory map.
    #[must_use]
    pub fn payload(&self) -> &'v [u8] {
        self.payload
    }

    /// The payload as a validated rkyv archive of type `T` (for example `Archived<MyEvent>`),
    /// accessed in place: no copy, no allocation.
    ///
    /// # Errors
    /// [`Error::InvalidArchive`] if the bytes are not a valid `T`.
    ///
    /// ```
    /// use varvedb::{rkyv, ExpectedVersion, NewEvent, Varve};
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// #[rkyv(crate = varvedb::rkyv)]
    /// struct Deposited { cents: u64, memo: String }
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let e = NewEvent::archive("deposited", &Deposited { cents: 5, memo: "rent".into() })?;
    /// db.append(1u128, ExpectedVersion::Auto, [e])?;
    /// let view = db.begin_read()?;
    /// let event = view.event(1)?.expect("stored");
    /// let d = event.access::<rkyv::Archived<Deposited>>()?;
    /// assert_eq!((d.cents.to_native(), d.memo.as_str()), (5, "rent"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn access<T>(&self) -> Result<&'v T, Error>
    where
        T: Portable + for<'a> CheckBytes<HighValidator<'a, rkyv::rancor::Error>>,
    {
        rkyv::access::<T, rkyv::rancor::Error>(self.payload).map_err(|e| Error::InvalidArchive {
            seq: self.seq,
            type_tag: self.type_tag.to_owned(),
            message: e.to_string(),
        })
    }
}

/// What [`ReadView::check_integrity`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Events in the log (all checksums verified).
    pub events: u64,
    /// Streams with at least one event.
    pub streams: u64,
    /// Blobs referenced (all hashes verified).
    pub blob_references: u64,
    /// Highest seq (equal to `events`: the log has no gaps).
    pub last_seq: u64,
}

impl<'db> ReadView<'db> {
    pub(crate) fn new(storage: &'db Storage) -> Result<Self, Error> {
        Ok(ReadView { txn: storage.read_txn()?, storage })
    }

    pub(crate) fn storage(&self) -> &'db Storage {
        self.storage
    }

    pub(crate) fn txn(&self) -> &ReadTxn<'db> {
        &self.txn
    }

    /// The seq of the last committed event in this snapshot (0 if the store is empty).
    ///
    /// # Errors
    /// A storage error.
    pub fn last_seq(&self) -> Result<u64, Error> {
        self.storage.last_seq(&self.txn)
    }

    /// The current version of `stream` (`None` if it has no events).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn stream_version(&self, stream: impl Into<StreamId>) -> Result<Option<u32>, Error> {
        Ok(self.stream_head(stream.into())?.map(|(v, _)| v))
    }

    /// The kind the stream was created with, if any (see
    /// [`WriteBatch::append_kind`](crate::WriteBatch::append_kind)).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn stream_kind(&self, stream: impl Into<StreamId>) -> Result<Option<&str>, Error> {
        Ok(self.stream_head(stream.into())?.and_then(|(_, k)| k))
    }

    fn stream_head(&self, stream: StreamId) -> Result<Option<(u32, Option<&str>)>, Error> {
        let tables = self.storage.tables;
        let Some(raw) = self.storage.get(&self.txn, tables.stream_heads, &key::stream(stream.as_u128()))?
        else {
            return Ok(None);
        };
        let head = value::StreamHead::decode(raw).ok_or_else(|| Error::CorruptIndex {
            table: "stream_heads",
            reason: format!("head of stream {stream} cannot be decoded"),
        })?;
        Ok(Some((head.version, head.kind)))
    }

    /// The fingerprint the store recorded for event type `tag` at schema `version`, if any
    /// typed event of that type and version was ever appended.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn schema_fingerprint(&self, tag: &str, version: u32) -> Result<Option<u64>, Error> {
        let Some(raw) =
            self.storage.get(&self.txn, self.storage.tables.schema, &key::schema(tag, version))?
        else {
            return Ok(None);
        };
        value::decode_fingerprint(raw).map(Some).ok_or_else(|| Error::CorruptIndex {
            table: "schema",
            reason: format!("fingerprint of {tag:?} version {version} is not 8 bytes"),
        })
    }

    /// The event with global sequence number `seq`, if committed in this snapshot.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the seq if the record fails its checksum.
    pub fn event(&self, seq: u64) -> Result<Option<RecordedEvent<'_>>, Error> {
        match self.storage.get(&self.txn, self.storage.tables.events, &key::seq(seq))? {
            None => Ok(None),
            Some(raw) => self.decode(seq, raw).map(Some),
        }
    }

    /// Events of `stream` with version `>= from_version`, oldest first.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`] or
    /// [`Error::CorruptIndex`].
    pub fn read_stream(
        &self,
        stream: impl Into<StreamId>,
        from_version: u32,
    ) -> Result<StreamEvents<'_>, Error> {
        let stream = stream.into();
        let from = key::stream_version(stream.as_u128(), from_version);
        let to = key::stream_version(stream.as_u128(), u32::MAX);
        let raw = self.storage.entries(
            &self.txn,
            self.storage.tables.streams,
            (Included(&from), Included(&to)),
            false,
        )?;
        Ok(StreamEvents { view: self, stream, raw })
    }

    /// Events of `stream` with version `<= from_version`, newest first. Pass `u32::MAX` to
    /// start at the end.
    ///
    /// # Errors
    /// As [`read_stream`](Self::read_stream).
    pub fn read_stream_backward(
        &self,
        stream: impl Into<StreamId>,
        from_version: u32,
    ) -> Result<StreamEvents<'_>, Error> {
        let stream = stream.into();
        let from = key::stream_version(stream.as_u128(), 0);
        let to = key::stream_version(stream.as_u128(), from_version);
        let raw = self.storage.entries(
            &self.txn,
            self.storage.tables.streams,
            (Included(&from), Included(&to)),
            true,
        )?;
        Ok(StreamEvents { view: self, stream, raw })
    }

    /// The global log from `from_seq` on, in commit order.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`].
    pub fn read_all(&self, from_seq: u64) -> Result<LogEvents<'_>, Error> {
        let from = key::seq(from_seq);
        let raw = self.storage.entries(
            &self.txn,
            self.storage.tables.events,
            (Included(&from), Unbounded),
            false,
        )?;
        Ok(LogEvents { view: self, raw })
    }

    fn decode<'v>(&'v self, seq: u64, raw: &'v [u8]) -> Result<RecordedEvent<'v>, Error> {
        let env = Envelope::decode(seq, raw)?;
        let payload = match env.body {
            Body::Inline(p) => p,
            Body::Blob { hash, len } => self.blob(seq, hash, len)?,
        };
        Ok(RecordedEvent {
            seq,
            stream: StreamId::from(env.stream),
            version: env.version,
            timestamp_micros: env.timestamp_micros,
            schema_version: env.schema_version,
            id: env.id,
            type_tag: env.type_tag,
            metadata: env.metadata,
            payload,
        })
    }

    fn blob<'v>(&'v self, seq: u64, hash: &[u8; 32], len: u32) -> Result<&'v [u8], Error> {
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        let bytes = self
            .storage
            .get(&self.txn, self.storage.tables.blobs, hash)?
            .ok_or_else(|| corrupt("payload blob is missing"))?;
        // Content addressing doubles as the blob's checksum.
        if bytes.len() != len as usize || &blob_hash(bytes) != hash {
            return Err(corrupt("payload blob does not match its hash"));
        }
        Ok(bytes)
    }

    /// Verifies the whole store: every record's checksum and blob hash, that seqs run from
    /// 1 without gaps, that every stream's versions run from 1 without gaps, and that the
    /// stream index, stream heads and event-id index agree with the log exactly.
    ///
    /// Reads every event; takes time proportional to the store's size.
    ///
    /// # Errors
    /// The first inconsistency found, as [`Error::Corrupt`] (naming the seq) or
    /// [`Error::CorruptIndex`] (naming the table).
    pub fn check_integrity(&self) -> Result<IntegrityReport, Error> {
        let tables = self.storage.tables;
        let bad = |table: &'static str, reason: String| Error::CorruptIndex { table, reason };
        let mut report = IntegrityReport::default();
        let mut versions: HashMap<u128, u32> = HashMap::new();
        let mut with_ids = 0u64;
        for event in self.read_all(0)? {
            let e = event?;
            let expected_seq = report.last_seq + 1;
            if e.seq != expected_seq {
                return Err(bad("events", format!("seq {} follows seq {} (gap)", e.seq, report.last_seq)));
            }
            report.last_seq = e.seq;
            report.events += 1;
            let stream = e.stream.as_u128();
            let last = versions.entry(stream).or_insert(0);
            if Some(e.version) != last.checked_add(1) {
                return Err(bad(
                    "events",
                    format!("seq {} has version {} after version {last}", e.seq, e.version),
                ));
            }
            *last = e.version;
            let index =
                self.storage.get(&self.txn, tables.streams, &key::stream_version(stream, e.version))?;
            if index.and_then(value::decode_seq) != Some(e.seq) {
                return Err(bad(
                    "streams",
                    format!("entry for seq {} (version {}) is missing or wrong", e.seq, e.version),
                ));
            }
            if let Some(id) = e.id {
                with_ids += 1;
                let at = self.storage.get(&self.txn, tables.event_ids, &key::id(id))?;
                if at.and_then(value::decode_seq) != Some(e.seq) {
                    return Err(bad("event_ids", format!("id of seq {} is missing or wrong", e.seq)));
                }
            }
            let raw = self.storage.get(&self.txn, tables.events, &key::seq(e.seq))?.unwrap_or_default();
            if matches!(Envelope::decode(e.seq, raw)?.body, Body::Blob { .. }) {
                report.blob_references += 1;
            }
        }
        report.streams = versions.len() as u64;
        let count = |table| self.storage.len(&self.txn, table);
        if count(tables.streams)? != report.events {
            return Err(bad("streams", "holds entries for events that are not in the log".into()));
        }
        if count(tables.event_ids)? != with_ids {
            return Err(bad("event_ids", "holds ids of events that are not in the log".into()));
        }
        if count(tables.stream_heads)? != report.streams {
            return Err(bad("stream_heads", "holds heads of streams with no events".into()));
        }
        for (&stream, &version) in &versions {
            if self.stream_version(stream)? != Some(version) {
                return Err(bad(
                    "stream_heads",
                    format!("head of stream {} is not {version}", StreamId::from(stream)),
                ));
            }
        }
        Ok(report)
    }
}

/// Events of one stream, from [`ReadView::read_stream`] or
/// [`ReadView::read_stream_backward`].
pub struct StreamEvents<'v> {
    view: &'v ReadView<'v>,
    stream: StreamId,
    raw: Entries<'v>,
}

impl<'v> Iterator for StreamEvents<'v> {
    type Item = Result<RecordedEvent<'v>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        Some(self.resolve(k, v))
    }
}

impl<'v> StreamEvents<'v> {
    fn resolve(&self, k: &[u8], v: &[u8]) -> Result<RecordedEvent<'v>, Error> {
        let bad = |reason: String| Error::CorruptIndex { table: "streams", reason };
        let (stream, version) =
            key::decode_stream_version(k).ok_or_else(|| bad("key is not 20 bytes".into()))?;
        let seq =
            value::decode_seq(v).ok_or_else(|| bad(format!("value at version {version} is not a seq")))?;
        let event = self
            .view
            .event(seq)?
            .ok_or_else(|| bad(format!("version {version} points at missing seq {seq}")))?;
        if event.stream.as_u128() != stream || event.version != version || self.stream.as_u128() != stream {
            return Err(bad(format!("version {version} points at seq {seq}, which belongs elsewhere")));
        }
        Ok(event)
    }
}

/// The global log, from [`ReadView::read_all`].
pub struct LogEvents<'v> {
    view: &'v ReadView<'v>,
    raw: Entries<'v>,
}

impl<'v> Iterator for LogEvents<'v> {
    type Item = Result<RecordedEvent<'v>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        Some(match key::decode_seq(k) {
            Some(seq) => self.view.decode(seq, v),
            None => Err(Error::CorruptIndex { table: "events", reason: "key is not an 8-byte seq".into() }),
        })
    }
}
