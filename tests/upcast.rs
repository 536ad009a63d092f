//! Upcasting: events stored as older versions reach handlers of the current version, through
//! chains of `Upcast` impls, in aggregates, `Stream::read`, projections and processors.

// Several aggregates here exist only to write or to declare an event: their apply functions
// change nothing.
#![allow(clippy::unused_self)]

use std::sync::{Arc, Mutex};

use varvedb::{
    Error, Event, ExpectedVersion, Pending, Processor, ProcessorError, Projection, Table, Upcast, Varve,
    aggregate,
};

/// The first shape of the event, as an old build wrote it.
#[derive(Event, Debug, Clone)]
#[event(name = "order.placed", version = 1)]
struct OrderPlacedV1 {
    customer: String,
    amount_cents: u64,
}

/// The current shape.
#[derive(Event, Debug)]
#[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
struct OrderPlaced {
    customer: String,
    amount_cents: u64,
    currency: String,
}

impl Upcast<OrderPlacedV1> for OrderPlaced {
    fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
        OrderPlaced {
            customer: old.customer.to_string(),
            amount_cents: old.amount_cents.to_native(),
            currency: "EUR".into(),
        }
    }
}

#[derive(Event, Debug)]
#[event(name = "order.shipped")]
struct OrderShipped {
    carrier: String,
}

/// The aggregate as the old build had it: it knows only v1.
mod old_build {
    use super::{ArchivedOrderPlacedV1, ArchivedOrderShipped, aggregate};

    #[derive(Default, Debug)]
    pub struct Order {
        pub total: u64,
    }

    #[aggregate(name = "order")]
    impl Order {
        fn placed(&mut self, e: &ArchivedOrderPlacedV1) {
            self.total += e.amount_cents.to_native();
        }
        fn shipped(&mut self, _: &ArchivedOrderShipped) {}
    }
}

/// The current aggregate: it names v2 only.
#[derive(Default, Debug, PartialEq)]
struct Order {
    total: u64,
    lines: u32,
    currencies: Vec<String>,
    shipped: bool,
}

#[aggregate(name = "order")]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.total += e.amount_cents.to_native();
        self.lines += 1;
        self.currencies.push(e.currency.to_string());
    }
    fn shipped(&mut self, _: &ArchivedOrderShipped) {
        self.shipped = true;
    }
}

const TOTALS: Table<String, u64> = Table::new("totals", "by_currency");

fn v1(cents: u64) -> OrderPlacedV1 {
    OrderPlacedV1 { customer: format!("c{cents}"), amount_cents: cents }
}

fn v2(cents: u64, currency: &str) -> OrderPlaced {
    OrderPlaced { customer: format!("c{cents}"), amount_cents: cents, currency: currency.into() }
}

#[test]
fn a_store_written_with_v1_only_is_loaded_read_projected_and_processed_with_v2_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let old = db.stream::<old_build::Order>(1u128);
    old.append_all(ExpectedVersion::NoStream, [v1(100), v1(250)]).unwrap();
    old.append(ExpectedVersion::Exact(2), OrderShipped { carrier: "dhl".into() }).unwrap();

    // Aggregate.
    let order = db.stream::<Order>(1u128).load().unwrap();
    assert_eq!(order.version(), 3);
    assert_eq!(order.state().total, 350);
    assert_eq!(order.state().currencies, ["EUR", "EUR"]);
    assert!(order.state().shipped);

    // `Stream::read`.
    let view = db.begin_read().unwrap();
    let mut seen = Vec::new();
    for event in db.stream::<Order>(1u128).read(&view, 1).unwrap() {
        let event = event.unwrap();
        assert_eq!(event.is::<OrderPlaced>(), event.recorded().version() < 3);
        if let Some(p) = event.get::<OrderPlaced>().unwrap() {
            // Asked twice: the upcast form is kept with the event.
            let again = event.get::<OrderPlaced>().unwrap().unwrap();
            assert_eq!(p.amount_cents, again.amount_cents);
            seen.push((p.customer.to_string(), p.amount_cents.to_native(), p.currency.to_string()));
        }
    }
    drop(view);
    assert_eq!(seen, [("c100".into(), 100, "EUR".into()), ("c250".into(), 250, "EUR".into())]);

    // Projection.
    let mut projection = Projection::new("totals").on::<OrderPlaced>(|tx, e, _| {
        let currency = e.currency.to_string();
        let now = tx.get(&TOTALS, &currency)?.unwrap_or(0);
        tx.insert(&TOTALS, &currency, &(now + e.amount_cents.to_native()))?;
        Ok(())
    });
    projection.catch_up(&db).unwrap();
    assert_eq!(db.begin_read().unwrap().get(&TOTALS, &"EUR".to_owned()).unwrap(), Some(350));

    // Processor.
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let mut processor = Processor::new("mailer").on::<OrderPlaced>(move |e, meta| {
        h.lock().unwrap().push((meta.seq(), e.amount_cents.to_native(), e.currency.to_string()));
        Ok(())
    });
    processor.catch_up(&db).unwrap();
    assert_eq!(*handled.lock().unwrap(), [(1, 100, "EUR".into()), (2, 250, "EUR".into())]);
}

