//! Subscriptions: catch up from the log, then follow new commits.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::error::Error;
use crate::event::{OwnedBatch, OwnedEvent, SealedBatch};
use crate::store::{Varve, WeakVarve};
use crate::typed::Event;

/// A batch also ends once its events' metadata and payloads reach this many bytes, so large
/// payloads cannot make one batch hold `DEFAULT_BATCH` blobs in memory.
const BATCH_BYTES: usize = 1 << 20;

/// A live feed of the log: first every committed event from a starting seq, then each new
/// commit as it happens. In order, without gaps or duplicates, across the hand-off from
/// catching up to following.
///
/// Implements [`futures_core::Stream`]; [`next_event`](Self::next_event) is the same as an
/// inherent method. It reads the log in batches of up to [`DEFAULT_BATCH`](Self::DEFAULT_BATCH)
/// events, or about 1 MiB of metadata and payload, on tokio's blocking pool, so it never
/// blocks the runtime's workers on LMDB. It needs a tokio runtime.
///
/// While it is behind, one blocking-pool task reads batch after batch, each in its own read
/// transaction, [`READ_AHEAD`](Self::READ_AHEAD) batches ahead of the events handed out, so
/// reading and handling overlap. That task ends as soon as the log is read to its end, when the
/// read-ahead is full (the next call after the caller has drained it starts another), or
/// after 16 batches (the next task starts at once), so neither a slow consumer nor a long
/// catch-up keeps a thread of the pool. A subscription holds at most `READ_AHEAD + 1`
/// batches in memory (the one being handed out, and the ones read or being read ahead),
/// whatever the backlog.
///
/// It follows commits made through this process's [`Varve`] through the store's watch of the
/// last committed seq. Commits by *other processes* are picked up by polling, every 100 ms by
/// default ([`poll_interval`](Self::poll_interval)). A subscription does not keep the store
/// open: the feed ends (`None`) when the last `Varve` handle is dropped.
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), varvedb::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Varve::open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("a", b"1".to_vec())])?;
/// let mut feed = db.subscribe(1);
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("b", b"2".to_vec())])?;
/// let first = feed.next_event().await.expect("open")?;
/// let second = feed.next_event().await.expect("open")?;
/// assert_eq!((first.seq, second.seq, &*second.type_tag), (1, 2, "b"));
/// # Ok(()) }
/// ```
pub struct Subscription {
    state: Option<FeedState>,
    /// The `Stream` impl's call in flight; it owns the state until it completes.
    pending: Option<InFlight>,
}

/// A `next_event` call owned by the `Stream` impl; it hands the state back when done.
type InFlight =
    Pin<Box<dyn std::future::Future<Output = (FeedState, Option<Result<OwnedEvent, Error>>)> + Send>>;

/// The subscription's state: where it is, what it holds, how it reads.
struct FeedState {
    db: WeakVarve,
    /// The seq after the newest batch received from the reader.
    next: u64,
    filter: Option<Arc<HashSet<String>>>,
    batch: usize,
    buffered: SealedBatch,
    watch: tokio::sync::watch::Receiver<u64>,
    poll_interval: Duration,
    /// The read-ahead task's batches, while one runs or has batches not yet received. It
    /// outlives a cancelled call, so cancellations cannot pile up reads.
    reader: Option<Reader>,
    /// Events and bytes of the newest batch received if it was full, else zeros: the room a
    /// new task's first batch starts with. A catch-up's next batch is likely as large; a
    /// caught-up feed's is likely a few events, which need no large buffers.
    room: (usize, usize),
}

/// The receiving end of a read-ahead task.
struct Reader {
    batches: tokio::sync::mpsc::Receiver<Result<Batch, Error>>,
    /// Whether the task sent anything: a task ends without a batch only if the store closed,
    /// the read panicked, or the runtime is shutting down (the task never ran).
    received: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("position", &self.state.as_ref().map(|c| c.next))
            .finish_non_exhaustive()
    }
}

/// A read of one batch: the events kept, the seq to read from next, and the error that
/// stopped the batch early, if any (`next` is then the damaged seq).
struct Batch {
    events: SealedBatch,
    /// The bytes of metadata and payload the events hold.
    bytes: usize,
    next: u64,
    error: Option<Error>,
    /// Whether the batch ended at one of its budgets rather than at the end of the log.
    full: bool,
    /// Whether its task stopped after this full batch only to give its thread back: the
    /// next task reads on from `next` at once.
    handoff: bool,
}

