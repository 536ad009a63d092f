//! Growing `data.mdb` ahead of its use.
//!
//! LMDB writes a commit's pages at their offsets; a page past the end of the file extends it,
//! and the commit's flush must then also make the new length durable, a journal commit of the
//! filesystem on top of the data. A file whose space past the last page is already written
//! (zeros, never blocks merely reserved: the filesystem would still have to record them as
//! written) takes the pages in place, and the flush writes only them. So when little such
//! space is left, the writer writes zeros past the last page, in a step that grows with the
//! file, and flushes them, between commits.
//!
//! The zeros land only past every page a commit can reach: the step is written holding
//! LMDB's write lock (a write transaction, aborted), beyond the last page of the last commit.
//! No page past it is referenced by any meta page, so a power loss in the middle leaves a
//! longer file and nothing else.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// The smallest step, and the least space kept ahead: small stores stay small.
const MIN_STEP: u64 = 256 << 10;
/// The largest step: one write of zeros between two commits stays short.
const MAX_STEP: u64 = 64 << 20;
/// Zeros written per call.
const CHUNK: usize = 1 << 20;

/// The data file, opened for the zeros, and its length as last seen.
pub(super) struct Headroom {
    file: File,
    len: Mutex<u64>,
}

/// What a step writes: zeros over `from..to`.
pub(super) struct Step {
    pub(super) from: u64,
    pub(super) to: u64,
}

impl Headroom {
    pub(super) fn open(data_file: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().write(true).open(data_file)?;
        let len = file.metadata()?.len();
        Ok(Headroom { file, len: Mutex::new(len) })
    }

    /// The step to write when `used` bytes (up to the last commit's last page) are in use,
    /// or `None` while enough written space is ahead of them. `limit` is the map's size: the
    /// file never grows past it.
    pub(super) fn step(&self, used: u64, page_size: u64, limit: u64) -> Option<Step> {
        let len = (*self.len.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).max(used);
        let step = (used / 8).clamp(MIN_STEP, MAX_STEP).next_multiple_of(page_size);
        if len - used >= step / 2 {
            return None;
        }
        let to = (used + step).min(limit / page_size * page_size);
        let from = len.next_multiple_of(page_size);
        (from < to).then_some(Step { from, to })
    }

    /// Flushes the file, its new length with it. `fsync`, not `fdatasync`: the length is
    /// what changed.
    pub(super) fn flush(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Writes zeros over the step. The caller holds LMDB's write lock and flushes after.
    pub(super) fn write(&self, step: &Step) -> std::io::Result<()> {
        // The file may be longer than last seen: another process's commits, or its steps.
        let from = step.from.max(self.file.metadata()?.len());
        let zeros = vec![0u8; CHUNK];
        let mut at = from;
        while at < step.to {
            let n = (step.to - at).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        let mut len = self.len.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *len = (*len).max(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_written_space_ahead_and_stay_in_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let h = Headroom::open(&path).unwrap();
        let step = h.step(8192, 4096, 1 << 30).expect("no space ahead");
        assert_eq!((step.from, step.to), (8192, 8192 + MIN_STEP));
        h.write(&step).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, 8192 + MIN_STEP);
        assert!(bytes[..8192].iter().all(|&b| b == 1), "bytes in use are left alone");
        assert!(bytes[8192..].iter().all(|&b| b == 0));
        assert!(h.step(8192 + 4096, 4096, 1 << 30).is_none(), "enough ahead");
        // Near the map's end, the step stops there.
        let step = h.step(8192 + MIN_STEP - 4096, 4096, 8192 + MIN_STEP + 8192).unwrap();
        assert_eq!(step.to, 8192 + MIN_STEP + 8192);
        assert!(h.step(8192 + MIN_STEP, 4096, 8192 + MIN_STEP).is_none(), "the map is full");
    }
}
