//! The storage layer: the LMDB environment, every table, and their key encodings.
//!
//! This is the only module that names heed or LMDB types. Of the crate's `unsafe` code, it
//! holds the LMDB calls; `record` and `crc` hold the rest (see `docs/design.md`).
//! The byte layout of every key and value is documented in `docs/design.md`; the format
//! version stored in `meta` guards it.

use std::cmp::Ordering;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{
    CompactionOption, Comparator, Database, Env, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn, WithoutTls,
};

use crate::error::{Error, StorageError};

/// On-disk format version written to `meta` on creation and checked on every open.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The format version of an encrypted store. Same layout, but every record is sealed: a
/// build that knows only version 1 refuses such a store instead of appending plaintext to it.
pub(crate) const ENCRYPTED_FORMAT_VERSION: u32 = 2;

/// Keys of the `meta` table.
pub(crate) mod meta_key {
    pub(crate) const FORMAT_VERSION: &[u8] = b"format_version";
    pub(crate) const CREATED_AT_MICROS: &[u8] = b"created_at_micros";
    /// Present in encrypted stores: the master key's epoch and a check value (see `crypto`).
    pub(crate) const ENCRYPTION: &[u8] = b"encryption";
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
    pub(super) const META: &str = "meta";
}

/// A read transaction. Without thread-local reader slots, so it may move between threads.
pub(crate) type ReadTxn<'env> = RoTxn<'env, WithoutTls>;
/// The single write transaction, owned by the writer thread.
pub(crate) type WriteTxn<'env> = RwTxn<'env>;

type Table = Database<Bytes, Bytes, KeyComparator>;

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

/// The log's entries from a seq on, in order: [`Entries`] over a range, or, from the start
/// of the log, a plain iteration, which spares a range's checks on every step.
pub(crate) struct LogEntries<'t> {
    inner: LogEntriesInner<'t>,
    map_size: usize,
}

enum LogEntriesInner<'t> {
    Range(Entries<'t>),
    /// The table from its first entry, those with keys below `skip_below` left out: the
    /// entries of a range from that bound. Once one key is at or above the bound, every
    /// later one is too.
    FromFirst {
        iter: heed::RoIter<'t, Bytes, Bytes>,
        skip_below: Option<[u8; key::SEQ_LEN]>,
    },
}

impl<'t> Iterator for LogEntries<'t> {
    type Item = Result<(&'t [u8], &'t [u8]), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (iter, skip_below) = match &mut self.inner {
            LogEntriesInner::FromFirst { iter, skip_below } => (iter, skip_below),
            LogEntriesInner::Range(entries) => return entries.next(),
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
    /// `stream u128 BE ‖ version u32 BE` → `seq u64 LE`.
    pub(crate) streams: Table,
    /// `stream u128 BE` → `StreamHead` (current version, optional kind).
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
    /// `tag length u8 ‖ tag ‖ schema version u32 BE` → `fingerprint u64 LE`.
    pub(crate) schema: Table,
    /// `name` → value; holds the format version.
    pub(crate) meta: Table,
}

/// Key encodings. Big-endian so LMDB's byte-wise order is numeric order.
pub(crate) mod key {
    pub(crate) const SEQ_LEN: usize = 8;
    pub(crate) const STREAM_VERSION_LEN: usize = 20;

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

