//! Fault injection: random single-bit flips in a real store's `data.mdb`. Each trial copies a
//! template store of 10,000 events, flips one bit, and starts a child process that opens the
//! copy, runs `check_integrity` and reads everything (the log, every stream both ways, every
//! seq, the stream heads), comparing each value returned `Ok` with what was written. Damage may show as a typed
//! error; it must never show as a wrong value or a panic, and `open` and `check_integrity`
//! must neither crash nor hang. A crash or a hang in a later read, inside LMDB's own walk of a
//! damaged page, is counted and printed.
//!
//! `VARVEDB_BITFLIP_TRIALS` (default 400) sets the number of trials, `VARVEDB_BITFLIP_SEED`
//! the seed (printed); `VARVEDB_BITFLIP_TRIAL=<index>` runs that one trial of the seed, prints
//! all the child said and keeps the damaged copy for a debugger. Run with `--nocapture` to see
//! the summary of a passing run.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use varvedb::Varve;

#[path = "support/bitflip_child.rs"]
#[allow(dead_code)]
mod child;

/// A child that takes longer than this is killed, and the trial counts as a hang. An undamaged
/// copy takes under half a second in a debug build.
const TIMEOUT: Duration = Duration::from_secs(20);
const STAGES: [&str; 7] =
    ["open", "check_integrity", "read_all", "read_stream", "read_stream_backward", "event", "heads"];

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn random_bit_flips_are_reported_never_returned() {
    let trials: usize = env("VARVEDB_BITFLIP_TRIALS").unwrap_or(400);
    let seed: u64 = env("VARVEDB_BITFLIP_SEED").unwrap_or(0x5eed_b17f);
    let only: Option<usize> = env("VARVEDB_BITFLIP_TRIAL");
    let started = Instant::now();
    let template = tempfile::tempdir().unwrap();
    build_template(template.path());
    let file = std::fs::read(template.path().join("data.mdb")).unwrap();
    let map = pages::Map::new(&file);
    eprintln!(
        "bit flips: seed {seed}, {trials} trials, template of {} pages built in {:.1} s",
        file.len() / pages::SIZE,
        started.elapsed().as_secs_f64()
    );

    let indexes: Vec<usize> = match only {
        Some(i) => vec![i],
        None => (0..trials).collect(),
    };
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let jobs = std::thread::available_parallelism().map_or(2, usize::from).min(indexes.len());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(&index) = indexes.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let trial = run_trial(seed, index, &file, &map, template.path(), only.is_some());
                    if only.is_some() {
                        eprintln!(
                            "{}\nstdout:\n{}\nstderr:\n{}",
                            trial.line(),
                            trial.run.stdout.join("\n"),
                            trial.run.stderr
                        );
                    }
                    results.lock().unwrap().push(trial);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|t| t.index);
    let summary = summarize(&results);
    eprintln!("{summary}\n{} trials in {:.0} s", results.len(), started.elapsed().as_secs_f64());

    let failed: Vec<&Trial> = results.iter().filter(|t| t.fails()).collect();
    assert!(
        failed.is_empty(),
        "seed {seed}: {} trials failed (a wrong value, a panic, an unexpected exit, or a crash or hang in open or \
         check_integrity):\n{}",
        failed.len(),
        failed.iter().map(|t| t.line()).collect::<Vec<_>>().join("\n")
    );
}

/// The harness itself: an undamaged copy reads clean, and a value that differs from what was
/// written is reported by every read that returns it.
#[test]
fn the_child_tells_a_clean_store_from_a_wrong_value() {
    let template = tempfile::tempdir().unwrap();
    build_template(template.path());
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(template.path().join("data.mdb"), copy.path().join("data.mdb")).unwrap();
    let run = run_child(copy.path(), &template.path().join("expected"));
    assert_eq!((run.class, run.integrity), (Class::Clean, Some(true)), "{:?} {}", run.stdout, run.stderr);

    // Seq 77 expected with another timestamp: to the child, the store returns a wrong value.
    let mut expected = std::fs::read(template.path().join("expected")).unwrap();
    expected[76 * 8] ^= 1;
    std::fs::write(template.path().join("altered"), expected).unwrap();
    let run = run_child(copy.path(), &template.path().join("altered"));
    assert_eq!(run.class, Class::Wrong, "{:?} {}", run.stdout, run.stderr);
    let stages: Vec<&str> = run.wrong.iter().map(|w| w.split(' ').next().unwrap()).collect();
    assert_eq!(stages, ["read_all", "read_stream", "read_stream_backward", "event"], "{:?}", run.wrong);
}

