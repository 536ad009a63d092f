//! The verifiable log: an RFC 9162 Merkle tree over every event, kept in the `merkle` table
//! by the writer inside each commit, the proofs it gives, and signed checkpoints.
//!
//! `merkle` is the tree arithmetic and verification (no storage), `tiles` the stored tree,
//! `note` signed notes and checkpoints. See `docs/audit.md`.

mod feed;
mod merkle;
mod note;
mod tiles;

pub use merkle::{Hash, ProofError, leaf_hash, node_hash, verify_consistency, verify_inclusion};
pub use note::{Checkpoint, NoteError, NoteSigner, open_note};

pub(crate) use feed::TreeFeed;
pub(crate) use tiles::{TileCheck, TreeWriter, record_leaf, record_leaf_hash};

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::record::{BLOB_THRESHOLD, Body, Content, Envelope, RecordHeader, blob_hash};
use crate::storage::{Storage, Txn, meta_key};

/// The head of a tree: its size (the number of events it covers) and its root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct TreeHead {
    /// Leaves of the tree: the events of seqs 1 to `size`.
    pub size: u64,
    /// The root hash (RFC 9162 `MTH`); for the empty tree, `SHA-256("")`.
    pub root: merkle::Hash,
}

/// A proof that an event is in the log of a given size (RFC 9162 §2.1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InclusionProof {
    /// The leaf's index: the event's seq minus 1.
    pub leaf_index: u64,
    /// The size of the tree the proof is for.
    pub tree_size: u64,
    /// The sibling hashes from the leaf up to the root (RFC 9162 order).
    pub path: Vec<merkle::Hash>,
}

impl InclusionProof {
    /// Checks that the leaf with hash `leaf` is in the tree with head `head`.
    ///
    /// # Errors
    /// [`ProofError`] if it is not (or the proof is for another tree size).
    pub fn verify(&self, leaf: &merkle::Hash, head: &TreeHead) -> Result<(), ProofError> {
        if head.size != self.tree_size {
            return Err(ProofError::RootMismatch);
        }
        verify_inclusion(leaf, self.leaf_index, self.tree_size, &self.path, &head.root)
    }
}

/// A proof that the log of one size is a prefix of the log of a larger size (RFC 9162
/// §2.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsistencyProof {
    /// The older (smaller) tree's size.
    pub old_size: u64,
    /// The newer tree's size.
    pub new_size: u64,
    /// The proof's hashes (RFC 9162 order).
    pub path: Vec<merkle::Hash>,
}

impl ConsistencyProof {
    /// Checks that the tree `old` is a prefix of the tree `new`.
    ///
    /// # Errors
    /// [`ProofError`] if it is not (or the proof is for other sizes).
    pub fn verify(&self, old: &TreeHead, new: &TreeHead) -> Result<(), ProofError> {
        if old.size != self.old_size || new.size != self.new_size {
            return Err(ProofError::RootMismatch);
        }
        verify_consistency(old.size, new.size, &self.path, &old.root, &new.root)
    }
}

/// The fields of an event in the clear, as [`event_leaf`] encodes them.
#[derive(Debug, Clone, Copy)]
pub struct LeafFields<'a> {
    /// The event's position in the log.
    pub seq: u64,
    /// Its stream.
    pub stream: u128,
    /// Its version in the stream.
    pub version: u32,
    /// Its commit time, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// The schema version of its type (0 for untyped bytes).
    pub schema_version: u32,
    /// Its idempotency id, if it has one.
    pub id: Option<u128>,
    /// Its type tag.
    pub type_tag: &'a str,
    /// Its metadata.
    pub metadata: &'a [u8],
    /// Its payload.
    pub payload: &'a [u8],
}

impl<'a> LeafFields<'a> {
    /// The fields of an event read from a store.
    #[must_use]
    pub fn of(event: &RecordedEvent<'a>) -> Self {
        LeafFields {
            seq: event.seq,
            stream: event.stream.as_u128(),
            version: event.version,
            timestamp_micros: event.timestamp_micros,
            schema_version: event.schema_version,
            id: event.id,
            type_tag: event.type_tag,
            metadata: event.metadata,
            payload: event.payload,
        }
    }
}

/// The leaf of the tree for an event of an unencrypted store: the bytes whose
/// [`leaf_hash`] the tree holds, computed from the event's fields (see `docs/audit.md`).
/// For any event, encrypted or shredded too, [`ReadView::leaf`](crate::ReadView::leaf)
/// gives the stored event's leaf.
///
/// ```
/// use varvedb::{ExpectedVersion, LeafFields, NewEvent, Options, event_leaf, leaf_hash};
/// # let dir = tempfile::tempdir()?;
/// let db = Options::new().verifiable_log(true).open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
/// let view = db.begin_read()?;
/// let event = view.event(1)?.unwrap();
/// let leaf = event_leaf(&LeafFields::of(&event));
/// assert_eq!(Some(leaf.clone()), view.leaf(1)?);
/// let proof = view.inclusion_proof(1, 1)?;
/// proof.verify(&leaf_hash(&leaf), &view.tree_head()?).unwrap();
/// # Ok::<(), varvedb::Error>(())
/// ```
#[must_use]
pub fn event_leaf(fields: &LeafFields<'_>) -> Vec<u8> {
    let head = RecordHeader {
        stream: fields.stream,
        version: fields.version,
        timestamp_micros: fields.timestamp_micros,
        schema_version: fields.schema_version,
        id: fields.id,
        type_tag: fields.type_tag,
    };
    let hash;
    let body = if fields.payload.len() > BLOB_THRESHOLD {
        hash = blob_hash(fields.payload);
        Body::Blob { hash: &hash, len: u32::try_from(fields.payload.len()).unwrap_or(u32::MAX) }
    } else {
        Body::Inline(fields.payload)
    };
    let mut record = Vec::new();
    Envelope { head, content: Content::Plain { metadata: fields.metadata, body } }
        .encode_into(fields.seq, &mut record);
    record_leaf(fields.seq, &record)
}

