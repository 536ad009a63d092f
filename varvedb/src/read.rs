//! Read views: consistent snapshots over one LMDB read transaction.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::crypto::{Encryption, Master, StreamKey};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::record::{self, Body, Content, Envelope, RecordHeader, Verified};
use std::ops::Bound::{Included, Unbounded};

use crate::id::StreamId;
use crate::storage::{Entries, LogEntries, ReadTxn, Storage, key, value};

/// A consistent snapshot of the store, over one read transaction.
///
/// Everything read through a view reflects the same instant, whatever commits meanwhile.
/// Events borrow from the view: their payloads point into the store's memory map, with no
/// copy. Keep views short-lived: an open view pins the pages it sees, so the file grows while
/// it lives. A view is `Send`, but must not be held across an `.await` in a busy task.
///
/// In an encrypted store, an event read through a view is decrypted into memory the view
/// owns until it is dropped (the one exception to zero-copy). Long reads of encrypted
/// streams should use [`StreamEvents::next_reusing`] or [`LogEvents::next_reusing`], which
/// decrypt into one reusable buffer instead; [`Stream::load`](crate::Stream::load) does.
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
    crypto: Option<ViewCrypto>,
}

/// What a view of an encrypted store needs: the master its snapshot's keys are wrapped
/// with, the data keys unwrapped so far, and memory for decrypted events.
struct ViewCrypto {
    master: Arc<Master>,
    /// Data keys unwrapped so far, and the markers of shredded streams met.
    keys: RefCell<HashMap<u128, StreamKey>>,
    arena: bumpalo::Bump,
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
    /// Events of shredded streams: their checksums were verified, their contents cannot be.
    pub shredded_events: u64,
}

impl<'db> ReadView<'db> {
    pub(crate) fn new(storage: &'db Storage, encryption: Option<&Encryption>) -> Result<Self, Error> {
        let Some(encryption) = encryption else {
            return Ok(ReadView { txn: storage.read_txn()?, storage, crypto: None });
        };
        // Held while the snapshot starts: a key rotation cannot commit in between, so the
        // master matches the wrapped keys this snapshot sees.
        let master = encryption.read();
        let txn = storage.read_txn()?;
        let crypto = ViewCrypto {
            master: Arc::clone(&master),
            keys: RefCell::new(HashMap::new()),
            arena: bumpalo::Bump::new(),
        };
        Ok(ReadView { txn, storage, crypto: Some(crypto) })
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

    /// The version and kind of `stream`, in one lookup (`None` if it has no events).
    pub(crate) fn stream_head(&self, stream: StreamId) -> Result<Option<(u32, Option<&str>)>, Error> {
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
        self.event_with(seq, |n| self.arena(n))
    }

    /// The event at `seq`; an encrypted one is decrypted into the buffer `plain` gives.
    fn event_with<'a>(
        &'a self,
        seq: u64,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Result<Option<RecordedEvent<'a>>, Error> {
        match self.storage.get(&self.txn, self.storage.tables.events, &key::seq(seq))? {
            None => Ok(None),
            Some(raw) => self.decode_with(seq, raw, plain).map(Some),
        }
    }

    /// `n` bytes of the view's memory for a decrypted event.
    fn arena(&self, n: usize) -> &mut [u8] {
        match &self.crypto {
            Some(c) => c.arena.alloc_slice_fill_copy(n, 0u8),
            // Only encrypted records ask for memory, and a store without a key refuses those
            // before asking.
            None => &mut [],
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
        // No upper bound: `StreamEvents` stops at the first key of another stream (the
        // bound would be one more allocation, and a comparison per entry).
        let raw = self.storage.entries(
            &self.txn,
            self.storage.tables.streams,
            (Included(&from), Unbounded),
            false,
        )?;
        Ok(StreamEvents { view: self, stream, raw, log: LogSteps::new(true), ahead: Ahead::new() })
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
        Ok(StreamEvents { view: self, stream, raw, log: LogSteps::new(false), ahead: Ahead::new() })
    }

    /// The global log from `from_seq` on, in commit order.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`].
    pub fn read_all(&self, from_seq: u64) -> Result<LogEvents<'_>, Error> {
        let raw = self.storage.log_from(&self.txn, from_seq)?;
        Ok(LogEvents { view: self, raw })
    }

