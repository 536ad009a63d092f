//! Read replicas without a network: a leader's log exported and imported as bytes, the
//! replica's refusals, and its live subscriptions.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use varvedb::{
    Error, Event, ExpectedVersion, NewEvent, Options, Processor, ReplicatedEvent, Varve, aggregate,
};

#[path = "support/totals.rs"]
mod totals;

/// A leader with inline and blob payloads, event ids, metadata, a typed-like schema tag and
/// several streams.
fn leader(dir: &std::path::Path, events: u64) -> Varve {
    let db = Varve::open(dir).unwrap();
    for i in 1..=events {
        let payload = if i % 10 == 0 { vec![i as u8; 3000] } else { i.to_le_bytes().to_vec() };
        let mut e = NewEvent::new(if i % 3 == 0 { "fizz" } else { "plain" }, payload)
            .with_metadata(format!("m{i}").into_bytes());
        if i % 4 == 0 {
            e = e.with_id(u128::from(i) << 64 | 0xabc);
        }
        db.append(u128::from(i % 5), ExpectedVersion::Auto, [e]).unwrap();
    }
    db
}

/// Sends `events` through their bytes, as a network would carry them.
fn over_the_wire(events: &[ReplicatedEvent]) -> Vec<ReplicatedEvent> {
    events
        .iter()
        .map(|e| {
            ReplicatedEvent::from_parts(
                e.seq(),
                e.record().to_vec(),
                e.blob().map(<[u8]>::to_vec),
                e.stream_kind(),
            )
            .unwrap()
        })
        .collect()
}

fn assert_same_log(a: &Varve, b: &Varve) {
    let (left, right) =
        (a.export_replicated(0, usize::MAX).unwrap(), b.export_replicated(0, usize::MAX).unwrap());
    assert_eq!(left.len(), right.len());
    assert!(left == right, "the logs differ");
    let (ra, rb) = (
        a.begin_read().unwrap().check_integrity().unwrap(),
        b.begin_read().unwrap().check_integrity().unwrap(),
    );
    assert_eq!((ra.events, ra.streams, ra.blob_references), (rb.events, rb.streams, rb.blob_references));
}

#[test]
fn a_replica_holds_the_leaders_log_byte_for_byte() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = leader(l.path(), 300);
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    let mut after = 0;
    loop {
        let batch = leader.export_replicated(after, 64).unwrap();
        if batch.is_empty() {
            break;
        }
        after = replica.import_replicated(&over_the_wire(&batch)).unwrap();
    }
    assert_eq!(after, 300);
    assert_same_log(&leader, &replica);
    // Reads see the leader's fields, timestamps and ids included.
    let (lv, rv) = (leader.begin_read().unwrap(), replica.begin_read().unwrap());
    for seq in [1, 4, 10, 300] {
        assert_eq!(lv.event(seq).unwrap(), rv.event(seq).unwrap());
    }
    assert_eq!(rv.stream_version(3u128).unwrap(), lv.stream_version(3u128).unwrap());
}

#[test]
fn a_replica_refuses_local_appends_and_out_of_order_events() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = leader(l.path(), 20);
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    let events = leader.export_replicated(0, 20).unwrap();

    let local = replica.append(1u128, ExpectedVersion::Auto, [NewEvent::new("x", vec![])]);
    assert!(matches!(local, Err(Error::ReadOnlyReplica)), "{local:?}");
    assert!(matches!(leader.import_replicated(&events), Err(Error::NotAReplica)));

    // A gap, then a repeat: refused, and nothing of the request is written.
    let gap = replica.import_replicated(&events[1..3]);
    assert!(matches!(gap, Err(Error::ReplicaGap { expected: 1, found: 2 })), "{gap:?}");
    replica.import_replicated(&events[..10]).unwrap();
    let again = replica.import_replicated(&events[5..12]);
    assert!(matches!(again, Err(Error::ReplicaGap { expected: 11, found: 6 })), "{again:?}");
    let torn = [events[10].clone(), events[12].clone()];
    assert!(matches!(replica.import_replicated(&torn), Err(Error::ReplicaGap { expected: 12, found: 13 })));
    assert_eq!(replica.begin_read().unwrap().last_seq().unwrap(), 10);
    replica.import_replicated(&events[10..]).unwrap();
    assert_same_log(&leader, &replica);
}

