//! The writer thread: owns LMDB's single write transaction and commits requests in groups.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use aes_gcm::Aes256Gcm;

use crate::batch::{Appended, Kind, SchemaId, StreamAppend, WriteBatch};
use crate::crypto::{self, Encryption, Master, NoncePool, StreamKey};
use crate::error::Error;
use crate::id::StreamId;
use crate::record::{self, BLOB_THRESHOLD, Body, Content, Envelope, RecordHeader, blob_hash, now_micros};
use crate::storage::{Storage, WriteTxn, key, value};

/// Most requests folded into one commit. Bounds the latency a request waits behind others
/// and the size of the transaction; a larger backlog simply takes several commits.
const MAX_GROUP: usize = 1024;

pub(crate) type WriteResult = Result<Vec<Appended>, Error>;

/// Where the writer sends a request's answer.
pub(crate) enum Reply {
    Blocking(mpsc::SyncSender<WriteResult>),
    Async(tokio::sync::oneshot::Sender<WriteResult>),
}

impl Reply {
    fn send(self, result: WriteResult) {
        // A closed receiver means the caller gave up (a dropped future); the write stands.
        match self {
            Reply::Blocking(tx) => drop(tx.send(result)),
            Reply::Async(tx) => drop(tx.send(result)),
        }
    }
}

pub(crate) struct Request {
    pub(crate) batch: WriteBatch,
    pub(crate) reply: Reply,
}

/// Counters since the store was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) events: AtomicU64,
}

pub(crate) struct WriterConfig {
    pub(crate) max_event_size: usize,
    pub(crate) encryption: Option<Arc<Encryption>>,
}

/// Most unwrapped data keys the writer keeps; past it, the cache starts over.
const KEY_CACHE: usize = 65_536;

/// The writer's encryption state.
struct WriterCrypto {
    encryption: Arc<Encryption>,
    /// Data keys unwrapped or created so far, with the stored bytes they came from: an entry
    /// is used only while the `keys` table still holds exactly those bytes, so a shred or a
    /// rotation (or a transaction that created a key and then aborted) is never missed.
    keys: HashMap<u128, (Vec<u8>, Box<Aes256Gcm>)>,
    nonces: NoncePool,
    blob: Vec<u8>,
    /// Decrypted stored events (idempotent retries); zeroed when the writer stops.
    plain: zeroize::Zeroizing<Vec<u8>>,
}

impl WriterCrypto {
    /// The data key of `stream` as stored in `txn`; `None` if it has none yet.
    fn key(
        &mut self,
        storage: &Storage,
        txn: &WriteTxn<'_>,
        master: &Master,
        stream: u128,
    ) -> Result<Option<&Aes256Gcm>, Error> {
        let Some(stored) = storage.get(txn, storage.tables.keys, &key::stream(stream))? else {
            return Ok(None);
        };
        let cached = self.keys.get(&stream).is_some_and(|(bytes, _)| bytes.as_slice() == stored);
        if !cached {
            let cipher = match master.unwrap(stream, stored)? {
                StreamKey::Key(cipher) => cipher,
                StreamKey::Shredded { .. } => {
                    // A shredded stream's key must not outlive the shred in memory either.
                    self.keys.remove(&stream);
                    return Err(Error::Shredded { stream: StreamId::from(stream) });
                }
            };
            if self.keys.len() >= KEY_CACHE {
                self.keys.clear();
            }
            self.keys.insert(stream, (stored.to_vec(), cipher));
        }
        Ok(self.keys.get(&stream).map(|(_, cipher)| &**cipher))
    }

    /// The data key of `stream`, created (and stored in `txn`) on the stream's first append.
    fn key_for_append(
        &mut self,
        storage: &Storage,
        txn: &mut WriteTxn<'_>,
        master: &Master,
        stream: u128,
        first_version: u32,
    ) -> Result<&Aes256Gcm, Error> {
        if self.key(storage, txn, master, stream)?.is_none() {
            if first_version > 1 {
                return Err(Error::CorruptKey {
                    stream: StreamId::from(stream),
                    reason: "the stream has encrypted events but no stored key",
                });
            }
            let (cipher, wrapped) = master.new_data_key(stream)?;
            storage.put(txn, storage.tables.keys, &key::stream(stream), &wrapped)?;
            if self.keys.len() >= KEY_CACHE {
                self.keys.clear();
            }
            self.keys.insert(stream, (wrapped.to_vec(), cipher));
        }
        self.keys
            .get(&stream)
            .map(|(_, cipher)| &**cipher)
            .ok_or(Error::Internal("a data key just stored is not cached"))
    }
}

