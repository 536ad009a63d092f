//! Reads of the global log, in commit order.

use std::ops::ControlFlow;

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::record;
use crate::storage::{LogEntries, key};

use super::{ReadView, fails_the_view, reuse};

impl ReadView<'_> {
    /// The global log from `from_seq` on, in commit order.
    ///
    /// Seqs run from 1 without gaps: a read that finds a seq missing (a record lost to
    /// damage) reports [`Error::CorruptIndex`] in its place, then goes on. A storage error
    /// (a damaged LMDB page) ends the read after it is reported: LMDB fails the whole
    /// transaction on one, so nothing more can be read through this view.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`] or
    /// [`Error::CorruptIndex`], and the last one a storage error.
    pub fn read_all(&self, from_seq: u64) -> Result<LogEvents<'_>, Error> {
        let raw = self.storage.log_from(&self.txn, from_seq)?;
        Ok(LogEvents { view: self, raw, next_seq: from_seq.max(1), held: None, failed: false })
    }
}

/// The global log, from [`ReadView::read_all`].
pub struct LogEvents<'v> {
    view: &'v ReadView<'v>,
    raw: LogEntries<'v>,
    /// The seq the next record must have: the log has no gaps.
    next_seq: u64,
    /// A record found past a gap, handed out after the gap is reported.
    held: Option<(u64, &'v [u8])>,
    /// The storage engine failed the read's transaction: the read has ended.
    failed: bool,
}

impl<'v> Iterator for LogEvents<'v> {
    type Item = Result<RecordedEvent<'v>, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let view = self.view;
        self.next_with(|n| view.arena(n))
    }
}

impl<'v> LogEvents<'v> {
    /// The next event, like [`next`](Iterator::next), except that an encrypted event is
    /// decrypted into `buf`, reused from call to call, instead of into the view's memory (see
    /// [`StreamEvents::next_reusing`](crate::StreamEvents::next_reusing)).
    pub fn next_reusing<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> Option<Result<RecordedEvent<'a>, Error>> {
        self.next_with(reuse(buf))
    }

    #[inline]
    fn next_with<'a>(
        &mut self,
        plain: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Option<Result<RecordedEvent<'a>, Error>>
    where
        'v: 'a,
    {
        let (seq, v) = match self.next_record()? {
            Ok(record) => record,
            Err(e) => return Some(Err(e)),
        };
        let checked = match record::verify(seq, v) {
            Ok(checked) => checked,
            Err(e) => return Some(Err(e)),
        };
        match self.view.with_event(checked, plain, |event| event) {
            Ok(event) => Some(Ok(event)),
            // A blob or a data key on a damaged page.
            Err(e) => Some(Err(self.end_if_failed(e))),
        }
    }

    /// `e`, having ended the read if the storage engine failed its transaction.
    #[cold]
    fn end_if_failed(&mut self, e: Error) -> Error {
        self.failed |= fails_the_view(&e);
        e
    }

    /// Calls `f` with each event left, as [`next_reusing`](LogEvents::next_reusing) gives
    /// them, until the end, an error, or `f` breaks; returns whether it broke. Each event is
    /// built where `f` reads it, not moved through an iterator's item: what a subscription's
    /// reader needs.
    pub(crate) fn try_for_each_reusing(
        &mut self,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&RecordedEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        while let Some(record) = self.next_record() {
            let (seq, v) = record?;
            let flow = self.view.with_event(record::verify(seq, v)?, reuse(buf), |event| f(&event))?;
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The next record of the log and its seq, checked to follow the last one: a gap is
    /// reported first, and the record after it comes on the next call.
    #[inline]
    fn next_record(&mut self) -> Option<Result<(u64, &'v [u8]), Error>> {
        if self.failed {
            return None;
        }
        let (seq, v) = match self.held.take() {
            Some(held) => held,
            None => {
                let (k, v) = match self.raw.next()? {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(self.end_if_failed(e))),
                };
                let Some(seq) = key::decode_seq(k) else {
                    return Some(Err(Error::CorruptIndex {
                        table: "events",
                        reason: "key is not an 8-byte seq".into(),
                    }));
                };
                if seq != self.next_seq {
                    return Some(Err(self.gap(seq, v)));
                }
                (seq, v)
            }
        };
        self.next_seq = seq.saturating_add(1);
        Some(Ok((seq, v)))
    }

    /// The error for a record of `seq` where `next_seq` was due; the record is held for the
    /// next call if it lies past the gap.
    #[cold]
    fn gap(&mut self, seq: u64, v: &'v [u8]) -> Error {
        let expected = self.next_seq;
        let reason = if seq > expected {
            self.held = Some((seq, v));
            if seq - 1 == expected {
                format!("seq {expected} is missing: the log goes on at seq {seq}")
            } else {
                format!("seqs {expected} to {} are missing: the log goes on at seq {seq}", seq - 1)
            }
        } else {
            // Only seq 0 sorts below the first seq of a read (any other would be out of order,
            // which LMDB's sorted keys rule out).
            format!("a record is stored under seq {seq}, where no event can be")
        };
        Error::CorruptIndex { table: "events", reason }
    }
}
