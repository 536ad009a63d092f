//! Typed tables of projections' read models.
//!
//! Every table lives in the store's `projections` LMDB table under the prefix
//! `len u8 ‖ projection ‖ len u8 ‖ table`, then the key's order-preserving encoding. One
//! physical table means no LMDB handles to manage, and a projection's whole read model can be
//! erased with one range delete in the same transaction as its checkpoint.

use std::marker::PhantomData;
use std::ops::Bound;

use crate::error::Error;
use crate::id::StreamId;
use crate::read::ReadView;
use crate::storage::Entries;
use crate::typed::metadata::{Metadata, archive_of};

/// A key of a projection table. Encodings preserve order, so entries iterate in key order.
pub trait Key: Sized {
    /// Appends the encoding.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Decodes an encoding made by `encode_key` (`None`: not a valid encoding).
    fn decode_key(bytes: &[u8]) -> Option<Self>;
}

/// A value of a projection table.
pub trait Value: Sized {
    /// Appends the encoding.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes an encoding made by `encode` (`None`: not a valid encoding).
    fn decode(bytes: &[u8]) -> Option<Self>;
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn decode_key(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_be_bytes(bytes.try_into().ok()?))
            }
        }
        impl Value for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, u128);

macro_rules! signed {
    ($($t:ty => $u:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                // Flipping the sign bit makes big-endian byte order numeric order.
                out.extend_from_slice(&(self.cast_unsigned() ^ (1 << (<$u>::BITS - 1))).to_be_bytes());
            }
            fn decode_key(bytes: &[u8]) -> Option<Self> {
                Some((<$u>::from_be_bytes(bytes.try_into().ok()?) ^ (1 << (<$u>::BITS - 1))).cast_signed())
            }
        }
        impl Value for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_le_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
signed!(i32 => u32, i64 => u64);

impl Key for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Value for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Key for StreamId {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        Some(StreamId::from(<[u8; 16]>::try_from(bytes).ok()?))
    }
}

impl Value for StreamId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(StreamId::from(<[u8; 16]>::try_from(bytes).ok()?))
    }
}

impl Value for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl Value for f64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(f64::from_le_bytes(bytes.try_into().ok()?))
    }
}

impl Value for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

/// A table value that is a `#[derive(EventData)]` struct (or any [`Metadata`] type), stored
/// as its rkyv archive after its fingerprint and read in place: `Table<K, Data<T>>`, written
/// with [`ProjectionTxn::put`](crate::ProjectionTxn::put) and read with
/// [`ReadView::get_data`] / [`ProjectionTxn::get_data`](crate::ProjectionTxn::get_data),
/// which hand out `&ArchivedT` borrowed from the store.
///
/// A value stored by a type of another shape reads as [`Error::TableValueMismatch`].
///
/// ```
/// use varvedb::{Data, Event, EventData, ExpectedVersion, NewEvent, Projection, Table, Varve};
///
/// #[derive(Event)] struct Deposited { account: String, cents: u64 }
/// #[derive(EventData)] struct Balance { cents: u64, deposits: u32 }
/// const BALANCES: Table<String, Data<Balance>> = Table::new("balances", "by_account");
///
/// # let dir = tempfile::tempdir()?;
/// let db = Varve::open(dir.path())?;
/// let mut balances = Projection::new("balances").on::<Deposited>(|tx, e, _| {
///     let key = e.account.to_string();
///     let now = tx.get_data(&BALANCES, &key)?.map_or((0, 0), |b| (b.cents.to_native(), b.deposits.to_native()));
///     tx.put(&BALANCES, &key, &Balance { cents: now.0 + e.cents.to_native(), deposits: now.1 + 1 })?;
///     Ok(())
/// });
/// let deposit = |cents| NewEvent::from_event(&Deposited { account: "ana".into(), cents });
/// db.append(1u128, ExpectedVersion::Auto, [deposit(5)?, deposit(7)?])?;
/// balances.catch_up(&db)?;
/// let view = db.begin_read()?;
/// let b: &ArchivedBalance = view.get_data(&BALANCES, &"ana".to_owned())?.expect("stored");
/// assert_eq!((b.cents.to_native(), b.deposits.to_native()), (12, 2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Data<T>(PhantomData<fn() -> T>);

impl<T> std::fmt::Debug for Data<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data<{}>", std::any::type_name::<T>())
    }
}

/// The stored form of a [`Data`] value.
pub(crate) fn encode_data<T: Metadata>(value: &T) -> Result<Vec<u8>, Error> {
    crate::typed::metadata::encode(value)
}

/// Reads a stored [`Data`] value of `table` in place.
pub(crate) fn decode_data<'a, K, T: Metadata>(
    table: &Table<K, Data<T>>,
    raw: &'a [u8],
) -> Result<&'a T::Archived, Error> {
    let archive = archive_of::<T>(raw).map_err(|stored| Error::TableValueMismatch {
        table: table.describe(),
        stored,
        found: T::FINGERPRINT,
    })?;
    rkyv::access::<T::Archived, rkyv::rancor::Error>(archive).map_err(|e| Error::CorruptIndex {
        table: "projections",
        reason: format!("a value of {} does not validate as its type: {e}", table.describe()),
    })
}

/// A typed table of a projection's read model, like a `TableDefinition`: a name and types,
/// cheap to copy, usually a `const`.
///
/// ```
/// use varvedb::Table;
/// const TOTALS: Table<String, u64> = Table::new("order-totals", "by_customer");
/// assert_eq!((TOTALS.projection(), TOTALS.name()), ("order-totals", "by_customer"));
/// ```
pub struct Table<K, V> {
    projection: &'static str,
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Table<K, V> {}

impl<K, V> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({}/{})", self.projection, self.name)
    }
}

