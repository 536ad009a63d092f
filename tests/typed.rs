//! The typed layer: derives, aggregates, `Stream<A>`, load/save, commands.

use varvedb::{Event, ExpectedVersion, Varve, aggregate};

#[derive(Event, Debug)]
struct OrderPlaced {
    customer: String,
    amount_cents: u64,
    lines: Vec<String>,
}

#[derive(Event, Debug)]
#[event(name = "order.shipped", version = 1)]
struct OrderShipped {
    carrier: String,
}

#[derive(Default)]
struct Order {
    total: u64,
    shipped: bool,
}

#[aggregate]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.total += e.amount_cents.to_native();
    }
    fn shipped(&mut self, _e: &ArchivedOrderShipped) {
        self.shipped = true;
    }
}

/// The typed API as a user first writes it: derive, aggregate, append, load.
#[test]
fn the_users_view_compiles_and_works_as_written() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path())?;
    let id = uuid::Uuid::new_v4(); // u128 works too
    let orders = db.stream::<Order>(id); // varvedb::Stream<Order>
    orders.append(
        ExpectedVersion::NoStream,
        OrderPlaced { customer: "ana".into(), amount_cents: 1250, lines: vec![] },
    )?;
    let order = orders.load()?; // folds archived events in place
    assert_eq!((order.state().total, order.version()), (1250, 1));
    orders.save(&order, [OrderShipped { carrier: "dhl".into() }])?; // expects version 1
    assert!(matches!(
        orders.append(ExpectedVersion::Exact(1), OrderShipped { carrier: "x".into() }),
        Err(varvedb::Error::ConcurrencyConflict { .. })
    ));
    let order = orders.load()?;
    assert!(order.state().shipped);
    assert_eq!(order.version(), 2);
    Ok(())
}

mod every_field_type {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use varvedb::{Event, EventData, ExpectedVersion, Varve, aggregate, rkyv};

    #[derive(EventData, Debug, Clone, PartialEq)]
    pub struct Address {
        pub street: String,
        pub zip: Option<u32>,
    }

    #[derive(EventData, Debug, Clone, PartialEq)]
    pub enum Channel {
        Web,
        Phone(String),
        Store { id: u16, address: Address },
    }

    #[derive(Event, Debug, Clone, PartialEq)]
    #[event(name = "everything", version = 3)]
    pub struct Everything {
        pub u8: u8,
        pub u16: u16,
        pub u32: u32,
        pub u64: u64,
        pub u128: u128,
        pub i8: i8,
        pub i16: i16,
        pub i32: i32,
        pub i64: i64,
        pub i128: i128,
        pub f32: f32,
        pub f64: f64,
        pub flag: bool,
        pub letter: char,
        pub text: String,
        pub list: Vec<String>,
        pub maybe: Option<u64>,
        pub nothing: Option<String>,
        pub boxed: Box<u32>,
        pub array: [u8; 4],
        pub pair: (u32, String),
        pub nested: Address,
        pub nested_list: Vec<Address>,
        pub channel: Channel,
        pub channels: Vec<Channel>,
        pub map: BTreeMap<String, u64>,
        pub hash: HashMap<u32, String>,
        pub set: BTreeSet<i64>,
        pub id: varvedb::uuid::Uuid,
    }

    #[derive(Default)]
    pub struct Sink {
        pub seen: Vec<Everything>,
    }

    #[aggregate]
    impl Sink {
        fn everything(&mut self, e: &ArchivedEverything) {
            // Deserialize the archived event back into an owned value to compare it whole.
            self.seen.push(rkyv::deserialize::<Everything, rkyv::rancor::Error>(e).unwrap());
        }
    }

