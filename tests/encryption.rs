//! Encryption at rest: keys, sealing, tampering with the file, shredding, rotation, backups.
//!
//! The tamper tests act as an attacker with write access to `data.mdb` while the store is
//! closed: they edit records through LMDB itself (so the B-tree stays valid) and forge the
//! CRC32C, which is not a secret, so that only the cryptography stands in the way.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use varvedb::{
    Error, Event, ExpectedVersion, MasterKey, NewEvent, Options, Pending, Processor, Projection, Table,
    Varve, aggregate,
};

#[derive(Event, Debug, Clone, PartialEq)]
struct Registered {
    email: String,
    note: String,
}

#[derive(Event, Debug, Clone, PartialEq)]
struct Moved {
    address: String,
}

#[derive(Default, Debug, Clone, PartialEq)]
struct Customer {
    email: String,
    addresses: Vec<String>,
}

#[aggregate]
impl Customer {
    fn registered(&mut self, e: &ArchivedRegistered) {
        self.email = e.email.to_string();
    }

    fn moved(&mut self, e: &ArchivedMoved) {
        self.addresses.push(e.address.to_string());
    }
}

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32])
}

fn open(dir: &Path, byte: u8) -> Result<Varve, Error> {
    Options::new().encryption_key(key(byte)).open(dir)
}

fn registered(email: &str) -> Registered {
    Registered { email: email.to_owned(), note: "a note".to_owned() }
}

#[path = "support/damage.rs"]
mod damage;
use damage::{index, raw};

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// What a reader gets for `seq`: the payload, or the error. Never both.
fn read(dir: &Path, seq: u64) -> Result<Vec<u8>, Error> {
    let db = open(dir, 1).unwrap();
    let view = db.begin_read()?;
    let event = view.event(seq)?.expect("the seq exists");
    Ok(event.payload().to_vec())
}

fn is_typed_rejection(e: &Error) -> bool {
    // `CorruptKey`: a stream id edited to one that has no key.
    matches!(
        e,
        Error::Corrupt { .. }
            | Error::DecryptionFailed { .. }
            | Error::CorruptIndex { .. }
            | Error::CorruptKey { .. }
    )
}

#[test]
fn an_encrypted_store_opens_only_with_its_key_and_reads_nothing_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path(), 1).unwrap();
        assert!(db.is_encrypted());
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"secret".to_vec())]).unwrap();
    }
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
    assert!(matches!(Varve::open(dir.path()), Err(Error::KeyRequired { .. })));
    assert!(matches!(open(dir.path(), 2), Err(Error::WrongKey)));
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before, "refused opens wrote nothing");
    let db = open(dir.path(), 1).unwrap();
    assert_eq!(db.begin_read().unwrap().event(1).unwrap().unwrap().payload(), b"secret");
    drop(db);

    // A plain store with events cannot be "encrypted" by opening it with a key...
    let plain = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(plain.path()).unwrap();
        assert!(!db.is_encrypted());
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"open".to_vec())]).unwrap();
        assert!(matches!(db.shred(1u128), Err(Error::NotEncrypted { .. })));
        assert!(matches!(db.rotate_master_key(&key(1)), Err(Error::NotEncrypted { .. })));
    }
    assert!(matches!(open(plain.path(), 1), Err(Error::NotEncrypted { .. })));
    assert_eq!(Varve::open(plain.path()).unwrap().begin_read().unwrap().last_seq().unwrap(), 1);

    // ...but an empty one can, and stays encrypted.
    let empty = tempfile::tempdir().unwrap();
    drop(Varve::open(empty.path()).unwrap());
    drop(open(empty.path(), 3).unwrap());
    assert!(matches!(Varve::open(empty.path()), Err(Error::KeyRequired { .. })));
}

/// Everything the typed layer produces from a store, for comparing a plain and an encrypted one.
#[derive(Debug, PartialEq)]
struct Observed {
    loaded: Vec<(Customer, u32)>,
    typed_reads: Vec<(u32, String, Vec<u8>)>,
    projected: Vec<(String, u64)>,
    processed: Vec<(u64, String)>,
    subscribed: Vec<(u64, Vec<u8>, Vec<u8>)>,
}

const MOVES: Table<String, u64> = Table::new("moves", "by_email");

fn exercise(db: &Varve) -> Observed {
    let big = "x".repeat(5000); // a payload stored as a blob
    for (i, email) in ["ana@example.com", "bo@example.com"].into_iter().enumerate() {
        let stream = db.stream::<Customer>(i as u128 + 1);
        stream.append(ExpectedVersion::NoStream, registered(email)).unwrap();
        stream
            .append_all(
                ExpectedVersion::Exact(1),
                [
                    Pending::from(Moved { address: format!("{email} street 1") })
                        .with_metadata(b"meta-1".to_vec()),
                    Pending::from(Moved { address: big.clone() }).with_id(100 + i as u128),
                ],
            )
            .unwrap();
    }
    let loaded = (1..=2u128)
        .map(|id| {
            let l = db.stream::<Customer>(id).load().unwrap();
            (l.state().clone(), l.version())
        })
        .collect();
    let view = db.begin_read().unwrap();
    let typed_reads = db
        .stream::<Customer>(1u128)
        .read(&view, 1)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let text = match (e.get::<Registered>().unwrap(), e.get::<Moved>().unwrap()) {
                (Some(r), None) => r.email.to_string(),
                (None, Some(m)) => m.address.chars().take(20).collect(),
                other => panic!("{other:?}"),
            };
            (e.recorded().version(), text, e.recorded().metadata().to_vec())
        })
        .collect();
    drop(view);

    let mut projection = Projection::new("moves").on::<Moved>(|tx, e, meta| {
        let stream = meta.stream().to_string();
        let n = tx.get(&MOVES, &stream)?.unwrap_or(0);
        tx.insert(&MOVES, &stream, &(n + e.address.len() as u64))?;
        Ok(())
    });
    projection.catch_up(db).unwrap();
    let projected = db.begin_read().unwrap().entries(&MOVES).unwrap().map(Result::unwrap).collect();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let mut processor = Processor::new("mailer").on::<Registered>(move |e, meta| {
        sink.lock().unwrap().push((meta.seq(), e.email.to_string()));
        Ok(())
    });
    processor.catch_up(db).unwrap();
    let processed = seen.lock().unwrap().clone();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let subscribed = runtime.block_on(async {
        db.subscribe(1)
            .take(6)
            .map(|e| {
                let e = e.unwrap();
                (e.seq, e.metadata.to_vec(), e.payload.to_vec())
            })
            .collect()
            .await
    });
    Observed { loaded, typed_reads, projected, processed, subscribed }
}

