//! Our store through its public typed API: `Stream<Account>` appends and loads,
//! `WriteBatch::append_kind` with typed events for one atomic batch over many streams (the
//! typed layer's handle covers one stream), and `subscribe` for W5.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, mpsc};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use tokio::runtime::Runtime;
use varvedb::{Aggregate, Durability, ExpectedVersion, NewEvent, Options, Varve, WriteBatch};

use crate::{
    Account, ArchivedPayment, CONCURRENT_WRITERS, Latency, MAP_SIZE, POPULATE_BATCH, Res, SINGLE_STREAM,
    SPREAD_STREAMS, Sample, Shape, alloc, payment,
};

pub(crate) fn open(dir: &Path) -> Res<Varve> {
    open_with(dir, Durability::Immediate)
}

fn open_with(dir: &Path, durability: Durability) -> Res<Varve> {
    Ok(Options::new().map_size(MAP_SIZE).durability(durability).open(dir)?)
}

fn event(i: u64) -> Res<NewEvent> {
    Ok(NewEvent::from_event(&payment(i))?)
}

/// Appends for `time`, each call a commit (durable when acknowledged with
/// `Durability::Immediate`).
pub(crate) fn append(dir: &Path, durability: Durability, shape: Shape, time: Duration) -> Res<Sample> {
    let db = open_with(dir, durability)?;
    let ids = crate::spread_ids();
    let mut n = 0u64;
    // Each call's time, to one stream: the latency a single writer sees.
    let mut calls = Vec::new();
    let start = Instant::now();
    match shape {
        Shape::OneStream { batch } => {
            let stream = db.stream::<Account>(ids[0]);
            let mut version = 0;
            loop {
                let call = Instant::now();
                let done = if batch == 1 {
                    stream.append(ExpectedVersion::Exact(version), payment(n))?
                } else {
                    stream.append_all(ExpectedVersion::Exact(version), (n..n + batch).map(payment))?
                };
                calls.push(call.elapsed());
                version = done.last_version;
                n += batch;
                if start.elapsed() >= time {
                    break;
                }
            }
        }
        Shape::Spread { batch } => {
            let mut versions = vec![0u32; ids.len()];
            loop {
                let mut write = WriteBatch::new();
                for i in n..n + batch {
                    let k = (i % SPREAD_STREAMS as u64) as usize;
                    write.append_kind(
                        ids[k],
                        Account::KIND,
                        ExpectedVersion::Exact(versions[k]),
                        [event(i)?],
                    );
                    versions[k] += 1;
                }
                db.write(write)?;
                n += batch;
                if start.elapsed() >= time {
                    break;
                }
            }
        }
    }
    let mut sample = Sample::new(n, start.elapsed());
    sample.note = percentiles(&mut calls);
    Ok(sample)
}

/// `" (call p50 …, p99 …, p99.9 …)"` of the calls' times, or nothing without calls.
fn percentiles(calls: &mut [Duration]) -> String {
    if calls.is_empty() {
        return String::new();
    }
    calls.sort_unstable();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index"
    )]
    let at = |q: f64| calls[((calls.len() as f64 * q) as usize).min(calls.len() - 1)].as_secs_f64() * 1e6;
    format!(" (call p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs)", at(0.5), at(0.99), at(0.999))
}

