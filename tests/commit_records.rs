//! Commit records: the writer answers a commit after its own data flush, which also carries
//! the commit's record (its changes, with its transaction id and a CRC32C) in an area of
//! `data.mdb`; the meta page that makes the commit the store's state reaches the disk with
//! the next flush (see "Durability" in `docs/design.md`).
//!
//! These tests make, with real files, the states a power loss leaves between those two
//! flushes, and open them. `tests/powerloss.rs` cuts real runs at every write and flush.

use std::os::unix::fs::FileExt;
use std::path::Path;

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve};

/// LMDB's two meta pages, as the file holds them: the page size of the machine, 4 KiB here.
const METAS: usize = 2 * 4096;
const MAGIC: &[u8; 4] = b"VCR1";

fn event(i: u32) -> NewEvent {
    NewEvent::new("noted", format!("event {i}").into_bytes())
}

fn metas(dir: &Path) -> Vec<u8> {
    let mut b = vec![0; METAS];
    std::fs::File::open(dir.join("data.mdb")).unwrap().read_exact_at(&mut b, 0).unwrap();
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
