//! Given/when/then tests for aggregates (feature `testing`).
//!
//! Scenarios run on a real store in a temporary directory: `given` appends events, `when`
//! loads the aggregate and runs a command handler, `then` compares the events it decided
//! with the expected ones, byte for byte. [`Scenario`] covers one aggregate's stream;
//! [`World`] covers commands over several streams and aggregates ([`Varve::transact`]).
//! A failed check prints the events with their `Debug` (with their metadata and id when
//! they have them), so two different events never print as the same line.
//!
//! ```
//! use varvedb::testing::Scenario;
//! use varvedb::{aggregate, Event, Handle, Pending};
//!
//! #[derive(Event, Debug)]
//! struct Deposited { cents: u64 }
//! #[derive(Event, Debug)]
//! struct Withdrawn { cents: u64 }
//!
//! #[derive(Default)]
//! struct Account { balance: u64 }
//!
//! #[aggregate]
//! impl Account {
//!     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
//!     fn withdrawn(&mut self, e: &ArchivedWithdrawn) { self.balance -= e.cents.to_native(); }
//! }
//!
//! struct Withdraw(u64);
//!
//! impl Handle<Withdraw> for Account {
//!     type Error = String;
//!     fn handle(&self, cmd: &Withdraw) -> Result<Vec<Pending<Self>>, String> {
//!         if cmd.0 > self.balance { return Err(format!("only {} available", self.balance)); }
//!         Ok(vec![Withdrawn { cents: cmd.0 }.into()])
//!     }
//! }
//!
//! let after = Scenario::<Account>::given([Deposited { cents: 100 }])
//!     .when(&Withdraw(30))
//!     .then([Withdrawn { cents: 30 }]);
//! assert_eq!(after.state().balance, 70);
//!
//! let err = Scenario::<Account>::given([Deposited { cents: 10 }]).when(&Withdraw(30)).then_error();
//! assert_eq!(err, "only 10 available");
//! ```

use std::fmt::{self, Debug, Write as _};
use std::marker::PhantomData;

use crate::batch::{ExpectedVersion, NewEvent};
use crate::event::RecordedEvent;
use crate::id::StreamId;
use crate::store::Varve;
use crate::typed::command::{Saves, Transaction};
use crate::typed::stream::{ExecuteError, Loaded, Stream};
use crate::typed::{Aggregate, Handle, IntoPending, Pending};

/// An aggregate with a history, on a temporary store.
pub struct Scenario<A> {
    // Field order is drop order: the store closes before its directory is removed.
    stream: Stream<A>,
    _db: Varve,
    _dir: tempfile::TempDir,
}

impl<A: Aggregate> Scenario<A> {
    /// An aggregate with no events yet.
    ///
    /// # Panics
    /// If the temporary store cannot be created.
    #[must_use]
    pub fn empty() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = Varve::open(dir.path()).expect("open a temporary store");
        Scenario { stream: db.stream::<A>(1u128), _db: db, _dir: dir }
    }

    /// An aggregate whose stream holds `events`.
    ///
    /// # Panics
    /// If the events cannot be appended.
    #[must_use]
    pub fn given<I>(events: I) -> Self
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let scenario = Self::empty();
        let events: Vec<Pending<A>> = events.into_iter().map(IntoPending::into_pending).collect();
        if !events.is_empty() {
            scenario.stream.append_all(ExpectedVersion::NoStream, events).expect("append the given events");
        }
        scenario
    }

    /// The aggregate's current state.
    ///
    /// # Panics
    /// If the stream cannot be loaded.
    #[must_use]
    pub fn state(&self) -> Loaded<A> {
        self.stream.load().expect("load the aggregate")
    }

    /// Runs `command`'s handler against the current state.
    ///
    /// # Panics
    /// If the stream cannot be loaded.
    pub fn when<C>(self, command: &C) -> Then<A, <A as Handle<C>>::Error>
    where
        A: Handle<C>,
    {
        let loaded = self.state();
        let decided = loaded.state().handle(command);
        Then { scenario: self, loaded, decided }
    }
}

