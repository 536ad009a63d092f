//! Read views: consistent snapshots over one LMDB read transaction, and the reads they
//! offer. `decode` turns a stored record into an event (checksum, blob, decryption),
//! `stream` reads a stream through its index, `log` reads the global log, `integrity`
//! verifies the whole store.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::crypto::{Encryption, Master, StreamKey};
use crate::error::Error;
use crate::event::RecordedEvent;
use crate::id::StreamId;
use crate::layout::Layout;
use crate::record;
use crate::storage::{ReadTxn, Storage, key, value};

mod audit;
mod decode;
mod integrity;
mod log;
pub(crate) mod snapshot;
mod stream;

pub use integrity::IntegrityReport;
pub use log::LogEvents;
pub use stream::StreamEvents;

/// A stream, as [`ReadView::streams`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream's id.
    pub stream: StreamId,
    /// Its current version (its number of events).
    pub version: u32,
    /// The kind it was created with, if any.
    pub kind: Option<String>,
}

/// One entry of the schema registry ([`ReadView::schemas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaEntry {
    /// The event type's tag.
    pub type_tag: String,
    /// Its schema version.
    pub version: u32,
    /// The structural fingerprint recorded on its first append.
    pub fingerprint: u64,
    /// The layout description, if the store recorded one.
    pub layout: Option<Layout>,
}

/// A consistent snapshot of the store, over one read transaction.
///
/// Everything read through a view reflects the same instant, whatever commits meanwhile.
/// Events borrow from the view: their payloads point into the store's memory map, with no
/// copy. Keep views short-lived: an open view pins the pages it sees, so the file grows while
/// it lives. A view is `Send`, but must not be held across an `.await` in a busy task.
///
/// In an encrypted store, an event read through a view is decrypted into memory the view
/// owns until it is dropped (the one exception to zero-copy). Long reads of encrypted
/// streams should use [`StreamEvents::next_reusing`] or [`LogEvents::next_reusing`], which
/// decrypt into one reusable buffer instead; [`Stream::load`](crate::Stream::load) does.
///
/// ```
/// use varvedb::{ExpectedVersion, NewEvent, Varve};
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// db.append(7u128, ExpectedVersion::NoStream, [NewEvent::new("opened", b"hi".to_vec())])?;
/// let view = db.begin_read()?;
/// for event in view.read_stream(7u128, 1)? {
///     let event = event?;
///     assert_eq!((event.version(), event.type_tag(), event.payload()), (1, "opened", &b"hi"[..]));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReadView<'db> {
    storage: &'db Storage,
    txn: ReadTxn<'db>,
    crypto: Option<ViewCrypto>,
}

/// What a view of an encrypted store needs: the master its snapshot's keys are wrapped
/// with, the data keys unwrapped so far, and memory for decrypted events.
struct ViewCrypto {
    master: Arc<Master>,
    /// Data keys unwrapped so far, and the markers of shredded streams met.
    keys: RefCell<HashMap<u128, StreamKey>>,
    arena: bumpalo::Bump,
}

impl<'db> ReadView<'db> {
    pub(crate) fn new(storage: &'db Storage, encryption: Option<&Encryption>) -> Result<Self, Error> {
        let Some(encryption) = encryption else {
            return Ok(ReadView { txn: storage.read_txn()?, storage, crypto: None });
        };
        // Held while the snapshot starts: a key rotation cannot commit in between, so the
        // master matches the wrapped keys this snapshot sees.
        let master = encryption.read();
        let txn = storage.read_txn()?;
        let crypto = ViewCrypto {
            master: Arc::clone(&master),
            keys: RefCell::new(HashMap::new()),
            arena: bumpalo::Bump::new(),
        };
        Ok(ReadView { txn, storage, crypto: Some(crypto) })
    }

