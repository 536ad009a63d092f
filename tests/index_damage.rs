//! A damaged index never reads as a shorter, longer or reordered history: stream reads check
//! that versions run on without gaps to the stream's head, log reads that seqs run on
//! without gaps, and each reports the damage in its place.

#[path = "support/damage.rs"]
mod damage;

use varvedb::{Error, Event, ExpectedVersion, NewEvent, Varve, WriteBatch, aggregate};

use damage::index;

/// Events in each of streams 26 and 27, interleaved: stream 26 has the odd seqs.
const PER_STREAM: u32 = 150;

/// [`PER_STREAM`] events in each of streams 26 and 27, interleaved; three chunks of index
/// entries each (versions 1 to 64, 65 to 128, 129 to 150).
fn two_streams(dir: &std::path::Path) {
    let db = Varve::open(dir).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..2 * PER_STREAM {
        let stream = if i % 2 == 0 { 26u128 } else { 27 };
        batch.append(stream, ExpectedVersion::Auto, [NewEvent::new("n", (i / 2 + 1).to_le_bytes().to_vec())]);
    }
    db.write(batch).unwrap();
}

/// Each item of a read: the version and the payload's version, or the error's text.
fn read(db: &Varve, stream: u128, backward: bool) -> Vec<Result<(u32, u32), String>> {
    let view = db.begin_read().unwrap();
    let events = if backward {
        view.read_stream_backward(stream, u32::MAX).unwrap()
    } else {
        view.read_stream(stream, 1).unwrap()
    };
    events
        .map(|e| match e {
            Ok(e) => Ok((e.version(), u32::from_le_bytes(e.payload().try_into().unwrap()))),
            Err(Error::CorruptIndex { table: "streams", reason }) => Err(reason),
            Err(other) => panic!("unexpected error {other}"),
        })
        .collect()
}

/// Every event handed out is the one of its version: damage may only show as errors.
fn assert_sound(items: &[Result<(u32, u32), String>]) {
    for (version, content) in items.iter().flatten() {
        assert_eq!(version, content, "{items:?}");
    }
}

#[test]
fn a_deleted_chunk_of_stream_index_entries_is_reported_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    index::delete(dir.path(), 27, 1);
    let db = Varve::open(dir.path()).unwrap();

    let forward = read(&db, 27, false);
    assert_eq!(forward.len(), 64 + 1 + 22);
    assert_sound(&forward);
    for (i, item) in forward.iter().enumerate() {
        match i {
            64 => assert_eq!(item.as_ref().unwrap_err(), "versions 65 to 128 have no index entry"),
            i if i < 64 => assert_eq!(item.as_ref().unwrap().0 as usize, i + 1),
            i => assert_eq!(item.as_ref().unwrap().0 as usize, i + 64),
        }
    }
    let backward = read(&db, 27, true);
    assert_eq!(backward.len(), 64 + 1 + 22);
    assert_sound(&backward);
    assert_eq!(backward[22].as_ref().unwrap_err(), "versions 65 to 128 have no index entry");
    assert_eq!(backward[23].as_ref().unwrap().0, 64);

    // From the middle, past the damage and up to it.
    let view = db.begin_read().unwrap();
    assert_eq!(view.read_stream(27u128, 129).unwrap().flatten().count(), 22);
    let first = view.read_stream(27u128, 100).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::CorruptIndex { .. })), "{first:?}");
    assert!(view.check_integrity().is_err());
    // The other stream is untouched.
    assert_eq!(read(&db, 26, false).iter().filter(|r| r.is_ok()).count(), PER_STREAM as usize);
}

