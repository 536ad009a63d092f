//! Commands beyond one stream's `execute`: the retry policy, typed writes over several
//! aggregates ([`WriteBatch::save`], [`Varve::transact`]), and the async forms of the typed
//! calls, which run their blocking LMDB work on tokio's blocking pool.

use std::time::Duration;

use crate::batch::{Appended, ExpectedVersion, LayoutFn, NewEvent, WriteBatch};
use crate::error::Error;
use crate::event::OwnedEvent;
use crate::id::StreamId;
use crate::read::ReadView;
use crate::store::Varve;
use crate::typed::stream::{
    DEFAULT_EXECUTE_RETRIES, ExecuteError, Executed, Loaded, Stream, TypedEvent, snapshot_stream_if_due,
    unknown,
};
use crate::typed::{Aggregate, Handle, IntoPending};

/// How a command retries after a concurrency conflict: how many attempts, and how long it
/// waits between them.
///
/// The wait before attempt `n + 1` is drawn at random between half and all of
/// `initial_backoff × 2ⁿ⁻¹`, capped at `max_backoff`. The randomness (jitter) spreads writers
/// that conflicted at the same moment, so they do not meet again at the next attempt.
///
/// ## Defaults
/// `attempts`: [`DEFAULT_EXECUTE_RETRIES`] + 1 (100), `initial_backoff`: 1 ms,
/// `max_backoff`: 50 ms: a command waits at most about 4.7 s in all before it gives up with
/// [`ExecuteError::RetriesExhausted`]. With these, 8 threads running 200 commands each on one
/// stream all succeed; the unluckiest command needed 41 to 52 attempts (varvedb 0.1.0,
/// 2026-12-06, 2 shared cores, durable commits; `tests/transfers.rs`). Every writer on the
/// stream takes part in each round, so a command's odds per attempt fall with the number of
/// writers: allow more attempts when more threads write to one stream.
///
/// ```
/// use std::time::Duration;
/// use varvedb::RetryPolicy;
/// let patient = RetryPolicy { attempts: 100, max_backoff: Duration::from_millis(500), ..RetryPolicy::default() };
/// assert_eq!(RetryPolicy::no_retry().attempts, 1);
/// # let _ = patient;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts, the first included (at least 1).
    pub attempts: u32,
    /// Base of the wait before the second attempt; doubled after each conflict.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_EXECUTE_RETRIES + 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// One attempt: a conflict is reported at once.
    #[must_use]
    pub fn no_retry() -> Self {
        RetryPolicy { attempts: 1, ..RetryPolicy::default() }
    }

    /// The wait after the `failed`-th attempt (1-based), with jitter.
    fn backoff(&self, failed: u32) -> Duration {
        let doubled = self.initial_backoff.saturating_mul(1u32 << failed.saturating_sub(1).min(20));
        let cap = doubled.min(self.max_backoff);
        // A random fraction in [0.5, 1): enough spread to part writers; a failed draw only
        // loses the spread.
        let r = getrandom::u64().unwrap_or(u64::from(failed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        #[allow(clippy::cast_precision_loss)]
        let fraction = 0.5 + (r >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        cap.mul_f64(fraction)
    }

    /// Runs `attempt` (given its 1-based number) until it is not a conflict or the attempts
    /// run out.
    pub(crate) fn run<T, E>(
        &self,
        db: &Varve,
        mut attempt: impl FnMut(u32) -> Result<T, ExecuteError<E>>,
    ) -> Result<T, ExecuteError<E>> {
        let attempts = self.attempts.max(1);
        let mut n = 1;
        loop {
            match attempt(n) {
                Err(ExecuteError::Store(conflict @ Error::ConcurrencyConflict { .. })) => {
                    if n >= attempts {
                        return Err(ExecuteError::RetriesExhausted { attempts: n, last: conflict });
                    }
                    let backoff = self.backoff(n);
                    crate::trace::event!(
                        target: "varvedb::retry",
                        tracing::Level::DEBUG,
                        attempt = n,
                        backoff_us = backoff.as_micros() as u64,
                        "command conflicted, retrying"
                    );
                    std::thread::sleep(backoff);
                    db.count_retry();
                    n += 1;
                }
                other => return other,
            }
        }
    }
}

/// How [`Stream::execute_with`] and [`Varve::transact_with`] run a command: the retry policy,
/// and metadata stamped on every event the command decides.
///
/// ## Defaults
/// [`RetryPolicy::default`], no metadata.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    pub(crate) retry: RetryPolicy,
    /// Encoded typed metadata, or why it failed to serialize.
    pub(crate) metadata: Option<Result<Vec<u8>, String>>,
    /// The metadata type's fingerprint and layout description, for the registry.
    pub(crate) meta_layout: Option<(u64, LayoutFn)>,
}

/// Metadata stamped on a command's events: its bytes and, for the registry, its layout.
#[derive(Clone, Copy)]
pub(crate) struct Stamp<'a> {
    bytes: &'a [u8],
    layout: Option<(u64, LayoutFn)>,
}

