//! The node's pending store: the events it wrote that the hub has not accepted yet, and
//! the commands that decided them.
//!
//! A plain VarveDB store beside the accepted one. Each local command writes, in one
//! transaction, its event to the aggregate's stream (with a fresh event id) and a
//! `pending` entry to the journal stream [`JOURNAL`]; a re-run or a discarded command adds
//! a `dropped` entry. Entry payloads (integers little-endian):
//!
//! - `pending`: `stream u128 ‖ base version u32 ‖ local version u32 ‖ order u64 ‖ event id
//!   u128 ‖ kind length u8 ‖ kind ‖ command tag length u8 ‖ command tag ‖ command version
//!   u32 ‖ command fingerprint u64 ‖ command bytes`;
//! - `dropped`: `event id u128 ‖ replaced u8 (1: by a re-run's new event, 0: for good) ‖
//!   reason, UTF-8`.
//!
//! Acceptance writes nothing here: an entry whose event id is in the accepted log is
//! accepted, which the node works out when it opens. So the two stores never need one
//! transaction.

use std::collections::{BTreeMap, HashMap, HashSet};

use varvedb::{ExpectedVersion, NewEvent, ReadView, StreamId, Varve, WriteBatch};

use super::SyncError;

/// The journal's stream id in the pending store (an id no aggregate stream is given by
/// chance: "varvedb-nats-jrn" in ASCII).
pub(crate) const JOURNAL: u128 = u128::from_be_bytes(*b"varvedb-nats-jrn");
const JOURNAL_KIND: &str = "varvedb-nats.journal";
const PENDING: &str = "varvedb-nats.pending";
const DROPPED: &str = "varvedb-nats.dropped";

/// A command as recorded: its identity and its rkyv bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandRecord {
    pub(crate) tag: String,
    pub(crate) version: u32,
    pub(crate) fingerprint: u64,
    pub(crate) bytes: Vec<u8>,
}

/// One pending event and the command that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) stream: StreamId,
    /// The accepted version of the stream the event was decided on (with the pending
    /// events before it): the event's version is `base + 1`.
    pub(crate) base: u32,
    /// Its version in the pending store's copy of the stream, where its bytes are.
    pub(crate) local_version: u32,
    /// The node's order of its commands; kept when a command is re-run.
    pub(crate) order: u64,
    pub(crate) event_id: u128,
    pub(crate) kind: String,
    pub(crate) command: CommandRecord,
}

/// The pending events of every stream, in order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) next_order: u64,
    pub(crate) streams: BTreeMap<u128, Vec<Entry>>,
}

impl Pending {
    pub(crate) fn count(&self) -> usize {
        self.streams.values().map(Vec::len).sum()
    }

    /// Forgets the entries whose events the hub accepted.
    pub(crate) fn accept(&mut self, ids: &HashSet<u128>) {
        for entries in self.streams.values_mut() {
            entries.retain(|e| !ids.contains(&e.event_id));
        }
        self.streams.retain(|_, e| !e.is_empty());
    }
}

/// Whether `entries` sit on the accepted head `head`, one after the other: they can be
/// pushed as they are. Otherwise the stream is in conflict.
pub(crate) fn on_head(entries: &[Entry], head: u32) -> bool {
    entries.iter().zip(0u32..).all(|(e, i)| Some(e.base) == head.checked_add(i))
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + e.kind.len() + e.command.tag.len() + e.command.bytes.len());
    out.extend_from_slice(&e.stream.as_u128().to_le_bytes());
    out.extend_from_slice(&e.base.to_le_bytes());
    out.extend_from_slice(&e.local_version.to_le_bytes());
    out.extend_from_slice(&e.order.to_le_bytes());
    out.extend_from_slice(&e.event_id.to_le_bytes());
    // Kinds and type tags are at most 255 bytes: the store refuses longer ones.
    out.push(e.kind.len() as u8);
    out.extend_from_slice(e.kind.as_bytes());
    out.push(e.command.tag.len() as u8);
    out.extend_from_slice(e.command.tag.as_bytes());
    out.extend_from_slice(&e.command.version.to_le_bytes());
    out.extend_from_slice(&e.command.fingerprint.to_le_bytes());
    out.extend_from_slice(&e.command.bytes);
    out
}

