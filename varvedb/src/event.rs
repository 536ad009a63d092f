//! Events as readers hand them out: [`RecordedEvent`], borrowed from a read view, and
//! [`OwnedEvent`], owned, with the conversions between them and the batches a subscription
//! copies events into.

use std::sync::Arc;

use bytes::Bytes;
use rkyv::Portable;
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;

use crate::error::Error;
use crate::id::StreamId;
use crate::record::RecordHeader;

/// One stored event, borrowed from a [`ReadView`](crate::ReadView).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedEvent<'v> {
    pub(crate) seq: u64,
    pub(crate) stream: StreamId,
    pub(crate) version: u32,
    pub(crate) timestamp_micros: u64,
    pub(crate) schema_version: u32,
    pub(crate) id: Option<u128>,
    pub(crate) type_tag: &'v str,
    pub(crate) metadata: &'v [u8],
    pub(crate) payload: &'v [u8],
    pub(crate) shredded: bool,
}

impl<'v> RecordedEvent<'v> {
    #[inline]
    pub(crate) fn new(
        seq: u64,
        head: &RecordHeader<'v>,
        metadata: &'v [u8],
        payload: &'v [u8],
        shredded: bool,
    ) -> Self {
        RecordedEvent {
            seq,
            stream: StreamId::from(head.stream),
            version: head.version,
            timestamp_micros: head.timestamp_micros,
            schema_version: head.schema_version,
            id: head.id,
            type_tag: head.type_tag,
            metadata,
            payload,
            shredded,
        }
    }

    /// A view of an owned event, for handlers that run after the read transaction ended.
    pub(crate) fn from_owned(e: &'v OwnedEvent) -> Self {
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
            shredded: e.shredded,
        }
    }

    /// `self`, copied field by field. An iterator returns the general path's event so, not
    /// written straight into the item: the item's fields are then values the compiler merges
    /// with the common path's, and those the caller never reads are not stored at all, which
    /// matters on every event of a scan. `black_box` keeps the compiler from turning the copy
    /// back into one block copy, which undoes that; it costs the rare path a store and a load.
    #[inline]
    pub(crate) fn rebuilt(self) -> Self {
        RecordedEvent {
            seq: self.seq,
            stream: self.stream,
            version: self.version,
            timestamp_micros: self.timestamp_micros,
            schema_version: self.schema_version,
            id: self.id,
            type_tag: self.type_tag,
            metadata: self.metadata,
            payload: self.payload,
            shredded: std::hint::black_box(self.shredded),
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

    /// The user metadata bytes (empty for a shredded event).
    #[must_use]
    pub fn metadata(&self) -> &'v [u8] {
        self.metadata
    }

    /// The payload bytes: in place in the memory map, or decrypted (empty for a shredded
    /// event; see [`is_shredded`](Self::is_shredded)).
    #[must_use]
    pub fn payload(&self) -> &'v [u8] {
        self.payload
    }

    /// Whether the event's stream was crypto-shredded ([`Varve::shred`](crate::Varve::shred)):
    /// its position, type tag, timestamp and id remain, its metadata and payload are gone.
    #[must_use]
    pub fn is_shredded(&self) -> bool {
        self.shredded
    }

    /// The payload as a validated rkyv archive of type `T` (for example `Archived<MyEvent>`),
    /// accessed in place: no copy, no allocation.
    ///
    /// # Errors
    /// [`Error::InvalidArchive`] if the bytes are not a valid `T`; [`Error::Shredded`] if the
    /// event's stream was shredded.
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
    #[inline]
    pub fn access<T>(&self) -> Result<&'v T, Error>
    where
        T: Portable + for<'a> CheckBytes<HighValidator<'a, rkyv::rancor::Error>>,
    {
        if self.shredded {
            return Err(Error::Shredded { stream: self.stream });
        }
        rkyv::access::<T, rkyv::rancor::Error>(self.payload).map_err(|e| Error::InvalidArchive {
            seq: self.seq,
            type_tag: self.type_tag.to_owned(),
            message: e.to_string(),
        })
    }
}

