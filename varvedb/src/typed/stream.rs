//! `Stream<A>`: a typed handle on one aggregate's stream.

use std::cell::OnceCell;
use std::marker::PhantomData;

use crate::batch::{Appended, ExpectedVersion, WriteBatch};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::id::StreamId;
use crate::read::{ReadView, StreamEvents};
use crate::store::Varve;
use crate::typed::command::{ExecuteOptions, RetryPolicy};
use crate::typed::snapshot::{self, Snapshotted};
use crate::typed::upcast::{archived_as, no_path};
use crate::typed::{Aggregate, EventInfo, EventOf, Handle, IntoPending, Pending, UpcastBuffer};

/// How many times [`Stream::execute`] reloads and retries after a concurrency conflict
/// ([`RetryPolicy::default`] makes one more attempt than this: the first).
pub const DEFAULT_EXECUTE_RETRIES: u32 = 99;

/// A typed handle on the stream of one aggregate `A`. Cheap to clone.
///
/// It takes only `A`'s events (anything else fails to compile), and the stream remembers its
/// aggregate type: using the same id as another aggregate's stream is
/// [`Error::StreamKindMismatch`].
///
/// Its calls block the calling thread (LMDB reads, and waiting for a commit). In async code
/// use their async forms ([`load_async`](Self::load_async), [`read_async`](Self::read_async),
/// [`execute_async`](Self::execute_async), [`append_all_async`](Self::append_all_async)),
/// which leave the runtime's worker threads free.
///
/// ```
/// use varvedb::{aggregate, Event, ExpectedVersion, Varve};
///
/// #[derive(Event)]
/// struct Deposited { cents: u64 }
///
/// #[derive(Default)]
/// struct Account { balance: u64 }
///
/// #[aggregate]
/// impl Account {
///     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let account = db.stream::<Account>(7u128);
/// account.append(ExpectedVersion::NoStream, Deposited { cents: 250 })?;
/// let loaded = account.load()?;
/// assert_eq!((loaded.state().balance, loaded.version()), (250, 1));
/// account.save(&loaded, [Deposited { cents: 50 }])?;
/// assert_eq!(account.load()?.state().balance, 300);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct Stream<A> {
    pub(crate) db: Varve,
    pub(crate) id: StreamId,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for Stream<A> {
    fn clone(&self) -> Self {
        Stream { db: self.db.clone(), id: self.id, _aggregate: PhantomData }
    }
}

impl<A> std::fmt::Debug for Stream<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("aggregate", &std::any::type_name::<A>())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An aggregate's state folded from its stream, with the version it reflects.
///
/// Two loads are equal when their state, version and stream are: whether they started
/// from a snapshot ([`replayed`](Self::replayed)) does not change what was loaded.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub(crate) state: A,
    pub(crate) version: u32,
    pub(crate) stream: StreamId,
    pub(crate) replayed: u32,
}

impl<A: PartialEq> PartialEq for Loaded<A> {
    fn eq(&self, other: &Self) -> bool {
        (&self.state, self.version, self.stream) == (&other.state, other.version, other.stream)
    }
}

impl<A: Eq> Eq for Loaded<A> {}

impl<A> Loaded<A> {
    /// The folded state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The version of the last event folded (0 for a stream with no events).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The stream the state was loaded from.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// How many events this load folded: all of the stream's, or those after the snapshot
    /// it started from.
    pub fn replayed(&self) -> u32 {
        self.replayed
    }

    /// The state, consuming the wrapper.
    pub fn into_state(self) -> A {
        self.state
    }
}

/// The outcome of [`Stream::execute`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Executed {
    /// The stream's version after the command.
    pub version: u32,
    /// Where the command's events landed (`None`: the command produced no events).
    pub appended: Option<Appended>,
    /// How many times the command was handled (1 + retries after conflicts).
    pub attempts: u32,
}

