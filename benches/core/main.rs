//! `VarveDB` through its public typed API, side by side in one run with raw heed doing the
//! same LMDB work (the limit) and with varvedb 0.4.2 from crates.io (the crate a user would
//! pick instead). `docs/performance.md` describes the workloads and what bounds each.
//!
//! Run: `cargo bench --bench core` (full size, a few minutes) or
//! `cargo bench --bench core -- --quick` (a smoke run, under a minute). Options:
//! `--reps R`; `--secs S` (length of each append measurement); `--n N` (events of the read
//! store: 1,000 streams of N/1,000 interleaved); `--single N` (the one long stream of W4b);
//! `--samples N` (W5a appends per repetition); `--only W3` (workloads whose name starts so;
//! may repeat); `--no-v04` (leave out varvedb 0.4.2, which is built on first use and needs
//! crates.io). W6 (encrypted against plain) is `benches/encryption.rs`.
//!
//! Every append measurement runs in a fresh store in its own temporary directory. The subjects
//! alternate within each repetition, each taking each place in turn, and the tables report
//! the median of the repetitions and the median of the per-repetition ratios ("paired": run
//! back to back, less exposed to drifts of the disk or of other load).

mod alloc;
mod ours;
mod raw;
mod v04;

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use varvedb::{Event, Varve, aggregate};

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
/// Our envelope header (see `varvedb/src/record.rs`); the baseline's value has the same size,
/// which `main` checks against a real stored record.
const HEADER_LEN: usize = 48;
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

/// How one subject runs one measurement; `None`: it cannot run this workload.
type Run<'a, T> = Option<Box<dyn FnMut() -> Res<T> + 'a>>;

const SUBJECTS: [&str; 3] = ["ours", "raw", "0.4.2"];

