//! Checkpoints of a store whose commits are not flushed (`Durability::Relaxed`).
//!
//! A relaxed handle opens LMDB with `MDB_NOSYNC`: a commit writes its pages and its meta page
//! into the page cache and returns. The kernel writes them back in any order, so after a
//! power loss a meta page may name pages that never reached the disk. What makes such a
//! store whole again is a *checkpoint*: a snapshot known durable, with a copy of its meta
//! page kept in a file of its own, `checkpoint`, and its pages kept from reuse until the next
//! checkpoint is durable.
//!
//! A checkpoint of snapshot `s` is made in this order (`Storage::checkpoint`):
//! 1. under LMDB's write lock, a read transaction begins on `s` (the *pin*), and `s`'s meta
//!    page is copied from the file; no commit can write a meta page meanwhile;
//! 2. `data.mdb` is flushed: every page of `s` was written before, so `s` is durable;
//! 3. an entry (transaction id, `data.mdb`'s inode, the boot id, the meta page) is written
//!    into the older of this file's two slots and flushed;
//! 4. the previous pin ends.
//!
//! With no reader slot left for a new pin, the previous pin stays (it keeps `s`'s pages too)
//! and the entry is written all the same.
//!
//! LMDB reuses a page freed by transaction `t` only while no reader older than `t` is open.
//! Every page of a checkpoint's snapshot that a later commit frees is freed by a transaction
//! after the pin's, so from step 1 until the next checkpoint's step 4 no commit overwrites
//! it: the newest durable entry always names a snapshot that is whole on disk.
//!
//! After a power loss (the boot id differs from the entry's), an open that is the store's
//! only user writes the entry's meta page over both of LMDB's and flushes: the store is the
//! checkpoint's snapshot, every commit after it gone, none half there. A process that was
//! only killed left its commits in the page cache, whole: with the same boot id nothing is
//! rolled back.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::Ordering;

/// The file's name in the store's directory.
pub(crate) const FILE: &str = "checkpoint";

/// Bytes of one slot; the file is two.
const SLOT: u64 = 4096;
const MAGIC: [u8; 4] = *b"VCK1";
/// Bytes of a boot id: a UUID in its text form.
pub(crate) const BOOT_ID: usize = 36;
/// `magic ‖ crc32c u32 LE ‖ generation u64 LE ‖ transaction id u64 LE ‖ inode u64 LE ‖ boot
/// id (36 bytes) ‖ meta length u32 LE ‖ meta page`; the CRC covers everything after it.
const HEADER: usize = 4 + 4 + 8 + 8 + 8 + BOOT_ID + 4;

/// A checkpoint: a durable snapshot of `data.mdb` and a copy of its meta page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Counts the entries written to the file; the newer slot has the higher one.
    pub(crate) generation: u64,
    /// The snapshot's LMDB transaction id.
    pub(crate) txnid: u64,
    /// The inode of the `data.mdb` it is of: a compaction replaces the file, and an entry
    /// of the file before never applies to the new one.
    pub(crate) inode: u64,
    /// The boot id of the machine when the entry was written.
    pub(crate) boot: [u8; BOOT_ID],
    /// The snapshot's meta page, as LMDB wrote it (page header included).
    pub(crate) meta: Vec<u8>,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.meta.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.txnid.to_le_bytes());
        b.extend_from_slice(&self.inode.to_le_bytes());
        b.extend_from_slice(&self.boot);
        b.extend_from_slice(&u32::try_from(self.meta.len()).unwrap_or(u32::MAX).to_le_bytes());
        b.extend_from_slice(&self.meta);
        let crc = crate::crc::crc32c(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        if b.len() < HEADER || b[..4] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(b[HEADER - 4..HEADER].try_into().unwrap_or_default()) as usize;
        let end = HEADER.checked_add(len).filter(|&end| end <= b.len())?;
        let crc = u32::from_le_bytes(b[4..8].try_into().unwrap_or_default());
        if crc != crate::crc::crc32c(&b[8..end]) {
            return None;
        }
        Some(Entry {
            generation: word(8),
            txnid: word(16),
            inode: word(24),
            boot: b[32..32 + BOOT_ID].try_into().ok()?,
            meta: b[HEADER..end].to_vec(),
        })
    }
}

/// This machine's boot id: it changes with every boot, so an entry written under another
/// one tells of a restart since, and of whatever the page cache lost with it. Where the
/// system does not tell it, all zeros, which [`same_boot`] never takes for the same boot.
pub(crate) fn boot_id() -> [u8; BOOT_ID] {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|text| text.trim().as_bytes().try_into().ok())
        .unwrap_or([0; BOOT_ID])
}

/// Whether an entry written under boot id `then` was written since the machine last
/// started, so that the page cache still holds every commit made.
pub(crate) fn same_boot(then: &[u8; BOOT_ID]) -> bool {
    let now = boot_id();
    now != [0; BOOT_ID] && *then == now
}

/// The inode of `dir`'s `data.mdb`.
pub(crate) fn data_inode(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir.join("data.mdb"))?.ino())
}

