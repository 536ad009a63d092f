//! Derive macros for [varvedb](https://docs.rs/varvedb). Use them through `varvedb`, which
//! re-exports them (feature `derive`, on by default); the generated code refers to
//! `::varvedb` (override with `#[event(crate = path)]` / `#[aggregate(crate = path)]`).

mod aggregate;
mod archived_serde;
mod attrs;
mod event;
mod layout;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Makes a struct or enum a stored event.
///
/// Generates, without any rkyv attribute from you:
/// - the rkyv `Archive`, `Serialize` and `Deserialize` impls, and a type alias
///   `ArchivedX`, the archived form that is validated (bytecheck) and read in place from the
///   store;
/// - `varvedb::Event`: the type tag (`#[event(name = "...")]`, default: the type's name),
///   the schema version (`#[event(version = N)]`, default 1);
/// - `varvedb::Schema`: a fingerprint of field names, order and types, computed at compile
///   time. The store refuses an event whose fingerprint differs from the one recorded for its
///   (name, version);
/// - with varvedb's `serde` feature, `serde::Serialize` for `ArchivedX`, giving the JSON (or
///   any serde format) that serde's own derive gives `X` (not for generic types).
///
/// Every field type must implement `varvedb::Schema`: the standard types rkyv archives
/// (integers, floats, `bool`, `char`, `String`, `Vec`, `Option`, `Box`, arrays, tuples,
/// `BTreeMap`, `HashMap`, `BTreeSet`, `uuid::Uuid`) do; derive `EventData` for your own.
///
/// Attributes: `#[event(name = "order.placed", version = 2, upcast = OrderPlacedV1, crate =
/// my::varvedb)]`. `upcast = Old` declares that stored events of `Old` (same `name`, lower
/// `version`) are read as this type, through `impl varvedb::Upcast<Old> for ThisType`;
/// handlers then name only this type. Links chain (v1 → v2 → v3). A missing `Upcast` impl,
/// another name or a version that is not lower is a compile error.
///
/// The default name is the bare type name, and names are global to a store: two types named
/// `Opened` in different modules collide (an aggregate applying both fails to compile; two
/// aggregates using them get `SchemaMismatch`). Give events explicit, namespaced names. All
/// instantiations of a generic event share its name, so one store holds one instantiation per
/// name and version.
///
/// `ArchivedX` is an alias of `<X as Archive>::Archived`, so it cannot carry inherent methods;
/// read archived fields directly, or write a free function or an extension trait. Recursive
/// types (a field containing the type itself) are not supported.
///
/// ```text
/// #[derive(varvedb::Event)]
/// #[event(name = "order.placed")]
/// struct OrderPlaced { customer: String, amount_cents: u64 }
/// // fn apply(&mut self, e: &ArchivedOrderPlaced) { e.amount_cents.to_native() ... }
/// ```
// `rkyv` is registered as a helper only so that a stray `#[rkyv]` gets our explanation
// instead of an extra "cannot find attribute" error.
#[proc_macro_derive(Event, attributes(event, rkyv))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input, event::Kind::Event).into()
}

/// Makes a struct or enum storable *inside* events (a nested field type), with no event
/// identity of its own: the rkyv impls, an `ArchivedX` alias and a `varvedb::Schema`
/// fingerprint that the enclosing event's fingerprint includes.
///
/// Accepts `#[event(crate = path)]` only.
#[proc_macro_derive(EventData, attributes(event, rkyv))]
pub fn derive_event_data(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    event::expand(&input, event::Kind::Data).into()
}

/// Turns an inherent `impl` block of apply functions into an event-sourced aggregate.
///
/// Each function `fn name(&mut self, event: &ArchivedE)` declares that the aggregate accepts
/// event `E` and how it changes the state. The macro generates `varvedb::Aggregate` (dispatch
/// from the stored type tag to the apply function) and `varvedb::EventOf<Self>` for each event,
/// so `Stream<Self>` takes exactly these events: appending any other fails to compile.
///
/// Arguments: `#[aggregate(name = "order")]` sets the stream kind recorded on disk (default:
/// the type's name); `crate = path` as for `Event`.
///
/// Snapshots, for an aggregate whose state derives `EventData`: `snapshot_every = N` stores
/// one every N events saved by `save`, `execute` or `transact`; `snapshot` only on `Stream::snapshot`; `snapshot_version = N`
/// (default 0) invalidates earlier snapshots after a change of apply logic that no
/// fingerprint sees. Changes of the state's fields or of the events applied invalidate them
/// by themselves.
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    aggregate::expand(args.into(), &item.into()).into()
}
