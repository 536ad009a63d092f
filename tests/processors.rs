//! Projections (exactly-once read models) and processors (at-least-once effects).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use varvedb::{
    Error, ExpectedVersion, NewEvent, Processor, ProcessorError, Projection, Retry, Runner, Table, Varve,
};

#[path = "support/totals.rs"]
mod totals;

fn append_mix(db: &Varve, from: u64, to: u64) {
    for chunk in (from..to).collect::<Vec<_>>().chunks(50) {
        let events: Vec<NewEvent> = chunk.iter().map(|&n| totals::event(n)).collect();
        db.append(u128::from(chunk[0] % 5), ExpectedVersion::Auto, events).unwrap();
    }
}

async fn wait_caught_up(db: &Varve, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.lag(name).unwrap() > 0 {
        assert!(Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_projection_equals_a_fold_of_the_log_and_a_rebuild_gives_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 2_000);
    let runner = Runner::spawn(&db, totals::projection(100));
    // Writes continue while the projection catches up and follows.
    let writer = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || append_mix(&db, 2_000, 6_000))
    };
    writer.await.unwrap();
    wait_caught_up(&db, totals::NAME).await;
    assert_eq!(runner.lag().unwrap(), 0);
    let mut projection = runner.stop().await.unwrap();

    let view = db.begin_read().unwrap();
    let live = totals::stored(&view);
    assert_eq!(live, totals::fold(&view, u64::MAX), "live projection differs from a fold of the log");
    assert_eq!(live.len(), 13);
    drop(view);

    let checkpoint = projection.rebuild(&db).unwrap();
    assert_eq!(checkpoint, 6_000);
    assert_eq!(totals::stored(&db.begin_read().unwrap()), live, "a rebuild gives the same read model");
}

#[test]
fn a_failing_projection_handler_keeps_nothing_of_its_batch_and_names_the_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 100);
    let placed_at_57 = db.begin_read().unwrap().event(58).unwrap().unwrap().type_tag() == "order.placed";
    assert!(placed_at_57, "event 57 (seq 58) is an order");
    let mut broken =
        Projection::new(totals::NAME).batch_size(1_000).on::<totals::OrderPlaced>(|tx, e, meta| {
            if meta.seq() == 58 {
                return Err("the read model rejects this order".into());
            }
            tx.insert(&totals::COUNTS, &e.customer.to_string(), &1)?;
            Ok(())
        });
    let err = broken.catch_up(&db).unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Handler { seq: 58, type_tag, .. } if type_tag == "order.placed"),
        "{err}"
    );
    assert!(err.to_string().contains("seq 58"), "{err}");
    assert_eq!(db.checkpoint(totals::NAME).unwrap(), 0, "the failed batch kept no checkpoint");
    assert!(totals::stored(&db.begin_read().unwrap()).is_empty(), "and no writes");

    // After the fix, it resumes where it stopped and ends equal to the fold.
    totals::projection(1_000).catch_up(&db).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(totals::stored(&view), totals::fold(&view, u64::MAX));
}

#[test]
fn a_projection_cannot_write_another_projections_table() {
    const OTHER: Table<String, u64> = Table::new("someone-else", "t");
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [totals::event(2)]).unwrap();
    let mut p = Projection::new("mine").on::<totals::OrderPlaced>(|tx, _e, _meta| {
        tx.insert(&OTHER, &"x".to_owned(), &1)?;
        Ok(())
    });
    let err = p.catch_up(&db).unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Handler { source, .. }
            if matches!(source.downcast_ref::<Error>(), Some(Error::ForeignTable { .. }))),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_stops_on_a_poison_event_and_resumes_there_after_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 300);
    let poison = 123u64;
    let attempts_on_poison = Arc::new(AtomicU64::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (tries, seen) = (Arc::clone(&attempts_on_poison), Arc::clone(&handled));
    let retry = Retry {
        attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    };
    let broken =
        Processor::new("mailer").batch_size(40).retry(retry).on::<totals::OrderPlaced>(move |_e, meta| {
            if meta.seq() == poison {
                tries.fetch_add(1, Ordering::SeqCst);
                return Err("mail server says no".into());
            }
            seen.lock().unwrap().push(meta.seq());
            Ok(())
        });
    let runner = Runner::spawn(&db, broken);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runner.is_finished() {
        assert!(Instant::now() < deadline, "the processor never stopped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = runner.stop().await.unwrap_err();
    assert!(matches!(err, ProcessorError::Handler { seq: 123, .. }), "{err}");
    assert_eq!(attempts_on_poison.load(Ordering::SeqCst), 3, "tried as often as the policy says");
    assert_eq!(
        db.checkpoint("mailer").unwrap(),
        poison - 1,
        "the checkpoint stops just before the poison event"
    );
    assert!(handled.lock().unwrap().iter().all(|&s| s < poison));

    // The fix: a processor that copes. It resumes at the poison event, not before.
    let resumed = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&resumed);
    let mut fixed = Processor::new("mailer").on::<totals::OrderPlaced>(move |_e, meta| {
        seen.lock().unwrap().push(meta.seq());
        Ok(())
    });
    assert_eq!(fixed.catch_up(&db).unwrap(), 300);
    let resumed = resumed.lock().unwrap();
    assert_eq!(resumed.first(), Some(&poison));
    let before = handled.lock().unwrap();
    let overlap = resumed.iter().filter(|s| before.contains(s)).count();
    assert_eq!(overlap, 0, "nothing handled twice here: the checkpoint was committed before the stop");
}

#[test]
fn a_transient_failure_is_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [totals::event(2)]).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let retry = Retry {
        attempts: 5,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    let mut flaky = Processor::new("flaky").retry(retry).on::<totals::OrderPlaced>(move |_e, _meta| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 { Err("timeout".into()) } else { Ok(()) }
    });
    let started = Instant::now();
    assert_eq!(flaky.catch_up(&db).unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(15), "backed off 5 + 10 ms");
}

