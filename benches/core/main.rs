//! `VarveDB` through its public typed API, side by side in one run with raw heed doing the
//! same LMDB work (the limit), with varvedb 0.4.2 from crates.io, and with the stores a Rust
//! user keeping events in-process would more often pick instead: SQLite (WAL, durable
//! `synchronous=FULL`, and `NORMAL` as a side column that is not durable on power loss) and
//! redb (durable commits). `docs/performance.md` describes the workloads, the peers' schemas
//! and what bounds each workload. The run also prints the disk floor (a 4 KiB flush, appending
//! and in place) at its start and end, and each subject's bytes on disk per event.
//!
//! Run: `cargo bench --bench core` (full size, a few minutes) or
//! `cargo bench --bench core -- --quick` (a smoke run, under a minute). Options:
//! `--reps R`; `--secs S` (length of each append measurement); `--n N` (events of the read
//! store: 1,000 streams of N/1,000 interleaved); `--single N` (the one long stream of W4b);
//! `--samples N` (W5a appends per repetition); `--only W3` (workloads whose name starts so;
//! may repeat); `--no-v04` (leave out varvedb 0.4.2, which is built on first use and needs
//! crates.io); `--no-peers` (leave out SQLite and redb). W6 (encrypted against plain) is
//! `benches/encryption.rs`.
//!
//! Every append measurement runs in a fresh store in its own temporary directory. The subjects
//! alternate within each repetition, each taking each place in turn, and the tables report
//! the median of the repetitions and the median of the per-repetition ratios ("paired": run
//! back to back, less exposed to drifts of the disk or of other load).

#![allow(clippy::doc_markdown, reason = "names such as SQLite are the products', not code")]

mod alloc;
mod disk;
mod ours;
mod raw;
mod redb_store;
mod sqlite;
mod v04;

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use varvedb::{Durability, Event, Varve, aggregate};

use crate::raw::Raw;
use crate::v04::V04;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

type Res<T> = Result<T, Box<dyn Error>>;

/// The event of every workload: `{ u64 id, u32 amount, 32-byte string }`.
#[derive(Event)]
#[event(name = "payment")]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
}

/// The aggregate W4 folds (and the fold every subject applies when it reads).
#[derive(Default)]
struct Account {
    events: u64,
    total: u64,
    name_bytes: u64,
}

#[aggregate(name = "account")]
impl Account {
    fn paid(&mut self, e: &ArchivedPayment) {
        self.apply(e);
    }
}

impl Account {
    fn apply(&mut self, p: &ArchivedPayment) {
        self.events += 1;
        self.total += u64::from(p.amount.to_native());
        self.name_bytes += p.name.len() as u64;
    }
}

const TAG: &str = "payment";
const NAME: &str = "Jane Q. Customer, account 000042";
/// Room for minutes of appends at these rates; larger maps fail under valgrind, which the
/// profiles in `docs/performance.md` use.
const MAP_SIZE: usize = 8 << 30;
/// The fixed fields of our envelope (see `varvedb/src/record.rs`), before its numbers; the
/// baseline's value has the same size as our record, which `main` checks against a real one.
const FIXED_LEN: usize = 30;
const CONCURRENT_WRITERS: usize = 16;
const SPREAD_STREAMS: usize = 1000;
const POPULATE_BATCH: u64 = 10_000;
const SINGLE_STREAM: u128 = 0x5ca7_0000_0000_0000_0000_0000_0000_0001;

fn payment(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

fn spread_ids() -> Vec<u128> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..SPREAD_STREAMS).map(|_| rng.u128(..)).collect()
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[derive(Clone, Copy)]
enum Shape {
    /// Calls of `batch` events, all to one stream.
    OneStream { batch: u64 },
    /// Calls of `batch` events, event i of the run going to stream i mod `SPREAD_STREAMS`.
    Spread { batch: u64 },
}

/// One measurement of one subject.
struct Sample {
    events: u64,
    elapsed: Duration,
    note: String,
    /// Heap allocations per aggregate load (ours, W4).
    allocations: Option<f64>,
}

impl Sample {
    fn new(events: u64, elapsed: Duration) -> Self {
        Sample { events, elapsed, note: String::new(), allocations: None }
    }

    #[expect(clippy::cast_precision_loss, reason = "event counts are far below 2^52")]
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!("{} events in {:.3?} = {}/s{}", self.events, self.elapsed, thousands(self.rate()), self.note)
    }
}

/// One append→subscriber measurement: from just before the append call to the subscriber
/// holding the validated event, and the append call (the durable commit) alone.
#[derive(Clone, Copy)]
struct Latency {
    total: Duration,
    commit: Duration,
}

// ---------------------------------------------------------------------------------------
// Configuration and machine

struct Config {
    quick: bool,
    reps: usize,
    append_time: Duration,
    /// Events per stream of the read store (1,000 streams, interleaved).
    per_stream: u64,
    single: u64,
    samples: u64,
    only: Vec<String>,
    v04: bool,
    /// SQLite and redb.
    peers: bool,
    /// Flushes of each kind timed for the disk floor.
    floor_samples: usize,
}

