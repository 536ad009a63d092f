//! The library's `tracing` events: a commit, a conflict, a command retry and a projection
//! step each report what happened, to a subscriber installed for the whole process (the
//! writer runs on a thread of its own).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event as TraceEvent, Metadata, Subscriber};
use varvedb::{
    Error, Event, ExecuteError, ExecuteOptions, ExpectedVersion, NewEvent, Pending, Projection, Varve,
    aggregate,
};

/// What one event said: its target, level and fields as text.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    level: tracing::Level,
    fields: BTreeMap<String, String>,
}

/// A subscriber that keeps every event of varvedb, and names each span by a counter.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Seen>>,
    spans: Mutex<Vec<String>>,
    next_id: AtomicU64,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for &'static Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.spans.lock().unwrap().push(span.metadata().target().to_owned());
        Id::from_u64(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &TraceEvent<'_>) {
        let meta = event.metadata();
        if !meta.target().starts_with("varvedb") {
            return;
        }
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(Seen {
            target: meta.target().to_owned(),
            level: *meta.level(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Recorder = Box::leak(Box::default());
        tracing::subscriber::set_global_default(recorder).expect("the only subscriber of this test");
        recorder
    })
}

fn taken(target: &str) -> Vec<Seen> {
    let mut events = recorder().events.lock().unwrap();
    let (mine, rest) = events.drain(..).partition(|e| e.target == target);
    *events = rest;
    mine
}

#[derive(Event)]
#[event(name = "counter.added")]
struct Added {
    n: u64,
}

#[derive(Default)]
struct Counter {
    total: u64,
}

#[aggregate]
impl Counter {
    fn added(&mut self, e: &ArchivedAdded) {
        self.total += e.n.to_native();
    }
}

#[test]
fn commits_conflicts_retries_and_steps_are_reported() {
    let recorder = recorder();
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();

    // One commit of three events: one event, with the group's figures.
    let before = db.stats().bytes_written;
    db.append(1u128, ExpectedVersion::NoStream, (0..3).map(|i| NewEvent::new("e", vec![i; 40]))).unwrap();
    let commits = taken("varvedb::commit");
    assert_eq!(commits.len(), 1, "{commits:?}");
    let c = &commits[0];
    assert_eq!(c.level, tracing::Level::DEBUG);
    assert_eq!(c.fields["requests"], "1");
    assert_eq!(c.fields["events"], "3");
    assert_eq!(c.fields["bytes"], (db.stats().bytes_written - before).to_string());
    assert!(c.fields["duration_us"].parse::<u64>().is_ok(), "{c:?}");
    assert!(recorder.spans.lock().unwrap().iter().any(|s| s == "varvedb::commit"), "a span per commit");

    // A conflict names the stream and both versions.
    let refused = db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("e", b"x".to_vec())]);
    assert!(matches!(refused, Err(Error::ConcurrencyConflict { .. })));
    let conflicts = taken("varvedb::conflict");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(conflicts[0].fields["conflict"].contains("expected"), "{conflicts:?}");
    assert!(taken("varvedb::commit").is_empty(), "a refused request commits nothing");

    // A command that loses a race once: one retry, at attempt 1.
    let counter = db.stream::<Counter>(2u128);
    let mut first = true;
    db.transact_with(&ExecuteOptions::new(), |tx| {
        let loaded = tx.load(&counter)?;
        if std::mem::take(&mut first) {
            counter.append_all(ExpectedVersion::Auto, [Pending::from(Added { n: 1 })])?;
        }
        tx.save(&counter, &loaded, [Added { n: 2 }])?;
        Ok::<_, ExecuteError<String>>(())
    })
    .unwrap();
    let retries = taken("varvedb::retry");
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].fields["attempt"], "1");

    // A projection step that applies events reports how many and where it stands; an idle
    // step reports nothing.
    let mut projection = Projection::new("totals").on::<Added>(|_, _, _| Ok(()));
    let progress = projection.step(&db).unwrap();
    let steps = taken("varvedb::process");
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].fields["name"], "totals");
    assert_eq!(steps[0].fields["kind"], "projection");
    assert_eq!(steps[0].fields["scanned"], progress.scanned.to_string());
    assert_eq!(steps[0].fields["checkpoint"], db.begin_read().unwrap().last_seq().unwrap().to_string());
    assert_eq!(projection.step(&db).unwrap().scanned, 0);
    assert!(taken("varvedb::process").is_empty());
}