#[test]
fn a_thread_runner_stops_gracefully_with_its_work_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let runner = Runner::spawn_thread(&db, totals::projection(10));
    append_mix(&db, 0, 500);
    std::thread::sleep(Duration::from_millis(20));
    let projection = runner.stop_blocking().unwrap();
    assert_eq!(projection.name(), totals::NAME);
    // Whatever it reached, its model is exactly the fold up to its checkpoint.
    let view = db.begin_read().unwrap();
    let checkpoint = db.checkpoint(totals::NAME).unwrap();
    assert_eq!(totals::stored(&view), totals::fold(&view, checkpoint));
}

/// Crash safety with real processes: a child runs the projection while this process appends;
/// the child is killed (`SIGKILL`) at random moments. After every kill, the read model must equal a
/// from-scratch fold of the log up to the projection's checkpoint: no event applied twice,
/// none skipped.
#[test]
fn sigkilled_projection_applies_every_event_exactly_once() {
    let kills: usize = std::env::var("VARVEDB_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut next = 0u64;
    let mut checkpoints = Vec::new();
    for round in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_projection-child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
        assert_eq!(ready.trim(), "running", "round {round}: the child did not start");
        // Append while the child projects, then kill it at a random moment.
        let until = Instant::now() + Duration::from_millis(rng.u64(5..60));
        while Instant::now() < until {
            let batch: Vec<NewEvent> = (next..next + 10).map(totals::event).collect();
            db.append(u128::from(next % 3), ExpectedVersion::Auto, batch).unwrap();
            next += 10;
        }
        assert!(child.try_wait().unwrap().is_none(), "round {round}: the child exited by itself");
        child.kill().unwrap();
        child.wait().unwrap();

        let view = db.begin_read().unwrap();
        let checkpoint = db.checkpoint(totals::NAME).unwrap();
        assert_eq!(
            totals::stored(&view),
            totals::fold(&view, checkpoint),
            "round {round}: the read model is not the fold of events 1..={checkpoint}"
        );
        checkpoints.push(checkpoint);
    }
    let last = *checkpoints.last().unwrap();
    assert!(last > 0, "the projection never committed");
    let advanced = checkpoints.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(advanced > kills / 4, "the projection advanced in only {advanced} of {kills} rounds");
    // Finally, catching up after the last kill gives exactly the fold of the whole log.
    totals::projection(100).catch_up(&db).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(totals::stored(&view), totals::fold(&view, u64::MAX));
    eprintln!(
        "{kills} kills; {next} events appended; checkpoint advanced in {advanced} rounds, up to {last}"
    );
}

#[test]
fn a_stopped_processor_has_committed_exactly_what_it_handled() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 400);
    let handled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&handled);
    let slow = Processor::new("slow").batch_size(25).on::<totals::OrderPlaced>(move |_e, _meta| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_micros(300));
        Ok(())
    });
    let runner = Runner::spawn_thread(&db, slow);
    // Stop as soon as it has committed something, while most of the log is still ahead.
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.checkpoint("slow").unwrap() == 0 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    runner.stop_blocking().unwrap();
    let checkpoint = db.checkpoint("slow").unwrap();
    assert!(checkpoint > 0 && checkpoint < 400, "stopped part-way (checkpoint {checkpoint})");
    // Graceful: the batch in progress finished and committed, so the handled events are
    // exactly the orders up to the checkpoint, no more, no fewer.
    let view = db.begin_read().unwrap();
    let orders_to_checkpoint = view
        .read_all(1)
        .unwrap()
        .map(Result::unwrap)
        .take_while(|e| e.seq() <= checkpoint)
        .filter(|e| e.type_tag() == "order.placed")
        .count() as u64;
    assert_eq!(handled.load(Ordering::SeqCst), orders_to_checkpoint);
}

