//! LMDB trusts the file it maps. Damage it would read is refused before it reads it: by
//! `Varve::open` (meta pages, the file's length, the pages opening reads), by
//! `ReadView::check_integrity` and by `verify_file` (every page), as `Error::CorruptFile`,
//! never as a crash, a hang or a silently older store. Cases that crash LMDB when they get
//! past the checks run in a child process: this test binary, run again for one test.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use varvedb::{Error, ExpectedVersion, MasterKey, NewEvent, Options, Varve, WriteBatch, verify_file};

/// Set in a child process: the directory of the damaged store its test works on.
const CHILD_DIR: &str = "VARVEDB_LMDB_FILE_CHILD_DIR";

// LMDB's layout on this (64-bit) machine, from `mdb.c`: a page header of 16 bytes (page
// number, pad, flags at 10, lower bound at 12, upper bound at 14), then the node offsets; a
// meta page's `MDB_meta` after its header, whose page size is at 40 and transaction id at 144.
const PAGE_FLAGS: usize = 10;
const PAGE_LOWER: usize = 12;
const PAGE_UPPER: usize = 14;
const PAGE_HEADER: usize = 16;
const META_PAGE_SIZE: usize = 40;
const META_TXNID: usize = 144;
/// `mm_last_pg`, the last page the snapshot uses, just before the transaction id.
const META_LAST_PAGE: usize = 136;

fn data(dir: &Path) -> PathBuf {
    dir.join("data.mdb")
}

/// `events` events over `streams` streams, in batches of 100 (one commit each).
fn fill(db: &Varve, events: u32, streams: u32, payload: impl Fn(u32) -> Vec<u8>) {
    for start in (0..events).step_by(100) {
        let mut batch = WriteBatch::new();
        for i in start..(start + 100).min(events) {
            batch.append(
                u128::from(i % streams + 1),
                ExpectedVersion::Auto,
                [NewEvent::new("e", payload(i))],
            );
        }
        db.write(batch).unwrap();
    }
}

fn store(dir: &Path, events: u32, streams: u32) {
    let db = Varve::open(dir).unwrap();
    fill(&db, events, streams, |i| i.to_le_bytes().to_vec());
}

/// The page size and the newest meta page's offset and transaction id.
fn newest_meta(dir: &Path) -> (usize, usize, u64) {
    let bytes = std::fs::read(data(dir)).unwrap();
    let page_size =
        u32::from_le_bytes(bytes[META_PAGE_SIZE..META_PAGE_SIZE + 4].try_into().unwrap()) as usize;
    let txnid =
        |at: usize| u64::from_le_bytes(bytes[at + META_TXNID..at + META_TXNID + 8].try_into().unwrap());
    let (t0, t1) = (txnid(0), txnid(page_size));
    if t0 > t1 { (page_size, 0, t0) } else { (page_size, page_size, t1) }
}

/// The length of `data.mdb` up to the newest snapshot's last page: the store grows the file
/// ahead of LMDB with zeros, which no damage there would change.
fn pages_len(dir: &Path) -> usize {
    let bytes = std::fs::read(data(dir)).unwrap();
    let (page_size, at, _) = newest_meta(dir);
    let last = u64::from_le_bytes(bytes[at + META_LAST_PAGE..at + META_LAST_PAGE + 8].try_into().unwrap());
    bytes.len().min((last as usize + 1) * page_size)
}

fn edit(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(data(dir)).unwrap();
    f(&mut bytes);
    std::fs::write(data(dir), bytes).unwrap();
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(data(from), data(to)).unwrap();
}

fn is_corrupt_file<T: std::fmt::Debug>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::CorruptFile { .. }))
}

/// In a child process, the directory its test works on.
fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_DIR).map(PathBuf::from)
}

/// Runs test `name` of this binary in a child process on the store in `dir`, and fails if the
/// child fails, dies of a signal, or runs for more than a minute.
fn in_child(name: &str, dir: &Path) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_mins(1) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name} on {}: the child hung", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        status.code() == Some(0),
        "{name} on {}: {status:?} (signal {:?})\n{text}",
        dir.display(),
        status.signal()
    );
    assert!(text.contains("1 passed"), "{name}: the child ran no test\n{text}");
}

/// The child's side: opening the damaged store is refused, or, if the damage is where
/// opening does not look, the integrity check reports it; `verify_file` reports it too.
fn refused_or_reported(dir: &Path) {
    let found = verify_file(dir);
    assert!(is_corrupt_file(&found), "verify_file: {found:?}");
    match Varve::open(dir) {
        Err(Error::CorruptFile { .. }) => {}
        Err(other) => panic!("open: {other:?}"),
        Ok(db) => {
            let report = db.begin_read().unwrap().check_integrity();
            assert!(is_corrupt_file(&report), "check_integrity: {report:?}");
        }
    }
}

