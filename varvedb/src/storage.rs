//! The storage layer: the LMDB environment, every table, and their key encodings.
//!
//! This is the only module that names heed or LMDB types. Of the crate's `unsafe` code, it
//! holds the LMDB calls and the operating system calls on the store's files (`sys`);
//! `record` and `crc` hold the rest (see `docs/design.md`). The submodule `files` manages
//! the store's directory and its files around LMDB: creation, the lock file, the reader
//! table.
//! The byte layout of every key and value is documented in `docs/design.md`; the format
//! version stored in `meta` guards it.

use std::cmp::Ordering;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};

use heed::types::Bytes;
use heed::{
    CompactionOption, Comparator, Database, Env, EnvFlags, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn,
    WithoutTls,
};

use crate::error::{Error, StorageError};

mod ahead;
mod checkpoint;
mod files;
mod map_log;
mod redo;
mod sync;

pub(crate) use files::prepare_dir;
pub(crate) use sync::Ticket;

/// On-disk format version written to `meta` on creation and checked on every open.
/// Versions 1 (plain) and 3 (encrypted) are the formats before the compact stream index and
/// records; they are refused (see `prepare_tables`). Versions 4 to 9 are upgraded in place
/// (see [`FORMAT_BEFORE_TAILS`], [`FORMAT_BEFORE_RECORDS`] and
/// [`FORMAT_BEFORE_CHECKPOINTS`]).
pub(crate) const FORMAT_VERSION: u32 = 10;
/// The format version of an encrypted store. Same layout, but every record is sealed, every
/// key derives from the master key and the store's identity, and the `keys` table is
/// authenticated: a build that knows only the plain format refuses such a store instead of
/// appending plaintext to it.
pub(crate) const ENCRYPTED_FORMAT_VERSION: u32 = 11;
/// The plain format before relaxed handles' checkpoints (`storage/checkpoint.rs`): a build
/// that knows it not would open a store after a power loss without taking it back to its
/// last checkpoint, and would write it beside a relaxed handle. A write open records the new
/// version; nothing else changes.
pub(crate) const FORMAT_BEFORE_CHECKPOINTS: u32 = 8;
/// The encrypted format before relaxed handles' checkpoints.
pub(crate) const ENCRYPTED_FORMAT_BEFORE_CHECKPOINTS: u32 = 9;
/// The plain format before the commit record area (`storage/redo.rs`): a build that knows
/// it not would open a store after a power loss without applying the record of its last
/// acknowledged commit. A write open adds the area, in the transaction that records the new
/// version.
pub(crate) const FORMAT_BEFORE_RECORDS: u32 = 6;
/// The encrypted format before the commit record area.
pub(crate) const ENCRYPTED_FORMAT_BEFORE_RECORDS: u32 = 7;
/// The plain format before stream heads held their stream's newest index entries: every
/// chunk of entries, full or not, was in `streams`. A write open moves each stream's
/// partial chunk into its head, in the transaction that records the new version.
pub(crate) const FORMAT_BEFORE_TAILS: u32 = 4;
/// The encrypted format before stream heads held their stream's newest index entries.
pub(crate) const ENCRYPTED_FORMAT_BEFORE_TAILS: u32 = 5;

/// Keys of the `meta` table.
pub(crate) mod meta_key {
    pub(crate) const FORMAT_VERSION: &[u8] = b"format_version";
    pub(crate) const CREATED_AT_MICROS: &[u8] = b"created_at_micros";
    /// Present in encrypted stores: the master key's epoch and a check value (see `crypto`).
    pub(crate) const ENCRYPTION: &[u8] = b"encryption";
    /// The store's identity: 16 random bytes, written when the store is created (or when
    /// encryption is turned on in a store without one).
    pub(crate) const STORE_ID: &[u8] = b"store_id";
    /// Present in encrypted stores: the authenticator of the `keys` table (see `crypto`).
    pub(crate) const KEYS_AUTH: &[u8] = b"keys_auth";
    /// Present, one byte 1, when the store keeps the Merkle tree over the log (the `merkle`
    /// table; see `tlog`).
    pub(crate) const MERKLE_TREE: &[u8] = b"merkle_tree";
    /// Present once a stream was shredded or the master key rotated: how many times, `u64
    /// LE`. A replication publisher looks for key changes no event carries when it moves.
    pub(crate) const KEY_CHANGES: &[u8] = b"key_changes";
    /// The commit record area (see `storage/redo.rs`): written in place, never through LMDB
    /// after its creation.
    pub(crate) const COMMIT_RECORDS: &[u8] = b"commit_records";
}

/// Table names. Renaming one is a format change.
mod name {
    pub(super) const EVENTS: &str = "events";
    pub(super) const STREAMS: &str = "streams";
    pub(super) const STREAM_HEADS: &str = "stream_heads";
    pub(super) const EVENT_IDS: &str = "event_ids";
    pub(super) const BLOBS: &str = "blobs";
    pub(super) const CHECKPOINTS: &str = "checkpoints";
    pub(super) const PROJECTIONS: &str = "projections";
    pub(super) const KEYS: &str = "keys";
    pub(super) const SCHEMA: &str = "schema";
    pub(super) const SNAPSHOTS: &str = "snapshots";
    pub(super) const META: &str = "meta";
    pub(super) const SHREDDED_HEADERS: &str = "shredded_headers";
    pub(super) const MERKLE: &str = "merkle";
    pub(super) const ALL: [&str; 13] = [
        EVENTS,
        STREAMS,
        STREAM_HEADS,
        EVENT_IDS,
        BLOBS,
        CHECKPOINTS,
        PROJECTIONS,
        KEYS,
        SCHEMA,
        SNAPSHOTS,
        META,
        SHREDDED_HEADERS,
        MERKLE,
    ];
}

/// A transaction as reads see it: a read transaction, or a write transaction with its own
/// writes.
pub(crate) type Txn<'env> = RoTxn<'env, WithoutTls>;

/// A read transaction. Without thread-local reader slots, so it may move between threads.
pub(crate) struct ReadTxn<'env> {
    // Ends before it stops counting as live.
    txn: RoTxn<'env, WithoutTls>,
    _live: Live<'env>,
}

impl<'env> std::ops::Deref for ReadTxn<'env> {
    type Target = RoTxn<'env, WithoutTls>;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

/// A write transaction: the writer's, a projection step's, or a key operation's.
pub(crate) struct WriteTxn<'env> {
    // Ends before it stops counting as live.
    txn: RwTxn<'env>,
    /// Marks this thread as holding LMDB's write lock, until the transaction has ended.
    open: OpenWriteTxn,
    _live: Live<'env>,
    /// The changes made through the storage's write calls, for the commit record of a
    /// transaction begun with [`Storage::write_txn_recorded`]. Every change of a
    /// `WriteTxn` goes through those calls: it gives no mutable access to LMDB's
    /// transaction otherwise.
    redo: Option<redo::Capture>,
    /// This process's turn to write (see `Storage::write_gate`). Dropped last.
    gate: GateGuard<'env>,
}

thread_local! {
    /// The address of the gate this thread holds (0: none).
    static HOLDS_GATE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The gate of the store whose [`WriteTxn`] this thread has under way, and so whose
    /// LMDB write lock it holds (0: none).
    static IN_WRITE_TXN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's write transaction, under way: a checkpoint of the same store asked for
/// inside it (a flush inside a projection step) must not take LMDB's write lock again. One of
/// another store (a handler that syncs another store) takes that store's lock as usual.
struct OpenWriteTxn {
    /// What this thread had under way before (another store's transaction).
    previous: usize,
}

impl OpenWriteTxn {
    fn mark(gate: &Mutex<()>) -> Self {
        OpenWriteTxn { previous: IN_WRITE_TXN.with(|t| t.replace(std::ptr::from_ref(gate) as usize)) }
    }
}

impl Drop for OpenWriteTxn {
    fn drop(&mut self) {
        IN_WRITE_TXN.with(|t| t.set(self.previous));
    }
}

/// Whether this thread has a write transaction of the store with this gate under way.
fn in_write_txn(gate: &Mutex<()>) -> bool {
    IN_WRITE_TXN.with(std::cell::Cell::get) == std::ptr::from_ref(gate) as usize
}

/// [`Storage::write_gate`], held; this thread knows it holds it.
struct GateGuard<'a> {
    _guard: std::sync::MutexGuard<'a, ()>,
    /// What this thread held before (another store's gate, inside a step of that store).
    previous: usize,
}

impl<'a> GateGuard<'a> {
    fn take(gate: &'a Mutex<()>) -> Self {
        let guard = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = HOLDS_GATE.with(|h| h.replace(std::ptr::from_ref(gate) as usize));
        GateGuard { _guard: guard, previous }
    }

    /// The gate for a flush: `None` when this thread holds it already (a flush asked for
    /// inside a projection step of this store).
    fn for_flush(gate: &'a Mutex<()>) -> Option<Self> {
        (HOLDS_GATE.with(std::cell::Cell::get) != std::ptr::from_ref(gate) as usize).then(|| Self::take(gate))
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        HOLDS_GATE.with(|h| h.set(self.previous));
    }
}

impl<'env> std::ops::Deref for WriteTxn<'env> {
    type Target = RwTxn<'env>;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

/// One of the store's tables: LMDB's handle, and the table's number, by which commit
/// records name it (part of the format: see `docs/design.md`, "Durability").
#[derive(Clone, Copy)]
pub(crate) struct Table {
    db: Database<Bytes, Bytes, KeyComparator>,
    code: u8,
}

impl std::ops::Deref for Table {
    type Target = Database<Bytes, Bytes, KeyComparator>;

    fn deref(&self) -> &Self::Target {
        &self.db
    }
}

impl Table {
    fn named(db: Database<Bytes, Bytes, KeyComparator>, table: &str) -> Table {
        let code = match table {
            name::EVENTS => 0,
            name::STREAMS => 1,
            name::STREAM_HEADS => 2,
            name::EVENT_IDS => 3,
            name::BLOBS => 4,
            name::CHECKPOINTS => 5,
            name::PROJECTIONS => 6,
            name::KEYS => 7,
            name::SCHEMA => 8,
            name::SNAPSHOTS => 9,
            name::META => 10,
            name::SHREDDED_HEADERS => 11,
            name::MERKLE => 12,
            other => unreachable!("table `{other}` has no number in commit records"),
        };
        Table { db, code }
    }
}

/// LMDB's default order of keys, computed 8 bytes at a time.
///
/// The order is exactly the default one (`mdb_cmp_memn`: bytes compared as unsigned, then
/// a key that is a prefix of another first), so the files are the same and stay readable
/// by any build or tool that uses the default; LMDB asks that every user of a table compare
/// its keys the same, and this compares them the same. What changes is the cost: LMDB's
/// default calls `memcmp` for every comparison, a dozen or more per lookup, on keys of 8 to
/// 32 bytes; comparing big-endian words gives the same answer as comparing their bytes in
/// order, in a few instructions.
pub(crate) enum KeyComparator {}

impl Comparator for KeyComparator {
    #[inline]
    fn compare(a: &[u8], b: &[u8]) -> Ordering {
        // Two seqs: the dozen or so comparisons of every lookup in the log.
        if let (Ok(x), Ok(y)) = (<&[u8; 8]>::try_from(a), <&[u8; 8]>::try_from(b)) {
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
        let (mut a, mut b) = (a, b);
        while let (Some((x, a_rest)), Some((y, b_rest))) =
            (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
        {
            if x != y {
                return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
            }
            (a, b) = (a_rest, b_rest);
        }
        if let (Some((x, a_rest)), Some((y, b_rest))) =
            (a.split_first_chunk::<4>(), b.split_first_chunk::<4>())
        {
            if x != y {
                return u32::from_be_bytes(*x).cmp(&u32::from_be_bytes(*y));
            }
            (a, b) = (a_rest, b_rest);
        }
        // Fewer than 4 bytes left on one side at least.
        for (x, y) in a.iter().zip(b) {
            if x != y {
                return x.cmp(y);
            }
        }
        a.len().cmp(&b.len())
    }
}

/// Key-value pairs borrowed from a read transaction, in key order (or reverse). A concrete
/// type, not a boxed iterator: scans call `next` once per event.
pub(crate) struct Entries<'t> {
    inner: EntriesInner<'t>,
    map_size: usize,
}

enum EntriesInner<'t> {
    Forward(heed::RoRange<'t, Bytes, Bytes, KeyComparator>),
    Backward(heed::RoRevRange<'t, Bytes, Bytes, KeyComparator>),
}

impl<'t> Iterator for Entries<'t> {
    type Item = Result<(&'t [u8], &'t [u8]), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let next = match &mut self.inner {
            EntriesInner::Forward(it) => it.next()?,
            EntriesInner::Backward(it) => it.next()?,
        };
        Some(next.map_err(|e| storage_error(e, self.map_size)))
    }
}

/// One stream's index entries, `(version, seq)`, in version order (or reverse) from a
/// bound: the full chunks of a range of `streams` and the tail in the stream's head,
/// decoded one at a time. A chunk that does
/// not decode is an [`Error::CorruptIndex`] in its place, and the entries go on with the
/// next one; the versions it held are then missing, which a stream read reports.
pub(crate) struct StreamIndex<'t> {
    chunks: Entries<'t>,
    /// The error of a head that does not decode, handed out first.
    damaged_head: Option<Error>,
    /// The tail from the stream's head and its chunk, while it is still to be handed out:
    /// after the chunks forward, before them backward.
    tail: Option<(&'t [u8], u32)>,
    stream: u128,
    reverse: bool,
    /// Forward, the first version handed out; backward, the last.
    bound: u64,
    seqs: [u64; value::INDEX_CHUNK],
    len: usize,
    /// Forward, the next entry of `seqs` to hand out; backward, one past it.
    at: usize,
    /// The version of `seqs[0]`.
    first_version: u64,
    /// A forward read is past the stream's chunks: it met the first key of another stream,
    /// or the table's end.
    ended: bool,
}

impl Iterator for StreamIndex<'_> {
    type Item = Result<(u32, u64), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.damaged_head.is_some() {
            return self.damaged_head.take().map(Err);
        }
        loop {
            let at = if self.reverse {
                if self.at == 0 {
                    None
                } else {
                    self.at -= 1;
                    Some(self.at)
                }
            } else if self.at < self.len {
                self.at += 1;
                Some(self.at - 1)
            } else {
                None
            };
            if let Some(at) = at {
                let version = self.first_version + at as u64;
                if (self.reverse && version > self.bound) || (!self.reverse && version < self.bound) {
                    continue;
                }
                // Past `u32::MAX` only in the last chunk of versions, holding 64 entries.
                return Some(match u32::try_from(version) {
                    Ok(version) => Ok((version, self.seqs[at])),
                    Err(_) => Err(damaged_chunk(self.stream, u32::MAX / key::INDEX_CHUNK)),
                });
            }
            (self.len, self.at) = (0, 0);
            let next =
                if self.ended || (self.reverse && self.tail.is_some()) { None } else { self.chunks.next() };
            let (k, v) = match next {
                Some(Ok(kv)) => kv,
                Some(Err(e)) => return Some(Err(e)),
                None => {
                    let (tail, chunk) = self.tail.take()?;
                    self.ended = !self.reverse;
                    let Some(n) = value::decode_index_chunk(tail, &mut self.seqs) else {
                        return Some(Err(damaged_tail(self.stream, chunk)));
                    };
                    self.len = n;
                    self.at = if self.reverse { n } else { 0 };
                    self.first_version = u64::from(chunk) * u64::from(key::INDEX_CHUNK) + 1;
                    continue;
                }
            };
            if k.get(..16) != Some(&key::stream(self.stream)[..]) {
                // Only forward, past the stream's last chunk.
                self.ended = true;
                continue;
            }
            let Some((stream, chunk)) = key::decode_stream_chunk(k) else {
                return Some(Err(Error::CorruptIndex {
                    table: "streams",
                    reason: format!(
                        "a key among stream {}'s entries is not 20 bytes",
                        crate::id::StreamId::from(self.stream)
                    ),
                }));
            };
            let Some(n) = value::decode_index_chunk(v, &mut self.seqs) else {
                return Some(Err(damaged_chunk(stream, chunk)));
            };
            self.len = n;
            self.at = if self.reverse { n } else { 0 };
            self.first_version = u64::from(chunk) * u64::from(key::INDEX_CHUNK) + 1;
        }
    }
}

/// The index entries of `stream` from chunk `chunk` on do not decode: those in its head's
/// tail, or a full chunk in `streams`.
#[cold]
fn damaged_entries(stream: u128, chunk: u32, in_head: bool) -> Error {
    let first = u64::from(chunk) * u64::from(key::INDEX_CHUNK) + 1;
    let (table, place) = if in_head { ("stream_heads", ", in its head,") } else { ("streams", "") };
    Error::CorruptIndex {
        table,
        reason: format!(
            "the entries of stream {} from version {first}{place} cannot be decoded",
            crate::id::StreamId::from(stream)
        ),
    }
}

#[cold]
fn damaged_tail(stream: u128, chunk: u32) -> Error {
    damaged_entries(stream, chunk, true)
}

#[cold]
fn damaged_chunk(stream: u128, chunk: u32) -> Error {
    damaged_entries(stream, chunk, false)
}

/// Asks the CPU to bring the cache lines of `bytes` (its first 256 bytes at most) into its
/// cache, so that a read of them a little later does not wait for memory. A hint: it
/// changes no result, and costs a few instructions.
#[inline]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        if bytes.is_empty() {
            return;
        }
        let start = bytes.as_ptr();
        // From the line that holds the first byte, so that the last line is not missed.
        let first = start.wrapping_sub(start as usize % LINE);
        let end = start.wrapping_add(bytes.len().min(4 * LINE));
        let mut line = first;
        while line < end {
            // SAFETY: `_mm_prefetch` is unsafe only for its `sse` target feature, which this
            // block is compiled with (every x86_64 CPU has it); it never dereferences its
            // pointer and cannot fault, and every line asked for holds bytes of `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast::<i8>()) };
            line = line.wrapping_add(LINE);
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    let _ = bytes;
}

/// The log's entries from a seq on, in order: walked straight from the map's pages
/// ([`map_log`]) where it can be, and otherwise through LMDB's cursor: [`Entries`] over a
/// range, or, from the start of the log, a plain iteration, which spares a range's checks on
/// every step.
pub(crate) struct LogEntries<'t> {
    inner: LogEntriesInner<'t>,
    map_size: usize,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per read, moved once: a walk's path of pages is as deep as LMDB allows"
)]
enum LogEntriesInner<'t> {
    /// A walk of the map, and what LMDB's cursor needs to go on where the walk cannot.
    Map {
        walk: map_log::Walk<'t>,
        txn: &'t RoTxn<'t, WithoutTls>,
        storage: &'t Storage,
    },
    Range(Entries<'t>),
    /// The table from its first entry, those with keys below `skip_below` left out: the
    /// entries of a range from that bound. Once one key is at or above the bound, every
    /// later one is too.
    FromFirst {
        iter: heed::RoIter<'t, Bytes, Bytes>,
        skip_below: Option<[u8; key::SEQ_LEN]>,
    },
    /// LMDB's cursor could not be opened where a walk stopped: the error, handed out once.
    Failed(Option<Error>),
}

impl<'t> LogEntries<'t> {
    /// Entries from `from` on through LMDB's cursor.
    fn lmdb(
        txn: &'t RoTxn<'t, WithoutTls>,
        events: Table,
        from: u64,
        map_size: usize,
        err: impl Fn(heed::Error) -> Error,
    ) -> Result<Self, Error> {
        let from = key::seq(from);
        let inner = if from <= key::seq(1) {
            // No entry of a sound log is below seq 1: from there, the log is read from its
            // first entry, and anything below the bound is skipped as a range would.
            let iter = events.iter(txn).map_err(err)?;
            LogEntriesInner::FromFirst { iter, skip_below: Some(from) }
        } else {
            let bounds = (Bound::Included(&from[..]), Bound::Unbounded);
            LogEntriesInner::Range(Entries {
                inner: EntriesInner::Forward(events.range(txn, &bounds).map_err(err)?),
                map_size,
            })
        };
        Ok(LogEntries { inner, map_size })
    }

    /// LMDB's cursor takes over from a walk that met what it does not read: from the last
    /// entry the walk gave, stepping on from it as LMDB's cursor would have, so that an entry
    /// whose key damage sorts below it is still handed out (and reported by the reader);
    /// from where the walk began if it gave none.
    #[cold]
    #[inline(never)]
    fn hand_over(&mut self) {
        let LogEntriesInner::Map { walk, txn, storage } = &self.inner else { return };
        let (txn, storage, events) = (*txn, *storage, storage.tables.events);
        let entries = match walk.last() {
            Some(last) => {
                let last = key::seq(last);
                let bounds = (Bound::Excluded(&last[..]), Bound::Unbounded);
                storage.entries(txn, events, bounds, false).map(LogEntriesInner::Range)
            }
            None => Self::lmdb(txn, events, walk.from(), self.map_size, |e| storage.err(e))
                .map(|entries| entries.inner),
        };
        self.inner = entries.unwrap_or_else(|e| LogEntriesInner::Failed(Some(e)));
    }

