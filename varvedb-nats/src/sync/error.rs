//! The errors of local-first sync.

/// Why a sync, a load or a local command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// One of the node's stores failed.
    #[error(transparent)]
    Store(#[from] varvedb::Error),

    /// NATS or JetStream failed (a connection lost, a timeout, a refused request). Nothing
    /// is lost: what the hub confirmed is imported by the next sync, the rest stays pending.
    #[error("NATS: {0}")]
    Nats(String),

    /// A message of the hub's JetStream stream is not one a sync node publishes.
    #[error("hub message {hub_seq} is not a synced event: {reason}")]
    BadMessage {
        /// Its sequence in the hub's JetStream stream.
        hub_seq: u64,
        /// What is wrong.
        reason: String,
    },

    /// The node has accepted more events than the hub holds: the hub lost messages, or it
    /// is another hub than the one the node synced with.
    #[error("the hub holds {hub} events and this node has accepted {accepted}")]
    HubBehind {
        /// The hub's last sequence.
        hub: u64,
        /// The node's last accepted seq.
        accepted: u64,
    },

    /// A pending command must be run again and no handler for it is registered: register
    /// it with [`SyncNode::register`](crate::SyncNode::register) (or execute a command of
    /// that type on the stream) before syncing.
    #[error("no handler is registered for command {command:?} (version {version}) of aggregate {kind:?}")]
    UnknownCommand {
        /// The aggregate's kind.
        kind: String,
        /// The command's type tag.
        command: String,
        /// The command's schema version.
        version: u32,
    },

    /// A pending command was recorded with another shape than the registered command type
    /// of the same name and version has: re-running it would misread it.
    #[error(
        "command {command:?} (version {version}) was recorded with fingerprint {stored:#018x}, this build has {found:#018x}"
    )]
    CommandMismatch {
        /// The command's type tag.
        command: String,
        /// The command's schema version.
        version: u32,
        /// The fingerprint recorded with the pending command.
        stored: u64,
        /// The fingerprint of the registered type.
        found: u64,
    },

    /// Two aggregate types with the same kind were registered with one node.
    #[error("two aggregate types have the kind {kind:?}")]
    KindClash {
        /// The kind.
        kind: String,
    },

    /// The stream id is the one the pending store keeps its journal under
    /// (`"varvedb-nats-jrn"` in ASCII); an aggregate cannot use it on a sync node.
    #[error("stream {0} is reserved for the pending journal")]
    ReservedStream(varvedb::StreamId),

    /// A blocking store task of the sync panicked or was cancelled.
    #[error("a store task failed: {0}")]
    Task(String),

    /// An entry of the node's pending store cannot be read.
    #[error("entry {version} of the pending journal is damaged: {reason}")]
    CorruptJournal {
        /// Its version in the journal.
        version: u32,
        /// What is wrong.
        reason: String,
    },
}

impl SyncError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        SyncError::Nats(e.to_string())
    }

    pub(crate) fn task(e: impl std::fmt::Display) -> Self {
        SyncError::Task(e.to_string())
    }
}

/// Why [`LocalStream::execute`](crate::LocalStream::execute) failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalExecuteError<E> {
    /// The command handler rejected the command.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// The command decided more than one event. A synced command decides at most one: the
    /// hub takes events one by one, so several could be split by another node's.
    #[error("the command decided {count} events; a synced command decides at most one")]
    TooManyEvents {
        /// How many it decided.
        count: usize,
    },
    /// A store failed, or an earlier conflict could not be resolved.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

impl<E> From<varvedb::Error> for LocalExecuteError<E> {
    fn from(e: varvedb::Error) -> Self {
        LocalExecuteError::Sync(SyncError::Store(e))
    }
}
