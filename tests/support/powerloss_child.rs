//! Child process of the power-loss simulation (`tests/powerloss.rs`).
//!
//! `powerloss-child run <workload> <root>` creates a store at `<root>/store`, runs one
//! workload on it and acknowledges each finished operation with one line written to
//! `<root>/acks` in one `write` call. Under the I/O shim each such write becomes a marker
//! in the same ordered log as the store's writes and flushes, so the parent knows which
//! acknowledgements precede which flush.
//!
//! `powerloss-child check <workload> <acks> <jobs>` checks crash states: for each line
//! `<state> <image root> <acknowledged lines>` of the jobs file it opens the store of that
//! image, checks it against the first lines of the acks file, and prints
//! `<state> <verdict> [detail]` (verdicts below, in [`Verdict`]). The parent runs it under
//! the I/O shim with another boot id than the run's, as after a power loss.
//!
//! `powerloss-child boot-id` prints the machine's boot id as the store reads it, and
//! `powerloss-child inode <path>` the file's inode number by path and by descriptor (the
//! shim's self-tests).
//!
//! Acknowledgement lines:
//! - `opened`: `Options::open` of the new store returned;
//! - `append <stream> <first version> <last version> <first seq> <last seq>`;
//! - `project <checkpoint>`: a projection step committed up to this seq;
//! - `shredding <stream>` before `shred` is called, `shredded <stream>` after it returned;
//! - `rotating <epoch>` before `rotate_master_key` to the key of that epoch, `rotated
//!   <epoch>` after it returned;
//! - `backup <name> <seq>`: `backup` to `<root>/backups/<name>` returned, and every event
//!   up to `seq` was committed before it started;
//! - `done`: the lines of one write request are all written (workload `relaxed`);
//! - `synced`: `Varve::sync` returned, `closed`: the store was dropped (workload `relaxed`:
//!   what was acknowledged before either is durable, what came after may be lost).
//!
//! Events are a function of their stream and version, so the checker knows every byte.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use varvedb::{
    Appended, Durability, Error, ExpectedVersion, MasterKey, NewEvent, Options, Varve, WriteBatch,
};

#[path = "totals.rs"]
#[allow(dead_code)]
mod totals;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 4 => run(&args[2], Path::new(&args[3])),
        Some("check") if args.len() == 5 => check_jobs(&args[2], Path::new(&args[3]), Path::new(&args[4])),
        // Read as the store reads it: through `std::fs`.
        // By path and by descriptor, as the store may read it.
        Some("inode") if args.len() == 3 => {
            use std::os::unix::fs::MetadataExt;
            let by_path = std::fs::metadata(&args[2]).expect("stat").ino();
            let by_fd = File::open(&args[2]).and_then(|f| f.metadata()).expect("fstat").ino();
            println!("{by_path} {by_fd}");
        }
        Some("boot-id") if args.len() == 2 => {
            print!(
                "{}",
                std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("read the boot id")
            );
        }
        _ => {
            panic!(
                "usage: powerloss-child run <workload> <root> | check <workload> <acks> <jobs> | boot-id | inode <path>"
            )
        }
    }
}

/// Whether the workload's store is encrypted.
fn encrypted(workload: &str) -> bool {
    matches!(workload, "shred" | "rotate")
}

/// The master key of an epoch: the store starts at epoch 0, each rotation moves to the next.
fn key(epoch: u32) -> MasterKey {
    MasterKey::from_bytes([epoch as u8 + 1; 32])
}

fn open(workload: &str, store: &Path, epoch: u32) -> Result<Varve, Error> {
    let options = Options::new();
    let options = if workload == "relaxed" { options.durability(Durability::Relaxed) } else { options };
    if encrypted(workload) { options.encryption_key(key(epoch)) } else { options }.open(store)
}

/// The stream of the relaxed workload's large commits.
const LARGE: u128 = 10;

