//! The writer: commits requests in groups, one transaction at a time, led by the thread of a
//! blocking call or by the writer thread.
//!
//! This module holds the handle, the group commit and the transaction around a group;
//! the steps of one request live in the submodules: `plan` validates it, `dedup` answers
//! an idempotent retry, `apply` writes it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::batch::{Appended, WriteBatch};
use crate::crypto::Encryption;
use crate::error::Error;
use crate::record::{Envelope, now_micros};
use crate::storage::{ReaderLag, Storage, WriteLockHeld, key, value};
use crate::tlog::TreeFeed;

mod apply;
mod dedup;
mod durable;
mod hash;
mod head_cache;
mod import;
mod index_order;
mod keys;
mod plan;

use durable::Answers;
pub use durable::{Durability, RELAXED_CHECKPOINT_INTERVAL};
use head_cache::HeadCache;
pub(crate) use import::import;
use index_order::{HeadValues, IndexOrder};
use keys::WriterCrypto;
use plan::{Plan, seq_exhausted};

/// Most requests folded into one commit. Bounds the latency a request waits behind others
/// and the size of the transaction; a larger backlog simply takes several commits.
const MAX_GROUP: usize = 1024;

/// A request's answer: where each of its stream appends landed, or why nothing was written.
pub(crate) type WriteResult = Result<Vec<Appended>, Error>;

/// Where the writer sends a request's answer.
pub(crate) enum Reply {
    Blocking(mpsc::SyncSender<WriteResult>),
    Async(tokio::sync::oneshot::Sender<WriteResult>),
}

impl Reply {
    fn send(self, result: WriteResult) {
        // A closed receiver means the caller gave up (a dropped future); the write stands.
        match self {
            Reply::Blocking(tx) => drop(tx.send(result)),
            Reply::Async(tx) => drop(tx.send(result)),
        }
    }
}

/// One write request queued for the writer, with where to send its answer.
pub(crate) struct Request {
    pub(crate) batch: WriteBatch,
    pub(crate) reply: Reply,
}

/// Counters since the store was opened.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commits: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) events: AtomicU64,
    /// Requests answered with a concurrency conflict (counted by the store, not the writer).
    pub(crate) conflicts: AtomicU64,
    /// Attempts of commands repeated after a conflict.
    pub(crate) retries: AtomicU64,
    /// Bytes of records and new blobs committed.
    pub(crate) bytes_written: AtomicU64,
}

/// What the writer takes from the store's options.
pub(crate) struct WriterConfig {
    pub(crate) max_event_size: usize,
    /// The aggregates this process has opened typed streams of.
    pub(crate) kinds: Arc<crate::batch::KindRegistry>,
    pub(crate) encryption: Option<Arc<Encryption>>,
    pub(crate) lag_warning: Option<LagWarning>,
    /// Whether the store keeps the Merkle tree over its log.
    pub(crate) merkle_tree: bool,
    pub(crate) durability: Durability,
}

/// What the writer calls, after a commit, when the oldest open read view is more than
/// `bound` commits behind.
#[derive(Clone)]
pub(crate) struct LagWarning {
    pub(crate) bound: u64,
    pub(crate) warn: Arc<dyn Fn(ReaderLag) + Send + Sync>,
}

impl std::fmt::Debug for LagWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagWarning").field("bound", &self.bound).finish_non_exhaustive()
    }
}

/// Longest a group waits for more requests, when fewer are waiting than joined the last one.
const LINGER: Duration = Duration::from_micros(100);

/// Requests waiting for a leader, and who leads.
///
/// A group is committed by its leader, which holds the writer's state meanwhile: the thread
/// of a blocking call that found no leader appointed, or the writer thread. A lone caller
/// thus commits its own request without handing it to another thread and back, two thread
/// switches that cost more CPU than the rest of a small commit. Leadership is decided under
/// this lock, so a request queued while a leader is appointed is always taken by a leader
/// (that one, or the writer thread it hands over to).
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    lead: Lead,
    /// A leader waits for more requests to join its group.
    lingering: bool,
    /// When the writer thread flushes, if no commit comes first (see [`Answers::patience`]).
    flush_due: Option<Instant>,
    life: Life,
}

