//! W8: the cost of the verifiable log. The append workloads W2b, W2d and W1b on a store that
//! keeps the Merkle tree and on one that does not, alternating within each repetition (the
//! table reports median rates and the median of the paired ratios tree / no tree); then, in
//! one store of 10,000,000 events, the time to build an inclusion proof for a random seq and
//! the bytes the tree adds per event.
//!
//! Run: `cargo bench --bench audit` (full) or `cargo bench --bench audit -- --quick`;
//! `--reps R`, `--secs S` (each append measurement), `--events N` (the proof store),
//! `--only W2b` (workloads whose name starts so; `proofs` for the proof store).

#![allow(clippy::cast_precision_loss, reason = "event counts far below 2^52 become rates")]

use std::error::Error;
use std::hint::black_box;
use std::path::Path;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use varvedb::{Aggregate, Event, ExpectedVersion, NewEvent, Options, Varve, WriteBatch, aggregate};

type Res<T> = Result<T, Box<dyn Error>>;

/// The event of the core benchmark: `u64` id, `u32` amount, a 32-byte string.
#[derive(Event)]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
}

#[derive(Default)]
struct Account {
    total: u64,
}

#[aggregate]
impl Account {
    fn payment(&mut self, e: &ArchivedPayment) {
        self.total += u64::from(e.amount.to_native());
    }
}

const NAME: &str = "Jane Q. Customer, account 000042";
const SPREAD_STREAMS: u64 = 1000;
const WRITERS: usize = 16;