/// The event at `version` of `stream`. Every fifth is over 1 KiB, so blobs are written too;
/// every event of stream [`LARGE`] is, so that a few of them make a commit too large for a
/// commit record.
fn event(workload: &str, stream: u128, version: u32) -> NewEvent {
    if workload == "projection" {
        return totals::event(stream as u64 * 1_000 + u64::from(version));
    }
    let unit = format!("s{stream}v{version};");
    let len = if stream == LARGE || version.is_multiple_of(5) { 1_500 + 300 * stream as usize } else { 40 };
    NewEvent::new("pl", unit.bytes().cycle().take(len).collect::<Vec<u8>>())
        .with_id((stream << 32) | u128::from(version))
}

fn events(workload: &str, stream: u128, after: u32, n: u32) -> Vec<NewEvent> {
    (after + 1..=after + n).map(|v| event(workload, stream, v)).collect()
}

/// The acknowledgement file: one line per `write` call.
struct Acks(Mutex<File>);

impl Acks {
    fn line(&self, line: &str) {
        let mut file = self.0.lock().unwrap();
        file.write_all(format!("{line}\n").as_bytes()).expect("write an acknowledgement");
    }

    fn appended(&self, appended: &[Appended]) {
        for a in appended {
            self.line(&format!(
                "append {} {} {} {} {}",
                a.stream.as_u128(),
                a.first_version,
                a.last_version,
                a.first_seq,
                a.last_seq
            ));
        }
    }
}

fn run(workload: &str, root: &Path) {
    let acks = Acks(Mutex::new(File::create(root.join("acks")).expect("create the acks file")));
    let db = open(workload, &root.join("store"), 0).expect("open a new store");
    acks.line("opened");
    match workload {
        // The same workload; the parent has the shim refuse hard links.
        "appends" | "renamed" => appends(&db, &acks, "appends", false),
        "group" => group(&db, &acks),
        "projection" => projection(&db, &acks),
        "shred" => shred(&db, &acks),
        "rotate" => rotate(&db, &acks),
        "backup" => backup(&db, &acks, root),
        "relaxed" => {
            appends(&db, &acks, "relaxed", true);
            drop(db);
            acks.line("closed");
        }
        other => panic!("unknown workload {other:?}"),
    }
}

/// Single appends and batches over several streams, one writer. With `syncs` (the relaxed
/// workload), each request is followed by a "done" line and every seventh by `Varve::sync`,
/// and some requests are large commits (over 64 KiB), one right before a sync and one not.
fn appends(db: &Varve, acks: &Acks, workload: &str, syncs: bool) {
    let mut versions = [0u32; 6];
    let mut large = 0;
    for i in 0..36u32 {
        if syncs && matches!(i % 7, 2 | 6) {
            let a = db
                .append(LARGE, ExpectedVersion::Exact(large), events(workload, LARGE, large, 36))
                .expect("large append");
            large = a.last_version;
            acks.appended(&[a]);
            acks.line("done");
        }
        if i % 4 == 3 {
            let mut batch = WriteBatch::new();
            for (k, s) in [i % 6, (i + 1) % 6, (i + 3) % 6].into_iter().enumerate() {
                let (v, n) = (versions[s as usize], 1 + k as u32 % 2);
                batch.append(u128::from(s), ExpectedVersion::Exact(v), events(workload, s.into(), v, n));
                versions[s as usize] += n;
            }
            acks.appended(&db.write(batch).expect("batch"));
        } else {
            let s = i % 6;
            let (v, n) = (versions[s as usize], 1 + i % 3);
            let a = db
                .append(u128::from(s), ExpectedVersion::Exact(v), events(workload, s.into(), v, n))
                .expect("append");
            versions[s as usize] = a.last_version;
            acks.appended(&[a]);
        }
        if syncs {
            acks.line("done");
            if i % 7 == 6 {
                db.sync().expect("sync");
                acks.line("synced");
            }
        }
    }
}