#[test]
fn a_damaged_meta_page_size_is_refused_not_a_division_by_zero() {
    if let Some(dir) = child_dir() {
        return refused_or_reported(&dir);
    }
    let base = tempfile::tempdir().unwrap();
    store(base.path(), 300, 3);
    let (page_size, _, _) = newest_meta(base.path());
    let bit = page_size.trailing_zeros() as usize;
    // The only set bit of the page size, in either meta page: LMDB divides by a page size of 0.
    for meta in [0, page_size] {
        let dir = tempfile::tempdir().unwrap();
        copy_store(base.path(), dir.path());
        edit(dir.path(), |b| b[meta + META_PAGE_SIZE + bit / 8] ^= 1 << (bit % 8));
        in_child("a_damaged_meta_page_size_is_refused_not_a_division_by_zero", dir.path());
    }
}

#[test]
fn a_file_cut_short_is_refused_not_a_bus_error() {
    if let Some(dir) = child_dir() {
        return refused_or_reported(&dir);
    }
    let base = tempfile::tempdir().unwrap();
    store(base.path(), 3000, 30);
    let len = pages_len(base.path()) as u64;
    let (page_size, _, _) = newest_meta(base.path());
    // Half the file, and all but its last page: the pages at the end hold the last commit.
    for keep in [len / 2, len - page_size as u64] {
        let dir = tempfile::tempdir().unwrap();
        copy_store(base.path(), dir.path());
        std::fs::OpenOptions::new().write(true).open(data(dir.path())).unwrap().set_len(keep).unwrap();
        in_child("a_file_cut_short_is_refused_not_a_bus_error", dir.path());
    }
}

#[test]
fn a_damaged_transaction_id_is_refused_not_an_older_store() {
    let base = tempfile::tempdir().unwrap();
    store(base.path(), 300, 3);
    {
        let db = Varve::open(base.path()).unwrap();
        // Commits under a held view: the pages they free cannot be reused while it lives, so
        // afterwards the last commit reuses them instead of growing the file, and the two
        // meta pages end it at the same page.
        let view = db.begin_read().unwrap();
        for _ in 0..30 {
            fill(&db, 1, 1, |_| vec![0]);
        }
        drop(view);
        // Until the older meta page's id, flipped in bit 1, becomes the newest id plus one:
        // that flip makes the older snapshot look like the newest.
        while newest_meta(base.path()).2 & 2 != 0 {
            fill(&db, 1, 1, |_| vec![0]);
        }
        // The last commit: 100 acknowledged events that the older meta page does not have.
        fill(&db, 100, 7, |i| vec![i as u8; 40]);
        assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 300 + 100 + db.stats().commits - 1);
    }
    let (page_size, newest, txnid) = newest_meta(base.path());
    let older = page_size - newest;
    // Every bit of either id: LMDB would open the older snapshot, or a newer one that does
    // not exist; each is refused, by `verify_file` too.
    for (meta, bit) in (0..64).map(|bit| (newest, bit)).chain((0..64).map(|bit| (older, bit))) {
        let dir = tempfile::tempdir().unwrap();
        copy_store(base.path(), dir.path());
        edit(dir.path(), |b| b[meta + META_TXNID + bit / 8] ^= 1 << (bit % 8));
        let opened = Varve::open(dir.path());
        assert!(is_corrupt_file(&opened), "meta at {meta}, bit {bit} of transaction {txnid}: {opened:?}");
        assert!(is_corrupt_file(&verify_file(dir.path())), "meta at {meta}, bit {bit}");
    }
}

#[test]
fn an_empty_or_short_file_is_refused() {
    let base = tempfile::tempdir().unwrap();
    store(base.path(), 10, 1);
    let (page_size, _, _) = newest_meta(base.path());
    let bytes = std::fs::read(data(base.path())).unwrap();
    for keep in [0, 100, page_size, 2 * page_size - 1] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(data(dir.path()), &bytes[..keep]).unwrap();
        let opened = Varve::open(dir.path());
        assert!(is_corrupt_file(&opened), "{keep} bytes: {opened:?}");
        assert!(is_corrupt_file(&verify_file(dir.path())), "{keep} bytes");
    }
}

/// The page numbers of `table`'s root and of its first leaf (its root's first child when it
/// is a branch page).
/// A change to the bytes of a page.
type Damage = fn(&mut [u8]);

