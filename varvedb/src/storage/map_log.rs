//! The log read straight from LMDB's pages in the map, for long forward reads.
//!
//! A step of LMDB's cursor goes through its C interface, which checks the cursor's state and
//! the table's flags before it reads the next node. Over a log of 100,000 records that cost
//! 15–28 ns an entry, against 4–6 ns for reading the same nodes off their pages (varvedb
//! 0.1.0, format 10, 2026-12-07). A scan of the log, and a stream read along a run of
//! consecutive seqs, therefore walk the `events` B-tree themselves, as LMDB's cursor does:
//! from the root that the read's snapshot records for the table, down branch pages by binary
//! search, along each leaf page's nodes, and back up to the next branch node at a leaf's end.
//!
//! Nothing read is trusted. A page is touched only if its number lies inside the file, the
//! map, and the pages a commit had written when the walk began; its header must name that
//! page and the kind its depth calls for; each node must lie inside its page, each key must
//! be an 8-byte seq after the one before, and a large value's overflow pages must lie inside
//! those bounds too. On anything else the walk stops with [`Step::Lost`], and its caller
//! reads on through LMDB's cursor, stepping on from the last entry the walk gave: damage is
//! then met, and reported, exactly as LMDB's own reads meet it.
//!
//! A walk is only made for a read transaction ([`ReadTxn`]): a write transaction's changed
//! pages are not in the map.

use std::fs::File;
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use heed::types::Bytes;
use heed::{Database, Env, RoTxn, WithoutTls};

use crate::lmdb_file::{
    DB_LEN, DUP_FLAGS, F_BIGDATA, MAX_DEPTH, NO_PAGE, NODE_HEADER, P_BRANCH, P_LEAF, P_META, P_OVERFLOW,
    PAGE_HEADER, REVERSEKEY, WORD, u16_at, u32_at, word_at,
};

use super::{ReadTxn, name};

/// How many nodes of a leaf ahead of the one handed out a walk asks the CPU for: a node is
/// the first touch of its record, and the records of a leaf lie in a page that the CPU's own
/// prefetcher only follows once a few of its lines have missed.
const PREFETCH_NODES: usize = 4;

/// Where LMDB mapped `data.mdb` in this process, for walks of the log.
pub(crate) struct Map {
    /// The address of the file's first byte in the map; 0 while unknown (off Linux, or when
    /// the mapping was not found), and reads of the log then go through LMDB's cursor alone.
    base: AtomicUsize,
    /// The length of the mapping found at `base`.
    len: AtomicUsize,
    page_size: usize,
    /// `data.mdb`, for its length: pages past the file's end are never touched.
    file: Option<File>,
    /// LMDB's main table: each named table's record, its root page among them.
    main: Option<Database<Bytes, Bytes>>,
}

impl Map {
    /// The map of `env`, found through one of its pages; walks stay off if it is not found.
    pub(crate) fn open(env: &Env<WithoutTls>, data_file: &std::path::Path) -> Map {
        let page_size = env.stat().page_size as usize;
        let main = env.read_txn().ok().and_then(|txn| {
            let main = env.open_database::<Bytes, Bytes>(&txn, None).ok().flatten();
            // Committed, so that the handle stays open for the environment.
            txn.commit().ok().and(main)
        });
        let map = Map {
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            page_size,
            file: File::open(data_file).ok(),
            main,
        };
        map.locate(env);
        map
    }