#[test]
fn a_dropped_thread_runner_has_released_the_store_when_drop_returns() {
    let rounds: u64 = std::env::var("VARVEDB_RUNNER_DROPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..rounds {
        let db = Varve::open(dir.path()).unwrap();
        append_mix(&db, round * 50, round * 50 + 50);
        let runner = Runner::spawn_thread(&db, totals::projection(10));
        drop(runner);
        drop(db);
        // No waiting: the store must open again at once.
        let db = Varve::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(db.checkpoint(totals::NAME).unwrap() <= (round + 1) * 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tokio_runner_releases_the_store_without_stop() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        append_mix(&db, 0, 50);
        let runner = Runner::spawn(&db, totals::projection(10));
        wait_caught_up(&db, totals::NAME).await;
        drop(runner);
    }
    // A step may be finishing; between steps the runner holds no handle on the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match Varve::open(dir.path()) {
            Ok(db) => break db,
            Err(Error::AlreadyOpen { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("the dropped runner kept the store open: {e}"),
        }
    };
    assert_eq!(db.lag(totals::NAME).unwrap(), 0);
}

#[test]
fn a_projection_and_a_processor_cannot_share_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 100);
    let mut projection = totals::projection(10);
    projection.catch_up(&db).unwrap();
    let before = db.checkpoint(totals::NAME).unwrap();
    let mut clash = Processor::new(totals::NAME).on::<totals::OrderPlaced>(|_e, _m| panic!("must not run"));
    let err = clash.catch_up(&db).unwrap_err();
    assert!(
        matches!(&err, ProcessorError::NameInUse { name, wanted: "processor", owner } if name == totals::NAME && owner == "projection"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the name {:?} belongs to a projection; a processor cannot share its checkpoint",
            totals::NAME
        )
    );
    assert_eq!(db.checkpoint(totals::NAME).unwrap(), before, "the processor moved nothing");

    // The other way round: a processor's name refuses a projection, even one with nothing
    // new to process.
    let mut mailer = Processor::new("mailer").on::<totals::OrderPlaced>(|_e, _m| Ok(()));
    mailer.catch_up(&db).unwrap();
    let mut projection = Projection::new("mailer").on::<totals::OrderPlaced>(|_tx, _e, _m| Ok(()));
    assert!(matches!(projection.step(&db), Err(ProcessorError::NameInUse { wanted: "projection", .. })));
    append_mix(&db, 100, 110);
    assert!(matches!(projection.catch_up(&db), Err(ProcessorError::NameInUse { .. })));
    // Resetting the clashing projection leaves the processor's checkpoint alone.
    let mailer_at = db.checkpoint("mailer").unwrap();
    projection.reset(&db).unwrap();
    assert_eq!(db.checkpoint("mailer").unwrap(), mailer_at);
    assert!(matches!(projection.rebuild(&db), Err(ProcessorError::NameInUse { .. })));
    // Each still runs under its own name.
    mailer.catch_up(&db).unwrap();
    totals::projection(10).catch_up(&db).unwrap();
}

#[test]
fn a_second_processor_instance_cannot_move_the_checkpoint_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 300);
    let other_db = db.clone();
    let mut raced = false;
    // While instance B handles its first event, instance A (same name) runs to the end.
    let mut b = Processor::new("twin").batch_size(10).on::<totals::OrderPlaced>(move |_e, _meta| {
        if !raced {
            raced = true;
            Processor::new("twin").on::<totals::OrderPlaced>(|_e, _m| Ok(())).catch_up(&other_db)?;
        }
        Ok(())
    });
    let err = b.step(&db).unwrap_err();
    assert!(matches!(err, ProcessorError::CheckpointMoved { expected: 0, found: 300, .. }), "{err}");
    assert_eq!(db.checkpoint("twin").unwrap(), 300, "the checkpoint did not move back");
}