/// A cursor over an entry's bytes that names what is missing.
struct Reader<'a> {
    bytes: &'a [u8],
    version: u32,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SyncError> {
        if self.bytes.len() < n {
            return Err(SyncError::CorruptJournal { version: self.version, reason: "too short".into() });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SyncError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn string(&mut self) -> Result<String, SyncError> {
        let [len] = self.array::<1>()?;
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| SyncError::CorruptJournal {
            version: self.version,
            reason: "a name is not UTF-8".into(),
        })
    }
}

fn decode_entry(version: u32, bytes: &[u8]) -> Result<Entry, SyncError> {
    let mut r = Reader { bytes, version };
    let stream = StreamId::from(u128::from_le_bytes(r.array()?));
    let base = u32::from_le_bytes(r.array()?);
    let local_version = u32::from_le_bytes(r.array()?);
    let order = u64::from_le_bytes(r.array()?);
    let event_id = u128::from_le_bytes(r.array()?);
    let kind = r.string()?;
    let tag = r.string()?;
    let command_version = u32::from_le_bytes(r.array()?);
    let fingerprint = u64::from_le_bytes(r.array()?);
    let command = CommandRecord { tag, version: command_version, fingerprint, bytes: r.bytes.to_vec() };
    // The entry's event has version `base + 1`, and the next command's order is `order + 1`:
    // an entry that leaves no room for either was not written by a node.
    if base == u32::MAX || local_version == 0 || order == u64::MAX {
        return Err(SyncError::CorruptJournal { version, reason: "a version or order out of range".into() });
    }
    Ok(Entry { stream, base, local_version, order, event_id, kind, command })
}

fn dropped_event(id: u128, replaced: bool, reason: &str) -> NewEvent {
    let mut payload = id.to_le_bytes().to_vec();
    payload.push(u8::from(replaced));
    payload.extend_from_slice(reason.as_bytes());
    NewEvent::new(DROPPED, payload)
}

/// A fresh random event id.
pub(crate) fn new_id() -> Result<u128, SyncError> {
    let (a, b) = (getrandom::u64(), getrandom::u64());
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(u128::from(a) << 64 | u128::from(b)),
        _ => {
            Err(SyncError::Store(varvedb::Error::Io(std::io::Error::other("no randomness for an event id"))))
        }
    }
}

/// Writes a pending event with its entry, in one transaction; with `replaces`, drops that
/// entry in the same transaction (a re-run command). Returns the entry written.
pub(crate) fn write(
    local: &Varve,
    draft: Draft,
    event: NewEvent,
    replaces: Option<u128>,
) -> Result<Entry, SyncError> {
    // Fresh ids for every decision: a re-run event is a new event, and the hub's
    // deduplication must not take it for the one it replaces.
    let event_id = new_id()?;
    let event = event.with_id(event_id);
    let head = local.begin_read()?.stream_version(draft.stream)?.unwrap_or(0);
    let mut entry = Entry {
        stream: draft.stream,
        base: draft.base,
        // At `u32::MAX` the append below is the store's typed version overflow.
        local_version: head.saturating_add(1),
        order: draft.order,
        event_id,
        kind: draft.kind,
        command: draft.command,
    };
    let mut journal: Vec<NewEvent> =
        replaces.map(|old| dropped_event(old, true, "re-run")).into_iter().collect();
    journal.push(NewEvent::new(PENDING, encode_entry(&entry)));
    let mut batch = WriteBatch::new();
    // The node's commands are serialized by its lock, so the stream is where it was read.
    batch.append_kind(draft.stream, &entry.kind, ExpectedVersion::Exact(head), [event]);
    batch.append_kind(JOURNAL, JOURNAL_KIND, ExpectedVersion::Auto, journal);
    let appended = local.write(batch)?;
    if let Some(a) = appended.iter().find(|a| a.stream == draft.stream) {
        entry.local_version = a.last_version;
    }
    Ok(entry)
}

