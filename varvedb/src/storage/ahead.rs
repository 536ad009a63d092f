//! Growing `data.mdb` ahead of LMDB, with written zeros.
//!
//! LMDB writes a new page past the end of `data.mdb` when its free pages run out, and the
//! flush of such a commit must also make the file's new size and its new blocks durable: on
//! ext4 that is a journal commit on top of the data, about 1.6 to 2 times the cost of a flush
//! of pages the file already has. So before a write transaction uses the room left past LMDB's
//! last page, the file is grown by a step of zeros and flushed once; LMDB's commits then write
//! into blocks that are already the file's. The zeros are written, not merely allocated
//! (`fallocate`): a write into an allocated but unwritten range changes the file's block map
//! too, and its flush costs a journal commit again.
//!
//! Only the holder of LMDB's write lock grows the file, before its transaction writes
//! anything: no other commit, of this process or another, writes meanwhile, and every page
//! LMDB uses lies before the end the file had, so the zeros land where no page is.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The least the file grows by at once.
const MIN_STEP: u64 = 1 << 20;
/// The most: a step is a sixteenth of the file, and the flush of a step keeps the commit
/// that waits for it within a few milliseconds (a 4 KiB flush takes about 0.1 ms on a quick
/// disk, 1 MiB of zeros 1 ms, 16 MiB 50 ms).
const MAX_STEP: u64 = 4 << 20;
/// Zeros written by one call.
const CHUNK: usize = 1 << 20;

/// `data.mdb`, opened for the writes past LMDB's last page.
pub(super) struct Ahead {
    file: File,
    page_size: u64,
    /// The end of LMDB's pages when last seen here. Changed only under LMDB's write lock.
    used: AtomicU64,
    /// The file's length when last read or grown here: a lower bound of its length, since
    /// nothing shortens the file while the store is open. Changed only under the write lock.
    known_len: AtomicU64,
}

/// What [`Ahead::grow`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Grown {
    /// The file had room enough.
    Enough,
    /// The file grew, and its new end is flushed.
    Grew,
}

impl Ahead {
    /// Flushes through this descriptor and forgets the result: after a failed flush that the
    /// storage has repaired, the error is still due to be reported once to this descriptor,
    /// and its next flush (for growth) must not mistake it for a failure of its own.
    pub(super) fn take_reported_error(&self) {
        drop(self.file.sync_data());
    }