    pub(crate) fn stream_version(stream: u128, version: u32) -> [u8; STREAM_VERSION_LEN] {
        let mut k = [0u8; STREAM_VERSION_LEN];
        k[..16].copy_from_slice(&stream.to_be_bytes());
        k[16..].copy_from_slice(&version.to_be_bytes());
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

    pub(crate) fn decode_stream_version(bytes: &[u8]) -> Option<(u128, u32)> {
        if bytes.len() != STREAM_VERSION_LEN {
            return None;
        }
        let stream = u128::from_be_bytes(bytes[..16].try_into().ok()?);
        let version = u32::from_be_bytes(bytes[16..].try_into().ok()?);
        Some((stream, version))
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

    /// `stream_heads` value: `version u32 LE ‖ kind length u8 ‖ kind bytes (UTF-8)`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct StreamHead<'a> {
        pub(crate) version: u32,
        pub(crate) kind: Option<&'a str>,
    }

    impl<'a> StreamHead<'a> {
        pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
            out.clear();
            out.extend_from_slice(&self.version.to_le_bytes());
            let kind = self.kind.unwrap_or("");
            // Kinds are validated to at most 255 bytes before they reach here.
            out.push(u8::try_from(kind.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&kind.as_bytes()[..kind.len().min(255)]);
        }

        pub(crate) fn decode(bytes: &'a [u8]) -> Option<Self> {
            let version = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
            let len = usize::from(*bytes.get(4)?);
            let kind = bytes.get(5..5 + len)?;
            if bytes.len() != 5 + len {
                return None;
            }
            let kind = std::str::from_utf8(kind).ok()?;
            Some(StreamHead { version, kind: (!kind.is_empty()).then_some(kind) })
        }
    }
}

/// The LMDB environment and its tables.
pub(crate) struct Storage {
    env: Env<WithoutTls>,
    pub(crate) tables: Tables,
    map_size: usize,
}

/// Settings the storage layer needs from the user's options.
pub(crate) struct StorageConfig {
    pub(crate) map_size: usize,
    pub(crate) max_readers: u32,
}

impl Storage {
    /// Opens (creating if needed) the store in directory `path`.
    pub(crate) fn open(path: &Path, config: &StorageConfig) -> Result<Self, Error> {
        // LMDB trusts the file it maps; damage it would read on the way in is refused first.
        crate::lmdb_file::check_before_open(path, &[name::META], &[name::EVENTS])?;
        std::fs::create_dir_all(path)?;
        let map_size = round_up_to_page(config.map_size);
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_size).max_dbs(16).max_readers(config.max_readers);
        // SAFETY: heed's `open` requires that the mapped files are modified by nothing but LMDB
        // (in this process or another) while the map is alive, because we hand out `&[u8]` and
        // `&Archived<T>` into the map. That cannot be enforced from here; it is the documented
        // precondition of `Options::open` (do not write to `data.mdb` by other means, no network
        // filesystems). Everything LMDB itself writes goes through copy-on-write pages that no
        // live read transaction can see, and we set no flag that weakens this (`WRITE_MAP`,
        // `NO_LOCK`, `NO_SYNC`). A second open of the same path in this process is refused by
        // heed (`Error::AlreadyOpen` below); LMDB's lock file coordinates other processes.
        let env = unsafe { options.open(path) }.map_err(|e| match e {
            heed::Error::EnvAlreadyOpened => Error::AlreadyOpen { path: canonical(path) },
            other => storage_error(other, map_size),
        })?;
        // LMDB grows the map to the file's size if the file is larger than asked for.
        let map_size = env.info().map_size;
        // A killed process leaves its reader slots behind; they would pin old pages forever.
        env.clear_stale_readers().map_err(|e| storage_error(e, map_size))?;

