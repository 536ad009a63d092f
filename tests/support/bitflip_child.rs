//! Child process for `tests/bit_flips.rs`: opens a copy of the template store with one bit
//! flipped and reads all of it, comparing every value returned `Ok` with what was written.
//!
//! Usage: `bitflip-child <store dir> <expected file>`. It prints, one line each and flushed
//! at once, so that the parent knows in which stage a crash or a hang happened:
//!
//! - `stage <name>` before each stage;
//! - `errors <stage> <kind> <count> <first message>` after a stage that met errors;
//! - `wrong <stage> <what>` for a value returned `Ok` that differs from what was written
//!   (the first few of a stage; `wrong <stage> and <n> more` after them);
//! - `endless <stage> <what>` for a read that goes on yielding items far past what was
//!   written (then left);
//! - `integrity ok` or `integrity failed` after `check_integrity`;
//! - `done` at the end.
//!
//! The template's content is a function of nothing ([`plan`]), so parent and child agree on it
//! without passing it; only the timestamps, from the writer's clock, come in the expected file.

use std::collections::BTreeMap;
use std::io::Write;

use varvedb::{Error, Event, ExpectedVersion, NewEvent, ReadView, RecordedEvent, Varve, WriteBatch};

/// Events in the template.
pub const EVENTS: usize = 10_000;
/// Streams in the template; every one has events.
pub const STREAMS: usize = 100;
/// The kind of every fifth stream (the others have none).
pub const KIND: &str = "account";
/// Differences printed per stage; the rest are counted.
const WRONG_SHOWN: usize = 5;

/// The template's typed event, so that the schema registry and archived payloads are in the
/// file too.
#[derive(Event, Debug)]
#[event(name = "account.deposited", version = 2)]
pub struct Deposited {
    pub cents: u64,
    pub note: String,
}

/// One stream's events in a batch.
pub struct Append {
    pub stream: u128,
    pub kind: Option<&'static str>,
    pub first_version: u32,
    pub events: Vec<NewEvent>,
}

impl Append {
    /// Adds this append to `batch`, expecting the stream exactly where the plan has it.
    pub fn add_to(&self, batch: &mut WriteBatch) {
        let expected = match self.first_version - 1 {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let events = self.events.iter().cloned();
        match self.kind {
            Some(kind) => batch.append_kind(self.stream, kind, expected, events),
            None => batch.append(self.stream, expected, events),
        };
    }
}

/// The template: its streams and the batches that write it, in commit order.
pub struct Plan {
    pub streams: Vec<u128>,
    pub batches: Vec<Vec<Append>>,
}

/// What one seq holds, as written.
pub struct Expected {
    pub stream: u128,
    pub version: u32,
    pub schema_version: u32,
    pub event: NewEvent,
}

/// splitmix64: the plan needs a fixed sequence of numbers, and this binary may use only
/// varvedb.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }

    fn percent(&mut self) -> usize {
        self.range(0, 100)
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// The template: [`EVENTS`] events over [`STREAMS`] streams in batches of 1 to 4 streams and
/// 1 to 300 events each. Payloads run from 8 bytes to 9 KiB (a blob over 1 KiB, over several
/// LMDB pages past 4 KiB; some blobs shared by several events); some events have ids, some
/// metadata, a few are typed.
#[must_use]
pub fn plan() -> Plan {
    let mut mix = Mix(0xb17f_11b5);
    let streams: Vec<u128> = (0..STREAMS).map(|_| mix.u128()).collect();
    let mut versions = [0u32; STREAMS];
    let mut large = Vec::new();
    let mut batches = Vec::new();
    let (mut written, mut appends) = (0, 0);
    while written < EVENTS {
        let width = if mix.percent() < 60 { 1 } else { mix.range(2, 5) };
        let mut batch: Vec<Append> = Vec::new();
        for _ in 0..width {
            // Each stream gets one append first, so that all of them have events.
            let s = if appends < STREAMS { appends } else { mix.range(0, STREAMS) };
            if written == EVENTS || batch.iter().any(|a| a.stream == streams[s]) {
                continue;
            }
            appends += 1;
            let n = match mix.percent() {
                0..50 => mix.range(1, 6),
                50..85 => mix.range(5, 41),
                _ => mix.range(40, 301),
            }
            .min(EVENTS - written);
            let events = (0..n).map(|_| event(&mut mix, &mut large)).collect();
            let kind = s.is_multiple_of(5).then_some(KIND);
            batch.push(Append { stream: streams[s], kind, first_version: versions[s] + 1, events });
            versions[s] += n as u32;
            written += n;
        }
        batches.push(batch);
    }
    Plan { streams, batches }
}

fn event(mix: &mut Mix, large: &mut Vec<Vec<u8>>) -> NewEvent {
    const TAGS: [&str; 5] = ["opened", "renamed", "noted", "moved", "closed"];
    let mut e = if mix.percent() < 3 {
        let deposited = Deposited { cents: mix.next() % 100_000, note: format!("note {}", mix.next()) };
        NewEvent::from_event(&deposited).expect("a plain struct archives")
    } else {
        let len = match mix.percent() {
            0..75 => mix.range(8, 200),
            75..92 => mix.range(200, 1025),
            92..98 => mix.range(1025, 3000),
            _ => mix.range(3000, 9000),
        };
        let payload = if len > 1024 && !large.is_empty() && mix.percent() < 10 {
            large[mix.range(0, large.len())].clone()
        } else {
            let p = mix.bytes(len);
            if len > 1024 {
                large.push(p.clone());
            }
            p
        };
        NewEvent::new(TAGS[mix.range(0, TAGS.len())], payload)
    };
    if mix.percent() < 15 {
        let len = mix.range(4, 64);
        e = e.with_metadata(mix.bytes(len));
    }
    if mix.percent() < 30 {
        e = e.with_id(mix.u128());
    }
    e
}

impl Plan {
    /// What each seq holds, seq 1 first.
    #[must_use]
    pub fn expected(&self) -> Vec<Expected> {
        let mut out = Vec::with_capacity(EVENTS);
        for append in self.batches.iter().flatten() {
            for (i, event) in append.events.iter().enumerate() {
                let schema_version =
                    if event.type_tag() == Deposited::NAME { <Deposited as Event>::VERSION } else { 0 };
                out.push(Expected {
                    stream: append.stream,
                    version: append.first_version + i as u32,
                    schema_version,
                    event: event.clone(),
                });
            }
        }
        out
    }

    /// The number of events whose payload is a blob.
    #[must_use]
    pub fn blob_references(&self) -> u64 {
        self.batches.iter().flatten().flat_map(|a| &a.events).filter(|e| e.payload().len() > 1024).count()
            as u64
    }
}

/// The first field of `e` that differs from `want` (written at `seq` with `timestamp`).
#[must_use]
pub fn differs(e: &RecordedEvent<'_>, seq: u64, want: &Expected, timestamp: u64) -> Option<String> {
    let w = &want.event;
    let field = if e.seq() != seq {
        format!("seq {}", e.seq())
    } else if e.stream().as_u128() != want.stream {
        format!("stream {}", e.stream())
    } else if e.version() != want.version {
        format!("version {} (written {})", e.version(), want.version)
    } else if e.type_tag() != w.type_tag() {
        format!("type tag {:?} (written {:?})", e.type_tag(), w.type_tag())
    } else if e.schema_version() != want.schema_version {
        format!("schema version {} (written {})", e.schema_version(), want.schema_version)
    } else if e.id() != w.id() {
        format!("id {:?} (written {:?})", e.id(), w.id())
    } else if e.timestamp_micros() != timestamp {
        format!("timestamp {} (written {timestamp})", e.timestamp_micros())
    } else if e.metadata() != w.metadata() {
        format!("metadata of {} bytes (written {})", e.metadata().len(), w.metadata().len())
    } else if e.payload() != w.payload() {
        let at = e.payload().iter().zip(w.payload()).position(|(a, b)| a != b);
        format!(
            "payload of {} bytes, first difference at {at:?} (written {} bytes)",
            e.payload().len(),
            w.payload().len()
        )
    } else if e.is_shredded() {
        "shredded".to_owned()
    } else {
        return None;
    };
    Some(format!("seq {seq}: {field}"))
}

/// The variant of `e`, without spaces, the table or engine error included where there is one.
#[must_use]
pub fn kind(e: &Error) -> String {
    let kind = match e {
        Error::CorruptIndex { table, .. } => format!("CorruptIndex({table})"),
        Error::Storage(s) => {
            let text = s.to_string();
            format!("Storage({})", text.split(':').next().unwrap_or_default())
        }
        other => {
            let debug = format!("{other:?}");
            debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_owned()
        }
    };
    kind.replace(' ', "_")
}

/// What the child found in one stage, printed when the stage ends.
struct Stage {
    name: &'static str,
    /// Per error kind: how many, and the first one's text.
    errors: BTreeMap<String, (u64, String)>,
    wrong: usize,
}

impl Stage {
    fn start(name: &'static str) -> Stage {
        line(&format!("stage {name}"));
        Stage { name, errors: BTreeMap::new(), wrong: 0 }
    }

    fn error(&mut self, e: &Error) {
        self.errors.entry(kind(e)).or_insert_with(|| (0, e.to_string().replace('\n', " "))).0 += 1;
    }

    fn wrong(&mut self, what: &str) {
        if self.wrong < WRONG_SHOWN {
            line(&format!("wrong {} {what}", self.name));
        }
        self.wrong += 1;
    }

    fn endless(&mut self, what: &str) {
        line(&format!("endless {} {what}", self.name));
    }

    fn end(self) {
        for (kind, (count, first)) in &self.errors {
            line(&format!("errors {} {kind} {count} {first}", self.name));
        }
        if self.wrong > WRONG_SHOWN {
            line(&format!("wrong {} and {} more", self.name, self.wrong - WRONG_SHOWN));
        }
    }
}

fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    // The parent may be gone (killed the child on a timeout); nothing to report to then.
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

/// Everything the reads compare against.
struct Want {
    expected: Vec<Expected>,
    timestamps: Vec<u64>,
    /// Per stream (in plan order), its seqs by version, version 1 first.
    seqs: Vec<(u128, Vec<u64>)>,
    kinds: Vec<Option<&'static str>>,
    blob_references: u64,
}

impl Want {
    fn event(&self, e: &RecordedEvent<'_>, seq: u64) -> Option<String> {
        let Some(want) = seq.checked_sub(1).and_then(|i| self.expected.get(i as usize)) else {
            return Some(format!("seq {seq}, past the {EVENTS} written"));
        };
        differs(e, seq, want, self.timestamps[seq as usize - 1])
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(expected_file)) = (args.next(), args.next()) else {
        panic!("usage: bitflip-child <store dir> <expected file>");
    };
    let plan = plan();
    let timestamps: Vec<u64> = std::fs::read(expected_file)
        .expect("expected file")
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(timestamps.len(), EVENTS, "expected file");
    let expected = plan.expected();
    let mut seqs: Vec<(u128, Vec<u64>)> = plan.streams.iter().map(|&s| (s, Vec::new())).collect();
    for (i, e) in expected.iter().enumerate() {
        let s = plan.streams.iter().position(|&s| s == e.stream).unwrap();
        seqs[s].1.push(i as u64 + 1);
    }
    let kinds = (0..STREAMS).map(|s| s.is_multiple_of(5).then_some(KIND)).collect();
    let want = Want { expected, timestamps, seqs, kinds, blob_references: plan.blob_references() };
    drop(plan);

    let mut stage = Stage::start("open");
    let db = match Varve::open(&dir) {
        Ok(db) => db,
        Err(e) => {
            stage.error(&e);
            stage.end();
            line("done");
            return;
        }
    };
    stage.end();
    check_integrity(&db, &want);
    read_all(&db, &want);
    read_streams(&db, &want, false);
    read_streams(&db, &want, true);
    events(&db, &want);
    heads(&db, &want);
    line("done");
}

/// A read view, or the stage's error: a failed read ends its view (LMDB fails the whole
/// transaction), so each read takes a new one.
fn view<'d>(db: &'d Varve, stage: &mut Stage) -> Option<ReadView<'d>> {
    db.begin_read().map_err(|e| stage.error(&e)).ok()
}

