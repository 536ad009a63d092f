//! varvedb 0.4.2 as a subject of `benches/core`: a child process that runs one measurement
//! per command, so the parent can alternate it with the other subjects in the same run.
//!
//! Protocol: one command per line on stdin, one reply per line on stdout, `ok key=value ..`
//! or `err message`. Directories are the parent's; a store opened by `load-*` stays open
//! (as the parent's own subjects stay open between repetitions) until `close`.
//!
//! Everything goes through 0.4.2's public API, except the bulk loader (`load-interleaved`):
//! 0.4.2 writes one stream per transaction, so the million-event store with 1,000 streams
//! interleaved event by event would take a million durable commits. The loader writes the
//! same tables with heed, encoding records and keys with 0.4.2's own public types, in large
//! transactions; `check-loader` compares its output with what the API writes. It is setup,
//! never timed.

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::hint::black_box;
use std::io::{BufRead, Write};
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, PutFlags};
use varvedb::constants::{
    DEFAULT_MAX_DBS, GLOBAL_EVENTS_DB_NAME, STREAM_DB_PREFIX, STREAM_INDEX_SUFFIX, STREAM_META_SUFFIX,
};
use varvedb::types::{GlobalEventRecord, GlobalEventsDb, StreamIndexDb, StreamKey, StreamMetaDb};
use varvedb::{GlobalSequence, StreamId, StreamSequence, Varve, VarveConfig};

type Res<T> = Result<T, Box<dyn Error>>;

/// The event of every workload, as in the parent.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct Payment {
    id: u64,
    amount: u32,
    name: String,
}

const NAME: &str = "Jane Q. Customer, account 000042";
/// 0.4.2 stores the stream name in every record; the same length as the parent's type tag.
const STREAM: &str = "payment";
const MAP_SIZE: usize = 64 << 30;
/// 0.4.2's serialization buffer (`Stream<T, N>`): room for one archived `Payment`.
const BUF: usize = 256;
const LOAD_TXN: u64 = 100_000;
const SINGLE_STREAM: u64 = 1;

type Events = varvedb::Stream<Payment, BUF>;

fn payment(i: u64) -> Payment {
    Payment { id: i, amount: (i % 100_000) as u32, name: NAME.to_owned() }
}

/// Stream ids of the spread workloads: random, as the parent's, and never `u64::MAX`, which
/// 0.4.2's stream iterator cannot take (it computes `id + 1`).
fn spread_ids(count: usize) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..count).map(|_| rng.u64(1..u64::MAX)).collect()
}

fn open(dir: &Path) -> Res<Varve> {
    Ok(Varve::with_config(dir, VarveConfig { max_dbs: DEFAULT_MAX_DBS, map_size: MAP_SIZE })?)
}

/// The fold of the aggregate workloads.
#[derive(Default)]
struct Account {
    events: u64,
    total: u64,
    name_bytes: u64,
}

impl Account {
    fn apply(&mut self, p: &ArchivedPayment) {
        self.events += 1;
        self.total += u64::from(p.amount.to_native());
        self.name_bytes += p.name.len() as u64;
    }
}

fn reply(events: u64, elapsed: Duration) -> String {
    format!("events={events} nanos={}", elapsed.as_nanos())
}

// ---------------------------------------------------------------------------------------
// Appends

/// Appends for `time`: `batch` events per call to one stream, or (`spread`) event i to
/// stream i mod 1,000. 0.4.2 writes one stream per call, so a spread batch is one call per
/// stream it touches: not atomic, and one commit each.
fn append(dir: &Path, spread: bool, batch: u64, time: Duration) -> Res<String> {
    let mut db = open(dir)?;
    let mut stream: Events = db.stream(STREAM)?;
    let ids = spread_ids(1000);
    let (mut n, mut commits) = (0u64, 0u64);
    let start = Instant::now();
    'run: loop {
        if spread {
            let mut groups: HashMap<u64, Vec<Payment>> = HashMap::new();
            for i in n..n + batch {
                groups.entry(ids[(i % ids.len() as u64) as usize]).or_default().push(payment(i));
            }
            for (id, events) in groups {
                stream.append_batch_alloc(StreamId(id), &events)?;
                n += events.len() as u64;
                commits += 1;
                // One spread batch of 10,000 is 1,000 commits: stop inside it when time is up.
                if start.elapsed() >= time {
                    break 'run;
                }
            }
        } else {
            if batch == 1 {
                stream.append_alloc(StreamId(ids[0]), &payment(n))?;
            } else {
                let events: Vec<Payment> = (n..n + batch).map(payment).collect();
                stream.append_batch_alloc(StreamId(ids[0]), &events)?;
            }
            n += batch;
            commits += 1;
            if start.elapsed() >= time {
                break;
            }
        }
    }
    Ok(format!("{} commits={commits}", reply(n, start.elapsed())))
}

