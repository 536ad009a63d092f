//! Stream ids.

use std::fmt;

/// Identifies a stream: 128 bits, typically a UUID.
///
/// ```
/// use varvedb::StreamId;
/// let id = StreamId::from(42u128);
/// assert_eq!(id.as_u128(), 42);
/// assert_eq!(StreamId::from([0u8; 16]), StreamId::from(0u128));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId(u128);

impl StreamId {
    /// The id as a number.
    #[must_use]
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The id as 16 big-endian bytes (the UUID byte order).
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl From<u128> for StreamId {
    fn from(id: u128) -> Self {
        StreamId(id)
    }
}

impl From<[u8; 16]> for StreamId {
    /// Reads the bytes big-endian, so a UUID's bytes give the UUID's number.
    fn from(bytes: [u8; 16]) -> Self {
        StreamId(u128::from_be_bytes(bytes))
    }
}

#[cfg(feature = "uuid")]
impl From<uuid::Uuid> for StreamId {
    fn from(id: uuid::Uuid) -> Self {
        StreamId(id.as_u128())
    }
}

impl From<StreamId> for u128 {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

impl fmt::Display for StreamId {
    /// Formats as a hyphenated UUID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_displays_as_uuid() {
        let id = StreamId::from(0x0011_2233_4455_6677_8899_aabb_ccdd_eeffu128);
        assert_eq!(id.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
