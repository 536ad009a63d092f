//! Reads of one stream through the `streams` index, with index entries looked up ahead.

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::id::StreamId;
use crate::record::{self, Verified};
use crate::storage::{LogEntries, StreamIndex, key};

use super::{ReadView, fails_the_view, reuse};

impl ReadView<'_> {
    /// Events of `stream` with version `>= from_version`, oldest first.
    ///
    /// The read checks the stream index as it goes: versions run on without gaps up to the
    /// stream's head, and each entry points at the event it names. A missing, surplus or
    /// misplaced entry is an [`Error::CorruptIndex`] in its place, and the read goes on. A
    /// storage error (a damaged LMDB page) ends the read after it is reported: LMDB fails the
    /// whole transaction on one, so nothing more can be read through this view.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`] or
    /// [`Error::CorruptIndex`], and the last ones a storage error.
    pub fn read_stream(
        &self,
        stream: impl Into<StreamId>,
        from_version: u32,
    ) -> Result<StreamEvents<'_>, Error> {
        let stream = stream.into();
        self.read_stream_to_head(stream, from_version, self.stream_version(stream)?)
    }

    /// [`read_stream`](Self::read_stream) of a stream whose head (version) the caller has
    /// just read in this view: the read is checked against it without a second lookup.
    pub(crate) fn read_stream_to_head(
        &self,
        stream: StreamId,
        from_version: u32,
        head: Option<u32>,
    ) -> Result<StreamEvents<'_>, Error> {
        let raw = self.storage.stream_index(&self.txn, stream.as_u128(), from_version, false)?;
        let versions = Versions::forward(from_version, head);
        Ok(StreamEvents { view: self, stream, raw, log: LogSteps::new(true), ahead: Ahead::new(), versions })
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
        let raw = self.storage.stream_index(&self.txn, stream.as_u128(), from_version, true)?;
        let versions = Versions::backward(from_version, self.stream_version(stream)?);
        Ok(StreamEvents { view: self, stream, raw, log: LogSteps::new(false), ahead: Ahead::new(), versions })
    }
}

/// Events of one stream, from [`ReadView::read_stream`] or
/// [`ReadView::read_stream_backward`].
pub struct StreamEvents<'v> {
    view: &'v ReadView<'v>,
    stream: StreamId,
    raw: StreamIndex<'v>,
    log: LogSteps<'v>,
    ahead: Ahead<'v>,
    versions: Versions,
}

/// The versions a stream read must meet, in order: from where it starts to the stream's
/// head (forward) or down to 1 (backward), each once. The index is checked against them, so
/// an entry lost or moved by damage is reported instead of read past.
#[derive(Clone, Copy)]
struct Versions {
    forward: bool,
    /// The version the next entry must have; past the end of the range once it is met.
    next: u64,
    /// The last version of the range: the stream's head forward, 1 backward.
    last: u64,
    /// The stream's head (0: the stream has no events).
    head: u64,
    /// An entry found past a gap, held until the gap is reported.
    held: Option<(u128, u32, u64)>,
    /// The index has no more entries of the stream.
    ended: bool,
}

impl Versions {
    fn forward(from: u32, head: Option<u32>) -> Self {
        let head = u64::from(head.unwrap_or(0));
        Versions { forward: true, next: u64::from(from.max(1)), last: head, head, held: None, ended: false }
    }

    fn backward(from: u32, head: Option<u32>) -> Self {
        let head = u64::from(head.unwrap_or(0));
        Versions { forward: false, next: u64::from(from).min(head), last: 1, head, held: None, ended: false }
    }

    /// Checks the entry at `version`: `Err` with the reason if it is not the one due (it is
    /// then held, if it lies past a gap, for the next call).
    #[inline]
    fn meet(&mut self, entry: (u128, u32, u64)) -> Result<(), String> {
        let version = u64::from(entry.1);
        if version == self.next && version != 0 && version <= self.head {
            self.step(version);
            return Ok(());
        }
        Err(self.mismatch(entry))
    }

    /// The entry held past a gap, now due.
    fn take_held(&mut self) -> Option<(u128, u32, u64)> {
        let entry = self.held.take()?;
        self.step(u64::from(entry.1));
        Some(entry)
    }

    fn step(&mut self, version: u64) {
        self.next = if self.forward { version + 1 } else { version - 1 };
    }