impl Config {
    fn from_args() -> Res<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut config = Config {
            quick,
            reps: if quick { 3 } else { 5 },
            append_time: if quick { Duration::from_millis(300) } else { Duration::from_secs(2) },
            per_stream: if quick { 50 } else { 1000 },
            single: if quick { 10_000 } else { 100_000 },
            samples: if quick { 30 } else { 300 },
            only: Vec::new(),
            v04: !args.iter().any(|a| a == "--no-v04"),
            peers: !args.iter().any(|a| a == "--no-peers"),
            floor_samples: if quick { 50 } else { 300 },
        };
        let value = |name: &str| -> Option<&str> {
            args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
        };
        if let Some(v) = value("--reps") {
            config.reps = v.parse::<usize>()?.max(1);
        }
        if let Some(v) = value("--secs") {
            config.append_time = Duration::from_secs_f64(v.parse()?);
        }
        if let Some(v) = value("--n") {
            config.per_stream = (v.parse::<u64>()? / SPREAD_STREAMS as u64).max(1);
        }
        if let Some(v) = value("--single") {
            config.single = v.parse::<u64>()?.max(1);
        }
        if let Some(v) = value("--samples") {
            config.samples = v.parse::<u64>()?.max(1);
        }
        config.only = args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1].clone()).collect();
        Ok(config)
    }

    fn runs(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| workload.starts_with(o.as_str()))
    }

    fn log_events(&self) -> u64 {
        SPREAD_STREAMS as u64 * self.per_stream
    }
}

/// The file system type of the mount holding `path`, from `/proc/mounts`.
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (dev, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount).then(|| (mount.len(), format!("{fs} on {mount} ({dev})")))
        })
        .max()
        .map_or_else(|| "unknown".to_owned(), |(_, fs)| fs)
}

fn proc_line(file: &str, prefix: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(prefix).map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------------------
// Alternating subjects

/// The subjects, in the order of the table's columns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    Ours,
    /// Ours with `Durability::Relaxed`: the last commit may be lost on power loss, a side column.
    OursRelaxed,
    Raw,
    V04,
    /// SQLite in WAL mode with `synchronous=FULL`: durable commits.
    Sqlite,
    /// SQLite in WAL mode with `synchronous=NORMAL`: not durable on power loss, a side column.
    SqliteNormal,
    Redb,
}

impl Subject {
    const COUNT: usize = 7;
    const ALL: [Subject; Subject::COUNT] = [
        Subject::Ours,
        Subject::OursRelaxed,
        Subject::Raw,
        Subject::V04,
        Subject::Sqlite,
        Subject::SqliteNormal,
        Subject::Redb,
    ];

    fn label(self) -> &'static str {
        match self {
            Subject::Ours => "ours",
            Subject::OursRelaxed => "ours relaxed§",
            Subject::Raw => "raw heed",
            Subject::V04 => "0.4.2",
            Subject::Sqlite => "SQLite",
            Subject::SqliteNormal => "SQLite NORMAL§",
            Subject::Redb => "redb",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One value per subject, `None` or empty where a subject did not run.
type PerSubject<T> = [T; Subject::COUNT];

/// The measurements of one workload: how each subject that can run it runs it once.
struct Runs<'a, T>(Vec<(Subject, Job<'a, T>)>);

/// One measurement of one subject.
type Job<'a, T> = Box<dyn FnMut() -> Res<T> + 'a>;

impl<'a, T> Runs<'a, T> {
    fn new() -> Self {
        Runs(Vec::new())
    }

    fn add(&mut self, subject: Subject, run: impl FnMut() -> Res<T> + 'a) -> &mut Self {
        self.0.push((subject, Box::new(run)));
        self
    }
}

/// Runs `reps` repetitions of every subject in `runs`, rotating their order each repetition,
/// and returns each subject's results in repetition order.
fn alternate<T>(
    name: &str,
    reps: usize,
    mut runs: Runs<'_, T>,
    describe: impl Fn(&T) -> String,
) -> Res<PerSubject<Vec<T>>> {
    let mut out: PerSubject<Vec<T>> = std::array::from_fn(|_| Vec::new());
    let present = runs.0.len();
    for rep in 0..reps {
        for turn in 0..present {
            let (subject, run) = &mut runs.0[(rep + turn) % present];
            let result = run()?;
            eprintln!("  {name} rep {rep} {:<14} {}", subject.label(), describe(&result));
            out[subject.index()].push(result);
        }
    }
    Ok(out)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len().is_multiple_of(2) { f64::midpoint(xs[m - 1], xs[m]) } else { xs[m] })
}