/// Several writer threads at once, so the writer folds their requests into group commits.
fn group(db: &Varve, acks: &Acks) {
    std::thread::scope(|scope| {
        for stream in 0..4u128 {
            scope.spawn(move || {
                let mut v = 0;
                for i in 0..12 {
                    let a = db
                        .append(stream, ExpectedVersion::Exact(v), events("group", stream, v, 1 + i % 2))
                        .expect("append");
                    v = a.last_version;
                    acks.appended(&[a]);
                }
            });
        }
        scope.spawn(|| {
            // Streams 100 and 101 are written only together.
            for v in 0..12 {
                let mut batch = WriteBatch::new();
                batch.append(100u128, ExpectedVersion::Exact(v), events("group", 100, v, 1)).append(
                    101u128,
                    ExpectedVersion::Exact(v),
                    events("group", 101, v, 1),
                );
                acks.appended(&db.write(batch).expect("pair"));
            }
        });
    });
}

/// Appends of order events, and steps of the totals projection between them.
fn projection(db: &Varve, acks: &Acks) {
    let mut projection = totals::projection(4);
    let mut versions = [0u32; 3];
    for round in 0..24u32 {
        let s = round % 3;
        let (v, n) = (versions[s as usize], 1 + round % 4);
        let a = db
            .append(u128::from(s), ExpectedVersion::Exact(v), events("projection", s.into(), v, n))
            .expect("append");
        versions[s as usize] = a.last_version;
        acks.appended(&[a]);
        if round % 2 == 1 {
            let progress = projection.step(db).expect("projection step");
            acks.line(&format!("project {}", progress.checkpoint));
        }
    }
}

/// Appends to six streams of an encrypted store, shredding three of them along the way.
fn shred(db: &Varve, acks: &Acks) {
    let mut versions = [0u32; 6];
    let mut shredded = [false; 6];
    for round in 0..30u32 {
        if let Some(s) = match round {
            10 => Some(1),
            18 => Some(4),
            26 => Some(2),
            _ => None,
        } {
            acks.line(&format!("shredding {s}"));
            assert!(db.shred(s as u128).expect("shred"), "stream {s} was shredded already");
            shredded[s] = true;
            acks.line(&format!("shredded {s}"));
        }
        let s = (round as usize..round as usize + 6).map(|s| s % 6).find(|&s| !shredded[s]).unwrap();
        let (v, n) = (versions[s], 1 + round % 2);
        let a = db
            .append(s as u128, ExpectedVersion::Exact(v), events("shred", s as u128, v, n))
            .expect("append");
        versions[s] = a.last_version;
        acks.appended(&[a]);
    }
}

/// Appends to an encrypted store, rotating the master key every six rounds.
fn rotate(db: &Varve, acks: &Acks) {
    let mut versions = [0u32; 4];
    let mut epoch = 0;
    for round in 0..24u32 {
        let s = round % 4;
        let (v, n) = (versions[s as usize], 1 + round % 2);
        let a = db
            .append(u128::from(s), ExpectedVersion::Exact(v), events("rotate", s.into(), v, n))
            .expect("append");
        versions[s as usize] = a.last_version;
        acks.appended(&[a]);
        if round % 6 == 5 {
            epoch += 1;
            acks.line(&format!("rotating {epoch}"));
            db.rotate_master_key(&key(epoch)).expect("rotate");
            acks.line(&format!("rotated {epoch}"));
        }
    }
}

/// Compacting backups while another thread appends.
fn backup(db: &Varve, acks: &Acks, root: &Path) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut versions = [0u32; 3];
            for i in 0..40u32 {
                let s = i % 3;
                let (v, n) = (versions[s as usize], 1 + i % 2);
                let a = db
                    .append(u128::from(s), ExpectedVersion::Exact(v), events("backup", s.into(), v, n))
                    .expect("append");
                versions[s as usize] = a.last_version;
                acks.appended(&[a]);
                // Paced, so that the backups run between and during commits.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        for b in 0..4 {
            std::thread::sleep(std::time::Duration::from_millis(8));
            let seq = db.begin_read().unwrap().last_seq().unwrap();
            db.backup(root.join("backups").join(format!("b{b}"))).expect("backup");
            acks.line(&format!("backup b{b} {seq}"));
        }
    });
}