#[test]
fn the_typed_layer_reads_an_encrypted_store_exactly_as_a_plain_one() {
    let (plain, sealed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let expected = exercise(&Varve::open(plain.path()).unwrap());
    let db = open(sealed.path(), 1).unwrap();
    let got = exercise(&db);
    assert_eq!(got, expected);
    assert_eq!(got.loaded[0].0.addresses.len(), 2);
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!((report.events, report.streams, report.blob_references, report.shredded_events), (6, 2, 2, 0));

    // An idempotent retry is recognised through the encryption, and a changed one refused.
    let stream = db.stream::<Customer>(2u128);
    let retry = Pending::from(Moved { address: "x".repeat(5000) }).with_id(101);
    let again = stream.append_all(ExpectedVersion::Auto, [retry]).unwrap();
    assert!(again.deduplicated);
    let changed = Pending::from(Moved { address: "y".repeat(5000) }).with_id(101);
    assert!(matches!(
        stream.append_all(ExpectedVersion::Auto, [changed]),
        Err(Error::IdempotencyMismatch { .. })
    ));
}

#[test]
fn no_plaintext_of_an_event_its_metadata_or_its_blob_reaches_the_file() {
    let payload_marker = b"PAYLOAD-MARKER-7f3a9c";
    let meta_marker = b"METADATA-MARKER-51e2b0";
    let blob: Vec<u8> =
        (0..300).flat_map(|i: u32| [b"BLOB-MARKER-", &i.to_le_bytes()[..]].concat()).collect();
    let write = |db: &Varve| {
        let mut payload = payload_marker.to_vec();
        payload.extend_from_slice(b" and more");
        db.append(
            1u128,
            ExpectedVersion::Auto,
            [NewEvent::new("noted", payload).with_metadata(meta_marker.to_vec())],
        )
        .unwrap();
        db.append(2u128, ExpectedVersion::Auto, [NewEvent::new("scanned", blob.clone())]).unwrap();
    };
    let markers: [&[u8]; 3] = [payload_marker, meta_marker, &blob[..64]];

    // The search finds the markers in a plain store: a miss below means they are encrypted.
    let plain = tempfile::tempdir().unwrap();
    write(&Varve::open(plain.path()).unwrap());
    let file = std::fs::read(plain.path().join("data.mdb")).unwrap();
    for m in markers {
        assert!(count(&file, m) >= 1, "control: {:?} in a plain store", String::from_utf8_lossy(m));
    }

    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    write(&db);
    let view = db.begin_read().unwrap();
    assert_eq!(view.event(2).unwrap().unwrap().payload(), &blob[..]);
    drop(view);
    drop(db);
    let file = std::fs::read(dir.path().join("data.mdb")).unwrap();
    for m in markers {
        assert_eq!(count(&file, m), 0, "{:?} in an encrypted store", String::from_utf8_lossy(m));
    }
    for (_, wrapped) in raw::all(dir.path(), "keys") {
        assert_eq!(wrapped.len(), 65);
    }
}

/// A store with streams A = 1 and B = 2, each with versions 1..=10 of equal-length events,
/// interleaved: A's version v is seq 2v − 1, B's is seq 2v.
fn interleaved() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    for v in 1..=10u32 {
        for stream in [1u128, 2] {
            let payload = format!("stream {stream} version {v:02}").into_bytes();
            db.append(stream, ExpectedVersion::Exact(v - 1), [NewEvent::new("noted", payload)]).unwrap();
        }
    }
    dir
}

/// Records an attack stores: `(seq, record)`.
type Writes = Vec<(u64, Vec<u8>)>;

fn seq_of(stream: u128, version: u64) -> u64 {
    2 * version - 1 + u64::from(stream == 2)
}

#[test]
fn every_byte_of_a_record_flipped_in_the_file_is_a_typed_error() {
    let dir = interleaved();
    let seq = seq_of(1, 5);
    let record = raw::event(dir.path(), seq);
    assert_eq!(read(dir.path(), seq).unwrap(), b"stream 1 version 05");
    for i in 0..record.len() {
        // As found on disk (the checksum catches it), then with the checksum forged (the
        // cryptography must catch it).
        // Bytes 0..4 are the checksum itself, which forging rewrites.
        for forge in [false, true].into_iter().filter(|&forge| !forge || i >= 4) {
            let mut bad = record.clone();
            bad[i] ^= 0x5a;
            if forge {
                raw::put_event(dir.path(), seq, bad);
            } else {
                raw::put(dir.path(), "events", &seq.to_be_bytes(), &bad);
            }
            match read(dir.path(), seq) {
                Err(e) => assert!(is_typed_rejection(&e), "byte {i} (forged: {forge}): {e:?}"),
                Ok(p) => {
                    panic!("byte {i} (forged: {forge}) flipped, yet read {:?}", String::from_utf8_lossy(&p))
                }
            }
        }
    }
    raw::put(dir.path(), "events", &seq.to_be_bytes(), &record);
    assert_eq!(read(dir.path(), seq).unwrap(), b"stream 1 version 05", "restored");
}

#[test]
fn records_copied_or_swapped_to_other_positions_never_open() {
    let dir = interleaved();
    let p = dir.path();
    let s5 = raw::event(p, seq_of(1, 5));
    let s9 = raw::event(p, seq_of(1, 9));
    let a3 = raw::event(p, seq_of(1, 3));
    let b3 = raw::event(p, seq_of(2, 3));

    // The attacker also rewrites the clear header to match the target position.
    let retarget = |mut record: Vec<u8>, stream: u128, version: u32| {
        // Versions below 128 take one byte, the first number of the header.
        record[6..22].copy_from_slice(&stream.to_le_bytes());
        record[30] = u8::try_from(version).unwrap();
        record
    };
    let attacks: Vec<(&str, Writes)> = vec![
        ("(S,5) copied over (S,9)", vec![(seq_of(1, 9), s5.clone())]),
        ("(S,5) copied over (S,9), header rewritten", vec![(seq_of(1, 9), retarget(s5.clone(), 1, 9))]),
        ("(A,3) copied over (B,3)", vec![(seq_of(2, 3), a3.clone())]),
        ("(A,3) copied over (B,3), header rewritten", vec![(seq_of(2, 3), retarget(a3.clone(), 2, 3))]),
        ("(S,5) and (S,9) swapped", vec![(seq_of(1, 9), s5.clone()), (seq_of(1, 5), s9.clone())]),
        (
            "(S,5) and (S,9) swapped, headers rewritten",
            vec![(seq_of(1, 9), retarget(s5.clone(), 1, 9)), (seq_of(1, 5), retarget(s9.clone(), 1, 5))],
        ),
        ("(A,3) and (B,3) swapped", vec![(seq_of(2, 3), a3.clone()), (seq_of(1, 3), b3.clone())]),
    ];
    for (name, writes) in attacks {
        for (seq, record) in &writes {
            raw::put_event(p, *seq, record.clone());
        }
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        for (seq, _) in &writes {
            let e = view.event(*seq).map(|e| e.map(|e| e.payload().to_vec()));
            assert!(matches!(&e, Err(e) if is_typed_rejection(e)), "{name}: seq {seq} read {e:?}");
        }
        for stream in [1u128, 2] {
            let outcome: Result<Vec<Vec<u8>>, Error> =
                view.read_stream(stream, 1).unwrap().map(|e| e.map(|e| e.payload().to_vec())).collect();
            let victim = writes.iter().any(|(seq, _)| (seq % 2 == 0) == (stream == 2));
            if victim {
                assert!(
                    matches!(&outcome, Err(e) if is_typed_rejection(e)),
                    "{name}: stream {stream}: {outcome:?}"
                );
            } else {
                assert_eq!(outcome.unwrap().len(), 10, "{name}: the other stream reads");
            }
        }
        assert!(view.check_integrity().is_err(), "{name}");
        drop(view);
        drop(db);
        for (seq, _) in &writes {
            let original =
                [(seq_of(1, 5), &s5), (seq_of(1, 9), &s9), (seq_of(1, 3), &a3), (seq_of(2, 3), &b3)]
                    .into_iter()
                    .find(|(s, _)| s == seq)
                    .map(|(_, r)| (*r).clone())
                    .unwrap();
            raw::put(p, "events", &seq.to_be_bytes(), &original);
        }
    }
    let db = open(p, 1).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 20, "all restored");
}