impl Varve {
    /// A live feed of the log from `from_seq` on (seqs start at 1; 0 is the same as 1).
    #[must_use]
    pub fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription {
            state: Some(FeedState {
                db: self.downgrade(),
                next: from_seq.max(1),
                filter: None,
                batch: Subscription::DEFAULT_BATCH,
                buffered: SealedBatch::default(),
                watch: self.watch_last_seq(),
                poll_interval: Duration::from_millis(100),
                reader: None,
                room: (0, 0),
            }),
            pending: None,
        }
    }
}

impl Subscription {
    /// Events read per trip to the store, unless [`batch_size`](Self::batch_size) says
    /// otherwise; bounds a subscription's memory whatever the backlog. Large enough that
    /// handing a batch from the reading thread to the consumer costs little per event.
    pub const DEFAULT_BATCH: usize = 2048;

    /// Batches a subscription reads ahead of the events it hands out, counting the one
    /// being read.
    pub const READ_AHEAD: usize = 2;

    /// Delivers only events with these type tags. Other events are skipped by their tag,
    /// without copying their payload (their checksum is still verified; in an encrypted
    /// store they are still decrypted).
    #[must_use]
    pub fn of_types<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let state = self.state_mut();
        state.filter = Some(Arc::new(tags.into_iter().map(Into::into).collect()));
        // Batches read ahead with the old filter are dropped (read again from `next`).
        state.reader = None;
        self
    }

    /// Also delivers events of type `E` (by its type tag, at any schema version): the typed
    /// form of [`of_types`](Self::of_types). Calls add up, so
    /// `db.subscribe(1).of::<OrderPlaced>().of::<OrderShipped>()` delivers both types and
    /// nothing else.
    ///
    /// ```
    /// use varvedb::{Event, ExpectedVersion, NewEvent, Varve};
    /// #[derive(Event)] struct Placed { cents: u64 }
    /// #[derive(Event)] struct Shipped;
    /// #[derive(Event)] struct Noted;
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// let events = [NewEvent::from_event(&Placed { cents: 5 })?, NewEvent::from_event(&Noted)?, NewEvent::from_event(&Shipped)?];
    /// db.append(1u128, ExpectedVersion::Auto, events)?;
    /// let mut feed = db.subscribe(1).of::<Placed>().of::<Shipped>();
    /// assert_eq!(feed.next_event().await.unwrap()?.seq, 1);
    /// assert_eq!(feed.next_event().await.unwrap()?.seq, 3);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
    /// ```
    #[must_use]
    pub fn of<E: Event>(mut self) -> Self {
        let state = self.state_mut();
        let mut tags = state.filter.as_deref().cloned().unwrap_or_default();
        tags.insert(E::NAME.to_owned());
        state.filter = Some(Arc::new(tags));
        state.reader = None;
        self
    }

    /// Events read per trip to the store (at least 1). A batch also ends at about 1 MiB of
    /// metadata and payload.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        let state = self.state_mut();
        state.batch = events.max(1);
        state.reader = None;
        self
    }

    /// How often to look for commits made by other processes (this process's commits wake
    /// the subscription at once).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.state_mut().poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The seq the subscription will deliver next (or skip, if filtered out): resubscribing
    /// from here continues exactly where this subscription is.
    #[must_use]
    ///
    /// # Panics
    /// If called while the `Stream` impl has a call in flight (between a `Pending` poll and
    /// its completion).
    pub fn position(&self) -> u64 {
        let state = self.state.as_ref().expect("no Stream poll in flight");
        // Buffered events are read but not delivered yet: the position is the first of them.
        state.buffered.peek_seq().unwrap_or(state.next)
    }

    #[inline]
    fn state_mut(&mut self) -> &mut FeedState {
        self.state.as_mut().expect("no Stream poll in flight")
    }

    /// The next event: at once if one is buffered or committed, otherwise when one commits.
    /// `None` once the store has closed.
    ///
    /// # Errors
    /// A damaged record (the subscription stops before it: the same call returns the same
    /// error again), or a storage error.
    ///
    /// # Cancel safety
    /// Cancel safe. If the future is dropped before it completes, no event is lost or
    /// skipped: the subscription's position only advances when a batch read in full is
    /// received, and events are handed out of the buffer only by a completed call.
    pub async fn next_event(&mut self) -> Option<Result<OwnedEvent, Error>> {
        if let Some(pending) = self.pending.as_mut() {
            // Finish the `Stream` impl's call in flight first: it owns the state.
            let (state, item) = pending.await;
            self.pending = None;
            self.state = Some(state);
            return item;
        }
        let state = self.state_mut();
        // Most calls find an event in the buffer: hand it out without entering the reading
        // state machine.
        if let Some(event) = state.buffered.next() {
            return Some(Ok(event));
        }
        state.next_event().await
    }
}

