//! An audit trail whose history can be proven: user actions are logged, a checkpoint of the
//! log is signed at the end of the day and handed to an auditor, and the next day the store
//! is verified against it. Read it top to bottom:
//!
//! 1. the store is opened with the Merkle tree on, and user actions are appended as events
//!    (one stream per user);
//! 2. at the end of the day, the log's tree head is signed as a checkpoint (a C2SP
//!    `tlog-checkpoint` in a signed note); the note and the verifier key leave the machine;
//! 3. the next day, more actions are logged; the store is checked against yesterday's
//!    checkpoint (it still holds that log as a prefix), and today's tree is shown to extend
//!    yesterday's with a consistency proof;
//! 4. an auditor asks whether one of yesterday's actions is in the checkpointed log: the
//!    answer is an inclusion proof.
//!
//! The last line of output is one JSON object that a verifier written elsewhere can check
//! with nothing but SHA-256 and Ed25519 (see `docs/audit.md`).
//!
//! Run: `cargo run --example audit`

use std::path::{Path, PathBuf};

use std::fmt::Write as _;

use varvedb::{Checkpoint, Error, ExpectedVersion, NewEvent, NoteSigner, Options, Varve, leaf_hash};

const ORIGIN: &str = "audit.example.com/varvedb";

/// One user action: who did what to which object.
fn action(user: u128, what: &str, object: &str) -> (u128, NewEvent) {
    let payload = format!("{{\"user\":{user},\"object\":\"{object}\"}}");
    (user, NewEvent::new(what, payload.into_bytes()))
}

fn log(db: &Varve, actions: impl IntoIterator<Item = (u128, NewEvent)>) -> Result<(), Error> {
    for (user, event) in actions {
        db.append(user, ExpectedVersion::Auto, [event])?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A JSON string literal.
fn json(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs the example in a temporary directory, or keeps its store in `VARVEDB_EXAMPLE_DIR`
/// (to look at with `varve`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir =
        std::env::var_os("VARVEDB_EXAMPLE_DIR").map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
    run(&dir)
}

/// The example, with its store in `dir`.
pub(crate) fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Options::new().verifiable_log(true).open(dir)?;
    // In real use the signing key comes from a secret manager, and only the verifier key is
    // published.
    let signer = NoteSigner::new(ORIGIN, [0x5a; 32])?;

    // 1. Monday's actions.
    log(
        &db,
        [
            action(1, "user.login", "session/81"),
            action(2, "user.login", "session/82"),
            action(1, "document.viewed", "contracts/2026-117"),
            action(2, "permission.granted", "contracts/2026-117"),
            action(1, "document.signed", "contracts/2026-117"),
            action(2, "user.logout", "session/82"),
        ],
    )?;

    // 2. End of day: sign a checkpoint of the log. The note is what the auditor keeps.
    let monday = db.begin_read()?.tree_head()?;
    let note = signer.sign_checkpoint(&Checkpoint::new(ORIGIN, monday.size, monday.root))?;
    let verifier_key = signer.verifier_key();
    println!("Monday's checkpoint ({} events):\n{note}", monday.size);
    println!("verifier key: {verifier_key}\n");

    // 3. Tuesday: more actions; then the store is checked against Monday's checkpoint.
    log(&db, [action(3, "user.login", "session/90"), action(3, "document.deleted", "drafts/12")])?;
    let checkpoint = Checkpoint::open(&note, &verifier_key)?;
    let view = db.begin_read()?;
    view.verify_checkpoint(&checkpoint)?;
    let tuesday = view.tree_head()?;
    view.consistency_proof(monday.size, tuesday.size)?.verify(&monday, &tuesday)?;
    println!(
        "Tuesday: the store holds Monday's {} events unchanged, and its {} events extend them",
        checkpoint.size, tuesday.size
    );

    // 4. The auditor asks about Monday's signature of the contract (seq 5).
    let seq = 5;
    let event = view.event(seq)?.ok_or("no such event")?;
    let leaf = leaf_hash(&view.leaf(seq)?.ok_or("no leaf")?);
    let proof = view.inclusion_proof(seq, checkpoint.size)?;
    proof.verify(&leaf, &monday)?;
    println!(
        "seq {seq} ({}, user {}) is in Monday's checkpoint: {} hashes of proof\n",
        event.type_tag(),
        event.stream(),
        proof.path.len()
    );

    let path: Vec<String> = proof.path.iter().map(|h| json(&hex(h))).collect();
    println!(
        "{{\"origin\":{},\"tree_size\":{},\"root_hash\":{},\"leaf_index\":{},\"leaf_hash\":{},\"inclusion_path\":[{}],\"checkpoint\":{},\"verifier_key\":{}}}",
        json(ORIGIN),
        checkpoint.size,
        json(&hex(&checkpoint.root)),
        proof.leaf_index,
        json(&hex(&leaf)),
        path.join(","),
        json(&note),
        json(&verifier_key),
    );
    Ok(())
}