#[test]
fn a_chunk_that_does_not_decode_is_reported_and_the_read_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    // A cut number: the chunk of versions 1 to 64 cannot be decoded.
    damage::raw::put(dir.path(), "streams", &index::key(27, 0), &[0x80]);
    let db = Varve::open(dir.path()).unwrap();
    let forward = read(&db, 27, false);
    assert_sound(&forward);
    assert!(forward[0].as_ref().unwrap_err().contains("cannot be decoded"), "{:?}", forward[0]);
    assert_eq!(forward[1].as_ref().unwrap_err(), "versions 1 to 64 have no index entry");
    assert_eq!(forward[2].as_ref().unwrap().0, 65);
    assert_eq!(forward.iter().filter(|r| r.is_ok()).count(), PER_STREAM as usize - 64);
    assert!(db.begin_read().unwrap().check_integrity().is_err());
}

#[test]
fn a_stream_whose_last_entries_are_gone_is_not_read_as_shorter() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    let last = index::get(dir.path(), 27, 2);
    assert_eq!(last.len(), 22);
    index::put(dir.path(), 27, 2, &last[..20]);
    let db = Varve::open(dir.path()).unwrap();
    let forward = read(&db, 27, false);
    assert_eq!(forward.len(), 149);
    assert_sound(&forward);
    assert_eq!(forward[148].as_ref().unwrap_err(), "versions 149 to 150 have no index entry");
    let backward = read(&db, 27, true);
    assert_eq!(backward[0].as_ref().unwrap_err(), "versions 149 to 150 have no index entry");
    assert_eq!(backward[1].as_ref().unwrap().0, 148);
    assert!(db.begin_read().unwrap().check_integrity().is_err());

    // Nor one whose first entries are gone.
    drop(db);
    index::delete(dir.path(), 26, 0);
    let db = Varve::open(dir.path()).unwrap();
    let forward = read(&db, 26, false);
    assert_eq!(forward[0].as_ref().unwrap_err(), "versions 1 to 64 have no index entry");
    assert_eq!(forward[1].as_ref().unwrap().0, 65);
    let backward = read(&db, 26, true);
    assert_eq!(backward.last().unwrap().as_ref().unwrap_err(), "versions 1 to 64 have no index entry");
}

#[test]
fn a_bit_flip_that_moves_a_chunk_to_another_stream_is_reported_in_both() {
    // One bit flipped in a key: (27, chunk 1) becomes (26, chunk 1), the stored bytes
    // changed in place (every copy LMDB left in the file), so the key sits out of order.
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    // Stream 26 has a chunk 1 too: after the flip, its page holds that key twice.
    let hits = damage::flip_in_file(dir.path(), &index::key(27, 1), 15);
    assert!(hits >= 1);
    let db = Varve::open(dir.path()).unwrap();
    for stream in [26u128, 27] {
        for backward in [false, true] {
            let items = read(&db, stream, backward);
            assert_sound(&items);
            if stream == 27 {
                assert!(items.iter().any(Result::is_err), "stream {stream} backward {backward}: {items:?}");
            }
        }
    }
    // And the check of the whole store finds it.
    assert!(db.begin_read().unwrap().check_integrity().is_err());
}

#[test]
fn a_stream_head_and_index_that_disagree_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    // An entry past the head: outside the stream's versions.
    let mut last = index::get(dir.path(), 27, 2);
    last.push(last[last.len() - 1] + 1);
    index::put(dir.path(), 27, 2, &last);
    let db = Varve::open(dir.path()).unwrap();
    let forward = read(&db, 27, false);
    assert_sound(&forward);
    assert_eq!(forward.iter().filter(|r| r.is_ok()).count(), PER_STREAM as usize);
    let past = forward[PER_STREAM as usize].as_ref().unwrap_err();
    assert!(past.contains("version 151 lies outside"), "{past}");
    assert!(db.begin_read().unwrap().check_integrity().is_err());
    // An append on the damaged stream refuses to write over it: the head holds the entries
    // after the last full chunk, and they do not match its version.
    let e = db.append(27u128, ExpectedVersion::Auto, [NewEvent::new("n", vec![0])]);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    assert_eq!(db.begin_read().unwrap().stream_version(27u128).unwrap(), Some(PER_STREAM), "nothing written");
}