/// Median over repetitions of `a[i] / b[i]`.
fn paired(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

/// A row of the throughput table.
struct Row {
    id: &'static str,
    name: String,
    medians: PerSubject<Option<f64>>,
    /// Paired ours/subject (`None` for ours itself and for subjects that did not run).
    paired: PerSubject<Option<f64>>,
    allocations_per_load: Option<f64>,
}

impl Row {
    fn paired(&self, subject: Subject) -> Option<f64> {
        self.paired[subject.index()]
    }

    fn median(&self, subject: Subject) -> Option<f64> {
        self.medians[subject.index()]
    }
}

fn throughput(id: &'static str, name: &str, reps: usize, runs: Runs<'_, Sample>) -> Res<Row> {
    let label = format!("{id} {name}");
    let samples = alternate(&label, reps, runs, Sample::describe)?;
    let rates = samples.each_ref().map(|s| s.iter().map(Sample::rate).collect::<Vec<_>>());
    let ours = &rates[Subject::Ours.index()];
    Ok(Row {
        id,
        name: label,
        medians: rates.each_ref().map(|r| median(r.clone())),
        paired: std::array::from_fn(
            |i| if i == Subject::Ours.index() { None } else { paired(ours, &rates[i]) },
        ),
        allocations_per_load: samples[Subject::Ours.index()]
            .iter()
            .filter_map(|s| s.allocations)
            .max_by(f64::total_cmp),
    })
}

fn expect_events(sample: Sample, expected: u64) -> Res<Sample> {
    if sample.events == expected {
        Ok(sample)
    } else {
        Err(format!("read {} events, expected {expected}", sample.events).into())
    }
}

// ---------------------------------------------------------------------------------------
// Workloads

fn append_rows(config: &Config, v04: &mut Option<V04>, rows: &mut Vec<Row>) -> Res<()> {
    let time = config.append_time;
    let shapes = [
        ("W1a", "append 1 event/call, 1 writer".to_owned(), Shape::OneStream { batch: 1 }),
        ("W2a", "batch of 100, 1 stream".to_owned(), Shape::OneStream { batch: 100 }),
        ("W2b", "batch of 10,000, 1 stream".to_owned(), Shape::OneStream { batch: 10_000 }),
        ("W2c", format!("batch of 100 over {SPREAD_STREAMS} streams †"), Shape::Spread { batch: 100 }),
        ("W2d", format!("batch of 10,000 over {SPREAD_STREAMS} streams †"), Shape::Spread { batch: 10_000 }),
    ];
    let fresh = || tempfile::tempdir();
    for (id, name, shape) in shapes {
        if config.runs(id) {
            let mut runs = Runs::new();
            runs.add(Subject::Ours, || ours::append(fresh()?.path(), Durability::Immediate, shape, time))
                .add(Subject::OursRelaxed, || ours::append(fresh()?.path(), Durability::Relaxed, shape, time))
                .add(Subject::Raw, || raw::append(fresh()?.path(), shape, time));
            if let Some(c) = v04.as_mut() {
                runs.add(Subject::V04, move || c.append(fresh()?.path(), shape, time));
            }
            if config.peers {
                runs.add(Subject::Sqlite, || {
                    sqlite::append(fresh()?.path(), sqlite::Sync::Full, shape, time)
                })
                .add(Subject::SqliteNormal, || {
                    sqlite::append(fresh()?.path(), sqlite::Sync::Normal, shape, time)
                })
                .add(Subject::Redb, || redb_store::append(fresh()?.path(), shape, time));
            }
            rows.push(throughput(id, &name, config.reps, runs)?);
        }
        if id == "W1a" && config.runs("W1b") {
            let mut runs = Runs::new();
            runs.add(Subject::Ours, || ours::concurrent(fresh()?.path(), Durability::Immediate, time))
                .add(Subject::OursRelaxed, || ours::concurrent(fresh()?.path(), Durability::Relaxed, time))
                .add(Subject::Raw, || raw::append(fresh()?.path(), Shape::OneStream { batch: 1 }, time));
            if let Some(c) = v04.as_mut() {
                runs.add(Subject::V04, move || c.concurrent(fresh()?.path(), CONCURRENT_WRITERS, time));
            }
            if config.peers {
                runs.add(Subject::Sqlite, || sqlite::concurrent(fresh()?.path(), sqlite::Sync::Full, time))
                    .add(Subject::SqliteNormal, || {
                        sqlite::concurrent(fresh()?.path(), sqlite::Sync::Normal, time)
                    })
                    .add(Subject::Redb, || redb_store::concurrent(fresh()?.path(), time));
            }
            let name = format!("append 1 event/call, {CONCURRENT_WRITERS} writers (raw: 1*)");
            rows.push(throughput("W1b", &name, config.reps, runs)?);
        }
    }
    Ok(())
}

/// The peers' read stores, SQLite's and redb's: each one's directory and open handle.
type PeerStores = Option<((TempDir, rusqlite::Connection), (TempDir, redb::Database))>;

/// The read stores of every subject: 1,000 streams interleaved (W3, W4a, W5b) and one long
/// stream (W4b). The peers' are `None` under `--no-peers`.
struct ReadStores {
    log_events: u64,
    single: u64,
    ours_log: (TempDir, Varve),
    ours_single: (TempDir, Varve),
    raw_log: (TempDir, Raw),
    raw_single: (TempDir, Raw),
    v04_log: TempDir,
    v04_single: TempDir,
    peers_log: PeerStores,
    peers_single: PeerStores,
}

impl ReadStores {
    /// Fills every subject's read stores, prints each one's bytes on disk per event of the
    /// interleaved store and returns them.
    fn populate(
        config: &Config,
        v04: &mut Option<V04>,
        ids: &[u128],
    ) -> Res<(Self, PerSubject<Option<f64>>)> {
        let (per, single) = (config.per_stream, config.single);
        let mut times = Vec::new();
        let mut sizes = Vec::new();
        let t = Instant::now();
        let ours_log = {
            let dir = tempfile::tempdir()?;
            let db = ours::open(dir.path())?;
            ours::populate_log(&db, ids, per)?;
            // The store closed, its file is read by LMDB's statistics, then opened again.
            drop(db);
            let usage = disk::LmdbUsage::of_closed(dir.path())?;
            sizes.push((Subject::Ours, disk::dir_bytes(dir.path())?, Some(usage)));
            let db = ours::open(dir.path())?;
            (dir, db)
        };
        let ours_single = {
            let dir = tempfile::tempdir()?;
            let db = ours::open(dir.path())?;
            ours::populate_single(&db, single)?;
            (dir, db)
        };
        times.push((Subject::Ours, t.elapsed()));
        let t = Instant::now();
        let raw_log = {
            let dir = tempfile::tempdir()?;
            let mut db = Raw::open(dir.path())?;
            raw::populate_log(&mut db, ids, per)?;
            let usage = disk::LmdbUsage::of(&db.env)?;
            sizes.push((Subject::Raw, disk::dir_bytes(dir.path())?, Some(usage)));
            (dir, db)
        };
        let raw_single = {
            let dir = tempfile::tempdir()?;
            let mut db = Raw::open(dir.path())?;
            raw::populate_single(&mut db, SINGLE_STREAM, single)?;
            (dir, db)
        };
        times.push((Subject::Raw, t.elapsed()));
        let t = Instant::now();
        let (v04_log, v04_single) = (tempfile::tempdir()?, tempfile::tempdir()?);
        if let Some(c) = v04.as_mut() {
            c.load_log(v04_log.path(), SPREAD_STREAMS, per)?;
            c.load_single(v04_single.path(), single)?;
            times.push((Subject::V04, t.elapsed()));
            sizes.push((Subject::V04, disk::dir_bytes(v04_log.path())?, None));
        }
        let (mut peers_log, mut peers_single) = (None, None);
        if config.peers {
            let t = Instant::now();
            let (log_dir, single_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
            let mut log = sqlite::open(log_dir.path(), sqlite::Sync::Full)?;
            sqlite::populate_log(&mut log, ids, per)?;
            sizes.push((Subject::Sqlite, disk::dir_bytes(log_dir.path())?, None));
            let mut one = sqlite::open(single_dir.path(), sqlite::Sync::Full)?;
            sqlite::populate_single(&mut one, SINGLE_STREAM, single)?;
            times.push((Subject::Sqlite, t.elapsed()));
            let t = Instant::now();
            let (redb_log_dir, redb_single_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
            let redb_log = redb_store::open(redb_log_dir.path())?;
            redb_store::populate_log(&redb_log, ids, per)?;
            sizes.push((Subject::Redb, disk::dir_bytes(redb_log_dir.path())?, None));
            let redb_one = redb_store::open(redb_single_dir.path())?;
            redb_store::populate_single(&redb_one, SINGLE_STREAM, single)?;
            times.push((Subject::Redb, t.elapsed()));
            peers_log = Some(((log_dir, log), (redb_log_dir, redb_log)));
            peers_single = Some(((single_dir, one), (redb_single_dir, redb_one)));
        }
        let times: Vec<String> = times.iter().map(|(s, t)| format!("{} {t:.2?}", s.label())).collect();
        eprintln!(
            "  populated {} events in {SPREAD_STREAMS} interleaved streams and {} in one, \
             {POPULATE_BATCH} events per transaction: {} (0.4.2's interleaved store by its bulk loader)",
            thousands_u(config.log_events()),
            thousands_u(single),
            times.join(", ")
        );
        print_sizes(config.log_events(), &sizes);
        let mut bytes_per_event = [None; Subject::COUNT];
        for (subject, bytes, _) in &sizes {
            #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
            let per = *bytes as f64 / config.log_events() as f64;
            bytes_per_event[subject.index()] = Some(per);
        }
        let stores = ReadStores {
            log_events: config.log_events(),
            single,
            ours_log,
            ours_single,
            raw_log,
            raw_single,
            v04_log,
            v04_single,
            peers_log,
            peers_single,
        };
        // One untimed pass of each read so every subject starts with its files in the page
        // cache and mapped.
        for read in [Read::Scan, Read::Fold, Read::FoldSingle] {
            for (_, run) in &mut stores.reads(read, ids, v04).0 {
                run()?;
            }
        }
        Ok((stores, bytes_per_event))
    }

    /// Every subject's run of `read`, each checking the count of events it read.
    fn reads<'a>(&'a self, read: Read, ids: &'a [u128], v04: &'a mut Option<V04>) -> Runs<'a, Sample> {
        let single = matches!(read, Read::FoldSingle);
        let expected = if single { self.single } else { self.log_events };
        let check = move |sample: Res<Sample>| expect_events(sample?, expected);
        let (ours_db, raw_db, streams): (&Varve, &Raw, &[u128]) = if single {
            (&self.ours_single.1, &self.raw_single.1, &[SINGLE_STREAM])
        } else {
            (&self.ours_log.1, &self.raw_log.1, ids)
        };
        let mut runs = Runs::new();
        if let Read::Scan = read {
            runs.add(Subject::Ours, move || check(ours::scan(ours_db)))
                .add(Subject::Raw, move || check(raw::scan(raw_db)));
        } else {
            runs.add(Subject::Ours, move || check(ours::fold(ours_db, streams)))
                .add(Subject::Raw, move || check(raw::fold(raw_db, streams)));
        }
        if let Some(c) = v04.as_mut() {
            let dir = if single { self.v04_single.path() } else { self.v04_log.path() };
            match read {
                Read::Scan => runs.add(Subject::V04, move || check(c.scan(dir))),
                Read::Fold | Read::FoldSingle => runs.add(Subject::V04, move || check(c.fold(dir))),
            };
        }
        if let Some(((_, conn), (_, db))) = if single { &self.peers_single } else { &self.peers_log } {
            if let Read::Scan = read {
                runs.add(Subject::Sqlite, move || check(sqlite::scan(conn)))
                    .add(Subject::Redb, move || check(redb_store::scan(db)));
            } else {
                runs.add(Subject::Sqlite, move || check(sqlite::fold(conn, streams)))
                    .add(Subject::Redb, move || check(redb_store::fold(db, streams)));
            }
        }
        runs
    }
}

/// The reads of W3 and W4, over the read stores.
#[derive(Clone, Copy)]
enum Read {
    /// W3: the global log of the interleaved store.
    Scan,
    /// W4a: every stream of the interleaved store.
    Fold,
    /// W4b: the one long stream.
    FoldSingle,
}

/// W3, W4a, W4b, W5b; returns each subject's bytes on disk per event of the interleaved store.
fn read_rows(config: &Config, v04: &mut Option<V04>, rows: &mut Vec<Row>) -> Res<PerSubject<Option<f64>>> {
    let (n, single, reps) = (config.log_events(), config.single, config.reps);
    let ids = spread_ids();
    let (stores, bytes_per_event) = ReadStores::populate(config, v04, &ids)?;
    let reads = [
        ("W3", format!("scan global log, {} events", thousands_u(n)), Read::Scan),
        (
            "W4a",
            format!("load {SPREAD_STREAMS} streams of {} interleaved", thousands_u(config.per_stream)),
            Read::Fold,
        ),
        ("W4b", format!("load 1 stream of {}", thousands_u(single)), Read::FoldSingle),
    ];
    for (id, name, read) in reads {
        if config.runs(id) {
            rows.push(throughput(id, &name, reps, stores.reads(read, &ids, v04))?);
        }
    }
    if config.runs("W5b") {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_time().build()?;
        let mut runs = Runs::new();
        runs.add(Subject::Ours, || expect_events(ours::catch_up(&stores.ours_log.1, &runtime, n)?, n));
        if let Some(c) = v04.as_mut() {
            runs.add(Subject::V04, || c.scan(stores.v04_log.path()));
        }
        rows.push(throughput(
            "W5b",
            &format!("subscriber catch-up, {} events ‡", thousands_u(n)),
            reps,
            runs,
        )?);
    }
    if let Some(c) = v04.as_mut() {
        c.close(stores.v04_log.path())?;
        c.close(stores.v04_single.path())?;
    }
    Ok(bytes_per_event)
}

/// W5a: every subject's latencies, pooled over the repetitions (`None`: not run).
fn latency_rows(config: &Config, v04: &mut Option<V04>) -> Res<Option<PerSubject<Vec<Latency>>>> {
    if !config.runs("W5a") {
        return Ok(None);
    }
    let samples = config.samples;
    let fresh = || tempfile::tempdir();
    let mut runs = Runs::new();
    runs.add(Subject::Ours, || ours::latency(fresh()?.path(), samples))
        .add(Subject::Raw, || raw::latency(fresh()?.path(), samples));
    if let Some(c) = v04.as_mut() {
        runs.add(Subject::V04, move || c.latency(fresh()?.path(), samples));
    }
    if config.peers {
        runs.add(Subject::Sqlite, || sqlite::latency(fresh()?.path(), sqlite::Sync::Full, samples))
            .add(Subject::SqliteNormal, || sqlite::latency(fresh()?.path(), sqlite::Sync::Normal, samples))
            .add(Subject::Redb, || redb_store::latency(fresh()?.path(), samples));
    }
    let reps = alternate("W5a append→subscriber", config.reps, runs, |l: &Vec<Latency>| {
        let s = Percentiles::of(l);
        format!(
            "{} samples, p50 {:.0} µs, p99 {:.0} µs (commit p50 {:.0} µs)",
            l.len(),
            s.total.0,
            s.total.1,
            s.commit.0
        )
    })?;
    Ok(Some(reps.map(|r| r.into_iter().flatten().collect())))
}

/// p50 and p99 in microseconds of the latency, the commit, and the latency minus the commit
/// (per sample; negative when the subscriber held the event before the append call returned).
struct Percentiles {
    total: (f64, f64),
    commit: (f64, f64),
    beyond: (f64, f64),
}

impl Percentiles {
    fn of(samples: &[Latency]) -> Self {
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let pick = |mut xs: Vec<f64>| -> (f64, f64) {
            xs.sort_by(f64::total_cmp);
            let at = |p: f64| {
                #[expect(clippy::cast_precision_loss, clippy::cast_sign_loss, reason = "small counts")]
                let rank = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
                xs[rank - 1]
            };
            if xs.is_empty() { (f64::NAN, f64::NAN) } else { (at(0.5), at(0.99)) }
        };
        Percentiles {
            total: pick(samples.iter().map(|l| micros(l.total)).collect()),
            commit: pick(samples.iter().map(|l| micros(l.commit)).collect()),
            beyond: pick(samples.iter().map(|l| micros(l.total) - micros(l.commit)).collect()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// W6 (encrypted against plain) is ours against ours, so it has its own program:
// `benches/encryption.rs` (`cargo bench --bench encryption [-- --quick]`), alternating a plain
// and an encrypted store like this one alternates subjects. `docs/performance.md` reports
// both.

// ---------------------------------------------------------------------------------------
// Report

fn thousands(x: f64) -> String {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "rates are positive")]
    thousands_u(x.round() as u64)
}

fn thousands_u(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), thousands)
}

fn times(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |x| format!("{x:.2}"))
}