/// Who leads the next group.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// No one: the next blocking caller leads.
    #[default]
    Vacant,
    /// A leader is at work: every request queued before it steps down is taken by it or by
    /// the writer thread it hands over to.
    Appointed,
    /// The writer thread is to lead, and has not started: for an async call, or after a
    /// calling thread's group.
    Delegated,
}

/// Whether the writer takes requests.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Life {
    #[default]
    Open,
    /// The handle was dropped: the writer thread flushes and ends.
    Closed,
    /// A leader panicked: the writer takes no more requests.
    Stopped,
}

/// What the handle, the calling threads and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer thread: work delegated, a flush due, the handle dropped.
    work: Condvar,
    /// Wakes a lingering leader: a request came.
    arrivals: Condvar,
    state: Mutex<WriterState>,
    /// The process that opened the store. A forked child inherits the handle but not the
    /// right to use LMDB's environment: its writer refuses every request.
    pid: u32,
    /// A relaxed handle's timed checkpoints (`None` with [`Durability::Immediate`]).
    checkpoints: Option<Checkpoints>,
}

/// A relaxed handle's timed checkpoints, made by a thread of their own beside the leaders'
/// commits: a checkpoint's flushes take milliseconds, and under load the writer thread leads
/// nearly every group.
struct Checkpoints {
    storage: Arc<Storage>,
    /// When the next one is due (`None`: every commit is covered), and whether the thread
    /// is to stop.
    due: Mutex<(Option<Instant>, bool)>,
    wake: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `request`; returns whether a leader had to be appointed: the caller, or with
    /// `delegate` the writer thread.
    fn push(&self, request: Request, delegate: bool) -> Result<bool, Error> {
        // Before the lock: a fork may have copied it held by a thread the child does not have.
        if std::process::id() != self.pid {
            return Err(Error::WriterStopped);
        }
        let mut queue = self.queue();
        if queue.life != Life::Open {
            return Err(Error::WriterStopped);
        }
        queue.requests.push_back(request);
        if queue.lingering {
            self.arrivals.notify_one();
        }
        if queue.lead != Lead::Vacant {
            return Ok(false);
        }
        if delegate {
            queue.lead = Lead::Delegated;
            self.work.notify_one();
        } else {
            queue.lead = Lead::Appointed;
        }
        Ok(true)
    }

    /// Commits the waiting requests, group by group, as the appointed leader. A calling
    /// thread commits one group, which holds its own request, and hands what came meanwhile
    /// to the writer thread: its caller does not wait for other callers' commits.
    fn lead(&self, calling_thread: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A panic must not leave callers waiting for a writer that is gone: every request
        // queued or held gets `WriterStopped`, as from a dead writer thread.
        let led = std::panic::catch_unwind(AssertUnwindSafe(|| self.lead_groups(&mut state, calling_thread)));
        if led.is_err() {
            state.answers.abandon();
            self.stop();
        }
    }

    fn lead_groups(&self, state: &mut WriterState, calling_thread: bool) {
        loop {
            let group = self.take_group(state.last_group_len, state.answers.holds_any());
            if !group.is_empty() {
                state.last_group_len = group.len();
                state.process(group);
            }
            let mut queue = self.queue();
            if queue.requests.is_empty() {
                queue.lead = Lead::Vacant;
                break;
            }
            if calling_thread {
                queue.lead = Lead::Delegated;
                self.work.notify_one();
                return;
            }
        }
        self.settle(state, true);
    }