#[test]
fn damaged_or_foreign_events_are_refused() {
    let (l, r, o) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = leader(l.path(), 10);
    let events = leader.export_replicated(0, 10).unwrap();

    let mut flipped = events[0].record().to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        ReplicatedEvent::from_parts(1, flipped, None, None),
        Err(Error::ReplicaMismatch { seq: 1, .. })
    ));
    // A record moved to another seq fails its checksum, which covers the seq.
    assert!(matches!(
        ReplicatedEvent::from_parts(2, events[0].record().to_vec(), None, None),
        Err(Error::ReplicaMismatch { seq: 2, .. })
    ));
    // Seq 10 keeps its payload in a blob.
    let blob = events[9].blob().expect("a blob payload").to_vec();
    assert!(ReplicatedEvent::from_parts(10, events[9].record().to_vec(), None, None).is_err());
    let mut other = blob.clone();
    other[0] ^= 1;
    assert!(ReplicatedEvent::from_parts(10, events[9].record().to_vec(), Some(other), None).is_err());
    assert!(ReplicatedEvent::from_parts(1, events[0].record().to_vec(), Some(blob), None).is_err());

    // Another leader's log does not continue this replica's: its seqs start over.
    let other_leader = Varve::open(o.path()).unwrap();
    other_leader.append(1u128, ExpectedVersion::Auto, [NewEvent::new("x", vec![1])]).unwrap();
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    replica.import_replicated(&events[..1]).unwrap();
    let mut foreign = other_leader.export_replicated(0, 1).unwrap();
    foreign.extend(other_leader.export_replicated(0, 1).unwrap());
    assert!(replica.import_replicated(&foreign[..1]).is_err());
    assert_eq!(replica.begin_read().unwrap().last_seq().unwrap(), 1);
}

#[test]
fn subscriptions_on_a_replica_see_imports() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = leader(l.path(), 50);
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Long poll: only the import's wake-up can deliver the events in time.
        let mut sub = replica.subscribe(0).poll_interval(Duration::from_hours(1));
        let events = leader.export_replicated(0, 50).unwrap();
        let db = replica.clone();
        tokio::task::spawn_blocking(move || {
            for chunk in events.chunks(7) {
                db.import_replicated(chunk).unwrap();
            }
        });
        for seq in 1..=50 {
            let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(e.seq, seq);
        }
    });
}

#[test]
fn projections_and_processors_on_a_replica_see_what_they_see_on_the_leader() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(l.path()).unwrap();
    for n in 0..400u64 {
        leader.append(u128::from(n % 9), ExpectedVersion::Auto, [totals::event(n)]).unwrap();
    }
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    replica.import_replicated(&leader.export_replicated(0, 1_000).unwrap()).unwrap();
    for db in [&leader, &replica] {
        assert_eq!(totals::projection(64).catch_up(db).unwrap(), 400);
    }
    let model = totals::stored(&leader.begin_read().unwrap());
    assert!(!model.is_empty());
    assert_eq!(totals::fold(&replica.begin_read().unwrap(), 400), model);
    assert_eq!(totals::stored(&replica.begin_read().unwrap()), model);

    let counts: Vec<u64> = [&leader, &replica]
        .into_iter()
        .map(|db| {
            let seen = Arc::new(AtomicU64::new(0));
            let counter = Arc::clone(&seen);
            let mut p = Processor::new("count").on::<totals::OrderPlaced>(move |_e, meta| {
                counter.fetch_add(meta.seq(), Ordering::Relaxed);
                Ok(())
            });
            p.catch_up(db).unwrap();
            seen.load(Ordering::Relaxed)
        })
        .collect();
    assert!(counts[0] > 0);
    assert_eq!(counts[0], counts[1]);
}

#[derive(Event, Debug)]
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

#[test]
fn typed_streams_load_on_a_replica_with_their_kind() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(l.path()).unwrap();
    for i in 1..=5u64 {
        leader.stream::<Account>(9u128).append(ExpectedVersion::Auto, Deposited { cents: i }).unwrap();
    }
    leader.append(10u128, ExpectedVersion::Auto, [NewEvent::new("untyped", vec![1])]).unwrap();
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    replica.import_replicated(&over_the_wire(&leader.export_replicated(0, 100).unwrap())).unwrap();
    let view = replica.begin_read().unwrap();
    assert_eq!(view.stream_kind(9u128).unwrap(), leader.begin_read().unwrap().stream_kind(9u128).unwrap());
    assert!(view.stream_kind(9u128).unwrap().is_some());
    assert_eq!(view.stream_kind(10u128).unwrap(), None);
    let account = replica.stream::<Account>(9u128).load().unwrap();
    assert_eq!((account.state().balance, account.version()), (15, 5));
    // The replica refuses a typed append as any other.
    let refused = replica.stream::<Account>(9u128).append(ExpectedVersion::Auto, Deposited { cents: 1 });
    assert!(matches!(refused, Err(Error::ReadOnlyReplica)), "{refused:?}");
}

#[test]
fn an_event_claiming_another_kind_for_its_stream_is_refused() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(l.path()).unwrap();
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    let account = leader.stream::<Account>(11u128);
    account.append(ExpectedVersion::Auto, Deposited { cents: 3 }).unwrap();
    account.append(ExpectedVersion::Auto, Deposited { cents: 4 }).unwrap();
    let events = over_the_wire(&leader.export_replicated(0, 10).unwrap());
    replica.import_replicated(&events[..1]).unwrap();

    let foreign = ReplicatedEvent::from_parts(2, events[1].record().to_vec(), None, Some("Other")).unwrap();
    let refused = replica.import_replicated(&[foreign]);
    assert!(matches!(refused, Err(Error::ReplicaMismatch { seq: 2, .. })), "{refused:?}");
    assert_eq!(replica.begin_read().unwrap().last_seq().unwrap(), 1);
    replica.import_replicated(&events[1..]).unwrap();
    assert_eq!(replica.stream::<Account>(11u128).load().unwrap().state().balance, 7);
}
