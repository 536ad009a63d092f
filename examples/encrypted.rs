//! Customer records encrypted at rest, and a right-to-erasure request served by
//! crypto-shredding. Read it top to bottom:
//!
//! 1. the store is opened with a master key: every customer's stream gets its own data key;
//! 2. customers register and move; the typed layer works as on a plain store, and a
//!    projection keeps a member list (read models are stored in the clear, so it holds no
//!    personal data);
//! 3. nothing personal is readable in the raw `data.mdb`;
//! 4. one customer asks to be forgotten: `shred` deletes their stream's key, the projection
//!    drops their row, everyone else is untouched;
//! 5. the master key is rotated, the closed store compacted in place (freed pages gone from
//!    the live file) and a compacting backup taken, so the erased key survives in neither.
//!
//! Run: `cargo run --example encrypted`

use std::path::{Path, PathBuf};

use varvedb::{
    Error, Event, ExpectedVersion, MasterKey, Options, Projection, StreamId, Table, Varve, aggregate,
};

#[derive(Event, Debug)]
#[event(name = "customer.registered")]
struct Registered {
    name: String,
    email: String,
}

#[derive(Event, Debug)]
#[event(name = "customer.moved")]
struct Moved {
    address: String,
}

#[derive(Default, Debug)]
struct Customer {
    name: String,
    email: String,
    address: Option<String>,
}

#[aggregate]
impl Customer {
    fn registered(&mut self, e: &ArchivedRegistered) {
        self.name = e.name.to_string();
        self.email = e.email.to_string();
    }

    fn moved(&mut self, e: &ArchivedMoved) {
        self.address = Some(e.address.to_string());
    }
}

/// Members: stream id → registration time. Projections' tables are not encrypted, so this
/// read model keeps no personal data; it must still forget erased customers.
const MEMBERS: Table<String, u64> = Table::new("members", "since");

fn members() -> Projection {
    Projection::new("members")
        .on::<Registered>(|tx, _, meta| {
            tx.insert(&MEMBERS, &meta.stream().to_string(), &meta.timestamp_micros())?;
            Ok(())
        })
        // Erasure reaches read models too: a shredded stream's events come here instead.
        .on_shredded(|tx, meta| {
            tx.remove(&MEMBERS, &meta.stream().to_string())?;
            Ok(())
        })
}

/// Runs the example in a temporary directory, or keeps its stores in `VARVEDB_EXAMPLE_DIR`
/// (to look at with `varve --key-file`): then, and only for that, the master key is written
/// beside them, to `master.key`. Never store a real key next to its store.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let kept = std::env::var_os("VARVEDB_EXAMPLE_DIR").map(PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let key = run(&dir)?;
    if let Some(kept) = kept {
        std::fs::write(kept.join("master.key"), key.as_bytes())?;
    }
    Ok(())
}

/// The example, with the store in `dir/customers` and its backup in `dir/backup`. Returns the
/// master key they end up under.
pub(crate) fn run(dir: &Path) -> Result<MasterKey, Box<dyn std::error::Error>> {
    let path = dir.join("customers");

    // 1. In production the key comes from a secret manager; it is never written to the store.
    let key = MasterKey::generate()?;
    let db = Options::new().encryption_key(key.clone()).open(&path)?;
    println!("opened an encrypted store at {}", path.display());

    // 2. Customers register and move.
    let people =
        [("Ana Lima", "ana@example.com"), ("Bo Berg", "bo@example.com"), ("Chen Wu", "chen@example.com")];
    let mut ids = Vec::new();
    for (i, (name, email)) in people.iter().enumerate() {
        let id = StreamId::from(0xc000 + i as u128);
        let customer = db.stream::<Customer>(id);
        customer
            .append(ExpectedVersion::NoStream, Registered { name: (*name).into(), email: (*email).into() })?;
        customer.append(ExpectedVersion::Exact(1), Moved { address: format!("{} Harbour Road", 10 + i) })?;
        ids.push(id);
    }
    let mut projection = members();
    projection.catch_up(&db)?;
    let ana = db.stream::<Customer>(ids[0]).load()?;
    println!("loaded {:?} at version {}", ana.state(), ana.version());
    println!("members: {}", member_count(&db)?);

    // 3. The file holds no personal data in the clear.
    let file = std::fs::read(path.join("data.mdb"))?;
    for (name, email) in people {
        assert!(!contains(&file, name.as_bytes()) && !contains(&file, email.as_bytes()));
    }
    println!("data.mdb ({} KiB): no name or email found in the raw bytes", file.len() / 1024);
    assert!(!contains(&file, b"Harbour Road"), "addresses are sealed too");

    // 4. Bo asks to be forgotten.
    db.shred(ids[1])?;
    projection.rebuild(&db)?;
    match db.stream::<Customer>(ids[1]).load() {
        Err(Error::Shredded { stream }) => println!("stream {stream} is shredded: its events cannot be read"),
        other => panic!("expected a shredded stream, got {other:?}"),
    }
    let view = db.begin_read()?;
    let shredded = view
        .read_stream(ids[1], 1)?
        .filter(|e| e.as_ref().is_ok_and(varvedb::RecordedEvent::is_shredded))
        .count();
    println!("its {shredded} events keep their positions, without contents");
    drop(view);
    println!("members after the erasure: {}", member_count(&db)?);
    println!("Chen is untouched: {:?}", db.stream::<Customer>(ids[2]).load()?.state());

    // 5. Rotate the master key, compact the closed store in place (the erased key's old bytes
    // leave the freed pages of the live file), then take a compacting backup. Older backups
    // need the old key, which is destroyed.
    let new_key = MasterKey::generate()?;
    let rewrapped = db.rotate_master_key(&new_key)?;
    drop(key); // destroy the old key: older backups become unreadable
    drop(db);
    varvedb::compact_in_place(&path)?;
    let db = Options::new().encryption_key(new_key.clone()).open(&path)?;
    let backup = dir.join("backup");
    db.backup(&backup)?;
    println!(
        "rotated the master key ({rewrapped} data keys re-wrapped) and backed up to {}",
        backup.display()
    );
    let restored = Options::new().encryption_key(new_key.clone()).open(&backup)?;
    let report = restored.begin_read()?.check_integrity()?;
    println!(
        "backup verified: {} events in {} streams ({} of the events shredded)",
        report.events, report.streams, report.shredded_events
    );
    Ok(new_key)
}

fn member_count(db: &Varve) -> Result<usize, Error> {
    Ok(db.begin_read()?.entries(&MEMBERS)?.count())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
