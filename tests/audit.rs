//! The verifiable log: the Merkle tree the writer keeps over the log, checked against a
//! tree computed here from the leaves by the RFC's definition; inclusion and consistency
//! proofs; the leaf encoding; checkpoints, and stores that no longer hold a checkpointed
//! log (truncated, rolled back, a record replaced, a record spliced in, forked).

use std::fmt::Write as _;
use std::path::Path;

use varvedb::{
    Checkpoint, Error, ExpectedVersion, Hash, LeafFields, MasterKey, NewEvent, NoteSigner, Options, ReadView,
    Varve, WriteBatch, event_leaf, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};

#[path = "support/damage.rs"]
mod damage;
use damage::raw;

/// A store that keeps the tree.
fn open(dir: impl AsRef<Path>) -> Result<Varve, Error> {
    Options::new().verifiable_log(true).open(dir)
}

/// `MTH` by the definition of RFC 9162 §2.1.1.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => leaf_hash_of_nothing(),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// SHA-256 of the empty string, the empty tree's root.
fn leaf_hash_of_nothing() -> Hash {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    std::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
}

/// The leaf hashes of a view's log, from each event's leaf bytes.
fn leaves(view: &ReadView<'_>) -> Vec<Hash> {
    (1..=view.last_seq().unwrap()).map(|seq| leaf_hash(&view.leaf(seq).unwrap().unwrap())).collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Appends `n` events in batches of varying sizes and streams, so that commits end at many
/// different places of the tree.
fn fill(db: &Varve, n: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut written = 0;
    while written < n {
        let size = rng.u64(1..=40).min(n - written);
        let mut batch = WriteBatch::new();
        let events: Vec<NewEvent> = (0..size)
            .map(|i| {
                let seq = written + i + 1;
                let payload_len = if seq % 97 == 0 { 1500 } else { (seq % 50) as usize };
                let mut e = NewEvent::new("noted", vec![(seq % 251) as u8; payload_len]);
                if seq % 3 == 0 {
                    e = e.with_metadata(seq.to_le_bytes().to_vec());
                }
                if seq % 5 == 0 {
                    e = e.with_id(u128::from(seq) | (u128::from(seed) << 64));
                }
                e
            })
            .collect();
        batch.append(rng.u128(0..7), ExpectedVersion::Auto, events);
        db.write(batch).unwrap();
        written += size;
    }
}

#[test]
fn tree_heads_and_inclusion_proofs_for_every_seq_and_size_up_to_300() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    assert_eq!(db.begin_read().unwrap().tree_head().unwrap().root, leaf_hash_of_nothing());
    fill(&db, 300, 1);
    let view = db.begin_read().unwrap();
    let leaves = leaves(&view);
    assert_eq!(view.tree_head().unwrap().size, 300);
    for size in 1..=300u64 {
        let head = view.tree_head_at(size).unwrap();
        assert_eq!((head.size, head.root), (size, mth(&leaves[..size as usize])), "size {size}");
        for seq in 1..=size {
            let proof = view.inclusion_proof(seq, size).unwrap();
            let leaf = &leaves[seq as usize - 1];
            proof.verify(leaf, &head).unwrap_or_else(|e| panic!("seq {seq} size {size}: {e}"));
            if size > 1 {
                // The same proof says nothing about another leaf or another position.
                let other = &leaves[(seq % size) as usize];
                assert!(verify_inclusion(other, seq - 1, size, &proof.path, &head.root).is_err());
                assert!(verify_inclusion(leaf, seq % size, size, &proof.path, &head.root).is_err());
            }
        }
    }
    assert!(matches!(view.inclusion_proof(301, 300), Err(Error::BeyondTreeSize { .. })));
    assert!(matches!(view.inclusion_proof(5, 301), Err(Error::BeyondTreeSize { .. })));
    assert!(matches!(view.inclusion_proof(0, 3), Err(Error::BeyondTreeSize { .. })));
    assert!(matches!(view.tree_head_at(301), Err(Error::BeyondTreeSize { .. })));
}

