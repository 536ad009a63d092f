// An upcast link and snapshots as a user writes them, compiled and run.
use varvedb::{aggregate, Event, EventData, ExpectedVersion, Upcast, Varve};

#[derive(Event, Debug)]
#[event(name = "order.placed", version = 1)]
struct OrderPlacedV1 { customer: String, amount_cents: u64 }

#[derive(Event, Debug)]
#[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
struct OrderPlaced { customer: String, amount_cents: u64, currency: String }

impl Upcast<OrderPlacedV1> for OrderPlaced {
    fn upcast(old: &ArchivedOrderPlacedV1) -> Self {
        OrderPlaced { customer: old.customer.to_string(), amount_cents: old.amount_cents.to_native(),
                      currency: "EUR".into() }
    }
}

#[derive(Default, EventData)]          // the state is archivable, so it can be snapshotted
struct Order { total: u64, lines: u32 }

#[aggregate(name = "order", snapshot_every = 1000)]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) { self.total += e.amount_cents.to_native(); self.lines += 1; }
}

fn main() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path())?;
    let id = 7u128;
    let stream = db.stream::<Order>(id);
    stream.append(ExpectedVersion::NoStream, OrderPlaced { customer: "ana".into(), amount_cents: 1, currency: "EUR".into() })?;
    while stream.load()?.version() < 25_000 {
        let loaded = stream.load()?;
        let batch = (0..1_000.min(25_000 - loaded.version()))
            .map(|_| OrderPlaced { customer: "bo".into(), amount_cents: 2, currency: "USD".into() });
        stream.save(&loaded, batch)?;
    }

    let order = db.stream::<Order>(id).load()?;      // v1 events arrive upcast; snapshot used if valid
    assert_eq!(order.version(), 25_000);
    assert!(order.replayed() <= 1_000);              // events folded by this load, after the snapshot
    assert_eq!(order.state().lines, 25_000);
    Ok(())
}
