//! Typed metadata: written per append and per command, read in place by every reader, and
//! checked against the type read.

use std::sync::{Arc, Mutex};

use varvedb::{
    Error, Event, EventData, ExecuteError, ExecuteOptions, ExpectedVersion, Handle, NewEvent, Pending,
    Processor, Projection, Table, Varve, aggregate,
};

#[derive(EventData, Debug, Clone, PartialEq)]
struct RequestMeta {
    user: String,
    correlation: u128,
    causation: Option<u64>,
}

#[derive(EventData, Debug)]
struct OtherMeta {
    user: u64,
}

#[derive(Event, Debug)]
#[event(name = "account.deposited")]
struct Deposited {
    cents: u64,
}

#[derive(Default)]
struct Account {
    balance: u64,
}

#[aggregate]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
}

struct Deposit(u64);

impl Handle<Deposit> for Account {
    type Error = String;
    fn handle(&self, cmd: &Deposit) -> Result<Vec<Pending<Self>>, String> {
        Ok(vec![Deposited { cents: cmd.0 }.into(), Deposited { cents: 1 }.into()])
    }
}

const USERS: Table<u64, String> = Table::new("users", "by_seq");

fn meta(user: &str, correlation: u128) -> RequestMeta {
    RequestMeta { user: user.into(), correlation, causation: None }
}

/// The user and correlation of an archived `RequestMeta`.
fn seen(m: &ArchivedRequestMeta) -> (String, u128) {
    (m.user.to_string(), m.correlation.to_native())
}

#[test]
fn metadata_round_trips_through_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let account = db.stream::<Account>(1u128);

    // Per append, per command (stamped on each decided event), per multi-stream command.
    account
        .append_all(
            ExpectedVersion::NoStream,
            [Pending::from(Deposited { cents: 5 }).with_meta(&meta("ana", 1))],
        )
        .unwrap();
    let stamped = ExecuteOptions::new().metadata(&meta("bo", 2));
    account.execute_with(&Deposit(10), &stamped).unwrap();
    let other = db.stream::<Account>(2u128);
    db.transact_with(&ExecuteOptions::new().metadata(&meta("cy", 3)), |tx| {
        let (a, b) = (tx.load(&account)?, tx.load(&other)?);
        tx.save(&account, &a, [Deposited { cents: 2 }])?;
        // An event's own metadata wins over the command's.
        tx.save(&other, &b, [Pending::from(Deposited { cents: 2 }).with_meta(&meta("own", 4))])?;
        Ok::<_, ExecuteError<String>>(())
    })
    .unwrap();
    // No metadata at all.
    account.append(ExpectedVersion::Auto, Deposited { cents: 0 }).unwrap();
    let expected: Vec<Option<(String, u128)>> = vec![
        Some(("ana".into(), 1)),
        Some(("bo".into(), 2)),
        Some(("bo".into(), 2)),
        Some(("cy".into(), 3)),
        Some(("own".into(), 4)),
        None,
    ];

    // Stream::read, beside the envelope's fields.
    let view = db.begin_read().unwrap();
    let mut from_read = Vec::new();
    for stream in [1u128, 2] {
        for e in db.stream::<Account>(stream).read(&view, 1).unwrap() {
            let e = e.unwrap();
            let r = e.recorded();
            assert_eq!(u128::from(r.stream()), stream);
            assert!(r.timestamp_micros() > 0 && r.version() >= 1);
            from_read.push((r.seq(), e.meta::<RequestMeta>().unwrap().map(seen)));
        }
    }
    from_read.sort_by_key(|(seq, _)| *seq);
    let from_read: Vec<_> = from_read.into_iter().map(|(_, m)| m).collect();
    assert_eq!(from_read, expected);
    drop(view);

    // The async read.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let owned = rt.block_on(account.read_async(1)).unwrap();
    let metas: Vec<_> = owned.iter().map(|e| e.meta::<RequestMeta>().unwrap().map(seen)).collect();
    assert_eq!(metas, [&expected[..4], &expected[5..]].concat());

    // A subscription.
    let from_subscription = rt.block_on(async {
        let mut sub = db.subscribe(1);
        let mut out = Vec::new();
        for _ in 0..expected.len() {
            let e = sub.next_event().await.unwrap().unwrap();
            out.push(e.meta::<RequestMeta>().unwrap().map(seen));
        }
        out
    });
    assert_eq!(from_subscription, expected);

    // A projection (its table holds the user per seq) and a processor.
    let mut users = Projection::new("users").on::<Deposited>(|tx, _e, ev| {
        if let Some(m) = ev.meta::<RequestMeta>()? {
            tx.insert(&USERS, &ev.seq(), &m.user.to_string())?;
        }
        Ok(())
    });
    users.catch_up(&db).unwrap();
    let view = db.begin_read().unwrap();
    let users: Vec<Option<String>> = (1..=6).map(|seq| view.get(&USERS, &seq).unwrap()).collect();
    assert_eq!(users, expected.iter().map(|m| m.as_ref().map(|m| m.0.clone())).collect::<Vec<_>>());
    drop(view);

    let processed = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&processed);
    let mut notifier = Processor::new("notifier").on::<Deposited>(move |_e, ev| {
        sink.lock().unwrap().push(ev.meta::<RequestMeta>()?.map(seen));
        Ok(())
    });
    notifier.catch_up(&db).unwrap();
    assert_eq!(*processed.lock().unwrap(), expected);
}

