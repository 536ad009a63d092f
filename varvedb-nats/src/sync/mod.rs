//! Local-first sync: nodes that each write offline and agree on one log through a
//! JetStream hub.
//!
//! A [`SyncNode`] keeps two stores in its directory. `accepted/` is a replica store holding
//! the hub's log: hub message *n* is seq *n*, encoded the same on every node, so every
//! node's accepted log is the same bytes. `pending/` is a plain store holding what the node
//! wrote and the hub has not accepted yet, with the command that decided each event. A
//! [`LocalStream`] loads an aggregate from both (its pending events marked as such) and
//! executes commands into the pending store. [`SyncNode::sync`] imports the hub's new
//! messages, resolves conflicts, and pushes pending events one by one per stream with
//! `Nats-Expected-Last-Subject-Sequence`: two nodes that wrote to one stream offline cannot
//! both win. The loser's pending commands are run again on the new accepted state through
//! the aggregate's [`Handle`](varvedb::Handle) impl, or handed to a callback
//! ([`SyncNode::on_conflict`]).

mod command;
mod error;
mod journal;
mod local;
mod message;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use varvedb::{Aggregate, Handle, OwnedEvent, ReplicatedEvent, StreamId, Varve};

pub use command::SyncCommand;
pub use error::{LocalExecuteError, SyncError};
pub use local::{EventStatus, LocalEvent, LocalExecuted, LocalLoaded, LocalStream};

use journal::{Entry, Pending};

/// Where a [`SyncNode`] syncs.
///
/// ## Defaults
/// JetStream stream `VARVE_SYNC` with subjects `varve.sync.>`, a timeout of 5 s, at most 16
/// pull-resolve-push rounds per [`SyncNode::sync`], hub messages fetched 64 at a time.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The hub's JetStream stream (created if missing).
    pub stream: String,
    /// The subject prefix: a stream's events go to `<prefix>.<stream id in hex>`.
    pub prefix: String,
    /// Longest wait for JetStream's answer to a request.
    pub timeout: Duration,
    /// Most rounds of one sync; pending events still refused after them stay pending and
    /// are counted in [`SyncReport::pending`].
    pub max_rounds: u32,
    /// Hub messages requested at once while importing.
    pub fetch_parallel: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            stream: "VARVE_SYNC".into(),
            prefix: "varve.sync".into(),
            timeout: Duration::from_secs(5),
            max_rounds: 16,
            fetch_parallel: 64,
        }
    }
}

/// What to do with a stream's pending commands when the hub accepted other nodes' events
/// on that stream first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Resolution {
    /// Decide each command again, in order, on the new accepted state; a command the state
    /// now rejects is dropped and reported. The default.
    #[default]
    Rerun,
    /// Drop them all.
    Discard,
}

/// One pending command of a stream in conflict, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingCommand {
    /// The id of the event it decided.
    pub event_id: u128,
    /// The command's type tag ([`Event::NAME`](varvedb::Event::NAME)).
    pub command: String,
    /// The command's schema version.
    pub version: u32,
    /// The command's rkyv bytes.
    pub bytes: Vec<u8>,
}

impl Entry {
    fn pending_command(&self) -> PendingCommand {
        PendingCommand {
            event_id: self.event_id,
            command: self.command.tag.clone(),
            version: self.command.version,
            bytes: self.command.bytes.clone(),
        }
    }
}

impl PendingCommand {
    /// The command as a `C`, if it is one.
    ///
    /// # Errors
    /// rkyv's message if the bytes are not a `C`.
    pub fn decode<C: SyncCommand>(&self) -> Result<Option<C>, String> {
        if self.command != C::NAME || self.version != C::VERSION {
            return Ok(None);
        }
        C::from_bytes(&self.bytes).map(Some)
    }
}

/// A command dropped after a conflict: its new state rejected it, or a callback discarded
/// it. Kept in the node's pending store, so a report lost with a crashed process is not.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DroppedCommand {
    /// The stream it was for.
    pub stream: StreamId,
    /// The command, as recorded.
    pub command: PendingCommand,
    /// Why: the handler's message, or the discard.
    pub reason: String,
}