fn check_integrity(db: &Varve, want: &Want) {
    let mut stage = Stage::start("check_integrity");
    let passed = match view(db, &mut stage).map(|v| v.check_integrity()) {
        Some(Ok(report)) => {
            let n = EVENTS as u64;
            let found = (report.events, report.last_seq, report.streams, report.blob_references);
            let written = (n, n, STREAMS as u64, want.blob_references);
            if found != written {
                stage.wrong(&format!(
                    "report (events, last seq, streams, blobs) {found:?}, written {written:?}"
                ));
            }
            true
        }
        Some(Err(e)) => {
            stage.error(&e);
            false
        }
        None => false,
    };
    stage.end();
    line(if passed { "integrity ok" } else { "integrity failed" });
}

/// More items than a read of `written` events can yield, damage reported in place included
/// (at most a gap report and an event per entry, and one report at the end).
fn endless(written: usize) -> usize {
    3 * written + 100
}

fn read_all(db: &Varve, want: &Want) {
    let mut stage = Stage::start("read_all");
    if let Some(view) = view(db, &mut stage) {
        match view.read_all(0) {
            Ok(log) => {
                let (mut last, mut handed, mut errors) = (0u64, 0usize, 0usize);
                for item in log {
                    if handed + errors > endless(EVENTS) {
                        stage.endless(&format!("{handed} events and {errors} errors"));
                        break;
                    }
                    match item {
                        Ok(e) => {
                            let seq = e.seq();
                            if seq <= last {
                                stage.wrong(&format!("seq {seq} after seq {last}"));
                            } else if let Some(what) = want.event(&e, seq) {
                                stage.wrong(&what);
                            }
                            last = last.max(seq);
                            handed += 1;
                        }
                        Err(e) => {
                            stage.error(&e);
                            errors += 1;
                        }
                    }
                }
                if errors == 0 && handed != EVENTS {
                    stage.wrong(&format!("{handed} events and no error, {EVENTS} written"));
                }
            }
            Err(e) => stage.error(&e),
        }
    }
    stage.end();
}

