//! Aggregate snapshots: made on save every N events or on demand, used by load only when
//! they match the aggregate as built, and never changing what load returns.

use proptest::prelude::*;
use varvedb::{Error, ExpectedVersion, MasterKey, Options, Pending, Varve};

#[path = "support/damage.rs"]
mod damage;
#[path = "support/ledger.rs"]
mod ledger;

use damage::raw;
use ledger::{Every3, Every7, Full, Manual, OldLedger, Posted, PostedV1, Reversed};

fn posted(i: u64) -> Posted {
    Posted { cents: i, memo: format!("memo {i}") }
}

/// Appends `n` postings to `stream` through `Every7`'s `save`, in batches of `batch`.
fn save_postings(db: &Varve, stream: u128, n: u64, batch: u64) {
    let s = db.stream::<Every7>(stream);
    let mut done = 0;
    while done < n {
        let loaded = s.load().unwrap();
        let events: Vec<Posted> = (done..n.min(done + batch)).map(posted).collect();
        done += events.len() as u64;
        s.save(&loaded, events).unwrap();
    }
}

fn snapshot_key(stream: u128) -> [u8; 16] {
    stream.to_be_bytes()
}

/// The shape of the evolution guide's example: an aggregate snapshotted every 1,000 events.
mod orders {
    use varvedb::{Event, EventData, Upcast, aggregate};

    #[derive(Event, Debug)]
    #[event(name = "order.placed", version = 1)]
    pub struct OrderPlacedV1 {
        pub customer: String,
        pub amount_cents: u64,
    }

    #[derive(Event, Debug)]
    #[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
    pub struct OrderPlaced {
        pub customer: String,
        pub amount_cents: u64,
        pub currency: String,
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

    #[derive(Default, EventData)]
    pub struct Order {
        pub total: u64,
        pub lines: u32,
    }

    #[aggregate(name = "order", snapshot_every = 1000)]
    impl Order {
        fn placed(&mut self, e: &ArchivedOrderPlaced) {
            self.total += e.amount_cents.to_native();
            self.lines += 1;
        }
    }

    #[derive(Default)]
    pub struct OldOrder {
        pub lines: u32,
    }

    #[aggregate(name = "order")]
    impl OldOrder {
        fn placed(&mut self, _: &ArchivedOrderPlacedV1) {
            self.lines += 1;
        }
    }
}

#[test]
fn a_long_stream_loads_from_its_newest_snapshot() {
    use orders::{OldOrder, Order, OrderPlaced, OrderPlacedV1};
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let id = 42u128;
    // The first 500 events by the older build, as v1.
    let v1: Vec<OrderPlacedV1> =
        (0..500).map(|i| OrderPlacedV1 { customer: format!("c{i}"), amount_cents: i }).collect();
    db.stream::<OldOrder>(id).append_all(ExpectedVersion::NoStream, v1).unwrap();
    let orders = db.stream::<Order>(id);
    while orders.load().unwrap().version() < 25_000 {
        let loaded = orders.load().unwrap();
        let from = u64::from(loaded.version());
        let batch: Vec<OrderPlaced> = (from..from + 1_000)
            .map(|i| OrderPlaced { customer: format!("c{i}"), amount_cents: i, currency: "USD".into() })
            .collect();
        orders.save(&loaded, batch).unwrap();
    }
    let order = orders.load().unwrap();
    assert_eq!(order.version(), 25_500);
    assert!(order.replayed() <= 1_000, "folded {} events after the snapshot", order.replayed());
    assert_eq!(order.state().total, (0..25_500u64).sum::<u64>());
    assert_eq!(order.state().lines, 25_500);
    // Without snapshots, the same state.
    db.drop_snapshots().unwrap();
    let full = orders.load().unwrap();
    assert_eq!(full.replayed(), 25_500);
    assert_eq!((full.state().total, full.state().lines), (order.state().total, order.state().lines));
}

#[test]
fn save_snapshots_every_n_events_and_load_folds_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    save_postings(&db, 1, 20, 1);
    // Saves crossed 7 and 14: the snapshot covers 14, and 6 events follow it.
    let loaded = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!((loaded.version(), loaded.replayed()), (20, 6));
    let full = db.stream::<Full>(1u128).load().unwrap();
    assert_eq!((full.version(), full.replayed()), (20, 20), "an aggregate without snapshots folds all");
    assert_eq!(loaded.state().fields(), full.state().fields());
    // `Every3` has the same state, events and snapshot version: it uses the same snapshot.
    assert_eq!(db.stream::<Every3>(1u128).load().unwrap().replayed(), 6);