#[test]
fn swapped_wrapped_keys_of_two_streams_are_refused() {
    let dir = interleaved();
    let p = dir.path();
    let (ka, kb) = (1u128.to_be_bytes(), 2u128.to_be_bytes());
    let (wa, wb) = (raw::get(p, "keys", &ka).unwrap(), raw::get(p, "keys", &kb).unwrap());
    raw::put(p, "keys", &ka, &wb);
    raw::put(p, "keys", &kb, &wa);
    // The keys table no longer matches its authenticator: the store does not open. (Each
    // wrapped key is also bound to its stream: see the unit tests of `crypto`.)
    let e = open(p, 1).map(|_| ());
    assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{e:?}");
    raw::put(p, "keys", &ka, &wa);
    raw::put(p, "keys", &kb, &wb);
    assert_eq!(read(p, 1).unwrap(), b"stream 1 version 01");
}

#[test]
fn a_sealed_blob_moved_to_another_event_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    {
        let db = open(p, 1).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("big", vec![1; 4000])]).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("big", vec![2; 4000])]).unwrap();
    }
    // Point event 2 at event 1's blob (the hash is the last 32 bytes of the record).
    let (r1, mut r2) = (raw::event(p, 1), raw::event(p, 2));
    let n = r2.len();
    r2[n - 32..].copy_from_slice(&r1[r1.len() - 32..]);
    raw::put_event(p, 2, r2);
    assert!(matches!(read(p, 2), Err(Error::DecryptionFailed { seq: 2 })));
    assert_eq!(read(p, 1).unwrap(), vec![1; 4000]);
}

#[test]
fn a_shredded_stream_reads_as_shredded_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let (ana, bo) = (db.stream::<Customer>(1u128), db.stream::<Customer>(2u128));
    ana.append(ExpectedVersion::NoStream, registered("ana@example.com")).unwrap();
    ana.append(ExpectedVersion::Exact(1), Moved { address: "z".repeat(3000) }).unwrap(); // a blob
    bo.append(ExpectedVersion::NoStream, registered("bo@example.com")).unwrap();

    let removed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&removed);
    let mut projection = Projection::new("emails")
        .on::<Registered>(|tx, e, meta| {
            tx.insert(&EMAILS, &meta.stream().to_string(), &e.email.to_string())?;
            Ok(())
        })
        .on_shredded(move |tx, meta| {
            counter.fetch_add(1, Ordering::Relaxed);
            tx.remove(&EMAILS, &meta.stream().to_string())?;
            Ok(())
        });
    projection.catch_up(&db).unwrap();
    assert_eq!(db.begin_read().unwrap().entries(&EMAILS).unwrap().count(), 2);

    assert!(db.shred(1u128).unwrap());
    assert!(!db.shred(1u128).unwrap(), "shredding twice is a no-op");

    let view = db.begin_read().unwrap();
    let ana_events: Vec<_> = view.read_stream(1u128, 1).unwrap().map(Result::unwrap).collect();
    assert_eq!(ana_events.len(), 2, "positions stay");
    for e in &ana_events {
        assert!(e.is_shredded());
        assert!(e.payload().is_empty() && e.metadata().is_empty());
        assert_eq!(e.type_tag(), if e.version() == 1 { "Registered" } else { "Moved" });
        assert!(matches!(e.access::<ArchivedRegistered>(), Err(Error::Shredded { .. })));
    }
    let report = view.check_integrity().unwrap();
    assert_eq!((report.events, report.shredded_events, report.blob_references), (3, 2, 0));
    drop(view);
    assert!(matches!(ana.load(), Err(Error::Shredded { .. })));
    let r = ana.append(ExpectedVersion::Auto, Moved { address: "back".into() });
    assert!(matches!(r, Err(Error::Shredded { .. })), "{r:?}");
    // The other stream is untouched, for reads and writes.
    bo.append(ExpectedVersion::Exact(1), Moved { address: "bo street".into() }).unwrap();
    assert_eq!(bo.load().unwrap().state().addresses, ["bo street"]);
    assert_eq!(raw_blob_count(&db), 0, "the shredded stream's blob is deleted");

    // A rebuilt projection lacks the shredded data; a running one is told by the hook when
    // it meets the stream's events again (here: on the rebuild).
    projection.rebuild(&db).unwrap();
    let emails: Vec<(String, String)> =
        db.begin_read().unwrap().entries(&EMAILS).unwrap().map(Result::unwrap).collect();
    assert_eq!(emails, [(varvedb::StreamId::from(2u128).to_string(), "bo@example.com".to_owned())]);
    assert_eq!(removed.load(Ordering::Relaxed), 2);

    // Processors skip shredded events unless they ask for them; subscriptions mark them.
    let mut mailer = Processor::new("mailer").on::<Registered>(|e, _| {
        assert_eq!(e.email.as_str(), "bo@example.com");
        Ok(())
    });
    mailer.catch_up(&db).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let flags: Vec<bool> = runtime.block_on(db.subscribe(1).take(4).map(|e| e.unwrap().shredded).collect());
    assert_eq!(flags, [true, true, false, false]);

    // It all survives a reopen.
    drop((db, ana, bo));
    let db = open(dir.path(), 1).unwrap();
    assert!(matches!(db.stream::<Customer>(1u128).load(), Err(Error::Shredded { .. })));
    assert_eq!(db.stream::<Customer>(2u128).load().unwrap().version(), 2);
}