    /// Takes the requests waiting, up to [`MAX_GROUP`]. While fewer wait than joined the
    /// last group, lingers a little for the rest (writers that just had their answer are
    /// sending again), unless answers are held: their writers cannot send yet.
    fn take_group(&self, last_group_len: usize, holds_answers: bool) -> Vec<Request> {
        let mut queue = self.queue();
        let mut group = Vec::new();
        drain(&mut queue, &mut group);
        if !group.is_empty() && group.len() < last_group_len && !holds_answers {
            let deadline = Instant::now() + LINGER;
            queue.lingering = true;
            while group.len() < last_group_len {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = self.arrivals.wait_timeout(queue, left).unwrap_or_else(PoisonError::into_inner).0;
                drain(&mut queue, &mut group);
            }
            queue.lingering = false;
        }
        group
    }

    /// After the leader's last group (`after_group`), or when a flush is due: flushes if
    /// answers wait for that at once, and tells the writer thread when to flush if no
    /// commit comes first (a relaxed handle's checkpoint thread when to make a checkpoint).
    fn settle(&self, state: &mut WriterState, after_group: bool) {
        if after_group && self.queue().lead != Lead::Vacant {
            // A leader appointed meanwhile waits for this one: its commit's flush carries
            // the held answers, as the next group's always does, and it settles after.
            return;
        }
        if let Some(checkpoints) = &self.checkpoints {
            // A relaxed handle's checkpoint is its checkpoint thread's, made beside the
            // leaders' commits.
            let due = state.answers.patience().map(|p| Instant::now() + p);
            let mut next = checkpoints.due.lock().unwrap_or_else(PoisonError::into_inner);
            let sooner = due.is_some_and(|due| next.0.is_none_or(|pending| due < pending));
            next.0 = due;
            if sooner {
                checkpoints.wake.notify_one();
            }
            return;
        }
        if state.answers.patience().is_some_and(|p| p.is_zero()) {
            state.answers.flush(&state.storage, &state.watch);
        }
        let due = state.answers.patience().map(|p| Instant::now() + p);
        let mut queue = self.queue();
        let sooner = match (due, queue.flush_due) {
            (Some(due), Some(pending)) => due < pending,
            (Some(_), None) => true,
            (None, _) => false,
        };
        queue.flush_due = due;
        // A later time needs no wake-up: the writer thread, woken at the earlier one, asks
        // again.
        if sooner {
            self.work.notify_one();
        }
    }

    /// Refuses every later request and fails those queued (their answers are dropped).
    fn stop(&self) {
        let mut queue = self.queue();
        queue.life = Life::Stopped;
        queue.lead = Lead::Vacant;
        queue.requests.clear();
        self.work.notify_one();
    }

    /// The writer thread: leads when asked to, flushes when a flush is due, and flushes what
    /// is left when the handle is dropped.
    fn run(&self) {
        enum Task {
            Lead,
            Flush,
            Close,
        }
        loop {
            let task = {
                let mut queue = self.queue();
                loop {
                    if queue.life == Life::Stopped {
                        return;
                    }
                    if queue.lead == Lead::Delegated {
                        queue.lead = Lead::Appointed;
                        break Task::Lead;
                    }
                    if queue.life == Life::Closed && queue.lead == Lead::Vacant {
                        break Task::Close;
                    }
                    queue = match queue.flush_due {
                        Some(due) => {
                            let now = Instant::now();
                            if now >= due {
                                queue.flush_due = None;
                                break Task::Flush;
                            }
                            self.work.wait_timeout(queue, due - now).unwrap_or_else(PoisonError::into_inner).0
                        }
                        None => self.work.wait(queue).unwrap_or_else(PoisonError::into_inner),
                    };
                }
            };
            match task {
                Task::Lead => self.lead(false),
                Task::Flush => {
                    self.settle(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner), false);
                }
                Task::Close => {
                    let state = &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner);
                    state.answers.close(&state.storage, &state.watch);
                    return;
                }
            }
        }
    }
}