        let mut wtxn = env.write_txn().map_err(|e| storage_error(e, map_size))?;
        let create = |wtxn: &mut RwTxn<'_>, name: &str| -> Result<Table, Error> {
            env.database_options()
                .types::<Bytes, Bytes>()
                .key_comparator::<KeyComparator>()
                .name(name)
                .create(wtxn)
                .map_err(|e| storage_error(e, map_size))
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
            meta: create(&mut wtxn, name::META)?,
        };
        let storage = Storage { env: env.clone(), tables, map_size };
        if let Some(bytes) = storage.get(&wtxn, tables.meta, meta_key::FORMAT_VERSION)? {
            let found = bytes
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| Error::CorruptMeta { reason: "format version is not 4 bytes" })?;
            if found != FORMAT_VERSION && found != ENCRYPTED_FORMAT_VERSION {
                return Err(Error::IncompatibleFormat { found, supported: ENCRYPTED_FORMAT_VERSION });
            }
        } else {
            if storage.last_seq(&wtxn)? != 0 {
                return Err(Error::CorruptMeta { reason: "store holds events but no format version" });
            }
            let now = crate::record::now_micros();
            storage.put(&mut wtxn, tables.meta, meta_key::FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes())?;
            storage.put(&mut wtxn, tables.meta, meta_key::CREATED_AT_MICROS, &now.to_le_bytes())?;
        }
        wtxn.commit().map_err(|e| storage_error(e, map_size))?;
        Ok(storage)
    }

    /// The store's directory.
    pub(crate) fn path(&self) -> &Path {
        self.env.path()
    }

    pub(crate) fn map_size(&self) -> usize {
        self.map_size
    }

    pub(crate) fn read_txn(&self) -> Result<ReadTxn<'_>, Error> {
        self.env.read_txn().map_err(|e| self.err(e))
    }

    pub(crate) fn write_txn(&self) -> Result<WriteTxn<'_>, Error> {
        if holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        self.env.write_txn().map_err(|e| self.err(e))
    }

    pub(crate) fn commit(&self, txn: WriteTxn<'_>) -> Result<(), Error> {
        txn.commit().map_err(|e| self.err(e))
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
        table.put(txn, k, v).map_err(|e| self.err(e))
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
        table.put_with_flags(txn, PutFlags::NO_OVERWRITE, k, v).map_err(|e| match e {
            heed::Error::Mdb(MdbError::KeyExist) => Error::CorruptIndex {
                table: name,
                reason: "an entry being written already exists (a stream head or id index is damaged)".into(),
            },
            other => self.err(other),
        })
    }

    /// A cursor on `table` for many inserts in one transaction (see [`Puts`]).
    pub(crate) fn puts<'t>(
        &self,
        txn: &'t mut WriteTxn<'_>,
        table: Table,
        name: &'static str,
    ) -> Result<Puts<'t>, Error> {
        let cursor = table.iter_mut(txn).map_err(|e| self.err(e))?;
        Ok(Puts { cursor, name, map_size: self.map_size })
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
        table.put_with_flags(txn, PutFlags::APPEND, k, v).map_err(|e| self.err(e))
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
        Ok(Entries { inner, map_size: self.map_size })
    }

    /// The log's entries with seqs from `from` on.
    pub(crate) fn log_from<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        from: u64,
    ) -> Result<LogEntries<'t>, Error> {
        let from = key::seq(from);
        let events = self.tables.events;
        let inner = if from <= key::seq(1) {
            // No entry of a sound log is below seq 1: from there, the log is read from its
            // first entry, and anything below the bound is skipped as a range would.
            let iter = events.iter(txn).map_err(|e| self.err(e))?;
            LogEntriesInner::FromFirst { iter, skip_below: Some(from) }
        } else {
            LogEntriesInner::Range(self.entries(
                txn,
                events,
                (Bound::Included(&from), Bound::Unbounded),
                false,
            )?)
        };
        Ok(LogEntries { inner, map_size: self.map_size })
    }

    pub(crate) fn delete(&self, txn: &mut WriteTxn<'_>, table: Table, k: &[u8]) -> Result<bool, Error> {
        table.delete(txn, k).map_err(|e| self.err(e))
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
        let mut iter = table.range_mut(txn, &from).map_err(|e| self.err(e))?;
        while let Some(entry) = iter.next() {
            let (k, _) = entry.map_err(|e| storage_error(e, self.map_size))?;
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
        let mut out = std::fs::File::options().write(true).create_new(true).open(file)?;
        let copied = self
            .env
            .copy_to_file(&mut out, CompactionOption::Enabled)
            .map_err(|e| self.err(e))
            .and_then(|()| out.sync_all().map_err(Error::Io));
        if copied.is_err() {
            // A partial copy must not pass for a backup.
            drop(std::fs::remove_file(file));
        }
        copied
    }

    pub(crate) fn len(&self, txn: &RoTxn<'_, WithoutTls>, table: Table) -> Result<u64, Error> {
        table.len(txn).map_err(|e| self.err(e))
    }

    fn err(&self, e: heed::Error) -> Error {
        storage_error(e, self.map_size)
    }
}

/// Puts into one table through one cursor. `mdb_put` opens a cursor per call and descends
/// from the root; a kept cursor first looks at the leaf page its last put landed on, so keys
/// given in ascending order (or in runs that share pages) mostly skip the descent. The pages
/// written are the same as with `mdb_put`: no flag that changes where pages split is used.
pub(crate) struct Puts<'t> {
    cursor: heed::RwIter<'t, Bytes, Bytes>,
    name: &'static str,
    map_size: usize,
}

