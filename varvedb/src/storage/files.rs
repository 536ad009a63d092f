//! The store's directory and the files in it besides LMDB's pages: creating the directory,
//! one open per process, the all-or-nothing creation of `data.mdb`, the removal of what
//! abandoned creations left, and `lock.mdb`, which gets its disk blocks before LMDB maps it
//! and is read for the reader table.
//!
//! The calls `std` does not offer are in the parent module (`sys`), the only place of the
//! storage layer with `unsafe` code.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::{ReaderLag, canonical, io_error, sync_dir, sys};
use crate::error::Error;

const DATA_FILE: &str = "data.mdb";
const LOCK_FILE: &str = "lock.mdb";
/// The start of the names of files and directories being built in a store's directory (or
/// left there by a process that died while building them).
const TEMP_PREFIX: &str = ".varvedb-tmp-";
/// The permissions LMDB (through heed) gives the files it creates.
const FILE_MODE: u32 = 0o600;

/// Creates a store's (or a backup's) directory if it does not exist, durably: each directory
/// that gains an entry is synced. A path that names something other than a directory (or
/// lies below a file) is [`Error::NotADirectory`].
pub(crate) fn prepare_dir(path: &Path) -> Result<(), Error> {
    let not_a_directory = || Error::NotADirectory { path: path.to_path_buf() };
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(not_a_directory()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Err(not_a_directory()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Io(e)),
    }
    let missing: Vec<&Path> =
        path.ancestors().take_while(|p| !p.as_os_str().is_empty() && !p.exists()).collect();
    let existing = path.ancestors().find(|p| p.exists()).map_or(Path::new("."), |p| p);
    match fs::create_dir_all(path) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::AlreadyExists | io::ErrorKind::NotADirectory) => {
            return Err(not_a_directory());
        }
        Err(e) => return Err(io_error(e, existing)),
    }
    // A new directory's name is an entry of its parent: synced, or a crash could lose the
    // directory with every event committed in it.
    for dir in missing {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent).map_err(|e| io_error(e, parent))?;
    }
    Ok(())
}

/// Whether the store's directory holds `data.mdb`.
pub(super) fn has_data_file(dir: &Path) -> Result<bool, Error> {
    dir.join(DATA_FILE).try_exists().map_err(Error::Io)
}

/// Directories this process has a store open in, by device and inode.
static CLAIMED: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());

/// This process's claim on a store directory: one open at a time. A second open would open
/// and close descriptors of `lock.mdb` of its own, and closing any descriptor of a file
/// drops every fcntl lock the process holds on it, those of the first open's LMDB
/// environment included. Keyed by device and inode, so that another path to the same
/// directory (a symlink, a bind mount) is the same store.
pub(super) struct Claim {
    key: (u64, u64),
}

impl Claim {
    pub(super) fn take(dir: &Path) -> Result<Claim, Error> {
        let meta = fs::metadata(dir)?;
        let key = (meta.dev(), meta.ino());
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if !claimed.insert(key) {
            return Err(Error::AlreadyOpen { path: canonical(dir) });
        }
        Ok(Claim { key })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMED.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// An exclusive `flock` on the store's directory, held while a file is built and linked
/// into it, and while what abandoned builds left is removed. Released when dropped. `None`
/// when `wait` is false and another holds it.
fn lock_dir(dir: &Path, wait: bool) -> io::Result<Option<File>> {
    let handle = File::open(dir)?;
    if wait {
        handle.lock()?;
        return Ok(Some(handle));
    }
    match handle.try_lock() {
        Ok(()) => Ok(Some(handle)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Byte of `lock.mdb` that every process using the store with `Durability::Relaxed` holds
/// shared; [`IMMEDIATE_BYTE`], every other process writing to it.
const RELAXED_BYTE: i64 = 1 << 40;
const IMMEDIATE_BYTE: i64 = RELAXED_BYTE + 1;

/// Removes what builds of processes that died left in `dir`, unless a build is under way
/// (its process holds the directory's lock). Best effort: what cannot be removed now is
/// tried again at the next open.
pub(super) fn remove_abandoned(dir: &Path) {
    if temp_entries(dir).is_empty() {
        return;
    }
    if let Ok(Some(_lock)) = lock_dir(dir, false) {
        remove_temp_entries(dir);
    }
}

fn temp_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()))
        .map(|e| e.path())
        .collect()
}

/// Removes every temporary entry of `dir`. Only with the directory's lock held: then none
/// of them belongs to a build under way.
fn remove_temp_entries(dir: &Path) {
    for path in temp_entries(dir) {
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        drop(if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) });
    }
}

