//! W7: the cost and the gain of event evolution, each against its baseline in the same run.
//!
//! - W7a: loading one stream of 1,000,000 events from a snapshot (made every 1,000 events on
//!   save; 500 events follow the newest) against folding all of it.
//! - W7b: folding one stream of 100,000 events of which half are stored as version 1 and
//!   upcast to version 2, against a stream of 100,000 events all stored as version 2.
//!
//! The two subjects of each workload alternate within each repetition, the order rotating;
//! the table reports median rates and the paired ratio (median of the per-repetition ratios).
//!
//! Run: `cargo bench --bench evolution` (full) or `cargo bench --bench evolution -- --quick`.

#![allow(clippy::cast_precision_loss, reason = "event counts far below 2^52 become rates")]

use std::error::Error;
use std::time::Instant;

use varvedb::{Event, EventData, ExpectedVersion, NewEvent, Options, Upcast, Varve, WriteBatch, aggregate};

type Res<T> = Result<T, Box<dyn Error>>;

/// The event of the other benches (`u64` id, `u32` amount, a 32-byte string), as first stored.
#[derive(Event)]
#[event(name = "payment", version = 1)]
struct PaymentV1 {
    id: u64,
    amount: u32,
    name: String,
}

/// Its current version: a currency was added.
#[derive(Event)]
#[event(name = "payment", version = 2, upcast = PaymentV1)]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
    currency: [u8; 3],
}

impl Upcast<PaymentV1> for Payment {
    fn upcast(old: &ArchivedPaymentV1) -> Self {
        Payment {
            id: old.id.to_native(),
            amount: old.amount.to_native(),
            name: old.name.to_string(),
            currency: *b"EUR",
        }
    }
}

macro_rules! account {
    ($name:ident, $($args:tt)*) => {
        #[derive(Default, EventData)]
        struct $name {
            total: u64,
            payments: u64,
            eur: u64,
        }

        #[aggregate($($args)*)]
        impl $name {
            fn payment(&mut self, e: &ArchivedPayment) {
                self.total += u64::from(e.amount.to_native());
                self.payments += 1;
                self.eur += u64::from(&e.currency == b"EUR");
            }
        }
    };
}

account!(Account, name = "account");
account!(Snapshotted, name = "account", snapshot_every = 1000);

const NAME: &str = "Jane Q. Customer, account 000042";

fn v1(i: u64) -> PaymentV1 {
    PaymentV1 { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

fn v2(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned(), currency: *b"USD" }
}

fn open(dir: &std::path::Path) -> Res<Varve> {
    Ok(Options::new().map_size(16 << 30).open(dir)?)
}

/// One stream of `events` payments, saved 1,000 at a time through the snapshotting
/// aggregate, then `tail` more appended without a save (so the newest snapshot is `tail`
/// events behind the head).
fn long_stream(events: u64, tail: u64) -> Res<(tempfile::TempDir, Varve)> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path())?;
    let s = db.stream::<Snapshotted>(1u128);
    let mut done = 0;
    while done < events {
        let loaded = s.load()?;
        let next = (done + 1_000).min(events);
        s.save(&loaded, (done..next).map(v2))?;
        done = next;
    }
    s.append_all(ExpectedVersion::Auto, (events..events + tail).map(v2))?;
    Ok((dir, db))
}

/// One stream of `events` payments, every other one stored as version 1 if `mixed` (as an
/// older build and the current one would have written them, through the untyped batch API).
fn fold_stream(events: u64, mixed: bool) -> Res<(tempfile::TempDir, Varve)> {
    let dir = tempfile::tempdir()?;
    let db = open(dir.path())?;
    for start in (0..events).step_by(10_000) {
        let batch = (start..(start + 10_000).min(events))
            .map(|i| {
                if mixed && i % 2 == 0 { NewEvent::from_event(&v1(i)) } else { NewEvent::from_event(&v2(i)) }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut write = WriteBatch::new();
        write.append_kind(1u128, "account", ExpectedVersion::Auto, batch);
        db.write(write)?;
    }
    Ok((dir, db))
}

/// Loads `A`'s stream 1; returns the seconds it took and the events it folded.
fn load<A: varvedb::Aggregate>(db: &Varve) -> Res<(f64, u32)> {
    let start = Instant::now();
    let loaded = db.stream::<A>(1u128).load()?;
    let elapsed = start.elapsed().as_secs_f64();
    std::hint::black_box(&loaded);
    Ok((elapsed, loaded.replayed()))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs `a` and `b` `reps` times each, alternating which goes first; returns the medians
/// and the median of the per-repetition ratios `b / a`.
fn paired(
    reps: usize,
    mut a: impl FnMut() -> Res<f64>,
    mut b: impl FnMut() -> Res<f64>,
) -> Res<(f64, f64, f64)> {
    let (mut xs, mut ys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let (x, y) = if rep % 2 == 0 {
            let x = a()?;
            (x, b()?)
        } else {
            let y = b()?;
            (a()?, y)
        };
        xs.push(x);
        ys.push(y);
        ratios.push(y / x);
    }
    Ok((median(xs), median(ys), median(ratios)))
}

fn main() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, long, folded) = if quick { (3, 100_000, 20_000) } else { (7, 1_000_000, 100_000) };
    println!("W7 event evolution: {reps} alternating repetitions{}", if quick { " (quick)" } else { "" });

    let (_dir, db) = long_stream(long, 500)?;
    let _ = (load::<Account>(&db)?, load::<Snapshotted>(&db)?); // warm the page cache
    let (full, snap, speedup) = paired(
        reps,
        || {
            let (secs, n) = load::<Account>(&db)?;
            assert_eq!(u64::from(n), long + 500);
            Ok(secs)
        },
        || {
            let (secs, n) = load::<Snapshotted>(&db)?;
            assert_eq!(n, 500, "the load starts from the newest snapshot");
            Ok(secs)
        },
    )?;
    println!("| workload | baseline | subject | paired ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| W7a load of 1 stream of {} events: full fold vs from a snapshot (500 events after it) | {:.1} ms | {:.3} ms | {:.0}x faster |",
        long + 500,
        full * 1e3,
        snap * 1e3,
        1.0 / speedup
    );
    drop(db);

    let (_a, current) = fold_stream(folded, false)?;
    let (_b, mixed) = fold_stream(folded, true)?;
    let _ = (load::<Account>(&current)?, load::<Account>(&mixed)?);
    let rate = |db: &Varve| -> Res<f64> {
        let (secs, n) = load::<Account>(db)?;
        assert_eq!(u64::from(n), folded);
        Ok(folded as f64 / secs)
    };
    let (all_v2, half_v1, ratio) = paired(reps, || rate(&current), || rate(&mixed))?;
    println!(
        "| W7b fold of {folded} events: all stored as v2 vs half stored as v1, upcast | {all_v2:.0} ev/s | {half_v1:.0} ev/s | {ratio:.2} |"
    );
    Ok(())
}