/// `CONCURRENT_WRITERS` threads appending one event per call, each to its own stream.
pub(crate) fn concurrent(dir: &Path, durability: Durability, time: Duration) -> Res<Sample> {
    let db = open_with(dir, durability)?;
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(CONCURRENT_WRITERS + 1);
    let commits_before = db.stats().commits;
    let (mut calls, elapsed) = std::thread::scope(|scope| -> Res<(Vec<Duration>, Duration)> {
        let handles: Vec<_> = (0..CONCURRENT_WRITERS)
            .map(|w| {
                let (db, stop, barrier) = (&db, &stop, &barrier);
                scope.spawn(move || -> Result<Vec<Duration>, varvedb::Error> {
                    let stream = db.stream::<Account>(1000 + w as u128);
                    let mut calls = Vec::new();
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let call = Instant::now();
                        stream.append(
                            ExpectedVersion::Exact(calls.len() as u32),
                            payment(calls.len() as u64),
                        )?;
                        calls.push(call.elapsed());
                    }
                    Ok(calls)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        let mut calls = Vec::new();
        for h in handles {
            calls.extend(h.join().map_err(|_| "writer thread panicked")??);
        }
        Ok((calls, start.elapsed()))
    })?;
    let total = calls.len() as u64;
    let commits = db.stats().commits - commits_before;
    let mut sample = Sample::new(total, elapsed);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let per = total as f64 / commits.max(1) as f64;
    sample.note = format!(" ({commits} commits, {per:.1} events/commit){}", percentiles(&mut calls));
    Ok(sample)
}

/// `per` events in each of `ids`, interleaved (event i to stream i mod `ids.len()`).
pub(crate) fn populate_log(db: &Varve, ids: &[u128], per: u64) -> Res<()> {
    let total = ids.len() as u64 * per;
    let mut i = 0;
    while i < total {
        let end = (i + POPULATE_BATCH).min(total);
        let mut write = WriteBatch::new();
        for j in i..end {
            let id = ids[(j % ids.len() as u64) as usize];
            write.append_kind(id, Account::KIND, ExpectedVersion::Auto, [event(j)?]);
        }
        db.write(write)?;
        i = end;
    }
    Ok(())
}

pub(crate) fn populate_single(db: &Varve, n: u64) -> Res<()> {
    let stream = db.stream::<Account>(SINGLE_STREAM);
    let mut i = 0;
    while i < n {
        let end = (i + POPULATE_BATCH).min(n);
        stream.append_all(ExpectedVersion::Auto, (i..end).map(payment))?;
        i = end;
    }
    Ok(())
}

/// W3: the global log in one read view; every record's checksum verified, every payload
/// validated and folded. The typed layer has no global reader: this is the store's own.
pub(crate) fn scan(db: &Varve) -> Res<Sample> {
    let start = Instant::now();
    let view = db.begin_read()?;
    let mut acc = Account::default();
    for event in view.read_all(1)? {
        acc.apply(event?.access::<ArchivedPayment>()?);
    }
    drop(view);
    let elapsed = start.elapsed();
    Ok(Sample::new(black_box(acc).events, elapsed))
}

/// W4: `Stream::load` of each stream, counting this thread's heap allocations.
pub(crate) fn fold(db: &Varve, ids: &[u128]) -> Res<Sample> {
    let allocations = alloc::allocations();
    let start = Instant::now();
    let mut events = 0;
    for &id in ids {
        events += black_box(db.stream::<Account>(id).load()?).state().events;
    }
    let elapsed = start.elapsed();
    let allocations = alloc::allocations() - allocations;
    let mut sample = Sample::new(events, elapsed);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let per_load = allocations as f64 / ids.len() as f64;
    sample.note = format!(" ({per_load:.1} allocations per load)");
    sample.allocations = Some(per_load);
    Ok(sample)
}

/// W5a: a subscriber task on tokio (the default multi-thread runtime) receives each event
/// appended, one at a time, by this thread.
pub(crate) fn latency(dir: &Path, samples: u64) -> Res<Vec<Latency>> {
    let db = open(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_time().build()?;
    let (receipts, receipts_rx) = mpsc::channel::<Result<Instant, String>>();
    let mut feed = db.subscribe(1);
    let subscriber = runtime.spawn(async move {
        for _ in 0..samples {
            let got = match feed.next_event().await {
                Some(Ok(e)) => e
                    .access::<ArchivedPayment>()
                    .map(|p| {
                        black_box(p.amount.to_native());
                    })
                    .map_err(|e| e.to_string()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the feed ended".to_owned()),
            };
            let failed = got.is_err();
            if receipts.send(got.map(|()| Instant::now())).is_err() || failed {
                return;
            }
        }
    });
    let stream = db.stream::<Account>(SINGLE_STREAM);
    let mut out = Vec::new();
    for i in 0..samples {
        let start = Instant::now();
        stream.append(ExpectedVersion::Exact(i as u32), payment(i))?;
        let commit = start.elapsed();
        let received = receipts_rx.recv()??;
        out.push(Latency { total: received - start, commit });
    }
    runtime.block_on(subscriber)?;
    Ok(out)
}

/// W5b: a subscription from seq 1 over the read store, each event validated and folded.
pub(crate) fn catch_up(db: &Varve, runtime: &Runtime, expected: u64) -> Res<Sample> {
    let start = Instant::now();
    let acc = runtime.block_on(async {
        let mut feed = db.subscribe(1);
        let mut acc = Account::default();
        while acc.events < expected {
            let event = feed.next_event().await.ok_or("the feed ended")??;
            acc.apply(event.access::<ArchivedPayment>()?);
        }
        Res::Ok(acc)
    })?;
    Ok(Sample::new(black_box(acc).events, start.elapsed()))
}

/// The stored size of one event appended through the typed API, read back with heed once
/// the store is closed (so the raw baseline can store values of the same size).
pub(crate) fn value_len() -> Res<usize> {
    let dir = tempfile::tempdir()?;
    open(dir.path())?.stream::<Account>(1u128).append(ExpectedVersion::NoStream, payment(0))?;
    let mut options = EnvOpenOptions::new();
    options.map_size(MAP_SIZE).max_dbs(16);
    // SAFETY: our store above is closed; nothing else maps or modifies these files.
    let env = unsafe { options.open(dir.path()) }?;
    let rtxn = env.read_txn()?;
    let events: Database<Bytes, Bytes> =
        env.open_database(&rtxn, Some("events"))?.ok_or("no events table")?;
    Ok(events.get(&rtxn, &1u64.to_be_bytes())?.ok_or("no event 1")?.len())
}