fn root_and_first_leaf(dir: &Path, table: &str) -> (u64, u64) {
    let report = verify_file(dir).unwrap();
    let t = report.tables.iter().find(|t| t.name == table).unwrap();
    assert!(t.depth >= 2, "{t:?}");
    let root = t.root.unwrap();
    let bytes = std::fs::read(data(dir)).unwrap();
    let page = &bytes[root as usize * report.page_size as usize..][..report.page_size as usize];
    let mut child = 0;
    let mut page = page;
    for _ in 1..t.depth {
        // The first node of a branch page: its child page number in the two size halves and
        // the flags (the high 16 bits).
        let node = u16::from_le_bytes([page[PAGE_HEADER], page[PAGE_HEADER + 1]]) as usize;
        let half = |at: usize| u64::from(u16::from_le_bytes([page[node + at], page[node + at + 1]]));
        child = half(0) | half(2) << 16 | half(4) << 32;
        page = &bytes[child as usize * report.page_size as usize..][..report.page_size as usize];
    }
    (root, child)
}

#[test]
fn damaged_page_headers_are_reported_not_crashes() {
    if let Some(dir) = child_dir() {
        return refused_or_reported(&dir);
    }
    let base = tempfile::tempdir().unwrap();
    // Enough full chunks of index entries (64 versions each) for `streams` to have a
    // branch page.
    store(base.path(), 9000, 30);
    let (page_size, _, _) = newest_meta(base.path());
    for table in ["events", "streams"] {
        let (branch, leaf) = root_and_first_leaf(base.path(), table);
        for page in [branch, leaf] {
            let at = page as usize * page_size;
            let damages: [(&str, Damage); 4] = [
                ("flags of the other kind", |p| p[PAGE_FLAGS] ^= 0x03),
                ("lower bound past the upper", |p| p[PAGE_LOWER + 1] ^= 0x40),
                ("upper bound into the header", |p| {
                    p[PAGE_UPPER..PAGE_UPPER + 2].copy_from_slice(&8u16.to_le_bytes());
                }),
                ("first node offset", |p| p[PAGE_HEADER] ^= 0x06),
            ];
            for (what, damage) in damages {
                let dir = tempfile::tempdir().unwrap();
                copy_store(base.path(), dir.path());
                edit(dir.path(), |b| damage(&mut b[at..at + page_size]));
                let found = verify_file(dir.path());
                assert!(
                    matches!(found, Err(Error::CorruptFile { page: Some(p), .. }) if p == page),
                    "{table} page {page}, {what}: {found:?}"
                );
                in_child("damaged_page_headers_are_reported_not_crashes", dir.path());
            }
        }
    }
}

#[test]
fn backups_pass_the_check_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let backups = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path().join("live")).unwrap();
    // A compacted copy writes meta page 0 as a new file's and meta page 1 at transaction 1.
    db.backup(backups.path().join("empty")).unwrap();
    fill(&db, 2000, 20, |i| vec![i as u8; if i % 50 == 0 { 5000 } else { 30 }]);
    db.backup(backups.path().join("full")).unwrap();
    for (name, events) in [("empty", 0), ("full", 2000)] {
        let copy = backups.path().join(name);
        let report = verify_file(&copy).unwrap();
        assert_eq!(report.txnid, 1, "{name}");
        assert_eq!(report.free_pages, 0, "{name}: a compacted copy has no free pages");
        let copy = Varve::open(&copy).unwrap();
        let view = copy.begin_read().unwrap();
        assert_eq!(view.last_seq().unwrap(), events);
        assert_eq!(view.check_integrity().unwrap().events, events);
    }
}

#[test]
fn a_new_file_with_no_commit_passes() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: a new environment that nothing else maps; closed before the store opens it.
    let env = unsafe { heed::EnvOpenOptions::new().map_size(1 << 20).open(dir.path()) }.unwrap();
    env.prepare_for_closing().wait();
    let report = verify_file(dir.path()).unwrap();
    assert_eq!((report.txnid, report.pages, report.tables.len()), (0, 2, 0));
    let db = Varve::open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 0);
}