    /// Whether the entries are still walked from the map, for tests.
    #[cfg(test)]
    pub(crate) fn walks_the_map(&self) -> bool {
        matches!(self.inner, LogEntriesInner::Map { .. })
    }
}

impl<'t> Iterator for LogEntries<'t> {
    type Item = Result<(&'t [u8], &'t [u8]), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let LogEntriesInner::Map { walk, .. } = &mut self.inner {
            match walk.next() {
                map_log::Step::Entry(k, v) => return Some(Ok((k, v))),
                map_log::Step::End => return None,
                map_log::Step::Lost => self.hand_over(),
            }
        }
        let (iter, skip_below) = match &mut self.inner {
            LogEntriesInner::FromFirst { iter, skip_below } => (iter, skip_below),
            LogEntriesInner::Range(entries) => return entries.next(),
            LogEntriesInner::Failed(e) => return e.take().map(Err),
            LogEntriesInner::Map { .. } => return None,
        };
        loop {
            // Unpacked here, not mapped: mapping moves heed's large error type through the
            // result on every entry.
            let (k, v) = match iter.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(storage_error(e, self.map_size))),
            };
            if let Some(bound) = skip_below {
                if k < &bound[..] {
                    // Below seq 0 or 1 only damage can sort: a key shorter than a seq must
                    // not pass unseen by a read of the whole log (nor by `check_integrity`).
                    if k.len() != key::SEQ_LEN {
                        return Some(Err(Error::CorruptIndex {
                            table: "events",
                            reason: "key is not an 8-byte seq".into(),
                        }));
                    }
                    continue;
                }
                *skip_below = None;
            }
            return Some(Ok((k, v)));
        }
    }
}

/// Every named database of a store. Handles are plain integers, cheap to copy.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    /// `seq u64 BE` → envelope (see `record`).
    pub(crate) events: Table,
    /// `stream u128 BE ‖ chunk u32 BE` → the seqs of the stream's versions `64 chunk + 1`
    /// to `64 chunk + 64`, as LEB128 differences (see [`value::decode_index_chunk`]). Only
    /// full chunks: the entries after a stream's last full chunk are in its head.
    pub(crate) streams: Table,
    /// `stream u128 BE` → `StreamHead`: current version, optional kind, and the index
    /// entries after the stream's last full chunk (its tail).
    pub(crate) stream_heads: Table,
    /// `event id u128 BE` → `seq u64 LE`, for idempotent retries.
    pub(crate) event_ids: Table,
    /// `blake3 hash [u8; 32]` → payload bytes.
    pub(crate) blobs: Table,
    /// `processor name` → last handled seq `u64 LE`.
    pub(crate) checkpoints: Table,
    /// Projections' read models: `len u8 ‖ projection ‖ len u8 ‖ table ‖ key` → value.
    pub(crate) projections: Table,
    /// `stream u128 BE` → the stream's data key wrapped by the master key, or the shredded
    /// marker (see `crypto`).
    pub(crate) keys: Table,
    /// `tag length u8 ‖ tag ‖ schema version u32 BE` → `fingerprint u64 LE`; beside it
    /// `0u8 ‖ tag length u8 ‖ tag ‖ schema version u32 BE` → the encoded layout description;
    /// and, per aggregate kind, the events it applies: `0u8 ‖ 0u8 ‖ kind` →
    /// `value::KindEvents`. Tags are never empty, so a length byte is never 0 and the three
    /// key forms cannot meet; stores written before descriptions existed lack the second.
    pub(crate) schema: Table,
    /// `stream u128 BE` → the newest snapshot of the stream's aggregate state (see
    /// `typed::snapshot`). Derived data: deleting any or all of it is always safe.
    pub(crate) snapshots: Table,
    /// `name` → value; holds the format version.
    pub(crate) meta: Table,
    /// `seq u64 BE` → MAC of a shredded event's clear header, under a key derived from the
    /// master key (see `crypto`): what keeps the header authenticated once its data key is gone.
    pub(crate) shredded_headers: Table,
    /// The Merkle tree over the log, in tiles: `tile level u8 ‖ tile index u64 BE` → up to
    /// 16 node hashes of 32 bytes (see `tlog`).
    pub(crate) merkle: Table,
}

impl Tables {
    /// The table numbered `code` (see [`Table::named`]).
    fn by_code(&self, code: u8) -> Option<Table> {
        [
            self.events,
            self.streams,
            self.stream_heads,
            self.event_ids,
            self.blobs,
            self.checkpoints,
            self.projections,
            self.keys,
            self.schema,
            self.snapshots,
            self.meta,
            self.shredded_headers,
            self.merkle,
        ]
        .into_iter()
        .find(|t| t.code == code)
    }
}

/// Key encodings. Big-endian so LMDB's byte-wise order is numeric order.
pub(crate) mod key {
    pub(crate) const SEQ_LEN: usize = 8;
    pub(crate) const STREAM_CHUNK_LEN: usize = 20;

    pub(crate) fn seq(seq: u64) -> [u8; SEQ_LEN] {
        seq.to_be_bytes()
    }

    pub(crate) fn decode_seq(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }

    pub(crate) fn stream(stream: u128) -> [u8; 16] {
        stream.to_be_bytes()
    }

    pub(crate) fn id(id: u128) -> [u8; 16] {
        id.to_be_bytes()
    }

    /// Index entries per `streams` entry: versions `64c + 1 ..= 64c + 64` of a stream share
    /// chunk `c`. Changing it is a format change.
    pub(crate) const INDEX_CHUNK: u32 = 64;

    /// The `streams` key of the chunk of index entries that holds `version` (from 1), and the
    /// version's place in it.
    pub(crate) fn index_chunk_of(version: u32) -> (u32, usize) {
        let at = version.saturating_sub(1);
        (at / INDEX_CHUNK, (at % INDEX_CHUNK) as usize)
    }

    /// A `streams` key: `stream u128 BE ‖ chunk u32 BE`.
    pub(crate) fn stream_chunk(stream: u128, chunk: u32) -> [u8; STREAM_CHUNK_LEN] {
        let mut k = [0u8; STREAM_CHUNK_LEN];
        k[..16].copy_from_slice(&stream.to_be_bytes());
        k[16..].copy_from_slice(&chunk.to_be_bytes());
        k
    }

    /// A `schema` key, on the stack: every typed load looks one up.
    pub(crate) struct SchemaKey {
        buf: [u8; 1 + 255 + 4],
        len: usize,
    }

    impl std::ops::Deref for SchemaKey {
        type Target = [u8];

        fn deref(&self) -> &[u8] {
            &self.buf[..self.len]
        }
    }

    /// Type tags are at most 255 bytes, so the length prefix keeps keys unambiguous.
    pub(crate) fn schema(tag: &str, version: u32) -> SchemaKey {
        let tag = &tag.as_bytes()[..tag.len().min(255)];
        let mut buf = [0u8; 1 + 255 + 4];
        buf[0] = u8::try_from(tag.len()).unwrap_or(u8::MAX);
        buf[1..=tag.len()].copy_from_slice(tag);
        buf[1 + tag.len()..5 + tag.len()].copy_from_slice(&version.to_be_bytes());
        SchemaKey { buf, len: 5 + tag.len() }
    }

    /// The `schema` key of a stream kind's event list. Type tags are never empty, so two
    /// leading zeros can be neither an event's key (its length byte) nor a layout's.
    pub(crate) fn kind_events(kind: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + kind.len());
        k.extend_from_slice(&[0, 0]);
        k.extend_from_slice(kind.as_bytes());
        k
    }

    /// Whether a `schema` key is a kind's event list (see [`kind_events`]).
    pub(crate) fn is_kind_events(key: &[u8]) -> bool {
        key.starts_with(&[0, 0])
    }

    /// The `schema` key of a layout description: a zero byte, then the fingerprint's key.
    pub(crate) fn schema_layout(tag: &str, version: u32) -> Vec<u8> {
        let mut k = vec![0u8];
        k.extend_from_slice(&schema(tag, version));
        k
    }

    /// The `schema` key of a typed metadata type's layout description: `0 ‖ 255 ‖ fingerprint
    /// u64 BE`. Ten bytes, where an event layout's key with a tag length of 255 has 261 and a
    /// kind's event list has a zero second byte, so it meets neither (nor a fingerprint's key,
    /// whose first byte is a non-zero tag length).
    pub(crate) fn meta_layout(fingerprint: u64) -> [u8; 10] {
        let mut k = [0u8; 10];
        k[1] = u8::MAX;
        k[2..].copy_from_slice(&fingerprint.to_be_bytes());
        k
    }

    /// Whether a `schema` key is a metadata type's layout (see [`meta_layout`]).
    pub(crate) fn is_meta_layout(key: &[u8]) -> bool {
        key.len() == 10 && key[..2] == [0, u8::MAX]
    }

    /// The tag and version of a fingerprint's or a layout's `schema` key, and whether it is
    /// a layout's; `None` for a kind's event list and anything else.
    pub(crate) fn decode_schema(bytes: &[u8]) -> Option<(&str, u32, bool)> {
        let (layout, rest) = match bytes.split_first()? {
            (0, rest) => (true, rest),
            _ => (false, bytes),
        };
        let len = usize::from(*rest.first()?);
        if len == 0 {
            return None;
        }
        if rest.len() != 1 + len + 4 {
            return None;
        }
        let tag = std::str::from_utf8(&rest[1..=len]).ok()?;
        let version = u32::from_be_bytes(rest[1 + len..].try_into().ok()?);
        Some((tag, version, layout))
    }

    pub(crate) fn decode_stream_chunk(bytes: &[u8]) -> Option<(u128, u32)> {
        if bytes.len() != STREAM_CHUNK_LEN {
            return None;
        }
        let stream = u128::from_be_bytes(bytes[..16].try_into().ok()?);
        let chunk = u32::from_be_bytes(bytes[16..].try_into().ok()?);
        Some((stream, chunk))
    }
}

/// Value encodings shared by the writer and the readers.
pub(crate) mod value {
    pub(crate) fn seq(seq: u64) -> [u8; 8] {
        seq.to_le_bytes()
    }

    pub(crate) fn decode_seq(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    pub(crate) fn fingerprint(fp: u64) -> [u8; 8] {
        fp.to_le_bytes()
    }

    pub(crate) fn decode_fingerprint(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Most entries of a `streams` value (see [`super::key::INDEX_CHUNK`]).
    pub(crate) const INDEX_CHUNK: usize = super::key::INDEX_CHUNK as usize;

    /// Decodes a `streams` value into `out`: the seqs of consecutive versions, stored as
    /// LEB128 differences, each from the seq before (the first from 0). Returns how many;
    /// `None` for an empty or damaged value (a cut number, a difference of 0, a sum past
    /// `u64::MAX`, more than [`INDEX_CHUNK`] entries).
    pub(crate) fn decode_index_chunk(mut bytes: &[u8], out: &mut [u64; INDEX_CHUNK]) -> Option<usize> {
        let mut n = 0;
        let mut seq = 0u64;
        while !bytes.is_empty() {
            let (delta, used) = leb128(bytes)?;
            if delta == 0 || n == INDEX_CHUNK {
                return None;
            }
            seq = seq.checked_add(delta)?;
            out[n] = seq;
            n += 1;
            bytes = &bytes[used..];
        }
        (n > 0).then_some(n)
    }

    /// A LEB128 number and its length in bytes; `None` if cut short or over 64 bits.
    fn leb128(bytes: &[u8]) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for (i, &b) in bytes.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((value, i + 1));
            }
        }
        None
    }

    /// Appends `value` as LEB128.
    pub(crate) fn push_leb128(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// A kind's event list: `(tag length u8 ‖ tag ‖ schema version u32 BE)*`.
    pub(crate) fn encode_kind_events<'a>(
        events: impl IntoIterator<Item = (&'a str, u32)>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        for (tag, version) in events {
            // Type tags are validated to 1..=255 bytes before they reach here.
            let tag = &tag.as_bytes()[..tag.len().min(255)];
            out.push(u8::try_from(tag.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(tag);
            out.extend_from_slice(&version.to_be_bytes());
        }
    }

    /// Whether `(tag, version)` is in an encoded event list; `None` if it does not decode.
    pub(crate) fn kind_events_contain(mut bytes: &[u8], tag: &str, version: u32) -> Option<bool> {
        let mut found = false;
        while let Some((&len, rest)) = bytes.split_first() {
            let len = usize::from(len);
            let entry = rest.get(..len + 4)?;
            found |= &entry[..len] == tag.as_bytes() && entry[len..] == version.to_be_bytes();
            bytes = &rest[len + 4..];
        }
        Some(found)
    }

    /// Entries in a stream's tail: those of versions past its last full chunk.
    pub(crate) fn tail_len(version: u32) -> usize {
        (version % super::key::INDEX_CHUNK) as usize
    }

    /// Decodes a tail (a chunk's encoding, or nothing) into `out`; how many entries, `None`
    /// if it is damaged.
    pub(crate) fn decode_tail(bytes: &[u8], out: &mut [u64; INDEX_CHUNK]) -> Option<usize> {
        if bytes.is_empty() { Some(0) } else { decode_index_chunk(bytes, out) }
    }

    /// `stream_heads` value: `checksum u32 LE ‖ version u32 LE ‖ kind length u8 ‖ kind bytes
    /// (UTF-8) ‖ tail`.
    ///
    /// The tail is encoded as a `streams` value and holds the entries of versions
    /// `64 ⌊version / 64⌋ + 1 ..= version`: none when the version is a multiple of 64.
    /// Appends rewrite the head anyway, so keeping the newest entries in it spares each
    /// append the write of a page of `streams`, until a chunk fills and moves there.
    ///
    /// The checksum is the CRC32C of the stream id (16 bytes BE, the key) followed by the
    /// rest of the value. The head is the only copy of a stream's version, kind and newest
    /// entries, so damage to any of them, or to the key (which would give the head to another
    /// stream), must not read as another valid head.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct StreamHead<'a> {
        pub(crate) version: u32,
        pub(crate) kind: Option<&'a str>,
        pub(crate) tail: &'a [u8],
    }

    fn head_checksum(stream: u128, rest: &[u8]) -> u32 {
        crc32c::crc32c_append(crate::crc::crc32c(&stream.to_be_bytes()), rest)
    }

    /// Sets the checksum of an encoded head (at least 4 bytes) to match the rest.
    #[cfg(feature = "testing")]
    pub(crate) fn forge_head_checksum(stream: u128, head: &mut [u8]) {
        if let Some((sum, rest)) = head.split_first_chunk_mut::<4>() {
            *sum = head_checksum(stream, rest).to_le_bytes();
        }
    }

    impl<'a> StreamHead<'a> {
        /// Encodes the head of `stream`.
        pub(crate) fn encode_into(&self, stream: u128, out: &mut Vec<u8>) {
            out.clear();
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&self.version.to_le_bytes());
            let kind = self.kind.unwrap_or("");
            // Kinds are validated to at most 255 bytes before they reach here.
            out.push(u8::try_from(kind.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&kind.as_bytes()[..kind.len().min(255)]);
            out.extend_from_slice(self.tail);
            let sum = head_checksum(stream, &out[4..]);
            out[..4].copy_from_slice(&sum.to_le_bytes());
        }

        /// The head of `stream` stored in `bytes`; `None` if its checksum does not match (or
        /// it was stored under another key) or it does not decode. The tail is checked
        /// where it is read.
        pub(crate) fn decode(stream: u128, bytes: &'a [u8]) -> Option<Self> {
            let (sum, rest) = bytes.split_first_chunk::<4>()?;
            if u32::from_le_bytes(*sum) != head_checksum(stream, rest) {
                return None;
            }
            let version = u32::from_le_bytes(*rest.first_chunk::<4>()?);
            let len = usize::from(*rest.get(4)?);
            let kind = std::str::from_utf8(rest.get(5..5 + len)?).ok()?;
            let tail = &rest[5 + len..];
            Some(StreamHead { version, kind: (!kind.is_empty()).then_some(kind), tail })
        }

        /// Decodes a head as formats 4 and 5 stored it: `version u32 LE ‖ kind length u8 ‖
        /// kind`, with no checksum and no tail.
        pub(crate) fn decode_unchecked_old(bytes: &'a [u8]) -> Option<Self> {
            let version = u32::from_le_bytes(*bytes.first_chunk::<4>()?);
            let len = usize::from(*bytes.get(4)?);
            if bytes.len() != 5 + len {
                return None;
            }
            let kind = std::str::from_utf8(&bytes[5..]).ok()?;
            Some(StreamHead { version, kind: (!kind.is_empty()).then_some(kind), tail: &[] })
        }
    }
}

/// The LMDB environment and its tables.
pub(crate) struct Storage {
    // Field order is drop order. The environment closes first; only then may the lock file's
    // descriptor close (closing any descriptor of `lock.mdb` drops every fcntl lock this
    // process holds on it, LMDB's own included), and only then is the directory free for
    // another open in this process.
    /// The checkpoints of a relaxed handle (`None` otherwise). Before the environment: its
    /// pin holds a handle of it, and must end for it to close.
    relaxed: Option<Relaxed>,
    env: Env<WithoutTls>,
    pub(crate) tables: Tables,
    /// The map's size; grows when the map is moved to a size another process set.
    map_size: AtomicUsize,
    /// Where the map lies, for reads of the log straight from its pages.
    map: map_log::Map,
    txns: TxnGate,
    lock_file: files::LockFile,
    _claim: files::Claim,
    /// Set when a commit failed while writing its meta page. LMDB then refuses every later
    /// transaction of this environment (`MDB_PANIC`) until it is closed; what this holds is
    /// the error that caused it, given as the source of every refusal. Also set when a
    /// flush of `data.mdb` failed: what was written may never reach the disk, so every later
    /// transaction is refused the same way.
    fatal: OnceLock<Arc<Error>>,
    /// Which of the writer's commits are durable (see [`Storage::commit_deferred`]).
    tickets: sync::Tickets,
    /// Whether commits leave their meta page, or everything, to a later flush (see
    /// [`StorageConfig::flushes`]).
    defer_meta_sync: bool,
    /// Time spent in commits and flushes of `data.mdb`, for `Varve::stats`.
    pub(crate) flushes: sync::FlushTimes,
    /// As [`StorageConfig::read_only`].
    read_only: bool,
    /// `data.mdb`, grown ahead of LMDB by each write transaction that finds little room left
    /// past LMDB's last page (`None` when read-only).
    ahead: Option<ahead::Ahead>,
    /// The commit record area (`None` when read-only, or when commits flush their meta page
    /// before they return: then no record is needed).
    records: Option<redo::Area>,
    /// The writer's buffer for commit records, kept between transactions.
    record_buf: Mutex<Vec<u8>>,
    /// Held by every write transaction of this process from before it begins until its
    /// commit's failure is handled, and by every flush of `data.mdb` through LMDB: a flush
    /// that fails is reported once per descriptor, so a commit whose flush began after
    /// another's failed could return success without writing what that one dropped. Under
    /// the gate, the failure stops the storage (or is repaired) before any other commit.
    write_gate: Mutex<()>,
}

/// What a relaxed handle keeps for its checkpoints (see `storage/checkpoint.rs`).
struct Relaxed {
    file: checkpoint::Checkpoints,
    /// `data.mdb`, to copy meta pages from.
    data: std::fs::File,
    inode: u64,
    boot: [u8; checkpoint::BOOT_ID],
    /// One checkpoint at a time in this process. Taken after the gate and LMDB's write
    /// lock, and held through the flushes without them.
    busy: Mutex<()>,
    /// The read transaction of this handle's last checkpoint, and its transaction id: no
    /// commit reuses a page of that snapshot, or of any later one, while it lives.
    pin: Mutex<Option<(RoTxn<'static, WithoutTls>, u64)>>,
    /// The bytes up to LMDB's last page in use in the pinned snapshot.
    pinned_used: std::sync::atomic::AtomicU64,
    /// The transaction id of the pin of a checkpoint under way (0 if none).
    pending: std::sync::atomic::AtomicU64,
    /// The process that opened the store: a forked child's copy of the pin is its
    /// parent's reader slot, which ending the pin there would free.
    pid: u32,
}

impl Drop for Relaxed {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            let pin = self.pin.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            std::mem::forget(pin);
        }
    }
}

impl Relaxed {
    /// Pages LMDB may take past the pinned snapshot's before a commit makes a checkpoint of
    /// its own: a pin keeps every page freed after it from reuse, so under a stream of
    /// commits faster than the timed checkpoints the file would grow by all they write.
    const MAX_PINNED_GROWTH: u64 = 64 << 20;

