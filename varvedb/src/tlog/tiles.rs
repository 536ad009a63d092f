//! The tree as stored: tiles of node hashes in the `merkle` table, read for proofs and tree
//! heads, and written by the writer as each commit extends the tree.
//!
//! Tile `(L, t)` holds the hashes of the complete nodes at tree level `4L` with indices
//! `120t` to `120t + 119`, in order: level-0 tiles hold leaf hashes, level-1 tiles the
//! roots of 16-leaf subtrees, and so on. A tile is written as its nodes complete, so the
//! last tile of a level may be partial. Any complete node is a tile entry or is hashed from
//! at most 8 entries of one tile (8 divides 120). A tree of `n` leaves stores about
//! `n × 16/15` hashes.
//!
//! A full tile is 3,840 bytes: with LMDB's page header, one overflow page of 4,096 bytes,
//! so about 37 bytes per event in all. Tiles of 16 hashes (512 bytes) share leaf pages 7
//! to a page, and fewer after page splits: about 46 bytes per event, measured.

use std::ops::Bound;

use sha2::{Digest, Sha256};

use super::merkle::{Frontier, Hash, Nodes, node_hash};
use crate::error::Error;
use crate::storage::{Storage, Txn, WriteTxn, key, meta_key};

/// Tree levels per tile level.
const HEIGHT: u32 = 4;
/// Hashes per tile: as many as fill one overflow page (4,096 bytes less its 16-byte
/// header) while a multiple of 8.
const WIDTH: u64 = 120;
const HASH_LEN: usize = 32;
const TILE_BYTES: usize = WIDTH as usize * HASH_LEN;
const KEY_LEN: usize = 9;

