//! LMDB's file, read without trusting it.
//!
//! LMDB follows the page numbers, offsets and sizes in `data.mdb` as they are: it checks no
//! meta page and no page. A page size of 0 divides by zero while the file is opened, a page
//! past the end of a file cut short faults when the map is touched, a damaged page header
//! sends a search outside its page or round in a loop, and a damaged transaction id in a
//! meta page silently opens the store at an older commit. This module reads the file with
//! positioned reads (a read past the end comes back short instead of faulting), checks every
//! field before it uses one, and reports damage as [`Error::CorruptFile`].
//!
//! - [`check_before_open`] runs before LMDB maps the file: both meta pages and their pair,
//!   the file's length, and the pages that opening and the first write transaction read (the
//!   main table, the free list, named tables' roots, and the tables the caller names, whole or
//!   along their last entries).
//! - [`verify_file`] and [`check_snapshot`] walk every page reachable from a snapshot.
//!
//! The layout is that of LMDB's `mdb.c` as `lmdb-master-sys` builds it (without `MDB_DEVEL`
//! and `MDB_VL32`): page numbers, transaction ids and sizes are machine words, in the
//! machine's byte order, so a file is read by the kind of machine that wrote it, as LMDB
//! itself requires.

use std::cmp::Ordering;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::Error;

/// LMDB's data file in a store's directory.
const DATA_FILE: &str = "data.mdb";

/// The size of `pgno_t`, `txnid_t` and `mdb_size_t`.
pub(crate) const WORD: usize = size_of::<usize>();
/// `MDB_page` up to its node offsets: page number, pad, flags, lower and upper bounds.
pub(crate) const PAGE_HEADER: usize = WORD + 8;
/// `MDB_node` up to its key: two halves of the data size (or child page), flags, key size.
pub(crate) const NODE_HEADER: usize = 8;
/// `MDB_db`: pad, flags, depth, branch, leaf and overflow page counts, entries, root.
pub(crate) const DB_LEN: usize = 8 + 5 * WORD;
/// `MDB_meta`: magic, version, address, map size, the free list's and the main table's
/// `MDB_db`, last page, transaction id.
const META_LEN: usize = 8 + 2 * WORD + 2 * DB_LEN + 2 * WORD;
/// Offsets in a meta page (its page header first).
const META_MAGIC: usize = PAGE_HEADER;
const META_VERSION: usize = PAGE_HEADER + 4;
const META_FREE: usize = PAGE_HEADER + 8 + 2 * WORD;
const META_MAIN: usize = META_FREE + DB_LEN;
const META_LAST_PAGE: usize = META_MAIN + DB_LEN;
const META_TXNID: usize = META_LAST_PAGE + WORD;
const META_BYTES: usize = PAGE_HEADER + META_LEN;
/// Pages 0 and 1 are the meta pages; transaction `t` writes page `t & 1`.
const META_PAGES: u64 = 2;

const MAGIC: u32 = 0xBEEF_C0DE;
const DATA_VERSION: u32 = 1;
/// `P_INVALID`: the root of an empty tree.
pub(crate) const NO_PAGE: u64 = if WORD == 8 { u64::MAX } else { u32::MAX as u64 };
/// LMDB's cursors hold at most this many pages from root to leaf (`CURSOR_STACK`).
pub(crate) const MAX_DEPTH: u16 = 32;
/// LMDB uses the OS page size, capped at `MAX_PAGESIZE` (32 KiB without `MDB_DEVEL`).
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 0x8000;

// Page flags.
pub(crate) const P_BRANCH: u16 = 0x01;
pub(crate) const P_LEAF: u16 = 0x02;
pub(crate) const P_OVERFLOW: u16 = 0x04;
pub(crate) const P_META: u16 = 0x08;
const P_LEAF2: u16 = 0x20;

// Node flags.
pub(crate) const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;

// Table flags (`mdb_dbi_open`) kept in `MDB_db`.
pub(crate) const REVERSEKEY: u16 = 0x02;
const DUPSORT: u16 = 0x04;
const INTEGERKEY: u16 = 0x08;
const DUPFIXED: u16 = 0x10;
const INTEGERDUP: u16 = 0x20;
const REVERSEDUP: u16 = 0x40;
const TABLE_FLAGS: u16 = REVERSEKEY | DUPSORT | INTEGERKEY | DUPFIXED | INTEGERDUP | REVERSEDUP;
pub(crate) const DUP_FLAGS: u16 = DUPSORT | DUPFIXED | INTEGERDUP | REVERSEDUP;
/// The environment flags a meta page keeps (`MDB_FIXEDMAP`, `MDB_NOSUBDIR`), in the free
/// list's flags beside its own `MDB_INTEGERKEY`.
const ENV_FLAGS: u16 = 0x01 | 0x4000 | INTEGERKEY;

/// How many times a check that found damage runs again when the meta pages changed
/// meanwhile (another process committed, so the pages read may belong to two snapshots).
const ATTEMPTS: usize = 4;
/// Free lists kept in overflow pages are read in pieces of this size.
const CHUNK: usize = 64 * 1024;

fn corrupt(page: Option<u64>, reason: impl Into<String>) -> Error {
    Error::CorruptFile { page, reason: reason.into() }
}

// Fixed-layout reads. Callers check the range first; out of range reads as zero rather than
// panicking, so a slip shows as a failed check, never as a crash.
#[inline]
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_ne_bytes)
}

#[inline]
pub(crate) fn word_at(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + WORD) {
        Some(s) if WORD == 8 => s.try_into().map_or(0, u64::from_ne_bytes),
        Some(s) => s.try_into().map_or(0, |w| u64::from(u32::from_ne_bytes(w))),
        None => 0,
    }
}

/// What [`verify_file`] checked: the figures of a structurally sound file.
///
/// Every page of the snapshot is accounted for: `pages = 2 + pages_in_use + free_pages` (the
/// two meta pages, then every other page either reachable from the snapshot exactly once, or
/// listed free exactly once).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileReport {
    /// LMDB's page size for this file, in bytes.
    pub page_size: u32,
    /// The transaction id of the snapshot checked: the last commit.
    pub txnid: u64,
    /// Pages the snapshot spans: page numbers 0 to its last page, the meta pages included.
    pub pages: u64,
    /// Pages reachable from the snapshot: every table's B-tree and overflow pages, those of
    /// the main table (which lists the tables) and those of LMDB's free list.
    pub pages_in_use: u64,
    /// Pages listed free, for later commits to reuse.
    pub free_pages: u64,
    /// Every named table, in name order.
    pub tables: Vec<TableReport>,
}

/// One table of a [`FileReport`]: what its B-tree holds. The counts are those LMDB records
/// for the table, each found equal to what the walk of its pages counted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableReport {
    /// The table's name (as UTF-8, with any invalid bytes replaced).
    pub name: String,
    /// The root page (`None`: the table is empty).
    pub root: Option<u64>,
    /// The B-tree's depth: 1 for a single leaf page, 0 for an empty table.
    pub depth: u16,
    /// Key-value entries.
    pub entries: u64,
    /// Branch (inner) pages.
    pub branch_pages: u64,
    /// Leaf pages.
    pub leaf_pages: u64,
    /// Overflow pages, holding values too large for a leaf page.
    pub overflow_pages: u64,
}