impl Shared {
    /// The checkpoint thread of a relaxed handle: a checkpoint when one is due, without the
    /// writer's state, so leaders go on committing meanwhile; it covers the commits made
    /// before it began. A failed one stops the storage, which the next commit reports.
    fn checkpoints(&self) {
        let Some(checkpoints) = &self.checkpoints else { return };
        loop {
            {
                let mut next = checkpoints.due.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if next.1 {
                        return;
                    }
                    next = match next.0 {
                        Some(due) => {
                            let now = Instant::now();
                            if now >= due {
                                next.0 = None;
                                break;
                            }
                            checkpoints
                                .wake
                                .wait_timeout(next, due - now)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                        None => checkpoints.wake.wait(next).unwrap_or_else(PoisonError::into_inner),
                    };
                }
            }
            let storage = &checkpoints.storage;
            let (last, started) = (storage.last_ticket(), Instant::now());
            drop(storage.sync());
            let state = &mut *self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.answers.checkpointed(storage, last, started);
            self.settle(state, false);
        }
    }
}

/// Moves the requests waiting into `group`, up to [`MAX_GROUP`].
fn drain(queue: &mut Queue, group: &mut Vec<Request>) {
    let n = queue.requests.len().min(MAX_GROUP.saturating_sub(group.len()));
    group.extend(queue.requests.drain(..n));
}

/// Handle to the writer: its shared state and its thread. Dropping it stops the thread after
/// every request already queued is answered and the last commit flushed.
pub(crate) struct Writer {
    shared: Option<Arc<Shared>>,
    thread: Option<JoinHandle<()>>,
    /// A relaxed handle's checkpoint thread.
    checkpointer: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn spawn(
        storage: Arc<Storage>,
        config: WriterConfig,
        counters: Arc<Counters>,
        watch: tokio::sync::watch::Sender<u64>,
    ) -> Result<Self, Error> {
        let crypto = config.encryption.clone().map(WriterCrypto::new);
        let tree = if config.merkle_tree { Some(TreeFeed::spawn()?) } else { None };
        let answers = Answers::new(config.durability);
        let mut state = WriterState {
            storage,
            config,
            crypto,
            counters,
            watch,
            record_buf: Vec::new(),
            head_buf: Vec::new(),
            index_seqs: Vec::new(),
            tail_buf: Vec::new(),
            heads_out: HeadValues::default(),
            index_order: IndexOrder::default(),
            head_cache: HeadCache::default(),
            tree,
            last_timestamp: 0,
            lag_warned: None,
            answers,
            committed_seq: 0,
            bytes_written: 0,
            last_group_len: 1,
        };
        state.last_timestamp = state.last_stored_timestamp()?;
        let checkpoints = (state.config.durability == Durability::Relaxed).then(|| Checkpoints {
            storage: Arc::clone(&state.storage),
            due: Mutex::new((None, false)),
            wake: Condvar::new(),
        });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            arrivals: Condvar::new(),
            state: Mutex::new(state),
            pid: std::process::id(),
            checkpoints,
        });
        let running = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("varvedb-writer".into()).spawn(move || {
            if std::panic::catch_unwind(AssertUnwindSafe(|| running.run())).is_err() {
                running.state.lock().unwrap_or_else(PoisonError::into_inner).answers.abandon();
                running.stop();
            }
        })?;
        let checkpointer = if shared.checkpoints.is_some() {
            let running = Arc::clone(&shared);
            // A panic ends the timed checkpoints; the close still makes the last one.
            let spawned = std::thread::Builder::new()
                .name("varvedb-checkpoints".into())
                .spawn(move || drop(std::panic::catch_unwind(AssertUnwindSafe(|| running.checkpoints()))));
            match spawned {
                Ok(thread) => Some(thread),
                Err(e) => {
                    drop(Writer { shared: Some(shared), thread: Some(thread), checkpointer: None });
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        Ok(Writer { shared: Some(shared), thread: Some(thread), checkpointer })
    }

    /// No writer: the handle of a store opened read-only.
    pub(crate) fn none() -> Self {
        Writer { shared: None, thread: None, checkpointer: None }
    }

    /// Commits `batch` and returns its answer. With no leader appointed, the calling thread
    /// commits it itself (with any request queued beside it); otherwise the leader does.
    /// The caller holds no write lock (it would wait for itself).
    pub(crate) fn write(&self, batch: WriteBatch) -> WriteResult {
        let shared = self.shared.as_ref().ok_or(Error::WriterStopped)?;
        let (tx, rx) = mpsc::sync_channel(1);
        if shared.push(Request { batch, reply: Reply::Blocking(tx) }, false)? {
            shared.lead(true);
        }
        rx.recv().map_err(|_| Error::WriterStopped)?
    }

    /// Queues `request` for the writer thread (or the leader under way); its answer goes
    /// to its reply.
    pub(crate) fn submit(&self, request: Request) -> Result<(), Error> {
        let shared = self.shared.as_ref().ok_or(Error::WriterStopped)?;
        shared.push(request, true).map(drop)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            if std::process::id() != shared.pid {
                // A forked child: the writer thread is not in this process, and its state
                // belongs to the parent's LMDB environment.
                std::mem::forget(self.thread.take());
                std::mem::forget(self.checkpointer.take());
                return;
            }
            if let Some(checkpoints) = &shared.checkpoints {
                // Stopped before the writer closes, whose last flush is the last checkpoint.
                checkpoints.due.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
                checkpoints.wake.notify_one();
                if let Some(thread) = self.checkpointer.take() {
                    let _ = thread.join();
                }
            }
            let mut queue = shared.queue();
            if queue.life == Life::Open {
                queue.life = Life::Closed;
            }
            drop(queue);
            shared.work.notify_one();
        }
        if let Some(thread) = self.thread.take() {
            // A panicked writer has already failed every pending request; nothing to add.
            let _ = thread.join();
        }
    }
}

