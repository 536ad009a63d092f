//! The verifiable log through a read view: tree heads, proofs, leaves, and checks of the
//! store against a checkpoint.

use crate::error::Error;
use crate::record;
use crate::storage::key;
use crate::tlog::{
    Checkpoint, ConsistencyProof, InclusionProof, StoredTree, TileCheck, TreeHead, record_leaf,
    record_leaf_hash,
};

use super::ReadView;

impl ReadView<'_> {
    fn tree(&self) -> Result<StoredTree<'_, '_>, Error> {
        StoredTree::new(self.storage, &self.txn, self.last_seq()?)
    }

    /// The head of the Merkle tree over this view's log: its size (the view's last seq)
    /// and root hash (RFC 9162).
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().verifiable_log(true).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// let older = db.begin_read()?.tree_head()?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"y".to_vec())])?;
    /// let view = db.begin_read()?;
    /// let newer = view.tree_head()?;
    /// assert_eq!((older.size, newer.size), (1, 2));
    /// view.consistency_proof(1, 2)?.verify(&older, &newer).unwrap();
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NoMerkleTree`] if the store keeps none; [`Error::CorruptIndex`] if the
    /// stored tree is damaged or does not cover the log; a storage error.
    pub fn tree_head(&self) -> Result<TreeHead, Error> {
        let mut tree = self.tree()?;
        let size = tree.size;
        tree.head(size)
    }

    /// The head of the tree of the first `size` events of the log.
    ///
    /// # Errors
    /// As [`tree_head`](Self::tree_head); [`Error::BeyondTreeSize`] if `size` is past the
    /// view's last seq.
    pub fn tree_head_at(&self, size: u64) -> Result<TreeHead, Error> {
        self.tree()?.head(size)
    }

    /// A proof that the event of `seq` is in the tree of the first `tree_size` events
    /// (RFC 9162 §2.1.3); check it with [`InclusionProof::verify`] or
    /// [`verify_inclusion`](crate::verify_inclusion), which need no store.
    ///
    /// # Errors
    /// As [`tree_head`](Self::tree_head); [`Error::BeyondTreeSize`] if `seq` is 0 or above
    /// `tree_size`, or `tree_size` is past the view's last seq.
    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<InclusionProof, Error> {
        self.tree()?.inclusion(seq, tree_size)
    }

    /// A proof that the tree of the first `old_size` events is a prefix of the tree of the
    /// first `new_size` (RFC 9162 §2.1.4); check it with [`ConsistencyProof::verify`] or
    /// [`verify_consistency`](crate::verify_consistency).
    ///
    /// # Errors
    /// As [`tree_head`](Self::tree_head); [`Error::BeyondTreeSize`] if `old_size` is 0 or
    /// above `new_size`, or `new_size` is past the view's last seq.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<ConsistencyProof, Error> {
        self.tree()?.consistency(old_size, new_size)
    }

    /// The leaf of the event of `seq` (`None` past the log's end): the bytes whose
    /// [`leaf_hash`](crate::leaf_hash) is leaf `seq − 1` of the tree (see `docs/audit.md`).
    /// For an encrypted event these hold its sealed bytes, not its plaintext, so the leaf
    /// needs no key and survives shredding.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the record fails its checksum; a storage error.
    pub fn leaf(&self, seq: u64) -> Result<Option<Vec<u8>>, Error> {
        match self.storage.get(&self.txn, self.storage.tables.events, &key::seq(seq))? {
            Some(raw) => {
                record::verify(seq, raw)?;
                Ok(Some(record_leaf(seq, raw)))
            }
            None => Ok(None),
        }
    }

    /// Checks that this view's log holds the log of `checkpoint` as a prefix: every event
    /// up to the checkpoint's size is read, its leaf recomputed from its record and compared
    /// with the stored tree, and the root of those leaves compared with the checkpoint's.
    /// The checkpoint's signature is not checked here: open the signed note with
    /// [`Checkpoint::open`] first. Takes time proportional to the checkpoint's size.
    ///
    /// ```
    /// use varvedb::{Checkpoint, ExpectedVersion, NewEvent, NoteSigner, Options};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Options::new().verifiable_log(true).open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
    /// let head = db.begin_read()?.tree_head()?;
    /// let signer = NoteSigner::new("audit.example/log", [7; 32])?;
    /// let note = signer.sign_checkpoint(&Checkpoint::new("audit.example/log", head.size, head.root))?;
    /// // Later: the store still holds that log.
    /// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"y".to_vec())])?;
    /// let checkpoint = Checkpoint::open(&note, &signer.verifier_key())?;
    /// db.begin_read()?.verify_checkpoint(&checkpoint)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LogDiverged`], naming the first tree size where the store's log is shown
    /// to differ; [`Error::NoMerkleTree`]; a storage error.
    pub fn verify_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        let store_size = self.last_seq()?;
        let diverged = |first: u64| Error::LogDiverged {
            checkpoint_size: checkpoint.size,
            store_size,
            first_diverging_size: first,
        };
        if store_size < checkpoint.size {
            return Err(diverged(store_size + 1));
        }
        let mut tree = self.tree()?;
        let mut check = TileCheck::default();
        let mut expected = 1;
        for entry in self.storage.log_from(&self.txn, 1)? {
            if expected > checkpoint.size {
                break;
            }
            let (k, raw) = entry?;
            // A record missing, or one that fails its checksum, is a log that differs.
            if key::decode_seq(k) != Some(expected) || record::verify(expected, raw).is_err() {
                return Err(diverged(expected));
            }
            let leaf = record_leaf_hash(expected, raw);
            if tree.leaf_hash(expected - 1)? != leaf {
                return Err(diverged(expected));
            }
            check.push(leaf);
            expected += 1;
        }
        if expected <= checkpoint.size {
            return Err(diverged(expected));
        }
        if check.root() != checkpoint.root {
            return Err(diverged(checkpoint.size));
        }
        Ok(())
    }

    /// For `check_integrity`: whether the store keeps the tree, and if so a check that
    /// rebuilds it from the leaves given.
    pub(super) fn tree_check(&self) -> Result<Option<TileCheck>, Error> {
        match self.tree() {
            Ok(_) => Ok(Some(TileCheck::default())),
            Err(Error::NoMerkleTree) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// For `check_integrity`: compares the rebuilt tree with the stored one, whole.
    pub(super) fn finish_tree_check(&self, mut check: TileCheck) -> Result<TreeHead, Error> {
        check.compare(self.storage, &self.txn, true)?;
        let head = self.tree_head()?;
        if head.root != check.root() {
            return Err(Error::CorruptIndex {
                table: "merkle",
                reason: "the stored tree's root is not that of the log's events".into(),
            });
        }
        Ok(head)
    }

    /// For `check_integrity`: adds the leaf of the record of `seq` to the rebuilt tree.
    pub(super) fn tree_check_push(&self, check: &mut TileCheck, seq: u64, raw: &[u8]) -> Result<(), Error> {
        check.push(record_leaf_hash(seq, raw));
        check.compare(self.storage, &self.txn, false)
    }
}
