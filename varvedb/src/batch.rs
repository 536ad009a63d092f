//! What a write request is made of: events to append, the expectation each stream append
//! states, the batch that groups them, and where they landed.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::error::Error;
use crate::id::StreamId;

/// What a writer expects of a stream's version before its events are appended.
///
/// Checked inside the write transaction, so there is no window between the check and the
/// append. A failed check yields [`Error::ConcurrencyConflict`] and writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check: append at the end, creating the stream if needed.
    Auto,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (hold at least one event).
    StreamExists,
    /// The stream must be exactly at this version (its last event has this version).
    /// `Exact(0)` is the same as [`NoStream`](Self::NoStream).
    Exact(u32),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (`None`: missing) satisfies this expectation.
    #[must_use]
    pub fn is_satisfied_by(self, actual: Option<u32>) -> bool {
        match self {
            ExpectedVersion::Auto => true,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(n) => actual == Some(n),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Auto => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// An event to append: a type tag, the payload bytes, optional metadata and an optional id.
///
/// The payload is opaque to the store; typically an rkyv archive made with
/// [`NewEvent::archive`], which readers access in place with
/// [`RecordedEvent::access`](crate::RecordedEvent::access).
///
/// ```
/// use varvedb::NewEvent;
/// let e = NewEvent::new("order.placed", b"raw bytes".to_vec())
///     .with_metadata(b"{\"user\":7}".to_vec())
///     .with_id(0x1234);
/// assert_eq!(e.type_tag(), "order.placed");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Borrowed for typed events (their `NAME`): no allocation per event.
    pub(crate) type_tag: Cow<'static, str>,
    pub(crate) payload: Vec<u8>,
    pub(crate) metadata: Vec<u8>,
    pub(crate) id: Option<u128>,
    pub(crate) schema: Option<SchemaId>,
    /// The time to record instead of the commit's (restoring an exported store).
    pub(crate) timestamp: Option<u64>,
    /// Typed metadata's fingerprint and layout description, recorded in the registry on
    /// first use so that tools can read the metadata without its type.
    pub(crate) meta_layout: Option<(u64, LayoutFn)>,
}

/// A typed event's schema identity: its version and structural fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SchemaId {
    pub(crate) version: u32,
    pub(crate) fingerprint: u64,
    /// The encoded layout description, made only when the registry first records the type.
    pub(crate) layout: Option<LayoutFn>,
}

/// Where an encoded layout description comes from: a typed event's or metadata type's
/// own description, or one read from elsewhere (an export being imported).
#[derive(Clone, Copy)]
pub(crate) enum LayoutFn {
    /// Built from the type, only when the registry first records it.
    Typed(fn() -> Vec<u8>),
    /// Given by the caller, encoded; checked when the request is planned.
    Given(&'static [u8]),
}

impl LayoutFn {
    /// The description as the registry stores it.
    pub(crate) fn encode(self) -> Vec<u8> {
        match self {
            LayoutFn::Typed(f) => f(),
            LayoutFn::Given(bytes) => bytes.to_vec(),
        }
    }
}

impl std::fmt::Debug for LayoutFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayoutFn")
    }
}

// The description follows from the fingerprint's type: identities compare without it.
impl PartialEq for LayoutFn {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for LayoutFn {}
impl std::hash::Hash for LayoutFn {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// Largest archive buffer a thread keeps between `NewEvent::archive` calls.
const ARCHIVE_BUF_KEPT: usize = 64 * 1024;

impl NewEvent {
    /// An event with the given type tag (1 to 255 bytes) and payload.
    pub fn new(type_tag: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        NewEvent {
            type_tag: Cow::Owned(type_tag.into()),
            payload: payload.into(),
            metadata: Vec::new(),
            id: None,
            schema: None,
            timestamp: None,
            meta_layout: None,
        }
    }