    /// Decodes the record stored under `seq`; an encrypted one is opened into the buffer
    /// `plain(len)` returns, and only after it authenticates is any of it visible.
    #[inline]
    fn decode_with<'a>(
        &'a self,
        seq: u64,
        raw: &'a [u8],
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Result<RecordedEvent<'a>, Error> {
        let checked = record::verify(seq, raw)?;
        // The common record of a store without encryption, built where the caller wants it;
        // everything else, and every error, out of line.
        if self.crypto.is_none()
            && let Some((head, metadata, payload)) = record::plain_inline(checked)
        {
            return Ok(RecordedEvent::new(seq, &head, metadata, payload, false));
        }
        self.decode_general(checked, plain)
    }

    /// [`decode_with`](Self::decode_with) of a record whose checksum is verified, whatever
    /// its kind.
    #[inline(never)]
    fn decode_general<'a>(
        &'a self,
        checked: Verified<'a>,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Result<RecordedEvent<'a>, Error> {
        let seq = checked.seq();
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        let env = Envelope::decode_checked(checked)?;
        let head = env.head;
        let (metadata, payload, shredded): (&'a [u8], &'a [u8], bool) = match (env.content, &self.crypto) {
            (Content::Plain { metadata, body }, None) => (metadata, self.body(seq, body)?, false),
            (Content::Plain { .. }, Some(_)) => {
                // Every record of an encrypted store is sealed; one in the clear was forged
                // (for example by clearing the flag), and its bytes must not pass as plaintext.
                return Err(corrupt("an unencrypted record in an encrypted store"));
            }
            (Content::Sealed { .. }, None) => {
                return Err(corrupt("an encrypted record in an unencrypted store"));
            }
            (Content::Sealed { metadata_len, payload_len, aad_head, body }, Some(crypto)) => {
                let mut keys = crypto.keys.borrow_mut();
                let key = match keys.get(&head.stream) {
                    Some(key) => key,
                    None => {
                        let key = self.load_key(&crypto.master, head.stream)?;
                        keys.entry(head.stream).or_insert(key)
                    }
                };
                match key {
                    StreamKey::Shredded { last_version } => {
                        // Reporting "shredded" reads nothing, so it must not be what a damaged
                        // or forged record gets: the version must be one the stream had when
                        // it was shredded (bound into the marker), and the record exactly
                        // where the stream index says that stream's event of that version is.
                        if head.version > *last_version {
                            return Err(corrupt("a record names a shredded stream past its last version"));
                        }
                        let at = self.storage.get(
                            &self.txn,
                            self.storage.tables.streams,
                            &key::stream_version(head.stream, head.version),
                        )?;
                        if at.and_then(value::decode_seq) != Some(seq) {
                            return Err(corrupt(
                                "a record names a shredded stream the index does not place it in",
                            ));
                        }
                        (&[][..], &[][..], true)
                    }
                    StreamKey::Key(key) => {
                        let sealed = self.body(seq, body)?;
                        let len = metadata_len as usize + payload_len as usize;
                        let out = plain(len);
                        record::open_sealed(key, seq, aad_head, sealed, out)?;
                        let out: &'a [u8] = out;
                        let (metadata, payload) = out.split_at(metadata_len as usize);
                        (metadata, payload, false)
                    }
                }
            }
        };
        Ok(RecordedEvent::new(seq, &head, metadata, payload, shredded))
    }

    /// The data key of `stream` in this snapshot, or its shredded marker.
    fn load_key(&self, master: &Master, stream: u128) -> Result<StreamKey, Error> {
        let wrapped = self.storage.get(&self.txn, self.storage.tables.keys, &key::stream(stream))?.ok_or(
            Error::CorruptKey {
                stream: StreamId::from(stream),
                reason: "the stream has encrypted events but no stored key",
            },
        )?;
        master.unwrap(stream, wrapped)
    }

    #[inline]
    fn body<'a>(&'a self, seq: u64, body: Body<'a>) -> Result<&'a [u8], Error> {
        match body {
            Body::Inline(p) => Ok(p),
            Body::Blob { hash, len } => self.storage.blob(&self.txn, seq, hash, len),
        }
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
        let mut log = self.read_all(0)?;
        let mut buf = Vec::new();
        while let Some(event) = log.next_reusing(&mut buf) {
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
            if e.shredded {
                // Shredding deletes the stream's blobs: their contents are unreadable anyway.
                report.shredded_events += 1;
                continue;
            }
            let raw = self.storage.get(&self.txn, tables.events, &key::seq(e.seq))?.unwrap_or_default();
            if let Content::Plain { body: Body::Blob { .. }, .. }
            | Content::Sealed { body: Body::Blob { .. }, .. } = Envelope::decode(e.seq, raw)?.content
            {
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
    log: LogSteps<'v>,
    ahead: Ahead<'v>,
}

/// Most index entries a stream read looks up ahead of the event it hands out.
const AHEAD: usize = 8;

/// Index entries looked up ahead of use, with their records' cache lines asked for early,
/// so that a read of events spread over the log waits for memory once per few records
/// instead of once per record. The depth grows by one per event handed out, so a read
/// stopped early has looked up at most as many records again as it used.
///
/// Lookups ahead can meet a damaged LMDB page before the events already looked up are
/// handed out. LMDB then fails the read transaction as a whole, so those of them that still
/// need the transaction (a payload blob, a stream's key) report the same storage error
/// instead of their event; plain inline events are handed out as before.
struct Ahead<'v> {
    slots: [Fetched<'v>; AHEAD],
    /// Slot of the oldest entry.
    first: usize,
    len: usize,
    depth: usize,
    /// An error met while looking ahead, after the entries in the slots: handed out once
    /// they are, and nothing more is looked up until then.
    error: Option<Box<Error>>,
    /// The index has no more entries of the stream.
    ended: bool,
}

impl Ahead<'_> {
    fn new() -> Self {
        Ahead { slots: Default::default(), first: 0, len: 0, depth: 1, error: None, ended: false }
    }
}

/// An index entry of the stream read and the stored record it points at, unchecked.
#[derive(Clone, Copy, Default)]
struct Fetched<'v> {
    stream: u128,
    version: u32,
    seq: u64,
    raw: &'v [u8],
}