/// The key prefix of every table of a projection.
pub(crate) fn projection_prefix(projection: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + projection.len());
    push_name(&mut out, projection);
    out
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    let len = name.len().min(255);
    out.push(u8::try_from(len).unwrap_or(u8::MAX));
    out.extend_from_slice(&name.as_bytes()[..len]);
}

impl<K, V> Table<K, V> {
    /// Table `name` of projection `projection` (names of 1 to 255 bytes).
    ///
    /// # Panics
    /// At compile time (in a `const`) or when called, if a name is empty or over 255 bytes.
    #[must_use]
    pub const fn new(projection: &'static str, name: &'static str) -> Self {
        assert!(!projection.is_empty() && projection.len() <= 255, "projection names are 1 to 255 bytes");
        assert!(!name.is_empty() && name.len() <= 255, "table names are 1 to 255 bytes");
        Table { projection, name, _types: PhantomData }
    }

    /// The projection that owns the table.
    #[must_use]
    pub fn projection(&self) -> &'static str {
        self.projection
    }

    /// The table's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn describe(&self) -> String {
        format!("{}/{}", self.projection, self.name)
    }

    fn prefix(&self, out: &mut Vec<u8>) {
        out.clear();
        push_name(out, self.projection);
        push_name(out, self.name);
    }

    pub(crate) fn encode_key(&self, key: &K, out: &mut Vec<u8>)
    where
        K: Key,
    {
        self.prefix(out);
        key.encode_key(out);
    }

    pub(crate) fn decode_value(&self, raw: &[u8]) -> Result<V, Error>
    where
        V: Value,
    {
        V::decode(raw).ok_or_else(|| Error::CorruptIndex {
            table: "projections",
            reason: format!("a value of {} does not decode as its type", self.describe()),
        })
    }
}

/// Entries of a projection table in key order, from [`ReadView::entries`].
pub struct TableEntries<'v, K, V> {
    raw: Entries<'v>,
    prefix_len: usize,
    table: Table<K, V>,
}

impl<K: Key, V: Value> Iterator for TableEntries<'_, K, V> {
    type Item = Result<(K, V), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = match self.raw.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let key = k.get(self.prefix_len..).and_then(K::decode_key).ok_or_else(|| Error::CorruptIndex {
            table: "projections",
            reason: format!("a key of {} does not decode as its type", self.table.describe()),
        });
        Some(key.and_then(|key| Ok((key, self.table.decode_value(v)?))))
    }
}

impl ReadView<'_> {
    /// The value under `key` in a projection's table, as of this snapshot.
    ///
    /// # Errors
    /// A storage error, or [`Error::CorruptIndex`] if the value does not decode.
    pub fn get<K: Key, V: Value>(&self, table: &Table<K, V>, key: &K) -> Result<Option<V>, Error> {
        let mut k = Vec::new();
        table.encode_key(key, &mut k);
        let storage = self.storage();
        match storage.get(self.txn(), storage.tables.projections, &k)? {
            None => Ok(None),
            Some(raw) => table.decode_value(raw).map(Some),
        }
    }

    /// The [`Data`] value under `key` in a projection's table, read in place from this
    /// snapshot.
    ///
    /// # Errors
    /// A storage error; [`Error::TableValueMismatch`] if the value was stored by a type of
    /// another shape; [`Error::CorruptIndex`] if it does not validate.
    pub fn get_data<K: Key, T: Metadata>(
        &self,
        table: &Table<K, Data<T>>,
        key: &K,
    ) -> Result<Option<&T::Archived>, Error> {
        let mut k = Vec::new();
        table.encode_key(key, &mut k);
        let storage = self.storage();
        match storage.get(self.txn(), storage.tables.projections, &k)? {
            None => Ok(None),
            Some(raw) => decode_data(table, raw).map(Some),
        }
    }

    /// Every entry of a projection's table, in key order.
    ///
    /// # Errors
    /// A storage error; each item may be [`Error::CorruptIndex`].
    pub fn entries<K: Key, V: Value>(&self, table: &Table<K, V>) -> Result<TableEntries<'_, K, V>, Error> {
        let mut from = Vec::new();
        table.prefix(&mut from);
        let prefix_len = from.len();
        let to = successor(&from);
        let storage = self.storage();
        let upper = to.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let raw = storage.entries(
            self.txn(),
            storage.tables.projections,
            (Bound::Included(&from), upper),
            false,
        )?;
        Ok(TableEntries { raw, prefix_len, table: *table })
    }
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < u8::MAX {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<K: Key>(k: &K) -> Vec<u8> {
        let mut out = Vec::new();
        k.encode_key(&mut out);
        out
    }

    #[test]
    fn key_encodings_preserve_order_and_round_trip() {
        let ints = [i64::MIN, -300, -1, 0, 1, 255, 256, i64::MAX];
        for w in ints.windows(2) {
            assert!(key(&w[0]) < key(&w[1]), "{} < {}", w[0], w[1]);
        }
        for i in ints {
            assert_eq!(i64::decode_key(&key(&i)), Some(i));
        }
        let unsigned = [0u64, 1, 255, 256, u64::MAX];
        for w in unsigned.windows(2) {
            assert!(key(&w[0]) < key(&w[1]));
        }
        assert_eq!(String::decode_key(&key(&"héllo".to_owned())).as_deref(), Some("héllo"));
        assert_eq!(u32::decode_key(&[1, 2, 3]), None);
    }

    #[test]
    fn table_prefixes_never_overlap() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        Table::<u8, u8>::new("ab", "c").prefix(&mut a);
        Table::<u8, u8>::new("a", "bc").prefix(&mut b);
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        assert_eq!(successor(&[1, 2, 0xff]), Some(vec![1, 3]));
        assert_eq!(successor(&[0xff]), None);
    }
}
