//! Core throughput of `VarveDB` against a raw-heed baseline doing the same LMDB work.
//!
//! Run: `cargo bench --bench core` (full size) or `cargo bench --bench core -- --quick`.
//! Options: `--reps R`, `--secs S` (length of each append measurement), `--n N` (events
//! in the scan workloads), `--only W3` (only the workloads whose name starts so; may repeat).
//!
//! Every measurement runs in a fresh store in its own temporary directory; the two subjects
//! alternate within each repetition (the first one swaps every repetition) and the table
//! reports the median rate of the repetitions.
//!
//! The baseline is what a careful raw-heed user would write for the same data: one write
//! transaction per call holding the `events` table (`seq u64 BE` → value of the same size as
//! our envelope, put with `APPEND`) and the `streams` index (`stream u128 BE ‖ version u32 BE`
//! → `seq u64 LE`), committed durably. It keeps the next seq and each stream's version in
//! memory (loaded from the index on first use, updated after the commit), so it writes no
//! `stream_heads` entry, reads nothing before writing, and computes no checksum.

use std::collections::HashMap;
use std::error::Error;
use std::hint::black_box;
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, PutFlags};
use varvedb::rkyv;
use varvedb::rkyv::util::AlignedVec;
use varvedb::{ExpectedVersion, NewEvent, Options, Varve, WriteBatch};

type Res<T> = Result<T, Box<dyn Error>>;
type Table = Database<Bytes, Bytes>;

/// The event payload of every workload.
#[derive(rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = varvedb::rkyv)]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
}

const TAG: &str = "payment";
const NAME: &str = "Jane Q. Customer, account 000042";
const MAP_SIZE: usize = 64 << 30;
/// Our envelope header (see `varvedb/src/record.rs`); the baseline's value has the same size,
/// which `check_value_sizes` verifies against a real stored record at startup.
const HEADER_LEN: usize = 48;
const CONCURRENT_WRITERS: usize = 16;
const SPREAD_STREAMS: usize = 1000;
const POPULATE_BATCH: u64 = 10_000;

fn payment(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

fn new_event(i: u64) -> Res<NewEvent> {
    Ok(NewEvent::archive(TAG, &payment(i))?)
}

fn archive(i: u64) -> Res<AlignedVec> {
    Ok(rkyv::to_bytes::<rkyv::rancor::Error>(&payment(i))?)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------
// Configuration and machine

struct Config {
    quick: bool,
    reps: usize,
    append_time: Duration,
    scan_events: u64,
    only: Vec<String>,
}

impl Config {
    fn from_args() -> Res<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut config = if quick {
            Config {
                quick,
                reps: 3,
                append_time: Duration::from_millis(300),
                scan_events: 20_000,
                only: Vec::new(),
            }
        } else {
            Config {
                quick,
                reps: 5,
                append_time: Duration::from_secs(2),
                scan_events: 1_000_000,
                only: Vec::new(),
            }
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
            config.scan_events = v.parse::<u64>()?.max(1);
        }
        config.only = args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1].clone()).collect();
        Ok(config)
    }

    fn runs(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| workload.starts_with(o.as_str()))
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
            let (_dev, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount).then(|| (mount.len(), format!("{fs} on {mount}")))
        })
        .max()
        .map_or_else(|| "unknown".to_owned(), |(_, fs)| fs)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------------------
// Subjects

fn open_ours(dir: &Path) -> Res<Varve> {
    Ok(Options::new().map_size(MAP_SIZE).open(dir)?)
}

/// The raw-heed baseline.
struct Raw {
    env: Env,
    events: Table,
    streams: Table,
    next_seq: u64,
    versions: HashMap<u128, u32>,
    staged: Vec<(u128, u32)>,
    buf: Vec<u8>,
}