    /// An event whose payload is the rkyv archive of `value`, readable in place with
    /// [`RecordedEvent::access::<Archived<T>>`](crate::RecordedEvent::access).
    ///
    /// # Errors
    /// [`Error::Serialize`] if rkyv fails to serialize the value.
    ///
    /// ```
    /// use varvedb::{NewEvent, rkyv};
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// #[rkyv(crate = varvedb::rkyv)]
    /// struct Deposited { cents: u64 }
    /// let e = NewEvent::archive("deposited", &Deposited { cents: 5 })?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn archive<T>(type_tag: impl Into<String>, value: &T) -> Result<Self, Error>
    where
        T: for<'a> rkyv::Serialize<
                rkyv::api::high::HighSerializer<
                    rkyv::util::AlignedVec,
                    rkyv::ser::allocator::ArenaHandle<'a>,
                    rkyv::rancor::Error,
                >,
            >,
    {
        thread_local! {
            // Archiving into a fresh vector grew it several times per event (a realloc each);
            // this one keeps its size, and the event gets an exact copy: one allocation.
            // Taken out while in use, so a nested call only finds it empty.
            static BUF: std::cell::Cell<rkyv::util::AlignedVec> = std::cell::Cell::new(rkyv::util::AlignedVec::new());
        }
        let mut buf = BUF.take();
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, buf)
            .map_err(|e| Error::Serialize(e.to_string()))?;
        let event = NewEvent::new(type_tag, buf.as_slice());
        // One huge event must not stay allocated on every thread that archived one.
        if buf.capacity() <= ARCHIVE_BUF_KEPT {
            BUF.set(buf);
        }
        Ok(event)
    }

    /// Attaches user metadata (correlation ids, actor, ...), stored beside the payload.
    #[must_use]
    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> Self {
        self.metadata = metadata.into();
        self.meta_layout = None;
        self
    }

    /// Gives the event a unique id. Retrying a request whose events all carry ids that are
    /// already stored returns the original positions instead of appending again.
    #[must_use]
    pub fn with_id(mut self, id: u128) -> Self {
        self.id = Some(id);
        self
    }

    /// Records the event with this schema version and fingerprint, as a typed event of that
    /// version would be: the store checks the fingerprint against its registry (and registers
    /// it on first use). For copying events between stores; typed events get theirs from
    /// [`NewEvent::from_event`].
    #[must_use]
    pub fn with_schema(mut self, version: u32, fingerprint: u64) -> Self {
        self.schema = Some(SchemaId { version, fingerprint, layout: None });
        self
    }

    /// [`with_schema`](Self::with_schema), with the layout description the registry records
    /// beside the fingerprint if this is the schema's first use in the store: for copying
    /// events of types this program does not have (an import). The description is taken on
    /// trust (only its encoding is checked, and a request with a damaged one is refused with
    /// [`Error::BadLayoutDescription`]); a wrong one makes tools decode the events wrongly
    /// or fail to, never the store. `layout` is an encoded description, as
    /// [`Layout::encode`](crate::Layout::encode) writes it.
    #[must_use]
    pub fn with_described_schema(mut self, version: u32, fingerprint: u64, layout: &'static [u8]) -> Self {
        self.schema = Some(SchemaId { version, fingerprint, layout: Some(LayoutFn::Given(layout)) });
        self
    }

    /// Metadata bytes in the typed form (fingerprint `u64` LE ‖ rkyv archive, as
    /// [`Pending::with_meta`](crate::Pending::with_meta) stores it), with the layout
    /// description the registry records for that fingerprint on its first use: for copying
    /// typed metadata whose type this program does not have. Bytes shorter than a
    /// fingerprint are stored as plain metadata. `layout` is encoded and checked as for
    /// [`with_described_schema`](Self::with_described_schema).
    #[must_use]
    pub fn with_described_metadata(self, metadata: impl Into<Vec<u8>>, layout: &'static [u8]) -> Self {
        let mut event = self.with_metadata(metadata);
        if let Some(fp) = event.metadata.first_chunk::<8>() {
            event.meta_layout = Some((u64::from_le_bytes(*fp), LayoutFn::Given(layout)));
        }
        event
    }