    fn open(dir: &Path) -> Result<Self, Error> {
        let io = |e| io_error(e, dir);
        let file = checkpoint::Checkpoints::open(dir).map_err(io)?;
        // The file's name is durable before any commit relies on it.
        sync_dir(dir).map_err(io)?;
        Ok(Relaxed {
            file,
            data: std::fs::File::open(dir.join("data.mdb")).map_err(io)?,
            inode: checkpoint::data_inode(dir).map_err(io)?,
            boot: checkpoint::boot_id(),
            busy: Mutex::new(()),
            pin: Mutex::new(None),
            pinned_used: std::sync::atomic::AtomicU64::new(0),
            pending: std::sync::atomic::AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    /// The transaction ids of this handle's pins: the last checkpoint's, and the one of a
    /// checkpoint under way (0 if none).
    fn pinned(&self) -> [u64; 2] {
        let last = self
            .pin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |(_, t)| *t);
        [last, self.pending.load(std::sync::atomic::Ordering::Relaxed)]
    }

    /// Makes a checkpoint of the store's last commit. `lock` keeps every commit out while
    /// the last one is pinned and its meta page read (LMDB's write lock, taken or already
    /// held by this thread). Errors: `Err((e, true))` when the store's durability is in
    /// doubt (a failed flush, or a failed write of the entry); `Err((e, false))` when the
    /// checkpoint was not made and nothing was lost.
    fn checkpoint<G>(
        &self,
        env: &Env<WithoutTls>,
        dir: &Path,
        map_size: usize,
        mut lock: impl FnMut() -> Result<G, Error>,
    ) -> Result<(), (Error, bool)> {
        let (pin, txnid, meta, _one) = loop {
            let held = lock().map_err(|e| (e, false))?;
            // After the gate and LMDB's lock; but a checkpoint in its flushes holds neither,
            // and this one waits for it without them, so commits go on meanwhile.
            let one = match self.busy.try_lock() {
                Ok(one) => one,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    drop(held);
                    drop(self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                    continue;
                }
            };
            let pin = match env.clone().static_read_txn() {
                Ok(pin) => Some(pin),
                // Every reader slot is taken (read views of the user's). The previous pin
                // stays, and keeps this snapshot's pages too: every page of it that a later
                // commit frees is freed after the previous pin's snapshot. So the entry is
                // written all the same, and the pin moves with a later checkpoint.
                Err(heed::Error::Mdb(MdbError::ReadersFull))
                    if self.pin.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some() =>
                {
                    None
                }
                Err(e) => return Err((engine_error(e, map_size, dir), false)),
            };
            // Under LMDB's write lock: the last commit's. (`env.info()` reads the map, which
            // does not move while the lock's transaction is counted as live.)
            let txnid = pin.as_ref().map_or_else(|| env.info().last_txn_id, RoTxn::id) as u64;
            let meta = crate::lmdb_file::meta_copy(&self.data, txnid)
                .map_err(|e| (e, false))?
                .ok_or((Error::Internal("the last commit's meta page is not in the file"), false))?;
            drop(held);
            break (pin, txnid, meta, one);
        };
        if pin.is_some() {
            self.pending.store(txnid, std::sync::atomic::Ordering::Relaxed);
        }
        // Every page of the snapshot was written before the pin began: this flush carries it.
        // Through a descriptor of the handle's own: LMDB's flush reads the map, which
        // another thread may be moving now that no transaction is counted.
        let flushed = self.data.sync_data().map_err(|e| (io_error(e, dir), true));
        let recorded = flushed.and_then(|()| {
            self.file.write(txnid, self.inode, self.boot, &meta).map_err(|e| (io_error(e, dir), true))
        });
        self.pending.store(0, std::sync::atomic::Ordering::Relaxed);
        recorded?;
        let Some(pin) = pin else { return Ok(()) };
        self.pinned_used.store(
            crate::lmdb_file::meta_copy_used(&meta).unwrap_or_default(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // The entry is durable: the previous pin's snapshot is no longer needed.
        let previous =
            self.pin.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace((pin, txnid));
        drop(previous);
        Ok(())
    }
}

/// Whether the store must be taken back to its last checkpoint before LMDB maps it: a
/// relaxed handle wrote it, the machine has restarted since (a different boot id), and no
/// process has it open. The page cache then lost whatever it had not written back, and
/// LMDB's meta pages may name pages that never reached the disk.
///
/// An entry newer than both meta pages is of another file under the same inode (a backup
/// copied over `data.mdb`): the entry's own snapshot had its meta page flushed before the
/// entry was written, and a later commit only ever raises a meta page's transaction id.
fn needs_roll_back(dir: &Path, lock_file: &files::LockFile) -> Result<bool, Error> {
    let io = |e| io_error(e, dir);
    let Some(entry) = checkpoint::newest(dir).map_err(io)? else { return Ok(false) };
    if checkpoint::same_boot(&entry.boot) || lock_file.used_elsewhere().unwrap_or(true) {
        return Ok(false);
    }
    let file = std::fs::File::open(dir.join("data.mdb")).map_err(io)?;
    let Some(newest) = crate::lmdb_file::newest_meta_txnid(&file)? else { return Ok(false) };
    // The store is the checkpoint's snapshot already (a store closed by a relaxed handle,
    // whose close made a checkpoint of its last commit): every page of it was flushed before
    // the entry was written, and there is nothing to take back.
    let is_the_checkpoint = newest == entry.txnid
        && crate::lmdb_file::meta_copy(&file, entry.txnid)?.is_some_and(|meta| meta == entry.meta);
    Ok(newest >= entry.txnid && !is_the_checkpoint)
}

/// Takes the store back to its last checkpoint if it needs it ([`needs_roll_back`]): the
/// checkpoint's meta page is written over both of LMDB's, and flushed. Every commit after
/// the checkpoint is gone, whole; the checkpoint's pages were kept from reuse until a later
/// checkpoint was durable. Under the opens' lock (`LockFile::begin_open`), before LMDB maps
/// the file.
fn roll_back_to_checkpoint(dir: &Path, lock_file: &files::LockFile) -> Result<(), Error> {
    if !needs_roll_back(dir, lock_file)? {
        return Ok(());
    }
    let io = |e| io_error(e, dir);
    let Some(entry) = checkpoint::newest(dir).map_err(io)? else { return Ok(()) };
    let file = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("data.mdb")).map_err(io)?;
    if crate::lmdb_file::restore_meta(&file, &entry.meta)? {
        file.sync_data().map_err(io)?;
        crate::trace::event!(
            target: "varvedb::open",
            tracing::Level::INFO,
            txnid = entry.txnid,
            "took the store back to its last checkpoint after a restart"
        );
    }
    Ok(())
}

/// Settings the storage layer needs from the user's options.
pub(crate) struct StorageConfig {
    pub(crate) map_size: usize,
    pub(crate) max_readers: u32,
    /// Whether a store created by this open keeps the Merkle tree (recorded with the
    /// format version, in the creation's one commit).
    pub(crate) merkle_tree: bool,
    /// How commits reach the disk.
    pub(crate) flushes: Flushes,
    /// Opens an existing store with LMDB's `MDB_RDONLY` (see [`Storage::open_read_only`]).
    pub(crate) read_only: bool,
}

/// How a handle's commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flushes {
    /// Each commit flushes its pages and its meta page before it returns.
    EachCommit,
    /// Commits write their meta page without a flush (`MDB_NOMETASYNC`), made durable by the
    /// next flush: for the writer's pipelined commits (see [`Storage::commit_deferred`]).
    DeferMeta,
    /// Commits flush nothing (`MDB_NOSYNC`); [`Storage::sync`] makes a checkpoint, and a
    /// power loss takes the store back to the last one (see `storage/checkpoint.rs`):
    /// `Durability::Relaxed`.
    Checkpoints,
}

/// How far the oldest open read view of a store is behind its last commit: the oldest LMDB
/// reader of any process using the store, as its reader table shows.
///
/// Until a view ends, LMDB keeps every page its snapshot can see, so the file grows with
/// what is written meanwhile. See [`Varve::reader_lag`](crate::Varve::reader_lag) and
/// [`Options::on_reader_lag`](crate::Options::on_reader_lag).
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let view = db.begin_read()?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
/// let lag = db.reader_lag()?.expect("a view is open");
/// assert_eq!((lag.commits, lag.pid), (1, std::process::id()));
/// drop(view);
/// assert_eq!(db.reader_lag()?, None);
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderLag {
    /// Commits made to the store (by any process) since the view's snapshot was taken.
    pub commits: u64,
    /// The process that holds the view.
    pub pid: u32,
}

impl Storage {
    /// Opens (creating if needed) the store in directory `path`.
    pub(crate) fn open(path: &Path, config: &StorageConfig) -> Result<Self, Error> {
        if config.read_only {
            return Self::open_read_only(path, config);
        }
        files::prepare_dir(path)?;
        // Before anything touches the files: a second open in this process would close
        // descriptors of `lock.mdb` that the first one's locks depend on.
        let claim = files::Claim::take(path)?;
        files::remove_abandoned(path);
        let map_size = round_up_to_page(config.map_size);
        if !files::has_data_file(path)? {
            files::create_data_file(path, |build_dir| {
                build_store(build_dir, path, map_size, config.merkle_tree)
            })?;
        }
        let lock_file = files::LockFile::open_backed(path, files::lock_file_size(config.max_readers))?;
        let relaxed = config.flushes == Flushes::Checkpoints;
        // Held until the open returns; an error releases it with the descriptor.
        lock_file.begin_open().map_err(|e| io_error(e, path))?;
        if lock_file.mark_durability(relaxed).map_err(|e| io_error(e, path))? {
            let other = if relaxed { "immediate" } else { "relaxed" };
            return Err(Error::DurabilityInUse { path: canonical(path), other });
        }
        roll_back_to_checkpoint(path, &lock_file)?;
        // Up to here an existing `data.mdb` has been neither mapped nor changed, except by a
        // roll-back to a checkpoint. LMDB trusts the file it maps: damage it would read on
        // the way in is refused first.
        crate::lmdb_file::check_before_open(path, &[name::META], &[name::EVENTS])?;
        // A relaxed handle opens as an immediate one does, and leaves flushes to checkpoints
        // only once its first checkpoint is made (below).
        let mode = if config.flushes == Flushes::EachCommit { Mode::Write } else { Mode::DeferMetaSync };
        let env = open_env(path, map_size, config.max_readers, Private::No, mode).map_err(|e| match e {
            heed::Error::EnvAlreadyOpened => Error::AlreadyOpen { path: canonical(path) },
            other => engine_error(other, map_size, path),
        })?;
        // LMDB grows the map to the file's size if the file is larger than asked for.
        let map_size = env.info().map_size;
        // A killed process leaves its reader slots behind; they would pin old pages forever.
        env.clear_stale_readers().map_err(|e| engine_error(e, map_size, path))?;
        // Before this open's first commit. Checkpoints left by processes that are gone have
        // no pin any more, and a commit could reuse their pages; an immediate handle's
        // flushed commits would be taken back by them after a power loss. So the store is
        // flushed and the file removed, unless another relaxed process has the store open:
        // its checkpoints are pinned, and this open's commits are flushed too. Other
        // processes (read-only ones, or immediate ones beside an immediate open) pin
        // nothing: the file goes all the same. Under the opens' lock, so no relaxed open
        // comes meanwhile.
        if path.join(checkpoint::FILE).exists()
            && !lock_file.relaxed_elsewhere().map_err(|e| io_error(e, path))?
        {
            env.force_sync().map_err(|e| engine_error(e, map_size, path))?;
            checkpoint::remove(path).map_err(|e| io_error(e, path))?;
        }
        let tables = prepare_tables(&env, map_size, path, None, Some(&lock_file))?;
        // Before anything else commits: the record is of the transaction after the last.
        apply_pending_record(&env, &tables, map_size, path)?;
        if crate::lmdb_file::failed_commit(path).is_some() {
            rewrite_meta_page(&env, &tables, map_size, path)?;
            crate::lmdb_file::clear_failed_commit(path).map_err(|e| io_error(e, path))?;
        }
        if config.flushes != Flushes::EachCommit {
            // The commits above wrote their meta pages without a flush (`MDB_NOMETASYNC`).
            env.force_sync().map_err(|e| engine_error(e, map_size, path))?;
        }
        // LMDB syncs what it writes into its files, never the directory that names them. A
        // creation syncs it; an open after a creation that was cut short between its link
        // and that sync must not leave `data.mdb`'s name to chance either.
        sync_dir(path).map_err(|e| io_error(e, path))?;
        let ahead = ahead::Ahead::open(path, env.stat().page_size).map_err(|e| io_error(e, path))?;
        // A relaxed handle writes no records, but zeros the area after a shred or a key
        // rotation all the same: an immediate handle's records may hold old key material.
        let records = if config.flushes == Flushes::EachCommit {
            None
        } else {
            let rtxn = env.read_txn().map_err(|e| engine_error(e, map_size, path))?;
            // After `prepare_tables` only a store whose format and record of encryption
            // disagree has no area (the open refuses it next, with the reason); and off
            // Linux the area cannot be located, and commits go without records.
            let offset = record_area_offset(&env, &rtxn, &tables.meta, map_size, &path.join("data.mdb"))?;
            drop(rtxn);
            offset.map(|offset| redo::Area::open(path, offset).map_err(|e| io_error(e, path))).transpose()?
        };
        let checkpoints = if relaxed { Some(Relaxed::open(path)?) } else { None };
        let map = map_log::Map::open(&env, &path.join("data.mdb"));
        let storage = Storage {
            env,
            tables,
            map_size: AtomicUsize::new(map_size),
            map,
            txns: TxnGate::default(),
            lock_file,
            _claim: claim,
            fatal: OnceLock::new(),
            tickets: sync::Tickets::new(relaxed),
            defer_meta_sync: config.flushes != Flushes::EachCommit,
            flushes: sync::FlushTimes::default(),
            read_only: false,
            ahead: Some(ahead),
            records,
            record_buf: Mutex::new(Vec::new()),
            relaxed: checkpoints,
            write_gate: Mutex::new(()),
        };
        if storage.relaxed.is_some() {
            // The first checkpoint: from here on a power loss goes back no further. Its
            // failure fails the open with its own error (a full disk, say): the store was
            // flushed above, no commit of this handle is in doubt, and the storage goes.
            storage.checkpoint_or_doubt().map_err(|(e, _)| e)?;
            // SAFETY: `MDB_NOSYNC` as argued in `open_env`; set while this thread is the
            // environment's only user (the storage is not shared yet), as LMDB requires.
            unsafe { storage.env.set_flags(EnvFlags::NO_SYNC, heed::FlagSetMode::Enable) }
                .map_err(|e| engine_error(e, map_size, path))?;
        }
        storage.lock_file.end_open().map_err(|e| io_error(e, path))?;
        Ok(storage)
    }

    /// Opens the existing store in directory `path` with LMDB's `MDB_RDONLY`: LMDB never
    /// takes the writer lock and cannot write `data.mdb`, and nothing here does either.
    /// Nothing is created, recovered or upgraded; a store that needs any of it is
    /// [`Error::NeedsWriteOpen`]. Only `lock.mdb` is written, as by every reader: the reader
    /// table lives in it.
    fn open_read_only(path: &Path, config: &StorageConfig) -> Result<Self, Error> {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_dir() => return Err(Error::NotADirectory { path: path.to_path_buf() }),
            Ok(_) if files::has_data_file(path)? => {}
            Ok(_) => return Err(Error::NoStore { path: path.to_path_buf() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoStore { path: path.to_path_buf() });
            }
            Err(e) => return Err(Error::Io(e)),
        }
        let claim = files::Claim::take(path)?;
        let map_size = round_up_to_page(config.map_size);
        let lock_file = files::LockFile::open_backed(path, files::lock_file_size(config.max_readers))?;
        if needs_roll_back(path, &lock_file)? {
            return Err(Error::NeedsWriteOpen {
                path: canonical(path),
                reason: "relaxed commits were cut off by a restart of the machine, and an open for writing takes the \
                         store back to their last checkpoint",
            });
        }
        crate::lmdb_file::check_before_open(path, &[name::META], &[name::EVENTS])?;
        if crate::lmdb_file::failed_commit(path).is_some() {
            return Err(Error::NeedsWriteOpen {
                path: canonical(path),
                reason: "its last commit failed while writing the meta page, and an open for writing repairs that",
            });
        }
        let env =
            open_env(path, map_size, config.max_readers, Private::No, Mode::ReadOnly).map_err(
                |e| match e {
                    heed::Error::EnvAlreadyOpened => Error::AlreadyOpen { path: canonical(path) },
                    other => engine_error(other, map_size, path),
                },
            )?;
        let map_size = env.info().map_size;
        // Stale reader slots live in `lock.mdb`, which readers write anyway.
        env.clear_stale_readers().map_err(|e| engine_error(e, map_size, path))?;
        let tables = open_tables(&env, map_size, path)?;
        if pending_record(&env, &tables, map_size, path, &lock_file)? {
            return Err(Error::NeedsWriteOpen {
                path: canonical(path),
                reason: "the record of its last acknowledged commit is to be applied, and an open for writing applies it",
            });
        }
        let map = map_log::Map::open(&env, &path.join("data.mdb"));
        Ok(Storage {
            env,
            tables,
            map_size: AtomicUsize::new(map_size),
            map,
            txns: TxnGate::default(),
            lock_file,
            _claim: claim,
            fatal: OnceLock::new(),
            tickets: sync::Tickets::default(),
            defer_meta_sync: false,
            flushes: sync::FlushTimes::default(),
            read_only: true,
            ahead: None,
            records: None,
            record_buf: Mutex::new(Vec::new()),
            relaxed: None,
            write_gate: Mutex::new(()),
        })
    }

    /// Whether the storage was opened read-only: every write transaction is refused.
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The store's directory.
    pub(crate) fn path(&self) -> &Path {
        self.env.path()
    }

    pub(crate) fn map_size(&self) -> usize {
        self.map_size.load(AtomicOrdering::Relaxed)
    }

    pub(crate) fn read_txn(&self) -> Result<ReadTxn<'_>, Error> {
        let (txn, live) = self.begin(Env::read_txn)?;
        Ok(ReadTxn { txn, _live: live })
    }