    fn sample(i: u8) -> Everything {
        let address = Address { street: format!("{i} Main St"), zip: Some(12345) };
        Everything {
            u8: u8::MAX - i,
            u16: u16::MAX,
            u32: u32::MAX - 7,
            u64: u64::MAX,
            u128: u128::MAX - 1,
            i8: i8::MIN,
            i16: -300,
            i32: i32::MIN + 1,
            i64: -1,
            i128: i128::MIN,
            f32: 1.5,
            f64: -0.000_001,
            flag: true,
            letter: 'ß',
            text: "héllo wörld".repeat(usize::from(i) + 1),
            list: vec!["a".into(), String::new(), "c".repeat(300)],
            maybe: Some(7),
            nothing: None,
            boxed: Box::new(9),
            array: [1, 2, 3, i],
            pair: (5, "five".into()),
            nested: address.clone(),
            nested_list: vec![address.clone(), Address { street: String::new(), zip: None }],
            channel: Channel::Store { id: 4, address },
            channels: vec![Channel::Web, Channel::Phone("+1".into())],
            map: [("x".to_owned(), 1), ("y".to_owned(), 2)].into(),
            hash: [(1, "one".to_owned()), (2, "two".to_owned())].into(),
            set: [-1, 0, 1].into(),
            id: varvedb::uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        }
    }

    #[test]
    fn every_supported_field_type_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let sink = db.stream::<Sink>(varvedb::uuid::Uuid::new_v4());
        let values: Vec<Everything> = (0..3).map(sample).collect();
        for (i, v) in values.iter().enumerate() {
            sink.append(ExpectedVersion::Exact(i as u32), v.clone()).unwrap();
        }
        let loaded = sink.load().unwrap();
        assert_eq!(loaded.version(), 3);
        assert_eq!(loaded.state().seen, values);
        // The archived form reads in place with native accessors.
        let view = db.begin_read().unwrap();
        let first = sink.read(&view, 1).unwrap().next().unwrap().unwrap();
        let a = first.get::<Everything>().unwrap().unwrap();
        assert_eq!(
            (a.u64.to_native(), a.text.as_str(), a.letter.to_native()),
            (u64::MAX, "héllo wörld", 'ß')
        );
        assert!(matches!(&a.channel, ArchivedChannel::Store { id, .. } if id.to_native() == 4));
        assert_eq!(first.recorded().schema_version(), 3);
        assert_eq!(first.recorded().type_tag(), "everything");
    }
}

mod enums_generics_and_paths {
    use varvedb::{Event, ExpectedVersion, Pending, Varve, aggregate};

    /// An enum as an event: each variant is one kind of change.
    #[derive(Event, Debug, Clone, PartialEq)]
    #[event(name = "light")]
    pub enum Light {
        On,
        Off,
        Dimmed(u8),
        Colour { r: u8, g: u8, b: u8 },
    }

    /// A generic event: the fingerprint includes the parameter's.
    #[derive(Event, Debug, Clone, PartialEq)]
    #[event(name = "reading")]
    pub struct Reading<T> {
        pub value: T,
    }

    /// `#[event(crate = ..)]` for code that reaches varvedb through another path.
    mod reexport {
        pub use varvedb as store;
    }
    #[derive(Event, Debug)]
    #[event(crate = reexport::store, name = "relabelled")]
    pub struct Relabelled {
        pub label: String,
    }

    #[derive(Default, Debug, PartialEq)]
    pub struct Lamp {
        pub on: bool,
        pub level: u8,
        pub rgb: (u8, u8, u8),
        pub readings: Vec<u32>,
        pub label: String,
    }

    #[aggregate(name = "lamp")]
    impl Lamp {
        fn light(&mut self, e: &ArchivedLight) {
            match e {
                ArchivedLight::On => self.on = true,
                ArchivedLight::Off => self.on = false,
                ArchivedLight::Dimmed(l) => self.level = *l,
                ArchivedLight::Colour { r, g, b } => self.rgb = (*r, *g, *b),
            }
        }
        fn reading(&mut self, e: &ArchivedReading<u32>) {
            self.readings.push(e.value.to_native());
        }
        fn relabelled(&mut self, e: &ArchivedRelabelled) {
            self.label = e.label.to_string();
        }
    }

