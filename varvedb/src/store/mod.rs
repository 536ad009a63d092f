//! `Varve`, the store handle, and its options.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::batch::{Appended, ExpectedVersion, KindRegistry, NewEvent, WriteBatch};
use crate::crypto::{Encryption, MasterKey, StoreId};
use crate::error::Error;
use crate::id::StreamId;
use crate::read::ReadView;
use crate::storage::{Flushes, ReaderLag, Storage, StorageConfig};
use crate::writer::{Counters, Durability, LagWarning, Reply, Request, WriteResult, Writer, WriterConfig};

mod keys;
mod replica;

/// Options for opening a store.
///
/// ## Defaults
/// - `map_size`: 256 GiB on 64-bit targets (1 GiB on 32-bit). This reserves address space,
///   not disk: the file grows with the data. When it is reached, writes fail with
///   [`Error::StoreFull`] and the store must be reopened with a larger value.
/// - `max_readers`: 1024 concurrent read views (across all processes using the store).
/// - `max_event_size`: 16 MiB of payload plus metadata per event.
/// - no encryption; see [`encryption_key`](Self::encryption_key).
/// - any store identity; see [`expect_store_id`](Self::expect_store_id).
/// - no warning about read views held open; see [`on_reader_lag`](Self::on_reader_lag).
/// - no Merkle tree over the log; see [`verifiable_log`](Self::verifiable_log).
/// - `durability`: [`Durability::Immediate`], a write returns only once its commit is on
///   disk; see [`durability`](Self::durability).
/// - opened for writing; see [`read_only`](Self::read_only).
///
/// ```
/// use varvedb::Options;
/// # let dir = tempfile::tempdir()?;
/// let db = Options::new().map_size(1 << 30).max_event_size(1 << 20).open(dir.path())?;
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    map_size: usize,
    max_readers: u32,
    max_event_size: usize,
    encryption: Option<MasterKey>,
    expect_store_id: Option<StoreId>,
    lag_warning: Option<LagWarning>,
    verifiable_log: bool,
    durability: Durability,
    replica: bool,
    read_only: bool,
    leader: Option<StoreId>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            map_size: if cfg!(target_pointer_width = "64") { 256 << 30 } else { 1 << 30 },
            max_readers: 1024,
            max_event_size: 16 << 20,
            encryption: None,
            expect_store_id: None,
            lag_warning: None,
            verifiable_log: false,
            durability: Durability::Immediate,
            replica: false,
            read_only: false,
            leader: None,
        }
    }
}

impl Options {
    /// The defaults (see [`Options`]).
    #[must_use]
    pub fn new() -> Self {
        Options::default()
    }

    /// Largest size the store may reach, in bytes (rounded up to 64 KiB).
    #[must_use]
    pub fn map_size(mut self, bytes: usize) -> Self {
        self.map_size = bytes;
        self
    }

    /// Most read views open at once, across every process using the store.
    ///
    /// The lock file that holds the readers' slots (64 bytes each) is allocated on disk
    /// whole when the store is opened, so that a full disk fails the open rather than a
    /// read view later. A lock file that another process already uses keeps its size, and
    /// the number of readers that size holds.
    #[must_use]
    pub fn max_readers(mut self, readers: u32) -> Self {
        self.max_readers = readers.max(1);
        self
    }