/// A file or directory being built in a store's directory, removed when dropped (its
/// contents too, once linked elsewhere under another name).
struct TempEntry {
    path: PathBuf,
}

impl TempEntry {
    fn name(dir: &Path) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn dir(dir: &Path) -> io::Result<TempEntry> {
        let path = Self::name(dir);
        fs::create_dir(&path)?;
        Ok(TempEntry { path })
    }

    fn file(dir: &Path) -> io::Result<(TempEntry, File)> {
        let path = Self::name(dir);
        let file = File::options().read(true).write(true).create_new(true).mode(FILE_MODE).open(&path)?;
        Ok((TempEntry { path }, file))
    }
}

impl Drop for TempEntry {
    fn drop(&mut self) {
        // Gone already if it was renamed into place.
        drop(if self.path.is_dir() { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) });
    }
}

/// Replaces `dir/data.mdb` with the file `copy` writes (and syncs) at the path it is given,
/// while no process has the store open, and then overwrites the replaced file's bytes.
///
/// Exclusive use: this process's claim on the directory, the directory's lock (no creation
/// or clean-up runs meanwhile), and a write lock on the first byte of `lock.mdb`, where LMDB
/// in every process that has the store open holds a shared lock, and which an LMDB opening
/// the store waits for. Crash safety: the copy is built in a private directory and given the
/// name `data.mdb` by one `rename`, after it is synced; a process that dies before the rename
/// leaves the old file in place and the private directory for the next open to remove, one
/// that dies after it leaves the copy. The old file is overwritten only once the directory
/// that names the copy is synced.
pub(super) fn replace_data_file(
    dir: &Path,
    copy: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let io = |e| io_error(e, dir);
    let in_use = || Error::StoreInUse { path: canonical(dir) };
    let _claim = Claim::take(dir).map_err(|e| match e {
        Error::AlreadyOpen { .. } => in_use(),
        other => other,
    })?;
    let _lock = lock_dir(dir, true).map_err(io)?;
    let lock_file = match File::options().read(true).write(true).open(dir.join(LOCK_FILE)) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if let Some(file) = &lock_file
        && !sys::lock_first_byte(file, true).map_err(io)?
    {
        return Err(in_use());
    }
    remove_temp_entries(dir);
    let build_dir = TempEntry::dir(dir).map_err(io)?;
    let new_file = build_dir.path.join(DATA_FILE);
    copy(&new_file)?;
    let live = dir.join(DATA_FILE);
    let old = File::options().read(true).write(true).open(&live).map_err(io)?;
    fs::rename(&new_file, &live).map_err(io)?;
    sync_dir(dir).map_err(io)?;
    // The old file has no name any more; its bytes would linger in the blocks the
    // filesystem frees. Overwritten in place, where the filesystem writes in place.
    let len = old.metadata().map_err(io)?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        old.write_all_at(&zeros[..n], at).map_err(io)?;
        at += n as u64;
    }
    old.sync_all().map_err(io)?;
    // Closing `lock_file` releases the lock on its first byte: openers waiting for it go on.
    drop(lock_file);
    Ok(())
}

