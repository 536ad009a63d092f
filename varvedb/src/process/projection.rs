use std::time::Duration;

use super::runner;
use super::table::{self, Key, Table, Value};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::storage::{Storage, WriteTxn, value};
use crate::store::Varve;
use crate::typed::{Event, EventInfo};

/// What a handler may fail with: any error, boxed. Storage errors convert with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Why a processor stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// A handler failed on the event at `seq` (after the retries a [`Processor`] allows).
    /// The checkpoint is just before it: after a fix, processing resumes at this event.
    #[error("processor {processor:?} failed on the event at seq {seq} (type {type_tag:?}): {source}")]
    Handler {
        /// The processor's name.
        processor: String,
        /// The event that failed.
        seq: u64,
        /// Its type tag.
        type_tag: String,
        /// The handler's error.
        source: HandlerError,
    },
    /// The processor handles events of this type, but not at this schema version: skipping
    /// it would silently leave it out of the read model. Add a handler for the version.
    #[error("processor {processor:?} has no handler for {type_tag:?} version {version} (seq {seq})")]
    UnhandledVersion {
        /// The processor's name.
        processor: String,
        /// The event.
        seq: u64,
        /// Its type tag.
        type_tag: String,
        /// Its schema version.
        version: u32,
    },
    /// Another instance of the processor moved its checkpoint meanwhile (from `expected` to
    /// `found`). Run one instance per name.
    #[error(
        "the checkpoint of {processor:?} moved from {expected} to {found} under this instance; run one instance per processor"
    )]
    CheckpointMoved {
        /// The processor's name.
        processor: String,
        /// The checkpoint this instance started from.
        expected: u64,
        /// The checkpoint it found when committing.
        found: u64,
    },
    /// A handler panicked; the batch in progress was not committed.
    #[error("a handler panicked: {0}")]
    Panicked(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// The handler for `event`, or an error if the processor handles its tag at other versions.
fn handler_for<'h, H>(
    processor: &str,
    handlers: &'h mut [(EventInfo, H)],
    event: &RecordedEvent<'_>,
) -> Result<Option<&'h mut H>, ProcessorError> {
    if let Some(i) = handlers.iter().position(|(info, _)| info.matches(event)) {
        return Ok(Some(&mut handlers[i].1));
    }
    if handlers.iter().any(|(info, _)| info.name == event.type_tag()) {
        return Err(ProcessorError::UnhandledVersion {
            processor: processor.to_owned(),
            seq: event.seq(),
            type_tag: event.type_tag().to_owned(),
            version: event.schema_version(),
        });
    }
    Ok(None)
}

/// Refuses a second handler for one event type, which would never run.
fn assert_new<H>(handlers: &[(EventInfo, H)], info: EventInfo, owner: &str) {
    assert!(
        !handlers.iter().any(|(i, _)| i.name == info.name && i.version == info.version),
        "{owner} already handles {:?} version {}; one handler per event type",
        info.name,
        info.version
    );
}

type ProjectionHandler =
    Box<dyn FnMut(&mut ProjectionTxn<'_, '_>, &RecordedEvent<'_>) -> Result<(), HandlerError> + Send>;
type EffectHandler = Box<dyn FnMut(&RecordedEvent<'_>) -> Result<(), HandlerError> + Send>;

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events looked at (handled or skipped by tag).
    pub scanned: u64,
    /// The checkpoint after the step: the last seq processed.
    pub checkpoint: u64,
}

/// A read model kept in the store, updated exactly once per event.
///
/// ```
/// use varvedb::{Event, ExpectedVersion, NewEvent, Projection, Table, Varve};
///
/// #[derive(Event)]
/// struct Deposited { account: String, cents: u64 }
///
/// const BALANCES: Table<String, u64> = Table::new("balances", "by_account");
///
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Varve::open(dir.path())?;
/// let mut balances = Projection::new("balances").on::<Deposited>(|tx, e, _meta| {
///     let account = e.account.to_string();
///     let now = tx.get(&BALANCES, &account)?.unwrap_or(0);
///     tx.insert(&BALANCES, &account, &(now + e.cents.to_native()))?;
///     Ok(())
/// });
/// let deposit = |cents| NewEvent::from_event(&Deposited { account: "ana".into(), cents });
/// db.append(1u128, ExpectedVersion::Auto, [deposit(5)?, deposit(7)?])?;
/// balances.catch_up(&db)?;
/// assert_eq!(db.begin_read()?.get(&BALANCES, &"ana".to_owned())?, Some(12));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Projection {
    name: String,
    handlers: Vec<(EventInfo, ProjectionHandler)>,
    on_shredded: Option<ProjectionHandler>,
    batch: usize,
}

