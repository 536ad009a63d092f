//! Faults of the disk and of the store's directory, on real files: a full disk (a small
//! tmpfs, mounted when the tests run as root) during creation, read views and appends; a map
//! grown by another process; paths and files that are not a store; read views held open.
//!
//! Whatever could die by SIGBUS runs in a child process (`tests/support/disk_child.rs`), so
//! that a crash fails the test instead of ending the test run.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve};

const PAGE: u64 = 4096;

/// A tmpfs of a given size, mounted on a new directory and unmounted when dropped (also when
/// the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes; `None`, with a message, when not running as root.
    fn mount(size: u64, test: &str) -> Option<Tmpfs> {
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            eprintln!("{test}: skipped, mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Busy for a moment when a child process another test forks has not yet closed the
        // descriptors it inherited; busy for good when a failed test left a file open.
        for _ in 0..20 {
            if Command::new("umount").arg(self.dir.path()).output().is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(Command::new("umount").arg("-l").arg(self.dir.path()).output());
    }
}

/// A file that takes all the space of a filesystem but `leave` bytes; removed when dropped.
struct Filler {
    path: PathBuf,
}

impl Filler {
    fn new(dir: &Path, leave: u64) -> Filler {
        let path = dir.join("filler");
        let mut file = File::create(&path).unwrap();
        let chunk = vec![0x5a; PAGE as usize];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", dir.display()),
            }
        }
        let pages = written.div_ceil(PAGE);
        file.set_len(pages.saturating_sub(leave / PAGE) * PAGE).unwrap();
        Filler { path }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        drop(std::fs::remove_file(&self.path));
    }
}

/// Runs `disk-child` and returns its one line. A child killed by a signal fails the test.
fn child(args: &[&str], dir: &Path) -> String {
    let (command, rest) = args.split_first().unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_disk-child")).arg(command).arg(dir).args(rest).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(signal) = out.status.signal() {
        let name = if signal == 7 { " (SIGBUS)" } else { "" };
        panic!("disk-child {args:?} was killed by signal {signal}{name}; stderr: {stderr}");
    }
    assert!(out.status.success(), "disk-child {args:?} failed: {}; stderr: {stderr}", out.status);
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The entries of abandoned or unfinished creations in a store's directory.
fn temporaries(store: &Path) -> Vec<String> {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".varvedb"))
        .collect()
}

fn event(len: usize) -> NewEvent {
    NewEvent::new("noted", vec![0x42; len])
}

#[test]
fn creating_a_store_on_a_nearly_full_disk_never_leaves_one_that_cannot_open() {
    let Some(fs) = Tmpfs::mount(1 << 20, "creating_a_store_on_a_nearly_full_disk") else { return };
    let store = fs.path().join("store");
    let (mut created, mut full) = (0, 0);
    // From no page free to well past what a new store needs (its data file, with the 32
    // pages of its commit record area, and a lock file for 1,024 readers: about 60 pages),
    // one page at a time.
    for free_pages in 0..=75 {
        let filler = Filler::new(fs.path(), free_pages * PAGE);
        let first = child(&["open"], &store);
        match first.as_str() {
            "ok 0" => created += 1,
            line if line.starts_with("err DiskFull") => full += 1,
            line => panic!("{free_pages} pages free: {line}"),
        }
        drop(filler);
        assert_eq!(
            child(&["open"], &store),
            "ok 0",
            "{free_pages} pages free, then space freed (first: {first})"
        );
        assert_eq!(temporaries(&store), Vec::<String>::new(), "{free_pages} pages free");
        std::fs::remove_dir_all(&store).unwrap();
    }
    assert!(
        created > 0 && full > 0,
        "the fill levels did not cross the boundary: {created} created, {full} full"
    );
}