    // A batch that jumps over a multiple snapshots too.
    save_postings(&db, 2, 30, 10);
    let loaded = db.stream::<Every7>(2u128).load().unwrap();
    assert_eq!((loaded.version(), loaded.replayed()), (30, 0));

    // Appends that are not saves make no snapshot.
    db.stream::<Every7>(3u128).append_all(ExpectedVersion::NoStream, (0..30).map(posted)).unwrap();
    assert_eq!(db.stream::<Every7>(3u128).load().unwrap().replayed(), 30);
}

/// Posts `n` postings of 1 cent: a command for `Every7::execute`.
struct PostMany(u64);

impl varvedb::Handle<PostMany> for Every7 {
    type Error = std::convert::Infallible;
    fn handle(&self, command: &PostMany) -> Result<Vec<Pending<Self>>, Self::Error> {
        Ok((0..command.0).map(|i| Pending::from(posted(i))).collect())
    }
}

#[test]
fn execute_and_transact_snapshot_every_n_events_as_save_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();

    // `execute` decides and saves: crossing 7 leaves a snapshot at the version it reached.
    let executed = db.stream::<Every7>(1u128);
    executed.execute(&PostMany(5)).unwrap();
    assert_eq!(executed.load().unwrap().replayed(), 5, "below 7: no snapshot yet");
    executed.execute(&PostMany(4)).unwrap();
    assert_eq!((executed.load().unwrap().version(), executed.load().unwrap().replayed()), (9, 0));

    // A transaction's saves, each on its own stream, and only those that cross 7.
    let (big, small) = (db.stream::<Every7>(2u128), db.stream::<Every7>(3u128));
    let done = db
        .transact(|tx| {
            let (la, lb) = (tx.load(&big)?, tx.load(&small)?);
            tx.save(&big, &la, (0..8).map(posted))?;
            tx.save(&small, &lb, (0..3).map(posted))?;
            Ok::<_, varvedb::ExecuteError<std::convert::Infallible>>(())
        })
        .unwrap();
    assert_eq!(done.appended.len(), 2);
    assert_eq!((big.load().unwrap().version(), big.load().unwrap().replayed()), (8, 0));
    assert_eq!((small.load().unwrap().version(), small.load().unwrap().replayed()), (3, 3));
    let full = db.stream::<Full>(2u128).load().unwrap();
    assert_eq!(big.load().unwrap().state().fields(), full.state().fields());

    // The testing harness commits a transaction's saves as `transact` does.
    let world = varvedb::testing::World::new();
    let harness = world.stream::<Every7>(5u128);
    world
        .when(|tx| {
            let loaded = tx.load(&harness)?;
            tx.save(&harness, &loaded, (0..7).map(posted))?;
            Ok::<_, varvedb::ExecuteError<std::convert::Infallible>>(())
        })
        .then(&harness, (0..7).map(posted))
        .commit();
    assert_eq!((harness.load().unwrap().version(), harness.load().unwrap().replayed()), (7, 0));

    // A plain batch write is not a save of the typed layer: no snapshot.
    let batched = db.stream::<Every7>(4u128);
    let mut batch = db.batch();
    batch.save(&batched, &batched.load().unwrap(), (0..8).map(posted)).unwrap();
    db.write(batch).unwrap();
    assert_eq!(batched.load().unwrap().replayed(), 8);
}

#[test]
fn stream_snapshot_stores_the_state_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let s = db.stream::<Manual>(5u128);
    assert_eq!(s.snapshot().unwrap(), 0, "an empty stream has nothing to snapshot");
    s.append_all(ExpectedVersion::NoStream, (0..10).map(posted)).unwrap();
    let loaded = s.load().unwrap();
    s.save(&loaded, [posted(99)]).unwrap(); // no `snapshot_every`: saves make none
    assert_eq!(s.load().unwrap().replayed(), 11);
    assert_eq!(s.snapshot().unwrap(), 11);
    assert_eq!(s.load().unwrap().replayed(), 0);
    s.append(ExpectedVersion::Exact(11), Reversed { cents: 3 }).unwrap();
    let loaded = s.load().unwrap();
    assert_eq!((loaded.version(), loaded.replayed()), (12, 1));
    assert_eq!(loaded.state().fields(), db.stream::<Full>(5u128).load().unwrap().state().fields());
}