impl Raw {
    fn open(dir: &Path) -> Res<Self> {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE).max_dbs(2);
        // SAFETY: a fresh directory that nothing else maps or modifies, opened once.
        let env = unsafe { options.open(dir) }?;
        let mut wtxn = env.write_txn()?;
        let events: Table = env.create_database(&mut wtxn, Some("events"))?;
        let streams: Table = env.create_database(&mut wtxn, Some("streams"))?;
        let next_seq = events.last(&wtxn)?.map_or(Ok(0), |(k, _)| k.try_into().map(u64::from_be_bytes))? + 1;
        wtxn.commit()?;
        Ok(Raw {
            env,
            events,
            streams,
            next_seq,
            versions: HashMap::new(),
            staged: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Appends `items` (stream, archived payload) in one durable transaction.
    fn write(&mut self, items: &[(u128, AlignedVec)]) -> Res<()> {
        let mut wtxn = self.env.write_txn()?;
        let timestamp = now_micros();
        let mut seq = self.next_seq;
        self.staged.clear();
        for (stream, payload) in items {
            let stream = *stream;
            let version = if let Some((_, v)) = self.staged.iter_mut().rev().find(|(s, _)| *s == stream) {
                *v += 1;
                *v
            } else {
                let current = match self.versions.get(&stream) {
                    Some(&v) => v,
                    None => match self.streams.rev_prefix_iter(&wtxn, &stream.to_be_bytes())?.next() {
                        Some(entry) => u32::from_be_bytes(entry?.0[16..].try_into()?),
                        None => 0,
                    },
                };
                self.staged.push((stream, current + 1));
                current + 1
            };
            // Same size as our envelope: 48-byte header (4 unused bytes where we keep the
            // checksum), type tag, payload.
            let buf = &mut self.buf;
            buf.clear();
            buf.extend_from_slice(&[0, 0, 0, 0, 1, 0, TAG.len() as u8, 0]);
            buf.extend_from_slice(&stream.to_le_bytes());
            buf.extend_from_slice(&version.to_le_bytes());
            buf.extend_from_slice(&timestamp.to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.extend_from_slice(TAG.as_bytes());
            buf.extend_from_slice(payload);
            self.events.put_with_flags(&mut wtxn, PutFlags::APPEND, &seq.to_be_bytes(), buf)?;
            let mut index_key = [0u8; 20];
            index_key[..16].copy_from_slice(&stream.to_be_bytes());
            index_key[16..].copy_from_slice(&version.to_be_bytes());
            self.streams.put(&mut wtxn, &index_key, &seq.to_le_bytes())?;
            seq += 1;
        }
        wtxn.commit()?;
        self.next_seq = seq;
        self.versions.extend(self.staged.drain(..));
        Ok(())
    }
}

/// The payload inside a baseline value, parsed from its header.
/// Stores one event each way and compares the stored value sizes (ours read back through
/// heed after the store is closed). Returns (ours, raw) in bytes.
fn check_value_sizes() -> Res<(usize, usize)> {
    let (ours_dir, raw_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    open_ours(ours_dir.path())?.append(1u128, ExpectedVersion::NoStream, [new_event(0)?])?;
    let ours = {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE).max_dbs(16);
        // SAFETY: our store above is closed; nothing else maps or modifies these files.
        let env = unsafe { options.open(ours_dir.path()) }?;
        let rtxn = env.read_txn()?;
        let events: Table = env.open_database(&rtxn, Some("events"))?.ok_or("no events table")?;
        events.get(&rtxn, &1u64.to_be_bytes())?.ok_or("no event 1")?.len()
    };
    let mut raw = Raw::open(raw_dir.path())?;
    raw.write(&[(1, archive(0)?)])?;
    let rtxn = raw.env.read_txn()?;
    let raw_len = raw.events.get(&rtxn, &1u64.to_be_bytes())?.ok_or("no event 1")?.len();
    Ok((ours, raw_len))
}

fn raw_payload(value: &[u8]) -> Res<&[u8]> {
    let header = value.get(..HEADER_LEN).ok_or("short value")?;
    let tag_len = usize::from(header[6]);
    let len = u32::from_le_bytes(header[40..44].try_into()?) as usize;
    let start = HEADER_LEN + tag_len;
    Ok(value.get(start..start + len).ok_or("short value")?)
}

// ---------------------------------------------------------------------------------------
// Append workloads

#[derive(Clone, Copy)]
enum Shape {
    /// Calls of `batch` events, all to one stream.
    OneStream { batch: u64 },
    /// Calls of `batch` events, event i of the run going to stream i mod `SPREAD_STREAMS`.
    Spread { batch: u64 },
}

fn spread_ids() -> Vec<u128> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..SPREAD_STREAMS).map(|_| rng.u128(..)).collect()
}

/// Appends for `time` through our API; returns (events, elapsed).
fn ours_append(dir: &Path, shape: Shape, time: Duration) -> Res<(u64, Duration)> {
    let db = open_ours(dir)?;
    let ids = spread_ids();
    let mut versions = vec![0u32; ids.len()];
    let mut n = 0u64;
    let start = Instant::now();
    loop {
        match shape {
            Shape::OneStream { batch } => {
                let events = (n..n + batch).map(new_event).collect::<Res<Vec<_>>>()?;
                let done = db.append(ids[0], ExpectedVersion::Exact(versions[0]), events)?;
                versions[0] = done.last_version;
                n += batch;
            }
            Shape::Spread { batch } => {
                let mut write = WriteBatch::new();
                for i in n..n + batch {
                    let k = (i % SPREAD_STREAMS as u64) as usize;
                    write.append(ids[k], ExpectedVersion::Exact(versions[k]), [new_event(i)?]);
                    versions[k] += 1;
                }
                db.write(write)?;
                n += batch;
            }
        }
        if start.elapsed() >= time {
            return Ok((n, start.elapsed()));
        }
    }
}

/// The same appends through raw heed; returns (events, elapsed).
fn raw_append(dir: &Path, shape: Shape, time: Duration) -> Res<(u64, Duration)> {
    let mut raw = Raw::open(dir)?;
    let ids = spread_ids();
    let mut n = 0u64;
    let start = Instant::now();
    loop {
        let items = match shape {
            Shape::OneStream { batch } => {
                (n..n + batch).map(|i| Ok((ids[0], archive(i)?))).collect::<Res<Vec<_>>>()?
            }
            Shape::Spread { batch } => (n..n + batch)
                .map(|i| Ok((ids[(i % SPREAD_STREAMS as u64) as usize], archive(i)?)))
                .collect::<Res<Vec<_>>>()?,
        };
        raw.write(&items)?;
        n += items.len() as u64;
        if start.elapsed() >= time {
            return Ok((n, start.elapsed()));
        }
    }
}

/// `CONCURRENT_WRITERS` threads appending one event per call, each to its own stream.
/// Returns (events, elapsed, commits).
fn ours_concurrent(dir: &Path, time: Duration) -> Res<(u64, Duration, u64)> {
    let db = open_ours(dir)?;
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(CONCURRENT_WRITERS + 1);
    let commits_before = db.stats().commits;
    let (total, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
        let handles: Vec<_> = (0..CONCURRENT_WRITERS)
            .map(|w| {
                let (db, stop, barrier) = (&db, &stop, &barrier);
                scope.spawn(move || -> Result<u64, varvedb::Error> {
                    let stream = 1000 + w as u128;
                    let mut n = 0u64;
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let event = NewEvent::archive(TAG, &payment(n))?;
                        db.append(stream, ExpectedVersion::Exact(n as u32), [event])?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| "writer thread panicked")??;
        }
        Ok((total, start.elapsed()))
    })?;
    Ok((total, elapsed, db.stats().commits - commits_before))
}

// ---------------------------------------------------------------------------------------
// Read workloads: one store per subject holding `n` events in one stream.

const SCAN_STREAM: u128 = 0x5ca7_0000_0000_0000_0000_0000_0000_0001;

fn populate_ours(db: &Varve, n: u64) -> Res<()> {
    let mut i = 0;
    while i < n {
        let end = (i + POPULATE_BATCH).min(n);
        db.append(SCAN_STREAM, ExpectedVersion::Auto, (i..end).map(new_event).collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

fn populate_raw(raw: &mut Raw, n: u64) -> Res<()> {
    let mut i = 0;
    while i < n {
        let end = (i + POPULATE_BATCH).min(n);
        raw.write(&(i..end).map(|j| Ok((SCAN_STREAM, archive(j)?))).collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

/// W3, ours: the whole log, each record's checksum verified and payload validated.
fn ours_scan(db: &Varve) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let view = db.begin_read()?;
    let (mut n, mut sum) = (0u64, 0u64);
    for event in view.read_all(1)? {
        let p = event?.access::<ArchivedPayment>()?;
        sum += u64::from(p.amount.to_native()) + p.name.len() as u64;
        n += 1;
    }
    black_box(sum);
    Ok((n, start.elapsed()))
}

/// W3, baseline: iterate the events table, validate each payload.
fn raw_scan(raw: &Raw) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let rtxn = raw.env.read_txn()?;
    let (mut n, mut sum) = (0u64, 0u64);
    for entry in raw.events.iter(&rtxn)? {
        let (_, value) = entry?;
        let p = rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(raw_payload(value)?)?;
        sum += u64::from(p.amount.to_native()) + p.name.len() as u64;
        n += 1;
    }
    black_box(sum);
    Ok((n, start.elapsed()))
}

/// W4, ours: one stream through its index.
fn ours_stream(db: &Varve) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let view = db.begin_read()?;
    let (mut n, mut sum) = (0u64, 0u64);
    for event in view.read_stream(SCAN_STREAM, 1)? {
        let p = event?.access::<ArchivedPayment>()?;
        sum += u64::from(p.amount.to_native()) + p.name.len() as u64;
        n += 1;
    }
    black_box(sum);
    Ok((n, start.elapsed()))
}

/// W4, baseline: index prefix range, one `get` per entry, validate each payload.
fn raw_stream(raw: &Raw) -> Res<(u64, Duration)> {
    let start = Instant::now();
    let rtxn = raw.env.read_txn()?;
    let (mut n, mut sum) = (0u64, 0u64);
    for entry in raw.streams.prefix_iter(&rtxn, &SCAN_STREAM.to_be_bytes())? {
        let (_, seq) = entry?;
        let seq = u64::from_le_bytes(seq.try_into()?);
        let value = raw.events.get(&rtxn, &seq.to_be_bytes())?.ok_or("index points at a missing seq")?;
        let p = rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(raw_payload(value)?)?;
        sum += u64::from(p.amount.to_native()) + p.name.len() as u64;
        n += 1;
    }
    black_box(sum);
    Ok((n, start.elapsed()))
}

// ---------------------------------------------------------------------------------------
// Measurement and report

#[expect(clippy::cast_precision_loss, reason = "event counts are far below 2^52")]
fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len().is_multiple_of(2) { f64::midpoint(xs[m - 1], xs[m]) } else { xs[m] }
}

fn thousands(x: f64) -> String {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "rates are positive")]
    let digits = (x.round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Row {
    name: String,
    ours: f64,
    raw: f64,
    /// Median over repetitions of ours/raw within the same repetition (run back to back, so
    /// less exposed to slow drifts of the disk or of other load than the ratio of medians).
    paired: f64,
}

/// Runs `reps` repetitions of both subjects, alternating which goes first.
fn compare(
    name: &str,
    reps: usize,
    mut ours: impl FnMut() -> Res<(u64, Duration, String)>,
    mut raw: impl FnMut() -> Res<(u64, Duration)>,
) -> Res<Row> {
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for turn in 0..2 {
            if (rep + turn) % 2 == 0 {
                let (n, t, note) = ours()?;
                ours_rates.push(rate(n, t));
                eprintln!(
                    "  {name} rep {rep} ours: {n} events in {t:.3?} = {}/s{note}",
                    thousands(rate(n, t))
                );
            } else {
                let (n, t) = raw()?;
                raw_rates.push(rate(n, t));
                eprintln!("  {name} rep {rep} raw:  {n} events in {t:.3?} = {}/s", thousands(rate(n, t)));
            }
        }
    }
    let paired = median(ours_rates.iter().zip(&raw_rates).map(|(o, r)| o / r).collect());
    Ok(Row { name: name.to_owned(), ours: median(ours_rates), raw: median(raw_rates), paired })
}

fn append_row(name: &str, config: &Config, shape: Shape) -> Res<Row> {
    let time = config.append_time;
    compare(
        name,
        config.reps,
        || {
            let dir = tempfile::tempdir()?;
            let (n, t) = ours_append(dir.path(), shape, time)?;
            Ok((n, t, String::new()))
        },
        || raw_append(tempfile::tempdir()?.path(), shape, time),
    )
}

fn append_rows(config: &Config, rows: &mut Vec<Row>) -> Res<()> {
    let one = |batch| Shape::OneStream { batch };
    let time = config.append_time;
    if config.runs("W1a") {
        rows.push(append_row("W1a append 1 event/call, 1 writer", config, one(1))?);
    }
    if config.runs("W1b") {
        rows.push(compare(
            &format!("W1b append 1 event/call, {CONCURRENT_WRITERS} writers (raw: 1 writer*)"),
            config.reps,
            || {
                let dir = tempfile::tempdir()?;
                let (n, t, commits) = ours_concurrent(dir.path(), time)?;
                #[expect(clippy::cast_precision_loss, reason = "small counts")]
                let per = n as f64 / commits.max(1) as f64;
                Ok((n, t, format!(" ({commits} commits, {per:.1} events/commit)")))
            },
            || raw_append(tempfile::tempdir()?.path(), one(1), time),
        )?);
    }
    if config.runs("W2a") {
        rows.push(append_row("W2a batch of 100, 1 stream", config, one(100))?);
    }
    if config.runs("W2b") {
        rows.push(append_row("W2b batch of 10,000, 1 stream", config, one(10_000))?);
    }
    if config.runs("W2c") {
        rows.push(append_row(
            &format!("W2c batch of 100 over {SPREAD_STREAMS} random streams"),
            config,
            Shape::Spread { batch: 100 },
        )?);
    }
    Ok(())
}

/// W3 and W4, over one store per subject holding `config.scan_events` events in one stream.
fn read_rows(config: &Config, rows: &mut Vec<Row>) -> Res<()> {
    let n = config.scan_events;
    let (ours_dir, raw_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let db = open_ours(ours_dir.path())?;
    let mut raw = Raw::open(raw_dir.path())?;
    let t = Instant::now();
    populate_ours(&db, n)?;
    let ours_fill = t.elapsed();
    let t = Instant::now();
    populate_raw(&mut raw, n)?;
    eprintln!("  populated {n} events in one stream: ours {ours_fill:.2?}, raw {:.2?}", t.elapsed());
    let check = |(count, t): (u64, Duration)| -> Res<(u64, Duration)> {
        if count == n { Ok((count, t)) } else { Err(format!("read {count} events, expected {n}").into()) }
    };
    // One untimed pass each so both start with the files in the page cache.
    check(ours_scan(&db)?)?;
    check(raw_scan(&raw)?)?;
    if config.runs("W3") {
        rows.push(compare(
            &format!("W3 scan global log, {n} events"),
            config.reps,
            || check(ours_scan(&db)?).map(|(c, t)| (c, t, String::new())),
            || check(raw_scan(&raw)?),
        )?);
    }
    if config.runs("W4") {
        rows.push(compare(
            &format!("W4 read 1 stream, {n} events"),
            config.reps,
            || check(ours_stream(&db)?).map(|(c, t)| (c, t, String::new())),
            || check(raw_stream(&raw)?),
        )?);
    }
    Ok(())
}

fn main() -> Res<()> {
    let config = Config::from_args()?;
    let wall = Instant::now();
    let tmp = std::env::temp_dir();
    let fs = fs_type(&tmp);
    println!("VarveDB core benchmark ({} mode)", if config.quick { "quick" } else { "full" });
    println!(
        "machine: {} cpus ({}), stores in fresh dirs under {} ({fs})",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu_model(),
        tmp.display(),
    );
    if fs.starts_with("tmpfs") || fs.starts_with("ramfs") {
        println!("WARNING: the temp dir is in memory; durable commits cost nothing there (set TMPDIR)");
    }
    println!(
        "config: {} reps per subject, alternating; appends run {:?} each; scans over {} events; \
         payload {{id u64, amount u32, name 32-byte String}} archived with rkyv ({} bytes), tag {TAG:?}",
        config.reps,
        config.append_time,
        config.scan_events,
        archive(0)?.len(),
    );
    let (ours_len, raw_len) = check_value_sizes()?;
    println!(
        "durable commits on both sides; raw heed keeps seq and stream versions in memory; \
         stored event value: ours {ours_len} bytes, raw {raw_len} bytes"
    );
    if ours_len != raw_len {
        println!("WARNING: the baseline's value size differs from our envelope; update HEADER_LEN");
    }
    println!();

    let mut rows = Vec::new();
    append_rows(&config, &mut rows)?;
    if config.runs("W3") || config.runs("W4") {
        read_rows(&config, &mut rows)?;
    }

    println!(
        "{:<52} {:>14} {:>16} {:>9} {:>8}",
        "workload", "ours ev/s", "raw heed ev/s", "ours/raw", "paired"
    );
    for row in &rows {
        println!(
            "{:<52} {:>14} {:>16} {:>9.2} {:>8.2}",
            row.name,
            thousands(row.ours),
            thousands(row.raw),
            row.ours / row.raw,
            row.paired
        );
    }
    println!(
        "\nours/raw: ratio of the medians; paired: median of the per-repetition ratios.\n\
         * W1b: raw heed cannot group commits unless hand-coded; its column is the raw \
         single-writer rate (1 txn per event), measured again alongside.\n\
         W3: ours verifies every record's CRC32C and validates the rkyv payload; raw heed only \
         validates the payload.\n\
         W4: index range + one get per event + payload validation on both sides.\n\
         total wall time {:.1?}",
        wall.elapsed()
    );
    Ok(())
}
