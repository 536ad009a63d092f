//! Typed writes over several aggregates, the store's refusal of foreign events under a typed
//! aggregate's kind, command contention with backoff, and the async forms of the typed calls.

use std::sync::{Arc, Barrier};

use varvedb::{
    Error, Event, ExecuteError, ExecuteOptions, ExpectedVersion, Handle, NewEvent, Pending, RetryPolicy,
    Varve, WriteBatch, aggregate,
};

#[derive(Event, Debug)]
#[event(name = "account.deposited")]
struct Deposited {
    cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "account.withdrawn")]
struct Withdrawn {
    cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "order.placed")]
struct OrderPlaced {
    cents: u64,
}

#[derive(Default, Debug)]
struct Account {
    balance: u64,
}

#[aggregate]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
    fn withdrawn(&mut self, e: &ArchivedWithdrawn) {
        self.balance -= e.cents.to_native();
    }
}

#[derive(Default, Debug)]
struct Order {
    total: u64,
}

#[aggregate]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.total += e.cents.to_native();
    }
}

struct Deposit(u64);

impl Handle<Deposit> for Account {
    type Error = std::convert::Infallible;
    fn handle(&self, cmd: &Deposit) -> Result<Vec<Pending<Self>>, Self::Error> {
        Ok(vec![Deposited { cents: cmd.0 }.into()])
    }
}

fn open() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    (dir, db)
}

fn balance(db: &Varve, id: u128) -> u64 {
    db.stream::<Account>(id).load().unwrap().state().balance
}

#[test]
fn a_typed_batch_writes_both_streams_or_neither() {
    let (_dir, db) = open();
    let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    from.append(ExpectedVersion::NoStream, Deposited { cents: 100 }).unwrap();
    to.append(ExpectedVersion::NoStream, Deposited { cents: 5 }).unwrap();

    let (a, b) = (from.load().unwrap(), to.load().unwrap());
    // Another writer moves `to` after the loads: the transfer must write neither stream.
    to.append(ExpectedVersion::Exact(1), Deposited { cents: 1 }).unwrap();
    let mut tx = db.batch();
    tx.save(&from, &a, [Withdrawn { cents: 30 }]).unwrap();
    tx.save(&to, &b, [Deposited { cents: 30 }]).unwrap();
    let err = db.write(tx).unwrap_err();
    assert!(matches!(err, Error::ConcurrencyConflict { stream, .. } if stream == to.id()), "{err:?}");
    assert_eq!((balance(&db, 1), balance(&db, 2)), (100, 6));
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 3, "nothing of the transfer was written");

    // Loaded afresh, the same transfer lands on both.
    let (a, b) = (from.load().unwrap(), to.load().unwrap());
    let mut tx = db.batch();
    tx.save(&from, &a, [Withdrawn { cents: 30 }]).unwrap().save(&to, &b, [Deposited { cents: 30 }]).unwrap();
    let done = db.write(tx).unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!((balance(&db, 1), balance(&db, 2)), (70, 36));

    // A state saved to another stream is refused before anything is written.
    let mut tx = db.batch();
    let err = tx.save(&to, &a, [Deposited { cents: 1 }]).unwrap_err();
    assert!(matches!(err, Error::StreamMismatch { .. }), "{err:?}");
    assert!(tx.is_empty());
}