    /// Records the event with this timestamp (microseconds since the Unix epoch) instead of
    /// the commit's, for copying events between stores. Timestamps still never go backwards
    /// in the log: one below the last recorded is raised to it, and one in the future holds
    /// every later event's at least as high.
    #[must_use]
    pub fn with_timestamp(mut self, micros: u64) -> Self {
        self.timestamp = Some(micros);
        self
    }

    /// The event's type tag.
    #[must_use]
    pub fn type_tag(&self) -> &str {
        &self.type_tag
    }

    /// The payload bytes.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The metadata bytes.
    #[must_use]
    pub fn metadata(&self) -> &[u8] {
        &self.metadata
    }

    /// The event's id, if it has one.
    #[must_use]
    pub fn id(&self) -> Option<u128> {
        self.id
    }
}

/// A stream kind: an aggregate's `KIND`, borrowed, or a caller's string, one copy shared by
/// consecutive appends of a batch that name the same kind.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Static(&'static str),
    Shared(Arc<str>),
}

impl std::ops::Deref for Kind {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Kind::Static(kind) => kind,
            Kind::Shared(kind) => kind,
        }
    }
}

/// Identity of an event type, as an aggregate lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventInfo {
    /// The type tag.
    pub name: &'static str,
    /// The schema version.
    pub version: u32,
    /// The structural fingerprint.
    pub fingerprint: u64,
    /// The older version this one reads through [`Upcast`](crate::Upcast)
    /// (`#[event(upcast = Old)]`), whose own entry names the one before it, and so on.
    pub upcasts_from: Option<&'static EventInfo>,
}

impl EventInfo {
    /// Whether events stored under `type_tag` at `version` read as this type: this version,
    /// or an older one on its upcast chain.
    #[must_use]
    pub fn accepts(&self, type_tag: &str, version: u32) -> bool {
        type_tag == self.name && self.chain().any(|info| info.version == version)
    }

    /// This version, then each older one it upcasts from, newest first.
    pub fn chain(&self) -> impl Iterator<Item = &EventInfo> {
        std::iter::successors(Some(self), |info| info.upcasts_from)
    }
}

/// The aggregates whose typed streams this process has opened: each kind with the events
/// its aggregate applies. The writer treats an append under a registered kind as a typed
/// append of that aggregate would be (it checks the events, and records the list).
#[derive(Debug, Default)]
pub(crate) struct KindRegistry(std::sync::RwLock<Vec<(&'static str, &'static [EventInfo])>>);

impl KindRegistry {
    /// Records `kind`'s events, unless it is recorded already.
    pub(crate) fn register(&self, kind: &'static str, events: &'static [EventInfo]) {
        let known = |list: &[(&str, &[EventInfo])]| list.iter().any(|(k, e)| *k == kind && *e == events);
        if known(&self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            return;
        }
        let mut list = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !known(&list) {
            // One build has one list per kind; a second list for a kind (two aggregates
            // sharing a name) replaces the first, as their typed appends would.
            list.retain(|(k, _)| *k != kind);
            list.push((kind, events));
        }
    }

    /// The events of `kind`, if registered.
    pub(crate) fn get(&self, kind: &str) -> Option<&'static [EventInfo]> {
        let list = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        list.iter().find(|(k, _)| *k == kind).map(|(_, e)| *e)
    }
}

/// The events a request appends to one stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamAppend {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) kind: Option<Kind>,
    /// Every event the aggregate of `kind` applies, when the typed layer made the append:
    /// the writer records it as the kind's rule for untyped appends.
    pub(crate) handles: Option<&'static [EventInfo]>,
    /// Where its events are in the batch's `events`.
    pub(crate) events: Range<usize>,
}

/// One atomic write request, possibly spanning several streams.
///
/// Either every append in the batch is stored, or none is. Appends are applied in the order
/// they were added, so a batch may name the same stream twice (the second expectation is
/// checked against the version the first one leaves).
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve, WriteBatch};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let mut batch = WriteBatch::new();
/// batch.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("debited", b"5".to_vec())]);
/// batch.append(2u128, ExpectedVersion::NoStream, [NewEvent::new("credited", b"5".to_vec())]);
/// let done = db.write(batch)?;
/// assert_eq!((done[0].first_seq, done[1].first_seq), (1, 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub(crate) appends: Vec<StreamAppend>,
    /// The events of every append, in order: one vector for the batch rather than one per
    /// append (a batch over many streams has about one event per append).
    pub(crate) events: Vec<NewEvent>,
}

