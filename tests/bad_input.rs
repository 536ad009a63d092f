//! Bad input and damaged files give typed errors, leave the store as it was, and never panic.

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve, WriteBatch};

#[path = "support/damage.rs"]
mod damage;
use damage::flip_in_file;

fn ev(payload: &[u8]) -> NewEvent {
    NewEvent::new("x", payload.to_vec())
}

/// Every event as (seq, stream, version, payload): the observable state of the store.
fn snapshot(db: &Varve) -> Vec<(u64, u128, u32, Vec<u8>)> {
    let view = db.begin_read().unwrap();
    view.read_all(1)
        .unwrap()
        .map(|e| e.map(|e| (e.seq(), e.stream().as_u128(), e.version(), e.payload().to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

fn seeded() -> (tempfile::TempDir, Varve) {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::NoStream, [ev(b"a"), ev(b"b")]).unwrap();
    (dir, db)
}

#[test]
fn rejected_requests_leave_the_store_unchanged() {
    let (_dir, db) = seeded();
    let before = snapshot(&db);
    let cases: Vec<(&str, Result<Vec<varvedb::Appended>, Error>)> = vec![
        ("empty batch", db.write(WriteBatch::new())),
        ("append of no events", db.append(1u128, ExpectedVersion::Auto, []).map(|a| vec![a])),
        (
            "oversize payload",
            db.append(1u128, ExpectedVersion::Auto, [ev(&vec![0; (16 << 20) + 1])]).map(|a| vec![a]),
        ),
        (
            "exact on a missing stream",
            db.append(2u128, ExpectedVersion::Exact(3), [ev(b"")]).map(|a| vec![a]),
        ),
        (
            "empty type tag",
            db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("", vec![])]).map(|a| vec![a]),
        ),
        (
            "overlong type tag",
            db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("t".repeat(256), vec![])])
                .map(|a| vec![a]),
        ),
        ("empty part of a batch", {
            let mut b = WriteBatch::new();
            b.append(3u128, ExpectedVersion::Auto, [ev(b"")]).append(4u128, ExpectedVersion::Auto, []);
            db.write(b)
        }),
    ];
    for (what, result) in cases {
        let err = result.expect_err(what);
        let ok = match what {
            "empty batch" | "append of no events" | "empty part of a batch" => {
                matches!(err, Error::EmptyBatch)
            }
            "oversize payload" => {
                matches!(err, Error::EventTooLarge { index: 0, max, .. } if max == 16 << 20)
            }
            "exact on a missing stream" => {
                matches!(
                    err,
                    Error::ConcurrencyConflict { expected: ExpectedVersion::Exact(3), actual: None, .. }
                )
            }
            _ => matches!(err, Error::InvalidTag { what: "type tag", .. }),
        };
        assert!(ok, "{what}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(snapshot(&db), before);
    db.begin_read().unwrap().check_integrity().unwrap();
    // The writer is still healthy after all that.
    db.append(1u128, ExpectedVersion::Exact(2), [ev(b"c")]).unwrap();
}

#[test]
fn a_flipped_byte_on_disk_is_reported_as_corruption_of_that_seq() {
    let dir = tempfile::tempdir().unwrap();
    let needle = b"precious-payload-of-seq-2";
    {
        let db = Varve::open(dir.path()).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [ev(b"first")]).unwrap();
        db.append(2u128, ExpectedVersion::Auto, [ev(needle)]).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [ev(b"third")]).unwrap();
    }
    assert!(flip_in_file(dir.path(), needle, 10) >= 1, "payload not found in the file");

    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert!(matches!(view.event(2), Err(Error::Corrupt { seq: 2, .. })));
    let by_stream: Vec<_> = view.read_stream(2u128, 1).unwrap().collect();
    assert!(matches!(by_stream.as_slice(), [Err(Error::Corrupt { seq: 2, .. })]));
    let log: Vec<_> = view.read_all(1).unwrap().collect();
    assert!(matches!(log[1], Err(Error::Corrupt { seq: 2, .. })));
    assert_eq!(log[0].as_ref().unwrap().payload(), b"first", "neighbours still read");
    assert_eq!(log[2].as_ref().unwrap().payload(), b"third");
    let err = view.check_integrity().unwrap_err();
    assert!(matches!(err, Error::Corrupt { seq: 2, .. }));
    assert!(err.to_string().contains("seq 2"), "{err}");
    drop(view);
    // New writes still work and do not disturb the damage report.
    let a = db.append(1u128, ExpectedVersion::Exact(2), [ev(b"fourth")]).unwrap();
    assert_eq!(a.first_seq, 4);
    assert_eq!(db.begin_read().unwrap().event(4).unwrap().unwrap().payload(), b"fourth");
}

