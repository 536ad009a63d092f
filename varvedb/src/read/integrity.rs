//! The whole-store integrity check.

use std::collections::HashMap;

use crate::error::Error;
use crate::id::StreamId;
use crate::lmdb_file::{self, FileCoverage};
use crate::record::{Body, Content, Envelope};
use crate::storage::{key, value};
use crate::tlog::TreeHead;

use super::ReadView;

/// What [`ReadView::check_integrity`] verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Events in the log (all checksums verified).
    pub events: u64,
    /// Streams with at least one event.
    pub streams: u64,
    /// Blobs referenced (all hashes verified).
    pub blob_references: u64,
    /// Highest seq (equal to `events`: the log has no gaps).
    pub last_seq: u64,
    /// Events of shredded streams: their checksums were verified, their contents cannot be.
    pub shredded_events: u64,
    /// What the structural check of the file covered: the pages and tables of the view's
    /// snapshot, checked before anything is read through LMDB.
    pub file: FileCoverage,
    /// The head of the Merkle tree over the log, rebuilt from every event's record and
    /// compared with the stored tree, tile by tile (`None` if the store keeps no tree).
    pub tree_head: Option<TreeHead>,
}

impl ReadView<'_> {
    /// Verifies the whole store: first the structure of the file, every page of the view's
    /// snapshot, as [`verify_file`](crate::verify_file) does, so that damage to a page is
    /// reported rather than read through LMDB (which trusts its pages); then every record's
    /// checksum and blob hash, that seqs run from 1 without gaps, that the stored Merkle
    /// tree is the one the events' records give (rebuilt, tile by tile), that every stream's
    /// versions run from 1 without gaps, and that the stream index, stream heads and
    /// event-id index agree with the log exactly. In an encrypted store, also every event's
    /// authentication (a shredded event's clear header against its MAC) and the `keys`
    /// table against its authenticator.
    ///
    /// Reads every page and every event; takes time proportional to the store's size. LMDB
    /// records where a snapshot starts only until two more commits land: on a view older
    /// than that, the page walk covers the newest commit's snapshot instead, holding the
    /// store's write lock while it runs (about 1 ms per MB), and
    /// [`FileCoverage::snapshot`](crate::FileCoverage::snapshot) says which was walked.
    ///
    /// ```
    /// use varvedb::{ExpectedVersion, NewEvent, Varve};
    /// # let dir = tempfile::tempdir()?;
    /// let db = Varve::open(dir.path())?;
    /// db.append(1u128, ExpectedVersion::NoStream, [NewEvent::new("noted", b"x".to_vec())])?;
    /// let report = db.begin_read()?.check_integrity()?;
    /// assert_eq!((report.events, report.streams), (1, 1));
    /// assert!(report.file.tables >= 1 && report.file.pages >= 1);
    /// # Ok::<(), varvedb::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first inconsistency found, as [`Error::CorruptFile`] (naming the page),
    /// [`Error::Corrupt`] (naming the seq) or [`Error::CorruptIndex`] (naming the table);
    /// [`Error::WouldDeadlock`] inside a projection handler when the view is older than the
    /// last two commits.
    pub fn check_integrity(&self) -> Result<IntegrityReport, Error> {
        let tables = self.storage.tables;
        let bad = |table: &'static str, reason: String| Error::CorruptIndex { table, reason };
        // Before any read through LMDB: the pages of this view's snapshot.
        let path = self.storage.path();
        let file = match lmdb_file::check_snapshot(path, self.txn.id() as u64)? {
            Some(report) => report.coverage(),
            None => {
                // With the write lock held no commit lands, so the newest snapshot's meta
                // page stays as it is for the walk.
                let txn = self.storage.write_txn()?;
                let newest = (txn.id() as u64).saturating_sub(1);
                lmdb_file::check_snapshot(path, newest)?
                    .ok_or_else(|| {
                        Error::Internal("the newest commit's meta page changed under the write lock")
                    })?
                    .coverage()
            }
        };
        let mut report = IntegrityReport { file, ..IntegrityReport::default() };
        let mut versions: HashMap<u128, u32> = HashMap::new();
        let mut with_ids = 0u64;
        let mut tree = self.tree_check()?;
        let mut log = self.read_all(0)?;
        let mut buf = Vec::new();
        while let Some(event) = log.next_reusing(&mut buf) {
            let e = event?;
            let expected_seq = report.last_seq + 1;
            if e.seq != expected_seq {
                return Err(bad("events", format!("seq {} follows seq {} (gap)", e.seq, report.last_seq)));
            }
            report.last_seq = e.seq;
            report.events += 1;
            let stream = e.stream.as_u128();
            let last = versions.entry(stream).or_insert(0);
            if Some(e.version) != last.checked_add(1) {
                return Err(bad(
                    "events",
                    format!("seq {} has version {} after version {last}", e.seq, e.version),
                ));
            }
            *last = e.version;
            if self.storage.index_seq(&self.txn, stream, e.version)? != Some(e.seq) {
                return Err(bad(
                    "streams",
                    format!("entry for seq {} (version {}) is missing or wrong", e.seq, e.version),
                ));
            }
            if let Some(id) = e.id {
                with_ids += 1;
                let at = self.storage.get(&self.txn, tables.event_ids, &key::id(id))?;
                if at.and_then(value::decode_seq) != Some(e.seq) {
                    return Err(bad("event_ids", format!("id of seq {} is missing or wrong", e.seq)));
                }
            }
            let raw = self.storage.get(&self.txn, tables.events, &key::seq(e.seq))?.unwrap_or_default();
            // The tree covers every record, a shredded stream's too: its headers stay checked.
            if let Some(tree) = &mut tree {
                self.tree_check_push(tree, e.seq, raw)?;
            }
            if e.shredded {
                // Shredding deletes the stream's blobs: their contents are unreadable anyway.
                report.shredded_events += 1;
                continue;
            }
            if let Content::Plain { body: Body::Blob { .. }, .. }
            | Content::Sealed { body: Body::Blob { .. }, .. } = Envelope::decode(e.seq, raw)?.content
            {
                report.blob_references += 1;
            }
        }
        report.streams = versions.len() as u64;
        if let Some(tree) = tree {
            report.tree_head = Some(self.finish_tree_check(tree)?);
        }
        let count = |table| self.storage.len(&self.txn, table);
        if let Some(crypto) = &self.crypto {
            crate::key_record::verify_keys(self.storage, &self.txn, &crypto.master, false)?;
        }
        if count(tables.shredded_headers)? != report.shredded_events {
            return Err(bad(
                "shredded_headers",
                "holds header MACs of events that are not shredded events of the log".into(),
            ));
        }
        self.check_index_size(&versions)?;
        if count(tables.event_ids)? != with_ids {
            return Err(bad("event_ids", "holds ids of events that are not in the log".into()));
        }
        if count(tables.stream_heads)? != report.streams {
            return Err(bad("stream_heads", "holds heads of streams with no events".into()));
        }
        for (&stream, &version) in &versions {
            if self.stream_version(stream)? != Some(version) {
                return Err(bad(
                    "stream_heads",
                    format!("head of stream {} is not {version}", StreamId::from(stream)),
                ));
            }
        }
        Ok(report)
    }

    /// That the index holds nothing but the entries of `versions` (each stream's last
    /// version), whose every entry was found in place: one chunk in `streams` per 64
    /// versions, and no entry past a stream's last version in the tail its head holds.
    fn check_index_size(&self, versions: &HashMap<u128, u32>) -> Result<(), Error> {
        let chunks: u64 = versions.values().map(|&v| u64::from(v / key::INDEX_CHUNK)).sum();
        let mut surplus = false;
        for (&stream, &version) in versions {
            if let Some(next) = version.checked_add(1) {
                surplus |= self.storage.index_seq(&self.txn, stream, next)?.is_some();
            }
        }
        // Entries past a stream's version are in its tail, in its head.
        if surplus {
            return Err(Error::CorruptIndex {
                table: "stream_heads",
                reason: "holds index entries for events that are not in the log".into(),
            });
        }
        if self.storage.len(&self.txn, self.storage.tables.streams)? != chunks {
            return Err(Error::CorruptIndex {
                table: "streams",
                reason: "holds entries for events that are not in the log".into(),
            });
        }
        Ok(())
    }
}