    /// Finds the map again, as after LMDB mapped the file anew at another size: the address
    /// of the `events` table's record, which LMDB hands out from a page of the map, and this
    /// process's table of mappings give the map's start. No transaction of this process may
    /// be reading meanwhile (see `Storage::adopt_map_size`).
    pub(crate) fn locate(&self, env: &Env<WithoutTls>) {
        let (base, len) = env.read_txn().ok().and_then(|txn| self.find(&txn)).unwrap_or((0, 0));
        self.len.store(len, Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
    }

    /// Walks stay off until the map is found again: LMDB is about to move it.
    pub(crate) fn forget(&self) {
        self.base.store(0, Ordering::Relaxed);
    }

    /// The map's start and length.
    fn find(&self, txn: &RoTxn<'_, WithoutTls>) -> Option<(usize, usize)> {
        if !(512..=0x8000).contains(&self.page_size) {
            return None;
        }
        let record = self.main.as_ref()?.get(txn, name::EVENTS.as_bytes()).ok()??;
        let mapping = super::redo::mapping_of(record.as_ptr() as usize).ok()??;
        // LMDB maps the file from its start; the mapping must be of the file whose length
        // bounds the walks.
        let file = self.file.as_ref()?.metadata().ok()?;
        if mapping.offset != 0 || mapping.inode != file.ino() || !mapping.device_is(file.dev()) {
            return None;
        }
        let (start, len) = (mapping.start, mapping.end - mapping.start);
        // SAFETY: `start` is the first byte of a mapping of this process that holds the
        // record LMDB just handed out, a mapping of `data.mdb` from its offset 0: LMDB's map.
        // Its first page is the file's first meta page (every store's file has both), so
        // these bytes lie inside the file and the map.
        let first = unsafe { std::slice::from_raw_parts(start as *const u8, PAGE_HEADER) };
        let meta = word_at(first, 0) == 0 && u16_at(first, WORD + 2) == P_META;
        meta.then_some((start, len))
    }

    /// A walk of the log in `txn`'s snapshot from the first seq at or after `from`; `None` when
    /// walks are off or the table's record is not one a walk reads (the caller then uses
    /// LMDB's cursor).
    pub(crate) fn walk<'t>(&self, txn: &'t ReadTxn<'_>, last_page: u64, from: u64) -> Option<Walk<'t>> {
        let base = self.base.load(Ordering::Relaxed);
        if base == 0 {
            return None;
        }
        let len = self.len.load(Ordering::Relaxed);
        let record = self.main.as_ref()?.get(txn, name::EVENTS.as_bytes()).ok()??;
        if record.len() != DB_LEN {
            return None;
        }
        let flags = u16_at(record, 4);
        let depth = usize::from(u16_at(record, 6));
        let root = word_at(record, 8 + 4 * WORD);
        if flags & (DUP_FLAGS | REVERSEKEY) != 0 {
            return None;
        }
        // Pages inside the file (its length now), inside the map, and written by a commit
        // (the caller's `last_page`, read after the snapshot began): LMDB itself refuses any
        // page past its snapshot's last, and a damaged page number must not lead a walk into
        // pages a writer is filling.
        let file_len = self.file.as_ref()?.metadata().ok()?.len();
        let page_size = self.page_size as u64;
        let pages = (file_len / page_size).min(len as u64 / page_size).min(last_page.saturating_add(1));
        let mut walk = Walk {
            base,
            page_size: self.page_size,
            pages,
            depth,
            path: [Level::default(); MAX_DEPTH as usize],
            levels: 0,
            leaf: Level::default(),
            prev: None,
            from,
            lost: false,
            _txn: PhantomData,
        };
        if root == NO_PAGE {
            return Some(walk);
        }
        if depth == 0 || depth > MAX_DEPTH as usize || walk.descend(root, Some(from)).is_none() {
            walk.lost = true;
        }
        Some(walk)
    }
}

/// One page on a walk's path, the node the walk is at, and how many nodes the page holds.
#[derive(Clone, Copy, Default)]
struct Level<'t> {
    page: &'t [u8],
    at: usize,
    count: usize,
}

/// What [`Walk::next`] found.
pub(crate) enum Step<'t> {
    /// The next entry: its key (an 8-byte seq) and value.
    Entry(&'t [u8], &'t [u8]),
    /// The table has no more entries.
    End,
    /// Something the walk does not read: LMDB's cursor is to go on from [`Walk::resume`].
    Lost,
}

/// A forward walk of the `events` table's B-tree in the map (see the module).
pub(crate) struct Walk<'t> {
    base: usize,
    page_size: usize,
    /// Pages inside both the file and the map: page numbers below this one.
    pages: u64,
    /// The tree's depth as its record says: every leaf lies this many pages down.
    depth: usize,
    /// The branch pages from the root down to the leaf's parent.
    path: [Level<'t>; MAX_DEPTH as usize],
    levels: usize,
    leaf: Level<'t>,
    /// The seq of the last entry given.
    prev: Option<u64>,
    /// Where the walk began: no entry below it is given.
    from: u64,
    lost: bool,
    _txn: PhantomData<&'t ReadTxn<'t>>,
}