/// The damage behind the hangs that random flips found: a branch page's child pointer made
/// to point past the end of the file. LMDB then fails the read transaction, and a read that
/// went on would meet that error at every step: each read reports it once and ends.
#[test]
fn a_read_that_meets_a_damaged_page_reports_it_once_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Varve::open(dir.path()).unwrap();
        // Enough for a log three pages deep: `open` reads its root and the path to its last
        // entry, not the branch pages in between.
        for batch in 0..40u8 {
            let events = (0..500).map(|_| varvedb::NewEvent::new("n", vec![batch; 100]));
            db.append(5u128, varvedb::ExpectedVersion::Auto, events).unwrap();
        }
    }
    let path = dir.path().join("data.mdb");
    let mut file = std::fs::read(&path).unwrap();
    let root = pages::Map::new(&file).roots["events"] * pages::SIZE;
    assert_eq!(pages::u16_at(&file, root + 10), pages::BRANCH, "the log spans several pages");
    // A branch node's first 6 bytes are its child's page number.
    let child = |file: &[u8], page: usize, i: usize| {
        page + usize::from(pages::u16_at(file, page + pages::HEADER + 2 * i))
    };
    let children =
        |file: &[u8], page: usize| (usize::from(pages::u16_at(file, page + 12)) - pages::HEADER) / 2;
    let middle = child(&file, root, children(&file, root) / 2);
    let mut number = [0u8; 8];
    number[..6].copy_from_slice(&file[middle..middle + 6]);
    let branch = usize::try_from(u64::from_le_bytes(number)).unwrap() * pages::SIZE;
    assert_eq!(pages::u16_at(&file, branch + 10), pages::BRANCH, "the log is three pages deep");
    // In a branch page off the path `open` reads, a child past the end of the file.
    let node = child(&file, branch, children(&file, branch) / 2);
    file[node..node + 6].fill(0xff);
    std::fs::write(&path, &file).unwrap();

    let db = Varve::open(dir.path()).unwrap();
    let items =
        |read: &dyn Fn(&varvedb::ReadView<'_>) -> Vec<Result<u64, String>>| read(&db.begin_read().unwrap());
    let settle = |items: Vec<Result<u64, String>>| {
        // Bounded: a read that does not end would yield errors forever.
        assert!(items.len() < 25_000, "{} items, the last {:?}", items.len(), items.last());
        let errors: Vec<&String> = items.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("MDB_PAGE_NOTFOUND"), "{errors:?}");
        assert!(items.last().unwrap().is_err(), "the error comes last");
        items.iter().filter(|r| r.is_ok()).count()
    };
    let log = items(&|v| {
        v.read_all(0).unwrap().take(30_000).map(|e| e.map(|e| e.seq()).map_err(|e| e.to_string())).collect()
    });
    let read_before = settle(log);
    assert!(read_before > 0, "the events on the pages before are read");
    let forward = items(&|v| {
        v.read_stream(5u128, 1)
            .unwrap()
            .take(30_000)
            .map(|e| e.map(|e| u64::from(e.version())).map_err(|e| e.to_string()))
            .collect()
    });
    assert_eq!(settle(forward), read_before);
    let backward = items(&|v| {
        v.read_stream_backward(5u128, u32::MAX)
            .unwrap()
            .take(30_000)
            .map(|e| e.map(|e| u64::from(e.version())).map_err(|e| e.to_string()))
            .collect()
    });
    assert!(settle(backward) > 0, "the events on the pages after are read");
    assert!(db.begin_read().unwrap().check_integrity().is_err());
}

