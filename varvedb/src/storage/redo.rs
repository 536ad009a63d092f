//! The commit record area: a durable commit of the writer with one flush.
//!
//! LMDB makes a commit durable with two flushes: its data pages, then its meta page. The
//! writer's commits write their meta page without a flush (`MDB_NOMETASYNC`), so the meta
//! page of commit `n` reaches the disk with the data flush of commit `n + 1`. To answer a
//! commit after its own data flush, the writer also writes, before LMDB's commit, a *commit
//! record*: every change of the transaction (table, key, value), with its transaction id and
//! a CRC32C, into a fixed area of `data.mdb`. LMDB's data flush is an `fdatasync` of the
//! whole file, so it carries the record with the commit's pages. After a power loss the
//! store holds commit `n − 1` (or `n`, if its meta page happened to reach the disk); an open
//! for writing that finds the record of the transaction after the store's last one applies
//! it, and commit `n` is back, with the same keys and values.
//!
//! The area is the value of one key of `meta` ([`super::meta_key::COMMIT_RECORDS`]), large
//! enough that LMDB keeps it in overflow pages of its own: pages that no transaction touches
//! again (the key is never written after its creation), so LMDB never moves or reuses them,
//! and the records are written into them in place through a descriptor of our own. They are
//! two slots, used by the parity of the transaction id, as LMDB's two meta pages are: the
//! record of transaction `t` overwrites the one of `t − 2`, whose meta page is durable by
//! then (the data flush of `t − 1` carried it). The proof is in `docs/design.md`,
//! "Durability".

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of one slot: the largest record. A transaction whose changes take more is
/// committed without one, and answered after the next flush.
pub(crate) const SLOT_BYTES: usize = 64 * 1024;
/// Bytes of the whole area: two slots.
pub(crate) const AREA_BYTES: usize = 2 * SLOT_BYTES;

const MAGIC: [u8; 4] = *b"VCR1";
/// `magic ‖ body length u32 LE ‖ crc32c u32 LE ‖ 0u32 ‖ transaction id u64 LE`; the CRC
/// covers the transaction id and the body.
const HEADER: usize = 24;
/// Per change: `op u8 ‖ table u8 ‖ key length u16 LE ‖ value length u32 LE`.
const OP_HEADER: usize = 8;

/// What a change does, as the storage layer's write calls do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Writes the key, replacing any value (`Storage::put`).
    Put = 1,
    /// Writes a key that must be new (`Storage::insert`).
    Insert = 2,
    /// Writes a key past every other of its table (`Storage::append`).
    Append = 3,
    /// Removes the key (`Storage::delete`).
    Delete = 4,
}

impl Op {
    fn from_byte(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Put,
            2 => Op::Insert,
            3 => Op::Append,
            4 => Op::Delete,
            _ => return None,
        })
    }
}

/// The changes of a write transaction, recorded as it makes them.
pub(crate) struct Capture {
    /// The record being built: room for the header, then the changes.
    buf: Vec<u8>,
    /// False once a change could not be recorded (too large for a slot, or a kind of change
    /// that is not recorded): the transaction then commits without a record.
    whole: bool,
}

impl Capture {
    /// A capture that reuses `buf`'s allocation.
    pub(crate) fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(HEADER, 0);
        Capture { buf, whole: true }
    }

    /// Records one change made to the table numbered `table`.
    pub(crate) fn record(&mut self, op: Op, table: u8, k: &[u8], v: &[u8]) {
        if !self.whole {
            return;
        }
        let (Ok(klen), Ok(vlen)) = (u16::try_from(k.len()), u32::try_from(v.len())) else {
            self.whole = false;
            return;
        };
        if self.buf.len() + OP_HEADER + k.len() + v.len() > SLOT_BYTES {
            self.whole = false;
            return;
        }
        self.buf.push(op as u8);
        self.buf.push(table);
        self.buf.extend_from_slice(&klen.to_le_bytes());
        self.buf.extend_from_slice(&vlen.to_le_bytes());
        self.buf.extend_from_slice(k);
        self.buf.extend_from_slice(v);
    }

    /// Marks the transaction as not recordable: it made a change the record cannot hold.
    pub(crate) fn give_up(&mut self) {
        self.whole = false;
    }

    /// The finished record of transaction `txnid`, if every change was recorded and there
    /// was at least one.
    pub(crate) fn seal(&mut self, txnid: u64) -> Option<&[u8]> {
        if !self.whole || self.buf.len() == HEADER {
            return None;
        }
        let body_len = u32::try_from(self.buf.len() - HEADER).ok()?;
        let crc = crc32c::crc32c_append(crate::crc::crc32c(&txnid.to_le_bytes()), &self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&MAGIC);
        self.buf[4..8].copy_from_slice(&body_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        self.buf[12..16].copy_from_slice(&[0; 4]);
        self.buf[16..24].copy_from_slice(&txnid.to_le_bytes());
        Some(&self.buf)
    }

    /// The buffer, for the next capture.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }
}