impl ExecuteOptions {
    /// The defaults.
    #[must_use]
    pub fn new() -> Self {
        ExecuteOptions::default()
    }

    /// The retry policy after conflicts.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The stamp for events: `None` when there is no metadata.
    fn stamp(&self) -> Result<Option<Stamp<'_>>, Error> {
        match &self.metadata {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(Stamp { bytes, layout: self.meta_layout })),
            Some(Err(e)) => Err(Error::Serialize(e.clone())),
        }
    }
}

/// Serializes typed events; those without metadata of their own get `stamp`.
fn serialize<A, I>(events: I, stamp: Option<Stamp<'_>>) -> Result<Vec<NewEvent>, Error>
where
    I: IntoIterator,
    I::Item: IntoPending<A>,
{
    events
        .into_iter()
        .map(|e| {
            let mut event = e.into_pending().event?;
            if let Some(stamp) = stamp
                && event.metadata.is_empty()
            {
                event.metadata = stamp.bytes.to_vec();
                event.meta_layout = stamp.layout;
            }
            Ok(event)
        })
        .collect()
}

impl WriteBatch {
    /// Adds events of `A` to `stream`, to be written if the stream is still at the version
    /// `loaded` reflects: the typed form of [`append_kind`](Self::append_kind), with the same
    /// compile-time check as [`Stream::save`]. A batch saving to several streams is written
    /// all or nothing: a conflict on any of them writes none.
    ///
    /// An empty `events` adds nothing (and checks nothing). Unlike [`Stream::save`] and
    /// [`Varve::transact`], writing the batch makes no aggregate snapshot
    /// (`snapshot_every`); call [`Stream::snapshot`] after it if needed.
    ///
    /// # Errors
    /// [`Error::StreamMismatch`] if `loaded` is another stream's; [`Error::Serialize`].
    /// Nothing is added to the batch then.
    ///
    /// ```
    /// # use varvedb::{aggregate, Event, ExpectedVersion, Varve};
    /// # #[derive(Event)] struct Deposited { cents: u64 }
    /// # #[derive(Event)] struct Withdrawn { cents: u64 }
    /// # #[derive(Default)] struct Account { balance: u64 }
    /// # #[aggregate] impl Account {
    /// #     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
    /// #     fn withdrawn(&mut self, e: &ArchivedWithdrawn) { self.balance -= e.cents.to_native(); }
    /// # }
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    /// from.append(ExpectedVersion::NoStream, Deposited { cents: 100 })?;
    /// let (a, b) = (from.load()?, to.load()?);
    /// let mut tx = db.batch();
    /// tx.save(&from, &a, [Withdrawn { cents: 30 }])?;
    /// tx.save(&to, &b, [Deposited { cents: 30 }])?;
    /// db.write(tx)?;
    /// assert_eq!((from.load()?.state().balance, to.load()?.state().balance), (70, 30));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn save<A, I>(
        &mut self,
        stream: &Stream<A>,
        loaded: &Loaded<A>,
        events: I,
    ) -> Result<&mut Self, Error>
    where
        A: Aggregate,
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        if loaded.stream != stream.id {
            return Err(Error::StreamMismatch { loaded: loaded.stream, stream: stream.id });
        }
        self.append_typed(stream, ExpectedVersion::Exact(loaded.version), events)
    }

    /// Adds events of `A` to `stream`, checked against `expected` (the typed form of
    /// [`append_kind`](Self::append_kind)). An empty `events` adds nothing.
    ///
    /// # Errors
    /// [`Error::Serialize`]; nothing is added to the batch then.
    pub fn append_typed<A, I>(
        &mut self,
        stream: &Stream<A>,
        expected: ExpectedVersion,
        events: I,
    ) -> Result<&mut Self, Error>
    where
        A: Aggregate,
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let events = serialize(events, None)?;
        if !events.is_empty() {
            self.append_static_kind(stream.id, (A::KIND, A::EVENTS), expected, events);
        }
        Ok(self)
    }
}