/// The outcome of checking one crash state.
///
/// - `ok`;
/// - `unopenable`: the store (or an acknowledged backup) did not open;
/// - `creation`: the store did not open because its `data.mdb` has no valid meta page
///   (LMDB's `MDB_INVALID`), and the `open` that created it had not returned (a creation
///   that was not all or nothing);
/// - `integrity`: `check_integrity` failed, or a projection's read model disagrees with
///   its checkpoint;
/// - `unclean`: the store opened, but temporary entries of a creation are left in its
///   directory;
/// - `lost`: something acknowledged is missing: the store's `data.mdb`, an event, a shred,
///   a key rotation, a projection's progress, a backup;
/// - `crash`: the check panicked (the parent also counts a child that died).
enum Verdict {
    Ok,
    Unopenable(String),
    Creation(String),
    Integrity(String),
    Unclean(String),
    Lost(u64, String),
}

/// What the acknowledgements so far promise.
#[derive(Default)]
struct Promised {
    opened: bool,
    appends: Vec<[u64; 5]>,
    checkpoint: u64,
    shredding: BTreeSet<u128>,
    shredded: BTreeSet<u128>,
    rotating: u32,
    rotated: u32,
    backups: Vec<(String, u64)>,
    /// Of each append, the write request it belongs to (counted by `done` lines).
    requests: Vec<u64>,
    done: u64,
    /// How many appends were acknowledged before the last `synced` or `closed`.
    flushed: usize,
}

fn promised(lines: &[String]) -> Promised {
    let mut p = Promised::default();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> u64 { f[i].parse().unwrap_or_else(|_| panic!("bad acknowledgement {line:?}")) };
        match f[0] {
            "opened" => p.opened = true,
            "append" => {
                p.appends.push([n(1), n(2), n(3), n(4), n(5)]);
                p.requests.push(p.done);
            }
            "done" => p.done += 1,
            "synced" | "closed" => p.flushed = p.appends.len(),
            "project" => p.checkpoint = p.checkpoint.max(n(1)),
            "shredding" => _ = p.shredding.insert(n(1).into()),
            "shredded" => _ = p.shredded.insert(n(1).into()),
            "rotating" => p.rotating = n(1) as u32,
            "rotated" => p.rotated = n(1) as u32,
            "backup" => p.backups.push((f[1].to_owned(), n(2))),
            _ => panic!("unknown acknowledgement {line:?}"),
        }
    }
    p
}

fn check_jobs(workload: &str, acks: &Path, jobs: &Path) {
    let acks = std::fs::read_to_string(acks).expect("read acks");
    let lines: Vec<String> = acks.lines().map(str::to_owned).collect();
    let jobs = std::io::BufReader::new(File::open(jobs).expect("open jobs"));
    let mut out = std::io::stdout().lock();
    for job in jobs.lines() {
        let job = job.unwrap();
        let f: Vec<&str> = job.split_whitespace().collect();
        let (state, root, n) = (f[0], PathBuf::from(f[1]), f[2].parse::<usize>().unwrap());
        let promised = promised(&lines[..n]);
        let verdict = std::panic::catch_unwind(|| check(workload, &root, &promised));
        let line = match verdict {
            Ok(Verdict::Ok) => "ok".to_owned(),
            Ok(Verdict::Unopenable(e)) => format!("unopenable {e}"),
            Ok(Verdict::Creation(e)) => format!("creation {e}"),
            Ok(Verdict::Integrity(e)) => format!("integrity {e}"),
            Ok(Verdict::Unclean(e)) => format!("unclean {e}"),
            Ok(Verdict::Lost(n, e)) => format!("lost {n} {e}"),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                format!("crash {msg}")
            }
        };
        writeln!(out, "{state} {}", line.replace('\n', " ")).unwrap();
        out.flush().unwrap();
    }
}