#[test]
fn consistency_proofs_for_every_pair_of_sizes_up_to_130() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    fill(&db, 130, 2);
    let view = db.begin_read().unwrap();
    let heads: Vec<_> = (0..=130).map(|n| view.tree_head_at(n).unwrap()).collect();
    for new in 1..=130u64 {
        for old in 1..=new {
            let proof = view.consistency_proof(old, new).unwrap();
            let (o, n) = (&heads[old as usize], &heads[new as usize]);
            proof.verify(o, n).unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
            if old < new {
                // Another older tree is not a prefix by this proof.
                let wrong = &heads[old as usize - 1];
                assert!(verify_consistency(old, new, &proof.path, &wrong.root, &n.root).is_err());
                assert!(
                    verify_consistency(old, new, &proof.path, &o.root, &heads[new as usize - 1].root)
                        .is_err()
                );
            }
        }
    }
    assert!(matches!(view.consistency_proof(0, 5), Err(Error::BeyondTreeSize { .. })));
    assert!(matches!(view.consistency_proof(6, 5), Err(Error::BeyondTreeSize { .. })));
    assert!(matches!(view.consistency_proof(5, 131), Err(Error::BeyondTreeSize { .. })));
}

#[test]
fn every_single_byte_change_of_a_proof_root_or_leaf_fails() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    fill(&db, 77, 3);
    let view = db.begin_read().unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..40 {
        let size = rng.u64(2..=77);
        let seq = rng.u64(1..=size);
        let head = view.tree_head_at(size).unwrap();
        let leaf = view.leaf(seq).unwrap().unwrap();
        let proof = view.inclusion_proof(seq, size).unwrap();
        proof.verify(&leaf_hash(&leaf), &head).unwrap();
        for i in 0..leaf.len() {
            let mut bad = leaf.clone();
            bad[i] ^= 1 << rng.u32(0..8);
            assert!(proof.verify(&leaf_hash(&bad), &head).is_err(), "leaf byte {i}");
        }
        let hash = leaf_hash(&leaf);
        for i in 0..32 {
            let bit = 1 << rng.u32(0..8);
            let mut bad = hash;
            bad[i] ^= bit;
            assert!(verify_inclusion(&bad, seq - 1, size, &proof.path, &head.root).is_err());
            let mut bad = head.root;
            bad[i] ^= bit;
            assert!(verify_inclusion(&hash, seq - 1, size, &proof.path, &bad).is_err());
            for h in 0..proof.path.len() {
                let mut path = proof.path.clone();
                path[h][i] ^= bit;
                assert!(verify_inclusion(&hash, seq - 1, size, &path, &head.root).is_err());
            }
        }
        let old = rng.u64(1..size);
        let old_head = view.tree_head_at(old).unwrap();
        let proof = view.consistency_proof(old, size).unwrap();
        for i in 0..32 {
            let bit = 1 << rng.u32(0..8);
            for h in 0..proof.path.len() {
                let mut path = proof.path.clone();
                path[h][i] ^= bit;
                assert!(verify_consistency(old, size, &path, &old_head.root, &head.root).is_err());
            }
            let (mut a, mut b) = (old_head.root, head.root);
            a[i] ^= bit;
            b[i] ^= bit;
            assert!(verify_consistency(old, size, &proof.path, &a, &head.root).is_err());
            assert!(verify_consistency(old, size, &proof.path, &old_head.root, &b).is_err());
        }
    }
}