/// Writes the template store and the expected file (each seq's timestamp, which only the
/// writer knows), and checks that the store holds exactly the plan.
fn build_template(dir: &Path) {
    let plan = child::plan();
    let db = Varve::open(dir).unwrap();
    for batch in &plan.batches {
        let mut write = varvedb::WriteBatch::new();
        for append in batch {
            append.add_to(&mut write);
        }
        db.write(write).unwrap();
    }
    let expected = plan.expected();
    let view = db.begin_read().unwrap();
    let mut timestamps = Vec::with_capacity(child::EVENTS * 8);
    for (i, e) in view.read_all(0).unwrap().enumerate() {
        let e = e.unwrap();
        let seq = i as u64 + 1;
        assert_eq!(child::differs(&e, seq, &expected[i], e.timestamp_micros()), None);
        timestamps.extend_from_slice(&e.timestamp_micros().to_le_bytes());
    }
    assert_eq!(timestamps.len(), child::EVENTS * 8);
    let report = view.check_integrity().unwrap();
    assert_eq!((report.events, report.streams), (child::EVENTS as u64, child::STREAMS as u64));
    assert_eq!(report.blob_references, plan.blob_references());
    drop(view);
    drop(db);
    std::fs::write(dir.join("expected"), timestamps).unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Clean,
    Detected,
    Wrong,
    /// A read that went on yielding items far past what was written.
    Endless,
    Panic,
    Crash,
    Hang,
    /// The child exited otherwise: a fault of the harness.
    Exit,
}

/// What came of one run of the child.
struct Run {
    class: Class,
    /// The stage the class refers to: the first error, the first wrong value, or where the
    /// child died.
    stage: String,
    /// What killed the child, or its exit code.
    status: String,
    integrity: Option<bool>,
    /// Each stage's error kinds.
    errors: Vec<(String, String)>,
    wrong: Vec<String>,
    endless: Vec<String>,
    stdout: Vec<String>,
    stderr: String,
}

struct Trial {
    index: usize,
    offset: usize,
    bit: u8,
    /// The part of the template the flipped byte was in.
    place: String,
    run: Run,
}

impl Trial {
    /// A wrong value or an endless read fails a trial whatever came after it, even a crash.
    fn fails(&self) -> bool {
        !self.run.wrong.is_empty()
            || !self.run.endless.is_empty()
            || match self.run.class {
                Class::Clean | Class::Detected => false,
                Class::Wrong | Class::Endless | Class::Panic | Class::Exit => true,
                Class::Crash | Class::Hang => matches!(self.run.stage.as_str(), "open" | "check_integrity"),
            }
    }

    fn line(&self) -> String {
        let run = &self.run;
        let mut s = format!(
            "trial {:>3}: offset {:>8} bit {} page {:>5} ({}): {:?} in {} ({})",
            self.index,
            self.offset,
            self.bit,
            self.offset / pages::SIZE,
            self.place,
            run.class,
            run.stage,
            run.status
        );
        for w in &run.wrong {
            let _ = write!(s, "\n    wrong: {w}");
        }
        for e in &run.endless {
            let _ = write!(s, "\n    endless: {e}");
        }
        if matches!(run.class, Class::Panic | Class::Exit) {
            let _ = write!(s, "\n    stderr: {}", run.stderr.trim());
        }
        s
    }
}

/// Trial `index` of `seed`: the template with one bit flipped, read by the child. With
/// `keep`, the damaged copy stays on disk for a debugger.
fn run_trial(
    seed: u64,
    index: usize,
    template: &[u8],
    map: &pages::Map,
    template_dir: &Path,
    keep: bool,
) -> Trial {
    let mut rng = fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let bit = rng.usize(0..template.len() * 8);
    let (offset, bit) = (bit / 8, (bit % 8) as u8);
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = template.to_vec();
    bytes[offset] ^= 1 << bit;
    std::fs::write(dir.path().join("data.mdb"), &bytes).unwrap();
    drop(bytes);
    let expected = template_dir.join("expected");
    let run = if keep {
        let kept = dir.keep();
        std::fs::copy(&expected, kept.join("expected")).unwrap();
        eprintln!("trial {index}: the damaged copy is kept: bitflip-child {0} {0}/expected", kept.display());
        run_child(&kept, &expected)
    } else {
        run_child(dir.path(), &expected)
    };
    Trial { index, offset, bit, place: map.place(template, offset), run }
}