    pub(crate) fn storage(&self) -> &'db Storage {
        self.storage
    }

    pub(crate) fn txn(&self) -> &ReadTxn<'db> {
        &self.txn
    }

    /// The seq of the last committed event in this snapshot (0 if the store is empty).
    ///
    /// # Errors
    /// A storage error.
    pub fn last_seq(&self) -> Result<u64, Error> {
        self.storage.last_seq(&self.txn)
    }

    /// The current version of `stream` (`None` if it has no events).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn stream_version(&self, stream: impl Into<StreamId>) -> Result<Option<u32>, Error> {
        Ok(self.stream_head(stream.into())?.map(|(v, _)| v))
    }

    /// The kind the stream was created with, if any (see
    /// [`WriteBatch::append_kind`](crate::WriteBatch::append_kind)).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn stream_kind(&self, stream: impl Into<StreamId>) -> Result<Option<&str>, Error> {
        Ok(self.stream_head(stream.into())?.and_then(|(_, k)| k))
    }

    /// The version and kind of `stream`, in one lookup (`None` if it has no events).
    pub(crate) fn stream_head(&self, stream: StreamId) -> Result<Option<(u32, Option<&str>)>, Error> {
        Ok(self.storage.stream_head(&self.txn, stream)?.map(|head| (head.version, head.kind)))
    }

    /// The fingerprint the store recorded for event type `tag` at schema `version`, if any
    /// typed event of that type and version was ever appended.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`].
    pub fn schema_fingerprint(&self, tag: &str, version: u32) -> Result<Option<u64>, Error> {
        let Some(raw) =
            self.storage.get(&self.txn, self.storage.tables.schema, &key::schema(tag, version))?
        else {
            return Ok(None);
        };
        value::decode_fingerprint(raw).map(Some).ok_or_else(|| Error::CorruptIndex {
            table: "schema",
            reason: format!("fingerprint of {tag:?} version {version} is not 8 bytes"),
        })
    }

    /// The layout description the store recorded for event type `tag` at schema `version`
    /// (`None` if the type was never appended, or was first appended by a version of varvedb
    /// that recorded fingerprints only).
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if the description is damaged.
    pub fn schema_layout(&self, tag: &str, version: u32) -> Result<Option<Layout>, Error> {
        let k = key::schema_layout(tag, version);
        let Some(raw) = self.storage.get(&self.txn, self.storage.tables.schema, &k)? else {
            return Ok(None);
        };
        Layout::decode(raw).map(Some).map_err(|e| Error::CorruptIndex {
            table: "schema",
            reason: format!("layout of {tag:?} version {version}: {e}"),
        })
    }

    /// The layout description of the typed metadata type with this fingerprint (the first
    /// 8 bytes, little-endian, of metadata attached with
    /// [`Pending::with_meta`](crate::Pending::with_meta)), recorded when the type was first
    /// stored; `None` for types first stored by a varvedb that did not record them.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if the description is damaged.
    pub fn metadata_layout(&self, fingerprint: u64) -> Result<Option<Layout>, Error> {
        let k = key::meta_layout(fingerprint);
        let Some(raw) = self.storage.get(&self.txn, self.storage.tables.schema, &k)? else {
            return Ok(None);
        };
        Layout::decode(raw).map(Some).map_err(|e| Error::CorruptIndex {
            table: "schema",
            reason: format!("layout of metadata {fingerprint:#018x}: {e}"),
        })
    }

    /// Every typed metadata type's layout description in the registry, by fingerprint.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if a description is damaged.
    pub fn metadata_layouts(&self) -> Result<Vec<(u64, Layout)>, Error> {
        let from = key::meta_layout(0);
        let to = key::meta_layout(u64::MAX);
        let range = (std::ops::Bound::Included(&from[..]), std::ops::Bound::Included(&to[..]));
        let mut out = Vec::new();
        for entry in self.storage.entries(&self.txn, self.storage.tables.schema, range, false)? {
            let (k, v) = entry?;
            if !key::is_meta_layout(k) {
                continue;
            }
            let fingerprint = u64::from_be_bytes(k[2..].try_into().unwrap_or_default());
            let layout = Layout::decode(v).map_err(|e| Error::CorruptIndex {
                table: "schema",
                reason: format!("layout of metadata {fingerprint:#018x}: {e}"),
            })?;
            out.push((fingerprint, layout));
        }
        Ok(out)
    }

    /// Every schema in the registry, by type tag and version, with its layout description
    /// where one was recorded.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if an entry is damaged.
    pub fn schemas(&self) -> Result<Vec<SchemaEntry>, Error> {
        let corrupt = |reason: String| Error::CorruptIndex { table: "schema", reason };
        let mut out: Vec<SchemaEntry> = Vec::new();
        let mut layouts = Vec::new();
        let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
        for entry in self.storage.entries(&self.txn, self.storage.tables.schema, all, false)? {
            let (k, v) = entry?;
            if key::is_kind_events(k) || key::is_meta_layout(k) {
                // An aggregate kind's event list or a metadata type's layout, not a schema.
                continue;
            }
            let (tag, version, is_layout) =
                key::decode_schema(k).ok_or_else(|| corrupt("a key cannot be decoded".to_owned()))?;
            if is_layout {
                let layout = Layout::decode(v)
                    .map_err(|e| corrupt(format!("layout of {tag:?} version {version}: {e}")))?;
                layouts.push((tag.to_owned(), version, layout));
            } else {
                let fingerprint = value::decode_fingerprint(v).ok_or_else(|| {
                    corrupt(format!("fingerprint of {tag:?} version {version} is not 8 bytes"))
                })?;
                out.push(SchemaEntry { type_tag: tag.to_owned(), version, fingerprint, layout: None });
            }
        }
        for (tag, version, layout) in layouts {
            if let Some(e) = out.iter_mut().find(|e| e.type_tag == tag && e.version == version) {
                e.layout = Some(layout);
            }
        }
        Ok(out)
    }

    /// Every stream with at least one event, in id order, with its version and kind.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if a stream head is damaged.
    pub fn streams(&self) -> Result<Vec<StreamInfo>, Error> {
        let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
        let mut out = Vec::new();
        for entry in self.storage.entries(&self.txn, self.storage.tables.stream_heads, all, false)? {
            let (k, v) = entry?;
            let id = <[u8; 16]>::try_from(k).ok().map(u128::from_be_bytes);
            let head = id.and_then(|id| Some((id, value::StreamHead::decode(id, v)?))).ok_or_else(|| {
                Error::CorruptIndex {
                    table: "stream_heads",
                    reason: "a stream head cannot be decoded".to_owned(),
                }
            })?;
            let (id, head) = head;
            out.push(StreamInfo {
                stream: StreamId::from(id),
                version: head.version,
                kind: head.kind.map(str::to_owned),
            });
        }
        Ok(out)
    }

    /// Every checkpoint of a projection or processor: its name and the last seq it processed.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if a checkpoint is damaged.
    pub fn checkpoints(&self) -> Result<Vec<(String, u64)>, Error> {
        let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
        let mut out = Vec::new();
        for entry in self.storage.entries(&self.txn, self.storage.tables.checkpoints, all, false)? {
            let (k, v) = entry?;
            // `0xFF ‖ name` records which kind of processing owns `name`: no checkpoint (a
            // name is UTF-8, which never begins with that byte).
            if k.first() == Some(&0xFF) {
                continue;
            }
            let name = String::from_utf8_lossy(k).into_owned();
            let seq = value::decode_seq(v).ok_or_else(|| Error::CorruptIndex {
                table: "checkpoints",
                reason: format!("checkpoint of {name:?} is not 8 bytes"),
            })?;
            out.push((name, seq));
        }
        Ok(out)
    }

    /// The event with global sequence number `seq`, if committed in this snapshot (`None`
    /// for seq 0 and for seqs past the last one).
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the seq if the record fails its checksum;
    /// [`Error::CorruptIndex`] if a seq below the last one has no record.
    pub fn event(&self, seq: u64) -> Result<Option<RecordedEvent<'_>>, Error> {
        match self.storage.get(&self.txn, self.storage.tables.events, &key::seq(seq))? {
            Some(raw) => {
                self.with_event(record::verify(seq, raw)?, |n| self.arena(n), |event| event).map(Some)
            }
            // The log has no gaps: a seq up to the last one that has no record was lost.
            None if seq != 0 && seq < self.last_seq()? => Err(Error::CorruptIndex {
                table: "events",
                reason: format!("seq {seq} is missing from the log"),
            }),
            None => Ok(None),
        }
    }

    /// The event of `stream` at `version`, if the stream has reached it: a point lookup
    /// through the stream index.
    ///
    /// # Errors
    /// As [`read_stream`](Self::read_stream): corruption errors naming what is damaged.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// db.append(7u128, ExpectedVersion::Auto, [NewEvent::new("a", b"1".to_vec()), NewEvent::new("b", b"2".to_vec())])?;
    /// let view = db.begin_read()?;
    /// assert_eq!(view.stream_event(7u128, 2)?.map(|e| e.type_tag()), Some("b"));
    /// assert!(view.stream_event(7u128, 3)?.is_none());
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    pub fn stream_event(
        &self,
        stream: impl Into<StreamId>,
        version: u32,
    ) -> Result<Option<RecordedEvent<'_>>, Error> {
        if version == 0 {
            return Ok(None);
        }
        match self.read_stream(stream, version)?.next().transpose()? {
            Some(event) if event.version() == version => Ok(Some(event)),
            _ => Ok(None),
        }
    }

    /// `n` bytes of the view's memory for a decrypted event.
    fn arena(&self, n: usize) -> &mut [u8] {
        match &self.crypto {
            Some(c) => c.arena.alloc_slice_fill_copy(n, 0u8),
            // Only encrypted records ask for memory, and a store without a key refuses those
            // before asking.
            None => &mut [],
        }
    }
}

/// Whether `e` came from the storage engine rather than from a check of the data read. LMDB
/// fails the whole read transaction on such an error (a damaged page, say), so every later
/// step of a read would meet it again: a read reports it once and ends.
fn fails_the_view(e: &Error) -> bool {
    matches!(e, Error::Storage(_) | Error::Io(_) | Error::NeedsReopen { .. })
}

/// Gives a decrypting read `n` bytes of `buf`.
fn reuse<'a>(buf: &'a mut Vec<u8>) -> impl FnOnce(usize) -> &'a mut [u8] {
    move |n| {
        buf.clear();
        // At least 1 KiB on the first use: small events then never grow the buffer again,
        // so a fold allocates the same whatever the number of events.
        buf.reserve(n.max(1024));
        buf.resize(n, 0);
        buf.as_mut_slice()
    }
}