/// What the structural check of [`ReadView::check_integrity`](crate::ReadView::check_integrity)
/// covered: the summary of a [`FileReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FileCoverage {
    /// Pages reachable from the snapshot, each read and checked.
    pub pages: u64,
    /// Pages listed free, each checked to be in range and listed once.
    pub free_pages: u64,
    /// Named tables walked.
    pub tables: u64,
    /// The transaction whose snapshot was walked: the view's own, or, when two commits have
    /// landed since the view began (LMDB no longer records where its snapshot starts), the
    /// newest commit's, walked while the check holds the store's write lock.
    pub snapshot: u64,
}

impl FileReport {
    /// The summary of this report.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # drop(varvedb::Varve::open(dir.path())?);
    /// let report = varvedb::verify_file(dir.path())?;
    /// let coverage = report.coverage();
    /// assert_eq!(coverage.tables, report.tables.len() as u64);
    /// assert_eq!(2 + coverage.pages + coverage.free_pages, report.pages);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    #[must_use]
    pub fn coverage(&self) -> FileCoverage {
        FileCoverage {
            pages: self.pages_in_use,
            free_pages: self.free_pages,
            tables: self.tables.len() as u64,
            snapshot: self.txnid,
        }
    }
}

/// Checks the structure of the LMDB file of the store in directory `dir`, every page of it,
/// without opening the store: for an operator to check a suspicious or closed store, or a
/// backup made by [`Varve::backup`](crate::Varve::backup), before trusting it.
///
/// It reads the file as it is, with ordinary reads (no memory map), and never crashes or
/// hangs on a damaged file. It checks both meta pages and that they belong together, the
/// file's length, and every page reachable from the last commit: page numbers in range, page
/// headers of the right kind for their place, entries inside their page and in key order,
/// tree depths, overflow pages, the free list (every page either in use or free, exactly
/// once, none lost), and the entry and page counts LMDB records for each table. It does not
/// read the records' contents: [`ReadView::check_integrity`](crate::ReadView::check_integrity)
/// checks those (and runs this check first, on its own snapshot).
///
/// Run it on a closed store or a copy: a store written meanwhile by another process can give
/// a spurious report (the check runs again when it sees a commit land, a few times at most).
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"x".to_vec())])?;
/// drop(db);
///
/// let report = varvedb::verify_file(dir.path())?;
/// let events = report.tables.iter().find(|t| t.name == "events").unwrap();
/// assert_eq!(events.entries, 1);
/// # Ok::<(), varvedb::Error>(())
/// ```
///
/// # Errors
/// [`Error::CorruptFile`] naming the first damage found (and the page, when it is in one);
/// [`Error::Io`] if `dir/data.mdb` cannot be read (for example, it does not exist).
pub fn verify_file(dir: impl AsRef<Path>) -> Result<FileReport, Error> {
    let file = File::open(dir.as_ref().join(DATA_FILE))?;
    settled(&file, failed_commit(dir.as_ref()), |pages, metas| {
        let (newest, older) = pair(metas)?;
        let (report, last_free_key) = deep(pages, &newest)?;
        check_older_free_list(pages, &newest, last_free_key, &older)?;
        Ok(report)
    })
}

