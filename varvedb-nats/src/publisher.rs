//! The leader's side: every committed event, published to JetStream in seq order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use varvedb::{StoreId, Varve};

use crate::ReplicationError;
use crate::wire;

/// Where and how a [`Publisher`] publishes.
///
/// ## Defaults
/// JetStream stream `VARVE`, subjects under `varve`, checkpoint `varvedb-nats.publisher`,
/// batches of 512 events, a deduplication window of 10 minutes, a timeout of 5 s; for an
/// encrypted store, shreds in the JetStream stream `VARVE_SHREDS`.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The JetStream stream (created if missing, with subjects `<prefix>.>`).
    pub stream: String,
    /// The subject prefix: an event of stream `s` goes to `<prefix>.<s in hex>`.
    pub prefix: String,
    /// An encrypted store's shreds: the JetStream stream (created if missing, with subjects
    /// `<prefix>-shreds.>`). A shred changes no event, so it travels apart from the log.
    pub shred_stream: String,
    /// The name of the publisher's checkpoint in the leader's store.
    pub checkpoint: String,
    /// Events read from the store and in flight to JetStream at once.
    pub batch: usize,
    /// How long JetStream remembers a message id to drop a repeat: a restarted publisher
    /// republishes what it sent since its last checkpoint, which it saves after every batch.
    pub duplicate_window: Duration,
    /// Longest wait for JetStream's answer to a request or a publish.
    pub timeout: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            stream: "VARVE".into(),
            prefix: "varve".into(),
            shred_stream: "VARVE_SHREDS".into(),
            checkpoint: "varvedb-nats.publisher".into(),
            batch: 512,
            duplicate_window: Duration::from_mins(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a [`Publisher`] has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PublisherStats {
    /// The last seq JetStream has confirmed (the checkpoint, once saved).
    pub position: u64,
    /// Events JetStream stored.
    pub published: u64,
    /// Events JetStream had already (republished after a restart) and dropped.
    pub duplicates: u64,
    /// Failed rounds (NATS away, a timeout), each retried.
    pub errors: u64,
    /// Shreds of an encrypted store JetStream stored (each once per master key epoch).
    pub shreds: u64,
}

#[derive(Default)]
struct Counters {
    position: AtomicU64,
    published: AtomicU64,
    duplicates: AtomicU64,
    errors: AtomicU64,
    shreds: AtomicU64,
    /// The store's count of key changes whose shreds JetStream holds; `u64::MAX` until the
    /// first scan, so a restarted publisher publishes them all again (and JetStream drops
    /// those it has).
    key_changes: AtomicU64,
}

/// Publishes a store's committed events to a JetStream stream, in seq order, each exactly
/// once in the stream.
///
/// ```no_run
/// # async fn demo(db: varvedb::Varve) -> Result<(), Box<dyn std::error::Error>> {
/// use varvedb_nats::{Publisher, PublisherConfig};
/// let client = async_nats::connect("127.0.0.1:4222").await?;
/// let publisher = Publisher::new(db, client, PublisherConfig::default()).await?;
/// publisher.run().await?; // until an error retrying cannot heal
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    db: Varve,
    store: StoreId,
    js: jetstream::Context,
    config: Arc<PublisherConfig>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("store", &self.store)
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher of `db`'s events through `client`; creates the JetStream stream if it is
    /// missing.
    ///
    /// # Errors
    /// [`ReplicationError::NoStoreId`] for a store without identity;
    /// [`ReplicationError::Nats`] if the stream cannot be created; store errors.
    pub async fn new(
        db: Varve,
        client: async_nats::Client,
        config: PublisherConfig,
    ) -> Result<Self, ReplicationError> {
        let store = db.store_id().ok_or(ReplicationError::NoStoreId)?;
        let js = jetstream::ContextBuilder::new().timeout(config.timeout).build(client);
        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.prefix)],
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(ReplicationError::nats)?;
        if db.is_encrypted() {
            js.get_or_create_stream(stream::Config {
                name: config.shred_stream.clone(),
                subjects: vec![format!("{}-shreds.>", config.prefix)],
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(ReplicationError::nats)?;
        }
        let counters = Counters { key_changes: AtomicU64::new(u64::MAX), ..Counters::default() };
        counters.position.store(db.checkpoint(&config.checkpoint)?, Ordering::Relaxed);
        Ok(Publisher { db, store, js, config: Arc::new(config), counters: Arc::new(counters) })
    }

    /// Counters since the publisher started.
    #[must_use]
    pub fn stats(&self) -> PublisherStats {
        let c = &self.counters;
        PublisherStats {
            position: c.position.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            shreds: c.shreds.load(Ordering::Relaxed),
        }
    }

    /// Events committed on the leader and not yet confirmed by JetStream.
    ///
    /// # Errors
    /// Store errors.
    pub fn lag(&self) -> Result<u64, ReplicationError> {
        let last = self.db.begin_read()?.last_seq()?;
        Ok(last.saturating_sub(self.counters.position.load(Ordering::Relaxed)))
    }

    /// Publishes until JetStream holds every event committed so far, and, for an encrypted
    /// store, every shred; returns the last seq published.
    ///
    /// # Errors
    /// [`ReplicationError::Nats`] when NATS fails (the checkpoint keeps what was confirmed);
    /// store errors.
    ///
    /// # Cancel safety
    /// Cancel safe: what JetStream confirmed is in the checkpoint or is dropped as a
    /// duplicate when published again.
    pub async fn publish_available(&self) -> Result<u64, ReplicationError> {
        loop {
            // One `meta` read a round while nothing was shredded or rotated.
            self.publish_shreds().await?;
            let position = self.counters.position.load(Ordering::Relaxed);
            let db = self.db.clone();
            let batch = self.config.batch.max(1);
            let events = tokio::task::spawn_blocking(move || db.export_replicated(position, batch))
                .await
                .map_err(|e| ReplicationError::Nats(format!("store read task failed: {e}")))??;
            let Some(last) = events.last().map(varvedb::ReplicatedEvent::seq) else { return Ok(position) };
            // All of a batch in flight, then its acks in order: JetStream refuses a message
            // whose predecessor it does not hold, so a lost one stops those after it.
            let mut acks = Vec::with_capacity(events.len());
            let mut failure = None;
            for e in &events {
                let subject = wire::subject(&self.config.prefix, e.stream());
                let sent = self
                    .js
                    .publish_with_headers(subject, wire::headers(self.store, e.seq()), wire::encode(e))
                    .await;
                match sent {
                    Ok(ack) => acks.push(ack),
                    Err(err) => {
                        failure = Some(ReplicationError::nats(err));
                        break;
                    }
                }
            }
            let mut confirmed = position;
            for (ack, event) in acks.into_iter().zip(&events) {
                match ack.await {
                    Ok(ack) if ack.duplicate => {
                        // Another store of this identity (a promoted replica's old leader) may
                        // hold this seq with another event: a duplicate counts only if its
                        // record is this one.
                        if let Err(e) = self.check_duplicate(ack.sequence, event).await {
                            failure.get_or_insert(e);
                            break;
                        }
                        self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        confirmed += 1;
                    }
                    Ok(_) => {
                        self.counters.published.fetch_add(1, Ordering::Relaxed);
                        confirmed += 1;
                    }
                    Err(err) => {
                        if err.kind() == PublishErrorKind::WrongLastMessageId && confirmed == position {
                            // JetStream's log ends elsewhere than the checkpoint says (its
                            // deduplication window passed, or it lost its newest messages):
                            // continue from where it ends.
                            if let Some(end) = self.stream_end().await? {
                                self.save(end).await?;
                            }
                        }
                        failure.get_or_insert(ReplicationError::nats(err));
                        break;
                    }
                }
            }
            if confirmed > position {
                self.save(confirmed).await?;
            }
            if let Some(e) = failure {
                return Err(e);
            }
            debug_assert_eq!(confirmed, last);
        }
    }

    /// Publishes the store's shreds if its key changes moved since the last time.
    async fn publish_shreds(&self) -> Result<(), ReplicationError> {
        if !self.db.is_encrypted() {
            return Ok(());
        }
        let db = self.db.clone();
        let known = self.counters.key_changes.load(Ordering::Relaxed);
        let (changes, shreds) = tokio::task::spawn_blocking(move || db.export_shreds(known))
            .await
            .map_err(|e| ReplicationError::Nats(format!("store read task failed: {e}")))??;
        let mut acks = Vec::with_capacity(shreds.len());
        for shred in &shreds {
            let subject = wire::shred_subject(&self.config.prefix, shred.stream());
            let headers = wire::shred_headers(self.store, shred);
            let ack = self.js.publish_with_headers(subject, headers, wire::encode_shred(shred)).await;
            acks.push(ack.map_err(ReplicationError::nats)?);
        }
        for ack in acks {
            if !ack.await.map_err(ReplicationError::nats)?.duplicate {
                self.counters.shreds.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counters.key_changes.store(changes, Ordering::Relaxed);
        Ok(())
    }

    /// Checks that the message JetStream holds at `stream_sequence`, which it reported as a
    /// duplicate of `event`, carries `event`'s record.
    async fn check_duplicate(
        &self,
        stream_sequence: u64,
        event: &varvedb::ReplicatedEvent,
    ) -> Result<(), ReplicationError> {
        let stream = self.js.get_stream(&self.config.stream).await.map_err(ReplicationError::nats)?;
        let msg = stream.get_raw_message(stream_sequence).await.map_err(ReplicationError::nats)?;
        let stored = wire::decode(event.seq(), stream_sequence, &msg.payload);
        match stored {
            Ok(stored) if stream_sequence == event.seq() && stored.record() == event.record() => Ok(()),
            _ => Err(ReplicationError::NotOneLog { stream_sequence, seq: event.seq() }),
        }
    }

    /// The seq of the last event in the JetStream stream, if that event is this store's.
    ///
    /// # Errors
    /// [`ReplicationError::NotOneLog`] if it carries this store's identity but not its event
    /// at that seq: another store of the same identity wrote it (a promoted replica and its
    /// old leader), and continuing after it would splice two logs.
    async fn stream_end(&self) -> Result<Option<u64>, ReplicationError> {
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(ReplicationError::nats)?;
        let last = stream.info().await.map_err(ReplicationError::nats)?.state.last_sequence;
        if last == 0 {
            return Ok(Some(0));
        }
        let msg = stream.get_raw_message(last).await.map_err(ReplicationError::nats)?;
        let id = msg.headers.get(wire::MSG_ID).map(|v| v.as_str().to_owned());
        let seq = wire::seq_of(Some(&msg.headers), last)?;
        if id != Some(wire::message_id(self.store, seq)) {
            return Ok(None);
        }
        let theirs = wire::decode(seq, last, &msg.payload)?;
        let db = self.db.clone();
        let ours = tokio::task::spawn_blocking(move || db.export_replicated(seq - 1, 1))
            .await
            .map_err(|e| ReplicationError::Nats(format!("store read task failed: {e}")))??;
        match ours.first() {
            Some(ours) if ours.seq() == seq && ours.record() == theirs.record() => Ok(Some(seq)),
            _ => Err(ReplicationError::NotOneLog { stream_sequence: last, seq }),
        }
    }

    async fn save(&self, position: u64) -> Result<(), ReplicationError> {
        let db = self.db.clone();
        let name = self.config.checkpoint.clone();
        tokio::task::spawn_blocking(move || db.save_checkpoint(&name, position))
            .await
            .map_err(|e| ReplicationError::Nats(format!("checkpoint task failed: {e}")))??;
        self.counters.position.store(position, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes every event committed so far, then each new commit, until an error that
    /// retrying cannot heal. NATS failures are counted ([`PublisherStats::errors`]) and
    /// retried after a pause; commits by other processes are noticed within 100 ms.
    ///
    /// # Errors
    /// The first error that is not transient ([`ReplicationError::is_transient`]).
    ///
    /// # Cancel safety
    /// As [`publish_available`](Self::publish_available).
    pub async fn run(&self) -> Result<(), ReplicationError> {
        let mut watch = self.db.watch_last_seq();
        let mut backoff = Duration::from_millis(10);
        loop {
            watch.borrow_and_update();
            match self.publish_available().await {
                Ok(_) => {
                    backoff = Duration::from_millis(10);
                    // A timeout covers commits by other processes, which do not wake the watch.
                    let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
                }
                Err(e) if e.is_transient() => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