/// What a pending entry is made from, before its event is written.
pub(crate) struct Draft {
    pub(crate) stream: StreamId,
    pub(crate) base: u32,
    pub(crate) order: u64,
    pub(crate) kind: String,
    pub(crate) command: CommandRecord,
}

/// Drops entries (a rejected re-run, a discarded conflict), in one transaction.
pub(crate) fn drop_entries(local: &Varve, dropped: &[(u128, String)]) -> Result<(), SyncError> {
    if dropped.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::new();
    batch.append_kind(
        JOURNAL,
        JOURNAL_KIND,
        ExpectedVersion::Auto,
        dropped.iter().map(|(id, reason)| dropped_event(*id, false, reason)),
    );
    local.write(batch)?;
    Ok(())
}

/// The journal read whole: every pending entry ever written, in order, and the dropped
/// ones with whether a re-run replaced them and why.
struct Journal {
    entries: Vec<Entry>,
    dropped: Vec<(u128, bool, String)>,
}

fn read_journal(local: &Varve) -> Result<Journal, SyncError> {
    let view = local.begin_read()?;
    let mut journal = Journal { entries: Vec::new(), dropped: Vec::new() };
    for event in view.read_stream(JOURNAL, 1)? {
        let event = event?;
        match event.type_tag() {
            PENDING => journal.entries.push(decode_entry(event.version(), event.payload())?),
            DROPPED => {
                let mut r = Reader { bytes: event.payload(), version: event.version() };
                let id = u128::from_le_bytes(r.array()?);
                let [replaced] = r.array::<1>()?;
                let reason = String::from_utf8_lossy(r.bytes).into_owned();
                journal.dropped.push((id, replaced == 1, reason));
            }
            other => {
                return Err(SyncError::CorruptJournal {
                    version: event.version(),
                    reason: format!("unknown entry type {other:?}"),
                });
            }
        }
    }
    Ok(journal)
}

/// The entries dropped for good (rejected by a re-run, discarded), with why, in the order
/// they were dropped.
pub(crate) fn dropped_for_good(local: &Varve) -> Result<Vec<(Entry, String)>, SyncError> {
    let journal = read_journal(local)?;
    let mut by_id: HashMap<u128, Entry> = journal.entries.into_iter().map(|e| (e.event_id, e)).collect();
    Ok(journal
        .dropped
        .into_iter()
        .filter(|(_, replaced, _)| !replaced)
        .filter_map(|(id, _, reason)| by_id.remove(&id).map(|e| (e, reason)))
        .collect())
}

/// The pending entries as the journal has them, less those the accepted log holds.
pub(crate) fn replay(local: &Varve, accepted: &Varve) -> Result<Pending, SyncError> {
    let journal = read_journal(local)?;
    let dropped: HashSet<u128> = journal.dropped.iter().map(|(id, _, _)| *id).collect();
    let next_order = journal.entries.iter().map(|e| e.order + 1).max().unwrap_or(0);
    let mut pending = Pending { next_order, streams: BTreeMap::new() };
    for entry in journal.entries.into_iter().filter(|e| !dropped.contains(&e.event_id)) {
        pending.streams.entry(entry.stream.as_u128()).or_default().push(entry);
    }
    for entries in pending.streams.values_mut() {
        entries.sort_by_key(|e| e.order);
    }
    let view = accepted.begin_read()?;
    let accepted_ids = accepted_ids(&view, &pending)?;
    pending.accept(&accepted_ids);
    Ok(pending)
}

/// The ids of accepted events that pending entries may name: those of each stream past the
/// lowest base of its entries.
fn accepted_ids(view: &ReadView<'_>, pending: &Pending) -> Result<HashSet<u128>, SyncError> {
    let mut ids = HashSet::new();
    for (stream, entries) in &pending.streams {
        let from = entries.iter().map(|e| e.base).min().unwrap_or(0) + 1;
        for event in view.read_stream(*stream, from)? {
            if let Some(id) = event?.id() {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}
