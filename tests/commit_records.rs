//! Commit records: the writer answers a commit after its own data flush, which also carries
//! the commit's record (its changes, with its transaction id and a CRC32C) in an area of
//! `data.mdb`; the meta page that makes the commit the store's state reaches the disk with
//! the next flush (see "Durability" in `docs/design.md`).
//!
//! These tests make, with real files, the states a power loss leaves between those two
//! flushes, and open them. `tests/powerloss.rs` cuts real runs at every write and flush.

use std::os::unix::fs::FileExt;
use std::path::Path;

use varvedb::{Error, ExpectedVersion, MasterKey, NewEvent, Options, Varve};

const MAGIC: &[u8; 4] = b"VCR1";

fn event(i: u32) -> NewEvent {
    NewEvent::new("noted", format!("event {i}").into_bytes())
}

/// LMDB's two meta pages, as the file holds them. The first records the page size, in the
/// free list's record (page header 16 bytes, magic and version 8, address and map size 16).
fn metas(dir: &Path) -> Vec<u8> {
    let file = std::fs::File::open(dir.join("data.mdb")).unwrap();
    let mut size = [0u8; 4];
    file.read_exact_at(&mut size, 40).unwrap();
    let page = u32::from_le_bytes(size) as usize;
    assert!(page.is_power_of_two() && page >= 4096, "page size {page}");
    let mut b = vec![0; 2 * page];
    file.read_exact_at(&mut b, 0).unwrap();
    b
}

/// Puts back meta pages read before: the file is then as a power loss leaves it when the
/// last commit's meta page never reached the disk (everything else did, as the commit's
/// data flush returned before the commit was answered).
fn lose_last_meta_page(dir: &Path, before: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(dir.join("data.mdb")).unwrap();
    file.write_all_at(before, 0).unwrap();
    file.sync_all().unwrap();
}

/// Offsets of the whole records in the file, with their transaction ids.
fn records(file: &Path) -> Vec<(usize, u64)> {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == MAGIC)
        .map(|(at, _)| (at, u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap())))
        .collect()
}

/// A store of stream 1 with events 1 to 5, then event 6 appended once the meta pages were
/// read: returns those meta pages. The handle is closed.
fn store_with_a_last_commit(dir: &Path) -> Vec<u8> {
    let db = Varve::open(dir).unwrap();
    for i in 1..=5 {
        db.append(1u128, ExpectedVersion::Exact(i - 1), [event(i)]).unwrap();
    }
    let before = metas(dir);
    let last = db.append(1u128, ExpectedVersion::Exact(5), [event(6)]).unwrap();
    assert_eq!(last.first_seq, 6);
    drop(db);
    before
}

#[test]
fn the_last_commit_comes_back_from_its_record_when_its_meta_page_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let before = store_with_a_last_commit(dir.path());
    lose_last_meta_page(dir.path(), &before);

    // Only an open for writing applies the record: a reader would see the store without
    // the commit it was told of.
    let e = Options::new().read_only(true).open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NeedsWriteOpen { .. }), "{e:?}");

    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.check_integrity().unwrap().events, 6);
    let payloads: Vec<Vec<u8>> =
        view.read_stream(1u128, 1).unwrap().map(|e| e.unwrap().payload().to_vec()).collect();
    assert_eq!(payloads, (1..=6).map(|i| format!("event {i}").into_bytes()).collect::<Vec<_>>());
    drop(view);
    let next = db.append(1u128, ExpectedVersion::Exact(6), [event(7)]).unwrap();
    assert_eq!((next.first_seq, next.first_version), (7, 7));
    drop(db);
    // Applied once: the next open finds nothing to apply, and reads the same.
    let db = Options::new().read_only(true).open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 7);
}

#[test]
fn a_damaged_record_is_not_applied_and_the_store_goes_on_without_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let before = store_with_a_last_commit(dir.path());
    lose_last_meta_page(dir.path(), &before);
    // The record of the last commit, torn as a power loss during its flush could leave it
    // (its commit would then not have been answered).
    let file = dir.path().join("data.mdb");
    let &(at, _) = records(&file).iter().max_by_key(|r| r.1).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[0xAA; 64], (at + 100) as u64).unwrap();
    drop(f);

    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.check_integrity().unwrap().events, 5);
    assert_eq!(view.stream_version(1u128).unwrap(), Some(5));
    drop(view);
    let next = db.append(1u128, ExpectedVersion::Exact(5), [event(6)]).unwrap();
    assert_eq!((next.first_seq, next.first_version), (6, 6));
}

