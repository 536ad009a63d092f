//! Reads of the global log, in commit order.

use std::ops::ControlFlow;

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::record;
use crate::storage::{LogEntries, key};

use super::{ReadView, reuse};

impl ReadView<'_> {
    /// The global log from `from_seq` on, in commit order.
    ///
    /// # Errors
    /// A storage error when starting; each item may be [`Error::Corrupt`].
    pub fn read_all(&self, from_seq: u64) -> Result<LogEvents<'_>, Error> {
        let raw = self.storage.log_from(&self.txn, from_seq)?;
        Ok(LogEvents { view: self, raw })
    }
}

/// The global log, from [`ReadView::read_all`].
pub struct LogEvents<'v> {
    view: &'v ReadView<'v>,
    raw: LogEntries<'v>,
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
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let Some(seq) = key::decode_seq(k) else {
            return Some(Err(Error::CorruptIndex {
                table: "events",
                reason: "key is not an 8-byte seq".into(),
            }));
        };
        let checked = match record::verify(seq, v) {
            Ok(checked) => checked,
            Err(e) => return Some(Err(e)),
        };
        Some(self.view.with_event(checked, plain, |event| event))
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
        for entry in self.raw.by_ref() {
            let (k, v) = entry?;
            let Some(seq) = key::decode_seq(k) else {
                return Err(Error::CorruptIndex {
                    table: "events",
                    reason: "key is not an 8-byte seq".into(),
                });
            };
            let flow = self.view.with_event(record::verify(seq, v)?, reuse(buf), |event| f(&event))?;
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}