#[test]
fn a_command_over_two_aggregates_retries_on_conflict_and_rejects_cleanly() {
    let (_dir, db) = open();
    let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    from.append(ExpectedVersion::NoStream, Deposited { cents: 100 }).unwrap();

    // The first attempt is raced by a deposit to `to`, made from inside the command; the
    // second runs on the new state and lands.
    let mut raced = false;
    let done = db
        .transact(|tx| {
            let (a, b) = (tx.load(&from)?, tx.load(&to)?);
            if !raced {
                raced = true;
                to.append(ExpectedVersion::Auto, Deposited { cents: 7 })?;
            }
            if a.state().balance < 60 {
                return Err(ExecuteError::Rejected("insufficient funds"));
            }
            tx.save(&from, &a, [Withdrawn { cents: 60 }])?;
            tx.save(&to, &b, [Deposited { cents: 60 }])?;
            Ok(b.state().balance)
        })
        .unwrap();
    assert_eq!((done.attempts, done.value, done.appended.len()), (2, 7, 2));
    assert_eq!((balance(&db, 1), balance(&db, 2)), (40, 67));

    let last_seq = db.begin_read().unwrap().last_seq().unwrap();
    let refused = db.transact(|tx| {
        let (a, b) = (tx.load(&from)?, tx.load(&to)?);
        if a.state().balance < 60 {
            return Err(ExecuteError::Rejected("insufficient funds"));
        }
        tx.save(&from, &a, [Withdrawn { cents: 60 }])?;
        tx.save(&to, &b, [Deposited { cents: 60 }])?;
        Ok(())
    });
    assert!(matches!(refused, Err(ExecuteError::Rejected("insufficient funds"))), "{refused:?}");
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), last_seq, "a rejection writes nothing");

    // A conflict on every attempt exhausts the policy, and the error says how many ran.
    let options = ExecuteOptions::new().retry(RetryPolicy { attempts: 3, ..RetryPolicy::default() });
    let err = db
        .transact_with(&options, |tx| {
            let a = tx.load(&from)?;
            from.append(ExpectedVersion::Auto, Deposited { cents: 1 })?;
            tx.save(&from, &a, [Withdrawn { cents: 1 }])?;
            Ok::<_, ExecuteError<String>>(())
        })
        .unwrap_err();
    assert!(matches!(err, ExecuteError::RetriesExhausted { attempts: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert_eq!(balance(&db, 1), 43, "only the racing deposits landed");
}

/// Every untyped way of putting an event under `Account`'s kind.
/// A transfer from an account to itself saves twice to one stream. Both saves expected the
/// version both loads saw, so the second always conflicted with the first: the command was
/// run again until its attempts ran out (about 4 s with the default policy).
#[test]
fn a_second_save_to_one_stream_in_a_transaction_fails_at_once() {
    let (_dir, db) = open();
    let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(1u128));
    from.append(ExpectedVersion::NoStream, Deposited { cents: 100 }).unwrap();
    let mut attempts = 0;
    let err = db
        .transact(|tx| {
            attempts += 1;
            let (a, b) = (tx.load(&from)?, tx.load(&to)?);
            tx.save(&from, &a, [Withdrawn { cents: 30 }])?;
            tx.save(&to, &b, [Deposited { cents: 30 }])?;
            Ok::<_, ExecuteError<String>>(())
        })
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Store(Error::SavedTwice { stream }) if stream == from.id()),
        "{err:?}"
    );
    assert_eq!(attempts, 1, "not retried");
    assert_eq!((balance(&db, 1), db.stream::<Account>(1u128).load().unwrap().version()), (100, 1));

    // An empty save is no save: a second one after it is taken.
    let done = db
        .transact(|tx| {
            let a = tx.load(&from)?;
            tx.save(&from, &a, Vec::<Withdrawn>::new())?;
            tx.save(&from, &a, [Withdrawn { cents: 30 }])?;
            Ok::<_, ExecuteError<String>>(())
        })
        .unwrap();
    assert_eq!((done.attempts, balance(&db, 1)), (1, 70));
}