#[test]
fn random_proofs_in_a_large_store_verify_against_a_recomputed_root() {
    // VARVEDB_AUDIT_EVENTS: events in the store (default 1,000,000).
    let n = env_or("VARVEDB_AUDIT_EVENTS", 1_000_000);
    let pairs = env_or("VARVEDB_AUDIT_PAIRS", 2000);
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    let mut rng = fastrand::Rng::with_seed(4);
    let mut written = 0;
    while written < n {
        let size = rng.u64(1..=2000).min(n - written);
        let events: Vec<_> =
            (0..size).map(|i| NewEvent::new("e", (written + i).to_le_bytes().to_vec())).collect();
        db.append(rng.u128(0..50), ExpectedVersion::Auto, events).unwrap();
        written += size;
    }
    let view = db.begin_read().unwrap();
    let leaves = leaves(&view);
    let head = view.tree_head().unwrap();
    assert_eq!((head.size, head.root), (n, mth(&leaves)));
    for _ in 0..pairs {
        let size = rng.u64(1..=n);
        let seq = rng.u64(1..=size);
        let at = view.tree_head_at(size).unwrap();
        view.inclusion_proof(seq, size).unwrap().verify(&leaves[seq as usize - 1], &at).unwrap();
        // The head of that size is a prefix of the head checked against the recomputed root.
        view.consistency_proof(size, n).unwrap().verify(&at, &head).unwrap();
    }
}

#[test]
fn the_leaf_of_an_event_is_its_documented_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    fill(&db, 200, 5);
    let view = db.begin_read().unwrap();
    for seq in 1..=200 {
        let event = view.event(seq).unwrap().unwrap();
        assert_eq!(Some(event_leaf(&LeafFields::of(&event))), view.leaf(seq).unwrap(), "seq {seq}");
    }
    assert_eq!(view.leaf(201).unwrap(), None);
}

/// The test vector of `docs/audit.md`.
#[test]
fn leaf_encoding_test_vector() {
    let fields = LeafFields {
        seq: 7,
        stream: 0x0102,
        version: 3,
        timestamp_micros: 1_700_000_000_000_000,
        schema_version: 0,
        id: None,
        type_tag: "user.login",
        metadata: b"",
        payload: b"alice",
    };
    let leaf = event_leaf(&fields);
    let hex = |b: &[u8]| {
        b.iter().fold(String::new(), |mut s, x| {
            write!(s, "{x:02x}").unwrap();
            s
        })
    };
    assert_eq!(
        hex(&leaf),
        "0000000000000007\
         000a\
         02010000000000000000000000000000\
         00401e18240a0600\
         0300\
         757365722e6c6f67696e\
         616c696365"
    );
    assert_eq!(hex(&leaf_hash(&leaf)), LEAF_HASH);
}

const LEAF_HASH: &str = "458677f72c07842c2577d1f07b5b201a543c8ef7772d1c422bccdb4fbb89cabb";

fn signer() -> NoteSigner {
    NoteSigner::new("audit.example/log", [42; 32]).unwrap()
}

fn checkpoint_of(db: &Varve) -> String {
    let head = db.begin_read().unwrap().tree_head().unwrap();
    signer().sign_checkpoint(&Checkpoint::new("audit.example/log", head.size, head.root)).unwrap()
}

fn verify(dir: &Path, note: &str) -> Result<(), Error> {
    let checkpoint = Checkpoint::open(note, &signer().verifier_key()).unwrap();
    let db = open(dir).unwrap();
    let view = db.begin_read()?;
    view.verify_checkpoint(&checkpoint)
}

fn diverged_at(result: Result<(), Error>) -> u64 {
    match result {
        Err(Error::LogDiverged { first_diverging_size, .. }) => first_diverging_size,
        other => panic!("expected a diverged log, got {other:?}"),
    }
}

#[test]
fn a_store_verifies_against_its_earlier_checkpoints_as_it_grows() {
    let dir = tempfile::tempdir().unwrap();
    let mut notes = Vec::new();
    {
        let db = open(dir.path()).unwrap();
        for round in 0..5 {
            fill(&db, 37, 10 + round);
            notes.push(checkpoint_of(&db));
        }
    }
    for note in &notes {
        verify(dir.path(), note).unwrap();
    }
    // The signed note is a C2SP checkpoint: origin, size, base64 root.
    let text = varvedb::open_note(&notes[1], &signer().verifier_key()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["audit.example/log", "74"]);
}