    #[test]
    fn enum_generic_and_crate_path_events_fold() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let lamp = db.stream::<Lamp>(5u128);
        lamp.append_all(
            ExpectedVersion::NoStream,
            [
                Pending::from(Light::On),
                Pending::from(Light::Dimmed(40)),
                Pending::from(Reading { value: 17u32 }),
                Pending::from(Light::Colour { r: 1, g: 2, b: 3 }),
                Pending::from(Relabelled { label: "hall".into() }),
                Pending::from(Light::Off),
            ],
        )
        .unwrap();
        let loaded = lamp.load().unwrap();
        assert_eq!(
            loaded.into_state(),
            Lamp { on: false, level: 40, rgb: (1, 2, 3), readings: vec![17], label: "hall".into() }
        );
        assert_eq!(db.begin_read().unwrap().stream_kind(5u128).unwrap(), Some("lamp"));
    }

    #[test]
    fn fingerprints_follow_shape_not_spelling() {
        assert_ne!(
            <Reading<u32> as varvedb::Event>::FINGERPRINT,
            <Reading<u64> as varvedb::Event>::FINGERPRINT
        );
        assert_eq!(<Reading<u32> as varvedb::Event>::NAME, "reading");
        assert_eq!(<Light as varvedb::Event>::VERSION, 1);
        assert_eq!(<Relabelled as varvedb::Event>::NAME, "relabelled");
    }
}

mod schema_safety {
    use varvedb::{Error, Event, ExpectedVersion, Varve, aggregate};

    /// Build 1 of an event.
    #[derive(Event)]
    #[event(name = "account.opened")]
    pub struct OpenedV1 {
        pub owner: String,
    }

    /// "Build 2": the same tag and version, but a field changed type.
    #[derive(Event)]
    #[event(name = "account.opened")]
    pub struct OpenedChanged {
        pub owner: u64,
    }

    /// The proper evolution: a new version.
    #[derive(Event)]
    #[event(name = "account.opened", version = 2)]
    pub struct OpenedV2 {
        pub owner: u64,
    }

    #[derive(Default, Debug)]
    pub struct Before {
        pub owner: String,
    }
    #[aggregate(name = "account")]
    impl Before {
        fn opened(&mut self, e: &ArchivedOpenedV1) {
            self.owner = e.owner.to_string();
        }
    }

    #[derive(Default, Debug)]
    pub struct After {
        pub owner: u64,
    }
    #[aggregate(name = "account")]
    impl After {
        fn opened(&mut self, e: &ArchivedOpenedChanged) {
            self.owner = e.owner.to_native();
        }
    }

    #[derive(Default)]
    pub struct Evolved {
        pub owners: Vec<String>,
    }
    #[aggregate(name = "account")]
    impl Evolved {
        fn v1(&mut self, e: &ArchivedOpenedV1) {
            self.owners.push(e.owner.to_string());
        }
        fn v2(&mut self, e: &ArchivedOpenedV2) {
            self.owners.push(e.owner.to_native().to_string());
        }
    }

    #[test]
    fn a_changed_field_type_under_the_same_tag_is_a_schema_mismatch_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        db.stream::<Before>(1u128)
            .append(ExpectedVersion::NoStream, OpenedV1 { owner: "ana".into() })
            .unwrap();
        let file_before = std::fs::read(dir.path().join("data.mdb")).unwrap();

        let err = db
            .stream::<After>(2u128)
            .append(ExpectedVersion::NoStream, OpenedChanged { owner: 7 })
            .unwrap_err();
        let Error::SchemaMismatch { event, version, stored, found } = &err else { panic!("{err:?}") };
        assert_eq!((event.as_str(), *version), ("account.opened", 1));
        assert_eq!(*stored, <OpenedV1 as Event>::FINGERPRINT);
        assert_eq!(*found, <OpenedChanged as Event>::FINGERPRINT);
        let msg = err.to_string();
        assert!(msg.contains("account.opened") && msg.contains(&format!("{stored:#018x}")), "{msg}");