/// The subjects that ran at least one workload of the table, ours first.
fn shown(rows: &[Row]) -> Vec<Subject> {
    Subject::ALL.into_iter().filter(|s| rows.iter().any(|r| r.median(*s).is_some())).collect()
}

fn print_rows(rows: &[Row]) {
    let subjects = shown(rows);
    let peers: Vec<Subject> = subjects.iter().copied().filter(|s| *s != Subject::Ours).collect();
    let mut header = format!("{:<52}", "workload");
    for s in &subjects {
        let _ = write!(header, " {:>15}", format!("{} ev/s", s.label()));
    }
    for s in &peers {
        let _ = write!(header, " {:>22}", format!("ours/{} (paired)", s.label()));
    }
    println!("{header}");
    for row in rows {
        let mut line = format!("{:<52}", row.name);
        for s in &subjects {
            let _ = write!(line, " {:>15}", cell(row.median(*s)));
        }
        for s in &peers {
            let both = match row.paired(*s) {
                Some(p) => format!(
                    "{} ({})",
                    times(ratio(row.median(Subject::Ours), row.median(*s))),
                    times(Some(p))
                ),
                None => "n/a".to_owned(),
            };
            let _ = write!(line, " {both:>22}");
        }
        println!("{line}");
    }
    for row in rows.iter().filter(|r| r.allocations_per_load.is_some()) {
        println!(
            "{} ours: {:.1} heap allocations per Stream::load (most of any repetition)",
            row.id,
            row.allocations_per_load.unwrap_or_default()
        );
    }
}

