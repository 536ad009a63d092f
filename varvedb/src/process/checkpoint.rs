//! Checkpoints: the last seq each projection or processor has processed, stored under its
//! name in the store's `checkpoints` table as a `u64`.
//!
//! A projection writes its checkpoint in the same write transaction as its read model; a
//! processor writes it after its handlers succeed. Both read and write it only through here.
//!
//! Beside each checkpoint, the key `0xFF ‖ name` records which kind of processing owns the
//! name (`projection` or `processor`): one kind's checkpoint moved by the other would make it
//! skip events. No UTF-8 name contains the byte 0xFF, so the two keys cannot meet.

use super::ProcessorError;
use crate::error::Error;
use crate::storage::{Storage, Txn, WriteTxn, value};
use crate::store::Varve;

impl Varve {
    /// The last seq the processor or projection named `name` has processed (0 if none).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn checkpoint(&self, name: &str) -> Result<u64, Error> {
        let storage = self.storage();
        let txn = storage.read_txn()?;
        read_checkpoint(storage, &txn, name)
    }

    /// How far the processor named `name` is behind: last committed seq − its checkpoint.
    ///
    /// # Errors
    /// As [`checkpoint`](Self::checkpoint).
    pub fn lag(&self, name: &str) -> Result<u64, Error> {
        let storage = self.storage();
        let txn = storage.read_txn()?;
        let head = storage.last_seq(&txn)?;
        Ok(head.saturating_sub(read_checkpoint(storage, &txn, name)?))
    }
}

impl Varve {
    /// Records `seq` as the checkpoint of `name`, for a consumer outside the store (a
    /// publisher to another system, say) that keeps its position in the store: read it back
    /// with [`checkpoint`](Self::checkpoint), follow it with [`lag`](Self::lag).
    ///
    /// ```
    /// use varvedb::Varve;
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// db.save_checkpoint("exporter", 42)?;
    /// assert_eq!(db.checkpoint("exporter")?, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`ProcessorError::NameInUse`] if a projection or processor owns `name`; storage errors.
    pub fn save_checkpoint(&self, name: &str, seq: u64) -> Result<(), ProcessorError> {
        let storage = self.storage();
        let mut txn = storage.write_txn()?;
        if !check_owner(storage, &txn, name, Owner::External)? {
            claim(storage, &mut txn, name, Owner::External)?;
        }
        write_checkpoint(storage, &mut txn, name, seq)?;
        storage.commit(txn)?;
        Ok(())
    }
}

/// The checkpoint of `name` as `txn` sees it; 0 if it has none.
pub(super) fn read_checkpoint(storage: &Storage, txn: &Txn<'_>, name: &str) -> Result<u64, Error> {
    match storage.get(txn, storage.tables.checkpoints, name.as_bytes())? {
        None => Ok(0),
        Some(raw) => value::decode_seq(raw).ok_or_else(|| Error::CorruptIndex {
            table: "checkpoints",
            reason: format!("checkpoint of {name:?} is not 8 bytes"),
        }),
    }
}

/// Sets the checkpoint of `name` to `seq`, visible when `txn` commits.
pub(super) fn write_checkpoint(
    storage: &Storage,
    txn: &mut WriteTxn<'_>,
    name: &str,
    seq: u64,
) -> Result<(), Error> {
    storage.put(txn, storage.tables.checkpoints, name.as_bytes(), &value::seq(seq))
}

/// Removes the checkpoint of `name`, so it reads as 0 once `txn` commits.
pub(super) fn delete_checkpoint(storage: &Storage, txn: &mut WriteTxn<'_>, name: &str) -> Result<(), Error> {
    storage.delete(txn, storage.tables.checkpoints, name.as_bytes())?;
    Ok(())
}

/// The kind of processing a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Projection,
    Processor,
    /// A consumer outside the store that keeps its position in it ([`Varve::save_checkpoint`]).
    External,
}

impl Owner {
    fn name(self) -> &'static str {
        match self {
            Owner::Projection => "projection",
            Owner::Processor => "processor",
            Owner::External => "external",
        }
    }
}

fn owner_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(0xFF);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Refuses `name` if the other kind of processing owns it. Returns whether `owner` has
/// claimed it already.
pub(super) fn check_owner(
    storage: &Storage,
    txn: &Txn<'_>,
    name: &str,
    owner: Owner,
) -> Result<bool, ProcessorError> {
    match owner_of(storage, txn, name)? {
        None => Ok(false),
        Some(stored) if stored == owner.name().as_bytes() => Ok(true),
        Some(stored) => Err(ProcessorError::NameInUse {
            name: name.to_owned(),
            wanted: owner.name(),
            owner: String::from_utf8_lossy(stored).into_owned(),
        }),
    }
}

/// What owns `name`, as stored (`None`: nothing has claimed it).
pub(super) fn owner_of<'t>(
    storage: &Storage,
    txn: &'t Txn<'_>,
    name: &str,
) -> Result<Option<&'t [u8]>, Error> {
    storage.get(txn, storage.tables.checkpoints, &owner_key(name))
}

/// Whether `owner` may change `name`'s checkpoint: it owns it, or nothing does.
pub(super) fn may_use(storage: &Storage, txn: &Txn<'_>, name: &str, owner: Owner) -> Result<bool, Error> {
    Ok(owner_of(storage, txn, name)?.is_none_or(|stored| stored == owner.name().as_bytes()))
}

/// Records that `owner` owns `name`, visible when `txn` commits.
pub(super) fn claim(
    storage: &Storage,
    txn: &mut WriteTxn<'_>,
    name: &str,
    owner: Owner,
) -> Result<(), Error> {
    storage.put(txn, storage.tables.checkpoints, &owner_key(name), owner.name().as_bytes())
}

/// Removes the record of who owns `name`.
pub(super) fn release(storage: &Storage, txn: &mut WriteTxn<'_>, name: &str) -> Result<(), Error> {
    storage.delete(txn, storage.tables.checkpoints, &owner_key(name))?;
    Ok(())
}