/// How a stream read reaches the records its index entries point at: a lookup from the
/// root of the `events` table each, except along runs of consecutive seqs (a stream written
/// in batches), which a forward read steps through with one cursor on the log.
struct LogSteps<'v> {
    forward: bool,
    /// The seq of the previous record, 0 before the first.
    prev: u64,
    /// A cursor on the log and the seq of the record it gave last.
    cursor: Option<(Entries<'v>, u64)>,
    /// Records read since the cursor was opened ([`REOPEN_AFTER`] before the first opening).
    /// A forward read opens it where a run of consecutive seqs starts; opening one allocates,
    /// so it is reopened at a new run at most once per [`REOPEN_AFTER`] records: no
    /// allocation per event, however a stream's seqs are spread, and none at all for a stream
    /// whose events are all apart.
    since_open: u32,
}

/// Least records read between two openings of a stream read's log cursor.
const REOPEN_AFTER: u32 = 64;
/// Farthest an open log cursor steps forward to reach the next record instead of a lookup.
/// A cursor opens only where two consecutive seqs show a run, so a stream whose events are
/// always apart (by 2 or by a thousand) is read by lookups alone.
const STEP_AHEAD: u64 = 8;

impl<'v> LogSteps<'v> {
    fn new(forward: bool) -> Self {
        LogSteps { forward, prev: 0, cursor: None, since_open: REOPEN_AFTER }
    }