/// The same kind, events and state fields, with one more field: another state shape.
mod grown {
    use super::ledger::{ArchivedPosted, ArchivedReversed};
    use varvedb::{EventData, aggregate};

    #[derive(Default, Debug, EventData)]
    pub struct Ledger {
        pub balance: u64,
        pub postings: u32,
        pub largest: u64,
    }

    #[aggregate(name = "ledger", snapshot)]
    impl Ledger {
        fn posted(&mut self, e: &ArchivedPosted) {
            self.balance += e.cents.to_native();
            self.postings += 1;
            self.largest = self.largest.max(e.cents.to_native());
        }
        fn reversed(&mut self, e: &ArchivedReversed) {
            self.balance -= e.cents.to_native();
        }
    }
}

/// The same state and events, with apply logic declared changed.
mod relogic {
    use super::ledger::{ArchivedPosted, ArchivedReversed};
    use varvedb::{EventData, aggregate};

    #[derive(Default, Debug, EventData)]
    pub struct Ledger {
        pub balance: u64,
        pub postings: u32,
        pub digest: u64,
        pub last_memo: String,
    }

    #[aggregate(name = "ledger", snapshot, snapshot_version = 2)]
    impl Ledger {
        fn posted(&mut self, e: &ArchivedPosted) {
            // Now counts cents twice: no fingerprint can see that; `snapshot_version` says it.
            self.balance += 2 * e.cents.to_native();
            self.postings += 1;
        }
        fn reversed(&mut self, e: &ArchivedReversed) {
            self.balance -= e.cents.to_native();
        }
    }
}

/// The same state, fewer events.
mod fewer_events {
    use super::ledger::ArchivedPosted;
    use varvedb::{EventData, aggregate};

    #[derive(Default, Debug, EventData)]
    pub struct Ledger {
        pub balance: u64,
        pub postings: u32,
        pub digest: u64,
        pub last_memo: String,
    }

    #[aggregate(name = "ledger", snapshot)]
    impl Ledger {
        fn posted(&mut self, e: &ArchivedPosted) {
            self.balance += e.cents.to_native();
            self.postings += 1;
        }
    }
}

#[test]
fn a_changed_state_apply_set_or_snapshot_version_ignores_old_snapshots_and_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let s = db.stream::<Manual>(1u128);
    s.append_all(ExpectedVersion::NoStream, (1..=10).map(posted)).unwrap();
    assert_eq!(s.snapshot().unwrap(), 10);
    assert_eq!(s.load().unwrap().replayed(), 0);

    // A state with another shape: the snapshot is ignored, never misread.
    let g = db.stream::<grown::Ledger>(1u128).load().unwrap();
    assert_eq!(g.replayed(), 10);
    assert_eq!((g.state().balance, g.state().postings, g.state().largest), (55, 10, 10));
    // ... and replaced.
    db.stream::<grown::Ledger>(1u128).snapshot().unwrap();
    assert_eq!(db.stream::<grown::Ledger>(1u128).load().unwrap().replayed(), 0);
    assert_eq!(s.load().unwrap().replayed(), 10, "the old declaration now ignores the new snapshot");

    // A declared change of apply logic.
    s.snapshot().unwrap();
    let r = db.stream::<relogic::Ledger>(1u128).load().unwrap();
    assert_eq!((r.replayed(), r.state().balance), (10, 110));

    // A changed set of apply functions (this stream has only postings, so it still loads).
    s.snapshot().unwrap();
    let f = db.stream::<fewer_events::Ledger>(1u128).load().unwrap();
    assert_eq!((f.replayed(), f.state().balance), (10, 55));
}

