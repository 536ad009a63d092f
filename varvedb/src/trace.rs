//! Hooks into `tracing`. With the `tracing` feature off they expand to nothing, and the crate
//! is not built; with it on and no subscriber, each costs one check of a cached interest.
//!
//! Targets, so that a subscriber can filter them:
//! - `varvedb::commit`: one span and one DEBUG event per group commit (requests, events,
//!   bytes, duration); a WARN event when a whole commit fails.
//! - `varvedb::sync`: a WARN event for a flush slower than [`SLOW_SYNC`].
//! - `varvedb::conflict`: a DEBUG event per write refused with a concurrency conflict.
//! - `varvedb::retry`: a DEBUG event per command attempt repeated after a conflict.
//! - `varvedb::process`: a DEBUG event per projection or processor step that found events,
//!   a WARN event per step that failed.

use std::time::Duration;

/// A flush of the store's file (a commit, or [`Varve::sync`](crate::Varve::sync)) that takes
/// longer than this is reported as a WARN event of target `varvedb::sync` (with the
/// `tracing` feature). On a healthy disk a flush takes well under 10 ms; a tenth of a second
/// means a saturated or failing device, or a filesystem under memory pressure.
pub const SLOW_SYNC: Duration = Duration::from_millis(100);

/// `tracing::event!` with the feature on; nothing without it.
macro_rules! event {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::event!($($arg)*);
        }
    }};
}
pub(crate) use event;

/// Enters a span until the end of the enclosing block, with the feature on; nothing without it.
macro_rules! enter_span {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        let _entered = ::tracing::span!($($arg)*).entered();
    };
}
pub(crate) use enter_span;

/// Runs one step of the projection or processor `name` (`what` says which), and reports it
/// when it found events or failed.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn step<T, E: std::fmt::Display>(
    what: &'static str,
    name: &str,
    step: impl FnOnce() -> Result<T, E>,
    progress: impl Fn(&T) -> (u64, u64),
) -> Result<T, E> {
    #[cfg(feature = "tracing")]
    let started = std::time::Instant::now();
    let result = step();
    match &result {
        Ok(done) if progress(done).0 > 0 => event!(
            target: "varvedb::process",
            tracing::Level::DEBUG,
            kind = what,
            name,
            scanned = progress(done).0,
            checkpoint = progress(done).1,
            duration_us = started.elapsed().as_micros() as u64,
            "step"
        ),
        Ok(_) => {}
        Err(e) => event!(
            target: "varvedb::process",
            tracing::Level::WARN,
            kind = what,
            name,
            error = %e,
            "step failed"
        ),
    }
    result
}
