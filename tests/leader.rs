//! Who commits a request: a lone blocking caller on its own thread, an async one through the
//! writer thread.
// Alone in its binary: a subscriber installed for one thread sees the library's events only
// if no other test's thread decides their interest meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use varvedb::{ExpectedVersion, NewEvent};

/// Counts the commits reported on the thread it is installed on (`with_default`).
#[derive(Default)]
struct CommitsHere(std::sync::atomic::AtomicU64);

impl tracing::Subscriber for CommitsHere {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() == "varvedb::commit"
            && *event.metadata().level() == tracing::Level::DEBUG
        {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A lone blocking caller commits its request on its own thread, with no hand-off to the
/// writer thread and back; an async call is committed by the writer thread. The reader-lag
/// callback runs on the writer thread either way.
#[test]
fn a_lone_blocking_caller_commits_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&threads);
    let db = varvedb::Options::new()
        .on_reader_lag(1, move |_| {
            seen.lock().unwrap().push(std::thread::current().name().map(str::to_owned));
        })
        .open(dir.path())
        .unwrap();
    // Held open, so every commit after the second leaves it more than one behind.
    let view = db.begin_read().unwrap();
    let here = Arc::new(CommitsHere::default());
    tracing::subscriber::with_default(Arc::clone(&here), || {
        for v in 0..4 {
            db.append(1u128, ExpectedVersion::Exact(v), [NewEvent::new("tick", vec![1])]).unwrap();
        }
    });
    assert_eq!(here.0.load(std::sync::atomic::Ordering::Relaxed), 4, "commits on the calling thread");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let here = Arc::new(CommitsHere::default());
    tracing::subscriber::with_default(Arc::clone(&here), || {
        for v in 4..8 {
            let e = NewEvent::new("tick", vec![1]);
            runtime.block_on(db.append_async(1u128, ExpectedVersion::Exact(v), [e])).unwrap();
        }
    });
    assert_eq!(here.0.load(std::sync::atomic::Ordering::Relaxed), 0, "async commits on the calling thread");
    // One warning per commit from the second on (each leaves the view another commit
    // behind), called after the commit that set it off: wait for the last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads.lock().unwrap().len() < 7 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let named = threads.lock().unwrap().clone();
    assert_eq!(named.len(), 7, "{named:?}");
    assert!(named.iter().all(|name| name.as_deref() == Some("varvedb-writer")), "{named:?}");
    drop(view);
}
