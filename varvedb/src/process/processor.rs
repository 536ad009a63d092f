//! Processors: handlers with effects outside the store, run at least once per event.
//!
//! A step copies a batch out of the store, runs the handlers with retry and exponential
//! backoff ([`Retry`]), then commits the checkpoint. A crash between the effects and the
//! commit repeats them, hence at-least-once.

use std::time::Duration;

use super::checkpoint::{Owner, check_owner, claim, read_checkpoint, write_checkpoint};
use super::{HandlerError, ProcessorError, Progress, assert_no_handler_yet, handler_for, not_read, runner};
use crate::event::RecordedEvent;
use crate::store::Varve;
use crate::typed::upcast::{archived_as, no_path};
use crate::typed::{Event, EventInfo, UpcastBuffer};

/// A registered handler, its event type erased so one list holds handlers of every type.
type EffectHandler = Box<dyn FnMut(&RecordedEvent<'_>) -> Result<(), HandlerError> + Send>;

/// A handler with effects outside the store, run at least once per event.
///
/// The checkpoint is committed after handlers succeed, so after a crash the events since the
/// last checkpoint are handled again: use the seq ([`RecordedEvent::seq`]) as an idempotency
/// key. A failing handler is retried with exponential backoff; when the retries run out, the
/// processor stops with [`ProcessorError::Handler`] naming the seq, its checkpoint just before
/// that event, so it resumes there once the cause is fixed.
///
/// ```
/// use varvedb::{Event, ExpectedVersion, NewEvent, Processor, Varve};
/// use std::sync::{Arc, Mutex};
///
/// #[derive(Event)]
/// struct Registered { email: String }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let db = Varve::open(dir.path())?;
/// db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&Registered { email: "a@b.c".into() })?])?;
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// let outbox = Arc::clone(&sent);
/// let mut mailer = Processor::new("welcome-mail").on::<Registered>(move |e, meta| {
///     // `meta.seq()` is the idempotency key for the mail service.
///     outbox.lock().unwrap().push((meta.seq(), e.email.to_string()));
///     Ok(())
/// });
/// mailer.catch_up(&db)?;
/// assert_eq!(*sent.lock().unwrap(), [(1, "a@b.c".to_owned())]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Processor {
    name: String,
    handlers: Vec<(EventInfo, EffectHandler)>,
    on_shredded: Option<EffectHandler>,
    batch_size: usize,
    retry: Retry,
}

/// How a [`Processor`] retries a failing handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per event, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// 5 attempts, 10 ms doubling up to 1 s.
    fn default() -> Self {
        Retry { attempts: 5, initial_backoff: Duration::from_millis(10), max_backoff: Duration::from_secs(1) }
    }
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let events: Vec<&str> = self.handlers.iter().map(|(i, _)| i.name).collect();
        f.debug_struct("Processor").field("name", &self.name).field("events", &events).finish_non_exhaustive()
    }
}