impl Puts<'_> {
    /// Inserts a key that must not exist yet, as [`Storage::insert`].
    pub(crate) fn insert(&mut self, k: &[u8], v: &[u8]) -> Result<(), Error> {
        // SAFETY: heed forbids holding a reference into the database while it is modified;
        // `k` and `v` are the caller's own bytes, and while this cursor lives it borrows the
        // transaction mutably, so no value read from the map can be alive. The flags do not
        // include `MDB_CURRENT`: this is a keyed insert (LMDB positions the cursor itself),
        // not an overwrite of the entry under the cursor, so `k` need not be the current key.
        let put = unsafe { self.cursor.put_current_with_options::<Bytes>(PutFlags::NO_OVERWRITE, k, v) };
        put.map_err(|e| match e {
            heed::Error::Mdb(MdbError::KeyExist) => Error::CorruptIndex {
                table: self.name,
                reason: "an entry being written already exists (a stream head or id index is damaged)".into(),
            },
            other => storage_error(other, self.map_size),
        })
    }

    /// Writes `k`, replacing any value it had, as [`Storage::put`].
    pub(crate) fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), Error> {
        // SAFETY: as in `insert`; with no flags LMDB inserts or replaces the value of `k`
        // wherever it is, independently of the cursor's position.
        let put = unsafe { self.cursor.put_current_with_options::<Bytes>(PutFlags::empty(), k, v) };
        put.map_err(|e| storage_error(e, self.map_size))
    }
}

thread_local! {
    static HOLDS_WRITE_LOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a projection step, holding LMDB's write lock: another write
/// transaction (directly, or through the writer thread) would wait for it forever.
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

#[cold]
#[inline(never)]
fn storage_error(e: heed::Error, map_size: usize) -> Error {
    match e {
        heed::Error::Mdb(MdbError::MapFull) => Error::StoreFull { map_size },
        heed::Error::Io(io) => Error::Io(io),
        other => Error::Storage(StorageError::new(other)),
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
    fn stream_version_keys_sort_by_stream_then_version() {
        let mut keys = [
            key::stream_version(2, 1),
            key::stream_version(1, 256),
            key::stream_version(1, 2),
            key::stream_version(u128::MAX, 0),
            key::stream_version(1, u32::MAX),
        ];
        keys.sort_unstable();
        let decoded: Vec<_> = keys.iter().map(|k| key::decode_stream_version(k).unwrap()).collect();
        assert_eq!(decoded, vec![(1, 2), (1, 256), (1, u32::MAX), (2, 1), (u128::MAX, 0)]);
    }

    #[test]
    fn seq_keys_sort_numerically() {
        let mut keys = [key::seq(256), key::seq(1), key::seq(u64::MAX), key::seq(255)];
        keys.sort_unstable();
        let decoded: Vec<_> = keys.iter().map(|k| key::decode_seq(k).unwrap()).collect();
        assert_eq!(decoded, vec![1, 255, 256, u64::MAX]);
    }

    #[test]
    fn stream_head_round_trips_and_rejects_garbage() {
        let mut buf = Vec::new();
        for head in [
            value::StreamHead { version: 7, kind: None },
            value::StreamHead { version: u32::MAX, kind: Some("order") },
        ] {
            head.encode_into(&mut buf);
            assert_eq!(value::StreamHead::decode(&buf), Some(head.clone()));
        }
        assert_eq!(value::StreamHead::decode(&[1, 0, 0]), None);
        assert_eq!(value::StreamHead::decode(&[1, 0, 0, 0, 3, b'a']), None);
        assert_eq!(value::StreamHead::decode(&[1, 0, 0, 0, 1, 0xff]), None);
    }

    #[test]
    fn log_entries_are_those_of_a_range_from_the_same_seq() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            Storage::open(dir.path(), &StorageConfig { map_size: 1 << 20, max_readers: 8 }).unwrap();
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
            [key::stream_version(1, 2), key::stream_version(1, 256), key::stream_version(2, 1)]
                .map(|k| k.to_vec()),
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
            let storage =
                Storage::open(dir.path(), &StorageConfig { map_size: 1 << 24, max_readers: 8 }).unwrap();
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
        let storage =
            Storage::open(dir.path(), &StorageConfig { map_size: 1 << 22, max_readers: 8 }).unwrap();
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
        let Err(err) = Storage::open(dir.path(), &StorageConfig { map_size: 1 << 20, max_readers: 8 }) else {
            panic!("a value opened as a table");
        };
        let Error::Storage(engine) = &err else { panic!("{err:?}") };
        let source = err.source().expect("the storage error is the source");
        assert_eq!(source.to_string(), engine.to_string());
        let heed = source.source().expect("the engine's error is the storage error's source");
        assert!(heed.downcast_ref::<heed::Error>().is_some(), "{heed:?}");
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
