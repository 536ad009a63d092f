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

    /// The byte offset where an encrypted record's sealed body (its nonce first) starts.
    pub fn body_offset(record: &[u8]) -> usize {
        let id = if record[5] & 0x04 != 0 { 16 } else { 0 };
        48 + id + usize::from(record[6])
    }
}
