//! How the testing harness prints a stored event: its archived form's `Debug` when it has
//! one, else its type tag and bytes. `#[aggregate]` picks between the two for each event
//! type with autoref specialization (a `Debug` impl on the wrapper wins over the fallback on
//! a reference to it).

use std::fmt;

use crate::event::RecordedEvent;

/// An archived event, to be printed.
#[doc(hidden)]
pub struct DebugArchived<'a, T: ?Sized>(pub &'a T);

/// Prints an archived event with its `Debug`, without rkyv's `Archived` name prefix.
#[doc(hidden)]
pub trait DebugViaDebug {
    /// Writes the event.
    ///
    /// # Errors
    /// The formatter's.
    fn fmt_archived(&self, event: &RecordedEvent<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: fmt::Debug + ?Sized> DebugViaDebug for DebugArchived<'_, T> {
    fn fmt_archived(&self, _event: &RecordedEvent<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:?}", self.0);
        f.write_str(text.strip_prefix("Archived").unwrap_or(&text))
    }
}

/// Prints an archived event whose type has no `Debug` by its tag and bytes.
#[doc(hidden)]
pub trait DebugFallback {
    /// Writes the event.
    ///
    /// # Errors
    /// The formatter's.
    fn fmt_archived(&self, event: &RecordedEvent<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: ?Sized> DebugFallback for &DebugArchived<'_, T> {
    fn fmt_archived(&self, event: &RecordedEvent<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_bytes(event, f)
    }
}

/// An event by its type tag, schema version and payload bytes.
#[doc(hidden)]
///
/// # Errors
/// The formatter's.
pub fn debug_bytes(event: &RecordedEvent<'_>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{} v{} {:02x?}", event.type_tag(), event.schema_version(), event.payload())
}