/// An event delivered by a [`Subscription`](crate::Subscription): owned, so it can cross `.await` points.
///
/// The events of one batch share one buffer for their metadata and payloads, and one copy
/// of each type tag: a subscription allocates per batch, not per event. Cloning an event is
/// cheap (reference counts). Holding on to one event keeps its batch's buffer alive (about
/// 1 MiB, plus the batch's last event, at most); copy out what you keep for long
/// (`payload.to_vec()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEvent {
    /// Global sequence number.
    pub seq: u64,
    /// The stream.
    pub stream: StreamId,
    /// Version inside the stream.
    pub version: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// Schema version of a typed event (0 for raw bytes).
    pub schema_version: u32,
    /// The event's id, if it has one.
    pub id: Option<u128>,
    /// Type tag.
    pub type_tag: Arc<str>,
    /// User metadata (empty if shredded).
    pub metadata: Bytes,
    /// Payload bytes (empty if shredded).
    pub payload: Bytes,
    /// Whether the event's stream was crypto-shredded (see [`RecordedEvent::is_shredded`]).
    pub shredded: bool,
}

impl OwnedEvent {
    /// The payload as a validated rkyv archive of type `T`, read in place from this buffer.
    ///
    /// # Errors
    /// [`Error::InvalidArchive`] if the bytes are not a valid `T`; [`Error::Shredded`].
    pub fn access<T>(&self) -> Result<&T, Error>
    where
        T: Portable + for<'a> CheckBytes<HighValidator<'a, rkyv::rancor::Error>>,
    {
        if self.shredded {
            return Err(Error::Shredded { stream: self.stream });
        }
        rkyv::access::<T, rkyv::rancor::Error>(&self.payload).map_err(|e| Error::InvalidArchive {
            seq: self.seq,
            type_tag: self.type_tag.to_string(),
            message: e.to_string(),
        })
    }
}

impl RecordedEvent<'_> {
    /// An owned copy of the event (its own allocations; a subscription's events share one
    /// buffer per batch instead).
    #[must_use]
    pub fn to_owned_event(&self) -> OwnedEvent {
        OwnedEvent {
            seq: self.seq(),
            stream: self.stream(),
            version: self.version(),
            timestamp_micros: self.timestamp_micros(),
            schema_version: self.schema_version(),
            id: self.id(),
            type_tag: Arc::from(self.type_tag()),
            metadata: Bytes::copy_from_slice(self.metadata()),
            payload: Bytes::copy_from_slice(self.payload()),
            shredded: self.is_shredded(),
        }
    }
}

/// Owned copies of events read in one transaction, sharing one buffer for their bytes and
/// one `Arc<str>` per distinct type tag.
#[derive(Default)]
pub(crate) struct OwnedBatch {
    data: Vec<u8>,
    tags: Vec<Arc<str>>,
    events: Vec<Staged>,
}

/// An event whose bytes are in the batch's buffer but not yet shared out.
/// Kept small (80 bytes, not 128): the reader writes one per event and the consumer reads
/// it back from another core.
struct Staged {
    seq: u64,
    stream: StreamId,
    version: u32,
    timestamp_micros: u64,
    schema_version: u32,
    id: u128,
    has_id: bool,
    shredded: bool,
    tag: u32,
    /// Where the metadata starts in the batch's buffer; the payload follows it.
    start: usize,
    /// Records store both lengths as `u32`.
    metadata_len: u32,
    payload_len: u32,
}

const _: () = assert!(std::mem::size_of::<Staged>() == 80);

/// How many of the batch's newest tags an event's tag is looked up among; a tag not found
/// there gets its own copy.
const TAGS_SEARCHED: usize = 32;

impl OwnedBatch {
    /// An empty batch with room for `events` events holding `bytes` bytes: growing by
    /// doubling would copy about as many bytes again as the batch ends up holding.
    pub(crate) fn with_capacity(events: usize, bytes: usize) -> Self {
        OwnedBatch { data: Vec::with_capacity(bytes), tags: Vec::new(), events: Vec::with_capacity(events) }
    }