#[test]
fn a_lone_writer_flushes_once_per_commit_and_a_commit_too_large_for_a_record_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(0)]).unwrap();
    let syncs = db.stats().syncs;
    for i in 1..=50 {
        db.append(1u128, ExpectedVersion::Auto, [event(i)]).unwrap();
    }
    let lone = db.stats().syncs - syncs;
    // One flush per commit, and now and then one that grows the file ahead of use; with a
    // flush of the meta page per commit it would be 100.
    assert!((50..60).contains(&lone), "50 commits took {lone} flushes");

    // 2,000 events of 100 bytes are more than a record holds: that commit is answered
    // after a flush of its own, which makes its meta page durable.
    let big: Vec<NewEvent> = (0..2000).map(|_| NewEvent::new("noted", vec![7u8; 100])).collect();
    let syncs = db.stats().syncs;
    db.append(2u128, ExpectedVersion::Auto, big).unwrap();
    let large = db.stats().syncs - syncs;
    assert!((2..4).contains(&large), "a large commit took {large} flushes");
}

#[test]
fn a_backup_carries_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for i in 1..=5 {
        db.append(1u128, ExpectedVersion::Auto, [event(i)]).unwrap();
    }
    assert!(!records(&dir.path().join("data.mdb")).is_empty(), "the store holds records");
    let backup = tempfile::tempdir().unwrap();
    let copy = backup.path().join("copy");
    db.backup(&copy).unwrap();
    // A copy starts LMDB's transaction ids again at 1: a record of the store it came from
    // could one day pass for one of its own.
    assert_eq!(records(&copy.join("data.mdb")), vec![]);
    let db = Varve::open(&copy).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 5);
}

#[test]
fn a_commit_without_a_record_zeros_a_record_left_for_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let before = store_with_a_last_commit(dir.path());
    // The last commit's record, copied: a transaction killed after writing its record and
    // before committing leaves the same kind of thing for the transaction id it had.
    let file = dir.path().join("data.mdb");
    let bytes = std::fs::read(&file).unwrap();
    let &(at, txnid) = records(&file).iter().max_by_key(|r| r.1).unwrap();
    let record = bytes[at..at + 4096].to_vec();
    lose_last_meta_page(dir.path(), &before);
    // Opened for writing: the record comes back as that transaction.
    let db = Varve::open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 6);
    // The next transaction is `txnid + 1` (the record was applied as `txnid`): the copy goes
    // into its slot, the other one, as a record of that transaction, while the store is open
    // (at an open, a record of the next transaction is applied).
    let next = txnid + 1;
    let slot = if txnid & 1 == 0 { at + 64 * 1024 } else { at - 64 * 1024 };
    let mut stale = record.clone();
    stale[16..24].copy_from_slice(&next.to_le_bytes());
    // The CRC covers the transaction id: recompute it as a writer would have.
    let len = u32::from_le_bytes(stale[4..8].try_into().unwrap()) as usize;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&stale[16..24]), &stale[24..24 + len]);
    stale[8..12].copy_from_slice(&crc.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&stale, slot as u64).unwrap();
    drop(f);
    assert!(records(&file).contains(&(slot, next)));
    let before = metas(dir.path());
    let big: Vec<NewEvent> =
        (0..2000u32).map(|i| NewEvent::new("noted", vec![(i % 251) as u8; 100])).collect();
    db.append(2u128, ExpectedVersion::NoStream, big).unwrap();
    drop(db);
    // Its meta page lost: the store is at the commit before, and the copy must not be taken
    // for the large commit's record.
    lose_last_meta_page(dir.path(), &before);
    assert!(records(&file).iter().all(|r| r.1 != next), "the stale record was not zeroed");
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    view.check_integrity().unwrap();
    assert_eq!(view.stream_version(1u128).unwrap(), Some(6));
}

#[test]
fn a_shred_zeros_the_records_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().encryption_key(MasterKey::from_bytes([3; 32])).open(dir.path()).unwrap();
    db.append(9u128, ExpectedVersion::NoStream, [event(1)]).unwrap();
    db.append(9u128, ExpectedVersion::Exact(1), [event(2)]).unwrap();
    let file = dir.path().join("data.mdb");
    assert!(!records(&file).is_empty());
    assert!(db.shred(9u128).unwrap());
    // The stream's wrapped key was in the record of its first append.
    let area_bytes = std::fs::read(&file).unwrap();
    assert!(records(&file).is_empty(), "records stay after a shred");
    drop(area_bytes);
    db.append(10u128, ExpectedVersion::NoStream, [event(3)]).unwrap();
    let before = metas(dir.path());
    db.append(10u128, ExpectedVersion::Exact(1), [event(4)]).unwrap();
    drop(db);
    lose_last_meta_page(dir.path(), &before);
    let db = Options::new().encryption_key(MasterKey::from_bytes([3; 32])).open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.stream_version(10u128).unwrap(), Some(2));
    assert!(view.read_stream(9u128, 1).unwrap().all(|e| e.unwrap().is_shredded()));
}