    /// The stored record of `seq`, if any: the same bytes as a lookup in the view.
    #[inline]
    fn record(&mut self, view: &'v ReadView<'v>, seq: u64) -> Result<Option<&'v [u8]>, Error> {
        let prev = std::mem::replace(&mut self.prev, seq);
        self.since_open = self.since_open.saturating_add(1);
        if self.forward
            && (self.cursor.as_ref().is_some_and(|&(_, at)| seq > at && seq - at <= STEP_AHEAD)
                || (prev.checked_add(1) == Some(seq) && self.since_open >= REOPEN_AFTER))
            && let Some(record) = self.step(view, seq)?
        {
            return Ok(Some(record));
        }
        view.storage.get(&view.txn, view.storage.tables.events, &key::seq(seq))
    }

    /// `seq`'s record through the log cursor, stepped to it or opened at it; `None` (and no
    /// cursor) if the cursor does not reach it, for a lookup to find it or report it missing.
    #[inline(never)]
    fn step(&mut self, view: &'v ReadView<'v>, seq: u64) -> Result<Option<&'v [u8]>, Error> {
        if let Some((log, at)) = &mut self.cursor
            && seq > *at
            && seq - *at <= STEP_AHEAD
        {
            for entry in log.by_ref() {
                let (k, v) = entry?;
                match key::decode_seq(k) {
                    Some(here) if here < seq => *at = here,
                    Some(here) if here == seq => {
                        *at = here;
                        return Ok(Some(v));
                    }
                    // Past it (the log lacks `seq`) or a damaged key.
                    _ => break,
                }
            }
            self.cursor = None;
            return Ok(None);
        }
        let from = key::seq(seq);
        let mut log = view.storage.entries(
            &view.txn,
            view.storage.tables.events,
            (Included(&from[..]), Unbounded),
            false,
        )?;
        self.since_open = 0;
        if let Some(entry) = log.next() {
            let (k, v) = entry?;
            if key::decode_seq(k) == Some(seq) {
                self.cursor = Some((log, seq));
                return Ok(Some(v));
            }
        }
        self.cursor = None;
        Ok(None)
    }
}

impl<'v> Iterator for StreamEvents<'v> {
    type Item = Result<RecordedEvent<'v>, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let view = self.view;
        self.next_with(|n| view.arena(n))
    }
}

impl StreamEvents<'_> {
    /// The next event, like [`next`](Iterator::next), except that an encrypted event is
    /// decrypted into `buf`, reused from call to call, instead of into the view's memory. In
    /// a store without encryption the two are the same and `buf` stays untouched.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().encryption_key(MasterKey::generate()?).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, (0..100).map(|i| NewEvent::new("n", vec![i; 64])))?;
    /// let view = db.begin_read()?;
    /// let mut events = view.read_stream(1u128, 1)?;
    /// let mut buf = Vec::new();
    /// let mut sum = 0u64;
    /// while let Some(event) = events.next_reusing(&mut buf) {
    ///     sum += u64::from(event?.payload()[0]);
    /// }
    /// assert_eq!(sum, (0..100).sum::<u64>());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[inline]
    pub fn next_reusing<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> Option<Result<RecordedEvent<'a>, Error>> {
        self.next_with(reuse(buf))
    }
}

impl<'v> StreamEvents<'v> {
    /// The event the next `streams` index entry points at, checked to be the one the entry
    /// names.
    #[inline]
    fn next_with<'a>(
        &mut self,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Option<Result<RecordedEvent<'a>, Error>>
    where
        'v: 'a,
    {
        let at = match self.locate()? {
            Ok(at) => at,
            Err(e) => return Some(Err(*e)),
        };
        // `ReadView::decode_with`, spelled out so that the common record is checked against
        // the entry and built straight into the item.
        if let Some((head, metadata, payload)) = at.plain_inline(self.view) {
            if let Err(e) = at.check(head.stream, head.version) {
                return Some(Err(e));
            }
            return Some(Ok(RecordedEvent::new(at.seq, &head, metadata, payload, false)));
        }
        Some(self.view.decode_general(at.record, plain).and_then(|event| {
            at.check(event.stream.as_u128(), event.version)?;
            Ok(event.rebuilt())
        }))
    }

    /// Calls `f` with each event left, as [`next_reusing`](StreamEvents::next_reusing) gives
    /// them, until the end, an error, or an error from `f`. Each event is built where `f`
    /// reads it, not moved through an iterator's item: what a fold needs.
    pub(crate) fn try_for_each_reusing(
        &mut self,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&RecordedEvent<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        while let Some(at) = self.locate() {
            let at = at.map_err(|e| *e)?;
            if let Some((head, metadata, payload)) = at.plain_inline(self.view) {
                at.check(head.stream, head.version)?;
                f(&RecordedEvent::new(at.seq, &head, metadata, payload, false))?;
            } else {
                let event = self.view.decode_general(at.record, reuse(buf))?;
                at.check(event.stream.as_u128(), event.version)?;
                f(&event)?;
            }
        }
        Ok(())
    }