    pub(super) fn open(dir: &Path, page_size: u32) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().write(true).open(dir.join("data.mdb"))?;
        Ok(Ahead {
            file,
            page_size: u64::from(page_size).max(1),
            used: AtomicU64::new(u64::MAX),
            known_len: AtomicU64::new(0),
        })
    }

    /// Grows the file by a step of flushed zeros when less than half a step is left past
    /// `last_page` (LMDB's last page in use), never past `map_size`. The caller holds LMDB's
    /// write lock, and its transaction has written nothing yet.
    ///
    /// Not when the last transaction took a quarter of a step or more: a commit that large
    /// spends its flush on its own pages more than on the file's size, and zeros written
    /// ahead of it would only add to what it writes.
    ///
    /// A failed write may leave part of the zeros; nothing before `len` is touched. A failed
    /// flush is returned as [`GrowError::Flush`]: it may have dropped other writes to the
    /// file not yet flushed.
    pub(super) fn grow(&self, last_page: u64, map_size: u64) -> Result<Grown, GrowError> {
        let used = last_page.saturating_add(1).saturating_mul(self.page_size);
        let took = used.saturating_sub(self.used.swap(used, Ordering::Relaxed));
        // Most transactions find the room known from the last look: no `statx` for them.
        if self.room_enough(self.known_len.load(Ordering::Relaxed), used) {
            return Ok(Grown::Enough);
        }
        let len = self.file.metadata().map_err(GrowError::Write)?.len();
        self.known_len.store(len, Ordering::Relaxed);
        let step = self.step(len);
        if self.room_enough(len, used) || took >= step / 4 {
            return Ok(Grown::Enough);
        }
        // A file may end before LMDB's last page where the pages past its end are free (LMDB
        // writes a page only when a commit fills it): zeros fill them too.
        let end = len.max(used).saturating_add(step).min(map_size / self.page_size * self.page_size);
        if end <= len {
            return Ok(Grown::Enough);
        }
        // A write cut short (a full disk) leaves zeros past every page in use: room LMDB
        // writes into as into the rest.
        self.write_zeros(len, end).map_err(GrowError::Write)?;
        self.known_len.store(end, Ordering::Relaxed);
        self.file.sync_data().map_err(GrowError::Flush)?;
        Ok(Grown::Grew)
    }

    /// The bytes up to the end of LMDB's last page in use, as the last write transaction
    /// found it (0 before the first).
    pub(super) fn used(&self) -> u64 {
        match self.used.load(Ordering::Relaxed) {
            u64::MAX => 0,
            used => used,
        }
    }

    /// A step for a file of `len` bytes: a sixteenth of it, within the bounds, in pages.
    fn step(&self, len: u64) -> u64 {
        (len / 16).clamp(MIN_STEP, MAX_STEP) / self.page_size * self.page_size
    }

    /// Whether a file of `len` bytes leaves half a step or more past `used`.
    fn room_enough(&self, len: u64, used: u64) -> bool {
        len >= used && len - used >= self.step(len) / 2
    }

    fn write_zeros(&self, start: u64, end: u64) -> io::Result<()> {
        let zeros = vec![0u8; CHUNK];
        let mut at = start;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Why [`Ahead::grow`] failed.
#[derive(Debug)]
pub(super) enum GrowError {
    /// Writing the zeros failed (a full disk, say).
    Write(io::Error),
    /// Flushing them failed.
    Flush(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn setup(len: u64) -> (tempfile::TempDir, Ahead) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("data.mdb")).unwrap();
        file.write_all_at(&vec![7u8; len as usize], 0).unwrap();
        let ahead = Ahead::open(dir.path(), PAGE as u32).unwrap();
        (dir, ahead)
    }

    fn contents(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("data.mdb")).unwrap()
    }

    #[test]
    fn grows_by_a_step_of_zeros_past_the_last_page_and_keeps_every_byte_before() {
        let (dir, ahead) = setup(10 * PAGE);
        assert_eq!(ahead.grow(9, u64::MAX).unwrap(), Grown::Grew);
        let bytes = contents(&dir);
        assert_eq!(bytes.len() as u64, 10 * PAGE + MIN_STEP);
        assert!(bytes[..10 * PAGE as usize].iter().all(|&b| b == 7));
        assert!(bytes[10 * PAGE as usize..].iter().all(|&b| b == 0));
        // Half a step or more left: nothing to do, until the pages in use come close.
        assert_eq!(ahead.grow(9 + 64, u64::MAX).unwrap(), Grown::Enough);
        // Small transactions, 8 pages each: the file grows once half a step is left.
        let end = (10 * PAGE + MIN_STEP) / PAGE;
        let mut last = 9 + 64;
        while ahead.grow(last, u64::MAX).unwrap() == Grown::Enough {
            last += 8;
        }
        assert!(end - last <= MIN_STEP / PAGE / 2 && end - last > MIN_STEP / PAGE / 2 - 8);
        assert_eq!(contents(&dir).len() as u64, 10 * PAGE + 2 * MIN_STEP);
    }

    #[test]
    fn a_file_that_ends_before_the_last_page_is_filled_up_to_it_and_a_step_beyond() {
        let (dir, ahead) = setup(4 * PAGE);
        assert_eq!(ahead.grow(9, u64::MAX).unwrap(), Grown::Grew);
        assert_eq!(contents(&dir).len() as u64, 10 * PAGE + MIN_STEP);
    }

    #[test]
    fn never_past_the_map() {
        let (dir, ahead) = setup(10 * PAGE);
        assert_eq!(ahead.grow(9, 12 * PAGE + 100).unwrap(), Grown::Grew);
        assert_eq!(contents(&dir).len() as u64, 12 * PAGE);
        assert_eq!(ahead.grow(11, 12 * PAGE).unwrap(), Grown::Enough);
        assert_eq!(contents(&dir).len() as u64, 12 * PAGE);
    }

    #[test]
    fn not_after_a_transaction_that_took_a_quarter_step() {
        let (dir, ahead) = setup(10 * PAGE);
        assert_eq!(ahead.grow(9, u64::MAX).unwrap(), Grown::Grew);
        let len = contents(&dir).len() as u64;
        // One transaction used up the whole room and more: large commits, left alone.
        let past = len / PAGE + 10;
        assert_eq!(ahead.grow(past, u64::MAX).unwrap(), Grown::Enough);
        assert_eq!(contents(&dir).len() as u64, len);
        // The next, small again, is given room.
        assert_eq!(ahead.grow(past + 1, u64::MAX).unwrap(), Grown::Grew);
        assert!(contents(&dir).len() as u64 >= (past + 2) * PAGE + MIN_STEP);
    }
}