/// Events a transaction adds to a tree being built or caught up at open: a whole store in
/// one transaction could pass LMDB's bound on a transaction's dirty pages.
const BUILD_STEP: u64 = 1 << 16;

/// Whether the store keeps the tree, when it is opened: a store that keeps one (its `meta`
/// record says so) always does, and a store without one gets it here, built from its events
/// in transactions of up to [`BUILD_STEP`] events, when `wanted`. Events appended by a
/// build that does not keep the tree are added to it here too.
pub(crate) fn open(storage: &Storage, wanted: bool) -> Result<bool, Error> {
    let behind = |txn: &Txn<'_>| -> Result<bool, Error> {
        Ok(tiles::stored_size(storage, txn)? < storage.last_seq(txn)?)
    };
    {
        let txn = storage.read_txn()?;
        let on = tiles::recorded(storage, &txn)?;
        if (on && !behind(&txn)?) || (!on && !wanted) {
            return Ok(on);
        }
    }
    // A tree that covers a prefix of the log is sound: each step commits on its own, and
    // a writer (of any process) catches up from wherever the last step ended.
    loop {
        let mut txn = storage.write_txn()?;
        // Another process may have got here first.
        if !tiles::recorded(storage, &txn)? {
            storage.put(&mut txn, storage.tables.meta, meta_key::MERKLE_TREE, &[1])?;
        }
        let more = behind(&txn)?;
        if more {
            let last = storage.last_seq(&txn)?;
            TreeWriter::default().load(storage, &mut txn, last, BUILD_STEP)?;
        }
        let done = !more || !behind(&txn)?;
        storage.commit(txn)?;
        if done {
            return Ok(true);
        }
    }
}

/// Whether the store keeps the tree: for a writer that did not, to notice that another
/// process turned it on.
pub(crate) fn kept(storage: &Storage, txn: &Txn<'_>) -> Result<bool, Error> {
    tiles::recorded(storage, txn)
}

/// The stored tree of a store that keeps one, through a read transaction.
pub(crate) struct StoredTree<'a, 'e> {
    nodes: tiles::StoredNodes<'a, 'e>,
    /// The leaves the stored tree has.
    pub(crate) size: u64,
}

impl<'a, 'e> StoredTree<'a, 'e> {
    /// The stored tree, checked to cover the `last_seq` events of the transaction's log.
    pub(crate) fn new(storage: &'a Storage, txn: &'a Txn<'e>, last_seq: u64) -> Result<Self, Error> {
        if !tiles::recorded(storage, txn)? {
            return Err(Error::NoMerkleTree);
        }
        let size = tiles::stored_size(storage, txn)?;
        if size != last_seq {
            let reason = if size < last_seq {
                format!(
                    "the tree has {size} leaves but the log {last_seq} events: events were appended by a build that does not keep the tree, and are added to it by the next open or commit"
                )
            } else {
                format!("the tree has {size} leaves but the log only {last_seq} events")
            };
            return Err(Error::CorruptIndex { table: "merkle", reason });
        }
        Ok(StoredTree { nodes: tiles::StoredNodes { storage, txn }, size })
    }

    fn check_size(&self, size: u64) -> Result<(), Error> {
        if size > self.size {
            return Err(Error::BeyondTreeSize { requested: size, tree_size: self.size });
        }
        Ok(())
    }

    /// The head of the tree of the first `size` events.
    pub(crate) fn head(&mut self, size: u64) -> Result<TreeHead, Error> {
        self.check_size(size)?;
        let root = if size == 0 { merkle::empty_root() } else { merkle::subtree(&mut self.nodes, 0, size)? };
        Ok(TreeHead { size, root })
    }

    /// The hash of leaf `index` as stored.
    pub(crate) fn leaf_hash(&mut self, index: u64) -> Result<merkle::Hash, Error> {
        use merkle::Nodes as _;
        self.check_size(index + 1)?;
        self.nodes.node(0, index)
    }

    pub(crate) fn inclusion(&mut self, seq: u64, size: u64) -> Result<InclusionProof, Error> {
        self.check_size(size)?;
        if seq == 0 || seq > size {
            return Err(Error::BeyondTreeSize { requested: seq, tree_size: size });
        }
        let path = merkle::inclusion_path(&mut self.nodes, seq - 1, size)?;
        Ok(InclusionProof { leaf_index: seq - 1, tree_size: size, path })
    }

    pub(crate) fn consistency(&mut self, old: u64, new: u64) -> Result<ConsistencyProof, Error> {
        self.check_size(new)?;
        if old == 0 || old > new {
            return Err(Error::BeyondTreeSize { requested: old, tree_size: new });
        }
        let path = merkle::consistency_path(&mut self.nodes, old, new)?;
        Ok(ConsistencyProof { old_size: old, new_size: new, path })
    }
}