#[test]
fn shredding_an_id_with_no_events_retires_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    assert!(db.shred(50u128).unwrap(), "an erasure request may come before any data");
    assert!(!db.shred(50u128).unwrap());
    let r = db.append(50u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"x".to_vec())]);
    assert!(matches!(r, Err(Error::Shredded { .. })), "{r:?}");
    db.append(51u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"y".to_vec())]).unwrap();
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!((report.events, report.shredded_events), (1, 0));
}

const EMAILS: Table<String, String> = Table::new("emails", "by_stream");

fn raw_blob_count(db: &Varve) -> u64 {
    db.begin_read().unwrap().check_integrity().unwrap().blob_references
}

#[test]
fn after_shred_rotation_and_a_compacting_backup_the_shredded_key_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let p = dir.path();
    {
        let db = open(p, 1).unwrap();
        for stream in 1..=50u128 {
            db.append(stream, ExpectedVersion::NoStream, [NewEvent::new("noted", vec![7; 100])]).unwrap();
        }
    }
    let old_keys = raw::all(p, "keys");
    assert_eq!(old_keys.len(), 50);
    let shredded = old_keys.iter().find(|(k, _)| k == &7u128.to_be_bytes()).unwrap().1.clone();
    {
        let db = open(p, 1).unwrap();
        db.backup(backups.path().join("before")).unwrap();
        assert!(db.shred(7u128).unwrap());
        // A view opened before the rotation keeps reading its snapshot.
        let view = db.begin_read().unwrap();
        assert_eq!(db.rotate_master_key(&key(2)).unwrap(), 50);
        assert_eq!(view.event(8).unwrap().unwrap().payload(), vec![7; 100]);
        drop(view);
        // Appends keep working across the rotation, to old streams and new ones.
        db.append(1u128, ExpectedVersion::Exact(1), [NewEvent::new("noted", vec![8; 10])]).unwrap();
        db.append(99u128, ExpectedVersion::NoStream, [NewEvent::new("noted", vec![9; 10])]).unwrap();
        db.backup(backups.path().join("after")).unwrap();
    }
    let before = std::fs::read(backups.path().join("before/data.mdb")).unwrap();
    let after = std::fs::read(backups.path().join("after/data.mdb")).unwrap();
    let live = std::fs::read(p.join("data.mdb")).unwrap();
    assert_eq!(count(&before, &shredded), 1, "control: the search finds the key in the earlier backup");
    assert_eq!(count(&after, &shredded), 0, "the shredded stream's wrapped key in the backup");
    for (_, old) in &old_keys {
        assert_eq!(count(&after, old), 0, "no key wrapped under the old master survives in the backup");
    }
    // The live file may still hold old bytes in freed pages: that is what the backup is for.
    eprintln!("copies of the shredded key left in the live file's free pages: {}", count(&live, &shredded));

    assert!(matches!(open(p, 1), Err(Error::WrongKey)), "the old master no longer opens the store");
    let restored = open(&backups.path().join("after"), 2).unwrap();
    let view = restored.begin_read().unwrap();
    assert!(view.event(7).unwrap().unwrap().is_shredded());
    assert_eq!(view.event(8).unwrap().unwrap().payload(), vec![7; 100]);
    assert_eq!(view.check_integrity().unwrap().events, 52);
    drop(view);
    assert!(matches!(open(&backups.path().join("before"), 2), Err(Error::WrongKey)));
    assert!(backups.path().join("after").join("data.mdb").exists());
    assert!(restored.backup(backups.path().join("after")).is_err(), "a backup never overwrites");
}