/// The outcome of [`Scenario::when`], to check.
pub struct Then<A, E> {
    scenario: Scenario<A>,
    loaded: Loaded<A>,
    decided: Result<Vec<Pending<A>>, E>,
}

impl<A: Aggregate, E: Debug> Then<A, E> {
    /// Asserts the command produced exactly `expected` (same types, same archived bytes, same
    /// order), appends them, and returns the resulting state.
    ///
    /// Events compare by their archived bytes. A `HashMap` archives its entries in an order
    /// that can differ between equal maps; use a `BTreeMap` in events you compare this way.
    ///
    /// # Panics
    /// If the command failed or produced other events.
    #[track_caller]
    pub fn then<I>(self, expected: I) -> Loaded<A>
    where
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let decided = match self.decided {
            Ok(events) => events,
            Err(e) => panic!("expected events, but the command was rejected: {e:?}"),
        };
        let decided: Vec<NewEvent> =
            decided.into_iter().map(|p| p.event.expect("serialize a decided event")).collect();
        let expected: Vec<NewEvent> = expected
            .into_iter()
            .map(|p| p.into_pending().event.expect("serialize an expected event"))
            .collect();
        assert_same_events::<A>("the command decided other events", &expected, &decided);
        if !decided.is_empty() {
            let pending = decided
                .into_iter()
                .map(|event| Pending { event: Ok(event), _aggregate: std::marker::PhantomData });
            self.scenario
                .stream
                .save(&self.loaded, pending.collect::<Vec<_>>())
                .expect("append the decided events");
        }
        self.scenario.state()
    }

    /// Asserts the command decided no events, and returns the unchanged state.
    ///
    /// # Panics
    /// If the command failed or decided events.
    #[track_caller]
    pub fn then_nothing(self) -> Loaded<A> {
        self.then(Vec::<Pending<A>>::new())
    }

    /// Asserts the command was rejected, and returns the domain error.
    ///
    /// # Panics
    /// If the command succeeded.
    #[track_caller]
    pub fn then_error(self) -> E {
        match self.decided {
            Ok(events) => {
                let events: Vec<String> = events
                    .iter()
                    .map(|p| {
                        p.event
                            .as_ref()
                            .map_or_else(|e| format!("unserializable: {e}"), |e| describe::<A>(e, false))
                    })
                    .collect();
                panic!("expected a rejection, but the command decided {} event(s): {events:?}", events.len())
            }
            Err(e) => e,
        }
    }
}

/// Panics with a message showing the first difference between `expected` and `decided`.
#[track_caller]
fn assert_same_events<A: Aggregate>(what: &str, expected: &[NewEvent], decided: &[NewEvent]) {
    let Some(i) = (0..decided.len().max(expected.len())).find(|&i| decided.get(i) != expected.get(i)) else {
        return;
    };
    let (mut want, mut got) = (show::<A>(expected.get(i), false), show::<A>(decided.get(i), false));
    if want == got {
        // Equal `Debug` output of unequal events (a `HashMap`'s order, a float's bits):
        // show the bytes, which differ.
        (want, got) = (show::<A>(expected.get(i), true), show::<A>(decided.get(i), true));
    }
    panic!("{what} (first difference at event {i})\n  expected: {want}\n  decided:  {got}");
}

fn show<A: Aggregate>(event: Option<&NewEvent>, bytes: bool) -> String {
    event.map_or_else(|| "nothing".to_owned(), |e| describe::<A>(e, bytes))
}