/// The check run before LMDB maps the file of the store in directory `dir` (nothing to check
/// when there is no file yet): the meta pages, their pair and the file's length, then what
/// opening and the first write transaction read: the main table and the free list whole,
/// every named table's root page, the tables in `whole` whole, and those in `last` along the
/// path to their last entry.
///
/// A commit whose meta-page write failed leaves a state of its own: LMDB writes the meta page
/// back with the page's old transaction id and last page, but the failed commit's table
/// records, which point at pages that snapshot does not have. LMDB never reads that page
/// (it holds the older snapshot), but to the check it looks like damage, or like an older
/// snapshot made to look newer. The store records such a failure beside the file
/// ([`record_failed_commit`]); with that record, the written-back page is checked for
/// everything but its table records, and the next commit rewrites it.
pub(crate) fn check_before_open(dir: &Path, whole: &[&str], last: &[&str]) -> Result<(), Error> {
    let file = match File::open(dir.join(DATA_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    settled(&file, failed_commit(dir), |pages, metas| {
        let (newest, older) = pair(metas)?;
        let last_free_key = shallow(pages, &newest, whole, last)?;
        check_older_free_list(pages, &newest, last_free_key, &older)
    })
}

/// The file, beside `data.mdb`, that records a commit whose meta-page write failed: its
/// transaction id, in decimal.
const FAILED_COMMIT_FILE: &str = "failed-commit";

/// Records, durably, that the commit of transaction `txnid` failed while LMDB wrote its meta
/// page (see [`check_before_open`]).
pub(crate) fn record_failed_commit(dir: &Path, txnid: u64) -> std::io::Result<()> {
    let path = dir.join(FAILED_COMMIT_FILE);
    let mut file = File::create(&path)?;
    std::io::Write::write_all(&mut file, txnid.to_string().as_bytes())?;
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

/// The transaction id [`record_failed_commit`] recorded, if any (an unreadable record is
/// none: the check is then as strict as without it).
pub(crate) fn failed_commit(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(FAILED_COMMIT_FILE)).ok()?.trim().parse().ok()
}

/// Removes the record, once a commit has rewritten the meta page it is about.
pub(crate) fn clear_failed_commit(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(FAILED_COMMIT_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.and_then(|()| File::open(dir)?.sync_all()),
    }
}

/// The number of the first overflow page whose header is `header`, if it is one.
pub(crate) fn overflow_page_number(header: &[u8]) -> Option<u64> {
    (header.len() == PAGE_HEADER && u16_at(header, WORD + 2) == P_OVERFLOW).then(|| word_at(header, 0))
}

/// Writes the meta page of transaction `txnid` again, unchanged, through `file` (a
/// descriptor of `data.mdb` open for writing), if the page the operating system holds for it
/// is that transaction's; returns whether it was. The write makes the page dirty again: a
/// flush that failed may have dropped it, and the next flush then writes it.
pub(crate) fn rewrite_meta(file: &File, txnid: u64) -> Result<bool, Error> {
    let Ok(first) = parse_meta(&read_meta_bytes(file, 0, 0)?, 0) else { return Ok(false) };
    let index = txnid & 1;
    let offset = index * u64::from(first.page_size);
    let b = read_meta_bytes(file, index, offset)?;
    if !matches!(parse_meta(&b, index), Ok(m) if m.txnid == txnid) {
        return Ok(false);
    }
    std::os::unix::fs::FileExt::write_all_at(file, &b, offset).map_err(Error::Io)?;
    Ok(true)
}

/// The meta page of transaction `txnid` as the operating system holds it in `file` (a
/// descriptor of `data.mdb`), if it still is that transaction's: for a checkpoint, taken
/// under LMDB's write lock, so that no commit is writing meta pages meanwhile.
pub(crate) fn meta_copy(file: &File, txnid: u64) -> Result<Option<Vec<u8>>, Error> {
    let Ok(first) = parse_meta(&read_meta_bytes(file, 0, 0)?, 0) else { return Ok(None) };
    let index = txnid & 1;
    let b = read_meta_bytes(file, index, index * u64::from(first.page_size))?;
    Ok(matches!(parse_meta(&b, index), Ok(m) if m.txnid == txnid).then(|| b.to_vec()))
}

/// The highest transaction id of the two meta pages of `file` (`data.mdb`) that parse as
/// meta pages, if either does.
pub(crate) fn newest_meta_txnid(file: &File) -> Result<Option<u64>, Error> {
    let Ok(first) = parse_meta(&read_meta_bytes(file, 0, 0)?, 0) else { return Ok(None) };
    let second =
        read_meta_bytes(file, 1, u64::from(first.page_size)).ok().and_then(|b| parse_meta(&b, 1).ok());
    Ok(Some(second.map_or(first.txnid, |m| m.txnid.max(first.txnid))))
}

/// The bytes of `data.mdb` up to the end of the last page in use, by a meta page copy from
/// [`meta_copy`], if it is one.
pub(crate) fn meta_copy_used(copy: &[u8]) -> Option<u64> {
    let b: &[u8; META_BYTES] = copy.try_into().ok()?;
    let meta = parse_meta(b, word_at(b, 0)).ok()?;
    meta.last_page.checked_add(1)?.checked_mul(u64::from(meta.page_size))
}

/// Writes `copy` (from [`meta_copy`]) of transaction `t` over meta page `t & 1` of `file`
/// (`data.mdb`, open for writing, not mapped by any process), and over the other one the
/// same with transaction id `t − 1`, unless they hold that already; returns whether it
/// wrote. The caller flushes. LMDB takes the page with the higher id as the last commit, so
/// `t`'s snapshot is the store, and every later commit is gone; the other page points at the
/// same pages, and only ever stands in for the commit before.
pub(crate) fn restore_meta(file: &File, copy: &[u8]) -> Result<bool, Error> {
    let b: &[u8; META_BYTES] =
        copy.try_into().map_err(|_| corrupt(None, "a checkpoint's meta page has the wrong size"))?;
    let Ok(meta) = parse_meta(b, word_at(b, 0)) else {
        return Err(corrupt(None, "a checkpoint's meta page is not a meta page"));
    };
    let mut wrote = false;
    for index in 0..META_PAGES {
        let mut page = *b;
        page[..WORD].copy_from_slice(&index.to_ne_bytes()[..WORD]);
        if index != meta.txnid & 1 {
            let before = meta.txnid.saturating_sub(1);
            page[META_TXNID..META_TXNID + WORD].copy_from_slice(&before.to_ne_bytes()[..WORD]);
        }
        let offset = index * u64::from(meta.page_size);
        let on_disk = read_meta_bytes(file, index, offset).ok();
        if on_disk != Some(page) {
            std::os::unix::fs::FileExt::write_all_at(file, &page, offset).map_err(Error::Io)?;
            wrote = true;
        }
    }
    Ok(wrote)
}

/// Walks every page of the snapshot of transaction `txnid`, the one a read transaction of the
/// store in `dir` holds; `None` if that snapshot's meta page is gone.
///
/// LMDB keeps a snapshot's root pages only in the meta page `txnid & 1`, until transaction
/// `txnid + 2` overwrites it; the snapshot's pages stay as they are while the read
/// transaction lives. So the meta page is read before and after the walk: if it no longer
/// holds `txnid`, the walk cannot be made on this snapshot.
pub(crate) fn check_snapshot(dir: &Path, txnid: u64) -> Result<Option<FileReport>, Error> {
    let file = File::open(dir.join(DATA_FILE))?;
    let index = txnid & 1;
    // Meta page 1 lies one page into the file. Only the page size is read from page 0, which
    // a commit may be rewriting: a commit writes the same page size again.
    let offset = if index == 0 {
        0
    } else {
        let page_size = u32_at(&read_meta_bytes(&file, 0, 0)?, META_FREE);
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(corrupt(Some(0), format!("meta page 0: page size {page_size} is not LMDB's")));
        }
        u64::from(page_size)
    };
    let before = read_meta_bytes(&file, index, offset)?;
    let held = word_at(&before, META_TXNID);
    if held > txnid {
        return Ok(None);
    }
    if held < txnid {
        return Err(corrupt(
            Some(index),
            format!("meta page {index} holds transaction {held}, older than a live snapshot's {txnid}"),
        ));
    }
    let meta = parse_meta(&before, index)?;
    let pages = PageFile::new(&file, meta.page_size)?;
    let report = deep(&pages, &meta);
    // Rewritten meanwhile: the meta page may have been read half old, half new.
    if read_meta_bytes(&file, index, offset)? != before {
        return Ok(None);
    }
    report.map(|(report, _)| Some(report))
}

/// Runs `check` on the file's current meta pages, and again (a few times at most) when it
/// finds damage but the meta pages changed meanwhile: another process committed, and pages
/// read during the check may be from two snapshots.
fn settled<T>(
    file: &File,
    failed_commit: Option<u64>,
    check: impl Fn(&PageFile<'_>, &[Meta; 2]) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        let before = meta_fingerprint(file);
        let result = read_metas(file, failed_commit).and_then(|metas| {
            let pages = PageFile::new(file, metas[0].page_size)?;
            check(&pages, &metas)
        });
        match result {
            Err(e) if attempt < ATTEMPTS && meta_fingerprint(file) != before => {
                drop(e);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The bytes of both meta pages as they are now (unchecked), to tell whether they changed.
fn meta_fingerprint(file: &File) -> Vec<u8> {
    let mut bytes = vec![0; 2 * META_BYTES];
    let (first, second) = bytes.split_at_mut(META_BYTES);
    let n = read_full(file, first, 0).unwrap_or(0);
    let page_size = u32_at(first, META_FREE);
    if n == META_BYTES && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        drop(read_full(file, second, u64::from(page_size)));
    }
    bytes
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// An `MDB_db`: a B-tree's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Db {
    flags: u16,
    depth: u16,
    branch: u64,
    leaf: u64,
    overflow: u64,
    entries: u64,
    root: u64,
}

impl Db {
    fn parse(b: &[u8]) -> Db {
        Db {
            flags: u16_at(b, 4),
            depth: u16_at(b, 6),
            branch: word_at(b, 8),
            leaf: word_at(b, 8 + WORD),
            overflow: word_at(b, 8 + 2 * WORD),
            entries: word_at(b, 8 + 3 * WORD),
            root: word_at(b, 8 + 4 * WORD),
        }
    }

    /// Checks what the record says on its own; `flags` are checked by the caller, as the
    /// free list's hold the environment's.
    fn check(&self, last_page: u64, what: &str, page: Option<u64>) -> Result<(), Error> {
        let bad = |reason: String| Err(corrupt(page, format!("{what}: {reason}")));
        if self.root == NO_PAGE {
            if (self.depth, self.branch, self.leaf, self.overflow, self.entries) != (0, 0, 0, 0, 0) {
                return bad("an empty tree's record has a depth or counts".into());
            }
            return Ok(());
        }
        if self.root < META_PAGES || self.root > last_page {
            return bad(format!("root page {} is outside pages 2..={last_page}", self.root));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return bad(format!("depth {} is outside 1..={MAX_DEPTH}", self.depth));
        }
        if self.leaf == 0 || self.branch < u64::from(self.depth - 1) || (self.depth == 1 && self.branch != 0)
        {
            return bad(format!(
                "{} branch and {} leaf pages cannot make a tree of depth {}",
                self.branch, self.leaf, self.depth
            ));
        }
        let pages = self.branch.checked_add(self.leaf).and_then(|p| p.checked_add(self.overflow));
        if pages.is_none_or(|p| p > last_page - 1) {
            return bad(format!("its page counts exceed the file's {} pages", last_page + 1));
        }
        Ok(())
    }
}

/// An `MDB_meta`, with the number of the page it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    index: u64,
    page_size: u32,
    free: Db,
    main: Db,
    last_page: u64,
    txnid: u64,
}

impl Meta {
    /// The meta page of a new environment, before its first commit.
    fn is_initial(&self) -> bool {
        self.free.root == NO_PAGE && self.main.root == NO_PAGE && self.last_page == META_PAGES - 1
    }
}

fn read_meta_bytes(file: &File, index: u64, offset: u64) -> Result<[u8; META_BYTES], Error> {
    let mut b = [0u8; META_BYTES];
    if read_full(file, &mut b, offset)? < META_BYTES {
        return Err(corrupt(Some(index), format!("the file ends inside meta page {index}")));
    }
    Ok(b)
}

fn read_meta(file: &File, index: u64, offset: u64, failed_commit: Option<u64>) -> Result<Meta, Error> {
    let mut b = read_meta_bytes(file, index, offset)?;
    if let Some(txnid) = failed_commit
        && index == txnid & 1
        && word_at(&b, META_TXNID) == txnid.wrapping_sub(2)
    {
        // LMDB's write-back after a failed meta-page write (see `check_before_open`): the
        // page's own transaction id and last page, with the failed commit's table records.
        // LMDB never reads them (the page holds the older snapshot); neither does the check.
        for db in [META_FREE, META_MAIN] {
            // Depth, page counts, entries: zero; root: none. The pad and flags stay: the free
            // list's hold the page size and the environment's flags, checked as usual.
            b[db + 6..db + DB_LEN - WORD].fill(0);
            b[db + DB_LEN - WORD..db + DB_LEN].copy_from_slice(&NO_PAGE.to_ne_bytes()[..WORD]);
        }
    }
    parse_meta(&b, index)
}

/// Parses and checks meta page `index` on its own.
fn parse_meta(b: &[u8; META_BYTES], index: u64) -> Result<Meta, Error> {
    let bad = |reason: String| Err(corrupt(Some(index), format!("meta page {index}: {reason}")));
    let header_page = word_at(b, 0);
    let flags = u16_at(b, WORD + 2);
    if header_page != index || flags != P_META {
        return bad(format!("its header says page {header_page} with flags {flags:#x}, not a meta page"));
    }
    if u32_at(b, META_MAGIC) != MAGIC {
        return bad("it does not start with LMDB's magic number".into());
    }
    let version = u32_at(b, META_VERSION);
    if version != DATA_VERSION {
        return bad(format!("LMDB file format version {version}, this build reads {DATA_VERSION}"));
    }
    let free = Db::parse(&b[META_FREE..]);
    let meta = Meta {
        index,
        // The free list's pad and flags hold the page size and the environment's flags.
        page_size: u32_at(b, META_FREE),
        free,
        main: Db::parse(&b[META_MAIN..]),
        last_page: word_at(b, META_LAST_PAGE),
        txnid: word_at(b, META_TXNID),
    };
    if !meta.page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&meta.page_size) {
        return bad(format!(
            "page size {} is not a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}",
            meta.page_size
        ));
    }
    if free.flags & !ENV_FLAGS != 0 || free.flags & INTEGERKEY == 0 {
        return bad(format!("environment flags {:#x} are not LMDB's", free.flags));
    }
    if meta.main.flags & !TABLE_FLAGS != 0 {
        return bad(format!("the main table's flags {:#x} are not LMDB's", meta.main.flags));
    }
    if meta.last_page < META_PAGES - 1
        || meta.last_page.checked_add(1).and_then(|p| p.checked_mul(u64::from(meta.page_size))).is_none()
    {
        return bad(format!("last page {} is out of range", meta.last_page));
    }
    // Transaction `t` writes meta page `t & 1`; a new environment has 0 in both.
    if meta.txnid & 1 != index && meta.txnid != 0 {
        return bad(format!("it holds transaction {}, which LMDB writes to the other meta page", meta.txnid));
    }
    meta.free.check(meta.last_page, &format!("meta page {index}, free list"), Some(index))?;
    meta.main.check(meta.last_page, &format!("meta page {index}, main table"), Some(index))?;
    Ok(meta)
}

/// Reads and checks both meta pages on their own: the second lies one page size (the first
/// one's, as LMDB reads it) into the file.
fn read_metas(file: &File, failed_commit: Option<u64>) -> Result<[Meta; 2], Error> {
    let size = file.metadata()?.len();
    if size == 0 {
        return Err(corrupt(None, "data.mdb is empty: it has no meta pages"));
    }
    let first = read_meta(file, 0, 0, failed_commit)?;
    let page_size = u64::from(first.page_size);
    if size < META_PAGES * page_size {
        return Err(corrupt(
            None,
            format!("data.mdb is {size} bytes, shorter than its two meta pages of {page_size} bytes"),
        ));
    }
    let second = read_meta(file, 1, page_size, failed_commit)?;
    let flags = |m: &Meta| m.free.flags;
    if second.page_size != first.page_size || flags(&second) != flags(&first) {
        return Err(corrupt(Some(1), "the meta pages disagree on the page size or the environment's flags"));
    }
    Ok([first, second])
}

/// The meta page LMDB opens (the higher transaction id) and the other one, once their pair is
/// checked: LMDB writes them in turn, so past the first commit their transaction ids differ
/// by exactly one. Any other pair means a damaged id, which would open the store at another
/// commit than its last.
fn pair(metas: &[Meta; 2]) -> Result<(Meta, Meta), Error> {
    let [a, b] = *metas;
    if a.txnid == 0 && b.txnid == 0 {
        if !a.is_initial() || !b.is_initial() {
            return Err(corrupt(
                None,
                "both meta pages hold transaction 0, which only a new, empty file does, but one has tables",
            ));
        }
        return Ok((a, b));
    }
    let (newest, older) = if a.txnid > b.txnid { (a, b) } else { (b, a) };
    if newest.txnid - older.txnid != 1 {
        return Err(corrupt(
            Some(newest.index),
            format!(
                "meta page {} holds transaction {} and meta page {} transaction {}: LMDB writes the two in turn, so they differ by one; a damaged transaction id would open the store at another commit",
                newest.index, newest.txnid, older.index, older.txnid
            ),
        ));
    }
    if older.last_page > newest.last_page {
        return Err(corrupt(
            Some(newest.index),
            format!(
                "meta page {} (transaction {}) ends the file at page {}, before the older meta page's {}: the file only grows, so its transaction id is damaged",
                newest.index, newest.txnid, newest.last_page, older.last_page
            ),
        ));
    }
    Ok((newest, older))
}

/// The free list's last record names the transaction that wrote it, and a commit never
/// removes the record of the one before it (only records older than every reader are
/// reused). So the newest snapshot's last free-list key is at least the older one's: an
/// older snapshot whose damaged transaction id made it look newer is caught here. Damage in
/// the older snapshot's pages (which may be free, and reused, in the newest) is no reason to
/// refuse the file; only a sound older free list that ends later is.
fn check_older_free_list(
    pages: &PageFile<'_>,
    newest: &Meta,
    newest_key: Option<u64>,
    older: &Meta,
) -> Result<(), Error> {
    if older.free.root == NO_PAGE {
        return Ok(());
    }
    let mut walk = Walk::new(pages, older, false);
    let Ok(_) = walk.tree("free list", older.free, Kind::Free, Reach::Last) else {
        return Ok(());
    };
    let Some(older_key) = walk.last_free_key else {
        return Ok(());
    };
    if newest_key.is_none_or(|k| k < older_key) {
        return Err(corrupt(
            Some(newest.index),
            format!(
                "meta page {} (transaction {}) has an older free list than meta page {} (transaction {}): its transaction id is damaged",
                newest.index, newest.txnid, older.index, older.txnid
            ),
        ));
    }
    Ok(())
}

/// The pages opening reads and the first write transaction starts from. Returns the last
/// key of the free list.
fn shallow(pages: &PageFile<'_>, meta: &Meta, whole: &[&str], last: &[&str]) -> Result<Option<u64>, Error> {
    let mut walk = Walk::new(pages, meta, true);
    walk.tree("free list", meta.free, Kind::Free, Reach::All)?;
    walk.check_tail()?;
    walk.tree("main table", meta.main, Kind::Main, Reach::All)?;
    for (name, db) in std::mem::take(&mut walk.tables) {
        let name = String::from_utf8_lossy(&name);
        let reach = if whole.contains(&&*name) {
            Reach::All
        } else if last.contains(&&*name) {
            Reach::Last
        } else {
            Reach::Root
        };
        walk.tree(&format!("table `{name}`"), db, Kind::Table, reach)?;
    }
    Ok(walk.last_free_key)
}

/// Every page of a snapshot. Returns the last key of the free list too.
fn deep(pages: &PageFile<'_>, meta: &Meta) -> Result<(FileReport, Option<u64>), Error> {
    let mut walk = Walk::new(pages, meta, true);
    walk.tree("free list", meta.free, Kind::Free, Reach::All)?;
    walk.check_tail()?;
    walk.tree("main table", meta.main, Kind::Main, Reach::All)?;
    let mut tables = Vec::new();
    for (name, db) in std::mem::take(&mut walk.tables) {
        let name = String::from_utf8_lossy(&name).into_owned();
        walk.tree(&format!("table `{name}`"), db, Kind::Table, Reach::All)?;
        tables.push(TableReport {
            name,
            root: (db.root != NO_PAGE).then_some(db.root),
            depth: db.depth,
            entries: db.entries,
            branch_pages: db.branch,
            leaf_pages: db.leaf,
            overflow_pages: db.overflow,
        });
    }
    walk.check_accounted()?;
    let report = FileReport {
        page_size: meta.page_size,
        txnid: meta.txnid,
        pages: meta.last_page + 1,
        pages_in_use: walk.used_pages,
        free_pages: walk.free_pages,
        tables,
    };
    Ok((report, walk.last_free_key))
}

/// The file, read page by page.
struct PageFile<'f> {
    file: &'f File,
    page_size: usize,
    /// Whole pages in the file.
    file_pages: u64,
}

impl<'f> PageFile<'f> {
    fn new(file: &'f File, page_size: u32) -> Result<Self, Error> {
        let size = file.metadata()?.len();
        Ok(PageFile { file, page_size: page_size as usize, file_pages: size / u64::from(page_size) })
    }

    fn offset(&self, page: u64) -> u64 {
        page.saturating_mul(self.page_size as u64)
    }

    /// Reads page `page` into `buf` (`page_size` bytes), or its first `buf.len()` bytes.
    fn read(&self, page: u64, buf: &mut [u8]) -> Result<(), Error> {
        if page >= self.file_pages {
            return Err(corrupt(
                Some(page),
                format!(
                    "the file ends before this page: it holds {} pages (it was cut short)",
                    self.file_pages
                ),
            ));
        }
        if read_full(self.file, buf, self.offset(page))? < buf.len() {
            return Err(corrupt(Some(page), "the file ends inside this page (it was cut short)"));
        }
        Ok(())
    }
}

/// One bit per page of the file.
struct Bits(Vec<u64>);

impl Bits {
    fn new(pages: u64) -> Bits {
        Bits(vec![0; usize::try_from(pages.div_ceil(64)).unwrap_or(0)])
    }

    fn get(&self, page: u64) -> bool {
        usize::try_from(page / 64)
            .ok()
            .and_then(|i| self.0.get(i))
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    fn set(&mut self, page: u64) {
        if let Some(w) = usize::try_from(page / 64).ok().and_then(|i| self.0.get_mut(i)) {
            *w |= 1 << (page % 64);
        }
    }
}

/// How far a walk goes down a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every page; the counts are checked against the tree's record.
    All,
    /// The pages from the root to the last entry.
    Last,
    /// The root page.
    Root,
}

/// What a tree's leaf entries hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// LMDB's free list: transaction id → the page numbers it freed.
    Free,
    /// The main table: table name → the table's `MDB_db`.
    Main,
    /// A table: key → value.
    Table,
}