/// `writers` threads appending one event per call, each to its own stream through its own
/// handle (0.4.2 handles take `&mut self`); LMDB serializes their transactions.
fn concurrent(dir: &Path, writers: usize, time: Duration) -> Res<String> {
    let mut db = open(dir)?;
    let streams = (0..writers).map(|_| db.stream::<Payment, BUF>(STREAM)).collect::<Result<Vec<_>, _>>()?;
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(writers + 1);
    let (total, elapsed) = std::thread::scope(|scope| -> Res<(u64, Duration)> {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(w, mut stream)| {
                let (stop, barrier) = (&stop, &barrier);
                scope.spawn(move || -> Result<u64, String> {
                    let id = StreamId(1000 + w as u64);
                    let mut n = 0u64;
                    barrier.wait();
                    while !stop.load(Ordering::Relaxed) {
                        stream.append_alloc(id, &payment(n)).map_err(|e| e.to_string())?;
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
    Ok(reply(total, elapsed))
}

// ---------------------------------------------------------------------------------------
// Stores for the read workloads

struct Held {
    db: Varve,
    stream: Events,
    ids: Vec<u64>,
    events: u64,
}

impl Held {
    fn open(dir: &Path, ids: Vec<u64>, events: u64) -> Res<Self> {
        let mut db = open(dir)?;
        let stream = db.stream(STREAM)?;
        Ok(Held { db, stream, ids, events })
    }
}

fn table_names() -> (String, String) {
    (
        format!("{STREAM_DB_PREFIX}{STREAM}{STREAM_INDEX_SUFFIX}"),
        format!("{STREAM_DB_PREFIX}{STREAM}{STREAM_META_SUFFIX}"),
    )
}

fn open_env(dir: &Path) -> Res<Env> {
    let mut options = EnvOpenOptions::new();
    options.max_dbs(DEFAULT_MAX_DBS).map_size(MAP_SIZE);
    // SAFETY: the parent's fresh directory; no `Varve` of this process has it open, and no
    // other process touches it.
    Ok(unsafe { options.open(dir) }?)
}

/// Writes `streams * per` events, event i to stream i mod `streams` (as 0.4.2's
/// `append_alloc` would, one call per event), with the same puts and flags as 0.4.2.
fn bulk_load(dir: &Path, streams: usize, per: u64) -> Res<()> {
    let env = open_env(dir)?;
    let ids = spread_ids(streams);
    let (index_name, meta_name) = table_names();
    let mut wtxn = env.write_txn()?;
    let global: GlobalEventsDb = env.create_database(&mut wtxn, Some(GLOBAL_EVENTS_DB_NAME))?;
    let index: StreamIndexDb = env.create_database(&mut wtxn, Some(&index_name))?;
    let meta: StreamMetaDb = env.create_database(&mut wtxn, Some(&meta_name))?;
    for seq in 0..streams as u64 * per {
        if seq > 0 && seq % LOAD_TXN == 0 {
            wtxn.commit()?;
            wtxn = env.write_txn()?;
        }
        let stream_id = StreamId(ids[(seq % streams as u64) as usize]);
        let stream_seq = StreamSequence(seq / streams as u64);
        let record = GlobalEventRecord {
            stream_name: STREAM.to_owned(),
            stream_id,
            stream_seq,
            payload: rkyv::to_bytes::<rkyv::rancor::Error>(&payment(seq))?.to_vec(),
        };
        global.put_with_flags(&mut wtxn, PutFlags::NO_OVERWRITE, &seq, &record.to_bytes())?;
        index.put_with_flags(
            &mut wtxn,
            PutFlags::NO_OVERWRITE,
            &StreamKey::new(stream_id, stream_seq),
            &seq,
        )?;
        meta.put(&mut wtxn, &stream_id.0, &(stream_seq.0 + 1))?;
    }
    wtxn.commit()?;
    Ok(())
}

/// A table's name and its entries, as bytes.
type Dump = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Every entry of 0.4.2's tables in `dir`.
fn dump(dir: &Path) -> Res<Vec<Dump>> {
    let env = open_env(dir)?;
    let rtxn = env.read_txn()?;
    let (index_name, meta_name) = table_names();
    let mut tables = Vec::new();
    for name in [GLOBAL_EVENTS_DB_NAME, &index_name, &meta_name] {
        let db: Database<Bytes, Bytes> =
            env.open_database(&rtxn, Some(name))?.ok_or_else(|| format!("no table {name}"))?;
        let entries =
            db.iter(&rtxn)?.map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect::<Result<_, _>>()?;
        tables.push((name.to_owned(), entries));
    }
    Ok(tables)
}

/// The loader must write exactly what 0.4.2's API writes for the same events.
fn check_loader(api_dir: &Path, loader_dir: &Path) -> Res<String> {
    let (streams, per) = (3usize, 3u64);
    {
        let mut db = open(api_dir)?;
        let mut stream: Events = db.stream(STREAM)?;
        let ids = spread_ids(streams);
        for seq in 0..streams as u64 * per {
            stream.append_alloc(StreamId(ids[(seq % streams as u64) as usize]), &payment(seq))?;
        }
    }
    bulk_load(loader_dir, streams, per)?;
    let (api, loaded) = (dump(api_dir)?, dump(loader_dir)?);
    if api != loaded {
        return Err("the bulk loader's tables differ from those 0.4.2's API writes".into());
    }
    let value = api[0].1.first().map_or(0, |(_, v)| v.len());
    Ok(format!("events={} value_bytes={value}", api[0].1.len()))
}

fn load_single(dir: &Path, n: u64) -> Res<Held> {
    let mut held = Held::open(dir, vec![SINGLE_STREAM], n)?;
    let mut i = 0;
    while i < n {
        let end = (i + 10_000).min(n);
        let events: Vec<Payment> = (i..end).map(payment).collect();
        held.stream.append_batch_alloc(StreamId(SINGLE_STREAM), &events)?;
        i = end;
    }
    Ok(held)
}

// ---------------------------------------------------------------------------------------
// Reads

/// The global log in order, each payload validated. `GlobalIterator::for_each` hands out
/// owned events (stream name and payload copied), which also makes the payload aligned for
/// rkyv; it is 0.4.2's only way to read the log in order.
fn scan(held: &Held) -> Res<String> {
    let reader = held.db.global_reader();
    let start = Instant::now();
    let (mut acc, mut failure) = (Account::default(), None);
    reader.iter_from(GlobalSequence(0))?.for_each(|event| {
        match rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(&event.payload) {
            Ok(p) => acc.apply(p),
            Err(e) => drop(failure.get_or_insert(e)),
        }
    })?;
    let elapsed = start.elapsed();
    finish(held, &acc, failure, elapsed)
}

/// Folds every stream of the store: index range and one get per event (0.4.2's
/// `iter_stream`), each payload copied into an aligned buffer and validated. The payload in
/// the map sits after the record's variable-length stream name, so it is not aligned for
/// rkyv's default format: 0.4.2's own `get_archived` copies it the same way.
fn fold(held: &Held) -> Res<String> {
    let reader = held.stream.reader();
    let mut scratch = rkyv::util::AlignedVec::<16>::new();
    let (mut events, mut failure) = (0u64, None);
    let start = Instant::now();
    for &id in &held.ids {
        let mut acc = Account::default();
        reader.iter_stream(StreamId(id), None)?.for_each(|_, payload| {
            scratch.clear();
            scratch.extend_from_slice(payload);
            match rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(&scratch) {
                Ok(p) => acc.apply(p),
                Err(e) => drop(failure.get_or_insert(e)),
            }
        })?;
        events += acc.events;
        black_box(&acc);
    }
    let elapsed = start.elapsed();
    let acc = Account { events, ..Account::default() };
    finish(held, &acc, failure, elapsed)
}

fn finish(
    held: &Held,
    acc: &Account,
    failure: Option<rkyv::rancor::Error>,
    elapsed: Duration,
) -> Res<String> {
    if let Some(e) = failure {
        return Err(format!("invalid payload: {e}").into());
    }
    if acc.events != held.events {
        return Err(format!("read {} events, expected {}", acc.events, held.events).into());
    }
    black_box((acc.total, acc.name_bytes));
    Ok(reply(acc.events, elapsed))
}

// ---------------------------------------------------------------------------------------
// Append-to-reader latency

/// Runs a future on this thread: 0.4.2's watcher is runtime-agnostic.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// `samples` single-event appends, one at a time; a reader thread waits on 0.4.2's write
/// watcher (feature `notify`), reads each new event and validates it. Replies with
/// `latency:commit` pairs in nanoseconds: from just before the append call to the reader
/// holding the event, and the append call itself.
fn latency(dir: &Path, samples: u64) -> Res<String> {
    let mut db = open(dir)?;
    let mut stream: Events = db.stream(STREAM)?;
    let watcher = db.watcher();
    let mut reader = db.global_reader();
    let (tx, rx) = mpsc::channel::<Result<Instant, String>>();
    // Detached: if an append fails, the reader is left waiting in this child, which the
    // parent then stops.
    std::thread::spawn(move || {
        for seq in 0..samples {
            block_on(watcher.wait_for_global_seq(GlobalSequence(seq)));
            let got = match reader.get_bytes(GlobalSequence(seq)) {
                Ok(Some(bytes)) => rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(bytes)
                    .map(|p| black_box(p.amount.to_native()))
                    .map_err(|e| e.to_string()),
                Ok(None) => Err(format!("event {seq} is missing after its notification")),
                Err(e) => Err(e.to_string()),
            };
            let failed = got.is_err();
            if tx.send(got.map(|_| Instant::now())).is_err() || failed {
                return;
            }
        }
    });
    let mut pairs = Vec::new();
    for i in 0..samples {
        let start = Instant::now();
        stream.append_alloc(StreamId(SINGLE_STREAM), &payment(i))?;
        let committed = start.elapsed();
        let received = rx.recv()??;
        pairs.push(format!("{}:{}", (received - start).as_nanos(), committed.as_nanos()));
    }
    Ok(format!("samples={}", pairs.join(",")))
}

// ---------------------------------------------------------------------------------------

fn run(line: &str, held: &mut HashMap<String, Held>) -> Res<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let arg = |i: usize| -> Res<&str> {
        words.get(i).copied().ok_or_else(|| format!("missing argument {i}").into())
    };
    let millis = |i: usize| -> Res<Duration> { Ok(Duration::from_millis(arg(i)?.parse()?)) };
    match arg(0)? {
        "check-loader" => check_loader(Path::new(arg(1)?), Path::new(arg(2)?)),
        "append" => append(Path::new(arg(1)?), arg(2)? == "spread", arg(3)?.parse()?, millis(4)?),
        "concurrent" => concurrent(Path::new(arg(1)?), arg(2)?.parse()?, millis(3)?),
        "load-interleaved" => {
            let (dir, streams, per) = (arg(1)?, arg(2)?.parse::<usize>()?, arg(3)?.parse::<u64>()?);
            let start = Instant::now();
            bulk_load(Path::new(dir), streams, per)?;
            let store = Held::open(Path::new(dir), spread_ids(streams), streams as u64 * per)?;
            held.insert(dir.to_owned(), store);
            Ok(reply(streams as u64 * per, start.elapsed()))
        }
        "load-single" => {
            let (dir, n) = (arg(1)?, arg(2)?.parse::<u64>()?);
            let start = Instant::now();
            let store = load_single(Path::new(dir), n)?;
            held.insert(dir.to_owned(), store);
            Ok(reply(n, start.elapsed()))
        }
        "scan" => scan(held.get(arg(1)?).ok_or("no store open there")?),
        "fold" => fold(held.get(arg(1)?).ok_or("no store open there")?),
        "close" => {
            held.remove(arg(1)?);
            Ok(String::new())
        }
        "latency" => latency(Path::new(arg(1)?), arg(2)?.parse()?),
        other => Err(format!("unknown command {other:?}").into()),
    }
}

fn main() -> Res<()> {
    let mut held = HashMap::new();
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let answer = match run(&line, &mut held) {
            Ok(r) => format!("ok {r}"),
            Err(e) => format!("err {}", e.to_string().replace('\n', " ")),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
