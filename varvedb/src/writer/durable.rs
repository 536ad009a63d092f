//! When the writer answers a request, relative to when its commit is durable.
//!
//! Every commit of the writer flushes its data pages and writes its meta page without a flush
//! (see `Storage::commit_deferred`); the meta page is flushed by the next commit's data flush
//! or by a flush of its own. A commit whose changes fit a commit record is durable when its
//! commit returns: the data flush carried the record, which an open for writing applies if a
//! power loss takes the meta page. A commit without one is durable after the next flush:
//! with [`Durability::Immediate`] the writer holds its group's answers until then (pipelined
//! group commit): under load the next group's commit carries them, and when no request
//! waits the writer flushes at once. With [`Durability::Relaxed`] commits flush nothing and
//! the answers go out at once; a thread of the handle makes a checkpoint (`storage/checkpoint.rs`)
//! [`RELAXED_CHECKPOINT_INTERVAL`] after the first commit it has not covered. The reasoning
//! is in `docs/design.md` ("Durability").

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Reply, WriteResult};
use crate::error::Error;
use crate::storage::{Storage, Ticket};

/// When a write is acknowledged, relative to when it is durable. Set with
/// [`Options::durability`](crate::Options::durability).
///
/// ```
/// use varvedb::{Durability, ExpectedVersion, NewEvent, Options};
/// # let dir = tempfile::tempdir()?;
/// let db = Options::new().durability(Durability::Relaxed).open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("noted", b"x".to_vec())])?;
/// // Everything acknowledged so far survives a power loss once this returns.
/// db.sync()?;
/// # Ok::<(), varvedb::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// A write returns only once its commit is on disk: a power loss at any moment keeps
    /// every acknowledged write. The default. A commit of up to 64 KiB of changes takes one
    /// flush, which also carries a record of those changes; a larger one is answered after
    /// the next flush, which under load is the next group's.
    #[default]
    Immediate,
    /// A write returns once its commit is in force (readers see it), before anything of it
    /// is flushed: commits flush nothing. The store is made durable by *checkpoints*, in the
    /// background [`RELAXED_CHECKPOINT_INTERVAL`](crate::RELAXED_CHECKPOINT_INTERVAL) after
    /// the first commit not yet covered, by [`Varve::sync`](crate::Varve::sync), by shreds
    /// and key rotations, by the commits of projections and processors, and when the store
    /// closes. A power loss (or a crash of the operating system) takes the store back to its
    /// last checkpoint: it may lose the commits acknowledged since, with every write of
    /// their groups, but never part of a commit, never a commit while a later one stays, and
    /// it never leaves the store damaged. A crash of the process alone loses nothing
    /// acknowledged: the operating system still holds every commit, and an open under the
    /// same boot of the machine keeps them. (Where the system gives no boot id, and when the
    /// machine restarts while the process is killed, the store goes back to its last
    /// checkpoint then too.) For stores that would otherwise be run like `SQLite`'s
    /// `synchronous=NORMAL`.
    ///
    /// Relaxed and immediate handles do not share a store: while a process has it open for
    /// writing with one, an open for writing with the other is
    /// [`Error::DurabilityInUse`](crate::Error::DurabilityInUse). A checkpoint keeps the
    /// pages that commits replace from reuse until the next one is made, so a store written
    /// without pause carries more free pages in its file (`docs/performance.md`); once LMDB
    /// has taken 64 MiB past the last checkpoint, a commit makes one of its own.
    Relaxed,
}

/// How long a store with [`Durability::Relaxed`] leaves a commit before a checkpoint makes
/// it durable: the most a power loss can take back of a steady stream of writes, plus the
/// checkpoint's own flushes.
pub const RELAXED_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

/// The answers of one group, and what they wait for.
struct Held {
    ticket: Ticket,
    answers: Vec<(Reply, WriteResult)>,
    /// The highest seq committed when the group was done.
    seq: u64,
}

/// Answers the writer holds back until their commits are durable.
pub(super) struct Answers {
    durability: Durability,
    held: Vec<Held>,
    /// When the first commit not yet durable was made, in relaxed mode: the checkpoint comes
    /// [`RELAXED_CHECKPOINT_INTERVAL`] after it.
    unflushed_since: Option<Instant>,
}

impl Answers {
    pub(super) fn new(durability: Durability) -> Self {
        Answers { durability, held: Vec::new(), unflushed_since: None }
    }