    /// Largest payload plus metadata of one event, in bytes (at most 4 GiB − 1).
    #[must_use]
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes.min(u32::MAX as usize);
        self
    }

    /// Encrypts the store at rest under `key` (see `docs/encryption.md`).
    ///
    /// A new (or still empty) store becomes encrypted and records it: from then on it opens
    /// only with this key. Each stream gets its own random data key, wrapped by `key`; every
    /// event's metadata and payload are sealed with AES-256-GCM, bound to the event's position.
    /// Stream ids, versions, seqs, type tags, timestamps and sizes stay in the clear, and so do
    /// projections' tables and checkpoints.
    ///
    /// Reads of encrypted events decrypt into a buffer instead of reading in place.
    ///
    /// The open store keeps only keys derived from `key` (for this store), not `key` itself:
    /// [`Varve::options`] returns these options without it.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let key = MasterKey::from_bytes([7; 32]); // in real use: from a secret manager
    /// let db = Options::new().encryption_key(key).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"private".to_vec())])?;
    /// assert_eq!(db.begin_read()?.event(1)?.unwrap().payload(), b"private");
    /// drop(db);
    /// let wrong = Options::new().encryption_key(MasterKey::from_bytes([8; 32])).open(dir.path());
    /// assert!(matches!(wrong, Err(varvedb::Error::WrongKey)));
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn encryption_key(mut self, key: MasterKey) -> Self {
        self.encryption = Some(key);
        self
    }

    /// Opens the store only if its identity ([`Varve::store_id`]) is `id`: a `data.mdb` of
    /// another store in its place (swapped, or restored from the wrong backup) is
    /// [`Error::StoreMismatch`] before anything is read or written.
    ///
    /// In an encrypted store the identity is bound into every key the master key derives, so
    /// a file whose identity was edited to match does not open with the key either
    /// ([`Error::WrongKey`]). In a plain store nothing authenticates it: there it guards
    /// against mistakes, not attackers.
    ///
    /// ```
    /// use varvedb::{Error, MasterKey, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let other = tempfile::tempdir()?;
    /// let key = MasterKey::generate()?;
    /// let id = Options::new().encryption_key(key.clone()).open(dir.path())?.store_id().unwrap();
    /// Options::new().encryption_key(key.clone()).open(other.path())?; // same key, another store
    /// let pinned = Options::new().encryption_key(key).expect_store_id(id);
    /// assert!(pinned.clone().open(dir.path()).is_ok());
    /// assert!(matches!(pinned.open(other.path()), Err(Error::StoreMismatch { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn expect_store_id(mut self, id: StoreId) -> Self {
        self.expect_store_id = Some(id);
        self
    }

    /// Calls `warn` when a read view is held open while many commits land: after each commit,
    /// the writer calls it once the oldest open read view (of any process using the
    /// store) is more than `commits` commits behind, and again each time it falls another
    /// `commits` behind, for as long as it stays open.
    ///
    /// Until a view ends, LMDB keeps every page its snapshot can see, so the store's file
    /// grows with everything written meanwhile, and does not shrink afterwards (the pages
    /// are reused). [`Varve::reader_lag`] gives the same figure on demand.
    ///
    /// `warn` runs between commits, before the commit that set it off is answered, on the
    /// thread that led that commit: the writer thread, or the thread of a blocking
    /// [`Varve::append`] or [`Varve::write`] that found no other write under way. It holds up
    /// every write meanwhile: keep it short (log, count, send on a channel without
    /// waiting), and do not wait on an async runtime in it (that thread may be one of the
    /// runtime's workers). Appending from it is [`Error::WouldDeadlock`]; a panic in it is
    /// caught.
    /// The store keeps `warn` until it closes, so a `Varve` captured in it would keep the
    /// store open for good.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use varvedb::{ExpectedVersion, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let warnings = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&warnings);
    /// let db = Options::new()
    ///     .on_reader_lag(2, move |lag| log.lock().unwrap().push((lag.commits, lag.pid)))
    ///     .open(dir.path())?;
    /// let view = db.begin_read()?; // held across the appends below
    /// for _ in 0..3 {
    ///     db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// }
    /// assert_eq!(*warnings.lock().unwrap(), [(3, std::process::id())]);
    /// drop(view);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn on_reader_lag(mut self, commits: u64, warn: impl Fn(ReaderLag) + Send + Sync + 'static) -> Self {
        self.lag_warning = Some(LagWarning { bound: commits, warn: Arc::new(warn) });
        self
    }

    /// Keeps a Merkle tree over the store's log (RFC 9162), for inclusion and consistency
    /// proofs and signed checkpoints (see `docs/audit.md`). Off by default.
    ///
    /// Once a store keeps the tree it always does, whatever later opens ask, and every
    /// process writing to it maintains it. Opening a store that has no tree with this option
    /// on builds the tree from its events (in transactions of up to 65,536 events), and
    /// keeps it from then on.
    /// Without the tree, proofs and checkpoint checks fail with [`Error::NoMerkleTree`].
    ///
    /// It is off by default for its cost: each event adds about four SHA-256 compressions
    /// to its commit (a large commit hashes them on a second thread) and about 37 bytes to
    /// the file. `docs/performance.md` (W8) has the figures.
    ///
    /// ```
    /// use varvedb::{Error, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().open(dir.path())?;
    /// assert!(matches!(db.begin_read()?.tree_head(), Err(Error::NoMerkleTree)));
    /// drop(db);
    /// let db = Options::new().verifiable_log(true).open(dir.path())?;
    /// assert_eq!(db.begin_read()?.tree_head()?.size, 0);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn verifiable_log(mut self, on: bool) -> Self {
        self.verifiable_log = on;
        self
    }

    /// When a write is acknowledged: once durable ([`Durability::Immediate`], the default),
    /// or once in force, with its events on disk and the last commit at risk of a power loss
    /// ([`Durability::Relaxed`]). A setting of this process's handle, not of the store:
    /// other processes choose their own.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Opens the store as a read replica of another store (its leader): it takes events only
    /// through [`Varve::import_replicated`], which keeps the leader's seqs, versions,
    /// timestamps, ids and bytes, and refuses local appends with [`Error::ReadOnlyReplica`].
    /// Reads, subscriptions, projections and processors work as on any store. Off by
    /// default. A replica of an encrypted store is opened with
    /// [`replica_of`](Self::replica_of) instead.
    ///
    /// **The mode belongs to this handle, not to the file**: nothing in the store says it is
    /// a replica. Opening it without this option *promotes* it, deliberately or not: it takes
    /// appends, which continue its log after the last imported seq, with its own timestamps
    /// and ids; its schema registry, keys and tree (if any) are the leader's up to there.
    /// From its first local append on, its log has left the leader's for good: opened as a
    /// replica again, it refuses the leader's next event ([`Error::ReplicaGap`], as its own
    /// holds that seq). A promoted replica made with [`replica_of`](Self::replica_of) keeps
    /// its leader's identity ([`Varve::store_id`]); publish its events to a new JetStream
    /// stream, not to the one its old leader's are in.
    ///
    /// ```
    /// use varvedb::{Error, ExpectedVersion, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let replica = Options::new().replica(true).open(dir.path())?;
    /// let local = replica.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())]);
    /// assert!(matches!(local, Err(Error::ReadOnlyReplica)));
    /// drop(replica);
    /// let promoted = Options::new().open(dir.path())?; // the same file, now a leader
    /// promoted.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn replica(mut self, on: bool) -> Self {
        self.replica = on;
        self
    }

    /// Opens an existing store for reading only, beside processes that write to it. Off by
    /// default.
    ///
    /// The store's file is opened and mapped read-only (LMDB's `MDB_RDONLY`): this handle
    /// never takes the writer lock and writes nothing to `data.mdb`; only `lock.mdb`, where
    /// every reader takes its slot, is written, as by any read view. Every read view starts
    /// at the last commit of any process, so commits made by a writing process meanwhile
    /// are seen by the next view. Every write ([`Varve::append`], projections, checkpoints,
    /// key operations) is [`Error::ReadOnly`], and [`Stats`] stay at zero.
    ///
    /// Nothing is created, upgraded or repaired: a missing store is [`Error::NoStore`], a
    /// store of an older format is [`Error::IncompatibleFormat`] as in a write open, and a
    /// store an open for writing would change first (one that lacks a table a write open of
    /// its format adds, or its format version, one whose last commit failed while writing its meta
    /// page, an unencrypted empty store given a key, a store without the Merkle tree with
    /// [`verifiable_log`](Self::verifiable_log) on) is [`Error::NeedsWriteOpen`].
    ///
    /// ```
    /// use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// # {
    /// #     let db = Varve::open(dir.path())?;
    /// #     db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// # }
    /// let db = Options::new().read_only(true).open(dir.path())?;
    /// assert_eq!(db.begin_read()?.last_seq()?, 1);
    /// let refused = db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"y".to_vec())]);
    /// assert!(matches!(refused, Err(Error::ReadOnly)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn read_only(mut self, on: bool) -> Self {
        self.read_only = on;
        self
    }

    /// Opens the store as a read replica ([`replica`](Self::replica)) of the store whose
    /// identity is `leader` ([`Varve::store_id`] on the leader; the replication publisher
    /// names its messages by it). A store that holds nothing yet takes that identity; one
    /// that holds events or keys under another identity is [`Error::StoreMismatch`].
    ///
    /// A replica of an encrypted store needs it: every key of an encrypted store is derived
    /// from the master key *and* the identity (see `docs/encryption.md`), so the replica
    /// takes the leader's identity and is opened with the leader's master key, and then
    /// holds the leader's wrapped keys, sealed events and shredded markers byte for byte,
    /// readable as on the leader. A replica of a plain store may keep its own identity.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// # let replica_dir = tempfile::tempdir()?;
    /// let key = MasterKey::generate()?;
    /// let leader = Options::new().encryption_key(key.clone()).open(dir.path())?;
    /// leader.append(7u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"secret".to_vec())])?;
    /// let id = leader.store_id().unwrap();
    /// let replica = Options::new().encryption_key(key).replica_of(id).open(replica_dir.path())?;
    /// replica.import_replicated(&leader.export_replicated(0, 100)?)?;
    /// assert_eq!(replica.begin_read()?.event(1)?.unwrap().payload(), b"secret");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn replica_of(mut self, leader: StoreId) -> Self {
        self.replica = true;
        self.leader = Some(leader);
        self
    }

    /// Opens the store in directory `path`, creating the directory and the store if needed.
    ///
    /// Reads hand out references into the memory-mapped file. So while a store is open, its
    /// files must be changed only by varvedb (or LMDB) in this or another process: never
    /// edit, truncate or replace `data.mdb` by other means, and do not put a store on a
    /// network filesystem. Opening runs a write transaction, so the directory must be
    /// writable.
    ///
    /// A new store is created whole or not at all: it is built in a temporary directory
    /// inside `path`, synced, and only then given its name `data.mdb`. A creation cut short
    /// (a full disk, a crash) leaves no store behind, and what it left is removed by a later
    /// open. Concurrent first opens by several processes create one store.
    ///
    /// The lock file (`lock.mdb`, which LMDB writes through a memory map) is allocated on
    /// disk before LMDB maps it: on a full disk, opening fails with [`Error::DiskFull`]
    /// instead of a read view crashing the process later.
    ///
    /// # Errors
    /// [`Error::NotADirectory`] if `path` is a file; [`Error::AlreadyOpen`] if this process
    /// has it open already; [`Error::NotAStore`] if it holds another application's LMDB
    /// file; [`Error::IncompatibleFormat`] if it was written with another on-disk format;
    /// [`Error::KeyRequired`] if it is encrypted and no key was given; [`Error::WrongKey`];
    /// [`Error::NotEncrypted`] if a key was given for a store that holds unencrypted events;
    /// [`Error::StoreMismatch`] if the store is not the one
    /// [`expect_store_id`](Self::expect_store_id) pinned; [`Error::CorruptIndex`] for the
    /// `keys` table if an encrypted store's data keys do not match their authenticator (one
    /// written back, added or removed behind the store's back);
    /// [`Error::CorruptFile`] if the file is damaged where opening reads it (LMDB does not
    /// check its file; this is checked before LMDB maps it); [`Error::DiskFull`]; other I/O
    /// and storage errors. Opened [`read_only`](Self::read_only): also [`Error::NoStore`] and
    /// [`Error::NeedsWriteOpen`].
    pub fn open(mut self, path: impl AsRef<Path>) -> Result<Varve, Error> {
        let path = path.as_ref();
        let storage = Arc::new(Storage::open(
            path,
            &StorageConfig {
                map_size: self.map_size,
                max_readers: self.max_readers,
                merkle_tree: self.verifiable_log,
                // With `Durability::Immediate` the writer's commits leave their meta page to
                // the next flush (a commit record stands in for it, or the answer waits for
                // that flush; see `writer::durable`); relaxed ones flush nothing, and
                // checkpoints make them durable.
                read_only: self.read_only,
                flushes: if self.durability == Durability::Relaxed {
                    Flushes::Checkpoints
                } else {
                    Flushes::DeferMeta
                },
            },
        )?);
        let opened = crate::key_record::open(
            &storage,
            path,
            self.encryption.as_ref(),
            self.expect_store_id,
            self.leader,
        )?;
        // The master key itself is not kept: only the keys derived from it for this store,
        // which a rotation replaces.
        self.encryption = None;
        let encryption = opened.encryption.map(Arc::new);
        let merkle_tree = if self.read_only {
            let kept = crate::tlog::kept(&storage, &*storage.read_txn()?)?;
            if self.verifiable_log && !kept {
                return Err(Error::NeedsWriteOpen {
                    path: path.to_path_buf(),
                    reason: "the verifiable log is asked for, and the store keeps no Merkle tree yet",
                });
            }
            kept
        } else {
            crate::tlog::open(&storage, self.verifiable_log)?
        };
        let last_seq = storage.last_seq(&*storage.read_txn()?)?;
        let (watch_tx, watch_rx) = tokio::sync::watch::channel(last_seq);
        let import_watch = watch_tx.clone();
        let counters = Arc::new(Counters::default());
        let kinds = Arc::new(KindRegistry::default());
        let writer = if self.read_only {
            Writer::none()
        } else {
            Writer::spawn(
                Arc::clone(&storage),
                WriterConfig {
                    max_event_size: self.max_event_size,
                    kinds: Arc::clone(&kinds),
                    encryption: encryption.clone(),
                    lag_warning: self.lag_warning.clone(),
                    merkle_tree,
                    durability: self.durability,
                },
                Arc::clone(&counters),
                watch_tx,
            )?
        };
        Ok(Varve {
            inner: Arc::new(Inner {
                writer,
                storage,
                encryption,
                counters,
                kinds,
                watch: watch_rx,
                import_watch,
                path: path.to_path_buf(),
                store_id: opened.store_id,
                options: self,
            }),
        })
    }
}

