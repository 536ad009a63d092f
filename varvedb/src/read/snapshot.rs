//! What the typed layer needs from a view to trust a stored aggregate snapshot: its raw
//! bytes, the seq of the event it covers, and the stream's data key to open it with.

use super::ReadView;
use crate::crypto::StreamKey;
use crate::error::Error;
use crate::id::StreamId;
use crate::storage::key;

/// How [`ReadView::open_for_stream`] went.
pub(crate) enum Opened {
    /// `out` holds the plaintext.
    Open,
    /// The stream was shredded: its key, and with it what was sealed under it, is gone.
    Shredded,
    /// The bytes fail authentication (damaged, forged, or sealed for something else).
    Refused,
}

impl ReadView<'_> {
    /// The stored snapshot of `stream`'s aggregate, as raw bytes in place.
    pub(crate) fn snapshot_bytes(&self, stream: StreamId) -> Result<Option<&[u8]>, Error> {
        self.storage.get(&self.txn, self.storage.tables.snapshots, &key::stream(stream.as_u128()))
    }

    /// The seq of `stream`'s event at `version`, from the stream index.
    pub(crate) fn seq_at(&self, stream: StreamId, version: u32) -> Result<Option<u64>, Error> {
        self.storage.index_seq(&self.txn, stream.as_u128(), version)
    }

    /// Whether the view is of an encrypted store.
    pub(crate) fn is_encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    /// Opens `sealed` (`nonce ‖ ciphertext ‖ tag`) with `stream`'s data key into `out`,
    /// which must be exactly the ciphertext's length.
    pub(crate) fn open_for_stream(
        &self,
        stream: StreamId,
        aad: &[u8],
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<Opened, Error> {
        let Some(crypto) = &self.crypto else { return Ok(Opened::Refused) };
        let id = stream.as_u128();
        let mut keys = crypto.keys.borrow_mut();
        let key = match keys.get(&id) {
            Some(key) => key,
            None => {
                let key = self.load_key(&crypto.master, id)?;
                keys.entry(id).or_insert(key)
            }
        };
        Ok(match key {
            StreamKey::Shredded { .. } => Opened::Shredded,
            StreamKey::Key(key) => match crate::crypto::open_into(key, aad, sealed, out) {
                Ok(()) => Opened::Open,
                Err(()) => Opened::Refused,
            },
        })
    }
}