fn foreign_appends(db: &Varve, existing: u128, fresh: u128) -> Vec<(&'static str, Result<(), Error>)> {
    let foreign_typed = || NewEvent::from_event(&OrderPlaced { cents: 1 }).unwrap();
    let raw_with_accounts_tag = || NewEvent::new("account.deposited", 5u64.to_le_bytes().to_vec());
    let kind = <Account as varvedb::Aggregate>::KIND;
    let mut out = Vec::new();
    let mut run = |what, batch: WriteBatch| out.push((what, db.write(batch).map(drop)));
    let mut b = WriteBatch::new();
    b.append_kind(existing, kind, ExpectedVersion::Auto, [foreign_typed()]);
    run("append_kind of another aggregate's event", b);
    let mut b = WriteBatch::new();
    b.append_kind(existing, kind, ExpectedVersion::Auto, [raw_with_accounts_tag()]);
    run("append_kind of raw bytes with an event's tag", b);
    let mut b = WriteBatch::new();
    b.append(existing, ExpectedVersion::Auto, [foreign_typed()]);
    run("append without a kind to an existing account", b);
    let mut b = WriteBatch::new();
    b.append_kind(fresh, kind, ExpectedVersion::NoStream, [foreign_typed()]);
    run("append_kind creating a new account stream", b);
    // Valid events around a foreign one: the whole request is refused.
    let mut b = WriteBatch::new();
    b.append(99u128, ExpectedVersion::Auto, [NewEvent::new("note", b"x".to_vec())]);
    b.append_kind(
        existing,
        kind,
        ExpectedVersion::Auto,
        [NewEvent::from_event(&Deposited { cents: 1 }).unwrap(), foreign_typed()],
    );
    run("a batch with a valid and a foreign event", b);
    out
}

#[test]
fn the_store_refuses_foreign_events_under_a_typed_kind_in_every_path() {
    let (dir, db) = open();
    let account = db.stream::<Account>(1u128);
    account.append(ExpectedVersion::NoStream, Deposited { cents: 10 }).unwrap();
    let before = db.begin_read().unwrap().last_seq().unwrap();
    for (what, result) in foreign_appends(&db, 1, 2) {
        match result {
            Err(Error::ForeignEvent { event, aggregate, .. }) => {
                assert!(event == "order.placed" || event == "account.deposited", "{what}: {event}");
                assert_eq!(aggregate, "Account", "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), before, "nothing was written");
    let err = foreign_appends(&db, 1, 2).remove(0).1.unwrap_err();
    assert_eq!(
        err.to_string(),
        "event \"order.placed\" version 1 is not an event of aggregate \"Account\", so it cannot be appended to its stream 00000000-0000-0000-0000-000000000001"
    );

    // The rule is stored: it holds after a reopen, before any typed call of the new process.
    drop((account, db));
    let db = Varve::open(dir.path()).unwrap();
    for (what, result) in foreign_appends(&db, 1, 3) {
        assert!(matches!(result, Err(Error::ForeignEvent { .. })), "{what}: {result:?}");
    }
    // The aggregate's own events still go in untyped, and the stream stays loadable.
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&Deposited { cents: 5 }).unwrap()])
        .unwrap();
    assert_eq!(balance(&db, 1), 15);
    // Other kinds and kindless streams are not affected.
    db.append(7u128, ExpectedVersion::Auto, [NewEvent::new("anything", b"x".to_vec())]).unwrap();
    db.stream::<Order>(8u128).append(ExpectedVersion::NoStream, OrderPlaced { cents: 3 }).unwrap();
}

#[test]
fn a_typed_handle_is_enough_for_the_writer_to_know_the_kind() {
    let (dir, db) = open();
    // No typed append yet: only a handle.
    let account = db.stream::<Account>(1u128);
    let kind = <Account as varvedb::Aggregate>::KIND;
    let mut b = WriteBatch::new();
    b.append_kind(
        1u128,
        kind,
        ExpectedVersion::NoStream,
        [NewEvent::from_event(&OrderPlaced { cents: 1 }).unwrap()],
    );
    let refused = db.write(b);
    assert!(matches!(refused, Err(Error::ForeignEvent { .. })), "{refused:?}");
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 0);
    // An untyped append of an account's own event goes in, and records the kind's events.
    let mut b = WriteBatch::new();
    b.append_kind(
        1u128,
        kind,
        ExpectedVersion::NoStream,
        [NewEvent::from_event(&Deposited { cents: 3 }).unwrap()],
    );
    db.write(b).unwrap();
    for (what, result) in foreign_appends(&db, 1, 2) {
        assert!(matches!(result, Err(Error::ForeignEvent { .. })), "{what}: {result:?}");
    }
    drop((account, db));
    let db = Varve::open(dir.path()).unwrap();
    // A new process that never names `Account` still has the rule.
    for (what, result) in foreign_appends(&db, 1, 3) {
        assert!(matches!(result, Err(Error::ForeignEvent { .. })), "{what}: {result:?}");
    }
    assert_eq!(balance(&db, 1), 3);
}