    pub(crate) fn write_txn(&self) -> Result<WriteTxn<'_>, Error> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        let gate = GateGuard::take(&self.write_gate);
        let (txn, live) = self.begin(Env::write_txn)?;
        let txn = WriteTxn { txn, open: OpenWriteTxn::mark(&self.write_gate), _live: live, redo: None, gate };
        self.grow_ahead(&txn)?;
        Ok(txn)
    }

    /// A write transaction whose changes are recorded, for [`Storage::commit_deferred`] to
    /// write its commit record. Only the writer begins these.
    pub(crate) fn write_txn_recorded(&self) -> Result<WriteTxn<'_>, Error> {
        let mut txn = self.write_txn()?;
        if self.records.is_some() {
            let buf = std::mem::take(
                &mut *self.record_buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            txn.redo = Some(redo::Capture::new(buf));
        }
        Ok(txn)
    }

    /// Grows `data.mdb` past LMDB's last page when little room is left there, so that commits
    /// flush blocks the file already has (see `storage/ahead.rs`). `txn` holds LMDB's write
    /// lock and has written nothing. A full disk only leaves less room grown, for LMDB to fail
    /// on or not. A failed flush fails `txn`'s caller with the disk's error and stops the
    /// storage, as a failed [`Storage::sync`] does: it may have dropped a meta page.
    fn grow_ahead(&self, _txn: &WriteTxn<'_>) -> Result<(), Error> {
        let Some(ahead) = &self.ahead else { return Ok(()) };
        // `env.info()` reads the map: no remap is under way while `_txn` is live.
        let last_page = self.env.info().last_page_number as u64;
        let before = self.tickets.last();
        let started = std::time::Instant::now();
        match ahead.grow(last_page, self.map_size() as u64) {
            Ok(ahead::Grown::Enough) => Ok(()),
            Ok(ahead::Grown::Grew) => {
                self.flushes.record(started.elapsed());
                // The flush carried every meta page written before it (a relaxed handle's
                // tickets count checkpoints only).
                self.tickets.flushed(before);
                Ok(())
            }
            Err(ahead::GrowError::Write(e)) => {
                crate::trace::event!(
                    target: "varvedb::sync",
                    tracing::Level::WARN,
                    error = %e,
                    "could not grow data.mdb ahead of use"
                );
                drop(e);
                Ok(())
            }
            Err(ahead::GrowError::Flush(e)) => {
                // This transaction wrote nothing: it fails with the disk's error. Every later
                // one is refused, as after a failed `sync`.
                let copy = e.raw_os_error().map_or_else(
                    || std::io::Error::new(e.kind(), e.to_string()),
                    std::io::Error::from_raw_os_error,
                );
                self.fatal.get_or_init(|| Arc::new(io_error(copy, self.path())));
                Err(io_error(e, self.path()))
            }
        }
    }

    /// Commits `txn` durably. An error means nothing of it is stored, except
    /// [`Error::OutcomeUnknown`]: LMDB failed while writing the meta page that makes the
    /// commit durable, or the flush after it failed, so the commit may be in the file, and
    /// the storage refuses every later transaction.
    pub(crate) fn commit(&self, txn: WriteTxn<'_>) -> Result<(), Error> {
        self.erase_record(txn.txn.id() as u64)?;
        // The gate stays held through the flush after the commit.
        let WriteTxn { txn, open, _live: live, redo: _, gate: _gate } = txn;
        self.commit_or_stop_gated(txn, live, self.tickets.last(), None)?;
        // The transaction has ended; the gate is kept through the flush.
        drop(open);
        // Without `MDB_NOMETASYNC` LMDB wrote the meta page through an `O_DSYNC` descriptor.
        if self.defer_meta_sync && !self.read_only { self.sync_gated() } else { Ok(()) }
    }

    /// Commits `txn` as [`Storage::commit`] does, except that with
    /// [`Flushes::DeferMeta`] the commit's meta page is written and not flushed:
    /// the commit is in force (every transaction begun after this sees it) but durable only
    /// once [`Storage::is_durable`] says so of the ticket returned, that is after the next
    /// commit of this kind, or the next [`Storage::sync`]. A power loss before that takes
    /// the store back to the commit before, whole. Without it, the ticket is durable at
    /// once. Only the writer commits so, one commit at a time: tickets count its commits in order.
    ///
    /// A transaction begun with [`Storage::write_txn_recorded`] whose changes fit a commit
    /// record has it written first, into the area that LMDB's data flush carries: its ticket
    /// is then durable as soon as this returns (see `storage/redo.rs`).
    pub(crate) fn commit_deferred(&self, mut txn: WriteTxn<'_>) -> Result<Ticket, Error> {
        let before = self.tickets.last();
        let recorded = self.write_record(&mut txn)?;
        self.commit_or_stop(txn, before, recorded)?;
        let ticket = self.tickets.committed(before);
        if !self.defer_meta_sync {
            self.tickets.flushed(ticket);
        }
        // A flush that failed elsewhere stops the storage under the gate, before this commit
        // began; checked again all the same, as the record is only as good as the flush.
        if recorded.is_some() && self.fatal.get().is_none() {
            self.tickets.recorded(ticket);
        }
        // The commit is made; a failed checkpoint stops the storage for the next one.
        drop(self.checkpoint_if_grown());
        Ok(ticket)
    }

    /// Writes the commit record of `txn`, if it has one; returns its transaction id if so.
    /// A record that cannot be written only leaves the commit to be answered after the
    /// next flush, once what reached the page cache is erased; if even that fails, the
    /// transaction is dropped and the storage stops: the record might be applied by the
    /// next open.
    fn write_record(&self, txn: &mut WriteTxn<'_>) -> Result<Option<u64>, Error> {
        let Some(area) = &self.records else { return Ok(None) };
        if self.relaxed.is_some() {
            // Nothing is flushed with the commit: a record would stand in for nothing.
            return Ok(None);
        }
        let txnid = txn.txn.id() as u64;
        let Some(mut capture) = txn.redo.take() else {
            self.erase_record(txnid)?;
            return Ok(None);
        };
        let written = capture.seal(txnid).map(|record| area.write(txnid, record));
        *self.record_buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = capture.into_buf();
        match written {
            Some(Ok(())) => Ok(Some(txnid)),
            Some(Err(e)) => {
                crate::trace::event!(
                    target: "varvedb::sync",
                    tracing::Level::WARN,
                    error = %e,
                    "could not write a commit record"
                );
                match area.erase(txnid) {
                    Ok(()) => Ok(None),
                    Err(_) => {
                        let source =
                            Arc::clone(self.fatal.get_or_init(|| Arc::new(io_error(e, self.path()))));
                        Err(Error::OutcomeUnknown { source })
                    }
                }
            }
            None => {
                self.erase_record(txnid)?;
                Ok(None)
            }
        }
    }

    /// Before a commit of transaction `txnid` without a record: zeros its slot, so that a
    /// record left there by a transaction that never committed (a killed process's, say)
    /// cannot pass for this commit's after a power loss.
    fn erase_record(&self, txnid: u64) -> Result<(), Error> {
        match &self.records {
            // A relaxed handle's store is rolled back to a checkpoint after a power loss,
            // never forward by a record: the transaction after a checkpoint is never one
            // whose record an immediate handle could have left (they never write at once).
            Some(_) if self.relaxed.is_some() => Ok(()),
            Some(area) => area.erase(txnid).map_err(|e| io_error(e, self.path())),
            None => Ok(()),
        }
    }

    /// Zeros the commit record area, inside `txn`: for a shred or a key rotation, after which
    /// no copy of the key material it replaces may stay readable in the area. The store is
    /// flushed first, so the last commit no longer needs its record; `txn`'s commit carries
    /// the zeros.
    pub(crate) fn clear_records(&self, txn: &WriteTxn<'_>) -> Result<(), Error> {
        let Some(area) = &self.records else { return Ok(()) };
        // `txn` holds the gate and LMDB's write lock: no commit comes before the zeros.
        let _ = &txn.gate;
        self.sync_gated()?;
        area.clear().map_err(|e| io_error(e, self.path()))
    }

    /// Flushes `data.mdb`: every commit made before is durable when this returns `Ok`. A
    /// failed flush may have dropped what it was to write, so it leaves the storage refusing
    /// every later transaction with [`Error::NeedsReopen`]; the error returned is
    /// [`Error::OutcomeUnknown`].
    pub(crate) fn sync(&self) -> Result<(), Error> {
        if self.relaxed.is_some() {
            return self.checkpoint();
        }
        if !self.defer_meta_sync || self.read_only {
            // Every commit was flushed whole before it returned.
            return Ok(());
        }
        if let Some(source) = self.fatal.get() {
            // After a failed flush a later one may succeed without having written what the
            // failed one dropped.
            return Err(Error::OutcomeUnknown { source: Arc::clone(source) });
        }
        let _gate = GateGuard::for_flush(&self.write_gate);
        self.sync_gated()
    }

    /// [`Storage::sync`], with the gate held by this thread.
    fn sync_gated(&self) -> Result<(), Error> {
        if let Some(source) = self.fatal.get() {
            return Err(Error::OutcomeUnknown { source: Arc::clone(source) });
        }
        if self.relaxed.is_some() {
            return self.checkpoint();
        }
        let before = self.tickets.last();
        let started = std::time::Instant::now();
        // Counted as live: LMDB's flush reads the meta page through the map, which must not
        // move meanwhile.
        let live = self.txns.enter();
        let flushed = self.env.force_sync();
        drop(live);
        self.flushes.record(started.elapsed());
        if let Err(e) = flushed {
            let source = Arc::clone(self.fatal.get_or_init(|| Arc::new(self.err(e))));
            return Err(Error::OutcomeUnknown { source });
        }
        self.tickets.flushed(before);
        Ok(())
    }

    /// Makes a checkpoint of a relaxed handle (see `storage/checkpoint.rs`): every commit
    /// made before is durable when this returns `Ok`, and a power loss takes the store back
    /// to no earlier state. The gate and LMDB's write lock are held only while the snapshot
    /// is pinned: the flushes go on beside the writer's commits, which flush nothing
    /// themselves. A failed flush stops the storage, as [`Storage::sync`]'s does. With no
    /// reader slot left for a new pin the entry is written all the same and the previous pin
    /// kept (see `Relaxed::checkpoint`), so that a commit that makes a checkpoint is not
    /// reported failed after it was made.
    fn checkpoint(&self) -> Result<(), Error> {
        self.checkpoint_or_doubt().map_err(|(e, in_doubt)| {
            if in_doubt {
                Error::OutcomeUnknown { source: Arc::clone(self.fatal.get_or_init(|| Arc::new(e))) }
            } else {
                e
            }
        })
    }

    /// [`Storage::checkpoint`], leaving the storage running after any failure; the error
    /// comes with whether the store's durability is in doubt (a failed flush, or a failed
    /// write of the entry), for the caller to stop the storage.
    fn checkpoint_or_doubt(&self) -> Result<(), (Error, bool)> {
        let Some(relaxed) = &self.relaxed else { return Ok(()) };
        if std::process::id() != relaxed.pid {
            // A forked child: its copy of the pin is the parent's reader slot, which ending
            // it would free, and a pin begun here would take a slot in the parent's name that
            // nothing ever frees. Before any lock: the fork may have copied one held.
            return Err((Error::WriterStopped, false));
        }
        if let Some(source) = self.fatal.get() {
            return Err((Error::OutcomeUnknown { source: Arc::clone(source) }, false));
        }
        let mut before = 0;
        let started = std::time::Instant::now();
        let done = relaxed.checkpoint(&self.env, self.path(), self.map_size(), || {
            before = self.tickets.last();
            if in_write_txn(&self.write_gate) {
                // Inside a projection step: this thread's transaction holds LMDB's lock.
                return Ok(None);
            }
            let gate = GateGuard::for_flush(&self.write_gate);
            // Counted as live while LMDB's write lock is held, as every transaction is.
            let lock = self.begin(Env::write_txn)?;
            before = self.tickets.last();
            Ok(Some((lock, gate)))
        });
        self.flushes.record(started.elapsed());
        done?;
        self.tickets.checkpointed(before);
        Ok(())
    }

    /// After a relaxed commit: when the pages LMDB took since the last checkpoint's pin come
    /// to [`Relaxed::MAX_PINNED_GROWTH`], a checkpoint now, so that the pin lets LMDB reuse
    /// pages again before the file grows further.
    fn checkpoint_if_grown(&self) -> Result<(), Error> {
        let (Some(relaxed), Some(ahead)) = (&self.relaxed, &self.ahead) else { return Ok(()) };
        if ahead.used().saturating_sub(relaxed.pinned_used.load(AtomicOrdering::Relaxed))
            < Relaxed::MAX_PINNED_GROWTH
        {
            return Ok(());
        }
        self.checkpoint()
    }

    /// The transaction ids of this handle's checkpoint pins (0: none): readers of its own,
    /// not read views of the user's.
    fn pinned(&self) -> [u64; 2] {
        self.relaxed.as_ref().map_or([0; 2], Relaxed::pinned)
    }

    /// Whether the commit of `ticket` (from [`Storage::commit_deferred`]) is durable: by its
    /// meta page, or by its commit record.
    pub(crate) fn is_durable(&self, ticket: Ticket) -> bool {
        self.tickets.is_answerable(ticket)
    }

    /// Whether the meta page of `ticket`'s commit is known flushed: if not, a durable commit
    /// may need its record to be applied after a power loss.
    pub(crate) fn is_flushed(&self, ticket: Ticket) -> bool {
        self.tickets.is_durable(ticket)
    }

    /// The ticket of the writer's last commit.
    pub(crate) fn last_ticket(&self) -> Ticket {
        self.tickets.last()
    }

    /// Commits `txn`, its meta page unflushed with [`Flushes::DeferMeta`].
    /// `before` is the writer's last ticket, read before; `recorded`, the transaction id of
    /// `txn` if its commit record was written.
    fn commit_or_stop(&self, txn: WriteTxn<'_>, before: Ticket, recorded: Option<u64>) -> Result<(), Error> {
        // The gate is held until a failure is handled: no other commit of this process comes
        // between a failed flush and its repair.
        let WriteTxn { txn, open: _open, _live: live, redo: _, gate: _gate } = txn;
        self.commit_or_stop_gated(txn, live, before, recorded)
    }

    /// [`Storage::commit_or_stop`], with the gate held by the caller.
    fn commit_or_stop_gated(
        &self,
        txn: RwTxn<'_>,
        live: Live<'_>,
        before: Ticket,
        recorded: Option<u64>,
    ) -> Result<(), Error> {
        match self.commit_unsynced(txn, live) {
            Err(e @ Error::OutcomeUnknown { .. }) => {
                // LMDB gives up (`MDB_PANIC`) only when a meta-page write fails, and this
                // commit began after every other of this process: so it was this commit's
                // meta page, which LMDB writes only once the commit's data flush has returned
                // success, and that flush carried the last meta page. (The storage may also
                // have stopped meanwhile for a failed flush elsewhere; then LMDB is not
                // panicked and nothing is proved.)
                if self.lmdb_panicked() {
                    self.tickets.flushed(before);
                }
                Err(e)
            }
            // LMDB gave up for another thread's failure: if this commit's record was written,
            // the next open may apply it.
            Err(Error::NeedsReopen { source }) if recorded.is_some() => Err(Error::OutcomeUnknown { source }),
            Err(e @ Error::NeedsReopen { .. }) => Err(e),
            // The failure may have been the data flush that was to carry the last meta page
            // (this process's or another's): a failed flush may have dropped it, and a commit
            // on top could reuse pages the commit before it still needs. And a commit record
            // written for this commit must not be applied after a power loss. Both are
            // repaired with one flush, or the storage stops and the last commit's fate is open.
            Err(e) if self.defer_meta_sync => match self.repair_after_failed_commit(recorded) {
                Ok(()) => {
                    self.tickets.flushed(before);
                    Err(e)
                }
                Err(repair) => {
                    crate::trace::event!(
                        target: "varvedb::sync",
                        tracing::Level::WARN,
                        error = %repair,
                        "could not repair after a failed commit"
                    );
                    drop(repair);
                    let source = Arc::clone(self.fatal.get_or_init(|| Arc::new(e)));
                    Err(Error::OutcomeUnknown { source })
                }
            },
            other => other,
        }
    }

    /// After a commit that failed before its meta page was written: writes the last
    /// commit's meta page again, erases the failed commit's record (transaction `recorded`),
    /// and flushes. `Ok` means the store's current state is durable and the failed commit
    /// can never come back.
    ///
    /// Under LMDB's write lock, so that no commit moves the state meanwhile: the last
    /// commit is the transaction before the one the lock's transaction would be. The meta
    /// page is taken from what the operating system holds for it; if that is not the last
    /// commit's (a failed flush made it read back from the disk), there is no repair.
    fn repair_after_failed_commit(&self, recorded: Option<u64>) -> Result<(), Error> {
        if self.fatal.get().is_some() {
            return Err(Error::Internal("the storage stopped"));
        }
        // The caller holds the gate. The transaction ends before it stops counting as live:
        // a tuple drops its fields in order.
        let lock = self.begin(Env::write_txn)?;
        let last =
            (lock.0.id() as u64).checked_sub(1).ok_or(Error::Internal("no commit before the first"))?;
        if recorded.is_some_and(|failed| failed != last + 1) {
            // Another commit came in between: its own flush settled the state, and the failed
            // record's slot is that commit's to write.
            return Err(Error::Internal("another commit came before the repair"));
        }
        // A descriptor opened now: the failed flush's error is reported once to every
        // descriptor open before it, and LMDB's has had it; what this one's flush reports is
        // what it failed to write itself. The growth's descriptor has it still to come.
        if let Some(ahead) = &self.ahead {
            ahead.take_reported_error();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path().join("data.mdb"))
            .map_err(|e| io_error(e, self.path()))?;
        if !crate::lmdb_file::rewrite_meta(&file, last)? {
            return Err(Error::Internal("the last commit's meta page is no longer in memory"));
        }
        if let Some(failed) = recorded {
            self.erase_record(failed)?;
        }
        let started = std::time::Instant::now();
        let flushed = file.sync_data();
        self.flushes.record(started.elapsed());
        drop(lock);
        flushed.map_err(|e| io_error(e, self.path()))
    }

    /// Whether LMDB refuses every transaction of this environment (`MDB_PANIC`).
    fn lmdb_panicked(&self) -> bool {
        // Counted as live, as every transaction is, so that the map cannot move meanwhile.
        let _live = self.txns.enter();
        matches!(self.env.read_txn(), Err(heed::Error::Mdb(MdbError::Panic)))
    }

    fn commit_unsynced(&self, txn: RwTxn<'_>, live: Live<'_>) -> Result<(), Error> {
        let txnid = txn.id() as u64;
        // LMDB's commit writes the transaction's pages and flushes them: the cost of durability.
        let started = std::time::Instant::now();
        let committed = txn.commit();
        // The transaction has ended: it stops counting as live.
        drop(live);
        self.flushes.record(started.elapsed());
        let Err(e) = committed else { return Ok(()) };
        let error = self.err(e);
        if matches!(error, Error::NeedsReopen { .. }) {
            return Err(error);
        }
        // Only a failed meta-page write leaves LMDB's environment unusable; any other failure
        // of a commit happens before that write and leaves the last commit in force.
        match self.begin(Env::read_txn) {
            Err(Error::NeedsReopen { .. }) => {
                // For the next open's file check: LMDB may have written the meta page back
                // in a shape only this record explains. Best effort: a disk that failed the
                // meta page may fail this too, and the check then reports the page.
                drop(crate::lmdb_file::record_failed_commit(self.path(), txnid));
                let source = Arc::clone(self.fatal.get_or_init(|| Arc::new(error)));
                Err(Error::OutcomeUnknown { source })
            }
            _ => Err(error),
        }
    }

    /// Begins a transaction, counted as live until it ends. When another process has grown
    /// the store past this process's map, moves the map first if no transaction of this
    /// process is live (see [`Storage::adopt_map_size`]).
    fn begin<'s, T>(
        &'s self,
        begin: impl Fn(&'s Env<WithoutTls>) -> heed::Result<T>,
    ) -> Result<(T, Live<'s>), Error> {
        if let Some(source) = self.fatal.get() {
            // LMDB refuses too after a failed meta-page write; after a failed flush only
            // this does.
            return Err(Error::NeedsReopen { source: Arc::clone(source) });
        }
        let live = self.txns.enter();
        match begin(&self.env) {
            Ok(txn) => return Ok((txn, live)),
            Err(heed::Error::Mdb(MdbError::MapResized)) => drop(live),
            Err(e) => return Err(self.err(e)),
        }
        self.adopt_map_size()?;
        let live = self.txns.enter();
        begin(&self.env).map(|txn| (txn, live)).map_err(|e| self.err(e))
    }

    /// Takes the map size another process recorded in the store, when this process's map no
    /// longer covers the store. LMDB can move the map only while the process has no
    /// transaction, so this fails with [`Error::MapResized`] while one is live.
    fn adopt_map_size(&self) -> Result<(), Error> {
        let Some(_remapping) = self.txns.try_remap() else {
            return Err(Error::MapResized { map_size: self.map_size() });
        };
        // No walk may start from the old map, even if the new one cannot be made.
        self.map.forget();
        // SAFETY: `mdb_env_set_mapsize` unmaps and maps the file again: any transaction of
        // this process alive across it would read (and have handed out slices of) the old
        // map. LMDB allows it only with no transaction active, and checks that only for its
        // write transaction. Every transaction of this process begins through `begin` above
        // (and `copy_compacted`), counted by `txns` until it ends; `try_remap` succeeded only
        // with none counted and keeps new ones from beginning until `_remapping` drops. The
        // one exception, a relaxed handle's checkpoint pin (`Relaxed`), never reads: it
        // holds a reader slot in the lock file, and ending it writes only that slot. The
        // map's place is found by read transactions of `map_log::Map` of their own, at open
        // before the storage is shared and here after the move. The
        // map is read outside a transaction only by `env.info()`, here and in `open` before
        // the storage is shared. Size 0 takes the size recorded in the store's meta page.
        unsafe { self.env.resize(0) }.map_err(|e| self.err(e))?;
        self.map_size.store(self.env.info().map_size, AtomicOrdering::Relaxed);
        self.map.locate(&self.env);
        Ok(())
    }

    /// How far the oldest open read view of the store, in any process, is behind the last
    /// commit (`None` when no view is open). Slots of killed processes are cleared first.
    pub(crate) fn reader_lag(&self) -> Result<Option<ReaderLag>, Error> {
        self.env.clear_stale_readers().map_err(|e| self.err(e))?;
        self.lock_file.oldest_reader(self.pinned()).map_err(|e| io_error(e, self.path()))
    }

    /// As [`Storage::reader_lag`], without clearing slots of killed processes first: cheap
    /// enough to run after every commit.
    pub(crate) fn reader_lag_unchecked(&self) -> Result<Option<ReaderLag>, Error> {
        self.lock_file.oldest_reader(self.pinned()).map_err(|e| io_error(e, self.path()))
    }

    /// The highest seq in the log, 0 when empty. Read inside the caller's transaction so a
    /// second process appending to the same files can never make us reuse a seq.
    pub(crate) fn last_seq(&self, txn: &RoTxn<'_, WithoutTls>) -> Result<u64, Error> {
        match self.tables.events.last(txn).map_err(|e| self.err(e))? {
            None => Ok(0),
            Some((k, _)) => key::decode_seq(k)
                .ok_or(Error::CorruptIndex { table: "events", reason: "key is not an 8-byte seq".into() }),
        }
    }

    pub(crate) fn get<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        table: Table,
        k: &[u8],
    ) -> Result<Option<&'t [u8]>, Error> {
        table.get(txn, k).map_err(|e| self.err(e))
    }

    /// The stored head of `stream` (its version, kind and tail), `None` if it has no events;
    /// a head that does not decode or fails its checksum is [`Error::CorruptIndex`]. Shared
    /// by reads and the writer.
    ///
    /// A stream without a head is checked against the heads on either side of where its
    /// head would be: a bit flipped in a key leaves the head in its place under another key,
    /// and a stream whose head so went missing must not read as empty (and be written as
    /// new). The checksum covers the key, so such a neighbour fails it.
    pub(crate) fn stream_head<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        stream: crate::id::StreamId,
    ) -> Result<Option<value::StreamHead<'t>>, Error> {
        let id = stream.as_u128();
        let k = key::stream(id);
        let table = self.tables.stream_heads;
        let damaged = |reason: String| Error::CorruptIndex { table: "stream_heads", reason };
        if let Some(raw) = self.get(txn, table, &k)? {
            return value::StreamHead::decode(id, raw)
                .map(Some)
                .ok_or_else(|| damaged(format!("head of stream {stream} cannot be decoded")));
        }
        let after = table.get_greater_than(txn, &k).map_err(|e| self.err(e))?;
        let before = table.get_lower_than(txn, &k).map_err(|e| self.err(e))?;
        for (k, v) in after.into_iter().chain(before) {
            let sound = <[u8; 16]>::try_from(k)
                .is_ok_and(|other| value::StreamHead::decode(u128::from_be_bytes(other), v).is_some());
            if !sound {
                return Err(damaged(format!(
                    "stream {stream} has no head, and the head stored next to where it would be is damaged"
                )));
            }
        }
        Ok(None)
    }

    /// The seq of `stream`'s event at `version`, from its index entries (a full chunk in
    /// `streams`, or the tail in its head); `None` if there is no entry for it,
    /// [`Error::CorruptIndex`] if its chunk or tail does not decode.
    pub(crate) fn index_seq(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        stream: u128,
        version: u32,
    ) -> Result<Option<u64>, Error> {
        if version == 0 {
            return Ok(None);
        }
        let (chunk, at) = key::index_chunk_of(version);
        let mut seqs = [0u64; value::INDEX_CHUNK];
        let n = match self.get(txn, self.tables.streams, &key::stream_chunk(stream, chunk))? {
            Some(raw) => {
                value::decode_index_chunk(raw, &mut seqs).ok_or_else(|| damaged_chunk(stream, chunk))?
            }
            None => {
                let Some(head) = self.stream_head(txn, stream.into())? else {
                    return Ok(None);
                };
                if chunk != head.version / key::INDEX_CHUNK {
                    return Ok(None);
                }
                value::decode_tail(head.tail, &mut seqs).ok_or_else(|| damaged_tail(stream, chunk))?
            }
        };
        Ok((at < n).then(|| seqs[at]))
    }

    /// The entries of `stream`'s index, ascending from version `from`, or (`reverse`)
    /// descending from it: its full chunks, and the tail in its head.
    pub(crate) fn stream_index<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        stream: u128,
        from: u32,
        reverse: bool,
    ) -> Result<StreamIndex<'t>, Error> {
        let (chunk, _) = key::index_chunk_of(from);
        let (low, high) = if reverse { (0, chunk) } else { (chunk, u32::MAX) };
        let (low, high) = (key::stream_chunk(stream, low), key::stream_chunk(stream, high));
        // Forward without an upper bound (heed allocates one): the entries end at the first
        // key of another stream.
        let bounds = if reverse {
            (Bound::Included(&low[..]), Bound::Included(&high[..]))
        } else {
            (Bound::Included(&low[..]), Bound::Unbounded)
        };
        // A damaged head is an error in the entries' place, as a damaged chunk is: the full
        // chunks are still handed out (a shred must reach their events).
        let (head, damaged_head) = match self.stream_head(txn, stream.into()) {
            Ok(head) => (head, None),
            Err(e @ Error::CorruptIndex { .. }) => (None, Some(e)),
            Err(e) => return Err(e),
        };
        let tail = match head {
            Some(head) if !head.tail.is_empty() => {
                let tail_chunk = head.version / key::INDEX_CHUNK;
                let wanted = if reverse { tail_chunk <= chunk } else { tail_chunk >= chunk };
                wanted.then_some((head.tail, tail_chunk))
            }
            _ => None,
        };
        let chunks = self.entries(txn, self.tables.streams, bounds, reverse)?;
        Ok(StreamIndex {
            chunks,
            damaged_head,
            tail,
            stream,
            reverse,
            bound: u64::from(from),
            seqs: [0; value::INDEX_CHUNK],
            len: 0,
            at: 0,
            first_version: 0,
            ended: false,
        })
    }

    /// Adds the index entries of `stream`'s versions from `first` on, at `seqs` (ascending),
    /// after those of `tail`: the stream's tail as its head holds it, with the entries after
    /// its last full chunk up to version `first - 1`. Each chunk this fills is written to
    /// `streams`; what is left after the last one is the new tail, in `tail`, for the head.
    pub(crate) fn index_append(
        &self,
        txn: &mut WriteTxn<'_>,
        stream: u128,
        first: u32,
        seqs: &[u64],
        tail: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut held = [0u64; value::INDEX_CHUNK];
        let (chunk, _) = key::index_chunk_of(first);
        let n = value::decode_tail(tail, &mut held).ok_or_else(|| damaged_tail(stream, chunk))?;
        let expected = value::tail_len(first.wrapping_sub(1));
        if n != expected {
            // The stream head's version and its entries disagree: writing on would lose or
            // misplace entries.
            return Err(Error::CorruptIndex {
                table: "stream_heads",
                reason: format!(
                    "stream {} has {n} entries after its last full chunk where its version {} says {expected}: \
                     its head is damaged",
                    crate::id::StreamId::from(stream),
                    first.wrapping_sub(1)
                ),
            });
        }
        let mut last = if n > 0 { held[n - 1] } else { 0 };
        let mut count = n;
        let mut version = first;
        for &seq in seqs {
            if seq <= last {
                return Err(Error::Internal("index entries of a stream not in seq order"));
            }
            value::push_leb128(tail, if count == 0 { seq } else { seq - last });
            last = seq;
            count += 1;
            if count == value::INDEX_CHUNK {
                let (chunk, _) = key::index_chunk_of(version);
                self.insert(txn, self.tables.streams, "streams", &key::stream_chunk(stream, chunk), tail)?;
                tail.clear();
                count = 0;
            }
            // Only past the last version when nothing is left to add.
            version = version.wrapping_add(1);
        }
        Ok(())
    }

    /// The payload blob a record of `seq` refers to by its BLAKE3 `hash`, checked against
    /// the hash (content addressing doubles as the blob's checksum) and the length the
    /// record states.
    pub(crate) fn blob<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        seq: u64,
        hash: &[u8; crate::record::HASH_LEN],
        len: u32,
    ) -> Result<&'t [u8], Error> {
        let corrupt = |reason: &str| Error::Corrupt { seq, reason: reason.to_owned() };
        let bytes =
            self.get(txn, self.tables.blobs, hash)?.ok_or_else(|| corrupt("payload blob is missing"))?;
        if bytes.len() != len as usize || &crate::record::blob_hash(bytes) != hash {
            return Err(corrupt("payload blob does not match its hash"));
        }
        Ok(bytes)
    }

    pub(crate) fn put(&self, txn: &mut WriteTxn<'_>, table: Table, k: &[u8], v: &[u8]) -> Result<(), Error> {
        table.put(&mut txn.txn, k, v).map_err(|e| self.err(e))?;
        if let Some(redo) = &mut txn.redo {
            redo.record(redo::Op::Put, table.code, k, v);
        }
        Ok(())
    }

    /// Inserts a key that must not exist yet; an existing key is reported as damage to
    /// `name`, and nothing is overwritten.
    pub(crate) fn insert(
        &self,
        txn: &mut WriteTxn<'_>,
        table: Table,
        name: &'static str,
        k: &[u8],
        v: &[u8],
    ) -> Result<(), Error> {
        table.put_with_flags(&mut txn.txn, PutFlags::NO_OVERWRITE, k, v).map_err(|e| match e {
            heed::Error::Mdb(MdbError::KeyExist) => Error::CorruptIndex {
                table: name,
                reason: "an entry being written already exists (a stream head or id index is damaged)".into(),
            },
            other => self.err(other),
        })?;
        if let Some(redo) = &mut txn.redo {
            redo.record(redo::Op::Insert, table.code, k, v);
        }
        Ok(())
    }

    /// A cursor on `table` for many inserts in one transaction (see [`Puts`]).
    pub(crate) fn puts<'t>(&'t self, txn: &'t mut WriteTxn<'_>, table: Table) -> Result<Puts<'t>, Error> {
        let WriteTxn { txn, redo, .. } = txn;
        let cursor = table.iter_mut(txn).map_err(|e| self.err(e))?;
        Ok(Puts { cursor, storage: self, redo: redo.as_mut(), code: table.code })
    }

    /// Appends at the end of a table whose keys only grow (the log); LMDB then skips the
    /// B-tree search and fills pages completely.
    pub(crate) fn append(
        &self,
        txn: &mut WriteTxn<'_>,
        table: Table,
        k: &[u8],
        v: &[u8],
    ) -> Result<(), Error> {
        table.put_with_flags(&mut txn.txn, PutFlags::APPEND, k, v).map_err(|e| self.err(e))?;
        if let Some(redo) = &mut txn.redo {
            redo.record(redo::Op::Append, table.code, k, v);
        }
        Ok(())
    }

    /// Entries of `table` with keys in `bounds`, ascending or (`reverse`) descending.
    pub(crate) fn entries<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        table: Table,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
    ) -> Result<Entries<'t>, Error> {
        let inner = if reverse {
            EntriesInner::Backward(table.rev_range(txn, &bounds).map_err(|e| self.err(e))?)
        } else {
            EntriesInner::Forward(table.range(txn, &bounds).map_err(|e| self.err(e))?)
        };
        Ok(Entries { inner, map_size: self.map_size() })
    }

    /// The log's entries with seqs from `from` on, in a read transaction's snapshot.
    pub(crate) fn log_from<'t>(&'t self, txn: &'t ReadTxn<'_>, from: u64) -> Result<LogEntries<'t>, Error> {
        let (map_size, events) = (self.map_size(), self.tables.events);
        // The last page a commit has written, read after the snapshot began: every page of
        // the snapshot is at or below it, and no page past it is one a walk may touch.
        let last_page = self.env.info().last_page_number as u64;
        let walk = self.map.walk(txn, last_page, from);
        let txn: &'t RoTxn<'t, WithoutTls> = txn;
        match walk {
            Some(walk) => {
                Ok(LogEntries { inner: LogEntriesInner::Map { walk, txn, storage: self }, map_size })
            }
            None => LogEntries::lmdb(txn, events, from, map_size, |e| self.err(e)),
        }
    }

    pub(crate) fn delete(&self, txn: &mut WriteTxn<'_>, table: Table, k: &[u8]) -> Result<bool, Error> {
        let deleted = table.delete(&mut txn.txn, k).map_err(|e| self.err(e))?;
        if let Some(redo) = &mut txn.redo
            && deleted
        {
            redo.record(redo::Op::Delete, table.code, k, &[]);
        }
        Ok(deleted)
    }

    /// Deletes every entry of `table`; returns how many there were.
    pub(crate) fn clear(&self, txn: &mut WriteTxn<'_>, table: Table) -> Result<u64, Error> {
        if let Some(redo) = &mut txn.redo {
            redo.give_up();
        }
        let n = table.len(&txn.txn).map_err(|e| self.err(e))?;
        table.clear(&mut txn.txn).map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Deletes every key that starts with `prefix`; returns how many.
    pub(crate) fn delete_prefix(
        &self,
        txn: &mut WriteTxn<'_>,
        table: Table,
        prefix: &[u8],
    ) -> Result<usize, Error> {
        // LMDB rejects an empty key; every caller's prefix has at least a length byte.
        debug_assert!(!prefix.is_empty(), "delete_prefix needs a prefix");
        let mut n = 0;
        // A range from the prefix, to the first key without it: heed's prefix iterators need
        // a comparator of single bytes.
        let from = (Bound::Included(prefix), Bound::Unbounded);
        if let Some(redo) = &mut txn.redo {
            redo.give_up();
        }
        let mut iter = table.range_mut(&mut txn.txn, &from).map_err(|e| self.err(e))?;
        while let Some(entry) = iter.next() {
            let (k, _) = entry.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            // SAFETY: heed requires that no reference into the database is held across
            // `del_current`; the entry's key is last used in the check above, and its value
            // is not kept.
            unsafe { iter.del_current() }.map_err(|e| self.err(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Writes a compacted copy of the store to the new file `file` (free pages left out),
    /// synced to disk. Runs beside writers, on a consistent snapshot.
    pub(crate) fn copy_compacted(&self, file: &Path) -> Result<(), Error> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut out =
            std::fs::File::options().write(true).create_new(true).open(file).map_err(|e| io_error(e, dir))?;
        // LMDB's copy reads the map in a transaction of its own: counted like ours, so the map
        // cannot move under it.
        let live = self.txns.enter();
        let copied = self
            .env
            .copy_to_file(&mut out, CompactionOption::Enabled)
            .map_err(|e| engine_error(e, self.map_size(), dir))
            .and_then(|()| clear_record_area(file))
            .and_then(|()| out.sync_all().map_err(|e| io_error(e, dir)))
            // The copy's name is durable only once its directory is synced.
            .and_then(|()| sync_dir(parent_dir(file)).map_err(|e| io_error(e, dir)));
        drop(live);
        if copied.is_err() {
            // A partial copy must not pass for a backup.
            drop(std::fs::remove_file(file));
        }
        copied
    }

    /// Replaces the store in the closed directory `dir` with a compacted copy of itself (free
    /// pages left out), and overwrites the old file (see `files::replace_data_file`).
    pub(crate) fn compact_in_place(dir: &Path) -> Result<(), Error> {
        if !files::has_data_file(dir)? {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no store at {}", dir.display()),
            )));
        }
        // Opened once as usual first: what an open repairs (an abandoned creation, the meta
        // page of a failed commit, stale reader slots) is repaired, and the file is checked.
        let len = std::fs::metadata(dir.join("data.mdb")).map_err(|e| io_error(e, dir))?.len();
        let room = usize::try_from(len).unwrap_or(usize::MAX / 2).saturating_mul(2).saturating_add(64 << 20);
        let storage = Storage::open(
            dir,
            &StorageConfig {
                map_size: room,
                max_readers: 1024,
                merkle_tree: false,
                read_only: false,
                flushes: Flushes::EachCommit,
            },
        )
        .map_err(|e| match e {
            Error::AlreadyOpen { path } => Error::StoreInUse { path },
            other => other,
        })?;
        drop(storage);
        files::replace_data_file(dir, |new_file| {
            let len = std::fs::metadata(dir.join("data.mdb")).map_err(|e| io_error(e, dir))?.len();
            let map_size = round_up_to_page(usize::try_from(len).unwrap_or(usize::MAX));
            let env = open_env(dir, map_size, 1, Private::Yes, Mode::Write)
                .map_err(|e| engine_error(e, map_size, dir))?;
            let mut out = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(new_file)
                .map_err(|e| io_error(e, dir))?;
            let copied = env
                .copy_to_file(&mut out, CompactionOption::Enabled)
                .map_err(|e| engine_error(e, map_size, dir))
                .and_then(|()| clear_record_area(new_file))
                .and_then(|()| out.sync_all().map_err(|e| io_error(e, dir)));
            env.prepare_for_closing().wait();
            copied
        })
    }

    pub(crate) fn len(&self, txn: &RoTxn<'_, WithoutTls>, table: Table) -> Result<u64, Error> {
        table.len(txn).map_err(|e| self.err(e))
    }

    fn err(&self, e: heed::Error) -> Error {
        match e {
            heed::Error::Mdb(MdbError::Panic) => {
                let source = self.fatal.get().map_or_else(
                    // Not through a commit of ours: another thread of this process made LMDB
                    // give up (a transaction of a thread that died, say).
                    || Arc::new(Error::Storage(StorageError::new(e))),
                    Arc::clone,
                );
                Error::NeedsReopen { source }
            }
            e => engine_error(e, self.map_size(), self.path()),
        }
    }
}