/// An event to append, as people read it: its `Debug`, then its metadata and id if it has
/// them; with `bytes`, its type identity and payload bytes too.
fn describe<A: Aggregate>(event: &NewEvent, bytes: bool) -> String {
    struct Show<'a, A>(RecordedEvent<'a>, PhantomData<A>);
    impl<A: Aggregate> fmt::Display for Show<'_, A> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            A::fmt_event(&self.0, f)
        }
    }
    let recorded = RecordedEvent {
        seq: 0,
        stream: StreamId::from(0u128),
        version: 0,
        timestamp_micros: 0,
        schema_version: event.schema.map_or(0, |s| s.version),
        id: event.id,
        type_tag: &event.type_tag,
        metadata: &event.metadata,
        payload: &event.payload,
        shredded: false,
    };
    let mut out = Show::<A>(recorded, PhantomData).to_string();
    // Writing to a `String` cannot fail.
    if bytes {
        let _ =
            write!(out, " [{} v{}, payload {:02x?}]", event.type_tag, recorded.schema_version, event.payload);
    }
    if !event.metadata.is_empty() {
        let _ = write!(out, " with metadata {:02x?}", event.metadata);
    }
    if let Some(id) = event.id {
        let _ = write!(out, " with id {id:#x}");
    }
    out
}

/// A temporary store for scenarios over several streams and aggregates: commands that load
/// and save several of them ([`Varve::transact`]), such as a transfer between two accounts.
///
/// ```
/// use varvedb::testing::World;
/// use varvedb::{aggregate, Event, ExecuteError, Stream, Transaction};
///
/// #[derive(Event, Debug)] struct Deposited { cents: u64 }
/// #[derive(Event, Debug)] struct Withdrawn { cents: u64 }
/// #[derive(Default)] struct Account { balance: u64 }
/// #[aggregate] impl Account {
///     fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); }
///     fn withdrawn(&mut self, e: &ArchivedWithdrawn) { self.balance -= e.cents.to_native(); }
/// }
///
/// fn transfer(tx: &mut Transaction<'_>, from: &Stream<Account>, to: &Stream<Account>, cents: u64)
///     -> Result<(), ExecuteError<String>>
/// {
///     let (a, b) = (tx.load(from)?, tx.load(to)?);
///     if a.state().balance < cents {
///         return Err(ExecuteError::Rejected(format!("only {} available", a.state().balance)));
///     }
///     tx.save(from, &a, [Withdrawn { cents }])?;
///     tx.save(to, &b, [Deposited { cents }])?;
///     Ok(())
/// }
///
/// let world = World::new();
/// let (ana, bo) = (world.stream::<Account>(1u128), world.stream::<Account>(2u128));
/// world.given(&ana, [Deposited { cents: 100 }]);
/// world
///     .when(|tx| transfer(tx, &ana, &bo, 30))
///     .then(&ana, [Withdrawn { cents: 30 }])
///     .then(&bo, [Deposited { cents: 30 }])
///     .commit();
/// assert_eq!((ana.load()?.state().balance, bo.load()?.state().balance), (70, 30));
///
/// let err = world.when(|tx| transfer(tx, &bo, &ana, 50)).then_error();
/// assert_eq!(err, "only 30 available");
/// # Ok::<(), varvedb::Error>(())
/// ```
pub struct World {
    // Field order is drop order: the store closes before its directory is removed.
    db: Varve,
    _dir: tempfile::TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World").field("db", &self.db).finish_non_exhaustive()
    }
}

