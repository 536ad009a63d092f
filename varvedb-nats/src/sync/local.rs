//! `LocalStream<A>`: an aggregate's stream as a node sees it, accepted and pending.

use std::marker::PhantomData;

use varvedb::{Aggregate, Handle, StreamId, UpcastBuffer};

use super::journal::{self, Draft, Entry, Pending};
use super::{LocalExecuteError, SyncCommand, SyncError, SyncNode, command};

/// A typed handle on the stream of aggregate `A` on a [`SyncNode`]: its accepted events
/// (the hub's) followed by the node's pending ones. Cheap to clone.
pub struct LocalStream<A> {
    node: SyncNode,
    id: StreamId,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for LocalStream<A> {
    fn clone(&self) -> Self {
        LocalStream { node: self.node.clone(), id: self.id, _aggregate: PhantomData }
    }
}

impl<A> std::fmt::Debug for LocalStream<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStream")
            .field("aggregate", &std::any::type_name::<A>())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An aggregate's state folded from its accepted events, then its pending ones.
#[derive(Debug, Clone)]
pub struct LocalLoaded<A> {
    state: A,
    accepted: u32,
    pending: u32,
    conflicted: bool,
}

impl<A> LocalLoaded<A> {
    /// The folded state.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The state, consuming the wrapper.
    pub fn into_state(self) -> A {
        self.state
    }

    /// The version of the last accepted event folded (0: none).
    pub fn accepted_version(&self) -> u32 {
        self.accepted
    }

    /// How many pending events were folded after the accepted ones.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// The local version: accepted and pending events.
    pub fn version(&self) -> u32 {
        self.accepted + self.pending
    }

    /// Whether the stream has pending events decided on an accepted state that has moved
    /// on since (a conflict the next sync or execute resolves). They are not folded then:
    /// the state is the accepted one.
    pub fn is_conflicted(&self) -> bool {
        self.conflicted
    }
}

/// What [`LocalStream::execute`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalExecuted {
    /// The stream's local version after the command.
    pub version: u32,
    /// The id of the pending event the command decided (`None`: it decided none).
    pub event_id: Option<u128>,
}

/// Whether an event is in the hub's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// Accepted by the hub: the event at `seq` of the accepted log (the same on every node).
    Accepted {
        /// Its seq in the accepted log.
        seq: u64,
    },
    /// Written by this node and not accepted yet.
    Pending,
}

/// One event of a stream as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalEvent {
    /// Its version: final for an accepted event, provisional for a pending one.
    pub version: u32,
    /// Accepted or pending.
    pub status: EventStatus,
    /// The event's id.
    pub id: Option<u128>,
    /// The type tag.
    pub type_tag: String,
    /// When it was written, in microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// The payload (an rkyv archive for a typed event).
    pub payload: Vec<u8>,
}

impl<A: Aggregate> LocalStream<A> {
    pub(crate) fn new(node: SyncNode, id: StreamId) -> Self {
        LocalStream { node, id, _aggregate: PhantomData }
    }

    /// The stream's id.
    #[must_use]
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Folds the accepted events into `A`, then the pending ones.
    ///
    /// # Errors
    /// As [`Stream::load`](varvedb::Stream::load) on either store.
    pub fn load(&self) -> Result<LocalLoaded<A>, SyncError> {
        let pending = self.node.lock();
        self.load_locked(&pending)
    }

    fn load_locked(&self, pending: &Pending) -> Result<LocalLoaded<A>, SyncError> {
        let loaded = self.node.inner.accepted.stream::<A>(self.id).load()?;
        let accepted = loaded.version();
        let mut state = loaded.into_state();
        let entries = self.entries(pending);
        let conflicted = !journal::on_head(entries, accepted);
        let mut folded = 0;
        if !conflicted && !entries.is_empty() {
            let view = self.node.inner.local.begin_read()?;
            let mut buf = UpcastBuffer::new();
            for entry in entries {
                state.apply_recorded(&self.pending_event(&view, entry)?, &mut buf)?;
                folded += 1;
            }
        }
        Ok(LocalLoaded { state, accepted, pending: folded, conflicted })
    }

