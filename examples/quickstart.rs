//! A small bank ledger on `VarveDB`'s storage core.
//!
//! Accounts are streams; deposits and transfers are events archived with rkyv and read back
//! in place from the memory map. Four tellers work concurrently with optimistic concurrency:
//! each reads an account's version, decides, and appends with `ExpectedVersion::Exact`,
//! retrying on conflict. Transfers touch two accounts in one atomic batch.
//!
//! Run: `cargo run --example quickstart [STORE_DIR]` (default: `VARVEDB_EXAMPLE_DIR`, else a
//! fresh temporary directory).

use std::path::Path;
use std::time::Instant;

use varvedb::{Error, ExpectedVersion, NewEvent, ReadView, Varve, WriteBatch, rkyv};

#[derive(rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = varvedb::rkyv)]
struct Deposited {
    cents: u64,
    memo: String,
}

#[derive(rkyv::Archive, rkyv::Serialize)]
#[rkyv(crate = varvedb::rkyv)]
struct Withdrawn {
    cents: u64,
    to_account: u128,
}

const ACCOUNTS: u8 = 8;
const OPENING_CENTS: u64 = 10_000;

/// Folds an account's events into its balance, reading each archived event in place.
fn balance(view: &ReadView<'_>, account: u128) -> Result<(i128, u32), Error> {
    let (mut cents, mut version) = (0i128, 0);
    for event in view.read_stream(account, 1)? {
        let event = event?;
        match event.type_tag() {
            "deposited" => {
                cents += i128::from(event.access::<rkyv::Archived<Deposited>>()?.cents.to_native());
            }
            "withdrawn" => {
                cents -= i128::from(event.access::<rkyv::Archived<Withdrawn>>()?.cents.to_native());
            }
            other => unreachable!("unknown event type {other}"),
        }
        version = event.version();
    }
    Ok((cents, version))
}

/// Moves money if the source can afford it, retrying when another teller got there first.
fn transfer(db: &Varve, from: u128, to: u128, cents: u64) -> Result<bool, Error> {
    loop {
        let (available, from_version) = balance(&db.begin_read()?, from)?;
        if available < i128::from(cents) {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch
            .append(
                from,
                ExpectedVersion::Exact(from_version),
                [NewEvent::archive("withdrawn", &Withdrawn { cents, to_account: to })?],
            )
            .append(
                to,
                ExpectedVersion::StreamExists,
                [NewEvent::archive("deposited", &Deposited { cents, memo: format!("from {from}") })?],
            );
        match db.write(batch) {
            Ok(_) => return Ok(true),
            Err(Error::ConcurrencyConflict { .. }) => {} // someone moved `from`: decide again
            Err(e) => return Err(e),
        }
    }
}

/// Runs the example in `STORE_DIR`, or `VARVEDB_EXAMPLE_DIR`, or a temporary directory.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let path = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("VARVEDB_EXAMPLE_DIR"))
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    run(&path)
}

/// The example, with its store in `path`.
pub(crate) fn run(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Varve::open(path)?;
    println!("store at {}", path.display());

    for account in 0..u128::from(ACCOUNTS) {
        let opening = Deposited { cents: OPENING_CENTS, memo: "opening balance".into() };
        // `NoStream`: a rerun on the same store finds the accounts already open.
        match db.append(account, ExpectedVersion::NoStream, [NewEvent::archive("deposited", &opening)?]) {
            Ok(_) | Err(Error::ConcurrencyConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let started = Instant::now();
    let tellers: Vec<_> = (0..4u64)
        .map(|teller| {
            let db = db.clone();
            std::thread::spawn(move || -> Result<(u32, u32), Error> {
                let (mut done, mut refused) = (0, 0);
                for i in 0..100u64 {
                    let from = u128::from((teller * 7 + i) % u64::from(ACCOUNTS));
                    let to = (from + 1 + u128::from(i % 7)) % u128::from(ACCOUNTS);
                    if transfer(&db, from, to, 250 + (i * 37) % 900)? {
                        done += 1;
                    } else {
                        refused += 1;
                    }
                }
                Ok((done, refused))
            })
        })
        .collect();
    let (mut done, mut refused) = (0, 0);
    for teller in tellers {
        let (d, r) = teller.join().expect("teller thread")?;
        done += d;
        refused += r;
    }
    let elapsed = started.elapsed();

    let view = db.begin_read()?;
    let mut total = 0;
    for account in 0..u128::from(ACCOUNTS) {
        let (cents, version) = balance(&view, account)?;
        println!("account {account}: {:>5}.{:02} after {version} events", cents / 100, cents % 100);
        total += cents;
    }
    assert_eq!(total, i128::from(OPENING_CENTS) * i128::from(ACCOUNTS), "transfers conserve money");

    let report = view.check_integrity()?;
    let stats = db.stats();
    println!(
        "{done} transfers, {refused} refused for lack of funds, in {:.0} ms; \
         {} events in {} durable commits (group commit); integrity: {} events, {} streams, seqs 1..={}",
        elapsed.as_secs_f64() * 1000.0,
        stats.events,
        stats.commits,
        report.events,
        report.streams,
        report.last_seq,
    );
    Ok(())
}
