//! Appends and reads through every path, on real LMDB files in temp dirs.

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve, WriteBatch, rkyv};

fn ev(tag: &str, payload: &[u8]) -> NewEvent {
    NewEvent::new(tag, payload.to_vec())
}

/// (seq, stream, version, tag, payload) of every event, read through `read_all`.
fn log(db: &Varve) -> Vec<(u64, u128, u32, String, Vec<u8>)> {
    let view = db.begin_read().unwrap();
    view.read_all(1)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.seq(), e.stream().as_u128(), e.version(), e.type_tag().to_owned(), e.payload().to_vec())
        })
        .collect()
}

#[test]
fn round_trip_through_every_read_path_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![0xabu8; 5000];
    {
        let db = Varve::open(dir.path()).unwrap();
        let a = db
            .append(
                1u128,
                ExpectedVersion::NoStream,
                [ev("a1", b"one"), ev("a2", b"two").with_metadata(b"m".to_vec())],
            )
            .unwrap();
        assert_eq!((a.first_seq, a.last_seq, a.first_version, a.last_version), (1, 2, 1, 2));
        let b = db.append(2u128, ExpectedVersion::Auto, [ev("b1", &big)]).unwrap();
        assert_eq!((b.first_seq, b.first_version), (3, 1));
        let a3 = db.append(1u128, ExpectedVersion::Exact(2), [ev("a3", b"three")]).unwrap();
        assert_eq!((a3.first_seq, a3.first_version), (4, 3));
    }
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.last_seq().unwrap(), 4);
    assert_eq!(view.stream_version(1u128).unwrap(), Some(3));
    assert_eq!(view.stream_version(2u128).unwrap(), Some(1));
    assert_eq!(view.stream_version(3u128).unwrap(), None);

    let fwd: Vec<_> = view.read_stream(1u128, 1).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(
        fwd.iter().map(|e| (e.seq(), e.version(), e.type_tag())).collect::<Vec<_>>(),
        [(1, 1, "a1"), (2, 2, "a2"), (4, 3, "a3")]
    );
    assert_eq!(fwd[1].metadata(), b"m");
    assert_eq!(fwd[0].payload(), b"one");
    let from2: Vec<u32> = view.read_stream(1u128, 2).unwrap().map(|e| e.unwrap().version()).collect();
    assert_eq!(from2, [2, 3]);
    let back: Vec<u32> =
        view.read_stream_backward(1u128, u32::MAX).unwrap().map(|e| e.unwrap().version()).collect();
    assert_eq!(back, [3, 2, 1]);
    let back2: Vec<u32> =
        view.read_stream_backward(1u128, 2).unwrap().map(|e| e.unwrap().version()).collect();
    assert_eq!(back2, [2, 1]);
    assert_eq!(view.read_stream(3u128, 1).unwrap().count(), 0);

    let blob = view.event(3).unwrap().unwrap();
    assert_eq!(blob.payload(), &big[..], "payload over 1 KiB comes back whole from the blob table");
    assert_eq!(blob.stream().as_u128(), 2);
    assert!(view.event(5).unwrap().is_none());
    assert!(view.event(0).unwrap().is_none());

    let all: Vec<u64> = view.read_all(2).unwrap().map(|e| e.unwrap().seq()).collect();
    assert_eq!(all, [2, 3, 4]);
    let report = view.check_integrity().unwrap();
    assert_eq!((report.events, report.streams, report.blob_references, report.last_seq), (4, 2, 1, 4));
}

#[test]
fn timestamps_and_ids_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64;
    db.append(1u128, ExpectedVersion::Auto, [ev("t", b"x").with_id(77)]).unwrap();
    let view = db.begin_read().unwrap();
    let e = view.event(1).unwrap().unwrap();
    assert!(e.timestamp_micros() >= before && e.timestamp_micros() < before + 60_000_000);
    assert_eq!(e.id(), Some(77));
}