/// The key order of a tree, as LMDB compares its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Bytes as unsigned, a prefix first (the default; every table of a store).
    Bytes,
    /// The same, from the last byte (`MDB_REVERSEKEY`).
    Reverse,
    /// Unsigned integers of 4 or 8 bytes in the machine's order (`MDB_INTEGERKEY`; the free
    /// list).
    Integer,
}

impl Order {
    fn of(flags: u16) -> Order {
        if flags & INTEGERKEY != 0 {
            Order::Integer
        } else if flags & REVERSEKEY != 0 {
            Order::Reverse
        } else {
            Order::Bytes
        }
    }

    /// `None` for integer keys of different or unusable sizes.
    fn cmp(self, a: &[u8], b: &[u8]) -> Option<Ordering> {
        match self {
            Order::Bytes => Some(a.cmp(b)),
            Order::Reverse => Some(a.iter().rev().cmp(b.iter().rev())),
            Order::Integer => match (a.len(), b.len()) {
                (4, 4) => Some(u32_at(a, 0).cmp(&u32_at(b, 0))),
                (8, 8) => {
                    Some(u64::from_ne_bytes(a.try_into().ok()?).cmp(&u64::from_ne_bytes(b.try_into().ok()?)))
                }
                _ => None,
            },
        }
    }
}

