//! `serde::Serialize` for the archived forms of events (the `serde` feature).
//!
//! rkyv's archived types (`ArchivedString`, `ArchivedVec`, the little-endian integers, ...)
//! do not implement serde's traits, and neither crate is ours, so the derives cannot simply
//! ask rkyv to derive `Serialize` on `ArchivedX`. Instead each field is serialized through
//! [`AsSerde`], which works for every archived type this module knows
//! ([`SerializeArchived`]), and `#[derive(Event)]` / `#[derive(EventData)]` write the
//! `Serialize` impl of `ArchivedX` itself, shaped as serde's own derive shapes `X`'s: the
//! JSON of an archived event equals the JSON of the event.

use std::ops::ControlFlow;

use rkyv::primitive::{
    ArchivedChar, ArchivedF32, ArchivedF64, ArchivedI16, ArchivedI32, ArchivedI64, ArchivedI128, ArchivedU16,
    ArchivedU32, ArchivedU64, ArchivedU128,
};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, SerializeTuple, Serializer};

/// An archived value that serializes as its unarchived form would with serde. Implemented
/// for the archived forms of every type an event may hold, and by the derives for
/// `ArchivedX` of every non-generic `#[derive(Event)]` and `#[derive(EventData)]` type.
pub trait SerializeArchived {
    /// Serializes `self` as serde serializes the value it archives.
    ///
    /// # Errors
    /// The serializer's.
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
}

/// Serializes an archived value through [`SerializeArchived`].
pub struct AsSerde<'a, T: ?Sized>(pub &'a T);

impl<T: SerializeArchived + ?Sized> Serialize for AsSerde<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_archived(serializer)
    }
}

/// Types archived as themselves.
macro_rules! native {
    ($($t:ty),*) => {$(
        impl SerializeArchived for $t {
            fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                Serialize::serialize(self, serializer)
            }
        }
    )*};
}
native!((), bool, u8, i8);

/// Types archived as a little-endian wrapper: serialized as the native value.
macro_rules! endian {
    ($($t:ty),*) => {$(
        impl SerializeArchived for $t {
            fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                Serialize::serialize(&self.to_native(), serializer)
            }
        }
    )*};
}
// `usize` and `isize` are archived as `u32` and `i32` (the format's pointer width): covered.
endian!(
    ArchivedU16,
    ArchivedU32,
    ArchivedU64,
    ArchivedU128,
    ArchivedI16,
    ArchivedI32,
    ArchivedI64,
    ArchivedI128,
    ArchivedF32,
    ArchivedF64,
    ArchivedChar
);

impl SerializeArchived for rkyv::string::ArchivedString {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl SerializeArchived for str {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<T: SerializeArchived> SerializeArchived for [T] {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(AsSerde))
    }
}

impl<T: SerializeArchived> SerializeArchived for rkyv::vec::ArchivedVec<T> {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize_archived(serializer)
    }
}

impl<T: SerializeArchived, const N: usize> SerializeArchived for [T; N] {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As serde serializes arrays: a tuple.
        let mut tuple = serializer.serialize_tuple(N)?;
        for item in self {
            tuple.serialize_element(&AsSerde(item))?;
        }
        tuple.end()
    }
}

impl<T: SerializeArchived + rkyv::traits::ArchivePointee + ?Sized> SerializeArchived
    for rkyv::boxed::ArchivedBox<T>
{
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize_archived(serializer)
    }
}

impl<T: SerializeArchived> SerializeArchived for rkyv::option::ArchivedOption<T> {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            rkyv::option::ArchivedOption::None => serializer.serialize_none(),
            rkyv::option::ArchivedOption::Some(value) => serializer.serialize_some(&AsSerde(value)),
        }
    }
}

impl<K: SerializeArchived, V: SerializeArchived, const E: usize> SerializeArchived
    for rkyv::collections::btree_map::ArchivedBTreeMap<K, V, E>
{
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        let failed = self.visit(|k, v| match map.serialize_entry(&AsSerde(k), &AsSerde(v)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        });
        match failed {
            Some(e) => Err(e),
            None => map.end(),
        }
    }
}

impl<K: SerializeArchived, const E: usize> SerializeArchived
    for rkyv::collections::btree_set::ArchivedBTreeSet<K, E>
{
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        let failed = self.visit(|k| match seq.serialize_element(&AsSerde(k)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        });
        match failed {
            Some(e) => Err(e),
            None => seq.end(),
        }
    }
}

impl<K: SerializeArchived, V: SerializeArchived, H> SerializeArchived
    for rkyv::collections::swiss_table::ArchivedHashMap<K, V, H>
{
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(k, v)| (AsSerde(k), AsSerde(v))))
    }
}

impl<K: SerializeArchived, H> SerializeArchived for rkyv::collections::swiss_table::ArchivedHashSet<K, H> {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(AsSerde))
    }
}

#[cfg(feature = "uuid")]
impl SerializeArchived for uuid::Uuid {
    fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // As uuid's own serde support: hyphenated text, or 16 bytes for binary formats.
        if serializer.is_human_readable() {
            serializer.collect_str(&self.hyphenated())
        } else {
            serializer.serialize_bytes(self.as_bytes())
        }
    }
}

macro_rules! tuples {
    ($($archived:ident ($($name:ident $index:tt)+))+) => {$(
        impl<$($name: SerializeArchived),+> SerializeArchived for rkyv::tuple::$archived<$($name),+> {
            fn serialize_archived<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut tuple = serializer.serialize_tuple([$($index),+].len())?;
                $(tuple.serialize_element(&AsSerde(&self.$index))?;)+
                tuple.end()
            }
        }
    )+};
}
tuples! {
    ArchivedTuple1 (A 0)
    ArchivedTuple2 (A 0 B 1)
    ArchivedTuple3 (A 0 B 1 C 2)
    ArchivedTuple4 (A 0 B 1 C 2 D 3)
    ArchivedTuple5 (A 0 B 1 C 2 D 3 E 4)
    ArchivedTuple6 (A 0 B 1 C 2 D 3 E 4 F 5)
}

/// Passes the `Serialize` impls the derives write through with the `serde` feature, and drops
/// them without it: the derives cannot see varvedb's features, this macro can.
#[doc(hidden)]
#[macro_export]
macro_rules! __serde_archived {
    ($($impl:tt)*) => { $($impl)* };
}
