use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::ExpectedVersion;
use crate::id::StreamId;

/// Everything that can go wrong in varvedb.
///
/// Variants are grouped by what the caller can do about them: fix the input (`EmptyBatch`,
/// `EventTooLarge`, ...), retry after re-reading (`ConcurrencyConflict`), reconfigure
/// (`StoreFull`), or stop and investigate (`Corrupt*`). Bytes read from disk never panic;
/// they surface as one of the `Corrupt*` variants naming where the damage is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from the operating system (a full disk is [`Error::DiskFull`] instead).
    /// The transaction in progress was aborted; nothing committed before it is lost.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An error reported by the storage engine that has no more specific variant.
    #[error("storage engine error: {0}")]
    Storage(#[source] StorageError),

    /// This process already has the store at `path` open. Share the [`Varve`](crate::Varve)
    /// handle (it is cheap to clone) instead of opening the store again.
    #[error("the store at {} is already open in this process; clone the existing `Varve` handle instead", path.display())]
    AlreadyOpen {
        /// The canonical path of the store.
        path: PathBuf,
    },

    /// The path given for a store is not a directory (or lies below a file): often the
    /// `data.mdb` file itself. A store is a directory; give the directory that holds (or is
    /// to hold) `data.mdb` and `lock.mdb`.
    #[error("{} is not a directory: a store is the directory that holds data.mdb, not a file", path.display())]
    NotADirectory {
        /// The path as given.
        path: PathBuf,
    },

    /// The directory holds an LMDB file of another application: it has databases other than
    /// a store's tables, and no store format version. Nothing was written to it. Open the
    /// store in a directory of its own.
    #[error("{} holds an LMDB file that is not a varvedb store; nothing was written to it", path.display())]
    NotAStore {
        /// The canonical path of the directory.
        path: PathBuf,
    },

    /// The filesystem holding the store has no space left (or the user's quota is used
    /// up). The operation was abandoned: a failed write stored nothing, and a store whose
    /// creation failed does not exist. Free space, then retry; the store opens and works as
    /// before.
    ///
    /// Reported when a write fails with ENOSPC or EDQUOT, and when it fails with EIO (which
    /// is how LMDB reports a write cut short) while the filesystem has less than 1 MiB, or
    /// less than 1% of its size if that is smaller, available to this process. Any other
    /// EIO is [`Error::Io`].
    #[error("the filesystem holding {} is full ({available} bytes available): free space, then retry", path.display())]
    DiskFull {
        /// The canonical path of the store's directory (or of the directory written to).
        path: PathBuf,
        /// Bytes available to this process right after the failure, as `statvfs` reported.
        available: u64,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// Another process grew the store past this process's memory map, and this process
    /// cannot move its map yet: that needs a moment with no read view or transaction of
    /// its own open. Nothing was read or written. Drop this process's read views (and let
    /// running projection steps finish), then retry: the first read view or write that
    /// begins with none open takes the new size. Reopening the store with a larger
    /// [`Options::map_size`](crate::Options::map_size) also cures it.
    #[error(
        "another process grew the store past this process's map of {map_size} bytes; close this process's read views, then retry"
    )]
    MapResized {
        /// The size of this process's map, in bytes.
        map_size: usize,
    },

    /// The store was written by a version of varvedb with a different on-disk format. A
    /// store of an older format (1, 2 or 3) is read with the build that wrote it, and its
    /// events appended to a new store; nothing is written to it. (Formats 4 to 9 are not
    /// refused: an open for writing upgrades them in place.)
    #[error(
        "the store has on-disk format version {found}, and this build of varvedb reads and writes only format \
         versions 10 (plain) and {supported} (encrypted), and upgrades 4 to 9; a store of an older format must be \
         read with the build that wrote it and its events appended to a new store"
    )]
    IncompatibleFormat {
        /// The format version recorded in the store.
        found: u32,
        /// The newest format version this build reads and writes (10: plain, 11: encrypted;
        /// 4 to 9, the formats before stream heads held their newest index entries, before
        /// the commit record area, and before relaxed handles' checkpoints, are upgraded in
        /// place by an open for writing; 1 and 3, the formats before the compact stream
        /// index and records, and 2, the encrypted format before store identities, are
        /// refused).
        supported: u32,
    },

    /// The store's memory map is full. Nothing of the failed write was stored.
    #[error(
        "the store is full: its map size of {map_size} bytes is reached; reopen it with a larger `Options::map_size`"
    )]
    StoreFull {
        /// The map size in bytes the store was opened with.
        map_size: usize,
    },

    /// The stream's version did not match what the append expected. Nothing of the request
    /// was stored; re-read the stream and decide again.
    #[error("concurrency conflict on stream {stream}: expected {expected}, but the stream is at {}", VersionDisplay(*actual))]
    ConcurrencyConflict {
        /// The stream whose version did not match.
        stream: StreamId,
        /// What the request expected.
        expected: ExpectedVersion,
        /// The stream's version when the request was applied (`None`: the stream does not exist).
        actual: Option<u32>,
    },

    /// A write request with no events, or a stream append with no events.
    #[error("empty batch: a write needs at least one event in every stream it names")]
    EmptyBatch,

    /// A layout description given with an event
    /// ([`NewEvent::with_described_schema`](crate::NewEvent::with_described_schema) or
    /// [`with_described_metadata`](crate::NewEvent::with_described_metadata)) cannot be
    /// decoded; nothing of the request is written.
    #[error("the layout description given for {what} cannot be decoded: {source}")]
    BadLayoutDescription {
        /// The event type and version, or the metadata fingerprint.
        what: String,
        /// Why.
        source: LayoutError,
    },

    /// An event's type tag or a stream kind is empty or longer than 255 bytes.
    #[error("invalid {what} {value:?}: must be 1 to 255 bytes of UTF-8")]
    InvalidTag {
        /// `"type tag"` or `"stream kind"`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },

    /// An event's payload plus metadata exceed `Options::max_event_size`.
    #[error(
        "event {index} of the request is {size} bytes, over the limit of {max} bytes (`Options::max_event_size`)"
    )]
    EventTooLarge {
        /// Position of the event in the request, from 0.
        index: usize,
        /// Payload plus metadata, in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// Appending would take the stream past version `u32::MAX`.
    #[error("stream {stream} cannot grow past version {}", u32::MAX)]
    VersionOverflow {
        /// The full stream.
        stream: StreamId,
    },

    /// Some, but not all, events of a request carry ids that are already stored, or the
    /// stored events with those ids do not match the request. A retry must resend exactly
    /// the original request.
    #[error(
        "event id {id:#034x} is already stored at seq {seq}, but the request does not match the original append"
    )]
    IdempotencyMismatch {
        /// The event id already present.
        id: u128,
        /// Where it is stored.
        seq: u64,
    },

    /// The same event id appears twice in one request.
    #[error("event id {id:#034x} appears more than once in the request")]
    DuplicateEventId {
        /// The repeated id.
        id: u128,
    },

    /// The stream was created with a different kind (aggregate type).
    #[error("stream {stream} has kind {actual:?}, not {expected:?}")]
    StreamKindMismatch {
        /// The stream.
        stream: StreamId,
        /// The kind the request named.
        expected: String,
        /// The kind the stream was created with (`None`: the stream has no kind).
        actual: Option<String>,
    },

    /// The store recorded a different schema fingerprint for this event type and version:
    /// the Rust type changed shape without a new version. Nothing was written or decoded.
    /// Give the changed type a new `#[event(version = ..)]` instead.
    #[error(
        "schema mismatch for event {event:?} version {version}: the store has fingerprint {stored:#018x}, this build has {found:#018x}; changing an event's fields needs a new event version"
    )]
    SchemaMismatch {
        /// The event's type tag.
        event: String,
        /// The event's schema version.
        version: u32,
        /// The fingerprint recorded in the store.
        stored: u64,
        /// The fingerprint of the type in this build.
        found: u64,
    },

    /// A stream holds an event its aggregate does not handle.
    #[error(
        "event at seq {seq} has type {type_tag:?} version {version}, which aggregate {aggregate} does not handle"
    )]
    UnknownEvent {
        /// The event's global sequence number.
        seq: u64,
        /// The event's type tag.
        type_tag: String,
        /// The event's schema version.
        version: u32,
        /// The aggregate's kind.
        aggregate: &'static str,
    },

    /// An event is stored at a version that no handler reads, directly or through an
    /// upcast chain: the handler's version names no `upcast` path back to (or forward to)
    /// the stored one. Nothing is skipped; add the `upcast` link or a handler.
    #[error(
        "event at seq {seq} has type {type_tag:?} version {stored}, which has no upcast path to the handled version {handled}"
    )]
    NoUpcastPath {
        /// The event's global sequence number.
        seq: u64,
        /// The event's type tag.
        type_tag: String,
        /// The version the event is stored as.
        stored: u32,
        /// The (newest) version the handler reads.
        handled: u32,
    },

    /// An append under an aggregate's stream kind named an event that aggregate does not
    /// apply: stored, it would make every later load of the stream fail. Nothing was
    /// written. Checked in the write transaction for every append, typed or untyped, to a
    /// stream of a kind the typed layer knows: one this process has made a `Stream` of
    /// ([`Varve::stream`](crate::Varve::stream)), or whose events an earlier write recorded.
    #[error(
        "event {event:?} version {version} is not an event of aggregate {aggregate:?}, so it cannot be appended to its stream {stream}"
    )]
    ForeignEvent {
        /// The stream appended to.
        stream: StreamId,
        /// The event's type tag.
        event: String,
        /// The event's schema version (0 for untyped bytes).
        version: u32,
        /// The aggregate's kind.
        aggregate: String,
    },

    /// An event's metadata was read as a type of another shape (or it holds raw bytes):
    /// typed metadata starts with its type's fingerprint, and a read with a type whose
    /// fingerprint differs decodes nothing.
    #[error(
        "the metadata of the event at seq {seq} is not of the type read: it starts with {}, the type's fingerprint is {found:#018x}",
        stored.map_or_else(|| "fewer than 8 bytes".to_owned(), |s| format!("{s:#018x}"))
    )]
    MetadataMismatch {
        /// The event's global sequence number.
        seq: u64,
        /// The fingerprint the metadata starts with (`None`: shorter than a fingerprint).
        stored: Option<u64>,
        /// The fingerprint of the type read.
        found: u64,
    },

    /// A projection table's value was stored by a type of another shape than the table's
    /// (a [`Data`](crate::Data) value whose type changed). Nothing was decoded. Rebuild the
    /// projection after changing the type of its values.
    #[error(
        "a value of table {table} was stored with another type: it starts with {}, the table's type has fingerprint {found:#018x}",
        stored.map_or_else(|| "fewer than 8 bytes".to_owned(), |s| format!("{s:#018x}"))
    )]
    TableValueMismatch {
        /// The table, as `projection/table`.
        table: String,
        /// The fingerprint stored with the value (`None`: shorter than a fingerprint).
        stored: Option<u64>,
        /// The fingerprint of the table's value type.
        found: u64,
    },

    /// A loaded state was saved to a different stream than it was loaded from.
    #[error("state loaded from stream {loaded} cannot be saved to stream {stream}")]
    StreamMismatch {
        /// The stream the state was loaded from.
        loaded: StreamId,
        /// The stream it was saved to.
        stream: StreamId,
    },

    /// A [`Transaction`](crate::Transaction) saved to a stream it had already saved to: the
    /// second save was decided on a state without the first one's events. Save all of a
    /// stream's events in one call (a transfer from an account to itself is the usual case).
    #[error("stream {stream} is saved to twice in one transaction; save its events in one call")]
    SavedTwice {
        /// The stream.
        stream: StreamId,
    },

    /// A projection tried to write a table that belongs to another projection.
    #[error("projection {projection:?} cannot write table {table}, which belongs to another projection")]
    ForeignTable {
        /// The projection that tried.
        projection: String,
        /// The table (`projection/table`).
        table: String,
    },

    /// A stored event failed its checksum or could not be decoded.
    #[error("event at seq {seq} is corrupt: {reason}")]
    Corrupt {
        /// The event's global sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },

    /// An index entry disagrees with the log, or has an invalid encoding.
    #[error("the {table} table is corrupt: {reason}")]
    CorruptIndex {
        /// The damaged table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// The store's `meta` table is damaged.
    #[error("the store's metadata is corrupt: {reason}")]
    CorruptMeta {
        /// What is wrong.
        reason: &'static str,
    },

    /// The store's file (`data.mdb`) is damaged: a meta page or a page of its B-trees fails
    /// the structural check that runs before LMDB reads it (on open, in
    /// [`ReadView::check_integrity`](crate::ReadView::check_integrity) and in
    /// [`verify_file`](crate::verify_file)). Nothing was read through LMDB from the damaged
    /// place. The file cannot be repaired in place: restore the store from a backup (check the
    /// backup first with [`verify_file`](crate::verify_file)).
    #[error("the store's file is damaged{}: {reason}", PageDisplay(*page))]
    CorruptFile {
        /// The damaged page, when the damage is in one (`None`: the file as a whole, such as
        /// its length or the pair of meta pages).
        page: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// The event's payload is not a valid archive of the requested type.
    #[error("event at seq {seq} (type {type_tag:?}) is not a valid archive of the requested type: {message}")]
    InvalidArchive {
        /// The event's global sequence number.
        seq: u64,
        /// The event's stored type tag.
        type_tag: String,
        /// What validation found.
        message: String,
    },

    /// Serializing an event with rkyv failed.
    #[error("could not serialize event: {0}")]
    Serialize(String),

    /// A state varvedb's own logic rules out was reached; nothing was written. Please report it.
    #[error("internal error: {0}; nothing was written (please report this)")]
    Internal(&'static str),

    /// The call would wait for a lock this thread already holds: appending, or starting a
    /// write transaction, from inside a projection handler (which runs in the store's write
    /// transaction), or appending from an [`Options::on_reader_lag`](crate::Options::on_reader_lag)
    /// callback (which runs between commits, with the writer held). Record what to do (in the read model, on a
    /// channel) and act on it elsewhere.
    #[error(
        "this call would deadlock: it needs the store's write lock, which this thread holds (inside a projection handler or a reader-lag callback)"
    )]
    WouldDeadlock,

    /// The store's writer has stopped: the store is closing, a commit panicked, or the call
    /// comes from a forked child of the process that opened the store.
    #[error("the store's writer has stopped")]
    WriterStopped,

    /// A commit failed while writing its last page, the one that makes it durable: the
    /// request may or may not be stored, and the store must be reopened
    /// ([`NeedsReopen`](Self::NeedsReopen)). After reopening, send the same request again
    /// with the same event ids ([`NewEvent::with_id`](crate::NewEvent::with_id)): a stored
    /// request answers with its original positions, one that was not stored is appended.
    /// `source` is the storage engine's original error.
    #[error("a commit failed while making itself durable; it may or may not be stored: {source}")]
    OutcomeUnknown {
        /// The error the commit failed with.
        source: Arc<Error>,
    },

    /// The storage engine cannot go on in this process after a commit failed while writing
    /// its last page ([`OutcomeUnknown`](Self::OutcomeUnknown)): every read and write of
    /// this store fails with this error until every handle to it ([`Varve`](crate::Varve)
    /// clones, read views, subscriptions, runners) is dropped and the store is opened again.
    /// Nothing committed before is lost; other processes are not affected. `source` is the
    /// error that stopped it.
    #[error("the store must be reopened: a commit failed while making itself durable ({source})")]
    NeedsReopen {
        /// The error the failed commit returned.
        source: Arc<Error>,
    },

    /// The store is encrypted and was opened without a master key (or another process
    /// turned encryption on after this one opened the empty store). Nothing was read or
    /// written.
    #[error("the store at {} is encrypted: open it with `Options::encryption_key`", path.display())]
    KeyRequired {
        /// The store's directory.
        path: PathBuf,
    },

    /// The master key given does not open this store, or no longer does: another process
    /// rotated it after this one opened the store. Nothing was read or written.
    #[error("wrong master key: it does not open this store")]
    WrongKey,

    /// An encryption feature was used on a store without encryption, or a master key was
    /// given for a store that already holds unencrypted events.
    #[error("the store is not encrypted: {reason}")]
    NotEncrypted {
        /// Why the request cannot be served.
        reason: &'static str,
    },

    /// A master key must be exactly 32 bytes.
    #[error("a master key is 32 bytes, not {len}")]
    InvalidKeyLength {
        /// The length given.
        len: usize,
    },

    /// The operating system's random number generator failed; nothing was encrypted.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    /// An encrypted event failed authentication: its bytes were altered, it was moved from
    /// another position or stream, or it was sealed under another key. No plaintext of it
    /// is returned.
    #[error(
        "event at seq {seq} fails authentication: altered, moved from another position, or sealed under another key"
    )]
    DecryptionFailed {
        /// The event's global sequence number.
        seq: u64,
    },

    /// A stream's stored data key cannot be opened (damaged, swapped with another stream's,
    /// or missing while the stream has events).
    #[error("the data key of stream {stream} cannot be opened: {reason}")]
    CorruptKey {
        /// The stream.
        stream: StreamId,
        /// What is wrong.
        reason: &'static str,
    },

    /// The store's identity is not the one [`Options::expect_store_id`](crate::Options::expect_store_id)
    /// pinned: its `data.mdb` is another store's (swapped, or restored from the wrong backup),
    /// or a store made by an older build that has no identity. Nothing was read or written.
    #[error("the store at {} is not the store expected: its identity is {}, not {expected}", path.display(), found.map_or_else(|| "missing".to_owned(), |id| id.to_string()))]
    StoreMismatch {
        /// The store's directory.
        path: PathBuf,
        /// The identity pinned.
        expected: crate::StoreId,
        /// The identity the store holds, if any.
        found: Option<crate::StoreId>,
    },

    /// The store was opened as a read replica ([`Options::replica`](crate::Options::replica)):
    /// it takes events only from its leader, through
    /// [`Varve::import_replicated`](crate::Varve::import_replicated). Nothing was written.
    #[error("the store is a read replica: it takes events only from its leader (`import_replicated`)")]
    ReadOnlyReplica,

    /// [`Varve::import_replicated`](crate::Varve::import_replicated) was called on a store
    /// not opened with [`Options::replica`](crate::Options::replica): events of another
    /// store's log would mix with its own. Nothing was written.
    #[error(
        "the store is not opened as a replica (`Options::replica(true)`); it cannot import another store's events"
    )]
    NotAReplica,

    /// A replicated event is not the one the replica takes next: a replica takes its
    /// leader's log in order, with no gap and no repeat. Nothing was written.
    #[error("the replica takes seq {expected} next, not {found}")]
    ReplicaGap {
        /// The seq the replica takes next (one past its last event).
        expected: u64,
        /// The seq offered.
        found: u64,
    },

    /// A replicated event does not fit the replica's log (its record is damaged, its blob
    /// missing or not the one its record names, its stream version not the next one, or
    /// its id already stored). Nothing was written.
    #[error("replicated event at seq {seq} does not fit the replica: {reason}")]
    ReplicaMismatch {
        /// The event's seq.
        seq: u64,
        /// What is wrong.
        reason: String,
    },

    /// A replicated key (a wrapped data key or a shredded marker) was made at another epoch
    /// of the master key than the replica's: the leader rotated its master key
    /// (`leader > replica`). Reopen the replica with the leader's new key, or rotate it to
    /// that key ([`Varve::rotate_master_key`](crate::Varve::rotate_master_key), once per
    /// rotation of the leader), then import again. Nothing was written.
    #[error("the leader's keys are at master key epoch {leader}, the replica's at {replica}")]
    ReplicaKeyEpoch {
        /// The epoch of the leader's key.
        leader: u32,
        /// The replica's epoch.
        replica: u32,
    },

    /// A replicated shred applies once the replica's log reaches the leader's last seq when
    /// it was exported (`after`); the replica is at `last`. Import the events up to it
    /// first. Nothing was written.
    #[error("the shred applies once the replica reaches seq {after}; it is at {last}")]
    ShredAhead {
        /// The seq the replica must reach.
        after: u64,
        /// The replica's last seq.
        last: u64,
    },

    /// A store identity in text is not 32 hex digits.
    #[error("{text:?} is not a store identity (32 hex digits)")]
    InvalidStoreId {
        /// The text given (at most its first 64 characters).
        text: String,
    },

    /// [`Varve::rotate_master_key`](crate::Varve::rotate_master_key) was given the master key
    /// already in use: a rotation that changes no key would leave every old wrapped key
    /// openable. Nothing was changed.
    #[error("the new master key is the one already in use")]
    SameMasterKey,

    /// [`compact_in_place`](crate::compact_in_place) needs the store closed, and a process
    /// (this one, or another) has it open. Nothing was changed.
    #[error("the store at {} is open; close it in every process before compacting it in place", path.display())]
    StoreInUse {
        /// The store's directory.
        path: PathBuf,
    },

    /// The store is of an older format (4 or 5) that an open for writing upgrades in place,
    /// and another process has it open: a process of the older build would go on writing
    /// the old layout into the new one. Nothing was changed; close the store in every other
    /// process, and open it again.
    #[error(
        "the store at {} is of an older format, which this open would upgrade in place, and another process has \
         it open; close it in every other process first",
        path.display()
    )]
    UpgradeNeedsExclusiveAccess {
        /// The store's directory.
        path: PathBuf,
    },

    /// The store is open for writing in another process with the other
    /// [`Durability`](crate::Durability): relaxed commits are not flushed, and a power loss
    /// takes the store back to their last checkpoint, which would lose the other process's
    /// immediate commits made since. Nothing was changed; open it with the same durability
    /// as the other processes, or once they have closed it.
    #[error(
        "the store at {} is open in another process with {other} durability; open it with the same, or once \
         that process has closed it",
        path.display()
    )]
    DurabilityInUse {
        /// The store's directory.
        path: PathBuf,
        /// The other processes' durability: `"relaxed"` or `"immediate"`.
        other: &'static str,
    },

    /// The stream was crypto-shredded ([`Varve::shred`](crate::Varve::shred)): its events
    /// can no longer be decrypted, and it takes no new events.
    #[error(
        "stream {stream} was shredded: its events cannot be decrypted any more, and it takes no new events"
    )]
    Shredded {
        /// The shredded stream.
        stream: StreamId,
    },

    /// The store keeps no Merkle tree over its log: open it with
    /// [`Options::verifiable_log`](crate::Options::verifiable_log) on to build one.
    #[error(
        "the store keeps no Merkle tree over its log; open it with `Options::verifiable_log(true)` to build one"
    )]
    NoMerkleTree,

    /// A proof or tree head was asked for a tree size, or an event, beyond the tree at hand.
    #[error("{requested} is beyond the tree of size {tree_size}")]
    BeyondTreeSize {
        /// The size or seq asked for.
        requested: u64,
        /// The size of the tree it was asked of.
        tree_size: u64,
    },

    /// The store does not contain the log of a checkpoint as a prefix: it was truncated,
    /// rolled back, forked, or events in it were replaced.
    #[error(
        "the store's log diverges from the checkpoint of size {checkpoint_size} at size {first_diverging_size} (the store has {store_size} events)"
    )]
    LogDiverged {
        /// The checkpoint's tree size.
        checkpoint_size: u64,
        /// The store's number of events.
        store_size: u64,
        /// The smallest tree size at which the store's log is shown to differ from the
        /// checkpoint's: one past the store's last event if the store is shorter; the seq of
        /// the first event whose record no longer matches the store's tree (a record
        /// replaced or spliced in); otherwise the checkpoint's size, when the tree as a
        /// whole differs (a fork: a checkpoint alone cannot say where it began).
        first_diverging_size: u64,
    },

    /// The store was opened read-only ([`Options::read_only`](crate::Options::read_only)).
    /// Nothing was written.
    #[error("the store is opened read-only")]
    ReadOnly,

    /// A read-only open found a store that must first be opened for writing: it misses
    /// what an open adds or repairs (named by `reason`). Nothing was read or written.
    #[error("the store at {} cannot be opened read-only: {reason}; open it once for writing", path.display())]
    NeedsWriteOpen {
        /// The store's directory.
        path: PathBuf,
        /// What an open for writing would do.
        reason: &'static str,
    },

    /// There is no store in the directory (no `data.mdb`), and a read-only open creates
    /// none.
    #[error("no store at {} (no data.mdb)", path.display())]
    NoStore {
        /// The directory.
        path: PathBuf,
    },
}