impl WriteBatch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        WriteBatch::default()
    }

    /// Adds events for `stream`, checked against `expected`.
    pub fn append(
        &mut self,
        stream: impl Into<StreamId>,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> &mut Self {
        self.push(stream.into(), expected, None, events);
        self
    }

    /// Like [`append`](Self::append), and also requires the stream to be of `kind` (for
    /// example an aggregate type). A new stream records the kind; appending to a stream of
    /// another kind fails with [`Error::StreamKindMismatch`].
    pub fn append_kind(
        &mut self,
        stream: impl Into<StreamId>,
        kind: impl AsRef<str>,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> &mut Self {
        let kind = kind.as_ref();
        let kind = match self.appends.last().and_then(|last| last.kind.as_ref()) {
            Some(last) if **last == *kind => last.clone(),
            _ => Kind::Shared(Arc::from(kind)),
        };
        self.push(stream.into(), expected, Some(kind), events);
        self
    }

    /// [`append_kind`](Self::append_kind) with a kind known at compile time (an aggregate's
    /// `KIND`, with the events it applies): no allocation for it.
    pub(crate) fn append_static_kind(
        &mut self,
        stream: StreamId,
        (kind, handles): (&'static str, &'static [EventInfo]),
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> &mut Self {
        if self.events.is_empty() {
            // The caller's vector becomes the batch's: no copy.
            let end = events.len();
            self.events = events;
            self.appends.push(StreamAppend {
                stream,
                expected,
                kind: Some(Kind::Static(kind)),
                handles: Some(handles),
                events: 0..end,
            });
        } else {
            self.push(stream, expected, Some(Kind::Static(kind)), events);
            if let Some(last) = self.appends.last_mut() {
                last.handles = Some(handles);
            }
        }
        self
    }

    fn push(
        &mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        kind: Option<Kind>,
        events: impl IntoIterator<Item = NewEvent>,
    ) {
        let start = self.events.len();
        self.events.extend(events);
        self.appends.push(StreamAppend {
            stream,
            expected,
            kind,
            handles: None,
            events: start..self.events.len(),
        });
    }

    /// The events of `part`, one of this batch's appends.
    pub(crate) fn events_of(&self, part: &StreamAppend) -> &[NewEvent] {
        &self.events[part.events.clone()]
    }

    /// Number of stream appends in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.appends.len()
    }

    /// Whether the batch has no appends.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.appends.is_empty()
    }
}

/// Where one stream append of a request landed.
///
/// Events of one append get consecutive versions and consecutive seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Appended {
    /// The stream appended to.
    pub stream: StreamId,
    /// Version of the first event appended.
    pub first_version: u32,
    /// Version of the last event appended (the stream's version after the append).
    pub last_version: u32,
    /// Global sequence number of the first event.
    pub first_seq: u64,
    /// Global sequence number of the last event.
    pub last_seq: u64,
    /// `true` when every event carried an id that was already stored: nothing was written,
    /// and the positions are those of the original append.
    pub deduplicated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_rules() {
        use ExpectedVersion::*;
        assert!(Auto.is_satisfied_by(None) && Auto.is_satisfied_by(Some(3)));
        assert!(NoStream.is_satisfied_by(None) && !NoStream.is_satisfied_by(Some(1)));
        assert!(Exact(0).is_satisfied_by(None) && !Exact(0).is_satisfied_by(Some(1)));
        assert!(StreamExists.is_satisfied_by(Some(1)) && !StreamExists.is_satisfied_by(None));
        assert!(Exact(3).is_satisfied_by(Some(3)) && !Exact(3).is_satisfied_by(Some(4)));
        assert!(!Exact(3).is_satisfied_by(None));
    }
}