    fn entries<'p>(&self, pending: &'p Pending) -> &'p [Entry] {
        pending.streams.get(&self.id.as_u128()).map_or(&[], Vec::as_slice)
    }

    fn pending_event<'v>(
        &self,
        view: &'v varvedb::ReadView<'_>,
        entry: &Entry,
    ) -> Result<varvedb::RecordedEvent<'v>, SyncError> {
        view.stream_event(self.id, entry.local_version)?.ok_or_else(|| SyncError::CorruptJournal {
            version: entry.local_version,
            reason: format!("the pending event of stream {} is missing", self.id),
        })
    }

    /// Runs a command on the local state (accepted, then pending): the event it decides
    /// is written to the pending store with the command, to be pushed by the next sync. A
    /// conflict the last sync left on this stream (a crash between import and
    /// resolution) is resolved first.
    ///
    /// A command decides at most one event: the hub takes events one by one, so another
    /// node's event could split several.
    ///
    /// # Errors
    /// [`LocalExecuteError::Rejected`] with the handler's error;
    /// [`LocalExecuteError::TooManyEvents`]; [`LocalExecuteError::Sync`] for store
    /// errors, and with [`SyncError::ReservedStream`] for the one stream id a sync node
    /// keeps for itself. Nothing is written on an error.
    pub fn execute<C>(&self, command: &C) -> Result<LocalExecuted, LocalExecuteError<<A as Handle<C>>::Error>>
    where
        A: Handle<C>,
        <A as Handle<C>>::Error: std::fmt::Display,
        C: SyncCommand,
    {
        if self.id.as_u128() == journal::JOURNAL {
            return Err(SyncError::ReservedStream(self.id).into());
        }
        self.node.register::<A, C>()?;
        let mut pending = self.node.lock();
        self.node.resolve_reported(&mut pending, self.id)?;
        let loaded = self.load_locked(&pending)?;
        let events = loaded.state().handle(command).map_err(LocalExecuteError::Rejected)?;
        let event = match <[_; 1]>::try_from(events) {
            Ok([event]) => event.into_new_event()?,
            Err(events) if events.is_empty() => {
                return Ok(LocalExecuted { version: loaded.version(), event_id: None });
            }
            Err(events) => return Err(LocalExecuteError::TooManyEvents { count: events.len() }),
        };
        let draft = Draft {
            stream: self.id,
            base: loaded.version(),
            order: pending.next_order,
            kind: A::KIND.to_owned(),
            command: command::record(command)?,
        };
        let entry = journal::write(&self.node.inner.local, draft, event, None)?;
        pending.next_order += 1;
        let event_id = entry.event_id;
        pending.streams.entry(self.id.as_u128()).or_default().push(entry);
        Ok(LocalExecuted { version: loaded.version() + 1, event_id: Some(event_id) })
    }

    /// Pending events of the stream.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.entries(&self.node.lock()).len()
    }

    /// The stream's events: accepted ones, then pending ones, each marked.
    ///
    /// # Errors
    /// Store errors.
    pub fn history(&self) -> Result<Vec<LocalEvent>, SyncError> {
        let pending = self.node.lock();
        let mut out = Vec::new();
        let view = self.node.inner.accepted.begin_read()?;
        for event in view.read_stream(self.id, 1)? {
            let event = event?;
            out.push(LocalEvent {
                version: event.version(),
                status: EventStatus::Accepted { seq: event.seq() },
                id: event.id(),
                type_tag: event.type_tag().to_owned(),
                timestamp_micros: event.timestamp_micros(),
                payload: event.payload().to_vec(),
            });
        }
        let view = self.node.inner.local.begin_read()?;
        for entry in self.entries(&pending) {
            let event = self.pending_event(&view, entry)?;
            out.push(LocalEvent {
                version: entry.base + 1,
                status: EventStatus::Pending,
                id: event.id(),
                type_tag: event.type_tag().to_owned(),
                timestamp_micros: event.timestamp_micros(),
                payload: event.payload().to_vec(),
            });
        }
        Ok(out)
    }
}