        // Reading old events with the changed type is refused too, never a misread.
        let err = db.stream::<After>(1u128).load().unwrap_err();
        assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
        assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 1);
        drop(db);
        assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), file_before, "store untouched");
    }

    #[test]
    fn a_new_version_coexists_with_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let s = db.stream::<Evolved>(1u128);
        db.stream::<Before>(1u128)
            .append(ExpectedVersion::NoStream, OpenedV1 { owner: "ana".into() })
            .unwrap();
        s.append(ExpectedVersion::Exact(1), OpenedV2 { owner: 42 }).unwrap();
        assert_eq!(s.load().unwrap().state().owners, ["ana", "42"]);
        // The old-only aggregate meets an event version it cannot read: a typed error naming
        // both versions.
        let err = db.stream::<Before>(1u128).load().unwrap_err();
        assert!(matches!(err, Error::NoUpcastPath { seq: 2, stored: 2, handled: 1, .. }), "{err:?}");
    }
}

mod kinds_and_commands {
    use std::sync::{Arc, Barrier};

    use varvedb::testing::Scenario;
    use varvedb::{Error, Event, ExecuteError, ExpectedVersion, Handle, Pending, Varve, aggregate};

    #[derive(Event, Debug)]
    pub struct Registered {
        pub name: String,
    }

    #[derive(Default)]
    pub struct User {
        pub name: String,
    }
    #[aggregate]
    impl User {
        fn registered(&mut self, e: &ArchivedRegistered) {
            self.name = e.name.to_string();
        }
    }

    #[derive(Event, Debug)]
    pub struct Deposited {
        pub cents: u64,
    }
    #[derive(Event, Debug)]
    pub struct Withdrawn {
        pub cents: u64,
    }

    #[derive(Default, Debug)]
    pub struct Account {
        pub balance: u64,
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

    pub struct Withdraw(pub u64);

    #[derive(Debug, PartialEq)]
    pub enum Refused {
        Insufficient { balance: u64 },
    }
    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Handle<Withdraw> for Account {
        type Error = Refused;
        fn handle(&self, cmd: &Withdraw) -> Result<Vec<Pending<Self>>, Refused> {
            if cmd.0 > self.balance {
                return Err(Refused::Insufficient { balance: self.balance });
            }
            Ok(vec![Withdrawn { cents: cmd.0 }.into()])
        }
    }

    #[test]
    fn a_stream_id_remembers_its_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        db.stream::<User>(1u128)
            .append(ExpectedVersion::NoStream, Registered { name: "ana".into() })
            .unwrap();
        let as_account = db.stream::<Account>(1u128);
        let err = as_account.append(ExpectedVersion::Auto, Deposited { cents: 1 }).unwrap_err();
        assert!(
            matches!(&err, Error::StreamKindMismatch { expected, actual: Some(actual), .. } if expected == "Account" && actual == "User"),
            "{err:?}"
        );
        assert!(matches!(as_account.load(), Err(Error::StreamKindMismatch { .. })));
        let view = db.begin_read().unwrap();
        assert!(matches!(as_account.read(&view, 1), Err(Error::StreamKindMismatch { .. })));
        assert_eq!(db.stream::<User>(1u128).load().unwrap().state().name, "ana");
    }

