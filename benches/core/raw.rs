//! The raw-heed baseline: what a careful raw-heed user would write for the same data, the
//! limit of what LMDB allows for our design.
//!
//! One write transaction per call holding the `events` table (`seq u64 BE` → value of the
//! same size as our envelope, put with `APPEND`) and the `streams` index (`stream u128 BE ‖
//! version u32 BE` → `seq u64 LE`), committed durably. It keeps the next seq and each
//! stream's version in memory (loaded from the index on first use, updated after the
//! commit), so it writes no `stream_heads` entry, reads nothing before writing, and computes
//! no checksum.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, PutFlags};
use varvedb::rkyv;
use varvedb::rkyv::util::AlignedVec;

use crate::{
    Account, ArchivedPayment, FIXED_LEN, Latency, MAP_SIZE, Res, SPREAD_STREAMS, Sample, Shape, TAG,
};

type Table = Database<Bytes, Bytes>;

pub(crate) fn archive(i: u64) -> Res<AlignedVec> {
    Ok(rkyv::to_bytes::<rkyv::rancor::Error>(&crate::payment(i))?)
}

pub(crate) struct Raw {
    pub(crate) env: Env,
    pub(crate) events: Table,
    streams: Table,
    next_seq: u64,
    versions: HashMap<u128, u32>,
    staged: HashMap<u128, u32>,
    buf: Vec<u8>,
}

impl Raw {
    pub(crate) fn open(dir: &Path) -> Res<Self> {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE).max_dbs(2);
        // SAFETY: a fresh directory that nothing else maps or modifies, opened once.
        let env = unsafe { options.open(dir) }?;
        let mut wtxn = env.write_txn()?;
        let events: Table = env.create_database(&mut wtxn, Some("events"))?;
        let streams: Table = env.create_database(&mut wtxn, Some("streams"))?;
        let next_seq = events.last(&wtxn)?.map_or(Ok(0), |(k, _)| k.try_into().map(u64::from_be_bytes))? + 1;
        wtxn.commit()?;
        Ok(Raw {
            env,
            events,
            streams,
            next_seq,
            versions: HashMap::new(),
            staged: HashMap::new(),
            buf: Vec::new(),
        })
    }

    /// Appends `items` (stream, archived payload) in one durable transaction; returns the
    /// seq of the last one.
    pub(crate) fn write(&mut self, items: &[(u128, AlignedVec)]) -> Res<u64> {
        let mut wtxn = self.env.write_txn()?;
        let timestamp = crate::now_micros();
        let mut seq = self.next_seq;
        self.staged.clear();
        for (stream, payload) in items {
            let stream = *stream;
            let version = if let Some(v) = self.staged.get_mut(&stream) {
                *v += 1;
                *v
            } else {
                let current = match self.versions.get(&stream) {
                    Some(&v) => v,
                    None => match self.streams.rev_prefix_iter(&wtxn, &stream.to_be_bytes())?.next() {
                        Some(entry) => u32::from_be_bytes(entry?.0[16..].try_into()?),
                        None => 0,
                    },
                };
                self.staged.insert(stream, current + 1);
                current + 1
            };
            encode(&mut self.buf, stream, version, timestamp, payload);
            self.events.put_with_flags(&mut wtxn, PutFlags::APPEND, &seq.to_be_bytes(), &self.buf)?;
            let mut index_key = [0u8; 20];
            index_key[..16].copy_from_slice(&stream.to_be_bytes());
            index_key[16..].copy_from_slice(&version.to_be_bytes());
            self.streams.put(&mut wtxn, &index_key, &seq.to_le_bytes())?;
            seq += 1;
        }
        wtxn.commit()?;
        self.next_seq = seq;
        self.versions.extend(self.staged.drain());
        Ok(seq - 1)
    }

    /// The stored value of `seq`.
    pub(crate) fn value_len(&self, seq: u64) -> Res<usize> {
        let rtxn = self.env.read_txn()?;
        Ok(self.events.get(&rtxn, &seq.to_be_bytes())?.ok_or("no such event")?.len())
    }
}

/// Writes into `buf` a value of the same size as our envelope: its 30 fixed bytes (4 unused
/// where we keep the checksum; flags, tag length, stream, timestamp), the version and schema
/// version (1) as LEB128 numbers (no metadata, so no metadata length), the type tag, the
/// payload. The redb peer stores the same values.
pub(crate) fn encode(buf: &mut Vec<u8>, stream: u128, version: u32, timestamp: u64, payload: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&[0, 0, 0, 0, 0, TAG.len() as u8]);
    buf.extend_from_slice(&stream.to_le_bytes());
    buf.extend_from_slice(&timestamp.to_le_bytes());
    let mut v = version;
    while v >= 0x80 {
        buf.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
    buf.push(1);
    buf.extend_from_slice(TAG.as_bytes());
    buf.extend_from_slice(payload);
}