fn tile_key(level: u32, index: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    k[0] = level as u8;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn corrupt(reason: String) -> Error {
    Error::CorruptIndex { table: "merkle", reason }
}

/// The leaf hash of the record stored under `seq`: `SHA-256(0x00 ‖ seq u64 BE ‖ record
/// from byte 4)`, the record without its checksum (see `docs/audit.md`).
pub(crate) fn record_leaf_hash(seq: u64, record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(seq.to_be_bytes());
    h.update(record.get(4..).unwrap_or_default());
    h.finalize().into()
}

/// The leaf bytes of the record stored under `seq` (what [`record_leaf_hash`] hashes).
pub(crate) fn record_leaf(seq: u64, record: &[u8]) -> Vec<u8> {
    let rest = record.get(4..).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + rest.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(rest);
    out
}

/// Whether the store keeps the tree (its `meta` record says 1).
pub(crate) fn recorded(storage: &Storage, txn: &Txn<'_>) -> Result<bool, Error> {
    match storage.get(txn, storage.tables.meta, meta_key::MERKLE_TREE)? {
        None => Ok(false),
        Some([1]) => Ok(true),
        Some(_) => Err(Error::CorruptMeta { reason: "the record of the Merkle tree is not 1" }),
    }
}

/// The number of leaves the stored tree has: from its last level-0 tile.
pub(crate) fn stored_size(storage: &Storage, txn: &Txn<'_>) -> Result<u64, Error> {
    let upper = [1u8];
    let mut last =
        storage.entries(txn, storage.tables.merkle, (Bound::Unbounded, Bound::Excluded(&upper)), true)?;
    let Some(entry) = last.next() else { return Ok(0) };
    let (k, v) = entry?;
    let index = match k {
        [0, rest @ ..] => key::decode_seq(rest),
        _ => None,
    }
    .ok_or_else(|| corrupt("a tile key is not 9 bytes".into()))?;
    let count = v.len() / HASH_LEN;
    if v.len() % HASH_LEN != 0 || count == 0 || count as u64 > WIDTH {
        return Err(corrupt(format!("leaf tile {index} holds {} bytes", v.len())));
    }
    index
        .checked_mul(WIDTH)
        .and_then(|n| n.checked_add(count as u64))
        .ok_or_else(|| corrupt(format!("leaf tile {index} is past any possible log")))
}

/// Complete node hashes read from the stored tiles, through one transaction.
pub(crate) struct StoredNodes<'a, 'e> {
    pub(crate) storage: &'a Storage,
    pub(crate) txn: &'a Txn<'e>,
}

impl StoredNodes<'_, '_> {
    /// The hashes of tile `(level, index)`, checked to hold at least `need` of them.
    fn tile(&self, level: u32, index: u64, need: u64) -> Result<&[u8], Error> {
        let bytes = self
            .storage
            .get(self.txn, self.storage.tables.merkle, &tile_key(level, index))?
            .ok_or_else(|| corrupt(format!("tile {index} of level {level} is missing")))?;
        if bytes.len() % HASH_LEN != 0 || (bytes.len() / HASH_LEN) as u64 > WIDTH {
            return Err(corrupt(format!("tile {index} of level {level} holds {} bytes", bytes.len())));
        }
        if ((bytes.len() / HASH_LEN) as u64) < need {
            return Err(corrupt(format!("tile {index} of level {level} is shorter than the tree")));
        }
        Ok(bytes)
    }
}

impl Nodes for StoredNodes<'_, '_> {
    type Error = Error;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Error> {
        let (tile_level, rise) = (level / HEIGHT, level % HEIGHT);
        let first = index << rise;
        let (tile, at) = (first / WIDTH, (first % WIDTH) as usize);
        let span = 1usize << rise;
        let bytes = self.tile(tile_level, tile, (at + span) as u64)?;
        let mut hashes = [[0u8; HASH_LEN]; 8];
        for (i, h) in hashes[..span].iter_mut().enumerate() {
            let from = (at + i) * HASH_LEN;
            h.copy_from_slice(&bytes[from..from + HASH_LEN]);
        }
        // Up `rise` levels within the tile.
        let mut n = span;
        while n > 1 {
            for i in 0..n / 2 {
                hashes[i] = node_hash(&hashes[2 * i], &hashes[2 * i + 1]);
            }
            n /= 2;
        }
        Ok(hashes[0])
    }
}

/// The frontier of the stored tree of `size` leaves: the roots of its complete subtrees.
fn stored_frontier(nodes: &mut StoredNodes<'_, '_>, size: u64) -> Result<Frontier, Error> {
    let mut stack = Vec::new();
    for level in (0..64u32).rev() {
        if size & (1 << level) != 0 {
            // Leaves before this subtree: the bits of `size` above `level`.
            let start = size & !((2u64 << level).wrapping_sub(1));
            stack.push((level, nodes.node(level, start >> level)?));
        }
    }
    Ok(Frontier::from_parts(size, stack))
}

/// The last tile of a tile level, still being filled.
#[derive(Default)]
struct OpenTile {
    index: u64,
    hashes: Vec<u8>,
    dirty: bool,
}

/// The writer's copy of the tree's growing edge: the frontier, and the last tile of each
/// tile level. Extended leaf by leaf inside a commit; the tiles it changed are written
/// into the same transaction.
#[derive(Default)]
pub(crate) struct TreeWriter {
    frontier: Frontier,
    open: Vec<OpenTile>,
    /// Tiles filled up within the commit and not yet written: keys, and their hashes in
    /// `full_hashes`, 16 each.
    full_keys: Vec<[u8; KEY_LEN]>,
    full_hashes: Vec<u8>,
    /// The transaction whose commit left the tree as this copy holds it (as the writer's
    /// head cache keeps it).
    pub(crate) committed_txn: Option<usize>,
}

impl TreeWriter {
    /// Reads the growing edge of the stored tree of a log of `last_seq` events, extending
    /// the stored tree first with the events it lacks (appended by a build that did not keep
    /// the tree), up to `limit` of them.
    pub(crate) fn load(
        &mut self,
        storage: &Storage,
        txn: &mut WriteTxn<'_>,
        last_seq: u64,
        limit: u64,
    ) -> Result<(), Error> {
        let size = stored_size(storage, txn)?;
        if size > last_seq {
            return Err(corrupt(format!("the tree has {size} leaves but the log only {last_seq} events")));
        }
        {
            let mut nodes = StoredNodes { storage, txn };
            self.frontier = stored_frontier(&mut nodes, size)?;
            self.open.clear();
            let mut level = 0;
            while level < 16 && (size >> (HEIGHT * level)) > 0 {
                let count = size >> (HEIGHT * level);
                let (index, filled) = (count / WIDTH, count % WIDTH);
                let hashes = if filled > 0 {
                    let bytes = nodes.tile(level, index, filled)?;
                    if (bytes.len() / HASH_LEN) as u64 != filled {
                        return Err(corrupt(format!(
                            "tile {index} of level {level} is longer than the tree"
                        )));
                    }
                    bytes.to_vec()
                } else {
                    Vec::new()
                };
                self.open.push(OpenTile { index, hashes, dirty: false });
                level += 1;
            }
        }
        self.full_keys.clear();
        self.full_hashes.clear();
        for seq in size + 1..=last_seq.min(size.saturating_add(limit)) {
            let record = storage.get(txn, storage.tables.events, &key::seq(seq))?.ok_or_else(|| {
                Error::CorruptIndex { table: "events", reason: format!("seq {seq} is missing from the log") }
            })?;
            self.push(record_leaf_hash(seq, record));
        }
        self.flush(storage, txn)
    }

    /// The number of leaves, written or not.
    pub(crate) fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Adds the leaf hash of the next event.
    pub(crate) fn push(&mut self, leaf: Hash) {
        let TreeWriter { frontier, open, full_keys, full_hashes, .. } = self;
        frontier.push(leaf, |level, index, hash| {
            if level % HEIGHT != 0 {
                return;
            }
            let tile_level = (level / HEIGHT) as usize;
            if open.len() <= tile_level {
                open.resize_with(tile_level + 1, OpenTile::default);
            }
            let tile = &mut open[tile_level];
            let at = index / WIDTH;
            if tile.index != at {
                if tile.dirty {
                    full_keys.push(tile_key(tile_level as u32, tile.index));
                    full_hashes.extend_from_slice(&tile.hashes);
                }
                tile.index = at;
                tile.hashes.clear();
            }
            tile.hashes.extend_from_slice(hash);
            tile.dirty = true;
        });
    }

    /// Writes the tiles changed since the last flush into `txn`.
    pub(crate) fn flush(&mut self, storage: &Storage, txn: &mut WriteTxn<'_>) -> Result<(), Error> {
        let table = storage.tables.merkle;
        for (k, hashes) in self.full_keys.iter().zip(self.full_hashes.chunks(TILE_BYTES)) {
            storage.put(txn, table, k, hashes)?;
        }
        self.full_keys.clear();
        self.full_hashes.clear();
        for (level, tile) in self.open.iter_mut().enumerate() {
            if tile.dirty {
                storage.put(txn, table, &tile_key(level as u32, tile.index), &tile.hashes)?;
                tile.dirty = false;
            }
        }
        Ok(())
    }
}

/// A tree built in memory from leaf hashes in order, giving each tile as the stored tree
/// should hold it: what `check_integrity` compares the stored tiles with.
#[derive(Default)]
pub(crate) struct TileCheck {
    writer: TreeWriter,
    checked_tiles: u64,
}

impl TileCheck {
    pub(crate) fn push(&mut self, leaf: Hash) {
        self.writer.push(leaf);
    }

    /// The root of the tree so far.
    pub(crate) fn root(&self) -> Hash {
        self.writer.frontier.root()
    }

    /// Compares the tiles completed since the last call (all of them, open ones too, when
    /// `end`) with the stored ones; the first that differs is reported with the first leaf
    /// it covers.
    pub(crate) fn compare(&mut self, storage: &Storage, txn: &Txn<'_>, end: bool) -> Result<(), Error> {
        let w = &mut self.writer;
        let full = w.full_keys.iter().zip(w.full_hashes.chunks(TILE_BYTES));
        let open: Vec<([u8; KEY_LEN], &[u8])> = if end {
            w.open
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.hashes.is_empty())
                .map(|(l, t)| (tile_key(l as u32, t.index), &t.hashes[..]))
                .collect()
        } else {
            Vec::new()
        };
        for (k, expected) in full.map(|(k, h)| (*k, h)).chain(open) {
            let stored = storage.get(txn, storage.tables.merkle, &k)?;
            if stored != Some(expected) {
                let level = u32::from(k[0]);
                let index = key::decode_seq(&k[1..]).unwrap_or(0);
                let first_seq = (index * WIDTH) << (HEIGHT * level);
                return Err(corrupt(format!(
                    "tile {index} of level {level} (from seq {}) does not match the events it covers",
                    first_seq + 1
                )));
            }
            self.checked_tiles += 1;
        }
        w.full_keys.clear();
        w.full_hashes.clear();
        if end {
            let stored = storage.len(txn, storage.tables.merkle)?;
            if stored != self.checked_tiles {
                return Err(corrupt(format!(
                    "holds {stored} tiles where the log has {}",
                    self.checked_tiles
                )));
            }
        }
        Ok(())
    }
}