    #[test]
    fn save_refuses_a_state_loaded_from_another_stream() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let loaded = db.stream::<Account>(1u128).load().unwrap();
        let err = db.stream::<Account>(2u128).save(&loaded, [Deposited { cents: 1 }]).unwrap_err();
        assert!(matches!(err, Error::StreamMismatch { .. }), "{err:?}");
    }

    #[test]
    fn execute_keeps_domain_errors_apart_and_retries_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let account = db.stream::<Account>(9u128);
        account.append(ExpectedVersion::NoStream, Deposited { cents: 10_000 }).unwrap();

        let refused = account.execute(&Withdraw(50_000)).unwrap_err();
        assert!(matches!(refused, ExecuteError::Rejected(Refused::Insufficient { balance: 10_000 })));

        // Eight threads withdraw 10 cents 25 times each, racing: retries resolve the conflicts
        // and every withdrawal lands exactly once.
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (account, barrier) = (account.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut retried = 0;
                    for _ in 0..25 {
                        let done = account.execute_with_retries(&Withdraw(10), 1_000).unwrap();
                        retried += done.attempts - 1;
                    }
                    retried
                })
            })
            .collect();
        let retried: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let loaded = account.load().unwrap();
        assert_eq!((loaded.state().balance, loaded.version()), (10_000 - 8 * 25 * 10, 1 + 200));
        eprintln!("{retried} retries after conflicts");

        // With no retries allowed, a conflict surfaces as a storage error.
        let stale = account.load().unwrap();
        account.save(&stale, [Deposited { cents: 1 }]).unwrap();
        let err = account.save(&stale, [Deposited { cents: 1 }]).unwrap_err();
        assert!(matches!(err, Error::ConcurrencyConflict { .. }));
    }

    #[test]
    fn given_when_then() {
        let state = Scenario::<Account>::given([Deposited { cents: 100 }])
            .when(&Withdraw(40))
            .then([Withdrawn { cents: 40 }]);
        assert_eq!((state.state().balance, state.version()), (60, 2));
        let err = Scenario::<Account>::empty().when(&Withdraw(1)).then_error();
        assert_eq!(err, Refused::Insufficient { balance: 0 });
    }

    #[test]
    #[should_panic(expected = "the command decided other events")]
    fn given_when_then_reports_other_events() {
        let _ = Scenario::<Account>::given([Deposited { cents: 100 }])
            .when(&Withdraw(40))
            .then([Withdrawn { cents: 41 }]);
    }

    /// Decides a withdrawal carrying an id and metadata: it differs from a plain one only there.
    pub struct WithdrawTraced(pub u64);

    impl Handle<WithdrawTraced> for Account {
        type Error = Refused;
        fn handle(&self, cmd: &WithdrawTraced) -> Result<Vec<Pending<Self>>, Refused> {
            Ok(vec![Pending::from(Withdrawn { cents: cmd.0 }).with_id(0x14).with_metadata(vec![1, 2])])
        }
    }

    #[test]
    #[should_panic(expected = "the command decided other events (first difference at event 0)\n  \
                               expected: Withdrawn { cents: 41 }\n  \
                               decided:  Withdrawn { cents: 40 }")]
    fn a_failed_then_prints_the_events_with_debug() {
        let _ = Scenario::<Account>::given([Deposited { cents: 100 }])
            .when(&Withdraw(40))
            .then([Withdrawn { cents: 41 }]);
    }

    #[test]
    #[should_panic(expected = "expected: Withdrawn { cents: 40 }\n  \
                               decided:  Withdrawn { cents: 40 } with metadata [01, 02] with id 0x14")]
    fn events_that_differ_only_in_metadata_and_id_print_differently() {
        let _ = Scenario::<Account>::given([Deposited { cents: 100 }])
            .when(&WithdrawTraced(40))
            .then([Withdrawn { cents: 40 }]);
    }

    #[test]
    #[should_panic(expected = "expected: nothing\n  decided:  Withdrawn { cents: 40 }")]
    fn a_missing_event_prints_as_nothing() {
        let _ = Scenario::<Account>::given([Deposited { cents: 100 }]).when(&Withdraw(40)).then_nothing();
    }

    mod same_debug_other_bytes {
        use varvedb::testing::Scenario;
        use varvedb::{Event, Handle, Pending, aggregate};

        #[derive(Event, Debug)]
        pub struct Measured {
            pub value: f64,
        }
        #[derive(Default)]
        pub struct Probe {
            pub last: f64,
        }
        #[aggregate]
        impl Probe {
            fn measured(&mut self, e: &ArchivedMeasured) {
                self.last = e.value.to_native();
            }
        }
        pub struct Measure;
        impl Handle<Measure> for Probe {
            type Error = String;
            fn handle(&self, _: &Measure) -> Result<Vec<Pending<Self>>, String> {
                Ok(vec![Measured { value: f64::NAN }.into()])
            }
        }

        /// Two NaNs with other bits print the same `Debug`: the message falls back to bytes.
        #[test]
        #[should_panic(
            expected = "expected: Measured { value: NaN } [Measured v1, payload [00, 00, 00, 00, 00, 00, f8, ff]]\n  \
                                   decided:  Measured { value: NaN } [Measured v1, payload [00, 00, 00, 00, 00, 00, f8, 7f]]"
        )]
        fn equal_debug_output_of_different_events_shows_the_bytes() {
            let _ = Scenario::<Probe>::empty().when(&Measure).then([Measured { value: -f64::NAN }]);
        }
    }

    mod world {
        use varvedb::testing::World;
        use varvedb::{ExecuteError, Stream, Transaction};

        use super::{Account, Deposited, Withdrawn};

        fn transfer(
            tx: &mut Transaction<'_>,
            from: &Stream<Account>,
            to: &Stream<Account>,
            cents: u64,
        ) -> Result<u64, ExecuteError<String>> {
            let (a, b) = (tx.load(from)?, tx.load(to)?);
            if a.state().balance < cents {
                return Err(ExecuteError::Rejected(format!("only {} available", a.state().balance)));
            }
            tx.save(from, &a, [Withdrawn { cents }])?;
            tx.save(to, &b, [Deposited { cents }])?;
            Ok(a.state().balance - cents)
        }

        #[test]
        fn a_transfer_scenario_over_two_streams() {
            let world = World::new();
            let (ana, bo) = (world.stream::<Account>(1u128), world.stream::<Account>(2u128));
            world.given(&ana, [Deposited { cents: 100 }]).given(&bo, [Deposited { cents: 5 }]);
            let left = world
                .when(|tx| transfer(tx, &ana, &bo, 30))
                .then(&ana, [Withdrawn { cents: 30 }])
                .then(&bo, [Deposited { cents: 30 }])
                .commit();
            assert_eq!(left, 70);
            assert_eq!((ana.load().unwrap().state().balance, bo.load().unwrap().state().balance), (70, 35));
            assert_eq!(world.when(|tx| transfer(tx, &bo, &ana, 50)).then_error(), "only 35 available");
            // Nothing saved, nothing expected.
            world
                .when(|tx| transfer(tx, &ana, &bo, 0).map(drop))
                .then(&ana, [Withdrawn { cents: 0 }])
                .then(&bo, [Deposited { cents: 0 }])
                .commit();
        }

        #[test]
        #[should_panic(
            expected = "the command saved other events to stream 00000000-0000-0000-0000-000000000002 (first difference at event 0)\n  \
                                   expected: Deposited { cents: 31 }\n  \
                                   decided:  Deposited { cents: 30 }"
        )]
        fn a_wrong_event_on_the_second_stream_names_the_stream() {
            let world = World::new();
            let (ana, bo) = (world.stream::<Account>(1u128), world.stream::<Account>(2u128));
            world.given(&ana, [Deposited { cents: 100 }]);
            let _ = world
                .when(|tx| transfer(tx, &ana, &bo, 30))
                .then(&ana, [Withdrawn { cents: 30 }])
                .then(&bo, [Deposited { cents: 31 }]);
        }

        #[test]
        #[should_panic(
            expected = "the command also saved 1 event(s) to stream 00000000-0000-0000-0000-000000000002, which no `then` checked"
        )]
        fn an_unchecked_save_fails_the_commit() {
            let world = World::new();
            let (ana, bo) = (world.stream::<Account>(1u128), world.stream::<Account>(2u128));
            world.given(&ana, [Deposited { cents: 100 }]);
            world.when(|tx| transfer(tx, &ana, &bo, 30)).then(&ana, [Withdrawn { cents: 30 }]).commit();
        }
    }
}