/// Creates `data.mdb` in `dir` whole or not at all. `build` makes it in a private directory
/// inside `dir`; the file is synced, linked into place under its name (never replacing one
/// that appeared meanwhile), and the directory synced. A process that dies on the way
/// leaves only the private directory, which a later open removes: never a `data.mdb` that
/// was cut short. Creations by other processes wait for this one (the directory's lock).
pub(super) fn create_data_file(
    dir: &Path,
    build: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let io = |e| io_error(e, dir);
    let _lock = lock_dir(dir, true).map_err(io)?;
    if has_data_file(dir)? {
        // Created by another process while this one waited.
        return Ok(());
    }
    // With the lock held, every temporary entry is abandoned.
    remove_temp_entries(dir);
    let build_dir = TempEntry::dir(dir).map_err(io)?;
    build(&build_dir.path)?;
    let new_file = build_dir.path.join(DATA_FILE);
    File::open(&new_file).and_then(|f| f.sync_all()).map_err(io)?;
    match sys::link_no_replace(&new_file, &dir.join(DATA_FILE)) {
        Ok(()) => {}
        // Made meanwhile by a program that does not take the lock: that one stands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    sync_dir(dir).map_err(io)
}

/// A reader slot of LMDB's lock file: a cache line.
const SLOT: u64 = 64;

/// Where LMDB keeps what this module reads in its lock file (`MDB_txninfo` in mdb.c), for
/// the kind of lock this platform's LMDB is built with.
struct Layout {
    /// The id of the last committed transaction (`mti_txnid`).
    last_txnid: u64,
    /// How many slots have ever been used (`mti_numreaders`).
    used_slots: u64,
    /// The first reader slot (`mti_readers`); the header is the rest.
    slots: u64,
}

/// `size_t`, the width of LMDB's transaction ids.
const WORD: u64 = size_of::<usize>() as u64;

fn layout() -> Layout {
    let round = |n: u64| n.next_multiple_of(64);
    // `mti_magic` and `mti_format` (u32 each), then the last transaction id.
    let last_txnid = 8u64.next_multiple_of(WORD);
    let used_slots = last_txnid + WORD;
    // The header's first cache line ends with the reader mutex (or System V semaphore
    // fields); the second holds the writer mutex (or its semaphore's flag).
    #[cfg(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    let (first_end, second) = (used_slots + 4 + 2 * 4, 4);
    #[cfg(not(any(
        target_os = "macos",
        target_os = "ios",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    )))]
    let (first_end, second) = {
        let mutex = size_of::<libc::pthread_mutex_t>() as u64;
        ((used_slots + 4).next_multiple_of(align_of::<libc::pthread_mutex_t>() as u64) + mutex, mutex)
    };
    Layout { last_txnid, used_slots, slots: round(first_end) + round(second) }
}

/// The size LMDB gives a new lock file for `max_readers` readers (`mdb_env_setup_locks`):
/// the header, then a slot per reader.
pub(super) fn lock_file_size(max_readers: u32) -> u64 {
    layout().slots + u64::from(max_readers.max(1)) * SLOT
}

/// `lock.mdb`, opened before LMDB opens it and kept open until LMDB has closed it (see the
/// field order of `Storage`).
pub(super) struct LockFile {
    file: File,
}

impl LockFile {
    /// Opens `lock.mdb` in `dir`, after making sure that every page of it LMDB will map has
    /// disk blocks. LMDB writes its reader table through a shared memory map, and a write to
    /// a page that has no blocks, on a full disk, kills the process (SIGBUS) instead of
    /// failing; allocated here, a full disk is [`Error::DiskFull`] at open instead.
    ///
    /// A missing file is made at `size` bytes (LMDB's size for the readers asked for) under
    /// a temporary name, and linked into place. An existing file smaller than that is grown
    /// only while no other process uses it, as LMDB would grow it then (without blocks);
    /// otherwise LMDB keeps its size, and the holes within that size get blocks.
    /// Whether a process other than this one has an LMDB environment open on this lock
    /// file (see [`sys::first_byte_locked_elsewhere`]).
    pub(super) fn used_elsewhere(&self) -> io::Result<bool> {
        sys::first_byte_locked_elsewhere(&self.file)
    }