#[test]
fn dropping_snapshots_is_safe_all_or_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    save_postings(&db, 1, 14, 7);
    save_postings(&db, 2, 14, 7);
    let o = db.stream::<orders::Order>(3u128);
    let placed =
        |i: u64| orders::OrderPlaced { customer: "c".into(), amount_cents: i, currency: "EUR".into() };
    o.append_all(ExpectedVersion::NoStream, (0..5).map(placed)).unwrap();
    o.snapshot().unwrap();
    assert_eq!(raw_count(&db), 3);

    let before = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!(db.drop_snapshots_of("ledger").unwrap(), 2);
    let after = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!((before.replayed(), after.replayed()), (0, 14));
    assert_eq!(before.state().fields(), after.state().fields());
    assert_eq!(o.load().unwrap().replayed(), 0, "another kind's snapshot stays");
    assert_eq!(db.drop_snapshots().unwrap(), 1);
    assert_eq!(o.load().unwrap().replayed(), 5);
    assert_eq!(db.drop_snapshots().unwrap(), 0);
}

/// The rows of the snapshot table, counted in a backup: `db` stays open.
fn raw_count(db: &Varve) -> usize {
    let copy = tempfile::tempdir().unwrap();
    db.backup(copy.path().join("b")).unwrap();
    raw::all(&copy.path().join("b"), "snapshots").len()
}

#[test]
fn a_damaged_or_misplaced_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    save_postings(&db, 1, 14, 7);
    save_postings(&db, 2, 21, 7);
    let want1 = db.stream::<Full>(1u128).load().unwrap().into_state().fields();
    drop(db);

    // Stream 2's snapshot (covering version 21) under stream 1's key: its checksum binds it
    // to stream 2, and stream 1 has no version 21.
    let snap2 = raw::get(dir.path(), "snapshots", &snapshot_key(2)).unwrap();
    raw::put(dir.path(), "snapshots", &snapshot_key(1), &snap2);
    let db = Varve::open(dir.path()).unwrap();
    let l = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!((l.replayed(), l.state().fields()), (14, want1.clone()));
    drop(db);

    // The same, with its checksum recomputed for stream 1: it covers version 21, past
    // stream 1's head.
    let mut forged = snap2.clone();
    varvedb::__private::forge_snapshot_checksum(1, &mut forged);
    raw::put(dir.path(), "snapshots", &snapshot_key(1), &forged);
    let db = Varve::open(dir.path()).unwrap();
    let l = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!((l.replayed(), l.state().fields()), (14, want1.clone()));
    drop(db);

    // A snapshot of stream 1 at version 14 from another store, whose stream 1 has other
    // events, at other seqs: its checksum is valid here (same key), its kind, fingerprint
    // and version fit, but the event at version 14 is not the one it covered.
    let other = tempfile::tempdir().unwrap();
    let db2 = Varve::open(other.path()).unwrap();
    db2.stream::<Full>(9u128).append_all(ExpectedVersion::NoStream, (0..5).map(posted)).unwrap();
    let s = db2.stream::<Every7>(1u128);
    s.save(&s.load().unwrap(), (100..114).map(posted)).unwrap();
    drop((s, db2));
    let foreign = raw::get(other.path(), "snapshots", &snapshot_key(1)).unwrap();
    raw::put(dir.path(), "snapshots", &snapshot_key(1), &foreign);
    let db = Varve::open(dir.path()).unwrap();
    let l = db.stream::<Every7>(1u128).load().unwrap();
    assert_eq!((l.replayed(), l.state().fields()), (14, want1.clone()), "another event at the version");
    drop(db);

    // A flipped byte anywhere in a snapshot.
    let good = raw::get(dir.path(), "snapshots", &snapshot_key(2)).unwrap();
    for at in [0, 4, 6, 10, 18, 27, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        raw::put(dir.path(), "snapshots", &snapshot_key(1), &bad);
        let db = Varve::open(dir.path()).unwrap();
        let l = db.stream::<Every7>(1u128).load().unwrap();
        assert_eq!((l.replayed(), l.state().fields()), (14, want1.clone()), "byte {at} flipped");
    }
}