/// Longest a group waits for more requests, when fewer are waiting than joined the last one.
const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// Moves the requests already waiting into `group`, up to [`MAX_GROUP`].
fn drain(rx: &mpsc::Receiver<Request>, group: &mut Vec<Request>) {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(r) => group.push(r),
            Err(_) => break,
        }
    }
}

/// Handle to the running writer thread. Dropping it stops the thread after it has answered
/// every request already queued.
pub(crate) struct Writer {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn spawn(
        storage: Arc<Storage>,
        config: WriterConfig,
        counters: Arc<Counters>,
        watch: tokio::sync::watch::Sender<u64>,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<Request>();
        let crypto = config.encryption.clone().map(|encryption| WriterCrypto {
            encryption,
            keys: HashMap::new(),
            nonces: NoncePool::new(),
            blob: Vec::new(),
            plain: zeroize::Zeroizing::new(Vec::new()),
        });
        let mut state = WriterState {
            storage,
            config,
            crypto,
            counters,
            watch,
            buf: Vec::new(),
            head_buf: Vec::new(),
            order: KeyOrder::default(),
            heads: HeadCache::default(),
            last_timestamp: 0,
        };
        state.last_timestamp = state.last_stored_timestamp()?;
        let thread = std::thread::Builder::new().name("varvedb-writer".into()).spawn(move || {
            // The size of the last group: while fewer requests wait than that, linger a
            // little for the rest (writers that just had their answer are sending again).
            let mut last = 1;
            while let Ok(first) = rx.recv() {
                let mut group = vec![first];
                drain(&rx, &mut group);
                if group.len() < last {
                    let deadline = std::time::Instant::now() + LINGER;
                    while group.len() < last {
                        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                            Ok(r) => {
                                group.push(r);
                                drain(&rx, &mut group);
                            }
                            Err(_) => break,
                        }
                    }
                }
                last = group.len();
                state.process(group);
            }
        })?;
        Ok(Writer { tx: Some(tx), thread: Some(thread) })
    }

    pub(crate) fn submit(&self, request: Request) -> Result<(), Error> {
        let tx = self.tx.as_ref().ok_or(Error::WriterStopped)?;
        tx.send(request).map_err(|_| Error::WriterStopped)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // A panicked writer has already failed every pending request; nothing to add.
            let _ = thread.join();
        }
    }
}

struct WriterState {
    storage: Arc<Storage>,
    config: WriterConfig,
    crypto: Option<WriterCrypto>,
    counters: Arc<Counters>,
    watch: tokio::sync::watch::Sender<u64>,
    buf: Vec<u8>,
    head_buf: Vec<u8>,
    order: KeyOrder,
    heads: HeadCache,
    last_timestamp: u64,
}

/// Hashing of stream ids for the writer's maps, which look up and insert several ids per
/// appended event. std's `SipHash` took about 150 instructions per id (700 per event in a
/// batch over many streams); this is two 64 × 64-bit multiplies, folded, with a key drawn
/// once per process from std's random source, so ids chosen to collide cannot be computed
/// without it. (Knowing the key, one could: an id half equal to a key word zeroes the first
/// product, and the product commutes. Even then the cost is a slow writer, never a wrong
/// answer, and the head cache holds at most `HEAD_CACHE` entries.) All maps share the key:
/// never fill one by iterating another, which is quadratic for hashbrown with shared keys.
#[derive(Clone, Copy)]
struct StreamHashing([u64; 2]);

impl Default for StreamHashing {
    fn default() -> Self {
        static KEY: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
        StreamHashing(*KEY.get_or_init(|| {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            [random.hash_one(0u8), random.hash_one(1u8)]
        }))
    }
}

impl std::hash::BuildHasher for StreamHashing {
    type Hasher = StreamHasher;

    fn build_hasher(&self) -> StreamHasher {
        StreamHasher { key: self.0, state: 0 }
    }
}

struct StreamHasher {
    key: [u64; 2],
    state: u64,
}

