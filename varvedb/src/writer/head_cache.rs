//! The stream heads the writer wrote, kept so that the next append need not read them back.

use std::collections::HashMap;

use crate::batch::Kind;
use crate::id::StreamId;

use super::hash::StreamHashing;

/// Most stream heads the writer keeps; past it, the cache starts over.
pub(super) const HEAD_CACHE: usize = 65_536;

/// The stream heads this writer wrote (version and kind), so that appending to a stream
/// again need not read its head back from the store.
#[derive(Default)]
pub(super) struct HeadCache {
    pub(super) map: HashMap<StreamId, (u32, Option<Kind>), StreamHashing>,
    /// The id of the transaction whose commit left the store with these heads; `None` while
    /// a transaction is open or after one failed (the map may hold heads that were never
    /// committed, so it is cleared before use).
    pub(super) committed_txn: Option<usize>,
}

impl HeadCache {
    /// Remembers the head just written for `stream`, within [`HEAD_CACHE`] entries.
    pub(super) fn insert(&mut self, stream: StreamId, version: u32, kind: Option<Kind>) {
        if self.map.len() >= HEAD_CACHE {
            self.map.clear();
        }
        self.map.insert(stream, (version, kind));
    }
}