impl FeedState {
    async fn next_event(&mut self) -> Option<Result<OwnedEvent, Error>> {
        loop {
            if let Some(event) = self.buffered.next() {
                return Some(Ok(event));
            }
            let batch = match self.next_batch().await {
                None => return None, // every `Varve` handle is gone: the store closed
                Some(Ok(batch)) => batch,
                Some(Err(e)) => return Some(Err(e)),
            };
            let advanced = batch.next > self.next;
            self.next = batch.next;
            self.buffered = batch.events;
            if let Some(e) = batch.error {
                // Deliver the good events read before the damage first; the error comes when
                // they are drained, and again on every call after it.
                if self.buffered.is_empty() {
                    return Some(Err(e));
                }
                continue;
            }
            if advanced {
                continue;
            }
            // Caught up: wait for this process's next commit, or poll for other processes'.
            // A batch that did not advance is its reader's last, read after that reader
            // started, so after the watch was marked seen: a commit it missed has woken
            // the watch.
            match tokio::time::timeout(self.poll_interval, self.watch.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return None, // the store closed
            }
        }
    }

    /// The next batch from the read-ahead task, starting one from `next` if none runs.
    async fn next_batch(&mut self) -> Option<Result<Batch, Error>> {
        loop {
            if self.reader.is_none() {
                self.start_reader(self.next)?;
            }
            let reader = self.reader.as_mut()?;
            // `recv` is cancel safe: a batch is either received here or stays queued.
            if let Some(batch) = reader.batches.recv().await {
                reader.received = true;
                self.room = match &batch {
                    Ok(b) if b.full => (b.events.len(), b.bytes),
                    _ => (0, 0),
                };
                if matches!(&batch, Ok(b) if b.handoff) {
                    // Its task gave its thread back; the next one reads on while this
                    // batch is handed out. (The store may have closed: then none starts.)
                    self.reader = None;
                    if let Ok(b) = &batch {
                        self.start_reader(b.next);
                    }
                }
                return Some(batch);
            }
            // The task ended and everything it sent is received.
            let received = reader.received;
            self.reader = None;
            if !received {
                drop(self.db.upgrade()?);
                return Some(Err(Error::Internal(
                    "a subscription's read task panicked, or its runtime is shutting down",
                )));
            }
        }
    }

    /// Starts a read-ahead task from `from`; `None` if the store has closed.
    fn start_reader(&mut self, from: u64) -> Option<()> {
        drop(self.db.upgrade()?);
        // Mark the watch's current value as seen *before* the task reads: a commit that
        // lands after this point wakes the caught-up wait, so none is missed.
        self.watch.borrow_and_update();
        let (tx, rx) = tokio::sync::mpsc::channel(Subscription::READ_AHEAD);
        let (db, limit, filter, room) = (self.db.clone(), self.batch, self.filter.clone(), self.room);
        tokio::task::spawn_blocking(move || read_ahead(&db, from, limit, filter.as_deref(), room, &tx));
        self.reader = Some(Reader { batches: rx, received: false });
        Some(())
    }
}

/// Full batches one read-ahead task reads before it gives its blocking-pool thread back, so
/// that long catch-ups of many subscriptions cannot hold the whole pool. The subscription
/// starts the next task as soon as it takes the last batch, so reading goes on meanwhile.
const TASK_BATCHES: usize = 16;