    /// The record the next index entry points at, its checksum verified. Errors are boxed:
    /// unboxed, the large error type made every record travel through memory.
    #[inline]
    fn locate(&mut self) -> Option<Result<Located<'v>, Box<Error>>> {
        while self.ahead.len < self.ahead.depth && !self.ahead.ended && self.ahead.error.is_none() {
            match self.fetch() {
                Some(Ok(fetched)) => {
                    crate::storage::prefetch(fetched.raw);
                    self.ahead.slots[(self.ahead.first + self.ahead.len) % AHEAD] = fetched;
                    self.ahead.len += 1;
                }
                Some(Err(e)) => self.ahead.error = Some(e),
                None => self.ahead.ended = true,
            }
        }
        if self.ahead.len == 0 {
            // The error after the last entry handed out, if any; the next call looks on.
            return self.ahead.error.take().map(Err);
        }
        let Fetched { stream, version, seq, raw } = self.ahead.slots[self.ahead.first];
        self.ahead.first = (self.ahead.first + 1) % AHEAD;
        self.ahead.len -= 1;
        self.ahead.depth = (self.ahead.depth + 1).min(AHEAD);
        Some(match record::verify(seq, raw) {
            Ok(record) => Ok(Located { wanted: self.stream.as_u128(), stream, version, seq, record }),
            Err(e) => Err(Box::new(e)),
        })
    }

    /// The next index entry and the record it points at. A forward read's range has no upper
    /// bound: it ends at the first key of another stream.
    #[inline]
    fn fetch(&mut self) -> Option<Result<Fetched<'v>, Box<Error>>> {
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(Box::new(e))),
        };
        let wanted = self.stream.as_u128();
        if self.log.forward && k.get(..16) != Some(&key::stream(wanted)[..]) {
            return None;
        }
        let bad = |reason: String| Box::new(Error::CorruptIndex { table: "streams", reason });
        let Some((stream, version)) = key::decode_stream_version(k) else {
            return Some(Err(bad("key is not 20 bytes".into())));
        };
        let Some(seq) = value::decode_seq(v) else {
            return Some(Err(bad(format!("value at version {version} is not a seq"))));
        };
        Some(match self.log.record(self.view, seq) {
            Ok(Some(raw)) => Ok(Fetched { stream, version, seq, raw }),
            Ok(None) => Err(bad(format!("version {version} points at missing seq {seq}"))),
            Err(e) => Err(Box::new(e)),
        })
    }
}

/// A record a stream read reached through an index entry, its checksum verified.
struct Located<'v> {
    /// The stream read.
    wanted: u128,
    /// The stream and version the entry names.
    stream: u128,
    version: u32,
    seq: u64,
    record: Verified<'v>,
}

impl<'v> Located<'v> {
    /// The record's parts if it is the common record of a store without encryption.
    #[inline]
    fn plain_inline(&self, view: &ReadView<'_>) -> Option<(RecordHeader<'v>, &'v [u8], &'v [u8])> {
        if view.crypto.is_some() {
            return None;
        }
        record::plain_inline(self.record)
    }

    /// That the record is the one the entry names, in the stream read.
    #[inline]
    fn check(&self, stream: u128, version: u32) -> Result<(), Error> {
        if stream != self.stream || version != self.version || self.wanted != self.stream {
            return Err(elsewhere(self.version, self.seq));
        }
        Ok(())
    }
}

/// An index entry at `version` that points at `seq`, a record of another stream or version.
#[cold]
fn elsewhere(version: u32, seq: u64) -> Error {
    Error::CorruptIndex {
        table: "streams",
        reason: format!("version {version} points at seq {seq}, which belongs elsewhere"),
    }
}

