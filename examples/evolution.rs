//! An event changes shape; the stored events do not. Read it top to bottom:
//!
//! 1. an older build of the program stores `order.placed` version 1;
//! 2. the current build declares version 2 with `upcast = OrderPlacedV1` and one `Upcast`
//!    impl, and names only version 2 everywhere: its aggregate, `Stream::read`, a
//!    projection;
//! 3. the aggregate is snapshotted every 100 events, so a load folds only what follows the
//!    newest snapshot.
//!
//! Run: `cargo run --example evolution`

use std::path::{Path, PathBuf};

use varvedb::{Event, EventData, ExpectedVersion, Projection, Table, Upcast, Varve, aggregate};

// --- 1. The older build. ------------------------------------------------------------------

/// The first shape of the event. It stays in the code as the description of bytes that are
/// on disk, but nothing new handles it.
#[derive(Event, Debug)]
#[event(name = "order.placed", version = 1)]
struct OrderPlacedV1 {
    customer: String,
    amount_cents: u64,
}

mod older_build {
    use super::{ArchivedOrderPlacedV1, aggregate};

    /// The aggregate as the older build had it.
    #[derive(Default)]
    pub struct Order {
        pub total: u64,
    }

    #[aggregate(name = "order")]
    impl Order {
        fn placed(&mut self, e: &ArchivedOrderPlacedV1) {
            self.total += e.amount_cents.to_native();
        }
    }
}

// --- 2. The current build. ----------------------------------------------------------------

/// The current shape: orders now have a currency.
#[derive(Event, Debug)]
#[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
struct OrderPlaced {
    customer: String,
    amount_cents: u64,
    currency: String,
}

/// How a stored v1 reads as v2: every order before currencies was in euros.
impl Upcast<OrderPlacedV1> for OrderPlaced {
    fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
        OrderPlaced {
            customer: old.customer.to_string(),
            amount_cents: old.amount_cents.to_native(),
            currency: "EUR".into(),
        }
    }
}

/// The state is archivable (`EventData`), so the aggregate can be snapshotted.
#[derive(Default, Debug, EventData)]
struct Order {
    total_cents: u64,
    lines: u32,
    currencies: Vec<String>,
}

// --- 3. Snapshots every 100 events. --------------------------------------------------------

#[aggregate(name = "order", snapshot_every = 100)]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.total_cents += e.amount_cents.to_native();
        self.lines += 1;
        if !self.currencies.iter().any(|c| c == e.currency.as_str()) {
            self.currencies.push(e.currency.to_string());
        }
    }
}

const BY_CURRENCY: Table<String, u64> = Table::new("sales", "by_currency");

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
    let db = Varve::open(dir)?;
    let id = 1u128;

    // The older build stores 250 orders, as v1.
    let old = db.stream::<older_build::Order>(id);
    let v1 = (0..250).map(|i| OrderPlacedV1 { customer: format!("customer {i}"), amount_cents: 100 });
    old.append_all(ExpectedVersion::NoStream, v1)?;
    println!("older build: {} cents in 250 orders", old.load()?.state().total);

    // The current build reads them as v2, and adds its own.
    let orders = db.stream::<Order>(id);
    let order = orders.load()?;
    println!("current build: v1 events arrive upcast: {:?}", order.state());
    let usd = (0..120).map(|i| OrderPlaced {
        customer: format!("buyer {i}"),
        amount_cents: 200,
        currency: "USD".into(),
    });
    orders.save(&order, usd)?; // crosses 300: leaves a snapshot covering version 370

    let order = orders.load()?;
    println!(
        "version {}, folded {} events after the snapshot: {:?}",
        order.version(),
        order.replayed(),
        order.state()
    );

    // `Stream::read` names only v2 too.
    let view = db.begin_read()?;
    let first = orders.read(&view, 1)?.next().expect("the stream has events")?;
    let placed = first.get::<OrderPlaced>()?.expect("an order.placed");
    println!(
        "event 1 is stored as version {}, read as {} {} {}",
        first.recorded().schema_version(),
        placed.customer,
        placed.amount_cents,
        placed.currency
    );
    drop(view);

    // So does a projection.
    let mut sales = Projection::new("sales").on::<OrderPlaced>(|tx, e, _| {
        let currency = e.currency.to_string();
        let now = tx.get(&BY_CURRENCY, &currency)?.unwrap_or(0);
        tx.insert(&BY_CURRENCY, &currency, &(now + e.amount_cents.to_native()))?;
        Ok(())
    });
    sales.catch_up(&db)?;
    let view = db.begin_read()?;
    for currency in ["EUR", "USD"] {
        println!("sales in {currency}: {:?} cents", view.get(&BY_CURRENCY, &currency.to_owned())?);
    }
    Ok(())
}