fn print_latency(latency: &PerSubject<Vec<Latency>>, samples: u64) {
    println!(
        "\n{:<64} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}",
        format!("W5a append→subscriber, µs ({samples} appends per rep)"),
        "p50",
        "p99",
        "commit p50",
        "commit p99",
        "beyond p50",
        "beyond p99"
    );
    for subject in Subject::ALL {
        let label = match subject {
            Subject::Ours => "ours: db.subscribe(1) on tokio",
            Subject::OursRelaxed => "ours relaxed§: db.subscribe(1) on tokio",
            Subject::Raw => "raw heed: channel after commit, reader thread (no API)",
            Subject::V04 => "varvedb 0.4.2: notify watcher, reader thread",
            Subject::Sqlite => "SQLite FULL: channel after commit, reader connection",
            Subject::SqliteNormal => "SQLite NORMAL§: channel after commit, reader connection",
            Subject::Redb => "redb: channel after commit, reader thread",
        };
        let samples = &latency[subject.index()];
        if samples.is_empty() {
            println!("{label:<64} {:>9}", "n/a");
            continue;
        }
        let p = Percentiles::of(samples);
        println!(
            "{label:<64} {:>9.0} {:>9.0} {:>11.0} {:>11.0} {:>11.0} {:>11.0}",
            p.total.0, p.total.1, p.commit.0, p.commit.1, p.beyond.0, p.beyond.1
        );
    }
}

