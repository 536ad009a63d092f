//! SQLite as a peer: what a user storing these events in SQLite (rusqlite, SQLite bundled)
//! would write.
//!
//! ```sql
//! CREATE TABLE events (seq INTEGER PRIMARY KEY, stream BLOB NOT NULL, version INTEGER NOT NULL,
//!                      type TEXT NOT NULL, ts INTEGER NOT NULL, payload BLOB NOT NULL);
//! CREATE UNIQUE INDEX events_by_stream ON events (stream, version);
//! ```
//!
//! The seq is the rowid, so the global log is the table's own B-tree, appended at its end and
//! scanned in order. The unique index finds a stream's events in version order and is the
//! optimistic concurrency check: an append writes the version its caller expects to be next,
//! and a concurrent append of the same version fails on the index. A `WITHOUT ROWID` table
//! keyed (stream, version) would keep a stream's events together, but then the log needs an
//! index on seq of its own, and every append inserts into the middle of the table's B-tree.
//! The header fields are columns (the stream's 16-byte id big-endian, version, type tag,
//! timestamp), so a row holds what the raw heed value's header and tag hold; the payload is
//! the same 52-byte rkyv archive, validated on every read.
//!
//! The database is in WAL mode. With `synchronous=FULL` every commit syncs the WAL before
//! returning: acknowledged means durable, as for the other subjects. With `NORMAL` the WAL
//! is synced only at checkpoints, so a power loss may lose commits that were acknowledged
//! (a crash of the process does not): the bench runs it as a side column, not as a peer in
//! durability.
//!
//! Many writer threads (W1b) share one connection behind a `Mutex`. SQLite lets one
//! connection write at a time; a connection that finds the write lock taken waits in its busy
//! handler, which sleeps and polls (1 ms growing to 100 ms) instead of being woken when the
//! lock frees, so within one process a mutex hands the database over sooner. Each call is
//! still its own transaction and commit: SQLite has no group commit.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use varvedb::rkyv;
use varvedb::rkyv::util::AlignedVec;

use crate::{
    Account, ArchivedPayment, CONCURRENT_WRITERS, Latency, POPULATE_BATCH, Res, SPREAD_STREAMS, Sample,
    Shape, TAG,
};

/// `synchronous` of the connection.
#[derive(Clone, Copy)]
pub(crate) enum Sync {
    /// Syncs the WAL at every commit: durable.
    Full,
    /// Syncs the WAL at checkpoints only: a power loss may lose acknowledged commits.
    Normal,
}

const FILE: &str = "events.sqlite";

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,
        stream BLOB NOT NULL,
        version INTEGER NOT NULL,
        type TEXT NOT NULL,
        ts INTEGER NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream, version);
";

const INSERT: &str = "INSERT INTO events (stream, version, type, ts, payload) VALUES (?1, ?2, ?3, ?4, ?5)";

pub(crate) fn open(dir: &Path, sync: Sync) -> Res<Connection> {
    let conn = Connection::open(dir.join(FILE))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("SQLite refused WAL mode ({mode})").into());
    }
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        },
    )?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Appends `items` (stream, version, archived payload) in one transaction; returns the seq
/// of the last one. A version already taken fails on the unique index.
pub(crate) fn write(conn: &mut Connection, items: &[(u128, u32, AlignedVec)]) -> Res<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    #[expect(clippy::cast_possible_wrap, reason = "microseconds since 1970 fit in i64")]
    let ts = crate::now_micros() as i64;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for (stream, version, payload) in items {
            insert.execute(params![&stream.to_be_bytes()[..], version, TAG, ts, &payload[..]])?;
        }
    }
    let seq = tx.last_insert_rowid();
    tx.commit()?;
    Ok(u64::try_from(seq)?)
}

fn access(payload: &[u8]) -> Res<&ArchivedPayment> {
    Ok(rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(payload)?)
}

/// Appends for `time`, the same calls as the others make, each event archived in the loop.
pub(crate) fn append(dir: &Path, sync: Sync, shape: Shape, time: Duration) -> Res<Sample> {
    let mut conn = open(dir, sync)?;
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
        write(&mut conn, &items)?;
        n += batch;
        if start.elapsed() >= time {
            return Ok(Sample::new(n, start.elapsed()));
        }
    }
}