fn check(workload: &str, root: &Path, p: &Promised) -> Verdict {
    let store = root.join("store");
    // Without data.mdb an open makes a new, empty store: right only if the creation of the
    // first one was never acknowledged.
    if p.opened && !store.join("data.mdb").exists() {
        return Verdict::Lost(1, "the acknowledged store's data.mdb is missing".into());
    }
    let db = match open_state(workload, &store, p) {
        Ok(db) => db,
        Err(verdict) => return verdict,
    };
    // What a creation cut short left, its build directory or a lock file being made, the
    // open removed.
    let left: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".varvedb-tmp-"))
        .collect();
    if !left.is_empty() {
        return Verdict::Unclean(left.join(", "));
    }
    let view = db.begin_read().unwrap();
    if let Err(e) = view.check_integrity() {
        return Verdict::Integrity(e.to_string());
    }
    let (mut lost, mut detail) = (0u64, String::new());
    let mut miss = |what: String| {
        if lost == 0 {
            detail = what;
        }
        lost += 1;
    };
    let mut promised = p.appends.as_slice();
    if workload == "relaxed" {
        let kept = match relaxed_prefix(p, view.last_seq().unwrap()) {
            Ok((kept, misses)) => {
                misses.into_iter().for_each(&mut miss);
                kept
            }
            Err(verdict) => return verdict,
        };
        promised = &p.appends[..kept];
    }
    for &[stream, first_version, _, first_seq, last_seq] in promised {
        let stream = u128::from(stream);
        for (i, seq) in (first_seq..=last_seq).enumerate() {
            let version = first_version as u32 + i as u32;
            let stored = match view.event(seq) {
                Ok(Some(stored)) => stored,
                Ok(None) => {
                    miss(format!("seq {seq} (stream {stream} v{version}) is missing"));
                    continue;
                }
                Err(e) => return Verdict::Integrity(format!("seq {seq}: {e}")),
            };
            let expected = event(workload, stream, version);
            if (stored.stream().as_u128(), stored.version(), stored.type_tag())
                != (stream, version, expected.type_tag())
            {
                miss(format!("seq {seq} holds stream {} v{}", stored.stream().as_u128(), stored.version()));
            } else if stored.is_shredded() {
                if !p.shredding.contains(&stream) {
                    miss(format!("seq {seq} of stream {stream} reads as shredded"));
                }
            } else if p.shredded.contains(&stream) {
                miss(format!("the acknowledged shred of stream {stream} is lost: seq {seq} is readable"));
            } else if stored.payload() != expected.payload() {
                miss(format!("seq {seq} has another payload"));
            }
        }
    }
    if workload == "projection" {
        let checkpoint = db.checkpoint(totals::NAME).unwrap();
        if checkpoint < p.checkpoint {
            miss(format!("the projection is back at {checkpoint}, {} was acknowledged", p.checkpoint));
        }
        if checkpoint > view.last_seq().unwrap() {
            return Verdict::Integrity(format!("the projection's checkpoint {checkpoint} is past the log"));
        }
        if totals::stored(&view) != totals::fold(&view, checkpoint) {
            return Verdict::Integrity(format!(
                "the read model is not the fold of the log up to {checkpoint}"
            ));
        }
    }
    for (name, seq) in &p.backups {
        match check_backup(workload, &root.join("backups").join(name), *seq, p) {
            Verdict::Ok => {}
            Verdict::Lost(n, e) => {
                lost += n;
                let _ = write!(detail, "{}backup {name}: {e}", if detail.is_empty() { "" } else { "; " });
            }
            Verdict::Creation(e) | Verdict::Unopenable(e) | Verdict::Unclean(e) => {
                return Verdict::Unopenable(format!("backup {name}: {e}"));
            }
            Verdict::Integrity(e) => return Verdict::Integrity(format!("backup {name}: {e}")),
        }
    }
    if lost > 0 { Verdict::Lost(lost, detail) } else { Verdict::Ok }
}