/// Bytes on disk per event of each subject's interleaved read store.
fn print_sizes(events: u64, sizes: &[(Subject, u64, Option<disk::LmdbUsage>)]) {
    println!(
        "bytes on disk per event, read store of {} events in {SPREAD_STREAMS} streams:",
        thousands_u(events)
    );
    for (subject, bytes, usage) in sizes {
        #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let per = *bytes as f64 / events as f64;
        let detail = usage.as_ref().map_or_else(String::new, |u| format!(" ({})", u.describe(events)));
        println!("  {:<8} {per:>7.1}{detail}", subject.label());
    }
}

/// What each run measures against: the disk floor and the peers' stored bytes.
struct Context {
    floor: Option<disk::Floor>,
    /// Bytes on disk per event of the interleaved read store, per subject.
    bytes_per_event: PerSubject<Option<f64>>,
}

/// The performance targets, from the paired ratios, each marked met or not.
fn print_targets(rows: &[Row], latency: Option<&PerSubject<Vec<Latency>>>, single: u64, context: &Context) {
    println!("\ntargets (paired ratios of this run):");
    let find = |id: &str| rows.iter().find(|r| r.id == id);
    let check = |what: String, value: Option<f64>, target: f64, strict: bool| {
        let verdict = match value {
            None => "not measured",
            Some(v) if v > target || (!strict && (v - target).abs() < f64::EPSILON) => "met",
            Some(_) => "NOT met",
        };
        println!("  {what:<72} {:>8}  {verdict}", times(value));
    };
    let (raw, v04) = (Subject::Raw, Subject::V04);
    if let Some(r) = find("W1b") {
        check("W1b ours 16 writers / raw heed 1 writer ≥ 10".into(), r.paired(raw), 10.0, false);
        check("W1b ours 16 writers / 0.4.2 16 writers ≥ 10".into(), r.paired(v04), 10.0, false);
    }
    for id in ["W2a", "W2b", "W2c", "W2d"] {
        if let Some(r) = find(id) {
            check(format!("{id} ours / raw heed ≥ 0.85"), r.paired(raw), 0.85, false);
            check(format!("{id} ours / 0.4.2 > 1"), r.paired(v04), 1.0, true);
        }
    }
    if let Some(r) = find("W3") {
        check("W3 ours / raw heed ≥ 0.8".into(), r.paired(raw), 0.8, false);
        check("W3 ours / 0.4.2 ≥ 2".into(), r.paired(v04), 2.0, false);
    }
    for id in ["W4a", "W4b"] {
        if let Some(r) = find(id) {
            check(format!("{id} ours / raw heed ≥ 1"), r.paired(raw), 1.0, false);
            check(format!("{id} ours / 0.4.2 > 1"), r.paired(v04), 1.0, true);
        }
    }
    if let (Some(a), Some(b)) = (find("W4a"), find("W4b")) {
        // A load's allocations must not grow with its events: W4b's one long load may make a
        // few (its read transaction, a cursor), but one per event would be `single` of them.
        let (a, b) = (a.allocations_per_load.unwrap_or(f64::NAN), b.allocations_per_load.unwrap_or(f64::NAN));
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        let per_event = b / single as f64;
        let verdict = if per_event < 0.001 { "met" } else { "NOT met" };
        println!(
            "  {:<72} {:>8}  {verdict}",
            format!("W4 zero allocations per event ({a:.1}/load at W4a, {b:.1}/load at W4b)"),
            format!("{per_event:.5}")
        );
    }
    if let Some(ours) = latency.map(|l| &l[Subject::Ours.index()])
        && !ours.is_empty()
    {
        let p = Percentiles::of(ours);
        let value = Some(p.beyond.1 / 1000.0);
        let verdict = if p.beyond.1 < 1000.0 { "met" } else { "NOT met" };
        println!("  {:<72} {:>8}  {verdict}", "W5a ours p99 beyond the commit < 1 ms (ms)", times(value));
    }
    if let (Some(c), Some(s)) = (find("W5b"), find("W3")) {
        check(
            "W5b ours catch-up / ours W3 scan ≥ 0.5 (ratio of medians)".into(),
            ratio(c.median(Subject::Ours), s.median(Subject::Ours)),
            0.5,
            false,
        );
    }
    print_peer_goals(rows, context, &check);
}

