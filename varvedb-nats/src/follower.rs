//! The replica's side: a durable consumer of the JetStream stream, imported in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use varvedb::{ReplicatedEvent, ReplicatedShred, Varve};

use crate::ReplicationError;
use crate::wire;

/// What a [`Follower`] follows.
///
/// ## Defaults
/// JetStream stream `VARVE`, durable consumer `varvedb-replica`, fetches of up to 1,024
/// messages waiting at most 500 ms, a timeout of 5 s; for an encrypted replica, shreds from
/// the JetStream stream `VARVE_SHREDS`.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The JetStream stream the leader's publisher writes.
    pub stream: String,
    /// The durable consumer's name: one per replica.
    pub durable: String,
    /// An encrypted leader's shreds: the JetStream stream its publisher writes them to
    /// ([`PublisherConfig::shred_stream`](crate::PublisherConfig::shred_stream)).
    pub shred_stream: String,
    /// Most messages fetched, and imported in one transaction, at once.
    pub batch: usize,
    /// Longest a fetch waits for messages.
    pub wait: Duration,
    /// Longest wait for JetStream's answer to a request.
    pub timeout: Duration,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            stream: "VARVE".into(),
            durable: "varvedb-replica".into(),
            shred_stream: "VARVE_SHREDS".into(),
            batch: 1024,
            wait: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a [`Follower`] has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FollowerStats {
    /// The replica's last seq.
    pub position: u64,
    /// Events imported.
    pub imported: u64,
    /// Messages received again after they were imported (redelivered after a crash), skipped.
    pub skipped: u64,
    /// Times the consumer was positioned anew from the replica's store.
    pub repositioned: u64,
    /// Failed rounds (NATS away, a timeout), each retried.
    pub errors: u64,
    /// The leader's shreds applied to an encrypted replica.
    pub shreds: u64,
}

#[derive(Default)]
struct Counters {
    position: AtomicU64,
    imported: AtomicU64,
    skipped: AtomicU64,
    repositioned: AtomicU64,
    errors: AtomicU64,
    shreds: AtomicU64,
}

/// The shreds an encrypted replica has read: the JetStream sequence of the next one, and
/// those waiting for the replica's log to reach them. Kept in memory only: a restarted
/// follower reads them all again, and a shred applied already changes nothing.
struct Shreds {
    next: u64,
    pending: Vec<ReplicatedShred>,
    checked: Option<tokio::time::Instant>,
}

/// Imports a leader's events from JetStream into a replica store, acknowledging them only
/// after they are committed.
///
/// ```no_run
/// # async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
/// use varvedb_nats::{Follower, FollowerConfig};
/// let replica = varvedb::Options::new().replica(true).open(dir)?;
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let follower = Follower::new(replica, client, FollowerConfig::default());
/// follower.run().await?; // until an error retrying cannot heal
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Follower {
    db: Varve,
    js: jetstream::Context,
    config: Arc<FollowerConfig>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("durable", &self.config.durable).finish_non_exhaustive()
    }
}

type PullConsumer = consumer::Consumer<consumer::pull::Config>;

impl Follower {
    /// A follower importing into `db`, which must be opened as a replica.
    #[must_use]
    pub fn new(db: Varve, client: async_nats::Client, config: FollowerConfig) -> Self {
        let js = jetstream::ContextBuilder::new().timeout(config.timeout).build(client);
        Follower { db, js, config: Arc::new(config), counters: Arc::default() }
    }

    /// Counters since the follower started.
    #[must_use]
    pub fn stats(&self) -> FollowerStats {
        let c = &self.counters;
        FollowerStats {
            position: c.position.load(Ordering::Relaxed),
            imported: c.imported.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            repositioned: c.repositioned.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            shreds: c.shreds.load(Ordering::Relaxed),
        }
    }

    /// Messages in the JetStream stream the replica has not imported yet, as the consumer
    /// counts them.
    ///
    /// # Errors
    /// [`ReplicationError::Nats`] if the consumer cannot be asked.
    pub async fn lag(&self) -> Result<u64, ReplicationError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(ReplicationError::nats)?;
        let info = stream.consumer_info(&self.config.durable).await.map_err(ReplicationError::nats)?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    fn last_seq(&self) -> Result<u64, ReplicationError> {
        Ok(self.db.begin_read()?.last_seq()?)
    }

    /// The durable consumer, positioned one past the replica's last event: kept as it is if
    /// it is there already (all it delivered is imported and acknowledged), made anew
    /// otherwise.
    async fn attach(&self) -> Result<PullConsumer, ReplicationError> {
        let last = self.last_seq()?;
        let stream = self.js.get_stream(&self.config.stream).await.map_err(ReplicationError::nats)?;
        if let Ok(info) = stream.consumer_info(&self.config.durable).await {
            if info.delivered.stream_sequence == last && info.ack_floor.stream_sequence == last {
                return stream.get_consumer(&self.config.durable).await.map_err(ReplicationError::nats);
            }
            // Deliveries to an earlier run that never got their acks (it crashed), or
            // acks of events the store does not hold (it was replaced): the store decides.
            stream.delete_consumer(&self.config.durable).await.map_err(ReplicationError::nats)?;
            self.counters.repositioned.fetch_add(1, Ordering::Relaxed);
        }
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(self.config.durable.clone()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: last + 1 },
                ack_policy: consumer::AckPolicy::All,
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .map_err(ReplicationError::nats)
    }