/// Two writer threads race on one stream (one data key): every append states the version it
/// read, so many lose with a conflict and retry against the new version, and every fourth
/// committed batch is sent again with the same event ids, as a client that lost the reply
/// would (the store answers it from what is stored, sealing nothing new). Then every nonce is
/// read back from the file. This shows the writer never reuses a nonce across a million
/// seals, conflicts, retries and group commits; across processes, uniqueness rests on the
/// randomness of 96-bit nonces (see docs/encryption.md for the bound).
#[test]
fn a_million_encryptions_under_one_key_with_conflicts_and_retries_never_repeat_a_nonce() {
    const EVENTS: u64 = 1_000_000;
    const BATCH: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), 1).unwrap();
    let conflicts = AtomicU64::new(0);
    let replays = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let next_id = AtomicU64::new(1);
    std::thread::scope(|s| {
        for writer in 0..2u8 {
            let (db, conflicts, replays, written, next_id) = (&db, &conflicts, &replays, &written, &next_id);
            s.spawn(move || {
                let mut committed = 0u64;
                while written.load(Ordering::SeqCst) < EVENTS {
                    let version = db.begin_read().unwrap().stream_version(1u128).unwrap();
                    let first_id = next_id.fetch_add(BATCH, Ordering::Relaxed);
                    let events: Vec<NewEvent> = (0..BATCH)
                        .map(|i| {
                            NewEvent::new("tick", [writer, i as u8].to_vec())
                                .with_id(u128::from(first_id + i))
                        })
                        .collect();
                    let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    match db.append(1u128, expected, events.clone()) {
                        Ok(first) => {
                            written.fetch_add(BATCH, Ordering::SeqCst);
                            committed += 1;
                            if committed.is_multiple_of(4) {
                                let again = db.append(1u128, expected, events).unwrap();
                                assert!(again.deduplicated, "a replay is answered from the store");
                                assert_eq!(
                                    (again.first_seq, again.last_seq),
                                    (first.first_seq, first.last_seq),
                                    "with the stored positions"
                                );
                                replays.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(Error::ConcurrencyConflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert!(replays.load(Ordering::Relaxed) > 100, "batches were replayed");
    let total = written.load(Ordering::SeqCst);
    assert!(total >= EVENTS);
    assert!(conflicts.load(Ordering::Relaxed) > 0, "the writers raced");
    drop(db);

    assert_eq!(raw::all(dir.path(), "keys").len(), 1, "one stream, one data key");
    let mut nonces = HashSet::with_capacity(total as usize);
    for (_, record) in raw::all(dir.path(), "events") {
        assert_eq!(record[4] & 0x01, 0x01, "sealed");
        let at = raw::body_offset(&record);
        let nonce: [u8; 12] = record[at..at + 12].try_into().unwrap();
        assert!(nonces.insert(nonce), "nonce {nonce:02x?} used twice");
    }
    assert_eq!(nonces.len() as u64, total);
}

#[test]
fn every_record_of_an_encrypted_store_must_be_sealed() {
    let dir = interleaved();
    let p = dir.path();
    let seq = seq_of(1, 5);
    let record = raw::event(p, seq);
    // The attacker turns the record into a plain one carrying text of their choosing: flag
    // cleared, the sealed body (nonce, ciphertext, tag) replaced by plaintext of the stated
    // length, checksum forged.
    let at = raw::body_offset(&record);
    let mut forged = record[..at].to_vec();
    forged[4] &= !0x01;
    forged.extend_from_slice(b"stream 1 version 66");
    assert_eq!(record.len() - forged.len(), 28, "nonce and tag are gone");
    raw::put_event(p, seq, forged);
    let e = read(p, seq);
    assert!(
        matches!(&e, Err(Error::Corrupt { seq: s, reason }) if *s == seq && reason.contains("unencrypted")),
        "{e:?}"
    );
    {
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        let by_stream: Result<Vec<_>, _> = view.read_stream(1u128, 1).unwrap().collect();
        assert!(matches!(by_stream, Err(Error::Corrupt { .. })));
        assert!(view.check_integrity().is_err());
    }
    raw::put(p, "events", &seq.to_be_bytes(), &record);
    assert_eq!(read(p, seq).unwrap(), b"stream 1 version 05");
}

#[test]
fn forged_or_moved_shredded_markers_do_not_hide_a_stream() {
    let dir = interleaved();
    let p = dir.path();
    {
        let db = open(p, 1).unwrap();
        assert!(db.shred(2u128).unwrap());
    }
    let (ka, kb) = (1u128.to_be_bytes(), 2u128.to_be_bytes());
    let (wa, marker) = (raw::get(p, "keys", &ka).unwrap(), raw::get(p, "keys", &kb).unwrap());
    assert_eq!((wa.len(), marker.len()), (65, 37));

    // A marker written without the master key, and stream 2's real marker moved to stream 1:
    // stream 1 must not read as shredded, and must not take appends as if it were.
    for (name, fake) in [("bare marker byte", vec![2u8]), ("another stream's marker", marker.clone())] {
        raw::put(p, "keys", &ka, &fake);
        let e = open(p, 1).map(|_| ());
        assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{name}: {e:?}");
        raw::put(p, "keys", &ka, &wa);
    }

    // One of stream 1's records relabelled as an event of the shredded stream 2: it must not
    // quietly vanish as "shredded".
    let seq = seq_of(1, 5);
    let record = raw::event(p, seq);
    let mut moved = record.clone();
    moved[6..22].copy_from_slice(&2u128.to_le_bytes());
    raw::put_event(p, seq, moved);
    {
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        let e = view.event(seq).map(|e| e.map(|e| e.is_shredded()));
        assert!(matches!(e, Err(Error::Corrupt { .. })), "{e:?}");
        let all: Result<Vec<_>, _> = view.read_all(1).unwrap().collect();
        assert!(all.is_err(), "a log scan reports it too");
        assert!(view.check_integrity().is_err());
    }
    raw::put(p, "events", &seq.to_be_bytes(), &record);

    // The same with the (unauthenticated) stream index rewritten to match: stream 1's newest
    // event relabelled as a version stream 2 never had. The marker binds the stream's last
    // version, so it still cannot pass as shredded.
    let seq = seq_of(1, 10);
    let record = raw::event(p, seq);
    let mut moved = record.clone();
    moved[6..22].copy_from_slice(&2u128.to_le_bytes());
    moved[30] = 65;
    raw::put_event(p, seq, moved);
    // Stream 1's chunk of entries loses version 10; stream 2 gets a chunk for 65 to 128.
    let entries = index::get(p, 1, 0);
    index::put(p, 1, 0, &entries[..9]);
    index::put(p, 2, 1, &[seq]);
    {
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        let e = view.event(seq).map(|e| e.map(|e| e.is_shredded()));
        assert!(matches!(&e, Err(Error::Corrupt { reason, .. }) if reason.contains("last version")), "{e:?}");
        assert!(view.check_integrity().is_err());
    }
    raw::put(p, "events", &seq.to_be_bytes(), &record);
    index::delete(p, 2, 1);
    index::put(p, 1, 0, &entries);
    let db = open(p, 1).unwrap();
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!((report.events, report.shredded_events), (20, 10), "restored");
}

#[test]
fn the_record_that_a_store_is_encrypted_cannot_be_stripped() {
    let dir = interleaved();
    let p = dir.path();
    let plain = tempfile::tempdir().unwrap();
    Varve::open(plain.path()).unwrap();
    let format = |dir: &Path| raw::get(dir, "meta", b"format_version").unwrap();
    // A build that knows only the plain format refuses an encrypted store rather than write
    // plaintext.
    assert_eq!(format(plain.path()), 10u32.to_le_bytes());
    assert_eq!(format(p), 11u32.to_le_bytes());

    let check = raw::get(p, "meta", b"encryption").unwrap();
    raw::delete(p, "meta", b"encryption");
    assert!(matches!(Varve::open(p), Err(Error::CorruptMeta { .. })), "check value deleted, no key");
    assert!(matches!(open(p, 1), Err(Error::CorruptMeta { .. })), "check value deleted, with the key");
    raw::put(p, "meta", b"encryption", &check);
    // Set to the plain format, or to a plain format before it (which an open would otherwise
    // upgrade): refused, and left as it is.
    for plain in [10u32, 8, 6, 4] {
        raw::put(p, "meta", b"format_version", &plain.to_le_bytes());
        assert!(matches!(Varve::open(p), Err(Error::CorruptMeta { .. })), "format {plain}, no key");
        assert!(matches!(open(p, 1), Err(Error::CorruptMeta { .. })), "format {plain}, with the key");
        assert_eq!(format(p), plain.to_le_bytes());
    }
    // Both stripped: a keyless process must still not take it for a plain store (it would
    // append plaintext beside the sealed events), and a key cannot be added to it either.
    raw::delete(p, "meta", b"encryption");
    assert!(matches!(Varve::open(p), Err(Error::CorruptMeta { .. })), "both stripped, no key");
    assert!(matches!(open(p, 1), Err(Error::NotEncrypted { .. })), "both stripped, with the key");
    raw::put(p, "meta", b"encryption", &check);
    raw::put(p, "meta", b"format_version", &11u32.to_le_bytes());
    assert_eq!(read(p, 1).unwrap(), b"stream 1 version 01");
}

/// A `key-child` process (`tests/support/key_child.rs`) holding the same store open.
struct Child {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Child {
    fn start(dir: &Path, key: Option<u8>) -> Child {
        use std::process::{Command, Stdio};
        let mut process = Command::new(env!("CARGO_BIN_EXE_key-child"))
            .arg(dir)
            .arg(key.map_or("none".to_owned(), |k| k.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = process.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(process.stdout.take().unwrap());
        let mut child = Child { process, stdin, stdout };
        assert_eq!(child.line(), "opened");
        child
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        self.line()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        // A child that hangs is killed rather than hanging the test.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn a_process_opened_without_a_key_cannot_write_once_another_enables_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut child = Child::start(p, None); // creates the store, unencrypted and empty
    let db = open(p, 1).unwrap(); // still empty: this process turns encryption on
    assert!(db.is_encrypted());
    db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"parent secret".to_vec())]).unwrap();

    let answer = child.ask("append 2");
    assert!(answer.starts_with("err KeyRequired"), "{answer}");
    let answer = child.ask("read 1");
    assert!(answer.starts_with("err "), "the keyless process reads nothing: {answer}");
    drop(child);

    db.append(1u128, ExpectedVersion::Exact(1), [NewEvent::new("noted", b"more".to_vec())]).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.check_integrity().unwrap().events, 2, "no event of the child's");
    drop(view);
    drop(db);
    let file = std::fs::read(p.join("data.mdb")).unwrap();
    assert_eq!(count(&file, b"written by the child"), 0);
    assert_eq!(count(&file, b"parent secret"), 0);
}

#[test]
fn a_process_holding_the_old_master_key_stops_writing_after_another_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let db = open(p, 1).unwrap();
    db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"one".to_vec())]).unwrap();
    let mut child = Child::start(p, Some(1));
    assert_eq!(child.ask("append 2"), "ok 2", "same key, both processes write");
    assert_eq!(child.ask("read 1"), "ok Some(3)");

    assert_eq!(db.rotate_master_key(&key(2)).unwrap(), 2);
    for command in ["append 3", "append 1", "rotate 3"] {
        let answer = child.ask(command);
        assert!(answer.starts_with("err WrongKey"), "{command}: {answer}");
    }
    let answer = child.ask("read 1");
    assert!(answer.starts_with("err CorruptKey"), "keys now wrapped under another epoch: {answer}");
    drop(child);

    db.append(4u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"four".to_vec())]).unwrap();
    drop(db);
    assert!(matches!(open(p, 1), Err(Error::WrongKey)));
    let db = open(p, 2).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.check_integrity().unwrap().events, 3);
    let payloads: Vec<Vec<u8>> = view.read_all(1).unwrap().map(|e| e.unwrap().payload().to_vec()).collect();
    assert_eq!(payloads, [b"one".to_vec(), b"written by the child to 2".to_vec(), b"four".to_vec()]);
}

/// Copies `name`'s entry `k` from the store in `from` to the store in `to`.
fn copy_entry(from: &Path, to: &Path, name: &str, k: &[u8]) {
    raw::put(to, name, k, &raw::get(from, name, k).unwrap());
}

#[test]
fn keys_markers_and_files_of_another_store_under_the_same_master_key_are_refused() {
    // Two stores under one master key (tenants, a staging clone): same stream ids, same
    // seqs, both at master epoch 1.
    let (x, y) = (interleaved(), interleaved());
    let (px, py) = (x.path(), y.path());
    let id = |p: &Path| open(p, 1).unwrap().store_id().unwrap();
    let (idx, idy) = (id(px), id(py));
    assert_ne!(idx, idy, "every store has an identity of its own");
    let pristine = std::fs::read(py.join("data.mdb")).unwrap();
    let restore = || std::fs::write(py.join("data.mdb"), &pristine).unwrap();

    // X's stream 1 moved into Y whole: wrapped key, record, index entry and head.
    let k1 = 1u128.to_be_bytes();
    copy_entry(px, py, "keys", &k1);
    for v in 1..=10u32 {
        let seq = seq_of(1, u64::from(v));
        copy_entry(px, py, "events", &seq.to_be_bytes());
    }
    // Stream 1's ten index entries are in its head.
    copy_entry(px, py, "stream_heads", &k1);
    let e = open(py, 1).map(|_| ());
    assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{e:?}");
    // With X's authenticator of its keys table brought along too.
    copy_entry(px, py, "meta", b"keys_auth");
    let e = open(py, 1).map(|_| ());
    assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{e:?}");
    restore();

    // X's shredded marker over Y's stream 2: Y's stream must not read as shredded.
    open(px, 1).unwrap().shred(2u128).unwrap();
    copy_entry(px, py, "keys", &2u128.to_be_bytes());
    let e = open(py, 1).map(|_| ());
    assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{e:?}");
    restore();
    assert_eq!(read(py, seq_of(2, 1)).unwrap(), b"stream 2 version 01", "Y untouched");

    // X's whole file in Y's place: refused where Y's identity is pinned.
    let pinned = |p: &Path| Options::new().encryption_key(key(1)).expect_store_id(idy).open(p).map(|_| ());
    pinned(py).unwrap();
    std::fs::copy(px.join("data.mdb"), py.join("data.mdb")).unwrap();
    let e = pinned(py);
    assert!(
        matches!(&e, Err(Error::StoreMismatch { expected, found: Some(found), .. }) if *expected == idy && *found == idx),
        "{e:?}"
    );
    // ...and with its identity edited to Y's, the master key no longer opens it.
    raw::put(py, "meta", b"store_id", idy.as_bytes());
    assert!(matches!(pinned(py), Err(Error::WrongKey)));
    restore();
    pinned(py).unwrap();
}

#[test]
fn a_forged_header_of_a_shredded_event_is_refused_by_reads_and_check_integrity() {
    let dir = interleaved();
    let p = dir.path();
    open(p, 1).unwrap().shred(2u128).unwrap();
    let seq = seq_of(2, 4);
    let record = raw::event(p, seq);
    // The schema version is the second one-byte number, after the version (the events have
    // no metadata, so no metadata length); the type tag ends where the sealed body starts.
    assert_eq!(record[4] & 0x08, 0, "no metadata");
    let tag_at = raw::body_offset(&record) - usize::from(record[5]);
    let forgeries: [(&str, usize, &[u8]); 3] = [
        ("timestamp", 22, &1u64.to_le_bytes()),
        ("schema version", 31, &[7]),
        ("type tag", tag_at, b"paid!"),
    ];
    for (field, at, bytes) in forgeries {
        let mut forged = record.clone();
        forged[at..at + bytes.len()].copy_from_slice(bytes);
        raw::put_event(p, seq, forged);
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        let e = view.event(seq).map(|e| e.map(|e| e.is_shredded()));
        assert!(
            matches!(&e, Err(Error::Corrupt { reason, .. }) if reason.contains("header")),
            "{field}: {e:?}"
        );
        let e = view.check_integrity();
        assert!(matches!(&e, Err(Error::Corrupt { seq: s, .. }) if *s == seq), "{field}: {e:?}");
        drop(view);
        drop(db);
        raw::put(p, "events", &seq.to_be_bytes(), &record);
    }
    // The MAC deleted, or another event's put in its place.
    let mac = raw::get(p, "shredded_headers", &seq.to_be_bytes()).unwrap();
    let other = raw::get(p, "shredded_headers", &seq_of(2, 5).to_be_bytes()).unwrap();
    for (what, value) in [("deleted", None), ("another event's", Some(other))] {
        match &value {
            None => raw::delete(p, "shredded_headers", &seq.to_be_bytes()),
            Some(v) => raw::put(p, "shredded_headers", &seq.to_be_bytes(), v),
        }
        let db = open(p, 1).unwrap();
        let view = db.begin_read().unwrap();
        assert!(matches!(view.event(seq), Err(Error::Corrupt { .. })), "{what}");
        assert!(view.check_integrity().is_err(), "{what}");
        drop(view);
        drop(db);
        raw::put(p, "shredded_headers", &seq.to_be_bytes(), &mac);
    }
    // Untouched, every shredded header verifies, also after the MACs moved to a new key.
    let db = open(p, 1).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().shredded_events, 10);
    db.rotate_master_key(&key(2)).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.check_integrity().unwrap().shredded_events, 10);
    assert_eq!(view.event(seq).unwrap().unwrap().type_tag(), "noted");
}

