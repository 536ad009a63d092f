//! Who commits a request: a lone blocking caller on its own thread, an async one through the
//! writer thread.
// Alone in its binary: a subscriber installed for one thread sees the library's events only
// if no other test's thread decides their interest meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A lone blocking caller commits its request on its own thread, with no hand-off to the
/// writer thread and back; an async call is committed by the writer thread. The reader-lag
/// callback runs on the thread that led the commit, before the commit is answered.
#[test]
fn a_lone_blocking_caller_commits_on_its_own_thread() {
    let dir = tempfile::tempdir().unwrap();
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&threads);
    let db = varvedb::Options::new()
        .on_reader_lag(1, move |_| {
            let current = std::thread::current();
            seen.lock().unwrap().push((current.id(), current.name().map(str::to_owned)));
        })
        .open(dir.path())
        .unwrap();
    // Held open, so that each commit from the second on leaves it another commit behind
    // its bound: one warning each.
    let view = db.begin_read().unwrap();
    let here = Arc::new(CommitsHere::default());
    tracing::subscriber::with_default(Arc::clone(&here), || {
        for v in 0..4 {
            db.append(1u128, ExpectedVersion::Exact(v), [NewEvent::new("tick", vec![1])]).unwrap();
        }
    });
    assert_eq!(here.0.load(Ordering::Relaxed), 4, "commits on the calling thread");
    let caller = std::thread::current().id();
    let warned = std::mem::take(&mut *threads.lock().unwrap());
    assert_eq!(warned.len(), 3, "{warned:?}");
    assert!(warned.iter().all(|(id, _)| *id == caller), "{warned:?}");

    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let here = Arc::new(CommitsHere::default());
    tracing::subscriber::with_default(Arc::clone(&here), || {
        for v in 4..8 {
            let e = NewEvent::new("tick", vec![1]);
            runtime.block_on(db.append_async(1u128, ExpectedVersion::Exact(v), [e])).unwrap();
        }
    });
    assert_eq!(here.0.load(Ordering::Relaxed), 0, "async commits on the calling thread");
    let warned = std::mem::take(&mut *threads.lock().unwrap());
    assert_eq!(warned.len(), 4, "{warned:?}");
    assert!(warned.iter().all(|(_, name)| name.as_deref() == Some("varvedb-writer")), "{warned:?}");
    drop(view);
}