#[test]
fn expected_version_variants() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let s = 5u128;
    let conflict = |r: Result<varvedb::Appended, Error>| match r {
        Err(Error::ConcurrencyConflict { stream, expected, actual }) => (stream.as_u128(), expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    };
    assert_eq!(
        conflict(db.append(s, ExpectedVersion::StreamExists, [ev("x", b"")])),
        (s, ExpectedVersion::StreamExists, None)
    );
    assert_eq!(
        conflict(db.append(s, ExpectedVersion::Exact(1), [ev("x", b"")])),
        (s, ExpectedVersion::Exact(1), None)
    );
    db.append(s, ExpectedVersion::Exact(0), [ev("x", b"")]).unwrap();
    assert_eq!(
        conflict(db.append(s, ExpectedVersion::NoStream, [ev("x", b"")])),
        (s, ExpectedVersion::NoStream, Some(1))
    );
    assert_eq!(
        conflict(db.append(s, ExpectedVersion::Exact(2), [ev("x", b"")])),
        (s, ExpectedVersion::Exact(2), Some(1))
    );
    db.append(s, ExpectedVersion::StreamExists, [ev("x", b"")]).unwrap();
    db.append(s, ExpectedVersion::Auto, [ev("x", b"")]).unwrap();
    assert_eq!(db.begin_read().unwrap().stream_version(s).unwrap(), Some(3));
    assert_eq!(log(&db).len(), 3, "conflicts wrote nothing");
}

#[test]
fn multi_stream_batch_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [ev("x", b"")]).unwrap();

    let mut ok = WriteBatch::new();
    ok.append(1u128, ExpectedVersion::Exact(1), [ev("a", b"")])
        .append(2u128, ExpectedVersion::NoStream, [ev("b", b""), ev("b", b"")])
        .append(1u128, ExpectedVersion::Exact(2), [ev("c", b"")]);
    let done = db.write(ok).unwrap();
    assert_eq!(
        done.iter()
            .map(|a| (a.stream.as_u128(), a.first_seq, a.last_seq, a.last_version))
            .collect::<Vec<_>>(),
        [(1, 2, 2, 2), (2, 3, 4, 2), (1, 5, 5, 3)]
    );

    let mut bad = WriteBatch::new();
    bad.append(3u128, ExpectedVersion::NoStream, [ev("a", b"")]).append(
        2u128,
        ExpectedVersion::Exact(1),
        [ev("b", b"")],
    );
    assert!(matches!(db.write(bad), Err(Error::ConcurrencyConflict { actual: Some(2), .. })));
    let view = db.begin_read().unwrap();
    assert_eq!(view.stream_version(3u128).unwrap(), None, "the valid half of a failed batch is not written");
    assert_eq!(view.last_seq().unwrap(), 5);
    view.check_integrity().unwrap();
}

#[test]
fn retry_with_ids_returns_original_positions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let request = |n: u128| vec![ev("x", b"1").with_id(n), ev("x", b"2").with_id(n + 1)];
    let first = db.append(1u128, ExpectedVersion::NoStream, request(100)).unwrap();
    db.append(2u128, ExpectedVersion::Auto, [ev("y", b"")]).unwrap();
    // The retry's expectation no longer holds, but it is recognised as already done.
    let retry = db.append(1u128, ExpectedVersion::NoStream, request(100)).unwrap();
    assert!(retry.deduplicated && !first.deduplicated);
    assert_eq!(
        (retry.first_seq, retry.last_seq, retry.first_version, retry.last_version),
        (first.first_seq, first.last_seq, first.first_version, first.last_version)
    );
    assert_eq!(log(&db).len(), 3, "nothing written twice");

    let partial =
        db.append(1u128, ExpectedVersion::Auto, [ev("x", b"").with_id(101), ev("x", b"").with_id(999)]);
    assert!(matches!(partial, Err(Error::IdempotencyMismatch { id: 101, seq: 2 })));
    let other_stream = db.append(7u128, ExpectedVersion::Auto, request(100));
    assert!(matches!(other_stream, Err(Error::IdempotencyMismatch { .. })));
    let twice = db.append(1u128, ExpectedVersion::Auto, [ev("x", b"").with_id(5), ev("x", b"").with_id(5)]);
    assert!(matches!(twice, Err(Error::DuplicateEventId { id: 5 })));
    assert_eq!(log(&db).len(), 3);
    db.begin_read().unwrap().check_integrity().unwrap();
}