/// The newest whole entry of `dir`'s checkpoint file that is of its current `data.mdb`;
/// `None` if there is no file or no such entry.
pub(crate) fn newest(dir: &Path) -> io::Result<Option<Entry>> {
    let file = match File::open(dir.join(FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let inode = data_inode(dir)?;
    Ok(read_slots(&file)?.into_iter().flatten().filter(|e| e.inode == inode).max_by_key(|e| e.generation))
}

fn read_slots(file: &File) -> io::Result<[Option<Entry>; 2]> {
    let mut slots = [None, None];
    for (i, slot) in slots.iter_mut().enumerate() {
        let mut b = vec![0u8; SLOT as usize];
        let mut read = 0;
        while read < b.len() {
            match file.read_at(&mut b[read..], i as u64 * SLOT + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        *slot = Entry::decode(&b[..read]);
    }
    Ok(slots)
}

/// The checkpoint file, open for writing.
pub(crate) struct Checkpoints {
    file: File,
    /// One past the generation of the newest entry this handle knows durable (0: none):
    /// one it wrote and flushed, or found and flushed.
    durable: std::sync::atomic::AtomicU64,
}

impl Checkpoints {
    /// Opens `dir`'s checkpoint file, creating it if needed (the caller syncs the directory
    /// before any commit relies on it).
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let file =
            File::options().read(true).write(true).create(true).truncate(false).open(dir.join(FILE))?;
        Ok(Checkpoints { file, durable: std::sync::atomic::AtomicU64::new(0) })
    }

    /// Writes the entry of snapshot `txnid` into the older slot and flushes it, unless an
    /// entry of this file as new or newer is there (another process's checkpoint). Writers
    /// of other processes wait on the file's lock.
    pub(crate) fn write(&self, txnid: u64, inode: u64, boot: [u8; BOOT_ID], meta: &[u8]) -> io::Result<()> {
        self.file.lock()?;
        let written = (|| {
            let slots = read_slots(&self.file)?;
            let newest = slots.iter().flatten().filter(|e| e.inode == inode).max_by_key(|e| e.generation);
            let last = slots.iter().flatten().map(|e| e.generation).max();
            // Another process's checkpoint of a later snapshot came first; or this one's
            // entry is there already. An entry of the same snapshot under another boot id is
            // written again: left, it would roll back whatever this boot commits after it.
            if newest.is_some_and(|e| e.txnid > txnid || (e.txnid == txnid && e.boot == boot)) {
                // That entry may be in the page cache only (its process was killed before
                // flushing it, or its flush failed): this checkpoint relies on it, so it is
                // flushed here. Its snapshot was flushed before it was written.
                self.file.sync_data()?;
                self.durable.store(last.map_or(0, |g| g + 1), Ordering::Relaxed);
                return Ok(());
            }
            if last.is_some_and(|g| self.durable.load(Ordering::Relaxed) != g + 1) {
                // The newest entry is another process's, and may be in the page cache only
                // (that process was killed before its flush, or the flush failed). The slot
                // written next holds the newest entry known durable: overwritten first, a
                // power loss during the write could leave no whole entry on disk, or only
                // one whose pin is gone. So the newest one is made durable first.
                self.file.sync_data()?;
            }
            let generation = last.map_or(0, |g| g + 1);
            let entry = Entry { generation, txnid, inode, boot, meta: meta.to_vec() };
            let mut bytes = entry.encode();
            if bytes.len() > SLOT as usize {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "a meta page larger than a slot"));
            }
            bytes.resize(SLOT as usize, 0);
            self.file.write_all_at(&bytes, (generation & 1) * SLOT)?;
            self.file.sync_data()?;
            self.durable.store(generation + 1, Ordering::Relaxed);
            Ok(())
        })();
        let unlocked = self.file.unlock();
        written.and(unlocked)
    }
}

/// Removes `dir`'s checkpoint file, if any, and syncs the directory: a store opened with
/// `Durability::Immediate` flushes every commit, and an entry left behind would take a
/// power loss back past them. The caller flushed `data.mdb` before.
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(FILE)) {
        Ok(()) => File::open(dir)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generation: u64) -> Entry {
        Entry { generation, txnid: 40 + generation, inode: 7, boot: [b'a'; BOOT_ID], meta: vec![3; 152] }
    }

    #[test]
    fn an_entry_reads_back_and_a_changed_one_does_not() {
        let e = entry(1);
        let b = e.encode();
        assert_eq!(Entry::decode(&b), Some(e));
        for at in [0, 5, 9, 20, 40, HEADER + 3, b.len() - 1] {
            let mut changed = b.clone();
            changed[at] ^= 1;
            assert_eq!(Entry::decode(&changed), None, "byte {at}");
        }
        assert_eq!(Entry::decode(&b[..b.len() - 1]), None);
    }

    #[test]
    fn writes_alternate_slots_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.mdb"), b"x").unwrap();
        let inode = data_inode(dir.path()).unwrap();
        let c = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
        let boot = [b'b'; BOOT_ID];
        c.write(10, inode, boot, &[1; 152]).unwrap();
        c.write(12, inode, boot, &[2; 152]).unwrap();
        // An older snapshot than the newest entry (another process's checkpoint came first).
        c.write(11, inode, boot, &[3; 152]).unwrap();
        let e = newest(dir.path()).unwrap().unwrap();
        assert_eq!((e.generation, e.txnid, e.meta[0]), (1, 12, 2));
        // The slot the next entry goes to is the older one: a torn write there leaves this.
        let file = File::options().write(true).open(dir.path().join(FILE)).unwrap();
        file.write_all_at(&[0xff; 64], 0).unwrap();
        assert_eq!(newest(dir.path()).unwrap().unwrap().txnid, 12);
        remove(dir.path()).unwrap();
        assert_eq!(newest(dir.path()).unwrap(), None);
    }
}
