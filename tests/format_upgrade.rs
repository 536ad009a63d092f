//! Stores of formats 4 (plain) and 5 (encrypted), written by the build of those formats,
//! are upgraded in place by an open for writing, and read as they were written.
//!
//! `tests/fixtures/format4` and `format5` hold backups (compacted copies) of two stores that
//! build filled the same way: [`STREAMS`] in round-robin order, 50 events per commit, the
//! payload of each event its stream and version (`"1:17"`), stream 3's one event a 5,000-byte
//! payload stored as a blob, every tenth version of a stream with the id
//! `stream << 32 | version`. The encrypted one is under the master key `[7; 32]`.

#[path = "support/damage.rs"]
mod damage;

use std::path::Path;

use varvedb::{Error, ExpectedVersion, MasterKey, NewEvent, Options, Varve, WriteBatch};

/// Stream, events, kind.
const STREAMS: [(u128, u32, Option<&str>); 6] = [
    (1, 150, Some("order")),
    (2, 64, None),
    (3, 1, None),
    (4, 128, Some("order")),
    (5, 63, None),
    (6, 65, None),
];

fn payload(stream: u128, version: u32) -> Vec<u8> {
    if stream == 3 { vec![3u8; 5000] } else { format!("{stream}:{version}").into_bytes() }
}

fn key() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

/// A copy of a fixture, to open (and so upgrade) without touching the fixture.
fn copy_of(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture).join("data.mdb");
    std::fs::copy(from, dir.path().join("data.mdb")).unwrap();
    dir
}

fn format_of(dir: &Path) -> u32 {
    let raw = damage::raw::get(dir, "meta", b"format_version").unwrap();
    u32::from_le_bytes(raw.try_into().unwrap())
}

fn options(encrypted: bool) -> Options {
    if encrypted { Options::new().encryption_key(key()) } else { Options::new() }
}

/// Every stream read forward and backward, from the start and from the middle, gives each
/// of its events in place; heads, kinds and ids are those written.
fn assert_holds(db: &Varve, extra: &[(u128, u32)]) {
    let view = db.begin_read().unwrap();
    view.check_integrity().unwrap();
    for (stream, count, kind) in STREAMS {
        let count = count + extra.iter().filter(|e| e.0 == stream).map(|e| e.1).sum::<u32>();
        assert_eq!(view.stream_version(stream).unwrap(), Some(count), "stream {stream}");
        assert_eq!(view.stream_kind(stream).unwrap(), kind, "stream {stream}");
        let forward: Vec<(u32, Vec<u8>)> = view
            .read_stream(stream, 1)
            .unwrap()
            .map(|e| e.map(|e| (e.version(), e.payload().to_vec())).unwrap())
            .collect();
        let want: Vec<(u32, Vec<u8>)> = (1..=count).map(|v| (v, payload(stream, v))).collect();
        assert_eq!(forward, want, "stream {stream} forward");
        let backward: Vec<u32> =
            view.read_stream_backward(stream, u32::MAX).unwrap().map(|e| e.unwrap().version()).collect();
        assert_eq!(backward, (1..=count).rev().collect::<Vec<_>>(), "stream {stream} backward");
        for from in [count / 2 + 1, count] {
            let first = view.read_stream(stream, from).unwrap().next().unwrap().unwrap();
            assert_eq!(first.version(), from, "stream {stream} from {from}");
            let last = view.read_stream_backward(stream, from).unwrap().next().unwrap().unwrap();
            assert_eq!(last.version(), from, "stream {stream} backward from {from}");
        }
    }
    let ids = view.read_all(1).unwrap().filter(|e| e.as_ref().unwrap().id().is_some()).count();
    let written: u32 = STREAMS.iter().map(|s| s.1 / 10).sum();
    assert_eq!(ids, written as usize);
}

fn check_upgrade(fixture: &str, encrypted: bool) {
    let dir = copy_of(fixture);
    let old = if encrypted { 5 } else { 4 };
    assert_eq!(format_of(dir.path()), old);

    // Read-only, nothing can be upgraded: refused, and the file is left as it was.
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let e = options(encrypted).read_only(true).open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NeedsWriteOpen { .. }), "{e:?}");
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before);

    let db = options(encrypted).open(dir.path()).unwrap();
    assert_holds(&db, &[]);
    // Full chunks stay in `streams`; the partial ones moved into the heads.
    drop(db);
    assert_eq!(format_of(dir.path()), old + 2);
    let full: u32 = STREAMS.iter().map(|s| s.1 / 64).sum();
    assert_eq!(damage::raw::all(dir.path(), "streams").len(), full as usize);

    // Appends go on from where the old format left each stream, across chunk boundaries.
    let db = options(encrypted).open(dir.path()).unwrap();
    let extra = [(1u128, 40u32), (2, 1), (3, 70), (5, 2), (6, 63)];
    for (stream, n) in extra {
        let mut batch = WriteBatch::new();
        let kind = STREAMS.iter().find(|s| s.0 == stream).unwrap().2;
        let start = db.begin_read().unwrap().stream_version(stream).unwrap().unwrap();
        let events: Vec<NewEvent> =
            (start + 1..=start + n).map(|v| NewEvent::new("noted", payload(stream, v))).collect();
        match kind {
            Some(kind) => batch.append_kind(stream, kind, ExpectedVersion::Exact(start), events),
            None => batch.append(stream, ExpectedVersion::Exact(start), events),
        };
        db.write(batch).unwrap();
    }
    assert_holds(&db, &extra);
    // An id stored by the old format is still found: the retry writes nothing.
    let again = db
        .append(
            1u128,
            ExpectedVersion::Auto,
            [NewEvent::new("noted", payload(1, 20)).with_id((1 << 32) | 0x14)],
        )
        .unwrap();
    assert!(again.deduplicated && again.first_version == 20, "{again:?}");
    drop(db);

    // And it reopens read-only now.
    let db = options(encrypted).read_only(true).open(dir.path()).unwrap();
    assert_holds(&db, &extra);
}

#[test]
fn a_plain_store_of_format_4_is_upgraded_in_place_and_reads_as_written() {
    check_upgrade("format4", false);
}

#[test]
fn an_encrypted_store_of_format_5_is_upgraded_in_place_and_reads_as_written() {
    check_upgrade("format5", true);
    // Without its key, the store is refused; the upgrade (of heads and the stream index,
    // which are not sealed) needs none, and the key opens it afterwards.
    let dir = copy_of("format5");
    let e = Varve::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::KeyRequired { .. }), "{e:?}");
    assert_eq!(format_of(dir.path()), 7);
    assert_holds(&options(true).open(dir.path()).unwrap(), &[]);
}