/// A tree being walked.
struct Tree<'a> {
    name: &'a str,
    db: Db,
    kind: Kind,
    order: Order,
    reach: Reach,
}

#[derive(Debug, Default)]
struct Counts {
    branch: u64,
    leaf: u64,
    overflow: u64,
    entries: u64,
}

/// A node of a page: its offset, flags, the size field (data size, or the low half of a
/// child page number), and where its key and data lie in the page.
struct Node {
    flags: u16,
    size: u32,
    key: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
}

impl Node {
    fn child(&self) -> u64 {
        let high = if WORD == 8 { u64::from(self.flags) << 32 } else { 0 };
        u64::from(self.size) | high
    }
}

/// The state of a walk over one snapshot: which pages were reached and which are free.
struct Walk<'p> {
    pages: &'p PageFile<'p>,
    last_page: u64,
    txnid: u64,
    /// Whether pages are claimed (each reached once, none both free and in use). Off for a
    /// look at the older snapshot, which shares most pages with the newest.
    claims: bool,
    used: Bits,
    free: Bits,
    /// Free pages at or past the file's end (LMDB need not have written them).
    free_tail: Vec<u64>,
    used_pages: u64,
    free_pages: u64,
    /// One page buffer per tree level.
    buffers: Vec<Vec<u8>>,
    /// The named tables found in the main table, in name order.
    tables: Vec<(Vec<u8>, Db)>,
    last_free_key: Option<u64>,
}

