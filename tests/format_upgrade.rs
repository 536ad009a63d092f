//! Stores of formats 4 and 6 (plain) and 5 and 7 (encrypted), written by the builds of
//! those formats, are upgraded in place by an open for writing, and read as they were
//! written.
//!
//! `tests/fixtures/format4` to `format7` hold backups (compacted copies) of stores that those
//! builds filled the same way: [`STREAMS`] in round-robin order, 50 events per commit, the
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

fn check_upgrade(fixture: &str, old: u32, encrypted: bool) {
    let dir = copy_of(fixture);
    assert_eq!(format_of(dir.path()), old);
    assert!(damage::raw::get(dir.path(), "meta", b"commit_records").is_none());

    // Read-only, nothing can be upgraded: refused, and the file is left as it was.
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let e = options(encrypted).read_only(true).open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NeedsWriteOpen { .. }), "{e:?}");
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before);

    let db = options(encrypted).open(dir.path()).unwrap();
    assert_holds(&db, &[]);
    // Full chunks stay in `streams`; the partial ones moved into the heads (formats 4 and
    // 5), or were there already.
    drop(db);
    assert_eq!(format_of(dir.path()), if encrypted { 11 } else { 10 });
    let area = damage::raw::get(dir.path(), "meta", b"commit_records").expect("the commit record area");
    assert_eq!(area.len(), 128 * 1024);
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
    check_upgrade("format4", 4, false);
}

#[test]
fn a_plain_store_of_format_6_is_upgraded_in_place_and_reads_as_written() {
    check_upgrade("format6", 6, false);
}

#[test]
fn an_encrypted_store_of_format_7_is_upgraded_in_place_and_reads_as_written() {
    check_upgrade("format7", 7, true);
}

#[test]
fn an_encrypted_store_of_format_5_is_upgraded_in_place_and_reads_as_written() {
    check_upgrade("format5", 5, true);
    // Without its key, the store is refused; the upgrade (of heads and the stream index,
    // which are not sealed) needs none, and the key opens it afterwards.
    let dir = copy_of("format5");
    let e = Varve::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::KeyRequired { .. }), "{e:?}");
    assert_eq!(format_of(dir.path()), 11);
    assert_holds(&options(true).open(dir.path()).unwrap(), &[]);
}

/// Set in a child process of this binary: the store to hold open through LMDB itself, as a
/// process of an older build would, until its standard input closes.
const HOLD: &str = "VARVEDB_UPGRADE_HOLD_STORE";

/// In the child process of [`holder`]: holds the store open, and returns true.
fn hold_if_asked() -> bool {
    let Some(dir) = std::env::var_os(HOLD) else { return false };
    // SAFETY: the parent opens this store only after this process says it is ready, and
    // then only to be refused; nothing else maps it in this process.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).flags(heed::EnvFlags::READ_ONLY).open(&dir) }
        .unwrap();
    println!("ready");
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
    drop(env);
    true
}

/// A process of this binary, running `test`, that holds the store in `dir` open (see
/// [`hold_if_asked`]) until its standard input closes; with its output, kept open until it
/// ends.
fn holder(test: &str, dir: &Path) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(HOLD, dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    while !said.contains("ready") {
        said.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut said).unwrap() > 0, "the holder ended");
    }
    (holder, out)
}

#[test]
fn an_upgrade_waits_until_no_other_process_has_the_store_open() {
    if hold_if_asked() {
        return;
    }
    let dir = copy_of("format4");
    let (mut holder, _out) = holder("an_upgrade_waits_until_no_other_process_has_the_store_open", dir.path());
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let e = Varve::open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::UpgradeNeedsExclusiveAccess { .. }), "{e:?}");
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before, "nothing changed");
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert_holds(&Varve::open(dir.path()).unwrap(), &[]);
    assert_eq!(format_of(dir.path()), 10);
}