mod fingerprints {
    use varvedb::{Event, EventData, Schema};

    macro_rules! pair {
        ($modname:ident, { $($a:tt)* }, { $($b:tt)* }) => {
            mod $modname {
                pub mod a {
                    #[allow(unused_imports)]
                    use super::super::*;
                    $($a)*
                }
                pub mod b {
                    #[allow(unused_imports)]
                    use super::super::*;
                    $($b)*
                }
            }
        };
    }

    pair!(
        reordered,
        {
            #[derive(Event)]
            pub struct E {
                pub x: u32,
                pub y: u64,
            }
        },
        {
            #[derive(Event)]
            pub struct E {
                pub y: u64,
                pub x: u32,
            }
        }
    );
    pair!(
        renamed_field,
        {
            #[derive(Event)]
            pub struct E {
                pub x: u32,
            }
        },
        {
            #[derive(Event)]
            pub struct E {
                pub z: u32,
            }
        }
    );
    pair!(
        optional,
        {
            #[derive(Event)]
            pub struct E {
                pub x: u32,
            }
        },
        {
            #[derive(Event)]
            pub struct E {
                pub x: Option<u32>,
            }
        }
    );
    pair!(
        nested,
        {
            #[derive(EventData)]
            pub struct N {
                pub a: u8,
            }
            #[derive(Event)]
            pub struct E {
                pub n: N,
            }
        },
        {
            #[derive(EventData)]
            pub struct N {
                pub a: u16,
            }
            #[derive(Event)]
            pub struct E {
                pub n: N,
            }
        }
    );
    pair!(
        variant_order,
        {
            #[derive(Event)]
            pub enum E {
                A,
                B,
            }
        },
        {
            #[derive(Event)]
            pub enum E {
                B,
                A,
            }
        }
    );
    pair!(
        variant_added,
        {
            #[derive(Event)]
            pub enum E {
                A,
                B,
            }
        },
        {
            #[derive(Event)]
            pub enum E {
                A,
                B,
                C,
            }
        }
    );
    pair!(
        tuple_vs_named,
        {
            #[derive(Event)]
            pub struct E(pub u32);
        },
        {
            #[derive(Event)]
            pub struct E {
                pub x: u32,
            }
        }
    );