#[test]
fn a_data_key_or_authenticator_written_back_after_shredding_is_refused() {
    let dir = interleaved();
    let p = dir.path();
    let k2 = 2u128.to_be_bytes();
    let mut app = Child::start(p, Some(1));
    assert_eq!(app.ask(&format!("read {}", seq_of(2, 1))), "ok Some(19)");
    // The writer has the stream's key cached from this append.
    assert_eq!(app.ask("append 2"), "ok 21");
    // Another process keeps what the file held before the shred...
    let (old_key, old_auth) = (raw::get(p, "keys", &k2).unwrap(), raw::get(p, "meta", b"keys_auth").unwrap());
    assert_eq!(app.ask("shred 2"), "ok true");
    let shred_auth = raw::get(p, "meta", b"keys_auth").unwrap();
    // ...and writes the old wrapped key back while the application runs.
    raw::put(p, "keys", &k2, &old_key);
    let read2 = format!("read {}", seq_of(2, 1));
    let answer = app.ask(&read2);
    assert!(answer.starts_with("err CorruptKey"), "{answer}");
    let answer = app.ask("append 2");
    assert!(answer.starts_with("err CorruptKey"), "{answer}");
    // With the old authenticator of the keys table too: the application has seen a newer one.
    raw::put(p, "meta", b"keys_auth", &old_auth);
    let answer = app.ask("append 9");
    assert!(answer.starts_with("err CorruptIndex"), "a new stream's key: {answer}");
    assert!(app.ask(&read2).starts_with("err CorruptKey"));
    assert_eq!(app.ask(&format!("read {}", seq_of(1, 1))), "ok Some(19)", "other streams read on");
    drop(app);

    // The key alone, at the next open: the table no longer matches its authenticator.
    raw::put(p, "meta", b"keys_auth", &shred_auth);
    let e = open(p, 1).map(|_| ());
    assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{e:?}");
    // The old key with the old authenticator: the whole keys table rolled back together.
    // Before a rotation, nothing in the file can tell (docs/encryption.md); the rotation
    // below is what ends it.
    raw::put(p, "meta", b"keys_auth", &old_auth);
    let db = open(p, 1).unwrap();
    assert!(db.shred(2u128).unwrap());
    drop(db);
    let (marker, auth) = (raw::get(p, "keys", &k2).unwrap(), raw::get(p, "meta", b"keys_auth").unwrap());
    let db = open(p, 1).unwrap();
    db.rotate_master_key(&key(2)).unwrap();
    drop(db);
    for (what, k, v) in [
        ("the pre-rotation wrapped key", &k2[..], &old_key),
        ("the pre-rotation marker", &k2[..], &marker),
        ("the pre-rotation authenticator", &b"keys_auth"[..], &auth),
    ] {
        let name = if k == b"keys_auth" { "meta" } else { "keys" };
        let now = raw::get(p, name, k).unwrap();
        raw::put(p, name, k, v);
        let e = open(p, 2).map(|_| ());
        assert!(matches!(&e, Err(Error::CorruptIndex { table: "keys", .. })), "{what}: {e:?}");
        raw::put(p, name, k, &now);
    }
    // The old key together with the old authenticator: also refused after the rotation.
    let now = (raw::get(p, "keys", &k2).unwrap(), raw::get(p, "meta", b"keys_auth").unwrap());
    raw::put(p, "keys", &k2, &old_key);
    raw::put(p, "meta", b"keys_auth", &old_auth);
    assert!(matches!(open(p, 2), Err(Error::CorruptIndex { table: "keys", .. })));
    raw::put(p, "keys", &k2, &now.0);
    raw::put(p, "meta", b"keys_auth", &now.1);
    // A marker deleted: the table no longer matches either.
    raw::delete(p, "keys", &k2);
    assert!(matches!(open(p, 2), Err(Error::CorruptIndex { table: "keys", .. })));
    raw::put(p, "keys", &k2, &now.0);
    let db = open(p, 2).unwrap();
    assert!(db.begin_read().unwrap().event(seq_of(2, 1)).unwrap().unwrap().is_shredded());
}