impl Processor {
    /// A processor named `name` (its checkpoint's key).
    ///
    /// # Panics
    /// If `name` is empty or longer than 255 bytes.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(!name.is_empty() && name.len() <= 255, "a processor name is 1 to 255 bytes");
        Processor { name, handlers: Vec::new(), on_shredded: None, batch_size: 100, retry: Retry::default() }
    }

    /// Handles events of type `E`: `f(archived_event, metadata)`.
    ///
    /// # Panics
    /// If the processor already handles `E`'s type and version.
    #[must_use]
    pub fn on<E: Event>(
        mut self,
        mut f: impl FnMut(&E::Archived, &RecordedEvent<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Self {
        let info = EventInfo::of::<E>();
        assert_no_handler_yet(&self.handlers, info, &self.name);
        // Older stored versions of `E` are upcast into one buffer this handler keeps.
        let mut upcast = UpcastBuffer::new();
        self.handlers.push((
            info,
            Box::new(move |event| match archived_as::<E>(event, &mut upcast)? {
                Some(archived) => f(archived, event),
                None => Err(no_path(&[info], event).unwrap_or_else(not_read).into()),
            }),
        ));
        self
    }

    /// Handles events of crypto-shredded streams ([`Varve::shred`]), whatever their type,
    /// with the same retries as other handlers. Without it, such events are skipped: their
    /// contents are gone. Like [`Projection::on_shredded`](super::Projection::on_shredded),
    /// it sees only shredded events the processor reads after the shred, not events it had
    /// handled before.
    #[must_use]
    pub fn on_shredded(
        mut self,
        f: impl FnMut(&RecordedEvent<'_>) -> Result<(), HandlerError> + Send + 'static,
    ) -> Self {
        self.on_shredded = Some(Box::new(f));
        self
    }

    /// Events handled between checkpoint commits (default 100): a crash repeats at most this
    /// many.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// The retry policy (default [`Retry::default`]).
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Retry { attempts: retry.attempts.max(1), ..retry };
        self
    }

    /// The processor's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handles the next batch after the checkpoint, then commits the checkpoint.
    ///
    /// The batch is copied out of the store first, so no read transaction stays open while
    /// handlers run or back off (an open one would keep the file from reusing pages).
    ///
    /// # Errors
    /// [`ProcessorError::Handler`] when an event's retries run out (the checkpoint then
    /// stands just before it); [`ProcessorError::UnhandledVersion`];
    /// [`ProcessorError::CheckpointMoved`] if another instance advanced the checkpoint;
    /// [`ProcessorError::NameInUse`] if a projection has this name; [`ProcessorError::Store`].
    ///
    /// # Blocking
    /// Runs the handlers and sleeps between retries on the calling thread.
    pub fn step(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let name = self.name.clone();
        crate::trace::step("processor", &name, || self.step_untraced(db), |p| (p.scanned, p.checkpoint))
    }

    /// [`step`](Self::step), untraced.
    fn step_untraced(&mut self, db: &Varve) -> Result<Progress, ProcessorError> {
        let storage = db.storage();
        let (from, claimed, batch) = {
            let view = db.begin_read()?;
            let claimed = check_owner(storage, view.txn(), &self.name, Owner::Processor)?;
            let from = read_checkpoint(storage, view.txn(), &self.name)?;
            let mut batch = crate::event::OwnedBatch::default();
            let mut log = view.read_all(from.saturating_add(1))?;
            let mut buf = Vec::new();
            while batch.len() < self.batch_size
                && let Some(event) = log.next_reusing(&mut buf)
            {
                batch.push(&event?);
            }
            (from, claimed, batch.finish())
        };
        let mut done = from;
        let mut failure = None;
        'events: for owned in &batch {
            let event = RecordedEvent::from_owned(owned);
            let handler = if event.is_shredded() {
                Ok(self.on_shredded.as_mut())
            } else {
                handler_for(&self.name, &mut self.handlers, &event)
            };
            let handler = match handler {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if let Some(handler) = handler {
                let mut backoff = self.retry.initial_backoff;
                let mut attempt = 1;
                loop {
                    match handler(&event) {
                        Ok(()) => break,
                        Err(source) if attempt >= self.retry.attempts => {
                            failure = Some(ProcessorError::Handler {
                                processor: self.name.clone(),
                                seq: event.seq(),
                                type_tag: event.type_tag().to_owned(),
                                source,
                            });
                            break 'events;
                        }
                        Err(_) => {
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(self.retry.max_backoff);
                            attempt += 1;
                        }
                    }
                }
            }
            done = event.seq();
        }
        if done > from {
            // Compare-and-set: a second instance must not move the checkpoint backwards.
            let mut txn = storage.write_txn()?;
            let found = read_checkpoint(storage, &txn, &self.name)?;
            if found != from {
                return Err(ProcessorError::CheckpointMoved {
                    processor: self.name.clone(),
                    expected: from,
                    found,
                });
            }
            write_checkpoint(storage, &mut txn, &self.name, done)?;
            if !claimed {
                check_owner(storage, &txn, &self.name, Owner::Processor)?;
                claim(storage, &mut txn, &self.name, Owner::Processor)?;
            }
            storage.commit(txn)?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Progress { scanned: batch.len() as u64, checkpoint: done }),
        }
    }

    /// Steps until every event committed so far is handled. Returns the checkpoint.
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub fn catch_up(&mut self, db: &Varve) -> Result<u64, ProcessorError> {
        runner::catch_up(self, db)
    }
}