/// Gives a decrypting read `n` bytes of `buf`.
fn reuse<'a>(buf: &'a mut Vec<u8>) -> impl FnOnce(usize) -> &'a mut [u8] {
    move |n| {
        buf.clear();
        // At least 1 KiB on the first use: small events then never grow the buffer again,
        // so a fold allocates the same whatever the number of events.
        buf.reserve(n.max(1024));
        buf.resize(n, 0);
        buf.as_mut_slice()
    }
}

/// The global log, from [`ReadView::read_all`].
pub struct LogEvents<'v> {
    view: &'v ReadView<'v>,
    raw: LogEntries<'v>,
}

impl<'v> Iterator for LogEvents<'v> {
    type Item = Result<RecordedEvent<'v>, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let view = self.view;
        self.next_with(|n| view.arena(n))
    }
}

impl<'v> LogEvents<'v> {
    /// The next event, like [`next`](Iterator::next), except that an encrypted event is
    /// decrypted into `buf`, reused from call to call, instead of into the view's memory (see
    /// [`StreamEvents::next_reusing`]).
    pub fn next_reusing<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> Option<Result<RecordedEvent<'a>, Error>> {
        self.next_with(reuse(buf))
    }

    #[inline]
    fn next_with<'a>(
        &mut self,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Option<Result<RecordedEvent<'a>, Error>>
    where
        'v: 'a,
    {
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let Some(seq) = key::decode_seq(k) else {
            return Some(Err(Error::CorruptIndex {
                table: "events",
                reason: "key is not an 8-byte seq".into(),
            }));
        };
        let view = self.view;
        let checked = match record::verify(seq, v) {
            Ok(checked) => checked,
            Err(e) => return Some(Err(e)),
        };
        // `decode_with`, spelled out so that the common record is built straight into the
        // item (through `decode_with`, it was built on the stack and copied).
        if view.crypto.is_none()
            && let Some((head, metadata, payload)) = record::plain_inline(checked)
        {
            return Some(Ok(RecordedEvent::new(seq, &head, metadata, payload, false)));
        }
        match view.decode_general(checked, plain) {
            Ok(event) => Some(Ok(event.rebuilt())),
            Err(e) => Some(Err(e)),
        }
    }

    /// Calls `f` with each event left, as [`next_reusing`](LogEvents::next_reusing) gives
    /// them, until the end, an error, or `f` breaks; returns whether it broke. Each event is
    /// built where `f` reads it, not moved through an iterator's item: what a subscription's
    /// reader needs.
    pub(crate) fn try_for_each_reusing(
        &mut self,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&RecordedEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        for entry in self.raw.by_ref() {
            let (k, v) = entry?;
            let Some(seq) = key::decode_seq(k) else {
                return Err(Error::CorruptIndex {
                    table: "events",
                    reason: "key is not an 8-byte seq".into(),
                });
            };
            let checked = record::verify(seq, v)?;
            let flow = if self.view.crypto.is_none()
                && let Some((head, metadata, payload)) = record::plain_inline(checked)
            {
                f(&RecordedEvent::new(seq, &head, metadata, payload, false))
            } else {
                f(&self.view.decode_general(checked, reuse(buf))?)
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, NewEvent, Varve, WriteBatch};

    #[test]
    fn a_stream_read_looks_up_no_more_than_twice_what_it_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        // Two streams interleaved, so that stream 1 is read by lookups alone.
        let mut batch = WriteBatch::new();
        for i in 0..40u8 {
            batch.append(u128::from(i % 2) + 1, ExpectedVersion::Auto, [NewEvent::new("t", vec![i])]);
        }
        db.write(batch).unwrap();
        let view = db.begin_read().unwrap();
        let mut events = view.read_stream(1u128, 1).unwrap();
        for k in 1..=20usize {
            assert_eq!(events.next().unwrap().unwrap().version() as usize, k);
            // Looked up so far: the `k` handed out and those waiting in the slots.
            assert_eq!(events.ahead.len, (k.min(AHEAD) - 1).min(20 - k), "after {k}");
            assert!(k + events.ahead.len < 2 * k);
            assert_eq!(events.ahead.depth, (k + 1).min(AHEAD));
        }
        assert!(events.next().is_none());
        assert!(events.ahead.ended);
    }
}