#[test]
fn the_retired_master_key_is_not_kept_and_rotation_needs_a_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let db = open(&live, 1).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())]).unwrap();
    db.backup(backup.path().join("before")).unwrap();
    assert!(matches!(db.rotate_master_key(&key(1)), Err(Error::SameMasterKey)));
    assert_eq!(db.rotate_master_key(&key(2)).unwrap(), 1);
    // The options the store keeps hold no master key, so they open no pre-rotation copy.
    let e = db.options().clone().open(backup.path().join("before")).map(|_| ());
    assert!(matches!(e, Err(Error::KeyRequired { .. })), "{e:?}");
    let e = db.options().clone().encryption_key(key(2)).open(backup.path().join("before")).map(|_| ());
    assert!(matches!(e, Err(Error::WrongKey)), "{e:?}");
    assert_eq!(db.begin_read().unwrap().event(1).unwrap().unwrap().payload(), b"x");
}

/// Every file under `dir`, with its path.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[test]
fn after_the_erasure_procedure_no_file_of_the_store_holds_the_erased_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let email = |n: u128| format!("customer-{n:02}@example.com");
    let mut projection = Projection::new("emails")
        .on::<Registered>(|tx, e, meta| {
            tx.insert(&EMAILS, &meta.stream().to_string(), &e.email.to_string())?;
            Ok(())
        })
        .on_shredded(|tx, meta| {
            tx.remove(&EMAILS, &meta.stream().to_string())?;
            Ok(())
        });
    let db = open(p, 1).unwrap();
    for n in 1..=40u128 {
        let customer = db.stream::<Customer>(n);
        customer.append(ExpectedVersion::NoStream, registered(&email(n))).unwrap();
        customer.append(ExpectedVersion::Exact(1), Moved { address: format!("{n} Long Street") }).unwrap();
        projection.catch_up(&db).unwrap();
    }
    let erased = email(7);
    let wrapped = {
        drop(db);
        let key = raw::get(p, "keys", &7u128.to_be_bytes()).unwrap();
        let found: usize = files_under(p).iter().map(|(_, bytes)| count(bytes, erased.as_bytes())).sum();
        assert!(found >= 1, "control: the read model holds the address in the clear");
        key
    };

    // The documented procedure: shred, rebuild the read model (its handler forgets the
    // stream), rotate, close, compact in place.
    let db = open(p, 1).unwrap();
    assert!(db.shred(7u128).unwrap());
    projection.rebuild(&db).unwrap();
    db.rotate_master_key(&key(2)).unwrap();
    drop(db);
    let live_before = count(&std::fs::read(p.join("data.mdb")).unwrap(), erased.as_bytes());
    varvedb::compact_in_place(p).unwrap();

    for (path, bytes) in files_under(p) {
        assert_eq!(count(&bytes, erased.as_bytes()), 0, "{}", path.display());
        assert_eq!(count(&bytes, &wrapped), 0, "the shredded key in {}", path.display());
    }
    eprintln!("copies of the erased address in the live file before compacting: {live_before}");
    let db = open(p, 2).unwrap();
    let view = db.begin_read().unwrap();
    assert!(view.event(seq_for_customer(7)).unwrap().unwrap().is_shredded());
    assert_eq!(view.entries(&EMAILS).unwrap().count(), 39);
    assert_eq!(view.check_integrity().unwrap().events, 80);
    drop(view);
    assert_eq!(db.stream::<Customer>(8u128).load().unwrap().state().email, email(8));
}