/// An open event store. Cheap to clone; all clones share one store.
///
/// Writes are committed one transaction at a time, concurrent requests together (group
/// commit); reads run in parallel on consistent snapshots ([`ReadView`]). The store closes
/// when the last clone is dropped, after every queued write has been answered.
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let stream = 0x1234u128;
/// let a = db.append(stream, ExpectedVersion::NoStream, [NewEvent::new("opened", b"{}".to_vec())])?;
/// assert_eq!((a.first_seq, a.last_version), (1, 1));
/// let again = db.append(stream, ExpectedVersion::NoStream, [NewEvent::new("opened", b"{}".to_vec())]);
/// assert!(matches!(again, Err(varvedb::Error::ConcurrencyConflict { actual: Some(1), .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Varve {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order is drop order: the writer thread must stop (and release its handle on the
    // environment) before the storage closes, so a reopen right after a drop succeeds.
    writer: Writer,
    storage: Arc<Storage>,
    encryption: Option<Arc<Encryption>>,
    counters: Arc<Counters>,
    kinds: Arc<KindRegistry>,
    watch: tokio::sync::watch::Receiver<u64>,
    /// Wakes subscriptions after a replica's import, which commits outside the writer thread.
    import_watch: tokio::sync::watch::Sender<u64>,
    path: PathBuf,
    store_id: Option<StoreId>,
    options: Options,
}