/// Compares a closed store's (or LMDB file's) report with LMDB's own figures.
fn assert_matches_lmdb(dir: &Path, report: &varvedb::FileReport) {
    // SAFETY: the store is closed; nothing else maps the file while this environment lives.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(64).map_size(1 << 30).open(dir) }.unwrap();
    {
        let txn = env.read_txn().unwrap();
        let info = env.info();
        assert_eq!(report.pages, info.last_page_number as u64 + 1);
        assert_eq!(report.txnid, info.last_txn_id as u64);
        assert_eq!(report.pages, 2 + report.pages_in_use + report.free_pages);
        let main: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.open_database(&txn, None).unwrap().unwrap();
        let names: Vec<String> =
            main.iter(&txn).unwrap().map(|e| String::from_utf8(e.unwrap().0.to_vec()).unwrap()).collect();
        assert_eq!(names, report.tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
        for t in &report.tables {
            let db: heed::Database<heed::types::Bytes, heed::types::Bytes> =
                env.open_database(&txn, Some(&t.name)).unwrap().unwrap();
            let stat = db.stat(&txn).unwrap();
            let lmdb = (
                stat.depth,
                stat.entries as u64,
                stat.branch_pages as u64,
                stat.leaf_pages as u64,
                stat.overflow_pages as u64,
            );
            let ours = (u32::from(t.depth), t.entries, t.branch_pages, t.leaf_pages, t.overflow_pages);
            assert_eq!(ours, lmdb, "table {}", t.name);
        }
    }
    env.prepare_for_closing().wait();
}

fn env_size(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn a_large_store_passes_with_lmdb_page_counts() {
    let events = env_size("VARVEDB_LMDB_FILE_EVENTS", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::from_bytes([7; 32]);
    let report = {
        let db = Options::new().encryption_key(key).open(dir.path()).unwrap();
        // Every 10th payload a blob: 1.5 KiB ones inline in their leaf page, 3 and 9 KiB ones
        // on overflow pages.
        fill(&db, events, 100, |i| match i % 30 {
            0 => vec![(i / 30) as u8; 1536],
            10 => [&i.to_le_bytes()[..], &[1; 3072]].concat(),
            20 => [&i.to_le_bytes()[..], &[2; 9216]].concat(),
            _ => i.to_le_bytes().to_vec(),
        });
        // Shredding deletes keys and blobs: pages are freed, the free list grows.
        for stream in 1..=10u128 {
            db.shred(stream).unwrap();
        }
        let report = db.begin_read().unwrap().check_integrity().unwrap();
        assert_eq!(report.events, u64::from(events));
        assert_eq!(report.file.tables, 13);
        report
    };
    let file = verify_file(dir.path()).unwrap();
    assert_eq!(file.coverage(), report.file);
    let blobs = file.tables.iter().find(|t| t.name == "blobs").unwrap();
    assert!(blobs.overflow_pages > 0 && file.free_pages > 0, "{file:?}");
    assert_matches_lmdb(dir.path(), &file);
}

#[test]
fn lmdb_files_of_random_puts_and_deletes_pass() {
    let rounds = env_size("VARVEDB_LMDB_FILE_ROUNDS", 30);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut free, mut overflow) = (0, 0);
    for round in 0..rounds {
        {
            // SAFETY: nothing else maps these files while this environment lives.
            let env = unsafe {
                heed::EnvOpenOptions::new()
                    .read_txn_without_tls()
                    .max_dbs(8)
                    .map_size(1 << 28)
                    .open(dir.path())
            }
            .unwrap();
            let mut txn = env.write_txn().unwrap();
            let tables: Vec<heed::Database<heed::types::Bytes, heed::types::Bytes>> =
                (0..4).map(|t| env.create_database(&mut txn, Some(&format!("t{t}"))).unwrap()).collect();
            txn.commit().unwrap();
            // A reader held across some commits pins the pages they free: the free list grows.
            let mut reader = None;
            for _ in 0..rng.usize(1..6) {
                if rng.u8(..3) == 0 {
                    reader = if reader.is_none() { Some(env.read_txn().unwrap()) } else { None };
                }
                let mut txn = env.write_txn().unwrap();
                for _ in 0..rng.usize(1..400) {
                    let table = tables[rng.usize(..tables.len())];
                    let key: Vec<u8> = (0..rng.usize(1..40)).map(|_| rng.u8(..4)).collect();
                    if rng.u8(..3) == 0 {
                        table.delete(&mut txn, &key).unwrap();
                    } else {
                        let len = if rng.u8(..10) == 0 { rng.usize(2000..20_000) } else { rng.usize(0..300) };
                        table.put(&mut txn, &key, &vec![rng.u8(..); len]).unwrap();
                    }
                }
                match rng.u8(..10) {
                    0 => txn.abort(),
                    1 => {
                        tables[rng.usize(..tables.len())].clear(&mut txn).unwrap();
                        txn.commit().unwrap();
                    }
                    _ => txn.commit().unwrap(),
                }
            }
            drop(reader);
            env.prepare_for_closing().wait();
        }
        let report = verify_file(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_matches_lmdb(dir.path(), &report);
        free = report.free_pages.max(free);
        overflow = report.tables.iter().map(|t| t.overflow_pages).sum::<u64>().max(overflow);
    }
    assert!(free > 0 && overflow > 0, "free pages {free}, overflow pages {overflow}");
}

#[test]
fn random_damage_never_panics_or_hangs_the_check() {
    let flips = env_size("VARVEDB_LMDB_FILE_FLIPS", 3000);
    let base = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(base.path()).unwrap();
        // Enough events that the commit record area's 32 pages without headers (the rest of
        // one overflow value) are a small part of the file.
        fill(&db, 2000, 12, |i| vec![i as u8; if i % 40 == 0 { 3000 } else { 20 }]);
    }
    let mut bytes = std::fs::read(data(base.path())).unwrap();
    bytes.truncate(pages_len(base.path()));
    let (page_size, _, _) = newest_meta(base.path());
    let pages = bytes.len() / page_size;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut found = 0;
    for _ in 0..flips {
        let mut damaged = bytes.clone();
        // Mostly in page headers and node offsets, where a flip changes the structure.
        for _ in 0..rng.usize(1..4) {
            let at = match rng.u8(..3) {
                0 => rng.usize(..damaged.len()),
                _ => rng.usize(..pages) * page_size + rng.usize(..PAGE_HEADER + 16),
            };
            damaged[at] ^= 1 << rng.u8(..8);
        }
        if rng.u8(..20) == 0 {
            damaged.truncate(rng.usize(..damaged.len()));
        }
        std::fs::write(data(dir.path()), &damaged).unwrap();
        found += usize::from(is_corrupt_file(&verify_file(dir.path())));
    }
    // Most flips land where the structure is checked.
    assert!(found > flips as usize / 2, "{found} of {flips}");
}

#[test]
fn the_check_of_an_old_view_walks_the_newest_snapshot_instead() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    fill(&db, 100, 4, |i| vec![i as u8; 10]);
    let view = db.begin_read().unwrap();
    let own = view.check_integrity().unwrap().file.snapshot;
    // One commit later the view's meta page still holds its snapshot; two commits overwrite it.
    fill(&db, 1, 1, |_| vec![1]);
    let report = view.check_integrity().unwrap();
    assert_eq!((report.events, report.file.snapshot), (100, own));
    fill(&db, 1, 1, |_| vec![2]);
    let report = view.check_integrity().unwrap();
    assert_eq!(report.events, 100, "the log of the view's own snapshot");
    assert_eq!(report.file.snapshot, own + 2, "the pages of the newest commit");
    drop(view);
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 102);
}