#[test]
fn a_hundred_read_views_on_a_full_disk_never_crash() {
    let Some(fs) = Tmpfs::mount(1 << 20, "a_hundred_read_views_on_a_full_disk") else { return };
    let store = fs.path().join("store");
    assert_eq!(child(&["open"], &store), "ok 0");
    let lock = store.join("lock.mdb");
    let lock_len = std::fs::metadata(&lock).unwrap().len();
    let filler = Filler::new(fs.path(), 0);

    // The lock file of a store is allocated whole: every reader slot has its page.
    assert_eq!(child(&["views", "150"], &store), "ok 150");

    // A lock file with holes, as LMDB makes one: the holes cannot be given pages now.
    drop(filler);
    std::fs::remove_file(&lock).unwrap();
    File::create(&lock).unwrap().set_len(lock_len).unwrap();
    let filler = Filler::new(fs.path(), 0);
    let out = child(&["views", "150"], &store);
    assert!(out.starts_with("err DiskFull"), "sparse lock file on a full disk: {out}");

    // No lock file at all: it cannot be made.
    std::fs::remove_file(&lock).unwrap();
    let out = child(&["views", "150"], &store);
    assert!(out.starts_with("err DiskFull"), "no lock file on a full disk: {out}");
    assert!(!lock.exists(), "no lock file cut short is left");
    assert_eq!(temporaries(&store), Vec::<String>::new());

    drop(filler);
    assert_eq!(child(&["views", "150"], &store), "ok 150");
}

#[test]
fn appends_on_a_full_disk_are_disk_full_and_the_store_recovers() {
    let Some(fs) = Tmpfs::mount(2 << 20, "appends_on_a_full_disk") else { return };
    let store = fs.path().join("store");
    // Opened here: appends write through `pwrite`, which fails instead of crashing.
    let db = Varve::open(&store).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(10)]).unwrap();
    let filler = Filler::new(fs.path(), 96 * 1024);
    // Sizes from one page to many: a write that does not fit at all fails with ENOSPC, one
    // that fits in part is cut short (EIO from LMDB).
    let mut failures = Vec::new();
    for (i, len) in [100, 3000, 9000, 30_000, 70_000, 200_000].iter().cycle().take(300).enumerate() {
        match db.append(1u128, ExpectedVersion::Auto, [event(*len + i)]) {
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.len() > 10, "the disk never filled: {failures:?}");
    for e in &failures {
        let Error::DiskFull { path, available, .. } = e else { panic!("a full disk reported as {e:?}") };
        assert_eq!(path, &store.canonicalize().unwrap());
        assert!(*available < 96 * 1024, "{available} bytes available");
    }
    let stored = db.begin_read().unwrap().last_seq().unwrap();

    drop(filler);
    let a = db.append(1u128, ExpectedVersion::Auto, [event(50_000)]).unwrap();
    assert_eq!(a.first_seq, stored + 1);
    drop(db);
    let db = Varve::open(&store).unwrap();
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!(report.events, stored + 1);
}

#[test]
fn a_map_grown_by_another_process_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().map_size(1 << 20).open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(10)]).unwrap();
    let held = db.begin_read().unwrap();

    // Another process, with a larger map, writes 4 MiB: past this process's 1 MiB map.
    assert_eq!(
        child(&["grow", &(64usize << 20).to_string(), &(4usize << 20).to_string()], dir.path()),
        "ok 65"
    );

    // With a view of this process open, the map cannot move: a typed error, nothing written.
    let refused = db.append(1u128, ExpectedVersion::Auto, [event(10)]);
    assert!(matches!(refused, Err(Error::MapResized { map_size: 1_048_576 })), "{refused:?}");
    assert_eq!(held.last_seq().unwrap(), 1, "the old snapshot still reads");
    drop(held);

    // With none open, the next write moves the map to the size the other process set.
    let a = db.append(1u128, ExpectedVersion::Auto, [event(10)]).unwrap();
    assert_eq!(a.first_seq, 66);
    assert!(db.map_size() >= 64 << 20, "map size {}", db.map_size());
    let view = db.begin_read().unwrap();
    assert_eq!(view.event(65).unwrap().unwrap().payload().len(), 64 * 1024);
    assert_eq!(view.check_integrity().unwrap().events, 66);
}

#[test]
fn a_read_view_is_the_first_to_take_a_grown_map_when_none_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().map_size(1 << 20).open(dir.path()).unwrap();
    assert_eq!(
        child(&["grow", &(64usize << 20).to_string(), &(2usize << 20).to_string()], dir.path()),
        "ok 32"
    );
    let view = db.begin_read().unwrap();
    assert_eq!(view.last_seq().unwrap(), 32);
    // A second view while the first is open needs no move.
    assert_eq!(db.begin_read().unwrap().event(32).unwrap().unwrap().payload().len(), 64 * 1024);
}

