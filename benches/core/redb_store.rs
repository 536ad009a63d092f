//! redb as a peer: what a user storing these events in redb (the current release) would write.
//!
//! Two tables: the log `events: u64 → &[u8]` (seq → value) and the stream index
//! `streams: (u128, u32) → u64` ((stream, version) → seq). The values are byte for byte
//! the raw heed subject's (a header the size of ours, the type tag, the 52-byte rkyv payload),
//! so the bytes each stores per event compare directly; every read validates the payload.
//! redb has no uniqueness constraint, so the concurrency check is what `insert` returns: an
//! index entry that was already there means another writer took that version, and the
//! transaction is dropped (rolled back). The next seq is the log's last key plus one, read in
//! the write transaction, so concurrent writers need no state outside the database.
//!
//! Every commit is `Durability::Immediate` (redb's default, set explicitly): durable when
//! `commit` returns. redb serializes write transactions itself (`begin_write` waits for the
//! current one), so the 16 writers of W1b each call it on the shared `Database`; each commit
//! is its own flush, as redb has no group commit.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, mpsc};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use varvedb::rkyv::util::AlignedVec;

use crate::raw::{access, encode};
use crate::{Account, CONCURRENT_WRITERS, Latency, POPULATE_BATCH, Res, SPREAD_STREAMS, Sample, Shape};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const STREAMS: TableDefinition<(u128, u32), u64> = TableDefinition::new("streams");
const FILE: &str = "events.redb";

pub(crate) fn open(dir: &Path) -> Res<Database> {
    let db = Database::create(dir.join(FILE))?;
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.open_table(EVENTS)?;
    txn.open_table(STREAMS)?;
    txn.commit()?;
    Ok(db)
}

/// Appends `items` (stream, version, archived payload) in one durable transaction; returns
/// the seq of the last one. A version already taken rolls the transaction back.
pub(crate) fn write(db: &Database, items: &[(u128, u32, AlignedVec)]) -> Res<u64> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let timestamp = crate::now_micros();
    let mut value = Vec::new();
    let last = {
        let mut events = txn.open_table(EVENTS)?;
        let mut streams = txn.open_table(STREAMS)?;
        let mut seq = events.last()?.map_or(0, |(k, _)| k.value());
        for (stream, version, payload) in items {
            seq += 1;
            encode(&mut value, *stream, *version, timestamp, payload);
            events.insert(seq, value.as_slice())?;
            if streams.insert((*stream, *version), seq)?.is_some() {
                return Err(format!("version {version} of stream {stream:032x} is taken").into());
            }
        }
        seq
    };
    txn.commit()?;
    Ok(last)
}

/// Appends for `time`, the same calls as the others make, each event archived in the loop.
pub(crate) fn append(dir: &Path, shape: Shape, time: Duration) -> Res<Sample> {
    let db = open(dir)?;
    let ids = crate::spread_ids();
    let mut versions = vec![0u32; ids.len()];
    let mut n = 0u64;
    let start = Instant::now();
    loop {
        let (batch, spread) = match shape {
            Shape::OneStream { batch } => (batch, 1),
            Shape::Spread { batch } => (batch, SPREAD_STREAMS as u64),
        };
        let items = (n..n + batch)
            .map(|i| {
                let k = (i % spread) as usize;
                versions[k] += 1;
                Ok((ids[k], versions[k], crate::raw::archive(i)?))
            })
            .collect::<Res<Vec<_>>>()?;
        write(&db, &items)?;
        n += batch;
        if start.elapsed() >= time {
            return Ok(Sample::new(n, start.elapsed()));
        }
    }
}