impl StreamHasher {
    /// The high and low halves of the 128-bit product, xored: every input bit reaches both
    /// the bucket index (low bits) and hashbrown's tag (high bits).
    #[inline]
    fn mix(&mut self, a: u64, b: u64) {
        let product = u128::from(a ^ self.key[0]) * u128::from(b ^ self.key[1] ^ self.state);
        self.state = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl std::hash::Hasher for StreamHasher {
    #[inline]
    fn write_u128(&mut self, id: u128) {
        self.mix(id as u64, (id >> 64) as u64);
    }

    /// Any other input (not used by stream ids), eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word), chunk.len() as u64);
        }
    }

    /// A second round: with one of an id's halves constant (small counters, or counters
    /// in the high half), one multiply leaves the low bits less spread than uniform.
    fn finish(&self) -> u64 {
        let product = u128::from(self.state ^ self.key[1]) * u128::from(self.key[0] | 1);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

/// Most stream heads the writer keeps; past it, the cache starts over.
const HEAD_CACHE: usize = 65_536;

/// The stream heads this writer wrote (version and kind), so that appending to a stream
/// again need not read its head back from the store.
#[derive(Default)]
struct HeadCache {
    map: HashMap<StreamId, (u32, Option<Kind>), StreamHashing>,
    /// The id of the transaction whose commit left the store with these heads; `None` while
    /// a transaction is open or after one failed (the map may hold heads that were never
    /// committed, so it is cleared before use).
    committed: Option<usize>,
}

fn seq_exhausted() -> Error {
    Error::CorruptIndex { table: "events", reason: "the last seq is u64::MAX: no seq is left".into() }
}

/// What validating a request decided.
enum Plan {
    /// Every event's id is already stored: answer with the original positions.
    Deduplicated(Vec<Appended>),
    /// Append, with these positions and these new stream heads.
    Write {
        appended: Vec<Appended>,
        heads: Vec<Head>,
        /// For each stream append, the index of its stream's head in `heads`.
        slots: Vec<u32>,
        schemas: Vec<(String, SchemaId)>,
    },
}

#[derive(Clone)]
struct Head {
    stream: StreamId,
    version: Option<u32>,
    kind: Option<Kind>,
}

/// The stream heads a request moves, in the order it first touches them, with an index by
/// stream once there are more than a few (a linear search per append is quadratic).
#[derive(Default)]
struct Heads {
    list: Vec<Head>,
    index: HashMap<StreamId, usize, StreamHashing>,
}

impl Heads {
    fn position(&mut self, stream: StreamId) -> Option<usize> {
        if self.list.len() < 8 {
            return self.list.iter().position(|h| h.stream == stream);
        }
        if self.index.is_empty() {
            self.index.extend(self.list.iter().enumerate().map(|(i, h)| (h.stream, i)));
        }
        self.index.get(&stream).copied()
    }

    /// The head at `at`, left empty until [`set`](Self::set) puts the new one back.
    fn take(&mut self, at: usize) -> Head {
        let stream = self.list[at].stream;
        std::mem::replace(&mut self.list[at], Head { stream, version: None, kind: None })
    }

    /// Puts `head` at `at`, or adds it if its stream was not in the list.
    fn set(&mut self, at: Option<usize>, head: Head) {
        match at {
            Some(i) => self.list[i] = head,
            None => {
                if !self.index.is_empty() {
                    self.index.insert(head.stream, self.list.len());
                }
                self.list.push(head);
            }
        }
    }
}

impl WriterState {
    /// The commit time of the newest event (0 in an empty store, or if that record is damaged:
    /// a damaged record must not keep the store from opening; reads report it).
    fn last_stored_timestamp(&self) -> Result<u64, Error> {
        let txn = self.storage.read_txn()?;
        let last = self.storage.last_seq(&txn)?;
        Ok(match self.storage.get(&txn, self.storage.tables.events, &key::seq(last))? {
            Some(raw) => Envelope::decode(last, raw).map_or(0, |e| e.head.timestamp_micros),
            None => 0,
        })
    }

    fn process(&mut self, group: Vec<Request>) {
        let (batches, replies): (Vec<WriteBatch>, Vec<Reply>) =
            group.into_iter().map(|r| (r.batch, r.reply)).unzip();
        self.counters.requests.fetch_add(batches.len() as u64, Ordering::Relaxed);
        let results = match self.commit(&batches) {
            Ok(results) => results,
            // A storage failure (map full, disk full, I/O) poisons the whole transaction.
            // Retry each request alone so only the one that cannot fit fails.
            Err(_) if batches.len() > 1 => batches
                .iter()
                .map(|b| match self.commit(std::slice::from_ref(b)) {
                    Ok(mut one) => {
                        one.pop().unwrap_or(Err(Error::Internal("a one-request group gave no answer")))
                    }
                    Err(e) => Err(e),
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for (reply, result) in replies.into_iter().zip(results) {
            reply.send(result);
        }
    }

    /// Applies `batches` in one transaction. `Err` means the transaction failed as a whole
    /// and nothing was committed; request-level failures are inside the `Ok`.
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<WriteResult>, Error> {
        let storage = Arc::clone(&self.storage);
        let mut txn = storage.write_txn()?;
        // A write transaction's id is one past the last committed one, whichever process
        // committed it. The cached heads are those our last commit left: they are the
        // stored ones only if no other transaction committed since. Until this one commits,
        // the cache counts as stale (it takes this transaction's heads as they are written).
        let txn_id = txn.id();
        if self.heads.committed.take().and_then(|id| id.checked_add(1)) != Some(txn_id) {
            self.heads.map.clear();
        }
        // Taken after LMDB's writer lock, as a key rotation does: the master cannot change
        // while this transaction is open.
        let master = self.crypto.as_ref().map(|c| Arc::clone(&c.encryption.read()));
        let master = master.as_deref();
        crate::key_record::ensure_current(&storage, &txn, master)?;
        let mut next_seq = storage.last_seq(&txn)?.checked_add(1).ok_or_else(seq_exhausted)?;
        let mut results = Vec::with_capacity(batches.len());
        let mut events_written = 0u64;
        // Timestamps never go backwards in the log, even if the wall clock does.
        let timestamp = now_micros().max(self.last_timestamp);
        for batch in batches {
            match self.plan(&txn, master, batch, next_seq) {
                Ok(Plan::Deduplicated(appended)) => results.push(Ok(appended)),
                Ok(Plan::Write { appended, heads, slots, schemas }) => {
                    self.write(&mut txn, master, batch, &appended, (&heads, &slots), timestamp)?;
                    for (tag, schema) in &schemas {
                        let k = key::schema(tag, schema.version);
                        storage.put(
                            &mut txn,
                            storage.tables.schema,
                            &k,
                            &value::fingerprint(schema.fingerprint),
                        )?;
                    }
                    let n = appended.iter().map(|a| a.last_seq - a.first_seq + 1).sum::<u64>();
                    next_seq += n;
                    events_written += n;
                    results.push(Ok(appended));
                }
                // Planning only reads, so any error but a failing read of the storage itself
                // (a damaged key or record of one stream, say) concerns this request alone: the
                // others of the group still commit, without being retried one by one.
                Err(e) if e.is_request_local() || !matches!(e, Error::Storage(_) | Error::Io(_)) => {
                    results.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        if events_written > 0 {
            storage.commit(txn)?;
            self.heads.committed = Some(txn_id);
            self.last_timestamp = timestamp;
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters.events.fetch_add(events_written, Ordering::Relaxed);
            self.watch.send_replace(next_seq - 1);
        } else {
            // Nothing written, nothing committed: the store is still as the last commit left it.
            self.heads.committed = txn_id.checked_sub(1);
        }
        Ok(results)
    }

    /// Validates a request against the current state, reading only. Request-local errors
    /// mean nothing of the request is written.
    fn plan(
        &mut self,
        txn: &WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        first_seq: u64,
    ) -> Result<Plan, Error> {
        if batch.appends.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let tables = self.storage.tables;
        if let (Some(master), Some(crypto)) = (master, self.crypto.as_mut()) {
            for part in &batch.appends {
                // Unwraps (and caches) the key, which also authenticates a shredded marker.
                crypto.key(&self.storage, txn, master, part.stream.as_u128())?;
            }
        }
        let mut seen_ids = HashSet::new();
        let mut stored_ids: Vec<(u128, u64)> = Vec::new();
        // Every (tag, version) checked in this request, and whether it is new to the store: a
        // batch of thousands of one event type looks the registry up once, not per event.
        let mut checked: Vec<(String, SchemaId, bool)> = Vec::new();
        let mut total = 0usize;
        for part in &batch.appends {
            let events = batch.events_of(part);
            if events.is_empty() {
                return Err(Error::EmptyBatch);
            }
            if let Some(kind) = &part.kind {
                check_tag("stream kind", kind)?;
            }
            for event in events {
                check_tag("type tag", &event.type_tag)?;
                let size = event.payload.len() + event.metadata.len();
                if size > self.config.max_event_size {
                    return Err(Error::EventTooLarge { index: total, size, max: self.config.max_event_size });
                }
                if let Some(schema) = event.schema {
                    self.check_schema(txn, &event.type_tag, schema, &mut checked)?;
                }
                if let Some(id) = event.id {
                    if !seen_ids.insert(id) {
                        return Err(Error::DuplicateEventId { id });
                    }
                    if let Some(v) = self.storage.get(txn, tables.event_ids, &key::id(id))? {
                        let seq = value::decode_seq(v).ok_or_else(|| Error::CorruptIndex {
                            table: "event_ids",
                            reason: format!("value for id {id:#x} is not a seq"),
                        })?;
                        stored_ids.push((id, seq));
                    }
                }
                total += 1;
            }
        }
        if let Some(&(id, seq)) = stored_ids.first() {
            if stored_ids.len() != total {
                return Err(Error::IdempotencyMismatch { id, seq });
            }
            return self.deduplicate(txn, master, batch, &stored_ids).map(Plan::Deduplicated);
        }

        let mut heads = Heads::default();
        let mut appended = Vec::with_capacity(batch.appends.len());
        let mut slots = Vec::with_capacity(batch.appends.len());
        let mut seq = first_seq;
        for part in &batch.appends {
            let at = heads.position(part.stream);
            slots.push(at.unwrap_or(heads.list.len()) as u32);
            let head = match at {
                Some(i) => heads.take(i),
                None => self.read_head(txn, part.stream, part.kind.as_ref())?,
            };
            check_kind(part, &head)?;
            if !part.expected.is_satisfied_by(head.version) {
                return Err(Error::ConcurrencyConflict {
                    stream: part.stream,
                    expected: part.expected,
                    actual: head.version,
                });
            }
            let n = u32::try_from(part.events.len())
                .map_err(|_| Error::VersionOverflow { stream: part.stream })?;
            let current = head.version.unwrap_or(0);
            let last_version =
                current.checked_add(n).ok_or(Error::VersionOverflow { stream: part.stream })?;
            let next = seq.checked_add(u64::from(n)).ok_or_else(seq_exhausted)?;
            appended.push(Appended {
                stream: part.stream,
                first_version: current + 1,
                last_version,
                first_seq: seq,
                last_seq: next - 1,
                deduplicated: false,
            });
            seq = next;
            let kind = head.kind.or_else(|| part.kind.clone());
            heads.set(at, Head { stream: part.stream, version: Some(last_version), kind });
        }
        let schemas = checked.into_iter().filter(|(_, _, new)| *new).map(|(tag, s, _)| (tag, s)).collect();
        Ok(Plan::Write { appended, heads: heads.list, slots, schemas })
    }

    /// Checks a typed event's fingerprint against the registry, once per (tag, version) per
    /// request; a first use is marked new, to be registered with the request's writes.
    fn check_schema(
        &self,
        txn: &WriteTxn<'_>,
        tag: &str,
        schema: SchemaId,
        checked: &mut Vec<(String, SchemaId, bool)>,
    ) -> Result<(), Error> {
        let mismatch = |stored: u64| Error::SchemaMismatch {
            event: tag.to_owned(),
            version: schema.version,
            stored,
            found: schema.fingerprint,
        };
        if let Some((_, known, _)) = checked.iter().find(|(t, s, _)| t == tag && s.version == schema.version)
        {
            return if known.fingerprint == schema.fingerprint {
                Ok(())
            } else {
                Err(mismatch(known.fingerprint))
            };
        }
        match self.storage.get(txn, self.storage.tables.schema, &key::schema(tag, schema.version))? {
            Some(raw) => {
                let stored = value::decode_fingerprint(raw).ok_or_else(|| Error::CorruptIndex {
                    table: "schema",
                    reason: format!("fingerprint of {tag:?} version {} is not 8 bytes", schema.version),
                })?;
                if stored != schema.fingerprint {
                    return Err(mismatch(stored));
                }
                checked.push((tag.to_owned(), schema, false));
                Ok(())
            }
            None => {
                checked.push((tag.to_owned(), schema, true));
                Ok(())
            }
        }
    }

    /// The stored head of `stream`; its kind shares `wanted`'s copy when they are the same.
    fn read_head(&self, txn: &WriteTxn<'_>, stream: StreamId, wanted: Option<&Kind>) -> Result<Head, Error> {
        if let Some((version, kind)) = self.heads.map.get(&stream) {
            return Ok(Head { stream, version: Some(*version), kind: kind.clone() });
        }
        let raw = self.storage.get(txn, self.storage.tables.stream_heads, &key::stream(stream.as_u128()))?;
        Ok(match raw {
            None => Head { stream, version: None, kind: None },
            Some(bytes) => {
                let h = value::StreamHead::decode(bytes).ok_or_else(|| Error::CorruptIndex {
                    table: "stream_heads",
                    reason: format!("head of stream {stream} cannot be decoded"),
                })?;
                let kind = h.kind.map(|stored| match wanted {
                    Some(wanted) if **wanted == *stored => wanted.clone(),
                    _ => Kind::Shared(stored.into()),
                });
                Head { stream, version: Some(h.version), kind }
            }
        })
    }

    /// Rebuilds the original positions of a retried request from the stored events, and
    /// refuses a "retry" that is not the same request.
    fn deduplicate(
        &mut self,
        txn: &WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        stored: &[(u128, u64)],
    ) -> Result<Vec<Appended>, Error> {
        let mut stored = stored.iter();
        let mut out = Vec::with_capacity(batch.appends.len());
        for part in &batch.appends {
            let mut positions: Option<Appended> = None;
            for event in batch.events_of(part) {
                let &(id, seq) = stored.next().ok_or(Error::Internal("fewer stored ids than events"))?;
                let mismatch = || Error::IdempotencyMismatch { id, seq };
                let raw =
                    self.storage.get(txn, self.storage.tables.events, &key::seq(seq))?.ok_or_else(|| {
                        Error::CorruptIndex {
                            table: "event_ids",
                            reason: format!("id {id:#x} points at missing seq {seq}"),
                        }
                    })?;
                let env = Envelope::decode(seq, raw)?;
                let head = env.head;
                let same_content = match (env.content, master) {
                    (Content::Plain { metadata, body }, None) => {
                        let same_payload = match body {
                            Body::Inline(p) => p == event.payload.as_slice(),
                            Body::Blob { hash, len } => {
                                len as usize == event.payload.len() && *hash == blob_hash(&event.payload)
                            }
                        };
                        metadata == event.metadata.as_slice() && same_payload
                    }
                    (Content::Sealed { metadata_len, payload_len, aad_head, body }, Some(master)) => {
                        metadata_len as usize == event.metadata.len()
                            && payload_len as usize == event.payload.len()
                            && self.open_stored(
                                txn,
                                master,
                                seq,
                                head.stream,
                                (metadata_len, aad_head, body),
                            )? == [event.metadata.as_slice(), event.payload.as_slice()]
                    }
                    (_, None) => {
                        return Err(Error::Corrupt {
                            seq,
                            reason: "an encrypted record in an unencrypted store".into(),
                        });
                    }
                    (_, Some(_)) => {
                        return Err(Error::Corrupt {
                            seq,
                            reason: "an unencrypted record in an encrypted store".into(),
                        });
                    }
                };
                let same = head.stream == part.stream.as_u128()
                    && head.id == Some(id)
                    && head.type_tag == event.type_tag
                    && head.schema_version == event.schema.map_or(0, |s| s.version)
                    && same_content;
                if !same {
                    return Err(mismatch());
                }
                positions = Some(match positions {
                    None => Appended {
                        stream: part.stream,
                        first_version: head.version,
                        last_version: head.version,
                        first_seq: seq,
                        last_seq: seq,
                        deduplicated: true,
                    },
                    Some(p)
                        if p.last_seq.checked_add(1) == Some(seq)
                            && p.last_version.checked_add(1) == Some(head.version) =>
                    {
                        Appended { last_seq: seq, last_version: head.version, ..p }
                    }
                    Some(_) => return Err(mismatch()),
                });
            }
            out.extend(positions);
        }
        Ok(out)
    }

    /// Decrypts a stored sealed body of `stream` into the writer's scratch buffer, returning
    /// `(metadata, payload)`.
    fn open_stored(
        &mut self,
        txn: &WriteTxn<'_>,
        master: &Master,
        seq: u64,
        stream: u128,
        (metadata_len, aad_head, body): (u32, &[u8], Body<'_>),
    ) -> Result<[&[u8]; 2], Error> {
        let storage = Arc::clone(&self.storage);
        let crypto = self.crypto.as_mut().ok_or(Error::Internal("sealed record without encryption state"))?;
        let sealed = match body {
            Body::Inline(s) => s,
            Body::Blob { hash, len } => storage.blob(txn, seq, hash, len)?,
        };
        let mut plain = std::mem::take(&mut crypto.plain);
        plain.clear();
        plain.resize(sealed.len().saturating_sub(crypto::SEAL_OVERHEAD), 0);
        let key = crypto.key(&storage, txn, master, stream)?.ok_or(Error::CorruptKey {
            stream: StreamId::from(stream),
            reason: "the stream has encrypted events but no stored key",
        })?;
        let opened = record::open_sealed(key, seq, aad_head, sealed, &mut plain);
        crypto.plain = plain;
        opened?;
        Ok(crypto.plain.split_at((metadata_len as usize).min(crypto.plain.len())).into())
    }

    fn write(
        &mut self,
        txn: &mut WriteTxn<'_>,
        master: Option<&Master>,
        batch: &WriteBatch,
        appended: &[Appended],
        (heads, slots): (&[Head], &[u32]),
        timestamp_micros: u64,
    ) -> Result<(), Error> {
        let storage = Arc::clone(&self.storage);
        let tables = storage.tables;
        self.order.prepare(batch, heads, slots);
        for ((part, pos), &slot) in batch.appends.iter().zip(appended).zip(slots) {
            let stream = part.stream.as_u128();
            if let (Some(master), Some(crypto)) = (master, self.crypto.as_mut()) {
                crypto.key_for_append(&storage, txn, master, stream, pos.first_version)?;
            }
            for (i, event) in batch.events_of(part).iter().enumerate() {
                let seq = pos.first_seq + i as u64; // within [first_seq, last_seq], checked in plan
                let version = pos.first_version
                    + u32::try_from(i).map_err(|_| Error::VersionOverflow { stream: part.stream })?;
                let head = RecordHeader {
                    stream,
                    version,
                    timestamp_micros,
                    schema_version: event.schema.map_or(0, |s| s.version),
                    id: event.id,
                    type_tag: &event.type_tag,
                };
                if let (Some(_), Some(crypto)) = (master, self.crypto.as_mut()) {
                    let nonce = crypto.nonces.take()?;
                    let cipher = crypto
                        .keys
                        .get(&stream)
                        .map(|(_, c)| &**c)
                        .ok_or(Error::Internal("no data key for a stream being appended to"))?;
                    let blob = head.encode_sealed(
                        seq,
                        &event.metadata,
                        &event.payload,
                        cipher,
                        &nonce,
                        &mut self.buf,
                        &mut crypto.blob,
                    )?;
                    if let Some(hash) = blob {
                        // Unique per event (a fresh nonce), so there is nothing to share.
                        storage.put(txn, tables.blobs, &hash, &crypto.blob)?;
                    }
                } else {
                    let hash;
                    let body = if event.payload.len() > BLOB_THRESHOLD {
                        hash = blob_hash(&event.payload);
                        if storage.get(txn, tables.blobs, &hash)?.is_none() {
                            storage.put(txn, tables.blobs, &hash, &event.payload)?;
                        }
                        Body::Blob {
                            hash: &hash,
                            len: u32::try_from(event.payload.len()).unwrap_or(u32::MAX),
                        }
                    } else {
                        Body::Inline(&event.payload)
                    };
                    Envelope { head, content: Content::Plain { metadata: &event.metadata, body } }
                        .encode_into(seq, &mut self.buf);
                }
                storage.append(txn, tables.events, &key::seq(seq), &self.buf)?;
                self.order.place(slot, (stream, version, seq));
                if let Some(id) = event.id {
                    storage.insert(txn, tables.event_ids, "event_ids", &key::id(id), &value::seq(seq))?;
                }
            }
        }
        // In key order through one cursor, an index entry or head mostly lands on the leaf
        // page of the one before instead of descending from the root.
        let mut index = storage.puts(txn, tables.streams, "streams")?;
        for &(stream, version, seq) in &self.order.entries {
            // Never overwrite: an existing entry means the stream head lied about the
            // version (damage), and overwriting would unlink a stored event.
            index.insert(&key::stream_version(stream, version), &value::seq(seq))?;
        }
        drop(index);
        let mut stream_heads = storage.puts(txn, tables.stream_heads, "stream_heads")?;
        for &at in &self.order.heads {
            let head = &heads[at as usize];
            let version = head.version.unwrap_or(0);
            value::StreamHead { version, kind: head.kind.as_deref() }.encode_into(&mut self.head_buf);
            stream_heads.put(&key::stream(head.stream.as_u128()), &self.head_buf)?;
            if self.heads.map.len() >= HEAD_CACHE {
                self.heads.map.clear();
            }
            self.heads.map.insert(head.stream, (version, head.kind.clone()));
        }
        drop(stream_heads);
        self.order.trim();
        Ok(())
    }
}

/// A request's index entries and stream heads in key order, by a counting sort on the
/// requests' heads (a comparison sort of every entry cost more than the descents it saved).
/// Within a stream, entries come in version order already.
#[derive(Default)]
struct KeyOrder {
    /// Indices of the request's heads, by stream id.
    heads: Vec<u32>,
    /// For each head, where its stream's next entry goes in `entries`.
    next: Vec<usize>,
    /// `streams` index entries: stream, version, seq.
    entries: Vec<(u128, u32, u64)>,
}

impl KeyOrder {
    /// Makes room for the entries of `batch`, whose appends have their heads at `slots`.
    fn prepare(&mut self, batch: &WriteBatch, heads: &[Head], slots: &[u32]) {
        self.heads.clear();
        self.heads.extend(0..heads.len() as u32);
        self.heads.sort_unstable_by_key(|&at| heads[at as usize].stream);
        self.next.clear();
        self.next.resize(heads.len(), 0);
        for (part, &slot) in batch.appends.iter().zip(slots) {
            self.next[slot as usize] += part.events.len();
        }
        let mut start = 0;
        for &at in &self.heads {
            let n = std::mem::replace(&mut self.next[at as usize], start);
            start += n;
        }
        self.entries.clear();
        self.entries.resize(start, (0, 0, 0));
    }

    /// Lets go of the room a very large request needed, so it is not held for the life of
    /// the writer.
    fn trim(&mut self) {
        const KEPT: usize = 1 << 16;
        if self.entries.capacity() > KEPT {
            self.entries = Vec::new();
            self.next = Vec::new();
            self.heads = Vec::new();
        }
    }

    /// Puts the next entry of the stream whose head is at `slot`.
    fn place(&mut self, slot: u32, entry: (u128, u32, u64)) {
        let at = &mut self.next[slot as usize];
        self.entries[*at] = entry;
        *at += 1;
    }
}

fn check_tag(what: &'static str, tag: &str) -> Result<(), Error> {
    if tag.is_empty() || tag.len() > 255 {
        return Err(Error::InvalidTag { what, value: tag.to_owned() });
    }
    Ok(())
}

fn check_kind(part: &StreamAppend, head: &Head) -> Result<(), Error> {
    let Some(wanted) = &part.kind else { return Ok(()) };
    if head.version.is_none() || head.kind.as_deref() == Some(&**wanted) {
        return Ok(());
    }
    Err(Error::StreamKindMismatch {
        stream: part.stream,
        expected: wanted.to_string(),
        actual: head.kind.as_deref().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn stream_hashes_spread_sequential_and_structured_ids() {
        let hashing = StreamHashing::default();
        // Ids applications pick: counters, counters in the high half, random ones, and ids
        // that differ in one bit each.
        let shapes: [Box<dyn Fn(u128) -> u128>; 4] = [
            Box::new(|i| i),
            Box::new(|i| i << 64),
            Box::new(|i| {
                // splitmix64 of the counter, in both halves
                let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                u128::from(z ^ (z >> 31)) * 0x1_0000_0001
            }),
            Box::new(|i| 1u128 << (i % 128) | (i / 128) << 7),
        ];
        for (shape, id) in shapes.iter().enumerate() {
            let ids: HashSet<u128> = (0..100_000u128).map(id).collect();
            let hashes: HashSet<u64> = ids.iter().map(|&i| hashing.hash_one(StreamId::from(i))).collect();
            assert!(ids.len() > 90_000, "shape {shape}: the test's ids repeat");
            assert_eq!(hashes.len(), ids.len(), "shape {shape}: colliding hashes");
            // hashbrown picks buckets by the low bits and tags entries by the top 7.
            let low: HashSet<u64> = hashes.iter().map(|h| h & 0xffff).collect();
            let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            // Uniform hashes would leave about 51,000 of the 65,536 values taken.
            assert!(low.len() > 45_000, "shape {shape}: {} distinct low 16 bits", low.len());
            assert_eq!(top.len(), 128, "shape {shape}: top 7 bits not all used");
        }
    }
}
