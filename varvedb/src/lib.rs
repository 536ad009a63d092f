//! # `VarveDB`
//!
//! An embedded, append-only, ACID event store on LMDB, with events read in place from the
//! memory map.
//!
//! - **Streams and a global log.** Every event belongs to a stream (a 128-bit id) at a
//!   version (1, 2, 3, ...) and has a global sequence number (`seq`, 1, 2, 3, ... with no
//!   gaps) that orders the whole store.
//! - **Optimistic concurrency.** Each append states what it expects of the stream
//!   ([`ExpectedVersion`]); a mismatch is a [`Error::ConcurrencyConflict`] that writes nothing.
//! - **Group commit.** Concurrent requests are committed together, by one of the calling
//!   threads or the store's writer thread: N durable appends cost about one disk sync, while
//!   each request stays atomic on its own.
//! - **Zero-copy reads.** A [`ReadView`] is a consistent snapshot; its events' payloads are
//!   slices of the memory map, and rkyv archives are validated and used in place
//!   ([`RecordedEvent::access`]).
//! - **Integrity.** Every record carries a CRC32C checked on each read; payloads over 1 KiB
//!   are stored once, content-addressed by their BLAKE3 hash. A damaged record is an
//!   [`Error::Corrupt`] naming the seq, not a wrong value or a panic; index entries are
//!   checked against the records they point to ([`Error::CorruptIndex`]), and
//!   [`ReadView::check_integrity`] verifies the whole store. LMDB does not check its own
//!   file: opening checks what it reads first, and [`verify_file`] checks every page of a
//!   closed store or a backup ([`Error::CorruptFile`]).
//! - **Typed event sourcing.** `#[derive(Event)]` structs, `#[aggregate]` folds, typed
//!   stream handles ([`Stream`]) that take only their aggregate's events, commands with
//!   retries ([`Stream::execute`]), commands over several aggregates written atomically
//!   ([`Varve::transact`]), typed metadata ([`Metadata`]), and read models
//!   ([`Projection`], [`Processor`]). The store itself refuses an event an aggregate does
//!   not apply under its streams ([`Error::ForeignEvent`]).
//! - **A verifiable log (optional).** With [`Options::verifiable_log`], the writer keeps an
//!   RFC 9162 Merkle tree over every event: [`ReadView::tree_head`],
//!   [`ReadView::inclusion_proof`] and [`ReadView::consistency_proof`], checked by
//!   [`verify_inclusion`] and [`verify_consistency`] without a store; signed checkpoints
//!   ([`Checkpoint`], [`NoteSigner`]) in the C2SP formats, and
//!   [`ReadView::verify_checkpoint`]. See `docs/audit.md`.
//! - **Encryption at rest (optional).** With [`Options::encryption_key`], every stream gets
//!   its own AES-256-GCM data key and every event is sealed to its position; a stream can be
//!   crypto-shredded ([`Varve::shred`]). See `docs/encryption.md`.
//!
//! ```
//! use varvedb::{ExpectedVersion, NewEvent, Varve};
//! # let dir = tempfile::tempdir()?;
//! let db = Varve::open(dir.path())?;
//! let account = 42u128;
//! db.append(account, ExpectedVersion::NoStream, [NewEvent::new("opened", b"{}".to_vec())])?;
//! db.append(account, ExpectedVersion::Exact(1), [NewEvent::new("deposited", b"100".to_vec())])?;
//!
//! let view = db.begin_read()?;
//! let tags: Vec<String> = view
//!     .read_stream(account, 1)?
//!     .map(|e| e.map(|e| e.type_tag().to_owned()))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(tags, ["opened", "deposited"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The on-disk layout is described in `docs/design.md` of the repository.

#![warn(missing_docs)]

// The README's examples are compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

// So are those of the encryption guide.
#[cfg(doctest)]
#[doc = include_str!("../../docs/encryption.md")]
struct EncryptionDoctests;

// And those of the event evolution guide.
#[cfg(doctest)]
#[doc = include_str!("../../docs/evolution.md")]
struct EvolutionDoctests;
// And of the verifiable log's.
#[cfg(doctest)]
#[doc = include_str!("../../docs/audit.md")]
struct AuditDoctests;

mod batch;
mod crc;
mod crypto;
mod error;
mod event;
mod id;
mod key_record;
mod layout;
mod lmdb_file;
mod process;
mod read;
mod record;
mod storage;
mod store;
mod subscribe;
mod tlog;
mod trace;
mod typed;
mod writer;

