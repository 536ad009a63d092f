//! `Options::read_only`: LMDB's read-only mode, beside a writer in another process, refusing
//! every write, never changing `data.mdb`, and refusing stores only a write open can bring
//! into use.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Projection, Varve};

fn read_only() -> Options {
    Options::new().read_only(true)
}

fn file_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("data.mdb")).unwrap()
}

fn event(i: u32) -> NewEvent {
    NewEvent::new("noted", i.to_le_bytes().to_vec())
}

#[test]
fn reads_beside_a_writing_process_and_sees_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-child"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acks = BufReader::new(child.stdout.take().unwrap()).lines();
    // Once the writer has acknowledged an append, the store exists and the writer holds it.
    acks.next().unwrap().unwrap();

    let db = read_only().open(dir.path()).unwrap();
    let first = db.begin_read().unwrap().last_seq().unwrap();
    assert!(first >= 1);
    // The writer keeps appending: a later view sees more, every record intact.
    let deadline = Instant::now() + Duration::from_secs(20);
    let later = loop {
        acks.next().unwrap().unwrap();
        let seq = db.begin_read().unwrap().last_seq().unwrap();
        if seq > first + 50 || Instant::now() > deadline {
            break seq;
        }
    };
    assert!(later > first, "the read-only handle sees the other process's commits ({first} -> {later})");
    let view = db.begin_read().unwrap();
    let seqs: Vec<u64> = view.read_all(1).unwrap().take(later as usize).map(|e| e.unwrap().seq()).collect();
    assert_eq!(seqs, (1..=later).collect::<Vec<_>>(), "every event up to the view's last, readable");
    drop(view);

    // Writes are refused while the writer goes on.
    assert!(matches!(db.append(7u128, ExpectedVersion::Auto, [event(1)]), Err(Error::ReadOnly)));
    let mut projection = Projection::new("p");
    assert!(matches!(projection.step(&db), Err(varvedb::ProcessorError::Store(Error::ReadOnly))));
    acks.next().unwrap().unwrap();

    child.kill().unwrap();
    child.wait().unwrap();
    drop(db);
    // The store is whole and opens for writing.
    let db = Varve::open(dir.path()).unwrap();
    assert!(db.begin_read().unwrap().check_integrity().unwrap().events >= later);
}

#[test]
fn reads_and_refused_writes_leave_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        for i in 0..100 {
            db.append(u128::from(i % 7), ExpectedVersion::Auto, [event(i)]).unwrap();
        }
        db.append(9u128, ExpectedVersion::Auto, [NewEvent::new("big", vec![3; 10_000])]).unwrap();
    }
    let before = file_bytes(dir.path());
    let backup = tempfile::tempdir().unwrap();
    {
        let db = read_only().open(dir.path()).unwrap();
        let view = db.begin_read().unwrap();
        assert_eq!(view.read_all(1).unwrap().count(), 101);
        assert_eq!(view.read_stream(3u128, 1).unwrap().count(), 14);
        assert_eq!(view.event(101).unwrap().unwrap().payload(), vec![3; 10_000].as_slice());
        assert_eq!(view.check_integrity().unwrap().events, 101);
        drop(view);
        assert!(matches!(db.append(1u128, ExpectedVersion::Auto, [event(0)]), Err(Error::ReadOnly)));
        assert!(matches!(db.save_checkpoint("x", 1), Err(varvedb::ProcessorError::Store(Error::ReadOnly))));
        // A backup only reads.
        db.backup(backup.path().join("copy")).unwrap();
        assert_eq!(db.stats(), varvedb::Stats::default());
    }
    assert!(file_bytes(dir.path()) == before, "data.mdb is byte for byte as before");
    assert_eq!(
        Varve::open(backup.path().join("copy")).unwrap().begin_read().unwrap().last_seq().unwrap(),
        101
    );
}

#[test]
fn creates_nothing_where_there_is_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing");
    assert!(matches!(read_only().open(&missing), Err(Error::NoStore { .. })));
    assert!(!missing.exists(), "no directory made");
    assert!(matches!(read_only().open(dir.path()), Err(Error::NoStore { .. })));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file made");
}