/// Runs `reps` repetitions of every subject that can run, rotating their order each
/// repetition, and returns each subject's results in repetition order.
fn alternate<T, const N: usize>(
    name: &str,
    labels: [&str; N],
    reps: usize,
    mut runs: [Run<'_, T>; N],
    describe: impl Fn(&T) -> String,
) -> Res<[Vec<T>; N]> {
    let present: Vec<usize> = (0..N).filter(|&i| runs[i].is_some()).collect();
    let mut out: [Vec<T>; N] = std::array::from_fn(|_| Vec::new());
    for rep in 0..reps {
        for turn in 0..present.len() {
            let i = present[(rep + turn) % present.len()];
            let run = runs[i].as_mut().expect("only present subjects are listed");
            let result = run()?;
            eprintln!("  {name} rep {rep} {:<9} {}", labels[i], describe(&result));
            out[i].push(result);
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

/// A row of the throughput table: ours, raw heed, varvedb 0.4.2.
struct Row {
    id: &'static str,
    name: String,
    medians: [Option<f64>; 3],
    /// Paired ours/raw and ours/0.4.2.
    paired: [Option<f64>; 2],
    allocations_per_load: Option<f64>,
}

fn throughput(id: &'static str, name: &str, reps: usize, runs: [Run<'_, Sample>; 3]) -> Res<Row> {
    let label = format!("{id} {name}");
    let samples = alternate(&label, SUBJECTS, reps, runs, Sample::describe)?;
    let rates = samples.each_ref().map(|s| s.iter().map(Sample::rate).collect::<Vec<_>>());
    Ok(Row {
        id,
        name: label,
        medians: rates.each_ref().map(|r| median(r.clone())),
        paired: [paired(&rates[0], &rates[1]), paired(&rates[0], &rates[2])],
        allocations_per_load: samples[0].iter().filter_map(|s| s.allocations).max_by(f64::total_cmp),
    })
}

fn job<'a, T>(f: impl FnMut() -> Res<T> + 'a) -> Box<dyn FnMut() -> Res<T> + 'a> {
    Box::new(f)
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
    for (id, name, shape) in shapes {
        if config.runs(id) {
            rows.push(throughput(
                id,
                &name,
                config.reps,
                [
                    Some(job(|| ours::append(tempfile::tempdir()?.path(), shape, time))),
                    Some(job(|| raw::append(tempfile::tempdir()?.path(), shape, time))),
                    v04.as_mut().map(|c| job(move || c.append(tempfile::tempdir()?.path(), shape, time))),
                ],
            )?);
        }
        if id == "W1a" && config.runs("W1b") {
            rows.push(throughput(
                "W1b",
                &format!("append 1 event/call, {CONCURRENT_WRITERS} writers (raw: 1*)"),
                config.reps,
                [
                    Some(job(|| ours::concurrent(tempfile::tempdir()?.path(), time))),
                    Some(job(|| {
                        raw::append(tempfile::tempdir()?.path(), Shape::OneStream { batch: 1 }, time)
                    })),
                    v04.as_mut().map(|c| {
                        job(move || c.concurrent(tempfile::tempdir()?.path(), CONCURRENT_WRITERS, time))
                    }),
                ],
            )?);
        }
    }
    Ok(())
}

/// The read stores of every subject: 1,000 streams interleaved (W3, W4a, W5b) and one long
/// stream (W4b).
struct ReadStores {
    ours_log: (TempDir, Varve),
    ours_single: (TempDir, Varve),
    raw_log: (TempDir, Raw),
    raw_single: (TempDir, Raw),
    v04_log: TempDir,
    v04_single: TempDir,
}

impl ReadStores {
    fn populate(config: &Config, v04: &mut Option<V04>, ids: &[u128]) -> Res<Self> {
        let (per, single) = (config.per_stream, config.single);
        let t = Instant::now();
        let ours_log = {
            let dir = tempfile::tempdir()?;
            let db = ours::open(dir.path())?;
            ours::populate_log(&db, ids, per)?;
            (dir, db)
        };
        let ours_single = {
            let dir = tempfile::tempdir()?;
            let db = ours::open(dir.path())?;
            ours::populate_single(&db, single)?;
            (dir, db)
        };
        let ours_time = t.elapsed();
        let t = Instant::now();
        let raw_log = {
            let dir = tempfile::tempdir()?;
            let mut db = Raw::open(dir.path())?;
            raw::populate_log(&mut db, ids, per)?;
            (dir, db)
        };
        let raw_single = {
            let dir = tempfile::tempdir()?;
            let mut db = Raw::open(dir.path())?;
            raw::populate_single(&mut db, SINGLE_STREAM, single)?;
            (dir, db)
        };
        let raw_time = t.elapsed();
        let t = Instant::now();
        let (v04_log, v04_single) = (tempfile::tempdir()?, tempfile::tempdir()?);
        if let Some(c) = v04.as_mut() {
            c.load_log(v04_log.path(), SPREAD_STREAMS, per)?;
            c.load_single(v04_single.path(), single)?;
        }
        eprintln!(
            "  populated {} events in {SPREAD_STREAMS} interleaved streams and {} in one: ours {ours_time:.2?}, \
             raw {raw_time:.2?}, 0.4.2 {:.2?} (its interleaved store by the bulk loader)",
            thousands_u(config.log_events()),
            thousands_u(single),
            t.elapsed()
        );
        // One untimed pass of each read so every subject starts with its files in the page
        // cache and mapped.
        ours::scan(&ours_log.1)?;
        ours::fold(&ours_log.1, ids)?;
        ours::fold(&ours_single.1, &[SINGLE_STREAM])?;
        raw::scan(&raw_log.1)?;
        raw::fold(&raw_log.1, ids)?;
        raw::fold(&raw_single.1, &[SINGLE_STREAM])?;
        if let Some(c) = v04.as_mut() {
            c.scan(v04_log.path())?;
            c.fold(v04_log.path())?;
            c.fold(v04_single.path())?;
        }
        Ok(ReadStores { ours_log, ours_single, raw_log, raw_single, v04_log, v04_single })
    }
}

fn read_rows(config: &Config, v04: &mut Option<V04>, rows: &mut Vec<Row>) -> Res<()> {
    let (n, single, reps) = (config.log_events(), config.single, config.reps);
    let ids = spread_ids();
    let stores = ReadStores::populate(config, v04, &ids)?;
    let ReadStores { ours_log, ours_single, raw_log, raw_single, v04_log, v04_single } = &stores;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_time().build()?;
    if config.runs("W3") {
        rows.push(throughput(
            "W3",
            &format!("scan global log, {} events", thousands_u(n)),
            reps,
            [
                Some(job(|| expect_events(ours::scan(&ours_log.1)?, n))),
                Some(job(|| expect_events(raw::scan(&raw_log.1)?, n))),
                v04.as_mut().map(|c| job(move || c.scan(v04_log.path()))),
            ],
        )?);
    }
    if config.runs("W4a") {
        rows.push(throughput(
            "W4a",
            &format!("load {SPREAD_STREAMS} streams of {} interleaved", thousands_u(config.per_stream)),
            reps,
            [
                Some(job(|| expect_events(ours::fold(&ours_log.1, &ids)?, n))),
                Some(job(|| expect_events(raw::fold(&raw_log.1, &ids)?, n))),
                v04.as_mut().map(|c| job(move || c.fold(v04_log.path()))),
            ],
        )?);
    }
    if config.runs("W4b") {
        rows.push(throughput(
            "W4b",
            &format!("load 1 stream of {}", thousands_u(single)),
            reps,
            [
                Some(job(|| expect_events(ours::fold(&ours_single.1, &[SINGLE_STREAM])?, single))),
                Some(job(|| expect_events(raw::fold(&raw_single.1, &[SINGLE_STREAM])?, single))),
                v04.as_mut().map(|c| job(move || c.fold(v04_single.path()))),
            ],
        )?);
    }
    if config.runs("W5b") {
        rows.push(throughput(
            "W5b",
            &format!("subscriber catch-up, {} events ‡", thousands_u(n)),
            reps,
            [
                Some(job(|| expect_events(ours::catch_up(&ours_log.1, &runtime, n)?, n))),
                None,
                v04.as_mut().map(|c| job(move || c.scan(v04_log.path()))),
            ],
        )?);
    }
    if let Some(c) = v04.as_mut() {
        c.close(v04_log.path())?;
        c.close(v04_single.path())?;
    }
    Ok(())
}

/// W5a: every subject's latencies, pooled over the repetitions (`None`: not run).
fn latency_rows(config: &Config, v04: &mut Option<V04>) -> Res<Option<[Vec<Latency>; 3]>> {
    if !config.runs("W5a") {
        return Ok(None);
    }
    let samples = config.samples;
    let reps = alternate(
        "W5a append→subscriber",
        SUBJECTS,
        config.reps,
        [
            Some(job(|| ours::latency(tempfile::tempdir()?.path(), samples))),
            Some(job(|| raw::latency(tempfile::tempdir()?.path(), samples))),
            v04.as_mut().map(|c| job(move || c.latency(tempfile::tempdir()?.path(), samples))),
        ],
        |l: &Vec<Latency>| {
            let s = Percentiles::of(l);
            format!(
                "{} samples, p50 {:.0} µs, p99 {:.0} µs (commit p50 {:.0} µs)",
                l.len(),
                s.total.0,
                s.total.1,
                s.commit.0
            )
        },
    )?;
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

fn print_rows(rows: &[Row]) {
    println!(
        "{:<52} {:>13} {:>13} {:>13} {:>9} {:>7} {:>11} {:>7}",
        "workload", "ours ev/s", "raw heed ev/s", "0.4.2 ev/s", "ours/raw", "paired", "ours/0.4.2", "paired"
    );
    for row in rows {
        println!(
            "{:<52} {:>13} {:>13} {:>13} {:>9} {:>7} {:>11} {:>7}",
            row.name,
            cell(row.medians[0]),
            cell(row.medians[1]),
            cell(row.medians[2]),
            times(ratio(row.medians[0], row.medians[1])),
            times(row.paired[0]),
            times(ratio(row.medians[0], row.medians[2])),
            times(row.paired[1]),
        );
    }
    for row in rows.iter().filter(|r| r.allocations_per_load.is_some()) {
        println!(
            "{} ours: {:.1} heap allocations per Stream::load (most of any repetition)",
            row.id,
            row.allocations_per_load.unwrap_or_default()
        );
    }
}

fn print_latency(latency: &[Vec<Latency>; 3], samples: u64) {
    println!(
        "\n{:<56} {:>9} {:>9} {:>11} {:>11} {:>11} {:>11}",
        format!("W5a append→subscriber, µs ({samples} appends per rep)"),
        "p50",
        "p99",
        "commit p50",
        "commit p99",
        "beyond p50",
        "beyond p99"
    );
    let labels = [
        "ours: db.subscribe(1) on tokio",
        "raw heed: channel after commit, reader thread (no API)",
        "varvedb 0.4.2: notify watcher, reader thread",
    ];
    for (label, samples) in labels.iter().zip(latency) {
        if samples.is_empty() {
            println!("{label:<56} {:>9}", "n/a");
            continue;
        }
        let p = Percentiles::of(samples);
        println!(
            "{label:<56} {:>9.0} {:>9.0} {:>11.0} {:>11.0} {:>11.0} {:>11.0}",
            p.total.0, p.total.1, p.commit.0, p.commit.1, p.beyond.0, p.beyond.1
        );
    }
}

/// The performance targets, from the paired ratios, each marked met or not.
fn print_targets(rows: &[Row], latency: Option<&[Vec<Latency>; 3]>, single: u64) {
    println!("\ntargets (paired ratios of this run):");
    let find = |id: &str| rows.iter().find(|r| r.id == id);
    let check = |what: String, value: Option<f64>, target: f64, strict: bool| {
        let verdict = match value {
            None => "not measured",
            Some(v) if v > target || (!strict && (v - target).abs() < f64::EPSILON) => "met",
            Some(_) => "NOT met",
        };
        println!("  {what:<64} {:>8}  {verdict}", times(value));
    };
    if let Some(r) = find("W1b") {
        check("W1b ours 16 writers / raw heed 1 writer ≥ 10".into(), r.paired[0], 10.0, false);
        check("W1b ours 16 writers / 0.4.2 16 writers ≥ 10".into(), r.paired[1], 10.0, false);
    }
    for id in ["W2a", "W2b", "W2c", "W2d"] {
        if let Some(r) = find(id) {
            check(format!("{id} ours / raw heed ≥ 0.85"), r.paired[0], 0.85, false);
            check(format!("{id} ours / 0.4.2 > 1"), r.paired[1], 1.0, true);
        }
    }
    if let Some(r) = find("W3") {
        check("W3 ours / raw heed ≥ 0.8".into(), r.paired[0], 0.8, false);
        check("W3 ours / 0.4.2 ≥ 2".into(), r.paired[1], 2.0, false);
    }
    for id in ["W4a", "W4b"] {
        if let Some(r) = find(id) {
            check(format!("{id} ours / raw heed ≥ 1"), r.paired[0], 1.0, false);
            check(format!("{id} ours / 0.4.2 > 1"), r.paired[1], 1.0, true);
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
            "  {:<64} {:>8}  {verdict}",
            format!("W4 zero allocations per event ({a:.1}/load at W4a, {b:.1}/load at W4b)"),
            format!("{per_event:.5}")
        );
    }
    if let Some([ours, _, _]) = latency
        && !ours.is_empty()
    {
        let p = Percentiles::of(ours);
        let value = Some(p.beyond.1 / 1000.0);
        let verdict = if p.beyond.1 < 1000.0 { "met" } else { "NOT met" };
        println!("  {:<64} {:>8}  {verdict}", "W5a ours p99 beyond the commit < 1 ms (ms)", times(value));
    }
    if let (Some(c), Some(s)) = (find("W5b"), find("W3")) {
        check(
            "W5b ours catch-up / ours W3 scan ≥ 0.5 (ratio of medians)".into(),
            ratio(c.medians[0], s.medians[0]),
            0.5,
            false,
        );
    }
}

fn print_machine(config: &Config) {
    let tmp = std::env::temp_dir();
    let fs = fs_type(&tmp);
    println!(
        "VarveDB benchmark ({} mode): ours (typed API) vs raw heed vs varvedb 0.4.2",
        if config.quick { "quick" } else { "full" }
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
        println!("WARNING: the baseline's value size differs from our envelope; update HEADER_LEN");
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
    println!();

    let mut rows = Vec::new();
    append_rows(&config, &mut v04, &mut rows)?;
    if ["W3", "W4a", "W4b", "W5b"].iter().any(|w| config.runs(w)) {
        read_rows(&config, &mut v04, &mut rows)?;
    }
    let latency = latency_rows(&config, &mut v04)?;
    drop(v04);

    print_rows(&rows);
    if let Some(latency) = &latency {
        print_latency(latency, config.samples);
    }
    println!(
        "\nours/raw, ours/0.4.2: ratio of the medians; paired: median of the per-repetition ratios.\n\
         * W1b: raw heed has no group commit unless hand-coded; its column is the raw single-writer \
         rate (1 txn per event), measured alongside. 0.4.2 runs {CONCURRENT_WRITERS} writer threads.\n\
         † 0.4.2 cannot write several streams in one call: its column is one append_batch per stream \
         touched (not atomic, one commit each).\n\
         W3: ours verifies every record's CRC32C and validates the payload; raw heed and 0.4.2 validate \
         the payload (0.4.2 hands out owned copies).\n\
         W4: Stream::load (ours); index range + get + validate + fold (raw heed; 0.4.2 iter_stream, \
         copying each payload to an aligned buffer).\n\
         ‡ W5b: raw heed has no subscription (n/a); 0.4.2 has none either, its column repeats its W3 \
         (the log read through GlobalReader::iter_from).\n\
         total wall time {:.1?}",
        wall.elapsed()
    );
    print_targets(&rows, latency.as_ref(), config.single);
    Ok(())
}
