//! Given/when/then tests for aggregates (feature `testing`).
//!
//! Scenarios run on a real store in a temporary directory: `given` appends events, `when`
//! loads the aggregate and runs a command handler, `then` compares the events it decided
//! with the expected ones, byte for byte.
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

use std::fmt::Debug;

use crate::batch::{ExpectedVersion, NewEvent};
use crate::store::Varve;
use crate::typed::stream::{Loaded, Stream};
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
        if let Some(i) = (0..decided.len().max(expected.len())).find(|&i| decided.get(i) != expected.get(i)) {
            let show = |e: Option<&NewEvent>| {
                e.map_or_else(|| "nothing".to_owned(), |e| format!("{} {:02x?}", e.type_tag(), e.payload()))
            };
            panic!(
                "the command decided other events (first difference at event {i})\n  expected: {}\n  decided:  {}",
                show(expected.get(i)),
                show(decided.get(i))
            );
        }
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
            Ok(events) => panic!(
                "expected a rejection, but the command decided {} event(s): {:?}",
                events.len(),
                events.iter().map(Pending::type_tag).collect::<Vec<_>>()
            ),
            Err(e) => e,
        }
    }
}
