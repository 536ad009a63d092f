//! Relaxed and immediate handles of one store, across processes: they never write it at
//! once, and each leaves the store as the other needs it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use varvedb::{Durability, Error, ExpectedVersion, NewEvent, Options};

const HOLD: &str = "VARVEDB_DURABILITY_HOLD_STORE";
const HOLD_RELAXED: &str = "VARVEDB_DURABILITY_HOLD_RELAXED";

fn durability(relaxed: bool) -> Durability {
    if relaxed { Durability::Relaxed } else { Durability::Immediate }
}

fn append(db: &varvedb::Varve, stream: u128) {
    db.append(stream, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())]).unwrap();
}

/// Another process that opens the store in `dir` for writing with the given durability,
/// appends, and keeps it open until its stdin closes.
fn holder(dir: &std::path::Path, relaxed: bool) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["handles_of_the_two_durabilities_never_write_a_store_at_once", "--exact", "--nocapture"])
        .env(HOLD, dir)
        .env(HOLD_RELAXED, if relaxed { "1" } else { "0" });
    // Its output is kept open until it ends: the test harness prints after the test.
    spawn_ready(&mut cmd)
}

/// Spawns `cmd` with piped stdin and stdout and waits for it to say `ready`.
fn spawn_ready(cmd: &mut Command) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("ready") {
        said.clear();
        assert!(out.read_line(&mut said).unwrap() > 0, "the child ended");
    }
    (child, out)
}

fn hold_and_wait() {
    let dir = std::env::var_os(HOLD).unwrap();
    let relaxed = std::env::var(HOLD_RELAXED).unwrap() == "1";
    let db = Options::new().durability(durability(relaxed)).open(&dir).unwrap();
    append(&db, 9);
    println!("ready");
    std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
    drop(db);
}

#[test]
fn handles_of_the_two_durabilities_never_write_a_store_at_once() {
    if std::env::var_os(HOLD).is_some() {
        hold_and_wait();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for held in [true, false] {
        let (mut other, _out) = holder(dir.path(), held);
        let e = Options::new().durability(durability(!held)).open(dir.path()).unwrap_err();
        let expected = if held { "relaxed" } else { "immediate" };
        assert!(matches!(e, Error::DurabilityInUse { other, .. } if other == expected), "{e:?}");
        // The same durability shares the store; a read-only open needs none.
        let same = Options::new().durability(durability(held)).open(dir.path()).unwrap();
        append(&same, 1);
        drop(same);
        let reader = Options::new().read_only(true).open(dir.path()).unwrap();
        assert!(reader.begin_read().unwrap().last_seq().unwrap() > 0);
        drop(reader);
        drop(other.stdin.take());
        assert!(other.wait().unwrap().success());
        // With the other process gone, the other durability opens it.
        let db = Options::new().durability(durability(!held)).open(dir.path()).unwrap();
        append(&db, 2);
        drop(db);
    }
    let db = Options::new().open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.last_seq().unwrap(), 6);
    view.check_integrity().unwrap();
}

#[test]
fn a_relaxed_handle_checkpoints_and_an_immediate_one_removes_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("checkpoint");
    let db = Options::new().durability(Durability::Relaxed).open(dir.path()).unwrap();
    assert!(checkpoints.exists(), "a relaxed open makes a checkpoint before its first commit");
    let before = std::fs::read(&checkpoints).unwrap();
    for i in 0..100 {
        append(&db, i % 7);
    }
    // Without a sync, a checkpoint comes on its own, an interval after the first commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read(&checkpoints).unwrap() == before {
        assert!(std::time::Instant::now() < deadline, "no timed checkpoint");
        std::thread::sleep(varvedb::RELAXED_CHECKPOINT_INTERVAL);
    }
    let timed = std::fs::read(&checkpoints).unwrap();
    append(&db, 8);
    db.sync().unwrap();
    assert_ne!(std::fs::read(&checkpoints).unwrap(), timed, "a sync writes a checkpoint");
    // The checkpoint's pin is a reader of the store's own, not a read view that lags.
    assert_eq!(db.reader_lag().unwrap(), None);
    drop(db);
    let db = Options::new().open(dir.path()).unwrap();
    assert!(!checkpoints.exists(), "an immediate handle flushes every commit: no checkpoint to go back to");
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 101);
}