/// The area in `data.mdb`, written through a descriptor of its own, under LMDB's write lock.
pub(crate) struct Area {
    file: File,
    /// Offset of slot 0 in the file.
    offset: u64,
    /// Per slot, how many of its first bytes may be other than zero, as far as this process
    /// knows (the whole slot until this process has zeroed it): a shorter record zeros the
    /// rest of a longer one, so that no change of an older commit stays readable there.
    dirty: [AtomicUsize; 2],
}

impl Area {
    /// Opens `data.mdb` in `dir` for writing records at `offset`.
    pub(crate) fn open(dir: &Path, offset: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().write(true).open(dir.join("data.mdb"))?;
        Ok(Area { file, offset, dirty: [AtomicUsize::new(SLOT_BYTES), AtomicUsize::new(SLOT_BYTES)] })
    }

    fn slot(&self, txnid: u64) -> (u64, &AtomicUsize) {
        let i = usize::from(txnid & 1 == 1);
        (self.offset + i as u64 * SLOT_BYTES as u64, &self.dirty[i])
    }

    /// Writes `record` (from [`Capture::seal`]) into its transaction's slot, unflushed, and
    /// zeros what an older record left after it.
    pub(crate) fn write(&self, txnid: u64, record: &[u8]) -> io::Result<()> {
        let (at, dirty) = self.slot(txnid);
        let old = dirty.fetch_max(record.len(), Ordering::Relaxed);
        self.file.write_all_at(record, at)?;
        self.zero(at, record.len(), old)?;
        dirty.store(record.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Zeros transaction `txnid`'s slot, unflushed: before a commit without a record, so
    /// that no older record passes for that transaction's; and for a transaction that wrote
    /// its record and then failed.
    pub(crate) fn erase(&self, txnid: u64) -> io::Result<()> {
        let (at, dirty) = self.slot(txnid);
        self.zero(at, 0, dirty.load(Ordering::Relaxed).max(HEADER))?;
        dirty.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Zeros both slots, unflushed.
    pub(crate) fn clear(&self) -> io::Result<()> {
        for (i, dirty) in self.dirty.iter().enumerate() {
            self.zero(self.offset + (i * SLOT_BYTES) as u64, 0, SLOT_BYTES)?;
            dirty.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Zeros bytes `from..to` of the slot at `at`.
    fn zero(&self, at: u64, from: usize, to: usize) -> io::Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        let mut pos = from;
        while pos < to {
            let n = (to - pos).min(ZEROS.len());
            self.file.write_all_at(&ZEROS[..n], at + pos as u64)?;
            pos += n;
        }
        Ok(())
    }
}

/// The offset in its file of the mapped byte at address `addr`, from this process's table of
/// mappings; `None` if no mapping holds it. Only the address is used: nothing is read
/// through it. Linux only: elsewhere the store keeps no records (see `Storage::open`).
pub(crate) fn mapped_offset(addr: usize) -> io::Result<Option<u64>> {
    Ok(mapping_of(addr)?.map(|m| m.offset + (addr - m.start) as u64))
}

/// A mapping of this process, as its table of mappings lists it.
pub(crate) struct Mapping {
    /// Its first address.
    pub(crate) start: usize,
    /// The address past its end.
    pub(crate) end: usize,
    /// The offset in its file where it starts.
    pub(crate) offset: u64,
    /// The device of its file, as the major and minor numbers.
    device: (u64, u64),
    /// The inode of its file.
    pub(crate) inode: u64,
}

impl Mapping {
    /// Whether the mapping's file lies on device `dev` (as `st_dev` gives it): Linux's
    /// encoding of the major and minor numbers in one word.
    pub(crate) fn device_is(&self, dev: u64) -> bool {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        self.device == (major, minor)
    }
}

/// The mapping that holds address `addr`, from this process's table of mappings
/// (`/proc/self/maps`: `start-end perms offset major:minor inode path` per line); `None` if
/// no mapping holds it. Only the address is used: nothing is read through it.
#[cfg(target_os = "linux")]
pub(crate) fn mapping_of(addr: usize) -> io::Result<Option<Mapping>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(device), Some(inode)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Some((start, end)), Some((major, minor))) = (range.split_once('-'), device.split_once(':'))
        else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset), Ok(major), Ok(minor), Ok(inode)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
            u64::from_str_radix(major, 16),
            u64::from_str_radix(minor, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        if (start..end).contains(&addr) {
            return Ok(Some(Mapping { start, end, offset, device: (major, minor), inode }));
        }
    }
    Ok(None)
}

/// Where the process has no table of mappings to read, no mapping is found.
#[cfg(not(target_os = "linux"))]
pub(crate) fn mapping_of(_addr: usize) -> io::Result<Option<Mapping>> {
    Ok(None)
}

/// Reads transaction `txnid`'s slot of the area at `offset` in `file` (`data.mdb`).
///
/// Through the file, not LMDB's map: another process may be writing a record into the slot
/// meanwhile, and nothing may change under a reference into the map.
pub(crate) fn read_slot(file: &File, offset: u64, txnid: u64) -> io::Result<Vec<u8>> {
    let mut slot = vec![0; SLOT_BYTES];
    file.read_exact_at(&mut slot, offset + (txnid & 1) * SLOT_BYTES as u64)?;
    Ok(slot)
}

/// A record read back: the changes of one transaction.
pub(crate) struct Record<'a> {
    body: &'a [u8],
}