/// Why [`Stream::execute`] failed: the domain rejected the command, or the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The command handler rejected the command; nothing was written.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// A storage error.
    #[error(transparent)]
    Store(#[from] Error),
    /// Every attempt the [`RetryPolicy`] allowed met a concurrency conflict; nothing was
    /// written. Allow more attempts or longer waits, or have fewer writers on one stream.
    #[error("gave up after {attempts} attempts, each in conflict with another writer: {last}")]
    RetriesExhausted {
        /// How many times the command was decided and saved.
        attempts: u32,
        /// The conflict of the last attempt.
        last: Error,
    },
}

/// One event of an aggregate's stream, read in place.
///
/// An event stored as an older version of one of `A`'s events (see [`Upcast`](crate::Upcast)) is upcast
/// when [`get`](Self::get) first asks for it, into a buffer this value owns.
#[derive(Debug, Clone)]
pub struct TypedEvent<'v, A> {
    recorded: RecordedEvent<'v>,
    /// Upcast forms, one slot per entry of `A::EVENTS`; made only for older versions.
    upcast: OnceCell<Box<[OnceCell<UpcastBuffer>]>>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<'v, A> TypedEvent<'v, A> {
    /// An event already checked to be one of `A`'s.
    pub(crate) fn new(recorded: RecordedEvent<'v>) -> Self {
        TypedEvent { recorded, upcast: OnceCell::new(), _aggregate: PhantomData }
    }
}

impl<'v, A: Aggregate> TypedEvent<'v, A> {
    /// The stored event: seq, version, timestamp, metadata, raw payload.
    #[must_use]
    pub fn recorded(&self) -> &RecordedEvent<'v> {
        &self.recorded
    }

    /// Whether this event reads as an `E`: stored as `E`, or as an older version `E`
    /// upcasts from.
    #[must_use]
    pub fn is<E: EventOf<A>>(&self) -> bool {
        EventInfo::of::<E>().accepts(self.recorded.type_tag(), self.recorded.schema_version())
    }

    /// The archived `E`, if this event reads as an `E`: validated and read in place if it is
    /// stored as `E`, upcast (once, then kept with this value) if it is stored as an older
    /// version.
    ///
    /// # Errors
    /// [`Error::InvalidArchive`] if the payload does not validate.
    pub fn get<E: EventOf<A>>(&self) -> Result<Option<&E::Archived>, Error> {
        let info = EventInfo::of::<E>();
        if info.matches(&self.recorded) {
            return self.recorded.access::<E::Archived>().map(Some);
        }
        if !self.is::<E>() {
            return Ok(None);
        }
        let Some(slot) = A::EVENTS.iter().position(|i| *i == info) else { return Ok(None) };
        let slots = self.upcast.get_or_init(|| A::EVENTS.iter().map(|_| OnceCell::new()).collect());
        let cell = &slots[slot];
        if cell.get().is_none() {
            let mut buf = UpcastBuffer::new();
            if archived_as::<E>(&self.recorded, &mut buf)?.is_none() {
                return Ok(None);
            }
            let _ = cell.set(buf);
        }
        match cell.get() {
            Some(buf) => buf.access::<E>(self.recorded.seq()).map(Some),
            None => Ok(None),
        }
    }
}

/// Typed events of one stream, from [`Stream::read`].
pub struct TypedEvents<'v, A> {
    inner: StreamEvents<'v>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<'v, A: Aggregate> Iterator for TypedEvents<'v, A> {
    type Item = Result<TypedEvent<'v, A>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let recorded = match self.inner.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        if !A::EVENTS.iter().any(|info| info.accepts(recorded.type_tag(), recorded.schema_version())) {
            return Some(Err(no_path(A::EVENTS, &recorded).unwrap_or_else(|| unknown::<A>(&recorded))));
        }
        Some(Ok(TypedEvent::new(recorded)))
    }
}

#[doc(hidden)]
#[must_use]
pub fn unknown<A: Aggregate>(event: &RecordedEvent<'_>) -> Error {
    Error::UnknownEvent {
        seq: event.seq(),
        type_tag: event.type_tag().to_owned(),
        version: event.schema_version(),
        aggregate: A::KIND,
    }
}

