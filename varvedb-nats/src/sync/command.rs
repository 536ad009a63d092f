//! Commands recorded with their events, and the registry that runs them again.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};

use varvedb::rkyv::api::high::HighDeserializer;
use varvedb::rkyv::rancor;
use varvedb::{Aggregate, Event, Handle, NewEvent, StreamId, UpcastBuffer, Varve};

use super::SyncError;
use super::journal::{self, CommandRecord, Draft, Entry};

/// A command a [`LocalStream`](crate::LocalStream) can execute: an rkyv archive with a
/// stable name, so the node records it with the event it decided and can decide again on
/// another state after a conflict.
///
/// Implemented for every [`Event`] whose archive deserializes, which `#[derive(Event)]`
/// gives: derive `Event` on a command type (its `name` and `version` identify it in the
/// pending store, its fingerprint guards against reading it with another shape).
pub trait SyncCommand: Event + Sized {
    /// The command's bytes.
    ///
    /// # Errors
    /// rkyv's message if it fails to serialize.
    fn to_bytes(&self) -> Result<Vec<u8>, String>;

    /// The command back from [`to_bytes`](Self::to_bytes)' output, checked.
    ///
    /// # Errors
    /// rkyv's message if the bytes are not a valid archive of the command.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String>;
}

impl<C> SyncCommand for C
where
    C: Event,
    C::Archived: varvedb::rkyv::Deserialize<C, HighDeserializer<rancor::Error>>,
{
    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        varvedb::rkyv::to_bytes::<rancor::Error>(self).map(|v| v.to_vec()).map_err(|e| e.to_string())
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        varvedb::rkyv::from_bytes::<C, rancor::Error>(bytes).map_err(|e| e.to_string())
    }
}

pub(crate) fn record<C: SyncCommand>(command: &C) -> Result<CommandRecord, SyncError> {
    let bytes = command.to_bytes().map_err(varvedb::Error::Serialize)?;
    Ok(CommandRecord {
        tag: C::NAME.to_owned(),
        version: C::VERSION,
        fingerprint: <C as Event>::FINGERPRINT,
        bytes,
    })
}

/// A re-run command's outcome.
pub(crate) enum Decided {
    /// Its new entry.
    Kept(Entry),
    /// Dropped, with why.
    Rejected(String),
}

/// Runs a stream's pending commands again on its accepted state.
pub(crate) trait Rerun: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;

    /// Decides `entries` again, in order, on the accepted state of `stream`, writing each
    /// new event as it goes (so the next command sees it).
    fn rerun(
        &self,
        accepted: &Varve,
        local: &Varve,
        stream: StreamId,
        entries: &[Entry],
    ) -> Result<Vec<(u128, Decided)>, SyncError>;
}

type RunFn<A> = fn(&A, &[u8]) -> Result<Vec<NewEvent>, String>;

/// A command type's name and schema version.
type CommandKey = (String, u32);

/// The commands of aggregate `A` this node can run again.
struct Typed<A> {
    commands: Mutex<HashMap<CommandKey, (u64, RunFn<A>)>>,
}

fn run<A, C>(state: &A, bytes: &[u8]) -> Result<Vec<NewEvent>, String>
where
    A: Handle<C>,
    A::Error: Display,
    C: SyncCommand,
{
    let command = C::from_bytes(bytes)?;
    let events = state.handle(&command).map_err(|e| e.to_string())?;
    events.into_iter().map(|e| e.into_new_event().map_err(|e| e.to_string())).collect()
}

impl<A: Aggregate> Rerun for Typed<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn rerun(
        &self,
        accepted: &Varve,
        local: &Varve,
        stream: StreamId,
        entries: &[Entry],
    ) -> Result<Vec<(u128, Decided)>, SyncError> {
        let loaded = accepted.stream::<A>(stream).load()?;
        let mut base = loaded.version();
        let mut state = loaded.into_state();
        let mut buf = UpcastBuffer::new();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let cmd = &entry.command;
            let run = {
                let commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
                commands.get(&(cmd.tag.clone(), cmd.version)).copied()
            };
            let Some((fingerprint, run)) = run else {
                return Err(SyncError::UnknownCommand {
                    kind: A::KIND.to_owned(),
                    command: cmd.tag.clone(),
                    version: cmd.version,
                });
            };
            if fingerprint != cmd.fingerprint {
                return Err(SyncError::CommandMismatch {
                    command: cmd.tag.clone(),
                    version: cmd.version,
                    stored: cmd.fingerprint,
                    found: fingerprint,
                });
            }
            let decided = match run(&state, &cmd.bytes).map(<[NewEvent; 1]>::try_from) {
                Ok(Ok([event])) => {
                    let draft = Draft {
                        stream,
                        base,
                        order: entry.order,
                        kind: entry.kind.clone(),
                        command: cmd.clone(),
                    };
                    let new = journal::write(local, draft, event, Some(entry.event_id))?;
                    let view = local.begin_read()?;
                    let recorded = view.stream_event(stream, new.local_version)?.ok_or_else(|| {
                        SyncError::CorruptJournal {
                            version: new.local_version,
                            reason: "a pending event just written is missing".into(),
                        }
                    })?;
                    state.apply_recorded(&recorded, &mut buf)?;
                    base += 1;
                    Decided::Kept(new)
                }
                Ok(Err(events)) => {
                    Decided::Rejected(format!("decides {} events on the new state", events.len()))
                }
                Err(reason) => Decided::Rejected(reason),
            };
            out.push((entry.event_id, decided));
        }
        Ok(out)
    }
}

/// The aggregates and commands a node can run again, by aggregate kind.
#[derive(Default)]
pub(crate) struct Registry {
    kinds: Mutex<HashMap<String, Arc<dyn Rerun>>>,
}

impl Registry {
    pub(crate) fn register<A, C>(&self) -> Result<(), SyncError>
    where
        A: Handle<C>,
        A::Error: Display,
        C: SyncCommand,
    {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = kinds
            .entry(A::KIND.to_owned())
            .or_insert_with(|| Arc::new(Typed::<A> { commands: Mutex::new(HashMap::new()) }));
        let Some(typed) = entry.as_any().downcast_ref::<Typed<A>>() else {
            return Err(SyncError::KindClash { kind: A::KIND.to_owned() });
        };
        typed
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((C::NAME.to_owned(), C::VERSION), (<C as Event>::FINGERPRINT, run::<A, C>));
        Ok(())
    }

    pub(crate) fn get(&self, kind: &str) -> Option<Arc<dyn Rerun>> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner).get(kind).cloned()
    }
}