/// The record of transaction `txnid` in `slot` (from [`read_slot`]), if the slot holds one
/// whole: its magic, its transaction id and its CRC. Anything else (zeros, the record of an
/// older transaction, a record torn by a power loss) is no record.
pub(crate) fn record_in(slot: &[u8], txnid: u64) -> Option<Record<'_>> {
    if slot.len() < HEADER || slot[0..4] != MAGIC || slot[16..24] != txnid.to_le_bytes() {
        return None;
    }
    let body_len = usize::try_from(u32::from_le_bytes(slot[4..8].try_into().ok()?)).ok()?;
    let body = slot.get(HEADER..HEADER.checked_add(body_len)?)?;
    let crc = u32::from_le_bytes(slot[8..12].try_into().ok()?);
    (crc32c::crc32c_append(crate::crc::crc32c(&slot[16..24]), body) == crc).then_some(Record { body })
}

/// One change of a record: what, in which table, key and value.
pub(crate) struct Change<'a> {
    pub(crate) op: Op,
    pub(crate) table: u8,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

impl<'a> Record<'a> {
    /// The changes, in the order the transaction made them; `Err` for a change that does
    /// not decode (a record whose CRC matched, written by a build that knows other changes).
    pub(crate) fn changes(&self) -> impl Iterator<Item = Result<Change<'a>, ()>> + 'a {
        let mut rest = self.body;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let change = (|| {
                let head = rest.get(..OP_HEADER)?;
                let op = Op::from_byte(head[0])?;
                let klen = usize::from(u16::from_le_bytes([head[2], head[3]]));
                let vlen = usize::try_from(u32::from_le_bytes(head[4..8].try_into().ok()?)).ok()?;
                let key = rest.get(OP_HEADER..OP_HEADER + klen)?;
                let value = rest.get(OP_HEADER + klen..OP_HEADER + klen + vlen)?;
                rest = &rest[OP_HEADER + klen + vlen..];
                Some(Change { op, table: head[1], key, value })
            })();
            if change.is_none() {
                rest = &[];
            }
            Some(change.ok_or(()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_with(record: &[u8]) -> Vec<u8> {
        let mut slot = vec![0u8; SLOT_BYTES];
        slot[..record.len()].copy_from_slice(record);
        slot
    }

    #[test]
    fn a_record_reads_back_whole_and_only_for_its_transaction() {
        let mut c = Capture::new(Vec::new());
        c.record(Op::Append, 0, b"k1", b"value one");
        c.record(Op::Delete, 3, b"k2", b"");
        let record = c.seal(41).unwrap().to_vec();
        let slot = slot_with(&record);
        let read = record_in(&slot, 41).unwrap();
        let changes: Vec<_> = read.changes().map(Result::unwrap).collect();
        assert_eq!(changes.len(), 2);
        assert_eq!(
            (changes[0].op, changes[0].table, changes[0].key, changes[0].value),
            (Op::Append, 0, &b"k1"[..], &b"value one"[..])
        );
        assert_eq!((changes[1].op, changes[1].table, changes[1].key), (Op::Delete, 3, &b"k2"[..]));
        // The slot of transaction 41 is also the one of 39 and 43: neither reads it.
        assert!(record_in(&slot, 39).is_none() && record_in(&slot, 43).is_none());
    }

    #[test]
    fn a_torn_or_changed_record_is_no_record() {
        let mut c = Capture::new(Vec::new());
        c.record(Op::Put, 1, b"key", &[7; 3000]);
        let record = c.seal(8).unwrap().to_vec();
        for at in [0, 5, 9, 17, HEADER, HEADER + 9, record.len() - 1] {
            let mut slot = slot_with(&record);
            slot[at] ^= 0x10;
            assert!(record_in(&slot, 8).is_none(), "a flipped bit at {at} passed");
        }
        // A record cut short at a sector: the rest of the slot still holds zeros.
        let slot = slot_with(&record[..512]);
        assert!(record_in(&slot, 8).is_none());
    }

    #[test]
    fn a_transaction_too_large_or_with_an_unrecorded_change_has_no_record() {
        let mut c = Capture::new(Vec::new());
        c.record(Op::Put, 1, b"k", &vec![0; SLOT_BYTES]);
        assert!(c.seal(2).is_none());
        let mut c = Capture::new(Vec::new());
        c.record(Op::Put, 1, b"k", b"v");
        c.give_up();
        assert!(c.seal(2).is_none());
        assert!(Capture::new(Vec::new()).seal(2).is_none(), "no change, no record");
    }
}