/// The seq of customer `n`'s first event in the erasure test (two events per customer).
fn seq_for_customer(n: u64) -> u64 {
    2 * n - 1
}

#[test]
fn compacting_in_place_refuses_a_store_that_is_open() {
    let dir = interleaved();
    let p = dir.path();
    let db = open(p, 1).unwrap();
    assert!(matches!(varvedb::compact_in_place(p), Err(Error::StoreInUse { .. })), "open in this process");
    drop(db);
    let child = Child::start(p, Some(1));
    assert!(matches!(varvedb::compact_in_place(p), Err(Error::StoreInUse { .. })), "open in another");
    drop(child);
    let before = open(p, 1).unwrap().store_id();
    varvedb::compact_in_place(p).unwrap();
    let db = open(p, 1).unwrap();
    assert_eq!(db.store_id(), before, "the copy is the same store");
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 20);
}

/// SIGKILL lands at random points of `compact_in_place` (a child compacting in a loop): the
/// store must open with every event after each kill. Kills: `VARVEDB_COMPACT_KILLS` (30).
#[test]
fn sigkill_during_compaction_never_loses_the_store() {
    use std::io::Read;
    let kills: usize = std::env::var("VARVEDB_COMPACT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let mut last = 0u64;
    {
        let db = open(p, 1).unwrap();
        for stream in 1..=200u128 {
            let events = (0..20)
                .map(|v| NewEvent::new("noted", format!("{stream}/{v} {}", "x".repeat(300)).into_bytes()));
            last = db.append(stream, ExpectedVersion::NoStream, events).unwrap().last_seq;
        }
        for stream in (1..=200u128).step_by(3) {
            db.shred(stream).unwrap();
        }
    }
    // How long one compaction takes here, to spread the kills over it.
    let t = std::time::Instant::now();
    varvedb::compact_in_place(p).unwrap();
    let spread = (t.elapsed() * 3).as_micros().max(2_000) as u64 + 3_000;
    let mut rng = fastrand::Rng::with_seed(16);
    let (mut mid, mut done) = (0, 0);
    for kill in 0..kills {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_compact-child"))
            .arg(p)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rng.u64(0..spread)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let mut said = String::new();
        child.stdout.take().unwrap().read_to_string(&mut said).unwrap();
        assert!(!status.success(), "kill {kill}: the child never ends on its own");
        done += said.lines().filter(|l| *l == "done").count();
        mid += usize::from(said.lines().last() == Some("start"));

        let db = open(p, 1).unwrap_or_else(|e| panic!("kill {kill}: the store does not open: {e:?}"));
        let view = db.begin_read().unwrap();
        assert_eq!(view.last_seq().unwrap(), last, "kill {kill}");
        let report = view.check_integrity().unwrap_or_else(|e| panic!("kill {kill}: {e:?}"));
        assert_eq!(report.events, last);
        assert!(view.event(21).unwrap().unwrap().payload().starts_with(b"2/0 "), "kill {kill}");
        drop(view);
        last = db
            .append(
                1000u128 + kill as u128,
                ExpectedVersion::NoStream,
                [NewEvent::new("noted", b"after".to_vec())],
            )
            .unwrap()
            .last_seq;
    }
    eprintln!("{kills} kills: {mid} during a compaction, {done} compactions completed");
    assert!(mid > 0, "no kill landed during a compaction: the test did not test anything");
    let names: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "data.mdb" || n == "lock.mdb"),
        "what crashed runs left is removed: {names:?}"
    );
}

#[test]
fn a_store_of_the_encrypted_format_without_identities_is_refused_with_a_typed_error() {
    let dir = interleaved();
    let p = dir.path();
    raw::put(p, "meta", b"format_version", &2u32.to_le_bytes());
    let before = std::fs::read(p.join("data.mdb")).unwrap();
    let e = open(p, 1).map(|_| ());
    assert!(matches!(e, Err(Error::IncompatibleFormat { found: 2, supported: 11 })), "{e:?}");
    assert_eq!(std::fs::read(p.join("data.mdb")).unwrap(), before, "open wrote nothing");
}

#[test]
fn a_stream_whose_head_is_damaged_can_still_be_shredded() {
    // 100 events in stream 3: one full chunk of index entries in `streams`, 36 in its head.
    let dir = interleaved();
    let p = dir.path();
    {
        let db = open(p, 1).unwrap();
        let events = (0..100u32).map(|i| NewEvent::new("noted", vec![0xcc; 300 + i as usize]));
        db.append(3u128, ExpectedVersion::NoStream, events).unwrap();
    }
    let k = 3u128.to_be_bytes();
    let mut head = raw::get(p, "stream_heads", &k).unwrap();
    head[5] ^= 0x01;
    raw::put(p, "stream_heads", &k, &head);
    let db = open(p, 1).unwrap();
    // The erasure goes ahead: the key is destroyed, and the events the full chunk names are
    // shredded, whatever the head says.
    assert!(db.shred(3u128).unwrap());
    let view = db.begin_read().unwrap();
    assert!(view.event(21).unwrap().unwrap().is_shredded(), "version 1 of stream 3");
    assert!(view.check_integrity().is_err(), "the head is still damaged");
    drop(view);
    drop(db);
    assert_eq!(raw::get(p, "keys", &k).unwrap().len(), 37, "a shredded marker in place of the key");
}