/// The goals against the peers and the disk floor.
fn print_peer_goals(rows: &[Row], context: &Context, check: &dyn Fn(String, Option<f64>, f64, bool)) {
    let find = |id: &str| rows.iter().find(|r| r.id == id);
    let (sqlite, redb) = (Subject::Sqlite, Subject::Redb);
    if !rows.iter().any(|r| r.median(sqlite).is_some()) {
        return;
    }
    println!("goals against the peers and the disk floor (paired ratios of this run):");
    // The floor's rates: a commit needing two in-place flushes, and a group of all the
    // writers' events per in-place flush.
    let flush = context.floor.as_ref().map(|f| f.in_place.as_secs_f64());
    if let Some(r) = find("W1a") {
        let floor = flush.map(|f| 1.0 / (2.0 * f));
        check(
            "W1a ours / floor of two in-place flushes ≥ 0.9".into(),
            ratio(r.median(Subject::Ours), floor),
            0.9,
            false,
        );
        check("W1a ours / SQLite ≥ 0.6".into(), r.paired(sqlite), 0.6, false);
        check(
            "W1a ours relaxed / SQLite ≥ 1 (ratio of the medians)".into(),
            ratio(r.median(Subject::OursRelaxed), r.median(sqlite)),
            1.0,
            false,
        );
    }
    if let Some(r) = find("W1b") {
        #[expect(clippy::cast_precision_loss, reason = "a small count")]
        let floor = flush.map(|f| CONCURRENT_WRITERS as f64 / f);
        check("W1b ours / SQLite ≥ 8".into(), r.paired(sqlite), 8.0, false);
        check(
            "W1b ours / floor of one in-place flush per group ≥ 0.5".into(),
            ratio(r.median(Subject::Ours), floor),
            0.5,
            false,
        );
    }
    if let Some(r) = find("W2a") {
        check("W2a ours / SQLite ≥ 1".into(), r.paired(sqlite), 1.0, false);
    }
    for id in ["W2b", "W2c", "W2d", "W3", "W4a", "W4b"] {
        if let Some(r) = find(id) {
            check(format!("{id} ours / SQLite ≥ 2"), r.paired(sqlite), 2.0, false);
            check(format!("{id} ours / redb ≥ 1.5"), r.paired(redb), 1.5, false);
        }
    }
    let bytes = |s: Subject| context.bytes_per_event[s.index()];
    if let (Some(ours), Some(sqlite)) = (bytes(Subject::Ours), bytes(sqlite)) {
        // Fewer bytes favour ours: the ratio is SQLite's over ours'.
        check("bytes on disk per event: SQLite / ours ≥ 1".into(), Some(sqlite / ours), 1.0, false);
    }
}