/// Puts into one table through one cursor. `mdb_put` opens a cursor per call and descends
/// from the root; a kept cursor first looks at the leaf page its last put landed on, so keys
/// given in ascending order (or in runs that share pages) mostly skip the descent. The pages
/// written are the same as with `mdb_put`: no flag that changes where pages split is used.
pub(crate) struct Puts<'t> {
    cursor: heed::RwIter<'t, Bytes, Bytes>,
    storage: &'t Storage,
    redo: Option<&'t mut redo::Capture>,
    code: u8,
}

impl Puts<'_> {
    /// Writes `k`, replacing any value it had, as [`Storage::put`].
    pub(crate) fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Error> {
        // SAFETY: heed forbids holding a reference into the database while it is modified;
        // `k` and `v` are the caller's own bytes, and while this cursor lives it borrows the
        // transaction mutably, so no value read from the map can be alive. The flags do not
        // include `MDB_CURRENT`: with none, LMDB inserts or replaces the value of `k` wherever
        // it is, independently of the cursor's position.
        let put = unsafe { self.cursor.put_current_with_options::<Bytes>(PutFlags::empty(), k, v) };
        put.map_err(|e| self.storage.err(e))?;
        if let Some(redo) = &mut self.redo {
            redo.record(redo::Op::Put, self.code, k, v);
        }
        Ok(())
    }
}

thread_local! {
    static HOLDS_WRITE_LOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a projection step, holding LMDB's write lock: another write
/// transaction (directly, or through the writer) would wait for it forever.
pub(crate) fn holds_write_lock() -> bool {
    HOLDS_WRITE_LOCK.with(std::cell::Cell::get)
}

/// Marks this thread as holding the write lock until dropped.
pub(crate) struct WriteLockHeld(());

impl WriteLockHeld {
    pub(crate) fn mark() -> Self {
        HOLDS_WRITE_LOCK.with(|h| h.set(true));
        WriteLockHeld(())
    }
}

impl Drop for WriteLockHeld {
    fn drop(&mut self) {
        HOLDS_WRITE_LOCK.with(|h| h.set(false));
    }
}

/// Syncs directory `dir`, making the names in it durable. A directory this process may not
/// open for reading, or a filesystem that cannot sync directories, leaves them to the
/// filesystem.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
    match synced {
        // `EINVAL` from `fsync`: the filesystem cannot sync a directory.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The directory that holds `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cold]
#[inline(never)]
fn storage_error(e: heed::Error, map_size: usize) -> Error {
    match e {
        heed::Error::Mdb(MdbError::MapFull) => Error::StoreFull { map_size },
        heed::Error::Io(io) => Error::Io(io),
        other => Error::Storage(StorageError::new(other)),
    }
}

/// An engine error of the store in `dir`, as the caller can act on it.
#[cold]
#[inline(never)]
fn engine_error(e: heed::Error, map_size: usize, dir: &Path) -> Error {
    match e {
        heed::Error::Mdb(MdbError::MapFull) => Error::StoreFull { map_size },
        heed::Error::Mdb(MdbError::MapResized) => Error::MapResized { map_size },
        heed::Error::Io(io) => io_error(io, dir),
        other => Error::Storage(StorageError::new(other)),
    }
}

/// An I/O error of the store in `dir`: [`Error::DiskFull`] when the filesystem is out of
/// space, else [`Error::Io`].
///
/// ENOSPC and EDQUOT say so themselves. EIO is also what LMDB reports when a write was cut
/// short, which a full disk does; it counts as a full disk only when, right after it, the
/// filesystem has less than 1 MiB (or 1% of its size, if that is less) available to this
/// process. Any other EIO stays an I/O error.
#[cold]
#[inline(never)]
fn io_error(e: std::io::Error, dir: &Path) -> Error {
    let code = e.raw_os_error();
    if !matches!(code, Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)) {
        return Error::Io(e);
    }
    let space = sys::space(dir).ok();
    let full = match code {
        Some(libc::EIO) => space.as_ref().is_some_and(sys::Space::nearly_full),
        _ => true,
    };
    if full {
        Error::DiskFull { path: canonical(dir), available: space.map_or(0, |s| s.available), source: e }
    } else {
        Error::Io(e)
    }
}

/// Counts this process's live transactions, so that the map moves only while there is none.
#[derive(Default)]
struct TxnGate(AtomicUsize);

/// Set in a [`TxnGate`] while the map moves: no transaction begins meanwhile.
const REMAPPING: usize = 1 << (usize::BITS - 1);

impl TxnGate {
    fn enter(&self) -> Live<'_> {
        let mut state = self.0.load(AtomicOrdering::Relaxed);
        loop {
            if state & REMAPPING != 0 {
                // Moving the map is one munmap and one mmap: a short wait.
                std::thread::yield_now();
                state = self.0.load(AtomicOrdering::Relaxed);
                continue;
            }
            match self.0.compare_exchange_weak(
                state,
                state + 1,
                AtomicOrdering::Acquire,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => return Live(self),
                Err(now) => state = now,
            }
        }
    }

    /// Holds off new transactions, if none is live.
    fn try_remap(&self) -> Option<Remapping<'_>> {
        self.0
            .compare_exchange(0, REMAPPING, AtomicOrdering::Acquire, AtomicOrdering::Relaxed)
            .ok()
            .map(|_| Remapping(self))
    }
}

/// A live transaction of this process, counted by its [`TxnGate`] until dropped.
pub(crate) struct Live<'g>(&'g TxnGate);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, AtomicOrdering::Release);
    }
}

/// The map may move: no transaction of this process is live, and none begins until dropped.
struct Remapping<'g>(&'g TxnGate);

impl Drop for Remapping<'_> {
    fn drop(&mut self) {
        self.0.0.store(0, AtomicOrdering::Release);
    }
}

/// What an environment may write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Write,
    /// Writes, with `MDB_NOMETASYNC`: a commit leaves its meta page to the next flush.
    DeferMetaSync,
    /// `MDB_RDONLY`: no write transaction, no writer lock.
    ReadOnly,
}

/// Whether an environment is opened without a lock file: a new store's private build, or a
/// store this process has the exclusive use of (see `files::replace_data_file`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Private {
    Yes,
    No,
}