    /// Same shape, different spelling: equal fingerprints.
    pub type Text = String;
    pair!(
        spelling,
        {
            #[derive(Event)]
            pub struct E {
                pub s: String,
                pub v: Vec<u8>,
            }
        },
        {
            #[derive(Event)]
            pub struct E {
                pub s: super::super::Text,
                pub v: ::std::vec::Vec<::core::primitive::u8>,
            }
        }
    );
    pair!(
        renamed_type,
        {
            #[derive(Event)]
            pub struct Before {
                pub x: u32,
            }
        },
        {
            #[derive(Event)]
            pub struct After {
                pub x: u32,
            }
        }
    );

    #[test]
    fn every_change_of_shape_changes_the_fingerprint() {
        let pairs = [
            (
                "reordered fields",
                <reordered::a::E as Schema>::FINGERPRINT,
                <reordered::b::E as Schema>::FINGERPRINT,
            ),
            (
                "renamed field",
                <renamed_field::a::E as Schema>::FINGERPRINT,
                <renamed_field::b::E as Schema>::FINGERPRINT,
            ),
            (
                "T vs Option<T>",
                <optional::a::E as Schema>::FINGERPRINT,
                <optional::b::E as Schema>::FINGERPRINT,
            ),
            (
                "nested field type",
                <nested::a::E as Schema>::FINGERPRINT,
                <nested::b::E as Schema>::FINGERPRINT,
            ),
            (
                "variant order",
                <variant_order::a::E as Schema>::FINGERPRINT,
                <variant_order::b::E as Schema>::FINGERPRINT,
            ),
            (
                "added variant",
                <variant_added::a::E as Schema>::FINGERPRINT,
                <variant_added::b::E as Schema>::FINGERPRINT,
            ),
            (
                "tuple vs named",
                <tuple_vs_named::a::E as Schema>::FINGERPRINT,
                <tuple_vs_named::b::E as Schema>::FINGERPRINT,
            ),
        ];
        for (what, a, b) in pairs {
            assert_ne!(a, b, "{what} kept the fingerprint");
        }
    }