/// A stream the node wrote to offline and the hub took other nodes' events for first.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncConflict {
    /// The stream.
    pub stream: StreamId,
    /// Its kind (the aggregate).
    pub kind: String,
    /// The accepted version the pending commands were decided on.
    pub base_version: u32,
    /// The node's pending commands of the stream, in order.
    pub pending: Vec<PendingCommand>,
    /// The events the hub accepted on the stream since `base_version`, in order.
    pub remote: Vec<OwnedEvent>,
}

/// How a conflict was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConflictOutcome {
    /// The conflict.
    pub conflict: SyncConflict,
    /// What was done.
    pub resolution: Resolution,
    /// Commands whose new events are pending now.
    pub kept: usize,
    /// Commands dropped: their event id and why (the handler's rejection on the new state,
    /// or a discard).
    pub dropped: Vec<(u128, String)>,
}

/// What one [`SyncNode::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Hub messages imported into the accepted log.
    pub imported: u64,
    /// Pending events the hub took.
    pub pushed: u64,
    /// Pushes the hub answered as duplicates of an earlier push (whose answer was lost).
    pub duplicates: u64,
    /// Pushes the hub refused because the stream had moved on.
    pub refused: u64,
    /// Conflicts met and how they were resolved.
    pub conflicts: Vec<ConflictOutcome>,
    /// Rounds run.
    pub rounds: u32,
    /// Pending events left after the sync (0 unless the rounds ran out).
    pub pending: usize,
}

type ConflictCallback = Arc<dyn Fn(&SyncConflict) -> Resolution + Send + Sync>;

/// One node of local-first sync: an accepted log shared with every node through the hub,
/// and the node's own pending events.
///
/// ```no_run
/// # use varvedb::{aggregate, Event, Handle, Pending};
/// # #[derive(Event)] struct Deposited { cents: u64 }
/// # #[derive(Event)] struct Deposit { cents: u64 }
/// # #[derive(Default)] struct Account { balance: u64 }
/// # #[aggregate] impl Account { fn deposited(&mut self, e: &ArchivedDeposited) { self.balance += e.cents.to_native(); } }
/// # impl Handle<Deposit> for Account {
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&self, c: &Deposit) -> Result<Vec<Pending<Self>>, Self::Error> { Ok(vec![Deposited { cents: c.cents }.into()]) }
/// # }
/// # async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
/// use varvedb_nats::{SyncConfig, SyncNode};
/// let node = SyncNode::open(dir, SyncConfig::default())?;
/// let account = node.stream::<Account>(7u128);
/// account.execute(&Deposit { cents: 250 })?; // offline: pending
/// assert_eq!(account.load()?.pending(), 1);
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// node.sync(&client).await?; // online: accepted
/// assert_eq!(account.load()?.pending(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SyncNode {
    inner: Arc<Inner>,
}

struct Inner {
    accepted: Varve,
    local: Varve,
    config: SyncConfig,
    /// Serializes every change of the pending entries (local commands, imports,
    /// resolutions) and every read that must see them together with the accepted log.
    pending: Mutex<Pending>,
    commands: command::Registry,
    on_conflict: Mutex<Option<ConflictCallback>>,
    /// Conflicts resolved outside a sync (by an execute), for the next sync's report.
    unreported: Mutex<Vec<ConflictOutcome>>,
}

impl std::fmt::Debug for SyncNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncNode").field("stream", &self.inner.config.stream).finish_non_exhaustive()
    }
}

/// One stream's pending events, ready to push.
struct Outgoing {
    stream: StreamId,
    expected: u64,
    messages: Vec<(u128, bytes::Bytes)>,
}