fn open_env(
    dir: &Path,
    map_size: usize,
    max_readers: u32,
    private: Private,
    mode: Mode,
) -> heed::Result<Env<WithoutTls>> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size).max_dbs(16).max_readers(max_readers);
    if mode == Mode::ReadOnly {
        // SAFETY: `MDB_RDONLY` only takes abilities away: LMDB refuses write transactions
        // (and never takes the writer lock) and maps and opens `data.mdb` read-only. Readers
        // of this environment see each commit of a writing process whole, as any reader
        // does, through the lock file shared with it; what heed's `open` below requires of
        // the mapped file is unchanged.
        unsafe { options.flags(EnvFlags::READ_ONLY) };
    }
    if mode == Mode::DeferMetaSync && private == Private::No {
        // SAFETY: `MDB_NOMETASYNC` changes only when a commit's meta page is flushed, not
        // what is written or mapped: every page is still written through LMDB's copy-on-write
        // transactions. What it weakens, durability, is restored by the storage layer:
        // `Storage::commit` flushes after every commit, and the writer keeps the order of
        // `docs/design.md` ("Durability"). A new store's private build keeps flushed meta
        // pages: its creation is synced before the store gets its name.
        unsafe { options.flags(EnvFlags::NO_META_SYNC) };
    }
    if private == Private::Yes {
        // SAFETY: without a lock file, LMDB leaves all coordination to its user. Only two
        // kinds of directory are opened so, each used by this one environment on one thread:
        // a new store's build directory, of its own, with a name no other open uses (see
        // `files::create_data_file`), removed once it is closed; and a store being compacted
        // in place, while this process holds the write lock on the first byte of its
        // `lock.mdb` that LMDB in any other process holding the store open would hold shared,
        // and that one opening it waits for, and its claim on the directory keeps every other
        // open of this process out (see `files::replace_data_file`).
        unsafe { options.flags(EnvFlags::NO_LOCK) };
    }
    // SAFETY: heed's `open` requires that the mapped files are modified by nothing but LMDB
    // (in this process or another) while the map is alive, because we hand out `&[u8]` and
    // `&Archived<T>` into the map. That cannot be enforced from here; it is the documented
    // precondition of `Options::open` (do not write to `data.mdb` by other means, no network
    // filesystems). Everything LMDB itself writes goes through copy-on-write pages that no
    // live read transaction can see, and we set no flag that weakens this (`WRITE_MAP`;
    // `NO_LOCK` only for a private build, `NO_META_SYNC` only delays a flush, above, and
    // `NO_SYNC`, set by a relaxed handle once open, only drops one: what it weakens, the
    // order in which pages reach the disk, is restored by the storage layer, since a power
    // loss takes the store back to a checkpoint whose pages no commit could reuse, see
    // `storage/checkpoint.rs`). A roll-back to a checkpoint writes LMDB's meta pages before any process
    // maps the file (`roll_back_to_checkpoint`, under the opens' lock, when no other process
    // has the store open). The store's own writes to `data.mdb` are of two kinds. Zeros past LMDB's last
    // page (`storage/ahead.rs`), under its write lock: no snapshot reaches them, and LMDB
    // writes there later as into any page of its own. And commit records (`storage/redo.rs`)
    // into the overflow pages of one value of `meta`, which LMDB never writes after its
    // creation: the store takes only that value's address from the map and reads its bytes
    // through the file, so no reference handed out can see them change. A second open of
    // the same directory in this process is refused before this (`files::Claim`), and by
    // heed (`Error::AlreadyOpen`); LMDB's lock file coordinates other processes.
    unsafe { options.open(dir) }
}

/// Builds a new store's `data.mdb` in `build_dir`, an empty private directory: every table
/// and the format version, committed durably. The environment is closed on return, so the
/// file is complete and no longer mapped. Errors name `store_dir`, the store being created.
fn build_store(build_dir: &Path, store_dir: &Path, map_size: usize, merkle_tree: bool) -> Result<(), Error> {
    let env = open_env(build_dir, map_size, 1, Private::Yes, Mode::Write)
        .map_err(|e| engine_error(e, map_size, store_dir))?;
    prepare_tables(&env, map_size, store_dir, Some(merkle_tree), None)?;
    // `env` is the only handle: dropping it closes the environment.
    Ok(())
}

/// Commits a transaction that writes the format version again, as it is: after a commit
/// whose meta-page write failed, the next commit rewrites the meta page LMDB wrote back (see
/// `lmdb_file::check_before_open`), so the file needs no record of the failure any more.
fn rewrite_meta_page(
    env: &Env<WithoutTls>,
    tables: &Tables,
    map_size: usize,
    dir: &Path,
) -> Result<(), Error> {
    let err = |e| engine_error(e, map_size, dir);
    let mut wtxn = env.write_txn().map_err(err)?;
    let format = tables
        .meta
        .get(&wtxn, meta_key::FORMAT_VERSION)
        .map_err(err)?
        .ok_or(Error::CorruptMeta { reason: "the store has no format version" })?
        .to_vec();
    // LMDB copies the page it puts into, so even an unchanged value makes the commit write.
    tables.meta.put(&mut wtxn, meta_key::FORMAT_VERSION, &format).map_err(err)?;
    wtxn.commit().map_err(err)
}

/// Opens every table, creating those missing, and checks the format version, or records it
/// in a store that has none, or upgrades a store of format 4 or 5: one write transaction,
/// which commits nothing when the tables and the current version are all there. A file that
/// holds databases of another application and no format version is refused with
/// [`Error::NotAStore`], and nothing is written to it.
///
/// `merkle_tree`: for a new store, whether it keeps the Merkle tree (`None`: leave that to
/// `tlog::open`). `lock_file`: the store's, to tell whether another process has it open
/// before an upgrade (`None` for a store being created, which has nothing to upgrade).
fn prepare_tables(
    env: &Env<WithoutTls>,
    map_size: usize,
    dir: &Path,
    merkle_tree: Option<bool>,
    lock_file: Option<&files::LockFile>,
) -> Result<Tables, Error> {
    let err = |e| engine_error(e, map_size, dir);
    let mut wtxn = env.write_txn().map_err(err)?;
    if !ours_or_empty(env, &wtxn).map_err(err)? {
        return Err(Error::NotAStore { path: canonical(dir) });
    }
    let create = |wtxn: &mut RwTxn<'_>, name: &str| -> Result<Table, Error> {
        env.database_options()
            .types::<Bytes, Bytes>()
            .key_comparator::<KeyComparator>()
            .name(name)
            .create(wtxn)
            .map(|db| Table::named(db, name))
            .map_err(err)
    };
    let tables = Tables {
        events: create(&mut wtxn, name::EVENTS)?,
        streams: create(&mut wtxn, name::STREAMS)?,
        stream_heads: create(&mut wtxn, name::STREAM_HEADS)?,
        event_ids: create(&mut wtxn, name::EVENT_IDS)?,
        blobs: create(&mut wtxn, name::BLOBS)?,
        checkpoints: create(&mut wtxn, name::CHECKPOINTS)?,
        projections: create(&mut wtxn, name::PROJECTIONS)?,
        keys: create(&mut wtxn, name::KEYS)?,
        schema: create(&mut wtxn, name::SCHEMA)?,
        snapshots: create(&mut wtxn, name::SNAPSHOTS)?,
        meta: create(&mut wtxn, name::META)?,
        shredded_headers: create(&mut wtxn, name::SHREDDED_HEADERS)?,
        merkle: create(&mut wtxn, name::MERKLE)?,
    };
    if let Some(bytes) = tables.meta.get(&wtxn, meta_key::FORMAT_VERSION).map_err(err)? {
        let found = check_format(bytes)?;
        // Only a store whose format and record of encryption agree: any other is left as it
        // is for the open to refuse (see `key_record`).
        let encrypted = tables.meta.get(&wtxn, meta_key::ENCRYPTION).map_err(err)?.is_some();
        if (found == FORMAT_BEFORE_TAILS && !encrypted)
            || (found == ENCRYPTED_FORMAT_BEFORE_TAILS && encrypted)
        {
            // A process of the older build that has the store open would go on writing the
            // old layout into the new one.
            if lock_file.is_none_or(|f| f.used_elsewhere().unwrap_or(true)) {
                return Err(Error::UpgradeNeedsExclusiveAccess { path: canonical(dir) });
            }
            // The open checked `meta` and the log's last path; the upgrade reads every page
            // of both tables it rewrites, and LMDB trusts what it reads.
            crate::lmdb_file::check_before_open(dir, &[name::STREAM_HEADS, name::STREAMS], &[])?;
            move_tails_into_heads(&mut wtxn, &tables).map_err(err)?;
            let now = if found == FORMAT_BEFORE_TAILS { FORMAT_VERSION } else { ENCRYPTED_FORMAT_VERSION };
            tables.meta.put(&mut wtxn, meta_key::FORMAT_VERSION, &now.to_le_bytes()).map_err(err)?;
            add_record_area(&mut wtxn, &tables).map_err(err)?;
        } else if (found == FORMAT_BEFORE_RECORDS && !encrypted)
            || (found == ENCRYPTED_FORMAT_BEFORE_RECORDS && encrypted)
        {
            // No layout changes; but a process of the older build takes no lock of a
            // durability (below).
            if lock_file.is_none_or(|f| f.used_elsewhere().unwrap_or(true)) {
                return Err(Error::UpgradeNeedsExclusiveAccess { path: canonical(dir) });
            }
            let now = if found == FORMAT_BEFORE_RECORDS { FORMAT_VERSION } else { ENCRYPTED_FORMAT_VERSION };
            tables.meta.put(&mut wtxn, meta_key::FORMAT_VERSION, &now.to_le_bytes()).map_err(err)?;
            add_record_area(&mut wtxn, &tables).map_err(err)?;
        } else if (found == FORMAT_BEFORE_CHECKPOINTS && !encrypted)
            || (found == ENCRYPTED_FORMAT_BEFORE_CHECKPOINTS && encrypted)
        {
            // No layout changes. A process of the older build takes no lock of a durability
            // (`files::LockFile::mark_durability`): a relaxed handle could later write beside
            // it, and a power loss then take its flushed commits back to a checkpoint. Once
            // the format is new, no older build opens the store.
            if lock_file.is_none_or(|f| f.used_elsewhere().unwrap_or(true)) {
                return Err(Error::UpgradeNeedsExclusiveAccess { path: canonical(dir) });
            }
            let now = if encrypted { ENCRYPTED_FORMAT_VERSION } else { FORMAT_VERSION };
            tables.meta.put(&mut wtxn, meta_key::FORMAT_VERSION, &now.to_le_bytes()).map_err(err)?;
            if tables.meta.get(&wtxn, meta_key::COMMIT_RECORDS).map_err(err)?.is_none() {
                add_record_area(&mut wtxn, &tables).map_err(err)?;
            }
        } else if ((found == FORMAT_VERSION && !encrypted)
            || (found == ENCRYPTED_FORMAT_VERSION && encrypted))
            && tables.meta.get(&wtxn, meta_key::COMMIT_RECORDS).map_err(err)?.is_none()
        {
            add_record_area(&mut wtxn, &tables).map_err(err)?;
        }
    } else {
        if tables.events.last(&wtxn).map_err(err)?.is_some() {
            return Err(Error::CorruptMeta { reason: "store holds events but no format version" });
        }
        let now = crate::record::now_micros();
        tables.meta.put(&mut wtxn, meta_key::FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes()).map_err(err)?;
        tables.meta.put(&mut wtxn, meta_key::CREATED_AT_MICROS, &now.to_le_bytes()).map_err(err)?;
        let mut id = [0u8; 16];
        crate::crypto::fill_random(&mut id)?;
        tables.meta.put(&mut wtxn, meta_key::STORE_ID, &id).map_err(err)?;
        if merkle_tree == Some(true) {
            tables.meta.put(&mut wtxn, meta_key::MERKLE_TREE, &[1]).map_err(err)?;
        }
        add_record_area(&mut wtxn, &tables).map_err(err)?;
    }
    wtxn.commit().map_err(err)?;
    Ok(tables)
}

/// Zeros the commit record area of `file`, a compacted copy of a store just written and
/// not yet synced (a copy of a store without an area is left as it is). The copy took the
/// area's bytes as they were, records of transactions of the store it was made from
/// included; a copy restarts LMDB's transaction ids at 1, so one of them could one day pass
/// for a record of the copy's own.
fn clear_record_area(file: &Path) -> Result<(), Error> {
    let len = std::fs::metadata(file).map_err(|e| io_error(e, parent_dir(file)))?.len();
    let map_size = round_up_to_page(
        usize::try_from(len)
            .unwrap_or(usize::MAX / 2)
            .saturating_add(4 * redo::AREA_BYTES)
            .saturating_add(1 << 20),
    );
    let err = |e| engine_error(e, map_size, parent_dir(file));
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size).max_dbs(16).max_readers(1);
    // SAFETY: `MDB_RDONLY` only takes abilities away. `MDB_NOLOCK` leaves coordination to
    // us and `MDB_NOSUBDIR` names the file itself: the copy is a new file of this call's own
    // (created with `create_new`), which nothing else opens before it returns, and this
    // environment is its only user, on this thread.
    unsafe { options.flags(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK | EnvFlags::NO_SUB_DIR) };
    // SAFETY: heed's `open` requires that nothing but LMDB modifies the mapped file while
    // the map is alive: nothing else has the new file open (above), and the zeros below are
    // written once this environment is closed.
    let env = unsafe { options.open(file) }.map_err(err)?;
    let offset = (|| {
        let rtxn = env.read_txn().map_err(err)?;
        let meta = env
            .database_options()
            .types::<Bytes, Bytes>()
            .key_comparator::<KeyComparator>()
            .name(name::META)
            .open(&rtxn)
            .map_err(err)?;
        match meta {
            Some(meta) => record_area_offset(&env, &rtxn, &meta, map_size, file),
            None => Ok(None),
        }
    })();
    env.prepare_for_closing().wait();
    // The map is gone: zeros written now change nothing a reference could see.
    if let Some(offset) = offset? {
        let out =
            std::fs::OpenOptions::new().write(true).open(file).map_err(|e| io_error(e, parent_dir(file)))?;
        std::os::unix::fs::FileExt::write_all_at(&out, &vec![0; redo::AREA_BYTES], offset)
            .map_err(|e| io_error(e, parent_dir(file)))?;
    }
    Ok(())
}

/// Puts the commit record area, empty, into `meta` (see `storage/redo.rs`). A new value:
/// LMDB gives it overflow pages of its own, which no later transaction touches.
fn add_record_area(wtxn: &mut RwTxn<'_>, tables: &Tables) -> heed::Result<()> {
    tables.meta.put(wtxn, meta_key::COMMIT_RECORDS, &vec![0; redo::AREA_BYTES])
}

/// Where the commit record area starts in `file` (`data.mdb`, or a copy of it), as `env`
/// maps it (`None`: the store has none). Only the value's address is taken from the map;
/// the page header before it is read through the file.
fn record_area_offset(
    env: &Env<WithoutTls>,
    txn: &RoTxn<'_, WithoutTls>,
    meta: &Database<Bytes, Bytes, KeyComparator>,
    map_size: usize,
    file: &Path,
) -> Result<Option<u64>, Error> {
    let dir = parent_dir(file);
    let Some(area) = meta.get(txn, meta_key::COMMIT_RECORDS).map_err(|e| engine_error(e, map_size, dir))?
    else {
        return Ok(None);
    };
    if area.len() != redo::AREA_BYTES {
        return Err(Error::CorruptMeta { reason: "the commit record area has the wrong size" });
    }
    // LMDB keeps a value this large in overflow pages: the value starts right after the
    // header of its first page. Its place in the file comes from the process's table of
    // mappings, and the page header there must say it is that page.
    let page_size = u64::from(env.stat().page_size);
    let corrupt =
        || Error::CorruptMeta { reason: "the commit record area is not in overflow pages of its own" };
    let Some(offset) = redo::mapped_offset(area.as_ptr() as usize).map_err(|e| io_error(e, dir))? else {
        // Without a table of mappings (other systems than Linux) there are no records.
        return if cfg!(target_os = "linux") {
            Err(Error::Internal("the commit record area is not in a mapping of this process"))
        } else {
            Ok(None)
        };
    };
    let header_at = offset.checked_sub(crate::lmdb_file::PAGE_HEADER as u64).ok_or_else(corrupt)?;
    if header_at % page_size != 0
        || offset.checked_add(redo::AREA_BYTES as u64).is_none_or(|end| end > env.info().map_size as u64)
    {
        return Err(corrupt());
    }
    let mut header = [0u8; crate::lmdb_file::PAGE_HEADER];
    let file = std::fs::File::open(file).map_err(|e| io_error(e, dir))?;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, header_at).map_err(|e| io_error(e, dir))?;
    if crate::lmdb_file::overflow_page_number(&header) != Some(header_at / page_size) {
        return Err(corrupt());
    }
    Ok(Some(offset))
}

/// Applies the commit record of the transaction after the store's last one, if the area
/// holds that record whole (see `storage/redo.rs`): the last commit acknowledged before a
/// power loss whose meta page did not reach the disk.
///
/// Under LMDB's write lock, so no transaction of another process is under way: a record
/// for the next transaction is a power loss's leftover, or the record of a transaction
/// whose process was killed before it committed (never answered, so it may land), or of one
/// that failed and that its process has not erased yet. That process's repair then finds
/// the store moved on and reports the outcome as unknown, which it is.
fn apply_pending_record(
    env: &Env<WithoutTls>,
    tables: &Tables,
    map_size: usize,
    dir: &Path,
) -> Result<(), Error> {
    let err = |e| engine_error(e, map_size, dir);
    let mut wtxn = env.write_txn().map_err(err)?;
    let next = wtxn.id() as u64;
    let changes = {
        let Some(offset) = record_area_offset(env, &wtxn, &tables.meta, map_size, &dir.join("data.mdb"))?
        else {
            return Ok(());
        };
        let file = std::fs::File::open(dir.join("data.mdb")).map_err(|e| io_error(e, dir))?;
        let slot = redo::read_slot(&file, offset, next).map_err(|e| io_error(e, dir))?;
        let Some(record) = redo::record_in(&slot, next) else { return Ok(()) };
        record
            .changes()
            .map(|c| c.map(|c| (c.op, c.table, c.key.to_vec(), c.value.to_vec())))
            .collect::<Result<Vec<_>, ()>>()
            .map_err(|()| Error::CorruptMeta { reason: "the record of the last commit does not decode" })?
    };
    let does_not_apply =
        || Error::CorruptMeta { reason: "the record of the last commit does not apply to the store" };
    for (op, code, k, v) in &changes {
        let table = tables.by_code(*code).ok_or_else(does_not_apply)?;
        let applied = match op {
            redo::Op::Put => table.put(&mut wtxn, k, v),
            redo::Op::Insert => table.put_with_flags(&mut wtxn, PutFlags::NO_OVERWRITE, k, v),
            redo::Op::Append => table.put_with_flags(&mut wtxn, PutFlags::APPEND, k, v),
            redo::Op::Delete => table.delete(&mut wtxn, k).map(drop),
        };
        applied.map_err(|e| match e {
            heed::Error::Mdb(MdbError::KeyExist) => does_not_apply(),
            other => err(other),
        })?;
    }
    wtxn.commit().map_err(err)?;
    crate::trace::event!(
        target: "varvedb::open",
        tracing::Level::INFO,
        txnid = next,
        changes = changes.len(),
        "applied the record of the last commit"
    );
    Ok(())
}

/// Whether the store has a commit record to apply, which only an open for writing does (see
/// [`apply_pending_record`]). Not while another process has the store open: without LMDB's
/// write lock, a record for the next transaction may be one a live process is committing.
fn pending_record(
    env: &Env<WithoutTls>,
    tables: &Tables,
    map_size: usize,
    dir: &Path,
    lock_file: &files::LockFile,
) -> Result<bool, Error> {
    let rtxn = env.read_txn().map_err(|e| engine_error(e, map_size, dir))?;
    let next = rtxn.id() as u64 + 1;
    let Some(offset) = record_area_offset(env, &rtxn, &tables.meta, map_size, &dir.join("data.mdb"))? else {
        return Ok(false);
    };
    let file = std::fs::File::open(dir.join("data.mdb")).map_err(|e| io_error(e, dir))?;
    let slot = redo::read_slot(&file, offset, next).map_err(|e| io_error(e, dir))?;
    Ok(redo::record_in(&slot, next).is_some() && !lock_file.used_elsewhere().unwrap_or(true))
}

/// Checks a stored format version against the formats this build reads or upgrades, and
/// returns it.
fn check_format(bytes: &[u8]) -> Result<u32, Error> {
    let found = bytes
        .try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| Error::CorruptMeta { reason: "format version is not 4 bytes" })?;
    if !(FORMAT_BEFORE_TAILS..=ENCRYPTED_FORMAT_VERSION).contains(&found) {
        // Older formats (1 and 3, and the unbound encrypted format 2) have no upgrade in
        // place: every record and index entry would be rewritten. A write open drops its
        // transaction, so tables created for this build's layout are not kept.
        return Err(Error::IncompatibleFormat { found, supported: ENCRYPTED_FORMAT_VERSION });
    }
    Ok(found)
}