/// Counters since the store was opened in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Write transactions committed. Below `requests` when group commit folded requests.
    pub commits: u64,
    /// Write requests answered (successful or not).
    pub requests: u64,
    /// Events appended.
    pub events: u64,
    /// Write requests refused with [`Error::ConcurrencyConflict`].
    pub conflicts: u64,
    /// Command attempts repeated after a conflict ([`RetryPolicy`](crate::RetryPolicy)).
    pub retries: u64,
    /// Bytes of event records and new blobs committed by this process (payloads, metadata
    /// and record headers; not index entries or LMDB's pages).
    pub bytes_written: u64,
    /// Flushes of the store's file by this process: each commit (LMDB's commit writes the
    /// transaction's pages and flushes them, so this includes the writes) and each explicit
    /// flush ([`Varve::sync`], relaxed durability's checkpoints). Commits of projections and
    /// checkpoints count too.
    pub syncs: u64,
    /// Total time of the `syncs`.
    pub sync_time: std::time::Duration,
    /// The longest of the `syncs`. One over [`SLOW_SYNC`](crate::SLOW_SYNC) is also
    /// reported through `tracing`.
    pub max_sync: std::time::Duration,
}

impl std::fmt::Debug for Varve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Varve").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Varve {
    /// Opens the store in directory `path` with default [`Options`].
    ///
    /// # Errors
    /// See [`Options::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Varve, Error> {
        Options::new().open(path)
    }

    /// Appends `events` to `stream` if its version matches `expected`; atomic.
    ///
    /// Blocks until the events are durably committed. Concurrent callers share commits.
    /// Do not call from an async task; use [`append_async`](Self::append_async) there.
    ///
    /// # Errors
    /// [`Error::ConcurrencyConflict`] if the stream is not at `expected` (nothing written);
    /// input errors ([`Error::EmptyBatch`], [`Error::EventTooLarge`], [`Error::InvalidTag`],
    /// [`Error::VersionOverflow`], [`Error::DuplicateEventId`], [`Error::IdempotencyMismatch`],
    /// [`Error::StreamKindMismatch`], [`Error::SchemaMismatch`]); [`Error::ReadOnlyReplica`]
    /// on a replica; [`Error::StoreFull`];
    /// damage found while writing ([`Error::Corrupt`], [`Error::CorruptIndex`]);
    /// [`Error::DiskFull`]; [`Error::MapResized`] while another process has grown the store
    /// and this one has read views open; [`Error::WriterStopped`] while the store closes;
    /// I/O errors. Every error but one means nothing of the request was written:
    /// [`Error::OutcomeUnknown`], when the disk failed the very write that makes a commit
    /// durable, says the request may be stored; reopen the store ([`Error::NeedsReopen`])
    /// and resend it with event ids to learn which.
    pub fn append(
        &self,
        stream: impl Into<StreamId>,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<Appended, Error> {
        let mut batch = WriteBatch::new();
        batch.append(stream, expected, events);
        only_append(self.write(batch)?)
    }

    /// Async form of [`append`](Self::append).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Not cancel safe: once sent, the write happens (or fails) even if this future is
    /// dropped, and the outcome is lost. Give events ids with [`NewEvent::with_id`] and resend
    /// the same request to learn the outcome: a stored request answers with its original
    /// positions instead of appending twice.
    pub async fn append_async(
        &self,
        stream: impl Into<StreamId>,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = NewEvent>,
    ) -> Result<Appended, Error> {
        let mut batch = WriteBatch::new();
        batch.append(stream, expected, events);
        only_append(self.write_async(batch).await?)
    }

    /// Commits a [`WriteBatch`] atomically: all its appends or none. Returns the position of
    /// each append, in the batch's order.
    ///
    /// # Errors
    /// As [`append`](Self::append), for any stream of the batch.
    pub fn write(&self, batch: WriteBatch) -> Result<Vec<Appended>, Error> {
        if self.inner.options.read_only {
            return Err(Error::ReadOnly);
        }
        if self.inner.options.replica {
            return Err(Error::ReadOnlyReplica);
        }
        if crate::storage::holds_write_lock() {
            return Err(Error::WouldDeadlock);
        }
        self.counted(self.inner.writer.write(batch))
    }

    /// `result`, counted in [`Stats::conflicts`] if it is a conflict.
    fn counted(&self, result: WriteResult) -> WriteResult {
        if let Err(conflict @ Error::ConcurrencyConflict { .. }) = &result {
            self.inner.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            #[cfg(feature = "tracing")]
            tracing::debug!(target: "varvedb::conflict", %conflict, "write refused");
            #[cfg(not(feature = "tracing"))]
            let _ = conflict;
        }
        result
    }

    /// Counts a command attempt repeated after a conflict.
    pub(crate) fn count_retry(&self) {
        self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Async form of [`write`](Self::write).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    ///
    /// # Cancel safety
    /// As [`append_async`](Self::append_async).
    pub async fn write_async(&self, batch: WriteBatch) -> Result<Vec<Appended>, Error> {
        if self.inner.options.read_only {
            return Err(Error::ReadOnly);
        }
        if self.inner.options.replica {
            return Err(Error::ReadOnlyReplica);
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<WriteResult>();
        self.inner.writer.submit(Request { batch, reply: Reply::Async(tx) })?;
        self.counted(rx.await.map_err(|_| Error::WriterStopped)?)
    }

    /// Starts a read view: a consistent snapshot of everything committed so far.
    ///
    /// # Errors
    /// [`Error::MapResized`] when another process has grown the store past this process's
    /// map while other views of this process are open; a storage error (for example, more
    /// than `max_readers` views open).
    pub fn begin_read(&self) -> Result<ReadView<'_>, Error> {
        ReadView::new(&self.inner.storage, self.inner.encryption.as_deref())
    }

    /// Flushes the store: every write acknowledged before this call survives a power loss
    /// once it returns. Needed only with [`Durability::Relaxed`], whose commits are made
    /// durable by checkpoints: this makes one now.
    ///
    /// # Errors
    /// [`Error::OutcomeUnknown`] if the flush failed: writes acknowledged since the last
    /// flush may be lost, and the store must be reopened ([`Error::NeedsReopen`]).
    /// [`Error::WriterStopped`] with [`Durability::Relaxed`] in a forked child of the process
    /// that opened the store: a checkpoint there would end the parent's.
    pub fn sync(&self) -> Result<(), Error> {
        self.inner.storage.sync()
    }

    /// A `watch` of the last committed seq, updated after every acknowledged commit by this
    /// process (with [`Durability::Immediate`], once the commit is durable). Use it to wake
    /// up when new events arrive, then read them through a view.
    #[must_use]
    pub fn watch_last_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch.clone()
    }

    /// Write counters since the store was opened by this process.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let before = db.stats();
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// let after = db.stats();
    /// assert_eq!(after.events - before.events, 1);
    /// assert!(after.bytes_written > before.bytes_written);
    /// assert!(after.syncs > before.syncs);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let flushes = &self.inner.storage.flushes;
        Stats {
            commits: c.commits.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            syncs: flushes.count.load(Ordering::Relaxed),
            sync_time: std::time::Duration::from_nanos(flushes.total_nanos.load(Ordering::Relaxed)),
            max_sync: std::time::Duration::from_nanos(flushes.max_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The directory the store was opened at.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the store was opened with, without the master key: the store does not
    /// keep it (see [`Options::encryption_key`]).
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The store's identity, to pin with [`Options::expect_store_id`]. `None` for a plain
    /// store made by a build without identities.
    #[must_use]
    pub fn store_id(&self) -> Option<StoreId> {
        self.inner.store_id
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Records that this process uses `kind` as a typed aggregate's kind.
    pub(crate) fn register_kind(&self, kind: &'static str, events: &'static [crate::batch::EventInfo]) {
        self.inner.kinds.register(kind, events);
    }

    pub(crate) fn encryption(&self) -> Option<&Encryption> {
        self.inner.encryption.as_deref()
    }

    /// Writes a compacted copy of the store to `dir/data.mdb`, creating `dir` if needed; the
    /// copy opens as a store of its own. Runs beside writers, on a consistent snapshot. When
    /// it returns, the copy and the directory entries that name it are synced to disk.
    ///
    /// Compacting leaves out the pages LMDB has freed, which may still hold old bytes (for
    /// example a shredded stream's key); the live file keeps them until they are reused.
    ///
    /// # Errors
    /// [`Error::NotADirectory`] if `dir` is a file; an I/O error if `dir/data.mdb` exists
    /// already (nothing is overwritten) or cannot be written; a partial copy is removed.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// # let backup = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path().join("live"))?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// db.backup(backup.path().join("monday"))?;
    /// let copy = Varve::open(backup.path().join("monday"))?;
    /// assert_eq!(copy.begin_read()?.last_seq()?, 1);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn backup(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        crate::storage::prepare_dir(dir)?;
        self.inner.storage.copy_compacted(&dir.join("data.mdb"))
    }

    /// The map size actually in use: the option rounded up to whole pages, or the larger
    /// size another process using the store has set, once this process has taken it.
    #[must_use]
    pub fn map_size(&self) -> usize {
        self.inner.storage.map_size()
    }

    /// How far the oldest open read view of the store, in this or another process, is
    /// behind the last commit (`None` when no view is open). Reader slots of processes
    /// that died are cleared first.
    ///
    /// A view held open keeps every page its snapshot can see, so the store's file grows
    /// with everything committed meanwhile. To be told when it gets large, see
    /// [`Options::on_reader_lag`].
    ///
    /// # Errors
    /// An I/O error reading the lock file; a storage error.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// assert_eq!(db.reader_lag()?, None);
    /// let view = db.begin_read()?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"y".to_vec())])?;
    /// assert_eq!(db.reader_lag()?.map(|lag| lag.commits), Some(2));
    /// drop(view);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn reader_lag(&self) -> Result<Option<ReaderLag>, Error> {
        self.inner.storage.reader_lag()
    }
}

/// Replaces the store in directory `path` with a compacted copy of itself, and overwrites the
/// replaced file: the step that removes, from the store's own file, the bytes LMDB has freed
/// but not reused (old versions of pages: a shredded stream's wrapped key, read-model rows
/// deleted or rewritten, keys wrapped under a retired master key). The store must be closed
/// in every process; it keeps its identity, keys and events, and opens as before.
///
/// Crash-safe: the copy is written to a private directory inside `path`, synced, and only
/// then renamed to `data.mdb`, so a crash at any point leaves either the old file or the
/// whole copy (a later open removes what a crashed run left). Needs free disk space for the
/// copy. On filesystems that do not write in place (copy-on-write filesystems, and SSDs
/// below any filesystem) the old file's blocks may still hold its bytes: see
/// `docs/encryption.md`.
///
/// # Errors
/// [`Error::StoreInUse`] if the store is open in this or another process (nothing is
/// changed); the errors of [`Options::open`] for a damaged file; I/O errors (a full disk: the
/// old file stays).
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
/// drop(db);
/// varvedb::compact_in_place(dir.path())?;
/// assert_eq!(Varve::open(dir.path())?.begin_read()?.last_seq()?, 1);
/// # Ok::<(), varvedb::Error>(())
/// ```
pub fn compact_in_place(path: impl AsRef<Path>) -> Result<(), Error> {
    crate::storage::Storage::compact_in_place(path.as_ref())
}

/// A handle that does not keep the store open (for subscriptions and runners).
#[derive(Clone)]
pub(crate) struct WeakVarve(std::sync::Weak<Inner>);

impl WeakVarve {
    /// The store, if some `Varve` handle still keeps it open.
    pub(crate) fn upgrade(&self) -> Option<Varve> {
        self.0.upgrade().map(|inner| Varve { inner })
    }
}

impl Varve {
    pub(crate) fn downgrade(&self) -> WeakVarve {
        WeakVarve(Arc::downgrade(&self.inner))
    }
}

/// The position of a one-append batch's only append.
fn only_append(appended: Vec<Appended>) -> Result<Appended, Error> {
    let mut appended = appended.into_iter();
    match (appended.next(), appended.next()) {
        (Some(only), None) => Ok(only),
        _ => Err(Error::Internal("a one-append request was answered with another number of positions")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{key, value};

    /// Sets a stream's head directly, as if it held `version` events; writing four billion
    /// real events is not feasible in a test.
    /// Sets a stream's version in its head, keeping the index entries the head holds: a
    /// head that lies about its version.
    fn force_version(db: &Varve, stream: u128, version: u32) {
        let tail = {
            let view = db.inner.storage.read_txn().unwrap();
            db.inner.storage.stream_head(&view, stream.into()).unwrap().unwrap().tail.to_vec()
        };
        force_head_with_tail(db, stream, version, &tail);
    }

    fn force_head_with_tail(db: &Varve, stream: u128, version: u32, tail: &[u8]) {
        let storage = &db.inner.storage;
        let mut txn = storage.write_txn().unwrap();
        let mut buf = Vec::new();
        value::StreamHead { version, kind: None, tail }.encode_into(stream, &mut buf);
        storage.put(&mut txn, storage.tables.stream_heads, &key::stream(stream), &buf).unwrap();
        storage.commit(txn).unwrap();
    }

    /// Sets a stream's head, and gives the stream the index entries
    /// an append after `version` builds on: those of the chunk of `version`, whose entries
    /// point at placeholder records appended to the log.
    fn force_history(db: &Varve, stream: u128, version: u32) {
        let storage = &db.inner.storage;
        let mut txn = storage.write_txn().unwrap();
        let (chunk, at) = key::index_chunk_of(version);
        let last = storage.last_seq(&txn).unwrap();
        let seqs: Vec<u64> = (last + 1..=last + at as u64 + 1).collect();
        for &seq in &seqs {
            storage.append(&mut txn, storage.tables.events, &key::seq(seq), b"placeholder").unwrap();
        }
        storage.delete(&mut txn, storage.tables.streams, &key::stream_chunk(stream, chunk)).unwrap();
        let first = chunk * key::INDEX_CHUNK + 1;
        let mut tail = Vec::new();
        storage.index_append(&mut txn, stream, first, &seqs, &mut tail).unwrap();
        storage.commit(txn).unwrap();
        force_head_with_tail(db, stream, version, &tail);
    }

    #[test]
    fn a_store_of_another_format_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Varve::open(dir.path()).unwrap();
            db.append(1u128, ExpectedVersion::Auto, [event()]).unwrap();
            let storage = &db.inner.storage;
            let mut txn = storage.write_txn().unwrap();
            let future = (crate::storage::ENCRYPTED_FORMAT_VERSION + 1).to_le_bytes();
            storage.put(&mut txn, storage.tables.meta, b"format_version", &future).unwrap();
            storage.commit(txn).unwrap();
        }
        let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
        let err = Varve::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::IncompatibleFormat { found: 12, supported: 11 }), "{err:?}");
        assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before, "open wrote nothing");
    }

    #[test]
    fn a_store_of_an_older_format_is_refused_naming_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        for old in [1u32, 3] {
            {
                let db = Varve::open(dir.path()).unwrap();
                let storage = &db.inner.storage;
                let mut txn = storage.write_txn().unwrap();
                storage.put(&mut txn, storage.tables.meta, b"format_version", &old.to_le_bytes()).unwrap();
                storage.commit(txn).unwrap();
            }
            let before = std::fs::read(dir.path().join("data.mdb")).unwrap();
            let err = Varve::open(dir.path()).unwrap_err();
            assert!(
                matches!(err, Error::IncompatibleFormat { found, supported: 11 } if found == old),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(&format!("format version {old}")) && text.contains("10 (plain)"), "{text}");
            assert_eq!(std::fs::read(dir.path().join("data.mdb")).unwrap(), before, "open wrote nothing");
            std::fs::remove_dir_all(dir.path()).unwrap();
        }
    }

    #[test]
    fn a_damaged_stream_head_cannot_make_an_append_overwrite_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        db.append(3u128, ExpectedVersion::Auto, [event(), event(), event()]).unwrap();
        force_version(&db, 3, 2); // the head lies: the stream really is at version 3
        let r = db.append(3u128, ExpectedVersion::Auto, [event()]);
        assert!(matches!(r, Err(Error::CorruptIndex { table: "stream_heads", .. })), "{r:?}");
        let view = db.begin_read().unwrap();
        assert_eq!(view.last_seq().unwrap(), 3, "nothing written");
        let log: Vec<u32> = view.read_all(1).unwrap().map(|e| e.unwrap().version()).collect();
        assert_eq!(log, [1, 2, 3], "every stored event is still in the log");
        // A stream read reports the entry the head does not cover, instead of passing it by.
        let read: Vec<_> = view.read_stream(3u128, 1).unwrap().collect();
        assert_eq!(read.len(), 3);
        assert_eq!((read[0].as_ref().unwrap().version(), read[1].as_ref().unwrap().version()), (1, 2));
        assert!(
            matches!(&read[2], Err(Error::CorruptIndex { table: "streams", reason }) if reason.contains("version 3")),
            "{:?}",
            read[2]
        );
    }

    #[test]
    fn the_writer_sees_heads_that_another_transaction_committed() {
        // The writer keeps the heads it wrote; a commit by anything else (here a transaction
        // of its own, as another process would make) must not be hidden by them.
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        db.append(5u128, ExpectedVersion::Auto, [event()]).unwrap();
        force_history(&db, 5, 4);
        let stale = db.append(5u128, ExpectedVersion::Exact(1), [event()]);
        assert!(matches!(stale, Err(Error::ConcurrencyConflict { actual: Some(4), .. })), "{stale:?}");
        let a = db.append(5u128, ExpectedVersion::Exact(4), [event()]).unwrap();
        assert_eq!(a.first_version, 5);
        let b = db.append(5u128, ExpectedVersion::Exact(5), [event()]).unwrap();
        assert_eq!(b.first_version, 6);
        assert_eq!(db.begin_read().unwrap().stream_version(5u128).unwrap(), Some(6));
    }

    #[test]
    fn public_handles_are_thread_safe() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Varve>();
        send_sync::<Error>();
        send::<ReadView<'static>>();
        send_sync::<WriteBatch>();
        send::<crate::Subscription>();
        send::<crate::Projection>();
        send::<crate::Processor>();
        send_sync::<crate::Runner<crate::Projection>>();
        send_sync::<crate::ProcessorError>();
        send_sync::<crate::OwnedEvent>();
        send_sync::<crate::ExecuteOptions>();
        send_sync::<crate::RetryPolicy>();
        send_sync::<crate::Transacted<()>>();
        send_sync::<crate::Table<u64, crate::Data<u64>>>();
        send::<crate::Transaction<'static>>();
    }

    fn event() -> NewEvent {
        NewEvent::new("e", b"x".to_vec())
    }

    #[test]
    fn version_overflow_at_u32_max_is_a_typed_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        force_history(&db, 9, u32::MAX - 1);
        // The placeholders of the 62 versions before, in the last chunk of versions.
        let placed = db.begin_read().unwrap().last_seq().unwrap();
        assert_eq!(placed, 62);

        let two = db.append(9u128, ExpectedVersion::Auto, [event(), event()]);
        assert!(matches!(two, Err(Error::VersionOverflow { stream }) if stream == StreamId::from(9)));
        assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), placed, "nothing written");

        let last = db.append(9u128, ExpectedVersion::Exact(u32::MAX - 1), [event()]).unwrap();
        assert_eq!((last.first_version, last.last_version, last.first_seq), (u32::MAX, u32::MAX, placed + 1));

        let past = db.append(9u128, ExpectedVersion::Exact(u32::MAX), [event()]);
        assert!(matches!(past, Err(Error::VersionOverflow { .. })));
        let view = db.begin_read().unwrap();
        assert_eq!(view.last_seq().unwrap(), placed + 1);
        assert_eq!(view.stream_version(9u128).unwrap(), Some(u32::MAX));
        let read: Vec<u32> =
            view.read_stream(9u128, u32::MAX).unwrap().map(|e| e.unwrap().version()).collect();
        assert_eq!(read, [u32::MAX]);
    }
}