/// The write transaction a projection's handler is given: reads and writes of the
/// projection's own tables, committed together with its checkpoint.
pub struct ProjectionTxn<'s, 't> {
    storage: &'s Storage,
    txn: &'s mut WriteTxn<'t>,
    projection: &'s str,
    key: Vec<u8>,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events: Vec<&str> = self.handlers.iter().map(|(i, _)| i.name).collect();
        f.debug_struct("Projection")
            .field("name", &self.name)
            .field("events", &events)
            .finish_non_exhaustive()
    }
}

impl Projection {
    /// A projection named `name` (its checkpoint's key, and the owner of its tables).
    ///
    /// # Panics
    /// If `name` is empty or longer than 255 bytes.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(!name.is_empty() && name.len() <= 255, "a projection name is 1 to 255 bytes");
        Projection { name, handlers: Vec::new(), on_shredded: None, batch: 1_000 }
    }

    /// Handles events of type `E`: `f(tx, archived_event, metadata)`, with the event read in
    /// place. Its writes through `tx` commit with the checkpoint; an error aborts the batch.
    ///
    /// # Panics
    /// If the projection already handles `E`'s type and version.
    ///
    /// The handler runs inside the store's write transaction: it must not append to the
    /// store (that would wait for the lock the handler itself holds), and it should be quick.
    #[must_use]
    pub fn on<E: Event>(
        mut self,
        mut f: impl FnMut(
            &mut ProjectionTxn<'_, '_>,
            &E::Archived,
            &RecordedEvent<'_>,
        ) -> Result<(), HandlerError>
        + Send
        + 'static,
    ) -> Self {
        let info = EventInfo::of::<E>();
        assert_new(&self.handlers, info, &self.name);
        self.handlers.push((
            info,
            Box::new(move |tx, event| {
                let archived = event.access::<E::Archived>()?;
                f(tx, archived, event)
            }),
        ));
        self
    }

    /// Handles events of crypto-shredded streams ([`Varve::shred`]), whatever their type:
    /// for example, to delete what the read model holds about the stream. Without it, such
    /// events are skipped: their contents are gone.
    ///
    /// It runs for shredded events the projection reads: those it had not reached when the
    /// stream was shredded, and all of them on a [`rebuild`](Self::rebuild). Events it had
    /// already applied are not replayed: rebuild after shredding, or remove the stream's
    /// rows when you call `shred`.
    #[must_use]
    pub fn on_shredded(
        mut self,
        f: impl FnMut(&mut ProjectionTxn<'_, '_>, &RecordedEvent<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Self {
        self.on_shredded = Some(Box::new(f));
        self
    }

    /// Events per transaction (default 1,000).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }

    /// The projection's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies the next batch of committed events after the checkpoint, in one write
    /// transaction with the new checkpoint.
    ///
    /// # Errors
    /// [`ProcessorError::Handler`] naming the seq if a handler fails (nothing of the batch
    /// is kept); [`ProcessorError::UnhandledVersion`]; [`ProcessorError::Store`].
    pub fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let storage = db.storage();
        // Nothing new: answer from a read transaction, without taking the writer lock.
        {
            let txn = storage.read_txn()?;
            let checkpoint = read_checkpoint(storage, &txn, &self.name)?;
            if checkpoint >= storage.last_seq(&txn)? {
                return Ok(Progress { scanned: 0, checkpoint });
            }
        }
        // The write transaction takes LMDB's writer lock first; a read snapshot opened after
        // it sees exactly the committed state the write transaction sees, and its pages stay
        // valid while the handlers write, so events are read in place.
        let mut txn = storage.write_txn()?;
        let _held = crate::storage::WriteLockHeld::mark();
        let view = db.begin_read()?;
        let from = read_checkpoint(storage, &txn, &self.name)?;
        let mut checkpoint = from;
        let mut scanned = 0u64;
        let mut log = view.read_all(from.saturating_add(1))?;
        let mut buf = Vec::new();
        while scanned < self.batch as u64
            && let Some(event) = log.next_reusing(&mut buf)
        {
            let event = event?;
            scanned += 1;
            checkpoint = event.seq();
            let failed = |source| ProcessorError::Handler {
                processor: self.name.clone(),
                seq: event.seq(),
                type_tag: event.type_tag().to_owned(),
                source,
            };
            let mut tx = ProjectionTxn { storage, txn: &mut txn, projection: &self.name, key: Vec::new() };
            if event.is_shredded() {
                if let Some(on_shredded) = &mut self.on_shredded {
                    on_shredded(&mut tx, &event).map_err(failed)?;
                }
                continue;
            }
            let Some(handler) = handler_for(&self.name, &mut self.handlers, &event)? else {
                continue;
            };
            handler(&mut tx, &event).map_err(failed)?;
        }
        if checkpoint > from {
            write_checkpoint(storage, &mut txn, &self.name, checkpoint)?;
            storage.commit(txn)?;
        }
        Ok(Progress { scanned, checkpoint })
    }

    /// Steps until every event committed so far is applied. Returns the checkpoint.
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn catch_up(&mut self, db: &Varve) -> Result<u64, ProcessorError> {
        runner::catch_up(self, db)
    }

    /// Erases the read model (every table of this projection) and the checkpoint, in one
    /// transaction. The next steps replay the log from the start.
    ///
    /// # Errors
    /// A storage error; nothing is erased then.
    pub fn reset(&self, db: &Varve) -> Result<(), Error> {
        let storage = db.storage();
        let mut txn = storage.write_txn()?;
        storage.delete_prefix(&mut txn, storage.tables.projections, &table::projection_prefix(&self.name))?;
        storage.delete(&mut txn, storage.tables.checkpoints, self.name.as_bytes())?;
        storage.commit(txn)
    }

    /// [`reset`](Self::reset), then [`catch_up`](Self::catch_up).
    ///
    /// # Errors
    /// As those two.
    pub fn rebuild(&mut self, db: &Varve) -> Result<u64, ProcessorError> {
        self.reset(db)?;
        self.catch_up(db)
    }
}

