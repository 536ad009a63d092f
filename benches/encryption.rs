//! W6: the cost of encryption at rest. The same workloads on a plain store and on an
//! encrypted one, alternating within each repetition; the table reports median rates and the
//! ratio encrypted / plain.
//!
//! Run: `cargo bench --bench encryption` (full) or `cargo bench --bench encryption -- --quick`;
//! `--only fold` runs only the workloads whose name contains `fold`.

#![allow(clippy::cast_precision_loss, reason = "event counts far below 2^52 become rates")]

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use varvedb::{Event, ExpectedVersion, MasterKey, Options, Varve, aggregate};

type Res<T> = Result<T, Box<dyn Error>>;

/// The measured event: `u64` id, `u32` amount, a 32-byte string.
#[derive(Event)]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
}

#[derive(Default)]
struct Account {
    total: u64,
    payments: u64,
}

#[aggregate]
impl Account {
    fn payment(&mut self, e: &ArchivedPayment) {
        self.total += u64::from(e.amount.to_native());
        self.payments += 1;
    }
}

const NAME: &str = "Jane Q. Customer, account 000042";

fn payment(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

#[derive(Clone, Copy, PartialEq)]
enum Subject {
    Plain,
    Encrypted,
}

fn open(dir: &Path, subject: Subject) -> Res<Varve> {
    let options = Options::new().map_size(16 << 30);
    Ok(match subject {
        Subject::Plain => options.open(dir)?,
        Subject::Encrypted => options.encryption_key(MasterKey::from_bytes([42; 32])).open(dir)?,
    })
}

/// Appends `per_call` events per durable commit for `time`; returns events/s.
fn append(subject: Subject, per_call: u64, time: Duration) -> Res<f64> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), subject)?;
    let stream = db.stream::<Account>(1u128);
    let (mut n, start) = (0u64, Instant::now());
    while start.elapsed() < time {
        stream.append_all(ExpectedVersion::Auto, (n..n + per_call).map(payment))?;
        n += per_call;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A store holding one stream of `events` payments.
fn populated(subject: Subject, events: u64) -> Res<(tempfile::TempDir, Varve)> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path(), subject)?;
    let stream = db.stream::<Account>(1u128);
    for start in (0..events).step_by(10_000) {
        stream.append_all(ExpectedVersion::Auto, (start..(start + 10_000).min(events)).map(payment))?;
    }
    Ok((dir, db))
}

/// Folds the stream (`Stream::load`); returns events/s.
fn fold(db: &Varve, events: u64) -> Res<f64> {
    let start = Instant::now();
    let loaded = db.stream::<Account>(1u128).load()?;
    let elapsed = start.elapsed();
    assert_eq!(loaded.state().payments, events);
    std::hint::black_box(loaded.state().total);
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// Scans the global log, decrypting into one reused buffer; returns events/s.
fn scan(db: &Varve, events: u64) -> Res<f64> {
    let start = Instant::now();
    let view = db.begin_read()?;
    let mut log = view.read_all(1)?;
    let (mut buf, mut n, mut sum) = (Vec::new(), 0u64, 0u64);
    while let Some(event) = log.next_reusing(&mut buf) {
        let payment = event?.access::<ArchivedPayment>()?;
        sum += u64::from(payment.amount.to_native());
        n += 1;
    }
    let elapsed = start.elapsed();
    assert_eq!(n, events);
    std::hint::black_box(sum);
    Ok(events as f64 / elapsed.as_secs_f64())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs `measure` for both subjects `reps` times, alternating which goes first.
fn compare(name: &str, reps: usize, mut measure: impl FnMut(Subject) -> Res<f64>) -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--only")
        && !args.get(i + 1).is_some_and(|only| name.contains(only.as_str()))
    {
        return Ok(());
    }
    let (mut plain, mut encrypted) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let order = if rep % 2 == 0 {
            [Subject::Plain, Subject::Encrypted]
        } else {
            [Subject::Encrypted, Subject::Plain]
        };
        for subject in order {
            let rate = measure(subject)?;
            match subject {
                Subject::Plain => plain.push(rate),
                Subject::Encrypted => encrypted.push(rate),
            }
        }
    }
    let (p, e) = (median(plain), median(encrypted));
    println!("| {name} | {p:>12.0} | {e:>12.0} | {:.2} |", e / p);
    Ok(())
}

fn main() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, time, events) =
        if quick { (3, Duration::from_millis(300), 50_000) } else { (7, Duration::from_secs(2), 1_000_000) };
    println!(
        "W6 encryption: median events/s of {reps} alternating repetitions{}",
        if quick { " (quick)" } else { "" }
    );
    println!("| workload | plain ev/s | encrypted ev/s | encrypted / plain |");
    println!("|---|---:|---:|---:|");
    compare("append, 1 event per durable commit", reps, |s| append(s, 1, time))?;
    compare("append, 100 events per commit", reps, |s| append(s, 100, time))?;
    compare("append, 10,000 events per commit", reps, |s| append(s, 10_000, time))?;
    let plain = populated(Subject::Plain, events)?;
    let sealed = populated(Subject::Encrypted, events)?;
    let pick = |s: Subject| if s == Subject::Plain { &plain.1 } else { &sealed.1 };
    compare(&format!("fold (Stream::load), {events} events"), reps, |s| fold(pick(s), events))?;
    compare(&format!("scan (read_all, next_reusing), {events} events"), reps, |s| scan(pick(s), events))?;
    Ok(())
}