/// Relaxed appends from several threads, with `sync` from another and payloads large enough
/// that commits make checkpoints of their own: every append is answered, every event is
/// there, and the file stays within a bound of what it holds. `VARVEDB_RELAXED_LARGE_APPENDS`
/// sets the appends of 256 KiB per thread (default 150, three threads).
#[test]
fn relaxed_writers_syncs_and_checkpoints_of_commits_run_together() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(
        Options::new().durability(Durability::Relaxed).map_size(1 << 31).open(dir.path()).unwrap(),
    );
    let per_thread: u32 = std::env::var("VARVEDB_RELAXED_LARGE_APPENDS").map_or(150, |v| v.parse().unwrap());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..3u32)
            .map(|t| {
                let db = &db;
                s.spawn(move || {
                    for i in 0..per_thread {
                        // Unique, so that no blob is shared: 256 KiB of pages per append.
                        let mut payload = vec![0u8; 256 * 1024];
                        payload[..8].copy_from_slice(&(u64::from(t) << 32 | u64::from(i)).to_le_bytes());
                        db.append(u128::from(t), ExpectedVersion::Exact(i), [NewEvent::new("big", payload)])
                            .unwrap();
                    }
                })
            })
            .collect();
        let syncer = s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                db.sync().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        syncer.join().unwrap();
    });
    let view = db.begin_read().unwrap();
    assert_eq!(view.last_seq().unwrap(), 3 * u64::from(per_thread));
    for t in 0..3u128 {
        assert_eq!(view.stream_version(t).unwrap(), Some(per_thread));
    }
    view.check_integrity().unwrap();
    drop(view);
    let held = 3 * u64::from(per_thread) * 256 * 1024;
    let len = std::fs::metadata(dir.path().join("data.mdb")).unwrap().len();
    // What the events hold, plus what a pin keeps between checkpoints, twice over.
    assert!(len < held + 4 * (64 << 20), "data.mdb is {len} bytes for {held} of payloads");
}

/// The role a copy of this test binary plays for the tests below (`reader`: holds the store
/// open read-only until its stdin closes; `rebooted`: opens it, as after a restart of the
/// machine, and prints its last seq and whether its integrity check passed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ROLE: &str = "VARVEDB_DURABILITY_ROLE";
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ROLE_DIR: &str = "VARVEDB_DURABILITY_ROLE_DIR";

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[path = "support/iofault.rs"]
#[allow(dead_code)]
mod iofault;

/// Runs this test binary's `role_child` test in the given role on `dir`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn role(dir: &std::path::Path, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["role_child", "--exact", "--nocapture"]).env(ROLE, role).env(ROLE_DIR, dir);
    cmd
}

/// Not a test of its own: the other process of the tests below (a no-op without `ROLE`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn role_child() {
    let (Some(role), Some(dir)) = (std::env::var_os(ROLE), std::env::var_os(ROLE_DIR)) else { return };
    match role.to_str().unwrap() {
        "reader" => {
            let db = Options::new().read_only(true).open(&dir).unwrap();
            println!("ready");
            std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
            drop(db);
        }
        "rebooted" => {
            let db = Options::new().open(&dir).unwrap();
            let view = db.begin_read().unwrap();
            let integrity = view.check_integrity().map_or_else(|e| format!("{e}"), |_| "ok".to_owned());
            println!("seq {} integrity {integrity}", view.last_seq().unwrap());
        }
        "rebooted-reader" => match Options::new().read_only(true).open(&dir) {
            Ok(db) => println!("seq {}", db.begin_read().unwrap().last_seq().unwrap()),
            Err(e) => println!("error {e:?}"),
        },
        // Opens the store relaxed and waits for a line; then appends and syncs (the parent
        // has made that checkpoint's flush of the checkpoint file fail), says so, and waits
        // to be killed.
        "failing" => {
            let db = Options::new().durability(Durability::Relaxed).open(&dir).unwrap();
            println!("ready");
            std::io::stdin().read_line(&mut String::new()).unwrap();
            append(&db, 1);
            assert!(matches!(db.sync(), Err(Error::OutcomeUnknown { .. })));
            println!("failed");
            std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
        }
        // Opens the store relaxed and waits for a line; then appends and syncs, between two
        // marks in the shim's log (written to the file `marks` beside the store).
        "recorded" => {
            let db = Options::new().durability(Durability::Relaxed).open(&dir).unwrap();
            println!("ready");
            std::io::stdin().read_line(&mut String::new()).unwrap();
            let marks = std::path::Path::new(&dir).parent().unwrap().join("marks");
            let mut marks = std::fs::File::create(marks).unwrap();
            append(&db, 2);
            std::io::Write::write_all(&mut marks, b"sync").unwrap();
            db.sync().unwrap();
            std::io::Write::write_all(&mut marks, b"synced").unwrap();
            drop(db);
        }
        "open-relaxed" => match Options::new().durability(Durability::Relaxed).open(&dir) {
            Ok(db) => println!("opened at {}", db.begin_read().unwrap().last_seq().unwrap()),
            Err(e) => println!("error {e:?}"),
        },
        other => panic!("unknown role {other}"),
    }
}