/// The same history folded by an aggregate written by hand with one apply function per
/// version.
mod by_hand {
    use super::{ArchivedOrderPlaced, ArchivedOrderPlacedV1, ArchivedOrderShipped, aggregate};

    #[derive(Default, Debug, PartialEq)]
    pub struct Order {
        pub total: u64,
        pub lines: u32,
        pub currencies: Vec<String>,
        pub shipped: bool,
    }

    #[aggregate(name = "order")]
    impl Order {
        fn placed_v1(&mut self, e: &ArchivedOrderPlacedV1) {
            self.total += e.amount_cents.to_native();
            self.lines += 1;
            self.currencies.push("EUR".into());
        }
        fn placed(&mut self, e: &ArchivedOrderPlaced) {
            self.total += e.amount_cents.to_native();
            self.lines += 1;
            self.currencies.push(e.currency.to_string());
        }
        fn shipped(&mut self, _: &ArchivedOrderShipped) {
            self.shipped = true;
        }
    }
}

#[test]
fn mixed_histories_fold_as_a_hand_written_two_version_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let stream = db.stream::<by_hand::Order>(7u128);
    let mut events: Vec<Pending<by_hand::Order>> = Vec::new();
    for i in 0..40u64 {
        events.push(match i % 5 {
            0 | 3 => Pending::from(v1(i)),
            1 => Pending::from(v2(i, "USD")),
            2 => Pending::from(v2(i, "CHF")),
            _ => Pending::from(OrderShipped { carrier: "ups".into() }),
        });
    }
    stream.append_all(ExpectedVersion::NoStream, events).unwrap();
    let by_hand = stream.load().unwrap();
    let upcast = db.stream::<Order>(7u128).load().unwrap();
    assert_eq!(upcast.version(), 40);
    let by_hand = by_hand.into_state();
    let upcast = upcast.into_state();
    assert_eq!(
        (by_hand.total, by_hand.lines, by_hand.currencies, by_hand.shipped),
        (upcast.total, upcast.lines, upcast.currencies, upcast.shipped)
    );
}

/// Three versions: v1 → v2 → v3, one `Upcast` impl per step.
mod chain {
    use varvedb::{Event, Upcast, aggregate};

    #[derive(Event)]
    #[event(name = "account.opened", version = 1)]
    pub struct OpenedV1 {
        pub owner: String,
    }

    #[derive(Event)]
    #[event(name = "account.opened", version = 2, upcast = OpenedV1)]
    pub struct OpenedV2 {
        pub owner: String,
        pub limit_cents: u64,
    }

    impl Upcast<OpenedV1> for OpenedV2 {
        fn upcast(old: &ArchivedOpenedV1) -> Self {
            OpenedV2 { owner: old.owner.to_string(), limit_cents: 500 }
        }
    }

    #[derive(Event)]
    #[event(name = "account.opened", version = 3, upcast = OpenedV2)]
    pub struct Opened {
        pub owners: Vec<String>,
        pub limit_cents: u64,
        pub tier: u8,
    }

    impl Upcast<OpenedV2> for Opened {
        fn upcast(old: &ArchivedOpenedV2) -> Self {
            Opened { owners: vec![old.owner.to_string()], limit_cents: old.limit_cents.to_native(), tier: 1 }
        }
    }