/// An error of the storage engine (LMDB, through heed) that has no more specific variant.
/// Its text is the engine's; the engine's error itself is its
/// [`source`](std::error::Error::source), so that error reporters and downcasts reach it.
#[derive(Debug)]
pub struct StorageError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl StorageError {
    pub(crate) fn new(engine: impl std::error::Error + Send + Sync + 'static) -> Self {
        StorageError(Box::new(engine))
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

struct VersionDisplay(Option<u32>);

impl fmt::Display for VersionDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("no stream"),
            Some(v) => write!(f, "version {v}"),
        }
    }
}

struct PageDisplay(Option<u64>);

impl fmt::Display for PageDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => Ok(()),
            Some(page) => write!(f, " at page {page}"),
        }
    }
}

/// Why a layout description or an archive read through one was refused
/// ([`Layout::decode`](crate::Layout::decode), [`Layout::to_json`](crate::Layout::to_json)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The stored description is not one this version can read.
    #[error("the layout description is damaged or of an unknown format (at byte {at})")]
    BadDescription {
        /// Offset in the description.
        at: usize,
    },
    /// The archive ends before, or points outside itself for, a value the layout calls for.
    #[error("the archive has no {len} bytes at offset {at}")]
    OutOfBounds {
        /// Offset in the archive.
        at: usize,
        /// Bytes needed there.
        len: usize,
    },
    /// Bytes that are no valid value of their type (a `bool` of 2, an unknown enum tag).
    #[error("invalid {what} at offset {at} of the archive")]
    InvalidValue {
        /// Offset in the archive.
        at: usize,
        /// What was expected there.
        what: &'static str,
    },
    /// The layout holds a type the generic decoder does not read.
    #[error("the generic decoder does not read {what}")]
    Unsupported {
        /// The type.
        what: &'static str,
    },
    /// The archived size of the layout overflows.
    #[error("the layout's archived size overflows")]
    TooLarge,
}