/// The checkpoints a relaxed handle leaves behind must not outlive the immediate commits
/// made after them: an immediate open that finds the store in use by a read-only process
/// must still remove the checkpoint file, or the next restart of the machine would take the
/// store back to that checkpoint, past commits acknowledged as durable.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn an_immediate_handle_beside_a_read_only_one_leaves_no_checkpoint_to_go_back_to() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().durability(Durability::Relaxed).open(dir.path()).unwrap();
    for i in 0..5 {
        append(&db, i);
    }
    drop(db);
    let (mut reader, _out) = spawn_ready(&mut role(dir.path(), "reader"));
    // Acknowledged once durable: these survive any power loss.
    let db = Options::new().open(dir.path()).unwrap();
    for i in 0..200 {
        append(&db, i % 11);
    }
    drop(db);
    drop(reader.stdin.take());
    assert!(reader.wait().unwrap().success());
    let said = after_restart(dir.path(), "rebooted");
    assert!(said.contains("seq 205 integrity ok"), "{said}");
}

/// A relaxed handle's close makes a checkpoint of its last commit: after a restart of the
/// machine nothing is to be taken back, and a read-only open reads the store as it was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_store_closed_by_a_relaxed_handle_opens_read_only_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().durability(Durability::Relaxed).open(dir.path()).unwrap();
    for i in 0..30 {
        append(&db, i % 4);
    }
    drop(db);
    let said = after_restart(dir.path(), "rebooted-reader");
    assert!(said.contains("seq 30"), "{said}");
}

/// Runs `role` on `dir` as after a restart of the machine (the shim shows the child another
/// boot id), and returns what it printed; it must succeed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn after_restart(dir: &std::path::Path, role_name: &str) -> String {
    let mut cmd = role(dir, role_name);
    iofault::Mode::new().boot_id("00000000-0000-4000-8000-00000000b007").apply(&mut cmd);
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}\n{}", String::from_utf8_lossy(&out.stderr));
    said
}

/// Two relaxed processes share a store; one writes a checkpoint entry and dies before its
/// flush returns (here: the flush fails, and the process is killed). The entry is then in the
/// page cache only, and the durable one in its slot is older, its pin gone with the process.
/// The other process's next checkpoint must not overwrite the other slot, the newest
/// durable entry, before the newer one is durable: a power loss during that write would
/// leave only the old entry, of a snapshot whose pages commits have reused since.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_checkpoint_flushes_another_process_entry_before_it_overwrites_the_other_slot() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let mut failing = role(&dir, "failing");
    iofault::Mode::new().watch("checkpoint").fail("fdatasync:2+:eio").apply(&mut failing);
    let (mut failing, mut failing_out) = spawn_ready(&mut failing);
    let log = root.path().join("log");
    let mut recorded = role(&dir, "recorded");
    iofault::Mode::new().watch("checkpoint").marker("marks").record(&log).apply(&mut recorded);
    let (mut recorded, _recorded_out) = spawn_ready(&mut recorded);
    // The first process's checkpoint writes its entry over its own first one, and fails.
    std::io::Write::write_all(failing.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut said = String::new();
    while !said.contains("failed") {
        said.clear();
        assert!(failing_out.read_line(&mut said).unwrap() > 0, "the failing process ended");
    }
    failing.kill().unwrap();
    failing.wait().unwrap();
    std::io::Write::write_all(recorded.stdin.as_mut().unwrap(), b"go\n").unwrap();
    drop(recorded.stdin.take());
    assert!(recorded.wait().unwrap().success());
    let ops = iofault::parse_log(&std::fs::read(&log).unwrap());
    let from = ops.iter().position(|op| *op == iofault::Op::Mark(b"sync".to_vec())).unwrap();
    let first = ops[from..]
        .iter()
        .find(|op| matches!(op, iofault::Op::Write { .. } | iofault::Op::Flush { .. }))
        .unwrap();
    assert!(
        matches!(first, iofault::Op::Flush { .. }),
        "the checkpoint wrote its entry before the file was flushed"
    );
}

/// A relaxed open whose first checkpoint cannot be written (a full disk) fails with the
/// disk's error, as any open does: no commit's outcome is in question, and the store opens
/// once space is freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_relaxed_open_on_a_full_disk_is_disk_full_and_the_store_opens_after() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().open(dir.path()).unwrap();
    append(&db, 1);
    drop(db);
    let mut open = role(dir.path(), "open-relaxed");
    iofault::Mode::new().watch("checkpoint").fail("write:1+:enospc").apply(&mut open);
    let out = open.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("error DiskFull"), "{said}");
    let db = Options::new().durability(Durability::Relaxed).open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 1);
}