/// `CONCURRENT_WRITERS` threads appending one event per call, each to its own stream, through
/// one connection behind a mutex.
pub(crate) fn concurrent(dir: &Path, sync: Sync, time: Duration) -> Res<Sample> {
    let conn = Mutex::new(open(dir, sync)?);
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(CONCURRENT_WRITERS + 1);
    let (total, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
        let handles: Vec<_> = (0..CONCURRENT_WRITERS)
            .map(|w| {
                let (conn, stop, barrier) = (&conn, &stop, &barrier);
                scope.spawn(move || -> Result<u64, String> {
                    let stream = 1000 + w as u128;
                    let mut n = 0u64;
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let item =
                            [(stream, n as u32 + 1, crate::raw::archive(n).map_err(|e| e.to_string())?)];
                        let mut conn = conn.lock().map_err(|_| "poisoned")?;
                        write(&mut conn, &item).map_err(|e| e.to_string())?;
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

/// `per` events in each of `ids`, interleaved (event i to stream i mod `ids.len()`), then a
/// checkpoint that moves the WAL into the database file and truncates it, as closing the
/// last connection would.
pub(crate) fn populate_log(conn: &mut Connection, ids: &[u128], per: u64) -> Res<()> {
    let total = ids.len() as u64 * per;
    let mut i = 0;
    while i < total {
        let end = (i + POPULATE_BATCH).min(total);
        let items = (i..end).map(|j| {
            let k = j % ids.len() as u64;
            Ok((ids[k as usize], (j / ids.len() as u64) as u32 + 1, crate::raw::archive(j)?))
        });
        write(conn, &items.collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    checkpoint(conn)
}

pub(crate) fn populate_single(conn: &mut Connection, stream: u128, n: u64) -> Res<()> {
    let mut i = 0;
    while i < n {
        let end = (i + POPULATE_BATCH).min(n);
        let items = (i..end).map(|j| Ok((stream, j as u32 + 1, crate::raw::archive(j)?)));
        write(conn, &items.collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    checkpoint(conn)
}

fn checkpoint(conn: &Connection) -> Res<()> {
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    if busy != 0 {
        return Err("the WAL checkpoint could not complete".into());
    }
    Ok(())
}

/// W3: the events table in seq order (one statement, one read snapshot); every payload
/// validated and folded.
pub(crate) fn scan(conn: &Connection) -> Res<Sample> {
    let start = Instant::now();
    let mut acc = Account::default();
    {
        let mut select = conn.prepare_cached("SELECT payload FROM events ORDER BY seq")?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            acc.apply(access(row.get_ref(0)?.as_blob()?)?);
        }
    }
    Ok(Sample::new(black_box(acc).events, start.elapsed()))
}

/// W4: per stream, one statement (its own read snapshot) through the stream index in version
/// order; every payload validated and folded.
pub(crate) fn fold(conn: &Connection, ids: &[u128]) -> Res<Sample> {
    let start = Instant::now();
    let mut events = 0;
    let mut select = conn.prepare_cached("SELECT payload FROM events WHERE stream = ?1 ORDER BY version")?;
    for id in ids {
        let mut acc = Account::default();
        let mut rows = select.query([&id.to_be_bytes()[..]])?;
        while let Some(row) = rows.next()? {
            acc.apply(access(row.get_ref(0)?.as_blob()?)?);
        }
        events += black_box(acc).events;
    }
    Ok(Sample::new(events, start.elapsed()))
}

/// W5a: SQLite has no notification across connections that fires after a commit, so as for
/// raw heed: the writer sends the seq down a channel after the commit, and a reader thread
/// with its own connection selects that row and validates its payload.
pub(crate) fn latency(dir: &Path, sync: Sync, samples: u64) -> Res<Vec<Latency>> {
    let mut conn = open(dir, sync)?;
    let reader = open(dir, sync)?;
    std::thread::scope(|scope| -> Res<Vec<Latency>> {
        let (seqs, seqs_rx) = mpsc::channel::<u64>();
        let (receipts, receipts_rx) = mpsc::channel::<Result<Instant, String>>();
        scope.spawn(move || {
            for seq in seqs_rx {
                let got = (|| -> Res<()> {
                    let mut select = reader.prepare_cached("SELECT payload FROM events WHERE seq = ?1")?;
                    let mut rows = select.query([i64::try_from(seq)?])?;
                    let row = rows.next()?.ok_or("missing after commit")?;
                    black_box(access(row.get_ref(0)?.as_blob()?)?.amount.to_native());
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
            let seq = write(&mut conn, &[(crate::SINGLE_STREAM, i as u32 + 1, crate::raw::archive(i)?)])?;
            let commit = start.elapsed();
            seqs.send(seq)?;
            let received = receipts_rx.recv()??;
            out.push(Latency { total: received - start, commit });
        }
        Ok(out)
    })
}