fn print_machine(config: &Config) {
    let tmp = std::env::temp_dir();
    let fs = fs_type(&tmp);
    println!(
        "VarveDB benchmark ({} mode): ours (typed API) vs raw heed{}{}",
        if config.quick { "quick" } else { "full" },
        if config.v04 { " vs varvedb 0.4.2" } else { "" },
        if config.peers { " vs SQLite vs redb" } else { "" },
    );
    println!(
        "machine: {} cpus ({}), {} GiB RAM, Linux {}, load average at start {}; stores under {} ({fs})",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        proc_line("/proc/cpuinfo", "model name"),
        proc_line("/proc/meminfo", "MemTotal")
            .trim_end_matches(" kB")
            .parse::<u64>()
            .map_or(0, |kb| kb >> 20),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        tmp.display(),
    );
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        println!("WARNING: the temp dir is in memory; durable commits cost nothing there (set TMPDIR)");
    }
    println!(
        "config: {} reps per subject, alternating; appends run {:?} each; read store {} streams x {} events \
         interleaved, one stream of {}; W5a {} appends per rep",
        config.reps,
        config.append_time,
        SPREAD_STREAMS,
        thousands_u(config.per_stream),
        thousands_u(config.single),
        config.samples,
    );
}

/// Measures and prints the disk floor (`None` if it could not be measured).
fn print_floor(when: &str, config: &Config) -> Option<disk::Floor> {
    match tempfile::tempdir()
        .map_err(Into::into)
        .and_then(|dir| disk::Floor::measure(dir.path(), config.floor_samples))
    {
        Ok(floor) => {
            println!("disk floor at {when} ({} of each): {}", config.floor_samples, floor.describe());
            Some(floor)
        }
        Err(e) => {
            println!("WARNING: the disk floor could not be measured at {when}: {e}");
            None
        }
    }
}

/// Stored sizes of one event: the baseline must store values of our envelope's size.
fn print_value_sizes() -> Res<()> {
    let ours_len = ours::value_len()?;
    let raw_len = {
        let dir = tempfile::tempdir()?;
        let mut db = Raw::open(dir.path())?;
        let seq = db.write(&[(1, raw::archive(0)?)])?;
        db.value_len(seq)?
    };
    println!(
        "payload {{id u64, amount u32, name 32-byte String}} archived with rkyv ({} bytes); stored event: \
         ours {ours_len} bytes, raw {raw_len} bytes; durable commits everywhere",
        raw::archive(0)?.len()
    );
    if ours_len != raw_len {
        println!("WARNING: the baseline's value size differs from our envelope; update raw::encode");
    }
    Ok(())
}

fn main() -> Res<()> {
    let config = Config::from_args()?;
    let wall = Instant::now();
    print_machine(&config);
    let t = Instant::now();
    let mut v04 = if config.v04 {
        match V04::start().and_then(|mut c| c.check_loader().map(|len| (c, len))) {
            Ok((c, len)) => {
                println!(
                    "varvedb 0.4.2: child process ready in {:.1?}; stored event {len} bytes",
                    t.elapsed()
                );
                Some(c)
            }
            Err(e) => {
                println!("WARNING: varvedb 0.4.2 is left out ({e}); its column reads n/a");
                None
            }
        }
    } else {
        None
    };
    print_value_sizes()?;
    let floor = print_floor("start", &config);
    println!();

    let mut rows = Vec::new();
    append_rows(&config, &mut v04, &mut rows)?;
    let mut context = Context { floor, bytes_per_event: [None; Subject::COUNT] };
    if ["W3", "W4a", "W4b", "W5b"].iter().any(|w| config.runs(w)) {
        context.bytes_per_event = read_rows(&config, &mut v04, &mut rows)?;
    }
    let latency = latency_rows(&config, &mut v04)?;
    drop(v04);
    println!();
    let end_floor = print_floor("end", &config);
    // The goals against the floor take the faster of the two measurements.
    context.floor = match (context.floor, end_floor) {
        (Some(a), Some(b)) => Some(if a.in_place <= b.in_place { a } else { b }),
        (a, b) => a.or(b),
    };
    println!();

    print_rows(&rows);
    if let Some(latency) = &latency {
        print_latency(latency, config.samples);
    }
    println!(
        "\nours/X: ratio of the medians (in parentheses, paired: the median of the per-repetition ratios).\n\
         * W1b: raw heed has no group commit unless hand-coded; its column is the raw single-writer \
         rate (1 txn per event), measured alongside. 0.4.2 runs {CONCURRENT_WRITERS} writer threads.\n\
         † 0.4.2 cannot write several streams in one call: its column is one append_batch per stream \
         touched (not atomic, one commit each).\n\
         W3: ours verifies every record's CRC32C and validates the payload; raw heed and 0.4.2 validate \
         the payload (0.4.2 hands out owned copies).\n\
         W4: Stream::load (ours); index range + get + validate + fold (raw heed; 0.4.2 iter_stream, \
         copying each payload to an aligned buffer).\n\
         ‡ W5b: raw heed has no subscription (n/a); 0.4.2 has none either, its column repeats its W3 \
         (the log read through GlobalReader::iter_from). SQLite and redb have none (n/a).\n\
         § SQLite NORMAL syncs its WAL only at checkpoints: NOT durable on power loss (a side column, \
         appends only; its reads would be SQLite's). Ours relaxed (Durability::Relaxed) may lose the \
         commits since its last checkpoint (20 ms) on power loss, never part of one (a side column, appends \
         only). SQLite's {CONCURRENT_WRITERS} writers share one \
         connection behind a mutex, redb's one Database; each call commits on its own.\n\
         total wall time {:.1?}",
        wall.elapsed()
    );
    print_targets(&rows, latency.as_ref(), config.single, &context);
    Ok(())
}