    #[derive(Default)]
    pub struct WriterV1;
    #[aggregate(name = "account")]
    impl WriterV1 {
        fn opened(&mut self, _: &ArchivedOpenedV1) {}
    }

    #[derive(Default)]
    pub struct WriterV2;
    #[aggregate(name = "account")]
    impl WriterV2 {
        fn opened(&mut self, _: &ArchivedOpenedV2) {}
    }

    #[derive(Default, Debug, PartialEq)]
    pub struct Account {
        pub seen: Vec<(Vec<String>, u64, u8)>,
    }

    #[aggregate(name = "account")]
    impl Account {
        fn opened(&mut self, e: &ArchivedOpened) {
            let owners = e.owners.iter().map(ToString::to_string).collect();
            self.seen.push((owners, e.limit_cents.to_native(), e.tier));
        }
    }
}

#[test]
fn chains_of_three_versions_upcast_step_by_step() {
    use chain::*;
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.stream::<WriterV1>(1u128).append(ExpectedVersion::NoStream, OpenedV1 { owner: "ana".into() }).unwrap();
    db.stream::<WriterV2>(1u128)
        .append(ExpectedVersion::Exact(1), OpenedV2 { owner: "bo".into(), limit_cents: 900 })
        .unwrap();
    db.stream::<Account>(1u128)
        .append(
            ExpectedVersion::Exact(2),
            Opened { owners: vec!["cy".into(), "di".into()], limit_cents: 7, tier: 3 },
        )
        .unwrap();
    let account = db.stream::<Account>(1u128).load().unwrap();
    assert_eq!(
        account.state().seen,
        [
            (vec!["ana".to_owned()], 500, 1),
            (vec!["bo".to_owned()], 900, 1),
            (vec!["cy".to_owned(), "di".to_owned()], 7, 3)
        ]
    );
    let info = varvedb::EventInfo::of::<Opened>();
    assert_eq!(info.chain().map(|i| i.version).collect::<Vec<_>>(), [3, 2, 1]);
}

mod unlinked {
    use varvedb::{Event, aggregate};

    /// A v2 of `order.placed` that declares no `upcast`: v1 events have no path to it.
    #[derive(Event)]
    #[event(name = "order.placed", version = 2)]
    pub struct OrderPlaced {
        pub customer: String,
        pub amount_cents: u64,
        pub currency: String,
    }

    #[derive(Default, Debug)]
    pub struct Order;
    #[aggregate(name = "order")]
    impl Order {
        fn placed(&mut self, _: &ArchivedOrderPlaced) {}
    }
}

#[test]
fn a_stored_version_with_no_path_is_an_error_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.stream::<old_build::Order>(1u128).append(ExpectedVersion::NoStream, v1(5)).unwrap();
    let err = db.stream::<unlinked::Order>(1u128).load().unwrap_err();
    assert!(
        matches!(&err, Error::NoUpcastPath { seq: 1, type_tag, stored: 1, handled: 2 } if type_tag == "order.placed"),
        "{err}"
    );
    let view = db.begin_read().unwrap();
    let first = db.stream::<unlinked::Order>(1u128).read(&view, 1).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::NoUpcastPath { stored: 1, handled: 2, .. })));
    drop(view);

    // A processor of v2 without the link stops at the v1 event, naming both versions.
    let mut processor = Processor::new("p").on::<unlinked::OrderPlaced>(|_, _| Ok(()));
    let err = processor.catch_up(&db).unwrap_err();
    assert!(matches!(err, ProcessorError::UnhandledVersion { seq: 1, version: 1, handled: 2, .. }), "{err}");

    // A newer stored version than the handler knows has no path either.
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.stream::<Order>(1u128).append(ExpectedVersion::NoStream, v2(5, "EUR")).unwrap();
    let err = db.stream::<old_build::Order>(1u128).load().unwrap_err();
    assert!(matches!(err, Error::NoUpcastPath { stored: 2, handled: 1, .. }), "{err}");
}

mod changed_v1 {
    use varvedb::{Event, Upcast, aggregate};

    /// v1 with a field renamed: not the shape the store recorded for version 1.
    #[derive(Event)]
    #[event(name = "order.placed", version = 1)]
    pub struct OrderPlacedV1 {
        pub client: String,
        pub amount_cents: u64,
    }