impl World {
    /// An empty store.
    ///
    /// # Panics
    /// If the temporary store cannot be created.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let db = Varve::open(dir.path()).expect("open a temporary store");
        World { db, _dir: dir }
    }

    /// The store, for anything the scenario needs beyond streams.
    #[must_use]
    pub fn db(&self) -> &Varve {
        &self.db
    }

    /// A handle on stream `id` of aggregate `A` in this store.
    #[must_use]
    pub fn stream<A: Aggregate>(&self, id: impl Into<StreamId>) -> Stream<A> {
        self.db.stream::<A>(id)
    }

    /// Appends `events` to `stream` (after what it holds already).
    ///
    /// # Panics
    /// If the events cannot be appended.
    #[track_caller]
    pub fn given<A, I>(&self, stream: &Stream<A>, events: I) -> &Self
    where
        A: Aggregate,
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let events: Vec<Pending<A>> = events.into_iter().map(IntoPending::into_pending).collect();
        if !events.is_empty() {
            stream.append_all(ExpectedVersion::Auto, events).expect("append the given events");
        }
        self
    }

    /// Runs `command` once on the current state, as [`Varve::transact`] would, but writes
    /// nothing yet: check what it saved with [`Outcome::then`], then
    /// [`commit`](Outcome::commit) it.
    ///
    /// # Panics
    /// If a read view cannot be opened.
    pub fn when<R, E, F>(&self, command: F) -> Outcome<'_, R, E>
    where
        F: FnOnce(&mut Transaction<'_>) -> Result<R, ExecuteError<E>>,
    {
        let mut tx = Transaction::begin(&self.db, None).expect("open a read view");
        let result = command(&mut tx);
        let saves = tx.into_saves();
        let checked = vec![false; saves.batch.appends.len()];
        Outcome { world: self, result: result.map(|value| (value, saves)), checked }
    }
}

/// What a [`World::when`] command decided, to check.
pub struct Outcome<'w, R, E> {
    world: &'w World,
    result: Result<(R, Saves), ExecuteError<E>>,
    /// Per save of the batch: whether a `then` has looked at it.
    checked: Vec<bool>,
}

impl<R, E: Debug> Outcome<'_, R, E> {
    /// Asserts the command saved exactly `expected` to `stream` (same types, same archived
    /// bytes, metadata and ids, same order; nothing if `expected` is empty).
    ///
    /// # Panics
    /// If the command failed or saved other events to `stream`.
    #[track_caller]
    #[must_use]
    pub fn then<A, I>(mut self, stream: &Stream<A>, expected: I) -> Self
    where
        A: Aggregate,
        I: IntoIterator,
        I::Item: IntoPending<A>,
    {
        let batch = match &self.result {
            Ok((_, saves)) => &saves.batch,
            Err(e) => panic!("expected events, but the command failed: {e:?}"),
        };
        let mut saved = Vec::new();
        for (i, part) in batch.appends.iter().enumerate() {
            if part.stream == stream.id() {
                saved.extend(batch.events_of(part).iter().cloned());
                self.checked[i] = true;
            }
        }
        let expected: Vec<NewEvent> = expected
            .into_iter()
            .map(|p| p.into_pending().event.expect("serialize an expected event"))
            .collect();
        assert_same_events::<A>(
            &format!("the command saved other events to stream {}", stream.id()),
            &expected,
            &saved,
        );
        self
    }

    /// Asserts the command failed, and returns its error (the domain's rejection, or a store
    /// error).
    ///
    /// # Panics
    /// If the command succeeded.
    #[track_caller]
    pub fn then_error(self) -> E
    where
        E: Debug,
    {
        match self.result {
            Ok((_, saves)) => {
                panic!(
                    "expected a rejection, but the command saved to {} stream(s)",
                    saves.batch.appends.len()
                )
            }
            Err(ExecuteError::Rejected(e)) => e,
            Err(e) => panic!("expected a rejection, but the command failed: {e:?}"),
        }
    }

    /// Writes what the command saved (as [`Varve::transact`] would) and returns its value.
    ///
    /// # Panics
    /// If the command failed, if it saved to a stream no [`then`](Self::then) checked, or if
    /// the write fails.
    #[track_caller]
    pub fn commit(self) -> R {
        let (value, saves) = match self.result {
            Ok(done) => done,
            Err(e) => panic!("expected events, but the command failed: {e:?}"),
        };
        if let Some(i) = self.checked.iter().position(|checked| !checked) {
            panic!(
                "the command also saved {} event(s) to stream {}, which no `then` checked",
                saves.batch.appends[i].events.len(),
                saves.batch.appends[i].stream
            );
        }
        if !saves.batch.is_empty() {
            saves.write(&self.world.db).expect("write the saved events");
        }
        value
    }
}
