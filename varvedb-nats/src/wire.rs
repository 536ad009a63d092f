//! How an event travels: its subject, its headers and its message body.
//!
//! Body: `format u8 (1) ‖ flags u8 ‖ record length u32 LE ‖ record ‖ stream kind length u8
//! (0: none) ‖ stream kind ‖ [stream key length u8 ‖ stream key] ‖ [header MAC 32] ‖ blob`,
//! flags bit 0: a blob follows, bit 1: a stream key is there, bit 2: a header MAC is there
//! (the last two, an encrypted store's key material, see `ReplicatedEvent::stream_key`).
//! The record carries its own checksum, which covers its seq; the blob is checked against the
//! hash the record names, and the key material by the replica's master key.
//!
//! A shred of an encrypted store travels on `<prefix>-shreds.<stream id in hex>` with the
//! message id `<store id>:shred:<stream id in hex>:<key epoch>` and the body `format u8 (1) ‖
//! after u64 LE ‖ marker`.

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};
use varvedb::{ReplicatedEvent, ReplicatedShred, StoreId, StreamId};

use crate::ReplicationError;

const FORMAT: u8 = 1;
const HAS_BLOB: u8 = 1;
const HAS_KEY: u8 = 2;
const HAS_MAC: u8 = 4;
const HAS_SCHEMA: u8 = 8;
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
    let flags = [
        (event.blob().is_some(), HAS_BLOB),
        (event.stream_key().is_some(), HAS_KEY),
        (event.header_mac().is_some(), HAS_MAC),
        (event.schema_entries().next().is_some(), HAS_SCHEMA),
    ];
    out.put_u8(flags.iter().filter(|(on, _)| *on).fold(0, |acc, (_, bit)| acc | bit));
    // A record is far below 4 GiB: the store caps events at `max_event_size`.
    out.put_u32_le(u32::try_from(record.len()).unwrap_or(u32::MAX));
    out.put_slice(record);
    let kind = event.stream_kind().unwrap_or_default();
    // A kind is at most 255 bytes: the store refuses longer ones.
    out.put_u8(u8::try_from(kind.len()).unwrap_or(u8::MAX));
    out.put_slice(kind.as_bytes());
    if let Some(key) = event.stream_key() {
        // A `keys` entry is 41 or 65 bytes.
        out.put_u8(u8::try_from(key.len()).unwrap_or(u8::MAX));
        out.put_slice(key);
    }
    if let Some(mac) = event.header_mac() {
        out.put_slice(mac);
    }
    if event.schema_entries().next().is_some() {
        // Registry keys are under 300 bytes, and an export carries a few entries per event.
        out.put_u16_le(u16::try_from(event.schema_entries().count()).unwrap_or(u16::MAX));
        for (k, v) in event.schema_entries() {
            out.put_u16_le(u16::try_from(k.len()).unwrap_or(u16::MAX));
            out.put_slice(k);
            out.put_u32_le(u32::try_from(v.len()).unwrap_or(u32::MAX));
            out.put_slice(v);
        }
    }
    out.put_slice(blob);
    out.freeze()
}

/// The subject a shred of `stream` is published on: `<prefix>-shreds.<stream id in hex>`.
pub(crate) fn shred_subject(prefix: &str, stream: StreamId) -> String {
    format!("{prefix}-shreds.{:032x}", stream.as_u128())
}

pub(crate) fn shred_headers(store: StoreId, shred: &ReplicatedShred) -> HeaderMap {
    let mut h = HeaderMap::new();
    let id = format!("{store}:shred:{:032x}:{}", shred.stream().as_u128(), shred.key_epoch());
    h.insert(MSG_ID, id.as_str());
    h
}

pub(crate) fn encode_shred(shred: &ReplicatedShred) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + shred.marker().len());
    out.put_u8(FORMAT);
    out.put_u64_le(shred.after());
    out.put_slice(shred.marker());
    out.freeze()
}

pub(crate) fn decode_shred(
    subject: &str,
    stream_sequence: u64,
    body: &[u8],
) -> Result<ReplicatedShred, ReplicationError> {
    let bad = |reason: &str| ReplicationError::BadMessage { stream_sequence, reason: reason.to_owned() };
    let stream = subject
        .rsplit('.')
        .next()
        .and_then(|hex| u128::from_str_radix(hex, 16).ok())
        .ok_or_else(|| bad("the subject does not name a stream"))?;
    let (&[format], rest) = body.split_first_chunk::<1>().ok_or_else(|| bad("too short"))?;
    if format != FORMAT {
        return Err(bad("unknown body format"));
    }
    let (after, marker) = rest.split_first_chunk::<8>().ok_or_else(|| bad("too short"))?;
    Ok(ReplicatedShred::from_parts(stream, u64::from_le_bytes(*after), marker.to_vec())?)
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
    if flags & !(HAS_BLOB | HAS_KEY | HAS_MAC | HAS_SCHEMA) != 0 {
        return Err(bad("unknown flags"));
    }
    let (kind, mut rest) = rest.split_at(kind_len);
    let kind = match kind_len {
        0 => None,
        _ => Some(std::str::from_utf8(kind).map_err(|_| bad("stream kind is not UTF-8"))?),
    };
    let mut stream_key = None;
    if flags & HAS_KEY != 0 {
        let (&[len], tail) = rest.split_first_chunk::<1>().ok_or_else(|| bad("no stream key length"))?;
        if tail.len() < usize::from(len) {
            return Err(bad("stream key shorter than its length"));
        }
        let (key, tail) = tail.split_at(usize::from(len));
        stream_key = Some(key.to_vec());
        rest = tail;
    }
    let mut header_mac = None;
    if flags & HAS_MAC != 0 {
        let (mac, tail) = rest.split_first_chunk::<32>().ok_or_else(|| bad("header MAC too short"))?;
        header_mac = Some(*mac);
        rest = tail;
    }
    let mut schema = Vec::new();
    if flags & HAS_SCHEMA != 0 {
        let (count, mut tail) = rest.split_first_chunk::<2>().ok_or_else(|| bad("no schema entry count"))?;
        for _ in 0..u16::from_le_bytes(*count) {
            let (len, t) = tail.split_first_chunk::<2>().ok_or_else(|| bad("schema entry too short"))?;
            let len = usize::from(u16::from_le_bytes(*len));
            let (k, t) = t.split_at_checked(len).ok_or_else(|| bad("schema key shorter than its length"))?;
            let (vlen, t) = t.split_first_chunk::<4>().ok_or_else(|| bad("schema entry too short"))?;
            let vlen = u32::from_le_bytes(*vlen) as usize;
            let (v, t) =
                t.split_at_checked(vlen).ok_or_else(|| bad("schema value shorter than its length"))?;
            schema.push((k.to_vec(), v.to_vec()));
            tail = t;
        }
        rest = tail;
    }
    let blob = rest;
    let blob = match (flags & HAS_BLOB != 0, blob.is_empty()) {
        (true, _) => Some(blob.to_vec()),
        (false, true) => None,
        (false, false) => return Err(bad("bytes after the record")),
    };
    let mut event = ReplicatedEvent::from_parts(seq, record.to_vec(), blob, kind)?;
    if !schema.is_empty() {
        event = event.with_schema_entries(schema)?;
    }
    if stream_key.is_none() && header_mac.is_none() {
        return Ok(event);
    }
    Ok(event.with_key_material(stream_key, header_mac)?)
}