    /// Takes this descriptor's `flock` on the lock file (independent of LMDB's `fcntl`
    /// locks on it), held by an open for writing until it returns: it may roll the store
    /// back to a checkpoint, remove the checkpoints, and make its first one; another open for
    /// writing waits, and never maps a file being rolled back. Released by
    /// [`LockFile::end_open`], or when the descriptor closes.
    pub(super) fn begin_open(&self) -> io::Result<()> {
        self.file.lock()
    }

    /// Releases the lock of [`LockFile::begin_open`].
    pub(super) fn end_open(&self) -> io::Result<()> {
        self.file.unlock()
    }

    /// Marks this process's use of the store as relaxed or not (a shared lock on a byte of
    /// the lock file far past LMDB's, whose reader locks sit at offsets that are process
    /// ids), and tells whether another process uses it the other way. Relaxed commits are
    /// not flushed, and a power loss takes the store back to their last checkpoint: an
    /// immediate commit of another process made after that checkpoint would be lost with
    /// them. Asked under [`LockFile::begin_open`]'s lock, so that two opens cannot both find
    /// the other way free.
    pub(super) fn mark_durability(&self, relaxed: bool) -> io::Result<bool> {
        let (mine, other) =
            if relaxed { (RELAXED_BYTE, IMMEDIATE_BYTE) } else { (IMMEDIATE_BYTE, RELAXED_BYTE) };
        sys::lock_byte_shared(&self.file, mine)?;
        sys::byte_locked_elsewhere(&self.file, other)
    }

    /// Whether another process has the store open for writing with `Durability::Relaxed`
    /// (the byte of [`LockFile::mark_durability`]). Only such a process keeps checkpoints
    /// pinned; a read-only or immediate one keeps none.
    pub(super) fn relaxed_elsewhere(&self) -> io::Result<bool> {
        sys::byte_locked_elsewhere(&self.file, RELAXED_BYTE)
    }

    pub(super) fn open_backed(dir: &Path, size: u64) -> Result<LockFile, Error> {
        let io = |e| io_error(e, dir);
        let path = dir.join(LOCK_FILE);
        loop {
            match File::options().read(true).write(true).open(&path) {
                Ok(file) => return back_existing(&file, size).map(|()| LockFile { file }).map_err(io),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            if let Some(file) = create_backed(dir, &path, size).map_err(io)? {
                return Ok(LockFile { file });
            }
            // Another process made it meanwhile: open that one.
        }
    }

    /// The oldest reader in the reader table, and how many commits it is behind the last.
    /// Slots of processes that died count until LMDB clears them.
    /// `skip`: the transaction ids of this process's checkpoint pins (0: none), reader
    /// slots of the store's own and no read views (one slot at each is passed over).
    pub(super) fn oldest_reader(&self, mut skip: [u64; 2]) -> io::Result<Option<ReaderLag>> {
        let layout = layout();
        // LMDB stores each slot's fields as whole aligned words, but a read through the
        // page cache is a copy, which may see a word half written: a slot counts only when
        // two reads agree on it.
        let (last_a, a) = self.read_table(&layout)?;
        let (last_b, b) = self.read_table(&layout)?;
        let last = last_a.max(last_b);
        let mut oldest: Option<(u64, u32)> = None;
        for (x, y) in a.chunks_exact(SLOT as usize).zip(b.chunks_exact(SLOT as usize)) {
            let fields = WORD as usize + 4;
            if x[..fields] != y[..fields] {
                continue;
            }
            let (txnid, pid) = slot(x);
            // A free slot has no process; an idle one (kept by a thread between
            // transactions) has the all-ones transaction id.
            if pid == 0 || txnid == u64::MAX >> (64 - 8 * WORD) {
                continue;
            }
            if let Some(pin) = skip.iter_mut().find(|s| **s != 0 && **s == txnid)
                && u32::try_from(pid).is_ok_and(|p| p == std::process::id())
            {
                *pin = 0;
                continue;
            }
            if oldest.is_none_or(|(t, _)| txnid < t) {
                oldest = Some((txnid, u32::try_from(pid).unwrap_or(0)));
            }
        }
        Ok(oldest.map(|(txnid, pid)| ReaderLag { commits: last.saturating_sub(txnid), pid }))
    }

    /// The last committed transaction id and the bytes of the slots ever used.
    fn read_table(&self, layout: &Layout) -> io::Result<(u64, Vec<u8>)> {
        let mut header = vec![0u8; usize::try_from(layout.slots).map_err(|_| io::ErrorKind::InvalidData)?];
        self.file.read_exact_at(&mut header, 0)?;
        let word = |at: u64| read_word(&header[at as usize..]);
        let last = word(layout.last_txnid);
        let at = layout.used_slots as usize;
        let used = u64::from(u32::from_ne_bytes(header[at..at + 4].try_into().unwrap_or_default()));
        let room = self.file.metadata()?.len().saturating_sub(layout.slots) / SLOT;
        let mut slots = vec![0u8; (used.min(room) * SLOT) as usize];
        self.file.read_exact_at(&mut slots, layout.slots)?;
        Ok((last, slots))
    }
}

/// A reader slot's transaction id and process id (`MDB_rxbody`).
fn slot(bytes: &[u8]) -> (u64, i32) {
    let at = WORD as usize;
    (read_word(bytes), i32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default()))
}