#[test]
fn a_path_that_is_a_file_is_not_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.mdb");
    std::fs::write(&file, b"not a store").unwrap();
    let err = Varve::open(&file).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if path == &file), "{err:?}");
    assert!(err.to_string().contains(file.to_str().unwrap()), "{err}");
    let below = file.join("store");
    let err = Varve::open(&below).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if path == &below), "{err:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store");
}

#[test]
fn an_lmdb_file_of_another_application_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut options = heed::EnvOpenOptions::new();
        options.map_size(1 << 20).max_dbs(4);
        // SAFETY: a new directory that nothing else opens while this environment lives.
        let env = unsafe { options.open(dir.path()) }.unwrap();
        let mut txn = env.write_txn().unwrap();
        let users: heed::Database<heed::types::Str, heed::types::Str> =
            env.create_database(&mut txn, Some("users")).unwrap();
        users.put(&mut txn, "ada", "lovelace").unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
    let err = Varve::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::NotAStore { path } if path == &dir.path().canonicalize().unwrap()),
        "{err:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before, "nothing written");

    // An LMDB file with nothing in it is no other application's: it becomes a store.
    let empty = tempfile::tempdir().unwrap();
    {
        // SAFETY: as above.
        let env = unsafe { heed::EnvOpenOptions::new().open(empty.path()) }.unwrap();
        env.force_sync().unwrap();
    }
    let db = Varve::open(empty.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
}

#[test]
fn a_read_view_held_open_is_reported_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&warnings);
    let db =
        Options::new().on_reader_lag(4, move |lag| log.lock().unwrap().push(lag)).open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
    assert_eq!(db.reader_lag().unwrap(), None);
    let view = db.begin_read().unwrap();
    for _ in 0..12 {
        db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
    }
    let lag = db.reader_lag().unwrap().expect("a view is open");
    assert_eq!((lag.commits, lag.pid), (12, std::process::id()));
    // Past the bound of 4 at 5 commits, then each 4 further: 9.
    let seen: Vec<u64> = warnings.lock().unwrap().iter().map(|l| l.commits).collect();
    assert_eq!(seen, [5, 9]);
    drop(view);
    assert_eq!(db.reader_lag().unwrap(), None);
    db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
    assert_eq!(warnings.lock().unwrap().len(), 2, "no view, no warning");
}

#[test]
fn what_an_abandoned_creation_left_is_removed_unless_a_creation_is_under_way() {
    let dir = tempfile::tempdir().unwrap();
    drop(Varve::open(dir.path()).unwrap());
    let abandon = || {
        // A process that died while building: its private directory, with a file cut short,
        // and a lock file it had not yet linked into place.
        let build = dir.path().join(".varvedb-tmp-4000000-0");
        std::fs::create_dir(&build).unwrap();
        std::fs::write(build.join("data.mdb"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join(".varvedb-tmp-4000000-1"), vec![0u8; 100]).unwrap();
    };
    abandon();
    open_until_clean(dir.path());

    // A creation under way holds the directory's lock: what it builds is left alone.
    abandon();
    let under_way = File::open(dir.path()).unwrap();
    under_way.lock().unwrap();
    drop(Varve::open(dir.path()).unwrap());
    assert_eq!(temporaries(dir.path()).len(), 2);
    drop(under_way);
    open_until_clean(dir.path());
}

/// Opens the store until an open has removed every temporary entry. Clean-up is best effort:
/// it runs only when the directory's lock is free, and a child that another test of this
/// binary forks inherits, until it execs, every descriptor open at that moment, the lock's
/// included; an open in that window leaves the entries for the next one.
fn open_until_clean(dir: &Path) {
    for _ in 0..200 {
        drop(Varve::open(dir).unwrap());
        if temporaries(dir).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(temporaries(dir), Vec::<String>::new());
}

#[test]
fn processes_creating_one_store_at_once_make_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_disk-child"))
                .arg("open")
                .arg(&store)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "ok 0");
    }
    assert_eq!(temporaries(&store), Vec::<String>::new());
    let db = Varve::open(&store).unwrap();
    db.append(1u128, ExpectedVersion::Auto, [event(1)]).unwrap();
}