    /// Takes the answers of a group, once its commits are made (and `committed_seq` is the
    /// highest seq they left), and sends those whose commits are durable.
    pub(super) fn push(
        &mut self,
        storage: &Storage,
        watch: &tokio::sync::watch::Sender<u64>,
        answers: Vec<(Reply, WriteResult)>,
        committed_seq: u64,
    ) {
        // Every answer of the group, a deduplicated one or a conflict too, may tell of a
        // commit not yet durable: all wait for the last commit made.
        let ticket = storage.last_ticket();
        match self.durability {
            Durability::Immediate => self.held.push(Held { ticket, answers, seq: committed_seq }),
            Durability::Relaxed => {
                // The checkpoint comes at most an interval after the first commit it covers,
                // under a steady stream of commits too.
                if !storage.is_durable(ticket) && self.unflushed_since.is_none() {
                    self.unflushed_since = Some(Instant::now());
                }
                // Subscribers see what is acknowledged.
                publish(watch, committed_seq);
                send(answers);
            }
        }
        self.release(storage, watch);
    }

    /// How long the writer may wait for the next request before it must flush; `None`:
    /// as long as it takes.
    pub(super) fn patience(&self) -> Option<Duration> {
        match self.durability {
            Durability::Immediate => (!self.held.is_empty()).then_some(Duration::ZERO),
            Durability::Relaxed => {
                self.unflushed_since.map(|since| RELAXED_CHECKPOINT_INTERVAL.saturating_sub(since.elapsed()))
            }
        }
    }

    /// After a relaxed handle's checkpoint, begun at `started` when `last` was the last
    /// ticket: the next one is due an interval after the first commit it did not cover,
    /// which came after `started`.
    pub(super) fn checkpointed(&mut self, storage: &Storage, last: Ticket, started: Instant) {
        self.unflushed_since = match self.unflushed_since {
            Some(_) if storage.last_ticket() != last || !storage.is_durable(last) => Some(started),
            _ => None,
        };
    }

    /// Drops every held answer (their writers get `WriterStopped`): the writer is gone.
    pub(super) fn abandon(&mut self) {
        self.held.clear();
        self.unflushed_since = None;
    }

    /// Whether answers wait for a flush: the writers that sent them cannot send again yet.
    pub(super) fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Flushes the store and sends every answer held. A failed flush turns each held
    /// success into [`Error::OutcomeUnknown`]: the write is in the file, but may be lost.
    pub(super) fn flush(&mut self, storage: &Storage, watch: &tokio::sync::watch::Sender<u64>) {
        if self.held.is_empty() && self.unflushed_since.is_none() {
            return;
        }
        match storage.sync() {
            Ok(()) => self.release(storage, watch),
            Err(e) => {
                let source = match e {
                    Error::OutcomeUnknown { source } => source,
                    other => Arc::new(other),
                };
                for held in self.held.drain(..) {
                    for (reply, result) in held.answers {
                        reply.send(
                            result.and_then(|_| Err(Error::OutcomeUnknown { source: Arc::clone(&source) })),
                        );
                    }
                }
                self.unflushed_since = None;
            }
        }
    }

    /// Flushes what the writer's last commit left unflushed, as the store closes: its answer
    /// may have gone out on the strength of its commit record, and a store closed cleanly
    /// needs no record applied after a power loss.
    pub(super) fn close(&mut self, storage: &Storage, watch: &tokio::sync::watch::Sender<u64>) {
        if !self.held.is_empty() || self.unflushed_since.is_some() {
            self.flush(storage, watch);
        } else if !storage.is_flushed(storage.last_ticket()) {
            // Every answer is out: a failed flush changes nothing anyone was told, and the
            // records keep what they hold.
            drop(storage.sync());
        }
    }

    /// Sends the held answers whose commits are durable, in order, and publishes the seq.
    fn release(&mut self, storage: &Storage, watch: &tokio::sync::watch::Sender<u64>) {
        let durable = self.held.iter().take_while(|h| storage.is_durable(h.ticket)).count();
        for held in self.held.drain(..durable) {
            // Subscribers see what is acknowledged: in immediate mode, only what is durable.
            publish(watch, held.seq);
            send(held.answers);
        }
        if storage.is_durable(storage.last_ticket()) {
            self.unflushed_since = None;
        }
    }
}

fn publish(watch: &tokio::sync::watch::Sender<u64>, seq: u64) {
    watch.send_if_modified(|v| {
        let newer = *v < seq;
        if newer {
            *v = seq;
        }
        newer
    });
}

fn send(answers: Vec<(Reply, WriteResult)>) {
    for (reply, result) in answers {
        reply.send(result);
    }
}
