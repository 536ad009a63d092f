//! How a pending event travels to the hub, and how a hub message becomes an accepted record.
//!
//! Subject `<prefix>.<stream id, 32 hex digits>`; headers `Nats-Msg-Id: <event id, 32 hex
//! digits>` and `Nats-Expected-Last-Subject-Sequence: <hub seq of the stream's last accepted
//! event, 0 for none>`. Body (integers little-endian): `format u8 (1) ‖ stream u128 ‖
//! version u32 ‖ timestamp µs u64 ‖ schema version u32 ‖ event id u128 ‖ type tag length u8
//! ‖ type tag ‖ stream kind length u8 ‖ stream kind ‖ metadata length u32 ‖ metadata ‖
//! payload`. No record travels: a record's checksum covers its seq, which only the hub's
//! order decides.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use varvedb::{EventFields, RecordedEvent, ReplicatedEvent, StreamId};

use super::SyncError;

const FORMAT: u8 = 1;
const MSG_ID: &str = "Nats-Msg-Id";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

pub(crate) fn headers(event_id: u128, expected: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, format!("{event_id:032x}").as_str());
    h.insert(EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
    h
}

/// The body of the pending `event` of `stream`, to become the stream's version `version`.
pub(crate) fn encode(event: &RecordedEvent<'_>, stream: StreamId, version: u32, kind: &str) -> Bytes {
    let (tag, meta, payload) = (event.type_tag(), event.metadata(), event.payload());
    let mut out = BytesMut::with_capacity(64 + tag.len() + kind.len() + meta.len() + payload.len());
    out.put_u8(FORMAT);
    out.put_u128_le(stream.as_u128());
    out.put_u32_le(version);
    out.put_u64_le(event.timestamp_micros());
    out.put_u32_le(event.schema_version());
    out.put_u128_le(event.id().unwrap_or_default());
    // Tags and kinds are at most 255 bytes, metadata below 4 GiB: the store checked them.
    out.put_u8(tag.len() as u8);
    out.put_slice(tag.as_bytes());
    out.put_u8(kind.len() as u8);
    out.put_slice(kind.as_bytes());
    out.put_u32_le(meta.len() as u32);
    out.put_slice(meta);
    out.put_slice(payload);
    out.freeze()
}

/// The accepted record of hub message `hub_seq`, published on `subject`.
pub(crate) fn decode(
    prefix: &str,
    hub_seq: u64,
    subject: &str,
    body: &[u8],
) -> Result<ReplicatedEvent, SyncError> {
    let bad = |reason: &str| SyncError::BadMessage { hub_seq, reason: reason.to_owned() };
    let mut rest = body;
    let mut take = |n: usize| split(&mut rest, n).ok_or_else(|| bad("too short"));
    if take(1)? != [FORMAT] {
        return Err(bad("unknown body format"));
    }
    let stream = StreamId::from(u128::from_le_bytes(array(take(16)?)));
    let version = u32::from_le_bytes(array(take(4)?));
    let timestamp_micros = u64::from_le_bytes(array(take(8)?));
    let schema_version = u32::from_le_bytes(array(take(4)?));
    let id = u128::from_le_bytes(array(take(16)?));
    let tag_len = usize::from(take(1)?[0]);
    let type_tag = std::str::from_utf8(take(tag_len)?).map_err(|_| bad("type tag is not UTF-8"))?;
    let kind_len = usize::from(take(1)?[0]);
    let kind = std::str::from_utf8(take(kind_len)?).map_err(|_| bad("stream kind is not UTF-8"))?;
    let meta_len = u32::from_le_bytes(array(take(4)?)) as usize;
    let metadata = take(meta_len)?;
    let payload = rest;
    if subject != crate::subject(prefix, stream) {
        return Err(bad("published on another stream's subject"));
    }
    let fields = EventFields {
        stream,
        version,
        timestamp_micros,
        id: Some(id),
        type_tag,
        schema_version,
        metadata,
        payload,
    };
    let kind = (!kind.is_empty()).then_some(kind);
    Ok(ReplicatedEvent::from_fields(hub_seq, &fields, kind)?)
}

/// The first `n` bytes of `rest`, which keeps the others.
fn split<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let all: &'a [u8] = rest;
    let (head, tail) = all.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

/// `bytes` (exactly `N` of them, as [`split`] took) as an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_body_is_an_error() {
        for len in 0..40 {
            let body = vec![FORMAT; len];
            assert!(decode("p", 1, "p.x", &body).is_err());
        }
    }
}