impl ProjectionTxn<'_, '_> {
    /// The value under `key` in `table`, seeing this transaction's own writes.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if the stored value does not decode.
    pub fn get<K: Key, V: Value>(&mut self, table: &Table<K, V>, key: &K) -> Result<Option<V>, Error> {
        table.encode_key(key, &mut self.key);
        match self.storage.get(self.txn, self.storage.tables.projections, &self.key)? {
            None => Ok(None),
            Some(raw) => table.decode_value(raw).map(Some),
        }
    }

    /// Stores `value` under `key` in `table`, replacing any previous value.
    ///
    /// # Errors
    /// [`Error::ForeignTable`] if `table` belongs to another projection; storage errors.
    pub fn insert<K: Key, V: Value>(&mut self, table: &Table<K, V>, key: &K, value: &V) -> Result<(), Error> {
        self.own(table)?;
        table.encode_key(key, &mut self.key);
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.storage.put(self.txn, self.storage.tables.projections, &self.key, &bytes)
    }

    /// Removes `key` from `table`; returns whether it was there.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn remove<K: Key, V: Value>(&mut self, table: &Table<K, V>, key: &K) -> Result<bool, Error> {
        self.own(table)?;
        table.encode_key(key, &mut self.key);
        self.storage.delete(self.txn, self.storage.tables.projections, &self.key)
    }

    fn own<K, V>(&self, table: &Table<K, V>) -> Result<(), Error> {
        if table.projection() == self.projection {
            Ok(())
        } else {
            Err(Error::ForeignTable { projection: self.projection.to_owned(), table: table.describe() })
        }
    }
}

