//! Upcasting: stored older versions of an event read as its current version.
//!
//! `#[event(version = 2, upcast = PlacedV1)]` links a version to the one before it; the links
//! form a chain (v1 → v2 → v3), recorded in [`EventInfo::upcasts_from`]. A handler of the
//! current version gets the stored bytes in place when they are of that version; an older
//! stored version is converted step by step and serialized into one [`UpcastBuffer`] that is
//! reused for every event of a fold.

use rkyv::rancor;
use rkyv::ser::allocator::Arena;
use rkyv::util::AlignedVec;

use crate::error::Error;
use crate::event::{OwnedEvent, RecordedEvent};
use crate::typed::{Event, EventInfo};

/// Reads an older version of an event as this one: `impl Upcast<OrderPlacedV1> for
/// OrderPlaced`, declared with `#[event(version = 2, upcast = OrderPlacedV1)]` on
/// `OrderPlaced`.
///
/// Each impl converts one step; a chain v1 → v2 → v3 has one impl per step, and stored v1
/// events reach a v3 handler through both. The conversion runs for every stored event of
/// the old version each time it is read, so it should be cheap and must not fail: fill new
/// fields with defaults, derive them from old ones, or keep an explicit "unknown" value.
///
/// ```
/// use varvedb::{Event, Upcast};
///
/// #[derive(Event)]
/// #[event(name = "order.placed", version = 1)]
/// struct OrderPlacedV1 { amount_cents: u64 }
///
/// #[derive(Event)]
/// #[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
/// struct OrderPlaced { amount_cents: u64, currency: String }
///
/// impl Upcast<OrderPlacedV1> for OrderPlaced {
///     fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
///         OrderPlaced { amount_cents: old.amount_cents.to_native(), currency: "EUR".into() }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` declares `upcast = {Old}` but does not implement `Upcast<{Old}>`",
    label = "no conversion from the older version",
    note = "add `impl varvedb::Upcast<{Old}> for {Self} {{ fn upcast(old: &Archived{Old}) -> Self {{ .. }} }}`"
)]
pub trait Upcast<Old: Event>: Event {
    /// Builds this version from a stored older one, read in place.
    fn upcast(old: &Old::Archived) -> Self;
}

/// The scratch space in which older events are converted and serialized as their current
/// version: one per fold or per handler, reused for every event, so upcasting allocates only
/// until it has grown to the largest event (plus what the [`Upcast`] functions themselves
/// allocate).
#[derive(Default)]
pub struct UpcastBuffer {
    bytes: AlignedVec,
    arena: Arena,
}

impl Clone for UpcastBuffer {
    fn clone(&self) -> Self {
        // The arena is scratch space only; the copy starts its own.
        UpcastBuffer { bytes: self.bytes.clone(), arena: Arena::new() }
    }
}

impl std::fmt::Debug for UpcastBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpcastBuffer").field("len", &self.bytes.len()).finish_non_exhaustive()
    }
}

impl UpcastBuffer {
    /// An empty buffer; it allocates on first use.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Serializes `value` into the buffer, replacing what it held, and returns its archive.
    fn archive<E: Event>(&mut self, value: &E, seq: u64) -> Result<&E::Archived, Error> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        self.bytes = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            bytes,
            self.arena.acquire(),
        )
        .map_err(|e| Error::Serialize(e.to_string()))?;
        self.access::<E>(seq)
    }

    /// The archive the buffer holds, as `E`.
    pub(crate) fn access<E: Event>(&self, seq: u64) -> Result<&E::Archived, Error> {
        rkyv::access::<E::Archived, rancor::Error>(&self.bytes).map_err(|e| Error::InvalidArchive {
            seq,
            type_tag: E::NAME.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Builds `E` from a stored older version of it, through the chain of [`Upcast`] impls:
/// called by the code `#[event(upcast = Old)]` generates. `None` if `version` is not on
/// `Old`'s chain.
#[doc(hidden)]
pub fn upcast_step<E, Old>(event: &RecordedEvent<'_>, buf: &mut UpcastBuffer) -> Result<Option<E>, Error>
where
    E: Upcast<Old>,
    Old: Event,
{
    if event.schema_version() == Old::VERSION {
        let old = event.access::<Old::Archived>()?;
        return Ok(Some(E::upcast(old)));
    }
    let Some(old) = Old::upcast_older(event, buf)? else { return Ok(None) };
    let archived = buf.archive(&old, event.seq())?;
    Ok(Some(E::upcast(archived)))
}

/// The event as `E`: in place if it is stored as `E`'s version, upcast into `buf` if it is
/// stored as an older version on `E`'s chain, `None` if it is another event (or a version
/// with no path to `E`'s: see [`no_path`]).
///
/// # Errors
/// [`Error::InvalidArchive`] if the stored bytes do not validate; [`Error::Shredded`];
/// [`Error::Serialize`] if the upcast value fails to serialize.
#[doc(hidden)]
#[inline]
pub fn archived_as<'a, E: Event>(
    event: &RecordedEvent<'a>,
    buf: &'a mut UpcastBuffer,
) -> Result<Option<&'a E::Archived>, Error> {
    let info = EventInfo::of::<E>();
    if info.matches(event) {
        return event.access::<E::Archived>().map(Some);
    }
    if !info.accepts(event.type_tag(), event.schema_version()) {
        return Ok(None);
    }
    match E::upcast_older(event, buf)? {
        Some(value) => buf.archive(&value, event.seq()).map(Some),
        None => Ok(None),
    }
}

/// The error for an event whose type tag one of `handled` names, at a version none of them
/// reads; `None` if no entry has its tag (the event is of another type altogether).
#[doc(hidden)]
#[must_use]
pub fn no_path(handled: &[EventInfo], event: &RecordedEvent<'_>) -> Option<Error> {
    let newest = handled.iter().filter(|i| i.name == event.type_tag()).map(|i| i.version).max()?;
    Some(Error::NoUpcastPath {
        seq: event.seq(),
        type_tag: event.type_tag().to_owned(),
        stored: event.schema_version(),
        handled: newest,
    })
}

impl OwnedEvent {
    /// The event as `E`, for a subscriber: read in place if it is stored as `E`'s version,
    /// upcast into `buf` if it is stored as an older version on `E`'s chain, `None` if it is
    /// another event. Reuse one `buf` for a whole subscription.
    ///
    /// # Errors
    /// [`Error::NoUpcastPath`] if the event has `E`'s type tag at a version `E` cannot read;
    /// [`Error::InvalidArchive`]; [`Error::Shredded`].
    pub fn read_as<'a, E: Event>(
        &'a self,
        buf: &'a mut UpcastBuffer,
    ) -> Result<Option<&'a E::Archived>, Error> {
        let event = RecordedEvent::from_owned(self);
        if let Some(archived) = archived_as::<E>(&event, buf)? {
            return Ok(Some(archived));
        }
        match no_path(&[EventInfo::of::<E>()], &event) {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}