    #[test]
    fn spelling_and_type_names_do_not_change_the_fingerprint() {
        assert_eq!(<spelling::a::E as Event>::FINGERPRINT, <spelling::b::E as Event>::FINGERPRINT);
        assert_eq!(
            <renamed_type::a::Before as Schema>::FINGERPRINT,
            <renamed_type::b::After as Schema>::FINGERPRINT,
            "renaming the Rust type keeps the stored shape"
        );
    }
}

mod commands_and_registry_edges {
    use varvedb::{Error, Event, ExecuteError, ExpectedVersion, Handle, Pending, Varve, aggregate};

    #[derive(Event)]
    pub struct Ticked {
        pub n: u32,
    }

    #[derive(Default, Debug)]
    pub struct Clock {
        pub ticks: u32,
    }
    #[aggregate]
    impl Clock {
        fn ticked(&mut self, _e: &ArchivedTicked) {
            self.ticks += 1;
        }
    }

    /// A command whose handler lets another writer in between load and save, every time.
    pub struct Racy {
        pub db: Varve,
        pub stream: u128,
    }
    impl Handle<Racy> for Clock {
        type Error = String;
        fn handle(&self, cmd: &Racy) -> Result<Vec<Pending<Self>>, String> {
            cmd.db
                .stream::<Clock>(cmd.stream)
                .append(ExpectedVersion::Auto, Ticked { n: 0 })
                .map_err(|e| e.to_string())?;
            Ok(vec![Ticked { n: 1 }.into()])
        }
    }

    pub struct Refuse;
    impl Handle<Refuse> for Clock {
        type Error = &'static str;
        fn handle(&self, _: &Refuse) -> Result<Vec<Pending<Self>>, &'static str> {
            Err("no")
        }
    }

    #[test]
    fn execute_gives_up_after_its_retries_and_a_rejection_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let clock = db.stream::<Clock>(1u128);
        let err = clock.execute_with_retries(&Racy { db: db.clone(), stream: 1 }, 2).unwrap_err();
        assert!(
            matches!(
                err,
                ExecuteError::RetriesExhausted { attempts: 3, last: Error::ConcurrencyConflict { .. } }
            ),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("gave up after 3 attempts"), "{err}");
        // Three attempts, each let one outside append in, none of the command's own events.
        assert_eq!(clock.load().unwrap().version(), 3);

        let before = db.begin_read().unwrap().last_seq().unwrap();
        assert!(matches!(clock.execute(&Refuse), Err(ExecuteError::Rejected("no"))));
        assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), before);
    }

    mod other_shape {
        #[derive(varvedb::Event)]
        #[event(name = "Ticked")]
        pub struct Ticked {
            pub n: String,
        }
    }

    #[test]
    fn a_schema_mismatch_inside_one_batch_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Varve::open(dir.path()).unwrap();
            // Both shapes in one raw batch: the second is refused, so the whole batch is.
            let mut batch = varvedb::WriteBatch::new();
            batch.append(
                1u128,
                ExpectedVersion::Auto,
                [
                    varvedb::NewEvent::from_event(&Ticked { n: 1 }).unwrap(),
                    varvedb::NewEvent::from_event(&other_shape::Ticked { n: "x".into() }).unwrap(),
                ],
            );
            assert!(matches!(db.write(batch), Err(Error::SchemaMismatch { .. })));
            assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 0, "nothing of the batch was written");
            assert_eq!(
                db.begin_read().unwrap().schema_fingerprint("Ticked", 1).unwrap(),
                None,
                "nor registered"
            );
            db.stream::<Clock>(2u128).append(ExpectedVersion::NoStream, Ticked { n: 1 }).unwrap();
        }
        let db = Varve::open(dir.path()).unwrap();
        assert_eq!(
            db.begin_read().unwrap().schema_fingerprint("Ticked", 1).unwrap(),
            Some(<Ticked as Event>::FINGERPRINT),
            "the registry survives a reopen"
        );
        let raw = varvedb::NewEvent::from_event(&other_shape::Ticked { n: "x".into() }).unwrap();
        assert!(matches!(db.append(3u128, ExpectedVersion::Auto, [raw]), Err(Error::SchemaMismatch { .. })));
    }
}