#[test]
fn contention_on_one_stream_is_resolved_by_the_default_policy() {
    let threads: usize =
        std::env::var("VARVEDB_CONTENTION_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let commands: usize =
        std::env::var("VARVEDB_CONTENTION_COMMANDS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let (_dir, db) = open();
    let account = db.stream::<Account>(1u128);
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (account, barrier) = (account.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut most = 0;
                for _ in 0..commands {
                    let done = account.execute(&Deposit(1)).expect("the default policy outlasts contention");
                    most = most.max(done.attempts);
                }
                most
            })
        })
        .collect();
    let most = workers.into_iter().map(|w| w.join().unwrap()).max().unwrap_or(0);
    let loaded = account.load().unwrap();
    let total = (threads * commands) as u64;
    assert_eq!((loaded.state().balance, u64::from(loaded.version())), (total, total));
    eprintln!("{threads} threads x {commands} commands: at most {most} attempts for one command");
}

#[test]
fn async_forms_keep_a_current_thread_runtime_serving_other_tasks() {
    let (_dir, db) = open();
    let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    from.append(ExpectedVersion::NoStream, Deposited { cents: 100 }).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        // A ticker on the same (only) worker thread: it advances only while the typed calls
        // below leave the thread free.
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let ticks_now = || ticks.load(std::sync::atomic::Ordering::Relaxed);

        // A command whose handler blocks its thread for a while: on the blocking pool, the
        // ticker keeps running meanwhile.
        let before = ticks_now();
        let slow = to.execute_async(SlowDeposit(1)).await.unwrap();
        assert_eq!(slow.version, 1);
        assert!(ticks_now() > before, "the runtime ran other tasks during execute_async");

        let loaded = from.load_async().await.unwrap();
        assert_eq!(loaded.state().balance, 100);
        let events = from.read_async(1).await.unwrap();
        assert_eq!(events.len(), 1);
        let typed = events[0].typed::<Account>().unwrap();
        assert_eq!(typed.get::<Deposited>().unwrap().map(|d| d.cents.to_native()), Some(100));
        assert!(matches!(events[0].typed::<Order>(), Err(Error::UnknownEvent { .. })));

        let (f, t) = (from.clone(), to.clone());
        let before = ticks_now();
        let done = db
            .transact_async(ExecuteOptions::new(), move |tx| {
                let (a, b) = (tx.load(&f)?, tx.load(&t)?);
                std::thread::sleep(std::time::Duration::from_millis(20));
                tx.save(&f, &a, [Withdrawn { cents: 25 }])?;
                tx.save(&t, &b, [Deposited { cents: 25 }])?;
                Ok::<_, ExecuteError<()>>(())
            })
            .await
            .unwrap();
        assert_eq!(done.appended.len(), 2);
        assert!(ticks_now() > before, "the runtime ran other tasks during transact_async");
        ticker.abort();
    });
    assert_eq!((balance(&db, 1), balance(&db, 2)), (75, 26));
}

struct SlowDeposit(u64);

impl Handle<SlowDeposit> for Account {
    type Error = std::convert::Infallible;
    fn handle(&self, cmd: &SlowDeposit) -> Result<Vec<Pending<Self>>, Self::Error> {
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok(vec![Deposited { cents: cmd.0 }.into()])
    }
}

/// The async forms can run on a multi-thread runtime's `spawn`: their futures are `Send`.
#[test]
fn async_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let (_dir, db) = open();
    let account = db.stream::<Account>(1u128);
    send(account.load_async());
    send(account.read_async(1));
    send(account.execute_async(Deposit(1)));
    send(account.execute_with_async(Deposit(1), ExecuteOptions::new()));
    let other = account.clone();
    send(db.transact_async(ExecuteOptions::new(), move |tx| {
        let a = tx.load(&other)?;
        tx.save(&other, &a, [Deposited { cents: 1 }])?;
        Ok::<_, ExecuteError<String>>(())
    }));
}