/// `CONCURRENT_WRITERS` threads appending one event per call, each to its own stream, each
/// call its own write transaction on the shared database.
pub(crate) fn concurrent(dir: &Path, time: Duration) -> Res<Sample> {
    let db = open(dir)?;
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(CONCURRENT_WRITERS + 1);
    let (total, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
        let handles: Vec<_> = (0..CONCURRENT_WRITERS)
            .map(|w| {
                let (db, stop, barrier) = (&db, &stop, &barrier);
                scope.spawn(move || -> Result<u64, String> {
                    let stream = 1000 + w as u128;
                    let mut n = 0u64;
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let item =
                            [(stream, n as u32 + 1, crate::raw::archive(n).map_err(|e| e.to_string())?)];
                        write(db, &item).map_err(|e| e.to_string())?;
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
    Ok(Sample::new(total, elapsed))
}

/// `per` events in each of `ids`, interleaved (event i to stream i mod `ids.len()`).
pub(crate) fn populate_log(db: &Database, ids: &[u128], per: u64) -> Res<()> {
    let total = ids.len() as u64 * per;
    let mut i = 0;
    while i < total {
        let end = (i + POPULATE_BATCH).min(total);
        let items = (i..end).map(|j| {
            let k = j % ids.len() as u64;
            Ok((ids[k as usize], (j / ids.len() as u64) as u32 + 1, crate::raw::archive(j)?))
        });
        write(db, &items.collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

pub(crate) fn populate_single(db: &Database, stream: u128, n: u64) -> Res<()> {
    let mut i = 0;
    while i < n {
        let end = (i + POPULATE_BATCH).min(n);
        let items = (i..end).map(|j| Ok((stream, j as u32 + 1, crate::raw::archive(j)?)));
        write(db, &items.collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

/// W3: the log table in one read transaction; every payload validated and folded.
pub(crate) fn scan(db: &Database) -> Res<Sample> {
    let start = Instant::now();
    let rtxn = db.begin_read()?;
    let events = rtxn.open_table(EVENTS)?;
    let mut acc = Account::default();
    for entry in events.iter()? {
        acc.apply(access(entry?.1.value())?);
    }
    drop((events, rtxn));
    let elapsed = start.elapsed();
    Ok(Sample::new(black_box(acc).events, elapsed))
}

/// W4: per stream, a read transaction, the index range of the stream, one `get` per entry,
/// then validate and fold each payload (as raw heed does).
pub(crate) fn fold(db: &Database, ids: &[u128]) -> Res<Sample> {
    let start = Instant::now();
    let mut events_read = 0;
    for &id in ids {
        let rtxn = db.begin_read()?;
        let (events, streams) = (rtxn.open_table(EVENTS)?, rtxn.open_table(STREAMS)?);
        let mut acc = Account::default();
        for entry in streams.range((id, 0)..=(id, u32::MAX))? {
            let seq = entry?.1.value();
            let value = events.get(seq)?.ok_or("index points at a missing seq")?;
            acc.apply(access(value.value())?);
        }
        events_read += black_box(acc).events;
    }
    Ok(Sample::new(events_read, start.elapsed()))
}

/// W5a: redb has no notification, so as for raw heed: the writer sends the seq down a channel
/// after the commit, and a reader thread opens a read transaction, gets the event and
/// validates it.
pub(crate) fn latency(dir: &Path, samples: u64) -> Res<Vec<Latency>> {
    let db = open(dir)?;
    std::thread::scope(|scope| -> Res<Vec<Latency>> {
        let (seqs, seqs_rx) = mpsc::channel::<u64>();
        let (receipts, receipts_rx) = mpsc::channel::<Result<Instant, String>>();
        let reader = &db;
        scope.spawn(move || {
            for seq in seqs_rx {
                let got = (|| -> Res<()> {
                    let rtxn = reader.begin_read()?;
                    let events = rtxn.open_table(EVENTS)?;
                    let value = events.get(seq)?.ok_or("missing after commit")?;
                    black_box(access(value.value())?.amount.to_native());
                    Ok(())
                })();
                if receipts.send(got.map(|()| Instant::now()).map_err(|e| e.to_string())).is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        for i in 0..samples {
            let start = Instant::now();
            let seq = write(&db, &[(crate::SINGLE_STREAM, i as u32 + 1, crate::raw::archive(i)?)])?;
            let commit = start.elapsed();
            seqs.send(seq)?;
            let received = receipts_rx.recv()??;
            out.push(Latency { total: received - start, commit });
        }
        Ok(out)
    })
}
