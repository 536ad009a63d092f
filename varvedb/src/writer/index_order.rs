//! The order in which a request's `streams` index entries and stream heads are written.

use crate::batch::WriteBatch;

use super::plan::PendingHead;

/// A request's index entries and stream heads in key order, by a counting sort on the
/// request's heads (a comparison sort of every entry costs more than the descents it
/// saves). Within a stream, entries come in version order already.
#[derive(Default)]
pub(super) struct IndexOrder {
    /// Indices of the request's heads, by stream id.
    pub(super) heads_by_stream: Vec<u32>,
    /// For each head, where its stream's next entry goes in `entries`.
    next_entry: Vec<usize>,
    /// `streams` index entries: stream, version, seq.
    pub(super) entries: Vec<(u128, u32, u64)>,
}

impl IndexOrder {
    /// Makes room for the entries of `batch`, whose appends have their heads at `slots`.
    pub(super) fn prepare(&mut self, batch: &WriteBatch, heads: &[PendingHead], slots: &[u32]) {
        self.heads_by_stream.clear();
        self.heads_by_stream.extend(0..heads.len() as u32);
        self.heads_by_stream.sort_unstable_by_key(|&at| heads[at as usize].stream);
        self.next_entry.clear();
        self.next_entry.resize(heads.len(), 0);
        for (part, &slot) in batch.appends.iter().zip(slots) {
            self.next_entry[slot as usize] += part.events.len();
        }
        let mut start = 0;
        for &at in &self.heads_by_stream {
            let n = std::mem::replace(&mut self.next_entry[at as usize], start);
            start += n;
        }
        self.entries.clear();
        self.entries.resize(start, (0, 0, 0));
    }

    /// Lets go of the room a very large request needed, so it is not held for the life of
    /// the writer.
    pub(super) fn trim(&mut self) {
        const KEPT: usize = 1 << 16;
        if self.entries.capacity() > KEPT {
            self.entries = Vec::new();
            self.next_entry = Vec::new();
            self.heads_by_stream = Vec::new();
        }
    }

    /// Puts the next entry of the stream whose head is at `slot`.
    pub(super) fn place(&mut self, slot: u32, entry: (u128, u32, u64)) {
        let at = &mut self.next_entry[slot as usize];
        self.entries[*at] = entry;
        *at += 1;
    }
}

/// A request's encoded stream heads, one after another in one buffer, in the order of
/// [`IndexOrder::heads_by_stream`]: built while the index is written, put after it.
#[derive(Default)]
pub(super) struct HeadValues {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl HeadValues {
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    pub(super) fn push(&mut self, value: &[u8]) {
        self.bytes.extend_from_slice(value);
        self.ends.push(self.bytes.len());
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
    }

    /// Lets go of the room a request with very many streams needed.
    pub(super) fn trim(&mut self) {
        const KEPT: usize = 1 << 20;
        if self.bytes.capacity() > KEPT {
            *self = Self::default();
        }
    }
}
