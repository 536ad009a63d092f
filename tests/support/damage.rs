//! Damage done to a closed store's file, shared by the tests that check how it is reported.
//! Each test file uses part of it.
#![allow(dead_code)]

/// Flips one byte of every on-disk copy of `needle` in `data.mdb` (LMDB's copy-on-write may
/// leave stale copies in free pages; the live one is among them). Returns how many.
pub fn flip_in_file(dir: &std::path::Path, needle: &[u8], offset: usize) -> usize {
    let path = dir.join("data.mdb");
    let mut bytes = std::fs::read(&path).unwrap();
    let hits: Vec<usize> =
        bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    for &i in &hits {
        bytes[i + offset] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();
    hits.len()
}

/// Raw access to a closed store's file through LMDB, as damage or an attacker would have it.
pub mod raw {
    use std::path::Path;

    use heed::types::Bytes;

    fn with_env<R>(dir: &Path, f: impl FnOnce(&heed::Env, &mut heed::RwTxn<'_>) -> R) -> R {
        // SAFETY: the store is closed (every `Varve` of it was dropped), so nothing else maps
        // the file while this environment is open; it is closed again before returning.
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).map_size(1 << 30).open(dir) }.unwrap();
        let mut txn = env.write_txn().unwrap();
        let out = f(&env, &mut txn);
        txn.commit().unwrap();
        env.prepare_for_closing().wait();
        out
    }

    fn table(env: &heed::Env, txn: &heed::RwTxn<'_>, name: &str) -> heed::Database<Bytes, Bytes> {
        env.open_database(txn, Some(name)).unwrap().unwrap()
    }

    pub fn get(dir: &Path, name: &str, k: &[u8]) -> Option<Vec<u8>> {
        with_env(dir, |env, txn| table(env, txn, name).get(txn, k).unwrap().map(<[u8]>::to_vec))
    }

    pub fn put(dir: &Path, name: &str, k: &[u8], v: &[u8]) {
        with_env(dir, |env, txn| table(env, txn, name).put(txn, k, v).unwrap());
    }

    pub fn delete(dir: &Path, name: &str, k: &[u8]) {
        with_env(dir, |env, txn| assert!(table(env, txn, name).delete(txn, k).unwrap()));
    }

    pub fn all(dir: &Path, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        with_env(dir, |env, txn| {
            table(env, txn, name)
                .iter(txn)
                .unwrap()
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect()
        })
    }

    pub fn event(dir: &Path, seq: u64) -> Vec<u8> {
        get(dir, "events", &seq.to_be_bytes()).expect("record stored")
    }

    /// Stores `record` under `seq` with a checksum forged for that seq.
    pub fn put_event(dir: &Path, seq: u64, mut record: Vec<u8>) {
        varvedb::__private::forge_checksum(seq, &mut record);
        put(dir, "events", &seq.to_be_bytes(), &record);
    }

    /// The byte offset where an encrypted record's sealed body (its nonce first) starts:
    /// past the 30 fixed bytes, the numbers (LEB128: version, the metadata length with the
    /// metadata flag, schema version, the payload length with the blob flag), the event id
    /// and the type tag.
    pub fn body_offset(record: &[u8]) -> usize {
        let numbers = 2 + usize::from(record[4] & 0x08 != 0) + usize::from(record[4] & 0x02 != 0);
        let mut at = 30;
        for _ in 0..numbers {
            while record[at] & 0x80 != 0 {
                at += 1;
            }
            at += 1;
        }
        let id = if record[4] & 0x04 != 0 { 16 } else { 0 };
        at + id + usize::from(record[5])
    }
}

/// The stream index as `docs/design.md` describes it: per stream, chunks of the seqs of 64
/// consecutive versions, each seq the LEB128 difference from the one before; full chunks in
/// `streams`, the entries after the last full one (the tail) at the end of the stream's head.
pub mod index {
    use std::path::Path;

    pub fn key(stream: u128, chunk: u32) -> Vec<u8> {
        [&stream.to_be_bytes()[..], &chunk.to_be_bytes()].concat()
    }

    pub fn decode(mut v: &[u8]) -> Vec<u64> {
        let (mut seqs, mut seq) = (Vec::new(), 0u64);
        while !v.is_empty() {
            let (mut delta, mut shift) = (0u64, 0);
            loop {
                let (b, rest) = v.split_first().unwrap();
                v = rest;
                delta |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            seq += delta;
            seqs.push(seq);
        }
        seqs
    }

    /// Encodes ascending seqs.
    pub fn encode(seqs: &[u64]) -> Vec<u8> {
        let (mut out, mut last) = (Vec::new(), 0u64);
        for &seq in seqs {
            let mut delta = seq.checked_sub(last).filter(|&d| d > 0).expect("ascending seqs");
            while delta >= 0x80 {
                out.push((delta & 0x7f) as u8 | 0x80);
                delta >>= 7;
            }
            out.push(delta as u8);
            last = seq;
        }
        out
    }

    /// The stream's head, split before its tail: `checksum u32 LE ‖ version u32 LE ‖ kind
    /// length u8 ‖ kind`, and the tail. Panics unless `chunk` is the chunk the tail holds.
    pub fn head(dir: &Path, stream: u128, chunk: u32) -> (Vec<u8>, Vec<u8>) {
        let mut head = super::raw::get(dir, "stream_heads", &stream.to_be_bytes()).expect("head stored");
        let version = u32::from_le_bytes(head[4..8].try_into().unwrap());
        assert_eq!(chunk, version / 64, "chunk {chunk} is neither in `streams` nor the tail");
        let tail = head.split_off(9 + usize::from(head[8]));
        (head, tail)
    }

    /// Stores a head with the checksum made to match, as damage past the checksum would.
    pub fn put_head(dir: &Path, stream: u128, mut head: Vec<u8>) {
        varvedb::__private::forge_head_checksum(stream, &mut head);
        super::raw::put(dir, "stream_heads", &stream.to_be_bytes(), &head);
    }

    /// Whether `chunk` is a full chunk, stored in `streams`.
    fn is_full(dir: &Path, stream: u128, chunk: u32) -> bool {
        super::raw::get(dir, "streams", &key(stream, chunk)).is_some()
    }

    pub fn get(dir: &Path, stream: u128, chunk: u32) -> Vec<u64> {
        match super::raw::get(dir, "streams", &key(stream, chunk)) {
            Some(v) => decode(&v),
            None => decode(&head(dir, stream, chunk).1),
        }
    }

    /// Writes the entries where a read looks for them: the tail if `chunk` is the one the
    /// stream's head holds, else a chunk in `streams`.
    pub fn put(dir: &Path, stream: u128, chunk: u32, seqs: &[u64]) {
        let version = super::raw::get(dir, "stream_heads", &stream.to_be_bytes())
            .map(|head| u32::from_le_bytes(head[4..8].try_into().unwrap()));
        if is_full(dir, stream, chunk) || version.is_none_or(|v| v / 64 != chunk) {
            super::raw::put(dir, "streams", &key(stream, chunk), &encode(seqs));
        } else {
            let (head, _) = head(dir, stream, chunk);
            put_head(dir, stream, [head, encode(seqs)].concat());
        }
    }

    pub fn delete(dir: &Path, stream: u128, chunk: u32) {
        if is_full(dir, stream, chunk) {
            super::raw::delete(dir, "streams", &key(stream, chunk));
        } else {
            let (head, _) = head(dir, stream, chunk);
            put_head(dir, stream, head);
        }
    }
}
