//! Hashing of a commit's leaves beside the thread that leads the commit.
//!
//! Each event adds about four SHA-256 compressions to a commit (its leaf, and on average one
//! interior node of two blocks). In a large commit that is a third of the writer's work per
//! event, while a second core is often idle, its callers waiting for the commit. So the
//! records of a large commit go, in chunks, to a hashing thread that extends the tree while
//! the writer goes on with the commit's LMDB writes; the writer waits for it only before it
//! writes the tiles. A small commit is hashed inline: handing it over would cost more than
//! the hashing.

use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use super::tiles::{TreeWriter, record_leaf_hash};
use crate::error::Error;

/// Bytes of records gathered before a chunk is handed to the hashing thread.
const CHUNK: usize = 64 * 1024;

enum Message {
    /// Records, each `seq u64 LE ‖ length u64 LE ‖ record`.
    Chunk(Vec<u8>),
    /// Answer once every chunk sent before is in the tree.
    Sync,
}

/// The writer's tree with its hashing thread.
pub(crate) struct TreeFeed {
    tree: Arc<Mutex<TreeWriter>>,
    chunk: Vec<u8>,
    /// Whether chunks went to the hashing thread since the last sync.
    in_flight: bool,
    tx: Option<mpsc::Sender<Message>>,
    synced: mpsc::Receiver<()>,
    spare: mpsc::Receiver<Vec<u8>>,
    thread: Option<JoinHandle<()>>,
}

fn lost() -> Error {
    Error::Internal("the Merkle tree's hashing thread stopped")
}

/// Adds the leaves of the records in `chunk` to `tree`.
fn extend(tree: &mut TreeWriter, chunk: &[u8]) {
    let mut rest = chunk;
    while let (Some(seq), Some(len)) = (rest.get(..8), rest.get(8..16)) {
        let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
        let len =
            usize::try_from(u64::from_le_bytes(len.try_into().unwrap_or_default())).unwrap_or(usize::MAX);
        let Some(record) = rest.get(16..16_usize.saturating_add(len)) else { break };
        tree.push(record_leaf_hash(seq, record));
        rest = &rest[16 + len..];
    }
}

impl TreeFeed {
    pub(crate) fn spawn() -> Result<Self, Error> {
        let tree = Arc::new(Mutex::new(TreeWriter::default()));
        let (tx, rx) = mpsc::channel::<Message>();
        let (synced_tx, synced) = mpsc::channel();
        let (spare_tx, spare) = mpsc::channel();
        let shared = Arc::clone(&tree);
        let thread = std::thread::Builder::new().name("varvedb-merkle".into()).spawn(move || {
            for message in rx {
                match message {
                    Message::Chunk(mut chunk) => {
                        // A poisoned lock means a push panicked; the writer sees it at its
                        // next sync.
                        let Ok(mut tree) = shared.lock() else { return };
                        extend(&mut tree, &chunk);
                        drop(tree);
                        chunk.clear();
                        drop(spare_tx.send(chunk));
                    }
                    Message::Sync => {
                        if synced_tx.send(()).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;
        Ok(TreeFeed {
            tree,
            chunk: Vec::with_capacity(CHUNK + 4096),
            in_flight: false,
            tx: Some(tx),
            synced,
            spare,
            thread: Some(thread),
        })
    }

    /// Adds the record stored under `seq` as the tree's next leaf.
    pub(crate) fn push(&mut self, seq: u64, record: &[u8]) -> Result<(), Error> {
        self.chunk.extend_from_slice(&seq.to_le_bytes());
        self.chunk.extend_from_slice(&(record.len() as u64).to_le_bytes());
        self.chunk.extend_from_slice(record);
        if self.chunk.len() >= CHUNK {
            let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK + 4096));
            let full = std::mem::replace(&mut self.chunk, next);
            self.tx.as_ref().ok_or_else(lost)?.send(Message::Chunk(full)).map_err(|_| lost())?;
            self.in_flight = true;
        }
        Ok(())
    }

    /// The tree, with every leaf pushed so far in it.
    pub(crate) fn sync(&mut self) -> Result<MutexGuard<'_, TreeWriter>, Error> {
        if self.in_flight {
            let tx = self.tx.as_ref().ok_or_else(lost)?;
            if !self.chunk.is_empty() {
                let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK + 4096));
                let rest = std::mem::replace(&mut self.chunk, next);
                tx.send(Message::Chunk(rest)).map_err(|_| lost())?;
            }
            tx.send(Message::Sync).map_err(|_| lost())?;
            self.synced.recv().map_err(|_| lost())?;
            self.in_flight = false;
        }
        let mut tree = self.tree.lock().map_err(|_| lost())?;
        extend(&mut tree, &self.chunk);
        self.chunk.clear();
        Ok(tree)
    }
}

impl Drop for TreeFeed {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The thread only hashes; nothing is lost if it panicked.
            let _ = thread.join();
        }
    }
}
