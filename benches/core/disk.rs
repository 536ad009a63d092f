//! What the disk allows and what each subject leaves on it.
//!
//! The floor: a durable commit cannot be cheaper than one flush of the pages it wrote. Two
//! flushes are timed in the directory holding the stores, 4 KiB each, as the p50 of many:
//! appending (the write extends the file, so `fdatasync` also commits the file's new size)
//! and in place (over a block written and flushed before). They are printed at the start and
//! at the end of a run, since the disk's speed drifts with the machine's other load.
//!
//! Bytes on disk: the sizes of the files in a store's directory, and for the LMDB stores the
//! pages each table holds according to LMDB's own statistics.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use heed::types::{Bytes, Str};
use heed::{Database, Env, EnvOpenOptions};

use crate::{MAP_SIZE, Res};

const BLOCK: usize = 4096;

/// p50 of an appending and of an in-place 4 KiB write + `fdatasync`.
pub(crate) struct Floor {
    pub(crate) append: Duration,
    pub(crate) in_place: Duration,
}

impl Floor {
    /// Times `samples` flushes of each kind, alternating them, in a file under `dir`.
    pub(crate) fn measure(dir: &Path, samples: usize) -> Res<Floor> {
        let block = [0x5a_u8; BLOCK];
        let mut appending = File::create(dir.join("append"))?;
        let mut in_place =
            OpenOptions::new().create(true).truncate(true).write(true).open(dir.join("in-place"))?;
        in_place.write_all(&block)?;
        in_place.sync_all()?;
        let (mut append, mut overwrite) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
        for _ in 0..samples {
            let t = Instant::now();
            appending.write_all(&block)?;
            appending.sync_data()?;
            append.push(t.elapsed());
            let t = Instant::now();
            in_place.seek(SeekFrom::Start(0))?;
            in_place.write_all(&block)?;
            in_place.sync_data()?;
            overwrite.push(t.elapsed());
        }
        Ok(Floor { append: p50(append), in_place: p50(overwrite) })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "4 KiB write + fdatasync, p50: appending {:.0} µs, in place {:.0} µs",
            self.append.as_secs_f64() * 1e6,
            self.in_place.as_secs_f64() * 1e6
        )
    }
}

fn p50(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len().saturating_sub(1) / 2).copied().unwrap_or_default()
}

/// The total size of the regular files directly in `dir`.
pub(crate) fn dir_bytes(dir: &Path) -> Res<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Bytes of LMDB pages per table (branch, leaf and overflow pages), by name, and the bytes of
/// the data file that no table holds (meta pages, the free list and free pages).
pub(crate) struct LmdbUsage {
    pub(crate) tables: Vec<(String, u64)>,
    pub(crate) other: u64,
}

impl LmdbUsage {
    pub(crate) fn of(env: &Env) -> Res<LmdbUsage> {
        let rtxn = env.read_txn()?;
        let main: Database<Str, Bytes> = env.open_database(&rtxn, None)?.ok_or("no main table")?;
        let names = main.iter(&rtxn)?.map(|e| Ok(e?.0.to_owned())).collect::<Res<Vec<String>>>()?;
        let bytes = |s: heed::DatabaseStat| {
            u64::from(s.page_size) * (s.branch_pages + s.leaf_pages + s.overflow_pages) as u64
        };
        let mut tables = Vec::new();
        for name in names {
            let table: Database<Bytes, Bytes> =
                env.open_database(&rtxn, Some(&name))?.ok_or("a listed table is missing")?;
            tables.push((name, bytes(table.stat(&rtxn)?)));
        }
        let held = bytes(main.stat(&rtxn)?) + tables.iter().map(|t| t.1).sum::<u64>();
        let other = env.real_disk_size()?.saturating_sub(held);
        Ok(LmdbUsage { tables, other })
    }

    /// Opens the LMDB store in `dir`, which no one else has open, for its usage.
    pub(crate) fn of_closed(dir: &Path) -> Res<LmdbUsage> {
        let mut options = EnvOpenOptions::new();
        options.map_size(MAP_SIZE).max_dbs(32);
        // SAFETY: the store in `dir` is closed (its handle dropped) and nothing else in this
        // process or another maps or modifies it until this environment is closed below.
        let env = unsafe { options.open(dir) }?;
        let usage = LmdbUsage::of(&env);
        env.prepare_for_closing().wait();
        usage
    }

    pub(crate) fn describe(&self, events: u64) -> String {
        #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
        let per = |b: u64| b as f64 / events as f64;
        // Tables under 0.1 byte per event are summed, not listed.
        let (listed, small): (Vec<_>, Vec<_>) = self.tables.iter().partition(|(_, b)| per(*b) >= 0.1);
        let mut parts: Vec<String> =
            listed.iter().map(|(name, b)| format!("{name} {:.1}", per(*b))).collect();
        if !small.is_empty() {
            parts.push(format!("{} other tables {:.2}", small.len(), per(small.iter().map(|t| t.1).sum())));
        }
        parts.push(format!("free and meta pages {:.1}", per(self.other)));
        format!("LMDB pages per event: {}", parts.join(", "))
    }
}