#[test]
fn a_retry_with_the_same_ids_but_other_content_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let big = vec![1u8; 4000];
    db.append(1u128, ExpectedVersion::Auto, [ev("x", b"a").with_id(1), ev("x", &big).with_id(2)]).unwrap();
    let mut other_big = big.clone();
    other_big[3999] = 2;
    let variants = [
        vec![ev("x", b"b").with_id(1), ev("x", &big).with_id(2)],
        vec![ev("x", b"a").with_id(1), ev("x", &other_big).with_id(2)],
        vec![ev("x", b"a").with_id(1).with_metadata(b"m".to_vec()), ev("x", &big).with_id(2)],
        vec![ev("y", b"a").with_id(1), ev("x", &big).with_id(2)],
        vec![ev("x", &big).with_id(2), ev("x", b"a").with_id(1)],
    ];
    for (i, events) in variants.into_iter().enumerate() {
        let r = db.append(1u128, ExpectedVersion::Auto, events);
        assert!(matches!(r, Err(Error::IdempotencyMismatch { .. })), "variant {i}: {r:?}");
    }
    let same = db
        .append(1u128, ExpectedVersion::Auto, [ev("x", b"a").with_id(1), ev("x", &big).with_id(2)])
        .unwrap();
    assert!(same.deduplicated);
    assert_eq!(log(&db).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_request_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.append_async(9u128, ExpectedVersion::NoStream, [ev("x", b"once").with_id(42)]).await
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert_eq!((a.first_seq, a.first_version), (1, 1));
        fresh += usize::from(!a.deduplicated);
    }
    assert_eq!(fresh, 1, "exactly one copy wrote");
    assert_eq!(log(&db).len(), 1);
}

#[test]
fn identical_large_payloads_share_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for s in 0..20u128 {
        db.append(s, ExpectedVersion::Auto, [ev("big", &big)]).unwrap();
    }
    let size = std::fs::metadata(dir.path().join("data.mdb")).unwrap().len();
    assert!(size < 2 * 200_000 + 1_000_000, "20 copies of 200 kB stored once, file is {size} bytes");
    let view = db.begin_read().unwrap();
    for e in view.read_all(1).unwrap() {
        assert_eq!(e.unwrap().payload(), &big[..]);
    }
    assert_eq!(view.check_integrity().unwrap().blob_references, 20);
}

#[test]
fn small_commits_write_into_room_grown_ahead_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.mdb");
    let len = || std::fs::metadata(&file).unwrap().len();
    let mut lengths = vec![];
    {
        let db = Varve::open(dir.path()).unwrap();
        for i in 0..3_000u32 {
            db.append(u128::from(i % 50), ExpectedVersion::Auto, [ev("noted", &[7u8; 52])]).unwrap();
            if lengths.last() != Some(&len()) {
                lengths.push(len());
            }
        }
        assert!(db.begin_read().unwrap().check_integrity().is_ok());
    }
    // Left to LMDB, the file would grow with about one commit in thirty; grown ahead, it
    // grows by steps of at least 1 MiB, each written before a commit needs it.
    assert!(lengths.len() <= 3, "the file took {} lengths: {lengths:?}", lengths.len());
    assert!(lengths.windows(2).all(|w| w[1] - w[0] >= 1 << 20), "{lengths:?}");
    let db = Varve::open(dir.path()).unwrap();
    assert_eq!(log(&db).len(), 3_000);
    assert!(db.begin_read().unwrap().check_integrity().is_ok());
}

#[test]
fn stream_kind_is_remembered_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut b = WriteBatch::new();
    b.append_kind(1u128, "order", ExpectedVersion::NoStream, [ev("placed", b"")]);
    db.write(b).unwrap();
    let mut wrong = WriteBatch::new();
    wrong.append_kind(1u128, "user", ExpectedVersion::Auto, [ev("renamed", b"")]);
    match db.write(wrong) {
        Err(Error::StreamKindMismatch { expected, actual, .. }) => {
            assert_eq!((expected.as_str(), actual.as_deref()), ("user", Some("order")));
        }
        other => panic!("expected a kind mismatch, got {other:?}"),
    }
    let mut right = WriteBatch::new();
    right.append_kind(1u128, "order", ExpectedVersion::Exact(1), [ev("shipped", b"")]);
    db.write(right).unwrap();
    assert_eq!(db.begin_read().unwrap().stream_kind(1u128).unwrap(), Some("order"));
}