    pub(crate) fn push(&mut self, e: &RecordedEvent<'_>) {
        // Few distinct tags per batch is the common case; the search is bounded either way.
        let recent = self.tags.len().saturating_sub(TAGS_SEARCHED);
        let tag = match self.tags[recent..].iter().rposition(|t| **t == *e.type_tag()) {
            Some(i) => recent + i,
            None => {
                self.tags.push(Arc::from(e.type_tag()));
                self.tags.len() - 1
            }
        };
        let (metadata, payload) = (e.metadata(), e.payload());
        let start = self.data.len();
        if !metadata.is_empty() {
            self.data.extend_from_slice(metadata);
        }
        self.data.extend_from_slice(payload);
        self.events.push(Staged {
            seq: e.seq(),
            stream: e.stream(),
            version: e.version(),
            timestamp_micros: e.timestamp_micros(),
            schema_version: e.schema_version(),
            id: e.id().unwrap_or(0),
            has_id: e.id().is_some(),
            shredded: e.is_shredded(),
            // Fewer tags than events, and a batch has far fewer than `u32::MAX` events.
            tag: tag as u32,
            start,
            metadata_len: metadata.len() as u32,
            payload_len: payload.len() as u32,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Bytes of metadata and payload held so far.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn finish(self) -> Vec<OwnedEvent> {
        self.seal().collect()
    }

    /// The batch as an iterator that makes each `OwnedEvent` only when it is taken, so a
    /// subscription's events are built once, by the consumer, instead of being built by the
    /// reader and then moved through a queue.
    pub(crate) fn seal(self) -> SealedBatch {
        // A `Bytes` made from a `Vec` checks on every clone whether it is still unshared; its
        // first clone is shared for good, so keep that one and slice it per event.
        let data = Bytes::from(self.data).slice(..);
        SealedBatch { data, tags: self.tags, events: self.events.into_iter() }
    }
}

/// The events of a read batch, handed out one by one.
pub(crate) struct SealedBatch {
    data: Bytes,
    tags: Vec<Arc<str>>,
    events: std::vec::IntoIter<Staged>,
}

impl SealedBatch {
    /// The seq of the next event, if any is left.
    pub(crate) fn peek_seq(&self) -> Option<u64> {
        self.events.as_slice().first().map(|s| s.seq)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.len() == 0
    }
}

impl Default for SealedBatch {
    fn default() -> Self {
        OwnedBatch::default().seal()
    }
}

impl Iterator for SealedBatch {
    type Item = OwnedEvent;

    // Inlined into the caller's crate, the event is built where the caller keeps it instead
    // of being returned through memory and copied; the compiler does not take `#[inline]`
    // alone across the crate boundary here.
    #[expect(clippy::inline_always, reason = "the hint alone is not taken; the copy is on every event")]
    #[inline(always)]
    fn next(&mut self) -> Option<OwnedEvent> {
        let s = self.events.next()?;
        let middle = s.start + s.metadata_len as usize;
        // Most events have no metadata: an empty `Bytes` needs no reference count.
        let metadata = if s.metadata_len == 0 { Bytes::new() } else { self.data.slice(s.start..middle) };
        Some(OwnedEvent {
            seq: s.seq,
            stream: s.stream,
            version: s.version,
            timestamp_micros: s.timestamp_micros,
            schema_version: s.schema_version,
            id: s.has_id.then_some(s.id),
            type_tag: Arc::clone(&self.tags[s.tag as usize]),
            metadata,
            payload: self.data.slice(middle..middle + s.payload_len as usize),
            shredded: s.shredded,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl ExactSizeIterator for SealedBatch {}

/// The fields of one event, as [`ReplicatedEvent::from_fields`] encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// Position inside its stream, from 1.
    pub version: u32,
    /// Microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// The event's id, if it has one.
    pub id: Option<u128>,
    /// The type tag (1 to 255 bytes).
    pub type_tag: &'a str,
    /// The schema version of the event type (0: untyped bytes).
    pub schema_version: u32,
    /// User metadata.
    pub metadata: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// One event of a store's log as the store keeps it, for a read replica: its seq, its record
/// (the bytes of the `events` table, checksum included) and, for a payload kept apart
/// (over 1 KiB), the blob the record names; and the kind of its stream (the aggregate a
/// typed stream belongs to), which the leader keeps in the stream's head.
///
/// A leader hands these out ([`Varve::export_replicated`](crate::Varve::export_replicated));
/// a replica writes them unchanged ([`Varve::import_replicated`](crate::Varve::import_replicated)),
/// so every field (seq, stream, version, timestamp, id, type tag, schema version, metadata,
/// payload) and the bytes around them are the leader's.
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Options, ReplicatedEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// # let replica_dir = tempfile::tempdir()?;
/// let leader = Varve::open(dir.path())?;
/// leader.append(7u128, ExpectedVersion::Auto, [NewEvent::new("opened", b"{}".to_vec())])?;
/// let events = leader.export_replicated(0, 100)?;
/// // What travels: the seq, the record and the blob, as bytes.
/// let copy = ReplicatedEvent::from_parts(1, events[0].record().to_vec(), None, None)?;
/// let replica = Options::new().replica(true).open(replica_dir.path())?;
/// replica.import_replicated(&[copy])?;
/// assert_eq!(replica.export_replicated(0, 100)?, events);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedEvent {
    pub(crate) seq: u64,
    pub(crate) stream: StreamId,
    pub(crate) version: u32,
    pub(crate) id: Option<u128>,
    pub(crate) record: Bytes,
    pub(crate) blob: Option<Bytes>,
    pub(crate) stream_kind: Option<Arc<str>>,
    /// An encrypted store's: the stream's `keys` entry, with its first event or once it
    /// is shredded.
    pub(crate) stream_key: Option<Bytes>,
    /// An encrypted store's: the MAC of a shredded event's clear header.
    pub(crate) header_mac: Option<[u8; 32]>,
    /// Whether the record is sealed.
    pub(crate) sealed: bool,
    /// Entries of the leader's schema registry the event needs (its type's fingerprint and
    /// layout, its stream kind's event list, typed metadata layouts), as `schema` table keys
    /// and values; carried with the first event of an export that needs each.
    pub(crate) schema: Vec<(Bytes, Bytes)>,
}

impl ReplicatedEvent {
    /// An event received from a leader, checked: the record's checksum (which covers its
    /// seq), its layout, that `blob` is the one it names (present, same length and hash),
    /// or absent if it names none, and that `stream_kind` is 1 to 255 bytes if given.
    ///
    /// An encrypted store's record names its blob too; it may come without it when its
    /// stream was shredded on the leader (which deletes a shredded stream's blobs), and the
    /// import then requires the stream's shredded marker
    /// ([`with_key_material`](Self::with_key_material)).
    ///
    /// # Errors
    /// [`Error::ReplicaMismatch`] if the record is damaged or not stored under `seq`, the
    /// blob does not match, or the kind is empty or too long.
    pub fn from_parts(
        seq: u64,
        record: impl Into<Bytes>,
        blob: Option<Vec<u8>>,
        stream_kind: Option<&str>,
    ) -> Result<Self, Error> {
        use crate::record::{Body, Content};
        let record: Bytes = record.into();
        let mismatch = |reason: String| Error::ReplicaMismatch { seq, reason };
        if stream_kind.is_some_and(|k| k.is_empty() || k.len() > 255) {
            return Err(mismatch("a stream kind must be 1 to 255 bytes".into()));
        }
        let env = crate::record::Envelope::decode(seq, &record).map_err(|e| mismatch(e.to_string()))?;
        let (sealed, body) = match env.content {
            Content::Sealed { body, .. } => (true, body),
            Content::Plain { body, .. } => (false, body),
        };
        match body {
            Body::Inline(_) => {
                if blob.is_some() {
                    return Err(mismatch("a blob came with a record that names none".into()));
                }
            }
            Body::Blob { hash, len } => match &blob {
                None if sealed => {}
                None => return Err(mismatch("the record names a blob that did not come with it".into())),
                Some(blob) => {
                    if blob.len() != len as usize || crate::record::blob_hash(blob) != *hash {
                        return Err(mismatch("the blob is not the one the record names".into()));
                    }
                }
            },
        }
        Ok(ReplicatedEvent {
            seq,
            stream: StreamId::from(env.head.stream),
            version: env.head.version,
            id: env.head.id,
            blob: blob.map(Bytes::from),
            record,
            stream_kind: stream_kind.map(Arc::from),
            stream_key: None,
            header_mac: None,
            sealed,
            schema: Vec::new(),
        })
    }

    /// An event of a log whose order another system decides (local-first sync: a hub
    /// orders events several stores wrote), encoded as the record it has under `seq`. The
    /// encoding is a function of `seq`, `fields` and `stream_kind` alone, so every store
    /// importing the same fields under the same seq holds the same bytes; a payload over
    /// 1 KiB is kept apart as a blob, as an append keeps it.
    ///
    /// ```
    /// use varvedb::{EventFields, Options, ReplicatedEvent};
    /// # let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    /// let fields = EventFields {
    ///     stream: 7u128.into(), version: 1, timestamp_micros: 1_000, id: Some(42),
    ///     type_tag: "opened", schema_version: 0, metadata: b"", payload: b"{}",
    /// };
    /// let (one, two) = (Options::new().replica(true).open(a.path())?, Options::new().replica(true).open(b.path())?);
    /// one.import_replicated(&[ReplicatedEvent::from_fields(1, &fields, None)?])?;
    /// two.import_replicated(&[ReplicatedEvent::from_fields(1, &fields, None)?])?;
    /// assert_eq!(one.export_replicated(0, 10)?, two.export_replicated(0, 10)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ReplicaMismatch`] if a field cannot be stored: seq or version 0, a type tag
    /// or stream kind not 1 to 255 bytes, metadata or payload of 4 GiB or more.
    pub fn from_fields(seq: u64, fields: &EventFields<'_>, stream_kind: Option<&str>) -> Result<Self, Error> {
        use crate::record::{BLOB_THRESHOLD, Body, Content, Envelope, blob_hash};
        let mismatch = |reason: &str| Error::ReplicaMismatch { seq, reason: reason.to_owned() };
        if seq == 0 || fields.version == 0 {
            return Err(mismatch("seqs and versions start at 1"));
        }
        if fields.type_tag.is_empty() || fields.type_tag.len() > 255 {
            return Err(mismatch("a type tag must be 1 to 255 bytes"));
        }
        if stream_kind.is_some_and(|k| k.is_empty() || k.len() > 255) {
            return Err(mismatch("a stream kind must be 1 to 255 bytes"));
        }
        let Ok(payload_len) = u32::try_from(fields.payload.len()) else {
            return Err(mismatch("the payload is 4 GiB or more"));
        };
        if u32::try_from(fields.metadata.len()).is_err() {
            return Err(mismatch("the metadata is 4 GiB or more"));
        }
        let hash;
        let (body, blob) = if fields.payload.len() > BLOB_THRESHOLD {
            hash = blob_hash(fields.payload);
            (Body::Blob { hash: &hash, len: payload_len }, Some(Bytes::copy_from_slice(fields.payload)))
        } else {
            (Body::Inline(fields.payload), None)
        };
        let envelope = Envelope {
            head: RecordHeader {
                stream: fields.stream.as_u128(),
                version: fields.version,
                timestamp_micros: fields.timestamp_micros,
                schema_version: fields.schema_version,
                id: fields.id,
                type_tag: fields.type_tag,
            },
            content: Content::Plain { metadata: fields.metadata, body },
        };
        let mut record = Vec::new();
        envelope.encode_into(seq, &mut record);
        Ok(ReplicatedEvent {
            seq,
            stream: fields.stream,
            version: fields.version,
            id: fields.id,
            record: record.into(),
            blob,
            stream_kind: stream_kind.map(Arc::from),
            stream_key: None,
            header_mac: None,
            sealed: false,
            schema: Vec::new(),
        })
    }

    /// Adds the entries of the leader's schema registry that came with the event
    /// ([`schema_entries`](Self::schema_entries)), so the replica's typed reads check and
    /// describe events as the leader's do.
    ///
    /// # Errors
    /// [`Error::ReplicaMismatch`] for a key that is no registry entry's.
    pub fn with_schema_entries(mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Self, Error> {
        use crate::storage::key;
        for (k, _) in &entries {
            if key::decode_schema(k).is_none() && !key::is_kind_events(k) && !key::is_meta_layout(k) {
                return Err(Error::ReplicaMismatch {
                    seq: self.seq,
                    reason: "a schema entry with a key of no registry entry".into(),
                });
            }
        }
        self.schema = entries.into_iter().map(|(k, v)| (Bytes::from(k), Bytes::from(v))).collect();
        Ok(self)
    }

    /// Entries of the leader's schema registry (keys and values of its `schema` table, see
    /// `docs/design.md`) that came with this event: the fingerprint and layout of its type
    /// and schema version, its stream kind's event list, and typed metadata layouts, each
    /// with the first event of an export that needs it.
    pub fn schema_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.schema.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    /// Adds what an encrypted store's event carries besides its record: `stream_key`, the
    /// stream's entry of the leader's `keys` table (its wrapped data key, with the stream's
    /// first event, or its shredded marker), and `header_mac`, a shredded event's header
    /// MAC. Both are opaque here; the import authenticates them under the replica's master
    /// key.
    ///
    /// # Errors
    /// [`Error::ReplicaMismatch`] for a record that is not sealed, or a `keys` entry of
    /// neither shape.
    pub fn with_key_material(
        mut self,
        stream_key: Option<Vec<u8>>,
        header_mac: Option<[u8; 32]>,
    ) -> Result<Self, Error> {
        let mismatch = |reason: &str| Error::ReplicaMismatch { seq: self.seq, reason: reason.to_owned() };
        if (stream_key.is_some() || header_mac.is_some()) && !self.sealed {
            return Err(mismatch("key material came with an event that is not encrypted"));
        }
        if stream_key.as_deref().is_some_and(|k| crate::crypto::key_epoch(k).is_none()) {
            return Err(mismatch("the stream's key is neither a wrapped key nor a shredded marker"));
        }
        self.stream_key = stream_key.map(Bytes::from);
        self.header_mac = header_mac;
        Ok(self)
    }

    /// An encrypted store's event: the stream's `keys` entry on the leader (wrapped data key
    /// or shredded marker), carried with the stream's first event and with every event of a
    /// shredded stream.
    #[must_use]
    pub fn stream_key(&self) -> Option<&[u8]> {
        self.stream_key.as_deref()
    }

    /// An encrypted store's shredded event: the MAC of its clear header, the leader's.
    #[must_use]
    pub fn header_mac(&self) -> Option<&[u8; 32]> {
        self.header_mac.as_ref()
    }

    /// Whether the record is sealed (an encrypted store's).
    #[must_use]
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Global sequence number, the leader's.
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

    /// The event's id, if it has one.
    #[must_use]
    pub fn id(&self) -> Option<u128> {
        self.id
    }

    /// The kind of the event's stream on the leader (the aggregate of a typed stream).
    #[must_use]
    pub fn stream_kind(&self) -> Option<&str> {
        self.stream_kind.as_deref()
    }

    /// The stored record, as the leader keeps it.
    #[must_use]
    pub fn record(&self) -> &[u8] {
        &self.record
    }

    /// The payload kept apart from the record, for a payload over 1 KiB.
    #[must_use]
    pub fn blob(&self) -> Option<&[u8]> {
        self.blob.as_deref()
    }
}

/// A stream shredded on an encrypted leader, for its replicas: the stream, the leader's
/// shredded marker (which only the master key can make) and the leader's last seq when this
/// was taken. A shred changes no event, so it travels apart from the log; a replica applies
/// it ([`Varve::import_shred`](crate::Varve::import_shred)) once its log reaches `after`,
/// which then holds every event of the stream as the leader had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedShred {
    pub(crate) stream: StreamId,
    pub(crate) after: u64,
    pub(crate) marker: Bytes,
}

impl ReplicatedShred {
    /// A shred received from a leader. The marker is opaque here: the import authenticates it.
    ///
    /// # Errors
    /// [`Error::ReplicaMismatch`] (at seq `after`) for a marker of the wrong shape.
    pub fn from_parts(
        stream: impl Into<StreamId>,
        after: u64,
        marker: impl Into<Bytes>,
    ) -> Result<Self, Error> {
        let marker: Bytes = marker.into();
        if !crate::crypto::Master::is_marker(&marker) {
            return Err(Error::ReplicaMismatch {
                seq: after,
                reason: "a shred without a shredded marker".into(),
            });
        }
        Ok(ReplicatedShred { stream: stream.into(), after, marker })
    }

    /// The shredded stream.
    #[must_use]
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The leader's last seq when the shred was exported: a replica applies it at or past it.
    #[must_use]
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The leader's shredded marker of the stream.
    #[must_use]
    pub fn marker(&self) -> &[u8] {
        &self.marker
    }

    /// The master key epoch the marker was sealed at (1 at creation, +1 per rotation).
    #[must_use]
    pub fn key_epoch(&self) -> u32 {
        crate::crypto::key_epoch(&self.marker).unwrap_or_default()
    }
}
