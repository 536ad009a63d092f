//! `Varve::stats`: bytes written and flush times move with real appends, and only with them.

use varvedb::{ExpectedVersion, NewEvent, Varve};

/// An upper bound on what a plain record adds to its payload: header, tag, checksum.
const RECORD_OVERHEAD: u64 = 128;

#[test]
fn bytes_written_count_records_and_new_blobs_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let start = db.stats();
    assert_eq!(start.bytes_written, 0, "opening writes no events");

    // Small payloads, stored inside their records.
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    let total: u64 = payloads.iter().map(|p| p.len() as u64).sum();
    db.append(1u128, ExpectedVersion::Auto, payloads.iter().map(|p| NewEvent::new("small", p.clone())))
        .unwrap();
    let small = db.stats().bytes_written - start.bytes_written;
    assert!(small >= total && small <= total + 10 * RECORD_OVERHEAD, "{small} bytes for {total} of payload");

    // A large payload is stored once as a blob: the second event with it writes only its record.
    let large = vec![7u8; 64 * 1024];
    let before = db.stats().bytes_written;
    db.append(2u128, ExpectedVersion::Auto, [NewEvent::new("large", large.clone())]).unwrap();
    let first = db.stats().bytes_written - before;
    assert!(first >= large.len() as u64 && first <= large.len() as u64 + 2 * RECORD_OVERHEAD, "{first}");
    let before = db.stats().bytes_written;
    db.append(3u128, ExpectedVersion::Auto, [NewEvent::new("large", large.clone())]).unwrap();
    let second = db.stats().bytes_written - before;
    assert!(second > 0 && second <= 2 * RECORD_OVERHEAD, "the shared blob is not written again: {second}");

    // A refused write and a deduplicated retry write nothing.
    let before = db.stats().bytes_written;
    let refused = db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("small", vec![1; 50])]);
    assert!(refused.is_err());
    let id = 0xfeed_u128;
    db.append(4u128, ExpectedVersion::Auto, [NewEvent::new("once", vec![2; 50]).with_id(id)]).unwrap();
    let once = db.stats().bytes_written - before;
    db.append(4u128, ExpectedVersion::Auto, [NewEvent::new("once", vec![2; 50]).with_id(id)]).unwrap();
    assert_eq!(db.stats().bytes_written - before, once, "a deduplicated request writes nothing");
    assert_eq!(db.stats().events, 13);

    // Counters are per opening, not stored.
    drop(db);
    let db = Varve::open(dir.path()).unwrap();
    assert_eq!(db.stats().bytes_written, 0);
}

#[test]
fn flush_times_count_every_commit_and_explicit_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let start = db.stats();
    for i in 0..20u8 {
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("e", vec![i; 10])]).unwrap();
    }
    let after = db.stats();
    let commits = after.commits - start.commits;
    assert_eq!(commits, 20, "one append at a time: one commit each");
    // A lone append's commit flushes its pages with its commit record, and is answered then
    // (see "Durability" in `docs/design.md`).
    assert_eq!(after.syncs - start.syncs, commits, "each lone commit is one flush");
    assert!(after.sync_time > start.sync_time);
    assert!(after.max_sync > std::time::Duration::ZERO && after.max_sync <= after.sync_time);

    // A read commits nothing.
    let view = db.begin_read().unwrap();
    assert_eq!(view.last_seq().unwrap(), 20);
    drop(view);
    assert_eq!(db.stats().syncs, after.syncs);

    // With relaxed durability an explicit flush is one more.
    drop(db);
    let db = varvedb::Options::new().durability(varvedb::Durability::Relaxed).open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("e", b"x".to_vec())]).unwrap();
    let before = db.stats().syncs;
    db.sync().unwrap();
    // The writer's idle flush may come in between too.
    let flushed = db.stats().syncs - before;
    assert!((1..=2).contains(&flushed), "{flushed}");
}