/// A `size_t` of the lock file, in this machine's byte order.
fn read_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = WORD as usize;
    if cfg!(target_endian = "little") {
        word[..n].copy_from_slice(&bytes[..n]);
        u64::from_le_bytes(word)
    } else {
        word[8 - n..].copy_from_slice(&bytes[..n]);
        u64::from_be_bytes(word)
    }
}

/// Makes `lock.mdb` at `path` whole, unless it appeared meanwhile (`None`).
fn create_backed(dir: &Path, path: &Path, size: u64) -> io::Result<Option<File>> {
    let _lock = lock_dir(dir, true)?;
    if path.try_exists()? {
        return Ok(None);
    }
    let (temp, file) = TempEntry::file(dir)?;
    // Nobody else knows this file yet: where blocks cannot be allocated, zeros (LMDB's
    // content of a new lock file) are written instead.
    allocate(&file, 0, size, true)?;
    match sys::link_no_replace(&temp.path, path) {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives an existing lock file blocks (see [`LockFile::open_backed`]).
fn back_existing(file: &File, size: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    // The lock LMDB takes to learn that no other process uses the file. Held while the file
    // grows, so that no process maps it meanwhile. This process holds no lock on the file
    // (its `Claim`), so the lock is free exactly when no other process uses the file.
    if len < size && sys::lock_first_byte(file, true)? {
        let grown = allocate(file, 0, len, false).and_then(|()| allocate(file, len, size - len, true));
        let unlocked = sys::lock_first_byte(file, false);
        grown?;
        unlocked?;
        return Ok(());
    }
    allocate(file, 0, len, false)
}

/// Allocates blocks for `offset..offset + len` of `file`. Where the filesystem cannot,
/// zeros are written instead if `may_write` (the range is past the end of the file, or no
/// other process knows the file), and otherwise the range is left as it is.
fn allocate(file: &File, offset: u64, len: u64, may_write: bool) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match sys::allocate(file, offset, len) {
        Err(e) if e.kind() == io::ErrorKind::Unsupported && may_write => {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64);
                file.write_all_at(&zeros[..n as usize], at)?;
                at += n;
            }
            file.sync_data()
        }
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
        other => other,
    }
}
