//! Read replicas of a [VarveDB](varvedb) store over NATS JetStream.
//!
//! A [`Publisher`] on the leader publishes every committed event, as the store keeps it, to
//! a JetStream stream: one subject per VarveDB stream (`<prefix>.<stream id in hex>`), with
//! the message id `<store id>:<seq>` (`Nats-Msg-Id`) and the id of the event before it as
//! the expected last message id (`Nats-Expected-Last-Msg-Id`). JetStream's deduplication
//! drops a message published twice, and the expected id refuses one published out of
//! order, so the JetStream stream holds the leader's log exactly: message *n* is seq *n*.
//! The publisher's position is a checkpoint in the leader's store
//! ([`Varve::checkpoint`](varvedb::Varve::checkpoint)).
//!
//! A [`Follower`] on each replica reads that stream through a durable pull consumer and
//! imports the events into a store opened with
//! [`Options::replica`](varvedb::Options::replica), acknowledging them only after the
//! import has committed. The replica's store is the truth about how far it got: the
//! consumer is positioned from it when they disagree.
//!
//! Both run until dropped, riding out a NATS server that goes away and comes back.
//! An encrypted store's events stay sealed on the way; its replica is opened with the
//! leader's master key and identity ([`Options::replica_of`](varvedb::Options::replica_of)),
//! and its shreds travel on a JetStream stream of their own.
//!
//! A [`SyncNode`] is the other use: local-first nodes that each write while offline and
//! agree on one log through a JetStream hub when online (see [`SyncNode`] and
//! `examples/local_first.rs`).

mod error;
mod follower;
mod publisher;
mod sync;
mod wire;

pub use error::ReplicationError;
pub use follower::{Follower, FollowerConfig, FollowerStats};
pub use publisher::{Publisher, PublisherConfig, PublisherStats};
pub use sync::{
    ConflictOutcome, DroppedCommand, EventStatus, LocalEvent, LocalExecuteError, LocalExecuted, LocalLoaded,
    LocalStream, PendingCommand, Resolution, SyncCommand, SyncConfig, SyncConflict, SyncError, SyncNode,
    SyncReport,
};
pub use wire::{message_id, subject};