#[test]
fn a_head_that_disagrees_with_its_partial_chunk_is_not_sealed_by_the_upgrade() {
    let dir = copy_of("format4");
    // Stream 5 holds 63 events; its format-4 head (`version u32 LE ‖ kind length ‖ kind`)
    // made to say 62. Sealing it with the 63 entries of its chunk would hide the damage.
    damage::raw::put(dir.path(), "stream_heads", &5u128.to_be_bytes(), &[62, 0, 0, 0, 0]);
    let db = Varve::open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let e = view.stream_version(5u128);
    assert!(matches!(e, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{e:?}");
    assert!(view.check_integrity().is_err());
    // Every other stream is upgraded and reads as written.
    for (stream, count, _) in STREAMS.iter().filter(|s| s.0 != 5) {
        let versions: Vec<u32> =
            view.read_stream(*stream, 1).unwrap().map(|e| e.unwrap().version()).collect();
        assert_eq!(versions, (1..=*count).collect::<Vec<_>>(), "stream {stream}");
    }
}

/// Rewrites a closed store of format 6 in the layout of format 4, as `docs/design.md`
/// describes it: heads of `version u32 LE ‖ kind length u8 ‖ kind`, each stream's partial
/// chunk back in `streams`.
fn rewrite_as_format_4(dir: &Path) {
    for (k, head) in damage::raw::all(dir, "stream_heads") {
        let version = u32::from_le_bytes(head[4..8].try_into().unwrap());
        let kind_end = 9 + usize::from(head[8]);
        damage::raw::put(dir, "stream_heads", &k, &head[4..kind_end]);
        if kind_end < head.len() {
            let chunk = [&k[..], &(version / 64).to_be_bytes()[..]].concat();
            damage::raw::put(dir, "streams", &chunk, &head[kind_end..]);
        }
    }
    damage::raw::put(dir, "meta", b"format_version", &4u32.to_le_bytes());
}

/// A change to the bytes of a page.
type Damage = fn(&mut [u8]);

/// The first leaf of `table`, a B-tree of two levels at least: the first child of its root.
fn first_leaf(dir: &Path, table: &str) -> usize {
    let report = varvedb::verify_file(dir).unwrap();
    let t = report.tables.iter().find(|t| t.name == table).unwrap();
    assert!(t.depth >= 2, "{t:?}");
    let page_size = report.page_size as usize;
    let bytes = std::fs::read(dir.join("data.mdb")).unwrap();
    let root = &bytes[t.root.unwrap() as usize * page_size..][..page_size];
    // The first node of a branch page (its offset at 16, past the page header) holds its
    // child's page number in its first six bytes, three 16-bit parts, lowest first.
    let node = usize::from(u16::from_le_bytes([root[16], root[17]]));
    let part = |at: usize| usize::from(u16::from_le_bytes([root[node + at], root[node + at + 1]]));
    part(0) | part(2) << 16 | part(4) << 32
}

#[test]
fn a_damaged_page_of_the_tables_an_upgrade_rewrites_is_refused_before_it() {
    // Stores of format 4 whose heads, and whose full and partial chunks, fill more than a
    // page each: the open checks the roots of every table, and only the upgrade reads on.
    let base = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(base.path()).unwrap();
        let mut batch = WriteBatch::new();
        for stream in 0..400u128 {
            let events = (0..100u32).map(|v| NewEvent::new("noted", v.to_le_bytes().to_vec()));
            batch.append(stream + 1, ExpectedVersion::NoStream, events);
        }
        db.write(batch).unwrap();
    }
    rewrite_as_format_4(base.path());
    let page_size = varvedb::verify_file(base.path()).unwrap().page_size as usize;
    // Damage to a page's header that LMDB itself does not check, and would read past.
    let damages: [(&str, Damage); 3] = [
        ("lower bound past the upper", |p| p[13] ^= 0x40),
        ("upper bound into the header", |p| p[14..16].copy_from_slice(&8u16.to_le_bytes())),
        ("first node offset", |p| p[16] ^= 0x06),
    ];
    for table in ["streams", "stream_heads"] {
        let leaf = first_leaf(base.path(), table);
        for (what, damage) in damages {
            let copy = tempfile::tempdir().unwrap();
            let mut bytes = std::fs::read(base.path().join("data.mdb")).unwrap();
            damage(&mut bytes[leaf * page_size..][..page_size]);
            std::fs::write(copy.path().join("data.mdb"), &bytes).unwrap();
            let e = Varve::open(copy.path()).unwrap_err();
            assert!(matches!(e, Error::CorruptFile { .. }), "{table}, {what}: {e:?}");
            assert_eq!(
                std::fs::read(copy.path().join("data.mdb")).unwrap(),
                bytes,
                "{table}, {what}: nothing written"
            );
        }
    }
    // Undamaged, the same store upgrades and reads as written.
    let db = Varve::open(base.path()).unwrap();
    let view = db.begin_read().unwrap();
    view.check_integrity().unwrap();
    assert_eq!(view.read_stream(400u128, 1).unwrap().count(), 100);
}

#[test]
fn a_store_of_format_8_is_upgraded_by_a_write_open_only_while_no_other_process_has_it_open() {
    if hold_if_asked() {
        return;
    }
    for encrypted in [false, true] {
        // Formats 8 and 9 are 10 and 11 without a name for what relaxed handles add: made
        // here from a new store by writing the older number back.
        let dir = tempfile::tempdir().unwrap();
        let db = options(encrypted).open(dir.path()).unwrap();
        db.append(4u128, varvedb::ExpectedVersion::Auto, [varvedb::NewEvent::new("noted", b"x".to_vec())])
            .unwrap();
        drop(db);
        let (old, new) = if encrypted { (9u32, 11u32) } else { (8, 10) };
        damage::raw::put(dir.path(), "meta", b"format_version", &old.to_le_bytes());

        let e = options(encrypted).read_only(true).open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::NeedsWriteOpen { .. }), "{e:?}");
        // A process of the build of format 8 takes no lock of a durability.
        let (mut holder, _out) = holder(
            "a_store_of_format_8_is_upgraded_by_a_write_open_only_while_no_other_process_has_it_open",
            dir.path(),
        );
        for durability in [varvedb::Durability::Relaxed, varvedb::Durability::Immediate] {
            let e = options(encrypted).durability(durability).open(dir.path()).unwrap_err();
            assert!(matches!(e, Error::UpgradeNeedsExclusiveAccess { .. }), "{e:?}");
            assert_eq!(format_of(dir.path()), old, "nothing changed");
            assert!(!dir.path().join("checkpoint").exists(), "no checkpoint beside the older build");
        }
        drop(holder.stdin.take());
        assert!(holder.wait().unwrap().success());
        let relaxed = options(encrypted).durability(varvedb::Durability::Relaxed);
        let db = relaxed.open(dir.path()).unwrap();
        assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 1);
        drop(db);
        assert_eq!(format_of(dir.path()), new);

        damage::raw::put(dir.path(), "meta", b"format_version", &old.to_le_bytes());
        drop(options(encrypted).open(dir.path()).unwrap());
        assert_eq!(format_of(dir.path()), new);
    }
}