#[test]
fn rkyv_payload_is_accessed_in_place() {
    #[derive(rkyv::Archive, rkyv::Serialize)]
    #[rkyv(crate = varvedb::rkyv)]
    struct Placed {
        id: u64,
        amount: u32,
        customer: String,
        lines: Vec<u16>,
    }
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let value = Placed { id: 9, amount: 1250, customer: "ana".into(), lines: vec![1, 2, 3] };
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::archive("placed", &value).unwrap()]).unwrap();
    let view = db.begin_read().unwrap();
    let e = view.event(1).unwrap().unwrap();
    let a = e.access::<rkyv::Archived<Placed>>().unwrap();
    assert_eq!((a.id.to_native(), a.amount.to_native(), a.customer.as_str()), (9, 1250, "ana"));
    assert_eq!(a.lines.iter().map(|l| l.to_native()).collect::<Vec<_>>(), [1, 2, 3]);
    // A payload that is not a valid archive of the type is a typed error.
    db.append(2u128, ExpectedVersion::Auto, [ev("placed", b"junk")]).unwrap();
    let view = db.begin_read().unwrap();
    let junk = view.event(2).unwrap().unwrap();
    assert!(matches!(junk.access::<rkyv::Archived<Placed>>(), Err(Error::InvalidArchive { seq: 2, .. })));
}

#[test]
fn a_view_is_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [ev("a", b"")]).unwrap();
    let view = db.begin_read().unwrap();
    db.append(1u128, ExpectedVersion::Auto, [ev("b", b"")]).unwrap();
    assert_eq!(view.last_seq().unwrap(), 1);
    assert_eq!(view.read_stream(1u128, 1).unwrap().count(), 1);
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appends_and_the_watch_of_the_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut watch = db.watch_last_seq();
    assert_eq!(*watch.borrow_and_update(), 0);
    let tasks: Vec<_> = (0..32u128)
        .map(|s| {
            let db = db.clone();
            tokio::spawn(async move { db.append_async(s, ExpectedVersion::NoStream, [ev("x", b"")]).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().first_seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
    watch.changed().await.unwrap();
    assert_eq!(*watch.borrow(), 32);
}

#[test]
fn opening_twice_in_one_process_is_a_typed_error_and_reopen_after_drop_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    assert!(matches!(Varve::open(dir.path()), Err(Error::AlreadyOpen { .. })));
    let clone = db.clone();
    drop(db);
    assert!(matches!(Varve::open(dir.path()), Err(Error::AlreadyOpen { .. })), "a clone keeps it open");
    drop(clone);
    let again = Varve::open(dir.path()).unwrap();
    assert_eq!(again.begin_read().unwrap().last_seq().unwrap(), 0);
}

#[test]
fn options_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().map_size(10 << 20).max_event_size(100).open(dir.path()).unwrap();
    assert_eq!(db.map_size(), 10 << 20);
    assert!(matches!(
        db.append(1u128, ExpectedVersion::Auto, [ev("x", &[0; 60]).with_metadata(vec![0; 41])]),
        Err(Error::EventTooLarge { index: 0, size: 101, max: 100 })
    ));
    db.append(1u128, ExpectedVersion::Auto, [ev("x", &[0; 60]).with_metadata(vec![0; 40])]).unwrap();
}

/// Stream reads follow their index through runs of consecutive seqs, gaps of every size and
/// long runs after gaps: each read gives exactly the stream's events of the log, in order.
#[test]
fn stream_reads_match_the_log_whatever_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..400u32 {
        // Runs of 1 to 150 events of one of 4 streams, so a stream's seqs have runs and gaps
        // from 1 to several hundred.
        let stream = u128::from(rng.u8(0..4));
        let run = if i % 10 == 0 { rng.usize(50..150) } else { rng.usize(1..4) };
        let events = (0..run).map(|j| ev("e", format!("{i}.{j}").as_bytes()));
        db.append(stream, ExpectedVersion::Auto, events).unwrap();
    }
    let log = log(&db);
    let view = db.begin_read().unwrap();
    for stream in 0..5u128 {
        let want: Vec<_> = log.iter().filter(|e| e.1 == stream).map(|e| (e.0, e.2, e.4.clone())).collect();
        for from in [0, 1, 2, 70, u32::MAX] {
            let got: Vec<_> = view
                .read_stream(stream, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.seq(), e.version(), e.payload().to_vec())
                })
                .collect();
            let expected: Vec<_> = want.iter().filter(|e| e.1 >= from).cloned().collect();
            assert_eq!(got, expected, "stream {stream} from {from}");
            let mut back = view.read_stream_backward(stream, from).unwrap();
            let mut got_back = Vec::new();
            let mut buf = Vec::new();
            while let Some(e) = back.next_reusing(&mut buf) {
                let e = e.unwrap();
                got_back.push((e.seq(), e.version(), e.payload().to_vec()));
            }
            let expected_back: Vec<_> = want.iter().rev().filter(|e| e.1 <= from).cloned().collect();
            assert_eq!(got_back, expected_back, "stream {stream} backward from {from}");
        }
    }
}
