//! A read model kept live: order totals per customer, updated while orders are appended.
//!
//! - `Projection` applies each event exactly once: its table writes and its checkpoint commit
//!   together, so a crash can neither lose nor double an order.
//! - `Runner` keeps it following new commits on tokio; `lag` says how far behind it is.
//! - Queries are plain typed reads of the projection's `Table`.
//! - A `Subscription` follows the same log for something live (here: a running count).
//!
//! Run: `cargo run --example projection`

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use varvedb::{Event, ExpectedVersion, Projection, Runner, Table, Varve};

#[derive(Event, Debug)]
#[event(name = "order.placed")]
struct OrderPlaced {
    customer: String,
    cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "order.cancelled")]
struct OrderCancelled {
    customer: String,
    cents: u64,
}

/// The read model: one row per customer. Tables belong to a projection by name.
const TOTALS: Table<String, u64> = Table::new("customer-totals", "cents");
const ORDERS: Table<String, u32> = Table::new("customer-totals", "orders");

fn customer_totals() -> Projection {
    Projection::new("customer-totals")
        .on::<OrderPlaced>(|tx, e, _meta| {
            let customer = e.customer.to_string();
            let cents = tx.get(&TOTALS, &customer)?.unwrap_or(0) + e.cents.to_native();
            let orders = tx.get(&ORDERS, &customer)?.unwrap_or(0) + 1;
            tx.insert(&TOTALS, &customer, &cents)?;
            tx.insert(&ORDERS, &customer, &orders)?;
            Ok(())
        })
        .on::<OrderCancelled>(|tx, e, _meta| {
            let customer = e.customer.to_string();
            let cents = tx.get(&TOTALS, &customer)?.unwrap_or(0).saturating_sub(e.cents.to_native());
            tx.insert(&TOTALS, &customer, &cents)?;
            Ok(())
        })
}

/// Runs the example in a temporary directory, or keeps its store in `VARVEDB_EXAMPLE_DIR`
/// (to look at with `varve`).
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir =
        std::env::var_os("VARVEDB_EXAMPLE_DIR").map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
    run(&dir).await
}

/// The example, with its store in `dir`.
pub(crate) async fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Varve::open(dir)?;

    let runner = Runner::spawn(&db, customer_totals());

    // Something live: count orders as they commit, from a subscription filtered by type.
    let mut placed = db.subscribe(1).of_types(["order.placed"]);
    let counter = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(event) = placed.next().await {
            let event = event?;
            n += 1;
            if n.is_multiple_of(250) {
                let e = event.access::<ArchivedOrderPlaced>()?;
                println!("  live: {n} orders so far (latest: {} for {})", e.cents, e.customer);
            }
            if n == 1_000 {
                break;
            }
        }
        Ok::<u32, varvedb::Error>(n)
    });

    let customers = ["ana", "bo", "chen", "dara"];
    for i in 0..1_000u64 {
        let customer = customers[(i % 4) as usize].to_owned();
        let stream = customer_stream(&customer);
        let placed = OrderPlaced { customer: customer.clone(), cents: 100 + i };
        db.append_async(stream, ExpectedVersion::Auto, [varvedb::NewEvent::from_event(&placed)?]).await?;
        if i % 100 == 99 {
            let cancelled = OrderCancelled { customer, cents: 100 + i };
            db.append_async(stream, ExpectedVersion::Auto, [varvedb::NewEvent::from_event(&cancelled)?])
                .await?;
        }
        if i % 200 == 199 {
            println!("appended {} orders; projection lag {} events", i + 1, runner.lag()?);
        }
    }
    println!("subscription counted {} orders", counter.await??);

    while runner.lag()? > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    runner.stop().await?;

    let view = db.begin_read()?;
    println!("totals per customer (a plain typed read of the projection's table):");
    for row in view.entries(&TOTALS)? {
        let (customer, cents) = row?;
        let orders = view.get(&ORDERS, &customer)?.unwrap_or(0);
        println!("  {customer:<5} {orders:>4} orders  {:>8}.{:02}", cents / 100, cents % 100);
    }
    Ok(())
}

/// One stream per customer, its id derived from the name (a real system keeps an id).
fn customer_stream(customer: &str) -> u128 {
    customer
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u128, |h, b| (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3))
}