#[test]
fn a_store_that_needs_a_write_open_is_refused_unchanged() {
    // A store whose last commit failed while writing its meta page: an open for writing
    // repairs it first.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
    }
    let txnid = {
        // SAFETY: the store is closed; nothing else maps it while this environment lives.
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(dir.path()) }.unwrap();
        env.read_txn().unwrap().id()
    };
    std::fs::write(dir.path().join("failed-commit"), txnid.to_string()).unwrap();
    let before = file_bytes(dir.path());
    let refused = read_only().open(dir.path());
    assert!(matches!(refused, Err(Error::NeedsWriteOpen { .. })), "{refused:?}");
    assert!(file_bytes(dir.path()) == before);
    assert!(dir.path().join("failed-commit").exists(), "the record stays for the write open");
    drop(Varve::open(dir.path()).unwrap());
    assert_eq!(read_only().open(dir.path()).unwrap().begin_read().unwrap().last_seq().unwrap(), 1);

    // A store of this format without every table this version has (a table added by a later
    // build of the same format).
    let old = tempfile::tempdir().unwrap();
    {
        // SAFETY: a new directory of this test's own; nothing else maps it.
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(old.path()) }.unwrap();
        let mut txn = env.write_txn().unwrap();
        let meta: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.create_database(&mut txn, Some("meta")).unwrap();
        meta.put(&mut txn, b"format_version", &10u32.to_le_bytes()).unwrap();
        let _: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.create_database(&mut txn, Some("events")).unwrap();
        txn.commit().unwrap();
    }
    // The same of an older format: refused for its format, as a write open refuses it.
    let older = tempfile::tempdir().unwrap();
    {
        // SAFETY: a new directory of this test's own; nothing else maps it.
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(older.path()) }.unwrap();
        let mut txn = env.write_txn().unwrap();
        let meta: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.create_database(&mut txn, Some("meta")).unwrap();
        meta.put(&mut txn, b"format_version", &1u32.to_le_bytes()).unwrap();
        txn.commit().unwrap();
    }
    let before = file_bytes(older.path());
    let refused = read_only().open(older.path());
    assert!(matches!(refused, Err(Error::IncompatibleFormat { found: 1, .. })), "{refused:?}");
    assert!(file_bytes(older.path()) == before);

    let before = file_bytes(old.path());
    let refused = read_only().open(old.path());
    assert!(
        matches!(&refused, Err(Error::NeedsWriteOpen { reason, .. }) if reason.contains("table")),
        "{refused:?}"
    );
    assert!(file_bytes(old.path()) == before);
    drop(Varve::open(old.path()).unwrap());
    assert_eq!(read_only().open(old.path()).unwrap().begin_read().unwrap().last_seq().unwrap(), 0);

    // Turning encryption or the Merkle tree on writes: refused too.
    let plain = tempfile::tempdir().unwrap();
    drop(Varve::open(plain.path()).unwrap());
    let key = varvedb::MasterKey::from_bytes([1; 32]);
    assert!(matches!(read_only().encryption_key(key).open(plain.path()), Err(Error::NeedsWriteOpen { .. })));
    assert!(matches!(read_only().verifiable_log(true).open(plain.path()), Err(Error::NeedsWriteOpen { .. })));
}

#[test]
fn an_encrypted_store_reads_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = varvedb::MasterKey::from_bytes([5; 32]);
    {
        let db = Options::new().encryption_key(key.clone()).open(dir.path()).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("secret", b"hidden".to_vec())]).unwrap();
    }
    let before = file_bytes(dir.path());
    assert!(matches!(read_only().open(dir.path()), Err(Error::KeyRequired { .. })));
    let db = read_only().encryption_key(key).open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().event(1).unwrap().unwrap().payload(), b"hidden");
    assert!(matches!(db.shred(1u128), Err(Error::ReadOnly)));
    drop(db);
    assert!(file_bytes(dir.path()) == before);
}

#[test]
fn a_replica_takes_its_leaders_identity_only_in_a_write_open() {
    let (leader_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(leader_dir.path()).unwrap();
    leader.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
    let id = leader.store_id().unwrap();
    drop(Varve::open(dir.path()).unwrap());
    let before = file_bytes(dir.path());

    let refused = read_only().replica_of(id).open(dir.path());
    assert!(matches!(refused, Err(Error::NeedsWriteOpen { .. })), "{:?}", refused.err());
    assert_eq!(file_bytes(dir.path()), before);

    // Once a write open has adopted the identity, a read-only open of the replica works.
    let replica = Options::new().replica_of(id).open(dir.path()).unwrap();
    replica.import_replicated(&leader.export_replicated(0, 10).unwrap()).unwrap();
    drop(replica);
    let view = read_only().replica_of(id).open(dir.path()).unwrap();
    assert_eq!(view.store_id(), Some(id));
    assert_eq!(view.begin_read().unwrap().last_seq().unwrap(), 1);
}