#[test]
fn entries_in_a_stream_head_that_do_not_decode_are_reported_in_their_place() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    // Versions 129 to 150 are the tail, in the head of stream 27: a cut number there.
    let (head, _) = index::head(dir.path(), 27, 2);
    index::put_head(dir.path(), 27, [head, vec![0x80]].concat());
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    for backward in [false, true] {
        let items: Vec<Result<u32, Error>> = if backward {
            view.read_stream_backward(27u128, u32::MAX).unwrap().map(|e| e.map(|e| e.version())).collect()
        } else {
            view.read_stream(27u128, 1).unwrap().map(|e| e.map(|e| e.version())).collect()
        };
        let versions: Vec<u32> = items.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        let mut want: Vec<u32> = (1..=128).collect();
        if backward {
            want.reverse();
        }
        assert_eq!(versions, want, "backward {backward}: every full chunk is still read");
        let errors: Vec<&Error> = items.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            errors.iter().any(|e| matches!(e, Error::CorruptIndex { table: "stream_heads", reason } if reason.contains("from version 129"))),
            "backward {backward}: {errors:?}"
        );
    }
    assert!(view.check_integrity().is_err());
    let e = db.append(27u128, ExpectedVersion::Auto, [NewEvent::new("n", vec![0])]);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    // The other stream is untouched.
    assert_eq!(read(&db, 26, false).iter().filter(|r| r.is_ok()).count(), PER_STREAM as usize);
}

#[test]
fn a_missing_seq_in_the_log_is_reported_by_every_log_read() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    for seq in [10u64, 11, 12, 50] {
        damage::raw::delete(dir.path(), "events", &seq.to_be_bytes());
    }
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let log: Vec<Result<u64, String>> = view
        .read_all(0)
        .unwrap()
        .map(|e| match e {
            Ok(e) => Ok(e.seq()),
            Err(Error::CorruptIndex { table: "events", reason }) => Err(reason),
            Err(other) => panic!("{other}"),
        })
        .collect();
    let errors: Vec<&String> = log.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        errors,
        [
            "seqs 10 to 12 are missing: the log goes on at seq 13",
            "seq 50 is missing: the log goes on at seq 51"
        ]
    );
    let seqs: Vec<u64> = log.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let want: Vec<u64> = (1..=u64::from(2 * PER_STREAM)).filter(|s| ![10, 11, 12, 50].contains(s)).collect();
    assert_eq!(seqs, want, "every stored event, in order, around the reports");
    // From inside a gap, too.
    let first = view.read_all(11).unwrap().next().unwrap();
    assert!(matches!(first, Err(Error::CorruptIndex { table: "events", .. })), "{first:?}");
    // A point lookup of a lost seq is an error, not "never written".
    assert!(matches!(view.event(50), Err(Error::CorruptIndex { table: "events", .. })));
    assert!(view.event(u64::from(2 * PER_STREAM) + 1).unwrap().is_none(), "past the last seq");
    assert!(view.event(0).unwrap().is_none());
    assert!(view.check_integrity().is_err());
}

#[tokio::test]
async fn a_subscription_stops_at_a_missing_seq() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    damage::raw::delete(dir.path(), "events", &5u64.to_be_bytes());
    let db = Varve::open(dir.path()).unwrap();
    let mut feed = db.subscribe(1);
    for seq in 1..=4 {
        assert_eq!(feed.next_event().await.unwrap().unwrap().seq, seq);
    }
    for _ in 0..2 {
        let e = feed.next_event().await.unwrap();
        assert!(matches!(e, Err(Error::CorruptIndex { table: "events", .. })), "{e:?}");
    }
}

#[derive(Event, Debug)]
#[event(name = "counted", version = 1)]
struct Counted {
    n: u32,
}

#[derive(Default)]
struct Counter {
    seen: Vec<u32>,
}