    #[cold]
    fn mismatch(&mut self, entry: (u128, u32, u64)) -> String {
        let version = u64::from(entry.1);
        if version == 0 || version > self.head {
            return format!(
                "an entry for version {version} lies outside the stream's versions 1 to {}",
                self.head
            );
        }
        let past_gap = if self.forward { version > self.next } else { version < self.next };
        if !past_gap {
            // Behind what is due: only damage can put it there (keys are unique and sorted).
            return format!("an entry for version {version} is out of order");
        }
        let (low, high) = if self.forward { (self.next, version - 1) } else { (version + 1, self.next) };
        self.held = Some(entry);
        missing(low, high)
    }

    /// At the end of the index's entries: the versions still due, if any, have no entry.
    #[cold]
    fn finish(&mut self) -> Option<String> {
        self.ended = true;
        let due = if self.forward { self.next <= self.last } else { self.next >= self.last && self.next > 0 };
        if !due {
            return None;
        }
        let (low, high) = if self.forward { (self.next, self.last) } else { (self.last, self.next) };
        // Reported once: the read then ends.
        self.next = if self.forward { self.last + 1 } else { 0 };
        Some(missing(low, high))
    }
}

/// The reason for versions `low` to `high` of a stream having no index entry.
fn missing(low: u64, high: u64) -> String {
    if low == high {
        format!("version {low} has no index entry")
    } else {
        format!("versions {low} to {high} have no index entry")
    }
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
/// instead of their event; plain inline events, which need nothing more, are still handed out.
/// Then the storage error itself, and the read ends.
struct Ahead<'v> {
    slots: [Fetched<'v>; AHEAD],
    /// Slot of the oldest entry.
    first: usize,
    len: usize,
    depth: usize,
    /// An error met while looking ahead, after the entries in the slots: handed out once
    /// they are, and nothing more is looked up until then.
    error: Option<Box<Error>>,
    /// Nothing more is looked up: the index has no more entries of the stream, or the
    /// storage engine failed the read's transaction.
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
/// in batches), which a forward read steps through with one walk of the log (straight from
/// the map's pages, see `Storage::log_from`).
struct LogSteps<'v> {
    forward: bool,
    /// The seq of the previous record, 0 before the first.
    prev: u64,
    /// A walk of the log and the seq of the record it gave last.
    cursor: Option<(LogEntries<'v>, u64)>,
    /// Records read since the walk was opened ([`REOPEN_AFTER`] before the first opening).
    /// A forward read opens it where a run of consecutive seqs starts. Opening one looks up
    /// the table's root and the file's length, and allocates where LMDB's cursor reads, so
    /// it is reopened at a new run at most once per [`REOPEN_AFTER`] records: no allocation
    /// per event, however a stream's seqs are spread, and none at all for a stream whose
    /// events are all apart.
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
        // Along a run, the next entry of the walk: inline, as it is most of a run's steps.
        if let Some((log, at)) = &mut self.cursor
            && at.checked_add(1) == Some(seq)
        {
            match log.next() {
                Some(Ok((k, v))) => match key::decode_seq(k) {
                    Some(here) if here == seq => {
                        *at = here;
                        return Ok(Some(v));
                    }
                    // Only damage puts it here; `step` reads on from it.
                    Some(here) if here < seq => *at = here,
                    // Past it (the log lacks `seq`) or a damaged key: a lookup finds it or
                    // reports it missing.
                    _ => {
                        self.cursor = None;
                        return view.storage.get(&view.txn, view.storage.tables.events, &key::seq(seq));
                    }
                },
                Some(Err(e)) => return Err(e),
                None => {
                    self.cursor = None;
                    return view.storage.get(&view.txn, view.storage.tables.events, &key::seq(seq));
                }
            }
        }
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
        let mut log = view.storage.log_from(&view.txn, seq)?;
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
        let event = self.view.with_event(at.record, plain, |event| {
            at.check(event.stream.as_u128(), event.version)?;
            Ok(event)
        });
        match event.flatten() {
            Ok(event) => Some(Ok(event)),
            // A blob or a data key on a damaged page: the entries already looked up are
            // handed out, nothing more is looked up.
            Err(e) => {
                self.ahead.ended |= fails_the_view(&e);
                Some(Err(e))
            }
        }
    }

    /// Calls `f` with each event left, as [`next_reusing`](StreamEvents::next_reusing) gives
    /// them, until the end, an error, or an error from `f`. Each event is built where `f`
    /// reads it, not moved through an iterator's item: what a fold needs.
    pub(crate) fn try_for_each_reusing(
        &mut self,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&RecordedEvent<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        // The error of the check or of `f` is kept here, not returned through the event's
        // result: a result of results moved the large error type through memory on every
        // event, in stores the CPU could not forward to the loads after them.
        let mut failed = None;
        while let Some(at) = self.locate() {
            let at = at.map_err(|e| *e)?;
            self.view.with_event(at.record, reuse(buf), |event| {
                if let Err(e) = at.check(event.stream.as_u128(), event.version).and_then(|()| f(&event)) {
                    failed = Some(e);
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
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
                Some(Err(e)) => {
                    // The entries before it are still handed out, then the error, and the read
                    // ends there if the storage engine failed the transaction.
                    self.ahead.ended |= fails_the_view(&e);
                    self.ahead.error = Some(e);
                }
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

    /// The next index entry and the record it points at.
    #[inline]
    fn fetch(&mut self) -> Option<Result<Fetched<'v>, Box<Error>>> {
        let bad = |reason: String| Box::new(Error::CorruptIndex { table: "streams", reason });
        let (stream, version, seq) = match self.versions.take_held() {
            Some(entry) => entry,
            None => match self.next_entry()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            },
        };
        Some(match self.log.record(self.view, seq) {
            Ok(Some(raw)) => Ok(Fetched { stream, version, seq, raw }),
            Ok(None) => Err(bad(format!("version {version} points at missing seq {seq}"))),
            Err(e) => Err(Box::new(e)),
        })
    }

    /// The next entry of the stream's index, decoded and checked to be the version due.
    #[inline]
    fn next_entry(&mut self) -> Option<Result<(u128, u32, u64), Box<Error>>> {
        let bad = |reason: String| Box::new(Error::CorruptIndex { table: "streams", reason });
        if self.versions.ended {
            return None;
        }
        let (version, seq) = match self.raw.next() {
            Some(Ok(entry)) => entry,
            Some(Err(e)) => return Some(Err(Box::new(e))),
            None => return self.versions.finish().map(|reason| Err(bad(reason))),
        };
        let entry = (self.stream.as_u128(), version, seq);
        if let Err(reason) = self.versions.meet(entry) {
            return Some(Err(bad(reason)));
        }
        Some(Ok(entry))
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

impl Located<'_> {
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

    #[test]
    fn reads_from_any_version_cross_the_index_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        // Two streams interleaved, in requests of several sizes, over four chunks of entries.
        let mut n = 0u32;
        for size in [1u32, 63, 1, 64, 71] {
            let mut batch = WriteBatch::new();
            for _ in 0..size {
                n += 1;
                for stream in [7u128, 8] {
                    batch.append(
                        stream,
                        ExpectedVersion::Auto,
                        [NewEvent::new("t", n.to_le_bytes().to_vec())],
                    );
                }
            }
            db.write(batch).unwrap();
        }
        let view = db.begin_read().unwrap();
        for from in [0, 1, 2, 63, 64, 65, 66, 128, 129, 199, 200, 201, u32::MAX] {
            let forward: Vec<u32> =
                view.read_stream(8u128, from).unwrap().map(|e| e.unwrap().version()).collect();
            assert_eq!(forward, (from.max(1)..=n).collect::<Vec<_>>(), "forward from {from}");
            let backward: Vec<u32> =
                view.read_stream_backward(7u128, from).unwrap().map(|e| e.unwrap().version()).collect();
            assert_eq!(backward, (1..=from.min(n)).rev().collect::<Vec<_>>(), "backward from {from}");
        }
        for version in 1..=n {
            let seq = view.seq_at(StreamId::from(7u128), version).unwrap().unwrap();
            let event = view.event(seq).unwrap().unwrap();
            assert_eq!((event.version(), event.payload()), (version, &version.to_le_bytes()[..]));
        }
        assert_eq!(view.seq_at(StreamId::from(7u128), n + 1).unwrap(), None);
        let report = view.check_integrity().unwrap();
        assert_eq!((report.events, report.streams), (2 * u64::from(n), 2));
    }
}