#[test]
fn a_damaged_blob_is_reported_as_corruption_of_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..4096u32).flat_map(u32::to_le_bytes).collect();
    {
        let db = Varve::open(dir.path()).unwrap();
        db.append(1u128, ExpectedVersion::Auto, [ev(&blob)]).unwrap();
    }
    assert!(flip_in_file(dir.path(), &blob[1000..1064], 3) >= 1);
    let db = Varve::open(dir.path()).unwrap();
    assert!(matches!(db.begin_read().unwrap().event(1), Err(Error::Corrupt { seq: 1, .. })));
}

#[test]
fn a_full_map_is_store_full_and_keeps_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0u64;
    {
        let db = Options::new().map_size(1 << 20).open(dir.path()).unwrap();
        let err = loop {
            // Distinct 900-byte payloads stay inline and are not deduplicated.
            let payload: Vec<u8> = (0..900u32).map(|i| (u64::from(i) * 31 + acked) as u8).collect();
            match db.append(1u128, ExpectedVersion::Exact(acked as u32), [ev(&payload)]) {
                Ok(_) => acked += 1,
                Err(e) => break e,
            }
            assert!(acked < 10_000, "a 1 MiB map never filled");
        };
        assert!(matches!(err, Error::StoreFull { map_size } if map_size == 1 << 20), "{err:?}");
        assert!(err.to_string().contains("map_size"), "the error names the option: {err}");
        let view = db.begin_read().unwrap();
        assert_eq!(view.check_integrity().unwrap().events, acked);
        drop(view);
        // A small event may still fit; the writer keeps working.
        let _ = db.append(2u128, ExpectedVersion::Auto, [ev(b"")]);
    }
    let db = Options::new().map_size(8 << 20).open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().stream_version(1u128).unwrap(), Some(acked as u32));
    db.append(1u128, ExpectedVersion::Exact(acked as u32), [ev(&[7; 900])]).unwrap();
    db.begin_read().unwrap().check_integrity().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_overflows_the_map_fails_alone_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().map_size(1 << 20).open(dir.path()).unwrap();
    for round in 0..5u128 {
        let tasks: Vec<_> = (0..32u128)
            .map(|i| {
                let db = db.clone();
                // One request per round cannot fit in the map; the others are tiny.
                let payload = if i == 13 { vec![i as u8; 3 << 20] } else { vec![i as u8; 8] };
                let stream = round * 100 + i;
                tokio::spawn(async move {
                    (i, db.append_async(stream, ExpectedVersion::NoStream, [ev(&payload)]).await)
                })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            if i == 13 {
                assert!(matches!(r, Err(Error::StoreFull { .. })), "round {round}: {r:?}");
            } else {
                r.unwrap_or_else(|e| panic!("round {round}, request {i}: {e}"));
            }
        }
    }
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!(report.events, 5 * 31);
}

#[cfg(target_os = "linux")]
#[test]
fn a_small_event_read_points_into_the_memory_map() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [ev(b"zero-copy please")]).unwrap();
    let view = db.begin_read().unwrap();
    let event = view.event(1).unwrap().unwrap();
    let ptr = event.payload().as_ptr() as usize;
    let data_file = dir.path().canonicalize().unwrap().join("data.mdb");
    // The kernel's own list of this process's mappings: which one holds the payload?
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let holder = maps.lines().find(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        (lo..hi).contains(&ptr)
    });
    let holder = holder.expect("payload pointer is in no mapping");
    assert!(
        holder.ends_with(data_file.to_str().unwrap()),
        "payload is not in the store's map but in: {holder}"
    );
    assert_eq!(event.payload(), b"zero-copy please");
}

/// Reads stream 1 from version 1: each event's version, or the error in its place.
fn stream_one(dir: &std::path::Path) -> Vec<Result<u32, Error>> {
    let db = Varve::open(dir).unwrap();
    let view = db.begin_read().unwrap();
    view.read_stream(1u128, 1).unwrap().map(|e| e.map(|e| e.version())).collect()
}

