//! Event processing: typed event handlers that keep their position in the store.
//!
//! - A [`Projection`] builds a read model in its own typed [`Table`]s. Each batch of events,
//!   the model's changes and the new checkpoint commit in one write transaction: every event
//!   is applied exactly once, even across crashes.
//! - A [`Processor`] has effects outside the store (mail, HTTP, another system). Its
//!   checkpoint is committed after the handler succeeds: at-least-once, with the event's
//!   seq as idempotency key, retries with backoff, and a stop on a poison event.
//!
//! Both skip events they do not handle by their type tag, without decoding them, and run
//! under a [`Runner`](runner::Runner) (tokio task or plain thread) that follows new commits.
//!
//! Where things are:
//! - `projection`: [`Projection`], [`ProjectionTxn`], the exactly-once step.
//! - `processor`: [`Processor`], [`Retry`], the at-least-once step with retry and backoff.
//! - `checkpoint`: where checkpoints are stored, and
//!   [`Varve::checkpoint`](crate::Varve::checkpoint) / [`Varve::lag`](crate::Varve::lag).
//! - `table`: the typed tables of read models.
//! - `runner`: following the log in the background.
//! - here: what both kinds share (handler errors, [`Progress`], handler lookup by type).

mod checkpoint;
mod processor;
mod projection;
pub(crate) mod runner;
pub(crate) mod table;

use crate::error::Error;
use crate::event::RecordedEvent;
use crate::typed::EventInfo;
pub use processor::{Processor, Retry};
pub use projection::{Projection, ProjectionTxn};
pub use table::{Key, Table, Value};

/// What a handler may fail with: any error, boxed. Storage errors convert with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Why a projection or processor stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// A handler failed on the event at `seq` (after the retries a [`Processor`] allows).
    /// The checkpoint is just before it: after a fix, processing resumes at this event.
    #[error("processor {processor:?} failed on the event at seq {seq} (type {type_tag:?}): {source}")]
    Handler {
        /// The processor's name.
        processor: String,
        /// The event that failed.
        seq: u64,
        /// Its type tag.
        type_tag: String,
        /// The handler's error.
        source: HandlerError,
    },
    /// The processor handles events of this type, but not at this schema version, and no
    /// handler's event upcasts from it: skipping it would silently leave it out of the read
    /// model. Add a handler for the version, or an `upcast` link to it.
    #[error(
        "processor {processor:?} has no handler for {type_tag:?} version {version} (seq {seq}); it handles version {handled}, which has no upcast path from it"
    )]
    UnhandledVersion {
        /// The processor's name.
        processor: String,
        /// The event.
        seq: u64,
        /// Its type tag.
        type_tag: String,
        /// Its schema version.
        version: u32,
        /// The (newest) version of the type the processor handles.
        handled: u32,
    },
    /// Another instance of the processor moved its checkpoint meanwhile (from `expected` to
    /// `found`). Run one instance per name.
    #[error(
        "the checkpoint of {processor:?} moved from {expected} to {found} under this instance; run one instance per processor"
    )]
    CheckpointMoved {
        /// The processor's name.
        processor: String,
        /// The checkpoint this instance started from.
        expected: u64,
        /// The checkpoint it found when committing.
        found: u64,
    },
    /// A projection and a processor were given the same name: they would share one
    /// checkpoint, and each would skip the events the other has processed. Nothing was
    /// processed. Rename one of them.
    #[error("the name {name:?} belongs to a {owner}; a {wanted} cannot share its checkpoint")]
    NameInUse {
        /// The name.
        name: String,
        /// The kind that wanted it (`projection` or `processor`).
        wanted: &'static str,
        /// The kind that owns it.
        owner: String,
    },
    /// A handler panicked; the batch in progress was not committed.
    #[error("a handler panicked: {0}")]
    Panicked(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events looked at (handled or skipped by tag).
    pub scanned: u64,
    /// The checkpoint after the step: the last seq processed.
    pub checkpoint: u64,
}

/// The handler for `event` (one of its version first, else one that upcasts it), or an
/// error if the processor handles its tag at other versions only.
fn handler_for<'h, H>(
    processor: &str,
    handlers: &'h mut [(EventInfo, H)],
    event: &RecordedEvent<'_>,
) -> Result<Option<&'h mut H>, ProcessorError> {
    let found = handlers.iter().position(|(info, _)| info.matches(event)).or_else(|| {
        handlers.iter().position(|(info, _)| info.accepts(event.type_tag(), event.schema_version()))
    });
    if let Some(i) = found {
        return Ok(Some(&mut handlers[i].1));
    }
    if let Some(handled) =
        handlers.iter().filter(|(info, _)| info.name == event.type_tag()).map(|(info, _)| info.version).max()
    {
        return Err(ProcessorError::UnhandledVersion {
            processor: processor.to_owned(),
            seq: event.seq(),
            type_tag: event.type_tag().to_owned(),
            version: event.schema_version(),
            handled,
        });
    }
    Ok(None)
}

/// A handler was given an event it does not read: `handler_for` chose it, so this does not
/// happen, but is an error rather than a panic.
fn not_read() -> Error {
    Error::Internal("a handler was given an event of a version it does not read")
}

/// Refuses a second handler for one event type, which would never run.
fn assert_no_handler_yet<H>(handlers: &[(EventInfo, H)], info: EventInfo, owner: &str) {
    assert!(
        !handlers.iter().any(|(i, _)| i.name == info.name && i.version == info.version),
        "{owner} already handles {:?} version {}; one handler per event type",
        info.name,
        info.version
    );
}