#[test]
fn a_store_truncated_by_one_event_fails_at_that_size() {
    let dir = tempfile::tempdir().unwrap();
    let note = {
        let db = open(dir.path()).unwrap();
        fill(&db, 50, 20);
        checkpoint_of(&db)
    };
    raw::delete(dir.path(), "events", &50u64.to_be_bytes());
    assert_eq!(diverged_at(verify(dir.path(), &note)), 50);
}

#[test]
fn a_store_rolled_back_to_an_older_copy_fails_past_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let note = {
        let db = open(dir.path()).unwrap();
        fill(&db, 40, 21);
        db.backup(copy.path().join("old")).unwrap();
        fill(&db, 10, 22);
        checkpoint_of(&db)
    };
    verify(dir.path(), &note).unwrap();
    assert_eq!(diverged_at(verify(&copy.path().join("old"), &note)), 41);
    // Grown again past the checkpoint's size from the older copy: a fork.
    {
        let db = open(copy.path().join("old")).unwrap();
        fill(&db, 20, 23);
    }
    assert_eq!(diverged_at(verify(&copy.path().join("old"), &note)), 50);
}

#[test]
fn a_replaced_record_fails_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let note = {
        let db = open(dir.path()).unwrap();
        fill(&db, 60, 24);
        checkpoint_of(&db)
    };
    let mut record = raw::event(dir.path(), 33);
    // The timestamp: a clear header field, as an edit of the log's history would change it.
    record[22] ^= 1;
    raw::put_event(dir.path(), 33, record);
    assert_eq!(diverged_at(verify(dir.path(), &note)), 33);
    let db = open(dir.path()).unwrap();
    let err = db.begin_read().unwrap().check_integrity().unwrap_err();
    assert!(matches!(err, Error::CorruptIndex { table: "merkle", .. }), "{err}");
}

#[test]
fn a_record_spliced_in_from_another_store_fails_at_its_seq() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let note = {
        let db = open(dir.path()).unwrap();
        fill(&db, 45, 25);
        checkpoint_of(&db)
    };
    {
        // The same appends: only the commit times differ.
        let db = open(other.path()).unwrap();
        fill(&db, 45, 25);
    }
    raw::put_event(dir.path(), 12, raw::event(other.path(), 12));
    assert_eq!(diverged_at(verify(dir.path(), &note)), 12);
}

#[test]
fn a_store_with_the_tree_rebuilt_over_other_events_fails_at_the_checkpoint_size() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let note = {
        let db = open(dir.path()).unwrap();
        fill(&db, 30, 26);
        checkpoint_of(&db)
    };
    let db = open(other.path()).unwrap();
    fill(&db, 30, 26);
    drop(db);
    assert_eq!(diverged_at(verify(other.path(), &note)), 30);
}

#[test]
fn the_tree_of_an_encrypted_store_covers_sealed_events_and_survives_shredding() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new()
        .encryption_key(MasterKey::from_bytes([5; 32]))
        .verifiable_log(true)
        .open(dir.path())
        .unwrap();
    for i in 0..30u32 {
        let payload = vec![i as u8; if i % 4 == 0 { 2000 } else { 10 }];
        db.append(u128::from(i % 3), ExpectedVersion::Auto, [NewEvent::new("secret", payload)]).unwrap();
    }
    let before = db.begin_read().unwrap().tree_head().unwrap();
    let note = checkpoint_of(&db);
    db.shred(1u128).unwrap();
    let view = db.begin_read().unwrap();
    let report = view.check_integrity().unwrap();
    assert_eq!(report.tree_head, Some(before));
    let leaves = leaves(&view);
    assert_eq!(mth(&leaves), before.root);
    // Seq 2 is of the shredded stream.
    view.inclusion_proof(2, 30).unwrap().verify(&leaves[1], &before).unwrap();
    view.verify_checkpoint(&Checkpoint::open(&note, &signer().verifier_key()).unwrap()).unwrap();
}