/// The payload inside a baseline value, parsed from its header: the rest after the tag.
fn payload(value: &[u8]) -> Res<&[u8]> {
    let mut at = FIXED_LEN;
    for _ in 0..2 {
        while *value.get(at).ok_or("short value")? & 0x80 != 0 {
            at += 1;
        }
        at += 1;
    }
    let tag_len = usize::from(*value.get(5).ok_or("short value")?);
    Ok(value.get(at + tag_len..).ok_or("short value")?)
}

/// The validated payload of a baseline value.
pub(crate) fn access(value: &[u8]) -> Res<&ArchivedPayment> {
    Ok(rkyv::access::<ArchivedPayment, rkyv::rancor::Error>(payload(value)?)?)
}

/// Appends for `time`; the same calls as ours, built the same way (each event archived inside
/// the timed loop).
pub(crate) fn append(dir: &Path, shape: Shape, time: Duration) -> Res<Sample> {
    let mut raw = Raw::open(dir)?;
    let ids = crate::spread_ids();
    let mut n = 0u64;
    let start = Instant::now();
    loop {
        let items = match shape {
            Shape::OneStream { batch } => {
                (n..n + batch).map(|i| Ok((ids[0], archive(i)?))).collect::<Res<Vec<_>>>()?
            }
            Shape::Spread { batch } => (n..n + batch)
                .map(|i| Ok((ids[(i % SPREAD_STREAMS as u64) as usize], archive(i)?)))
                .collect::<Res<Vec<_>>>()?,
        };
        raw.write(&items)?;
        n += items.len() as u64;
        if start.elapsed() >= time {
            return Ok(Sample::new(n, start.elapsed()));
        }
    }
}

/// `per` events in each of `ids`, interleaved (event i to stream i mod `ids.len()`).
pub(crate) fn populate_log(raw: &mut Raw, ids: &[u128], per: u64) -> Res<()> {
    let total = ids.len() as u64 * per;
    let mut i = 0;
    while i < total {
        let end = (i + crate::POPULATE_BATCH).min(total);
        let items = (i..end).map(|j| Ok((ids[(j % ids.len() as u64) as usize], archive(j)?)));
        raw.write(&items.collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

pub(crate) fn populate_single(raw: &mut Raw, stream: u128, n: u64) -> Res<()> {
    let mut i = 0;
    while i < n {
        let end = (i + crate::POPULATE_BATCH).min(n);
        raw.write(&(i..end).map(|j| Ok((stream, archive(j)?))).collect::<Res<Vec<_>>>()?)?;
        i = end;
    }
    Ok(())
}

/// W3: iterate the events table, validate and fold each payload.
pub(crate) fn scan(raw: &Raw) -> Res<Sample> {
    let start = Instant::now();
    let rtxn = raw.env.read_txn()?;
    let mut acc = Account::default();
    for entry in raw.events.iter(&rtxn)? {
        acc.apply(access(entry?.1)?);
    }
    drop(rtxn);
    let elapsed = start.elapsed();
    Ok(Sample::new(black_box(acc).events, elapsed))
}

/// W4: per stream, a read transaction, the index prefix range, one `get` per entry, then
/// validate and fold each payload.
pub(crate) fn fold(raw: &Raw, ids: &[u128]) -> Res<Sample> {
    let start = Instant::now();
    let mut events = 0;
    for id in ids {
        let rtxn = raw.env.read_txn()?;
        let mut acc = Account::default();
        for entry in raw.streams.prefix_iter(&rtxn, &id.to_be_bytes())? {
            let seq = u64::from_le_bytes(entry?.1.try_into()?);
            let value = raw.events.get(&rtxn, &seq.to_be_bytes())?.ok_or("index points at a missing seq")?;
            acc.apply(access(value)?);
        }
        events += black_box(acc).events;
    }
    Ok(Sample::new(events, start.elapsed()))
}

/// W5a baseline: LMDB has no notification, so this is the least a subscriber needs: the
/// writer sends the seq down a channel after the commit, and a reader thread takes it, opens
/// a read transaction, gets the event and validates it.
pub(crate) fn latency(dir: &Path, samples: u64) -> Res<Vec<Latency>> {
    let mut raw = Raw::open(dir)?;
    let (env, events) = (raw.env.clone(), raw.events);
    std::thread::scope(|scope| -> Res<Vec<Latency>> {
        // Made in here so that an early return drops the sender and the reader ends.
        let (seqs, seqs_rx) = mpsc::channel::<u64>();
        let (receipts, receipts_rx) = mpsc::channel::<Result<Instant, String>>();
        scope.spawn(move || {
            for seq in seqs_rx {
                let got = (|| -> Res<()> {
                    let rtxn = env.read_txn()?;
                    let value = events.get(&rtxn, &seq.to_be_bytes())?.ok_or("missing after commit")?;
                    black_box(access(value)?.amount.to_native());
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
            let seq = raw.write(&[(crate::SINGLE_STREAM, archive(i)?)])?;
            let commit = start.elapsed();
            seqs.send(seq)?;
            let received = receipts_rx.recv()??;
            out.push(Latency { total: received - start, commit });
        }
        Ok(out)
    })
}