#[test]
fn metadata_of_another_shape_or_raw_bytes_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let typed = NewEvent::from_event(&Deposited { cents: 1 }).unwrap().with_meta(&meta("ana", 1)).unwrap();
    let raw = NewEvent::new("note", b"{}".to_vec()).with_metadata(b"{\"user\":7}".to_vec());
    let short = NewEvent::new("note", b"{}".to_vec()).with_metadata(b"abc".to_vec());
    db.append(1u128, ExpectedVersion::Auto, [typed, raw, short]).unwrap();
    let view = db.begin_read().unwrap();
    let events: Vec<_> = view.read_all(1).unwrap().map(Result::unwrap).collect();

    let err = events[0].meta::<OtherMeta>().unwrap_err();
    assert!(matches!(err, Error::MetadataMismatch { seq: 1, stored: Some(_), .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("the metadata of the event at seq 1 is not of the type read"),
        "{err}"
    );
    assert!(matches!(events[1].meta::<RequestMeta>(), Err(Error::MetadataMismatch { seq: 2, .. })));
    assert!(matches!(
        events[2].meta::<RequestMeta>(),
        Err(Error::MetadataMismatch { seq: 3, stored: None, .. })
    ));
    // The raw bytes are still there for whoever wrote them.
    assert_eq!(events[1].metadata(), b"{\"user\":7}");
    assert_eq!(events[0].meta::<RequestMeta>().unwrap().map(seen), Some(("ana".into(), 1)));
}

/// A processor reacting to an event appends with the same correlation and, as causation,
/// the seq of the event it reacts to; the chain reads back from the store.
#[test]
fn a_processor_propagates_correlation_and_causation() {
    #[derive(Event, Debug)]
    #[event(name = "receipt.sent")]
    struct ReceiptSent {
        cents: u64,
    }
    #[derive(Default)]
    struct Receipts {
        sent: u32,
    }
    #[aggregate]
    impl Receipts {
        fn sent(&mut self, _: &ArchivedReceiptSent) {
            self.sent += 1;
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let account = db.stream::<Account>(1u128);
    account.execute_with(&Deposit(10), &ExecuteOptions::new().metadata(&meta("ana", 77))).unwrap();
    // A command's stamp records its type's layout in the registry, as `with_meta` does.
    assert_eq!(
        db.begin_read().unwrap().metadata_layout(<RequestMeta as varvedb::Schema>::FINGERPRINT).unwrap(),
        Some(<RequestMeta as varvedb::Describe>::layout())
    );

    let receipts = db.stream::<Receipts>(9u128);
    let out = receipts.clone();
    let mut mailer = Processor::new("receipts").on::<Deposited>(move |e, ev| {
        let asked = ev.meta::<RequestMeta>()?.expect("commands stamp their events");
        let caused = RequestMeta {
            user: "mailer".into(),
            correlation: asked.correlation.to_native(),
            causation: Some(ev.seq()),
        };
        let receipt = Pending::from(ReceiptSent { cents: e.cents.to_native() })
            .with_meta(&caused)
            .with_id(u128::from(ev.seq()));
        out.append_all(ExpectedVersion::Auto, [receipt])?;
        Ok(())
    });
    mailer.catch_up(&db).unwrap();

    let view = db.begin_read().unwrap();
    let mut chain = Vec::new();
    for receipt in receipts.read(&view, 1).unwrap() {
        let receipt = receipt.unwrap();
        let m = receipt.meta::<RequestMeta>().unwrap().unwrap();
        let cause_seq = m.causation.as_ref().map(|s| s.to_native()).unwrap();
        let cause = view.event(cause_seq).unwrap().unwrap();
        let cause_meta = cause.meta::<RequestMeta>().unwrap().unwrap();
        chain.push((
            cause_seq,
            cause.type_tag().to_owned(),
            cause_meta.correlation.to_native(),
            m.correlation.to_native(),
        ));
    }
    // The command decided two deposits (10 and 1 cents): two receipts, each naming its own.
    assert_eq!(
        chain,
        [(1, "account.deposited".to_owned(), 77, 77), (2, "account.deposited".to_owned(), 77, 77)]
    );
    assert_eq!(receipts.load().unwrap().state().sent, 2);
}

/// `Varve::stats` counts refused requests and repeated command attempts.
#[test]
fn stats_count_conflicts_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let before = db.stats();
    assert_eq!((before.conflicts, before.retries), (0, 0));
    db.append(5u128, ExpectedVersion::NoStream, [NewEvent::new("x", b"1".to_vec())]).unwrap();
    let refused = db.append(5u128, ExpectedVersion::NoStream, [NewEvent::new("x", b"2".to_vec())]);
    assert!(matches!(refused, Err(Error::ConcurrencyConflict { .. })));
    assert_eq!((db.stats().conflicts, db.stats().retries), (1, 0));

    // A transaction whose first attempt loses a race: one conflict, one retry.
    let account = db.stream::<Account>(2u128);
    let mut first = true;
    let done = db
        .transact_with(&ExecuteOptions::new(), |tx| {
            let loaded = tx.load(&account)?;
            if std::mem::take(&mut first) {
                account.append_all(ExpectedVersion::Auto, [Pending::from(Deposited { cents: 1 })])?;
            }
            tx.save(&account, &loaded, [Deposited { cents: 2 }])?;
            Ok::<_, ExecuteError<String>>(())
        })
        .unwrap();
    assert_eq!(done.attempts, 2);
    let stats = db.stats();
    assert_eq!((stats.conflicts, stats.retries), (2, 1));
    assert_eq!(stats.events, 3);
}