#[test]
fn a_store_without_the_tree_says_so_and_stays_without_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Options::new().verifiable_log(false).open(dir.path()).unwrap();
        fill(&db, 10, 27);
        assert!(matches!(db.begin_read().unwrap().tree_head(), Err(Error::NoMerkleTree)));
        assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().tree_head, None);
    }
    assert!(raw::all(dir.path(), "merkle").is_empty());
    // Opened with the tree on, it gets one, built from its events, and keeps it.
    {
        let db = open(dir.path()).unwrap();
        fill(&db, 1, 28);
    }
    let db = Options::new().verifiable_log(false).open(dir.path()).unwrap();
    fill(&db, 2, 29);
    let view = db.begin_read().unwrap();
    let report = view.check_integrity().unwrap();
    assert_eq!(report.tree_head.unwrap().size, 13);
    assert_eq!(report.tree_head.unwrap().root, mth(&leaves(&view)));
}

#[test]
fn a_writer_without_the_tree_keeps_it_once_another_process_turned_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().open(dir.path()).unwrap();
    fill(&db, 5, 33);
    // Another process opens the store with the tree on (building it), appends, and is
    // killed; this one goes on appending.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_crash-child"))
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first)
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.starts_with("ack "), "{first:?}");
    fill(&db, 7, 34);
    let view = db.begin_read().unwrap();
    assert_eq!(view.tree_head().unwrap().root, mth(&leaves(&view)));
    let report = view.check_integrity().unwrap();
    assert_eq!(report.tree_head.unwrap().size, report.last_seq);
    assert!(report.last_seq > 12);
}

#[test]
fn a_store_from_before_the_tree_gets_it_built_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path()).unwrap();
        fill(&db, 123, 29);
    }
    // As a build without the tree leaves a store: no record of it, no tiles.
    raw::delete(dir.path(), "meta", b"merkle_tree");
    for (k, _) in raw::all(dir.path(), "merkle") {
        raw::delete(dir.path(), "merkle", &k);
    }
    assert!(matches!(
        Varve::open(dir.path()).unwrap().begin_read().unwrap().tree_head(),
        Err(Error::NoMerkleTree)
    ));
    let db = open(dir.path()).unwrap();
    fill(&db, 5, 30);
    let view = db.begin_read().unwrap();
    let report = view.check_integrity().unwrap();
    assert_eq!(report.tree_head.unwrap().root, mth(&leaves(&view)));
    assert_eq!(report.tree_head.unwrap().size, 128);
}

#[test]
fn a_large_store_without_the_tree_gets_it_in_several_transactions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Options::new().open(dir.path()).unwrap();
        for chunk in 0..15u64 {
            let events =
                (0..10_000u64).map(|i| NewEvent::new("e", (chunk * 10_000 + i).to_le_bytes().to_vec()));
            db.append(u128::from(chunk % 3), ExpectedVersion::Auto, events).unwrap();
        }
    }
    let db = open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    let report = view.check_integrity().unwrap();
    assert_eq!(report.tree_head.unwrap().size, 150_000);
    assert_eq!(report.tree_head.unwrap().root, mth(&leaves(&view)));
}

#[test]
fn events_appended_without_the_tree_are_added_to_it_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path()).unwrap();
        fill(&db, 40, 31);
    }
    let tiles = raw::all(dir.path(), "merkle");
    {
        let db = open(dir.path()).unwrap();
        fill(&db, 25, 32);
    }
    // The tiles as a build that does not keep the tree leaves them after the last appends.
    for (k, _) in raw::all(dir.path(), "merkle") {
        raw::delete(dir.path(), "merkle", &k);
    }
    for (k, v) in tiles {
        raw::put(dir.path(), "merkle", &k, &v);
    }
    let db = open(dir.path()).unwrap();
    let view = db.begin_read().unwrap();
    assert_eq!(view.tree_head().unwrap().root, mth(&leaves(&view)));
    assert_eq!(view.check_integrity().unwrap().tree_head.unwrap().size, 65);
}