fn read_streams(db: &Varve, want: &Want, backward: bool) {
    let mut stage = Stage::start(if backward { "read_stream_backward" } else { "read_stream" });
    for (stream, seqs) in &want.seqs {
        let Some(view) = view(db, &mut stage) else { continue };
        let read = if backward {
            view.read_stream_backward(*stream, u32::MAX)
        } else {
            view.read_stream(*stream, 1)
        };
        let events = match read {
            Ok(events) => events,
            Err(e) => {
                stage.error(&e);
                continue;
            }
        };
        // The version handed out last, to check the order; the end before the first.
        let mut last: u32 = if backward { u32::MAX } else { 0 };
        let (mut handed, mut errors) = (0usize, 0usize);
        for item in events {
            if handed + errors > endless(seqs.len()) {
                stage.endless(&format!("stream {stream:x}: {handed} events and {errors} errors"));
                break;
            }
            let e = match item {
                Ok(e) => e,
                Err(e) => {
                    stage.error(&e);
                    errors += 1;
                    continue;
                }
            };
            let version = e.version();
            let in_order = if backward { version < last } else { version > last };
            let seq = version.checked_sub(1).and_then(|i| seqs.get(i as usize));
            if e.stream().as_u128() != *stream {
                stage.wrong(&format!("stream {:x}: an event of stream {}", stream, e.stream()));
            } else if !in_order {
                stage.wrong(&format!("stream {stream:x}: version {version} after version {last}"));
            } else if let Some(&seq) = seq {
                if let Some(what) = want.event(&e, seq) {
                    stage.wrong(&format!("stream {stream:x} version {version}: {what}"));
                }
            } else {
                stage
                    .wrong(&format!("stream {stream:x}: version {version}, past the {} written", seqs.len()));
            }
            last = version;
            handed += 1;
        }
        if errors == 0 && handed != seqs.len() {
            stage.wrong(&format!("stream {stream:x}: {handed} events and no error, {} written", seqs.len()));
        }
    }
    stage.end();
}

fn events(db: &Varve, want: &Want) {
    let mut stage = Stage::start("event");
    let mut current = None;
    for seq in 0..=EVENTS as u64 + 1 {
        if current.is_none() {
            current = view(db, &mut stage);
        }
        let Some(v) = &current else { continue };
        let failed = match v.event(seq) {
            Ok(Some(e)) => {
                if let Some(what) = want.event(&e, seq) {
                    stage.wrong(&what);
                }
                false
            }
            Ok(None) if (1..=EVENTS as u64).contains(&seq) => {
                stage.wrong(&format!("seq {seq}: none"));
                false
            }
            Ok(None) => false,
            Err(e) => {
                stage.error(&e);
                true
            }
        };
        if failed {
            // LMDB may have failed the whole transaction: the next seq gets a new view.
            current = None;
        }
    }
    stage.end();
}

/// The values read without a record's checksum: the last seq, and each stream's head.
fn heads(db: &Varve, want: &Want) {
    let mut stage = Stage::start("heads");
    if let Some(view) = view(db, &mut stage) {
        match view.last_seq() {
            Ok(last) if last != EVENTS as u64 => stage.wrong(&format!("last seq {last}")),
            Ok(_) => {}
            Err(e) => stage.error(&e),
        }
    }
    for ((stream, seqs), kind) in want.seqs.iter().zip(&want.kinds) {
        let Some(view) = view(db, &mut stage) else { continue };
        let head = view.stream_version(*stream).and_then(|v| Ok((v, view.stream_kind(*stream)?)));
        match head {
            Ok((version, found)) => {
                let written = (Some(seqs.len() as u32), *kind);
                if (version, found) != written {
                    stage.wrong(&format!(
                        "stream {stream:x}: head {:?}, written {written:?}",
                        (version, found)
                    ));
                }
            }
            Err(e) => stage.error(&e),
        }
    }
    stage.end();
}