    #[derive(Event)]
    #[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
    pub struct OrderPlaced {
        pub customer: String,
        pub amount_cents: u64,
        pub currency: String,
    }

    impl Upcast<OrderPlacedV1> for OrderPlaced {
        fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
            OrderPlaced { customer: old.client.to_string(), amount_cents: 0, currency: String::new() }
        }
    }

    #[derive(Default, Debug)]
    pub struct Order;
    #[aggregate(name = "order")]
    impl Order {
        fn placed(&mut self, _: &ArchivedOrderPlaced) {}
    }
}

#[test]
fn the_registry_checks_the_fingerprints_of_every_version_on_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.stream::<old_build::Order>(1u128).append(ExpectedVersion::NoStream, v1(5)).unwrap();
    let err = db.stream::<changed_v1::Order>(1u128).load().unwrap_err();
    assert!(matches!(err, Error::SchemaMismatch { version: 1, .. }), "{err}");
    // Both versions' fingerprints are kept once both were written.
    db.stream::<Order>(1u128).append(ExpectedVersion::Exact(1), v2(6, "USD")).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(
        view.schema_fingerprint("order.placed", 1).unwrap(),
        Some(<OrderPlacedV1 as Event>::FINGERPRINT)
    );
    assert_eq!(
        view.schema_fingerprint("order.placed", 2).unwrap(),
        Some(<OrderPlaced as Event>::FINGERPRINT)
    );
}

#[tokio::test]
async fn a_subscriber_reads_older_versions_as_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.stream::<old_build::Order>(1u128).append_all(ExpectedVersion::NoStream, [v1(10), v1(20)]).unwrap();
    db.stream::<old_build::Order>(1u128)
        .append(ExpectedVersion::Exact(2), OrderShipped { carrier: "x".into() })
        .unwrap();
    db.stream::<Order>(1u128).append(ExpectedVersion::Exact(3), v2(30, "CHF")).unwrap();
    let mut sub = db.subscribe(1).of_types([<OrderPlaced as Event>::NAME]);
    let mut buf = varvedb::UpcastBuffer::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = sub.next_event().await.unwrap().unwrap();
        let placed = event.read_as::<OrderPlaced>(&mut buf).unwrap().expect("an order.placed");
        seen.push((event.schema_version, placed.amount_cents.to_native(), placed.currency.to_string()));
    }
    assert_eq!(seen, [(1, 10, "EUR".into()), (1, 20, "EUR".into()), (2, 30, "CHF".into())]);
    // Another type is `None`; the tag at a version with no path is an error.
    let event = db.subscribe(3).next_event().await.unwrap().unwrap();
    assert!(event.read_as::<OrderPlaced>(&mut buf).unwrap().is_none());
    let event = db.subscribe(1).next_event().await.unwrap().unwrap();
    assert!(matches!(
        event.read_as::<unlinked::OrderPlaced>(&mut buf),
        Err(Error::NoUpcastPath { stored: 1, .. })
    ));
}

#[test]
fn the_store_takes_untyped_appends_of_older_versions_under_the_current_aggregates_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    // Naming the current aggregate tells the writer its events, chains included.
    let orders = db.stream::<Order>(7u128);
    let kind = <Order as varvedb::Aggregate>::KIND;

    // A v1 event, as an older build's untyped write would store it, reads upcast: accepted.
    let mut batch = varvedb::WriteBatch::new();
    batch.append_kind(
        7u128,
        kind,
        ExpectedVersion::NoStream,
        [varvedb::NewEvent::from_event(&v1(250)).unwrap()],
    );
    db.write(batch).unwrap();
    orders.append(ExpectedVersion::Exact(1), v2(50, "USD")).unwrap();
    let loaded = orders.load().unwrap();
    assert_eq!((loaded.version(), loaded.state().total, loaded.state().lines), (2, 300, 2));

    // A version on no chain of the aggregate would make the stream unloadable: refused.
    let mut batch = varvedb::WriteBatch::new();
    batch.append_kind(
        7u128,
        kind,
        ExpectedVersion::Exact(2),
        [varvedb::NewEvent::new("order.placed", vec![0u8; 8])],
    );
    let err = db.write(batch).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignEvent { event, version: 0, .. } if event == "order.placed"),
        "{err:?}"
    );
    assert_eq!(orders.load().unwrap().version(), 2, "nothing was written");
}