fn payment(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

#[derive(Clone, Copy, PartialEq)]
enum Subject {
    Tree,
    NoTree,
}

fn open(dir: &Path, subject: Subject) -> Res<Varve> {
    Ok(Options::new().map_size(16 << 30).verifiable_log(subject == Subject::Tree).open(dir)?)
}

#[derive(Clone, Copy)]
enum Workload {
    /// W2b: batches of 10,000 events to one stream.
    OneStream,
    /// W2d: batches of 10,000 events spread over 1,000 streams.
    Spread,
    /// W1b: 16 writers appending one event per call, each to its own stream.
    Concurrent,
}

/// Appends for `time` in a fresh store; returns events/s.
fn append(subject: Subject, workload: Workload, time: Duration) -> Res<f64> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), subject)?;
    let start = Instant::now();
    let mut n = 0u64;
    match workload {
        Workload::OneStream => {
            let stream = db.stream::<Account>(1u128);
            let mut version = 0;
            while start.elapsed() < time {
                version = stream
                    .append_all(ExpectedVersion::Exact(version), (n..n + 10_000).map(payment))?
                    .last_version;
                n += 10_000;
            }
        }
        Workload::Spread => {
            let mut versions = vec![0u32; SPREAD_STREAMS as usize];
            while start.elapsed() < time {
                let mut batch = WriteBatch::new();
                for i in n..n + 10_000 {
                    let k = (i % SPREAD_STREAMS) as usize;
                    let stream = 0x1000_0000_0000 + k as u128 * 0x9e37_79b9;
                    batch.append_kind(
                        stream,
                        Account::KIND,
                        ExpectedVersion::Exact(versions[k]),
                        [NewEvent::from_event(&payment(i))?],
                    );
                    versions[k] += 1;
                }
                db.write(batch)?;
                n += 10_000;
            }
        }
        Workload::Concurrent => {
            let stop = AtomicBool::new(false);
            let barrier = Barrier::new(WRITERS + 1);
            let (total, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
                let handles: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let (db, stop, barrier) = (&db, &stop, &barrier);
                        scope.spawn(move || -> Result<u64, varvedb::Error> {
                            let stream = db.stream::<Account>(1000 + w as u128);
                            let mut n = 0u64;
                            barrier.wait();
                            while !stop.load(Ordering::Relaxed) {
                                stream.append(ExpectedVersion::Exact(n as u32), payment(n))?;
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
            return Ok(total as f64 / elapsed.as_secs_f64());
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    if xs.len().is_multiple_of(2) { f64::midpoint(xs[m - 1], xs[m]) } else { xs[m] }
}

fn compare(name: &str, reps: usize, workload: Workload, time: Duration) -> Res<()> {
    let (mut tree, mut plain, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        // Each subject goes first in every other repetition.
        let order =
            if rep % 2 == 0 { [Subject::Tree, Subject::NoTree] } else { [Subject::NoTree, Subject::Tree] };
        let mut rates = [0.0; 2];
        for subject in order {
            let rate = append(subject, workload, time)?;
            rates[usize::from(subject == Subject::NoTree)] = rate;
        }
        eprintln!("  {name} rep {rep}: tree {:.0}/s, no tree {:.0}/s", rates[0], rates[1]);
        tree.push(rates[0]);
        plain.push(rates[1]);
        ratios.push(rates[0] / rates[1]);
    }
    let (min, max) = ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!(
        "| {name} | {:.0} | {:.0} | {:.3} | {min:.3}–{max:.3} |",
        median(tree.clone()),
        median(plain.clone()),
        median(ratios.clone())
    );
    Ok(())
}

/// Builds a store of `events` events, then times inclusion proofs for random seqs against
/// the whole tree, and reports the tree's share of the file.
fn proofs(events: u64, samples: usize) -> Res<()> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), Subject::Tree)?;
    let start = Instant::now();
    let mut n = 0;
    while n < events {
        let batch = (events - n).min(10_000);
        let list: Vec<_> = (n..n + batch).map(|i| NewEvent::new("e", i.to_le_bytes().to_vec())).collect();
        db.append(u128::from(n / 1_000_000), ExpectedVersion::Auto, list)?;
        n += batch;
    }
    eprintln!("  populated {events} events in {:.1?}", start.elapsed());
    let view = db.begin_read()?;
    let head = view.tree_head()?;
    let mut rng = fastrand::Rng::with_seed(11);
    let seqs: Vec<u64> = (0..samples).map(|_| rng.u64(1..=events)).collect();
    let mut times = Vec::with_capacity(samples);
    for &seq in &seqs {
        let start = Instant::now();
        let proof = view.inclusion_proof(seq, head.size)?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
        black_box(proof);
    }
    let start = Instant::now();
    for &seq in &seqs {
        black_box(view.inclusion_proof(seq, head.size)?);
    }
    let mean = start.elapsed().as_secs_f64() * 1e6 / samples as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(samples * 99 / 100).min(samples - 1)];
    let start = Instant::now();
    let reps = 1000;
    for _ in 0..reps {
        black_box(view.tree_head()?);
    }
    let head_time = start.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
    // Verification alone, for comparison.
    let proof = view.inclusion_proof(seqs[0], head.size)?;
    let leaf = varvedb::leaf_hash(&view.leaf(seqs[0])?.ok_or("no leaf")?);
    let start = Instant::now();
    for _ in 0..reps {
        proof.verify(&leaf, &head)?;
    }
    let verify_time = start.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
    drop(view);
    let report = varvedb::verify_file(dir.path())?;
    let table = report.tables.iter().find(|t| t.name == "merkle").ok_or("no merkle table")?;
    let pages = table.branch_pages + table.leaf_pages + table.overflow_pages;
    let bytes = pages * 4096;
    println!(
        "| inclusion proof, random seq, tree of {events} | median {:.1} µs, p99 {p99:.1} µs, mean {mean:.1} µs |",
        median(times)
    );
    println!("| tree head of {events} events | {head_time:.1} µs |");
    println!("| inclusion proof verification (no store) | {verify_time:.1} µs |");
    println!(
        "| tree size on disk | {pages} pages ({} leaf, {} branch, {} overflow) of 4,096 bytes, {} tiles = {:.1} bytes per event |",
        table.leaf_pages,
        table.branch_pages,
        table.overflow_pages,
        table.entries,
        bytes as f64 / events as f64
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let reps: usize = value("--reps").map_or(Ok(if quick { 3 } else { 7 }), |v| v.parse())?;
    let secs: f64 = value("--secs").map_or(Ok(if quick { 0.3 } else { 2.0 }), |v| v.parse())?;
    let events: u64 =
        value("--events").map_or(Ok(if quick { 200_000 } else { 10_000_000 }), |v| v.parse())?;
    let only: Vec<String> = args.windows(2).filter(|w| w[0] == "--only").map(|w| w[1].clone()).collect();
    let runs = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o.as_str()));
    let time = Duration::from_secs_f64(secs);
    println!("| workload | tree (events/s) | no tree (events/s) | tree / no tree (paired median) | range |");
    println!("|---|---|---|---|---|");
    for (name, workload) in [
        ("W2b batch of 10,000, 1 stream", Workload::OneStream),
        ("W2d batch of 10,000 over 1,000 streams", Workload::Spread),
        ("W1b 1 event/call, 16 writers", Workload::Concurrent),
    ] {
        if runs(name) {
            compare(name, reps, workload, time)?;
        }
    }
    if runs("proofs") {
        proofs(events, if quick { 2_000 } else { 20_000 })?;
    }
    Ok(())
}