/// The outcome of [`Varve::transact`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transacted<R> {
    /// What the command returned on its successful attempt.
    pub value: R,
    /// Where each save landed, in the order they were made (empty: nothing was saved).
    pub appended: Vec<Appended>,
    /// How many times the command was decided (1 + retries after conflicts).
    pub attempts: u32,
}

/// One attempt of a [`Varve::transact`] command: loads from one consistent snapshot, and
/// saves gathered into one atomic write.
pub struct Transaction<'t> {
    view: ReadView<'t>,
    batch: WriteBatch,
    stamp: Option<Stamp<'t>>,
    /// Saves of aggregates with `snapshot_every`, to snapshot after the write if they cross
    /// a multiple: the stream, the version it was loaded at, and the aggregate's snapshot.
    snapshots: Vec<(StreamId, u32, SnapshotIfDue)>,
}

/// Stores a snapshot of stream `id` of one aggregate type if a save from one version to
/// another crossed a multiple of its `snapshot_every`.
type SnapshotIfDue = fn(&Varve, StreamId, u32, u32);

/// What a [`Transaction`] saved, to be written.
pub(crate) struct Saves {
    /// The events, one append per save.
    pub(crate) batch: WriteBatch,
    snapshots: Vec<(StreamId, u32, SnapshotIfDue)>,
}

impl Saves {
    /// Writes the saves atomically, then stores the snapshots they call for, as
    /// [`Stream::save`] does: the events are stored whether or not a snapshot can be.
    pub(crate) fn write(self, db: &Varve) -> Result<Vec<Appended>, Error> {
        let appended = db.write(self.batch)?;
        for (stream, from, snapshot_if_due) in self.snapshots {
            if let Some(to) = appended.iter().filter(|a| a.stream == stream).map(|a| a.last_version).max() {
                snapshot_if_due(db, stream, from, to);
            }
        }
        Ok(appended)
    }
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("saves", &self.batch.len()).finish_non_exhaustive()
    }
}

impl<'t> Transaction<'t> {
    /// An attempt on `db`'s current state.
    pub(crate) fn begin(db: &'t Varve, stamp: Option<Stamp<'t>>) -> Result<Self, Error> {
        Ok(Transaction { view: db.begin_read()?, batch: WriteBatch::new(), stamp, snapshots: Vec::new() })
    }

    /// The saves, with the snapshot closed.
    pub(crate) fn into_saves(self) -> Saves {
        Saves { batch: self.batch, snapshots: self.snapshots }
    }

    /// Folds `stream` into `A`, as of the snapshot all of this attempt's loads share.
    ///
    /// # Errors
    /// As [`Stream::load`].
    pub fn load<A: Aggregate>(&self, stream: &Stream<A>) -> Result<Loaded<A>, Error> {
        stream.load_in(&self.view)
    }

    /// Saves events of `A` to `stream` if it is still at the version `loaded` reflects. The
    /// saves of an attempt are written together when the command returns `Ok`; a conflict
    /// on any of them writes none and runs the command again. An empty `events` saves nothing.
    ///
    /// # Errors
    /// As [`WriteBatch::save`]; [`Error::SavedTwice`] if this attempt has saved events to
    /// `stream` already (running the command again would meet the same conflict).
    pub fn save<A, I>(&mut self, stream: &Stream<A>, loaded: &Loaded<A>, events: I) -> Result<(), Error>
    where
        A: Aggregate,
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        if loaded.stream != stream.id {
            return Err(Error::StreamMismatch { loaded: loaded.stream, stream: stream.id });
        }
        let events = serialize(events, self.stamp)?;
        if !events.is_empty() {
            if self.batch.appends.iter().any(|part| part.stream == stream.id) {
                return Err(Error::SavedTwice { stream: stream.id });
            }
            self.batch.append_static_kind(
                stream.id,
                (A::KIND, A::EVENTS),
                ExpectedVersion::Exact(loaded.version),
                events,
            );
            if A::SNAPSHOTS.as_ref().is_some_and(|codec| codec.every != 0) {
                self.snapshots.push((stream.id, loaded.version, snapshot_stream_if_due::<A>));
            }
        }
        Ok(())
    }

    /// The snapshot this attempt reads, for reads beside the loads.
    #[must_use]
    pub fn view(&self) -> &ReadView<'t> {
        &self.view
    }
}

