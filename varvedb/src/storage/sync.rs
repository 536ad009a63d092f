//! Which commits are durable.
//!
//! The environment is opened with LMDB's `MDB_NOMETASYNC`: a commit writes its data pages,
//! flushes them (`fdatasync`), and then writes its meta page without a flush. That meta page
//! becomes durable with the next flush of `data.mdb`: the data flush of the next commit (of
//! any thread or process), or an explicit sync. Until then a power loss takes the store back
//! to the commit before, whole: LMDB reuses no page the last two commits can reach (see
//! "Durability" in `docs/design.md`).
//!
//! The writer's commits are counted with tickets: `written` is the ticket of the last
//! commit whose meta page was written, `synced` the last ticket known flushed. A commit's
//! own data flush makes every meta page written before it began durable. `recorded` is the
//! last ticket whose commit record (`storage/redo.rs`) went out with the commit's own data
//! flush: that commit is durable without its meta page, and so is every commit before it,
//! whose meta page that flush carried.

use std::sync::atomic::{AtomicU64, Ordering};

/// A commit's place in the order of the writer's commits: durable once
/// [`Tickets::is_durable`] says so.
pub(crate) type Ticket = u64;

#[derive(Default)]
pub(super) struct Tickets {
    written: AtomicU64,
    synced: AtomicU64,
    recorded: AtomicU64,
    /// A relaxed handle's: its commits are durable by checkpoints only. A power loss takes
    /// the store back to the last checkpoint whatever else was flushed, so neither a commit
    /// nor a flush of `data.mdb` counts, only [`Tickets::checkpointed`].
    checkpoints: bool,
}

impl Tickets {
    /// The tickets of a handle whose commits are durable by checkpoints (`checkpoints`), or
    /// by flushes.
    pub(super) fn new(checkpoints: bool) -> Self {
        Tickets { checkpoints, ..Tickets::default() }
    }

    /// The last ticket handed out: a commit already made, durable or not.
    pub(super) fn last(&self) -> Ticket {
        self.written.load(Ordering::Acquire)
    }

    /// Called with `before` = [`Tickets::last`] read before a commit began, once the commit
    /// returned: its data flush made every meta page up to `before` durable; its own meta
    /// page is not yet.
    pub(super) fn committed(&self, before: Ticket) -> Ticket {
        self.flushed(before);
        // Only the writer commits with tickets, one commit at a time (its leader holds it).
        self.written.store(before + 1, Ordering::Release);
        before + 1
    }

    /// Called with `before` = [`Tickets::last`] read before a flush of the whole file began,
    /// once it returned.
    pub(super) fn flushed(&self, before: Ticket) {
        if !self.checkpoints {
            self.synced.fetch_max(before, Ordering::AcqRel);
        }
    }

    /// Called with `before` = [`Tickets::last`] read before a checkpoint pinned its snapshot,
    /// once the checkpoint is durable.
    pub(super) fn checkpointed(&self, before: Ticket) {
        self.synced.fetch_max(before, Ordering::AcqRel);
    }

    /// Called with the ticket of a commit whose record was written before it, once the
    /// commit returned.
    pub(super) fn recorded(&self, ticket: Ticket) {
        self.recorded.fetch_max(ticket, Ordering::AcqRel);
    }

    /// Whether the meta page of `ticket`'s commit is known flushed.
    pub(super) fn is_durable(&self, ticket: Ticket) -> bool {
        ticket <= self.synced.load(Ordering::Acquire)
    }

    /// Whether `ticket`'s commit survives a power loss: by its meta page, or by its record.
    pub(super) fn is_answerable(&self, ticket: Ticket) -> bool {
        self.is_durable(ticket) || ticket <= self.recorded.load(Ordering::Acquire)
    }
}

/// Time spent flushing `data.mdb`: in LMDB's commits (which write a transaction's pages and
/// flush them) and in explicit flushes.
#[derive(Default)]
pub(crate) struct FlushTimes {
    pub(crate) count: AtomicU64,
    pub(crate) total_nanos: AtomicU64,
    pub(crate) max_nanos: AtomicU64,
}

impl FlushTimes {
    pub(super) fn record(&self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        if took > crate::trace::SLOW_SYNC {
            crate::trace::event!(
                target: "varvedb::sync",
                tracing::Level::WARN,
                duration_ms = took.as_millis() as u64,
                threshold_ms = crate::trace::SLOW_SYNC.as_millis() as u64,
                "slow flush of data.mdb"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_durable_after_the_next_commit_or_a_flush() {
        let t = Tickets::default();
        assert!(t.is_durable(t.last()), "nothing committed is nothing to wait for");
        let first = t.committed(t.last());
        assert!(!t.is_durable(first));
        let second = t.committed(t.last());
        assert!(t.is_durable(first) && !t.is_durable(second));
        let before = t.last();
        let third = t.committed(t.last());
        // A flush that began before the third commit says nothing of it.
        t.flushed(before);
        assert!(t.is_durable(second) && !t.is_durable(third));
        t.flushed(t.last());
        assert!(t.is_durable(third));
    }

    #[test]
    fn a_recorded_commit_is_answerable_with_every_one_before_it() {
        let t = Tickets::default();
        let first = t.committed(t.last());
        let second = t.committed(t.last());
        t.recorded(second);
        assert!(t.is_answerable(first) && t.is_answerable(second));
        assert!(!t.is_durable(second), "its meta page is not flushed");
        let third = t.committed(t.last());
        assert!(!t.is_answerable(third));
    }
}