    /// Fetches one batch and imports it; returns how many events it imported.
    async fn step(&self, consumer: &PullConsumer) -> Result<usize, ReplicationError> {
        let mut messages = consumer
            .fetch()
            .max_messages(self.config.batch.max(1))
            .expires(self.config.wait)
            .messages()
            .await
            .map_err(ReplicationError::nats)?;
        let mut next = self.last_seq()? + 1;
        let mut events: Vec<ReplicatedEvent> = Vec::new();
        let mut last_message = None;
        while let Some(message) = messages.next().await {
            let message = message.map_err(ReplicationError::nats)?;
            let stream_sequence = message.info().map_err(ReplicationError::nats)?.stream_sequence;
            let seq = wire::seq_of(message.headers.as_ref(), stream_sequence)?;
            if seq != stream_sequence {
                return Err(ReplicationError::NotOneLog { stream_sequence, seq });
            }
            match seq.cmp(&next) {
                std::cmp::Ordering::Less => {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
                std::cmp::Ordering::Equal => {
                    events.push(wire::decode(seq, stream_sequence, &message.payload)?);
                    next += 1;
                }
                std::cmp::Ordering::Greater => {
                    // A gap: the consumer is not where the store is. Reposition it.
                    return Err(ReplicationError::Nats(format!("expected seq {next}, received {seq}")));
                }
            }
            last_message = Some(message);
        }
        let imported = events.len();
        if imported > 0 {
            let db = self.db.clone();
            let last = tokio::task::spawn_blocking(move || db.import_replicated(&events))
                .await
                .map_err(|e| ReplicationError::Nats(format!("import task failed: {e}")))??;
            self.counters.position.store(last, Ordering::Relaxed);
            self.counters.imported.fetch_add(imported as u64, Ordering::Relaxed);
        }
        // Only now, with the events committed: acknowledges this message and all before it.
        if let Some(message) = last_message {
            message.ack().await.map_err(ReplicationError::nats)?;
        }
        Ok(imported)
    }

    /// Imports until the replica's last seq reaches `seq`; returns it.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    /// As [`run`](Self::run).
    pub async fn follow_until(&self, seq: u64) -> Result<u64, ReplicationError> {
        self.follow(Some(seq)).await
    }

    /// Imports the leader's events as they arrive, until an error that retrying cannot heal.
    /// NATS failures are counted ([`FollowerStats::errors`]) and retried after a pause, the
    /// consumer positioned anew from the store.
    ///
    /// # Errors
    /// The first error that is not transient ([`ReplicationError::is_transient`]): a
    /// message that is no replicated event, an import the replica refuses.
    ///
    /// # Cancel safety
    /// Cancel safe: an import commits whole or not at all, and a message whose
    /// acknowledgement was lost is skipped when delivered again.
    pub async fn run(&self) -> Result<(), ReplicationError> {
        self.follow(None).await.map(drop)
    }

    /// Reads the leader's new shreds (at most every 100 ms) and applies those the replica's
    /// log has reached.
    async fn shreds(&self, shreds: &mut Shreds, position: u64) -> Result<(), ReplicationError> {
        let now = tokio::time::Instant::now();
        if shreds.checked.is_none_or(|at| now - at >= Duration::from_millis(100)) {
            shreds.checked = Some(now);
            // The publisher creates the stream; until then there is nothing to read.
            if let Ok(mut stream) = self.js.get_stream(&self.config.shred_stream).await {
                let last = stream.info().await.map_err(ReplicationError::nats)?.state.last_sequence;
                while shreds.next <= last {
                    let msg = stream.get_raw_message(shreds.next).await.map_err(ReplicationError::nats)?;
                    shreds.pending.push(wire::decode_shred(&msg.subject, shreds.next, &msg.payload)?);
                    shreds.next += 1;
                }
            }
        }
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut shreds.pending).into_iter().partition(|s| s.after() <= position);
        shreds.pending = waiting;
        if ready.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let applied = tokio::task::spawn_blocking(move || -> Result<u64, varvedb::Error> {
            let mut applied = 0;
            for shred in &ready {
                applied += u64::from(db.import_shred(shred)?);
            }
            Ok(applied)
        })
        .await
        .map_err(|e| ReplicationError::Nats(format!("shred task failed: {e}")))??;
        self.counters.shreds.fetch_add(applied, Ordering::Relaxed);
        Ok(())
    }

    async fn follow(&self, until: Option<u64>) -> Result<u64, ReplicationError> {
        let mut backoff = Duration::from_millis(10);
        let mut consumer = None;
        let mut shreds = Shreds { next: 1, pending: Vec::new(), checked: None };
        loop {
            let position = self.last_seq()?;
            self.counters.position.store(position, Ordering::Relaxed);
            if self.db.is_encrypted()
                && let Err(e) = self.shreds(&mut shreds, position).await
            {
                if !e.is_transient() {
                    return Err(e);
                }
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            if until.is_some_and(|until| position >= until) {
                return Ok(position);
            }
            let result = match &consumer {
                Some(c) => self.step(c).await.map(drop),
                None => self.attach().await.map(|c| consumer = Some(c)),
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(10),
                Err(e) if e.is_transient() => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    consumer = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