pub use batch::{Appended, ExpectedVersion, NewEvent, WriteBatch};
pub use crypto::{KEY_LEN, MasterKey, StoreId};
pub use error::{Error, LayoutError, StorageError};
pub use event::{EventFields, OwnedEvent, RecordedEvent, ReplicatedEvent, ReplicatedShred};
pub use id::StreamId;
pub use layout::{Collection, Describe, Fields, Layout};
pub use lmdb_file::{FileCoverage, FileReport, TableReport, verify_file};
pub use process::runner::{DEFAULT_POLL, Runnable, Runner};
pub use process::table::{Data, TableEntries};
pub use process::{
    HandlerError, Key, Processor, ProcessorError, Progress, Projection, ProjectionTxn, Retry, Table, Value,
};
pub use read::{IntegrityReport, LogEvents, ReadView, SchemaEntry, StreamEvents, StreamInfo};
pub use storage::ReaderLag;
pub use store::{Options, Stats, Varve, compact_in_place};
pub use subscribe::Subscription;
pub use tlog::{
    Checkpoint, ConsistencyProof, Hash, InclusionProof, LeafFields, NoteError, NoteSigner, ProofError,
    TreeHead, event_leaf, leaf_hash, node_hash, open_note, verify_consistency, verify_inclusion,
};
pub use trace::SLOW_SYNC;
pub use typed::command::{ExecuteOptions, RetryPolicy, Transacted, Transaction};
pub use typed::metadata::Metadata;
pub use typed::schema::fingerprint;
pub use typed::stream::{
    DEFAULT_EXECUTE_RETRIES, ExecuteError, Executed, Loaded, Stream, TypedEvent, TypedEvents,
};
#[cfg(feature = "testing")]
pub use typed::testing;
pub use typed::{
    Aggregate, ArchivedEvent, Event, EventInfo, EventOf, Handle, IntoPending, Pending, Schema, Upcast,
    UpcastBuffer,
};
pub use writer::{Durability, RELAXED_CHECKPOINT_INTERVAL};

/// The rkyv varvedb is built with. Derive your own archives with
/// `#[rkyv(crate = varvedb::rkyv)]`, or use `#[derive(Event)]`, which needs no rkyv attribute.
///
/// varvedb enables rkyv's `unaligned`, `little_endian` and `pointer_width_32` format features
/// (LMDB aligns values to 2 bytes only; the format must not depend on the machine). They apply
/// to the whole build: a crate that also enables `aligned`, `big_endian` or
/// `pointer_width_64` of rkyv 0.8 cannot be built together with varvedb.
pub use rkyv;
/// The uuid crate, for stream ids (`StreamId: From<Uuid>`) and `Uuid` fields in events.
#[cfg(feature = "uuid")]
pub use uuid;
/// `#[derive(Event)]`, `#[derive(EventData)]` and `#[aggregate]`.
#[cfg(feature = "derive")]
pub use varvedb_derive::{Event, EventData, aggregate};

/// Items the derive macros' generated code refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__serde_archived as serde_archived;
    pub use crate::error::Error;
    pub use crate::event::RecordedEvent;
    pub use crate::layout::{Describe, Fields, Layout};
    pub use crate::typed::debug::{DebugArchived, DebugFallback, DebugViaDebug, debug_bytes};
    pub use crate::typed::schema::fingerprint;
    #[cfg(feature = "serde")]
    pub use crate::typed::serde_archived::{AsSerde, SerializeArchived};
    pub use crate::typed::snapshot::{SnapshotCodec, snapshot_codec};
    pub use crate::typed::stream::unknown;
    pub use crate::typed::upcast::{archived_as, no_path, upcast_step};
    pub use crate::typed::{
        Aggregate, ArchivedEvent, Event, EventInfo, EventOf, Schema, SnapshotState, Snapshotted,
    };
    pub use crate::typed::{UpcastBuffer, has_duplicate_identity, str_eq};
    pub use core;
    pub use rkyv;
    #[cfg(feature = "serde")]
    pub use serde;

    /// The serializer events are written with.
    pub type Serializer<'a> = rkyv::api::high::HighSerializer<
        rkyv::util::AlignedVec,
        rkyv::ser::allocator::ArenaHandle<'a>,
        rkyv::rancor::Error,
    >;
    /// The validator events are read with.
    pub type Validator<'a> = rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>;

    /// Recomputes the checksum of a record stored under `seq`, as an attacker who edits the
    /// file would: the tamper tests use it to get past the checksum to the cryptography.
    #[cfg(feature = "testing")]
    pub fn forge_checksum(seq: u64, record: &mut [u8]) {
        crate::record::forge_checksum(seq, record);
    }

    /// Recomputes the checksum of a snapshot value stored under `stream`, as an attacker
    /// who edits the file would.
    #[cfg(feature = "testing")]
    pub fn forge_snapshot_checksum(stream: u128, value: &mut [u8]) {
        crate::typed::snapshot::forge_checksum(stream, value);
    }

    /// Recomputes the checksum of a stream head stored under `stream`, as damage that the
    /// tests place past the checksum (or an attacker who edits the file) would.
    #[cfg(feature = "testing")]
    pub fn forge_head_checksum(stream: u128, head: &mut [u8]) {
        crate::storage::value::forge_head_checksum(stream, head);
    }
}
