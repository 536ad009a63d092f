//! How an event travels: its subject, its headers and its message body.
//!
//! Body: `format u8 (1) ‖ flags u8 (bit 0: a blob follows) ‖ record length u32 LE ‖ record ‖
//! stream kind length u8 (0: none) ‖ stream kind ‖ blob`. The record carries its own checksum, which covers its seq; the blob is checked
//! against the hash the record names.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use varvedb::{ReplicatedEvent, StoreId, StreamId};

use crate::ReplicationError;

const FORMAT: u8 = 1;
const HAS_BLOB: u8 = 1;
/// The event's seq, beside the message id, so a reader needs no parsing of the id.
pub(crate) const SEQ_HEADER: &str = "Varve-Seq";
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
pub(crate) const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

/// The subject an event of `stream` is published on: `<prefix>.<stream id, 32 hex digits>`.
#[must_use]
pub fn subject(prefix: &str, stream: StreamId) -> String {
    format!("{prefix}.{:032x}", stream.as_u128())
}

/// The JetStream message id of the event at `seq` of the store `store`: `<store id>:<seq>`.
#[must_use]
pub fn message_id(store: StoreId, seq: u64) -> String {
    format!("{store}:{seq}")
}

pub(crate) fn headers(store: StoreId, seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, message_id(store, seq).as_str());
    if seq > 1 {
        h.insert(EXPECTED_LAST_MSG_ID, message_id(store, seq - 1).as_str());
    }
    h.insert(SEQ_HEADER, seq.to_string().as_str());
    h
}

pub(crate) fn encode(event: &ReplicatedEvent) -> Bytes {
    let record = event.record();
    let blob = event.blob().unwrap_or_default();
    let mut out = BytesMut::with_capacity(6 + record.len() + blob.len());
    out.put_u8(FORMAT);
    out.put_u8(if event.blob().is_some() { HAS_BLOB } else { 0 });
    // A record is far below 4 GiB: the store caps events at `max_event_size`.
    out.put_u32_le(u32::try_from(record.len()).unwrap_or(u32::MAX));
    out.put_slice(record);
    let kind = event.stream_kind().unwrap_or_default();
    // A kind is at most 255 bytes: the store refuses longer ones.
    out.put_u8(u8::try_from(kind.len()).unwrap_or(u8::MAX));
    out.put_slice(kind.as_bytes());
    out.put_slice(blob);
    out.freeze()
}

/// The seq a message says it carries (its `Varve-Seq` header).
pub(crate) fn seq_of(headers: Option<&HeaderMap>, stream_sequence: u64) -> Result<u64, ReplicationError> {
    let bad = |reason: &str| ReplicationError::BadMessage { stream_sequence, reason: reason.to_owned() };
    headers
        .and_then(|h| h.get(SEQ_HEADER))
        .ok_or_else(|| bad("no Varve-Seq header"))?
        .as_str()
        .parse()
        .map_err(|_| bad("Varve-Seq is not a number"))
}

pub(crate) fn decode(
    seq: u64,
    stream_sequence: u64,
    body: &[u8],
) -> Result<ReplicatedEvent, ReplicationError> {
    let bad = |reason: &str| ReplicationError::BadMessage { stream_sequence, reason: reason.to_owned() };
    let (&[format, flags], rest) = body.split_first_chunk::<2>().ok_or_else(|| bad("too short"))?;
    if format != FORMAT {
        return Err(bad("unknown body format"));
    }
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(|| bad("too short"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad("record shorter than its length"));
    }
    let (record, rest) = rest.split_at(len);
    let (&[kind_len], rest) = rest.split_first_chunk::<1>().ok_or_else(|| bad("no stream kind length"))?;
    let kind_len = usize::from(kind_len);
    if rest.len() < kind_len {
        return Err(bad("stream kind shorter than its length"));
    }
    let (kind, blob) = rest.split_at(kind_len);
    let kind = match kind_len {
        0 => None,
        _ => Some(std::str::from_utf8(kind).map_err(|_| bad("stream kind is not UTF-8"))?),
    };
    let blob = match (flags & HAS_BLOB != 0, blob.is_empty()) {
        (true, _) => Some(blob.to_vec()),
        (false, true) => None,
        (false, false) => return Err(bad("bytes after the record")),
    };
    Ok(ReplicatedEvent::from_parts(seq, record.to_vec(), blob, kind)?)
}
