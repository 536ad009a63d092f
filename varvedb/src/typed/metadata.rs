//! Typed metadata: a `#[derive(EventData)]` struct stored in an event's metadata, prefixed
//! with its fingerprint, and read in place.
//!
//! Stored form: `fingerprint u64 LE ‖ rkyv archive`. Each event thus names the shape of its
//! metadata, and a read with a type of another shape is [`Error::MetadataMismatch`], never a
//! misread.

use rkyv::Portable;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::batch::{LayoutFn, NewEvent};
use crate::error::Error;
use crate::event::{OwnedEvent, RecordedEvent};
use crate::id::StreamId;
use crate::typed::command::ExecuteOptions;
use crate::typed::stream::TypedEvent;
use crate::typed::{Pending, Schema};

/// A type stored as an event's metadata (who, why, correlation, causation...), read in place
/// like an event. Implemented for every type `#[derive(EventData)]` makes storable.
///
/// ```
/// use varvedb::{aggregate, Event, EventData, ExpectedVersion, Pending, Varve};
///
/// #[derive(EventData, Debug)]
/// struct RequestMeta { user: u64, correlation: u128 }
/// #[derive(Event)] struct Deposited { cents: u64 }
/// #[derive(Default)] struct Account;
/// #[aggregate] impl Account { fn deposited(&mut self, _: &ArchivedDeposited) {} }
///
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let account = db.stream::<Account>(1u128);
/// let meta = RequestMeta { user: 7, correlation: 0xabc };
/// account.append_all(ExpectedVersion::NoStream, [Pending::from(Deposited { cents: 5 }).with_meta(&meta)])?;
/// let view = db.begin_read()?;
/// let event = account.read(&view, 1)?.next().unwrap()?;
/// let m: &ArchivedRequestMeta = event.meta::<RequestMeta>()?.expect("has metadata");
/// assert_eq!((m.user.to_native(), event.recorded().version()), (7, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored as event metadata",
    note = "add `#[derive(varvedb::EventData)]` to `{Self}`"
)]
pub trait Metadata:
    Schema
    + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
    + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Metadata for T where
    T: Schema
        + rkyv::Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>>
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Length of the fingerprint before the archive.
const PREFIX: usize = 8;

/// The stored form of `meta`.
pub(crate) fn encode<M: Metadata>(meta: &M) -> Result<Vec<u8>, Error> {
    let archive =
        rkyv::api::high::to_bytes::<rancor::Error>(meta).map_err(|e| Error::Serialize(e.to_string()))?;
    let mut out = Vec::with_capacity(PREFIX + archive.len());
    out.extend_from_slice(&M::FINGERPRINT.to_le_bytes());
    out.extend_from_slice(&archive);
    Ok(out)
}

/// The archive after `bytes`' fingerprint, if it is `M`'s; else the fingerprint found
/// (`None`: too short to hold one).
pub(crate) fn archive_of<M: Metadata>(bytes: &[u8]) -> Result<&[u8], Option<u64>> {
    let stored = bytes.get(..PREFIX).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if stored == Some(M::FINGERPRINT) { Ok(&bytes[PREFIX..]) } else { Err(stored) }
}

fn encoded_layout<M: Metadata>() -> Vec<u8> {
    M::layout().encode()
}

/// Reads `bytes`, the metadata of the event at `seq`, as an `M`.
fn decode<M: Metadata>(
    seq: u64,
    stream: StreamId,
    shredded: bool,
    bytes: &[u8],
) -> Result<Option<&M::Archived>, Error> {
    if shredded {
        return Err(Error::Shredded { stream });
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let archive = archive_of::<M>(bytes).map_err(|stored| Error::MetadataMismatch {
        seq,
        stored,
        found: M::FINGERPRINT,
    })?;
    rkyv::access::<M::Archived, rancor::Error>(archive).map(Some).map_err(|e| Error::InvalidArchive {
        seq,
        type_tag: "metadata".to_owned(),
        message: e.to_string(),
    })
}

impl<'v> RecordedEvent<'v> {
    /// The event's metadata as an `M` (a `#[derive(EventData)]` type), validated and read in
    /// place; `None` if the event has no metadata.
    ///
    /// # Errors
    /// [`Error::MetadataMismatch`] if the metadata is of another type (or raw bytes);
    /// [`Error::InvalidArchive`] if it does not validate; [`Error::Shredded`].
    pub fn meta<M: Metadata>(&self) -> Result<Option<&'v M::Archived>, Error> {
        decode::<M>(self.seq, self.stream, self.shredded, self.metadata)
    }
}

impl OwnedEvent {
    /// As [`RecordedEvent::meta`], read in place from this event's buffer.
    ///
    /// # Errors
    /// As [`RecordedEvent::meta`].
    pub fn meta<M: Metadata>(&self) -> Result<Option<&M::Archived>, Error> {
        decode::<M>(self.seq, self.stream, self.shredded, &self.metadata)
    }
}

impl<'v, A: crate::typed::Aggregate> TypedEvent<'v, A> {
    /// As [`RecordedEvent::meta`].
    ///
    /// # Errors
    /// As [`RecordedEvent::meta`].
    pub fn meta<M: Metadata>(&self) -> Result<Option<&'v M::Archived>, Error> {
        self.recorded().meta::<M>()
    }
}

impl NewEvent {
    /// Attaches typed metadata, read back with [`RecordedEvent::meta`].
    ///
    /// # Errors
    /// [`Error::Serialize`] if rkyv fails.
    pub fn with_meta<M: Metadata>(self, meta: &M) -> Result<Self, Error> {
        let mut event = self.with_metadata(encode(meta)?);
        event.meta_layout = Some((M::FINGERPRINT, LayoutFn::Typed(encoded_layout::<M>)));
        Ok(event)
    }
}

impl<A> Pending<A> {
    /// Attaches typed metadata, read back with [`TypedEvent::meta`] (and
    /// [`RecordedEvent::meta`] by subscriptions, projections and processors).
    #[must_use]
    pub fn with_meta<M: Metadata>(mut self, meta: &M) -> Self {
        self.event = self.event.and_then(|e| e.with_meta(meta));
        self
    }
}

impl ExecuteOptions {
    /// Metadata stamped on every event the command decides that has none of its own (a
    /// command context: who asked, correlation and causation ids).
    #[must_use]
    pub fn metadata<M: Metadata>(mut self, meta: &M) -> Self {
        self.metadata = Some(encode(meta).map_err(|e| e.to_string()));
        self.meta_layout = Some((M::FINGERPRINT, LayoutFn::Typed(encoded_layout::<M>)));
        self
    }
}
