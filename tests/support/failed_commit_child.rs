//! Child process of `tests/failed_commits.rs`: appends to a store while the I/O shim fails a
//! write or flush of `data.mdb`, and prints what each request returned, one line each.
//!
//! - `failed-commit-child group <dir> <threads> <reopen>`: opens the store at `<dir>`,
//!   appends one event to stream 0 (the warm-up), then `<threads>` threads each append two
//!   events to a stream of their own (`1 + thread`), all in one group commit: the writer
//!   thread is held (in the reader-lag callback, which it calls after the warm-up's commit)
//!   until every thread has sent its request. Then a read view and an append on the same
//!   handle. With `<reopen>` = `reopen`, drops the handle, opens the store again in this
//!   process, checks its integrity and sends the threads' requests again.
//! - `failed-commit-child appends <dir> <threads> <count>`: opens (creating) the store, and
//!   `<threads>` threads each send `<count>` requests of two events, one after the other.
//! - `failed-commit-child plain <dir> <count>`: opens the store and sends `<count>` requests
//!   of two events, one after the other, to stream 1.
//!
//! Events carry ids (`requests.rs`): a request can be sent again and found in the store.
//! Lines: `open <outcome>` when the open fails; `warmup <outcome>`, `req <thread> <k>
//! <outcome>`, `read <outcome>`, `append <outcome>`, `reopened <events>`, `resent <thread>
//! <k> <outcome>`, `sources same|differ` (whether every `OutcomeUnknown` and `NeedsReopen`
//! of the run carried the same source, by pointer), `commits <n>` (the commits `appends`
//! made). An outcome is `ok <first seq> <last
//! seq> <deduplicated>`, `unknown <source>`, `reopen <source>` or `err <kind>`, with
//! [`describe`]'s words for an error.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use varvedb::{Appended, Error, ExpectedVersion, NewEvent, Options, Varve};

#[path = "requests.rs"]
#[allow(dead_code)]
mod requests;

use requests::{request, stream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: failed-commit-child group <dir> <threads> reopen|stay | appends <dir> <threads> <count> \
                 | plain <dir> <count> | large <dir> <count>";
    let number = |i: usize| -> usize { args.get(i).expect(usage).parse().expect(usage) };
    let dir = args.get(1).expect(usage);
    match args.first().map(String::as_str) {
        Some("group") => group(dir, number(2), args.get(3).expect(usage) == "reopen"),
        Some("appends") => appends(dir, number(2), number(3)),
        Some("plain") => plain(dir, number(2)),
        Some("large") => large(dir, number(2)),
        _ => panic!("{usage}"),
    }
}

/// The sources of every `OutcomeUnknown` and `NeedsReopen` seen, to compare by pointer.
static SOURCES: Mutex<Vec<Arc<Error>>> = Mutex::new(Vec::new());

/// An error's words: the variant, and for the two outcomes of a failed meta-page write,
/// their source.
fn describe(e: &Error) -> String {
    let source = |s: &Arc<Error>| {
        SOURCES.lock().unwrap().push(Arc::clone(s));
        kind(s)
    };
    match e {
        Error::OutcomeUnknown { source: s } => format!("unknown {}", source(s)),
        Error::NeedsReopen { source: s } => format!("reopen {}", source(s)),
        other => format!("err {}", kind(other)),
    }
}

/// `io:<errno>`, `diskfull:<errno>`, or the error's Debug without spaces.
fn kind(e: &Error) -> String {
    match e {
        Error::Io(io) => format!("io:{}", io.raw_os_error().unwrap_or(0)),
        Error::DiskFull { source, .. } => format!("diskfull:{}", source.raw_os_error().unwrap_or(0)),
        other => format!("{other:?}").replace(' ', ""),
    }
}

fn outcome(result: &Result<Appended, Error>) -> String {
    match result {
        Ok(a) => format!("ok {} {} {}", a.first_seq, a.last_seq, a.deduplicated),
        Err(e) => describe(e),
    }
}