impl Varve {
    /// An empty [`WriteBatch`], for typed writes over several streams
    /// ([`WriteBatch::save`]).
    #[must_use]
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new()
    }

    /// Runs a command over several aggregates: `command` loads what it needs through the
    /// [`Transaction`], decides, and saves; its saves are written atomically. When one of them
    /// meets a concurrency conflict, nothing is written and the command runs again on fresh
    /// state, as [`Stream::execute`] does for one stream (see [`RetryPolicy`]).
    ///
    /// Only saved streams are checked for conflicts: a stream the command loads but does not
    /// save to may change before the write. After the write, a saved aggregate with
    /// `snapshot_every` is snapshotted when its save crossed a multiple, as by [`Stream::save`].
    ///
    /// The command must not have side effects: it may run several times. Blocks the calling
    /// thread; in async code use [`transact_async`](Self::transact_async).
    ///
    /// # Errors
    /// Whatever `command` returns (a domain rejection as [`ExecuteError::Rejected`]; load
    /// errors convert with `?`); [`ExecuteError::RetriesExhausted`]; [`ExecuteError::Store`].
    ///
    /// ```
    /// use varvedb::{aggregate, Event, ExecuteError, ExpectedVersion, Varve};
    ///
    /// #[derive(Event)] struct Deposited { cents: u64 }
    /// #[derive(Event)] struct Withdrawn { cents: u64 }
    /// #[derive(Default)] struct Account { balance: u64 }
    /// #[aggregate] impl Account {
    ///     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
    ///     fn withdrawn(&mut self, e: &ArchivedWithdrawn) { self.balance -= e.cents.to_native(); }
    /// }
    ///
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    /// from.append(ExpectedVersion::NoStream, Deposited { cents: 100 })?;
    /// let transfer = |cents: u64| db.transact(|tx| {
    ///     let (a, b) = (tx.load(&from)?, tx.load(&to)?);
    ///     if a.state().balance < cents {
    ///         return Err(ExecuteError::Rejected("insufficient funds"));
    ///     }
    ///     tx.save(&from, &a, [Withdrawn { cents }])?;
    ///     tx.save(&to, &b, [Deposited { cents }])?;
    ///     Ok(())
    /// });
    /// transfer(60)?;
    /// assert!(matches!(transfer(60), Err(ExecuteError::Rejected("insufficient funds"))));
    /// assert_eq!((from.load()?.state().balance, to.load()?.state().balance), (40, 60));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transact<R, E, F>(&self, command: F) -> Result<Transacted<R>, ExecuteError<E>>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<R, ExecuteError<E>>,
    {
        self.transact_with(&ExecuteOptions::new(), command)
    }

    /// [`transact`](Self::transact) with options: the retry policy, and metadata stamped on
    /// every saved event that has none of its own.
    ///
    /// # Errors
    /// As [`transact`](Self::transact).
    pub fn transact_with<R, E, F>(
        &self,
        options: &ExecuteOptions,
        mut command: F,
    ) -> Result<Transacted<R>, ExecuteError<E>>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<R, ExecuteError<E>>,
    {
        let stamp = options.stamp()?;
        options.retry.run(self, |attempts| {
            let mut tx = Transaction::begin(self, stamp)?;
            let value = command(&mut tx)?;
            // The snapshot must not stay open while the write waits for its commit.
            let saves = tx.into_saves();
            if saves.batch.is_empty() {
                return Ok(Transacted { value, appended: Vec::new(), attempts });
            }
            let appended = saves.write(self)?;
            Ok(Transacted { value, appended, attempts })
        })
    }
}

impl<A: Aggregate> Stream<A> {
    /// [`execute`](Self::execute) with options: the retry policy, and metadata stamped on
    /// every decided event that has none of its own.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    pub fn execute_with<C>(
        &self,
        command: &C,
        options: &ExecuteOptions,
    ) -> Result<Executed, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
    {
        let stamp = options.stamp()?;
        options.retry.run(&self.db, |attempts| {
            let loaded = self.load()?;
            let events = loaded.state.handle(command).map_err(ExecuteError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed { version: loaded.version, appended: None, attempts });
            }
            let events = serialize(events, stamp)?;
            let mut batch = WriteBatch::new();
            batch.append_static_kind(
                self.id,
                (A::KIND, A::EVENTS),
                ExpectedVersion::Exact(loaded.version),
                events,
            );
            let appended = self.db.write(batch)?.pop().ok_or(Error::EmptyBatch)?;
            self.snapshot_if_due(loaded.version, appended.last_version);
            Ok(Executed { version: appended.last_version, appended: Some(appended), attempts })
        })
    }
}

