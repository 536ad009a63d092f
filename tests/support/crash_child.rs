//! Child process for `tests/crash.rs`: appends from several threads and prints one line per
//! acknowledged append, until it is killed. `crash-child <store dir>` opens the store with
//! the default durability, `crash-child <store dir> relaxed` with `Durability::Relaxed`.
//!
//! Line format: `ack <stream> <first_version> <last_version> <first_seq> <last_seq>`.
//! Payloads are a function of (stream, version) so the parent can verify them.

use std::io::Write;
use std::sync::Mutex;

use varvedb::{Durability, ExpectedVersion, NewEvent, Options, WriteBatch};

/// Streams 100 and 101 are only ever written together, in one batch.
const PAIR: (u128, u128) = (100, 101);

fn main() {
    let usage = "usage: crash-child <store dir> [relaxed]";
    let dir = std::env::args().nth(1).expect(usage);
    let durability = match std::env::args().nth(2).as_deref() {
        None => Durability::Immediate,
        Some("relaxed") => Durability::Relaxed,
        Some(_) => panic!("{usage}"),
    };
    let db = Options::new().verifiable_log(true).durability(durability).open(&dir).expect("open store");
    let out = Mutex::new(std::io::stdout());
    let ack = |appended: &[varvedb::Appended]| {
        let mut out = out.lock().unwrap();
        for a in appended {
            writeln!(
                out,
                "ack {} {} {} {} {}",
                a.stream.as_u128(),
                a.first_version,
                a.last_version,
                a.first_seq,
                a.last_seq
            )
            .unwrap();
        }
        out.flush().unwrap();
    };
    std::thread::scope(|s| {
        for stream in 0..4u128 {
            let (db, ack) = (&db, &ack);
            s.spawn(move || {
                let mut version = db.begin_read().unwrap().stream_version(stream).unwrap().unwrap_or(0);
                loop {
                    let n = 1 + (version % 3);
                    let events = (1..=n).map(|i| event(stream, version + i));
                    let a = db.append(stream, ExpectedVersion::Exact(version), events).expect("append");
                    version = a.last_version;
                    ack(&[a]);
                }
            });
        }
        let (db, ack) = (&db, &ack);
        s.spawn(move || {
            let mut version = db.begin_read().unwrap().stream_version(PAIR.0).unwrap().unwrap_or(0);
            loop {
                let mut batch = WriteBatch::new();
                batch.append(PAIR.0, ExpectedVersion::Exact(version), [event(PAIR.0, version + 1)]).append(
                    PAIR.1,
                    ExpectedVersion::Exact(version),
                    [event(PAIR.1, version + 1)],
                );
                let done = db.write(batch).expect("pair write");
                version += 1;
                ack(&done);
            }
        });
        // A reader that is killed with its read transaction open leaves a stale reader slot.
        s.spawn(|| {
            loop {
                let view = db.begin_read().unwrap();
                let last = view.last_seq().unwrap();
                if last > 0 {
                    view.event(last).unwrap().expect("last seq is readable");
                }
            }
        });
    });
}

fn event(stream: u128, version: u32) -> NewEvent {
    NewEvent::new("crash", payload(stream, version)).with_id((stream << 32) | u128::from(version))
}

/// Some payloads exceed 1 KiB so blobs are exercised too.
#[must_use]
pub fn payload(stream: u128, version: u32) -> Vec<u8> {
    let unit = format!("s{stream}v{version};");
    let len = if version.is_multiple_of(7) { 3000 } else { 40 };
    unit.bytes().cycle().take(len).collect()
}
