//! Read replicas without a network: a leader's log exported and imported as bytes, the
//! replica's refusals, and its live subscriptions.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use varvedb::{
    Error, Event, ExpectedVersion, MasterKey, NewEvent, Options, Processor, ReplicatedEvent, ReplicatedShred,
    Varve, aggregate,
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
            .and_then(|r| r.with_key_material(e.stream_key().map(<[u8]>::to_vec), e.header_mac().copied()))
            .and_then(|r| {
                r.with_schema_entries(e.schema_entries().map(|(k, v)| (k.to_vec(), v.to_vec())).collect())
            })
            .unwrap()
        })
        .collect()
}

/// Exports the leader's log after the replica's last seq and imports it in chunks of `chunk`.
fn sync(leader: &Varve, replica: &Varve, chunk: usize) -> u64 {
    let mut after = replica.begin_read().unwrap().last_seq().unwrap();
    loop {
        let batch = leader.export_replicated(after, chunk).unwrap();
        if batch.is_empty() {
            return after;
        }
        after = replica.import_replicated(&over_the_wire(&batch)).unwrap();
    }
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

/// `Deposited` of another build: the same tag and version, another field type.
#[derive(Event, Debug)]
#[event(name = "Deposited")]
struct DepositedChanged {
    cents: u32,
}

#[derive(Default, Debug)]
struct Changed {
    cents: u64,
}

#[aggregate(name = "Account")]
impl Changed {
    fn deposited(&mut self, e: &ArchivedDepositedChanged) {
        self.cents += u64::from(e.cents.to_native());
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
    // The schema registry came along: the same fingerprints and layouts, so a type changed
    // under the same tag is refused on the replica as on the leader.
    let schemas = |db: &Varve| db.begin_read().unwrap().schemas().unwrap();
    assert!(!schemas(&replica).is_empty());
    assert_eq!(format!("{:?}", schemas(&leader)), format!("{:?}", schemas(&replica)));
    for db in [&leader, &replica] {
        let err = db.stream::<Changed>(9u128).load().unwrap_err();
        assert!(matches!(err, Error::SchemaMismatch { .. }), "{err:?}");
    }
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

/// A leader like [`leader`], encrypted under `key`.
fn encrypted_leader(dir: &std::path::Path, key: &MasterKey, events: u64) -> Varve {
    let db = Options::new().encryption_key(key.clone()).open(dir).unwrap();
    append_mixed(&db, 1, events, 0);
    db
}

/// Events `from..=to` of the mixed workload: inline and blob payloads, ids, metadata, on the
/// five streams from `streams`.
fn append_mixed(db: &Varve, from: u64, to: u64, streams: u128) {
    for i in from..=to {
        let payload = if i % 10 == 0 { vec![i as u8; 3000] } else { i.to_le_bytes().to_vec() };
        let mut e = NewEvent::new(if i % 3 == 0 { "fizz" } else { "plain" }, payload)
            .with_metadata(format!("m{i}").into_bytes());
        if i % 4 == 0 {
            e = e.with_id(u128::from(i) << 64 | 0xabc);
        }
        db.append(streams + u128::from(i % 5), ExpectedVersion::Auto, [e]).unwrap();
    }
}

/// Every event reads the same on both stores (decrypted, or shredded), and both pass the
/// integrity check.
fn assert_same_reads(a: &Varve, b: &Varve) {
    assert_same_log(a, b);
    let (av, bv) = (a.begin_read().unwrap(), b.begin_read().unwrap());
    let last = av.last_seq().unwrap();
    assert_eq!(last, bv.last_seq().unwrap());
    for seq in 1..=last {
        assert_eq!(av.event(seq).unwrap(), bv.event(seq).unwrap(), "seq {seq}");
    }
}

fn shredded(db: &Varve, seq: u64) -> bool {
    db.begin_read().unwrap().event(seq).unwrap().unwrap().is_shredded()
}

#[test]
fn an_encrypted_replica_holds_the_sealed_log_and_reads_it_with_the_leaders_key() {
    let key = MasterKey::generate().unwrap();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = encrypted_leader(l.path(), &key, 300);
    let id = leader.store_id().unwrap();

    // Without the leader's key and identity the sealed events are refused, nothing written.
    let plain = Options::new().replica(true).open(r.path()).unwrap();
    let refused = plain.import_replicated(&leader.export_replicated(0, 10).unwrap());
    assert!(matches!(refused, Err(Error::ReplicaMismatch { seq: 1, .. })), "{refused:?}");
    drop(plain);
    let other = tempfile::tempdir().unwrap();
    let own_id = Options::new().encryption_key(key.clone()).replica(true).open(other.path()).unwrap();
    let refused = own_id.import_replicated(&leader.export_replicated(0, 10).unwrap());
    assert!(matches!(refused, Err(Error::ReplicaMismatch { seq: 1, .. })), "{refused:?}");
    assert_eq!(own_id.begin_read().unwrap().last_seq().unwrap(), 0);

    let r2 = tempfile::tempdir().unwrap();
    let replica = Options::new().encryption_key(key.clone()).replica_of(id).open(r2.path()).unwrap();
    assert_eq!(replica.store_id(), Some(id));
    assert_eq!(sync(&leader, &replica, 64), 300);
    assert_same_reads(&leader, &replica);
    assert_eq!(replica.begin_read().unwrap().event(10).unwrap().unwrap().payload(), [10u8; 3000]);
    drop(replica);
    // The replica is a store of the leader's identity under the leader's key, and no other.
    let wrong = Options::new().encryption_key(MasterKey::generate().unwrap()).open(r2.path());
    assert!(matches!(wrong, Err(Error::WrongKey)), "{wrong:?}");
    let replica = Options::new().encryption_key(key).replica_of(id).open(r2.path()).unwrap();
    assert_same_reads(&leader, &replica);
}

#[test]
fn a_store_with_events_does_not_take_another_identity() {
    let key = MasterKey::generate().unwrap();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = encrypted_leader(l.path(), &key, 5);
    let id = leader.store_id().unwrap();
    drop(leader);
    let other = Options::new().encryption_key(key.clone()).open(r.path()).unwrap();
    other.append(1u128, ExpectedVersion::Auto, [NewEvent::new("x", vec![1])]).unwrap();
    drop(other);
    let refused = Options::new().encryption_key(key).replica_of(id).open(r.path());
    assert!(matches!(refused, Err(Error::StoreMismatch { .. })), "{refused:?}");
}

#[test]
fn shreds_reach_the_replica_whenever_they_happen() {
    let key = MasterKey::generate().unwrap();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = encrypted_leader(l.path(), &key, 100);
    let replica =
        Options::new().encryption_key(key).replica_of(leader.store_id().unwrap()).open(r.path()).unwrap();
    sync(&leader, &replica, 1_000);
    assert_eq!(leader.export_shreds(0).unwrap().1, []);

    // Stream 0 (seq 5, 10, ...: blobs among them), shredded after the replica took its events:
    // it travels as a shred, applied once the replica holds the leader's log up to then.
    assert!(leader.shred(0u128).unwrap());
    append_mixed(&leader, 101, 120, 10);
    let (changes, shreds) = leader.export_shreds(0).unwrap();
    assert_eq!((changes, shreds.len()), (1, 1));
    assert_eq!(leader.export_shreds(changes).unwrap().1, []);
    let copy =
        ReplicatedShred::from_parts(shreds[0].stream(), shreds[0].after(), shreds[0].marker().to_vec())
            .unwrap();
    assert_eq!(copy.after(), 120);
    let early = replica.import_shred(&copy);
    assert!(matches!(early, Err(Error::ShredAhead { after: 120, last: 100 })), "{early:?}");
    assert!(!shredded(&replica, 10));
    sync(&leader, &replica, 1_000);
    assert!(replica.import_shred(&copy).unwrap());
    assert!(!replica.import_shred(&copy).unwrap());
    assert!(shredded(&replica, 10) && shredded(&replica, 5));
    assert_same_reads(&leader, &replica);

    // Stream 21, shredded halfway through the replica's import of its events: the events it
    // did not have yet come with the marker and their header MACs, and shred the rest.
    let before = replica.begin_read().unwrap().last_seq().unwrap();
    append_mixed(&leader, 121, 160, 20);
    replica.import_replicated(&over_the_wire(&leader.export_replicated(before, 20).unwrap())).unwrap();
    assert!(leader.shred(21u128).unwrap());
    sync(&leader, &replica, 7);
    assert!(shredded(&replica, 121) && shredded(&replica, 156) && !shredded(&replica, 122));
    assert_same_reads(&leader, &replica);

    // A stream with no events on the replica yet, shredded before it took any: its events
    // come with the marker, their blobs deleted on the leader.
    append_mixed(&leader, 161, 200, 30);
    leader.append(77u128, ExpectedVersion::Auto, [NewEvent::new("x", vec![7; 5000])]).unwrap();
    assert!(leader.shred(77u128).unwrap());
    assert!(leader.shred(78u128).unwrap()); // no events at all: its id is retired
    sync(&leader, &replica, 1_000);
    for shred in leader.export_shreds(1).unwrap().1 {
        replica.import_shred(&shred).unwrap();
    }
    assert!(shredded(&replica, 201));
    assert_same_reads(&leader, &replica);
    // Every `keys` entry is the leader's: compared through an export of each stream's first event.
    let firsts = |db: &Varve| -> Vec<Option<Vec<u8>>> {
        db.export_replicated(0, usize::MAX)
            .unwrap()
            .iter()
            .filter(|e| e.version() == 1)
            .map(|e| e.stream_key().map(<[u8]>::to_vec))
            .collect()
    };
    assert_eq!(firsts(&leader), firsts(&replica));
    // A forged marker is refused: another stream's.
    let forged = ReplicatedShred::from_parts(3u128, 0, shreds[0].marker().to_vec()).unwrap();
    assert!(matches!(replica.import_shred(&forged), Err(Error::CorruptKey { .. })));
    assert!(!shredded(&replica, 3));
}

#[test]
fn a_replica_follows_its_leaders_key_rotation() {
    let (k1, k2) = (MasterKey::generate().unwrap(), MasterKey::generate().unwrap());
    let (l, r, late) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = encrypted_leader(l.path(), &k1, 50);
    let id = leader.store_id().unwrap();
    let replica = Options::new().encryption_key(k1.clone()).replica_of(id).open(r.path()).unwrap();
    sync(&leader, &replica, 1_000);
    leader.rotate_master_key(&k2).unwrap();
    leader.append(40u128, ExpectedVersion::Auto, [NewEvent::new("x", vec![4])]).unwrap();
    assert!(leader.export_shreds(0).unwrap().0 > 0);
    let events = leader.export_replicated(50, 10).unwrap();
    let refused = replica.import_replicated(&events);
    assert!(matches!(refused, Err(Error::ReplicaKeyEpoch { leader: 2, replica: 1 })), "{refused:?}");
    replica.rotate_master_key(&k2).unwrap();
    sync(&leader, &replica, 1_000);
    // The same records and reads; the replica's keys are its own re-wrapping of the same
    // data keys (the leader's have other nonces).
    let records = |db: &Varve| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let events = db.export_replicated(0, usize::MAX).unwrap();
        events.iter().map(|e| (e.record().to_vec(), e.blob().map(<[u8]>::to_vec))).collect()
    };
    assert_eq!(records(&leader), records(&replica));
    let (lv, rv) = (leader.begin_read().unwrap(), replica.begin_read().unwrap());
    for seq in 1..=51 {
        assert_eq!(lv.event(seq).unwrap(), rv.event(seq).unwrap());
    }
    rv.check_integrity().unwrap();
    drop((lv, rv));
    drop(replica);
    // The replica now opens with the new key only.
    assert!(matches!(Options::new().encryption_key(k1).open(r.path()), Err(Error::WrongKey)));

    // A replica made after the rotation takes the leader's epoch with its first key.
    let fresh = Options::new().encryption_key(k2.clone()).replica_of(id).open(late.path()).unwrap();
    sync(&leader, &fresh, 16);
    assert_same_reads(&leader, &fresh);
    drop(fresh);
    let fresh = Options::new().encryption_key(k2).replica_of(id).open(late.path()).unwrap();
    assert_eq!(fresh.begin_read().unwrap().event(51).unwrap().unwrap().payload(), [4]);
}

#[test]
fn a_replica_keeps_the_leaders_merkle_tree() {
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Options::new().verifiable_log(true).open(l.path()).unwrap();
    append_mixed(&leader, 1, 700, 0);
    let replica = Options::new().verifiable_log(true).replica(true).open(r.path()).unwrap();
    let mut after = 0;
    let mut sizes = Vec::new();
    for chunk in [1, 2, 13, 16, 50, 256, 300, 1_000] {
        let batch = leader.export_replicated(after, chunk).unwrap();
        if batch.is_empty() {
            break;
        }
        after = replica.import_replicated(&over_the_wire(&batch)).unwrap();
        sizes.push(after);
        // At every size the replica reached: the leader's root.
        let (lv, rv) = (leader.begin_read().unwrap(), replica.begin_read().unwrap());
        assert_eq!(rv.tree_head().unwrap(), lv.tree_head_at(after).unwrap());
    }
    assert_eq!(after, 700);
    let (lv, rv) = (leader.begin_read().unwrap(), replica.begin_read().unwrap());
    for &size in &sizes {
        assert_eq!(rv.tree_head_at(size).unwrap(), lv.tree_head_at(size).unwrap());
        for seq in [1, size / 2 + 1, size] {
            assert_eq!(rv.inclusion_proof(seq, size).unwrap(), lv.inclusion_proof(seq, size).unwrap());
        }
        assert_eq!(rv.consistency_proof(size, 700).unwrap(), lv.consistency_proof(size, 700).unwrap());
    }
    drop((lv, rv));
    assert_same_log(&leader, &replica);
}

#[test]
fn a_replica_opened_without_the_mode_is_promoted() {
    let key = MasterKey::generate().unwrap();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = encrypted_leader(l.path(), &key, 30);
    let id = leader.store_id().unwrap();
    let replica = Options::new().encryption_key(key.clone()).replica_of(id).open(r.path()).unwrap();
    sync(&leader, &replica, 1_000);
    drop(replica);

    // Promoted: it appends after the leader's last seq, to old streams and new ones, under
    // the leader's key and identity, and imports no more.
    let promoted = Options::new().encryption_key(key.clone()).open(r.path()).unwrap();
    assert_eq!(promoted.store_id(), Some(id));
    let local = promoted.import_replicated(&[]);
    assert!(matches!(local, Err(Error::NotAReplica)), "{local:?}");
    let a = promoted.append(1u128, ExpectedVersion::Auto, [NewEvent::new("own", b"x".to_vec())]).unwrap();
    assert_eq!((a.first_seq, a.last_version), (31, 7));
    promoted.append(99u128, ExpectedVersion::Auto, [NewEvent::new("own", b"y".to_vec())]).unwrap();
    assert_eq!(promoted.begin_read().unwrap().event(32).unwrap().unwrap().payload(), b"y");
    promoted.begin_read().unwrap().check_integrity().unwrap();
    drop(promoted);

    // Its log has left the leader's: opened as a replica again, the leader's next event is
    // refused, as its own hold that seq.
    append_mixed(&leader, 31, 31, 0);
    let replica = Options::new().encryption_key(key).replica_of(id).open(r.path()).unwrap();
    let refused = replica.import_replicated(&leader.export_replicated(30, 1).unwrap());
    assert!(matches!(refused, Err(Error::ReplicaGap { expected: 33, found: 31 })), "{refused:?}");
}
