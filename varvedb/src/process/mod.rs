//! Processors: typed event handlers that keep their position in the store.
//!
//! - A [`Projection`] builds a read model in its own typed [`Table`]s. Each batch of events,
//!   the model's changes and the new checkpoint commit in one write transaction: every event
//!   is applied exactly once, even across crashes.
//! - A [`Processor`] has effects outside the store (mail, HTTP, another system). Its
//!   checkpoint is committed after the handler succeeds: at-least-once, with the event's
//!   seq as idempotency key, retries with backoff, and a stop on a poison event.
//!
//! Both skip events they do not handle by their type tag, without decoding them, and run
//! under a [`Runner`] (tokio task or plain thread) that follows new commits.

pub(crate) mod runner;
pub(crate) mod table;

mod projection;

pub use projection::*;
pub use table::{Key, Table, Value};