/// The read-ahead task: batches from `from` on, until one ends at the end of the log or on
/// an error, the store closes, the subscription is dropped, [`TASK_BATCHES`] were read (the
/// last is marked as the hand-off), or `READ_AHEAD` batches wait (then the subscription
/// starts another task once it has taken them).
fn read_ahead(
    db: &WeakVarve,
    mut from: u64,
    limit: usize,
    filter: Option<&HashSet<String>>,
    mut room: (usize, usize),
    tx: &tokio::sync::mpsc::Sender<Result<Batch, Error>>,
) {
    for n in 1..=TASK_BATCHES {
        let Ok(permit) = tx.try_reserve() else { return };
        let Some(db) = db.upgrade() else { return };
        let mut read = read_log_batch(&db, from, limit, filter, room);
        drop(db);
        let more = match &mut read {
            Ok(batch) => {
                from = batch.next;
                room = (batch.events.len(), batch.bytes);
                batch.handoff = n == TASK_BATCHES && batch.full && batch.error.is_none();
                batch.full && batch.error.is_none()
            }
            Err(_) => false,
        };
        permit.send(read);
        if !more {
            return;
        }
    }
}

fn read_log_batch(
    db: &Varve,
    from: u64,
    limit: usize,
    filter: Option<&HashSet<String>>,
    (events, bytes): (usize, usize),
) -> Result<Batch, Error> {
    let view = db.begin_read()?;
    let mut events = OwnedBatch::with_capacity(events.min(limit), bytes.min(BATCH_BYTES));
    let mut next = from;
    // A filtered feed may skip many events per delivered one; bound the work per trip too.
    let mut scanned = 0usize;
    let mut log = view.read_all(from)?;
    let read = log.try_for_each_reusing(&mut Vec::new(), |event| {
        next = event.seq() + 1;
        scanned += 1;
        if filter.is_none_or(|tags| tags.contains(event.type_tag())) {
            events.push(event);
        }
        if events.len() >= limit || events.bytes() >= BATCH_BYTES || scanned >= limit.saturating_mul(16) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    // A damaged record ends the batch: the events before it are delivered first.
    let (error, full) = match read {
        Ok(flow) => (None, flow.is_break()),
        Err(error) => (Some(error), false),
    };
    Ok(Batch { bytes: events.bytes(), events: events.seal(), next, error, full, handoff: false })
}

impl Stream for Subscription {
    type Item = Result<OwnedEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            let mut state = self.state.take().expect("the state is home between calls");
            if let Some(event) = state.buffered.next() {
                self.state = Some(state);
                return Poll::Ready(Some(Ok(event)));
            }
            // The future owns the state while it runs, so nothing borrows `self` across polls.
            self.pending = Some(Box::pin(async move {
                let item = state.next_event().await;
                (state, item)
            }));
        }
        let fut = self.pending.as_mut().expect("set above");
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((state, item)) => {
                self.pending = None;
                self.state = Some(state);
                Poll::Ready(item)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, NewEvent};

    #[test]
    fn a_batch_shares_one_buffer_and_one_copy_of_each_tag() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let events = (0..6u8).map(|i| {
            NewEvent::new(if i % 2 == 0 { "even" } else { "odd" }, vec![i; 10]).with_metadata(vec![i; 3])
        });
        db.append(1u128, ExpectedVersion::NoStream, events).unwrap();
        let batch = read_log_batch(&db, 1, Subscription::DEFAULT_BATCH, None, (0, 0)).unwrap();
        assert!(!batch.full, "ended at the end of the log");
        let events: Vec<_> = batch.events.collect();
        assert_eq!((events.len(), batch.next), (6, 7));
        for (i, e) in events.iter().enumerate() {
            let i = u8::try_from(i).unwrap();
            assert_eq!((&e.payload[..], &e.metadata[..]), (&[i; 10][..], &[i; 3][..]));
            assert_eq!(&*e.type_tag, if i % 2 == 0 { "even" } else { "odd" });
        }
        let (first, third) = (&events[0], &events[2]);
        assert!(Arc::ptr_eq(&first.type_tag, &third.type_tag), "one copy of the tag");
        // Consecutive in one allocation: metadata, payload, next metadata, ...
        let base = first.metadata.as_ptr() as usize;
        assert_eq!(third.payload.as_ptr() as usize - base, 2 * 13 + 3);
        // Each event still equals its stand-alone copy.
        let view = db.begin_read().unwrap();
        assert_eq!(view.event(3).unwrap().unwrap().to_owned_event(), *third);
    }

    #[test]
    fn the_read_ahead_stops_when_its_queue_is_full_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let events = (1..=100u64).map(|seq| NewEvent::new("t", seq.to_le_bytes().to_vec()));
        db.append(1u128, ExpectedVersion::NoStream, events).unwrap();
        let weak = db.downgrade();
        let (tx, mut rx) = tokio::sync::mpsc::channel(Subscription::READ_AHEAD);
        // On a thread of its own: a read-ahead that waited for room would hang here.
        let reader = std::thread::spawn(move || read_ahead(&weak, 1, 10, None, (0, 0), &tx));
        reader.join().unwrap();
        let mut next = 1;
        for _ in 0..Subscription::READ_AHEAD {
            let batch = rx.try_recv().unwrap().unwrap();
            assert!(batch.full);
            assert_eq!(
                batch.events.map(|e| e.seq).collect::<Vec<_>>(),
                (next..next + 10).collect::<Vec<_>>()
            );
            next = batch.next;
        }
        assert!(rx.try_recv().is_err(), "it stopped at READ_AHEAD batches and dropped its sender");

        // From the last batch taken on, it reads to the end of the log and stops there.
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        read_ahead(&db.downgrade(), next, 10, None, (0, 0), &tx);
        drop(tx);
        let mut batches = 0;
        while let Ok(batch) = rx.try_recv() {
            let batch = batch.unwrap();
            for e in batch.events {
                assert_eq!(e.seq, next);
                next += 1;
            }
            assert_eq!(batch.next, next);
            batches += 1;
        }
        assert_eq!(next, 101);
        // Eight full batches, then the empty read that finds the end.
        assert_eq!(batches, 9);

        // A long catch-up gives its thread back after `TASK_BATCHES`, marking the last.
        let (tx, mut rx) = tokio::sync::mpsc::channel(TASK_BATCHES + 1);
        read_ahead(&db.downgrade(), 1, 2, None, (0, 0), &tx);
        let handoffs: Vec<bool> =
            std::iter::from_fn(|| rx.try_recv().ok()).map(|b| b.unwrap().handoff).collect();
        assert_eq!(handoffs.len(), TASK_BATCHES);
        assert!(handoffs[TASK_BATCHES - 1] && !handoffs[..TASK_BATCHES - 1].contains(&true));

        // The store closed: it reads nothing.
        let weak = db.downgrade();
        drop(db);
        let (tx, mut rx) = tokio::sync::mpsc::channel(Subscription::READ_AHEAD);
        read_ahead(&weak, 1, 10, None, (0, 0), &tx);
        drop(tx);
        assert!(rx.try_recv().is_err(), "a closed store yields no batch");
    }

    #[tokio::test]
    async fn a_new_read_task_starts_with_the_room_of_the_last_full_batch_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        db.append(1u128, ExpectedVersion::Auto, (0..10u8).map(|i| NewEvent::new("n", vec![i; 5]))).unwrap();
        let mut feed = db.subscribe(1).batch_size(4);
        let room = |feed: &Subscription| feed.state.as_ref().unwrap().room;
        feed.next_event().await.unwrap().unwrap();
        assert_eq!(room(&feed), (4, 20), "a full batch of four 5-byte payloads");
        for _ in 1..10 {
            feed.next_event().await.unwrap().unwrap();
        }
        // The last batch held the two events left: a caught-up feed starts small.
        assert_eq!(room(&feed), (0, 0));
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("n", vec![1; 5])]).unwrap();
        feed.next_event().await.unwrap().unwrap();
        assert_eq!(room(&feed), (0, 0));
    }

    #[test]
    fn a_batch_ends_at_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let big = BATCH_BYTES / 3 + 1;
        for i in 0..5u8 {
            db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("big", vec![i; big])]).unwrap();
        }
        let batch = read_log_batch(&db, 1, Subscription::DEFAULT_BATCH, None, (0, 0)).unwrap();
        assert!(batch.full);
        assert_eq!((batch.events.len(), batch.next), (3, 4), "three events pass the budget");
        let rest = read_log_batch(&db, batch.next, Subscription::DEFAULT_BATCH, None, (0, 0)).unwrap();
        assert!(!rest.full);
        assert_eq!((rest.events.len(), rest.next), (2, 6));
        assert!(rest.events.into_iter().all(|e| e.payload.len() == big));
    }
}