fn print_sources() {
    let sources = SOURCES.lock().unwrap();
    let same = sources.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1]));
    println!("sources {}", if same { "same" } else { "differ" });
}

fn append(db: &Varve, t: usize, k: usize) -> Result<Appended, Error> {
    db.append(stream(t), ExpectedVersion::Auto, request(t, k))
}

/// Where the writer thread and the appending threads meet: the writer waits in the lag
/// callback until every thread has announced its request.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

fn group(dir: &str, threads: usize, reopen: bool) {
    let gate = Arc::new(Gate::default());
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (g, a) = (Arc::clone(&gate), Arc::clone(&armed));
    // Lag bound 0: with a view held, the writer calls this after every commit; only the
    // first call (the warm-up's) holds it.
    let db = Options::new()
        .on_reader_lag(0, move |_| {
            if !a.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let mut state = g.state.lock().unwrap();
            state.0 = true;
            g.changed.notify_all();
            while state.1 < threads {
                state = g.changed.wait(state).unwrap();
            }
            drop(state);
            // Announced, then sent at once: give the sends time to reach the writer's queue
            // (on a loaded machine too), so that the next group takes them all.
            std::thread::sleep(Duration::from_millis(500));
        })
        .open(dir)
        .expect("open the store");
    let view = db.begin_read().expect("a view, so that the warm-up's commit lags it");
    let results: Vec<Result<Appended, Error>> = std::thread::scope(|scope| {
        let warmup = scope.spawn(|| {
            db.append(0u128, ExpectedVersion::Auto, [NewEvent::new("fc", b"warm-up".to_vec()).with_id(1)])
        });
        let requests: Vec<_> = (0..threads)
            .map(|t| {
                let (db, gate) = (&db, &gate);
                scope.spawn(move || {
                    let mut state = gate.state.lock().unwrap();
                    while !state.0 {
                        state = gate.changed.wait(state).unwrap();
                    }
                    state.1 += 1;
                    gate.changed.notify_all();
                    drop(state);
                    append(db, t, 0)
                })
            })
            .collect();
        println!("warmup {}", outcome(&warmup.join().unwrap()));
        requests.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, r) in results.iter().enumerate() {
        println!("req {t} 0 {}", outcome(r));
    }
    drop(view);
    match db.begin_read() {
        Ok(_) => println!("read ok"),
        Err(e) => println!("read {}", describe(&e)),
    }
    println!("append {}", outcome(&append(&db, threads, 0)));
    print_sources();
    if !reopen {
        return;
    }
    drop(db);
    let db = Varve::open(dir).expect("reopen in the same process");
    let report = db.begin_read().unwrap().check_integrity().expect("integrity after reopening");
    println!("reopened {}", report.events);
    for t in 0..threads {
        println!("resent {t} 0 {}", outcome(&append(&db, t, 0)));
    }
}

fn appends(dir: &str, threads: usize, count: usize) {
    let db = match Varve::open(dir) {
        Ok(db) => db,
        Err(e) => {
            println!("open {}", describe(&e));
            return;
        }
    };
    let lines: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let db = &db;
                scope.spawn(move || {
                    (0..count)
                        .map(|k| format!("req {t} {k} {}", outcome(&append(db, t, k))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    for line in lines {
        println!("{line}");
    }
    print_sources();
    println!("commits {}", db.stats().commits);
}

fn plain(dir: &str, count: usize) {
    let db = Varve::open(dir).expect("open the store");
    for k in 0..count {
        println!("req 0 {k} {}", outcome(&append(&db, 0, k)));
    }
}

/// As `plain`, for the thread whose requests are too large for a commit record: each answer
/// waits for a flush of its commit's meta page.
fn large(dir: &str, count: usize) {
    let db = Varve::open(dir).expect("open the store");
    for k in 0..count {
        println!("req {} {k} {}", requests::LARGE, outcome(&append(&db, requests::LARGE, k)));
    }
}