/// A handler with effects outside the store, run at least once per event.
///
/// The checkpoint is committed after handlers succeed, so after a crash the events since the
/// last checkpoint are handled again: use the seq ([`RecordedEvent::seq`]) as an idempotency
/// key. A failing handler is retried with exponential backoff; when the retries run out, the
/// processor stops with [`ProcessorError::Handler`] naming the seq, its checkpoint just before
/// that event, so it resumes there once the cause is fixed.
///
/// ```
/// use varvedb::{Event, ExpectedVersion, NewEvent, Processor, Varve};
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Event)]
/// struct Registered { email: String }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Varve::open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&Registered { email: "a@b.c".into() })?])?;
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// let outbox = Arc::clone(&sent);
/// let mut mailer = Processor::new("welcome-mail").on::<Registered>(move |e, meta| {
///     // `meta.seq()` is the idempotency key for the mail service.
///     outbox.lock().unwrap().push((meta.seq(), e.email.to_string()));
///     Ok(())
/// });
/// mailer.catch_up(&db)?;
/// assert_eq!(*sent.lock().unwrap(), [(1, "a@b.c".to_owned())]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Processor {
    name: String,
    handlers: Vec<(EventInfo, EffectHandler)>,
    on_shredded: Option<EffectHandler>,
    batch: usize,
    retry: Retry,
}

/// How a [`Processor`] retries a failing handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per event, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// 5 attempts, 10 ms doubling up to 1 s.
    fn default() -> Self {
        Retry { attempts: 5, initial_backoff: Duration::from_millis(10), max_backoff: Duration::from_secs(1) }
    }
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events: Vec<&str> = self.handlers.iter().map(|(i, _)| i.name).collect();
        f.debug_struct("Processor").field("name", &self.name).field("events", &events).finish_non_exhaustive()
    }
}