/// The upgrade from formats 4 and 5: each stream's partial chunk of index entries moves
/// from `streams` into its head, as the tail, and every head gets its checksum. Records and
/// every other table stay as they are, so the upgrade is one transaction over the heads, and
/// an interrupted one leaves the old format whole.
///
/// Damage is left for reads and the integrity check to report, never sealed as sound: a
/// head that does not decode, or whose partial chunk does not hold the entries its version
/// says, is left as it was (and fails the checksum of the new format); a missing partial
/// chunk leaves the tail empty. The heads are read in batches, so that the upgrade of a
/// store of many streams does not hold them all in memory.
fn move_tails_into_heads(wtxn: &mut RwTxn<'_>, tables: &Tables) -> heed::Result<()> {
    const BATCH: usize = 4096;
    let mut after: Option<Vec<u8>> = None;
    let mut heads = Vec::with_capacity(BATCH);
    let mut buf = Vec::new();
    let mut seqs = [0u64; value::INDEX_CHUNK];
    loop {
        heads.clear();
        let bounds = match &after {
            Some(k) => (Bound::Excluded(&k[..]), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        for entry in tables.stream_heads.range(wtxn, &bounds)?.take(BATCH) {
            let (k, v) = entry?;
            heads.push((k.to_vec(), v.to_vec()));
        }
        let Some((last, _)) = heads.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (k, head) in &heads {
            let (Ok(stream), Some(decoded)) =
                (<[u8; 16]>::try_from(&k[..]), value::StreamHead::decode_unchecked_old(head))
            else {
                continue;
            };
            let stream = u128::from_be_bytes(stream);
            let chunk = key::stream_chunk(stream, decoded.version / key::INDEX_CHUNK);
            let tail = match value::tail_len(decoded.version) {
                0 => None,
                _ => tables.streams.get(wtxn, &chunk)?.map(<[u8]>::to_vec),
            };
            if let Some(tail) = &tail
                && value::decode_index_chunk(tail, &mut seqs) != Some(value::tail_len(decoded.version))
            {
                continue;
            }
            value::StreamHead { tail: tail.as_deref().unwrap_or_default(), ..decoded }
                .encode_into(stream, &mut buf);
            tables.stream_heads.put(wtxn, k, &buf)?;
            if tail.is_some() {
                tables.streams.delete(wtxn, &chunk)?;
            }
        }
    }
}

/// Opens every table of a store read-only, and checks its format version. What
/// [`prepare_tables`] would add or change (a table, the format version, the upgrade of
/// format 4 or 5) is [`Error::NeedsWriteOpen`].
fn open_tables(env: &Env<WithoutTls>, map_size: usize, dir: &Path) -> Result<Tables, Error> {
    let err = |e| engine_error(e, map_size, dir);
    let needs_write = |reason| Error::NeedsWriteOpen { path: canonical(dir), reason };
    let rtxn = env.read_txn().map_err(err)?;
    if !ours_or_empty(env, &rtxn).map_err(err)? {
        return Err(Error::NotAStore { path: canonical(dir) });
    }
    let open = |name: &str| -> Result<Table, Error> {
        env.database_options()
            .types::<Bytes, Bytes>()
            .key_comparator::<KeyComparator>()
            .name(name)
            .open(&rtxn)
            .map_err(err)?
            .map(|db| Table::named(db, name))
            .ok_or_else(|| needs_write("it lacks a table that a write open of its format adds"))
    };
    // The format first: a store of an older format is refused as a write open refuses it,
    // whatever tables it lacks.
    let meta = open(name::META)?;
    match meta.get(&rtxn, meta_key::FORMAT_VERSION).map_err(err)? {
        Some(bytes) => {
            let found = check_format(bytes)?;
            if found < FORMAT_VERSION {
                return Err(needs_write("its format is older, and an open for writing upgrades it in place"));
            }
        }
        None => return Err(needs_write("it has no format version yet")),
    }
    let tables = Tables {
        events: open(name::EVENTS)?,
        streams: open(name::STREAMS)?,
        stream_heads: open(name::STREAM_HEADS)?,
        event_ids: open(name::EVENT_IDS)?,
        blobs: open(name::BLOBS)?,
        checkpoints: open(name::CHECKPOINTS)?,
        projections: open(name::PROJECTIONS)?,
        keys: open(name::KEYS)?,
        schema: open(name::SCHEMA)?,
        snapshots: open(name::SNAPSHOTS)?,
        meta,
        shredded_headers: open(name::SHREDDED_HEADERS)?,
        merkle: open(name::MERKLE)?,
    };
    // Committing a read transaction keeps the tables it opened open for the environment.
    rtxn.commit().map_err(err)?;
    Ok(tables)
}

/// Whether an LMDB file is empty or a store: LMDB's main database names only our tables, or
/// our `meta` table holds a format version.
fn ours_or_empty(env: &Env<WithoutTls>, txn: &Txn<'_>) -> heed::Result<bool> {
    let Some(main) = env.open_database::<Bytes, Bytes>(txn, None)? else {
        return Ok(true);
    };
    let mut others = false;
    for entry in main.iter(txn)? {
        let (key, _) = entry?;
        if !name::ALL.iter().any(|name| name.as_bytes() == key) {
            others = true;
            break;
        }
    }
    if !others {
        return Ok(true);
    }
    let meta = env
        .database_options()
        .types::<Bytes, Bytes>()
        .key_comparator::<KeyComparator>()
        .name(name::META)
        .open(txn)?;
    match meta {
        Some(meta) => Ok(meta.get(txn, meta_key::FORMAT_VERSION)?.is_some()),
        None => Ok(false),
    }
}

/// The operating system calls the storage layer makes beyond what `std` offers.
mod sys {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    /// Bytes of a filesystem: those this process may still use, and its size.
    pub(super) struct Space {
        pub(super) available: u64,
        pub(super) total: u64,
    }

    impl Space {
        /// Less than 1 MiB left, or 1% of the filesystem if that is less: what is left after
        /// a write was cut short for want of space.
        pub(super) fn nearly_full(&self) -> bool {
            self.available < (1 << 20).min(self.total / 100)
        }
    }

    fn c_path(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
    }

    /// The space of the filesystem holding `path` (its reserve counts for root, which may
    /// write into it).
    // The field types of `statvfs` differ between platforms; on some they are `u64` already.
    #[allow(clippy::useless_conversion)]
    pub(super) fn space(path: &Path) -> io::Result<Space> {
        let path = c_path(path)?;
        let mut buf = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `path` is NUL-terminated and outlives the call; `buf` is a writable
        // `statvfs`, which the call fills in when it succeeds, and which is read only then.
        if unsafe { libc::statvfs(path.as_ptr(), buf.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: filled in by the successful call above.
        let buf = unsafe { buf.assume_init() };
        // SAFETY: `geteuid` takes nothing and always succeeds.
        let root = unsafe { libc::geteuid() } == 0;
        let unit = u64::from(buf.f_frsize);
        let free = if root { u64::from(buf.f_bfree) } else { u64::from(buf.f_bavail) };
        Ok(Space {
            available: free.saturating_mul(unit),
            total: u64::from(buf.f_blocks).saturating_mul(unit),
        })
    }

    /// Gives `file` disk blocks for `offset..offset + len`, extending it if it is shorter,
    /// without changing a byte of it. `Unsupported` where the filesystem cannot.
    pub(super) fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let too_large = |_| io::Error::from(io::ErrorKind::InvalidInput);
            let (offset, len) = (libc::off_t::try_from(offset).map_err(too_large)?, {
                libc::off_t::try_from(len).map_err(too_large)?
            });
            loop {
                // SAFETY: `fallocate` on a descriptor `file` keeps open, with mode 0: it
                // allocates blocks (and extends the size) and changes no byte; no pointers.
                if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EOPNOTSUPP) => return Err(io::ErrorKind::Unsupported.into()),
                    _ => return Err(e),
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (file, offset, len);
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Takes (`lock`) or releases a write lock on the first byte of `file`: the lock LMDB
    /// tries first, to learn whether another process uses the lock file. `false` when
    /// another process holds a lock there.
    pub(super) fn lock_first_byte(file: &File, lock: bool) -> io::Result<bool> {
        // SAFETY: `flock` is plain integers; all zeros is a valid value.
        let mut range: libc::flock = unsafe { std::mem::zeroed() };
        let kind = if lock { libc::F_WRLCK } else { libc::F_UNLCK };
        range.l_type = kind as _;
        range.l_whence = libc::SEEK_SET as _;
        range.l_start = 0;
        range.l_len = 1;
        loop {
            // SAFETY: `F_SETLK` on a descriptor `file` keeps open, with a pointer to an
            // initialized `flock` that outlives the call and is only read.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &raw const range) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EACCES | libc::EAGAIN) => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Whether another process holds a lock on the first byte of `file`: every process with
    /// an LMDB environment open on a lock file holds a shared one there. Asks only (`F_GETLK`):
    /// this process's own locks are neither reported nor changed.
    pub(super) fn first_byte_locked_elsewhere(file: &File) -> io::Result<bool> {
        byte_locked_elsewhere(file, 0)
    }

    /// Whether another process holds a lock on byte `at` of `file`, as
    /// [`first_byte_locked_elsewhere`] asks of the first.
    pub(super) fn byte_locked_elsewhere(file: &File, at: i64) -> io::Result<bool> {
        let mut range = one_byte(at, libc::F_WRLCK);
        // SAFETY: `F_GETLK` on a descriptor `file` keeps open, with a pointer to an
        // initialized `flock` that outlives the call, which the kernel overwrites with the
        // conflicting lock, or with `F_UNLCK` in `l_type` if there is none.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &raw mut range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(i32::from(range.l_type) != libc::F_UNLCK)
    }

    /// The `fcntl` range of byte `at`, for a lock of type `kind`.
    fn one_byte(at: i64, kind: i32) -> libc::flock {
        // SAFETY: `flock` is plain integers; all zeros is a valid value.
        let mut range: libc::flock = unsafe { std::mem::zeroed() };
        range.l_type = kind as _;
        range.l_whence = libc::SEEK_SET as _;
        range.l_start = at as _;
        range.l_len = 1;
        range
    }

    /// Takes a shared lock on byte `at` of `file`, without waiting: one that conflicts is
    /// only ever exclusive, and no process takes those there. Held until the process closes
    /// any descriptor of the file, or ends.
    pub(super) fn lock_byte_shared(file: &File, at: i64) -> io::Result<()> {
        let range = one_byte(at, libc::F_RDLCK);
        // SAFETY: `F_SETLK` on a descriptor `file` keeps open, with a pointer to an
        // initialized `flock` that outlives the call and that the kernel only reads.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &raw const range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives the file `from` the name `to` too, unless `to` exists (`AlreadyExists`). A new
    /// hard link; where the filesystem has none, a rename that replaces nothing.
    pub(super) fn link_no_replace(from: &Path, to: &Path) -> io::Result<()> {
        match std::fs::hard_link(from, to) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error().is_some_and(|c| c == libc::EPERM || c == libc::EOPNOTSUPP) => {
                rename_no_replace(from, to).map_err(|_| e)
            }
            Err(e) => Err(e),
        }
    }

    fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
        #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
        {
            let (from, to) = (c_path(from)?, c_path(to)?);
            // SAFETY: both paths are NUL-terminated and outlive the call; `AT_FDCWD` makes
            // them relative to the working directory, as `std` resolves paths.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
        }
        #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
        {
            let _ = (from, to);
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn round_up_to_page(size: usize) -> usize {
    // LMDB requires a multiple of the OS page size; 64 KiB covers every page size in use.
    const GRANULE: usize = 64 * 1024;
    size.max(GRANULE).checked_next_multiple_of(GRANULE).unwrap_or(usize::MAX / GRANULE * GRANULE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_chunk_keys_sort_by_stream_then_chunk() {
        let mut keys = [
            key::stream_chunk(2, 1),
            key::stream_chunk(1, 256),
            key::stream_chunk(1, 2),
            key::stream_chunk(u128::MAX, 0),
            key::stream_chunk(1, u32::MAX),
        ];
        keys.sort_unstable();
        let decoded: Vec<_> = keys.iter().map(|k| key::decode_stream_chunk(k).unwrap()).collect();
        assert_eq!(decoded, vec![(1, 2), (1, 256), (1, u32::MAX), (2, 1), (u128::MAX, 0)]);
        assert_eq!(key::index_chunk_of(1), (0, 0));
        assert_eq!(key::index_chunk_of(64), (0, 63));
        assert_eq!(key::index_chunk_of(65), (1, 0));
        assert_eq!(key::index_chunk_of(u32::MAX), ((u32::MAX - 1) / 64, 62));
    }

    #[test]
    fn index_chunks_round_trip_and_reject_garbage() {
        let mut out = [0u64; value::INDEX_CHUNK];
        for seqs in [vec![1u64], vec![5, 6, 1000, 1 << 40, u64::MAX], (1..=64).map(|i| i * 977).collect()] {
            let mut buf = Vec::new();
            let mut last = 0;
            for &s in &seqs {
                value::push_leb128(&mut buf, s - last);
                last = s;
            }
            assert_eq!(value::decode_index_chunk(&buf, &mut out), Some(seqs.len()));
            assert_eq!(&out[..seqs.len()], &seqs[..]);
            // Cut inside the last number: refused.
            if buf.len() > 1 && buf[buf.len() - 2] & 0x80 != 0 {
                assert_eq!(value::decode_index_chunk(&buf[..buf.len() - 1], &mut out), None);
            }
        }
        assert_eq!(value::decode_index_chunk(&[], &mut out), None, "empty");
        assert_eq!(value::decode_index_chunk(&[1, 0], &mut out), None, "a difference of 0");
        assert_eq!(value::decode_index_chunk(&[0x80], &mut out), None, "cut");
        assert_eq!(value::decode_index_chunk(&[0xff; 10], &mut out), None, "over 64 bits");
        assert_eq!(value::decode_index_chunk(&[1; 65], &mut out), None, "65 entries");
        let mut max = vec![0xff; 9];
        max.push(1);
        max.push(1);
        assert_eq!(value::decode_index_chunk(&max, &mut out), None, "a sum past u64::MAX");
    }

    #[test]
    fn seq_keys_sort_numerically() {
        let mut keys = [key::seq(256), key::seq(1), key::seq(u64::MAX), key::seq(255)];
        keys.sort_unstable();
        let decoded: Vec<_> = keys.iter().map(|k| key::decode_seq(k).unwrap()).collect();
        assert_eq!(decoded, vec![1, 255, 256, u64::MAX]);
    }

    #[test]
    fn kind_event_lists_round_trip_and_reject_garbage() {
        let mut list = Vec::new();
        value::encode_kind_events([("account.deposited", 1), ("account.withdrawn", 2), ("x", 0)], &mut list);
        assert_eq!(value::kind_events_contain(&list, "account.withdrawn", 2), Some(true));
        assert_eq!(value::kind_events_contain(&list, "account.withdrawn", 1), Some(false));
        assert_eq!(value::kind_events_contain(&list, "x", 0), Some(true));
        assert_eq!(value::kind_events_contain(&list, "account", 1), Some(false));
        assert_eq!(value::kind_events_contain(&[], "x", 0), Some(false));
        // Cut anywhere inside an entry, the list does not decode.
        for cut in [1, 5, 17, 20, list.len() - 1] {
            assert_eq!(value::kind_events_contain(&list[..cut], "zzz", 9), None, "cut at {cut}");
        }
        // The kind key cannot be an event's schema key: those start with a tag length of 1..=255.
        assert_eq!(key::kind_events("account")[0], 0);
        assert_ne!(key::schema("a", 1)[0], 0);
    }

    #[test]
    fn stream_head_round_trips_and_rejects_garbage() {
        let mut buf = Vec::new();
        for head in [
            value::StreamHead { version: 7, kind: None, tail: &[1, 2, 130, 1] },
            value::StreamHead { version: u32::MAX, kind: Some("order"), tail: &[] },
            value::StreamHead { version: 64, kind: Some("o"), tail: &[] },
        ] {
            head.encode_into(9, &mut buf);
            assert_eq!(value::StreamHead::decode(9, &buf), Some(head.clone()));
            // Under another key, or with any bit flipped, it is not a head.
            assert_eq!(value::StreamHead::decode(8, &buf), None);
            for bit in 0..buf.len() * 8 {
                let mut flipped = buf.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(value::StreamHead::decode(9, &flipped), None, "bit {bit}");
            }
        }
        let sealed = |rest: &[u8]| {
            let mut v =
                crc32c::crc32c_append(crate::crc::crc32c(&9u128.to_be_bytes()), rest).to_le_bytes().to_vec();
            v.extend_from_slice(rest);
            v
        };
        assert_eq!(value::StreamHead::decode(9, &sealed(&[1, 0, 0])), None);
        assert_eq!(value::StreamHead::decode(9, &sealed(&[1, 0, 0, 0, 3, b'a'])), None);
        assert_eq!(value::StreamHead::decode(9, &sealed(&[1, 0, 0, 0, 1, 0xff])), None);
        assert!(value::StreamHead::decode(9, &sealed(&[1, 0, 0, 0, 1, b'a'])).is_some());
    }

    #[test]
    fn log_entries_are_those_of_a_range_from_the_same_seq() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open_immediate(dir.path(), 1 << 20);
        let events = storage.tables.events;
        let mut txn = storage.write_txn().unwrap();
        // Keys no sound log holds, below and among the seqs: a range skips those below its
        // bound; a read of the whole log (from 0 or 1) reports the two short ones instead.
        for k in
            [&[0][..], &[0, 0, 0], &key::seq(0), &key::seq(1), &key::seq(2), &[0, 0, 0, 0, 0, 0, 0, 2, 0]]
        {
            storage.put(&mut txn, events, k, b"v").unwrap();
        }
        storage.commit(txn).unwrap();
        let txn = storage.read_txn().unwrap();
        for from in [0, 1, 2, 3] {
            let (log, damage): (Vec<_>, Vec<_>) =
                storage.log_from(&txn, from).unwrap().partition(Result::is_ok);
            let log: Vec<_> = log.into_iter().map(Result::unwrap).collect();
            let bound = key::seq(from);
            let range =
                storage.entries(&txn, events, (Bound::Included(&bound), Bound::Unbounded), false).unwrap();
            assert_eq!(log, range.map(Result::unwrap).collect::<Vec<_>>(), "from {from}");
            assert_eq!(damage.len(), if from <= 1 { 2 } else { 0 }, "from {from}");
            assert!(damage.iter().all(|e| matches!(e, Err(Error::CorruptIndex { table: "events", .. }))));
        }
    }

    /// A store in `dir` whose commits flush, with a map of `map_size` bytes.
    fn open_immediate(dir: &Path, map_size: usize) -> Storage {
        let config = StorageConfig {
            map_size,
            max_readers: 8,
            merkle_tree: false,
            read_only: false,
            flushes: Flushes::EachCommit,
        };
        Storage::open(dir, &config).unwrap()
    }

    /// A store whose log holds `n` records of many sizes, every 97th in overflow pages.
    fn walk_store(dir: &Path, n: u64) -> Storage {
        let storage = open_immediate(dir, 1 << 28);
        let events = storage.tables.events;
        for chunk in (1..=n).collect::<Vec<_>>().chunks(5_000) {
            let mut txn = storage.write_txn().unwrap();
            for &seq in chunk {
                let len =
                    if seq % 97 == 0 { 5_000 + seq as usize % 3 } else { 1 + (seq * 37 % 300) as usize };
                storage.put(&mut txn, events, &key::seq(seq), &vec![seq as u8; len]).unwrap();
            }
            storage.commit(txn).unwrap();
        }
        storage
    }

    #[test]
    fn a_walk_of_the_map_gives_what_lmdbs_cursor_gives() {
        let dir = tempfile::tempdir().unwrap();
        let n = 20_000;
        let storage = walk_store(dir.path(), n);
        let txn = storage.read_txn().unwrap();
        let events = storage.tables.events;
        for from in [0, 1, 2, 35, 97, 500, 7_777, n - 1, n, n + 1, n + 500, u64::MAX] {
            let mut log = storage.log_from(&txn, from).unwrap();
            assert!(log.walks_the_map(), "from {from}");
            let walked: Vec<_> = log.by_ref().map(Result::unwrap).collect();
            // The whole way from the map: LMDB's cursor never took over.
            assert!(log.walks_the_map(), "from {from}");
            let bound = key::seq(from);
            let range: Vec<_> = storage
                .entries(&txn, events, (Bound::Included(&bound), Bound::Unbounded), false)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(walked.len() as u64, (n + 1).saturating_sub(from.max(1)), "from {from}");
            assert!(walked == range, "from {from}");
        }
    }

    #[test]
    fn a_walk_hands_over_to_lmdb_at_a_damaged_node_and_gives_what_lmdb_gives() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let n = 3_000;
        let storage = walk_store(dir.path(), n);
        let events = storage.tables.events;
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(dir.path().join("data.mdb")).unwrap();
        // Where the node of `seq`'s record lies in the file.
        let node_of = |seq: u64| {
            let txn = storage.read_txn().unwrap();
            let value = storage.get(&txn, events, &key::seq(seq)).unwrap().unwrap();
            redo::mapped_offset(value.as_ptr() as usize - 8 - crate::lmdb_file::NODE_HEADER).unwrap().unwrap()
        };
        let (middle, last) = (node_of(1_234), node_of(n));
        // Damage that LMDB reads past without a fault (some it does not: a node's flags that
        // say duplicates send its cursor through the node's data as if it were a page): in
        // the record of seq 1,234, its key's size and the page number in its page's header;
        // in the last record, a key cut to 7 bytes and a key that goes back to seq 5, both of
        // which sort before the seq handed out last, where LMDB's cursor steps on to them.
        let page_size = u64::from(storage.env.stat().page_size);
        let damage: [(u64, &[u8]); 4] = [
            (middle + 6, &9u16.to_ne_bytes()),
            (middle - middle % page_size, &u64::MAX.to_ne_bytes()),
            (last + 6, &7u16.to_ne_bytes()),
            (last + 8, &key::seq(5)),
        ];
        for (at, bytes) in damage {
            let mut sound = vec![0; bytes.len()];
            file.read_exact_at(&mut sound, at).unwrap();
            file.write_all_at(bytes, at).unwrap();
            let txn = storage.read_txn().unwrap();
            for from in [1, 1_000, 1_234, n - 1] {
                let mut log = storage.log_from(&txn, from).unwrap();
                let walked: Vec<_> = log.by_ref().map(|e| e.map_err(|e| e.to_string())).collect();
                // From the start, the walk meets the damage and hands over; from later on, a
                // seek may pass it by, as LMDB's own seek does.
                assert!(from > 1 || !log.walks_the_map(), "damage at {at}");
                let bound = key::seq(from);
                let range: Vec<_> = storage
                    .entries(&txn, events, (Bound::Included(&bound), Bound::Unbounded), false)
                    .unwrap()
                    .map(|e| e.map_err(|e| e.to_string()))
                    .collect();
                assert!(walked == range, "damage at {at}, from {from}");
            }
            drop(txn);
            file.write_all_at(&sound, at).unwrap();
        }
    }

    fn default_order(a: &[u8], b: &[u8]) -> Ordering {
        // LMDB's `mdb_cmp_memn`: `memcmp` over the shorter length, then the shorter first.
        a.cmp(b)
    }

    #[test]
    fn key_order_is_lmdb_default_order() {
        let keys: Vec<Vec<u8>> = [
            &[][..],
            &[0],
            &[0, 0],
            &[0xff],
            &[1, 2, 3],
            &[1, 2, 3, 4],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[1, 2, 3, 4, 5, 6, 7, 9],
            &[1, 2, 3, 4, 5, 6, 7, 8, 0],
            &[0x80, 0, 0, 0, 0, 0, 0, 0],
            &[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ]
        .iter()
        .map(|k| k.to_vec())
        .chain([key::seq(1), key::seq(255), key::seq(256), key::seq(u64::MAX)].map(|k| k.to_vec()))
        .chain(
            [key::stream_chunk(1, 2), key::stream_chunk(1, 256), key::stream_chunk(2, 1)].map(|k| k.to_vec()),
        )
        .chain([key::stream(1), key::stream(1 << 64), key::stream(u128::MAX)].map(|k| k.to_vec()))
        .collect();
        for a in &keys {
            for b in &keys {
                assert_eq!(KeyComparator::compare(a, b), default_order(a, b), "{a:?} {b:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn key_order_matches_on_arbitrary_keys(
            common in proptest::collection::vec(0u8..4, 0..24),
            a in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..12),
            b in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..12),
        ) {
            // A shared start, so that keys often agree on whole words before they differ.
            let a = [&common[..], &a[..]].concat();
            let b = [&common[..], &b[..]].concat();
            proptest::prop_assert_eq!(KeyComparator::compare(&a, &b), default_order(&a, &b));
            proptest::prop_assert_eq!(KeyComparator::compare(&a, &a), Ordering::Equal);
        }

        #[test]
        fn key_order_matches_on_keys_of_one_length(
            len in proptest::sample::select(vec![4usize, 8, 16, 20, 32]),
            a in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 32),
            at in 0usize..32,
            byte in proptest::arbitrary::any::<u8>(),
        ) {
            // Two keys that differ in one byte, anywhere, or not at all.
            let a = &a[..len];
            let mut b = a.to_vec();
            b[at % len] = byte;
            proptest::prop_assert_eq!(KeyComparator::compare(a, &b), default_order(a, &b));
            proptest::prop_assert_eq!(KeyComparator::compare(&b, a), default_order(&b, a));
        }
    }

    #[test]
    fn tables_built_with_key_order_are_sound_under_the_default_order() {
        // Keys of many lengths sharing words, enough for a B-tree of several levels.
        let mut keys: Vec<Vec<u8>> = (0..5000u64)
            .map(|i| {
                let word = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60).to_be_bytes();
                let mut k = word[..(i % 9) as usize].to_vec();
                k.extend_from_slice(&(i % 7).to_be_bytes()[..(i % 13) as usize % 9]);
                k.extend_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        {
            let storage = Storage::open(
                dir.path(),
                &StorageConfig {
                    map_size: 1 << 24,
                    max_readers: 8,
                    merkle_tree: false,
                    read_only: false,
                    flushes: Flushes::EachCommit,
                },
            )
            .unwrap();
            let mut txn = storage.write_txn().unwrap();
            for (i, k) in keys.iter().enumerate() {
                storage.put(&mut txn, storage.tables.blobs, k, &i.to_le_bytes()).unwrap();
            }
            storage.commit(txn).unwrap();
            let closed = storage.env.clone().prepare_for_closing();
            drop(storage);
            closed.wait();
        }
        let mut options = EnvOpenOptions::new();
        options.map_size(1 << 24).max_dbs(16);
        // SAFETY: the store above is closed; nothing else maps or modifies these files.
        let env = unsafe { options.open(dir.path()) }.unwrap();
        let txn = env.read_txn().unwrap();
        let blobs: Database<Bytes, Bytes> = env.open_database(&txn, Some(name::BLOBS)).unwrap().unwrap();
        let stored: Vec<Vec<u8>> = blobs.iter(&txn).unwrap().map(|e| e.unwrap().0.to_vec()).collect();
        let original = keys.clone();
        keys.sort();
        assert_eq!(stored, keys);
        for (i, k) in original.iter().enumerate() {
            assert_eq!(blobs.get(&txn, k).unwrap(), Some(&i.to_le_bytes()[..]));
        }
    }

    #[test]
    fn delete_prefix_deletes_exactly_the_keys_with_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            dir.path(),
            &StorageConfig {
                map_size: 1 << 22,
                max_readers: 8,
                merkle_tree: false,
                read_only: false,
                flushes: Flushes::EachCommit,
            },
        )
        .unwrap();
        let table = storage.tables.projections;
        let keys: Vec<Vec<u8>> = (0..600u32)
            .flat_map(|i| {
                let i = i.to_be_bytes();
                [
                    [&[2, b'a', b'b'][..], &i].concat(),
                    [&[2, b'a', b'c'][..], &i].concat(),
                    vec![2, b'a', b'b'],
                ]
            })
            .chain([vec![2, b'a'], vec![1], vec![3]])
            .collect();
        let mut txn = storage.write_txn().unwrap();
        for k in &keys {
            storage.put(&mut txn, table, k, b"v").unwrap();
        }
        assert_eq!(storage.delete_prefix(&mut txn, table, &[2, b'a', b'b']).unwrap(), 601);
        storage.commit(txn).unwrap();
        let txn = storage.read_txn().unwrap();
        let left: Vec<Vec<u8>> = storage
            .entries(&txn, table, (Bound::Unbounded, Bound::Unbounded), false)
            .unwrap()
            .map(|e| e.unwrap().0.to_vec())
            .collect();
        let mut expected: Vec<Vec<u8>> =
            keys.into_iter().filter(|k| !k.starts_with(&[2, b'a', b'b'])).collect();
        expected.sort();
        expected.dedup();
        assert_eq!(left, expected);
    }

    #[test]
    fn engine_errors_keep_the_engine_error_as_their_source() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        // A sound file whose main table holds a plain value named like a table: LMDB refuses
        // to open it as a table (`MDB_INCOMPATIBLE`), its own error.
        {
            // SAFETY: a new environment that nothing else maps; closed again below.
            let env = unsafe { EnvOpenOptions::new().map_size(1 << 20).open(dir.path()) }.unwrap();
            let mut txn = env.write_txn().unwrap();
            let main: Database<Bytes, Bytes> = env.create_database(&mut txn, None).unwrap();
            main.put(&mut txn, name::EVENTS.as_bytes(), b"not a table").unwrap();
            txn.commit().unwrap();
            env.prepare_for_closing().wait();
        }
        let Err(err) = Storage::open(
            dir.path(),
            &StorageConfig {
                map_size: 1 << 20,
                max_readers: 8,
                merkle_tree: false,
                read_only: false,
                flushes: Flushes::EachCommit,
            },
        ) else {
            panic!("a value opened as a table");
        };
        let Error::Storage(engine) = &err else { panic!("{err:?}") };
        let source = err.source().expect("the storage error is the source");
        assert_eq!(source.to_string(), engine.to_string());
        let heed = source.source().expect("the engine's error is the storage error's source");
        assert!(heed.downcast_ref::<heed::Error>().is_some(), "{heed:?}");
    }

    #[test]
    fn the_lock_file_has_the_size_lmdb_gives_it() {
        for readers in [1, 2, 62, 63, 64, 126, 1024, 5000] {
            let dir = tempfile::tempdir().unwrap();
            let mut options = EnvOpenOptions::new();
            options.map_size(1 << 20).max_readers(readers);
            // SAFETY: a new directory that nothing else opens.
            let env = unsafe { options.open(dir.path()) }.unwrap();
            let len = std::fs::metadata(dir.path().join("lock.mdb")).unwrap().len();
            assert_eq!(len, files::lock_file_size(readers), "{readers} readers");
            assert_eq!(env.info().maximum_number_of_readers, readers);
        }
    }

    #[test]
    fn the_reader_table_gives_the_oldest_reader() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            dir.path(),
            &StorageConfig {
                map_size: 1 << 20,
                max_readers: 200,
                merkle_tree: false,
                read_only: false,
                flushes: Flushes::EachCommit,
            },
        )
        .unwrap();
        let commit = || {
            let mut txn = storage.write_txn().unwrap();
            storage.put(&mut txn, storage.tables.blobs, b"k", b"v").unwrap();
            storage.commit(txn).unwrap();
        };
        assert_eq!(storage.reader_lag().unwrap(), None);
        commit();
        let oldest = storage.read_txn().unwrap();
        // Past the first page of the lock file, where a never-written page would be a hole.
        let mut views: Vec<_> = (0..100).map(|_| storage.read_txn().unwrap()).collect();
        for _ in 0..5 {
            commit();
        }
        views.push(storage.read_txn().unwrap());
        let lag = storage.reader_lag().unwrap().unwrap();
        assert_eq!((lag.commits, lag.pid), (5, std::process::id()));
        drop(oldest);
        drop(views.drain(..100));
        assert_eq!(storage.reader_lag().unwrap().map(|l| l.commits), Some(0));
        commit();
        assert_eq!(storage.reader_lag_unchecked().unwrap().map(|l| l.commits), Some(1));
        drop(views);
        assert_eq!(storage.reader_lag().unwrap(), None);
    }

    fn relaxed_storage(dir: &Path, relaxed: bool) -> Result<Storage, Error> {
        Storage::open(
            dir,
            &StorageConfig {
                map_size: 1 << 24,
                max_readers: 20,
                merkle_tree: false,
                read_only: false,
                flushes: if relaxed { Flushes::Checkpoints } else { Flushes::DeferMeta },
            },
        )
    }

    /// Commits `n` puts of distinct keys, from `first`, without a flush of their own.
    fn put_keys(storage: &Storage, first: u32, n: u32) {
        for i in first..first + n {
            let mut txn = storage.write_txn().unwrap();
            storage.put(&mut txn, storage.tables.blobs, &i.to_be_bytes(), &[7; 600]).unwrap();
            storage.commit_deferred(txn).unwrap();
        }
    }

    fn keys(storage: &Storage) -> u64 {
        storage.len(&storage.read_txn().unwrap(), storage.tables.blobs).unwrap()
    }

    /// Writes the newest checkpoint entry again as if under another boot: what an open finds
    /// after the machine restarted.
    fn as_if_restarted(dir: &Path) {
        let entry = checkpoint::newest(dir).unwrap().unwrap();
        let file = checkpoint::Checkpoints::open(dir).unwrap();
        file.write(entry.txnid, entry.inode, [b'f'; checkpoint::BOOT_ID], &entry.meta).unwrap();
        assert_eq!(checkpoint::newest(dir).unwrap().unwrap().boot, [b'f'; checkpoint::BOOT_ID]);
    }

    #[test]
    fn a_restart_takes_a_relaxed_store_back_to_its_last_checkpoint_and_a_kill_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let storage = relaxed_storage(dir.path(), true).unwrap();
        put_keys(&storage, 0, 50);
        storage.sync().unwrap();
        // Past the checkpoint: replaced pages, freed ones, new ones, and a pin that keeps the
        // checkpoint's from reuse.
        put_keys(&storage, 50, 300);
        let pinned = checkpoint::newest(dir.path()).unwrap().unwrap().txnid;
        assert!(storage.reader_lag().unwrap().is_none(), "the pin is no read view");
        drop(storage);
        // A kill: the same boot, so the page cache holds every commit.
        let storage = relaxed_storage(dir.path(), true).unwrap();
        assert_eq!(keys(&storage), 350);
        drop(storage);
        assert_eq!(checkpoint::newest(dir.path()).unwrap().unwrap().txnid, pinned + 300);

        let storage = relaxed_storage(dir.path(), true).unwrap();
        put_keys(&storage, 350, 10);
        storage.sync().unwrap();
        put_keys(&storage, 360, 200);
        drop(storage);
        as_if_restarted(dir.path());
        // A read-only open leaves the roll-back to an open for writing.
        let read_only = Storage::open(
            dir.path(),
            &StorageConfig {
                map_size: 1 << 24,
                max_readers: 20,
                merkle_tree: false,
                read_only: true,
                flushes: Flushes::EachCommit,
            },
        );
        assert!(matches!(read_only, Err(Error::NeedsWriteOpen { .. })), "{:?}", read_only.err());
        // Opened with immediate durability: rolled back, then the checkpoint file goes.
        let storage = relaxed_storage(dir.path(), false).unwrap();
        assert_eq!(keys(&storage), 360);
        assert!(!dir.path().join(checkpoint::FILE).exists());
        put_keys(&storage, 360, 5);
        drop(storage);
        crate::lmdb_file::verify_file(dir.path()).unwrap();
        let storage = relaxed_storage(dir.path(), true).unwrap();
        assert_eq!(keys(&storage), 365);
    }

    #[test]
    fn relaxed_checkpoints_from_syncs_commits_and_the_writer_never_wait_on_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(relaxed_storage(dir.path(), true).unwrap());
        let (done, finished) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..3)
            .map(|role| {
                let storage = std::sync::Arc::clone(&storage);
                let done = done.clone();
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        match role {
                            // The writer's commits, which flush nothing.
                            0 => put_keys(&storage, i, 1),
                            // A step of a projection: its commit makes a checkpoint, under
                            // the gate.
                            1 => {
                                let mut txn = storage.write_txn().unwrap();
                                storage
                                    .put(&mut txn, storage.tables.checkpoints, b"p", &i.to_le_bytes())
                                    .unwrap();
                                storage.commit(txn).unwrap();
                            }
                            // `Varve::sync` and the writer thread's timed checkpoint.
                            _ => storage.sync().unwrap(),
                        }
                    }
                    done.send(()).unwrap();
                })
            })
            .collect();
        for _ in 0..3 {
            finished.recv_timeout(std::time::Duration::from_mins(2)).expect("no thread waits forever");
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(keys(&storage), 200);
    }

    /// A checkpoint asked for inside a write transaction of another store (a projection
    /// step of one store whose handler syncs another) takes its own store's write lock: the
    /// other transaction holds that store's, not this one's.
    #[test]
    fn a_checkpoint_inside_another_stores_transaction_waits_for_its_own_stores_writer() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = relaxed_storage(a_dir.path(), true).unwrap();
        let b = std::sync::Arc::new(relaxed_storage(b_dir.path(), true).unwrap());
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (taken, holding) = std::sync::mpsc::channel();
        let writer = {
            let (b, committed) = (std::sync::Arc::clone(&b), std::sync::Arc::clone(&committed));
            std::thread::spawn(move || {
                let mut txn = b.write_txn().unwrap();
                b.put(&mut txn, b.tables.blobs, b"k", b"v").unwrap();
                taken.send(()).unwrap();
                // Long enough for a checkpoint that does not wait to be over before it.
                std::thread::sleep(std::time::Duration::from_millis(300));
                committed.store(true, std::sync::atomic::Ordering::SeqCst);
                b.commit_deferred(txn).unwrap();
            })
        };
        holding.recv().unwrap();
        let a_txn = a.write_txn().unwrap();
        b.sync().unwrap();
        assert!(
            committed.load(std::sync::atomic::Ordering::SeqCst),
            "the checkpoint of b was made while b's writer held b's write lock"
        );
        drop(a_txn);
        writer.join().unwrap();
        assert_eq!(keys(&b), 1);
    }

    /// `commit` is all or nothing to its caller: with a relaxed handle its checkpoint comes
    /// after the commit, and a checkpoint that cannot begin (every reader slot taken) must
    /// not turn a commit that was made into an error that says nothing was stored.
    #[test]
    fn a_relaxed_commit_whose_checkpoint_finds_no_reader_slot_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let storage = relaxed_storage(dir.path(), true).unwrap();
        let mut views = Vec::new();
        while let Ok(view) = storage.read_txn() {
            views.push(view);
        }
        let mut txn = storage.write_txn().unwrap();
        storage.put(&mut txn, storage.tables.blobs, b"k", b"v").unwrap();
        let committed = storage.commit(txn);
        assert!(committed.is_ok(), "a commit that was made answered {committed:?}");
        // Its checkpoint was made, the previous pin kept: later commits reuse none of the
        // pages a restart takes the store back to.
        let last = storage.env.info().last_txn_id as u64;
        assert_eq!(checkpoint::newest(dir.path()).unwrap().unwrap().txnid, last);
        drop(views);
        put_keys(&storage, 0, 300);
        drop(storage);
        as_if_restarted(dir.path());
        let storage = relaxed_storage(dir.path(), true).unwrap();
        assert_eq!(keys(&storage), 1);
        drop(storage);
        crate::lmdb_file::verify_file(dir.path()).unwrap();
    }

    /// A relaxed commit is durable only once a checkpoint covers it: a flush of `data.mdb`
    /// (a growth of the file, or what a commit of an immediate handle would flush) proves
    /// nothing, since a power loss takes the store back to the checkpoint whatever was
    /// flushed. The writer leaves the timed checkpoint out for a commit it is told durable.
    #[test]
    fn a_relaxed_commit_counts_as_durable_only_once_a_checkpoint_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = relaxed_storage(dir.path(), true).unwrap();
        for i in 0..2000u32 {
            if i % 100 == 99 {
                // Now and then a checkpoint, which lets LMDB reuse pages again.
                storage.sync().unwrap();
            }
            put_keys(&storage, i, 1);
            let (ticket, txnid) = (storage.last_ticket(), storage.env.info().last_txn_id as u64);
            // Another transaction, which may grow the file ahead and flush it, and another
            // commit of the writer's.
            drop(storage.write_txn().unwrap());
            put_keys(&storage, 100_000 + i, 1);
            if storage.is_durable(ticket) {
                let covered = checkpoint::newest(dir.path()).unwrap().unwrap().txnid;
                assert!(covered >= txnid, "commit {txnid} counts as durable, the checkpoint is of {covered}");
            }
        }
        storage.sync().unwrap();
        assert!(storage.is_durable(storage.last_ticket()));
    }

    #[test]
    fn map_size_is_rounded_to_whole_pages() {
        assert_eq!(round_up_to_page(1), 64 * 1024);
        assert_eq!(round_up_to_page(64 * 1024 + 1), 128 * 1024);
        assert_eq!(round_up_to_page(usize::MAX) % (64 * 1024), 0);
    }

    #[test]
    fn key_order_matches_byte_order_for_every_length_pair_and_difference() {
        let base: Vec<u8> = (0..40u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let check = |a: &[u8], b: &[u8]| {
            assert_eq!(KeyComparator::compare(a, b), a.cmp(b), "{a:?} {b:?}");
            assert_eq!(KeyComparator::compare(b, a), b.cmp(a), "{b:?} {a:?}");
        };
        for la in 0..=34usize {
            for lb in 0..=34usize {
                let (a, b) = (&base[..la], &base[..lb]);
                // One a prefix of the other (or equal).
                check(a, b);
                // Differing first at `p`, with byte pairs around the sign bit, and the
                // opposite order one byte later.
                for p in 0..la.min(lb) {
                    for (x, y) in [(0u8, 1u8), (0x7f, 0x80), (0xff, 0), (0x80, 0x7f), (5, 5)] {
                        let (mut a, mut b) = (a.to_vec(), b.to_vec());
                        a[p] = x;
                        b[p] = y;
                        check(&a, &b);
                        if p + 1 < la.min(lb) {
                            a[p + 1] = 0;
                            b[p + 1] = 0xff;
                            check(&a, &b);
                        }
                    }
                }
            }
        }
    }
}