impl Varve {
    /// A typed handle on stream `id` of aggregate `A`. Creates nothing until the first append.
    ///
    /// From then on, this process's writer refuses an append under `A`'s kind of an event
    /// `A` does not apply ([`Error::ForeignEvent`]), typed or not; its first write under the
    /// kind records `A`'s events in the store, for other processes too.
    #[must_use]
    pub fn stream<A: Aggregate>(&self, id: impl Into<StreamId>) -> Stream<A> {
        self.register_kind(A::KIND, A::EVENTS);
        Stream { db: self.clone(), id: id.into(), _aggregate: PhantomData }
    }
}

impl<A: Aggregate> Stream<A> {
    /// The stream's id.
    #[must_use]
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Appends one event of `A`, checked against `expected`.
    ///
    /// # Errors
    /// As [`Varve::append`], plus [`Error::StreamKindMismatch`] if the id is another
    /// aggregate's stream and [`Error::SchemaMismatch`] if the store knows this event type
    /// and version with another shape.
    pub fn append<E: EventOf<A>>(&self, expected: ExpectedVersion, event: E) -> Result<Appended, Error> {
        self.append_all(expected, [Pending::<A>::from(event)])
    }

    /// Appends several events of `A` atomically. Events of one type go as they are
    /// (`[shipped]`); mixed types through [`Pending::from`]:
    /// `append_all(expected, [Pending::from(placed), Pending::from(shipped)])`.
    ///
    /// # Errors
    /// As [`append`](Self::append); [`Error::EmptyBatch`] if `events` is empty.
    pub fn append_all<I>(&self, expected: ExpectedVersion, events: I) -> Result<Appended, Error>
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let batch = self.batch(expected, events)?;
        self.db.write(batch)?.pop().ok_or(Error::EmptyBatch)
    }

    /// Async form of [`append_all`](Self::append_all).
    ///
    /// # Errors
    /// As [`append_all`](Self::append_all).
    ///
    /// # Cancel safety
    /// As [`Varve::append_async`]: once sent, the write happens even if the future is dropped.
    pub async fn append_all_async<I>(&self, expected: ExpectedVersion, events: I) -> Result<Appended, Error>
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let batch = self.batch(expected, events)?;
        self.db.write_async(batch).await?.pop().ok_or(Error::EmptyBatch)
    }

    fn batch<I>(&self, expected: ExpectedVersion, events: I) -> Result<WriteBatch, Error>
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let events = events.into_iter().map(|e| e.into_pending().event).collect::<Result<Vec<_>, _>>()?;
        let mut batch = WriteBatch::new();
        batch.append_static_kind(self.id, (A::KIND, A::EVENTS), expected, events);
        Ok(batch)
    }

    /// Folds the stream into `A`: every event is validated and applied in place from the
    /// memory map, with no copy and no allocation per event. In an encrypted store each
    /// event is decrypted into one buffer reused for the whole fold. Events stored as an
    /// older version of one `A` applies are upcast into one buffer reused for the fold.
    ///
    /// An aggregate with snapshots starts from the stream's snapshot if it is valid for `A`
    /// as built (same state shape, same events, same `snapshot_version`) and folds only the
    /// events after it ([`Loaded::replayed`]); an invalid one is ignored. The result is the
    /// same either way.
    ///
    /// # Errors
    /// [`Error::StreamKindMismatch`] if the id is another aggregate's stream;
    /// [`Error::SchemaMismatch`] if the store knows one of `A`'s events with another shape;
    /// [`Error::UnknownEvent`] for an event `A` does not handle; [`Error::Shredded`] if the
    /// stream was shredded; corruption errors.
    pub fn load(&self) -> Result<Loaded<A>, Error> {
        let view = self.db.begin_read()?;
        self.load_in(&view)
    }

    /// Like [`load`](Self::load), inside an existing read view (a consistent snapshot shared
    /// with other reads).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_in(&self, view: &ReadView<'_>) -> Result<Loaded<A>, Error> {
        let head = self.check(view)?;
        let (mut state, mut version) = match head {
            Some(head) => snapshot::load::<A>(view, self.id, head)?.unwrap_or_default(),
            None => (A::default(), 0),
        };
        let mut replayed = 0;
        let mut events = view.read_stream_to_head(self.id, version + 1, head)?;
        // Zeroed when dropped: decrypted events do not linger in freed memory.
        let mut buf = zeroize::Zeroizing::new(Vec::new());
        let mut upcast = UpcastBuffer::new();
        events.try_for_each_reusing(&mut buf, |event| {
            state.apply_recorded(event, &mut upcast)?;
            version = event.version();
            replayed += 1;
            Ok(())
        })?;
        Ok(Loaded { state, version, stream: self.id, replayed })
    }

    /// Loads the stream and stores its state as the stream's snapshot, replacing the one
    /// before. Returns the version it covers (0: the stream has no events, and nothing was
    /// stored).
    ///
    /// Runs in a write transaction of its own. Snapshots are also made on
    /// [`save`](Self::save) every `snapshot_every` events.
    ///
    /// ```
    /// use varvedb::{aggregate, Event, EventData, ExpectedVersion, Varve};
    ///
    /// #[derive(Event)]
    /// struct Deposited { cents: u64 }
    ///
    /// #[derive(Default, EventData)]
    /// struct Account { balance: u64 }
    ///
    /// #[aggregate(snapshot)]
    /// impl Account {
    ///     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let account = db.stream::<Account>(7u128);
    /// account.append_all(ExpectedVersion::NoStream, (1..=100).map(|cents| Deposited { cents }))?;
    /// assert_eq!(account.snapshot()?, 100);
    /// account.append(ExpectedVersion::Exact(100), Deposited { cents: 1 })?;
    /// let loaded = account.load()?;
    /// assert_eq!((loaded.state().balance, loaded.replayed()), (5051, 1));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`load`](Self::load); [`Error::Serialize`] if the state fails to archive;
    /// [`Error::WouldDeadlock`] from inside a projection handler.
    pub fn snapshot(&self) -> Result<u32, Error>
    where
        A: Snapshotted,
    {
        let loaded = self.load()?;
        let stored = snapshot::store(&self.db, self.id, &loaded.state, loaded.version)?;
        Ok(if stored { loaded.version } else { 0 })
    }

    /// Appends `events` if the stream is still at the version `loaded` reflects.
    ///
    /// # Errors
    /// [`Error::ConcurrencyConflict`] if another writer appended since the load; otherwise
    /// as [`append_all`](Self::append_all).
    pub fn save<I>(&self, loaded: &Loaded<A>, events: I) -> Result<Appended, Error>
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        if loaded.stream != self.id {
            return Err(Error::StreamMismatch { loaded: loaded.stream, stream: self.id });
        }
        let appended = self.append_all(ExpectedVersion::Exact(loaded.version), events)?;
        self.snapshot_if_due(loaded.version, appended.last_version);
        Ok(appended)
    }

    /// After a save from `from` to `to`: a snapshot if the save crossed a multiple of
    /// `snapshot_every`. The events are stored whatever happens here, so a snapshot that
    /// cannot be made (a store error, or a save from inside a projection handler) is left
    /// for the next one; the load it costs starts from the previous snapshot.
    pub(crate) fn snapshot_if_due(&self, from: u32, to: u32) {
        let Some(codec) = &A::SNAPSHOTS else { return };
        if codec.every == 0 || from / codec.every == to / codec.every {
            return;
        }
        if let Ok(loaded) = self.load() {
            let _ = snapshot::store(&self.db, self.id, &loaded.state, loaded.version);
        }
    }

    /// The stream's events from `from_version` on, typed and read in place.
    ///
    /// # Errors
    /// As [`load`](Self::load); each item may be [`Error::UnknownEvent`] or a corruption error.
    ///
    /// ```
    /// # use varvedb::{aggregate, Event, ExpectedVersion, Pending, Varve};
    /// # #[derive(Event)] struct Deposited { cents: u64 }
    /// # #[derive(Event)] struct Withdrawn { cents: u64 }
    /// # #[derive(Default)] struct Account;
    /// # #[aggregate] impl Account {
    /// #     fn deposited(&mut self, _: &ArchivedDeposited) {}
    /// #     fn withdrawn(&mut self, _: &ArchivedWithdrawn) {}
    /// # }
    /// # let dir = tempfile::tempdir()?;
    /// # let db = Varve::open(dir.path())?;
    /// let account = db.stream::<Account>(1u128);
    /// account.append_all(ExpectedVersion::NoStream, [Pending::from(Deposited { cents: 9 }), Pending::from(Withdrawn { cents: 4 })])?;
    /// let view = db.begin_read()?;
    /// for event in account.read(&view, 1)? {
    ///     let event = event?;
    ///     if let Some(w) = event.get::<Withdrawn>()? {
    ///         assert_eq!((event.recorded().version(), w.cents.to_native()), (2, 4));
    ///     }
    /// }
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn read<'v>(&self, view: &'v ReadView<'_>, from_version: u32) -> Result<TypedEvents<'v, A>, Error> {
        let head = self.check(view)?;
        Ok(TypedEvents {
            inner: view.read_stream_to_head(self.id, from_version, head)?,
            _aggregate: PhantomData,
        })
    }

    /// Runs a command: load, [`Handle::handle`], save; on a concurrency conflict, wait a
    /// little (see [`RetryPolicy`]), reload and decide again, up to
    /// [`DEFAULT_EXECUTE_RETRIES`] times.
    ///
    /// Blocks the calling thread (LMDB reads and the commit); in async code use
    /// [`execute_async`](Self::execute_async).
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] with the handler's error (nothing written);
    /// [`ExecuteError::RetriesExhausted`] when every attempt met a conflicting writer;
    /// [`ExecuteError::Store`].
    pub fn execute<C>(&self, command: &C) -> Result<Executed, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
    {
        self.execute_with(command, &ExecuteOptions::new())
    }

    /// [`execute`](Self::execute) with an explicit bound on retries after conflicts, and the
    /// default backoff.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    pub fn execute_with_retries<C>(
        &self,
        command: &C,
        retries: u32,
    ) -> Result<Executed, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
    {
        let policy = RetryPolicy { attempts: retries.saturating_add(1), ..RetryPolicy::default() };
        self.execute_with(command, &ExecuteOptions::new().retry(policy))
    }

    /// Checks that the stream is `A`'s (or does not exist) and that the store knows `A`'s
    /// events with the shapes this build has; returns the stream's version, which a read of
    /// it is then checked against.
    fn check(&self, view: &ReadView<'_>) -> Result<Option<u32>, Error> {
        // One lookup of the stream's head for its existence, its kind and its version.
        let head = view.stream_head(self.id)?;
        if let Some((_, kind)) = head
            && kind != Some(A::KIND)
        {
            return Err(Error::StreamKindMismatch {
                stream: self.id,
                expected: A::KIND.to_owned(),
                actual: kind.map(str::to_owned),
            });
        }
        for info in A::EVENTS.iter().flat_map(EventInfo::chain) {
            if let Some(stored) = view.schema_fingerprint(info.name, info.version)?
                && stored != info.fingerprint
            {
                return Err(Error::SchemaMismatch {
                    event: info.name.to_owned(),
                    version: info.version,
                    stored,
                    found: info.fingerprint,
                });
            }
        }
        Ok(head.map(|(version, _)| version))
    }
}

/// [`Stream::snapshot_if_due`] for a stream named by id, so a save of several aggregates
/// ([`Varve::transact`]) can keep one plain function per save.
pub(crate) fn snapshot_stream_if_due<A: Aggregate>(db: &Varve, id: StreamId, from: u32, to: u32) {
    Stream::<A> { db: db.clone(), id, _aggregate: PhantomData }.snapshot_if_due(from, to);
}