/// Runs the child on the store in `dir` against `expected`, killing it after [`TIMEOUT`].
fn run_child(dir: &Path, expected: &Path) -> Run {
    let mut process = Command::new(env!("CARGO_BIN_EXE_bitflip-child"))
        .arg(dir)
        .arg(expected)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = process.stdout.take().unwrap();
    let mut stderr = process.stderr.take().unwrap();
    let out =
        std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = process.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TIMEOUT {
            process.kill().unwrap();
            process.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();

    let mut last_stage = "(start)";
    let (mut errors, mut wrong, mut endless, mut integrity, mut done) =
        (Vec::new(), Vec::new(), Vec::new(), None, false);
    for line in &stdout {
        let (what, rest) = line.split_once(' ').unwrap_or((line, ""));
        match what {
            "stage" => last_stage = rest,
            "errors" => {
                let mut f = rest.splitn(3, ' ');
                errors
                    .push((f.next().unwrap_or_default().to_owned(), f.next().unwrap_or_default().to_owned()));
            }
            "wrong" => wrong.push(rest.to_owned()),
            "endless" => endless.push(rest.to_owned()),
            "integrity" => integrity = Some(rest == "ok"),
            "done" => done = true,
            _ => {}
        }
    }
    let first_stage =
        |v: &[String]| v.first().and_then(|w| w.split(' ').next()).unwrap_or_default().to_owned();
    let last_stage = last_stage.to_owned();
    let (class, stage, status) = match status {
        None => (Class::Hang, last_stage, format!("killed after {} s", TIMEOUT.as_secs())),
        Some(s) if s.signal().is_some() => (Class::Crash, last_stage, signal_name(s.signal().unwrap())),
        Some(s) if s.code() == Some(101) => (Class::Panic, last_stage, "exit 101".into()),
        Some(s) if !s.success() || !done => (Class::Exit, last_stage, format!("{s}")),
        Some(_) if !wrong.is_empty() => (Class::Wrong, first_stage(&wrong), "exit 0".into()),
        Some(_) if !endless.is_empty() => (Class::Endless, first_stage(&endless), "exit 0".into()),
        Some(_) if !errors.is_empty() => (Class::Detected, errors[0].0.clone(), "exit 0".into()),
        Some(_) => (Class::Clean, "-".into(), "exit 0".into()),
    };
    Run { class, stage, status, integrity, errors, wrong, endless, stdout, stderr }
}

fn signal_name(signal: i32) -> String {
    match signal {
        6 => "SIGABRT".into(),
        7 => "SIGBUS".into(),
        8 => "SIGFPE".into(),
        11 => "SIGSEGV".into(),
        n => format!("signal {n}"),
    }
}

fn summarize(results: &[Trial]) -> String {
    let mut s = String::new();
    let classes = [
        Class::Clean,
        Class::Detected,
        Class::Wrong,
        Class::Endless,
        Class::Panic,
        Class::Crash,
        Class::Hang,
        Class::Exit,
    ];
    let _ = write!(s, "\n{:<10}{:>7}", "class", "total");
    for stage in STAGES {
        let _ = write!(s, "{stage:>22}");
    }
    for class in classes {
        let of: Vec<&Trial> = results.iter().filter(|t| t.run.class == class).collect();
        let _ = write!(s, "\n{:<10}{:>7}", format!("{class:?}"), of.len());
        for stage in STAGES {
            let _ = write!(s, "{:>22}", of.iter().filter(|t| t.run.stage == stage).count());
        }
    }

    let detected: Vec<&Trial> = results.iter().filter(|t| t.run.class == Class::Detected).collect();
    let _ = write!(
        s,
        "\n\ndetected: check_integrity failed in {}; it passed and a later read reported the damage in {}",
        detected.iter().filter(|t| t.run.integrity == Some(false)).count(),
        detected.iter().filter(|t| t.run.integrity == Some(true)).count(),
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for t in results {
        let mut seen: Vec<&str> = t.run.errors.iter().map(|(_, k)| k.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        for k in seen {
            *kinds.entry(k).or_default() += 1;
        }
    }
    let _ = write!(s, "\nerror kinds (trials): {kinds:?}");

    // Where the flips landed, by the part of the file, and what came of them.
    let mut by_place: BTreeMap<String, BTreeMap<Class, usize>> = BTreeMap::new();
    for t in results {
        *by_place.entry(t.place.clone()).or_default().entry(t.run.class).or_default() += 1;
    }
    let _ = write!(s, "\n\n{:<40}", "where the flip landed");
    for class in classes {
        let _ = write!(s, "{:>9}", format!("{class:?}"));
    }
    for (place, counts) in &by_place {
        let _ = write!(s, "\n{place:<40}");
        for class in classes {
            let _ = write!(s, "{:>9}", counts.get(&class).copied().unwrap_or(0));
        }
    }
    let notable: Vec<String> = results
        .iter()
        .filter(|t| t.run.class > Class::Detected || !t.run.wrong.is_empty() || !t.run.endless.is_empty())
        .map(Trial::line)
        .collect();
    if !notable.is_empty() {
        let _ = write!(s, "\n\n{}", notable.join("\n"));
    }
    s
}

/// What each page of the template is, from a walk of LMDB's trees as the newest meta page has
/// them (LMDB's 64-bit layout, 4 KiB pages), so that a flip can be told by where it landed:
/// page header flags at bytes 10-11 say branch 0x01, leaf 0x02, overflow 0x04, meta 0x08.
mod pages {
    use std::collections::BTreeMap;

    pub const SIZE: usize = 4096;
    pub const HEADER: usize = 16;
    pub const BRANCH: u16 = 0x01;
    const LEAF: u16 = 0x02;
    const OVERFLOW: u16 = 0x04;
    const BIGDATA: u16 = 0x01;
    const SUBDATA: u16 = 0x02;
    /// Offsets in a meta page, after the page header: the free-list and main trees' records,
    /// the root within a record, and the transaction id.
    const FREE_DB: usize = 24;
    const MAIN_DB: usize = 72;
    const ROOT: usize = 40;
    const TXNID: usize = 128;

    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes(s.try_into().unwrap()))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 8).map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
    }

    /// The owner of each page: `<table> branch|leaf|overflow`, `meta`, `free`, or empty for
    /// a page no tree reaches.
    pub struct Map {
        /// The root page of each named table.
        pub roots: BTreeMap<String, usize>,
        owners: Vec<String>,
        /// For each overflow page, where its value ends in the file.
        value_ends: Vec<usize>,
        newest_meta: usize,
    }

    impl Map {
        pub fn new(file: &[u8]) -> Map {
            let pages = file.len() / SIZE;
            let newest_meta = usize::from(u64_at(file, SIZE + HEADER + TXNID) > u64_at(file, HEADER + TXNID));
            let mut map = Map {
                roots: BTreeMap::new(),
                owners: vec![String::new(); pages],
                value_ends: vec![0; pages],
                newest_meta,
            };
            let meta = newest_meta * SIZE + HEADER;
            map.walk(file, u64_at(file, meta + FREE_DB + ROOT), "free-list");
            map.walk(file, u64_at(file, meta + MAIN_DB + ROOT), "main");
            map.owners[0] = "meta".into();
            map.owners[1] = "meta".into();
            map
        }

        /// The page's owner and where in the page `offset` lies.
        pub fn place(&self, file: &[u8], offset: usize) -> String {
            let page = offset / SIZE;
            let at = offset % SIZE;
            let owner = match self.owners.get(page).map(String::as_str) {
                None | Some("") => "unreached",
                Some(owner) => owner,
            };
            let start = page * SIZE;
            let flags = u16_at(file, start + 10);
            let part = if owner == "meta" {
                let which = if page == self.newest_meta { "newest" } else { "older" };
                let field = match at.checked_sub(HEADER) {
                    None => "header",
                    Some(0..4) => "magic",
                    Some(4..8) => "version",
                    Some(8..24) => "address, map size",
                    Some(24..72) => "free-list tree record",
                    Some(72..120) => "main tree record",
                    Some(120..128) => "last page",
                    Some(128..136) => "txnid",
                    Some(_) => "unused",
                };
                format!("{which}, {field}")
            } else if owner.ends_with("branch") || owner.ends_with("leaf") {
                node_part(file, start, at, flags).to_owned()
            } else if owner.ends_with("overflow") && u16_at(file, start + 10) == OVERFLOW && at < HEADER {
                "header".to_owned()
            } else if owner.ends_with("overflow") && offset >= self.value_ends[page] {
                "past the value".to_owned()
            } else {
                "data".to_owned()
            };
            format!("{owner}, {part}")
        }
    }

    /// Which part of a branch or leaf page byte `at` is.
    fn node_part(file: &[u8], start: usize, at: usize, flags: u16) -> &'static str {
        let lower = usize::from(u16_at(file, start + 12));
        let upper = usize::from(u16_at(file, start + 14));
        if at < HEADER {
            return "header";
        }
        if at < lower {
            return "node offsets";
        }
        if at < upper {
            return "free space";
        }
        for i in 0..lower.saturating_sub(HEADER) / 2 {
            let node = usize::from(u16_at(file, start + HEADER + 2 * i));
            let ksize = usize::from(u16_at(file, start + node + 6));
            let dsize = if flags & BRANCH != 0 {
                0
            } else if u16_at(file, start + node + 4) & BIGDATA != 0 {
                8
            } else {
                usize::from(u16_at(file, start + node)) | (usize::from(u16_at(file, start + node + 2)) << 16)
            };
            match at.checked_sub(node) {
                Some(0..8) => return "node header",
                Some(k) if k < 8 + ksize => return "key",
                Some(k) if k < 8 + ksize + dsize => return "value",
                _ => {}
            }
        }
        "between nodes"
    }

    impl Map {
        fn walk(&mut self, file: &[u8], page: u64, table: &str) {
            let Some(owner) = usize::try_from(page).ok().and_then(|p| self.owners.get(p)) else { return };
            if !owner.is_empty() {
                return;
            }
            let page = page as usize;
            let start = page * SIZE;
            let flags = u16_at(file, start + 10);
            let keys = usize::from(u16_at(file, start + 12)).saturating_sub(HEADER) / 2;
            let node = |i: usize| start + usize::from(u16_at(file, start + HEADER + 2 * i));
            if flags & BRANCH != 0 {
                self.owners[page] = format!("{table} branch");
                for i in 0..keys {
                    let n = node(i);
                    let child = u64::from(u16_at(file, n))
                        | (u64::from(u16_at(file, n + 2)) << 16)
                        | (u64::from(u16_at(file, n + 4)) << 32);
                    self.walk(file, child, table);
                }
            } else if flags & LEAF != 0 {
                self.owners[page] = format!("{table} leaf");
                for i in 0..keys {
                    let n = node(i);
                    let node_flags = u16_at(file, n + 4);
                    let ksize = usize::from(u16_at(file, n + 6));
                    let mut value = n + 8 + ksize;
                    if node_flags & BIGDATA != 0 {
                        let first = u64_at(file, value) as usize;
                        let count = u32_at(file, first * SIZE + 12) as usize;
                        let size = usize::from(u16_at(file, n)) | (usize::from(u16_at(file, n + 2)) << 16);
                        value = first * SIZE + HEADER;
                        for p in first..(first + count).min(self.owners.len()) {
                            self.owners[p] = format!("{table} overflow");
                            self.value_ends[p] = value + size;
                        }
                    }
                    if node_flags & SUBDATA != 0 {
                        let name = String::from_utf8_lossy(&file[n + 8..n + 8 + ksize]).into_owned();
                        let root = u64_at(file, value + ROOT);
                        self.roots.insert(name.clone(), root as usize);
                        self.walk(file, root, &name);
                    } else if table == "free-list" {
                        // A list of free page numbers, its length first.
                        for j in 0..u64_at(file, value) as usize {
                            if let Some(owner) = self.owners.get_mut(u64_at(file, value + 8 + 8 * j) as usize)
                            {
                                *owner = "free".into();
                            }
                        }
                    }
                }
            }
        }
    }
}