/// The cost of the checks on a large store, run by hand:
/// `VARVEDB_LMDB_FILE_MEASURE=<dir> cargo test --release --test lmdb_file measure -- --ignored --nocapture`
/// builds (once) a store of `VARVEDB_LMDB_FILE_EVENTS` events (default 1,000,000) in `<dir>`,
/// then times `Varve::open` (which runs the check before open) and `verify_file`.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_open_and_verify() {
    let Some(dir) = std::env::var_os("VARVEDB_LMDB_FILE_MEASURE").map(PathBuf::from) else {
        return;
    };
    if !data(&dir).exists() {
        let events = env_size("VARVEDB_LMDB_FILE_EVENTS", 1_000_000);
        let db = Varve::open(&dir).unwrap();
        for start in (0..events).step_by(1000) {
            let mut batch = WriteBatch::new();
            for i in start..(start + 1000).min(events) {
                let stream = u128::from(i.wrapping_mul(2_654_435_761) % 1000 + 1);
                batch.append(stream, ExpectedVersion::Auto, [NewEvent::new("measured", vec![i as u8; 64])]);
            }
            db.write(batch).unwrap();
        }
    }
    let size = std::fs::metadata(data(&dir)).unwrap().len();
    let mb = f64::from(u32::try_from(size >> 10).unwrap()) / 1024.0;
    let mut opens: Vec<Duration> = (0..41)
        .map(|_| {
            let start = Instant::now();
            let db = Varve::open(&dir).unwrap();
            let open = start.elapsed();
            drop(db);
            open
        })
        .collect();
    opens.sort();
    println!("open: min {:?}, median {:?}, max {:?}", opens[0], opens[20], opens[40]);
    for _ in 0..5 {
        let start = Instant::now();
        let report = verify_file(&dir).unwrap();
        let verify = start.elapsed();
        println!(
            "{mb:.0} MB, {} pages: verify_file {verify:?} ({:.2} ms/MB)",
            report.pages,
            verify.as_secs_f64() * 1000.0 / mb
        );
    }
}