/// Everything the writer owns across groups, held by the leader of the group under way.
struct WriterState {
    storage: Arc<Storage>,
    config: WriterConfig,
    crypto: Option<WriterCrypto>,
    counters: Arc<Counters>,
    watch: tokio::sync::watch::Sender<u64>,
    /// Scratch for the encoded record of one event.
    record_buf: Vec<u8>,
    /// Scratch for the encoded head of one stream.
    head_buf: Vec<u8>,
    /// Scratch for the seqs of one stream's new index entries.
    index_seqs: Vec<u64>,
    /// Scratch for one stream's tail of index entries, as its head holds it.
    tail_buf: Vec<u8>,
    /// The encoded heads of a request, written after its index entries.
    heads_out: HeadValues,
    index_order: IndexOrder,
    head_cache: HeadCache,
    /// The growing edge of the Merkle tree over the log, when the store keeps one.
    tree: Option<TreeFeed>,
    /// The commit time of the newest stored event: a new event never gets an earlier one.
    last_timestamp: u64,
    /// The lag last reported to the lag warning, while the oldest view stays past its bound.
    lag_warned: Option<u64>,
    /// Answers waiting for their commits to be durable.
    answers: Answers,
    /// The highest seq this writer committed.
    committed_seq: u64,
    /// Bytes of records and blobs written by the transaction under way.
    bytes_written: u64,
    /// How many requests joined the last group.
    last_group_len: usize,
}

impl WriterState {
    /// The commit time of the newest event (0 in an empty store, or if that record is damaged:
    /// a damaged record must not keep the store from opening; reads report it).
    fn last_stored_timestamp(&self) -> Result<u64, Error> {
        let txn = self.storage.read_txn()?;
        let last = self.storage.last_seq(&txn)?;
        Ok(match self.storage.get(&txn, self.storage.tables.events, &key::seq(last))? {
            Some(raw) => Envelope::decode(last, raw).map_or(0, |e| e.head.timestamp_micros),
            None => 0,
        })
    }