#[test]
fn appending_from_a_projection_handler_is_an_error_not_a_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [totals::event(2)]).unwrap();
    let inner = db.clone();
    let mut p = Projection::new("loops").on::<totals::OrderPlaced>(move |_tx, _e, _meta| {
        inner.append(9u128, ExpectedVersion::Auto, [totals::event(3)])?;
        Ok(())
    });
    let err = p.catch_up(&db).unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Handler { source, .. }
            if matches!(source.downcast_ref::<Error>(), Some(Error::WouldDeadlock))),
        "{err}"
    );
    // The store is fine afterwards.
    db.append(1u128, ExpectedVersion::Auto, [totals::event(4)]).unwrap();
}

#[test]
fn a_flush_asked_for_inside_a_projection_handler_is_made_in_both_durabilities() {
    for durability in [varvedb::Durability::Immediate, varvedb::Durability::Relaxed] {
        let dir = tempfile::tempdir().unwrap();
        let db = varvedb::Options::new().durability(durability).open(dir.path()).unwrap();
        for cents in 1..=3 {
            db.append(1u128, ExpectedVersion::Auto, [totals::event(cents)]).unwrap();
        }
        let inner = db.clone();
        let mut p =
            Projection::new("flushes").batch_size(1).on::<totals::OrderPlaced>(move |_tx, _e, _meta| {
                // The step's transaction holds the store's write lock in this thread.
                inner.sync()?;
                Ok(())
            });
        assert_eq!(p.catch_up(&db).unwrap(), 3, "{durability:?}");
        db.append(1u128, ExpectedVersion::Auto, [totals::event(4)]).unwrap();
        db.sync().unwrap();
    }
}

mod newer {
    /// `order.placed` at a newer schema version than the projection handles.
    #[derive(varvedb::Event)]
    #[event(name = "order.placed", version = 2)]
    pub struct OrderPlacedV2 {
        pub customer: String,
        pub cents: u64,
        pub coupon: Option<String>,
    }
}

#[test]
fn a_handled_type_at_an_unhandled_version_stops_the_projection() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    append_mix(&db, 0, 10);
    let v2 = newer::OrderPlacedV2 { customer: "x".into(), cents: 1, coupon: None };
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&v2).unwrap()]).unwrap();
    let err = totals::projection(100).catch_up(&db).unwrap_err();
    assert!(matches!(err, ProcessorError::UnhandledVersion { seq: 11, version: 2, .. }), "{err}");
}

mod struct_values {
    use varvedb::{Data, Error, Event, EventData, ExpectedVersion, NewEvent, Projection, Table, Varve};

    #[derive(Event)]
    #[event(name = "account.deposited")]
    struct Deposited {
        account: String,
        cents: u64,
    }

    #[derive(EventData, Debug)]
    struct Balance {
        cents: u64,
        deposits: u32,
        last_seq: u64,
    }

    #[derive(EventData)]
    struct Renamed {
        total: u64,
    }

    const BALANCES: Table<String, Data<Balance>> = Table::new("balances", "by_account");
    const SAME_TABLE_OTHER_TYPE: Table<String, Data<Renamed>> = Table::new("balances", "by_account");

    #[test]
    fn a_struct_value_is_stored_and_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let deposit = |account: &str, cents| {
            NewEvent::from_event(&Deposited { account: account.into(), cents }).unwrap()
        };
        db.append(1u128, ExpectedVersion::Auto, [deposit("ana", 5), deposit("bo", 1), deposit("ana", 7)])
            .unwrap();
        let mut balances = Projection::new("balances").on::<Deposited>(|tx, e, meta| {
            let key = e.account.to_string();
            let (cents, deposits) = tx
                .get_data(&BALANCES, &key)?
                .map_or((0, 0), |b| (b.cents.to_native(), b.deposits.to_native()));
            let next =
                Balance { cents: cents + e.cents.to_native(), deposits: deposits + 1, last_seq: meta.seq() };
            tx.put(&BALANCES, &key, &next)?;
            Ok(())
        });
        balances.catch_up(&db).unwrap();
        let view = db.begin_read().unwrap();
        let ana = view.get_data(&BALANCES, &"ana".to_owned()).unwrap().unwrap();
        assert_eq!((ana.cents.to_native(), ana.deposits.to_native(), ana.last_seq.to_native()), (12, 2, 3));
        let bo = view.get_data(&BALANCES, &"bo".to_owned()).unwrap().unwrap();
        assert_eq!((bo.cents.to_native(), bo.deposits.to_native()), (1, 1));
        assert!(view.get_data(&BALANCES, &"cy".to_owned()).unwrap().is_none());

        // Read with a type of another shape: a typed error, not a misread.
        let err = view.get_data(&SAME_TABLE_OTHER_TYPE, &"ana".to_owned()).unwrap_err();
        assert!(
            matches!(&err, Error::TableValueMismatch { table, stored: Some(_), .. } if table == "balances/by_account"),
            "{err:?}"
        );
    }
}