#[test]
fn encrypted_snapshots_are_sealed_with_the_stream_key_and_unreadable_after_shred() {
    let dir = tempfile::tempdir().unwrap();
    let key = || MasterKey::from_bytes([3; 32]);
    let db = Options::new().encryption_key(key()).open(dir.path()).unwrap();
    let s = db.stream::<Manual>(9u128);
    let secret = Posted { cents: 7, memo: "top-secret-memo-in-the-state".into() };
    s.append_all(ExpectedVersion::NoStream, [posted(1), secret]).unwrap();
    assert_eq!(s.snapshot().unwrap(), 2);
    let loaded = s.load().unwrap();
    assert_eq!((loaded.replayed(), loaded.state().last_memo.as_str()), (0, "top-secret-memo-in-the-state"));
    drop((s, db));
    let stored = raw::get(dir.path(), "snapshots", &snapshot_key(9)).unwrap();
    assert!(!stored.windows(10).any(|w| w == b"top-secret"), "the state is stored sealed");

    // A snapshot copied under another stream is refused (the checksum binds it to its key;
    // the seal binds it to its stream's data key).
    let db = Options::new().encryption_key(key()).open(dir.path()).unwrap();
    db.stream::<Manual>(10u128).append_all(ExpectedVersion::NoStream, [posted(1), posted(2)]).unwrap();
    drop(db);
    raw::put(dir.path(), "snapshots", &snapshot_key(10), &stored);
    let db = Options::new().encryption_key(key()).open(dir.path()).unwrap();
    assert_eq!(db.stream::<Manual>(10u128).load().unwrap().replayed(), 2);

    assert!(db.shred(9u128).unwrap());
    let err = s_load(&db, 9);
    assert!(matches!(err, Error::Shredded { .. }), "{err}");
    // Nothing can be snapshotted after the shred either.
    assert!(matches!(db.stream::<Manual>(9u128).snapshot(), Err(Error::Shredded { .. })));
}

fn s_load(db: &Varve, stream: u128) -> Error {
    db.stream::<Manual>(stream).load().unwrap_err()
}

#[derive(Debug, Clone)]
enum Op {
    PostV1(u64),
    Save(Vec<u64>),
    Reverse(u64),
    Snapshot,
    DropSnapshots,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..1_000u64).prop_map(Op::PostV1),
        4 => proptest::collection::vec(0..1_000u64, 1..9).prop_map(Op::Save),
        2 => (0..500u64).prop_map(Op::Reverse),
        1 => Just(Op::Snapshot),
        1 => Just(Op::DropSnapshots),
    ]
}

fn cases() -> u32 {
    std::env::var("VARVEDB_SNAPSHOT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Over random histories of v1 and v2 postings and reversals, saved in random batches,
    /// with snapshots made on save, on demand and dropped at random, every snapshotting
    /// declaration loads exactly what a full fold gives.
    #[test]
    fn snapshot_loads_equal_full_folds(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let id = 1u128;
        for op in ops {
            match op {
                Op::PostV1(c) => {
                    db.stream::<OldLedger>(id).append(ExpectedVersion::Auto, PostedV1 { cents: c }).unwrap();
                }
                Op::Save(cents) => {
                    let s = db.stream::<Every3>(id);
                    let loaded = s.load().unwrap();
                    let events: Vec<Pending<Every3>> = cents
                        .iter()
                        .map(|&c| if c % 4 == 0 { Pending::from(Reversed { cents: c }) } else { Pending::from(posted(c)) })
                        .collect();
                    s.save(&loaded, events).unwrap();
                }
                Op::Reverse(c) => {
                    db.stream::<Every7>(id).append(ExpectedVersion::Auto, Reversed { cents: c }).unwrap();
                }
                Op::Snapshot => {
                    db.stream::<Manual>(id).snapshot().unwrap();
                }
                Op::DropSnapshots => {
                    db.drop_snapshots().unwrap();
                }
            }
            let full = db.stream::<Full>(id).load().unwrap();
            let e3 = db.stream::<Every3>(id).load().unwrap();
            let e7 = db.stream::<Every7>(id).load().unwrap();
            let m = db.stream::<Manual>(id).load().unwrap();
            prop_assert_eq!(full.replayed(), full.version());
            for (version, replayed, fields) in [
                (e3.version(), e3.replayed(), e3.state().fields()),
                (e7.version(), e7.replayed(), e7.state().fields()),
                (m.version(), m.replayed(), m.state().fields()),
            ] {
                prop_assert_eq!(version, full.version());
                prop_assert!(replayed <= version);
                prop_assert_eq!(&fields, &full.state().fields());
            }
        }
    }
}