    fn process(&mut self, group: Vec<Request>) {
        let (batches, replies): (Vec<WriteBatch>, Vec<Reply>) =
            group.into_iter().map(|r| (r.batch, r.reply)).unzip();
        self.counters.requests.fetch_add(batches.len() as u64, Ordering::Relaxed);
        let results = match self.commit(&batches) {
            Ok(results) => results,
            // The commit may be in the file, and the environment takes no other: every
            // request of the group shares the outcome and the original error.
            Err(Error::OutcomeUnknown { source }) => {
                batches.iter().map(|_| Err(Error::OutcomeUnknown { source: Arc::clone(&source) })).collect()
            }
            // A storage failure (map full, disk full, I/O) poisons the whole transaction.
            // Retry each request alone so only the one that cannot fit fails.
            Err(_) if batches.len() > 1 => batches
                .iter()
                .map(|b| match self.commit(std::slice::from_ref(b)) {
                    Ok(mut one) => {
                        one.pop().unwrap_or(Err(Error::Internal("a one-request group gave no answer")))
                    }
                    Err(e) => Err(e),
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        let answers = replies.into_iter().zip(results).collect();
        self.answers.push(&self.storage, &self.watch, answers, self.committed_seq);
    }

    /// Applies `batches` in one transaction. `Err` means the transaction failed as a whole
    /// and nothing was committed, except [`Error::OutcomeUnknown`] (see
    /// [`Storage::commit`](crate::storage::Storage::commit)); request-level failures are
    /// inside the `Ok`.
    fn commit(&mut self, batches: &[WriteBatch]) -> Result<Vec<WriteResult>, Error> {
        crate::trace::enter_span!(target: "varvedb::commit", tracing::Level::DEBUG, "commit", requests = batches.len());
        #[cfg(feature = "tracing")]
        let started = std::time::Instant::now();
        self.bytes_written = 0;
        #[cfg(feature = "tracing")]
        let events_before = self.counters.events.load(Ordering::Relaxed);
        let committed = self.commit_group(batches);
        #[cfg(feature = "tracing")]
        match &committed {
            Ok(_) if self.bytes_written > 0 => tracing::debug!(
                target: "varvedb::commit",
                requests = batches.len(),
                events = self.counters.events.load(Ordering::Relaxed) - events_before,
                bytes = self.bytes_written,
                duration_us = started.elapsed().as_micros() as u64,
                "committed"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "varvedb::commit", requests = batches.len(), error = %e, "commit failed");
            }
        }
        committed
    }

    /// [`commit`](Self::commit), untraced.
    fn commit_group(&mut self, batches: &[WriteBatch]) -> Result<Vec<WriteResult>, Error> {
        let storage = Arc::clone(&self.storage);
        // Its changes are recorded: a commit whose record fits is answered after its own
        // data flush (see `Storage::commit_deferred`).
        let mut txn = storage.write_txn_recorded()?;
        // A write transaction's id is one past the last committed one, whichever process
        // committed it. The cached heads are those our last commit left: they are the
        // stored ones only if no other transaction committed since. Until this one commits,
        // the cache counts as stale (it takes this transaction's heads as they are written).
        let txn_id = txn.id();
        if self.head_cache.committed_txn.take().and_then(|id| id.checked_add(1)) != Some(txn_id) {
            self.head_cache.map.clear();
        }
        // Taken after LMDB's writer lock, as a key rotation does: the master cannot change
        // while this transaction is open.
        let master = self.crypto.as_ref().map(|c| Arc::clone(&c.encryption.read()));
        let master = master.as_deref();
        crate::key_record::ensure_current(&storage, &txn, master)?;
        if let Some(crypto) = self.crypto.as_mut() {
            crypto.begin();
        }
        let last_seq = storage.last_seq(&txn)?;
        let mut next_seq = last_seq.checked_add(1).ok_or_else(seq_exhausted)?;
        if self.tree.is_none() && crate::tlog::kept(&storage, &txn)? {
            // Another process turned the tree on: from now on this writer keeps it too.
            self.tree = Some(TreeFeed::spawn()?);
        }
        if let Some(feed) = &mut self.tree {
            // As the head cache: valid only if our last commit is the last one. A failed
            // commit left leaves in it that the store does not have.
            let mut tree = feed.sync()?;
            if tree.committed_txn.take().and_then(|id| id.checked_add(1)) != Some(txn_id)
                || tree.size() != last_seq
            {
                tree.load(&storage, &mut txn, last_seq, u64::MAX)?;
            }
        }
        let mut results = Vec::with_capacity(batches.len());
        let mut events_written = 0u64;
        // Timestamps never go backwards in the log, even if the wall clock does.
        let timestamp = now_micros().max(self.last_timestamp);
        for batch in batches {
            match self.plan(&txn, master, batch, next_seq) {
                Ok(Plan::Deduplicated(appended)) => results.push(Ok(appended)),
                Ok(Plan::Write { appended, heads, slots, new_schemas, new_kinds }) => {
                    self.write(&mut txn, master, batch, &appended, (&heads, &slots), timestamp)?;
                    for (tag, schema) in &new_schemas {
                        let k = key::schema(tag, schema.version);
                        storage.put(
                            &mut txn,
                            storage.tables.schema,
                            &k,
                            &value::fingerprint(schema.fingerprint),
                        )?;
                        if let Some(layout) = schema.layout {
                            let k = key::schema_layout(tag, schema.version);
                            storage.put(&mut txn, storage.tables.schema, &k, &layout.encode())?;
                        }
                    }
                    for (k, list) in &new_kinds {
                        storage.put(&mut txn, storage.tables.schema, k, list)?;
                    }
                    let n = appended.iter().map(|a| a.last_seq - a.first_seq + 1).sum::<u64>();
                    next_seq += n;
                    events_written += n;
                    results.push(Ok(appended));
                }
                // Planning only reads, so any error but a failing read of the storage itself
                // (a damaged key or record of one stream, say) concerns this request alone: the
                // others of the group still commit, without being retried one by one.
                Err(e) if !matches!(e, Error::Storage(_) | Error::Io(_)) => {
                    results.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        if events_written > 0 {
            let keys_generation = match (self.crypto.as_mut(), master) {
                (Some(crypto), Some(master)) => crypto.finish(&storage, &mut txn, master)?,
                _ => None,
            };
            let mut tree = match &mut self.tree {
                Some(feed) => Some(feed.sync()?),
                None => None,
            };
            if let Some(tree) = &mut tree {
                tree.flush(&storage, &mut txn)?;
            }
            storage.commit_deferred(txn)?;
            if let (Some(generation), Some(master)) = (keys_generation, master) {
                master.saw_keys_generation(generation);
            }
            self.head_cache.committed_txn = Some(txn_id);
            if let Some(tree) = &mut tree {
                tree.committed_txn = Some(txn_id);
            }
            drop(tree);
            // `last_timestamp` already holds the newest time written (`apply`).
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters.events.fetch_add(events_written, Ordering::Relaxed);
            self.counters.bytes_written.fetch_add(self.bytes_written, Ordering::Relaxed);
            self.committed_seq = next_seq - 1;
            self.check_reader_lag();
        } else {
            // Nothing written, nothing committed: the store is still as the last commit left it.
            self.head_cache.committed_txn = txn_id.checked_sub(1);
        }
        Ok(results)
    }

    /// Calls the lag warning when the oldest open read view is past its bound: first when it
    /// passes it, then each time it falls another bound behind.
    fn check_reader_lag(&mut self) {
        let Some(warning) = self.config.lag_warning.clone() else { return };
        // A failed read of the reader table skips one check; the commit stands.
        let behind =
            |lag: Result<Option<ReaderLag>, Error>| lag.ok().flatten().filter(|l| l.commits > warning.bound);
        let Some(lag) = behind(self.storage.reader_lag_unchecked()) else {
            self.lag_warned = None;
            return;
        };
        if self.lag_warned.is_some_and(|warned| lag.commits < warned.saturating_add(warning.bound)) {
            return;
        }
        // Before warning, the slots of processes that died are cleared: they are no views.
        let Some(lag) = behind(self.storage.reader_lag()) else {
            self.lag_warned = None;
            return;
        };
        self.lag_warned = Some(lag.commits);
        // Appending from the callback would wait for this thread: marked, it is refused.
        let _held = WriteLockHeld::mark();
        // A panicking callback must not stop the writer.
        drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (warning.warn)(lag))));
    }
}
