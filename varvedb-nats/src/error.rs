//! The replication errors.

/// Why a publisher or follower step failed. A running [`Publisher`](crate::Publisher) or
/// [`Follower`](crate::Follower) counts these and retries; the ones that cannot heal by
/// retrying stop it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The store failed (a read on the leader, an import on the replica).
    #[error(transparent)]
    Store(#[from] varvedb::Error),

    /// The publisher's checkpoint could not be saved.
    #[error(transparent)]
    Checkpoint(#[from] varvedb::ProcessorError),

    /// NATS or JetStream failed (a connection lost, a timeout, a refused request).
    #[error("NATS: {0}")]
    Nats(String),

    /// The leader store has no identity to name its messages by (a store made by an older
    /// build).
    #[error("the store has no identity, so its messages cannot be named")]
    NoStoreId,

    /// A message of the JetStream stream is not one a publisher writes.
    #[error("message {stream_sequence} of the JetStream stream is not a replicated event: {reason}")]
    BadMessage {
        /// Its sequence in the JetStream stream.
        stream_sequence: u64,
        /// What is wrong.
        reason: String,
    },

    /// The JetStream stream does not hold one store's log from its first event: message
    /// `stream_sequence` carries the event at `seq`, out of place or (for a publisher) not
    /// the store's own event at that seq although it has the store's identity, as a promoted
    /// replica meets in its old leader's stream.
    #[error(
        "message {stream_sequence} of the JetStream stream carries seq {seq}: the stream is not one store's log"
    )]
    NotOneLog {
        /// Its sequence in the JetStream stream.
        stream_sequence: u64,
        /// The seq of the event it carries.
        seq: u64,
    },
}

impl ReplicationError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        ReplicationError::Nats(e.to_string())
    }

    /// Whether retrying can help: NATS being away heals, a malformed stream does not.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Nats(_) => true,
            ReplicationError::Store(e) => matches!(e, varvedb::Error::MapResized { .. }),
            _ => false,
        }
    }
}
