//! Schema fingerprints: a structural hash of an event's shape, computed at compile time.

/// A type that can be stored inside an event, with a fingerprint of its archived shape.
///
/// The fingerprint covers field names, field order and field types (recursively), so any
/// change that alters how rkyv lays the type out changes it. Renaming the Rust type does not.
/// Implemented for the standard types rkyv archives; derive it for your own types with
/// `#[derive(EventData)]` (nested types) or `#[derive(Event)]` (events).
///
/// Every schema type also describes its layout ([`Describe`](crate::Describe)): the store
/// records the description beside the fingerprint, so tools can read events without the type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored inside an event",
    label = "`{Self}` has no schema fingerprint",
    note = "add `#[derive(varvedb::EventData)]` to your own types used inside events"
)]
pub trait Schema: crate::layout::Describe {
    /// The structural fingerprint.
    const FINGERPRINT: u64;
}

/// `const fn` building blocks of fingerprints (FNV-1a, 64 bits), used by the derives.
pub mod fingerprint {
    /// The empty fingerprint.
    pub const START: u64 = 0xcbf2_9ce4_8422_2325;

    /// Mixes raw bytes in.
    #[must_use]
    pub const fn bytes(mut h: u64, b: &[u8]) -> u64 {
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        h
    }

    /// Mixes a number in.
    #[must_use]
    pub const fn number(h: u64, v: u64) -> u64 {
        bytes(h, &v.to_le_bytes())
    }

    /// Mixes a string in, length first so that concatenations cannot collide.
    #[must_use]
    pub const fn text(h: u64, s: &str) -> u64 {
        bytes(number(h, s.len() as u64), s.as_bytes())
    }

    /// The fingerprint of a named leaf type.
    #[must_use]
    pub const fn leaf(name: &str) -> u64 {
        text(START, name)
    }
}

use fingerprint::{leaf, number, text};

macro_rules! leaves {
    ($($t:ty),*) => { $(impl Schema for $t { const FINGERPRINT: u64 = leaf(stringify!($t)); })* };
}
leaves!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool, char, (), String);

impl<T: Schema> Schema for Vec<T> {
    const FINGERPRINT: u64 = number(leaf("Vec"), T::FINGERPRINT);
}
impl<T: Schema> Schema for Option<T> {
    const FINGERPRINT: u64 = number(leaf("Option"), T::FINGERPRINT);
}
impl<T: Schema + ?Sized> Schema for Box<T> {
    const FINGERPRINT: u64 = number(leaf("Box"), T::FINGERPRINT);
}
impl<T: Schema> Schema for [T] {
    const FINGERPRINT: u64 = number(leaf("slice"), T::FINGERPRINT);
}
impl Schema for str {
    const FINGERPRINT: u64 = leaf("str");
}
impl<T: Schema, const N: usize> Schema for [T; N] {
    const FINGERPRINT: u64 = number(number(leaf("array"), N as u64), T::FINGERPRINT);
}
impl<K: Schema, V: Schema> Schema for std::collections::BTreeMap<K, V> {
    const FINGERPRINT: u64 = number(number(leaf("BTreeMap"), K::FINGERPRINT), V::FINGERPRINT);
}
impl<K: Schema, V: Schema, S> Schema for std::collections::HashMap<K, V, S> {
    const FINGERPRINT: u64 = number(number(leaf("HashMap"), K::FINGERPRINT), V::FINGERPRINT);
}
impl<T: Schema> Schema for std::collections::BTreeSet<T> {
    const FINGERPRINT: u64 = number(leaf("BTreeSet"), T::FINGERPRINT);
}
impl<T: Schema, S> Schema for std::collections::HashSet<T, S> {
    const FINGERPRINT: u64 = number(leaf("HashSet"), T::FINGERPRINT);
}
#[cfg(feature = "uuid")]
impl Schema for uuid::Uuid {
    const FINGERPRINT: u64 = leaf("Uuid");
}

macro_rules! tuples {
    ($($name:ident)+) => {
        impl<$($name: Schema),+> Schema for ($($name,)+) {
            const FINGERPRINT: u64 = {
                let h = text(leaf("tuple"), stringify!($($name)+));
                $(let h = number(h, $name::FINGERPRINT);)+
                h
            };
        }
    };
}
tuples!(A);
tuples!(A B);
tuples!(A B C);
tuples!(A B C D);
tuples!(A B C D E);
tuples!(A B C D E F);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_distinguish_shapes() {
        let all = [
            <u32 as Schema>::FINGERPRINT,
            <u64 as Schema>::FINGERPRINT,
            <Vec<u32> as Schema>::FINGERPRINT,
            <Vec<u64> as Schema>::FINGERPRINT,
            <Option<u32> as Schema>::FINGERPRINT,
            <[u32; 2] as Schema>::FINGERPRINT,
            <[u32; 3] as Schema>::FINGERPRINT,
            <(u32, u64) as Schema>::FINGERPRINT,
            <(u64, u32) as Schema>::FINGERPRINT,
            <String as Schema>::FINGERPRINT,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(<std::string::String as Schema>::FINGERPRINT, <String as Schema>::FINGERPRINT);
    }
}
