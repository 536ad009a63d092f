//! Local-first sync over NATS JetStream: three point-of-sale terminals sell from one shared
//! stock while offline, then sync through a JetStream hub. Read it top to bottom:
//!
//! 1. terminal A restocks 10 units and syncs; B and C sync and see them;
//! 2. offline, A sells 6, B sells 8 and C restocks 3: each terminal sees its own change at
//!    once, marked pending;
//! 3. online, C syncs first and wins; A's sale conflicts with C's restock and is decided
//!    again on the new stock (13: it still fits); B's sale conflicts with both, is decided
//!    again on 7 units, and is rejected: B's report says so;
//! 4. every terminal holds the same accepted log, byte for byte, and no stock went
//!    negative.
//!
//! Run: `cargo run --example local_first`. With `NATS_URL` unset, it starts `nats-server
//! -js` (the Debian/Ubuntu package `nats-server`, or a release from nats.io, on PATH) on a
//! free port of 127.0.0.1 with its store in a temporary directory, and stops it at the end;
//! with `NATS_URL=nats://host:4222` it uses that server (it needs JetStream on, and creates
//! the stream `VARVE_SYNC` there).

use varvedb::{Event, Handle, Pending, aggregate};
use varvedb_nats::{EventStatus, SyncConfig, SyncNode, SyncReport};

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::start_server;

#[derive(Event)]
struct Restocked {
    units: u32,
}

#[derive(Event)]
struct Sold {
    units: u32,
}

/// Commands are events too: `#[derive(Event)]` gives them the stable name and archive
/// the node records them with, to decide them again after a conflict.
#[derive(Event)]
struct Restock {
    units: u32,
}

#[derive(Event)]
struct Sell {
    units: u32,
}

#[derive(Default)]
struct Stock {
    units: u32,
}

#[aggregate]
impl Stock {
    fn restocked(&mut self, e: &ArchivedRestocked) {
        self.units += e.units.to_native();
    }
    fn sold(&mut self, e: &ArchivedSold) {
        self.units -= e.units.to_native();
    }
}

#[derive(Debug)]
struct OutOfStock {
    wanted: u32,
    left: u32,
}

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} units wanted, {} left", self.wanted, self.left)
    }
}

impl Handle<Restock> for Stock {
    type Error = OutOfStock;
    fn handle(&self, c: &Restock) -> Result<Vec<Pending<Self>>, OutOfStock> {
        Ok(vec![Restocked { units: c.units }.into()])
    }
}

impl Handle<Sell> for Stock {
    type Error = OutOfStock;
    fn handle(&self, c: &Sell) -> Result<Vec<Pending<Self>>, OutOfStock> {
        if c.units > self.units {
            return Err(OutOfStock { wanted: c.units, left: self.units });
        }
        Ok(vec![Sold { units: c.units }.into()])
    }
}

const STOCK: u128 = 1;

fn terminal(dir: &std::path::Path) -> Result<SyncNode, Box<dyn std::error::Error>> {
    let node = SyncNode::open(dir, SyncConfig::default())?;
    // Every command type a pending command may have, so a sync can decide it again.
    node.register::<Stock, Restock>()?;
    node.register::<Stock, Sell>()?;
    Ok(node)
}

fn show(name: &str, node: &SyncNode) -> Result<(), Box<dyn std::error::Error>> {
    let stock = node.stream::<Stock>(STOCK);
    let loaded = stock.load()?;
    let marks: Vec<String> = stock
        .history()?
        .iter()
        .map(|e| match e.status {
            EventStatus::Accepted { seq } => format!("{} v{} (seq {seq})", e.type_tag, e.version),
            EventStatus::Pending => format!("{} v{} (pending)", e.type_tag, e.version),
        })
        .collect();
    println!("  {name}: {} units; {}", loaded.state().units, marks.join(", "));
    Ok(())
}

fn summary(name: &str, report: &SyncReport) {
    println!(
        "{name} syncs: {} imported, {} pushed, {} conflicts",
        report.imported,
        report.pushed,
        report.conflicts.len()
    );
    for outcome in &report.conflicts {
        let c = &outcome.conflict;
        println!(
            "  conflict on stream {}: {} pending commands on version {}, {} remote events since; \
             {:?}: {} kept",
            c.stream,
            c.pending.len(),
            c.base_version,
            c.remote.len(),
            outcome.resolution,
            outcome.kept
        );
        for (_, why) in &outcome.dropped {
            println!("  dropped: {why}");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = match std::env::var("NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let (url, server) = start_server()?;
            println!("started nats-server -js at {url} (set NATS_URL to use another)");
            (url, Some(server))
        }
    };
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?];
    let (a, b, c) = (terminal(dirs[0].path())?, terminal(dirs[1].path())?, terminal(dirs[2].path())?);
    let client = async_nats::connect(&url).await?;

    // 1. A restocks; everyone syncs.
    a.stream::<Stock>(STOCK).execute(&Restock { units: 10 })?;
    for node in [&a, &b, &c] {
        node.sync(&client).await?;
    }
    println!("1. after the first sync:");
    show("B", &b)?;

    // 2. Offline: every terminal changes the stock on its own.
    a.stream::<Stock>(STOCK).execute(&Sell { units: 6 })?;
    b.stream::<Stock>(STOCK).execute(&Sell { units: 8 })?;
    c.stream::<Stock>(STOCK).execute(&Restock { units: 3 })?;
    println!("2. offline:");
    for (name, node) in [("A", &a), ("B", &b), ("C", &c)] {
        show(name, node)?;
    }

    // 3. Online, one after the other.
    println!("3. online:");
    for (name, node) in [("C", &c), ("A", &a), ("B", &b)] {
        summary(name, &node.sync(&client).await?);
    }
    // A last round brings everyone to the hub's end.
    for node in [&a, &b, &c] {
        node.sync(&client).await?;
    }

    // 4. One log everywhere.
    println!("4. converged:");
    for (name, node) in [("A", &a), ("B", &b), ("C", &c)] {
        show(name, node)?;
    }
    let log = a.accepted().export_replicated(0, usize::MAX)?;
    for node in [&b, &c] {
        assert_eq!(node.accepted().export_replicated(0, usize::MAX)?, log);
    }
    assert_eq!(a.stream::<Stock>(STOCK).load()?.state().units, 7);
    println!("every terminal holds the same {} accepted events, byte for byte", log.len());
    Ok(())
}