/// With `Durability::Relaxed`, what survives is a prefix of the commits, whole and in order
/// (never part of a write request), that holds every commit acknowledged before the last
/// `Varve::sync` that returned (or the close); what was acknowledged after it may be lost,
/// from any commit on. Returns how many acknowledged appends the store (whose log ends at
/// `log_end`) holds, and what is lost that may not be.
fn relaxed_prefix(p: &Promised, log_end: u64) -> Result<(usize, Vec<String>), Verdict> {
    let kept = p.appends.iter().take_while(|a| a[4] <= log_end).count();
    if let Some(torn) = p.appends.get(kept).filter(|a| a[3] <= log_end) {
        return Err(Verdict::Integrity(format!(
            "seqs {}..={} are stored only up to {log_end}",
            torn[3], torn[4]
        )));
    }
    if kept > 0 && p.requests.get(kept) == Some(&p.requests[kept - 1]) {
        return Err(Verdict::Integrity(format!(
            "the write request of seqs {}..={} is stored in part, up to {log_end}",
            p.appends[kept - 1][3],
            p.appends[kept][4]
        )));
    }
    let mut misses = Vec::new();
    if kept < p.flushed {
        misses.push(format!(
            "seqs {}..={} were acknowledged before a sync and are lost",
            p.appends[kept][3],
            p.appends[p.flushed - 1][4]
        ));
    }
    Ok((kept, misses))
}

/// Opens a crash state's store, with the keys its acknowledgements allow.
fn open_state(workload: &str, store: &Path, p: &Promised) -> Result<Varve, Verdict> {
    // After an acknowledged rotation only its key or a later one (a rotation that committed
    // before its acknowledgement) may open the store.
    let epochs: Vec<u32> =
        if encrypted(workload) { (p.rotated..=p.rotating.max(p.rotated)).collect() } else { vec![0] };
    let mut first_error = None;
    let mut db = None;
    for &epoch in &epochs {
        match open(workload, store, epoch) {
            Ok(opened) => {
                db = Some(opened);
                break;
            }
            Err(e) => _ = first_error.get_or_insert(e),
        }
    }
    let Some(db) = db else {
        let e = first_error.unwrap();
        if let Some(old) = (0..p.rotated).find(|&epoch| open(workload, store, epoch).is_ok()) {
            return Err(Verdict::Lost(
                1,
                format!("the acknowledged rotation to epoch {} is lost: epoch {old} opens", p.rotated),
            ));
        }
        // LMDB refuses a data.mdb without a valid meta page: what a new store's file would
        // hold had it been given its name before its first commit was synced.
        let torn_new_file = matches!(&e, Error::Storage(_)) && e.to_string().contains("MDB_INVALID");
        return Err(if p.opened || !torn_new_file {
            Verdict::Unopenable(e.to_string())
        } else {
            Verdict::Creation(e.to_string())
        });
    };
    Ok(db)
}

/// An acknowledged backup: it opens and holds every event acknowledged before it started.
fn check_backup(workload: &str, dir: &Path, seq: u64, p: &Promised) -> Verdict {
    if !dir.join("data.mdb").exists() {
        return Verdict::Lost(1, "its data.mdb is missing".into());
    }
    let db = match open(workload, dir, 0) {
        Ok(db) => db,
        Err(e) => return Verdict::Unopenable(e.to_string()),
    };
    let view = db.begin_read().unwrap();
    let report = match view.check_integrity() {
        Ok(report) => report,
        Err(e) => return Verdict::Integrity(e.to_string()),
    };
    if report.last_seq < seq {
        return Verdict::Lost(
            seq - report.last_seq,
            format!("it ends at seq {}, not {seq}", report.last_seq),
        );
    }
    for &[stream, first_version, _, first_seq, last_seq] in p.appends.iter().filter(|a| a[4] <= seq) {
        for (i, s) in (first_seq..=last_seq).enumerate() {
            let version = first_version as u32 + i as u32;
            let expected = event(workload, u128::from(stream), version);
            match view.event(s) {
                Ok(Some(e)) if e.version() == version && e.payload() == expected.payload() => {}
                Ok(_) => return Verdict::Lost(1, format!("seq {s} differs")),
                Err(e) => return Verdict::Integrity(format!("seq {s}: {e}")),
            }
        }
    }
    Verdict::Ok
}