#[test]
fn damaged_stream_index_entries_and_log_keys_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..40u8 {
            batch.append(if i % 3 == 0 { 2u128 } else { 1 }, ExpectedVersion::Auto, [ev(&[i])]);
        }
        db.write(batch).unwrap();
    }
    // Stream 1 holds seqs 2, 3, 5, 6, 8, 9, 11, ...: its version 5 is seq 8.
    let entries = damage::index::get(dir.path(), 1, 0);
    assert_eq!(entries[..7], [2, 3, 5, 6, 8, 9, 11]);
    let shifted = [&entries[..4], &entries[5..7], &[12, 13][..], &entries[9..]].concat();
    let other = [&entries[..4], &[7][..], &entries[5..]].concat();
    for (seqs, what) in [(&shifted, "other versions of the stream"), (&other, "another stream's event")] {
        damage::index::put(dir.path(), 1, 0, seqs);
        let read = stream_one(dir.path());
        assert!(read[..4].iter().all(Result::is_ok), "{what}: {read:?}");
        assert!(
            matches!(read[4], Err(Error::CorruptIndex { table: "streams", .. })),
            "{what}: {:?}",
            read[4]
        );
    }
    // The entry is right again, but its event is gone: reported, and the read goes on.
    damage::index::put(dir.path(), 1, 0, &entries);
    damage::raw::delete(dir.path(), "events", &8u64.to_be_bytes());
    let read = stream_one(dir.path());
    assert!(
        matches!(&read[4], Err(Error::CorruptIndex { reason, .. }) if reason.contains("missing")),
        "{:?}",
        read[4]
    );
    assert_eq!(*read[5].as_ref().unwrap(), 6);

    // A key shorter than a seq sorts below every seq: a read of the whole log and the
    // integrity check report it instead of passing over it.
    damage::raw::put(dir.path(), "events", &[0], b"junk");
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let first = view.read_all(0).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::CorruptIndex { table: "events", .. })), "{first:?}");
    assert!(matches!(view.check_integrity(), Err(Error::CorruptIndex { table: "events", .. })));
}

/// What a stream read gave in one place, for comparing whole reads.
fn outcome(item: &Result<u32, Error>) -> String {
    match item {
        Ok(version) => format!("version {version}"),
        Err(Error::Corrupt { seq, .. }) => format!("corrupt seq {seq}"),
        Err(Error::CorruptIndex { table: "streams", reason }) if reason.contains("missing") => {
            "missing".into()
        }
        Err(Error::CorruptIndex { table: "streams", reason }) if reason.contains("elsewhere") => {
            "elsewhere".into()
        }
        Err(e) => format!("unexpected {e}"),
    }
}

#[test]
fn damage_around_the_stream_read_ahead_is_reported_in_its_place() {
    // Stream reads look entries up to 8 ahead of the event they hand out: damage of each
    // kind, before, at and past that distance, must still come out where it is.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    {
        let db = Varve::open(p).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..60u8 {
            batch.append(if i % 2 == 0 { 1u128 } else { 2 }, ExpectedVersion::Auto, [ev(&[i])]);
        }
        db.write(batch).unwrap();
    }
    // Stream 1 holds the odd seqs: its version v is seq 2v - 1.
    let seq_of = |v: u32| u64::from(2 * v - 1);
    // Version 1's record is gone: found by the lookup.
    damage::raw::delete(p, "events", &seq_of(1).to_be_bytes());
    // Version 8 points at stream 2's record after version 8's: found by the check against
    // the entry.
    let mut entries = damage::index::get(p, 1, 0);
    entries[7] = seq_of(8) + 1;
    // Version 9's record fails its checksum: found by the verification.
    let mut record = damage::raw::event(p, seq_of(9));
    *record.last_mut().unwrap() ^= 0x5a;
    damage::raw::put(p, "events", &seq_of(9).to_be_bytes(), &record);
    // Version 17 points at an event of stream 2.
    entries[16] = seq_of(17) + 1;
    damage::index::put(p, 1, 0, &entries);

    let want: Vec<String> = (1..=30u32)
        .map(|v| match v {
            1 => "missing".to_string(),
            8 | 17 => "elsewhere".to_string(),
            9 => format!("corrupt seq {}", seq_of(9)),
            v => format!("version {v}"),
        })
        .collect();
    let db = Varve::open(p).unwrap();
    let view = db.begin_read().unwrap();
    let forward: Vec<String> =
        view.read_stream(1u128, 1).unwrap().map(|e| outcome(&e.map(|e| e.version()))).collect();
    assert_eq!(forward, want);
    let (mut events, mut buf, mut reused) = (view.read_stream(1u128, 1).unwrap(), Vec::new(), Vec::new());
    while let Some(e) = events.next_reusing(&mut buf) {
        reused.push(outcome(&e.map(|e| e.version())));
    }
    assert_eq!(reused, want);
    for _ in 0..3 {
        assert!(events.next().is_none(), "an ended read stays ended");
    }
    let backward: Vec<String> = view
        .read_stream_backward(1u128, u32::MAX)
        .unwrap()
        .map(|e| outcome(&e.map(|e| e.version())))
        .collect();
    assert_eq!(backward, want.iter().rev().cloned().collect::<Vec<_>>());
    // Stream 2 is untouched, damage in its neighbour notwithstanding.
    assert_eq!(view.read_stream(2u128, 1).unwrap().collect::<Result<Vec<_>, _>>().unwrap().len(), 30);
}