impl<'p> Walk<'p> {
    fn new(pages: &'p PageFile<'p>, meta: &Meta, claims: bool) -> Self {
        let bits = if claims { pages.file_pages } else { 0 };
        Walk {
            pages,
            last_page: meta.last_page,
            txnid: meta.txnid,
            claims,
            used: Bits::new(bits),
            free: Bits::new(bits),
            free_tail: Vec::new(),
            used_pages: 0,
            free_pages: 0,
            buffers: Vec::new(),
            tables: Vec::new(),
            last_free_key: None,
        }
    }

    /// A page of a tree, reached from its parent.
    fn claim(&mut self, page: u64, what: &str) -> Result<(), Error> {
        self.in_range(page, what)?;
        if !self.claims {
            return Ok(());
        }
        if self.used.get(page) {
            return Err(corrupt(
                Some(page),
                format!("{what}: the page is reached twice (a loop, or a page in two places)"),
            ));
        }
        if self.free.get(page) {
            return Err(corrupt(Some(page), format!("{what}: the page is in use and listed free")));
        }
        self.used.set(page);
        self.used_pages += 1;
        Ok(())
    }

    /// A page number that is neither a meta page nor past the snapshot's or the file's end.
    fn in_range(&self, page: u64, what: &str) -> Result<(), Error> {
        if page < META_PAGES || page > self.last_page {
            return Err(corrupt(
                Some(page),
                format!("{what}: page number outside pages 2..={}", self.last_page),
            ));
        }
        if page >= self.pages.file_pages {
            return Err(corrupt(
                Some(page),
                format!(
                    "{what}: the page is in use but the file ends before it, after {} pages (it was cut short)",
                    self.pages.file_pages
                ),
            ));
        }
        Ok(())
    }

    fn mark_free(&mut self, page: u64) -> Result<(), Error> {
        if page < META_PAGES || page > self.last_page {
            return Err(corrupt(
                Some(page),
                format!("free list: page number outside pages 2..={}", self.last_page),
            ));
        }
        if page >= self.pages.file_pages {
            self.free_tail.push(page);
        } else if self.free.get(page) {
            return Err(corrupt(Some(page), "free list: the page is listed free twice"));
        } else if self.used.get(page) {
            return Err(corrupt(Some(page), "free list: the page is in use and listed free"));
        } else {
            self.free.set(page);
        }
        self.free_pages += 1;
        Ok(())
    }