impl SyncNode {
    /// Opens (or creates) a node in `dir`: the accepted log in `dir/accepted`, a replica
    /// store, and the pending store in `dir/pending`.
    ///
    /// # Errors
    /// Store errors; [`SyncError::CorruptJournal`] for a damaged pending store.
    pub fn open(dir: impl AsRef<Path>, config: SyncConfig) -> Result<Self, SyncError> {
        let dir = dir.as_ref();
        let (accepted_dir, local_dir) = (dir.join("accepted"), dir.join("pending"));
        for d in [&accepted_dir, &local_dir] {
            std::fs::create_dir_all(d).map_err(varvedb::Error::Io)?;
        }
        let accepted = varvedb::Options::new().replica(true).open(&accepted_dir)?;
        let local = Varve::open(&local_dir)?;
        let pending = journal::replay(&local, &accepted)?;
        Ok(SyncNode {
            inner: Arc::new(Inner {
                accepted,
                local,
                config,
                pending: Mutex::new(pending),
                commands: command::Registry::default(),
                on_conflict: Mutex::new(None),
                unreported: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The accepted log: the hub's, the same on every node. A replica store: reads,
    /// subscriptions, projections and processors work on it; it takes no appends.
    #[must_use]
    pub fn accepted(&self) -> &Varve {
        &self.inner.accepted
    }

    /// A typed handle on stream `id` of aggregate `A`, seeing accepted and pending events.
    #[must_use]
    pub fn stream<A: Aggregate>(&self, id: impl Into<StreamId>) -> LocalStream<A> {
        LocalStream::new(self.clone(), id.into())
    }

    /// Lets the node run commands `C` of aggregate `A` again after a conflict. Executing a
    /// `C` registers it too; register every command type before the first sync after a
    /// restart, when pending commands may need a re-run before any is executed.
    ///
    /// # Errors
    /// [`SyncError::KindClash`] if another aggregate type with `A`'s kind is registered.
    pub fn register<A, C>(&self) -> Result<(), SyncError>
    where
        A: Handle<C>,
        A::Error: std::fmt::Display,
        C: SyncCommand,
    {
        self.inner.commands.register::<A, C>()
    }

    /// Decides conflicts with `callback` instead of [`Resolution::Rerun`]. It runs while the
    /// node is locked: it must not call the node.
    pub fn on_conflict(&self, callback: impl Fn(&SyncConflict) -> Resolution + Send + Sync + 'static) {
        *self.inner.on_conflict.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(callback));
    }

    /// Every command this node dropped after a conflict, in the order dropped, across
    /// restarts (the [`SyncReport`]s say the same as it happens).
    ///
    /// # Errors
    /// Store errors; [`SyncError::CorruptJournal`].
    pub fn dropped_commands(&self) -> Result<Vec<DroppedCommand>, SyncError> {
        Ok(journal::dropped_for_good(&self.inner.local)?
            .into_iter()
            .map(|(e, reason)| DroppedCommand { stream: e.stream, command: e.pending_command(), reason })
            .collect())
    }

    /// Pending events of all streams.
    #[must_use]
    pub fn pending_count(&self) -> usize {
        self.lock().count()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Syncs with the hub through `client`: imports the hub's new events, resolves
    /// conflicts, pushes pending events, and repeats until nothing is pending (or
    /// [`SyncConfig::max_rounds`] ran out); the accepted log then holds every event the hub
    /// held when the last round began.
    ///
    /// # Errors
    /// [`SyncError::Nats`] when NATS fails: call again later, nothing is lost;
    /// [`SyncError::UnknownCommand`] when a pending command must be re-run and its type is
    /// not registered; [`SyncError::BadMessage`] and [`SyncError::HubBehind`] for a hub
    /// that is not one; store errors.
    ///
    /// # Cancel safety
    /// Cancel safe: each import, and each command of a resolution, commits whole or not at
    /// all; a resolution cut short leaves its stream off its head, so the next sync or
    /// execute takes it up again; a push whose answer is lost is in the hub (imported by
    /// the next sync) or pushed again with the same message id. Conflicts resolved by a
    /// sync that was dropped are reported by the next one.
    pub async fn sync(&self, client: &async_nats::Client) -> Result<SyncReport, SyncError> {
        let config = &self.inner.config;
        let js = jetstream::ContextBuilder::new().timeout(config.timeout).build(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.prefix)],
            ..Default::default()
        })
        .await
        .map_err(SyncError::nats)?;
        let mut report = SyncReport::default();
        while report.rounds < config.max_rounds.max(1) {
            report.rounds += 1;
            report.imported += self.pull(&js).await?;
            let node = self.clone();
            tokio::task::spawn_blocking(move || node.resolve_all()).await.map_err(SyncError::task)??;
            let node = self.clone();
            let outgoing =
                tokio::task::spawn_blocking(move || node.outgoing()).await.map_err(SyncError::task)??;
            if outgoing.is_empty() {
                break;
            }
            for out in outgoing {
                self.push(&js, out, &mut report).await?;
            }
        }
        report.pending = self.pending_count();
        // Taken only now: a sync dropped before this point leaves its conflicts to the next.
        report.conflicts.append(&mut self.inner.unreported.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(report)
    }

    /// Imports every hub message after the accepted log's end; returns how many.
    async fn pull(&self, js: &jetstream::Context) -> Result<u64, SyncError> {
        let config = &self.inner.config;
        let stream = js.get_stream(&config.stream).await.map_err(SyncError::nats)?;
        let end = stream.cached_info().state.last_sequence;
        let mut last = self.inner.accepted.begin_read()?.last_seq()?;
        if last > end {
            return Err(SyncError::HubBehind { hub: end, accepted: last });
        }
        let mut imported = 0;
        while last < end {
            let upto = end.min(last + config.fetch_parallel.max(1) as u64);
            let gets = (last + 1..=upto).map(|seq| stream.get_raw_message(seq));
            let messages = futures_util::future::try_join_all(gets).await.map_err(SyncError::nats)?;
            let events = messages
                .iter()
                .map(|m| message::decode(&config.prefix, m.sequence, &m.subject, &m.payload))
                .collect::<Result<Vec<_>, _>>()?;
            let count = events.len() as u64;
            let node = self.clone();
            last = tokio::task::spawn_blocking(move || node.import(&events))
                .await
                .map_err(SyncError::task)??;
            imported += count;
        }
        Ok(imported)
    }

    /// Imports hub events and forgets the pending entries they accept, under the lock.
    fn import(&self, events: &[ReplicatedEvent]) -> Result<u64, SyncError> {
        let mut pending = self.lock();
        // A sync dropped mid-way may have left its import running, and it may have taken
        // some of these already.
        let done = self.inner.accepted.begin_read()?.last_seq()?;
        let events = &events[events.iter().take_while(|e| e.seq() <= done).count()..];
        let last = self.inner.accepted.import_replicated(events)?;
        let ids: HashSet<u128> = events.iter().filter_map(ReplicatedEvent::id).collect();
        pending.accept(&ids);
        Ok(last)
    }

    /// Resolves every stream whose pending events no longer sit on its accepted head.
    fn resolve_all(&self) -> Result<(), SyncError> {
        let mut pending = self.lock();
        let streams: Vec<u128> = pending.streams.keys().copied().collect();
        for stream in streams {
            self.resolve_reported(&mut pending, StreamId::from(stream))?;
        }
        Ok(())
    }

    /// Resolves `stream` if it is in conflict; the outcome goes to the report of the sync
    /// that finishes next.
    fn resolve_reported(&self, pending: &mut Pending, stream: StreamId) -> Result<(), SyncError> {
        if let Some(outcome) = self.resolve(pending, stream)? {
            self.inner.unreported.lock().unwrap_or_else(PoisonError::into_inner).push(outcome);
        }
        Ok(())
    }

    /// Resolves `stream` if it is in conflict.
    fn resolve(&self, pending: &mut Pending, stream: StreamId) -> Result<Option<ConflictOutcome>, SyncError> {
        let Some(entries) = pending.streams.get(&stream.as_u128()) else { return Ok(None) };
        let view = self.inner.accepted.begin_read()?;
        let head = view.stream_version(stream)?.unwrap_or(0);
        if journal::on_head(entries, head) {
            return Ok(None);
        }
        let base = entries.first().map_or(0, |e| e.base);
        let remote = view
            .read_stream(stream, base + 1)?
            .map(|e| e.map(|e| e.to_owned_event()))
            .collect::<Result<Vec<_>, _>>()?;
        drop(view);
        let conflict = SyncConflict {
            stream,
            kind: entries.first().map(|e| e.kind.clone()).unwrap_or_default(),
            base_version: base,
            pending: entries.iter().map(Entry::pending_command).collect(),
            remote,
        };
        let callback = self.inner.on_conflict.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let resolution = callback.map_or(Resolution::Rerun, |f| f(&conflict));
        let entries = pending.streams.remove(&stream.as_u128()).unwrap_or_default();
        let (kept, dropped) = match resolution {
            Resolution::Rerun => match self.rerun(stream, &entries) {
                Ok(r) => r,
                Err(e) => {
                    // Nothing changed for the entries not yet re-run: put back what the
                    // journal now holds for this stream.
                    pending.streams.insert(stream.as_u128(), self.reread(stream)?);
                    return Err(e);
                }
            },
            Resolution::Discard => {
                let dropped: Vec<(u128, String)> =
                    entries.iter().map(|e| (e.event_id, "discarded after a conflict".to_owned())).collect();
                if let Err(e) = journal::drop_entries(&self.inner.local, &dropped) {
                    // The entries stay pending in memory as in the journal (an outcome the store
                    // could not tell is settled by reopening, which replays the journal).
                    pending.streams.insert(stream.as_u128(), entries);
                    return Err(e);
                }
                (Vec::new(), dropped)
            }
        };
        let kept_count = kept.len();
        if !kept.is_empty() {
            pending.streams.insert(stream.as_u128(), kept);
        }
        Ok(Some(ConflictOutcome { conflict, resolution, kept: kept_count, dropped }))
    }

    /// Runs a stream's pending commands again; returns the new entries and the dropped ones.
    #[expect(clippy::type_complexity, reason = "a private pair of lists")]
    fn rerun(
        &self,
        stream: StreamId,
        entries: &[Entry],
    ) -> Result<(Vec<Entry>, Vec<(u128, String)>), SyncError> {
        let Some(first) = entries.first() else { return Ok((Vec::new(), Vec::new())) };
        let Some(rerun) = self.inner.commands.get(&first.kind) else {
            return Err(SyncError::UnknownCommand {
                kind: first.kind.clone(),
                command: first.command.tag.clone(),
                version: first.command.version,
            });
        };
        let decided = rerun.rerun(&self.inner.accepted, &self.inner.local, stream, entries)?;
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for (old, decision) in decided {
            match decision {
                command::Decided::Kept(entry) => kept.push(entry),
                command::Decided::Rejected(reason) => dropped.push((old, reason)),
            }
        }
        journal::drop_entries(&self.inner.local, &dropped)?;
        Ok((kept, dropped))
    }

    /// A stream's pending entries as the stores hold them (after a failed re-run).
    fn reread(&self, stream: StreamId) -> Result<Vec<Entry>, SyncError> {
        let mut all = journal::replay(&self.inner.local, &self.inner.accepted)?;
        Ok(all.streams.remove(&stream.as_u128()).unwrap_or_default())
    }

    /// Every stream's pending events that sit on its accepted head, with the hub seq of
    /// that head.
    fn outgoing(&self) -> Result<Vec<Outgoing>, SyncError> {
        let pending = self.lock();
        let accepted = self.inner.accepted.begin_read()?;
        let local = self.inner.local.begin_read()?;
        let mut out = Vec::new();
        for (stream, entries) in &pending.streams {
            let stream = StreamId::from(*stream);
            let head = accepted.stream_version(stream)?.unwrap_or(0);
            if entries.is_empty() || !journal::on_head(entries, head) {
                continue;
            }
            let expected = accepted.stream_event(stream, head)?.map_or(0, |e| e.seq());
            let mut messages = Vec::with_capacity(entries.len());
            for entry in entries {
                let event = local.stream_event(stream, entry.local_version)?.ok_or_else(|| {
                    SyncError::CorruptJournal {
                        version: entry.local_version,
                        reason: format!("the pending event of stream {stream} is missing"),
                    }
                })?;
                messages.push((entry.event_id, message::encode(&event, stream, entry.base + 1, &entry.kind)));
            }
            out.push(Outgoing { stream, expected, messages });
        }
        Ok(out)
    }

    /// Pushes one stream's pending events in order, each expecting the one before as the
    /// subject's last; stops at the first the hub refuses.
    async fn push(
        &self,
        js: &jetstream::Context,
        out: Outgoing,
        report: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let subject = crate::subject(&self.inner.config.prefix, out.stream);
        let mut expected = out.expected;
        for (id, body) in out.messages {
            let ack = js
                .publish_with_headers(subject.clone(), message::headers(id, expected), body)
                .await
                .map_err(SyncError::nats)?;
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        report.duplicates += 1;
                    } else {
                        report.pushed += 1;
                    }
                    expected = ack.sequence;
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    report.refused += 1;
                    return Ok(());
                }
                Err(e) => return Err(SyncError::nats(e)),
            }
        }
        Ok(())
    }
}