impl<'t> Walk<'t> {
    /// The seq of the last entry given, if any: LMDB's cursor goes on after it once the
    /// walk is [`Step::Lost`].
    pub(crate) fn last(&self) -> Option<u64> {
        self.prev
    }

    /// Where the walk began: LMDB's cursor begins there if the walk gave nothing.
    pub(crate) fn from(&self) -> u64 {
        self.from
    }

    /// The next entry of the log.
    #[inline]
    pub(crate) fn next(&mut self) -> Step<'t> {
        loop {
            if self.lost {
                return Step::Lost;
            }
            if self.leaf.at < self.leaf.count {
                let i = self.leaf.at;
                self.leaf.at += 1;
                if i + PREFETCH_NODES < self.leaf.count {
                    Self::prefetch(self.leaf.page, i + PREFETCH_NODES);
                }
                let Some((key, value)) = self.leaf_entry(self.leaf.page, i) else {
                    break;
                };
                let seq = u64::from_be_bytes(*key.first_chunk::<8>().unwrap_or(&[0; 8]));
                if seq < self.from || self.prev.is_some_and(|prev| seq <= prev) {
                    break;
                }
                self.prev = Some(seq);
                return Step::Entry(key, value);
            }
            // The leaf's end: up to the first branch page with a node left, down its next child.
            while self.levels > 0 && self.path[self.levels - 1].at + 1 >= self.path[self.levels - 1].count {
                self.levels -= 1;
            }
            if self.levels == 0 {
                return Step::End;
            }
            let parent = &mut self.path[self.levels - 1];
            parent.at += 1;
            let (page, at) = (parent.page, parent.at);
            match Self::child(page, at) {
                Some(child) if self.descend(child, None).is_some() => {}
                _ => break,
            }
        }
        self.lost = true;
        Step::Lost
    }

    /// Asks the CPU for the first cache lines of node `i` of `page` (a hint: it reads
    /// nothing, and an offset out of place only wastes it).
    #[inline]
    fn prefetch(page: &'t [u8], i: usize) {
        let at = usize::from(u16_at(page, PAGE_HEADER + 2 * i));
        if let Some(node) = page.get(at..) {
            super::prefetch(&node[..node.len().min(128)]);
        }
    }

    /// Page `number`, if it lies inside the file and the map and its header names it.
    #[inline]
    fn page(&self, number: u64) -> Option<&'t [u8]> {
        if number < 2 || number >= self.pages {
            return None;
        }
        // SAFETY: `base` is where LMDB mapped `data.mdb`, a mapping `len` bytes long of the
        // file `Map::file` names (found by `Map::locate`, and found again after every remap,
        // which waits for every transaction of the process to end and clears `base`
        // before it moves the map: `Storage::adopt_map_size`). Page `number` lies inside
        // that mapping and inside the file (`pages` is bounded by both, and the file only
        // grows while the store is open), so its bytes are mapped and readable. It is also
        // at or below the last page a commit had written when the walk began, so no writer
        // is filling it for a commit not made yet. The pages of the walk's snapshot are not
        // written while its read transaction lives, which the `'t` borrow of it outlives:
        // LMDB reuses only pages that no reader's snapshot holds. A page reached through
        // damage may be one such reused page, as it may be for LMDB's own reads of the same
        // damage; every byte read from it is checked as above.
        let page = unsafe {
            std::slice::from_raw_parts(
                (self.base + number as usize * self.page_size) as *const u8,
                self.page_size,
            )
        };
        (word_at(page, 0) == number).then_some(page)
    }

    /// The node count of `page` if its header has the flags `want` and sound bounds.
    #[inline]
    fn nodes(page: &[u8], want: u16) -> Option<(usize, usize)> {
        let flags = u16_at(page, WORD + 2);
        let lower = usize::from(u16_at(page, WORD + 4));
        let upper = usize::from(u16_at(page, WORD + 6));
        if flags != want || lower < PAGE_HEADER || lower > upper || upper > page.len() {
            return None;
        }
        Some(((lower - PAGE_HEADER) / 2, upper))
    }

    /// The offset of node `i` of `page`, checked to lie among its nodes.
    #[inline]
    fn node(page: &[u8], i: usize) -> Option<usize> {
        let upper = usize::from(u16_at(page, WORD + 6));
        let at = usize::from(u16_at(page, PAGE_HEADER + 2 * i));
        (at >= upper && at + NODE_HEADER <= page.len()).then_some(at)
    }

    /// The key of node `i`, if it is a seq.
    #[inline]
    fn key(page: &'t [u8], i: usize) -> Option<u64> {
        let at = Self::node(page, i)?;
        if u16_at(page, at + 6) != 8 {
            return None;
        }
        Some(u64::from_be_bytes(*page.get(at + NODE_HEADER..)?.first_chunk::<8>()?))
    }

    /// The child page of branch node `i`.
    fn child(page: &'t [u8], i: usize) -> Option<u64> {
        let at = Self::node(page, i)?;
        let low = u64::from(u16_at(page, at)) | u64::from(u16_at(page, at + 2)) << 16;
        let high = if WORD == 8 { u64::from(u16_at(page, at + 4)) << 32 } else { 0 };
        Some(low | high)
    }

    /// Key and value of leaf node `i`.
    #[inline]
    fn leaf_entry(&self, page: &'t [u8], i: usize) -> Option<(&'t [u8], &'t [u8])> {
        let at = Self::node(page, i)?;
        let size = usize::from(u16_at(page, at)) | usize::from(u16_at(page, at + 2)) << 16;
        let flags = u16_at(page, at + 4);
        if u16_at(page, at + 6) != 8 {
            return None;
        }
        let key_end = at + NODE_HEADER + 8;
        let key = page.get(at + NODE_HEADER..key_end)?;
        let value = match flags {
            0 => page.get(key_end..key_end.checked_add(size)?)?,
            F_BIGDATA => self.overflow(word_at(page.get(key_end..key_end + WORD)?, 0), size)?,
            _ => return None,
        };
        Some((key, value))
    }

    /// A value of `size` bytes kept in the overflow pages from `first` on.
    #[cold]
    fn overflow(&self, first: u64, size: usize) -> Option<&'t [u8]> {
        let page = self.page(first)?;
        let count = u64::from(u32_at(page, WORD + 4));
        if u16_at(page, WORD + 2) != P_OVERFLOW
            || count == 0
            || first.checked_add(count)? > self.pages
            || (size as u64).checked_add(PAGE_HEADER as u64)? > count.checked_mul(self.page_size as u64)?
        {
            return None;
        }
        // SAFETY: the `count` pages from `first` lie inside the file and the map (checked
        // against `pages` above), contiguous in the map as in the file, and `size` bytes
        // after the first page's header end inside them; they are the snapshot's as argued
        // in `page`.
        Some(unsafe {
            std::slice::from_raw_parts(
                (self.base + first as usize * self.page_size + PAGE_HEADER) as *const u8,
                size,
            )
        })
    }

    /// The first of the nodes `low..high` of `page` whose key does not satisfy `below`, by
    /// binary search (the keys are in order, so `below` holds up to some node and not after).
    fn first_not(
        page: &'t [u8],
        mut low: usize,
        mut high: usize,
        below: impl Fn(u64) -> bool,
    ) -> Option<usize> {
        while low < high {
            let mid = usize::midpoint(low, high);
            if below(Self::key(page, mid)?) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Some(low)
    }

    /// Goes down from page `number`, the child of the last level on the path, to a leaf:
    /// along the first nodes, or to the first key at or after `target`.
    fn descend(&mut self, mut number: u64, target: Option<u64>) -> Option<()> {
        loop {
            let page = self.page(number)?;
            if self.levels + 1 == self.depth {
                let (count, _) = Self::nodes(page, P_LEAF)?;
                // LMDB leaves no leaf empty but the root of an empty table.
                if count == 0 && self.levels > 0 {
                    return None;
                }
                let at = match target {
                    // The first node whose key is at or after the target.
                    Some(target) => Self::first_not(page, 0, count, |key| key < target)?,
                    None => 0,
                };
                self.leaf = Level { page, at, count };
                return Some(());
            }
            if self.levels + 1 >= self.depth {
                return None;
            }
            let (count, _) = Self::nodes(page, P_BRANCH)?;
            if count == 0 {
                return None;
            }
            let at = match target {
                // The last node whose key is at or before the target; the first node's key
                // stands for everything below the second's.
                Some(target) => Self::first_not(page, 1, count, |key| key <= target)? - 1,
                None => 0,
            };
            self.path[self.levels] = Level { page, at, count };
            self.levels += 1;
            number = Self::child(page, at)?;
        }
    }
}