impl Processor {
    /// A processor named `name` (its checkpoint's key).
    ///
    /// # Panics
    /// If `name` is empty or longer than 255 bytes.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(!name.is_empty() && name.len() <= 255, "a processor name is 1 to 255 bytes");
        Processor { name, handlers: Vec::new(), on_shredded: None, batch: 100, retry: Retry::default() }
    }

    /// Handles events of type `E`: `f(archived_event, metadata)`.
    ///
    /// # Panics
    /// If the processor already handles `E`'s type and version.
    #[must_use]
    pub fn on<E: Event>(
        mut self,
        mut f: impl FnMut(&E::Archived, &RecordedEvent<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Self {
        assert_new(&self.handlers, EventInfo::of::<E>(), &self.name);
        self.handlers.push((
            EventInfo::of::<E>(),
            Box::new(move |event| {
                let archived = event.access::<E::Archived>()?;
                f(archived, event)
            }),
        ));
        self
    }

    /// Handles events of crypto-shredded streams ([`Varve::shred`]), whatever their type,
    /// with the same retries as other handlers. Without it, such events are skipped: their
    /// contents are gone. Like [`Projection::on_shredded`], it sees only shredded events the
    /// processor reads after the shred, not events it had handled before.
    #[must_use]
    pub fn on_shredded(
        mut self,
        f: impl FnMut(&RecordedEvent<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Self {
        self.on_shredded = Some(Box::new(f));
        self
    }

    /// Events handled between checkpoint commits (default 100): a crash repeats at most this
    /// many.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch = events.max(1);
        self
    }

    /// The retry policy (default [`Retry::default`]).
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Retry { attempts: retry.attempts.max(1), ..retry };
        self
    }

    /// The processor's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handles the next batch after the checkpoint, then commits the checkpoint.
    ///
    /// The batch is copied out of the store first, so no read transaction stays open while
    /// handlers run or back off (an open one would keep the file from reusing pages).
    ///
    /// # Errors
    /// [`ProcessorError::Handler`] when an event's retries run out (the checkpoint then
    /// stands just before it); [`ProcessorError::UnhandledVersion`];
    /// [`ProcessorError::CheckpointMoved`] if another instance advanced the checkpoint;
    /// [`ProcessorError::Store`].
    ///
    /// # Blocking
    /// Runs the handlers and sleeps between retries on the calling thread.
    pub fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let storage = db.storage();
        let (from, batch) = {
            let view = db.begin_read()?;
            let from = read_checkpoint(storage, view.txn(), &self.name)?;
            let mut batch = crate::event::OwnedBatch::default();
            let mut log = view.read_all(from.saturating_add(1))?;
            let mut buf = Vec::new();
            while batch.len() < self.batch
                && let Some(event) = log.next_reusing(&mut buf)
            {
                batch.push(&event?);
            }
            (from, batch.finish())
        };
        let mut done = from;
        let mut failure = None;
        'events: for owned in &batch {
            let event = RecordedEvent::from_owned(owned);
            let handler = if event.is_shredded() {
                Ok(self.on_shredded.as_mut())
            } else {
                handler_for(&self.name, &mut self.handlers, &event)
            };
            let handler = match handler {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if let Some(handler) = handler {
                let mut backoff = self.retry.initial_backoff;
                let mut attempt = 1;
                loop {
                    match handler(&event) {
                        Ok(()) => break,
                        Err(source) if attempt >= self.retry.attempts => {
                            failure = Some(ProcessorError::Handler {
                                processor: self.name.clone(),
                                seq: event.seq(),
                                type_tag: event.type_tag().to_owned(),
                                source,
                            });
                            break 'events;
                        }
                        Err(_) => {
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(self.retry.max_backoff);
                            attempt += 1;
                        }
                    }
                }
            }
            done = event.seq();
        }
        if done > from {
            // Compare-and-set: a second instance must not move the checkpoint backwards.
            let mut txn = storage.write_txn()?;
            let found = read_checkpoint(storage, &txn, &self.name)?;
            if found != from {
                return Err(ProcessorError::CheckpointMoved {
                    processor: self.name.clone(),
                    expected: from,
                    found,
                });
            }
            write_checkpoint(storage, &mut txn, &self.name, done)?;
            storage.commit(txn)?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Progress { scanned: batch.len() as u64, checkpoint: done }),
        }
    }

    /// Steps until every event committed so far is handled. Returns the checkpoint.
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn catch_up(&mut self, db: &Varve) -> Result<u64, ProcessorError> {
        runner::catch_up(self, db)
    }
}

impl Varve {
    /// The last seq the processor or projection named `name` has processed (0 if none).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn checkpoint(&self, name: &str) -> Result<u64, Error> {
        let storage = self.storage();
        let txn = storage.read_txn()?;
        read_checkpoint(storage, &txn, name)
    }

    /// How far the processor named `name` is behind: last committed seq − its checkpoint.
    ///
    /// # Errors
    /// As [`checkpoint`](Self::checkpoint).
    pub fn lag(&self, name: &str) -> Result<u64, Error> {
        let storage = self.storage();
        let txn = storage.read_txn()?;
        let head = storage.last_seq(&txn)?;
        Ok(head.saturating_sub(read_checkpoint(storage, &txn, name)?))
    }
}

fn read_checkpoint(storage: &Storage, txn: &crate::storage::ReadTxn<'_>, name: &str) -> Result<u64, Error> {
    match storage.get(txn, storage.tables.checkpoints, name.as_bytes())? {
        None => Ok(0),
        Some(raw) => value::decode_seq(raw).ok_or_else(|| Error::CorruptIndex {
            table: "checkpoints",
            reason: format!("checkpoint of {name:?} is not 8 bytes"),
        }),
    }
}

fn write_checkpoint(storage: &Storage, txn: &mut WriteTxn<'_>, name: &str, seq: u64) -> Result<(), Error> {
    storage.put(txn, storage.tables.checkpoints, name.as_bytes(), &value::seq(seq))
}
