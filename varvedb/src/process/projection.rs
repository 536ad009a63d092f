//! Projections: read models kept in the store, each event applied exactly once.
//!
//! A step applies a batch of events and writes the new checkpoint in one LMDB write
//! transaction, so the read model and its checkpoint never disagree, even after a crash.

use super::checkpoint::{
    Owner, check_owner, claim, delete_checkpoint, may_use, read_checkpoint, release, write_checkpoint,
};
use super::table::{self, Key, Table, Value};
use super::{HandlerError, ProcessorError, Progress, assert_no_handler_yet, handler_for, not_read, runner};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::storage::{Storage, WriteTxn};
use crate::store::Varve;
use crate::typed::metadata::Metadata;
use crate::typed::upcast::{archived_as, no_path};
use crate::typed::{Event, EventInfo, UpcastBuffer};

/// A registered handler, its event type erased so one list holds handlers of every type.
type ProjectionHandler =
    Box<dyn FnMut(&mut ProjectionTxn<'_, '_>, &RecordedEvent<'_>) -> Result<(), HandlerError> + Send>;

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
    batch_size: usize,
}

/// The write transaction a projection's handler is given: reads and writes of the
/// projection's own tables, committed together with its checkpoint.
pub struct ProjectionTxn<'s, 't> {
    storage: &'s Storage,
    txn: &'s mut WriteTxn<'t>,
    projection: &'s str,
    /// Reused to encode each key.
    key_buf: Vec<u8>,
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
        Projection { name, handlers: Vec::new(), on_shredded: None, batch_size: 1_000 }
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
        assert_no_handler_yet(&self.handlers, info, &self.name);
        // Older stored versions of `E` are upcast into one buffer this handler keeps.
        let mut upcast = UpcastBuffer::new();
        self.handlers.push((
            info,
            Box::new(move |tx, event| match archived_as::<E>(event, &mut upcast)? {
                Some(archived) => f(tx, archived, event),
                None => Err(no_path(&[info], event).unwrap_or_else(not_read).into()),
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
        self.batch_size = events.max(1);
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
    /// is kept); [`ProcessorError::UnhandledVersion`]; [`ProcessorError::NameInUse`] if a
    /// processor has this name; [`ProcessorError::Store`].
    pub fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let name = self.name.clone();
        crate::trace::step("projection", &name, || self.step_untraced(db), |p| (p.scanned, p.checkpoint))
    }

    /// [`step`](Self::step), untraced.
    fn step_untraced(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let storage = db.storage();
        // Nothing new: answer from a read transaction, without taking the writer lock.
        let claimed = {
            let txn = storage.read_txn()?;
            let claimed = check_owner(storage, &txn, &self.name, Owner::Projection)?;
            let checkpoint = read_checkpoint(storage, &txn, &self.name)?;
            if checkpoint >= storage.last_seq(&txn)? {
                return Ok(Progress { scanned: 0, checkpoint });
            }
            claimed
        };
        // The write transaction takes LMDB's writer lock first; a read snapshot opened after
        // it sees exactly the committed state the write transaction sees, and its pages stay
        // valid while the handlers write, so events are read in place.
        let mut txn = storage.write_txn()?;
        let _held = crate::storage::WriteLockHeld::mark();
        let view = db.begin_read()?;
        if !claimed {
            check_owner(storage, &txn, &self.name, Owner::Projection)?;
            claim(storage, &mut txn, &self.name, Owner::Projection)?;
        }
        let from = read_checkpoint(storage, &txn, &self.name)?;
        let mut checkpoint = from;
        let mut scanned = 0u64;
        let mut log = view.read_all(from.saturating_add(1))?;
        let mut buf = Vec::new();
        while scanned < self.batch_size as u64
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
            let mut tx =
                ProjectionTxn { storage, txn: &mut txn, projection: &self.name, key_buf: Vec::new() };
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
    /// transaction. The next steps replay the log from the start. A checkpoint a processor
    /// owns under the same name is left alone (steps then fail with
    /// [`ProcessorError::NameInUse`]).
    ///
    /// # Errors
    /// A storage error; nothing is erased then.
    pub fn reset(&self, db: &Varve) -> Result<(), Error> {
        let storage = db.storage();
        let mut txn = storage.write_txn()?;
        storage.delete_prefix(&mut txn, storage.tables.projections, &table::projection_prefix(&self.name))?;
        // A processor's checkpoint under this name is not the projection's to erase; its
        // next step reports the clash.
        if may_use(storage, &txn, &self.name, Owner::Projection)? {
            delete_checkpoint(storage, &mut txn, &self.name)?;
            release(storage, &mut txn, &self.name)?;
        }
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
        table.encode_key(key, &mut self.key_buf);
        match self.storage.get(self.txn, self.storage.tables.projections, &self.key_buf)? {
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
        table.encode_key(key, &mut self.key_buf);
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        self.storage.put(self.txn, self.storage.tables.projections, &self.key_buf, &bytes)
    }

    /// The [`Data`](table::Data) value under `key` in `table`, read in place, seeing this
    /// transaction's own writes.
    ///
    /// # Errors
    /// A storage error; [`Error::TableValueMismatch`]; [`Error::CorruptIndex`] if the value
    /// does not validate.
    pub fn get_data<K: Key, T: Metadata>(
        &mut self,
        table: &Table<K, table::Data<T>>,
        key: &K,
    ) -> Result<Option<&T::Archived>, Error> {
        table.encode_key(key, &mut self.key_buf);
        match self.storage.get(self.txn, self.storage.tables.projections, &self.key_buf)? {
            None => Ok(None),
            Some(raw) => table::decode_data(table, raw).map(Some),
        }
    }

    /// Stores `value` under `key` in a table of [`Data`](table::Data) values, replacing any
    /// previous value.
    ///
    /// # Errors
    /// [`Error::ForeignTable`] if `table` belongs to another projection; [`Error::Serialize`];
    /// storage errors.
    pub fn put<K: Key, T: Metadata>(
        &mut self,
        table: &Table<K, table::Data<T>>,
        key: &K,
        value: &T,
    ) -> Result<(), Error> {
        self.own(table)?;
        let bytes = table::encode_data(value)?;
        table.encode_key(key, &mut self.key_buf);
        self.storage.put(self.txn, self.storage.tables.projections, &self.key_buf, &bytes)
    }

    /// Removes `key` from `table`; returns whether it was there.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn remove<K: Key, V>(&mut self, table: &Table<K, V>, key: &K) -> Result<bool, Error> {
        self.own(table)?;
        table.encode_key(key, &mut self.key_buf);
        self.storage.delete(self.txn, self.storage.tables.projections, &self.key_buf)
    }

    fn own<K, V>(&self, table: &Table<K, V>) -> Result<(), Error> {
        if table.projection() == self.projection {
            Ok(())
        } else {
            Err(Error::ForeignTable { projection: self.projection.to_owned(), table: table.describe() })
        }
    }
}