#[aggregate]
impl Counter {
    fn counted(&mut self, e: &ArchivedCounted) {
        self.seen.push(e.n.to_native());
    }
}

#[test]
fn a_typed_load_over_a_lost_index_entry_fails_instead_of_folding_less() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        let counter = db.stream::<Counter>(9u128);
        for n in 1..=20 {
            counter.append(ExpectedVersion::Auto, Counted { n }).unwrap();
        }
        assert_eq!(counter.load().unwrap().state().seen, (1..=20).collect::<Vec<_>>());
    }
    let entries = index::get(dir.path(), 9, 0);
    index::put(dir.path(), 9, 0, &entries[..19]);
    let db = Varve::open(dir.path()).unwrap();
    let loaded = db.stream::<Counter>(9u128).load();
    assert!(
        matches!(&loaded, Err(Error::CorruptIndex { table: "streams", reason }) if reason == "version 20 has no index entry"),
        "{:?}",
        loaded.as_ref().map(varvedb::Loaded::version)
    );
}

#[test]
fn a_stream_head_moved_to_another_key_by_a_bit_flip_is_reported_not_read_as_no_stream() {
    // Streams of fewer than 64 events keep every index entry in their head. A bit flipped in
    // a head's key leaves the head in place under another stream's id: the stream must not
    // read as empty, nor take appends as a new stream.
    let dir = tempfile::tempdir().unwrap();
    let base = 0x5eed_0000_0000_0000_0000_0000_0000_0000u128;
    let [a, b, c] = [base, base + 2, base + 4];
    {
        let db = Varve::open(dir.path()).unwrap();
        for stream in [a, b, c] {
            db.append(
                stream,
                ExpectedVersion::Auto,
                (1..=10u32).map(|i| NewEvent::new("n", i.to_le_bytes().to_vec())),
            )
            .unwrap();
        }
    }
    // The first byte of b's key (big-endian: records hold ids little-endian, so only the
    // head's key has this pattern): b's head now sorts past c's, in b's place.
    assert!(damage::flip_in_file(dir.path(), &b.to_be_bytes(), 0) >= 1);
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let damaged = |r: Result<(), Error>| matches!(r, Err(Error::CorruptIndex { table: "stream_heads", .. }));
    assert!(damaged(view.stream_version(b).map(drop)));
    assert!(damaged(view.read_stream(b, 1).map(drop)));
    assert!(view.check_integrity().is_err());
    let e = db.append(b, ExpectedVersion::Auto, [NewEvent::new("n", vec![0])]);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    assert_eq!(view.last_seq().unwrap(), 30, "nothing written");
    // The streams on either side read as written, or, where the key out of order misleads
    // LMDB's search of the page, as damaged: never as empty.
    for stream in [a, c] {
        match view.read_stream(stream, 1) {
            Ok(events) => {
                let versions: Vec<u32> = events.map(|e| e.unwrap().version()).collect();
                assert_eq!(versions, (1..=10).collect::<Vec<_>>());
            }
            Err(e) => assert!(damaged(Err(e))),
        }
    }
}

#[test]
fn a_stream_head_with_a_flipped_bit_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    two_streams(dir.path());
    // Version 150 read as 214 would place the tail's entries at versions 193 to 214; the
    // checksum refuses the head before anything reads them.
    let (mut head, tail) = index::head(dir.path(), 27, 2);
    head[4] ^= 0x40;
    damage::raw::put(dir.path(), "stream_heads", &27u128.to_be_bytes(), &[head, tail].concat());
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let e = view.stream_version(27u128);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    assert!(view.read_stream(27u128, 1).is_err());
    assert!(view.check_integrity().is_err());
    let e = db.append(27u128, ExpectedVersion::Auto, [NewEvent::new("n", vec![0])]);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    assert_eq!(read(&db, 26, false).iter().filter(|r| r.is_ok()).count(), PER_STREAM as usize);
}