impl<A: Aggregate> Stream<A> {
    /// The event at `version` of the stream, typed and read in place; `None` if the stream
    /// has not reached it.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn event_at<'v>(
        &self,
        view: &'v ReadView<'_>,
        version: u32,
    ) -> Result<Option<TypedEvent<'v, A>>, Error> {
        if version == 0 {
            return Ok(None);
        }
        match self.read(view, version)?.next().transpose()? {
            Some(event) if event.recorded().version() == version => Ok(Some(event)),
            _ => Ok(None),
        }
    }
}

/// Runs blocking store work on tokio's blocking pool.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(Error::Internal("a blocking store task was cancelled by its runtime's shutdown")),
        },
    }
}

impl<A: Aggregate + Send> Stream<A> {
    /// Async form of [`load`](Self::load): the fold runs on tokio's blocking pool, so the
    /// runtime's worker threads keep serving other tasks.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn load_async(&self) -> Result<Loaded<A>, Error> {
        let stream = self.clone();
        off_runtime(move || stream.load()).await?
    }

    /// Async form of [`read`](Self::read): the stream's events from `from_version` on, copied
    /// out of the store on tokio's blocking pool (a read view cannot be held across an
    /// `.await`). Read each typed with [`OwnedEvent::typed`].
    ///
    /// # Errors
    /// As [`read`](Self::read); the first failing event's error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: it only reads.
    pub async fn read_async(&self, from_version: u32) -> Result<Vec<OwnedEvent>, Error> {
        let stream = self.clone();
        off_runtime(move || {
            let view = stream.db.begin_read()?;
            stream.read(&view, from_version)?.map(|e| e.map(|e| e.recorded().to_owned_event())).collect()
        })
        .await?
    }

    /// Async form of [`execute`](Self::execute): loading, deciding, waiting between retries
    /// and committing run on tokio's blocking pool. Takes the command by value.
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Not cancel safe: once started, the command runs to its end even if this future is
    /// dropped, and its outcome is lost (as [`Varve::append_async`]).
    pub async fn execute_async<C>(
        &self,
        command: C,
    ) -> Result<Executed, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Send + 'static,
        <A as Handle<C>>::Error: Send + 'static,
    {
        self.execute_with_async(command, ExecuteOptions::new()).await
    }

    /// Async form of [`execute_with`](Self::execute_with).
    ///
    /// # Errors
    /// As [`execute`](Self::execute).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`execute_async`](Self::execute_async).
    pub async fn execute_with_async<C>(
        &self,
        command: C,
        options: ExecuteOptions,
    ) -> Result<Executed, ExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        C: Send + 'static,
        <A as Handle<C>>::Error: Send + 'static,
    {
        let stream = self.clone();
        off_runtime(move || stream.execute_with(&command, &options)).await?
    }
}

impl Varve {
    /// Async form of [`transact_with`](Self::transact_with): the command, the waits between
    /// retries and the commit run on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`transact`](Self::transact).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Not cancel safe: once started, the command runs to its end even if this future is
    /// dropped, and its outcome is lost.
    pub async fn transact_async<R, E, F>(
        &self,
        options: ExecuteOptions,
        mut command: F,
    ) -> Result<Transacted<R>, ExecuteError<E>>
    where
        F: FnMut(&mut Transaction<'_>) -> Result<R, ExecuteError<E>> + Send + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        let db = self.clone();
        off_runtime(move || db.transact_with(&options, &mut command)).await?
    }
}

impl OwnedEvent {
    /// This event as one of aggregate `A`'s, for typed access ([`TypedEvent::get`]).
    ///
    /// # Errors
    /// [`Error::UnknownEvent`] if `A` does not apply the event's type,
    /// [`Error::NoUpcastPath`] if it applies the type but cannot read the stored version.
    pub fn typed<A: Aggregate>(&self) -> Result<TypedEvent<'_, A>, Error> {
        let recorded = crate::event::RecordedEvent::from_owned(self);
        if !A::EVENTS.iter().any(|info| info.accepts(recorded.type_tag(), recorded.schema_version())) {
            return Err(crate::typed::upcast::no_path(A::EVENTS, &recorded)
                .unwrap_or_else(|| unknown::<A>(&recorded)));
        }
        Ok(TypedEvent::new(recorded))
    }
}