    /// LMDB writes pages only when a commit fills them, so the file may end before the
    /// snapshot's last page, but only where every page is free (`mdb_env_copyfd0` relies on
    /// this too). A page in use past the end would fault when read through the map.
    fn check_tail(&mut self) -> Result<(), Error> {
        self.free_tail.sort_unstable();
        if let Some(w) = self.free_tail.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(Some(w[0]), "free list: the page is listed free twice"));
        }
        let tail = (self.last_page + 1).saturating_sub(self.pages.file_pages);
        if (self.free_tail.len() as u64) < tail {
            let missing = (self.pages.file_pages..=self.last_page)
                .zip(self.free_tail.iter().copied().chain(std::iter::repeat(u64::MAX)))
                .find(|(page, free)| page != free)
                .map(|(page, _)| page);
            return Err(corrupt(
                missing,
                format!(
                    "data.mdb ends after {} pages, but the last commit uses pages up to {}: the file was cut short",
                    self.pages.file_pages, self.last_page
                ),
            ));
        }
        Ok(())
    }

    /// Every page but the meta pages is either in use or free, exactly once.
    fn check_accounted(&self) -> Result<(), Error> {
        let accounted = META_PAGES + self.used_pages + self.free_pages;
        if accounted == self.last_page + 1 {
            return Ok(());
        }
        let lost = (META_PAGES..self.pages.file_pages.min(self.last_page + 1))
            .find(|&p| !self.used.get(p) && !self.free.get(p));
        Err(corrupt(
            lost,
            format!(
                "{} of the last commit's {} pages are neither in use nor listed free: part of a tree or of the free list is lost",
                (self.last_page + 1).saturating_sub(accounted),
                self.last_page + 1
            ),
        ))
    }

    /// Walks the tree `db` as far as `reach`; with [`Reach::All`], checks its record's counts.
    fn tree(&mut self, name: &str, db: Db, kind: Kind, reach: Reach) -> Result<Counts, Error> {
        if db.root == NO_PAGE {
            return Ok(Counts::default());
        }
        if kind != Kind::Free && db.flags & DUP_FLAGS != 0 {
            return Err(corrupt(
                Some(db.root),
                format!(
                    "{name}: it holds sorted duplicates (flags {:#x}), which no table of a store has and this check does not read",
                    db.flags
                ),
            ));
        }
        let order = if kind == Kind::Free { Order::Integer } else { Order::of(db.flags) };
        let tree = Tree { name, db, kind, order, reach };
        let mut counts = Counts::default();
        self.visit(&tree, &mut counts, db.root, 1, None, None)?;
        if reach == Reach::All {
            let found = (counts.branch, counts.leaf, counts.overflow, counts.entries);
            let recorded = (db.branch, db.leaf, db.overflow, db.entries);
            if found != recorded {
                return Err(corrupt(
                    Some(db.root),
                    format!(
                        "{name}: its pages hold {found:?} (branch pages, leaf pages, overflow pages, entries), its record says {recorded:?}"
                    ),
                ));
            }
        }
        Ok(counts)
    }

    /// Page `page` of `tree`, at depth `level` (the root is 1), whose keys must lie in
    /// `low..high` as its parents' separators bound them.
    fn visit(
        &mut self,
        tree: &Tree<'_>,
        counts: &mut Counts,
        page: u64,
        level: u16,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
    ) -> Result<(), Error> {
        self.claim(page, tree.name)?;
        let at = usize::from(level);
        if self.buffers.len() <= at {
            self.buffers.resize_with(at + 1, Vec::new);
        }
        let mut buf = std::mem::take(&mut self.buffers[at]);
        buf.resize(self.pages.page_size, 0);
        let result = self
            .pages
            .read(page, &mut buf)
            .and_then(|()| self.visit_page(tree, counts, page, level, low, high, &buf));
        self.buffers[at] = buf;
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn visit_page(
        &mut self,
        tree: &Tree<'_>,
        counts: &mut Counts,
        page: u64,
        level: u16,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let name = tree.name;
        let bad = |reason: String| Err(corrupt(Some(page), format!("{name}: {reason}")));
        let leaf = level == tree.db.depth;
        let nodes = Self::nodes(tree, page, bytes, level)?;
        if leaf {
            counts.leaf += 1;
        } else {
            counts.branch += 1;
        }
        // Keys in order, inside the bounds the parents set. A branch page's first key is
        // never compared (LMDB leaves it empty or stale). Not for a root alone, before open:
        // out of order, the keys of a table opening does not read mislead a search without
        // making LMDB read outside a page, and the reads check every entry they find.
        let cmp = |a: &[u8], b: &[u8]| tree.order.cmp(a, b);
        let first = if tree.reach == Reach::Root { nodes.len() } else { usize::from(!leaf) };
        let mut previous: Option<&[u8]> = None;
        for (i, node) in nodes.iter().enumerate().skip(first) {
            let key = &bytes[node.key.clone()];
            if key.is_empty() {
                return bad(format!("entry {i} has an empty key"));
            }
            let after = match previous {
                Some(p) => cmp(p, key) == Some(Ordering::Less),
                None => low.is_none_or(|l| matches!(cmp(l, key), Some(Ordering::Less | Ordering::Equal))),
            };
            let in_order = after && high.is_none_or(|h| cmp(key, h) == Some(Ordering::Less));
            if !in_order {
                return bad(format!("key {i} is out of order (or not a key of this table)"));
            }
            previous = Some(key);
        }
        if leaf {
            for (i, node) in nodes.iter().enumerate() {
                counts.entries += 1;
                self.leaf_node(tree, counts, page, i, node, bytes)?;
            }
            return Ok(());
        }
        let key = |i: usize| nodes.get(i).map(|n| &bytes[n.key.clone()]);
        let visit_from = match tree.reach {
            Reach::All => 0,
            Reach::Last => nodes.len() - 1,
            Reach::Root => nodes.len(),
        };
        for (i, node) in nodes.iter().enumerate() {
            let child = node.child();
            if i < visit_from {
                self.in_range(child, name)?;
                if self.free.get(child) {
                    return Err(corrupt(Some(child), format!("{name}: the page is in use and listed free")));
                }
                continue;
            }
            let low = if i == 0 { low } else { key(i) };
            let high = if i + 1 < nodes.len() { key(i + 1) } else { high };
            self.visit(tree, counts, child, level + 1, low, high)?;
        }
        Ok(())
    }

    /// The nodes of a page, each checked to lie inside it, the page's header checked for its
    /// place in the tree.
    fn nodes(tree: &Tree<'_>, page: u64, bytes: &[u8], level: u16) -> Result<Vec<Node>, Error> {
        let name = tree.name;
        let (leaf, root) = (level == tree.db.depth, level == 1);
        let bad = |reason: String| Err(corrupt(Some(page), format!("{name}: {reason}")));
        let header_page = word_at(bytes, 0);
        if header_page != page {
            return bad(format!(
                "the page's header says page {header_page}: it is misplaced or its header damaged"
            ));
        }
        let flags = u16_at(bytes, WORD + 2);
        let (want, kind) = if leaf { (P_LEAF, "leaf") } else { (P_BRANCH, "branch") };
        if flags != want {
            let what =
                if flags & P_LEAF2 != 0 { " (packed duplicates, which no table of a store has)" } else { "" };
            return bad(format!(
                "header flags {flags:#x}{what}, where depth {level} of {} needs a {kind} page",
                tree.db.depth
            ));
        }
        let size = bytes.len();
        let lower = usize::from(u16_at(bytes, WORD + 4));
        let upper = usize::from(u16_at(bytes, WORD + 6));
        if lower < PAGE_HEADER || !(lower - PAGE_HEADER).is_multiple_of(2) || lower > upper || upper > size {
            return bad(format!("free-space bounds {lower}..{upper} do not fit a page of {size} bytes"));
        }
        let count = (lower - PAGE_HEADER) / 2;
        if count == 0 && !(leaf && root) {
            return bad("the page has no entries".into());
        }
        let mut nodes = Vec::with_capacity(count);
        let mut extents = Vec::with_capacity(count);
        for i in 0..count {
            let at = usize::from(u16_at(bytes, PAGE_HEADER + 2 * i));
            if at < upper || !at.is_multiple_of(2) || at + NODE_HEADER > size {
                return bad(format!(
                    "entry {i} starts at offset {at}, outside the page's entries {upper}..{size}"
                ));
            }
            let size_field = u32::from(u16_at(bytes, at)) | u32::from(u16_at(bytes, at + 2)) << 16;
            let node_flags = u16_at(bytes, at + 4);
            let key_len = usize::from(u16_at(bytes, at + 6));
            let data_len = match (leaf, node_flags & F_BIGDATA != 0) {
                (false, _) => 0,
                (true, true) => WORD as u64,
                (true, false) => u64::from(size_field),
            };
            let key_start = at + NODE_HEADER;
            let end = key_start as u64 + key_len as u64 + data_len;
            // Nodes are kept at even offsets, each taking an even number of bytes.
            let taken = end + (end - at as u64) % 2;
            if taken > size as u64 {
                return bad(format!(
                    "entry {i} ({key_len}-byte key, {data_len}-byte data) ends past the page"
                ));
            }
            let data_start = key_start + key_len;
            extents.push((at, taken as usize));
            nodes.push(Node {
                flags: node_flags,
                size: size_field,
                key: key_start..data_start,
                data: data_start..end as usize,
            });
        }
        // LMDB keeps a page's nodes packed from `upper` to its end: any gap or overlap is
        // damage to an offset, a size or the bounds.
        extents.sort_unstable();
        let mut next = upper;
        for &(start, end) in &extents {
            if start != next {
                return bad(format!(
                    "entries overlap or leave a gap at offset {next} (the page's entries are {upper}..{size})"
                ));
            }
            next = end;
        }
        if next != size {
            return bad(format!("the entries end at offset {next}, not at the page's end {size}"));
        }
        Ok(nodes)
    }

    fn leaf_node(
        &mut self,
        tree: &Tree<'_>,
        counts: &mut Counts,
        page: u64,
        i: usize,
        node: &Node,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let name = tree.name;
        let bad = |reason: String| Err(corrupt(Some(page), format!("{name}: entry {i}: {reason}")));
        let data = &bytes[node.data.clone()];
        let big = node.flags & F_BIGDATA != 0;
        match tree.kind {
            Kind::Main if node.flags == F_SUBDATA => {
                if data.len() != DB_LEN {
                    return bad(format!("a table's record is {} bytes, not {DB_LEN}", data.len()));
                }
                let db = Db::parse(data);
                let table = format!("table `{}`", String::from_utf8_lossy(&bytes[node.key.clone()]));
                if db.flags & !TABLE_FLAGS != 0 {
                    return bad(format!("{table} has flags {:#x}, which are not LMDB's", db.flags));
                }
                db.check(self.last_page, &table, Some(page))?;
                self.tables.push((bytes[node.key.clone()].to_vec(), db));
                return Ok(());
            }
            _ if node.flags & !F_BIGDATA != 0 => {
                return bad(format!(
                    "node flags {:#x}: a sub-table or duplicates, which no table of a store holds",
                    node.flags
                ));
            }
            _ => {}
        }
        let overflow = if big {
            let first = word_at(data, 0);
            Some((first, self.overflow(tree, counts, page, i, first, node.size)?))
        } else {
            None
        };
        if tree.kind != Kind::Free {
            return Ok(());
        }
        let key = &bytes[node.key.clone()];
        if key.len() != WORD {
            return bad(format!("a free-list key of {} bytes, not a {WORD}-byte transaction id", key.len()));
        }
        let id = word_at(key, 0);
        if id == 0 || id > self.txnid {
            return bad(format!("a free-list record of transaction {id}, outside 1..={}", self.txnid));
        }
        self.last_free_key = Some(id);
        if !self.claims {
            return Ok(());
        }
        match overflow {
            None => self.free_list(page, i, node.size, &mut [data].into_iter().map(Ok)),
            Some((first, _)) => {
                let start = self.pages.offset(first) + PAGE_HEADER as u64;
                let len = u64::from(node.size);
                let pages = self.pages;
                let mut buf = vec![0; CHUNK.min(node.size as usize)];
                let mut done = 0u64;
                let mut chunks = std::iter::from_fn(|| {
                    if done >= len {
                        return None;
                    }
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let read = read_full(pages.file, &mut buf[..n], start + done);
                    done += n as u64;
                    Some(match read {
                        Ok(r) if r == n => Ok(buf[..n].to_vec()),
                        Ok(_) => {
                            Err(corrupt(Some(first), "free list: the file ends inside an overflow page"))
                        }
                        Err(e) => Err(e),
                    })
                });
                self.free_list(page, i, node.size, &mut chunks)
            }
        }
    }

    /// A free-list record: a count, then that many page numbers, in `size` bytes (LMDB may
    /// reserve more room than the count needs).
    fn free_list<B: AsRef<[u8]>>(
        &mut self,
        page: u64,
        i: usize,
        size: u32,
        chunks: &mut dyn Iterator<Item = Result<B, Error>>,
    ) -> Result<(), Error> {
        let size = size as usize;
        if size < WORD || !size.is_multiple_of(WORD) {
            return Err(corrupt(Some(page), format!("free list: entry {i}: a record of {size} bytes")));
        }
        let mut count: Option<u64> = None;
        let mut left = 0u64;
        for chunk in chunks {
            let chunk = chunk?;
            for word in chunk.as_ref().chunks_exact(WORD) {
                let value = word_at(word, 0);
                match count {
                    None => {
                        if value
                            .checked_add(1)
                            .and_then(|n| n.checked_mul(WORD as u64))
                            .is_none_or(|n| n > size as u64)
                        {
                            return Err(corrupt(
                                Some(page),
                                format!(
                                    "free list: entry {i}: {value} page numbers do not fit its {size} bytes"
                                ),
                            ));
                        }
                        count = Some(value);
                        left = value;
                    }
                    Some(_) if left == 0 => return Ok(()),
                    Some(_) => {
                        self.mark_free(value)?;
                        left -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// An overflow run holding a value of `len` bytes from page `first`: in range, of the
    /// right kind and long enough. Returns its length in pages.
    fn overflow(
        &mut self,
        tree: &Tree<'_>,
        counts: &mut Counts,
        page: u64,
        i: usize,
        first: u64,
        len: u32,
    ) -> Result<u64, Error> {
        let what = format!("{}: overflow pages of entry {i} of page {page}", tree.name);
        self.in_range(first, &what)?;
        let mut header = [0u8; PAGE_HEADER];
        self.pages.read(first, &mut header)?;
        let header_page = word_at(&header, 0);
        let flags = u16_at(&header, WORD + 2);
        let run = u64::from(u32_at(&header, WORD + 4));
        let needed = (PAGE_HEADER as u64 - 1 + u64::from(len)) / self.pages.page_size as u64 + 1;
        if header_page != first || flags != P_OVERFLOW {
            return Err(corrupt(
                Some(first),
                format!(
                    "{what}: the header says page {header_page} with flags {flags:#x}, not an overflow page"
                ),
            ));
        }
        if run < needed {
            return Err(corrupt(Some(first), format!("{what}: {run} pages cannot hold {len} bytes")));
        }
        let end = first.saturating_add(run);
        if end > self.last_page + 1 || end > self.pages.file_pages {
            return Err(corrupt(
                Some(first),
                format!("{what}: {run} pages run past the end of the last commit or of the file"),
            ));
        }
        for p in first..end {
            self.claim(p, &what)?;
        }
        counts.overflow += run;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64, txnid: u64, last_page: u64, rooted: bool) -> Meta {
        let empty = Db { flags: 0, depth: 0, branch: 0, leaf: 0, overflow: 0, entries: 0, root: NO_PAGE };
        let main = if rooted { Db { depth: 1, leaf: 1, entries: 1, root: 2, ..empty } } else { empty };
        Meta { index, page_size: 4096, free: Db { flags: INTEGERKEY, ..empty }, main, last_page, txnid }
    }

    #[test]
    fn meta_pairs_are_those_lmdb_writes() {
        // A new file, a first commit, later commits in either order, a compacted copy.
        for metas in [
            [meta(0, 0, 1, false), meta(1, 0, 1, false)],
            [meta(0, 0, 1, false), meta(1, 1, 2, true)],
            [meta(0, 8, 9, true), meta(1, 7, 9, true)],
            [meta(0, 8, 9, true), meta(1, 9, 12, true)],
        ] {
            let (newest, _) = pair(&metas).unwrap();
            assert_eq!(newest.txnid, metas.iter().map(|m| m.txnid).max().unwrap());
        }
        // Ids apart by more than one, an id that would pick the older snapshot, a new file
        // with tables, a newer meta page that ends the file earlier.
        for metas in [
            [meta(0, 8, 9, true), meta(1, 41, 9, true)],
            [meta(0, 8, 9, true), meta(1, 3, 9, true)],
            [meta(0, 0, 1, false), meta(1, 0, 2, true)],
            [meta(0, 8, 9, true), meta(1, 9, 8, true)],
        ] {
            assert!(matches!(pair(&metas), Err(Error::CorruptFile { .. })), "{metas:?}");
        }
    }

    #[test]
    fn integer_keys_compare_as_numbers() {
        let (a, b) = (256u64.to_ne_bytes(), 1u64.to_ne_bytes());
        assert_eq!(Order::Integer.cmp(&a, &b), Some(Ordering::Greater));
        assert_eq!(Order::Integer.cmp(&a, &[1, 2, 3]), None);
        assert_eq!(Order::Reverse.cmp(&[1, 2], &[2, 1]), Some(Ordering::Greater));
        assert_eq!(Order::Bytes.cmp(&[1], &[1, 0]), Some(Ordering::Less));
    }

    /// Run by hand on a large store's directory:
    /// `VARVEDB_LMDB_FILE_MEASURE=<dir> cargo test --release -p varvedb --lib measure -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn measure_check_before_open() {
        let Some(dir) = std::env::var_os("VARVEDB_LMDB_FILE_MEASURE") else {
            return;
        };
        let dir = Path::new(&dir);
        let runs = 1000;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            check_before_open(dir, &["meta"], &["events"]).unwrap();
        }
        println!("check before open: {:?} per run", start.elapsed() / runs);
    }

    #[test]
    fn bits_ignore_pages_past_their_end() {
        let mut bits = Bits::new(70);
        bits.set(69);
        bits.set(1 << 40);
        assert!(bits.get(69) && !bits.get(68) && !bits.get(1 << 40));
    }
}
